//! The trading bounded context: turns trade commands into trade outcomes.
//!
//! Data flow: `user.commands` (Kafka, keyed by `user_id`) -> [`Engine`] -> a price request on
//! `market.{SYM}.price` (NATS) for an `OPEN_TRADE` -> one outcome event on `user.trades`
//! (`TRADE_EXECUTED` or `TRADE_REJECTED`) -> commit of the command's offset. A record that is
//! not a command at all goes to `user.commands.dlq` with the reason and its coordinates, and the
//! partition moves on.
//!
//! This is the walking skeleton. It keeps no positions, so `CLOSE_TRADE` and `MODIFY_TRADE` are
//! answered with an honest `TRADE_REJECTED`; it fills at the quoted price rather than at a
//! broker. Outcome ids are derived from the command's `event_id` (`exec_`, `rej_`, `trd_`), so a
//! redelivered command is answered with the same event; exactly-once execution (Kafka
//! transactions around publish and commit) is later work.
//!
//! Map:
//! - [`plan`]: the decisions, pure functions with no I/O.
//! - [`engine`]: the consume, price, publish, commit loop around them.
//!
//! Invariants: a command is committed only after its outcome is acknowledged by Kafka; a
//! transient failure never skips a record; market data is only read (never written) here.

pub mod engine;
pub mod plan;

pub use engine::Engine;

use rdkafka::error::KafkaError;
use suho_messaging::MessagingError;

/// The engine's consumer group (the configured group prefix is prepended).
pub const GROUP: &str = "trading-engine";

/// The engine stopped for a reason other than shutdown.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A bus operation failed and retrying cannot help.
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    /// Kafka refused the consumer for good.
    #[error("consuming user.commands: {0}")]
    Kafka(#[from] KafkaError),
}
