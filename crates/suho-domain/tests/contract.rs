//! Contract tests: the shared fixtures parse into the domain types and serialize back to the same
//! JSON (plus the fields the types add), and the contract's tables (timeframes, topics, subjects,
//! symbols) hold.

use std::path::PathBuf;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use suho_domain::event::{CommandType, Side, TradeEventType, TradeStatus};
use suho_domain::market::Timeframe;
use suho_domain::symbol::{major_fx, Symbol, MAJOR_FX};
use suho_domain::topic::UserTopic;
use suho_domain::{
    subject, KafkaEnvelope, NatsEnvelope, Tick, TradeCommand, TradeEvent, UserEvent,
};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("read fixture");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test decimal")
}

/// Parses `value` into `T` (from text, as a consumer would), writes it back and returns both.
fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> (T, Value) {
    let text = serde_json::to_string(value).expect("to text");
    let parsed: T = serde_json::from_str(&text).expect("parse fixture");
    let back = serde_json::to_value(&parsed).expect("write back");
    (parsed, back)
}

fn with(mut value: Value, pointer: &str, key: &str, extra: Value) -> Value {
    value
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .expect("object at pointer")
        .insert(key.to_owned(), extra);
    value
}

#[test]
fn market_tick_fixture_round_trips() {
    let fx = fixture("market-tick.json");
    let (tick, back) = round_trip::<Tick>(&fx);
    assert_eq!(back, fx);
    assert_eq!(back.to_string(), fx.to_string());
    assert_eq!(tick.symbol.as_str(), "EURUSD");
    assert_eq!(tick.bid, dec("1.085"));
    assert_eq!(tick.ask, dec("1.0852"));
    assert_eq!(tick.mid, dec("1.0851"));
    assert_eq!(tick.spread, dec("0.0002"));
}

#[test]
fn tick_new_computes_mid_and_spread_exactly() {
    let sym = Symbol::parse("EUR/USD").expect("sym");
    let t = Tick::new(
        sym,
        dec("1.085"),
        dec("1.0852"),
        1_704_931_200_000,
        "polygon",
    )
    .expect("tick");
    assert_eq!(t.mid, dec("1.0851"));
    assert_eq!(t.spread, dec("0.0002"));
    assert_eq!(
        serde_json::to_value(&t).expect("w"),
        fixture("market-tick.json")
    );

    let t = Tick::new(sym, dec("0.1"), dec("0.2"), 0, "x").expect("tick");
    assert_eq!(t.mid, dec("0.15"));
    assert_eq!(t.spread, dec("0.1"));
    let jpy = Symbol::parse("USDJPY").expect("sym");
    let t = Tick::new(jpy, dec("145.123"), dec("145.126"), 0, "x").expect("tick");
    assert_eq!(t.mid, dec("145.1245"));
    assert_eq!(t.spread, dec("0.003"));
}

#[test]
fn nats_envelope_fixture_round_trips_with_mid_and_spread() {
    let fx = fixture("nats-market-tick-envelope.json");
    let (env, back) = round_trip::<NatsEnvelope<Tick>>(&fx);
    let expected = with(fx.clone(), "/data", "mid", json!(1.0851));
    let expected = with(expected, "/data", "spread", json!(0.0002));
    assert_eq!(back, expected);
    assert_eq!(env.data.mid, dec("1.0851"));
    assert_eq!(env.data.spread, dec("0.0002"));
    assert_eq!(env.subject, subject::tick("", env.data.symbol));
    assert_eq!(
        subject::symbol_of_market_subject("", &env.subject),
        Some(env.data.symbol)
    );
}

#[test]
fn trade_command_fixture_round_trips() {
    let fx = fixture("user-trade-command.json");
    let (cmd, back) = round_trip::<TradeCommand>(&fx);
    assert_eq!(back, with(fx, "", "schema_version", json!(1)));
    assert_eq!(cmd.command_type(), CommandType::OpenTrade);
    assert_eq!(cmd.head.schema_version, 1);
    let order = cmd.kind.order().expect("order");
    assert_eq!(order.side, Side::Buy);
    assert_eq!(order.volume, dec("0.1"));
    assert_eq!(order.stop_loss, Some(dec("1.082")));
    assert_eq!(order.take_profit, Some(dec("1.088")));
    assert_eq!(cmd.user_id().as_str(), "user_12345");
    assert_eq!(cmd.event_id(), "cmd_abc123");
    cmd.validate().expect("fixture command is valid");
}

#[test]
fn trade_result_fixture_round_trips() {
    let fx = fixture("trade-execution-result.json");
    let (ev, back) = round_trip::<TradeEvent>(&fx);
    assert_eq!(back, with(fx, "", "schema_version", json!(1)));
    assert_eq!(ev.event_type, TradeEventType::TradeExecuted);
    assert_eq!(ev.status, Some(TradeStatus::Success));
    assert_eq!(ev.execution_price, Some(dec("1.0851")));
    assert_eq!(ev.latency_ms, Some(500));
    assert_eq!(ev.event_type_str(), "TRADE_EXECUTED");
    assert_eq!(ev.timestamp(), 1_704_931_200_500);
}

#[test]
fn kafka_envelope_fixture_round_trips() {
    let fx = fixture("kafka-user-trades-envelope.json");
    let (env, back) = round_trip::<KafkaEnvelope<TradeEvent>>(&fx);
    assert_eq!(back, with(fx, "/value", "schema_version", json!(1)));
    assert_eq!(env.topic, UserTopic::Trades.name());
    assert_eq!(env.key, env.value.user_id.as_str());
    assert_eq!(env.value.action, Some(Side::Buy));
    assert_eq!(env.value.open_price, Some(dec("1.085")));
    assert_eq!(env.value.topic(), UserTopic::Trades);
    assert!(env.partition < UserTopic::Trades.partitions());
}

#[test]
fn timeframe_alignment() {
    // 2024-01-11T00:00:34.567Z
    let ts = 1_704_931_234_567;
    assert_eq!(Timeframe::M1.align(ts), 1_704_931_200_000);
    assert_eq!(Timeframe::M5.align(ts), 1_704_931_200_000);
    assert_eq!(Timeframe::H1.align(ts), 1_704_931_200_000);
    assert_eq!(Timeframe::H4.align(ts), 1_704_931_200_000);
    assert_eq!(Timeframe::D1.align(ts), 1_704_931_200_000);

    // 2024-01-11T13:47:12.000Z
    let ts = 1_704_980_832_000;
    assert_eq!(Timeframe::M1.align(ts), 1_704_980_820_000); // 13:47
    assert_eq!(Timeframe::M5.align(ts), 1_704_980_700_000); // 13:45
    assert_eq!(Timeframe::M15.align(ts), 1_704_980_700_000); // 13:45
    assert_eq!(Timeframe::M30.align(ts), 1_704_979_800_000); // 13:30
    assert_eq!(Timeframe::H1.align(ts), 1_704_978_000_000); // 13:00
    assert_eq!(Timeframe::H4.align(ts), 1_704_974_400_000); // 12:00
    assert_eq!(Timeframe::D1.align(ts), 1_704_931_200_000); // 00:00

    // Boundaries map to themselves; negative timestamps floor down.
    for tf in Timeframe::ALL {
        assert_eq!(tf.align(1_704_931_200_000), 1_704_931_200_000);
        assert_eq!(tf.align(0), 0);
        assert_eq!(tf.align(-1), -tf.duration_ms());
    }
    assert_eq!(Timeframe::M1.align(-60_001), -120_000);
    assert_eq!(
        Timeframe::ALL.map(|t| t.as_str()),
        ["1m", "5m", "15m", "30m", "1h", "4h", "1d"]
    );
    assert_eq!(Timeframe::H4.duration_ms(), 14_400_000);
    assert_eq!(Timeframe::D1.duration_ms(), 86_400_000);
}

#[test]
fn symbol_parsing() {
    for good in [
        "EURUSD",
        "EUR/USD",
        "eur/usd",
        "EUR-USD",
        "eurusd",
        " EURUSD\t",
    ] {
        let s = Symbol::parse(good).expect(good);
        assert_eq!(s.as_str(), "EURUSD");
        assert_eq!(s.display(), "EUR/USD");
        assert_eq!(s.to_string(), "EURUSD");
        assert_eq!(good.parse::<Symbol>().expect(good), s);
    }
    for bad in [
        "",
        "EURUS",
        "EURUSDD",
        "EUR1SD",
        "EUR.USD",
        "EUR_USD",
        "EUR / USD",
        "€URUSD",
    ] {
        let err = Symbol::parse(bad).expect_err(bad);
        assert!(err.to_string().contains(bad), "{err} should name {bad:?}");
    }
    assert_eq!(MAJOR_FX.len(), 14);
    assert_eq!(major_fx().len(), 14);
    let display: Symbol = serde_json::from_value(json!("gbp/jpy")).expect("parse");
    assert_eq!(serde_json::to_value(display).expect("w"), json!("GBPJPY"));
}

#[test]
fn topic_table() {
    let rows: Vec<(&str, i32, i64, bool)> = UserTopic::ALL
        .iter()
        .map(|t| (t.name(), t.partitions(), t.retention_ms(), t.compacted()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("user.auth", 3, 7_776_000_000, false),
            ("user.settings", 3, -1, true),
            ("user.commands", 6, 220_903_200_000, false),
            ("user.trades", 6, 220_903_200_000, false),
            ("user.mt5_status", 3, 2_592_000_000, false),
            ("user.risk_alerts", 3, 31_536_000_000, false),
            ("user.transactions", 3, 315_576_000_000, false),
            ("user.commands.dlq", 6, 220_903_200_000, false),
            ("engine.journal", 6, 604_800_000, false),
        ]
    );
    assert_eq!(UserTopic::Trades.full_name("t123."), "t123.user.trades");
    assert_eq!(UserTopic::Trades.full_name(""), "user.trades");
    for t in UserTopic::ALL {
        assert_eq!(UserTopic::from_name(t.name()), Some(t));
    }
}

#[test]
fn subject_builders() {
    let eur = Symbol::parse("EUR/USD").expect("sym");
    assert_eq!(subject::tick("", eur), "market.EURUSD.tick");
    assert_eq!(subject::tick("t123.", eur), "t123.market.EURUSD.tick");
    assert_eq!(
        subject::candle("", eur, Timeframe::M15),
        "market.EURUSD.15m"
    );
    assert_eq!(subject::price("", eur), "market.EURUSD.price");
    assert_eq!(subject::indicator("", "rsi", eur), "indicators.rsi.EURUSD");
    assert_eq!(
        subject::signal("", "scalping", eur),
        "signals.scalping.EURUSD"
    );
    assert_eq!(
        subject::alert("", "spread_spike"),
        "alerts.market.spread_spike"
    );
    assert_eq!(subject::health("t1.", "market"), "t1.system.health.market");
    assert_eq!(subject::all_ticks(""), "market.*.tick");
    assert_eq!(subject::all_prices("t1."), "t1.market.*.price");
    assert_eq!(
        subject::symbol_of_market_subject("", "market.EURUSD.price"),
        Some(eur)
    );
    assert_eq!(
        subject::symbol_of_market_subject("t1.", &subject::candle("t1.", eur, Timeframe::D1)),
        Some(eur)
    );
    assert_eq!(
        subject::symbol_of_market_subject("", "market.EUR.price"),
        None
    );
}
