//! The transactional outbox. A change and the event that announces it are written in one
//! transaction ([`Accounts::register`], [`Accounts::logout`], [`Accounts::update_settings`],
//! [`Accounts::link_mt5`]; an event with no change of its own goes through
//! [`Accounts::record_event`]), so the database never holds a change whose event is lost,
//! whatever happens to Kafka. A relay ([`Accounts::relay_outbox`]) hands the stored events to
//! a publisher oldest first and deletes each one the publisher has delivered.
//!
//! - **Order.** A user's profile changes are serialised by a per-user lock held until their
//!   transaction commits, so their events get increasing ids in the order the changes were
//!   committed, and the relay publishes in id order.
//! - **One relay at a time.** A relay round holds a transaction-level advisory lock; a round
//!   that finds it taken (another instance's relay) publishes nothing and says so.
//! - **At least once.** A row is deleted in the round's transaction after its publication;
//!   if that transaction is lost after the publication, the event is published again, with
//!   the same `event_id` (the payload is stored whole).

use std::future::Future;

use sqlx::{Postgres, Transaction};

use crate::{AccountError, Accounts};

/// The advisory lock of the relay (`"SUHOOUTB"` as a number).
const RELAY_LOCK: i64 = 0x5355_484F_4F55_5442;
/// The advisory lock class of one user's profile changes (the key is `hashtext(user_id)`).
const USER_LOCK_CLASS: i32 = 0x5355_484F;

/// An event to publish: its topic's name (without the deployment prefix), key, type and
/// payload as they will go to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The topic's name, e.g. `user.settings`.
    pub topic: String,
    /// The record key (the user id).
    pub key: String,
    /// The `event_type` header.
    pub event_type: String,
    /// The record value.
    pub payload: Vec<u8>,
}

/// What one relay round did.
#[derive(Debug, Default)]
pub struct Relayed<E> {
    /// Events published and deleted.
    pub published: u64,
    /// Another relay held the lock: nothing was read.
    pub busy: bool,
    /// More events were waiting than the round's limit.
    pub more: bool,
    /// The publisher's error on the first event it could not deliver (that event and the
    /// later ones stay stored).
    pub error: Option<E>,
}

/// Inserts `event` in `tx`.
pub(crate) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    event: &OutboxEvent,
) -> Result<(), AccountError> {
    sqlx::query(
        "INSERT INTO event_outbox (topic, key, event_type, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(&event.topic)
    .bind(&event.key)
    .bind(&event.event_type)
    .bind(&event.payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Holds `user_id`'s profile lock until `tx` ends.
pub(crate) async fn lock_user(
    tx: &mut Transaction<'_, Postgres>,
    user_id: &str,
) -> Result<(), AccountError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(USER_LOCK_CLASS)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Accounts {
    /// One relay round: up to `limit` stored events, oldest first, handed to `publish` in one
    /// batch (so it can have them all in flight at once). `publish` answers how many of them,
    /// from the first, were delivered, and the error on the next one; those delivered are
    /// deleted, the rest stay for the next round (the error is in [`Relayed::error`]).
    ///
    /// # Errors
    /// A database failure (nothing is deleted then; what was published is published again).
    pub async fn relay_outbox<E, F, Fut>(
        &self,
        limit: i64,
        publish: F,
    ) -> Result<Relayed<E>, AccountError>
    where
        F: FnOnce(Vec<OutboxEvent>) -> Fut,
        Fut: Future<Output = (usize, Option<E>)>,
    {
        let mut tx = self.pool().begin().await?;
        let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(Relayed {
                published: 0,
                busy: true,
                more: false,
                error: None,
            });
        }
        let rows: Vec<(i64, String, String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, topic, key, event_type, payload FROM event_outbox ORDER BY id LIMIT $1",
        )
        .bind(limit.saturating_add(1))
        .fetch_all(&mut *tx)
        .await?;
        let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
        let (ids, events): (Vec<i64>, Vec<OutboxEvent>) = rows
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(0))
            .map(|(id, topic, key, event_type, payload)| {
                let event = OutboxEvent {
                    topic,
                    key,
                    event_type,
                    payload,
                };
                (id, event)
            })
            .unzip();
        let (delivered, error) = if events.is_empty() {
            (0, None)
        } else {
            publish(events).await
        };
        let done = &ids[..delivered.min(ids.len())];
        if !done.is_empty() {
            sqlx::query("DELETE FROM event_outbox WHERE id = ANY($1)")
                .bind(done)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Relayed {
            published: done.len() as u64,
            busy: false,
            more: more || error.is_some(),
            error,
        })
    }

    /// Stores `event` in the outbox on its own (an event that comes with no other change: a
    /// login, a failed login).
    ///
    /// # Errors
    /// A database failure.
    pub async fn record_event(&self, event: &OutboxEvent) -> Result<(), AccountError> {
        let mut tx = self.pool().begin().await?;
        insert(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many events wait in the outbox.
    ///
    /// # Errors
    /// A database failure.
    pub async fn outbox_len(&self) -> Result<u64, AccountError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM event_outbox")
            .fetch_one(self.pool())
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
