//! One measured phase: an open-loop publisher at a fixed rate and the subscribers of one path
//! ("ours" or the raw baseline), on fresh connections so every counter belongs to the phase.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use suho_domain::{subject, Symbol};
use suho_market::{
    run_analytics_on, run_price_service_on, AnalyticsConfig, PriceServiceConfig, SyntheticFeed,
    TickHub, TickObserver,
};
use suho_messaging::{now_ms, MarketBus};
use suho_security::Identity;
use tokio_util::sync::CancellationToken;

use crate::PathResult;

/// Header carrying the message's sequence number.
const SEQ_HEADER: &str = "seq";
/// Header carrying the intended send time, nanoseconds since the run's epoch.
const SENT_HEADER: &str = "t_ns";
/// Largest latency the histograms hold (longer ones are clamped to it).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Which subscribers receive the ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// The real analytics and price services on one connection and one tick hub, as in the
    /// service process; each takes the time of a tick once it has applied it (candles,
    /// indicators and their publications; the price cache).
    Ours,
    /// One plain subscriber that only takes the time.
    Raw,
}

/// What one phase runs.
pub(crate) struct Phase<'a> {
    pub(crate) url: &'a str,
    /// Subject prefix of this phase (unique, ends with `.` or is empty).
    pub(crate) prefix: String,
    pub(crate) symbols: &'a [Symbol],
    pub(crate) rate: u32,
    pub(crate) duration: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) seed: u64,
    /// The run's clock origin, shared by publisher and subscribers.
    pub(crate) epoch: Instant,
    /// A secured server's credentials: each connection logs in over TLS as the service
    /// identity that makes it in the platform (`None`: a plain server, no login).
    pub(crate) secrets: Option<&'a suho_security::Secrets>,
}

/// Client events of one connection that the report counts.
#[derive(Default)]
struct EventCounts {
    slow_consumer: AtomicU64,
    disconnected: AtomicU64,
}

async fn connect(
    url: &str,
    name: &str,
    counts: Option<Arc<EventCounts>>,
    login: Option<(&suho_security::Secrets, Identity)>,
) -> anyhow::Result<Client> {
    use secrecy::ExposeSecret;
    let options = match login {
        Some((secrets, identity)) => {
            let c = secrets
                .credentials(identity)
                .with_context(|| format!("the credentials of `{identity}`"))?;
            ConnectOptions::with_user_and_password(
                identity.name().to_string(),
                c.password.expose_secret().to_string(),
            )
            .require_tls(true)
            .add_root_certificates(c.ca_file.clone())
            .custom_inbox_prefix(identity.inbox_prefix())
        }
        None => ConnectOptions::new(),
    };
    let mut options = options
        .name(name)
        .connection_timeout(Duration::from_secs(5));
    if let Some(counts) = counts {
        options = options.event_callback(move |event| {
            let counts = Arc::clone(&counts);
            async move {
                match event {
                    Event::SlowConsumer(_) => {
                        counts.slow_consumer.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Disconnected => {
                        counts.disconnected.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(6), options.connect(url))
        .await
        .with_context(|| format!("connecting to {url}: timed out"))?
        .with_context(|| format!("connecting to {url}"))
}

/// Where one measuring subscriber records each tick it has handled: the probe of the raw path,
/// or the observer of a real service on ours.
struct Recorder {
    epoch: Instant,
    latency_ns: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    malformed: AtomicU64,
    last_receive: Mutex<Option<Instant>>,
}

impl Recorder {
    fn new(epoch: Instant) -> anyhow::Result<Self> {
        Ok(Self {
            epoch,
            latency_ns: Mutex::new(new_histogram()?),
            delivered: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            last_receive: Mutex::new(None),
        })
    }

    /// Takes the time of one handled tick: now minus the time it was due.
    fn record(&self, headers: Option<&HeaderMap>) {
        let Some(sent) = sent_ns(headers) else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let now = Instant::now();
        #[allow(clippy::cast_possible_truncation)]
        let now_ns = now.duration_since(self.epoch).as_nanos() as u64;
        lock(&self.latency_ns)
            .saturating_record(now_ns.saturating_sub(sent).clamp(1, MAX_LATENCY_NS));
        *lock(&self.last_receive) = Some(now);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("creating a latency histogram")
}

fn sent_ns(headers: Option<&HeaderMap>) -> Option<u64> {
    headers?.get(SENT_HEADER)?.as_str().parse().ok()
}

/// The raw path's subscriber: takes the time of each message and does nothing else.
async fn probe(mut sub: Subscriber, recorder: Arc<Recorder>, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => break },
            () = stop.cancelled() => break,
        };
        recorder.record(msg.headers.as_ref());
    }
}

/// Publishes `rate` ticks/s for `duration` on an open-loop schedule: message `i` is due at
/// `start + i / rate`, whatever happened to message `i - 1`. Runs on a blocking thread so the
/// schedule does not wait for the async workers (which the subscribers keep busy).
fn publish_schedule(
    handle: &tokio::runtime::Handle,
    client: &Client,
    phase: &PhaseSchedule,
) -> anyhow::Result<u64> {
    let subjects: HashMap<Symbol, String> = phase
        .symbols
        .iter()
        .map(|&s| (s, subject::tick(&phase.prefix, s)))
        .collect();
    let mut feed = SyntheticFeed::new(&phase.symbols, phase.seed);
    let total = u64::from(phase.rate) * phase.duration.as_millis() as u64 / 1000;
    let mut published = 0;
    for i in 0..total {
        #[allow(clippy::cast_possible_truncation)]
        let offset =
            Duration::from_nanos((u128::from(i) * 1_000_000_000 / u128::from(phase.rate)) as u64);
        let due = phase.start + offset;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let Some(tick) = feed.next_tick(now_ms()) else {
            bail!("the synthetic feed has no symbols");
        };
        let payload = Bytes::from(serde_json::to_vec(&tick).context("encoding a tick")?);
        let mut headers = HeaderMap::new();
        headers.insert(SEQ_HEADER, i.to_string());
        #[allow(clippy::cast_possible_truncation)]
        let sent = due.duration_since(phase.epoch).as_nanos() as u64;
        headers.insert(SENT_HEADER, sent.to_string());
        let subject = subjects[&tick.symbol].clone();
        handle
            .block_on(client.publish_with_headers(subject, headers, payload))
            .context("publishing a tick")?;
        published += 1;
    }
    handle
        .block_on(tokio::time::timeout(
            Duration::from_secs(10),
            client.flush(),
        ))
        .context("flushing the publisher: timed out")?
        .context("flushing the publisher")?;
    Ok(published)
}

/// The publisher's part of a phase, owned so it can move to a blocking thread.
struct PhaseSchedule {
    prefix: String,
    symbols: Vec<Symbol>,
    rate: u32,
    duration: Duration,
    seed: u64,
    epoch: Instant,
    start: Instant,
}

/// The payload size of a typical tick, for the report.
pub(crate) fn typical_payload_bytes(symbols: &[Symbol], seed: u64) -> usize {
    SyntheticFeed::new(symbols, seed)
        .next_tick(now_ms())
        .and_then(|t| serde_json::to_vec(&t).ok())
        .map_or(0, |v| v.len())
}

/// Runs one phase and measures it.
pub(crate) async fn run(phase: &Phase<'_>, path: Path) -> anyhow::Result<PathResult> {
    let counts = Arc::new(EventCounts::default());
    // One connection per service identity, as the platform makes them: the process's tick
    // subscription (`ticks`), the analytics' publications, the price service.
    let login = |identity: Identity| phase.secrets.map(|s| (s, identity));
    let subscriber = |name: &'static str, identity: Identity| {
        connect(phase.url, name, Some(Arc::clone(&counts)), login(identity))
    };
    let subscriber_client = match path {
        Path::Ours => subscriber("suho-bench-ticks", Identity::Ticks).await?,
        Path::Raw => subscriber("suho-bench-raw-subscriber", Identity::Ticks).await?,
    };
    let service_clients = match path {
        Path::Ours => vec![
            subscriber("suho-bench-analytics", Identity::Analytics).await?,
            subscriber("suho-bench-price", Identity::Price).await?,
        ],
        Path::Raw => Vec::new(),
    };
    let publisher = connect(
        phase.url,
        "suho-bench-publisher",
        None,
        login(Identity::Feed),
    )
    .await?;

    let stop = CancellationToken::new();
    let mut services = Vec::new();
    let mut recorders = Vec::new();
    let mut probe_task = None;
    // Ticks a hub listener missed (its queue full): losses like a slow consumer's.
    let mut hub_missed: Vec<Arc<AtomicU64>> = Vec::new();
    match path {
        Path::Ours => {
            let bus = MarketBus::new(subscriber_client.clone(), phase.prefix.clone());
            let analytics_bus = MarketBus::new(service_clients[0].clone(), phase.prefix.clone());
            let price_bus = MarketBus::new(service_clients[1].clone(), phase.prefix.clone());
            let analytics = Arc::new(Recorder::new(phase.epoch)?);
            let prices = Arc::new(Recorder::new(phase.epoch)?);
            let observer = |recorder: &Arc<Recorder>| {
                let recorder = Arc::clone(recorder);
                Some(TickObserver::new(move |msg| {
                    recorder.record(msg.headers.as_ref());
                }))
            };
            let analytics_config = AnalyticsConfig {
                observer: observer(&analytics),
                ..AnalyticsConfig::new(phase.symbols.to_vec())
            };
            let prices_config = PriceServiceConfig {
                symbols: phase.symbols.iter().copied().collect(),
                max_age_ms: 10_000,
                observer: observer(&prices),
            };
            // Wired as `Application::run` wires them: one tick hub, the services its listeners.
            let mut hub = TickHub::new();
            let (analytics_ticks, analytics_missed) = hub.listen("market-analytics");
            let (price_ticks, price_missed) = hub.listen("price-service");
            hub_missed.extend([analytics_missed, price_missed]);
            services.push(tokio::spawn(run_analytics_on(
                analytics_bus,
                analytics_config,
                analytics_ticks,
                stop.child_token(),
            )));
            services.push(tokio::spawn(run_price_service_on(
                price_bus,
                prices_config,
                price_ticks,
                stop.child_token(),
            )));
            services.push(tokio::spawn(hub.run(bus, stop.child_token())));
            recorders.extend([analytics, prices]);
        }
        Path::Raw => {
            let sub = subscriber_client
                .subscribe(subject::all_ticks(&phase.prefix))
                .await
                .context("subscribing the probe")?;
            let recorder = Arc::new(Recorder::new(phase.epoch)?);
            probe_task = Some(tokio::spawn(probe(
                sub,
                Arc::clone(&recorder),
                stop.child_token(),
            )));
            recorders.push(recorder);
        }
    }
    // A tick is delivered once every measuring subscriber has handled it.
    let delivered = || {
        recorders
            .iter()
            .map(|r| r.delivered.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };
    // Let the services subscribe, then make sure the server has every subscription.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for client in std::iter::once(&subscriber_client).chain(&service_clients) {
        tokio::time::timeout(Duration::from_secs(5), client.flush())
            .await
            .context("flushing the subscribers: timed out")?
            .context("flushing the subscribers")?;
    }

    let schedule = PhaseSchedule {
        prefix: phase.prefix.clone(),
        symbols: phase.symbols.to_vec(),
        rate: phase.rate,
        duration: phase.duration,
        seed: phase.seed,
        epoch: phase.epoch,
        start: Instant::now() + Duration::from_millis(10),
    };
    let start = schedule.start;
    let handle = tokio::runtime::Handle::current();
    let published =
        tokio::task::spawn_blocking(move || publish_schedule(&handle, &publisher, &schedule))
            .await
            .context("the publisher thread panicked")??;

    // Drain: until everything arrived, nothing arrived for a second, or the timeout.
    let drain_end = Instant::now() + phase.drain_timeout;
    let mut last = delivered();
    let mut last_change = Instant::now();
    loop {
        let now_delivered = delivered();
        if now_delivered >= published || Instant::now() > drain_end {
            break;
        }
        if now_delivered != last {
            last = now_delivered;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    if let Some(task) = probe_task {
        task.await.context("the probe panicked")?;
    }
    for service in services {
        match tokio::time::timeout(Duration::from_secs(5), service).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e).context("a market service failed"),
            Ok(Err(e)) => return Err(e).context("a market service panicked"),
            Err(_) => bail!("a market service did not stop within 5 s"),
        }
    }
    drop(subscriber_client);
    drop(service_clients);

    let delivered = delivered();
    let mut latency_ns = new_histogram()?;
    let mut last_receive: Option<Instant> = None;
    let mut malformed = 0;
    for r in &recorders {
        latency_ns
            .add(&*lock(&r.latency_ns))
            .context("merging latency histograms")?;
        last_receive = last_receive.max(*lock(&r.last_receive));
        malformed += r.malformed.load(Ordering::Relaxed);
    }
    let elapsed = last_receive
        .map_or(phase.duration, |t| t.saturating_duration_since(start))
        .max(Duration::from_millis(1));
    #[allow(clippy::cast_precision_loss)]
    let delivered_per_sec = delivered as f64 / elapsed.as_secs_f64();
    Ok(PathResult {
        published,
        delivered,
        lost: published.saturating_sub(delivered),
        malformed,
        slow_consumer_events: counts.slow_consumer.load(Ordering::Relaxed)
            + hub_missed
                .iter()
                .map(|m| m.load(Ordering::Relaxed))
                .sum::<u64>(),
        disconnects: counts.disconnected.load(Ordering::Relaxed),
        delivered_per_sec,
        latency_ns,
    })
}
