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
    ActivitiesAnswer, ActivitiesQuery, CommandAnswer, CommandState, ErrorBody, NotYours,
    OrderFilter, OrdersAnswer, OrdersQuery, PositionsAnswer, Unauthorized,
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
/// outcome events follow: a fill, a close, a placed order, a deposit, the account's
/// opening...); `rejected` with the engine's `reason`. `events` are every event answering it
/// (a transaction names its command as its `reference`), oldest first.
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
    let transactions = UserTopic::Transactions.full_name(&state.topic_prefix);
    let mut known = false;
    let mut answers = Vec::new();
    for (topic, v) in events {
        if topic == commands {
            known |= v["event_id"] == command_id.as_str();
        } else if v["command_id"] == command_id.as_str()
            // A transaction names its command as its `reference`.
            || (topic == transactions && v["reference"] == command_id.as_str())
        {
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

/// The activities a page holds at most, and by default.
const MAX_ACTIVITIES: usize = 1_000;
const DEFAULT_ACTIVITIES: usize = 100;

/// An activity kind of `type=`, and the events it takes in.
fn activity_kind(event: &Value, kind: &str) -> bool {
    let t = event["event_type"].as_str().unwrap_or_default();
    match kind {
        "deal" => matches!(
            t,
            "TRADE_EXECUTED" | "TRADE_CLOSED" | "TRADE_PARTIALLY_CLOSED"
        ),
        // The opening balance is the account's first money in.
        "deposit" => matches!(t, "DEPOSIT" | "ACCOUNT_OPENED"),
        "withdrawal" => t == "WITHDRAWAL",
        "swap" => t == "SWAP_CHARGED",
        "commission" => event["commission"].as_f64().is_some_and(|c| c != 0.0),
        _ => false,
    }
}

const ACTIVITY_KINDS: [&str; 5] = ["deal", "deposit", "withdrawal", "swap", "commission"];

/// The caller's account activities.
///
/// Deals (fills, closes, partial closes, each with its commission and swap), deposits (and
/// the account's opening, `ACCOUNT_OPENED` with its opening balance), withdrawals and swap
/// charges, oldest first, in `[from, to)` (Kafka time; default: all), filtered by `type`
/// (comma-separated: `deal`, `deposit` (with `ACCOUNT_OPENED`), `withdrawal`, `swap`,
/// `commission`: the deals that paid one) and `symbol`, at most `limit` (100; 1 to 1000) a
/// page; `next_cursor` (or `null` on the last page) gives the next page as `cursor`.
#[utoipa::path(
    get,
    path = "/api/user/{user_id}/activities",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."), ActivitiesQuery),
    responses(
        (status = 200, description = "A page of activities.", body = ActivitiesAnswer),
        Unauthorized,
        NotYours,
        (status = 422, description = "`invalid_field`: `from`, `to`, `type`, `symbol`, `cursor` or `limit`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the audit store is down.", body = ErrorBody),
    )
)]
pub async fn activities(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<ActivitiesAnswer>, ApiError> {
    let user_id = own(&claims, &user_id, Need::Read)?;
    let millis = |field: &'static str| crate::input::query_millis(&params, field);
    let to = millis("to")?.unwrap_or_else(|| now_ms() + 1);
    let from = millis("from")?.unwrap_or(0);
    let kinds: Vec<&str> = match params.get("type") {
        None => ACTIVITY_KINDS[..4].to_vec(),
        Some(list) => list
            .split(',')
            .map(|k| {
                ACTIVITY_KINDS
                    .iter()
                    .find(|known| **known == k)
                    .copied()
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "type",
                            format!(
                                "must be a comma-separated list of {}",
                                ACTIVITY_KINDS.join(", ")
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let symbol = params
        .get("symbol")
        .map(|s| crate::input::traded_symbol("symbol", s, &state.symbols))
        .transpose()?;
    let limit = match params.get("limit") {
        None => DEFAULT_ACTIVITIES,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ACTIVITIES).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("limit", format!("must be between 1 and {MAX_ACTIVITIES}"))
            })?,
    };
    let after = params.get("cursor").map(|c| Cursor::parse(c)).transpose()?;
    if from >= to {
        return Ok(Json(ActivitiesAnswer {
            activities: Vec::new(),
            next_cursor: None,
        }));
    }
    let names: Vec<String> = [UserTopic::Trades, UserTopic::Transactions]
        .iter()
        .map(|t| t.full_name(&state.topic_prefix))
        .collect();
    let records =
        suho_audit::user_events(state.accounts.pool(), &names, user_id.as_str(), from, to)
            .await
            .map_err(store_down)?;
    let mut page = Vec::new();
    let mut next_cursor = None;
    for r in records {
        let at = Cursor {
            ts: r.kafka_ts,
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
        };
        if after.as_ref().is_some_and(|a| at.key() <= a.key()) {
            continue;
        }
        let Some(event) = r.payload else { continue };
        if !kinds.iter().any(|k| activity_kind(&event, k)) {
            continue;
        }
        if symbol.is_some_and(|s| event["symbol"] != s.as_str()) {
            continue;
        }
        if page.len() == limit {
            next_cursor = page_end(&page);
            break;
        }
        page.push((at, event));
    }
    Ok(Json(ActivitiesAnswer {
        activities: page.into_iter().map(|(_, e)| e).collect(),
        next_cursor,
    }))
}

/// The cursor after the last activity of a full page.
fn page_end(page: &[(Cursor, Value)]) -> Option<String> {
    page.last().map(|(c, _)| c.to_string())
}

/// Where a page ended: a record's Kafka time, topic, partition and offset (the audit store's
/// order), written `{ts}:{partition}:{offset}:{topic}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    ts: i64,
    topic: String,
    partition: i32,
    offset: i64,
}

impl Cursor {
    fn key(&self) -> (i64, &str, i32, i64) {
        (self.ts, self.topic.as_str(), self.partition, self.offset)
    }

    fn parse(text: &str) -> Result<Cursor, ApiError> {
        let bad = || ApiError::invalid("cursor", "must be a next_cursor this route gave");
        let mut parts = text.splitn(4, ':');
        let mut next = || parts.next().ok_or_else(bad);
        let ts = next()?.parse().map_err(|_| bad())?;
        let partition = next()?.parse().map_err(|_| bad())?;
        let offset = next()?.parse().map_err(|_| bad())?;
        let topic = next()?.to_owned();
        if topic.is_empty() {
            return Err(bad());
        }
        Ok(Cursor {
            ts,
            topic,
            partition,
            offset,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.ts, self.partition, self.offset, self.topic
        )
    }
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

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_a_bad_one_names_the_field() {
        let c = Cursor {
            ts: 17,
            topic: "t1.user.trades".into(),
            partition: 3,
            offset: 42,
        };
        assert_eq!(Cursor::parse(&c.to_string()).expect("parses"), c);
        for bad in ["", "1:2:3", "x:2:3:t", "1:2:3:"] {
            assert!(
                matches!(Cursor::parse(bad), Err(ApiError::Invalid { ref field, .. }) if field == "cursor"),
                "{bad}"
            );
        }
        let deal = json!({"event_type": "TRADE_CLOSED", "commission": -3.5});
        assert!(activity_kind(&deal, "deal") && activity_kind(&deal, "commission"));
        assert!(!activity_kind(
            &json!({"event_type": "ORDER_PLACED"}),
            "deal"
        ));
        let opened = json!({"event_type": "ACCOUNT_OPENED", "amount": 10000.0});
        assert!(activity_kind(&opened, "deposit"));
        assert!(!activity_kind(&opened, "withdrawal") && !activity_kind(&opened, "deal"));
    }
}
