//! A new account shows its opening balance from registration: the gateway queues an
//! `OPEN_ACCOUNT` with the registration, the engine answers `ACCOUNT_OPENED` (on
//! `user.transactions`) and the account's status, so `GET .../account` and
//! `GET .../activities` have them before the user's first order.

use std::time::Duration;

use serde_json::{json, Value};
use suho_domain::UserTopic;

use super::orders::until;
use super::{consume, Running};

#[tokio::test]
async fn a_new_account_shows_its_opening_balance_from_registration() {
    let p = Running::start().await;
    let (user, token) = p.user("opening@example.com").await;
    let me = |tail: &str| format!("/api/user/{user}/{tail}");

    // No trade, no deposit: the account is there with its opening balance.
    let account = until(&p, &token, &me("account"), |b| b["balance"] == 10000.0).await;
    assert_eq!(account["user_id"], user.as_str(), "{account}");
    assert_eq!(account["equity"], 10000.0, "{account}");
    assert_eq!(account["open_positions"], 0, "{account}");
    assert_eq!(account["currency"], "USD", "{account}");

    // The opening is an activity, under `deposit`.
    let opened = |b: &Value| {
        b["activities"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["event_type"] == "ACCOUNT_OPENED"))
    };
    let all = until(&p, &token, &me("activities"), opened).await;
    let activities = all["activities"].as_array().unwrap();
    assert_eq!(activities.len(), 1, "{all}");
    let event = &activities[0];
    assert_eq!(
        (
            &event["amount"],
            &event["balance_after"],
            &event["currency"]
        ),
        (&json!(10000.0), &json!(10000.0), &json!("USD")),
        "{event}"
    );
    let deposits = until(&p, &token, &me("activities?type=deposit"), opened).await;
    assert_eq!(deposits["activities"], all["activities"]);
    let (s, body) = p
        .send_text(
            reqwest::Method::GET,
            &me("activities?type=withdrawal,deal"),
            &token,
            "",
        )
        .await;
    assert_eq!((s, &body["activities"]), (200, &json!([])), "{body}");

    // It answers the registration's command, which shows executed.
    let command = event["reference"].as_str().expect("the command's id");
    assert!(command.starts_with("cmd_"), "{event}");
    let answer = until(&p, &token, &me(&format!("commands/{command}")), |b| {
        b["status"] == "executed"
    })
    .await;
    assert_eq!(
        answer["events"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    assert_eq!(answer["events"][0]["event_id"], format!("opn_{command}"));

    // One OPEN_ACCOUNT keyed by the user, answered once.
    let commands = consume(&p.env, UserTopic::Commands, Duration::from_secs(10), |s| {
        !s.is_empty()
    })
    .await;
    let kinds: Vec<(&str, &str, &str)> = commands
        .iter()
        .map(|(k, _, v)| {
            (
                k.as_str(),
                v["event_type"].as_str().unwrap_or_default(),
                v["event_id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(kinds, [(user.as_str(), "OPEN_ACCOUNT", command)]);

    // Money moves from the opening balance, which is not counted twice.
    let (s, body) = p
        .post(&me("deposit"), Some(&token), json!({"amount": 250.5}))
        .await;
    assert_eq!(s, 202, "{body}");
    until(&p, &token, &me("account"), |b| b["balance"] == 10250.5).await;
    let txs = consume(
        &p.env,
        UserTopic::Transactions,
        Duration::from_secs(10),
        |s| s.len() >= 2,
    )
    .await;
    let types: Vec<&str> = txs
        .iter()
        .map(|(_, _, v)| v["event_type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(types, ["ACCOUNT_OPENED", "DEPOSIT"], "{txs:?}");
    p.stop().await;
}
