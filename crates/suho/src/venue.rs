//! The venue the trading engine executes on, chosen in one place by `trading.venue`: the
//! paper MT5 broker, or the scripted venue, a test venue that behaves as a real one does on a
//! bad day (it refuses some orders, fills late, and is briefly unavailable).
//!
//! [`Venue`] is the enum the broker port's docs ask for when several kinds of venue coexist:
//! it implements [`BrokerAdapter`] by handing each call to the venue it holds, so the engine
//! stays generic over the port and never learns which one it got.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures::future::Either;
use rust_decimal::Decimal;
use suho_broker::{
    AccountEvent, AccountKey, ActsOn, BrokerAdapter, BrokerError, BrokerResult, Outcome,
    PaperBroker, Rebuilt, RejectReason, TickOutcome, UserLimits,
};
use suho_config::{Config, ScriptedVenueConfig};
use suho_domain::{
    AccountStatus, CancelOrder, ClosePositions, CloseTrade, CommandHead, ModifyTrade, OpenTrade,
    ReplaceOrder, Symbol, Tick, TradeEvent, Transaction, UserId,
};

/// The venue `trading.venue` names.
#[derive(Debug)]
pub enum Venue {
    /// The simulated MT5 broker.
    Paper(PaperBroker),
    /// The test venue.
    Scripted(ScriptedVenue),
}

/// The venue `config` asks for, its paper books set up from `trading.paper_*`.
///
/// # Errors
/// `trading.paper_leverage` is 0.
pub fn venue(config: &Config) -> anyhow::Result<Venue> {
    let t = &config.trading;
    let mut books =
        suho_broker::PaperBrokerConfig::platform(t.paper_leverage, t.paper_opening_balance)
            .context("trading.paper_*")?;
    books.account.costs = costs(&t.costs)?;
    let paper = PaperBroker::new(books).context("trading.paper_*")?;
    Ok(match t.venue {
        suho_config::Venue::Paper => Venue::Paper(paper),
        suho_config::Venue::Scripted => {
            tracing::warn!(
                reject_every = t.scripted.reject_every,
                fill_delay_ms = t.scripted.fill_delay_ms,
                unavailable_every = t.scripted.unavailable_every,
                "trading.venue = scripted: a test venue that refuses, delays and fails on purpose"
            );
            Venue::Scripted(ScriptedVenue::new(paper, t.scripted.clone()))
        }
    })
}

/// The paper venue's costs, from `trading.costs`.
///
/// # Errors
/// A key of `trading.costs.swaps` that is not a symbol.
pub fn costs(config: &suho_config::CostsConfig) -> anyhow::Result<suho_broker::Costs> {
    let mut costs = suho_broker::Costs {
        commission_per_lot: config.commission_per_lot,
        ..suho_broker::Costs::default()
    };
    for (symbol, rates) in &config.swaps {
        let parsed = Symbol::parse(symbol)
            .with_context(|| format!("trading.costs.swaps.{symbol}: not a symbol"))?;
        costs.swaps.insert(parsed, (rates.long, rates.short));
    }
    Ok(costs)
}

/// The paper broker's books behind a venue that misbehaves on a script, deterministic in
/// each command's id: it refuses one command in `reject_every` ([`refuses`]), answers the
/// first try of one trade command in `unavailable_every` [`BrokerError::Unavailable`]
/// ([`unavailable`]; tries counted in this process, so a restarted engine meets the failure
/// again), and holds every fill `fill_delay_ms`. Deposits, withdrawals, account openings,
/// statuses and ticks go straight to the books.
#[derive(Debug)]
pub struct ScriptedVenue {
    books: PaperBroker,
    script: ScriptedVenueConfig,
    tries: Mutex<HashMap<String, u32>>,
}

/// Whether the scripted venue refuses the command `command_id` when it refuses one in
/// `every` (0 refuses none). Tests use it to know which of their commands to expect back as
/// `TRADE_REJECTED`.
#[must_use]
pub fn refuses(command_id: &str, every: u32) -> bool {
    picks("refuse", command_id, every)
}

/// Whether the scripted venue answers the first try of `command_id` "unavailable" when it
/// does so for one command in `every` (0: none).
#[must_use]
pub fn unavailable(command_id: &str, every: u32) -> bool {
    picks("busy", command_id, every)
}

/// One id in `every`: FNV-1a of `salt` and the id, modulo `every`.
fn picks(salt: &str, command_id: &str, every: u32) -> bool {
    if every == 0 {
        return false;
    }
    let hash = salt
        .bytes()
        .chain([b':'])
        .chain(command_id.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    hash % u64::from(every) == 0
}

impl ScriptedVenue {
    /// The venue over `books`.
    #[must_use]
    pub fn new(books: PaperBroker, script: ScriptedVenueConfig) -> ScriptedVenue {
        ScriptedVenue {
            books,
            script,
            tries: Mutex::new(HashMap::new()),
        }
    }

    /// What the script says before the books see the command: a transient failure for its
    /// first tries, then a refusal if it is one of those refused; `Ok` to go ahead.
    fn before(&self, command: &CommandHead) -> BrokerResult<()> {
        if unavailable(&command.event_id, self.script.unavailable_every) {
            let mut tries = self.tries.lock().unwrap_or_else(PoisonError::into_inner);
            if tries.len() > 100_000 {
                tries.clear();
            }
            let n = tries.entry(command.event_id.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                return Err(BrokerError::Unavailable(
                    "scripted venue busy; try again".into(),
                ));
            }
        }
        if refuses(&command.event_id, self.script.reject_every) {
            return Err(RejectReason::Venue("scripted refusal".into()).into());
        }
        Ok(())
    }

    /// The script's hold on a fill.
    async fn hold(&self) {
        tokio::time::sleep(Duration::from_millis(self.script.fill_delay_ms)).await;
    }
}

impl BrokerAdapter for ScriptedVenue {
    async fn open(
        &self,
        command: &CommandHead,
        open: &OpenTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> BrokerResult<Outcome<TradeEvent>> {
        self.before(command)?;
        self.hold().await;
        self.books.open(command, open, tick, now_ms).await
    }

    async fn close(
        &self,
        command: &CommandHead,
        close: &CloseTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> BrokerResult<Outcome<TradeEvent>> {
        self.before(command)?;
        self.hold().await;
        self.books.close(command, close, tick, now_ms).await
    }

    async fn modify(
        &self,
        command: &CommandHead,
        modify: &ModifyTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> BrokerResult<Outcome<TradeEvent>> {
        self.before(command)?;
        self.hold().await;
        self.books.modify(command, modify, tick, now_ms).await
    }

    async fn close_positions(
        &self,
        command: &CommandHead,
        close: &ClosePositions,
        tick: &Tick,
        now_ms: i64,
    ) -> BrokerResult<Outcome<TradeEvent>> {
        self.before(command)?;
        self.hold().await;
        self.books
            .close_positions(command, close, tick, now_ms)
            .await
    }

    async fn cancel(
        &self,
        command: &CommandHead,
        cancel: &CancelOrder,
        now_ms: i64,
    ) -> BrokerResult<Outcome<TradeEvent>> {
        self.before(command)?;
        self.books.cancel(command, cancel, now_ms).await
    }

    async fn replace(
        &self,
        command: &CommandHead,
        replace: &ReplaceOrder,
        tick: &Tick,
        now_ms: i64,
    ) -> BrokerResult<Outcome<TradeEvent>> {
        self.before(command)?;
        self.books.replace(command, replace, tick, now_ms).await
    }

    fn order_symbol(
        &self,
        command: &CommandHead,
        order_id: &str,
    ) -> impl Future<Output = BrokerResult<Option<Symbol>>> + Send {
        self.books.order_symbol(command, order_id)
    }

    fn position_symbol(
        &self,
        command: &CommandHead,
        trade_id: &str,
    ) -> impl Future<Output = BrokerResult<Option<Symbol>>> + Send {
        self.books.position_symbol(command, trade_id)
    }

    fn deposit(
        &self,
        account: &AccountKey,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send {
        self.books.deposit(account, request_id, amount, now_ms)
    }

    fn withdraw(
        &self,
        account: &AccountKey,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send {
        self.books.withdraw(account, request_id, amount, now_ms)
    }

    fn open_account(
        &self,
        account: &AccountKey,
        request_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send {
        self.books.open_account(account, request_id, now_ms)
    }

    fn status(
        &self,
        account: &AccountKey,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<AccountStatus>> + Send {
        self.books.status(account, now_ms)
    }

    fn on_tick(
        &self,
        tick: &Tick,
        now_ms: i64,
        acts_on: ActsOn<'_>,
    ) -> impl Future<Output = BrokerResult<TickOutcome>> + Send {
        self.books.on_tick(tick, now_ms, acts_on)
    }

    fn accounts(&self) -> Vec<AccountKey> {
        self.books.accounts()
    }

    fn restore(&self, events: &[(AccountKey, AccountEvent)]) -> Rebuilt {
        self.books.restore(events)
    }

    fn set_limits(&self, user: &UserId, limits: Option<UserLimits>) {
        self.books.set_limits(user, limits);
    }
}

/// Hands a call to the venue held; the two venues' futures become one type.
macro_rules! each {
    ($self:ident, $v:ident => $call:expr) => {
        match $self {
            Venue::Paper($v) => Either::Left($call),
            Venue::Scripted($v) => Either::Right($call),
        }
    };
}

impl BrokerAdapter for Venue {
    fn open(
        &self,
        command: &CommandHead,
        open: &OpenTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        each!(self, v => v.open(command, open, tick, now_ms))
    }

    fn close(
        &self,
        command: &CommandHead,
        close: &CloseTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        each!(self, v => v.close(command, close, tick, now_ms))
    }

    fn modify(
        &self,
        command: &CommandHead,
        modify: &ModifyTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        each!(self, v => v.modify(command, modify, tick, now_ms))
    }

    fn close_positions(
        &self,
        command: &CommandHead,
        close: &ClosePositions,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        each!(self, v => v.close_positions(command, close, tick, now_ms))
    }

    fn cancel(
        &self,
        command: &CommandHead,
        cancel: &CancelOrder,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        each!(self, v => v.cancel(command, cancel, now_ms))
    }

    fn replace(
        &self,
        command: &CommandHead,
        replace: &ReplaceOrder,
        tick: &Tick,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<TradeEvent>>> + Send {
        each!(self, v => v.replace(command, replace, tick, now_ms))
    }

    fn order_symbol(
        &self,
        command: &CommandHead,
        order_id: &str,
    ) -> impl Future<Output = BrokerResult<Option<Symbol>>> + Send {
        each!(self, v => v.order_symbol(command, order_id))
    }

    fn position_symbol(
        &self,
        command: &CommandHead,
        trade_id: &str,
    ) -> impl Future<Output = BrokerResult<Option<Symbol>>> + Send {
        each!(self, v => v.position_symbol(command, trade_id))
    }

    fn deposit(
        &self,
        account: &AccountKey,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send {
        each!(self, v => v.deposit(account, request_id, amount, now_ms))
    }

    fn withdraw(
        &self,
        account: &AccountKey,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send {
        each!(self, v => v.withdraw(account, request_id, amount, now_ms))
    }

    fn open_account(
        &self,
        account: &AccountKey,
        request_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<Outcome<Transaction>>> + Send {
        each!(self, v => v.open_account(account, request_id, now_ms))
    }

    fn status(
        &self,
        account: &AccountKey,
        now_ms: i64,
    ) -> impl Future<Output = BrokerResult<AccountStatus>> + Send {
        each!(self, v => v.status(account, now_ms))
    }

    fn on_tick(
        &self,
        tick: &Tick,
        now_ms: i64,
        acts_on: ActsOn<'_>,
    ) -> impl Future<Output = BrokerResult<TickOutcome>> + Send {
        each!(self, v => v.on_tick(tick, now_ms, acts_on))
    }

    fn accounts(&self) -> Vec<AccountKey> {
        match self {
            Venue::Paper(v) => v.accounts(),
            Venue::Scripted(v) => v.accounts(),
        }
    }

    fn restore(&self, events: &[(AccountKey, AccountEvent)]) -> Rebuilt {
        match self {
            Venue::Paper(v) => v.restore(events),
            Venue::Scripted(v) => v.restore(events),
        }
    }

    fn set_limits(&self, user: &UserId, limits: Option<UserLimits>) {
        match self {
            Venue::Paper(v) => v.set_limits(user, limits),
            Venue::Scripted(v) => v.set_limits(user, limits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suho_domain::{Order, Side};

    fn tick() -> Tick {
        let eur = Symbol::parse("EURUSD").expect("symbol");
        Tick::new(eur, Decimal::new(110, 2), Decimal::new(1101, 3), 1, "test").expect("tick")
    }

    fn command(id: &str) -> (CommandHead, OpenTrade) {
        let head = CommandHead {
            event_id: id.to_owned(),
            ..CommandHead::new(UserId::new("u1"), 0)
        };
        let order = Order {
            symbol: Symbol::parse("EURUSD").expect("symbol"),
            side: Side::Buy,
            volume: Decimal::new(1, 2),
            stop_loss: None,
            take_profit: None,
        };
        (head, OpenTrade::market(order, None))
    }

    #[test]
    fn costs_come_from_the_configuration_and_a_bad_symbol_is_named() {
        let mut config = suho_config::CostsConfig {
            commission_per_lot: Decimal::new(35, 1),
            ..Default::default()
        };
        config.swaps.insert(
            "eurusd".into(),
            suho_config::SwapRates {
                long: Decimal::new(-72, 1),
                short: Decimal::new(21, 1),
            },
        );
        let c = costs(&config).expect("costs");
        let eur = Symbol::parse("EURUSD").expect("symbol");
        assert_eq!(c.swaps[&eur], (Decimal::new(-72, 1), Decimal::new(21, 1)));
        assert_eq!(c.commission(Decimal::new(5, 1)), Decimal::new(-175, 2));
        config
            .swaps
            .insert("EURO".into(), suho_config::SwapRates::default());
        let err = costs(&config).expect_err("refused").to_string();
        assert!(err.contains("trading.costs.swaps.EURO"), "{err}");
    }

    #[test]
    fn one_command_in_every_n_is_refused_by_its_id() {
        let refused = (0..7_000)
            .filter(|i| refuses(&format!("cmd_{i}"), 7))
            .count();
        assert!((800..1_200).contains(&refused), "{refused}");
        assert!(!refuses("cmd_1", 0));
        assert_eq!(refuses("cmd_x", 7), refuses("cmd_x", 7));
    }

    #[tokio::test]
    async fn the_script_is_busy_once_then_refuses_or_fills_late() {
        let books = PaperBroker::for_platform(100, 10_000).expect("books");
        let script = ScriptedVenueConfig {
            reject_every: 3,
            fill_delay_ms: 30,
            unavailable_every: 2,
        };
        let venue = Venue::Scripted(ScriptedVenue::new(books, script));
        let id = |f: &dyn Fn(&str) -> bool| {
            (0..)
                .map(|i| format!("cmd_{i}"))
                .find(|id| f(id))
                .expect("an id")
        };
        let busy_then_filled = id(&|c| unavailable(c, 2) && !refuses(c, 3));
        let refused = id(&|c| !unavailable(c, 2) && refuses(c, 3));
        let (head, open) = command(&busy_then_filled);
        let busy = venue.open(&head, &open, &tick(), 1).await;
        assert!(matches!(busy, Err(BrokerError::Unavailable(_))), "{busy:?}");
        let started = std::time::Instant::now();
        let done = venue.open(&head, &open, &tick(), 1).await.expect("filled");
        assert!(started.elapsed() >= Duration::from_millis(30), "late");
        assert_eq!(done.event.execution_price, Some(Decimal::new(1101, 3)));
        let (head, open) = command(&refused);
        let no = venue.open(&head, &open, &tick(), 1).await;
        assert_eq!(
            no.expect_err("refused").to_string(),
            "rejected: the venue refused the order: scripted refusal"
        );
    }
}
