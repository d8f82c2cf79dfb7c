//! The latest-price service: listens to every `market.*.tick`, keeps the newest quote per
//! symbol, and answers `market.{SYM}.price` requests from that cache. It always replies:
//! a quote, or `{error: "no_quote" | "stale" | "unknown_symbol"}`, never silence.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use suho_domain::{PriceError, PriceQuote, PriceReply, Symbol, Tick};
use suho_messaging::{now_ms, MarketBus};
use tokio_util::sync::CancellationToken;

use crate::hub::{with_own_hub, ReceivedTick, TickReceiver};
use crate::MarketServiceError;

/// What the service quotes and how old a quote may be.
#[derive(Debug, Clone)]
pub struct PriceServiceConfig {
    /// Symbols it answers for; others get `unknown_symbol`.
    pub symbols: HashSet<Symbol>,
    /// Older quotes are answered with `stale`.
    pub max_age_ms: i64,
    /// Told of every tick once it is cached (benchmarks).
    pub observer: Option<crate::TickObserver>,
}

/// The reply to a price request for the symbol spelled `requested`; `latest` gives the
/// newest tick cached for a symbol.
pub fn answer<'a>(
    latest: impl FnOnce(Symbol) -> Option<&'a Tick>,
    config: &PriceServiceConfig,
    requested: &str,
    now_ms: i64,
) -> PriceReply {
    let symbol = match Symbol::parse(requested) {
        Ok(s) if config.symbols.contains(&s) => s,
        Ok(s) => {
            return PriceReply::Error(PriceError::unknown_symbol(format!(
                "{s} is not quoted here"
            )))
        }
        Err(e) => return PriceReply::Error(PriceError::unknown_symbol(e.to_string())),
    };
    match latest(symbol) {
        None => PriceReply::Error(PriceError::no_quote()),
        Some(tick) => {
            let quote = PriceQuote::from_tick(tick, now_ms);
            if quote.age_ms > config.max_age_ms {
                PriceReply::Error(PriceError::stale(quote.age_ms))
            } else {
                PriceReply::Quote(quote)
            }
        }
    }
}

/// Runs the service, on a tick subscription of its own, until `shutdown`.
///
/// # Errors
/// The NATS connection is gone for good.
pub async fn run_price_service(
    bus: MarketBus,
    config: PriceServiceConfig,
    shutdown: CancellationToken,
) -> Result<(), MarketServiceError> {
    let hub_bus = bus.clone();
    with_own_hub(&hub_bus, "price-service", &shutdown.clone(), |ticks| {
        run_price_service_on(bus, config, ticks, shutdown)
    })
    .await
}

/// Runs the service on the ticks of a [`crate::TickHub`] until `shutdown` or until the hub
/// stops.
///
/// # Errors
/// The NATS connection is gone for good.
pub async fn run_price_service_on(
    bus: MarketBus,
    config: PriceServiceConfig,
    mut ticks: TickReceiver,
    shutdown: CancellationToken,
) -> Result<(), MarketServiceError> {
    let prefix = bus.prefix().to_string();
    let mut requests = bus
        .subscribe(suho_domain::subject::all_prices(&prefix))
        .await?;
    // The newest tick per symbol, shared with the hub (no copy per tick).
    let mut cache: HashMap<Symbol, Arc<ReceivedTick>> = HashMap::new();
    tracing::info!(
        symbols = config.symbols.len(),
        max_age_ms = config.max_age_ms,
        "price service answering"
    );
    loop {
        tokio::select! {
            Some(received) = ticks.recv() => {
                let symbol = received.tick.symbol;
                let newer = cache
                    .get(&symbol)
                    .is_none_or(|old| old.tick.timestamp <= received.tick.timestamp);
                if newer {
                    cache.insert(symbol, Arc::clone(&received));
                }
                if let Some(observer) = &config.observer {
                    observer.observe(&received.message);
                }
            }
            Some(msg) = requests.next() => {
                let Some(reply_to) = msg.reply else { continue };
                // `market.{SYM}.price`: the middle token, whatever its spelling.
                let requested = msg
                    .subject
                    .strip_prefix(prefix.as_str())
                    .and_then(|s| s.strip_prefix("market."))
                    .and_then(|s| s.strip_suffix(".price"))
                    .unwrap_or_default();
                let reply = answer(|s| cache.get(&s).map(|r| &r.tick), &config, requested, now_ms());
                let payload = Bytes::from(serde_json::to_vec(&reply).map_err(suho_messaging::MessagingError::from)?);
                if let Err(e) = bus.client().publish(reply_to, payload).await {
                    tracing::warn!(error = %e, "price reply not sent");
                }
            }
            () = shutdown.cancelled() => return Ok(()),
            else => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn cfg() -> PriceServiceConfig {
        PriceServiceConfig {
            symbols: [Symbol::parse("EURUSD").unwrap()].into_iter().collect(),
            max_age_ms: 1000,
            observer: None,
        }
    }

    #[test]
    fn answers_quote_no_quote_stale_unknown() {
        let eur = Symbol::parse("EURUSD").unwrap();
        let mut cache = HashMap::new();
        assert!(
            matches!(answer(|s| cache.get(&s), &cfg(), "EURUSD", 0), PriceReply::Error(e) if e.error == suho_domain::PriceErrorKind::NoQuote)
        );
        cache.insert(
            eur,
            Tick::new(
                eur,
                Decimal::new(10850, 4),
                Decimal::new(10852, 4),
                1_000,
                "t",
            )
            .unwrap(),
        );
        assert!(
            matches!(answer(|s| cache.get(&s), &cfg(), "EURUSD", 1_500), PriceReply::Quote(q) if q.age_ms == 500)
        );
        assert!(
            matches!(answer(|s| cache.get(&s), &cfg(), "EURUSD", 2_001), PriceReply::Error(e) if e.error == suho_domain::PriceErrorKind::Stale)
        );
        assert!(
            matches!(answer(|s| cache.get(&s), &cfg(), "XYZ", 0), PriceReply::Error(e) if e.error == suho_domain::PriceErrorKind::UnknownSymbol)
        );
        assert!(
            matches!(answer(|s| cache.get(&s), &cfg(), "GBPUSD", 0), PriceReply::Error(e) if e.error == suho_domain::PriceErrorKind::UnknownSymbol)
        );
    }
}
