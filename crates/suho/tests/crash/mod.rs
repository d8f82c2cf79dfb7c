//! A real process kill at the worst moment: the trading engine runs as its own `suho engine`
//! process, and the failpoint `engine.before_commit` aborts it after a command was executed
//! and its outcome sent in the open Kafka transaction, before the commit. A new engine process
//! then takes over: the command is executed once, and `read_committed` readers see one
//! `TRADE_EXECUTED`.
//!
//! Each test runs twice: on the paper broker, and on the scripted venue (`trading.venue =
//! "scripted"`: the engine behind the same port meets refusals, late fills and transient
//! failures; which commands it refuses follows from their ids, `suho::venue::refuses`). And
//! with the engine journaling (`trading.delivery = "journal"`, on the paper broker): killed
//! once its batch is journaled but before anything of it is published
//! (`engine.after_journal`), and once it is published but before the offsets are committed
//! (`engine.before_offsets`), two journaling engines through a kill, and through a freeze
//! (SIGSTOP past the session timeout, then SIGCONT).

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use suho_domain::{Order, Side, Symbol, TradeCommand, UserId, UserTopic};
use suho_testkit::TestEnv;

use super::{consume, read_to_end, Running};

/// The venue an engine process runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Paper,
    Scripted,
    /// The paper broker, the engine journaling rather than in transactions.
    Journaled,
}

/// The scripted venue's settings in these tests: one command in `REFUSE_ONE_IN` refused, fills
/// 20 ms late, the first try of one command in three unavailable.
const REFUSE_ONE_IN: u32 = 7;

impl On {
    /// The answer a command with id `command_id` expecting `event_type` gets on this venue.
    fn expect<'e>(self, command_id: &str, event_type: &'e str) -> &'e str {
        match self {
            On::Scripted if suho::venue::refuses(command_id, REFUSE_ONE_IN) => "TRADE_REJECTED",
            _ => event_type,
        }
    }
}

fn engine_process(env: &TestEnv, on: On, failpoint: Option<&str>) -> tokio::process::Child {
    engine_instance(env, on, "1", failpoint, "warn,suho_trading=info")
}

fn engine_instance(
    env: &TestEnv,
    on: On,
    instance: &str,
    failpoint: Option<&str>,
    log: &str,
) -> tokio::process::Child {
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
        .env("SUHO__SECURITY__SECRETS_DIR", c.secrets_dir())
        .env("SUHO__TRADING__RETRY_INITIAL_MS", "50")
        .env("SUHO__TRADING__INSTANCE_ID", instance)
        .env("RUST_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if on == On::Journaled {
        cmd.env("SUHO__TRADING__DELIVERY", "journal");
    }
    if on == On::Scripted {
        cmd.env("SUHO__TRADING__VENUE", "scripted")
            .env(
                "SUHO__TRADING__SCRIPTED__REJECT_EVERY",
                REFUSE_ONE_IN.to_string(),
            )
            .env("SUHO__TRADING__SCRIPTED__FILL_DELAY_MS", "20")
            .env("SUHO__TRADING__SCRIPTED__UNAVAILABLE_EVERY", "3");
    }
    match failpoint {
        Some(f) => cmd.env("SUHO_FAILPOINT", f),
        None => cmd.env_remove("SUHO_FAILPOINT"),
    };
    cmd.spawn().expect("starting `suho engine`")
}

/// The failpoint between a command's execution and its commit.
const BEFORE_COMMIT: &str = "engine.before_commit";

#[tokio::test]
async fn an_engine_killed_between_execution_and_commit_executes_the_command_once() {
    killed_between_execution_and_commit(On::Paper, BEFORE_COMMIT).await;
}

#[tokio::test]
async fn on_the_scripted_venue_an_engine_killed_before_its_commit_answers_once() {
    killed_between_execution_and_commit(On::Scripted, BEFORE_COMMIT).await;
}

/// The next engine publishes what the dead one journaled, and does not execute it again.
#[tokio::test]
async fn a_journaling_engine_killed_before_it_published_answers_once() {
    killed_between_execution_and_commit(On::Journaled, "engine.after_journal").await;
}

/// The next engine resumes after the journal, not after the committed offsets.
#[tokio::test]
async fn a_journaling_engine_killed_before_its_offsets_answers_once() {
    killed_between_execution_and_commit(On::Journaled, "engine.before_offsets").await;
}

async fn killed_between_execution_and_commit(on: On, failpoint: &str) {
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
    let mut first = engine_process(&p.env, on, Some(failpoint));
    let status = tokio::time::timeout(Duration::from_secs(90), first.wait())
        .await
        .expect("the engine reaches the failpoint within 90 s")
        .expect("waiting for the engine");
    // The failpoint aborts (SIGABRT); anything else (a start-up error) is not this test.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(6),
        "the engine was aborted at the failpoint: {status:?}"
    );

    // A new engine takes over.
    let mut second = engine_process(&p.env, on, None);
    let executed = consume(&p.env, UserTopic::Trades, Duration::from_secs(60), |s| {
        s.iter()
            .any(|(_, _, v)| v["command_id"] == command_id.as_str())
    })
    .await;
    // Give a second answer time to show up, then count (read_committed).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = read_to_end(&p.env, UserTopic::Trades).await;
    let answers: Vec<_> = settled
        .iter()
        .filter(|(_, _, v)| v["command_id"] == command_id.as_str())
        .collect();
    assert!(!executed.is_empty(), "the new engine answered the command");
    assert_eq!(answers.len(), 1, "executed once: {answers:?}");
    let (key, _, event) = answers[0];
    assert_eq!(key, &user);
    assert_eq!(
        event["event_type"],
        on.expect(&command_id, "TRADE_EXECUTED"),
        "{event}"
    );
    let _ = second.start_kill();
    let _ = second.wait().await;
    p.stop().await;
}

/// Two engines share the partitions while 100 users send 20 commands each (an open, then the
/// close of that position, ten times over), and one engine is killed outright and restarted
/// mid-run. Every command is answered exactly once, each user's answers come in the order of
/// their commands, and every close finds its position: the engine that took a partition over
/// rebuilt the accounts its predecessor had changed.
#[tokio::test]
async fn two_engines_answer_every_command_once_and_in_order_through_a_kill_and_restart() {
    two_engines_through_a_kill(On::Paper).await;
}

#[tokio::test]
async fn on_the_scripted_venue_two_engines_answer_every_command_once_through_a_kill() {
    two_engines_through_a_kill(On::Scripted).await;
}

#[tokio::test]
async fn two_journaling_engines_answer_every_command_once_through_a_kill() {
    two_engines_through_a_kill(On::Journaled).await;
}

/// Engine a is frozen (SIGSTOP) past its session timeout while commands keep coming, so b
/// takes its partitions, then thawed: a still holds the accounts as they were and acts on
/// them (ticks, a batch it had taken), but the journal's fence stops it publishing anything,
/// and every command is still answered once and in order.
#[tokio::test]
async fn a_frozen_journaling_engine_thawed_after_its_partitions_moved_publishes_nothing() {
    two_engines_through(On::Journaled, Fault::Freeze).await;
}

/// What happens to engine a mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Killed outright, restarted three rounds later.
    Kill,
    /// Stopped (SIGSTOP) past the group's session timeout, resumed (SIGCONT) three rounds
    /// later.
    Freeze,
}

fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("a running engine").to_string();
    let ok = std::process::Command::new("kill")
        .args([signal, pid.as_str()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {signal} {pid}");
}

async fn two_engines_through_a_kill(on: On) {
    two_engines_through(on, Fault::Kill).await;
}

async fn two_engines_through(on: On, fault: Fault) {
    const USERS: usize = 100;
    const ROUNDS: usize = 20;
    let mut env = TestEnv::new().await;
    env.config.trading.engine_enabled = false;
    let p = Running::with(env).await;
    let log = "warn";
    let mut a = engine_instance(&p.env, on, "a", None, log);
    let mut b = engine_instance(&p.env, on, "b", None, log);
    let producer =
        suho_messaging::UserEventProducer::new(&p.env.kafka(suho_security::Identity::Gateway))
            .expect("producer");
    let users: Vec<UserId> = (0..USERS)
        .map(|i| UserId::new(format!("twin-{i:03}")))
        .collect();
    let mut sent: std::collections::HashMap<String, Vec<(String, &str)>> = Default::default();
    let mut restarted = None;
    for round in 0..ROUNDS {
        match (round, fault) {
            (6, Fault::Kill) => {
                a.start_kill().expect("killing engine a");
                let _ = a.wait().await;
                eprintln!("engine a killed after {} commands", round * USERS);
            }
            (9, Fault::Kill) => {
                restarted = Some(engine_instance(&p.env, on, "a", None, log));
                eprintln!("engine a restarted after {} commands", round * USERS);
            }
            (6, Fault::Freeze) => {
                signal(&a, "-STOP");
                eprintln!("engine a frozen after {} commands", round * USERS);
                // Past the session timeout (10 s): b is given a's partitions.
                tokio::time::sleep(Duration::from_secs(14)).await;
            }
            (9, Fault::Freeze) => {
                signal(&a, "-CONT");
                eprintln!("engine a thawed after {} commands", round * USERS);
            }
            _ => {}
        }
        for user in &users {
            let now = suho_messaging::now_ms();
            let (command, planned) = if round % 2 == 0 {
                let order = Order {
                    symbol: Symbol::parse("EURUSD").expect("symbol"),
                    side: if round % 4 == 0 {
                        Side::Buy
                    } else {
                        Side::Sell
                    },
                    volume: rust_decimal::Decimal::new(1, 2),
                    stop_loss: None,
                    take_profit: None,
                };
                (
                    TradeCommand::open(user.clone(), order, None, now),
                    "TRADE_EXECUTED",
                )
            } else {
                let (open_id, _) = sent[user.as_str()].last().expect("an open before");
                let trade_id = format!("trd_{}", open_id.strip_prefix("cmd_").unwrap_or(open_id));
                (
                    TradeCommand::close(user.clone(), trade_id, now),
                    "TRADE_CLOSED",
                )
            };
            // On the scripted venue a refused command is rejected, and so is the close of a
            // position whose open was refused.
            let opened = sent
                .get(user.as_str())
                .and_then(|c| c.last())
                .is_none_or(|(_, answer)| *answer == "TRADE_EXECUTED");
            let expect = if planned == "TRADE_CLOSED" && !opened {
                "TRADE_REJECTED"
            } else {
                on.expect(&command.head.event_id, planned)
            };
            producer.send(&command).await.expect("command queued");
            sent.entry(user.as_str().to_owned())
                .or_default()
                .push((command.head.event_id.clone(), expect));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let total = USERS * ROUNDS;
    let answers = |s: &[(String, i32, serde_json::Value)]| {
        s.iter()
            .filter(|(k, _, v)| k.starts_with("twin-") && v["command_id"].is_string())
            .count()
    };
    let seen = consume(&p.env, UserTopic::Trades, Duration::from_secs(180), |s| {
        answers(s) >= total
    })
    .await;
    assert!(
        answers(&seen) >= total,
        "only {} of {total} commands answered",
        answers(&seen)
    );
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = consume(&p.env, UserTopic::Trades, Duration::from_secs(60), |s| {
        answers(s) >= total
    })
    .await;
    let mut got: std::collections::HashMap<&str, Vec<(&str, &str)>> = Default::default();
    for (key, _, v) in &seen {
        if let Some(command) = v["command_id"].as_str() {
            got.entry(key.as_str())
                .or_default()
                .push((command, v["event_type"].as_str().unwrap_or_default()));
        }
    }
    for (user, commands) in &sent {
        let answered = got.get(user.as_str()).cloned().unwrap_or_default();
        let expected: Vec<(&str, &str)> = commands.iter().map(|(c, t)| (c.as_str(), *t)).collect();
        assert_eq!(
            answered, expected,
            "{user}: every command answered once, in order, opens executed and closes closed"
        );
    }
    let frozen = (fault == Fault::Freeze).then_some(&mut a);
    for child in [Some(&mut b), restarted.as_mut(), frozen]
        .into_iter()
        .flatten()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    p.stop().await;
}
