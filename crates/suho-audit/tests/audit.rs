//! The audit service on real Kafka and PostgreSQL: every record of every user topic stored
//! once with its coordinates; a user's export for a time range holds exactly that user's
//! records in that range and equals the history read straight from Kafka; a second reader
//! of the same log inserts nothing; the table refuses updates and deletes.

use std::time::Duration;

use rust_decimal::Decimal;
use sqlx::postgres::PgPool;
use suho_audit::{kafka_history, run_audit, user_events, AuditConfig, AUDITED_TOPICS};
use suho_domain::{
    new_event_id, Order, Side, Symbol, TradeCommand, TradeEvent, TradeEventType, Transaction,
    TransactionType, UserId, UserTopic, SCHEMA_VERSION,
};
use suho_messaging::{now_ms, UserEventProducer};
use suho_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

/// The audit's own role: it inserts and reads its table, nothing else.
async fn pool(env: &TestEnv) -> PgPool {
    env.pool(suho_security::Identity::Audit).await
}

/// Publishes one command, one trade event and one deposit for `user`; returns how many.
async fn publish_round(producer: &UserEventProducer, user: &str) -> usize {
    let user_id = UserId::new(user);
    let order = Order {
        symbol: Symbol::parse("EURUSD").unwrap(),
        side: Side::Buy,
        volume: Decimal::new(10, 2),
        stop_loss: None,
        take_profit: None,
    };
    let command = TradeCommand::open(user_id.clone(), order, None, now_ms());
    producer.send(&command).await.expect("command");
    let executed = TradeEvent::for_command(
        &command.head,
        &command.kind,
        TradeEventType::TradeExecuted,
        new_event_id("exec"),
        now_ms(),
    );
    producer.send(&executed).await.expect("trade");
    let deposit = Transaction {
        event_id: new_event_id("dep"),
        event_type: TransactionType::Deposit,
        user_id,
        amount: Decimal::new(100_000, 2),
        currency: "USD".into(),
        balance_after: None,
        reference: None,
        timestamp: now_ms(),
        schema_version: SCHEMA_VERSION,
    };
    producer.send(&deposit).await.expect("deposit");
    3
}

async fn stored(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_for_a_user_and_range_is_exactly_theirs_and_matches_kafka() {
    let env = TestEnv::new().await;
    let pool = pool(&env).await;
    let producer = UserEventProducer::new(&env.admin_kafka()).expect("producer");
    let shutdown = CancellationToken::new();
    let audit = tokio::spawn({
        let (kafka, telemetry, pool, shutdown) = (
            env.kafka(suho_security::Identity::Audit),
            env.config.telemetry.clone(),
            pool.clone(),
            shutdown.clone(),
        );
        async move {
            run_audit(kafka, telemetry, pool, AuditConfig::default(), shutdown)
                .await
                .expect("audit runs")
        }
    });
    let users = ["usr_audit_a", "usr_audit_b", "usr_audit_c"];
    let mut total = 0;
    let mut marks = Vec::new();
    for _round in 0..3 {
        marks.push(now_ms());
        tokio::time::sleep(Duration::from_millis(30)).await;
        for u in users {
            total += publish_round(&producer, u).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    marks.push(now_ms());
    // Garbage on user.commands is stored too (its bytes kept), keyed by its user.
    producer
        .send_raw(UserTopic::Commands, users[0], b"\xff not json", None)
        .await
        .expect("garbage");
    total += 1;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored(&pool).await < total as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored {} of {total}",
            stored(&pool).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let topics: Vec<String> = AUDITED_TOPICS
        .iter()
        .map(|t| t.full_name(&env.config.kafka.topic_prefix))
        .collect();
    // The middle round of user A only.
    let (from, to) = (marks[1], marks[2]);
    // The compliance query, as the operator (its grant is the function, not the table).
    let operator = env.pool(suho_security::Identity::Operator).await;
    let export = user_events(&operator, &topics, users[0], from, to)
        .await
        .expect("export");
    assert_eq!(export.len(), 3, "{export:#?}");
    assert!(export.iter().all(|r| r.user_id == users[0]));
    assert!(export.iter().all(|r| (from..to).contains(&r.kafka_ts)));
    let types: Vec<&str> = export
        .iter()
        .filter_map(|r| r.event_type.as_deref())
        .collect();
    assert_eq!(types, ["OPEN_TRADE", "TRADE_EXECUTED", "DEPOSIT"]);
    let from_kafka = kafka_history(
        &env.kafka(suho_security::Identity::Operator),
        topics.clone(),
        users[0].into(),
        from,
        to,
    )
    .await
    .expect("history");
    assert_eq!(export, from_kafka, "the store matches the log");

    // The whole range of user A: its nine events and the garbage, nothing of B or C.
    let all_a = user_events(&operator, &topics, users[0], 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(all_a.len(), 10);
    assert_eq!(all_a.iter().filter(|r| r.payload.is_none()).count(), 1);
    let all_a_kafka = kafka_history(
        &env.kafka(suho_security::Identity::Operator),
        topics.clone(),
        users[0].into(),
        0,
        i64::MAX,
    )
    .await
    .unwrap();
    assert_eq!(all_a, all_a_kafka);

    // A second reader of the same log (another group, the operator's) inserts nothing.
    let mut other = env.kafka(suho_security::Identity::Operator);
    other.group_prefix = format!("{}replay.", other.group_prefix);
    let replay_stop = CancellationToken::new();
    let replay = tokio::spawn({
        let (telemetry, pool, stop) = (
            env.config.telemetry.clone(),
            pool.clone(),
            replay_stop.clone(),
        );
        async move {
            run_audit(other, telemetry, pool, AuditConfig::default(), stop)
                .await
                .expect("replay runs")
        }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    replay_stop.cancel();
    replay.await.unwrap();
    assert_eq!(stored(&pool).await, total as i64, "a replay adds no row");

    // Append-only: the audit's role may not change a row, and even the table's owner is
    // stopped by the trigger.
    let owner = env.owner_pool().await;
    for sql in [
        "UPDATE audit_events SET user_id = 'x'",
        "DELETE FROM audit_events",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(err.to_string().contains("permission denied"), "{err}");
        let err = sqlx::query(sql).execute(&owner).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    shutdown.cancel();
    audit.await.unwrap();
}
