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

    /// An optional exact decimal (a JSON number, or a string holding one).
    ///
    /// # Errors
    /// Present but not a number.
    pub fn opt_decimal(&self, field: &'static str) -> Result<Option<Decimal>, ApiError> {
        let text = match self.get(field) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ApiError::invalid(field, "must be a number")),
        };
        suho_domain::num::parse_decimal(&text)
            .map(Some)
            .map_err(|_| ApiError::invalid(field, "must be a number"))
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

/// An optional query parameter holding epoch milliseconds.
///
/// # Errors
/// Present but not an integer.
pub fn query_millis(
    params: &std::collections::HashMap<String, String>,
    field: &'static str,
) -> Result<Option<i64>, ApiError> {
    params
        .get(field)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::invalid(field, "must be epoch milliseconds"))
        })
        .transpose()
}
