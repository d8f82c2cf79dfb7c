//! `system.health.{service}` heartbeats on NATS.

use std::time::{Duration, Instant};

use suho_domain::market::{HealthStatus, Heartbeat};
use tokio_util::sync::CancellationToken;

use crate::{now_ms, MarketBus};

/// Publishes a heartbeat for `service` every `every` until `shutdown`, then a last one
/// saying `down`. A failed publish is logged and the next beat tries again.
pub async fn heartbeat(
    bus: MarketBus,
    service: String,
    every: Duration,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let subject = suho_domain::subject::health(bus.prefix(), &service);
    let beat = |status| Heartbeat {
        service: service.clone(),
        status,
        timestamp: now_ms(),
        uptime_s: started.elapsed().as_secs(),
        details: serde_json::Map::new(),
    };
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(e) = bus.publish(subject.clone(), &beat(HealthStatus::Ok)).await {
                    tracing::warn!(%service, error = %e, "heartbeat not sent");
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    let _ = bus.publish(subject, &beat(HealthStatus::Down)).await;
    let _ = bus.client().flush().await;
}
