//! Topic provisioning against a real Kafka broker: the contract's partitions and retention,
//! idempotence, and drift that is reported and, with `fix`, repaired.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use suho_domain::UserTopic;
use suho_messaging::topics::{apply, desired};
use suho_testkit::TestEnv;

fn admin(env: &TestEnv) -> AdminClient<DefaultClientContext> {
    suho_messaging::kafka::base_config(&env.kafka(suho_security::Identity::Operator))
        .create()
        .unwrap()
}

async fn config_of(env: &TestEnv, topic: &str, key: &str) -> Option<String> {
    let described = admin(env)
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    described[0]
        .as_ref()
        .unwrap()
        .get(key)
        .and_then(|e| e.value.clone())
}

#[tokio::test]
async fn topics_exist_with_the_contracts_partitions_and_retention() {
    // TestEnv::new() applied the topics under a fresh prefix.
    let env = TestEnv::new().await;
    let md = admin(&env)
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let expected = [
        ("user.auth", 3, "7776000000", "delete"),
        ("user.settings", 3, "-1", "compact"),
        ("user.commands", 6, "220903200000", "delete"),
        ("user.trades", 6, "220903200000", "delete"),
        ("user.mt5_status", 3, "2592000000", "delete"),
        ("user.risk_alerts", 3, "31536000000", "delete"),
        ("user.transactions", 3, "315576000000", "delete"),
        ("user.commands.dlq", 6, "220903200000", "delete"),
        ("engine.journal", 6, "604800000", "delete"),
    ];
    assert_eq!(expected.len(), UserTopic::ALL.len());
    for (name, partitions, retention, cleanup) in expected {
        let full = format!("{}{name}", env.prefix);
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == full)
            .unwrap_or_else(|| panic!("{full} does not exist"));
        assert_eq!(topic.partitions().len(), partitions, "{name} partitions");
        assert_eq!(
            config_of(&env, &full, "retention.ms").await.as_deref(),
            Some(retention),
            "{name} retention"
        );
        assert_eq!(
            config_of(&env, &full, "cleanup.policy").await.as_deref(),
            Some(cleanup),
            "{name} cleanup"
        );
    }
}

#[tokio::test]
async fn apply_is_idempotent_and_reports_then_fixes_drift() {
    let env = TestEnv::new().await;
    let again = apply(&env.kafka(suho_security::Identity::Operator), false)
        .await
        .unwrap();
    assert!(again.created.is_empty());
    assert_eq!(again.unchanged.len(), desired(&env.prefix).len());
    assert!(again.drift.is_empty());

    // Someone shortens the retention of user.trades by hand.
    let trades = UserTopic::Trades.full_name(&env.prefix);
    let change = AlterConfig::new(ResourceSpecifier::Topic(&trades))
        .set("retention.ms", "86400000")
        .set("cleanup.policy", "delete")
        .set("unclean.leader.election.enable", "false");
    for r in admin(&env)
        .alter_configs(&[change], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }

    // Config changes reach the broker asynchronously: wait until it shows the change.
    for _ in 0..100 {
        if config_of(&env, &trades, "retention.ms").await.as_deref() == Some("86400000") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = apply(&env.kafka(suho_security::Identity::Operator), false)
        .await
        .unwrap();
    let drift: Vec<_> = report.unresolved().collect();
    assert_eq!(drift.len(), 1, "{report}");
    assert_eq!(drift[0].topic, trades);
    assert_eq!(drift[0].setting, "retention.ms");
    assert_eq!(drift[0].have, "86400000");
    assert_eq!(drift[0].want, "220903200000");
    assert_eq!(
        config_of(&env, &trades, "retention.ms").await.as_deref(),
        Some("86400000"),
        "report only"
    );

    let fixed = apply(&env.kafka(suho_security::Identity::Operator), true)
        .await
        .unwrap();
    assert_eq!(fixed.unresolved().count(), 0, "{fixed}");
    let mut repaired = None;
    for _ in 0..100 {
        repaired = config_of(&env, &trades, "retention.ms").await;
        if repaired.as_deref() == Some("220903200000") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(repaired.as_deref(), Some("220903200000"));
    assert!(apply(&env.kafka(suho_security::Identity::Operator), false)
        .await
        .unwrap()
        .drift
        .is_empty());
}

#[tokio::test]
async fn records_land_where_partition_of_says() {
    // The engines decide which accounts they act on from `partition_of`; it must agree with
    // the producers' partitioner on a real broker.
    let env = TestEnv::new().await;
    let producer =
        suho_messaging::UserEventProducer::new(&env.kafka(suho_security::Identity::Gateway))
            .expect("producer");
    let partitions = UserTopic::Commands.partitions();
    for i in 0..40 {
        let key = format!("user-{i}-{}", i * 7919 + 13);
        let d = producer
            .send_raw(UserTopic::Commands, &key, b"{}", None)
            .await
            .expect("sent");
        assert_eq!(
            d.partition,
            suho_messaging::kafka::partition_of(key.as_bytes(), partitions),
            "{key}"
        );
    }
}
