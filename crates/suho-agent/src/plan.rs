//! The agent's decisions, pure functions with no I/O: whether a signal trades for a user,
//! at what volume, and under which command id.
//!
//! - A `BUY` or `SELL` signal opens a market position carrying the user's exits for the
//!   strategy (`auto_trading.{strategy}.stop_loss_pips`, `take_profit_pips`,
//!   `trailing_stop_pips`, pips from the fill) and `metadata.strategy`: the engine first closes
//!   that strategy's opposite positions on the symbol, in the same step, so the strategy is
//!   long or short, never both (no hedged pile-up).
//! - A `FLAT` signal ("flatten") sends `CLOSE_POSITIONS`: the engine closes every position
//!   the strategy opened on the symbol (none open is a rejection, visible to the user).
//! - The volume is the user's `auto_trading.{strategy}.volume`, capped at `risk.max_volume` and
//!   rounded down to the lot step (never more than the user asked for); below one lot step the
//!   user is skipped.
//! - The command id is derived from the user and the signal ([`command_id`]), so the same signal
//!   always makes the same command for a user, and the engine, which is idempotent by
//!   `event_id`, executes a duplicate once.

use rust_decimal::Decimal;
use suho_domain::{
    ClosePositions, CommandKind, CommandMetadata, Direction, OpenTrade, Order, Side, Signal,
    TradeCommand, UserId, UserSettings,
};

/// The namespace of the agent's UUID v5 command ids (a fixed random UUID: changing it would
/// change every id).
const COMMAND_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5a1c_7d3e_9b04_4f21_8e6a_c2d9_0f13_b7a4);

/// The `event_id` of the command that `signal_id` makes for `user`: `cmd_` + a UUID v5 of the
/// pair in simple form, the same shape as the gateway's `cmd_` + UUID v4 ids. The same pair
/// always gives the same id; different pairs give different ids (the user id is
/// length-prefixed, so no two pairs spell the same name).
#[must_use]
pub fn command_id(user: &UserId, signal_id: &str) -> String {
    let user = user.as_str();
    let name = format!("{}:{user}{signal_id}", user.len());
    format!(
        "cmd_{}",
        uuid::Uuid::new_v5(&COMMAND_NAMESPACE, name.as_bytes()).simple()
    )
}

/// What a signal means for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The user has not enabled auto-trading for the signal's strategy.
    NotOptedIn,
    /// Opted in, but the volume (capped by `risk.max_volume`) is below one lot step.
    TooSmall {
        /// The user's auto-trading volume.
        requested: Decimal,
        /// Their `risk.max_volume`.
        max_volume: Decimal,
    },
    /// The `OPEN_TRADE` command to send (a `BUY` or `SELL` signal).
    Open(Box<TradeCommand>),
    /// The `CLOSE_POSITIONS` command to send (a `FLAT` signal).
    Close(Box<TradeCommand>),
}

impl Decision {
    /// The command to send, if any.
    #[must_use]
    pub fn command(self) -> Option<TradeCommand> {
        match self {
            Decision::Open(c) | Decision::Close(c) => Some(*c),
            Decision::NotOptedIn | Decision::TooSmall { .. } => None,
        }
    }
}

/// The order side of a signal's direction; `None` for `FLAT`.
#[must_use]
pub fn side(direction: Direction) -> Option<Side> {
    match direction {
        Direction::Buy => Some(Side::Buy),
        Direction::Sell => Some(Side::Sell),
        Direction::Flat => None,
    }
}

/// `requested` capped at `max_volume` and rounded down to the lot step; `None` when that is
/// less than one lot step.
#[must_use]
pub fn volume(requested: Decimal, max_volume: Decimal) -> Option<Decimal> {
    suho_domain::money::floor_to_lot_step(requested.min(max_volume))
}

/// What `signal` makes for `user` with `settings`, stamped `now_ms`.
#[must_use]
pub fn decide(signal: &Signal, user: &UserId, settings: &UserSettings, now_ms: i64) -> Decision {
    let Some(auto) = settings
        .auto_trading
        .get(&signal.strategy)
        .filter(|a| a.enabled)
    else {
        return Decision::NotOptedIn;
    };
    let metadata = Some(CommandMetadata {
        strategy: Some(signal.strategy.clone()),
        signal_id: Some(signal.signal_id.clone()),
    });
    let Some(side) = side(signal.direction) else {
        let close = ClosePositions {
            symbol: signal.symbol,
            strategy: signal.strategy.clone(),
        };
        let mut command =
            TradeCommand::new(user.clone(), CommandKind::ClosePositions(close), now_ms);
        command.head.event_id = command_id(user, &signal.signal_id);
        command.head.metadata = metadata;
        return Decision::Close(Box::new(command));
    };
    let Some(volume) = volume(auto.volume, settings.risk.max_volume) else {
        return Decision::TooSmall {
            requested: auto.volume,
            max_volume: settings.risk.max_volume,
        };
    };
    let order = Order {
        symbol: signal.symbol,
        side,
        volume,
        stop_loss: None,
        take_profit: None,
    };
    let open = OpenTrade {
        stop_loss_pips: auto.stop_loss_pips,
        take_profit_pips: auto.take_profit_pips,
        trailing_stop_pips: auto.trailing_stop_pips,
        ..OpenTrade::market(order, None)
    };
    let mut command = TradeCommand::new(user.clone(), CommandKind::OpenTrade(open), now_ms);
    command.head.event_id = command_id(user, &signal.signal_id);
    command.head.metadata = metadata;
    Decision::Open(Box::new(command))
}

/// Checks that a signal travelled on its own subject, `{prefix}signals.{strategy}.{SYM}`, so a
/// mislabelled message never trades another strategy's users.
///
/// # Errors
/// What does not match, for the log.
pub fn check_subject(prefix: &str, subject: &str, signal: &Signal) -> Result<(), String> {
    let expected = suho_domain::subject::signal(prefix, &signal.strategy, signal.symbol);
    if subject == expected {
        Ok(())
    } else {
        Err(format!(
            "a {} signal on {} belongs on {expected}",
            signal.strategy, signal.symbol
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::str::FromStr;

    use suho_domain::{AutoTrading, CommandType, RiskSettings, Symbol};

    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn signal(direction: Direction) -> Signal {
        Signal {
            signal_id: "sig_scalping_EURUSD_1700000000000".into(),
            strategy: "scalping".into(),
            symbol: Symbol::parse("EURUSD").unwrap(),
            direction,
            confidence: 0.7,
            price: dec("1.08512"),
            timestamp: 1_700_000_060_000,
            model: "scalping-ema9-21-rsi14@1".into(),
        }
    }

    fn settings(strategy: &str, enabled: bool, volume: &str, max_volume: &str) -> UserSettings {
        UserSettings {
            risk: RiskSettings {
                max_volume: dec(max_volume),
                ..RiskSettings::default()
            },
            watchlist: Vec::new(),
            auto_trading: BTreeMap::from([(
                strategy.to_string(),
                AutoTrading {
                    enabled,
                    volume: dec(volume),
                    stop_loss_pips: None,
                    take_profit_pips: None,
                    trailing_stop_pips: None,
                },
            )]),
        }
    }

    #[test]
    fn command_ids_are_stable_per_user_and_signal() {
        let a = command_id(&UserId::new("usr_a"), "sig_1");
        assert_eq!(a, command_id(&UserId::new("usr_a"), "sig_1"));
        assert!(a.starts_with("cmd_") && a.len() == 36, "{a}");
        assert_ne!(a, command_id(&UserId::new("usr_b"), "sig_1"));
        assert_ne!(a, command_id(&UserId::new("usr_a"), "sig_2"));
        // The user id is length-prefixed: moving a character across the boundary differs.
        assert_ne!(
            command_id(&UserId::new("ab"), "c"),
            command_id(&UserId::new("a"), "bc")
        );
    }

    #[test]
    fn an_opted_in_user_gets_an_open_trade_with_provenance() {
        let user = UserId::new("usr_a");
        let s = signal(Direction::Sell);
        let Decision::Open(cmd) = decide(&s, &user, &settings("scalping", true, "0.25", "10"), 5)
        else {
            panic!("expected a command");
        };
        assert_eq!(cmd.command_type(), CommandType::OpenTrade);
        assert_eq!(cmd.head.event_id, command_id(&user, &s.signal_id));
        assert_eq!(cmd.head.user_id, user);
        assert_eq!(cmd.head.timestamp, 5);
        let order = cmd.kind.order().unwrap();
        assert_eq!(order.side, Side::Sell);
        assert_eq!(order.symbol, s.symbol);
        assert_eq!(order.volume, dec("0.25"));
        let meta = cmd.head.metadata.as_ref().unwrap();
        assert_eq!(meta.strategy.as_deref(), Some("scalping"));
        assert_eq!(meta.signal_id.as_deref(), Some(s.signal_id.as_str()));
        cmd.validate().unwrap();
    }

    #[test]
    fn an_auto_trade_carries_the_users_exits() {
        let user = UserId::new("usr_a");
        let mut on = settings("scalping", true, "0.1", "10");
        let auto = on.auto_trading.get_mut("scalping").unwrap();
        auto.stop_loss_pips = Some(dec("20"));
        auto.take_profit_pips = Some(dec("40"));
        auto.trailing_stop_pips = Some(dec("15"));
        let Decision::Open(cmd) = decide(&signal(Direction::Buy), &user, &on, 1) else {
            panic!("expected an open");
        };
        let CommandKind::OpenTrade(open) = &cmd.kind else {
            panic!("expected OPEN_TRADE");
        };
        assert_eq!(open.stop_loss_pips, Some(dec("20")));
        assert_eq!(open.take_profit_pips, Some(dec("40")));
        assert_eq!(open.trailing_stop_pips, Some(dec("15")));
        assert_eq!(
            open.order.stop_loss, None,
            "the engine prices them from the fill"
        );
        cmd.validate().unwrap();
    }

    #[test]
    fn flat_closes_the_strategys_positions() {
        let user = UserId::new("usr_a");
        let on = settings("scalping", true, "0.1", "10");
        let s = signal(Direction::Flat);
        let Decision::Close(cmd) = decide(&s, &user, &on, 1) else {
            panic!("expected a close");
        };
        assert_eq!(cmd.command_type(), CommandType::ClosePositions);
        assert_eq!(cmd.head.event_id, command_id(&user, &s.signal_id));
        let CommandKind::ClosePositions(close) = &cmd.kind else {
            panic!("expected CLOSE_POSITIONS");
        };
        assert_eq!(close.symbol, s.symbol);
        assert_eq!(close.strategy, "scalping");
        assert_eq!(
            cmd.head.metadata.as_ref().unwrap().signal_id.as_deref(),
            Some(s.signal_id.as_str())
        );
        cmd.validate().unwrap();
        // Below the lot step or not: a close needs no volume.
        let tiny = settings("scalping", true, "1", "0.005");
        assert!(matches!(decide(&s, &user, &tiny, 1), Decision::Close(_)));
    }

    #[test]
    fn disabled_and_other_strategies_trade_nothing() {
        let user = UserId::new("usr_a");
        let off = settings("scalping", false, "0.1", "10");
        assert_eq!(
            decide(&signal(Direction::Buy), &user, &off, 1),
            Decision::NotOptedIn
        );
        let other = settings("mean_reversion", true, "0.1", "10");
        assert_eq!(
            decide(&signal(Direction::Buy), &user, &other, 1),
            Decision::NotOptedIn
        );
        assert_eq!(
            decide(&signal(Direction::Buy), &user, &UserSettings::default(), 1),
            Decision::NotOptedIn
        );
        assert_eq!(
            decide(&signal(Direction::Flat), &user, &off, 1),
            Decision::NotOptedIn
        );
    }

    #[test]
    fn volume_is_capped_and_stepped() {
        assert_eq!(volume(dec("5"), dec("2")), Some(dec("2")));
        assert_eq!(volume(dec("0.25"), dec("10")), Some(dec("0.25")));
        assert_eq!(volume(dec("0.257"), dec("10")), Some(dec("0.25")), "down");
        assert_eq!(volume(dec("0.01"), dec("10")), Some(dec("0.01")));
        assert_eq!(volume(dec("0.009"), dec("10")), None);
        assert_eq!(volume(dec("1"), dec("0.005")), None);
        assert_eq!(volume(dec("0"), dec("10")), None);
        assert_eq!(volume(dec("-1"), dec("10")), None);
        let user = UserId::new("usr_a");
        assert_eq!(
            decide(
                &signal(Direction::Buy),
                &user,
                &settings("scalping", true, "1", "0.005"),
                1
            ),
            Decision::TooSmall {
                requested: dec("1"),
                max_volume: dec("0.005")
            }
        );
    }

    #[test]
    fn a_signal_must_travel_on_its_own_subject() {
        let s = signal(Direction::Buy);
        check_subject("t1.", "t1.signals.scalping.EURUSD", &s).unwrap();
        assert!(check_subject("t1.", "t1.signals.mean_reversion.EURUSD", &s).is_err());
        assert!(check_subject("t1.", "t1.signals.scalping.GBPUSD", &s).is_err());
        assert!(check_subject("", "t1.signals.scalping.EURUSD", &s).is_err());
    }
}
