//! The broker port of the trading engine, and a simulated MT5 ("paper") broker behind it.
//!
//! The engine decides *whether* to trade; a broker executes. [`BrokerAdapter`] is the port the
//! engine calls; [`PaperBroker`] implements it with [`PaperAccount`]s: pure, deterministic MT5
//! hedging accounts with exact decimal money, margin, stop loss / take profit, margin call and
//! stop out. A real MT5 terminal adapter would implement the same trait (see its docs).
//!
//! Map:
//! - [`quotes`]: the latest ticks and currency conversion (mid of `XA` or `AX`).
//! - [`reject`]: [`RejectReason`], the permanent refusals that become `TRADE_REJECTED`.
//! - [`account`]: [`PaperAccount`], its rules and events, and [`PaperAccount::apply`] for
//!   rebuilding from them; `account::positions` (open, close, partial close, modify, stops,
//!   trailing stops), `account::orders` (the pending-order book: limits, stops, stop-limits,
//!   time in force, one-cancels-other),
//!   `account::margin` (valuation, margin call, stop-out, [`PaperAccount::on_tick`]) and
//!   `account::money` (deposits, withdrawals).
//! - [`broker`]: [`BrokerAdapter`], [`BrokerError`] and [`PaperBroker`].
//!
//! Invariants: no I/O, no clock, no randomness (time and prices are arguments, ids derive from
//! command ids); no `f64`; every state change is an event applied through
//! [`PaperAccount::apply`], so replaying the published events rebuilds the same state.

#![warn(missing_docs)]

pub mod account;
mod book;
pub mod broker;
pub mod quotes;
pub mod reject;

pub use account::{
    trade_id, AccountConfig, AccountEvent, AccountMetrics, Applied, ApplyError, ConfigError, Costs,
    Outcome, PaperAccount, PendingOrder, Position, TickOutcome, Trigger, UserLimits, MAX_BALANCE,
};
pub use broker::{
    AccountKey, ActsOn, BrokerAdapter, BrokerError, BrokerResult, PaperBroker, PaperBrokerConfig,
    Rebuilt,
};
pub use quotes::{Quotes, ValuationError};
pub use reject::RejectReason;
