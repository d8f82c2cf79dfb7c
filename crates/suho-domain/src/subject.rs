//! NATS subject builders for the market domain.
//!
//! Every builder takes a `prefix` that is prepended verbatim: `""` in production, something
//! like `"t123."` to isolate a test run on a shared server. Name tokens passed in (indicator
//! type, strategy, alert type, service) are used as given; callers must not pass `.`, `*`, `>`
//! or whitespace in them.

use crate::market::Timeframe;
use crate::symbol::Symbol;

/// `market.{SYM}.tick`.
#[must_use]
pub fn tick(prefix: &str, symbol: Symbol) -> String {
    format!("{prefix}market.{symbol}.tick")
}

/// `market.{SYM}.{tf}`, e.g. `market.EURUSD.1m`.
#[must_use]
pub fn candle(prefix: &str, symbol: Symbol, timeframe: Timeframe) -> String {
    format!("{prefix}market.{symbol}.{timeframe}")
}

/// `market.{SYM}.price` (request/reply).
#[must_use]
pub fn price(prefix: &str, symbol: Symbol) -> String {
    format!("{prefix}market.{symbol}.price")
}

/// `indicators.{type}.{SYM}`.
#[must_use]
pub fn indicator(prefix: &str, indicator: &str, symbol: Symbol) -> String {
    format!("{prefix}indicators.{indicator}.{symbol}")
}

/// `signals.{strategy}.{SYM}`.
#[must_use]
pub fn signal(prefix: &str, strategy: &str, symbol: Symbol) -> String {
    format!("{prefix}signals.{strategy}.{symbol}")
}

/// `alerts.market.{type}`.
#[must_use]
pub fn alert(prefix: &str, kind: &str) -> String {
    format!("{prefix}alerts.market.{kind}")
}

/// `system.health.{service}`.
#[must_use]
pub fn health(prefix: &str, service: &str) -> String {
    format!("{prefix}system.health.{service}")
}

/// `market.*.tick`: every symbol's ticks.
#[must_use]
pub fn all_ticks(prefix: &str) -> String {
    format!("{prefix}market.*.tick")
}

/// `market.*.price`: every symbol's price requests.
#[must_use]
pub fn all_prices(prefix: &str) -> String {
    format!("{prefix}market.*.price")
}

/// `market.*.{tf}`: every symbol's candles of one timeframe.
#[must_use]
pub fn all_candles(prefix: &str, timeframe: Timeframe) -> String {
    format!("{prefix}market.*.{timeframe}")
}

/// `system.health.*`: every service's heartbeats.
#[must_use]
pub fn all_health(prefix: &str) -> String {
    format!("{prefix}system.health.*")
}

/// The data bridge's JetStream stream, before [`jetstream_name`] adds a prefix.
pub const MARKET_STREAM: &str = "MARKET";

/// The name of a JetStream object (a stream, a consumer) for a subject prefix: `base`, with
/// `_{suffix}` appended when the prefix is not empty, where the suffix is the prefix's
/// alphanumerics with anything else as `_`, trimmed of `_` (`t1a2b3.` gives `MARKET_t1a2b3`).
/// JetStream names may not hold `.`, `*` or `>`.
#[must_use]
pub fn jetstream_name(base: &str, prefix: &str) -> String {
    let suffix: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let suffix = suffix.trim_matches('_');
    if suffix.is_empty() {
        base.to_string()
    } else {
        format!("{base}_{suffix}")
    }
}

/// The symbol of a `{prefix}market.{SYM}.{kind}` subject, e.g. `EURUSD` from
/// `market.EURUSD.price`. `None` if the prefix does not match, the subject does not have exactly
/// three tokens after it, or the symbol token is not in canonical form.
#[must_use]
pub fn symbol_of_market_subject(prefix: &str, subject: &str) -> Option<Symbol> {
    let rest = subject.strip_prefix(prefix)?;
    let mut parts = rest.split('.');
    let (Some("market"), Some(sym), Some(kind), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if kind.is_empty() {
        return None;
    }
    let symbol = Symbol::parse(sym).ok()?;
    (symbol.as_str() == sym).then_some(symbol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_symbol() {
        let eur = Symbol::parse("EURUSD").expect("sym");
        assert_eq!(
            symbol_of_market_subject("", "market.EURUSD.price"),
            Some(eur)
        );
        assert_eq!(
            symbol_of_market_subject("t1.", "t1.market.EURUSD.tick"),
            Some(eur)
        );
        assert_eq!(symbol_of_market_subject("t1.", "market.EURUSD.tick"), None);
        assert_eq!(symbol_of_market_subject("", "market.eurusd.tick"), None);
        assert_eq!(symbol_of_market_subject("", "market.EURUSD"), None);
        assert_eq!(symbol_of_market_subject("", "market.EURUSD.tick.x"), None);
        assert_eq!(symbol_of_market_subject("", "signals.EURUSD.tick"), None);
        assert_eq!(symbol_of_market_subject("", "market.*.tick"), None);
    }
}
