//! API keys: made, listed and revoked by their user, with a password login's token (a key
//! cannot manage keys). A key is then a bearer token for HTTP and `/ws` within its scopes
//! (`suho_accounts::api_keys`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use secrecy::ExposeSecret;
use suho_accounts::{ApiKey, ApiScope};

use crate::auth::{AuthUser, Need};
use crate::input::Body;
use crate::openapi::{
    BodyErrors, ErrorBody, KeyInfo, KeyList, KeyScope, NewKey, NotYours, Unauthorized,
};
use crate::user::own;
use crate::{ApiError, AppState};

fn info(key: ApiKey) -> KeyInfo {
    KeyInfo {
        key_id: key.key_id,
        name: key.name,
        scopes: key
            .scopes
            .into_iter()
            .map(|s| match s {
                ApiScope::Read => KeyScope::Read,
                ApiScope::Trade => KeyScope::Trade,
            })
            .collect(),
        created_at: key.created_at,
        last_used_at: key.last_used_at,
    }
}

/// Makes an API key.
///
/// The answer holds the whole key, once; suho keeps only its hash. At most 25 keys at a time.
#[utoipa::path(
    post,
    path = "/api/user/{user_id}/api-keys",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."),),
    request_body = crate::openapi::NewKeyRequest,
    responses(
        (status = 201, description = "The key, shown this once.", body = NewKey),
        BodyErrors,
        Unauthorized,
        NotYours,
        (status = 422, description = "`invalid_field`: `name` is not 1 to 64 characters, `scopes` is not a non-empty list of `read` and `trade`, or an unknown field.", body = ErrorBody),
        (status = 409, description = "`conflict`: the user holds 25 keys already; revoke one first.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is down.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = own(&claims, &user_id, Need::Session)?;
    let body = Body::parse(&body)?;
    body.only(&["name", "scopes"])?;
    let name = body.text("name", 1, suho_accounts::api_keys::MAX_NAME)?;
    let scopes = body.strings("scopes")?;
    let scopes = scopes
        .iter()
        .map(|s| {
            ApiScope::parse(s).ok_or_else(|| {
                ApiError::invalid("scopes", format!("`{s}` is not `read` or `trade`"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let made = state
        .accounts
        .create_api_key(&user_id, name, &scopes)
        .await?;
    tracing::info!(%user_id, key_id = %made.key.key_id, "API key made");
    Ok((
        StatusCode::CREATED,
        Json(NewKey {
            key: made.secret.expose_secret().to_string(),
            info: info(made.key),
        }),
    ))
}

/// Lists the caller's API keys (never their secrets).
#[utoipa::path(
    get,
    path = "/api/user/{user_id}/api-keys",
    tag = "user",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The caller's own id (the token's subject)."),),
    responses(
        (status = 200, description = "The keys that are not revoked, newest first.", body = KeyList),
        Unauthorized,
        NotYours,
        (status = 503, description = "`unavailable`: the database is down.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path(user_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = own(&claims, &user_id, Need::Session)?;
    let keys = state.accounts.api_keys(&user_id).await?;
    Ok(Json(KeyList {
        api_keys: keys.into_iter().map(info).collect(),
    }))
}

/// Revokes one of the caller's API keys: it is refused from the next request on, and a
/// stream opened with it is closed at its next check.
#[utoipa::path(
    delete,
    path = "/api/user/{user_id}/api-keys/{key_id}",
    tag = "user",
    security(("bearer" = [])),
    params(
        ("user_id" = String, Path, description = "The caller's own id (the token's subject)."),
        ("key_id" = String, Path, description = "The key's id, as listed."),
    ),
    responses(
        (status = 204, description = "Revoked."),
        Unauthorized,
        NotYours,
        (status = 404, description = "`not_found`: the caller has no such key (or it is revoked already).", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is down.", body = ErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    AuthUser(claims): AuthUser,
    Path((user_id, key_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = own(&claims, &user_id, Need::Session)?;
    if state.accounts.revoke_api_key(&user_id, &key_id).await? {
        tracing::info!(%user_id, %key_id, "API key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
