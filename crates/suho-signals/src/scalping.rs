//! `scalping`: an EMA fast/slow crossover filtered by RSI (the seed's scalping strategy).
//!
//! # Definition
//!
//! On each closed candle, with `fast = EMA(close, fast)`, `slow = EMA(close, slow)`,
//! `gap = fast - slow` and `rsi = RSI(close, rsi)` (the incremental indicators of
//! [`suho_market::indicators`]):
//!
//! - **BUY** on an up-cross (`gap_prev <= 0 < gap`) when `rsi < overbought`;
//! - **SELL** on a down-cross (`gap_prev >= 0 > gap`) when `rsi > oversold`;
//! - nothing otherwise (no cross, a cross vetoed by RSI, or still warming up: the first
//!   decision needs `max(slow, rsi + 1) + 1` candles).
//!
//! `confidence = (g + r) / 2`, clamped to `0..=1`, where
//! `g = min(1, |gap| / close / gap_full)` grows with the EMA gap relative to price, and `r` is
//! the RSI's distance from the vetoing level: `(overbought - rsi) / (overbought - 50)` for a
//! BUY, `(rsi - oversold) / (50 - oversold)` for a SELL, each clamped to `0..=1`.
//! The signal's price is the candle's close.
//!
//! # Defaults
//! `fast 9`, `slow 21`, `rsi 14`, `overbought 70`, `oversold 30`, `gap_full 0.0002`
//! (a 2 bp gap is full strength). Model: `scalping-ema{fast}-{slow}-rsi{rsi}@1`.

use rust_decimal::prelude::ToPrimitive;
use suho_domain::{Candle, Direction};
use suho_market::{Ema, Rsi};

use crate::strategy::{Decision, Strategy};

/// The strategy's name (`signals.scalping.{SYM}`).
pub const NAME: &str = "scalping";
/// Version of the decision rule, in the model string.
pub const VERSION: u32 = 1;

/// Parameters of [`Scalping`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalpingParams {
    /// Fast EMA period (9).
    pub fast: usize,
    /// Slow EMA period (21).
    pub slow: usize,
    /// RSI period (14).
    pub rsi: usize,
    /// No BUY at or above this RSI (70).
    pub overbought: f64,
    /// No SELL at or below this RSI (30).
    pub oversold: f64,
    /// Relative EMA gap (`|gap| / close`) that counts as full strength (0.0002).
    pub gap_full: f64,
}

impl Default for ScalpingParams {
    fn default() -> Self {
        Self {
            fast: 9,
            slow: 21,
            rsi: 14,
            overbought: 70.0,
            oversold: 30.0,
            gap_full: 0.0002,
        }
    }
}

/// EMA crossover with an RSI filter; see the module docs.
#[derive(Debug, Clone)]
pub struct Scalping {
    params: ScalpingParams,
    fast: Ema,
    slow: Ema,
    rsi: Rsi,
    prev_gap: Option<f64>,
}

impl Scalping {
    /// A fresh instance.
    #[must_use]
    pub fn new(params: ScalpingParams) -> Self {
        Self {
            params,
            fast: Ema::new(params.fast),
            slow: Ema::new(params.slow),
            rsi: Rsi::new(params.rsi),
            prev_gap: None,
        }
    }

    /// The parameters.
    #[must_use]
    pub fn params(&self) -> &ScalpingParams {
        &self.params
    }
}

impl Default for Scalping {
    fn default() -> Self {
        Self::new(ScalpingParams::default())
    }
}

impl Strategy for Scalping {
    fn name(&self) -> &str {
        NAME
    }

    fn model(&self) -> String {
        let p = &self.params;
        format!("{NAME}-ema{}-{}-rsi{}@{VERSION}", p.fast, p.slow, p.rsi)
    }

    fn on_candle(&mut self, candle: &Candle) -> Option<Decision> {
        let fast = self.fast.update(candle.close);
        let slow = self.slow.update(candle.close);
        let rsi = self.rsi.update(candle.close);
        let gap = fast? - slow?;
        let prev = self.prev_gap.replace(gap);
        let (prev, rsi) = (prev?, rsi?);
        let p = &self.params;
        let (direction, r) = if prev <= 0.0 && gap > 0.0 && rsi < p.overbought {
            (Direction::Buy, (p.overbought - rsi) / (p.overbought - 50.0))
        } else if prev >= 0.0 && gap < 0.0 && rsi > p.oversold {
            (Direction::Sell, (rsi - p.oversold) / (50.0 - p.oversold))
        } else {
            return None;
        };
        let close = candle.close.to_f64().filter(|c| *c > 0.0)?;
        let g = (gap.abs() / close / p.gap_full).min(1.0);
        let r = if r.is_finite() {
            r.clamp(0.0, 1.0)
        } else {
            1.0
        };
        Some(Decision {
            direction,
            confidence: ((g + r) / 2.0).clamp(0.0, 1.0),
            price: candle.close,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::candles;

    fn run(closes: &[f64]) -> Vec<(usize, Decision)> {
        let mut s = Scalping::default();
        candles(closes)
            .iter()
            .enumerate()
            .filter_map(|(i, c)| s.on_candle(c).map(|d| (i, d)))
            .collect()
    }

    /// A slow decline with small wiggles (RSI well above 0), then a turn.
    fn decline_then(turn: impl Fn(usize) -> f64) -> Vec<f64> {
        let mut closes: Vec<f64> = (0..40)
            .map(|i| 1.1 - 0.0001 * i as f64 + if i % 2 == 0 { 0.00006 } else { 0.0 })
            .collect();
        let last = closes[39];
        closes.extend((1..=15).map(|i| last + turn(i)));
        closes
    }

    #[test]
    fn a_clear_up_cross_is_a_buy() {
        // Down, then a rise that is moderate enough to keep the RSI below 70 at the cross.
        let closes = decline_then(|i| 0.00015 * i as f64 - if i % 2 == 0 { 0.0001 } else { 0.0 });
        let got = run(&closes);
        assert!(!got.is_empty(), "a cross happened");
        let (i, d) = got[0];
        assert!(i >= 40, "no signal during the steady decline");
        assert_eq!(d.direction, Direction::Buy);
        assert!((0.0..=1.0).contains(&d.confidence), "{d:?}");
        assert_eq!(d.price, candles(&closes)[i].close);
    }

    #[test]
    fn a_clear_down_cross_is_a_sell() {
        let closes: Vec<f64> =
            decline_then(|i| 0.00015 * i as f64 - if i % 2 == 0 { 0.0001 } else { 0.0 })
                .iter()
                .map(|c| 2.2 - c)
                .collect();
        let got = run(&closes);
        assert_eq!(got.first().map(|(_, d)| d.direction), Some(Direction::Sell));
    }

    #[test]
    fn an_up_cross_at_an_overbought_rsi_is_vetoed() {
        // Decline, then a straight-line surge: every change is a gain, RSI near 100 at the cross.
        let got = run(&decline_then(|i| 0.002 * i as f64));
        assert!(
            got.iter().all(|(_, d)| d.direction != Direction::Buy),
            "{got:?}"
        );
    }

    #[test]
    fn nothing_while_warming_up_or_flat() {
        assert!(run(&[1.1; 60]).is_empty());
        assert!(run(&(0..21)
            .map(|i| 1.0 + f64::from(i) * 0.001)
            .collect::<Vec<_>>())
        .is_empty());
        assert_eq!(Scalping::default().model(), "scalping-ema9-21-rsi14@1");
    }
}
