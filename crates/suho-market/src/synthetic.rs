//! The synthetic feed: a deterministic random walk per symbol (same seed, same prices),
//! in whole pipettes so every price is an exact decimal with the symbol's digits, with a
//! spread drawn around the pair's typical one. Works offline; the default feed.
//!
//! Three things shape each step and spread:
//! - the pair's profile (start, digits, typical spread, per-tick volatility);
//! - a volatility [`Regime`] per symbol, a Markov chain (calm / normal / volatile) driven by
//!   the walk's own seeded generator, which scales the step and widens the spread when
//!   volatile;
//! - the trading [`Session`] of the tick's UTC hour (Asian quiet with wider spreads, London
//!   and the London/New York overlap most active).
//!
//! With [`TradingHours::Fx`] the feed is also silent during the FX weekly close, Friday
//! 22:00 UTC to Sunday 22:00 UTC. Everything depends only on the seed and the timestamps
//! given to [`SyntheticFeed::next_tick`], never on the wall clock, and each tick draws the
//! same number of random values whatever its timestamp.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use suho_domain::{Symbol, Tick};
use suho_messaging::{now_ms, MarketBus};
use tokio_util::sync::CancellationToken;

use crate::MarketServiceError;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;
/// The Unix epoch, a Thursday 00:00 UTC, is this long after the Monday 00:00 before it.
const EPOCH_WEEK_OFFSET_MS: i64 = 3 * DAY_MS;
/// The FX weekly close, in ms after Monday 00:00 UTC: Friday 22:00 to Sunday 22:00.
const WEEKLY_CLOSE_MS: std::ops::Range<i64> =
    (4 * DAY_MS + 22 * HOUR_MS)..(6 * DAY_MS + 22 * HOUR_MS);
/// How often a paused feed checks whether the market has reopened.
const CLOSED_POLL: Duration = Duration::from_secs(1);

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
    // The price digits are the symbol's own (one home: `Symbol::digits`).
    let p = |start, spread, volatility| PairProfile {
        start,
        digits: symbol.digits(),
        spread,
        volatility,
    };
    match symbol.as_str() {
        "EURUSD" => p(108_500, 10, 3.0),
        "GBPUSD" => p(127_000, 14, 4.0),
        "USDJPY" => p(148_500, 12, 4.0),
        "USDCHF" => p(88_000, 15, 3.0),
        "AUDUSD" => p(66_000, 12, 3.0),
        "USDCAD" => p(135_000, 16, 3.0),
        "NZDUSD" => p(61_000, 18, 3.0),
        "EURGBP" => p(85_500, 15, 2.0),
        "EURJPY" => p(161_000, 18, 5.0),
        "GBPJPY" => p(188_500, 25, 7.0),
        "EURCHF" => p(95_500, 20, 2.0),
        "AUDJPY" => p(98_000, 20, 4.0),
        "EURAUD" => p(164_500, 22, 5.0),
        "GBPCHF" => p(112_000, 25, 5.0),
        _ if symbol.quote() == "JPY" => p(100_000, 20, 4.0),
        _ => p(100_000, 20, 3.0),
    }
}

/// A symbol's volatility regime. Each tick first moves the regime one step of a Markov
/// chain with small per-tick probabilities (calm and volatile spells go through normal),
/// then scales the step (0.5x, 1x, 2.5x) and the spread (0.9x, 1x, 2x) by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Regime {
    /// A quiet market: half the usual steps, slightly tighter spreads.
    Calm,
    /// The pair's usual behaviour.
    #[default]
    Normal,
    /// A news-like burst: 2.5x the usual steps and twice the spread.
    Volatile,
}

impl Regime {
    /// Per-tick probability of leaving calm for normal (calm lasts about 500 ticks).
    const CALM_TO_NORMAL: f64 = 0.002;
    /// Per-tick probability of leaving normal for calm.
    const NORMAL_TO_CALM: f64 = 0.001;
    /// Per-tick probability of leaving normal for volatile.
    const NORMAL_TO_VOLATILE: f64 = 0.0005;
    /// Per-tick probability of leaving volatile for normal (volatile lasts about 500 ticks).
    const VOLATILE_TO_NORMAL: f64 = 0.002;

    /// The regime after one tick, given a uniform draw `u` in `[0, 1)`.
    fn next(self, u: f64) -> Self {
        match self {
            Regime::Calm if u < Self::CALM_TO_NORMAL => Regime::Normal,
            Regime::Normal if u < Self::NORMAL_TO_CALM => Regime::Calm,
            Regime::Normal if u < Self::NORMAL_TO_CALM + Self::NORMAL_TO_VOLATILE => {
                Regime::Volatile
            }
            Regime::Volatile if u < Self::VOLATILE_TO_NORMAL => Regime::Normal,
            same => same,
        }
    }

    fn volatility(self) -> f64 {
        match self {
            Regime::Calm => 0.5,
            Regime::Normal => 1.0,
            Regime::Volatile => 2.5,
        }
    }

    /// Spread scale in percent (integer, so the spread stays whole pipettes).
    fn spread_pct(self) -> i64 {
        match self {
            Regime::Calm => 90,
            Regime::Normal => 100,
            Regime::Volatile => 200,
        }
    }
}

/// The intraday FX session of a UTC hour, which scales volatility and spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Session {
    /// 21:00-07:00 UTC (Sydney, Tokyo): the quietest hours, with the widest spreads.
    Asian,
    /// 07:00-12:00 UTC: London alone.
    London,
    /// 12:00-16:00 UTC: London and New York both open, the most active hours.
    Overlap,
    /// 16:00-21:00 UTC: New York alone.
    NewYork,
}

impl Session {
    /// The session at `ts_ms` (Unix milliseconds, UTC).
    pub fn at(ts_ms: i64) -> Self {
        match ts_ms.rem_euclid(DAY_MS) / HOUR_MS {
            7..=11 => Session::London,
            12..=15 => Session::Overlap,
            16..=20 => Session::NewYork,
            _ => Session::Asian,
        }
    }

    fn volatility(self) -> f64 {
        match self {
            Session::Asian => 0.6,
            Session::London => 1.2,
            Session::Overlap => 1.5,
            Session::NewYork => 1.0,
        }
    }

    /// Spread scale in percent (integer, so the spread stays whole pipettes).
    fn spread_pct(self) -> i64 {
        match self {
            Session::Asian => 140,
            Session::London => 100,
            Session::Overlap => 90,
            Session::NewYork => 110,
        }
    }
}

/// When the synthetic market is open. Both apply the intraday [`Session`] profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TradingHours {
    /// Never closes, so a demo works on a weekend. The default.
    #[default]
    Always,
    /// Closed for the FX weekly close, Friday 22:00 UTC to Sunday 22:00 UTC.
    Fx,
}

impl TradingHours {
    /// The hours named `always` or `fx` (the `market.trading_hours` setting).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "always" => Some(TradingHours::Always),
            "fx" => Some(TradingHours::Fx),
            _ => None,
        }
    }

    /// Whether the market is open at `ts_ms` (Unix milliseconds, UTC).
    pub fn is_open(self, ts_ms: i64) -> bool {
        match self {
            TradingHours::Always => true,
            TradingHours::Fx => {
                let in_week = (ts_ms + EPOCH_WEEK_OFFSET_MS).rem_euclid(WEEK_MS);
                !WEEKLY_CLOSE_MS.contains(&in_week)
            }
        }
    }
}

struct Walk {
    symbol: Symbol,
    profile: PairProfile,
    bid: i64,
    regime: Regime,
    rng: StdRng,
}

/// Deterministic ticks for a set of symbols, in round-robin order.
pub struct SyntheticFeed {
    walks: Vec<Walk>,
    next: usize,
    hours: TradingHours,
}

impl SyntheticFeed {
    /// A feed over `symbols` seeded by `seed`, open at all hours ([`TradingHours::Always`]).
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
                    regime: Regime::Normal,
                    rng: StdRng::seed_from_u64(seed ^ salt),
                }
            })
            .collect();
        Self {
            walks,
            next: 0,
            hours: TradingHours::Always,
        }
    }

    /// The same feed, open during `hours`.
    #[must_use]
    pub fn with_hours(mut self, hours: TradingHours) -> Self {
        self.hours = hours;
        self
    }

    /// The feed's trading hours.
    pub fn hours(&self) -> TradingHours {
        self.hours
    }

    /// Whether the feed quotes at `ts_ms` (Unix milliseconds, UTC).
    pub fn is_open(&self, ts_ms: i64) -> bool {
        self.hours.is_open(ts_ms)
    }

    /// The current volatility regime of `symbol`, or `None` if the feed does not quote it.
    pub fn regime(&self, symbol: Symbol) -> Option<Regime> {
        self.walks
            .iter()
            .find(|w| w.symbol == symbol)
            .map(|w| w.regime)
    }

    /// The next tick (for the next symbol in turn), stamped `now_ms`.
    ///
    /// `None` when the feed has no symbols, or when the market is closed at `now_ms`; a
    /// closed market leaves the feed as it was, so it resumes where it stopped.
    pub fn next_tick(&mut self, now_ms: i64) -> Option<Tick> {
        if !self.hours.is_open(now_ms) {
            return None;
        }
        let n = self.walks.len();
        let walk = self.walks.get_mut(self.next % n.max(1))?;
        self.next = (self.next + 1) % n;
        let p = walk.profile;
        let session = Session::at(now_ms);
        // Every tick draws the same four values, whatever its regime and timestamp.
        walk.regime = walk.regime.next(walk.rng.gen());
        // Gaussian step (Box-Muller) plus a weak pull back to the start, in pipettes.
        let u1: f64 = walk.rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = walk.rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let volatility = p.volatility * walk.regime.volatility() * session.volatility();
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let step = (z * volatility + (p.start - walk.bid) as f64 * 0.001).round() as i64;
        walk.bid = (walk.bid + step).max(1);
        let spread = spread_pipettes(p.spread, walk.regime, session, walk.rng.gen());
        let bid = Decimal::new(walk.bid, p.digits);
        let ask = Decimal::new(walk.bid + spread, p.digits);
        Tick::new(walk.symbol, bid, ask, now_ms, "synthetic").ok()
    }
}

/// The spread in whole pipettes: the pair's typical one scaled by regime and session, then
/// jittered by up to a quarter either way with the uniform draw `r`. Integer throughout.
fn spread_pipettes(typical: i64, regime: Regime, session: Session, r: u32) -> i64 {
    let scaled = ((typical * regime.spread_pct() * session.spread_pct() + 5_000) / 10_000).max(1);
    let jitter = scaled / 4;
    (scaled + i64::from(r) % (2 * jitter + 1) - jitter).max(1)
}

/// Publishes `ticks_per_second` ticks per symbol on `market.{SYM}.tick` until `shutdown`.
///
/// While the feed's [`TradingHours`] say the market is closed it publishes nothing and
/// checks again every second; it logs once when the market closes and once when it reopens.
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
    let hours = feed.hours();
    tracing::info!(
        symbols,
        ticks_per_second,
        ?hours,
        "synthetic feed publishing"
    );
    let mut open = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        let now = now_ms();
        if !feed.is_open(now) {
            if open {
                tracing::info!(?hours, "market closed: synthetic feed paused");
                open = false;
            }
            tokio::select! {
                () = tokio::time::sleep(CLOSED_POLL) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
            continue;
        }
        if !open {
            tracing::info!(?hours, "market open: synthetic feed resumed");
            open = true;
            // No burst of the ticks missed while closed.
            ticker.reset();
        }
        let Some(tick) = feed.next_tick(now) else {
            return Ok(());
        };
        bus.publish(suho_domain::subject::tick(bus.prefix(), tick.symbol), &tick)
            .await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2024-03-11 00:00 UTC.
    const MONDAY: i64 = 1_710_115_200_000;
    const MIN_MS: i64 = 60_000;

    fn eur() -> Symbol {
        Symbol::parse("EURUSD").unwrap()
    }

    /// Ask above bid, spread and mid consistent, and the pair's digits on every price.
    fn assert_well_formed(t: &Tick) {
        let digits = if t.symbol.quote() == "JPY" { 3 } else { 5 };
        assert!(t.bid > Decimal::ZERO && t.ask > t.bid, "{t:?}");
        assert_eq!(t.spread, t.ask - t.bid);
        assert_eq!(t.mid * Decimal::TWO, t.bid + t.ask);
        assert_eq!((t.bid.scale(), t.ask.scale()), (digits, digits), "{t:?}");
    }

    /// Mean |bid change| and mean spread of `n` ticks of one symbol, all stamped `ts`.
    fn mean_step_and_spread(feed: &mut SyntheticFeed, n: u32, ts: i64) -> (Decimal, Decimal) {
        let mut prev = feed.next_tick(ts).unwrap().bid;
        let (mut steps, mut spreads) = (Decimal::ZERO, Decimal::ZERO);
        for _ in 0..n {
            let t = feed.next_tick(ts).unwrap();
            steps += (t.bid - prev).abs();
            spreads += t.spread;
            prev = t.bid;
        }
        (steps / Decimal::from(n), spreads / Decimal::from(n))
    }

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

    #[test]
    fn same_seed_same_ticks_across_regimes_sessions_and_the_weekend() {
        let symbols = suho_domain::major_fx();
        let mut a = SyntheticFeed::new(&symbols, 99).with_hours(TradingHours::Fx);
        let mut b = SyntheticFeed::new(&symbols, 99).with_hours(TradingHours::Fx);
        let mut regimes = std::collections::HashSet::new();
        let mut closed = 0;
        // Two weeks, a tick every 23 s: every session, regime switches, two weekends.
        for i in 0..52_000 {
            let ts = MONDAY + i * 23_000;
            let (x, y) = (a.next_tick(ts), b.next_tick(ts));
            assert_eq!(x, y);
            match x {
                Some(t) => {
                    assert_well_formed(&t);
                    assert_eq!(t.timestamp, ts);
                    regimes.insert(a.regime(t.symbol).unwrap());
                }
                None => closed += 1,
            }
        }
        assert_eq!(regimes.len(), 3, "every regime seen: {regimes:?}");
        // Two 48 h closes out of 52 000 ticks 23 s apart: about 15 000 silent stamps.
        assert!((14_000..16_000).contains(&closed), "{closed} closed");
        for &s in &symbols {
            assert_eq!(a.regime(s), b.regime(s));
        }
    }

    #[test]
    fn regimes_switch_and_the_volatile_regime_moves_more_than_the_calm_one() {
        let mut feed = SyntheticFeed::new(&[eur()], 5);
        assert_eq!(feed.regime(eur()), Some(Regime::Normal));
        assert_eq!(feed.regime(Symbol::parse("USDJPY").unwrap()), None);
        let ts = MONDAY + 10 * 60 * MIN_MS; // London, so the session is the same for all.
        let mut prev = feed.next_tick(ts).unwrap();
        let mut regime = feed.regime(eur()).unwrap();
        let mut switches = 0;
        // Per regime: (ticks, sum of |bid change|, sum of spreads).
        let mut stats = [(0_u32, Decimal::ZERO, Decimal::ZERO); 3];
        for _ in 0..100_000 {
            let t = feed.next_tick(ts).unwrap();
            assert_well_formed(&t);
            let now = feed.regime(eur()).unwrap();
            if now != regime {
                switches += 1;
                regime = now;
            }
            let s = &mut stats[now as usize];
            s.0 += 1;
            s.1 += (t.bid - prev.bid).abs();
            s.2 += t.spread;
            prev = t;
        }
        assert!(switches >= 20, "{switches} regime switches");
        let mean = |i: usize| {
            let (n, steps, spreads) = stats[i];
            assert!(n > 1_000, "regime {i} seen on {n} ticks only");
            (steps / Decimal::from(n), spreads / Decimal::from(n))
        };
        let (calm, normal, volatile) = (
            mean(Regime::Calm as usize),
            mean(Regime::Normal as usize),
            mean(Regime::Volatile as usize),
        );
        assert!(
            volatile.0 > calm.0 * Decimal::TWO * Decimal::TWO,
            "{volatile:?} vs {calm:?}"
        );
        assert!(normal.0 > calm.0 && volatile.0 > normal.0, "{normal:?}");
        assert!(
            volatile.1 > normal.1 * Decimal::new(15, 1),
            "{volatile:?} vs {normal:?}"
        );
    }

    #[test]
    fn the_london_new_york_overlap_moves_more_than_asian_hours() {
        // Same seed, so the same draws and regimes: only the session differs.
        let overlap_ts = MONDAY + 13 * 60 * MIN_MS + 30 * MIN_MS;
        let asian_ts = MONDAY + 3 * 60 * MIN_MS;
        assert_eq!(Session::at(overlap_ts), Session::Overlap);
        assert_eq!(Session::at(asian_ts), Session::Asian);
        let (overlap, overlap_spread) =
            mean_step_and_spread(&mut SyntheticFeed::new(&[eur()], 3), 20_000, overlap_ts);
        let (asian, asian_spread) =
            mean_step_and_spread(&mut SyntheticFeed::new(&[eur()], 3), 20_000, asian_ts);
        assert!(overlap > asian * Decimal::TWO, "{overlap} vs {asian}");
        assert!(
            asian_spread > overlap_spread,
            "{asian_spread} vs {overlap_spread}"
        );
    }

    #[test]
    fn sessions_follow_the_utc_hour() {
        let at = |h: i64| Session::at(MONDAY + h * 60 * MIN_MS);
        assert_eq!(at(0), Session::Asian);
        assert_eq!(at(6), Session::Asian);
        assert_eq!(at(7), Session::London);
        assert_eq!(at(12), Session::Overlap);
        assert_eq!(at(15), Session::Overlap);
        assert_eq!(at(16), Session::NewYork);
        assert_eq!(at(21), Session::Asian);
        assert_eq!(Session::at(-1), Session::Asian, "23:59 on 1969-12-31");
    }

    #[test]
    fn fx_hours_close_from_friday_22_to_sunday_22_utc() {
        let friday_22 = MONDAY + 4 * 24 * 60 * MIN_MS + 22 * 60 * MIN_MS;
        let sunday_22 = MONDAY + 6 * 24 * 60 * MIN_MS + 22 * 60 * MIN_MS;
        let saturday_noon = MONDAY + 5 * 24 * 60 * MIN_MS + 12 * 60 * MIN_MS;
        let monday_10 = MONDAY + 7 * 24 * 60 * MIN_MS + 10 * 60 * MIN_MS;
        let mut fx = SyntheticFeed::new(&[eur()], 1).with_hours(TradingHours::Fx);
        assert_eq!(fx.hours(), TradingHours::Fx);
        for (ts, open) in [
            (friday_22 - MIN_MS, true),
            (friday_22 - 1, true),
            (friday_22, false),
            (saturday_noon, false),
            (sunday_22 - 1, false),
            (sunday_22, true),
            (monday_10, true),
        ] {
            assert_eq!(fx.is_open(ts), open, "{ts}");
            assert_eq!(fx.next_tick(ts).is_some(), open, "{ts}");
        }
        for ts in (0..48 * 60).map(|m| friday_22 + m * MIN_MS) {
            assert!(fx.next_tick(ts).is_none(), "closed all weekend: {ts}");
        }
        let mut always = SyntheticFeed::new(&[eur()], 1);
        assert!(always.is_open(saturday_noon));
        assert!(
            always.next_tick(saturday_noon).is_some(),
            "a demo works on a weekend"
        );
    }

    #[test]
    fn a_closed_market_leaves_the_walk_where_it_was() {
        let saturday = MONDAY + 5 * 24 * 60 * MIN_MS;
        let mut fx = SyntheticFeed::new(&suho_domain::major_fx(), 4).with_hours(TradingHours::Fx);
        let mut always = SyntheticFeed::new(&suho_domain::major_fx(), 4);
        for i in 0..100 {
            if i % 10 == 0 {
                assert_eq!(fx.next_tick(saturday + i), None);
            }
            assert_eq!(fx.next_tick(MONDAY + i), always.next_tick(MONDAY + i));
        }
    }

    #[test]
    fn trading_hours_by_name() {
        assert_eq!(
            TradingHours::from_name("always"),
            Some(TradingHours::Always)
        );
        assert_eq!(TradingHours::from_name("fx"), Some(TradingHours::Fx));
        assert_eq!(TradingHours::from_name("weekdays"), None);
        assert_eq!(TradingHours::default(), TradingHours::Always);
    }
}
