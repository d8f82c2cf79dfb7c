//! Orders a trader expects, through the HTTP API of the whole platform: a pending order rests
//! and shows in `GET .../orders`, a cancel takes it out (and `status=all` remembers it), a
//! market order shows in `GET .../positions` with its live figures, a partial close leaves
//! the remainder, `GET .../commands/{id}` tells what became of each command, and
//! `GET .../activities` pages through the deals.

use std::time::Duration;

use serde_json::{json, Value};

use super::Running;

/// GETs `path` until `done` holds for the answer (the audit store follows the log within
/// moments), failing after 30 s.
pub(crate) async fn until(
    p: &Running,
    token: &str,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = p.send_text(reqwest::Method::GET, path, token, "").await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn pending_orders_positions_and_commands_can_be_asked_for() {
    let p = Running::start().await;
    let (user, token) = p.user("orders@example.com").await;
    let (other, _) = p.user("someone-else@example.com").await;
    let me = |tail: &str| format!("/api/user/{user}/{tail}");

    // A BUY LIMIT far below the market rests.
    let (s, body) = p
        .post(
            "/api/trade/open",
            Some(&token),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1,
                   "order_type": "LIMIT", "limit_price": 0.5, "time_in_force": "GTC"}),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let placing = body["command_id"].as_str().unwrap().to_string();
    let open = until(&p, &token, &me("orders?status=open"), |b| {
        b["orders"].as_array().is_some_and(|o| o.len() == 1)
    })
    .await;
    let order = &open["orders"][0];
    assert_eq!(
        (
            order["order_type"].as_str(),
            order["side"].as_str(),
            order["status"].as_str()
        ),
        (Some("LIMIT"), Some("BUY"), Some("PENDING")),
        "{order}"
    );
    assert_eq!(order["limit_price"], 0.5);
    let order_id = order["order_id"].as_str().unwrap().to_string();
    let placed = until(&p, &token, &me(&format!("commands/{placing}")), |b| {
        b["status"] == "executed"
    })
    .await;
    assert_eq!(
        placed["events"][0]["event_type"], "ORDER_PLACED",
        "{placed}"
    );

    // Cancelled: gone from the open orders, remembered by `status=all`.
    let (s, body) = p
        .post(
            "/api/trade/cancel",
            Some(&token),
            json!({"order_id": order_id}),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    until(&p, &token, &me("orders?status=open"), |b| {
        b["orders"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    let all = until(&p, &token, &me("orders?status=all"), |b| {
        b["orders"][0]["status"] == "CANCELLED"
    })
    .await;
    assert_eq!(all["orders"][0]["order_id"], order_id.as_str());
    // A second cancel of it is rejected with a reason.
    let (_, body) = p
        .post(
            "/api/trade/cancel",
            Some(&token),
            json!({"order_id": order_id}),
        )
        .await;
    let again = body["command_id"].as_str().unwrap().to_string();
    let rejected = until(&p, &token, &me(&format!("commands/{again}")), |b| {
        b["status"] == "rejected"
    })
    .await;
    assert!(
        rejected["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("is not pending"),
        "{rejected}"
    );

    // A market order shows in the positions with its figures; half of it is closed.
    let (s, body) = p
        .post(
            "/api/trade/open",
            Some(&token),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "trailing_stop_pips": 50}),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let positions = until(&p, &token, &me("positions"), |b| {
        b["positions"].as_array().is_some_and(|o| o.len() == 1)
    })
    .await;
    let pos = &positions["positions"][0];
    for field in [
        "trade_id",
        "symbol",
        "side",
        "volume",
        "open_price",
        "current_price",
        "stop_loss",
        "profit",
        "swap",
        "commission",
        "opened_at",
    ] {
        assert!(!pos[field].is_null(), "{field} in {pos}");
    }
    assert_eq!(pos["trailing_stop_pips"], 50.0);
    assert!(positions["as_of"].is_i64(), "{positions}");
    let trade_id = pos["trade_id"].as_str().unwrap().to_string();
    let (s, body) = p
        .post(
            "/api/trade/close",
            Some(&token),
            json!({"trade_id": trade_id, "volume": 0.05}),
        )
        .await;
    assert_eq!(s, 202, "{body}");
    let closing = body["command_id"].as_str().unwrap().to_string();
    let partial = until(&p, &token, &me(&format!("commands/{closing}")), |b| {
        b["status"] == "executed"
    })
    .await;
    let event = &partial["events"][0];
    assert_eq!(event["event_type"], "TRADE_PARTIALLY_CLOSED", "{event}");
    assert_eq!(
        (event["volume"].as_f64(), event["remaining_volume"].as_f64()),
        (Some(0.05), Some(0.05))
    );
    until(&p, &token, &me("positions"), |b| {
        b["positions"][0]["volume"] == 0.05
    })
    .await;

    // The deals, a page at a time: the fill, then the partial close.
    let first = until(
        &p,
        &token,
        &me("activities?type=deal&symbol=EURUSD&limit=1"),
        |b| b["next_cursor"].is_string(),
    )
    .await;
    assert_eq!(
        first["activities"][0]["event_type"], "TRADE_EXECUTED",
        "{first}"
    );
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let (s, second) = p
        .send_text(
            reqwest::Method::GET,
            &me(&format!("activities?type=deal&limit=1&cursor={cursor}")),
            &token,
            "",
        )
        .await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(
        second["activities"][0]["event_type"], "TRADE_PARTIALLY_CLOSED",
        "{second}"
    );
    let (s, body) = p
        .send_text(
            reqwest::Method::GET,
            &me("activities?type=fills"),
            &token,
            "",
        )
        .await;
    assert_eq!((s, body["field"].as_str()), (422, Some("type")), "{body}");

    // Another user's queries are refused; an unknown command is a 404.
    for tail in ["positions", "orders", &format!("commands/{placing}")] {
        let (s, _) = p
            .send_text(
                reqwest::Method::GET,
                &format!("/api/user/{other}/{tail}"),
                &token,
                "",
            )
            .await;
        assert_eq!(s, 403, "{tail}");
    }
    let (s, _) = p
        .send_text(
            reqwest::Method::GET,
            &me("commands/cmd_nothing"),
            &token,
            "",
        )
        .await;
    assert_eq!(s, 404);
    let (s, body) = p
        .send_text(
            reqwest::Method::GET,
            &me("orders?status=closed"),
            &token,
            "",
        )
        .await;
    assert_eq!((s, body["field"].as_str()), (422, Some("status")), "{body}");
    p.stop().await;
}

/// Publishes a `scalping` signal on EURUSD as the signals service would.
async fn signal(bus: &suho_messaging::MarketBus, id: &str, direction: suho_domain::Direction) {
    let signal = suho_domain::Signal {
        signal_id: id.to_string(),
        strategy: "scalping".into(),
        symbol: suho_domain::Symbol::parse("EURUSD").unwrap(),
        direction,
        confidence: 0.8,
        price: rust_decimal::Decimal::new(108_512, 5),
        timestamp: suho_messaging::now_ms(),
        model: "test@1".into(),
    };
    let subject = suho_domain::subject::signal(bus.prefix(), &signal.strategy, signal.symbol);
    bus.publish(subject, &signal).await.unwrap();
    bus.client().flush().await.unwrap();
}

/// The `(side, stop_loss, take_profit, open_price)` of each open position.
fn sides(body: &Value) -> Vec<(String, f64, f64, f64)> {
    body["positions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["side"].as_str().unwrap_or_default().to_string(),
                        p["stop_loss"].as_f64().unwrap_or_default(),
                        p["take_profit"].as_f64().unwrap_or_default(),
                        p["open_price"].as_f64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_agent_exits_what_it_opened_and_never_holds_both_sides() {
    use suho_domain::Direction;
    let p = Running::start().await;
    let (user, token) = p.user("agent-exits@example.com").await;
    let me = |tail: &str| format!("/api/user/{user}/{tail}");
    let (s, body) = p
        .send_text(
            reqwest::Method::PUT,
            &me("settings"),
            &token,
            &json!({"auto_trading": {"scalping": {"enabled": true, "volume": 0.1,
                "stop_loss_pips": 30, "take_profit_pips": 60}}})
            .to_string(),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["auto_trading"]["scalping"]["stop_loss_pips"], 30.0);
    let bus = p.env.bus(suho_security::Identity::Signals).await;

    // The agent follows `user.settings`: signal until it has the opt-in (a signal it saw
    // before then traded nothing, so at most one of these opens).
    let mut opened = false;
    for n in 0..12 {
        signal(&bus, &format!("sig_buy_{n}"), Direction::Buy).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            let (_, b) = p
                .send_text(reqwest::Method::GET, &me("positions"), &token, "")
                .await;
            if !sides(&b).is_empty() {
                opened = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if opened {
            break;
        }
    }
    assert!(opened, "the agent never traded the BUY signals");
    let long = until(&p, &token, &me("positions"), |b| sides(b).len() == 1).await;
    let (side, sl, tp, open) = sides(&long)[0].clone();
    assert_eq!(side, "BUY", "{long}");
    // 30 and 60 pips from the fill (EURUSD: a pip is 0.0001).
    assert!(((open - sl) - 0.0030).abs() < 1e-9, "{long}");
    assert!(((tp - open) - 0.0060).abs() < 1e-9, "{long}");

    // FLAT closes it.
    signal(&bus, "sig_flat", Direction::Flat).await;
    until(&p, &token, &me("positions"), |b| sides(b).is_empty()).await;
    let flat = suho_agent::command_id(&suho_domain::UserId::new(user.clone()), "sig_flat");
    let closed = until(&p, &token, &me(&format!("commands/{flat}")), |b| {
        b["status"] == "executed"
    })
    .await;
    assert_eq!(
        closed["events"][0]["event_type"], "TRADE_CLOSED",
        "{closed}"
    );

    // BUY, then SELL: the SELL closes the long before it opens, so one short remains.
    signal(&bus, "sig_buy_again", Direction::Buy).await;
    until(&p, &token, &me("positions"), |b| {
        sides(b).first().is_some_and(|s| s.0 == "BUY")
    })
    .await;
    signal(&bus, "sig_sell", Direction::Sell).await;
    let short = until(&p, &token, &me("positions"), |b| {
        sides(b).first().is_some_and(|s| s.0 == "SELL")
    })
    .await;
    let held = sides(&short);
    assert_eq!(held.len(), 1, "never two opposing positions: {short}");
    let (_, sl, tp, open) = held[0].clone();
    assert!(((sl - open) - 0.0030).abs() < 1e-9, "{short}");
    assert!(((open - tp) - 0.0060).abs() < 1e-9, "{short}");
    let sell = suho_agent::command_id(&suho_domain::UserId::new(user.clone()), "sig_sell");
    let answer = until(&p, &token, &me(&format!("commands/{sell}")), |b| {
        b["events"].as_array().is_some_and(|e| e.len() >= 2)
    })
    .await;
    let kinds: Vec<&str> = answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(kinds, vec!["TRADE_CLOSED", "TRADE_EXECUTED"], "{answer}");

    // The same signal again changes nothing: once per (user, signal).
    signal(&bus, "sig_sell", Direction::Sell).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, after) = p
        .send_text(reqwest::Method::GET, &me("positions"), &token, "")
        .await;
    assert_eq!(sides(&after), held, "{after}");
    p.stop().await;
}

#[tokio::test]
async fn a_netting_account_holds_one_position_per_symbol() {
    let p = Running::start().await;
    let (user, token) = p.user("netting@example.com").await;
    let me = |tail: &str| format!("/api/user/{user}/{tail}");
    let (s, body) = p
        .send_text(
            reqwest::Method::PUT,
            &me("settings"),
            &token,
            &json!({"risk": {"position_mode": "netting"}}).to_string(),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["risk"]["position_mode"], "netting");
    // The engine follows `user.settings`; the account's status says when it has the mode.
    let (s, body) = p
        .post(&me("deposit"), Some(&token), json!({"amount": 100.0}))
        .await;
    assert_eq!(s, 202, "{body}");
    until(&p, &token, &me("account"), |b| {
        b["position_mode"] == "netting"
    })
    .await;

    let order =
        |side: &str, volume: f64| json!({"symbol": "EURUSD", "type": side, "volume": volume});
    for _ in 0..2 {
        let (s, body) = p
            .post("/api/trade/open", Some(&token), order("BUY", 0.1))
            .await;
        assert_eq!(s, 202, "{body}");
    }
    let merged = until(&p, &token, &me("positions"), |b| {
        b["positions"][0]["volume"] == 0.2
    })
    .await;
    assert_eq!(sides(&merged).len(), 1, "one position: {merged}");
    let (s, body) = p
        .post("/api/trade/open", Some(&token), order("SELL", 0.3))
        .await;
    assert_eq!(s, 202, "{body}");
    let reversing = body["command_id"].as_str().unwrap().to_string();
    let reversed = until(&p, &token, &me("positions"), |b| {
        b["positions"][0]["side"] == "SELL"
    })
    .await;
    assert_eq!(sides(&reversed).len(), 1, "{reversed}");
    let pos = &reversed["positions"][0];
    assert_eq!(pos["volume"], 0.1, "{pos}");
    let answer = until(&p, &token, &me(&format!("commands/{reversing}")), |b| {
        b["status"] == "executed"
    })
    .await;
    let kinds: Vec<&str> = answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(kinds, vec!["TRADE_CLOSED", "TRADE_EXECUTED"], "{answer}");
    assert_eq!(answer["events"][0]["volume"], 0.2, "{answer}");
    p.stop().await;
}
