//! Trade commands (open, close, modify): validated here, queued on `user.commands` keyed by
//! the caller's id, answered `202 {status: "queued", command_id}`. Execution is the trading
//! engine's. A `client_order_id` is claimed in PostgreSQL before the command is queued: a
//! repeated one is answered with the first `command_id` and queues nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use rust_decimal::Decimal;
use suho_domain::money::{LOT_STEP, MAX_ORDER_VOLUME};
use suho_domain::{
    CancelOrder, CommandKind, OpenTrade, Order, OrderType, ReplaceOrder, Side, TimeInForce,
    TradeCommand,
};
use suho_messaging::now_ms;

use suho_accounts::ClientOrder;

use crate::auth::AuthUser;
use crate::input::Body;
use crate::openapi::{
    BodyErrors, CancelOrderRequest, CloseTradeRequest, ErrorBody, ModifyTradeRequest,
    OpenTradeRequest, Queued, QueuedStatus, ReplaceOrderRequest, Unauthorized,
};
use crate::{ApiError, AppState};

/// The fields of each trade body: any other is refused.
const OPEN_FIELDS: &[&str] = &[
    "symbol",
    "type",
    "volume",
    "stop_loss",
    "take_profit",
    "client_order_id",
    "order_type",
    "limit_price",
    "stop_price",
    "time_in_force",
    "expires_at",
    "trailing_stop_pips",
    "oco_with",
];
const CLOSE_FIELDS: &[&str] = &["trade_id", "volume"];
const CANCEL_FIELDS: &[&str] = &["order_id"];
const REPLACE_FIELDS: &[&str] = &[
    "order_id",
    "volume",
    "limit_price",
    "stop_price",
    "stop_loss",
    "take_profit",
    "expires_at",
];
const ORDER_TYPES: &[(&str, OrderType)] = &[
    ("MARKET", OrderType::Market),
    ("LIMIT", OrderType::Limit),
    ("STOP", OrderType::Stop),
    ("STOP_LIMIT", OrderType::StopLimit),
];
const TIMES_IN_FORCE: &[(&str, TimeInForce)] = &[
    ("GTC", TimeInForce::Gtc),
    ("DAY", TimeInForce::Day),
    ("GTD", TimeInForce::Gtd),
    ("IOC", TimeInForce::Ioc),
    ("FOK", TimeInForce::Fok),
];
const MODIFY_FIELDS: &[&str] = &["trade_id", "stop_loss", "take_profit"];

/// Opens a position: a market order, or a pending one (limit, stop, stop-limit).
///
/// Queues an `OPEN_TRADE` command on `user.commands`, keyed by the caller. A repeated
/// `client_order_id` is answered with the first order's `command_id` and queues nothing. A
/// pending order is answered `ORDER_PLACED` when it rests, `TRADE_EXECUTED` (with its
/// `order_id`) when it fills; the rules between its fields and against the market are the
/// engine's, and a breach is a `TRADE_REJECTED` whose reason names the field.
#[utoipa::path(
    post,
    path = "/api/trade/open",
    tag = "trading",
    security(("bearer" = [])),
    request_body = OpenTradeRequest,
    responses(
        (status = 202, description = "Queued (or, for a repeated `client_order_id`, queued before).", body = Queued),
        BodyErrors,
        Unauthorized,
        (status = 422, description = "`invalid_field`: `symbol` (not a pair, or not traded here), `type`, `volume` (not positive, over 100 lots, off the 0.01 step), `stop_loss` / `take_profit` (not positive, or on the wrong side of each other) or `client_order_id`; nothing is queued.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Kafka did not acknowledge the command, or the database is down; nothing is queued, retry.", body = ErrorBody),
    )
)]
pub async fn open(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    crate::auth::need(&claims, crate::auth::Need::Trade)?;
    let body = Body::parse(&body)?;
    body.only(OPEN_FIELDS)?;
    let order = parse_order(&body, &state)?;
    let client_order_id = body.opt_text("client_order_id", 1, 64)?.map(str::to_string);
    let user_id = claims.user_id();
    let open = OpenTrade {
        order_type: body
            .opt_choice("order_type", ORDER_TYPES)?
            .unwrap_or_default(),
        limit_price: body.opt_price("limit_price")?,
        stop_price: body.opt_price("stop_price")?,
        time_in_force: body.opt_choice("time_in_force", TIMES_IN_FORCE)?,
        expires_at: body.opt_millis("expires_at")?,
        trailing_stop_pips: trailing_pips(&body)?,
        oco_with: body.opt_text("oco_with", 1, 128)?.map(str::to_string),
        ..OpenTrade::market(order, client_order_id.clone())
    };
    let command = TradeCommand::new(user_id.clone(), CommandKind::OpenTrade(open), now_ms());
    if let Some(coid) = &client_order_id {
        // A retried request: answer with the first command, queue nothing.
        if let ClientOrder::Existing(first) = state
            .accounts
            .claim_client_order(&user_id, coid, &command.head.event_id)
            .await?
        {
            tracing::info!(user_id = %user_id, client_order_id = %coid, command_id = %first, "repeated client_order_id; nothing queued");
            return Ok(queued(&first));
        }
    }
    if let Err(e) = state.producer.send(&command).await {
        if let Some(coid) = &client_order_id {
            // Not queued: free the id so the client's retry can queue it.
            if let Err(release) = state
                .accounts
                .release_client_order(&user_id, coid, &command.head.event_id)
                .await
            {
                tracing::error!(user_id = %user_id, client_order_id = %coid, error = %release, "releasing an unqueued client_order_id failed; a retry will be answered with a command that was never queued");
            }
        }
        return Err(e.into());
    }
    tracing::info!(user_id = %command.head.user_id, command_id = %command.head.event_id, "OPEN_TRADE queued");
    Ok(queued(&command.head.event_id))
}

/// `202 {status: "queued", command_id}`.
pub(crate) fn queued(command_id: &str) -> (StatusCode, Json<Queued>) {
    (
        StatusCode::ACCEPTED,
        Json(Queued {
            status: QueuedStatus::Queued,
            command_id: command_id.to_string(),
        }),
    )
}

/// The `trade_id` of a close or modify body, as sent.
fn trade_id(body: &Body) -> Result<String, ApiError> {
    Ok(body.text("trade_id", 1, 128)?.to_string())
}

/// Closes a position, or part of it.
///
/// Queues a `CLOSE_TRADE` command for one of the caller's positions; with a `volume` below
/// the position's, that much of it closes (`TRADE_PARTIALLY_CLOSED`).
#[utoipa::path(
    post,
    path = "/api/trade/close",
    tag = "trading",
    security(("bearer" = [])),
    request_body = CloseTradeRequest,
    responses(
        (status = 202, description = "Queued; an unknown position is answered by the engine with `TRADE_REJECTED`.", body = Queued),
        BodyErrors,
        Unauthorized,
        (status = 422, description = "`invalid_field`: `trade_id` is missing or not 1 to 128 characters, or `volume` is not a volume (positive, at most 100, on the 0.01 step).", body = ErrorBody),
        (status = 503, description = "`unavailable`: Kafka did not acknowledge the command; retry.", body = ErrorBody),
    )
)]
pub async fn close(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    crate::auth::need(&claims, crate::auth::Need::Trade)?;
    let body = Body::parse(&body)?;
    body.only(CLOSE_FIELDS)?;
    let close = suho_domain::CloseTrade {
        trade_id: trade_id(&body)?,
        volume: body.opt_decimal("volume")?.map(lots).transpose()?,
    };
    let command = TradeCommand::new(claims.user_id(), CommandKind::CloseTrade(close), now_ms());
    state.producer.send(&command).await?;
    tracing::info!(user_id = %command.head.user_id, command_id = %command.head.event_id, "CLOSE_TRADE queued");
    Ok(queued(&command.head.event_id))
}

/// Cancels a pending order.
///
/// Queues a `CANCEL_ORDER` command for one of the caller's pending orders; it is answered
/// `ORDER_CANCELLED`, or `TRADE_REJECTED` when the order is no longer pending (filled,
/// expired or cancelled before).
#[utoipa::path(
    post,
    path = "/api/trade/cancel",
    tag = "trading",
    security(("bearer" = [])),
    request_body = CancelOrderRequest,
    responses(
        (status = 202, description = "Queued.", body = Queued),
        BodyErrors,
        Unauthorized,
        (status = 422, description = "`invalid_field`: `order_id` is missing or not 1 to 128 characters.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Kafka did not acknowledge the command; retry.", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    crate::auth::need(&claims, crate::auth::Need::Trade)?;
    let body = Body::parse(&body)?;
    body.only(CANCEL_FIELDS)?;
    let cancel = CancelOrder {
        order_id: body.text("order_id", 1, 128)?.to_string(),
    };
    let command = TradeCommand::new(claims.user_id(), CommandKind::CancelOrder(cancel), now_ms());
    state.producer.send(&command).await?;
    tracing::info!(user_id = %command.head.user_id, command_id = %command.head.event_id, "CANCEL_ORDER queued");
    Ok(queued(&command.head.event_id))
}

/// Changes a pending order.
///
/// Queues a `REPLACE_ORDER` command: a new volume, price, stops or expiry for one of the
/// caller's pending orders, checked by the engine against the market as a new order is;
/// answered `ORDER_REPLACED` with the order as it now is, or `TRADE_REJECTED`.
#[utoipa::path(
    post,
    path = "/api/trade/replace",
    tag = "trading",
    security(("bearer" = [])),
    request_body = ReplaceOrderRequest,
    responses(
        (status = 202, description = "Queued.", body = Queued),
        BodyErrors,
        Unauthorized,
        (status = 422, description = "`invalid_field`: `order_id`, a volume or price out of its bounds, an `expires_at` that is not epoch milliseconds, or nothing to change.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Kafka did not acknowledge the command; retry.", body = ErrorBody),
    )
)]
pub async fn replace(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    crate::auth::need(&claims, crate::auth::Need::Trade)?;
    let body = Body::parse(&body)?;
    body.only(REPLACE_FIELDS)?;
    let replace = ReplaceOrder {
        order_id: body.text("order_id", 1, 128)?.to_string(),
        volume: body.opt_decimal("volume")?.map(lots).transpose()?,
        limit_price: body.opt_price("limit_price")?,
        stop_price: body.opt_price("stop_price")?,
        stop_loss: body.opt_price("stop_loss")?,
        take_profit: body.opt_price("take_profit")?,
        expires_at: body.opt_millis("expires_at")?,
    };
    if replace.validate().is_err() {
        return Err(ApiError::invalid(
            "order_id",
            "nothing to change: give volume, limit_price, stop_price, stop_loss, take_profit or expires_at",
        ));
    }
    let command = TradeCommand::new(
        claims.user_id(),
        CommandKind::ReplaceOrder(replace),
        now_ms(),
    );
    state.producer.send(&command).await?;
    tracing::info!(user_id = %command.head.user_id, command_id = %command.head.event_id, "REPLACE_ORDER queued");
    Ok(queued(&command.head.event_id))
}

/// Changes a position's stops.
///
/// Queues a `MODIFY_TRADE` command: new stop loss and/or take profit for one of the
/// caller's positions.
#[utoipa::path(
    post,
    path = "/api/trade/modify",
    tag = "trading",
    security(("bearer" = [])),
    request_body = ModifyTradeRequest,
    responses(
        (status = 202, description = "Queued.", body = Queued),
        BodyErrors,
        Unauthorized,
        (status = 422, description = "`invalid_field`: `trade_id`, a stop that is not a positive price, or neither `stop_loss` nor `take_profit` given.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Kafka did not acknowledge the command; retry.", body = ErrorBody),
    )
)]
pub async fn modify(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    crate::auth::need(&claims, crate::auth::Need::Trade)?;
    let body = Body::parse(&body)?;
    body.only(MODIFY_FIELDS)?;
    let trade_id = trade_id(&body)?;
    let stop_loss = body.opt_price("stop_loss")?;
    let take_profit = body.opt_price("take_profit")?;
    if stop_loss.is_none() && take_profit.is_none() {
        return Err(ApiError::invalid(
            "stop_loss",
            "stop_loss or take_profit is required",
        ));
    }
    let command =
        TradeCommand::modify(claims.user_id(), trade_id, stop_loss, take_profit, now_ms());
    state.producer.send(&command).await?;
    tracing::info!(user_id = %command.head.user_id, command_id = %command.head.event_id, "MODIFY_TRADE queued");
    Ok(queued(&command.head.event_id))
}

/// The largest trailing distance the API takes, pips.
pub(crate) const MAX_TRAILING_PIPS: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);
/// The step of a trailing distance, pips.
pub(crate) const TRAILING_STEP: Decimal = Decimal::from_parts(1, 0, 0, false, 1);

/// `trailing_stop_pips`: positive, at most [`MAX_TRAILING_PIPS`], on [`TRAILING_STEP`].
fn trailing_pips(body: &Body) -> Result<Option<Decimal>, ApiError> {
    let Some(p) = body.opt_decimal("trailing_stop_pips")? else {
        return Ok(None);
    };
    if p <= Decimal::ZERO || p > MAX_TRAILING_PIPS || !(p % TRAILING_STEP).is_zero() {
        return Err(ApiError::invalid(
            "trailing_stop_pips",
            format!(
                "must be positive, at most {MAX_TRAILING_PIPS} pips, on the step {TRAILING_STEP}"
            ),
        ));
    }
    Ok(Some(p))
}

/// A volume in lots: positive, at most the largest order, on the lot step.
fn lots(volume: Decimal) -> Result<Decimal, ApiError> {
    if volume <= Decimal::ZERO {
        return Err(ApiError::invalid("volume", "must be positive"));
    }
    if volume > MAX_ORDER_VOLUME {
        return Err(ApiError::invalid(
            "volume",
            format!("must be at most {MAX_ORDER_VOLUME} lots"),
        ));
    }
    if !suho_domain::money::on_lot_step(volume) {
        return Err(ApiError::invalid(
            "volume",
            format!("must be a multiple of the lot step {LOT_STEP}"),
        ));
    }
    Ok(volume)
}

fn parse_order(body: &Body, state: &AppState) -> Result<Order, ApiError> {
    let symbol = crate::input::traded_symbol("symbol", body.string("symbol")?, &state.symbols)?;
    let side = match body.string("type")? {
        "BUY" => Side::Buy,
        "SELL" => Side::Sell,
        _ => return Err(ApiError::invalid("type", "must be BUY or SELL")),
    };
    let volume = lots(body.decimal("volume")?)?;
    let stop_loss = body.opt_price("stop_loss")?;
    let take_profit = body.opt_price("take_profit")?;
    if let (Some(sl), Some(tp)) = (stop_loss, take_profit) {
        let wrong = match side {
            Side::Buy => sl >= tp,
            Side::Sell => sl <= tp,
        };
        if wrong {
            return Err(ApiError::invalid(
                "stop_loss",
                "must be below take_profit for a BUY and above it for a SELL",
            ));
        }
    }
    Ok(Order {
        symbol,
        side,
        volume,
        stop_loss,
        take_profit,
    })
}
