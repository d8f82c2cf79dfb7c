//! [`bench_bridge`]: the data bridge's sustained rows/s into PostgreSQL, beside a raw `COPY` of
//! the same rows into the same table, measured in the same run.
//!
//! - **The rows.** `rows` ticks from `SyntheticFeed` over the major FX pairs, stamped one
//!   millisecond apart from 2024-01-10T00:00:00Z (so they share one daily partition and no two
//!   rows collide on the key), generated before anything is timed.
//! - **The table.** Both paths write the bridge's own `market_ticks` (created, and its partition
//!   made, by [`suho_bridge::Store`]), in a database of its own that the run creates and drops.
//!   Before each phase the table is emptied (`TRUNCATE`) and a `CHECKPOINT` is asked for (when
//!   the role may), so no phase inherits the other's dirty pages.
//! - **Raw.** One connection runs `COPY market_ticks (symbol, ts, bid, ask, source) FROM STDIN
//!   (FORMAT csv)` for `batch` rows at a time, back to back, each COPY its own transaction. The
//!   CSV is the bridge's own ([`suho_bridge::ticks_copy_csv`], the text its direct path sends),
//!   encoded inside the timing. Batch latency = one COPY, commit included.
//! - **Ours.** The real [`Bridge`] (JetStream stream, a pull consumer from the bridge's cursor,
//!   batches of up to `batch`, one transaction: the cursor moved and one COPY into the table
//!   (staging and `INSERT .. ON CONFLICT DO NOTHING` only after a conflict), commit) is started
//!   and idle; then the ticks, already encoded as JSON, are published on
//!   `market.{SYM}.tick` as fast as the client takes them. The publisher never waits for the
//!   bridge. Elapsed = first publish until the bridge's inserted-rows counter reaches `rows`.
//!   Batch latency = the bridge's own `bridge_batch_seconds` (parse, store, commit), taken
//!   from a process-wide `metrics` recorder that [`bench_bridge`] installs when none is.
//! - **Drain.** The same bridge, but the ticks are published into its stream first, with the
//!   bridge set up and not yet running; once the stream holds them all, the bridge runs, and
//!   elapsed = from its start until the last row is stored. This is the bridge's own sustained
//!   rate, from JetStream into PostgreSQL, without the publisher and the NATS server's intake
//!   competing for the same two cores ("ours" includes them).
//! - **Store** (a breakdown, not a goal): the bridge's own [`Store::write`] (as above: COPY,
//!   commit) called directly with the same
//!   batches, without NATS: the database share of our path.
//! - rows/s = rows stored / elapsed; the ratios are ours / raw, drain / raw and store / raw
//!   within the same run.
//!
//! All paths run on the same server, one after the other (raw, store, ours, drain), `runs`
//! times.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use async_nats::Subject;
use bytes::Bytes;
use hdrhistogram::Histogram;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use suho_bridge::{Bridge, BridgeConfig, StorageMode, Store};
use suho_domain::{subject, Symbol, Tick};
use suho_market::SyntheticFeed;
use tokio_util::sync::CancellationToken;

use crate::server::{ThrowawayNats, ThrowawayPostgres};
use crate::{opt, ratio};

/// 2024-01-10T00:00:00Z: the first tick's time; the others follow one millisecond apart.
const BASE_MS: i64 = 1_704_844_800_000;
/// Ticks of one run must fit in one day (one partition).
const MAX_ROWS: usize = 86_400_000;
/// Largest batch latency the histograms hold (longer ones are clamped to it).
const MAX_LATENCY_NS: u64 = 600_000_000_000;

/// What [`bench_bridge`] runs.
#[derive(Debug, Clone)]
pub struct BridgeBenchOptions {
    /// Ticks stored per phase.
    pub rows: usize,
    /// Rows per raw COPY, and the bridge's `batch_max`.
    pub batch: usize,
    /// How many times both phases run (raw, then ours).
    pub runs: u32,
    /// A PostgreSQL server to use, through a role that may create databases (the run creates
    /// and drops a database of its own); `None` starts a throwaway cluster for the run.
    pub database_url: Option<String>,
    /// A NATS server with JetStream to use; `None` starts a throwaway `nats-server -js`.
    pub nats_url: Option<String>,
    /// Prefix of every subject of the run (a unique suffix per phase is added).
    pub subject_prefix: String,
    /// Symbols the ticks rotate through.
    pub symbols: Vec<Symbol>,
    /// Seed of the synthetic feed.
    pub seed: u64,
    /// A phase fails when no row is stored for this long.
    pub stall_timeout: Duration,
    /// Where the pinned `nats-server` of a throwaway server is built and cached.
    pub stack: crate::server::StackOptions,
}

impl Default for BridgeBenchOptions {
    /// 200,000 ticks per phase, in batches of 5,000 (the bridge's default `batch_max`), twice,
    /// on a throwaway PostgreSQL and NATS.
    fn default() -> Self {
        Self {
            rows: 200_000,
            batch: BridgeConfig::new("").batch_max,
            runs: 2,
            database_url: None,
            nats_url: None,
            subject_prefix: "bench.".into(),
            symbols: suho_domain::major_fx(),
            seed: 42,
            stall_timeout: Duration::from_secs(30),
            stack: crate::server::StackOptions::from_config(&suho_config::Config::default()),
        }
    }
}

/// One path's figures in one run.
#[derive(Debug, Clone)]
pub struct BridgePhaseResult {
    /// Rows in the table after the phase (`count(*)`).
    pub rows: u64,
    /// Batches (raw: COPY statements; ours: batches the bridge stored).
    pub batches: u64,
    /// From the first COPY (raw), the first publish (ours) or the bridge's start (drain) until
    /// the last row was stored.
    pub elapsed: Duration,
    /// Time per batch, nanoseconds; empty when it could not be taken (ours without the
    /// metrics recorder).
    pub batch_ns: Histogram<u64>,
    /// Ours: how long publishing every tick took (flush included).
    pub publish: Option<Duration>,
    /// Ours: from the first publish until the first batch was stored.
    pub first_batch: Option<Duration>,
    /// Ours: batches the bridge failed to store (they were redelivered).
    pub batch_errors: u64,
}

impl BridgePhaseResult {
    /// Rows stored per second.
    #[must_use]
    pub fn rows_per_sec(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let rows = self.rows as f64;
        rows / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Mean rows per batch.
    #[must_use]
    pub fn rows_per_batch(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        (self.batches > 0).then(|| self.rows as f64 / self.batches as f64)
    }

    /// Time spent inside batches (sum of the batch times, from the histogram's mean).
    #[must_use]
    pub fn time_in_batches(&self) -> Option<Duration> {
        #[allow(clippy::cast_precision_loss)]
        (!self.batch_ns.is_empty()).then(|| {
            Duration::from_secs_f64(self.batch_ns.mean() * self.batch_ns.len() as f64 / 1e9)
        })
    }

    /// The batch time at `quantile` (0..=1), milliseconds; `None` when none was recorded.
    #[must_use]
    pub fn batch_ms(&self, quantile: f64) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        (!self.batch_ns.is_empty()).then(|| self.batch_ns.value_at_quantile(quantile) as f64 / 1e6)
    }
}

/// The paths of one run.
#[derive(Debug, Clone)]
pub struct BridgeRunResult {
    /// The data bridge, storing while the ticks are published.
    pub ours: BridgePhaseResult,
    /// The data bridge draining a stream that already holds every tick.
    pub drain: BridgePhaseResult,
    /// The bridge's `Store::write` alone, same batches, no NATS.
    pub store: BridgePhaseResult,
    /// Raw COPY of the same rows into the same table.
    pub raw: BridgePhaseResult,
}

impl BridgeRunResult {
    /// Rows/s, ours / raw.
    #[must_use]
    pub fn throughput_ratio(&self) -> Option<f64> {
        ratio(self.ours.rows_per_sec(), self.raw.rows_per_sec())
    }

    /// Rows/s, the bridge draining a filled stream / raw.
    #[must_use]
    pub fn drain_ratio(&self) -> Option<f64> {
        ratio(self.drain.rows_per_sec(), self.raw.rows_per_sec())
    }

    /// Rows/s, the bridge's store alone / raw.
    #[must_use]
    pub fn store_ratio(&self) -> Option<f64> {
        ratio(self.store.rows_per_sec(), self.raw.rows_per_sec())
    }
}

/// What [`bench_bridge`] measured.
#[derive(Debug, Clone)]
pub struct BridgeBenchReport {
    /// One entry per run.
    pub runs: Vec<BridgeRunResult>,
    /// Ticks per phase.
    pub rows: usize,
    /// Rows per raw COPY and the bridge's `batch_max`.
    pub batch: usize,
    /// Symbols the ticks rotated through.
    pub symbols: usize,
    /// Size of a typical tick payload (JSON), bytes.
    pub payload_bytes: usize,
    /// The bridge's stream cap (`max_bytes`) in the run.
    pub stream_max_bytes: i64,
    /// `server_version`, `fsync`, `synchronous_commit` and `shared_buffers` of the server.
    pub postgres: String,
    /// The layout of the bridge's tables.
    pub storage: StorageMode,
    /// The NATS server's version.
    pub nats_version: String,
    /// Whether the run started its own PostgreSQL.
    pub throwaway_postgres: bool,
    /// Whether the run started its own NATS.
    pub throwaway_nats: bool,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// The goal of the issue: ours at least this fraction of raw COPY's rows/s.
pub const BRIDGE_GOAL_RATIO: f64 = 0.7;

/// Runs the bridge benchmark: `runs` times raw COPY, the bridge's store alone, then the whole
/// bridge, on the same table.
///
/// # Errors
/// Invalid options (no rows, more than a day of milliseconds of them, a zero batch or run
/// count, no symbols), a server that does not start or cannot be reached, a role that may not
/// create a database, JetStream unavailable, or a phase that stalls (nothing stored for
/// `stall_timeout`).
pub async fn bench_bridge(opts: BridgeBenchOptions) -> anyhow::Result<BridgeBenchReport> {
    ensure!(
        (1..=MAX_ROWS).contains(&opts.rows),
        "bench bridge: rows must be 1..={MAX_ROWS}"
    );
    ensure!(
        opts.batch > 0 && opts.runs > 0,
        "bench bridge: batch and runs must be positive"
    );
    ensure!(
        !opts.symbols.is_empty(),
        "bench bridge: at least one symbol is needed"
    );
    let began = Instant::now();
    let nats_server = match &opts.nats_url {
        Some(_) => None,
        None => Some(
            tokio::task::spawn_blocking({
                let stack = opts.stack.clone();
                move || ThrowawayNats::start_jetstream(&stack)
            })
            .await
            .context("the nats-server starter panicked")??,
        ),
    };
    let pg_server = match &opts.database_url {
        Some(_) => None,
        None => Some(
            tokio::task::spawn_blocking(ThrowawayPostgres::start)
                .await
                .context("the PostgreSQL starter panicked")??,
        ),
    };
    let nats_url = opts
        .nats_url
        .clone()
        .or_else(|| nats_server.as_ref().map(|s| s.url().to_string()))
        .context("no NATS server")?;
    let admin_url = opts
        .database_url
        .clone()
        .or_else(|| pg_server.as_ref().map(|s| s.url().to_string()))
        .context("no PostgreSQL server")?;

    let database = BenchDatabase::create(&admin_url).await?;
    let result = run_all(&opts, &nats_url, &database.pool).await;
    database.drop_database().await;
    drop(nats_server);
    if let Some(pg) = pg_server {
        // Its drop waits for the fast shutdown.
        let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
    }
    let mut report = result?;
    report.throwaway_postgres = opts.database_url.is_none();
    report.throwaway_nats = opts.nats_url.is_none();
    report.elapsed = began.elapsed();
    Ok(report)
}

async fn run_all(
    opts: &BridgeBenchOptions,
    nats_url: &str,
    pool: &PgPool,
) -> anyhow::Result<BridgeBenchReport> {
    let ticks = generate(&opts.symbols, opts.seed, opts.rows)?;
    // The bench's database has one role, which owns the tables too.
    suho_bridge::migrate(pool)
        .await
        .context("creating the market tables")?;
    let store = Store::open(pool.clone())
        .await
        .context("creating the bridge's tables")?;
    // Let the bridge's own code make the partition the rows go to, then empty the table.
    store
        .write(&ticks[..1], &[])
        .await
        .context("creating the ticks' partition")?;
    let postgres = server_settings(pool).await?;
    // About 200 B a tick in the stream; room for several times that.
    let stream_max_bytes = i64::try_from(opts.rows)
        .unwrap_or(i64::MAX / 1024)
        .saturating_mul(1024)
        .max(64 << 20);
    let batch_times = crate::recorder::histogram(suho_bridge::BATCH_SECONDS_METRIC);
    let run_id = std::process::id();
    let mut runs = Vec::new();
    let mut nats_version = String::new();
    for run in 1..=opts.runs {
        tracing::info!(run, rows = opts.rows, "bench bridge: raw COPY");
        let raw = raw_phase(pool, &ticks, opts.batch).await?;
        tracing::info!(
            run,
            rows = opts.rows,
            "bench bridge: the bridge's store alone"
        );
        let store_only = store_phase(pool, &store, &ticks, opts.batch).await?;
        tracing::info!(run, rows = opts.rows, "bench bridge: the data bridge");
        let phase = |kind: &str, drain: bool| OursPhase {
            nats_url,
            prefix: format!("{}bridge{run_id}r{run}{kind}.", opts.subject_prefix),
            batch: opts.batch,
            stream_max_bytes,
            stall_timeout: opts.stall_timeout,
            drain,
        };
        let (ours, version) = ours_phase(&phase("live", false), pool, &ticks, batch_times).await?;
        tracing::info!(
            run,
            rows = opts.rows,
            "bench bridge: the data bridge, draining"
        );
        let (drain, _) = ours_phase(&phase("drain", true), pool, &ticks, batch_times).await?;
        nats_version = version;
        runs.push(BridgeRunResult {
            ours,
            drain,
            store: store_only,
            raw,
        });
    }
    Ok(BridgeBenchReport {
        runs,
        rows: opts.rows,
        batch: opts.batch,
        symbols: opts.symbols.len(),
        payload_bytes: serde_json::to_vec(&ticks[0]).map_or(0, |v| v.len()),
        stream_max_bytes,
        postgres,
        storage: store.mode(),
        nats_version,
        throwaway_postgres: false,
        throwaway_nats: false,
        elapsed: Duration::ZERO,
    })
}

/// `rows` ticks one millisecond apart from [`BASE_MS`].
fn generate(symbols: &[Symbol], seed: u64, rows: usize) -> anyhow::Result<Vec<Tick>> {
    let mut feed = SyntheticFeed::new(symbols, seed);
    (0..rows)
        .map(|i| {
            let ts = BASE_MS + i64::try_from(i).context("too many rows")?;
            feed.next_tick(ts)
                .context("the synthetic feed gave no tick")
        })
        .collect()
}

/// A database created for the run on the given server, dropped at the end.
struct BenchDatabase {
    admin: PgConnectOptions,
    name: String,
    pool: PgPool,
}

impl BenchDatabase {
    async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let admin = PgConnectOptions::from_str(admin_url).context("parsing the database URL")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("suho_bench_bridge_{}_{nanos}", std::process::id());
        let mut conn = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::PgConnection::connect_with(&admin),
        )
        .await
        .context("connecting to PostgreSQL: timed out")?
        .context("connecting to PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .context("creating the bench database (the role needs CREATEDB)")?;
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(admin.clone().database(&name))
            .await
            .context("connecting to the bench database")?;
        Ok(Self { admin, name, pool })
    }

    /// Drops the database; a failure is only logged (the run's figures stand).
    async fn drop_database(self) {
        self.pool.close().await;
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect_with(&self.admin).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await?;
            conn.close().await
        };
        if let Err(e) = dropped.await {
            tracing::warn!(database = %self.name, error = %e, "could not drop the bench database");
        }
    }
}

async fn server_settings(pool: &PgPool) -> anyhow::Result<String> {
    let show = |name: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
            .fetch_one(pool)
            .await
            .with_context(|| format!("SHOW {name}"))
    };
    Ok(format!(
        "PostgreSQL {} (fsync {}, synchronous_commit {}, shared_buffers {})",
        show("server_version").await?,
        show("fsync").await?,
        show("synchronous_commit").await?,
        show("shared_buffers").await?,
    ))
}

/// Empties the table and, when the role may, flushes dirty pages, so the phase starts clean.
async fn reset_table(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE market_ticks")
        .execute(pool)
        .await
        .context("emptying market_ticks")?;
    if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
        tracing::debug!(error = %e, "CHECKPOINT refused; going on without it");
    }
    Ok(())
}

async fn stored(pool: &PgPool) -> anyhow::Result<u64> {
    let n = suho_bridge::tick_count(pool, None)
        .await
        .context("counting the stored ticks")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("creating a latency histogram")
}

fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(MAX_LATENCY_NS);
    hist.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
}

/// The raw baseline: COPY the rows straight into `market_ticks`, `batch` at a time.
async fn raw_phase(
    pool: &PgPool,
    ticks: &[Tick],
    batch: usize,
) -> anyhow::Result<BridgePhaseResult> {
    reset_table(pool).await?;
    let mut conn = pool.acquire().await.context("a database connection")?;
    let mut batch_ns = new_histogram()?;
    let mut batches = 0;
    let start = Instant::now();
    for chunk in ticks.chunks(batch) {
        let began = Instant::now();
        let csv = suho_bridge::ticks_copy_csv(chunk);
        let mut copy = conn
            .copy_in_raw(suho_bridge::TICKS_COPY)
            .await
            .context("starting COPY")?;
        copy.send(csv.into_bytes())
            .await
            .context("sending COPY data")?;
        let copied = copy.finish().await.context("finishing COPY")?;
        ensure!(
            copied == chunk.len() as u64,
            "COPY stored {copied} of {} rows",
            chunk.len()
        );
        record(&mut batch_ns, began.elapsed());
        batches += 1;
    }
    let elapsed = start.elapsed();
    drop(conn);
    Ok(BridgePhaseResult {
        rows: stored(pool).await?,
        batches,
        elapsed,
        batch_ns,
        publish: None,
        first_batch: None,
        batch_errors: 0,
    })
}

/// The bridge's database share: its [`Store::write`], `batch` ticks at a time.
async fn store_phase(
    pool: &PgPool,
    store: &Store,
    ticks: &[Tick],
    batch: usize,
) -> anyhow::Result<BridgePhaseResult> {
    reset_table(pool).await?;
    let mut batch_ns = new_histogram()?;
    let mut batches = 0;
    let start = Instant::now();
    for chunk in ticks.chunks(batch) {
        let began = Instant::now();
        let report = store.write(chunk, &[]).await.context("Store::write")?;
        ensure!(
            report.ticks_inserted == chunk.len() as u64,
            "Store::write inserted {} of {} rows",
            report.ticks_inserted,
            chunk.len()
        );
        record(&mut batch_ns, began.elapsed());
        batches += 1;
    }
    let elapsed = start.elapsed();
    Ok(BridgePhaseResult {
        rows: stored(pool).await?,
        batches,
        elapsed,
        batch_ns,
        publish: None,
        first_batch: None,
        batch_errors: 0,
    })
}

/// What one run of our path needs besides the rows.
struct OursPhase<'a> {
    nats_url: &'a str,
    /// Subject prefix of this phase (unique; gives the stream and consumer their names).
    prefix: String,
    batch: usize,
    stream_max_bytes: i64,
    stall_timeout: Duration,
    /// Fill the stream first, then run the bridge (timed from its start).
    drain: bool,
}

async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(6), options.connect(url))
        .await
        .with_context(|| format!("connecting to {url}: timed out"))?
        .with_context(|| format!("connecting to {url}"))
}

/// Our path: publish the ticks on NATS and let the real bridge store them (while they are
/// published, or after they all are with `phase.drain`). Returns the figures and the NATS
/// server's version.
async fn ours_phase(
    phase: &OursPhase<'_>,
    pool: &PgPool,
    ticks: &[Tick],
    batch_times: Option<&'static Mutex<Histogram<u64>>>,
) -> anyhow::Result<(BridgePhaseResult, String)> {
    reset_table(pool).await?;
    let messages: Vec<(Subject, Bytes)> = ticks
        .iter()
        .map(|t| {
            let payload = serde_json::to_vec(t).context("encoding a tick")?;
            Ok((
                Subject::from(subject::tick(&phase.prefix, t.symbol)),
                Bytes::from(payload),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let bridge_client = connect(phase.nats_url, "suho-bench-bridge").await?;
    let publisher = connect(phase.nats_url, "suho-bench-feed").await?;
    let nats_version = bridge_client.server_info().version;
    let mut config = BridgeConfig::new(phase.prefix.clone());
    config.batch_max = phase.batch;
    config.max_bytes = Some(phase.stream_max_bytes);
    let stream_name = config.stream_name.clone();
    let bridge = tokio::time::timeout(
        Duration::from_secs(30),
        Bridge::start(config, bridge_client.clone(), pool.clone()),
    )
    .await
    .context("starting the bridge: timed out")?
    .context("starting the bridge (is JetStream enabled on the NATS server?)")?;
    let stats = bridge.stats();
    if let Some(h) = batch_times {
        lock(h).reset();
    }
    let stop = CancellationToken::new();
    let mut bridge = Some(bridge);
    let mut task = None;
    if !phase.drain {
        task = bridge
            .take()
            .map(|b| tokio::spawn(b.run(stop.child_token())));
    }

    let want = ticks.len() as u64;
    let publish_start = Instant::now();
    // Its own task, so the bridge's progress is watched while the ticks go out.
    let mut publishing = Some(tokio::spawn(async move {
        for (subject, payload) in messages {
            publisher
                .publish(subject, payload)
                .await
                .context("publishing a tick")?;
        }
        tokio::time::timeout(Duration::from_secs(30), publisher.flush())
            .await
            .context("flushing the publisher: timed out")?
            .context("flushing the publisher")?;
        anyhow::Ok(publish_start.elapsed())
    }));
    let mut start = publish_start;
    let mut publish = None;
    if let Some(bridge) = bridge.take() {
        if let Some(p) = publishing.take() {
            publish = Some(p.await.context("the publisher panicked")??);
        }
        let js = async_nats::jetstream::new(bridge_client.clone());
        let filled = Instant::now();
        loop {
            let mut stream = js
                .get_stream(&stream_name)
                .await
                .context("the bench stream")?;
            let held = stream
                .info()
                .await
                .context("the bench stream's state")?
                .state
                .messages;
            if held >= want {
                break;
            }
            ensure!(
                filled.elapsed() < phase.stall_timeout,
                "the stream holds {held} of {want} ticks after {:?}",
                phase.stall_timeout
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start = Instant::now();
        task = Some(tokio::spawn(bridge.run(stop.child_token())));
    }

    // Until every row is stored, or nothing more is stored for `stall_timeout`.
    let mut last = 0;
    let mut last_change = Instant::now();
    let mut first_batch = None;
    let elapsed = loop {
        let inserted = stats.snapshot().ticks_inserted;
        if inserted > 0 && first_batch.is_none() {
            first_batch = Some(start.elapsed());
        }
        if inserted >= want {
            break Some(start.elapsed());
        }
        if inserted != last {
            last = inserted;
            last_change = Instant::now();
        } else if last_change.elapsed() > phase.stall_timeout {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    stop.cancel();
    if let Some(p) = publishing.take() {
        publish = Some(p.await.context("the publisher panicked")??);
    }
    let task = task.context("the bridge never ran")?;
    match tokio::time::timeout(Duration::from_secs(10), task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e).context("the bridge failed"),
        Ok(Err(e)) => return Err(e).context("the bridge panicked"),
        Err(_) => bail!("the bridge did not stop within 10 s"),
    }
    let js = async_nats::jetstream::new(bridge_client);
    let captured = match js.get_stream(&stream_name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).ok(),
        Err(_) => None,
    };
    if let Err(e) = js.delete_stream(&stream_name).await {
        tracing::warn!(stream = %stream_name, error = %e, "could not delete the bench stream");
    }
    let snapshot = stats.snapshot();
    let Some(elapsed) = elapsed else {
        bail!(
            "the bridge stalled: {} of {want} ticks stored, nothing more for {:?} \
             (the stream captured {}; {} batch errors)",
            snapshot.ticks_inserted,
            phase.stall_timeout,
            captured.map_or_else(|| "?".into(), |c| c.to_string()),
            snapshot.batch_errors
        );
    };
    let batch_ns = match batch_times {
        Some(h) => lock(h).clone(),
        None => new_histogram()?,
    };
    let result = BridgePhaseResult {
        rows: stored(pool).await?,
        batches: snapshot.batches,
        elapsed,
        batch_ns,
        publish,
        first_batch,
        batch_errors: snapshot.batch_errors,
    };
    Ok((result, nats_version))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl fmt::Display for BridgeBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bridge bench: {} ticks per phase ({} symbols, ~{} B tick JSON), batches of {}, {} run(s), {:.1} s in all",
            self.rows,
            self.symbols,
            self.payload_bytes,
            self.batch,
            self.runs.len(),
            self.elapsed.as_secs_f64(),
        )?;
        writeln!(
            f,
            "  {} {}, {:?} tables; {} NATS {} (JetStream file store, stream capped at {} MiB)",
            if self.throwaway_postgres {
                "throwaway"
            } else {
                "given"
            },
            self.postgres,
            self.storage,
            if self.throwaway_nats {
                "throwaway"
            } else {
                "given"
            },
            self.nats_version,
            self.stream_max_bytes >> 20,
        )?;
        writeln!(
            f,
            "{:>3}  {:<5} {:>9} {:>7} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9}",
            "run",
            "path",
            "rows",
            "batches",
            "rows/bat",
            "elapsed s",
            "rows/s",
            "p50 ms",
            "p99 ms",
            "max ms"
        )?;
        for (i, r) in self.runs.iter().enumerate() {
            for (name, p) in [
                ("ours", &r.ours),
                ("drain", &r.drain),
                ("store", &r.store),
                ("raw", &r.raw),
            ] {
                writeln!(
                    f,
                    "{:>3}  {:<5} {:>9} {:>7} {:>9} {:>9.3} {:>10.0} {:>9} {:>9} {:>9}",
                    if name == "ours" {
                        (i + 1).to_string()
                    } else {
                        String::new()
                    },
                    name,
                    p.rows,
                    p.batches,
                    opt(p.rows_per_batch(), 0),
                    p.elapsed.as_secs_f64(),
                    p.rows_per_sec(),
                    opt(p.batch_ms(0.5), 1),
                    opt(p.batch_ms(0.99), 1),
                    opt(p.batch_ms(1.0), 1),
                )?;
            }
            writeln!(
                f,
                "{:>3}  {:<5} {:>48}   (ours/raw; drain/raw {}x; store/raw {}x)",
                "",
                "ratio",
                format!("{}x", opt(r.throughput_ratio(), 2)),
                opt(r.drain_ratio(), 2),
                opt(r.store_ratio(), 2),
            )?;
        }
        for (i, r) in self.runs.iter().enumerate() {
            writeln!(
                f,
                "run {}: ours published (and flushed) every tick after {} s, first batch stored \
                 after {} s; the bridge spent {} s of its {:.3} s inside batches (parse, store, \
                 commit), the rest fetching or waiting; batch errors {}",
                i + 1,
                opt(r.ours.publish.map(|d| d.as_secs_f64()), 3),
                opt(r.ours.first_batch.map(|d| d.as_secs_f64()), 3),
                opt(r.ours.time_in_batches().map(|d| d.as_secs_f64()), 3),
                r.ours.elapsed.as_secs_f64(),
                r.ours.batch_errors,
            )?;
        }
        let met = |ratio: fn(&BridgeRunResult) -> Option<f64>| {
            self.runs
                .iter()
                .filter(|r| ratio(r).is_some_and(|x| x >= BRIDGE_GOAL_RATIO))
                .count()
        };
        writeln!(
            f,
            "goal >= {BRIDGE_GOAL_RATIO:.2}x raw rows/s: ours (while publishing) met in {} of {} \
             run(s); drain (the bridge alone, from a filled stream) met in {} of {}",
            met(BridgeRunResult::throughput_ratio),
            self.runs.len(),
            met(BridgeRunResult::drain_ratio),
            self.runs.len(),
        )
    }
}
