//! The bridge's run loop: ensures the JetStream stream, then reads it from the bridge's
//! cursor (the last stream sequence stored, kept in PostgreSQL), stores batches
//! ([`crate::Store`]) and moves the cursor in the same transaction.
//!
//! The loop is pipelined: while batch N is stored and committed, the pull for batch N+1 runs
//! and its messages are parsed. Batches are stored one at a time, in stream order.
//!
//! **No acknowledgements.** The consumer is an ephemeral pull consumer with
//! `AckPolicy::None` that starts right after the cursor (`DeliverPolicy::ByStartSequence`).
//! What has been stored is exactly what the cursor says, because rows and cursor commit
//! together: a crash before the commit leaves both unchanged and the next bridge re-reads
//! the batch; a crash after it leaves both moved. This is the Kafka way of keeping offsets with
//! the results, and it replaced one acknowledgement per message (`AckPolicy::Explicit`), which
//! cost the bridge a third of its throughput in `nats-server` (`suho bench bridge`).
//! `AckPolicy::All` was rejected earlier for safety: one ack also covers every lower sequence,
//! including messages a crashed bridge still held unstored.
//!
//! - The stream sequences of a consumer's deliveries must follow one another. A jump means a
//!   delivery was missed (a pull cut short by the bridge's deadline) or the stream dropped
//!   messages the bridge had not read (it was behind by more than the stream holds): the
//!   bridge then drops what it has in flight and re-reads from the cursor with a new consumer.
//!   A jump at the very start of a new consumer is the stream's loss, not ours: it is counted
//!   ([`crate::GAP_METRIC`], [`StatsSnapshot::gap`]) and logged, and the bridge goes on.
//! - Any failure (a fetch, a store, another bridge of the same name having moved the cursor)
//!   drops what is in flight, backs off, and re-reads from the cursor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use suho_domain::{Candle, Tick};
use tokio_util::sync::CancellationToken;

use crate::parse::{classify, Classified};
use crate::store::CursorAdvance;
use crate::store::{Store, StoreReport};
use crate::{
    BridgeConfig, BridgeError, BATCH_ERRORS_METRIC, BATCH_SECONDS_METRIC, DUPLICATES_METRIC,
    GAP_METRIC, INVALID_METRIC, ROWS_WRITTEN_METRIC,
};

/// How long after a pull request's expiry (`batch_wait`) the bridge stops waiting for it.
const FETCH_GRACE: Duration = Duration::from_millis(200);

/// How long the server keeps a bridge's consumer once nothing pulls from it (a stopped or
/// crashed bridge's consumer goes away by itself).
const CONSUMER_INACTIVE: Duration = Duration::from_secs(120);

/// A fetched batch, classified and ready to store.
struct Parsed {
    messages: usize,
    ticks: Vec<Tick>,
    candles: Vec<Candle>,
    invalid: u64,
    open_candles: u64,
    parse_time: Duration,
    /// Stream sequences: the cursor before the batch, and the batch's last.
    from: u64,
    to: u64,
}

/// Where the bridge reads: its consumer (opened on the first pull after a reset) and the last
/// stream sequence pulled through it.
struct Reader {
    consumer: Option<consumer::PullConsumer>,
    /// The last stream sequence pulled (stored or in flight).
    pulled: u64,
    /// The consumer has not delivered anything yet.
    fresh: bool,
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
    gap: AtomicU64,
}

/// A copy of [`BridgeStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages received (redeliveries included).
    pub messages: u64,
    /// Batches stored (rows and cursor committed).
    pub batches: u64,
    /// Tick rows inserted.
    pub ticks_inserted: u64,
    /// Candle rows inserted.
    pub candles_inserted: u64,
    /// Rows skipped because they were already stored (replays).
    pub duplicates: u64,
    /// Candles skipped because they were not closed.
    pub open_candles: u64,
    /// Messages that could not be parsed (skipped).
    pub invalid: u64,
    /// Batches that failed to be stored (the bridge re-read them from its cursor).
    pub batch_errors: u64,
    /// Messages the stream dropped before the bridge read them (it was behind by more than
    /// the stream holds).
    pub gap: u64,
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
            gap: g(&self.gap),
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// A bridge whose schema, stream and cursor are in place; [`Bridge::run`] starts consuming.
pub struct Bridge {
    config: BridgeConfig,
    stream: stream::Stream,
    reader: std::sync::Mutex<Reader>,
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
    /// [`BridgeConfig::subjects`], and reads (or creates) the bridge's cursor. Once this
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
        let js = jetstream::new(nats);
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
        // A bridge from before the cursor kept its position in a durable consumer of this
        // name: start the cursor at that consumer's acknowledged floor, then remove it.
        let legacy = stream.consumer_info(&config.consumer_name).await.ok();
        let initial = legacy.as_ref().map_or(0, |i| i.ack_floor.stream_sequence);
        let cursor = store.cursor(&config.consumer_name, initial).await?;
        if legacy.is_some() {
            if let Err(e) = stream.delete_consumer(&config.consumer_name).await {
                tracing::warn!(consumer = %config.consumer_name, error = %e, "removing the old durable consumer failed");
            }
        }
        tracing::info!(
            stream = %config.stream_name,
            bridge = %config.consumer_name,
            cursor,
            mode = ?store.mode(),
            "data bridge ready"
        );
        Ok(Bridge {
            config,
            stream,
            reader: std::sync::Mutex::new(Reader {
                consumer: None,
                pulled: cursor,
                fresh: true,
            }),
            store,
            stats: Arc::new(BridgeStats::default()),
        })
    }

    /// This instance's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<BridgeStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `shutdown`: fetch a batch, store it and move the cursor in one
    /// transaction, with the next batch fetched while the current one is stored (see the
    /// module docs). On any failure the bridge drops what it has in flight, backs off, and
    /// re-reads from its cursor; a stop at any point loses nothing and stores nothing twice.
    ///
    /// # Errors
    /// None at present: every failure is retried; the `Result` is kept for fatal conditions.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BridgeError> {
        let mut backoff = self.config.retry_initial;
        // A batch pulled (and parsed) while the previous one was being stored.
        let mut prefetched: Option<Result<Parsed, BridgeError>> = None;
        let mut reset_needed = false;
        loop {
            if reset_needed {
                prefetched = None;
                match self.reset().await {
                    Ok(()) => reset_needed = false,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "re-reading from the cursor failed");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = shutdown.cancelled() => break,
                        }
                        backoff = (backoff * 2).min(self.config.retry_max);
                        continue;
                    }
                }
            }
            let fetched = match prefetched.take() {
                Some(fetched) => fetched,
                None => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    r = self.fetch_parsed() => r,
                },
            };
            let failed = match fetched {
                Ok(batch) if batch.messages == 0 => false,
                Ok(batch) => {
                    let next = async {
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => None,
                            r = self.fetch_parsed() => Some(r),
                        }
                    };
                    let (stored, next) = tokio::join!(self.store_batch(batch), next);
                    prefetched = next;
                    match stored {
                        Ok(()) => false,
                        Err(e) => {
                            self.stats.batch_errors.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!(BATCH_ERRORS_METRIC).increment(1);
                            tracing::warn!(error = %e, retry_in = ?backoff, "batch not stored; re-reading it from the cursor");
                            true
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "fetching from JetStream failed; re-reading from the cursor");
                    true
                }
            };
            if failed {
                reset_needed = true;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(self.config.retry_max);
            } else {
                backoff = self.config.retry_initial;
            }
        }
        let consumer = self.lock_reader().consumer.take();
        if let Some(consumer) = consumer {
            self.delete_consumer(consumer).await;
        }
        tracing::info!(stats = ?self.stats.snapshot(), "data bridge stopped");
        Ok(())
    }

    fn lock_reader(&self) -> std::sync::MutexGuard<'_, Reader> {
        self.reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the consumer and goes back to the stored cursor: the next pull opens a new
    /// consumer right after it.
    async fn reset(&self) -> Result<(), BridgeError> {
        let cursor = self.store.cursor(&self.config.consumer_name, 0).await?;
        let old = {
            let mut reader = self.lock_reader();
            reader.pulled = cursor;
            reader.fresh = true;
            reader.consumer.take()
        };
        if let Some(consumer) = old {
            self.delete_consumer(consumer).await;
        }
        tracing::debug!(cursor, "bridge reading from its cursor");
        Ok(())
    }

    async fn delete_consumer(&self, consumer: consumer::PullConsumer) {
        let name = consumer.cached_info().name.clone();
        // Best effort: an abandoned consumer goes away after CONSUMER_INACTIVE anyway.
        if let Err(e) = self.stream.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, error = %e, "deleting the old consumer failed");
        }
    }

    /// The consumer to pull from, opened right after the last pulled sequence if there is
    /// none.
    async fn consumer(&self) -> Result<(consumer::PullConsumer, u64, bool), BridgeError> {
        let (existing, pulled, fresh) = {
            let reader = self.lock_reader();
            (reader.consumer.clone(), reader.pulled, reader.fresh)
        };
        if let Some(consumer) = existing {
            return Ok((consumer, pulled, fresh));
        }
        let deliver_policy = if pulled == 0 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: pulled + 1,
            }
        };
        let consumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                description: Some(format!("suho data bridge {}", self.config.consumer_name)),
                deliver_policy,
                ack_policy: consumer::AckPolicy::None,
                max_batch: i64::try_from(self.config.batch_max).unwrap_or(i64::MAX),
                inactive_threshold: CONSUMER_INACTIVE,
                ..Default::default()
            })
            .await
            .map_err(|e| BridgeError::jetstream("create consumer", e))?;
        self.lock_reader().consumer = Some(consumer.clone());
        Ok((consumer, pulled, true))
    }

    /// Up to `batch_max` messages, waiting about `batch_wait` for them, with the cursor they
    /// start after and the last stream sequence among them.
    ///
    /// The pull request expires on the server after `batch_wait`, which normally ends it with
    /// a timeout status. The bridge does not rely on that status: it stops reading at
    /// `batch_wait` + [`FETCH_GRACE`] and keeps what has arrived (nats-server 2.9 was seen not
    /// to send it after a partial batch, leaving the client's own 5 s fallback to end it).
    /// Anything the server delivered after that shows up as a jump in the next pull's
    /// sequences, and the bridge re-reads from its cursor.
    async fn fetch(&self) -> Result<(Vec<jetstream::Message>, u64, u64), BridgeError> {
        let (consumer, from, fresh) = self.consumer().await?;
        let deadline = tokio::time::sleep(self.config.batch_wait + FETCH_GRACE);
        tokio::pin!(deadline);
        let mut batch = tokio::select! {
            r = consumer
                .batch()
                .max_messages(self.config.batch_max)
                .expires(self.config.batch_wait)
                .messages() => r.map_err(|e| BridgeError::jetstream("fetch", e))?,
            () = &mut deadline => return Ok((Vec::new(), from, from)),
        };
        let mut out = Vec::new();
        loop {
            let next = tokio::select! {
                biased;
                m = batch.next() => m,
                () = &mut deadline => {
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
        let to = self.check_sequences(&out, from, fresh)?;
        let mut reader = self.lock_reader();
        // A reset while this pull ran makes its messages stale: hand back nothing.
        if reader.pulled != from {
            return Ok((Vec::new(), from, from));
        }
        reader.pulled = to;
        if !out.is_empty() {
            reader.fresh = false;
        }
        Ok((out, from, to))
    }

    /// The last stream sequence of `messages`, which must follow `from` one by one; a jump
    /// right at the start of a `fresh` consumer is the stream's own loss (counted), any other
    /// jump an error (the bridge re-reads from its cursor).
    fn check_sequences(
        &self,
        messages: &[jetstream::Message],
        from: u64,
        fresh: bool,
    ) -> Result<u64, BridgeError> {
        let mut last = from;
        for (i, m) in messages.iter().enumerate() {
            let seq = m
                .info()
                .map_err(|e| BridgeError::jetstream("message metadata", e))?
                .stream_sequence;
            if seq == last + 1 {
                last = seq;
                continue;
            }
            if i == 0 && fresh && seq > last + 1 {
                let lost = seq - last - 1;
                self.stats.gap.fetch_add(lost, Ordering::Relaxed);
                metrics::counter!(GAP_METRIC).increment(lost);
                tracing::warn!(
                    after = last,
                    next = seq,
                    lost,
                    "the stream no longer holds messages the bridge had not stored (it was behind by more than the stream keeps); they are lost to the store"
                );
                last = seq;
                continue;
            }
            return Err(BridgeError::jetstream(
                "fetch",
                format!("stream sequence jumped from {last} to {seq}"),
            ));
        }
        Ok(last)
    }

    /// [`Bridge::fetch`], then [`Bridge::parse`].
    async fn fetch_parsed(&self) -> Result<Parsed, BridgeError> {
        let (messages, from, to) = self.fetch().await?;
        Ok(self.parse(&messages, from, to))
    }

    /// Classifies every message of a batch.
    fn parse(&self, messages: &[jetstream::Message], from: u64, to: u64) -> Parsed {
        let started = Instant::now();
        let now = suho_messaging::now_ms();
        let mut ticks: Vec<Tick> = Vec::new();
        let mut candles: Vec<Candle> = Vec::new();
        let mut invalid = 0;
        let mut open_candles = 0u64;
        for m in messages {
            match classify(&self.config.subject_prefix, &m.subject, &m.payload, now) {
                Classified::Tick(t) => ticks.push(t),
                Classified::Candle(c) => candles.push(c),
                Classified::OpenCandle => open_candles += 1,
                Classified::Invalid(reason) => {
                    tracing::warn!(subject = %m.subject, %reason, "unparseable market message skipped");
                    invalid += 1;
                }
            }
        }
        Parsed {
            messages: messages.len(),
            ticks,
            candles,
            invalid,
            open_candles,
            parse_time: started.elapsed(),
            from,
            to,
        }
    }

    /// Stores one parsed batch and moves the cursor past it, in one transaction, and counts
    /// it.
    async fn store_batch(&self, batch: Parsed) -> Result<(), BridgeError> {
        let started = Instant::now();
        let advance = CursorAdvance {
            name: self.config.consumer_name.clone(),
            from: batch.from,
            to: batch.to,
        };
        let report = self
            .store
            .write_advancing(&batch.ticks, &batch.candles, &advance)
            .await?;
        self.record(
            &report,
            batch.messages as u64,
            batch.open_candles,
            batch.invalid,
        );
        let store_time = started.elapsed();
        metrics::histogram!(BATCH_SECONDS_METRIC)
            .record((batch.parse_time + store_time).as_secs_f64());
        tracing::debug!(
            messages = batch.messages,
            ?report,
            invalid = batch.invalid,
            parse_time = ?batch.parse_time,
            ?store_time,
            cursor = batch.to,
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
