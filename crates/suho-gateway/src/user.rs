//! The caller's own profile: settings (`GET`/`PUT /api/user/{user_id}/settings`) and MT5
//! account links (`POST /api/user/{user_id}/mt5/link`). The path's user must be the token's
//! subject (else 403). Each change is stored, then published on `user.settings`; the event
//! carries the settings object or the account number, never a password.
//!
//! A change and its event are stored in one transaction (the event in the outbox, see
//! [`crate::outbox`]) and the event is published before the answer. If Kafka does not take
//! it in time, the change is still acknowledged: the outbox relay publishes the event as soon
//! as Kafka answers again.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Json;
use secrecy::SecretString;
use suho_accounts::{AccountError, Claims};
use suho_domain::{
    new_event_id, AccountStatus, SettingsEvent, SettingsEventType, TradeEvent, UserId,
    UserSettings, SCHEMA_VERSION,
};
use suho_messaging::now_ms;

use crate::auth::{AuthUser, Need};
use crate::input::Body;
use crate::openapi::{
    BodyErrors, ErrorBody, LinkStatus, MoneyRequest, Mt5LinkRequest, Mt5Linked, NotYours, Queued,
    SettingsPatch, TradesQuery, Unauthorized,
};
use crate::{outbox, ApiError, AppState};

/// The path's user, if it is the caller and the caller's token may do `need`.
pub(crate) fn own(claims: &Claims, user_id: &str, need: Need) -> Result<UserId, ApiError> {
    if claims.sub != user_id {
        return Err(ApiError::Forbidden);
    }
    crate::auth::need(claims, need)?;
    Ok(claims.user_id())
}

fn settings_event(
    event_type: SettingsEventType,
    user_id: UserId,
    settings: Option<serde_json::Value>,
    mt5_account: Option<String>,
) -> SettingsEvent {
    SettingsEvent {
        event_id: new_event_id("set"),
        event_type,
        user_id,
        settings,
        mt5_account,
        timestamp: now_ms(),
        schema_version: SCHEMA_VERSION,
    }
}

/// The caller's settings.
///
/// The defaults until the first update.
#[utoipa::path(
    get,
    path = "/api/user/{user_id}/settings",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."),),
    responses(
        (status = 200, description = "The settings.", body = UserSettings),
        Unauthorized,
        NotYours,
        (status = 500, description = "`internal`: the stored settings no longer read.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is down.", body = ErrorBody),
    )
)]
pub async fn get_settings(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = own(&claims, &user_id, Need::Read)?;
    Ok(Json(state.accounts.settings(&user_id).await?))
}

/// Updates the caller's settings.
///
/// Merges a JSON merge patch into the current settings, checks the result, and stores it with
/// its `SETTINGS_UPDATED` event, which is published on `user.settings` before the answer (or,
/// when Kafka does not take it within 5 s, by the outbox relay once Kafka answers).
#[utoipa::path(
    put,
    path = "/api/user/{user_id}/settings",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."),),
    request_body = SettingsPatch,
    responses(
        (status = 200, description = "The settings after the patch, in full: stored, with their event.", body = UserSettings),
        BodyErrors,
        Unauthorized,
        NotYours,
        (status = 409, description = "`conflict`: an auto-trading volume above `risk.max_volume` (the stored one or the patch's); nothing is stored.", body = ErrorBody),
        (status = 422, description = "`invalid_field`: an unknown or invalid setting, named by its dotted path (`risk.leverage`, `watchlist`, `auto_trading.scalping.volume`, ...).", body = ErrorBody),
        (status = 500, description = "`internal`: the stored settings no longer read.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is down (nothing is stored).", body = ErrorBody),
    )
)]
pub async fn put_settings(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = own(&claims, &user_id, Need::Session)?;
    let patch = Body::parse(&body)?.into_value();
    let strategies: Vec<&str> = state.strategies.iter().map(String::as_str).collect();
    let settings = state
        .accounts
        .update_settings(&user_id, |current| {
            let settings = current.patched(&patch, &state.symbols, &strategies)?;
            let value = serde_json::to_value(&settings).map_err(|_| ApiError::Internal)?;
            let event = settings_event(
                SettingsEventType::SettingsUpdated,
                user_id.clone(),
                Some(value),
                None,
            );
            Ok::<_, ApiError>((settings, outbox::stored(&event)?))
        })
        .await?;
    outbox::publish_now(&state).await;
    tracing::info!(user_id = %user_id, "settings updated");
    Ok(Json(settings))
}

/// Links an MT5 account to the caller.
///
/// Links, or re-links with a new password. The password is sealed before it is stored and
/// never published; `MT5_ACCOUNT_LINKED` is stored with the link and goes on `user.settings`
/// (through the outbox, as a settings change's event does).
#[utoipa::path(
    post,
    path = "/api/user/{user_id}/mt5/link",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."),),
    request_body = Mt5LinkRequest,
    responses(
        (status = 200, description = "Linked.", body = Mt5Linked),
        BodyErrors,
        Unauthorized,
        NotYours,
        (status = 422, description = "`invalid_field`: `mt5_account` or `password`.", body = ErrorBody),
        (status = 500, description = "`internal`: sealing the password failed.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database or the credentials key is unavailable (nothing is stored).", body = ErrorBody),
    )
)]
pub async fn link_mt5(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = own(&claims, &user_id, Need::Session)?;
    let body = Body::parse(&body)?;
    body.only(&["mt5_account", "password"])?;
    let account = body.string("mt5_account")?;
    if account.is_empty()
        || account.len() > 32
        || !account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::invalid(
            "mt5_account",
            "must be 1 to 32 letters, digits or dashes",
        ));
    }
    let account = account.to_string();
    let password = SecretString::from(body.text("password", 1, 128)?.to_string());
    // user.settings is compacted to the latest record per user: every record carries the
    // whole settings object, so a link is never the record that erases them.
    let event = |settings: &UserSettings| {
        let value = serde_json::to_value(settings)
            .map_err(|e| AccountError::Corrupt(format!("settings: {e}")))?;
        let event = settings_event(
            SettingsEventType::Mt5AccountLinked,
            user_id.clone(),
            Some(value),
            Some(account.clone()),
        );
        outbox::stored(&event)
    };
    state
        .accounts
        .link_mt5(&user_id, &account, &password, event)
        .await?;
    outbox::publish_now(&state).await;
    tracing::info!(user_id = %user_id, mt5_account = %account, "MT5 account linked");
    Ok(Json(Mt5Linked {
        status: LinkStatus::Linked,
        mt5_account: account,
    }))
}

/// The caller's trade events in a time range (the compliance query).
///
/// The caller's `user.trades` events with a Kafka time in `[from, to)` (epoch ms; default:
/// the last 24 hours), from the audit store, oldest first (the seed's compliance query). An
/// empty range (`from` not before `to`) is answered with an empty list.
#[utoipa::path(
    get,
    path = "/api/user/{user_id}/trades",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."), TradesQuery),
    responses(
        (status = 200, description = "The caller's `user.trades` events in the range, oldest first, as stored.", body = [TradeEvent]),
        Unauthorized,
        NotYours,
        (status = 422, description = "`invalid_field`: `from` or `to` is not epoch milliseconds (0 to the end of 9999).", body = ErrorBody),
        (status = 503, description = "`unavailable`: the audit store is down.", body = ErrorBody),
    )
)]
pub async fn trades(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = own(&claims, &user_id, Need::Read)?;
    let millis = |field: &'static str| crate::input::query_millis(&params, field);
    let to = millis("to")?.unwrap_or_else(|| now_ms() + 1);
    let from = millis("from")?.unwrap_or(to.saturating_sub(86_400_000));
    if from >= to {
        // An empty range holds nothing.
        return Ok(Json(Vec::new()));
    }
    let topic = suho_domain::UserTopic::Trades.full_name(&state.topic_prefix);
    let records =
        suho_audit::user_events(state.accounts.pool(), &[topic], user_id.as_str(), from, to)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "reading the audit store");
                ApiError::Unavailable("the audit store")
            })?;
    let events: Vec<serde_json::Value> = records.into_iter().filter_map(|r| r.payload).collect();
    Ok(Json(events))
}

/// `POST /api/user/{user_id}/deposit` and `/withdraw` `{amount}`: queue a `DEPOSIT` /
/// `WITHDRAWAL` command for the caller's paper account (the engine answers on
/// `user.transactions`, or with `TRADE_REJECTED`, e.g. a withdrawal beyond the free margin).
async fn money(
    state: &AppState,
    claims: &Claims,
    user_id: &str,
    body: &Bytes,
    withdrawal: bool,
) -> Result<(axum::http::StatusCode, Json<Queued>), ApiError> {
    let user_id = own(claims, user_id, Need::Trade)?;
    let body = Body::parse(body)?;
    body.only(&["amount"])?;
    let amount = body.decimal("amount")?;
    if !suho_domain::money::is_positive_cents(amount) {
        return Err(ApiError::invalid(
            "amount",
            "must be positive, in whole cents",
        ));
    }
    if amount > rust_decimal::Decimal::from(1_000_000_000u64) {
        return Err(ApiError::invalid("amount", "must be at most 1000000000"));
    }
    let command = suho_domain::TradeCommand::money(user_id, amount, withdrawal, now_ms());
    state.producer.send(&command).await?;
    tracing::info!(user_id = %command.head.user_id, command_id = %command.head.event_id, kind = %command.command_type(), "money command queued");
    Ok(crate::trade::queued(&command.head.event_id))
}

/// Deposits money into the caller's paper account.
///
/// Queues a `DEPOSIT` command; the trading engine answers on `user.transactions`.
#[utoipa::path(
    post,
    path = "/api/user/{user_id}/deposit",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."),),
    request_body = MoneyRequest,
    responses(
        (status = 202, description = "Queued.", body = Queued),
        BodyErrors,
        Unauthorized,
        NotYours,
        (status = 422, description = "`invalid_field`: `amount` is missing, not positive, not in whole cents, or over 1000000000.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Kafka did not acknowledge the command; retry.", body = ErrorBody),
    )
)]
pub async fn deposit(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    money(&state, &claims, &user_id, &body, false).await
}

/// Withdraws money from the caller's paper account.
///
/// Queues a `WITHDRAWAL` command; the trading engine answers on `user.transactions`, or with
/// `TRADE_REJECTED` (e.g. beyond the free margin).
#[utoipa::path(
    post,
    path = "/api/user/{user_id}/withdraw",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."),),
    request_body = MoneyRequest,
    responses(
        (status = 202, description = "Queued.", body = Queued),
        BodyErrors,
        Unauthorized,
        NotYours,
        (status = 422, description = "`invalid_field`: `amount` is missing, not positive, not in whole cents, or over 1000000000.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Kafka did not acknowledge the command; retry.", body = ErrorBody),
    )
)]
pub async fn withdraw(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    money(&state, &claims, &user_id, &body, true).await
}

/// The caller's account status.
///
/// The latest `ACCOUNT_STATUS` (from the audit store), or 404 before the first one: the
/// engine sends it when it opens the account, within moments of the registration.
#[utoipa::path(
    get,
    path = "/api/user/{user_id}/account",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."),),
    responses(
        (status = 200, description = "The latest `ACCOUNT_STATUS` from `user.mt5_status`, as stored.", body = AccountStatus),
        Unauthorized,
        NotYours,
        (status = 404, description = "`not_found`: no account status yet (in the moments between the registration and the account's opening).", body = ErrorBody),
        (status = 503, description = "`unavailable`: the audit store is down.", body = ErrorBody),
    )
)]
pub async fn account(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = own(&claims, &user_id, Need::Read)?;
    let topic = suho_domain::UserTopic::Mt5Status.full_name(&state.topic_prefix);
    let latest = suho_audit::latest_event(state.accounts.pool(), &topic, user_id.as_str())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading the audit store");
            ApiError::Unavailable("the audit store")
        })?;
    match latest {
        Some(status) => Ok(Json(status)),
        None => Err(ApiError::NotFound),
    }
}
