//! The [`Strategy`] port and how a strategy's [`Decision`] becomes a wire [`Signal`].
//!
//! A strategy is fed the **closed** candles of one symbol and one timeframe, in order, and may
//! answer each with a [`Decision`]. [`signal_from`] turns a decision into the contract's
//! `signals.{strategy}.{SYM}` payload so that the same input always gives the same bytes:
//!
//! - `signal_id = sig_{strategy}_{SYM}_{start}` ([`signal_id`]), where `start` is the candle's
//!   aligned start in epoch ms: unique per strategy, symbol and candle, and stable across runs
//!   and restarts (a consumer can deduplicate on it).
//! - `timestamp` is the candle's `end` (the moment the decision could first be made), never the
//!   wall clock.
//! - `confidence` is clamped to `0..=1` (NaN becomes 0) and rounded to 6 decimals.
//! - `price` is the decision's exact decimal price (the candle's close for the built-ins).

use rust_decimal::Decimal;
use suho_domain::{Candle, Direction, Signal, Symbol};

/// What a strategy decided on one candle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// BUY, SELL or FLAT.
    pub direction: Direction,
    /// Confidence in `0..=1` (clamped again by [`signal_from`]).
    pub confidence: f64,
    /// Reference price (exact).
    pub price: Decimal,
}

/// A trading strategy of one symbol, driven by closed candles of one timeframe.
///
/// Implementations must be deterministic: the same candles in the same order give the same
/// decisions (no clock, no randomness, no iteration over hash maps).
pub trait Strategy: Send {
    /// The strategy's name: the `{strategy}` token of `signals.{strategy}.{SYM}` (no `.`, `*`,
    /// `>` or whitespace).
    fn name(&self) -> &str;

    /// The model name and version carried in each signal, e.g. `scalping-ema9-21-rsi14@1`.
    fn model(&self) -> String;

    /// Feeds one closed candle; a decision when the strategy has something to say.
    fn on_candle(&mut self, candle: &Candle) -> Option<Decision>;
}

/// `sig_{strategy}_{SYM}_{start}`: the deterministic id of a strategy's signal on a candle.
#[must_use]
pub fn signal_id(strategy: &str, symbol: Symbol, candle_start: i64) -> String {
    format!("sig_{strategy}_{symbol}_{candle_start}")
}

/// Clamps a confidence to `0..=1` (NaN to 0) and rounds it to 6 decimals.
#[must_use]
pub fn clamp_confidence(x: f64) -> f64 {
    if x.is_nan() {
        return 0.0;
    }
    (x.clamp(0.0, 1.0) * 1e6).round() / 1e6
}

/// The wire signal for `decision`, taken by `strategy` on `candle` (see the module docs).
///
/// Call it right after [`Strategy::on_candle`]: `model` is read from the strategy then.
#[must_use]
pub fn signal_from<S: Strategy + ?Sized>(
    strategy: &S,
    candle: &Candle,
    decision: &Decision,
) -> Signal {
    Signal {
        signal_id: signal_id(strategy.name(), candle.symbol, candle.start),
        strategy: strategy.name().to_string(),
        symbol: candle.symbol,
        direction: decision.direction,
        confidence: clamp_confidence(decision.confidence),
        price: decision.price,
        timestamp: candle.end,
        model: strategy.model(),
    }
}

/// Feeds `candle` to `strategy` and returns the signal it produced, if any.
pub fn step<S: Strategy + ?Sized>(strategy: &mut S, candle: &Candle) -> Option<Signal> {
    let decision = strategy.on_candle(candle)?;
    Some(signal_from(strategy, candle, &decision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_is_clamped_and_rounded() {
        assert_eq!(clamp_confidence(f64::NAN), 0.0);
        assert_eq!(clamp_confidence(-1.0), 0.0);
        assert_eq!(clamp_confidence(7.0), 1.0);
        assert_eq!(clamp_confidence(0.123_456_789), 0.123_457);
    }

    #[test]
    fn ids_are_deterministic() {
        let s = Symbol::parse("EURUSD").expect("sym");
        assert_eq!(
            signal_id("scalping", s, 60_000),
            "sig_scalping_EURUSD_60000"
        );
    }
}
