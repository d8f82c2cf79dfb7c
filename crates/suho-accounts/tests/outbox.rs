//! The outbox against a real PostgreSQL: a change and its event are stored together or not at
//! all, and relay rounds hand events over oldest first, keep what they could not deliver, and
//! run one at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use secrecy::SecretString;
use suho_accounts::{AccountError, Accounts, Keyring, OutboxEvent};
use suho_domain::{UserId, UserSettings};
use suho_testkit::TestEnv;
use tokio::sync::Notify;

async fn accounts_and_user() -> (Accounts, UserId) {
    let env = TestEnv::new().await;
    let a = Accounts::with_pool(
        env.pool(suho_security::Identity::Gateway).await,
        &SecretString::from("k".repeat(32)),
        Duration::from_secs(60),
    )
    .with_keyring(Keyring::new("k1", [("k1".to_string(), Keyring::generate_key())]).unwrap());
    let user = a
        .register(
            "outbox@example.com",
            &SecretString::from("correct horse".to_string()),
            |_| Ok(None),
        )
        .await
        .unwrap()
        .user_id;
    (a, user)
}

fn event(user: &UserId, n: u32) -> OutboxEvent {
    OutboxEvent {
        topic: "user.settings".into(),
        key: user.as_str().into(),
        event_type: "SETTINGS_UPDATED".into(),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

fn numbers(payloads: &[Vec<u8>]) -> Vec<u32> {
    payloads
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            u32::try_from(v["n"].as_u64().unwrap()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_change_and_its_event_are_stored_together_and_relayed_in_order() {
    let (a, user) = accounts_and_user().await;

    // A refused change stores neither the settings nor an event.
    let refused = a
        .update_settings(&user, |_| {
            Err::<(UserSettings, OutboxEvent), _>(AccountError::InvalidField {
                field: "risk.leverage",
                message: "refused by the test",
            })
        })
        .await;
    assert!(refused.is_err());
    assert_eq!(a.outbox_len().await.unwrap(), 0);
    assert_eq!(a.settings(&user).await.unwrap(), UserSettings::default());

    // Three changes, each from the one before, then a link: four events.
    for n in 1..=3 {
        a.update_settings(&user, |mut s| {
            s.risk.leverage += 1;
            Ok::<_, AccountError>((s, event(&user, n)))
        })
        .await
        .unwrap();
    }
    let linked = a
        .link_mt5(
            &user,
            "12345",
            &SecretString::from("mt5 password".to_string()),
            |s| {
                assert_eq!(s.risk.leverage, UserSettings::default().risk.leverage + 3);
                Ok(event(&user, 4))
            },
        )
        .await;
    linked.unwrap();
    assert_eq!(
        a.settings(&user).await.unwrap().risk.leverage,
        UserSettings::default().risk.leverage + 3
    );
    assert_eq!(a.outbox_len().await.unwrap(), 4);

    // A publisher that fails on the third event: two go, the third and fourth stay.
    let mut first = Vec::new();
    let round = a
        .relay_outbox(100, |events| {
            first.extend(events.into_iter().map(|e| e.payload));
            async { (2, Some("kafka is down")) }
        })
        .await
        .unwrap();
    assert_eq!(round.published, 2);
    assert_eq!(round.error, Some("kafka is down"));
    assert!(round.more);
    assert_eq!(a.outbox_len().await.unwrap(), 2);

    // The next round starts at the event that failed.
    let mut second = Vec::new();
    let round = a
        .relay_outbox(100, |events| {
            second.extend(events.into_iter().map(|e| e.payload));
            let n = second.len();
            async move { (n, None::<&str>) }
        })
        .await
        .unwrap();
    assert_eq!((round.published, round.more), (2, false));
    assert_eq!(numbers(&first), [1, 2, 3, 4]);
    assert_eq!(numbers(&second), [3, 4]);
    assert_eq!(a.outbox_len().await.unwrap(), 0);
}

#[tokio::test]
async fn one_relay_round_at_a_time_each_within_its_limit() {
    let (a, user) = accounts_and_user().await;
    for n in 1..=5 {
        a.update_settings(&user, |s| Ok::<_, AccountError>((s, event(&user, n))))
            .await
            .unwrap();
    }

    // A round that is publishing holds the outbox: a second round finds it busy.
    let started = Notify::new();
    let go = AtomicBool::new(false);
    let mut delivered = Vec::new();
    let first = a.relay_outbox(2, |events| {
        delivered.extend(events.into_iter().map(|e| e.payload));
        started.notify_one();
        let n = delivered.len();
        let go = &go;
        async move {
            while !go.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (n, None::<()>)
        }
    });
    let second = async {
        started.notified().await;
        let round = a
            .relay_outbox(100, |events| async move { (events.len(), None::<()>) })
            .await
            .unwrap();
        go.store(true, Ordering::SeqCst);
        round
    };
    let (first, second) = tokio::join!(first, second);
    assert!(second.busy, "{second:?}");
    assert_eq!(second.published, 0);
    let first = first.unwrap();
    assert_eq!((first.published, first.more), (2, true));
    assert_eq!(numbers(&delivered), [1, 2]);
    assert_eq!(a.outbox_len().await.unwrap(), 3);
}

#[tokio::test]
async fn a_registration_and_a_logout_store_their_events_with_them() {
    let (a, _) = accounts_and_user().await;
    let password = SecretString::from("correct horse".to_string());
    // A registration's several events (the gateway's `USER_REGISTERED` and `OPEN_ACCOUNT`)
    // are stored with it, in their order.
    let user = a
        .register("second@example.com", &password, |u| {
            Ok(vec![event(&u.user_id, 1), event(&u.user_id, 2)])
        })
        .await
        .unwrap()
        .user_id;
    // A taken address stores neither a user nor an event.
    let taken = a
        .register("SECOND@example.com", &password, |u| {
            Ok(Some(event(&u.user_id, 9)))
        })
        .await;
    assert!(
        matches!(taken, Err(AccountError::DuplicateEmail)),
        "{taken:?}"
    );
    let (_, token) = a.login("second@example.com", &password).await.unwrap();
    let claims = a
        .authenticate(secrecy::ExposeSecret::expose_secret(&token.token))
        .await
        .unwrap();
    a.logout(&claims, Some(&event(&user, 3))).await.unwrap();
    a.record_event(&event(&user, 4)).await.unwrap();

    let mut relayed = Vec::new();
    a.relay_outbox(100, |events| {
        relayed.extend(events.into_iter().map(|e| e.payload));
        let n = relayed.len();
        async move { (n, None::<()>) }
    })
    .await
    .unwrap();
    assert_eq!(numbers(&relayed), [1, 2, 3, 4]);
}
