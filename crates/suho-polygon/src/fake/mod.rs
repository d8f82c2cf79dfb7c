//! Local fakes of Polygon's venue, for tests (cargo feature `fake`): a forex WebSocket server
//! ([`ws::FakeWs`]) that runs Polygon's `connected` / `auth` / `subscribe` handshake, and a REST
//! aggregates server ([`rest::FakeRest`]) with `next_url` paging and injectable failures.
//!
//! Both accept only [`KEY`]. They live here, not in one test binary, so the adapter's own tests
//! and the platform's tests (which run the feed and the backfill through `suho`) share them.
//! They panic on setup failures (a port that cannot be bound): they are test code.

pub mod rest;
pub mod ws;

/// The API key the fakes accept; anything else is `auth_failed` / HTTP 401.
pub const KEY: &str = "test-key-0123456789";
