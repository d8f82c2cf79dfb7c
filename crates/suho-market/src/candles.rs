//! Candle aggregation: turns one symbol's ticks into OHLC candles for a set of timeframes
//! (by default every contract timeframe, `1m 5m 15m 30m 1h 4h 1d`).
//!
//! # Policies
//!
//! - **Price.** Candles are built from the tick's `mid` (`(bid + ask) / 2`), the price the
//!   feed quotes around; bid or ask alone would shift every candle by half the spread.
//! - **Volume.** FX feeds carry no traded volume, so `volume` is the number of ticks in the
//!   window, as an exact [`Decimal`].
//! - **Windows.** `start = Timeframe::align(timestamp)`, floored to the UTC boundary (days start
//!   at 00:00 UTC); `end = start + duration` and is **exclusive**: a tick stamped exactly `end`
//!   belongs to the next candle.
//! - **No filler.** A window in which no tick arrived has no candle; the next candle simply
//!   starts later. Consumers must not assume consecutive candles are adjacent.
//! - **Closing.** A candle closes when the first tick of a later window arrives, or when
//!   [`CandleAggregator::close_due`] is called with a time at or past its `end` (a timer, so a
//!   quiet market still closes its candles). A closed candle is returned exactly once, with
//!   `closed: true`, and is then forgotten.
//! - **Late ticks.** The aggregator keeps a *watermark*: the latest of the open candles'
//!   starts and the closed candles' ends. A tick stamped before the watermark belongs to a
//!   window that is closed (or older than the open one) and is **dropped for every
//!   timeframe** and counted in [`CandleAggregator::late_ticks`]. Dropping it everywhere keeps
//!   the timeframes consistent: every accepted tick is in exactly one candle of each timeframe.
//! - **Out-of-order ticks.** A tick at or after the watermark but older than the newest tick
//!   seen lies inside every open window. It widens `high`/`low` and adds to `volume`, but does
//!   not move `close`: `close` is always the price of the newest tick (on equal timestamps, the
//!   later arrival). It is counted in [`CandleAggregator::out_of_order_ticks`].
//! - **Arithmetic.** Exact [`Decimal`]s throughout; nothing is rounded.

use rust_decimal::Decimal;
use suho_domain::{Candle, Symbol, Tick, Timeframe};

/// What the aggregator did with one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TickDisposition {
    /// Newest tick so far (or equal to the newest): updated every open candle, close included.
    InOrder,
    /// Older than the newest tick but inside the open windows: high, low and volume updated,
    /// close kept.
    OutOfOrder,
    /// Older than the watermark: dropped for every timeframe.
    Late,
    /// The tick is for another symbol: ignored.
    OtherSymbol,
}

/// The candles one tick produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandleUpdates {
    /// What happened to the tick.
    pub disposition: TickDisposition,
    /// Candles this tick closed (`closed: true`), at most one per timeframe, shortest first.
    pub closed: Vec<Candle>,
    /// The open candle of every timeframe after the tick (`closed: false`), shortest first;
    /// empty when the tick was dropped.
    pub current: Vec<Candle>,
}

impl CandleUpdates {
    fn dropped(disposition: TickDisposition) -> Self {
        Self {
            disposition,
            closed: Vec::new(),
            current: Vec::new(),
        }
    }

    /// Whether the tick went into the candles.
    #[must_use]
    pub fn is_accepted(&self) -> bool {
        matches!(
            self.disposition,
            TickDisposition::InOrder | TickDisposition::OutOfOrder
        )
    }

    /// Every candle to publish, in publication order: the closed ones, then the open ones.
    pub fn iter(&self) -> impl Iterator<Item = &Candle> {
        self.closed.iter().chain(self.current.iter())
    }
}

#[derive(Debug, Clone)]
struct Slot {
    timeframe: Timeframe,
    open: Option<Candle>,
}

/// Builds one symbol's candles over a set of timeframes. See the module docs for the policies.
#[derive(Debug, Clone)]
pub struct CandleAggregator {
    symbol: Symbol,
    slots: Vec<Slot>,
    /// Timestamp of the newest accepted tick.
    newest: Option<i64>,
    /// Latest `end` of any closed candle.
    closed_until: Option<i64>,
    late: u64,
    out_of_order: u64,
}

impl CandleAggregator {
    /// An aggregator for `symbol` over every timeframe ([`Timeframe::ALL`]).
    #[must_use]
    pub fn new(symbol: Symbol) -> Self {
        Self::with_timeframes(symbol, &Timeframe::ALL)
    }

    /// An aggregator for `symbol` over `timeframes` (sorted shortest first, duplicates
    /// removed; an empty set builds no candles).
    #[must_use]
    pub fn with_timeframes(symbol: Symbol, timeframes: &[Timeframe]) -> Self {
        let mut tfs = timeframes.to_vec();
        tfs.sort_unstable();
        tfs.dedup();
        Self {
            symbol,
            slots: tfs
                .into_iter()
                .map(|timeframe| Slot {
                    timeframe,
                    open: None,
                })
                .collect(),
            newest: None,
            closed_until: None,
            late: 0,
            out_of_order: 0,
        }
    }

    /// The symbol.
    #[must_use]
    pub fn symbol(&self) -> Symbol {
        self.symbol
    }

    /// The timeframes, shortest first.
    #[must_use]
    pub fn timeframes(&self) -> Vec<Timeframe> {
        self.slots.iter().map(|s| s.timeframe).collect()
    }

    /// The candles still forming, shortest timeframe first.
    pub fn open_candles(&self) -> impl Iterator<Item = &Candle> {
        self.slots.iter().filter_map(|s| s.open.as_ref())
    }

    /// Ticks dropped as late so far.
    #[must_use]
    pub fn late_ticks(&self) -> u64 {
        self.late
    }

    /// Ticks accepted out of order so far.
    #[must_use]
    pub fn out_of_order_ticks(&self) -> u64 {
        self.out_of_order
    }

    /// The earliest timestamp still accepted (`None` before anything was seen): ticks stamped
    /// before it are late.
    #[must_use]
    pub fn watermark(&self) -> Option<i64> {
        self.open_candles()
            .map(|c| c.start)
            .chain(self.closed_until)
            .max()
    }

    /// Adds one tick; returns the candles it closed and the open candles after it.
    pub fn on_tick(&mut self, tick: &Tick) -> CandleUpdates {
        if tick.symbol != self.symbol {
            return CandleUpdates::dropped(TickDisposition::OtherSymbol);
        }
        let ts = tick.timestamp;
        if self.watermark().is_some_and(|w| ts < w) {
            self.late += 1;
            return CandleUpdates::dropped(TickDisposition::Late);
        }
        let in_order = self.newest.is_none_or(|n| ts >= n);
        let price = tick.mid;
        let mut closed = Vec::new();
        let mut current = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            let candle = match slot.open.take() {
                // A later window: close the open candle and start a new one. (An out-of-order
                // tick never gets here: it is inside every open window.)
                Some(mut old) if ts >= old.end => {
                    old.closed = true;
                    self.closed_until = Some(self.closed_until.map_or(old.end, |c| c.max(old.end)));
                    closed.push(old);
                    Candle::open_at(self.symbol, slot.timeframe, ts, price, Decimal::ONE)
                }
                Some(mut c) => {
                    if in_order {
                        c.update(price, Decimal::ONE);
                    } else {
                        c.high = c.high.max(price);
                        c.low = c.low.min(price);
                        c.volume += Decimal::ONE;
                    }
                    c
                }
                None => Candle::open_at(self.symbol, slot.timeframe, ts, price, Decimal::ONE),
            };
            current.push(candle.clone());
            slot.open = Some(candle);
        }
        let disposition = if in_order {
            self.newest = Some(ts);
            TickDisposition::InOrder
        } else {
            self.out_of_order += 1;
            TickDisposition::OutOfOrder
        };
        CandleUpdates {
            disposition,
            closed,
            current,
        }
    }

    /// Closes every open candle whose window has ended by `now_ms` (`end <= now_ms`) and
    /// returns them (`closed: true`, shortest timeframe first). Ticks of those windows that
    /// arrive afterwards are late.
    pub fn close_due(&mut self, now_ms: i64) -> Vec<Candle> {
        let mut closed = Vec::new();
        for slot in &mut self.slots {
            if slot.open.as_ref().is_some_and(|c| c.end <= now_ms) {
                if let Some(mut c) = slot.open.take() {
                    c.closed = true;
                    self.closed_until = Some(self.closed_until.map_or(c.end, |e| e.max(c.end)));
                    closed.push(c);
                }
            }
        }
        closed
    }
}
