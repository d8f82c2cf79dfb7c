//! The consumer loop: read a batch of records from every audited topic, store them, then
//! commit their offsets. A database failure keeps the batch and retries it with backoff
//! (nothing is committed meanwhile); a crash replays from the last commit, and the primary key
//! makes the replay insert nothing twice.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use suho_messaging::kafka;
use tokio_util::sync::CancellationToken;

use crate::store::{self, AuditRecord, AUDITED_TOPICS};
use crate::AuditError;

/// The consumer group (the configured group prefix is prepended).
pub const GROUP: &str = suho_security::kafka::names::AUDIT;

/// How the audit service batches and retries.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Most records stored at once.
    pub batch_max: usize,
    /// Longest wait for a batch to fill once it has a record.
    pub batch_wait: Duration,
    /// First back-off after a failed store; doubled up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest back-off.
    pub retry_max: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            batch_max: 1_000,
            batch_wait: Duration::from_millis(50),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Counter of records stored by the audit service.
const STORED_METRIC: &str = "audit_records_stored_total";

/// Runs the audit service until `shutdown`.
///
/// `pool` logs in as the audit's role; the table is the schema owner's ([`crate::migrate`]).
///
/// # Errors
/// Kafka refuses the consumer.
pub async fn run_audit(
    kafka_config: suho_config::KafkaConfig,
    telemetry: suho_config::TelemetryConfig,
    pool: PgPool,
    config: AuditConfig,
    shutdown: CancellationToken,
) -> Result<(), AuditError> {
    let consumer = kafka::consumer(&kafka_config, &telemetry, GROUP, &AUDITED_TOPICS)?;
    tracing::info!(
        group = GROUP,
        topics = AUDITED_TOPICS.len(),
        "audit service consuming"
    );
    let mut backoff = config.retry_initial;
    loop {
        // Wait for the first record, then take what else arrives within batch_wait.
        let first = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            r = consumer.recv() => r,
        };
        let mut batch: Vec<AuditRecord> = Vec::new();
        let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
        match first {
            Ok(m) => take(&m, &mut batch, &mut offsets),
            Err(e) => {
                tracing::warn!(error = %e, "reading the user topics failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_max);
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + config.batch_wait;
        while batch.len() < config.batch_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => take(&m, &mut batch, &mut offsets),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the user topics failed mid-batch");
                    break;
                }
                Err(_) => break,
            }
        }
        // Store until it works (or shutdown: the batch is then read again on the next start).
        loop {
            match store::insert(&pool, &batch).await {
                Ok(inserted) => {
                    metrics::counter!(STORED_METRIC).increment(inserted);
                    tracing::debug!(records = batch.len(), inserted, "audit batch stored");
                    backoff = config.retry_initial;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = batch.len(), retry_in = ?backoff, "storing the audit batch failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            tracing::info!("audit service stopped with a batch unstored; it is read again on the next start");
                            return Ok(());
                        }
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(config.retry_max);
                }
            }
        }
        let mut to_commit = TopicPartitionList::new();
        for ((topic, partition), next) in &offsets {
            if let Err(e) = to_commit.add_partition_offset(topic, *partition, Offset::Offset(*next))
            {
                tracing::warn!(error = %e, "noting an offset to commit failed");
            }
        }
        if let Err(e) = consumer.commit(&to_commit, CommitMode::Sync) {
            tracing::warn!(error = %e, "committing audit offsets failed; the batch may be read again (and skipped)");
        }
    }
    // Every stored batch's offsets are committed above; leave the group off the async
    // workers, within a deadline.
    if let Err(e) = consumer.close(kafka::CLOSE_DEADLINE).await {
        tracing::warn!(error = %e, "leaving the consumer group");
    }
    tracing::info!("audit service stopped");
    Ok(())
}

/// Adds one message to the batch and notes the offset to commit after it.
fn take(
    m: &rdkafka::message::BorrowedMessage<'_>,
    batch: &mut Vec<AuditRecord>,
    offsets: &mut HashMap<(String, i32), i64>,
) {
    batch.push(store::record(
        m.topic(),
        m.partition(),
        m.offset(),
        m.key(),
        m.payload(),
        m.timestamp().to_millis().unwrap_or(0),
    ));
    let next = offsets
        .entry((m.topic().to_string(), m.partition()))
        .or_insert(0);
    *next = (*next).max(m.offset() + 1);
}
