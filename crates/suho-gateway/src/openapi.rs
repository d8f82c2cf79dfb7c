//! The OpenAPI 3.1 document of the HTTP API (`GET /api/openapi.json`), generated with utoipa.
//!
//! Each handler carries its own `#[utoipa::path]` (method, path, body, every status it can
//! answer), and [`crate::router`] is built from those same annotations through
//! `utoipa_axum::routes!`: a route is registered from its documentation, so the two cannot
//! drift apart. [`ApiDoc`] adds what is common: the title, the tags and the bearer scheme.
//!
//! The response types here are what the handlers serialize. The request types are
//! documentation only: the handlers read a body one field at a time (`input`), so that each
//! error names its field; these types describe exactly what that reading accepts.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use suho_domain::{Timeframe, UserId};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

/// The security scheme name the handlers' `security(...)` refers to.
pub const BEARER: &str = "bearer";

/// The document's fixed parts; [`openapi()`](crate::openapi()) adds every route's operation.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "suho HTTP API",
        description = "The HTTP API of suho, a multi-tenant trading platform: accounts, trade \
            commands (queued on Kafka and executed by the trading engine), user settings, \
            the compliance query, account status and market candles. All bodies are JSON; \
            prices, volumes and money are JSON numbers holding exact decimals (read them as \
            decimals where exactness matters); timestamps are epoch milliseconds. \
            A path's `{user_id}` must be the token's subject (else 403). Every error is \
            `{error, message}`, plus `field` when one field is at fault."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "auth", description = "Accounts and bearer tokens."),
        (name = "trading", description = "Trade commands: validated, then queued on `user.commands`; the trading engine answers on `user.trades`."),
        (name = "user", description = "The caller's own settings, MT5 links, money, account status and trade history."),
        (name = "market", description = "Shared market data; no token needed."),
        (name = "operations", description = "Health, metrics and this document."),
        (name = "stream", description = "The WebSocket `/ws`: market data of the followed symbols and the caller's own events, in one envelope."),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` JWT scheme.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The `access_token` of `POST /api/auth/login` (renewed by \
                         `POST /api/auth/refresh`), or an API key (`suho_ak_...`, from \
                         `POST /api/user/{user_id}/api-keys`), as \
                         `Authorization: Bearer <token>`. A missing, malformed, expired, \
                         forged, logged-out or revoked token is answered 401; an API key \
                         outside its scopes (`read`: the user's own `GET`s and `/ws`; `trade`: \
                         trading and money), or where a password login is needed (settings, \
                         linked accounts, keys, refresh, logout), 403.",
                    ))
                    .build(),
            ),
        );
    }
}

// ---- errors ----------------------------------------------------------------------------------

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub error: ErrorCode,
    /// What went wrong, for people. For `invalid_field` it starts with the field's name.
    pub message: String,
    /// The field at fault, as named in the request (a dotted path inside nested objects,
    /// e.g. `risk.leverage`). Only with `invalid_field`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<String>,
}

/// The answers every operation with a JSON body shares: `400` (not a JSON object) and `413`
/// (over 2 MB).
#[derive(IntoResponses)]
pub enum BodyErrors {
    /// Not a JSON object.
    #[response(
        status = 400,
        description = "`malformed_json`: the body is not a JSON object."
    )]
    Malformed(ErrorBody),
    /// Over the body limit.
    #[response(
        status = 413,
        description = "The body is over 2 MB (plain text, from the HTTP layer)."
    )]
    TooLarge,
}

/// `401` of every operation that needs a token.
#[derive(IntoResponses)]
#[response(status = 401, description = "`unauthorized`: no valid token.")]
pub struct Unauthorized(pub ErrorBody);

/// `403` of every `/api/user/{user_id}/...` operation.
#[derive(IntoResponses)]
#[response(
    status = 403,
    description = "`forbidden`: `user_id` is not the token's subject."
)]
pub struct NotYours(pub ErrorBody);

/// The `error` of an `ErrorBody`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is empty, not JSON, or not a JSON object.
    MalformedJson,
    /// 422: a field is missing or invalid (see `field`).
    InvalidField,
    /// 401: no, or a bad, token or credentials.
    Unauthorized,
    /// 403: the token may not access that user's data.
    Forbidden,
    /// 409: the resource exists already.
    Conflict,
    /// 404: no such route, or nothing there yet.
    NotFound,
    /// 426: a WebSocket route asked without a WebSocket upgrade.
    UpgradeRequired,
    /// 429: too many failed logins (see `Retry-After`).
    TooManyAttempts,
    /// 503: a dependency (Kafka, the database, the audit store) is down; try again.
    Unavailable,
    /// 500: an unexpected failure (details are only logged).
    Internal,
}

// ---- auth ------------------------------------------------------------------------------------

/// `{email, password}` of a login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "me@example.com", "password": "correct horse"}))]
pub struct Credentials {
    /// The account's e-mail address (compared case-insensitively).
    pub email: String,
    /// The account's password.
    #[schema(format = Password)]
    pub password: String,
}

/// `{email, password}` of a new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "me@example.com", "password": "correct horse"}))]
pub struct Registration {
    /// An e-mail address: a local part, `@` and a dotted domain, no white space, at most 254
    /// characters (kept as given; compared case-insensitively).
    pub email: String,
    /// 8 to 256 characters.
    #[schema(format = Password, min_length = 8, max_length = 256)]
    pub password: String,
}

/// The new account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// The user's id: the token subject and the key of every Kafka record of theirs.
    pub user_id: UserId,
    /// The address, as registered.
    pub email: String,
}

/// A bearer token for the user.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginAnswer {
    /// The JWT for `Authorization: Bearer ...`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: TokenType,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The user's id.
    pub user_id: UserId,
    /// The user's address.
    pub email: String,
}

/// A refreshed bearer token.
#[derive(Debug, Serialize, ToSchema)]
pub struct Refreshed {
    /// The new JWT for `Authorization: Bearer ...`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: TokenType,
    /// Seconds until the new token expires.
    pub expires_in: u64,
    /// The user's id.
    pub user_id: UserId,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    /// Read the user's own data (every `GET` under `/api/user/{user_id}`) and stream it on
    /// `/ws`.
    Read,
    /// Send trading commands, deposits and withdrawals.
    Trade,
}

/// `POST /api/user/{user_id}/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "my bot", "scopes": ["read", "trade"]}))]
pub struct NewKeyRequest {
    /// A label, 1 to 64 characters, no control character.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// At least one scope.
    #[schema(min_items = 1)]
    pub scopes: Vec<KeyScope>,
}

/// An API key as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    /// The key's id (`ak_` and 16 hex digits).
    #[schema(pattern = "^ak_[0-9a-f]{16}$")]
    pub key_id: String,
    /// Its label.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<KeyScope>,
    /// Made at, epoch ms.
    pub created_at: i64,
    /// Last used at (to the minute), epoch ms; `null` if never.
    pub last_used_at: Option<i64>,
}

/// A key just made.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewKey {
    /// The key as listed.
    #[serde(flatten)]
    pub info: KeyInfo,
    /// The whole key, for `Authorization: Bearer ...` (HTTP and `/ws`). Shown this once:
    /// suho keeps only its hash.
    pub key: String,
}

/// The caller's API keys that are not revoked, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// The keys.
    pub api_keys: Vec<KeyInfo>,
}

/// The kind of token.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum TokenType {
    /// An RFC 6750 bearer token.
    Bearer,
}

// ---- trading ---------------------------------------------------------------------------------

/// `OPEN_TRADE`: a market order, or a pending one (`order_type`). Unknown fields are refused.
///
/// With both stops, `stop_loss` must be below `take_profit` for a BUY and above it for a
/// SELL (a rule between two fields, which JSON Schema cannot state): else `422` on
/// `stop_loss`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "stop_loss": 1.08, "take_profit": 1.1, "client_order_id": "my-order-1"}))]
pub struct OpenTradeRequest {
    /// A pair traded here (`TradedSymbol`).
    #[schema(example = "EURUSD")]
    pub symbol: String,
    /// The side.
    #[serde(rename = "type")]
    pub side: TradeSide,
    /// Lots: positive, at most 100, a multiple of the lot step 0.01.
    #[serde(with = "suho_domain::num")]
    #[schema(example = 0.1)]
    pub volume: Decimal,
    /// A stop loss (a price: the bounds and step are in the schema); below `take_profit` for a BUY, above it for a SELL.
    #[serde(default, with = "suho_domain::num::option")]
    #[schema(example = 1.08)]
    pub stop_loss: Option<Decimal>,
    /// A take profit (a price: the bounds and step are in the schema).
    #[serde(default, with = "suho_domain::num::option")]
    #[schema(example = 1.1)]
    pub take_profit: Option<Decimal>,
    /// The caller's own id for this order, 1 to 64 characters, no control character. A
    /// repeated one is answered with the first order's `command_id`, and nothing new is
    /// queued.
    #[schema(min_length = 1, max_length = 64)]
    pub client_order_id: Option<String>,
    /// How the order enters the market (default `MARKET`). A LIMIT needs `limit_price`, a
    /// STOP `stop_price`, a STOP_LIMIT both; a pending order's price must rest on the right
    /// side of the market (a BUY LIMIT below the ask, a BUY STOP above it, and the reverse
    /// for a SELL). The engine judges these against the market: a breach is answered with
    /// `TRADE_REJECTED` and a reason naming the field.
    pub order_type: Option<suho_domain::OrderType>,
    /// The limit price (LIMIT, STOP_LIMIT; a price: the bounds and step are in the schema).
    #[serde(default, with = "suho_domain::num::option")]
    #[schema(example = 1.08)]
    pub limit_price: Option<Decimal>,
    /// The stop price (STOP, STOP_LIMIT).
    #[serde(default, with = "suho_domain::num::option")]
    #[schema(example = 1.09)]
    pub stop_price: Option<Decimal>,
    /// How long the order works: GTC (the default of a pending order), DAY (until the 17:00
    /// New York rollover), GTD (until `expires_at`); IOC or FOK (the default of a market
    /// order: filled whole at once, or rejected).
    pub time_in_force: Option<suho_domain::TimeInForce>,
    /// When a GTD order expires, epoch ms (with GTD only).
    #[schema(minimum = 0)]
    pub expires_at: Option<i64>,
    /// A trailing stop this many pips behind the price: the position's stop loss follows the
    /// price in its favour, in steps of at least a pip, never back; without a `stop_loss` it
    /// starts this far from the fill.
    #[serde(default, with = "suho_domain::num::option")]
    #[schema(
        exclusive_minimum = 0,
        maximum = 10_000,
        multiple_of = 0.1,
        example = 15.0
    )]
    pub trailing_stop_pips: Option<Decimal>,
    /// One-cancels-other: the `order_id` of one of the caller's pending orders of the same
    /// symbol, not yet paired; when either fills, the other is cancelled (a pending order
    /// only; the engine answers a pair it cannot make with `TRADE_REJECTED`).
    #[schema(min_length = 1, max_length = 128)]
    pub oco_with: Option<String>,
}

/// An order side.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum TradeSide {
    /// Buy (filled at the ask).
    Buy,
    /// Sell (filled at the bid).
    Sell,
}

/// `CLOSE_TRADE`: close one open position.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseTradeRequest {
    /// The position's id (from its `TRADE_EXECUTED`), 1 to 128 characters, no control
    /// character.
    #[schema(min_length = 1, max_length = 128)]
    pub trade_id: String,
    /// Lots to close (default: the whole position); below the position's volume, a partial
    /// close. More than is open is answered `TRADE_REJECTED`.
    #[serde(default, with = "suho_domain::num::option")]
    #[schema(example = 0.05)]
    pub volume: Option<Decimal>,
}

/// `CANCEL_ORDER`: cancel one pending order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderRequest {
    /// The order's id (from its `ORDER_PLACED`), 1 to 128 characters, no control character.
    #[schema(min_length = 1, max_length = 128)]
    pub order_id: String,
}

/// `REPLACE_ORDER`: change one pending order; what is left out keeps its value. At least one
/// field besides `order_id` is required (not `null`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceOrderRequest {
    /// The order's id, 1 to 128 characters, no control character.
    #[schema(min_length = 1, max_length = 128)]
    pub order_id: String,
    /// New volume, lots.
    #[serde(default, with = "suho_domain::num::option")]
    pub volume: Option<Decimal>,
    /// New limit price (LIMIT, STOP_LIMIT).
    #[serde(default, with = "suho_domain::num::option")]
    pub limit_price: Option<Decimal>,
    /// New stop price (STOP, STOP_LIMIT).
    #[serde(default, with = "suho_domain::num::option")]
    pub stop_price: Option<Decimal>,
    /// New stop loss of the position it will open.
    #[serde(default, with = "suho_domain::num::option")]
    pub stop_loss: Option<Decimal>,
    /// New take profit of the position it will open.
    #[serde(default, with = "suho_domain::num::option")]
    pub take_profit: Option<Decimal>,
    /// New expiry of a GTD order, epoch ms.
    #[schema(minimum = 0)]
    pub expires_at: Option<i64>,
}

/// `MODIFY_TRADE`: change a position's stops. At least one of `stop_loss` and
/// `take_profit` is required (not `null`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModifyTradeRequest {
    /// The position's id, 1 to 128 characters, no control character.
    #[schema(min_length = 1, max_length = 128)]
    pub trade_id: String,
    /// The new stop loss (a price: the bounds and step are in the schema).
    #[serde(default, with = "suho_domain::num::option")]
    pub stop_loss: Option<Decimal>,
    /// The new take profit (a price: the bounds and step are in the schema).
    #[serde(default, with = "suho_domain::num::option")]
    pub take_profit: Option<Decimal>,
}

/// `{amount}` of a deposit or withdrawal.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyRequest {
    /// Account currency: positive, whole cents, at most 1000000000.
    #[serde(with = "suho_domain::num")]
    #[schema(
        exclusive_minimum = 0,
        maximum = 1_000_000_000,
        multiple_of = 0.01,
        example = 500.0
    )]
    pub amount: Decimal,
}

/// The command is on `user.commands` (Kafka acknowledged it); its outcome follows on
/// `user.trades` (or `user.transactions`), answering `command_id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    /// Always `queued`.
    pub status: QueuedStatus,
    /// The command's `event_id`.
    pub command_id: String,
}

/// The state of a queued command.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueuedStatus {
    /// Accepted, not executed yet.
    Queued,
}

// ---- user ------------------------------------------------------------------------------------

/// A JSON merge patch (RFC 7386) onto the caller's settings: objects merge field by field,
/// anything else replaces, `null` resets a field to its default. Unknown fields are refused;
/// the result is checked as a whole and answered in full.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"risk": {"leverage": 50}, "watchlist": ["EURUSD", "GBPUSD"], "auto_trading": {"scalping": {"enabled": true, "volume": 0.1}}}))]
pub struct SettingsPatch {
    /// Risk parameters.
    pub risk: Option<RiskSettingsPatch>,
    /// At most 100 symbols traded here (`TradedSymbol`; replaces the whole list).
    #[schema(max_items = 100)]
    pub watchlist: Option<Vec<String>>,
    /// Auto-trading opt-ins by strategy name (`scalping`, `mean_reversion`,
    /// `online_logistic`); an entry set to `null` removes that opt-in.
    pub auto_trading: Option<BTreeMap<String, AutoTradingPatch>>,
}

/// The risk part of a `SettingsPatch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RiskSettingsPatch {
    /// Account leverage, 1 to 500.
    #[schema(minimum = 1, maximum = 500)]
    pub leverage: Option<u32>,
    /// Largest volume of one order, lots: positive, at most 100, on the lot step 0.01.
    #[serde(default, with = "suho_domain::num::option")]
    pub max_volume: Option<Decimal>,
    /// Most positions open at once, 1 to 200.
    #[schema(minimum = 1, maximum = 200)]
    pub max_open_positions: Option<u32>,
    /// How the account holds positions: `hedging` (the default: any number per symbol) or
    /// `netting` (one per symbol, MT5's netting mode: an order on the same side adds to it at
    /// the average price, one on the other side reduces, closes or reverses it).
    pub position_mode: Option<suho_domain::PositionMode>,
}

/// One strategy's opt-in in a `SettingsPatch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoTradingPatch {
    /// Whether the agent trades the strategy's signals for the user (default false).
    pub enabled: Option<bool>,
    /// Lots per trade (default 0.1): positive, on the lot step 0.01, at most 100. Above
    /// `risk.max_volume` (the stored one, or the patch's) it is a `409`.
    #[serde(default, with = "suho_domain::num::option")]
    pub volume: Option<Decimal>,
    /// Each auto-trade's stop loss, pips from its fill (`null`: none, the default).
    #[serde(default, with = "suho_domain::num::option")]
    #[schema(
        exclusive_minimum = 0,
        maximum = 10_000,
        multiple_of = 0.1,
        example = 20.0
    )]
    pub stop_loss_pips: Option<Decimal>,
    /// Each auto-trade's take profit, pips from its fill (`null`: none, the default).
    #[serde(default, with = "suho_domain::num::option")]
    #[schema(
        exclusive_minimum = 0,
        maximum = 10_000,
        multiple_of = 0.1,
        example = 40.0
    )]
    pub take_profit_pips: Option<Decimal>,
    /// A trailing stop on each auto-trade, this many pips behind the price (`null`: none).
    #[serde(default, with = "suho_domain::num::option")]
    #[schema(
        exclusive_minimum = 0,
        maximum = 10_000,
        multiple_of = 0.1,
        example = 15.0
    )]
    pub trailing_stop_pips: Option<Decimal>,
}

/// `{mt5_account, password}`: link (or re-link with a new password) an MT5 account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mt5LinkRequest {
    /// The account number: 1 to 32 letters, digits or dashes.
    #[schema(min_length = 1, max_length = 32, pattern = "^[A-Za-z0-9-]+$")]
    pub mt5_account: String,
    /// The MT5 password, 1 to 128 characters, no control character; stored sealed, never
    /// published.
    #[schema(format = Password, min_length = 1, max_length = 128)]
    pub password: String,
}

/// The account is linked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Mt5Linked {
    /// Always `linked`.
    pub status: LinkStatus,
    /// The account number, trimmed.
    pub mt5_account: String,
}

/// The state of an MT5 link.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkStatus {
    /// Linked.
    Linked,
}

/// Query parameters of the compliance query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TradesQuery {
    /// First Kafka record time, epoch ms, inclusive (default: 24 hours before `to`).
    pub from: Option<i64>,
    /// End, epoch ms, exclusive (default: now).
    pub to: Option<i64>,
}

// ---- queries ---------------------------------------------------------------------------------

/// The caller's open positions.
#[derive(Debug, Serialize, ToSchema)]
pub struct PositionsAnswer {
    /// Each open position, valued at `as_of`.
    pub positions: Vec<suho_domain::PositionView>,
    /// When they were valued (the latest `ACCOUNT_STATUS`), epoch ms; `null` before the first.
    pub as_of: Option<i64>,
}

/// Which orders `GET .../orders` lists.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderFilter {
    /// The pending ones.
    Open,
    /// Every order ever placed.
    All,
}

/// Query parameters of the orders query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// `open` (default) or `all`.
    #[param(inline)]
    pub status: Option<OrderFilter>,
}

/// The caller's orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrdersAnswer {
    /// The orders.
    pub orders: Vec<suho_domain::OrderView>,
}

/// Query parameters of the activities query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivitiesQuery {
    /// First Kafka record time, epoch ms, inclusive (default: the beginning).
    pub from: Option<i64>,
    /// End, epoch ms, exclusive (default: now).
    pub to: Option<i64>,
    /// Comma-separated kinds: `deal`, `deposit` (with the account's opening,
    /// `ACCOUNT_OPENED`), `withdrawal`, `swap`, `commission` (default: the first four).
    #[serde(rename = "type")]
    #[param(
        rename = "type",
        pattern = "^(deal|deposit|withdrawal|swap|commission)(,(deal|deposit|withdrawal|swap|commission))*$"
    )]
    pub kind: Option<String>,
    /// Only this pair's (`TradedSymbol`).
    pub symbol: Option<String>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of activities.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivitiesAnswer {
    /// The events, oldest first, as published.
    #[schema(value_type = Vec<Object>)]
    pub activities: Vec<serde_json::Value>,
    /// The next page's `cursor`, or `null` on the last page.
    pub next_cursor: Option<String>,
}

/// What became of a command.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommandState {
    /// Waiting for the engine.
    Queued,
    /// Carried out.
    Executed,
    /// Refused; see `reason`.
    Rejected,
}

/// A command's state and the events answering it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandAnswer {
    /// The command.
    pub command_id: String,
    /// Its state.
    pub status: CommandState,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Every event answering it, oldest first, as published.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
}

// ---- market ----------------------------------------------------------------------------------

/// The pairs traded here.
#[derive(Debug, Serialize, ToSchema)]
pub struct Symbols {
    /// The majors first, in their usual order, then any other pair by name.
    pub symbols: Vec<SymbolSpec>,
}

/// One pair, with the facts the server sizes and shows it by.
#[derive(Debug, Serialize, ToSchema)]
pub struct SymbolSpec {
    /// Canonical form, e.g. `EURUSD`.
    #[schema(example = "EURUSD")]
    pub symbol: String,
    /// Display form, e.g. `EUR/USD`.
    #[schema(example = "EUR/USD")]
    pub display: String,
    /// Base currency.
    #[schema(example = "EUR")]
    pub base: String,
    /// Quote currency (profit is made in it, then converted to the account's).
    #[schema(example = "USD")]
    pub quote: String,
    /// Decimal places of a price.
    #[schema(example = 5)]
    pub digits: u32,
    /// One pip, in price units (trailing stops and distances are counted in pips).
    #[serde(with = "suho_domain::num")]
    #[schema(example = 0.0001)]
    pub pip: Decimal,
    /// Units of the base currency in one lot.
    #[serde(with = "suho_domain::num")]
    #[schema(example = 100000.0)]
    pub contract_size: Decimal,
    /// The smallest order, lots.
    #[serde(with = "suho_domain::num")]
    #[schema(example = 0.01)]
    pub min_volume: Decimal,
    /// The largest order, lots.
    #[serde(with = "suho_domain::num")]
    #[schema(example = 100.0)]
    pub max_volume: Decimal,
    /// Every volume is a multiple of this, lots.
    #[serde(with = "suho_domain::num")]
    #[schema(example = 0.01)]
    pub volume_step: Decimal,
}

impl SymbolSpec {
    /// The facts of `symbol`, from their one home ([`suho_domain::money`], [`Symbol`]).
    ///
    /// [`Symbol`]: suho_domain::Symbol
    #[must_use]
    pub fn of(symbol: suho_domain::Symbol) -> SymbolSpec {
        use suho_domain::money::{CONTRACT_SIZE, LOT_STEP, MAX_ORDER_VOLUME};
        SymbolSpec {
            symbol: symbol.to_string(),
            display: symbol.display(),
            base: symbol.base().to_owned(),
            quote: symbol.quote().to_owned(),
            digits: symbol.digits(),
            pip: symbol.pip(),
            contract_size: CONTRACT_SIZE,
            min_volume: LOT_STEP,
            max_volume: MAX_ORDER_VOLUME,
            volume_step: LOT_STEP,
        }
    }
}

/// Query parameters of the candle history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CandlesQuery {
    /// The timeframe (default `1m`).
    #[param(inline)]
    pub tf: Option<Timeframe>,
    /// Earliest candle `start`, epoch ms, inclusive (default: `limit` periods before `to`).
    pub from: Option<i64>,
    /// Candle `start` before this, epoch ms, exclusive (default: now).
    pub to: Option<i64>,
    /// Most candles returned (default 500).
    #[param(minimum = 1, maximum = 10_000)]
    pub limit: Option<i64>,
}

// ---- operations ------------------------------------------------------------------------------

/// The gateway's health.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `gateway`.
    pub service: String,
    /// `ok`, or `degraded` when a check fails.
    pub status: HealthState,
    /// Seconds since the process started.
    pub uptime_s: u64,
    /// Each dependency's state.
    pub checks: HealthChecks,
}

/// The overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Everything answers.
    Ok,
    /// A dependency does not answer.
    Degraded,
}

/// Each dependency's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthChecks {
    /// PostgreSQL (answers `SELECT 1` within a second).
    pub database: CheckState,
}

/// One dependency's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    /// It answers.
    Ok,
    /// It does not.
    Down,
}

// ---- the served document ---------------------------------------------------------------------

/// The document as this server serves it (`GET /api/openapi.json`): [`crate::openapi()`],
/// with the rules whose home is code or configuration written into its schemas: the traded
/// symbols and strategies, the lot and price steps, the text and e-mail patterns, the time
/// bounds. A client generated from it sends only what the handlers take, and the handlers
/// take all of it (the fuzz test, `crates/suho/tests/fuzz.rs`, holds them to that).
#[must_use]
pub fn served(
    symbols: &std::collections::HashSet<suho_domain::Symbol>,
    strategies: &[String],
) -> serde_json::Value {
    use serde_json::{json, Value};
    use suho_domain::money::{LOT_STEP, MAX_ORDER_VOLUME};

    use crate::input::{MAX_MILLIS, MAX_PRICE, PRICE_STEP, PRINTABLE};

    let number = |d: Decimal| -> Value {
        serde_json::from_str(&d.normalize().to_string()).expect("a decimal is a JSON number")
    };
    let lots = json!({"exclusiveMinimum": 0, "maximum": number(MAX_ORDER_VOLUME), "multipleOf": number(LOT_STEP)});
    let price = json!({"exclusiveMinimum": 0, "maximum": number(MAX_PRICE), "multipleOf": number(PRICE_STEP)});
    let printable = json!({ "pattern": PRINTABLE });
    let traded = json!({"$ref": "#/components/schemas/TradedSymbol"});

    let mut doc = serde_json::to_value(crate::openapi()).expect("the document serializes");
    let schemas = &mut doc["components"]["schemas"];
    let mut sorted: Vec<&str> = symbols.iter().map(suho_domain::Symbol::as_str).collect();
    sorted.sort_unstable();
    schemas["TradedSymbol"] = json!({
        "type": "string",
        "description": format!(
            "A pair traded here: {}. Six letters in any case, optionally split by `/` or `-` \
             (`EURUSD`, `eur/usd`, `EUR-USD`).",
            sorted.join(", ")
        ),
        "pattern": symbol_pattern(&sorted),
        "examples": sorted.first().map(|s| vec![*s]).unwrap_or_default(),
    });
    let mut merge = |schema: &str, field: &str, extra: &Value| {
        let target = &mut schemas[schema]["properties"][field];
        assert!(target.is_object(), "no property {schema}.{field}");
        if let (Value::Object(t), Value::Object(e)) = (target, extra) {
            t.extend(e.clone());
        }
    };
    merge(
        "Registration",
        "email",
        &json!({ "pattern": suho_accounts::EMAIL_PATTERN, "maxLength": suho_accounts::MAX_EMAIL }),
    );
    merge("NewKeyRequest", "name", &printable);
    merge("Mt5LinkRequest", "password", &printable);
    merge("OpenTradeRequest", "volume", &lots);
    merge("RiskSettingsPatch", "max_volume", &lots);
    merge("AutoTradingPatch", "volume", &lots);
    merge("OpenTradeRequest", "client_order_id", &printable);
    merge("ReplaceOrderRequest", "volume", &lots);
    merge("CloseTradeRequest", "volume", &lots);
    for schema in [
        "OpenTradeRequest",
        "ModifyTradeRequest",
        "ReplaceOrderRequest",
    ] {
        merge(schema, "stop_loss", &price);
        merge(schema, "take_profit", &price);
    }
    for schema in ["OpenTradeRequest", "ReplaceOrderRequest"] {
        merge(schema, "limit_price", &price);
        merge(schema, "stop_price", &price);
        merge(schema, "expires_at", &json!({"maximum": MAX_MILLIS}));
    }
    for schema in ["CloseTradeRequest", "ModifyTradeRequest"] {
        merge(schema, "trade_id", &printable);
    }
    for schema in ["CancelOrderRequest", "ReplaceOrderRequest"] {
        merge(schema, "order_id", &printable);
    }
    merge("OpenTradeRequest", "oco_with", &printable);
    let symbol = &mut schemas["OpenTradeRequest"]["properties"]["symbol"];
    *symbol =
        json!({"$ref": "#/components/schemas/TradedSymbol", "description": symbol["description"]});
    schemas["SettingsPatch"]["properties"]["watchlist"]["items"] = traded.clone();
    // The strategies this server runs are the only keys; `null` removes an opt-in.
    let entries: serde_json::Map<String, Value> = strategies
        .iter()
        .map(|s| {
            let entry = json!({"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/AutoTradingPatch"}]});
            (s.clone(), entry)
        })
        .collect();
    let auto = &mut schemas["SettingsPatch"]["properties"]["auto_trading"];
    *auto = json!({
        "type": ["object", "null"],
        "description": auto["description"],
        "properties": entries,
        "additionalProperties": false,
    });
    // Something to change, and not `null`.
    let changes = [
        "volume",
        "limit_price",
        "stop_price",
        "stop_loss",
        "take_profit",
    ]
    .iter()
    .map(|f| json!({"required": [f], "properties": {*f: {"type": "number"}}}))
    .chain([json!({"required": ["expires_at"], "properties": {"expires_at": {"type": "integer"}}})])
    .collect::<Vec<_>>();
    schemas["ReplaceOrderRequest"]["anyOf"] = Value::Array(changes);
    // At least one stop, and not `null`.
    schemas["ModifyTradeRequest"]["anyOf"] = json!([
        {"required": ["stop_loss"], "properties": {"stop_loss": {"type": "number"}}},
        {"required": ["take_profit"], "properties": {"take_profit": {"type": "number"}}},
    ]);

    let user_id = json!({"type": "string", "pattern": "^usr_[0-9a-f]{32}$"});
    let millis = json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_MILLIS});
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
                    continue;
                };
                for p in params {
                    let schema = match (p["in"].as_str(), p["name"].as_str()) {
                        (Some("path"), Some("user_id")) => user_id.clone(),
                        (Some("path"), Some("symbol")) => traded.clone(),
                        (Some("query"), Some("from" | "to")) => millis.clone(),
                        (Some("query"), Some("symbol")) => traded.clone(),
                        (Some("query"), Some("cursor")) => json!({
                            "type": "string",
                            "pattern": "^[0-9]{1,15}:[0-9]{1,9}:[0-9]{1,18}:.+$",
                        }),
                        (Some("query"), Some("resume")) => json!({
                            "type": "string",
                            "pattern": crate::ws::protocol::Position::list_pattern(),
                        }),
                        _ => continue,
                    };
                    p["schema"] = schema;
                }
            }
        }
    }
    doc
}

/// A pattern that matches each of `symbols` in any case, optionally split by `/` or `-`, and
/// nothing else (what [`crate::input::traded_symbol`] takes).
fn symbol_pattern(symbols: &[&str]) -> String {
    let any_case = |s: &str| -> String {
        s.chars()
            .map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase()))
            .collect()
    };
    let alternatives: Vec<String> = symbols
        .iter()
        .map(|s| format!("{}[/-]?{}", any_case(&s[..3]), any_case(&s[3..])))
        .collect();
    format!("^(?:{})$", alternatives.join("|"))
}
