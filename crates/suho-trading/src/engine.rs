//! The consume - decide - publish - commit loop.
//!
//! A batch of `user.commands` records per Kafka transaction: the first record to arrive and
//! whatever else has already arrived (up to `MAX_BATCH`). Begin a transaction; for each
//! record in order, plan it ([`crate::plan`]) and carry the plan out (a dead-letter record, a
//! rejection, or a price request on NATS and an execution at the venue), queueing
//! its outcome without waiting; then wait for every outcome's acknowledgement and commit them
//! with the records' next offsets in that transaction. One transaction per batch rather than
//! per command is what lets the engine keep up: a commit costs several broker round trips.
//!
//! A transient failure (no quote yet, a stale quote, NATS unreachable, a retryable Kafka
//! error) on one record commits the records before it and retries that record with
//! exponential backoff; it is never skipped. A shutdown during that wait leaves the record
//! uncommitted, so it is delivered again on the next start and, because every outcome id is
//! derived from the command, answered with the same event.
//!
//! Records are handled strictly in order across all assigned partitions. This keeps a user's
//! commands ordered; it also means one stuck record holds back every partition this instance
//! owns (later work can split per-partition queues).
//!
//! A journaling engine (`trading.delivery = "journal"`) has no transactions: each batch is
//! written to [`crate::journal`] and confirmed, then published plainly (see `deliver`); a
//! take of partitions publishes what the journal holds and the log lacks (`take_up`).
//!
//! Several engines share the partitions. Whenever the group moves partitions, the engine
//! rebuilds its accounts from the log before it handles another record: the previous owner
//! committed (or aborted) its last transaction before it let the partition go, so the
//! rebuild sees every outcome of that partition's commands. Between commands an engine acts
//! only on the accounts of the users whose partitions it owns ([`ledger::Ownership`]).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use suho_broker::{AccountKey, BrokerAdapter, BrokerError};
use suho_domain::{
    CommandHead, DescribesTrade, PriceReply, TradeEvent, UserEvent, UserId, UserTopic,
};
use suho_messaging::kafka::{self, Assignment, Outgoing, UserConsumer};
use suho_messaging::{now_ms, MarketBus, UserEventProducer};
use tokio_util::sync::CancellationToken;

use crate::ledger;
use crate::plan::{self, Plan, Priced};
use crate::{EngineError, GROUP};

/// The trading engine: consumes `user.commands` in the consumer group [`GROUP`] and answers
/// every command on `user.trades` (or dead-letters an unreadable record), executing them on
/// the venue `B` through its [`BrokerAdapter`] port.
pub struct Engine<B> {
    consumer: UserConsumer,
    bus: MarketBus,
    producer: UserEventProducer,
    backoff: Backoff,
    broker: Arc<B>,
    kafka: suho_config::KafkaConfig,
    /// The transactional producers every command's outcome and offset go through, taken in
    /// turn, one transaction each (set by [`Engine::run`]; see [`TX_PRODUCERS`]).
    tx: std::sync::OnceLock<Vec<UserEventProducer>>,
    /// Which of them the open (or next) transaction is on.
    turn: std::sync::atomic::AtomicUsize,
    /// The `transactional.id` they are numbered under (`{id}-0`, `{id}-1`, ...).
    transactional_id: String,
    /// The broker changed an account in the open transaction: an abort must rebuild.
    dirty: std::sync::atomic::AtomicBool,
    /// How many times the broker changed an account (tells whether a failed record did).
    changes: AtomicU64,
    /// The partitions this engine owns (kept by the consumer's rebalance callbacks).
    assignment: Assignment,
    /// The assignment change the accounts were last rebuilt for.
    rebuilt_for: AtomicU64,
    /// The per-user command rate limit.
    rate: RateLimit,
    /// Live ticks, applied to the accounts in the engine's transactions.
    ticks: Arc<ledger::TickInbox>,
    /// Which accounts this engine acts on between commands (set by [`Engine::run`]).
    ownership: std::sync::OnceLock<ledger::Ownership>,
    /// Where the periodic statuses have got to.
    statuses: Mutex<StatusSweep>,
    /// With `trading.delivery = "journal"`: the journal every batch is written to before its
    /// outcomes go out plainly (no transactions then; see [`crate::journal`]).
    journal: Option<crate::journal::Journal>,
    /// Per owned partition, the first command offset not yet journaled when it was taken:
    /// records before it were answered by a previous owner.
    resume: Mutex<HashMap<i32, i64>>,
    /// A journaling engine's last batch, handed to the producer and not yet acknowledged.
    in_flight: Mutex<Option<InFlight>>,
}

/// A journaled batch's records on their way to Kafka (see `Engine::land`).
struct InFlight {
    queued: Vec<suho_messaging::kafka::Queued>,
    /// Its entries: partition and offset.
    written: Vec<(i32, i64)>,
    /// Its partitions' next command offsets.
    next: std::collections::BTreeMap<i32, i64>,
}

/// The periodic statuses' progress through the owned accounts, in key order.
struct StatusSweep {
    /// When the last slice went out.
    since: std::time::Instant,
    /// The first account of the next slice.
    next: Option<AccountKey>,
}

impl StatusSweep {
    /// The slice of `owned` (sorted) due now: as many accounts as the time since the last
    /// slice is a share of [`ledger::STATUS_EVERY`] (rounded down, all at most), from where
    /// the last slice ended; none before [`STATUS_SLICE_EVERY`].
    fn due(&mut self, owned: &[AccountKey]) -> Vec<AccountKey> {
        let elapsed = self.since.elapsed();
        if elapsed < STATUS_SLICE_EVERY {
            return Vec::new();
        }
        let wanted =
            (owned.len() as u128 * elapsed.as_nanos()) / ledger::STATUS_EVERY.as_nanos().max(1);
        let n = usize::try_from(wanted)
            .unwrap_or(usize::MAX)
            .min(owned.len());
        if n == 0 {
            // Not one account's worth yet: the time counts on.
            return Vec::new();
        }
        self.since = std::time::Instant::now();
        let start = self
            .next
            .as_ref()
            .map_or(0, |k| owned.partition_point(|x| x < k) % owned.len());
        let slice: Vec<AccountKey> = owned.iter().cycle().skip(start).take(n).cloned().collect();
        self.next = owned.get((start + n) % owned.len()).cloned();
        slice
    }
}

/// At most `limit` executed commands per user in any second, by the records' timestamps
/// (stable across redeliveries, unlike the clock at handling time).
#[derive(Debug)]
struct RateLimit {
    limit: u32,
    recent: Mutex<HashMap<UserId, VecDeque<i64>>>,
}

impl RateLimit {
    const WINDOW_MS: i64 = 1_000;

    fn new(limit: u32) -> RateLimit {
        RateLimit {
            limit,
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user` may have one more command at `at_ms`, besides `pending` ones not yet
    /// recorded.
    fn allows(&self, user: &UserId, at_ms: i64, pending: usize) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(times) = recent.get_mut(user) else {
            return pending < self.limit as usize;
        };
        while times.front().is_some_and(|&t| t <= at_ms - Self::WINDOW_MS) {
            times.pop_front();
        }
        times.iter().filter(|&&t| t <= at_ms).count() + pending < self.limit as usize
    }

    /// Counts a command of `user` at `at_ms` that got its answer.
    fn record(&self, user: &UserId, at_ms: i64) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() > 100_000 {
            recent.retain(|_, t| t.back().is_some_and(|&last| last > at_ms - Self::WINDOW_MS));
        }
        recent.entry(user.clone()).or_default().push_back(at_ms);
    }
}

impl<B> std::fmt::Debug for Engine<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("group", &GROUP)
            .field("bus_prefix", &self.bus.prefix())
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// How long to wait before the next try of a transient failure.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &suho_config::TradingConfig) -> Backoff {
        let initial = Duration::from_millis(config.retry_initial_ms.max(1));
        Backoff {
            initial,
            max: Duration::from_millis(config.retry_max_ms).max(initial),
        }
    }

    fn next(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.max)
    }
}

/// The result of one try at carrying out a plan.
enum Attempt {
    /// The outcome is queued in the open transaction; once it is acknowledged, the record
    /// may be committed.
    Done,
    /// Nothing final happened; try the same record again later, for this reason.
    Retry(String),
}

/// The quotes asked for in one try at a batch.
type Prices = HashMap<suho_domain::Symbol, Priced>;

/// The least time between two transactions of ticks alone: a tick that reaches a resting
/// order waits at most this long for its round (a round whose ticks did nothing is aborted
/// before it reaches the broker).
const TICK_ROUND_EVERY: Duration = Duration::from_millis(10);

/// The periodic statuses go out a slice of the owned accounts at a time, at most this often
/// (every account once per [`ledger::STATUS_EVERY`]): ten thousand accounts' statuses in
/// one transaction would hold up the fills behind it.
const STATUS_SLICE_EVERY: Duration = Duration::from_millis(500);

/// How many transactional producers the engine takes in turn. A transaction begun on the
/// producer that has just committed meets `CONCURRENT_TRANSACTIONS` until the coordinator
/// has written the previous one's markers, and librdkafka retries that after a fixed 20 ms
/// (`rdkafka_txnmgr.c`); on the next producer in turn the previous transaction is long
/// complete. Transactions stay one at a time, in order.
const TX_PRODUCERS: usize = 3;

/// The most records one transaction carries.
const MAX_BATCH: usize = 500;

/// A record taken from `user.commands`, with what to do about it.
struct Taken {
    msg: OwnedMessage,
    plan: Plan,
    /// Its Kafka timestamp (for the rate limit).
    at: i64,
    /// The assignment change it was received under.
    epoch: u64,
}

/// Where one try at a batch spent its time, logged at `debug` (`suho_trading::engine`): the
/// figures that explain the command -> fill latency (see docs/benchmarks.md).
struct BatchTimes {
    last: std::time::Instant,
    /// Begin, ticks, prices, execute, publish (the records handed over and acknowledged),
    /// offsets (added to the transaction), commit.
    spans: [Duration; 7],
    next: usize,
}

impl BatchTimes {
    fn new(began: std::time::Instant) -> BatchTimes {
        let mut t = BatchTimes {
            last: began,
            spans: [Duration::ZERO; 7],
            next: 0,
        };
        t.mark();
        t
    }

    /// Ends the current span.
    fn mark(&mut self) {
        let now = std::time::Instant::now();
        if let Some(s) = self.spans.get_mut(self.next) {
            *s = now - self.last;
        }
        self.last = now;
        self.next += 1;
    }

    fn log(&self, records: usize, sends: usize) {
        let us = |i: usize| self.spans[i].as_micros();
        tracing::debug!(
            records,
            sends,
            begin_us = us(0),
            ticks_us = us(1),
            prices_us = us(2),
            execute_us = us(3),
            publish_us = us(4),
            offsets_us = us(5),
            commit_us = us(6),
            "batch committed"
        );
    }

    /// [`BatchTimes::log`] for a journaling engine, whose spans after the execution are the
    /// journal (entries appended and confirmed), the publication, and the offset commit.
    fn log_journaled(&self, records: usize, sends: usize) {
        let us = |i: usize| self.spans[i].as_micros();
        tracing::debug!(
            records,
            sends,
            ticks_us = us(1),
            prices_us = us(2),
            execute_us = us(3),
            journal_us = us(4),
            publish_us = us(5),
            commit_us = us(6),
            "batch journaled and published"
        );
    }
}

/// What became of a journaling engine's batch.
enum Delivered {
    /// Journaled and published.
    Published,
    /// Nothing went out; try again, for this reason.
    Retry(String),
    /// The journal may hold the batch: the partitions are to be taken again before
    /// anything else ([`Engine::undecided`]).
    Undecided,
    /// Another engine took a partition of the batch: nothing went out, nor will.
    Lost,
}

/// What one try at a batch did.
struct Tried {
    /// Records committed (and removed from the batch).
    committed: usize,
    /// Why the next record must wait, if one must.
    retry: Option<String>,
}

impl Tried {
    fn failed(reason: String) -> Tried {
        Tried {
            committed: 0,
            retry: Some(reason),
        }
    }
}

/// How handling a record ended.
enum Settled {
    /// The outcome is acknowledged.
    Done,
    /// Shutdown came first; the record stays uncommitted.
    Interrupted,
}

impl<B: BrokerAdapter + 'static> Engine<B> {
    /// Creates the engine on the venue `broker` and its consumer, subscribed to
    /// `user.commands` in the group [`GROUP`] (the configured group prefix is prepended), with
    /// manual commits.
    ///
    /// # Errors
    /// The engine's credentials are missing, or the Kafka clients cannot be created or the
    /// consumer subscribed.
    pub fn new(
        config: &suho_config::Config,
        bus: MarketBus,
        broker: B,
    ) -> Result<Engine<B>, EngineError> {
        // Every Kafka client of the engine logs in as the engine.
        let kafka = kafka::bind(config, suho_security::Identity::Engine)?;
        let producer = UserEventProducer::new(&kafka)?;
        let consumer = kafka::consumer(&kafka, &config.telemetry, GROUP, &[UserTopic::Commands])?;
        let assignment = consumer.context().assignment().clone();
        let journal = match config.trading.delivery {
            suho_config::Delivery::Transactions => None,
            suho_config::Delivery::Journal => Some(crate::journal::Journal::new(
                &kafka,
                &config.trading.instance_id,
            )?),
        };
        Ok(Engine {
            consumer,
            bus,
            producer,
            backoff: Backoff::new(&config.trading),
            broker: Arc::new(broker),
            tx: std::sync::OnceLock::new(),
            turn: std::sync::atomic::AtomicUsize::new(0),
            transactional_id: format!(
                "{}{GROUP}-{}",
                kafka.group_prefix, config.trading.instance_id
            ),
            kafka,
            dirty: std::sync::atomic::AtomicBool::new(false),
            changes: AtomicU64::new(0),
            assignment,
            rebuilt_for: AtomicU64::new(0),
            rate: RateLimit::new(config.trading.max_commands_per_second),
            ticks: Arc::new(ledger::TickInbox::default()),
            ownership: std::sync::OnceLock::new(),
            statuses: Mutex::new(StatusSweep {
                since: std::time::Instant::now(),
                next: None,
            }),
            journal,
            resume: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(None),
        })
    }

    /// Runs until `shutdown` is cancelled, then commits what it has stored and returns.
    ///
    /// # Errors
    /// Only a fatal error: Kafka refuses this consumer for good (authorization, a fatal
    /// client error), `user.settings` cannot be read to its end within two minutes of
    /// retries (the users' limits would be unknown), or an outcome cannot be published and
    /// retrying cannot help (the topic does not exist, the record is too large). Transient
    /// failures are retried.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), EngineError> {
        tracing::info!(
            group = GROUP,
            topic = %self.producer.topic_name(UserTopic::Commands),
            "trading engine consuming"
        );
        // The users' own limits, read to the end before the first command.
        let Some(settings) = crate::limits::follow(
            Arc::clone(&self.broker),
            &self.kafka,
            (self.backoff.initial, self.backoff.max),
            shutdown.clone(),
        )
        .await?
        else {
            return Ok(());
        };
        // The accounts are rebuilt when the group assigns partitions (see `follow_assignment`);
        // which users' accounts this engine acts on between commands follows from the
        // partition count of user.commands.
        let commands = UserTopic::Commands.full_name(&self.kafka.topic_prefix);
        let mut delay = self.backoff.initial;
        let partitions = loop {
            match ledger::partition_count(&self.kafka, commands.clone()).await {
                Ok(n) => break n,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = millis(delay), "reading user.commands' partitions failed; retrying");
                    if !wait(delay, &shutdown).await {
                        return Ok(());
                    }
                    delay = self.backoff.next(delay);
                }
            }
        };
        let ownership = ledger::Ownership::new(self.assignment.clone(), commands, partitions);
        // The transactional producers: their initialisation also aborts what a previous engine
        // with the same transactional ids left open. A journaling engine has none.
        let mut delay = self.backoff.initial;
        while self.journal.is_none() {
            let kafka = &self.kafka;
            let started = futures::future::try_join_all((0..TX_PRODUCERS).map(|k| {
                let id = format!("{}-{k}", self.transactional_id);
                async move { UserEventProducer::transactional(kafka, &id).await }
            }))
            .await;
            match started {
                Ok(tx) => {
                    let _ = self.tx.set(tx);
                    break;
                }
                Err(suho_messaging::MessagingError::Kafka(KafkaError::ClientCreation(e))) => {
                    return Err(EngineError::Config(format!(
                        "the transactional producer's configuration: {e}"
                    )));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = millis(delay), "starting the transactional producer failed; retrying");
                    if !wait(delay, &shutdown).await {
                        return Ok(());
                    }
                    delay = self.backoff.next(delay);
                }
            }
        }
        let _ = self.ownership.set(ownership);
        let ticks = tokio::spawn(ledger::run_ticks(
            self.bus.clone(),
            Arc::clone(&self.ticks),
            shutdown.clone(),
        ));
        let result = self.consume(&shutdown).await;
        shutdown.cancel();
        if let Some(journal) = &self.journal {
            // The last batch lands before the group moves on, or the next owner may find it
            // unpublished and publish it a second time (bounded: a stop must not wait on a
            // broker that is away; the journal has the batch in any case).
            match tokio::time::timeout(Duration::from_secs(5), self.land(journal)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the last batch did not land; the journal has it");
                }
                Err(_) => {
                    tracing::warn!("the last batch did not land within 5 s; the journal has it")
                }
            }
        }
        if let Err(e) = settings.await {
            tracing::warn!(error = %e, "the settings reader panicked");
        }
        match ticks.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the broker's tick feed stopped"),
            Err(e) => tracing::warn!(error = %e, "the broker's tick feed panicked"),
            Ok(Ok(())) => {}
        }
        // Leave the group now, off the async workers and within a deadline, so the partitions
        // move to another engine at once and nothing is left for a drop to block on.
        if let Err(e) = self.consumer.close(kafka::CLOSE_DEADLINE).await {
            tracing::warn!(error = %e, "leaving the consumer group");
        }
        tracing::info!(group = GROUP, "trading engine stopped");
        result
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), EngineError> {
        let mut batch: VecDeque<Taken> = VecDeque::new();
        let mut recv_delay = self.backoff.initial;
        let mut last_round = tokio::time::Instant::now();
        loop {
            if !self.follow_assignment(shutdown).await {
                return Ok(());
            }
            if batch.is_empty() {
                // Idle: ticks (and the periodic statuses) get transactions of their own, at
                // most one per TICK_ROUND_EVERY.
                let tick_round = async {
                    tokio::select! {
                        () = self.ticks.arrived() => {}
                        () = tokio::time::sleep(STATUS_SLICE_EVERY) => {}
                    }
                    tokio::time::sleep_until(last_round + TICK_ROUND_EVERY).await;
                };
                let received = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    () = self.assignment.changed() => continue,
                    r = self.consumer.recv() => r,
                    () = tick_round => {
                        last_round = tokio::time::Instant::now();
                        self.tick_round().await?;
                        continue;
                    }
                };
                match received {
                    Ok(msg) => {
                        recv_delay = self.backoff.initial;
                        self.take(&msg, &mut batch);
                    }
                    Err(e) if is_fatal_consume_error(&e) => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = millis(recv_delay), "reading user.commands failed; retrying");
                        if !wait(recv_delay, shutdown).await {
                            return Ok(());
                        }
                        recv_delay = self.backoff.next(recv_delay);
                        continue;
                    }
                }
            }
            // Whatever else has already arrived joins the batch, without waiting.
            while batch.len() < MAX_BATCH {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(msg)) => self.take(&msg, &mut batch),
                    Some(Err(e)) if is_fatal_consume_error(&e) => return Err(e.into()),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "reading user.commands failed");
                        break;
                    }
                    None => break,
                }
            }
            // Records taken before the latest rebalance are delivered again from the
            // committed offsets (or to another engine): only the latest epoch's stay.
            let epoch = self.assignment.changes();
            batch.retain(|t| t.epoch == epoch && !self.answered(&t.msg));
            if epoch != self.rebuilt_for.load(Ordering::SeqCst) {
                continue;
            }
            match self.settle(&mut batch, shutdown).await? {
                Settled::Done => {}
                Settled::Interrupted => return Ok(()),
            }
        }
    }

    /// Adds a record to the batch with its plan, unless its partition is no longer ours.
    fn take(&self, msg: &BorrowedMessage<'_>, batch: &mut VecDeque<Taken>) {
        let epoch = self.assignment.changes();
        if !self.assignment.owns(msg.topic(), msg.partition()) {
            tracing::info!(
                partition = msg.partition(),
                offset = msg.offset(),
                "a record of a partition this engine no longer owns is left to its new owner"
            );
            return;
        }
        if self.answered(msg) {
            tracing::info!(
                partition = msg.partition(),
                offset = msg.offset(),
                "a command the journal shows answered is skipped"
            );
            return;
        }
        kafka::count_consumed(UserTopic::Commands, GROUP);
        batch.push_back(Taken {
            plan: plan::plan(msg.key(), msg.payload()),
            at: record_time(msg),
            epoch,
            msg: msg.detach(),
        });
    }

    /// Whether a journaling engine's take found `msg` answered by a previous owner.
    fn answered(&self, msg: &impl Message) -> bool {
        self.resume
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&msg.partition())
            .is_some_and(|next| msg.offset() < *next)
    }

    /// The plan of `t`, or a rejection if it would take its user over the rate limit
    /// (counting `earlier` commands of this batch).
    fn rate_checked<'t>(&self, t: &'t Taken, earlier: &[(UserId, i64)]) -> Cow<'t, Plan> {
        if let Some(head) = t.plan.head().filter(|_| t.plan.executes()) {
            let in_batch = earlier
                .iter()
                .filter(|(u, at)| u == &head.user_id && *at <= t.at && *at > t.at - 1_000)
                .count();
            if !self.rate.allows(&head.user_id, t.at, in_batch) {
                return Cow::Owned(Plan::Reject {
                    head: head.clone(),
                    kind: t.plan.kind(),
                    reason: suho_broker::RejectReason::RateLimited(self.rate.limit).to_string(),
                });
            }
        }
        Cow::Borrowed(&t.plan)
    }

    /// After the group moved partitions: rebuilds every account from the log (until that
    /// works); `false` when shutdown came first. A no-op when nothing moved.
    async fn follow_assignment(&self, shutdown: &CancellationToken) -> bool {
        let mut delay = self.backoff.initial;
        loop {
            let changes = self.assignment.changes();
            if changes == self.rebuilt_for.load(Ordering::SeqCst) {
                return true;
            }
            let commands = UserTopic::Commands.full_name(&self.kafka.topic_prefix);
            let owned = self.assignment.partitions(&commands);
            if owned.is_empty() {
                // Nothing to act on until partitions come back, then rebuilt afresh.
                self.broker.restore(&[]);
                self.rebuilt_for.store(changes, Ordering::SeqCst);
                return true;
            }
            let rebuilt = match &self.journal {
                None => ledger::rebuild(&*self.broker, &self.kafka).await,
                Some(journal) => self.take_up(journal, &owned).await,
            };
            match rebuilt {
                Ok(applied) => {
                    self.rebuilt_for.store(changes, Ordering::SeqCst);
                    tracing::info!(
                        events = applied,
                        accounts = self.broker.accounts().len(),
                        partitions = ?owned,
                        "accounts rebuilt for this engine's partitions"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = millis(delay), "rebuilding the accounts failed; retrying");
                    if !wait(delay, shutdown).await {
                        return false;
                    }
                    delay = self.backoff.next(delay);
                }
            }
        }
    }

    /// A journaling engine's take of `owned`: a fence on each partition's journal, then what
    /// the previous owners journaled and the log lacks is published (the journal holds no
    /// statuses: fresh ones follow), the partitions' commands resume after the last
    /// journaled one, and the accounts are restored from the log; the number of events
    /// applied.
    async fn take_up(
        &self,
        journal: &crate::journal::Journal,
        owned: &std::collections::BTreeSet<i32>,
    ) -> Result<usize, EngineError> {
        // The batch in flight lands first, or the take would find it unpublished and publish
        // it again (if it cannot land, the take publishes it).
        if let Err(e) = self.land(journal).await {
            tracing::warn!(error = %e, "the last batch did not land; the journal has it");
        }
        let partitions: Vec<i32> = owned.iter().copied().collect();
        let taken = journal.take(&partitions).await?;
        let mut events = ledger::read_events(&self.kafka).await?;
        let present: std::collections::HashSet<&str> =
            events.iter().map(|(_, e)| e.event_id()).collect();
        let mut missing = Vec::new();
        for t in taken.values() {
            for (_, outcomes) in &t.unpublished {
                for o in outcomes {
                    let record = o.record()?;
                    let known = o.event_id().is_some_and(|id| present.contains(id.as_str()));
                    if !known {
                        missing.push(record);
                    }
                }
            }
        }
        let republished = missing.len();
        if republished > 0 {
            publish(&self.producer, missing).await?;
            tracing::info!(
                records = republished,
                "published what the previous owner journaled and had not published"
            );
            events = ledger::read_events(&self.kafka).await?;
        }
        let mut resume = self.resume.lock().unwrap_or_else(PoisonError::into_inner);
        resume.clear();
        for (p, t) in &taken {
            journal.published(*p, t.fence);
            if let Some(next) = t.next_command {
                resume.insert(*p, next);
            }
        }
        drop(resume);
        let applied = ledger::restore(&*self.broker, &events);
        self.dirty.store(false, Ordering::SeqCst);
        Ok(applied)
    }

    /// Carries out the batch's records in Kafka transactions with their offsets, retrying
    /// transient failures until all are done or shutdown comes. The records are tried in
    /// order in one transaction; when one meets a transient failure, those before it are
    /// committed and it is tried again after a backoff. A try that fails as a whole is
    /// aborted (nothing of it becomes visible) and, if the broker had already changed an
    /// account, the accounts are rebuilt from the log, so the retry starts from what was
    /// committed.
    async fn settle(
        &self,
        batch: &mut VecDeque<Taken>,
        shutdown: &CancellationToken,
    ) -> Result<Settled, EngineError> {
        let mut delay = self.backoff.initial;
        let mut tries: u32 = 1;
        while let Some(head) = batch.front() {
            if self.rebuilt_for.load(Ordering::SeqCst) != self.assignment.changes() {
                // The partitions are to be taken again first (see `Engine::undecided`).
                return Ok(Settled::Done);
            }
            let (partition, offset) = (head.msg.partition(), head.msg.offset());
            let began = std::time::Instant::now();
            let reason = match self.begin().await {
                Err(e) => format!("beginning a transaction: {e}"),
                Ok(()) => match self.try_batch(batch, began).await {
                    Err(e) => {
                        self.abort().await;
                        return Err(e);
                    }
                    Ok(Tried { committed, retry }) => {
                        if committed > 0 {
                            delay = self.backoff.initial;
                            tries = 1;
                        }
                        match retry {
                            None => continue,
                            Some(reason) => reason,
                        }
                    }
                },
            };
            tracing::warn!(
                partition,
                offset,
                tries,
                retry_in_ms = millis(delay),
                reason = %reason,
                "transient failure; retrying the same command"
            );
            if !wait(delay, shutdown).await {
                tracing::info!(
                    partition,
                    offset,
                    "shutdown while retrying; the record stays uncommitted"
                );
                return Ok(Settled::Interrupted);
            }
            delay = self.backoff.next(delay);
            tries = tries.saturating_add(1);
        }
        Ok(Settled::Done)
    }

    /// One try in the open transaction: carries out the batch's records in order until one
    /// must wait, then waits for every record sent and commits them with their offsets, and
    /// removes them from the batch. A failure of the whole try aborts it.
    async fn try_batch(
        &self,
        batch: &mut VecDeque<Taken>,
        began: std::time::Instant,
    ) -> Result<Tried, EngineError> {
        let mut times = BatchTimes::new(began);
        let mut sends: Vec<Outgoing> = Vec::new();
        self.apply_ticks(&mut sends).await?;
        times.mark();
        let mut prices = self.prefetch(batch).await;
        times.mark();
        let mut counted: Vec<(UserId, i64)> = Vec::new();
        let mut done = 0;
        let mut stop = None;
        // Which partition's command each outcome answers (the ticks' belong to their users').
        let mut answers: Vec<(i32, std::ops::Range<usize>)> = Vec::new();
        for t in batch.iter() {
            let changes = self.changes.load(Ordering::SeqCst);
            let plan = self.rate_checked(t, &counted);
            let from = sends.len();
            match self.attempt(&t.msg, &plan, &mut prices, &mut sends).await? {
                Attempt::Done => {
                    answers.push((t.msg.partition(), from..sends.len()));
                    done += 1;
                    if let Some(head) = plan.head() {
                        counted.push((head.user_id.clone(), t.at));
                    }
                }
                Attempt::Retry(reason) => {
                    if self.changes.load(Ordering::SeqCst) != changes {
                        // The broker changed an account for this record but its outcome
                        // did not go out: only a rebuild undoes that.
                        self.abort().await;
                        return Ok(Tried::failed(reason));
                    }
                    stop = Some(reason);
                    break;
                }
            }
        }
        if done == 0 && sends.is_empty() {
            self.abort().await;
            return Ok(Tried::failed(stop.unwrap_or_default()));
        }
        times.mark();
        let sent = sends.len();
        if let Some(journal) = &self.journal {
            let records: Vec<&Taken> = batch.iter().take(done).collect();
            match self
                .deliver(journal, sends, &records, &answers, &mut times)
                .await?
            {
                Delivered::Published => {}
                Delivered::Retry(reason) => return Ok(Tried::failed(reason)),
                Delivered::Undecided => {
                    return Ok(Tried {
                        committed: 0,
                        retry: None,
                    })
                }
                Delivered::Lost => {
                    // The records are the new owner's now; this engine hears of the
                    // rebalance at its next poll.
                    batch.clear();
                    return Ok(Tried {
                        committed: 0,
                        retry: None,
                    });
                }
            }
            times.log_journaled(done, sent);
            for (user, at) in &counted {
                self.rate.record(user, *at);
            }
            batch.drain(..done);
            return Ok(Tried {
                committed: done,
                retry: stop,
            });
        }
        // Every outcome goes to the producer at once; the records' offsets join the
        // transaction once the outcomes are acknowledged (see `UserEventProducer`).
        let published = publish(self.out(), sends).await;
        if let Err(e) = published {
            self.abort().await;
            if e.is_retryable() {
                return Ok(Tried::failed(format!("publishing an outcome: {e}")));
            }
            return Err(e.into());
        }
        times.mark();
        let offsets = self.send_offsets(batch.iter().take(done)).await;
        times.mark();
        if let Err(e) = offsets {
            self.abort().await;
            return Ok(Tried::failed(format!(
                "adding the offsets to the transaction: {e}"
            )));
        }
        if done > 0 {
            crate::failpoint::hit("engine.before_commit");
        }
        if let Err(e) = self.out().commit().await {
            self.abort().await;
            return Ok(Tried::failed(format!("committing the transaction: {e}")));
        }
        self.dirty.store(false, Ordering::SeqCst);
        times.mark();
        times.log(done, sent);
        for (user, at) in &counted {
            self.rate.record(user, *at);
        }
        batch.drain(..done);
        Ok(Tried {
            committed: done,
            retry: stop,
        })
    }

    /// The producer outcomes go through: the open transaction's once [`Engine::run`] set
    /// them up.
    fn out(&self) -> &UserEventProducer {
        self.tx
            .get()
            .and_then(|tx| tx.get(self.turn.load(Ordering::SeqCst) % tx.len()))
            .unwrap_or(&self.producer)
    }

    /// A journaling engine's delivery of a batch: its entries (one per partition concerned:
    /// the outcomes of the partition's `records` and `answers`, the ticks' by their users'
    /// partitions) are journaled and confirmed; then the previous batch lands
    /// ([`Engine::land`]: its acknowledgements, then its offsets) and this one's outcomes are
    /// handed to the producer, to land with the next. When the journal may hold the batch but
    /// something failed, the partitions are taken again ([`Engine::undecided`]); when another
    /// engine took a partition of it, nothing goes out and the accounts are rebuilt from the
    /// log if the venue had changed one.
    async fn deliver(
        &self,
        journal: &crate::journal::Journal,
        sends: Vec<Outgoing>,
        records: &[&Taken],
        answers: &[(i32, std::ops::Range<usize>)],
        times: &mut BatchTimes,
    ) -> Result<Delivered, EngineError> {
        let Some(own) = self.ownership.get() else {
            return Ok(Delivered::Retry("the engine has not started".into()));
        };
        let mut next: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
        for t in records {
            let n = next.entry(t.msg.partition()).or_insert(0);
            *n = (*n).max(t.msg.offset() + 1);
        }
        let mut entries: std::collections::BTreeMap<
            i32,
            (Option<i64>, Vec<crate::journal::Outcome>),
        > = next
            .iter()
            .map(|(p, n)| (*p, (Some(*n), Vec::new())))
            .collect();
        // `answers` are in order and do not overlap: one pass over both.
        let mut answering = answers.iter().peekable();
        for (i, record) in sends.iter().enumerate() {
            while answering.peek().is_some_and(|(_, r)| r.end <= i) {
                answering.next();
            }
            let partition = match answering.peek() {
                Some((p, r)) if r.contains(&i) => *p,
                _ => own.partition(record.key()),
            };
            let entry = entries.entry(partition).or_default();
            // A status is not journaled (it holds no state, and a new owner sends fresh ones),
            // but its partition's entry is still written and confirmed: a thawed engine must
            // not publish even a status.
            if record.topic() != UserTopic::Mt5Status {
                entry.1.push(crate::journal::Outcome::of(record));
            }
        }
        if entries.is_empty() {
            // Nothing new: the batch in flight lands.
            if let Err(e) = self.land(journal).await {
                return Ok(self.undecided(format!("publishing the previous batch: {e}")));
            }
            return Ok(Delivered::Published);
        }
        let entries = entries.into_iter().map(|(p, (n, o))| (p, n, o)).collect();
        let written = match journal.append(entries).await {
            Ok(w) => w,
            Err(e) => return Ok(self.undecided(format!("journaling the batch: {e}"))),
        };
        match journal.confirm(&written).await {
            Ok(Ok(())) => {}
            Ok(Err(fenced)) => {
                tracing::warn!(
                    partition = fenced.partition,
                    by = %fenced.by,
                    "another engine took the partition: this batch is not published"
                );
                self.abort().await;
                return Ok(Delivered::Lost);
            }
            Err(e) => return Ok(self.undecided(format!("confirming the journal: {e}"))),
        }
        times.mark();
        if !records.is_empty() {
            crate::failpoint::hit("engine.after_journal");
        }
        // Journaled: from here the batch is decided, and only publishing it remains. The
        // previous batch's acknowledgements are awaited only now, so that they overlapped this
        // batch's execution and journal; its records were handed to the producer before this
        // batch's, so each partition keeps their order.
        if let Err(e) = self.land(journal).await {
            return Ok(self.undecided(format!("publishing the previous batch: {e}")));
        }
        times.mark();
        let queued = match self.producer.enqueue_all(sends) {
            Ok(q) => q,
            Err(e) => return Ok(self.undecided(format!("publishing the batch: {e}"))),
        };
        *self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(InFlight {
            queued,
            written,
            next,
        });
        self.dirty.store(false, Ordering::SeqCst);
        times.mark();
        Ok(Delivered::Published)
    }

    /// Waits for the acknowledgements of the batch a journaling engine published last, then
    /// marks its entries published and commits its offsets without waiting (a new owner
    /// resumes after the journal's in any case).
    ///
    /// # Errors
    /// Kafka did not take one of its records: the journal holds the batch, and the partitions
    /// must be taken again ([`Engine::undecided`]) for it to be published.
    async fn land(
        &self,
        journal: &crate::journal::Journal,
    ) -> Result<(), suho_messaging::MessagingError> {
        let Some(batch) = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        let mut failure = None;
        for q in batch.queued {
            if let Err(e) = q.delivered().await {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        for (p, offset) in &batch.written {
            journal.published(*p, *offset);
        }
        if batch.next.is_empty() {
            return Ok(());
        }
        crate::failpoint::hit("engine.before_offsets");
        let commands = UserTopic::Commands.full_name(&self.kafka.topic_prefix);
        let mut offsets = rdkafka::TopicPartitionList::new();
        for (p, n) in &batch.next {
            offsets.add_partition_offset(&commands, *p, rdkafka::Offset::Offset(*n))?;
        }
        if let Err(e) = self
            .consumer
            .commit(&offsets, rdkafka::consumer::CommitMode::Async)
        {
            tracing::debug!(error = %e, "committing offsets (the journal has them)");
        }
        Ok(())
    }

    /// The journal may or may not hold a batch (its entries' writing or confirmation
    /// failed): executing it again could journal other outcomes for the same commands, so
    /// the partitions are taken again first ([`Engine::take_up`]: whatever the journal holds
    /// is published, and its commands skipped).
    fn undecided(&self, reason: String) -> Delivered {
        tracing::warn!(reason = %reason, "the journal may hold the batch: taking the partitions again");
        self.rebuilt_for.store(u64::MAX, Ordering::SeqCst);
        Delivered::Undecided
    }

    /// Begins a transaction on the next producer in turn (nothing for a journaling engine).
    async fn begin(&self) -> Result<(), suho_messaging::MessagingError> {
        if self.journal.is_some() {
            return Ok(());
        }
        self.turn.fetch_add(1, Ordering::SeqCst);
        self.out().begin().await
    }

    /// Adds the records' next offsets to the open transaction (nothing when there are none:
    /// a transaction of ticks alone).
    async fn send_offsets(&self, records: impl Iterator<Item = &Taken>) -> Result<(), EngineError> {
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for t in records {
            let e = next
                .entry((t.msg.topic().to_owned(), t.msg.partition()))
                .or_insert(0);
            *e = (*e).max(t.msg.offset() + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut offsets = rdkafka::TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            offsets.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset))?;
        }
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| EngineError::Rebuild("the consumer has no group metadata".into()))?;
        self.out().send_offsets(offsets, group).await?;
        Ok(())
    }

    /// Aborts the open transaction; if the broker changed an account in it, rebuilds the
    /// accounts from the log (until that works).
    async fn abort(&self) {
        if self.journal.is_none() {
            if let Err(e) = self.out().abort().await {
                tracing::warn!(error = %e, "aborting the transaction failed");
            }
        }
        if self.dirty.swap(false, std::sync::atomic::Ordering::SeqCst) {
            loop {
                match ledger::rebuild(&*self.broker, &self.kafka).await {
                    Ok(applied) => {
                        tracing::info!(
                            events = applied,
                            "accounts rebuilt after an aborted transaction"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "rebuilding after an abort failed; retrying");
                        tokio::time::sleep(self.backoff.max).await;
                    }
                }
            }
        }
    }

    /// Applies the ticks that arrived since the last time to the accounts this engine owns,
    /// queueing what the broker did (closes at stop loss or take profit, stop-outs, margin
    /// calls, and the statuses of the accounts concerned) in the open transaction; and the
    /// periodic statuses due (every owned account once per [`ledger::STATUS_EVERY`], a
    /// slice at a time).
    async fn apply_ticks(&self, sends: &mut Vec<Outgoing>) -> Result<(), EngineError> {
        let Some(own) = self.ownership.get() else {
            return Ok(());
        };
        let mut touched: Vec<AccountKey> = Vec::new();
        for tick in self.ticks.take() {
            let acts_on = |k: &AccountKey| own.owns(&k.user_id);
            let applying = std::time::Instant::now();
            let applied = self.broker.on_tick(&tick, now_ms(), &acts_on).await;
            metrics::histogram!(crate::TICK_SECONDS_METRIC).record(applying.elapsed());
            let outcome = match applied {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(symbol = %tick.symbol, error = %e, "the venue could not take a tick; the next one is tried");
                    continue;
                }
            };
            for e in &outcome.errors {
                tracing::debug!(error = %e, "the venue could not value an account on a tick");
            }
            for event in &outcome.trades {
                self.touched();
                touched.push(ledger::trade_key(event));
                self.queue(event, sends)?;
            }
            for alert in &outcome.alerts {
                touched.push(AccountKey {
                    user_id: alert.user_id.clone(),
                    mt5_account: alert.mt5_account.clone(),
                });
                self.queue(alert, sends)?;
            }
        }
        let due = {
            let mut sweep = self.statuses.lock().unwrap_or_else(PoisonError::into_inner);
            if sweep.since.elapsed() >= STATUS_SLICE_EVERY {
                let owned: Vec<AccountKey> = self
                    .broker
                    .accounts()
                    .into_iter()
                    .filter(|k| own.owns(&k.user_id))
                    .collect();
                sweep.due(&owned)
            } else {
                Vec::new()
            }
        };
        touched.extend(due);
        touched.sort();
        touched.dedup();
        for key in &touched {
            self.queue_status(key, sends).await;
        }
        Ok(())
    }

    /// One transaction of ticks (and due statuses) alone, while no command waits. A failure
    /// is logged and aborted: the next ticks come soon.
    async fn tick_round(&self) -> Result<(), EngineError> {
        if let Some(journal) = &self.journal {
            let mut sends = Vec::new();
            let mut times = BatchTimes::new(std::time::Instant::now());
            if let Err(e) = self.apply_ticks(&mut sends).await {
                self.abort().await;
                return Err(e);
            }
            if let Delivered::Retry(reason) =
                self.deliver(journal, sends, &[], &[], &mut times).await?
            {
                tracing::warn!(reason = %reason, "a tick round was not delivered");
            }
            return Ok(());
        }
        if let Err(e) = self.begin().await {
            tracing::warn!(error = %e, "beginning a tick transaction failed");
            return Ok(());
        }
        let mut sends = Vec::new();
        if let Err(e) = self.apply_ticks(&mut sends).await {
            self.abort().await;
            return Err(e);
        }
        if sends.is_empty() {
            self.abort().await;
            return Ok(());
        }
        let published = publish(self.out(), sends).await;
        let failed = match published {
            Err(e) if !e.is_retryable() => {
                self.abort().await;
                return Err(e.into());
            }
            Err(e) => Some(format!("publishing a tick's outcome: {e}")),
            Ok(()) => self
                .out()
                .commit()
                .await
                .err()
                .map(|e| format!("committing a tick transaction: {e}")),
        };
        match failed {
            None => self.dirty.store(false, Ordering::SeqCst),
            Some(reason) => {
                tracing::warn!(reason = %reason, "a tick transaction failed; aborted");
                self.abort().await;
            }
        }
        Ok(())
    }

    /// Marks that the broker changed an account in the open transaction.
    fn touched(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    async fn attempt(
        &self,
        msg: &OwnedMessage,
        plan: &Plan,
        prices: &mut Prices,
        sends: &mut Vec<Outgoing>,
    ) -> Result<Attempt, EngineError> {
        let now = now_ms();
        match plan {
            Plan::DeadLetter { reason } => self.dead_letter(msg, reason, sends),
            Plan::Reject { head, kind, reason } => self.queue(
                &TradeEvent::rejected(head, kind, reason.as_str(), now),
                sends,
            ),
            Plan::Open { head, open } => {
                let tick = match self.priced(open.order.symbol, prices).await? {
                    Priced::Tick(t) => t,
                    Priced::Reject(reason) => {
                        return self.queue(&TradeEvent::rejected(head, open, reason, now), sends)
                    }
                    Priced::Retry(reason) => return Ok(Attempt::Retry(reason)),
                };
                let outcome = self.broker.open(head, open, &tick, now_ms()).await;
                self.answer(head, open, outcome, sends).await
            }
            Plan::Close { head, close } => {
                let tick = match self.position_priced(head, &close.trade_id, prices).await? {
                    Priced::Tick(t) => t,
                    Priced::Reject(reason) => {
                        return self.queue(&TradeEvent::rejected(head, close, reason, now), sends)
                    }
                    Priced::Retry(reason) => return Ok(Attempt::Retry(reason)),
                };
                let outcome = self.broker.close(head, close, &tick, now_ms()).await;
                self.answer(head, close, outcome, sends).await
            }
            Plan::ClosePositions { head, close } => {
                let tick = match self.priced(close.symbol, prices).await? {
                    Priced::Tick(t) => t,
                    Priced::Reject(reason) => {
                        return self.queue(&TradeEvent::rejected(head, close, reason, now), sends)
                    }
                    Priced::Retry(reason) => return Ok(Attempt::Retry(reason)),
                };
                let outcome = self
                    .broker
                    .close_positions(head, close, &tick, now_ms())
                    .await;
                self.answer(head, close, outcome, sends).await
            }
            Plan::Modify { head, modify } => {
                let tick = match self.position_priced(head, &modify.trade_id, prices).await? {
                    Priced::Tick(t) => t,
                    Priced::Reject(reason) => {
                        return self.queue(&TradeEvent::rejected(head, modify, reason, now), sends)
                    }
                    Priced::Retry(reason) => return Ok(Attempt::Retry(reason)),
                };
                let outcome = self.broker.modify(head, modify, &tick, now_ms()).await;
                self.answer(head, modify, outcome, sends).await
            }
            Plan::Cancel { head, cancel } => {
                let outcome = self.broker.cancel(head, cancel, now).await;
                self.answer(head, cancel, outcome, sends).await
            }
            Plan::Replace { head, replace } => {
                let symbol = match self.broker.order_symbol(head, &replace.order_id).await {
                    Ok(Some(symbol)) => symbol,
                    Ok(None) => {
                        let reason =
                            suho_broker::RejectReason::UnknownOrder(replace.order_id.clone());
                        return self.queue(&reason.rejected_event(head, replace, now), sends);
                    }
                    Err(e) => return Ok(Attempt::Retry(format!("venue: {e}"))),
                };
                let tick = match self.priced(symbol, prices).await? {
                    Priced::Tick(t) => t,
                    Priced::Reject(reason) => {
                        return self.queue(&TradeEvent::rejected(head, replace, reason, now), sends)
                    }
                    Priced::Retry(reason) => return Ok(Attempt::Retry(reason)),
                };
                let outcome = self.broker.replace(head, replace, &tick, now_ms()).await;
                self.answer(head, replace, outcome, sends).await
            }
            Plan::Deposit { head, money } => {
                let key = AccountKey::of(head);
                let outcome = self
                    .broker
                    .deposit(&key, &head.event_id, money.amount, now)
                    .await;
                self.transacted(head, money, &key, outcome, sends).await
            }
            Plan::Withdraw { head, money } => {
                let key = AccountKey::of(head);
                let outcome = self
                    .broker
                    .withdraw(&key, &head.event_id, money.amount, now)
                    .await;
                self.transacted(head, money, &key, outcome, sends).await
            }
            Plan::OpenAccount { head } => {
                let key = AccountKey::of(head);
                let outcome = self.broker.open_account(&key, &head.event_id, now).await;
                let kind = suho_domain::CommandKind::OpenAccount;
                self.transacted(head, &kind, &key, outcome, sends).await
            }
        }
    }

    /// The quote a close or modify of position `trade_id` fills from: that of the position's
    /// symbol; a rejection when no such position is open; a retry when the venue cannot say.
    async fn position_priced(
        &self,
        head: &CommandHead,
        trade_id: &str,
        prices: &mut Prices,
    ) -> Result<Priced, EngineError> {
        match self.broker.position_symbol(head, trade_id).await {
            Ok(Some(symbol)) => self.priced(symbol, prices).await,
            Ok(None) => Ok(Priced::Reject(
                suho_broker::RejectReason::UnknownPosition(trade_id.to_owned()).to_string(),
            )),
            Err(e) => Ok(Priced::Retry(format!("venue: {e}"))),
        }
    }

    /// The quote of `symbol` for this try: asked once per try (see [`Engine::prefetch`]).
    async fn priced(
        &self,
        symbol: suho_domain::Symbol,
        prices: &mut Prices,
    ) -> Result<Priced, EngineError> {
        if let Some(p) = prices.get(&symbol) {
            return Ok(p.clone());
        }
        let p = self.tick(symbol).await?;
        prices.insert(symbol, p.clone());
        Ok(p)
    }

    /// Asks the price service for every symbol the batch's trades need, all at once.
    async fn prefetch(&self, batch: &VecDeque<Taken>) -> Prices {
        let mut symbols: Vec<suho_domain::Symbol> = Vec::new();
        for t in batch {
            let symbol = match &t.plan {
                Plan::Open { open, .. } => Some(open.order.symbol),
                Plan::ClosePositions { close, .. } => Some(close.symbol),
                Plan::Close { head, close } => self.symbol_of(head, &close.trade_id).await,
                Plan::Modify { head, modify } => self.symbol_of(head, &modify.trade_id).await,
                Plan::Replace { head, replace } => self
                    .broker
                    .order_symbol(head, &replace.order_id)
                    .await
                    .ok()
                    .flatten(),
                Plan::DeadLetter { .. }
                | Plan::Reject { .. }
                | Plan::Deposit { .. }
                | Plan::Withdraw { .. }
                | Plan::OpenAccount { .. }
                | Plan::Cancel { .. } => None,
            };
            symbols.extend(symbol);
        }
        symbols.sort_unstable();
        symbols.dedup();
        let asked = futures::future::join_all(symbols.iter().map(|&s| self.tick(s))).await;
        symbols
            .into_iter()
            .zip(asked)
            .filter_map(|(s, p)| p.ok().map(|p| (s, p)))
            .collect()
    }

    /// The symbol of an open position, if the venue knows it now.
    async fn symbol_of(&self, head: &CommandHead, trade_id: &str) -> Option<suho_domain::Symbol> {
        self.broker
            .position_symbol(head, trade_id)
            .await
            .ok()
            .flatten()
    }

    /// The latest quote of `symbol` from the price service, as a tick for the broker.
    async fn tick(&self, symbol: suho_domain::Symbol) -> Result<Priced, EngineError> {
        let subject = suho_domain::subject::price(self.bus.prefix(), symbol);
        let payload = match self.bus.request(subject, Bytes::new()).await {
            Ok(p) => p,
            Err(e) if e.is_retryable() => return Ok(Priced::Retry(format!("price request: {e}"))),
            Err(e) => return Err(e.into()),
        };
        let reply: PriceReply = match serde_json::from_slice(&payload) {
            Ok(r) => r,
            // A price service that breaks the contract is our own bug; wait for a fixed one
            // rather than reject orders on its account.
            Err(e) => return Ok(Priced::Retry(format!("unreadable price reply: {e}"))),
        };
        Ok(plan::quote_tick(symbol, reply))
    }

    /// Queues the broker's answer to a trade command (its event, or a rejection, plus a
    /// `RISK_LIMIT_BREACH` when the user's own limits were hit), then the account's status.
    async fn answer(
        &self,
        head: &CommandHead,
        what: &impl DescribesTrade,
        outcome: suho_broker::BrokerResult<suho_broker::Outcome<TradeEvent>>,
        sends: &mut Vec<Outgoing>,
    ) -> Result<Attempt, EngineError> {
        let sent = match outcome {
            Ok(done) => {
                self.touched();
                for close in &done.closes {
                    self.queue(close, sends)?;
                }
                self.queue(&done.event, sends)?
            }
            Err(BrokerError::Rejected(reason)) => {
                if let Some(alert) = reason.breach_alert(head, now_ms()) {
                    self.queue(&alert, sends)?;
                }
                self.queue(&reason.rejected_event(head, what, now_ms()), sends)?
            }
            Err(e) => return Ok(Attempt::Retry(format!("venue: {e}"))),
        };
        if matches!(sent, Attempt::Done) {
            self.queue_status(&AccountKey::of(head), sends).await;
        }
        Ok(sent)
    }

    /// Queues the venue's answer to a deposit, withdrawal or account opening (its
    /// transaction, or a rejection), then the account's status.
    async fn transacted(
        &self,
        head: &CommandHead,
        what: &impl DescribesTrade,
        key: &AccountKey,
        outcome: suho_broker::BrokerResult<suho_broker::Outcome<suho_domain::Transaction>>,
        sends: &mut Vec<Outgoing>,
    ) -> Result<Attempt, EngineError> {
        match outcome {
            Ok(done) => {
                self.touched();
                let sent = self.queue(&done.event, sends)?;
                if matches!(sent, Attempt::Done) {
                    self.queue_status(key, sends).await;
                }
                Ok(sent)
            }
            Err(BrokerError::Rejected(reason)) => {
                self.queue(&reason.rejected_event(head, what, now_ms()), sends)
            }
            Err(e) => Ok(Attempt::Retry(format!("venue: {e}"))),
        }
    }

    /// Queues the account's status (skipped, at debug, while a conversion rate is missing:
    /// the next change or the periodic round sends it).
    async fn queue_status(&self, key: &AccountKey, sends: &mut Vec<Outgoing>) {
        match self.broker.status(key, now_ms()).await {
            Ok(status) => {
                if let Err(e) = self.queue(&status, sends) {
                    tracing::warn!(user_id = %key.user_id, error = %e, "ACCOUNT_STATUS not queued");
                }
            }
            Err(e) => tracing::debug!(user_id = %key.user_id, error = %e, "no ACCOUNT_STATUS yet"),
        }
    }

    /// Adds an outcome to what the open transaction sends (handed to the producer once the
    /// batch is decided; see [`Outgoing`]) and logs it.
    fn queue<E: UserEvent + serde::Serialize>(
        &self,
        event: &E,
        sends: &mut Vec<Outgoing>,
    ) -> Result<Attempt, EngineError> {
        sends.push(Outgoing::event(event)?);
        tracing::info!(
            user_id = %event.user_id(),
            event_type = event.event_type_str(),
            event_id = event.event_id(),
            "command answered"
        );
        Ok(Attempt::Done)
    }

    /// Queues the record, byte for byte and with its own headers, for `user.commands.dlq`
    /// under its original key, adding `dlq.reason`, `dlq.topic`, `dlq.partition` and
    /// `dlq.offset`.
    fn dead_letter(
        &self,
        msg: &OwnedMessage,
        reason: &str,
        sends: &mut Vec<Outgoing>,
    ) -> Result<Attempt, EngineError> {
        let key = msg
            .key()
            .map_or(Cow::Borrowed("unknown"), String::from_utf8_lossy);
        let mut headers = OwnedHeaders::new();
        if let Some(original) = msg.headers() {
            for h in original.iter().filter(|h| !h.key.starts_with("dlq.")) {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        for (k, v) in [
            ("dlq.reason", reason),
            ("dlq.topic", msg.topic()),
            ("dlq.partition", partition.as_str()),
            ("dlq.offset", offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        sends.push(Outgoing::raw(
            UserTopic::CommandsDlq,
            &key,
            msg.payload().unwrap_or_default(),
            Some(headers),
        ));
        metrics::counter!(
            suho_telemetry::names::KAFKA_DEAD_LETTERS,
            "topic" => UserTopic::Commands.name()
        )
        .increment(1);
        tracing::warn!(
            key = %key,
            partition = msg.partition(),
            offset = msg.offset(),
            reason,
            "unreadable command record dead-lettered"
        );
        Ok(Attempt::Done)
    }
}

/// Hands `sends` to the open transaction's producer at once and waits for every record's
/// acknowledgement; the first failure, if any.
async fn publish(
    out: &UserEventProducer,
    sends: Vec<Outgoing>,
) -> Result<(), suho_messaging::MessagingError> {
    let mut failure = None;
    for q in out.enqueue_all(sends)? {
        if let Err(e) = q.delivered().await {
            failure.get_or_insert(e);
        }
    }
    failure.map_or(Ok(()), Err)
}

/// When the record was written (its Kafka timestamp), epoch ms; now if it has none.
fn record_time(msg: &BorrowedMessage<'_>) -> i64 {
    msg.timestamp().to_millis().unwrap_or_else(now_ms)
}

/// Waits `delay`; `false` when shutdown came first.
async fn wait(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A consumer error that retrying cannot cure.
fn is_fatal_consume_error(e: &KafkaError) -> bool {
    matches!(e, KafkaError::MessageConsumptionFatal(_))
        || matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fatal
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
            )
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let b = Backoff::new(&suho_config::TradingConfig {
            retry_initial_ms: 100,
            retry_max_ms: 350,
            ..suho_config::TradingConfig::default()
        });
        let mut d = b.initial;
        let mut seen = vec![millis(d)];
        for _ in 0..4 {
            d = b.next(d);
            seen.push(millis(d));
        }
        assert_eq!(seen, [100, 200, 350, 350, 350]);
    }

    #[test]
    fn the_periodic_statuses_go_round_every_account_a_slice_at_a_time() {
        let key = |i: usize| AccountKey {
            user_id: UserId::new(format!("u{i:02}")),
            mt5_account: None,
        };
        let owned: Vec<AccountKey> = (0..20).map(key).collect();
        let ago = |d: Duration| std::time::Instant::now() - d;
        let mut sweep = StatusSweep {
            since: ago(Duration::from_millis(100)),
            next: None,
        };
        // Too soon for a slice.
        assert!(sweep.due(&owned).is_empty());
        // A tenth of the period: a tenth of the accounts, in key order.
        sweep.since = ago(ledger::STATUS_EVERY / 10);
        assert_eq!(sweep.due(&owned), owned[..2]);
        sweep.since = ago(ledger::STATUS_EVERY / 4);
        assert_eq!(sweep.due(&owned), owned[2..7]);
        // Past the end, round to the start; never more than every account.
        sweep.since = ago(ledger::STATUS_EVERY * 3);
        let all = sweep.due(&owned);
        assert_eq!(all.len(), 20);
        assert_eq!(all[0], owned[7]);
        assert_eq!(all[19], owned[6]);
        // An account gone from the list: the next slice starts at the one after it.
        let fewer: Vec<AccountKey> = owned.iter().filter(|k| **k != owned[7]).cloned().collect();
        // (A fifth of 19 accounts: three.)
        sweep.since = ago(ledger::STATUS_EVERY / 5);
        assert_eq!(sweep.due(&fewer), owned[8..11]);
        // One account: its status once a period, the time adding up across calls.
        let one = [owned[0].clone()];
        sweep.since = ago(STATUS_SLICE_EVERY);
        assert!(sweep.due(&one).is_empty());
        sweep.since -= ledger::STATUS_EVERY;
        assert_eq!(sweep.due(&one), one);
    }

    #[test]
    fn the_rate_limit_counts_answered_commands_within_one_second() {
        let rate = RateLimit::new(3);
        let (u, v) = (UserId::new("u"), UserId::new("v"));
        for t in [1_000, 1_010, 1_020] {
            assert!(rate.allows(&u, t, 0));
            rate.record(&u, t);
        }
        assert!(!rate.allows(&u, 1_030, 0));
        assert!(rate.allows(&v, 1_030, 2));
        assert!(!rate.allows(&v, 1_030, 3));
        assert!(!rate.allows(&u, 1_999, 0));
        assert!(rate.allows(&u, 2_000, 0));
    }

    #[test]
    fn fatal_consumer_errors() {
        assert!(is_fatal_consume_error(
            &KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::Fatal)
        ));
        assert!(is_fatal_consume_error(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::TopicAuthorizationFailed
        )));
        assert!(!is_fatal_consume_error(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}
