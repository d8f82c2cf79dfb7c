//! The replay feed: publishes a recorded CSV file of ticks or bars at a chosen speed, for
//! demos and backtests.
//!
//! Two layouts, told apart by the header line:
//! - ticks: `timestamp,symbol,bid,ask` -> `market.{SYM}.tick`;
//! - bars: `start,symbol,timeframe,open,high,low,close,volume` -> closed candles on
//!   `market.{SYM}.{tf}`.
//!
//! `timestamp`/`start` are epoch milliseconds (UTC), prices exact decimals, symbols in either
//! spelling. Records must be in time order. With `speed` 1.0 the gaps between records are kept
//! as recorded, 10.0 plays ten times faster, 0.0 as fast as the bus takes them. With `rebase`,
//! timestamps are shifted so the first record is stamped "now" (so the price service's
//! staleness guard accepts replayed quotes); without it, the recorded times are published.

use std::path::Path;
use std::time::Duration;

use rust_decimal::Decimal;
use suho_domain::{Candle, Symbol, Tick, Timeframe};
use suho_messaging::{now_ms, MarketBus};
use tokio_util::sync::CancellationToken;

use crate::MarketServiceError;

/// A record that could not be read, by line and column.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The header is neither layout.
    #[error("line 1: header must be `timestamp,symbol,bid,ask` or `start,symbol,timeframe,open,high,low,close,volume`, found `{0}`")]
    Header(String),
    /// A field is missing or malformed.
    #[error("line {line}: `{column}`: {problem}")]
    Field {
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// One recorded item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayRecord {
    /// A quote.
    Tick(Tick),
    /// A closed bar.
    Bar(Candle),
}

impl ReplayRecord {
    fn time(&self) -> i64 {
        match self {
            ReplayRecord::Tick(t) => t.timestamp,
            ReplayRecord::Bar(c) => c.start,
        }
    }

    fn shifted(&self, by: i64) -> ReplayRecord {
        match self {
            ReplayRecord::Tick(t) => ReplayRecord::Tick(Tick {
                timestamp: t.timestamp + by,
                ..t.clone()
            }),
            ReplayRecord::Bar(c) => ReplayRecord::Bar(Candle {
                start: c.start + by,
                end: c.end + by,
                ..c.clone()
            }),
        }
    }
}

/// A parsed recording, in time order.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The records.
    pub records: Vec<ReplayRecord>,
}

const TICK_HEADER: [&str; 4] = ["timestamp", "symbol", "bid", "ask"];
const BAR_HEADER: [&str; 8] = [
    "start",
    "symbol",
    "timeframe",
    "open",
    "high",
    "low",
    "close",
    "volume",
];

impl Recording {
    /// Reads and parses a file.
    ///
    /// # Errors
    /// The file cannot be read, or a line is malformed (see [`Recording::parse`]).
    pub fn load(path: &Path) -> Result<Recording, ReplayError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Recording::parse(&text)
    }

    /// Parses a recording; blank lines are skipped.
    ///
    /// # Errors
    /// An unknown header, a missing or malformed field (named with its line and column), a
    /// crossed quote or an inconsistent bar, or records out of time order.
    pub fn parse(text: &str) -> Result<Recording, ReplayError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let header: Vec<String> = match lines.next() {
            None => return Ok(Recording::default()),
            Some((_, h)) => h
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect(),
        };
        let bars = if header == TICK_HEADER {
            false
        } else if header == BAR_HEADER {
            true
        } else {
            return Err(ReplayError::Header(header.join(",")));
        };
        let mut records = Vec::new();
        let mut last = i64::MIN;
        for (index, line) in lines {
            let line_no = index + 1;
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let record = if bars {
                parse_bar(line_no, &fields)?
            } else {
                parse_tick(line_no, &fields)?
            };
            let column = if bars { "start" } else { "timestamp" };
            if record.time() < last {
                return Err(ReplayError::Field {
                    line: line_no,
                    column,
                    problem: "records must be in time order".into(),
                });
            }
            last = record.time();
            records.push(record);
        }
        Ok(Recording { records })
    }
}

fn field<'a>(
    line: usize,
    fields: &[&'a str],
    index: usize,
    column: &'static str,
) -> Result<&'a str, ReplayError> {
    fields
        .get(index)
        .copied()
        .filter(|f| !f.is_empty())
        .ok_or(ReplayError::Field {
            line,
            column,
            problem: "is missing".into(),
        })
}

fn millis(line: usize, raw: &str, column: &'static str) -> Result<i64, ReplayError> {
    raw.parse().map_err(|_| ReplayError::Field {
        line,
        column,
        problem: format!("`{raw}` is not epoch milliseconds"),
    })
}

fn decimal(line: usize, raw: &str, column: &'static str) -> Result<Decimal, ReplayError> {
    suho_domain::num::parse_decimal(raw).map_err(|e| ReplayError::Field {
        line,
        column,
        problem: e,
    })
}

fn symbol(line: usize, raw: &str) -> Result<Symbol, ReplayError> {
    Symbol::parse(raw).map_err(|e| ReplayError::Field {
        line,
        column: "symbol",
        problem: e.to_string(),
    })
}

fn parse_tick(line: usize, f: &[&str]) -> Result<ReplayRecord, ReplayError> {
    let ts = millis(line, field(line, f, 0, "timestamp")?, "timestamp")?;
    let sym = symbol(line, field(line, f, 1, "symbol")?)?;
    let bid = decimal(line, field(line, f, 2, "bid")?, "bid")?;
    let ask = decimal(line, field(line, f, 3, "ask")?, "ask")?;
    Tick::new(sym, bid, ask, ts, "replay")
        .map(ReplayRecord::Tick)
        .map_err(|e| ReplayError::Field {
            line,
            column: "ask",
            problem: e.to_string(),
        })
}

fn parse_bar(line: usize, f: &[&str]) -> Result<ReplayRecord, ReplayError> {
    let start = millis(line, field(line, f, 0, "start")?, "start")?;
    let sym = symbol(line, field(line, f, 1, "symbol")?)?;
    let raw_tf = field(line, f, 2, "timeframe")?;
    let timeframe = Timeframe::parse(raw_tf).map_err(|_| ReplayError::Field {
        line,
        column: "timeframe",
        problem: format!("`{raw_tf}` is not one of 1m 5m 15m 30m 1h 4h 1d"),
    })?;
    if timeframe.align(start) != start {
        return Err(ReplayError::Field {
            line,
            column: "start",
            problem: format!("is not aligned to a {timeframe} boundary"),
        });
    }
    let open = decimal(line, field(line, f, 3, "open")?, "open")?;
    let high = decimal(line, field(line, f, 4, "high")?, "high")?;
    let low = decimal(line, field(line, f, 5, "low")?, "low")?;
    let close = decimal(line, field(line, f, 6, "close")?, "close")?;
    let volume = decimal(line, field(line, f, 7, "volume")?, "volume")?;
    Candle::closed_bar(sym, timeframe, start, [open, high, low, close], volume)
        .map(ReplayRecord::Bar)
        .map_err(|e| ReplayError::Field {
            line,
            column: match e {
                suho_domain::MarketError::NegativeVolume { .. } => "volume",
                _ => "high",
            },
            problem: e.to_string(),
        })
}

/// How to play a recording.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Speed factor; 0 publishes as fast as possible.
    pub speed: f64,
    /// Stamp the first record "now" and keep the recorded gaps.
    pub rebase: bool,
}

/// Publishes `recording` until it ends or `shutdown`; returns how many records went out.
///
/// # Errors
/// The NATS connection is gone for good.
pub async fn run_replay(
    bus: MarketBus,
    recording: Recording,
    options: ReplayOptions,
    shutdown: CancellationToken,
) -> Result<usize, MarketServiceError> {
    let Some(first) = recording.records.first().map(ReplayRecord::time) else {
        return Ok(0);
    };
    let shift = if options.rebase { now_ms() - first } else { 0 };
    let started = tokio::time::Instant::now();
    tracing::info!(
        records = recording.records.len(),
        speed = options.speed,
        rebase = options.rebase,
        "replay publishing"
    );
    let mut sent = 0;
    for record in &recording.records {
        if options.speed > 0.0 {
            #[allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]
            let offset =
                Duration::from_secs_f64((record.time() - first) as f64 / 1000.0 / options.speed);
            tokio::select! {
                () = tokio::time::sleep_until(started + offset) => {}
                () = shutdown.cancelled() => return Ok(sent),
            }
        } else if shutdown.is_cancelled() {
            return Ok(sent);
        }
        match record.shifted(shift) {
            ReplayRecord::Tick(t) => {
                bus.publish(suho_domain::subject::tick(bus.prefix(), t.symbol), &t)
                    .await?;
            }
            ReplayRecord::Bar(c) => {
                bus.publish(
                    suho_domain::subject::candle(bus.prefix(), c.symbol, c.timeframe),
                    &c,
                )
                .await?;
            }
        }
        sent += 1;
    }
    tracing::info!(records = sent, "replay finished");
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_bars_parse_exactly() {
        let ticks = Recording::parse(
            "timestamp,symbol,bid,ask\n1704931200000,EUR/USD,1.0850,1.0852\n\n1704931200500,eurusd,1.08505,1.08521\n",
        )
        .unwrap();
        assert_eq!(ticks.records.len(), 2);
        let ReplayRecord::Tick(t) = &ticks.records[1] else {
            panic!()
        };
        assert_eq!(t.bid, Decimal::new(108_505, 5));
        assert_eq!(t.spread, Decimal::new(16, 5));
        let bars = Recording::parse(
            "start,symbol,timeframe,open,high,low,close,volume\n1704931200000,GBPUSD,1m,1.27,1.2705,1.2695,1.2701,42\n",
        )
        .unwrap();
        let ReplayRecord::Bar(c) = &bars.records[0] else {
            panic!()
        };
        assert_eq!(c.end - c.start, 60_000);
        assert!(c.closed);
    }

    #[test]
    fn errors_name_line_and_column() {
        let err = |text: &str| Recording::parse(text).unwrap_err().to_string();
        assert!(err("time,sym\n").starts_with("line 1: header"));
        assert_eq!(
            err("timestamp,symbol,bid,ask\n1,EURUSD,1.1,1.2\nx,EURUSD,1.1,1.2\n"),
            "line 3: `timestamp`: `x` is not epoch milliseconds"
        );
        assert!(err("timestamp,symbol,bid,ask\n1,EURUSD,1.2,1.1\n").starts_with("line 2: `ask`"));
        assert!(
            err("timestamp,symbol,bid,ask\n5,EURUSD,1.1,1.2\n4,EURUSD,1.1,1.2\n")
                .contains("time order")
        );
        assert!(err("timestamp,symbol,bid,ask\n5,EURUSD,1.1\n").contains("`ask`: is missing"));
        assert!(err(
            "start,symbol,timeframe,open,high,low,close,volume\n1000,EURUSD,1m,1,1,1,1,1\n"
        )
        .contains("aligned"));
        assert!(err(
            "start,symbol,timeframe,open,high,low,close,volume\n60000,EURUSD,1m,1,0.9,1,1,1\n"
        )
        .contains("`high`"));
    }

    #[test]
    fn rebasing_keeps_the_gaps() {
        let rec = Recording::parse(
            "timestamp,symbol,bid,ask\n1000,EURUSD,1.1,1.2\n1500,EURUSD,1.1,1.2\n",
        )
        .unwrap();
        let a = rec.records[0].shifted(10_000);
        let b = rec.records[1].shifted(10_000);
        assert_eq!(b.time() - a.time(), 500);
        assert_eq!(a.time(), 11_000);
    }
}
