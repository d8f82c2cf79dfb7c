//! [`PolygonConfig`]: where Polygon is, the API key and how patient to be.
//!
//! The key is a [`SecretString`]: its `Debug` prints `[REDACTED]`, and the clients only expose
//! it when writing the `auth` message or the `apiKey` query parameter. Every URL that is logged
//! goes through [`redact_url`] first.

use std::time::Duration;

use secrecy::SecretString;

use crate::PolygonError;

/// Polygon's forex WebSocket cluster.
pub const DEFAULT_WS_URL: &str = "wss://socket.polygon.io/forex";
/// Polygon's REST API.
pub const DEFAULT_REST_URL: &str = "https://api.polygon.io";

/// Settings for both Polygon adapters.
#[derive(Debug, Clone)]
pub struct PolygonConfig {
    /// The API key (never logged).
    pub api_key: SecretString,
    /// WebSocket URL, `wss://socket.polygon.io/forex` by default.
    pub ws_url: String,
    /// REST base URL (scheme, host, port), `https://api.polygon.io` by default.
    pub rest_url: String,
    /// First reconnect / retry delay; doubles per consecutive failure (jittered).
    pub backoff_initial: Duration,
    /// Cap on the reconnect / retry delay.
    pub backoff_max: Duration,
    /// Timeout of each network await: connect, handshake steps, an HTTP request, a send.
    pub request_timeout: Duration,
    /// The live connection is considered dead when nothing (data, status, pong) arrived for this
    /// long; a WebSocket ping is sent every third of it.
    pub idle_timeout: Duration,
    /// Consecutive failed live connection attempts before giving up; `None`: never give up.
    pub max_reconnects: Option<u32>,
    /// Attempts per REST request (429, 5xx, connection errors) before giving up.
    pub max_http_attempts: u32,
    /// Longest `Retry-After` honoured; longer values are capped to it.
    pub max_retry_after: Duration,
    /// `limit` query parameter of aggregate requests (Polygon's maximum is 50,000).
    pub page_limit: u32,
}

impl PolygonConfig {
    /// The defaults for Polygon's production endpoints with `api_key`.
    #[must_use]
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: SecretString::from(api_key.into()),
            ws_url: DEFAULT_WS_URL.to_owned(),
            rest_url: DEFAULT_REST_URL.to_owned(),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_reconnects: None,
            max_http_attempts: 6,
            max_retry_after: Duration::from_secs(120),
            page_limit: 50_000,
        }
    }

    /// Checks the settings once, at start-up.
    ///
    /// # Errors
    /// [`PolygonError::Config`] naming the field: empty key, a URL that does not parse or has the
    /// wrong scheme, a zero timeout or backoff, zero attempts or page limit.
    pub fn validate(&self) -> Result<(), PolygonError> {
        use secrecy::ExposeSecret;
        let bad = |m: &str| Err(PolygonError::Config(m.to_owned()));
        if self.api_key.expose_secret().trim().is_empty() {
            return bad("api_key is empty");
        }
        match reqwest::Url::parse(&self.ws_url) {
            Ok(u) if matches!(u.scheme(), "ws" | "wss") => {}
            _ => return bad("ws_url must be a ws:// or wss:// URL"),
        }
        match reqwest::Url::parse(&self.rest_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return bad("rest_url must be an http:// or https:// URL"),
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return bad("backoff_initial must be positive and at most backoff_max");
        }
        if self.request_timeout.is_zero() || self.idle_timeout.is_zero() {
            return bad("request_timeout and idle_timeout must be positive");
        }
        if self.max_http_attempts == 0 {
            return bad("max_http_attempts must be at least 1");
        }
        if self.page_limit == 0 || self.page_limit > 50_000 {
            return bad("page_limit must be within 1..=50000");
        }
        Ok(())
    }
}

/// `url` with the value of every `apiKey` / `apikey` query parameter replaced by `REDACTED`,
/// for logging. Text that is not a URL is returned with any `apiKey=...` run masked as well.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(pos) = lower.find("apikey=") else {
            out.push_str(rest);
            return out;
        };
        let value_start = pos + "apikey=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("REDACTED");
        let tail = &rest[value_start..];
        let end = tail.find(['&', '#', ' ']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_not_printed() {
        let c = PolygonConfig::new("s3cr3t-key");
        assert!(!format!("{c:?}").contains("s3cr3t-key"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("https://h/v2/aggs?adjusted=true&apiKey=abc&limit=5"),
            "https://h/v2/aggs?adjusted=true&apiKey=REDACTED&limit=5"
        );
        assert_eq!(
            redact_url("https://h/x?cursor=c&apikey=abc"),
            "https://h/x?cursor=c&apikey=REDACTED"
        );
        assert_eq!(redact_url("https://h/x?cursor=c"), "https://h/x?cursor=c");
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = PolygonConfig::new(" ");
        assert!(c.validate().unwrap_err().to_string().contains("api_key"));
        c = PolygonConfig::new("k");
        c.ws_url = "http://x".into();
        assert!(c.validate().unwrap_err().to_string().contains("ws_url"));
    }
}
