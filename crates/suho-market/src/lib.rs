//! The market-data domain: feeds (synthetic, or a recorded file replayed) publish
//! `market.{SYM}.tick` on NATS; the price service answers `market.{SYM}.price` from the
//! latest quotes it has heard; analytics turns ticks into candles and indicators. A process
//! subscribes to the ticks once, through a [`TickHub`], and its services share the parsed
//! ticks.
//!
//! Nothing here touches Kafka: market data never goes to the user-event log.

pub mod analytics;
pub mod candles;
pub mod hub;
pub mod indicators;
pub mod price;
pub mod replay;
pub mod synthetic;

pub use analytics::{run_analytics, run_analytics_on, run_analytics_with, AnalyticsConfig};
pub use candles::{CandleAggregator, CandleUpdates, TickDisposition};
pub use hub::{ReceivedTick, TickHub, TickReceiver};
pub use indicators::{
    Atr, Bollinger, BollingerValue, Ema, IndicatorParams, IndicatorReadings, IndicatorSet, Macd,
    MacdValue, Rsi, Sma,
};
pub use price::{run_price_service, run_price_service_on, PriceServiceConfig};
pub use replay::{run_replay, Recording, ReplayError, ReplayOptions, ReplayRecord};
pub use synthetic::{run_feed, Regime, Session, SyntheticFeed, TradingHours};

/// Called by a market service with each tick message once the service has applied it: the
/// market benchmark measures latency through the real services with it.
#[derive(Clone)]
pub struct TickObserver(std::sync::Arc<dyn Fn(&async_nats::Message) + Send + Sync>);

impl TickObserver {
    /// An observer calling `f`.
    pub fn new(f: impl Fn(&async_nats::Message) + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }

    /// Reports one applied tick.
    pub fn observe(&self, msg: &async_nats::Message) {
        (self.0)(msg);
    }
}

impl std::fmt::Debug for TickObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TickObserver")
    }
}

/// A market service stopped for a reason other than shutdown.
#[derive(Debug, thiserror::Error)]
pub enum MarketServiceError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] suho_messaging::MessagingError),
    /// A configured symbol is not a symbol.
    #[error("market.symbols: {0}")]
    Symbol(#[from] suho_domain::SymbolError),
}

/// The configured symbols, validated.
///
/// # Errors
/// A configured symbol does not parse.
pub fn configured_symbols(
    config: &suho_config::MarketConfig,
) -> Result<Vec<suho_domain::Symbol>, MarketServiceError> {
    config
        .symbols
        .iter()
        .map(|s| suho_domain::Symbol::parse(s).map_err(MarketServiceError::from))
        .collect()
}
