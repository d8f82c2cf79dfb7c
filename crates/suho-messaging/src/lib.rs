//! suho's two buses and nothing else: NATS for the market-data domain, Kafka for the
//! user domain. Both are wrapped so that every publish is counted under the seed's metric
//! names, every name carries the configured prefix, and the two domains cannot be mixed:
//! [`MarketBus`] only takes NATS subjects, [`UserEventProducer`] only takes [`UserTopic`]s.
//!
//! This crate knows the contract's names (from `suho-domain`) but no business rules.
//!
//! [`UserTopic`]: suho_domain::topic::UserTopic

pub mod health;
pub mod kafka;
pub mod kafka_admin;
pub mod nats;
pub mod settings;
pub mod topics;

pub use kafka::{Delivery, LagContext, UserConsumer, UserEventProducer};
pub use nats::MarketBus;

/// A bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    /// Could not reach the NATS server.
    #[error("NATS at {url}: {detail}")]
    NatsConnect {
        /// Server URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// A service's credentials could not be read.
    #[error("credentials: {0}")]
    Credentials(#[from] suho_security::SecretsError),
    /// A NATS publish, subscribe or request failed.
    #[error("NATS {op} on `{subject}`: {detail}")]
    Nats {
        /// publish, subscribe or request.
        op: &'static str,
        /// The subject.
        subject: String,
        /// Why.
        detail: String,
    },
    /// A Kafka client call failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A consumer did not close (and leave its group) within its deadline; its thread was
    /// left to finish alone.
    #[error("the Kafka consumer `{consumer}` did not close within {deadline:?}")]
    CloseTimedOut {
        /// The consumer's group (without the configured prefix) or purpose.
        consumer: String,
        /// How long it was given.
        deadline: std::time::Duration,
    },
    /// The broker refused an admin request about one topic.
    #[error("Kafka admin request for `{topic}`: {code}")]
    Admin {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// An admin request about ACLs or SCRAM credentials failed.
    #[error("{0}")]
    KafkaAdmin(String),
    /// A value could not be encoded as JSON.
    #[error("encoding JSON: {0}")]
    Encode(#[from] serde_json::Error),
    /// `user.settings` could not be listed or read to its end in time.
    #[error("reading user.settings: {0}")]
    Settings(String),
}

impl MessagingError {
    /// Whether trying again later may succeed (a broker outage, a timeout), as opposed to
    /// a request that will never work.
    pub fn is_retryable(&self) -> bool {
        match self {
            MessagingError::NatsConnect { .. } | MessagingError::Nats { .. } => true,
            MessagingError::Kafka(e) => !matches!(
                e.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge)
                    | Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
                    | Some(rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed)
                    | Some(rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed)
                    | Some(rdkafka::types::RDKafkaErrorCode::TransactionalIdAuthorizationFailed)
                    | Some(rdkafka::types::RDKafkaErrorCode::ClusterAuthorizationFailed)
            ),
            MessagingError::Settings(_) => true,
            MessagingError::Encode(_)
            | MessagingError::Credentials(_)
            | MessagingError::Admin { .. }
            | MessagingError::KafkaAdmin(_)
            | MessagingError::CloseTimedOut { .. } => false,
        }
    }
}

/// Milliseconds since the Unix epoch, UTC (the contract's timestamp unit).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
