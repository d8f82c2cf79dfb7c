//! The Kafka client settings of the bench's own clients, the same as the platform's so the
//! baseline pays what the platform pays: producers as `UserEventProducer::new` (idempotent,
//! `acks=all`, `linger.ms=1`) and `UserEventProducer::transactional`, consumers as
//! `suho_messaging::kafka::consumer` (`read_committed`, `fetch.wait.max.ms=10`, manual
//! commits), all on `suho_messaging::kafka::base_config`.

use rdkafka::ClientConfig;
use suho_config::{KafkaConfig, TelemetryConfig};

/// `UserEventProducer::new`'s settings.
pub(crate) fn producer(kafka: &KafkaConfig) -> ClientConfig {
    suho_messaging::kafka::producer_config(kafka)
}

/// `UserEventProducer::transactional`'s settings, under `transactional_id`.
pub(crate) fn transactional_producer(kafka: &KafkaConfig, transactional_id: &str) -> ClientConfig {
    suho_messaging::kafka::transactional_config(kafka, transactional_id)
}

/// `suho_messaging::kafka::consumer`'s settings, in the group `group` (taken as is).
pub(crate) fn consumer(
    kafka: &KafkaConfig,
    telemetry: &TelemetryConfig,
    group: &str,
) -> ClientConfig {
    suho_messaging::kafka::consumer_config(kafka, telemetry, group)
}

/// Assigns every partition of `topic` to `consumer` from its beginning (no group
/// membership: the bench's timing readers see everything the run wrote).
///
/// # Errors
/// The topic's metadata cannot be read or has no partitions.
pub(crate) fn assign_from_beginning<C: rdkafka::consumer::Consumer<X>, X>(
    consumer: &C,
    topic: &str,
) -> anyhow::Result<()>
where
    X: rdkafka::consumer::ConsumerContext,
{
    use anyhow::Context;
    let md = consumer
        .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
        }
    }
    anyhow::ensure!(tpl.count() > 0, "{topic} has no partitions");
    consumer
        .assign(&tpl)
        .with_context(|| format!("assigning {topic}"))
}

/// Waits (at most 30 s) until the broker's metadata lists every one of `topics` with its
/// partitions (creation reaches the metadata asynchronously).
///
/// # Errors
/// A topic does not appear in time.
pub(crate) async fn wait_for_topics(kafka: &KafkaConfig, topics: &[String]) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = suho_messaging::kafka::base_config(kafka).create()?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(md) = client.fetch_metadata(None, std::time::Duration::from_secs(5)) {
                let ready = topics.iter().all(|name| {
                    md.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                });
                if ready {
                    return Ok(());
                }
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "topics {topics:?} did not appear in the broker's metadata within 30 s"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
    .await?
}
