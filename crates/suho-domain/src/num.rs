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
    if let Some(f) = to_f64_exact_division(value) {
        return Ok(f);
    }
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
    if let Some(d) = from_f64_shortest_scale(value) {
        return Ok(d);
    }
    // `Display` for f64 prints the shortest digits that round-trip, never in exponent form.
    let text = format!("{value}");
    Decimal::from_str(&text)
        .map_err(|e| format!("number {value} is out of range for a decimal: {e}"))
}

/// Powers of ten that an `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];
/// 2^53: integers below it are exact in an `f64`.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// The fast path of [`to_f64`], with the same result: a mantissa below 2^53 and a power of
/// ten up to 10^22 are both exact in an `f64`, and IEEE division rounds correctly, so
/// `mantissa / 10^scale` is the `f64` nearest the decimal, which is what parsing its string
/// form gives. `None` outside that range.
fn to_f64_exact_division(value: &Decimal) -> Option<f64> {
    let mantissa = value.mantissa();
    let power = *POW10.get(usize::try_from(value.scale()).ok()?)?;
    if mantissa.unsigned_abs() >= 1 << 53 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // below 2^53: exact
    Some(mantissa as f64 / power)
}

/// The fast path of [`from_f64`], with the same result: the decimal with the fewest
/// fractional digits that reads back as `value`, which is the shortest round-trip form
/// `Display` prints (for a fixed magnitude, fewer fractional digits are fewer digits; of two
/// candidates at one scale, the rounded one is the nearer, as `Display` picks). A candidate
/// `m / 10^s` with `m` below 2^53 reads back as the correctly rounded quotient (see
/// [`to_f64_exact_division`]), so each check is exact. `None` for zero and for magnitudes
/// outside `1e-9..1e9`, left to the slow path.
fn from_f64_shortest_scale(value: f64) -> Option<Decimal> {
    let magnitude = value.abs();
    if !(1e-9..1e9).contains(&magnitude) {
        return None;
    }
    for (scale, &power) in (0u32..).zip(POW10.iter()) {
        let scaled = (magnitude * power).round();
        if scaled >= EXACT_INT {
            return None;
        }
        if scaled / power == magnitude {
            #[allow(clippy::cast_possible_truncation)] // an integer below 2^53
            let m = scaled as i64;
            return Some(Decimal::new(if value < 0.0 { -m } else { m }, scale));
        }
    }
    None
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
    use rand::{Rng, SeedableRng};
    use serde::{Deserialize, Serialize};

    /// The reference conversions the fast paths must agree with.
    fn to_f64_by_text(value: &Decimal) -> f64 {
        value.to_string().parse().expect("parses")
    }

    fn from_f64_by_text(value: f64) -> Decimal {
        Decimal::from_str(&format!("{value}")).expect("in range")
    }

    #[test]
    fn fast_conversions_agree_with_the_text_round_trip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut checked = 0;
        for _ in 0..200_000 {
            // Prices, volumes and money as they occur: up to 9 integer digits, 0 to 8
            // fractional digits, either sign.
            let scale = rng.gen_range(0..=8u32);
            let mantissa: i64 = rng.gen_range(-999_999_999_999_999..=999_999_999_999_999);
            let mantissa = mantissa / 10_i64.pow(rng.gen_range(0..=14));
            let d = Decimal::new(mantissa, scale);
            let f = to_f64(&d).expect("converts");
            assert_eq!(f.to_bits(), to_f64_by_text(&d).to_bits(), "{d}");
            if f != 0.0 {
                let back = from_f64(f).expect("converts");
                let reference = from_f64_by_text(f);
                assert_eq!(back, reference, "{f}");
                assert_eq!(back.scale(), reference.scale(), "{f}");
                checked += 1;
            }
        }
        // Arbitrary doubles, not only ones printed from short decimals.
        for _ in 0..200_000 {
            let f: f64 = rng.gen_range(-1e9..1e9) * 10f64.powi(-rng.gen_range(0..9));
            if f != 0.0 {
                let back = from_f64(f).expect("converts");
                let reference = from_f64_by_text(f);
                assert_eq!(back, reference, "{f}");
                assert_eq!(back.scale(), reference.scale(), "{f}");
            }
        }
        assert!(checked > 100_000);
    }

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
