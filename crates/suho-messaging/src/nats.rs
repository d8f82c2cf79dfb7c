//! The market-data bus: a NATS client plus the subject prefix, counting every publish.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use suho_telemetry::names;

use crate::MessagingError;

/// Connects to NATS with a client name (shown in the server's monitoring) and a
/// 5 s connect timeout.
///
/// # Errors
/// The server is unreachable or refuses the connection.
pub async fn connect(
    config: &suho_config::NatsConfig,
    name: &str,
) -> Result<async_nats::Client, MessagingError> {
    let fail = |detail: String| MessagingError::NatsConnect {
        url: config.url.clone(),
        detail,
    };
    let connect = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
        .connect(config.url.as_str());
    tokio::time::timeout(Duration::from_secs(6), connect)
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))
}

/// A NATS client and the prefix every subject carries. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MarketBus {
    client: async_nats::Client,
    prefix: String,
}

impl MarketBus {
    /// Wraps a connected client.
    pub fn new(client: async_nats::Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
        }
    }

    /// Connects using the `[nats]` configuration.
    ///
    /// # Errors
    /// See [`connect`].
    pub async fn connect(
        config: &suho_config::NatsConfig,
        name: &str,
    ) -> Result<Self, MessagingError> {
        Ok(Self::new(
            connect(config, name).await?,
            config.subject_prefix.clone(),
        ))
    }

    /// The subject prefix (`""` outside tests).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying client, for subscriptions and requests.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Publishes `value` as JSON on `subject` (already prefixed, as the `suho_domain::subject`
    /// builders return it).
    ///
    /// # Errors
    /// Encoding failed or the client's connection is gone.
    pub async fn publish<T: Serialize>(
        &self,
        subject: String,
        value: &T,
    ) -> Result<(), MessagingError> {
        let payload = Bytes::from(serde_json::to_vec(value)?);
        self.publish_bytes(subject, payload).await
    }

    /// Publishes raw bytes, counted like [`MarketBus::publish`].
    ///
    /// # Errors
    /// The client's connection is gone.
    pub async fn publish_bytes(
        &self,
        subject: String,
        payload: Bytes,
    ) -> Result<(), MessagingError> {
        let started = Instant::now();
        let labels = [("subject", subject.clone())];
        self.client
            .publish(subject.clone(), payload)
            .await
            .map_err(|e| MessagingError::Nats {
                op: "publish",
                subject,
                detail: e.to_string(),
            })?;
        metrics::counter!(names::NATS_PUBLISHED, &labels).increment(1);
        metrics::histogram!(names::NATS_PUBLISH_LATENCY, &labels)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Subscribes to `subject` (already prefixed).
    ///
    /// # Errors
    /// The client's connection is gone.
    pub async fn subscribe(
        &self,
        subject: String,
    ) -> Result<async_nats::Subscriber, MessagingError> {
        self.client
            .subscribe(subject.clone())
            .await
            .map_err(|e| MessagingError::Nats {
                op: "subscribe",
                subject,
                detail: e.to_string(),
            })
    }

    /// Sends a request and returns the reply's payload (bounded by the configured
    /// request timeout).
    ///
    /// # Errors
    /// No responder, a timeout, or a lost connection.
    pub async fn request(&self, subject: String, payload: Bytes) -> Result<Bytes, MessagingError> {
        self.client
            .request(subject.clone(), payload)
            .await
            .map(|m| m.payload)
            .map_err(|e| MessagingError::Nats {
                op: "request",
                subject,
                detail: e.to_string(),
            })
    }
}
