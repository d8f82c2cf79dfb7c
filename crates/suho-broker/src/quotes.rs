//! The latest quotes an account has seen, and currency conversion through them.
//!
//! Conversion rule: an amount in currency `X` becomes account currency `A` at the **mid** of
//! the latest quote, so one rate serves profits and losses alike and no side is favoured:
//! `X == A` is the amount itself; if `XA` is quoted, `amount × mid(XA)`; else if `AX` is quoted,
//! `amount / mid(AX)` (a division, not a multiplication by a rounded inverse); otherwise
//! [`ValuationError::NoConversion`]. There are no two-hop crosses. Results are exact decimals,
//! unrounded; only realised profit is rounded (see [`suho_domain::money::round_cents`]).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use suho_domain::{Symbol, Tick};

/// A position or amount that cannot be valued in the account currency.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValuationError {
    /// The symbol has never been quoted to this account.
    #[error("no quote for {0} yet")]
    NoQuote(Symbol),
    /// Neither `{from}{to}` nor `{to}{from}` has been quoted.
    #[error("no conversion from {from} to {to}: neither {from}{to} nor {to}{from} is quoted")]
    NoConversion {
        /// Currency of the amount.
        from: String,
        /// Account currency.
        to: String,
    },
    /// A product or sum left the range of `Decimal`.
    #[error("arithmetic overflow while {0}")]
    Overflow(&'static str),
}

/// The latest [`Tick`] per symbol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotes {
    latest: BTreeMap<Symbol, Tick>,
}

impl Quotes {
    /// No quotes.
    #[must_use]
    pub fn new() -> Quotes {
        Quotes::default()
    }

    /// Keeps `tick` unless a newer one (by feed timestamp) is already held; `true` when kept.
    pub fn update(&mut self, tick: &Tick) -> bool {
        match self.latest.get(&tick.symbol) {
            Some(held) if held.timestamp > tick.timestamp => false,
            _ => {
                self.latest.insert(tick.symbol, tick.clone());
                true
            }
        }
    }

    /// Takes every tick of `latest` this one lacks: of a symbol not held, or other than the
    /// one held and not older.
    pub fn catch_up(&mut self, latest: &Quotes) {
        for t in latest.iter() {
            let stale = self
                .latest
                .get(&t.symbol)
                .is_none_or(|held| held != t && held.timestamp <= t.timestamp);
            if stale {
                self.latest.insert(t.symbol, t.clone());
            }
        }
    }

    /// The latest tick of `symbol`.
    #[must_use]
    pub fn get(&self, symbol: Symbol) -> Option<&Tick> {
        self.latest.get(&symbol)
    }

    /// Every held tick, by symbol.
    pub fn iter(&self) -> impl Iterator<Item = &Tick> {
        self.latest.values()
    }

    /// `amount` in currency `from`, expressed in currency `to` (see the module docs).
    ///
    /// # Errors
    /// [`ValuationError::NoConversion`] when no direct or inverse pair is quoted,
    /// [`ValuationError::Overflow`] when the result leaves `Decimal`'s range.
    pub fn convert(
        &self,
        amount: Decimal,
        from: &str,
        to: &str,
    ) -> Result<Decimal, ValuationError> {
        if from == to {
            return Ok(amount);
        }
        let quoted = |a: &str, b: &str| pair(a, b).and_then(|s| self.get(s)).map(|t| t.mid);
        let overflow = ValuationError::Overflow("converting currency");
        if let Some(mid) = quoted(from, to) {
            amount.checked_mul(mid).ok_or(overflow)
        } else if let Some(mid) = quoted(to, from) {
            amount.checked_div(mid).ok_or(overflow)
        } else {
            Err(ValuationError::NoConversion {
                from: from.to_owned(),
                to: to.to_owned(),
            })
        }
    }
}

/// The symbols a conversion between currencies `a` and `b` reads: the pairs `ab` and `ba`,
/// whichever is quoted (see [`Quotes::convert`]).
pub fn pairs(a: &str, b: &str) -> impl Iterator<Item = Symbol> {
    [pair(a, b), pair(b, a)].into_iter().flatten()
}

/// The symbol `ab`, if there is one.
fn pair(a: &str, b: &str) -> Option<Symbol> {
    Symbol::parse(&format!("{a}{b}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    fn tick(sym: &str, bid: &str, ask: &str, ts: i64) -> Tick {
        Tick::new(Symbol::parse(sym).expect("sym"), d(bid), d(ask), ts, "test").expect("tick")
    }

    #[test]
    fn direct_inverse_identity_and_missing() {
        let mut q = Quotes::new();
        q.update(&tick("EURUSD", "1.10000", "1.10020", 1));
        q.update(&tick("USDJPY", "149.990", "150.010", 1));
        assert_eq!(q.convert(d("1000"), "EUR", "USD"), Ok(d("1100.10")));
        assert_eq!(q.convert(d("48000"), "JPY", "USD"), Ok(d("320")));
        assert_eq!(q.convert(d("7"), "USD", "USD"), Ok(d("7")));
        let err = q.convert(d("1"), "GBP", "USD").expect_err("no GBP");
        assert_eq!(
            err.to_string(),
            "no conversion from GBP to USD: neither GBPUSD nor USDGBP is quoted"
        );
    }

    #[test]
    fn a_conversion_reads_the_direct_and_the_inverse_pair() {
        let names = |a, b| pairs(a, b).map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(names("GBP", "USD"), ["GBPUSD", "USDGBP"]);
        assert_eq!(names("JPY", "USD"), ["JPYUSD", "USDJPY"]);
    }

    #[test]
    fn an_older_tick_does_not_replace_a_newer_one() {
        let mut q = Quotes::new();
        assert!(q.update(&tick("EURUSD", "1.1", "1.2", 10)));
        assert!(!q.update(&tick("EURUSD", "1.3", "1.4", 9)));
        assert!(q.update(&tick("EURUSD", "1.5", "1.6", 10)));
        let held = q.get(Symbol::parse("EURUSD").expect("sym")).expect("held");
        assert_eq!(held.bid, d("1.5"));
        assert_eq!(q.iter().count(), 1);
    }
}
