//! The bridge's tables, created idempotently by the schema's owner ([`migrate`]) with plain
//! `CREATE .. IF NOT EXISTS` (not `sqlx::migrate!`: another crate's migrator owns
//! `_sqlx_migrations`). The bridge's own role makes no DDL: new partitions come from the
//! owner's `market_create_partition` function.
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

/// Creates or replaces the partition `name` of `parent` (one of the two market tables) for
/// `[lower, upper)`: the one piece of DDL the bridge itself needs, run with its owner's rights
/// so that the bridge's role needs none.
const CREATE_PARTITION_FUNCTION: &str = "CREATE OR REPLACE FUNCTION market_create_partition(\
      parent text, name text, lower timestamptz, upper timestamptz) RETURNS void \
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$ \
    BEGIN \
      IF parent NOT IN ('market_ticks', 'market_candles') \
         OR name !~ ('^' || parent || '_[0-9]{6,8}$') THEN \
        RAISE EXCEPTION 'not a market partition: % of %', name, parent; \
      END IF; \
      EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', \
        name, parent, lower, upper); \
    END $$";

/// The candle history query (see [`crate::candle_history`]), callable by roles that may not
/// read the table itself.
const CANDLE_HISTORY_FUNCTION: &str = "CREATE OR REPLACE FUNCTION market_candle_history(\
      p_symbol text, p_timeframe text, p_from_ms bigint, p_to_ms bigint, p_limit bigint) \
    RETURNS TABLE (start_ms bigint, end_ms bigint, open numeric, high numeric, low numeric, \
      close numeric, volume numeric) \
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$ \
      SELECT (extract(epoch FROM c.start_ts) * 1000)::bigint, \
             (extract(epoch FROM c.end_ts) * 1000)::bigint, \
             c.open, c.high, c.low, c.close, c.volume \
      FROM market_candles c \
      WHERE c.symbol = p_symbol AND c.timeframe = p_timeframe \
        AND c.start_ts >= timestamptz 'epoch' + p_from_ms * interval '1 millisecond' \
        AND c.start_ts < timestamptz 'epoch' + p_to_ms * interval '1 millisecond' \
      ORDER BY c.start_ts LIMIT p_limit $$";

/// Creates the market tables, the cursor table and their functions if missing, keeping
/// whichever layout existing tables have; run by the schema's owner before any bridge
/// starts.
///
/// # Errors
/// The database refused the DDL.
pub async fn migrate(pool: &PgPool) -> Result<StorageMode, BridgeError> {
    let mut tx = ddl_transaction(pool).await?;
    let mode = match layout(&mut tx).await? {
        Some(mode) => mode,
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
    exec(&mut tx, CREATE_PARTITION_FUNCTION).await?;
    exec(&mut tx, CANDLE_HISTORY_FUNCTION).await?;
    tx.commit().await?;
    tracing::info!(?mode, "market tables ready");
    Ok(mode)
}

/// The layout of the existing market tables, if they exist.
async fn layout(conn: &mut sqlx::PgConnection) -> Result<Option<StorageMode>, BridgeError> {
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass('market_ticks')",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(existing.map(|kind| {
        if kind == "p" {
            StorageMode::Partitioned
        } else {
            StorageMode::Timescale
        }
    }))
}

impl Schema {
    /// Finds out the layout of the tables [`migrate`] made.
    pub(crate) async fn detect(pool: &PgPool) -> Result<Schema, BridgeError> {
        let mut conn = pool.acquire().await?;
        let mode = layout(&mut conn).await?.ok_or(BridgeError::NoSchema)?;
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
        let mut wanted: Vec<Partition> = Vec::new();
        {
            let known = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut seen = HashSet::new();
            for day in tick_times.iter().map(|t| t.div_euclid(DAY_MS)) {
                if seen.insert(("t", day)) {
                    let p = tick_partition(day);
                    if !known.contains(&p.name) {
                        wanted.push(p);
                    }
                }
            }
            for month in candle_times.iter().copied().map(month_of_ms) {
                if seen.insert(("c", month)) {
                    let p = candle_partition(month);
                    if !known.contains(&p.name) {
                        wanted.push(p);
                    }
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let mut tx = ddl_transaction(pool).await?;
        for p in &wanted {
            sqlx::query("SELECT market_create_partition($1, $2, $3::timestamptz, $4::timestamptz)")
                .bind(p.parent)
                .bind(&p.name)
                .bind(&p.lower)
                .bind(&p.upper)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in wanted {
            tracing::debug!(partition = %p.name, "partition ready");
            known.insert(p.name);
        }
        Ok(())
    }
}

/// One time partition of a market table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Partition {
    parent: &'static str,
    name: String,
    lower: String,
    upper: String,
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

/// The daily tick partition of epoch day `day`.
fn tick_partition(day: i64) -> Partition {
    let (y, m, d) = civil_from_days(day);
    let (ny, nm, nd) = civil_from_days(day + 1);
    Partition {
        parent: "market_ticks",
        name: format!("market_ticks_{y:04}{m:02}{d:02}"),
        lower: format!("{y:04}-{m:02}-{d:02} 00:00:00+00"),
        upper: format!("{ny:04}-{nm:02}-{nd:02} 00:00:00+00"),
    }
}

/// The monthly candle partition of month index `month` (`year * 12 + m - 1`).
fn candle_partition(month: i64) -> Partition {
    let (y, m) = (month.div_euclid(12), month.rem_euclid(12) + 1);
    let (ny, nm) = ((month + 1).div_euclid(12), (month + 1).rem_euclid(12) + 1);
    Partition {
        parent: "market_candles",
        name: format!("market_candles_{y:04}{m:02}"),
        lower: format!("{y:04}-{m:02}-01 00:00:00+00"),
        upper: format!("{ny:04}-{nm:02}-01 00:00:00+00"),
    }
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
        let p = tick_partition(19_782);
        assert_eq!(p.name, "market_ticks_20240229");
        assert_eq!(
            (p.lower.as_str(), p.upper.as_str()),
            ("2024-02-29 00:00:00+00", "2024-03-01 00:00:00+00")
        );
        let month = month_of_ms(1_704_931_234_567);
        assert_eq!(month, 2024 * 12);
        let p = candle_partition(2024 * 12 + 11);
        assert_eq!(p.name, "market_candles_202412");
        assert_eq!(
            (p.lower.as_str(), p.upper.as_str()),
            ("2024-12-01 00:00:00+00", "2025-01-01 00:00:00+00")
        );
    }
}
