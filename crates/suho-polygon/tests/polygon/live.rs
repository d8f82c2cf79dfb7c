//! The live WebSocket client against the fake Polygon socket.

use std::time::Duration;

use suho_domain::{Symbol, Timeframe};
use suho_polygon::{LiveEvent, LiveStats, PolygonError, PolygonLive};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fake_ws::{frame, quote, FakeWs};
use crate::{config, dec, within, KEY};

const T0: i64 = 1_704_931_200_000;

struct Running {
    rx: mpsc::Receiver<LiveEvent>,
    stats: std::sync::Arc<LiveStats>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), PolygonError>>,
}

impl Running {
    fn start(fake: &FakeWs, symbols: &[&str]) -> Running {
        let live = PolygonLive::new(config(&fake.url, "http://127.0.0.1:9")).expect("config");
        let stats = live.stats();
        let symbols: Vec<Symbol> = symbols.iter().map(|s| Symbol::parse(s).unwrap()).collect();
        let (tx, rx) = mpsc::channel(4096);
        let shutdown = CancellationToken::new();
        let sd = shutdown.clone();
        let task = tokio::spawn(async move { live.run(&symbols, tx, sd).await });
        Running {
            rx,
            stats,
            shutdown,
            task,
        }
    }

    async fn next_n(&mut self, n: usize) -> Vec<LiveEvent> {
        let mut out = Vec::with_capacity(n);
        within(10, &format!("{n} live events"), async {
            while out.len() < n {
                out.push(self.rx.recv().await.expect("feed ended early"));
            }
        })
        .await;
        out
    }

    async fn stop(self) -> Result<(), PolygonError> {
        self.shutdown.cancel();
        within(5, "client stops on cancel", self.task)
            .await
            .expect("task")
    }
}

fn quotes(events: &[LiveEvent]) -> Vec<&suho_domain::Tick> {
    events
        .iter()
        .filter_map(|e| match e {
            LiveEvent::Quote(t) => Some(t),
            LiveEvent::Minute(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn auth_subscribe_and_exact_parsing_of_quotes_and_minutes() {
    let fake = FakeWs::start(|_, mut conn| async move {
        if conn.handshake().await.is_none() {
            return;
        }
        let ca = format!(
            r#"{{"ev":"CA","pair":"EUR/USD","o":1.0850,"c":1.0851,"h":1.0853,"l":1.0849,"v":120,"s":{T0},"e":{}}}"#,
            T0 + 60_000
        );
        conn.send(frame(&[
            quote("EUR/USD", "1.0850", "1.0852", T0),
            quote("EUR-USD", "1.0851", "1.0853", T0 + 1),
            ca,
            quote("EURUSD", "1.08505", "1.08525", T0 + 2),
            quote("GBP/USD", "1.27001", "1.27015", T0 + 3),
        ]))
        .await;
        conn.hold().await;
    })
    .await;
    let mut run = Running::start(&fake, &["EURUSD", "gbp/usd"]);
    let events = run.next_n(5).await;

    // What the fake saw: one auth with the key, one subscribe for both channels of both pairs.
    let received = fake.received();
    assert_eq!(received.len(), 2, "{received:?}");
    let auth: serde_json::Value = serde_json::from_str(&received[0].1).unwrap();
    assert_eq!(auth, serde_json::json!({"action":"auth","params":KEY}));
    let sub: serde_json::Value = serde_json::from_str(&received[1].1).unwrap();
    assert_eq!(
        sub,
        serde_json::json!({"action":"subscribe","params":"C.EUR/USD,CA.EUR/USD,C.GBP/USD,CA.GBP/USD"})
    );

    let q = quotes(&events);
    assert_eq!(q.len(), 4);
    assert_eq!(q[0].symbol.as_str(), "EURUSD");
    assert_eq!(q[0].bid, dec("1.0850"));
    assert_eq!(q[0].ask.to_string(), "1.0852");
    assert_eq!(q[0].mid, dec("1.0851"));
    assert_eq!(q[0].spread, dec("0.0002"));
    assert_eq!(q[0].timestamp, T0);
    assert_eq!(q[0].source, "polygon");
    // All three spellings are the same pair.
    assert!(q[..3].iter().all(|t| t.symbol.as_str() == "EURUSD"));
    assert_eq!(q[2].bid.to_string(), "1.08505");
    assert_eq!(q[2].ask.to_string(), "1.08525");
    assert_eq!(q[3].symbol.as_str(), "GBPUSD");
    assert_eq!(q[3].ask.to_string(), "1.27015");

    let LiveEvent::Minute(c) = &events[2] else {
        panic!("third event should be the minute candle: {events:?}")
    };
    assert_eq!(c.symbol.as_str(), "EURUSD");
    assert_eq!(c.timeframe, Timeframe::M1);
    assert_eq!(
        (c.open, c.high, c.low, c.close, c.volume),
        (
            dec("1.085"),
            dec("1.0853"),
            dec("1.0849"),
            dec("1.0851"),
            dec("120")
        )
    );
    assert_eq!(c.high.to_string(), "1.0853");
    assert_eq!((c.start, c.end, c.closed), (T0, T0 + 60_000, true));

    assert_eq!((run.stats.quotes(), run.stats.minutes()), (4, 1));
    assert_eq!(run.stats.malformed(), 0);
    run.stop().await.expect("clean stop");
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn auth_failure_is_returned_promptly_and_never_retried() {
    let fake = FakeWs::start(|_, mut conn| async move {
        conn.send_status("connected", "Connected Successfully")
            .await;
        let _ = conn.recv().await;
        conn.send_status("auth_failed", "authentication failed")
            .await;
        // Polygon closes after a failed auth.
    })
    .await;
    let run = Running::start(&fake, &["EURUSD"]);
    let started = std::time::Instant::now();
    let result = within(5, "auth failure", run.task).await.expect("task");
    let err = result.expect_err("auth failure must be an error");
    assert!(
        matches!(&err, PolygonError::Auth { message } if message == "authentication failed"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(
        !format!("{err} {err:?}").contains(KEY),
        "key leaked: {err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // Far longer than the 20 ms backoff: a retry loop would have reconnected by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.connections(), 1, "no retry after auth_failed");
    assert_eq!(run.stats.reconnects(), 0);
}

#[tokio::test]
async fn disconnect_mid_stream_reconnects_reauths_resubscribes_and_continues() {
    let fake = FakeWs::start(|idx, mut conn| async move {
        if conn.handshake().await.is_none() {
            return;
        }
        let base = T0 + i64::try_from(idx).unwrap() * 10;
        conn.send(frame(&[
            quote("EUR/USD", "1.0850", "1.0852", base),
            quote("EUR/USD", "1.0851", "1.0853", base + 1),
        ]))
        .await;
        if idx == 0 {
            // Give the frame time to leave, then vanish without a close frame.
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.drop_abruptly();
        } else {
            conn.hold().await;
        }
    })
    .await;
    let mut run = Running::start(&fake, &["EURUSD"]);
    let events = run.next_n(4).await;
    let ts: Vec<i64> = quotes(&events).iter().map(|t| t.timestamp).collect();
    assert_eq!(ts, vec![T0, T0 + 1, T0 + 10, T0 + 11]);
    assert_eq!(fake.connections(), 2);
    assert!(run.stats.reconnects() >= 1);
    // Authenticated and subscribed again on the new connection.
    let auths = fake
        .received()
        .iter()
        .filter(|(_, m)| m.contains("\"auth\""))
        .map(|(i, _)| *i)
        .collect::<Vec<_>>();
    assert_eq!(auths, vec![0, 1]);
    assert_eq!(
        fake.subscriptions(),
        vec![
            "C.EUR/USD,CA.EUR/USD".to_owned(),
            "C.EUR/USD,CA.EUR/USD".to_owned()
        ]
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test]
async fn burst_of_1000_events_in_one_frame_all_arrive_in_order() {
    let fake = FakeWs::start(|_, mut conn| async move {
        if conn.handshake().await.is_none() {
            return;
        }
        let spellings = ["EUR/USD", "EUR-USD", "EURUSD"];
        let events: Vec<String> = (0..1000_i64)
            .map(|i| {
                let bid = rust_decimal::Decimal::new(108_000 + i, 5);
                let ask = rust_decimal::Decimal::new(108_020 + i, 5);
                quote(
                    spellings[usize::try_from(i).unwrap() % 3],
                    &bid.to_string(),
                    &ask.to_string(),
                    T0 + i,
                )
            })
            .collect();
        conn.send(frame(&events)).await;
        conn.hold().await;
    })
    .await;
    let mut run = Running::start(&fake, &["EURUSD"]);
    let events = run.next_n(1000).await;
    for (i, t) in quotes(&events).iter().enumerate() {
        let i = i64::try_from(i).unwrap();
        assert_eq!(t.timestamp, T0 + i);
        assert_eq!(t.symbol.as_str(), "EURUSD");
        assert_eq!(t.bid, rust_decimal::Decimal::new(108_000 + i, 5));
        assert_eq!(t.ask, rust_decimal::Decimal::new(108_020 + i, 5));
    }
    assert_eq!(run.stats.quotes(), 1000);
    assert_eq!(run.stats.malformed(), 0);
    run.stop().await.expect("clean stop");
}

#[tokio::test]
async fn malformed_frames_and_events_are_skipped_and_counted() {
    let fake = FakeWs::start(|_, mut conn| async move {
        if conn.handshake().await.is_none() {
            return;
        }
        conn.send("this is not json").await; // 1 malformed frame
        conn.send(r#"[{"ev":"C","p":"EUR/USD""#).await; // 1 truncated frame
        conn.send(r#""just a string""#).await; // 1 frame that is not an array
        conn.send(frame(&[
            quote("NOTAPAIR", "1.0850", "1.0852", T0), // bad pair
            r#"{"ev":"C","p":"EUR/USD","a":"abc","b":1.0850,"t":1}"#.to_owned(), // bad number
            quote("EUR/USD", "1.0860", "1.0850", T0),  // crossed
            r#"{"ev":"CA","pair":"EUR/USD"}"#.to_owned(), // missing fields
            r#"{"p":"EUR/USD"}"#.to_owned(),           // no ev
            r#"{"ev":"XQ","p":"EUR/USD"}"#.to_owned(), // unknown type: ignored, not malformed
            quote("EUR/USD", "1.0850", "1.0852", T0 + 10), // good, same frame
        ]))
        .await;
        conn.send(frame(&[quote("EUR/USD", "1.0851", "1.0853", T0 + 11)]))
            .await;
        conn.hold().await;
    })
    .await;
    let mut run = Running::start(&fake, &["EURUSD"]);
    let events = run.next_n(2).await;
    let ts: Vec<i64> = quotes(&events).iter().map(|t| t.timestamp).collect();
    assert_eq!(ts, vec![T0 + 10, T0 + 11]);
    assert_eq!(run.stats.malformed(), 3 + 5);
    assert_eq!(
        fake.connections(),
        1,
        "malformed data must not drop the connection"
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test]
async fn cancellation_stops_a_quiet_stream_promptly() {
    let fake = FakeWs::start(|_, mut conn| async move {
        if conn.handshake().await.is_some() {
            conn.hold().await;
        }
    })
    .await;
    let run = Running::start(&fake, &["EURUSD"]);
    within(5, "subscribed", async {
        while fake.subscriptions().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    run.stop().await.expect("clean stop");
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn server_down_at_start_is_retried_until_it_comes_up() {
    // Reserve a port, release it, start the client against it, then bring the fake up there.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let live = PolygonLive::new(config(&format!("ws://{addr}"), "http://127.0.0.1:9")).unwrap();
    let stats = live.stats();
    let (tx, mut rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    let symbols = [Symbol::parse("EURUSD").unwrap()];
    let task = tokio::spawn(async move { live.run(&symbols, tx, sd).await });
    within(5, "a few failed attempts", async {
        while stats.reconnects() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let (mut sink, mut stream) = futures::StreamExt::split(ws);
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let status = |s: &str| {
            Message::text(format!(
                r#"[{{"ev":"status","status":"{s}","message":""}}]"#
            ))
        };
        sink.send(status("connected")).await.unwrap();
        let _auth = futures::StreamExt::next(&mut stream).await;
        sink.send(status("auth_success")).await.unwrap();
        let _sub = futures::StreamExt::next(&mut stream).await;
        sink.send(Message::text(frame(&[quote("EUR/USD", "1.1", "1.2", T0)])))
            .await
            .unwrap();
        while let Some(Ok(_)) = futures::StreamExt::next(&mut stream).await {}
    });
    let event = within(10, "event after the server came up", rx.recv())
        .await
        .expect("event");
    assert!(matches!(event, LiveEvent::Quote(t) if t.ask == dec("1.2")));
    shutdown.cancel();
    within(5, "stop", task).await.unwrap().unwrap();
    server.abort();
}

#[tokio::test]
async fn wss_urls_get_a_tls_client_and_a_failed_handshake_is_retried() {
    // A TCP server that is not TLS: the client builds its rustls config (one crypto provider,
    // no panic), fails the handshake, and treats that as a retryable connection failure.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            drop(tcp);
        }
    });
    let mut cfg = config(&format!("wss://{addr}/forex"), "http://127.0.0.1:9");
    cfg.max_reconnects = Some(2);
    let live = PolygonLive::new(cfg).unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let err = within(
        10,
        "gives up after max_reconnects",
        live.run(
            &[Symbol::parse("EURUSD").unwrap()],
            tx,
            CancellationToken::new(),
        ),
    )
    .await
    .expect_err("no TLS server");
    assert!(
        matches!(&err, PolygonError::RetriesExhausted { attempts: 3, last } if last.is_retryable()),
        "{err:?}"
    );
    server.abort();
}
