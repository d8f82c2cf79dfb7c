//! The broker port ([`BrokerAdapter`]) and its paper implementation ([`PaperBroker`]).

use std::collections::HashMap;
use std::future::{ready, Future};
use std::sync::{Mutex, PoisonError};

use rust_decimal::Decimal;
use suho_domain::{
    AccountStatus, CancelOrder, ClosePositions, CloseTrade, CommandHead, ModifyTrade, OpenTrade,
    ReplaceOrder, Symbol, Tick, TradeEvent, Transaction, UserId,
};

use crate::account::{
    AccountConfig, AccountEvent, Applied, ApplyError, ConfigError, Outcome, PaperAccount,
    TickOutcome, UserLimits, MAX_BALANCE,
};
use crate::book::Book;
use crate::quotes::Quotes;
use crate::reject::RejectReason;

/// One account at a broker: the user and their MT5 account (as on the command).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    /// The user.
    pub user_id: UserId,
    /// The MT5 account; `None` is the user's default account.
    pub mt5_account: Option<String>,
}

impl AccountKey {
    /// The account a command trades on.
    #[must_use]
    pub fn of(command: &CommandHead) -> AccountKey {
        AccountKey {
            user_id: command.user_id.clone(),
            mt5_account: command.mt5_account.clone(),
        }
    }
}

/// Why a broker call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// Permanent: answer the command with `TRADE_REJECTED` (and a `RISK_LIMIT_BREACH` alert
    /// when [`RejectReason::is_limit_breach`]); do not retry.
    #[error("rejected: {0}")]
    Rejected(#[from] RejectReason),
    /// Transient (broker unreachable, timeout, no rate yet): retry with backoff; the command
    /// is not answered yet.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

impl BrokerError {
    /// `true` for [`BrokerError::Unavailable`].
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, BrokerError::Unavailable(_))
    }
}

/// A result of a broker call.
pub type BrokerResult<T> = Result<T, BrokerError>;

/// Which accounts a tick may act on (those of the users whose partitions this engine owns).
pub type ActsOn<'a> = &'a (dyn Fn(&AccountKey) -> bool + Sync);

/// The broker port the trading engine calls: every venue (the paper broker, a real MT5
/// terminal, a test venue) implements it, and the engine sees nothing else.
///
/// **Design.** Methods return `impl Future<Output = ...> + Send` (return-position `impl Trait`
/// in traits, stable since Rust 1.75) rather than `async fn`, so implementations promise a
/// `Send` future that a multi-threaded runtime can hold across `.await`. The trait is therefore
/// not object-safe: the engine is generic over `B: BrokerAdapter` (one broker per process);
/// should several kinds coexist, wrap them in an enum that implements the trait. Futures may
/// borrow the arguments. Each trade method takes the command's head and its typed kind, so
/// nothing behind the port asks again what kind of command it was given. Ids are derived from
/// command / request ids, so a retried call after [`BrokerError::Unavailable`] returns the
/// original event with `replayed: true` if the first attempt did execute.
///
/// **State.** The engine's log (`user.trades`, `user.transactions`) is the record of what
/// every account did; [`BrokerAdapter::restore`] hands it to the venue whenever the engine
/// takes partitions over (the paper broker rebuilds its accounts from it; a real venue
/// would reconcile its journal of command ids). Users' own limits
/// ([`BrokerAdapter::set_limits`]) come from their settings.
///
/// **Prices.** The engine passes the [`Tick`] it got from the price service (with its own
/// staleness guard); the paper broker fills at it (BUY at the ask, SELL at the bid).
///
/// **A real MT5 adapter** (not built here: it needs a terminal) would implement the same
/// methods over a bridge to the terminal (an MQL5 expert advisor or the MetaTrader5 Python
/// package behind a small socket/HTTP service), with a timeout on every call:
/// - `open` sends a market `order_send` with the command id in the order comment / magic, and
///   before a retry searches open positions and deal history for that comment, so a
///   redelivered command never trades twice; the tick is only a reference price (the server
///   fills at its own).
/// - MT5 return codes map to [`BrokerError::Rejected`] for permanent ones (invalid volume or
///   stops, no money, market closed, trade disabled) and to [`BrokerError::Unavailable`] for
///   transient ones (requote, price off, timeout, no connection); network errors are
///   `Unavailable`.
/// - `deposit` / `withdraw` are balance operations of the broker's manager API (usually not
///   available to a terminal: reject them); `open_account` answers with the linked account's
///   balance.
/// - `status` reads `account_info`; `on_tick` polls deal history for server-side closes (stop
///   loss, take profit, stop out are enforced by the MT5 server) and reports them as events.
pub trait BrokerAdapter: Send + Sync {
    /// Opens a position for an `OPEN_TRADE` command; the outcome event is `TRADE_EXECUTED`.
    fn open(
        &self,
        command: &CommandHead,
        open: &OpenTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send;

    /// Closes a position for a `CLOSE_TRADE` command; `TRADE_CLOSED` with the profit.
    fn close(
        &self,
        command: &CommandHead,
        close: &CloseTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send;

    /// Closes every position a strategy opened on a symbol for a `CLOSE_POSITIONS`
    /// command, priced by `tick` (of that symbol): one `TRADE_CLOSED` each (the outcome's
    /// `closes`, then its `event`); rejected when there is none.
    fn close_positions(
        &self,
        command: &CommandHead,
        close: &ClosePositions,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send;

    /// Changes stops for a `MODIFY_TRADE` command; `TRADE_MODIFIED`.
    fn modify(
        &self,
        command: &CommandHead,
        modify: &ModifyTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send;

    /// Cancels a pending order for a `CANCEL_ORDER` command; `ORDER_CANCELLED`.
    fn cancel(
        &self,
        command: &CommandHead,
        cancel: &CancelOrder,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send;

    /// Changes a pending order for a `REPLACE_ORDER` command, checked against `tick` (of the
    /// order's symbol); `ORDER_REPLACED`.
    fn replace(
        &self,
        command: &CommandHead,
        replace: &ReplaceOrder,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send;

    /// The symbol the command `command` on pending order `order_id` must be priced in (to
    /// replace it); `Ok(None)` when no such order is pending (the command is rejected).
    fn order_symbol(
        &self,
        command: &CommandHead,
        order_id: &str,
    ) -> impl Future<Output = BrokerResult<Option<Symbol>>> + Send;

    /// The symbol the command `command` on position `trade_id` must be priced in (to close or
    /// modify it); `Ok(None)` when no such position is open (the command is rejected).
    fn position_symbol(
        &self,
        command: &CommandHead,
        trade_id: &str,
    ) -> impl Future<Output = BrokerResult<Option<Symbol>>> + Send;

    /// Credits an account; `request_id` is the idempotency key.
    fn deposit(
        &self,
        account: &AccountKey,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send;

    /// Debits an account (at most its free margin); `request_id` is the idempotency key.
    fn withdraw(
        &self,
        account: &AccountKey,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send;

    /// Opens an account for an `OPEN_ACCOUNT` command: `ACCOUNT_OPENED` with its opening
    /// balance (`amount`, `balance_after`); `request_id` is the idempotency key (a repeated
    /// one answers the same event). An account that already has a history is not opened
    /// again ([`RejectReason::AlreadyOpen`]).
    fn open_account(
        &self,
        account: &AccountKey,
        request_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send;

    /// The account's `ACCOUNT_STATUS` snapshot.
    fn status(
        &self,
        account: &AccountKey,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<AccountStatus>> + Send;

    /// A market tick, which every account values with from now on; broker-initiated fills,
    /// closes and risk alerts of the accounts `acts_on` accepts, to publish.
    fn on_tick(
        &self,
        tick: &Tick,
        now_ms: i64,
        acts_on: ActsOn<'_>,
    ) -> impl Future<Output = BrokerResult<TickOutcome>> + Send;

    /// Every account the venue holds, sorted.
    fn accounts(&self) -> Vec<AccountKey>;

    /// Replaces the venue's state by what `events` (the log, in order per partition) record,
    /// in one step: no other call sees a half-restored venue.
    fn restore(&self, events: &[(AccountKey, AccountEvent)]) -> Rebuilt;

    /// Sets `user`'s own limits on every account of theirs, now and when one is created;
    /// `None` goes back to the venue's configured ones.
    fn set_limits(&self, user: &UserId, limits: Option<UserLimits>);
}

/// Settings of a [`PaperBroker`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaperBrokerConfig {
    /// The rules of every account.
    pub account: AccountConfig,
    /// Balance of a new account (default 0: money arrives by deposit). Not an event: a
    /// rebuild must use the same value.
    pub initial_balance: Decimal,
}

impl PaperBrokerConfig {
    /// The platform's paper accounts (`trading.paper_leverage`, `trading.paper_opening_balance`
    /// in whole units of the account currency), with the default user risk limits
    /// ([`suho_domain::RiskSettings::default`]) for users who never saved settings.
    ///
    /// # Errors
    /// [`ConfigError::Leverage`] for a leverage of 0.
    pub fn platform(leverage: u32, opening_balance: u64) -> Result<PaperBrokerConfig, ConfigError> {
        let risk = suho_domain::RiskSettings::default();
        let account = AccountConfig {
            leverage: std::num::NonZeroU32::new(leverage).ok_or(ConfigError::Leverage)?,
            max_volume: risk.max_volume,
            max_open_positions: usize::try_from(risk.max_open_positions).unwrap_or(usize::MAX),
            ..AccountConfig::default()
        };
        Ok(PaperBrokerConfig {
            account,
            initial_balance: Decimal::from(opening_balance),
        })
    }
}

#[derive(Debug, Default)]
struct State {
    /// The latest quotes; an account catches up with them whenever it is used.
    quotes: Quotes,
    accounts: HashMap<AccountKey, PaperAccount>,
    /// What a tick can act on in which account.
    book: Book,
    /// Users' own limits, applied to each of their accounts (kept across a reset: they come
    /// from the users' settings, not from the accounts' events).
    limits: HashMap<UserId, UserLimits>,
}

/// What [`PaperBroker::rebuild`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Events applied (including ones already applied, which change nothing).
    pub applied: usize,
    /// Events that could not be applied, with why.
    pub refused: Vec<(String, ApplyError)>,
}

/// Many [`PaperAccount`]s keyed by [`AccountKey`], each created on first use with the
/// configured initial balance and the latest quotes the broker has seen. Every call
/// completes immediately (the returned futures are ready); a mutex, never held across an
/// `.await`, serialises calls.
#[derive(Debug)]
pub struct PaperBroker {
    config: PaperBrokerConfig,
    state: Mutex<State>,
}

impl PaperBroker {
    /// A broker with no accounts.
    ///
    /// # Errors
    /// [`ConfigError`] when the account rules or the initial balance are invalid.
    pub fn new(config: PaperBrokerConfig) -> Result<PaperBroker, ConfigError> {
        config.account.validate()?;
        let b = config.initial_balance;
        if b < Decimal::ZERO || b > MAX_BALANCE || !suho_domain::money::is_whole_cents(b) {
            return Err(ConfigError::InitialBalance(b));
        }
        Ok(PaperBroker {
            config,
            state: Mutex::new(State::default()),
        })
    }

    /// The platform's paper broker: [`PaperBrokerConfig::platform`].
    ///
    /// # Errors
    /// As [`PaperBrokerConfig::platform`].
    pub fn for_platform(leverage: u32, opening_balance: u64) -> Result<PaperBroker, ConfigError> {
        PaperBroker::new(PaperBrokerConfig::platform(leverage, opening_balance)?)
    }

    /// Runs `f` on the account `key`, created if new (with the latest quotes).
    pub fn with_account<R>(&self, key: &AccountKey, f: impl FnOnce(&mut PaperAccount) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let r = f(self.account(&mut state, key));
        let State { accounts, book, .. } = &mut *state;
        if let Some(account) = accounts.get(key) {
            book.update(key, account);
        }
        r
    }

    /// The account `key`, created if new, caught up with the latest quotes.
    fn account<'s>(&self, state: &'s mut State, key: &AccountKey) -> &'s mut PaperAccount {
        let State {
            quotes,
            accounts,
            limits,
            ..
        } = state;
        let account = accounts.entry(key.clone()).or_insert_with(|| {
            let mut a = PaperAccount::with_valid_config(
                key.user_id.clone(),
                key.mt5_account.clone(),
                self.config.account.clone(),
                self.config.initial_balance,
            );
            if let Some(l) = limits.get(&key.user_id) {
                a.set_limits(l);
            }
            a
        });
        account.catch_up_quotes(quotes);
        account
    }

    /// Sets `user`'s own limits on every account of theirs, now and when one is created.
    fn put_limits(&self, user: &UserId, limits: UserLimits) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, account) in &mut state.accounts {
            if &key.user_id == user {
                account.set_limits(&limits);
            }
        }
        state.limits.insert(user.clone(), limits);
    }

    /// Forgets `user`'s own limits: their accounts go back to the configured ones.
    fn clear_limits(&self, user: &UserId) {
        let configured = UserLimits {
            leverage: self.config.account.leverage,
            max_volume: self.config.account.max_volume,
            max_open_positions: self.config.account.max_open_positions,
            position_mode: self.config.account.position_mode,
        };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, account) in &mut state.accounts {
            if &key.user_id == user {
                account.set_limits(&configured);
            }
        }
        state.limits.remove(user);
    }

    /// Replaces every account by the accounts `events` build, in one step: no other call
    /// sees a half-rebuilt broker.
    pub fn rebuild<'e>(
        &self,
        events: impl IntoIterator<Item = &'e (AccountKey, AccountEvent)>,
    ) -> Rebuilt {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.accounts.clear();
        let mut done = Rebuilt::default();
        for (key, event) in events {
            match self.account(&mut state, key).apply(event) {
                Ok(_) => done.applied += 1,
                Err(e) => done.refused.push((event.event_id().to_owned(), e)),
            }
        }
        let State { accounts, book, .. } = &mut *state;
        book.clear();
        for (key, account) in accounts.iter() {
            book.update(key, account);
        }
        done
    }

    /// A market tick, acted on (fills, expiries, stop loss, take profit, trailing stops,
    /// swaps, margin call, stop-out) in the accounts it can change that `acts_on` accepts
    /// (the book names them: see [`crate::book`]); outcomes in account-key order. Every other
    /// account catches up with the tick when it is next used.
    pub fn on_tick_where(
        &self,
        tick: &Tick,
        now_ms: i64,
        acts_on: impl Fn(&AccountKey) -> bool,
    ) -> TickOutcome {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State {
            quotes,
            accounts,
            book,
            ..
        } = &mut *state;
        let mut all = TickOutcome::default();
        for key in book.touched_by(tick, now_ms) {
            if !acts_on(&key) {
                continue;
            }
            let Some(account) = accounts.get_mut(&key) else {
                continue;
            };
            // The quotes before this tick, then the tick itself.
            account.catch_up_quotes(quotes);
            let mut out = account.on_tick(tick, now_ms);
            all.trades.append(&mut out.trades);
            all.alerts.append(&mut out.alerts);
            all.errors.append(&mut out.errors);
            book.update(&key, account);
        }
        quotes.update(tick);
        all
    }

    /// Every account's key, sorted.
    #[must_use]
    pub fn account_keys(&self) -> Vec<AccountKey> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<AccountKey> = state.accounts.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Rebuild: applies one event read back from Kafka to account `key` (a `Transaction`
    /// names no MT5 account, so the caller routes it).
    ///
    /// # Errors
    /// As [`PaperAccount::apply`].
    pub fn apply(&self, key: &AccountKey, event: &AccountEvent) -> Result<Applied, ApplyError> {
        self.with_account(key, |a| a.apply(event))
    }

    fn trade(
        &self,
        command: &CommandHead,
        op: impl FnOnce(&mut PaperAccount) -> Result<Outcome<TradeEvent>, RejectReason>,
    ) -> BrokerResult<Outcome<TradeEvent>> {
        let key = AccountKey::of(command);
        self.with_account(&key, op).map_err(BrokerError::from)
    }
}

impl BrokerAdapter for PaperBroker {
    fn open(
        &self,
        command: &CommandHead,
        open: &OpenTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        ready(self.trade(command, |a| a.open(command, open, tick, now_ms)))
    }

    fn close(
        &self,
        command: &CommandHead,
        close: &CloseTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        ready(self.trade(command, |a| a.close(command, close, tick, now_ms)))
    }

    fn modify(
        &self,
        command: &CommandHead,
        modify: &ModifyTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        ready(self.trade(command, |a| a.modify(command, modify, tick, now_ms)))
    }

    fn close_positions(
        &self,
        command: &CommandHead,
        close: &ClosePositions,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        ready(self.trade(command, |a| a.close_positions(command, close, tick, now_ms)))
    }

    fn cancel(
        &self,
        command: &CommandHead,
        cancel: &CancelOrder,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        ready(self.trade(command, |a| a.cancel(command, cancel, now_ms)))
    }

    fn replace(
        &self,
        command: &CommandHead,
        replace: &ReplaceOrder,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        ready(self.trade(command, |a| a.replace(command, replace, tick, now_ms)))
    }

    fn order_symbol(
        &self,
        command: &CommandHead,
        order_id: &str,
    ) -> impl Future<Output = BrokerResult<Option<Symbol>>> + Send {
        let key = AccountKey::of(command);
        ready(Ok(
            self.with_account(&key, |a| a.order_symbol(command, order_id))
        ))
    }

    fn position_symbol(
        &self,
        command: &CommandHead,
        trade_id: &str,
    ) -> impl Future<Output = BrokerResult<Option<Symbol>>> + Send {
        let key = AccountKey::of(command);
        ready(Ok(
            self.with_account(&key, |a| a.position_symbol(command, trade_id))
        ))
    }

    fn deposit(
        &self,
        account: &AccountKey,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send {
        let r = self.with_account(account, |a| a.deposit(request_id, amount, now_ms));
        ready(r.map_err(BrokerError::from))
    }

    fn withdraw(
        &self,
        account: &AccountKey,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send {
        let r = self.with_account(account, |a| a.withdraw(request_id, amount, now_ms));
        ready(r.map_err(BrokerError::from))
    }

    fn open_account(
        &self,
        account: &AccountKey,
        request_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send {
        let r = self.with_account(account, |a| a.open_account(request_id, now_ms));
        ready(r.map_err(BrokerError::from))
    }

    /// A missing rate (e.g. right after a rebuild) is [`BrokerError::Unavailable`].
    fn status(
        &self,
        account: &AccountKey,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<AccountStatus>> + Send {
        let r = self.with_account(account, |a| a.status(now_ms));
        ready(r.map_err(|e| BrokerError::Unavailable(e.to_string())))
    }

    /// [`PaperBroker::on_tick_where`]: the accounts the tick can change act on it; outcomes
    /// are concatenated in account-key order.
    fn on_tick(
        &self,
        tick: &Tick,
        now_ms: i64,
        acts_on: ActsOn<'_>,
    ) -> impl Future<Output = BrokerResult<TickOutcome>> + Send {
        ready(Ok(self.on_tick_where(tick, now_ms, acts_on)))
    }

    fn accounts(&self) -> Vec<AccountKey> {
        self.account_keys()
    }

    fn restore(&self, events: &[(AccountKey, AccountEvent)]) -> Rebuilt {
        self.rebuild(events)
    }

    fn set_limits(&self, user: &UserId, limits: Option<UserLimits>) {
        match limits {
            Some(l) => self.put_limits(user, l),
            None => self.clear_limits(user),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::str::FromStr;
    use std::task::{Context, Poll, Waker};

    use suho_domain::{Order, Side};

    use super::*;

    /// Polls a future that is ready at once (every paper call is).
    fn now<F: Future>(f: F) -> F::Output {
        match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("paper broker futures are always ready"),
        }
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    fn tick(s: &str, bid: &str, ask: &str, ts: i64) -> Tick {
        let symbol = Symbol::parse(s).expect("symbol");
        Tick::new(symbol, d(bid), d(ask), ts, "test").expect("tick")
    }

    fn key(user: &str, mt5: &str) -> AccountKey {
        AccountKey {
            user_id: UserId::new(user),
            mt5_account: Some(mt5.into()),
        }
    }

    /// An `OPEN_TRADE`'s head and kind.
    type Opened = (CommandHead, OpenTrade);

    fn buy(k: &AccountKey, id: &str, s: &str, vol: &str, sl: Option<&str>) -> Opened {
        let order = Order {
            symbol: Symbol::parse(s).expect("symbol"),
            side: Side::Buy,
            volume: d(vol),
            stop_loss: sl.map(d),
            take_profit: None,
        };
        let head = CommandHead {
            event_id: format!("cmd_{id}"),
            mt5_account: k.mt5_account.clone(),
            ..CommandHead::new(k.user_id.clone(), 0)
        };
        let open = OpenTrade::market(order, None);
        (head, open)
    }

    /// The engine's generic use of the port.
    fn open<'a, B: BrokerAdapter>(
        b: &'a B,
        c: &'a Opened,
        t: &'a Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + 'a {
        b.open(&c.0, &c.1, t, now_ms)
    }

    fn acts_on_all(_: &AccountKey) -> bool {
        true
    }

    #[test]
    fn accounts_are_created_on_first_use_and_kept_apart() {
        let config = PaperBrokerConfig {
            initial_balance: d("500.00"),
            ..PaperBrokerConfig::default()
        };
        let b = PaperBroker::new(config).expect("config");
        let (k1, k2) = (key("u1", "a"), key("u1", "b"));
        assert_eq!(now(b.status(&k1, 1)).expect("status").balance, d("500.00"));
        let dep = now(b.deposit(&k2, "r1", d("1000"), 1)).expect("deposit");
        assert_eq!(dep.event.balance_after, Some(d("1500.00")));
        assert_eq!(now(b.status(&k1, 1)).expect("status").balance, d("500.00"));
        let ev = now(open(
            &b,
            &buy(&k2, "x", "EURUSD", "1", None),
            &tick("EURUSD", "1.1", "1.1002", 1),
            5,
        ));
        let ev = ev.expect("open").event;
        assert_eq!(
            (ev.user_id.as_str(), ev.mt5_account.as_deref()),
            ("u1", Some("b"))
        );
        assert_eq!(now(b.status(&k2, 2)).expect("status").open_positions, 1);
    }

    #[test]
    fn rejections_are_permanent_and_missing_rates_are_transient() {
        let b = PaperBroker::new(PaperBrokerConfig::default()).expect("config");
        let k = key("u1", "a");
        let err = now(b.withdraw(&k, "w", d("1"), 1)).expect_err("empty");
        assert!(matches!(
            err,
            BrokerError::Rejected(RejectReason::WithdrawalAboveFreeMargin { .. })
        ));
        assert!(!err.is_retryable());
        now(b.deposit(&k, "r", d("5000"), 1)).expect("deposit");
        // A rebuilt account with a position but no quotes yet cannot be valued: retry later.
        let (head, opened) = buy(&k, "1", "EURUSD", "1", None);
        let exec = TradeEvent {
            trade_id: Some("trd_1".into()),
            open_price: Some(d("1.1")),
            ..TradeEvent::for_command(
                &head,
                &opened,
                suho_domain::TradeEventType::TradeExecuted,
                "exec_cmd_1".into(),
                1,
            )
        };
        assert_eq!(
            b.apply(&k, &AccountEvent::Trade(exec)),
            Ok(Applied::Applied)
        );
        let err = now(b.status(&k, 2)).expect_err("no quote");
        assert_eq!(
            err,
            BrokerError::Unavailable("no quote for EURUSD yet".into())
        );
        assert!(err.is_retryable());
        now(b.on_tick(&tick("EURUSD", "1.1", "1.1002", 3), 3, &acts_on_all)).expect("tick");
        assert_eq!(now(b.status(&k, 4)).expect("status").margin, d("1100.10"));
    }

    #[test]
    fn ticks_reach_every_account_and_seed_new_ones() {
        let b = PaperBroker::new(PaperBrokerConfig::default()).expect("config");
        for t in [
            tick("EURUSD", "1.1", "1.1002", 1),
            tick("GBPUSD", "1.25", "1.2502", 1),
        ] {
            now(b.on_tick(&t, 1, &acts_on_all)).expect("tick");
        }
        let (k1, k2) = (key("u1", "a"), key("u2", "a"));
        for k in [&k1, &k2] {
            now(b.deposit(k, "r", d("10000"), 1)).expect("deposit");
            // EURGBP needs EURUSD and GBPUSD, seen before this account existed.
            let c = buy(k, "x", "EURGBP", "1", Some("0.84"));
            now(open(&b, &c, &tick("EURGBP", "0.85", "0.8501", 2), 2)).expect("open");
        }
        let out =
            now(b.on_tick(&tick("EURGBP", "0.8399", "0.8400", 3), 3, &acts_on_all)).expect("tick");
        let who: Vec<_> = out.trades.iter().map(|e| e.user_id.as_str()).collect();
        assert_eq!(who, ["u1", "u2"]);
        // (0.8399 - 0.8501) × 100,000 = -1,020 GBP × 1.2501 = -1,275.102 -> -1,275.10.
        assert_eq!(out.trades[0].profit, Some(d("-1275.10")));
    }

    #[test]
    fn an_account_opens_with_the_configured_balance_and_a_rebuild_keeps_it() {
        let b = PaperBroker::for_platform(100, 10_000).expect("config");
        let k = AccountKey {
            user_id: UserId::new("u1"),
            mt5_account: None,
        };
        let opened = now(b.open_account(&k, "cmd_1", 3)).expect("open");
        let e = opened.event.clone();
        assert_eq!(
            (e.event_id.as_str(), e.amount, e.balance_after),
            ("opn_cmd_1", d("10000"), Some(d("10000")))
        );
        assert_eq!(now(b.status(&k, 4)).expect("status").balance, d("10000"));
        let done = b.rebuild(&[(k.clone(), AccountEvent::from(e.clone()))]);
        assert_eq!((done.applied, done.refused.len()), (1, 0));
        assert_eq!(now(b.status(&k, 5)).expect("status").balance, d("10000"));
        let again = now(b.open_account(&k, "cmd_1", 6)).expect("replay");
        assert_eq!((again.event, again.replayed), (e, true));
        let err = now(b.open_account(&k, "cmd_2", 6)).expect_err("open already");
        assert_eq!(err, BrokerError::Rejected(RejectReason::AlreadyOpen));
        assert!(!err.is_retryable());
    }

    #[test]
    fn bad_broker_config_is_refused() {
        let config = PaperBrokerConfig {
            initial_balance: d("-1"),
            ..PaperBrokerConfig::default()
        };
        assert_eq!(
            PaperBroker::new(config).err(),
            Some(ConfigError::InitialBalance(d("-1")))
        );
    }

    #[test]
    fn user_limits_apply_to_existing_and_new_accounts_and_survive_a_rebuild() {
        let b = PaperBroker::new(PaperBrokerConfig {
            initial_balance: d("10000"),
            ..PaperBrokerConfig::default()
        })
        .expect("config");
        let (k1, k2) = (key("u1", "a"), key("u1", "b"));
        let t = tick("EURUSD", "1.1", "1.1002", 1);
        now(open(&b, &buy(&k1, "x", "EURUSD", "0.5", None), &t, 1)).expect("open");
        b.set_limits(
            &UserId::new("u1"),
            Some(UserLimits {
                leverage: std::num::NonZeroU32::new(50).expect("nonzero"),
                max_volume: d("0.2"),
                max_open_positions: 1,
                position_mode: suho_domain::PositionMode::Hedging,
            }),
        );
        // Margin follows the new leverage: 0.5 × 100,000 EUR at the mid 1.1001, / 50.
        assert_eq!(now(b.status(&k1, 2)).expect("status").margin, d("1100.10"));
        let too_big = now(open(&b, &buy(&k2, "y", "EURUSD", "0.3", None), &t, 2));
        assert!(matches!(
            too_big,
            Err(BrokerError::Rejected(RejectReason::VolumeAboveMax { .. }))
        ));
        let full = now(open(&b, &buy(&k1, "z", "EURUSD", "0.1", None), &t, 2));
        assert!(matches!(
            full,
            Err(BrokerError::Rejected(RejectReason::TooManyPositions { .. }))
        ));
        // A rebuild replaces the accounts in one step and keeps the limits.
        let opened = now(open(&b, &buy(&k2, "w", "EURUSD", "0.2", None), &t, 3)).expect("open");
        let events = [(k2.clone(), AccountEvent::from(opened.event))];
        let done = b.rebuild(&events);
        assert_eq!((done.applied, done.refused.len()), (1, 0));
        assert_eq!(b.account_keys(), std::slice::from_ref(&k2));
        assert_eq!(b.with_account(&k2, |a| a.config().max_open_positions), 1);
    }

    #[test]
    fn ticks_act_only_on_the_accounts_asked_for() {
        let b = PaperBroker::new(PaperBrokerConfig {
            initial_balance: d("10000"),
            ..PaperBrokerConfig::default()
        })
        .expect("config");
        let (k1, k2) = (key("u1", "a"), key("u2", "a"));
        let t = tick("EURUSD", "1.1", "1.1002", 1);
        for k in [&k1, &k2] {
            now(open(&b, &buy(k, "x", "EURUSD", "1", Some("1.09")), &t, 1)).expect("open");
        }
        let low = tick("EURUSD", "1.0899", "1.0901", 2);
        let out = b.on_tick_where(&low, 2, |k| k.user_id.as_str() == "u2");
        let who: Vec<_> = out.trades.iter().map(|e| e.user_id.as_str()).collect();
        assert_eq!(who, ["u2"]);
        // u1's account saw the quote but did not act on it.
        assert_eq!(now(b.status(&k1, 3)).expect("status").open_positions, 1);
    }

    /// A deterministic stream of pseudo-random numbers (no dependency, same every run).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// A mid price of `symbol` moved by `steps` pips, as a tick one pip wide.
    fn moved(symbol: &str, steps: i64, ts: i64) -> Tick {
        let s = Symbol::parse(symbol).expect("symbol");
        let base = match symbol {
            "USDJPY" => d("150.000"),
            "EURGBP" => d("0.85000"),
            "GBPUSD" => d("1.27000"),
            "AUDUSD" => d("0.66000"),
            _ => d("1.10000"),
        };
        let bid = base + s.pip() * Decimal::from(steps);
        Tick::new(s, bid, bid + s.pip(), ts, "test").expect("tick")
    }

    const SYMBOLS: [&str; 5] = ["EURUSD", "GBPUSD", "USDJPY", "EURGBP", "AUDUSD"];

    /// A broker with `n` accounts holding market positions with stops and resting limits and
    /// stops (some with an expiry) on several symbols, priced on every symbol.
    fn busy_broker(n: usize, rng: &mut Lcg) -> (PaperBroker, Vec<AccountKey>) {
        let b = PaperBroker::new(PaperBrokerConfig {
            initial_balance: d("100000"),
            ..PaperBrokerConfig::default()
        })
        .expect("config");
        for s in SYMBOLS {
            b.on_tick_where(&moved(s, 0, 1), 1, acts_on_all);
        }
        let mut keys = Vec::new();
        for i in 0..n {
            let k = key(&format!("u{i:03}"), "a");
            for j in 0..3 {
                let symbol = SYMBOLS[usize::try_from(rng.next(5)).expect("small")];
                let t = moved(symbol, 0, 1);
                let pip = t.symbol.pip();
                let away = |p: u64| pip * Decimal::from(p);
                let (mut head, mut open) = buy(&k, &format!("{i}_{j}"), symbol, "0.1", None);
                let side = if rng.next(2) == 0 {
                    Side::Buy
                } else {
                    Side::Sell
                };
                open.order.side = side;
                let dist = away(5 + rng.next(40));
                match rng.next(4) {
                    0 => {
                        // A market position with a stop loss.
                        open.order.stop_loss = Some(match side {
                            Side::Buy => t.bid - dist,
                            Side::Sell => t.ask + dist,
                        });
                    }
                    1 => {
                        open.order_type = suho_domain::OrderType::Limit;
                        open.limit_price = Some(match side {
                            Side::Buy => t.ask - dist,
                            Side::Sell => t.bid + dist,
                        });
                    }
                    2 => {
                        open.order_type = suho_domain::OrderType::Stop;
                        open.stop_price = Some(match side {
                            Side::Buy => t.ask + dist,
                            Side::Sell => t.bid - dist,
                        });
                    }
                    _ => {
                        open.order_type = suho_domain::OrderType::Limit;
                        open.limit_price = Some(match side {
                            Side::Buy => t.ask - dist,
                            Side::Sell => t.bid + dist,
                        });
                        open.time_in_force = Some(suho_domain::TimeInForce::Gtd);
                        open.expires_at = Some(100 + i64::try_from(rng.next(200)).expect("small"));
                    }
                }
                head.timestamp = 1;
                now(b.open(&head, &open, &t, 1)).expect("accepted");
            }
            keys.push(k);
        }
        (b, keys)
    }

    /// The book changes nothing but the work: every tick gives the same events, in the same
    /// order, as visiting every account did.
    #[test]
    fn a_tick_through_the_book_acts_as_a_visit_of_every_account() {
        let mut rng = Lcg(7);
        let (b, keys) = busy_broker(60, &mut rng);
        let mut reference: Vec<(AccountKey, PaperAccount)> = keys
            .iter()
            .map(|k| (k.clone(), b.with_account(k, |a| a.clone())))
            .collect();
        let mut walk = [0i64; 5];
        let mut events = 0;
        for ts in 2..400 {
            let i = usize::try_from(rng.next(5)).expect("small");
            walk[i] += i64::try_from(rng.next(9)).expect("small") - 4;
            let t = moved(SYMBOLS[i], walk[i], ts);
            let got = b.on_tick_where(&t, ts, acts_on_all);
            let mut want = TickOutcome::default();
            for (_, a) in &mut reference {
                let mut out = a.on_tick(&t, ts);
                want.trades.append(&mut out.trades);
                want.alerts.append(&mut out.alerts);
                want.errors.append(&mut out.errors);
            }
            assert_eq!(got.trades, want.trades, "tick {ts}: {t:?}");
            assert_eq!(got.alerts, want.alerts, "tick {ts}");
            assert_eq!(got.errors, want.errors, "tick {ts}");
            events += got.trades.len();
        }
        assert!(
            events > 50,
            "the walk filled, expired and stopped things: {events}"
        );
        for (k, a) in &reference {
            let ours = now(b.status(k, 500)).expect("status");
            assert_eq!(Ok(ours), a.status(500).map_err(|e| e.to_string()), "{k:?}");
        }
    }

    /// A tick visits the accounts whose orders it reaches or whose positions it moves, not
    /// the whole book.
    #[test]
    fn a_tick_visits_only_what_it_can_change() {
        let mut rng = Lcg(11);
        let (b, _) = busy_broker(300, &mut rng);
        let far = key("far", "a");
        let t = moved("EURUSD", 0, 1);
        let (mut head, mut open) = buy(&far, "far", "EURUSD", "0.1", None);
        open.order_type = suho_domain::OrderType::Limit;
        open.limit_price = Some(d("1.05000"));
        head.timestamp = 1;
        now(b.open(&head, &open, &t, 1)).expect("placed");
        let state = b.state.lock().expect("lock");
        let (accounts, orders) = state.book.size();
        assert!(
            accounts > 290 && orders > 200,
            "{accounts} accounts, {orders} orders"
        );
        // An AUDUSD tick at the first price reaches no order and moves only AUDUSD and
        // USD-quoted positions: never the far EURUSD limit.
        let visited = state.book.touched_by(&moved("AUDUSD", 0, 2), 2);
        assert!(!visited.contains(&far));
        assert!(visited.len() < accounts, "{} of {accounts}", visited.len());
        // The far limit is visited once the ask reaches it.
        let low = moved("EURUSD", -5_001, 3);
        assert!(state.book.touched_by(&low, 3).contains(&far));
    }
}
