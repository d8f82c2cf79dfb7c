//! What a user can ask about their trading (contract "Orders", queries): open positions
//! (`GET /api/user/{user_id}/positions`), pending and past orders (`.../orders?status=`), and
//! what became of one command (`.../commands/{command_id}`). Each reads the audit store, the
//! one copy of every user event: positions and open orders from the latest `ACCOUNT_STATUS`
//! (the engine puts them in every status, valued at its time), past orders and commands from
//! the user's events.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::Value;
use suho_domain::{AccountStatus, OrderView, TradeEvent, TradeEventType, TradeStatus, UserTopic};
use suho_messaging::now_ms;

use crate::auth::{AuthUser, Need};
use crate::openapi::{
    CommandAnswer, CommandState, ErrorBody, NotYours, OrderFilter, OrdersAnswer, OrdersQuery,
    PositionsAnswer, Unauthorized,
};
use crate::user::own;
use crate::{ApiError, AppState};

fn store_down(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "reading the audit store");
    ApiError::Unavailable("the audit store")
}

/// The user's latest account status, if any.
async fn latest_status(state: &AppState, user_id: &str) -> Result<Option<AccountStatus>, ApiError> {
    let topic = UserTopic::Mt5Status.full_name(&state.topic_prefix);
    let latest = suho_audit::latest_event(state.accounts.pool(), &topic, user_id)
        .await
        .map_err(store_down)?;
    Ok(latest.and_then(|v| serde_json::from_value(v).ok()))
}

/// The user's events of `topics`, oldest first, as stored.
async fn history(
    state: &AppState,
    user_id: &str,
    topics: &[UserTopic],
) -> Result<Vec<(String, Value)>, ApiError> {
    let names: Vec<String> = topics
        .iter()
        .map(|t| t.full_name(&state.topic_prefix))
        .collect();
    let records = suho_audit::user_events(state.accounts.pool(), &names, user_id, 0, now_ms() + 1)
        .await
        .map_err(store_down)?;
    Ok(records
        .into_iter()
        .filter_map(|r| r.payload.map(|p| (r.topic, p)))
        .collect())
}

/// The caller's open positions.
///
/// From the latest `ACCOUNT_STATUS`: each position with the price it would close at and its
/// floating profit at that status's time (`as_of`; statuses come on every change and every
/// few seconds), its swap and commission. An empty list before the first status.
#[utoipa::path(
    get,
    path = "/api/user/{user_id}/positions",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."),),
    responses(
        (status = 200, description = "The open positions.", body = PositionsAnswer),
        Unauthorized,
        NotYours,
        (status = 503, description = "`unavailable`: the audit store is down.", body = ErrorBody),
    )
)]
pub async fn positions(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
) -> Result<Json<PositionsAnswer>, ApiError> {
    let user_id = own(&claims, &user_id, Need::Read)?;
    let status = latest_status(&state, user_id.as_str()).await?;
    Ok(Json(PositionsAnswer {
        as_of: status.as_ref().map(|s| s.timestamp),
        positions: status.map(|s| s.positions).unwrap_or_default(),
    }))
}

/// The caller's orders.
///
/// `status=open` (the default): the pending orders, from the latest `ACCOUNT_STATUS`.
/// `status=all`: every order ever placed, newest first, each in its last state (`PENDING`,
/// `FILLED`, `CANCELLED`, `EXPIRED`, `REJECTED`), from the user's order events.
#[utoipa::path(
    get,
    path = "/api/user/{user_id}/orders",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."), OrdersQuery),
    responses(
        (status = 200, description = "The orders.", body = OrdersAnswer),
        Unauthorized,
        NotYours,
        (status = 422, description = "`invalid_field`: `status` is not `open` or `all`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the audit store is down.", body = ErrorBody),
    )
)]
pub async fn orders(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
    query: Result<Query<OrdersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<OrdersAnswer>, ApiError> {
    let user_id = own(&claims, &user_id, Need::Read)?;
    let Query(query) = query.map_err(|_| ApiError::invalid("status", "must be `open` or `all`"))?;
    let orders = match query.status.unwrap_or(OrderFilter::Open) {
        OrderFilter::Open => latest_status(&state, user_id.as_str())
            .await?
            .map(|s| s.orders)
            .unwrap_or_default(),
        OrderFilter::All => {
            let events = history(&state, user_id.as_str(), &[UserTopic::Trades]).await?;
            every_order(events.iter().map(|(_, v)| v))
        }
    };
    Ok(Json(OrdersAnswer { orders }))
}

/// Every order the events place, each in the state its last event left it in, newest first.
fn every_order<'v>(events: impl Iterator<Item = &'v Value>) -> Vec<OrderView> {
    let mut orders: BTreeMap<String, OrderView> = BTreeMap::new();
    for v in events {
        let Ok(e) = serde_json::from_value::<TradeEvent>(v.clone()) else {
            continue;
        };
        let Some(id) = e.order_id.clone() else {
            continue;
        };
        let status = match e.event_type {
            TradeEventType::OrderPlaced
            | TradeEventType::OrderReplaced
            | TradeEventType::OrderTriggered => TradeStatus::Pending,
            TradeEventType::OrderCancelled => TradeStatus::Cancelled,
            TradeEventType::OrderExpired => TradeStatus::Expired,
            TradeEventType::OrderRejected => TradeStatus::Rejected,
            TradeEventType::TradeExecuted => TradeStatus::Filled,
            _ => continue,
        };
        if let Some(order) = orders.get_mut(&id) {
            order.status = status;
            if e.event_type == TradeEventType::OrderReplaced {
                order.volume = e.volume.unwrap_or(order.volume);
                order.limit_price = e.limit_price;
                order.stop_price = e.stop_price;
                order.stop_loss = e.stop_loss;
                order.take_profit = e.take_profit;
                order.expires_at = e.expires_at;
            }
            continue;
        }
        if e.event_type != TradeEventType::OrderPlaced {
            continue;
        }
        let (Some(symbol), Some(order_type), Some(side), Some(volume)) =
            (e.symbol, e.order_type, e.side.or(e.action), e.volume)
        else {
            continue;
        };
        orders.insert(
            id.clone(),
            OrderView {
                order_id: id,
                symbol,
                order_type,
                side,
                volume,
                limit_price: e.limit_price,
                stop_price: e.stop_price,
                stop_loss: e.stop_loss,
                take_profit: e.take_profit,
                time_in_force: e.time_in_force.unwrap_or(suho_domain::TimeInForce::Gtc),
                expires_at: e.expires_at,
                status,
                placed_at: e.timestamp,
            },
        );
    }
    let mut all: Vec<OrderView> = orders.into_values().collect();
    all.sort_by(|a, b| (b.placed_at, &b.order_id).cmp(&(a.placed_at, &a.order_id)));
    all
}

/// What became of one of the caller's commands.
///
/// `queued` while it waits for the engine; `executed` once it was carried out (its
/// outcome events follow: a fill, a close, a placed order, a deposit...); `rejected` with the
/// engine's `reason`. `events` are every event answering it, oldest first.
#[utoipa::path(
    get,
    path = "/api/user/{user_id}/commands/{command_id}",
    tag = "user",
    security(("bearer" = [])),
    params(
        ("user_id" = String, Path, description = "The caller's own id (the token's subject)."),
        ("command_id" = String, Path, description = "The `command_id` a trade or money request was answered with."),
    ),
    responses(
        (status = 200, description = "The command's state and its outcome events.", body = CommandAnswer),
        Unauthorized,
        NotYours,
        (status = 404, description = "`not_found`: no such command of the caller's (yet: the audit store records a command within moments of its `202`).", body = ErrorBody),
        (status = 503, description = "`unavailable`: the audit store is down.", body = ErrorBody),
    )
)]
pub async fn command(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path((user_id, command_id)): Path<(String, String)>,
) -> Result<Json<CommandAnswer>, ApiError> {
    let user_id = own(&claims, &user_id, Need::Read)?;
    let topics = [
        UserTopic::Commands,
        UserTopic::Trades,
        UserTopic::Transactions,
        UserTopic::RiskAlerts,
    ];
    let events = history(&state, user_id.as_str(), &topics).await?;
    let commands = UserTopic::Commands.full_name(&state.topic_prefix);
    let mut known = false;
    let mut answers = Vec::new();
    for (topic, v) in events {
        if topic == commands {
            known |= v["event_id"] == command_id.as_str();
        } else if v["command_id"] == command_id.as_str() {
            answers.push(v);
        }
    }
    if !known && answers.is_empty() {
        return Err(ApiError::NotFound);
    }
    let rejected = answers
        .iter()
        .find(|v| v["event_type"] == "TRADE_REJECTED" || v["event_type"] == "ORDER_REJECTED");
    let (status, reason) = match rejected {
        Some(r) => (
            CommandState::Rejected,
            r["reason"].as_str().map(str::to_owned),
        ),
        None if answers.is_empty() => (CommandState::Queued, None),
        None => (CommandState::Executed, None),
    };
    Ok(Json(CommandAnswer {
        command_id,
        status,
        reason,
        events: answers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_order_ends_in_its_last_state_newest_first() {
        let placed = |id: &str, at: i64| {
            json!({"event_id": format!("plc_{id}"), "event_type": "ORDER_PLACED", "user_id": "u",
                "order_id": id, "order_type": "LIMIT", "side": "BUY", "action": "BUY",
                "symbol": "EURUSD", "volume": 1.0, "limit_price": 1.09, "time_in_force": "GTC",
                "status": "PENDING", "timestamp": at})
        };
        let then = |kind: &str, id: &str, at: i64| {
            json!({"event_id": format!("{kind}_{id}"), "event_type": kind, "user_id": "u",
                "order_id": id, "symbol": "EURUSD", "volume": 0.5, "limit_price": 1.095,
                "timestamp": at})
        };
        let events = [
            placed("ord_a", 1),
            placed("ord_b", 2),
            placed("ord_c", 3),
            then("ORDER_REPLACED", "ord_a", 4),
            then("TRADE_EXECUTED", "ord_a", 5),
            then("ORDER_CANCELLED", "ord_b", 6),
        ];
        let all = every_order(events.iter());
        let got: Vec<(&str, TradeStatus)> = all
            .iter()
            .map(|o| (o.order_id.as_str(), o.status))
            .collect();
        assert_eq!(
            got,
            [
                ("ord_c", TradeStatus::Pending),
                ("ord_b", TradeStatus::Cancelled),
                ("ord_a", TradeStatus::Filled)
            ]
        );
        assert_eq!(all[2].volume.to_string(), "0.5");
    }
}
