//! The WebSocket `/ws` on real servers (PostgreSQL for the accounts, NATS for market data,
//! Kafka for user events): the gateway's `serve_with` and its `WsHub`, clients speaking
//! tokio-tungstenite. Market data is published on NATS with `MarketBus`; user events are
//! produced on `user.trades` with `UserEventProducer`, keyed by their user.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use suho_accounts::Accounts;
use suho_domain::UserTopic;
use suho_gateway::{AppState, WsHub, WsOptions};
use suho_messaging::{MarketBus, UserEventProducer};
use suho_security::Identity;
use suho_testkit::TestEnv;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A gateway with its hub, on a fresh test environment.
struct Gateway {
    env: TestEnv,
    addr: SocketAddr,
    accounts: Accounts,
    /// The gateway's own producer (its HTTP API).
    producer: UserEventProducer,
    /// The engine's side: the outcome events the tests stand in for.
    engine: UserEventProducer,
    bus: MarketBus,
    stop: CancellationToken,
    users: std::sync::atomic::AtomicU32,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Gateway {
    async fn start(options: WsOptions) -> Gateway {
        let env = TestEnv::new().await;
        let secret = env.config.auth.jwt_secret.clone().expect("a test JWT key");
        let accounts = Accounts::with_pool(
            env.pool(Identity::Gateway).await,
            &secret,
            Duration::from_secs(3600),
        );
        let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).expect("a producer");
        let engine = UserEventProducer::new(&env.kafka(Identity::Engine)).expect("a producer");
        let bus = env.bus(Identity::Ws).await;
        let stop = CancellationToken::new();
        let addr = serve(&env, &accounts, &producer, &bus, options, &stop).await;
        Gateway {
            env,
            addr,
            accounts,
            producer,
            engine,
            bus,
            stop,
            users: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// A registered user: (user_id, token).
    async fn user(&self) -> (String, String) {
        let n = self
            .users
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let password = SecretString::from("correct horse battery".to_string());
        let email = format!("ws{n}@example.com");
        self.accounts
            .register(&email, &password, |_| Ok(None))
            .await
            .expect("registers");
        let (user, token) = self
            .accounts
            .login(&email, &password)
            .await
            .expect("logs in");
        (
            user.user_id.as_str().to_string(),
            token.token.expose_secret().to_string(),
        )
    }

    /// A 3-second token of the first user (`ws0@`), from accounts with that lifetime.
    async fn brief_token(&self) -> String {
        let short = Accounts::with_pool(
            self.env.pool(Identity::Gateway).await,
            self.env.config.auth.jwt_secret.as_ref().expect("a key"),
            Duration::from_secs(3),
        );
        let password = SecretString::from("correct horse battery".to_string());
        let (_, brief) = short
            .login("ws0@example.com", &password)
            .await
            .expect("logs in");
        brief.token.expose_secret().to_string()
    }

    fn url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    async fn connect(&self, query: &str) -> Ws {
        connect_to(self.addr, query).await
    }

    /// Another gateway instance beside this one (its own hub and listener, the same servers
    /// and accounts), as a second process would be.
    async fn another_instance(&self) -> SocketAddr {
        serve(
            &self.env,
            &self.accounts,
            &self.producer,
            &self.bus,
            WsOptions::default(),
            &self.stop,
        )
        .await
    }

    /// The HTTP status of a refused upgrade.
    async fn refused(&self, query: &str) -> u16 {
        match tokio_tungstenite::connect_async(self.url(query)).await {
            Err(WsError::Http(response)) => response.status().as_u16(),
            Err(e) => panic!("refused without an HTTP answer: {e}"),
            Ok(_) => panic!("upgraded with {query:?}"),
        }
    }

    /// Produces a trade event of `user` with sequence number `seq` (padded with `pad` bytes)
    /// and returns its position.
    async fn trade(&self, user: &str, seq: u64, pad: usize) -> String {
        let event = json!({
            "event_id": format!("evt_{user}_{seq}"),
            "event_type": "TRADE_EXECUTED",
            "user_id": user,
            "seq": seq,
            "pad": "x".repeat(pad),
            "timestamp": 1_700_000_000_000_i64,
            "schema_version": 1,
        });
        let d = self
            .engine
            .send_raw(UserTopic::Trades, user, event.to_string().as_bytes(), None)
            .await
            .expect("Kafka takes the event");
        format!("user.trades:{}:{}", d.partition, d.offset)
    }

    /// Publishes `data` on `subject` as the service whose row allows it.
    async fn publish(&self, subject: &str, data: Value) {
        let identity = if subject.ends_with(".tick") {
            Identity::Feed
        } else if subject.ends_with(".price") {
            Identity::Engine
        } else if subject.starts_with("signals.") {
            Identity::Signals
        } else {
            Identity::Analytics
        };
        let bus = self.env.bus(identity).await;
        bus.publish_bytes(
            format!("{}{subject}", self.env.prefix),
            data.to_string().into(),
        )
        .await
        .expect("NATS takes it");
        // The connection closes when `bus` drops: the server has the message first, and so
        // before the next one published.
        bus.client().flush().await.expect("NATS has it");
    }
}

/// Starts a gateway instance (a `WsHub` and `serve_with` on a free port) until `stop`.
async fn serve(
    env: &TestEnv,
    accounts: &Accounts,
    producer: &UserEventProducer,
    bus: &MarketBus,
    options: WsOptions,
    stop: &CancellationToken,
) -> SocketAddr {
    let (hub, task) = WsHub::start(bus, &env.kafka(Identity::Ws), options, stop.clone())
        .await
        .expect("the hub starts");
    tokio::spawn(async move {
        if let Err(e) = task.await {
            eprintln!("the hub failed: {e}");
        }
    });
    let state = Arc::new(AppState::new(
        accounts.clone(),
        producer.clone(),
        suho_domain::major_fx().into_iter().collect(),
        vec!["scalping".into()],
        env.config.kafka.topic_prefix.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(suho_gateway::serve_with(
        listener,
        state,
        Some(hub),
        stop.clone(),
    ));
    addr
}

async fn connect_to(addr: SocketAddr, query: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?{query}"))
        .await
        .expect("the upgrade");
    ws
}

/// What a read gave.
#[derive(Debug)]
enum Read {
    Json(Value),
    Closed(Option<(CloseCode, String)>),
    Timeout,
}

async fn read(ws: &mut Ws, within: Duration) -> Read {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Read::Timeout,
            Ok(Some(Ok(Message::Text(t)))) => {
                return Read::Json(serde_json::from_str(&t).expect("server messages are JSON"))
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Read::Closed(frame.map(|f| (f.code, f.reason.to_string())))
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return Read::Closed(None),
        }
    }
}

/// The next message that `wanted` accepts, skipping others; panics after 20 s.
async fn until(ws: &mut Ws, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match read(ws, left).await {
            Read::Json(v) if wanted(&v) => return v,
            Read::Json(_) => {}
            other => panic!("waiting for {what}: {other:?}"),
        }
    }
}

/// Nothing but control messages for 300 ms.
async fn quiet(ws: &mut Ws) {
    loop {
        match read(ws, Duration::from_millis(300)).await {
            Read::Timeout => return,
            Read::Json(v) if v["channel"] == "control" => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
}

fn control(event: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["channel"] == "control" && v["event"] == event
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("the client sends");
}

#[tokio::test]
async fn missing_bad_expired_and_logged_out_tokens_are_refused() {
    let options = WsOptions {
        auth_timeout: Duration::from_millis(800),
        token_recheck: Duration::from_millis(300),
        ..WsOptions::default()
    };
    let gw = Gateway::start(options).await;
    let (user, token) = gw.user().await;

    // A bad token in the query: 401 before the upgrade.
    assert_eq!(gw.refused("token=not.a.jwt").await, 401);
    assert_eq!(gw.refused("resume=user.trades:99:1").await, 422);

    // A valid token, in the query or in the first message.
    let mut ws = gw.connect(&format!("token={token}")).await;
    let hello = until(&mut ws, "authenticated", control("authenticated")).await;
    assert_eq!(hello["user_id"], user.as_str());
    let mut ws = gw.connect("").await;
    send(&mut ws, json!({"action": "auth", "token": token})).await;
    let hello = until(&mut ws, "authenticated", control("authenticated")).await;
    assert_eq!(hello["user_id"], user.as_str());

    // ... or in the Authorization header.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(gw.url(""))
            .expect("a request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade");
    let hello = until(&mut ws, "authenticated", control("authenticated")).await;
    assert_eq!(hello["user_id"], user.as_str());
    // A valid token without an upgrade: 426, in the API's error shape.
    let plain = reqwest::get(format!("http://{}/ws?token={token}", gw.addr))
        .await
        .expect("an answer");
    assert_eq!(plain.status(), 426);
    let body: Value = plain.json().await.expect("JSON");
    assert_eq!(body["error"], "upgrade_required");

    // No auth message in time.
    let mut ws = gw.connect("").await;
    match read(&mut ws, Duration::from_secs(5)).await {
        Read::Closed(Some((code, reason))) => {
            assert_eq!(code, CloseCode::Policy);
            assert!(reason.contains("timed out"), "{reason}");
        }
        other => panic!("no auth message: {other:?}"),
    }
    // Another message first, or a bad token in the auth message.
    for first in [
        json!({"action": "subscribe", "symbols": ["EURUSD"]}),
        json!({"action": "auth", "token": "not.a.jwt"}),
        json!({"action": "auth"}),
    ] {
        let mut ws = gw.connect("").await;
        send(&mut ws, first.clone()).await;
        match read(&mut ws, Duration::from_secs(5)).await {
            Read::Closed(Some((code, reason))) => {
                assert_eq!(code, CloseCode::Policy, "{first}");
                assert!(!reason.is_empty());
            }
            other => panic!("{first}: {other:?}"),
        }
    }

    // A connection ends when its token expires: whatever it is doing, ready or still
    // catching up, the close comes with the token's `exp`.
    let brief = gw.brief_token().await;
    let mut ws = gw.connect(&format!("token={brief}")).await;
    until(&mut ws, "authenticated", control("authenticated")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match read(&mut ws, left).await {
            Read::Json(v) if v["channel"] == "control" => {}
            Read::Closed(Some((code, reason))) => {
                assert_eq!(code, CloseCode::Policy);
                assert!(reason.contains("expired"), "{reason}");
                break;
            }
            other => panic!("an expired token: {other:?}"),
        }
    }

    // A token whose session was logged out: an open connection is closed, and it is refused
    // either way.
    let mut open = gw.connect(&format!("token={token}")).await;
    until(&mut open, "ready", control("ready")).await;
    let claims = gw.accounts.authenticate(&token).await.expect("valid");
    gw.accounts.logout(&claims, None).await.expect("logs out");
    match read(&mut open, Duration::from_secs(5)).await {
        Read::Closed(Some((code, reason))) => {
            assert_eq!(code, CloseCode::Policy);
            assert!(reason.contains("logged out"), "{reason}");
        }
        other => panic!("an open connection of a logged-out token: {other:?}"),
    }
    assert_eq!(gw.refused(&format!("token={token}")).await, 401);
    let mut ws = gw.connect("").await;
    send(&mut ws, json!({"action": "auth", "token": token})).await;
    match read(&mut ws, Duration::from_secs(5)).await {
        Read::Closed(Some((code, reason))) => {
            assert_eq!(code, CloseCode::Policy);
            assert!(reason.contains("logged out"), "{reason}");
        }
        other => panic!("a logged-out token: {other:?}"),
    }
}

#[tokio::test]
async fn each_connection_receives_only_its_own_users_events() {
    let gw = Gateway::start(WsOptions::default()).await;
    let mut users = Vec::new();
    for _ in 0..12 {
        users.push(gw.user().await);
    }
    // Two connections for the first user (query token and auth message), one for each other.
    let mut conns: Vec<(String, Ws)> = Vec::new();
    for (i, (user, token)) in users.iter().enumerate() {
        let mut ws = gw.connect(&format!("token={token}")).await;
        until(&mut ws, "authenticated", control("authenticated")).await;
        conns.push((user.clone(), ws));
        if i == 0 {
            let mut ws = gw.connect("").await;
            send(&mut ws, json!({"action": "auth", "token": token})).await;
            until(&mut ws, "authenticated", control("authenticated")).await;
            conns.push((user.clone(), ws));
        }
    }
    // Every user trades at once: each user's events in order, the users' interleaved.
    const EACH: u64 = 20;
    let per_user = users.iter().map(|(user, _)| async {
        let mut positions = Vec::new();
        for seq in 0..EACH {
            positions.push(gw.trade(user, seq, 0).await);
        }
        (user.clone(), positions)
    });
    let expected: HashMap<String, Vec<String>> = futures::future::join_all(per_user)
        .await
        .into_iter()
        .collect();
    for (user, ws) in &mut conns {
        let mut got = Vec::new();
        while got.len() < EACH as usize {
            let v = until(ws, "a user event", |v| v["channel"] == "user").await;
            assert_eq!(v["topic"], "user.trades");
            assert_eq!(v["data"]["user_id"], user.as_str(), "another user's event");
            assert_eq!(v["data"]["seq"], got.len() as u64);
            got.push(v["position"].as_str().expect("a position").to_string());
        }
        assert_eq!(&got, &expected[user.as_str()]);
    }
    // Nothing else arrives.
    for (_, ws) in &mut conns {
        quiet(ws).await;
    }
}

#[tokio::test]
async fn subscribed_symbols_receive_market_data_in_the_envelope_until_unsubscribed() {
    let gw = Gateway::start(WsOptions::default()).await;
    let (user, token) = gw.user().await;
    let settings = suho_domain::UserSettings {
        watchlist: vec![suho_domain::Symbol::parse("GBPUSD").expect("a symbol")],
        ..suho_domain::UserSettings::default()
    };
    let user_id = suho_domain::UserId::new(user.clone());
    let event = suho_domain::SettingsEvent {
        event_id: suho_domain::new_event_id("set"),
        event_type: suho_domain::SettingsEventType::SettingsUpdated,
        user_id: user_id.clone(),
        settings: Some(serde_json::to_value(&settings).expect("encodes")),
        mt5_account: None,
        timestamp: suho_messaging::now_ms(),
        schema_version: suho_domain::SCHEMA_VERSION,
    };
    gw.accounts
        .update_settings(&user_id, |_| {
            let stored = suho_gateway::outbox::stored(&event).expect("encodes");
            Ok::<_, suho_accounts::AccountError>((settings, stored))
        })
        .await
        .expect("stores settings");

    let mut ws = gw.connect(&format!("token={token}")).await;
    let hello = until(&mut ws, "authenticated", control("authenticated")).await;
    assert_eq!(
        hello["symbols"],
        json!(["GBPUSD"]),
        "the watchlist by default"
    );

    // Bad input is answered with an error naming the field; the connection stays.
    send(
        &mut ws,
        json!({"action": "subscribe", "symbols": ["EURUSD", "EU1USD"]}),
    )
    .await;
    let e = until(&mut ws, "an error", |v| v["channel"] == "error").await;
    assert_eq!(e["field"], "symbols[1]");
    send(&mut ws, json!({"action": "subscribe"})).await;
    let e = until(&mut ws, "an error", |v| v["channel"] == "error").await;
    assert_eq!(e["field"], "symbols");
    send(
        &mut ws,
        json!({"action": "subscribe", "symbols": ["eur/usd"]}),
    )
    .await;
    let ack = until(&mut ws, "subscribed", control("subscribed")).await;
    assert_eq!(ack["symbols"], json!(["EURUSD", "GBPUSD"]));

    let tick = json!({"symbol": "EUR/USD", "bid": 1.1, "ask": 1.1002, "mid": 1.1001, "spread": 0.0002, "timestamp": 1, "source": "test"});
    gw.publish("market.USDJPY.tick", json!({"symbol": "USD/JPY"}))
        .await;
    gw.publish("market.EURUSD.price", json!({})).await;
    gw.publish("market.EURUSD.tick", tick.clone()).await;
    gw.publish(
        "market.EURUSD.1m",
        json!({"symbol": "EURUSD", "timeframe": "1m"}),
    )
    .await;
    gw.publish(
        "indicators.rsi.EURUSD",
        json!({"symbol": "EURUSD", "indicator": "rsi"}),
    )
    .await;
    gw.publish(
        "signals.scalping.EURUSD",
        json!({"symbol": "EURUSD", "direction": "BUY"}),
    )
    .await;
    gw.publish("market.GBPUSD.tick", json!({"symbol": "GBP/USD"}))
        .await;
    let mut subjects = Vec::new();
    while subjects.len() < 5 {
        let v = until(&mut ws, "market data", |v| v["channel"] == "market").await;
        let subject = v["subject"].as_str().expect("a subject").to_string();
        if subject == "market.EURUSD.tick" {
            assert_eq!(v["data"], tick, "the payload as published");
        }
        subjects.push(subject);
    }
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "indicators.rsi.EURUSD",
            "market.EURUSD.1m",
            "market.EURUSD.tick",
            "market.GBPUSD.tick",
            "signals.scalping.EURUSD",
        ]
    );

    send(
        &mut ws,
        json!({"action": "unsubscribe", "symbols": ["EURUSD"]}),
    )
    .await;
    let ack = until(&mut ws, "unsubscribed", control("unsubscribed")).await;
    assert_eq!(ack["symbols"], json!(["GBPUSD"]));
    gw.publish("market.EURUSD.tick", tick.clone()).await;
    gw.publish("market.GBPUSD.tick", json!({"symbol": "GBP/USD", "n": 2}))
        .await;
    let v = until(&mut ws, "market data", |v| v["channel"] == "market").await;
    assert_eq!(
        v["subject"], "market.GBPUSD.tick",
        "EURUSD was unsubscribed"
    );
    assert_eq!(v["data"]["n"], 2);
    quiet(&mut ws).await;
}

/// Reads user events into `seqs`; stops after `stop_after` new events or at `last`. Returns
/// the last position and the number of events a `ready` message said were caught up.
async fn collect(
    ws: &mut Ws,
    seqs: &mut Vec<u64>,
    stop_after: usize,
    last: u64,
) -> (String, Option<u64>) {
    let mut position = String::new();
    let mut caught_up = None;
    let mut ready = false;
    let start = seqs.len();
    // Past `stop_after` events, still up to `ready`: a resume's catch-up can be longer.
    while (seqs.len() - start < stop_after || !ready) && seqs.last() != Some(&last) {
        let v = until(ws, "a user event", |v| {
            v["channel"] == "user" || control("ready")(v)
        })
        .await;
        if v["channel"] == "control" {
            caught_up = v["events"].as_u64();
            ready = true;
            continue;
        }
        seqs.push(v["data"]["seq"].as_u64().expect("seq"));
        position = v["position"].as_str().expect("a position").to_string();
    }
    (position, caught_up)
}

#[tokio::test]
async fn a_connection_killed_mid_burst_resumes_with_every_event_once_in_order() {
    let gw = Arc::new(Gateway::start(WsOptions::default()).await);
    let (user, token) = gw.user().await;
    let (other, _) = gw.user().await;
    const TOTAL: u64 = 300;

    let mut ws = gw.connect(&format!("token={token}")).await;
    until(&mut ws, "authenticated", control("authenticated")).await;
    let producing = {
        let gw = gw.clone();
        let (user, other) = (user.clone(), other.clone());
        tokio::spawn(async move {
            for seq in 0..TOTAL {
                gw.trade(&user, seq, 0).await;
                // Another user's events share the log (and maybe the partition).
                gw.trade(&other, seq, 0).await;
                if seq % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };

    let mut seqs = Vec::new();
    // Killed without a close handshake, mid-burst.
    let (position, _) = collect(&mut ws, &mut seqs, 40, TOTAL - 1).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Resume through the query parameter.
    let mut ws = gw
        .connect(&format!("token={token}&resume={position}"))
        .await;
    let (position, caught_up) = collect(&mut ws, &mut seqs, 100, TOTAL - 1).await;
    assert!(
        caught_up.is_some_and(|n| n > 0),
        "the events produced while away came from the log: {caught_up:?}"
    );
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Resume through the auth message.
    let mut ws = gw.connect("").await;
    send(
        &mut ws,
        json!({"action": "auth", "token": token, "positions": [position]}),
    )
    .await;
    collect(&mut ws, &mut seqs, usize::MAX, TOTAL - 1).await;
    producing.await.expect("the producer");
    assert_eq!(
        seqs,
        (0..TOTAL).collect::<Vec<_>>(),
        "every event once, in order"
    );
    quiet(&mut ws).await;

    // A resume after the connection's first user event is refused (it could not be in order).
    let mut ws = gw.connect(&format!("token={token}")).await;
    until(&mut ws, "authenticated", control("authenticated")).await;
    gw.trade(&user, TOTAL, 0).await;
    until(&mut ws, "a user event", |v| v["channel"] == "user").await;
    send(
        &mut ws,
        json!({"action": "resume", "positions": ["user.trades:0:0"]}),
    )
    .await;
    let e = until(&mut ws, "an error", |v| v["channel"] == "error").await;
    assert_eq!(e["field"], "action");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_holds_up_no_one_and_is_closed_when_its_events_overflow() {
    // Enough events of 4 KiB to fill the stalled client's socket buffers and then its queue.
    let options = WsOptions {
        user_queue: 512,
        ..WsOptions::default()
    };
    let gw = Arc::new(Gateway::start(options).await);
    let (user, token) = gw.user().await;
    let (other, other_token) = gw.user().await;

    // A client with a tiny receive buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(gw.addr).await.expect("connects");
    let (mut stalled, _) = tokio_tungstenite::client_async(
        gw.url(&format!("token={token}")),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("the upgrade");

    let mut same = gw.connect(&format!("token={token}")).await;
    until(&mut same, "authenticated", control("authenticated")).await;
    let mut another = gw.connect(&format!("token={other_token}")).await;
    until(&mut another, "authenticated", control("authenticated")).await;

    const TOTAL: u64 = 3000;
    let producing = {
        let gw = gw.clone();
        let (user, other) = (user.clone(), other.clone());
        tokio::spawn(async move {
            for batch in (0..TOTAL).collect::<Vec<_>>().chunks(50) {
                let sends = batch.iter().map(|seq| gw.trade(&user, *seq, 4 * 1024));
                futures::future::join_all(sends).await;
                gw.trade(&other, batch[0], 0).await;
                // At most ~20,000 events a second: the readers here parse every one.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    // The other connection of the same user and another user's connection get everything.
    let mut n = 0;
    while n < TOTAL {
        let v = until(&mut same, "a user event", |v| v["channel"] == "user").await;
        assert_eq!(v["data"]["user_id"], user.as_str());
        n += 1;
    }
    let mut m = 0;
    while m < TOTAL / 50 {
        until(&mut another, "a user event", |v| v["channel"] == "user").await;
        m += 1;
    }
    producing.await.expect("the producer");

    // The stalled client was cut off: reading now, it finds the end before all events.
    let mut received = 0_u64;
    let end = loop {
        match read(&mut stalled, Duration::from_secs(20)).await {
            Read::Json(v) if v["channel"] == "user" => received += 1,
            Read::Json(_) => {}
            other => break other,
        }
    };
    assert!(
        received < TOTAL,
        "the stalled client got all {received} events"
    );
    match end {
        Read::Closed(Some((code, reason))) => {
            assert_eq!(code, CloseCode::Again);
            assert!(reason.contains("too slow"), "{reason}");
        }
        Read::Closed(None) => {} // the close frame could not be written to a full socket
        Read::Timeout => panic!("the stalled client is still connected after {received} events"),
        Read::Json(_) => unreachable!(),
    }
    let metrics = suho_telemetry::metrics().render();
    assert!(
        metrics.contains("ws_disconnected_slow_total"),
        "the slow disconnect is counted"
    );
}

/// A topic the client had no event of yet resumes from the position its connection started at
/// (the `ready` message's), so nothing of it is missed while away either.
#[tokio::test]
async fn the_ready_positions_resume_every_topic_without_a_gap() {
    let gw = Gateway::start(WsOptions::default()).await;
    let (user, token) = gw.user().await;
    let mut ws = gw.connect(&format!("token={token}")).await;
    let ready = until(&mut ws, "ready", control("ready")).await;
    let positions: Vec<String> = ready["positions"]
        .as_array()
        .expect("positions")
        .iter()
        .map(|p| p.as_str().expect("a string").to_string())
        .collect();
    let topics: Vec<&str> = positions
        .iter()
        .map(|p| p.split(':').next().expect("a topic"))
        .collect();
    assert_eq!(
        topics,
        [
            "user.trades",
            "user.mt5_status",
            "user.risk_alerts",
            "user.transactions"
        ]
    );
    drop(ws);

    // While away: one event on each of two topics the connection never had an event of.
    let event = |kind: &str| {
        json!({"event_id": format!("evt_{kind}"), "event_type": kind, "user_id": user,
               "timestamp": 1, "schema_version": 1})
        .to_string()
    };
    for (topic, kind) in [
        (UserTopic::RiskAlerts, "MARGIN_CALL"),
        (UserTopic::Transactions, "DEPOSIT"),
    ] {
        gw.engine
            .send_raw(topic, &user, event(kind).as_bytes(), None)
            .await
            .expect("Kafka takes it");
    }

    let mut ws = gw
        .connect(&format!("token={token}&resume={}", positions.join(",")))
        .await;
    assert_eq!(
        missed(&mut ws).await,
        ["user.risk_alerts MARGIN_CALL", "user.transactions DEPOSIT"]
    );
    let ready = until(&mut ws, "ready", control("ready")).await;
    assert_eq!(ready["events"], 2);

    // A resume message right after connecting (before `ready`) works as well.
    let mut ws = gw.connect(&format!("token={token}")).await;
    send(&mut ws, json!({"action": "resume", "positions": positions})).await;
    assert_eq!(
        missed(&mut ws).await,
        ["user.risk_alerts MARGIN_CALL", "user.transactions DEPOSIT"]
    );
}

/// The next two user events as `topic EVENT_TYPE`, sorted (two topics have no order between
/// them).
async fn missed(ws: &mut Ws) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..2 {
        let v = until(ws, "a missed event", |v| v["channel"] == "user").await;
        got.push(format!(
            "{} {}",
            v["topic"].as_str().expect("a topic"),
            v["data"]["event_type"].as_str().expect("a type")
        ));
    }
    got.sort();
    got
}

#[tokio::test]
async fn two_gateway_instances_serve_any_user_and_resume_each_others_positions() {
    let gw = Gateway::start(WsOptions::default()).await;
    let b = gw.another_instance().await;
    let (user, token) = gw.user().await;
    let (other, other_token) = gw.user().await;
    // The user on both instances at once, another user on the second one.
    let mut on_a = gw.connect(&format!("token={token}")).await;
    let mut on_b = connect_to(b, &format!("token={token}")).await;
    let mut other_on_b = connect_to(b, &format!("token={other_token}")).await;
    for ws in [&mut on_a, &mut on_b, &mut other_on_b] {
        until(ws, "ready", control("ready")).await;
    }
    const EACH: u64 = 30;
    let mut positions = Vec::new();
    for seq in 0..EACH {
        positions.push(gw.trade(&user, seq, 0).await);
        gw.trade(&other, seq, 0).await;
    }
    // Each instance reads every partition: both of the user's connections get every event,
    // in order, and the other user gets only theirs.
    for ws in [&mut on_a, &mut on_b] {
        for (seq, position) in positions.iter().enumerate() {
            let v = until(ws, "a user event", |v| v["channel"] == "user").await;
            assert_eq!(v["data"]["user_id"], user.as_str());
            assert_eq!(v["data"]["seq"], seq as u64);
            assert_eq!(v["position"], position.as_str());
        }
    }
    for seq in 0..EACH {
        let v = until(&mut other_on_b, "a user event", |v| v["channel"] == "user").await;
        assert_eq!(v["data"]["user_id"], other.as_str(), "another user's event");
        assert_eq!(v["data"]["seq"], seq);
    }
    // The connection to A drops after the first ten; more events come; the client resumes
    // on B from the position A gave it: the rest, once each, in order.
    drop(on_a);
    let resume_from = positions[9].clone();
    for seq in EACH..EACH + 10 {
        positions.push(gw.trade(&user, seq, 0).await);
    }
    let mut resumed = connect_to(b, &format!("token={token}&resume={resume_from}")).await;
    let mut seqs = Vec::new();
    loop {
        let v = until(&mut resumed, "events, then ready", |v| {
            v["channel"] == "user" || v["event"] == "ready"
        })
        .await;
        if v["event"] == "ready" {
            break;
        }
        seqs.push(v["data"]["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seqs, (10..EACH + 10).collect::<Vec<_>>());
    quiet(&mut resumed).await;
}

/// A connection renews its token in place: a fresh token of the same user moves its expiry
/// (the stream outlives the first token), while an invalid or another user's token is an
/// error and changes nothing.
#[tokio::test]
async fn a_connection_renewed_with_a_fresh_token_outlives_the_first_one() {
    let gw = Gateway::start(WsOptions::default()).await;
    let (user, _) = gw.user().await;
    let (_, other) = gw.user().await;
    let brief = gw.brief_token().await;
    let mut ws = gw.connect(&format!("token={brief}")).await;
    until(&mut ws, "ready", control("ready")).await;

    for (token, why) in [
        ("not.a.jwt".to_string(), "invalid token"),
        (other.clone(), "another user's"),
    ] {
        send(&mut ws, json!({"action": "auth", "token": token})).await;
        let e = until(&mut ws, "an error", |v| v["channel"] == "error").await;
        assert_eq!(e["field"], "token");
        assert!(
            e["message"].as_str().unwrap_or_default().contains(why),
            "{e}"
        );
    }
    // The dashboard's path: refresh over HTTP, then hand the new token to the stream.
    let claims = gw.accounts.authenticate(&brief).await.expect("valid");
    let fresh = gw.accounts.refresh(&claims).expect("a refreshed token");
    send(
        &mut ws,
        json!({"action": "auth", "token": fresh.token.expose_secret()}),
    )
    .await;
    let again = until(&mut ws, "authenticated", control("authenticated")).await;
    assert_eq!(again["user_id"], user.as_str());
    // Past the first token's expiry, the connection is still open.
    match read(&mut ws, Duration::from_secs(5)).await {
        Read::Timeout | Read::Json(_) => {}
        Read::Closed(c) => panic!("closed although renewed: {c:?}"),
    }
    send(
        &mut ws,
        json!({"action": "subscribe", "symbols": ["EURUSD"]}),
    )
    .await;
    until(&mut ws, "subscribed", control("subscribed")).await;
}

/// API keys over HTTP and `/ws`: made with a password login's token and shown once, stored
/// only as a hash, held to their scopes, unable to manage keys or the account, and refused
/// (an open stream closed) once revoked.
#[tokio::test]
async fn api_keys_are_scoped_shown_once_and_refused_once_revoked() {
    let options = WsOptions {
        token_recheck: Duration::from_millis(300),
        ..WsOptions::default()
    };
    let gw = Gateway::start(options).await;
    let (user, session) = gw.user().await;
    let (other, _) = gw.user().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", gw.addr);
    let call = |method: reqwest::Method, path: String, token: String, body: Option<Value>| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let mut req = http.request(method, url).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.expect("an answer");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let keys = format!("/api/user/{user}/api-keys");
    let make = |scopes: Value| {
        call(
            reqwest::Method::POST,
            keys.clone(),
            session.clone(),
            Some(json!({"name": "bot", "scopes": scopes})),
        )
    };

    // Bad requests name their field.
    for (body, field) in [
        (json!({"name": "bot", "scopes": []}), "scopes"),
        (json!({"name": "bot", "scopes": ["admin"]}), "scopes"),
        (json!({"name": "", "scopes": ["read"]}), "name"),
        (json!({"name": "bot", "scopes": ["read"], "ttl": 5}), "ttl"),
    ] {
        let (status, e) = call(
            reqwest::Method::POST,
            keys.clone(),
            session.clone(),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (status, e["field"].as_str()),
            (422, Some(field)),
            "{body} -> {e}"
        );
    }

    let (status, read_key) = make(json!(["read"])).await;
    assert_eq!(status, 201, "{read_key}");
    let read_secret = read_key["key"].as_str().expect("the key").to_string();
    assert!(read_secret.starts_with("suho_ak_"), "{read_secret}");
    let (_, trade_key) = make(json!(["trade"])).await;
    let trade_secret = trade_key["key"].as_str().expect("the key").to_string();

    // Listed without secrets; stored as a hash.
    let (status, list) = call(reqwest::Method::GET, keys.clone(), session.clone(), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["api_keys"].as_array().map(Vec::len), Some(2));
    assert!(!list.to_string().contains(&read_secret[8..]), "{list}");
    let operator = gw.env.pool(Identity::Operator).await;
    let stored: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT key_id, secret_hash FROM api_keys")
        .fetch_all(&operator)
        .await
        .expect("the keys' rows");
    for (_, hash) in &stored {
        assert_eq!(hash.len(), 32);
        assert!(!read_secret
            .as_bytes()
            .windows(hash.len())
            .any(|w| w == hash.as_slice()));
    }

    // Scopes.
    let settings = format!("/api/user/{user}/settings");
    let open = || json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.01});
    for (method, path, key, body, want) in [
        (
            reqwest::Method::GET,
            settings.clone(),
            &read_secret,
            None,
            200,
        ),
        (
            reqwest::Method::POST,
            "/api/trade/open".to_string(),
            &read_secret,
            Some(open()),
            403,
        ),
        (
            reqwest::Method::GET,
            settings.clone(),
            &trade_secret,
            None,
            403,
        ),
        (
            reqwest::Method::POST,
            "/api/trade/open".to_string(),
            &trade_secret,
            Some(open()),
            202,
        ),
    ] {
        let (status, e) = call(method.clone(), path.clone(), key.clone(), body).await;
        assert_eq!(status, want, "{method} {path}: {e}");
        if status == 403 {
            let message = e["message"].as_str().unwrap_or_default();
            assert!(message.contains("scope"), "{e}");
        }
    }
    // Never the account itself, another user's data, keys or a refresh.
    for (method, path, body) in [
        (
            reqwest::Method::PUT,
            settings.clone(),
            Some(json!({"watchlist": ["EURUSD"]})),
        ),
        (
            reqwest::Method::POST,
            keys.clone(),
            Some(json!({"name": "x", "scopes": ["read"]})),
        ),
        (reqwest::Method::GET, keys.clone(), None),
        (
            reqwest::Method::GET,
            format!("/api/user/{other}/settings"),
            None,
        ),
        (reqwest::Method::POST, "/api/auth/refresh".into(), None),
        (reqwest::Method::POST, "/api/auth/logout".into(), None),
    ] {
        let (status, e) = call(method.clone(), path.clone(), read_secret.clone(), body).await;
        assert_eq!(status, 403, "{method} {path}: {e}");
    }
    // A session refreshes.
    let (status, fresh) = call(
        reqwest::Method::POST,
        "/api/auth/refresh".into(),
        session.clone(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    let fresh = fresh["access_token"].as_str().expect("a token").to_string();
    let (status, _) = call(reqwest::Method::GET, settings.clone(), fresh, None).await;
    assert_eq!(status, 200);

    // The stream: a read key streams, a trade-only key may not.
    assert_eq!(gw.refused(&format!("token={trade_secret}")).await, 403);
    let mut ws = gw.connect(&format!("token={read_secret}")).await;
    let hello = until(&mut ws, "authenticated", control("authenticated")).await;
    assert_eq!(hello["user_id"], user.as_str());
    until(&mut ws, "ready", control("ready")).await;

    // Revoked: refused at once, and the open stream is closed at its next check.
    let key_id = read_key["key_id"].as_str().expect("an id");
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{keys}/{key_id}"),
        session.clone(),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        reqwest::Method::DELETE,
        format!("{keys}/{key_id}"),
        session.clone(),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, e) = call(reqwest::Method::GET, settings, read_secret.clone(), None).await;
    assert_eq!(status, 401, "{e}");
    match read(&mut ws, Duration::from_secs(5)).await {
        Read::Closed(Some((code, reason))) => {
            assert_eq!(code, CloseCode::Policy);
            assert!(
                reason.contains("revoked") || reason.contains("logged out"),
                "{reason}"
            );
        }
        other => panic!("a revoked key's stream: {other:?}"),
    }
    let (_, list) = call(reqwest::Method::GET, keys, session, None).await;
    assert_eq!(list["api_keys"].as_array().map(Vec::len), Some(1));
}
