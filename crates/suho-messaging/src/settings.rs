//! The latest settings of every user, read from the compacted `user.settings` topic and kept
//! in memory ([`SettingsBook`]): the trading engine follows them for users' own risk limits,
//! the auto-trading agent for who opted in to which strategy.
//!
//! The reader is assigned every partition from the beginning on every start, outside any
//! consumer group's membership: each reader needs every user's settings (whichever
//! partitions its process owns), and a view held in memory has to be rebuilt from the start of
//! the log anyway, so there is no offset to commit. [`SettingsReader::open`] returns once it
//! has read up to the end the log had when it opened (its user acts on no user before that);
//! then [`SettingsReader::follow`] applies updates as they come.
//!
//! Per record, keyed by `user_id`:
//! - `SETTINGS_UPDATED` replaces the user's settings with its `settings` object;
//! - `MT5_ACCOUNT_LINKED` / `MT5_ACCOUNT_UNLINKED` replace them with theirs too, or change
//!   nothing if they carry none;
//! - a tombstone (no value) forgets the user;
//! - a record that cannot be read (or an update whose settings cannot be read) also forgets the
//!   user, with a warning: what the user wants is unknown, so nothing of theirs is assumed
//!   (no auto-trading; the engine's default limits);
//! - a record whose `user_id` is not its key is ignored, with a warning.
//!
//! Compaction keeps only the latest record of each key, and the link events share the user's
//! key, so every record carries the whole settings object (the gateway puts it in
//! `MT5_ACCOUNT_LINKED` too): whichever record compaction keeps, the settings survive.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use suho_domain::{SettingsEvent, SettingsEventType, UserId, UserSettings, UserTopic};
use tokio_util::sync::CancellationToken;

use crate::MessagingError;

/// Longest the first read of `user.settings` may take.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);
/// Timeout of each metadata request.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Called with a user and their new settings (`None`: forgotten) on each change.
type Hook = Box<dyn Fn(&UserId, Option<&UserSettings>) + Send + Sync>;

/// The latest settings of every user who has any, shared between the reader and its user.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct SettingsBook(Arc<Book>);

#[derive(Default)]
struct Book {
    users: RwLock<HashMap<UserId, UserSettings>>,
    on_change: Option<Hook>,
}

impl std::fmt::Debug for SettingsBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettingsBook")
            .field("users", &self.len())
            .finish_non_exhaustive()
    }
}

impl SettingsBook {
    /// A book that also calls `on_change` with the user and their new settings (`None`:
    /// forgotten) on each change, on the reader's task, just before the book holds it.
    pub fn with_hook(
        on_change: impl Fn(&UserId, Option<&UserSettings>) + Send + Sync + 'static,
    ) -> Self {
        SettingsBook(Arc::new(Book {
            users: RwLock::default(),
            on_change: Some(Box::new(on_change)),
        }))
    }

    /// The user's settings, if known.
    #[must_use]
    pub fn get(&self, user: &UserId) -> Option<UserSettings> {
        self.read().get(user).cloned()
    }

    /// How many users have settings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no user has settings.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every user with auto-trading enabled for `strategy`, with their settings, in user order.
    #[must_use]
    pub fn opted_in(&self, strategy: &str) -> Vec<(UserId, UserSettings)> {
        let mut users: Vec<(UserId, UserSettings)> = self
            .read()
            .iter()
            .filter(|(_, s)| s.auto_trading.get(strategy).is_some_and(|a| a.enabled))
            .map(|(u, s)| (u.clone(), s.clone()))
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        users
    }

    /// Applies one `user.settings` record (its key and value).
    pub fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>) {
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            tracing::warn!("a user.settings record without a readable key; ignored");
            return;
        };
        let user = UserId::new(key);
        let Some(value) = value else {
            self.forget(&user);
            tracing::debug!(user_id = %user, "settings tombstone; user forgotten");
            return;
        };
        let event: SettingsEvent = match serde_json::from_slice(value) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(user_id = %user, error = %e, "an unreadable user.settings record; the user's settings are forgotten until their next update");
                self.forget(&user);
                return;
            }
        };
        if event.user_id != user {
            tracing::warn!(key = %user, user_id = %event.user_id, event_id = %event.event_id, "a user.settings record keyed by another user; ignored");
            return;
        }
        // Every record carries the whole settings object (a link too: the topic is compacted
        // to the latest record per user); a link without one, from an older gateway, changes
        // nothing.
        match event.settings.map(serde_json::from_value::<UserSettings>) {
            Some(Ok(settings)) => {
                tracing::debug!(user_id = %user, event_id = %event.event_id, "settings updated");
                if let Some(hook) = &self.0.on_change {
                    hook(&user, Some(&settings));
                }
                self.write().insert(user, settings);
            }
            None if event.event_type != SettingsEventType::SettingsUpdated => {}
            None => {
                tracing::warn!(user_id = %user, event_id = %event.event_id, "SETTINGS_UPDATED without settings; the user's settings are forgotten until their next update");
                self.forget(&user);
            }
            Some(Err(e)) => {
                tracing::warn!(user_id = %user, event_id = %event.event_id, error = %e, "unreadable settings; the user's settings are forgotten until their next update");
                self.forget(&user);
            }
        }
    }

    fn forget(&self, user: &UserId) {
        if let Some(hook) = &self.0.on_change {
            hook(user, None);
        }
        self.write().remove(user);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<UserId, UserSettings>> {
        // A panic while holding the lock cannot leave the map half-written (every write is one
        // insert or remove), so a poisoned lock is still usable.
        self.0
            .users
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<UserId, UserSettings>> {
        self.0
            .users
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads `user.settings` into a [`SettingsBook`].
pub struct SettingsReader {
    consumer: crate::kafka::ClosingConsumer,
    book: SettingsBook,
    group: String,
    retry_initial: Duration,
    retry_max: Duration,
}

impl SettingsReader {
    /// Assigns every partition of `user.settings` from the beginning and reads up to the end
    /// each had when this was called, into `book`.
    ///
    /// # Errors
    /// Kafka refuses the client, or the topic cannot be listed (it does not exist, or has no
    /// leaders) within 120 s of retries, or the log is not read to its end within 120 s.
    pub async fn open(
        kafka: &suho_config::KafkaConfig,
        group: &str,
        book: SettingsBook,
        retry_initial: Duration,
        retry_max: Duration,
    ) -> Result<SettingsReader, MessagingError> {
        let topic = UserTopic::Settings.full_name(&kafka.topic_prefix);
        let group_id = format!("{}{group}", kafka.group_prefix);
        let mut base = crate::kafka::base_config(kafka);
        base.set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10");
        // Right after the topics are created, the broker may not have elected every leader yet:
        // listing is retried with backoff.
        let started = Instant::now();
        let mut backoff = retry_initial;
        let ends = loop {
            let (b, t) = (base.clone(), topic.clone());
            let listed = tokio::task::spawn_blocking(move || log_ends(&b, &t))
                .await
                .map_err(|e| MessagingError::Settings(format!("the metadata thread: {e}")))?;
            match listed {
                Ok(ends) => break ends,
                Err(e) if started.elapsed() < CATCH_UP_LIMIT => {
                    tracing::warn!(%topic, error = %e, retry_in = ?backoff, "listing user.settings failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry_max);
                }
                Err(e) => return Err(e),
            }
        };
        let consumer: StreamConsumer<crate::kafka::Quiet> =
            base.create_with_context(crate::kafka::Quiet)?;
        let mut assignment = TopicPartitionList::new();
        for (partition, _, _) in &ends {
            assignment.add_partition_offset(&topic, *partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let reader = SettingsReader {
            consumer: crate::kafka::ClosingConsumer::new(consumer, group),
            book,
            group: group.to_string(),
            retry_initial,
            retry_max,
        };
        reader.catch_up(&topic, &ends).await?;
        Ok(reader)
    }

    /// Reads until every partition's position reaches its end in `ends`.
    async fn catch_up(&self, topic: &str, ends: &[(i32, i64, i64)]) -> Result<(), MessagingError> {
        let started = Instant::now();
        let mut records = 0_u64;
        loop {
            let caught_up = crate::kafka::reached(
                &self.consumer.position()?,
                ends.iter()
                    .filter(|(_, low, high)| high > low)
                    .map(|&(partition, _, high)| (topic, partition, high)),
            );
            if caught_up {
                tracing::info!(
                    records,
                    users = self.book.len(),
                    took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    group = %self.group,
                    "user settings loaded"
                );
                return Ok(());
            }
            if started.elapsed() > CATCH_UP_LIMIT {
                return Err(MessagingError::Settings(format!(
                    "{topic}: not read to its end within {} s",
                    CATCH_UP_LIMIT.as_secs()
                )));
            }
            match tokio::time::timeout(Duration::from_millis(200), self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    records += 1;
                    self.take(&m);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading user.settings failed; retrying");
                    tokio::time::sleep(self.retry_initial).await;
                }
                Err(_) => {}
            }
        }
    }

    /// Applies updates as they arrive, until `shutdown`. Read errors are logged and retried
    /// with backoff.
    ///
    /// # Errors
    /// None today: every Kafka error is retried. The signature leaves room for fatal ones.
    pub async fn follow(self, shutdown: CancellationToken) -> Result<(), MessagingError> {
        let mut backoff = self.retry_initial;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                r = self.consumer.recv() => r,
            };
            match next {
                Ok(m) => {
                    self.take(&m);
                    backoff = self.retry_initial;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "reading user.settings failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.retry_max);
                }
            }
        }
    }

    fn take(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        crate::kafka::count_consumed(UserTopic::Settings, &self.group);
        self.book.apply(m.key(), m.payload());
    }
}

/// Every partition of `topic` with its low and high watermarks (blocking).
fn log_ends(base: &ClientConfig, topic: &str) -> Result<Vec<(i32, i64, i64)>, MessagingError> {
    let consumer: BaseConsumer = base.create()?;
    let ends = crate::kafka::watermarks(&consumer, topic, METADATA_TIMEOUT)?;
    if ends.is_empty() {
        return Err(MessagingError::Settings(format!(
            "{topic} has no partitions: create the topics first (`suho topics apply`)"
        )));
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(user: &str, event_type: &str, settings: Option<serde_json::Value>) -> Vec<u8> {
        let mut v =
            json!({"event_id":"set_1","event_type":event_type,"user_id":user,"timestamp":1});
        if let Some(s) = settings {
            v["settings"] = s;
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn opted_in() -> serde_json::Value {
        json!({"risk":{"leverage":100,"max_volume":10.0,"max_open_positions":20},"watchlist":[],
               "auto_trading":{"scalping":{"enabled":true,"volume":0.1}}})
    }

    #[test]
    fn updates_replace_links_keep_and_tombstones_forget() {
        let book = SettingsBook::default();
        let u = UserId::new("usr_a");
        book.apply(
            Some(b"usr_a"),
            Some(&record("usr_a", "SETTINGS_UPDATED", Some(opted_in()))),
        );
        assert_eq!(book.opted_in("scalping").len(), 1);
        assert!(book.opted_in("mean_reversion").is_empty());
        book.apply(
            Some(b"usr_a"),
            Some(&record("usr_a", "MT5_ACCOUNT_LINKED", None)),
        );
        assert!(
            book.get(&u).is_some(),
            "a link without settings changes nothing"
        );
        book.apply(
            Some(b"usr_a"),
            Some(&record(
                "usr_a",
                "MT5_ACCOUNT_LINKED",
                Some(serde_json::json!({
                    "risk": {"leverage": 100, "max_volume": 10, "max_open_positions": 20},
                    "watchlist": [], "auto_trading": {}
                })),
            )),
        );
        assert!(
            book.opted_in("scalping").is_empty(),
            "a link's settings replace the earlier ones"
        );
        book.apply(Some(b"usr_a"), None);
        assert!(book.get(&u).is_none(), "a tombstone forgets");
    }

    #[test]
    fn unreadable_settings_stop_auto_trading() {
        let book = SettingsBook::default();
        let u = UserId::new("usr_a");
        let good = record("usr_a", "SETTINGS_UPDATED", Some(opted_in()));
        book.apply(Some(b"usr_a"), Some(&good));
        book.apply(Some(b"usr_a"), Some(b"not json"));
        assert!(book.get(&u).is_none());
        book.apply(Some(b"usr_a"), Some(&good));
        book.apply(
            Some(b"usr_a"),
            Some(&record(
                "usr_a",
                "SETTINGS_UPDATED",
                Some(json!({"risk":5})),
            )),
        );
        assert!(book.get(&u).is_none());
        book.apply(Some(b"usr_a"), Some(&good));
        book.apply(
            Some(b"usr_a"),
            Some(&record("usr_a", "SETTINGS_UPDATED", None)),
        );
        assert!(book.get(&u).is_none());
    }

    #[test]
    fn the_hook_sees_every_change() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let book = SettingsBook::with_hook({
            let seen = Arc::clone(&seen);
            move |user, settings| {
                let leverage = settings.map(|s| s.risk.leverage);
                seen.lock()
                    .unwrap()
                    .push((user.as_str().to_string(), leverage));
            }
        });
        book.apply(
            Some(b"usr_a"),
            Some(&record("usr_a", "SETTINGS_UPDATED", Some(opted_in()))),
        );
        book.apply(
            Some(b"usr_a"),
            Some(&record("usr_a", "MT5_ACCOUNT_LINKED", None)),
        );
        book.apply(Some(b"usr_a"), Some(b"not json"));
        book.apply(
            Some(b"usr_b"),
            Some(&record("usr_a", "SETTINGS_UPDATED", Some(opted_in()))),
        );
        book.apply(Some(b"usr_a"), None);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("usr_a".to_string(), Some(100)),
                ("usr_a".to_string(), None),
                ("usr_a".to_string(), None),
            ],
            "an update, then two forgets; a link without settings and a foreign key change nothing"
        );
    }

    #[test]
    fn a_record_under_another_users_key_is_ignored() {
        let book = SettingsBook::default();
        book.apply(
            Some(b"usr_b"),
            Some(&record("usr_a", "SETTINGS_UPDATED", Some(opted_in()))),
        );
        assert!(book.is_empty());
        book.apply(
            None,
            Some(&record("usr_a", "SETTINGS_UPDATED", Some(opted_in()))),
        );
        assert!(book.is_empty());
    }
}
