//! The bridge's tables, created idempotently at start with plain `CREATE .. IF NOT EXISTS`
//! (not `sqlx::migrate!`: another crate's migrator owns `_sqlx_migrations`).
//!
//! ```sql
//! market_ticks   (symbol text, ts timestamptz, bid numeric, ask numeric, source text,
//!                 PRIMARY KEY (symbol, ts, source, bid, ask))
//! market_candles (symbol text, timeframe text, start_ts timestamptz, end_ts timestamptz,
//!                 open, high, low, close, volume numeric,
//!                 PRIMARY KEY (symbol, timeframe, start_ts))
//! ```
//!
//! With TimescaleDB available both are hypertables (1-day chunks for ticks, 30-day chunks
//! for candles). Otherwise they are range-partitioned by time, ticks daily
//! (`market_ticks_YYYYMMDD`) and candles monthly (`market_candles_YYYYMM`), partitions being
//! created on demand before the batch that needs them. Whichever layout an existing table has
//! is kept. Schema changes run under an advisory lock so two bridges can start together.

use std::collections::HashSet;
use std::sync::Mutex;

use sqlx::PgPool;

use crate::BridgeError;

/// Advisory lock key for schema and partition DDL ("suhobrdg").
const DDL_LOCK: i64 = 0x7375_686f_6272_6467;
pub(crate) const DAY_MS: i64 = 86_400_000;

/// How the time-series tables are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// TimescaleDB hypertables.
    Timescale,
    /// Declarative range partitions created on demand.
    Partitioned,
}

/// The schema in use plus the partitions known to exist.
#[derive(Debug)]
pub(crate) struct Schema {
    pub(crate) mode: StorageMode,
    known: Mutex<HashSet<String>>,
}

/// Per bridge (its `consumer_name`): the last stream sequence whose messages are stored,
/// advanced in the transaction that stores them.
const CURSOR_TABLE: &str = "CREATE TABLE IF NOT EXISTS market_bridge_cursor (\
    consumer text PRIMARY KEY, stream_seq bigint NOT NULL CHECK (stream_seq >= 0), \
    updated_at timestamptz NOT NULL DEFAULT now())";

const TICKS_COLUMNS: &str = "symbol text NOT NULL, ts timestamptz NOT NULL, \
     bid numeric NOT NULL, ask numeric NOT NULL, source text NOT NULL, \
     PRIMARY KEY (symbol, ts, source, bid, ask)";
const CANDLES_COLUMNS: &str = "symbol text NOT NULL, timeframe text NOT NULL, \
     start_ts timestamptz NOT NULL, end_ts timestamptz NOT NULL, \
     open numeric NOT NULL, high numeric NOT NULL, low numeric NOT NULL, \
     close numeric NOT NULL, volume numeric NOT NULL, \
     PRIMARY KEY (symbol, timeframe, start_ts)";

impl Schema {
    /// Creates the tables if missing and finds out their layout.
    pub(crate) async fn ensure(pool: &PgPool) -> Result<Schema, BridgeError> {
        let mut tx = ddl_transaction(pool).await?;
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT c.relkind::text FROM pg_class c \
             WHERE c.oid = to_regclass('market_ticks')",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let mode = match existing.as_deref() {
            Some("p") => StorageMode::Partitioned,
            Some(_) => StorageMode::Timescale,
            None => {
                if timescale_ready(&mut tx).await? {
                    StorageMode::Timescale
                } else {
                    StorageMode::Partitioned
                }
            }
        };
        match mode {
            StorageMode::Timescale => {
                exec(
                    &mut tx,
                    &format!(
                        "CREATE TABLE IF NOT EXISTS market_ticks ({TICKS_COLUMNS});\n\
                     CREATE TABLE IF NOT EXISTS market_candles ({CANDLES_COLUMNS});\n\
                     SELECT create_hypertable('market_ticks', 'ts', \
                       chunk_time_interval => interval '1 day', if_not_exists => true);\n\
                     SELECT create_hypertable('market_candles', 'start_ts', \
                       chunk_time_interval => interval '30 days', if_not_exists => true);"
                    ),
                )
                .await?;
            }
            StorageMode::Partitioned => {
                exec(
                    &mut tx,
                    &format!(
                        "CREATE TABLE IF NOT EXISTS market_ticks ({TICKS_COLUMNS}) \
                       PARTITION BY RANGE (ts);\n\
                     CREATE TABLE IF NOT EXISTS market_candles ({CANDLES_COLUMNS}) \
                       PARTITION BY RANGE (start_ts);"
                    ),
                )
                .await?;
            }
        }
        exec(&mut tx, CURSOR_TABLE).await?;
        tx.commit().await?;
        tracing::info!(?mode, "market tables ready");
        Ok(Schema {
            mode,
            known: Mutex::new(HashSet::new()),
        })
    }

    /// Creates the partitions that rows at these times need (no-op with TimescaleDB).
    pub(crate) async fn ensure_partitions(
        &self,
        pool: &PgPool,
        tick_times: &[i64],
        candle_times: &[i64],
    ) -> Result<(), BridgeError> {
        if self.mode == StorageMode::Timescale {
            return Ok(());
        }
        let mut wanted: Vec<(String, String)> = Vec::new();
        {
            let known = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut seen = HashSet::new();
            for day in tick_times.iter().map(|t| t.div_euclid(DAY_MS)) {
                if seen.insert(("t", day)) {
                    let p = tick_partition(day);
                    if !known.contains(&p.0) {
                        wanted.push(p);
                    }
                }
            }
            for month in candle_times.iter().copied().map(month_of_ms) {
                if seen.insert(("c", month)) {
                    let p = candle_partition(month);
                    if !known.contains(&p.0) {
                        wanted.push(p);
                    }
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let mut tx = ddl_transaction(pool).await?;
        for (_, ddl) in &wanted {
            exec(&mut tx, ddl).await?;
        }
        tx.commit().await?;
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, _) in wanted {
            tracing::debug!(partition = %name, "partition ready");
            known.insert(name);
        }
        Ok(())
    }
}

/// Runs `sql` (one or more statements, no parameters) with the simple query protocol.
/// A transaction holding the DDL advisory lock (so bridges starting together do not race on
/// the same `CREATE`), with notices about existing objects silenced.
async fn ddl_transaction(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    exec(&mut tx, "SET LOCAL client_min_messages TO warning").await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(DDL_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

pub(crate) async fn exec(conn: &mut sqlx::PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await.map(|_| ())
}

/// Whether TimescaleDB is installed on the server and can be enabled in this database.
async fn timescale_ready(tx: &mut sqlx::PgConnection) -> Result<bool, BridgeError> {
    let available: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
            .fetch_optional(&mut *tx)
            .await?;
    if available.is_none() {
        tracing::info!("timescaledb not available: using range-partitioned tables");
        return Ok(false);
    }
    // A failure (not preloaded, no privilege) must not abort the whole transaction.
    exec(tx, "SAVEPOINT bridge_timescale").await?;
    match exec(tx, "CREATE EXTENSION IF NOT EXISTS timescaledb").await {
        Ok(_) => {
            exec(tx, "RELEASE SAVEPOINT bridge_timescale").await?;
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(error = %e, "timescaledb is available but cannot be enabled: using range-partitioned tables");
            exec(tx, "ROLLBACK TO SAVEPOINT bridge_timescale").await?;
            Ok(false)
        }
    }
}

/// `(name, DDL)` of the daily tick partition of epoch day `day`.
fn tick_partition(day: i64) -> (String, String) {
    let (y, m, d) = civil_from_days(day);
    let (ny, nm, nd) = civil_from_days(day + 1);
    let name = format!("market_ticks_{y:04}{m:02}{d:02}");
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {name} PARTITION OF market_ticks FOR VALUES \
         FROM ('{y:04}-{m:02}-{d:02} 00:00:00+00') TO ('{ny:04}-{nm:02}-{nd:02} 00:00:00+00')"
    );
    (name, ddl)
}

/// `(name, DDL)` of the monthly candle partition of month index `month` (`year * 12 + m - 1`).
fn candle_partition(month: i64) -> (String, String) {
    let (y, m) = (month.div_euclid(12), month.rem_euclid(12) + 1);
    let (ny, nm) = ((month + 1).div_euclid(12), (month + 1).rem_euclid(12) + 1);
    let name = format!("market_candles_{y:04}{m:02}");
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {name} PARTITION OF market_candles FOR VALUES \
         FROM ('{y:04}-{m:02}-01 00:00:00+00') TO ('{ny:04}-{nm:02}-01 00:00:00+00')"
    );
    (name, ddl)
}

fn month_of_ms(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
    y * 12 + m - 1
}

/// Proleptic Gregorian `(year, month, day)` of days since 1970-01-01 (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_732), (2024, 1, 10));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
        assert_eq!(civil_from_days(10_956), (1999, 12, 31));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn partition_bounds() {
        let (name, ddl) = tick_partition(19_782);
        assert_eq!(name, "market_ticks_20240229");
        assert!(ddl.contains("FROM ('2024-02-29 00:00:00+00') TO ('2024-03-01 00:00:00+00')"));
        let month = month_of_ms(1_704_931_234_567);
        assert_eq!(month, 2024 * 12);
        let (name, ddl) = candle_partition(2024 * 12 + 11);
        assert_eq!(name, "market_candles_202412");
        assert!(ddl.contains("FROM ('2024-12-01 00:00:00+00') TO ('2025-01-01 00:00:00+00')"));
    }
}
