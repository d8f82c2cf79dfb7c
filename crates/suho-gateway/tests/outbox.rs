//! The outbox on real servers (PostgreSQL, Kafka): a settings change made while the gateway
//! cannot reach Kafka is acknowledged and stored, and reaches `user.settings` once a gateway
//! whose Kafka works runs its relay.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use suho_accounts::Accounts;
use suho_domain::{Symbol, UserTopic};
use suho_gateway::AppState;
use suho_messaging::UserEventProducer;
use suho_security::Identity;
use suho_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

/// A gateway over `accounts` producing with `kafka`, until `stop`: its address and task.
async fn gateway(
    env: &TestEnv,
    accounts: &Accounts,
    kafka: &suho_config::KafkaConfig,
    stop: &CancellationToken,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let symbols: HashSet<Symbol> = [Symbol::parse("EURUSD").expect("a symbol")].into();
    let state = Arc::new(AppState::new(
        accounts.clone(),
        UserEventProducer::new(kafka).expect("a producer"),
        symbols,
        Vec::new(),
        env.config.kafka.topic_prefix.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let task = tokio::spawn(suho_gateway::serve(listener, state, stop.clone()));
    (addr, task)
}

#[tokio::test]
async fn a_change_made_while_kafka_is_down_is_acknowledged_and_published_later() {
    let env = TestEnv::new().await;
    let secret = env.config.auth.jwt_secret.clone().expect("a test JWT key");
    let accounts = Accounts::with_pool(
        env.pool(Identity::Gateway).await,
        &secret,
        Duration::from_secs(600),
    );
    let password = SecretString::from("correct horse battery".to_string());
    accounts
        .register("outbox@example.com", &password, |_| Ok(None))
        .await
        .expect("registers");
    let (user, token) = accounts
        .login("outbox@example.com", &password)
        .await
        .expect("logs in");
    let user = user.user_id.as_str().to_string();

    // A gateway whose Kafka does not answer (nothing listens on port 1).
    let mut down = env.kafka(Identity::Gateway);
    down.bootstrap = "127.0.0.1:1".into();
    let stop_down = CancellationToken::new();
    let (addr, task) = gateway(&env, &accounts, &down, &stop_down).await;
    let http = reqwest::Client::new();
    let response = http
        .put(format!("http://{addr}/api/user/{user}/settings"))
        .bearer_auth(token.token.expose_secret())
        .json(&json!({"risk": {"leverage": 50}}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        response.status().as_u16(),
        200,
        "the change is acknowledged"
    );
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["risk"]["leverage"], 50);
    assert_eq!(
        accounts.outbox_len().await.expect("outbox"),
        1,
        "its event waits"
    );
    let stored = accounts
        .settings(&suho_domain::UserId::new(user.clone()))
        .await
        .expect("settings");
    assert_eq!(stored.risk.leverage, 50);
    stop_down.cancel();
    task.await.expect("the first gateway").expect("served");
    assert_eq!(
        accounts.outbox_len().await.expect("outbox"),
        1,
        "still waiting"
    );

    // Kafka is reachable again, from a gateway instance that can reach it: its relay
    // publishes what the other one stored.
    let stop = CancellationToken::new();
    let _live = gateway(&env, &accounts, &env.kafka(Identity::Gateway), &stop).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while accounts.outbox_len().await.expect("outbox") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let consumer: StreamConsumer =
        suho_messaging::kafka::base_config(&env.kafka(Identity::Operator))
            .set("group.id", format!("{}outbox-test", env.prefix))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
    consumer
        .subscribe(&[&UserTopic::Settings.full_name(&env.config.kafka.topic_prefix)])
        .expect("subscribes");
    let record = tokio::time::timeout(Duration::from_secs(30), consumer.stream().next())
        .await
        .expect("a record within 30 s")
        .expect("a record")
        .expect("readable");
    assert_eq!(record.key(), Some(user.as_bytes()));
    let event: Value = serde_json::from_slice(record.payload().expect("a value")).expect("JSON");
    assert_eq!(event["event_type"], "SETTINGS_UPDATED");
    assert_eq!(event["user_id"], user.as_str());
    assert_eq!(event["settings"]["risk"]["leverage"], 50);
    stop.cancel();
}
