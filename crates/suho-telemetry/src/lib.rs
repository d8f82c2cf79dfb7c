//! Telemetry: `tracing` set-up and the Prometheus recorder, with the metric names of the
//! seed's Appendix C fixed here so every crate records the same series.
//!
//! This crate knows nothing of NATS or Kafka clients; it only names and records.

pub mod output;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names (seed Appendix C) and the labels each one carries.
pub mod names {
    /// Counter `{subject}`: messages published to NATS.
    pub const NATS_PUBLISHED: &str = "nats_messages_published_total";
    /// Histogram `{subject}`: time to hand a message to the NATS client, seconds.
    pub const NATS_PUBLISH_LATENCY: &str = "nats_publish_latency_seconds";
    /// Counter `{topic}`: records acknowledged by Kafka.
    pub const KAFKA_PRODUCED: &str = "kafka_messages_produced_total";
    /// Counter `{topic, consumer_group}`: records consumed from Kafka.
    pub const KAFKA_CONSUMED: &str = "kafka_messages_consumed_total";
    /// Gauge `{topic, partition, consumer_group}`: high watermark minus committed position.
    pub const KAFKA_LAG: &str = "kafka_consumer_lag";
    /// Counter `{topic}`: records sent to a dead-letter topic.
    pub const KAFKA_DEAD_LETTERS: &str = "kafka_dead_letters_total";
    /// Counter `{method, status}`: HTTP requests answered.
    pub const HTTP_REQUESTS: &str = "http_requests_total";
    /// Counter `{strategy, outcome}`: the auto-trading agent's commands, by `outcome`:
    /// `emitted` (acknowledged by Kafka), `duplicate` (this user already had one for this
    /// signal), `skipped` (volume below the lot step), `failed` (given up, logged as an error).
    pub const AGENT_COMMANDS: &str = "agent_commands_total";
    /// Gauge: open WebSocket connections (authenticated) of this gateway.
    pub const WS_CONNECTIONS: &str = "ws_connections";
    /// Counter `{channel}`: WebSocket messages written (`market`, `user`, `control`, `error`).
    pub const WS_MESSAGES_SENT: &str = "ws_messages_sent_total";
    /// Counter: market messages a slow WebSocket client never got, replaced by a newer one of
    /// the same subject (or beyond its limit of waiting subjects).
    pub const WS_MARKET_CONFLATED: &str = "ws_market_conflated_total";
    /// Counter: WebSocket clients closed because their queue of user events overflowed.
    pub const WS_DISCONNECTED_SLOW: &str = "ws_disconnected_slow_total";
    /// Gauge: events stored in the outbox and not yet acknowledged by Kafka (as this gateway
    /// last counted them).
    pub const OUTBOX_PENDING: &str = "outbox_pending";
    /// Counter `{outcome}`: outbox publications, `published` (acknowledged by Kafka) or
    /// `failed` (Kafka refused or did not answer; the event stays stored and is retried).
    pub const OUTBOX_PUBLISHED: &str = "outbox_events_total";
}

/// Installs the process-wide Prometheus recorder (once; later calls return the same
/// handle) and returns the handle that renders `/metrics`.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::NATS_PUBLISH_LATENCY.into()),
                    &[
                        0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005,
                        0.01, 0.05,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test binary that also runs
            // the platform); the handle still renders what this recorder holds.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Sets up `tracing` to stderr: `pretty` (human) or `json`, filtered by `RUST_LOG` or
/// else `default_filter`. Later calls are ignored.
///
/// Lines go through [`output::Stderr`]: a log call never blocks on, or panics because of, a
/// stderr whose reader has gone; such lines are dropped.
pub fn init_tracing(format: &str, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // `log_internal_errors(false)`: on a failed write the subscriber would otherwise report
    // it with `eprintln!`, which panics when stderr is closed, in whatever thread logged
    // (a librdkafka rebalance callback among them: the consumer then never closes).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(output::Stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
