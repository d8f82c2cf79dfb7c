//! The auto-trading agent against real NATS and Kafka: settings produced on `user.settings`
//! decide who trades, signals published on NATS become `OPEN_TRADE` commands on
//! `user.commands` keyed by the user, once per user and signal, with the volume capped by the
//! user's risk limit; a settings change after start applies to the next signal.
//!
//! Each test ends its signals with a "fence" signal for an opted-in user: the agent handles
//! signals one at a time and sends the next only after every command of the previous one is
//! acknowledged, so once the fence's command is read, every earlier command is in the log.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use suho_agent::{command_id, Agent, AgentError, AgentOptions, SettingsBook};
use suho_domain::{
    new_event_id, CommandType, Direction, SettingsEvent, SettingsEventType, Side, Signal, Symbol,
    TradeCommand, UserId, UserTopic, SCHEMA_VERSION,
};
use suho_messaging::{now_ms, MarketBus, UserEventProducer};
use suho_security::Identity;
use suho_testkit::TestEnv;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
/// How long to keep reading after the fence, for records on other partitions.
const GRACE: Duration = Duration::from_secs(1);

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// A settings object with one auto-trading entry.
fn auto(strategy: &str, enabled: bool, volume: f64, max_volume: f64) -> Value {
    json!({
        "risk": {"leverage": 100, "max_volume": max_volume, "max_open_positions": 20},
        "watchlist": [],
        "auto_trading": {strategy: {"enabled": enabled, "volume": volume}},
    })
}

async fn put_settings(producer: &UserEventProducer, user: &str, settings: Value) {
    let event = SettingsEvent {
        event_id: new_event_id("set"),
        event_type: SettingsEventType::SettingsUpdated,
        user_id: UserId::new(user),
        settings: Some(settings),
        mt5_account: None,
        timestamp: now_ms(),
        schema_version: SCHEMA_VERSION,
    };
    producer.send(&event).await.expect("settings produced");
}

struct Running {
    book: SettingsBook,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the agent stops promptly on shutdown")
            .expect("the agent task did not panic")
            .expect("the agent stops without error");
    }
}

async fn start_agent(env: &TestEnv) -> Running {
    let bus = env.bus(Identity::Agent).await;
    let options = AgentOptions::from_config(&env.config).unwrap();
    let agent = Agent::start(options, bus).await.expect("the agent starts");
    let book = agent.book();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    Running {
        book,
        shutdown,
        task,
    }
}

/// Waits until the agent's book shows `user` with `strategy` enabled (or, with `false`, not).
async fn wait_for_book(book: &SettingsBook, user: &str, strategy: &str, enabled: bool) {
    let user = UserId::new(user);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = book
            .get(&user)
            .and_then(|s| s.auto_trading.get(strategy).map(|a| a.enabled))
            .unwrap_or(false);
        if now == enabled {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never saw {user}'s {strategy} = {enabled}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Signals {
    bus: MarketBus,
}

impl Signals {
    async fn new(env: &TestEnv) -> Signals {
        Signals {
            bus: env.bus(Identity::Signals).await,
        }
    }

    async fn publish(&self, strategy: &str, signal_id: &str, direction: Direction) -> Signal {
        let signal = Signal {
            signal_id: signal_id.to_string(),
            strategy: strategy.to_string(),
            symbol: Symbol::parse("EURUSD").unwrap(),
            direction,
            confidence: 0.8,
            price: dec("1.08512"),
            timestamp: now_ms(),
            model: "test@1".into(),
        };
        let subject = suho_domain::subject::signal(self.bus.prefix(), strategy, signal.symbol);
        self.bus.publish(subject, &signal).await.unwrap();
        self.bus.client().flush().await.unwrap();
        signal
    }
}

/// Reads `user.commands` from the beginning (every partition assigned; no group).
struct Commands {
    consumer: StreamConsumer,
    seen: Vec<(String, TradeCommand)>,
}

impl Commands {
    fn new(env: &TestEnv) -> Commands {
        let consumer: StreamConsumer =
            suho_messaging::kafka::base_config(&env.kafka(Identity::Operator))
                .set("group.id", format!("{}test-commands", env.prefix))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .create()
                .unwrap();
        let topic = UserTopic::Commands.full_name(&env.prefix);
        let mut tpl = TopicPartitionList::new();
        for p in 0..UserTopic::Commands.partitions() {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Commands {
            consumer,
            seen: Vec::new(),
        }
    }

    async fn read_for(&mut self, within: Duration) -> Option<()> {
        let m = tokio::time::timeout(within, self.consumer.recv())
            .await
            .ok()?
            .unwrap();
        let key = String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap();
        let command: TradeCommand = serde_json::from_slice(m.payload().unwrap()).unwrap();
        self.seen.push((key, command));
        Some(())
    }

    /// Reads until `user`'s command for `signal_id` is in, then for [`GRACE`] more.
    async fn through(&mut self, user: &str, signal_id: &str) -> &[(String, TradeCommand)] {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self
            .seen
            .iter()
            .any(|(k, c)| k == user && signal_of(c) == signal_id)
        {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                self.read_for(left).await.is_some(),
                "no command for {user} on {signal_id} within {WAIT:?}; saw {:?}",
                self.summary()
            );
        }
        while self.read_for(GRACE).await.is_some() {}
        &self.seen
    }

    /// (user, signal_id) of every command read, in order.
    fn summary(&self) -> Vec<(String, String)> {
        self.seen
            .iter()
            .map(|(k, c)| (k.clone(), signal_of(c).to_string()))
            .collect()
    }

    fn of(&self, user: &str) -> Vec<&TradeCommand> {
        self.seen
            .iter()
            .filter(|(k, _)| k == user)
            .map(|(_, c)| c)
            .collect()
    }
}

fn signal_of(c: &TradeCommand) -> &str {
    c.head
        .metadata
        .as_ref()
        .and_then(|m| m.signal_id.as_deref())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_user_gets_one_open_trade_per_signal_even_when_it_comes_twice() {
    let env = TestEnv::new().await;
    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    // Opted in before the agent starts: read back from the compacted topic at start.
    put_settings(&producer, "usr_alice", auto("scalping", true, 0.25, 10.0)).await;
    let agent = start_agent(&env).await;
    assert!(
        agent.book.get(&UserId::new("usr_alice")).is_some(),
        "settings read at start"
    );
    let signals = Signals::new(&env).await;
    let mut commands = Commands::new(&env);

    let buy = signals
        .publish("scalping", "sig_scalping_EURUSD_1", Direction::Buy)
        .await;
    signals
        .publish("scalping", "sig_scalping_EURUSD_1", Direction::Buy)
        .await;
    signals
        .publish("scalping", "sig_fence", Direction::Sell)
        .await;
    commands.through("usr_alice", "sig_fence").await;

    let all = commands.summary();
    let for_buy: Vec<&(String, TradeCommand)> = commands
        .seen
        .iter()
        .filter(|(_, c)| signal_of(c) == buy.signal_id)
        .collect();
    assert_eq!(for_buy.len(), 1, "one command per user and signal: {all:?}");
    let (key, cmd) = for_buy[0];
    assert_eq!(key, "usr_alice", "keyed by the user");
    assert_eq!(cmd.head.user_id.as_str(), "usr_alice");
    assert_eq!(cmd.command_type(), CommandType::OpenTrade);
    assert_eq!(
        cmd.head.event_id,
        command_id(&UserId::new("usr_alice"), &buy.signal_id),
        "the id is derived from (user, signal)"
    );
    let meta = cmd.head.metadata.as_ref().expect("metadata");
    assert_eq!(meta.strategy.as_deref(), Some("scalping"));
    assert_eq!(meta.signal_id.as_deref(), Some(buy.signal_id.as_str()));
    let order = cmd.kind.order().expect("order");
    assert_eq!(order.symbol, buy.symbol);
    assert_eq!(order.side, Side::Buy);
    assert_eq!(order.volume, dec("0.25"));
    assert!(
        (now_ms() - cmd.head.timestamp).abs() < 60_000,
        "stamped now"
    );
    cmd.validate().expect("a valid command");
    let fence = commands.of("usr_alice");
    assert_eq!(fence.len(), 2, "{all:?}");
    assert_eq!(
        fence[1].kind.order().map(|o| o.side),
        Some(Side::Sell),
        "SELL for a SELL signal"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_not_opted_in_to_the_strategy_get_nothing_and_flat_closes() {
    let env = TestEnv::new().await;
    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    put_settings(&producer, "usr_alice", auto("scalping", true, 0.1, 10.0)).await;
    // Default settings: no auto-trading at all.
    put_settings(
        &producer,
        "usr_bob",
        json!({"risk":{"leverage":100,"max_volume":10.0,"max_open_positions":20},
               "watchlist":[],"auto_trading":{}}),
    )
    .await;
    put_settings(
        &producer,
        "usr_carol",
        auto("mean_reversion", true, 0.1, 10.0),
    )
    .await;
    put_settings(&producer, "usr_dave", auto("scalping", false, 0.1, 10.0)).await;
    let agent = start_agent(&env).await;
    assert_eq!(agent.book.len(), 4);
    let signals = Signals::new(&env).await;
    let mut commands = Commands::new(&env);

    signals
        .publish("scalping", "sig_flat", Direction::Flat)
        .await;
    signals.publish("scalping", "sig_buy", Direction::Buy).await;
    signals
        .publish("mean_reversion", "sig_mr", Direction::Sell)
        .await;
    signals
        .publish("scalping", "sig_fence", Direction::Buy)
        .await;
    commands.through("usr_alice", "sig_fence").await;

    let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
    for (user, signal) in commands.summary() {
        by_user.entry(user).or_default().push(signal);
    }
    assert_eq!(
        by_user.get("usr_alice"),
        Some(&vec![
            "sig_flat".to_string(),
            "sig_buy".to_string(),
            "sig_fence".to_string()
        ]),
        "scalping signals only, FLAT as a close: {by_user:?}"
    );
    let flat = commands
        .of("usr_alice")
        .into_iter()
        .find(|c| {
            c.head
                .metadata
                .as_ref()
                .and_then(|m| m.signal_id.as_deref())
                == Some("sig_flat")
        })
        .expect("the FLAT's command");
    assert_eq!(
        flat.command_type(),
        suho_domain::CommandType::ClosePositions,
        "{flat:?}"
    );
    assert_eq!(
        by_user.get("usr_carol"),
        Some(&vec!["sig_mr".to_string()]),
        "her own strategy only: {by_user:?}"
    );
    assert!(!by_user.contains_key("usr_bob"), "{by_user:?}");
    assert!(!by_user.contains_key("usr_dave"), "{by_user:?}");
    assert_eq!(by_user.len(), 2, "{by_user:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_volume_is_capped_by_the_users_max_volume() {
    let env = TestEnv::new().await;
    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    // Not something the API accepts (volume above max_volume), but the agent caps it anyway.
    put_settings(&producer, "usr_frank", auto("scalping", true, 5.0, 2.0)).await;
    put_settings(&producer, "usr_alice", auto("scalping", true, 0.5, 10.0)).await;
    // Capped below one lot step: skipped.
    put_settings(&producer, "usr_gina", auto("scalping", true, 0.5, 0.005)).await;
    let agent = start_agent(&env).await;
    let signals = Signals::new(&env).await;
    let mut commands = Commands::new(&env);

    signals.publish("scalping", "sig_1", Direction::Buy).await;
    signals
        .publish("scalping", "sig_fence", Direction::Buy)
        .await;
    commands.through("usr_frank", "sig_fence").await;

    let frank = commands.of("usr_frank");
    assert_eq!(frank.len(), 2);
    for c in &frank {
        assert_eq!(c.kind.order().map(|o| o.volume), Some(dec("2")));
    }
    let alice = commands.of("usr_alice");
    assert_eq!(alice[0].kind.order().map(|o| o.volume), Some(dec("0.5")));
    assert!(commands.of("usr_gina").is_empty(), "below the lot step");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_change_after_start_applies_to_the_next_signal() {
    let env = TestEnv::new().await;
    let producer = UserEventProducer::new(&env.kafka(Identity::Gateway)).unwrap();
    put_settings(&producer, "usr_alice", auto("scalping", true, 0.1, 10.0)).await;
    let agent = start_agent(&env).await;
    let signals = Signals::new(&env).await;
    let mut commands = Commands::new(&env);

    signals.publish("scalping", "sig_a", Direction::Buy).await;
    commands.through("usr_alice", "sig_a").await;
    assert!(commands.of("usr_henry").is_empty(), "henry has no settings");

    // Henry opts in while the agent runs.
    put_settings(&producer, "usr_henry", auto("scalping", true, 0.3, 10.0)).await;
    wait_for_book(&agent.book, "usr_henry", "scalping", true).await;
    signals.publish("scalping", "sig_b", Direction::Sell).await;
    commands.through("usr_henry", "sig_b").await;
    let henry = commands.of("usr_henry");
    assert_eq!(henry.len(), 1);
    assert_eq!(henry[0].kind.order().map(|o| o.volume), Some(dec("0.3")));

    // And opts out again.
    put_settings(&producer, "usr_henry", auto("scalping", false, 0.3, 10.0)).await;
    wait_for_book(&agent.book, "usr_henry", "scalping", false).await;
    signals.publish("scalping", "sig_c", Direction::Buy).await;
    commands.through("usr_alice", "sig_c").await;
    let henry: Vec<&str> = commands
        .of("usr_henry")
        .into_iter()
        .map(signal_of)
        .collect();
    assert_eq!(henry, ["sig_b"], "{:?}", commands.summary());
    agent.stop().await;
}
