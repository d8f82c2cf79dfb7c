//! Market routes, shared by every user and so without a token: `GET /api/symbols` (the pairs
//! traded here, with their digits, pip, contract size and volumes: what a client needs to
//! show and size an order, from the server that enforces them) and
//! `GET /api/market/{SYM}/candles?tf=&from=&to=&limit=` (the stored, closed candles of one
//! symbol and timeframe, written by the data bridge, oldest first, for the dashboard's chart).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use suho_domain::{Candle, Timeframe};
use suho_messaging::now_ms;

use crate::openapi::{CandlesQuery, ErrorBody, SymbolSpec, Symbols};
use crate::{ApiError, AppState};

/// The pairs traded here.
///
/// Every pair this gateway accepts orders for, the majors first in their usual order, with
/// the facts the server sizes and shows them by: price digits, one pip, the contract size of
/// one lot, and the smallest, largest and step of an order's volume.
#[utoipa::path(
    get,
    path = "/api/symbols",
    tag = "market",
    responses(
        (status = 200, description = "The pairs.", body = Symbols),
    )
)]
pub async fn symbols(State(state): State<Arc<AppState>>) -> Json<Symbols> {
    let mut symbols: Vec<suho_domain::Symbol> = state.symbols.iter().copied().collect();
    let rank = |s: &suho_domain::Symbol| {
        suho_domain::MAJOR_FX
            .iter()
            .position(|m| *m == s.as_str())
            .unwrap_or(usize::MAX)
    };
    symbols.sort_by_key(|s| (rank(s), *s));
    Json(Symbols {
        symbols: symbols.into_iter().map(SymbolSpec::of).collect(),
    })
}

/// Candles returned when `limit` is not given.
const DEFAULT_LIMIT: i64 = 500;

/// The candle history of one symbol.
///
/// Stored closed candles of one symbol and timeframe with `start` in `[from, to)`, oldest
/// first; without `from`/`to`, the last `limit` periods. An empty range (`from` not before
/// `to`) is answered with an empty list.
#[utoipa::path(
    get,
    path = "/api/market/{symbol}/candles",
    tag = "market",
    params(
        ("symbol" = String, Path, description = "A pair quoted here, e.g. `EURUSD` (any case).", example = "EURUSD"),
        CandlesQuery,
    ),
    responses(
        (status = 200, description = "The candles, oldest first.", body = [Candle]),
        (status = 422, description = "`invalid_field`: `symbol` (not a pair, or not quoted here), `tf`, `limit`, `from` or `to`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the market data store is down.", body = ErrorBody),
    )
)]
pub async fn candles(
    State(state): State<Arc<AppState>>,
    Path(symbol): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Candle>>, ApiError> {
    let symbol = crate::input::traded_symbol("symbol", &symbol, &state.symbols)?;
    let tf = Timeframe::parse(params.get("tf").map_or("1m", String::as_str))
        .map_err(|_| ApiError::invalid("tf", "must be one of 1m 5m 15m 30m 1h 4h 1d"))?;
    let millis = |field: &'static str| crate::input::query_millis(&params, field);
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=suho_bridge::MAX_HISTORY_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("must be between 1 and {}", suho_bridge::MAX_HISTORY_LIMIT),
                )
            })?,
    };
    let to = millis("to")?.unwrap_or_else(|| now_ms() + 1);
    let from = millis("from")?.unwrap_or_else(|| {
        to.saturating_sub(tf.duration_ms().saturating_mul(limit))
            .max(0)
    });
    if from >= to {
        // An empty range holds nothing.
        return Ok(Json(Vec::new()));
    }
    let candles = suho_bridge::candle_history(state.accounts.pool(), symbol, tf, from, to, limit)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "candle history query failed");
            ApiError::Unavailable("the market data store")
        })?;
    Ok(Json(candles))
}
