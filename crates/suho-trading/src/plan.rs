//! The engine's decisions, with no I/O: what a `user.commands` record asks for, and what a
//! price reply means for the broker (the tick it fills from). Fills, ids and events are the
//! broker's (`suho_broker`).
//!
//! Everything here is a pure function of its inputs (plus the `now_ms` it is given), so the
//! rules can be tested without a broker and a redelivered record is always decided the same
//! way. Ids of outcome events are derived from the command's `event_id` for the same reason.

use suho_domain::{
    CancelOrder, ClosePositions, CloseTrade, CommandHead, CommandKind, ModifyTrade, Money,
    OpenTrade, PriceErrorKind, PriceReply, ReplaceOrder, TradeCommand, SCHEMA_VERSION,
};

/// The reason given when a record's key is not the command's `user_id`.
pub const KEY_MISMATCH: &str = "record key does not match user_id";

/// What to do with one `user.commands` record: one variant per command kind, each holding
/// exactly what carrying it out needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The record is not a command at all: send it to the dead-letter topic with `reason`.
    DeadLetter {
        /// Why it could not be read, for the `dlq.reason` header.
        reason: String,
    },
    /// A command with a readable head that will not be executed: answer `TRADE_REJECTED`
    /// with `reason`.
    Reject {
        /// The command's head.
        head: CommandHead,
        /// Its kind, when that could be read.
        kind: Option<CommandKind>,
        /// Human-readable reason (the event's `reason`).
        reason: String,
    },
    /// A valid `OPEN_TRADE`: price its symbol, then fill it (market) or rest it (pending).
    Open {
        /// The command's head.
        head: CommandHead,
        /// The order.
        open: OpenTrade,
    },
    /// A valid `CLOSE_TRADE`: price the position's symbol, then close it.
    Close {
        /// The command's head.
        head: CommandHead,
        /// The position.
        close: CloseTrade,
    },
    /// A valid `CLOSE_POSITIONS`: price its symbol, then close the strategy's positions.
    ClosePositions {
        /// The command's head.
        head: CommandHead,
        /// The strategy and symbol.
        close: ClosePositions,
    },
    /// A valid `MODIFY_TRADE`: price the position's symbol, then change its stops.
    Modify {
        /// The command's head.
        head: CommandHead,
        /// The position and its new stops.
        modify: ModifyTrade,
    },
    /// A valid `DEPOSIT`: credit the account.
    Deposit {
        /// The command's head.
        head: CommandHead,
        /// The amount.
        money: Money,
    },
    /// A valid `WITHDRAWAL`: debit the account.
    Withdraw {
        /// The command's head.
        head: CommandHead,
        /// The amount.
        money: Money,
    },
    /// An `OPEN_ACCOUNT`: open the account with its opening balance.
    OpenAccount {
        /// The command's head.
        head: CommandHead,
    },
    /// A valid `CANCEL_ORDER`: take the pending order out of the book.
    Cancel {
        /// The command's head.
        head: CommandHead,
        /// The order.
        cancel: CancelOrder,
    },
    /// A valid `REPLACE_ORDER`: price the order's symbol, then change it.
    Replace {
        /// The command's head.
        head: CommandHead,
        /// The order and what changes.
        replace: ReplaceOrder,
    },
}

impl Plan {
    /// The head of the command this plan answers (none for a dead letter).
    #[must_use]
    pub fn head(&self) -> Option<&CommandHead> {
        match self {
            Plan::DeadLetter { .. } => None,
            Plan::Reject { head, .. }
            | Plan::Open { head, .. }
            | Plan::Close { head, .. }
            | Plan::ClosePositions { head, .. }
            | Plan::Modify { head, .. }
            | Plan::Deposit { head, .. }
            | Plan::Withdraw { head, .. }
            | Plan::OpenAccount { head }
            | Plan::Cancel { head, .. }
            | Plan::Replace { head, .. } => Some(head),
        }
    }

    /// The kind of the command this plan carries out, as read (for a rejection that should
    /// still describe it).
    #[must_use]
    pub fn kind(&self) -> Option<CommandKind> {
        Some(match self {
            Plan::DeadLetter { .. } => return None,
            Plan::Reject { kind, .. } => return kind.clone(),
            Plan::Open { open, .. } => CommandKind::OpenTrade(open.clone()),
            Plan::Close { close, .. } => CommandKind::CloseTrade(close.clone()),
            Plan::ClosePositions { close, .. } => CommandKind::ClosePositions(close.clone()),
            Plan::Modify { modify, .. } => CommandKind::ModifyTrade(modify.clone()),
            Plan::Deposit { money, .. } => CommandKind::Deposit(money.clone()),
            Plan::Withdraw { money, .. } => CommandKind::Withdrawal(money.clone()),
            Plan::OpenAccount { .. } => CommandKind::OpenAccount,
            Plan::Cancel { cancel, .. } => CommandKind::CancelOrder(cancel.clone()),
            Plan::Replace { replace, .. } => CommandKind::ReplaceOrder(replace.clone()),
        })
    }

    /// Whether the plan executes something on the account (and so counts against the
    /// user's command rate).
    #[must_use]
    pub fn executes(&self) -> bool {
        !matches!(self, Plan::DeadLetter { .. } | Plan::Reject { .. })
    }
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
/// A record without a readable command head (no value, not JSON, no `event_id`, `user_id`
/// or `timestamp`, an empty `user_id`) is dead-lettered: there is no user to answer. A
/// readable head is answered with a rejection when its record key is not its `user_id`,
/// when its `schema_version` is newer than this engine understands, when its kind cannot be
/// read (an unknown `event_type`, a field its kind needs missing or malformed), or when the
/// kind's values break its rules ([`CommandKind::validate`]). Anything else is planned by
/// its kind.
#[must_use]
pub fn plan(key: Option<&[u8]>, payload: Option<&[u8]>) -> Plan {
    let Some(payload) = payload else {
        return Plan::DeadLetter {
            reason: "record has no value".into(),
        };
    };
    let (head, kind) = match serde_json::from_slice::<TradeCommand>(payload) {
        Ok(c) => (c.head, Ok(c.kind)),
        Err(e) => match serde_json::from_slice::<CommandHead>(payload) {
            Ok(head) => (head, Err(e)),
            Err(_) => {
                return Plan::DeadLetter {
                    reason: format!("not a trade command: {e}"),
                }
            }
        },
    };
    if head.user_id.as_str().is_empty() {
        return Plan::DeadLetter {
            reason: "not a trade command: `user_id` is empty".into(),
        };
    }
    let reject = |head, kind, reason| Plan::Reject { head, kind, reason };
    if key != Some(head.user_id.as_str().as_bytes()) {
        return reject(head, kind.ok(), KEY_MISMATCH.into());
    }
    if head.schema_version > SCHEMA_VERSION {
        let reason = format!(
            "schema_version {} is newer than this engine understands ({SCHEMA_VERSION})",
            head.schema_version
        );
        return reject(head, kind.ok(), reason);
    }
    let kind = match kind {
        Ok(k) => k,
        Err(e) => return reject(head, None, format!("not a valid command: {e}")),
    };
    if let Err(e) = kind.validate() {
        return reject(head, Some(kind), e.to_string());
    }
    match kind {
        CommandKind::OpenTrade(open) => Plan::Open { head, open },
        CommandKind::CloseTrade(close) => Plan::Close { head, close },
        CommandKind::ClosePositions(close) => Plan::ClosePositions { head, close },
        CommandKind::ModifyTrade(modify) => Plan::Modify { head, modify },
        CommandKind::Deposit(money) => Plan::Deposit { head, money },
        CommandKind::Withdrawal(money) => Plan::Withdraw { head, money },
        CommandKind::CancelOrder(cancel) => Plan::Cancel { head, cancel },
        CommandKind::ReplaceOrder(replace) => Plan::Replace { head, replace },
        CommandKind::OpenAccount => Plan::OpenAccount { head },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use suho_domain::{Order, PriceError, PriceQuote, Side, Symbol, UserId};

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
        cmd.head.user_id = UserId::new("");
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
                Plan::Reject { head, kind, reason } => {
                    assert_eq!((head, kind), (cmd.head.clone(), Some(cmd.kind.clone())));
                    assert_eq!(reason, KEY_MISMATCH);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn invalid_newer_and_unreadable_kinds_are_rejected() {
        let mut bad = open("u1", Side::Buy);
        if let CommandKind::OpenTrade(o) = &mut bad.kind {
            o.order.volume = Decimal::ZERO;
        }
        let mut newer = open("u1", Side::Buy);
        newer.head.schema_version = SCHEMA_VERSION + 1;
        let sub_cent = TradeCommand::money(UserId::new("u1"), Decimal::new(1001, 3), true, 1);
        for (cmd, want) in [
            (bytes(&bad), "must be positive"),
            (bytes(&newer), "schema_version 2"),
            (bytes(&sub_cent), "at most 2 decimals"),
            (
                br#"{"event_id":"c","event_type":"DEPOSIT","user_id":"u1","timestamp":1}"#.to_vec(),
                "missing field `amount`",
            ),
            (
                br#"{"event_id":"c","event_type":"EXPLODE","user_id":"u1","timestamp":1}"#.to_vec(),
                "unknown variant `EXPLODE`",
            ),
        ] {
            match plan(Some(b"u1"), Some(&cmd)) {
                Plan::Reject { reason, .. } => assert!(reason.contains(want), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn each_kind_gets_its_own_plan() {
        let u = || UserId::new("u1");
        let cases = [
            (open("u1", Side::Sell), "open"),
            (TradeCommand::close(u(), "trd_1", 1), "close"),
            (
                TradeCommand::modify(u(), "trd_1", Some(Decimal::ONE), None, 1),
                "modify",
            ),
            (
                TradeCommand::money(u(), Decimal::new(10_000, 2), false, 1),
                "deposit",
            ),
            (
                TradeCommand::money(u(), Decimal::new(5_000, 2), true, 1),
                "withdraw",
            ),
            (TradeCommand::open_account(u(), 1), "open account"),
        ];
        for (cmd, want) in cases {
            let planned = plan(Some(b"u1"), Some(&bytes(&cmd)));
            let got = match &planned {
                Plan::Open { open, .. } if Some(&open.order) == cmd.kind.order() => "open",
                Plan::Close { .. } => "close",
                Plan::Modify { .. } => "modify",
                Plan::Deposit { .. } => "deposit",
                Plan::Withdraw { .. } => "withdraw",
                Plan::OpenAccount { .. } => "open account",
                other => panic!("{other:?}"),
            };
            assert_eq!(got, want);
            assert_eq!(planned.head(), Some(&cmd.head));
            assert_eq!(planned.kind(), Some(cmd.kind.clone()));
            assert!(planned.executes());
        }
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
