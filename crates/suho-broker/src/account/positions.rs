//! Positions: opening at market, closing, changing stops, and the broker's own closes at a
//! stop loss, a take profit or a stop-out. The profit formula lives here
//! ([`Position::quote_profit`]), once.

use rust_decimal::Decimal;
use suho_domain::money::{round_cents, CONTRACT_SIZE};
use suho_domain::{
    ClosePositions, CloseTrade, CommandError, CommandHead, ModifyTrade, OpenTrade, Order,
    OrderType, PositionMode, Side, Symbol, Tick, TradeEvent, TradeEventType, TradeStatus,
    SCHEMA_VERSION,
};

use super::{add, AccountEvent, ApplyError, Outcome, PaperAccount};
use crate::quotes::ValuationError;
use crate::reject::RejectReason;

/// One open position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Position id (`trd_...`), the `trade_id` of its events.
    pub id: String,
    /// The pair.
    pub symbol: Symbol,
    /// Buy or sell.
    pub side: Side,
    /// Lots.
    pub volume: Decimal,
    /// Fill price.
    pub open_price: Decimal,
    /// Stop loss.
    pub stop_loss: Option<Decimal>,
    /// Take profit.
    pub take_profit: Option<Decimal>,
    /// A trailing stop's distance, pips: the stop loss follows the price in the position's
    /// favour.
    pub trailing_stop_pips: Option<Decimal>,
    /// Opening time, epoch ms.
    pub open_time: i64,
    /// The `OPEN_TRADE` command that opened it.
    pub command_id: Option<String>,
    /// Commission paid on opening (negative).
    pub commission: Decimal,
    /// Swap accrued and not yet realised (negative: owed).
    pub swap: Decimal,
    /// The last rollover its swap was charged for (its opening time before the first).
    pub swap_through: i64,
    /// The strategy whose order opened it (`metadata.strategy` of a market order), if any.
    pub strategy: Option<String>,
}

impl Position {
    /// The price the position closes at on `tick`: the bid for a BUY, the ask for a SELL.
    #[must_use]
    pub fn exit_price(&self, tick: &Tick) -> Decimal {
        match self.side {
            Side::Buy => tick.bid,
            Side::Sell => tick.ask,
        }
    }

    /// Profit in the quote currency if closed at `price`, unrounded:
    /// `(price - open) × lots × 100,000` for a BUY, `(open - price) × ...` for a SELL.
    ///
    /// # Errors
    /// [`ValuationError::Overflow`] for absurd prices.
    pub fn quote_profit(&self, price: Decimal) -> Result<Decimal, ValuationError> {
        let diff = match self.side {
            Side::Buy => price.checked_sub(self.open_price),
            Side::Sell => self.open_price.checked_sub(price),
        };
        diff.and_then(|d| d.checked_mul(self.volume))
            .and_then(|d| d.checked_mul(CONTRACT_SIZE))
            .ok_or(ValuationError::Overflow("computing profit"))
    }

    /// Which stop `tick` triggers: BUY `bid <= SL` or `bid >= TP`; SELL `ask >= SL` or
    /// `ask <= TP`.
    pub(super) fn stop_hit(&self, tick: &Tick) -> Option<CloseKind> {
        let price = self.exit_price(tick);
        let (hits_sl, hits_tp) = match self.side {
            Side::Buy => (
                self.stop_loss.is_some_and(|sl| price <= sl),
                self.take_profit.is_some_and(|tp| price >= tp),
            ),
            Side::Sell => (
                self.stop_loss.is_some_and(|sl| price >= sl),
                self.take_profit.is_some_and(|tp| price <= tp),
            ),
        };
        if hits_sl {
            Some(CloseKind::StopLoss)
        } else if hits_tp {
            Some(CloseKind::TakeProfit)
        } else {
            None
        }
    }

    pub(super) fn from_event(e: &TradeEvent) -> Result<Position, ApplyError> {
        let missing = |field| ApplyError::Missing {
            event_id: e.event_id.clone(),
            field,
        };
        Ok(Position {
            id: e.trade_id.clone().ok_or_else(|| missing("trade_id"))?,
            symbol: e.symbol.ok_or_else(|| missing("symbol"))?,
            side: e.action.ok_or_else(|| missing("action"))?,
            volume: e.volume.ok_or_else(|| missing("volume"))?,
            open_price: e.open_price.ok_or_else(|| missing("open_price"))?,
            stop_loss: e.stop_loss,
            take_profit: e.take_profit,
            trailing_stop_pips: e.trailing_stop_pips,
            open_time: e.timestamp,
            command_id: e.command_id.clone(),
            commission: e.commission.unwrap_or_default(),
            swap: Decimal::ZERO,
            swap_through: e.timestamp,
            strategy: e.metadata.as_ref().and_then(|m| m.strategy.clone()),
        })
    }

    /// This position after the netting deal `e` (a `TRADE_EXECUTED` naming it) added to it:
    /// the event's `remaining_volume` (the new total), `open_price` (the new average) and
    /// stops, and the deal's commission.
    pub(super) fn merged(&self, e: &TradeEvent) -> Result<Position, ApplyError> {
        let missing = |field| ApplyError::Missing {
            event_id: e.event_id.clone(),
            field,
        };
        Ok(Position {
            volume: e
                .remaining_volume
                .ok_or_else(|| missing("remaining_volume"))?,
            open_price: e.open_price.ok_or_else(|| missing("open_price"))?,
            stop_loss: e.stop_loss,
            take_profit: e.take_profit,
            trailing_stop_pips: e.trailing_stop_pips,
            commission: self.commission + e.commission.unwrap_or_default(),
            ..self.clone()
        })
    }

    /// Where the trailing stop would put the stop loss on `tick`: the exit price less the
    /// distance for a BUY, plus it for a SELL; `Some` only when that is at least one pip
    /// better for the position than the stop loss it has (a trailing stop never moves back,
    /// and moves in whole pips' steps so a jittering price does not send an event per tick).
    #[must_use]
    pub fn trailed_stop(&self, tick: &Tick) -> Option<Decimal> {
        let pips = self.trailing_stop_pips?;
        let pip = self.symbol.pip();
        let distance = pips.checked_mul(pip)?;
        let price = self.exit_price(tick);
        let (candidate, better) = match self.side {
            Side::Buy => {
                let c = price.checked_sub(distance)?;
                (c, self.stop_loss.is_none_or(|sl| c >= sl + pip))
            }
            Side::Sell => {
                let c = price.checked_add(distance)?;
                (c, self.stop_loss.is_none_or(|sl| c <= sl - pip))
            }
        };
        (better && candidate > Decimal::ZERO).then_some(candidate)
    }
}

/// Why the broker closed a position on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseKind {
    StopLoss,
    TakeProfit,
    StopOut,
}

/// The position id an `OPEN_TRADE` with id `command_id` creates: `trd_` + the id without its
/// `cmd_` prefix.
#[must_use]
pub fn trade_id(command_id: &str) -> String {
    format!(
        "trd_{}",
        command_id.strip_prefix("cmd_").unwrap_or(command_id)
    )
}

/// Decimal places of a netted position's average open price (exact enough that no profit
/// moves by a cent on any volume the account allows).
const AVERAGE_PRICE_DP: u32 = 10;

/// The ids of one deal's events: its outcome (`id`), the closes before it
/// (`close_prefix` + the position), and a position it opens (`new_trade`).
pub(super) struct Deal<'a> {
    pub(super) id: String,
    pub(super) close_prefix: String,
    pub(super) new_trade: String,
    pub(super) command_id: &'a str,
    pub(super) command: Option<&'a CommandHead>,
}

/// `open`'s order with its pip distances (`stop_loss_pips`, `take_profit_pips`) made
/// prices from the fill `price`: a BUY's stop loss below it and take profit above, a SELL's
/// the reverse.
fn with_pip_exits(open: &OpenTrade, price: Decimal) -> Result<Order, RejectReason> {
    let mut order = open.order.clone();
    let pip = order.symbol.pip();
    let sign = match order.side {
        Side::Buy => Decimal::ONE,
        Side::Sell => Decimal::NEGATIVE_ONE,
    };
    for (field, pips, toward, level) in [
        (
            "stop_loss_pips",
            open.stop_loss_pips,
            -sign,
            &mut order.stop_loss,
        ),
        (
            "take_profit_pips",
            open.take_profit_pips,
            sign,
            &mut order.take_profit,
        ),
    ] {
        let Some(pips) = pips else { continue };
        let at = pips
            .checked_mul(pip)
            .and_then(|d| d.checked_mul(toward))
            .and_then(|d| price.checked_add(d))
            .filter(|p| *p > Decimal::ZERO)
            .ok_or_else(|| CommandError::NotAllowed {
                field,
                reason: format!("{pips} pips from {price} is not a price"),
            })?;
        *level = Some(at);
    }
    Ok(order)
}

pub(super) fn check_stops(
    side: Side,
    price: Decimal,
    stop_loss: Option<Decimal>,
    take_profit: Option<Decimal>,
) -> Result<(), RejectReason> {
    // A BUY's stop loss sits below the price and its take profit above; a SELL's the reverse.
    let sl_below = side == Side::Buy;
    let wrong = |level: Option<Decimal>, below: bool| {
        level.filter(|l| if below { *l >= price } else { *l <= price })
    };
    if let Some(stop_loss) = wrong(stop_loss, sl_below) {
        return Err(RejectReason::StopLossWrongSide {
            side,
            stop_loss,
            price,
        });
    }
    if let Some(take_profit) = wrong(take_profit, !sl_below) {
        return Err(RejectReason::TakeProfitWrongSide {
            side,
            take_profit,
            price,
        });
    }
    Ok(())
}

/// The price an order of `side` enters at on `tick`: a BUY at the ask, a SELL at the bid.
pub(crate) fn entry_price(side: Side, tick: &Tick) -> Decimal {
    match side {
        Side::Buy => tick.ask,
        Side::Sell => tick.bid,
    }
}

pub(super) fn expect_tick(expected: Symbol, tick: &Tick) -> Result<(), RejectReason> {
    if tick.symbol == expected {
        Ok(())
    } else {
        Err(RejectReason::WrongTick {
            expected,
            got: tick.symbol,
        })
    }
}

impl PaperAccount {
    /// Checks the command is addressed to this account.
    fn expect_account(&self, head: &CommandHead) -> Result<(), RejectReason> {
        if head.user_id != self.user_id || head.mt5_account != self.mt5_account {
            return Err(RejectReason::WrongAccount);
        }
        Ok(())
    }

    /// The symbol a close or modify of position `trade_id` by command `head` needs a price
    /// for: that of the event it already produced (a retried command), else that of its
    /// position; `None` for an unknown position (the command is then rejected whatever the
    /// price).
    #[must_use]
    pub fn position_symbol(&self, head: &CommandHead, trade_id: &str) -> Option<Symbol> {
        for prefix in ["cls_", "mod_"] {
            if let Some(AccountEvent::Trade(e)) =
                self.journal.get(&format!("{prefix}{}", head.event_id))
            {
                return e.symbol;
            }
        }
        self.positions.get(trade_id).map(|p| p.symbol)
    }

    /// A success event about `pos`, answering `command` when there is one.
    pub(super) fn trade_event(
        &self,
        event_type: TradeEventType,
        event_id: String,
        command: Option<&CommandHead>,
        pos: &Position,
        now_ms: i64,
    ) -> TradeEvent {
        TradeEvent {
            event_id,
            event_type,
            command_id: command.map(|c| c.event_id.clone()),
            user_id: self.user_id.clone(),
            mt5_account: self.mt5_account.clone(),
            trade_id: Some(pos.id.clone()),
            order_id: None,
            order_type: None,
            side: None,
            limit_price: None,
            stop_price: None,
            time_in_force: None,
            expires_at: None,
            oco_with: None,
            symbol: Some(pos.symbol),
            action: Some(pos.side),
            volume: Some(pos.volume),
            remaining_volume: None,
            open_price: Some(pos.open_price),
            execution_price: None,
            close_price: None,
            profit: None,
            commission: None,
            swap: None,
            stop_loss: pos.stop_loss,
            take_profit: pos.take_profit,
            trailing_stop_pips: pos.trailing_stop_pips,
            status: Some(TradeStatus::Success),
            reason: None,
            timestamp: now_ms,
            latency_ms: command.map(|c| now_ms.saturating_sub(c.timestamp).max(0)),
            metadata: command.and_then(|c| c.metadata.clone()),
            schema_version: SCHEMA_VERSION,
        }
    }

    /// The rules an order must meet whatever its type: a tradable symbol and a volume within
    /// the account's minimum, maximum and step.
    pub(super) fn check_order(&self, order: &Order) -> Result<(), RejectReason> {
        let c = &self.config;
        if c.allowed_symbols
            .as_ref()
            .is_some_and(|s| !s.contains(&order.symbol))
        {
            return Err(RejectReason::SymbolNotAllowed(order.symbol));
        }
        let volume = order.volume;
        if volume < c.min_volume {
            let min = c.min_volume;
            return Err(RejectReason::VolumeBelowMin { volume, min });
        }
        if volume > c.max_volume {
            let max = c.max_volume;
            return Err(RejectReason::VolumeAboveMax { volume, max });
        }
        if !volume
            .checked_rem(c.volume_step)
            .is_some_and(|r| r.is_zero())
        {
            let step = c.volume_step;
            return Err(RejectReason::VolumeOffStep { volume, step });
        }
        Ok(())
    }

    /// The position `order` opens at `price`, if the account can take it now: stops on the
    /// right side of the price (BUY `SL < price < TP`, SELL `TP < price < SL`), the
    /// open-position limit, the conversion paths, then free margin (the current free margin
    /// must cover the new position's margin).
    pub(super) fn fillable(
        &self,
        id: String,
        command_id: &str,
        order: &Order,
        trailing_stop_pips: Option<Decimal>,
        price: Decimal,
        now_ms: i64,
    ) -> Result<Position, RejectReason> {
        check_stops(order.side, price, order.stop_loss, order.take_profit)?;
        let c = &self.config;
        if self.positions.len() >= c.max_open_positions {
            let (open, max) = (self.positions.len(), c.max_open_positions);
            return Err(RejectReason::TooManyPositions { open, max });
        }
        let required = self.margin_of(order.symbol, order.volume)?;
        self.quotes
            .convert(Decimal::ZERO, order.symbol.quote(), &self.config.currency)?;
        let free = self.metrics()?.free_margin;
        if free < required {
            return Err(RejectReason::InsufficientMargin {
                required: round_cents(required),
                free: round_cents(free),
                currency: self.config.currency.clone(),
            });
        }
        let mut pos = Position {
            id,
            symbol: order.symbol,
            side: order.side,
            volume: order.volume,
            open_price: price,
            stop_loss: order.stop_loss,
            take_profit: order.take_profit,
            trailing_stop_pips,
            open_time: now_ms,
            command_id: Some(command_id.to_owned()),
            commission: c.costs.commission(order.volume),
            swap: Decimal::ZERO,
            swap_through: now_ms,
            strategy: None,
        };
        // A trailing stop without a stop loss starts its distance behind the fill.
        if pos.stop_loss.is_none() {
            if let Some(pips) = trailing_stop_pips {
                let distance = pips * order.symbol.pip();
                pos.stop_loss = Some(match order.side {
                    Side::Buy => price - distance,
                    Side::Sell => price + distance,
                });
                if pos.stop_loss.is_some_and(|sl| sl <= Decimal::ZERO) {
                    return Err(RejectReason::TrailingTooWide(pips));
                }
            }
        }
        Ok(pos)
    }

    /// Carries out an `OPEN_TRADE`: a market order fills at once (a BUY at `tick.ask`, a SELL
    /// at `tick.bid`); any other type rests as a pending order (`place`).
    /// Checks, in order: command shape, tick symbol, `check_order`, then
    /// `fillable` at the fill price.
    ///
    /// # Errors
    /// The first failed check as a [`RejectReason`].
    pub fn open(
        &mut self,
        command: &CommandHead,
        open: &OpenTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        if open.order_type != OrderType::Market {
            return self.place(command, open, tick, now_ms);
        }
        let event_id = format!("exec_{}", command.event_id);
        if let Some(mut done) = self.replay_trade(&event_id) {
            done.closes = self.replayed_closes(&command.event_id);
            return Ok(done);
        }
        self.expect_account(command)?;
        open.validate()?;
        let order = &open.order;
        expect_tick(order.symbol, tick)?;
        self.quotes.update(tick);
        self.check_order(order)?;
        let strategy = command
            .metadata
            .as_ref()
            .and_then(|m| m.strategy.as_deref());
        let opposite: Vec<Position> = strategy
            .map(|s| {
                self.strategy_positions(s, order.symbol)
                    .filter(|p| p.side != order.side)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if opposite.is_empty() {
            return self.fill_market(command, open, tick, Vec::new(), now_ms);
        }
        // A strategy is long or short, never both: its opposite positions close first, in
        // the same step; should the open then be refused, so are the closes.
        let before = self.clone();
        let result = self
            .close_all(command, &opposite, tick, now_ms)
            .and_then(|closes| self.fill_market(command, open, tick, closes, now_ms));
        if result.is_err() {
            *self = before;
        }
        result
    }

    /// Fills a checked market order at `tick` (after `closes`, already applied).
    fn fill_market(
        &mut self,
        command: &CommandHead,
        open: &OpenTrade,
        tick: &Tick,
        closes: Vec<TradeEvent>,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let price = entry_price(open.order.side, tick);
        let order = with_pip_exits(open, price)?;
        if self.nets(order.symbol) {
            let deal = Deal {
                id: format!("exec_{}", command.event_id),
                close_prefix: format!("cls_{}_", command.event_id),
                new_trade: trade_id(&command.event_id),
                command_id: &command.event_id,
                command: Some(command),
            };
            let before = self.clone();
            return match self.net(
                &deal,
                &order,
                open.trailing_stop_pips,
                price,
                now_ms,
                |_| {},
            ) {
                Ok((mut more, event)) => {
                    let mut all = closes;
                    all.append(&mut more);
                    Ok(Outcome {
                        closes: all,
                        ..Outcome::done(event)
                    })
                }
                Err(e) => {
                    *self = before;
                    Err(e)
                }
            };
        }
        let mut pos = self.fillable(
            trade_id(&command.event_id),
            &command.event_id,
            &order,
            open.trailing_stop_pips,
            price,
            now_ms,
        )?;
        pos.strategy = command.metadata.as_ref().and_then(|m| m.strategy.clone());
        let mut event = self.trade_event(
            TradeEventType::TradeExecuted,
            format!("exec_{}", command.event_id),
            Some(command),
            &pos,
            now_ms,
        );
        event.execution_price = Some(price);
        event.commission = Some(pos.commission).filter(|c| !c.is_zero());
        Ok(Outcome {
            closes,
            ..Outcome::done(self.commit(event)?)
        })
    }

    /// Whether a fill on `symbol` nets: the account is in netting mode and holds a position
    /// there.
    pub(super) fn nets(&self, symbol: Symbol) -> bool {
        self.config.position_mode == PositionMode::Netting
            && self.positions.values().any(|p| p.symbol == symbol)
    }

    /// A netting-mode deal of `order` at `price` against the symbol's positions, as MT5 does
    /// it: the order first reduces positions of the other side (oldest first: closed whole,
    /// the last one partly: `TRADE_CLOSED` / `TRADE_PARTIALLY_CLOSED` at `price`); what is
    /// left adds to the position of its own side (`TRADE_EXECUTED` naming that position,
    /// with the deal's `volume`, the new total as `remaining_volume`, the volume-weighted
    /// average `open_price`, and the order's stops where it gives them) or, with none, opens
    /// one. So a larger opposite order reverses the position. Every event is applied; the
    /// last one, the deal's outcome, has id `deal.id` and is passed through `finish` first.
    /// On an error some may be applied: the caller restores the account.
    pub(super) fn net(
        &mut self,
        deal: &Deal<'_>,
        order: &Order,
        trailing_stop_pips: Option<Decimal>,
        price: Decimal,
        now_ms: i64,
        finish: impl Fn(&mut TradeEvent),
    ) -> Result<(Vec<TradeEvent>, TradeEvent), RejectReason> {
        let mut held: Vec<Position> = self
            .positions
            .values()
            .filter(|p| p.symbol == order.symbol)
            .cloned()
            .collect();
        held.sort_by(|a, b| (a.open_time, &a.id).cmp(&(b.open_time, &b.id)));
        let mut left = order.volume;
        let mut events = Vec::new();
        let reason = || Some(format!("netted by a {} of {}", order.side, order.volume));
        for pos in held.iter().filter(|p| p.side != order.side) {
            if left.is_zero() {
                break;
            }
            let closing = left.min(pos.volume);
            left -= closing;
            let id = if left.is_zero() {
                deal.id.clone()
            } else {
                format!("{}{}", deal.close_prefix, pos.id)
            };
            let mut event = if closing == pos.volume {
                self.close_event(pos, price, id, deal.command, reason(), now_ms)?
            } else {
                let part = Position {
                    volume: closing,
                    swap: round_cents(pos.swap * closing / pos.volume),
                    ..pos.clone()
                };
                let mut e = self.close_event(&part, price, id, deal.command, reason(), now_ms)?;
                e.event_type = TradeEventType::TradePartiallyClosed;
                e.remaining_volume = Some(pos.volume - closing);
                e
            };
            event
                .command_id
                .get_or_insert_with(|| deal.command_id.to_owned());
            if left.is_zero() {
                finish(&mut event);
            }
            events.push(self.commit(event)?);
        }
        if !left.is_zero() {
            let rest = Order {
                volume: left,
                ..order.clone()
            };
            let mut event = match held.iter().find(|p| p.side == order.side) {
                Some(pos) => {
                    self.merge_event(deal, pos, &rest, trailing_stop_pips, price, now_ms)?
                }
                None => {
                    let pos = self.fillable(
                        deal.new_trade.clone(),
                        deal.command_id,
                        &rest,
                        trailing_stop_pips,
                        price,
                        now_ms,
                    )?;
                    let mut e = self.trade_event(
                        TradeEventType::TradeExecuted,
                        deal.id.clone(),
                        deal.command,
                        &pos,
                        now_ms,
                    );
                    e.execution_price = Some(price);
                    e.commission = Some(pos.commission).filter(|c| !c.is_zero());
                    e
                }
            };
            event
                .command_id
                .get_or_insert_with(|| deal.command_id.to_owned());
            finish(&mut event);
            events.push(self.commit(event)?);
        }
        let last = events.pop().expect("a deal makes at least one event");
        Ok((events, last))
    }

    /// The `TRADE_EXECUTED` that adds `order` (its volume, filled at `price`) to `pos`: the
    /// free margin must cover the added volume, and the stops (the order's where it gives
    /// them, else the position's) must sit on the right side of the price.
    fn merge_event(
        &self,
        deal: &Deal<'_>,
        pos: &Position,
        order: &Order,
        trailing_stop_pips: Option<Decimal>,
        price: Decimal,
        now_ms: i64,
    ) -> Result<TradeEvent, RejectReason> {
        let total = pos.volume + order.volume;
        let average = ((pos.open_price * pos.volume + price * order.volume) / total)
            .round_dp(AVERAGE_PRICE_DP)
            .normalize();
        let merged = Position {
            volume: total,
            open_price: average,
            stop_loss: order.stop_loss.or(pos.stop_loss),
            take_profit: order.take_profit.or(pos.take_profit),
            trailing_stop_pips: trailing_stop_pips.or(pos.trailing_stop_pips),
            ..pos.clone()
        };
        check_stops(pos.side, price, merged.stop_loss, merged.take_profit)?;
        let required = self.margin_of(order.symbol, order.volume)?;
        let free = self.metrics()?.free_margin;
        if free < required {
            return Err(RejectReason::InsufficientMargin {
                required: round_cents(required),
                free: round_cents(free),
                currency: self.config.currency.clone(),
            });
        }
        let commission = self.config.costs.commission(order.volume);
        let mut e = self.trade_event(
            TradeEventType::TradeExecuted,
            deal.id.clone(),
            deal.command,
            &merged,
            now_ms,
        );
        e.volume = Some(order.volume);
        e.remaining_volume = Some(total);
        e.execution_price = Some(price);
        e.commission = Some(commission).filter(|c| !c.is_zero());
        Ok(e)
    }

    /// The open positions `strategy` opened on `symbol`, by id.
    fn strategy_positions<'a>(
        &'a self,
        strategy: &'a str,
        symbol: Symbol,
    ) -> impl Iterator<Item = &'a Position> + 'a {
        self.positions
            .values()
            .filter(move |p| p.symbol == symbol && p.strategy.as_deref() == Some(strategy))
    }

    /// Closes `positions` for `command` at `tick` (`TRADE_CLOSED`, ids
    /// `cls_{command_id}_{trade_id}`), each applied. On an error some may be applied: the
    /// caller restores the account.
    fn close_all(
        &mut self,
        command: &CommandHead,
        positions: &[Position],
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Vec<TradeEvent>, RejectReason> {
        let mut closes = Vec::with_capacity(positions.len());
        for pos in positions {
            let event_id = format!("cls_{}_{}", command.event_id, pos.id);
            let event = self.close_event(
                pos,
                pos.exit_price(tick),
                event_id,
                Some(command),
                None,
                now_ms,
            )?;
            closes.push(self.commit(event)?);
        }
        Ok(closes)
    }

    /// The closes command `command_id` already made ([`PaperAccount::close_all`]), by id.
    fn replayed_closes(&self, command_id: &str) -> Vec<TradeEvent> {
        let prefix = format!("cls_{command_id}_");
        let mut closes: Vec<TradeEvent> = self
            .journal
            .iter()
            .filter(|(id, _)| id.starts_with(&prefix))
            .filter_map(|(_, e)| match e {
                AccountEvent::Trade(e) => Some(e.clone()),
                AccountEvent::Transaction(_) => None,
            })
            .collect();
        closes.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        closes
    }

    /// Closes every position `strategy` opened on `symbol` for a `CLOSE_POSITIONS`
    /// command, at `tick` (a BUY at the bid, a SELL at the ask): one `TRADE_CLOSED` each
    /// (the last is the outcome's `event`, the others its `closes`), all or none.
    ///
    /// # Errors
    /// [`RejectReason::NothingToClose`] when the strategy holds nothing there; command
    /// shape, tick symbol or valuation errors.
    pub fn close_positions(
        &mut self,
        command: &CommandHead,
        close: &ClosePositions,
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let mut closes = self.replayed_closes(&command.event_id);
        if let Some(event) = closes.pop() {
            return Ok(Outcome {
                closes,
                ..Outcome::replayed(event)
            });
        }
        self.expect_account(command)?;
        expect_tick(close.symbol, tick)?;
        self.quotes.update(tick);
        let held: Vec<Position> = self
            .strategy_positions(&close.strategy, close.symbol)
            .cloned()
            .collect();
        if held.is_empty() {
            return Err(RejectReason::NothingToClose {
                strategy: close.strategy.clone(),
                symbol: close.symbol,
            });
        }
        let before = self.clone();
        match self.close_all(command, &held, tick, now_ms) {
            Ok(mut closes) => {
                let event = closes.pop().expect("at least one position closed");
                Ok(Outcome {
                    closes,
                    ..Outcome::done(event)
                })
            }
            Err(e) => {
                *self = before;
                Err(e)
            }
        }
    }

    /// Closes the position named by a `CLOSE_TRADE` command (with a `volume` below the
    /// position's, that much of it: `TRADE_PARTIALLY_CLOSED` with the closed `volume`, the
    /// `remaining_volume` and the closed part's profit; the position keeps its id, price and
    /// stops): a BUY at `tick.bid`, a SELL at
    /// `tick.ask`. Profit is converted at the latest quotes and rounded to cents.
    ///
    /// # Errors
    /// [`RejectReason::UnknownPosition`] when it is not open (e.g. its stop loss closed it);
    /// command shape, tick symbol or valuation errors.
    pub fn close(
        &mut self,
        command: &CommandHead,
        close: &CloseTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let event_id = format!("cls_{}", command.event_id);
        if let Some(done) = self.replay_trade(&event_id) {
            return Ok(done);
        }
        let pos = self.commanded_position(command, &close.trade_id, tick)?;
        let price = pos.exit_price(tick);
        let event = match close.volume.filter(|v| *v != pos.volume) {
            None => self.close_event(&pos, price, event_id, Some(command), None, now_ms)?,
            Some(volume) => {
                let c = &self.config;
                if volume <= Decimal::ZERO {
                    return Err(suho_domain::CommandError::NonPositiveVolume(volume).into());
                }
                if volume > pos.volume {
                    return Err(RejectReason::CloseAboveVolume {
                        volume,
                        open: pos.volume,
                    });
                }
                if !volume
                    .checked_rem(c.volume_step)
                    .is_some_and(|r| r.is_zero())
                {
                    let step = c.volume_step;
                    return Err(RejectReason::VolumeOffStep { volume, step });
                }
                // The closed part is valued as a position of that volume, and realises its
                // share of the accrued swap.
                let part = Position {
                    volume,
                    swap: round_cents(pos.swap * volume / pos.volume),
                    ..pos.clone()
                };
                let mut event =
                    self.close_event(&part, price, event_id, Some(command), None, now_ms)?;
                event.event_type = TradeEventType::TradePartiallyClosed;
                event.remaining_volume = Some(pos.volume - volume);
                event
            }
        };
        Ok(Outcome::done(self.commit(event)?))
    }

    /// Changes the stops of the position named by a `MODIFY_TRADE` command; an absent stop
    /// keeps its value. The resulting stops must be on the right side of the position's
    /// current exit price on `tick` (BUY: `SL < bid < TP`; SELL: `TP < ask < SL`). The event
    /// carries the resulting stops.
    ///
    /// # Errors
    /// As [`PaperAccount::close`], plus the stop-side reasons.
    pub fn modify(
        &mut self,
        command: &CommandHead,
        modify: &ModifyTrade,
        tick: &Tick,
        now_ms: i64,
    ) -> Result<Outcome<TradeEvent>, RejectReason> {
        let event_id = format!("mod_{}", command.event_id);
        if let Some(done) = self.replay_trade(&event_id) {
            return Ok(done);
        }
        modify.validate()?;
        let mut pos = self.commanded_position(command, &modify.trade_id, tick)?;
        pos.stop_loss = modify.stop_loss.or(pos.stop_loss);
        pos.take_profit = modify.take_profit.or(pos.take_profit);
        check_stops(
            pos.side,
            pos.exit_price(tick),
            pos.stop_loss,
            pos.take_profit,
        )?;
        let event = self.trade_event(
            TradeEventType::TradeModified,
            event_id,
            Some(command),
            &pos,
            now_ms,
        );
        Ok(Outcome::done(self.commit(event)?))
    }

    fn commanded_position(
        &mut self,
        command: &CommandHead,
        id: &str,
        tick: &Tick,
    ) -> Result<Position, RejectReason> {
        self.expect_account(command)?;
        let pos = self
            .positions
            .get(id)
            .ok_or_else(|| RejectReason::UnknownPosition(id.to_owned()))?
            .clone();
        expect_tick(pos.symbol, tick)?;
        self.quotes.update(tick);
        Ok(pos)
    }

    fn close_event(
        &self,
        pos: &Position,
        price: Decimal,
        event_id: String,
        command: Option<&CommandHead>,
        reason: Option<String>,
        now_ms: i64,
    ) -> Result<TradeEvent, ValuationError> {
        let profit = round_cents(self.profit_at(pos, price)?);
        let commission = self.config.costs.commission(pos.volume);
        add(self.balance, profit + commission + pos.swap)?;
        let mut event =
            self.trade_event(TradeEventType::TradeClosed, event_id, command, pos, now_ms);
        event.execution_price = Some(price);
        event.close_price = Some(price);
        event.profit = Some(profit);
        event.commission = Some(commission).filter(|c| !c.is_zero());
        event.swap = Some(pos.swap).filter(|s| !s.is_zero());
        event.reason = reason;
        Ok(event)
    }

    /// Moves the trailing stops of the tick symbol's positions that `tick` carries at least a
    /// pip further in their favour ([`Position::trailed_stop`]): `TRADE_MODIFIED` with the
    /// new stop loss (id `trl_{trd}_{tick ms}`), applied and added to `out`.
    pub(super) fn trail(&mut self, tick: &Tick, now_ms: i64, out: &mut Vec<TradeEvent>) {
        let moves: Vec<(Position, Decimal)> = self
            .positions
            .values()
            .filter(|p| p.symbol == tick.symbol)
            .filter_map(|p| p.trailed_stop(tick).map(|sl| (p.clone(), sl)))
            .collect();
        for (mut pos, stop_loss) in moves {
            pos.stop_loss = Some(stop_loss);
            let mut event = self.trade_event(
                TradeEventType::TradeModified,
                format!("trl_{}_{}", pos.id, tick.timestamp),
                None,
                &pos,
                now_ms,
            );
            event.reason = Some(format!("trailing stop moved to {stop_loss}"));
            if self.apply(&AccountEvent::Trade(event.clone())).is_ok() {
                out.push(event);
            }
        }
    }

    /// Closes `pos` on the broker's initiative at `price` and applies the event.
    pub(super) fn auto_close(
        &mut self,
        pos: &Position,
        price: Decimal,
        kind: CloseKind,
        detail: &str,
        now_ms: i64,
    ) -> Result<TradeEvent, ValuationError> {
        let (prefix, reason) = match kind {
            CloseKind::StopLoss => ("sl", format!("stop loss {} hit", opt(pos.stop_loss))),
            CloseKind::TakeProfit => ("tp", format!("take profit {} hit", opt(pos.take_profit))),
            CloseKind::StopOut => ("so", format!("stop out: {detail}")),
        };
        let reason = format!("{reason}; closed at {price}");
        let event_id = format!("{prefix}_{}", pos.id);
        let event = self.close_event(pos, price, event_id, None, Some(reason), now_ms)?;
        // The event is complete and ours, and the balance sum was checked above, so only an
        // overflow could refuse it; never report a close that did not happen.
        match self.apply(&AccountEvent::Trade(event.clone())) {
            Ok(_) => Ok(event),
            Err(_) => Err(ValuationError::Overflow("recording a close")),
        }
    }
}

fn opt(v: Option<Decimal>) -> String {
    v.map(|d| d.to_string()).unwrap_or_default()
}
