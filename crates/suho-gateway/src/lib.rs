//! The HTTP API of `../shared/CONTRACT.md`: register, login, logout, trade commands, the
//! candle history for charts, plus `/health` and `/metrics`.
//!
//! Handlers validate input at the edge (errors name the field), turn it into domain
//! values, and hand commands to Kafka keyed by the authenticated user. The gateway never
//! executes a trade and never trusts a user id from the request: the token's subject is
//! the user.

mod auth;
mod error;
mod input;
mod market;
mod throttle;
mod trade;
mod user;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use suho_accounts::Accounts;
use suho_domain::Symbol;
use suho_messaging::UserEventProducer;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use throttle::{LoginThrottle, ThrottleLimits};

/// What the handlers share.
pub struct AppState {
    /// User accounts.
    pub accounts: Accounts,
    /// The user-event producer.
    pub producer: UserEventProducer,
    /// Symbols that may be traded.
    pub symbols: HashSet<Symbol>,
    /// Strategy names users may opt in to auto-trading for.
    pub strategies: Vec<String>,
    /// The Kafka topic prefix (the audit store keeps full topic names).
    pub topic_prefix: String,
    /// Failed-login counts (per address and per IP).
    pub login_throttle: LoginThrottle,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Process start, for `/health`.
    pub started: Instant,
}

/// The router with every route.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/trade/open", post(trade::open))
        .route("/api/trade/close", post(trade::close))
        .route("/api/trade/modify", post(trade::modify))
        .route(
            "/api/user/{user_id}/settings",
            get(user::get_settings).put(user::put_settings),
        )
        .route("/api/user/{user_id}/mt5/link", post(user::link_mt5))
        .route("/api/user/{user_id}/trades", get(user::trades))
        .route("/api/user/{user_id}/deposit", post(user::deposit))
        .route("/api/user/{user_id}/withdraw", post(user::withdraw))
        .route("/api/user/{user_id}/account", get(user::account))
        .route("/api/market/{symbol}/candles", get(market::candles))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown`, then finishes in-flight requests.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let db = sqlx_ok(&state).await;
    let status = if db { "ok" } else { "degraded" };
    let code = if db {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({
            "service": "gateway",
            "status": status,
            "uptime_s": state.started.elapsed().as_secs(),
            "checks": { "database": if db { "ok" } else { "down" } },
        })),
    )
}

async fn sqlx_ok(state: &AppState) -> bool {
    state.accounts.ping().await
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
