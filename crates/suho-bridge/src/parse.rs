//! Turns a captured message (subject + payload) into a storable tick or closed candle, or says
//! why it is skipped. The edge between the wire and the store: everything the store sees has
//! been validated here.

use suho_domain::{Candle, Symbol, Tick, Timeframe};

/// Earliest plausible timestamp (2000-01-01T00:00:00Z, ms); older ones are rejected so a bad
/// clock cannot create thousands of partitions.
pub(crate) const MIN_TS_MS: i64 = 946_684_800_000;
/// How far ahead of the bridge's clock a timestamp may be (one day).
pub(crate) const MAX_FUTURE_MS: i64 = 86_400_000;
/// Longest accepted `source` (bytes).
const MAX_SOURCE_LEN: usize = 128;

/// What a captured message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// A valid tick, to be stored.
    Tick(Tick),
    /// A valid closed candle, to be stored.
    Candle(Candle),
    /// A valid candle that is still forming: acknowledged, not stored.
    OpenCandle,
    /// Not a storable message; the reason, for the log.
    Invalid(String),
}

/// Classifies a message captured on `subject` (with the configured `prefix`), judging
/// timestamps against `now_ms`.
#[must_use]
pub fn classify(prefix: &str, subject: &str, payload: &[u8], now_ms: i64) -> Classified {
    match classify_inner(prefix, subject, payload, now_ms) {
        Ok(c) => c,
        Err(reason) => Classified::Invalid(reason),
    }
}

fn classify_inner(
    prefix: &str,
    subject: &str,
    payload: &[u8],
    now_ms: i64,
) -> Result<Classified, String> {
    let rest = subject
        .strip_prefix(prefix)
        .ok_or_else(|| format!("subject {subject:?} lacks the prefix {prefix:?}"))?;
    let mut parts = rest.split('.');
    let (Some("market"), Some(sym), Some(kind), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "subject {subject:?} is not market.{{SYM}}.{{kind}}"
        ));
    };
    let subject_symbol = Symbol::parse(sym).map_err(|e| format!("subject symbol: {e}"))?;
    if subject_symbol.as_str() != sym {
        return Err(format!("subject symbol {sym:?} is not in canonical form"));
    }
    let plausible = |what: &str, ts: i64| {
        if (MIN_TS_MS..=now_ms.saturating_add(MAX_FUTURE_MS)).contains(&ts) {
            Ok(())
        } else {
            Err(format!("{what} {ts} is not a plausible epoch-ms time"))
        }
    };
    if kind == "tick" {
        let tick: Tick = serde_json::from_slice(payload).map_err(|e| format!("tick: {e}"))?;
        if tick.symbol != subject_symbol {
            return Err(format!(
                "tick symbol {} differs from the subject's {subject_symbol}",
                tick.symbol
            ));
        }
        plausible("timestamp", tick.timestamp)?;
        if tick.source.is_empty() || tick.source.len() > MAX_SOURCE_LEN {
            return Err(format!(
                "source must be 1..={MAX_SOURCE_LEN} bytes, got {}",
                tick.source.len()
            ));
        }
        if tick.source.contains('\0') {
            return Err("source contains a NUL character".into());
        }
        return Ok(Classified::Tick(tick));
    }
    let tf = Timeframe::parse(kind).map_err(|e| format!("subject kind: {e}"))?;
    let candle: Candle = serde_json::from_slice(payload).map_err(|e| format!("candle: {e}"))?;
    if candle.symbol != subject_symbol || candle.timeframe != tf {
        return Err(format!(
            "candle {} {} differs from the subject's {subject_symbol} {tf}",
            candle.symbol, candle.timeframe
        ));
    }
    if !candle.closed {
        return Ok(Classified::OpenCandle);
    }
    plausible("start", candle.start)?;
    if candle.start != tf.align(candle.start) || candle.end != candle.start + tf.duration_ms() {
        return Err(format!(
            "candle [{}, {}) is not an aligned {tf} bucket",
            candle.start, candle.end
        ));
    }
    candle.check().map_err(|e| format!("candle {e}"))?;
    Ok(Classified::Candle(candle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_704_931_234_567;

    fn c(subject: &str, v: &serde_json::Value) -> Classified {
        classify("p.", subject, v.to_string().as_bytes(), NOW)
    }

    #[test]
    fn ticks() {
        let t = json!({"symbol":"EUR/USD","bid":1.085,"ask":1.0852,"timestamp":NOW,"source":"s"});
        assert!(matches!(c("p.market.EURUSD.tick", &t), Classified::Tick(_)));
        assert!(matches!(
            c("p.market.GBPUSD.tick", &t),
            Classified::Invalid(_)
        ));
        assert!(matches!(
            c("market.EURUSD.tick", &t),
            Classified::Invalid(_)
        ));
        let old = json!({"symbol":"EURUSD","bid":1,"ask":1,"timestamp":5,"source":"s"});
        assert!(matches!(
            c("p.market.EURUSD.tick", &old),
            Classified::Invalid(_)
        ));
        assert!(matches!(
            classify("p.", "p.market.EURUSD.tick", b"{not json", NOW),
            Classified::Invalid(_)
        ));
    }

    #[test]
    fn candles() {
        let start = Timeframe::M1.align(NOW);
        let mut v = json!({"symbol":"EURUSD","timeframe":"1m","open":1.1,"high":1.2,"low":1.0,
            "close":1.15,"volume":4,"start":start,"end":start + 60_000,"closed":true});
        assert!(matches!(c("p.market.EURUSD.1m", &v), Classified::Candle(_)));
        assert!(matches!(
            c("p.market.EURUSD.5m", &v),
            Classified::Invalid(_)
        ));
        v["closed"] = json!(false);
        assert_eq!(c("p.market.EURUSD.1m", &v), Classified::OpenCandle);
        v["closed"] = json!(true);
        v["start"] = json!(start + 1);
        assert!(matches!(
            c("p.market.EURUSD.1m", &v),
            Classified::Invalid(_)
        ));
        assert!(matches!(
            c("p.market.EURUSD.price", &v),
            Classified::Invalid(_)
        ));
    }
}
