//! NATS market-data payloads: ticks, candles, price request/reply, indicators, signals,
//! market alerts and service heartbeats.
//!
//! These are the contract's shapes for the market domain (core NATS, fire-and-forget). Market
//! data never goes to Kafka. Prices are exact [`Decimal`]s written as JSON numbers
//! (see [`crate::num`]).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use crate::envelope::NatsEnvelope;
use crate::symbol::Symbol;

/// A tick or bar that cannot exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketError {
    /// The prices of a bar contradict each other.
    #[error("inconsistent OHLC: open {open} high {high} low {low} close {close} (needs 0 < low <= open, close <= high)")]
    InconsistentBar {
        /// Open.
        open: Decimal,
        /// High.
        high: Decimal,
        /// Low.
        low: Decimal,
        /// Close.
        close: Decimal,
    },
    /// A bar's volume is below zero.
    #[error("volume {volume} is negative")]
    NegativeVolume {
        /// The volume.
        volume: Decimal,
    },
    /// The bid is zero or negative.
    #[error("bid {bid} must be positive")]
    NonPositiveBid {
        /// The offending bid.
        bid: Decimal,
    },
    /// The ask is below the bid.
    #[error("ask {ask} is below bid {bid}")]
    CrossedQuote {
        /// The bid.
        bid: Decimal,
        /// The ask.
        ask: Decimal,
    },
}

/// One quote from a feed, published on `market.{SYM}.tick`.
///
/// `symbol` keeps the seed's display form (`EUR/USD`) on the wire. `mid = (bid + ask) / 2` and
/// `spread = ask - bid`; on input they are optional and computed when absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TickWire")]
pub struct Tick {
    /// The pair (display form on the wire).
    #[serde(with = "crate::symbol::display_form")]
    pub symbol: Symbol,
    /// Best bid.
    #[serde(with = "crate::num")]
    pub bid: Decimal,
    /// Best ask.
    #[serde(with = "crate::num")]
    pub ask: Decimal,
    /// `(bid + ask) / 2`.
    #[serde(with = "crate::num")]
    pub mid: Decimal,
    /// `ask - bid`.
    #[serde(with = "crate::num")]
    pub spread: Decimal,
    /// Feed time, epoch milliseconds.
    pub timestamp: i64,
    /// Feed name, e.g. `polygon`.
    pub source: String,
}

impl Tick {
    /// Builds a tick, computing `mid` and `spread` exactly.
    ///
    /// # Errors
    /// [`MarketError::NonPositiveBid`] when `bid <= 0`, [`MarketError::CrossedQuote`] when
    /// `ask < bid`.
    pub fn new(
        symbol: Symbol,
        bid: Decimal,
        ask: Decimal,
        timestamp: i64,
        source: impl Into<String>,
    ) -> Result<Tick, MarketError> {
        validate_quote(bid, ask)?;
        Ok(Tick {
            symbol,
            bid,
            ask,
            mid: mid_of(bid, ask),
            spread: ask - bid,
            timestamp,
            source: source.into(),
        })
    }
}

fn validate_quote(bid: Decimal, ask: Decimal) -> Result<(), MarketError> {
    if bid <= Decimal::ZERO {
        return Err(MarketError::NonPositiveBid { bid });
    }
    if ask < bid {
        return Err(MarketError::CrossedQuote { bid, ask });
    }
    Ok(())
}

fn mid_of(bid: Decimal, ask: Decimal) -> Decimal {
    ((bid + ask) / Decimal::TWO).normalize()
}

/// The tick as it may arrive: `mid` and `spread` optional.
#[derive(Deserialize)]
struct TickWire {
    symbol: Symbol,
    #[serde(with = "crate::num")]
    bid: Decimal,
    #[serde(with = "crate::num")]
    ask: Decimal,
    #[serde(default, with = "crate::num::option")]
    mid: Option<Decimal>,
    #[serde(default, with = "crate::num::option")]
    spread: Option<Decimal>,
    timestamp: i64,
    source: String,
}

impl TryFrom<TickWire> for Tick {
    type Error = MarketError;

    fn try_from(w: TickWire) -> Result<Self, Self::Error> {
        validate_quote(w.bid, w.ask)?;
        Ok(Tick {
            symbol: w.symbol,
            bid: w.bid,
            ask: w.ask,
            mid: w.mid.unwrap_or_else(|| mid_of(w.bid, w.ask)),
            spread: w.spread.unwrap_or(w.ask - w.bid),
            timestamp: w.timestamp,
            source: w.source,
        })
    }
}

/// A string that is not one of the contract's timeframes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeframe {0:?}: expected one of 1m 5m 15m 30m 1h 4h 1d")]
pub struct TimeframeError(String);

/// A candle timeframe; on the wire and in subjects `1m 5m 15m 30m 1h 4h 1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timeframe {
    /// One minute.
    M1,
    /// Five minutes.
    M5,
    /// Fifteen minutes.
    M15,
    /// Thirty minutes.
    M30,
    /// One hour.
    H1,
    /// Four hours.
    H4,
    /// One day (UTC).
    D1,
}

impl Timeframe {
    /// Every timeframe, shortest first.
    pub const ALL: [Timeframe; 7] = [
        Timeframe::M1,
        Timeframe::M5,
        Timeframe::M15,
        Timeframe::M30,
        Timeframe::H1,
        Timeframe::H4,
        Timeframe::D1,
    ];

    /// The wire / subject form, e.g. `1m`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            Timeframe::M1 => "1m",
            Timeframe::M5 => "5m",
            Timeframe::M15 => "15m",
            Timeframe::M30 => "30m",
            Timeframe::H1 => "1h",
            Timeframe::H4 => "4h",
            Timeframe::D1 => "1d",
        }
    }

    /// Parses the wire form (`1m` ... `1d`), surrounding whitespace trimmed.
    ///
    /// # Errors
    /// [`TimeframeError`] naming the input for anything else.
    pub fn parse(input: &str) -> Result<Timeframe, TimeframeError> {
        let t = input.trim();
        Timeframe::ALL
            .into_iter()
            .find(|tf| tf.as_str() == t)
            .ok_or_else(|| TimeframeError(input.chars().take(64).collect()))
    }

    /// Length in milliseconds.
    #[must_use]
    pub const fn duration_ms(&self) -> i64 {
        const MIN: i64 = 60_000;
        match self {
            Timeframe::M1 => MIN,
            Timeframe::M5 => 5 * MIN,
            Timeframe::M15 => 15 * MIN,
            Timeframe::M30 => 30 * MIN,
            Timeframe::H1 => 60 * MIN,
            Timeframe::H4 => 240 * MIN,
            Timeframe::D1 => 1_440 * MIN,
        }
    }

    /// Start of the candle containing `ts_ms`: floored to the UTC boundary (also for negative
    /// timestamps).
    #[must_use]
    pub const fn align(&self, ts_ms: i64) -> i64 {
        ts_ms - ts_ms.rem_euclid(self.duration_ms())
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Timeframe {
    type Err = TimeframeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timeframe::parse(s)
    }
}

impl Serialize for Timeframe {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Timeframe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timeframe;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a timeframe: 1m 5m 15m 30m 1h 4h 1d")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timeframe, E> {
                Timeframe::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// On the wire a timeframe is one of the strings `1m 5m 15m 30m 1h 4h 1d`.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timeframe {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Timeframe::ALL.iter().map(Timeframe::as_str)))
            .description(Some("A candle timeframe, aligned to UTC boundaries."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timeframe {}

/// An OHLC candle, published on `market.{SYM}.{tf}`.
///
/// `start` is aligned to the timeframe boundary in UTC; `end = start + duration` (exclusive).
/// `volume` is the tick count when the feed has no volume. `closed` is false while the candle
/// is still forming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Candle {
    /// The pair (canonical form).
    pub symbol: Symbol,
    /// The timeframe.
    pub timeframe: Timeframe,
    /// First price.
    #[serde(with = "crate::num")]
    pub open: Decimal,
    /// Highest price.
    #[serde(with = "crate::num")]
    pub high: Decimal,
    /// Lowest price.
    #[serde(with = "crate::num")]
    pub low: Decimal,
    /// Last price.
    #[serde(with = "crate::num")]
    pub close: Decimal,
    /// Volume, or tick count.
    #[serde(with = "crate::num")]
    pub volume: Decimal,
    /// Aligned start, epoch ms.
    pub start: i64,
    /// `start + duration`, epoch ms (exclusive).
    pub end: i64,
    /// Whether the candle is final.
    pub closed: bool,
}

impl Candle {
    /// Opens a candle for the bucket containing `ts_ms` with a first price and volume.
    #[must_use]
    pub fn open_at(
        symbol: Symbol,
        timeframe: Timeframe,
        ts_ms: i64,
        price: Decimal,
        volume: Decimal,
    ) -> Candle {
        let start = timeframe.align(ts_ms);
        Candle {
            symbol,
            timeframe,
            open: price,
            high: price,
            low: price,
            close: price,
            volume,
            start,
            end: start + timeframe.duration_ms(),
            closed: false,
        }
    }

    /// A finished bar of the bucket containing `start_ms`, from a feed or a file.
    ///
    /// # Errors
    /// The prices contradict each other or the volume is negative (see [`Candle::check`]).
    pub fn closed_bar(
        symbol: Symbol,
        timeframe: Timeframe,
        start_ms: i64,
        [open, high, low, close]: [Decimal; 4],
        volume: Decimal,
    ) -> Result<Candle, MarketError> {
        let start = timeframe.align(start_ms);
        let bar = Candle {
            symbol,
            timeframe,
            open,
            high,
            low,
            close,
            volume,
            start,
            end: start + timeframe.duration_ms(),
            closed: true,
        };
        bar.check()?;
        Ok(bar)
    }

    /// Checks that the bar can exist: `0 < low <= open, close <= high` and `volume >= 0`.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn check(&self) -> Result<(), MarketError> {
        let (open, high, low, close) = (self.open, self.high, self.low, self.close);
        if low <= Decimal::ZERO || low > open.min(close) || high < open.max(close) {
            return Err(MarketError::InconsistentBar {
                open,
                high,
                low,
                close,
            });
        }
        if self.volume < Decimal::ZERO {
            return Err(MarketError::NegativeVolume {
                volume: self.volume,
            });
        }
        Ok(())
    }

    /// Whether `ts_ms` falls into this candle's `[start, end)` bucket.
    #[must_use]
    pub fn contains(&self, ts_ms: i64) -> bool {
        (self.start..self.end).contains(&ts_ms)
    }

    /// Adds a price and its volume (1 for a tick count) to the candle.
    pub fn update(&mut self, price: Decimal, volume: Decimal) {
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.close = price;
        self.volume += volume;
    }
}

/// The latest quote, the success reply on `market.{SYM}.price`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceQuote {
    /// The pair (canonical form).
    pub symbol: Symbol,
    /// Best bid.
    #[serde(with = "crate::num")]
    pub bid: Decimal,
    /// Best ask.
    #[serde(with = "crate::num")]
    pub ask: Decimal,
    /// `(bid + ask) / 2`.
    #[serde(with = "crate::num")]
    pub mid: Decimal,
    /// Time of the quote, epoch ms.
    pub timestamp: i64,
    /// Age of the quote when the reply was made, ms.
    pub age_ms: i64,
}

impl PriceQuote {
    /// The quote for `tick` as seen at `now_ms` (age never negative).
    #[must_use]
    pub fn from_tick(tick: &Tick, now_ms: i64) -> PriceQuote {
        PriceQuote {
            symbol: tick.symbol,
            bid: tick.bid,
            ask: tick.ask,
            mid: tick.mid,
            timestamp: tick.timestamp,
            age_ms: now_ms.saturating_sub(tick.timestamp).max(0),
        }
    }
}

/// Why a price request has no quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceErrorKind {
    /// No tick seen yet for the symbol.
    NoQuote,
    /// The latest tick is older than the staleness limit.
    Stale,
    /// The symbol is not streamed.
    UnknownSymbol,
}

impl PriceErrorKind {
    /// The wire form, e.g. `no_quote`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            PriceErrorKind::NoQuote => "no_quote",
            PriceErrorKind::Stale => "stale",
            PriceErrorKind::UnknownSymbol => "unknown_symbol",
        }
    }
}

impl fmt::Display for PriceErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error reply on `market.{SYM}.price`: `{error:"no_quote"}`, `{error:"stale", age_ms}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("no price: {error}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
pub struct PriceError {
    /// The reason.
    pub error: PriceErrorKind,
    /// Age of the stale quote, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<i64>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PriceError {
    /// `{error:"no_quote"}`.
    #[must_use]
    pub fn no_quote() -> PriceError {
        PriceError {
            error: PriceErrorKind::NoQuote,
            age_ms: None,
            message: None,
        }
    }

    /// `{error:"stale", age_ms}`.
    #[must_use]
    pub fn stale(age_ms: i64) -> PriceError {
        PriceError {
            error: PriceErrorKind::Stale,
            age_ms: Some(age_ms),
            message: None,
        }
    }

    /// `{error:"unknown_symbol", message}`.
    #[must_use]
    pub fn unknown_symbol(message: impl Into<String>) -> PriceError {
        PriceError {
            error: PriceErrorKind::UnknownSymbol,
            age_ms: None,
            message: Some(message.into()),
        }
    }
}

/// Any reply on `market.{SYM}.price`: a quote or an error object (untagged on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PriceReply {
    /// The latest quote.
    Quote(PriceQuote),
    /// No usable quote.
    Error(PriceError),
}

impl PriceReply {
    /// The quote, or the error reply as an error.
    ///
    /// # Errors
    /// The [`PriceError`] when the reply is an error.
    pub fn into_result(self) -> Result<PriceQuote, PriceError> {
        match self {
            PriceReply::Quote(q) => Ok(q),
            PriceReply::Error(e) => Err(e),
        }
    }
}

impl From<Result<PriceQuote, PriceError>> for PriceReply {
    fn from(r: Result<PriceQuote, PriceError>) -> Self {
        match r {
            Ok(q) => PriceReply::Quote(q),
            Err(e) => PriceReply::Error(e),
        }
    }
}

/// An indicator value on `indicators.{type}.{SYM}`; `value` is a number or, for multi-line
/// indicators (MACD, Bollinger bands), an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndicatorValue {
    /// The pair (canonical form).
    pub symbol: Symbol,
    /// Indicator name, e.g. `rsi`, `macd`.
    pub indicator: String,
    /// Timeframe the indicator is computed on.
    pub timeframe: Timeframe,
    /// The value: a number or an object of named lines.
    pub value: serde_json::Value,
    /// Time of the candle it was computed from, epoch ms.
    pub timestamp: i64,
}

/// A signal's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Direction {
    /// Go long.
    Buy,
    /// Go short.
    Sell,
    /// Stay out / flatten.
    Flat,
}

/// A strategy signal on `signals.{strategy}.{SYM}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Unique signal id.
    pub signal_id: String,
    /// Strategy name.
    pub strategy: String,
    /// The pair (canonical form).
    pub symbol: Symbol,
    /// Direction.
    pub direction: Direction,
    /// Confidence in `0..=1` (a score, not money).
    pub confidence: f64,
    /// Reference price.
    #[serde(with = "crate::num")]
    pub price: Decimal,
    /// Epoch ms.
    pub timestamp: i64,
    /// Model name / version.
    pub model: String,
}

/// A market alert on `alerts.market.{type}`; fields beyond the fixed ones go to `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarketAlert {
    /// Alert type, e.g. `spread_spike` (also the subject's last token).
    #[serde(rename = "type")]
    pub kind: String,
    /// The pair (canonical form).
    pub symbol: Symbol,
    /// Human-readable message.
    pub message: String,
    /// Epoch ms.
    pub timestamp: i64,
    /// Any further fields.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A service's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Working.
    Ok,
    /// Working with problems.
    Degraded,
    /// Not working.
    Down,
}

impl HealthStatus {
    /// The wire form, e.g. `ok`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Down => "down",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A heartbeat on `system.health.{service}`; service-specific fields go to `details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Service name.
    pub service: String,
    /// Health.
    pub status: HealthStatus,
    /// Epoch ms.
    pub timestamp: i64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Any further fields.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {

    #[test]
    fn closed_bars_are_checked() {
        let eur = Symbol::parse("EURUSD").unwrap();
        let d = |v: i64| Decimal::new(v, 4);
        let bar = Candle::closed_bar(
            eur,
            Timeframe::M5,
            1_704_931_234_567,
            [d(10850), d(10860), d(10840), d(10855)],
            d(10),
        )
        .unwrap();
        assert_eq!(bar.start, 1_704_931_200_000);
        assert_eq!(bar.end - bar.start, 300_000);
        assert!(bar.closed);
        for ohlc in [
            [d(10850), d(10849), d(10840), d(10845)], // high below open
            [d(10850), d(10860), d(10852), d(10855)], // low above open
            [d(10850), d(10860), d(0), d(10855)],     // low not positive
        ] {
            assert!(matches!(
                Candle::closed_bar(eur, Timeframe::M1, 0, ohlc, d(1)),
                Err(MarketError::InconsistentBar { .. })
            ));
        }
        assert!(matches!(
            Candle::closed_bar(eur, Timeframe::M1, 0, [d(1), d(1), d(1), d(1)], d(-1)),
            Err(MarketError::NegativeVolume { .. })
        ));
    }

    use super::*;
    use serde_json::json;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test decimal")
    }

    #[test]
    fn tick_new_validates() {
        let s = Symbol::parse("EURUSD").expect("sym");
        assert!(matches!(
            Tick::new(s, dec("0"), dec("1"), 0, "x"),
            Err(MarketError::NonPositiveBid { .. })
        ));
        assert!(matches!(
            Tick::new(s, dec("1.1"), dec("1.0"), 0, "x"),
            Err(MarketError::CrossedQuote { .. })
        ));
        let t = Tick::new(s, dec("1.1"), dec("1.1"), 0, "x").expect("locked market ok");
        assert_eq!(t.spread, Decimal::ZERO);
    }

    #[test]
    fn crossed_tick_is_rejected_on_input() {
        let v = json!({"symbol":"EUR/USD","bid":1.2,"ask":1.1,"timestamp":1,"source":"x"});
        assert!(serde_json::from_value::<Tick>(v).is_err());
    }

    #[test]
    fn timeframe_forms() {
        for tf in Timeframe::ALL {
            assert_eq!(Timeframe::parse(tf.as_str()), Ok(tf));
            assert_eq!(serde_json::to_value(tf).expect("write"), json!(tf.as_str()));
        }
        assert!(Timeframe::parse("2m").is_err());
        assert!(Timeframe::parse("1M").is_err());
    }

    #[test]
    fn candle_accumulates() {
        let s = Symbol::parse("EURUSD").expect("sym");
        let mut c = Candle::open_at(
            s,
            Timeframe::M1,
            1_704_931_234_567,
            dec("1.1"),
            Decimal::ONE,
        );
        assert_eq!(c.start, 1_704_931_200_000);
        assert_eq!(c.end, 1_704_931_260_000);
        c.update(dec("1.2"), Decimal::ONE);
        c.update(dec("1.0"), Decimal::ONE);
        c.update(dec("1.15"), Decimal::ONE);
        assert_eq!(
            (c.open, c.high, c.low, c.close),
            (dec("1.1"), dec("1.2"), dec("1.0"), dec("1.15"))
        );
        assert_eq!(c.volume, dec("4"));
        assert!(c.contains(1_704_931_259_999));
        assert!(!c.contains(1_704_931_260_000));
    }

    #[test]
    fn price_replies() {
        let q: PriceReply = serde_json::from_value(json!({
            "symbol":"EURUSD","bid":1.085,"ask":1.0852,"mid":1.0851,"timestamp":5,"age_ms":3
        }))
        .expect("quote");
        let q = q.into_result().expect("is quote");
        assert_eq!(q.mid, dec("1.0851"));

        let e: PriceReply =
            serde_json::from_value(json!({"error":"stale","age_ms":9000})).expect("error");
        assert_eq!(e.clone().into_result(), Err(PriceError::stale(9000)));
        assert_eq!(
            serde_json::to_value(PriceReply::Error(PriceError::no_quote())).expect("write"),
            json!({"error":"no_quote"})
        );
        assert_eq!(
            serde_json::to_value(&e).expect("write"),
            json!({"error":"stale","age_ms":9000})
        );
    }

    #[test]
    fn alert_and_heartbeat_keep_extra_fields() {
        let a = json!({"type":"spread_spike","symbol":"EURUSD","message":"wide","timestamp":1,"spread_pips":4.2});
        let alert: MarketAlert = serde_json::from_value(a.clone()).expect("alert");
        assert_eq!(alert.kind, "spread_spike");
        assert_eq!(serde_json::to_value(&alert).expect("write"), a);

        let h =
            json!({"service":"market","status":"degraded","timestamp":1,"uptime_s":30,"lag_ms":12});
        let hb: Heartbeat = serde_json::from_value(h.clone()).expect("hb");
        assert_eq!(hb.status, HealthStatus::Degraded);
        assert_eq!(serde_json::to_value(&hb).expect("write"), h);
    }

    #[test]
    fn signal_round_trip() {
        let v = json!({"signal_id":"sig_1","strategy":"scalping","symbol":"EURUSD","direction":"FLAT",
            "confidence":0.75,"price":1.0851,"timestamp":1,"model":"m1"});
        let s: Signal = serde_json::from_value(v.clone()).expect("signal");
        assert_eq!(s.direction, Direction::Flat);
        assert_eq!(serde_json::to_value(&s).expect("write"), v);
    }
}
