//! Candles and indicators: the aggregator's policies (UTC alignment, OHLC consistency, no
//! filler candles, late and out-of-order ticks, closing exactly once), the incremental
//! indicators against two independent references (a naive recomputation below and
//! `tests/data/indicator_reference.json`, produced by `tests/data/gen_indicator_reference.py`
//! with Python's `decimal`), and the analytics service on a real NATS server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use rust_decimal::Decimal;
use serde_json::Value;
use suho_domain::{Candle, Symbol, Tick, Timeframe};
use suho_market::analytics::indicator_values;
use suho_market::{
    run_analytics, run_analytics_with, run_feed, AnalyticsConfig, Atr, Bollinger, CandleAggregator,
    Ema, IndicatorParams, IndicatorReadings, Macd, Rsi, Sma, SyntheticFeed, TickDisposition,
};
use suho_security::Identity;
use suho_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

const TOL: f64 = 1e-9;

fn eur() -> Symbol {
    Symbol::parse("EURUSD").unwrap()
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// A tick whose mid is exactly `price` (bid = ask).
fn tick(ts: i64, price: &str) -> Tick {
    Tick::new(eur(), dec(price), dec(price), ts, "test").unwrap()
}

/// 2024-03-15 13:47:25.123 UTC.
const T: i64 = 1_710_510_445_123;
/// 2024-03-15 10:00:00 UTC.
const TEN: i64 = 1_710_496_800_000;
const MIN: i64 = 60_000;
const SEC: i64 = 1_000;

// ---------------------------------------------------------------------------------------------
// Aggregator
// ---------------------------------------------------------------------------------------------

#[test]
fn candles_align_to_utc_boundaries_for_every_timeframe() {
    let expected = [
        (Timeframe::M1, 1_710_510_420_000),  // 13:47
        (Timeframe::M5, 1_710_510_300_000),  // 13:45
        (Timeframe::M15, 1_710_510_300_000), // 13:45
        (Timeframe::M30, 1_710_509_400_000), // 13:30
        (Timeframe::H1, 1_710_507_600_000),  // 13:00
        (Timeframe::H4, 1_710_504_000_000),  // 12:00
        (Timeframe::D1, 1_710_460_800_000),  // 2024-03-15 00:00 UTC
    ];
    let mut agg = CandleAggregator::new(eur());
    let up = agg.on_tick(&tick(T, "1.08512"));
    assert_eq!(up.disposition, TickDisposition::InOrder);
    assert!(up.closed.is_empty());
    assert_eq!(up.current.len(), 7);
    for (candle, (tf, start)) in up.current.iter().zip(expected) {
        assert_eq!(candle.timeframe, tf);
        assert_eq!(candle.start, start, "{tf}");
        assert_eq!(
            candle.end,
            start + tf.duration_ms(),
            "{tf}: end = start + duration"
        );
        assert_eq!(candle.start % tf.duration_ms(), 0, "{tf}");
        assert!(!candle.closed);
        assert_eq!(candle.volume, Decimal::ONE);
        assert_eq!(candle.open, dec("1.08512"));
    }
    // `end` is exclusive: a tick stamped exactly at the 1m end opens the next candle.
    let end = expected[0].1 + MIN;
    let up = agg.on_tick(&tick(end, "1.08513"));
    assert_eq!(up.closed.len(), 1);
    assert_eq!(up.closed[0].timeframe, Timeframe::M1);
    assert_eq!(up.current[0].start, end);
    // One millisecond before midnight is still the same day; midnight starts a new one.
    let midnight = expected[6].1 + Timeframe::D1.duration_ms();
    let up = agg.on_tick(&tick(midnight - 1, "1.1"));
    assert_eq!(up.current[6].start, expected[6].1);
    let up = agg.on_tick(&tick(midnight, "1.1"));
    assert_eq!(
        up.closed.iter().map(|c| c.timeframe).collect::<Vec<_>>(),
        Timeframe::ALL.to_vec(),
        "midnight closes every timeframe"
    );
    assert!(up.current.iter().all(|c| c.start == midnight));
}

/// Ticks of a fixed synthetic series, one every `step_ms`.
fn synthetic_ticks(n: usize, step_ms: i64, seed: u64) -> Vec<Tick> {
    let mut feed = SyntheticFeed::new(&[eur()], seed);
    (0..n)
        .map(|i| {
            let ts = TEN + i64::try_from(i).unwrap() * step_ms;
            feed.next_tick(ts).unwrap()
        })
        .collect()
}

#[test]
fn long_series_is_consistent_closes_each_candle_once_and_matches_direct_grouping() {
    // 30 000 ticks 7.3 s apart: about 61 hours, so every timeframe closes, days included.
    let ticks = synthetic_ticks(30_000, 7_300, 11);
    let mut agg = CandleAggregator::new(eur());
    let mut closed: Vec<Candle> = Vec::new();
    for (i, t) in ticks.iter().enumerate() {
        // A timer now and then, as the service runs one.
        if i % 17 == 0 {
            closed.extend(agg.close_due(t.timestamp));
        }
        let up = agg.on_tick(t);
        assert_eq!(up.disposition, TickDisposition::InOrder);
        for c in up.iter() {
            assert!(c.low <= c.open && c.open <= c.high, "{c:?}");
            assert!(c.low <= c.close && c.close <= c.high, "{c:?}");
            assert_eq!(c.start, c.timeframe.align(c.start));
            assert_eq!(c.start.rem_euclid(c.timeframe.duration_ms()), 0);
            assert_eq!(c.end, c.start + c.timeframe.duration_ms());
        }
        assert!(up.closed.iter().all(|c| c.closed));
        assert!(up.current.iter().all(|c| !c.closed));
        closed.extend(up.closed);
    }
    let last = ticks.last().unwrap().timestamp;
    closed.extend(agg.close_due(last + Timeframe::D1.duration_ms()));
    assert!(agg.open_candles().next().is_none());
    assert!(agg.close_due(i64::MAX).is_empty(), "nothing closes twice");

    // Each (timeframe, start) closed exactly once.
    let mut seen = HashSet::new();
    for c in &closed {
        assert!(seen.insert((c.timeframe, c.start)), "closed twice: {c:?}");
    }
    // The same candles as grouping the ticks directly by aligned start.
    for tf in Timeframe::ALL {
        let mut direct: BTreeMap<i64, Candle> = BTreeMap::new();
        for t in &ticks {
            direct
                .entry(tf.align(t.timestamp))
                .and_modify(|c| c.update(t.mid, Decimal::ONE))
                .or_insert_with(|| Candle::open_at(eur(), tf, t.timestamp, t.mid, Decimal::ONE));
        }
        let ours: Vec<Candle> = closed
            .iter()
            .filter(|c| c.timeframe == tf)
            .cloned()
            .collect();
        assert!(!ours.is_empty(), "{tf} closed at least once");
        assert!(
            ours.windows(2).all(|w| w[0].start < w[1].start),
            "{tf} in order"
        );
        let direct: Vec<Candle> = direct
            .into_values()
            .map(|mut c| {
                c.closed = true;
                c
            })
            .collect();
        assert_eq!(ours, direct, "{tf}");
        let volume: Decimal = ours.iter().map(|c| c.volume).sum();
        assert_eq!(
            volume,
            Decimal::from(ticks.len()),
            "{tf}: every tick counted once"
        );
    }
}

#[test]
fn a_window_without_ticks_has_no_candle() {
    let mut agg = CandleAggregator::with_timeframes(eur(), &[Timeframe::M1]);
    agg.on_tick(&tick(TEN + 10 * SEC, "1.1"));
    // Nothing in 10:01 and 10:02; the next tick is at 10:03:20.
    let up = agg.on_tick(&tick(TEN + 3 * MIN + 20 * SEC, "1.2"));
    assert_eq!(up.closed.len(), 1);
    assert_eq!(up.closed[0].start, TEN);
    assert_eq!(up.current.len(), 1);
    assert_eq!(
        up.current[0].start,
        TEN + 3 * MIN,
        "no filler candles for 10:01, 10:02"
    );
    assert_eq!(up.current[0].open, dec("1.2"));
    // The timer closes 10:03 once its end has passed, and then there is nothing open.
    assert!(agg.close_due(TEN + 4 * MIN - 1).is_empty());
    let due = agg.close_due(TEN + 4 * MIN);
    assert_eq!(due.len(), 1);
    assert!(due[0].closed && due[0].start == TEN + 3 * MIN);
    assert!(
        agg.close_due(TEN + 10 * MIN).is_empty(),
        "quiet minutes produce nothing"
    );
    assert!(agg.open_candles().next().is_none());
}

#[test]
fn late_and_out_of_order_ticks_follow_the_policy() {
    let mut agg = CandleAggregator::with_timeframes(eur(), &[Timeframe::M1, Timeframe::M5]);
    agg.on_tick(&tick(TEN + 30 * SEC, "1.1"));
    agg.on_tick(&tick(TEN + 50 * SEC, "1.2"));
    // Older than the newest tick, inside the open window: high/low/volume, not close.
    let up = agg.on_tick(&tick(TEN + 40 * SEC, "1.0"));
    assert_eq!(up.disposition, TickDisposition::OutOfOrder);
    for c in &up.current {
        assert_eq!(
            (c.open, c.high, c.low, c.close, c.volume),
            (dec("1.1"), dec("1.2"), dec("1.0"), dec("1.2"), dec("3")),
            "{:?}",
            c.timeframe
        );
    }
    assert_eq!(agg.out_of_order_ticks(), 1);
    // An equal timestamp counts as newer: the later arrival sets the close.
    let up = agg.on_tick(&tick(TEN + 50 * SEC, "1.15"));
    assert_eq!(up.disposition, TickDisposition::InOrder);
    assert_eq!(up.current[0].close, dec("1.15"));

    // 10:01:05 closes the 10:00 1m candle; the 5m candle goes on.
    let up = agg.on_tick(&tick(TEN + MIN + 5 * SEC, "1.3"));
    assert_eq!(up.closed.len(), 1);
    assert_eq!(up.closed[0].close, dec("1.15"));
    assert_eq!(up.current[1].volume, dec("5"));

    // 10:00:55 belongs to a closed 1m window: late, dropped for every timeframe.
    let up = agg.on_tick(&tick(TEN + 55 * SEC, "9.9"));
    assert_eq!(up.disposition, TickDisposition::Late);
    assert!(up.closed.is_empty() && up.current.is_empty());
    assert_eq!(agg.late_ticks(), 1);
    assert_eq!(agg.watermark(), Some(TEN + MIN));
    let five = agg
        .open_candles()
        .find(|c| c.timeframe == Timeframe::M5)
        .unwrap();
    assert_eq!((five.volume, five.high), (dec("5"), dec("1.3")));

    // Closed by the timer: a tick of that window arriving afterwards is late too.
    let due = agg.close_due(TEN + 2 * MIN);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].start, TEN + MIN);
    let up = agg.on_tick(&tick(TEN + MIN + 30 * SEC, "1.0"));
    assert_eq!(up.disposition, TickDisposition::Late);
    assert_eq!(agg.late_ticks(), 2);

    // A tick before the very first open window is late as well.
    let mut fresh = CandleAggregator::new(eur());
    fresh.on_tick(&tick(TEN + 5 * MIN, "1.1"));
    assert_eq!(
        fresh.on_tick(&tick(TEN + 4 * MIN, "1.1")).disposition,
        TickDisposition::Late
    );
    // Another symbol's tick is not this aggregator's business.
    let gbp = Tick::new(
        Symbol::parse("GBPUSD").unwrap(),
        dec("1.27"),
        dec("1.28"),
        TEN + 6 * MIN,
        "t",
    )
    .unwrap();
    assert_eq!(
        fresh.on_tick(&gbp).disposition,
        TickDisposition::OtherSymbol
    );
}

#[test]
fn a_candle_closes_exactly_once() {
    let mut agg = CandleAggregator::with_timeframes(eur(), &[Timeframe::M1]);
    agg.on_tick(&tick(TEN, "1.1"));
    // By a tick...
    let up = agg.on_tick(&tick(TEN + MIN, "1.2"));
    assert_eq!(up.closed.len(), 1);
    assert!(
        agg.close_due(TEN + MIN).is_empty(),
        "already closed by the tick"
    );
    // ...or by the timer, never both.
    assert_eq!(agg.close_due(TEN + 2 * MIN).len(), 1);
    assert!(agg.close_due(TEN + 2 * MIN).is_empty());
    let up = agg.on_tick(&tick(TEN + 2 * MIN, "1.3"));
    assert!(up.closed.is_empty(), "the timer already closed 10:01");
    assert_eq!(up.current[0].start, TEN + 2 * MIN);
}

// ---------------------------------------------------------------------------------------------
// Indicators: the naive reference, from the textbook definitions over the whole series
// ---------------------------------------------------------------------------------------------

/// A bar as plain floats, parsed from the decimal's text (not through `rust_decimal`'s
/// conversion the indicators use).
#[derive(Clone, Copy)]
struct Bar {
    high: f64,
    low: f64,
    close: f64,
}

fn f(d: Decimal) -> f64 {
    d.to_string().parse().unwrap()
}

mod naive {
    //! Every value recomputed from scratch for every index: O(n·period) or worse, on purpose.

    use super::Bar;

    pub fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    pub fn sma(c: &[f64], n: usize, i: usize) -> Option<f64> {
        (i + 1 >= n).then(|| mean(&c[i + 1 - n..=i]))
    }

    /// Exponential smoothing written out as its weighted sum: the seed (mean of
    /// `xs[first..first + n]`) weighted `(1 - a)^k`, then every later input `x_j` weighted
    /// `a (1 - a)^(i - j)`.
    pub fn smoothed(xs: &[f64], first: usize, n: usize, a: f64, i: usize) -> Option<f64> {
        let seed_end = first + n - 1;
        if i < seed_end {
            return None;
        }
        let seed = mean(&xs[first..=seed_end]);
        let mut v = (1.0 - a).powi((i - seed_end) as i32) * seed;
        for (j, x) in xs.iter().enumerate().take(i + 1).skip(seed_end + 1) {
            v += a * (1.0 - a).powi((i - j) as i32) * x;
        }
        Some(v)
    }

    pub fn ema(c: &[f64], n: usize, i: usize) -> Option<f64> {
        smoothed(c, 0, n, 2.0 / (n as f64 + 1.0), i)
    }

    pub fn rsi(c: &[f64], n: usize, i: usize) -> Option<f64> {
        let d: Vec<f64> = (0..c.len())
            .map(|k| if k == 0 { 0.0 } else { c[k] - c[k - 1] })
            .collect();
        let gains: Vec<f64> = d.iter().map(|x| x.max(0.0)).collect();
        let losses: Vec<f64> = d.iter().map(|x| (-x).max(0.0)).collect();
        let g = smoothed(&gains, 1, n, 1.0 / n as f64, i)?;
        let l = smoothed(&losses, 1, n, 1.0 / n as f64, i)?;
        Some(if l == 0.0 {
            if g == 0.0 {
                50.0
            } else {
                100.0
            }
        } else {
            100.0 - 100.0 / (1.0 + g / l)
        })
    }

    pub fn macd(c: &[f64], fast: usize, slow: usize, sig: usize, i: usize) -> Option<[f64; 3]> {
        let line: Vec<f64> = (0..c.len())
            .map(|k| match (ema(c, fast, k), ema(c, slow, k)) {
                (Some(a), Some(b)) => a - b,
                _ => f64::NAN,
            })
            .collect();
        let signal = smoothed(&line, slow - 1, sig, 2.0 / (sig as f64 + 1.0), i)?;
        Some([line[i], signal, line[i] - signal])
    }

    pub fn bollinger(c: &[f64], n: usize, k: f64, i: usize) -> Option<[f64; 3]> {
        let w = &c[(i + 1).checked_sub(n)?..=i];
        let m = mean(w);
        let sd = (w.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64).sqrt();
        Some([m + k * sd, m, m - k * sd])
    }

    pub fn atr(bars: &[Bar], n: usize, i: usize) -> Option<f64> {
        let tr: Vec<f64> = (0..bars.len())
            .map(|k| {
                let b = bars[k];
                if k == 0 {
                    b.high - b.low
                } else {
                    let pc = bars[k - 1].close;
                    (b.high - b.low)
                        .max((b.high - pc).abs())
                        .max((b.low - pc).abs())
                }
            })
            .collect();
        smoothed(&tr, 0, n, 1.0 / n as f64, i)
    }
}

/// Every incremental reading over a candle series, one entry per candle.
fn incremental(candles: &[Candle], p: &IndicatorParams) -> Vec<IndicatorReadings> {
    let mut sma = Sma::new(p.sma);
    let mut ema = Ema::new(p.ema);
    let mut rsi = Rsi::new(p.rsi);
    let mut macd = Macd::new(p.macd_fast, p.macd_slow, p.macd_signal);
    let mut boll = Bollinger::new(p.bollinger, p.bollinger_k);
    let mut atr = Atr::new(p.atr);
    candles
        .iter()
        .map(|c| IndicatorReadings {
            sma: sma.update(c.close),
            ema: ema.update(c.close),
            rsi: rsi.update(c.close),
            macd: macd.update(c.close),
            bollinger: boll.update(c.close),
            atr: atr.update(c),
        })
        .collect()
}

#[track_caller]
fn close_enough(name: &str, i: usize, got: Option<f64>, want: Option<f64>) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!(
            (g - w).abs() <= TOL,
            "{name}[{i}]: incremental {g} vs reference {w} (diff {})",
            (g - w).abs()
        ),
        _ => panic!("{name}[{i}]: warm-up differs: incremental {got:?} vs reference {want:?}"),
    }
}

fn check_against_naive(candles: &[Candle], p: &IndicatorParams) -> usize {
    let c: Vec<f64> = candles.iter().map(|k| f(k.close)).collect();
    let bars: Vec<Bar> = candles
        .iter()
        .map(|k| Bar {
            high: f(k.high),
            low: f(k.low),
            close: f(k.close),
        })
        .collect();
    let readings = incremental(candles, p);
    let mut checked = 0;
    for (i, r) in readings.iter().enumerate() {
        close_enough("sma", i, r.sma, naive::sma(&c, p.sma, i));
        close_enough("ema", i, r.ema, naive::ema(&c, p.ema, i));
        close_enough("rsi", i, r.rsi, naive::rsi(&c, p.rsi, i));
        close_enough("atr", i, r.atr, naive::atr(&bars, p.atr, i));
        let m = naive::macd(&c, p.macd_fast, p.macd_slow, p.macd_signal, i);
        close_enough("macd", i, r.macd.map(|v| v.macd), m.map(|v| v[0]));
        close_enough("signal", i, r.macd.map(|v| v.signal), m.map(|v| v[1]));
        close_enough("histogram", i, r.macd.map(|v| v.histogram), m.map(|v| v[2]));
        let b = naive::bollinger(&c, p.bollinger, p.bollinger_k, i);
        close_enough("upper", i, r.bollinger.map(|v| v.upper), b.map(|v| v[0]));
        close_enough("middle", i, r.bollinger.map(|v| v.middle), b.map(|v| v[1]));
        close_enough("lower", i, r.bollinger.map(|v| v.lower), b.map(|v| v[2]));
        if r.macd.is_some() {
            checked += 1;
        }
    }
    checked
}

/// The reference file's candles and expectations.
fn reference() -> (Vec<Candle>, Value) {
    let v: Value = serde_json::from_str(include_str!("data/indicator_reference.json")).unwrap();
    let candles = v["candles"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let d = |f: &str| dec(k[f].as_str().unwrap());
            let ts = TEN + i64::try_from(i).unwrap() * MIN;
            let mut c = Candle::open_at(eur(), Timeframe::M1, ts, d("close"), Decimal::ONE);
            (c.high, c.low, c.close) = (d("high"), d("low"), d("close"));
            c.open = d("open");
            assert!(c.low <= c.open.min(c.close) && c.open.max(c.close) <= c.high);
            c
        })
        .collect();
    (candles, v)
}

fn params_of(v: &Value) -> IndicatorParams {
    let p = &v["params"];
    let n = |k: &str| usize::try_from(p[k].as_u64().unwrap()).unwrap();
    IndicatorParams {
        sma: n("sma"),
        ema: n("ema"),
        rsi: n("rsi"),
        macd_fast: n("macd_fast"),
        macd_slow: n("macd_slow"),
        macd_signal: n("macd_signal"),
        bollinger: n("bollinger"),
        bollinger_k: p["bollinger_k"].as_f64().unwrap(),
        atr: n("atr"),
    }
}

#[test]
fn indicators_match_the_python_reference_file() {
    let (candles, v) = reference();
    assert!(candles.len() >= 200);
    let p = params_of(&v);
    assert_eq!(
        p,
        IndicatorParams::default(),
        "the file uses the service's periods"
    );
    let readings = incremental(&candles, &p);
    let e = &v["expected"];
    let num = |k: &str, i: usize| e[k][i].as_f64();
    let field = |k: &str, f: &str, i: usize| e[k][i].get(f).and_then(Value::as_f64);
    let mut after_warmup = 0;
    for (i, r) in readings.iter().enumerate() {
        close_enough("sma", i, r.sma, num("sma", i));
        close_enough("ema", i, r.ema, num("ema", i));
        close_enough("rsi", i, r.rsi, num("rsi", i));
        close_enough("atr", i, r.atr, num("atr", i));
        close_enough("macd", i, r.macd.map(|m| m.macd), field("macd", "macd", i));
        close_enough(
            "signal",
            i,
            r.macd.map(|m| m.signal),
            field("macd", "signal", i),
        );
        close_enough(
            "histogram",
            i,
            r.macd.map(|m| m.histogram),
            field("macd", "histogram", i),
        );
        for (name, got) in [
            ("upper", r.bollinger.map(|b| b.upper)),
            ("middle", r.bollinger.map(|b| b.middle)),
            ("lower", r.bollinger.map(|b| b.lower)),
        ] {
            close_enough(name, i, got, field("bollinger", name, i));
        }
        after_warmup += usize::from(r.macd.is_some());
    }
    assert_eq!(
        after_warmup,
        candles.len() - 33,
        "MACD(12,26,9) warms up for 33 closes"
    );
    // The flat stretch in the file gives zero-width bands.
    assert!(readings
        .iter()
        .any(|r| r.bollinger.is_some_and(|b| b.upper == b.lower)));
}

#[test]
fn indicators_match_the_naive_recomputation_on_the_reference_file() {
    let (candles, v) = reference();
    let checked = check_against_naive(&candles, &params_of(&v));
    assert!(checked >= 200);
}

#[test]
fn indicators_match_the_naive_recomputation_on_synthetic_candles() {
    // 1m candles built by the aggregator from a fixed synthetic series (seed 42).
    let ticks = synthetic_ticks(26_000, 2_500, 42);
    let mut agg = CandleAggregator::with_timeframes(eur(), &[Timeframe::M1]);
    let candles: Vec<Candle> = ticks.iter().flat_map(|t| agg.on_tick(t).closed).collect();
    assert!(candles.len() >= 1_000, "{}", candles.len());
    let candles = &candles[..300];
    let checked = check_against_naive(candles, &IndicatorParams::default());
    assert_eq!(checked, 300 - 33);
    // Short periods too, including the degenerate period 1.
    for p in [1, 2, 3, 7] {
        let params = IndicatorParams {
            sma: p,
            ema: p,
            rsi: p,
            macd_fast: p,
            macd_slow: p + 2,
            macd_signal: p,
            bollinger: p,
            bollinger_k: 1.5,
            atr: p,
        };
        check_against_naive(candles, &params);
    }
}

#[test]
fn indicator_warm_up_and_edge_cases() {
    let mut sma = Sma::new(3);
    assert_eq!(sma.update(dec("1")), None);
    assert_eq!(sma.update(dec("2")), None);
    assert_eq!(sma.update(dec("3")), Some(2.0));
    assert_eq!(sma.update(dec("10")), Some(5.0));
    // EMA seeded with the SMA of the first n values.
    let mut ema = Ema::new(3);
    assert_eq!(ema.update(dec("1")), None);
    assert_eq!(ema.update(dec("2")), None);
    assert_eq!(ema.update(dec("3")), Some(2.0));
    assert_eq!(ema.update(dec("4")), Some(3.0)); // 0.5 * 4 + 0.5 * 2
                                                 // RSI: all gains 100, flat 50, all losses 0.
    for (closes, want) in [
        (["1", "2", "3", "4"], 100.0),
        (["1", "1", "1", "1"], 50.0),
        (["4", "3", "2", "1"], 0.0),
    ] {
        let mut rsi = Rsi::new(3);
        let out: Vec<_> = closes.iter().map(|c| rsi.update(dec(c))).collect();
        assert_eq!(out, [None, None, None, Some(want)]);
    }
    // ATR: the first true range is high - low.
    let mut atr = Atr::new(2);
    assert_eq!(atr.update_hlc(dec("2"), dec("1"), dec("1.5")), None);
    // TR = max(0.5, |3 - 1.5|, |2.5 - 1.5|) = 1.5; mean(1, 1.5).
    assert_eq!(atr.update_hlc(dec("3"), dec("2.5"), dec("2.8")), Some(1.25));
}

#[test]
fn bollinger_survives_prices_whose_squares_overflow_decimal() {
    let mut b = Bollinger::new(2, 2.0);
    let huge = Decimal::new(1_000_000_000_000_000, 0); // 1e15: x² overflows Decimal
    b.update(huge);
    let v = b.update(huge + Decimal::ONE).unwrap();
    assert!((v.middle - 1e15 - 0.5).abs() < 1e-3, "{v:?}");
    assert!(
        (v.upper - v.middle - 1.0).abs() < 1e-3,
        "sd 0.5, k 2: {v:?}"
    );
    // Back to normal prices: the exact sums recover.
    b.update(dec("1.1"));
    let v = b.update(dec("1.3")).unwrap();
    assert!(
        (v.middle - 1.2).abs() < 1e-12 && (v.upper - 1.4).abs() < 1e-12,
        "{v:?}"
    );
}

#[test]
fn indicator_messages_have_the_contract_shape() {
    let r = IndicatorReadings {
        sma: Some(1.1),
        ema: Some(1.2),
        rsi: Some(55.0),
        macd: Some(suho_market::MacdValue {
            macd: 0.001,
            signal: 0.0005,
            histogram: 0.0005,
        }),
        bollinger: Some(suho_market::BollingerValue {
            upper: 1.3,
            middle: 1.2,
            lower: 1.1,
        }),
        atr: Some(0.0002),
    };
    let values = indicator_values(eur(), Timeframe::M1, TEN, &r);
    let names: Vec<&str> = values.iter().map(|v| v.indicator.as_str()).collect();
    assert_eq!(names, ["sma", "ema", "rsi", "macd", "bollinger", "atr"]);
    let wire: Vec<Value> = values
        .iter()
        .map(|v| serde_json::to_value(v).unwrap())
        .collect();
    assert_eq!(
        wire[2],
        serde_json::json!({"symbol":"EURUSD","indicator":"rsi","timeframe":"1m","value":55.0,"timestamp":TEN})
    );
    assert_eq!(
        wire[3]["value"],
        serde_json::json!({"macd":0.001,"signal":0.0005,"histogram":0.0005})
    );
    assert_eq!(
        wire[4]["value"],
        serde_json::json!({"upper":1.3,"middle":1.2,"lower":1.1})
    );
    // Warming up: nothing to publish.
    assert!(indicator_values(eur(), Timeframe::M1, TEN, &IndicatorReadings::default()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// The service on a real NATS
// ---------------------------------------------------------------------------------------------

async fn next_json(sub: &mut async_nats::Subscriber) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message within 10 s")
        .expect("subscription open");
    serde_json::from_slice(&msg.payload).unwrap()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort_unstable();
    k
}

fn jdec(v: &Value) -> Decimal {
    Decimal::from_str_exact(&v.to_string()).unwrap()
}

#[tokio::test]
async fn analytics_publishes_contract_candles_from_the_feed() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let bus = env.bus(Identity::Operator).await;
    let feed = env.bus(Identity::Feed).await;
    let mut sub = bus
        .subscribe(format!("{}market.EURUSD.1m", env.prefix))
        .await
        .unwrap();
    let symbols = vec![eur(), Symbol::parse("GBPUSD").unwrap()];
    tokio::spawn(run_analytics(
        env.bus(Identity::Analytics).await,
        symbols.clone(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::spawn(run_feed(
        feed.clone(),
        SyntheticFeed::new(&symbols, 42),
        symbols.len(),
        200.0,
        shutdown.clone(),
    ));
    let mut prev_volume = Decimal::ZERO;
    let mut prev_start = 0;
    for _ in 0..20 {
        let v = next_json(&mut sub).await;
        assert_eq!(
            keys(&v),
            [
                "close",
                "closed",
                "end",
                "high",
                "low",
                "open",
                "start",
                "symbol",
                "timeframe",
                "volume"
            ]
        );
        assert_eq!(v["symbol"], "EURUSD");
        assert_eq!(v["timeframe"], "1m");
        let (start, end) = (v["start"].as_i64().unwrap(), v["end"].as_i64().unwrap());
        assert_eq!(start % MIN, 0, "start aligned to the minute");
        assert_eq!(end, start + MIN);
        assert!(start > 1_700_000_000_000);
        let (o, h, l, c) = (
            jdec(&v["open"]),
            jdec(&v["high"]),
            jdec(&v["low"]),
            jdec(&v["close"]),
        );
        assert!(l <= o && o <= h && l <= c && c <= h, "{v}");
        let volume = jdec(&v["volume"]);
        assert!(volume >= Decimal::ONE);
        if v["closed"] == false {
            // Updates of one open candle count up. Forming candles are coalesced (at most
            // every 100 ms), so a new minute's first update may already count several ticks:
            // the count starts afresh with each candle.
            if start != prev_start {
                prev_volume = Decimal::ZERO;
                prev_start = start;
            }
            assert!(volume > prev_volume, "{v}");
            prev_volume = volume;
        }
    }
    shutdown.cancel();
}

#[tokio::test]
async fn analytics_publishes_indicators_for_closed_candles() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let bus = env.bus(Identity::Operator).await;
    let feed = env.bus(Identity::Feed).await;
    let mut candles = bus
        .subscribe(format!("{}market.EURUSD.1m", env.prefix))
        .await
        .unwrap();
    let mut indicators = bus
        .subscribe(format!("{}indicators.*.EURUSD", env.prefix))
        .await
        .unwrap();
    // Ticks one minute apart, stamped two days ahead so that the service's close timer (on the
    // wall clock) leaves them alone: each tick closes the previous minute.
    let config = AnalyticsConfig {
        timeframes: vec![Timeframe::M1],
        max_future_ms: None,
        ..AnalyticsConfig::new(vec![eur()])
    };
    tokio::spawn(run_analytics_with(
        env.bus(Identity::Analytics).await,
        config,
        shutdown.clone(),
    ));
    let base = Timeframe::D1.align(suho_messaging::now_ms()) + 2 * Timeframe::D1.duration_ms();
    let prices: Vec<Decimal> = (0..40)
        .map(|i| Decimal::new(108_500 + (i * 37 % 23) - 11 + i, 5))
        .collect();
    let publish = |i: usize| {
        let bus = feed.clone();
        let t = Tick::new(
            eur(),
            prices[i],
            prices[i],
            base + i64::try_from(i).unwrap() * MIN + 5 * SEC,
            "test",
        )
        .unwrap();
        async move {
            bus.publish(suho_domain::subject::tick(bus.prefix(), eur()), &t)
                .await
                .unwrap();
        }
    };
    // Wait until the service listens (repeating the first tick is harmless).
    let mut listening = false;
    for _ in 0..40 {
        publish(0).await;
        if tokio::time::timeout(Duration::from_millis(250), candles.next())
            .await
            .is_ok()
        {
            listening = true;
            break;
        }
    }
    assert!(listening, "the analytics service never answered");
    for i in 1..prices.len() {
        publish(i).await;
    }
    // 39 closed candles: SMA/EMA/Bollinger from the 20th, RSI from the 15th, ATR from the
    // 14th, MACD from the 34th.
    let mut got: HashMap<String, Vec<Value>> = HashMap::new();
    // All that is expected below (26 + 20 + 20 + 6 + 25 + 20), then a moment for any extra.
    while got.values().map(Vec::len).sum::<usize>() < 117 {
        let v = next_json(&mut indicators).await;
        assert_eq!(
            keys(&v),
            ["indicator", "symbol", "timeframe", "timestamp", "value"]
        );
        assert_eq!(v["symbol"], "EURUSD");
        assert_eq!(v["timeframe"], "1m");
        let ts = v["timestamp"].as_i64().unwrap();
        assert_eq!((ts - base) % MIN, 0, "timestamp is the candle start");
        got.entry(v["indicator"].as_str().unwrap().to_string())
            .or_default()
            .push(v);
    }
    // Give an extra one a moment to show up, then count.
    while let Ok(Some(msg)) =
        tokio::time::timeout(Duration::from_millis(300), indicators.next()).await
    {
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        got.entry(v["indicator"].as_str().unwrap().to_string())
            .or_default()
            .push(v);
    }
    let counts: BTreeMap<&str, usize> = got.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("atr", 26),
            ("bollinger", 20),
            ("ema", 20),
            ("macd", 6),
            ("rsi", 25),
            ("sma", 20)
        ])
    );
    for v in &got["macd"] {
        assert_eq!(keys(&v["value"]), ["histogram", "macd", "signal"]);
    }
    for v in &got["bollinger"] {
        let b = &v["value"];
        assert_eq!(keys(b), ["lower", "middle", "upper"]);
        assert!(b["lower"].as_f64() <= b["middle"].as_f64());
        assert!(b["middle"].as_f64() <= b["upper"].as_f64());
    }
    for v in &got["rsi"] {
        assert!((0.0..=100.0).contains(&v["value"].as_f64().unwrap()));
    }
    // The last SMA is the mean of the last 20 closed candles' closes (candles 19..=38).
    let last_sma = got["sma"].last().unwrap()["value"].as_f64().unwrap();
    let want: f64 = prices[19..39].iter().map(|&p| f(p)).sum::<f64>() / 20.0;
    assert!((last_sma - want).abs() < 1e-12, "{last_sma} vs {want}");
    shutdown.cancel();
}

#[tokio::test]
async fn forming_candles_are_coalesced_and_never_follow_their_closed_candle() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let bus = env.bus(Identity::Operator).await;
    let feed = env.bus(Identity::Feed).await;
    let mut sub = bus
        .subscribe(format!("{}market.EURUSD.1m", env.prefix))
        .await
        .unwrap();
    let config = AnalyticsConfig {
        timeframes: vec![Timeframe::M1],
        max_future_ms: None,
        update_interval: Some(Duration::from_millis(200)),
        ..AnalyticsConfig::new(vec![eur()])
    };
    tokio::spawn(run_analytics_with(
        env.bus(Identity::Analytics).await,
        config,
        shutdown.clone(),
    ));
    // Two days ahead, so the service's close timer (wall clock) leaves the minutes alone.
    let base = Timeframe::D1.align(suho_messaging::now_ms()) + 2 * Timeframe::D1.duration_ms();
    let send = |ts: i64, pipettes: i64| {
        let bus = feed.clone();
        let t = Tick::new(
            eur(),
            Decimal::new(pipettes, 5),
            Decimal::new(pipettes + 10, 5),
            ts,
            "test",
        )
        .unwrap();
        async move {
            bus.publish(suho_domain::subject::tick(bus.prefix(), eur()), &t)
                .await
                .unwrap();
        }
    };
    // Minute 0 until the service answers, so it is known to listen.
    let mut warm = 0;
    loop {
        send(base + warm, 108_000).await;
        warm += 1;
        if tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_ok()
        {
            break;
        }
        assert!(warm < 40, "the analytics service never answered");
    }
    // 2,000 ticks in minute 1, then one in minute 2 that closes it.
    for i in 0..2_000 {
        send(base + MIN + i, 108_000 + i % 50).await;
    }
    send(base + 2 * MIN, 108_100).await;
    let mut minute_one = Vec::new();
    let mut after_close = Vec::new();
    let mut closed_seen = false;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(800), sub.next()).await {
        let c: Candle = serde_json::from_slice(&msg.payload).unwrap();
        if c.start == base + MIN {
            if closed_seen {
                after_close.push(c);
            } else {
                closed_seen = c.closed;
                minute_one.push(c);
            }
        }
    }
    let last = minute_one.last().expect("minute 1 published");
    assert!(last.closed, "minute 1 ends with its closed candle");
    assert_eq!(last.volume, Decimal::from(2_000));
    assert!(
        after_close.is_empty(),
        "forming minute-1 candles after its close: {after_close:?}"
    );
    // The forming updates are the latest state at each flush, far fewer than the ticks.
    let forming = minute_one.len() - 1;
    assert!(forming < 100, "{forming} forming updates for 2,000 ticks");
    let volumes: Vec<Decimal> = minute_one.iter().map(|c| c.volume).collect();
    // Each update is a later state; a flush landing between the last tick of minute 1 and the
    // tick that closes it may send the final state twice (forming, then closed).
    assert!(volumes.windows(2).all(|w| w[0] <= w[1]), "{volumes:?}");
    assert!(
        volumes[..forming].windows(2).all(|w| w[0] < w[1]),
        "no forming update is sent twice: {volumes:?}"
    );
    shutdown.cancel();
}
