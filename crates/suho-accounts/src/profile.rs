//! A user's stored profile besides the login: settings, linked MT5 accounts (passwords
//! sealed, see [`crate::credentials`]) and the `client_order_id`s already used.

use secrecy::SecretString;
use suho_domain::{UserId, UserSettings};

use crate::credentials::Sealed;
use crate::outbox::{self, OutboxEvent};
use crate::{AccountError, Accounts};

/// What claiming a `client_order_id` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOrder {
    /// First use: the new command id is recorded.
    New,
    /// Used before: the command id it was first given.
    Existing(String),
}

/// The associated data a credential is sealed with: it binds the value to its row.
fn context(user_id: &UserId, mt5_account: &str) -> Vec<u8> {
    format!("{}|{}", user_id.as_str(), mt5_account).into_bytes()
}

/// The user's settings (the defaults until the first change), read on `conn`.
async fn settings_in(
    conn: &mut sqlx::PgConnection,
    user_id: &UserId,
) -> Result<UserSettings, AccountError> {
    let row: Option<(serde_json::Value,)> =
        sqlx::query_as("SELECT settings FROM user_settings WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_optional(conn)
            .await?;
    match row {
        None => Ok(UserSettings::default()),
        Some((value,)) => serde_json::from_value(value)
            .map_err(|e| AccountError::Corrupt(format!("stored settings: {e}"))),
    }
}

impl Accounts {
    /// The user's settings (the defaults until the first update).
    ///
    /// # Errors
    /// A database failure, or a stored object that no longer reads (reported, not
    /// replaced).
    pub async fn settings(&self, user_id: &UserId) -> Result<UserSettings, AccountError> {
        let mut conn = self.pool().acquire().await?;
        settings_in(&mut conn, user_id).await
    }

    /// Changes the user's settings: `change` gets the current ones (the defaults until the
    /// first change) and returns the new ones with the event announcing them; both are stored
    /// in one transaction, the event in the outbox. The user's other profile changes wait
    /// meanwhile, so two changes never both start from the same settings.
    ///
    /// # Errors
    /// `change`'s error (nothing stored), a stored object that no longer reads, or a database
    /// failure.
    pub async fn update_settings<E, F>(
        &self,
        user_id: &UserId,
        change: F,
    ) -> Result<UserSettings, E>
    where
        E: From<AccountError>,
        F: FnOnce(UserSettings) -> Result<(UserSettings, OutboxEvent), E>,
    {
        let mut tx = self.pool().begin().await.map_err(AccountError::from)?;
        outbox::lock_user(&mut tx, user_id.as_str()).await?;
        let current = settings_in(&mut tx, user_id).await?;
        let (settings, event) = change(current)?;
        let value = serde_json::to_value(&settings)
            .map_err(|e| AccountError::Corrupt(format!("settings: {e}")))?;
        sqlx::query(
            "INSERT INTO user_settings (user_id, settings) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET settings = $2, updated_at = now()",
        )
        .bind(user_id.as_str())
        .bind(value)
        .execute(&mut *tx)
        .await
        .map_err(AccountError::from)?;
        outbox::insert(&mut tx, &event).await?;
        tx.commit().await.map_err(AccountError::from)?;
        Ok(settings)
    }

    /// Links (or re-links, with a new password) an MT5 account; the password is sealed
    /// under the current credentials key before it reaches the database. `event` gets the
    /// user's settings and returns the event announcing the link, stored in the outbox in the
    /// same transaction.
    ///
    /// # Errors
    /// An invalid account number or password (naming the field), no credentials key
    /// configured, stored settings that no longer read, or a database failure.
    pub async fn link_mt5(
        &self,
        user_id: &UserId,
        mt5_account: &str,
        password: &SecretString,
        event: impl FnOnce(&UserSettings) -> Result<OutboxEvent, AccountError>,
    ) -> Result<(), AccountError> {
        use secrecy::ExposeSecret;
        let account = mt5_account.trim();
        if account.is_empty()
            || account.len() > 32
            || !account
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(AccountError::InvalidField {
                field: "mt5_account",
                message: "must be 1 to 32 letters, digits or dashes",
            });
        }
        let len = password.expose_secret().chars().count();
        if len == 0 || len > 128 {
            return Err(AccountError::InvalidField {
                field: "password",
                message: "must be 1 to 128 characters",
            });
        }
        let keyring = self.keyring().ok_or(AccountError::NoCredentialsKey)?;
        let sealed = keyring.seal(password, &context(user_id, account))?;
        let mut tx = self.pool().begin().await?;
        outbox::lock_user(&mut tx, user_id.as_str()).await?;
        sqlx::query(
            "INSERT INTO mt5_accounts (user_id, mt5_account, key_id, nonce, ciphertext) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, mt5_account) DO UPDATE \
             SET key_id = $3, nonce = $4, ciphertext = $5, linked_at = now()",
        )
        .bind(user_id.as_str())
        .bind(account)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .execute(&mut *tx)
        .await?;
        let settings = settings_in(&mut tx, user_id).await?;
        outbox::insert(&mut tx, &event(&settings)?).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user's linked MT5 account numbers, oldest link first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn mt5_accounts(&self, user_id: &UserId) -> Result<Vec<String>, AccountError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT mt5_account FROM mt5_accounts WHERE user_id = $1 ORDER BY linked_at, mt5_account",
        )
        .bind(user_id.as_str())
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(a,)| a).collect())
    }

    /// The password of a linked account, opened (for a broker adapter that logs in).
    ///
    /// # Errors
    /// Not linked, no or the wrong key, a tampered value, or a database failure.
    pub async fn mt5_password(
        &self,
        user_id: &UserId,
        mt5_account: &str,
    ) -> Result<SecretString, AccountError> {
        let row: Option<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT key_id, nonce, ciphertext FROM mt5_accounts \
             WHERE user_id = $1 AND mt5_account = $2",
        )
        .bind(user_id.as_str())
        .bind(mt5_account)
        .fetch_optional(self.pool())
        .await?;
        let (key_id, nonce, ciphertext) = row.ok_or(AccountError::NotLinked)?;
        let keyring = self.keyring().ok_or(AccountError::NoCredentialsKey)?;
        Ok(keyring.open(
            &Sealed {
                key_id,
                nonce,
                ciphertext,
            },
            &context(user_id, mt5_account),
        )?)
    }

    /// Records `command_id` as the command of the user's `client_order_id`, unless that id
    /// was used before: then the first command id.
    ///
    /// # Errors
    /// A database failure.
    pub async fn claim_client_order(
        &self,
        user_id: &UserId,
        client_order_id: &str,
        command_id: &str,
    ) -> Result<ClientOrder, AccountError> {
        let inserted = sqlx::query(
            "INSERT INTO client_orders (user_id, client_order_id, command_id) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, client_order_id) DO NOTHING",
        )
        .bind(user_id.as_str())
        .bind(client_order_id)
        .bind(command_id)
        .execute(self.pool())
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(ClientOrder::New);
        }
        let (first,): (String,) = sqlx::query_as(
            "SELECT command_id FROM client_orders WHERE user_id = $1 AND client_order_id = $2",
        )
        .bind(user_id.as_str())
        .bind(client_order_id)
        .fetch_one(self.pool())
        .await?;
        Ok(ClientOrder::Existing(first))
    }

    /// Forgets a claimed `client_order_id` whose command could not be queued, so a retry
    /// can queue it.
    ///
    /// # Errors
    /// A database failure.
    pub async fn release_client_order(
        &self,
        user_id: &UserId,
        client_order_id: &str,
        command_id: &str,
    ) -> Result<(), AccountError> {
        sqlx::query(
            "DELETE FROM client_orders WHERE user_id = $1 AND client_order_id = $2 AND command_id = $3",
        )
        .bind(user_id.as_str())
        .bind(client_order_id)
        .bind(command_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
