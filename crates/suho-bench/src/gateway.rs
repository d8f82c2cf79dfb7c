//! `suho bench gateway`: market data through the real gateway's WebSocket `/ws` to many
//! clients, beside raw NATS fan-out to the same number of plain subscribers, in the same run.
//!
//! - **Stack.** A throwaway Kafka, NATS and PostgreSQL (the gateway's hub assigns the user
//!   topics and its accounts live in PostgreSQL). In this process: the gateway (`AppState`,
//!   `WsHub::start`, `serve_with`), wired as `suho::Application::run` wires it; nothing else
//!   of the platform (no feed: the only ticks are the bench's).
//! - **Clients.** Users are registered through the HTTP API (`--users`, argon2id is slow), and
//!   connection `i` opens `/ws?token=...` with user `i mod users`'s token, subscribes to the
//!   bench symbols and waits for `subscribed`. Raw: one `async-nats` connection per
//!   subscriber, each subscribed to `market.*.tick` (under a prefix the hub does not follow).
//! - **Ticks.** Open loop: tick `i` of a phase is due at `start + i / rate` and published on
//!   `market.{SYM}.tick` (the symbols in turn; one symbol by default) (the gateway's prefix for ws phases, the raw prefix for raw phases) by
//!   a blocking thread, whatever happened to the others. The payload is a real `Tick` from
//!   `SyntheticFeed` with three extra fields the gateway forwards as is: `t_ns` (due time,
//!   nanoseconds on a monotonic clock shared with the clients in this process), `ph` (the
//!   phase) and `seq`. Latency = receive time - due time, one value per message and client.
//! - **Stalled clients** (`ws-stall` phases): the first `stalled_percent` of the connections stop
//!   polling their socket for the phase; the others' latency is compared with the `ws` phase at
//!   the same rate and client count. Memory: the process's RSS (gateway *and* clients) sampled
//!   every 50 ms across the phase.
//! - **Order.** Each rate runs `raw`, then `ws`, `ws-stall`, `ws-stall`, `ws`, and reports the
//!   two `ws` phases pooled and the two `ws-stall` phases pooled (their histograms merged). On
//!   two shared cores a p99 drifts from one phase to the next; in this order a steady drift
//!   weighs the same on both sides of the stalled/unstalled comparison.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use suho_domain::Symbol;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::server::{StackOptions, ThrowawayStack};
use crate::trading::{clients, platform};

/// Share of the expected deliveries a phase must make to be sustained.
pub const GATEWAY_KEPT_PACE: f64 = 0.95;
/// The goal: the non-stalled clients' p99 within this factor of the run without stall.
pub const GATEWAY_STALL_GOAL: f64 = 1.2;
/// The goal: deliveries/s at least this share of raw NATS fan-out.
pub const GATEWAY_THROUGHPUT_GOAL: f64 = 0.3;
/// The goal: tick -> client p99 at half the maximum sustainable rate, milliseconds.
pub const GATEWAY_P99_GOAL_MS: f64 = 5.0;

/// What [`bench_gateway`] runs.
#[derive(Debug, Clone)]
pub struct GatewayBenchOptions {
    /// Client counts, in increasing order (the connections of a smaller count are reused).
    pub clients: Vec<usize>,
    /// Tick rates to sweep, ticks/s over all `symbols`. For a client count, the sweep stops
    /// after the first rate neither path sustained.
    pub rates: Vec<u32>,
    /// Publishing time per phase.
    pub duration: Duration,
    /// Share of the connections that stop reading in `ws-stall` phases, percent.
    pub stalled_percent: u32,
    /// Users registered (connections share their tokens).
    pub users: usize,
    /// Highest p99 of a sustained phase.
    pub p99_bound: Duration,
    /// The symbols every client follows; the ticks go through them in turn. Market data is
    /// conflated per subject, so one symbol is the case where a lagging writer conflates most.
    pub symbols: Vec<Symbol>,
    /// Where the throwaway stack finds Kafka.
    pub stack: StackOptions,
    /// The throwaway stack secured as `suho stack up` secures its own (the default), or
    /// plain, for the figures security's cost is read against ([`GatewaySecurityCost`]).
    pub transport: suho_config::Transport,
}

impl Default for GatewayBenchOptions {
    fn default() -> Self {
        Self {
            clients: vec![100, 1_000],
            rates: vec![10, 25, 50, 100, 250, 500, 1_000, 2_000],
            duration: Duration::from_secs(5),
            stalled_percent: 10,
            users: 50,
            p99_bound: Duration::from_millis(100),
            symbols: vec![Symbol::parse("EURUSD").expect("EURUSD is a symbol")],
            stack: StackOptions::from_config(&suho_config::Config::default()),
            transport: suho_config::Transport::Secured,
        }
    }
}

/// A phase's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayPath {
    /// Raw NATS fan-out: one async-nats connection per subscriber.
    Raw,
    /// Through the gateway's `/ws`, every client reading.
    Ws,
    /// Through `/ws`, with the stalled share of the clients not reading.
    WsStall,
}

impl GatewayPath {
    fn name(self) -> &'static str {
        match self {
            GatewayPath::Raw => "raw",
            GatewayPath::Ws => "ws",
            GatewayPath::WsStall => "ws-stall",
        }
    }
}

/// One phase's figures.
#[derive(Debug, Clone)]
pub struct GatewayPhaseResult {
    /// Which path.
    pub path: GatewayPath,
    /// Connections (or subscribers) open.
    pub clients: usize,
    /// Of which stalled.
    pub stalled: usize,
    /// Ticks/s offered.
    pub rate: u32,
    /// Ticks published.
    pub published: u64,
    /// Messages of this phase received by the reading clients.
    pub delivered: u64,
    /// Messages of this phase received by the stalled clients (during or after their stall).
    pub stalled_delivered: u64,
    /// Connections that ended during the phase.
    pub disconnects: u64,
    /// Delivered / (last receive - first due time).
    pub delivered_per_sec: f64,
    /// Due -> received, nanoseconds, reading clients only.
    pub latency_ns: Histogram<u64>,
    /// Process RSS at the start, highest during, and at the end of the phase, bytes.
    pub rss: (u64, u64, u64),
    /// `ws_market_conflated_total` increase during the phase (market messages replaced while
    /// waiting for a slow client).
    pub conflated: u64,
}

impl GatewayPhaseResult {
    /// Two phases of the same path, rate and clients as one: counts added, histograms merged,
    /// the RSS from the first's start to the second's end.
    ///
    /// # Errors
    /// When the histograms cannot be merged.
    pub fn pooled(first: Self, second: &Self) -> anyhow::Result<Self> {
        let mut latency_ns = first.latency_ns;
        latency_ns
            .add(&second.latency_ns)
            .context("merging histograms")?;
        Ok(Self {
            published: first.published + second.published,
            delivered: first.delivered + second.delivered,
            stalled_delivered: first.stalled_delivered + second.stalled_delivered,
            disconnects: first.disconnects + second.disconnects,
            delivered_per_sec: (first.delivered_per_sec + second.delivered_per_sec) / 2.0,
            latency_ns,
            rss: (first.rss.0, first.rss.1.max(second.rss.1), second.rss.2),
            conflated: first.conflated + second.conflated,
            ..first
        })
    }

    /// Latency at `q`, milliseconds.
    #[must_use]
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        (!self.latency_ns.is_empty()).then(|| self.latency_ns.value_at_quantile(q) as f64 / 1e6)
    }

    /// Delivered / (published x reading clients).
    #[must_use]
    pub fn delivered_share(&self) -> f64 {
        let expected = self.published * (self.clients - self.stalled) as u64;
        #[allow(clippy::cast_precision_loss)]
        if expected == 0 {
            0.0
        } else {
            self.delivered as f64 / expected as f64
        }
    }

    /// At least [`GATEWAY_KEPT_PACE`] of the expected deliveries, no disconnect, p99 within
    /// `bound`.
    #[must_use]
    pub fn sustained(&self, bound: Duration) -> bool {
        self.delivered_share() >= GATEWAY_KEPT_PACE
            && self.disconnects == 0
            && self
                .latency_ms(0.99)
                .is_some_and(|p| p <= bound.as_secs_f64() * 1e3)
    }
}

/// One client count and rate.
#[derive(Debug, Clone)]
pub struct GatewayRateResult {
    /// Connections.
    pub clients: usize,
    /// Ticks/s.
    pub rate: u32,
    /// Raw NATS fan-out.
    pub raw: GatewayPhaseResult,
    /// Through `/ws`: two phases pooled.
    pub ws: GatewayPhaseResult,
    /// Through `/ws` with stalled clients: two phases pooled.
    pub stall: GatewayPhaseResult,
    /// Run after the sweep at half the highest sustained rate.
    pub extra: bool,
}

impl GatewayRateResult {
    /// The reading clients' p99 with stalled clients / without.
    #[must_use]
    pub fn stall_p99_ratio(&self) -> Option<f64> {
        Some(self.stall.latency_ms(0.99)? / self.ws.latency_ms(0.99)?)
    }
}

/// RSS after connecting.
#[derive(Debug, Clone)]
pub struct GatewayMemory {
    /// Client count.
    pub clients: usize,
    /// RSS before connecting this count's new ws clients, bytes.
    pub before_ws: u64,
    /// After.
    pub after_ws: u64,
    /// After connecting the raw subscribers too.
    pub after_raw: u64,
    /// Connections added to reach this count.
    pub added: usize,
}

/// What [`bench_gateway`] measured.
#[derive(Debug, Clone)]
pub struct GatewayBenchReport {
    /// Per client count and rate.
    pub rates: Vec<GatewayRateResult>,
    /// Memory per client count.
    pub memory: Vec<GatewayMemory>,
    /// Options used.
    pub duration: Duration,
    /// Percent stalled.
    pub stalled_percent: u32,
    /// Users.
    pub users: usize,
    /// p99 bound of a sustained phase.
    pub p99_bound: Duration,
    /// Tick JSON size.
    pub payload_bytes: usize,
    /// The symbols the ticks went through.
    pub symbols: Vec<Symbol>,
    /// The open-file limit the run had.
    pub nofile: u64,
    /// Secured (TLS, a login per service, permissions) or plain.
    pub transport: suho_config::Transport,
    /// Setup time (stack, gateway, users).
    pub setup: Duration,
    /// Whole run.
    pub elapsed: Duration,
}

impl GatewayBenchReport {
    /// The highest rate up to which every swept rate of `path` with `clients` was sustained.
    #[must_use]
    pub fn highest_sustained(&self, clients: usize, raw: bool) -> Option<u32> {
        let mut rows: Vec<&GatewayRateResult> =
            self.rates.iter().filter(|r| r.clients == clients).collect();
        rows.sort_by_key(|r| r.rate);
        rows.into_iter()
            .take_while(|r| if raw { &r.raw } else { &r.ws }.sustained(self.p99_bound))
            .map(|r| r.rate)
            .last()
    }

    /// The highest deliveries/s the path reached with `clients` at any swept rate,
    /// sustained or not: its fan-out capacity (ws conflates what it cannot write).
    #[must_use]
    pub fn peak(&self, clients: usize, raw: bool) -> f64 {
        self.rates
            .iter()
            .filter(|r| r.clients == clients)
            .map(|r| if raw { &r.raw } else { &r.ws }.delivered_per_sec)
            .fold(0.0_f64, f64::max)
    }

    /// The client counts run, in increasing order.
    fn counts(&self) -> Vec<usize> {
        let mut counts: Vec<usize> = self.rates.iter().map(|r| r.clients).collect();
        counts.sort_unstable();
        counts.dedup();
        counts
    }
}

/// The goal for what security costs the gateway: secured deliveries/s at least this
/// share of the plain run's.
pub const GATEWAY_SECURITY_GOAL: f64 = 0.9;

/// What TLS, the logins and the permissions cost the fan-out: a plain run's and a secured
/// run's figures side by side, with secured / plain ratios.
pub struct GatewaySecurityCost<'a> {
    /// The run on the plain stack.
    pub plain: &'a GatewayBenchReport,
    /// The run on the secured stack.
    pub secured: &'a GatewayBenchReport,
}

impl fmt::Display for GatewaySecurityCost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "security cost (secured / plain, same client counts and rates, same run): deliveries/s and readers' p99 per path"
        )?;
        writeln!(
            f,
            "{:>7} {:>7}  {:>11} {:>10} {:>11}  {:>11} {:>10}",
            "clients", "rate/s", "ws deliv/s", "ws p99", "stall p99", "raw deliv/s", "raw p99"
        )?;
        for on in &self.secured.rates {
            let Some(off) = self
                .plain
                .rates
                .iter()
                .find(|r| r.clients == on.clients && r.rate == on.rate)
            else {
                continue;
            };
            writeln!(
                f,
                "{:>7} {:>7}  {:>11} {:>10} {:>11}  {:>11} {:>10}",
                on.clients,
                on.rate,
                crate::times(
                    Some(on.ws.delivered_per_sec),
                    Some(off.ws.delivered_per_sec)
                ),
                crate::times(on.ws.latency_ms(0.99), off.ws.latency_ms(0.99)),
                crate::times(on.stall.latency_ms(0.99), off.stall.latency_ms(0.99)),
                crate::times(
                    Some(on.raw.delivered_per_sec),
                    Some(off.raw.delivered_per_sec)
                ),
                crate::times(on.raw.latency_ms(0.99), off.raw.latency_ms(0.99)),
            )?;
        }
        let show = |v: Option<u32>| v.map_or_else(|| "none".to_string(), |r| format!("{r}/s"));
        for n in self.secured.counts() {
            if !self.plain.counts().contains(&n) {
                continue;
            }
            let (on, off) = (self.secured.peak(n, false), self.plain.peak(n, false));
            let x = crate::ratio(on, off);
            writeln!(
                f,
                "{n} clients: ws peak deliveries/s {on:.0} secured, {off:.0} plain: {}x (goal >= {GATEWAY_SECURITY_GOAL}x: {}); raw peak {:.0} secured, {:.0} plain; highest sustained ws {} plain, {} secured",
                crate::opt(x, 2),
                match x {
                    Some(v) if v >= GATEWAY_SECURITY_GOAL => "met",
                    Some(_) => "not met",
                    None => "-",
                },
                self.secured.peak(n, true),
                self.plain.peak(n, true),
                show(self.plain.highest_sustained(n, false)),
                show(self.secured.highest_sustained(n, false)),
            )?;
        }
        Ok(())
    }
}

/// Raises the soft open-file limit to the hard one; returns the soft limit now in force.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// This process's resident set, bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The hub's conflated-messages counter, from the process's Prometheus recorder.
fn conflated_total() -> u64 {
    let text = suho_telemetry::metrics().render();
    text.lines()
        .filter(|l| l.starts_with(suho_telemetry::names::WS_MARKET_CONFLATED))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>()
        .max(0.0) as u64
}

/// One receiving end (a ws client or a raw subscriber).
struct Receiver {
    /// Stops reading while the stall is on (set per phase).
    stallable: AtomicBool,
    count: AtomicU64,
    last_ns: AtomicU64,
    closed: AtomicBool,
    latency: Mutex<Histogram<u64>>,
}

impl Receiver {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            stallable: AtomicBool::new(false),
            count: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            latency: Mutex::new(histogram()),
        })
    }

    fn set_stallable(&self, on: bool) {
        self.stallable.store(on, Ordering::Release);
    }

    fn take(&self) -> (u64, u64, Histogram<u64>) {
        let mut h = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken = std::mem::replace(&mut *h, histogram());
        (
            self.count.swap(0, Ordering::AcqRel),
            self.last_ns.load(Ordering::Acquire),
            taken,
        )
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("histogram bounds")
}

/// What the receivers share.
struct Shared {
    epoch: Instant,
    /// The phase being measured (0: none).
    phase: AtomicU32,
    /// True while stallable clients must not read.
    stall: watch::Receiver<bool>,
    stop: CancellationToken,
}

#[derive(Deserialize)]
struct Envelope {
    data: Option<Stamp>,
}

#[derive(Deserialize)]
struct Stamp {
    t_ns: u64,
    ph: u32,
}

fn observe(shared: &Shared, rx: &Receiver, stamp: &Stamp) {
    if stamp.ph != shared.phase.load(Ordering::Acquire) || stamp.ph == 0 {
        return;
    }
    #[allow(clippy::cast_possible_truncation)]
    let now = shared.epoch.elapsed().as_nanos() as u64;
    rx.count.fetch_add(1, Ordering::AcqRel);
    rx.last_ns.fetch_max(now, Ordering::AcqRel);
    let mut h = rx
        .latency
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    h.saturating_record(now.saturating_sub(stamp.t_ns).max(1_000));
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a `/ws` connection, subscribes to `symbols` and waits for `subscribed` and `ready`.
async fn open_ws(url: String, symbols: Vec<Symbol>) -> anyhow::Result<Ws> {
    use tokio_tungstenite::tungstenite::Message;
    // tungstenite zeroes the free part of its read buffer before every read; at its default
    // of 128 KiB that `memset` was the largest single cost of the whole run (16% of the
    // process's CPU at 1,000 clients), which a browser does not pay. 16 KiB still takes in
    // many frames per read.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .context("connecting to /ws")?;
    let names: Vec<&str> = symbols.iter().map(Symbol::as_str).collect();
    let sub = serde_json::json!({"action": "subscribe", "symbols": names});
    ws.send(Message::Text(sub.to_string().into())).await?;
    // `ready` comes once the gateway has found the connection's start in the user topics (a
    // Kafka lookup per connection): none of that work may overlap a measured phase.
    let (mut subscribed, mut ready) = (false, false);
    while !(subscribed && ready) {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                subscribed |= t.contains("\"event\":\"subscribed\"");
                ready |= t.contains("\"event\":\"ready\"");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("waiting for `subscribed` and `ready`"),
            None => bail!("/ws closed before `subscribed` and `ready`"),
        }
    }
    Ok(ws)
}

async fn run_ws(mut ws: Ws, shared: Arc<Shared>, rx: Arc<Receiver>) {
    use tokio_tungstenite::tungstenite::Message;
    let mut stall = shared.stall.clone();
    loop {
        let stallable = rx.stallable.load(Ordering::Acquire);
        if stallable && *stall.borrow_and_update() {
            // Not polling the socket: the server's writer for this client blocks.
            tokio::select! {
                () = shared.stop.cancelled() => break,
                _ = stall.changed() => continue,
            }
        }
        let message = tokio::select! {
            () = shared.stop.cancelled() => break,
            m = ws.next() => m,
            _ = stall.changed(), if stallable => continue,
        };
        match message {
            Some(Ok(Message::Text(t))) => {
                if let Ok(Envelope { data: Some(stamp) }) = serde_json::from_str(t.as_str()) {
                    observe(&shared, &rx, &stamp);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                rx.closed.store(true, Ordering::Release);
                return;
            }
        }
    }
    let _ = ws.close(None).await;
}

async fn open_raw(
    config: suho_config::Config,
    subject: String,
) -> anyhow::Result<async_nats::Subscriber> {
    // As the `/ws` stream's identity, so that both paths pay the same TLS and auth.
    let client = suho_messaging::nats::connect(&config, suho_security::Identity::Ws)
        .await
        .context("connecting a raw subscriber")?;
    let sub = client.subscribe(subject).await?;
    client.flush().await?;
    Ok(sub)
}

async fn run_raw(mut sub: async_nats::Subscriber, shared: Arc<Shared>, rx: Arc<Receiver>) {
    loop {
        let message = tokio::select! {
            () = shared.stop.cancelled() => break,
            m = sub.next() => m,
        };
        let Some(message) = message else {
            rx.closed.store(true, Ordering::Release);
            return;
        };
        if let Ok(stamp) = serde_json::from_slice::<Stamp>(&message.payload) {
            observe(&shared, &rx, &stamp);
        }
    }
}

/// Runs the gateway benchmark.
///
/// # Errors
/// Invalid options, a stack or service that does not start, a client that cannot connect.
pub async fn bench_gateway(opts: GatewayBenchOptions) -> anyhow::Result<GatewayBenchReport> {
    if opts.rates.is_empty() || opts.rates.contains(&0) {
        bail!("bench gateway: rates must be non-empty and positive");
    }
    if opts.clients.is_empty() || opts.clients.contains(&0) {
        bail!("bench gateway: client counts must be non-empty and positive");
    }
    if opts.duration.is_zero()
        || opts.users == 0
        || opts.symbols.is_empty()
        || opts.stalled_percent > 100
    {
        bail!("bench gateway: duration and users must be positive, stalled-percent <= 100");
    }
    let began = Instant::now();
    let nofile = raise_nofile();
    let max_clients = opts.clients.iter().copied().max().unwrap_or(0) as u64;
    if nofile < max_clients * 3 + 256 {
        tracing::warn!(
            nofile,
            "the open-file limit may be too low for {max_clients} clients (ws client + server socket + raw subscriber each): raise `ulimit -n`"
        );
    }
    tracing::info!("bench gateway: starting a throwaway Kafka, NATS and PostgreSQL");
    let stack_opts = opts.stack.clone();
    let transport = opts.transport;
    let stack = tokio::task::spawn_blocking(move || ThrowawayStack::start(&stack_opts, transport))
        .await
        .context("the stack starter panicked")??;
    let run = format!("{}", std::process::id());
    let prefix = format!("bench{run}.");
    let config = platform::secure(platform::config(&stack, &prefix)?).await?;
    let report = measure(&opts, &config, &run, began, nofile).await;
    drop(stack);
    report
}

#[allow(clippy::too_many_lines)]
async fn measure(
    opts: &GatewayBenchOptions,
    config: &suho_config::Config,
    run: &str,
    began: Instant,
    nofile: u64,
) -> anyhow::Result<GatewayBenchReport> {
    let created = suho_messaging::topics::apply(&config.kafka, false)
        .await
        .context("creating the platform's topics")?;
    clients::wait_for_topics(&config.kafka, &created.created).await?;

    // The gateway, as `suho::Application::run` wires it (HTTP API + `/ws` hub).
    let platform::GatewayParts {
        bus,
        producer,
        accounts,
        listener,
        addr,
        symbols,
    } = platform::GatewayParts::connect(config, suho_security::Identity::Ws).await?;
    let state = platform::app_state(config, accounts, producer, &symbols);
    let stop_gateway = CancellationToken::new();
    let (hub, hub_task) = suho_gateway::WsHub::start(
        &bus,
        &suho_messaging::kafka::bind(config, suho_security::Identity::Ws)?,
        suho_gateway::WsOptions::default(),
        stop_gateway.clone(),
    )
    .await
    .context("starting the WebSocket hub")?;
    let hub_task = tokio::spawn(hub_task);
    let serve_token = stop_gateway.clone();
    let server = tokio::spawn(async move {
        suho_gateway::serve_with(listener, state, Some(hub), serve_token).await
    });

    let http = reqwest::Client::builder()
        .build()
        .context("creating the HTTP client")?;
    tracing::info!(users = opts.users, "bench gateway: registering users");
    let users = platform::register_users(&http, addr, opts.users, run).await?;
    let tokens: Vec<String> = users
        .iter()
        .map(|u| {
            u.authorization
                .strip_prefix("Bearer ")
                .unwrap_or(&u.authorization)
                .to_string()
        })
        .collect();
    let setup = began.elapsed();

    let (stall_tx, stall_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        phase: AtomicU32::new(0),
        stall: stall_rx,
        stop: CancellationToken::new(),
    });
    let raw_prefix = format!("benchraw{run}.");
    let ws_prefix = config.nats.subject_prefix.clone();
    let raw_pattern = format!("{raw_prefix}market.*.tick");
    let publisher = suho_messaging::nats::connect(config, suho_security::Identity::Feed)
        .await
        .context("connecting the publisher")?;
    let mut ws_rx: Vec<Arc<Receiver>> = Vec::new();
    let mut raw_rx: Vec<Arc<Receiver>> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut counts = opts.clients.clone();
    counts.sort_unstable();
    counts.dedup();
    let mut rates_sorted = opts.rates.clone();
    rates_sorted.sort_unstable();
    rates_sorted.dedup();
    let mut results = Vec::new();
    let mut memory = Vec::new();
    let mut phase_id = 0u32;
    let payload_bytes = payload(opts.symbols[0], 0, 0, 0).len();
    let ctx = PhaseCtx {
        shared: shared.clone(),
        publisher: publisher.clone(),
        stall: stall_tx,
        duration: opts.duration,
        symbols: opts.symbols.clone(),
    };

    for &n in &counts {
        let before_ws = rss();
        let added = n.saturating_sub(ws_rx.len());
        tracing::info!(clients = n, "bench gateway: connecting WebSocket clients");
        let stalled_n = n * opts.stalled_percent as usize / 100;
        let first = ws_rx.len();
        let opened: Vec<anyhow::Result<Ws>> = futures::stream::iter(first..n)
            .map(|i| {
                let url = format!("ws://{addr}/ws?token={}", tokens[i % tokens.len()]);
                async move {
                    tokio::time::timeout(
                        Duration::from_secs(60),
                        open_ws(url, opts.symbols.clone()),
                    )
                    .await
                    .context("opening a /ws connection: timed out")?
                }
            })
            .buffered(32)
            .collect()
            .await;
        for ws in opened {
            let ws = ws?;
            let rx = Receiver::new();
            ws_rx.push(rx.clone());
            tasks.spawn(run_ws(ws, shared.clone(), rx));
        }
        let after_ws = rss();
        tracing::info!(
            clients = n,
            "bench gateway: connecting raw NATS subscribers"
        );
        let opened: Vec<anyhow::Result<async_nats::Subscriber>> =
            futures::stream::iter(raw_rx.len()..n)
                .map(|_| open_raw(config.clone(), raw_pattern.clone()))
                .buffered(32)
                .collect()
                .await;
        for sub in opened {
            let rx = Receiver::new();
            raw_rx.push(rx.clone());
            tasks.spawn(run_raw(sub?, shared.clone(), rx));
        }
        let after_raw = rss();
        memory.push(GatewayMemory {
            clients: n,
            before_ws,
            after_ws,
            after_raw,
            added,
        });
        // Let the connections' setup settle before timing anything.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The stalled ones: the first `stalled_percent` of the connections.
        let stallable: Vec<bool> = (0..n).map(|i| i < stalled_n).collect();

        let mut run_rate = |rate: u32, extra: bool| {
            let ctx = &ctx;
            let ws_rx = &ws_rx[..n];
            let raw_rx = &raw_rx[..n];
            let stallable = &stallable;
            let (ws_prefix, raw_prefix) = (ws_prefix.clone(), raw_prefix.clone());
            phase_id += 5;
            let base = phase_id;
            async move {
                tracing::info!(
                    clients = n,
                    rate,
                    "bench gateway: raw, ws, ws-stall, ws-stall, ws"
                );
                let raw = ctx
                    .run(GatewayPath::Raw, base, rate, &raw_prefix, raw_rx, &[])
                    .await?;
                let ws = |phase| ctx.run(GatewayPath::Ws, phase, rate, &ws_prefix, ws_rx, &[]);
                let stall = |phase| {
                    ctx.run(
                        GatewayPath::WsStall,
                        phase,
                        rate,
                        &ws_prefix,
                        ws_rx,
                        stallable,
                    )
                };
                let ws_first = ws(base + 1).await?;
                let stall_first = stall(base + 2).await?;
                let stall_second = stall(base + 3).await?;
                let ws_second = ws(base + 4).await?;
                anyhow::Ok(GatewayRateResult {
                    clients: n,
                    rate,
                    raw,
                    ws: GatewayPhaseResult::pooled(ws_first, &ws_second)?,
                    stall: GatewayPhaseResult::pooled(stall_first, &stall_second)?,
                    extra,
                })
            }
        };
        for &rate in &rates_sorted {
            let r = run_rate(rate, false).await?;
            // Neither path keeps up: a higher rate would only pile up backlog.
            let done = !r.ws.sustained(opts.p99_bound) && !r.raw.sustained(opts.p99_bound);
            results.push(r);
            if done {
                tracing::info!(
                    clients = n,
                    rate,
                    "bench gateway: neither path sustained this rate; skipping higher rates"
                );
                break;
            }
        }
        if Some(&n) == counts.last() {
            // Half the highest sustained rate, if it was not swept.
            let sustained = rates_sorted
                .iter()
                .take_while(|&&rate| {
                    results
                        .iter()
                        .find(|r| r.clients == n && r.rate == rate)
                        .is_some_and(|r| r.ws.sustained(opts.p99_bound))
                })
                .last()
                .copied();
            if let Some(half) = sustained.map(|s| s / 2).filter(|h| *h > 0) {
                if !rates_sorted.contains(&half) {
                    let r = run_rate(half, true).await?;
                    results.push(r);
                }
            }
        }
        if server.is_finished() || hub_task.is_finished() {
            bail!("the gateway stopped during the bench");
        }
    }

    shared.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    stop_gateway.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), hub_task).await;
    Ok(GatewayBenchReport {
        rates: results,
        memory,
        duration: opts.duration,
        stalled_percent: opts.stalled_percent,
        users: opts.users,
        p99_bound: opts.p99_bound,
        payload_bytes,
        symbols: opts.symbols.clone(),
        nofile,
        transport: config.security.transport,
        setup,
        elapsed: began.elapsed(),
    })
}

/// A tick's JSON with the bench's stamps.
fn payload(symbol: Symbol, t_ns: u64, ph: u32, seq: u64) -> Vec<u8> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let tick = suho_market::SyntheticFeed::new(&[symbol], seq).next_tick(now_ms);
    let mut value = serde_json::to_value(tick).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("t_ns".into(), t_ns.into());
        obj.insert("ph".into(), ph.into());
        obj.insert("seq".into(), seq.into());
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

struct PhaseCtx {
    shared: Arc<Shared>,
    publisher: async_nats::Client,
    stall: watch::Sender<bool>,
    duration: Duration,
    symbols: Vec<Symbol>,
}

impl PhaseCtx {
    async fn run(
        &self,
        path: GatewayPath,
        phase: u32,
        rate: u32,
        prefix: &str,
        receivers: &[Arc<Receiver>],
        stallable: &[bool],
    ) -> anyhow::Result<GatewayPhaseResult> {
        let shared = &self.shared;
        let stalled = stallable.iter().filter(|s| **s).count();
        let stall_set: Vec<bool> = (0..receivers.len())
            .map(|i| stallable.get(i).copied().unwrap_or(false))
            .collect();
        set_stallable(receivers, &stall_set);
        for rx in receivers {
            rx.take();
        }
        let closed_before = receivers
            .iter()
            .filter(|r| r.closed.load(Ordering::Acquire))
            .count();
        let conflated_before = conflated_total();
        shared.phase.store(phase, Ordering::Release);
        if stalled > 0 {
            let _ = self.stall.send(true);
        }
        // RSS sampler.
        let rss_start = rss();
        let sampling = CancellationToken::new();
        let sampler = {
            let token = sampling.clone();
            tokio::spawn(async move {
                let mut max = rss();
                let mut every = tokio::time::interval(Duration::from_millis(50));
                loop {
                    tokio::select! {
                        () = token.cancelled() => return max,
                        _ = every.tick() => max = max.max(rss()),
                    }
                }
            })
        };
        let start = Instant::now() + Duration::from_millis(20);
        #[allow(clippy::cast_possible_truncation)]
        let start_ns = start.duration_since(shared.epoch).as_nanos() as u64;
        let handle = tokio::runtime::Handle::current();
        let (client, prefix, symbols, duration, epoch) = (
            self.publisher.clone(),
            prefix.to_string(),
            self.symbols.clone(),
            self.duration,
            shared.epoch,
        );
        let published = tokio::task::spawn_blocking(move || {
            let total = u64::from(rate) * duration.as_millis() as u64 / 1000;
            let mut feed = suho_market::SyntheticFeed::new(&symbols, u64::from(phase));
            let subjects: std::collections::HashMap<Symbol, String> = symbols
                .iter()
                .map(|&s| (s, suho_domain::subject::tick(&prefix, s)))
                .collect();
            for i in 0..total {
                #[allow(clippy::cast_possible_truncation)]
                let due = start
                    + Duration::from_nanos(
                        (u128::from(i) * 1_000_000_000 / u128::from(rate)) as u64,
                    );
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                let tick = feed.next_tick(now_ms).context("the feed has no symbols")?;
                let subject = subjects[&tick.symbol].clone();
                let mut value = serde_json::to_value(tick).unwrap_or_default();
                #[allow(clippy::cast_possible_truncation)]
                let t_ns = due.duration_since(epoch).as_nanos() as u64;
                if let Some(obj) = value.as_object_mut() {
                    obj.insert("t_ns".into(), t_ns.into());
                    obj.insert("ph".into(), phase.into());
                    obj.insert("seq".into(), i.into());
                }
                let bytes = Bytes::from(serde_json::to_vec(&value)?);
                handle
                    .block_on(client.publish(subject, bytes))
                    .context("publishing a tick")?;
            }
            handle
                .block_on(tokio::time::timeout(
                    Duration::from_secs(10),
                    client.flush(),
                ))
                .context("flushing the publisher: timed out")?
                .context("flushing the publisher")?;
            anyhow::Ok(total)
        })
        .await
        .context("the publisher panicked")??;
        // Drain: until the reading receivers have all, or nothing moved for 500 ms (at most 5 s).
        let expected = published * (receivers.len() - stalled) as u64;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = (0, Instant::now());
        loop {
            let got: u64 = receivers
                .iter()
                .zip(&stall_set)
                .filter(|(_, s)| !**s)
                .map(|(r, _)| r.count.load(Ordering::Acquire))
                .sum();
            if got >= expected || Instant::now() > deadline {
                break;
            }
            if got != last.0 {
                last = (got, Instant::now());
            } else if last.1.elapsed() > Duration::from_millis(500) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rss_end_stalled = rss();
        sampling.cancel();
        let rss_max = sampler.await.unwrap_or(0).max(rss_end_stalled);
        let conflated = conflated_total().saturating_sub(conflated_before);
        // Collect the reading ones; release the stalled ones and give them a moment.
        let mut delivered = 0;
        let mut last_ns = start_ns;
        let mut latency = histogram();
        for (rx, s) in receivers.iter().zip(&stall_set) {
            if !*s {
                let (c, l, h) = rx.take();
                delivered += c;
                last_ns = last_ns.max(l);
                latency.add(h).context("merging histograms")?;
            }
        }
        let mut stalled_delivered = 0;
        if stalled > 0 {
            let _ = self.stall.send(false);
            tokio::time::sleep(Duration::from_millis(500)).await;
            for (rx, s) in receivers.iter().zip(&stall_set) {
                if *s {
                    stalled_delivered += rx.take().0;
                }
            }
        }
        shared.phase.store(0, Ordering::Release);
        let disconnects = receivers
            .iter()
            .filter(|r| r.closed.load(Ordering::Acquire))
            .count()
            .saturating_sub(closed_before) as u64;
        #[allow(clippy::cast_precision_loss)]
        let span = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
        #[allow(clippy::cast_precision_loss)]
        let delivered_per_sec = if span > 0.0 {
            delivered as f64 / span
        } else {
            0.0
        };
        Ok(GatewayPhaseResult {
            path,
            clients: receivers.len(),
            stalled,
            rate,
            published,
            delivered,
            stalled_delivered,
            disconnects,
            delivered_per_sec,
            latency_ns: latency,
            rss: (rss_start, rss_max, rss_end_stalled),
            conflated,
        })
    }
}

/// Receivers are shared `Arc`s; which ones stall is decided per phase by the caller's list.
fn set_stallable(receivers: &[Arc<Receiver>], stall: &[bool]) {
    for (rx, s) in receivers.iter().zip(stall) {
        rx.set_stallable(*s);
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.2}"))
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for GatewayBenchReport {
    #[allow(clippy::too_many_lines)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "gateway bench: open loop, {:.1} s per phase, {} symbol(s) ({}), ~{} B tick JSON, {} users, {}% stalled in ws-stall; throwaway Kafka / NATS / PostgreSQL {}; open files {}; setup {:.1} s, {:.1} s in all",
            self.duration.as_secs_f64(),
            self.symbols.len(),
            self.symbols.iter().map(Symbol::as_str).collect::<Vec<_>>().join(","),
            self.payload_bytes,
            self.users,
            self.stalled_percent,
            crate::transport_text(self.transport),
            self.nofile,
            self.setup.as_secs_f64(),
            self.elapsed.as_secs_f64(),
        )?;
        writeln!(
            f,
            "latency: due time -> received by the client (ws: the /ws text frame; raw: the NATS message), reading clients only; RSS: this whole process (gateway and clients)"
        )?;
        writeln!(
            f,
            "each rate runs raw, ws, ws-stall, ws-stall, ws; the ws and ws-stall rows pool their two phases"
        )?;
        writeln!(
            f,
            "{:>7} {:>7}  {:<9} {:>5} {:>9} {:>10} {:>7} {:>5} {:>11} {:>8} {:>8} {:>9} {:>8} {:>9}  sustained",
            "clients",
            "rate/s",
            "path",
            "stall",
            "published",
            "delivered",
            "deliv%",
            "disc",
            "deliv/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "RSS MiB",
            "conflated"
        )?;
        for r in &self.rates {
            for p in [&r.raw, &r.ws, &r.stall] {
                let first = std::ptr::eq(p, &r.raw);
                writeln!(
                    f,
                    "{:>7} {:>7}  {:<9} {:>5} {:>9} {:>10} {:>6.1}% {:>5} {:>11.0} {:>8} {:>8} {:>9} {:>8.1} {:>9}  {}",
                    if first { r.clients.to_string() } else { String::new() },
                    if first {
                        format!("{}{}", r.rate, if r.extra { "*" } else { "" })
                    } else {
                        String::new()
                    },
                    p.path.name(),
                    p.stalled,
                    p.published,
                    p.delivered,
                    p.delivered_share() * 100.0,
                    p.disconnects,
                    p.delivered_per_sec,
                    ms(p.latency_ms(0.5)),
                    ms(p.latency_ms(0.99)),
                    ms(p.latency_ms(0.999)),
                    mib(p.rss.1),
                    if p.path == GatewayPath::Raw {
                        "-".to_string()
                    } else {
                        p.conflated.to_string()
                    },
                    if p.sustained(self.p99_bound) { "yes" } else { "no" },
                )?;
            }
            let tput = (r.raw.delivered_per_sec > 0.0)
                .then(|| r.ws.delivered_per_sec / r.raw.delivered_per_sec);
            let p99 =
                r.ws.latency_ms(0.99)
                    .zip(r.raw.latency_ms(0.99))
                    .map(|(a, b)| a / b);
            writeln!(
                f,
                "{:>16}  ratio     ws/raw deliv/s {}x, p99 {}x; stalled vs not, readers' p99 {}x (goal <= {GATEWAY_STALL_GOAL}x); stalled clients got {} msgs; RSS in ws-stall {:.1} -> max {:.1} -> {:.1} MiB",
                "",
                ms(tput),
                ms(p99),
                ms(r.stall_p99_ratio()),
                r.stall.stalled_delivered,
                mib(r.stall.rss.0),
                mib(r.stall.rss.1),
                mib(r.stall.rss.2),
            )?;
        }
        if self.rates.iter().any(|r| r.extra) {
            writeln!(
                f,
                "(* run after the sweep: half the highest sustained ws rate)"
            )?;
        }
        for m in &self.memory {
            #[allow(clippy::cast_precision_loss)]
            let per = |a: u64, b: u64| {
                if m.added == 0 {
                    0.0
                } else {
                    (a.saturating_sub(b)) as f64 / 1024.0 / m.added as f64
                }
            };
            writeln!(
                f,
                "memory at {} clients: RSS {:.1} MiB before opening {} ws connections, {:.1} MiB after ({:.1} KiB per connection, client and server ends both in this process); {:.1} MiB after {} raw NATS subscribers ({:.1} KiB each)",
                m.clients,
                mib(m.before_ws),
                m.added,
                mib(m.after_ws),
                per(m.after_ws, m.before_ws),
                mib(m.after_raw),
                m.added,
                per(m.after_raw, m.after_ws),
            )?;
        }
        let bound = self.p99_bound.as_secs_f64() * 1e3;
        for n in self.counts() {
            let top = self
                .rates
                .iter()
                .filter(|r| r.clients == n)
                .map(|r| r.rate)
                .max();
            let show = |v: Option<u32>| match v {
                None => "none".to_string(),
                Some(r) if Some(r) == top => format!(">= {r}/s (the top of the sweep)"),
                Some(r) => format!("{r}/s"),
            };
            let (ws, raw) = (
                self.highest_sustained(n, false),
                self.highest_sustained(n, true),
            );
            writeln!(
                f,
                "{n} clients: highest sustained rate (every rate up to it: >= {:.0}% of published x clients delivered, no disconnect, p99 <= {bound:.0} ms): ws {}, raw {}",
                GATEWAY_KEPT_PACE * 100.0,
                show(ws),
                show(raw),
            )?;
            let at = |rate: Option<u32>| {
                rate.and_then(|x| self.rates.iter().find(|r| r.clients == n && r.rate == x))
            };
            if let (Some(w), Some(r)) = (at(ws), at(raw)) {
                let ratio = w.ws.delivered_per_sec / r.raw.delivered_per_sec;
                writeln!(
                    f,
                    "{n} clients: deliveries/s at the highest sustained rates: ws {:.0}, raw {:.0}: {ratio:.2}x (goal >= {GATEWAY_THROUGHPUT_GOAL}x: {}{})",
                    w.ws.delivered_per_sec,
                    r.raw.delivered_per_sec,
                    if ratio >= GATEWAY_THROUGHPUT_GOAL { "met" } else { "not met" },
                    if raw == top { "; raw's limit lies above the sweep, so this ratio is an upper bound" } else { "" },
                )?;
            }
            let (peak_ws, peak_raw) = (self.peak(n, false), self.peak(n, true));
            if peak_raw > 0.0 {
                let ratio = peak_ws / peak_raw;
                writeln!(
                    f,
                    "{n} clients: peak deliveries/s at any swept rate (capacity, sustained or not): ws {peak_ws:.0}, raw {peak_raw:.0}: {ratio:.2}x (goal >= {GATEWAY_THROUGHPUT_GOAL}x: {})",
                    if ratio >= GATEWAY_THROUGHPUT_GOAL { "met" } else { "not met" },
                )?;
            }
            if let Some(half) = ws.map(|s| s / 2) {
                if let Some(r) = self.rates.iter().find(|r| r.clients == n && r.rate == half) {
                    let p99 = r.ws.latency_ms(0.99);
                    writeln!(
                        f,
                        "{n} clients at {half}/s (half the highest sustained): tick -> client p99 {} ms (goal < {GATEWAY_P99_GOAL_MS} ms: {}), raw {} ms; with {}% stalled, readers' p99 {} ms ({}x)",
                        ms(p99),
                        if p99.is_some_and(|p| p < GATEWAY_P99_GOAL_MS) { "met" } else { "not met" },
                        ms(r.raw.latency_ms(0.99)),
                        self.stalled_percent,
                        ms(r.stall.latency_ms(0.99)),
                        ms(r.stall_p99_ratio()),
                    )?;
                }
            }
            let stall_ok = self
                .rates
                .iter()
                .filter(|r| r.clients == n && r.ws.sustained(self.p99_bound))
                .map(|r| r.stall_p99_ratio().is_some_and(|x| x <= GATEWAY_STALL_GOAL))
                .collect::<Vec<_>>();
            writeln!(
                f,
                "{n} clients: stalled readers' p99 within {GATEWAY_STALL_GOAL}x of the run without stall at {} of {} sustained rates",
                stall_ok.iter().filter(|x| **x).count(),
                stall_ok.len(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(path: GatewayPath, delivered: u64, p99_ms: u64) -> GatewayPhaseResult {
        let mut latency_ns = histogram();
        for _ in 0..100 {
            latency_ns.record(p99_ms * 1_000_000).expect("in range");
        }
        GatewayPhaseResult {
            path,
            clients: 10,
            stalled: 0,
            rate: 100,
            published: 100,
            delivered,
            stalled_delivered: 0,
            disconnects: 0,
            delivered_per_sec: 1_000.0,
            latency_ns,
            rss: (0, 0, 0),
            conflated: 0,
        }
    }

    #[test]
    fn pooled_phases_add_their_counts_and_merge_their_histograms() {
        let mut a = phase(GatewayPath::Ws, 1_000, 2);
        a.rss = (10, 30, 20);
        a.conflated = 3;
        let mut b = phase(GatewayPath::Ws, 900, 8);
        b.rss = (20, 25, 22);
        b.delivered_per_sec = 900.0;
        b.disconnects = 1;
        let p = GatewayPhaseResult::pooled(a, &b).expect("pooled");
        assert_eq!((p.published, p.delivered, p.disconnects), (200, 1_900, 1));
        assert_eq!(p.latency_ns.len(), 200);
        // Equal to 3 significant digits, the histogram's precision.
        let near = |q: f64, want: f64| p.latency_ms(q).is_some_and(|v| (v - want).abs() < 0.01);
        assert!(near(0.25, 2.0), "{:?}", p.latency_ms(0.25));
        assert!(near(0.99, 8.0), "{:?}", p.latency_ms(0.99));
        assert_eq!(p.rss, (10, 30, 22));
        assert_eq!(p.conflated, 3);
        assert!((p.delivered_per_sec - 950.0).abs() < f64::EPSILON);
        assert!((p.delivered_share() - 0.95).abs() < 1e-9);
    }

    #[test]
    fn the_highest_sustained_rate_stops_at_the_first_rate_that_fell_behind() {
        let row = |rate, ws_delivered, ws_p99| GatewayRateResult {
            clients: 10,
            rate,
            raw: phase(GatewayPath::Raw, 1_000, 1),
            ws: phase(GatewayPath::Ws, ws_delivered, ws_p99),
            stall: phase(GatewayPath::WsStall, ws_delivered, ws_p99),
            extra: false,
        };
        let report = GatewayBenchReport {
            // Out of order on purpose; 300/s delivered everything but its p99 is out of bounds.
            rates: vec![row(300, 1_000, 500), row(100, 1_000, 2), row(200, 960, 3)],
            memory: Vec::new(),
            duration: Duration::from_secs(1),
            stalled_percent: 10,
            users: 1,
            p99_bound: Duration::from_millis(100),
            payload_bytes: 1,
            symbols: vec![Symbol::parse("EURUSD").expect("symbol")],
            nofile: 1,
            transport: suho_config::Transport::Secured,
            setup: Duration::ZERO,
            elapsed: Duration::ZERO,
        };
        assert_eq!(report.highest_sustained(10, false), Some(200));
        assert_eq!(report.highest_sustained(10, true), Some(300));
        let text = report.to_string();
        assert!(text.contains("highest sustained rate"), "{text}");
        assert!(
            text.contains("at 100/s (half the highest sustained)"),
            "{text}"
        );
        // The cost of security: the peak deliveries of ws, secured over plain.
        let mut plain = report.clone();
        plain.transport = suho_config::Transport::Plain;
        plain.rates = vec![row(100, 1_000, 2), row(200, 1_000, 3)];
        plain.rates[1].ws.delivered_per_sec = 2_000.0;
        let text = GatewaySecurityCost {
            plain: &plain,
            secured: &report,
        }
        .to_string();
        assert!(
            text.contains("10 clients: ws peak deliveries/s 1000 secured, 2000 plain: 0.50x (goal >= 0.9x: not met)"),
            "{text}"
        );
        // Rate by rate, where both ran: 200/s is 1000 / 2000 deliveries/s.
        assert!(text.contains("0.50x"), "{text}");
        assert!(
            !text.contains("    300 "),
            "300/s ran secured only:\n{text}"
        );
    }
}
