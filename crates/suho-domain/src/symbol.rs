//! The validated currency-pair [`Symbol`].
//!
//! Canonical form is six upper-case ASCII letters (`EURUSD`), used in every subject, topic key
//! and command; the display form is `EUR/USD` (kept by the market tick's `symbol` field). Input
//! accepts both forms, a `-` separator and any case; anything else is a [`SymbolError`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The fourteen major FX pairs the platform streams by default, canonical form.
pub const MAJOR_FX: [&str; 14] = [
    "EURUSD", "GBPUSD", "USDJPY", "USDCHF", "AUDUSD", "USDCAD", "NZDUSD", "EURGBP", "EURJPY",
    "GBPJPY", "EURCHF", "AUDJPY", "EURAUD", "GBPCHF",
];

/// [`MAJOR_FX`] as parsed symbols, in the same order.
#[must_use]
pub fn major_fx() -> Vec<Symbol> {
    MAJOR_FX
        .iter()
        .filter_map(|s| Symbol::parse(s).ok())
        .collect()
}

/// A currency pair: always six upper-case ASCII letters, base currency then quote currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Symbol([u8; 6]);

/// An input that is not a currency pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid symbol {input:?}: expected six letters such as EURUSD or EUR/USD")]
pub struct SymbolError {
    input: String,
}

impl SymbolError {
    fn new(input: &str) -> Self {
        // Keep errors bounded even for hostile input.
        let input: String = input.chars().take(64).collect();
        Self { input }
    }

    /// The rejected input (truncated to 64 characters).
    #[must_use]
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl Symbol {
    /// Parses `EURUSD`, `EUR/USD`, `EUR-USD` in any case, surrounding whitespace trimmed.
    ///
    /// # Errors
    /// [`SymbolError`] naming the input for anything else: wrong length, digits, other
    /// separators, non-ASCII letters.
    pub fn parse(input: &str) -> Result<Symbol, SymbolError> {
        let t = input.trim().as_bytes();
        let letters: [u8; 6] = match t.len() {
            6 => [t[0], t[1], t[2], t[3], t[4], t[5]],
            7 if t[3] == b'/' || t[3] == b'-' => [t[0], t[1], t[2], t[4], t[5], t[6]],
            _ => return Err(SymbolError::new(input)),
        };
        if !letters.iter().all(u8::is_ascii_alphabetic) {
            return Err(SymbolError::new(input));
        }
        Ok(Symbol(letters.map(|b| b.to_ascii_uppercase())))
    }

    /// Canonical form, e.g. `EURUSD`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Always ASCII by construction.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Display form, e.g. `EUR/USD`.
    #[must_use]
    pub fn display(&self) -> String {
        format!("{}/{}", self.base(), self.quote())
    }

    /// Base currency, e.g. `EUR`.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.as_str()[..3]
    }

    /// Quote currency, e.g. `USD`.
    #[must_use]
    pub fn quote(&self) -> &str {
        &self.as_str()[3..]
    }

    /// Decimal places a price of this pair is quoted with: 3 for yen pairs, else 5.
    #[must_use]
    pub fn digits(&self) -> u32 {
        if self.quote() == "JPY" {
            3
        } else {
            5
        }
    }

    /// One pip: 0.01 for yen pairs, else 0.0001 (ten points of [`Symbol::digits`]).
    #[must_use]
    pub fn pip(&self) -> rust_decimal::Decimal {
        rust_decimal::Decimal::new(1, self.digits() - 1)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Symbol({})", self.as_str())
    }
}

impl FromStr for Symbol {
    type Err = SymbolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Symbol::parse(s)
    }
}

impl TryFrom<&str> for Symbol {
    type Error = SymbolError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Symbol::parse(s)
    }
}

impl AsRef<str> for Symbol {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for Symbol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Symbol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a currency pair such as \"EURUSD\" or \"EUR/USD\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Symbol, E> {
                Symbol::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// A symbol is written in its canonical form, six upper-case letters.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Symbol {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Z]{6}$"))
            .description(Some(
                "A currency pair in canonical form: base then quote currency, six upper-case \
                 letters. Inputs also accept the display form `EUR/USD` and any case.",
            ))
            .examples(["EURUSD"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Symbol {}

/// Serde helper for fields kept in display form: writes `"EUR/USD"`, reads any accepted form.
///
/// Use as `#[serde(with = "crate::symbol::display_form")]`.
pub mod display_form {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Symbol;

    /// Writes the symbol as `EUR/USD`.
    ///
    /// # Errors
    /// Fails only if the serializer fails.
    pub fn serialize<S: Serializer>(symbol: &Symbol, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&symbol.display())
    }

    /// Reads `EUR/USD`, `EURUSD` or any other form [`Symbol::parse`] accepts.
    ///
    /// # Errors
    /// Fails with the [`super::SymbolError`] message when the input is not a symbol.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Symbol, D::Error> {
        Symbol::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_and_pips() {
        let s = |t: &str| Symbol::parse(t).expect("symbol");
        assert_eq!(
            (s("EURUSD").digits(), s("EURUSD").pip().to_string()),
            (5, "0.0001".into())
        );
        assert_eq!(
            (s("GBPJPY").digits(), s("GBPJPY").pip().to_string()),
            (3, "0.01".into())
        );
    }

    #[test]
    fn accepted_forms() {
        for s in [
            "EURUSD",
            "EUR/USD",
            "eur/usd",
            "EUR-USD",
            "eurusd",
            "  EurUsd \n",
        ] {
            let sym = Symbol::parse(s).expect(s);
            assert_eq!(sym.as_str(), "EURUSD");
            assert_eq!(sym.display(), "EUR/USD");
            assert_eq!(sym.base(), "EUR");
            assert_eq!(sym.quote(), "USD");
        }
    }

    #[test]
    fn rejected_forms_name_the_input() {
        for s in [
            "", "EUR", "EURUSDX", "EUR1SD", "EUR_USD", "EUR USD", "EUR//USD", "ÉURUSD", "EU/RUSD",
            "EURUS/",
        ] {
            let err = Symbol::parse(s).expect_err(s);
            assert!(err.to_string().contains(&format!("{s:?}")), "{err}");
        }
    }

    #[test]
    fn majors_all_parse() {
        let majors = major_fx();
        assert_eq!(majors.len(), 14);
        for (sym, s) in majors.iter().zip(MAJOR_FX) {
            assert_eq!(sym.as_str(), s);
        }
    }

    #[test]
    fn serde_forms() {
        let s: Symbol = serde_json::from_str("\"EUR/USD\"").expect("parse");
        assert_eq!(serde_json::to_string(&s).expect("write"), "\"EURUSD\"");
        assert!(serde_json::from_str::<Symbol>("\"EUR.USD\"").is_err());
        assert_eq!(format!("{s:?}"), "Symbol(EURUSD)");
    }
}
