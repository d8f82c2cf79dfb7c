//! The resting-book phase: a tick that reaches resting orders, to their fills, and what a
//! tick costs the engine, as the book grows.
//!
//! After the sweep the synthetic feed stops and the bench is the market: it publishes every
//! configured symbol's quote as the feed would (as the feed's identity, with fresh
//! timestamps, several times a second), unchanged except where a round moves it. The book's
//! orders come from `users` users of their own, straight into `user.commands` as the `kafka`
//! path's commands (an account opens with its first order). The book grows in stages; each
//! stage first tops it up to the stage's size with orders between 2% and 5% away from the
//! market on both sides (buy and sell limits and stops, which no round reaches), plus a
//! ladder of buy limits just under the market, then runs its rounds, open loop, one every
//! `round_every`: round `r` moves one symbol's ask down onto the next rung of its ladder,
//! where `per_round` orders of as many users rest, and times each of them from the tick's
//! publication to its `TRADE_EXECUTED` visible to a `read_committed` reader. Beside that,
//! the engine's own per-tick cost (`engine_tick_seconds`, the venue's `on_tick`) over the
//! stage's rounds: it should follow what a tick reaches, not the book's size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use suho_domain::{
    CommandKind, OpenTrade, Order, OrderType, PriceReply, Side, Symbol, Tick, TradeCommand, UserId,
};
use suho_messaging::{now_ms, MarketBus, UserEventProducer};
use tokio_util::sync::CancellationToken;

use super::ours::{OutcomeKind, Outcomes};
use super::{new_histogram, quantile_ms, record};

/// What the resting-book phase runs.
#[derive(Debug, Clone)]
pub struct BookOptions {
    /// Book sizes (resting orders) the rounds run at, increasing; the last is the largest.
    pub stages: Vec<u64>,
    /// Users the orders are spread over.
    pub users: usize,
    /// Rounds per stage.
    pub rounds: u32,
    /// Orders each round's tick reaches.
    pub per_round: usize,
    /// A round every so often (open loop).
    pub round_every: Duration,
    /// How long a stage's placements and fills may take at most.
    pub timeout: Duration,
}

impl Default for BookOptions {
    /// The book: up to 100,000 orders of 10,000 users, measured at 1,000, 10,000 and
    /// 100,000; 30 rounds of 10 orders per stage, one every 250 ms.
    fn default() -> Self {
        BookOptions {
            stages: vec![1_000, 10_000, 100_000],
            users: 10_000,
            rounds: 30,
            per_round: 10,
            round_every: Duration::from_millis(250),
            timeout: Duration::from_secs(300),
        }
    }
}

/// One stage of the resting-book phase.
#[derive(Debug, Clone)]
pub struct BookStageResult {
    /// Orders resting when the rounds began.
    pub resting: u64,
    /// Orders placed for this stage.
    pub placed: u64,
    /// Of those, refused by the engine (`ORDER_REJECTED`).
    pub place_rejected: u64,
    /// How fast the engine answered the stage's placements, orders/s (first sent to last
    /// answered).
    pub placed_per_sec: f64,
    /// Orders the rounds' ticks reached.
    pub reached: u64,
    /// Of those, filled (one `TRADE_EXECUTED` each).
    pub filled: u64,
    /// Reached and never filled.
    pub missing: u64,
    /// Fills beyond the first.
    pub duplicated: u64,
    /// Tick published -> `TRADE_EXECUTED` visible, nanoseconds.
    pub fill_ns: Histogram<u64>,
    /// The engine's per-tick cost over the rounds, nanoseconds (`None`: another metrics
    /// recorder was installed first).
    pub tick_ns: Option<Histogram<u64>>,
}

/// The resting-book phase's report.
#[derive(Debug, Clone)]
pub struct BookReport {
    /// The stages, in order.
    pub stages: Vec<BookStageResult>,
    /// Users the orders came from.
    pub users: usize,
    /// Symbols the book spans.
    pub symbols: usize,
    /// Rounds per stage and orders per round.
    pub rounds: u32,
    /// Orders per round.
    pub per_round: usize,
    /// Round interval.
    pub round_every: Duration,
}

/// What the phase works with.
pub(crate) struct Book<'a> {
    pub(crate) config: &'a suho_config::Config,
    /// The price service's bus (the baseline quotes are asked of it).
    pub(crate) bus: &'a MarketBus,
    pub(crate) producer: &'a UserEventProducer,
    pub(crate) outcomes: &'a Outcomes,
    /// Every configured symbol.
    pub(crate) symbols: Vec<Symbol>,
    pub(crate) run: &'a str,
}

/// The market the bench publishes: each symbol's bid and ask.
type Market = Arc<Mutex<HashMap<Symbol, (Decimal, Decimal)>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn tick(symbol: Symbol, bid: Decimal, ask: Decimal) -> anyhow::Result<Tick> {
    Tick::new(symbol, bid, ask, now_ms(), "bench").context("a bench quote")
}

/// Publishes every symbol's quote every `every` until `stop`.
async fn keep_quoting(bus: MarketBus, market: Market, every: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let quotes: Vec<(Symbol, (Decimal, Decimal))> =
            lock(&market).iter().map(|(s, q)| (*s, *q)).collect();
        for (symbol, (bid, ask)) in quotes {
            let Ok(t) = tick(symbol, bid, ask) else {
                continue;
            };
            let subject = suho_domain::subject::tick(bus.prefix(), symbol);
            if let Err(e) = bus.publish(subject, &t).await {
                tracing::warn!(error = %e, "bench: publishing a quote");
            }
        }
    }
}

/// A pending `OPEN_TRADE` of 0.01 lots.
fn pending(
    user: &UserId,
    symbol: Symbol,
    side: Side,
    kind: OrderType,
    price: Decimal,
) -> TradeCommand {
    let mut open = OpenTrade::market(
        Order {
            symbol,
            side,
            volume: Decimal::new(1, 2),
            stop_loss: None,
            take_profit: None,
        },
        None,
    );
    open.order_type = kind;
    match kind {
        OrderType::Limit => open.limit_price = Some(price),
        _ => open.stop_price = Some(price),
    }
    TradeCommand::new(user.clone(), CommandKind::OpenTrade(open), now_ms())
}

/// An order `g` that no round reaches: 2% to 5% from the market, a buy or sell limit or
/// stop in turn.
fn far_order(g: u64, user: &UserId, symbol: Symbol, bid: Decimal, ask: Decimal) -> TradeCommand {
    // 2.000% .. 4.999%, spread over the orders so that they rest at many levels.
    let away = Decimal::new(2_000 + i64::try_from(g * 7_919 % 3_000).unwrap_or(0), 5);
    let digits = symbol.digits();
    let below = |p: Decimal| (p * (Decimal::ONE - away)).round_dp(digits);
    let above = |p: Decimal| (p * (Decimal::ONE + away)).round_dp(digits);
    match g % 4 {
        0 => pending(user, symbol, Side::Buy, OrderType::Limit, below(ask)),
        1 => pending(user, symbol, Side::Sell, OrderType::Limit, above(bid)),
        2 => pending(user, symbol, Side::Buy, OrderType::Stop, above(ask)),
        _ => pending(user, symbol, Side::Sell, OrderType::Stop, below(bid)),
    }
}

/// A round's plan: the rung its tick moves the ask onto and the orders resting there.
struct Rung {
    symbol: Symbol,
    level: Decimal,
    orders: Vec<String>,
    users: Vec<UserId>,
}

/// A round: its tick's publication and the orders it reaches.
struct Round {
    at: Instant,
    orders: Vec<String>,
    users: Vec<UserId>,
}

impl Book<'_> {
    /// Runs the phase.
    ///
    /// # Errors
    /// No quote to start from, a command not acknowledged, placements not answered within
    /// the timeout.
    pub(crate) async fn run(&self, opts: &BookOptions) -> anyhow::Result<BookReport> {
        if opts.stages.is_empty() || opts.users == 0 || opts.per_round == 0 || opts.rounds == 0 {
            bail!(
                "bench trading: the resting book needs stages, users, rounds and orders per round"
            );
        }
        if opts.stages.windows(2).any(|w| w[0] >= w[1]) {
            bail!(
                "bench trading: the resting book's sizes must increase: {:?}",
                opts.stages
            );
        }
        let market = self.baseline().await?;
        let feed = MarketBus::connect(self.config, suho_security::Identity::Feed)
            .await
            .context("connecting to NATS as the feed")?;
        // The bench's quotes stop however this ends.
        let stop = CancellationToken::new();
        let _stop_guard = stop.clone().drop_guard();
        tokio::spawn(keep_quoting(
            feed.clone(),
            Arc::clone(&market),
            Duration::from_millis(200),
            stop.clone(),
        ));
        let users: Vec<UserId> = (0..opts.users)
            .map(|i| UserId::new(format!("usr_book{}_{i}", self.run)))
            .collect();
        // Each symbol's next rung: rounds walk the ask down two pips at a time.
        let mut rung: HashMap<Symbol, Decimal> =
            lock(&market).iter().map(|(s, (_, a))| (*s, *a)).collect();
        let mut far: u64 = 0;
        let mut round_no: u64 = 0;
        let mut stages = Vec::new();
        for &size in &opts.stages {
            let ladder = u64::from(opts.rounds) * opts.per_round as u64;
            let top_up = size.saturating_sub(far + ladder);
            let quotes = lock(&market).clone();
            let mut commands = Vec::new();
            for g in far..far + top_up {
                #[allow(clippy::cast_possible_truncation)]
                let user = &users[(g % opts.users as u64) as usize];
                #[allow(clippy::cast_possible_truncation)]
                let symbol = self.symbols[(g % self.symbols.len() as u64) as usize];
                let (bid, ask) = quotes[&symbol];
                commands.push(far_order(g, user, symbol, bid, ask));
            }
            far += top_up;
            let mut plan: Vec<Rung> = Vec::new();
            for _ in 0..opts.rounds {
                #[allow(clippy::cast_possible_truncation)]
                let symbol = self.symbols[(round_no % self.symbols.len() as u64) as usize];
                let level = rung[&symbol] - symbol.pip() * Decimal::TWO;
                rung.insert(symbol, level);
                let mut rung_orders = Rung {
                    symbol,
                    level,
                    orders: Vec::new(),
                    users: Vec::new(),
                };
                for k in 0..opts.per_round as u64 {
                    #[allow(clippy::cast_possible_truncation)]
                    let user = &users
                        [((round_no * opts.per_round as u64 + k) % opts.users as u64) as usize];
                    let c = pending(user, symbol, Side::Buy, OrderType::Limit, level);
                    rung_orders.orders.push(c.head.event_id.clone());
                    rung_orders.users.push(user.clone());
                    commands.push(c);
                }
                plan.push(rung_orders);
                round_no += 1;
            }
            tracing::info!(
                size,
                placing = commands.len(),
                "bench trading: topping up the resting book"
            );
            let (placed_per_sec, place_rejected) =
                self.send_and_wait(&commands, opts.timeout).await?;
            let tick_ns = crate::recorder::histogram(suho_trading::TICK_SECONDS_METRIC);
            if let Some(h) = tick_ns {
                lock(h).reset();
            }
            tracing::info!(
                size,
                rounds = opts.rounds,
                "bench trading: rounds on the resting book"
            );
            let rounds = self.rounds(&feed, &market, plan, opts.round_every).await?;
            let mut stage = self.measure(&rounds, opts.timeout).await?;
            stage.tick_ns = tick_ns.map(|h| lock(h).clone());
            // The next stage starts from as many open positions as this one did: a tick's
            // cost also follows the positions it values.
            self.close_fills(&rounds, opts.timeout).await?;
            stage.resting = far + ladder;
            stage.placed = commands.len() as u64;
            stage.place_rejected = place_rejected;
            stage.placed_per_sec = placed_per_sec;
            stages.push(stage);
        }
        Ok(BookReport {
            stages,
            users: opts.users,
            symbols: self.symbols.len(),
            rounds: opts.rounds,
            per_round: opts.per_round,
            round_every: opts.round_every,
        })
    }

    /// Every symbol's latest quote, from the price service, as the bench's market.
    async fn baseline(&self) -> anyhow::Result<Market> {
        let mut market = HashMap::new();
        for &symbol in &self.symbols {
            let subject = suho_domain::subject::price(self.bus.prefix(), symbol);
            let reply = self
                .bus
                .request(subject, bytes::Bytes::new())
                .await
                .with_context(|| format!("asking the price of {symbol}"))?;
            match serde_json::from_slice::<PriceReply>(&reply) {
                Ok(PriceReply::Quote(q)) => {
                    market.insert(symbol, (q.bid, q.ask));
                }
                other => {
                    bail!("bench trading: no quote of {symbol} to start the book from: {other:?}")
                }
            }
        }
        Ok(Arc::new(Mutex::new(market)))
    }

    /// Places `commands` and waits for every answer; the rate they were answered at and
    /// how many were refused.
    async fn send_and_wait(
        &self,
        commands: &[TradeCommand],
        timeout: Duration,
    ) -> anyhow::Result<(f64, u64)> {
        let began = Instant::now();
        super::ours::send_and_wait(
            self.producer,
            self.outcomes,
            commands,
            timeout,
            "bench trading: the resting book",
        )
        .await?;
        let (last, rejected) = self.outcomes.with_seen(|seen| {
            let mut last = began;
            let mut rejected = 0;
            for c in commands {
                if let Some(first) = seen.get(&c.head.event_id).and_then(|s| s.first()) {
                    last = last.max(first.at);
                    if first.kind == OutcomeKind::Rejected {
                        rejected += 1;
                    }
                }
            }
            (last, rejected)
        });
        let took = last
            .saturating_duration_since(began)
            .max(Duration::from_millis(1));
        #[allow(clippy::cast_precision_loss)]
        Ok((commands.len() as f64 / took.as_secs_f64(), rejected))
    }

    /// Runs the rounds, open loop: round `r` at `start + r * every` moves its symbol's ask
    /// onto its rung.
    async fn rounds(
        &self,
        feed: &MarketBus,
        market: &Market,
        plan: Vec<Rung>,
        every: Duration,
    ) -> anyhow::Result<Vec<Round>> {
        let start = tokio::time::Instant::now() + Duration::from_millis(200);
        let mut rounds = Vec::new();
        for (r, rung) in plan.into_iter().enumerate() {
            let Rung {
                symbol,
                level,
                orders,
                users,
            } = rung;
            tokio::time::sleep_until(start + every * u32::try_from(r).unwrap_or(u32::MAX)).await;
            let (bid, ask) = lock(market)[&symbol];
            let spread = ask - bid;
            lock(market).insert(symbol, (level - spread, level));
            let t = tick(symbol, level - spread, level)?;
            let at = Instant::now();
            feed.publish(suho_domain::subject::tick(feed.prefix(), symbol), &t)
                .await
                .context("publishing a round's tick")?;
            rounds.push(Round { at, orders, users });
        }
        Ok(rounds)
    }

    /// Closes every position the rounds' fills opened, and waits for the closes.
    async fn close_fills(&self, rounds: &[Round], timeout: Duration) -> anyhow::Result<()> {
        let mut users: Vec<&UserId> = rounds.iter().flat_map(|r| r.users.iter()).collect();
        users.sort();
        users.dedup();
        let mut closes = Vec::new();
        for user in users {
            while let Some(trade) = self.outcomes.take_open_trade(user.as_str()) {
                closes.push(TradeCommand::close(user.clone(), trade, now_ms()));
            }
        }
        self.send_and_wait(&closes, timeout)
            .await
            .context("closing the fills")?;
        Ok(())
    }

    /// Waits for the rounds' fills (until all came, none came for 10 s, or the timeout),
    /// then times them.
    async fn measure(
        &self,
        rounds: &[Round],
        timeout: Duration,
    ) -> anyhow::Result<BookStageResult> {
        let ids = || {
            rounds
                .iter()
                .flat_map(|r| r.orders.iter().map(String::as_str))
        };
        let reached = ids().count();
        let filled = |seen: &HashMap<String, Vec<super::ours::Seen>>| {
            ids()
                .filter(|id| {
                    seen.get(*id)
                        .is_some_and(|s| s.iter().any(|x| x.kind == OutcomeKind::Executed))
                })
                .count()
        };
        let deadline = Instant::now() + timeout;
        let mut last = (0, Instant::now());
        loop {
            let n = self.outcomes.with_seen(filled);
            if n == reached || Instant::now() > deadline {
                break;
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A duplicate would come right behind its first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut result = BookStageResult {
            resting: 0,
            placed: 0,
            place_rejected: 0,
            placed_per_sec: 0.0,
            reached: reached as u64,
            filled: 0,
            missing: 0,
            duplicated: 0,
            fill_ns: new_histogram()?,
            tick_ns: None,
        };
        self.outcomes.with_seen(|seen| {
            for round in rounds {
                for id in &round.orders {
                    let fills: Vec<Instant> = seen
                        .get(id)
                        .map(|s| {
                            s.iter()
                                .filter(|x| x.kind == OutcomeKind::Executed)
                                .map(|x| x.at)
                                .collect()
                        })
                        .unwrap_or_default();
                    match fills.first() {
                        None => result.missing += 1,
                        Some(at) => {
                            result.filled += 1;
                            result.duplicated += fills.len() as u64 - 1;
                            record(&mut result.fill_ns, at.saturating_duration_since(round.at));
                        }
                    }
                }
            }
        });
        Ok(result)
    }
}

impl BookReport {
    /// Writes the phase's table.
    pub(crate) fn write(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "resting book: {} users, {} symbols; per stage {} rounds of {} buy limits reached by one tick, one every {} ms (open loop)",
            self.users,
            self.symbols,
            self.rounds,
            self.per_round,
            self.round_every.as_millis(),
        )?;
        writeln!(
            f,
            "latency: tick published -> TRADE_EXECUTED visible to a read_committed reader; engine tick = the venue's on_tick for one tick"
        )?;
        writeln!(
            f,
            "{:>8} {:>8} {:>6} {:>9}  {:>7} {:>6} {:>5} {:>4} {:>8} {:>8}  {:>11} {:>11} {:>8}",
            "resting",
            "placed",
            "rej",
            "placed/s",
            "reached",
            "filled",
            "miss",
            "dup",
            "p50 ms",
            "p99 ms",
            "tick p50 us",
            "tick p99 us",
            "ticks"
        )?;
        for s in &self.stages {
            let us = |q: f64| {
                s.tick_ns.as_ref().filter(|h| !h.is_empty()).map_or_else(
                    || "-".to_string(),
                    |h| format!("{:.1}", h.value_at_quantile(q) as f64 / 1_000.0),
                )
            };
            writeln!(
                f,
                "{:>8} {:>8} {:>6} {:>9.0}  {:>7} {:>6} {:>5} {:>4} {:>8} {:>8}  {:>11} {:>11} {:>8}",
                s.resting,
                s.placed,
                s.place_rejected,
                s.placed_per_sec,
                s.reached,
                s.filled,
                s.missing,
                s.duplicated,
                crate::opt(quantile_ms(&s.fill_ns, 0.5), 1),
                crate::opt(quantile_ms(&s.fill_ns, 0.99), 1),
                us(0.5),
                us(0.99),
                s.tick_ns.as_ref().map_or(0, Histogram::len),
            )?;
        }
        Ok(())
    }
}
