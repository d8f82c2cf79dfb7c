//! The HTTP API of `../shared/CONTRACT.md`: register, login, logout, trade commands, the
//! candle history for charts, plus `/health`, `/metrics` and the OpenAPI document
//! (`/api/openapi.json`), and the WebSocket stream `/ws` ([`mod@ws`]).
//!
//! Handlers validate input at the edge (errors name the field), turn it into domain
//! values, and hand commands to Kafka keyed by the authenticated user. The gateway never
//! executes a trade and never trusts a user id from the request: the token's subject is
//! the user.
//!
//! Every route is registered from its handler's `#[utoipa::path]` (see [`mod@openapi`]), so
//! the router and the OpenAPI document are built from one list, [`api`].
//!
//! The web dashboard (the files of a built `web/`, `http.web_dir`) is served for any other `GET`.

mod auth;
mod client_ip;
mod edge;
mod error;
mod input;
mod keys;
mod market;
pub mod openapi;
pub mod outbox;
mod queries;
mod query;
mod throttle;
mod trade;
mod user;
mod web;
pub mod ws;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use suho_accounts::Accounts;
use suho_domain::Symbol;
use suho_messaging::UserEventProducer;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
use openapi::{CheckState, Health, HealthChecks, HealthState};
pub use throttle::{LoginThrottle, ThrottleLimits};
pub use ws::{WsHub, WsOptions};

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
    /// Failed-login counts (per account, per account and IP, per IP).
    pub login_throttle: LoginThrottle,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`http.trusted_proxies`).
    pub trusted_proxies: Vec<suho_config::IpNetwork>,
    /// Other origins whose pages may call the API (`http.cors_origins`; none by default).
    pub cors_origins: Vec<suho_config::CorsOrigin>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Process start, for `/health`.
    pub started: Instant,
    /// Wakes the outbox relay ([`outbox::run`]).
    pub relay: outbox::Relay,
}

impl AppState {
    /// A gateway's state over `accounts` and `producer`, trading `symbols` and offering
    /// `strategies` for auto-trading, with the default login throttle, no trusted proxy
    /// ([`AppState::with_trusted_proxies`]) and the process's metrics recorder, started now.
    #[must_use]
    pub fn new(
        accounts: Accounts,
        producer: UserEventProducer,
        symbols: HashSet<Symbol>,
        strategies: Vec<String>,
        topic_prefix: String,
    ) -> AppState {
        AppState {
            accounts,
            producer,
            symbols,
            strategies,
            topic_prefix,
            login_throttle: LoginThrottle::new(ThrottleLimits::default()),
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            metrics: suho_telemetry::metrics(),
            started: Instant::now(),
            relay: outbox::Relay::default(),
        }
    }
}

impl AppState {
    /// The same state, believing `X-Forwarded-For` from `proxies`.
    #[must_use]
    pub fn with_trusted_proxies(mut self, proxies: Vec<suho_config::IpNetwork>) -> AppState {
        self.trusted_proxies = proxies;
        self
    }

    /// The same state, letting pages of `origins` call the API (CORS).
    #[must_use]
    pub fn with_cors_origins(mut self, origins: Vec<suho_config::CorsOrigin>) -> AppState {
        self.cors_origins = origins;
        self
    }

    /// The address a request from `peer` with `headers` comes from (see `client_ip`).
    pub(crate) fn client_ip(
        &self,
        peer: std::net::SocketAddr,
        headers: &axum::http::HeaderMap,
    ) -> std::net::IpAddr {
        client_ip::client_ip(peer, headers, &self.trusted_proxies)
    }
}

/// Every route, each registered from its handler's `#[utoipa::path]` (method and path), with
/// the OpenAPI document those annotations make. The only list of routes: [`router`] serves
/// it and [`openapi()`] documents it.
pub fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::refresh))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(trade::open))
        .routes(routes!(trade::close))
        .routes(routes!(trade::modify))
        .routes(routes!(trade::cancel))
        .routes(routes!(trade::replace))
        .routes(routes!(user::get_settings, user::put_settings))
        .routes(routes!(user::link_mt5))
        .routes(routes!(user::trades))
        .routes(routes!(user::deposit))
        .routes(routes!(user::withdraw))
        .routes(routes!(user::account))
        .routes(routes!(queries::positions))
        .routes(routes!(queries::orders))
        .routes(routes!(queries::command))
        .routes(routes!(queries::activities))
        .routes(routes!(market::symbols))
        .routes(routes!(market::candles))
        .routes(routes!(ws::upgrade))
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// The router with every route of [`api`]; anything else is a JSON 404. Without a hub,
/// `/ws` answers 503.
pub fn router(state: Arc<AppState>, ws: Option<WsHub>) -> Router {
    router_with_web(state, ws, None)
}

/// [`router`], and with `web_dir`, the dashboard's files from that directory for any other
/// `GET` (`/` is its `index.html`, or a page that says how to build it).
pub fn router_with_web(
    state: Arc<AppState>,
    ws: Option<WsHub>,
    web_dir: Option<PathBuf>,
) -> Router {
    let (router, doc) = api().split_for_parts();
    let known = Arc::new(query::KnownQueries::of(&doc));
    let router = match web_dir {
        Some(dir) => {
            let dir = Arc::new(dir);
            router.fallback(move |method: axum::http::Method, uri: axum::http::Uri| {
                let dir = Arc::clone(&dir);
                async move { web::serve(&dir, &method, &uri).await }
            })
        }
        None => router.fallback(|| async { ApiError::NotFound }),
    };
    let origins = state.cors_origins.clone();
    let router = router
        .layer(axum::middleware::from_fn(move |request, next| {
            query::refuse_unknown(Arc::clone(&known), request, next)
        }))
        .with_state(state);
    let router = match ws {
        Some(hub) => router.layer(Extension(hub)),
        None => router,
    };
    edge::layers(router, &origins)
}

/// The OpenAPI document of every route.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// Serves the HTTP API (without `/ws`: see [`serve_with`]) on `listener` until `shutdown`,
/// then finishes in-flight requests. The outbox relay ([`outbox::run`]) runs alongside.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// [`serve`], with the WebSocket stream `/ws` fed by `ws` (which closes its connections on
/// its own shutdown token).
///
/// # Errors
/// The listener fails.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    ws: Option<WsHub>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_web(listener, state, ws, None, shutdown).await
}

/// [`serve_with`], and the web dashboard from `web_dir` (see [`router_with_web`]).
///
/// # Errors
/// The listener fails.
pub async fn serve_web(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    ws: Option<WsHub>,
    web_dir: Option<PathBuf>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Every instance runs a relay; they take turns on the outbox.
    let relay_stop = shutdown.child_token();
    let relay = tokio::spawn(outbox::run(state.clone(), relay_stop.clone()));
    let served = axum::serve(
        listener,
        router_with_web(state, ws, web_dir).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await;
    relay_stop.cancel();
    let _ = relay.await;
    served
}

/// The gateway's health.
///
/// `ok` while PostgreSQL answers; `degraded` (503) when it does not.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Healthy.", body = Health),
        (status = 503, description = "Degraded: the database does not answer.", body = Health),
    )
)]
async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let db = sqlx_ok(&state).await;
    let code = if db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Health {
            service: "gateway".into(),
            status: if db {
                HealthState::Ok
            } else {
                HealthState::Degraded
            },
            uptime_s: state.started.elapsed().as_secs(),
            checks: HealthChecks {
                database: if db { CheckState::Ok } else { CheckState::Down },
            },
        }),
    )
}

async fn sqlx_ok(state: &AppState) -> bool {
    state.accounts.ping().await
}

/// The Prometheus metrics of this process.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4.", body = String, content_type = "text/plain; version=0.0.4"),
    )
)]
async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This document.
///
/// OpenAPI 3.1, generated from the handlers' annotations.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/json"),
    )
)]
async fn openapi_json(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let document = openapi::served(&state.symbols, &state.strategies);
    Json(document)
}
