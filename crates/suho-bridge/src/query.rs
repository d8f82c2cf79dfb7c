//! Read side: the candle history behind `GET /api/market/{SYM}/candles?tf=&from=&to=`, and
//! row counts for health checks and tests.

use rust_decimal::Decimal;
use sqlx::{PgPool, Row};
use suho_domain::{Candle, Symbol, Timeframe};

use crate::BridgeError;

/// Most candles one history query returns.
pub const MAX_HISTORY_LIMIT: i64 = 10_000;

/// 9999-12-31T00:00:00Z in epoch ms: query bounds are clamped to `[0, this]`.
pub(crate) const MAX_QUERY_MS: i64 = 253_402_214_400_000;

/// Stored (closed) candles of `symbol` and `tf` whose start lies in `[from_ms, to_ms)`,
/// oldest first, at most `limit` of them (clamped to `1..=`[`MAX_HISTORY_LIMIT`]); when the
/// range holds more, the oldest are returned. Bounds are clamped to `[0, 9999-12-31]`; an empty
/// range gives an empty list.
///
/// # Errors
/// The database failed.
pub async fn candle_history(
    pool: &PgPool,
    symbol: Symbol,
    tf: Timeframe,
    from_ms: i64,
    to_ms: i64,
    limit: i64,
) -> Result<Vec<Candle>, BridgeError> {
    // Keep the bounds inside PostgreSQL's timestamp range (up to 9999-12-31).
    let (from_ms, to_ms) = (from_ms.clamp(0, MAX_QUERY_MS), to_ms.clamp(0, MAX_QUERY_MS));
    if from_ms >= to_ms {
        return Ok(Vec::new());
    }
    // Through the owner's function: the gateway's role may call it but not read the table.
    let rows = sqlx::query(
        "SELECT start_ms, end_ms, open, high, low, close, volume \
         FROM market_candle_history($1, $2, $3, $4, $5) ORDER BY start_ms",
    )
    .bind(symbol.as_str())
    .bind(tf.as_str())
    .bind(from_ms)
    .bind(to_ms)
    .bind(limit.clamp(1, MAX_HISTORY_LIMIT))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Candle {
                symbol,
                timeframe: tf,
                open: r.try_get::<Decimal, _>("open")?,
                high: r.try_get("high")?,
                low: r.try_get("low")?,
                close: r.try_get("close")?,
                volume: r.try_get("volume")?,
                start: r.try_get("start_ms")?,
                end: r.try_get("end_ms")?,
                closed: true,
            })
        })
        .collect()
}

/// Stored ticks, of one symbol or of all.
///
/// # Errors
/// The database failed.
pub async fn tick_count(pool: &PgPool, symbol: Option<Symbol>) -> Result<i64, BridgeError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM market_ticks WHERE $1::text IS NULL OR symbol = $1",
    )
    .bind(symbol.map(|s| s.as_str().to_string()))
    .fetch_one(pool)
    .await?)
}

/// Stored candles, of one symbol or of all.
///
/// # Errors
/// The database failed.
pub async fn candle_count(pool: &PgPool, symbol: Option<Symbol>) -> Result<i64, BridgeError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM market_candles WHERE $1::text IS NULL OR symbol = $1",
    )
    .bind(symbol.map(|s| s.as_str().to_string()))
    .fetch_one(pool)
    .await?)
}
