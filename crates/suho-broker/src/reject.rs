//! Why the account refused an operation, in words a user can act on.

use rust_decimal::Decimal;
use suho_domain::{
    CommandError, CommandHead, DescribesTrade, RiskAlert, RiskAlertType, Side, Symbol, TradeEvent,
    SCHEMA_VERSION,
};

use crate::account::ApplyError;
use crate::quotes::ValuationError;

fn below_above(side: Side, stop_loss: bool) -> &'static str {
    match (side, stop_loss) {
        (Side::Buy, true) | (Side::Sell, false) => "below",
        (Side::Buy, false) | (Side::Sell, true) => "above",
    }
}

/// A permanent refusal: the command becomes `TRADE_REJECTED` with this text as `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The command lacks a field or has a non-positive number.
    #[error(transparent)]
    InvalidCommand(#[from] CommandError),
    /// The command names another user or MT5 account than the account it was given to.
    #[error("the command is for another account")]
    WrongAccount,
    /// The caller priced the trade with a tick of another symbol.
    #[error("the price given is for {got}, the trade is on {expected}")]
    WrongTick {
        /// The trade's symbol.
        expected: Symbol,
        /// The tick's symbol.
        got: Symbol,
    },
    /// The symbol is not in the account's allowed set.
    #[error("symbol {0} is not tradable on this account")]
    SymbolNotAllowed(Symbol),
    /// Volume under the minimum.
    #[error("volume {volume} is below the minimum of {min} lots")]
    VolumeBelowMin {
        /// Requested lots.
        volume: Decimal,
        /// Minimum lots.
        min: Decimal,
    },
    /// Volume over the maximum (a user limit).
    #[error("volume {volume} is above the maximum of {max} lots")]
    VolumeAboveMax {
        /// Requested lots.
        volume: Decimal,
        /// Maximum lots.
        max: Decimal,
    },
    /// Volume not a multiple of the lot step.
    #[error("volume {volume} is not a multiple of the lot step {step}")]
    VolumeOffStep {
        /// Requested lots.
        volume: Decimal,
        /// Lot step.
        step: Decimal,
    },
    /// Stop loss on the wrong side of the price (BUY: below, SELL: above).
    #[error("stop loss {stop_loss} must be {} the {side} price {price}", below_above(*.side, true))]
    StopLossWrongSide {
        /// Position side.
        side: Side,
        /// Requested stop loss.
        stop_loss: Decimal,
        /// Fill price (open) or current exit price (modify).
        price: Decimal,
    },
    /// Take profit on the wrong side of the price (BUY: above, SELL: below).
    #[error("take profit {take_profit} must be {} the {side} price {price}", below_above(*.side, false))]
    TakeProfitWrongSide {
        /// Position side.
        side: Side,
        /// Requested take profit.
        take_profit: Decimal,
        /// Fill price (open) or current exit price (modify).
        price: Decimal,
    },
    /// The open-position limit is reached (a user limit).
    #[error("{open} positions are open, the limit is {max}")]
    TooManyPositions {
        /// Positions open now.
        open: usize,
        /// The limit.
        max: usize,
    },
    /// Free margin would go negative.
    #[error("not enough free margin: {required} {currency} needed, {free} {currency} free")]
    InsufficientMargin {
        /// Margin of the new position, cents.
        required: Decimal,
        /// Free margin now, cents.
        free: Decimal,
        /// Account currency.
        currency: String,
    },
    /// A pending order's price on the wrong side of the market (it would fill at once).
    #[error(
        "a {side} {order_type} order's {field} {price} must be {relation} the {reference} {market}"
    )]
    PendingPrice {
        /// Its side.
        side: Side,
        /// Its type.
        order_type: suho_domain::OrderType,
        /// `limit_price` or `stop_price`.
        field: &'static str,
        /// The price given.
        price: Decimal,
        /// `below` or `above`.
        relation: &'static str,
        /// `ask` or `bid`.
        reference: &'static str,
        /// The market price it is checked against.
        market: Decimal,
    },
    /// A stop-limit's limit on the wrong side of its stop.
    #[error("a {side} STOP_LIMIT order's limit_price {limit} must be {} its stop_price {stop}", if *.side == Side::Buy { "at or below" } else { "at or above" })]
    StopLimitInverted {
        /// Its side.
        side: Side,
        /// The limit price.
        limit: Decimal,
        /// The stop price.
        stop: Decimal,
    },
    /// An expiry that has already passed.
    #[error("expires_at {at} has passed (now {now})")]
    ExpiryPassed {
        /// The expiry, epoch ms.
        at: i64,
        /// Now, epoch ms.
        now: i64,
    },
    /// The pending-order limit is reached.
    #[error("{open} orders are pending, the limit is {max}")]
    TooManyOrders {
        /// Pending now.
        open: usize,
        /// The limit.
        max: usize,
    },
    /// A trailing distance that would put the stop loss at or below zero.
    #[error("a trailing stop of {0} pips would put the stop loss below zero")]
    TrailingTooWide(Decimal),
    /// A partial close of more than is open.
    #[error("cannot close {volume} lots: the position is {open} lots")]
    CloseAboveVolume {
        /// Asked to close.
        volume: Decimal,
        /// Open.
        open: Decimal,
    },
    /// A one-cancels-other pair that cannot be made.
    #[error("oco_with: {0}")]
    Oco(String),
    /// A cancel or replace of an order that is not pending.
    #[error("order {0} is not pending")]
    UnknownOrder(String),
    /// The venue itself refused the command (an MT5 return code such as "market closed" or
    /// "trade disabled", in the venue's words).
    #[error("the venue refused the order: {0}")]
    Venue(String),
    /// The trade or the account cannot be valued in the account currency.
    #[error("cannot value the trade: {0}")]
    Valuation(#[from] ValuationError),
    /// No open position has this id.
    #[error("position {0} is not open")]
    UnknownPosition(String),
    /// A `CLOSE_POSITIONS` for a strategy that holds nothing on the symbol.
    #[error("strategy {strategy} has no open position on {symbol}")]
    NothingToClose {
        /// The strategy.
        strategy: String,
        /// The pair.
        symbol: Symbol,
    },
    /// A deposit or withdrawal amount that is not positive or has sub-cent digits.
    #[error("amount {0} must be positive and in whole cents")]
    InvalidAmount(Decimal),
    /// A deposit that would push the balance over [`crate::account::MAX_BALANCE`].
    #[error("deposit of {0} would take the balance over the maximum")]
    BalanceLimit(Decimal),
    /// A withdrawal larger than the free margin (in whole cents, rounded down).
    #[error("cannot withdraw {amount} {currency}: only {free} {currency} of free margin")]
    WithdrawalAboveFreeMargin {
        /// Requested amount.
        amount: Decimal,
        /// Free margin now, whole cents rounded down.
        free: Decimal,
        /// Account currency.
        currency: String,
    },
    /// An `OPEN_ACCOUNT` for an account that has already recorded events (it was opened, or
    /// has traded, before).
    #[error("the account is already open")]
    AlreadyOpen,
    /// The user sent more commands in one second than the platform executes for one user.
    #[error("rate limit: more than {0} commands in one second")]
    RateLimited(u32),
    /// The account could not record its own event (a bug; the state is unchanged).
    #[error("internal error: {0}")]
    Inconsistent(#[from] ApplyError),
}

impl RejectReason {
    /// `true` for a user risk limit (maximum volume, open-position limit): besides
    /// `TRADE_REJECTED`, publish the [`RejectReason::breach_alert`] on `user.risk_alerts`.
    #[must_use]
    pub fn is_limit_breach(&self) -> bool {
        matches!(
            self,
            RejectReason::VolumeAboveMax { .. } | RejectReason::TooManyPositions { .. }
        )
    }

    /// The `TRADE_REJECTED` event answering the command `head` of kind `what` (id
    /// `rej_{command_id}`).
    #[must_use]
    pub fn rejected_event(
        &self,
        head: &CommandHead,
        what: &impl DescribesTrade,
        now_ms: i64,
    ) -> TradeEvent {
        TradeEvent::rejected(head, what, self.to_string(), now_ms)
    }

    /// The `RISK_LIMIT_BREACH` alert for a limit breach (id `breach_{command_id}`); `None`
    /// for any other reason.
    #[must_use]
    pub fn breach_alert(&self, command: &CommandHead, now_ms: i64) -> Option<RiskAlert> {
        self.is_limit_breach().then(|| RiskAlert {
            event_id: format!("breach_{}", command.event_id),
            event_type: RiskAlertType::RiskLimitBreach,
            user_id: command.user_id.clone(),
            mt5_account: command.mt5_account.clone(),
            margin_level: None,
            message: self.to_string(),
            trade_ids: Vec::new(),
            timestamp: now_ms,
            schema_version: SCHEMA_VERSION,
        })
    }
}
