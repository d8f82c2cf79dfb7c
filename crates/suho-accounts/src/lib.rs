//! User accounts: registration with argon2id password hashes in PostgreSQL, login that
//! issues a short-lived HS256 JWT, and logout that revokes that token; and the user's
//! profile ([`profile`]): settings, linked MT5 accounts with their passwords sealed by an
//! AEAD ([`credentials`]), and the `client_order_id`s already used.
//!
//! This crate knows nothing of HTTP or Kafka: the gateway calls it and publishes the
//! resulting `user.auth` events. A password or token never leaves this crate in a log
//! line or an error message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;
use suho_domain::UserId;

pub mod api_keys;
pub mod credentials;
pub mod outbox;
pub mod profile;

pub use api_keys::{ApiKey, ApiScope, NewApiKey};
pub use credentials::{CredentialError, Keyring, Sealed};
pub use outbox::{OutboxEvent, Relayed};
pub use profile::ClientOrder;

/// The embedded schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The e-mail address is not one.
    #[error("email: {0}")]
    InvalidEmail(&'static str),
    /// The password is too weak or too long.
    #[error("password: {0}")]
    WeakPassword(&'static str),
    /// An account with this address exists.
    #[error("email: an account with this address already exists")]
    DuplicateEmail,
    /// Unknown address or wrong password (deliberately indistinguishable).
    #[error("invalid email or password")]
    InvalidCredentials {
        /// The account, when the address was known (for the audit event only).
        user_id: Option<UserId>,
    },
    /// The token is missing, malformed, expired, forged or revoked.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Hashing failed (should not happen with valid parameters).
    #[error("password hashing failed")]
    Hash,
    /// A field of a profile request is invalid.
    #[error("{field}: {message}")]
    InvalidField {
        /// The field, as named in the request.
        field: &'static str,
        /// What is wrong.
        message: &'static str,
    },
    /// The user holds this many API keys already, the most at a time.
    #[error("a user holds at most {0} API keys; revoke one first")]
    TooManyKeys(i64),
    /// No credentials key is configured, so broker passwords cannot be sealed or opened.
    #[error("no credentials key is configured (auth.credentials_key)")]
    NoCredentialsKey,
    /// Sealing or opening a credential failed.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The MT5 account is not linked to this user.
    #[error("mt5_account: not linked to this user")]
    NotLinked,
    /// A stored value no longer reads.
    #[error("stored data unreadable: {0}")]
    Corrupt(String),
}

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Stable id (`usr_<hex>`), the Kafka key of every event of this user.
    pub user_id: UserId,
    /// E-mail address as registered.
    pub email: String,
}

/// The claims inside an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Token id, for revocation (an API key's id for a key).
    pub jti: String,
    /// When the password login that began this session happened, seconds since the epoch: a
    /// refreshed token keeps it, and no refresh reaches past [`MAX_SESSION`] from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
    /// An API key's scopes; `None` for a password login's token, which may do everything.
    #[serde(skip)]
    pub scopes: Option<Vec<ApiScope>>,
}

/// Longest a session lasts from its password login, however often its token is refreshed.
pub const MAX_SESSION: Duration = Duration::from_secs(12 * 3600);

impl Claims {
    /// The user this token speaks for.
    pub fn user_id(&self) -> UserId {
        UserId::new(self.sub.clone())
    }

    /// Whether these claims come from a password login (not an API key).
    #[must_use]
    pub fn is_session(&self) -> bool {
        self.scopes.is_none()
    }

    /// Whether these claims may do what `scope` covers: a session may do everything, a key
    /// what its scopes name.
    #[must_use]
    pub fn allows(&self, scope: ApiScope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.contains(&scope))
    }
}

/// An issued access token.
pub struct AccessToken {
    /// The JWT; a secret.
    pub token: SecretString,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// Account operations over a PostgreSQL pool.
#[derive(Clone)]
pub struct Accounts {
    pool: PgPool,
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
    keyring: Option<Keyring>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Accounts {
    /// Account operations over `pool`, which logs in as the gateway's role (the schema is
    /// the owner's, migrated from [`MIGRATOR`] before).
    pub fn with_pool(pool: PgPool, jwt_secret: &SecretString, token_ttl: Duration) -> Accounts {
        let key = jwt_secret.expose_secret().as_bytes();
        Accounts {
            pool,
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            ttl: token_ttl,
            keyring: None,
        }
    }

    /// The same accounts, sealing broker credentials with `keyring`.
    #[must_use]
    pub fn with_keyring(mut self, keyring: Keyring) -> Accounts {
        self.keyring = Some(keyring);
        self
    }

    /// The credentials keys, if configured.
    pub(crate) fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// The connection pool (the gateway's role).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the database answers a trivial query within a second.
    pub async fn ping(&self) -> bool {
        let q = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), q).await,
            Ok(Ok(_))
        )
    }

    /// Registers a user. `events` gets the new user and returns the events announcing it (an
    /// `Option` or a `Vec`: none, one or several), stored in the outbox, in that order, in the
    /// same transaction as the user.
    ///
    /// # Errors
    /// An invalid address, a weak password, a taken address, `event`'s error, or a database
    /// failure.
    pub async fn register<E: IntoIterator<Item = OutboxEvent>>(
        &self,
        email: &str,
        password: &SecretString,
        events: impl FnOnce(&User) -> Result<E, AccountError>,
    ) -> Result<User, AccountError> {
        let email = validate_email(email)?;
        validate_password(password.expose_secret())?;
        let hash = hash_password(password.clone()).await?;
        let user_id = UserId::new(format!("usr_{}", uuid::Uuid::new_v4().simple()));
        let mut tx = self.pool.begin().await?;
        let inserted =
            sqlx::query("INSERT INTO users (user_id, email, password_hash) VALUES ($1, $2, $3)")
                .bind(user_id.as_str())
                .bind(&email)
                .bind(&hash)
                .execute(&mut *tx)
                .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(AccountError::DuplicateEmail)
            }
            Err(e) => return Err(e.into()),
        }
        let user = User { user_id, email };
        for event in events(&user)? {
            outbox::insert(&mut tx, &event).await?;
        }
        tx.commit().await?;
        Ok(user)
    }

    /// Checks the credentials and issues an access token.
    ///
    /// # Errors
    /// [`AccountError::InvalidCredentials`] for an unknown address or a wrong password
    /// (the same answer and about the same time for both), or a database failure.
    pub async fn login(
        &self,
        email: &str,
        password: &SecretString,
    ) -> Result<(User, AccessToken), AccountError> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT user_id, email, password_hash FROM users WHERE lower(email) = lower($1)",
        )
        .bind(email.trim())
        .fetch_optional(&self.pool)
        .await?;
        let Some((user_id, email, hash)) = row else {
            // Spend the time a real check would, so timing does not reveal unknown addresses.
            let _ = verify_password(password.clone(), dummy_hash().to_string()).await;
            return Err(AccountError::InvalidCredentials { user_id: None });
        };
        let user_id = UserId::new(user_id);
        if !verify_password(password.clone(), hash).await? {
            return Err(AccountError::InvalidCredentials {
                user_id: Some(user_id),
            });
        }
        let token = self.issue(&user_id, None)?;
        Ok((User { user_id, email }, token))
    }

    fn issue(&self, user_id: &UserId, auth_time: Option<u64>) -> Result<AccessToken, AccountError> {
        let iat = now_s();
        let auth_time = auth_time.unwrap_or(iat);
        let claims = Claims {
            sub: user_id.as_str().to_string(),
            iat,
            // Never past the session's end.
            exp: (iat + self.ttl.as_secs()).min(auth_time + MAX_SESSION.as_secs()),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            auth_time: Some(auth_time),
            scopes: None,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AccountError::InvalidToken(e.to_string()))?;
        Ok(AccessToken {
            token: SecretString::from(token),
            expires_in: self.ttl.as_secs(),
        })
    }

    /// Verifies a bearer token: signature, expiry, and that it was not logged out.
    ///
    /// # Errors
    /// [`AccountError::InvalidToken`] with the reason, or a database failure.
    pub async fn authenticate(&self, token: &str) -> Result<Claims, AccountError> {
        if token.starts_with(api_keys::KEY_PREFIX) {
            return self.authenticate_key(token).await;
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|e| {
                AccountError::InvalidToken(match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "expired".to_string(),
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "bad signature".to_string()
                    }
                    _ => "malformed".to_string(),
                })
            })?;
        let revoked: Option<(String,)> =
            sqlx::query_as("SELECT jti FROM revoked_tokens WHERE jti = $1")
                .bind(&data.claims.jti)
                .fetch_optional(&self.pool)
                .await?;
        if revoked.is_some() {
            return Err(AccountError::InvalidToken("logged out".into()));
        }
        Ok(data.claims)
    }

    /// A new access token for the session `claims` belong to (a password login's, checked by
    /// [`Accounts::authenticate`]): what the dashboard asks for before its token expires. The
    /// old token stays valid until its own `exp`; the session ends [`MAX_SESSION`] after its
    /// login, whatever the refreshes.
    ///
    /// # Errors
    /// [`AccountError::InvalidToken`] for an API key's claims or an ended session.
    pub fn refresh(&self, claims: &Claims) -> Result<AccessToken, AccountError> {
        if !claims.is_session() {
            return Err(AccountError::InvalidToken(
                "an API key is not refreshed: it does not expire".into(),
            ));
        }
        let auth_time = claims.auth_time.unwrap_or(claims.iat);
        if now_s() + 60 >= auth_time + MAX_SESSION.as_secs() {
            return Err(AccountError::InvalidToken(
                "the session is over: log in again".into(),
            ));
        }
        self.issue(&claims.user_id(), Some(auth_time))
    }

    /// Ends the token's session: it is refused from now on. `event` (announcing the logout)
    /// is stored in the outbox in the same transaction.
    ///
    /// # Errors
    /// A database failure.
    pub async fn logout(
        &self,
        claims: &Claims,
        event: Option<&OutboxEvent>,
    ) -> Result<(), AccountError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, to_timestamp($3)) ON CONFLICT DO NOTHING",
        )
        .bind(&claims.jti)
        .bind(&claims.sub)
        .bind(i64::try_from(claims.exp).unwrap_or(i64::MAX) as f64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < now()")
            .execute(&mut *tx)
            .await?;
        if let Some(event) = event {
            outbox::insert(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Characters an e-mail address never holds: control characters and Unicode white space.
macro_rules! not_in_address {
    () => {
        r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
    };
}

/// What the API takes as an e-mail address: a local part, `@`, and a domain of at least two
/// dot-separated labels, with no white space or control character anywhere. In the syntax
/// of both ECMA-262 (the OpenAPI document gives it to clients) and the `regex` crate (which
/// checks it here).
pub const EMAIL_PATTERN: &str = concat!(
    "^[^@",
    not_in_address!(),
    "]+@(?:[^@.",
    not_in_address!(),
    r"]+\.)+[^@.",
    not_in_address!(),
    "]+$"
);

/// The longest e-mail address, in characters.
pub const MAX_EMAIL: usize = 254;

fn validate_email(email: &str) -> Result<String, AccountError> {
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(EMAIL_PATTERN).expect("EMAIL_PATTERN is a valid pattern")
    });
    if email.is_empty() {
        return Err(AccountError::InvalidEmail("is required"));
    }
    if email.chars().count() > MAX_EMAIL {
        return Err(AccountError::InvalidEmail("is longer than 254 characters"));
    }
    if PATTERN.is_match(email) {
        Ok(email.to_string())
    } else {
        Err(AccountError::InvalidEmail(
            "is not an e-mail address (local part, @, a dotted domain; no spaces)",
        ))
    }
}

fn validate_password(password: &str) -> Result<(), AccountError> {
    let chars = password.chars().count();
    if chars < 8 {
        return Err(AccountError::WeakPassword("must be at least 8 characters"));
    }
    if chars > 256 {
        return Err(AccountError::WeakPassword("must be at most 256 characters"));
    }
    Ok(())
}

/// argon2id with the crate's default (OWASP) parameters, on a blocking thread.
async fn hash_password(password: SecretString) -> Result<String, AccountError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|_| AccountError::Hash)
    })
    .await
    .map_err(|_| AccountError::Hash)?
}

async fn verify_password(password: SecretString, hash: String) -> Result<bool, AccountError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|_| AccountError::Hash)?;
        Ok(Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|_| AccountError::Hash)?
}

/// A valid argon2id hash of a random password, to verify against for unknown addresses.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let random: [u8; 16] = rand::random();
        Argon2::default()
            .hash_password(&random, &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(validate_email("a@b.co").is_ok());
        assert!(validate_email("Trader@Mail.Example.com").is_ok());
        // What the pattern refuses, the server refuses: no trimming, no empty label.
        for bad in [
            "",
            "nope",
            "a@b",
            "@b.co",
            "a@.co",
            "a@b.co.",
            "a@b..co",
            "a b@c.de",
            "a@@b.co",
            " a@b.co",
            "a@b.co\n",
            "a\u{0}@b.co",
            "a\u{2028}@b.co",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough").is_ok());
    }
}
