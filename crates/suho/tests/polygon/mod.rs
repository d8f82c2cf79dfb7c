//! The Polygon wiring on real NATS and PostgreSQL, against `suho_polygon::fake`'s venue: the
//! live feed selected by `market.feed = "polygon"`, an auth failure stopping the platform, and
//! `suho backfill` into the candle store with resume.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use suho_domain::{Symbol, Timeframe};
use suho_polygon::fake::rest::{bar_prices, FakeRest, Mode, BARS, BASE, MIN, PAGE_SIZE};
use suho_polygon::fake::ws::{frame, quote, FakeWs};
use suho_polygon::fake::KEY;
use suho_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

fn d(s: &str) -> rust_decimal::Decimal {
    s.parse().expect("a test decimal")
}

/// The exact decimal of a JSON number.
fn dec(v: &Value) -> rust_decimal::Decimal {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.parse().unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// A test environment whose feed is Polygon at `ws_url`, with `key`.
async fn polygon_env(ws_url: &str, key: &str) -> TestEnv {
    let mut env = TestEnv::new().await;
    env.config.market.feed = "polygon".into();
    env.config.market.symbols = vec!["EURUSD".into(), "GBPUSD".into()];
    env.config.polygon.api_key = Some(key.to_string().into());
    env.config.polygon.ws_url = ws_url.to_string();
    env.config.polygon.backoff_initial_ms = 20;
    env.config.polygon.backoff_max_ms = 200;
    env.config.validate().expect("a valid polygon config");
    env
}

/// The minute aggregate the fake sends: an old minute, so analytics' own 1m candles (from the
/// live ticks) cannot be mistaken for it.
fn minute_start() -> i64 {
    Timeframe::M1.align(suho_messaging::now_ms()) - 60 * MIN
}

#[tokio::test]
async fn polygon_feed_ticks_reach_the_tick_subject_and_the_price_service() {
    let ca_start = minute_start();
    let fake = FakeWs::start(move |_, mut conn| async move {
        if conn.handshake().await.is_none() {
            return;
        }
        let ca = format!(
            r#"{{"ev":"CA","pair":"EUR/USD","o":1.0850,"c":1.0851,"h":1.0853,"l":1.0849,"v":120,"s":{ca_start},"e":{}}}"#,
            ca_start + MIN
        );
        conn.send(frame(&[ca])).await;
        // Fresh quotes (the price service refuses stale ones) until the test ends.
        for _ in 0..600 {
            let now = suho_messaging::now_ms();
            conn.send(frame(&[
                quote("EUR/USD", "1.0850", "1.0852", now),
                quote("GBP/USD", "1.2701", "1.2703", now),
            ]))
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let env = polygon_env(&fake.url, KEY).await;
    let p = env.prefix.clone();
    let bus = env.bus(suho_security::Identity::Operator).await;
    let mut ticks = bus
        .subscribe(format!("{p}market.EURUSD.tick"))
        .await
        .unwrap();
    let mut minutes = bus.subscribe(format!("{p}market.EURUSD.1m")).await.unwrap();
    let running = super::Running::with(env).await;

    for _ in 0..5 {
        let msg = tokio::time::timeout(Duration::from_secs(15), ticks.next())
            .await
            .expect("ticks from the fake Polygon socket")
            .unwrap();
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["source"], "polygon", "{v}");
        assert_eq!(v["symbol"], "EUR/USD", "{v}");
        assert_eq!(dec(&v["bid"]), d("1.0850"), "{v}");
        assert_eq!(dec(&v["ask"]), d("1.0852"), "{v}");
        assert_eq!(dec(&v["mid"]), d("1.0851"), "{v}");
        assert_eq!(dec(&v["spread"]), d("0.0002"), "{v}");
        let age = suho_messaging::now_ms() - v["timestamp"].as_i64().expect("timestamp");
        assert!((0..5_000).contains(&age), "{v}");
    }
    assert_eq!(
        fake.subscriptions(),
        ["C.EUR/USD,CA.EUR/USD,C.GBP/USD,CA.GBP/USD"]
    );

    // The minute aggregate is not republished: analytics builds market.EURUSD.1m from the
    // quotes, one closed candle per minute.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, minutes.next()).await {
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_ne!(v["start"], ca_start, "Polygon's aggregate republished: {v}");
    }

    // The price service answers from Polygon's quotes.
    let mut answered = None;
    for _ in 0..50 {
        let reply = bus
            .client()
            .request(format!("{p}market.GBPUSD.price"), "".into())
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&reply.payload).unwrap();
        if v.get("error").is_none() {
            answered = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = answered.expect("a quote from the price service");
    assert_eq!(dec(&v["bid"]), d("1.2701"), "{v}");
    assert_eq!(dec(&v["ask"]), d("1.2703"), "{v}");

    assert!(!running.task.is_finished(), "the platform keeps running");
    running.stop().await;
}

#[tokio::test]
async fn polygon_auth_failure_stops_the_platform_naming_it() {
    let fake = FakeWs::start(|_, mut conn| async move {
        let _ = conn.handshake().await;
    })
    .await;
    let env = polygon_env(&fake.url, "a-revoked-key").await;
    let app = suho::Application::build(env.config.clone()).await.unwrap();
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(15), app.run(CancellationToken::new()))
        .await
        .expect("an auth failure stops the platform promptly");
    let message = format!("{:#}", result.expect_err("the platform fails"));
    assert!(
        message.contains("market-feed") && message.contains("polygon authentication failed"),
        "{message}"
    );
    assert!(!message.contains("a-revoked-key"), "{message}");
    assert_eq!(fake.connections(), 1, "auth failures are not retried");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn polygon_backfill_stores_every_bar_once_publishes_them_and_resumes() {
    let fake = FakeRest::start(Mode::FailAfterPages(1)).await;
    let mut env = TestEnv::new().await;
    env.config.polygon.api_key = Some(KEY.to_string().into());
    env.config.polygon.rest_url.clone_from(&fake.url);
    env.config.polygon.backoff_initial_ms = 10;
    env.config.polygon.backoff_max_ms = 50;
    let eurusd = Symbol::parse("EURUSD").unwrap();
    let to = BASE + (BARS - 1) * MIN;
    let request = suho::polygon::BackfillRequest {
        symbols: vec![eurusd],
        timeframe: Timeframe::M1,
        from_ms: BASE,
        to_ms: to,
        publish: true,
        progress: false,
    };
    let bus = env.bus(suho_security::Identity::Operator).await;
    let mut published = bus
        .subscribe(format!("{}market.EURUSD.1m", env.prefix))
        .await
        .unwrap();
    let pool = super::sqlx_pool(&env).await;
    let stored = || suho_bridge::candle_history(&pool, eurusd, Timeframe::M1, 0, i64::MAX, 1000);
    let shutdown = CancellationToken::new();

    // The first run stores a page, then the server keeps failing.
    let err = suho::polygon::backfill(&env.config, &request, &shutdown)
        .await
        .expect_err("the server fails after one page");
    assert!(
        format!("{err:#}").contains("backfilling EURUSD 1m"),
        "{err:#}"
    );
    assert_eq!(
        stored().await.unwrap().len(),
        usize::try_from(PAGE_SIZE).unwrap()
    );

    // The rerun resumes after the last stored bar.
    fake.set_mode(Mode::Normal);
    let served_before = fake.seen().len();
    let summaries = suho::polygon::backfill(&env.config, &request, &shutdown)
        .await
        .expect("the rerun completes");
    assert!(summaries[0].resumed);
    assert_eq!(summaries[0].start_ms, BASE + PAGE_SIZE * MIN);
    assert_eq!(
        summaries[0].bars_stored,
        u64::try_from(BARS - PAGE_SIZE).unwrap()
    );
    assert_eq!(fake.seen()[served_before].from, BASE + PAGE_SIZE * MIN);

    // Rows stored equal the bars served, exactly, once each.
    let rows = stored().await.unwrap();
    assert_eq!(rows.len(), usize::try_from(BARS).unwrap());
    for (i, row) in (0..).zip(&rows) {
        let (o, h, l, c) = bar_prices(i);
        assert_eq!(row.start, BASE + i * MIN, "bar {i}");
        assert_eq!(row.end, row.start + MIN, "bar {i}");
        assert_eq!(
            (row.open, row.high, row.low, row.close),
            (o, h, l, c),
            "bar {i}"
        );
        assert_eq!(row.volume, rust_decimal::Decimal::from(100 + i), "bar {i}");
    }

    // A third run has nothing left to do and stores nothing twice.
    let summaries = suho::polygon::backfill(&env.config, &request, &shutdown)
        .await
        .unwrap();
    assert_eq!(summaries[0].bars_stored, 0);
    assert_eq!(
        suho_bridge::candle_count(&pool, Some(eurusd))
            .await
            .unwrap(),
        BARS
    );

    // Each stored bar was published once, closed, on market.EURUSD.1m.
    let mut starts = Vec::new();
    while let Ok(Some(msg)) =
        tokio::time::timeout(Duration::from_millis(500), published.next()).await
    {
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["closed"], true, "{v}");
        assert_eq!(v["symbol"], "EURUSD", "{v}");
        starts.push(v["start"].as_i64().unwrap());
    }
    let expected: Vec<i64> = (0..BARS).map(|i| BASE + i * MIN).collect();
    assert_eq!(starts, expected);
}

/// The issue's walk on the real servers, prices driven through the Polygon feed: register,
/// login, link MT5, deposit, open a BUY with a stop loss, `TRADE_EXECUTED` at the ask; the
/// quotes fall through the stop; `TRADE_CLOSED` at the bid with the exact decimal profit; and
/// the account status shows the same balance to the cent.
#[tokio::test]
async fn deposit_trade_stop_loss_close_and_the_balance_to_the_cent() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use suho_domain::UserTopic;

    let fallen = Arc::new(AtomicBool::new(false));
    let script_fallen = Arc::clone(&fallen);
    let fake = FakeWs::start(move |_, mut conn| {
        let fallen = Arc::clone(&script_fallen);
        async move {
            if conn.handshake().await.is_none() {
                return;
            }
            for _ in 0..1_200 {
                let now = suho_messaging::now_ms();
                let (bid, ask) = if fallen.load(Ordering::SeqCst) {
                    ("1.09480", "1.09500")
                } else {
                    ("1.10000", "1.10020")
                };
                conn.send(frame(&[
                    quote("EUR/USD", bid, ask, now),
                    quote("GBP/USD", "1.2701", "1.2703", now),
                ]))
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    let mut env = polygon_env(&fake.url, KEY).await;
    // Money arrives by deposit only (the account opens with 0), so the figures are the
    // deposit's.
    env.config.trading.paper_opening_balance = 0;
    let p = super::Running::with(env).await;
    let (user, token) = p.user("walker@example.com").await;
    let (s, body) = p
        .post(
            &format!("/api/user/{user}/mt5/link"),
            Some(&token),
            serde_json::json!({"mt5_account": "9001", "password": "walk-pw-123"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = p
        .post(
            &format!("/api/user/{user}/deposit"),
            Some(&token),
            serde_json::json!({"amount": 10000.00}),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let deposits = super::consume(
        &p.env,
        UserTopic::Transactions,
        Duration::from_secs(30),
        |s| s.len() >= 2,
    )
    .await;
    let types: Vec<&str> = deposits
        .iter()
        .map(|(_, _, v)| v["event_type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(types, ["ACCOUNT_OPENED", "DEPOSIT"], "{deposits:?}");
    let (_, _, opened) = &deposits[0];
    assert_eq!(dec(&opened["balance_after"]), d("0"), "{opened}");
    let (_, _, deposit) = &deposits[1];
    assert_eq!(dec(&deposit["balance_after"]), d("10000.00"));

    let (s, body) = p
        .post(
            "/api/trade/open",
            Some(&token),
            serde_json::json!({"symbol": "EURUSD", "type": "BUY", "volume": 1.00, "stop_loss": 1.09500}),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let executed = super::consume(&p.env, UserTopic::Trades, Duration::from_secs(30), |s| {
        !s.is_empty()
    })
    .await;
    let (_, _, exec) = executed.first().expect("an outcome within 30 s");
    assert_eq!(exec["event_type"], "TRADE_EXECUTED", "{exec}");
    assert_eq!(
        dec(&exec["execution_price"]),
        d("1.10020"),
        "BUY at the ask"
    );
    let trade_id = exec["trade_id"].as_str().expect("trade id").to_string();

    // The market falls through the stop.
    fallen.store(true, Ordering::SeqCst);
    let trades = super::consume(&p.env, UserTopic::Trades, Duration::from_secs(30), |s| {
        s.iter().any(|(_, _, v)| v["event_type"] == "TRADE_CLOSED")
    })
    .await;
    let (key, _, closed) = trades
        .iter()
        .find(|(_, _, v)| v["event_type"] == "TRADE_CLOSED")
        .expect("TRADE_CLOSED within 30 s");
    assert_eq!(key, &user);
    assert_eq!(closed["trade_id"], trade_id.as_str());
    assert_eq!(
        dec(&closed["close_price"]),
        d("1.09480"),
        "closed at the bid"
    );
    // (1.09480 - 1.10020) x 1.00 lot x 100,000 = -540.00 USD, exactly.
    assert_eq!(dec(&closed["profit"]), d("-540.00"), "{closed}");

    // The account status agrees to the cent: on user.mt5_status, and through the API.
    let statuses = super::consume(&p.env, UserTopic::Mt5Status, Duration::from_secs(30), |s| {
        s.iter()
            .any(|(_, _, v)| v["open_positions"] == 0 && dec(&v["balance"]) == d("9460.00"))
    })
    .await;
    let (_, _, status) = statuses
        .iter()
        .rev()
        .find(|(_, _, v)| v["open_positions"] == 0)
        .expect("an ACCOUNT_STATUS after the close");
    assert_eq!(dec(&status["balance"]), d("9460.00"), "{status}");
    assert_eq!(dec(&status["equity"]), d("9460.00"), "{status}");
    assert_eq!(status["currency"], "USD");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp = p
            .http
            .get(p.url(&format!("/api/user/{user}/account")))
            .bearer_auth(&token)
            .send()
            .await
            .expect("account");
        if resp.status().as_u16() == 200 {
            let v: Value = resp.json().await.expect("json");
            if v["open_positions"] == 0 {
                assert_eq!(dec(&v["balance"]), d("9460.00"), "{v}");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no account status via the API"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.stop().await;
}
