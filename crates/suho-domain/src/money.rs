//! Money and lots: the rules every crate shares, in one place.
//!
//! Money (balances, deposits, profits) is exact and in whole cents of the account currency;
//! a computed amount is rounded to cents half away from zero (MT5's rule), never truncated.
//! Volumes are lots of [`CONTRACT_SIZE`] units of the base currency, on the [`LOT_STEP`].

use rust_decimal::{Decimal, RoundingStrategy};

/// Decimal places of an amount of money.
pub const CENT_DIGITS: u32 = 2;

/// Units of the base currency in one lot (a standard FX lot).
pub const CONTRACT_SIZE: Decimal = Decimal::from_parts(100_000, 0, 0, false, 0);

/// Smallest volume step, and smallest order, in lots.
pub const LOT_STEP: Decimal = Decimal::from_parts(1, 0, 0, false, 2);

/// Largest order, in lots (and the largest any user may set as their maximum).
pub const MAX_ORDER_VOLUME: Decimal = Decimal::from_parts(100, 0, 0, false, 0);

/// Whether `amount` has no digits below the cent.
#[must_use]
pub fn is_whole_cents(amount: Decimal) -> bool {
    amount.round_dp(CENT_DIGITS) == amount
}

/// Whether `amount` is positive and in whole cents (a deposit, a withdrawal).
#[must_use]
pub fn is_positive_cents(amount: Decimal) -> bool {
    amount > Decimal::ZERO && is_whole_cents(amount)
}

/// `amount` rounded to whole cents, half away from zero; never `-0.00`.
#[must_use]
pub fn round_cents(amount: Decimal) -> Decimal {
    let cents = amount.round_dp_with_strategy(CENT_DIGITS, RoundingStrategy::MidpointAwayFromZero);
    if cents.is_zero() {
        cents.abs()
    } else {
        cents
    }
}

/// Whether `volume` is a whole number of [`LOT_STEP`]s.
#[must_use]
pub fn on_lot_step(volume: Decimal) -> bool {
    volume.checked_rem(LOT_STEP).is_some_and(|r| r.is_zero())
}

/// The largest volume on the lot step that is at most `volume` (`None` below one step).
#[must_use]
pub fn floor_to_lot_step(volume: Decimal) -> Option<Decimal> {
    if volume < LOT_STEP {
        return None;
    }
    let stepped = (volume - volume % LOT_STEP).normalize();
    (stepped >= LOT_STEP).then_some(stepped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    #[test]
    fn cents() {
        assert!(is_whole_cents(d("10.10")) && !is_whole_cents(d("10.101")));
        assert!(is_positive_cents(d("0.01")) && !is_positive_cents(d("0")));
        assert_eq!(round_cents(d("1.005")), d("1.01"));
        assert_eq!(round_cents(d("-1.005")), d("-1.01"));
        assert_eq!(round_cents(d("-0.004")).to_string(), "0.00");
        assert_eq!(round_cents(d("0.005")), d("0.01"));
        assert_eq!(round_cents(d("-0.005")), d("-0.01"));
        assert_eq!(round_cents(d("12.344999")), d("12.34"));
        assert_eq!(round_cents(d("-13.3333333")), d("-13.33"));
        assert_eq!(round_cents(d("2.675")), d("2.68"));
    }

    #[test]
    fn lots() {
        assert!(on_lot_step(d("0.03")) && !on_lot_step(d("0.035")));
        assert_eq!(floor_to_lot_step(d("0.037")), Some(d("0.03")));
        assert_eq!(floor_to_lot_step(d("0.009")), None);
        assert_eq!(CONTRACT_SIZE, d("100000"));
    }
}
