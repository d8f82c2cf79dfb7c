//! The Polygon.io wiring: `suho-polygon`'s adapters know nothing about NATS or PostgreSQL, so
//! this glue puts what they yield on the market subjects and into the data bridge's store.
//!
//! - [`run_live`] (`market.feed = "polygon"`): runs [`PolygonLive`] and publishes each quote on
//!   `market.{SYM}.tick`, logging its counters every [`STATS_EVERY`]. Polygon's minute
//!   aggregates are counted, not republished: the analytics service builds every timeframe,
//!   `1m` included, from the quotes, as it does for every feed, and a second closed candle for
//!   the same minute on `market.{SYM}.1m` would leave consumers to guess which one counts. Dropped connections are retried inside
//!   `PolygonLive`; an authentication failure ends the feed with an error, which stops the
//!   platform.
//! - [`backfill`] (`suho backfill`): runs [`PolygonHistory`] for each symbol into a
//!   [`StoreCheckpoint`], a [`BarCheckpoint`] over the bridge's `market_candles` table, which
//!   also publishes each newly stored bar on `market.{SYM}.{tf}` (closed).
//!
//! Resume: a backfill of `[from, to]` continues one period after the latest stored bar inside
//! that range. Bars are stored with `ON CONFLICT DO NOTHING` on `(symbol, timeframe, start)`,
//! so a rerun never duplicates a row. The store has no source column: candles that the platform
//! aggregated from live ticks inside the range count as stored, so a range overlapping a live
//! session resumes after the session's last candle.

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use suho_config::Config;
use suho_domain::{subject, Candle, Symbol, Timeframe};
use suho_messaging::MarketBus;
use suho_polygon::{
    BarCheckpoint, CheckpointError, DownloadSummary, LiveEvent, LiveStats, PolygonHistory,
    PolygonLive,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the live feed logs its counters.
pub const STATS_EVERY: Duration = Duration::from_secs(30);

/// Events buffered between the WebSocket client and the publisher.
const EVENT_BUFFER: usize = 4096;

const DAY_MS: i64 = 86_400_000;

/// The adapters' settings from the `[polygon]` section.
///
/// # Errors
/// `polygon.api_key` is not set, or a setting the adapter refuses (each names its field).
pub fn adapter_config(config: &Config) -> anyhow::Result<suho_polygon::PolygonConfig> {
    let p = &config.polygon;
    let key = p
        .key()
        .context("polygon.api_key is not set (SUHO__POLYGON__API_KEY or [polygon] api_key)")?;
    let mut c = suho_polygon::PolygonConfig::new(key.expose_secret());
    c.ws_url.clone_from(&p.ws_url);
    c.rest_url.clone_from(&p.rest_url);
    c.request_timeout = Duration::from_millis(p.request_timeout_ms);
    c.idle_timeout = Duration::from_millis(p.idle_timeout_ms);
    c.backoff_initial = Duration::from_millis(p.backoff_initial_ms);
    c.backoff_max = Duration::from_millis(p.backoff_max_ms);
    c.validate().context("[polygon] settings")?;
    Ok(c)
}

/// What the live feed published.
#[derive(Debug, Default, Clone, Copy)]
struct Published {
    ticks: u64,
}

fn log_stats(stats: &LiveStats, published: Published, what: &'static str) {
    tracing::info!(
        quotes = stats.quotes(),
        minutes = stats.minutes(),
        ticks_published = published.ticks,
        malformed = stats.malformed(),
        connections = stats.connections(),
        reconnects = stats.reconnects(),
        "{what}"
    );
}

/// Streams Polygon's quotes of `symbols` onto `market.{SYM}.tick` until `shutdown`.
///
/// # Errors
/// The key was rejected (`polygon authentication failed: ...`), reconnects were exhausted (when
/// limited), or the NATS connection is gone.
pub async fn run_live(
    bus: MarketBus,
    live: PolygonLive,
    symbols: Vec<Symbol>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stats = live.stats();
    let (tx, mut rx) = mpsc::channel::<LiveEvent>(EVENT_BUFFER);
    tracing::info!(symbols = symbols.len(), "polygon live feed starting");
    let client = async {
        live.run(&symbols, tx, shutdown.clone())
            .await
            .context("the Polygon live feed (market.feed = \"polygon\")")
    };
    let publisher = async {
        let mut published = Published::default();
        let first = tokio::time::Instant::now() + STATS_EVERY;
        let mut every = tokio::time::interval_at(first, STATS_EVERY);
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    None => break,
                    Some(LiveEvent::Quote(tick)) => {
                        bus.publish(subject::tick(bus.prefix(), tick.symbol), &tick).await?;
                        published.ticks += 1;
                    }
                    // Counted in `stats.minutes()`; see the module docs.
                    Some(LiveEvent::Minute(_)) => {}
                },
                _ = every.tick() => log_stats(&stats, published, "polygon live feed"),
            }
        }
        log_stats(&stats, published, "polygon live feed stopped");
        anyhow::Ok(())
    };
    // The client ends on shutdown (dropping the sender, so the publisher drains and ends) or on
    // a fatal error; a publish failure drops the client.
    tokio::try_join!(client, publisher).map(|_| ())
}

/// A [`BarCheckpoint`] over the data bridge's candle store, for one download range: it resumes
/// after the latest stored bar inside `[from_ms, to_ms]` and publishes each stored bar on
/// `market.{SYM}.{tf}` when it has a bus.
pub struct StoreCheckpoint<'a> {
    store: &'a suho_bridge::Store,
    bus: Option<&'a MarketBus>,
    from_ms: i64,
    to_ms: i64,
}

impl<'a> StoreCheckpoint<'a> {
    /// A checkpoint of `[from_ms, to_ms]` (inclusive) in `store`, publishing on `bus` if given.
    #[must_use]
    pub fn new(
        store: &'a suho_bridge::Store,
        bus: Option<&'a MarketBus>,
        from_ms: i64,
        to_ms: i64,
    ) -> Self {
        Self {
            store,
            bus,
            from_ms,
            to_ms,
        }
    }
}

impl BarCheckpoint for StoreCheckpoint<'_> {
    async fn last_bar_start(
        &self,
        symbol: Symbol,
        timeframe: Timeframe,
    ) -> Result<Option<i64>, CheckpointError> {
        self.store
            .last_candle_start(symbol, timeframe, self.from_ms, self.to_ms)
            .await
            .map_err(|e| CheckpointError::new(format!("reading the last stored candle: {e}")))
    }

    async fn store(&self, bars: &[Candle]) -> Result<(), CheckpointError> {
        self.store
            .write(&[], bars)
            .await
            .map_err(|e| CheckpointError::new(format!("storing candles: {e}")))?;
        if let Some(bus) = self.bus {
            for bar in bars {
                let to = subject::candle(bus.prefix(), bar.symbol, bar.timeframe);
                bus.publish(to, bar)
                    .await
                    .map_err(|e| CheckpointError::new(format!("publishing a stored bar: {e}")))?;
            }
        }
        Ok(())
    }
}

/// What `suho backfill` downloads.
#[derive(Debug, Clone)]
pub struct BackfillRequest {
    /// The pairs, one download each, in order.
    pub symbols: Vec<Symbol>,
    /// The bar length.
    pub timeframe: Timeframe,
    /// First bar start wanted, epoch ms.
    pub from_ms: i64,
    /// Last bar start wanted, epoch ms (inclusive).
    pub to_ms: i64,
    /// Publish each stored bar on `market.{SYM}.{tf}`.
    pub publish: bool,
    /// Draw the adapter's progress bar (only when stderr is a terminal).
    pub progress: bool,
}

/// Downloads `request` from Polygon's REST API into the candle store, resuming where an earlier
/// run of the same range stopped.
///
/// # Errors
/// `polygon.api_key` is missing, PostgreSQL or NATS is unreachable, or a download failed (the
/// bars stored before the failure stay stored, so running it again resumes).
pub async fn backfill(
    config: &Config,
    request: &BackfillRequest,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<DownloadSummary>> {
    anyhow::ensure!(
        request.from_ms <= request.to_ms,
        "--from must not be after --to"
    );
    let history = PolygonHistory::new(adapter_config(config)?)
        .context("[polygon] settings")?
        .with_progress(request.progress);
    // The bars go where the bridge keeps them, through the bridge's role.
    let pool = suho_database::pool_of(
        config,
        suho_database::Login::Service(suho_security::Identity::Bridge),
        2,
    )
    .await?;
    let store = suho_bridge::Store::open(pool)
        .await
        .context("opening the candle store")?;
    let bus = if request.publish {
        let bus = MarketBus::connect(config, suho_security::Identity::Feed)
            .await
            .context("connecting to NATS (nats.url) to publish the bars")?;
        Some(bus)
    } else {
        None
    };
    let mut summaries = Vec::with_capacity(request.symbols.len());
    for &symbol in &request.symbols {
        let tf = request.timeframe;
        let checkpoint = StoreCheckpoint::new(&store, bus.as_ref(), request.from_ms, request.to_ms);
        let summary = history
            .fetch_aggregates(
                symbol,
                tf,
                request.from_ms,
                request.to_ms,
                &checkpoint,
                shutdown,
            )
            .await
            .with_context(|| format!("backfilling {symbol} {tf}"))?;
        tracing::info!(
            %symbol,
            timeframe = %tf,
            resumed = summary.resumed,
            start_ms = summary.start_ms,
            pages = summary.pages,
            bars_stored = summary.bars_stored,
            malformed = summary.malformed,
            "backfill done"
        );
        summaries.push(summary);
    }
    if let Some(bus) = bus {
        // Core NATS publishes are buffered: send them before the process exits.
        bus.client()
            .flush()
            .await
            .context("flushing the published bars to NATS")?;
    }
    Ok(summaries)
}

/// A `--from` / `--to` bound: `YYYY-MM-DD` (UTC midnight, or the day's last millisecond when
/// `end_of_day`) or epoch milliseconds.
///
/// # Errors
/// Anything else, quoting the input.
pub fn parse_bound(input: &str, end_of_day: bool) -> anyhow::Result<i64> {
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .with_context(|| format!("`{input}` is out of range"));
    }
    let bad = || anyhow::anyhow!("`{input}` is not a date (YYYY-MM-DD) or epoch milliseconds");
    let mut parts = s.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let num = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<i64>().ok())
            .flatten()
    };
    let (Some(y), Some(m), Some(d)) = (num(y, 4), num(m, 2), num(d, 2)) else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return Err(bad());
    }
    let start = days_from_civil(y, m, d) * DAY_MS;
    Ok(if end_of_day {
        start + DAY_MS - 1
    } else {
        start
    })
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_utc_days_or_epoch_ms() {
        assert_eq!(parse_bound("1970-01-01", false).unwrap(), 0);
        assert_eq!(parse_bound("2024-01-11", false).unwrap(), 1_704_931_200_000);
        assert_eq!(
            parse_bound("2024-01-11", true).unwrap(),
            1_704_931_200_000 + DAY_MS - 1
        );
        assert_eq!(
            parse_bound("2024-03-01", false).unwrap() - parse_bound("2024-02-29", false).unwrap(),
            DAY_MS
        );
        assert_eq!(
            parse_bound("1704931200000", true).unwrap(),
            1_704_931_200_000
        );
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-1-1",
            "yesterday",
            "",
            "2024-01-01T00",
        ] {
            let err = parse_bound(bad, false).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn the_adapter_gets_the_configured_key_and_urls() {
        let mut c = Config::default();
        assert!(adapter_config(&c)
            .unwrap_err()
            .to_string()
            .contains("polygon.api_key"));
        c.polygon.api_key = Some("k-123".to_string().into());
        c.polygon.ws_url = "ws://127.0.0.1:1/forex".into();
        c.polygon.backoff_initial_ms = 7;
        let a = adapter_config(&c).unwrap();
        assert_eq!(a.api_key.expose_secret(), "k-123");
        assert_eq!(a.ws_url, "ws://127.0.0.1:1/forex");
        assert_eq!(a.backoff_initial, Duration::from_millis(7));
    }
}
