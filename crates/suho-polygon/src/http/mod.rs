//! [`PolygonHistory`]: the REST aggregates downloader.
//!
//! `GET {rest_url}/v2/aggs/ticker/C:{PAIR}/range/{multiplier}/{timespan}/{from}/{to}` with
//! `adjusted=true&sort=asc&limit=..&apiKey=..`, `from`/`to` in epoch ms (both inclusive).
//! Pages are followed through `next_url`, which Polygon sends without the key: the client keeps
//! its path and query, puts them on the configured `rest_url` (so the key only ever goes to the
//! configured host) and appends `apiKey` again.
//!
//! Failures: HTTP 429 waits for `Retry-After` (seconds) or the backoff; 5xx, timeouts and
//! connection errors are retried with jittered exponential backoff up to
//! [`PolygonConfig::max_http_attempts`]; 401/403 is [`PolygonError::Auth`] at once.
//!
//! Resume: bars are stored page by page into a [`BarCheckpoint`]; a download starts one period
//! after the last stored bar (or at `from`), and never hands the store a bar at or before it.
//! A progress bar on stderr (hidden when stderr is not a terminal) counts bars against the
//! number the range can hold (an upper bound: forex has no weekend bars).

mod checkpoint;

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Url;
use secrecy::ExposeSecret;
use suho_domain::{Candle, Symbol, Timeframe};
use tokio_util::sync::CancellationToken;

pub use checkpoint::{BarCheckpoint, CheckpointError, InMemoryCheckpoint};

use crate::config::redact_url;
use crate::parse::parse_aggs_page;
use crate::{backoff_delay, PolygonConfig, PolygonError};

/// Polygon's aggregate `timespan` path segment (the ones the domain's timeframes need).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timespan {
    /// `minute`.
    Minute,
    /// `hour`.
    Hour,
    /// `day`.
    Day,
}

impl Timespan {
    /// The path segment, e.g. `minute`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            Timespan::Minute => "minute",
            Timespan::Hour => "hour",
            Timespan::Day => "day",
        }
    }

    /// The `(multiplier, timespan)` Polygon needs for a domain timeframe, e.g. 4h is `(4, hour)`.
    #[must_use]
    pub const fn of(timeframe: Timeframe) -> (u32, Timespan) {
        match timeframe {
            Timeframe::M1 => (1, Timespan::Minute),
            Timeframe::M5 => (5, Timespan::Minute),
            Timeframe::M15 => (15, Timespan::Minute),
            Timeframe::M30 => (30, Timespan::Minute),
            Timeframe::H1 => (1, Timespan::Hour),
            Timeframe::H4 => (4, Timespan::Hour),
            Timeframe::D1 => (1, Timespan::Day),
        }
    }

    /// The domain timeframe for `multiplier` x `timespan`, when there is one.
    #[must_use]
    pub fn timeframe(multiplier: u32, timespan: Timespan) -> Option<Timeframe> {
        Timeframe::ALL
            .into_iter()
            .find(|tf| Timespan::of(*tf) == (multiplier, timespan))
    }
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSummary {
    /// The pair.
    pub symbol: Symbol,
    /// The timeframe.
    pub timeframe: Timeframe,
    /// Where this run started (epoch ms): `from`, or one period after the last stored bar.
    pub start_ms: i64,
    /// Whether the run continued after bars already in the store.
    pub resumed: bool,
    /// Pages fetched.
    pub pages: u32,
    /// Bars handed to the store.
    pub bars_stored: u64,
    /// Bars skipped as malformed.
    pub malformed: u64,
}

/// The Polygon REST aggregates client.
#[derive(Debug, Clone)]
pub struct PolygonHistory {
    config: PolygonConfig,
    base: Url,
    client: reqwest::Client,
    progress: bool,
}

impl PolygonHistory {
    /// A client for `config`; the progress bar is on (drawn only when stderr is a terminal).
    ///
    /// # Errors
    /// [`PolygonError::Config`] when the config does not validate or the HTTP client cannot be
    /// built.
    pub fn new(config: PolygonConfig) -> Result<Self, PolygonError> {
        config.validate()?;
        let base = Url::parse(&config.rest_url)
            .map_err(|e| PolygonError::Config(format!("rest_url: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .user_agent(concat!("suho-polygon/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PolygonError::Config(format!("HTTP client: {}", e.without_url())))?;
        Ok(Self {
            config,
            base,
            client,
            progress: true,
        })
    }

    /// Turns the progress bar off (`false`) or back on.
    #[must_use]
    pub fn with_progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// The first page's URL, key included (log it only through [`redact_url`]).
    #[must_use]
    pub fn aggregates_url(
        &self,
        symbol: Symbol,
        timeframe: Timeframe,
        from_ms: i64,
        to_ms: i64,
    ) -> Url {
        let (multiplier, timespan) = Timespan::of(timeframe);
        let mut url = self.base.clone();
        url.set_path(&format!(
            "/v2/aggs/ticker/C:{}/range/{multiplier}/{}/{from_ms}/{to_ms}",
            symbol.as_str(),
            timespan.as_str()
        ));
        url.query_pairs_mut()
            .clear()
            .append_pair("adjusted", "true")
            .append_pair("sort", "asc")
            .append_pair("limit", &self.config.page_limit.to_string())
            .append_pair("apiKey", self.config.api_key.expose_secret());
        url
    }

    /// `next_url` moved onto the configured host with the key appended again.
    fn follow(&self, next_url: &str) -> Result<Url, PolygonError> {
        let next = Url::parse(next_url)
            .or_else(|_| self.base.join(next_url))
            .map_err(|e| {
                PolygonError::Protocol(format!(
                    "next_url {:?} is not a URL: {e}",
                    redact_url(next_url)
                ))
            })?;
        let mut url = self.base.clone();
        url.set_path(next.path());
        let pairs: Vec<(String, String)> = next
            .query_pairs()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("apikey"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            for (k, v) in &pairs {
                q.append_pair(k, v);
            }
            q.append_pair("apiKey", self.config.api_key.expose_secret());
        }
        Ok(url)
    }

    /// Downloads `symbol`'s bars at `timeframe` for `[from_ms, to_ms]` into `checkpoint`,
    /// resuming after the last bar it already holds.
    ///
    /// # Errors
    /// [`PolygonError::Auth`] on 401/403; [`PolygonError::RetriesExhausted`] when a page keeps
    /// failing; [`PolygonError::Http`] for another 4xx; [`PolygonError::Decode`] /
    /// [`PolygonError::Protocol`] for a response that is not an aggregates page;
    /// [`PolygonError::Checkpoint`] when the store fails; [`PolygonError::Cancelled`] on
    /// shutdown; [`PolygonError::Config`] when `from_ms > to_ms`. Bars stored before the error
    /// stay stored, so running again resumes.
    pub async fn fetch_aggregates<C: BarCheckpoint>(
        &self,
        symbol: Symbol,
        timeframe: Timeframe,
        from_ms: i64,
        to_ms: i64,
        checkpoint: &C,
        shutdown: &CancellationToken,
    ) -> Result<DownloadSummary, PolygonError> {
        if from_ms > to_ms {
            return Err(PolygonError::Config(format!(
                "from {from_ms} is after to {to_ms}"
            )));
        }
        let period = timeframe.duration_ms();
        let last = checkpoint.last_bar_start(symbol, timeframe).await?;
        let start = match last {
            Some(l) => from_ms.max(l.saturating_add(period)),
            None => from_ms,
        };
        let mut summary = DownloadSummary {
            symbol,
            timeframe,
            start_ms: start,
            resumed: last.is_some_and(|l| l >= from_ms),
            pages: 0,
            bars_stored: 0,
            malformed: 0,
        };
        if start > to_ms {
            tracing::info!(%symbol, %timeframe, "polygon history: already complete");
            return Ok(summary);
        }
        if summary.resumed {
            tracing::info!(%symbol, %timeframe, start_ms = start, "polygon history: resuming after the last stored bar");
        }
        let expected = u64::try_from((to_ms - start) / period + 1).unwrap_or(0);
        let bar = self.progress_bar(expected, symbol, timeframe);
        let result = self
            .download(
                (symbol, timeframe, start, to_ms),
                checkpoint,
                shutdown,
                &bar,
                &mut summary,
            )
            .await;
        match &result {
            Ok(()) => bar.finish_and_clear(),
            Err(_) => bar.abandon(),
        }
        result.map(|()| summary)
    }

    async fn download<C: BarCheckpoint>(
        &self,
        (symbol, timeframe, start, to_ms): (Symbol, Timeframe, i64, i64),
        checkpoint: &C,
        shutdown: &CancellationToken,
        bar: &ProgressBar,
        summary: &mut DownloadSummary,
    ) -> Result<(), PolygonError> {
        let mut url = self.aggregates_url(symbol, timeframe, start, to_ms);
        let mut last_stored: Option<i64> = None;
        loop {
            let body = self.get_page(&url, shutdown).await?;
            let page = parse_aggs_page(&body, symbol, timeframe)?;
            summary.pages += 1;
            for reason in &page.malformed {
                tracing::warn!(reason = %reason, "polygon history: skipping malformed bar");
            }
            summary.malformed += page.malformed.len() as u64;
            let mut fresh: Vec<Candle> = page
                .bars
                .into_iter()
                .filter(|b| (start..=to_ms).contains(&b.start))
                .filter(|b| last_stored.is_none_or(|l| b.start > l))
                .collect();
            fresh.sort_by_key(|b| b.start);
            fresh.dedup_by_key(|b| b.start);
            if let Some(b) = fresh.last() {
                checkpoint.store(&fresh).await?;
                last_stored = Some(b.start);
                summary.bars_stored += fresh.len() as u64;
                bar.inc(fresh.len() as u64);
            }
            tracing::debug!(
                url = %redact_url(url.as_str()),
                bars = fresh.len(),
                "polygon history: page stored"
            );
            let Some(next) = page.next_url else {
                return Ok(());
            };
            let next = self.follow(&next)?;
            if next == url {
                return Err(PolygonError::Protocol(format!(
                    "next_url repeats the current page: {}",
                    redact_url(next.as_str())
                )));
            }
            url = next;
        }
    }

    fn progress_bar(&self, expected: u64, symbol: Symbol, timeframe: Timeframe) -> ProgressBar {
        if !self.progress || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(expected), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} bars ({elapsed}, eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("polygon {symbol} {timeframe}"));
        bar
    }

    /// One page with retries: 429 waits, 5xx / transport errors back off, the rest fail.
    async fn get_page(
        &self,
        url: &Url,
        shutdown: &CancellationToken,
    ) -> Result<Vec<u8>, PolygonError> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(PolygonError::Cancelled),
                r = self.get_once(url) => r,
            };
            let error = match result {
                Ok(body) => return Ok(body),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            if attempt >= self.config.max_http_attempts {
                return Err(PolygonError::RetriesExhausted {
                    attempts: attempt,
                    last: Box::new(error),
                });
            }
            let delay = match &error {
                PolygonError::RateLimited {
                    retry_after: Some(d),
                } => (*d).min(self.config.max_retry_after),
                _ => backoff_delay(
                    self.config.backoff_initial,
                    self.config.backoff_max,
                    attempt - 1,
                ),
            };
            tracing::warn!(
                url = %redact_url(url.as_str()),
                attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "polygon history: request failed, retrying"
            );
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(PolygonError::Cancelled),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn get_once(&self, url: &Url) -> Result<Vec<u8>, PolygonError> {
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(transport);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // The body is only read for the message; a failure to read it is not the error.
        let body = tokio::time::timeout(self.config.request_timeout, response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message: String = body.chars().take(200).collect();
        let message = redact_url(&message);
        Err(match status.as_u16() {
            401 | 403 => PolygonError::Auth {
                message: format!("HTTP {status}: {message}"),
            },
            429 => PolygonError::RateLimited { retry_after },
            code => PolygonError::Http {
                status: code,
                message,
            },
        })
    }
}

/// `Retry-After` in seconds (integer or decimal); HTTP dates fall back to the backoff.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// A reqwest error without its URL (which holds the key).
fn transport(e: reqwest::Error) -> PolygonError {
    let e = e.without_url();
    if e.is_timeout() {
        PolygonError::Timeout("waiting for an HTTP response")
    } else {
        PolygonError::Transport(format!("HTTP request: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> PolygonHistory {
        let mut c = PolygonConfig::new("KEY123");
        c.rest_url = "http://127.0.0.1:9".into();
        PolygonHistory::new(c).unwrap()
    }

    #[test]
    fn first_url_shape() {
        let h = client();
        let u = h.aggregates_url(Symbol::parse("EUR/USD").unwrap(), Timeframe::H4, 1, 2);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9/v2/aggs/ticker/C:EURUSD/range/4/hour/1/2?adjusted=true&sort=asc&limit=50000&apiKey=KEY123"
        );
    }

    #[test]
    fn next_url_is_rebased_and_keyed_once() {
        let h = client();
        let u = h
            .follow("https://api.polygon.io/v2/aggs/ticker/C:EURUSD/range/1/minute/5/9?cursor=abc&apiKey=OTHER")
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9/v2/aggs/ticker/C:EURUSD/range/1/minute/5/9?cursor=abc&apiKey=KEY123"
        );
    }

    #[test]
    fn timespans() {
        for tf in Timeframe::ALL {
            let (m, s) = Timespan::of(tf);
            assert_eq!(Timespan::timeframe(m, s), Some(tf));
        }
        assert_eq!(Timespan::timeframe(2, Timespan::Minute), None);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
