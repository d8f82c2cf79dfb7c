//! The platform's PostgreSQL, from the client side.
//!
//! - Every service logs in as its own role ([`pool`]): the identity's name and password from
//!   the secrets directory, over TLS that checks the server's certificate and host name
//!   against the local CA (`verify-full`). `database.url` names the server and the database;
//!   a user or password in it is not used.
//! - The schema's owner ([`suho_security::postgres::OWNER`]) migrates every crate's tables
//!   and then grants each role exactly its row of the identity table ([`migrate`]). No service
//!   runs as the owner.
//!
//! The roles themselves, the database and its ownership are the superuser's, made by
//! `suho stack` (or the test harness) from [`suho_security::postgres::roles_sql`].

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use suho_config::Config;
use suho_security::{Identity, Secrets, SecretsError, ServerPrincipal};

/// Why the database could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// `database.url` does not parse.
    #[error("database.url: {0}")]
    Url(String),
    /// The identity has no row in the database part of the identity table.
    #[error(
        "{0} has no database role: its row of the identity table grants it nothing in PostgreSQL"
    )]
    NoRole(&'static str),
    /// A credential is missing or unreadable.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// PostgreSQL refused or failed.
    #[error("PostgreSQL as {role}: {source}")]
    Sql {
        /// The role the connection logged in as.
        role: &'static str,
        /// The server's or the driver's error.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migrating the database: {0}")]
    Migrate(String),
}

/// Who logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// A service, as its identity's role.
    Service(Identity),
    /// The schema's owner.
    Owner,
}

impl Login {
    /// The role name.
    #[must_use]
    pub fn role(self) -> &'static str {
        match self {
            Login::Service(identity) => identity.name(),
            Login::Owner => suho_security::postgres::OWNER,
        }
    }
}

/// The connection settings of `login` for `config`'s database: its role and password, TLS
/// with the server verified against the local CA. On a benchmark's plain stack
/// (`security.transport`), its role with no password and no TLS.
///
/// # Errors
/// `database.url` does not parse, the identity has no role, or its password or the CA is
/// missing.
pub fn options(config: &Config, login: Login) -> Result<PgConnectOptions, DatabaseError> {
    if let Login::Service(identity) = login {
        if identity.postgres().is_empty() {
            return Err(DatabaseError::NoRole(identity.name()));
        }
    }
    let with_role = |options: PgConnectOptions| {
        options
            .username(login.role())
            .application_name(&format!("suho-{}", login.role()))
    };
    if config.security.transport == suho_config::Transport::Plain {
        return Ok(with_role(base_options(config)?).ssl_mode(PgSslMode::Disable));
    }
    let secrets = Secrets::at(config.secrets_dir());
    let password = match login {
        Login::Service(identity) => secrets.password(identity)?,
        Login::Owner => secrets.server_password(ServerPrincipal::PostgresOwner)?,
    };
    let ca = secrets.ca_file();
    if !ca.exists() {
        return Err(SecretsError::Missing {
            path: ca.display().to_string(),
        }
        .into());
    }
    Ok(with_role(base_options(config)?)
        .password(password.expose_secret())
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(ca))
}

/// The server and database `database.url` names, with no login.
///
/// # Errors
/// `database.url` does not parse.
pub fn base_options(config: &Config) -> Result<PgConnectOptions, DatabaseError> {
    let options = PgConnectOptions::from_str(config.database.url.expose_secret())
        .map_err(|e| DatabaseError::Url(e.to_string()))?;
    let database = options.get_database().unwrap_or("suho").to_string();
    Ok(options.database(&database))
}

/// The database's name.
///
/// # Errors
/// `database.url` does not parse.
pub fn database_name(config: &Config) -> Result<String, DatabaseError> {
    Ok(base_options(config)?
        .get_database()
        .unwrap_or("suho")
        .to_string())
}

/// A pool of at most `database.max_connections` connections logged in as `identity`.
///
/// # Errors
/// See [`options`]; the server refused the login.
pub async fn pool(config: &Config, identity: Identity) -> Result<PgPool, DatabaseError> {
    pool_of(
        config,
        Login::Service(identity),
        config.database.max_connections,
    )
    .await
}

/// A pool of at most `max` connections logged in as `login`.
///
/// # Errors
/// See [`options`]; the server refused the login.
pub async fn pool_of(config: &Config, login: Login, max: u32) -> Result<PgPool, DatabaseError> {
    PgPoolOptions::new()
        .max_connections(max.max(1))
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options(config, login)?)
        .await
        .map_err(|source| DatabaseError::Sql {
            role: login.role(),
            source,
        })
}

/// As the schema's owner: runs every crate's migrations (the accounts', the audit's, the
/// bridge's), then grants each service role its row of the identity table, revoking anything
/// else. Idempotent; what `suho up` does at every start.
///
/// # Errors
/// The owner cannot log in, or a migration or grant failed.
pub async fn migrate(config: &Config) -> Result<(), DatabaseError> {
    let database = database_name(config)?;
    let owner = pool_of(config, Login::Owner, 2).await?;
    let result = migrate_with(&owner, &database).await;
    owner.close().await;
    result
}

/// [`migrate`] over a pool that is logged in as the owner.
///
/// # Errors
/// A migration or grant failed.
pub async fn migrate_with(owner: &PgPool, database: &str) -> Result<(), DatabaseError> {
    let role = suho_security::postgres::OWNER;
    suho_accounts::MIGRATOR
        .run(owner)
        .await
        .map_err(|e| DatabaseError::Migrate(format!("accounts: {e}")))?;
    suho_audit::migrate(owner)
        .await
        .map_err(|e| DatabaseError::Migrate(format!("audit: {e}")))?;
    suho_bridge::migrate(owner)
        .await
        .map_err(|e| DatabaseError::Migrate(format!("market tables: {e}")))?;
    sqlx::raw_sql(&suho_security::postgres::grants_sql(database))
        .execute(owner)
        .await
        .map_err(|source| DatabaseError::Sql { role, source })?;
    tracing::info!(database, "database migrated and each role granted its row");
    Ok(())
}
