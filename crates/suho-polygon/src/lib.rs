//! Polygon.io forex adapters: the live WebSocket feed and the historical REST downloader.
//!
//! Both adapters turn Polygon's wire formats into the domain's [`suho_domain::Tick`] and
//! [`suho_domain::Candle`] at one edge ([`parse`]) and know nothing about NATS, Kafka or
//! databases: the live client hands [`LiveEvent`]s to an mpsc channel and the downloader hands
//! bars to a [`BarCheckpoint`]; wiring them onto `market.{SYM}.tick` / `market.{SYM}.1m` and the
//! PostgreSQL store is done by the caller.
//!
//! Module map (the NautilusTrader adapter layout):
//! - [`config`]: [`PolygonConfig`], the API key kept in a secret wrapper, URLs, timeouts, backoff.
//! - [`parse`]: Polygon wire structs (`C`, `CA`, status messages, REST aggregates) and their
//!   conversion into domain types with exact decimals; malformed events are reported, not fatal.
//! - [`websocket`]: [`PolygonLive`], connect / `auth` / `subscribe`, reconnect with jittered
//!   exponential backoff and resubscribe, cancellation.
//! - [`http`]: [`PolygonHistory`], `/v2/aggs` paging through `next_url`, 429 / 5xx backoff,
//!   resume from the last stored bar, progress bar.
//! - `fake` (cargo feature `fake`): local fakes of Polygon's WebSocket and REST servers, for
//!   the adapter's tests and the platform's.
//!
//! Invariants:
//! - The API key never appears in a log line or an error: URLs are logged through
//!   [`config::redact_url`] and HTTP client errors are stripped of their URL.
//! - An authentication failure is returned at once ([`PolygonError::Auth`]), never retried.
//! - Money is never an `f64`: prices are read through `suho_domain::num`, which recovers the
//!   exact digits of the JSON number.

pub mod config;
#[cfg(feature = "fake")]
pub mod fake;
pub mod http;
pub mod parse;
pub mod websocket;

use std::time::Duration;

pub use config::PolygonConfig;
pub use http::{
    BarCheckpoint, CheckpointError, DownloadSummary, InMemoryCheckpoint, PolygonHistory, Timespan,
};
pub use websocket::{LiveEvent, LiveStats, PolygonLive};

/// The `source` field of ticks produced by these adapters.
pub const SOURCE: &str = "polygon";

/// Why a Polygon call failed.
///
/// [`PolygonError::is_retryable`] classes each error: retryable errors are transient (a dropped
/// connection, a timeout, a 5xx, a 429) and the clients retry them with backoff; the others
/// (bad credentials, bad requests, a failing store, cancellation) are returned to the caller.
#[derive(Debug, thiserror::Error)]
pub enum PolygonError {
    /// The API key was rejected (WebSocket `auth_failed`, HTTP 401 / 403). Never retried.
    #[error("polygon authentication failed: {message}")]
    Auth {
        /// The venue's message (never contains the key).
        message: String,
    },
    /// The configuration is unusable (bad URL, zero timeout...).
    #[error("polygon config: {0}")]
    Config(String),
    /// HTTP 429: too many requests.
    #[error("polygon rate limit (HTTP 429){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// An HTTP status other than success, 401, 403 and 429.
    #[error("polygon HTTP {status}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// The start of the response body or the reason phrase.
        message: String,
    },
    /// The connection failed or dropped (connect refused, reset, closed mid-stream).
    #[error("polygon transport: {0}")]
    Transport(String),
    /// A network await took longer than its timeout.
    #[error("polygon timeout while {0}")]
    Timeout(&'static str),
    /// The venue said something out of protocol (e.g. data before `connected`, a status error).
    #[error("polygon protocol: {0}")]
    Protocol(String),
    /// A response body could not be decoded at all (a single bad event is skipped instead).
    #[error("polygon decode: {0}")]
    Decode(String),
    /// The bar store failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Retries were exhausted; `last` is the final (retryable) error.
    #[error("polygon: giving up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Box<PolygonError>,
    },
    /// The operation was cancelled through its `CancellationToken`.
    #[error("polygon: cancelled")]
    Cancelled,
}

impl PolygonError {
    /// Whether retrying the same operation later may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            PolygonError::RateLimited { .. }
            | PolygonError::Transport(_)
            | PolygonError::Timeout(_)
            | PolygonError::Protocol(_) => true,
            PolygonError::Http { status, .. } => *status >= 500 || *status == 408,
            PolygonError::Auth { .. }
            | PolygonError::Config(_)
            | PolygonError::Decode(_)
            | PolygonError::Checkpoint(_)
            | PolygonError::RetriesExhausted { .. }
            | PolygonError::Cancelled => false,
        }
    }
}

/// Exponential backoff with "equal jitter": the n-th delay (0-based) is uniformly drawn from
/// `[d/2, d]` where `d = min(max, initial * 2^n)`.
pub(crate) fn backoff_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    use rand::Rng;
    let factor = 2u32.saturating_pow(attempt.min(20));
    let d = initial.saturating_mul(factor).min(max);
    let half = d / 2;
    let jitter_ns = u64::try_from((d - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::thread_rng().gen_range(0..=jitter_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..30 {
            let d = backoff_delay(i, m, attempt);
            let cap = i
                .saturating_mul(2u32.saturating_pow(attempt.min(20)))
                .min(m);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn classification() {
        assert!(!PolygonError::Auth {
            message: "x".into()
        }
        .is_retryable());
        assert!(PolygonError::RateLimited { retry_after: None }.is_retryable());
        assert!(PolygonError::Http {
            status: 503,
            message: String::new()
        }
        .is_retryable());
        assert!(!PolygonError::Http {
            status: 404,
            message: String::new()
        }
        .is_retryable());
        assert!(PolygonError::Transport("reset".into()).is_retryable());
        assert!(!PolygonError::Cancelled.is_retryable());
    }
}
