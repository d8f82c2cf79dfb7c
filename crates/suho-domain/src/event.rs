//! Kafka payloads of the user / trading domain.
//!
//! Every event carries the common header `event_id` (unique and stable across retries; for a
//! command it is the idempotency key), `event_type`, `user_id`, `timestamp` (epoch ms) and
//! `schema_version` (defaults to 1 on input, always written). Each event is a plain struct with
//! an `event_type` enum field rather than an internally tagged enum, so exact decimals never
//! pass through serde's buffering. Secrets (passwords, tokens, broker credentials) have no field
//! in any event.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use crate::command::{CommandHead, CommandMetadata, DescribesTrade, Order, TradeCommand};
pub use crate::envelope::{KafkaEnvelope, NatsEnvelope};
use crate::symbol::Symbol;
use crate::topic::UserTopic;

/// The schema version this crate writes.
pub const SCHEMA_VERSION: u32 = 1;

fn one() -> u32 {
    1
}

/// A fresh unique event id: `prefix` + `_` + a UUID v4 in simple form, e.g.
/// `cmd_0f8a...`. A prefix already ending in `_` is used as is; an empty prefix gives the bare
/// UUID.
#[must_use]
pub fn new_event_id(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple();
    if prefix.is_empty() || prefix.ends_with('_') {
        format!("{prefix}{id}")
    } else {
        format!("{prefix}_{id}")
    }
}

/// A user id, the key of every Kafka record in the user domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Wraps an id.
    #[must_use]
    pub fn new(id: impl Into<String>) -> UserId {
        UserId(id.into())
    }

    /// The id text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id text, owned.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<String> for UserId {
    fn from(s: String) -> Self {
        UserId(s)
    }
}

impl From<&str> for UserId {
    fn from(s: &str) -> Self {
        UserId(s.to_owned())
    }
}

/// The header every user event shares, whatever its type.
pub trait UserEvent {
    /// Unique event id.
    fn event_id(&self) -> &str;
    /// The user the event belongs to (also the record key).
    fn user_id(&self) -> &UserId;
    /// The `event_type` wire string, e.g. `TRADE_EXECUTED`.
    fn event_type_str(&self) -> &'static str;
    /// Epoch milliseconds.
    fn timestamp(&self) -> i64;
    /// The payload's schema version.
    fn schema_version(&self) -> u32;
    /// The topic this kind of event is published on.
    fn topic(&self) -> UserTopic;
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $wire:tt),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// The wire string.
            #[must_use]
            pub const fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

macro_rules! user_event {
    ($ty:ty, $topic:expr) => {
        impl UserEvent for $ty {
            fn event_id(&self) -> &str {
                &self.event_id
            }
            fn user_id(&self) -> &UserId {
                &self.user_id
            }
            fn event_type_str(&self) -> &'static str {
                self.event_type.as_str()
            }
            fn timestamp(&self) -> i64 {
                self.timestamp
            }
            fn schema_version(&self) -> u32 {
                self.schema_version
            }
            fn topic(&self) -> UserTopic {
                $topic
            }
        }
    };
}

wire_enum! {
    /// Order side.
    Side { /// Buy.
    Buy => "BUY", /// Sell.
    Sell => "SELL" }
}

wire_enum! {
    /// `event_type` of a [`TradeCommand`].
    CommandType { /// Open a position.
    OpenTrade => "OPEN_TRADE", /// Close a position.
    CloseTrade => "CLOSE_TRADE", /// Change stop loss / take profit.
    ModifyTrade => "MODIFY_TRADE", /// Credit the user's paper account (`amount`); an
    /// extension of the contract's command types, answered on `user.transactions`.
    Deposit => "DEPOSIT", /// Debit the user's paper account (`amount`, at most the free
    /// margin); answered on `user.transactions`.
    Withdrawal => "WITHDRAWAL", /// Cancel a pending order.
    CancelOrder => "CANCEL_ORDER", /// Change a pending order.
    ReplaceOrder => "REPLACE_ORDER", /// Close every position a strategy holds on a symbol
    /// (the auto-trading agent's answer to a `FLAT` signal).
    ClosePositions => "CLOSE_POSITIONS", /// Open the user's paper account with its opening
    /// balance (sent by the gateway at registration); answered on `user.transactions` with
    /// `ACCOUNT_OPENED`.
    OpenAccount => "OPEN_ACCOUNT" }
}

wire_enum! {
    /// How an `OPEN_TRADE` enters the market.
    #[derive(Default)]
    OrderType { /// At once, at the current price.
    #[default]
    Market => "MARKET", /// Rests until the price reaches `limit_price`; fills there or
    /// better.
    Limit => "LIMIT", /// Rests until the price touches `stop_price`; then fills at market.
    Stop => "STOP", /// Rests until the price touches `stop_price`; then rests as a limit
    /// order at `limit_price`.
    StopLimit => "STOP_LIMIT" }
}

wire_enum! {
    /// How long an order stays working.
    TimeInForce { /// Until cancelled.
    Gtc => "GTC", /// Until the FX day ends, at the 17:00 New York rollover.
    Day => "DAY", /// Until `expires_at`.
    Gtd => "GTD", /// Market orders: fill what can be filled at once, cancel the rest.
    Ioc => "IOC", /// Market orders: fill all at once or nothing.
    Fok => "FOK" }
}

wire_enum! {
    /// `event_type` of a [`TradeEvent`].
    TradeEventType { /// A position was opened.
    TradeExecuted => "TRADE_EXECUTED", /// A position was closed.
    TradeClosed => "TRADE_CLOSED", /// Part of a position was closed (`volume` closed,
    /// `remaining_volume` still open, `profit` realised).
    TradePartiallyClosed => "TRADE_PARTIALLY_CLOSED", /// An open position was charged (or
    /// credited) its swap at a daily rollover (`swap`; three days' worth on Wednesday).
    SwapCharged => "SWAP_CHARGED", /// Stops were changed.
    TradeModified => "TRADE_MODIFIED", /// The command was not executed.
    TradeRejected => "TRADE_REJECTED", /// A pending order rests in the book.
    OrderPlaced => "ORDER_PLACED", /// A pending order was changed.
    OrderReplaced => "ORDER_REPLACED", /// A pending order was cancelled by its user.
    OrderCancelled => "ORDER_CANCELLED", /// A pending order's time ran out.
    OrderExpired => "ORDER_EXPIRED", /// A stop-limit order's stop was touched: it rests as a
    /// limit order now.
    OrderTriggered => "ORDER_TRIGGERED", /// A pending order could not be filled when its
    /// price came (see `reason`); it is gone.
    OrderRejected => "ORDER_REJECTED" }
}

wire_enum! {
    /// Outcome carried by a [`TradeEvent`] (of an order event: the order's state after it).
    TradeStatus { /// Done.
    Success => "SUCCESS", /// Not done; see `reason`.
    Rejected => "REJECTED", /// A pending order, working.
    Pending => "PENDING", /// A pending order that was filled.
    Filled => "FILLED", /// A pending order cancelled by its user.
    Cancelled => "CANCELLED", /// A pending order whose time ran out.
    Expired => "EXPIRED" }
}

wire_enum! {
    /// `event_type` of an [`AccountStatus`].
    AccountStatusType { /// An account snapshot.
    AccountStatus => "ACCOUNT_STATUS" }
}

wire_enum! {
    /// `event_type` of a [`RiskAlert`].
    RiskAlertType { /// Margin level fell below the call level.
    MarginCall => "MARGIN_CALL", /// Positions were closed by the broker.
    StopOut => "STOP_OUT", /// A user risk limit was breached.
    RiskLimitBreach => "RISK_LIMIT_BREACH" }
}

wire_enum! {
    /// `event_type` of a [`Transaction`].
    TransactionType { /// Money in.
    Deposit => "DEPOSIT", /// Money out.
    Withdrawal => "WITHDRAWAL", /// The account was opened (`amount` and `balance_after`: its
    /// opening balance, which it holds from its start: applying the event moves no money).
    AccountOpened => "ACCOUNT_OPENED" }
}

wire_enum! {
    /// `event_type` of an [`AuthEvent`].
    AuthEventType { /// A new account.
    UserRegistered => "USER_REGISTERED", /// A successful login.
    UserLogin => "USER_LOGIN", /// A failed login.
    UserLoginFailed => "USER_LOGIN_FAILED", /// A logout.
    UserLogout => "USER_LOGOUT" }
}

wire_enum! {
    /// `event_type` of a [`SettingsEvent`].
    SettingsEventType { /// Settings changed.
    SettingsUpdated => "SETTINGS_UPDATED", /// An MT5 account was linked.
    Mt5AccountLinked => "MT5_ACCOUNT_LINKED", /// An MT5 account was unlinked.
    Mt5AccountUnlinked => "MT5_ACCOUNT_UNLINKED" }
}

/// A trade execution result on `user.trades` (seed Appendix B "Trade Execution Result").
///
/// A rejection has `event_type: TRADE_REJECTED`, `status: REJECTED` and a human-readable
/// `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TradeEvent {
    /// Unique id.
    pub event_id: String,
    /// What happened.
    pub event_type: TradeEventType,
    /// The command this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// The user.
    pub user_id: UserId,
    /// The MT5 account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mt5_account: Option<String>,
    /// The position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_id: Option<String>,
    /// The pending order (order events, and the fill of a pending order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// How the order enters the market (order events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_type: Option<OrderType>,
    /// The order's side (order events; `action` carries it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    /// The limit price (LIMIT, STOP_LIMIT).
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub limit_price: Option<Decimal>,
    /// The stop price (STOP, STOP_LIMIT).
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_price: Option<Decimal>,
    /// How long the order works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_in_force: Option<TimeInForce>,
    /// When a GTD or DAY order expires, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The pending order this one is paired with, one-cancels-other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oco_with: Option<String>,
    /// The pair (canonical form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
    /// Buy or sell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Side>,
    /// Lots.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub volume: Option<Decimal>,
    /// What stays open after a partial close, lots.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub remaining_volume: Option<Decimal>,
    /// Opening price.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub open_price: Option<Decimal>,
    /// Fill price of this execution.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub execution_price: Option<Decimal>,
    /// Closing price.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub close_price: Option<Decimal>,
    /// Realised profit of the price move, account currency (costs are `commission` and
    /// `swap`, beside it: what the balance gains is their sum).
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub profit: Option<Decimal>,
    /// Commission of this fill, account currency, negative when charged.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub commission: Option<Decimal>,
    /// Swap: a rollover's charge (`SWAP_CHARGED`), or what a close realises of the position's
    /// accrued swap; account currency, negative when charged.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub swap: Option<Decimal>,
    /// Stop loss.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_loss: Option<Decimal>,
    /// Take profit.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub take_profit: Option<Decimal>,
    /// The trailing stop's distance, pips (a position's, or the one a pending order's
    /// position gets).
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub trailing_stop_pips: Option<Decimal>,
    /// Success or rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TradeStatus>,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Epoch ms.
    pub timestamp: i64,
    /// Command-to-result latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    /// Strategy / signal provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<CommandMetadata>,
    /// Schema version (1 when absent).
    #[serde(default = "one")]
    pub schema_version: u32,
}

impl TradeEvent {
    /// An event of `event_type` answering the command `head` whose kind is `what`, with the
    /// command's user, account and metadata, what the kind names (see [`DescribesTrade`])
    /// copied, and every result field empty.
    #[must_use]
    pub fn for_command(
        head: &CommandHead,
        what: &impl DescribesTrade,
        event_type: TradeEventType,
        event_id: String,
        now_ms: i64,
    ) -> TradeEvent {
        let mut event = TradeEvent {
            event_id,
            event_type,
            command_id: Some(head.event_id.clone()),
            user_id: head.user_id.clone(),
            mt5_account: head.mt5_account.clone(),
            trade_id: None,
            order_id: None,
            order_type: None,
            side: None,
            limit_price: None,
            stop_price: None,
            time_in_force: None,
            expires_at: None,
            oco_with: None,
            symbol: None,
            action: None,
            volume: None,
            remaining_volume: None,
            open_price: None,
            execution_price: None,
            close_price: None,
            profit: None,
            commission: None,
            swap: None,
            stop_loss: None,
            take_profit: None,
            trailing_stop_pips: None,
            status: Some(TradeStatus::Success),
            reason: None,
            timestamp: now_ms,
            latency_ms: Some(now_ms.saturating_sub(head.timestamp).max(0)),
            metadata: head.metadata.clone(),
            schema_version: SCHEMA_VERSION,
        };
        what.describe(&mut event);
        event
    }

    /// The `TRADE_REJECTED` event for the command `head` whose kind is `what` (`None` when
    /// the kind could not be read). Its `event_id` is `rej_` + the command's `event_id`, so a
    /// retried rejection of the same command has the same id.
    #[must_use]
    pub fn rejected(
        head: &CommandHead,
        what: &impl DescribesTrade,
        reason: impl Into<String>,
        now_ms: i64,
    ) -> TradeEvent {
        TradeEvent {
            status: Some(TradeStatus::Rejected),
            reason: Some(reason.into()),
            ..TradeEvent::for_command(
                head,
                what,
                TradeEventType::TradeRejected,
                format!("rej_{}", head.event_id),
                now_ms,
            )
        }
    }

    /// [`TradeEvent::rejected`] for a whole command.
    #[must_use]
    pub fn rejected_command(
        command: &TradeCommand,
        reason: impl Into<String>,
        now_ms: i64,
    ) -> TradeEvent {
        TradeEvent::rejected(&command.head, &command.kind, reason, now_ms)
    }
}

user_event!(TradeEvent, UserTopic::Trades);

/// An account snapshot on `user.mt5_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountStatus {
    /// Unique id.
    pub event_id: String,
    /// Always `ACCOUNT_STATUS`.
    pub event_type: AccountStatusType,
    /// The user.
    pub user_id: UserId,
    /// The MT5 account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mt5_account: Option<String>,
    /// Balance.
    #[serde(with = "crate::num")]
    pub balance: Decimal,
    /// Equity.
    #[serde(with = "crate::num")]
    pub equity: Decimal,
    /// Used margin.
    #[serde(with = "crate::num")]
    pub margin: Decimal,
    /// Free margin.
    #[serde(with = "crate::num")]
    pub free_margin: Decimal,
    /// Margin level in percent; `None` (`null`) with no open positions.
    #[serde(default, with = "crate::num::option")]
    pub margin_level: Option<Decimal>,
    /// Account currency, e.g. `USD`.
    pub currency: String,
    /// Number of open positions.
    pub open_positions: u32,
    /// How the account holds positions (`hedging` when absent).
    #[serde(default)]
    pub position_mode: crate::settings::PositionMode,
    /// The open positions, valued at the status's time.
    #[serde(default)]
    pub positions: Vec<PositionView>,
    /// The pending orders.
    #[serde(default)]
    pub orders: Vec<OrderView>,
    /// Epoch ms.
    pub timestamp: i64,
    /// Schema version (1 when absent).
    #[serde(default = "one")]
    pub schema_version: u32,
}

user_event!(AccountStatus, UserTopic::Mt5Status);

/// An open position as a status and the positions query show it (contract "Orders").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PositionView {
    /// The position.
    pub trade_id: String,
    /// The pair.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "EURUSD"))]
    pub symbol: Symbol,
    /// Buy or sell.
    pub side: Side,
    /// Lots.
    #[serde(with = "crate::num")]
    pub volume: Decimal,
    /// Fill price.
    #[serde(with = "crate::num")]
    pub open_price: Decimal,
    /// The price it would close at now (a BUY's bid, a SELL's ask).
    #[serde(with = "crate::num")]
    pub current_price: Decimal,
    /// Stop loss.
    #[serde(default, with = "crate::num::option")]
    pub stop_loss: Option<Decimal>,
    /// Take profit.
    #[serde(default, with = "crate::num::option")]
    pub take_profit: Option<Decimal>,
    /// Trailing stop distance, pips.
    #[serde(default, with = "crate::num::option")]
    pub trailing_stop_pips: Option<Decimal>,
    /// Floating profit of the price move at `current_price`, account currency.
    #[serde(with = "crate::num")]
    pub profit: Decimal,
    /// Swap accrued so far (negative: charged).
    #[serde(with = "crate::num")]
    pub swap: Decimal,
    /// Commission paid on opening (negative).
    #[serde(with = "crate::num")]
    pub commission: Decimal,
    /// Epoch ms.
    pub opened_at: i64,
}

/// A pending order as a status and the orders query show it (contract "Orders").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderView {
    /// The order.
    pub order_id: String,
    /// The pair.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "EURUSD"))]
    pub symbol: Symbol,
    /// LIMIT, STOP or STOP_LIMIT.
    pub order_type: OrderType,
    /// Buy or sell.
    pub side: Side,
    /// Lots.
    #[serde(with = "crate::num")]
    pub volume: Decimal,
    /// Limit price.
    #[serde(default, with = "crate::num::option")]
    pub limit_price: Option<Decimal>,
    /// Stop price.
    #[serde(default, with = "crate::num::option")]
    pub stop_price: Option<Decimal>,
    /// The stop loss its position gets.
    #[serde(default, with = "crate::num::option")]
    pub stop_loss: Option<Decimal>,
    /// The take profit its position gets.
    #[serde(default, with = "crate::num::option")]
    pub take_profit: Option<Decimal>,
    /// GTC, DAY or GTD.
    pub time_in_force: TimeInForce,
    /// When it expires, epoch ms.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// `PENDING`, `FILLED`, `CANCELLED`, `EXPIRED` or `REJECTED`.
    pub status: TradeStatus,
    /// Epoch ms.
    pub placed_at: i64,
}

/// A risk alert on `user.risk_alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskAlert {
    /// Unique id.
    pub event_id: String,
    /// Kind of alert.
    pub event_type: RiskAlertType,
    /// The user.
    pub user_id: UserId,
    /// The MT5 account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mt5_account: Option<String>,
    /// Margin level in percent when relevant.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub margin_level: Option<Decimal>,
    /// Human-readable message.
    pub message: String,
    /// Positions concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trade_ids: Vec<String>,
    /// Epoch ms.
    pub timestamp: i64,
    /// Schema version (1 when absent).
    #[serde(default = "one")]
    pub schema_version: u32,
}

user_event!(RiskAlert, UserTopic::RiskAlerts);

/// A deposit, withdrawal or account opening on `user.transactions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Unique id.
    pub event_id: String,
    /// Deposit, withdrawal or account opening.
    pub event_type: TransactionType,
    /// The user.
    pub user_id: UserId,
    /// Amount (positive; an `ACCOUNT_OPENED`'s is the opening balance, which may be 0).
    #[serde(with = "crate::num")]
    pub amount: Decimal,
    /// Currency, e.g. `USD`.
    pub currency: String,
    /// Balance after the transaction.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub balance_after: Option<Decimal>,
    /// External reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Epoch ms.
    pub timestamp: i64,
    /// Schema version (1 when absent).
    #[serde(default = "one")]
    pub schema_version: u32,
}

user_event!(Transaction, UserTopic::Transactions);

/// An authentication event on `user.auth`. Never carries a password or token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthEvent {
    /// Unique id.
    pub event_id: String,
    /// What happened.
    pub event_type: AuthEventType,
    /// The user.
    pub user_id: UserId,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Client user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Why a login failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Epoch ms.
    pub timestamp: i64,
    /// Schema version (1 when absent).
    #[serde(default = "one")]
    pub schema_version: u32,
}

user_event!(AuthEvent, UserTopic::Auth);

/// A settings change on `user.settings` (compacted: the latest per user is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsEvent {
    /// Unique id.
    pub event_id: String,
    /// What changed.
    pub event_type: SettingsEventType,
    /// The user.
    pub user_id: UserId,
    /// The full settings object after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
    /// The MT5 account linked or unlinked (never its password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mt5_account: Option<String>,
    /// Epoch ms.
    pub timestamp: i64,
    /// Schema version (1 when absent).
    #[serde(default = "one")]
    pub schema_version: u32,
}

user_event!(SettingsEvent, UserTopic::Settings);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::tests::{dec, order};
    use serde_json::json;

    #[test]
    fn event_ids() {
        let a = new_event_id("cmd");
        let b = new_event_id("cmd_");
        assert!(a.starts_with("cmd_") && a.len() == 36, "{a}");
        assert!(b.starts_with("cmd_") && !b.starts_with("cmd__"), "{b}");
        assert_ne!(a, new_event_id("cmd"));
        assert_eq!(new_event_id("").len(), 32);
    }

    #[test]
    fn rejection_is_stable_and_explained() {
        let cmd = TradeCommand::open(UserId::new("u1"), order(), None, 100);
        let r1 = TradeEvent::rejected_command(&cmd, "market closed", 150);
        let r2 = TradeEvent::rejected_command(&cmd, "market closed", 160);
        assert_eq!(r1.event_id, r2.event_id);
        assert_eq!(r1.event_type, TradeEventType::TradeRejected);
        assert_eq!(r1.status, Some(TradeStatus::Rejected));
        assert_eq!(r1.command_id.as_deref(), Some(cmd.head.event_id.as_str()));
        assert_eq!(r1.latency_ms, Some(50));
        let v = serde_json::to_value(&r1).expect("write");
        assert_eq!(v["status"], "REJECTED");
        assert_eq!(v["reason"], "market closed");
        assert_eq!(v["volume"], 0.1);
    }

    #[test]
    fn other_events_round_trip() {
        let cases = [
            json!({"event_id":"a1","event_type":"ACCOUNT_STATUS","user_id":"u","mt5_account":"1",
                "balance":10000.5,"equity":10010.25,"margin":100.0,"free_margin":9910.25,
                "margin_level":10010.25,"currency":"USD","open_positions":2,"position_mode":"hedging",
                "positions":[],"orders":[],"timestamp":1,"schema_version":1}),
            json!({"event_id":"r1","event_type":"MARGIN_CALL","user_id":"u","margin_level":80.5,
                "message":"low","trade_ids":["t1"],"timestamp":1,"schema_version":1}),
            json!({"event_id":"x1","event_type":"WITHDRAWAL","user_id":"u","amount":250.75,
                "currency":"USD","balance_after":1000.01,"timestamp":1,"schema_version":1}),
            json!({"event_id":"l1","event_type":"USER_LOGIN","user_id":"u","ip_address":"127.0.0.1",
                "user_agent":"curl","timestamp":1,"schema_version":1}),
            json!({"event_id":"s1","event_type":"SETTINGS_UPDATED","user_id":"u",
                "settings":{"watchlist":["EURUSD"]},"timestamp":1,"schema_version":1}),
        ];
        let a: AccountStatus = serde_json::from_value(cases[0].clone()).expect("account");
        assert_eq!(serde_json::to_value(&a).expect("w"), cases[0]);
        assert_eq!(a.free_margin, dec("9910.25"));
        let r: RiskAlert = serde_json::from_value(cases[1].clone()).expect("risk");
        assert_eq!(serde_json::to_value(&r).expect("w"), cases[1]);
        let t: Transaction = serde_json::from_value(cases[2].clone()).expect("tx");
        assert_eq!(serde_json::to_value(&t).expect("w"), cases[2]);
        let l: AuthEvent = serde_json::from_value(cases[3].clone()).expect("auth");
        assert_eq!(serde_json::to_value(&l).expect("w"), cases[3]);
        let s: SettingsEvent = serde_json::from_value(cases[4].clone()).expect("settings");
        assert_eq!(serde_json::to_value(&s).expect("w"), cases[4]);

        let topics: Vec<UserTopic> = vec![a.topic(), r.topic(), t.topic(), l.topic(), s.topic()];
        assert_eq!(
            topics,
            vec![
                UserTopic::Mt5Status,
                UserTopic::RiskAlerts,
                UserTopic::Transactions,
                UserTopic::Auth,
                UserTopic::Settings
            ]
        );
    }

    #[test]
    fn an_account_opening_is_a_transaction() {
        let v = json!({"event_id":"opn_cmd_1","event_type":"ACCOUNT_OPENED","user_id":"u",
            "amount":10000.0,"currency":"USD","balance_after":10000.0,"reference":"cmd_1",
            "timestamp":1,"schema_version":1});
        let t: Transaction = serde_json::from_value(v.clone()).expect("tx");
        assert_eq!(t.event_type, TransactionType::AccountOpened);
        assert_eq!(t.event_type_str(), "ACCOUNT_OPENED");
        assert_eq!(
            (t.amount, t.balance_after),
            (dec("10000"), Some(dec("10000")))
        );
        assert_eq!(t.topic(), UserTopic::Transactions);
        assert_eq!(serde_json::to_value(&t).expect("w"), v);
    }

    #[test]
    fn account_status_without_margin_level_writes_null() {
        let v = json!({"event_id":"a1","event_type":"ACCOUNT_STATUS","user_id":"u",
            "balance":1,"equity":1,"margin":0,"free_margin":1,"currency":"USD",
            "open_positions":0,"timestamp":1});
        let a: AccountStatus = serde_json::from_value(v).expect("account");
        assert_eq!(a.margin_level, None);
        assert_eq!(a.schema_version, 1);
        let out = serde_json::to_value(&a).expect("w");
        assert!(out["margin_level"].is_null());
    }
}
