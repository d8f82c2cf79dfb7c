//! A real process kill at the worst moment: the trading engine runs as its own `suho engine`
//! process, and the failpoint `engine.before_commit` aborts it after a command was executed
//! and its outcome sent in the open Kafka transaction, before the commit. A new engine process
//! then takes over: the command is executed once, and `read_committed` readers see one
//! `TRADE_EXECUTED`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use suho_domain::UserTopic;
use suho_testkit::TestEnv;

use super::{consume, Running};

fn engine_process(env: &TestEnv, failpoint: Option<&str>) -> tokio::process::Child {
    let c = &env.config;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_suho"));
    cmd.arg("engine")
        .env("SUHO_CONFIG", "/nonexistent/suho.toml")
        .env("SUHO__NATS__URL", &c.nats.url)
        .env("SUHO__NATS__SUBJECT_PREFIX", &c.nats.subject_prefix)
        .env("SUHO__KAFKA__BOOTSTRAP", &c.kafka.bootstrap)
        .env("SUHO__KAFKA__TOPIC_PREFIX", &c.kafka.topic_prefix)
        .env("SUHO__KAFKA__GROUP_PREFIX", &c.kafka.group_prefix)
        .env("SUHO__STACK__DIR", &c.stack.dir)
        .env("SUHO__TRADING__RETRY_INITIAL_MS", "50")
        .env("RUST_LOG", "warn,suho_trading=info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    match failpoint {
        Some(f) => cmd.env("SUHO_FAILPOINT", f),
        None => cmd.env_remove("SUHO_FAILPOINT"),
    };
    cmd.spawn().expect("starting `suho engine`")
}

#[tokio::test]
async fn an_engine_killed_between_execution_and_commit_executes_the_command_once() {
    let mut env = TestEnv::new().await;
    // The platform without its engine: feed, price service, API.
    env.config.trading.engine_enabled = false;
    let p = Running::with(env).await;
    let (user, token) = p.user("crash@example.com").await;
    let (s, body) = p
        .post(
            "/api/trade/open",
            Some(&token),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.2}),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let command_id = body["command_id"].as_str().unwrap().to_string();

    // The first engine executes the command and dies before committing.
    let mut first = engine_process(&p.env, Some("engine.before_commit"));
    let status = tokio::time::timeout(Duration::from_secs(90), first.wait())
        .await
        .expect("the engine reaches the failpoint within 90 s")
        .expect("waiting for the engine");
    assert!(!status.success(), "the engine was aborted: {status:?}");

    // A new engine takes over.
    let mut second = engine_process(&p.env, None);
    let executed = consume(&p.env, UserTopic::Trades, Duration::from_secs(60), |s| {
        s.iter()
            .any(|(_, _, v)| v["command_id"] == command_id.as_str())
    })
    .await;
    // Give a second answer time to show up, then count (read_committed).
    let settled = consume(&p.env, UserTopic::Trades, Duration::from_secs(8), |_| false).await;
    let answers: Vec<_> = settled
        .iter()
        .filter(|(_, _, v)| v["command_id"] == command_id.as_str())
        .collect();
    assert!(!executed.is_empty(), "the new engine answered the command");
    assert_eq!(answers.len(), 1, "executed once: {answers:?}");
    let (key, _, event) = answers[0];
    assert_eq!(key, &user);
    assert_eq!(event["event_type"], "TRADE_EXECUTED", "{event}");
    let _ = second.start_kill();
    let _ = second.wait().await;
    p.stop().await;
}
