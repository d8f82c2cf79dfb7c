//! Every kind of invalid request, endpoint by endpoint: a `400` (malformed JSON) or a `422`
//! whose `field` names the culprit and whose message starts with it, and nothing queued; or,
//! for a request only the engine can judge (limits, margin, positions, stops against the
//! market), `202` and then a `TRADE_REJECTED` with a reason.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use suho_domain::UserTopic;

use super::{consume, read_to_end, Running};

#[tokio::test]
async fn every_invalid_request_names_its_field_or_is_rejected_with_a_reason() {
    let p = Running::start().await;
    let (user, token) = p.user("invalid@example.com").await;
    let (other, _) = p.user("other@example.com").await;
    let me = |tail: &str| format!("/api/user/{user}/{tail}");
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;

    // (method, path, body, field): each must be a 422 naming `field`.
    let invalid: Vec<(reqwest::Method, String, Value, &str)> = vec![
        (
            post.clone(),
            "/api/auth/register".into(),
            json!({}),
            "email",
        ),
        (
            post.clone(),
            "/api/auth/register".into(),
            json!({"email": "not-an-address", "password": "correct horse battery"}),
            "email",
        ),
        (
            post.clone(),
            "/api/auth/register".into(),
            json!({"email": 7, "password": "correct horse battery"}),
            "email",
        ),
        (
            post.clone(),
            "/api/auth/register".into(),
            json!({"email": "new@example.com"}),
            "password",
        ),
        (
            post.clone(),
            "/api/auth/register".into(),
            json!({"email": "new@example.com", "password": 12_345_678}),
            "password",
        ),
        (
            post.clone(),
            "/api/auth/login".into(),
            json!({"password": "correct horse battery"}),
            "email",
        ),
        (
            post.clone(),
            "/api/auth/login".into(),
            json!({"email": "invalid@example.com"}),
            "password",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"type": "BUY", "volume": 0.1}),
            "symbol",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": 5, "type": "BUY", "volume": 0.1}),
            "symbol",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "volume": 0.1}),
            "type",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 1e9}),
            "volume",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "stop_loss": -1}),
            "stop_loss",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "take_profit": "high"}),
            "take_profit",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "SELL", "volume": 0.1, "stop_loss": 1.0, "take_profit": 1.2}),
            "stop_loss",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "client_order_id": 5}),
            "client_order_id",
        ),
        (
            post.clone(),
            "/api/trade/close".into(),
            json!({}),
            "trade_id",
        ),
        (
            post.clone(),
            "/api/trade/close".into(),
            json!({"trade_id": ""}),
            "trade_id",
        ),
        (
            post.clone(),
            "/api/trade/close".into(),
            json!({"trade_id": 5}),
            "trade_id",
        ),
        (
            post.clone(),
            "/api/trade/modify".into(),
            json!({"stop_loss": 1.0}),
            "trade_id",
        ),
        (
            post.clone(),
            "/api/trade/modify".into(),
            json!({"trade_id": "trd_x"}),
            "stop_loss",
        ),
        (
            post.clone(),
            "/api/trade/modify".into(),
            json!({"trade_id": "trd_x", "stop_loss": 0}),
            "stop_loss",
        ),
        (
            post.clone(),
            "/api/trade/modify".into(),
            json!({"trade_id": "trd_x", "take_profit": "x"}),
            "take_profit",
        ),
        (post.clone(), me("deposit"), json!({}), "amount"),
        (post.clone(), me("deposit"), json!({"amount": 0}), "amount"),
        (post.clone(), me("deposit"), json!({"amount": -5}), "amount"),
        (
            post.clone(),
            me("deposit"),
            json!({"amount": 1.001}),
            "amount",
        ),
        (
            post.clone(),
            me("deposit"),
            json!({"amount": 2e9}),
            "amount",
        ),
        (
            post.clone(),
            me("deposit"),
            json!({"amount": "a lot"}),
            "amount",
        ),
        (
            post.clone(),
            me("withdraw"),
            json!({"amount": 0.001}),
            "amount",
        ),
        (
            post.clone(),
            me("mt5/link"),
            json!({"password": "x"}),
            "mt5_account",
        ),
        (
            post.clone(),
            me("mt5/link"),
            json!({"mt5_account": "5012345"}),
            "password",
        ),
        (
            put.clone(),
            me("settings"),
            json!({"risk": {"leverage": 0}}),
            "risk.leverage",
        ),
        (
            put.clone(),
            me("settings"),
            json!({"risk": {"leverage": 501}}),
            "risk.leverage",
        ),
        (
            put.clone(),
            me("settings"),
            json!({"risk": {"max_volume": 0.015}}),
            "risk.max_volume",
        ),
        (
            put.clone(),
            me("settings"),
            json!({"risk": {"max_open_positions": 0}}),
            "risk.max_open_positions",
        ),
        (
            put.clone(),
            me("settings"),
            json!({"auto_trading": {"no_such_strategy": {"enabled": true, "volume": 0.1}}}),
            "auto_trading.no_such_strategy",
        ),
        // The new order fields, each on its own.
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "order_type": "ICEBERG"}),
            "order_type",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "time_in_force": "gtc"}),
            "time_in_force",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "expires_at": "tomorrow"}),
            "expires_at",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "limit_price": -1}),
            "limit_price",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "trailing_stop_pips": 0.05}),
            "trailing_stop_pips",
        ),
        (
            post.clone(),
            "/api/trade/cancel".into(),
            json!({}),
            "order_id",
        ),
        (
            post.clone(),
            "/api/trade/replace".into(),
            json!({"order_id": "ord_x"}),
            "order_id",
        ),
        (
            post.clone(),
            "/api/trade/replace".into(),
            json!({"order_id": "ord_x", "volume": 0.015}),
            "volume",
        ),
        // What the OpenAPI document forbids is refused: unknown fields (even `null`), numbers
        // as strings, a side in lower case, text around a symbol or an address, control
        // characters in stored text, off-step prices.
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "leverage": 50}),
            "leverage",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": "0.1"}),
            "volume",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "buy", "volume": 0.1}),
            "type",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": " EURUSD", "type": "BUY", "volume": 0.1}),
            "symbol",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "stop_loss": 1.085_001}),
            "stop_loss",
        ),
        (
            post.clone(),
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "client_order_id": "a\u{0}b"}),
            "client_order_id",
        ),
        (
            post.clone(),
            "/api/trade/close".into(),
            json!({"trade_id": "trd_x", "volume": 0.015}),
            "volume",
        ),
        (
            post.clone(),
            "/api/trade/modify".into(),
            json!({"trade_id": "trd_x", "stop_loss": null, "take_profit": null}),
            "stop_loss",
        ),
        (
            post.clone(),
            me("deposit"),
            json!({"amount": 5, "note": "x"}),
            "note",
        ),
        (
            post.clone(),
            me("mt5/link"),
            json!({"mt5_account": " 5012345", "password": "x"}),
            "mt5_account",
        ),
        (
            post.clone(),
            "/api/auth/register".into(),
            json!({"email": " new@example.com", "password": "correct horse battery"}),
            "email",
        ),
        (
            post.clone(),
            "/api/auth/register".into(),
            json!({"email": "new@example.com", "password": "correct horse battery", "admin": true}),
            "admin",
        ),
        (put.clone(), me("settings"), json!({"": null}), ""),
        (
            put.clone(),
            me("settings"),
            json!({"risk": {"margin_call": null}}),
            "risk.margin_call",
        ),
        (
            put.clone(),
            me("settings"),
            json!({"watchlist": ["EURUSD "]}),
            "watchlist",
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body, field) in &invalid {
        let (status, answer) = p
            .send_text(method.clone(), path, &token, &body.to_string())
            .await;
        let named = answer["field"].as_str().unwrap_or_default();
        let message = answer["message"].as_str().unwrap_or_default();
        if status != 422 || !named.starts_with(field) || !message.starts_with(named) {
            failures.push(format!(
                "{method} {path} {body} -> {status} {answer} (wanted 422 naming {field})"
            ));
        }
    }
    // Malformed JSON is a 400 on every endpoint with a body.
    for (method, path) in [
        (&post, "/api/auth/register".to_string()),
        (&post, "/api/auth/login".to_string()),
        (&post, "/api/trade/open".to_string()),
        (&post, "/api/trade/close".to_string()),
        (&post, "/api/trade/modify".to_string()),
        (&post, me("deposit")),
        (&post, me("withdraw")),
        (&post, me("mt5/link")),
        (&put, me("settings")),
    ] {
        for body in ["{\"symbol\": ", "[1, 2]"] {
            let (status, answer) = p.send_text(method.clone(), &path, &token, body).await;
            if status != 400 || answer["error"] != "malformed_json" {
                failures.push(format!(
                    "{method} {path} {body} -> {status} {answer} (wanted 400)"
                ));
            }
        }
    }
    // Someone else's resources.
    for (method, tail) in [(&put, "settings"), (&post, "deposit"), (&post, "mt5/link")] {
        let path = format!("/api/user/{other}/{tail}");
        let (status, answer) = p.send_text(method.clone(), &path, &token, "{}").await;
        if status != 403 {
            failures.push(format!("{method} {path} -> {status} {answer} (wanted 403)"));
        }
    }
    // A volume valid on its own above the user's own `risk.max_volume`: a conflict with the
    // stored settings (409), named in the message; nothing stored.
    let (status, answer) = p
        .send_text(
            put.clone(),
            &me("settings"),
            &token,
            &json!({"auto_trading": {"scalping": {"enabled": true, "volume": 50}}}).to_string(),
        )
        .await;
    if status != 409
        || !answer["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("auto_trading.scalping.volume")
    {
        failures.push(format!(
            "an auto-trading volume over risk.max_volume -> {status} {answer} (wanted 409)"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Valid requests only the engine can judge: each queued, then rejected with a reason.
    let judged: Vec<(&str, String, Value, &str)> = vec![
        (
            "over the default maximum volume",
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 11}),
            "above the maximum of 10",
        ),
        (
            "not enough margin",
            "/api/trade/open".into(),
            json!({"symbol": "GBPUSD", "type": "BUY", "volume": 9}),
            "not enough free margin",
        ),
        (
            "stop loss above a BUY's price",
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "stop_loss": 5}),
            "stop loss",
        ),
        (
            "take profit above a SELL's price",
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "SELL", "volume": 0.1, "take_profit": 5}),
            "take profit",
        ),
        (
            "close of no position",
            "/api/trade/close".into(),
            json!({"trade_id": "trd_nothing"}),
            "is not open",
        ),
        (
            "a LIMIT without its price",
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "order_type": "LIMIT"}),
            "missing `limit_price`",
        ),
        (
            "a BUY LIMIT above the market",
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "order_type": "LIMIT", "limit_price": 50}),
            "limit_price 50 must be below the ask",
        ),
        (
            "a market order good till a date",
            "/api/trade/open".into(),
            json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "time_in_force": "GTD", "expires_at": 1}),
            "`time_in_force` GTD does not fit a MARKET order",
        ),
        (
            "cancel of no order",
            "/api/trade/cancel".into(),
            json!({"order_id": "ord_nothing"}),
            "order ord_nothing is not pending",
        ),
        (
            "replace of no order",
            "/api/trade/replace".into(),
            json!({"order_id": "ord_nothing", "limit_price": 1.0}),
            "order ord_nothing is not pending",
        ),
        (
            "modify of no position",
            "/api/trade/modify".into(),
            json!({"trade_id": "trd_nothing", "stop_loss": 1.0}),
            "is not open",
        ),
        (
            "withdrawal beyond the free margin",
            me("withdraw"),
            json!({"amount": 1_000_000}),
            "cannot withdraw",
        ),
    ];
    let mut queued = HashMap::new();
    for (what, path, body, reason) in &judged {
        let (status, answer) = p
            .send_text(post.clone(), path, &token, &body.to_string())
            .await;
        assert_eq!(status, 202, "{what}: {body} -> {answer}");
        queued.insert(
            answer["command_id"].as_str().unwrap().to_owned(),
            (*what, *reason),
        );
    }
    let answers = consume(&p.env, UserTopic::Trades, Duration::from_secs(60), |s| {
        s.iter()
            .filter(|(_, _, v)| {
                v["command_id"]
                    .as_str()
                    .is_some_and(|c| queued.contains_key(c))
            })
            .count()
            >= queued.len()
    })
    .await;
    for (command, (what, reason)) in &queued {
        let event = answers
            .iter()
            .find(|(_, _, v)| v["command_id"] == command.as_str())
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(event["event_type"], "TRADE_REJECTED", "{what}: {event}");
        assert_eq!(event["status"], "REJECTED", "{what}: {event}");
        let text = event["reason"].as_str().unwrap_or_default();
        assert!(
            text.contains(reason),
            "{what}: reason {text:?} lacks {reason:?}"
        );
    }

    // A field a route does not know is a 422 naming it, on every route of the document: an
    // unknown body field where the route takes a body, an unknown query parameter on all.
    let (status, doc) = p
        .send_text(reqwest::Method::GET, "/api/openapi.json", &token, "")
        .await;
    assert_eq!(status, 200, "{doc}");
    let mut walked = 0;
    let mut failures = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        let path = template
            .replace("{user_id}", &user)
            .replace("{symbol}", "EURUSD")
            .replace("{key_id}", "key_none")
            .replace("{command_id}", "cmd_none")
            .replace("{order_id}", "ord_none");
        assert!(
            !path.contains('{'),
            "a path parameter this test does not fill: {template}"
        );
        for (method, op) in item.as_object().expect("operations") {
            let Ok(method) = method.to_uppercase().parse::<reqwest::Method>() else {
                continue;
            };
            let mut tries = vec![(format!("{path}?zz_unknown=1"), String::new())];
            if op["requestBody"]["content"]["application/json"].is_object() {
                tries.push((path.clone(), json!({"zz_unknown": true}).to_string()));
            }
            for (target, body) in tries {
                let (status, answer) = p.send_text(method.clone(), &target, &token, &body).await;
                walked += 1;
                let named = answer["field"].as_str().unwrap_or_default();
                if status != 422 || named != "zz_unknown" {
                    failures.push(format!(
                        "{method} {target} {body} -> {status} {answer} (wanted 422 naming zz_unknown)"
                    ));
                }
            }
        }
    }
    assert!(
        walked > 20,
        "only {walked} requests: is the document served?"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing was queued for the 4xx requests: the only commands are the registration's
    // OPEN_ACCOUNT and the judged ones.
    let commands = read_to_end(&p.env, UserTopic::Commands).await;
    let mine: Vec<&Value> = commands
        .iter()
        .filter(|(k, _, _)| k == &user)
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(mine.len(), judged.len() + 1, "{mine:?}");
    assert_eq!(mine[0]["event_type"], "OPEN_ACCOUNT", "{mine:?}");
    assert!(
        mine[1..].iter().all(|v| v["event_id"]
            .as_str()
            .is_some_and(|id| queued.contains_key(id))),
        "{mine:?}"
    );
    p.stop().await;
}
