//! Market alerts of one symbol: `spike`, `gap` and `breakout`, published on
//! `alerts.market.{type}`.
//!
//! # Definitions
//!
//! A *reference move* for ticks is `max(k_std · σ · prev_mid, k_atr · ATR)` over whichever of
//! the two scales is known, where `σ` is the population standard deviation of the last
//! `return_window` tick returns `mid_t / mid_{t-1} - 1` (known once `min_returns` are in) and
//! `ATR` is Wilder's ATR([`suho_market::Atr`], `atr_period`) of the closed candles. Taking the
//! larger of the two keeps a quiet tape (tiny σ) or a slow tick rate (small ATR) from raising
//! alerts on ordinary moves.
//!
//! - **spike**: a tick whose mid moves from the previous tick's by more than the reference move
//!   with `spike_std_k` and `spike_atr_k`.
//! - **gap**: a tick that arrives more than `gap_pause_ms` after the previous one and whose mid
//!   is further from it than the reference move with `gap_std_k` and `gap_atr_k` (reported as
//!   a gap, not a spike); or a closed candle whose `open` is more than
//!   `candle_gap_atr_k · ATR` from the previous candle's `close`.
//! - **breakout**: a closed candle whose `close` is above the highest `high` (`up`) or below
//!   the lowest `low` (`down`) of the previous `breakout_lookback` closed candles. A run of
//!   consecutive breakout candles in one direction alerts once.
//!
//! **No storms:** at most one alert per type per symbol per candle window (the timeframe's
//! aligned bucket of the alert's time). Ticks older than the previous one and candles not
//! after the previous one are ignored.
//!
//! **Timestamps** are market time, never the wall clock: the tick's timestamp, the candle's
//! `start` for a candle gap and its `end` for a breakout. `extra` holds plain numbers and
//! strings: `move`, `threshold`, prices, `basis` (`std` or `atr`), `pause_ms`, `direction`,
//! `level`, `lookback`, `source` (`tick` or `candle`), `timeframe`.
//!
//! # Defaults
//! `spike_std_k 6`, `spike_atr_k 1`, `gap_pause_ms 60000`, `gap_std_k 4`, `gap_atr_k 0.5`,
//! `candle_gap_atr_k 1`, `breakout_lookback 20`, `return_window 100`, `min_returns 20`,
//! `atr_period 14`.

use std::collections::VecDeque;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use suho_domain::{Candle, MarketAlert, Symbol, Tick, Timeframe};
use suho_market::Atr;

/// `alerts.market.spike`.
pub const SPIKE: &str = "spike";
/// `alerts.market.gap`.
pub const GAP: &str = "gap";
/// `alerts.market.breakout`.
pub const BREAKOUT: &str = "breakout";

/// Thresholds of the detectors; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertConfig {
    /// Spike: multiple of the tick-return σ (6).
    pub spike_std_k: f64,
    /// Spike: multiple of the ATR (1).
    pub spike_atr_k: f64,
    /// Gap: a pause longer than this between two ticks, ms (60 000).
    pub gap_pause_ms: i64,
    /// Gap after a pause: multiple of the tick-return σ (4).
    pub gap_std_k: f64,
    /// Gap after a pause: multiple of the ATR (0.5).
    pub gap_atr_k: f64,
    /// Candle gap: `|open - previous close|` above this multiple of the ATR (1).
    pub candle_gap_atr_k: f64,
    /// Breakout: candles whose range the close must leave (20).
    pub breakout_lookback: usize,
    /// Tick returns in the rolling σ (100).
    pub return_window: usize,
    /// Tick returns needed before σ is used (20).
    pub min_returns: usize,
    /// ATR period, in candles (14).
    pub atr_period: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            spike_std_k: 6.0,
            spike_atr_k: 1.0,
            gap_pause_ms: 60_000,
            gap_std_k: 4.0,
            gap_atr_k: 0.5,
            candle_gap_atr_k: 1.0,
            breakout_lookback: 20,
            return_window: 100,
            min_returns: 20,
            atr_period: 14,
        }
    }
}

fn f(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(f64::NAN)
}

/// The spike/gap/breakout detectors of one symbol; see the module docs.
#[derive(Debug, Clone)]
pub struct MarketAlerts {
    symbol: Symbol,
    timeframe: Timeframe,
    config: AlertConfig,
    /// Previous tick: (timestamp, mid).
    prev_tick: Option<(i64, Decimal)>,
    returns: VecDeque<f64>,
    atr: Atr,
    atr_value: Option<f64>,
    /// Previous closed candle's start and close.
    prev_candle: Option<(i64, Decimal)>,
    /// (high, low) of the last `breakout_lookback` closed candles.
    ranges: VecDeque<(Decimal, Decimal)>,
    /// Direction of the previous candle's breakout (`up`/`down`), if it was one.
    prev_breakout: Option<&'static str>,
    /// Recently alerted (type, bucket start).
    recent: VecDeque<(&'static str, i64)>,
}

impl MarketAlerts {
    /// Detectors for `symbol`, fed ticks and the closed candles of `timeframe`.
    #[must_use]
    pub fn new(symbol: Symbol, timeframe: Timeframe, config: AlertConfig) -> Self {
        Self {
            symbol,
            timeframe,
            config,
            prev_tick: None,
            returns: VecDeque::with_capacity(config.return_window + 1),
            atr: Atr::new(config.atr_period),
            atr_value: None,
            prev_candle: None,
            ranges: VecDeque::with_capacity(config.breakout_lookback + 1),
            prev_breakout: None,
            recent: VecDeque::new(),
        }
    }

    /// The symbol.
    #[must_use]
    pub fn symbol(&self) -> Symbol {
        self.symbol
    }

    /// The latest ATR of the closed candles, once warmed up.
    #[must_use]
    pub fn atr(&self) -> Option<f64> {
        self.atr_value
    }

    /// The population standard deviation of the recent tick returns, once there are enough.
    #[must_use]
    pub fn tick_sigma(&self) -> Option<f64> {
        let n = self.returns.len();
        if n == 0 || n < self.config.min_returns {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let nf = n as f64;
        let mean = self.returns.iter().sum::<f64>() / nf;
        let var = self.returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / nf;
        Some(var.max(0.0).sqrt())
    }

    /// The reference move and its basis, for a previous mid of `prev`.
    fn reference(&self, prev: Decimal, k_std: f64, k_atr: f64) -> Option<(f64, &'static str)> {
        let by_std = self.tick_sigma().map(|s| (k_std * s * f(prev), "std"));
        let by_atr = self.atr_value.map(|a| (k_atr * a, "atr"));
        match (by_std, by_atr) {
            (Some(s), Some(a)) => Some(if a.0 > s.0 { a } else { s }),
            (s, a) => s.or(a),
        }
        .filter(|(t, _)| t.is_finite() && *t > 0.0)
    }

    /// Whether an alert of `kind` may go out for the window containing `ts`; records it.
    fn allow(&mut self, kind: &'static str, ts: i64) -> bool {
        let bucket = self.timeframe.align(ts);
        if self.recent.contains(&(kind, bucket)) {
            return false;
        }
        self.recent.push_back((kind, bucket));
        while self.recent.len() > 16 {
            self.recent.pop_front();
        }
        true
    }

    fn alert(&self, kind: &str, message: String, timestamp: i64, extra: Value) -> MarketAlert {
        let extra: Map<String, Value> = match extra {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        MarketAlert {
            kind: kind.to_string(),
            symbol: self.symbol,
            message,
            timestamp,
            extra,
        }
    }

    /// Feeds a tick of this symbol: a `spike` or `gap` alert, if it is one.
    pub fn on_tick(&mut self, tick: &Tick) -> Option<MarketAlert> {
        if tick.symbol != self.symbol {
            return None;
        }
        let (mid, ts) = (tick.mid, tick.timestamp);
        let Some((prev_ts, prev)) = self.prev_tick else {
            self.prev_tick = Some((ts, mid));
            return None;
        };
        if ts < prev_ts {
            return None;
        }
        let delta = mid - prev;
        let moved = f(delta).abs();
        let pause = ts - prev_ts;
        let c = self.config;
        let alert = if pause > c.gap_pause_ms {
            self.reference(prev, c.gap_std_k, c.gap_atr_k)
                .filter(|(t, _)| moved > *t)
                .filter(|_| self.allow(GAP, ts))
                .map(|(threshold, basis)| {
                    self.alert(
                        GAP,
                        format!(
                            "{} gapped {delta:+} to {mid} after {} s without ticks",
                            self.symbol,
                            pause / 1000
                        ),
                        ts,
                        json!({"source": "tick", "mid": f(mid), "previous": f(prev),
                            "move": f(delta), "threshold": threshold, "basis": basis,
                            "pause_ms": pause}),
                    )
                })
        } else {
            self.reference(prev, c.spike_std_k, c.spike_atr_k)
                .filter(|(t, _)| moved > *t)
                .filter(|_| self.allow(SPIKE, ts))
                .map(|(threshold, basis)| {
                    self.alert(
                        SPIKE,
                        format!(
                            "{} spiked {delta:+} to {mid} in {pause} ms (threshold {threshold:.6})",
                            self.symbol
                        ),
                        ts,
                        json!({"mid": f(mid), "previous": f(prev), "move": f(delta),
                            "threshold": threshold, "basis": basis, "interval_ms": pause}),
                    )
                })
        };
        if prev > Decimal::ZERO {
            if let Some(r) = (delta / prev).to_f64() {
                self.returns.push_back(r);
                while self.returns.len() > c.return_window.max(1) {
                    self.returns.pop_front();
                }
            }
        }
        self.prev_tick = Some((ts, mid));
        alert
    }

    /// Feeds a closed candle of this symbol and timeframe: `gap` and `breakout` alerts.
    pub fn on_candle(&mut self, candle: &Candle) -> Vec<MarketAlert> {
        let mut out = Vec::new();
        if candle.symbol != self.symbol
            || candle.timeframe != self.timeframe
            || !candle.closed
            || self
                .prev_candle
                .is_some_and(|(start, _)| candle.start <= start)
        {
            return out;
        }
        let c = self.config;
        if let (Some((_, prev_close)), Some(atr)) = (self.prev_candle, self.atr_value) {
            let delta = candle.open - prev_close;
            let threshold = c.candle_gap_atr_k * atr;
            if f(delta).abs() > threshold && threshold > 0.0 && self.allow(GAP, candle.start) {
                out.push(self.alert(
                    GAP,
                    format!(
                        "{} {} candle opened {delta:+} from the previous close {prev_close}",
                        self.symbol, self.timeframe
                    ),
                    candle.start,
                    json!({"source": "candle", "timeframe": self.timeframe.as_str(),
                        "open": f(candle.open), "previous": f(prev_close), "move": f(delta),
                        "threshold": threshold, "basis": "atr"}),
                ));
            }
        }
        let lookback = c.breakout_lookback.max(1);
        let mut breakout = None;
        if self.ranges.len() == lookback {
            let high = self.ranges.iter().map(|r| r.0).max();
            let low = self.ranges.iter().map(|r| r.1).min();
            if let (Some(high), Some(low)) = (high, low) {
                if candle.close > high {
                    breakout = Some(("up", high));
                } else if candle.close < low {
                    breakout = Some(("down", low));
                }
            }
        }
        if let Some((direction, level)) = breakout {
            if self.prev_breakout != Some(direction) && self.allow(BREAKOUT, candle.start) {
                let side = if direction == "up" {
                    "above the high"
                } else {
                    "below the low"
                };
                out.push(self.alert(
                    BREAKOUT,
                    format!(
                        "{} closed at {} {side} {level} of the last {lookback} {} candles",
                        self.symbol, candle.close, self.timeframe
                    ),
                    candle.end,
                    json!({"direction": direction, "close": f(candle.close), "level": f(level),
                        "lookback": lookback, "timeframe": self.timeframe.as_str()}),
                ));
            }
        }
        self.prev_breakout = breakout.map(|(d, _)| d);
        self.atr_value = self.atr.update(candle).or(self.atr_value);
        self.ranges.push_back((candle.high, candle.low));
        while self.ranges.len() > lookback {
            self.ranges.pop_front();
        }
        self.prev_candle = Some((candle.start, candle.close));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{candle, eur, tick, MIN, TEN};

    fn detector() -> MarketAlerts {
        MarketAlerts::new(eur(), Timeframe::M1, AlertConfig::default())
    }

    /// 40 ticks one second apart wiggling by one pip around 1.1.
    fn calm(d: &mut MarketAlerts) -> i64 {
        for i in 0..40 {
            let mid = 1.1 + if i % 2 == 0 { 0.0001 } else { 0.0 };
            assert!(
                d.on_tick(&tick(TEN + i * 1000, mid)).is_none(),
                "calm tick {i}"
            );
        }
        TEN + 39 * 1000
    }

    #[test]
    fn a_spike_alerts_once_per_candle_window() {
        let mut d = detector();
        let t = calm(&mut d);
        let a = d.on_tick(&tick(t + 500, 1.1030)).expect("a spike");
        assert_eq!(a.kind, SPIKE);
        assert_eq!(a.timestamp, t + 500);
        assert_eq!(a.symbol, eur());
        assert_eq!(a.extra["basis"], "std");
        assert!(a.extra["threshold"].as_f64().expect("number") < 0.003);
        assert!((a.extra["move"].as_f64().expect("number") - 0.003).abs() < 1e-9);
        // Back down, up again: more spikes in the same minute stay silent (no storm).
        assert!(d.on_tick(&tick(t + 600, 1.1)).is_none());
        assert!(d.on_tick(&tick(t + 700, 1.1040)).is_none());
        // The next minute may alert again.
        let next = Timeframe::M1.align(t) + MIN;
        assert!(d.on_tick(&tick(next + 10, 1.1200)).is_some());
        // The wire shape: fixed fields plus flat numbers.
        let v = serde_json::to_value(&a).expect("json");
        assert_eq!(v["type"], "spike");
        assert!(v["move"].is_number() && v["threshold"].is_number());
    }

    #[test]
    fn a_gap_after_a_pause_is_a_gap_not_a_spike() {
        let mut d = detector();
        let t = calm(&mut d);
        // Five minutes later, far away.
        let a = d.on_tick(&tick(t + 5 * MIN, 1.1030)).expect("a gap");
        assert_eq!(a.kind, GAP);
        assert_eq!(a.extra["pause_ms"], 5 * MIN);
        assert_eq!(a.extra["source"], "tick");
        // A pause with an ordinary move says nothing.
        let mut d = detector();
        let t = calm(&mut d);
        assert!(d.on_tick(&tick(t + 5 * MIN, 1.1001)).is_none());
    }

    #[test]
    fn nothing_before_the_scales_are_known() {
        let mut d = detector();
        assert!(d.on_tick(&tick(TEN, 1.1)).is_none());
        assert!(d.on_tick(&tick(TEN + 1, 1.5)).is_none());
    }

    /// 20 candles ranging between 1.0990 and 1.1010.
    fn ranging(d: &mut MarketAlerts) {
        for i in 0..20 {
            let close = if i % 2 == 0 { 1.1005 } else { 1.0995 };
            let alerts = d.on_candle(&candle(i, 1.1, 1.1010, 1.0990, close));
            assert!(alerts.is_empty(), "{alerts:?}");
        }
    }

    #[test]
    fn a_breakout_alerts_once_per_run() {
        let mut d = detector();
        ranging(&mut d);
        let a = d.on_candle(&candle(20, 1.1005, 1.1030, 1.1000, 1.1025));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].kind, BREAKOUT);
        assert_eq!(a[0].extra["direction"], "up");
        assert_eq!(a[0].extra["level"], 1.101);
        assert_eq!(a[0].timestamp, TEN + 21 * MIN, "the candle's end");
        // Still breaking out: the run alerts once.
        assert!(d
            .on_candle(&candle(21, 1.1025, 1.1045, 1.1020, 1.1040))
            .is_empty());
        // A duplicate or older candle is ignored.
        assert!(d
            .on_candle(&candle(21, 1.1025, 1.1045, 1.1020, 1.0))
            .is_empty());
        // Collapsing below the lows of the last 20 candles is a breakout down.
        let a = d.on_candle(&candle(22, 1.1040, 1.1040, 1.0970, 1.0975));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].extra["direction"], "down");
    }

    #[test]
    fn a_candle_opening_far_from_the_previous_close_is_a_gap() {
        let mut d = detector();
        ranging(&mut d);
        let atr = d.atr().expect("ATR after 20 candles");
        assert!(atr > 0.0015 && atr < 0.0025, "{atr}");
        // Opens 40 pips away, closes inside the range: a gap and no breakout.
        let a = d.on_candle(&candle(20, 1.1040, 1.1040, 1.1000, 1.1005));
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].kind, GAP);
        assert_eq!(a[0].extra["source"], "candle");
        assert_eq!(a[0].timestamp, TEN + 20 * MIN, "the candle's start");
    }

    #[test]
    fn a_tick_gap_and_a_candle_gap_of_the_same_window_alert_once() {
        let mut d = detector();
        ranging(&mut d);
        let t0 = TEN + 20 * MIN;
        for i in 0..30 {
            let mid = 1.1005 + if i % 2 == 0 { 0.00005 } else { 0.0 };
            assert!(d.on_tick(&tick(t0 - 60 * MIN + i * 1000, mid)).is_none());
        }
        let a = d.on_tick(&tick(t0 + 1000, 1.1045)).expect("tick gap");
        assert_eq!(a.kind, GAP);
        let again = d.on_candle(&candle(20, 1.1045, 1.1045, 1.1000, 1.1005));
        assert!(again.is_empty(), "{again:?}");
    }
}
