//! The market services against a real NATS server: tick shape on `market.{SYM}.tick`, and
//! the price service's replies (a quote for a known symbol, an error reply, not a timeout,
//! for an unknown one).

use std::time::Duration;

use futures::StreamExt;
use rust_decimal::Decimal;
use suho_domain::{PriceErrorKind, PriceReply, Symbol};
use suho_market::{run_feed, run_price_service, PriceServiceConfig, SyntheticFeed};
use suho_messaging::MarketBus;
use suho_security::Identity;
use suho_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

/// Starts the price service and the feed; returns a bus that may ask for quotes.
async fn start(env: &TestEnv, shutdown: &CancellationToken) -> MarketBus {
    let symbols = suho_domain::major_fx();
    tokio::spawn(run_price_service(
        env.bus(Identity::Price).await,
        PriceServiceConfig {
            symbols: symbols.iter().copied().collect(),
            max_age_ms: 5000,
            observer: None,
        },
        shutdown.clone(),
    ));
    // Let the price service subscribe before the feed starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::spawn(run_feed(
        env.bus(Identity::Feed).await,
        SyntheticFeed::new(&symbols, 42),
        symbols.len(),
        50.0,
        shutdown.clone(),
    ));
    env.bus(Identity::Operator).await
}

#[tokio::test]
async fn ticks_have_the_contract_shape() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let bus = env.bus(Identity::Operator).await;
    let mut sub = bus
        .subscribe(format!("{}market.EURUSD.tick", env.prefix))
        .await
        .unwrap();
    let _ = start(&env, &shutdown).await;
    for _ in 0..5 {
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "ask",
                "bid",
                "mid",
                "source",
                "spread",
                "symbol",
                "timestamp"
            ]
        );
        assert_eq!(v["symbol"], "EUR/USD");
        let d = |k: &str| Decimal::from_str_exact(&v[k].to_string()).unwrap();
        assert_eq!(d("spread"), d("ask") - d("bid"));
        assert_eq!(d("mid") * Decimal::TWO, d("ask") + d("bid"));
        assert!(v["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    }
    shutdown.cancel();
}

#[tokio::test]
async fn price_service_answers_known_and_unknown_symbols() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let bus = start(&env, &shutdown).await;
    let ask = |sym: &'static str| {
        let bus = bus.clone();
        let subject = format!("{}market.{sym}.price", env.prefix);
        async move {
            let bytes = bus.request(subject, bytes::Bytes::new()).await.unwrap();
            serde_json::from_slice::<PriceReply>(&bytes).unwrap()
        }
    };
    // Known symbol: a quote once the first tick has arrived.
    let mut quote = None;
    for _ in 0..50 {
        match ask("EURUSD").await {
            PriceReply::Quote(q) => {
                quote = Some(q);
                break;
            }
            PriceReply::Error(e) => {
                assert_eq!(e.error, PriceErrorKind::NoQuote);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let quote = quote.expect("a quote for EURUSD");
    assert_eq!(quote.symbol, Symbol::parse("EURUSD").unwrap());
    assert!(quote.ask > quote.bid);
    assert!(quote.age_ms >= 0 && quote.age_ms < 5000);

    // Unknown and malformed symbols: an error reply, promptly.
    for sym in ["XXXYYY", "FOO"] {
        let reply = tokio::time::timeout(Duration::from_secs(3), ask(sym))
            .await
            .expect("a reply, not a timeout");
        match reply {
            PriceReply::Error(e) => assert_eq!(e.error, PriceErrorKind::UnknownSymbol),
            PriceReply::Quote(q) => panic!("quote for unknown symbol: {q:?}"),
        }
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_recorded_file_replays_in_order_at_the_chosen_speed() {
    use suho_market::{run_replay, Recording, ReplayOptions};
    let env = TestEnv::new().await;
    let bus = env.bus(Identity::Operator).await;
    let feed = env.bus(Identity::Feed).await;
    let mut bars = bus
        .subscribe(format!("{}market.GBPUSD.1m", env.prefix))
        .await
        .unwrap();
    let mut sub = bus
        .subscribe(format!("{}market.*.tick", env.prefix))
        .await
        .unwrap();
    // The server has both subscriptions before the feed (another connection) publishes, or a
    // loaded machine loses the first tick. A flush only empties the client's buffer, so the
    // feed sends probes until one comes back: the server then has the tick subscription, and
    // the bars one too (made before it on the same connection, which the server reads in order).
    let probe = format!("{}market.PROBE.tick", env.prefix);
    loop {
        feed.publish_bytes(probe.clone(), "{}".into())
            .await
            .unwrap();
        feed.client().flush().await.unwrap();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            break;
        }
    }
    let mut csv = String::from("timestamp,symbol,bid,ask\n");
    for i in 0..10 {
        csv.push_str(&format!(
            "{},EUR/USD,1.08{:02},1.09{:02}\n",
            1_704_931_200_000_i64 + i * 1000,
            i,
            i
        ));
    }
    let recording = Recording::parse(&csv).unwrap();
    // 10 ticks one second apart, played 20x faster: about 450 ms from first to last.
    let started = std::time::Instant::now();
    let sent = run_replay(
        feed.clone(),
        recording,
        ReplayOptions {
            speed: 20.0,
            rebase: false,
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(sent, 10);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "played too fast: {elapsed:?}"
    );
    let mut previous = 0;
    for i in 0..10 {
        let msg = loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap()
                .unwrap();
            // A probe still on its way when the first one came back.
            if msg.subject.as_str() != probe {
                break msg;
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["source"], "replay");
        let ts = v["timestamp"].as_i64().unwrap();
        assert_eq!(
            ts,
            1_704_931_200_000 + i * 1000,
            "recorded times kept without rebase"
        );
        assert!(ts > previous);
        previous = ts;
    }
    // Bars go out as closed candles, as fast as possible with speed 0.
    let bar_file = "start,symbol,timeframe,open,high,low,close,volume\n1704931200000,GBPUSD,1m,1.27,1.2705,1.2695,1.2701,42\n";
    run_replay(
        feed.clone(),
        Recording::parse(bar_file).unwrap(),
        ReplayOptions {
            speed: 0.0,
            rebase: true,
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), bars.next())
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(v["closed"], true);
    assert_eq!(v["close"].to_string(), "1.2701");
    assert!(
        v["start"].as_i64().unwrap() > 1_704_931_200_000,
        "rebased to now"
    );
}
