//! The user-event log on Kafka: an idempotent, `acks=all` producer that keys every record
//! by `user_id`, and consumers that commit by hand, read only committed records and report
//! their lag.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use serde::Serialize;
use suho_domain::{UserEvent, UserTopic};
use suho_telemetry::names;

use crate::MessagingError;

/// The settings every suho Kafka client shares.
pub fn base_config(config: &suho_config::KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap)
        .set("client.id", "suho")
        .set("socket.nagle.disable", "true");
    c
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: i32,
    /// Offset within it.
    pub offset: i64,
}

/// Produces user events: `acks=all`, idempotent (no duplicates from the producer's own
/// retries), keyed by `user_id` so one user's events stay in one partition, in order.
#[derive(Clone)]
pub struct UserEventProducer {
    producer: FutureProducer,
    prefix: String,
}

impl UserEventProducer {
    /// Creates the producer.
    ///
    /// # Errors
    /// The client configuration is rejected by librdkafka.
    pub fn new(config: &suho_config::KafkaConfig) -> Result<Self, MessagingError> {
        let producer = base_config(config)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            prefix: config.topic_prefix.clone(),
        })
    }

    /// A transactional producer (`transactional.id` = `transactional_id`): every send must
    /// happen inside [`UserEventProducer::begin`] .. [`UserEventProducer::commit_with_offsets`]
    /// (or [`UserEventProducer::abort`]). Initialising it aborts whatever a previous producer
    /// with the same id left open and fences that producer out.
    ///
    /// # Errors
    /// The configuration is rejected, or the transaction coordinator does not answer.
    pub async fn transactional(
        config: &suho_config::KafkaConfig,
        transactional_id: &str,
    ) -> Result<Self, MessagingError> {
        let producer: FutureProducer = base_config(config)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "10000")
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", "10000")
            .create()?;
        let p = producer.clone();
        blocking(move || p.init_transactions(Timeout::After(Duration::from_secs(30)))).await?;
        Ok(Self {
            producer,
            prefix: config.topic_prefix.clone(),
        })
    }

    /// Starts a transaction.
    ///
    /// # Errors
    /// Kafka refused (the producer was fenced, or a previous transaction is still open).
    pub async fn begin(&self) -> Result<(), MessagingError> {
        let p = self.producer.clone();
        blocking(move || p.begin_transaction()).await
    }

    /// Adds the consumer's `offsets` to the transaction and commits it: the records sent in it
    /// and the offsets become visible together, or neither does.
    ///
    /// # Errors
    /// Kafka refused; the transaction must then be aborted.
    pub async fn commit_with_offsets(
        &self,
        offsets: rdkafka::TopicPartitionList,
        group: rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), MessagingError> {
        let p = self.producer.clone();
        blocking(move || {
            let timeout = Timeout::After(Duration::from_secs(30));
            p.send_offsets_to_transaction(&offsets, &group, timeout)?;
            p.commit_transaction(timeout)
        })
        .await
    }

    /// Aborts the open transaction: nothing sent in it becomes visible to `read_committed`
    /// readers.
    ///
    /// # Errors
    /// Kafka refused.
    pub async fn abort(&self) -> Result<(), MessagingError> {
        let p = self.producer.clone();
        blocking(move || p.abort_transaction(Timeout::After(Duration::from_secs(30)))).await
    }

    /// The topic name `topic` has on this cluster (with the configured prefix).
    pub fn topic_name(&self, topic: UserTopic) -> String {
        topic.full_name(&self.prefix)
    }

    /// Sends `event` to its topic, keyed by its `user_id`, and waits for the broker's
    /// acknowledgement.
    ///
    /// # Errors
    /// Encoding failed, or Kafka did not acknowledge within the message timeout.
    pub async fn send<E: UserEvent + Serialize>(
        &self,
        event: &E,
    ) -> Result<Delivery, MessagingError> {
        let payload = serde_json::to_vec(event)?;
        let headers = OwnedHeaders::new().insert(Header {
            key: "event_type",
            value: Some(event.event_type_str()),
        });
        self.send_raw(
            event.topic(),
            event.user_id().as_str(),
            &payload,
            Some(headers),
        )
        .await
    }

    /// Sends raw bytes to `topic` under `key` (for the dead-letter path and tests).
    ///
    /// # Errors
    /// Kafka did not acknowledge within the message timeout.
    pub async fn send_raw(
        &self,
        topic: UserTopic,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<Delivery, MessagingError> {
        let name = self.topic_name(topic);
        let mut record = FutureRecord::to(&name).key(key).payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let delivered = self
            .producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| MessagingError::Kafka(e))?;
        metrics::counter!(names::KAFKA_PRODUCED, "topic" => topic.name()).increment(1);
        Ok(Delivery {
            partition: delivered.partition,
            offset: delivered.offset,
        })
    }
}

/// A consumer's context: turns librdkafka's periodic statistics into the
/// `kafka_consumer_lag{topic,partition,consumer_group}` gauge.
pub struct LagContext {
    group: String,
    prefix: String,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            let shown = topic
                .strip_prefix(&self.prefix)
                .unwrap_or(topic)
                .to_string();
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!(names::KAFKA_LAG,
                    "topic" => shown.clone(),
                    "partition" => partition.to_string(),
                    "consumer_group" => self.group.clone())
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// A consumer of user topics that commits by hand.
pub type UserConsumer = StreamConsumer<LagContext>;

/// Creates a consumer in `group` (the configured group prefix is prepended), subscribed
/// to `topics`: manual commits, `read_committed`, starting from the earliest record for a
/// new group, tuned for latency.
///
/// # Errors
/// The configuration is rejected or the subscription fails.
pub fn consumer(
    config: &suho_config::KafkaConfig,
    telemetry: &suho_config::TelemetryConfig,
    group: &str,
    topics: &[UserTopic],
) -> Result<UserConsumer, MessagingError> {
    use rdkafka::consumer::Consumer;
    let group_id = format!("{}{group}", config.group_prefix);
    let consumer: UserConsumer = base_config(config)
        .set("group.id", &group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "10000")
        .set(
            "statistics.interval.ms",
            telemetry.lag_interval_ms.to_string(),
        )
        .create_with_context(LagContext {
            group: group.to_string(),
            prefix: config.topic_prefix.clone(),
        })?;
    let names: Vec<String> = topics
        .iter()
        .map(|t| t.full_name(&config.topic_prefix))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    Ok(consumer)
}

/// Counts one consumed record under `kafka_messages_consumed_total{topic,consumer_group}`.
pub fn count_consumed(topic: UserTopic, group: &str) {
    metrics::counter!(names::KAFKA_CONSUMED, "topic" => topic.name(), "consumer_group" => group.to_string())
        .increment(1);
}

/// Maps a record's topic name back to the [`UserTopic`] it is.
pub fn user_topic_of(prefix: &str, name: &str) -> Option<UserTopic> {
    let bare = name.strip_prefix(prefix)?;
    UserTopic::ALL.into_iter().find(|t| t.name() == bare)
}

/// Headers of a record, as text (for dead-letter records and diagnostics).
pub fn headers_map(headers: Option<&rdkafka::message::BorrowedHeaders>) -> HashMap<String, String> {
    use rdkafka::message::Headers;
    headers
        .map(|h| {
            h.iter()
                .map(|hd| {
                    (
                        hd.key.to_string(),
                        hd.value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking(
    f: impl FnOnce() -> Result<(), rdkafka::error::KafkaError> + Send + 'static,
) -> Result<(), MessagingError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(MessagingError::Kafka),
        // The call panicked or the runtime is shutting down: report it as a transaction
        // failure, which callers abort and retry.
        Err(e) => {
            tracing::error!(error = %e, "a Kafka transaction call did not complete");
            Err(MessagingError::Kafka(rdkafka::error::KafkaError::Canceled))
        }
    }
}
