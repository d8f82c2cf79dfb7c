//! The paper broker's index of what a tick can act on, so that a tick visits the accounts it
//! can change instead of every account: the cost of a tick follows what it touches, not the
//! size of the book.
//!
//! Kept per account, and replaced whenever the account changes ([`Book::update`]):
//! - the symbols whose ticks move the value of its positions
//!   ([`PaperAccount::watched_symbols`]: each position's own and the pairs its profit and
//!   margin convert through), which covers stops, trailing stops, swaps at rollover and the
//!   margin level;
//! - each resting order by its [`Trigger`] level, per symbol, side and direction: a tick
//!   visits the accounts whose orders its entry price reaches (a range of a sorted map, not a
//!   scan);
//! - each order's expiry: a tick visits the accounts whose orders have expired by then.
//!
//! An account the book does not name has nothing a tick can change; it catches up with the
//! quotes when it is next used (see [`crate::broker::PaperBroker`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rust_decimal::Decimal;
use suho_domain::{Side, Symbol, Tick};

use crate::account::{entry_price, PaperAccount, Trigger};
use crate::broker::AccountKey;

/// Orders of one symbol, side and direction, by level.
type Levels = BTreeMap<Decimal, BTreeSet<(AccountKey, String)>>;

/// What one account has in the book (to take it out again).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Held {
    symbols: Vec<Symbol>,
    orders: Vec<(Symbol, Trigger, String)>,
    expiries: Vec<(i64, String)>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Book {
    /// Accounts with a position whose value a symbol's ticks move.
    positions: BTreeMap<Symbol, BTreeSet<AccountKey>>,
    /// Resting orders by (symbol, side, reached at or below), then level.
    levels: HashMap<(Symbol, Side, bool), Levels>,
    /// Resting orders with an expiry, by it.
    expiries: BTreeMap<i64, BTreeSet<(AccountKey, String)>>,
    held: HashMap<AccountKey, Held>,
}

impl Book {
    /// Forgets every account.
    pub(crate) fn clear(&mut self) {
        *self = Book::default();
    }

    /// Replaces what the book holds for `key` by what `account` holds now.
    pub(crate) fn update(&mut self, key: &AccountKey, account: &PaperAccount) {
        let mut now = Held {
            symbols: account.watched_symbols(),
            ..Held::default()
        };
        for o in account.orders() {
            if let Some(t) = o.trigger() {
                now.orders.push((o.order.symbol, t, o.id.clone()));
            }
            if let Some(at) = o.expires_at {
                now.expiries.push((at, o.id.clone()));
            }
        }
        if self.held.get(key) == Some(&now) {
            return;
        }
        self.remove(key);
        for s in &now.symbols {
            self.positions.entry(*s).or_default().insert(key.clone());
        }
        for (symbol, t, id) in &now.orders {
            self.levels
                .entry((*symbol, t.side, t.at_or_below))
                .or_default()
                .entry(t.level)
                .or_default()
                .insert((key.clone(), id.clone()));
        }
        for (at, id) in &now.expiries {
            self.expiries
                .entry(*at)
                .or_default()
                .insert((key.clone(), id.clone()));
        }
        if now != Held::default() {
            self.held.insert(key.clone(), now);
        }
    }

    /// Takes `key` out of the book.
    fn remove(&mut self, key: &AccountKey) {
        let Some(old) = self.held.remove(key) else {
            return;
        };
        for s in &old.symbols {
            if let Some(set) = self.positions.get_mut(s) {
                set.remove(key);
                if set.is_empty() {
                    self.positions.remove(s);
                }
            }
        }
        for (symbol, t, id) in old.orders {
            let slot = (symbol, t.side, t.at_or_below);
            if let Some(levels) = self.levels.get_mut(&slot) {
                if let Some(set) = levels.get_mut(&t.level) {
                    set.remove(&(key.clone(), id));
                    if set.is_empty() {
                        levels.remove(&t.level);
                    }
                }
                if levels.is_empty() {
                    self.levels.remove(&slot);
                }
            }
        }
        for (at, id) in old.expiries {
            if let Some(set) = self.expiries.get_mut(&at) {
                set.remove(&(key.clone(), id));
                if set.is_empty() {
                    self.expiries.remove(&at);
                }
            }
        }
    }

    /// The accounts `tick`, at `now_ms`, can change, in key order.
    pub(crate) fn touched_by(&self, tick: &Tick, now_ms: i64) -> BTreeSet<AccountKey> {
        let mut out = BTreeSet::new();
        if let Some(keys) = self.positions.get(&tick.symbol) {
            out.extend(keys.iter().cloned());
        }
        for side in [Side::Buy, Side::Sell] {
            for at_or_below in [true, false] {
                let Some(levels) = self.levels.get(&(tick.symbol, side, at_or_below)) else {
                    continue;
                };
                let price = entry_price(side, tick);
                let reached = if at_or_below {
                    levels.range(price..)
                } else {
                    levels.range(..=price)
                };
                for (_, orders) in reached {
                    out.extend(orders.iter().map(|(k, _)| k.clone()));
                }
            }
        }
        for (_, orders) in self.expiries.range(..=now_ms) {
            out.extend(orders.iter().map(|(k, _)| k.clone()));
        }
        out
    }

    /// How many accounts and resting orders the book holds.
    #[cfg(test)]
    pub(crate) fn size(&self) -> (usize, usize) {
        let orders = self
            .levels
            .values()
            .flat_map(BTreeMap::values)
            .map(BTreeSet::len)
            .sum();
        (self.held.len(), orders)
    }
}
