//! Account tests. Expected figures are computed by hand in the comments (leverage 100, one
//! lot = 100,000 units, conversion at the mid).

use std::str::FromStr;

use suho_domain::{
    CloseTrade, CommandHead, CommandKind, ModifyTrade, OpenTrade, Order, RiskAlertType, Side,
    TradeCommand, TradeStatus,
};

use super::*;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("decimal")
}

fn sym(s: &str) -> Symbol {
    Symbol::parse(s).expect("symbol")
}

fn tick(s: &str, bid: &str, ask: &str, ts: i64) -> Tick {
    Tick::new(sym(s), d(bid), d(ask), ts, "test").expect("tick")
}

fn account() -> PaperAccount {
    PaperAccount::new(
        UserId::new("u1"),
        Some("mt1".into()),
        AccountConfig::default(),
    )
    .expect("config")
}

fn funded(amount: &str) -> PaperAccount {
    let mut a = account();
    a.deposit("init", d(amount), 0).expect("deposit");
    a
}

fn head(id: &str) -> CommandHead {
    CommandHead {
        event_id: format!("cmd_{id}"),
        mt5_account: Some("mt1".into()),
        ..CommandHead::new(UserId::new("u1"), 0)
    }
}

fn command(id: &str, kind: CommandKind) -> TradeCommand {
    TradeCommand {
        head: head(id),
        kind,
    }
}

fn open_cmd(
    id: &str,
    s: &str,
    side: Side,
    vol: &str,
    sl: Option<&str>,
    tp: Option<&str>,
) -> TradeCommand {
    let order = Order {
        symbol: sym(s),
        side,
        volume: d(vol),
        stop_loss: sl.map(d),
        take_profit: tp.map(d),
    };
    command(id, CommandKind::OpenTrade(OpenTrade::market(order, None)))
}

fn close_cmd(id: &str, trade: &str) -> TradeCommand {
    let close = CloseTrade {
        trade_id: trade.into(),
        volume: None,
    };
    command(id, CommandKind::CloseTrade(close))
}

fn modify_cmd(id: &str, trade: &str, sl: Option<&str>, tp: Option<&str>) -> TradeCommand {
    let modify = ModifyTrade {
        trade_id: trade.into(),
        stop_loss: sl.map(d),
        take_profit: tp.map(d),
    };
    command(id, CommandKind::ModifyTrade(modify))
}

/// Carries out a trade command by its kind, as the engine's plan does.
trait Exec {
    fn exec(
        &mut self,
        c: &TradeCommand,
        t: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason>;
}

impl Exec for PaperAccount {
    fn exec(
        &mut self,
        c: &TradeCommand,
        t: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        match &c.kind {
            CommandKind::OpenTrade(o) => self.open(&c.head, o, t, now_ms),
            CommandKind::CloseTrade(x) => self.close(&c.head, x, t, now_ms),
            CommandKind::ModifyTrade(m) => self.modify(&c.head, m, t, now_ms),
            other => panic!("not a trade command: {other:?}"),
        }
    }
}

fn buy(a: &mut PaperAccount, id: &str, s: &str, vol: &str, t: &Tick) -> TradeEvent {
    a.exec(&open_cmd(id, s, Side::Buy, vol, None, None), t, 1)
        .expect("open")
        .event
}

fn sell(a: &mut PaperAccount, id: &str, s: &str, vol: &str, t: &Tick) -> TradeEvent {
    a.exec(&open_cmd(id, s, Side::Sell, vol, None, None), t, 1)
        .expect("open")
        .event
}

fn close(a: &mut PaperAccount, id: &str, trade: &str, t: &Tick) -> TradeEvent {
    a.exec(&close_cmd(id, trade), t, 2).expect("close").event
}

fn margin(a: &PaperAccount) -> Decimal {
    a.metrics().expect("metrics").margin
}

#[test]
fn worked_example_stop_loss_by_hand() {
    // Deposit 10,000.00; BUY 1.00 EURUSD at the ask 1.10020 with SL 1.09500. The bid gaps to
    // 1.09480: closed at 1.09480 (the tick, not the stop), (1.09480 - 1.10020) × 100,000 =
    // -540.00 USD, balance 9,460.00.
    let mut a = funded("10000.00");
    let cmd = open_cmd("w1", "EURUSD", Side::Buy, "1.00", Some("1.09500"), None);
    let exec = a
        .exec(&cmd, &tick("EURUSD", "1.10000", "1.10020", 1), 1)
        .expect("open")
        .event;
    assert_eq!(
        (exec.event_id.as_str(), exec.trade_id.as_deref()),
        ("exec_cmd_w1", Some("trd_w1"))
    );
    assert_eq!(exec.execution_price, Some(d("1.10020")));
    // An id without the `cmd_` prefix keeps all of it.
    assert_eq!(crate::trade_id("abc"), "trd_abc");
    let out = a.on_tick(&tick("EURUSD", "1.09480", "1.09500", 2), 2);
    assert_eq!(out.trades.len(), 1);
    let closed = &out.trades[0];
    assert_eq!(closed.event_type, TradeEventType::TradeClosed);
    assert_eq!(closed.event_id, "sl_trd_w1");
    assert_eq!(closed.close_price, Some(d("1.09480")));
    assert_eq!(closed.profit, Some(d("-540.00")));
    assert_eq!(
        closed.reason.as_deref(),
        Some("stop loss 1.09500 hit; closed at 1.09480")
    );
    assert_eq!(a.balance(), d("9460.00"));
    assert_eq!(a.positions().count(), 0);
}

#[test]
fn eurusd_margin_and_profit() {
    // Margin 1 lot / 100 = 1,000 EUR × mid 1.10010 = 1,100.10 USD. BUY at 1.10020, closed at
    // the bid 1.10500: 0.00480 × 100,000 = 480.00 USD.
    let mut a = funded("5000");
    buy(
        &mut a,
        "e",
        "EURUSD",
        "1",
        &tick("EURUSD", "1.10000", "1.10020", 1),
    );
    assert_eq!(margin(&a), d("1100.10"));
    let ev = close(
        &mut a,
        "ec",
        "trd_e",
        &tick("EURUSD", "1.10500", "1.10520", 2),
    );
    assert_eq!(
        (ev.event_id.as_str(), ev.profit),
        ("cls_cmd_ec", Some(d("480.00")))
    );
    assert_eq!(a.balance(), d("5480.00"));
}

#[test]
fn usdjpy_margin_and_profit_convert_inversely() {
    // Base USD: margin 1,000.00 USD, no conversion. BUY at 150.010, closed at the bid 159.990:
    // 9.980 × 100,000 = 998,000 JPY / mid 160.000 = 6,237.50 USD.
    let mut a = funded("2000");
    buy(
        &mut a,
        "j",
        "USDJPY",
        "1",
        &tick("USDJPY", "149.990", "150.010", 1),
    );
    assert_eq!(margin(&a), d("1000"));
    let ev = close(
        &mut a,
        "jc",
        "trd_j",
        &tick("USDJPY", "159.990", "160.010", 2),
    );
    assert_eq!(ev.profit, Some(d("6237.50")));
    // SELL at 149.990, closed at the ask 150.010: -2,000 JPY / 150 = -13.333... -> -13.33.
    sell(
        &mut a,
        "k",
        "USDJPY",
        "1",
        &tick("USDJPY", "149.990", "150.010", 3),
    );
    let ev = close(
        &mut a,
        "kc",
        "trd_k",
        &tick("USDJPY", "149.990", "150.010", 4),
    );
    assert_eq!(ev.profit, Some(d("-13.33")));
    assert_eq!(a.balance(), d("8224.17"));
}

#[test]
fn the_symbols_that_move_a_cross_position_are_its_own_and_its_conversions() {
    let mut a = funded("5000");
    assert!(a.watched_symbols().is_empty());
    a.on_tick(&tick("EURUSD", "1.10000", "1.10020", 1), 1);
    a.on_tick(&tick("GBPUSD", "1.25000", "1.25020", 1), 1);
    let cross = tick("EURGBP", "0.85000", "0.85010", 1);
    a.exec(
        &open_cmd("x", "EURGBP", Side::Buy, "1", None, None),
        &cross,
        1,
    )
    .expect("opened");
    let watched: Vec<String> = a
        .watched_symbols()
        .iter()
        .map(ToString::to_string)
        .collect();
    for s in ["EURGBP", "EURUSD", "GBPUSD"] {
        assert!(watched.iter().any(|w| w == s), "{s} in {watched:?}");
    }
    assert!(!watched.iter().any(|w| w == "USDJPY"), "{watched:?}");
}

#[test]
fn eurgbp_margin_via_eurusd_profit_via_gbpusd() {
    // Margin 1,000 EUR × mid(EURUSD) 1.10010 = 1,100.10 USD. BUY at 0.85010, closed at the bid
    // 0.85510: 500 GBP × mid(GBPUSD) 1.25010 = 625.05 USD.
    let mut a = funded("5000");
    let cross = tick("EURGBP", "0.85000", "0.85010", 1);
    let no_rate = a.exec(
        &open_cmd("x", "EURGBP", Side::Buy, "1", None, None),
        &cross,
        1,
    );
    let want = ValuationError::NoConversion {
        from: "EUR".into(),
        to: "USD".into(),
    };
    assert_eq!(
        no_rate.expect_err("no EURUSD"),
        RejectReason::Valuation(want)
    );
    a.on_tick(&tick("EURUSD", "1.10000", "1.10020", 1), 1);
    let no_rate = a.exec(
        &open_cmd("x", "EURGBP", Side::Buy, "1", None, None),
        &cross,
        1,
    );
    assert_eq!(
        no_rate.expect_err("no GBPUSD").to_string(),
        "cannot value the trade: no conversion from GBP to USD: neither GBPUSD nor USDGBP is quoted"
    );
    a.on_tick(&tick("GBPUSD", "1.25000", "1.25020", 1), 1);
    buy(&mut a, "x", "EURGBP", "1", &cross);
    assert_eq!(margin(&a), d("1100.10"));
    let ev = close(
        &mut a,
        "xc",
        "trd_x",
        &tick("EURGBP", "0.85510", "0.85520", 2),
    );
    assert_eq!(ev.profit, Some(d("625.05")));
}

#[test]
fn gbpusd_margin_and_profit() {
    // SELL 2 lots at the bid 1.25000: margin 2,000 GBP × 1.25010 = 2,500.20 USD. Closed at the
    // ask 1.24520: 0.00480 × 200,000 = 960.00 USD.
    let mut a = funded("5000");
    let ev = sell(
        &mut a,
        "g",
        "GBPUSD",
        "2",
        &tick("GBPUSD", "1.25000", "1.25020", 1),
    );
    assert_eq!(ev.execution_price, Some(d("1.25000")));
    assert_eq!(margin(&a), d("2500.20"));
    let ev = close(
        &mut a,
        "gc",
        "trd_g",
        &tick("GBPUSD", "1.24500", "1.24520", 2),
    );
    assert_eq!(
        (ev.close_price, ev.profit),
        (Some(d("1.24520")), Some(d("960.00")))
    );
}

#[test]
fn realised_profit_rounds_half_cents_away_from_zero() {
    // 0.01 lot = 1,000 units; a move of 0.000005 is 0.005 USD -> 0.01; the loss -> -0.01.
    let mut a = funded("1000");
    buy(
        &mut a,
        "r1",
        "EURUSD",
        "0.01",
        &tick("EURUSD", "1.100000", "1.100000", 1),
    );
    let ev = close(
        &mut a,
        "r1c",
        "trd_r1",
        &tick("EURUSD", "1.100005", "1.100010", 2),
    );
    assert_eq!(ev.profit, Some(d("0.01")));
    sell(
        &mut a,
        "r2",
        "EURUSD",
        "0.01",
        &tick("EURUSD", "1.100000", "1.100000", 3),
    );
    let ev = close(
        &mut a,
        "r2c",
        "trd_r2",
        &tick("EURUSD", "1.100000", "1.100005", 4),
    );
    assert_eq!(ev.profit, Some(d("-0.01")));
    assert_eq!(a.balance(), d("1000.00"));
}

#[test]
fn buy_fills_at_ask_sell_at_bid_and_close_on_the_other_side() {
    let mut a = funded("5000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    assert_eq!(
        buy(&mut a, "b", "EURUSD", "1", &t).open_price,
        Some(d("1.10020"))
    );
    assert_eq!(
        sell(&mut a, "s", "EURUSD", "1", &t).open_price,
        Some(d("1.10000"))
    );
    // Closing on the same quote costs each side the 2-pip spread: -20.00 each.
    assert_eq!(
        close(&mut a, "bc", "trd_b", &t).close_price,
        Some(d("1.10000"))
    );
    assert_eq!(
        close(&mut a, "sc", "trd_s", &t).close_price,
        Some(d("1.10020"))
    );
    assert_eq!(a.balance(), d("4960.00"));
}

#[test]
fn stops_trigger_on_both_sides_at_the_tick_price() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let open = |a: &mut PaperAccount, id, side, sl, tp| {
        a.exec(&open_cmd(id, "EURUSD", side, "0.1", sl, tp), &t, 1)
            .expect("open");
    };
    open(&mut a, "btp", Side::Buy, None, Some("1.10100"));
    open(&mut a, "ssl", Side::Sell, Some("1.10100"), None);
    open(&mut a, "stp", Side::Sell, None, Some("1.09900"));
    // Nothing reached: BUY TP needs bid >= 1.10100, SELL SL ask >= 1.10100.
    assert!(a
        .on_tick(&tick("EURUSD", "1.10080", "1.10099", 2), 2)
        .trades
        .is_empty());
    // bid 1.10100 hits the BUY take profit; ask 1.10120 hits the SELL stop loss.
    let out = a.on_tick(&tick("EURUSD", "1.10100", "1.10120", 3), 3);
    let ids: Vec<_> = out
        .trades
        .iter()
        .map(|e| (e.event_id.as_str(), e.close_price))
        .collect();
    assert_eq!(
        ids,
        [
            ("tp_trd_btp", Some(d("1.10100"))),
            ("sl_trd_ssl", Some(d("1.10120")))
        ]
    );
    // SELL take profit: ask 1.09890 <= 1.09900, filled at the ask 1.09890, +11.00 (0.1 lot).
    let out = a.on_tick(&tick("EURUSD", "1.09870", "1.09890", 4), 4);
    assert_eq!(out.trades[0].event_id, "tp_trd_stp");
    assert_eq!(out.trades[0].profit, Some(d("11.00")));
    assert_eq!(a.positions().count(), 0);
}

/// Two BUY 1 EURUSD: `zz` at 1.10020 (opened first, the bigger loser), `aa` at 1.09520.
fn two_losers() -> PaperAccount {
    let mut a = funded("3000");
    buy(
        &mut a,
        "zz",
        "EURUSD",
        "1",
        &tick("EURUSD", "1.10000", "1.10020", 1),
    );
    let t2 = tick("EURUSD", "1.09500", "1.09520", 2);
    assert!(a.on_tick(&t2, 2).alerts.is_empty());
    buy(&mut a, "aa", "EURUSD", "1", &t2);
    a
}

#[test]
fn stop_out_closes_the_biggest_loser_first_and_stops_above_the_level() {
    // Bid 1.08800: equity 3,000 - 1,220 - 720 = 1,060; margin 2 × 1,088.10 = 2,176.20;
    // level 48.71% <= 50. Closing zz (-1,220) leaves margin 1,088.10: level 97.42% > 50.
    let mut a = two_losers();
    let out = a.on_tick(&tick("EURUSD", "1.08800", "1.08820", 3), 3);
    assert_eq!(out.trades.len(), 1);
    assert_eq!(
        (out.trades[0].event_id.as_str(), out.trades[0].profit),
        ("so_trd_zz", Some(d("-1220.00")))
    );
    let kinds: Vec<_> = out.alerts.iter().map(|x| x.event_type).collect();
    assert_eq!(kinds, [RiskAlertType::MarginCall, RiskAlertType::StopOut]);
    assert_eq!(out.alerts[1].trade_ids, ["trd_zz"]);
    assert_eq!(out.alerts[1].event_id, "stopout_trd_zz");
    assert_eq!(out.alerts[1].margin_level, Some(d("48.71")));
    assert_eq!(a.balance(), d("1780.00"));
    assert!(a.position("trd_aa").is_some());
}

#[test]
fn stop_out_repeats_until_nothing_is_open() {
    // Bid 1.08500: equity 460 on margin 2,170.20 (21.20%); after zz, 460 / 1,085.10 = 42.39%
    // is still <= 50, so aa goes too. Balance 3,000 - 1,520 - 1,020 = 460.00.
    let mut a = two_losers();
    let out = a.on_tick(&tick("EURUSD", "1.08500", "1.08520", 3), 3);
    let ids: Vec<_> = out.trades.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["so_trd_zz", "so_trd_aa"]);
    assert_eq!(
        out.alerts.last().map(|x| x.trade_ids.clone()),
        Some(vec!["trd_zz".into(), "trd_aa".into()])
    );
    assert_eq!(a.balance(), d("460.00"));
    assert_eq!(a.metrics().expect("metrics").margin_level, None);
}

#[test]
fn margin_call_fires_once_per_crossing() {
    // Deposit 1,200, BUY 1 at 1.10020. Levels: 107.26, 98.26 (call), 97.36 (none), 116.25
    // (re-armed), 98.26 (call again).
    let mut a = funded("1200");
    let t1 = tick("EURUSD", "1.10000", "1.10020", 1);
    buy(&mut a, "m", "EURUSD", "1", &t1);
    let mut calls = Vec::new();
    for (i, (bid, ask)) in [
        ("1.10000", "1.10020"),
        ("1.09900", "1.09920"),
        ("1.09890", "1.09910"),
        ("1.10100", "1.10120"),
        ("1.09900", "1.09920"),
    ]
    .into_iter()
    .enumerate()
    {
        let ts = 10 + i64::try_from(i).expect("small");
        let out = a.on_tick(&tick("EURUSD", bid, ask, ts), ts);
        assert!(out.trades.is_empty());
        calls.extend(out.alerts.into_iter().map(|x| (x.event_id, x.margin_level)));
    }
    assert_eq!(
        calls,
        [
            ("margincall_u1_mt1_11".to_owned(), Some(d("98.26"))),
            ("margincall_u1_mt1_14".to_owned(), Some(d("98.26"))),
        ]
    );
}

#[test]
fn every_rejection_reason_names_what_failed() {
    let mut small = AccountConfig {
        max_open_positions: 1,
        ..AccountConfig::default()
    };
    small.allowed_symbols = Some([sym("EURUSD"), sym("GBPUSD")].into_iter().collect());
    let mut a = PaperAccount::new(UserId::new("u1"), Some("mt1".into()), small).expect("config");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let mut try_open =
        |c: TradeCommand, t: &Tick| a.exec(&c, t, 1).expect_err("rejected").to_string();
    let o = |vol, sl, tp| open_cmd("r", "EURUSD", Side::Buy, vol, sl, tp);
    let s = |sl, tp| open_cmd("r", "EURUSD", Side::Sell, "1", sl, tp);
    let cases = [
        (o("0", None, None), &t, "volume 0 must be positive"),
        (
            o("1", None, None),
            &tick("GBPUSD", "1.2", "1.3", 1),
            "the price given is for GBPUSD, the trade is on EURUSD",
        ),
        (
            open_cmd("r", "USDJPY", Side::Buy, "1", None, None),
            &tick("USDJPY", "150", "150.1", 1),
            "symbol USDJPY is not tradable on this account",
        ),
        (
            o("0.001", None, None),
            &t,
            "volume 0.001 is below the minimum of 0.01 lots",
        ),
        (
            o("100.01", None, None),
            &t,
            "volume 100.01 is above the maximum of 100 lots",
        ),
        (
            o("0.015", None, None),
            &t,
            "volume 0.015 is not a multiple of the lot step 0.01",
        ),
        (
            o("1", Some("1.10020"), None),
            &t,
            "stop loss 1.10020 must be below the BUY price 1.10020",
        ),
        (
            o("1", None, Some("1.1")),
            &t,
            "take profit 1.1 must be above the BUY price 1.10020",
        ),
        (
            s(Some("1.09"), None),
            &t,
            "stop loss 1.09 must be above the SELL price 1.10000",
        ),
        (
            s(None, Some("1.11")),
            &t,
            "take profit 1.11 must be below the SELL price 1.10000",
        ),
        (
            o("1", None, None),
            &t,
            "not enough free margin: 1100.10 USD needed, 0 USD free",
        ),
    ];
    for (cmd, t, want) in cases {
        assert_eq!(try_open(cmd, t), want);
    }
    a.deposit("d", d("2000"), 1).expect("deposit");
    buy(&mut a, "ok", "EURUSD", "1", &t);
    let full = a.exec(&o("1", None, None), &t, 1).expect_err("limit");
    assert_eq!(full.to_string(), "1 positions are open, the limit is 1");
    let unknown = a
        .exec(&close_cmd("c", "trd_nope"), &t, 1)
        .expect_err("unknown");
    assert_eq!(unknown.to_string(), "position trd_nope is not open");
    let mut elsewhere = close_cmd("c", "trd_ok");
    elsewhere.head.mt5_account = Some("mt2".into());
    let misrouted = a.exec(&elsewhere, &t, 1).expect_err("other account");
    assert_eq!(misrouted, RejectReason::WrongAccount);
    let bad_modify = a
        .exec(&modify_cmd("m", "trd_ok", Some("1.2"), None), &t, 1)
        .expect_err("side");
    assert_eq!(
        bad_modify.to_string(),
        "stop loss 1.2 must be below the BUY price 1.10000"
    );
    for amount in ["0", "-5", "0.001"] {
        assert_eq!(
            a.deposit("x", d(amount), 1),
            Err(RejectReason::InvalidAmount(d(amount)))
        );
    }
    assert_eq!(
        a.deposit("x", MAX_BALANCE, 1),
        Err(RejectReason::BalanceLimit(MAX_BALANCE))
    );
    // Limit breaches and only they raise RISK_LIMIT_BREACH.
    let too_big = RejectReason::VolumeAboveMax {
        volume: d("101"),
        max: d("100"),
    };
    let cmd = o("101", None, None);
    assert!(too_big.is_limit_breach() && full.is_limit_breach() && !unknown.is_limit_breach());
    let alert = too_big.breach_alert(&cmd.head, 5).expect("alert");
    assert_eq!(
        (alert.event_id.as_str(), alert.event_type),
        ("breach_cmd_r", RiskAlertType::RiskLimitBreach)
    );
    assert!(unknown.breach_alert(&cmd.head, 5).is_none());
    let rej = too_big.rejected_event(&cmd.head, &cmd.kind, 5);
    assert_eq!(
        (rej.event_id.as_str(), rej.status),
        ("rej_cmd_r", Some(TradeStatus::Rejected))
    );
    assert_eq!(
        rej.reason.as_deref(),
        Some("volume 101 is above the maximum of 100 lots")
    );
}

#[test]
fn withdrawal_is_limited_to_free_margin() {
    let mut a = funded("2000");
    buy(
        &mut a,
        "w",
        "EURUSD",
        "1",
        &tick("EURUSD", "1.10000", "1.10020", 1),
    );
    // Equity 2,000 - 20 = 1,980; margin 1,100.10; free 879.90.
    let err = a.withdraw("w1", d("879.91"), 2).expect_err("too much");
    assert_eq!(
        err.to_string(),
        "cannot withdraw 879.91 USD: only 879.90 USD of free margin"
    );
    let ok = a.withdraw("w1", d("879.90"), 2).expect("withdraw").event;
    assert_eq!(
        (ok.event_id.as_str(), ok.balance_after),
        ("wd_w1", Some(d("1120.10")))
    );
    assert_eq!(ok.event_type, TransactionType::Withdrawal);
}

#[test]
fn retried_commands_return_the_same_events() {
    let mut a = funded("5000");
    assert!(a.deposit("init", d("99"), 7).expect("retry").replayed);
    assert_eq!(a.balance(), d("5000"));
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let cmd = open_cmd("id1", "EURUSD", Side::Buy, "1", None, None);
    let first = a.exec(&cmd, &t, 1).expect("open");
    let again = a
        .exec(&cmd, &tick("EURUSD", "1.2", "1.3", 9), 9)
        .expect("retry");
    assert_eq!(
        (again.event.clone(), again.replayed, first.replayed),
        (first.event, true, false)
    );
    assert_eq!(a.positions().count(), 1);
    let m = a
        .exec(&modify_cmd("m1", "trd_id1", None, Some("1.2")), &t, 2)
        .expect("modify");
    assert_eq!(
        (m.event.event_id.as_str(), m.event.take_profit),
        ("mod_cmd_m1", Some(d("1.2")))
    );
    assert!(
        a.exec(&modify_cmd("m1", "trd_id1", None, Some("1.3")), &t, 2)
            .expect("retry")
            .replayed
    );
    assert_eq!(
        a.position("trd_id1").and_then(|p| p.take_profit),
        Some(d("1.2"))
    );
    let c = close(&mut a, "c1", "trd_id1", &t);
    let again = a.exec(&close_cmd("c1", "trd_id1"), &t, 3).expect("retry");
    assert_eq!((again.event, again.replayed), (c, true));
    assert_eq!(a.balance(), d("4980.00"));
}

/// A new account holding `opening` from its start, as the broker makes them.
fn opening(opening: &str) -> PaperAccount {
    PaperAccount::with_valid_config(
        UserId::new("u1"),
        Some("mt1".into()),
        AccountConfig::default(),
        d(opening),
    )
}

#[test]
fn an_account_opens_once_with_its_opening_balance() {
    let mut a = opening("10000");
    let opened = a.open_account("cmd_o", 5).expect("open");
    assert!(!opened.replayed);
    let e = &opened.event;
    assert_eq!(
        (
            e.event_id.as_str(),
            e.event_type,
            e.amount,
            e.balance_after,
            e.reference.as_deref(),
            e.timestamp
        ),
        (
            "opn_cmd_o",
            TransactionType::AccountOpened,
            d("10000"),
            Some(d("10000")),
            Some("cmd_o"),
            5
        )
    );
    assert_eq!(e.currency, "USD");
    // Opening moves no money: the account held its opening balance already.
    assert_eq!(a.balance(), d("10000"));
    // A redelivered command answers the same event, even after the account has traded.
    a.deposit("d", d("5"), 6).expect("deposit");
    let again = a.open_account("cmd_o", 9).expect("replay");
    assert_eq!((&again.event, again.replayed), (e, true));
    // Another opening of an account with a history is refused, and changes nothing.
    let err = a.open_account("cmd_o2", 9).expect_err("already open");
    assert_eq!(err, RejectReason::AlreadyOpen);
    assert_eq!(err.to_string(), "the account is already open");
    let mut traded = opening("10000");
    buy(
        &mut traded,
        "t",
        "EURUSD",
        "0.1",
        &tick("EURUSD", "1.1", "1.1002", 1),
    );
    assert_eq!(
        traded.open_account("cmd_late", 2),
        Err(RejectReason::AlreadyOpen)
    );
    assert_eq!(a.balance(), d("10005"));
}

#[test]
fn a_rebuilt_account_keeps_its_balance_and_answers_the_same_opening() {
    let mut live = opening("10000");
    let opened = live.open_account("cmd_o", 1).expect("open").event;
    let dep = live.deposit("d", d("250.50"), 2).expect("deposit").event;
    let log = [AccountEvent::from(dep), AccountEvent::from(opened.clone())];
    // Either order: the topics interleave as they will on a rebuild.
    for order in [[0, 1], [1, 0]] {
        let mut rebuilt = opening("10000");
        for i in order {
            assert_eq!(rebuilt.apply(&log[i]), Ok(Applied::Applied));
        }
        assert_eq!(rebuilt.apply(&log[1]), Ok(Applied::Duplicate));
        same_state(&live, &rebuilt);
        assert_eq!(rebuilt.balance(), d("10250.50"));
        let again = rebuilt.open_account("cmd_o", 7).expect("replay");
        assert_eq!((again.event, again.replayed), (opened.clone(), true));
        assert_eq!(
            rebuilt.open_account("cmd_x", 7),
            Err(RejectReason::AlreadyOpen)
        );
    }
}

/// A scenario touching every event kind; returns the account and what it published.
fn scenario() -> (PaperAccount, Vec<AccountEvent>) {
    let mut a = account();
    let mut log: Vec<AccountEvent> = Vec::new();
    log.push(
        a.deposit("d1", d("10000.00"), 1)
            .expect("deposit")
            .event
            .into(),
    );
    let eu = tick("EURUSD", "1.10000", "1.10020", 2);
    let gu = tick("GBPUSD", "1.25000", "1.25020", 2);
    let uj = tick("USDJPY", "149.990", "150.010", 2);
    let cmd = open_cmd("a", "EURUSD", Side::Buy, "1", Some("1.09500"), None);
    log.push(a.exec(&cmd, &eu, 2).expect("open").event.into());
    log.push(sell(&mut a, "b", "GBPUSD", "0.5", &gu).into());
    log.push(buy(&mut a, "c", "USDJPY", "0.3", &uj).into());
    let m = a.exec(
        &modify_cmd("m", "trd_c", Some("149.000"), Some("151.000")),
        &uj,
        3,
    );
    log.push(m.expect("modify").event.into());
    let rejected = a.exec(
        &open_cmd("big", "EURUSD", Side::Buy, "500", None, None),
        &eu,
        3,
    );
    let big = open_cmd("big", "EURUSD", Side::Buy, "500", None, None);
    log.push(
        rejected
            .expect_err("too big")
            .rejected_event(&big.head, &big.kind, 3)
            .into(),
    );
    log.push(
        close(
            &mut a,
            "bc",
            "trd_b",
            &tick("GBPUSD", "1.24000", "1.24013", 4),
        )
        .into(),
    );
    log.push(
        a.withdraw("w1", d("500.00"), 5)
            .expect("withdraw")
            .event
            .into(),
    );
    log.extend(
        a.on_tick(&tick("EURUSD", "1.09480", "1.09500", 6), 6)
            .trades
            .into_iter()
            .map(Into::into),
    );
    (a, log)
}

fn same_state(a: &PaperAccount, b: &PaperAccount) {
    assert_eq!(a.balance(), b.balance());
    assert_eq!(
        a.positions().collect::<Vec<_>>(),
        b.positions().collect::<Vec<_>>()
    );
    let ids = |x: &PaperAccount| x.applied_ids().map(str::to_owned).collect::<BTreeSet<_>>();
    assert_eq!(ids(a), ids(b));
}

#[test]
fn replaying_the_published_events_rebuilds_the_account() {
    let (live, log) = scenario();
    // 10,000 + GBPUSD SELL 0.5 from 1.25000 to 1.24013 (+493.50) - 500 - 540 = 9,453.50.
    assert_eq!(live.balance(), d("9453.50"));
    assert_eq!(
        live.positions().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["trd_c"]
    );
    let mut rebuilt = account();
    // Transactions and trades come from different topics: apply trades first.
    let (trades, txs): (Vec<_>, Vec<_>) = log
        .iter()
        .partition(|e| matches!(e, AccountEvent::Trade(_)));
    for e in trades.into_iter().chain(txs) {
        let want = if e.event_id().starts_with("rej_") {
            Applied::Ignored
        } else {
            Applied::Applied
        };
        assert_eq!(rebuilt.apply(e), Ok(want), "{}", e.event_id());
    }
    same_state(&live, &rebuilt);
    assert_eq!(
        rebuilt
            .position("trd_c")
            .map(|p| (p.stop_loss, p.open_time)),
        Some((Some(d("149.000")), 1))
    );
}

#[test]
fn applying_an_event_twice_is_a_no_op() {
    let (live, log) = scenario();
    let mut rebuilt = account();
    for e in &log {
        rebuilt.apply(e).expect("apply");
    }
    for e in &log {
        let want = if e.event_id().starts_with("rej_") {
            Applied::Ignored
        } else {
            Applied::Duplicate
        };
        assert_eq!(rebuilt.apply(e), Ok(want));
    }
    same_state(&live, &rebuilt);
    // Events of another account, or about a position that is not open, are refused.
    let mut other = PaperAccount::new(
        UserId::new("u2"),
        Some("mt1".into()),
        AccountConfig::default(),
    )
    .expect("config");
    assert!(matches!(
        other.apply(&log[0]),
        Err(ApplyError::WrongAccount { .. })
    ));
    let close_b = log
        .iter()
        .find(|e| e.event_id() == "cls_cmd_bc")
        .expect("close");
    assert!(matches!(
        account().apply(close_b),
        Err(ApplyError::UnknownPosition { .. })
    ));
}

#[test]
fn status_snapshot_is_rounded_and_counts_positions() {
    let mut a = funded("1000");
    let empty = a.status(5).expect("status");
    assert_eq!(
        (empty.margin_level, empty.open_positions, empty.equity),
        (None, 0, d("1000"))
    );
    buy(
        &mut a,
        "s",
        "USDJPY",
        "0.1",
        &tick("USDJPY", "149.990", "150.010", 1),
    );
    // Equity 1,000 - 0.020 × 10,000 / 150 = 998.666.. -> 998.67; margin 100; level 998.67%.
    let s = a.status(5).expect("status");
    assert_eq!(
        (s.event_id.as_str(), s.currency.as_str()),
        ("sts_u1_mt1_5", "USD")
    );
    assert_eq!(
        (s.balance, s.equity, s.margin, s.free_margin),
        (d("1000"), d("998.67"), d("100"), d("898.67"))
    );
    assert_eq!((s.margin_level, s.open_positions), (Some(d("998.67")), 1));
}

#[test]
fn config_is_validated() {
    let bad = |c: AccountConfig| PaperAccount::new(UserId::new("u"), None, c).expect_err("bad");
    let base = AccountConfig::default;
    assert!(matches!(
        bad(AccountConfig {
            currency: "usd".into(),
            ..base()
        }),
        ConfigError::Currency(_)
    ));
    assert!(matches!(
        bad(AccountConfig {
            volume_step: Decimal::ZERO,
            ..base()
        }),
        ConfigError::Volumes { .. }
    ));
    assert!(matches!(
        bad(AccountConfig {
            stop_out_level: d("120"),
            ..base()
        }),
        ConfigError::Levels { .. }
    ));
    assert_eq!(MAX_BALANCE, d("1000000000000000"));
}

// ---- pending orders ----------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn pending_cmd(
    id: &str,
    side: Side,
    vol: &str,
    order_type: suho_domain::OrderType,
    limit: Option<&str>,
    stop: Option<&str>,
    tif: Option<suho_domain::TimeInForce>,
    expires_at: Option<i64>,
) -> TradeCommand {
    let mut c = open_cmd(id, "EURUSD", side, vol, None, None);
    if let CommandKind::OpenTrade(o) = &mut c.kind {
        o.order_type = order_type;
        o.limit_price = limit.map(d);
        o.stop_price = stop.map(d);
        o.time_in_force = tif;
        o.expires_at = expires_at;
    }
    c
}

fn place(a: &mut PaperAccount, c: &TradeCommand, t: &Tick, now: i64) -> TradeEvent {
    a.exec(c, t, now).expect("placed").event
}

fn kinds(events: &[TradeEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

use suho_domain::{OrderType, TimeInForce};

#[test]
fn a_buy_limit_below_the_market_rests_then_fills_once_at_the_limit_or_better() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let c = pending_cmd(
        "l1",
        Side::Buy,
        "1",
        OrderType::Limit,
        Some("1.09500"),
        None,
        None,
        None,
    );
    let placed = place(&mut a, &c, &t, 1);
    assert_eq!(placed.event_type, TradeEventType::OrderPlaced);
    assert_eq!(placed.event_id, "plc_cmd_l1");
    assert_eq!(placed.order_id.as_deref(), Some("ord_l1"));
    assert_eq!(placed.status, Some(TradeStatus::Pending));
    assert_eq!(placed.time_in_force, Some(TimeInForce::Gtc));
    // A retry answers with the same event and places nothing twice.
    assert!(a.exec(&c, &t, 2).expect("retry").replayed);
    assert_eq!(a.orders().count(), 1);
    // Not yet: the ask is above the limit.
    assert!(a
        .on_tick(&tick("EURUSD", "1.09600", "1.09620", 2), 2)
        .trades
        .is_empty());
    // The ask gaps below the limit: filled at that ask, better than the limit.
    let out = a.on_tick(&tick("EURUSD", "1.09400", "1.09420", 3), 3);
    assert_eq!(kinds(&out.trades), ["TRADE_EXECUTED"]);
    let fill = &out.trades[0];
    assert_eq!(fill.event_id, "exec_ord_l1");
    assert_eq!(fill.trade_id.as_deref(), Some("trd_l1"));
    assert_eq!(fill.command_id.as_deref(), Some("cmd_l1"));
    assert_eq!(fill.order_id.as_deref(), Some("ord_l1"));
    assert_eq!(fill.execution_price, Some(d("1.09420")));
    assert_eq!(a.orders().count(), 0);
    assert_eq!(a.positions().count(), 1);
    // Once: later ticks below the limit fill nothing more.
    assert!(a
        .on_tick(&tick("EURUSD", "1.09300", "1.09320", 4), 4)
        .trades
        .is_empty());
}

#[test]
fn a_pending_price_on_the_wrong_side_of_the_market_is_refused() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let cases = [
        (
            Side::Buy,
            OrderType::Limit,
            Some("1.10020"),
            None,
            "a BUY LIMIT order's limit_price 1.10020 must be below the ask 1.10020",
        ),
        (
            Side::Sell,
            OrderType::Limit,
            Some("1.09"),
            None,
            "a SELL LIMIT order's limit_price 1.09 must be above the bid 1.10000",
        ),
        (
            Side::Buy,
            OrderType::Stop,
            None,
            Some("1.1"),
            "a BUY STOP order's stop_price 1.1 must be above the ask 1.10020",
        ),
        (
            Side::Sell,
            OrderType::Stop,
            None,
            Some("1.2"),
            "a SELL STOP order's stop_price 1.2 must be below the bid 1.10000",
        ),
        (
            Side::Buy,
            OrderType::StopLimit,
            Some("1.12"),
            Some("1.11"),
            "a BUY STOP_LIMIT order's limit_price 1.12 must be at or below its stop_price 1.11",
        ),
        (
            Side::Buy,
            OrderType::Limit,
            None,
            None,
            "OPEN_TRADE command is missing `limit_price`",
        ),
        (
            Side::Buy,
            OrderType::Limit,
            Some("1.09"),
            Some("1.2"),
            "`stop_price` is not allowed with a LIMIT order",
        ),
    ];
    for (side, ty, limit, stop, want) in cases {
        let c = pending_cmd("w", side, "1", ty, limit, stop, None, None);
        let err = a.exec(&c, &t, 1).expect_err("refused");
        assert_eq!(err.to_string(), want);
    }
    let ioc = pending_cmd(
        "w",
        Side::Buy,
        "1",
        OrderType::Limit,
        Some("1.09"),
        None,
        Some(TimeInForce::Ioc),
        None,
    );
    assert_eq!(
        a.exec(&ioc, &t, 1).expect_err("tif").to_string(),
        "`time_in_force` IOC does not fit a LIMIT order (use GTC, DAY or GTD)"
    );
    let past = pending_cmd(
        "w",
        Side::Buy,
        "1",
        OrderType::Limit,
        Some("1.09"),
        None,
        Some(TimeInForce::Gtd),
        Some(1),
    );
    assert_eq!(
        a.exec(&past, &t, 5).expect_err("past").to_string(),
        "expires_at 1 has passed (now 5)"
    );
    assert_eq!(a.orders().count(), 0);
}

#[test]
fn a_stop_triggers_on_touch_and_fills_at_market() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let c = pending_cmd(
        "s1",
        Side::Sell,
        "1",
        OrderType::Stop,
        None,
        Some("1.09900"),
        None,
        None,
    );
    place(&mut a, &c, &t, 1);
    assert!(a
        .on_tick(&tick("EURUSD", "1.09910", "1.09930", 2), 2)
        .trades
        .is_empty());
    let out = a.on_tick(&tick("EURUSD", "1.09850", "1.09870", 3), 3);
    assert_eq!(kinds(&out.trades), ["TRADE_EXECUTED"]);
    assert_eq!(out.trades[0].execution_price, Some(d("1.09850")));
    assert_eq!(out.trades[0].action, Some(Side::Sell));
}

#[test]
fn a_stop_limit_becomes_a_limit_when_touched() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    // BUY STOP LIMIT: stop 1.10100, limit 1.10080.
    let c = pending_cmd(
        "sl",
        Side::Buy,
        "1",
        OrderType::StopLimit,
        Some("1.10080"),
        Some("1.10100"),
        None,
        None,
    );
    place(&mut a, &c, &t, 1);
    // The ask jumps to 1.10120: the stop is touched, the limit is not reached.
    let out = a.on_tick(&tick("EURUSD", "1.10100", "1.10120", 2), 2);
    assert_eq!(kinds(&out.trades), ["ORDER_TRIGGERED"]);
    assert!(a.orders().all(|o| o.triggered));
    // Back to 1.10070: at or below the limit, filled.
    let out = a.on_tick(&tick("EURUSD", "1.10050", "1.10070", 3), 3);
    assert_eq!(kinds(&out.trades), ["TRADE_EXECUTED"]);
    assert_eq!(out.trades[0].execution_price, Some(d("1.10070")));
}

#[test]
fn gtd_expires_at_its_time_and_day_at_the_rollover() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let gtd = pending_cmd(
        "g",
        Side::Buy,
        "1",
        OrderType::Limit,
        Some("1.09"),
        None,
        Some(TimeInForce::Gtd),
        Some(1_000),
    );
    place(&mut a, &gtd, &t, 1);
    // 2026-12-04 12:00 UTC: the rollover is 22:00 UTC (17:00 New York, winter).
    let noon = 1_796_385_600_000;
    let day = pending_cmd(
        "dy",
        Side::Buy,
        "1",
        OrderType::Limit,
        Some("1.09"),
        None,
        Some(TimeInForce::Day),
        None,
    );
    let placed = place(&mut a, &day, &t, noon);
    assert_eq!(placed.expires_at, Some(noon + 10 * 3_600_000));
    // GTD's time has passed at the next tick (whatever its symbol), DAY's has not.
    let out = a.on_tick(&tick("GBPUSD", "1.25", "1.2502", 2), noon);
    assert_eq!(kinds(&out.trades), ["ORDER_EXPIRED"]);
    assert_eq!(out.trades[0].event_id, "exp_ord_g");
    assert_eq!(out.trades[0].status, Some(TradeStatus::Expired));
    let out = a.on_tick(&tick("GBPUSD", "1.25", "1.2503", 3), noon + 10 * 3_600_000);
    assert_eq!(kinds(&out.trades), ["ORDER_EXPIRED"]);
    assert_eq!(a.orders().count(), 0);
}

#[test]
fn cancel_and_replace_win_or_lose_against_a_fill_never_both() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let c = pending_cmd(
        "r1",
        Side::Buy,
        "1",
        OrderType::Limit,
        Some("1.09500"),
        None,
        None,
        None,
    );
    place(&mut a, &c, &t, 1);
    // Replace the limit up; the next tick reaches the new limit, not the old.
    let rpl = command(
        "rp",
        CommandKind::ReplaceOrder(suho_domain::ReplaceOrder {
            order_id: "ord_r1".into(),
            volume: Some(d("0.5")),
            limit_price: Some(d("1.09800")),
            stop_price: None,
            stop_loss: None,
            take_profit: None,
            expires_at: None,
        }),
    );
    let CommandKind::ReplaceOrder(r) = &rpl.kind else {
        unreachable!()
    };
    let replaced = a.replace(&rpl.head, r, &t, 2).expect("replaced").event;
    assert_eq!(replaced.event_type, TradeEventType::OrderReplaced);
    assert_eq!(
        (replaced.limit_price, replaced.volume),
        (Some(d("1.09800")), Some(d("0.5")))
    );
    let out = a.on_tick(&tick("EURUSD", "1.09770", "1.09790", 3), 3);
    assert_eq!(kinds(&out.trades), ["TRADE_EXECUTED"]);
    assert_eq!(out.trades[0].volume, Some(d("0.5")));
    // The fill won: a cancel after it is refused, and places nothing.
    let can = command(
        "cn",
        CommandKind::CancelOrder(suho_domain::CancelOrder {
            order_id: "ord_r1".into(),
        }),
    );
    let CommandKind::CancelOrder(x) = &can.kind else {
        unreachable!()
    };
    assert_eq!(
        a.cancel(&can.head, x, 4).expect_err("filled").to_string(),
        "order ord_r1 is not pending"
    );
    // A cancel before the price comes wins: nothing fills afterwards.
    let c2 = pending_cmd(
        "r2",
        Side::Buy,
        "1",
        OrderType::Limit,
        Some("1.09000"),
        None,
        None,
        None,
    );
    place(&mut a, &c2, &t, 5);
    let can2 = command(
        "cn2",
        CommandKind::CancelOrder(suho_domain::CancelOrder {
            order_id: "ord_r2".into(),
        }),
    );
    let CommandKind::CancelOrder(x2) = &can2.kind else {
        unreachable!()
    };
    let cancelled = a.cancel(&can2.head, x2, 6).expect("cancelled").event;
    assert_eq!(cancelled.status, Some(TradeStatus::Cancelled));
    assert!(a
        .on_tick(&tick("EURUSD", "1.08000", "1.08020", 7), 7)
        .trades
        .is_empty());
}

#[test]
fn margin_is_checked_at_the_fill_and_a_fill_it_cannot_carry_is_refused() {
    // 1,000 USD at 1:100 carries 1,000 / 1,100 of a lot of EURUSD: a 1-lot order rests
    // (nothing is reserved) but is refused when its price comes.
    let mut a = funded("1000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let c = pending_cmd(
        "m1",
        Side::Buy,
        "1",
        OrderType::Limit,
        Some("1.09900"),
        None,
        None,
        None,
    );
    place(&mut a, &c, &t, 1);
    let out = a.on_tick(&tick("EURUSD", "1.09880", "1.09890", 2), 2);
    assert_eq!(kinds(&out.trades), ["ORDER_REJECTED"]);
    let reason = out.trades[0].reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("not filled at 1.09890: not enough free margin"),
        "{reason}"
    );
    assert_eq!((a.orders().count(), a.positions().count()), (0, 0));
}

#[test]
fn the_book_is_rebuilt_from_its_events() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let mut log: Vec<AccountEvent> = vec![a
        .deposit("init", d("0.01"), 0)
        .map(|o| o.event.into())
        .expect("deposit")];
    let c = pending_cmd(
        "b1",
        Side::Buy,
        "1",
        OrderType::StopLimit,
        Some("1.10080"),
        Some("1.10100"),
        None,
        None,
    );
    log.push(place(&mut a, &c, &t, 1).into());
    let c2 = pending_cmd(
        "b2",
        Side::Sell,
        "0.3",
        OrderType::Limit,
        Some("1.11"),
        None,
        None,
        None,
    );
    log.push(place(&mut a, &c2, &t, 1).into());
    log.extend(
        a.on_tick(&tick("EURUSD", "1.10100", "1.10120", 2), 2)
            .trades
            .into_iter()
            .map(AccountEvent::from),
    );
    let mut b = account();
    b.apply(&a.journal["dep_init"]).expect("deposit");
    for e in &log[1..] {
        b.apply(e).expect("applies");
    }
    assert_eq!(
        b.orders().cloned().collect::<Vec<_>>(),
        a.orders().cloned().collect::<Vec<_>>()
    );
    // The rebuilt book behaves as the original: the triggered stop-limit fills as a limit.
    let low = tick("EURUSD", "1.10050", "1.10070", 3);
    assert_eq!(
        kinds(&b.on_tick(&low, 3).trades),
        kinds(&a.on_tick(&low, 3).trades)
    );
}

// ---- partial closes ----------------------------------------------------------------------

fn close_part(id: &str, trade: &str, volume: &str) -> TradeCommand {
    let mut c = close_cmd(id, trade);
    if let CommandKind::CloseTrade(x) = &mut c.kind {
        x.volume = Some(d(volume));
    }
    c
}

#[test]
fn a_partial_close_leaves_the_remainder_and_realises_the_part_to_the_cent() {
    // BUY 1.00 EURUSD at the ask 1.10020; close 0.30 at the bid 1.10500:
    // (1.10500 - 1.10020) × 0.30 × 100,000 = 144.00 USD; 0.70 lots stay open.
    let mut a = funded("10000.00");
    buy(
        &mut a,
        "p1",
        "EURUSD",
        "1.00",
        &tick("EURUSD", "1.10000", "1.10020", 1),
    );
    let t = tick("EURUSD", "1.10500", "1.10520", 2);
    let part = a
        .exec(&close_part("c1", "trd_p1", "0.30"), &t, 2)
        .expect("partial")
        .event;
    assert_eq!(part.event_type, TradeEventType::TradePartiallyClosed);
    assert_eq!(part.event_id, "cls_cmd_c1");
    assert_eq!(
        (part.volume, part.remaining_volume),
        (Some(d("0.30")), Some(d("0.70")))
    );
    assert_eq!(part.profit, Some(d("144.00")));
    assert_eq!(a.balance(), d("10144.00"));
    assert_eq!(a.position("trd_p1").map(|p| p.volume), Some(d("0.70")));
    // A retry answers with the same event and closes nothing more.
    assert!(
        a.exec(&close_part("c1", "trd_p1", "0.30"), &t, 3)
            .expect("retry")
            .replayed
    );
    assert_eq!(a.balance(), d("10144.00"));
    // More than is open is refused; off the step too; the whole rest closes as TRADE_CLOSED.
    let too_much = a
        .exec(&close_part("c2", "trd_p1", "0.71"), &t, 3)
        .expect_err("too much");
    assert_eq!(
        too_much.to_string(),
        "cannot close 0.71 lots: the position is 0.70 lots"
    );
    let off = a
        .exec(&close_part("c3", "trd_p1", "0.005"), &t, 3)
        .expect_err("off step");
    assert!(off.to_string().contains("lot step"), "{off}");
    let rest = a
        .exec(&close_part("c4", "trd_p1", "0.70"), &t, 4)
        .expect("rest")
        .event;
    assert_eq!(rest.event_type, TradeEventType::TradeClosed);
    // 0.70 × 480 pips of 10 USD = 336.00.
    assert_eq!(rest.profit, Some(d("336.00")));
    assert_eq!(a.balance(), d("10480.00"));
    // Rebuilt from its events, the account is the same.
    let mut b = account();
    let mut ids: Vec<&str> = a.applied_ids().collect();
    ids.sort_unstable();
    let mut events: Vec<&AccountEvent> = ids.iter().map(|id| &a.journal[*id]).collect();
    events.sort_by_key(|e| match e {
        AccountEvent::Trade(t) => t.timestamp,
        AccountEvent::Transaction(t) => t.timestamp,
    });
    for e in events {
        b.apply(e).expect("applies");
    }
    assert_eq!((b.balance(), b.positions().count()), (a.balance(), 0));
}

// ---- trailing stops ----------------------------------------------------------------------

#[test]
fn a_trailing_stop_only_moves_in_favour_and_closes_at_the_right_tick() {
    let mut a = funded("10000");
    let mut c = open_cmd("tr", "EURUSD", Side::Buy, "1", None, None);
    if let CommandKind::OpenTrade(o) = &mut c.kind {
        o.trailing_stop_pips = Some(d("20"));
    }
    // Filled at the ask 1.10020; the stop starts 20 pips behind: 1.09820.
    let exec = a
        .exec(&c, &tick("EURUSD", "1.10000", "1.10020", 1), 1)
        .expect("open")
        .event;
    assert_eq!(exec.stop_loss, Some(d("1.09820")));
    assert_eq!(exec.trailing_stop_pips, Some(d("20")));
    let sl = |a: &PaperAccount| a.position("trd_tr").and_then(|p| p.stop_loss);
    // The bid rises to 1.10300: the stop follows to 1.10100 (bid - 20 pips).
    let out = a.on_tick(&tick("EURUSD", "1.10300", "1.10320", 2), 2);
    assert_eq!(kinds(&out.trades), ["TRADE_MODIFIED"]);
    assert_eq!(out.trades[0].event_id, "trl_trd_tr_2");
    assert_eq!(sl(&a), Some(d("1.10100")));
    // Less than a pip higher: no move. Lower: never back.
    assert!(a
        .on_tick(&tick("EURUSD", "1.10305", "1.10325", 3), 3)
        .trades
        .is_empty());
    assert!(a
        .on_tick(&tick("EURUSD", "1.10150", "1.10170", 4), 4)
        .trades
        .is_empty());
    assert_eq!(sl(&a), Some(d("1.10100")));
    // The bid falls to the stop: closed there, at the tick's bid, with the profit of the move.
    let out = a.on_tick(&tick("EURUSD", "1.10090", "1.10110", 5), 5);
    assert_eq!(kinds(&out.trades), ["TRADE_CLOSED"]);
    assert_eq!(out.trades[0].event_id, "sl_trd_tr");
    // (1.10090 - 1.10020) × 100,000 = 70.00 USD.
    assert_eq!(out.trades[0].profit, Some(d("70.00")));
}

#[test]
fn a_sells_trailing_stop_follows_the_ask_down_and_survives_a_rebuild() {
    let mut a = funded("10000");
    let mut c = open_cmd("ts", "USDJPY", Side::Sell, "0.5", Some("151.000"), None);
    if let CommandKind::OpenTrade(o) = &mut c.kind {
        o.trailing_stop_pips = Some(d("30"));
    }
    let mut log: Vec<AccountEvent> = Vec::new();
    log.push(
        a.exec(&c, &tick("USDJPY", "150.000", "150.020", 1), 1)
            .expect("open")
            .event
            .into(),
    );
    // The ask falls to 149.500: the stop moves down to 149.800 (ask + 30 pips of 0.01).
    let out = a.on_tick(&tick("USDJPY", "149.480", "149.500", 2), 2);
    assert_eq!(out.trades[0].stop_loss, Some(d("149.800")));
    log.extend(out.trades.into_iter().map(AccountEvent::from));
    let mut b = account();
    b.deposit("init", d("10000"), 0).expect("deposit");
    for e in &log {
        b.apply(e).expect("applies");
    }
    let p = b.position("trd_ts").expect("rebuilt");
    assert_eq!(
        (p.stop_loss, p.trailing_stop_pips),
        (Some(d("149.800")), Some(d("30")))
    );
}

// ---- costs -------------------------------------------------------------------------------

fn costly() -> PaperAccount {
    let mut costs = Costs {
        commission_per_lot: d("3.50"),
        ..Costs::default()
    };
    costs.swaps.insert(sym("EURUSD"), (d("-7.20"), d("2.10")));
    let config = AccountConfig {
        costs,
        ..AccountConfig::default()
    };
    let mut a = PaperAccount::new(UserId::new("u1"), Some("mt1".into()), config).expect("config");
    a.deposit("init", d("10000.00"), 0).expect("deposit");
    a
}

#[test]
fn commission_is_charged_on_each_fill_and_shown_beside_the_profit() {
    let mut a = costly();
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let exec = a
        .exec(&open_cmd("k1", "EURUSD", Side::Buy, "1", None, None), &t, 1)
        .expect("open")
        .event;
    assert_eq!(exec.commission, Some(d("-3.50")));
    assert_eq!(a.balance(), d("9996.50"));
    let closed = close(
        &mut a,
        "kc",
        "trd_k1",
        &tick("EURUSD", "1.10500", "1.10520", 2),
    );
    // Profit of the move 480.00, the closing side's commission 3.50.
    assert_eq!(
        (closed.profit, closed.commission),
        (Some(d("480.00")), Some(d("-3.50")))
    );
    assert_eq!(a.balance(), d("10473.00"));
}

#[test]
fn swaps_accrue_at_each_rollover_triple_on_wednesday_none_at_the_weekend() {
    const DAY: i64 = 86_400_000;
    const HOUR: i64 = 3_600_000;
    // Monday 30 November 2026, noon UTC; the rollover is at 22:00 UTC (17:00 New York).
    let monday = 20_787 * DAY + 12 * HOUR;
    let mut a = costly();
    let t = |ts: i64| tick("EURUSD", "1.10000", "1.10020", ts);
    a.exec(
        &open_cmd("w1", "EURUSD", Side::Buy, "1", None, None),
        &t(monday),
        monday,
    )
    .expect("open");
    let mut log: Vec<AccountEvent> = Vec::new();
    // Tuesday noon: Monday's night.
    let out = a.on_tick(&t(monday + DAY), monday + DAY);
    assert_eq!(kinds(&out.trades), ["SWAP_CHARGED"]);
    assert_eq!(out.trades[0].swap, Some(d("-7.20")));
    assert_eq!(out.trades[0].timestamp, monday + 10 * HOUR);
    log.extend(out.trades.into_iter().map(AccountEvent::from));
    // Thursday noon: Tuesday's night, then Wednesday's three.
    let out = a.on_tick(&t(monday + 3 * DAY), monday + 3 * DAY);
    let swaps: Vec<_> = out.trades.iter().map(|e| e.swap).collect();
    assert_eq!(swaps, [Some(d("-7.20")), Some(d("-21.60"))]);
    log.extend(out.trades.into_iter().map(AccountEvent::from));
    // The next Monday noon: Thursday's and Friday's nights; the weekend's charge nothing.
    let out = a.on_tick(&t(monday + 7 * DAY), monday + 7 * DAY);
    assert_eq!(out.trades.len(), 2);
    log.extend(out.trades.into_iter().map(AccountEvent::from));
    // Accrued, not booked: in equity, not in balance (10,000 - 3.50 commission).
    let accrued = d("-50.40");
    assert_eq!(a.position("trd_w1").map(|p| p.swap), Some(accrued));
    assert_eq!(a.balance(), d("9996.50"));
    let m = a.metrics().expect("metrics");
    assert_eq!(
        m.equity,
        a.balance() + d("-20.00") + accrued,
        "bid 1.10000 - ask 1.10020"
    );
    // Realised at the close, beside profit and commission.
    let closed = close(&mut a, "wc", "trd_w1", &t(monday + 7 * DAY + 1));
    assert_eq!(closed.swap, Some(accrued));
    assert_eq!(
        a.balance(),
        d("9996.50") + d("-20.00") + d("-3.50") + accrued
    );
    // A rebuild from the events charges nothing twice.
    let mut b = costly();
    let opened = a.journal["exec_cmd_w1"].clone();
    b.apply(&opened).expect("open");
    for e in &log {
        b.apply(e).expect("swap");
    }
    assert_eq!(b.position("trd_w1").map(|p| p.swap), Some(accrued));
    assert!(b
        .on_tick(&t(monday + 7 * DAY), monday + 7 * DAY)
        .trades
        .is_empty());
}

// ---- one-cancels-other -------------------------------------------------------------------

#[test]
fn an_oco_pair_cancels_the_other_when_one_fills_and_survives_a_rebuild() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    // A breakout pair: BUY STOP above, SELL STOP below.
    let up = pending_cmd(
        "up",
        Side::Buy,
        "1",
        OrderType::Stop,
        None,
        Some("1.10300"),
        None,
        None,
    );
    let mut log: Vec<AccountEvent> = vec![place(&mut a, &up, &t, 1).into()];
    let mut down = pending_cmd(
        "dn",
        Side::Sell,
        "1",
        OrderType::Stop,
        None,
        Some("1.09700"),
        None,
        None,
    );
    if let CommandKind::OpenTrade(o) = &mut down.kind {
        o.oco_with = Some("ord_up".into());
    }
    let placed = place(&mut a, &down, &t, 2);
    assert_eq!(placed.oco_with.as_deref(), Some("ord_up"));
    log.push(placed.into());
    // A third order cannot pair with a paired one.
    let mut third = pending_cmd(
        "x",
        Side::Sell,
        "1",
        OrderType::Limit,
        Some("1.2"),
        None,
        None,
        None,
    );
    if let CommandKind::OpenTrade(o) = &mut third.kind {
        o.oco_with = Some("ord_up".into());
    }
    assert_eq!(
        a.exec(&third, &t, 3).expect_err("paired").to_string(),
        "oco_with: order ord_up is already paired"
    );
    // The price breaks down: the SELL STOP fills, the BUY STOP is cancelled on the same tick.
    let out = a.on_tick(&tick("EURUSD", "1.09650", "1.09670", 4), 4);
    assert_eq!(kinds(&out.trades), ["TRADE_EXECUTED", "ORDER_CANCELLED"]);
    assert_eq!(out.trades[1].event_id, "oco_ord_up");
    assert_eq!(out.trades[1].order_id.as_deref(), Some("ord_up"));
    assert_eq!(a.orders().count(), 0);
    log.extend(out.trades.into_iter().map(AccountEvent::from));
    let mut b = funded("10000");
    for e in &log {
        b.apply(e).expect("applies");
    }
    assert_eq!((b.orders().count(), b.positions().count()), (0, 1));
}

#[test]
fn when_one_of_a_pair_is_cancelled_the_other_stands_alone() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let l = pending_cmd(
        "l",
        Side::Buy,
        "1",
        OrderType::Limit,
        Some("1.09"),
        None,
        None,
        None,
    );
    place(&mut a, &l, &t, 1);
    let mut s = pending_cmd(
        "s",
        Side::Buy,
        "1",
        OrderType::Stop,
        None,
        Some("1.11"),
        None,
        None,
    );
    if let CommandKind::OpenTrade(o) = &mut s.kind {
        o.oco_with = Some("ord_l".into());
    }
    place(&mut a, &s, &t, 2);
    let can = command(
        "c",
        CommandKind::CancelOrder(suho_domain::CancelOrder {
            order_id: "ord_l".into(),
        }),
    );
    let CommandKind::CancelOrder(x) = &can.kind else {
        unreachable!()
    };
    a.cancel(&can.head, x, 3).expect("cancelled");
    let left: Vec<_> = a
        .orders()
        .map(|o| (o.id.clone(), o.oco_with.clone()))
        .collect();
    assert_eq!(left, [("ord_s".to_string(), None)]);
    let out = a.on_tick(&tick("EURUSD", "1.11000", "1.11020", 4), 4);
    assert_eq!(kinds(&out.trades), ["TRADE_EXECUTED"]);
}

fn strategy_open(id: &str, side: Side, vol: &str, strategy: &str) -> TradeCommand {
    let mut c = open_cmd(id, "EURUSD", side, vol, None, None);
    c.head.metadata = Some(suho_domain::CommandMetadata {
        strategy: Some(strategy.into()),
        signal_id: Some(format!("sig_{id}")),
    });
    c
}

fn close_strategy(id: &str, strategy: &str) -> (CommandHead, suho_domain::ClosePositions) {
    (
        head(id),
        suho_domain::ClosePositions {
            symbol: sym("EURUSD"),
            strategy: strategy.into(),
        },
    )
}

#[test]
fn a_strategys_opposite_order_closes_its_positions_first_and_only_its_own() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    a.exec(&strategy_open("a", Side::Buy, "0.5", "scalping"), &t, 1)
        .expect("buy");
    a.exec(&strategy_open("b", Side::Buy, "0.2", "scalping"), &t, 1)
        .expect("buy");
    // Another strategy's and a manual position on the same symbol stay.
    a.exec(
        &strategy_open("c", Side::Buy, "0.1", "mean_reversion"),
        &t,
        1,
    )
    .expect("buy");
    buy(&mut a, "m", "EURUSD", "0.1", &t);
    let up = tick("EURUSD", "1.10100", "1.10120", 2);
    let sell = strategy_open("s", Side::Sell, "0.3", "scalping");
    let out = a.exec(&sell, &up, 2).expect("sell");
    // Closed at the bid 1.10100: (1.10100 - 1.10020) × 0.5 × 100,000 = 40.00 and × 0.2 = 16.00.
    let closed: Vec<(Option<String>, Option<Decimal>)> = out
        .closes
        .iter()
        .map(|e| (e.trade_id.clone(), e.profit))
        .collect();
    assert_eq!(
        closed,
        vec![
            (Some("trd_a".into()), Some(d("40.00"))),
            (Some("trd_b".into()), Some(d("16.00")))
        ]
    );
    assert!(out
        .closes
        .iter()
        .all(|e| e.event_type == TradeEventType::TradeClosed
            && e.command_id.as_deref() == Some("cmd_s")
            && e.event_id.starts_with("cls_cmd_s_")));
    assert_eq!(out.event.event_type, TradeEventType::TradeExecuted);
    let mut open: Vec<&str> = a.positions().map(|p| p.id.as_str()).collect();
    open.sort_unstable();
    assert_eq!(open, vec!["trd_c", "trd_m", "trd_s"]);
    assert_eq!(a.balance(), d("10056.00"));
    assert_eq!(
        a.position("trd_s").and_then(|p| p.strategy.as_deref()),
        Some("scalping")
    );
    // A retry answers the same events and changes nothing.
    let again = a.exec(&sell, &up, 3).expect("retry");
    assert!(again.replayed);
    assert_eq!(again.closes, out.closes);
    assert_eq!(again.event, out.event);
    assert_eq!(a.balance(), d("10056.00"));
    // Same side: nothing closes.
    let more = a
        .exec(&strategy_open("s2", Side::Sell, "0.1", "scalping"), &up, 3)
        .expect("sell");
    assert!(more.closes.is_empty());
}

#[test]
fn a_refused_open_undoes_its_closes() {
    let mut a = funded("1000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    a.exec(&strategy_open("a", Side::Buy, "0.5", "scalping"), &t, 1)
        .expect("buy");
    let before = (a.balance(), a.positions().count());
    // 5 lots need 5,500.00 of margin at 1:100: more than the account has after the close.
    let err = a
        .exec(&strategy_open("s", Side::Sell, "5", "scalping"), &t, 2)
        .expect_err("refused");
    assert!(
        matches!(err, RejectReason::InsufficientMargin { .. }),
        "{err}"
    );
    assert_eq!((a.balance(), a.positions().count()), before);
    assert!(a.position("trd_a").is_some(), "the close was undone");
    assert!(!a.applied_ids().any(|id| id.starts_with("cls_cmd_s")));
}

#[test]
fn close_positions_closes_all_of_a_strategys_positions_once() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    a.exec(&strategy_open("a", Side::Buy, "0.5", "scalping"), &t, 1)
        .expect("buy");
    a.exec(&strategy_open("b", Side::Buy, "0.2", "scalping"), &t, 1)
        .expect("buy");
    a.exec(
        &strategy_open("c", Side::Sell, "0.1", "mean_reversion"),
        &t,
        1,
    )
    .expect("sell");
    let (h, cp) = close_strategy("f", "scalping");
    let out = a.close_positions(&h, &cp, &t, 2).expect("closes");
    assert!(!out.replayed);
    let ids: Vec<&str> = out
        .closes
        .iter()
        .chain([&out.event])
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(ids, vec!["cls_cmd_f_trd_a", "cls_cmd_f_trd_b"]);
    assert_eq!(
        a.positions().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec!["trd_c"]
    );
    let again = a.close_positions(&h, &cp, &t, 3).expect("retry");
    assert!(again.replayed);
    assert_eq!((again.closes, again.event), (out.closes, out.event));
    // Nothing left: a rejection that says so.
    let (h2, cp2) = close_strategy("g", "scalping");
    let err = a.close_positions(&h2, &cp2, &t, 3).expect_err("nothing");
    assert_eq!(
        err.to_string(),
        "strategy scalping has no open position on EURUSD"
    );
    // The wrong tick is refused before anything closes.
    let (h3, cp3) = close_strategy("h", "mean_reversion");
    assert!(matches!(
        a.close_positions(&h3, &cp3, &tick("GBPUSD", "1.2", "1.2002", 3), 3),
        Err(RejectReason::WrongTick { .. })
    ));
    assert!(a.position("trd_c").is_some());
}

#[test]
fn pip_exits_are_priced_from_the_fill_and_the_strategy_survives_a_rebuild() {
    let mut a = funded("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let mut c = strategy_open("a", Side::Sell, "0.1", "scalping");
    if let CommandKind::OpenTrade(o) = &mut c.kind {
        o.stop_loss_pips = Some(d("20"));
        o.take_profit_pips = Some(d("35.5"));
    }
    let e = a.exec(&c, &t, 1).expect("sell").event;
    // A SELL fills at the bid 1.10000: SL 20 pips above, TP 35.5 pips below.
    assert_eq!(e.stop_loss, Some(d("1.10200")));
    assert_eq!(e.take_profit, Some(d("1.09645")));
    let mut b = funded("10000");
    b.apply(&AccountEvent::Trade(e)).expect("applies");
    assert_eq!(
        b.position("trd_a").and_then(|p| p.strategy.as_deref()),
        Some("scalping")
    );
    // Pips that would put a stop below zero are refused, naming the field.
    let mut wide = strategy_open("w", Side::Buy, "0.1", "scalping");
    if let CommandKind::OpenTrade(o) = &mut wide.kind {
        o.stop_loss_pips = Some(d("20000"));
    }
    let err = a.exec(&wide, &t, 1).expect_err("refused");
    assert!(err.to_string().contains("stop_loss_pips"), "{err}");
}

fn netting(amount: &str) -> PaperAccount {
    let mut a = funded(amount);
    a.config.position_mode = suho_domain::PositionMode::Netting;
    a
}

/// A fresh netting account with `log` applied (a rebuild).
fn rebuilt(a: &PaperAccount, log: &[AccountEvent]) -> PaperAccount {
    let mut b = account();
    b.config.position_mode = suho_domain::PositionMode::Netting;
    b.apply(&a.journal["dep_init"]).expect("deposit");
    for e in log {
        b.apply(e).expect("applies");
    }
    b
}

fn trade_log(out: &Outcome<TradeEvent>) -> Vec<AccountEvent> {
    out.closes
        .iter()
        .chain([&out.event])
        .cloned()
        .map(AccountEvent::from)
        .collect()
}

#[test]
fn netting_merges_same_side_orders_at_the_average_price_and_reduces_on_the_other_side() {
    let mut a = netting("10000");
    let mut log = Vec::new();
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    log.push(buy(&mut a, "a", "EURUSD", "0.5", &t).into());
    // BUY 0.3 more at the ask 1.10100: one position of 0.8 at
    // (1.10020 × 0.5 + 1.10100 × 0.3) / 0.8 = 1.10050.
    let up = tick("EURUSD", "1.10080", "1.10100", 2);
    let add = buy(&mut a, "b", "EURUSD", "0.3", &up);
    assert_eq!(
        (
            add.event_type,
            add.trade_id.as_deref(),
            add.volume,
            add.remaining_volume,
            add.open_price,
            add.execution_price
        ),
        (
            TradeEventType::TradeExecuted,
            Some("trd_a"),
            Some(d("0.3")),
            Some(d("0.8")),
            Some(d("1.1005")),
            Some(d("1.10100"))
        )
    );
    log.push(add.into());
    assert_eq!(a.positions().count(), 1);
    assert_eq!(a.position("trd_a").map(|p| p.volume), Some(d("0.8")));
    // SELL 0.2 at the bid 1.10200: a partial close of 0.2 at (1.10200 - 1.10050) × 0.2 ×
    // 100,000 = 30.00.
    let high = tick("EURUSD", "1.10200", "1.10220", 3);
    let cut = sell(&mut a, "c", "EURUSD", "0.2", &high);
    assert_eq!(
        (
            cut.event_type,
            cut.trade_id.as_deref(),
            cut.volume,
            cut.remaining_volume,
            cut.profit,
            cut.command_id.as_deref()
        ),
        (
            TradeEventType::TradePartiallyClosed,
            Some("trd_a"),
            Some(d("0.2")),
            Some(d("0.6")),
            Some(d("30.00")),
            Some("cmd_c")
        )
    );
    log.push(cut.into());
    // SELL 0.6 at the bid 1.10050: closed, flat, no profit.
    let back = tick("EURUSD", "1.10050", "1.10070", 4);
    let shut = sell(&mut a, "d", "EURUSD", "0.6", &back);
    assert_eq!(
        (shut.event_type, shut.profit),
        (TradeEventType::TradeClosed, Some(d("0.00")))
    );
    log.push(shut.into());
    assert_eq!(a.positions().count(), 0);
    assert_eq!(a.balance(), d("10030.00"));
    let b = rebuilt(&a, &log);
    assert_eq!(b.balance(), a.balance());
    assert_eq!(b.positions().count(), 0);
}

#[test]
fn netting_reverses_a_position_with_a_larger_opposite_order_exactly_once() {
    let mut a = netting("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let mut log: Vec<AccountEvent> = vec![buy(&mut a, "a", "EURUSD", "1", &t).into()];
    // SELL 1.5 at the bid 1.10000: the long closes at (1.10000 - 1.10020) × 100,000 = -20.00,
    // and a short of 0.5 opens at 1.10000.
    let c = open_cmd("r", "EURUSD", Side::Sell, "1.5", None, None);
    let out = a.exec(&c, &t, 2).expect("reversed");
    assert_eq!(kinds(&out.closes), vec!["TRADE_CLOSED"]);
    assert_eq!(out.closes[0].profit, Some(d("-20.00")));
    assert_eq!(out.closes[0].event_id, "cls_cmd_r_trd_a");
    let e = &out.event;
    assert_eq!(
        (
            e.event_type,
            e.trade_id.as_deref(),
            e.action,
            e.volume,
            e.open_price
        ),
        (
            TradeEventType::TradeExecuted,
            Some("trd_r"),
            Some(Side::Sell),
            Some(d("0.5")),
            Some(d("1.10000"))
        )
    );
    let again = a.exec(&c, &t, 3).expect("retry");
    assert!(again.replayed);
    assert_eq!((&again.closes, &again.event), (&out.closes, &out.event));
    log.extend(trade_log(&out));
    let b = rebuilt(&a, &log);
    assert_eq!(b.balance(), d("9980.00"));
    assert_eq!(
        b.positions().cloned().collect::<Vec<_>>(),
        a.positions().cloned().collect::<Vec<_>>()
    );
    // A reversal whose new side the account cannot carry is refused whole.
    let mut poor = netting("500");
    buy(&mut poor, "p", "EURUSD", "0.1", &t);
    let err = poor
        .exec(
            &open_cmd("q", "EURUSD", Side::Sell, "5.1", None, None),
            &t,
            2,
        )
        .expect_err("no margin for 5 lots");
    assert!(
        matches!(err, RejectReason::InsufficientMargin { .. }),
        "{err}"
    );
    assert_eq!(poor.position("trd_p").map(|p| p.volume), Some(d("0.1")));
    assert_eq!(poor.balance(), d("500"));
    // Hedging accounts keep both sides.
    let mut h = funded("10000");
    buy(&mut h, "a", "EURUSD", "1", &t);
    sell(&mut h, "b", "EURUSD", "1.5", &t);
    assert_eq!(h.positions().count(), 2);
}

#[test]
fn a_pending_order_nets_when_it_fills_and_leaves_the_book() {
    let mut a = netting("10000");
    let t = tick("EURUSD", "1.10000", "1.10020", 1);
    let mut log: Vec<AccountEvent> = vec![buy(&mut a, "a", "EURUSD", "1", &t).into()];
    let c = pending_cmd(
        "tp",
        Side::Sell,
        "0.4",
        OrderType::Limit,
        Some("1.10100"),
        None,
        None,
        None,
    );
    log.push(place(&mut a, &c, &t, 1).into());
    let out = a.on_tick(&tick("EURUSD", "1.10100", "1.10120", 2), 2);
    assert_eq!(kinds(&out.trades), vec!["TRADE_PARTIALLY_CLOSED"]);
    let e = &out.trades[0];
    // (1.10100 - 1.10020) × 0.4 × 100,000 = 32.00.
    assert_eq!(
        (
            e.profit,
            e.remaining_volume,
            e.order_id.is_some(),
            e.command_id.as_deref()
        ),
        (Some(d("32.00")), Some(d("0.6")), true, Some("cmd_tp"))
    );
    assert_eq!(a.orders().count(), 0, "the order left the book");
    log.extend(out.trades.into_iter().map(AccountEvent::from));
    let b = rebuilt(&a, &log);
    assert_eq!(b.orders().count(), 0);
    assert_eq!(b.position("trd_a").map(|p| p.volume), Some(d("0.6")));
    assert_eq!(b.balance(), a.balance());
}
