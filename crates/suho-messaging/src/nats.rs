//! The market-data bus: a NATS client plus the subject prefix, counting every publish.

use std::time::{Duration, Instant};

use bytes::Bytes;
use secrecy::ExposeSecret;
use serde::Serialize;
use suho_security::{Credentials, Identity, Secrets};
use suho_telemetry::names;

use crate::MessagingError;

/// Connects to NATS as `identity`, with its credentials from the secrets directory
/// (`security.secrets_dir`), over TLS verified against the local CA, with the identity's own
/// inbox prefix, a client name of `suho-{identity}` (shown in the server's monitoring) and a
/// 5 s connect timeout. On a benchmark's plain stack (`security.transport`), the same
/// connection with no TLS and no login.
///
/// # Errors
/// The credentials are missing, or the server is unreachable or refuses the connection.
pub async fn connect(
    config: &suho_config::Config,
    identity: Identity,
) -> Result<async_nats::Client, MessagingError> {
    match config.security.transport {
        suho_config::Transport::Secured => {
            let credentials = Secrets::at(config.secrets_dir()).credentials(identity)?;
            connect_with(&config.nats, &credentials).await
        }
        suho_config::Transport::Plain => {
            open(&config.nats, identity, async_nats::ConnectOptions::new()).await
        }
    }
}

/// [`connect`] with credentials at hand.
///
/// # Errors
/// The server is unreachable or refuses the connection (a wrong password, no TLS).
pub async fn connect_with(
    config: &suho_config::NatsConfig,
    credentials: &Credentials,
) -> Result<async_nats::Client, MessagingError> {
    let login = async_nats::ConnectOptions::with_user_and_password(
        credentials.identity.name().to_string(),
        credentials.password.expose_secret().to_string(),
    )
    .require_tls(true)
    .add_root_certificates(credentials.ca_file.clone());
    open(config, credentials.identity, login).await
}

/// Connects with `login` (the credentials and TLS, or none) and the settings every suho
/// connection shares.
async fn open(
    config: &suho_config::NatsConfig,
    identity: Identity,
    login: async_nats::ConnectOptions,
) -> Result<async_nats::Client, MessagingError> {
    let fail = |detail: String| MessagingError::NatsConnect {
        url: config.url.clone(),
        detail,
    };
    // A first connect the server refuses (a wrong password, no TLS) fails here with the
    // server's reason; a lost connection later is retried by the client on its own.
    let connect = login
        .custom_inbox_prefix(identity.inbox_prefix())
        .name(format!("suho-{identity}"))
        // The server reports a denied publish or subscription asynchronously: log it, with who.
        .event_callback(move |event| async move {
            match event {
                async_nats::Event::ServerError(e) => {
                    tracing::error!(%identity, error = %e, "NATS server error");
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!(%identity, "NATS connection lost; reconnecting");
                }
                async_nats::Event::Connected => tracing::debug!(%identity, "NATS connected"),
                async_nats::Event::Closed => tracing::debug!(%identity, "NATS connection closed"),
                other => tracing::warn!(%identity, event = %other, "NATS client event"),
            }
        })
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
        .connect(config.url.as_str());
    tokio::time::timeout(Duration::from_secs(6), connect)
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(format!("as `{identity}`: {e}")))
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

    /// Connects as `identity` (see [`connect`]), with the configuration's subject prefix.
    ///
    /// # Errors
    /// See [`connect`].
    pub async fn connect(
        config: &suho_config::Config,
        identity: Identity,
    ) -> Result<Self, MessagingError> {
        Ok(Self::new(
            connect(config, identity).await?,
            config.nats.subject_prefix.clone(),
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
