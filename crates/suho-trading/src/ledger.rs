//! The engine's side of the venue's accounts: restoring them from their Kafka events
//! (whenever the group assigns partitions), which accounts this engine acts on, and the
//! inbox of live ticks the engine applies to them (stop loss, take profit, stop-out, margin
//! calls) in its transactions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use suho_messaging::kafka::Quiet;

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use suho_broker::{AccountEvent, AccountKey, BrokerAdapter};
use suho_domain::{subject, Tick, TradeEvent, Transaction, UserTopic};
use suho_messaging::kafka::{partition_of, Assignment};
use suho_messaging::MarketBus;
use tokio_util::sync::CancellationToken;

use crate::EngineError;

/// How often every account's status is published even without a change.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The account a transaction belongs to (transactions name no MT5 account: the user's paper
/// account).
pub fn transaction_key(t: &Transaction) -> AccountKey {
    AccountKey {
        user_id: t.user_id.clone(),
        mt5_account: None,
    }
}

/// The account a trade event belongs to.
pub fn trade_key(e: &TradeEvent) -> AccountKey {
    AccountKey {
        user_id: e.user_id.clone(),
        mt5_account: e.mt5_account.clone(),
    }
}

/// Which accounts this engine acts on between commands (stop loss, take profit, margin
/// calls, periodic statuses): those of the users whose `user.commands` partition it owns,
/// by Kafka's default partitioner (the one every suho producer uses). Every other engine
/// holds the same accounts but leaves them alone.
#[derive(Debug, Clone)]
pub struct Ownership {
    assignment: Assignment,
    topic: String,
    partitions: i32,
}

impl Ownership {
    /// Ownership by `assignment` of `topic` (full name), which has `partitions` partitions.
    #[must_use]
    pub fn new(assignment: Assignment, topic: String, partitions: i32) -> Ownership {
        Ownership {
            assignment,
            topic,
            partitions,
        }
    }

    /// Whether this engine acts on `user`'s accounts.
    #[must_use]
    pub fn owns(&self, user: &suho_domain::UserId) -> bool {
        self.assignment
            .owns(&self.topic, self.partition(user.as_str()))
    }

    /// The `user.commands` partition of the records keyed `key`.
    #[must_use]
    pub fn partition(&self, key: &str) -> i32 {
        partition_of(key.as_bytes(), self.partitions)
    }
}

/// Every event of `user.trades` and `user.transactions` (from the beginning, committed only),
/// with the account it belongs to, in log order per partition, the first of each `event_id`
/// only (an engine that took over from a frozen one may have published the same outcome it
/// did: see [`crate::journal`]). Unreadable records are skipped with a warning.
///
/// # Errors
/// Kafka is unreachable.
pub async fn read_events(
    kafka: &suho_config::KafkaConfig,
) -> Result<Vec<(AccountKey, AccountEvent)>, EngineError> {
    let base = suho_messaging::kafka::base_config(kafka);
    let trades = UserTopic::Trades.full_name(&kafka.topic_prefix);
    let transactions = UserTopic::Transactions.full_name(&kafka.topic_prefix);
    let records = tokio::task::spawn_blocking(move || {
        read_committed(&base, &[trades.as_str(), transactions.as_str()])
    })
    .await
    .map_err(|e| EngineError::Rebuild(format!("reader thread: {e}")))?
    .map_err(|e| match e {
        EngineError::Kafka(k) => EngineError::Rebuild(format!("reading the account events: {k}")),
        other => other,
    })?;
    let trades = UserTopic::Trades.full_name(&kafka.topic_prefix);
    let mut out: Vec<(AccountKey, AccountEvent)> = Vec::with_capacity(records.len());
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for r in records {
        let parsed = if r.topic == trades {
            serde_json::from_slice::<TradeEvent>(&r.payload)
                .map(|e| (trade_key(&e), AccountEvent::from(e)))
        } else {
            serde_json::from_slice::<Transaction>(&r.payload)
                .map(|t| (transaction_key(&t), AccountEvent::from(t)))
        };
        match parsed {
            Ok(pair) => {
                if seen.insert(pair.1.event_id().to_owned()) {
                    out.push(pair);
                }
            }
            Err(e) => {
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = %e, "skipping an unreadable account event on rebuild");
            }
        }
    }
    Ok(out)
}

/// Restores every account of `broker` from its events read back from Kafka, in one step;
/// the number applied.
///
/// # Errors
/// Kafka is unreachable.
pub async fn rebuild<B: BrokerAdapter>(
    broker: &B,
    kafka: &suho_config::KafkaConfig,
) -> Result<usize, EngineError> {
    let events = read_events(kafka).await?;
    Ok(restore(broker, &events))
}

/// Restores every account of `broker` from `events` (as [`read_events`] gives them); the
/// number applied.
pub fn restore<B: BrokerAdapter>(broker: &B, events: &[(AccountKey, AccountEvent)]) -> usize {
    let done = broker.restore(events);
    for (event_id, e) in &done.refused {
        tracing::warn!(event_id, error = %e, "an account event could not be applied on rebuild");
    }
    done.applied
}

/// One record read back by [`read_committed`].
#[derive(Debug)]
pub struct Record {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Value (empty if none).
    pub payload: Vec<u8>,
}

/// Reads every committed record of `topics` (full names) from the beginning up to the high
/// watermarks taken at the start. Blocking.
///
/// # Errors
/// Kafka is unreachable, or a partition cannot be read to its end within 120 s.
pub fn read_committed(
    base: &rdkafka::ClientConfig,
    topics: &[&str],
) -> Result<Vec<Record>, EngineError> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer<Quiet> = base
        .clone()
        .set("group.id", suho_security::kafka::names::ENGINE_REBUILD)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create_with_context(Quiet)?;
    let mut out = Vec::new();
    for &name in topics {
        let metadata = consumer.fetch_metadata(Some(name), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        for p in partitions {
            let (low, high) = consumer.fetch_watermarks(name, p, timeout)?;
            if low >= high {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(name, p, Offset::Offset(low))?;
            consumer.assign(&tpl)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                    let m = message?;
                    out.push(Record {
                        topic: name.to_owned(),
                        partition: p,
                        offset: m.offset(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                if suho_messaging::kafka::reached(&consumer.position()?, [(name, p, high)]) {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(EngineError::Rebuild(format!(
                        "{name} partition {p}: not read up to offset {high} within 120 s"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// The number of partitions of `topic` (full name).
///
/// # Errors
/// Kafka is unreachable or the topic does not exist.
pub async fn partition_count(
    kafka: &suho_config::KafkaConfig,
    topic: String,
) -> Result<i32, EngineError> {
    let base = suho_messaging::kafka::base_config(kafka);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<Quiet> = base.create_with_context(Quiet)?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let n = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len())
            .sum::<usize>();
        if n == 0 {
            return Err(EngineError::Rebuild(format!("{topic} has no partitions")));
        }
        i32::try_from(n).map_err(|_| EngineError::Rebuild(format!("{topic}: {n} partitions")))
    })
    .await
    .map_err(|e| EngineError::Rebuild(format!("metadata thread: {e}")))?
}

/// The latest tick of every symbol not yet seen by the engine (later ticks of a symbol
/// replace earlier ones: the broker acts on the market as it is now), and a signal that one
/// arrived.
#[derive(Debug, Default)]
pub struct TickInbox {
    latest: std::sync::Mutex<HashMap<suho_domain::Symbol, Tick>>,
    arrived: tokio::sync::Notify,
}

impl TickInbox {
    /// Keeps `tick` as its symbol's latest.
    pub fn put(&self, tick: Tick) {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tick.symbol, tick);
        self.arrived.notify_one();
    }

    /// Takes every kept tick, oldest first.
    pub fn take(&self) -> Vec<Tick> {
        let mut ticks: Vec<Tick> = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, t)| t)
            .collect();
        ticks.sort_by_key(|t| t.timestamp);
        ticks
    }

    /// Resolves when a tick arrived since the last wait.
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }
}

/// Puts every market tick into `inbox` until `shutdown`; the engine applies them (stop loss,
/// take profit, margin calls, stop-out) in its own transactions.
///
/// # Errors
/// The tick subscription cannot be made.
pub async fn run_ticks(
    bus: MarketBus,
    inbox: Arc<TickInbox>,
    shutdown: CancellationToken,
) -> Result<(), EngineError> {
    let mut ticks = bus.subscribe(subject::all_ticks(bus.prefix())).await?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            msg = ticks.next() => {
                let Some(msg) = msg else { return Ok(()) };
                if let Ok(tick) = serde_json::from_slice::<Tick>(&msg.payload) {
                    inbox.put(tick);
                }
            }
        }
    }
}
