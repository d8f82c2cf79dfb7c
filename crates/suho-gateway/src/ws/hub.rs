//! Who is connected, and what each connection has waiting to be written.
//!
//! The [`Registry`] maps symbols and users to connections; the feeds (`feed`) route each
//! message, built once, to the [`Client`]s that want it. A client's queues never block the
//! router:
//! - market messages wait in arrival order, at most `market_depth` per subject; past that the
//!   oldest waiting one of the subject is dropped for the newest (conflation, counted in
//!   `ws_market_conflated_total`), so a client that lags gets recent quotes, not a backlog.
//!   A writer that wakes late takes what waits in one batch, one socket write for all;
//! - user events, control and error messages are never dropped: past `user_queue` waiting
//!   messages the client is disconnected as too slow (it can resume).
//!
//! User events pass a per-partition filter: an event at or below the last offset this
//! connection was given is dropped, so a catch-up and the live stream never repeat one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::Utf8Bytes;
use serde_json::json;
use suho_domain::{Symbol, UserTopic};
use suho_telemetry::names;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Position};

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its user-event queue overflowed.
    TooSlow,
    /// The server is stopping.
    Shutdown,
    /// A resume could not read the log (the client may try again).
    ResumeFailed,
    /// The token the connection was opened with expired.
    TokenExpired,
    /// The token the connection was opened with is no longer accepted (logged out).
    TokenRevoked,
}

/// The channel of a message that is never dropped (the label of `ws_messages_sent_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The connection's user's events.
    User,
    /// Control messages (`authenticated`, `subscribed`, `ready`, ...).
    Control,
    /// Errors answering a client message.
    Error,
}

/// A user event ready to send.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Its topic.
    pub topic: UserTopic,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The envelope.
    pub message: Utf8Bytes,
}

/// What a client has waiting.
#[derive(Default)]
struct Queues {
    /// User events, control and error messages, in order.
    ordered: VecDeque<(Utf8Bytes, Channel)>,
    /// Market messages waiting per subject, oldest first, each with its arrival number.
    /// Entries stay when emptied (the next message reuses the allocation).
    market: HashMap<Arc<str>, VecDeque<(u64, Utf8Bytes)>>,
    /// The next arrival number.
    market_seq: u64,
    /// Live user events held while a resume catches up.
    held: Option<Vec<UserRecord>>,
    /// The next offset this connection may be given, per (topic, partition).
    next: HashMap<(UserTopic, i32), i64>,
    /// Whether a user event was queued yet (a resume must come before).
    user_given: bool,
    /// Messages queued at once by a release (the catch-up and the held events), allowed on
    /// top of the limit until the writer takes them.
    allowance: usize,
}

/// One connection's side of the hub.
pub struct Client {
    /// The connection's id.
    pub id: u64,
    /// Its user.
    pub user: Arc<str>,
    user_queue: usize,
    market_limit: usize,
    market_depth: usize,
    queues: Mutex<Queues>,
    notify: Notify,
    closed: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
}

/// What the writer takes at once.
#[derive(Default)]
pub struct Batch {
    /// Ordered messages first, with their channel.
    pub ordered: Vec<(Utf8Bytes, Channel)>,
    /// Then the waiting market messages, in arrival order.
    pub market: Vec<Utf8Bytes>,
}

/// A client's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Ordered messages waiting before the client is closed as too slow.
    pub user_queue: usize,
    /// Market subjects with messages waiting; a message of a further subject is dropped.
    pub market_subjects: usize,
    /// Market messages waiting per subject; a further one replaces the oldest.
    pub market_depth: usize,
}

impl Client {
    /// A client of `user` with these limits.
    pub fn new(id: u64, user: Arc<str>, limits: Limits) -> Client {
        Client {
            id,
            user,
            user_queue: limits.user_queue,
            market_limit: limits.market_subjects,
            market_depth: limits.market_depth.max(1),
            queues: Mutex::new(Queues::default()),
            notify: Notify::new(),
            closed: CancellationToken::new(),
            reason: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Cancelled when the server closes this connection.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Why the server closed it, if it did.
    pub fn reason(&self) -> Option<CloseReason> {
        *self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the connection (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let mut r = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.is_none() {
            *r = Some(reason);
            if reason == CloseReason::TooSlow {
                metrics::counter!(names::WS_DISCONNECTED_SLOW).increment(1);
                tracing::warn!(user_id = %self.user, connection = self.id, "WebSocket client too slow; disconnecting");
            }
        }
        drop(r);
        self.closed.cancel();
    }

    /// Queues a market message; with `market_depth` of its subject waiting already, the
    /// oldest of them is dropped.
    pub fn push_market(&self, subject: &Arc<str>, message: Utf8Bytes) {
        let mut q = self.lock();
        let seq = q.market_seq;
        q.market_seq += 1;
        if !q.market.contains_key(subject) {
            if q.market.len() >= self.market_limit {
                q.market.retain(|_, waiting| !waiting.is_empty());
            }
            if q.market.len() >= self.market_limit {
                drop(q);
                metrics::counter!(names::WS_MARKET_CONFLATED).increment(1);
                return;
            }
            q.market.insert(subject.clone(), VecDeque::new());
        }
        let depth = self.market_depth;
        let Some(waiting) = q.market.get_mut(subject) else {
            return;
        };
        let conflated = waiting.len() >= depth;
        if conflated {
            waiting.pop_front();
        }
        waiting.push_back((seq, message));
        drop(q);
        if conflated {
            metrics::counter!(names::WS_MARKET_CONFLATED).increment(1);
        } else {
            self.notify.notify_one();
        }
    }

    /// Queues a control or error message (never dropped).
    pub fn push_ordered(&self, message: Utf8Bytes, channel: Channel) {
        let mut q = self.lock();
        q.ordered.push_back((message, channel));
        self.after_ordered(q);
    }

    fn after_ordered(&self, q: std::sync::MutexGuard<'_, Queues>) {
        let over = q.ordered.len() > self.user_queue + q.allowance;
        drop(q);
        if over {
            self.close(CloseReason::TooSlow);
        } else {
            self.notify.notify_one();
        }
    }

    /// A live user event: held during a resume, otherwise queued.
    pub fn push_user(&self, record: &UserRecord) {
        let mut q = self.lock();
        if let Some(held) = q.held.as_mut() {
            held.push(record.clone());
            // A resume that cannot keep up with the live stream is as slow as a full queue.
            if held.len() > self.user_queue.saturating_mul(16).max(1024) {
                drop(q);
                self.close(CloseReason::TooSlow);
            }
            return;
        }
        if give(&mut q, record) {
            self.after_ordered(q);
        }
    }

    /// Starts holding live user events, until [`Client::release`]: at connect, and for a
    /// `resume` message. `false` if a user event was already queued on this connection (a
    /// resume could not be in order after it). The partitions `named` are read again from
    /// the log, so what this connection has of them is forgotten.
    pub fn hold(&self, named: &[(UserTopic, i32)]) -> bool {
        let mut q = self.lock();
        if q.held.is_none() {
            if q.user_given {
                return false;
            }
            q.held = Some(Vec::new());
        }
        for key in named {
            q.next.remove(key);
        }
        true
    }

    /// Ends a hold: queues `caught_up` (read from the log), marks each partition of
    /// `read_to` as given up to its end and each of `live_from` not started yet as starting at
    /// its end (or at its first held event, if earlier: the hold began before the end was
    /// read), then queues
    /// the held live events, each through the per-partition filter (so none twice, none out
    /// of order), then `{"channel":"control","event":"ready","events":n,"positions":[...]}`
    /// with the last position of every partition this connection knows of.
    pub fn release(
        &self,
        caught_up: &[UserRecord],
        read_to: &[(UserTopic, i32, i64)],
        live_from: &[(UserTopic, i32, i64)],
    ) {
        let mut q = self.lock();
        for record in caught_up {
            give(&mut q, record);
        }
        for (topic, partition, end) in read_to {
            let next = q.next.entry((*topic, *partition)).or_insert(0);
            *next = (*next).max(*end);
        }
        for (topic, partition, end) in live_from {
            if q.next.contains_key(&(*topic, *partition)) {
                // Started before (a resume after `ready`): it goes on from there.
                continue;
            }
            let first_held = q
                .held
                .iter()
                .flatten()
                .filter(|r| r.topic == *topic && r.partition == *partition)
                .map(|r| r.offset)
                .min();
            let start = first_held.map_or(*end, |h| h.min(*end));
            q.next.insert((*topic, *partition), start);
        }
        for record in q.held.take().unwrap_or_default() {
            give(&mut q, &record);
        }
        let mut positions: Vec<_> = q.next.iter().map(|(k, next)| (*k, *next)).collect();
        positions.sort();
        let positions: Vec<String> = positions
            .into_iter()
            .map(|((topic, partition), next)| {
                Position {
                    topic,
                    partition,
                    offset: next - 1,
                }
                .to_string()
            })
            .collect();
        let ready = protocol::control(
            "ready",
            json!({"events": caught_up.len(), "positions": positions}),
        );
        q.ordered.push_back((ready, Channel::Control));
        q.allowance = q.ordered.len();
        self.after_ordered(q);
    }

    /// Everything waiting, emptied.
    pub fn take(&self) -> Batch {
        let mut q = self.lock();
        q.allowance = 0;
        let ordered = q.ordered.drain(..).collect();
        let mut market: Vec<(u64, Utf8Bytes)> = Vec::new();
        let mut subjects = 0;
        for waiting in q.market.values_mut() {
            if !waiting.is_empty() {
                subjects += 1;
                market.extend(waiting.drain(..));
            }
        }
        if subjects > 1 {
            market.sort_unstable_by_key(|(seq, _)| *seq);
        }
        Batch {
            ordered,
            market: market.into_iter().map(|(_, m)| m).collect(),
        }
    }

    /// Waits until something is queued.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// Queues `record` if it is past what this connection was already given.
fn give(q: &mut Queues, record: &UserRecord) -> bool {
    let next = q.next.entry((record.topic, record.partition)).or_insert(0);
    if record.offset < *next {
        return false;
    }
    *next = record.offset + 1;
    q.user_given = true;
    q.ordered.push_back((record.message.clone(), Channel::User));
    true
}

/// The connections by symbol and by user.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Maps>,
}

#[derive(Default)]
struct Maps {
    by_symbol: HashMap<Symbol, HashMap<u64, Arc<Client>>>,
    by_user: HashMap<Arc<str>, HashMap<u64, Arc<Client>>>,
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a connection for its user's events.
    pub fn add(&self, client: &Arc<Client>) {
        self.write()
            .by_user
            .entry(client.user.clone())
            .or_default()
            .insert(client.id, client.clone());
        metrics::gauge!(names::WS_CONNECTIONS).increment(1.0);
    }

    /// Removes a connection and its subscriptions.
    pub fn remove(&self, client: &Client, symbols: &HashSet<Symbol>) {
        let mut maps = self.write();
        if let Some(conns) = maps.by_user.get_mut(&client.user) {
            conns.remove(&client.id);
            if conns.is_empty() {
                maps.by_user.remove(&client.user);
            }
        }
        for s in symbols {
            unsubscribe(&mut maps, client.id, *s);
        }
        drop(maps);
        metrics::gauge!(names::WS_CONNECTIONS).decrement(1.0);
    }

    /// Subscribes a connection to `symbols`.
    pub fn subscribe(&self, client: &Arc<Client>, symbols: &[Symbol]) {
        let mut maps = self.write();
        for s in symbols {
            maps.by_symbol
                .entry(*s)
                .or_default()
                .insert(client.id, client.clone());
        }
    }

    /// Unsubscribes a connection from `symbols`.
    pub fn unsubscribe(&self, client: &Client, symbols: &[Symbol]) {
        let mut maps = self.write();
        for s in symbols {
            unsubscribe(&mut maps, client.id, *s);
        }
    }

    /// Whether anyone follows `symbol`.
    pub fn wants_symbol(&self, symbol: Symbol) -> bool {
        self.read().by_symbol.contains_key(&symbol)
    }

    /// Hands a market message to every follower of `symbol`.
    pub fn route_market(&self, symbol: Symbol, subject: &Arc<str>, message: &Utf8Bytes) {
        if let Some(conns) = self.read().by_symbol.get(&symbol) {
            for c in conns.values() {
                c.push_market(subject, message.clone());
            }
        }
    }

    /// Whether `user` has a connection here.
    pub fn has_user(&self, user: &str) -> bool {
        self.read().by_user.contains_key(user)
    }

    /// Hands a user event to every connection of `user`.
    pub fn route_user(&self, user: &str, record: &UserRecord) {
        if let Some(conns) = self.read().by_user.get(user) {
            for c in conns.values() {
                c.push_user(record);
            }
        }
    }

    /// Every connection.
    pub fn all(&self) -> Vec<Arc<Client>> {
        self.read()
            .by_user
            .values()
            .flat_map(|c| c.values().cloned())
            .collect()
    }
}

fn unsubscribe(maps: &mut Maps, id: u64, symbol: Symbol) {
    if let Some(conns) = maps.by_symbol.get_mut(&symbol) {
        conns.remove(&id);
        if conns.is_empty() {
            maps.by_symbol.remove(&symbol);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64) -> UserRecord {
        UserRecord {
            topic: UserTopic::Trades,
            partition: 1,
            offset,
            message: Utf8Bytes::from(offset.to_string()),
        }
    }

    fn texts(batch: &Batch) -> Vec<&str> {
        batch.ordered.iter().map(|(m, _)| m.as_str()).collect()
    }

    fn limits(user_queue: usize, market_depth: usize) -> Limits {
        Limits {
            user_queue,
            market_subjects: 8,
            market_depth,
        }
    }

    fn market(batch: &Batch) -> Vec<&str> {
        batch.market.iter().map(Utf8Bytes::as_str).collect()
    }

    #[test]
    fn market_messages_are_conflated_per_subject() {
        let c = Client::new(1, "u".into(), limits(8, 1));
        let tick: Arc<str> = "market.EURUSD.tick".into();
        let candle: Arc<str> = "market.EURUSD.1m".into();
        c.push_market(&tick, "t1".into());
        c.push_market(&candle, "c1".into());
        c.push_market(&tick, "t2".into());
        assert_eq!(market(&c.take()), ["c1", "t2"]);
    }

    #[test]
    fn market_messages_wait_in_order_up_to_the_depth_of_their_subject() {
        let c = Client::new(1, "u".into(), limits(8, 2));
        let tick: Arc<str> = "market.EURUSD.tick".into();
        let other: Arc<str> = "market.GBPUSD.tick".into();
        for m in ["e1", "g1", "e2", "e3", "g2"] {
            let subject = if m.starts_with('e') { &tick } else { &other };
            c.push_market(subject, m.into());
        }
        // e1 gave way to e3; the rest keep their arrival order.
        assert_eq!(market(&c.take()), ["g1", "e2", "e3", "g2"]);
        assert!(c.take().market.is_empty());
        c.push_market(&tick, "e4".into());
        assert_eq!(market(&c.take()), ["e4"]);
    }

    #[test]
    fn a_resume_gives_each_event_once_in_order() {
        let c = Client::new(1, "u".into(), limits(64, 1));
        assert!(c.hold(&[]));
        // Live events arrive while catching up; the catch-up read up to offset 12 (end 13).
        c.push_user(&record(11));
        c.push_user(&record(12));
        c.push_user(&record(13));
        let caught_up: Vec<_> = (9..=12).map(record).collect();
        c.release(
            &caught_up,
            &[(UserTopic::Trades, 1, 13)],
            &[(UserTopic::Mt5Status, 0, 5)],
        );
        c.push_user(&record(13));
        c.push_user(&record(14));
        let b = c.take();
        let texts = texts(&b);
        assert_eq!(texts[..5], ["9", "10", "11", "12", "13"]);
        let ready: serde_json::Value = serde_json::from_str(texts[5]).unwrap();
        assert_eq!(ready["event"], "ready");
        assert_eq!(ready["events"], 4);
        assert_eq!(
            ready["positions"],
            json!(["user.trades:1:13", "user.mt5_status:0:4"])
        );
        assert_eq!(texts[6..], ["14"]);
        assert!(!c.hold(&[]), "a resume after user events is refused");
    }

    #[test]
    fn a_release_may_exceed_the_limit_until_the_writer_takes_it() {
        let c = Client::new(1, "u".into(), limits(2, 1));
        assert!(c.hold(&[]));
        for o in 0..5 {
            c.push_user(&record(o));
        }
        c.release(&[], &[], &[(UserTopic::Trades, 1, 0)]);
        assert!(!c.closed().is_cancelled());
        assert_eq!(c.take().ordered.len(), 6);
        for o in 5..8 {
            c.push_user(&record(o));
        }
        assert!(c.closed().is_cancelled(), "past the limit once taken");
    }

    #[test]
    fn an_overflowing_user_queue_closes_the_client() {
        let c = Client::new(1, "u".into(), limits(2, 1));
        for o in 0..3 {
            c.push_user(&record(o));
        }
        assert!(c.closed().is_cancelled());
        assert_eq!(c.reason(), Some(CloseReason::TooSlow));
    }
}
