//! Crafted candle series for the unit tests.

use std::str::FromStr;

use rust_decimal::Decimal;
use suho_domain::{Candle, Symbol, Tick, Timeframe};

/// 2024-03-15 10:00:00 UTC.
pub const TEN: i64 = 1_710_496_800_000;
/// One minute in ms.
pub const MIN: i64 = 60_000;

pub fn eur() -> Symbol {
    Symbol::parse("EURUSD").expect("symbol")
}

/// A price rounded to 5 decimals.
pub fn px(x: f64) -> Decimal {
    Decimal::from_str(&format!("{x:.5}")).expect("decimal")
}

/// One closed 1m candle starting `i` minutes after [`TEN`].
pub fn candle(i: usize, open: f64, high: f64, low: f64, close: f64) -> Candle {
    let start = TEN + MIN * i64::try_from(i).expect("index");
    Candle {
        symbol: eur(),
        timeframe: Timeframe::M1,
        open: px(open),
        high: px(high),
        low: px(low),
        close: px(close),
        volume: Decimal::TEN,
        start,
        end: start + MIN,
        closed: true,
    }
}

/// Consecutive closed 1m candles with the given closes; each opens at the previous close.
pub fn candles(closes: &[f64]) -> Vec<Candle> {
    let mut prev = closes.first().copied().unwrap_or(1.0);
    closes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let c = candle(i, prev, prev.max(c), prev.min(c), c);
            prev = f64::from_str(&c.close.to_string()).expect("f64");
            c
        })
        .collect()
}

/// A tick whose mid is `mid` (bid = ask).
pub fn tick(ts: i64, mid: f64) -> Tick {
    Tick::new(eur(), px(mid), px(mid), ts, "test").expect("tick")
}
