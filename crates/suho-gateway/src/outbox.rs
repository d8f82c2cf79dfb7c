//! Publishes the accounts' outbox ([`suho_accounts::outbox`]) to Kafka.
//!
//! A change the gateway stores (a registration, a logout, settings, an MT5 link) is stored with
//! its event in one transaction, and a login's event on its own; the handler then publishes
//! what waits (`publish_now`) before it answers, so in the normal case the event is in Kafka
//! when the caller hears back, as before the outbox. When Kafka does not answer within
//! [`HANDLER_WAIT`] the change is still acknowledged: it is stored, and every gateway's relay
//! ([`run`]) keeps publishing the outbox with backoff until Kafka has it. Nothing acknowledged
//! is lost: the audit trail on `user.auth` gets every event, and the settings the engine and
//! the agent follow on `user.settings` catch up with the database.

use std::sync::Arc;
use std::time::Duration;

use suho_accounts::{AccountError, OutboxEvent};
use suho_domain::{UserEvent, UserTopic};
use suho_messaging::{MessagingError, UserEventProducer};
use suho_telemetry::names;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Events per relay round (one database transaction).
const ROUND: i64 = 100;
/// How long a handler waits for its event to reach Kafka before answering anyway.
pub const HANDLER_WAIT: Duration = Duration::from_secs(5);
/// How often the relay looks for events nobody published (another instance's, or an earlier
/// process's), when all is well.
const POLL: Duration = Duration::from_secs(1);
/// How long one event may take to be acknowledged before the round gives up on it. Shorter
/// than the producer's own 30 s: a round holds the outbox meanwhile, and another instance
/// whose Kafka works should get its turn. (The record may still be delivered later; it is then
/// published twice, with the same `event_id`.)
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(4);
/// The relay's backoff while Kafka or the database fails.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));

/// Wakes this gateway's relay.
#[derive(Debug, Default)]
pub struct Relay {
    wake: Notify,
}

/// Why a flush stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The outbox could not be read or updated.
    #[error("outbox: {0}")]
    Database(#[from] AccountError),
    /// Kafka did not take an event.
    #[error("publishing an outbox event: {0}")]
    Kafka(#[from] MessagingError),
    /// Kafka did not acknowledge an event within 4 s (`PUBLISH_TIMEOUT`).
    #[error("publishing an outbox event: no acknowledgement within {} s", PUBLISH_TIMEOUT.as_secs())]
    Timeout,
    /// A stored event names a topic this build does not know (stored by a newer version).
    #[error("an outbox event for the unknown topic {0:?}")]
    UnknownTopic(String),
    /// Another relay held the outbox throughout.
    #[error("another relay holds the outbox")]
    Busy,
}

/// `event` as the outbox stores it: the record Kafka will get.
///
/// # Errors
/// The event does not encode (a bug), as [`AccountError::Corrupt`] naming its type.
pub fn stored<E: UserEvent + serde::Serialize>(event: &E) -> Result<OutboxEvent, AccountError> {
    let payload = serde_json::to_vec(event)
        .map_err(|e| AccountError::Corrupt(format!("{} event: {e}", event.event_type_str())))?;
    Ok(OutboxEvent {
        topic: event.topic().name().to_string(),
        key: event.user_id().as_str().to_string(),
        event_type: event.event_type_str().to_string(),
        payload,
    })
}

/// Queues `events` in order (the producer keeps that order) and awaits their
/// acknowledgements: how many, from the first, Kafka took, and the error on the next one.
async fn publish(
    producer: &UserEventProducer,
    events: Vec<OutboxEvent>,
) -> (usize, Option<FlushError>) {
    let mut queued = Vec::with_capacity(events.len());
    let mut error = None;
    for event in events {
        let Some(topic) = UserTopic::from_name(&event.topic) else {
            error = Some(FlushError::UnknownTopic(event.topic));
            break;
        };
        match producer.enqueue_encoded(topic, &event.key, &event.event_type, &event.payload) {
            Ok(q) => queued.push(q),
            Err(e) => {
                error = Some(e.into());
                break;
            }
        }
    }
    let mut delivered = 0;
    for q in queued {
        match tokio::time::timeout(PUBLISH_TIMEOUT, q.delivered()).await {
            Ok(Ok(_)) => {
                delivered += 1;
                metrics::counter!(names::OUTBOX_PUBLISHED, "outcome" => "published").increment(1);
            }
            failed => {
                metrics::counter!(names::OUTBOX_PUBLISHED, "outcome" => "failed").increment(1);
                // This record was queued before any that could not be, so its failure is
                // the first in order: the one to report. The later ones stay stored.
                error = Some(match failed {
                    Ok(Err(e)) => e.into(),
                    _ => FlushError::Timeout,
                });
                return (delivered, error);
            }
        }
    }
    (delivered, error)
}

/// Publishes what waits in the outbox, round after round, until it is empty. Waits for
/// another relay's round to end (up to `busy_for`).
async fn flush(state: &AppState, busy_for: Duration) -> Result<u64, FlushError> {
    let deadline = tokio::time::Instant::now() + busy_for;
    let mut published = 0;
    loop {
        let round = state
            .accounts
            .relay_outbox(ROUND, |events| publish(&state.producer, events))
            .await?;
        published += round.published;
        if let Some(e) = round.error {
            return Err(e);
        }
        if round.busy {
            if tokio::time::Instant::now() >= deadline {
                return Err(FlushError::Busy);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if !round.more {
            return Ok(published);
        }
    }
}

/// After a change is stored: publishes it (and anything older) within [`HANDLER_WAIT`], or
/// leaves it to the relay and says so in the log.
pub(crate) async fn publish_now(state: &AppState) {
    match tokio::time::timeout(HANDLER_WAIT, flush(state, HANDLER_WAIT)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a stored change's event is not in Kafka yet; the outbox relay retries it");
            state.relay.wake.notify_one();
        }
        Err(_) => {
            tracing::warn!(
                waited_ms = u64::try_from(HANDLER_WAIT.as_millis()).unwrap_or(u64::MAX),
                "Kafka did not take a stored change's event in time; the outbox relay retries it"
            );
            state.relay.wake.notify_one();
        }
    }
}

/// The relay: publishes the outbox every second (`POLL`) and whenever a handler could not, with
/// backoff while it fails, until `shutdown`.
pub async fn run(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut backoff = BACKOFF.0;
    loop {
        // A round cut short rolls back: what it published is published again by the next.
        let flushed = tokio::select! {
            () = shutdown.cancelled() => return,
            flushed = flush(&state, Duration::ZERO) => flushed,
        };
        let wait = match flushed {
            Ok(published) => {
                if published > 0 {
                    tracing::info!(published, "outbox events published");
                }
                backoff = BACKOFF.0;
                POLL
            }
            // Another instance's relay is at work: look again later.
            Err(FlushError::Busy) => POLL,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "the outbox could not be published; retrying");
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF.1);
                wait
            }
        };
        if let Ok(pending) = state.accounts.outbox_len().await {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(names::OUTBOX_PENDING).set(pending as f64);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = state.relay.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
