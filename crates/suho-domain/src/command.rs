//! Commands on `user.commands` (seed Appendix B "User Trade Command"), as types.
//!
//! A [`TradeCommand`] is a [`CommandHead`] (what every command carries: its id, its user and
//! account, its time and provenance) and a [`CommandKind`], an enum tagged by the wire's
//! `event_type`, whose variants hold exactly the fields their kind needs. A command that is
//! missing one of them does not parse, so nothing downstream checks for it again; what is
//! left to [`CommandKind::validate`] are the value rules (positive volumes and prices, whole
//! cents). The wire format is the contract's: one flat JSON object, e.g.
//! `{"event_id":"cmd_..","event_type":"OPEN_TRADE","user_id":"u1","order":{..},"timestamp":..}`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::{
    new_event_id, CommandType, OrderType, TimeInForce, TradeEvent, UserEvent, UserId,
    SCHEMA_VERSION,
};
use crate::money;
use crate::symbol::Symbol;
use crate::topic::UserTopic;

fn one() -> u32 {
    1
}

/// Where a command came from, when a strategy sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandMetadata {
    /// Strategy name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Signal id the command follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_id: Option<String>,
}

/// The order of an `OPEN_TRADE` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The pair (canonical form).
    pub symbol: Symbol,
    /// Buy or sell (`type` on the wire).
    #[serde(rename = "type")]
    pub side: crate::event::Side,
    /// Lots.
    #[serde(with = "crate::num")]
    pub volume: Decimal,
    /// Stop-loss price.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_loss: Option<Decimal>,
    /// Take-profit price.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub take_profit: Option<Decimal>,
}

/// A command whose values break a rule of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A required field is missing.
    #[error("{event_type} command is missing `{field}`")]
    Missing {
        /// Command type.
        event_type: CommandType,
        /// Field name.
        field: &'static str,
    },
    /// Volume is zero or negative.
    #[error("volume {0} must be positive")]
    NonPositiveVolume(Decimal),
    /// A deposit or withdrawal amount is not positive or has more than 2 decimals.
    #[error("amount {0} must be positive with at most 2 decimals")]
    BadAmount(Decimal),
    /// A price is zero or negative.
    #[error("`{field}` {value} must be positive")]
    NonPositivePrice {
        /// Field name.
        field: &'static str,
        /// The value.
        value: Decimal,
    },
    /// A field that does not go with the rest of the command.
    #[error("`{field}` {reason}")]
    NotAllowed {
        /// Field name.
        field: &'static str,
        /// Why, e.g. "is not allowed with a MARKET order".
        reason: String,
    },
}

/// What every command carries, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandHead {
    /// Unique id; the idempotency key.
    pub event_id: String,
    /// The user.
    pub user_id: UserId,
    /// The MT5 account to trade on; `None` is the user's default account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mt5_account: Option<String>,
    /// Epoch ms.
    pub timestamp: i64,
    /// Strategy / signal provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<CommandMetadata>,
    /// Schema version (1 when absent).
    #[serde(default = "one")]
    pub schema_version: u32,
}

impl CommandHead {
    /// A head with a fresh `cmd_` id.
    #[must_use]
    pub fn new(user_id: UserId, now_ms: i64) -> CommandHead {
        CommandHead {
            event_id: new_event_id("cmd"),
            user_id,
            mt5_account: None,
            timestamp: now_ms,
            metadata: None,
            schema_version: SCHEMA_VERSION,
        }
    }
}

/// `OPEN_TRADE`: open a position at market, or place a pending order that opens one when the
/// price comes (`order_type` and its prices and time in force sit beside `order`, so a market
/// order is the seed's command unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTrade {
    /// The order.
    pub order: Order,
    /// How it enters the market (default `MARKET`).
    #[serde(default, skip_serializing_if = "is_market")]
    pub order_type: OrderType,
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
    /// How long it works (default `GTC` for a pending order, `IOC` for a market one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_in_force: Option<TimeInForce>,
    /// When a `GTD` order expires, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// A trailing stop this many pips behind the price (the position's stop loss follows
    /// the price in the position's favour, never back).
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub trailing_stop_pips: Option<Decimal>,
    /// A stop loss this many pips from the fill price (a market order's, instead of an
    /// absolute `order.stop_loss`: the sender does not know the fill price).
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_loss_pips: Option<Decimal>,
    /// A take profit this many pips from the fill price (market orders only, instead of
    /// `order.take_profit`).
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub take_profit_pips: Option<Decimal>,
    /// One-cancels-other: the id of a pending order of the same symbol this one is paired
    /// with; when either fills, the other is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oco_with: Option<String>,
    /// The client's own id for de-duplication (claimed by the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<String>,
}

fn is_market(t: &OrderType) -> bool {
    *t == OrderType::Market
}

impl OpenTrade {
    /// A market order.
    #[must_use]
    pub fn market(order: Order, client_order_id: Option<String>) -> OpenTrade {
        OpenTrade {
            order,
            order_type: OrderType::Market,
            limit_price: None,
            stop_price: None,
            time_in_force: None,
            expires_at: None,
            trailing_stop_pips: None,
            stop_loss_pips: None,
            take_profit_pips: None,
            oco_with: None,
            client_order_id,
        }
    }

    /// The time in force, its default filled in: `GTC` for a pending order, `IOC` for a
    /// market one.
    #[must_use]
    pub fn tif(&self) -> TimeInForce {
        self.time_in_force
            .unwrap_or(if self.order_type == OrderType::Market {
                TimeInForce::Ioc
            } else {
                TimeInForce::Gtc
            })
    }
}

/// `CANCEL_ORDER`: cancel a pending order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrder {
    /// The order.
    pub order_id: String,
}

/// `REPLACE_ORDER`: change a pending order; what is absent keeps its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceOrder {
    /// The order.
    pub order_id: String,
    /// New volume, lots.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub volume: Option<Decimal>,
    /// New limit price.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub limit_price: Option<Decimal>,
    /// New stop price.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_price: Option<Decimal>,
    /// New stop loss of the position it will open.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_loss: Option<Decimal>,
    /// New take profit of the position it will open.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub take_profit: Option<Decimal>,
    /// New expiry (a `GTD` order), epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// `CLOSE_POSITIONS`: close every open position that `strategy` opened on `symbol` (each
/// answered by its own `TRADE_CLOSED`; none open is a rejection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosePositions {
    /// The pair.
    pub symbol: Symbol,
    /// The strategy whose positions close (the `metadata.strategy` of the orders that
    /// opened them).
    pub strategy: String,
}

/// `CLOSE_TRADE`: close a position, or part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseTrade {
    /// The position.
    pub trade_id: String,
    /// Lots to close; below the position's volume, a partial close (default: all of it).
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub volume: Option<Decimal>,
}

/// `MODIFY_TRADE`: change a position's stops (an absent one keeps its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModifyTrade {
    /// The position.
    pub trade_id: String,
    /// New stop loss.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_loss: Option<Decimal>,
    /// New take profit.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub take_profit: Option<Decimal>,
}

/// `DEPOSIT` / `WITHDRAWAL`: money in or out of the user's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Account currency, in whole cents.
    #[serde(with = "crate::num")]
    pub amount: Decimal,
}

/// What a command asks for: one variant per `event_type`, each with its own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type")]
pub enum CommandKind {
    /// Open a position.
    #[serde(rename = "OPEN_TRADE")]
    OpenTrade(OpenTrade),
    /// Close a position.
    #[serde(rename = "CLOSE_TRADE")]
    CloseTrade(CloseTrade),
    /// Change stop loss / take profit.
    #[serde(rename = "MODIFY_TRADE")]
    ModifyTrade(ModifyTrade),
    /// Credit the user's paper account; an extension of the contract's command types,
    /// answered on `user.transactions`.
    #[serde(rename = "DEPOSIT")]
    Deposit(Money),
    /// Debit the user's paper account (at most the free margin); answered on
    /// `user.transactions`.
    #[serde(rename = "WITHDRAWAL")]
    Withdrawal(Money),
    /// Cancel a pending order.
    #[serde(rename = "CANCEL_ORDER")]
    CancelOrder(CancelOrder),
    /// Change a pending order.
    #[serde(rename = "REPLACE_ORDER")]
    ReplaceOrder(ReplaceOrder),
    /// Close a strategy's positions on a symbol.
    #[serde(rename = "CLOSE_POSITIONS")]
    ClosePositions(ClosePositions),
    /// Open the user's paper account with its opening balance (the gateway sends it at
    /// registration); answered on `user.transactions` with `ACCOUNT_OPENED`. It has no
    /// fields of its own.
    #[serde(rename = "OPEN_ACCOUNT")]
    OpenAccount,
}

impl CommandKind {
    /// The `event_type`.
    #[must_use]
    pub fn command_type(&self) -> CommandType {
        match self {
            CommandKind::OpenTrade(_) => CommandType::OpenTrade,
            CommandKind::CloseTrade(_) => CommandType::CloseTrade,
            CommandKind::ModifyTrade(_) => CommandType::ModifyTrade,
            CommandKind::Deposit(_) => CommandType::Deposit,
            CommandKind::Withdrawal(_) => CommandType::Withdrawal,
            CommandKind::CancelOrder(_) => CommandType::CancelOrder,
            CommandKind::ReplaceOrder(_) => CommandType::ReplaceOrder,
            CommandKind::ClosePositions(_) => CommandType::ClosePositions,
            CommandKind::OpenAccount => CommandType::OpenAccount,
        }
    }

    /// The order of an `OPEN_TRADE`.
    #[must_use]
    pub fn order(&self) -> Option<&Order> {
        match self {
            CommandKind::OpenTrade(o) => Some(&o.order),
            _ => None,
        }
    }

    /// The position a close or modify names.
    #[must_use]
    pub fn trade_id(&self) -> Option<&str> {
        match self {
            CommandKind::CloseTrade(c) => Some(&c.trade_id),
            CommandKind::ModifyTrade(m) => Some(&m.trade_id),
            _ => None,
        }
    }

    /// Checks the values the kind's rules need (the fields themselves are there, or the
    /// command would not have parsed): a positive volume and stops for `OPEN_TRADE`, at least
    /// one positive stop for `MODIFY_TRADE`, a positive amount in whole cents for money.
    /// Market-dependent checks (lot step, stop side) belong to the broker.
    ///
    /// # Errors
    /// The first [`CommandError`] found.
    pub fn validate(&self) -> Result<(), CommandError> {
        match self {
            CommandKind::OpenTrade(o) => o.validate(),
            CommandKind::CloseTrade(c) => match c.volume {
                Some(v) if v <= Decimal::ZERO => Err(CommandError::NonPositiveVolume(v)),
                _ => Ok(()),
            },
            CommandKind::ModifyTrade(m) => m.validate(),
            CommandKind::Deposit(m) | CommandKind::Withdrawal(m) => m.validate(),
            CommandKind::CancelOrder(_) => Ok(()),
            CommandKind::ReplaceOrder(r) => r.validate(),
            CommandKind::ClosePositions(c) if c.strategy.trim().is_empty() => {
                Err(CommandError::Missing {
                    event_type: CommandType::ClosePositions,
                    field: "strategy",
                })
            }
            CommandKind::ClosePositions(_) | CommandKind::OpenAccount => Ok(()),
        }
    }
}

fn positive(field: &'static str, value: Option<Decimal>) -> Result<(), CommandError> {
    match value {
        Some(v) if v <= Decimal::ZERO => Err(CommandError::NonPositivePrice { field, value: v }),
        _ => Ok(()),
    }
}

impl OpenTrade {
    /// A positive volume; stops and prices, when given, positive; the prices its
    /// `order_type` needs and no other (`limit_price` for LIMIT and STOP_LIMIT, `stop_price`
    /// for STOP and STOP_LIMIT); a time in force that fits (IOC or FOK for a market order;
    /// GTC, DAY or GTD for a pending one); `expires_at` with GTD and only then.
    ///
    /// # Errors
    /// The first [`CommandError`] found.
    pub fn validate(&self) -> Result<(), CommandError> {
        let not_allowed = |field, reason: String| Err(CommandError::NotAllowed { field, reason });
        let missing = |field| {
            Err(CommandError::Missing {
                event_type: CommandType::OpenTrade,
                field,
            })
        };
        if self.order.volume <= Decimal::ZERO {
            return Err(CommandError::NonPositiveVolume(self.order.volume));
        }
        positive("stop_loss", self.order.stop_loss)?;
        positive("take_profit", self.order.take_profit)?;
        positive("limit_price", self.limit_price)?;
        positive("stop_price", self.stop_price)?;
        positive("trailing_stop_pips", self.trailing_stop_pips)?;
        positive("stop_loss_pips", self.stop_loss_pips)?;
        positive("take_profit_pips", self.take_profit_pips)?;
        let t = self.order_type;
        for (field, pips, absolute, price) in [
            (
                "stop_loss_pips",
                self.stop_loss_pips,
                self.order.stop_loss,
                "stop_loss",
            ),
            (
                "take_profit_pips",
                self.take_profit_pips,
                self.order.take_profit,
                "take_profit",
            ),
        ] {
            if pips.is_none() {
                continue;
            }
            if t != OrderType::Market {
                return not_allowed(field, format!("is for MARKET orders, not {t} ones"));
            }
            if absolute.is_some() {
                return not_allowed(field, format!("is not allowed with `order.{price}`"));
            }
        }
        let (needs_limit, needs_stop) = match t {
            OrderType::Market => (false, false),
            OrderType::Limit => (true, false),
            OrderType::Stop => (false, true),
            OrderType::StopLimit => (true, true),
        };
        for (field, needed, given) in [
            ("limit_price", needs_limit, self.limit_price.is_some()),
            ("stop_price", needs_stop, self.stop_price.is_some()),
        ] {
            match (needed, given) {
                (true, false) => return missing(field),
                (false, true) => {
                    return not_allowed(field, format!("is not allowed with a {t} order"))
                }
                _ => {}
            }
        }
        if self.oco_with.is_some() && t == OrderType::Market {
            return not_allowed(
                "oco_with",
                "is for pending orders, not MARKET ones".to_owned(),
            );
        }
        let tif = self.tif();
        let fits = match t {
            OrderType::Market => matches!(tif, TimeInForce::Ioc | TimeInForce::Fok),
            _ => matches!(tif, TimeInForce::Gtc | TimeInForce::Day | TimeInForce::Gtd),
        };
        if !fits {
            let allowed = if t == OrderType::Market {
                "IOC or FOK"
            } else {
                "GTC, DAY or GTD"
            };
            return not_allowed(
                "time_in_force",
                format!("{tif} does not fit a {t} order (use {allowed})"),
            );
        }
        match (tif, self.expires_at) {
            (TimeInForce::Gtd, None) => missing("expires_at"),
            (TimeInForce::Gtd, Some(_)) | (_, None) => Ok(()),
            (_, Some(_)) => not_allowed("expires_at", format!("is only for GTD orders, not {tif}")),
        }
    }
}

impl ReplaceOrder {
    /// Something to change; a positive volume and positive prices.
    ///
    /// # Errors
    /// The first [`CommandError`] found.
    pub fn validate(&self) -> Result<(), CommandError> {
        let r = self;
        if [
            r.volume,
            r.limit_price,
            r.stop_price,
            r.stop_loss,
            r.take_profit,
        ]
        .iter()
        .all(Option::is_none)
            && r.expires_at.is_none()
        {
            return Err(CommandError::Missing {
                event_type: CommandType::ReplaceOrder,
                field: "volume, limit_price, stop_price, stop_loss, take_profit or expires_at",
            });
        }
        if let Some(v) = r.volume.filter(|v| *v <= Decimal::ZERO) {
            return Err(CommandError::NonPositiveVolume(v));
        }
        positive("limit_price", r.limit_price)?;
        positive("stop_price", r.stop_price)?;
        positive("stop_loss", r.stop_loss)?;
        positive("take_profit", r.take_profit)
    }
}

impl ModifyTrade {
    /// At least one stop, each positive.
    ///
    /// # Errors
    /// The first [`CommandError`] found.
    pub fn validate(&self) -> Result<(), CommandError> {
        if self.stop_loss.is_none() && self.take_profit.is_none() {
            return Err(CommandError::Missing {
                event_type: CommandType::ModifyTrade,
                field: "stop_loss or take_profit",
            });
        }
        positive("stop_loss", self.stop_loss)?;
        positive("take_profit", self.take_profit)
    }
}

impl Money {
    /// A positive amount in whole cents.
    ///
    /// # Errors
    /// [`CommandError::BadAmount`].
    pub fn validate(&self) -> Result<(), CommandError> {
        if money::is_positive_cents(self.amount) {
            Ok(())
        } else {
            Err(CommandError::BadAmount(self.amount))
        }
    }
}

/// What a command's kind tells an answer to it: an order's symbol, side, volume and stops;
/// the position a close or modify names (and a modify's new stops). [`TradeEvent::for_command`]
/// copies it into the event.
pub trait DescribesTrade {
    /// Sets the fields this kind names on `event`.
    fn describe(&self, event: &mut TradeEvent);
}

impl DescribesTrade for OpenTrade {
    fn describe(&self, event: &mut TradeEvent) {
        let o = &self.order;
        event.symbol = Some(o.symbol);
        event.action = Some(o.side);
        event.volume = Some(o.volume);
        event.stop_loss = o.stop_loss;
        event.take_profit = o.take_profit;
        event.trailing_stop_pips = self.trailing_stop_pips;
        event.oco_with.clone_from(&self.oco_with);
        if self.order_type != OrderType::Market {
            event.order_type = Some(self.order_type);
            event.side = Some(o.side);
            event.limit_price = self.limit_price;
            event.stop_price = self.stop_price;
            event.time_in_force = Some(self.tif());
            event.expires_at = self.expires_at;
        }
    }
}

impl DescribesTrade for ClosePositions {
    fn describe(&self, event: &mut TradeEvent) {
        event.symbol = Some(self.symbol);
    }
}

impl DescribesTrade for CloseTrade {
    fn describe(&self, event: &mut TradeEvent) {
        event.trade_id = Some(self.trade_id.clone());
        event.volume = self.volume;
    }
}

impl DescribesTrade for ModifyTrade {
    fn describe(&self, event: &mut TradeEvent) {
        event.trade_id = Some(self.trade_id.clone());
        event.stop_loss = self.stop_loss;
        event.take_profit = self.take_profit;
    }
}

impl DescribesTrade for Money {
    fn describe(&self, _: &mut TradeEvent) {}
}

impl DescribesTrade for CancelOrder {
    fn describe(&self, event: &mut TradeEvent) {
        event.order_id = Some(self.order_id.clone());
    }
}

impl DescribesTrade for ReplaceOrder {
    fn describe(&self, event: &mut TradeEvent) {
        event.order_id = Some(self.order_id.clone());
        event.volume = self.volume;
        event.limit_price = self.limit_price;
        event.stop_price = self.stop_price;
        event.stop_loss = self.stop_loss;
        event.take_profit = self.take_profit;
        event.expires_at = self.expires_at;
    }
}

impl DescribesTrade for CommandKind {
    fn describe(&self, event: &mut TradeEvent) {
        match self {
            CommandKind::OpenTrade(o) => o.describe(event),
            CommandKind::CloseTrade(c) => c.describe(event),
            CommandKind::ModifyTrade(m) => m.describe(event),
            CommandKind::Deposit(m) | CommandKind::Withdrawal(m) => m.describe(event),
            CommandKind::CancelOrder(c) => c.describe(event),
            CommandKind::ReplaceOrder(r) => r.describe(event),
            CommandKind::ClosePositions(c) => c.describe(event),
            CommandKind::OpenAccount => {}
        }
    }
}

/// A kind that could not be read describes nothing.
impl<T: DescribesTrade> DescribesTrade for Option<T> {
    fn describe(&self, event: &mut TradeEvent) {
        if let Some(t) = self {
            t.describe(event);
        }
    }
}

/// A command on `user.commands`: its head and its kind, flat on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradeCommand {
    /// Id, user, account, time, provenance.
    #[serde(flatten)]
    pub head: CommandHead,
    /// What it asks for (`event_type` and that kind's fields).
    #[serde(flatten)]
    pub kind: CommandKind,
}

impl TradeCommand {
    /// A new command of `kind` with a fresh `cmd_` id.
    #[must_use]
    pub fn new(user_id: UserId, kind: CommandKind, now_ms: i64) -> TradeCommand {
        TradeCommand {
            head: CommandHead::new(user_id, now_ms),
            kind,
        }
    }

    /// A new `OPEN_TRADE` command with a fresh `cmd_` id.
    #[must_use]
    pub fn open(
        user_id: UserId,
        order: Order,
        client_order_id: Option<String>,
        now_ms: i64,
    ) -> TradeCommand {
        let open = OpenTrade::market(order, client_order_id);
        TradeCommand::new(user_id, CommandKind::OpenTrade(open), now_ms)
    }

    /// A new `CLOSE_TRADE` command with a fresh `cmd_` id.
    #[must_use]
    pub fn close(user_id: UserId, trade_id: impl Into<String>, now_ms: i64) -> TradeCommand {
        let close = CloseTrade {
            trade_id: trade_id.into(),
            volume: None,
        };
        TradeCommand::new(user_id, CommandKind::CloseTrade(close), now_ms)
    }

    /// A new `MODIFY_TRADE` command with a fresh `cmd_` id.
    #[must_use]
    pub fn modify(
        user_id: UserId,
        trade_id: impl Into<String>,
        stop_loss: Option<Decimal>,
        take_profit: Option<Decimal>,
        now_ms: i64,
    ) -> TradeCommand {
        let modify = ModifyTrade {
            trade_id: trade_id.into(),
            stop_loss,
            take_profit,
        };
        TradeCommand::new(user_id, CommandKind::ModifyTrade(modify), now_ms)
    }

    /// A new `DEPOSIT` (or, with `withdrawal`, `WITHDRAWAL`) command with a fresh `cmd_` id.
    #[must_use]
    pub fn money(user_id: UserId, amount: Decimal, withdrawal: bool, now_ms: i64) -> TradeCommand {
        let money = Money { amount };
        let kind = if withdrawal {
            CommandKind::Withdrawal(money)
        } else {
            CommandKind::Deposit(money)
        };
        TradeCommand::new(user_id, kind, now_ms)
    }

    /// A new `OPEN_ACCOUNT` command with a fresh `cmd_` id: open `user_id`'s paper account.
    #[must_use]
    pub fn open_account(user_id: UserId, now_ms: i64) -> TradeCommand {
        TradeCommand::new(user_id, CommandKind::OpenAccount, now_ms)
    }

    /// The `event_type`.
    #[must_use]
    pub fn command_type(&self) -> CommandType {
        self.kind.command_type()
    }

    /// As [`CommandKind::validate`].
    ///
    /// # Errors
    /// The first [`CommandError`] found.
    pub fn validate(&self) -> Result<(), CommandError> {
        self.kind.validate()
    }
}

impl UserEvent for TradeCommand {
    fn event_id(&self) -> &str {
        &self.head.event_id
    }
    fn user_id(&self) -> &UserId {
        &self.head.user_id
    }
    fn event_type_str(&self) -> &'static str {
        self.command_type().as_str()
    }
    fn timestamp(&self) -> i64 {
        self.head.timestamp
    }
    fn schema_version(&self) -> u32 {
        self.head.schema_version
    }
    fn topic(&self) -> UserTopic {
        UserTopic::Commands
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::Side;
    use serde_json::json;
    use std::str::FromStr;

    /// A decimal from its text.
    pub(crate) fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test decimal")
    }

    /// A 0.1-lot EURUSD buy.
    pub(crate) fn order() -> Order {
        Order {
            symbol: Symbol::parse("EURUSD").expect("sym"),
            side: Side::Buy,
            volume: dec("0.1"),
            stop_loss: None,
            take_profit: None,
        }
    }

    #[test]
    fn open_command_shape() {
        let cmd = TradeCommand::open(UserId::new("u1"), order(), Some("c1".into()), 10);
        assert!(cmd.head.event_id.starts_with("cmd_"));
        cmd.validate().expect("valid");
        let v = serde_json::to_value(&cmd).expect("write");
        assert_eq!(
            v,
            json!({"event_id": cmd.head.event_id, "event_type":"OPEN_TRADE","user_id":"u1",
                "order":{"symbol":"EURUSD","type":"BUY","volume":0.1},
                "client_order_id":"c1","timestamp":10,"schema_version":1})
        );
        assert_eq!(cmd.topic(), UserTopic::Commands);
        assert_eq!(cmd.event_type_str(), "OPEN_TRADE");
        let back: TradeCommand = serde_json::from_value(v).expect("read");
        assert_eq!(back, cmd);
    }

    #[test]
    fn every_kind_round_trips_flat_with_exact_decimals() {
        let cases = [
            json!({"event_id":"c1","event_type":"CLOSE_TRADE","user_id":"u","trade_id":"trd_1",
                "timestamp":1,"schema_version":1}),
            json!({"event_id":"c2","event_type":"MODIFY_TRADE","user_id":"u","mt5_account":"7",
                "trade_id":"trd_1","stop_loss":1.08515,"timestamp":1,"schema_version":1}),
            json!({"event_id":"c3","event_type":"DEPOSIT","user_id":"u","amount":1000.01,
                "timestamp":1,"schema_version":1}),
            json!({"event_id":"c4","event_type":"WITHDRAWAL","user_id":"u","amount":0.3,
                "timestamp":1,"metadata":{"strategy":"s"},"schema_version":1}),
            json!({"event_id":"c5","event_type":"CLOSE_POSITIONS","user_id":"u","symbol":"EURUSD",
                "strategy":"scalping","timestamp":1,"schema_version":1}),
            json!({"event_id":"c7","event_type":"OPEN_ACCOUNT","user_id":"u","timestamp":1,
                "schema_version":1}),
            json!({"event_id":"c6","event_type":"OPEN_TRADE","user_id":"u",
                "order":{"symbol":"EURUSD","type":"SELL","volume":0.1},"stop_loss_pips":20.0,
                "take_profit_pips":35.5,"timestamp":1,"schema_version":1}),
        ];
        for case in cases {
            let c: TradeCommand = serde_json::from_value(case.clone()).expect("read");
            assert_eq!(serde_json::to_value(&c).expect("write"), case);
        }
        let c: TradeCommand = serde_json::from_value(json!({"event_id":"c","event_type":"DEPOSIT",
            "user_id":"u","amount":0.1,"timestamp":1}))
        .expect("read");
        assert_eq!(c.kind, CommandKind::Deposit(Money { amount: dec("0.1") }));
        assert_eq!(c.head.schema_version, 1);
    }

    #[test]
    fn open_account_is_a_command_with_no_fields_of_its_own() {
        let cmd = TradeCommand::open_account(UserId::new("u1"), 10);
        assert!(cmd.head.event_id.starts_with("cmd_"));
        cmd.validate().expect("valid");
        assert_eq!(cmd.command_type(), CommandType::OpenAccount);
        assert_eq!(cmd.topic(), UserTopic::Commands);
        let v = serde_json::to_value(&cmd).expect("write");
        assert_eq!(
            v,
            json!({"event_id": cmd.head.event_id, "event_type":"OPEN_ACCOUNT","user_id":"u1",
                "timestamp":10,"schema_version":1})
        );
        let back: TradeCommand = serde_json::from_value(v).expect("read");
        assert_eq!(back, cmd);
        // Another kind's fields beside it are ignored, as for every kind.
        let with_amount: TradeCommand = serde_json::from_value(json!({"event_id":"c",
            "event_type":"OPEN_ACCOUNT","user_id":"u1","amount":5,"timestamp":1}))
        .expect("read");
        assert_eq!(with_amount.kind, CommandKind::OpenAccount);
    }

    #[test]
    fn a_kind_without_its_fields_does_not_parse() {
        for bad in [
            json!({"event_id":"c","event_type":"OPEN_TRADE","user_id":"u","timestamp":1}),
            json!({"event_id":"c","event_type":"CLOSE_TRADE","user_id":"u","timestamp":1}),
            json!({"event_id":"c","event_type":"DEPOSIT","user_id":"u","timestamp":1}),
            json!({"event_id":"c","event_type":"EXPLODE","user_id":"u","timestamp":1}),
        ] {
            let err = serde_json::from_value::<TradeCommand>(bad.clone()).expect_err("refused");
            assert!(!err.to_string().is_empty(), "{bad}");
            // The head alone still reads, so the engine can answer the user.
            serde_json::from_value::<CommandHead>(bad).expect("head");
        }
    }

    #[test]
    fn pip_exits_are_for_market_orders_without_absolute_stops() {
        let with = |f: &dyn Fn(&mut OpenTrade)| {
            let mut o = OpenTrade::market(order(), None);
            f(&mut o);
            o.validate()
        };
        with(&|o| {
            o.stop_loss_pips = Some(dec("20"));
            o.take_profit_pips = Some(dec("40"));
        })
        .expect("valid");
        let field = |r: Result<(), CommandError>| match r {
            Err(CommandError::NotAllowed { field, .. })
            | Err(CommandError::NonPositivePrice { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(with(&|o| o.stop_loss_pips = Some(dec("0")))),
            "stop_loss_pips"
        );
        assert_eq!(
            field(with(&|o| {
                o.take_profit_pips = Some(dec("5"));
                o.order.take_profit = Some(dec("2"));
            })),
            "take_profit_pips"
        );
        assert_eq!(
            field(with(&|o| {
                o.stop_loss_pips = Some(dec("5"));
                o.order_type = OrderType::Limit;
                o.limit_price = Some(dec("1"));
            })),
            "stop_loss_pips"
        );
        let blank = CommandKind::ClosePositions(ClosePositions {
            symbol: order().symbol,
            strategy: " ".into(),
        });
        assert!(matches!(
            blank.validate(),
            Err(CommandError::Missing {
                field: "strategy",
                ..
            })
        ));
    }

    #[test]
    fn value_rules() {
        let mut bad = TradeCommand::open(UserId::new("u1"), order(), None, 1);
        if let CommandKind::OpenTrade(o) = &mut bad.kind {
            o.order.volume = Decimal::ZERO;
        }
        assert!(matches!(
            bad.validate(),
            Err(CommandError::NonPositiveVolume(_))
        ));
        TradeCommand::close(UserId::new("u1"), "t1", 1)
            .validate()
            .expect("close ok");
        let m = TradeCommand::modify(UserId::new("u1"), "t1", None, None, 1);
        assert_eq!(
            m.validate().expect_err("no stop").to_string(),
            "MODIFY_TRADE command is missing `stop_loss or take_profit`"
        );
        let m = TradeCommand::modify(UserId::new("u1"), "t1", Some(dec("1.08")), None, 1);
        m.validate().expect("modify ok");
        let sub_cent = TradeCommand::money(UserId::new("u1"), dec("1.001"), true, 1);
        assert_eq!(
            sub_cent.validate(),
            Err(CommandError::BadAmount(dec("1.001")))
        );
    }
}
