//! The baseline: a bare rdkafka two-hop echo on the platform's broker, with the platform's
//! client settings ([`super::clients`]). A producer writes to topic A, keyed like the
//! commands; an echo consumer (a group member, as the engine is) writes each record it reads
//! to topic B; a timing consumer reads B and takes the time. Both topics are created for the
//! phase with `user.commands`' and `user.trades`' partitions and settings.
//!
//! - **echo**: each record is handed to the (idempotent, `acks=all`) producer as it is read;
//!   no offsets are committed.
//! - **echo-tx**: whatever one poll returned (up to 1,000 records) is produced in one Kafka
//!   transaction, committed with the consumed offsets (`send_offsets_to_transaction`); the
//!   timing consumer (`read_committed`) sees the records at the commit.
//! - **echo-jnl** (`--echo-journal`): whatever one poll returned is first written to a
//!   journal topic J (one record per partition of A, to the same partition of J,
//!   acknowledged), read back by the echo's own tail of J, and only then forwarded to B as
//!   the plain echo does. That is the data path of an engine that publishes without Kafka
//!   transactions: its journal is where a newer owner's fence would show before anything of
//!   a zombie's becomes visible. The floor such an engine could reach.
//!
//! Each record carries its sequence number and due time in headers (`seq`, `t_ns`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::FutureExt;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use suho_config::{KafkaConfig, TelemetryConfig};
use suho_domain::{Order, Side, Symbol, TradeCommand, UserId, UserTopic};
use tokio_util::sync::CancellationToken;

use super::{clients, due_offset, new_histogram, record, TradingPath, TradingPhaseResult};

/// Header carrying the record's sequence number.
const SEQ: &str = "seq";
/// Header carrying the due time, nanoseconds after the phase's clock origin.
const T_NS: &str = "t_ns";
/// Warm-up records carry sequence numbers from here on (not measured).
const WARM: u64 = 1 << 62;
/// Records forwarded in one transaction at most.
const TX_BATCH: usize = 1_000;

/// The payload of every baseline record: a real open command's JSON.
///
/// # Errors
/// Encoding failed.
pub(crate) fn sample_payload(
    user: &UserId,
    symbol: Symbol,
    volume: Decimal,
) -> anyhow::Result<bytes::Bytes> {
    let command = TradeCommand::open(
        user.clone(),
        Order {
            symbol,
            side: Side::Buy,
            volume,
            stop_loss: None,
            take_profit: None,
        },
        None,
        suho_messaging::now_ms(),
    );
    Ok(serde_json::to_vec(&command)?.into())
}

/// One baseline phase.
pub(crate) struct EchoPhase<'a> {
    pub(crate) kafka: &'a KafkaConfig,
    pub(crate) telemetry: &'a TelemetryConfig,
    /// Prefix of this phase's topics and groups (unique).
    pub(crate) prefix: String,
    pub(crate) transactional: bool,
    /// The journaled echo instead (see [`journal_loop`]); not with `transactional`.
    pub(crate) journal: bool,
    pub(crate) rate: u32,
    pub(crate) duration: Duration,
    /// Record keys, in turn (the users' ids).
    pub(crate) keys: &'a [String],
    pub(crate) payload: bytes::Bytes,
    pub(crate) backlog_limit: u64,
    pub(crate) drain_timeout: Duration,
}

/// What the timing consumer saw.
struct Timing {
    epoch: Instant,
    inner: Mutex<TimingInner>,
    /// Distinct measured records seen.
    distinct: AtomicU64,
    /// Distinct warm-up records seen.
    warm: AtomicU64,
}

struct TimingInner {
    counts: HashMap<u64, u32>,
    latency: Histogram<u64>,
    last: Option<Instant>,
}

impl Timing {
    fn see(&self, msg: &rdkafka::message::BorrowedMessage<'_>) {
        let at = Instant::now();
        let Some(headers) = msg.headers() else { return };
        let mut seq = None;
        let mut t_ns = None;
        for h in headers.iter() {
            let value = h
                .value
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok());
            match h.key {
                SEQ => seq = value,
                T_NS => t_ns = value,
                _ => {}
            }
        }
        let (Some(seq), Some(t_ns)) = (seq, t_ns) else {
            return;
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let count = inner.counts.entry(seq).or_insert(0);
        *count += 1;
        if *count > 1 {
            return;
        }
        if seq >= WARM {
            self.warm.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let due = self.epoch + Duration::from_nanos(t_ns);
        record(&mut inner.latency, at.saturating_duration_since(due));
        inner.last = inner.last.max(Some(at));
        self.distinct.fetch_add(1, Ordering::Relaxed);
    }
}

/// Creates the phase's topics, each with the partitions and settings of the user topic it is
/// like, and waits until the broker lists them.
async fn create_topics(kafka: &KafkaConfig, topics: &[(&str, UserTopic)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        suho_messaging::kafka::base_config(kafka).create()?;
    let desired = suho_messaging::topics::desired("");
    let configs: Vec<Vec<(&str, String)>> = topics
        .iter()
        .map(|(_, like)| {
            desired
                .iter()
                .find(|t| t.name == like.name())
                .map(|t| t.configs.clone())
                .unwrap_or_default()
        })
        .collect();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&configs)
        .map(|((name, like), configs)| {
            configs.iter().fold(
                NewTopic::new(name, like.partitions(), TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await? {
        if let Err((topic, code)) = r {
            bail!("creating {topic}: {code}");
        }
    }
    let names: Vec<String> = topics.iter().map(|(n, _)| (*n).to_string()).collect();
    clients::wait_for_topics(kafka, &names).await
}

/// The highest offset the journal's tail has read, per partition of J.
#[derive(Default)]
struct Tail {
    read: Mutex<HashMap<i32, i64>>,
    moved: tokio::sync::Notify,
}

impl Tail {
    /// Resolves once the tail has read offset `offset` of partition `partition`.
    async fn reached(&self, partition: i32, offset: i64) {
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let at = self
                .read
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&partition)
                .copied();
            if at.is_some_and(|at| at >= offset) {
                return;
            }
            moved.await;
        }
    }
}

/// Reads J from its end on, noting how far it got, until `stop`.
async fn tail_loop(consumer: StreamConsumer, tail: Arc<Tail>, stop: CancellationToken) {
    loop {
        let m = tokio::select! {
            () = stop.cancelled() => return,
            m = consumer.recv() => m,
        };
        match m {
            Ok(m) => {
                tail.read
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(m.partition(), m.offset());
                tail.moved.notify_waiters();
            }
            Err(e) => tracing::warn!(error = %e, "bench echo: reading the journal"),
        }
    }
}

/// The journaled echo: the design a non-transactional engine would take. Whatever one poll
/// returned is written as one journal record per partition of A to the same partition of J
/// (idempotent, `acks=all`, acknowledged), read back by the echo's own tail of J (where a
/// newer owner's fence would show), and only then forwarded to B record by record, without a
/// transaction; no offsets are committed.
async fn journal_loop(
    consumer: Arc<StreamConsumer>,
    producer: FutureProducer,
    topics: (String, String),
    tail: Arc<Tail>,
    errors: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let (topic_j, topic_b) = topics;
    while let Some(first) = next_record(&consumer, &stop).await {
        let batch = with_what_has_arrived(&consumer, first);
        let mut entries: HashMap<i32, Vec<u8>> = HashMap::new();
        for m in &batch {
            let e = entries.entry(m.partition()).or_default();
            e.extend_from_slice(m.payload().unwrap_or_default());
            e.push(b'\n');
        }
        let written = futures::future::join_all(entries.iter().map(|(partition, entry)| {
            producer.send(
                FutureRecord::<[u8], [u8]>::to(&topic_j)
                    .partition(*partition)
                    .payload(entry),
                Timeout::After(Duration::from_secs(30)),
            )
        }))
        .await;
        let mut confirmed = true;
        for w in written {
            match w {
                Ok(delivery) => tail.reached(delivery.partition, delivery.offset).await,
                Err(_) => confirmed = false,
            }
        }
        if !confirmed {
            errors.fetch_add(batch.len() as u64, Ordering::Relaxed);
            continue;
        }
        for m in &batch {
            forward(&producer, &topic_b, m, &errors);
        }
    }
}

/// The next record of A, or `None` once `stop` comes (a failed read is logged and skipped).
async fn next_record(consumer: &StreamConsumer, stop: &CancellationToken) -> Option<OwnedMessage> {
    loop {
        let m = tokio::select! {
            () = stop.cancelled() => return None,
            m = consumer.recv() => m,
        };
        match m {
            Ok(m) => return Some(m.detach()),
            Err(e) => tracing::warn!(error = %e, "bench echo: reading topic A"),
        }
    }
}

/// `first` and whatever else has already arrived, up to [`TX_BATCH`] records.
fn with_what_has_arrived(consumer: &StreamConsumer, first: OwnedMessage) -> Vec<OwnedMessage> {
    let mut batch = vec![first];
    while batch.len() < TX_BATCH {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(m.detach()),
            _ => break,
        }
    }
    batch
}

/// Hands `m` to `producer` for `topic_b`, its key, payload and headers as they are. The
/// acknowledgement is not waited for: a lost record shows up as missing.
fn forward(producer: &FutureProducer, topic_b: &str, m: &OwnedMessage, errors: &AtomicU64) {
    let mut r = FutureRecord::to(topic_b)
        .key(m.key().unwrap_or_default())
        .payload(m.payload().unwrap_or_default());
    if let Some(h) = m.headers() {
        r = r.headers(h.clone());
    }
    if producer.send_result(r).is_err() {
        errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The echo: reads A, writes B, until `stop`; counts failures in `errors`.
async fn echo_loop(
    consumer: Arc<StreamConsumer>,
    producer: FutureProducer,
    topic_b: String,
    transactional: bool,
    errors: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    while let Some(first) = next_record(&consumer, &stop).await {
        if !transactional {
            forward(&producer, &topic_b, &first, &errors);
            continue;
        }
        let batch = with_what_has_arrived(&consumer, first);
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for m in &batch {
            let e = next
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            let _ = offsets.add_partition_offset(&topic, partition, Offset::Offset(offset));
        }
        let Some(group) = consumer.group_metadata() else {
            errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if producer.begin_transaction().is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        for m in &batch {
            forward(&producer, &topic_b, m, &errors);
        }
        let p = producer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let timeout = Timeout::After(Duration::from_secs(30));
            p.send_offsets_to_transaction(&offsets, &group, timeout)?;
            p.commit_transaction(timeout)
        })
        .await;
        if !matches!(committed, Ok(Ok(()))) {
            errors.fetch_add(1, Ordering::Relaxed);
            let p = producer.clone();
            let _ = tokio::task::spawn_blocking(move || {
                p.abort_transaction(Timeout::After(Duration::from_secs(30)))
            })
            .await;
        }
    }
}

/// The schedule's producer side, owned for the sender thread.
struct Sender {
    producer: FutureProducer,
    topic_a: String,
    keys: Vec<String>,
    payload: bytes::Bytes,
    rate: u32,
    total: u64,
    epoch: Instant,
    backlog_limit: u64,
    timing: Arc<Timing>,
    acked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    accept_ns: Arc<Mutex<Histogram<u64>>>,
}

impl Sender {
    /// Produces record `seq` (keyed by `key`) and counts its acknowledgement.
    fn produce(&self, handle: &tokio::runtime::Handle, seq: u64, key: &str, due: Instant) {
        #[allow(clippy::cast_possible_truncation)]
        let t_ns = due.saturating_duration_since(self.epoch).as_nanos() as u64;
        let (seq_text, t_text) = (seq.to_string(), t_ns.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: SEQ,
                value: Some(seq_text.as_str()),
            })
            .insert(Header {
                key: T_NS,
                value: Some(t_text.as_str()),
            });
        let outgoing = FutureRecord::to(&self.topic_a)
            .key(key)
            .payload(&self.payload[..])
            .headers(headers);
        match self.producer.send_result(outgoing) {
            Ok(delivery) => {
                let (acked, refused, accept_ns) = (
                    Arc::clone(&self.acked),
                    Arc::clone(&self.refused),
                    Arc::clone(&self.accept_ns),
                );
                handle.spawn(async move {
                    if matches!(delivery.await, Ok(Ok(_))) {
                        acked.fetch_add(1, Ordering::Relaxed);
                        if seq < WARM {
                            record(
                                &mut accept_ns.lock().unwrap_or_else(|e| e.into_inner()),
                                due.elapsed(),
                            );
                        }
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The open-loop schedule from `start`; returns (sent, stopped early after).
    fn run(&self, handle: &tokio::runtime::Handle, start: Instant) -> (u64, Option<Duration>) {
        let keys = self.keys.len() as u64;
        for i in 0..self.total {
            let due = start + due_offset(i, self.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if i % 16 == 0
                && i.saturating_sub(self.timing.distinct.load(Ordering::Relaxed))
                    > self.backlog_limit
            {
                return (i, Some(due.saturating_duration_since(start)));
            }
            #[allow(clippy::cast_possible_truncation)]
            let key = &self.keys[(i % keys) as usize];
            self.produce(handle, i, key, due);
        }
        (self.total, None)
    }
}

/// Runs one baseline phase and measures it.
///
/// # Errors
/// The topics or clients cannot be made, or the echo does not start.
pub(crate) async fn run(phase: &EchoPhase<'_>) -> anyhow::Result<TradingPhaseResult> {
    let path = if phase.journal {
        TradingPath::EchoJournal
    } else if phase.transactional {
        TradingPath::EchoTx
    } else {
        TradingPath::Echo
    };
    let total = u64::from(phase.rate) * u64::try_from(phase.duration.as_millis())? / 1000;
    let mut result = TradingPhaseResult::new(path, phase.rate, total)?;
    let (topic_a, topic_b) = (format!("{}a", phase.prefix), format!("{}b", phase.prefix));
    let topic_j = format!("{}j", phase.prefix);
    let mut topics = vec![
        (topic_a.as_str(), UserTopic::Commands),
        (topic_b.as_str(), UserTopic::Trades),
    ];
    if phase.journal {
        // The journal is partitioned as the commands are.
        topics.push((topic_j.as_str(), UserTopic::Commands));
    }
    create_topics(phase.kafka, &topics).await?;
    let stop = CancellationToken::new();
    let epoch = Instant::now();

    // The timing consumer, on every partition of B.
    let timing = Arc::new(Timing {
        epoch,
        inner: Mutex::new(TimingInner {
            counts: HashMap::new(),
            latency: new_histogram()?,
            last: None,
        }),
        distinct: AtomicU64::new(0),
        warm: AtomicU64::new(0),
    });
    let reader: StreamConsumer = clients::consumer(
        phase.kafka,
        phase.telemetry,
        &format!("{}timing", phase.prefix),
    )
    .create()?;
    clients::assign_from_beginning(&reader, &topic_b)?;
    let reader_task = {
        let (timing, stop) = (Arc::clone(&timing), stop.clone());
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    () = stop.cancelled() => return,
                    m = reader.recv() => m,
                };
                match m {
                    Ok(m) => timing.see(&m),
                    Err(e) => tracing::warn!(error = %e, "bench echo: reading topic B"),
                }
            }
        })
    };

    // The echo: a group member on A, producing to B.
    let echo: Arc<StreamConsumer> = Arc::new(
        clients::consumer(
            phase.kafka,
            phase.telemetry,
            &format!("{}echo", phase.prefix),
        )
        .create()?,
    );
    echo.subscribe(&[&topic_a])?;
    let echo_producer: FutureProducer = if phase.transactional {
        let p: FutureProducer =
            clients::transactional_producer(phase.kafka, &format!("{}echo-tx", phase.prefix))
                .create()?;
        let q = p.clone();
        tokio::task::spawn_blocking(move || {
            q.init_transactions(Timeout::After(Duration::from_secs(30)))
        })
        .await??;
        p
    } else {
        clients::producer(phase.kafka).create()?
    };
    let echo_errors = Arc::new(AtomicU64::new(0));
    let echo_task = if phase.journal {
        let tail = Arc::new(Tail::default());
        let tail_reader: StreamConsumer = clients::consumer(
            phase.kafka,
            phase.telemetry,
            &format!("{}tail", phase.prefix),
        )
        .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..UserTopic::Commands.partitions() {
            tpl.add_partition_offset(&topic_j, p, Offset::End)?;
        }
        tail_reader.assign(&tpl)?;
        tokio::spawn(tail_loop(tail_reader, Arc::clone(&tail), stop.clone()));
        tokio::spawn(journal_loop(
            Arc::clone(&echo),
            echo_producer,
            (topic_j, topic_b.clone()),
            tail,
            Arc::clone(&echo_errors),
            stop.clone(),
        ))
    } else {
        tokio::spawn(echo_loop(
            Arc::clone(&echo),
            echo_producer,
            topic_b.clone(),
            phase.transactional,
            Arc::clone(&echo_errors),
            stop.clone(),
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while echo.assignment().map_or(0, |a| a.count()) == 0 {
        if Instant::now() > deadline {
            bail!("the echo consumer got no partitions of {topic_a} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sender = Arc::new(Sender {
        producer: clients::producer(phase.kafka).create()?,
        topic_a,
        keys: phase.keys.to_vec(),
        payload: phase.payload.clone(),
        rate: phase.rate,
        total,
        epoch,
        backlog_limit: phase.backlog_limit,
        timing: Arc::clone(&timing),
        acked: Arc::new(AtomicU64::new(0)),
        refused: Arc::new(AtomicU64::new(0)),
        accept_ns: Arc::new(Mutex::new(new_histogram()?)),
    });

    // Warm-up: one record per key (at most 60), all through the echo, before timing.
    let handle = tokio::runtime::Handle::current();
    let warm = phase.keys.len().min(60) as u64;
    for j in 0..warm {
        #[allow(clippy::cast_possible_truncation)]
        sender.produce(&handle, WARM + j, &phase.keys[j as usize], Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while timing.warm.load(Ordering::Relaxed) < warm || sender.acked.load(Ordering::Relaxed) < warm
    {
        if Instant::now() > deadline {
            bail!("the echo's warm-up did not come through within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let warm_acked = sender.acked.load(Ordering::Relaxed);

    // The schedule, on a blocking thread.
    let start = Instant::now() + Duration::from_millis(10);
    let (acked, refused) = (Arc::clone(&sender.acked), Arc::clone(&sender.refused));
    let schedule = Arc::clone(&sender);
    let (sent, stopped_after) = tokio::task::spawn_blocking(move || schedule.run(&handle, start))
        .await
        .context("the echo's sender thread panicked")?;
    result.sent = sent;
    result.stopped_after = stopped_after;

    // Drain.
    let deadline = Instant::now() + phase.drain_timeout;
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = timing.distinct.load(Ordering::Relaxed);
        let done = acked.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed);
        if done >= warm + sent && seen + refused.load(Ordering::Relaxed) >= sent {
            break;
        }
        if seen != last.0 {
            last = (seen, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) || Instant::now() > deadline {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let _ = echo_task.await;
    let _ = reader_task.await;

    result.accepted = acked.load(Ordering::Relaxed).saturating_sub(warm_acked);
    result.refused = refused.load(Ordering::Relaxed);
    result.accept_ns = sender
        .accept_ns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    drop(sender);
    let inner = timing.inner.lock().unwrap_or_else(|e| e.into_inner());
    let measured = inner.counts.iter().filter(|(seq, _)| **seq < WARM);
    for (_, &count) in measured {
        result.answered += 1;
        result.duplicated += u64::from(count) - 1;
    }
    result.missing = result.accepted.saturating_sub(result.answered);
    let echo_errors = echo_errors.load(Ordering::Relaxed);
    if echo_errors > 0 {
        // Their records are missing from B, which the counts above show.
        result.first_refusal = Some(format!(
            "{echo_errors} echo produce or transaction failures"
        ));
    }
    result.fill_ns = inner.latency.clone();
    let elapsed = inner
        .last
        .map_or(phase.duration, |t| t.saturating_duration_since(start))
        .max(Duration::from_millis(1));
    #[allow(clippy::cast_precision_loss)]
    {
        result.answered_per_sec = result.answered as f64 / elapsed.as_secs_f64();
    }
    Ok(result)
}
