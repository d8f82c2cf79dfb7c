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
//! transactions `dep_{request}` / `wd_{request}`, the opening `opn_{request}`; snapshots
//! `sts_{user}_{account}_{now}`.
//!
//! Map: this module holds the account, its rules ([`AccountConfig`]), its events and
//! [`PaperAccount::apply`]; [`positions`] opens, closes and modifies positions (and closes them
//! at their stops); [`margin`] values the account and acts on margin calls and stop-outs;
//! [`money`] is deposits, withdrawals and the account's opening.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;

use rust_decimal::Decimal;
use suho_domain::money::{LOT_STEP, MAX_ORDER_VOLUME};
use suho_domain::{
    major_fx, PositionMode, RiskAlert, Symbol, Tick, TradeEvent, TradeEventType, Transaction,
    TransactionType, UserId,
};

use crate::quotes::{Quotes, ValuationError};
use crate::reject::RejectReason;

pub mod margin;
pub mod money;
pub mod orders;
pub mod positions;
#[cfg(test)]
mod tests;

pub use orders::{order_id, PendingOrder, Trigger};
pub(crate) use positions::entry_price;
pub use positions::{trade_id, Position};

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
    /// Pending-order limit (default 200).
    pub max_pending_orders: usize,
    /// Tradable symbols; `None` allows any (default: the fourteen majors).
    pub allowed_symbols: Option<BTreeSet<Symbol>>,
    /// Commission and swap rates (default none).
    pub costs: Costs,
    /// Margin level, percent, at or below which a `MARGIN_CALL` is raised (default 100).
    pub margin_call_level: Decimal,
    /// Margin level, percent, at or below which positions are closed (default 50).
    pub stop_out_level: Decimal,
    /// Hedging (default) or netting.
    pub position_mode: PositionMode,
}

impl Default for AccountConfig {
    fn default() -> Self {
        AccountConfig {
            currency: "USD".to_owned(),
            leverage: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            min_volume: LOT_STEP,
            max_volume: MAX_ORDER_VOLUME,
            volume_step: LOT_STEP,
            max_open_positions: 200,
            max_pending_orders: 200,
            allowed_symbols: Some(major_fx().into_iter().collect()),
            costs: Costs::default(),
            margin_call_level: Decimal::ONE_HUNDRED,
            stop_out_level: Decimal::new(50, 0),
            position_mode: PositionMode::Hedging,
        }
    }
}

/// What trading costs: a commission per lot on every fill (opening and closing), and a swap
/// per lot for every night a position is held, by symbol and side (three nights' worth at
/// Wednesday's rollover, none at the weekend's). Money in the account currency; a negative
/// swap rate is a charge, a positive one a credit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Costs {
    /// Commission per lot and fill (positive: charged).
    pub commission_per_lot: Decimal,
    /// Swap per lot and night: `(long, short)` by symbol; a symbol not listed has none.
    pub swaps: BTreeMap<Symbol, (Decimal, Decimal)>,
}

impl Costs {
    /// The commission of a fill of `volume` lots: negative, whole cents.
    #[must_use]
    pub fn commission(&self, volume: Decimal) -> Decimal {
        suho_domain::money::round_cents(-(volume * self.commission_per_lot))
    }

    /// One night's swap of `volume` lots of `symbol` held on `side`, unrounded.
    #[must_use]
    pub fn swap(&self, symbol: Symbol, side: suho_domain::Side, volume: Decimal) -> Decimal {
        let (long, short) = self.swaps.get(&symbol).copied().unwrap_or_default();
        volume
            * match side {
                suho_domain::Side::Buy => long,
                suho_domain::Side::Sell => short,
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
    /// Hedging or netting.
    pub position_mode: PositionMode,
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
    /// The leverage is 0.
    #[error("leverage must be positive")]
    Leverage,
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
    /// An order event about an order that is not pending.
    #[error("event {event_id} refers to order {order_id}, which is not pending")]
    UnknownOrder {
        /// The event.
        event_id: String,
        /// The order.
        order_id: String,
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
    /// Positions the command closed before its own `event` (a strategy's order closing
    /// that strategy's opposite positions, a `CLOSE_POSITIONS`'s closes but the last):
    /// `TRADE_CLOSED` events, published first, in order.
    pub closes: Vec<TradeEvent>,
    /// The event to publish.
    pub event: T,
    /// A retry of an executed command: nothing changed.
    pub replayed: bool,
}

impl<T> Outcome<T> {
    /// A new event, with no closes before it.
    #[must_use]
    pub fn done(event: T) -> Outcome<T> {
        Outcome {
            closes: Vec::new(),
            event,
            replayed: false,
        }
    }

    /// The event a retried command already produced.
    #[must_use]
    pub fn replayed(event: T) -> Outcome<T> {
        Outcome {
            closes: Vec::new(),
            event,
            replayed: true,
        }
    }
}

/// What a tick did: broker-initiated closes and alerts to publish, and valuation problems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickOutcome {
    /// Trade events, in the order they happened: pending orders expired, triggered, filled
    /// (`TRADE_EXECUTED`) or refused at the fill; positions closed at a stop loss, take
    /// profit or stop-out (`TRADE_CLOSED`).
    pub trades: Vec<TradeEvent>,
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

/// A simulated MT5 account in hedging mode (several positions per symbol, each with its own
/// id). Pure and deterministic: time and prices are always passed in.
#[derive(Debug, Clone)]
pub struct PaperAccount {
    user_id: UserId,
    mt5_account: Option<String>,
    config: AccountConfig,
    balance: Decimal,
    positions: BTreeMap<String, Position>,
    orders: BTreeMap<String, PendingOrder>,
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
            orders: BTreeMap::new(),
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
        self.config.position_mode = limits.position_mode;
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

    /// Takes the quotes of `latest` this account has not seen (see [`Quotes::catch_up`]).
    pub fn catch_up_quotes(&mut self, latest: &Quotes) {
        self.quotes.catch_up(latest);
    }

    fn account_tag(&self) -> &str {
        self.mt5_account.as_deref().unwrap_or("-")
    }

    fn replay_trade(&self, event_id: &str) -> Option<Outcome<TradeEvent>> {
        match self.journal.get(event_id) {
            Some(AccountEvent::Trade(e)) => Some(Outcome::replayed(e.clone())),
            _ => None,
        }
    }

    /// Takes the pending order a deal filled (`order_id` on its event) out of the book.
    fn leave_book(&mut self, e: &TradeEvent) -> Result<(), ApplyError> {
        if let Some(order) = &e.order_id {
            self.orders
                .remove(order)
                .ok_or_else(|| ApplyError::UnknownOrder {
                    event_id: e.event_id.clone(),
                    order_id: order.clone(),
                })?;
        }
        Ok(())
    }

    /// Applies an event this account just built; it is complete and addressed to us, and its
    /// balance arithmetic was checked while valuing it.
    fn commit<T: Clone + Into<AccountEvent>>(&mut self, event: T) -> Result<T, RejectReason> {
        self.apply(&event.clone().into())?;
        Ok(event)
    }

    /// Applies one event this account emitted (or its rebuild reads back): `TRADE_EXECUTED`
    /// adds the position, `TRADE_MODIFIED` sets its stops, `TRADE_CLOSED` removes it and adds
    /// its `profit` to the balance, `DEPOSIT` / `WITHDRAWAL` add / subtract `amount`,
    /// `ACCOUNT_OPENED` moves nothing (the opening balance is the account's from its start).
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
                        let cost = e.commission.unwrap_or_default();
                        let balance = self.balance.checked_add(cost).ok_or_else(overflow)?;
                        let merged = match e.trade_id.as_ref().and_then(|id| self.positions.get(id))
                        {
                            // A netting deal that adds to the open position: its new volume
                            // and average price.
                            Some(open) => Some(open.merged(e)?),
                            None => None,
                        };
                        let pos = match merged {
                            Some(pos) => pos,
                            None => Position::from_event(e)?,
                        };
                        self.leave_book(e)?;
                        self.balance = balance;
                        self.positions.insert(pos.id.clone(), pos);
                    }
                    TradeEventType::OrderPlaced
                    | TradeEventType::OrderReplaced
                    | TradeEventType::OrderCancelled
                    | TradeEventType::OrderExpired
                    | TradeEventType::OrderTriggered
                    | TradeEventType::OrderRejected => self.apply_order(e)?,
                    TradeEventType::TradeModified => {
                        let id = trade_id()?;
                        let pos = self.positions.get_mut(&id).ok_or_else(|| unknown(id))?;
                        pos.stop_loss = e.stop_loss;
                        pos.take_profit = e.take_profit;
                        pos.trailing_stop_pips = e.trailing_stop_pips;
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
                        let net =
                            profit + e.commission.unwrap_or_default() + e.swap.unwrap_or_default();
                        let balance = self.balance.checked_add(net).ok_or_else(overflow)?;
                        self.leave_book(e)?;
                        self.balance = balance;
                        self.positions.remove(&id);
                    }
                    TradeEventType::TradePartiallyClosed => {
                        let id = trade_id()?;
                        let missing = |field| ApplyError::Missing {
                            event_id: event_id.clone(),
                            field,
                        };
                        let profit = e.profit.ok_or_else(|| missing("profit"))?;
                        let remaining = e
                            .remaining_volume
                            .ok_or_else(|| missing("remaining_volume"))?;
                        let swap = e.swap.unwrap_or_default();
                        let net = profit + e.commission.unwrap_or_default() + swap;
                        let balance = self.balance.checked_add(net).ok_or_else(overflow)?;
                        if !self.positions.contains_key(&id) {
                            return Err(unknown(id));
                        }
                        self.leave_book(e)?;
                        let pos = self.positions.get_mut(&id).ok_or_else(|| unknown(id))?;
                        pos.volume = remaining;
                        pos.swap -= swap;
                        self.balance = balance;
                    }
                    TradeEventType::SwapCharged => {
                        let id = trade_id()?;
                        let swap = e.swap.ok_or_else(|| ApplyError::Missing {
                            event_id: event_id.clone(),
                            field: "swap",
                        })?;
                        let pos = self.positions.get_mut(&id).ok_or_else(|| unknown(id))?;
                        pos.swap += swap;
                        pos.swap_through = pos.swap_through.max(e.timestamp);
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
                    // The account holds its opening balance from its start: the event only
                    // records (in the journal) that it was opened.
                    TransactionType::AccountOpened => Decimal::ZERO,
                };
                self.balance = self.balance.checked_add(delta).ok_or_else(overflow)?;
            }
        }
        self.journal.insert(event_id, event.clone());
        Ok(Applied::Applied)
    }
}
