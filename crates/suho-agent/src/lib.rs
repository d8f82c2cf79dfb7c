//! The auto-trading agent (the seed's "User Agent (All users)"): it turns the strategies'
//! signals into trade commands for every user who opted in to the strategy.
//!
//! Data flow: `signals.{strategy}.{SYM}` (NATS, every strategy and symbol) -> [`Agent`] -> for
//! each user with `auto_trading.{strategy}.enabled`, one command on `user.commands` (Kafka,
//! keyed by the user, through the idempotent `acks=all` [`suho_messaging::UserEventProducer`])
//! with `metadata {strategy, signal_id}`: for a `BUY` / `SELL` signal an `OPEN_TRADE` with
//! `order {symbol, side, volume}` and the user's exits in pips (the engine closes the
//! strategy's opposite positions first), for a `FLAT` one a `CLOSE_POSITIONS {symbol,
//! strategy}` -> the trading engine executes it like any command. Who
//! opted in comes from `user.settings` (Kafka, compacted), read from the beginning at start
//! and followed live (`suho_messaging::settings`).
//!
//! At most once per user and signal: a command's `event_id` is derived from (user, signal)
//! ([`plan::command_id`]), so a duplicate is the same command, which the engine executes once;
//! and the agent remembers the pairs it recently sent ([`recent`]), so a signal delivered twice
//! sends once.
//!
//! Map:
//! - [`plan`]: the decisions, pure functions with no I/O (side, volume, exits, command
//!   id; `FLAT` closes).
//! - [`recent`]: the bounded set of (user, signal) pairs already sent.
//! - [`agent`]: the subscribe, decide, send-with-retry loop around them.
//!
//! Invariants: market data is only read (never written) here, user data only written to
//! `user.commands`; the agent never executes anything, it only asks the engine to.

pub mod agent;
pub mod plan;
pub mod recent;

pub use agent::{run_agent, Agent, AgentOptions, GROUP};
pub use plan::command_id;
pub use suho_messaging::settings::SettingsBook;

use suho_messaging::MessagingError;

/// The agent stopped for a reason other than shutdown.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A bus operation failed.
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    /// The signal subscription ended: the NATS client was closed.
    #[error("the subscription to the strategy signals ended")]
    SignalsEnded,
}
