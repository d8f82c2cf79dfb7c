//! No password, token or MT5 credential in any log line or Kafka event: the platform runs
//! on the real servers with every suho log line captured (at debug level), a user registers,
//! fails a login, logs in, links an MT5 account, changes settings, trades and logs out; then
//! the captured logs and every record of every user topic are searched for each secret, the
//! services' broker passwords and the CA's and servers' private keys among them.
//!
//! Its own test binary, so the capturing subscriber is the process's only one.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use suho_domain::UserTopic;
use suho_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

/// Every formatted log line, kept for the scan.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut req = http.post(format!("{base}{path}")).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every record of every user topic under the test's prefix, as text.
async fn all_records(env: &TestEnv) -> Vec<String> {
    let consumer: StreamConsumer =
        suho_messaging::kafka::base_config(&env.kafka(suho_security::Identity::Operator))
            .set("group.id", format!("{}secrets-scan", env.prefix))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .create()
            .expect("consumer");
    let names: Vec<String> = UserTopic::ALL
        .iter()
        .map(|t| t.full_name(&env.config.kafka.topic_prefix))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).expect("subscribe");
    let mut out = Vec::new();
    let mut stream = consumer.stream();
    // Until the topics have been quiet for 5 s, or 25 s in all (account statuses keep coming
    // every few seconds). The first record may take longer: the group has to be joined first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    let mut quiet = Duration::from_secs(30);
    while let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, stream.next()).await {
        quiet = Duration::from_secs(5);
        if tokio::time::Instant::now() > deadline {
            break;
        }
        let mut text = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        text.push(' ');
        text.push_str(&String::from_utf8_lossy(m.payload().unwrap_or_default()));
        if let Some(h) = m.headers() {
            use rdkafka::message::Headers;
            for header in h.iter() {
                text.push(' ');
                text.push_str(&String::from_utf8_lossy(header.value.unwrap_or_default()));
            }
        }
        out.push(text);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_or_a_kafka_record() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("info,suho=debug,suho_gateway=debug,suho_accounts=debug,suho_trading=debug,suho_messaging=debug,suho_audit=debug,tower_http=debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init()
        .expect("the only subscriber of this test binary");

    let env = TestEnv::new().await;
    let app = suho::Application::build(env.config.clone())
        .await
        .expect("the platform builds");
    let base = format!("http://{}", app.http_addr());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run(shutdown.clone()));
    let http = reqwest::Client::new();

    let password = "Sup3r-Secret-Login-Pw";
    let wrong_password = "Wr0ng-Guess-Pw-123";
    let mt5_password = "Mt5-Br0ker-Pw-777";
    let creds = json!({"email": "sec@example.com", "password": password});
    let (s, body) = post(&http, &base, "/api/auth/register", None, creds.clone()).await;
    assert_eq!(s, 201, "{body}");
    let (s, _) = post(
        &http,
        &base,
        "/api/auth/login",
        None,
        json!({"email": "sec@example.com", "password": wrong_password}),
    )
    .await;
    assert_eq!(s, 401);
    let (s, body) = post(&http, &base, "/api/auth/login", None, creds).await;
    assert_eq!(s, 200, "{body}");
    let token = body["access_token"].as_str().expect("token").to_string();
    let user = body["user_id"].as_str().expect("user").to_string();
    let (s, body) = post(
        &http,
        &base,
        &format!("/api/user/{user}/mt5/link"),
        Some(&token),
        json!({"mt5_account": "7001", "password": mt5_password}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let resp = http
        .put(format!("{base}/api/user/{user}/settings"))
        .bearer_auth(&token)
        .json(&json!({"risk": {"leverage": 30}}))
        .send()
        .await
        .expect("settings");
    assert_eq!(resp.status().as_u16(), 200);
    let (s, body) = post(
        &http,
        &base,
        "/api/trade/open",
        Some(&token),
        json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    // An API key, made and then used for a trade, and a refreshed token.
    let (s, body) = post(
        &http,
        &base,
        &format!("/api/user/{user}/api-keys"),
        Some(&token),
        json!({"name": "bot", "scopes": ["trade"]}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let api_key = body["key"].as_str().expect("the key").to_string();
    let (s, body) = post(
        &http,
        &base,
        "/api/trade/open",
        Some(&api_key),
        json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.1}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let (s, body) = post(&http, &base, "/api/auth/refresh", Some(&token), json!({})).await;
    assert_eq!(s, 200, "{body}");
    let refreshed = body["access_token"].as_str().expect("a token").to_string();
    // A bad token is refused (and must not be logged either).
    let forged = format!("{token}x");
    let (s, _) = post(&http, &base, "/api/trade/open", Some(&forged), json!({})).await;
    assert_eq!(s, 401);
    let (s, _) = post(&http, &base, "/api/auth/logout", Some(&token), json!({})).await;
    assert_eq!(s, 204);

    let records = all_records(&env).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;

    let jwt_key = suho::jwt_secret(&env.config).expect("jwt key");
    let credentials_key =
        std::fs::read_to_string(env.config.stack.dir.join("secrets").join("credentials.key"))
            .unwrap_or_default();
    let mut secrets = vec![
        ("the login password", password.to_string()),
        ("a wrong password", wrong_password.to_string()),
        ("the MT5 password", mt5_password.to_string()),
        ("the access token", token.clone()),
        ("the refreshed token", refreshed.clone()),
        ("the API key", api_key.clone()),
        (
            "the API key's secret part",
            api_key.rsplit('_').next().unwrap_or_default().to_string(),
        ),
        (
            "the token's signature",
            token.rsplit('.').next().unwrap_or_default().to_string(),
        ),
        ("the JWT key", jwt_key.expose_secret().to_string()),
        ("the credentials key", credentials_key.trim().to_string()),
    ];
    // Every service's broker password, and the private keys of the CA and the servers.
    let stack_secrets = suho_security::Secrets::at(env.config.secrets_dir());
    for identity in suho_security::Identity::ALL {
        let password = stack_secrets
            .password(identity)
            .expect("a service password");
        secrets.push(("a service's password", password.expose_secret().to_string()));
    }
    // The servers' own principals: Kafka's broker and admin, PostgreSQL's superuser and owner.
    for principal in suho_security::ServerPrincipal::ALL {
        let password = stack_secrets
            .server_password(principal)
            .expect("a server principal's password");
        secrets.push((
            "a server principal's password",
            password.expose_secret().to_string(),
        ));
    }
    for key in [stack_secrets.ca_key_file(), stack_secrets.server_key_file()] {
        let pem = std::fs::read_to_string(&key).expect("a private key");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        secrets.push(("a private key", body));
    }
    let logs = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(logs.lines().count() > 20, "logs were captured:\n{logs}");
    assert!(records.len() >= 5, "records were read: {records:?}");
    assert!(
        records.iter().any(|r| r.contains("MT5_ACCOUNT_LINKED")),
        "{records:?}"
    );
    for (what, secret) in &secrets {
        if secret.len() < 8 {
            continue;
        }
        for line in logs.lines() {
            assert!(
                !line.contains(secret.as_str()),
                "{what} in a log line: {line}"
            );
        }
        for record in &records {
            assert!(
                !record.contains(secret.as_str()),
                "{what} in a Kafka record: {record}"
            );
        }
    }
    println!(
        "scanned {} log lines and {} Kafka records for {} secrets",
        logs.lines().count(),
        records.len(),
        secrets.len()
    );
}
