//! A user's history read straight from Kafka, as the seed's `get_user_trade_history` does:
//! for each partition of each topic, the offsets for the range's start and end times
//! (`offsets_for_times`), then every record between them whose key is the user. It needs no
//! store, so it checks the audit store against the log itself.

use std::time::Duration;
use suho_messaging::kafka::Quiet;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::store::{self, AuditRecord};

/// Why the history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The reading thread failed.
    #[error("history reader: {0}")]
    Join(String),
}

/// The user's records of `topic_names` with a Kafka timestamp in `[from_ms, to_ms)`, in the
/// order [`crate::user_events`] gives (time, topic, partition, offset).
///
/// # Errors
/// Kafka is unreachable or refuses a request.
pub async fn kafka_history(
    kafka: &suho_config::KafkaConfig,
    topic_names: Vec<String>,
    user_id: String,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<AuditRecord>, HistoryError> {
    let mut base = suho_messaging::kafka::base_config(kafka);
    // Assigned, never joined; the id still names a group the login must be granted.
    base.set(
        "group.id",
        format!(
            "{}{}",
            kafka.group_prefix,
            suho_security::kafka::names::AUDIT_HISTORY
        ),
    );
    tokio::task::spawn_blocking(move || read(&base, &topic_names, &user_id, from_ms, to_ms))
        .await
        .map_err(|e| HistoryError::Join(e.to_string()))?
}

fn read(
    base: &ClientConfig,
    topic_names: &[String],
    user_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<AuditRecord>, HistoryError> {
    let timeout = Duration::from_secs(10);
    let consumer: BaseConsumer<Quiet> = base
        .clone()
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create_with_context(Quiet)?;
    let mut out = Vec::new();
    for topic in topic_names {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let at = |ms: i64| -> Result<TopicPartitionList, HistoryError> {
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition_offset(topic, p, Offset::Offset(ms))?;
            }
            Ok(consumer.offsets_for_times(tpl, timeout)?)
        };
        let starts = at(from_ms)?;
        let ends = at(to_ms)?;
        for &p in &partitions {
            let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
            let offset_of =
                |tpl: &TopicPartitionList| match tpl.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    // No record at or after the time: the end of the partition.
                    _ => high,
                };
            let start = offset_of(&starts);
            let end = offset_of(&ends).min(high);
            if start >= end {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
            consumer.assign(&tpl)?;
            let mut next = start;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while next < end && std::time::Instant::now() < deadline {
                let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let m = message?;
                next = m.offset() + 1;
                if m.offset() >= end {
                    break;
                }
                let ts = m.timestamp().to_millis().unwrap_or(0);
                if m.key() != Some(user_id.as_bytes()) || ts < from_ms || ts >= to_ms {
                    continue;
                }
                out.push(store::record(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.key(),
                    m.payload(),
                    ts,
                ));
            }
        }
    }
    out.sort_by(|a, b| {
        (a.kafka_ts, &a.topic, a.partition, a.offset).cmp(&(
            b.kafka_ts,
            &b.topic,
            b.partition,
            b.offset,
        ))
    });
    Ok(out)
}
