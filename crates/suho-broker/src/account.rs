//! One simulated MT5 account in hedging mode, and the events that record every change to it.
//!
//! Every state change goes through [`PaperAccount::apply`]: an operation validates, builds the
//! event it will publish, then applies that same event. Rebuilding from the published events
//! therefore reproduces the state exactly. Balance moves by deltas (a close's `profit`, a
//! transaction's `amount`), so the order in which `user.trades` and `user.transactions` are
//! interleaved on replay does not matter; within `user.trades` (one partition per user) an
//! open always precedes its modify and close.
//!
//! Ids are derived, never random, so a retried command is answered with the same event:
//! position `trd_{command id without "cmd_"}` (the engine's rule), `exec_{cmd}`, `cls_{cmd}`,
//! `mod_{cmd}`, `rej_{cmd}`, `breach_{cmd}`; broker-initiated closes `sl_{trd}`, `tp_{trd}`,
//! `so_{trd}`; alerts `stopout_{first closed trd}` and `margincall_{user}_{account}_{tick ms}`;
//! transactions `dep_{request}` / `wd_{request}`; snapshots `sts_{user}_{account}_{now}`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;

use rust_decimal::{Decimal, RoundingStrategy};
use suho_domain::{
    major_fx, AccountStatus, AccountStatusType, CommandError, CommandType, RiskAlert,
    RiskAlertType, Side, Symbol, Tick, TradeCommand, TradeEvent, TradeEventType, TradeStatus,
    Transaction, TransactionType, UserId, SCHEMA_VERSION,
};

use crate::quotes::{round_money, Quotes, ValuationError, CONTRACT_SIZE};
use crate::reject::RejectReason;

#[cfg(test)]
mod tests;

/// The largest balance a deposit may create: 10^15 units of the account currency.
pub const MAX_BALANCE: Decimal = Decimal::from_parts(2_764_472_320, 232_830, 0, false, 0);

/// The rules of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    /// Account currency, three upper-case letters (default `USD`).
    pub currency: String,
    /// Leverage (default 100): margin is notional / leverage.
    pub leverage: NonZeroU32,
    /// Smallest order, lots (default 0.01).
    pub min_volume: Decimal,
    /// Largest order, lots (default 100); exceeding it is a user-limit breach.
    pub max_volume: Decimal,
    /// Lot step (default 0.01).
    pub volume_step: Decimal,
    /// Open-position limit (default 200); reaching it is a user-limit breach.
    pub max_open_positions: usize,
    /// Tradable symbols; `None` allows any (default: the fourteen majors).
    pub allowed_symbols: Option<BTreeSet<Symbol>>,
    /// Margin level, percent, at or below which a `MARGIN_CALL` is raised (default 100).
    pub margin_call_level: Decimal,
    /// Margin level, percent, at or below which positions are closed (default 50).
    pub stop_out_level: Decimal,
}

impl Default for AccountConfig {
    fn default() -> Self {
        AccountConfig {
            currency: "USD".to_owned(),
            leverage: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            min_volume: Decimal::new(1, 2),
            max_volume: Decimal::ONE_HUNDRED,
            volume_step: Decimal::new(1, 2),
            max_open_positions: 200,
            allowed_symbols: Some(major_fx().into_iter().collect()),
            margin_call_level: Decimal::ONE_HUNDRED,
            stop_out_level: Decimal::new(50, 0),
        }
    }
}

/// A user's own risk limits (from their settings), applied over [`AccountConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLimits {
    /// Account leverage.
    pub leverage: NonZeroU32,
    /// Largest order, lots.
    pub max_volume: Decimal,
    /// Open-position limit.
    pub max_open_positions: usize,
}

/// An [`AccountConfig`] (or broker config) that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The currency is not three upper-case letters.
    #[error("account currency {0:?} must be three upper-case letters")]
    Currency(String),
    /// Volumes are not `0 < min <= max` with a positive step.
    #[error(
        "volumes need 0 < min_volume <= max_volume and volume_step > 0 (got {min}, {max}, {step})"
    )]
    Volumes {
        /// `min_volume`.
        min: Decimal,
        /// `max_volume`.
        max: Decimal,
        /// `volume_step`.
        step: Decimal,
    },
    /// Levels are not `0 <= stop_out <= margin_call`.
    #[error(
        "levels need 0 <= stop_out_level <= margin_call_level (got {stop_out}, {margin_call})"
    )]
    Levels {
        /// `stop_out_level`.
        stop_out: Decimal,
        /// `margin_call_level`.
        margin_call: Decimal,
    },
    /// The initial balance is negative, has sub-cent digits or exceeds [`MAX_BALANCE`].
    #[error("initial balance {0} must be between 0 and 10^15, in whole cents")]
    InitialBalance(Decimal),
}

impl AccountConfig {
    /// Checks the rules are coherent.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = self.currency.as_bytes();
        if c.len() != 3 || !c.iter().all(u8::is_ascii_uppercase) {
            return Err(ConfigError::Currency(self.currency.clone()));
        }
        let (min, max, step) = (self.min_volume, self.max_volume, self.volume_step);
        if min <= Decimal::ZERO || max < min || step <= Decimal::ZERO {
            return Err(ConfigError::Volumes { min, max, step });
        }
        let (stop_out, margin_call) = (self.stop_out_level, self.margin_call_level);
        if stop_out < Decimal::ZERO || margin_call < stop_out {
            return Err(ConfigError::Levels {
                stop_out,
                margin_call,
            });
        }
        Ok(())
    }
}

/// One open position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Position id (`trd_...`), the `trade_id` of its events.
    pub id: String,
    /// The pair.
    pub symbol: Symbol,
    /// Buy or sell.
    pub side: Side,
    /// Lots.
    pub volume: Decimal,
    /// Fill price.
    pub open_price: Decimal,
    /// Stop loss.
    pub stop_loss: Option<Decimal>,
    /// Take profit.
    pub take_profit: Option<Decimal>,
    /// Opening time, epoch ms.
    pub open_time: i64,
    /// The `OPEN_TRADE` command that opened it.
    pub command_id: Option<String>,
}

impl Position {
    /// The price the position closes at on `tick`: the bid for a BUY, the ask for a SELL.
    #[must_use]
    pub fn exit_price(&self, tick: &Tick) -> Decimal {
        match self.side {
            Side::Buy => tick.bid,
            Side::Sell => tick.ask,
        }
    }

    /// Profit in the quote currency if closed at `price`, unrounded:
    /// `(price - open) × lots × 100,000` for a BUY, `(open - price) × ...` for a SELL.
    ///
    /// # Errors
    /// [`ValuationError::Overflow`] for absurd prices.
    pub fn quote_profit(&self, price: Decimal) -> Result<Decimal, ValuationError> {
        let diff = match self.side {
            Side::Buy => price.checked_sub(self.open_price),
            Side::Sell => self.open_price.checked_sub(price),
        };
        diff.and_then(|d| d.checked_mul(self.volume))
            .and_then(|d| d.checked_mul(CONTRACT_SIZE))
            .ok_or(ValuationError::Overflow("computing profit"))
    }

    /// Which stop `tick` triggers: BUY `bid <= SL` or `bid >= TP`; SELL `ask >= SL` or
    /// `ask <= TP`.
    fn stop_hit(&self, tick: &Tick) -> Option<CloseKind> {
        let price = self.exit_price(tick);
        let (hits_sl, hits_tp) = match self.side {
            Side::Buy => (
                self.stop_loss.is_some_and(|sl| price <= sl),
                self.take_profit.is_some_and(|tp| price >= tp),
            ),
            Side::Sell => (
                self.stop_loss.is_some_and(|sl| price >= sl),
                self.take_profit.is_some_and(|tp| price <= tp),
            ),
        };
        if hits_sl {
            Some(CloseKind::StopLoss)
        } else if hits_tp {
            Some(CloseKind::TakeProfit)
        } else {
            None
        }
    }

    fn from_event(e: &TradeEvent) -> Result<Position, ApplyError> {
        let missing = |field| ApplyError::Missing {
            event_id: e.event_id.clone(),
            field,
        };
        Ok(Position {
            id: e.trade_id.clone().ok_or_else(|| missing("trade_id"))?,
            symbol: e.symbol.ok_or_else(|| missing("symbol"))?,
            side: e.action.ok_or_else(|| missing("action"))?,
            volume: e.volume.ok_or_else(|| missing("volume"))?,
            open_price: e.open_price.ok_or_else(|| missing("open_price"))?,
            stop_loss: e.stop_loss,
            take_profit: e.take_profit,
            open_time: e.timestamp,
            command_id: e.command_id.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseKind {
    StopLoss,
    TakeProfit,
    StopOut,
}

/// An event the account emitted, as read back from Kafka for a rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // short-lived values; boxing would only add allocations
pub enum AccountEvent {
    /// From `user.trades`.
    Trade(TradeEvent),
    /// From `user.transactions`.
    Transaction(Transaction),
}

impl AccountEvent {
    /// The event's id.
    #[must_use]
    pub fn event_id(&self) -> &str {
        match self {
            AccountEvent::Trade(e) => &e.event_id,
            AccountEvent::Transaction(t) => &t.event_id,
        }
    }
}

impl From<TradeEvent> for AccountEvent {
    fn from(e: TradeEvent) -> Self {
        AccountEvent::Trade(e)
    }
}

impl From<Transaction> for AccountEvent {
    fn from(t: Transaction) -> Self {
        AccountEvent::Transaction(t)
    }
}

/// What [`PaperAccount::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed.
    Applied,
    /// This event id was applied before; nothing changed.
    Duplicate,
    /// A kind of event that carries no state (`TRADE_REJECTED`).
    Ignored,
}

/// An event that cannot be applied; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A field the event type needs is absent.
    #[error("event {event_id} lacks `{field}`")]
    Missing {
        /// The event.
        event_id: String,
        /// The field.
        field: &'static str,
    },
    /// The event names another user, MT5 account or currency.
    #[error("event {event_id} belongs to another account")]
    WrongAccount {
        /// The event.
        event_id: String,
    },
    /// A close or modify of a position that is not open.
    #[error("event {event_id} refers to position {trade_id}, which is not open")]
    UnknownPosition {
        /// The event.
        event_id: String,
        /// The position.
        trade_id: String,
    },
    /// The balance would leave `Decimal`'s range.
    #[error("event {event_id} would overflow the balance")]
    Overflow {
        /// The event.
        event_id: String,
    },
}

/// The event an operation produced. `replayed` is `true` when the command (or request) id was
/// already executed: `event` is then the original event, to publish again (same id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    /// The event to publish.
    pub event: T,
    /// A retry of an executed command: nothing changed.
    pub replayed: bool,
}

/// What a tick did: broker-initiated closes and alerts to publish, and valuation problems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickOutcome {
    /// `TRADE_CLOSED` events (stop loss, take profit, stop out), in order.
    pub closed: Vec<TradeEvent>,
    /// `MARGIN_CALL` / `STOP_OUT` alerts.
    pub alerts: Vec<RiskAlert>,
    /// Positions or checks skipped because a price or conversion rate is missing (typically
    /// right after a rebuild); they are retried on the next tick.
    pub errors: Vec<ValuationError>,
}

/// Exact account figures in the account currency (unrounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountMetrics {
    /// Balance.
    pub balance: Decimal,
    /// Balance plus floating profit (BUY valued at the bid, SELL at the ask).
    pub equity: Decimal,
    /// Sum of position margins at current rates.
    pub margin: Decimal,
    /// Equity minus margin.
    pub free_margin: Decimal,
    /// Equity / margin × 100; `None` with no positions.
    pub margin_level: Option<Decimal>,
}

fn add(a: Decimal, b: Decimal) -> Result<Decimal, ValuationError> {
    a.checked_add(b)
        .ok_or(ValuationError::Overflow("summing the account"))
}

/// The position id an `OPEN_TRADE` creates: `trd_` + its id without the `cmd_` prefix.
#[must_use]
pub fn trade_id(command: &TradeCommand) -> String {
    let id = command.event_id.as_str();
    format!("trd_{}", id.strip_prefix("cmd_").unwrap_or(id))
}

fn check_stops(
    side: Side,
    price: Decimal,
    stop_loss: Option<Decimal>,
    take_profit: Option<Decimal>,
) -> Result<(), RejectReason> {
    // A BUY's stop loss sits below the price and its take profit above; a SELL's the reverse.
    let sl_below = side == Side::Buy;
    let wrong = |level: Option<Decimal>, below: bool| {
        level.filter(|l| if below { *l >= price } else { *l <= price })
    };
    if let Some(stop_loss) = wrong(stop_loss, sl_below) {
        return Err(RejectReason::StopLossWrongSide {
            side,
            stop_loss,
            price,
        });
    }
    if let Some(take_profit) = wrong(take_profit, !sl_below) {
        return Err(RejectReason::TakeProfitWrongSide {
            side,
            take_profit,
            price,
        });
    }
    Ok(())
}

fn expect_tick(expected: Symbol, tick: &Tick) -> Result<(), RejectReason> {
    if tick.symbol == expected {
        Ok(())
    } else {
        Err(RejectReason::WrongTick {
            expected,
            got: tick.symbol,
        })
    }
}

/// A simulated MT5 account in hedging mode (several positions per symbol, each with its own
/// id). Pure and deterministic: time and prices are always passed in.
#[derive(Debug, Clone)]
pub struct PaperAccount {
    user_id: UserId,
    mt5_account: Option<String>,
    config: AccountConfig,
    balance: Decimal,
    positions: BTreeMap<String, Position>,
    quotes: Quotes,
    journal: HashMap<String, AccountEvent>,
    margin_call_armed: bool,
}

impl PaperAccount {
    /// An empty account (balance 0: money arrives by deposit).
    ///
    /// # Errors
    /// [`ConfigError`] when `config` is incoherent.
    pub fn new(
        user_id: UserId,
        mt5_account: Option<String>,
        config: AccountConfig,
    ) -> Result<PaperAccount, ConfigError> {
        config.validate()?;
        Ok(PaperAccount::with_valid_config(
            user_id,
            mt5_account,
            config,
            Decimal::ZERO,
        ))
    }

    pub(crate) fn with_valid_config(
        user_id: UserId,
        mt5_account: Option<String>,
        config: AccountConfig,
        balance: Decimal,
    ) -> PaperAccount {
        PaperAccount {
            user_id,
            mt5_account,
            config,
            balance,
            positions: BTreeMap::new(),
            quotes: Quotes::new(),
            journal: HashMap::new(),
            margin_call_armed: true,
        }
    }

    /// The user.
    #[must_use]
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// The MT5 account.
    #[must_use]
    pub fn mt5_account(&self) -> Option<&str> {
        self.mt5_account.as_deref()
    }

    /// The rules.
    #[must_use]
    pub fn config(&self) -> &AccountConfig {
        &self.config
    }

    /// Applies the user's own risk limits: leverage (margin is recomputed from it, as MT5
    /// does on a leverage change), largest order and open-position limit. They restrict
    /// commands from now on; positions already open stay open.
    pub fn set_limits(&mut self, limits: &UserLimits) {
        self.config.leverage = limits.leverage;
        self.config.max_volume = limits.max_volume;
        self.config.max_open_positions = limits.max_open_positions;
    }

    /// Balance, account currency (always whole cents).
    #[must_use]
    pub fn balance(&self) -> Decimal {
        self.balance
    }

    /// Open positions, by id.
    pub fn positions(&self) -> impl Iterator<Item = &Position> {
        self.positions.values()
    }

    /// One open position.
    #[must_use]
    pub fn position(&self, id: &str) -> Option<&Position> {
        self.positions.get(id)
    }

    /// The latest quotes seen.
    #[must_use]
    pub fn quotes(&self) -> &Quotes {
        &self.quotes
    }

    /// Ids of every event applied, in no order.
    pub fn applied_ids(&self) -> impl Iterator<Item = &str> {
        self.journal.keys().map(String::as_str)
    }

    /// Records a quote without any checks (for seeding rates, e.g. after a rebuild).
    pub fn update_quote(&mut self, tick: &Tick) -> bool {
        self.quotes.update(tick)
    }

    fn margin_of(&self, symbol: Symbol, volume: Decimal) -> Result<Decimal, ValuationError> {
        let base = volume
            .checked_mul(CONTRACT_SIZE)
            .and_then(|n| n.checked_div(Decimal::from(self.config.leverage.get())))
            .ok_or(ValuationError::Overflow("computing margin"))?;
        self.quotes
            .convert(base, symbol.base(), &self.config.currency)
    }

    fn profit_at(&self, pos: &Position, price: Decimal) -> Result<Decimal, ValuationError> {
        let raw = pos.quote_profit(price)?;
        self.quotes
            .convert(raw, pos.symbol.quote(), &self.config.currency)
    }

    fn floating(&self, pos: &Position) -> Result<(Decimal, Decimal), ValuationError> {
        let tick = self
            .quotes
            .get(pos.symbol)
            .ok_or(ValuationError::NoQuote(pos.symbol))?;
        let price = pos.exit_price(tick);
        Ok((price, self.profit_at(pos, price)?))
    }

    /// Exact balance, equity, margin, free margin and margin level at the latest quotes.
    ///
    /// # Errors
    /// [`ValuationError`] when a position's symbol or a conversion rate is not quoted.
    pub fn metrics(&self) -> Result<AccountMetrics, ValuationError> {
        let (mut equity, mut margin) = (self.balance, Decimal::ZERO);
        for pos in self.positions.values() {
            equity = add(equity, self.floating(pos)?.1)?;
            margin = add(margin, self.margin_of(pos.symbol, pos.volume)?)?;
        }
        let free_margin = equity
            .checked_sub(margin)
            .ok_or(ValuationError::Overflow("summing the account"))?;
        let margin_level = if self.positions.is_empty() || margin.is_zero() {
            None
        } else {
            let level = equity
                .checked_mul(Decimal::ONE_HUNDRED)
                .and_then(|e| e.checked_div(margin));
            Some(level.ok_or(ValuationError::Overflow("computing the margin level"))?)
        };
        Ok(AccountMetrics {
            balance: self.balance,
            equity,
            margin,
            free_margin,
            margin_level,
        })
    }

    /// The `ACCOUNT_STATUS` snapshot: money rounded to cents, margin level to 2 dp.
    ///
    /// # Errors
    /// As [`PaperAccount::metrics`].
    pub fn status(&self, now_ms: i64) -> Result<AccountStatus, ValuationError> {
        let m = self.metrics()?;
        Ok(AccountStatus {
            event_id: format!("sts_{}_{}_{now_ms}", self.user_id, self.account_tag()),
            event_type: AccountStatusType::AccountStatus,
            user_id: self.user_id.clone(),
            mt5_account: self.mt5_account.clone(),
            balance: m.balance,
            equity: round_money(m.equity),
            margin: round_money(m.margin),
            free_margin: round_money(m.free_margin),
            margin_level: m.margin_level.map(round_money),
            currency: self.config.currency.clone(),
            open_positions: u32::try_from(self.positions.len()).unwrap_or(u32::MAX),
            timestamp: now_ms,
            schema_version: SCHEMA_VERSION,
        })
    }

    fn account_tag(&self) -> &str {
        self.mt5_account.as_deref().unwrap_or("-")
    }

    /// Checks the command is of type `expected`, well formed, and addressed to this account.
    fn expect_command(
        &self,
        command: &TradeCommand,
        expected: CommandType,
    ) -> Result<(), RejectReason> {
        if command.event_type != expected {
            return Err(RejectReason::WrongCommand {
                expected,
                got: command.event_type,
            });
        }
        if command.user_id != self.user_id || command.mt5_account != self.mt5_account {
            return Err(RejectReason::WrongAccount);
        }
        command.validate().map_err(RejectReason::from)
    }

    /// The symbol a `CLOSE_TRADE` / `MODIFY_TRADE` command needs a price for: that of the
    /// event it already produced (a retried command), else that of its position; `None` for
    /// an unknown position (the command is then rejected whatever the price).
    #[must_use]
    pub fn command_symbol(&self, command: &TradeCommand) -> Option<Symbol> {
        for prefix in ["cls_", "mod_"] {
            if let Some(AccountEvent::Trade(e)) =
                self.journal.get(&format!("{prefix}{}", command.event_id))
            {
                return e.symbol;
            }
        }
        let id = command.trade_id.as_deref()?;
        self.positions.get(id).map(|p| p.symbol)
    }

    fn replay_trade(&self, event_id: &str) -> Option<Outcome<TradeEvent>> {
        match self.journal.get(event_id) {
            Some(AccountEvent::Trade(e)) => Some(Outcome {
                event: e.clone(),
                replayed: true,
            }),
            _ => None,
        }
    }

    /// A success event about `pos`, answering `command` when there is one.
    fn trade_event(
        &self,
        event_type: TradeEventType,
        event_id: String,
        command: Option<&TradeCommand>,
        pos: &Position,
        now_ms: i64,
    ) -> TradeEvent {
        TradeEvent {
            event_id,
            event_type,
            command_id: command.map(|c| c.event_id.clone()),
            user_id: self.user_id.clone(),
            mt5_account: self.mt5_account.clone(),
            trade_id: Some(pos.id.clone()),
            symbol: Some(pos.symbol),
            action: Some(pos.side),
            volume: Some(pos.volume),
            open_price: Some(pos.open_price),
            execution_price: None,
            close_price: None,
            profit: None,
            stop_loss: pos.stop_loss,
            take_profit: pos.take_profit,
            status: Some(TradeStatus::Success),
            reason: None,
            timestamp: now_ms,
            latency_ms: command.map(|c| now_ms.saturating_sub(c.timestamp).max(0)),
            metadata: command.and_then(|c| c.metadata.clone()),
            schema_version: SCHEMA_VERSION,
        }
    }

    /// Applies an event this account just built; it is complete and addressed to us, and its
    /// balance arithmetic was checked while valuing it.
    fn commit<T: Clone + Into<AccountEvent>>(&mut self, event: T) -> Result<T, RejectReason> {
        self.apply(&event.clone().into())?;
        Ok(event)
    }

    /// Opens a position for an `OPEN_TRADE` command: a BUY fills at `tick.ask`, a SELL at
    /// `tick.bid`. Checks, in order: command shape, tick symbol, allowed symbol, volume (min,
    /// max, step), stops on the right side of the fill (BUY `SL < price < TP`, SELL
    /// `TP < price < SL`), open-position limit, conversion paths, then free margin: the
    /// current free margin must cover the new position's margin.
    ///
    /// # Errors
    /// The first failed check as a [`RejectReason`].
    pub fn open(
        &mut self,
        command: &TradeCommand,
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let event_id = format!("exec_{}", command.event_id);
        if let Some(done) = self.replay_trade(&event_id) {
            return Ok(done);
        }
        self.expect_command(command, CommandType::OpenTrade)?;
        let order = command.order.as_ref().ok_or(CommandError::Missing {
            event_type: command.event_type,
            field: "order",
        })?;
        expect_tick(order.symbol, tick)?;
        self.quotes.update(tick);
        let c = &self.config;
        if c.allowed_symbols
            .as_ref()
            .is_some_and(|s| !s.contains(&order.symbol))
        {
            return Err(RejectReason::SymbolNotAllowed(order.symbol));
        }
        let volume = order.volume;
        if volume < c.min_volume {
            let min = c.min_volume;
            return Err(RejectReason::VolumeBelowMin { volume, min });
        }
        if volume > c.max_volume {
            let max = c.max_volume;
            return Err(RejectReason::VolumeAboveMax { volume, max });
        }
        if !volume
            .checked_rem(c.volume_step)
            .is_some_and(|r| r.is_zero())
        {
            let step = c.volume_step;
            return Err(RejectReason::VolumeOffStep { volume, step });
        }
        let price = match order.side {
            Side::Buy => tick.ask,
            Side::Sell => tick.bid,
        };
        check_stops(order.side, price, order.stop_loss, order.take_profit)?;
        if self.positions.len() >= c.max_open_positions {
            let (open, max) = (self.positions.len(), c.max_open_positions);
            return Err(RejectReason::TooManyPositions { open, max });
        }
        let required = self.margin_of(order.symbol, volume)?;
        self.quotes
            .convert(Decimal::ZERO, order.symbol.quote(), &self.config.currency)?;
        let free = self.metrics()?.free_margin;
        if free < required {
            return Err(RejectReason::InsufficientMargin {
                required: round_money(required),
                free: round_money(free),
                currency: self.config.currency.clone(),
            });
        }
        let pos = Position {
            id: trade_id(command),
            symbol: order.symbol,
            side: order.side,
            volume,
            open_price: price,
            stop_loss: order.stop_loss,
            take_profit: order.take_profit,
            open_time: now_ms,
            command_id: Some(command.event_id.clone()),
        };
        let mut event = self.trade_event(
            TradeEventType::TradeExecuted,
            event_id,
            Some(command),
            &pos,
            now_ms,
        );
        event.execution_price = Some(price);
        Ok(Outcome {
            event: self.commit(event)?,
            replayed: false,
        })
    }

    /// Closes the position named by a `CLOSE_TRADE` command: a BUY at `tick.bid`, a SELL at
    /// `tick.ask`. Profit is converted at the latest quotes and rounded to cents.
    ///
    /// # Errors
    /// [`RejectReason::UnknownPosition`] when it is not open (e.g. its stop loss closed it);
    /// command shape, tick symbol or valuation errors.
    pub fn close(
        &mut self,
        command: &TradeCommand,
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let event_id = format!("cls_{}", command.event_id);
        if let Some(done) = self.replay_trade(&event_id) {
            return Ok(done);
        }
        let pos = self.commanded_position(command, CommandType::CloseTrade, tick)?;
        let price = pos.exit_price(tick);
        let event = self.close_event(&pos, price, event_id, Some(command), None, now_ms)?;
        Ok(Outcome {
            event: self.commit(event)?,
            replayed: false,
        })
    }

    /// Changes the stops of the position named by a `MODIFY_TRADE` command; an absent stop
    /// keeps its value. The resulting stops must be on the right side of the position's
    /// current exit price on `tick` (BUY: `SL < bid < TP`; SELL: `TP < ask < SL`). The event
    /// carries the resulting stops.
    ///
    /// # Errors
    /// As [`PaperAccount::close`], plus the stop-side reasons.
    pub fn modify(
        &mut self,
        command: &TradeCommand,
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let event_id = format!("mod_{}", command.event_id);
        if let Some(done) = self.replay_trade(&event_id) {
            return Ok(done);
        }
        let mut pos = self.commanded_position(command, CommandType::ModifyTrade, tick)?;
        pos.stop_loss = command.stop_loss.or(pos.stop_loss);
        pos.take_profit = command.take_profit.or(pos.take_profit);
        check_stops(
            pos.side,
            pos.exit_price(tick),
            pos.stop_loss,
            pos.take_profit,
        )?;
        let event = self.trade_event(
            TradeEventType::TradeModified,
            event_id,
            Some(command),
            &pos,
            now_ms,
        );
        Ok(Outcome {
            event: self.commit(event)?,
            replayed: false,
        })
    }

    fn commanded_position(
        &mut self,
        command: &TradeCommand,
        expected: CommandType,
        tick: &Tick,
    ) -> Result<Position, RejectReason> {
        self.expect_command(command, expected)?;
        let id = command.trade_id.as_deref().unwrap_or_default();
        let pos = self
            .positions
            .get(id)
            .ok_or_else(|| RejectReason::UnknownPosition(id.to_owned()))?
            .clone();
        expect_tick(pos.symbol, tick)?;
        self.quotes.update(tick);
        Ok(pos)
    }

    fn close_event(
        &self,
        pos: &Position,
        price: Decimal,
        event_id: String,
        command: Option<&TradeCommand>,
        reason: Option<String>,
        now_ms: i64,
    ) -> Result<TradeEvent, ValuationError> {
        let profit = round_money(self.profit_at(pos, price)?);
        add(self.balance, profit)?;
        let mut event =
            self.trade_event(TradeEventType::TradeClosed, event_id, command, pos, now_ms);
        event.execution_price = Some(price);
        event.close_price = Some(price);
        event.profit = Some(profit);
        event.reason = reason;
        Ok(event)
    }

    /// Closes `pos` on the broker's initiative at `price` and applies the event.
    fn auto_close(
        &mut self,
        pos: &Position,
        price: Decimal,
        kind: CloseKind,
        detail: &str,
        now_ms: i64,
    ) -> Result<TradeEvent, ValuationError> {
        let (prefix, reason) = match kind {
            CloseKind::StopLoss => ("sl", format!("stop loss {} hit", opt(pos.stop_loss))),
            CloseKind::TakeProfit => ("tp", format!("take profit {} hit", opt(pos.take_profit))),
            CloseKind::StopOut => ("so", format!("stop out: {detail}")),
        };
        let reason = format!("{reason}; closed at {price}");
        let event_id = format!("{prefix}_{}", pos.id);
        let event = self.close_event(pos, price, event_id, None, Some(reason), now_ms)?;
        // The event is complete and ours, and the balance sum was checked above, so only an
        // overflow could refuse it; never report a close that did not happen.
        match self.apply(&AccountEvent::Trade(event.clone())) {
            Ok(_) => Ok(event),
            Err(_) => Err(ValuationError::Overflow("recording a close")),
        }
    }

    /// Records a tick, then: closes the tick symbol's positions whose stop loss or take profit
    /// it reaches (BUY: `bid <= SL` / `bid >= TP`, SELL: `ask >= SL` / `ask <= TP`), **filled
    /// at the tick's exit price, not at the stop price**, so a gap past the stop realises the
    /// gap; then checks margin on the latest quotes. At or below `margin_call_level` one
    /// `MARGIN_CALL` is raised per crossing (re-armed once the level is above it again, or no
    /// positions remain). At or below `stop_out_level` the position with the biggest floating
    /// loss is closed, the level recomputed, and so on until it is above the stop-out level or
    /// nothing is open; one `STOP_OUT` alert lists the closed trade ids. A tick older than the
    /// one held for its symbol is ignored entirely.
    pub fn on_tick(&mut self, tick: &Tick, now_ms: i64) -> TickOutcome {
        let mut out = TickOutcome::default();
        if !self.quotes.update(tick) {
            return out;
        }
        let hits: Vec<(Position, CloseKind)> = self
            .positions
            .values()
            .filter(|p| p.symbol == tick.symbol)
            .filter_map(|p| p.stop_hit(tick).map(|k| (p.clone(), k)))
            .collect();
        for (pos, kind) in hits {
            match self.auto_close(&pos, pos.exit_price(tick), kind, "", now_ms) {
                Ok(event) => out.closed.push(event),
                Err(e) => out.errors.push(e),
            }
        }
        if let Err(e) = self.check_margin(tick.timestamp, now_ms, &mut out) {
            out.errors.push(e);
        }
        out
    }

    fn check_margin(
        &mut self,
        tick_ms: i64,
        now_ms: i64,
        out: &mut TickOutcome,
    ) -> Result<(), ValuationError> {
        let call = self.config.margin_call_level;
        let Some(level) = self.metrics()?.margin_level else {
            self.margin_call_armed = true;
            return Ok(());
        };
        if level <= call && self.margin_call_armed {
            self.margin_call_armed = false;
            let message = format!(
                "margin level {}% is at or below {call}%",
                round_money(level)
            );
            let id = format!(
                "margincall_{}_{}_{tick_ms}",
                self.user_id,
                self.account_tag()
            );
            out.alerts.push(self.alert(
                RiskAlertType::MarginCall,
                id,
                level,
                message,
                vec![],
                now_ms,
            ));
        }
        let mut closed = Vec::new();
        let after = self.stop_out(level, now_ms, out, &mut closed);
        if let Some(first) = closed.first() {
            let message = format!(
                "stop out at margin level {}%: closed {}",
                round_money(level),
                closed.join(", ")
            );
            let id = format!("stopout_{first}");
            out.alerts
                .push(self.alert(RiskAlertType::StopOut, id, level, message, closed, now_ms));
        }
        if after?.is_none_or(|l| l > call) {
            self.margin_call_armed = true;
        }
        Ok(())
    }

    /// Closes the biggest loser while the level is at or below the stop-out level; the ids
    /// closed go to `closed`. Returns the final level.
    fn stop_out(
        &mut self,
        level: Decimal,
        now_ms: i64,
        out: &mut TickOutcome,
        closed: &mut Vec<String>,
    ) -> Result<Option<Decimal>, ValuationError> {
        let stop_out = self.config.stop_out_level;
        let mut current = Some(level);
        while let Some(level) = current.filter(|l| *l <= stop_out) {
            let mut worst: Option<(&Position, Decimal, Decimal)> = None;
            for pos in self.positions.values() {
                let (price, profit) = self.floating(pos)?;
                if worst.is_none_or(|w| profit < w.2) {
                    worst = Some((pos, price, profit));
                }
            }
            let Some((pos, price)) = worst.map(|(p, price, _)| (p.clone(), price)) else {
                break;
            };
            let detail = format!("margin level {}% <= {stop_out}%", round_money(level));
            out.closed
                .push(self.auto_close(&pos, price, CloseKind::StopOut, &detail, now_ms)?);
            closed.push(pos.id);
            current = self.metrics()?.margin_level;
        }
        Ok(current)
    }

    fn alert(
        &self,
        event_type: RiskAlertType,
        event_id: String,
        level: Decimal,
        message: String,
        trade_ids: Vec<String>,
        now_ms: i64,
    ) -> RiskAlert {
        RiskAlert {
            event_id,
            event_type,
            user_id: self.user_id.clone(),
            mt5_account: self.mt5_account.clone(),
            margin_level: Some(round_money(level)),
            message,
            trade_ids,
            timestamp: now_ms,
            schema_version: SCHEMA_VERSION,
        }
    }

    /// Credits `amount` (positive, whole cents). `request_id` is the idempotency key: the
    /// event id is `dep_{request_id}`, and a repeated id returns the original event.
    ///
    /// # Errors
    /// [`RejectReason::InvalidAmount`], [`RejectReason::BalanceLimit`].
    pub fn deposit(
        &mut self,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> Result<Outcome<Transaction>, RejectReason> {
        self.transact(TransactionType::Deposit, request_id, amount, now_ms)
    }

    /// Debits `amount` (positive, whole cents, at most the free margin). Event id
    /// `wd_{request_id}`; a repeated id returns the original event.
    ///
    /// # Errors
    /// [`RejectReason::InvalidAmount`], [`RejectReason::WithdrawalAboveFreeMargin`], or a
    /// valuation error when open positions cannot be valued.
    pub fn withdraw(
        &mut self,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> Result<Outcome<Transaction>, RejectReason> {
        self.transact(TransactionType::Withdrawal, request_id, amount, now_ms)
    }

    fn transact(
        &mut self,
        kind: TransactionType,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> Result<Outcome<Transaction>, RejectReason> {
        let prefix = match kind {
            TransactionType::Deposit => "dep",
            TransactionType::Withdrawal => "wd",
        };
        let event_id = format!("{prefix}_{request_id}");
        if let Some(AccountEvent::Transaction(t)) = self.journal.get(&event_id) {
            return Ok(Outcome {
                event: t.clone(),
                replayed: true,
            });
        }
        if amount <= Decimal::ZERO || amount.round_dp(2) != amount {
            return Err(RejectReason::InvalidAmount(amount));
        }
        let balance_after = match kind {
            TransactionType::Deposit => self
                .balance
                .checked_add(amount)
                .filter(|b| *b <= MAX_BALANCE)
                .ok_or(RejectReason::BalanceLimit(amount))?,
            TransactionType::Withdrawal => {
                // Whole cents of free margin, rounded down.
                let free = (self.metrics()?.free_margin)
                    .round_dp_with_strategy(2, RoundingStrategy::ToNegativeInfinity);
                if amount > free {
                    return Err(RejectReason::WithdrawalAboveFreeMargin {
                        amount,
                        free,
                        currency: self.config.currency.clone(),
                    });
                }
                self.balance - amount
            }
        };
        let event = Transaction {
            event_id,
            event_type: kind,
            user_id: self.user_id.clone(),
            amount,
            currency: self.config.currency.clone(),
            balance_after: Some(balance_after),
            reference: Some(request_id.to_owned()),
            timestamp: now_ms,
            schema_version: SCHEMA_VERSION,
        };
        Ok(Outcome {
            event: self.commit(event)?,
            replayed: false,
        })
    }

    /// Applies one event this account emitted (or its rebuild reads back): `TRADE_EXECUTED`
    /// adds the position, `TRADE_MODIFIED` sets its stops, `TRADE_CLOSED` removes it and adds
    /// its `profit` to the balance, `DEPOSIT` / `WITHDRAWAL` add / subtract `amount`.
    /// `TRADE_REJECTED` is ignored. An event id seen before is a no-op. Quotes and the
    /// margin-call arming are not events: after a rebuild, feed ticks before trading.
    ///
    /// # Errors
    /// [`ApplyError`] for an event of another account or currency, a missing field, or a
    /// close / modify of a position that is not open; the state is then unchanged.
    pub fn apply(&mut self, event: &AccountEvent) -> Result<Applied, ApplyError> {
        let event_id = event.event_id().to_owned();
        if self.journal.contains_key(&event_id) {
            return Ok(Applied::Duplicate);
        }
        let wrong = || ApplyError::WrongAccount {
            event_id: event_id.clone(),
        };
        let overflow = || ApplyError::Overflow {
            event_id: event_id.clone(),
        };
        match event {
            AccountEvent::Trade(e) => {
                if e.user_id != self.user_id || e.mt5_account != self.mt5_account {
                    return Err(wrong());
                }
                let trade_id = || {
                    e.trade_id.clone().ok_or_else(|| ApplyError::Missing {
                        event_id: event_id.clone(),
                        field: "trade_id",
                    })
                };
                let unknown = |trade_id: String| ApplyError::UnknownPosition {
                    event_id: event_id.clone(),
                    trade_id,
                };
                match e.event_type {
                    TradeEventType::TradeRejected => return Ok(Applied::Ignored),
                    TradeEventType::TradeExecuted => {
                        let pos = Position::from_event(e)?;
                        self.positions.insert(pos.id.clone(), pos);
                    }
                    TradeEventType::TradeModified => {
                        let id = trade_id()?;
                        let pos = self.positions.get_mut(&id).ok_or_else(|| unknown(id))?;
                        pos.stop_loss = e.stop_loss;
                        pos.take_profit = e.take_profit;
                    }
                    TradeEventType::TradeClosed => {
                        let id = trade_id()?;
                        let profit = e.profit.ok_or_else(|| ApplyError::Missing {
                            event_id: event_id.clone(),
                            field: "profit",
                        })?;
                        if !self.positions.contains_key(&id) {
                            return Err(unknown(id));
                        }
                        self.balance = self.balance.checked_add(profit).ok_or_else(overflow)?;
                        self.positions.remove(&id);
                    }
                }
            }
            AccountEvent::Transaction(t) => {
                if t.user_id != self.user_id || t.currency != self.config.currency {
                    return Err(wrong());
                }
                let delta = match t.event_type {
                    TransactionType::Deposit => t.amount,
                    TransactionType::Withdrawal => -t.amount,
                };
                self.balance = self.balance.checked_add(delta).ok_or_else(overflow)?;
            }
        }
        self.journal.insert(event_id, event.clone());
        Ok(Applied::Applied)
    }
}

fn opt(v: Option<Decimal>) -> String {
    v.map(|d| d.to_string()).unwrap_or_default()
}
