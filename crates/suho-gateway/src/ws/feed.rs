//! The hub's inputs, one of each per gateway instance, shared by every connection:
//! - the NATS subscriptions the identity table grants `/ws` (ticks, candles of every
//!   timeframe, `indicators.*.*`, `signals.*.*`, with the deployment's prefix), routed by the
//!   subject's symbol;
//! - one Kafka consumer of the four streamed user topics, `read_committed`, with **every**
//!   partition assigned (no consumer group) from the end at start, routed by record key
//!   (`user_id`). Every gateway instance therefore sees every user's events and hands each
//!   to its own connections of that user.
//!
//! Each connection starts from known positions ([`start`]): the end of its user's partition of
//! each streamed topic, or, for a resume, the log read from the client's positions with a
//! short-lived consumer of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};
use suho_messaging::kafka::Quiet;

use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use suho_domain::{Symbol, Timeframe, UserTopic};
use suho_messaging::kafka::{partition_of, watermarks};
use suho_messaging::MarketBus;
use tokio_util::sync::CancellationToken;

use super::hub::{Registry, UserRecord};
use super::protocol::{self, Position, USER_TOPICS};
use super::WsError;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The NATS subscriptions, already registered with the server.
pub struct MarketFeed {
    subscribers: Vec<async_nats::Subscriber>,
    prefix: String,
}

impl MarketFeed {
    /// Subscribes and waits until the server has the subscriptions.
    pub async fn subscribe(bus: &MarketBus) -> Result<MarketFeed, WsError> {
        let prefix = bus.prefix().to_string();
        let mut subscribers = Vec::new();
        // Exactly what the identity table lets `/ws` read: ticks, every timeframe's candles,
        // indicators and signals (never the price requests on `market.*.price`).
        let grants =
            suho_security::Identity::Ws.nats(&suho_security::Scope::Prefix(prefix.clone()));
        for pattern in grants.subscribe {
            subscribers.push(bus.subscribe(pattern).await?);
        }
        tokio::time::timeout(Duration::from_secs(5), bus.client().flush())
            .await
            .map_err(|_| WsError::Nats("flushing the subscriptions timed out".into()))?
            .map_err(|e| WsError::Nats(e.to_string()))?;
        Ok(MarketFeed {
            subscribers,
            prefix,
        })
    }

    /// Routes every message until `shutdown`.
    pub async fn run(
        self,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Result<(), WsError> {
        let mut all = futures::stream::select_all(self.subscribers);
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                m = all.next() => m,
            };
            let Some(message) = message else {
                return Err(WsError::Nats("the market subscriptions ended".into()));
            };
            let Some(subject) = message.subject.as_str().strip_prefix(&self.prefix) else {
                continue;
            };
            let Some(symbol) = symbol_of(subject) else {
                continue;
            };
            if !registry.wants_symbol(symbol) {
                continue;
            }
            let Some(envelope) = protocol::market(subject, &message.payload) else {
                tracing::warn!(subject, "a market message that is not JSON; not forwarded");
                continue;
            };
            registry.route_market(symbol, &Arc::from(subject), &envelope);
        }
    }
}

/// The symbol a streamed subject (without prefix) is about: `market.{SYM}.tick`,
/// `market.{SYM}.{tf}`, `indicators.{type}.{SYM}`, `signals.{strategy}.{SYM}`. `None` for
/// anything else (price requests, for one).
fn symbol_of(subject: &str) -> Option<Symbol> {
    let mut parts = subject.split('.');
    let (Some(kind), Some(a), Some(b), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let sym = match kind {
        "market" if b == "tick" || Timeframe::parse(b).is_ok() => a,
        "indicators" | "signals" if !a.is_empty() => b,
        _ => return None,
    };
    let symbol = Symbol::parse(sym).ok()?;
    (symbol.as_str() == sym).then_some(symbol)
}

/// The live user-event consumer, assigned every partition of the streamed topics at their
/// current end.
pub struct UserFeed {
    consumer: suho_messaging::kafka::ClosingConsumer,
    prefix: String,
}

fn client_config(kafka: &suho_config::KafkaConfig, purpose: &str) -> ClientConfig {
    let mut c = suho_messaging::kafka::base_config(kafka);
    // A group id is required by the client; with `assign` the consumer never joins it and
    // nothing is committed.
    c.set(
        "group.id",
        format!(
            "{}{}{purpose}",
            kafka.group_prefix,
            suho_security::kafka::names::WS
        ),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("auto.offset.reset", "earliest")
    .set("isolation.level", "read_committed")
    .set("fetch.wait.max.ms", "10");
    c
}

impl UserFeed {
    /// Lists every partition of the streamed topics and assigns each at its current end
    /// (the last stable offset: a `read_committed` consumer's end). Retries for up to 30 s
    /// while the topics are not there yet.
    pub async fn assign(kafka: &suho_config::KafkaConfig) -> Result<UserFeed, WsError> {
        let config = client_config(kafka, "live");
        let prefix = kafka.topic_prefix.clone();
        let started = Instant::now();
        let mut wait = Duration::from_millis(200);
        let ends = loop {
            let (c, p) = (config.clone(), prefix.clone());
            let listed = tokio::task::spawn_blocking(move || ends(&c, &p))
                .await
                .map_err(|e| WsError::Kafka(format!("the metadata thread: {e}")))?;
            match listed {
                Ok(ends) => break ends,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "listing the user topics failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        };
        let consumer: StreamConsumer<Quiet> = config.create_with_context(Quiet)?;
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, end) in &ends {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*end))?;
        }
        consumer.assign(&tpl)?;
        Ok(UserFeed {
            consumer: suho_messaging::kafka::ClosingConsumer::new(consumer, "gateway-ws"),
            prefix,
        })
    }

    /// Routes every record by key until `shutdown`. Read errors are logged and retried.
    pub async fn run(
        self,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Result<(), WsError> {
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = self.consumer.recv() => r,
            };
            let m = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the user topics failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            };
            let Some(user) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            if !registry.has_user(user) {
                continue;
            }
            let Some(record) = record(&self.prefix, &m, user) else {
                continue;
            };
            registry.route_user(user, &record);
        }
    }
}

/// A consumed record as a user event to send; `None` (logged) if it is not JSON.
fn record<M: Message>(prefix: &str, m: &M, user: &str) -> Option<UserRecord> {
    let topic = suho_messaging::kafka::user_topic_of(prefix, m.topic())?;
    let position = Position {
        topic,
        partition: m.partition(),
        offset: m.offset(),
    };
    let Some(message) = protocol::user(position, m.payload().unwrap_or_default(), user) else {
        tracing::warn!(%position, "a user event that is not JSON or not the key's user's; not forwarded");
        return None;
    };
    Some(UserRecord {
        topic,
        partition: position.partition,
        offset: position.offset,
        message,
    })
}

/// `(topic, partition, end)` of every partition of the streamed topics (blocking).
fn ends(config: &ClientConfig, prefix: &str) -> Result<Vec<(String, i32, i64)>, WsError> {
    let consumer: BaseConsumer<Quiet> = config.create_with_context(Quiet)?;
    let mut out = Vec::new();
    for topic in USER_TOPICS {
        let name = topic.full_name(prefix);
        let partitions = watermarks(&consumer, &name, METADATA_TIMEOUT)?;
        if partitions.is_empty() {
            return Err(WsError::Kafka(format!("{name} has no partitions")));
        }
        for (p, _, high) in partitions {
            out.push((name.clone(), p, high));
        }
    }
    Ok(out)
}

/// Where a connection starts: the user's events after `positions` read from the log, and
/// the end (`read_committed`: the last stable offset), when read, of every partition the
/// connection starts from.
pub struct Start {
    /// The caught-up events, in log order per partition.
    pub records: Vec<UserRecord>,
    /// `(topic, partition, end)` of each named partition: read up to `end`.
    pub read_to: Vec<(UserTopic, i32, i64)>,
    /// `(topic, partition, end)` of the user's partition of each streamed topic not named:
    /// live from `end` (or from the first live event held, if earlier).
    pub live_from: Vec<(UserTopic, i32, i64)>,
}

/// Reads the [`Start`] of a connection of `user` (on a blocking thread; the reading bounded
/// by `limit`).
pub async fn start(
    kafka: &suho_config::KafkaConfig,
    user: Arc<str>,
    positions: Vec<Position>,
    limit: Duration,
) -> Result<Start, WsError> {
    let config = client_config(kafka, "resume");
    let prefix = kafka.topic_prefix.clone();
    tokio::task::spawn_blocking(move || read_start(&config, &prefix, &user, &positions, limit))
        .await
        .map_err(|e| WsError::Kafka(format!("the resume thread: {e}")))?
}

fn read_start(
    config: &ClientConfig,
    prefix: &str,
    user: &str,
    positions: &[Position],
    limit: Duration,
) -> Result<Start, WsError> {
    let consumer: BaseConsumer<Quiet> = config.create_with_context(Quiet)?;
    let mut live_from = Vec::new();
    for topic in USER_TOPICS {
        let partition = partition_of(user.as_bytes(), topic.partitions());
        if positions
            .iter()
            .any(|p| p.topic == topic && p.partition == partition)
        {
            continue;
        }
        let name = topic.full_name(prefix);
        let (_, end) = consumer.fetch_watermarks(&name, partition, METADATA_TIMEOUT)?;
        live_from.push((topic, partition, end));
    }
    let mut tpl = TopicPartitionList::new();
    let mut reading = Vec::new();
    let mut read_to = Vec::new();
    for p in positions {
        let name = p.topic.full_name(prefix);
        let (_, end) = consumer.fetch_watermarks(&name, p.partition, METADATA_TIMEOUT)?;
        read_to.push((p.topic, p.partition, end));
        if p.offset + 1 < end {
            tpl.add_partition_offset(&name, p.partition, Offset::Offset(p.offset + 1))?;
            reading.push((name, p.partition, end));
        }
    }
    let mut records = Vec::new();
    if reading.is_empty() {
        return Ok(Start {
            records,
            read_to,
            live_from,
        });
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let m = message?;
            let end = reading
                .iter()
                .find(|(t, p, _)| t == m.topic() && *p == m.partition())
                .map_or(0, |e| e.2);
            if m.offset() < end && m.key() == Some(user.as_bytes()) {
                records.extend(record(prefix, &m, user));
            }
        }
        let done = suho_messaging::kafka::reached(
            &consumer.position()?,
            reading.iter().map(|(t, p, end)| (t.as_str(), *p, *end)),
        );
        if done {
            return Ok(Start {
                records,
                read_to,
                live_from,
            });
        }
        if Instant::now() > deadline {
            return Err(WsError::Kafka(format!(
                "the resume did not reach the end of the log within {} s",
                limit.as_secs()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_streamed_subjects_have_a_symbol() {
        let eur = Symbol::parse("EURUSD").ok();
        assert_eq!(symbol_of("market.EURUSD.tick"), eur);
        assert_eq!(symbol_of("market.EURUSD.15m"), eur);
        assert_eq!(symbol_of("indicators.rsi.EURUSD"), eur);
        assert_eq!(symbol_of("signals.scalping.EURUSD"), eur);
        assert_eq!(symbol_of("market.EURUSD.price"), None);
        assert_eq!(symbol_of("market.eurusd.tick"), None);
        assert_eq!(symbol_of("alerts.market.spike"), None);
        assert_eq!(symbol_of("signals.scalping.EURUSD.x"), None);
    }
}
