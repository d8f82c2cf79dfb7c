//! The identity table, enforced by the real `nats-server` of the test stack: every identity
//! may do what its row allows and is refused (a permissions violation) outside it; anonymous,
//! wrong-password and plaintext connections are refused; and no one but the feed can move a
//! quote the price service gives.
//!
//! The expectations below are written out by hand, not derived from the table, so that a
//! change to the table that opens or closes a subject fails here until it is meant.

use std::io::{Read, Write};
use std::time::Duration;

use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use suho_domain::{Symbol, Tick};
use suho_security::{Identity, Secrets};
use suho_testkit::TestEnv;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use Identity::{Agent, Analytics, Bridge, Engine, Feed, Operator, Price, Signals, Ticks, Ws};

/// A connection as `identity` whose server errors (permission violations) are collected.
struct Probe {
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
    sentinels: u32,
}

fn options(env: &TestEnv) -> async_nats::ConnectOptions {
    let secrets = Secrets::at(env.config.secrets_dir());
    async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(secrets.ca_file())
        .connection_timeout(Duration::from_secs(5))
}

async fn probe(env: &TestEnv, identity: Identity) -> Probe {
    let secrets = Secrets::at(env.config.secrets_dir());
    let password = secrets.password(identity).expect("the identity's password");
    let (tx, errors) = mpsc::unbounded_channel();
    let client = options(env)
        .user_and_password(
            identity.name().to_string(),
            password.expose_secret().to_string(),
        )
        .custom_inbox_prefix(identity.inbox_prefix())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(env.config.nats.url.as_str())
        .await
        .unwrap_or_else(|e| panic!("`{identity}` connects: {e}"));
    Probe {
        client,
        errors,
        sentinels: 0,
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Publish,
    Subscribe,
}

impl Probe {
    /// Whether the server let the operation through: it is followed by a publish nobody may
    /// make (the sentinel), and any violation the server reports before the sentinel's is
    /// the operation's.
    async fn allowed(&mut self, op: Op, subject: &str) -> bool {
        let keep = match op {
            Op::Publish => {
                self.client
                    .publish(subject.to_string(), "{}".into())
                    .await
                    .expect("publish");
                None
            }
            Op::Subscribe => Some(
                self.client
                    .subscribe(subject.to_string())
                    .await
                    .expect("subscribe"),
            ),
        };
        self.sentinels += 1;
        let sentinel = format!("_SENTINEL.{}", self.sentinels);
        self.client
            .publish(sentinel.clone(), "".into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
        let mut allowed = true;
        loop {
            let error = tokio::time::timeout(Duration::from_secs(5), self.errors.recv())
                .await
                .expect("the sentinel's violation is reported")
                .expect("the connection is open");
            assert!(error.contains("Permissions Violation"), "{error}");
            if error.contains(&format!("\"{sentinel}\"")) {
                break;
            }
            if error.contains(&format!("\"{subject}\"")) {
                allowed = false;
            }
        }
        drop(keep);
        allowed
    }
}

/// What each identity may do, by hand: (operation, subject after the test's prefix, who may).
/// `$`-subjects take no prefix; `{stream}` is the bridge's stream.
const EXPECTED: &[(Op, &str, &[Identity])] = &[
    (Op::Publish, "market.EURUSD.tick", &[Feed]),
    (Op::Publish, "market.EURUSD.1m", &[Feed, Analytics]),
    (Op::Publish, "market.GBPUSD.1d", &[Feed, Analytics]),
    (Op::Publish, "market.EURUSD.price", &[Engine, Operator]),
    (Op::Publish, "indicators.rsi.EURUSD", &[Analytics]),
    (Op::Publish, "signals.sma.EURUSD", &[Signals]),
    (Op::Publish, "alerts.market.spike", &[Signals]),
    (Op::Publish, "system.health.trading-engine", &[Engine]),
    (Op::Publish, "system.health.market-feed", &[Feed]),
    (Op::Publish, "$JS.API.STREAM.INFO.{stream}", &[Bridge]),
    (
        Op::Publish,
        "$JS.API.CONSUMER.MSG.NEXT.{stream}.c1",
        &[Bridge],
    ),
    (Op::Publish, "$JS.API.STREAM.DELETE.{stream}", &[]),
    (Op::Publish, "$JS.API.STREAM.PURGE.{stream}", &[]),
    (Op::Publish, "$JS.API.ACCOUNT.PURGE.x", &[]),
    (Op::Publish, "$JS.API.SERVER.REMOVE", &[]),
    // (On a test stack the bridge's stream token is `*`, any test's stream; a deployment's
    // grant names its one stream: see the table's unit tests.)
    (
        Op::Subscribe,
        "market.*.tick",
        &[Ticks, Price, Analytics, Signals, Engine, Ws, Operator],
    ),
    (Op::Subscribe, "market.*.price", &[Price]),
    (Op::Subscribe, "market.*.1m", &[Signals, Ws, Operator]),
    (Op::Subscribe, "market.>", &[Operator]),
    (Op::Subscribe, "signals.>", &[Agent, Operator]),
    (Op::Subscribe, "signals.*.*", &[Agent, Ws, Operator]),
    (Op::Subscribe, "indicators.*.*", &[Ws, Operator]),
    (Op::Subscribe, "_INBOX_engine.>", &[Engine, Operator]),
    (Op::Subscribe, "_INBOX_bridge.>", &[Bridge, Operator]),
];

#[tokio::test]
async fn every_identity_may_do_its_rows_work_and_nothing_else() {
    let env = TestEnv::new().await;
    let stream =
        suho_domain::subject::jetstream_name(suho_domain::subject::MARKET_STREAM, &env.prefix);
    let mut checks = Vec::new();
    for identity in Identity::ALL {
        let env = &env;
        let stream = stream.clone();
        checks.push(async move {
            let mut p = probe(env, identity).await;
            let mut wrong = Vec::new();
            for &(op, subject, who) in EXPECTED {
                let subject = if subject.starts_with('$') || subject.starts_with('_') {
                    subject.replace("{stream}", &stream)
                } else {
                    format!("{}{subject}", env.prefix)
                };
                let expected = who.contains(&identity);
                if p.allowed(op, &subject).await != expected {
                    wrong.push(format!(
                        "`{identity}` {op:?} {subject}: expected {}",
                        if expected { "allowed" } else { "denied" }
                    ));
                }
            }
            wrong
        });
    }
    let wrong: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn anonymous_wrong_password_and_plaintext_connections_are_refused() {
    let env = TestEnv::new().await;
    let url = env.config.nats.url.as_str();
    let refused = |r: Result<async_nats::Client, async_nats::ConnectError>| match r {
        Ok(_) => panic!("connected"),
        Err(e) => e.to_string(),
    };
    let anonymous = refused(options(&env).connect(url).await);
    assert!(anonymous.contains("authorization"), "{anonymous}");
    let wrong = refused(
        options(&env)
            .user_and_password("feed".into(), "not-the-password".into())
            .connect(url)
            .await,
    );
    assert!(wrong.contains("authorization"), "{wrong}");
    let stranger = refused(
        options(&env)
            .user_and_password("suho".into(), "suho".into())
            .connect(url)
            .await,
    );
    assert!(stranger.contains("authorization"), "{stranger}");

    // A plaintext client: the server announces that TLS is required and answers a CONNECT
    // with the feed's right password sent in the clear with an error, never with a PONG.
    let port = url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let secrets = Secrets::at(env.config.secrets_dir());
    let password = secrets.password(Identity::Feed).unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut info = [0u8; 4096];
        let n = s.read(&mut info).unwrap();
        let info = String::from_utf8_lossy(&info[..n]).to_string();
        let connect = format!(
            "CONNECT {{\"user\":\"feed\",\"pass\":\"{}\",\"verbose\":false,\"tls_required\":false}}\r\nPING\r\n",
            password.expose_secret()
        );
        let _ = s.write_all(connect.as_bytes());
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        (info, String::from_utf8_lossy(&rest).to_string())
    })
    .await
    .unwrap();
    assert!(answer.0.contains("\"tls_required\":true"), "{}", answer.0);
    assert!(
        !answer.1.contains("PONG"),
        "plaintext was served: {}",
        answer.1
    );
}

fn eur() -> Symbol {
    Symbol::parse("EURUSD").unwrap()
}

async fn quote(engine: &suho_messaging::MarketBus) -> serde_json::Value {
    let reply = engine
        .request(
            suho_domain::subject::price(engine.prefix(), eur()),
            bytes::Bytes::new(),
        )
        .await
        .expect("the price service answers");
    serde_json::from_slice(&reply).expect("a JSON quote")
}

#[tokio::test]
async fn only_the_feed_can_move_a_quote() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    tokio::spawn(suho_market::run_price_service(
        env.bus(Price).await,
        suho_market::PriceServiceConfig {
            symbols: [eur()].into_iter().collect(),
            max_age_ms: 60_000,
            observer: None,
        },
        shutdown.clone(),
    ));
    let engine = env.bus(Engine).await;
    let feed = env.bus(Feed).await;
    let tick = |bid: i64| {
        Tick::new(
            eur(),
            Decimal::new(bid, 4),
            Decimal::new(bid + 2, 4),
            suho_messaging::now_ms(),
            "test",
        )
        .unwrap()
    };
    let subject = suho_domain::subject::tick(&env.prefix, eur());
    // The feed's tick is quoted (published until the service has subscribed).
    let mut quoted = serde_json::Value::Null;
    for _ in 0..50 {
        feed.publish(subject.clone(), &tick(10_850)).await.unwrap();
        feed.client().flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        quoted = quote(&engine).await;
        if quoted.get("bid").is_some() {
            break;
        }
    }
    assert_eq!(quoted["bid"].to_string(), "1.085", "{quoted}");

    // Every other identity tries to publish EURUSD at 9.0000.
    for identity in Identity::ALL.into_iter().filter(|i| *i != Feed) {
        let forger = env.bus(identity).await;
        let _ = forger.publish(subject.clone(), &tick(90_000)).await;
        let _ = forger.client().flush().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..40 {
        let q = quote(&engine).await;
        assert_eq!(
            q["bid"].to_string(),
            "1.085",
            "a forged tick moved the quote: {q}"
        );
    }
    shutdown.cancel();
}
