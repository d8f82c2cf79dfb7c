//! Register, login and logout, and the bearer-token extractor. Each publishes its
//! `user.auth` event (ids, address, IP and user agent; never a password or token), stored
//! first with the change it announces, through the outbox ([`crate::outbox`]). A
//! registration also stores an `OPEN_ACCOUNT` command for the new user (on `user.commands`,
//! keyed by the user like every command), in the same transaction, so the engine opens the
//! paper account with its opening balance before any trade: the account exists from
//! registration, with its `ACCOUNT_OPENED` and `ACCOUNT_STATUS`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use secrecy::{ExposeSecret, SecretString};
use suho_accounts::{AccountError, ApiScope, Claims};
use suho_domain::{new_event_id, AuthEvent, AuthEventType, TradeCommand, UserId, SCHEMA_VERSION};
use suho_messaging::now_ms;

use crate::input::Body;
use crate::openapi::{
    BodyErrors, Credentials, ErrorBody, LoginAnswer, Refreshed, Registered, Registration,
    TokenType, Unauthorized,
};
use crate::{outbox, ApiError, AppState};

/// The authenticated caller, from `Authorization: Bearer <jwt>`.
pub struct AuthUser(pub Claims);

impl FromRequestParts<Arc<AppState>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?
            .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?;
        Ok(AuthUser(state.accounts.authenticate(token).await?))
    }
}

/// What a route needs of the caller's token, beyond being the path's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Reading the user's own data: a session or a key with `read`.
    Read,
    /// Trading and moving money: a session or a key with `trade`.
    Trade,
    /// Changing the account itself (settings, linked accounts, API keys, the session): a
    /// password login's token, never an API key.
    Session,
}

/// Whether `claims` may do what `need` names.
///
/// # Errors
/// [`ApiError::Scope`] (403) saying what is missing.
pub(crate) fn need(claims: &Claims, need: Need) -> Result<(), ApiError> {
    let ok = match need {
        Need::Read => claims.allows(ApiScope::Read),
        Need::Trade => claims.allows(ApiScope::Trade),
        Need::Session => claims.is_session(),
    };
    if ok {
        return Ok(());
    }
    Err(ApiError::Scope(match need {
        Need::Read => "this API key lacks the `read` scope",
        Need::Trade => "this API key lacks the `trade` scope",
        Need::Session => "an API key may not do this: log in with the account's password",
    }))
}

/// The token of an `Authorization: Bearer <jwt>` header; `None` without the header.
///
/// # Errors
/// The header is there but not `Bearer <token>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(header) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into())
        })
}

fn auth_event(
    event_type: AuthEventType,
    user_id: UserId,
    email: Option<String>,
    ip: IpAddr,
    headers: &HeaderMap,
) -> AuthEvent {
    AuthEvent {
        event_id: new_event_id("auth"),
        event_type,
        user_id,
        email,
        ip_address: Some(ip.to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        reason: None,
        timestamp: now_ms(),
        schema_version: SCHEMA_VERSION,
    }
}

/// Stores `event` on its own and publishes it (a login's, which changes nothing else).
async fn record(state: &AppState, event: &AuthEvent) -> Result<(), ApiError> {
    state.accounts.record_event(&outbox::stored(event)?).await?;
    outbox::publish_now(state).await;
    Ok(())
}

/// The `{email, password}` of a register or login body.
fn credentials(body: &Body) -> Result<(&str, SecretString), ApiError> {
    body.only(&["email", "password"])?;
    let email = body.string("email")?;
    let password = SecretString::from(body.string("password")?.to_string());
    Ok((email, password))
}

/// Creates an account.
///
/// Publishes `USER_REGISTERED` on `user.auth`, and an `OPEN_ACCOUNT` command on
/// `user.commands`: the trading engine opens the user's paper account with its opening
/// balance (`ACCOUNT_OPENED` on `user.transactions`, then its `ACCOUNT_STATUS`), so
/// `GET /api/user/{user_id}/account` answers within moments, before any trade.
#[utoipa::path(
    post,
    path = "/api/auth/register",
    tag = "auth",
    request_body = Registration,
    responses(
        (status = 201, description = "Registered.", body = Registered),
        BodyErrors,
        (status = 409, description = "`conflict`: an account with this address exists.", body = ErrorBody),
        (status = 422, description = "`invalid_field`: `email` is not an address, or `password` is missing or not 8 to 256 characters.", body = ErrorBody),
        (status = 500, description = "`internal`: hashing the password failed.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is down.", body = ErrorBody),
    )
)]
pub async fn register(
    State(state): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let body = Body::parse(&body)?;
    let (email, password) = credentials(&body)?;
    let ip = state.client_ip(addr, &headers);
    let events = |user: &suho_accounts::User| {
        let event = auth_event(
            AuthEventType::UserRegistered,
            user.user_id.clone(),
            Some(user.email.clone()),
            ip,
            &headers,
        );
        let open = TradeCommand::open_account(user.user_id.clone(), event.timestamp);
        Ok(vec![outbox::stored(&event)?, outbox::stored(&open)?])
    };
    let user = state.accounts.register(email, &password, events).await?;
    outbox::publish_now(&state).await;
    tracing::info!(user_id = %user.user_id, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            user_id: user.user_id,
            email: user.email,
        }),
    ))
}

/// Issues a bearer token.
///
/// Checks the credentials; publishes `USER_LOGIN` (or `USER_LOGIN_FAILED`) on `user.auth`.
/// Failed logins are throttled per account, per account and client IP, and (more loosely)
/// per client IP.
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "The token.", body = LoginAnswer),
        BodyErrors,
        (status = 401, description = "`unauthorized`: unknown address or wrong password (the same answer for both).", body = ErrorBody),
        (status = 422, description = "`invalid_field`: `email` or `password` is missing or not a string.", body = ErrorBody),
        (status = 429, description = "`too_many_attempts`: too many failed logins for this account (from this IP, or from all), or from this IP (2,000 in 15 minutes).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a login may be tried again."))),
        (status = 500, description = "`internal`: checking the password failed.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is down.", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let body = Body::parse(&body)?;
    let (email, password) = credentials(&body)?;
    let ip = state.client_ip(addr, &headers);
    if let Some(wait) = state.login_throttle.check(email, ip) {
        tracing::warn!(%ip, "login throttled");
        return Err(ApiError::TooManyRequests(wait.as_secs().max(1)));
    }
    let result = state.accounts.login(email, &password).await;
    match &result {
        Ok(_) => state.login_throttle.succeeded(email),
        Err(AccountError::InvalidCredentials { .. }) => {
            state.login_throttle.failed(email, ip);
        }
        Err(_) => {}
    }
    match result {
        Ok((user, token)) => {
            let event = auth_event(
                AuthEventType::UserLogin,
                user.user_id.clone(),
                Some(user.email.clone()),
                ip,
                &headers,
            );
            record(&state, &event).await?;
            Ok(Json(LoginAnswer {
                access_token: token.token.expose_secret().to_string(),
                token_type: TokenType::Bearer,
                expires_in: token.expires_in,
                user_id: user.user_id,
                email: user.email,
            }))
        }
        Err(AccountError::InvalidCredentials {
            user_id: Some(user_id),
        }) => {
            let mut event = auth_event(AuthEventType::UserLoginFailed, user_id, None, ip, &headers);
            event.reason = Some("wrong password".into());
            record(&state, &event).await?;
            Err(ApiError::Unauthorized("invalid email or password".into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Logs out.
///
/// Revokes the caller's token and publishes `USER_LOGOUT` on `user.auth`.
#[utoipa::path(
    post,
    path = "/api/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out: the token is no longer accepted."),
        Unauthorized,
        (status = 503, description = "`unavailable`: the database is down.", body = ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    AuthUser(claims): AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    need(&claims, Need::Session)?;
    let event = auth_event(
        AuthEventType::UserLogout,
        claims.user_id(),
        None,
        state.client_ip(addr, &headers),
        &headers,
    );
    state
        .accounts
        .logout(&claims, Some(&outbox::stored(&event)?))
        .await?;
    outbox::publish_now(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A new access token for the caller's session.
///
/// What the dashboard calls before its token expires (and then hands the new token to its
/// open `/ws` with `{"action":"auth","token":...}`). The old token stays valid until its own
/// expiry. A session ends 12 hours after its password login, however often it is refreshed;
/// then this answers 401 and the user logs in again. An API key is not refreshed (it does not
/// expire).
#[utoipa::path(
    post,
    path = "/api/auth/refresh",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A new token for the same session.", body = Refreshed),
        Unauthorized,
        (status = 403, description = "`forbidden`: the token is an API key.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is down.", body = ErrorBody),
    )
)]
pub async fn refresh(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    need(&claims, Need::Session)?;
    let token = state.accounts.refresh(&claims)?;
    Ok(Json(Refreshed {
        access_token: token.token.expose_secret().to_string(),
        token_type: TokenType::Bearer,
        expires_in: token.expires_in,
        user_id: claims.user_id(),
    }))
}
