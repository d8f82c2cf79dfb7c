//! Request bodies read field by field, so every error names its field. The body must be
//! a JSON object; each accessor says what it wants of one field.

use axum::body::Bytes;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::ApiError;

/// A JSON object body.
pub struct Body(Map<String, Value>);

impl Body {
    /// Parses `bytes` as a JSON object.
    ///
    /// # Errors
    /// Not JSON, or JSON but not an object.
    pub fn parse(bytes: &Bytes) -> Result<Body, ApiError> {
        if bytes.is_empty() {
            return Err(ApiError::MalformedJson(
                "the request body is empty; a JSON object is required".into(),
            ));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Body(map)),
            Ok(_) => Err(ApiError::MalformedJson(
                "the request body must be a JSON object".into(),
            )),
            Err(e) => Err(ApiError::MalformedJson(format!(
                "the request body is not valid JSON: {e}"
            ))),
        }
    }

    /// Refuses any field not in `known`: a field the API does not know is bad input.
    ///
    /// # Errors
    /// The first unknown field, by name.
    pub fn only(&self, known: &[&'static str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::invalid(
                k.clone(),
                format!("unknown field (known: {})", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    /// The whole object.
    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }

    fn get(&self, field: &'static str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    /// A required string.
    ///
    /// # Errors
    /// Missing or not a string.
    pub fn string(&self, field: &'static str) -> Result<&str, ApiError> {
        match self.get(field) {
            None => Err(ApiError::invalid(field, "is required")),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(ApiError::invalid(field, "must be a string")),
        }
    }

    /// A required list of strings.
    ///
    /// # Errors
    /// Missing, not a list, or an item not a string.
    pub fn strings(&self, field: &'static str) -> Result<Vec<&str>, ApiError> {
        match self.get(field) {
            None => Err(ApiError::invalid(field, "is required")),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| ApiError::invalid(field, "must be a list of strings"))
                })
                .collect(),
            Some(_) => Err(ApiError::invalid(field, "must be a list of strings")),
        }
    }

    /// A required text of `min..=max` characters (Unicode scalar values, as JSON Schema's
    /// `minLength` and `maxLength` count them) and no control character: see [`PRINTABLE`].
    ///
    /// # Errors
    /// Missing, not a string, too short or long, or holding a control character.
    pub fn text(&self, field: &'static str, min: usize, max: usize) -> Result<&str, ApiError> {
        let s = self.string(field)?;
        check_text(field, s, min, max)?;
        Ok(s)
    }

    /// An optional [`Body::text`].
    ///
    /// # Errors
    /// Present and not such a text.
    pub fn opt_text(
        &self,
        field: &'static str,
        min: usize,
        max: usize,
    ) -> Result<Option<&str>, ApiError> {
        let s = self.opt_string(field)?;
        if let Some(s) = s {
            check_text(field, s, min, max)?;
        }
        Ok(s)
    }

    /// An optional price: positive, at most [`MAX_PRICE`], on the step [`PRICE_STEP`].
    ///
    /// # Errors
    /// Present and not such a price.
    pub fn opt_price(&self, field: &'static str) -> Result<Option<Decimal>, ApiError> {
        let Some(p) = self.opt_decimal(field)? else {
            return Ok(None);
        };
        if p <= Decimal::ZERO || p > MAX_PRICE || !(p % PRICE_STEP).is_zero() {
            return Err(ApiError::invalid(
                field,
                format!("must be a positive price, at most {MAX_PRICE}, on the step {PRICE_STEP}"),
            ));
        }
        Ok(Some(p))
    }

    /// An optional string.
    ///
    /// # Errors
    /// Present but not a string.
    pub fn opt_string(&self, field: &'static str) -> Result<Option<&str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(field, "must be a string")),
        }
    }

    /// An optional exact decimal: a JSON number (a string is refused, as the document says),
    /// read from its text.
    ///
    /// # Errors
    /// Present but not a number a decimal holds (28 significant digits).
    pub fn opt_decimal(&self, field: &'static str) -> Result<Option<Decimal>, ApiError> {
        let text = match self.get(field) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(ApiError::invalid(field, "must be a number")),
        };
        suho_domain::num::parse_decimal(&text)
            .map(Some)
            .map_err(|_| ApiError::invalid(field, "must be a number"))
    }

    /// An optional time, epoch milliseconds, `0..=`[`MAX_MILLIS`].
    ///
    /// # Errors
    /// Present but not such an integer.
    pub fn opt_millis(&self, field: &'static str) -> Result<Option<i64>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            // JSON Schema's integer includes `5.0`: read the number's text exactly.
            Some(Value::Number(n)) => suho_domain::num::parse_decimal(&n.to_string())
                .ok()
                .filter(|d| d.fract().is_zero())
                .and_then(|d| i64::try_from(d).ok())
                .filter(|t| (0..=MAX_MILLIS).contains(t))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid(
                        field,
                        format!("must be epoch milliseconds, 0 to {MAX_MILLIS}"),
                    )
                }),
            Some(_) => Err(ApiError::invalid(field, "must be an integer")),
        }
    }

    /// An optional value of a wire enum, one of `allowed` (its wire strings).
    ///
    /// # Errors
    /// Present but not one of them.
    pub fn opt_choice<T: Copy>(
        &self,
        field: &'static str,
        allowed: &[(&'static str, T)],
    ) -> Result<Option<T>, ApiError> {
        let Some(s) = self.opt_string(field)? else {
            return Ok(None);
        };
        allowed
            .iter()
            .find(|(wire, _)| *wire == s)
            .map(|(_, v)| Some(*v))
            .ok_or_else(|| {
                let names: Vec<&str> = allowed.iter().map(|(w, _)| *w).collect();
                ApiError::invalid(field, format!("must be one of {}", names.join(", ")))
            })
    }

    /// A required exact decimal.
    ///
    /// # Errors
    /// Missing or not a number.
    pub fn decimal(&self, field: &'static str) -> Result<Decimal, ApiError> {
        self.opt_decimal(field)?
            .ok_or_else(|| ApiError::invalid(field, "is required"))
    }
}

/// The pattern of every free text the API stores or publishes (names, ids chosen by the
/// client): no control character (Unicode category Cc), which neither PostgreSQL's `text`
/// (no NUL) nor a JSON log line reader should have to take. [`Body::text`] checks the same
/// rule with [`char::is_control`]; the document gives clients this pattern.
pub const PRINTABLE: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// The step of every price the API takes (stops): five decimal places.
pub const PRICE_STEP: Decimal = Decimal::from_parts(1, 0, 0, false, 5);
/// The largest price the API takes.
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// The latest time the API takes, epoch ms: the end of the year 9999 (UTC).
pub const MAX_MILLIS: i64 = 253_402_300_799_999;

fn check_text(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(ApiError::invalid(
            field,
            format!("must be {min} to {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// An optional query parameter holding epoch milliseconds, `0..=`[`MAX_MILLIS`].
///
/// # Errors
/// Present but not such an integer.
pub fn query_millis(
    params: &std::collections::HashMap<String, String>,
    field: &'static str,
) -> Result<Option<i64>, ApiError> {
    params
        .get(field)
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|t| (0..=MAX_MILLIS).contains(t))
                .ok_or_else(|| {
                    ApiError::invalid(
                        field,
                        format!("must be epoch milliseconds, 0 to {MAX_MILLIS}"),
                    )
                })
        })
        .transpose()
}

/// A symbol traded here, exactly as the document's `TradedSymbol` pattern allows: six
/// letters in any case, optionally split by `/` or `-` (no spaces around it).
///
/// # Errors
/// Not a pair, or not one of `symbols`.
pub fn traded_symbol(
    field: &'static str,
    text: &str,
    symbols: &std::collections::HashSet<suho_domain::Symbol>,
) -> Result<suho_domain::Symbol, ApiError> {
    if text.trim() != text {
        return Err(ApiError::invalid(field, "must not have surrounding spaces"));
    }
    let symbol =
        suho_domain::Symbol::parse(text).map_err(|e| ApiError::invalid(field, e.to_string()))?;
    if !symbols.contains(&symbol) {
        return Err(ApiError::invalid(
            field,
            format!("{symbol} is not traded here"),
        ));
    }
    Ok(symbol)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (schemathesis, `POST /api/trade/modify`): a price a hair above the maximum
    /// was read as the maximum, because JSON floats were parsed to the nearest double only
    /// approximately; serde_json's `float_roundtrip` reads them exactly.
    #[test]
    fn a_price_just_above_the_maximum_is_refused() {
        let body = Body::parse(&Bytes::from_static(
            br#"{"take_profit": 1000000.0000000001}"#,
        ))
        .expect("json");
        assert!(matches!(
            body.opt_price("take_profit"),
            Err(ApiError::Invalid { ref field, .. }) if field == "take_profit"
        ));
        let ok = Body::parse(&Bytes::from_static(br#"{"take_profit": 1.08515}"#)).expect("json");
        assert_eq!(
            ok.opt_price("take_profit").expect("a price"),
            Some(Decimal::new(108_515, 5))
        );
    }
}
