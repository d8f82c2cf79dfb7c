//! The walking skeleton end to end, on real Kafka, NATS and PostgreSQL: the HTTP API,
//! the trading engine, the feed and the price service in one `Application`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::{json, Value};
use suho_domain::UserTopic;
use suho_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

/// The web dashboard in headless Chromium (in `tests/browser/`).
mod browser;
/// The engine killed between execution and commit (in `tests/crash/`).
mod crash;
/// The HTTP API fuzzed from its OpenAPI document (in `tests/fuzz/`).
mod fuzz;
/// Every kind of invalid request (in `tests/invalid/`).
mod invalid;
/// A new account's opening balance from registration (in `tests/opening/`).
mod opening;
/// Pending orders, positions, partial closes and command queries (in `tests/orders/`).
mod orders;
/// The Polygon feed and backfill (in `tests/polygon/`).
mod polygon;
/// Settings, MT5 links, client order ids, close and modify (in `tests/profile/`).
mod profile;
/// The WebSocket stream of the whole platform (in `tests/ws/`).
mod ws;

struct Running {
    env: TestEnv,
    addr: SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start() -> Running {
        Running::with(TestEnv::new().await).await
    }

    /// Builds and runs the platform on `env`'s configuration.
    async fn with(env: TestEnv) -> Running {
        let app = suho::Application::build(env.config.clone())
            .await
            .expect("the platform builds");
        let addr = app.http_addr();
        let shutdown = CancellationToken::new();
        let run = app.run(shutdown.clone());
        let task = tokio::spawn(async move {
            let result = run.await;
            if let Err(e) = &result {
                // Otherwise a test sees only a refused or reset connection.
                eprintln!("the platform failed: {e:#}");
            }
            result
        });
        Running {
            env,
            addr,
            http: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Sends `body` as JSON with `method` to `path` under `token`; the status and the JSON
    /// answer (`Null` if none).
    async fn send_text(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &str,
    ) -> (u16, Value) {
        let resp = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers and logs in a user; returns (user_id, token).
    async fn user(&self, email: &str) -> (String, String) {
        let creds = json!({"email": email, "password": "correct horse battery"});
        let (status, body) = self.post("/api/auth/register", None, creds.clone()).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self.post("/api/auth/login", None, creds).await;
        assert_eq!(status, 200, "{body}");
        (
            body["user_id"].as_str().unwrap().to_string(),
            body["access_token"].as_str().unwrap().to_string(),
        )
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the platform stops within 10 s")
            .expect("no panic");
        result.expect("the platform stops cleanly");
    }
}

/// Reads `topic` from the beginning until `done` says so or `limit` passes.
/// A record as the tests read it: (key, partition, JSON value or `null`).
fn row(msg: &impl Message) -> (String, i32, Value) {
    let key = String::from_utf8(msg.key().unwrap_or_default().to_vec()).unwrap();
    let value = serde_json::from_slice(msg.payload().unwrap_or_default()).unwrap_or(Value::Null);
    (key, msg.partition(), value)
}

/// Every record of `topic` up to its end as it stands now (`read_committed`: aborted records
/// are skipped). Reads by assigning the partitions, so there is no consumer group to join and
/// no time window to guess: it stops when each partition's position reaches its end.
async fn read_to_end(env: &TestEnv, topic: UserTopic) -> Vec<(String, i32, Value)> {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::{Offset, TopicPartitionList};
    let name = topic.full_name(&env.prefix);
    let consumer: StreamConsumer =
        suho_messaging::kafka::base_config(&env.kafka(suho_security::Identity::Operator))
            .set("group.id", format!("{}reader-{}", env.prefix, uuid_like()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
    let ends = {
        let probe: BaseConsumer =
            suho_messaging::kafka::base_config(&env.kafka(suho_security::Identity::Operator))
                .set("isolation.level", "read_committed")
                .create()
                .unwrap();
        let name = name.clone();
        tokio::task::spawn_blocking(move || {
            suho_messaging::kafka::watermarks(&probe, &name, Duration::from_secs(30))
        })
        .await
        .unwrap()
        .unwrap()
    };
    let mut assignment = TopicPartitionList::new();
    for &(partition, low, high) in &ends {
        if high > low {
            assignment
                .add_partition_offset(&name, partition, Offset::Beginning)
                .unwrap();
        }
    }
    let mut seen = Vec::new();
    if assignment.count() == 0 {
        return seen;
    }
    consumer.assign(&assignment).unwrap();
    let at_end = |consumer: &StreamConsumer| {
        suho_messaging::kafka::reached(
            &consumer.position().unwrap(),
            ends.iter()
                .filter(|(_, low, high)| high > low)
                .map(|&(p, _, high)| (name.as_str(), p, high)),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut stream = consumer.stream();
    while !at_end(&consumer) {
        let wake = (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline);
        match tokio::time::timeout_at(wake, stream.next()).await {
            Ok(Some(msg)) => {
                seen.push(row(&msg.unwrap()));
            }
            Ok(None) => break,
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: not read to its end in 60 s"
            ),
        }
    }
    seen
}

async fn consume(
    env: &TestEnv,
    topic: UserTopic,
    limit: Duration,
    mut done: impl FnMut(&[(String, i32, Value)]) -> bool,
) -> Vec<(String, i32, Value)> {
    let consumer: StreamConsumer =
        suho_messaging::kafka::base_config(&env.kafka(suho_security::Identity::Operator))
            .set("group.id", format!("{}reader-{}", env.prefix, uuid_like()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
    consumer
        .subscribe(&[&topic.full_name(&env.prefix)])
        .unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut stream = consumer.stream();
    while !done(&seen) {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        seen.push(row(&msg.unwrap()));
    }
    seen
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test]
async fn register_login_open_yields_trade_executed_keyed_by_user() {
    let p = Running::start().await;
    let (user_id, token) = p.user("alice@example.com").await;
    let (status, body) = p
        .post(
            "/api/trade/open",
            Some(&token),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    let command_id = body["command_id"].as_str().unwrap().to_string();

    let trades = consume(&p.env, UserTopic::Trades, Duration::from_secs(30), |s| {
        !s.is_empty()
    })
    .await;
    let (key, _, event) = trades.first().expect("a TRADE_EXECUTED within 30 s");
    assert_eq!(key, &user_id);
    assert_eq!(event["event_type"], "TRADE_EXECUTED");
    assert_eq!(event["user_id"], user_id.as_str());
    assert_eq!(event["command_id"], command_id.as_str());
    assert_eq!(event["symbol"], "EURUSD");
    assert_eq!(event["status"], "SUCCESS");
    assert!(event["execution_price"].as_f64().unwrap() > 0.5);
    assert!(event["trade_id"].as_str().unwrap().starts_with("trd_"));

    // The auth events are on user.auth, keyed by the user, with no secret in them.
    let auth = consume(&p.env, UserTopic::Auth, Duration::from_secs(10), |s| {
        s.len() >= 2
    })
    .await;
    let types: Vec<&str> = auth
        .iter()
        .map(|(_, _, v)| v["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["USER_REGISTERED", "USER_LOGIN"]);
    for (key, _, v) in &auth {
        assert_eq!(key, &user_id);
        let text = v.to_string();
        assert!(
            !text.contains("correct horse") && !text.contains(&token),
            "{text}"
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn one_users_commands_land_in_one_partition_in_order() {
    let p = Running::start().await;
    let users = 12;
    let per_user = 8;
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    let mut logins = Vec::new();
    for i in 0..users {
        logins.push(p.user(&format!("u{i}@example.com")).await);
    }
    // Users in parallel, each user's commands one after another.
    let results = futures::future::join_all(logins.iter().map(|(user_id, token)| {
        let p = &p;
        async move {
            let mut ids = Vec::new();
            for n in 0..per_user {
                let side = if n % 2 == 0 { "BUY" } else { "SELL" };
                let (status, body) = p
                    .post(
                        "/api/trade/open",
                        Some(token),
                        json!({"symbol": "GBPUSD", "type": side, "volume": 0.01}),
                    )
                    .await;
                assert_eq!(status, 202, "{body}");
                ids.push(body["command_id"].as_str().unwrap().to_string());
            }
            (user_id.clone(), ids)
        }
    }))
    .await;
    sent.extend(results);

    // Each user's registration queued an OPEN_ACCOUNT before their commands.
    let total = users * (per_user + 1);
    let records = consume(&p.env, UserTopic::Commands, Duration::from_secs(30), |s| {
        s.len() >= total
    })
    .await;
    assert_eq!(records.len(), total);
    let mut by_user: BTreeMap<String, (Vec<i32>, Vec<String>)> = BTreeMap::new();
    for (key, partition, v) in records {
        assert_eq!(v["user_id"].as_str().unwrap(), key, "key = user_id");
        let entry = by_user.entry(key).or_default();
        entry.0.push(partition);
        if entry.0.len() == 1 {
            assert_eq!(
                v["event_type"], "OPEN_ACCOUNT",
                "registration comes first: {v}"
            );
            continue;
        }
        entry.1.push(v["event_id"].as_str().unwrap().to_string());
    }
    let mut partitions_used = std::collections::HashSet::new();
    for (user, (partitions, ids)) in &by_user {
        assert!(
            partitions.windows(2).all(|w| w[0] == w[1]),
            "{user} spread over partitions {partitions:?}"
        );
        partitions_used.insert(partitions[0]);
        assert_eq!(ids, &sent[user], "{user}'s commands out of order");
    }
    assert!(
        partitions_used.len() > 1,
        "12 users should spread over more than one of 6 partitions"
    );
    p.stop().await;
}

#[tokio::test]
async fn no_market_data_ever_appears_in_kafka() {
    let p = Running::start().await;
    let (_, token) = p.user("bob@example.com").await;
    // Let the feed run (14 symbols x 30 ticks/s) and trade once.
    let nats = async_nats_sub(&p.env).await;
    let (status, _) = p
        .post(
            "/api/trade/open",
            Some(&token),
            json!({"symbol": "USDJPY", "type": "SELL", "volume": 1}),
        )
        .await;
    assert_eq!(status, 202);
    let ticks = nats.await;
    assert!(ticks > 50, "the feed published only {ticks} ticks in 3 s");
    let _ = consume(&p.env, UserTopic::Trades, Duration::from_secs(30), |s| {
        !s.is_empty()
    })
    .await;

    // No topic anywhere on the broker is a market-data topic.
    let admin: StreamConsumer =
        suho_messaging::kafka::base_config(&p.env.kafka(suho_security::Identity::Operator))
            .set("group.id", "metadata-only")
            .create()
            .unwrap();
    let md = admin.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    for t in md.topics() {
        let name = t.name();
        for forbidden in ["market.", "signals.", "indicators.", "alerts.", ".tick"] {
            assert!(
                !name.contains(forbidden),
                "market-data topic on Kafka: {name}"
            );
        }
    }
    // Every record in this test's topics is a user event, none a tick or candle.
    let allowed = [
        "USER_REGISTERED",
        "USER_LOGIN",
        "USER_LOGIN_FAILED",
        "USER_LOGOUT",
        "OPEN_TRADE",
        "CLOSE_TRADE",
        "MODIFY_TRADE",
        "OPEN_ACCOUNT",
        "TRADE_EXECUTED",
        "TRADE_CLOSED",
        "TRADE_MODIFIED",
        "TRADE_REJECTED",
        "ACCOUNT_STATUS",
        "MARGIN_CALL",
        "STOP_OUT",
        "RISK_LIMIT_BREACH",
        "DEPOSIT",
        "WITHDRAWAL",
        "ACCOUNT_OPENED",
        "SETTINGS_UPDATED",
        "MT5_ACCOUNT_LINKED",
        "MT5_ACCOUNT_UNLINKED",
    ];
    let mut records = 0;
    for topic in UserTopic::ALL {
        for (key, _, v) in read_to_end(&p.env, topic).await {
            records += 1;
            assert!(
                allowed.contains(&v["event_type"].as_str().unwrap_or("")),
                "{topic}: {v}"
            );
            assert_eq!(v["user_id"].as_str(), Some(key.as_str()));
            for market_field in ["bid", "ask", "spread", "mid"] {
                assert!(
                    v.get(market_field).is_none(),
                    "{topic} carries market data: {v}"
                );
            }
        }
    }
    assert!(
        records >= 4,
        "expected the auth, command and trade records, saw {records}"
    );
    p.stop().await;
}

/// Counts ticks on every `market.*.tick` of this test for 3 s.
async fn async_nats_sub(env: &TestEnv) -> impl std::future::Future<Output = usize> {
    let bus = env.bus(suho_security::Identity::Operator).await;
    let mut sub = bus
        .subscribe(format!("{}market.*.tick", env.prefix))
        .await
        .unwrap();
    async move {
        let mut n = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, sub.next()).await {
            n += 1;
        }
        n
    }
}

#[tokio::test]
async fn bad_requests_name_the_field_and_queue_nothing() {
    let p = Running::start().await;
    let (carol, token) = p.user("carol@example.com").await;
    let cases = [
        (
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0}),
            "volume",
        ),
        (
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.015}),
            "volume",
        ),
        (
            json!({"symbol": "EURUSD", "type": "BUY", "volume": -1}),
            "volume",
        ),
        (json!({"symbol": "EURUSD", "type": "BUY"}), "volume"),
        (
            json!({"symbol": "XAUXAG", "type": "BUY", "volume": 0.1}),
            "symbol",
        ),
        (
            json!({"symbol": "EU", "type": "BUY", "volume": 0.1}),
            "symbol",
        ),
        (
            json!({"symbol": "EURUSD", "type": "HOLD", "volume": 0.1}),
            "type",
        ),
        (
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "stop_loss": 1.2, "take_profit": 1.1}),
            "stop_loss",
        ),
        (
            json!({"symbol": "EURUSD", "type": "BUY", "volume": "lots"}),
            "volume",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = p.post("/api/trade/open", Some(&token), body.clone()).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(answer["field"], field, "{body} -> {answer}");
        assert!(
            answer["message"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
    }
    // Malformed JSON.
    let resp = p
        .http
        .post(p.url("/api/trade/open"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // No token, a bad token.
    let (status, _) = p
        .post(
            "/api/trade/open",
            None,
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = p
        .post(
            "/api/trade/open",
            Some("not.a.token"),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1}),
        )
        .await;
    assert_eq!(status, 401);
    // Duplicate e-mail, wrong password.
    let (status, _) = p
        .post(
            "/api/auth/register",
            None,
            json!({"email": "carol@example.com", "password": "whatever123"}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = p
        .post(
            "/api/auth/login",
            None,
            json!({"email": "carol@example.com", "password": "wrong password"}),
        )
        .await;
    assert_eq!(status, 401);
    // Logout ends the token.
    let resp = p
        .http
        .post(p.url("/api/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let (status, _) = p
        .post(
            "/api/trade/open",
            Some(&token),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1}),
        )
        .await;
    assert_eq!(status, 401);

    // The registration's OPEN_ACCOUNT (published before the 201) is the only command.
    let commands = read_to_end(&p.env, UserTopic::Commands).await;
    let types: Vec<(&str, &str)> = commands
        .iter()
        .map(|(k, _, v)| (k.as_str(), v["event_type"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        types,
        [(carol.as_str(), "OPEN_ACCOUNT")],
        "nothing is queued for invalid requests: {commands:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn health_metrics_and_heartbeats() {
    let p = Running::start().await;
    let bus = p.env.bus(suho_security::Identity::Operator).await;
    let mut beats = bus
        .subscribe(format!("{}system.health.*", p.env.prefix))
        .await
        .unwrap();
    let (_, token) = p.user("dave@example.com").await;
    let (status, _) = p
        .post(
            "/api/trade/open",
            Some(&token),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1}),
        )
        .await;
    assert_eq!(status, 202);
    let _ = consume(&p.env, UserTopic::Trades, Duration::from_secs(30), |s| {
        !s.is_empty()
    })
    .await;

    let health: Value = p
        .http
        .get(p.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let mut services = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while services.len() < 7 + 2 {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, beats.next()).await else {
            break;
        };
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["status"], "ok");
        assert!(v["uptime_s"].is_u64());
        services.insert(v["service"].as_str().unwrap().to_string());
    }
    for s in [
        "market-feed",
        "price-service",
        "market-analytics",
        "signals",
        "data-bridge",
        "gateway",
        "trading-engine",
    ] {
        assert!(services.contains(s), "no heartbeat from {s}: {services:?}");
    }

    // Lag is sampled every second in tests.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = p
        .http
        .get(p.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "nats_messages_published_total{subject=",
        "nats_publish_latency_seconds",
        "kafka_messages_produced_total{topic=\"user.commands\"}",
        "kafka_messages_consumed_total{",
        "kafka_consumer_lag{",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    p.stop().await;
}

#[tokio::test]
async fn the_bridge_stores_ticks_and_the_history_route_validates() {
    let p = Running::start().await;
    let pool = sqlx_pool(&p.env).await;
    let eurusd = suho_domain::Symbol::parse("EURUSD").unwrap();
    let mut stored = 0;
    for _ in 0..150 {
        // The bridge creates its tables as the platform starts: until then, nothing is stored.
        stored = suho_bridge::tick_count(&pool, Some(eurusd))
            .await
            .unwrap_or(0);
        if stored > 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stored > 10, "the data bridge stored {stored} EURUSD ticks");

    let get = |path: String| {
        let http = p.http.clone();
        let url = p.url(&path);
        async move {
            let resp = http.get(url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = get("/api/market/EURUSD/candles?tf=1m".into()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.is_array());
    for (query, field) in [
        ("/api/market/EURUSD/candles?tf=2m", "tf"),
        ("/api/market/XAUXAG/candles?tf=1m", "symbol"),
        ("/api/market/EURUSD/candles?tf=1m&from=yesterday", "from"),
        ("/api/market/EURUSD/candles?tf=1m&from=-1", "from"),
        (
            "/api/market/EURUSD/candles?tf=1m&to=-9223372036854775808",
            "to",
        ),
        ("/api/market/EURUSD/candles?tf=1m&limit=0", "limit"),
        ("/api/market/%20EURUSD/candles", "symbol"),
    ] {
        let (status, body) = get(query.into()).await;
        assert_eq!(status, 422, "{query} -> {body}");
        assert_eq!(body["field"], field, "{query} -> {body}");
    }
    // An empty or inverted range holds nothing: it is not an error.
    for query in [
        "/api/market/EURUSD/candles?tf=1m&from=10&to=5",
        "/api/market/EURUSD/candles?tf=1m&from=5&to=5",
        "/api/market/eur-usd/candles?tf=1d&to=0",
    ] {
        let (status, body) = get(query.into()).await;
        assert_eq!(status, 200, "{query} -> {body}");
        assert_eq!(body, json!([]), "{query}");
    }
    p.stop().await;
}

/// The operator's role: it reads every table and writes none.
async fn sqlx_pool(env: &TestEnv) -> sqlx::PgPool {
    env.pool(suho_security::Identity::Operator).await
}

#[tokio::test]
async fn the_replay_feed_plays_a_file_and_the_platform_stays_up() {
    let mut env = TestEnv::new().await;
    let file = std::env::temp_dir().join(format!("{}replay.csv", env.prefix));
    let mut csv = String::from("timestamp,symbol,bid,ask\n");
    for i in 0..20 {
        csv.push_str(&format!(
            "{},USDJPY,148.{:03},148.{:03}\n",
            1_704_931_200_000_i64 + i * 100,
            100 + i,
            112 + i
        ));
    }
    std::fs::write(&file, csv).unwrap();
    env.config.market.feed = "replay".into();
    env.config.market.replay_file = Some(file.clone());
    env.config.market.replay_speed = 0.0;
    env.config.validate().unwrap();
    let bus = env.bus(suho_security::Identity::Operator).await;
    let mut ticks = bus
        .subscribe(format!("{}market.*.tick", env.prefix))
        .await
        .unwrap();
    let running = Running::with(env).await;
    let mut seen = 0;
    while seen < 20 {
        let msg = tokio::time::timeout(Duration::from_secs(10), ticks.next())
            .await
            .expect("replayed ticks")
            .unwrap();
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["source"], "replay");
        assert_eq!(v["symbol"], "USD/JPY");
        seen += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !running.task.is_finished(),
        "the platform keeps running after the recording ends"
    );
    running.stop().await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_bridge_buffer_larger_than_the_store_fails_the_build_naming_the_field() {
    let mut env = TestEnv::new().await;
    // JetStream reserves a stream's cap up front; no test machine has 1 EiB free.
    env.config.market.bridge_buffer_bytes = 1 << 60;
    let Err(err) = suho::Application::build(env.config.clone()).await else {
        panic!("a 1 EiB stream cap was accepted");
    };
    let message = format!("{err:#}");
    assert!(
        message.contains("market.bridge_buffer_bytes") && message.contains("data bridge"),
        "{message}"
    );
}

/// Exact decimal of a JSON number (the wire writes each price's shortest form).
fn exact(v: &Value) -> rust_decimal::Decimal {
    assert!(v.is_number(), "a number: {v}");
    v.to_string().parse().unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn sorted_keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

/// A recorded hour of EURUSD ticks shaped so that every market service has something to say:
/// a slow decline then a rise (EMA crosses, a breakout above the previous 20 highs), four
/// ticks a minute (open, high, low, close); GBPUSD calm then one spike.
fn shaped_recording(base: i64) -> String {
    const MIN: i64 = 60_000;
    let mut closes: Vec<i64> = (0..40)
        .map(|i| 110_000 - 10 * i + if i % 2 == 0 { 6 } else { 0 })
        .collect();
    let last = closes[39];
    closes.extend((1..=25).map(|i| last + 15 * i));
    let price = |p: i64| rust_decimal::Decimal::new(p, 5);
    let mut rows: Vec<(i64, String)> = Vec::new();
    let mut prev = closes[0];
    for (i, &c) in closes.iter().enumerate() {
        let start = base + MIN * i64::try_from(i).unwrap();
        for (offset, p) in [(5, prev), (20, prev.max(c)), (35, prev.min(c)), (50, c)] {
            let ts = start + offset * 1_000;
            rows.push((ts, format!("{ts},EURUSD,{},{}", price(p), price(p + 10))));
        }
        prev = c;
    }
    for i in 0..30 {
        let ts = base + i * 1_000 + 500;
        let bid = 127_000 + (i % 2) * 10;
        rows.push((
            ts,
            format!("{ts},GBPUSD,{},{}", price(bid), price(bid + 14)),
        ));
    }
    let ts = base + 30_700;
    rows.push((ts, format!("{ts},GBPUSD,1.27500,1.27514")));
    rows.sort_by_key(|(ts, _)| *ts);
    let mut csv = String::from("timestamp,symbol,bid,ask\n");
    for (_, row) in rows {
        csv.push_str(&row);
        csv.push('\n');
    }
    csv
}

#[tokio::test]
async fn every_market_subject_carries_contract_messages() {
    let mut env = TestEnv::new().await;
    let file = std::env::temp_dir().join(format!("suho-shaped-{}.csv", uuid_like()));
    // 2024-01-10 00:00 UTC, recorded times kept: the candles' alignment is checkable.
    let base = 1_704_844_800_000_i64;
    std::fs::write(&file, shaped_recording(base)).unwrap();
    env.config.market.feed = "replay".into();
    env.config.market.replay_file = Some(file.clone());
    env.config.market.replay_speed = 0.0;
    env.config.market.replay_rebase = false;
    // The recording is years old; the price service must still answer from it.
    env.config.market.max_quote_age_ms = 1 << 50;
    env.config.validate().unwrap();
    let bus = env.bus(suho_security::Identity::Operator).await;
    let mut all = bus.subscribe(format!("{}>", env.prefix)).await.unwrap();
    let p = env.prefix.clone();
    let running = Running::with(env).await;

    let timeframes = ["1m", "5m", "15m", "30m", "1h", "4h", "1d"];
    let indicators = ["sma", "ema", "rsi", "macd", "bollinger", "atr"];
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let complete = |seen: &BTreeMap<String, usize>| {
        let has = |k: &str| seen.contains_key(k);
        has("tick")
            && timeframes.iter().all(|tf| has(&format!("candle {tf}")))
            && indicators.iter().all(|i| has(&format!("indicator {i}")))
            && seen.keys().any(|k| k.starts_with("signal "))
            && has("alert breakout")
            && has("alert spike")
            && has("health signals")
            && has("health data-bridge")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !complete(&seen) {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, all.next()).await else {
            panic!("not every market subject spoke within 40 s: {seen:?}");
        };
        let subject = msg.subject.as_str().strip_prefix(p.as_str()).unwrap();
        let tokens: Vec<&str> = subject.split('.').collect();
        let Ok(v) = serde_json::from_slice::<Value>(&msg.payload) else {
            continue; // price requests of this test carry no JSON
        };
        let key = match tokens.as_slice() {
            ["market", sym, "tick"] => {
                assert_eq!(
                    sorted_keys(&v),
                    [
                        "ask",
                        "bid",
                        "mid",
                        "source",
                        "spread",
                        "symbol",
                        "timestamp"
                    ]
                );
                assert_eq!(v["symbol"], format!("{}/{}", &sym[..3], &sym[3..]));
                assert_eq!(v["source"], "replay");
                let (bid, ask) = (exact(&v["bid"]), exact(&v["ask"]));
                assert_eq!(
                    exact(&v["mid"]) * rust_decimal::Decimal::TWO,
                    bid + ask,
                    "{v}"
                );
                assert_eq!(exact(&v["spread"]), ask - bid, "{v}");
                "tick".to_string()
            }
            ["market", _, "price"] => continue,
            ["market", sym, tf] => {
                assert_eq!(
                    sorted_keys(&v),
                    [
                        "close",
                        "closed",
                        "end",
                        "high",
                        "low",
                        "open",
                        "start",
                        "symbol",
                        "timeframe",
                        "volume"
                    ]
                );
                assert_eq!(v["symbol"], *sym);
                assert_eq!(v["timeframe"], *tf);
                let timeframe: suho_domain::Timeframe = tf.parse().unwrap();
                let start = v["start"].as_i64().unwrap();
                assert_eq!(timeframe.align(start), start, "UTC-aligned start: {v}");
                assert_eq!(v["end"].as_i64().unwrap(), start + timeframe.duration_ms());
                let (o, h, l, c) = (
                    exact(&v["open"]),
                    exact(&v["high"]),
                    exact(&v["low"]),
                    exact(&v["close"]),
                );
                assert!(l <= o && o <= h && l <= c && c <= h, "OHLC: {v}");
                assert!(exact(&v["volume"]) >= rust_decimal::Decimal::ONE);
                format!("candle {tf}")
            }
            ["indicators", kind, sym] => {
                assert_eq!(
                    sorted_keys(&v),
                    ["indicator", "symbol", "timeframe", "timestamp", "value"]
                );
                assert_eq!(
                    (v["indicator"].as_str(), v["symbol"].as_str()),
                    (Some(*kind), Some(*sym))
                );
                assert!(v["value"].is_number() || v["value"].is_object(), "{v}");
                format!("indicator {kind}")
            }
            ["signals", strategy, sym] => {
                assert_eq!(
                    sorted_keys(&v),
                    [
                        "confidence",
                        "direction",
                        "model",
                        "price",
                        "signal_id",
                        "strategy",
                        "symbol",
                        "timestamp"
                    ]
                );
                assert_eq!(
                    (v["strategy"].as_str(), v["symbol"].as_str()),
                    (Some(*strategy), Some(*sym))
                );
                assert!(["BUY", "SELL", "FLAT"].contains(&v["direction"].as_str().unwrap()));
                assert!((0.0..=1.0).contains(&v["confidence"].as_f64().unwrap()));
                format!("signal {strategy}")
            }
            ["alerts", "market", kind] => {
                assert_eq!(v["type"], *kind);
                for k in ["symbol", "message", "timestamp"] {
                    assert!(v.get(k).is_some(), "{k} in {v}");
                }
                format!("alert {kind}")
            }
            ["system", "health", service] => {
                assert_eq!(v["service"], *service);
                assert!(["ok", "degraded", "down"].contains(&v["status"].as_str().unwrap()));
                assert!(v["uptime_s"].is_u64() && v["timestamp"].is_i64(), "{v}");
                format!("health {service}")
            }
            _ => panic!("a subject outside the contract: {subject}"),
        };
        *seen.entry(key).or_default() += 1;
    }

    eprintln!("market messages seen, by kind: {seen:?}");
    // The price service answers from the replayed quotes.
    let reply = bus
        .client()
        .request(format!("{p}market.EURUSD.price"), "".into())
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        sorted_keys(&v),
        ["age_ms", "ask", "bid", "mid", "symbol", "timestamp"],
        "{v}"
    );
    assert_eq!(
        exact(&v["bid"]) + exact(&v["ask"]),
        exact(&v["mid"]) * rust_decimal::Decimal::TWO
    );

    running.stop().await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_with_retry_after() {
    let p = Running::start().await;
    let (_, _) = p.user("grace@example.com").await;
    let wrong = json!({"email": "grace@example.com", "password": "not the password"});
    for _ in 0..5 {
        let (status, _) = p.post("/api/auth/login", None, wrong.clone()).await;
        assert_eq!(status, 401);
    }
    // Throttled now, even with the right password.
    let resp = p
        .http
        .post(p.url("/api/auth/login"))
        .json(&json!({"email": "grace@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(resp.status().as_u16(), 429);
    let after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&after), "{after}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "too_many_attempts");
    // Another address is not affected.
    let (_, _) = p.user("heidi@example.com").await;
    p.stop().await;
}

/// One client's failures lock out no one else: 100 failed logins for 20 other accounts from
/// one IP (five times the old per-IP limit of 20) leave a third account's login working.
#[tokio::test]
async fn failed_logins_for_other_accounts_from_one_ip_do_not_lock_out_a_third() {
    let p = Running::start().await;
    let (_, _) = p.user("third@example.com").await;
    let running = &p;
    let attempts = futures::stream::iter(0..100).map(|i| {
        let wrong = json!({"email": format!("other{}@example.com", i % 20), "password": "guess"});
        async move { running.post("/api/auth/login", None, wrong).await.0 }
    });
    let statuses: Vec<u16> = attempts.buffer_unordered(8).collect().await;
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 401).count() >= 100,
        "each other account is guessed 5 times, within its limit"
    );
    let right = json!({"email": "third@example.com", "password": "correct horse battery"});
    let (status, body) = p.post("/api/auth/login", None, right).await;
    assert_eq!(status, 200, "the third account logs in: {body}");
    p.stop().await;
}

/// Behind a trusted reverse proxy, the throttle counts the client of `X-Forwarded-For`: one
/// client guessing an account does not lock that account's owner out at another address.
#[tokio::test]
async fn behind_a_trusted_proxy_the_throttle_counts_the_forwarded_client() {
    let mut env = TestEnv::new().await;
    env.config.http.trusted_proxies = vec!["127.0.0.1".parse().expect("an address")];
    let p = Running::with(env).await;
    let (_, _) = p.user("ivan@example.com").await;
    let login = |password: &'static str, client: &'static str| {
        p.http
            .post(p.url("/api/auth/login"))
            .header("x-forwarded-for", client)
            .json(&json!({"email": "ivan@example.com", "password": password}))
            .send()
    };
    for _ in 0..5 {
        let r = login("guess", "198.51.100.1").await.expect("HTTP request");
        assert_eq!(r.status().as_u16(), 401);
    }
    let r = login("guess", "198.51.100.1").await.expect("HTTP request");
    assert_eq!(r.status().as_u16(), 429, "the guessing client is throttled");
    let r = login("correct horse battery", "203.0.113.50")
        .await
        .expect("HTTP request");
    assert_eq!(r.status().as_u16(), 200, "the owner, elsewhere, logs in");
    p.stop().await;
}

/// `suho stack credentials IDENTITY` prints, as `KEY=value` lines, exactly what an outside
/// client needs: with them it connects to NATS over TLS and to Kafka over SASL_SSL
/// (SCRAM-SHA-512) as that identity, and is held to its row (the operator reads every
/// subject and topic, and may neither publish a tick nor produce a command).
#[tokio::test]
async fn stack_credentials_print_what_an_outside_client_connects_with() {
    let env = TestEnv::new().await;
    let suho = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_suho"))
            .args(args)
            .env("SUHO_CONFIG", "/nonexistent/suho.toml")
            .env("SUHO__NATS__URL", &env.config.nats.url)
            .env("SUHO__KAFKA__BOOTSTRAP", &env.config.kafka.bootstrap)
            .env("SUHO__SECURITY__SECRETS_DIR", env.config.secrets_dir())
            .env(
                "SUHO__DATABASE__URL",
                secrecy::ExposeSecret::expose_secret(&env.config.database.url),
            )
            .output()
            .expect("running suho")
    };
    let list = suho(&["stack", "credentials", "--list"]);
    assert!(list.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let all: Vec<String> = suho_security::Identity::ALL
        .iter()
        .map(|i| i.name().to_string())
        .collect();
    assert_eq!(names, all);

    let unknown = suho(&["stack", "credentials", "root"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--list"));

    let printed = suho(&["stack", "credentials", "operator"]);
    assert!(printed.status.success(), "{printed:?}");
    let vars: BTreeMap<String, String> = String::from_utf8_lossy(&printed.stdout)
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect();
    let keys: Vec<&str> = vars.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "SUHO_CA_FILE",
            "SUHO_DATABASE_URL",
            "SUHO_KAFKA_BOOTSTRAP",
            "SUHO_KAFKA_SASL_MECHANISM",
            "SUHO_KAFKA_SASL_PASSWORD",
            "SUHO_KAFKA_SASL_USERNAME",
            "SUHO_KAFKA_SECURITY_PROTOCOL",
            "SUHO_NATS_PASSWORD",
            "SUHO_NATS_URL",
            "SUHO_NATS_USER",
        ]
    );
    assert_eq!(vars["SUHO_NATS_USER"], "operator");

    let (tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(
            vars["SUHO_NATS_USER"].clone(),
            vars["SUHO_NATS_PASSWORD"].clone(),
        )
        .require_tls(true)
        .add_root_certificates(vars["SUHO_CA_FILE"].clone().into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(vars["SUHO_NATS_URL"].as_str())
        .await
        .expect("the printed settings connect");
    let mut everything = client
        .subscribe(format!("{}>", env.prefix))
        .await
        .expect("subscribe");
    let tick = format!("{}market.EURUSD.tick", env.prefix);
    client
        .publish(tick.clone(), "{}".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    let denied = tokio::time::timeout(Duration::from_secs(5), errors.recv())
        .await
        .expect("the server answers the forged tick")
        .expect("an error");
    assert!(
        denied.contains("Permissions Violation") && denied.contains(&tick),
        "{denied}"
    );
    let feed = env.bus(suho_security::Identity::Feed).await;
    feed.publish_bytes(tick.clone(), "{\"real\":true}".into())
        .await
        .expect("the feed publishes");
    feed.client().flush().await.expect("flush");
    let seen = tokio::time::timeout(Duration::from_secs(5), everything.next())
        .await
        .expect("the operator reads the feed's tick")
        .expect("a message");
    assert_eq!(seen.subject.as_str(), tick);
    assert_eq!(&seen.payload[..], b"{\"real\":true}");

    // Kafka, with nothing but the printed settings, as a client in another language would.
    assert_eq!(vars["SUHO_KAFKA_SECURITY_PROTOCOL"], "SASL_SSL");
    assert_eq!(vars["SUHO_KAFKA_SASL_MECHANISM"], "SCRAM-SHA-512");
    let kafka = |extra: &[(&str, &str)]| {
        let mut c = rdkafka::ClientConfig::new();
        for (k, v) in [
            ("bootstrap.servers", "SUHO_KAFKA_BOOTSTRAP"),
            ("security.protocol", "SUHO_KAFKA_SECURITY_PROTOCOL"),
            ("sasl.mechanism", "SUHO_KAFKA_SASL_MECHANISM"),
            ("sasl.username", "SUHO_KAFKA_SASL_USERNAME"),
            ("sasl.password", "SUHO_KAFKA_SASL_PASSWORD"),
            ("ssl.ca.location", "SUHO_CA_FILE"),
        ] {
            c.set(k, &vars[v]);
        }
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c
    };
    let commands = UserTopic::Commands.full_name(&env.prefix);
    let producer: rdkafka::producer::FutureProducer = kafka(&[("message.timeout.ms", "10000")])
        .create()
        .expect("a producer");
    let refused = producer
        .send(
            rdkafka::producer::FutureRecord::to(&commands)
                .key("usr_x")
                .payload("{}"),
            Duration::from_secs(10),
        )
        .await
        .expect_err("the operator produces no commands");
    assert_eq!(
        refused.0.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed),
        "{refused:?}"
    );
    let reader: rdkafka::consumer::BaseConsumer = kafka(&[("group.id", "outside")])
        .create()
        .expect("a consumer");
    let md = reader
        .fetch_metadata(Some(&commands), Duration::from_secs(10))
        .expect("the operator sees the topics");
    assert_eq!(
        md.topics()[0].partitions().len(),
        usize::try_from(UserTopic::Commands.partitions()).unwrap()
    );
    assert!(
        md.topics()[0].error().is_none(),
        "{:?}",
        md.topics()[0].error()
    );

    // PostgreSQL, with nothing but the printed URL, as psql would: the operator reads and
    // writes nothing.
    let url = &vars["SUHO_DATABASE_URL"];
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let psql = |sql: &str| {
        std::process::Command::new("psql")
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, url])
            .output()
            .expect("running psql")
    };
    let read = psql("SELECT count(*) FROM users");
    assert!(read.status.success(), "{read:?}");
    let write = psql("DELETE FROM users");
    assert!(!write.status.success());
    assert!(
        String::from_utf8_lossy(&write.stderr).contains("permission denied"),
        "{write:?}"
    );
}
