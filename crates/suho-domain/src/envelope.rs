//! The envelopes a payload travels in when it is logged, replayed or forwarded: a NATS message
//! `{subject, data}` and a Kafka record `{topic, key, partition, value}`.

use serde::{Deserialize, Serialize};

/// A NATS message: its subject and decoded payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsEnvelope<T> {
    /// Full subject, e.g. `market.EURUSD.tick`.
    pub subject: String,
    /// The payload.
    pub data: T,
}

/// A Kafka record: topic, key (the `user_id`), partition and decoded value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaEnvelope<T> {
    /// Topic name, e.g. `user.trades`.
    pub topic: String,
    /// Record key: the user id.
    pub key: String,
    /// Partition the record is on.
    pub partition: i32,
    /// The event.
    pub value: T,
}
