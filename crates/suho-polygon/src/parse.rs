//! Polygon wire formats and their conversion into domain types, in one place.
//!
//! The WebSocket sends JSON arrays of events tagged by `ev`: `status` messages, forex quotes
//! (`C`) and forex minute aggregates (`CA`). The REST `/v2/aggs` endpoint answers an object
//! whose `results` are bars. Each event is decoded on its own, so one malformed event (missing
//! field, bad pair, crossed quote, inconsistent OHLC) is reported with its reason and skipped
//! while the rest of the frame goes through. Prices are decoded with [`suho_domain::num`], which
//! recovers the exact digits of each JSON number (`1.0852` stays `1.0852`); no `f64` is kept.

use rust_decimal::Decimal;
use serde::Deserialize;
use suho_domain::{Candle, Symbol, Tick, Timeframe};

use crate::{PolygonError, SOURCE};

/// A `status` message: `connected`, `auth_success`, `auth_failed`, `success`, `error`...
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusWire {
    /// The status word.
    pub status: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
}

/// A forex quote event (`ev: "C"`).
#[derive(Debug, Clone, Deserialize)]
pub struct QuoteWire {
    /// The pair, `EUR/USD` (also accepted: `EUR-USD`, `EURUSD`).
    pub p: String,
    /// Exchange id.
    #[serde(default)]
    pub x: Option<i64>,
    /// Ask.
    #[serde(with = "suho_domain::num")]
    pub a: Decimal,
    /// Bid.
    #[serde(with = "suho_domain::num")]
    pub b: Decimal,
    /// Epoch ms.
    pub t: i64,
}

/// A forex minute aggregate event (`ev: "CA"`).
#[derive(Debug, Clone, Deserialize)]
pub struct MinuteAggWire {
    /// The pair.
    pub pair: String,
    /// Open.
    #[serde(with = "suho_domain::num")]
    pub o: Decimal,
    /// Close.
    #[serde(with = "suho_domain::num")]
    pub c: Decimal,
    /// High.
    #[serde(with = "suho_domain::num")]
    pub h: Decimal,
    /// Low.
    #[serde(with = "suho_domain::num")]
    pub l: Decimal,
    /// Volume (tick count for forex), when sent.
    #[serde(default, with = "suho_domain::num::option")]
    pub v: Option<Decimal>,
    /// Window start, epoch ms.
    pub s: i64,
    /// Window end, epoch ms.
    #[serde(default)]
    pub e: Option<i64>,
}

/// One bar of a REST aggregates response.
#[derive(Debug, Clone, Deserialize)]
pub struct AggBarWire {
    /// Open.
    #[serde(with = "suho_domain::num")]
    pub o: Decimal,
    /// Close.
    #[serde(with = "suho_domain::num")]
    pub c: Decimal,
    /// High.
    #[serde(with = "suho_domain::num")]
    pub h: Decimal,
    /// Low.
    #[serde(with = "suho_domain::num")]
    pub l: Decimal,
    /// Volume.
    #[serde(default, with = "suho_domain::num::option")]
    pub v: Option<Decimal>,
    /// Number of transactions (quotes) in the bar.
    #[serde(default)]
    pub n: Option<u64>,
    /// Bar start, epoch ms.
    pub t: i64,
}

/// The envelope of a REST aggregates response.
#[derive(Debug, Clone, Deserialize)]
pub struct AggsResponseWire {
    /// `C:EURUSD`.
    #[serde(default)]
    pub ticker: Option<String>,
    /// `OK`, `DELAYED` or `ERROR`.
    #[serde(default)]
    pub status: Option<String>,
    /// The bars, decoded one by one later.
    #[serde(default)]
    pub results: Option<Vec<serde_json::Value>>,
    /// The next page (without the API key).
    #[serde(default)]
    pub next_url: Option<String>,
    /// Error text on `status: ERROR`.
    #[serde(default)]
    pub error: Option<String>,
    /// Message text.
    #[serde(default)]
    pub message: Option<String>,
}

/// One decoded WebSocket event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A status message.
    Status(StatusWire),
    /// A quote.
    Quote(Tick),
    /// A closed minute candle.
    Minute(Candle),
    /// An event type this adapter does not handle (its `ev`).
    Ignored(String),
}

/// A WebSocket text frame, decoded event by event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedFrame {
    /// The good events, in frame order.
    pub messages: Vec<WsMessage>,
    /// One reason per malformed event (or one for a malformed frame).
    pub malformed: Vec<String>,
}

/// At most `n` characters of `s`, for error messages.
fn excerpt(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

/// Decodes a WebSocket text frame: a JSON array of events (a lone object is taken as a
/// one-event frame). Never fails: what cannot be decoded lands in
/// [`ParsedFrame::malformed`].
#[must_use]
pub fn parse_ws_frame(text: &str) -> ParsedFrame {
    let mut out = ParsedFrame::default();
    let events = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(events)) => events,
        Ok(obj @ serde_json::Value::Object(_)) => vec![obj],
        Ok(_) => {
            out.malformed.push(format!(
                "frame is not a JSON array of events: {}",
                excerpt(text, 120)
            ));
            return out;
        }
        Err(e) => {
            out.malformed
                .push(format!("frame is not JSON ({e}): {}", excerpt(text, 120)));
            return out;
        }
    };
    out.messages.reserve(events.len());
    for event in events {
        match parse_ws_event(event) {
            Ok(m) => out.messages.push(m),
            Err(reason) => out.malformed.push(reason),
        }
    }
    out
}

fn parse_ws_event(event: serde_json::Value) -> Result<WsMessage, String> {
    let ev = event
        .get("ev")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let Some(ev) = ev else {
        return Err(format!(
            "event without \"ev\": {}",
            excerpt(&event.to_string(), 120)
        ));
    };
    let describe = |e: &dyn std::fmt::Display, event: &serde_json::Value| {
        format!("bad {ev} event ({e}): {}", excerpt(&event.to_string(), 120))
    };
    match ev.as_str() {
        "status" => StatusWire::deserialize(&event)
            .map(WsMessage::Status)
            .map_err(|e| describe(&e, &event)),
        "C" => {
            let wire = QuoteWire::deserialize(&event).map_err(|e| describe(&e, &event))?;
            quote_to_tick(&wire)
                .map(WsMessage::Quote)
                .map_err(|e| describe(&e, &event))
        }
        "CA" => {
            let wire = MinuteAggWire::deserialize(&event).map_err(|e| describe(&e, &event))?;
            minute_to_candle(&wire)
                .map(WsMessage::Minute)
                .map_err(|e| describe(&e, &event))
        }
        _ => Ok(WsMessage::Ignored(ev)),
    }
}

/// A `C` quote as a [`Tick`] with source `polygon`.
///
/// # Errors
/// A message naming the problem: the pair is not a currency pair, the bid is not positive or
/// the quote is crossed.
pub fn quote_to_tick(w: &QuoteWire) -> Result<Tick, String> {
    let symbol = Symbol::parse(&w.p).map_err(|e| e.to_string())?;
    Tick::new(symbol, w.b, w.a, w.t, SOURCE).map_err(|e| e.to_string())
}

/// A `CA` minute aggregate as a closed 1m [`Candle`] (`volume` 0 when not sent).
///
/// # Errors
/// A message naming the problem: bad pair, inconsistent OHLC.
pub fn minute_to_candle(w: &MinuteAggWire) -> Result<Candle, String> {
    let symbol = Symbol::parse(&w.pair).map_err(|e| e.to_string())?;
    candle(
        symbol,
        Timeframe::M1,
        w.s,
        [w.o, w.h, w.l, w.c],
        w.v.unwrap_or(Decimal::ZERO),
    )
}

/// A REST bar as a closed [`Candle`] of the requested `timeframe`. `volume` is `v`, else the
/// quote count `n`, else 0.
///
/// # Errors
/// A message naming the problem: inconsistent OHLC, negative volume.
pub fn bar_to_candle(
    w: &AggBarWire,
    symbol: Symbol,
    timeframe: Timeframe,
) -> Result<Candle, String> {
    let volume =
        w.v.or_else(|| w.n.map(Decimal::from))
            .unwrap_or(Decimal::ZERO);
    candle(symbol, timeframe, w.t, [w.o, w.h, w.l, w.c], volume)
}

fn candle(
    symbol: Symbol,
    timeframe: Timeframe,
    start_ms: i64,
    ohlc: [Decimal; 4],
    volume: Decimal,
) -> Result<Candle, String> {
    Candle::closed_bar(symbol, timeframe, start_ms, ohlc, volume).map_err(|e| e.to_string())
}

/// One decoded page of REST aggregates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AggsPage {
    /// The good bars, in response order.
    pub bars: Vec<Candle>,
    /// One reason per malformed bar.
    pub malformed: Vec<String>,
    /// The next page's URL as sent (no API key).
    pub next_url: Option<String>,
}

/// Decodes a REST aggregates response body for `symbol` at `timeframe`.
///
/// # Errors
/// [`PolygonError::Decode`] when the body is not the aggregates envelope,
/// [`PolygonError::Protocol`] when it says `status: ERROR`. A single bad bar is reported in
/// [`AggsPage::malformed`] instead.
pub fn parse_aggs_page(
    body: &[u8],
    symbol: Symbol,
    timeframe: Timeframe,
) -> Result<AggsPage, PolygonError> {
    let wire: AggsResponseWire = serde_json::from_slice(body).map_err(|e| {
        PolygonError::Decode(format!(
            "aggregates response is not the expected JSON ({e}): {}",
            excerpt(&String::from_utf8_lossy(body), 120)
        ))
    })?;
    if wire.status.as_deref() == Some("ERROR") {
        let why = wire
            .error
            .or(wire.message)
            .unwrap_or_else(|| "no detail".to_owned());
        return Err(PolygonError::Protocol(format!(
            "aggregates status ERROR: {why}"
        )));
    }
    let mut page = AggsPage {
        next_url: wire.next_url.filter(|u| !u.trim().is_empty()),
        ..AggsPage::default()
    };
    for bar in wire.results.unwrap_or_default() {
        let decoded = AggBarWire::deserialize(&bar)
            .map_err(|e| e.to_string())
            .and_then(|w| bar_to_candle(&w, symbol, timeframe));
        match decoded {
            Ok(c) => page.bars.push(c),
            Err(e) => page.malformed.push(format!(
                "bad aggregate bar ({e}): {}",
                excerpt(&bar.to_string(), 120)
            )),
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn quote_is_exact() {
        let f = parse_ws_frame(
            r#"[{"ev":"C","p":"EUR/USD","x":48,"a":1.0852,"b":1.0850,"t":1704931200000}]"#,
        );
        assert!(f.malformed.is_empty(), "{:?}", f.malformed);
        let WsMessage::Quote(t) = &f.messages[0] else {
            panic!("{f:?}")
        };
        assert_eq!(t.symbol.as_str(), "EURUSD");
        assert_eq!((t.bid, t.ask), (dec("1.0850"), dec("1.0852")));
        assert_eq!(t.ask.to_string(), "1.0852");
        assert_eq!(t.mid, dec("1.0851"));
        assert_eq!(t.source, "polygon");
    }

    #[test]
    fn minute_aggregate() {
        let f = parse_ws_frame(
            r#"[{"ev":"CA","pair":"USD/JPY","o":148.123,"c":148.2,"h":148.25,"l":148.1,"v":120,"s":1704931200000,"e":1704931260000}]"#,
        );
        let WsMessage::Minute(c) = &f.messages[0] else {
            panic!("{f:?}")
        };
        assert_eq!(c.open.to_string(), "148.123");
        assert_eq!(c.timeframe, Timeframe::M1);
        assert_eq!((c.start, c.end), (1_704_931_200_000, 1_704_931_260_000));
        assert_eq!(c.volume, dec("120"));
    }

    #[test]
    fn bad_events_are_reported_not_fatal() {
        let f = parse_ws_frame(
            r#"[{"ev":"C","p":"EURUSDX","a":1,"b":1,"t":1},{"ev":"C","p":"EUR/USD","a":1.0,"b":1.1,"t":1},
               {"ev":"CA","pair":"EUR/USD","o":1,"c":1,"h":0.5,"l":1,"s":0},{"nope":1},{"ev":"C","p":"EUR/USD"},
               {"ev":"XQ","foo":1},{"ev":"C","p":"EUR/USD","a":1.1,"b":1.0,"t":5}]"#,
        );
        assert_eq!(f.malformed.len(), 5, "{:?}", f.malformed);
        assert_eq!(f.messages.len(), 2);
        assert_eq!(f.messages[0], WsMessage::Ignored("XQ".into()));
        assert_eq!(parse_ws_frame("garbage").malformed.len(), 1);
        assert_eq!(parse_ws_frame("42").malformed.len(), 1);
    }

    #[test]
    fn rest_page() {
        let s = Symbol::parse("EURUSD").unwrap();
        let body = br#"{"ticker":"C:EURUSD","status":"OK","results":[
            {"v":10,"vw":1.08,"o":1.0850,"c":1.0851,"h":1.0853,"l":1.0849,"t":1704931200000,"n":10},
            {"o":"x","c":1,"h":1,"l":1,"t":0}],"next_url":"https://api.polygon.io/v2/aggs/x?cursor=abc"}"#;
        let p = parse_aggs_page(body, s, Timeframe::H1).unwrap();
        assert_eq!(p.bars.len(), 1);
        assert_eq!(p.malformed.len(), 1);
        assert_eq!(p.bars[0].high.to_string(), "1.0853");
        assert_eq!(p.bars[0].end - p.bars[0].start, 3_600_000);
        assert!(p.next_url.is_some());
        assert!(matches!(
            parse_aggs_page(b"<html>", s, Timeframe::M1),
            Err(PolygonError::Decode(_))
        ));
        assert!(matches!(
            parse_aggs_page(br#"{"status":"ERROR","error":"bad"}"#, s, Timeframe::M1),
            Err(PolygonError::Protocol(_))
        ));
    }
}
