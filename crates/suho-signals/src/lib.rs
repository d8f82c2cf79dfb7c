//! Trading signals and market alerts on NATS.
//!
//! Closed candles of one timeframe (`market.{SYM}.1m` by default) drive per-symbol
//! [`Strategy`] instances whose decisions go out as [`suho_domain::Signal`]s on
//! `signals.{strategy}.{SYM}`; ticks and closed candles drive the [`MarketAlerts`] detectors
//! whose alerts go out on `alerts.market.{type}` (`spike`, `gap`, `breakout`).
//!
//! Map:
//! - [`strategy`]: the [`Strategy`] trait, [`Decision`], and how a decision becomes a
//!   reproducible [`suho_domain::Signal`] (deterministic id, candle-time timestamp).
//! - [`scalping`], [`mean_reversion`], [`online_logistic`]: the three built-in strategies.
//! - [`alerts`]: the market-alert detectors.
//! - [`service`]: [`run_signals`], the NATS service, and its [`SignalsConfig`].
//!
//! Invariants:
//! - Everything but [`service`] is pure: no clock, no I/O (except the explicit state-file
//!   helpers of [`OnlineLogistic`]), no randomness. The same candles and ticks give
//!   byte-identical signals and alerts.
//! - Prices stay exact [`rust_decimal::Decimal`]s; confidences, indicator values and model
//!   internals are `f64` statistics.
//! - This crate never touches Kafka: market data stays on NATS.

pub mod alerts;
pub mod mean_reversion;
pub mod online_logistic;
pub mod scalping;
pub mod service;
pub mod strategy;

#[cfg(test)]
mod test_support;

pub use alerts::{AlertConfig, MarketAlerts, BREAKOUT, GAP, SPIKE};
pub use mean_reversion::{MeanReversion, MeanReversionParams};
pub use online_logistic::{OnlineLogistic, OnlineLogisticParams, StateError};
pub use scalping::{Scalping, ScalpingParams};
pub use service::{run_signals, run_signals_on, SignalsConfig, SignalsError, StrategyKind};
pub use strategy::{clamp_confidence, signal_from, signal_id, step, Decision, Strategy};
