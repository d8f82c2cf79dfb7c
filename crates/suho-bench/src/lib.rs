//! Benchmarks of suho's hot paths against the bare infrastructure under them.
//!
//! [`bench_market`] sweeps tick rates, open loop, through feed -> NATS -> the real in-process
//! market subscribers (the analytics service's candles and indicators, the price service's
//! cache, fed by one `suho_market::TickHub` as in the service process; each takes the time
//! of a tick once it has applied it, through a `suho_market::TickObserver`), and, in the
//! same run, through a raw async-nats publisher -> subscriber with the same payloads and the
//! same schedule. The report gives delivered messages/s, latency percentiles, slow-consumer
//! events and lost messages for both, and their ratios.
//!
//! Measurement rules:
//! - Open loop: message `i` of a phase is due at `start + i / rate`; the publisher never waits
//!   for the subscribers, and latency is `receive time - due time` (the `t_ns` header, a
//!   monotonic clock shared by publisher and subscribers in this process), so a publisher that
//!   falls behind shows up as latency instead of hiding it (no coordinated omission).
//! - Each path of each rate runs alone (raw first, then ours), on fresh connections and a fresh
//!   subject prefix, so counters and histograms belong to one phase.
//! - This crate knows nothing of the CLI: `suho bench market` calls [`bench_market`].
//!
//! [`bench_bridge`] (module `bridge`) measures the data bridge's sustained rows/s into
//! PostgreSQL beside a raw `COPY` of the same rows into the same table; `suho bench bridge`.
//!
//! [`bench_trading`] (module `trading`) sends trade commands from many users, open loop,
//! through the gateway or straight into Kafka, to the real trading engine, and times each to
//! its outcome on `user.trades`, beside a bare rdkafka two-hop echo on the same broker;
//! `suho bench trading`.
//!
//! [`bench_gateway`] (module `gateway`) fans ticks out through the real gateway's WebSocket
//! `/ws` to 100 and 1,000 clients (and with a share of them not reading), beside raw NATS
//! fan-out to as many plain subscribers; `suho bench gateway`.

mod bridge;
mod gateway;
mod phase;
mod recorder;
mod server;
mod trading;

pub use bridge::{
    bench_bridge, BridgeBenchOptions, BridgeBenchReport, BridgePhaseResult, BridgeRunResult,
    BRIDGE_GOAL_RATIO,
};
pub use gateway::{
    bench_gateway, GatewayBenchOptions, GatewayBenchReport, GatewayMemory, GatewayPath,
    GatewayPhaseResult, GatewayRateResult, GatewaySecurityCost, GATEWAY_KEPT_PACE,
    GATEWAY_P99_GOAL_MS, GATEWAY_SECURITY_GOAL, GATEWAY_STALL_GOAL, GATEWAY_THROUGHPUT_GOAL,
};
pub use server::StackOptions;

/// Which runs a benchmark's `--security` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// On plain servers only.
    Off,
    /// On secured servers only.
    On,
    /// A plain run, then a secured one, and their ratios ([`MarketSecurityCost`],
    /// [`TradingSecurityCost`], [`GatewaySecurityCost`]).
    Both,
}

impl Security {
    /// `off`, `on` or `both` (a command line's `--security`).
    #[must_use]
    pub fn parse(text: &str) -> Option<Security> {
        match text {
            "off" => Some(Security::Off),
            "on" => Some(Security::On),
            "both" => Some(Security::Both),
            _ => None,
        }
    }

    /// The runs, in order: plain first (each run starts, and removes, servers of its own).
    #[must_use]
    pub fn transports(self) -> Vec<suho_config::Transport> {
        use suho_config::Transport;
        match self {
            Security::Off => vec![Transport::Plain],
            Security::On => vec![Transport::Secured],
            Security::Both => vec![Transport::Plain, Transport::Secured],
        }
    }
}
pub use trading::{
    bench_trading, BookOptions, BookReport, BookStageResult, TradingBenchOptions,
    TradingBenchReport, TradingPath, TradingPhaseResult, TradingRateResult, TradingSecurityCost,
    TRADING_GOAL_RATIO, TRADING_KEPT_PACE, TRADING_P50_GOAL_RATIO, TRADING_SECURITY_GOAL,
};

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use suho_domain::Symbol;

/// What [`bench_market`] runs.
#[derive(Debug, Clone)]
pub struct MarketBenchOptions {
    /// Tick rates to sweep, ticks per second over all symbols.
    pub rates: Vec<u32>,
    /// How long each path publishes at each rate.
    pub duration: Duration,
    /// NATS to use; `None` starts a throwaway `nats-server` on a free port for the run.
    pub nats_url: Option<String>,
    /// Prefix of every subject of the run (a unique suffix per phase is added).
    pub subject_prefix: String,
    /// Symbols the ticks rotate through.
    pub symbols: Vec<Symbol>,
    /// After publishing, how long to wait at most for stragglers.
    pub drain_timeout: Duration,
    /// Seed of the synthetic feed.
    pub seed: u64,
    /// Where the pinned `nats-server` of a throwaway server is built and cached.
    pub stack: server::StackOptions,
    /// [`Transport::Secured`](suho_config::Transport::Secured): a throwaway server secured as
    /// `suho stack up` secures its own (TLS, a user per service identity and its permissions),
    /// every connection logging in as the identity that makes it in the platform; needs a
    /// throwaway server, and a one-token `subject_prefix` (the identities' permissions allow
    /// one prefix token). `Plain` (the default): a plain server, or the one `nats_url` names,
    /// no login.
    pub transport: suho_config::Transport,
}

impl Default for MarketBenchOptions {
    /// 1,000 to 500,000 ticks/s (fifteen rates, so the raw baseline's limit on a small machine
    /// is inside the sweep) for 5 s each over the major FX pairs, on a throwaway NATS: about
    /// four minutes in all.
    fn default() -> Self {
        Self {
            rates: vec![
                1_000, 10_000, 30_000, 60_000, 100_000, 150_000, 200_000, 250_000, 300_000,
                325_000, 350_000, 375_000, 400_000, 450_000, 500_000,
            ],
            duration: Duration::from_secs(5),
            nats_url: None,
            subject_prefix: "bench".into(),
            symbols: suho_domain::major_fx(),
            drain_timeout: Duration::from_secs(5),
            seed: 42,
            stack: server::StackOptions::from_config(&suho_config::Config::default()),
            transport: suho_config::Transport::Plain,
        }
    }
}

/// One path's figures at one rate.
#[derive(Debug, Clone)]
pub struct PathResult {
    /// Ticks published.
    pub published: u64,
    /// Ticks that reached the measuring subscriber (parsed and applied, for ours).
    pub delivered: u64,
    /// `published - delivered`, where a tick is delivered once every measuring subscriber
    /// (for ours, both services) has handled it.
    pub lost: u64,
    /// Deliveries without a readable tick or send time (not counted as delivered).
    pub malformed: u64,
    /// `SlowConsumer` events of the subscribing connection: async-nats raises one per message
    /// it drops because a subscription's buffer is full, on any subscription of the connection
    /// (a lower bound, since the client drops events too when its event queue is full); for
    /// ours, plus the ticks a tick-hub listener missed because its queue was full.
    pub slow_consumer_events: u64,
    /// Times the subscribing connection was lost (the server cuts slow consumers off).
    pub disconnects: u64,
    /// Delivered ticks per second, from the first due time to the last delivery.
    pub delivered_per_sec: f64,
    /// Latency from due time to handled, nanoseconds: one value per tick and measuring
    /// subscriber (for ours, two per tick: analytics and price service).
    pub latency_ns: Histogram<u64>,
}

impl PathResult {
    /// The latency at `quantile` (0..=1), microseconds; `None` when nothing was delivered.
    #[must_use]
    pub fn latency_us(&self, quantile: f64) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        (!self.latency_ns.is_empty())
            .then(|| self.latency_ns.value_at_quantile(quantile) as f64 / 1_000.0)
    }

    /// Nothing lost at any subscriber: no loss, no slow-consumer event, no disconnect.
    #[must_use]
    pub fn lossless(&self) -> bool {
        self.lost == 0 && self.slow_consumer_events == 0 && self.disconnects == 0
    }

    /// Lossless, and delivered at [`KEPT_PACE`] of the offered `rate` or better. A path that
    /// falls behind can still lose nothing in a short phase: the server's and the client's
    /// buffers hold the backlog until it drains after the publisher stops. This reading
    /// counts only rates the path kept up with.
    #[must_use]
    pub fn kept_pace(&self, rate: u32) -> bool {
        self.lossless() && self.delivered_per_sec >= KEPT_PACE * f64::from(rate)
    }
}

/// Share of the offered rate a path must deliver to have kept pace with it.
pub const KEPT_PACE: f64 = 0.95;

/// Both paths at one rate.
#[derive(Debug, Clone)]
pub struct RateResult {
    /// Ticks per second scheduled.
    pub rate: u32,
    /// Feed -> NATS -> the in-process market subscribers.
    pub ours: PathResult,
    /// Raw async-nats publisher -> subscriber.
    pub raw: PathResult,
}

impl RateResult {
    /// p99 latency, ours / raw.
    #[must_use]
    pub fn p99_ratio(&self) -> Option<f64> {
        ratio(self.ours.latency_us(0.99)?, self.raw.latency_us(0.99)?)
    }

    /// Delivered messages/s, ours / raw.
    #[must_use]
    pub fn throughput_ratio(&self) -> Option<f64> {
        ratio(self.ours.delivered_per_sec, self.raw.delivered_per_sec)
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// What [`bench_market`] measured.
#[derive(Debug, Clone)]
pub struct MarketBenchReport {
    /// One entry per rate, in the order of the options.
    pub rates: Vec<RateResult>,
    /// Publishing time per path and rate.
    pub duration: Duration,
    /// Symbols the ticks rotated through.
    pub symbols: usize,
    /// Size of a typical tick payload (JSON), bytes.
    pub payload_bytes: usize,
    /// Whether the run started its own NATS server.
    pub throwaway_nats: bool,
    /// Whether that server was secured (TLS, a user per identity) and every connection logged
    /// in ([`MarketBenchOptions::transport`]).
    pub transport: suho_config::Transport,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl MarketBenchReport {
    /// The highest rate at which our path lost nothing.
    #[must_use]
    pub fn highest_lossless_ours(&self) -> Option<u32> {
        self.rates
            .iter()
            .filter(|r| r.ours.lossless())
            .map(|r| r.rate)
            .max()
    }

    /// The highest rate at which the raw baseline lost nothing.
    #[must_use]
    pub fn highest_lossless_raw(&self) -> Option<u32> {
        self.rates
            .iter()
            .filter(|r| r.raw.lossless())
            .map(|r| r.rate)
            .max()
    }
    /// The highest rate up to which every swept rate was lossless for our path: a rate above
    /// one that lost is not counted (on a shared machine a single lossless phase above a lossy
    /// one is luck, not capacity).
    #[must_use]
    pub fn sustained_lossless_ours(&self) -> Option<u32> {
        self.sustained(|r| r.ours.lossless())
    }

    /// [`MarketBenchReport::sustained_lossless_ours`] for the raw baseline.
    #[must_use]
    pub fn sustained_lossless_raw(&self) -> Option<u32> {
        self.sustained(|r| r.raw.lossless())
    }

    /// The highest rate up to which our path kept pace at every swept rate
    /// ([`PathResult::kept_pace`]).
    #[must_use]
    pub fn kept_pace_ours(&self) -> Option<u32> {
        self.sustained(|r| r.ours.kept_pace(r.rate))
    }

    /// [`MarketBenchReport::kept_pace_ours`] for the raw baseline.
    #[must_use]
    pub fn kept_pace_raw(&self) -> Option<u32> {
        self.sustained(|r| r.raw.kept_pace(r.rate))
    }

    fn sustained(&self, lossless: impl Fn(&RateResult) -> bool) -> Option<u32> {
        let mut rates: Vec<&RateResult> = self.rates.iter().collect();
        rates.sort_by_key(|r| r.rate);
        rates
            .into_iter()
            .take_while(|r| lossless(r))
            .map(|r| r.rate)
            .last()
    }
}

/// Runs the market benchmark: for each rate, the raw baseline and then our path.
///
/// # Errors
/// Invalid options (no rates, a zero rate or duration, no symbols), NATS unreachable or a
/// throwaway `nats-server` that does not start, or a market service that fails.
pub async fn bench_market(opts: MarketBenchOptions) -> anyhow::Result<MarketBenchReport> {
    if opts.rates.is_empty() || opts.rates.contains(&0) {
        bail!("bench market: rates must be non-empty and positive");
    }
    if opts.duration.is_zero() {
        bail!("bench market: duration must be positive");
    }
    if opts.symbols.is_empty() {
        bail!("bench market: at least one symbol is needed");
    }
    let secured = opts.transport == suho_config::Transport::Secured;
    if secured && opts.nats_url.is_some() {
        bail!("bench market: a secured run starts its own nats-server (no --nats-url)");
    }
    let began = Instant::now();
    let server = match &opts.nats_url {
        Some(_) => None,
        None => Some(
            tokio::task::spawn_blocking({
                let stack = opts.stack.clone();
                move || {
                    if secured {
                        server::ThrowawayNats::start_secured(&stack)
                    } else {
                        server::ThrowawayNats::start(&stack)
                    }
                }
            })
            .await
            .context("the nats-server starter panicked")??,
        ),
    };
    let secrets = server.as_ref().and_then(server::ThrowawayNats::secrets);
    let url = match (&opts.nats_url, &server) {
        (Some(url), _) => url.clone(),
        (None, Some(s)) => s.url().to_string(),
        (None, None) => unreachable!("a server is started when no URL is given"),
    };
    let run_id = std::process::id();
    let epoch = Instant::now();
    let mut rates = Vec::with_capacity(opts.rates.len());
    for &rate in &opts.rates {
        let phase = |path: &str| phase::Phase {
            url: &url,
            prefix: format!("{}{path}{run_id}r{rate}.", opts.subject_prefix),
            symbols: &opts.symbols,
            rate,
            duration: opts.duration,
            drain_timeout: opts.drain_timeout,
            seed: opts.seed,
            epoch,
            secrets,
        };
        tracing::info!(
            rate,
            transport = opts.transport.name(),
            "bench market: raw baseline"
        );
        let raw = phase::run(&phase("raw"), phase::Path::Raw).await?;
        tracing::info!(rate, "bench market: our path");
        let ours = phase::run(&phase("ours"), phase::Path::Ours).await?;
        rates.push(RateResult { rate, ours, raw });
    }
    drop(server);
    Ok(MarketBenchReport {
        rates,
        duration: opts.duration,
        symbols: opts.symbols.len(),
        payload_bytes: phase::typical_payload_bytes(&opts.symbols, opts.seed),
        throwaway_nats: opts.nats_url.is_none(),
        transport: opts.transport,
        elapsed: began.elapsed(),
    })
}

/// The cost of TLS and a login per connection: a secured run beside a plain one of the same
/// rates, in the same process (`suho bench market --security both`). Per rate, each path's
/// msg/s and p99 secured / plain.
pub struct MarketSecurityCost<'a> {
    /// The plain run.
    pub plain: &'a MarketBenchReport,
    /// The secured run.
    pub secured: &'a MarketBenchReport,
}

impl fmt::Display for MarketSecurityCost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "security cost (secured / plain, same rates, same run): msg/s and p99 per path"
        )?;
        writeln!(
            f,
            "{:>8}  {:>12} {:>12} {:>12} {:>12}",
            "rate/s", "ours msg/s", "ours p99", "raw msg/s", "raw p99"
        )?;
        for on in &self.secured.rates {
            let Some(off) = self.plain.rates.iter().find(|r| r.rate == on.rate) else {
                continue;
            };
            writeln!(
                f,
                "{:>8}  {:>12} {:>12} {:>12} {:>12}",
                on.rate,
                times(
                    Some(on.ours.delivered_per_sec),
                    Some(off.ours.delivered_per_sec)
                ),
                times(on.ours.latency_us(0.99), off.ours.latency_us(0.99)),
                times(
                    Some(on.raw.delivered_per_sec),
                    Some(off.raw.delivered_per_sec)
                ),
                times(on.raw.latency_us(0.99), off.raw.latency_us(0.99)),
            )?;
        }
        let show = |v: Option<u32>| v.map_or_else(|| "none".to_string(), |r| format!("{r}/s"));
        writeln!(
            f,
            "kept pace: ours {} plain, {} secured; raw {} plain, {} secured",
            show(self.plain.kept_pace_ours()),
            show(self.secured.kept_pace_ours()),
            show(self.plain.kept_pace_raw()),
            show(self.secured.kept_pace_raw()),
        )
    }
}

/// How a report names its servers' transport.
fn transport_text(transport: suho_config::Transport) -> &'static str {
    match transport {
        suho_config::Transport::Secured => {
            "secured (TLS, a login per service identity, its permissions)"
        }
        suho_config::Transport::Plain => "plain (no TLS, no login, no permissions)",
    }
}

/// `on / off` of two optional figures, when both are there and `off` is positive.
fn ratio_of(on: Option<f64>, off: Option<f64>) -> Option<f64> {
    on.zip(off).and_then(|(a, b)| ratio(a, b))
}

/// [`ratio_of`] as `1.23x` (or `-x`).
fn times(on: Option<f64>, off: Option<f64>) -> String {
    format!("{}x", opt(ratio_of(on, off), 2))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

impl fmt::Display for MarketBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "market bench: open loop, {:.1} s per path and rate, {} symbols, ~{} B tick JSON, {} NATS {}, {:.1} s in all",
            self.duration.as_secs_f64(),
            self.symbols,
            self.payload_bytes,
            if self.throwaway_nats { "throwaway" } else { "given" },
            transport_text(self.transport),
            self.elapsed.as_secs_f64(),
        )?;
        writeln!(
            f,
            "{:>8}  {:<5} {:>9} {:>9} {:>7} {:>5} {:>5} {:>10} {:>9} {:>9} {:>9}",
            "rate/s",
            "path",
            "published",
            "delivered",
            "lost",
            "slow",
            "disc",
            "msg/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs"
        )?;
        for r in &self.rates {
            for (name, p) in [("ours", &r.ours), ("raw", &r.raw)] {
                writeln!(
                    f,
                    "{:>8}  {:<5} {:>9} {:>9} {:>7} {:>5} {:>5} {:>10.0} {:>9} {:>9} {:>9}",
                    if name == "ours" {
                        r.rate.to_string()
                    } else {
                        String::new()
                    },
                    name,
                    p.published,
                    p.delivered,
                    p.lost,
                    p.slow_consumer_events,
                    p.disconnects,
                    p.delivered_per_sec,
                    opt(p.latency_us(0.5), 0),
                    opt(p.latency_us(0.99), 0),
                    opt(p.latency_us(0.999), 0),
                )?;
            }
            writeln!(
                f,
                "{:>8}  {:<5} {:>39} {:>10} {:>9} {:>9}",
                "",
                "ratio",
                "",
                format!("{}x", opt(r.throughput_ratio(), 2)),
                "",
                format!("{}x", opt(r.p99_ratio(), 2)),
            )?;
        }
        // Lossless at the top of the sweep: the limit lies above it.
        let top = self.rates.iter().map(|r| r.rate).max();
        let show = |v: Option<u32>| match v {
            None => "none".to_string(),
            Some(r) if Some(r) == top => format!(">= {r}/s (the top of the sweep)"),
            Some(r) => format!("{r}/s"),
        };
        let (ours, raw) = (self.highest_lossless_ours(), self.highest_lossless_raw());
        write!(
            f,
            "highest rate with zero loss: ours {}, raw {}",
            show(ours),
            show(raw)
        )?;
        if let (Some(o), Some(r)) = (ours, raw) {
            write!(f, " ({:.0}% of raw)", f64::from(o) / f64::from(r) * 100.0)?;
        }
        writeln!(f)?;
        let readings = [
            (
                "sustained zero loss (every rate up to it lossless)".to_string(),
                self.sustained_lossless_ours(),
                self.sustained_lossless_raw(),
            ),
            (
                format!(
                    "kept pace (every rate up to it lossless and msg/s >= {:.0}% of the rate)",
                    KEPT_PACE * 100.0
                ),
                self.kept_pace_ours(),
                self.kept_pace_raw(),
            ),
        ];
        for (reading, ours, raw) in readings {
            write!(f, "{reading}: ours {}, raw {}", show(ours), show(raw))?;
            if let (Some(o), Some(r)) = (ours, raw) {
                write!(f, " ({:.0}% of raw)", f64::from(o) / f64::from(r) * 100.0)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(lost: u64) -> PathResult {
        PathResult {
            published: 10,
            delivered: 10 - lost,
            lost,
            malformed: 0,
            slow_consumer_events: 0,
            disconnects: 0,
            delivered_per_sec: 1_000.0,
            latency_ns: Histogram::new(3).expect("histogram"),
        }
    }

    #[test]
    fn sustained_zero_loss_stops_at_the_first_lossy_rate() {
        let rate = |rate, ours, raw| RateResult {
            rate,
            ours: path(ours),
            raw: path(raw),
        };
        let report = MarketBenchReport {
            // Out of order on purpose: the sweep is read by rate.
            rates: vec![
                rate(300, 1, 0),
                rate(100, 0, 0),
                rate(200, 0, 1),
                rate(400, 2, 0),
            ],
            duration: Duration::from_secs(1),
            symbols: 1,
            payload_bytes: 1,
            throwaway_nats: true,
            transport: suho_config::Transport::Plain,
            elapsed: Duration::ZERO,
        };
        assert_eq!(report.highest_lossless_raw(), Some(400));
        assert_eq!(report.sustained_lossless_raw(), Some(100));
        assert_eq!(report.highest_lossless_ours(), Some(200));
        assert_eq!(report.sustained_lossless_ours(), Some(200));
        let text = report.to_string();
        assert!(text.contains("sustained zero loss"), "{text}");
    }

    #[test]
    fn keeping_pace_needs_the_rate_delivered_as_well_as_no_loss() {
        let rate = |rate, ours_per_sec, raw_per_sec| RateResult {
            rate,
            ours: PathResult {
                delivered_per_sec: ours_per_sec,
                ..path(0)
            },
            raw: PathResult {
                delivered_per_sec: raw_per_sec,
                ..path(0)
            },
        };
        let report = MarketBenchReport {
            rates: vec![
                rate(100, 100.0, 100.0),
                rate(200, 196.0, 200.0),
                rate(300, 250.0, 299.0),
                rate(400, 399.0, 300.0),
            ],
            duration: Duration::from_secs(1),
            symbols: 1,
            payload_bytes: 1,
            throwaway_nats: true,
            transport: suho_config::Transport::Plain,
            elapsed: Duration::ZERO,
        };
        // Every phase lossless; ours fell behind at 300/s, raw at 400/s.
        assert_eq!(report.sustained_lossless_ours(), Some(400));
        assert_eq!(report.kept_pace_ours(), Some(200));
        assert_eq!(report.kept_pace_raw(), Some(300));
        assert!(report.to_string().contains("kept pace"));
    }
}
