//! suho's zero-trust plumbing.
pub mod identity;
pub mod kafka;
pub mod nats;
pub mod postgres;
pub mod secrets;
mod tls;
pub use identity::{Identity, NatsGrants, Scope};
pub use secrets::{write_private, Credentials, Secrets, SecretsError, ServerPrincipal};
