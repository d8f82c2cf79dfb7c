//! The consume - decide - publish - commit loop.
//!
//! One record of `user.commands` at a time: begin a Kafka transaction, plan the record
//! ([`crate::plan`]), carry the plan out (a dead-letter record, a rejection, or a price
//! request on NATS and an execution on the paper account), and commit the outcome with the
//! record's next offset in that transaction. A transient
//! failure (no quote yet, a stale quote, NATS unreachable, a retryable Kafka error) retries the
//! same record with exponential backoff and never skips it; a shutdown during that wait leaves
//! the record uncommitted, so it is delivered again on the next start and, because every
//! outcome id is derived from the command, answered with the same event.
//!
//! Records are handled strictly in order, one after another, across all assigned partitions.
//! This keeps a user's commands ordered; it also means one stuck record holds back every
//! partition this instance owns (later work can split per-partition queues).
//!
//! Several engines share the partitions. Whenever the group moves partitions, the engine
//! rebuilds its accounts from the log before it handles another record: the previous owner
//! committed (or aborted) its last transaction before it let the partition go, so the
//! rebuild sees every outcome of that partition's commands. Between commands an engine acts
//! only on the accounts of the users whose partitions it owns ([`paper::Ownership`]).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rust_decimal::Decimal;
use suho_broker::{
    AccountConfig, AccountKey, BrokerAdapter, BrokerError, PaperBroker, PaperBrokerConfig,
};
use suho_domain::{
    CommandType, PriceReply, TradeCommand, TradeEvent, UserEvent, UserId, UserTopic,
};
use suho_messaging::kafka::{self, Assignment, UserConsumer};
use suho_messaging::{now_ms, MarketBus, UserEventProducer};
use tokio_util::sync::CancellationToken;

use crate::paper;
use crate::plan::{self, Plan, Priced};
use crate::{EngineError, GROUP};

/// The trading engine: consumes `user.commands` in the consumer group [`GROUP`] and answers
/// every command on `user.trades` (or dead-letters an unreadable record).
pub struct Engine {
    consumer: UserConsumer,
    bus: MarketBus,
    producer: UserEventProducer,
    backoff: Backoff,
    broker: Arc<PaperBroker>,
    kafka: suho_config::KafkaConfig,
    /// The transactional producer every command's outcome and offset go through (set by
    /// [`Engine::run`]).
    tx: std::sync::OnceLock<UserEventProducer>,
    /// Its `transactional.id`.
    transactional_id: String,
    /// The broker changed an account in the open transaction: an abort must rebuild.
    dirty: std::sync::atomic::AtomicBool,
    /// The partitions this engine owns (kept by the consumer's rebalance callbacks).
    assignment: Assignment,
    /// The assignment change the accounts were last rebuilt for.
    rebuilt_for: AtomicU64,
    /// The per-user command rate limit.
    rate: RateLimit,
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

    /// Whether `user` may have one more command at `at_ms`.
    fn allows(&self, user: &UserId, at_ms: i64) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(times) = recent.get_mut(user) else {
            return true;
        };
        while times.front().is_some_and(|&t| t <= at_ms - Self::WINDOW_MS) {
            times.pop_front();
        }
        times.iter().filter(|&&t| t <= at_ms).count() < self.limit as usize
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

impl std::fmt::Debug for Engine {
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
    /// The outcome is acknowledged by Kafka; the record may be committed.
    Done,
    /// Nothing final happened; try the same record again later, for this reason.
    Retry(String),
}

/// How handling a record ended.
enum Settled {
    /// The outcome is acknowledged.
    Done,
    /// Shutdown came first; the record stays uncommitted.
    Interrupted,
}

impl Engine {
    /// Creates the engine and its consumer, subscribed to `user.commands` in the group
    /// [`GROUP`] (the configured group prefix is prepended), with manual commits.
    ///
    /// # Errors
    /// The Kafka consumer cannot be created or subscribed.
    pub fn new(
        config: &suho_config::Config,
        bus: MarketBus,
        producer: UserEventProducer,
    ) -> Result<Engine, EngineError> {
        let consumer = kafka::consumer(
            &config.kafka,
            &config.telemetry,
            GROUP,
            &[UserTopic::Commands],
        )?;
        // Users who never saved settings trade under the default risk settings.
        let risk = suho_domain::RiskSettings::default();
        let account = AccountConfig {
            leverage: std::num::NonZeroU32::new(config.trading.paper_leverage)
                .ok_or_else(|| EngineError::Broker("paper_leverage must be positive".into()))?,
            max_volume: risk.max_volume,
            max_open_positions: usize::try_from(risk.max_open_positions).unwrap_or(usize::MAX),
            ..AccountConfig::default()
        };
        let broker = PaperBroker::new(PaperBrokerConfig {
            account,
            initial_balance: Decimal::from(config.trading.paper_opening_balance),
        })
        .map_err(|e| EngineError::Broker(e.to_string()))?;
        let assignment = consumer.context().assignment().clone();
        Ok(Engine {
            consumer,
            bus,
            producer,
            backoff: Backoff::new(&config.trading),
            broker: Arc::new(broker),
            kafka: config.kafka.clone(),
            tx: std::sync::OnceLock::new(),
            transactional_id: format!(
                "{}{GROUP}-{}",
                config.kafka.group_prefix, config.trading.instance_id
            ),
            dirty: std::sync::atomic::AtomicBool::new(false),
            assignment,
            rebuilt_for: AtomicU64::new(0),
            rate: RateLimit::new(config.trading.max_commands_per_second),
        })
    }

    /// Runs until `shutdown` is cancelled, then commits what it has stored and returns.
    ///
    /// # Errors
    /// Only a fatal error: Kafka refuses this consumer for good (authorization, a fatal
    /// client error), or an outcome cannot be published and retrying cannot help (the
    /// topic does not exist, the record is too large). Transient failures are retried.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), EngineError> {
        tracing::info!(
            group = GROUP,
            topic = %self.producer.topic_name(UserTopic::Commands),
            "trading engine consuming"
        );
        // The users' own limits, read to the end before the first command.
        let (caught_up, settings_read) = tokio::sync::oneshot::channel();
        let settings = crate::limits::follow(
            Arc::clone(&self.broker),
            &self.kafka,
            shutdown.clone(),
            caught_up,
        )?;
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = settings_read => {}
        }
        // The accounts are rebuilt when the group assigns partitions (see `follow_assignment`);
        // which users' accounts this engine acts on between commands follows from the
        // partition count of user.commands.
        let commands = UserTopic::Commands.full_name(&self.kafka.topic_prefix);
        let mut delay = self.backoff.initial;
        let partitions = loop {
            match paper::partition_count(&self.kafka, commands.clone()).await {
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
        let ownership = paper::Ownership::new(self.assignment.clone(), commands, partitions);
        // The transactional producer: its initialisation also aborts what a previous engine
        // with the same transactional id left open.
        let mut delay = self.backoff.initial;
        loop {
            match UserEventProducer::transactional(&self.kafka, &self.transactional_id).await {
                Ok(tx) => {
                    let _ = self.tx.set(tx);
                    break;
                }
                Err(suho_messaging::MessagingError::Kafka(KafkaError::ClientCreation(e))) => {
                    return Err(EngineError::Broker(format!(
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
        let ticks = tokio::spawn(paper::run_ticks(
            Arc::clone(&self.broker),
            self.bus.clone(),
            self.producer.clone(),
            ownership,
            shutdown.clone(),
        ));
        let result = self.consume(&shutdown).await;
        shutdown.cancel();
        if settings.join().is_err() {
            tracing::warn!("the settings reader panicked");
        }
        match ticks.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the broker's tick feed stopped"),
            Err(e) => tracing::warn!(error = %e, "the broker's tick feed panicked"),
            Ok(Ok(())) => {}
        }
        tracing::info!(group = GROUP, "trading engine stopped");
        result
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), EngineError> {
        let mut recv_delay = self.backoff.initial;
        loop {
            if !self.follow_assignment(shutdown).await {
                return Ok(());
            }
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = self.assignment.changed() => continue,
                r = self.consumer.recv() => r,
            };
            let msg = match received {
                Ok(msg) => msg,
                Err(e) if is_fatal_consume_error(&e) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = millis(recv_delay), "reading user.commands failed; retrying");
                    if !wait(recv_delay, shutdown).await {
                        return Ok(());
                    }
                    recv_delay = self.backoff.next(recv_delay);
                    continue;
                }
            };
            recv_delay = self.backoff.initial;
            // The rebalance that delivered this record may have come in the same poll.
            if !self.follow_assignment(shutdown).await {
                return Ok(());
            }
            if !self.assignment.owns(msg.topic(), msg.partition()) {
                tracing::info!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    "a record of a partition this engine no longer owns is left to its new owner"
                );
                continue;
            }
            kafka::count_consumed(UserTopic::Commands, GROUP);
            let mut plan = plan::plan(msg.key(), msg.payload());
            let at = record_time(&msg);
            if let Plan::Open { command, .. } | Plan::Execute { command } = &plan {
                if !self.rate.allows(&command.user_id, at) {
                    plan = Plan::Reject {
                        command: command.clone(),
                        reason: suho_broker::RejectReason::RateLimited(self.rate.limit).to_string(),
                    };
                }
            }
            match self.settle(&msg, &plan, shutdown).await? {
                Settled::Done => {
                    if let Plan::Open { command, .. }
                    | Plan::Execute { command }
                    | Plan::Reject { command, .. } = &plan
                    {
                        self.rate.record(&command.user_id, at);
                    }
                }
                Settled::Interrupted => return Ok(()),
            }
        }
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
                self.broker.rebuild(&[]);
                self.rebuilt_for.store(changes, Ordering::SeqCst);
                return true;
            }
            match paper::rebuild(&self.broker, &self.kafka).await {
                Ok(applied) => {
                    self.rebuilt_for.store(changes, Ordering::SeqCst);
                    tracing::info!(
                        events = applied,
                        accounts = self.broker.account_keys().len(),
                        partitions = ?owned,
                        "paper accounts rebuilt for this engine's partitions"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = millis(delay), "rebuilding the paper accounts failed; retrying");
                    if !wait(delay, shutdown).await {
                        return false;
                    }
                    delay = self.backoff.next(delay);
                }
            }
        }
    }

    /// Carries out `plan` in a Kafka transaction with the record's offset, retrying
    /// transient failures until it is done or shutdown comes. A failed try is aborted (nothing
    /// of it becomes visible) and, if the broker had already changed an account, the accounts
    /// are rebuilt from the log, so the retry starts from what was committed.
    async fn settle(
        &self,
        msg: &BorrowedMessage<'_>,
        plan: &Plan,
        shutdown: &CancellationToken,
    ) -> Result<Settled, EngineError> {
        let mut delay = self.backoff.initial;
        let mut tries: u32 = 1;
        loop {
            let reason = match self.out().begin().await {
                Err(e) => format!("beginning a transaction: {e}"),
                Ok(()) => match self.attempt(msg, plan).await {
                    Err(e) => {
                        self.abort().await;
                        return Err(e);
                    }
                    Ok(Attempt::Retry(reason)) => {
                        self.abort().await;
                        reason
                    }
                    Ok(Attempt::Done) => {
                        crate::failpoint::hit("engine.before_commit");
                        match self.commit_in_transaction(msg).await {
                            Ok(()) => {
                                self.dirty.store(false, std::sync::atomic::Ordering::SeqCst);
                                return Ok(Settled::Done);
                            }
                            Err(e) => {
                                self.abort().await;
                                format!("committing the transaction: {e}")
                            }
                        }
                    }
                },
            };
            tracing::warn!(
                partition = msg.partition(),
                offset = msg.offset(),
                tries,
                retry_in_ms = millis(delay),
                reason = %reason,
                "transient failure; retrying the same command"
            );
            if !wait(delay, shutdown).await {
                tracing::info!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    "shutdown while retrying; the record stays uncommitted"
                );
                return Ok(Settled::Interrupted);
            }
            delay = self.backoff.next(delay);
            tries = tries.saturating_add(1);
        }
    }

    /// The producer outcomes go through: the transactional one once [`Engine::run`] set it up.
    fn out(&self) -> &UserEventProducer {
        self.tx.get().unwrap_or(&self.producer)
    }

    /// Adds the record's next offset to the open transaction and commits it.
    async fn commit_in_transaction(&self, msg: &BorrowedMessage<'_>) -> Result<(), EngineError> {
        let mut offsets = rdkafka::TopicPartitionList::new();
        offsets.add_partition_offset(
            msg.topic(),
            msg.partition(),
            rdkafka::Offset::Offset(msg.offset() + 1),
        )?;
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| EngineError::Rebuild("the consumer has no group metadata".into()))?;
        self.out().commit_with_offsets(offsets, group).await?;
        Ok(())
    }

    /// Aborts the open transaction; if the broker changed an account in it, rebuilds the
    /// accounts from the log (until that works).
    async fn abort(&self) {
        if let Err(e) = self.out().abort().await {
            tracing::warn!(error = %e, "aborting the transaction failed");
        }
        if self.dirty.swap(false, std::sync::atomic::Ordering::SeqCst) {
            loop {
                match paper::rebuild(&self.broker, &self.kafka).await {
                    Ok(applied) => {
                        tracing::info!(
                            events = applied,
                            "paper accounts rebuilt after an aborted transaction"
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

    async fn attempt(
        &self,
        msg: &BorrowedMessage<'_>,
        plan: &Plan,
    ) -> Result<Attempt, EngineError> {
        match plan {
            Plan::DeadLetter { reason } => self.dead_letter(msg, reason).await,
            Plan::Reject { command, reason } => {
                self.publish(&TradeEvent::rejected(command, reason.as_str(), now_ms()))
                    .await
            }
            Plan::Open { command, order } => {
                let tick = match self.tick(order.symbol).await? {
                    Priced::Tick(t) => t,
                    Priced::Reject(reason) => {
                        return self
                            .publish(&TradeEvent::rejected(command, reason, now_ms()))
                            .await
                    }
                    Priced::Retry(reason) => return Ok(Attempt::Retry(reason)),
                };
                let outcome = self.broker.open(command, &tick, now_ms()).await;
                self.answer(command, outcome).await
            }
            Plan::Execute { command } => match command.event_type {
                CommandType::Deposit | CommandType::Withdrawal => {
                    let key = AccountKey::of_command(command);
                    let amount = command.amount.unwrap_or_default();
                    let outcome = if command.event_type == CommandType::Deposit {
                        self.broker
                            .deposit(&key, &command.event_id, amount, now_ms())
                            .await
                    } else {
                        self.broker
                            .withdraw(&key, &command.event_id, amount, now_ms())
                            .await
                    };
                    match outcome {
                        Ok(done) => {
                            self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                            let sent = self.publish_other(&done.event).await?;
                            if matches!(sent, Attempt::Done) {
                                paper::publish_status(&self.broker, self.out(), &key).await;
                            }
                            Ok(sent)
                        }
                        Err(BrokerError::Rejected(reason)) => {
                            self.publish(&reason.rejected_event(command, now_ms()))
                                .await
                        }
                        Err(e) => Ok(Attempt::Retry(format!("paper broker: {e}"))),
                    }
                }
                _ => {
                    let key = AccountKey::of_command(command);
                    let Some(symbol) = self
                        .broker
                        .with_account(&key, |a| a.command_symbol(command))
                    else {
                        let reason = suho_broker::RejectReason::UnknownPosition(
                            command.trade_id.clone().unwrap_or_default(),
                        );
                        return self
                            .publish(&reason.rejected_event(command, now_ms()))
                            .await;
                    };
                    let tick = match self.tick(symbol).await? {
                        Priced::Tick(t) => t,
                        Priced::Reject(reason) => {
                            return self
                                .publish(&TradeEvent::rejected(command, reason, now_ms()))
                                .await
                        }
                        Priced::Retry(reason) => return Ok(Attempt::Retry(reason)),
                    };
                    let outcome = if command.event_type == CommandType::CloseTrade {
                        self.broker.close(command, &tick, now_ms()).await
                    } else {
                        self.broker.modify(command, &tick, now_ms()).await
                    };
                    self.answer(command, outcome).await
                }
            },
        }
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

    /// Publishes the broker's answer to a trade command (its event, or a rejection, plus a
    /// `RISK_LIMIT_BREACH` when the user's own limits were hit), then the account's status.
    async fn answer(
        &self,
        command: &TradeCommand,
        outcome: suho_broker::BrokerResult<suho_broker::Outcome<TradeEvent>>,
    ) -> Result<Attempt, EngineError> {
        let key = AccountKey::of_command(command);
        let sent = match outcome {
            Ok(done) => {
                self.dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                self.publish(&done.event).await?
            }
            Err(BrokerError::Rejected(reason)) => {
                if let Some(alert) = reason.breach_alert(command, now_ms()) {
                    if let Attempt::Retry(why) = self.publish_other(&alert).await? {
                        return Ok(Attempt::Retry(why));
                    }
                }
                self.publish(&reason.rejected_event(command, now_ms()))
                    .await?
            }
            Err(e) => return Ok(Attempt::Retry(format!("paper broker: {e}"))),
        };
        if matches!(sent, Attempt::Done) {
            paper::publish_status(&self.broker, self.out(), &key).await;
        }
        Ok(sent)
    }

    /// Publishes an event of another topic than `user.trades` (a transaction, an alert).
    async fn publish_other<E: UserEvent + serde::Serialize>(
        &self,
        event: &E,
    ) -> Result<Attempt, EngineError> {
        let sent = self.out().send(event).await;
        delivered(sent, event.event_type_str(), |d| {
            tracing::info!(
                user_id = %event.user_id(),
                event_type = event.event_type_str(),
                event_id = event.event_id(),
                partition = d.partition,
                offset = d.offset,
                "command answered"
            );
        })
    }

    /// Publishes an outcome on `user.trades` and logs it once acknowledged.
    async fn publish(&self, event: &TradeEvent) -> Result<Attempt, EngineError> {
        let sent = self.out().send(event).await;
        delivered(sent, event.event_type_str(), |d| {
            tracing::info!(
                user_id = %event.user_id,
                command_id = event.command_id.as_deref().unwrap_or_default(),
                outcome = event.event_type_str(),
                trade_id = event.trade_id.as_deref().unwrap_or_default(),
                symbol = event.symbol.as_ref().map(ToString::to_string).unwrap_or_default(),
                price = event.execution_price.map(|p| p.to_string()).unwrap_or_default(),
                reason = event.reason.as_deref().unwrap_or_default(),
                partition = d.partition,
                offset = d.offset,
                "command answered"
            );
        })
    }

    /// Sends the record, byte for byte and with its own headers, to `user.commands.dlq`
    /// under its original key, adding `dlq.reason`, `dlq.topic`, `dlq.partition` and
    /// `dlq.offset`.
    async fn dead_letter(
        &self,
        msg: &BorrowedMessage<'_>,
        reason: &str,
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
        let sent = self
            .out()
            .send_raw(
                UserTopic::CommandsDlq,
                &key,
                msg.payload().unwrap_or_default(),
                Some(headers),
            )
            .await;
        match sent {
            Ok(delivery) => {
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
                    dlq_partition = delivery.partition,
                    dlq_offset = delivery.offset,
                    "unreadable command record dead-lettered"
                );
                Ok(Attempt::Done)
            }
            Err(e) if e.is_retryable() => Ok(Attempt::Retry(format!("dead-lettering: {e}"))),
            Err(e) => Err(e.into()),
        }
    }
}

/// What a send means for the attempt: done (logged by `log`), retry a retryable failure, or
/// a fatal error.
fn delivered(
    sent: Result<suho_messaging::kafka::Delivery, suho_messaging::MessagingError>,
    what: &str,
    log: impl FnOnce(suho_messaging::kafka::Delivery),
) -> Result<Attempt, EngineError> {
    match sent {
        Ok(d) => {
            log(d);
            Ok(Attempt::Done)
        }
        Err(e) if e.is_retryable() => Ok(Attempt::Retry(format!("publishing {what}: {e}"))),
        Err(e) => Err(e.into()),
    }
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
    fn the_rate_limit_counts_answered_commands_within_one_second() {
        let rate = RateLimit::new(3);
        let (u, v) = (UserId::new("u"), UserId::new("v"));
        for t in [1_000, 1_010, 1_020] {
            assert!(rate.allows(&u, t));
            rate.record(&u, t);
        }
        assert!(!rate.allows(&u, 1_030));
        assert!(rate.allows(&v, 1_030));
        assert!(!rate.allows(&u, 1_999));
        assert!(rate.allows(&u, 2_000));
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
