//! Accounts against a real PostgreSQL (a database of its own per test).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use suho_accounts::{AccountError, Accounts};
use suho_testkit::TestEnv;

async fn accounts(ttl: Duration) -> Accounts {
    let env = TestEnv::new().await;
    Accounts::with_pool(
        env.pool(suho_security::Identity::Gateway).await,
        &SecretString::from("k".repeat(32)),
        ttl,
    )
}

fn pw(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

#[tokio::test]
async fn register_login_authenticate_logout() {
    let a = accounts(Duration::from_secs(60)).await;
    let user = a
        .register("Trader@Example.com", &pw("correct horse"), |_| Ok(None))
        .await
        .unwrap();
    assert!(user.user_id.as_str().starts_with("usr_"));
    assert!(matches!(
        a.register("trader@example.com", &pw("another one"), |_| Ok(None))
            .await,
        Err(AccountError::DuplicateEmail)
    ));
    match a.login("trader@example.com", &pw("wrong password")).await {
        Err(AccountError::InvalidCredentials { user_id }) => {
            assert_eq!(user_id, Some(user.user_id.clone()))
        }
        other => panic!("{:?}", other.map(|(u, _)| u)),
    }
    assert!(matches!(
        a.login("nobody@example.com", &pw("whatever1")).await,
        Err(AccountError::InvalidCredentials { user_id: None })
    ));
    let (u, token) = a
        .login("TRADER@example.com", &pw("correct horse"))
        .await
        .unwrap();
    assert_eq!(u.user_id, user.user_id);
    let claims = a.authenticate(token.token.expose_secret()).await.unwrap();
    assert_eq!(claims.user_id(), user.user_id);
    a.logout(&claims, None).await.unwrap();
    assert!(matches!(
        a.authenticate(token.token.expose_secret()).await,
        Err(AccountError::InvalidToken(r)) if r == "logged out"
    ));
}

#[tokio::test]
async fn expired_and_forged_tokens_are_refused() {
    let a = accounts(Duration::from_secs(1)).await;
    a.register("x@example.com", &pw("password1"), |_| Ok(None))
        .await
        .unwrap();
    let (_, token) = a.login("x@example.com", &pw("password1")).await.unwrap();
    let t = token.token.expose_secret().to_string();
    assert!(a.authenticate(&t).await.is_ok());
    let mut forged = t.clone();
    forged.pop();
    forged.push(if t.ends_with('A') { 'B' } else { 'A' });
    assert!(matches!(
        a.authenticate(&forged).await,
        Err(AccountError::InvalidToken(_))
    ));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        matches!(a.authenticate(&t).await, Err(AccountError::InvalidToken(r)) if r == "expired")
    );
}
