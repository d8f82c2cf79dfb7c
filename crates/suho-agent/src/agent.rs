//! The agent's loop: one NATS subscription to every strategy's signals, and for each `BUY` or
//! `SELL` signal one `OPEN_TRADE` per opted-in user on `user.commands` (keyed by the user,
//! `acks=all`, idempotent producer).
//!
//! Signals are handled one at a time, in arrival order; the commands of one signal are sent
//! concurrently (at most [`MAX_IN_FLIGHT`] at once), and the next signal waits until every one
//! of them is acknowledged or given up. A command Kafka does not take is retried with backoff
//! (`agent.retry_initial_ms` doubling up to `agent.retry_max_ms`) until it is acknowledged, the
//! error is one that retrying cannot fix, `agent.command_deadline_ms` has passed since its
//! signal arrived, or shutdown; every give-up is logged as an error and counted
//! (`agent_commands_total{outcome="failed"}`), never silent. A command is remembered as sent
//! only once acknowledged, so a redelivered signal may retry one that was given up.

use std::time::Duration;

use futures::StreamExt;
use suho_domain::{Signal, TradeCommand, UserTopic};
use suho_messaging::{now_ms, MarketBus, MessagingError, UserEventProducer};
use suho_telemetry::names;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::plan::{self, Decision};
use crate::recent::RecentSet;
use crate::AgentError;
use suho_messaging::settings::{SettingsBook, SettingsReader};

/// The consumer group name of the settings reader (the configured group prefix is prepended).
/// The reader is assigned its partitions, so the group never rebalances and commits nothing;
/// the name only labels its metrics and its connections.
pub const GROUP: &str = suho_security::kafka::names::AGENT;

/// Most commands of one signal waiting for Kafka at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// How the agent runs, taken from the `[agent]` and `[kafka]` settings.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Kafka, for the settings reader.
    pub kafka: suho_config::KafkaConfig,
    /// First retry delay of a command Kafka did not take.
    pub retry_initial: Duration,
    /// Retry delay ceiling.
    pub retry_max: Duration,
    /// A command not acknowledged this long after its signal arrived is given up.
    pub command_deadline: Duration,
    /// How many (user, signal) pairs already sent are remembered.
    pub recent_capacity: usize,
}

impl AgentOptions {
    /// The options `config` sets, logged in to Kafka as the agent.
    ///
    /// # Errors
    /// The agent's credentials are missing.
    pub fn from_config(config: &suho_config::Config) -> Result<AgentOptions, MessagingError> {
        let a = &config.agent;
        Ok(AgentOptions {
            kafka: suho_messaging::kafka::bind(config, suho_security::Identity::Agent)?,
            retry_initial: Duration::from_millis(a.retry_initial_ms),
            retry_max: Duration::from_millis(a.retry_max_ms),
            command_deadline: Duration::from_millis(a.command_deadline_ms),
            recent_capacity: a.recent_capacity,
        })
    }
}

/// A started agent: subscribed to the signals and holding every user's settings.
pub struct Agent {
    options: AgentOptions,
    bus: MarketBus,
    producer: UserEventProducer,
    signals: async_nats::Subscriber,
    reader: SettingsReader,
    book: SettingsBook,
}

impl Agent {
    /// Subscribes to `signals.*.*` (with the bus's prefix), then reads every user's settings
    /// from `user.settings`. Signals that arrive meanwhile wait in the subscription and are
    /// handled once the settings are in, so none is judged on partial settings.
    ///
    /// # Errors
    /// NATS or Kafka is unreachable, or `user.settings` cannot be read (see
    /// [`SettingsReader::open`]).
    pub async fn start(options: AgentOptions, bus: MarketBus) -> Result<Agent, AgentError> {
        let producer = UserEventProducer::new(&options.kafka)?;
        let subject = format!("{}signals.*.*", bus.prefix());
        let signals = bus.subscribe(subject.clone()).await?;
        // The server has the subscription once it answers the flush's ping: from here on no
        // signal is missed.
        tokio::time::timeout(Duration::from_secs(10), bus.client().flush())
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|detail| MessagingError::Nats {
                op: "subscribe",
                subject: subject.clone(),
                detail,
            })?;
        let book = SettingsBook::default();
        let reader = SettingsReader::open(
            &options.kafka,
            GROUP,
            book.clone(),
            options.retry_initial,
            options.retry_max,
        )
        .await?;
        tracing::info!(%subject, users = book.len(), "auto-trading agent started");
        Ok(Agent {
            options,
            bus,
            producer,
            signals,
            reader,
            book,
        })
    }

    /// The settings the agent trades by (updated live while it runs).
    #[must_use]
    pub fn book(&self) -> SettingsBook {
        self.book.clone()
    }

    /// Follows the settings and trades the signals until `shutdown`.
    ///
    /// # Errors
    /// The signal subscription ended (the NATS client was closed).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let Agent {
            options,
            bus,
            producer,
            signals,
            reader,
            book,
        } = self;
        let follow = reader.follow(shutdown.clone());
        let follow = async { follow.await.map_err(AgentError::from) };
        let trade = trade_signals(options, bus, producer, signals, book, shutdown);
        tokio::try_join!(follow, trade)?;
        tracing::info!("auto-trading agent stopped");
        Ok(())
    }
}

/// [`Agent::start`] (abandoned if `shutdown` comes first), then [`Agent::run`].
///
/// # Errors
/// See [`Agent::start`] and [`Agent::run`].
pub async fn run_agent(
    options: AgentOptions,
    bus: MarketBus,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let agent = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        started = Agent::start(options, bus) => started?,
    };
    agent.run(shutdown).await
}

async fn trade_signals(
    options: AgentOptions,
    bus: MarketBus,
    producer: UserEventProducer,
    mut signals: async_nats::Subscriber,
    book: SettingsBook,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut recent = RecentSet::new(options.recent_capacity);
    loop {
        let message = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            m = signals.next() => m.ok_or(AgentError::SignalsEnded)?,
        };
        let arrived = Instant::now();
        let signal: Signal = match serde_json::from_slice(&message.payload) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "an unreadable signal; ignored");
                continue;
            }
        };
        if let Err(why) = plan::check_subject(bus.prefix(), &message.subject, &signal) {
            tracing::warn!(subject = %message.subject, signal_id = %signal.signal_id, "{why}; ignored");
            continue;
        }
        let commands = plan_signal(&signal, &book, &recent);
        if commands.is_empty() {
            continue;
        }
        let deadline = arrived + options.command_deadline;
        let sent: Vec<Option<String>> = futures::stream::iter(commands)
            .map(|command| send(&producer, command, deadline, &options, &shutdown))
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        for id in sent.into_iter().flatten() {
            recent.insert(id);
        }
    }
}

/// The commands `signal` makes, leaving out those already sent.
fn plan_signal(signal: &Signal, book: &SettingsBook, recent: &RecentSet) -> Vec<TradeCommand> {
    let strategy = signal.strategy.as_str();
    let now = now_ms();
    let mut commands = Vec::new();
    for (user, settings) in book.opted_in(strategy) {
        match plan::decide(signal, &user, &settings, now) {
            Decision::Open(command) | Decision::Close(command)
                if recent.contains(&command.head.event_id) =>
            {
                tracing::debug!(user_id = %user, signal_id = %signal.signal_id, "signal already traded for this user");
                count(strategy, "duplicate");
            }
            Decision::Open(command) | Decision::Close(command) => commands.push(*command),
            Decision::TooSmall {
                requested,
                max_volume,
            } => {
                tracing::info!(user_id = %user, signal_id = %signal.signal_id, %requested, %max_volume, "auto-trading volume capped by risk.max_volume is below the lot step; no command");
                count(strategy, "skipped");
            }
            // The book only returns opted-in users.
            Decision::NotOptedIn => {}
        }
    }
    commands
}

/// Sends `command` until Kafka acknowledges it (its id) or it is given up (`None`).
async fn send(
    producer: &UserEventProducer,
    command: TradeCommand,
    deadline: Instant,
    options: &AgentOptions,
    shutdown: &CancellationToken,
) -> Option<String> {
    let strategy = command
        .head
        .metadata
        .as_ref()
        .and_then(|m| m.strategy.clone())
        .unwrap_or_default();
    let signal_id = command
        .head
        .metadata
        .as_ref()
        .and_then(|m| m.signal_id.clone())
        .unwrap_or_default();
    let mut backoff = options.retry_initial;
    loop {
        let attempt = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                tracing::warn!(user_id = %command.head.user_id, command_id = %command.head.event_id, %signal_id, "shutdown before Kafka acknowledged the command; it may or may not be queued");
                return None;
            }
            r = producer.send(&command) => r,
        };
        let error = match attempt {
            Ok(delivery) => {
                let (symbol, side, volume) = command
                    .kind
                    .order()
                    .map(|o| (o.symbol.to_string(), o.side.as_str(), o.volume.to_string()))
                    .unwrap_or_default();
                tracing::info!(
                    user_id = %command.head.user_id,
                    command_id = %command.head.event_id,
                    %strategy,
                    %signal_id,
                    %symbol,
                    side,
                    %volume,
                    partition = delivery.partition,
                    offset = delivery.offset,
                    "OPEN_TRADE queued for a signal"
                );
                count(&strategy, "emitted");
                return Some(command.head.event_id);
            }
            Err(e) => e,
        };
        if !error.is_retryable() || Instant::now() + backoff > deadline {
            tracing::error!(
                user_id = %command.head.user_id,
                command_id = %command.head.event_id,
                %strategy,
                %signal_id,
                topic = UserTopic::Commands.name(),
                retryable = error.is_retryable(),
                error = %error,
                "the signal's command was not queued; given up"
            );
            count(&strategy, "failed");
            return None;
        }
        tracing::warn!(user_id = %command.head.user_id, command_id = %command.head.event_id, %signal_id, error = %error, retry_in = ?backoff, "Kafka did not take the command; retrying");
        tokio::select! {
            () = shutdown.cancelled() => {
                tracing::warn!(user_id = %command.head.user_id, command_id = %command.head.event_id, %signal_id, "shutdown while retrying; the command was not queued");
                return None;
            }
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(options.retry_max);
    }
}

fn count(strategy: &str, outcome: &'static str) {
    metrics::counter!(names::AGENT_COMMANDS, "strategy" => strategy.to_string(), "outcome" => outcome)
        .increment(1);
}
