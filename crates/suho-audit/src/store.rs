//! The `audit_events` table: one row per Kafka record of a user topic.

use serde::Serialize;
use sqlx::PgPool;
use suho_domain::UserTopic;

/// The topics the audit service reads: every contract user topic (not the dead-letter one,
/// whose records are already stored from `user.commands`).
pub const AUDITED_TOPICS: [UserTopic; 7] = UserTopic::CONTRACT;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    topic        TEXT NOT NULL,
    kafka_partition INT NOT NULL,
    kafka_offset BIGINT NOT NULL,
    user_id      TEXT NOT NULL,
    event_type   TEXT,
    event_id     TEXT,
    kafka_ts     BIGINT NOT NULL,
    payload      JSONB,
    raw          BYTEA,
    stored_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
CREATE INDEX IF NOT EXISTS audit_events_user_time ON audit_events (user_id, kafka_ts);
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_events_append_only') THEN
        CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
    END IF;
END $$;
CREATE OR REPLACE FUNCTION compliance_user_events(
    p_user_id text, p_from_ms bigint, p_to_ms bigint, p_topics text[])
RETURNS SETOF audit_events LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
    SELECT * FROM audit_events
    WHERE user_id = p_user_id AND kafka_ts >= p_from_ms AND kafka_ts < p_to_ms
      AND topic = ANY(p_topics)
    ORDER BY kafka_ts, topic, kafka_partition, kafka_offset
$$;
CREATE OR REPLACE FUNCTION compliance_latest_event(p_user_id text, p_topic text)
RETURNS jsonb LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
    SELECT payload FROM audit_events
    WHERE user_id = p_user_id AND topic = p_topic AND payload IS NOT NULL
    ORDER BY kafka_ts DESC, kafka_offset DESC LIMIT 1
$$;
";

/// Creates the table, its index, its append-only trigger and the compliance queries' functions
/// if missing (concurrent callers are serialised by an advisory lock); run by the schema's
/// owner, since the audit's own role may only insert and read rows.
///
/// # Errors
/// The database refused the DDL.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Existing objects are the normal case: no notice for each.
    exec(&mut tx, "SET LOCAL client_min_messages TO warning").await?;
    // "suhoaudt": one DDL run at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(8319670714222601332)")
        .execute(&mut *tx)
        .await?;
    exec(&mut tx, SCHEMA).await?;
    tx.commit().await
}

/// Runs `sql` (several statements) on `conn`, as a plain named function: a `raw_sql` call
/// inside `migrate` would make its future too general to be `Send`.
async fn exec(conn: &mut sqlx::PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await.map(|_| ())
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AuditRecord {
    /// Topic name as on the broker (with any prefix).
    pub topic: String,
    /// Partition.
    #[sqlx(rename = "kafka_partition")]
    pub partition: i32,
    /// Offset.
    #[sqlx(rename = "kafka_offset")]
    pub offset: i64,
    /// The record's key: the user.
    pub user_id: String,
    /// `event_type` of the value, when it is a JSON event.
    pub event_type: Option<String>,
    /// `event_id` of the value, when it is a JSON event.
    pub event_id: Option<String>,
    /// Kafka timestamp, epoch ms.
    pub kafka_ts: i64,
    /// The value, when it is JSON.
    pub payload: Option<serde_json::Value>,
    /// The value's bytes, when it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<Vec<u8>>,
}

/// Stores records, skipping those already stored; the number newly inserted.
pub(crate) async fn insert(pool: &PgPool, records: &[AuditRecord]) -> Result<u64, sqlx::Error> {
    if records.is_empty() {
        return Ok(0);
    }
    let mut qb = sqlx::QueryBuilder::new(
        "INSERT INTO audit_events (topic, kafka_partition, kafka_offset, user_id, event_type, \
         event_id, kafka_ts, payload, raw) ",
    );
    qb.push_values(records, |mut b, r| {
        b.push_bind(&r.topic)
            .push_bind(r.partition)
            .push_bind(r.offset)
            .push_bind(&r.user_id)
            .push_bind(&r.event_type)
            .push_bind(&r.event_id)
            .push_bind(r.kafka_ts)
            .push_bind(&r.payload)
            .push_bind(&r.raw);
    });
    qb.push(" ON CONFLICT DO NOTHING");
    Ok(qb.build().execute(pool).await?.rows_affected())
}

/// The user's stored records of `topics` with a Kafka timestamp in `[from_ms, to_ms)`, by
/// time, then topic, partition and offset.
///
/// # Errors
/// The database failed.
pub async fn user_events(
    pool: &PgPool,
    topic_names: &[String],
    user_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<AuditRecord>, sqlx::Error> {
    // Through the owner's function (the compliance grant): the roles that read a user's
    // history may not read the table.
    sqlx::query_as::<_, AuditRecord>(
        "SELECT topic, kafka_partition, kafka_offset, user_id, event_type, event_id, kafka_ts, \
         payload, raw FROM compliance_user_events($1, $2, $3, $4) \
         ORDER BY kafka_ts, topic, kafka_partition, kafka_offset",
    )
    .bind(user_id)
    .bind(from_ms)
    .bind(to_ms)
    .bind(topic_names)
    .fetch_all(pool)
    .await
}

/// The record for one Kafka message.
pub(crate) fn record(
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    kafka_ts: i64,
) -> AuditRecord {
    let payload: Option<serde_json::Value> = value.and_then(|v| serde_json::from_slice(v).ok());
    let field = |name: &str| {
        payload
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let user_id = key
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .or_else(|| field("user_id"))
        .unwrap_or_default();
    AuditRecord {
        topic: topic.to_string(),
        partition,
        offset,
        user_id,
        event_type: field("event_type"),
        event_id: field("event_id"),
        kafka_ts,
        raw: if payload.is_none() {
            Some(value.unwrap_or_default().to_vec())
        } else {
            None
        },
        payload,
    }
}

/// The payload of the user's latest JSON record on `topic` (e.g. the latest
/// `ACCOUNT_STATUS`), if any.
///
/// # Errors
/// The database failed.
pub async fn latest_event(
    pool: &PgPool,
    topic: &str,
    user_id: &str,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let row: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT compliance_latest_event($1, $2)")
            .bind(user_id)
            .bind(topic)
            .fetch_one(pool)
            .await?;
    Ok(row)
}
