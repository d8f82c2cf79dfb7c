//! Users' own risk limits, followed from `user.settings`.
//!
//! Every engine reads the whole compacted topic (no consumer group: each one needs every
//! user's settings, whichever partitions it owns) and applies each `SETTINGS_UPDATED`'s
//! `risk` (leverage, maximum volume, open-position limit) to the user's paper accounts. The
//! engine waits for the first read to reach the end of the topic before it executes a
//! command; after that, a change takes effect as soon as it is read (milliseconds after the
//! settings API answered). Users who never saved settings trade under the defaults of
//! [`suho_domain::RiskSettings`].

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use suho_broker::{PaperBroker, UserLimits};
use suho_domain::{RiskSettings, SettingsEvent, UserSettings, UserTopic};
use tokio_util::sync::CancellationToken;

use crate::EngineError;

/// The limits `risk` sets on an account.
#[must_use]
pub fn user_limits(risk: &RiskSettings) -> UserLimits {
    UserLimits {
        leverage: NonZeroU32::new(risk.leverage).unwrap_or(NonZeroU32::MIN),
        max_volume: risk.max_volume,
        max_open_positions: usize::try_from(risk.max_open_positions).unwrap_or(usize::MAX),
    }
}

/// The risk settings a `user.settings` record carries, if it carries readable settings
/// (every record does: the topic is compacted to the latest record per user, so an
/// `MT5_ACCOUNT_LINKED` carries them too).
fn risk_of(payload: &[u8]) -> Option<(suho_domain::UserId, RiskSettings)> {
    let event: SettingsEvent = serde_json::from_slice(payload).ok()?;
    let settings: UserSettings = serde_json::from_value(event.settings?).ok()?;
    Some((event.user_id, settings.risk))
}

/// Follows `user.settings` onto `broker` until `shutdown`, on a thread of its own; `caught_up`
/// fires once every partition was read to the end it had at the start.
///
/// # Errors
/// The reader cannot be created or the topic's partitions cannot be listed.
pub fn follow(
    broker: Arc<PaperBroker>,
    kafka: &suho_config::KafkaConfig,
    shutdown: CancellationToken,
    caught_up: tokio::sync::oneshot::Sender<()>,
) -> Result<std::thread::JoinHandle<()>, EngineError> {
    let topic = UserTopic::Settings.full_name(&kafka.topic_prefix);
    let consumer: BaseConsumer = suho_messaging::kafka::base_config(kafka)
        .set("group.id", "suho-engine-settings")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let thread = std::thread::Builder::new()
        .name("engine-settings".into())
        .spawn(move || run(&consumer, &topic, &broker, &shutdown, caught_up))
        .map_err(|e| EngineError::Rebuild(format!("settings reader thread: {e}")))?;
    Ok(thread)
}

fn run(
    consumer: &BaseConsumer,
    topic: &str,
    broker: &PaperBroker,
    shutdown: &CancellationToken,
    caught_up: tokio::sync::oneshot::Sender<()>,
) {
    let timeout = Duration::from_secs(5);
    // Where the topic ends now, per partition; retried until Kafka answers.
    let ends = loop {
        match ends_of(consumer, topic, timeout) {
            Ok(ends) => break ends,
            Err(e) => {
                tracing::warn!(topic, error = %e, "listing user.settings failed; retrying");
                if wait_cancelled(shutdown, Duration::from_secs(1)) {
                    return;
                }
            }
        }
    };
    let mut tpl = TopicPartitionList::new();
    for &(p, _) in &ends {
        if let Err(e) = tpl.add_partition_offset(topic, p, Offset::Beginning) {
            tracing::error!(topic, error = %e, "cannot follow user.settings");
            return;
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(topic, error = %e, "cannot follow user.settings");
        return;
    }
    let mut caught_up = Some(caught_up);
    let mut applied = 0_usize;
    while !shutdown.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some((user, risk)) = m.payload().and_then(risk_of) {
                    broker.set_limits(&user, user_limits(&risk));
                    applied += 1;
                    tracing::debug!(user_id = %user, "risk limits updated");
                }
            }
            Some(Err(e)) => {
                tracing::warn!(topic, error = %e, "reading user.settings failed; retrying");
                if wait_cancelled(shutdown, Duration::from_millis(500)) {
                    return;
                }
            }
            None => {}
        }
        if caught_up.is_some() && reached(consumer, topic, &ends) {
            tracing::info!(
                users = applied,
                "users' risk limits read from user.settings"
            );
            if let Some(tx) = caught_up.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// `(partition, high watermark)` of every partition of `topic`.
fn ends_of(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut ends = Vec::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            ends.push((p.id(), high));
        }
    }
    if ends.is_empty() {
        return Err(rdkafka::error::KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    Ok(ends)
}

/// Whether the consumer's position has reached `ends` on every partition.
fn reached(consumer: &BaseConsumer, topic: &str, ends: &[(i32, i64)]) -> bool {
    let Ok(position) = consumer.position() else {
        return false;
    };
    ends.iter().all(|&(p, high)| {
        high == 0
            || position
                .find_partition(topic, p)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= high))
    })
}

/// Sleeps `d`, or less if shutdown comes; whether it came.
fn wait_cancelled(shutdown: &CancellationToken, d: Duration) -> bool {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until {
        if shutdown.is_cancelled() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    shutdown.is_cancelled()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_with_settings_carries_limits() {
        let updated = serde_json::json!({"event_id":"s1","event_type":"SETTINGS_UPDATED","user_id":"u1",
            "settings":{"risk":{"leverage":30,"max_volume":0.5,"max_open_positions":3},
                        "watchlist":[],"auto_trading":{}},"timestamp":1});
        let (user, risk) = risk_of(updated.to_string().as_bytes()).expect("limits");
        assert_eq!(user.as_str(), "u1");
        let limits = user_limits(&risk);
        assert_eq!((limits.leverage.get(), limits.max_open_positions), (30, 3));
        assert_eq!(limits.max_volume, rust_decimal::Decimal::new(5, 1));
        let linked = serde_json::json!({"event_id":"s2","event_type":"MT5_ACCOUNT_LINKED","user_id":"u1",
            "mt5_account":"123","timestamp":2});
        assert!(risk_of(linked.to_string().as_bytes()).is_none());
        let linked_with = serde_json::json!({"event_id":"s3","event_type":"MT5_ACCOUNT_LINKED","user_id":"u1",
            "mt5_account":"123","timestamp":3,
            "settings":{"risk":{"leverage":20,"max_volume":1,"max_open_positions":2},
                        "watchlist":[],"auto_trading":{}}});
        let (_, risk) = risk_of(linked_with.to_string().as_bytes()).expect("limits");
        assert_eq!(risk.leverage, 20);
        assert!(risk_of(b"not json").is_none());
    }
}
