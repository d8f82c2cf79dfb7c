//! Serde helpers for exact decimals that travel as JSON numbers.
//!
//! Prices, volumes and money are [`Decimal`] in code and plain JSON numbers on the wire. Use
//! `#[serde(with = "crate::num")]` on a `Decimal` field and
//! `#[serde(default, with = "crate::num::option", skip_serializing_if = "Option::is_none")]` on an
//! `Option<Decimal>` field.
//!
//! Writing goes through the decimal's string form parsed as `f64`, and serde_json prints the
//! shortest form that round-trips, so `1.0851` is written as `1.0851` (and an integral `5` as
//! `5.0`, which every JSON reader takes as the number 5). Reading accepts JSON
//! floats (their shortest decimal form is parsed back, which recovers the written digits),
//! integers and numeric strings (`"1.0851"`, `"1e-5"`); anything else is an error naming the
//! input. Because floats are recovered through their printed form, this also works when serde
//! buffers the value (untagged enums, `#[serde(flatten)]`).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Writes a decimal as a JSON number.
///
/// # Errors
/// Fails only if the serializer fails or the decimal cannot be represented as an `f64`
/// (cannot happen for a valid `Decimal`).
pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    let f = to_f64(value).map_err(serde::ser::Error::custom)?;
    serializer.serialize_f64(f)
}

/// Reads a decimal from a JSON number or a numeric string.
///
/// # Errors
/// Fails on non-numeric input, NaN or infinity, and numbers outside the range of `Decimal`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    deserializer.deserialize_any(DecimalVisitor)
}

/// The `f64` written on the wire for a decimal: its string form parsed as `f64`.
///
/// # Errors
/// Returns a message if the string form does not parse (not expected for a valid `Decimal`).
pub fn to_f64(value: &Decimal) -> Result<f64, String> {
    let text = value.to_string();
    text.parse::<f64>()
        .map_err(|e| format!("decimal {text} is not representable as a JSON number: {e}"))
}

/// Parses a decimal from text in plain (`1.0851`) or scientific (`1e-5`) notation.
///
/// # Errors
/// Returns a message naming the input when it is not a finite number within `Decimal`'s range.
pub fn parse_decimal(text: &str) -> Result<Decimal, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("invalid decimal number: empty string".to_owned());
    }
    if let Ok(d) = Decimal::from_str(t) {
        return Ok(d);
    }
    if t.contains(['e', 'E']) {
        if let Ok(d) = Decimal::from_scientific(t) {
            return Ok(d);
        }
    }
    Err(format!("invalid decimal number {text:?}"))
}

/// Converts an `f64` read from JSON into the decimal that was written.
///
/// # Errors
/// Returns a message for NaN, infinity and values outside `Decimal`'s range.
pub fn from_f64(value: f64) -> Result<Decimal, String> {
    if !value.is_finite() {
        return Err(format!("invalid decimal number {value}: not finite"));
    }
    // `Display` for f64 prints the shortest digits that round-trip, never in exponent form.
    let text = format!("{value}");
    Decimal::from_str(&text)
        .map_err(|e| format!("number {value} is out of range for a decimal: {e}"))
}

struct DecimalVisitor;

impl<'de> Visitor<'de> for DecimalVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal number (JSON number or numeric string)")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        from_f64(v).map_err(E::custom)
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Decimal, E> {
        // f32 -> its own shortest form, not the widened f64 digits.
        if !v.is_finite() {
            return Err(E::custom(format!("invalid decimal number {v}: not finite")));
        }
        parse_decimal(&format!("{v}")).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Decimal, E> {
        parse_decimal(&v.to_string()).map_err(E::custom)
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Decimal, E> {
        parse_decimal(&v.to_string()).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        parse_decimal(v).map_err(E::custom)
    }
}

/// The same conversions for `Option<Decimal>`: `None` is JSON `null` (or an absent field when
/// combined with `#[serde(default, skip_serializing_if = "Option::is_none")]`).
pub mod option {
    use std::fmt;

    use rust_decimal::Decimal;
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    /// Writes `Some(d)` as a JSON number and `None` as `null`.
    ///
    /// # Errors
    /// Fails only if the serializer fails.
    pub fn serialize<S: Serializer>(
        value: &Option<Decimal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => super::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Reads `null` as `None` and a number or numeric string as `Some`.
    ///
    /// # Errors
    /// Fails on anything that is neither `null` nor a valid decimal.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        deserializer.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Decimal>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("null or a decimal number")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct W {
        #[serde(with = "crate::num")]
        v: Decimal,
        #[serde(
            default,
            with = "crate::num::option",
            skip_serializing_if = "Option::is_none"
        )]
        o: Option<Decimal>,
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test decimal")
    }

    fn roundtrip(json_number: &str, expected: &str) {
        let text = format!("{{\"v\":{json_number}}}");
        let w: W = serde_json::from_str(&text).expect("parse");
        assert_eq!(w.v, dec(expected), "value of {json_number}");
        assert_eq!(w.v.to_string(), expected, "digits of {json_number}");
        let back = serde_json::to_string(&w).expect("write");
        let again: W = serde_json::from_str(&back).expect("reparse");
        assert_eq!(again, w);
    }

    #[test]
    fn float_literals_round_trip_exactly() {
        roundtrip("1.0851", "1.0851");
        roundtrip("0.1", "0.1");
        roundtrip("0.0002", "0.0002");
        roundtrip("123456.78", "123456.78");
        roundtrip("1e-5", "0.00001");
        roundtrip("1.085", "1.085");
    }

    #[test]
    fn integers_round_trip_exactly() {
        roundtrip("0", "0");
        roundtrip("42", "42");
        roundtrip("-17", "-17");
        roundtrip("100000", "100000");
    }

    #[test]
    fn serialized_text_is_the_shortest_number() {
        for (d, text) in [
            ("1.0851", "1.0851"),
            ("0.1", "0.1"),
            ("0.0002", "0.0002"),
            ("123456.78", "123456.78"),
            ("0.00001", "0.00001"),
            ("1.0850", "1.085"),
            ("5", "5.0"),
        ] {
            let w = W { v: dec(d), o: None };
            assert_eq!(
                serde_json::to_string(&w).expect("write"),
                format!("{{\"v\":{text}}}")
            );
        }
        let w = W {
            v: dec("2.5"),
            o: Some(dec("0.1")),
        };
        assert_eq!(
            serde_json::to_string(&w).expect("write"),
            r#"{"v":2.5,"o":0.1}"#
        );
    }

    #[test]
    fn numeric_strings_are_accepted() {
        let w: W = serde_json::from_str(r#"{"v":"1.0851","o":"1e-5"}"#).expect("parse");
        assert_eq!(w.v, dec("1.0851"));
        assert_eq!(w.o, Some(dec("0.00001")));
    }

    #[test]
    fn option_null_and_missing_are_none() {
        let a: W = serde_json::from_str(r#"{"v":1,"o":null}"#).expect("parse");
        let b: W = serde_json::from_str(r#"{"v":1}"#).expect("parse");
        assert_eq!(a.o, None);
        assert_eq!(b.o, None);
    }

    #[test]
    fn garbage_is_rejected_with_a_clear_error() {
        for bad in [
            r#"{"v":"abc"}"#,
            r#"{"v":"NaN"}"#,
            r#"{"v":"inf"}"#,
            r#"{"v":""}"#,
            r#"{"v":true}"#,
            r#"{"v":null}"#,
            r#"{"v":[1]}"#,
            r#"{"v":1e300}"#,
        ] {
            let err = serde_json::from_str::<W>(bad).expect_err(bad);
            assert!(!err.to_string().is_empty());
        }
        let err = serde_json::from_str::<W>(r#"{"v":"abc"}"#).expect_err("abc");
        assert!(err.to_string().contains("\"abc\""), "{err}");
    }

    #[test]
    fn non_finite_floats_are_rejected() {
        assert!(from_f64(f64::NAN).is_err());
        assert!(from_f64(f64::INFINITY).is_err());
        assert!(from_f64(f64::NEG_INFINITY).is_err());
    }

    #[test]
    fn buffered_values_still_parse_exactly() {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum U {
            W(W),
        }
        let U::W(w) = serde_json::from_str(r#"{"v":1.0851}"#).expect("parse");
        assert_eq!(w.v, dec("1.0851"));
    }
}
