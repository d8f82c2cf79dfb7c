//! [`bench_trading`]: trade commands from many users, open loop, through the real platform
//! to their outcome, beside a bare rdkafka two-hop echo on the same broker, in the same run.
//!
//! - **The platform.** A throwaway stack of its own (Kafka, NATS, PostgreSQL, started by
//!   `suho_stack` as `suho stack up` starts them, on free ports), and in this process the
//!   services a command goes through, wired as `suho::Application::run` wires them: the
//!   synthetic feed and the price service (the engine asks `market.{SYM}.price`), the trading
//!   engine (`suho_trading::Engine`: one Kafka transaction per command holding its outcome,
//!   the account's status and the command's offset) and the gateway (`suho_gateway`).
//!   `users` users are registered and logged in through the gateway before anything is timed.
//! - **The commands.** Command `i` is due at `start + i / rate` and belongs to user
//!   `i mod users`; it closes that user's oldest open trade if the bench has seen one executed,
//!   else it opens a 0.01-lot BUY (so no account runs out of margin or piles up positions).
//!   Two paths: **http** (`POST /api/trade/open` or `/close` with the user's token, from a
//!   keep-alive client pool; the `command_id` is the one the `202` names) and **kafka** (the
//!   `TradeCommand` JSON produced straight to `user.commands`, keyed by the user, through a
//!   `UserEventProducer` as the gateway's). Each command is sent when due, on its own task,
//!   whatever happened to the others (open loop).
//! - **The outcome.** A `read_committed` reader of `user.trades` (the platform's consumer
//!   settings) takes the time each outcome becomes visible and matches it by `command_id`.
//!   Latency = that time - the command's due time (not its actual send time, so a sender
//!   or a server that falls behind shows up: no coordinated omission). The headline is
//!   open -> `TRADE_EXECUTED`; close -> `TRADE_CLOSED` is kept apart.
//! - **Exactly once.** After each phase (and a drain), every accepted command must have
//!   exactly one outcome: none missing, none duplicated, none refused (a non-`202` or a
//!   produce error), none rejected.
//! - **The baseline** (module `echo`): a bare rdkafka producer -> topic A -> an echo consumer
//!   that produces every record to topic B -> a timing consumer, on the same broker, with the
//!   platform's client settings, the same open-loop schedule, keys and payload (a real
//!   `TradeCommand` JSON). **echo** forwards each record as it comes (idempotent `acks=all`
//!   producer, no offset commits); **echo-tx** forwards what each poll returned in one Kafka
//!   transaction with the consumed offsets (`send_offsets_to_transaction`), as a batching
//!   exactly-once processor would. The ratios are ours / echo (the two-hop echo)
//!   and, for reference, ours / echo-tx.
//! - **Sustained**: a phase is sustained when its effects were exactly once, it answered at
//!   least 95% of the offered rate, its p99 is at most `p99_bound`, and the sender never had
//!   to stop. A sender stops early when more than `2 x rate x p99_bound` commands are
//!   unanswered (the rate has failed; this bounds the backlog left to drain). Rates run in
//!   increasing order; a path stops at its first rate that is not sustained, and the sweep
//!   when every path of ours has stopped, except that the headline rate (1,000/s, where the
//!   issue's goal is read) runs every path whenever it is in the sweep. A phase that leaves
//!   commands unanswered after the drain ends the sweep.
//!
//! Each rate runs echo, echo-tx, http, kafka in turn; the baselines on fresh topics of their
//! own, ours on the one platform (accounts and open trades carry over).

mod book;
pub(crate) mod clients;
mod echo;
mod ours;
pub(crate) mod platform;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use suho_domain::Symbol;

pub use book::{BookOptions, BookReport, BookStageResult};

use crate::server::{StackOptions, ThrowawayStack};
use crate::{opt, times, transport_text};

/// Largest latency the histograms hold (longer ones are clamped to it).
pub(crate) const MAX_LATENCY_NS: u64 = 600_000_000_000;

/// Share of the offered rate a phase must answer to be sustained.
pub const TRADING_KEPT_PACE: f64 = 0.95;

/// The goal for command -> fill p99 against the two-hop echo's, at 1,000 commands/s.
pub const TRADING_GOAL_RATIO: f64 = 1.5;

/// The goal for command -> fill p50 against the two-hop echo's, at 1,000 commands/s.
pub const TRADING_P50_GOAL_RATIO: f64 = 2.0;

/// One row of the report: a way commands (or the baseline's records) travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TradingPath {
    /// `POST /api/trade/open|close` through the gateway, then the engine.
    Http,
    /// `TradeCommand` JSON produced straight to `user.commands`, then the engine.
    Kafka,
    /// The bare two-hop echo, forwarding record by record.
    Echo,
    /// The two-hop echo forwarding each poll's records in one Kafka transaction.
    EchoTx,
    /// The two-hop echo writing each poll's records to a journal first, reading the journal
    /// back, then forwarding them without a transaction (`--echo-journal`).
    EchoJournal,
}

impl TradingPath {
    /// The row's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TradingPath::Http => "http",
            TradingPath::Kafka => "kafka",
            TradingPath::Echo => "echo",
            TradingPath::EchoTx => "echo-tx",
            TradingPath::EchoJournal => "echo-jnl",
        }
    }

    /// Whether this is one of the platform's paths (not a baseline).
    #[must_use]
    pub fn is_ours(self) -> bool {
        matches!(self, TradingPath::Http | TradingPath::Kafka)
    }
}

/// What [`bench_trading`] runs.
#[derive(Debug, Clone)]
pub struct TradingBenchOptions {
    /// Commands per second to sweep, in increasing order (over all users).
    pub rates: Vec<u32>,
    /// How long each path sends at each rate.
    pub duration: Duration,
    /// Registered users the commands are spread over (round robin).
    pub users: usize,
    /// Our paths to measure ([`TradingPath::Http`], [`TradingPath::Kafka`]); the baselines
    /// always run.
    pub paths: Vec<TradingPath>,
    /// Highest p99 (open -> `TRADE_EXECUTED`) a sustained phase may have.
    pub p99_bound: Duration,
    /// A rate run with every path of ours even after they have stopped, when it is in
    /// `rates`: the goal is read at 1,000 commands/s.
    pub headline_rate: Option<u32>,
    /// After sending, how long to wait at most for the outcomes.
    pub drain_timeout: Duration,
    /// Symbols the opens rotate through.
    pub symbols: Vec<Symbol>,
    /// Lots per open.
    pub volume: Decimal,
    /// Where the throwaway stack finds Kafka's jars, and Kafka's version and heap.
    pub stack: StackOptions,
    /// Run on the servers, prefixes and database this configuration names (its topics are
    /// created where missing) instead of on a throwaway stack: for tests, on the test stack.
    /// The bench's own settings (an ephemeral HTTP port, a JWT key, no per-user rate limit)
    /// are applied over it. The database gets the bench's users.
    pub platform: Option<suho_config::Config>,
    /// The throwaway stack secured as `suho stack up` secures its own (the default), or
    /// plain, for the figures security's cost is read against ([`TradingSecurityCost`]).
    pub transport: suho_config::Transport,
    /// After the sweep, the resting-book phase ([`BookOptions`]); `None` skips it.
    pub book: Option<BookOptions>,
    /// Also the journaled echo ([`TradingPath::EchoJournal`]) at every rate.
    pub echo_journal: bool,
    /// How the platform's engine publishes outcomes (`trading.delivery`).
    pub delivery: suho_config::Delivery,
}

impl Default for TradingBenchOptions {
    /// 50 to 4,000 commands/s, 10 s per path and rate, 200 users, both paths, p99 bound
    /// 500 ms; the stack settings of suho's default configuration.
    fn default() -> Self {
        let config = suho_config::Config::default();
        Self {
            rates: vec![50, 100, 250, 500, 1_000, 2_000, 4_000],
            duration: Duration::from_secs(10),
            users: 200,
            paths: vec![TradingPath::Http, TradingPath::Kafka],
            p99_bound: Duration::from_millis(500),
            headline_rate: Some(1_000),
            drain_timeout: Duration::from_secs(60),
            symbols: ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD"]
                .iter()
                .filter_map(|s| Symbol::parse(s).ok())
                .collect(),
            volume: Decimal::new(1, 2),
            stack: StackOptions::from_config(&config),
            platform: None,
            transport: suho_config::Transport::Secured,
            book: Some(BookOptions::default()),
            echo_journal: false,
            delivery: suho_config::Delivery::default(),
        }
    }
}

/// One path at one rate.
#[derive(Debug, Clone)]
pub struct TradingPhaseResult {
    /// Which path.
    pub path: TradingPath,
    /// Commands (records) per second scheduled.
    pub rate: u32,
    /// Commands the schedule held (`rate x duration`).
    pub scheduled: u64,
    /// Commands sent (fewer than scheduled when the sender stopped early).
    pub sent: u64,
    /// Sent and accepted (`202`, or acknowledged by Kafka).
    pub accepted: u64,
    /// Sent and refused (another status, a transport or produce error).
    pub refused: u64,
    /// Accepted commands with at least one outcome.
    pub answered: u64,
    /// Accepted commands without an outcome after the drain.
    pub missing: u64,
    /// Outcomes beyond the first, over all commands.
    pub duplicated: u64,
    /// Commands answered `TRADE_REJECTED`.
    pub rejected: u64,
    /// Commands answered with another event than expected (an open not by
    /// `TRADE_EXECUTED`, a close not by `TRADE_CLOSED`), rejections aside.
    pub unexpected: u64,
    /// When the sender stopped early (too many unanswered), after how long.
    pub stopped_after: Option<Duration>,
    /// Answered commands per second, from the first due time to the last answer.
    pub answered_per_sec: f64,
    /// Open -> `TRADE_EXECUTED` visible (ours); due -> visible at the timing consumer (echo).
    pub fill_ns: Histogram<u64>,
    /// Close -> `TRADE_CLOSED` visible (ours only).
    pub close_ns: Histogram<u64>,
    /// Due -> accepted (`202`, or the producer's acknowledgement).
    pub accept_ns: Histogram<u64>,
    /// The first refusal, for the report.
    pub first_refusal: Option<String>,
    /// The first rejected command's reason, if one was rejected.
    pub first_rejection: Option<String>,
}

impl TradingPhaseResult {
    pub(crate) fn new(path: TradingPath, rate: u32, scheduled: u64) -> anyhow::Result<Self> {
        Ok(Self {
            path,
            rate,
            scheduled,
            sent: 0,
            accepted: 0,
            refused: 0,
            answered: 0,
            missing: 0,
            duplicated: 0,
            rejected: 0,
            unexpected: 0,
            stopped_after: None,
            answered_per_sec: 0.0,
            fill_ns: new_histogram()?,
            close_ns: new_histogram()?,
            accept_ns: new_histogram()?,
            first_refusal: None,
            first_rejection: None,
        })
    }

    /// A fill-latency quantile (0..=1), milliseconds; `None` when nothing was filled.
    #[must_use]
    pub fn fill_ms(&self, quantile: f64) -> Option<f64> {
        quantile_ms(&self.fill_ns, quantile)
    }

    /// Every sent command accepted and answered by exactly one outcome, none rejected or of
    /// an unexpected type, and the whole schedule sent.
    #[must_use]
    pub fn exactly_once(&self) -> bool {
        self.stopped_after.is_none()
            && self.sent == self.scheduled
            && self.refused == 0
            && self.accepted == self.sent
            && self.answered == self.accepted
            && self.missing == 0
            && self.duplicated == 0
            && self.rejected == 0
            && self.unexpected == 0
    }

    /// [`TradingPhaseResult::exactly_once`], at least [`TRADING_KEPT_PACE`] of the rate
    /// answered, and p99 at most `p99_bound`.
    #[must_use]
    pub fn sustained(&self, p99_bound: Duration) -> bool {
        self.exactly_once()
            && self.answered_per_sec >= TRADING_KEPT_PACE * f64::from(self.rate)
            && self
                .fill_ms(0.99)
                .is_some_and(|p99| p99 <= p99_bound.as_secs_f64() * 1_000.0)
    }
}

/// Every path measured at one rate.
#[derive(Debug, Clone)]
pub struct TradingRateResult {
    /// Commands per second scheduled.
    pub rate: u32,
    /// In the order they ran.
    pub phases: Vec<TradingPhaseResult>,
}

impl TradingRateResult {
    /// The phase of `path`, if it ran.
    #[must_use]
    pub fn phase(&self, path: TradingPath) -> Option<&TradingPhaseResult> {
        self.phases.iter().find(|p| p.path == path)
    }

    /// p99 of `path` / p99 of `baseline`.
    #[must_use]
    pub fn p99_ratio(&self, path: TradingPath, baseline: TradingPath) -> Option<f64> {
        self.ratio(path, baseline, 0.99)
    }

    /// `path`'s fill latency at `quantile` over `baseline`'s.
    #[must_use]
    pub fn ratio(&self, path: TradingPath, baseline: TradingPath, quantile: f64) -> Option<f64> {
        let ours = self.phase(path)?.fill_ms(quantile)?;
        let base = self.phase(baseline)?.fill_ms(quantile)?;
        (base > 0.0).then(|| ours / base)
    }
}

/// What [`bench_trading`] measured.
#[derive(Debug, Clone)]
pub struct TradingBenchReport {
    /// One entry per rate run, in increasing order.
    pub rates: Vec<TradingRateResult>,
    /// Sending time per path and rate.
    pub duration: Duration,
    /// Users the commands were spread over.
    pub users: usize,
    /// Lots per open.
    pub volume: Decimal,
    /// The sustained phases' p99 bound.
    pub p99_bound: Duration,
    /// The servers, e.g. `throwaway Kafka 4.1.1 / NATS / PostgreSQL`.
    pub servers: String,
    /// Secured (TLS, a login per service, permissions) or plain.
    pub transport: suho_config::Transport,
    /// How the engine published outcomes.
    pub delivery: suho_config::Delivery,
    /// Starting the stack and the platform, registering the users, warming up.
    pub setup: Duration,
    /// Rates of the options that were not run: every path of ours had stopped (or a phase
    /// left commands unanswered).
    pub not_run: Vec<u32>,
    /// The resting-book phase, when it ran.
    pub book: Option<BookReport>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl TradingBenchReport {
    /// The highest rate up to which `path` was sustained at every swept rate.
    #[must_use]
    pub fn highest_sustained(&self, path: TradingPath) -> Option<u32> {
        let mut rates: Vec<&TradingRateResult> = self.rates.iter().collect();
        rates.sort_by_key(|r| r.rate);
        rates
            .into_iter()
            .take_while(|r| r.phase(path).is_some_and(|p| p.sustained(self.p99_bound)))
            .map(|r| r.rate)
            .last()
    }

    /// The results at `rate`, if it ran.
    #[must_use]
    pub fn at(&self, rate: u32) -> Option<&TradingRateResult> {
        self.rates.iter().find(|r| r.rate == rate)
    }
}

pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("creating a latency histogram")
}

/// Records `d` (clamped into the histogram's range).
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
}

pub(crate) fn quantile_ms(h: &Histogram<u64>, quantile: f64) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    (!h.is_empty()).then(|| h.value_at_quantile(quantile) as f64 / 1_000_000.0)
}

/// How many unanswered commands make a sender stop: `2 x rate x p99_bound`, at least 100.
pub(crate) fn backlog_limit(rate: u32, p99_bound: Duration) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let limit = (2.0 * f64::from(rate) * p99_bound.as_secs_f64()).ceil() as u64;
    limit.max(100)
}

/// Due time of command `i` at `rate` per second, after the start.
pub(crate) fn due_offset(i: u64, rate: u32) -> Duration {
    #[allow(clippy::cast_possible_truncation)]
    Duration::from_nanos((u128::from(i) * 1_000_000_000 / u128::from(rate.max(1))) as u64)
}

/// Runs the trading benchmark: starts a throwaway stack and the platform's services,
/// registers the users, then sweeps the rates (see the module documentation).
///
/// # Errors
/// Invalid options, a stack or service that does not start, a user that cannot register,
/// or a platform service that fails during the run.
pub async fn bench_trading(opts: TradingBenchOptions) -> anyhow::Result<TradingBenchReport> {
    if opts.rates.is_empty() || opts.rates.contains(&0) {
        bail!("bench trading: rates must be non-empty and positive");
    }
    if opts.duration.is_zero() || opts.users == 0 || opts.symbols.is_empty() {
        bail!("bench trading: duration, users and symbols must be positive");
    }
    if opts.paths.is_empty() || opts.paths.iter().any(|p| !p.is_ours()) {
        bail!("bench trading: paths must name http and/or kafka");
    }
    if opts.volume <= Decimal::ZERO {
        bail!("bench trading: volume must be positive");
    }
    if opts.book.is_some() {
        // The engine's per-tick cost lands in the bench's recorder only if it comes first.
        let _ = crate::recorder::histogram(suho_trading::TICK_SECONDS_METRIC);
    }
    let began = Instant::now();
    let mut rates = opts.rates.clone();
    rates.sort_unstable();
    rates.dedup();

    let run = format!("{}", std::process::id());
    if let Some(given) = &opts.platform {
        let config = platform::secure(platform::bench_settings(given.clone())?).await?;
        return measure(&opts, &rates, &config, &run, began).await;
    }
    tracing::info!("bench trading: starting a throwaway Kafka, NATS and PostgreSQL");
    let stack_opts = opts.stack.clone();
    let transport = opts.transport;
    let stack = tokio::task::spawn_blocking(move || ThrowawayStack::start(&stack_opts, transport))
        .await
        .context("the stack starter panicked")??;
    let prefix = format!("bench{run}.");
    let config = platform::secure(platform::config(&stack, &prefix)?).await?;
    let report = measure(&opts, &rates, &config, &run, began).await;
    drop(stack);
    report
}

async fn measure(
    opts: &TradingBenchOptions,
    rates: &[u32],
    config: &suho_config::Config,
    run: &str,
    began: Instant,
) -> anyhow::Result<TradingBenchReport> {
    let mut config = config.clone();
    config.trading.delivery = opts.delivery;
    let config = &config;
    let report = suho_messaging::topics::apply(&config.kafka, false)
        .await
        .context("creating the platform's topics")?;
    clients::wait_for_topics(&config.kafka, &report.created).await?;
    let mut platform = platform::Platform::start(config).await?;
    let result = sweep(opts, rates, config, run, began, &mut platform).await;
    let stopped = platform.stop().await;
    let report = result?;
    stopped?;
    Ok(report)
}

async fn sweep(
    opts: &TradingBenchOptions,
    rates: &[u32],
    config: &suho_config::Config,
    run: &str,
    began: Instant,
    platform: &mut platform::Platform,
) -> anyhow::Result<TradingBenchReport> {
    platform::wait_for_quotes(&platform.bus, &opts.symbols).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .tcp_nodelay(true)
        .build()
        .context("creating the HTTP client")?;
    tracing::info!(users = opts.users, "bench trading: registering users");
    let users = platform::register_users(&http, platform.http_addr, opts.users, run).await?;
    let outcomes = Arc::new(ours::Outcomes::default());
    let stop_reader = tokio_util::sync::CancellationToken::new();
    let reader = ours::spawn_outcome_reader(config, Arc::clone(&outcomes), stop_reader.clone())?;
    // Stops the reader however this function ends.
    let _reader_guard = stop_reader.clone().drop_guard();
    // The bench's commands come in as the gateway's do.
    let gateway = suho_messaging::kafka::bind(config, suho_security::Identity::Gateway)?;
    let producer = suho_messaging::UserEventProducer::new(&gateway)
        .context("creating the bench's command producer")?;
    let ctx = ours::Context {
        users: Arc::new(users),
        symbols: Arc::new(opts.symbols.clone()),
        volume: opts.volume,
        http,
        http_addr: platform.http_addr,
        producer,
        outcomes,
    };
    tracing::info!("bench trading: warming up (one command per user through Kafka)");
    ours::warm_up(&ctx, Duration::from_secs(60)).await?;
    platform.check()?;
    let setup = began.elapsed();

    let payload = echo::sample_payload(&ctx.users[0].id, opts.symbols[0], opts.volume)?;
    let keys: Vec<String> = ctx.users.iter().map(|u| u.id.to_string()).collect();
    // Paths that have failed a rate; after a phase that left commands unanswered, nothing
    // more runs (they would be answered during the next phase and blur it).
    let mut stopped: Vec<TradingPath> = Vec::new();
    let mut backlog_left = false;
    let mut results = Vec::new();
    let mut not_run = Vec::new();
    for (n, &rate) in rates.iter().enumerate() {
        let paths: Vec<TradingPath> = opts
            .paths
            .iter()
            .copied()
            .filter(|p| !stopped.contains(p) || opts.headline_rate == Some(rate))
            .collect();
        if paths.is_empty() || backlog_left {
            not_run.push(rate);
            continue;
        }
        let mut phases = Vec::new();
        let modes = [(false, false), (true, false)]
            .into_iter()
            .chain(opts.echo_journal.then_some((false, true)));
        for (transactional, journal) in modes {
            tracing::info!(rate, transactional, journal, "bench trading: two-hop echo");
            let phase = echo::EchoPhase {
                kafka: &config.kafka,
                telemetry: &config.telemetry,
                prefix: format!(
                    "{}echo{n}{}{}.",
                    config.kafka.topic_prefix,
                    u8::from(transactional),
                    u8::from(journal)
                ),
                transactional,
                journal,
                rate,
                duration: opts.duration,
                keys: &keys,
                payload: payload.clone(),
                backlog_limit: backlog_limit(rate, opts.p99_bound),
                drain_timeout: opts.drain_timeout,
            };
            phases.push(echo::run(&phase).await?);
        }
        for path in paths {
            if backlog_left {
                break;
            }
            tracing::info!(rate, path = path.name(), "bench trading: our path");
            let phase = ours::run(
                &ctx,
                &ours::Phase {
                    path,
                    rate,
                    duration: opts.duration,
                    backlog_limit: backlog_limit(rate, opts.p99_bound),
                    drain_timeout: opts.drain_timeout,
                },
            )
            .await?;
            platform.check()?;
            if !phase.sustained(opts.p99_bound) && !stopped.contains(&path) {
                stopped.push(path);
            }
            backlog_left = phase.missing > 0;
            phases.push(phase);
        }
        results.push(TradingRateResult { rate, phases });
    }
    let book = match &opts.book {
        Some(book_opts) if !backlog_left => {
            platform.stop_feed();
            let symbols = suho_market::configured_symbols(&config.market)?;
            let book = book::Book {
                config,
                bus: &platform.bus,
                producer: &ctx.producer,
                outcomes: &ctx.outcomes,
                symbols,
                run,
            }
            .run(book_opts)
            .await?;
            platform.check()?;
            Some(book)
        }
        _ => None,
    };
    stop_reader.cancel();
    reader
        .await
        .context("the outcome reader panicked")?
        .context("the outcome reader")?;
    Ok(TradingBenchReport {
        rates: results,
        duration: opts.duration,
        users: opts.users,
        volume: opts.volume,
        p99_bound: opts.p99_bound,
        servers: if opts.platform.is_some() {
            "given Kafka / NATS / PostgreSQL".into()
        } else {
            format!(
                "throwaway Kafka {} / NATS / PostgreSQL",
                opts.stack.kafka_version
            )
        },
        transport: config.security.transport,
        delivery: config.trading.delivery,
        setup,
        not_run,
        book,
        elapsed: began.elapsed(),
    })
}

impl fmt::Display for TradingBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bound_ms = self.p99_bound.as_secs_f64() * 1_000.0;
        writeln!(
            f,
            "trading bench: open loop, {:.1} s per path and rate, {} users, {}-lot BUY opens alternating with closes, {} {}, the engine's outcomes {}; setup {:.1} s, {:.1} s in all",
            self.duration.as_secs_f64(),
            self.users,
            self.volume,
            self.servers,
            transport_text(self.transport),
            match self.delivery {
                suho_config::Delivery::Transactions => "in transactions",
                suho_config::Delivery::Journal => "journaled",
            },
            self.setup.as_secs_f64(),
            self.elapsed.as_secs_f64(),
        )?;
        writeln!(
            f,
            "latency: ours = open -> TRADE_EXECUTED visible to a read_committed reader; echo = due -> visible at the second consumer"
        )?;
        writeln!(
            f,
            "{:>7}  {:<8} {:>7} {:>7} {:>5} {:>4} {:>4} {:>5} {:>8} {:>8} {:>8} {:>9}  sustained",
            "rate/s",
            "path",
            "sent",
            "answer",
            "miss",
            "dup",
            "rej",
            "refus",
            "cmd/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms"
        )?;
        for r in &self.rates {
            for (i, p) in r.phases.iter().enumerate() {
                writeln!(
                    f,
                    "{:>7}  {:<8} {:>7} {:>7} {:>5} {:>4} {:>4} {:>5} {:>8.1} {:>8} {:>8} {:>9}  {}",
                    if i == 0 {
                        r.rate.to_string()
                    } else {
                        String::new()
                    },
                    p.path.name(),
                    p.sent,
                    p.answered,
                    p.missing,
                    p.duplicated,
                    p.rejected + p.unexpected,
                    p.refused,
                    p.answered_per_sec,
                    opt(p.fill_ms(0.5), 1),
                    opt(p.fill_ms(0.99), 1),
                    opt(p.fill_ms(0.999), 1),
                    if p.sustained(self.p99_bound) {
                        "yes".to_string()
                    } else {
                        format!("no ({})", why_not(p, self.p99_bound))
                    },
                )?;
            }
            for p in r.phases.iter().filter(|p| p.path.is_ours()) {
                writeln!(
                    f,
                    "{:>7}  {:<8} closes p50/p99 {}/{} ms; {} p50/p99 {}/{} ms",
                    "",
                    p.path.name(),
                    opt(quantile_ms(&p.close_ns, 0.5), 1),
                    opt(quantile_ms(&p.close_ns, 0.99), 1),
                    if p.path == TradingPath::Http {
                        "202"
                    } else {
                        "Kafka ack"
                    },
                    opt(quantile_ms(&p.accept_ns, 0.5), 1),
                    opt(quantile_ms(&p.accept_ns, 0.99), 1),
                )?;
            }
            for p in &r.phases {
                if let Some(reason) = &p.first_rejection {
                    writeln!(
                        f,
                        "{:>7}  {:<8} first rejection: {reason}",
                        "",
                        p.path.name()
                    )?;
                }
                if let Some(refusal) = &p.first_refusal {
                    writeln!(
                        f,
                        "{:>7}  {:<8} first failure: {refusal}",
                        "",
                        p.path.name()
                    )?;
                }
                if let Some(after) = p.stopped_after {
                    writeln!(
                        f,
                        "{:>7}  {:<8} sending stopped after {:.1} s: more than {} commands unanswered",
                        "",
                        p.path.name(),
                        after.as_secs_f64(),
                        backlog_limit(p.rate, self.p99_bound),
                    )?;
                }
            }
            let ratios: Vec<String> = [TradingPath::Http, TradingPath::Kafka]
                .into_iter()
                .filter(|p| r.phase(*p).is_some())
                .map(|p| {
                    format!(
                        "{} {}x (echo-tx {}x)",
                        p.name(),
                        opt(r.p99_ratio(p, TradingPath::Echo), 2),
                        opt(r.p99_ratio(p, TradingPath::EchoTx), 2),
                    )
                })
                .collect();
            if !ratios.is_empty() {
                writeln!(
                    f,
                    "{:>7}  {:<8} p99 ours/echo: {}",
                    "",
                    "ratio",
                    ratios.join(", ")
                )?;
            }
        }
        if !self.not_run.is_empty() {
            let rates: Vec<String> = self.not_run.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "not run (every path of ours had stopped, or a phase left commands unanswered): {}/s",
                rates.join(", ")
            )?;
        }
        let top = self.rates.iter().map(|r| r.rate).max();
        let show = |path: TradingPath| match self.highest_sustained(path) {
            None => "none".to_string(),
            Some(r) if Some(r) == top => format!(">= {r}/s (the top of the sweep)"),
            Some(r) => format!("{r}/s"),
        };
        let measured = |path: TradingPath| self.rates.iter().any(|r| r.phase(path).is_some());
        let readings: Vec<String> = [
            TradingPath::Http,
            TradingPath::Kafka,
            TradingPath::Echo,
            TradingPath::EchoTx,
            TradingPath::EchoJournal,
        ]
        .into_iter()
        .filter(|p| measured(*p))
        .map(|p| format!("{} {}", p.name(), show(p)))
        .collect();
        writeln!(
            f,
            "highest sustained (every rate up to it: exactly once, >= {:.0}% of the rate answered, p99 <= {bound_ms:.0} ms): {}",
            TRADING_KEPT_PACE * 100.0,
            readings.join(", ")
        )?;
        if let Some(r) = self.at(1_000) {
            let goals = [
                ("p50", 0.5, TRADING_P50_GOAL_RATIO),
                ("p99", 0.99, TRADING_GOAL_RATIO),
            ];
            for p in [TradingPath::Http, TradingPath::Kafka] {
                let Some(phase) = r.phase(p) else { continue };
                for (name, q, goal) in goals {
                    let ratio = r.ratio(p, TradingPath::Echo, q);
                    writeln!(
                        f,
                        "at 1000/s, {}: command -> TRADE_EXECUTED {name} {} ms, two-hop echo {name} {} ms, ratio {}x (goal <= {goal}x: {})",
                        p.name(),
                        opt(phase.fill_ms(q), 1),
                        opt(r.phase(TradingPath::Echo).and_then(|e| e.fill_ms(q)), 1),
                        opt(ratio, 2),
                        match ratio {
                            Some(x) if x <= goal => "met",
                            Some(_) => "not met",
                            None => "-",
                        },
                    )?;
                }
            }
        }
        if let Some(book) = &self.book {
            book.write(f)?;
        }
        Ok(())
    }
}

/// The goal for what security costs the trading path: the secured p99 at most this
/// factor of the plain one.
pub const TRADING_SECURITY_GOAL: f64 = 1.2;

/// What TLS, the logins and the permissions cost the trading paths: a plain run's and a
/// secured run's figures side by side, rate by rate, with secured / plain ratios.
pub struct TradingSecurityCost<'a> {
    /// The run on the plain stack.
    pub plain: &'a TradingBenchReport,
    /// The run on the secured stack.
    pub secured: &'a TradingBenchReport,
}

impl fmt::Display for TradingSecurityCost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "security cost (secured / plain, same rates, same run): p99 and cmd/s per path"
        )?;
        writeln!(
            f,
            "{:>7}  {:<8} {:>12} {:>14} {:>8} {:>8}",
            "rate/s", "path", "plain p99 ms", "secured p99 ms", "p99", "cmd/s"
        )?;
        for on in &self.secured.rates {
            let Some(off) = self.plain.at(on.rate) else {
                continue;
            };
            let mut first = true;
            for p in &on.phases {
                let Some(q) = off.phase(p.path) else { continue };
                writeln!(
                    f,
                    "{:>7}  {:<8} {:>12} {:>14} {:>8} {:>8}",
                    if first {
                        on.rate.to_string()
                    } else {
                        String::new()
                    },
                    p.path.name(),
                    opt(q.fill_ms(0.99), 1),
                    opt(p.fill_ms(0.99), 1),
                    times(p.fill_ms(0.99), q.fill_ms(0.99)),
                    times(Some(p.answered_per_sec), Some(q.answered_per_sec)),
                )?;
                first = false;
            }
        }
        let show = |v: Option<u32>| v.map_or_else(|| "none".to_string(), |r| format!("{r}/s"));
        for path in [TradingPath::Http, TradingPath::Kafka] {
            if self.secured.rates.iter().all(|r| r.phase(path).is_none()) {
                continue;
            }
            writeln!(
                f,
                "highest sustained, {}: {} plain, {} secured",
                path.name(),
                show(self.plain.highest_sustained(path)),
                show(self.secured.highest_sustained(path)),
            )?;
            // The goal is read at the rate where both ran it, else at the highest
            // rate both sustained.
            let both = |rate: u32| {
                let p = self.plain.at(rate)?.phase(path)?;
                let s = self.secured.at(rate)?.phase(path)?;
                Some((rate, p, s))
            };
            let read = both(1_000)
                .filter(|(_, p, s)| {
                    p.sustained(self.plain.p99_bound) && s.sustained(self.secured.p99_bound)
                })
                .or_else(|| {
                    let top = self
                        .plain
                        .highest_sustained(path)?
                        .min(self.secured.highest_sustained(path)?);
                    both(top)
                });
            if let Some((rate, p, s)) = read {
                let x = crate::ratio_of(s.fill_ms(0.99), p.fill_ms(0.99));
                writeln!(
                    f,
                    "at {rate}/s, {}: p99 {} ms secured, {} ms plain: {}x (goal <= {TRADING_SECURITY_GOAL}x: {})",
                    path.name(),
                    opt(s.fill_ms(0.99), 1),
                    opt(p.fill_ms(0.99), 1),
                    opt(x, 2),
                    match x {
                        Some(v) if v <= TRADING_SECURITY_GOAL => "met",
                        Some(_) => "not met",
                        None => "-",
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// Why a phase is not sustained, briefly.
fn why_not(p: &TradingPhaseResult, p99_bound: Duration) -> String {
    let mut reasons = Vec::new();
    if let Some(after) = p.stopped_after {
        reasons.push(format!("stopped at {:.1} s", after.as_secs_f64()));
    }
    if p.missing + p.duplicated + p.refused + p.rejected + p.unexpected > 0 {
        reasons.push("not exactly once".to_string());
    }
    if p.answered_per_sec < TRADING_KEPT_PACE * f64::from(p.rate) {
        reasons.push("behind".to_string());
    }
    if !p
        .fill_ms(0.99)
        .is_some_and(|p99| p99 <= p99_bound.as_secs_f64() * 1_000.0)
    {
        reasons.push("p99".to_string());
    }
    if reasons.is_empty() {
        reasons.push("incomplete".to_string());
    }
    reasons.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(path: TradingPath, rate: u32, p99_ms: u64) -> TradingPhaseResult {
        let mut p = TradingPhaseResult::new(path, rate, 100).expect("histograms");
        p.sent = 100;
        p.accepted = 100;
        p.answered = 100;
        p.answered_per_sec = f64::from(rate);
        for _ in 0..100 {
            record(&mut p.fill_ns, Duration::from_millis(p99_ms));
        }
        p
    }

    fn report(rates: Vec<TradingRateResult>) -> TradingBenchReport {
        TradingBenchReport {
            rates,
            duration: Duration::from_secs(1),
            users: 2,
            volume: Decimal::new(1, 2),
            p99_bound: Duration::from_millis(500),
            servers: "throwaway Kafka 4.1.1 / NATS / PostgreSQL".into(),
            transport: suho_config::Transport::Secured,
            delivery: suho_config::Delivery::Transactions,
            setup: Duration::ZERO,
            not_run: vec![],
            book: None,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_phase_is_sustained_only_exactly_once_in_pace_and_within_the_bound() {
        let bound = Duration::from_millis(500);
        assert!(phase(TradingPath::Http, 100, 20).sustained(bound));
        assert!(!phase(TradingPath::Http, 100, 600).sustained(bound));
        let mut missing = phase(TradingPath::Http, 100, 20);
        missing.answered = 99;
        missing.missing = 1;
        assert!(!missing.exactly_once());
        let mut duplicated = phase(TradingPath::Http, 100, 20);
        duplicated.duplicated = 1;
        assert!(!duplicated.sustained(bound));
        let mut behind = phase(TradingPath::Http, 100, 20);
        behind.answered_per_sec = 90.0;
        assert!(behind.exactly_once() && !behind.sustained(bound));
        let mut stopped = phase(TradingPath::Http, 100, 20);
        stopped.stopped_after = Some(Duration::from_secs(1));
        assert!(!stopped.sustained(bound));
        let mut rejected = phase(TradingPath::Http, 100, 20);
        rejected.rejected = 1;
        assert!(!rejected.exactly_once());
    }

    #[test]
    fn highest_sustained_stops_at_the_first_failing_rate() {
        let rate = |rate, http_ms, echo_ms| TradingRateResult {
            rate,
            phases: vec![
                phase(TradingPath::Echo, rate, echo_ms),
                phase(TradingPath::Http, rate, http_ms),
            ],
        };
        // Out of order on purpose: the sweep is read by rate.
        let r = report(vec![rate(300, 20, 2), rate(100, 20, 2), rate(200, 900, 2)]);
        assert_eq!(r.highest_sustained(TradingPath::Http), Some(100));
        assert_eq!(r.highest_sustained(TradingPath::Echo), Some(300));
        assert_eq!(r.highest_sustained(TradingPath::Kafka), None);
        let ratio = r.rates[1]
            .p99_ratio(TradingPath::Http, TradingPath::Echo)
            .expect("both ran");
        assert!((ratio - 10.0).abs() < 0.1, "{ratio}");
        let text = r.to_string();
        assert!(text.contains("http 100/s"), "{text}");
        assert!(
            text.contains("echo >= 300/s (the top of the sweep)"),
            "{text}"
        );
        assert!(text.contains("no (p99)"), "{text}");
    }

    #[test]
    fn the_security_cost_is_read_at_1000_per_second_against_the_goal() {
        let rate = |rate, http_ms| TradingRateResult {
            rate,
            phases: vec![
                phase(TradingPath::Echo, rate, 10),
                phase(TradingPath::Http, rate, http_ms),
            ],
        };
        let plain = report(vec![rate(500, 20), rate(1_000, 20)]);
        let secured = report(vec![rate(500, 22), rate(1_000, 30)]);
        let text = TradingSecurityCost {
            plain: &plain,
            secured: &secured,
        }
        .to_string();
        assert!(text.contains("1.10x"), "{text}");
        assert!(
            text.contains("at 1000/s, http: p99 30.0 ms secured, 20.0 ms plain: 1.50x (goal <= 1.2x: not met)"),
            "{text}"
        );
        assert!(
            text.contains("highest sustained, http: 1000/s plain, 1000/s secured"),
            "{text}"
        );
        // Without 1,000/s in both, at the highest rate both sustained.
        let text = TradingSecurityCost {
            plain: &report(vec![rate(500, 20)]),
            secured: &report(vec![rate(500, 22)]),
        }
        .to_string();
        assert!(
            text.contains(
                "at 500/s, http: p99 22.0 ms secured, 20.0 ms plain: 1.10x (goal <= 1.2x: met)"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_sender_stops_at_twice_the_bound_worth_of_commands() {
        assert_eq!(backlog_limit(1_000, Duration::from_millis(500)), 1_000);
        assert_eq!(backlog_limit(10, Duration::from_millis(500)), 100);
        assert_eq!(due_offset(3, 1_000), Duration::from_millis(3));
        assert_eq!(due_offset(1, 3), Duration::from_nanos(333_333_333));
    }
}
