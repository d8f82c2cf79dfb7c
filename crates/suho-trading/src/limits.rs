//! Users' own risk limits, followed from `user.settings`.
//!
//! Every engine reads the whole compacted topic into a [`SettingsBook`]
//! (`suho_messaging::settings`, as the auto-trading agent does) and applies each user's
//! `risk` (leverage, maximum volume, open-position limit) to their accounts at the venue. The engine
//! waits for the first read to reach the end of the topic before it executes a command; after
//! that, a change takes effect as soon as it is read (milliseconds after the settings API
//! answered). Users who never saved settings, or whose settings were forgotten (a tombstone,
//! an unreadable record), trade under the broker's configured limits: the defaults of
//! [`suho_domain::RiskSettings`].

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use suho_broker::{BrokerAdapter, UserLimits};
use suho_domain::{RiskSettings, UserId};
use suho_messaging::settings::{SettingsBook, SettingsReader};
use tokio_util::sync::CancellationToken;

use crate::EngineError;

/// The name the engine's settings reader reports its reads under (it joins no group).
pub const READER: &str = suho_security::kafka::names::ENGINE_SETTINGS;

/// The limits `risk` sets on an account.
#[must_use]
pub fn user_limits(risk: &RiskSettings) -> UserLimits {
    UserLimits {
        leverage: NonZeroU32::new(risk.leverage).unwrap_or(NonZeroU32::MIN),
        max_volume: risk.max_volume,
        max_open_positions: usize::try_from(risk.max_open_positions).unwrap_or(usize::MAX),
        position_mode: risk.position_mode,
    }
}

/// A book that sets each change on `broker`.
#[must_use]
pub fn book<B: BrokerAdapter + 'static>(broker: Arc<B>) -> SettingsBook {
    book_with(move |user, limits| broker.set_limits(user, limits))
}

/// A book that hands each user's limits (`None`: forgotten) to `set`.
fn book_with(set: impl Fn(&UserId, Option<UserLimits>) + Send + Sync + 'static) -> SettingsBook {
    SettingsBook::with_hook(move |user, settings| {
        set(user, settings.map(|s| user_limits(&s.risk)));
    })
}

/// Reads `user.settings` to its end onto `broker`, then follows it until `shutdown` on a task
/// of its own. `None` if `shutdown` came first.
///
/// # Errors
/// The topic could not be listed or read to its end within two minutes of retries.
pub async fn follow<B: BrokerAdapter + 'static>(
    broker: Arc<B>,
    kafka: &suho_config::KafkaConfig,
    retry: (Duration, Duration),
    shutdown: CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, EngineError> {
    let book = book(broker);
    let reader = tokio::select! {
        () = shutdown.cancelled() => return Ok(None),
        r = SettingsReader::open(kafka, READER, book.clone(), retry.0, retry.1) => r?,
    };
    tracing::info!(
        users = book.len(),
        "users' risk limits read from user.settings"
    );
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = reader.follow(shutdown).await {
            tracing::error!(error = %e, "following user.settings stopped");
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::sync::Mutex;

    fn settings(leverage: u32, max_volume: &str, positions: u32) -> Vec<u8> {
        serde_json::json!({"event_id":"s1","event_type":"SETTINGS_UPDATED","user_id":"u1",
            "settings":{"risk":{"leverage":leverage,"max_volume":max_volume.parse::<f64>().unwrap(),
                                "max_open_positions":positions},
                        "watchlist":[],"auto_trading":{}},"timestamp":1})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_book_sets_and_clears_a_users_limits() {
        type Calls = Vec<(String, Option<UserLimits>)>;
        let seen: Arc<Mutex<Calls>> = Arc::default();
        let sink = Arc::clone(&seen);
        let book = book_with(move |user, limits| {
            sink.lock().expect("lock").push((user.to_string(), limits));
        });
        book.apply(Some(b"u1"), Some(&settings(30, "0.5", 3)));
        // A link without settings changes nothing; an unreadable record forgets the user.
        let link = br#"{"event_id":"s2","event_type":"MT5_ACCOUNT_LINKED","user_id":"u1","mt5_account":"1","timestamp":2}"#;
        book.apply(Some(b"u1"), Some(link));
        book.apply(Some(b"u1"), Some(b"not json"));
        let limits = UserLimits {
            leverage: NonZeroU32::new(30).expect("nonzero"),
            max_volume: Decimal::new(5, 1),
            max_open_positions: 3,
            position_mode: suho_domain::PositionMode::Hedging,
        };
        let seen = seen.lock().expect("lock").clone();
        let calls: Vec<_> = seen.iter().map(|(u, l)| (u.as_str(), l.clone())).collect();
        assert_eq!(calls, [("u1", Some(limits)), ("u1", None)]);
    }
}
