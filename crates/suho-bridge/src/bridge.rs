//! The bridge's run loop: ensures the JetStream stream and durable pull consumer, then
//! fetches batches, stores them ([`crate::Store`]) and acknowledges them only after the commit.
//!
//! The loop is pipelined: while batch N is stored and committed, the pull for batch N+1 runs
//! and its messages are parsed, and the acknowledgements of batch N-1 (committed already) are
//! sent. Batches are stored one at a time, in the order they were fetched, and each batch is
//! acknowledged only after its own commit. All of it runs in the bridge's one task: the stages
//! advance while the store waits for PostgreSQL.
//!
//! Acknowledgements stay explicit, one per message (`AckPolicy::Explicit`). `AckPolicy::All`
//! (one ack for a batch's last message) was considered and rejected: an ack there also
//! acknowledges every lower stream sequence delivered to the consumer, including messages
//! still held, unstored, by a crashed bridge (pending until `ack_wait`), by a concurrent
//! bridge on the same durable consumer, or handed back by a failed batch (negative ack with a
//! delay) that later batches overtake. Any of these would be lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use suho_domain::{Candle, Tick};
use tokio_util::sync::CancellationToken;

use crate::parse::{classify, Classified};
use crate::store::{Store, StoreReport};
use crate::{
    BridgeConfig, BridgeError, BATCH_ERRORS_METRIC, BATCH_SECONDS_METRIC, DUPLICATES_METRIC,
    INVALID_METRIC, ROWS_WRITTEN_METRIC,
};

/// How long after a pull request's expiry (`batch_wait`) the bridge stops waiting for it.
const FETCH_GRACE: Duration = Duration::from_millis(200);

/// A fetched batch, classified and ready to store.
struct Parsed {
    messages: Vec<jetstream::Message>,
    ticks: Vec<Tick>,
    candles: Vec<Candle>,
    /// Per message: whether it could not be parsed (terminated, not stored).
    invalid: Vec<bool>,
    open_candles: u64,
    parse_time: Duration,
}

/// A stored batch waiting for its acknowledgements.
struct Committed {
    messages: Vec<jetstream::Message>,
    invalid: Vec<bool>,
    /// Parse, store and commit time.
    work: Duration,
}

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
    /// Batches stored (committed; their acknowledgements follow).
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

    /// Consumes until `shutdown`: fetch a batch, store it in one transaction, acknowledge it,
    /// with the next batch fetched while the current one is stored (see the module docs).
    /// A batch that cannot be stored is handed back (negative acknowledgement with a delay)
    /// and the loop backs off; a stop between commit and acknowledgement only causes a
    /// harmless redelivery. A stop ends the pull in progress; what it had received, and a
    /// batch fetched but not yet stored, come back (to the next bridge) after `ack_wait`.
    ///
    /// # Errors
    /// None at present: every failure is retried; the `Result` is kept for fatal conditions.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BridgeError> {
        let mut backoff = self.config.retry_initial;
        // A batch pulled (and parsed) while the previous one was being stored.
        let mut prefetched: Option<Result<Parsed, BridgeError>> = None;
        // A committed batch whose acknowledgements are still to be sent.
        let mut to_ack: Option<Committed> = None;
        loop {
            let fetched = match prefetched.take() {
                Some(fetched) => fetched,
                None => {
                    // Nothing else to do meanwhile: acknowledge before waiting for messages.
                    if let Some(committed) = to_ack.take() {
                        self.acknowledge(committed).await;
                    }
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        r = self.fetch_parsed() => r,
                    }
                }
            };
            let failed = match fetched {
                Ok(batch) if batch.messages.is_empty() => false,
                Ok(batch) => {
                    let next = async {
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => None,
                            r = self.fetch_parsed() => Some(r),
                        }
                    };
                    let previous = to_ack.take();
                    let acks = async {
                        if let Some(committed) = previous {
                            self.acknowledge(committed).await;
                        }
                    };
                    let (stored, (), next) =
                        tokio::join!(self.store_batch(batch, backoff), acks, next);
                    prefetched = next;
                    match stored {
                        Ok(committed) => {
                            to_ack = Some(committed);
                            false
                        }
                        Err(e) => {
                            self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!(BATCH_ERRORS_METRIC).increment(1);
                            tracing::warn!(error = %e, retry_in = ?backoff, "batch not stored; it will be redelivered");
                            true
                        }
                    }
                }
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
        if let Some(committed) = to_ack.take() {
            self.acknowledge(committed).await;
        }
        tracing::info!(stats = ?self.stats.snapshot(), "data bridge stopped");
        Ok(())
    }

    /// Up to `batch_max` messages, waiting about `batch_wait` for them.
    ///
    /// The pull request expires on the server after `batch_wait`, which normally ends it with
    /// a timeout status. The bridge does not rely on that status: it stops reading at
    /// `batch_wait` + [`FETCH_GRACE`] and keeps what has arrived (nats-server 2.9 was seen not
    /// to send it after a partial batch, leaving the client's own 5 s fallback to end it).
    async fn fetch(&self) -> Result<Vec<jetstream::Message>, BridgeError> {
        let deadline = tokio::time::sleep(self.config.batch_wait + FETCH_GRACE);
        tokio::pin!(deadline);
        let mut batch = tokio::select! {
            r = self.consumer
                .batch()
                .max_messages(self.config.batch_max)
                .expires(self.config.batch_wait)
                .messages() => r.map_err(|e| BridgeError::jetstream("fetch", e))?,
            () = &mut deadline => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        loop {
            let next = tokio::select! {
                biased;
                m = batch.next() => m,
                () = &mut deadline => {
                    // Take what is already buffered; later deliveries of this pull (the
                    // server expired it, so there should be none) come back after ack_wait.
                    while let Some(Some(Ok(m))) = batch.next().now_or_never() {
                        out.push(m);
                    }
                    if !out.is_empty() {
                        tracing::debug!(messages = out.len(), "pull ended by the bridge's deadline");
                    }
                    break;
                }
            };
            match next {
                None => break,
                Some(Ok(m)) => out.push(m),
                // Keep what arrived; the next fetch reports a lasting problem.
                Some(Err(e)) if !out.is_empty() => {
                    tracing::debug!(error = %e, "batch ended early");
                    break;
                }
                Some(Err(e)) => return Err(BridgeError::jetstream("fetch", e)),
            }
        }
        Ok(out)
    }

    /// [`Bridge::fetch`], then [`Bridge::parse`].
    async fn fetch_parsed(&self) -> Result<Parsed, BridgeError> {
        let messages = self.fetch().await?;
        Ok(self.parse(messages))
    }

    /// Classifies every message of a batch.
    fn parse(&self, messages: Vec<jetstream::Message>) -> Parsed {
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
        Parsed {
            messages,
            ticks,
            candles,
            invalid,
            open_candles,
            parse_time: started.elapsed(),
        }
    }

    /// Stores one parsed batch in one transaction and counts it; on a failure hands it back
    /// (negative acknowledgement with `retry_delay`). The caller acknowledges what this
    /// returns ([`Bridge::acknowledge`]).
    async fn store_batch(
        &self,
        batch: Parsed,
        retry_delay: Duration,
    ) -> Result<Committed, BridgeError> {
        let started = Instant::now();
        let Parsed {
            messages,
            ticks,
            candles,
            invalid,
            open_candles,
            parse_time,
        } = batch;
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
        self.record(&report, messages.len() as u64, open_candles, invalid_n);
        let store_time = started.elapsed();
        tracing::debug!(
            messages = messages.len(),
            ?report,
            invalid = invalid_n,
            ?parse_time,
            ?store_time,
            "batch stored"
        );
        Ok(Committed {
            messages,
            invalid,
            work: parse_time + store_time,
        })
    }

    /// Acknowledges a committed batch: `Ack` for every message, `Term` for the unparseable
    /// ones. An acknowledgement that does not arrive only causes a redelivery, skipped as a
    /// duplicate.
    async fn acknowledge(&self, committed: Committed) {
        let started = Instant::now();
        for (m, bad) in committed.messages.iter().zip(&committed.invalid) {
            let kind = if *bad { AckKind::Term } else { AckKind::Ack };
            if let Err(e) = m.ack_with(kind).await {
                tracing::debug!(error = %e, "acknowledgement not sent");
            }
        }
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await {
            tracing::debug!(error = %e, "flushing acknowledgements timed out");
        }
        // The batch's own work: parsing, store and commit, acknowledgements (each overlapped
        // with other batches' stages, so this is not the time from fetch to acknowledgement).
        let work = committed.work + started.elapsed();
        metrics::histogram!(BATCH_SECONDS_METRIC).record(work.as_secs_f64());
        tracing::debug!(messages = committed.messages.len(), ack_time = ?started.elapsed(), "batch acknowledged");
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
