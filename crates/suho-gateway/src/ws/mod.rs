//! The WebSocket `/ws` of `../shared/CONTRACT.md` (the seed's Pattern 3): one connection
//! carries the market data of the symbols it follows (NATS) and its own user's events (Kafka),
//! each in the contract's envelope.
//!
//! - **Auth**: the JWT in the `token` query parameter or `Authorization: Bearer` header (a bad
//!   one is a 401 before the upgrade), or the first message `{"action":"auth","token":...}`
//!   within [`WsOptions::auth_timeout`] (otherwise closed with 1008 and the reason). Tokens are
//!   checked as the HTTP API checks them (signature, expiry, not logged out); an API key needs
//!   its `read` scope. The connection is closed (1008) when its token expires, or at the next
//!   check ([`WsOptions::token_recheck`]) after it was logged out or its key revoked. A
//!   client renews it in place: another `{"action":"auth","token":...}` with a fresh token of
//!   the same user (from `POST /api/auth/refresh`) moves the expiry and is answered with
//!   `authenticated` again; a token that is invalid or another user's is an `error`, and the
//!   connection keeps its own.
//! - **Market data**: the user's watchlist on connect, then `subscribe` / `unsubscribe`.
//! - **Shared inputs** ([`WsHub`]): one NATS subscription per subject pattern and one Kafka
//!   consumer per gateway instance, whatever the number of connections; each message is
//!   turned into its envelope once and shared by every recipient.
//! - **Backpressure** (`hub`): market data is conflated per subject for a slow client; user
//!   events are never dropped, and a client whose user-event queue overflows is closed with
//!   1013 `too slow`.
//! - **Resume**: every user event carries its `position` (`topic:partition:offset`), and each
//!   connection says where it starts (`ready`, with a position on each of its user's
//!   partitions); a client that comes back with its last positions gets every event of its own
//!   after them, from Kafka, before the live ones, once each and in order.

mod conn;
mod feed;
mod hub;
pub mod protocol;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use suho_messaging::MarketBus;
use tokio_util::sync::CancellationToken;

pub use protocol::Position;

use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};

/// The limits of the WebSocket server.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// How long a connection without a token in the query may take to send its auth message.
    pub auth_timeout: Duration,
    /// How often an open connection's token is checked again (a logged-out token closes it).
    pub token_recheck: Duration,
    /// User events, control and error messages waiting for one client before it is closed
    /// as too slow.
    pub user_queue: usize,
    /// Market subjects with messages waiting for one client; beyond it new subjects are
    /// dropped.
    pub market_pending: usize,
    /// Market messages of one subject waiting for one client; a newer one replaces the
    /// oldest (conflation). A writer a little late sends what waits in one write; one much
    /// later sends the newest `market_depth` of each subject, not the backlog.
    pub market_depth: usize,
    /// How long a resume may take to read the log up to its end.
    pub resume_timeout: Duration,
    /// Resumes reading the log at once (each with a Kafka consumer of its own); more wait.
    pub concurrent_resumes: usize,
    /// The largest client message, in bytes.
    pub max_message_bytes: usize,
    /// The read buffer each connection starts with, in bytes (it grows for a larger message).
    /// Clients send only short control messages; tungstenite zeroes the free part of this
    /// buffer before every read, so its default of 128 KiB cost a 128 KiB `memset` per read
    /// and as much RSS per connection.
    pub read_buffer_bytes: usize,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            auth_timeout: Duration::from_secs(5),
            token_recheck: Duration::from_secs(30),
            user_queue: 1024,
            market_pending: 4096,
            market_depth: 16,
            resume_timeout: Duration::from_secs(30),
            concurrent_resumes: 16,
            max_message_bytes: 64 * 1024,
            read_buffer_bytes: 4 * 1024,
        }
    }
}

/// The hub could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// NATS failed.
    #[error("NATS: {0}")]
    Nats(String),
    /// Kafka failed.
    #[error("Kafka: {0}")]
    Kafka(String),
}

impl From<suho_messaging::MessagingError> for WsError {
    fn from(e: suho_messaging::MessagingError) -> Self {
        WsError::Nats(e.to_string())
    }
}

impl From<rdkafka::error::KafkaError> for WsError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        WsError::Kafka(e.to_string())
    }
}

/// The hub's task: it routes market data and user events until shutdown.
pub type HubTask = Pin<Box<dyn Future<Output = Result<(), WsError>> + Send>>;

/// The WebSocket hub of one gateway instance: its shared NATS subscriptions and Kafka
/// consumer, and the connections they feed. Cheap to clone.
#[derive(Clone)]
pub struct WsHub {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<hub::Registry>,
    kafka: suho_config::KafkaConfig,
    options: WsOptions,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    resumes: tokio::sync::Semaphore,
}

impl WsHub {
    /// Subscribes to the market subjects and assigns the user topics (both ready when this
    /// returns: nothing published or produced after it is missed), and returns the hub with
    /// the task that feeds it. Connections close when `shutdown` fires.
    ///
    /// # Errors
    /// NATS does not take the subscriptions, or the user topics cannot be listed within 30 s.
    pub async fn start(
        bus: &MarketBus,
        kafka: &suho_config::KafkaConfig,
        options: WsOptions,
        shutdown: CancellationToken,
    ) -> Result<(WsHub, HubTask), WsError> {
        let market = feed::MarketFeed::subscribe(bus).await?;
        let users = feed::UserFeed::assign(kafka).await?;
        let registry = Arc::new(hub::Registry::default());
        let hub = WsHub {
            inner: Arc::new(Inner {
                registry: registry.clone(),
                kafka: kafka.clone(),
                options: options.clone(),
                next_id: AtomicU64::new(1),
                shutdown: shutdown.clone(),
                resumes: tokio::sync::Semaphore::new(options.concurrent_resumes.max(1)),
            }),
        };
        let task = async move {
            let routed = tokio::try_join!(
                market.run(registry.clone(), shutdown.clone()),
                users.run(registry.clone(), shutdown.clone()),
            );
            // Whatever ended the feeds, the connections end with them.
            for client in registry.all() {
                client.close(hub::CloseReason::Shutdown);
            }
            routed.map(|_| ())
        };
        Ok((hub, Box::pin(task)))
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The query of `/ws`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WsParams {
    /// The access token (instead of the `Authorization` header or the auth message).
    pub token: Option<String>,
    /// Resume after these positions: `topic:partition:offset`, comma-separated (the
    /// `position` of the last event received on each partition; of a partition named twice,
    /// the greater offset).
    pub resume: Option<String>,
}

/// The WebSocket stream.
///
/// Upgrades to a WebSocket carrying market data and the caller's own events. Authenticate
/// with `token` in the query, the `Authorization: Bearer` header, or the first message
/// `{"action":"auth","token":...}` within 5 s. Messages: see ARCHITECTURE.md
/// ("Decisions where the contract is silent").
#[utoipa::path(
    get,
    path = "/ws",
    tag = "stream",
    params(WsParams),
    // The token may also come in the first message, after the upgrade: optional here.
    security((), ("bearer" = [])),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol."),
        (status = 401, description = "`unauthorized`: the token in the query or header is invalid, expired or logged out.", body = ErrorBody),
        (status = 422, description = "`invalid_field`: `resume` is not a list of `topic:partition:offset`, or the query does not read.", body = ErrorBody),
        (status = 426, description = "`upgrade_required`: not a WebSocket upgrade request.", body = ErrorBody),
        (status = 503, description = "`unavailable`: this gateway serves no WebSocket stream, or the database is down.", body = ErrorBody),
    )
)]
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    hub: Option<Extension<WsHub>>,
    headers: HeaderMap,
    query: Result<Query<WsParams>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Some(Extension(hub)) = hub else {
        return Err(ApiError::Unavailable("the WebSocket stream"));
    };
    let Query(params) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let token = match params.token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(t),
        None => crate::auth::bearer(&headers)?,
    };
    let claims = match token {
        Some(t) => {
            let claims = state.accounts.authenticate(t).await?;
            crate::auth::need(&claims, crate::auth::Need::Read)?;
            Some((claims, secrecy::SecretString::from(t.to_string())))
        }
        None => None,
    };
    let positions = match params.resume.as_deref() {
        Some(r) => Position::parse_list(r).map_err(|e| ApiError::invalid("resume", e))?,
        None => Vec::new(),
    };
    let ws = ws.map_err(|e| ApiError::UpgradeRequired(e.body_text()))?;
    let session = conn::Session {
        id: hub.next_id(),
        hub,
        state,
        claims,
        positions,
    };
    let options = &session.hub.inner.options;
    let (max, read_buffer) = (options.max_message_bytes, options.read_buffer_bytes);
    Ok(ws
        .read_buffer_size(read_buffer)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| conn::run(socket, session)))
}
