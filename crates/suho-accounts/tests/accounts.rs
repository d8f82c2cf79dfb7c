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

#[tokio::test]
async fn refresh_keeps_the_session_and_keys_keep_their_scopes() {
    use suho_accounts::ApiScope;
    let a = accounts(Duration::from_secs(60)).await;
    let user = a
        .register("keys@example.com", &pw("correct horse"), |_| Ok(None))
        .await
        .unwrap();
    let (_, token) = a
        .login("keys@example.com", &pw("correct horse"))
        .await
        .unwrap();
    let claims = a.authenticate(token.token.expose_secret()).await.unwrap();
    assert!(claims.is_session() && claims.allows(ApiScope::Trade));
    let fresh = a.refresh(&claims).unwrap();
    let renewed = a.authenticate(fresh.token.expose_secret()).await.unwrap();
    assert_eq!(renewed.user_id(), user.user_id);
    assert_ne!(renewed.jti, claims.jti);
    assert_eq!(
        renewed.auth_time, claims.auth_time,
        "the session is the same"
    );

    let made = a
        .create_api_key(&user.user_id, "bot", &[ApiScope::Read, ApiScope::Read])
        .await
        .unwrap();
    assert_eq!(made.key.scopes, [ApiScope::Read]);
    let key = made.secret.expose_secret().to_string();
    let by_key = a.authenticate(&key).await.unwrap();
    assert_eq!(by_key.user_id(), user.user_id);
    assert!(!by_key.is_session());
    assert!(by_key.allows(ApiScope::Read) && !by_key.allows(ApiScope::Trade));
    assert!(matches!(
        a.refresh(&by_key),
        Err(AccountError::InvalidToken(_))
    ));
    // A wrong secret with a real id, and a revoked key, are refused.
    let (id_part, _) = key.rsplit_once('_').unwrap();
    assert!(matches!(
        a.authenticate(&format!("{id_part}_wrong")).await,
        Err(AccountError::InvalidToken(_))
    ));
    assert_eq!(a.api_keys(&user.user_id).await.unwrap().len(), 1);
    assert!(a
        .revoke_api_key(&user.user_id, &made.key.key_id)
        .await
        .unwrap());
    assert!(!a
        .revoke_api_key(&user.user_id, &made.key.key_id)
        .await
        .unwrap());
    assert!(matches!(
        a.authenticate(&key).await,
        Err(AccountError::InvalidToken(r)) if r.contains("revoked")
    ));
    assert!(a.api_keys(&user.user_id).await.unwrap().is_empty());
    assert!(matches!(
        a.create_api_key(&user.user_id, "none", &[]).await,
        Err(AccountError::InvalidField {
            field: "scopes",
            ..
        })
    ));
}
