//! Money in and out: deposits and withdrawals (at most the free margin), and the opening of
//! the account with its opening balance, each idempotent by its request id.

use rust_decimal::{Decimal, RoundingStrategy};
use suho_domain::money::is_positive_cents;
use suho_domain::{Transaction, TransactionType, SCHEMA_VERSION};

use super::{AccountEvent, Outcome, PaperAccount, MAX_BALANCE};
use crate::reject::RejectReason;

/// Which way a deposit or withdrawal moves money.
#[derive(Debug, Clone, Copy)]
enum Flow {
    /// A deposit.
    In,
    /// A withdrawal.
    Out,
}

impl PaperAccount {
    /// Credits `amount` (positive, whole cents). `request_id` is the idempotency key: the
    /// event id is `dep_{request_id}`, and a repeated id returns the original event.
    ///
    /// # Errors
    /// [`RejectReason::InvalidAmount`], [`RejectReason::BalanceLimit`].
    pub fn deposit(
        &mut self,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> Result<Outcome<Transaction>, RejectReason> {
        self.transact(Flow::In, request_id, amount, now_ms)
    }

    /// Debits `amount` (positive, whole cents, at most the free margin). Event id
    /// `wd_{request_id}`; a repeated id returns the original event.
    ///
    /// # Errors
    /// [`RejectReason::InvalidAmount`], [`RejectReason::WithdrawalAboveFreeMargin`], or a
    /// valuation error when open positions cannot be valued.
    pub fn withdraw(
        &mut self,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> Result<Outcome<Transaction>, RejectReason> {
        self.transact(Flow::Out, request_id, amount, now_ms)
    }

    /// Opens the account: `ACCOUNT_OPENED` with its balance (the opening balance, which it
    /// has held since it was created) as `amount` and `balance_after`. Event id
    /// `opn_{request_id}`; a repeated id returns the original event. An account that has
    /// already recorded an event (it was opened, or traded, before) is not opened again.
    ///
    /// # Errors
    /// [`RejectReason::AlreadyOpen`].
    pub fn open_account(
        &mut self,
        request_id: &str,
        now_ms: i64,
    ) -> Result<Outcome<Transaction>, RejectReason> {
        let event_id = format!("opn_{request_id}");
        if let Some(AccountEvent::Transaction(t)) = self.journal.get(&event_id) {
            return Ok(Outcome::replayed(t.clone()));
        }
        if !self.journal.is_empty() {
            return Err(RejectReason::AlreadyOpen);
        }
        let event = Transaction {
            event_id,
            event_type: TransactionType::AccountOpened,
            user_id: self.user_id.clone(),
            amount: self.balance,
            currency: self.config.currency.clone(),
            balance_after: Some(self.balance),
            reference: Some(request_id.to_owned()),
            timestamp: now_ms,
            schema_version: SCHEMA_VERSION,
        };
        Ok(Outcome::done(self.commit(event)?))
    }

    fn transact(
        &mut self,
        flow: Flow,
        request_id: &str,
        amount: Decimal,
        now_ms: i64,
    ) -> Result<Outcome<Transaction>, RejectReason> {
        let (kind, prefix) = match flow {
            Flow::In => (TransactionType::Deposit, "dep"),
            Flow::Out => (TransactionType::Withdrawal, "wd"),
        };
        let event_id = format!("{prefix}_{request_id}");
        if let Some(AccountEvent::Transaction(t)) = self.journal.get(&event_id) {
            return Ok(Outcome::replayed(t.clone()));
        }
        if !is_positive_cents(amount) {
            return Err(RejectReason::InvalidAmount(amount));
        }
        let balance_after = match flow {
            Flow::In => self
                .balance
                .checked_add(amount)
                .filter(|b| *b <= MAX_BALANCE)
                .ok_or(RejectReason::BalanceLimit(amount))?,
            Flow::Out => {
                // Whole cents of free margin, rounded down.
                let free = (self.metrics()?.free_margin)
                    .round_dp_with_strategy(2, RoundingStrategy::ToNegativeInfinity);
                if amount > free {
                    return Err(RejectReason::WithdrawalAboveFreeMargin {
                        amount,
                        free,
                        currency: self.config.currency.clone(),
                    });
                }
                self.balance - amount
            }
        };
        let event = Transaction {
            event_id,
            event_type: kind,
            user_id: self.user_id.clone(),
            amount,
            currency: self.config.currency.clone(),
            balance_after: Some(balance_after),
            reference: Some(request_id.to_owned()),
            timestamp: now_ms,
            schema_version: SCHEMA_VERSION,
        };
        Ok(Outcome::done(self.commit(event)?))
    }
}
