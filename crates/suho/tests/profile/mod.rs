//! The caller's profile over HTTP on the real servers: settings read, patched (errors name the
//! field) and published on `user.settings`; an MT5 account linked with its password sealed in
//! PostgreSQL and absent from the event; another user's profile refused with 403; a repeated
//! `client_order_id` answered with the first command and queuing nothing; close and modify
//! queued on `user.commands`.

use std::time::Duration;

use serde_json::{json, Value};
use suho_domain::UserTopic;

use super::{consume, sqlx_pool, Running};

impl Running {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.send_text(method, path, token, &body).await
    }
}

#[tokio::test]
async fn settings_and_mt5_links_are_the_callers_own_and_published_without_secrets() {
    use reqwest::Method;
    let p = Running::start().await;
    let (alice, token) = p.user("carol@example.com").await;
    let (bob, bob_token) = p.user("dave@example.com").await;
    let path = format!("/api/user/{alice}/settings");

    let (status, defaults) = p.send(Method::GET, &path, &token, None).await;
    assert_eq!(status, 200, "{defaults}");
    assert_eq!(defaults["risk"]["leverage"], 100);

    let patch = json!({"risk": {"leverage": 50, "max_volume": 2.5},
                       "watchlist": ["EURUSD", "USDJPY"],
                       "auto_trading": {"scalping": {"enabled": true, "volume": 0.1}}});
    let (status, updated) = p.send(Method::PUT, &path, &token, Some(patch)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["risk"]["leverage"], 50);
    assert_eq!(
        updated["risk"]["max_open_positions"], 20,
        "untouched field kept"
    );
    let (_, read) = p.send(Method::GET, &path, &token, None).await;
    assert_eq!(read, updated, "stored");

    for (bad, field) in [
        (json!({"risk": {"leverage": 0}}), "risk.leverage"),
        (json!({"watchlist": ["XXXYYY"]}), "watchlist"),
        (
            json!({"auto_trading": {"nope": {"enabled": true}}}),
            "auto_trading.nope",
        ),
    ] {
        let (status, body) = p.send(Method::PUT, &path, &token, Some(bad)).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["field"], field, "{body}");
    }
    // Someone else's settings: 403, for reading and writing.
    let (status, _) = p.send(Method::GET, &path, &bob_token, None).await;
    assert_eq!(status, 403);
    let (status, _) = p
        .send(
            Method::PUT,
            &path,
            &bob_token,
            Some(json!({"watchlist": []})),
        )
        .await;
    assert_eq!(status, 403);

    let link = format!("/api/user/{alice}/mt5/link");
    let secret = "Mt5-S3cret-Pa55";
    let (status, body) = p
        .send(
            Method::POST,
            &link,
            &token,
            Some(json!({"mt5_account": "5001234", "password": secret})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "linked", "mt5_account": "5001234"}));
    let (status, body) = p
        .send(
            Method::POST,
            &link,
            &token,
            Some(json!({"mt5_account": "5001234"})),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("password")));
    let (status, _) = p
        .send(
            Method::POST,
            &format!("/api/user/{bob}/mt5/link"),
            &token,
            Some(json!({"mt5_account": "1", "password": "x"})),
        )
        .await;
    assert_eq!(status, 403);

    // Sealed at rest: the row holds no clear password, and it opens to the original.
    let pool = sqlx_pool(&p.env).await;
    let (key_id, ciphertext): (String, Vec<u8>) = sqlx::query_as(
        "SELECT key_id, ciphertext FROM mt5_accounts WHERE user_id = $1 AND mt5_account = '5001234'",
    )
    .bind(&alice)
    .fetch_one(&pool)
    .await
    .expect("the link is stored");
    assert_eq!(key_id, "local-1");
    assert!(!ciphertext.windows(6).any(|w| w == b"S3cret"));

    // The events: the settings object and the account number, never the password.
    let events = consume(&p.env, UserTopic::Settings, Duration::from_secs(20), |s| {
        s.len() >= 2
    })
    .await;
    let types: Vec<&str> = events
        .iter()
        .map(|(_, _, v)| v["event_type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(types, ["SETTINGS_UPDATED", "MT5_ACCOUNT_LINKED"]);
    for (key, _, v) in &events {
        assert_eq!(key, &alice);
        assert!(!v.to_string().contains(secret), "{v}");
    }
    assert_eq!(events[0].2["settings"]["risk"]["leverage"], 50);
    assert_eq!(events[1].2["mt5_account"], "5001234");
    // The link carries the settings too: the compacted topic keeps only a user's latest record.
    assert_eq!(events[1].2["settings"]["risk"]["leverage"], 50);
    p.stop().await;
}

#[tokio::test]
async fn a_repeated_client_order_id_returns_the_first_command_and_close_modify_queue() {
    let p = Running::start().await;
    let (user, token) = p.user("erin@example.com").await;
    let order =
        json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1, "client_order_id": "abc-1"});
    let (s1, first) = p.post("/api/trade/open", Some(&token), order.clone()).await;
    let (s2, again) = p.post("/api/trade/open", Some(&token), order).await;
    assert_eq!((s1, s2), (202, 202), "{first} {again}");
    assert_eq!(
        first["command_id"], again["command_id"],
        "the first command_id"
    );
    // Another user may use the same client_order_id.
    let (_, other_token) = p.user("frank@example.com").await;
    let (_, other) = p
        .post(
            "/api/trade/open",
            Some(&other_token),
            json!({"symbol": "EURUSD", "type": "SELL", "volume": 0.1, "client_order_id": "abc-1"}),
        )
        .await;
    assert_ne!(other["command_id"], first["command_id"]);

    let (s, close) = p
        .post(
            "/api/trade/close",
            Some(&token),
            json!({"trade_id": "trd_x"}),
        )
        .await;
    assert_eq!(s, 202, "{close}");
    let (s, modify) = p
        .post(
            "/api/trade/modify",
            Some(&token),
            json!({"trade_id": "trd_x", "stop_loss": 1.05}),
        )
        .await;
    assert_eq!(s, 202, "{modify}");
    let (s, bad) = p
        .post(
            "/api/trade/modify",
            Some(&token),
            json!({"trade_id": "trd_x"}),
        )
        .await;
    assert_eq!(
        (s, bad["field"].as_str()),
        (422, Some("stop_loss")),
        "{bad}"
    );
    let (s, bad) = p.post("/api/trade/close", Some(&token), json!({})).await;
    assert_eq!((s, bad["field"].as_str()), (422, Some("trade_id")), "{bad}");

    // user.commands holds this user's three commands once each, after the registration's
    // OPEN_ACCOUNT: one user's records keep their order in one partition, so a queued repeat
    // would sit between OPEN and CLOSE.
    let commands = consume(&p.env, UserTopic::Commands, Duration::from_secs(20), |s| {
        s.iter().filter(|(k, _, _)| k == &user).count() >= 4
    })
    .await;
    let mine: Vec<&Value> = commands
        .iter()
        .filter(|(k, _, _)| k == &user)
        .map(|(_, _, v)| v)
        .collect();
    let types: Vec<&str> = mine
        .iter()
        .map(|v| v["event_type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        types,
        ["OPEN_ACCOUNT", "OPEN_TRADE", "CLOSE_TRADE", "MODIFY_TRADE"],
        "{mine:?}"
    );
    assert_eq!(mine[1]["event_id"], first["command_id"]);
    assert_eq!(mine[1]["client_order_id"], "abc-1");
    assert_eq!(mine[2]["trade_id"], "trd_x");
    assert_eq!(mine[3]["stop_loss"], 1.05);
    p.stop().await;
}

#[tokio::test]
async fn the_compliance_query_returns_the_callers_own_trade_events() {
    use reqwest::Method;
    let p = Running::start().await;
    let (user, token) = p.user("ivan@example.com").await;
    let (other, other_token) = p.user("judy@example.com").await;
    let since = suho_messaging::now_ms();
    for t in [&token, &other_token] {
        let (s, body) = p
            .post(
                "/api/trade/open",
                Some(t),
                json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1}),
            )
            .await;
        assert_eq!(s, 202, "{body}");
    }
    let path = format!("/api/user/{user}/trades?from={since}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let events = loop {
        let (status, body) = p.send(Method::GET, &path, &token, None).await;
        assert_eq!(status, 200, "{body}");
        if body.as_array().is_some_and(|a| !a.is_empty()) {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no trade event audited within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let events = events.as_array().unwrap();
    assert!(
        events.iter().all(|e| e["user_id"] == user.as_str()),
        "{events:?}"
    );
    assert_eq!(events[0]["event_type"], "TRADE_EXECUTED");
    // Another user's history is not the caller's to read; bad parameters name the field.
    let (status, _) = p
        .send(
            Method::GET,
            &format!("/api/user/{other}/trades"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = p
        .send(
            Method::GET,
            &format!("/api/user/{user}/trades?from=x"),
            &token,
            None,
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("from")),
        "{body}"
    );
    p.stop().await;
}
