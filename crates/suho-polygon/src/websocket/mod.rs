//! [`PolygonLive`]: the forex WebSocket client.
//!
//! Protocol (Polygon's documented flow): connect, wait for the `connected` status, send
//! `{"action":"auth","params":KEY}`, wait for `auth_success` (an `auth_failed` ends everything
//! with [`PolygonError::Auth`], never a retry), send
//! `{"action":"subscribe","params":"C.EUR/USD,CA.EUR/USD,..."}`, then read JSON arrays of events.
//!
//! When the connection drops, times out or misbehaves the client reconnects with jittered,
//! capped exponential backoff, authenticates and subscribes again, and keeps feeding the same
//! channel; the backoff starts over once a session got as far as subscribing. Every network
//! await has a timeout ([`PolygonConfig::request_timeout`]); a silent connection is detected
//! with pings and [`PolygonConfig::idle_timeout`]. Cancellation is a [`CancellationToken`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use secrecy::ExposeSecret;
use suho_domain::{Candle, Symbol, Tick};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::parse::{parse_ws_frame, StatusWire, WsMessage};
use crate::{backoff_delay, PolygonConfig, PolygonError};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the live feed delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// A forex quote (`C`), for `market.{SYM}.tick`.
    Quote(Tick),
    /// A closed one-minute aggregate (`CA`), for `market.{SYM}.1m`.
    Minute(Candle),
}

/// Counters of a [`PolygonLive`] client, shared with the caller.
#[derive(Debug, Default)]
pub struct LiveStats {
    connections: AtomicU64,
    reconnects: AtomicU64,
    quotes: AtomicU64,
    minutes: AtomicU64,
    malformed: AtomicU64,
}

impl LiveStats {
    /// WebSocket connections opened.
    #[must_use]
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Reconnects scheduled after a lost or failed connection.
    #[must_use]
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Quotes delivered.
    #[must_use]
    pub fn quotes(&self) -> u64 {
        self.quotes.load(Ordering::Relaxed)
    }

    /// Minute aggregates delivered.
    #[must_use]
    pub fn minutes(&self) -> u64 {
        self.minutes.load(Ordering::Relaxed)
    }

    /// Malformed frames and events skipped.
    #[must_use]
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

/// How a session ended without an error.
enum SessionEnd {
    Shutdown,
    ReceiverGone,
}

/// The Polygon forex WebSocket client.
#[derive(Debug, Clone)]
pub struct PolygonLive {
    config: PolygonConfig,
    stats: Arc<LiveStats>,
}

impl PolygonLive {
    /// A client for `config`.
    ///
    /// # Errors
    /// [`PolygonError::Config`] when the config does not validate.
    pub fn new(config: PolygonConfig) -> Result<Self, PolygonError> {
        config.validate()?;
        Ok(Self {
            config,
            stats: Arc::new(LiveStats::default()),
        })
    }

    /// The client's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<LiveStats> {
        Arc::clone(&self.stats)
    }

    /// The `params` of the subscribe message: `C.EUR/USD,CA.EUR/USD,...` in symbol order.
    #[must_use]
    pub fn subscribe_params(symbols: &[Symbol]) -> String {
        symbols
            .iter()
            .flat_map(|s| {
                let d = s.display();
                [format!("C.{d}"), format!("CA.{d}")]
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Streams quotes and minute aggregates of `symbols` into `events` until `shutdown` is
    /// cancelled or the receiver is dropped, reconnecting as needed.
    ///
    /// # Errors
    /// [`PolygonError::Auth`] as soon as the key is rejected (no retry);
    /// [`PolygonError::Config`] for an empty symbol list;
    /// [`PolygonError::RetriesExhausted`] after [`PolygonConfig::max_reconnects`] consecutive
    /// failed connections, when that limit is set.
    pub async fn run(
        &self,
        symbols: &[Symbol],
        events: mpsc::Sender<LiveEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), PolygonError> {
        if symbols.is_empty() {
            return Err(PolygonError::Config("no symbols to subscribe".to_owned()));
        }
        let mut failures: u32 = 0;
        loop {
            let mut established = false;
            let result = self
                .session(symbols, &events, &shutdown, &mut established)
                .await;
            let error = match result {
                Ok(SessionEnd::Shutdown | SessionEnd::ReceiverGone) => return Ok(()),
                Err(_) if shutdown.is_cancelled() => return Ok(()),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            if established {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            if let Some(max) = self.config.max_reconnects {
                if failures > max {
                    return Err(PolygonError::RetriesExhausted {
                        attempts: failures,
                        last: Box::new(error),
                    });
                }
            }
            let delay = backoff_delay(
                self.config.backoff_initial,
                self.config.backoff_max,
                failures - 1,
            );
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                attempt = failures,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "polygon live: connection lost, reconnecting"
            );
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Runs [`PolygonLive::run`] on a task named after the feed; returns the event receiver and
    /// the task's handle.
    pub fn spawn(
        self,
        symbols: Vec<Symbol>,
        capacity: usize,
        shutdown: CancellationToken,
    ) -> (
        mpsc::Receiver<LiveEvent>,
        tokio::task::JoinHandle<Result<(), PolygonError>>,
    ) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let handle = tokio::spawn(async move {
            let r = self.run(&symbols, tx, shutdown).await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "polygon live feed stopped");
            }
            r
        });
        (rx, handle)
    }

    /// Awaits `fut` within the request timeout, or returns `Cancelled` on shutdown.
    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, E>>,
        shutdown: &CancellationToken,
    ) -> Result<T, PolygonError> {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Err(PolygonError::Cancelled),
            r = tokio::time::timeout(self.config.request_timeout, fut) => match r {
                Err(_) => Err(PolygonError::Timeout(what)),
                Ok(Err(e)) => Err(PolygonError::Transport(format!("{what}: {e}"))),
                Ok(Ok(v)) => Ok(v),
            },
        }
    }

    /// One connection: handshake, then stream until it ends.
    async fn session(
        &self,
        symbols: &[Symbol],
        events: &mpsc::Sender<LiveEvent>,
        shutdown: &CancellationToken,
        established: &mut bool,
    ) -> Result<SessionEnd, PolygonError> {
        let url = self.config.ws_url.as_str();
        let (mut ws, _response) = self
            .bounded(
                "connecting",
                tokio_tungstenite::connect_async(url),
                shutdown,
            )
            .await?;
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(url, "polygon live: connected");

        self.await_status(&mut ws, "connected", "waiting for connected", shutdown)
            .await?;
        let auth = serde_json::json!({
            "action": "auth",
            "params": self.config.api_key.expose_secret(),
        })
        .to_string();
        self.bounded("sending auth", ws.send(Message::text(auth)), shutdown)
            .await?;
        self.await_status(&mut ws, "auth_success", "waiting for auth", shutdown)
            .await?;
        let params = Self::subscribe_params(symbols);
        let subscribe = serde_json::json!({"action": "subscribe", "params": params}).to_string();
        self.bounded(
            "sending subscribe",
            ws.send(Message::text(subscribe)),
            shutdown,
        )
        .await?;
        *established = true;
        tracing::info!(url, params = %params, "polygon live: authenticated and subscribed");
        self.stream(&mut ws, events, shutdown).await
    }

    /// Reads until the status `wanted` arrives (within the request timeout). `auth_failed`
    /// at any point is [`PolygonError::Auth`].
    async fn await_status(
        &self,
        ws: &mut Ws,
        wanted: &str,
        what: &'static str,
        shutdown: &CancellationToken,
    ) -> Result<(), PolygonError> {
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            let msg = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(PolygonError::Cancelled),
                r = tokio::time::timeout_at(deadline, ws.next()) => match r {
                    Err(_) => return Err(PolygonError::Timeout(what)),
                    Ok(None) => return Err(PolygonError::Transport(format!("connection closed while {what}"))),
                    Ok(Some(Err(e))) => return Err(PolygonError::Transport(format!("{what}: {e}"))),
                    Ok(Some(Ok(m))) => m,
                },
            };
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(frame) => {
                    return Err(PolygonError::Transport(format!(
                        "server closed the connection while {what}: {}",
                        frame.map(|f| f.reason.to_string()).unwrap_or_default()
                    )))
                }
                _ => continue,
            };
            let frame = parse_ws_frame(text.as_str());
            self.report_malformed(&frame.malformed);
            for m in frame.messages {
                if let WsMessage::Status(s) = m {
                    check_auth(&s)?;
                    if s.status == wanted {
                        return Ok(());
                    }
                    tracing::debug!(status = %s.status, message = %s.message, "polygon live: status");
                }
            }
        }
    }

    async fn stream(
        &self,
        ws: &mut Ws,
        events: &mpsc::Sender<LiveEvent>,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, PolygonError> {
        let idle = self.config.idle_timeout;
        let ping_every = (idle / 3).max(Duration::from_millis(10));
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(self.config.request_timeout, ws.close(None)).await;
                    return Ok(SessionEnd::Shutdown);
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() >= idle {
                        return Err(PolygonError::Timeout("waiting for data (idle connection)"));
                    }
                    self.bounded("sending ping", ws.send(Message::Ping(Default::default())), shutdown).await?;
                }
                msg = ws.next() => {
                    last_seen = Instant::now();
                    match msg {
                        None => return Err(PolygonError::Transport("server closed the connection".to_owned())),
                        Some(Err(e)) => return Err(PolygonError::Transport(e.to_string())),
                        Some(Ok(Message::Text(text))) => {
                            if let Some(end) = self.deliver(text.as_str(), events, shutdown).await? {
                                return Ok(end);
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            return Err(PolygonError::Transport(format!(
                                "server closed the connection: {}",
                                frame.map(|f| f.reason.to_string()).unwrap_or_default()
                            )));
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.report_malformed(&["unexpected binary frame".to_owned()]);
                        }
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }

    /// Parses one data frame and forwards its events; `Some(end)` when the session must stop.
    async fn deliver(
        &self,
        text: &str,
        events: &mpsc::Sender<LiveEvent>,
        shutdown: &CancellationToken,
    ) -> Result<Option<SessionEnd>, PolygonError> {
        let frame = parse_ws_frame(text);
        self.report_malformed(&frame.malformed);
        for m in frame.messages {
            let event = match m {
                WsMessage::Quote(t) => {
                    self.stats.quotes.fetch_add(1, Ordering::Relaxed);
                    LiveEvent::Quote(t)
                }
                WsMessage::Minute(c) => {
                    self.stats.minutes.fetch_add(1, Ordering::Relaxed);
                    LiveEvent::Minute(c)
                }
                WsMessage::Status(s) => {
                    check_auth(&s)?;
                    if s.status == "error" {
                        tracing::warn!(message = %s.message, "polygon live: status error");
                    } else {
                        tracing::debug!(status = %s.status, message = %s.message, "polygon live: status");
                    }
                    continue;
                }
                WsMessage::Ignored(ev) => {
                    tracing::debug!(ev = %ev, "polygon live: ignoring event type");
                    continue;
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(Some(SessionEnd::Shutdown)),
                r = events.send(event) => if r.is_err() {
                    tracing::info!("polygon live: event receiver dropped, stopping");
                    return Ok(Some(SessionEnd::ReceiverGone));
                },
            }
        }
        Ok(None)
    }

    fn report_malformed(&self, reasons: &[String]) {
        if reasons.is_empty() {
            return;
        }
        self.stats
            .malformed
            .fetch_add(reasons.len() as u64, Ordering::Relaxed);
        for reason in reasons {
            tracing::warn!(reason = %reason, "polygon live: skipping malformed event");
        }
    }
}

fn check_auth(s: &StatusWire) -> Result<(), PolygonError> {
    if s.status == "auth_failed" {
        return Err(PolygonError::Auth {
            message: if s.message.is_empty() {
                "auth_failed".to_owned()
            } else {
                s.message.clone()
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_params_use_display_form() {
        let s = [
            Symbol::parse("eurusd").unwrap(),
            Symbol::parse("GBP-USD").unwrap(),
        ];
        assert_eq!(
            PolygonLive::subscribe_params(&s),
            "C.EUR/USD,CA.EUR/USD,C.GBP/USD,CA.GBP/USD"
        );
    }
}
