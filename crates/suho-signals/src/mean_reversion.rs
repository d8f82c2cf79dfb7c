//! `mean_reversion`: fade moves outside the Bollinger bands, flatten back at the middle.
//!
//! # Definition
//!
//! On each closed candle, with the bands `middle ± k·sd` of [`suho_market::Bollinger`]
//! (SMA and population standard deviation of the last `period` closes) and the z-score
//! `z = (close - middle) / sd`, the strategy keeps the position it last signalled
//! (flat, long or short) and signals only changes:
//!
//! - **SELL** when `close > upper` and it is not already short;
//! - **BUY** when `close < lower` and it is not already long;
//! - **FLAT** when it is short and the close is back at or below the middle, or long and the
//!   close is back at or above the middle (the move has reverted).
//!
//! Confidence of a BUY/SELL is `min(1, |z| / (2k))` (0.5 at the band, 1 at twice the band's
//! distance); of a FLAT, `1 - min(1, |z| / k)` (1 exactly at the middle). Nothing while the
//! bands warm up (`period` candles) or when `sd = 0`. The signal's price is the close.
//!
//! # Defaults
//! `period 20`, `k 2`. Model: `mean-reversion-bb{period}-{k}@1`.

use rust_decimal::prelude::ToPrimitive;
use suho_domain::{Candle, Direction};
use suho_market::Bollinger;

use crate::strategy::{Decision, Strategy};

/// The strategy's name (`signals.mean_reversion.{SYM}`).
pub const NAME: &str = "mean_reversion";
/// Version of the decision rule, in the model string.
pub const VERSION: u32 = 1;

/// Parameters of [`MeanReversion`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanReversionParams {
    /// Bollinger period (20).
    pub period: usize,
    /// Band width in standard deviations (2).
    pub k: f64,
}

impl Default for MeanReversionParams {
    fn default() -> Self {
        Self { period: 20, k: 2.0 }
    }
}

/// Bollinger mean reversion; see the module docs.
#[derive(Debug, Clone)]
pub struct MeanReversion {
    params: MeanReversionParams,
    bands: Bollinger,
    /// The position last signalled: `Buy` = long, `Sell` = short, `Flat`.
    position: Direction,
}

impl MeanReversion {
    /// A fresh, flat instance.
    #[must_use]
    pub fn new(params: MeanReversionParams) -> Self {
        Self {
            params,
            bands: Bollinger::new(params.period, params.k),
            position: Direction::Flat,
        }
    }

    /// The parameters.
    #[must_use]
    pub fn params(&self) -> &MeanReversionParams {
        &self.params
    }

    /// The position last signalled: `Buy` for long, `Sell` for short, `Flat` (at start).
    #[must_use]
    pub fn position(&self) -> Direction {
        self.position
    }
}

impl Default for MeanReversion {
    fn default() -> Self {
        Self::new(MeanReversionParams::default())
    }
}

impl Strategy for MeanReversion {
    fn name(&self) -> &str {
        NAME
    }

    fn model(&self) -> String {
        format!(
            "mean-reversion-bb{}-{}@{VERSION}",
            self.params.period, self.params.k
        )
    }

    fn on_candle(&mut self, candle: &Candle) -> Option<Decision> {
        let bands = self.bands.update(candle.close)?;
        let close = candle.close.to_f64()?;
        let k = self.params.k;
        let sd = if k > 0.0 {
            (bands.upper - bands.middle) / k
        } else {
            0.0
        };
        if sd.is_nan() || sd <= 0.0 {
            return None;
        }
        let z = (close - bands.middle) / sd;
        let strength = |z: f64| (z.abs() / (2.0 * k)).min(1.0);
        let (direction, confidence) = match self.position {
            Direction::Sell if close <= bands.middle => {
                (Direction::Flat, 1.0 - (z.abs() / k).min(1.0))
            }
            Direction::Buy if close >= bands.middle => {
                (Direction::Flat, 1.0 - (z.abs() / k).min(1.0))
            }
            pos if close > bands.upper && pos != Direction::Sell => (Direction::Sell, strength(z)),
            pos if close < bands.lower && pos != Direction::Buy => (Direction::Buy, strength(z)),
            _ => return None,
        };
        self.position = direction;
        Some(Decision {
            direction,
            confidence,
            price: candle.close,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::candles;

    /// 30 closes oscillating around 1.1 (so the bands have width).
    fn calm() -> Vec<f64> {
        (0..30)
            .map(|i| 1.1 + if i % 2 == 0 { 0.0002 } else { -0.0002 })
            .collect()
    }

    fn run(closes: &[f64]) -> Vec<(usize, Direction)> {
        let mut s = MeanReversion::default();
        candles(closes)
            .iter()
            .enumerate()
            .filter_map(|(i, c)| s.on_candle(c).map(|d| (i, d.direction)))
            .collect()
    }

    #[test]
    fn above_the_upper_band_sells_then_flattens_at_the_middle() {
        let mut closes = calm();
        closes.push(1.1030); // far above the upper band
        closes.push(1.1025); // still above: already short, nothing new
        closes.push(1.0990); // back below the middle
        assert_eq!(run(&closes), [(30, Direction::Sell), (32, Direction::Flat)]);
    }

    #[test]
    fn below_the_lower_band_buys_then_flattens_at_the_middle() {
        let mut closes = calm();
        closes.push(1.0970);
        closes.push(1.1010);
        assert_eq!(run(&closes), [(30, Direction::Buy), (31, Direction::Flat)]);
    }

    #[test]
    fn confidence_grows_with_the_z_score() {
        let conf = |jump: f64| {
            let mut closes = calm();
            closes.push(1.1 + jump);
            let mut s = MeanReversion::default();
            candles(&closes)
                .iter()
                .filter_map(|c| s.on_candle(c))
                .map(|d| d.confidence)
                .last()
                .expect("a signal")
        };
        let (small, big) = (conf(0.0009), conf(0.003));
        assert!(small < big && big <= 1.0 && small > 0.0, "{small} {big}");
    }

    #[test]
    fn a_flat_market_says_nothing() {
        assert!(run(&[1.1; 50]).is_empty());
        assert_eq!(MeanReversion::default().model(), "mean-reversion-bb20-2@1");
    }
}
