//! API keys: what a bot or a script uses instead of a password login.
//!
//! A key is `suho_ak_{key_id}_{secret}`: the id finds the row, the secret (32 random bytes,
//! base64url) is checked against its SHA-256, which is all the database keeps. The whole key
//! is shown once, when it is made. Each key carries scopes ([`ApiScope`]): `read` (every
//! `GET` of the user's own data, and the stream) and `trade` (the trading and money routes).
//! A key never manages keys, settings or linked accounts: those need a password login. A
//! revoked key is refused from the next request on.

use base64::Engine;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use suho_domain::UserId;

use crate::{now_s, AccountError, Accounts, Claims};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiScope {
    /// Read the user's own data and stream it.
    Read,
    /// Send trading commands, deposits and withdrawals.
    Trade,
}

impl ApiScope {
    /// Both, in order.
    pub const ALL: [ApiScope; 2] = [ApiScope::Read, ApiScope::Trade];

    /// The scope's name on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ApiScope::Read => "read",
            ApiScope::Trade => "trade",
        }
    }

    /// The scope named `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<ApiScope> {
        ApiScope::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// A key as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key's id (`ak_<hex>`), the part of the key that is not secret.
    pub key_id: String,
    /// The user's label for it.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<ApiScope>,
    /// Made at, epoch ms.
    pub created_at: i64,
    /// Last used at, epoch ms, if ever.
    pub last_used_at: Option<i64>,
}

/// A key just made: the only time its secret exists outside the client.
pub struct NewApiKey {
    /// The key as listed.
    pub key: ApiKey,
    /// The whole key, for `Authorization: Bearer ...`.
    pub secret: SecretString,
}

/// Every key starts so; a bearer token without it is a JWT.
pub const KEY_PREFIX: &str = "suho_ak_";

/// Most keys a user may hold at once.
pub const MAX_KEYS: i64 = 25;

/// Longest key name.
pub const MAX_NAME: usize = 64;

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn scope_names(scopes: &[ApiScope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_string()).collect()
}

fn parse_scopes(names: &[String]) -> Result<Vec<ApiScope>, AccountError> {
    names
        .iter()
        .map(|n| {
            ApiScope::parse(n).ok_or_else(|| AccountError::Corrupt(format!("api key scope {n}")))
        })
        .collect()
}

/// `(key_id, secret)` of a key's text.
fn split(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((id, secret))
}

type KeyRow = (String, String, Vec<String>, i64, Option<i64>);

/// `(user_id, scopes, secret_hash, revoked_at, created_at)`.
type AuthRow = (String, Vec<String>, Vec<u8>, Option<i64>, i64);

fn listed(row: KeyRow) -> Result<ApiKey, AccountError> {
    let (key_id, name, scopes, created_at, last_used_at) = row;
    Ok(ApiKey {
        key_id: format!("ak_{key_id}"),
        name,
        scopes: parse_scopes(&scopes)?,
        created_at,
        last_used_at,
    })
}

impl Accounts {
    /// Makes a key for `user` named `name` with `scopes`.
    ///
    /// # Errors
    /// A name that is empty or too long, no scope, too many keys, or a database failure.
    pub async fn create_api_key(
        &self,
        user: &UserId,
        name: &str,
        scopes: &[ApiScope],
    ) -> Result<NewApiKey, AccountError> {
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control)
        {
            return Err(AccountError::InvalidField {
                field: "name",
                message: "must be 1 to 64 characters, none of them a control character",
            });
        }
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(AccountError::InvalidField {
                field: "scopes",
                message: "must name at least one of `read`, `trade`",
            });
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let mut tx = self.pool.begin().await?;
        // One key count per user at a time.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('suho-api-keys:' || $1, 0))")
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if held >= MAX_KEYS {
            return Err(AccountError::TooManyKeys(MAX_KEYS));
        }
        let created_at: i64 = sqlx::query_scalar(
            "INSERT INTO api_keys (key_id, user_id, name, scopes, secret_hash) \
             VALUES ($1, $2, $3, $4, $5) \
             RETURNING (extract(epoch FROM created_at) * 1000)::bigint",
        )
        .bind(&id)
        .bind(user.as_str())
        .bind(name)
        .bind(scope_names(&scopes))
        .bind(digest(&secret))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(NewApiKey {
            secret: SecretString::from(format!("{KEY_PREFIX}{id}_{secret}")),
            key: ApiKey {
                key_id: format!("ak_{id}"),
                name: name.to_string(),
                scopes,
                created_at,
                last_used_at: None,
            },
        })
    }

    /// The user's keys that are not revoked, newest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn api_keys(&self, user: &UserId) -> Result<Vec<ApiKey>, AccountError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT key_id, name, scopes, (extract(epoch FROM created_at) * 1000)::bigint, \
             (extract(epoch FROM last_used_at) * 1000)::bigint FROM api_keys \
             WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, key_id",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(listed).collect()
    }

    /// Revokes the user's key `key_id` (`ak_<hex>`); whether there was such a key to revoke.
    ///
    /// # Errors
    /// A database failure.
    pub async fn revoke_api_key(&self, user: &UserId, key_id: &str) -> Result<bool, AccountError> {
        let Some(id) = key_id.strip_prefix("ak_") else {
            return Ok(false);
        };
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() \
             WHERE user_id = $1 AND key_id = $2 AND revoked_at IS NULL",
        )
        .bind(user.as_str())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The claims an API key stands for: its user, its id as `jti`, its scopes, and no
    /// expiry of its own (`exp` is the far future; revocation ends it).
    ///
    /// # Errors
    /// [`AccountError::InvalidToken`] for an unknown, wrong or revoked key, or a database
    /// failure.
    pub(crate) async fn authenticate_key(&self, key: &str) -> Result<Claims, AccountError> {
        let Some((id, secret)) = split(key) else {
            return Err(AccountError::InvalidToken("malformed API key".into()));
        };
        let row: Option<AuthRow> = sqlx::query_as(
            "SELECT user_id, scopes, secret_hash, (extract(epoch FROM revoked_at))::bigint, \
             (extract(epoch FROM created_at))::bigint FROM api_keys WHERE key_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let wrong = || AccountError::InvalidToken("unknown API key".into());
        let Some((user_id, scopes, hash, revoked, created)) = row else {
            return Err(wrong());
        };
        if !bool::from(digest(secret).ct_eq(&hash)) {
            return Err(wrong());
        }
        if revoked.is_some() {
            return Err(AccountError::InvalidToken("API key revoked".into()));
        }
        // At most once a minute per key, so a busy bot does not write on every request.
        sqlx::query(
            "UPDATE api_keys SET last_used_at = now() WHERE key_id = $1 \
             AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(Claims {
            sub: user_id,
            iat: u64::try_from(created).unwrap_or(0),
            exp: now_s() + API_KEY_HORIZON_S,
            jti: format!("ak_{id}"),
            auth_time: None,
            scopes: Some(parse_scopes(&scopes)?),
        })
    }
}

/// How far ahead a key's claims say they expire: a key has no expiry, and a stream opened
/// with it is closed when the key is revoked (the stream's recheck), not by this.
const API_KEY_HORIZON_S: u64 = 10 * 365 * 24 * 3600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_splits_into_id_and_secret_only_when_well_formed() {
        assert_eq!(
            split("suho_ak_0123456789abcdef_c2VjcmV0"),
            Some(("0123456789abcdef", "c2VjcmV0"))
        );
        for bad in [
            "suho_ak_0123456789abcdef_",
            "suho_ak_0123_secret",
            "suho_ak_0123456789abcdeg_secret",
            "eyJhbGciOi.x.y",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }

    #[test]
    fn scopes_have_wire_names() {
        assert_eq!(ApiScope::parse("trade"), Some(ApiScope::Trade));
        assert_eq!(ApiScope::parse("admin"), None);
    }

    #[test]
    fn the_secret_is_kept_only_as_a_digest() {
        assert_eq!(digest("x").len(), 32);
        assert_ne!(digest("x"), b"x".to_vec());
    }
}
