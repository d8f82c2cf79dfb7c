//! The trading engine against real Kafka and NATS: commands produced on `user.commands` are
//! answered on `user.trades` at a real quote, unreadable records land in `user.commands.dlq`
//! without stalling their partition, unsupported or mis-keyed commands are rejected with a
//! reason, and a command with no price yet waits (across a restart) and is executed once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rust_decimal::Decimal;
use suho_broker::PaperBroker;
use suho_domain::{
    Order, Side, Symbol, Tick, TradeCommand, TradeEvent, TradeEventType, TradeStatus, UserId,
    UserTopic,
};
use suho_market::{run_feed, run_price_service, PriceServiceConfig, SyntheticFeed};
use suho_messaging::{now_ms, UserEventProducer};
use suho_security::Identity;
use suho_testkit::TestEnv;
use suho_trading::{Engine, EngineError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn sym(s: &str) -> Symbol {
    Symbol::parse(s).unwrap()
}

fn open(user: &str, symbol: &str, side: Side) -> TradeCommand {
    let order = Order {
        symbol: sym(symbol),
        side,
        volume: Decimal::new(1, 1),
        stop_loss: None,
        take_profit: None,
    };
    TradeCommand::open(UserId::new(user), order, None, now_ms())
}

/// The bids and the asks published for one symbol.
type BidsAndAsks = (HashSet<Decimal>, HashSet<Decimal>);

/// Every bid and ask the feed published, per symbol.
#[derive(Clone, Default)]
struct SeenQuotes(Arc<Mutex<HashMap<Symbol, BidsAndAsks>>>);

impl SeenQuotes {
    fn had(&self, symbol: Symbol, side: Side, price: Decimal) -> bool {
        let seen = self.0.lock().unwrap();
        seen.get(&symbol).is_some_and(|(bids, asks)| match side {
            Side::Buy => asks.contains(&price),
            Side::Sell => bids.contains(&price),
        })
    }
}

/// Starts the price service, and (with `feed`) the synthetic feed; returns what the feed
/// published, as seen by a subscriber started before it.
async fn start_market(env: &TestEnv, shutdown: &CancellationToken, feed: bool) -> SeenQuotes {
    let bus = env.bus(Identity::Operator).await;
    let symbols = suho_domain::major_fx();
    let seen = SeenQuotes::default();
    let mut ticks = bus
        .subscribe(suho_domain::subject::all_ticks(&env.prefix))
        .await
        .unwrap();
    let record = seen.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                m = ticks.next() => match m { Some(m) => m, None => return },
            };
            let tick: Tick = serde_json::from_slice(&msg.payload).unwrap();
            let mut seen = record.0.lock().unwrap();
            let entry = seen.entry(tick.symbol).or_default();
            entry.0.insert(tick.bid);
            entry.1.insert(tick.ask);
        }
    });
    tokio::spawn(run_price_service(
        env.bus(Identity::Price).await,
        PriceServiceConfig {
            symbols: symbols.iter().copied().collect(),
            max_age_ms: 5000,
            observer: None,
        },
        shutdown.clone(),
    ));
    if feed {
        // Let the price service and the recorder subscribe before the first tick.
        bus.client().flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::spawn(run_feed(
            env.bus(Identity::Feed).await,
            SyntheticFeed::new(&symbols, 42),
            symbols.len(),
            50.0,
            shutdown.clone(),
        ));
    }
    seen
}

async fn start_engine(
    env: &TestEnv,
    shutdown: &CancellationToken,
) -> JoinHandle<Result<(), EngineError>> {
    let bus = env.bus(Identity::Engine).await;
    let t = &env.config.trading;
    let venue = PaperBroker::for_platform(t.paper_leverage, t.paper_opening_balance).unwrap();
    let engine = Engine::new(&env.config, bus, venue).unwrap();
    tokio::spawn(engine.run(shutdown.clone()))
}

async fn stop_engine(shutdown: &CancellationToken, engine: JoinHandle<Result<(), EngineError>>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), engine)
        .await
        .expect("the engine stops promptly on shutdown")
        .expect("the engine task did not panic")
        .expect("the engine stops without error");
}

/// A plain consumer of one topic, in its own group, reading only committed records.
fn reader(env: &TestEnv, topic: UserTopic) -> StreamConsumer {
    let consumer: StreamConsumer =
        suho_messaging::kafka::base_config(&env.kafka(Identity::Operator))
            .set(
                "group.id",
                format!("{}test-reader-{}", env.prefix, topic.name()),
            )
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
    consumer
        .subscribe(&[topic.full_name(&env.prefix).as_str()])
        .unwrap();
    consumer
}

struct Record {
    key: String,
    value: Vec<u8>,
    headers: HashMap<String, String>,
}

async fn next_record(consumer: &StreamConsumer, within: Duration) -> Option<Record> {
    let msg = tokio::time::timeout(within, consumer.recv()).await.ok()?;
    let msg = msg.unwrap();
    let headers = msg
        .headers()
        .map(|h| {
            h.iter()
                .map(|hd| {
                    (
                        hd.key.to_string(),
                        String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Record {
        key: String::from_utf8(msg.key().unwrap_or_default().to_vec()).unwrap(),
        value: msg.payload().unwrap_or_default().to_vec(),
        headers,
    })
}

/// The next `n` trade events (with their record keys), failing after [`WAIT`].
async fn trades(consumer: &StreamConsumer, n: usize) -> Vec<(String, TradeEvent)> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next_record(consumer, WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {n} trade events within {WAIT:?}", out.len()));
        assert!(r.headers.contains_key("event_type"), "event_type header");
        out.push((r.key, serde_json::from_slice(&r.value).unwrap()));
    }
    out
}

fn find<'a>(events: &'a [(String, TradeEvent)], cmd: &TradeCommand) -> &'a (String, TradeEvent) {
    let mut matching = events
        .iter()
        .filter(|(_, e)| e.command_id.as_deref() == Some(cmd.head.event_id.as_str()));
    let found = matching
        .next()
        .unwrap_or_else(|| panic!("no event for {}", cmd.head.event_id));
    assert!(matching.next().is_none(), "one event per command");
    found
}

fn assert_executed(found: &(String, TradeEvent), cmd: &TradeCommand, quotes: &SeenQuotes) {
    let (key, event) = found;
    let order = cmd.kind.order().unwrap();
    assert_eq!(key, cmd.head.user_id.as_str(), "record key is the user id");
    assert_eq!(event.event_type, TradeEventType::TradeExecuted, "{event:?}");
    assert_eq!(event.status, Some(TradeStatus::Success));
    assert_eq!(event.user_id, cmd.head.user_id);
    assert_eq!(event.event_id, format!("exec_{}", cmd.head.event_id));
    assert_eq!(
        event.trade_id.as_deref(),
        Some(format!("trd_{}", &cmd.head.event_id["cmd_".len()..]).as_str())
    );
    assert_eq!(event.symbol, Some(order.symbol));
    assert_eq!(event.action, Some(order.side));
    assert_eq!(event.volume, Some(order.volume));
    let price = event.execution_price.expect("an execution price");
    assert!(price > Decimal::ZERO);
    assert_eq!(event.open_price, Some(price));
    assert!(
        quotes.had(order.symbol, order.side, price),
        "{} {} filled at {price}, which the feed never quoted on that side",
        order.side,
        order.symbol
    );
}

#[tokio::test]
async fn open_trades_execute_at_the_quote_keyed_by_user() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let quotes = start_market(&env, &shutdown, true).await;
    let engine = start_engine(&env, &shutdown).await;
    let out = reader(&env, UserTopic::Trades);

    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    let commands = [
        open("alice", "EURUSD", Side::Buy),
        open("bob", "GBPUSD", Side::Sell),
        open("alice", "USDJPY", Side::Sell),
        open("bob", "EURUSD", Side::Buy),
    ];
    let started = std::time::Instant::now();
    for cmd in &commands {
        producer.send(cmd).await.unwrap();
    }
    let events = trades(&out, commands.len()).await;
    eprintln!(
        "{} commands answered in {:?}",
        commands.len(),
        started.elapsed()
    );
    for cmd in &commands {
        assert_executed(find(&events, cmd), cmd, &quotes);
    }
    assert!(
        next_record(&out, Duration::from_millis(500))
            .await
            .is_none(),
        "no extra trade events"
    );
    stop_engine(&shutdown, engine).await;
}

#[tokio::test]
async fn garbage_is_dead_lettered_and_the_partition_keeps_flowing() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let quotes = start_market(&env, &shutdown, true).await;
    let engine = start_engine(&env, &shutdown).await;
    let trades_out = reader(&env, UserTopic::Trades);
    let dlq = reader(&env, UserTopic::CommandsDlq);

    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    let garbage = b"\x00not json";
    let at = producer
        .send_raw(UserTopic::Commands, "carol", garbage, None)
        .await
        .unwrap();
    // Same key, so the same partition, right behind the bad record.
    let cmd = open("carol", "EURUSD", Side::Buy);
    let after = producer.send(&cmd).await.unwrap();
    assert_eq!(after.partition, at.partition);

    let dead = next_record(&dlq, WAIT).await.expect("a dead-letter record");
    assert_eq!(dead.key, "carol");
    assert_eq!(dead.value, garbage);
    let reason = dead.headers.get("dlq.reason").expect("dlq.reason header");
    assert!(reason.contains("not a trade command"), "{reason}");
    assert_eq!(
        dead.headers.get("dlq.topic"),
        Some(&UserTopic::Commands.full_name(&env.prefix))
    );
    assert_eq!(
        dead.headers.get("dlq.partition"),
        Some(&at.partition.to_string())
    );
    assert_eq!(dead.headers.get("dlq.offset"), Some(&at.offset.to_string()));

    let events = trades(&trades_out, 1).await;
    assert_executed(find(&events, &cmd), &cmd, &quotes);
    assert!(next_record(&dlq, Duration::from_millis(300))
        .await
        .is_none());
    stop_engine(&shutdown, engine).await;
}

#[tokio::test]
async fn close_and_mis_keyed_commands_are_rejected_with_a_reason() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let _quotes = start_market(&env, &shutdown, true).await;
    let engine = start_engine(&env, &shutdown).await;
    let out = reader(&env, UserTopic::Trades);

    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    let close = TradeCommand::close(UserId::new("dave"), "trd_123", now_ms());
    producer.send(&close).await.unwrap();
    let mis_keyed = open("erin", "EURUSD", Side::Buy);
    producer
        .send_raw(
            UserTopic::Commands,
            "mallory",
            &serde_json::to_vec(&mis_keyed).unwrap(),
            None,
        )
        .await
        .unwrap();

    let events = trades(&out, 2).await;
    for (cmd, want) in [
        (&close, "position trd_123 is not open"),
        (&mis_keyed, "record key does not match user_id"),
    ] {
        let (key, event) = find(&events, cmd);
        assert_eq!(key, cmd.head.user_id.as_str());
        assert_eq!(event.event_type, TradeEventType::TradeRejected);
        assert_eq!(event.status, Some(TradeStatus::Rejected));
        assert_eq!(event.event_id, format!("rej_{}", cmd.head.event_id));
        let reason = event.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(want), "{reason}");
        assert!(event.execution_price.is_none());
    }
    stop_engine(&shutdown, engine).await;
}

/// Waits for `n` price requests seen by `sub` (a silent listener on the price subject).
async fn price_requests(sub: &mut async_nats::Subscriber, n: usize) {
    for i in 0..n {
        tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {i} of {n} price requests within {WAIT:?}"))
            .expect("subscription open");
    }
}

#[tokio::test]
async fn a_command_without_a_price_waits_across_a_restart_and_executes_once() {
    waits_across_a_restart(suho_config::Delivery::Transactions).await;
}

/// The same with the engine journaling (`trading.delivery = "journal"`).
#[tokio::test]
async fn journaled_a_command_without_a_price_waits_across_a_restart_and_executes_once() {
    waits_across_a_restart(suho_config::Delivery::Journal).await;
}

async fn waits_across_a_restart(delivery: suho_config::Delivery) {
    let mut env = TestEnv::new().await;
    env.config.trading.delivery = delivery;
    let out = reader(&env, UserTopic::Trades);
    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    let cmd = open("frank", "EURUSD", Side::Sell);
    producer.send(&cmd).await.unwrap();

    // A listener on the price subject that never answers: every request times out, and the
    // engine asks again and again for the same command without answering it.
    // As the price service: the only identity that may hear price requests.
    let watcher = env.bus(Identity::Price).await;
    let mut requests = watcher
        .subscribe(suho_domain::subject::price(&env.prefix, sym("EURUSD")))
        .await
        .unwrap();
    watcher.client().flush().await.unwrap();
    let first = CancellationToken::new();
    let engine = start_engine(&env, &first).await;
    price_requests(&mut requests, 2).await;
    assert!(
        next_record(&out, Duration::from_millis(200))
            .await
            .is_none(),
        "no outcome without a price"
    );
    // Shutdown during the retry wait: the command stays uncommitted.
    stop_engine(&first, engine).await;

    // After a restart, a price service with no quote yet (`no_quote`): still retried.
    let second = CancellationToken::new();
    let _no_feed = start_market(&env, &second, false).await;
    let engine = start_engine(&env, &second).await;
    price_requests(&mut requests, 2).await;
    assert!(next_record(&out, Duration::from_millis(200))
        .await
        .is_none());

    // Then the feed starts: the redelivered command is executed, once.
    let quotes = start_market(&env, &second, true).await;
    let events = trades(&out, 1).await;
    assert_executed(find(&events, &cmd), &cmd, &quotes);
    assert!(
        next_record(&out, Duration::from_millis(500))
            .await
            .is_none(),
        "executed exactly once"
    );
    stop_engine(&second, engine).await;
}

fn settings_event(user: &str, risk: serde_json::Value) -> suho_domain::SettingsEvent {
    suho_domain::SettingsEvent {
        event_id: format!("set_{user}_{}", now_ms()),
        event_type: suho_domain::SettingsEventType::SettingsUpdated,
        user_id: UserId::new(user),
        settings: Some(serde_json::json!({"risk": risk, "watchlist": [], "auto_trading": {}})),
        mt5_account: None,
        timestamp: now_ms(),
        schema_version: 1,
    }
}

fn sized(user: &str, volume: &str) -> TradeCommand {
    let mut c = open(user, "EURUSD", Side::Buy);
    if let suho_domain::CommandKind::OpenTrade(o) = &mut c.kind {
        o.order.volume = volume.parse().unwrap();
    }
    c
}

/// A user's own limits (`user.settings`) are enforced: read at start, followed live; a breach
/// is a `TRADE_REJECTED` plus a `RISK_LIMIT_BREACH`. Users without settings trade under the
/// defaults (10 lots).
#[tokio::test]
async fn users_own_limits_from_their_settings_are_enforced() {
    let env = TestEnv::new().await;
    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    // Saved before the engine starts: read on its first pass over user.settings.
    producer
        .send(&settings_event(
            "carol",
            serde_json::json!({"leverage": 50, "max_volume": 0.5, "max_open_positions": 1}),
        ))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    start_market(&env, &shutdown, true).await;
    let engine = start_engine(&env, &shutdown).await;
    let out = reader(&env, UserTopic::Trades);
    let alerts = reader(&env, UserTopic::RiskAlerts);

    let too_big = sized("carol", "0.6");
    let fits = sized("carol", "0.5");
    let one_too_many = sized("carol", "0.1");
    let dave_big = sized("dave", "11");
    let dave_ok = sized("dave", "5");
    for c in [&too_big, &fits, &one_too_many, &dave_big, &dave_ok] {
        producer.send(c).await.unwrap();
    }
    let events = trades(&out, 5).await;
    let reason = |c: &TradeCommand| find(&events, c).1.reason.clone().unwrap_or_default();
    assert!(
        reason(&too_big).contains("above the maximum of 0.5"),
        "{}",
        reason(&too_big)
    );
    assert_eq!(
        find(&events, &fits).1.event_type,
        TradeEventType::TradeExecuted
    );
    assert!(
        reason(&one_too_many).contains("open"),
        "{}",
        reason(&one_too_many)
    );
    assert!(
        reason(&dave_big).contains("above the maximum of 10"),
        "{}",
        reason(&dave_big)
    );
    assert_eq!(
        find(&events, &dave_ok).1.event_type,
        TradeEventType::TradeExecuted
    );
    let mut breaches = Vec::new();
    while breaches.len() < 3 {
        let r = next_record(&alerts, WAIT).await.expect("a breach alert");
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        if v["event_type"] == "RISK_LIMIT_BREACH" {
            breaches.push((r.key, v));
        }
    }
    let mut who: Vec<&str> = breaches.iter().map(|(k, _)| k.as_str()).collect();
    who.sort_unstable();
    assert_eq!(who, ["carol", "carol", "dave"]);

    // A change is followed live.
    producer
        .send(&settings_event(
            "carol",
            serde_json::json!({"leverage": 50, "max_volume": 2, "max_open_positions": 5}),
        ))
        .await
        .unwrap();
    // The engine follows user.settings on a task of its own: until it has read the change, a
    // 1.5-lot order is still over carol's old maximum.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now_fits = sized("carol", "1.5");
        producer.send(&now_fits).await.unwrap();
        let events = trades(&out, 1).await;
        let (_, event) = find(&events, &now_fits);
        if event.event_type == TradeEventType::TradeExecuted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol's new maximum never took effect: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_engine(&shutdown, engine).await;
}

/// More commands from one user in one second than `trading.max_commands_per_second` are
/// rejected with the reason; another user is not affected.
#[tokio::test]
async fn a_users_command_rate_is_limited() {
    let mut env = TestEnv::new().await;
    env.config.trading.max_commands_per_second = 3;
    let shutdown = CancellationToken::new();
    start_market(&env, &shutdown, true).await;
    let engine = start_engine(&env, &shutdown).await;
    let out = reader(&env, UserTopic::Trades);
    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    let burst: Vec<TradeCommand> = (0..5).map(|_| sized("erin", "0.01")).collect();
    let other = sized("frank", "0.01");
    // Sent first: the producer's first send waits for its connection. The burst is then queued
    // at once, in order, so its records' timestamps fall within the same second however slowly
    // the broker acknowledges.
    producer.send(&other).await.unwrap();
    let queued: Vec<_> = burst.iter().map(|c| producer.enqueue(c).unwrap()).collect();
    for q in queued {
        q.delivered().await.unwrap();
    }
    let events = trades(&out, burst.len() + 1).await;
    let kinds: Vec<TradeEventType> = burst
        .iter()
        .map(|c| find(&events, c).1.event_type)
        .collect();
    assert_eq!(
        kinds,
        [
            TradeEventType::TradeExecuted,
            TradeEventType::TradeExecuted,
            TradeEventType::TradeExecuted,
            TradeEventType::TradeRejected,
            TradeEventType::TradeRejected,
        ]
    );
    let reason = find(&events, &burst[4])
        .1
        .reason
        .clone()
        .unwrap_or_default();
    assert_eq!(reason, "rate limit: more than 3 commands in one second");
    assert_eq!(
        find(&events, &other).1.event_type,
        TradeEventType::TradeExecuted
    );
    stop_engine(&shutdown, engine).await;
}

/// Publishes one EURUSD quote as the feed does, and gives the engine and the price service
/// time to see it.
async fn quote(feed: &suho_messaging::MarketBus, prefix: &str, bid: &str, ask: &str) {
    let tick = Tick::new(
        sym("EURUSD"),
        bid.parse().unwrap(),
        ask.parse().unwrap(),
        now_ms(),
        "test",
    )
    .unwrap();
    feed.publish(suho_domain::subject::tick(prefix, sym("EURUSD")), &tick)
        .await
        .unwrap();
    feed.client().flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Publishes an EURUSD quote every 300 ms until the guard is dropped, so the first command
/// finds a quote younger than the price service's age limit however long the engine took to
/// start (a loaded machine can take longer than that limit).
fn keep_quoting(
    feed: &suho_messaging::MarketBus,
    prefix: &str,
    bid: &'static str,
    ask: &'static str,
) -> Quoting {
    let (feed, prefix) = (feed.clone(), prefix.to_owned());
    Quoting(tokio::spawn(async move {
        loop {
            quote(&feed, &prefix, bid, ask).await;
        }
    }))
}

/// Stops [`keep_quoting`]'s task when dropped.
struct Quoting(JoinHandle<()>);

impl Drop for Quoting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A buy limit below the market rests (`ORDER_PLACED`), fills exactly once when the ask
/// reaches it, at that ask (the limit or better), in the engine's own transaction on the
/// tick, and nothing more on later ticks.
#[tokio::test]
async fn a_buy_limit_rests_then_fills_once_when_the_ask_reaches_it() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let out = reader(&env, UserTopic::Trades);
    let _market = start_market(&env, &shutdown, false).await;
    let feed = env.bus(Identity::Feed).await;
    let engine = start_engine(&env, &shutdown).await;
    let quoting = keep_quoting(&feed, &env.prefix, "1.10000", "1.10020");
    let mut cmd = open("lima", "EURUSD", Side::Buy);
    if let suho_domain::CommandKind::OpenTrade(o) = &mut cmd.kind {
        o.order_type = suho_domain::OrderType::Limit;
        o.limit_price = Some("1.09500".parse().unwrap());
    }
    UserEventProducer::new(&env.kafka(Identity::Gateway))
        .unwrap()
        .send(&cmd)
        .await
        .unwrap();
    let placed = trades(&out, 1).await;
    drop(quoting);
    let (key, placed) = &placed[0];
    assert_eq!(key, "lima");
    assert_eq!(placed.event_type, TradeEventType::OrderPlaced, "{placed:?}");
    assert_eq!(placed.status, Some(TradeStatus::Pending));
    let order_id = placed.order_id.clone().expect("an order id");

    // Above the limit: nothing. Then the ask gaps through it: one fill, at that ask.
    quote(&feed, &env.prefix, "1.09600", "1.09620").await;
    assert!(next_record(&out, Duration::from_millis(700))
        .await
        .is_none());
    quote(&feed, &env.prefix, "1.09400", "1.09420").await;
    let filled = trades(&out, 1).await;
    let (_, fill) = &filled[0];
    assert_eq!(fill.event_type, TradeEventType::TradeExecuted, "{fill:?}");
    assert_eq!(fill.order_id.as_deref(), Some(order_id.as_str()));
    assert_eq!(fill.command_id.as_deref(), Some(cmd.head.event_id.as_str()));
    assert_eq!(fill.execution_price, Some("1.09420".parse().unwrap()));
    quote(&feed, &env.prefix, "1.09300", "1.09320").await;
    assert!(
        next_record(&out, Duration::from_millis(1_000))
            .await
            .is_none(),
        "filled exactly once"
    );
    stop_engine(&shutdown, engine).await;
}

/// A trailing stop follows the bid up in the engine's tick transactions (`TRADE_MODIFIED`)
/// and closes the position when the bid comes back to it (`TRADE_CLOSED`), each once.
#[tokio::test]
async fn a_trailing_stop_follows_the_price_and_closes_once() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let out = reader(&env, UserTopic::Trades);
    let _market = start_market(&env, &shutdown, false).await;
    let feed = env.bus(Identity::Feed).await;
    let engine = start_engine(&env, &shutdown).await;
    let quoting = keep_quoting(&feed, &env.prefix, "1.10000", "1.10020");
    let mut cmd = open("trail", "EURUSD", Side::Buy);
    if let suho_domain::CommandKind::OpenTrade(o) = &mut cmd.kind {
        o.trailing_stop_pips = Some("20".parse().unwrap());
    }
    UserEventProducer::new(&env.kafka(Identity::Gateway))
        .unwrap()
        .send(&cmd)
        .await
        .unwrap();
    let opened = trades(&out, 1).await;
    drop(quoting);
    assert_eq!(opened[0].1.event_type, TradeEventType::TradeExecuted);
    assert_eq!(opened[0].1.stop_loss, Some("1.09820".parse().unwrap()));
    quote(&feed, &env.prefix, "1.10300", "1.10320").await;
    let moved = trades(&out, 1).await;
    assert_eq!(moved[0].1.event_type, TradeEventType::TradeModified);
    assert_eq!(moved[0].1.stop_loss, Some("1.10100".parse().unwrap()));
    quote(&feed, &env.prefix, "1.10090", "1.10110").await;
    let closed = trades(&out, 1).await;
    assert_eq!(closed[0].1.event_type, TradeEventType::TradeClosed);
    assert_eq!(closed[0].1.close_price, Some("1.10090".parse().unwrap()));
    assert!(next_record(&out, Duration::from_millis(1_000))
        .await
        .is_none());
    stop_engine(&shutdown, engine).await;
}

/// The next record of `consumer` as JSON, failing after [`WAIT`].
async fn next_json(consumer: &StreamConsumer, what: &str) -> serde_json::Value {
    let r = next_record(consumer, WAIT)
        .await
        .unwrap_or_else(|| panic!("no {what} within {WAIT:?}"));
    serde_json::from_slice(&r.value).unwrap()
}

/// An `OPEN_ACCOUNT` opens the account with its opening balance (`ACCOUNT_OPENED`, then the
/// status), with no price needed; after a restart (the accounts rebuilt from the log) the
/// same command redelivered is answered with the same event and the balance is not counted
/// twice, and another opening of the open account is rejected.
#[tokio::test]
async fn an_account_opens_once_with_its_opening_balance() {
    opens_once(suho_config::Delivery::Transactions).await;
}

/// The same with the engine journaling (`trading.delivery = "journal"`).
#[tokio::test]
async fn journaled_an_account_opens_once_with_its_opening_balance() {
    opens_once(suho_config::Delivery::Journal).await;
}

async fn opens_once(delivery: suho_config::Delivery) {
    let mut env = TestEnv::new().await;
    env.config.trading.delivery = delivery;
    let txs = reader(&env, UserTopic::Transactions);
    let statuses = reader(&env, UserTopic::Mt5Status);
    let rejections = reader(&env, UserTopic::Trades);
    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    let cmd = TradeCommand::open_account(UserId::new("olga"), now_ms());
    producer.send(&cmd).await.unwrap();

    let first = CancellationToken::new();
    let engine = start_engine(&env, &first).await;
    let opened = next_json(&txs, "ACCOUNT_OPENED").await;
    assert_eq!(opened["event_type"], "ACCOUNT_OPENED", "{opened}");
    assert_eq!(
        opened["event_id"],
        format!("opn_{}", cmd.head.event_id),
        "{opened}"
    );
    assert_eq!(opened["reference"], cmd.head.event_id.as_str());
    assert_eq!(
        (&opened["amount"], &opened["balance_after"]),
        (&10000.0.into(), &10000.0.into())
    );
    let status = next_json(&statuses, "ACCOUNT_STATUS").await;
    assert_eq!(
        (&status["user_id"], &status["balance"]),
        (&"olga".into(), &10000.0.into())
    );
    stop_engine(&first, engine).await;

    // Redelivered, and a second opening: the same event again, and a rejection.
    let again = TradeCommand::open_account(UserId::new("olga"), now_ms());
    producer.send(&cmd).await.unwrap();
    producer.send(&again).await.unwrap();
    let second = CancellationToken::new();
    let engine = start_engine(&env, &second).await;
    let replayed = next_json(&txs, "the replayed ACCOUNT_OPENED").await;
    assert_eq!(replayed, opened, "the same event, again");
    let rejected = next_json(&rejections, "TRADE_REJECTED").await;
    assert_eq!(
        (
            &rejected["event_type"],
            &rejected["command_id"],
            &rejected["reason"]
        ),
        (
            &"TRADE_REJECTED".into(),
            &again.head.event_id.as_str().into(),
            &"the account is already open".into()
        ),
        "{rejected}"
    );
    let status = next_json(&statuses, "ACCOUNT_STATUS").await;
    assert_eq!(status["balance"], 10000.0, "{status}");
    assert!(
        next_record(&txs, Duration::from_millis(500))
            .await
            .is_none(),
        "no other transaction"
    );
    stop_engine(&second, engine).await;
}

/// An account's status goes out every few seconds without any command (the dashboard's
/// floating P/L follows it), whichever way the engine publishes.
#[tokio::test]
async fn statuses_keep_coming_without_commands() {
    for delivery in [
        suho_config::Delivery::Transactions,
        suho_config::Delivery::Journal,
    ] {
        let mut env = TestEnv::new().await;
        env.config.trading.delivery = delivery;
        let shutdown = CancellationToken::new();
        start_market(&env, &shutdown, true).await;
        let engine = start_engine(&env, &shutdown).await;
        let out = reader(&env, UserTopic::Trades);
        let statuses = reader(&env, UserTopic::Mt5Status);
        let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
        let cmd = open("grace", "EURUSD", Side::Buy);
        producer.send(&cmd).await.unwrap();
        let answered = trades(&out, 1).await;
        assert_eq!(answered.len(), 1, "{delivery:?}");
        // The command's own status, then at least two of the periodic ones (every 5 s).
        let mut seen = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while seen < 3 && std::time::Instant::now() < deadline {
            if let Some(r) = next_record(&statuses, Duration::from_secs(1)).await {
                if r.key == "grace" {
                    seen += 1;
                }
            }
        }
        assert!(seen >= 3, "{delivery:?}: only {seen} statuses in 20 s");
        stop_engine(&shutdown, engine).await;
    }
}
