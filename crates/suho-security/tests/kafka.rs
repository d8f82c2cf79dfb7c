//! The identity table, enforced by the real Kafka broker of the test stack: each identity
//! may produce and consume what its row allows and is refused (an authorization error) on
//! every other topic; only the engine uses transactional ids, and only its own; groups are
//! each service's own; anonymous, wrong-password and plaintext clients are refused.
//!
//! The expectations below are written out by hand, not derived from the table, so that a
//! change to the table that opens or closes a topic fails here until it is meant.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use secrecy::ExposeSecret;
use suho_domain::UserTopic;
use suho_messaging::kafka::base_config;
use suho_security::{Identity, Secrets};
use suho_testkit::TestEnv;

use UserTopic::{
    Auth, Commands, CommandsDlq, EngineJournal, Mt5Status, RiskAlerts, Settings, Trades,
    Transactions,
};

/// What each identity may produce to, by hand.
fn may_write(identity: Identity) -> BTreeSet<UserTopic> {
    match identity {
        Identity::Gateway => [Commands, Auth, Settings].into(),
        Identity::Agent => [Commands].into(),
        Identity::Engine => [
            Trades,
            Mt5Status,
            RiskAlerts,
            Transactions,
            CommandsDlq,
            EngineJournal,
        ]
        .into(),
        _ => BTreeSet::new(),
    }
}

/// What each identity may consume, by hand.
fn may_read(identity: Identity) -> BTreeSet<UserTopic> {
    match identity {
        Identity::Engine => [Commands, Settings, Trades, Transactions, EngineJournal].into(),
        Identity::Agent => [Settings].into(),
        Identity::Audit => [
            Auth,
            Settings,
            Commands,
            Trades,
            Mt5Status,
            RiskAlerts,
            Transactions,
        ]
        .into(),
        Identity::Ws => [Trades, Mt5Status, RiskAlerts, Transactions].into(),
        Identity::Operator => UserTopic::ALL.into(),
        _ => BTreeSet::new(),
    }
}

fn is_denied(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
        )
    )
}

/// Whether `kafka`'s login may produce to `topic`: the produce is answered either way.
async fn write_allowed(kafka: &suho_config::KafkaConfig, topic: &str) -> bool {
    let producer: FutureProducer = base_config(kafka)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("a producer");
    match producer
        .send(
            FutureRecord::to(topic)
                .partition(0)
                .key("usr_probe")
                .payload("{}"),
            Duration::from_secs(15),
        )
        .await
    {
        Ok(_) => true,
        Err((e, _)) if is_denied(&e) => false,
        Err((e, _)) => panic!("producing to {topic}: unexpected {e}"),
    }
}

/// Whether `kafka`'s login may consume `topic` (which holds a record): it reads the record,
/// or the broker refuses the fetch.
fn read_allowed(kafka: &suho_config::KafkaConfig, topic: &str, group: &str) -> bool {
    let consumer: BaseConsumer = base_config(kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    // Without even `Describe` the broker hides the topic's metadata, and an assigned consumer
    // never gets as far as a fetch to be refused.
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    match md.topics()[0].error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => return false,
        Some(e) => panic!("metadata of {topic}: unexpected {e}"),
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("a partition");
    consumer.assign(&tpl).expect("assigned");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(_)) => return true,
            Some(Err(e))
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed) =>
            {
                return false
            }
            // The consumer's group is not the identity's: the coordinator lookup is refused,
            // which an assigned consumer does not need.
            Some(Err(e))
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::GroupAuthorizationFailed) => {}
            Some(Err(e)) => panic!("consuming {topic}: unexpected {e}"),
            None => {}
        }
    }
    panic!("consuming {topic}: neither a record nor a refusal in 20 s");
}

#[tokio::test]
async fn every_identity_may_produce_and_consume_its_rows_topics_and_no_other() {
    let env = TestEnv::new().await;
    // One record on every topic, so that a permitted read has something to read.
    let seed: FutureProducer = base_config(&env.admin_kafka())
        .create()
        .expect("a producer");
    for t in UserTopic::ALL {
        seed.send(
            FutureRecord::to(&t.full_name(&env.prefix))
                .partition(0)
                .key("usr_seed")
                .payload("{}"),
            Duration::from_secs(15),
        )
        .await
        .expect("the admin seeds every topic");
    }
    let mut wrong = Vec::new();
    let mut checks = tokio::task::JoinSet::new();
    for identity in Identity::ALL {
        let kafka = env.kafka(identity);
        let prefix = env.prefix.clone();
        checks.spawn(async move {
            let mut out = Vec::new();
            for t in UserTopic::ALL {
                let topic = t.full_name(&prefix);
                let wrote = write_allowed(&kafka, &topic).await;
                let (k, tp, g) = (kafka.clone(), topic.clone(), format!("{prefix}probe"));
                let read = tokio::task::spawn_blocking(move || read_allowed(&k, &tp, &g))
                    .await
                    .expect("the reader");
                out.push((identity, t, wrote, read));
            }
            out
        });
    }
    while let Some(done) = checks.join_next().await {
        for (identity, t, wrote, read) in done.expect("a check task") {
            if wrote != may_write(identity).contains(&t) {
                wrong.push(format!("{identity} write {} = {wrote}", t.name()));
            }
            if read != may_read(identity).contains(&t) {
                wrong.push(format!("{identity} read {} = {read}", t.name()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the broker disagrees with the table: {wrong:#?}"
    );
}

/// Whether `kafka`'s login may start transactions under `id`.
async fn transactions_allowed(kafka: &suho_config::KafkaConfig, id: &str) -> bool {
    let producer: FutureProducer = base_config(kafka)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "10000")
        .create()
        .expect("a producer");
    match tokio::task::spawn_blocking(move || producer.init_transactions(Duration::from_secs(20)))
        .await
        .expect("init")
    {
        Ok(()) => true,
        Err(e) if is_denied(&e) => false,
        Err(e) => panic!("init_transactions({id}): unexpected {e}"),
    }
}

#[tokio::test]
async fn only_the_engine_has_transactional_ids_and_only_its_own() {
    let env = TestEnv::new().await;
    let own = format!("{}trading-engine-probe", env.prefix);
    assert!(transactions_allowed(&env.kafka(Identity::Engine), &own).await);
    let other = format!("{}gateway-probe", env.prefix);
    assert!(!transactions_allowed(&env.kafka(Identity::Engine), &other).await);
    for identity in [Identity::Gateway, Identity::Agent, Identity::Operator] {
        assert!(
            !transactions_allowed(&env.kafka(identity), &own).await,
            "{identity} used the engine's transactional id"
        );
    }
}

#[tokio::test]
async fn a_service_cannot_join_another_services_group() {
    let env = TestEnv::new().await;
    let topic = Settings.full_name(&env.prefix);
    let join = |identity: Identity, group: &str| {
        let consumer: BaseConsumer = base_config(&env.kafka(identity))
            .set("group.id", format!("{}{group}", env.prefix))
            .create()
            .expect("a consumer");
        consumer.subscribe(&[&topic]).expect("subscribed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Err(e))
                    if e.rdkafka_error_code()
                        == Some(RDKafkaErrorCode::GroupAuthorizationFailed) =>
                {
                    return false
                }
                Some(Err(e)) => panic!("{identity} in {group}: unexpected {e}"),
                _ => {}
            }
            if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                return true;
            }
        }
        panic!("{identity} in {group}: neither joined nor refused in 30 s");
    };
    // The agent may read settings, but only in its own group.
    assert!(join(Identity::Agent, "agent"));
    assert!(!join(Identity::Agent, "audit"));
    assert!(!join(Identity::Agent, "trading-engine"));
}

#[tokio::test]
async fn anonymous_wrong_password_and_plaintext_clients_are_refused() {
    let env = TestEnv::new().await;
    let secrets = Secrets::at(env.config.secrets_dir());
    let metadata = |c: &mut ClientConfig| {
        let client: BaseConsumer = c
            .set("bootstrap.servers", &env.config.kafka.bootstrap)
            .set("socket.timeout.ms", "3000")
            .create()
            .expect("a client");
        client.fetch_metadata(None, Duration::from_secs(4))
    };
    // No login at all: plaintext to a SASL_SSL listener.
    assert!(
        metadata(&mut ClientConfig::new()).is_err(),
        "anonymous plaintext"
    );
    // TLS but no SASL login.
    let ca = secrets.ca_file().display().to_string();
    assert!(
        metadata(
            ClientConfig::new()
                .set("security.protocol", "SSL")
                .set("ssl.ca.location", &ca)
        )
        .is_err(),
        "TLS without a login"
    );
    let password = secrets.password(Identity::Operator).unwrap();
    // The right password, but in the clear.
    assert!(
        metadata(
            ClientConfig::new()
                .set("security.protocol", "SASL_PLAINTEXT")
                .set("sasl.mechanism", "SCRAM-SHA-512")
                .set("sasl.username", "operator")
                .set("sasl.password", password.expose_secret())
        )
        .is_err(),
        "SASL without TLS"
    );
    let login = |user: &str, pw: &str, mechanism: &str| {
        metadata(
            ClientConfig::new()
                .set("security.protocol", "SASL_SSL")
                .set("ssl.ca.location", &ca)
                .set("sasl.mechanism", mechanism)
                .set("sasl.username", user)
                .set("sasl.password", pw),
        )
    };
    assert!(login("operator", "not-the-password", "SCRAM-SHA-512").is_err());
    // The services' passwords are no good for the broker's own PLAIN principals.
    assert!(login("admin", password.expose_secret(), "PLAIN").is_err());
    assert!(login("operator", password.expose_secret(), "PLAIN").is_err());
    // And the real thing works.
    assert!(login("operator", password.expose_secret(), "SCRAM-SHA-512").is_ok());
}

#[tokio::test]
async fn only_the_operator_creates_topics() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let env = TestEnv::new().await;
    let create = |identity: Identity, name: String| {
        let kafka = env.kafka(identity);
        async move {
            let admin: AdminClient<_> = base_config(&kafka).create().expect("an admin client");
            let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(1));
            let result = admin
                .create_topics([&topic], &AdminOptions::new())
                .await
                .expect("an answer");
            match &result[0] {
                Ok(_) => Ok(()),
                Err((_, code)) => Err(*code),
            }
        }
    };
    let refused = create(Identity::Gateway, format!("{}user.extra", env.prefix)).await;
    assert_eq!(refused, Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    let refused = create(Identity::Engine, format!("{}user.extra", env.prefix)).await;
    assert_eq!(refused, Err(RDKafkaErrorCode::TopicAuthorizationFailed));
    assert_eq!(
        create(Identity::Operator, format!("{}user.extra", env.prefix)).await,
        Ok(())
    );
    // Not outside the deployment's prefix.
    let outside = create(Identity::Operator, "elsewhere.user.extra".into()).await;
    assert_eq!(outside, Err(RDKafkaErrorCode::TopicAuthorizationFailed));
}
