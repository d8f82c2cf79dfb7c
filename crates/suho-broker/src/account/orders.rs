//! Pending orders: buy and sell limits, stops and stop-limits that rest in the account's book
//! until the price comes, with a time in force (GTC, DAY to the 17:00 New York rollover, GTD
//! to `expires_at`), cancel and replace.
//!
//! Rules (MetaTrader 5's):
//! - Placement: a BUY LIMIT rests below the ask and a SELL LIMIT above the bid; a BUY STOP
//!   above the ask and a SELL STOP below the bid; a stop-limit's stop as a stop's, and its
//!   limit at or below its stop (BUY) or at or above it (SELL). An order that would fill at
//!   once is refused rather than filled (send a market order for that). Stops are checked
//!   against the price the order enters at (its limit, or its stop).
//! - Trigger, on each tick of its symbol: a limit when the ask falls to a BUY's limit (the bid
//!   rises to a SELL's), filled at that tick's ask (bid): the limit or better; a stop when the
//!   ask rises to a BUY's stop (the bid falls to a SELL's), filled at market on that tick; a
//!   stop-limit, once touched, becomes a limit at its limit price (`ORDER_TRIGGERED`) and may
//!   fill on the same tick.
//! - Margin is checked when the order fills, not reserved when it is placed, as MT5 does:
//!   a pending order commits no money until it becomes a position, so a user may rest more
//!   orders than they could fill at once, and a fill the account cannot carry is refused
//!   then (`ORDER_REJECTED` with the reason, and the order is gone). The open-position limit
//!   and the stops are checked at the fill price too.
//! - Expiry: at the first tick after `expires_at`, `ORDER_EXPIRED`.
//!
//! One-cancels-other: an order placed with `oco_with` (a pending order of the same symbol,
//! not yet paired) is paired with it both ways; when either fills, the other is cancelled on
//! the same tick (`ORDER_CANCELLED`, id `oco_{order}`, with the reason); when either leaves
//! the book otherwise (cancelled, expired, refused), the other stays, unpaired.
//!
//! Ids: order `ord_{command id without "cmd_"}`; events `plc_{cmd}` (placed), `rpl_{cmd}`
//! (replaced), `can_{cmd}` (cancelled), `trg_{order}` (triggered), `exp_{order}` (expired),
//! `orej_{order}` (refused at fill), and the fill `exec_{order}`, which opens the position
//! `trd_{command id without "cmd_"}`, as a market order would.

use rust_decimal::Decimal;
use suho_domain::{
    CancelOrder, CommandHead, CommandMetadata, OpenTrade, Order, OrderType, ReplaceOrder, Side,
    Symbol, Tick, TimeInForce, TradeEvent, TradeEventType, TradeStatus, SCHEMA_VERSION,
};

use super::positions::{check_stops, entry_price, expect_tick, trade_id, Deal};
use super::{AccountEvent, ApplyError, Outcome, PaperAccount};
use crate::reject::RejectReason;

/// The order id an `OPEN_TRADE` with id `command_id` creates when it rests.
#[must_use]
pub fn order_id(command_id: &str) -> String {
    format!(
        "ord_{}",
        command_id.strip_prefix("cmd_").unwrap_or(command_id)
    )
}

/// A pending order in the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingOrder {
    /// `ord_...`.
    pub id: String,
    /// The `OPEN_TRADE` that placed it.
    pub command_id: String,
    /// Symbol, side, volume, and the stops of the position it opens.
    pub order: Order,
    /// LIMIT, STOP or STOP_LIMIT.
    pub order_type: OrderType,
    /// The limit price.
    pub limit_price: Option<Decimal>,
    /// The stop price.
    pub stop_price: Option<Decimal>,
    /// GTC, DAY or GTD.
    pub time_in_force: TimeInForce,
    /// When it expires (DAY and GTD), epoch ms.
    pub expires_at: Option<i64>,
    /// When it was placed, epoch ms.
    pub placed_at: i64,
    /// A stop-limit whose stop was touched: it now works as a limit.
    pub triggered: bool,
    /// The trailing stop its position gets, pips.
    pub trailing_stop_pips: Option<Decimal>,
    /// The order it is paired with, one-cancels-other.
    pub oco_with: Option<String>,
    /// Strategy / signal provenance of the command that placed it.
    pub metadata: Option<CommandMetadata>,
}

/// When a tick reaches a resting order: the price it enters at (the ask for a buy, the bid
/// for a sell) at or below `level` (a buy limit, a sell stop) or at or above it (a sell
/// limit, a buy stop). The one home of that condition: the account fills by it, and the
/// broker's book indexes orders by it so a tick visits only the orders it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    /// The side whose entry price is watched.
    pub side: Side,
    /// The level.
    pub level: Decimal,
    /// Reached at or below `level` (else at or above).
    pub at_or_below: bool,
}

impl Trigger {
    /// Whether `tick` reaches it.
    #[must_use]
    pub fn reached_by(&self, tick: &Tick) -> bool {
        let price = entry_price(self.side, tick);
        if self.at_or_below {
            price <= self.level
        } else {
            price >= self.level
        }
    }
}

/// What a tick does to one order.
enum Touch {
    /// Fill at this price.
    Fill(Decimal),
    /// A stop-limit's stop is touched (and, at this price, its limit fills too).
    Trigger(Option<Decimal>),
}

impl PendingOrder {
    /// The price it enters at if it fills at its own price: the limit, else the stop.
    fn entry(&self) -> Option<Decimal> {
        self.limit_price.or(self.stop_price)
    }

    /// The level a tick must reach to act on it (see [`Trigger`]): its limit (a limit, or a
    /// stop-limit whose stop was touched), else its stop. `None` for a market order, which
    /// never rests.
    #[must_use]
    pub fn trigger(&self) -> Option<Trigger> {
        let buy = self.order.side == Side::Buy;
        let limit = |level| Trigger {
            side: self.order.side,
            level,
            at_or_below: buy,
        };
        let stop = |level| Trigger {
            side: self.order.side,
            level,
            at_or_below: !buy,
        };
        match (self.order_type, self.triggered) {
            (OrderType::Limit, _) | (OrderType::StopLimit, true) => self.limit_price.map(limit),
            (OrderType::Stop, _) | (OrderType::StopLimit, false) => self.stop_price.map(stop),
            (OrderType::Market, _) => None,
        }
    }

    /// Whether `tick` reaches it, and at what price it fills.
    fn touched_by(&self, tick: &Tick) -> Option<Touch> {
        let price = entry_price(self.order.side, tick);
        if self.order_type == OrderType::Market {
            return Some(Touch::Fill(price));
        }
        if !self.trigger()?.reached_by(tick) {
            return None;
        }
        if self.order_type == OrderType::StopLimit && !self.triggered {
            // The stop is touched: it works as a limit from now on, and fills at once if the
            // same price already reaches the limit.
            let limit = PendingOrder {
                triggered: true,
                ..self.clone()
            };
            let fills = limit.trigger().is_some_and(|t| t.reached_by(tick));
            return Some(Touch::Trigger(fills.then_some(price)));
        }
        Some(Touch::Fill(price))
    }

    /// The order an `ORDER_PLACED` or `ORDER_REPLACED` event describes.
    pub(super) fn from_event(e: &TradeEvent) -> Result<PendingOrder, ApplyError> {
        let missing = |field| ApplyError::Missing {
            event_id: e.event_id.clone(),
            field,
        };
        Ok(PendingOrder {
            id: e.order_id.clone().ok_or_else(|| missing("order_id"))?,
            command_id: e.command_id.clone().ok_or_else(|| missing("command_id"))?,
            order: Order {
                symbol: e.symbol.ok_or_else(|| missing("symbol"))?,
                side: e.side.or(e.action).ok_or_else(|| missing("side"))?,
                volume: e.volume.ok_or_else(|| missing("volume"))?,
                stop_loss: e.stop_loss,
                take_profit: e.take_profit,
            },
            order_type: e.order_type.ok_or_else(|| missing("order_type"))?,
            limit_price: e.limit_price,
            stop_price: e.stop_price,
            time_in_force: e.time_in_force.unwrap_or(TimeInForce::Gtc),
            expires_at: e.expires_at,
            placed_at: e.timestamp,
            triggered: false,
            trailing_stop_pips: e.trailing_stop_pips,
            oco_with: e.oco_with.clone(),
            metadata: e.metadata.clone(),
        })
    }
}

/// Where a pending order of `side` and `order_type` must rest on `tick`, or why it cannot.
fn check_resting(
    side: Side,
    order_type: OrderType,
    limit: Option<Decimal>,
    stop: Option<Decimal>,
    tick: &Tick,
) -> Result<(), RejectReason> {
    let market = entry_price(side, tick);
    let buy = side == Side::Buy;
    let wrong = |field: &'static str, price: Decimal, below: bool| RejectReason::PendingPrice {
        side,
        order_type,
        field,
        price,
        relation: if below { "below" } else { "above" },
        reference: if buy { "ask" } else { "bid" },
        market,
    };
    match order_type {
        OrderType::Limit => {
            let l = limit.unwrap_or_default();
            if (buy && l >= market) || (!buy && l <= market) {
                return Err(wrong("limit_price", l, buy));
            }
        }
        OrderType::Stop | OrderType::StopLimit => {
            let s = stop.unwrap_or_default();
            if (buy && s <= market) || (!buy && s >= market) {
                return Err(wrong("stop_price", s, !buy));
            }
            if let (OrderType::StopLimit, Some(l)) = (order_type, limit) {
                if (buy && l > s) || (!buy && l < s) {
                    return Err(RejectReason::StopLimitInverted {
                        side,
                        limit: l,
                        stop: s,
                    });
                }
            }
        }
        OrderType::Market => {}
    }
    Ok(())
}

impl PaperAccount {
    /// Pending orders, by id.
    pub fn orders(&self) -> impl Iterator<Item = &PendingOrder> {
        self.orders.values()
    }

    /// The symbol a command on pending order `order_id` needs a price for: that of the event
    /// it already produced (a retried command), else that of the order; `None` for an order
    /// that is not pending.
    #[must_use]
    pub fn order_symbol(&self, head: &CommandHead, order_id: &str) -> Option<Symbol> {
        for prefix in ["rpl_", "can_"] {
            if let Some(AccountEvent::Trade(e)) =
                self.journal.get(&format!("{prefix}{}", head.event_id))
            {
                return e.symbol;
            }
        }
        self.orders.get(order_id).map(|o| o.order.symbol)
    }

    /// Places a pending order (`OPEN_TRADE` of a type other than MARKET): checks the order's
    /// rules, where its price rests against `tick`, its stops against its own price, its
    /// expiry (a GTD in the future; a DAY order expires at the next rollover) and the pending
    /// order limit; then `ORDER_PLACED`.
    pub(super) fn place(
        &mut self,
        command: &CommandHead,
        open: &OpenTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let event_id = format!("plc_{}", command.event_id);
        if let Some(done) = self.replay_trade(&event_id) {
            return Ok(done);
        }
        if command.user_id != self.user_id || command.mt5_account != self.mt5_account {
            return Err(RejectReason::WrongAccount);
        }
        open.validate()?;
        let order = &open.order;
        expect_tick(order.symbol, tick)?;
        self.quotes.update(tick);
        self.check_order(order)?;
        let tif = open.tif();
        let expires_at = match tif {
            TimeInForce::Day => Some(suho_domain::session::rollover_after(now_ms)),
            _ => open.expires_at,
        };
        if let Some(at) = expires_at.filter(|at| *at <= now_ms) {
            return Err(RejectReason::ExpiryPassed { at, now: now_ms });
        }
        if self.orders.len() >= self.config.max_pending_orders {
            let (open, max) = (self.orders.len(), self.config.max_pending_orders);
            return Err(RejectReason::TooManyOrders { open, max });
        }
        let pending = PendingOrder {
            id: order_id(&command.event_id),
            command_id: command.event_id.clone(),
            order: order.clone(),
            order_type: open.order_type,
            limit_price: open.limit_price,
            stop_price: open.stop_price,
            time_in_force: tif,
            expires_at,
            placed_at: now_ms,
            triggered: false,
            trailing_stop_pips: open.trailing_stop_pips,
            oco_with: open.oco_with.clone(),
            metadata: command.metadata.clone(),
        };
        if let Some(other) = &pending.oco_with {
            match self.orders.get(other) {
                None => return Err(RejectReason::UnknownOrder(other.clone())),
                Some(o) if o.oco_with.is_some() => {
                    return Err(RejectReason::Oco(format!(
                        "order {other} is already paired"
                    )))
                }
                Some(o) if o.order.symbol != order.symbol => {
                    return Err(RejectReason::Oco(format!(
                        "order {other} is on {}, not {}",
                        o.order.symbol, order.symbol
                    )))
                }
                Some(_) => {}
            }
        }
        self.check_pending(&pending, tick)?;
        let event = self.order_event(
            TradeEventType::OrderPlaced,
            event_id,
            Some(command),
            &pending,
            TradeStatus::Pending,
            now_ms,
        );
        Ok(Outcome::done(self.commit(event)?))
    }

    /// Where `pending` rests against `tick`, and its stops against its own price.
    fn check_pending(&self, pending: &PendingOrder, tick: &Tick) -> Result<(), RejectReason> {
        let o = &pending.order;
        if !pending.triggered {
            check_resting(
                o.side,
                pending.order_type,
                pending.limit_price,
                pending.stop_price,
                tick,
            )?;
        }
        let entry = pending.entry().unwrap_or_else(|| entry_price(o.side, tick));
        check_stops(o.side, entry, o.stop_loss, o.take_profit)
    }

    /// Cancels a pending order: `ORDER_CANCELLED`.
    ///
    /// # Errors
    /// [`RejectReason::UnknownOrder`] when it is not pending (filled, expired, cancelled, or
    /// never placed); [`RejectReason::WrongAccount`].
    pub fn cancel(
        &mut self,
        command: &CommandHead,
        cancel: &CancelOrder,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let event_id = format!("can_{}", command.event_id);
        if let Some(done) = self.replay_trade(&event_id) {
            return Ok(done);
        }
        if command.user_id != self.user_id || command.mt5_account != self.mt5_account {
            return Err(RejectReason::WrongAccount);
        }
        let pending = self
            .orders
            .get(&cancel.order_id)
            .ok_or_else(|| RejectReason::UnknownOrder(cancel.order_id.clone()))?
            .clone();
        let event = self.order_event(
            TradeEventType::OrderCancelled,
            event_id,
            Some(command),
            &pending,
            TradeStatus::Cancelled,
            now_ms,
        );
        Ok(Outcome::done(self.commit(event)?))
    }

    /// Changes a pending order (what the command leaves out keeps its value) and checks the
    /// result as a placement is checked, against `tick`: `ORDER_REPLACED` with the order as it
    /// now is. A limit price on a STOP, or a stop price on a LIMIT, is refused; so is an
    /// expiry on an order that is not GTD.
    ///
    /// # Errors
    /// As [`PaperAccount::cancel`], plus the placement checks.
    pub fn replace(
        &mut self,
        command: &CommandHead,
        replace: &ReplaceOrder,
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let event_id = format!("rpl_{}", command.event_id);
        if let Some(done) = self.replay_trade(&event_id) {
            return Ok(done);
        }
        if command.user_id != self.user_id || command.mt5_account != self.mt5_account {
            return Err(RejectReason::WrongAccount);
        }
        replace.validate()?;
        let mut pending = self
            .orders
            .get(&replace.order_id)
            .ok_or_else(|| RejectReason::UnknownOrder(replace.order_id.clone()))?
            .clone();
        expect_tick(pending.order.symbol, tick)?;
        self.quotes.update(tick);
        let t = pending.order_type;
        let not_for = |field: &'static str| {
            RejectReason::InvalidCommand(suho_domain::CommandError::NotAllowed {
                field,
                reason: format!("is not allowed with a {t} order"),
            })
        };
        if replace.limit_price.is_some() && !matches!(t, OrderType::Limit | OrderType::StopLimit) {
            return Err(not_for("limit_price"));
        }
        if replace.stop_price.is_some() && !matches!(t, OrderType::Stop | OrderType::StopLimit) {
            return Err(not_for("stop_price"));
        }
        if replace.expires_at.is_some() && pending.time_in_force != TimeInForce::Gtd {
            return Err(RejectReason::InvalidCommand(
                suho_domain::CommandError::NotAllowed {
                    field: "expires_at",
                    reason: format!("is only for GTD orders, not {}", pending.time_in_force),
                },
            ));
        }
        pending.order.volume = replace.volume.unwrap_or(pending.order.volume);
        pending.limit_price = replace.limit_price.or(pending.limit_price);
        pending.stop_price = replace.stop_price.or(pending.stop_price);
        pending.order.stop_loss = replace.stop_loss.or(pending.order.stop_loss);
        pending.order.take_profit = replace.take_profit.or(pending.order.take_profit);
        pending.expires_at = replace.expires_at.or(pending.expires_at);
        if let Some(at) = replace.expires_at.filter(|at| *at <= now_ms) {
            return Err(RejectReason::ExpiryPassed { at, now: now_ms });
        }
        self.check_order(&pending.order)?;
        self.check_pending(&pending, tick)?;
        let event = self.order_event(
            TradeEventType::OrderReplaced,
            event_id,
            Some(command),
            &pending,
            TradeStatus::Pending,
            now_ms,
        );
        Ok(Outcome::done(self.commit(event)?))
    }

    /// What `tick` (and the clock, `now_ms`) does to the book, applied and returned in order:
    /// every order past its expiry expires (whatever its symbol); then the tick symbol's
    /// orders, oldest first, trigger and fill (`ORDER_TRIGGERED`, `TRADE_EXECUTED`) or are
    /// refused at the fill (`ORDER_REJECTED`).
    pub(super) fn work_orders(&mut self, tick: &Tick, now_ms: i64) -> Vec<TradeEvent> {
        let mut out = Vec::new();
        let expired: Vec<PendingOrder> = self
            .orders
            .values()
            .filter(|o| o.expires_at.is_some_and(|at| at <= now_ms))
            .cloned()
            .collect();
        for pending in expired {
            let event = self.order_event(
                TradeEventType::OrderExpired,
                format!("exp_{}", pending.id),
                None,
                &pending,
                TradeStatus::Expired,
                now_ms,
            );
            self.record(event, &mut out);
        }
        let mut due: Vec<PendingOrder> = self
            .orders
            .values()
            .filter(|o| o.order.symbol == tick.symbol)
            .cloned()
            .collect();
        due.sort_by(|a, b| (a.placed_at, &a.id).cmp(&(b.placed_at, &b.id)));
        for pending in due {
            // An order its pair's fill cancelled earlier on this tick is gone.
            let Some(pending) = self.orders.get(&pending.id).cloned() else {
                continue;
            };
            let fill = match pending.touched_by(tick) {
                None => continue,
                Some(Touch::Fill(price)) => price,
                Some(Touch::Trigger(fill)) => {
                    let event = self.order_event(
                        TradeEventType::OrderTriggered,
                        format!("trg_{}", pending.id),
                        None,
                        &pending,
                        TradeStatus::Pending,
                        now_ms,
                    );
                    self.record(event, &mut out);
                    match fill {
                        Some(price) => price,
                        None => continue,
                    }
                }
            };
            let filled = if self.nets(pending.order.symbol) {
                self.net_fill(&pending, fill, now_ms, &mut out)
            } else {
                let event = self.fill_event(&pending, fill, now_ms);
                let filled = event.event_type == TradeEventType::TradeExecuted;
                self.record(event, &mut out);
                filled
            };
            let pair = pending
                .oco_with
                .as_ref()
                .and_then(|o| self.orders.get(o))
                .cloned();
            if let (true, Some(pair)) = (filled, pair) {
                let mut event = self.order_event(
                    TradeEventType::OrderCancelled,
                    format!("oco_{}", pair.id),
                    None,
                    &pair,
                    TradeStatus::Cancelled,
                    now_ms,
                );
                event.reason = Some(format!("one-cancels-other: order {} filled", pending.id));
                self.record(event, &mut out);
            }
        }
        out
    }

    /// The fill of `pending` at `price`, or its refusal (`ORDER_REJECTED`) when the account
    /// cannot take the position now.
    fn fill_event(&self, pending: &PendingOrder, price: Decimal, now_ms: i64) -> TradeEvent {
        let id = trade_id(&pending.command_id);
        let trailing = pending.trailing_stop_pips;
        match self.fillable(
            id,
            &pending.command_id,
            &pending.order,
            trailing,
            price,
            now_ms,
        ) {
            Ok(pos) => {
                let mut event = self.trade_event(
                    TradeEventType::TradeExecuted,
                    format!("exec_{}", pending.id),
                    None,
                    &pos,
                    now_ms,
                );
                event.command_id = Some(pending.command_id.clone());
                event.order_id = Some(pending.id.clone());
                event.order_type = Some(pending.order_type);
                event.limit_price = pending.limit_price;
                event.stop_price = pending.stop_price;
                event.execution_price = Some(price);
                event.commission = Some(pos.commission).filter(|c| !c.is_zero());
                event.metadata = pending.metadata.clone();
                event
            }
            Err(reason) => self.refused_fill(pending, price, &reason, now_ms),
        }
    }

    /// The fill of `pending` at `price` on a netting account that holds its symbol
    /// ([`PaperAccount::net`]): its events go to `out`, the last one carrying the order.
    /// Refused, nothing changes but the `ORDER_REJECTED`. Whether it filled.
    fn net_fill(
        &mut self,
        pending: &PendingOrder,
        price: Decimal,
        now_ms: i64,
        out: &mut Vec<TradeEvent>,
    ) -> bool {
        let deal = Deal {
            id: format!("exec_{}", pending.id),
            close_prefix: format!("cls_{}_", pending.id),
            new_trade: trade_id(&pending.command_id),
            command_id: &pending.command_id,
            command: None,
        };
        let finish = |e: &mut TradeEvent| {
            e.order_id = Some(pending.id.clone());
            e.order_type = Some(pending.order_type);
            e.limit_price = pending.limit_price;
            e.stop_price = pending.stop_price;
            e.metadata.clone_from(&pending.metadata);
        };
        let before = self.clone();
        let trailing = pending.trailing_stop_pips;
        match self.net(&deal, &pending.order, trailing, price, now_ms, finish) {
            Ok((closes, event)) => {
                out.extend(closes);
                out.push(event);
                true
            }
            Err(reason) => {
                *self = before;
                let event = self.refused_fill(pending, price, &reason, now_ms);
                self.record(event, out);
                false
            }
        }
    }

    /// `ORDER_REJECTED`: `pending` could not fill at `price`.
    fn refused_fill(
        &self,
        pending: &PendingOrder,
        price: Decimal,
        reason: &RejectReason,
        now_ms: i64,
    ) -> TradeEvent {
        let mut event = self.order_event(
            TradeEventType::OrderRejected,
            format!("orej_{}", pending.id),
            None,
            pending,
            TradeStatus::Rejected,
            now_ms,
        );
        event.reason = Some(format!("not filled at {price}: {reason}"));
        event
    }

    /// Applies an event the book produced on its own and adds it to `out`; one that cannot
    /// be applied (an overflow) is dropped rather than reported as done.
    fn record(&mut self, event: TradeEvent, out: &mut Vec<TradeEvent>) {
        if self.apply(&AccountEvent::Trade(event.clone())).is_ok() {
            out.push(event);
        }
    }

    /// An order event about `pending`, answering `command` when there is one.
    fn order_event(
        &self,
        event_type: TradeEventType,
        event_id: String,
        command: Option<&CommandHead>,
        pending: &PendingOrder,
        status: TradeStatus,
        now_ms: i64,
    ) -> TradeEvent {
        let o = &pending.order;
        TradeEvent {
            event_id,
            event_type,
            command_id: Some(
                command.map_or_else(|| pending.command_id.clone(), |c| c.event_id.clone()),
            ),
            user_id: self.user_id.clone(),
            mt5_account: self.mt5_account.clone(),
            trade_id: None,
            order_id: Some(pending.id.clone()),
            order_type: Some(pending.order_type),
            side: Some(o.side),
            limit_price: pending.limit_price,
            stop_price: pending.stop_price,
            time_in_force: Some(pending.time_in_force),
            expires_at: pending.expires_at,
            oco_with: pending.oco_with.clone(),
            symbol: Some(o.symbol),
            action: Some(o.side),
            volume: Some(o.volume),
            remaining_volume: None,
            open_price: None,
            execution_price: None,
            close_price: None,
            profit: None,
            commission: None,
            swap: None,
            stop_loss: o.stop_loss,
            take_profit: o.take_profit,
            trailing_stop_pips: pending.trailing_stop_pips,
            status: Some(status),
            reason: None,
            timestamp: now_ms,
            latency_ms: command.map(|c| now_ms.saturating_sub(c.timestamp).max(0)),
            metadata: command.map_or_else(|| pending.metadata.clone(), |c| c.metadata.clone()),
            schema_version: SCHEMA_VERSION,
        }
    }

    /// Applies an order event to the book: placed and replaced orders (re)enter it with the
    /// state the event describes, a triggered stop-limit works as a limit, a cancelled,
    /// expired or refused order leaves it.
    pub(super) fn apply_order(&mut self, e: &TradeEvent) -> Result<(), ApplyError> {
        let id = || {
            e.order_id.clone().ok_or_else(|| ApplyError::Missing {
                event_id: e.event_id.clone(),
                field: "order_id",
            })
        };
        let unknown = |order_id: String| ApplyError::UnknownOrder {
            event_id: e.event_id.clone(),
            order_id,
        };
        match e.event_type {
            TradeEventType::OrderPlaced => {
                let pending = PendingOrder::from_event(e)?;
                if let Some(pair) = pending
                    .oco_with
                    .as_ref()
                    .and_then(|o| self.orders.get_mut(o))
                {
                    pair.oco_with = Some(pending.id.clone());
                }
                self.orders.insert(pending.id.clone(), pending);
            }
            TradeEventType::OrderReplaced => {
                let mut pending = PendingOrder::from_event(e)?;
                let before = self
                    .orders
                    .get(&pending.id)
                    .ok_or_else(|| unknown(pending.id.clone()))?;
                pending.placed_at = before.placed_at;
                pending.triggered = before.triggered;
                self.orders.insert(pending.id.clone(), pending);
            }
            TradeEventType::OrderTriggered => {
                let id = id()?;
                self.orders
                    .get_mut(&id)
                    .ok_or_else(|| unknown(id.clone()))?
                    .triggered = true;
            }
            _ => {
                let id = id()?;
                let gone = self.orders.remove(&id).ok_or_else(|| unknown(id.clone()))?;
                self.unpair(&gone);
            }
        }
        Ok(())
    }

    /// An order left the book: its pair, if still pending, stands alone now.
    pub(super) fn unpair(&mut self, gone: &PendingOrder) {
        if let Some(pair) = gone.oco_with.as_ref().and_then(|o| self.orders.get_mut(o)) {
            pair.oco_with = None;
        }
    }
}
