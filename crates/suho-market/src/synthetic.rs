//! The synthetic feed: a deterministic random walk per symbol (same seed, same prices),
//! in whole pipettes so every price is an exact decimal with the symbol's digits, with a
//! spread drawn around the pair's typical one. Works offline; the default feed.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use suho_domain::{Symbol, Tick};
use suho_messaging::{now_ms, MarketBus};
use tokio_util::sync::CancellationToken;

use crate::MarketServiceError;

/// How one pair behaves: starting mid, decimal digits, typical spread and per-tick
/// volatility in pipettes (the last quoted digit).
#[derive(Debug, Clone, Copy)]
struct PairProfile {
    start: i64,
    digits: u32,
    spread: i64,
    volatility: f64,
}

fn profile(symbol: Symbol) -> PairProfile {
    let p = |start, digits, spread, volatility| PairProfile {
        start,
        digits,
        spread,
        volatility,
    };
    match symbol.as_str() {
        "EURUSD" => p(108_500, 5, 10, 3.0),
        "GBPUSD" => p(127_000, 5, 14, 4.0),
        "USDJPY" => p(148_500, 3, 12, 4.0),
        "USDCHF" => p(88_000, 5, 15, 3.0),
        "AUDUSD" => p(66_000, 5, 12, 3.0),
        "USDCAD" => p(135_000, 5, 16, 3.0),
        "NZDUSD" => p(61_000, 5, 18, 3.0),
        "EURGBP" => p(85_500, 5, 15, 2.0),
        "EURJPY" => p(161_000, 3, 18, 5.0),
        "GBPJPY" => p(188_500, 3, 25, 7.0),
        "EURCHF" => p(95_500, 5, 20, 2.0),
        "AUDJPY" => p(98_000, 3, 20, 4.0),
        "EURAUD" => p(164_500, 5, 22, 5.0),
        "GBPCHF" => p(112_000, 5, 25, 5.0),
        _ if symbol.quote() == "JPY" => p(100_000, 3, 20, 4.0),
        _ => p(100_000, 5, 20, 3.0),
    }
}

struct Walk {
    symbol: Symbol,
    profile: PairProfile,
    bid: i64,
    rng: StdRng,
}

/// Deterministic ticks for a set of symbols, in round-robin order.
pub struct SyntheticFeed {
    walks: Vec<Walk>,
    next: usize,
}

impl SyntheticFeed {
    /// A feed over `symbols` seeded by `seed`.
    pub fn new(symbols: &[Symbol], seed: u64) -> Self {
        let walks = symbols
            .iter()
            .map(|&symbol| {
                let profile = profile(symbol);
                // Each symbol's stream depends only on the seed and the symbol.
                let salt = symbol
                    .as_str()
                    .bytes()
                    .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                    });
                Walk {
                    symbol,
                    profile,
                    bid: profile.start,
                    rng: StdRng::seed_from_u64(seed ^ salt),
                }
            })
            .collect();
        Self { walks, next: 0 }
    }

    /// The next tick (for the next symbol in turn), stamped `now_ms`.
    pub fn next_tick(&mut self, now_ms: i64) -> Option<Tick> {
        let n = self.walks.len();
        let walk = self.walks.get_mut(self.next % n.max(1))?;
        self.next = (self.next + 1) % n;
        let p = walk.profile;
        // Gaussian step (Box-Muller) plus a weak pull back to the start, in pipettes.
        let u1: f64 = walk.rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = walk.rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let step = (z * p.volatility + (p.start - walk.bid) as f64 * 0.001).round() as i64;
        walk.bid = (walk.bid + step).max(1);
        let spread = (p.spread + walk.rng.gen_range(-(p.spread / 4)..=p.spread / 4)).max(1);
        let bid = Decimal::new(walk.bid, p.digits);
        let ask = Decimal::new(walk.bid + spread, p.digits);
        Tick::new(walk.symbol, bid, ask, now_ms, "synthetic").ok()
    }
}

/// Publishes `ticks_per_second` ticks per symbol on `market.{SYM}.tick` until `shutdown`.
///
/// # Errors
/// The NATS connection is gone for good.
pub async fn run_feed(
    bus: MarketBus,
    mut feed: SyntheticFeed,
    symbols: usize,
    ticks_per_second: f64,
    shutdown: CancellationToken,
) -> Result<(), MarketServiceError> {
    #[allow(clippy::cast_precision_loss)]
    let period = Duration::from_secs_f64(1.0 / (ticks_per_second * symbols.max(1) as f64));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tracing::info!(symbols, ticks_per_second, "synthetic feed publishing");
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        let Some(tick) = feed.next_tick(now_ms()) else {
            return Ok(());
        };
        bus.publish(suho_domain::subject::tick(bus.prefix(), tick.symbol), &tick)
            .await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_ticks_and_exact_arithmetic() {
        let symbols = suho_domain::major_fx();
        let mut a = SyntheticFeed::new(&symbols, 7);
        let mut b = SyntheticFeed::new(&symbols, 7);
        for i in 0..1000 {
            let (x, y) = (a.next_tick(i).unwrap(), b.next_tick(i).unwrap());
            assert_eq!(x, y);
            assert!(x.bid > Decimal::ZERO && x.ask > x.bid);
            assert_eq!(x.spread, x.ask - x.bid);
            assert_eq!(x.mid * Decimal::TWO, x.bid + x.ask);
        }
        let mut c = SyntheticFeed::new(&symbols, 8);
        let differs = (0..50).any(|i| a.next_tick(i) != c.next_tick(i));
        assert!(differs, "a different seed gives different prices");
    }

    #[test]
    fn prices_keep_the_pairs_digits() {
        let mut f = SyntheticFeed::new(&[Symbol::parse("USDJPY").unwrap()], 1);
        let t = f.next_tick(0).unwrap();
        assert_eq!(t.bid.scale(), 3);
    }
}
