//! The trading bounded context: turns trade commands into trade outcomes on a venue behind
//! the [`suho_broker::BrokerAdapter`] port (the paper MT5 broker by default; the engine names
//! no venue type: [`Engine`] is generic over the port and is handed its venue).
//!
//! Data flow: `user.commands` (Kafka, keyed by `user_id`) -> [`Engine`] -> [`plan::plan`]
//! reads the record into one [`plan::Plan`] per command kind (a typed
//! [`suho_domain::CommandKind`], tagged by `event_type`) -> for a trade, a price request on
//! `market.{SYM}.price` (NATS) -> the venue, which fills, closes, modifies, credits or debits
//! the user's account -> one outcome event (`TRADE_EXECUTED`, `TRADE_CLOSED`,
//! `TRADE_MODIFIED`, `TRADE_REJECTED` on `user.trades`, or `DEPOSIT` / `WITHDRAWAL` on
//! `user.transactions`; `RISK_LIMIT_BREACH` on `user.risk_alerts` when the user's own limits
//! refused it) and the account's `ACCOUNT_STATUS` on `user.mt5_status` -> commit of the
//! command's offset. A record with no readable command head goes to `user.commands.dlq` with
//! the reason and its coordinates, and the partition moves on; a readable head whose kind is
//! unknown or incomplete is answered `TRADE_REJECTED` with the parse error.
//!
//! Besides the commands ([`ledger`]): whenever the group assigns partitions, the venue's
//! accounts are restored from their own events on `user.trades` and `user.transactions`; live
//! ticks reach the venue, which closes positions at their stop loss or take profit and stops
//! accounts out (`TRADE_CLOSED`, `MARGIN_CALL`, `STOP_OUT`) for the users whose partitions
//! this engine owns; and their statuses are published every few seconds. [`limits`] follows
//! `user.settings` for each user's own risk limits.
//!
//! Exactly once: a command's outcome, the account's status and the command's next offset go
//! out in one Kafka transaction, so `read_committed` readers see all or nothing; a failed try
//! is aborted and the accounts are rebuilt from the log if the venue had changed one. A
//! crash between execution and commit leaves an open transaction that the next engine with
//! the same `transactional.id` aborts; the command is then executed again from the committed
//! state, once. Outcome ids are derived from the command's `event_id` (`exec_`, `cls_`,
//! `mod_`, `rej_`, `dep_`, `wd_`, `trd_`). Several engines share the partitions; a partition's
//! new owner rebuilds the accounts from the log before its next command. With
//! `trading.delivery = "journal"` the batch is journaled instead ([`journal`]) and published
//! without a transaction.
//!
//! Map:
//! - [`plan`]: the decisions, pure functions with no I/O.
//! - [`engine`]: the consume, price, execute, publish, commit loop around them.
//! - [`ledger`]: restoring the venue's accounts from the log, ticks, statuses, and which
//!   accounts this engine acts on.
//! - [`limits`]: users' own risk limits from `user.settings`.
//! - [`journal`]: `engine.journal`, a journaling engine's fences and entries.
//! - [`failpoint`]: `SUHO_FAILPOINT`, for crash tests.
//!
//! Invariants: a command's offset is committed in the transaction of its outcome; a
//! transient failure never skips a record; market data is only read (never written) here.

pub mod engine;
pub mod failpoint;
pub mod journal;
pub mod ledger;
pub mod limits;
pub mod plan;

pub use engine::Engine;

use rdkafka::error::KafkaError;
use suho_messaging::MessagingError;

/// Histogram, seconds: what applying one market tick to the accounts this engine owns cost
/// (the venue's `on_tick`: triggers, stops, valuations), the engine's per-tick cost.
pub const TICK_SECONDS_METRIC: &str = "engine_tick_seconds";

/// The engine's consumer group (the configured group prefix is prepended).
pub const GROUP: &str = suho_security::kafka::names::ENGINE;

/// The engine stopped for a reason other than shutdown.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A bus operation failed and retrying cannot help.
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    /// Kafka refused the consumer for good.
    #[error("consuming user.commands: {0}")]
    Kafka(#[from] KafkaError),
    /// The accounts could not be rebuilt from their events.
    #[error("rebuilding the accounts: {0}")]
    Rebuild(String),
    /// The engine's configuration cannot work.
    #[error("configuration: {0}")]
    Config(String),
}

#[cfg(test)]
mod tests {
    /// The engine reaches its venue through the port alone: no source file of this crate
    /// names a type of the paper broker (the binary hands the engine its venue).
    #[test]
    fn the_engine_names_no_venue_type() {
        let sources = [
            ("lib.rs", include_str!("lib.rs")),
            ("engine.rs", include_str!("engine.rs")),
            ("failpoint.rs", include_str!("failpoint.rs")),
            ("ledger.rs", include_str!("ledger.rs")),
            ("limits.rs", include_str!("limits.rs")),
            ("plan.rs", include_str!("plan.rs")),
        ];
        let names = [concat!("Paper", "Broker"), concat!("Paper", "Account")];
        for (file, text) in sources {
            for name in names {
                assert!(!text.contains(name), "{file} names {name}");
            }
        }
    }
}
