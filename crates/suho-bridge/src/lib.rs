//! The data bridge: stores the market feed (`market.{SYM}.tick`) and closed candles
//! (`market.{SYM}.{tf}`) in PostgreSQL, and answers the dashboard's candle history query.
//!
//! # Data flow
//!
//! ```text
//! feed / analytics --core publish--> NATS --(JetStream stream captures the subjects)-->
//!   pull consumer from the bridge's cursor (no acks) --batch (<= batch_max msgs or
//!   batch_wait)--> parse --> one transaction: move the cursor, COPY into the tables (or, if
//!   the batch holds a stored row: COPY into temp staging tables, INSERT .. ON CONFLICT DO
//!   NOTHING) --> commit
//! ```
//!
//! The stages are pipelined (the next batch is fetched and parsed while a batch is stored);
//! see the `bridge` module.
//!
//! - The broadcast path is untouched: publishers keep using core NATS; a JetStream stream
//!   ([`BridgeConfig::subjects`]) captures the same subjects, giving the bridge a durable,
//!   replayable view. `market.{SYM}.price` (request/reply) is deliberately not captured.
//! - The bridge's position is a cursor in PostgreSQL (`market_bridge_cursor`: the last stream
//!   sequence stored), moved in the transaction that stores the batch. A crash loses nothing
//!   and stores nothing twice: the next bridge of the same name reads from the cursor. Two
//!   bridges of one name serialise on the cursor row; the loser re-reads.
//! - Rows are idempotent besides: every row has a natural key (ticks:
//!   `(symbol, ts, source, bid, ask)`; candles: `(symbol, timeframe, start_ts)`), the tables'
//!   primary keys. A batch is first copied straight into the tables; if any row is already
//!   stored (a second bridge name reading the same stream, a backfill that stored the same
//!   bars), that transaction fails on the key and is rolled back whole, and the batch is
//!   stored again through staging with `ON CONFLICT DO NOTHING`.
//! - A message that cannot be parsed is counted, logged and skipped, so it cannot block the
//!   stream. Candles that are not `closed` are skipped.
//! - On a database error nothing is stored and the cursor stays: the bridge backs off and
//!   re-reads the batch.
//! - Messages the stream dropped before the bridge read them (an outage longer than the
//!   stream holds) are counted and logged as a gap.
//!
//! # Invariants
//! - This crate knows nothing of HTTP: the gateway calls [`candle_history`].
//! - It never publishes on the market subjects and never writes to Kafka.
//! - It owns only the `market_ticks` / `market_candles` tables (and their partitions); it does
//!   not use `sqlx::migrate!` (another crate owns `_sqlx_migrations`). [`migrate`] makes them,
//!   as the schema's owner; the bridge's role only reads and writes rows, and creates
//!   partitions through the owner's `market_create_partition`.

mod bridge;
mod parse;
mod query;
mod schema;
mod store;

use std::time::Duration;

pub use bridge::{run_bridge, Bridge, BridgeStats, StatsSnapshot};
pub use parse::{classify, Classified};
pub use query::{candle_count, candle_history, tick_count, MAX_HISTORY_LIMIT};
pub use schema::{migrate, StorageMode};
pub use store::{stored_cursor, ticks_copy_csv, CursorAdvance, Store, StoreReport, TICKS_COPY};

/// Counter of rows inserted, label `table` (`market_ticks` / `market_candles`).
pub const ROWS_WRITTEN_METRIC: &str = "bridge_rows_written_total";
/// Counter of rows skipped as already stored (replays), label `table`.
pub const DUPLICATES_METRIC: &str = "bridge_duplicate_rows_total";
/// Counter of messages that could not be parsed (terminated, never redelivered).
pub const INVALID_METRIC: &str = "bridge_invalid_messages_total";
/// Counter of batches that failed to be stored (they are redelivered).
pub const BATCH_ERRORS_METRIC: &str = "bridge_batch_errors_total";
/// Counter of messages the stream dropped before the bridge read them.
pub const GAP_METRIC: &str = "bridge_stream_gap_messages_total";
/// Histogram of the bridge's own work on one batch, seconds: parsing, store and commit, and
/// acknowledgements (the three are overlapped with other batches, so this is not the time from
/// fetch to acknowledgement).
pub const BATCH_SECONDS_METRIC: &str = "bridge_batch_seconds";

/// Why the bridge or a query failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// PostgreSQL failed (retryable in the run loop; fatal at start-up).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A JetStream operation failed.
    #[error("jetstream {op}: {detail}")]
    JetStream {
        /// What was being done, e.g. `create stream`.
        op: &'static str,
        /// The client's error.
        detail: String,
    },
    /// The configuration cannot work.
    #[error("invalid bridge configuration: {0}")]
    Config(String),
    /// The bridge's cursor was not where this bridge left it: another bridge with the same
    /// name stored the batch first. Nothing was stored; the bridge re-reads from the cursor.
    #[error("bridge cursor {name} moved: expected it at stream sequence {expected}")]
    CursorMoved {
        /// The bridge's name.
        name: String,
        /// Where this bridge expected it.
        expected: u64,
    },
    /// The market tables do not exist: the schema's owner has not migrated this database.
    #[error("the market tables do not exist: the database is not migrated (suho up migrates it as the `owner` role)")]
    NoSchema,
}

impl BridgeError {
    fn jetstream(op: &'static str, e: impl std::fmt::Display) -> Self {
        BridgeError::JetStream {
            op,
            detail: e.to_string(),
        }
    }
}

/// How the bridge consumes and stores.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Prefix of every subject (`""` outside tests).
    pub subject_prefix: String,
    /// JetStream stream capturing the market subjects.
    pub stream_name: String,
    /// The bridge's name: its cursor's key in `market_bridge_cursor`; a restarted bridge of
    /// the same name resumes from it.
    pub consumer_name: String,
    /// Most messages stored in one transaction.
    pub batch_max: usize,
    /// Longest wait for a batch to fill.
    pub batch_wait: Duration,
    /// How long the stream keeps messages (the longest bridge outage that loses nothing).
    pub max_age: Duration,
    /// Size cap of the stream in bytes (oldest dropped first); `None` for no cap.
    pub max_bytes: Option<i64>,
    /// First back-off after a failed batch; doubled up to [`BridgeConfig::retry_max`].
    pub retry_initial: Duration,
    /// Longest back-off.
    pub retry_max: Duration,
}

/// Stream name without a prefix.
pub const DEFAULT_STREAM: &str = suho_domain::subject::MARKET_STREAM;
/// Consumer name without a prefix.
pub const DEFAULT_CONSUMER: &str = "data-bridge";

impl BridgeConfig {
    /// Defaults for `subject_prefix`: stream `MARKET`, consumer `data-bridge` (each with
    /// `_{prefix}` appended when the prefix is not empty, non-alphanumerics as `_`), batches of
    /// up to 5 000 messages or 100 ms, 1 h retention capped at 1 GiB, back-off 200 ms .. 5 s.
    #[must_use]
    pub fn new(subject_prefix: impl Into<String>) -> Self {
        let subject_prefix = subject_prefix.into();
        let named = |base: &str| suho_domain::subject::jetstream_name(base, &subject_prefix);
        Self {
            stream_name: named(DEFAULT_STREAM),
            consumer_name: named(DEFAULT_CONSUMER),
            subject_prefix,
            batch_max: 5_000,
            batch_wait: Duration::from_millis(100),
            // The stream is the bridge's outage buffer, not an archive (PostgreSQL is): it holds
            // every tick and every candle update (about 8 messages per tick), so it is capped.
            max_age: Duration::from_secs(3600),
            max_bytes: Some(1 << 30),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
        }
    }

    /// The defaults for the configuration's NATS subject prefix, with the stream capped at
    /// `market.bridge_buffer_bytes`.
    #[must_use]
    pub fn from_config(config: &suho_config::Config) -> Self {
        let mut bridge = Self::new(config.nats.subject_prefix.clone());
        bridge.max_bytes = i64::try_from(config.market.bridge_buffer_bytes).ok();
        bridge
    }

    /// The subjects the stream captures: `{prefix}market.*.tick` and `{prefix}market.*.{tf}`
    /// for every timeframe (not `market.*.price`).
    #[must_use]
    pub fn subjects(&self) -> Vec<String> {
        let p = &self.subject_prefix;
        std::iter::once(suho_domain::subject::all_ticks(p))
            .chain(
                suho_domain::Timeframe::ALL
                    .iter()
                    .map(|tf| suho_domain::subject::all_candles(p, *tf)),
            )
            .collect()
    }

    fn validate(&self) -> Result<(), BridgeError> {
        let bad_name = |n: &str| {
            n.is_empty()
                || n.chars()
                    .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        };
        if bad_name(&self.stream_name) || bad_name(&self.consumer_name) {
            return Err(BridgeError::Config(format!(
                "stream {:?} / consumer {:?}: names must be non-empty without . * > / \\ or spaces",
                self.stream_name, self.consumer_name
            )));
        }
        if self.batch_max == 0 || self.batch_wait.is_zero() {
            return Err(BridgeError::Config(
                "batch_max and batch_wait must be positive".into(),
            ));
        }
        if self.max_age.is_zero() {
            return Err(BridgeError::Config("max_age must be positive".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let c = BridgeConfig::new("t1a2b3c4d5e6.");
        assert_eq!(c.stream_name, "MARKET_t1a2b3c4d5e6");
        assert_eq!(c.consumer_name, "data-bridge_t1a2b3c4d5e6");
        assert!(c.validate().is_ok());
        let c = BridgeConfig::new("");
        assert_eq!(c.stream_name, "MARKET");
        assert_eq!(c.consumer_name, "data-bridge");
        let c = BridgeConfig::new("a.b*c.");
        assert_eq!(c.stream_name, "MARKET_a_b_c");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn subjects_exclude_price_requests() {
        let s = BridgeConfig::new("p.").subjects();
        assert_eq!(s.len(), 8);
        assert_eq!(s[0], "p.market.*.tick");
        assert!(s.contains(&"p.market.*.1m".to_string()));
        assert!(s.contains(&"p.market.*.1d".to_string()));
        assert!(!s.iter().any(|x| x.ends_with(".price") || x.ends_with('>')));
    }
}
