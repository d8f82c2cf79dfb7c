//! The `/ws` wire format: client messages read one field at a time (every error names its
//! field), and the server's envelopes, each built once as text and shared by every recipient.
//!
//! Client: `{"action":"auth","token":...,"positions"?:[...]}`,
//! `{"action":"subscribe"|"unsubscribe","symbols":[...]}`, `{"action":"resume","positions":[...]}`.
//! Server: `{"channel":"market","subject":...,"data":...}`,
//! `{"channel":"user","topic":...,"position":"user.trades:3:41","data":...}`,
//! `{"channel":"control","event":"authenticated"|"ready"|"subscribed"|"unsubscribed",...}` and
//! `{"channel":"error","error":"invalid_field","field":...,"message":...}`.

use std::collections::HashSet;
use std::fmt;

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use suho_domain::{Symbol, UserTopic};

/// The user topics a connection receives, without the deployment's prefix.
pub const USER_TOPICS: [UserTopic; 4] = [
    UserTopic::Trades,
    UserTopic::Mt5Status,
    UserTopic::RiskAlerts,
    UserTopic::Transactions,
];

/// At most this many symbols in one subscribe or unsubscribe.
const MAX_SYMBOLS: usize = 100;

/// A place in the user event log: `topic:partition:offset`, e.g. `user.trades:3:41` (the
/// topic without the deployment's prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// One of [`USER_TOPICS`].
    pub topic: UserTopic,
    /// The partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.topic.name(),
            self.partition,
            self.offset
        )
    }
}

impl Position {
    /// Parses `topic:partition:offset`; the partition must exist and the offset be `>= -1`
    /// (`-1`: from the partition's start).
    ///
    /// # Errors
    /// What is wrong, for an error message.
    pub fn parse(text: &str) -> Result<Position, String> {
        let mut parts = text.rsplitn(3, ':');
        let (Some(offset), Some(partition), Some(topic)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{text:?} is not `topic:partition:offset`"));
        };
        let topic = UserTopic::from_name(topic)
            .filter(|t| USER_TOPICS.contains(t))
            .ok_or_else(|| {
                format!(
                    "{topic:?} is not one of {}",
                    USER_TOPICS.map(|t| t.name()).join(", ")
                )
            })?;
        // Written as suho writes them: no sign, no leading zero, at most 18 digits.
        let canonical = |t: &str| {
            t == "-1"
                || (!t.is_empty()
                    && t.len() <= 18
                    && (t == "0" || !t.starts_with('0'))
                    && t.bytes().all(|b| b.is_ascii_digit()))
        };
        let partition: i32 = Some(partition)
            .filter(|t| canonical(t))
            .and_then(|t| t.parse().ok())
            .filter(|p| (0..topic.partitions()).contains(p))
            .ok_or_else(|| format!("partition {partition:?} of {} does not exist", topic.name()))?;
        let offset: i64 = Some(offset)
            .filter(|t| canonical(t))
            .and_then(|t| t.parse().ok())
            .filter(|o| *o >= -1)
            .ok_or_else(|| format!("offset {offset:?} is not an integer >= -1"))?;
        Ok(Position {
            topic,
            partition,
            offset,
        })
    }

    /// Parses a comma-separated list (the `resume` query parameter).
    ///
    /// # Errors
    /// The first bad entry.
    pub fn parse_list(text: &str) -> Result<Vec<Position>, String> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let list: Result<Vec<_>, _> = text.split(',').map(Position::parse).collect();
        Ok(latest(list?))
    }

    /// What [`Position::parse_list`] takes, as a pattern (ECMA-262) for the OpenAPI
    /// document: entries of a user topic, one of its partitions and an offset of at most 18
    /// digits without a leading zero (or `-1`), comma-separated, no spaces; or nothing.
    #[must_use]
    pub fn list_pattern() -> String {
        let topics: Vec<String> = USER_TOPICS
            .iter()
            .map(|t| {
                let partitions: Vec<String> = (0..t.partitions()).map(|p| p.to_string()).collect();
                format!(
                    "{}:(?:{})",
                    t.name().replace('.', r"\."),
                    partitions.join("|")
                )
            })
            .collect();
        let entry = format!(r"(?:{}):(?:-1|0|[1-9][0-9]{{0,17}})", topics.join("|"));
        format!("^(?:{entry}(?:,{entry})*)?$")
    }
}

/// One position per partition: of one named more than once, the greatest offset (the
/// latest event received there).
fn latest(positions: Vec<Position>) -> Vec<Position> {
    let mut out: Vec<Position> = Vec::with_capacity(positions.len());
    for p in positions {
        match out
            .iter_mut()
            .find(|q| q.topic == p.topic && q.partition == p.partition)
        {
            Some(q) => q.offset = q.offset.max(p.offset),
            None => out.push(p),
        }
    }
    out
}

/// A client message.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// The first message, when the token was not in the query.
    Auth {
        /// The JWT.
        token: String,
        /// Where to resume from (empty: live only).
        positions: Vec<Position>,
    },
    /// Add symbols.
    Subscribe(Vec<Symbol>),
    /// Remove symbols.
    Unsubscribe(Vec<Symbol>),
    /// Catch up on the user's events after these positions.
    Resume(Vec<Position>),
}

/// A client message that is not valid, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field (`symbols[2]`, `positions[0]`, `action`...).
    pub field: String,
    /// What is wrong, starting with the field's name.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl fmt::Display) -> Invalid {
    let field = field.into();
    Invalid {
        message: format!("{field}: {message}"),
        field,
    }
}

/// Reads a client message; `symbols` is the set that may be subscribed to.
///
/// # Errors
/// [`Invalid`] naming the field.
pub fn parse(text: &str, symbols: &HashSet<Symbol>) -> Result<ClientMessage, Invalid> {
    let value: Value = serde_json::from_str(text).map_err(|e| invalid("message", e))?;
    let Value::Object(obj) = value else {
        return Err(invalid("message", "must be a JSON object"));
    };
    let action = string(&obj, "action")?;
    match action {
        "auth" => Ok(ClientMessage::Auth {
            token: string(&obj, "token")?.to_string(),
            positions: match obj.get("positions") {
                None | Some(Value::Null) => Vec::new(),
                Some(_) => positions(&obj)?,
            },
        }),
        "subscribe" => Ok(ClientMessage::Subscribe(symbol_list(&obj, symbols)?)),
        "unsubscribe" => Ok(ClientMessage::Unsubscribe(symbol_list(&obj, symbols)?)),
        "resume" => Ok(ClientMessage::Resume(positions(&obj)?)),
        other => Err(invalid(
            "action",
            format!("{other:?} is not one of auth, subscribe, unsubscribe, resume"),
        )),
    }
}

fn string<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, Invalid> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(invalid(field, "must not be empty")),
        None | Some(Value::Null) => Err(invalid(field, "is required")),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

fn array<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a Vec<Value>, Invalid> {
    match obj.get(field) {
        Some(Value::Array(items)) if items.len() <= MAX_SYMBOLS => Ok(items),
        Some(Value::Array(_)) => Err(invalid(
            field,
            format!("holds at most {MAX_SYMBOLS} entries"),
        )),
        None | Some(Value::Null) => Err(invalid(field, "is required")),
        Some(_) => Err(invalid(field, "must be an array")),
    }
}

fn symbol_list(obj: &Map<String, Value>, traded: &HashSet<Symbol>) -> Result<Vec<Symbol>, Invalid> {
    let mut out = Vec::new();
    for (i, item) in array(obj, "symbols")?.iter().enumerate() {
        let field = format!("symbols[{i}]");
        let Value::String(s) = item else {
            return Err(invalid(field, "must be a string"));
        };
        let symbol = Symbol::parse(s).map_err(|e| invalid(field.clone(), e))?;
        if !traded.contains(&symbol) {
            return Err(invalid(field, format!("{symbol} is not traded here")));
        }
        out.push(symbol);
    }
    Ok(out)
}

fn positions(obj: &Map<String, Value>) -> Result<Vec<Position>, Invalid> {
    let mut out = Vec::new();
    for (i, item) in array(obj, "positions")?.iter().enumerate() {
        let field = format!("positions[{i}]");
        let Value::String(s) = item else {
            return Err(invalid(field, "must be a string `topic:partition:offset`"));
        };
        out.push(Position::parse(s).map_err(|e| invalid(field, e))?);
    }
    Ok(latest(out))
}

/// `{"channel":"market","subject":...,"data":...}`; `None` if `payload` is not JSON.
pub fn market(subject: &str, payload: &[u8]) -> Option<Utf8Bytes> {
    let data: &RawValue = serde_json::from_slice(payload).ok()?;
    let subject = serde_json::to_string(subject).ok()?;
    Some(Utf8Bytes::from(format!(
        r#"{{"channel":"market","subject":{subject},"data":{}}}"#,
        data.get()
    )))
}

/// The user-channel envelope of a record of `owner`'s: `None` unless the payload is JSON whose
/// `user_id` is `owner` (the record's key). Producers key every record by its own `user_id`;
/// a record that breaks that is never shown to the key's user.
pub fn user(position: Position, payload: &[u8], owner: &str) -> Option<Utf8Bytes> {
    #[derive(serde::Deserialize)]
    struct Owner<'a> {
        #[serde(borrow)]
        user_id: Option<std::borrow::Cow<'a, str>>,
    }
    let of: Owner<'_> = serde_json::from_slice(payload).ok()?;
    if of.user_id.as_deref() != Some(owner) {
        return None;
    }
    let data: &RawValue = serde_json::from_slice(payload).ok()?;
    Some(Utf8Bytes::from(format!(
        r#"{{"channel":"user","topic":"{}","position":"{position}","data":{}}}"#,
        position.topic.name(),
        data.get()
    )))
}

/// `{"channel":"error","error":"invalid_field","field":...,"message":...}`.
pub fn error(e: &Invalid) -> Utf8Bytes {
    Utf8Bytes::from(
        json!({"channel": "error", "error": "invalid_field", "field": e.field, "message": e.message})
            .to_string(),
    )
}

/// `{"channel":"control","event":...}` plus `fields`.
pub fn control(event: &str, fields: Value) -> Utf8Bytes {
    let mut obj = Map::new();
    obj.insert("channel".into(), "control".into());
    obj.insert("event".into(), event.into());
    if let Value::Object(extra) = fields {
        obj.extend(extra);
    }
    Utf8Bytes::from(Value::Object(obj).to_string())
}

/// The symbols of a subscription, canonical and sorted, for control messages.
pub fn symbol_names<'a>(symbols: impl IntoIterator<Item = &'a Symbol>) -> Vec<String> {
    let mut names: Vec<String> = symbols
        .into_iter()
        .map(|s| s.as_str().to_string())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traded() -> HashSet<Symbol> {
        suho_domain::major_fx().into_iter().collect()
    }

    #[test]
    fn symbols_take_any_form_and_errors_name_the_entry() {
        let m = parse(
            r#"{"action":"subscribe","symbols":["eur/usd","GBPUSD"]}"#,
            &traded(),
        );
        assert_eq!(
            m,
            Ok(ClientMessage::Subscribe(vec![
                Symbol::parse("EURUSD").unwrap(),
                Symbol::parse("GBPUSD").unwrap()
            ]))
        );
        let e = parse(
            r#"{"action":"subscribe","symbols":["EURUSD","EU"]}"#,
            &traded(),
        )
        .unwrap_err();
        assert_eq!(e.field, "symbols[1]");
        assert!(e.message.starts_with("symbols[1]: "), "{}", e.message);
        let e = parse(r#"{"action":"subscribe","symbols":"EURUSD"}"#, &traded()).unwrap_err();
        assert_eq!(e.field, "symbols");
        let e = parse(r#"{"action":"dance"}"#, &traded()).unwrap_err();
        assert_eq!(e.field, "action");
        let e = parse("nope", &traded()).unwrap_err();
        assert_eq!(e.field, "message");
    }

    #[test]
    fn positions_round_trip_and_are_checked() {
        let p = Position::parse("user.trades:5:41").unwrap();
        assert_eq!(p.to_string(), "user.trades:5:41");
        assert!(
            Position::parse("user.trades:6:41").is_err(),
            "only 6 partitions"
        );
        assert!(
            Position::parse("user.commands:0:1").is_err(),
            "not a streamed topic"
        );
        assert!(Position::parse("user.trades:0:-2").is_err());
        for bad in [
            "user.trades:01:4",
            "user.trades:+1:4",
            "user.trades:1:007",
            "user.trades:1:-0",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad}");
        }
        // A partition named twice: the later event, the greater offset.
        let twice = Position::parse_list("user.trades:1:5,user.trades:1:4").unwrap();
        assert_eq!(twice, vec![Position::parse("user.trades:1:5").unwrap()]);
        let list = Position::parse_list("user.trades:1:4,user.mt5_status:0:-1").unwrap();
        assert_eq!(list.len(), 2);
        assert!(Position::parse_list("").unwrap().is_empty());
        assert!(Position::parse_list("user.trades:1:4, user.mt5_status:0:-1").is_err());
        // The document's pattern takes what the parser takes.
        let pattern = regex::Regex::new(&Position::list_pattern()).unwrap();
        for ok in [
            "",
            "user.trades:5:41",
            "user.trades:1:4,user.mt5_status:0:-1",
        ] {
            assert!(pattern.is_match(ok), "{ok}");
        }
        for bad in [
            "user.trades:6:1",
            "user.trades:01:4",
            " user.trades:1:4",
            "user.trades:1:4,",
        ] {
            assert!(!pattern.is_match(bad), "{bad}");
        }
        let e = parse(
            r#"{"action":"resume","positions":["user.trades:1:4",7]}"#,
            &traded(),
        )
        .unwrap_err();
        assert_eq!(e.field, "positions[1]");
    }

    #[test]
    fn envelopes_embed_the_payload_as_is() {
        let m = market("market.EURUSD.tick", br#"{"bid":1.1}"#).unwrap();
        let v: Value = serde_json::from_str(m.as_str()).unwrap();
        assert_eq!(v["channel"], "market");
        assert_eq!(v["subject"], "market.EURUSD.tick");
        assert_eq!(v["data"]["bid"], 1.1);
        assert!(market("x", b"not json").is_none());
        let p = Position::parse("user.trades:2:7").unwrap();
        let payload = br#"{"user_id":"u1","a":1}"#;
        let u: Value = serde_json::from_str(user(p, payload, "u1").unwrap().as_str()).unwrap();
        assert_eq!(u["topic"], "user.trades");
        assert_eq!(u["position"], "user.trades:2:7");
        assert_eq!(u["data"]["a"], 1);
        // A record keyed by one user but carrying another's event reaches neither.
        assert!(user(p, payload, "u2").is_none());
        assert!(user(p, br#"{"a":1}"#, "u1").is_none());
    }
}
