//! The signals service: closed candles in, signals and market alerts out, on NATS.
//!
//! - Subscribes to `market.*.{tf}` ([`suho_domain::subject::all_candles`], `tf` = 1m by
//!   default) and, when alerts are on, to `market.*.tick`. Forming candles (`closed: false`),
//!   candles of another timeframe, symbols that are not configured and malformed payloads are
//!   ignored (the last with a warning). A closed candle not after the symbol's previous one (a
//!   duplicate, or out of order) is ignored too, so every candle is seen once, in order.
//! - Every configured symbol has its own instance of every enabled strategy and its own
//!   [`MarketAlerts`]; a closed candle feeds the strategies (in the configured order) and then
//!   the candle alerts, a tick feeds the tick alerts. Signals go out on
//!   `signals.{strategy}.{SYM}`, alerts on `alerts.market.{type}`.
//! - The online model's state is restored at start from
//!   `<state_dir>/online-logistic-{SYM}.json` when present, saved there every
//!   [`SignalsConfig::save_interval`] when it changed, and on shutdown. A state file that
//!   cannot be used (another version, corrupt, other parameters) is moved aside to
//!   `<file>.rejected` with a warning and the model starts afresh.
//!
//! - Warm-up: [`SignalsConfig::history`] (the stored closed candles before the start, which
//!   `suho up` reads from PostgreSQL) is fed to the strategies and candle alerts before the
//!   first live candle, publishing nothing, so after a restart the strategies answer the next
//!   candle as if they had never stopped instead of waiting 20 to 70 candles to warm up. A
//!   restored online model (one with updates) has its own memory and is not fed them again.
//!
//! The service adds no wall-clock time to what it publishes: signals and alerts carry market
//! time, so a replay of the same candles and ticks publishes the same bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use suho_domain::{subject, Candle, MarketAlert, Signal, Symbol, Tick, Timeframe};
use suho_market::hub::{with_own_hub, TickReceiver};
use suho_messaging::{MarketBus, MessagingError};
use tokio_util::sync::CancellationToken;

use crate::alerts::{AlertConfig, MarketAlerts};
use crate::mean_reversion::{MeanReversion, MeanReversionParams};
use crate::online_logistic::{OnlineLogistic, OnlineLogisticParams, StateError, MODEL};
use crate::scalping::{Scalping, ScalpingParams};
use crate::strategy::{step, Strategy};

/// A built-in strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    /// [`Scalping`]: `signals.scalping.{SYM}`.
    Scalping,
    /// [`MeanReversion`]: `signals.mean_reversion.{SYM}`.
    MeanReversion,
    /// [`OnlineLogistic`]: `signals.online_logistic.{SYM}`.
    OnlineLogistic,
}

impl StrategyKind {
    /// Every built-in, in the default order.
    pub const ALL: [StrategyKind; 3] = [
        StrategyKind::Scalping,
        StrategyKind::MeanReversion,
        StrategyKind::OnlineLogistic,
    ];

    /// The strategy's name, the `{strategy}` token of its subject.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            StrategyKind::Scalping => crate::scalping::NAME,
            StrategyKind::MeanReversion => crate::mean_reversion::NAME,
            StrategyKind::OnlineLogistic => crate::online_logistic::NAME,
        }
    }

    /// The kind named `name` (as [`StrategyKind::name`] writes it).
    #[must_use]
    pub fn parse(name: &str) -> Option<StrategyKind> {
        Self::ALL.into_iter().find(|k| k.name() == name.trim())
    }
}

/// What the signals service runs.
#[derive(Debug, Clone)]
pub struct SignalsConfig {
    /// Symbols to run; candles and ticks of other symbols are ignored.
    pub symbols: Vec<Symbol>,
    /// Timeframe of the closed candles that drive the strategies and candle alerts (1m).
    pub timeframe: Timeframe,
    /// Enabled strategies, in the order they run on each candle (all three).
    pub strategies: Vec<StrategyKind>,
    /// Parameters of `scalping`.
    pub scalping: ScalpingParams,
    /// Parameters of `mean_reversion`.
    pub mean_reversion: MeanReversionParams,
    /// Parameters of `online_logistic`.
    pub online_logistic: OnlineLogisticParams,
    /// Alert thresholds; `None` turns the alerts (and the tick subscription) off.
    pub alerts: Option<AlertConfig>,
    /// Where the online model's state lives; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
    /// How often changed model state is saved (60 s); it is saved on shutdown too.
    pub save_interval: Duration,
    /// Closed candles of `timeframe` from before the start, oldest first, to warm the
    /// strategies with (see the module docs); nothing is published for them. Empty by default.
    pub history: Vec<Candle>,
}

impl SignalsConfig {
    /// Every strategy with its defaults on 1m candles, default alerts, no state directory,
    /// saving every 60 s.
    #[must_use]
    pub fn new(symbols: Vec<Symbol>) -> Self {
        Self {
            symbols,
            timeframe: Timeframe::M1,
            strategies: StrategyKind::ALL.to_vec(),
            scalping: ScalpingParams::default(),
            mean_reversion: MeanReversionParams::default(),
            online_logistic: OnlineLogisticParams::default(),
            alerts: Some(AlertConfig::default()),
            state_dir: None,
            save_interval: Duration::from_secs(60),
            history: Vec::new(),
        }
    }
}

/// `<dir>/online-logistic-{SYM}.json`: where a symbol's online model is saved.
#[must_use]
pub fn state_file(dir: &Path, symbol: Symbol) -> PathBuf {
    dir.join(format!("{MODEL}-{symbol}.json"))
}

/// The signals service stopped for a reason other than shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] MessagingError),
    /// The tick hub failed.
    #[error(transparent)]
    Ticks(#[from] suho_market::MarketServiceError),
    /// The state directory cannot be created.
    #[error("signals state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Saving a model's state on shutdown failed.
    #[error("saving the online model of {symbol}: {source}")]
    SaveState {
        /// The symbol.
        symbol: Symbol,
        /// Why.
        source: StateError,
    },
}

/// One strategy instance; the online model is kept by type so its state can be saved.
enum Slot {
    Plain(Box<dyn Strategy>),
    Online(Box<OnlineLogistic>),
}

impl Slot {
    fn strategy(&mut self) -> &mut dyn Strategy {
        match self {
            Slot::Plain(s) => s.as_mut(),
            Slot::Online(m) => m.as_mut(),
        }
    }
}

/// Everything of one symbol.
struct SymbolState {
    slots: Vec<Slot>,
    alerts: Option<MarketAlerts>,
    last_start: Option<i64>,
    /// The online model changed since it was last saved.
    dirty: bool,
    /// The online model was restored from its state file (the warm-up leaves it out).
    online_restored: bool,
}

impl SymbolState {
    fn online(&self) -> Option<&OnlineLogistic> {
        self.slots.iter().find_map(|s| match s {
            Slot::Online(m) => Some(m.as_ref()),
            Slot::Plain(_) => None,
        })
    }

    /// Feeds a candle from before the start: what it decides is not published, and an
    /// online model that was restored (it has updates) is left out.
    fn warm(&mut self, candle: &Candle) {
        let _ = self.feed(candle, !self.online_restored);
    }

    fn on_candle(&mut self, candle: &Candle) -> (Vec<Signal>, Vec<MarketAlert>) {
        self.feed(candle, true)
    }

    /// Feeds a candle after the previous one to the strategies (the online model only if
    /// `online`) and the candle alerts; what they decided. An earlier or repeated candle is
    /// ignored.
    fn feed(&mut self, candle: &Candle, online: bool) -> (Vec<Signal>, Vec<MarketAlert>) {
        if self.last_start.is_some_and(|s| candle.start <= s) {
            return (Vec::new(), Vec::new());
        }
        self.last_start = Some(candle.start);
        let mut signals = Vec::new();
        for slot in &mut self.slots {
            if matches!(slot, Slot::Online(_)) {
                if !online {
                    continue;
                }
                self.dirty = true;
            }
            signals.extend(step(slot.strategy(), candle));
        }
        let alerts = self
            .alerts
            .as_mut()
            .map(|a| a.on_candle(candle))
            .unwrap_or_default();
        (signals, alerts)
    }
}

/// Moves an unusable state file aside so it is neither lost nor loaded again.
fn reject(path: &Path, why: &dyn std::fmt::Display) {
    let mut aside = path.as_os_str().to_os_string();
    aside.push(".rejected");
    let moved = std::fs::rename(path, &aside);
    tracing::warn!(
        file = %path.display(),
        moved_to = %Path::new(&aside).display(),
        moved = moved.is_ok(),
        reason = %why,
        "online model state not usable; starting the model afresh"
    );
}

/// The symbol's online model: restored from its state file when there is a usable one.
fn load_online(config: &SignalsConfig, symbol: Symbol) -> OnlineLogistic {
    let fresh = || OnlineLogistic::new(config.online_logistic);
    let Some(dir) = &config.state_dir else {
        return fresh();
    };
    let path = state_file(dir, symbol);
    if !path.exists() {
        return fresh();
    }
    match OnlineLogistic::load_from(&path) {
        Ok(m) if *m.params() == config.online_logistic => {
            tracing::info!(%symbol, updates = m.updates(), file = %path.display(), "online model restored");
            m
        }
        Ok(m) => {
            reject(
                &path,
                &format!(
                    "saved parameters {:?} differ from the configured {:?}",
                    m.params(),
                    config.online_logistic
                ),
            );
            fresh()
        }
        Err(e) => {
            reject(&path, &e);
            fresh()
        }
    }
}

/// Publishes alerts on `alerts.market.{type}`. (A free function: the service holds
/// strategies that are `Send` but not `Sync`, so `&Service` must not live across an await.)
async fn publish_alerts(bus: &MarketBus, alerts: &[MarketAlert]) -> Result<(), SignalsError> {
    for alert in alerts {
        bus.publish(subject::alert(bus.prefix(), &alert.kind), alert)
            .await?;
    }
    Ok(())
}

/// Every configured symbol's strategies (the online model restored from its state file when
/// there is a usable one) and alerts.
fn symbol_states(config: &SignalsConfig) -> HashMap<Symbol, SymbolState> {
    config
        .symbols
        .iter()
        .map(|&symbol| {
            let slots: Vec<Slot> = config
                .strategies
                .iter()
                .map(|kind| match kind {
                    StrategyKind::Scalping => Slot::Plain(Box::new(Scalping::new(config.scalping))),
                    StrategyKind::MeanReversion => {
                        Slot::Plain(Box::new(MeanReversion::new(config.mean_reversion)))
                    }
                    StrategyKind::OnlineLogistic => {
                        Slot::Online(Box::new(load_online(config, symbol)))
                    }
                })
                .collect();
            let online_restored = slots.iter().any(|s| match s {
                Slot::Online(m) => m.updates() > 0,
                Slot::Plain(_) => false,
            });
            let state = SymbolState {
                slots,
                alerts: config
                    .alerts
                    .map(|a| MarketAlerts::new(symbol, config.timeframe, a)),
                last_start: None,
                dirty: false,
                online_restored,
            };
            (symbol, state)
        })
        .collect()
}

/// Feeds the closed candles of `timeframe` in `history` to their symbols' states, publishing
/// nothing (see [`SignalsConfig::history`]).
fn warm_up(states: &mut HashMap<Symbol, SymbolState>, timeframe: Timeframe, history: &[Candle]) {
    let mut fed = 0_usize;
    for candle in history {
        if !candle.closed || candle.timeframe != timeframe {
            continue;
        }
        if let Some(state) = states.get_mut(&candle.symbol) {
            state.warm(candle);
            fed += 1;
        }
    }
    if fed > 0 {
        tracing::info!(candles = fed, "signals warmed up from stored candles");
    }
}

struct Service {
    bus: MarketBus,
    config: SignalsConfig,
    states: HashMap<Symbol, SymbolState>,
}

impl Service {
    fn new(bus: MarketBus, mut config: SignalsConfig) -> Self {
        let mut states = symbol_states(&config);
        warm_up(
            &mut states,
            config.timeframe,
            &std::mem::take(&mut config.history),
        );
        Self {
            bus,
            config,
            states,
        }
    }

    async fn on_candle(&mut self, candle: &Candle) -> Result<(), SignalsError> {
        if !candle.closed || candle.timeframe != self.config.timeframe {
            return Ok(());
        }
        let Some(state) = self.states.get_mut(&candle.symbol) else {
            tracing::trace!(symbol = %candle.symbol, "candle of an unconfigured symbol ignored");
            return Ok(());
        };
        let (signals, alerts) = state.on_candle(candle);
        let prefix = self.bus.prefix();
        for signal in &signals {
            self.bus
                .publish(
                    subject::signal(prefix, &signal.strategy, signal.symbol),
                    signal,
                )
                .await?;
        }
        publish_alerts(&self.bus, &alerts).await
    }

    async fn on_tick(&mut self, tick: &Tick) -> Result<(), SignalsError> {
        let alert = self
            .states
            .get_mut(&tick.symbol)
            .and_then(|s| s.alerts.as_mut())
            .and_then(|a| a.on_tick(tick));
        match alert {
            Some(a) => publish_alerts(&self.bus, std::slice::from_ref(&a)).await,
            None => Ok(()),
        }
    }

    /// Saves every changed online model; the first failure is returned after trying all.
    fn save_changed(&mut self) -> Result<(), SignalsError> {
        let Some(dir) = self.config.state_dir.clone() else {
            return Ok(());
        };
        let mut first_error = None;
        let mut symbols: Vec<Symbol> = self.states.keys().copied().collect();
        symbols.sort_unstable();
        for symbol in symbols {
            let Some(state) = self.states.get_mut(&symbol) else {
                continue;
            };
            if !state.dirty {
                continue;
            }
            let Some(model) = state.online() else {
                continue;
            };
            match model.save_to(&state_file(&dir, symbol)) {
                Ok(()) => state.dirty = false,
                Err(source) => {
                    first_error.get_or_insert(SignalsError::SaveState { symbol, source });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs on the candles and, for the market alerts, on `ticks`.
    async fn run(
        &mut self,
        mut ticks: Option<TickReceiver>,
        shutdown: &CancellationToken,
    ) -> Result<(), SignalsError> {
        let prefix = self.bus.prefix().to_string();
        let mut candles = self
            .bus
            .subscribe(subject::all_candles(&prefix, self.config.timeframe))
            .await?;
        let mut saver =
            tokio::time::interval(self.config.save_interval.max(Duration::from_millis(10)));
        saver.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        saver.tick().await;
        tracing::info!(
            symbols = self.config.symbols.len(),
            strategies = ?self.config.strategies.iter().map(StrategyKind::name).collect::<Vec<_>>(),
            timeframe = %self.config.timeframe,
            alerts = self.config.alerts.is_some(),
            "signals service listening"
        );
        loop {
            let next_tick = async {
                match ticks.as_mut() {
                    Some(t) => t.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                msg = candles.next() => {
                    let Some(msg) = msg else {
                        tracing::warn!("candle subscription ended; signals service stopping");
                        return Ok(());
                    };
                    match serde_json::from_slice::<Candle>(&msg.payload) {
                        Ok(candle) => self.on_candle(&candle).await?,
                        Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "ignoring a malformed candle"),
                    }
                }
                received = next_tick => {
                    let Some(received) = received else {
                        if !shutdown.is_cancelled() {
                            tracing::warn!("tick hub stopped; signals service stopping");
                        }
                        return Ok(());
                    };
                    self.on_tick(&received.tick).await?;
                }
                _ = saver.tick() => {
                    if let Err(e) = self.save_changed() {
                        tracing::warn!(error = %e, "saving the online model state failed; will retry");
                    }
                }
            }
        }
    }
}

/// Runs the signals service until `shutdown` (see the module docs), then saves the online
/// models' state. With market alerts configured it takes the ticks from a subscription of
/// its own.
///
/// # Errors
/// [`SignalsError::StateDir`] when the state directory cannot be created,
/// [`SignalsError::Bus`] when the NATS connection is gone for good, and
/// [`SignalsError::SaveState`] when the final save of a model's state fails.
pub async fn run_signals(
    bus: MarketBus,
    config: SignalsConfig,
    shutdown: CancellationToken,
) -> Result<(), SignalsError> {
    if config.alerts.is_none() {
        return run(bus, config, None, shutdown).await;
    }
    let hub_bus = bus.clone();
    with_own_hub(&hub_bus, "signals", &shutdown.clone(), |ticks| {
        run(bus, config, Some(ticks), shutdown)
    })
    .await
}

/// [`run_signals`] on the ticks of the process's [`suho_market::TickHub`] (used only for the
/// market alerts; without them the ticks are dropped unread).
///
/// # Errors
/// As [`run_signals`].
pub async fn run_signals_on(
    bus: MarketBus,
    config: SignalsConfig,
    ticks: TickReceiver,
    shutdown: CancellationToken,
) -> Result<(), SignalsError> {
    let ticks = config.alerts.is_some().then_some(ticks);
    run(bus, config, ticks, shutdown).await
}

async fn run(
    bus: MarketBus,
    config: SignalsConfig,
    ticks: Option<TickReceiver>,
    shutdown: CancellationToken,
) -> Result<(), SignalsError> {
    if let Some(dir) = &config.state_dir {
        std::fs::create_dir_all(dir).map_err(|source| SignalsError::StateDir {
            path: dir.clone(),
            source,
        })?;
    }
    let mut service = Service::new(bus, config);
    let ran = service.run(ticks, &shutdown).await;
    let saved = service.save_changed();
    tracing::info!(stopped_by_shutdown = ran.is_ok(), "signals service stopped");
    ran.and(saved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;

    /// What the states publish for `candles` fed live: signals and alerts, as JSON.
    fn live(states: &mut HashMap<Symbol, SymbolState>, candles: &[Candle]) -> Vec<String> {
        let mut out = Vec::new();
        for c in candles {
            let (signals, alerts) = states.get_mut(&c.symbol).expect("configured").on_candle(c);
            out.extend(
                signals
                    .iter()
                    .map(|s| serde_json::to_string(s).expect("json")),
            );
            out.extend(
                alerts
                    .iter()
                    .map(|a| serde_json::to_string(a).expect("json")),
            );
        }
        out
    }

    #[test]
    fn a_warmed_up_service_answers_like_one_that_never_stopped() {
        let closes: Vec<f64> = (0..300_u32)
            .map(|i| {
                let x = f64::from(i);
                1.1 + 0.002 * (x / 7.0).sin() + 0.0006 * (x / 2.3).cos()
            })
            .collect();
        let all = test_support::candles(&closes);
        let (before, after) = all.split_at(200);
        let config = SignalsConfig::new(vec![test_support::eur()]);

        let mut never_stopped = symbol_states(&config);
        let _ = live(&mut never_stopped, before);
        let expected = live(&mut never_stopped, after);
        assert!(expected.len() > 3, "the series gives signals: {expected:?}");

        let mut restarted = symbol_states(&config);
        warm_up(&mut restarted, Timeframe::M1, before);
        assert_eq!(
            restarted[&test_support::eur()].last_start,
            Some(before[199].start)
        );
        // A stored candle delivered live again is ignored.
        assert!(live(&mut restarted, &before[199..]).is_empty());
        assert_eq!(live(&mut restarted, after), expected);

        let mut cold = symbol_states(&config);
        assert_ne!(
            live(&mut cold, after),
            expected,
            "without the warm-up the strategies start over"
        );

        // A restored online model keeps its own memory: the warm-up does not feed it again.
        let dir = std::env::temp_dir().join(format!("suho-warm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = SignalsConfig {
            state_dir: Some(dir.clone()),
            ..config
        };
        let trained = never_stopped[&test_support::eur()]
            .online()
            .expect("an online model");
        trained
            .save_to(&state_file(&dir, test_support::eur()))
            .expect("save");
        let updates = trained.updates();
        let mut restored = symbol_states(&config);
        warm_up(&mut restored, Timeframe::M1, before);
        let state = &restored[&test_support::eur()];
        assert!(state.online_restored);
        assert_eq!(state.online().expect("model").updates(), updates);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kinds_and_files() {
        for k in StrategyKind::ALL {
            assert_eq!(StrategyKind::parse(k.name()), Some(k));
        }
        assert_eq!(StrategyKind::parse("nope"), None);
    }

    #[test]
    fn an_unusable_state_file_is_moved_aside_and_the_model_starts_afresh() {
        let dir = std::env::temp_dir().join(format!("suho-signals-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let eur = Symbol::parse("EURUSD").expect("sym");
        let config = SignalsConfig {
            state_dir: Some(dir.clone()),
            ..SignalsConfig::new(vec![eur])
        };
        let path = state_file(&dir, eur);
        std::fs::write(&path, r#"{"model":"online-logistic","version":7}"#).expect("write");
        let m = load_online(&config, eur);
        assert_eq!(m.updates(), 0);
        assert!(!path.exists());
        assert!(dir.join("online-logistic-EURUSD.json.rejected").exists());
        // Other parameters than configured: also afresh.
        let other = OnlineLogistic::new(OnlineLogisticParams {
            window: 99,
            ..OnlineLogisticParams::default()
        });
        other.save_to(&path).expect("save");
        assert_eq!(*load_online(&config, eur).params(), config.online_logistic);
        // A matching state is restored.
        OnlineLogistic::new(config.online_logistic)
            .save_to(&path)
            .expect("save");
        assert!(path.exists());
        let _ = load_online(&config, eur);
        assert!(path.exists(), "a usable state stays in place");
        let _ = std::fs::remove_dir_all(&dir);
        let eur = Symbol::parse("EURUSD").expect("sym");
        assert_eq!(
            state_file(Path::new("/s"), eur),
            PathBuf::from("/s/online-logistic-EURUSD.json")
        );
    }
}
