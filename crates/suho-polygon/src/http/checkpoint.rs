//! [`BarCheckpoint`]: where downloaded bars go, and where a download resumes from.
//!
//! The downloader asks for the start of the last stored bar and continues one period after it,
//! storing each page as soon as it arrives, so an interrupted download loses at most the page
//! in flight. The PostgreSQL implementation lives with the store; [`InMemoryCheckpoint`] is for
//! tests and tools.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use suho_domain::{Candle, Symbol, Timeframe};

/// The bar store failed.
#[derive(Debug, thiserror::Error)]
#[error("bar store: {message}")]
pub struct CheckpointError {
    message: String,
}

impl CheckpointError {
    /// An error with a message (must not contain credentials).
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// A store of candles that knows how far it got.
pub trait BarCheckpoint: Send + Sync {
    /// Start (epoch ms) of the latest stored bar of `symbol` at `timeframe`, if any.
    ///
    /// # Errors
    /// The store cannot be read.
    fn last_bar_start(
        &self,
        symbol: Symbol,
        timeframe: Timeframe,
    ) -> impl Future<Output = Result<Option<i64>, CheckpointError>> + Send;

    /// Stores `bars` (all of one symbol and timeframe, ascending `start`). Storing a bar that is
    /// already there must not duplicate it.
    ///
    /// # Errors
    /// The store cannot be written.
    fn store(&self, bars: &[Candle]) -> impl Future<Output = Result<(), CheckpointError>> + Send;
}

/// An in-memory [`BarCheckpoint`] keyed by symbol, timeframe and start, which also counts
/// writes so tests can check that no bar was stored twice.
#[derive(Debug, Default)]
pub struct InMemoryCheckpoint {
    bars: Mutex<BTreeMap<(Symbol, Timeframe, i64), Candle>>,
    writes: AtomicU64,
    rewrites: AtomicU64,
}

impl InMemoryCheckpoint {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored bars of `symbol` at `timeframe`, ascending.
    #[must_use]
    pub fn bars(&self, symbol: Symbol, timeframe: Timeframe) -> Vec<Candle> {
        let map = self.bars.lock().unwrap_or_else(PoisonError::into_inner);
        map.range((symbol, timeframe, i64::MIN)..=(symbol, timeframe, i64::MAX))
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Bars written in total (including rewrites).
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Writes of a bar that was already stored.
    #[must_use]
    pub fn rewrites(&self) -> u64 {
        self.rewrites.load(Ordering::Relaxed)
    }
}

impl BarCheckpoint for InMemoryCheckpoint {
    async fn last_bar_start(
        &self,
        symbol: Symbol,
        timeframe: Timeframe,
    ) -> Result<Option<i64>, CheckpointError> {
        let map = self.bars.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(map
            .range((symbol, timeframe, i64::MIN)..=(symbol, timeframe, i64::MAX))
            .next_back()
            .map(|((_, _, start), _)| *start))
    }

    async fn store(&self, bars: &[Candle]) -> Result<(), CheckpointError> {
        let mut map = self.bars.lock().unwrap_or_else(PoisonError::into_inner);
        for bar in bars {
            self.writes.fetch_add(1, Ordering::Relaxed);
            if map
                .insert((bar.symbol, bar.timeframe, bar.start), bar.clone())
                .is_some()
            {
                self.rewrites.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}
