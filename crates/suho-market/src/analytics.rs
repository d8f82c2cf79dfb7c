//! The analytics service: listens to every `market.*.tick`, builds candles per symbol
//! ([`crate::candles`]) and publishes them on `market.{SYM}.{tf}`; each closed candle of the
//! indicator timeframe (`1m`) feeds that symbol's indicators ([`crate::indicators`]), whose
//! readings go out on `indicators.{type}.{SYM}`.
//!
//! - A closed candle is published at once. The forming candle of each symbol and timeframe is
//!   published at most once per [`AnalyticsConfig::update_interval`] (its latest state), so
//!   the candle traffic does not grow with the tick rate: every tick would otherwise become
//!   seven candle messages. A forming candle is never published after its own closed one.
//! - Indicator types on the wire: `sma`, `ema`, `rsi`, `atr` (a number), `macd`
//!   (`{macd, signal, histogram}`) and `bollinger` (`{upper, middle, lower}`). An indicator
//!   publishes nothing while it warms up. `timestamp` is the `start` of the candle it was
//!   computed from.
//! - A timer (every second by default) closes candles whose window has ended by the service
//!   clock, so a quiet symbol still gets its closed candles. A closed candle is published
//!   once.
//! - Late ticks are dropped (see [`crate::candles`]), logged at debug and counted in the
//!   [`LATE_TICKS_METRIC`] counter (label `symbol`). Ticks stamped more than
//!   [`AnalyticsConfig::max_future_ms`] ahead of the service clock are dropped and counted in
//!   [`FUTURE_TICKS_METRIC`]: one tick from a feed with a wrong clock would otherwise push the
//!   watermark ahead and make every later tick of that symbol late.
//! - Ticks of symbols that are not configured are ignored.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use suho_domain::{subject, Candle, IndicatorValue, Symbol, Tick, Timeframe};
use suho_messaging::{now_ms, MarketBus};
use tokio_util::sync::CancellationToken;

use crate::candles::{CandleAggregator, TickDisposition};
use crate::hub::{with_own_hub, TickReceiver};
use crate::indicators::{IndicatorParams, IndicatorReadings, IndicatorSet};
use crate::MarketServiceError;

/// Counter of ticks dropped as late, label `symbol`.
pub const LATE_TICKS_METRIC: &str = "market_late_ticks_total";
/// Counter of ticks dropped for being stamped too far in the future, label `symbol`.
pub const FUTURE_TICKS_METRIC: &str = "market_future_ticks_total";

/// What the analytics service computes.
#[derive(Debug, Clone)]
pub struct AnalyticsConfig {
    /// Symbols to build candles for; ticks of other symbols are ignored.
    pub symbols: Vec<Symbol>,
    /// Candle timeframes (the indicator timeframe is always added).
    pub timeframes: Vec<Timeframe>,
    /// Timeframe whose closed candles feed the indicators.
    pub indicator_timeframe: Timeframe,
    /// Indicator periods.
    pub indicators: IndicatorParams,
    /// How often due candles are closed by the clock.
    pub close_interval: Duration,
    /// A candle closes by the clock once `now >= end + close_grace_ms`, leaving time for ticks
    /// delayed in transit.
    pub close_grace_ms: i64,
    /// Ticks stamped more than this ahead of the service clock are dropped; `None` accepts
    /// any timestamp.
    pub max_future_ms: Option<i64>,
    /// The forming candles are published (latest state) at most this often; `None` publishes
    /// every update, one message per tick and timeframe.
    pub update_interval: Option<Duration>,
    /// Told of every tick once it is applied (benchmarks).
    pub observer: Option<crate::TickObserver>,
    /// Closed candles of `indicator_timeframe` from before the start, oldest first, fed to the
    /// indicators before the first live candle with nothing published, so that after a
    /// restart the next closed candle has every reading instead of waiting (up to 35 candles)
    /// for the indicators to warm up again. Empty by default.
    pub history: Vec<Candle>,
}

impl AnalyticsConfig {
    /// Every timeframe, indicators on `1m` with the classic periods, a 1 s close timer with no
    /// grace, ticks at most 60 s in the future, forming candles at most every 100 ms.
    #[must_use]
    pub fn new(symbols: Vec<Symbol>) -> Self {
        Self {
            symbols,
            timeframes: Timeframe::ALL.to_vec(),
            indicator_timeframe: Timeframe::M1,
            indicators: IndicatorParams::default(),
            close_interval: Duration::from_secs(1),
            close_grace_ms: 0,
            max_future_ms: Some(60_000),
            update_interval: Some(Duration::from_millis(100)),
            observer: None,
            history: Vec::new(),
        }
    }
}

/// The indicator messages for one candle's readings (warming-up indicators left out), in the
/// order `sma ema rsi macd bollinger atr`.
#[must_use]
pub fn indicator_values(
    symbol: Symbol,
    timeframe: Timeframe,
    timestamp: i64,
    readings: &IndicatorReadings,
) -> Vec<IndicatorValue> {
    let number = |v: Option<f64>| v.map(|x| json!(x));
    let values = [
        ("sma", number(readings.sma)),
        ("ema", number(readings.ema)),
        ("rsi", number(readings.rsi)),
        (
            "macd",
            readings
                .macd
                .map(|m| json!({"macd": m.macd, "signal": m.signal, "histogram": m.histogram})),
        ),
        (
            "bollinger",
            readings
                .bollinger
                .map(|b| json!({"upper": b.upper, "middle": b.middle, "lower": b.lower})),
        ),
        ("atr", number(readings.atr)),
    ];
    values
        .into_iter()
        .filter_map(|(name, value)| {
            Some(IndicatorValue {
                symbol,
                indicator: name.to_string(),
                timeframe,
                value: value?,
                timestamp,
            })
        })
        .collect()
}

struct SymbolState {
    candles: CandleAggregator,
    indicators: IndicatorSet,
    /// Forming candles not yet published, at most one per timeframe.
    pending: Vec<Candle>,
}

/// Feeds the closed candles of `timeframe` in `history` to their symbols' indicators,
/// publishing nothing; how many were fed.
fn warm_indicators(
    states: &mut HashMap<Symbol, SymbolState>,
    timeframe: Timeframe,
    history: &[Candle],
) -> usize {
    let mut fed = 0;
    for candle in history {
        if !(candle.closed && candle.timeframe == timeframe) {
            continue;
        }
        if let Some(state) = states.get_mut(&candle.symbol) {
            let _ = state.indicators.update(candle);
            fed += 1;
        }
    }
    fed
}

struct Service {
    bus: MarketBus,
    config: AnalyticsConfig,
    states: HashMap<Symbol, SymbolState>,
}

impl Service {
    async fn on_tick(&mut self, tick: &Tick) -> Result<(), MarketServiceError> {
        let Some(state) = self.states.get_mut(&tick.symbol) else {
            tracing::trace!(symbol = %tick.symbol, "tick of an unconfigured symbol ignored");
            return Ok(());
        };
        if let Some(max) = self.config.max_future_ms {
            let now = now_ms();
            if tick.timestamp > now.saturating_add(max) {
                metrics::counter!(FUTURE_TICKS_METRIC, "symbol" => tick.symbol.to_string())
                    .increment(1);
                tracing::debug!(symbol = %tick.symbol, timestamp = tick.timestamp, now, "tick from the future dropped");
                return Ok(());
            }
        }
        let updates = state.candles.on_tick(tick);
        if updates.disposition == TickDisposition::Late {
            metrics::counter!(LATE_TICKS_METRIC, "symbol" => tick.symbol.to_string()).increment(1);
            tracing::debug!(
                symbol = %tick.symbol,
                timestamp = tick.timestamp,
                watermark = ?state.candles.watermark(),
                late_total = state.candles.late_ticks(),
                "late tick dropped"
            );
            return Ok(());
        }
        if self.config.update_interval.is_none() {
            let candles: Vec<Candle> = updates.iter().cloned().collect();
            return self.publish(tick.symbol, &candles).await;
        }
        for open in updates.current {
            match state
                .pending
                .iter_mut()
                .find(|c| c.timeframe == open.timeframe)
            {
                Some(slot) => *slot = open,
                None => state.pending.push(open),
            }
        }
        self.publish(tick.symbol, &updates.closed).await
    }

    /// Publishes the forming candles that changed since the last flush.
    async fn flush_forming(&mut self) -> Result<(), MarketServiceError> {
        let mut forming = Vec::new();
        for (&symbol, state) in &mut self.states {
            if !state.pending.is_empty() {
                forming.push((symbol, std::mem::take(&mut state.pending)));
            }
        }
        for (symbol, candles) in forming {
            self.publish(symbol, &candles).await?;
        }
        Ok(())
    }

    async fn close_due(&mut self) -> Result<(), MarketServiceError> {
        let due = now_ms().saturating_sub(self.config.close_grace_ms);
        let mut closed = Vec::new();
        for (&symbol, state) in &mut self.states {
            let candles = state.candles.close_due(due);
            if !candles.is_empty() {
                closed.push((symbol, candles));
            }
        }
        for (symbol, candles) in closed {
            self.publish(symbol, &candles).await?;
        }
        Ok(())
    }

    /// Publishes candles, and the indicators of the closed indicator-timeframe ones. A closed
    /// candle first drops its own forming state from the pending ones.
    async fn publish(
        &mut self,
        symbol: Symbol,
        candles: &[Candle],
    ) -> Result<(), MarketServiceError> {
        let prefix = self.bus.prefix().to_string();
        for candle in candles {
            if candle.closed {
                if let Some(state) = self.states.get_mut(&symbol) {
                    state
                        .pending
                        .retain(|p| !(p.timeframe == candle.timeframe && p.start <= candle.start));
                }
            }
            self.bus
                .publish(subject::candle(&prefix, symbol, candle.timeframe), candle)
                .await?;
            if !(candle.closed && candle.timeframe == self.config.indicator_timeframe) {
                continue;
            }
            let Some(state) = self.states.get_mut(&symbol) else {
                continue;
            };
            let readings = state.indicators.update(candle);
            for value in indicator_values(symbol, candle.timeframe, candle.start, &readings) {
                self.bus
                    .publish(
                        subject::indicator(&prefix, &value.indicator, symbol),
                        &value,
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

/// Runs the analytics service with [`AnalyticsConfig::new`] until `shutdown`.
///
/// # Errors
/// The NATS connection is gone for good.
pub async fn run_analytics(
    bus: MarketBus,
    symbols: Vec<Symbol>,
    shutdown: CancellationToken,
) -> Result<(), MarketServiceError> {
    run_analytics_with(bus, AnalyticsConfig::new(symbols), shutdown).await
}

/// Runs the analytics service with an explicit configuration, on a tick subscription of its
/// own, until `shutdown`.
///
/// # Errors
/// The NATS connection is gone for good.
pub async fn run_analytics_with(
    bus: MarketBus,
    config: AnalyticsConfig,
    shutdown: CancellationToken,
) -> Result<(), MarketServiceError> {
    let hub_bus = bus.clone();
    with_own_hub(&hub_bus, "market-analytics", &shutdown.clone(), |ticks| {
        run_analytics_on(bus, config, ticks, shutdown)
    })
    .await
}

/// Runs the analytics service on the ticks of a [`crate::TickHub`] until `shutdown` or until
/// the hub stops.
///
/// # Errors
/// The NATS connection is gone for good.
pub async fn run_analytics_on(
    bus: MarketBus,
    mut config: AnalyticsConfig,
    mut ticks: TickReceiver,
    shutdown: CancellationToken,
) -> Result<(), MarketServiceError> {
    let mut timeframes = config.timeframes.clone();
    timeframes.push(config.indicator_timeframe);
    timeframes.sort_unstable();
    timeframes.dedup();
    let mut states: HashMap<Symbol, SymbolState> = config
        .symbols
        .iter()
        .map(|&symbol| {
            (
                symbol,
                SymbolState {
                    candles: CandleAggregator::with_timeframes(symbol, &timeframes),
                    indicators: IndicatorSet::new(&config.indicators),
                    pending: Vec::new(),
                },
            )
        })
        .collect();
    let warmed = warm_indicators(
        &mut states,
        config.indicator_timeframe,
        &std::mem::take(&mut config.history),
    );
    if warmed > 0 {
        tracing::info!(candles = warmed, "indicators warmed up from stored candles");
    }
    let mut timer = tokio::time::interval(config.close_interval.max(Duration::from_millis(1)));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Without an update interval nothing is ever pending; the flush timer then idles.
    let mut flush = tokio::time::interval(
        config
            .update_interval
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(1)),
    );
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        symbols = config.symbols.len(),
        timeframes = timeframes.len(),
        indicator_timeframe = %config.indicator_timeframe,
        "analytics service building candles"
    );
    let mut service = Service {
        bus,
        config,
        states,
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            received = ticks.recv() => {
                let Some(received) = received else {
                    if !shutdown.is_cancelled() {
                        tracing::warn!("tick hub stopped; analytics service stopping");
                    }
                    return Ok(());
                };
                service.on_tick(&received.tick).await?;
                if let Some(observer) = &service.config.observer {
                    observer.observe(&received.message);
                }
            }
            _ = timer.tick() => service.close_due().await?,
            _ = flush.tick() => service.flush_forming().await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    fn candles(n: u32) -> Vec<Candle> {
        let eur = Symbol::parse("EURUSD").expect("symbol");
        (0..n)
            .map(|i| {
                let close = Decimal::new(110_000 + i64::from((i * 37) % 23) * 7, 5);
                let start = 1_710_496_800_000 + i64::from(i) * 60_000;
                Candle {
                    symbol: eur,
                    timeframe: Timeframe::M1,
                    open: close - Decimal::new(3, 5),
                    high: close + Decimal::new(9, 5),
                    low: close - Decimal::new(8, 5),
                    close,
                    volume: Decimal::TEN,
                    start,
                    end: start + 60_000,
                    closed: true,
                }
            })
            .collect()
    }

    fn states(config: &AnalyticsConfig) -> HashMap<Symbol, SymbolState> {
        config
            .symbols
            .iter()
            .map(|&s| {
                let state = SymbolState {
                    candles: CandleAggregator::with_timeframes(s, &[Timeframe::M1]),
                    indicators: IndicatorSet::new(&config.indicators),
                    pending: Vec::new(),
                };
                (s, state)
            })
            .collect()
    }

    #[test]
    fn warmed_up_indicators_read_the_next_candle_like_uninterrupted_ones() {
        let all = candles(60);
        let eur = all[0].symbol;
        let config = AnalyticsConfig::new(vec![eur]);
        let mut uninterrupted = states(&config);
        let mut expected = IndicatorReadings::default();
        for c in &all {
            expected = uninterrupted
                .get_mut(&eur)
                .expect("eur")
                .indicators
                .update(c);
        }
        assert!(
            expected.macd.is_some() && expected.atr.is_some(),
            "{expected:?}"
        );

        let mut restarted = states(&config);
        let mut other = all[..59].to_vec();
        other[3].timeframe = Timeframe::M5; // another timeframe is left out
        assert_eq!(
            warm_indicators(&mut restarted, Timeframe::M1, &all[..59]),
            59
        );
        let got = restarted
            .get_mut(&eur)
            .expect("eur")
            .indicators
            .update(&all[59]);
        assert_eq!(got, expected);

        let mut cold = states(&config);
        let cold = cold.get_mut(&eur).expect("eur").indicators.update(&all[59]);
        assert!(
            cold.macd.is_none(),
            "without the warm-up MACD warms up again"
        );
        assert_eq!(
            warm_indicators(&mut states(&config), Timeframe::M1, &other),
            58
        );
    }
}
