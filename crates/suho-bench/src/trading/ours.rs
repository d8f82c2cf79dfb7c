//! Our paths: commands from the registered users, through the gateway (`http`) or straight
//! into `user.commands` (`kafka`), to their outcome on `user.trades`.
//!
//! One outcome reader runs for the whole bench ([`spawn_outcome_reader`]): a `read_committed`
//! consumer of every partition of `user.trades` from the beginning, with the platform's
//! consumer settings. It notes when each outcome became visible, by `command_id`, and the
//! trades each user has open (from `TRADE_EXECUTED`), which the senders close.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use rdkafka::consumer::StreamConsumer;
use rdkafka::Message;
use rust_decimal::Decimal;
use serde::Deserialize;
use suho_domain::{Order, Side, Symbol, TradeCommand, UserTopic};
use suho_messaging::{now_ms, UserEventProducer};
use tokio_util::sync::CancellationToken;

use super::platform::BenchUser;
use super::{clients, due_offset, new_histogram, record, TradingPath, TradingPhaseResult};

/// What an outcome event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutcomeKind {
    Executed,
    Closed,
    /// `TRADE_REJECTED` or `ORDER_REJECTED`.
    Rejected,
    Other,
}

/// One outcome of a command, as the reader saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) at: Instant,
    pub(crate) kind: OutcomeKind,
}

/// A rejection's reason, kept for the report (the first of each phase).
type Reasons = Mutex<HashMap<String, String>>;

/// The fields of a `user.trades` record the bench reads.
#[derive(Deserialize)]
struct OutcomeRecord {
    event_type: String,
    #[serde(default)]
    command_id: Option<String>,
    user_id: String,
    #[serde(default)]
    trade_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// What the outcome reader has seen so far.
#[derive(Default)]
pub(crate) struct Outcomes {
    by_command: Mutex<HashMap<String, Vec<Seen>>>,
    /// Outcomes with a `command_id`, duplicates included.
    total: AtomicU64,
    /// Per user, the trades executed and not yet taken by a sender to close.
    open_trades: Mutex<HashMap<String, VecDeque<String>>>,
    /// Rejections' reasons, by command id.
    reasons: Reasons,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Outcomes {
    fn record(&self, outcome: OutcomeRecord, at: Instant) {
        let kind = match outcome.event_type.as_str() {
            "TRADE_EXECUTED" => OutcomeKind::Executed,
            "TRADE_CLOSED" => OutcomeKind::Closed,
            "TRADE_REJECTED" | "ORDER_REJECTED" => OutcomeKind::Rejected,
            _ => OutcomeKind::Other,
        };
        if kind == OutcomeKind::Executed {
            if let Some(trade) = outcome.trade_id {
                lock(&self.open_trades)
                    .entry(outcome.user_id)
                    .or_default()
                    .push_back(trade);
            }
        }
        if let (OutcomeKind::Rejected, Some(command), Some(reason)) =
            (kind, &outcome.command_id, outcome.reason)
        {
            lock(&self.reasons).insert(command.clone(), reason);
        }
        if let Some(command) = outcome.command_id {
            lock(&self.by_command)
                .entry(command)
                .or_default()
                .push(Seen { at, kind });
            self.total.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The user's oldest open trade, taken (no other command will close it).
    pub(crate) fn take_open_trade(&self, user: &str) -> Option<String> {
        lock(&self.open_trades).get_mut(user)?.pop_front()
    }

    /// `f` of every command's outcomes so far, by command id.
    pub(crate) fn with_seen<R>(&self, f: impl FnOnce(&HashMap<String, Vec<Seen>>) -> R) -> R {
        f(&lock(&self.by_command))
    }

    /// How many of `ids` have been answered.
    pub(crate) fn answered<'a>(&self, ids: impl Iterator<Item = &'a str>) -> usize {
        let seen = lock(&self.by_command);
        ids.filter(|id| seen.contains_key(*id)).count()
    }
}

/// Starts the outcome reader; it runs until `stop`.
///
/// # Errors
/// The consumer cannot be created or assigned.
pub(crate) fn spawn_outcome_reader(
    config: &suho_config::Config,
    outcomes: Arc<Outcomes>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let topic = UserTopic::Trades.full_name(&config.kafka.topic_prefix);
    let consumer: StreamConsumer = clients::consumer(
        &config.kafka,
        &config.telemetry,
        &format!("{}bench-outcomes", config.kafka.group_prefix),
    )
    .create()
    .context("creating the outcome reader")?;
    clients::assign_from_beginning(&consumer, &topic)?;
    Ok(tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                m = consumer.recv() => m,
            };
            match received {
                Ok(msg) => {
                    let at = Instant::now();
                    let parsed = msg
                        .payload()
                        .and_then(|p| serde_json::from_slice::<OutcomeRecord>(p).ok());
                    if let Some(outcome) = parsed {
                        outcomes.record(outcome, at);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "bench: reading user.trades"),
            }
        }
    }))
}

/// What every phase of ours shares.
pub(crate) struct Context {
    pub(crate) users: Arc<Vec<BenchUser>>,
    pub(crate) symbols: Arc<Vec<Symbol>>,
    pub(crate) volume: Decimal,
    pub(crate) http: reqwest::Client,
    pub(crate) http_addr: SocketAddr,
    /// The `kafka` path's producer (`UserEventProducer`, as the gateway's).
    pub(crate) producer: UserEventProducer,
    pub(crate) outcomes: Arc<Outcomes>,
}

/// One phase of ours.
pub(crate) struct Phase {
    pub(crate) path: TradingPath,
    pub(crate) rate: u32,
    pub(crate) duration: Duration,
    pub(crate) backlog_limit: u64,
    pub(crate) drain_timeout: Duration,
}

fn open_command(ctx_volume: Decimal, user: &BenchUser, symbol: Symbol) -> TradeCommand {
    TradeCommand::open(
        user.id.clone(),
        Order {
            symbol,
            side: Side::Buy,
            volume: ctx_volume,
            stop_loss: None,
            take_profit: None,
        },
        None,
        now_ms(),
    )
}

/// One open per user through Kafka, each answered before anything is timed: the engine has
/// joined its group and every account exists (with one open trade, which the first phase
/// closes).
///
/// # Errors
/// A command is not acknowledged, or not answered within `timeout`.
pub(crate) async fn warm_up(ctx: &Context, timeout: Duration) -> anyhow::Result<()> {
    let commands: Vec<TradeCommand> = ctx
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| open_command(ctx.volume, u, ctx.symbols[i % ctx.symbols.len()]))
        .collect();
    send_and_wait(&ctx.producer, &ctx.outcomes, &commands, timeout, "warm-up").await
}

/// Produces every one of `commands` (acknowledged, a few thousand at a time), then waits
/// until `outcomes` has an answer to each, at most `timeout` from the start.
///
/// # Errors
/// A command is not acknowledged, or not answered in time (named `what`).
pub(crate) async fn send_and_wait(
    producer: &UserEventProducer,
    outcomes: &Outcomes,
    commands: &[TradeCommand],
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for chunk in commands.chunks(4_000) {
        let sent = futures::future::join_all(chunk.iter().map(|c| producer.send(c))).await;
        for r in sent {
            r.with_context(|| format!("{what}: queuing a command"))?;
        }
    }
    loop {
        let answered = outcomes.answered(commands.iter().map(|c| c.head.event_id.as_str()));
        if answered == commands.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: {} of {} commands unanswered after {timeout:?}",
                commands.len() - answered,
                commands.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A command accepted by the gateway or by Kafka.
struct Accepted {
    id: String,
    due: Instant,
    close: bool,
}

/// The senders' shared state.
struct Sending {
    accepted: Mutex<Vec<Accepted>>,
    accept_ns: Mutex<Histogram<u64>>,
    refused: AtomicU64,
    first_refusal: Mutex<Option<String>>,
    in_flight: AtomicU64,
}

impl Sending {
    fn accept(&self, id: String, due: Instant, close: bool) {
        record(&mut lock(&self.accept_ns), due.elapsed());
        lock(&self.accepted).push(Accepted { id, due, close });
    }

    fn refuse(&self, why: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        lock(&self.first_refusal).get_or_insert(why);
    }
}

/// `{"status":"queued","command_id":...}`.
#[derive(Deserialize)]
struct Queued {
    command_id: String,
}

/// The sender thread's inputs, owned.
struct Schedule {
    path: TradingPath,
    rate: u32,
    total: u64,
    start: Instant,
    backlog_limit: u64,
    /// The outcome count when the phase began.
    base: u64,
    users: Arc<Vec<BenchUser>>,
    symbols: Arc<Vec<Symbol>>,
    volume: Decimal,
    http: reqwest::Client,
    open_url: Arc<str>,
    close_url: Arc<str>,
    producer: UserEventProducer,
    outcomes: Arc<Outcomes>,
}

/// Sends command `i` at `start + i / rate` (open loop), each on its own task; stops early
/// when more than `backlog_limit` are unanswered. Returns how many were sent and, if it
/// stopped early, after how long. Runs on a blocking thread so the schedule does not wait
/// for the async workers.
fn send_schedule(
    handle: &tokio::runtime::Handle,
    s: &Schedule,
    sending: &Arc<Sending>,
) -> (u64, Option<Duration>) {
    let users = s.users.len() as u64;
    for i in 0..s.total {
        let due = s.start + due_offset(i, s.rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if i % 16 == 0 {
            let answered = s.outcomes.total().saturating_sub(s.base);
            if i.saturating_sub(answered) > s.backlog_limit {
                return (i, Some(due.saturating_duration_since(s.start)));
            }
        }
        #[allow(clippy::cast_possible_truncation)]
        let user = &s.users[(i % users) as usize];
        let close = s.outcomes.take_open_trade(user.id.as_str());
        #[allow(clippy::cast_possible_truncation)]
        let symbol = s.symbols[(i % s.symbols.len() as u64) as usize];
        sending.in_flight.fetch_add(1, Ordering::Relaxed);
        let sending = Arc::clone(sending);
        match s.path {
            TradingPath::Kafka => {
                let is_close = close.is_some();
                let command = match close {
                    Some(trade) => TradeCommand::close(user.id.clone(), trade, now_ms()),
                    None => open_command(s.volume, user, symbol),
                };
                let producer = s.producer.clone();
                handle.spawn(async move {
                    match producer.send(&command).await {
                        Ok(_) => sending.accept(command.head.event_id, due, is_close),
                        Err(e) => sending.refuse(format!("producing: {e}")),
                    }
                    sending.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            _ => {
                let is_close = close.is_some();
                let (url, body) = match close {
                    Some(trade) => (
                        Arc::clone(&s.close_url),
                        format!(r#"{{"trade_id":"{trade}"}}"#),
                    ),
                    None => (
                        Arc::clone(&s.open_url),
                        format!(
                            r#"{{"symbol":"{symbol}","type":"BUY","volume":{}}}"#,
                            s.volume
                        ),
                    ),
                };
                let request = s
                    .http
                    .post(&*url)
                    .header(reqwest::header::AUTHORIZATION, &*user.authorization)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .timeout(Duration::from_secs(30));
                handle.spawn(async move {
                    match request.send().await {
                        Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                            match r.json::<Queued>().await {
                                Ok(q) => sending.accept(q.command_id, due, is_close),
                                Err(e) => sending.refuse(format!("reading the 202: {e}")),
                            }
                        }
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            sending.refuse(format!("HTTP {status}: {text}"));
                        }
                        Err(e) => sending.refuse(format!("HTTP: {e}")),
                    }
                    sending.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
    (s.total, None)
}

/// Runs one phase of ours and measures it.
///
/// # Errors
/// The sender thread panicked or a histogram could not be made.
pub(crate) async fn run(ctx: &Context, phase: &Phase) -> anyhow::Result<TradingPhaseResult> {
    let total = u64::from(phase.rate) * u64::try_from(phase.duration.as_millis())? / 1000;
    let mut result = TradingPhaseResult::new(phase.path, phase.rate, total)?;
    let sending = Arc::new(Sending {
        accepted: Mutex::new(Vec::new()),
        accept_ns: Mutex::new(new_histogram()?),
        refused: AtomicU64::new(0),
        first_refusal: Mutex::new(None),
        in_flight: AtomicU64::new(0),
    });
    let base = ctx.outcomes.total();
    let schedule = Schedule {
        path: phase.path,
        rate: phase.rate,
        total,
        start: Instant::now() + Duration::from_millis(10),
        backlog_limit: phase.backlog_limit,
        base,
        users: Arc::clone(&ctx.users),
        symbols: Arc::clone(&ctx.symbols),
        volume: ctx.volume,
        http: ctx.http.clone(),
        open_url: Arc::from(format!("http://{}/api/trade/open", ctx.http_addr)),
        close_url: Arc::from(format!("http://{}/api/trade/close", ctx.http_addr)),
        producer: ctx.producer.clone(),
        outcomes: Arc::clone(&ctx.outcomes),
    };
    let start = schedule.start;
    let handle = tokio::runtime::Handle::current();
    let sender = Arc::clone(&sending);
    let (sent, stopped_after) =
        tokio::task::spawn_blocking(move || send_schedule(&handle, &schedule, &sender))
            .await
            .context("the sender thread panicked")?;
    result.sent = sent;
    result.stopped_after = stopped_after;

    // Drain: until every accepted command is answered, no answer came for 10 s, or the
    // timeout.
    let deadline = Instant::now() + phase.drain_timeout;
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answered = ctx.outcomes.total().saturating_sub(base);
        if sending.in_flight.load(Ordering::Relaxed) == 0 {
            let accepted = lock(&sending.accepted);
            if answered >= accepted.len() as u64
                && ctx
                    .outcomes
                    .answered(accepted.iter().map(|a| a.id.as_str()))
                    == accepted.len()
            {
                break;
            }
        }
        if answered != last.0 {
            last = (answered, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) || Instant::now() > deadline {
            break;
        }
    }
    // A duplicate would come right behind its first.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let accepted = std::mem::take(&mut *lock(&sending.accepted));
    result.accepted = accepted.len() as u64;
    result.refused = sending.refused.load(Ordering::Relaxed);
    result.first_refusal = lock(&sending.first_refusal).take();
    result.accept_ns = lock(&sending.accept_ns).clone();
    let mut last_answer: Option<Instant> = None;
    {
        let seen = lock(&ctx.outcomes.by_command);
        for a in &accepted {
            let Some(outcomes) = seen.get(&a.id) else {
                result.missing += 1;
                continue;
            };
            result.answered += 1;
            result.duplicated += outcomes.len() as u64 - 1;
            let first = outcomes[0];
            last_answer = last_answer.max(Some(first.at));
            let latency = first.at.saturating_duration_since(a.due);
            match (a.close, first.kind) {
                (false, OutcomeKind::Executed) => record(&mut result.fill_ns, latency),
                (true, OutcomeKind::Closed) => record(&mut result.close_ns, latency),
                (_, OutcomeKind::Rejected) => {
                    result.rejected += 1;
                    if result.first_rejection.is_none() {
                        result.first_rejection = lock(&ctx.outcomes.reasons).get(&a.id).cloned();
                    }
                }
                _ => result.unexpected += 1,
            }
        }
    }
    let elapsed = last_answer
        .map_or(phase.duration, |t| t.saturating_duration_since(start))
        .max(Duration::from_millis(1));
    #[allow(clippy::cast_precision_loss)]
    {
        result.answered_per_sec = result.answered as f64 / elapsed.as_secs_f64();
    }
    Ok(result)
}
