//! The engine's decisions, with no I/O: what a `user.commands` record asks for, and what a
//! price reply means for the broker (the tick it fills from). Fills, ids and events are the
//! broker's (`suho_broker`).
//!
//! Everything here is a pure function of its inputs (plus the `now_ms` it is given), so the
//! rules can be tested without a broker and a redelivered record is always decided the same
//! way. Ids of outcome events are derived from the command's `event_id` for the same reason.

use suho_domain::{CommandType, Order, PriceErrorKind, PriceReply, TradeCommand, SCHEMA_VERSION};

/// The reason given when a record's key is not the command's `user_id`.
pub const KEY_MISMATCH: &str = "record key does not match user_id";

/// What to do with one `user.commands` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The record is not a command at all: send it to the dead-letter topic with `reason`.
    DeadLetter {
        /// Why it could not be read, for the `dlq.reason` header.
        reason: String,
    },
    /// A readable command that will not be executed: answer `TRADE_REJECTED` with `reason`.
    Reject {
        /// The command.
        command: TradeCommand,
        /// Human-readable reason (the event's `reason`).
        reason: String,
    },
    /// A valid `OPEN_TRADE`: price it, then fill it.
    Open {
        /// The command.
        command: TradeCommand,
        /// Its order (present, validated).
        order: Order,
    },
    /// A valid `CLOSE_TRADE`, `MODIFY_TRADE`, `DEPOSIT` or `WITHDRAWAL`: carry it out on the
    /// user's paper account.
    Execute {
        /// The command.
        command: TradeCommand,
    },
}

/// A quote for the broker, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Priced {
    /// The latest quote, as a tick.
    Tick(suho_domain::Tick),
    /// The symbol can never be priced here: reject with this reason.
    Reject(String),
    /// No usable price right now: try again later.
    Retry(String),
}

/// The tick the broker fills from, out of a price reply for `symbol`: `unknown_symbol` is
/// final; `no_quote`, `stale`, or a quote for another symbol are transient.
#[must_use]
pub fn quote_tick(symbol: suho_domain::Symbol, reply: PriceReply) -> Priced {
    match reply {
        PriceReply::Quote(q) if q.symbol != symbol => Priced::Retry(format!(
            "price service answered for {} when asked for {symbol}",
            q.symbol
        )),
        PriceReply::Quote(q) => {
            match suho_domain::Tick::new(symbol, q.bid, q.ask, q.timestamp, "price-service") {
                Ok(t) => Priced::Tick(t),
                Err(e) => Priced::Retry(format!("unusable {symbol} quote: {e}")),
            }
        }
        PriceReply::Error(e) => match e.error {
            PriceErrorKind::UnknownSymbol => Priced::Reject(format!(
                "symbol {symbol} is not quoted{}",
                e.message.map(|m| format!(": {m}")).unwrap_or_default()
            )),
            PriceErrorKind::NoQuote => Priced::Retry(format!("no quote for {symbol} yet")),
            PriceErrorKind::Stale => Priced::Retry(format!(
                "quote for {symbol} is stale ({} ms old)",
                e.age_ms.unwrap_or_default()
            )),
        },
    }
}

/// Decides what a record with `key` and `payload` asks for.
///
/// A record that is not a JSON [`TradeCommand`] (no value, not JSON, wrong shape, empty
/// `user_id`) is dead-lettered: there is no user to answer. A readable command is rejected
/// when its record key is not its `user_id`, when its `schema_version` is newer than this
/// engine understands, when it fails [`TradeCommand::validate`], or when it is a
/// `CLOSE_TRADE` / `MODIFY_TRADE` (this engine keeps no positions yet).
#[must_use]
pub fn plan(key: Option<&[u8]>, payload: Option<&[u8]>) -> Plan {
    let Some(payload) = payload else {
        return Plan::DeadLetter {
            reason: "record has no value".into(),
        };
    };
    let command: TradeCommand = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => {
            return Plan::DeadLetter {
                reason: format!("not a trade command: {e}"),
            }
        }
    };
    if command.user_id.as_str().is_empty() {
        return Plan::DeadLetter {
            reason: "not a trade command: `user_id` is empty".into(),
        };
    }
    let reject = |command: TradeCommand, reason: String| Plan::Reject { command, reason };
    if key != Some(command.user_id.as_str().as_bytes()) {
        return reject(command, KEY_MISMATCH.into());
    }
    if command.schema_version > SCHEMA_VERSION {
        let reason = format!(
            "schema_version {} is newer than this engine understands ({SCHEMA_VERSION})",
            command.schema_version
        );
        return reject(command, reason);
    }
    if let Err(e) = command.validate() {
        let reason = e.to_string();
        return reject(command, reason);
    }
    match (command.event_type, command.order.clone()) {
        (CommandType::OpenTrade, Some(order)) => Plan::Open { command, order },
        // `validate` guarantees an order for OPEN_TRADE; answer rather than panic if not.
        (CommandType::OpenTrade, None) => reject(command, "OPEN_TRADE command has no order".into()),
        (
            CommandType::CloseTrade
            | CommandType::ModifyTrade
            | CommandType::Deposit
            | CommandType::Withdrawal,
            _,
        ) => Plan::Execute { command },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use suho_domain::{PriceError, PriceQuote, Side, Symbol, UserId};

    fn eur() -> Symbol {
        Symbol::parse("EURUSD").expect("symbol")
    }

    fn order(side: Side) -> Order {
        Order {
            symbol: eur(),
            side,
            volume: Decimal::new(1, 1),
            stop_loss: None,
            take_profit: None,
        }
    }

    fn open(user: &str, side: Side) -> TradeCommand {
        TradeCommand::open(UserId::new(user), order(side), None, 1_000)
    }

    fn bytes(cmd: &TradeCommand) -> Vec<u8> {
        serde_json::to_vec(cmd).expect("encode")
    }

    fn quote(symbol: Symbol) -> PriceReply {
        PriceReply::Quote(PriceQuote {
            symbol,
            bid: Decimal::new(108_500, 5),
            ask: Decimal::new(108_510, 5),
            mid: Decimal::new(1_085_050, 6),
            timestamp: 1,
            age_ms: 2,
        })
    }

    #[test]
    fn unreadable_records_are_dead_lettered() {
        for payload in [
            None,
            Some(&b"\x00not json"[..]),
            Some(&br#"{"event_type":"OPEN_TRADE"}"#[..]),
            Some(&br#"[1,2]"#[..]),
        ] {
            assert!(
                matches!(plan(Some(b"u1"), payload), Plan::DeadLetter { .. }),
                "{payload:?}"
            );
        }
        let mut cmd = open("u1", Side::Buy);
        cmd.user_id = UserId::new("");
        assert!(matches!(
            plan(Some(b""), Some(&bytes(&cmd))),
            Plan::DeadLetter { .. }
        ));
    }

    #[test]
    fn a_mis_keyed_record_is_rejected() {
        let cmd = open("u1", Side::Buy);
        for key in [Some(&b"u2"[..]), None] {
            match plan(key, Some(&bytes(&cmd))) {
                Plan::Reject { command, reason } => {
                    assert_eq!(command, cmd);
                    assert_eq!(reason, KEY_MISMATCH);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn invalid_newer_and_unsupported_commands_are_rejected() {
        let mut bad = open("u1", Side::Buy);
        if let Some(o) = bad.order.as_mut() {
            o.volume = Decimal::ZERO;
        }
        let mut newer = open("u1", Side::Buy);
        newer.schema_version = SCHEMA_VERSION + 1;
        let no_amount = TradeCommand {
            amount: None,
            ..TradeCommand::money(UserId::new("u1"), Decimal::ONE, false, 1)
        };
        let sub_cent = TradeCommand::money(UserId::new("u1"), Decimal::new(1001, 3), true, 1);
        for (cmd, want) in [
            (bad, "must be positive"),
            (newer, "schema_version 2"),
            (no_amount, "missing `amount`"),
            (sub_cent, "at most 2 decimals"),
        ] {
            match plan(Some(b"u1"), Some(&bytes(&cmd))) {
                Plan::Reject { reason, .. } => assert!(reason.contains(want), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        // Close, modify, deposit and withdrawal go to the paper account.
        for cmd in [
            TradeCommand::close(UserId::new("u1"), "trd_1", 1),
            TradeCommand::modify(UserId::new("u1"), "trd_1", Some(Decimal::ONE), None, 1),
            TradeCommand::money(UserId::new("u1"), Decimal::new(10_000, 2), false, 1),
            TradeCommand::money(UserId::new("u1"), Decimal::new(5_000, 2), true, 1),
        ] {
            assert!(
                matches!(plan(Some(b"u1"), Some(&bytes(&cmd))), Plan::Execute { .. }),
                "{cmd:?}"
            );
        }
    }

    #[test]
    fn a_valid_open_is_planned() {
        let cmd = open("u1", Side::Sell);
        assert_eq!(
            plan(Some(b"u1"), Some(&bytes(&cmd))),
            Plan::Open {
                command: cmd.clone(),
                order: order(Side::Sell)
            }
        );
    }

    #[test]
    fn a_quote_becomes_the_tick_the_broker_fills_from() {
        match quote_tick(eur(), quote(eur())) {
            Priced::Tick(t) => {
                assert_eq!(t.symbol, eur());
                assert_eq!(t.bid, Decimal::new(108_500, 5));
                assert_eq!(t.ask, Decimal::new(108_510, 5));
                assert_eq!(t.timestamp, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn price_errors_are_final_or_transient() {
        let s = eur();
        assert!(matches!(
            quote_tick(s, PriceReply::Error(PriceError::unknown_symbol("not here"))),
            Priced::Reject(r) if r.contains("EURUSD") && r.contains("not here")
        ));
        assert!(matches!(
            quote_tick(s, PriceReply::Error(PriceError::no_quote())),
            Priced::Retry(_)
        ));
        assert!(matches!(
            quote_tick(s, PriceReply::Error(PriceError::stale(9000))),
            Priced::Retry(r) if r.contains("9000")
        ));
        let gbp = Symbol::parse("GBPUSD").expect("symbol");
        assert!(matches!(quote_tick(s, quote(gbp)), Priced::Retry(_)));
    }
}
