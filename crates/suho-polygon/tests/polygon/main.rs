//! Integration tests of the Polygon adapters against local fakes that speak Polygon's
//! protocol: a WebSocket server ([`fake_ws`]) and a REST aggregates server ([`fake_rest`]),
//! both from `suho_polygon::fake` (shared with the platform's tests). One test binary; shared
//! helpers live here.

mod history;
mod live;

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
pub use suho_polygon::fake::KEY;
use suho_polygon::fake::{rest as fake_rest, ws as fake_ws};
use suho_polygon::PolygonConfig;

/// A config pointing at the fakes, with short delays.
pub fn config(ws_url: &str, rest_url: &str) -> PolygonConfig {
    let mut c = PolygonConfig::new(KEY);
    c.ws_url = ws_url.to_owned();
    c.rest_url = rest_url.to_owned();
    c.backoff_initial = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.request_timeout = Duration::from_secs(3);
    c.idle_timeout = Duration::from_secs(10);
    c.max_http_attempts = 3;
    c
}

/// Awaits `fut`, failing the test after `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"))
}

pub fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test decimal")
}
