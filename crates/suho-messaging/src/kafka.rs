//! The user-event log on Kafka: an idempotent, `acks=all` producer that keys every record
//! by `user_id`, and consumers that commit by hand, read only committed records and report
//! their lag.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use secrecy::ExposeSecret;
use serde::Serialize;
use suho_domain::{UserEvent, UserTopic};
use suho_telemetry::names;

use crate::MessagingError;

/// The producers' partitioner: Kafka's own (murmur2 of the key, as the Java client and most
/// others do), so [`partition_of`] predicts where a user's records land.
const PARTITIONER: &str = "murmur2_random";

/// `(partition, low, high)` of every partition of `topic`, from its metadata and watermarks
/// (blocking; each request bounded by `timeout`). Empty when the topic does not exist or the
/// broker reports an error for it.
///
/// # Errors
/// A metadata or watermark request failed.
pub fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64, i64)>, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions
        .into_iter()
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
            Ok((p, low, high))
        })
        .collect()
}

/// The `event_type` header every user event carries.
fn type_header(event_type: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: "event_type",
        value: Some(event_type),
    })
}

/// Whether a consumer's `positions` ([`Consumer::position`]) have reached `end` on every
/// `(topic, partition, end)` of `ends`: the test of a read to the end of a log. A
/// `read_committed` consumer's position passes transaction markers too, so it reaches a
/// partition's high watermark even when the last offset is a commit marker.
pub fn reached<'a>(
    positions: &rdkafka::TopicPartitionList,
    ends: impl IntoIterator<Item = (&'a str, i32, i64)>,
) -> bool {
    ends.into_iter().all(|(topic, partition, end)| {
        positions
            .find_partition(topic, partition)
            .is_some_and(|e| matches!(e.offset(), rdkafka::Offset::Offset(o) if o >= end))
    })
}

/// The partition of `topic`'s `partitions` a record keyed `key` goes to, as Kafka's default
/// partitioner computes it: `murmur2(key) & 0x7fffffff % partitions`.
#[must_use]
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    #[allow(clippy::cast_possible_wrap)]
    let hash = (murmur2(key) & 0x7fff_ffff) as i32;
    hash % partitions.max(1)
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), bit for bit.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    #[allow(clippy::cast_possible_truncation)]
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The settings every suho Kafka client shares, with its login (`config.login`): SASL over
/// TLS, the broker's certificate and host name verified against the local CA. A
/// configuration with no login connects in plaintext, which a suho broker refuses (only a
/// benchmark's plain stack takes it); bind one first ([`bind`]).
pub fn base_config(config: &suho_config::KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap)
        .set("client.id", "suho")
        .set("socket.nagle.disable", "true");
    match &config.login {
        Some(login) => {
            c.set("client.id", format!("suho-{}", login.username))
                .set("security.protocol", "SASL_SSL")
                .set("sasl.mechanism", login.mechanism)
                .set("sasl.username", &login.username)
                .set("sasl.password", login.password.expose_secret())
                .set("ssl.ca.location", login.ca_file.display().to_string())
                .set("ssl.endpoint.identification.algorithm", "https");
        }
        None => {
            c.set("security.protocol", "plaintext");
            tracing::debug!(
                bootstrap = %config.bootstrap,
                "a Kafka client without a login: plaintext, which a secured broker refuses"
            );
        }
    }
    c
}

/// `kafka` logged in as `credentials`' identity (SCRAM-SHA-512 over TLS).
#[must_use]
pub fn with_login(
    kafka: &suho_config::KafkaConfig,
    credentials: &suho_security::Credentials,
) -> suho_config::KafkaConfig {
    let mut k = kafka.clone();
    k.login = Some(suho_config::KafkaLogin {
        username: credentials.user().to_string(),
        password: credentials.password.clone(),
        ca_file: credentials.ca_file.clone(),
        mechanism: suho_security::kafka::SERVICE_MECHANISM,
    });
    k
}

/// `config.kafka` logged in as `identity`, with its credentials from the secrets directory:
/// what every service does before it makes a Kafka client. On a benchmark's plain stack
/// (`security.transport`), `config.kafka` with no login.
///
/// # Errors
/// The credentials are missing or unreadable.
pub fn bind(
    config: &suho_config::Config,
    identity: suho_security::Identity,
) -> Result<suho_config::KafkaConfig, MessagingError> {
    if config.security.transport == suho_config::Transport::Plain {
        let mut plain = config.kafka.clone();
        plain.login = None;
        return Ok(plain);
    }
    let credentials = suho_security::Secrets::at(config.secrets_dir()).credentials(identity)?;
    Ok(with_login(&config.kafka, &credentials))
}

/// `kafka` logged in as the stack's admin principal (PLAIN over TLS): only the stack and
/// the test harness, to make SCRAM credentials and ACLs.
///
/// # Errors
/// The admin password or the CA is missing or unreadable.
pub fn with_admin_login(
    kafka: &suho_config::KafkaConfig,
    secrets: &suho_security::Secrets,
) -> Result<suho_config::KafkaConfig, MessagingError> {
    let principal = suho_security::ServerPrincipal::KafkaAdmin;
    let mut k = kafka.clone();
    k.login = Some(suho_config::KafkaLogin {
        username: principal.name().to_string(),
        password: secrets.server_password(principal)?,
        ca_file: secrets.ca_file(),
        mechanism: suho_security::kafka::SERVER_MECHANISM,
    });
    Ok(k)
}

/// The settings of [`UserEventProducer::new`]: idempotent, `acks=all`, Kafka's partitioner.
#[must_use]
pub fn producer_config(config: &suho_config::KafkaConfig) -> ClientConfig {
    let mut c = base_config(config);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "30000")
        .set("partitioner", PARTITIONER);
    c
}

/// The settings of [`UserEventProducer::transactional`] under `transactional_id`.
#[must_use]
pub fn transactional_config(
    config: &suho_config::KafkaConfig,
    transactional_id: &str,
) -> ClientConfig {
    let mut c = producer_config(config);
    c.set("message.timeout.ms", "10000")
        // A transaction begun right after a commit meets CONCURRENT_TRANSACTIONS until the
        // previous one's markers are written (milliseconds); retry soon, not after 100 ms.
        .set("retry.backoff.ms", "5")
        .set("retry.backoff.max.ms", "100")
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", "10000");
    c
}

/// The settings of [`consumer`] in the group `group_id` (taken as is): manual commits,
/// `read_committed`, earliest for a new group, tuned for latency.
#[must_use]
pub fn consumer_config(
    config: &suho_config::KafkaConfig,
    telemetry: &suho_config::TelemetryConfig,
    group_id: &str,
) -> ClientConfig {
    let mut c = base_config(config);
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .set("session.timeout.ms", "10000")
        .set(
            "statistics.interval.ms",
            telemetry.lag_interval_ms.to_string(),
        );
    c
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: i32,
    /// Offset within it.
    pub offset: i64,
}

/// Produces user events: `acks=all`, idempotent (no duplicates from the producer's own
/// retries), keyed by `user_id` so one user's events stay in one partition, in order.
#[derive(Clone)]
pub struct UserEventProducer {
    producer: FutureProducer,
    prefix: String,
}

impl UserEventProducer {
    /// Creates the producer.
    ///
    /// # Errors
    /// The client configuration is rejected by librdkafka.
    pub fn new(config: &suho_config::KafkaConfig) -> Result<Self, MessagingError> {
        let producer = producer_config(config).create()?;
        Ok(Self {
            producer,
            prefix: config.topic_prefix.clone(),
        })
    }

    /// A transactional producer (`transactional.id` = `transactional_id`): every send must
    /// happen inside [`UserEventProducer::begin`] .. [`UserEventProducer::commit`]
    /// (or [`UserEventProducer::abort`]). Initialising it aborts whatever a previous producer
    /// with the same id left open and fences that producer out.
    ///
    /// # Errors
    /// The configuration is rejected, or the transaction coordinator does not answer.
    pub async fn transactional(
        config: &suho_config::KafkaConfig,
        transactional_id: &str,
    ) -> Result<Self, MessagingError> {
        let producer: FutureProducer = transactional_config(config, transactional_id).create()?;
        let p = producer.clone();
        blocking(move || p.init_transactions(Timeout::After(Duration::from_secs(30)))).await?;
        Ok(Self {
            producer,
            prefix: config.topic_prefix.clone(),
        })
    }

    /// Starts a transaction.
    ///
    /// # Errors
    /// Kafka refused (the producer was fenced, or a previous transaction is still open).
    pub async fn begin(&self) -> Result<(), MessagingError> {
        let p = self.producer.clone();
        blocking(move || p.begin_transaction()).await
    }

    /// Adds the consumer's `offsets` to the open transaction (`AddOffsetsToTxn`, then
    /// `TxnOffsetCommit` to the group's coordinator, which fences a member of an older
    /// generation): the records sent in it and the offsets become visible together at
    /// [`UserEventProducer::commit`], or neither does. Call it once the transaction's records
    /// are acknowledged: run beside them, it made about one commit in fifty wait 100 ms.
    ///
    /// # Errors
    /// Kafka refused; the transaction must then be aborted.
    pub async fn send_offsets(
        &self,
        offsets: rdkafka::TopicPartitionList,
        group: rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), MessagingError> {
        let p = self.producer.clone();
        blocking(move || {
            p.send_offsets_to_transaction(&offsets, &group, Timeout::After(Duration::from_secs(30)))
        })
        .await
    }

    /// Commits the open transaction. Call it once every record sent in it is acknowledged:
    /// librdkafka's flush inside the commit otherwise waits on its delivery-report poll
    /// (about 100 ms here, the `echo-tx` baseline's median).
    ///
    /// # Errors
    /// Kafka refused; the transaction must then be aborted.
    pub async fn commit(&self) -> Result<(), MessagingError> {
        let p = self.producer.clone();
        blocking(move || p.commit_transaction(Timeout::After(Duration::from_secs(30)))).await
    }

    /// Aborts the open transaction: nothing sent in it becomes visible to `read_committed`
    /// readers.
    ///
    /// # Errors
    /// Kafka refused.
    pub async fn abort(&self) -> Result<(), MessagingError> {
        let p = self.producer.clone();
        blocking(move || p.abort_transaction(Timeout::After(Duration::from_secs(30)))).await
    }

    /// The topic name `topic` has on this cluster (with the configured prefix).
    pub fn topic_name(&self, topic: UserTopic) -> String {
        topic.full_name(&self.prefix)
    }

    /// Sends `event` to its topic, keyed by its `user_id`, and waits for the broker's
    /// acknowledgement.
    ///
    /// # Errors
    /// Encoding failed, or Kafka did not acknowledge within the message timeout.
    pub async fn send<E: UserEvent + Serialize>(
        &self,
        event: &E,
    ) -> Result<Delivery, MessagingError> {
        let payload = serde_json::to_vec(event)?;
        self.send_raw(
            event.topic(),
            event.user_id().as_str(),
            &payload,
            Some(type_header(event.event_type_str())),
        )
        .await
    }

    /// Queues `event` for its topic, keyed by its `user_id`, without waiting: records queued
    /// one after another keep that order. The acknowledgement comes through the returned
    /// [`Queued`] (a transaction's commit also waits for every record sent in it).
    ///
    /// # Errors
    /// Encoding failed, or the client's queue is full (retryable).
    pub fn enqueue<E: UserEvent + Serialize>(&self, event: &E) -> Result<Queued, MessagingError> {
        let payload = serde_json::to_vec(event)?;
        self.enqueue_encoded(
            event.topic(),
            event.user_id().as_str(),
            event.event_type_str(),
            &payload,
        )
    }

    /// Queues an event encoded earlier (`payload`, of type `event_type`, keyed `key`) as
    /// [`UserEventProducer::enqueue`] queues one: the outbox relay's path.
    ///
    /// # Errors
    /// The client's queue is full (retryable).
    pub fn enqueue_encoded(
        &self,
        topic: UserTopic,
        key: &str,
        event_type: &str,
        payload: &[u8],
    ) -> Result<Queued, MessagingError> {
        self.enqueue_raw(topic, key, payload, Some(type_header(event_type)))
    }

    /// [`UserEventProducer::enqueue`] for raw bytes under `key`.
    ///
    /// # Errors
    /// The client's queue is full (retryable).
    pub fn enqueue_raw(
        &self,
        topic: UserTopic,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<Queued, MessagingError> {
        let name = self.topic_name(topic);
        let mut record = FutureRecord::to(&name).key(key).payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let future = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| MessagingError::Kafka(e))?;
        Ok(Queued { topic, future })
    }

    /// Queues `payload` for one given partition of `topic`, with no key (the engines'
    /// journal, whose partitions follow `user.commands`' rather than a key's hash).
    ///
    /// # Errors
    /// The client's queue is full (retryable).
    pub fn enqueue_to_partition(
        &self,
        topic: UserTopic,
        partition: i32,
        payload: &[u8],
    ) -> Result<Queued, MessagingError> {
        let name = self.topic_name(topic);
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&name)
            .partition(partition)
            .payload(payload);
        let future = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| MessagingError::Kafka(e))?;
        Ok(Queued { topic, future })
    }

    /// Queues every record of `records`, in order, without waiting (see [`Outgoing`]).
    ///
    /// # Errors
    /// The client's queue is full (retryable); the records queued before it stay queued, so
    /// a transaction must then be aborted.
    pub fn enqueue_all(
        &self,
        records: impl IntoIterator<Item = Outgoing>,
    ) -> Result<Vec<Queued>, MessagingError> {
        records
            .into_iter()
            .map(|r| self.enqueue_raw(r.topic, &r.key, &r.payload, r.headers))
            .collect()
    }

    /// Sends raw bytes to `topic` under `key` (for the dead-letter path and tests).
    ///
    /// # Errors
    /// Kafka did not acknowledge within the message timeout.
    pub async fn send_raw(
        &self,
        topic: UserTopic,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<Delivery, MessagingError> {
        let name = self.topic_name(topic);
        let mut record = FutureRecord::to(&name).key(key).payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let delivered = self
            .producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| MessagingError::Kafka(e))?;
        metrics::counter!(names::KAFKA_PRODUCED, "topic" => topic.name()).increment(1);
        Ok(Delivery {
            partition: delivered.partition,
            offset: delivered.offset,
        })
    }
}

/// A record encoded and not yet handed to a producer: what a transaction will send, held
/// until the whole batch is decided so that [`UserEventProducer::enqueue_all`] hands every
/// record over at once and one `AddPartitionsToTxn` round trip registers all their
/// partitions (records handed over one by one, with work between them, make librdkafka
/// register the first partition alone and the rest in a second round trip).
#[derive(Debug, Clone)]
pub struct Outgoing {
    topic: UserTopic,
    key: String,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

impl Outgoing {
    /// `event` for its topic, keyed by its `user_id`, with its `event_type` header.
    ///
    /// # Errors
    /// Encoding failed.
    pub fn event<E: UserEvent + Serialize>(event: &E) -> Result<Outgoing, MessagingError> {
        Ok(Outgoing {
            topic: event.topic(),
            key: event.user_id().as_str().to_owned(),
            payload: serde_json::to_vec(event)?,
            headers: Some(type_header(event.event_type_str())),
        })
    }

    /// Its topic.
    #[must_use]
    pub fn topic(&self) -> UserTopic {
        self.topic
    }

    /// Its key (the user id, for an event).
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its value.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Its headers, if any.
    #[must_use]
    pub fn headers(&self) -> Option<&OwnedHeaders> {
        self.headers.as_ref()
    }

    /// Raw bytes for `topic` under `key` (the dead-letter path).
    #[must_use]
    pub fn raw(
        topic: UserTopic,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Outgoing {
        Outgoing {
            topic,
            key: key.to_owned(),
            payload: payload.to_vec(),
            headers,
        }
    }
}

/// A record queued by [`UserEventProducer::enqueue`], not yet acknowledged.
pub struct Queued {
    topic: UserTopic,
    future: rdkafka::producer::future_producer::DeliveryFuture,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Queued {
    /// Waits for Kafka's acknowledgement.
    ///
    /// # Errors
    /// Kafka did not take the record (within the message timeout).
    pub async fn delivered(self) -> Result<Delivery, MessagingError> {
        let delivered = match self.future.await {
            Ok(Ok(d)) => d,
            Ok(Err((e, _))) => return Err(MessagingError::Kafka(e)),
            Err(_) => return Err(MessagingError::Kafka(rdkafka::error::KafkaError::Canceled)),
        };
        metrics::counter!(names::KAFKA_PRODUCED, "topic" => self.topic.name()).increment(1);
        Ok(Delivery {
            partition: delivered.partition,
            offset: delivered.offset,
        })
    }
}

/// Whether a librdkafka complaint is the known noise of a consumer torn down while its group
/// coordinator connection was still authenticating (librdkafka#5003,
/// confluent-kafka-python#1780): nothing failed, and nothing is retried for it.
fn is_teardown_noise(message: &str) -> bool {
    message.contains("GroupCoordinator")
        && message.contains("SASL authentication error")
        && message.contains("Broker transport failure")
        && message.contains("in state DOWN")
}

/// How every suho Kafka client logs librdkafka: as rdkafka's default does, under the
/// `librdkafka` target, except [`is_teardown_noise`], which goes to debug.
fn log_librdkafka(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    if is_teardown_noise(message) {
        tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message} (a consumer closing)");
        return;
    }
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}");
        }
        L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}"),
        L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
    }
}

/// A client's global error, as rdkafka's default logs it, but for [`is_teardown_noise`].
fn log_client_error(error: &rdkafka::error::KafkaError, reason: &str) {
    if is_teardown_noise(reason) {
        tracing::debug!(target: "librdkafka", "librdkafka: {error}: {reason} (a consumer closing)");
    } else {
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
    }
}

/// The context of a suho consumer that needs no other: it logs librdkafka as
/// [`LagContext`] does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ConsumerContext for Quiet {}

/// A consumer's context: turns librdkafka's periodic statistics into the
/// `kafka_consumer_lag{topic,partition,consumer_group}` gauge, and keeps track of the
/// partitions the group gave this consumer.
pub struct LagContext {
    group: String,
    prefix: String,
    assignment: Assignment,
}

/// The partitions a consumer owns right now, shared: revoked partitions leave it before the
/// group hands them to another member, assigned ones join it once the group did.
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    inner: std::sync::Arc<AssignmentInner>,
}

#[derive(Debug, Default)]
struct AssignmentInner {
    owned: std::sync::Mutex<std::collections::BTreeSet<(String, i32)>>,
    changes: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

impl Assignment {
    /// The owned partitions of `topic` (its full name).
    #[must_use]
    pub fn partitions(&self, topic: &str) -> std::collections::BTreeSet<i32> {
        self.inner
            .owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect()
    }

    /// Whether partition `partition` of `topic` is owned.
    #[must_use]
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        self.inner
            .owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&(topic.to_owned(), partition))
    }

    /// How many times the assignment has changed so far.
    #[must_use]
    pub fn changes(&self) -> u64 {
        self.inner.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves at the next change (or at once if one happened since the last wait).
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    fn update(&self, tpl: &rdkafka::TopicPartitionList, add: bool) {
        {
            let mut owned = self
                .inner
                .owned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in tpl.elements() {
                let key = (e.topic().to_owned(), e.partition());
                if add {
                    owned.insert(key);
                } else {
                    owned.remove(&key);
                }
            }
        }
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.changed.notify_one();
    }
}

impl ClientContext for LagContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            let shown = topic
                .strip_prefix(&self.prefix)
                .unwrap_or(topic)
                .to_string();
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!(names::KAFKA_LAG,
                    "topic" => shown.clone(),
                    "partition" => partition.to_string(),
                    "consumer_group" => self.group.clone())
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl LagContext {
    /// The partitions this consumer owns.
    #[must_use]
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }
}

impl ConsumerContext for LagContext {
    // Revoked partitions leave the assignment before the group can give them to another
    // member; assigned ones join it after the assignment took effect.
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked");
            self.assignment.update(tpl, false);
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match rebalance {
            rdkafka::consumer::Rebalance::Assign(tpl) => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned");
                self.assignment.update(tpl, true);
            }
            rdkafka::consumer::Rebalance::Revoke(_) => {}
            rdkafka::consumer::Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance failed");
            }
        }
    }
}

/// How long a service waits for its group consumer to close when it stops
/// ([`UserConsumer::close`]).
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(3);

/// A consumer that is never closed on an async worker.
///
/// It derefs to the rdkafka consumer. Closing one that has a `group.id` (librdkafka revokes
/// the partitions, serves the rebalance, leaves the group and waits for the coordinator) can
/// block, with no timeout of its own, so it never happens on an async worker:
/// [`ClosingConsumer::close`] does it on a thread of its own within a deadline, and dropping
/// it without `close` hands the same work to such a thread without waiting.
pub struct ClosingConsumer<C: ConsumerContext + 'static = Quiet> {
    inner: Option<StreamConsumer<C>>,
    name: String,
}

/// A consumer of user topics in a group, that commits by hand.
pub type UserConsumer = ClosingConsumer<LagContext>;

impl<C: ConsumerContext + 'static> std::ops::Deref for ClosingConsumer<C> {
    type Target = StreamConsumer<C>;

    fn deref(&self) -> &Self::Target {
        // Only `close` and `drop` take the consumer out, and both consume `self`.
        self.inner
            .as_ref()
            .expect("a ClosingConsumer holds its consumer until it is closed")
    }
}

impl<C: ConsumerContext + 'static> ClosingConsumer<C> {
    /// Wraps `consumer`; `name` (its group or purpose) names its closing thread and errors.
    pub fn new(consumer: StreamConsumer<C>, name: impl Into<String>) -> Self {
        ClosingConsumer {
            inner: Some(consumer),
            name: name.into(),
        }
    }

    /// Closes the consumer (leaving its group, if it joined one) on a thread of its own,
    /// waiting at most `deadline`. Offsets are the caller's to commit before (these
    /// consumers never commit on their own). Past the deadline the thread is left to finish
    /// alone and the error says so: the process can still exit.
    ///
    /// # Errors
    /// The close did not finish within `deadline` ([`MessagingError::CloseTimedOut`]).
    pub async fn close(mut self, deadline: Duration) -> Result<(), MessagingError> {
        let name = self.name.clone();
        let Some(done) = self.close_in_background() else {
            return Ok(());
        };
        match tokio::time::timeout(deadline, done).await {
            Ok(_) => {
                tracing::debug!(consumer = %name, "consumer closed");
                Ok(())
            }
            Err(_) => Err(MessagingError::CloseTimedOut {
                consumer: name,
                deadline,
            }),
        }
    }

    /// Moves the consumer to a thread that drops it (rdkafka's drop closes it); the receiver
    /// fires when that is done. `None` when there was nothing to close, or no thread could
    /// be started (the consumer is then leaked rather than closed here).
    fn close_in_background(&mut self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let consumer = self.inner.take()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("kafka-close-{}", self.name))
            .spawn(move || {
                drop(consumer);
                let _ = tx.send(());
            });
        match spawned {
            Ok(_) => Some(rx),
            Err(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "no thread to close the consumer on; leaving it open");
                None
            }
        }
    }
}

impl<C: ConsumerContext + 'static> Drop for ClosingConsumer<C> {
    fn drop(&mut self) {
        let _ = self.close_in_background();
    }
}

/// Creates a consumer in `group` (the configured group prefix is prepended), subscribed
/// to `topics`: manual commits, `read_committed`, starting from the earliest record for a
/// new group, tuned for latency.
///
/// # Errors
/// The configuration is rejected or the subscription fails.
pub fn consumer(
    config: &suho_config::KafkaConfig,
    telemetry: &suho_config::TelemetryConfig,
    group: &str,
    topics: &[UserTopic],
) -> Result<UserConsumer, MessagingError> {
    use rdkafka::consumer::Consumer;
    let group_id = format!("{}{group}", config.group_prefix);
    let consumer: StreamConsumer<LagContext> = consumer_config(config, telemetry, &group_id)
        .create_with_context(LagContext {
            group: group.to_string(),
            prefix: config.topic_prefix.clone(),
            assignment: Assignment::default(),
        })?;
    let names: Vec<String> = topics
        .iter()
        .map(|t| t.full_name(&config.topic_prefix))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    Ok(ClosingConsumer::new(consumer, group))
}

/// Counts one consumed record under `kafka_messages_consumed_total{topic,consumer_group}`.
pub fn count_consumed(topic: UserTopic, group: &str) {
    metrics::counter!(names::KAFKA_CONSUMED, "topic" => topic.name(), "consumer_group" => group.to_string())
        .increment(1);
}

/// Maps a record's topic name back to the [`UserTopic`] it is.
pub fn user_topic_of(prefix: &str, name: &str) -> Option<UserTopic> {
    let bare = name.strip_prefix(prefix)?;
    UserTopic::ALL.into_iter().find(|t| t.name() == bare)
}

/// Headers of a record, as text (for dead-letter records and diagnostics).
pub fn headers_map(headers: Option<&rdkafka::message::BorrowedHeaders>) -> HashMap<String, String> {
    use rdkafka::message::Headers;
    headers
        .map(|h| {
            h.iter()
                .map(|hd| {
                    (
                        hd.key.to_string(),
                        hd.value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking(
    f: impl FnOnce() -> Result<(), rdkafka::error::KafkaError> + Send + 'static,
) -> Result<(), MessagingError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(MessagingError::Kafka),
        // The call panicked or the runtime is shutting down: report it as a transaction
        // failure, which callers abort and retry.
        Err(e) => {
            tracing::error!(error = %e, "a Kafka transaction call did not complete");
            Err(MessagingError::Kafka(rdkafka::error::KafkaError::Canceled))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_closing_consumers_sasl_noise_is_quieted() {
        assert!(super::is_teardown_noise(
            "GroupCoordinator: SASL authentication error: SaslAuthenticateRequest failed: Local: Broker transport failure (after 0ms in state DOWN)"
        ));
        assert!(!super::is_teardown_noise(
            "sasl_ssl://127.0.0.1:9092/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 3ms in state AUTH_REQ)"
        ));
    }

    use super::*;

    #[test]
    fn a_read_has_reached_the_end_when_every_position_has() {
        let mut positions = rdkafka::TopicPartitionList::new();
        positions
            .add_partition_offset("t", 0, rdkafka::Offset::Offset(10))
            .expect("offset");
        positions
            .add_partition_offset("t", 1, rdkafka::Offset::Invalid)
            .expect("offset");
        assert!(reached(&positions, [("t", 0, 10)]));
        assert!(reached(&positions, [("t", 0, 9)]));
        assert!(!reached(&positions, [("t", 0, 11)]));
        // Nothing read yet, or a partition the consumer does not have.
        assert!(!reached(&positions, [("t", 0, 10), ("t", 1, 1)]));
        assert!(!reached(&positions, [("u", 0, 1)]));
        assert!(reached(&positions, []));
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's own vectors (UtilsTest.testMurmur2).
        #[allow(clippy::cast_sign_loss)]
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            #[allow(clippy::cast_sign_loss)]
            let want = want as u32;
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(partition_of(b"21", 6), (-973_932_308_i32 & 0x7fff_ffff) % 6);
    }
}
