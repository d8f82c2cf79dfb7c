//! Margin: what the account is worth at the latest quotes (equity, margin, free margin,
//! margin level), its `ACCOUNT_STATUS`, and what a tick does to it (stops hit, margin calls,
//! stop-outs).

use rust_decimal::Decimal;
use suho_domain::money::{round_cents, CONTRACT_SIZE};
use suho_domain::{
    AccountStatus, AccountStatusType, RiskAlert, RiskAlertType, Symbol, Tick, TradeEvent,
    SCHEMA_VERSION,
};

use super::positions::{CloseKind, Position};
use super::{add, AccountMetrics, PaperAccount, TickOutcome};
use crate::quotes::ValuationError;

impl PaperAccount {
    /// Charges every position its swap for each rollover that passed since the last one it
    /// was charged for (`SWAP_CHARGED`, its timestamp the rollover's, id
    /// `swp_{trd}_{rollover ms}`): one night's worth at the rollovers ending Monday, Tuesday,
    /// Thursday and Friday, three at Wednesday's (the weekend's settlement), none at the
    /// weekend's. Accrued on the position (in equity), realised into the balance when it
    /// closes.
    pub(super) fn charge_swaps(&mut self, now_ms: i64, out: &mut Vec<TradeEvent>) {
        use suho_domain::session::{rollover_after, rollover_weekday};
        if self.config.costs.swaps.is_empty() {
            return;
        }
        let mut due: Vec<(Position, i64, Decimal)> = Vec::new();
        for pos in self.positions.values() {
            let mut at = rollover_after(pos.swap_through);
            while at <= now_ms {
                let nights = match rollover_weekday(at) {
                    3 => Decimal::from(3),
                    1 | 2 | 4 | 5 => Decimal::ONE,
                    _ => Decimal::ZERO,
                };
                let swap = suho_domain::money::round_cents(
                    self.config.costs.swap(pos.symbol, pos.side, pos.volume) * nights,
                );
                if !swap.is_zero() {
                    due.push((pos.clone(), at, swap));
                }
                at = rollover_after(at);
            }
        }
        for (pos, at, swap) in due {
            let mut event = self.trade_event(
                suho_domain::TradeEventType::SwapCharged,
                format!("swp_{}_{at}", pos.id),
                None,
                &pos,
                at,
            );
            event.swap = Some(swap);
            event.reason = Some(format!(
                "swap at the rollover of {at}{}",
                if rollover_weekday(at) == 3 {
                    " (three nights, Wednesday)"
                } else {
                    ""
                }
            ));
            if self
                .apply(&super::AccountEvent::Trade(event.clone()))
                .is_ok()
            {
                out.push(event);
            }
        }
    }

    /// The symbols whose ticks move this account's equity or margin: each position's own,
    /// and the pairs its profit (in the quote currency, [`PaperAccount::profit_at`]) and its
    /// margin (in the base currency, [`PaperAccount::margin_of`]) convert through.
    #[must_use]
    pub fn watched_symbols(&self) -> Vec<Symbol> {
        let ccy = self.config.currency.as_str();
        let mut out: Vec<Symbol> = self
            .positions
            .values()
            .flat_map(|p| {
                let s = p.symbol;
                std::iter::once(s)
                    .chain(crate::quotes::pairs(s.quote(), ccy))
                    .chain(crate::quotes::pairs(s.base(), ccy))
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    pub(super) fn margin_of(
        &self,
        symbol: Symbol,
        volume: Decimal,
    ) -> Result<Decimal, ValuationError> {
        let base = volume
            .checked_mul(CONTRACT_SIZE)
            .and_then(|n| n.checked_div(Decimal::from(self.config.leverage.get())))
            .ok_or(ValuationError::Overflow("computing margin"))?;
        self.quotes
            .convert(base, symbol.base(), &self.config.currency)
    }

    pub(super) fn profit_at(
        &self,
        pos: &Position,
        price: Decimal,
    ) -> Result<Decimal, ValuationError> {
        let raw = pos.quote_profit(price)?;
        self.quotes
            .convert(raw, pos.symbol.quote(), &self.config.currency)
    }

    pub(super) fn floating(&self, pos: &Position) -> Result<(Decimal, Decimal), ValuationError> {
        let tick = self
            .quotes
            .get(pos.symbol)
            .ok_or(ValuationError::NoQuote(pos.symbol))?;
        let price = pos.exit_price(tick);
        Ok((price, self.profit_at(pos, price)?))
    }

    /// Exact balance, equity, margin, free margin and margin level at the latest quotes.
    ///
    /// # Errors
    /// [`ValuationError`] when a position's symbol or a conversion rate is not quoted.
    pub fn metrics(&self) -> Result<AccountMetrics, ValuationError> {
        let (mut equity, mut margin) = (self.balance, Decimal::ZERO);
        for pos in self.positions.values() {
            // Accrued swap is the position's until it closes: in equity, not yet in balance.
            equity = add(equity, self.floating(pos)?.1 + pos.swap)?;
            margin = add(margin, self.margin_of(pos.symbol, pos.volume)?)?;
        }
        let free_margin = equity
            .checked_sub(margin)
            .ok_or(ValuationError::Overflow("summing the account"))?;
        let margin_level = if self.positions.is_empty() || margin.is_zero() {
            None
        } else {
            let level = equity
                .checked_mul(Decimal::ONE_HUNDRED)
                .and_then(|e| e.checked_div(margin));
            Some(level.ok_or(ValuationError::Overflow("computing the margin level"))?)
        };
        Ok(AccountMetrics {
            balance: self.balance,
            equity,
            margin,
            free_margin,
            margin_level,
        })
    }

    /// The open positions valued at the latest quotes, by id.
    ///
    /// # Errors
    /// A position's symbol or a conversion rate is not quoted.
    pub fn position_views(&self) -> Result<Vec<suho_domain::PositionView>, ValuationError> {
        self.positions
            .values()
            .map(|p| {
                let (price, profit) = self.floating(p)?;
                Ok(suho_domain::PositionView {
                    trade_id: p.id.clone(),
                    symbol: p.symbol,
                    side: p.side,
                    volume: p.volume,
                    open_price: p.open_price,
                    current_price: price,
                    stop_loss: p.stop_loss,
                    take_profit: p.take_profit,
                    trailing_stop_pips: p.trailing_stop_pips,
                    profit: round_cents(profit),
                    swap: p.swap,
                    commission: p.commission,
                    opened_at: p.open_time,
                })
            })
            .collect()
    }

    /// The pending orders, oldest first.
    #[must_use]
    pub fn order_views(&self) -> Vec<suho_domain::OrderView> {
        let mut orders: Vec<_> = self.orders().collect();
        orders.sort_by(|a, b| (a.placed_at, &a.id).cmp(&(b.placed_at, &b.id)));
        orders
            .into_iter()
            .map(|o| suho_domain::OrderView {
                order_id: o.id.clone(),
                symbol: o.order.symbol,
                order_type: o.order_type,
                side: o.order.side,
                volume: o.order.volume,
                limit_price: o.limit_price,
                stop_price: o.stop_price,
                stop_loss: o.order.stop_loss,
                take_profit: o.order.take_profit,
                time_in_force: o.time_in_force,
                expires_at: o.expires_at,
                status: suho_domain::TradeStatus::Pending,
                placed_at: o.placed_at,
            })
            .collect()
    }

    /// The `ACCOUNT_STATUS` snapshot: money rounded to cents, margin level to 2 dp.
    ///
    /// # Errors
    /// As [`PaperAccount::metrics`].
    pub fn status(&self, now_ms: i64) -> Result<AccountStatus, ValuationError> {
        let m = self.metrics()?;
        Ok(AccountStatus {
            event_id: format!("sts_{}_{}_{now_ms}", self.user_id, self.account_tag()),
            event_type: AccountStatusType::AccountStatus,
            user_id: self.user_id.clone(),
            mt5_account: self.mt5_account.clone(),
            balance: m.balance,
            equity: round_cents(m.equity),
            margin: round_cents(m.margin),
            free_margin: round_cents(m.free_margin),
            margin_level: m.margin_level.map(round_cents),
            currency: self.config.currency.clone(),
            open_positions: u32::try_from(self.positions.len()).unwrap_or(u32::MAX),
            position_mode: self.config.position_mode,
            positions: self.position_views()?,
            orders: self.order_views(),
            timestamp: now_ms,
            schema_version: SCHEMA_VERSION,
        })
    }

    /// Records a tick, then: works the pending orders (`work_orders`: expiries
    /// at `now_ms`, then the tick symbol's triggers and fills); closes the tick symbol's
    /// positions whose stop loss or take profit
    /// it reaches (BUY: `bid <= SL` / `bid >= TP`, SELL: `ask >= SL` / `ask <= TP`), **filled
    /// at the tick's exit price, not at the stop price**, so a gap past the stop realises the
    /// gap; then checks margin on the latest quotes. At or below `margin_call_level` one
    /// `MARGIN_CALL` is raised per crossing (re-armed once the level is above it again, or no
    /// positions remain). At or below `stop_out_level` the position with the biggest floating
    /// loss is closed, the level recomputed, and so on until it is above the stop-out level or
    /// nothing is open; one `STOP_OUT` alert lists the closed trade ids. A tick older than the
    /// one held for its symbol is ignored entirely.
    pub fn on_tick(&mut self, tick: &Tick, now_ms: i64) -> TickOutcome {
        let mut out = TickOutcome::default();
        if !self.quotes.update(tick) {
            return out;
        }
        out.trades = self.work_orders(tick, now_ms);
        self.charge_swaps(now_ms, &mut out.trades);
        self.trail(tick, now_ms, &mut out.trades);
        let hits: Vec<(Position, CloseKind)> = self
            .positions
            .values()
            .filter(|p| p.symbol == tick.symbol)
            .filter_map(|p| p.stop_hit(tick).map(|k| (p.clone(), k)))
            .collect();
        for (pos, kind) in hits {
            match self.auto_close(&pos, pos.exit_price(tick), kind, "", now_ms) {
                Ok(event) => out.trades.push(event),
                Err(e) => out.errors.push(e),
            }
        }
        if let Err(e) = self.check_margin(tick.timestamp, now_ms, &mut out) {
            out.errors.push(e);
        }
        out
    }

    fn check_margin(
        &mut self,
        tick_ms: i64,
        now_ms: i64,
        out: &mut TickOutcome,
    ) -> Result<(), ValuationError> {
        let call = self.config.margin_call_level;
        let Some(level) = self.metrics()?.margin_level else {
            self.margin_call_armed = true;
            return Ok(());
        };
        if level <= call && self.margin_call_armed {
            self.margin_call_armed = false;
            let message = format!(
                "margin level {}% is at or below {call}%",
                round_cents(level)
            );
            let id = format!(
                "margincall_{}_{}_{tick_ms}",
                self.user_id,
                self.account_tag()
            );
            out.alerts.push(self.alert(
                RiskAlertType::MarginCall,
                id,
                level,
                message,
                vec![],
                now_ms,
            ));
        }
        let mut closed = Vec::new();
        let after = self.stop_out(level, now_ms, out, &mut closed);
        if let Some(first) = closed.first() {
            let message = format!(
                "stop out at margin level {}%: closed {}",
                round_cents(level),
                closed.join(", ")
            );
            let id = format!("stopout_{first}");
            out.alerts
                .push(self.alert(RiskAlertType::StopOut, id, level, message, closed, now_ms));
        }
        if after?.is_none_or(|l| l > call) {
            self.margin_call_armed = true;
        }
        Ok(())
    }

    /// Closes the biggest loser while the level is at or below the stop-out level; the ids
    /// closed go to `closed`. Returns the final level.
    fn stop_out(
        &mut self,
        level: Decimal,
        now_ms: i64,
        out: &mut TickOutcome,
        closed: &mut Vec<String>,
    ) -> Result<Option<Decimal>, ValuationError> {
        let stop_out = self.config.stop_out_level;
        let mut current = Some(level);
        while let Some(level) = current.filter(|l| *l <= stop_out) {
            let mut worst: Option<(&Position, Decimal, Decimal)> = None;
            for pos in self.positions.values() {
                let (price, profit) = self.floating(pos)?;
                if worst.is_none_or(|w| profit < w.2) {
                    worst = Some((pos, price, profit));
                }
            }
            let Some((pos, price)) = worst.map(|(p, price, _)| (p.clone(), price)) else {
                break;
            };
            let detail = format!("margin level {}% <= {stop_out}%", round_cents(level));
            out.trades
                .push(self.auto_close(&pos, price, CloseKind::StopOut, &detail, now_ms)?);
            closed.push(pos.id);
            current = self.metrics()?.margin_level;
        }
        Ok(current)
    }

    fn alert(
        &self,
        event_type: RiskAlertType,
        event_id: String,
        level: Decimal,
        message: String,
        trade_ids: Vec<String>,
        now_ms: i64,
    ) -> RiskAlert {
        RiskAlert {
            event_id,
            event_type,
            user_id: self.user_id.clone(),
            mt5_account: self.mt5_account.clone(),
            margin_level: Some(round_cents(level)),
            message,
            trade_ids,
            timestamp: now_ms,
            schema_version: SCHEMA_VERSION,
        }
    }
}
