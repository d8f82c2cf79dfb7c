//! The bridge's run loop: ensures the JetStream stream and durable pull consumer, then
//! fetches batches, stores them ([`crate::Store`]) and acknowledges them only after the commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures::StreamExt;
use sqlx::PgPool;
use suho_domain::{Candle, Tick};
use tokio_util::sync::CancellationToken;

use crate::parse::{classify, Classified};
use crate::store::{Store, StoreReport};
use crate::{
    BridgeConfig, BridgeError, BATCH_ERRORS_METRIC, BATCH_SECONDS_METRIC, DUPLICATES_METRIC,
    INVALID_METRIC, ROWS_WRITTEN_METRIC,
};

/// Counters of one bridge instance (also exported as metrics).
#[derive(Debug, Default)]
pub struct BridgeStats {
    messages: AtomicU64,
    batches: AtomicU64,
    ticks_inserted: AtomicU64,
    candles_inserted: AtomicU64,
    duplicates: AtomicU64,
    open_candles: AtomicU64,
    invalid: AtomicU64,
    batch_errors: AtomicU64,
}

/// A copy of [`BridgeStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages received (redeliveries included).
    pub messages: u64,
    /// Batches stored and acknowledged.
    pub batches: u64,
    /// Tick rows inserted.
    pub ticks_inserted: u64,
    /// Candle rows inserted.
    pub candles_inserted: u64,
    /// Rows skipped because they were already stored (replays).
    pub duplicates: u64,
    /// Candles skipped because they were not closed.
    pub open_candles: u64,
    /// Messages that could not be parsed (terminated).
    pub invalid: u64,
    /// Batches that failed to be stored and were handed back for redelivery.
    pub batch_errors: u64,
}

impl BridgeStats {
    /// The current values.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            messages: g(&self.messages),
            batches: g(&self.batches),
            ticks_inserted: g(&self.ticks_inserted),
            candles_inserted: g(&self.candles_inserted),
            duplicates: g(&self.duplicates),
            open_candles: g(&self.open_candles),
            invalid: g(&self.invalid),
            batch_errors: g(&self.batch_errors),
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// A bridge whose schema, stream and consumer are in place; [`Bridge::run`] starts consuming.
pub struct Bridge {
    config: BridgeConfig,
    client: async_nats::Client,
    consumer: consumer::PullConsumer,
    store: Store,
    stats: Arc<BridgeStats>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("config", &self.config)
            .field("mode", &self.store.mode())
            .finish_non_exhaustive()
    }
}

/// Sets the bridge up ([`Bridge::start`]) and runs it until `shutdown` ([`Bridge::run`]).
///
/// # Errors
/// See [`Bridge::start`]; the run loop itself retries every failure until shut down.
pub async fn run_bridge(
    config: BridgeConfig,
    nats: async_nats::Client,
    pool: PgPool,
    shutdown: CancellationToken,
) -> Result<(), BridgeError> {
    Bridge::start(config, nats, pool).await?.run(shutdown).await
}

impl Bridge {
    /// Creates the tables, creates or updates the stream capturing
    /// [`BridgeConfig::subjects`], and creates (or reuses) the durable pull consumer. Once this
    /// returns, every publish on those subjects is kept for the bridge, even before
    /// [`Bridge::run`].
    ///
    /// # Errors
    /// An invalid configuration, the database failed, or JetStream is unavailable or refuses
    /// the stream (for example subjects overlapping another stream).
    pub async fn start(
        config: BridgeConfig,
        nats: async_nats::Client,
        pool: PgPool,
    ) -> Result<Bridge, BridgeError> {
        config.validate()?;
        let store = Store::open(pool).await?;
        let js = jetstream::new(nats.clone());
        let stream_config = stream::Config {
            name: config.stream_name.clone(),
            description: Some("suho market data captured for the data bridge".into()),
            subjects: config.subjects(),
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: config.max_age,
            max_bytes: config.max_bytes.unwrap_or(-1),
            max_messages: -1,
            max_messages_per_subject: -1,
            num_replicas: 1,
            ..Default::default()
        };
        js.create_or_update_stream(stream_config)
            .await
            .map_err(|e| {
                // JetStream reserves max_bytes up front, out of 75 % of the disk it found free.
                let detail = format!(
                    "{e} (stream {}, capped at {} bytes: market.bridge_buffer_bytes)",
                    config.stream_name,
                    config.max_bytes.unwrap_or(-1)
                );
                BridgeError::jetstream("create stream", detail)
            })?;
        let stream = js
            .get_stream(&config.stream_name)
            .await
            .map_err(|e| BridgeError::jetstream("get stream", e))?;
        let max_ack_pending = i64::try_from(config.batch_max)
            .unwrap_or(i64::MAX / 4)
            .saturating_mul(4)
            .max(20_000);
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &config.consumer_name,
                consumer::pull::Config {
                    durable_name: Some(config.consumer_name.clone()),
                    description: Some("suho data bridge".into()),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_deliver: -1,
                    max_ack_pending,
                    max_batch: i64::try_from(config.batch_max).unwrap_or(i64::MAX),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BridgeError::jetstream("create consumer", e))?;
        tracing::info!(
            stream = %config.stream_name,
            consumer = %config.consumer_name,
            mode = ?store.mode(),
            "data bridge ready"
        );
        Ok(Bridge {
            config,
            client: nats,
            consumer,
            store,
            stats: Arc::new(BridgeStats::default()),
        })
    }

    /// This instance's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<BridgeStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `shutdown`: fetch a batch, store it in one transaction, acknowledge it.
    /// A batch that cannot be stored is handed back (negative acknowledgement with a delay)
    /// and the loop backs off; a stop between commit and acknowledgement only causes a
    /// harmless redelivery.
    ///
    /// # Errors
    /// None at present: every failure is retried; the `Result` is kept for fatal conditions.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BridgeError> {
        let mut backoff = self.config.retry_initial;
        loop {
            let fetched = tokio::select! {
                r = self.fetch() => r,
                () = shutdown.cancelled() => break,
            };
            let failed = match fetched {
                Ok(messages) if messages.is_empty() => false,
                Ok(messages) => match self.process(messages, backoff).await {
                    Ok(()) => false,
                    Err(e) => {
                        self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(BATCH_ERRORS_METRIC).increment(1);
                        tracing::warn!(error = %e, retry_in = ?backoff, "batch not stored; it will be redelivered");
                        true
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "fetching from JetStream failed");
                    true
                }
            };
            if failed {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(self.config.retry_max);
            } else {
                backoff = self.config.retry_initial;
            }
        }
        tracing::info!(stats = ?self.stats.snapshot(), "data bridge stopped");
        Ok(())
    }

    /// Up to `batch_max` messages, waiting at most `batch_wait` for them.
    async fn fetch(&self) -> Result<Vec<jetstream::Message>, BridgeError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(self.config.batch_max)
            .expires(self.config.batch_wait)
            .messages()
            .await
            .map_err(|e| BridgeError::jetstream("fetch", e))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => out.push(m),
                // Keep what arrived; the next fetch reports a lasting problem.
                Err(e) if !out.is_empty() => {
                    tracing::debug!(error = %e, "batch ended early");
                    break;
                }
                Err(e) => return Err(BridgeError::jetstream("fetch", e)),
            }
        }
        Ok(out)
    }

    /// Parses, stores and acknowledges one batch; on a store failure hands it back.
    async fn process(
        &self,
        messages: Vec<jetstream::Message>,
        retry_delay: Duration,
    ) -> Result<(), BridgeError> {
        let started = Instant::now();
        let now = suho_messaging::now_ms();
        let mut ticks: Vec<Tick> = Vec::new();
        let mut candles: Vec<Candle> = Vec::new();
        let mut invalid = vec![false; messages.len()];
        let mut open_candles = 0u64;
        for (i, m) in messages.iter().enumerate() {
            match classify(&self.config.subject_prefix, &m.subject, &m.payload, now) {
                Classified::Tick(t) => ticks.push(t),
                Classified::Candle(c) => candles.push(c),
                Classified::OpenCandle => open_candles += 1,
                Classified::Invalid(reason) => {
                    tracing::warn!(subject = %m.subject, %reason, "unparseable market message skipped");
                    invalid[i] = true;
                }
            }
        }
        let report = match self.store.write(&ticks, &candles).await {
            Ok(r) => r,
            Err(e) => {
                // Hand the batch back; nothing of it was stored.
                for m in &messages {
                    let _ = m.ack_with(AckKind::Nak(Some(retry_delay))).await;
                }
                return Err(e);
            }
        };
        let invalid_n = invalid.iter().filter(|b| **b).count() as u64;
        for (m, bad) in messages.iter().zip(&invalid) {
            let kind = if *bad { AckKind::Term } else { AckKind::Ack };
            if let Err(e) = m.ack_with(kind).await {
                // The message will be redelivered and skipped as a duplicate.
                tracing::debug!(error = %e, "acknowledgement not sent");
            }
        }
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await {
            tracing::debug!(error = %e, "flushing acknowledgements timed out");
        }
        self.record(&report, messages.len() as u64, open_candles, invalid_n);
        metrics::histogram!(BATCH_SECONDS_METRIC).record(started.elapsed().as_secs_f64());
        tracing::debug!(
            messages = messages.len(),
            ?report,
            invalid = invalid_n,
            elapsed = ?started.elapsed(),
            "batch stored"
        );
        Ok(())
    }

    fn record(&self, report: &StoreReport, messages: u64, open_candles: u64, invalid: u64) {
        let s = &self.stats;
        BridgeStats::add(&s.messages, messages);
        BridgeStats::add(&s.batches, 1);
        BridgeStats::add(&s.ticks_inserted, report.ticks_inserted);
        BridgeStats::add(&s.candles_inserted, report.candles_inserted);
        BridgeStats::add(&s.duplicates, report.duplicates());
        BridgeStats::add(&s.open_candles, open_candles);
        BridgeStats::add(&s.invalid, invalid);
        for (table, inserted, total) in [
            ("market_ticks", report.ticks_inserted, report.ticks),
            ("market_candles", report.candles_inserted, report.candles),
        ] {
            metrics::counter!(ROWS_WRITTEN_METRIC, "table" => table).increment(inserted);
            metrics::counter!(DUPLICATES_METRIC, "table" => table).increment(total - inserted);
        }
        metrics::counter!(INVALID_METRIC).increment(invalid);
    }
}
