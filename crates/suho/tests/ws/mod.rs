//! The WebSocket `/ws` of the whole platform: market data from the running feed and
//! analytics, the caller's own trade outcome from the real engine, and a clean close when the
//! platform stops.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::Running;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON message `wanted` accepts (others skipped); panics after 30 s.
async fn until(ws: &mut Ws, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if wanted(&v) {
                    return v;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for {what}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_platform_streams_market_data_and_the_users_own_trades_over_ws() {
    let p = Running::start().await;
    let (user_id, token) = p.user("ws@example.com").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws?token={token}", p.addr))
        .await
        .expect("the upgrade");
    let hello = until(&mut ws, "authenticated", |v| v["event"] == "authenticated").await;
    assert_eq!(hello["user_id"], user_id.as_str());
    ws.send(Message::text(
        json!({"action": "subscribe", "symbols": ["EUR/USD"]}).to_string(),
    ))
    .await
    .expect("sends");

    // The feed's ticks and the analytics' forming candles, without the deployment's prefix.
    let tick = until(&mut ws, "a tick", |v| v["subject"] == "market.EURUSD.tick").await;
    assert_eq!(tick["channel"], "market");
    assert_eq!(tick["data"]["symbol"], "EUR/USD");
    assert!(tick["data"]["bid"].as_f64().is_some_and(|b| b > 0.5));
    let candle = until(&mut ws, "a candle", |v| v["subject"] == "market.EURUSD.1m").await;
    assert_eq!(candle["data"]["timeframe"], "1m");

    // The trade's outcome from the engine, then the account's status.
    let (status, body) = p
        .post(
            "/api/trade/open",
            Some(&token),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let executed = until(&mut ws, "the trade", |v| v["topic"] == "user.trades").await;
    assert_eq!(executed["channel"], "user");
    assert_eq!(executed["data"]["event_type"], "TRADE_EXECUTED");
    assert_eq!(executed["data"]["command_id"], body["command_id"]);
    assert!(executed["position"]
        .as_str()
        .is_some_and(|p| p.starts_with("user.trades:")));
    let account = until(&mut ws, "the account", |v| v["topic"] == "user.mt5_status").await;
    assert_eq!(account["data"]["user_id"], user_id.as_str());

    // Stopping the platform closes the connection with 1001.
    p.shutdown.cancel();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            other => panic!("waiting for the close: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    p.stop().await;
}
