//! The one HTTP error type: every failure becomes a status and an [`ErrorBody`]
//! `{error, message}` (plus `field` for validation errors). Internal details are logged once
//! here, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::openapi::{ErrorBody, ErrorCode};

/// An API failure.
#[derive(Debug)]
pub enum ApiError {
    /// The body is not JSON (400).
    MalformedJson(String),
    /// A field is missing or invalid (422).
    Invalid {
        /// The field, as named in the request (a dotted path inside nested objects).
        field: std::borrow::Cow<'static, str>,
        /// What is wrong with it.
        message: String,
    },
    /// No or bad credentials (401).
    Unauthorized(String),
    /// The token is valid but not for this resource (403).
    Forbidden,
    /// The token is valid but may not do this: an API key without the scope, or an API key
    /// where a password login is needed (403), with why.
    Scope(&'static str),
    /// The resource exists already (409).
    Conflict(String),
    /// No such route (404).
    NotFound,
    /// Not a WebSocket upgrade on a WebSocket route (426), with why.
    UpgradeRequired(String),
    /// Too many attempts; retry after this many seconds (429).
    TooManyRequests(u64),
    /// A dependency (Kafka, the database) is down (503).
    Unavailable(&'static str),
    /// A bug or an unexpected failure (500).
    Internal,
}

impl ApiError {
    /// A validation failure of `field`.
    pub fn invalid(
        field: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::TooManyRequests(after) = self {
            let body = ErrorBody {
                error: ErrorCode::TooManyAttempts,
                message: format!("too many failed logins; try again in {after} s"),
                field: None,
            };
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, after.to_string())],
                Json(body),
            )
                .into_response();
        }
        let (status, error, message, field) = match self {
            ApiError::MalformedJson(m) => {
                (StatusCode::BAD_REQUEST, ErrorCode::MalformedJson, m, None)
            }
            ApiError::Invalid { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidField,
                format!("{field}: {message}"),
                Some(field.into_owned()),
            ),
            ApiError::Unauthorized(m) => {
                (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, m, None)
            }
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "this token may not access that user's data".into(),
                None,
            ),
            ApiError::Scope(why) => (
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                why.into(),
                None,
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, ErrorCode::Conflict, m, None),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such route".into(),
                None,
            ),
            ApiError::UpgradeRequired(m) => (
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::UpgradeRequired,
                m,
                None,
            ),
            ApiError::Unavailable(what) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                format!("{what} is unavailable; try again"),
                None,
            ),
            ApiError::TooManyRequests(_) => unreachable!("answered above"),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error".into(),
                None,
            ),
        };
        let body = ErrorBody {
            error,
            message,
            field,
        };
        (status, Json(body)).into_response()
    }
}

impl From<suho_accounts::AccountError> for ApiError {
    fn from(e: suho_accounts::AccountError) -> Self {
        use suho_accounts::AccountError as E;
        match e {
            E::InvalidEmail(m) => ApiError::invalid("email", m),
            E::WeakPassword(m) => ApiError::invalid("password", m),
            E::DuplicateEmail => {
                ApiError::Conflict("an account with this email already exists".into())
            }
            E::InvalidCredentials { .. } => {
                ApiError::Unauthorized("invalid email or password".into())
            }
            E::InvalidToken(r) => ApiError::Unauthorized(format!("invalid token: {r}")),
            E::InvalidField { field, message } => ApiError::invalid(field, message),
            E::TooManyKeys(max) => ApiError::Conflict(format!(
                "a user holds at most {max} API keys; revoke one first"
            )),
            E::NotLinked => ApiError::invalid("mt5_account", "is not linked to this user"),
            E::NoCredentialsKey => {
                tracing::error!("no credentials key configured; MT5 passwords cannot be sealed");
                ApiError::Unavailable("credential storage")
            }
            E::Database(e) => {
                tracing::error!(error = %e, "database failure");
                ApiError::Unavailable("the database")
            }
            other => {
                tracing::error!(error = %other, "account failure");
                ApiError::Internal
            }
        }
    }
}

impl From<suho_domain::SettingsError> for ApiError {
    fn from(e: suho_domain::SettingsError) -> Self {
        if e.conflict {
            ApiError::Conflict(format!("{}: {}", e.field, e.message))
        } else {
            ApiError::invalid(e.field, e.message)
        }
    }
}

impl From<suho_messaging::MessagingError> for ApiError {
    fn from(e: suho_messaging::MessagingError) -> Self {
        tracing::error!(error = %e, "event log failure");
        ApiError::Unavailable("the event log")
    }
}
