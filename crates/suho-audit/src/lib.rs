//! The audit service (the seed's "Audit Trail & Compliance"): consumer group `audit` over
//! every contract `user.*` topic, storing each record append-only in PostgreSQL with its
//! Kafka coordinates; the compliance queries over that store; and a direct-from-Kafka history
//! (offsets for times, as in the seed's `get_user_trade_history`) to check the store against.
//!
//! # Invariants
//! - A record is stored once: `(topic, partition, offset)` is the primary key and inserts skip
//!   conflicts, so a replay after a crash (offsets are committed after the rows) adds nothing.
//! - The table is append-only: a trigger refuses `UPDATE` and `DELETE`.
//! - The audit time of a record is its Kafka timestamp (the producer's create time), the same
//!   clock the direct-from-Kafka history seeks by, so both answer the same range.
//! - A record whose value is not JSON (garbage on `user.commands`) is stored too, its bytes
//!   kept raw, so nothing that reached a topic is missing from the trail.
//! - The user of a record is its key (the contract keys every user record by `user_id`).

mod export;
mod history;
mod service;
mod store;

pub use export::{write_export, ExportFormat, CSV_HEADER};
pub use history::{kafka_history, HistoryError};
pub use service::{run_audit, AuditConfig, GROUP};
pub use store::{latest_event, migrate, user_events, AuditRecord, AUDITED_TOPICS};

/// Why the audit service stopped.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// PostgreSQL failed at start-up.
    #[error("audit store: {0}")]
    Database(#[from] sqlx::Error),
    /// Kafka refused the consumer for good.
    #[error("audit consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The consumer could not be created.
    #[error(transparent)]
    Messaging(#[from] suho_messaging::MessagingError),
}
