//! Writes a batch of ticks and closed candles in one transaction, so that storing the same
//! batch twice inserts nothing the second time. Two paths:
//!
//! - **Direct** (the common case): `COPY` (CSV) straight into `market_ticks` /
//!   `market_candles` in one transaction. Every row has a unique key (the tables' primary keys,
//!   which include the partitioning time column, so they hold across partitions and chunks), so
//!   a batch holding any row already stored fails with a unique violation (SQLSTATE 23505) and
//!   its transaction is rolled back whole: nothing of it stays.
//! - **Staging** (after such a conflict: a batch redelivered after a crash or an ack timeout,
//!   or a duplicate inside the batch): `COPY` into temporary staging tables, then
//!   `INSERT .. SELECT .. ON CONFLICT DO NOTHING` into the real tables. It writes every row
//!   twice, hence only the fallback. Rows with a time outside 1970..9999 also take it.
//!
//! Both paths store the same values: on the direct path times travel as UTC text with
//! millisecond precision (`2024-01-10 00:00:00.001+00`), on the staging path as epoch
//! milliseconds that become `timestamptz` inside PostgreSQL (`'epoch' + ms * 1 ms`); prices
//! travel as the exact decimal text of the [`Decimal`]s. Partitions are created before either
//! path runs (see [`crate::StorageMode`]).
//!
//! [`Decimal`]: rust_decimal::Decimal

use std::fmt::Write as _;
use std::future::Future;

use sqlx::{Connection, PgConnection, PgPool};
use suho_domain::{Candle, Symbol, Tick, Timeframe};

use crate::schema::{civil_from_days, exec, Schema, StorageMode, DAY_MS};
use crate::BridgeError;

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Ticks handed in.
    pub ticks: u64,
    /// Ticks newly inserted (the rest were already stored).
    pub ticks_inserted: u64,
    /// Candles handed in.
    pub candles: u64,
    /// Candles newly inserted.
    pub candles_inserted: u64,
    /// Whether the batch went through the staging path (`ON CONFLICT DO NOTHING`): it held
    /// rows already stored, or times the direct path does not take.
    pub staged: bool,
}

impl StoreReport {
    /// Rows that were already stored (replays).
    #[must_use]
    pub fn duplicates(&self) -> u64 {
        (self.ticks - self.ticks_inserted) + (self.candles - self.candles_inserted)
    }
}

/// The market tables over a pool.
#[derive(Debug)]
pub struct Store {
    pool: PgPool,
    schema: Schema,
}

const STAGING: &str = "SET LOCAL client_min_messages TO warning;\n\
    CREATE TEMP TABLE IF NOT EXISTS bridge_ticks_stage \
      (symbol text, ts_ms bigint, bid numeric, ask numeric, source text) ON COMMIT DELETE ROWS;\n\
    CREATE TEMP TABLE IF NOT EXISTS bridge_candles_stage \
      (symbol text, timeframe text, start_ms bigint, end_ms bigint, open numeric, high numeric, \
       low numeric, close numeric, volume numeric) ON COMMIT DELETE ROWS;";

const MOVE_TICKS: &str = "INSERT INTO market_ticks (symbol, ts, bid, ask, source) \
    SELECT symbol, timestamptz 'epoch' + ts_ms * interval '1 millisecond', bid, ask, source \
    FROM bridge_ticks_stage ON CONFLICT DO NOTHING";

const MOVE_CANDLES: &str = "INSERT INTO market_candles \
      (symbol, timeframe, start_ts, end_ts, open, high, low, close, volume) \
    SELECT symbol, timeframe, timestamptz 'epoch' + start_ms * interval '1 millisecond', \
      timestamptz 'epoch' + end_ms * interval '1 millisecond', open, high, low, close, volume \
    FROM bridge_candles_stage ON CONFLICT DO NOTHING";

impl Store {
    /// Wraps the pool, once it finds the tables [`crate::migrate`] made (see
    /// [`crate::StorageMode`]).
    ///
    /// # Errors
    /// The database is unreachable, or [`BridgeError::NoSchema`].
    pub async fn open(pool: PgPool) -> Result<Store, BridgeError> {
        let schema = Schema::detect(&pool).await?;
        Ok(Store { pool, schema })
    }

    /// The tables' layout.
    #[must_use]
    pub fn mode(&self) -> StorageMode {
        self.schema.mode
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores `ticks` and closed `candles` in one transaction; rows already stored are skipped.
    /// The caller validates (see [`crate::classify`]); `closed` is not checked here.
    ///
    /// # Errors
    /// Any database failure; then nothing of the batch is stored.
    pub fn write<'a>(
        &'a self,
        ticks: &'a [Tick],
        candles: &'a [Candle],
    ) -> impl Future<Output = Result<StoreReport, BridgeError>> + Send + 'a {
        self.write_inner(ticks, candles, None)
    }

    /// [`Store::write`], and in the same transaction moves the bridge cursor `advance.name`
    /// from `advance.from` to `advance.to`: the rows and the position they were read up to are
    /// committed together, or neither is.
    ///
    /// # Errors
    /// [`BridgeError::CursorMoved`] when the cursor is not at `advance.from` (another bridge
    /// with the same name moved it); then nothing is stored. Any database failure; then
    /// nothing is stored and the cursor stays.
    pub fn write_advancing<'a>(
        &'a self,
        ticks: &'a [Tick],
        candles: &'a [Candle],
        advance: &'a CursorAdvance,
    ) -> impl Future<Output = Result<StoreReport, BridgeError>> + Send + 'a {
        self.write_inner(ticks, candles, Some(advance))
    }

    /// The stream sequence up to which the bridge `name` has stored messages; a new cursor
    /// starts at `initial`.
    ///
    /// # Errors
    /// The database failed.
    pub async fn cursor(&self, name: &str, initial: u64) -> Result<u64, BridgeError> {
        let initial = i64::try_from(initial).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO market_bridge_cursor (consumer, stream_seq) VALUES ($1, $2) \
             ON CONFLICT (consumer) DO NOTHING",
        )
        .bind(name)
        .bind(initial)
        .execute(&self.pool)
        .await?;
        Ok(stored_cursor(&self.pool, name).await?.unwrap_or(0))
    }

    /// Start (epoch ms) of the latest stored candle of `symbol` at `timeframe` whose start lies
    /// in `[from_ms, to_ms]` (both inclusive, clamped to `[0, 9999-12-31]`), if any: where a
    /// download of that range resumes. Storing the bars themselves is [`Store::write`], which
    /// skips bars already stored, so a rerun never duplicates one.
    ///
    /// # Errors
    /// The database failed.
    pub async fn last_candle_start(
        &self,
        symbol: Symbol,
        timeframe: Timeframe,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<i64>, BridgeError> {
        let max = crate::query::MAX_QUERY_MS;
        let (from_ms, to_ms) = (from_ms.clamp(0, max), to_ms.clamp(0, max));
        if from_ms > to_ms {
            return Ok(None);
        }
        Ok(sqlx::query_scalar(
            "SELECT (extract(epoch FROM max(start_ts)) * 1000)::bigint FROM market_candles \
             WHERE symbol = $1 AND timeframe = $2 \
               AND start_ts >= timestamptz 'epoch' + $3 * interval '1 millisecond' \
               AND start_ts <= timestamptz 'epoch' + $4 * interval '1 millisecond'",
        )
        .bind(symbol.as_str())
        .bind(timeframe.as_str())
        .bind(from_ms)
        .bind(to_ms)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn write_inner(
        &self,
        ticks: &[Tick],
        candles: &[Candle],
        advance: Option<&CursorAdvance>,
    ) -> Result<StoreReport, BridgeError> {
        let mut report = StoreReport {
            ticks: ticks.len() as u64,
            candles: candles.len() as u64,
            ..StoreReport::default()
        };
        if ticks.is_empty() && candles.is_empty() {
            if let Some(advance) = advance {
                let mut conn = self.pool.acquire().await?;
                if !advance_cursor(&mut conn, advance).await? {
                    return Err(advance.moved());
                }
            }
            return Ok(report);
        }
        let tick_times: Vec<i64> = ticks.iter().map(|t| t.timestamp).collect();
        let candle_times: Vec<i64> = candles.iter().map(|c| c.start).collect();
        self.schema
            .ensure_partitions(&self.pool, &tick_times, &candle_times)
            .await?;
        let mut conn = self.pool.acquire().await?;
        if direct_times(ticks, candles) {
            match write_direct(&mut conn, ticks, candles, advance).await {
                Ok(false) => {
                    return Err(advance.map_or_else(
                        || BridgeError::Config("no cursor to move".into()),
                        CursorAdvance::moved,
                    ))
                }
                Ok(true) => {
                    report.ticks_inserted = report.ticks;
                    report.candles_inserted = report.candles;
                    return Ok(report);
                }
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    // Rolled back whole: the batch holds rows already stored (a replay).
                    tracing::debug!(
                        error = %e,
                        ticks = ticks.len(),
                        candles = candles.len(),
                        "batch conflicts with stored rows; storing it through staging"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        report.staged = true;
        let mut tx = conn.begin().await?;
        if let Some(advance) = advance {
            if !advance_cursor(&mut tx, advance).await? {
                tx.rollback().await?;
                return Err(advance.moved());
            }
        }
        exec(&mut tx, STAGING).await?;
        if !ticks.is_empty() {
            copy_csv(
                &mut tx,
                "COPY bridge_ticks_stage (symbol, ts_ms, bid, ask, source) \
                 FROM STDIN WITH (FORMAT csv)",
                ticks_csv(ticks),
            )
            .await?;
            report.ticks_inserted = sqlx::query(MOVE_TICKS)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if !candles.is_empty() {
            copy_csv(
                &mut tx,
                "COPY bridge_candles_stage \
                 (symbol, timeframe, start_ms, end_ms, open, high, low, close, volume) \
                 FROM STDIN WITH (FORMAT csv)",
                candles_csv(candles),
            )
            .await?;
            report.candles_inserted = sqlx::query(MOVE_CANDLES)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(report)
    }
}

/// Runs `statement` (a `COPY .. FROM STDIN`) with `csv` as its data; the rows copied.
async fn copy_csv(
    conn: &mut PgConnection,
    statement: &str,
    csv: String,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(csv.into_bytes()).await?;
    copy.finish().await
}

/// Where a batch moves a bridge cursor: from the position it was read from to the last
/// stream sequence it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorAdvance {
    /// The bridge's name (`BridgeConfig::consumer_name`).
    pub name: String,
    /// The cursor before the batch.
    pub from: u64,
    /// The last stream sequence of the batch.
    pub to: u64,
}

impl CursorAdvance {
    fn moved(&self) -> BridgeError {
        BridgeError::CursorMoved {
            name: self.name.clone(),
            expected: self.from,
        }
    }
}

/// Moves the cursor if it is where the batch expects it; `false` (nothing changed) if not.
async fn advance_cursor(
    conn: &mut PgConnection,
    advance: &CursorAdvance,
) -> Result<bool, sqlx::Error> {
    let seq = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let moved = sqlx::query(
        "UPDATE market_bridge_cursor SET stream_seq = $2, updated_at = now() \
         WHERE consumer = $1 AND stream_seq = $3",
    )
    .bind(&advance.name)
    .bind(seq(advance.to))
    .bind(seq(advance.from))
    .execute(&mut *conn)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// The stored cursor of the bridge `name`, if it has one.
///
/// # Errors
/// The database failed.
pub async fn stored_cursor(pool: &PgPool, name: &str) -> Result<Option<u64>, BridgeError> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT stream_seq FROM market_bridge_cursor WHERE consumer = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(seq.map(|s| u64::try_from(s).unwrap_or(0)))
}

/// The direct path: one transaction, the cursor moved (if any), then `COPY` straight into the
/// real tables. On any error, or a cursor not where expected (`Ok(false)`), the transaction is
/// rolled back before returning, so nothing of the batch is stored.
async fn write_direct(
    conn: &mut PgConnection,
    ticks: &[Tick],
    candles: &[Candle],
    advance: Option<&CursorAdvance>,
) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    if let Some(advance) = advance {
        if !advance_cursor(&mut tx, advance).await? {
            tx.rollback().await?;
            return Ok(false);
        }
    }
    let copied = async {
        if !ticks.is_empty() {
            copy_csv(&mut tx, TICKS_COPY, ticks_copy_csv(ticks)).await?;
        }
        if !candles.is_empty() {
            copy_csv(
                &mut tx,
                "COPY market_candles \
                 (symbol, timeframe, start_ts, end_ts, open, high, low, close, volume) \
                 FROM STDIN WITH (FORMAT csv)",
                candles_csv_direct(candles),
            )
            .await?;
        }
        Ok::<(), sqlx::Error>(())
    }
    .await;
    match copied {
        Ok(()) => tx.commit().await.map(|()| true),
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::debug!(error = %rollback, "rolling back the direct copy failed");
            }
            Err(e)
        }
    }
}

/// Epoch milliseconds the direct path writes as text: 1970-01-01 ..= 9999-12-31T23:59:59.999Z.
const DIRECT_MS: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

/// Whether every time of the batch can travel as text on the direct path.
fn direct_times(ticks: &[Tick], candles: &[Candle]) -> bool {
    ticks.iter().all(|t| DIRECT_MS.contains(&t.timestamp))
        && candles
            .iter()
            .all(|c| DIRECT_MS.contains(&c.start) && DIRECT_MS.contains(&c.end))
}

/// Epoch milliseconds (in [`DIRECT_MS`]) as a UTC `timestamptz` literal,
/// `YYYY-MM-DD HH:MM:SS.mmm+00`: ISO order, read the same under every `DateStyle`.
fn push_utc(out: &mut String, ms: i64) {
    let (y, mo, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let in_day = ms.rem_euclid(DAY_MS);
    let (h, mi, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000,
    );
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{milli:03}+00"
    );
}

/// The direct path's statement for ticks.
pub const TICKS_COPY: &str =
    "COPY market_ticks (symbol, ts, bid, ask, source) FROM STDIN WITH (FORMAT csv)";

/// The CSV the direct path sends to [`TICKS_COPY`]: one row per tick, its time as a UTC
/// `timestamptz` literal (the data bridge bench's raw COPY sends the very same text).
#[must_use]
pub fn ticks_copy_csv(ticks: &[Tick]) -> String {
    let mut out = String::with_capacity(ticks.len() * 80);
    for t in ticks {
        let _ = write!(out, "{},", t.symbol);
        push_utc(&mut out, t.timestamp);
        let _ = write!(out, ",{},{},", t.bid, t.ask);
        quoted(&mut out, &t.source);
        out.push('\n');
    }
    out
}

fn candles_csv_direct(candles: &[Candle]) -> String {
    let mut out = String::with_capacity(candles.len() * 128);
    for c in candles {
        let _ = write!(out, "{},{},", c.symbol, c.timeframe);
        push_utc(&mut out, c.start);
        out.push(',');
        push_utc(&mut out, c.end);
        let _ = writeln!(
            out,
            ",{},{},{},{},{}",
            c.open, c.high, c.low, c.close, c.volume
        );
    }
    out
}

/// A CSV field: quoted, inner quotes doubled (handles commas, quotes and newlines).
fn quoted(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
}

fn ticks_csv(ticks: &[Tick]) -> String {
    let mut out = String::with_capacity(ticks.len() * 64);
    for t in ticks {
        let _ = write!(out, "{},{},{},{},", t.symbol, t.timestamp, t.bid, t.ask);
        quoted(&mut out, &t.source);
        out.push('\n');
    }
    out
}

fn candles_csv(candles: &[Candle]) -> String {
    let mut out = String::with_capacity(candles.len() * 96);
    for c in candles {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{}",
            c.symbol, c.timeframe, c.start, c.end, c.open, c.high, c.low, c.close, c.volume
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use suho_domain::Symbol;

    #[test]
    fn csv_rows_are_exact_and_quoted() {
        let s = Symbol::parse("EURUSD").expect("sym");
        let t = Tick::new(
            s,
            Decimal::new(108_500, 5),
            Decimal::new(108_512, 5),
            7,
            "a\"b,c\nd",
        )
        .expect("tick");
        assert_eq!(
            ticks_csv(std::slice::from_ref(&t)),
            "EURUSD,7,1.08500,1.08512,\"a\"\"b,c\nd\"\n"
        );
        assert_eq!(
            ticks_copy_csv(&[t]),
            "EURUSD,1970-01-01 00:00:00.007+00,1.08500,1.08512,\"a\"\"b,c\nd\"\n"
        );
    }

    #[test]
    fn direct_times_are_exact_utc_text() {
        let text = |ms: i64| {
            let mut s = String::new();
            push_utc(&mut s, ms);
            s
        };
        assert_eq!(text(0), "1970-01-01 00:00:00.000+00");
        assert_eq!(text(1_704_844_800_001), "2024-01-10 00:00:00.001+00");
        assert_eq!(text(1_709_251_199_999), "2024-02-29 23:59:59.999+00");
        assert_eq!(text(*DIRECT_MS.end()), "9999-12-31 23:59:59.999+00");
        let s = Symbol::parse("EURUSD").expect("sym");
        let at = |ms: i64| Tick::new(s, Decimal::ONE, Decimal::ONE, ms, "x").expect("tick");
        assert!(direct_times(&[at(0), at(*DIRECT_MS.end())], &[]));
        assert!(!direct_times(&[at(-1)], &[]));
        assert!(!direct_times(&[at(*DIRECT_MS.end() + 1)], &[]));
    }
}
