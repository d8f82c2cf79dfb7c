//! Incremental technical indicators: O(1) work and O(period) memory per update.
//!
//! Every indicator has a `new(period, ...)` and an `update(...)` that returns `None` while it
//! is warming up and the value afterwards. Inputs are exact [`Decimal`] prices (closes, or
//! candles for ATR); outputs are `f64`, since indicator values are statistics, not money.
//! A period of 0 is treated as 1.
//!
//! # Formulas
//!
//! - **SMA(n)**: the mean of the last `n` closes, from a rolling sum kept as an exact
//!   `Decimal` (no drift however long it runs). First value at the `n`-th close.
//! - **EMA(n)**: `alpha = 2 / (n + 1)`, `ema = alpha * x + (1 - alpha) * ema_prev`, **seeded
//!   with the SMA of the first `n` values**; first value at the `n`-th input (that value is
//!   the seed itself).
//! - **RSI(n)** (Wilder): change `d = close - prev_close`, gain `max(d, 0)`, loss
//!   `max(-d, 0)`. The first average gain/loss is the **simple mean of the first `n`
//!   gains/losses** (so the first RSI comes at the `n + 1`-th close); after that
//!   `avg = (avg_prev * (n - 1) + x) / n`. `RSI = 100 - 100 / (1 + avg_gain / avg_loss)`,
//!   computed as `100 * avg_gain / (avg_gain + avg_loss)`; `100` when `avg_loss = 0`, and `50`
//!   when both averages are 0 (a flat market).
//! - **MACD(fast 12, slow 26, signal 9)**: `macd = EMA_fast(close) - EMA_slow(close)` (both
//!   EMAs as above), `signal = EMA_signal(macd)` seeded with the SMA of the first `signal`
//!   MACD values, `histogram = macd - signal`. Returned only when all three exist: first value
//!   at close `slow + signal - 1` (34 for the defaults).
//! - **Bollinger(n 20, k 2)**: `middle = SMA(n)`, `upper/lower = middle ± k * sd` where `sd` is
//!   the **population** standard deviation (divide by `n`) of the last `n` closes. The
//!   variance is `(n * Σx² - (Σx)²) / n²` from rolling sums of `x` and `x²` kept as exact
//!   `Decimal`s, so the subtraction cancels nothing (the classic `E[x²] - E[x]²` catastrophic
//!   cancellation of floats is avoided); only the final value is converted to `f64`. Should a
//!   sum ever overflow `Decimal` (prices near 1e14), the window falls back to an `f64` two-pass
//!   computation over its buffer until the exact sums fit again.
//! - **ATR(n 14)** (Wilder): true range `TR = max(high - low, |high - prev_close|,
//!   |low - prev_close|)`, and `TR = high - low` for the first candle (no previous close). The
//!   first ATR is the **simple mean of the first `n` TRs** (at the `n`-th candle), then
//!   `atr = (atr_prev * (n - 1) + TR) / n`.
//!
//! Differences and true ranges are computed exactly in `Decimal` before conversion; the
//! recursive smoothing runs in `f64`.

use std::collections::VecDeque;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use suho_domain::Candle;

fn to_f64(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(f64::NAN)
}

#[allow(clippy::cast_precision_loss)]
fn as_f64(n: usize) -> f64 {
    n as f64
}

/// Exact rolling sums of a window (held as `None` by [`Window`] after an overflow).
#[derive(Debug, Clone, Copy)]
struct Sums {
    sum: Decimal,
    sum_sq: Decimal,
}

/// The last `period` values with their rolling sums.
#[derive(Debug, Clone)]
struct Window {
    period: usize,
    squares: bool,
    values: VecDeque<Decimal>,
    sums: Option<Sums>,
}

impl Window {
    fn new(period: usize, squares: bool) -> Self {
        let period = period.max(1);
        Self {
            period,
            squares,
            values: VecDeque::with_capacity(period + 1),
            sums: Some(Sums {
                sum: Decimal::ZERO,
                sum_sq: Decimal::ZERO,
            }),
        }
    }

    fn square(&self, x: Decimal) -> Option<Decimal> {
        if self.squares {
            x.checked_mul(x)
        } else {
            Some(Decimal::ZERO)
        }
    }

    /// Adds `x`, dropping the oldest value when full; true once the window is full.
    fn push(&mut self, x: Decimal) -> bool {
        let old = if self.values.len() == self.period {
            self.values.pop_front()
        } else {
            None
        };
        self.values.push_back(x);
        self.sums = match self.sums {
            Some(s) => self.slide(s, x, old),
            // Recover from an earlier overflow (O(period), only after an overflow).
            None => self.recompute(),
        };
        self.values.len() == self.period
    }

    fn slide(&self, s: Sums, x: Decimal, old: Option<Decimal>) -> Option<Sums> {
        let mut sum = s.sum.checked_add(x)?;
        let mut sum_sq = s.sum_sq.checked_add(self.square(x)?)?;
        if let Some(o) = old {
            sum = sum.checked_sub(o)?;
            sum_sq = sum_sq.checked_sub(self.square(o)?)?;
        }
        Some(Sums { sum, sum_sq })
    }

    fn recompute(&self) -> Option<Sums> {
        self.values.iter().try_fold(
            Sums {
                sum: Decimal::ZERO,
                sum_sq: Decimal::ZERO,
            },
            |s, &x| {
                Some(Sums {
                    sum: s.sum.checked_add(x)?,
                    sum_sq: s.sum_sq.checked_add(self.square(x)?)?,
                })
            },
        )
    }

    fn len_f64(&self) -> f64 {
        as_f64(self.values.len())
    }

    fn mean(&self) -> f64 {
        let n = Decimal::from(self.values.len());
        match self.sums.and_then(|s| s.sum.checked_div(n)) {
            Some(m) => to_f64(m),
            None => self.values.iter().map(|&x| to_f64(x)).sum::<f64>() / self.len_f64(),
        }
    }

    /// Population variance of the window.
    fn variance(&self) -> f64 {
        let n = Decimal::from(self.values.len());
        let exact = self.sums.and_then(|s| {
            n.checked_mul(s.sum_sq)?
                .checked_sub(s.sum.checked_mul(s.sum)?)
        });
        let v = match exact {
            Some(num) => to_f64(num) / (self.len_f64() * self.len_f64()),
            None => {
                let mean = self.mean();
                self.values
                    .iter()
                    .map(|&x| (to_f64(x) - mean).powi(2))
                    .sum::<f64>()
                    / self.len_f64()
            }
        };
        v.max(0.0)
    }
}

/// Simple moving average over `period` values.
#[derive(Debug, Clone)]
pub struct Sma {
    window: Window,
}

impl Sma {
    /// An SMA over `period` values.
    #[must_use]
    pub fn new(period: usize) -> Self {
        Self {
            window: Window::new(period, false),
        }
    }

    /// The period.
    #[must_use]
    pub fn period(&self) -> usize {
        self.window.period
    }

    /// Adds a value; the mean of the last `period` values once there are that many.
    pub fn update(&mut self, x: Decimal) -> Option<f64> {
        self.window.push(x).then(|| self.window.mean())
    }
}

/// Exponential moving average, `alpha = 2 / (period + 1)`, seeded with the SMA of the first
/// `period` values.
#[derive(Debug, Clone)]
pub struct Ema {
    period: usize,
    alpha: f64,
    seen: usize,
    seed_sum: f64,
    value: Option<f64>,
}

impl Ema {
    /// An EMA over `period` values.
    #[must_use]
    pub fn new(period: usize) -> Self {
        let period = period.max(1);
        Self {
            period,
            alpha: 2.0 / (as_f64(period) + 1.0),
            seen: 0,
            seed_sum: 0.0,
            value: None,
        }
    }

    /// The period.
    #[must_use]
    pub fn period(&self) -> usize {
        self.period
    }

    /// Adds a price.
    pub fn update(&mut self, x: Decimal) -> Option<f64> {
        self.update_f64(to_f64(x))
    }

    /// Adds a value that is already a float (e.g. the MACD line).
    pub fn update_f64(&mut self, x: f64) -> Option<f64> {
        match self.value {
            Some(prev) => {
                let v = self.alpha * x + (1.0 - self.alpha) * prev;
                self.value = Some(v);
            }
            None => {
                self.seen += 1;
                self.seed_sum += x;
                if self.seen == self.period {
                    self.value = Some(self.seed_sum / as_f64(self.period));
                }
            }
        }
        self.value
    }
}

/// Wilder smoothing: simple mean of the first `period` inputs, then
/// `(prev * (period - 1) + x) / period`.
#[derive(Debug, Clone)]
struct Wilder {
    period: usize,
    seen: usize,
    seed_sum: f64,
    value: Option<f64>,
}

impl Wilder {
    fn new(period: usize) -> Self {
        Self {
            period: period.max(1),
            seen: 0,
            seed_sum: 0.0,
            value: None,
        }
    }

    fn update(&mut self, x: f64) -> Option<f64> {
        let n = as_f64(self.period);
        match self.value {
            Some(prev) => self.value = Some((prev * (n - 1.0) + x) / n),
            None => {
                self.seen += 1;
                self.seed_sum += x;
                if self.seen == self.period {
                    self.value = Some(self.seed_sum / n);
                }
            }
        }
        self.value
    }
}

/// Wilder's relative strength index, in `0..=100`.
#[derive(Debug, Clone)]
pub struct Rsi {
    prev: Option<Decimal>,
    gains: Wilder,
    losses: Wilder,
}

impl Rsi {
    /// An RSI over `period` changes.
    #[must_use]
    pub fn new(period: usize) -> Self {
        Self {
            prev: None,
            gains: Wilder::new(period),
            losses: Wilder::new(period),
        }
    }

    /// Adds a close; the RSI from the `period + 1`-th close on.
    pub fn update(&mut self, close: Decimal) -> Option<f64> {
        let prev = self.prev.replace(close)?;
        let change = close - prev;
        let gain = to_f64(change.max(Decimal::ZERO));
        let loss = to_f64((-change).max(Decimal::ZERO));
        let g = self.gains.update(gain);
        let l = self.losses.update(loss);
        let (g, l) = (g?, l?);
        Some(if g + l == 0.0 {
            50.0
        } else {
            100.0 * g / (g + l)
        })
    }
}

/// One MACD reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MacdValue {
    /// `EMA_fast - EMA_slow`.
    pub macd: f64,
    /// EMA of the MACD line.
    pub signal: f64,
    /// `macd - signal`.
    pub histogram: f64,
}

/// Moving average convergence/divergence.
#[derive(Debug, Clone)]
pub struct Macd {
    fast: Ema,
    slow: Ema,
    signal: Ema,
}

impl Macd {
    /// MACD with the given EMA periods (classically 12, 26, 9).
    #[must_use]
    pub fn new(fast: usize, slow: usize, signal: usize) -> Self {
        Self {
            fast: Ema::new(fast),
            slow: Ema::new(slow),
            signal: Ema::new(signal),
        }
    }

    /// Adds a close; a reading once the line and its signal both exist.
    pub fn update(&mut self, close: Decimal) -> Option<MacdValue> {
        let fast = self.fast.update(close);
        let slow = self.slow.update(close);
        let macd = fast? - slow?;
        let signal = self.signal.update_f64(macd)?;
        Some(MacdValue {
            macd,
            signal,
            histogram: macd - signal,
        })
    }
}

/// One Bollinger reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BollingerValue {
    /// `middle + k * sd`.
    pub upper: f64,
    /// The SMA.
    pub middle: f64,
    /// `middle - k * sd`.
    pub lower: f64,
}

/// Bollinger bands: SMA ± k population standard deviations.
#[derive(Debug, Clone)]
pub struct Bollinger {
    window: Window,
    k: f64,
}

impl Bollinger {
    /// Bands over `period` closes, `k` standard deviations wide (classically 20, 2).
    #[must_use]
    pub fn new(period: usize, k: f64) -> Self {
        Self {
            window: Window::new(period, true),
            k,
        }
    }

    /// Adds a close; the bands once `period` closes are in.
    pub fn update(&mut self, close: Decimal) -> Option<BollingerValue> {
        if !self.window.push(close) {
            return None;
        }
        let middle = self.window.mean();
        let width = self.k * self.window.variance().sqrt();
        Some(BollingerValue {
            upper: middle + width,
            middle,
            lower: middle - width,
        })
    }
}

/// Wilder's average true range.
#[derive(Debug, Clone)]
pub struct Atr {
    prev_close: Option<Decimal>,
    smooth: Wilder,
}

impl Atr {
    /// An ATR over `period` candles.
    #[must_use]
    pub fn new(period: usize) -> Self {
        Self {
            prev_close: None,
            smooth: Wilder::new(period),
        }
    }

    /// Adds a candle.
    pub fn update(&mut self, candle: &Candle) -> Option<f64> {
        self.update_hlc(candle.high, candle.low, candle.close)
    }

    /// Adds a bar given as high, low and close.
    pub fn update_hlc(&mut self, high: Decimal, low: Decimal, close: Decimal) -> Option<f64> {
        let range = high - low;
        let tr = match self.prev_close.replace(close) {
            Some(pc) => range.max((high - pc).abs()).max((low - pc).abs()),
            None => range,
        };
        self.smooth.update(to_f64(tr))
    }
}

/// The periods of an [`IndicatorSet`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndicatorParams {
    /// SMA period (20).
    pub sma: usize,
    /// EMA period (20).
    pub ema: usize,
    /// RSI period (14).
    pub rsi: usize,
    /// MACD fast EMA (12).
    pub macd_fast: usize,
    /// MACD slow EMA (26).
    pub macd_slow: usize,
    /// MACD signal EMA (9).
    pub macd_signal: usize,
    /// Bollinger period (20).
    pub bollinger: usize,
    /// Bollinger width in standard deviations (2).
    pub bollinger_k: f64,
    /// ATR period (14).
    pub atr: usize,
}

impl Default for IndicatorParams {
    fn default() -> Self {
        Self {
            sma: 20,
            ema: 20,
            rsi: 14,
            macd_fast: 12,
            macd_slow: 26,
            macd_signal: 9,
            bollinger: 20,
            bollinger_k: 2.0,
            atr: 14,
        }
    }
}

/// The readings after one candle; `None` while an indicator warms up.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct IndicatorReadings {
    /// SMA of closes.
    pub sma: Option<f64>,
    /// EMA of closes.
    pub ema: Option<f64>,
    /// RSI of closes.
    pub rsi: Option<f64>,
    /// MACD of closes.
    pub macd: Option<MacdValue>,
    /// Bollinger bands of closes.
    pub bollinger: Option<BollingerValue>,
    /// ATR of the candles.
    pub atr: Option<f64>,
}

/// All six indicators of one symbol and timeframe, fed closed candles.
#[derive(Debug, Clone)]
pub struct IndicatorSet {
    sma: Sma,
    ema: Ema,
    rsi: Rsi,
    macd: Macd,
    bollinger: Bollinger,
    atr: Atr,
}

impl IndicatorSet {
    /// A fresh set.
    #[must_use]
    pub fn new(params: &IndicatorParams) -> Self {
        Self {
            sma: Sma::new(params.sma),
            ema: Ema::new(params.ema),
            rsi: Rsi::new(params.rsi),
            macd: Macd::new(params.macd_fast, params.macd_slow, params.macd_signal),
            bollinger: Bollinger::new(params.bollinger, params.bollinger_k),
            atr: Atr::new(params.atr),
        }
    }

    /// Adds a (closed) candle: every close-based indicator gets its `close`, ATR the candle.
    pub fn update(&mut self, candle: &Candle) -> IndicatorReadings {
        let c = candle.close;
        IndicatorReadings {
            sma: self.sma.update(c),
            ema: self.ema.update(c),
            rsi: self.rsi.update(c),
            macd: self.macd.update(c),
            bollinger: self.bollinger.update(c),
            atr: self.atr.update(candle),
        }
    }
}
