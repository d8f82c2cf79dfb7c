//! The engine's side of the paper broker: rebuilding every account from its Kafka events
//! (whenever the group assigns partitions), feeding live ticks to it (stop loss, take profit,
//! stop-out, margin calls) for the accounts this engine owns, and publishing their
//! `ACCOUNT_STATUS` snapshots, on every change and every few seconds.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use suho_broker::{AccountEvent, AccountKey, BrokerAdapter, PaperBroker};
use suho_domain::{subject, Tick, TradeEvent, Transaction, UserTopic};
use suho_messaging::kafka::{partition_of, Assignment};
use suho_messaging::{now_ms, MarketBus, UserEventProducer};
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
        let p = partition_of(user.as_str().as_bytes(), self.partitions);
        self.assignment.owns(&self.topic, p)
    }
}

/// Every event of `user.trades` and `user.transactions` (from the beginning, committed only),
/// with the account it belongs to, in log order per partition. Unreadable records are skipped
/// with a warning.
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
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let parsed = if r.topic == trades {
            serde_json::from_slice::<TradeEvent>(&r.payload)
                .map(|e| (trade_key(&e), AccountEvent::from(e)))
        } else {
            serde_json::from_slice::<Transaction>(&r.payload)
                .map(|t| (transaction_key(&t), AccountEvent::from(t)))
        };
        match parsed {
            Ok(pair) => out.push(pair),
            Err(e) => {
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, error = %e, "skipping an unreadable account event on rebuild");
            }
        }
    }
    Ok(out)
}

/// Replaces every account of `broker` by its events read back from Kafka, in one step; the
/// number applied.
///
/// # Errors
/// Kafka is unreachable.
pub async fn rebuild(
    broker: &Arc<PaperBroker>,
    kafka: &suho_config::KafkaConfig,
) -> Result<usize, EngineError> {
    let events = read_events(kafka).await?;
    let done = broker.rebuild(&events);
    for (event_id, e) in &done.refused {
        tracing::warn!(event_id, error = %e, "an account event could not be applied on rebuild");
    }
    Ok(done.applied)
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
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", "suho-engine-rebuild")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
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
                // The position passes transaction markers too, so it reaches the high mark.
                let position =
                    consumer
                        .position()?
                        .find_partition(name, p)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                if position.is_some_and(|o| o >= high) {
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
        let consumer: BaseConsumer = base.create()?;
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

/// Publishes the account's status; a missing conversion rate (no ticks yet) is logged at debug
/// and skipped: the next change or the periodic round sends it.
pub async fn publish_status(broker: &PaperBroker, producer: &UserEventProducer, key: &AccountKey) {
    match broker.status(key, now_ms()).await {
        Ok(status) => {
            if let Err(e) = producer.send(&status).await {
                tracing::warn!(user_id = %key.user_id, error = %e, "ACCOUNT_STATUS not published");
            }
        }
        Err(e) => tracing::debug!(user_id = %key.user_id, error = %e, "no ACCOUNT_STATUS yet"),
    }
}

/// Feeds every tick to the broker and publishes what it did (closes by stop loss, take
/// profit or stop-out; margin calls; the statuses of the accounts concerned), and every
/// [`STATUS_EVERY`] the status of every account; until `shutdown`.
///
/// # Errors
/// The tick subscription cannot be made.
pub async fn run_ticks(
    broker: Arc<PaperBroker>,
    bus: MarketBus,
    producer: UserEventProducer,
    ownership: Ownership,
    shutdown: CancellationToken,
) -> Result<(), EngineError> {
    let mut ticks = bus.subscribe(subject::all_ticks(bus.prefix())).await?;
    let mut status_timer = tokio::time::interval(STATUS_EVERY);
    status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = status_timer.tick() => {
                for key in broker.account_keys() {
                    if ownership.owns(&key.user_id) {
                        publish_status(&broker, &producer, &key).await;
                    }
                }
            }
            msg = ticks.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let Ok(tick) = serde_json::from_slice::<Tick>(&msg.payload) else { continue };
                let outcome = broker.on_tick_where(&tick, now_ms(), |k| ownership.owns(&k.user_id));
                for e in &outcome.errors {
                    tracing::debug!(error = %e, "the paper broker could not value an account on a tick");
                }
                let mut touched: Vec<AccountKey> = Vec::new();
                for event in &outcome.closed {
                    touched.push(trade_key(event));
                    publish_retrying(&producer, event, &shutdown).await;
                }
                for alert in &outcome.alerts {
                    touched.push(AccountKey { user_id: alert.user_id.clone(), mt5_account: alert.mt5_account.clone() });
                    publish_retrying(&producer, alert, &shutdown).await;
                }
                touched.sort();
                touched.dedup();
                for key in touched {
                    publish_status(&broker, &producer, &key).await;
                }
            }
        }
    }
}

/// Publishes an event the broker has already applied, retrying until Kafka takes it (it is
/// in the account's state, so it must reach the log) or shutdown.
async fn publish_retrying<E: suho_domain::UserEvent + serde::Serialize>(
    producer: &UserEventProducer,
    event: &E,
    shutdown: &CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match producer.send(event).await {
            Ok(_) => {
                tracing::info!(user_id = %event.user_id(), event_type = event.event_type_str(), event_id = event.event_id(), "broker event published");
                return;
            }
            Err(e) => {
                tracing::warn!(event_id = event.event_id(), error = %e, retry_in = ?delay, "publishing a broker event failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => {
                        tracing::error!(event_id = event.event_id(), "shutdown before a broker event was published; it is rebuilt from the next tick's state, not from the log");
                        return;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
