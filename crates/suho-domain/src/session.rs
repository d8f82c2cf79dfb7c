//! The FX trading day. It ends at the rollover, 17:00 New York time: 21:00 UTC while New York
//! keeps daylight saving time (from the second Sunday of March to the first Sunday of
//! November, the US rule since 2007), 22:00 UTC otherwise. DAY orders expire there.

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day number.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Day of the week of a day number, 0 = Sunday.
fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

/// The day number of the `n`th Sunday (1-based) of month `m` of year `y`.
fn nth_sunday(y: i64, m: i64, n: i64) -> i64 {
    let first = days_from_civil(y, m, 1);
    first + (7 - weekday(first)) % 7 + 7 * (n - 1)
}

/// Whether New York keeps daylight saving time on the New York date `days`.
fn new_york_dst(days: i64) -> bool {
    let (y, _, _) = civil_from_days(days);
    (nth_sunday(y, 3, 2)..nth_sunday(y, 11, 1)).contains(&days)
}

/// The rollover (17:00 New York) that ends the New York date `days`, epoch ms.
fn rollover_of(days: i64) -> i64 {
    let utc_hour = if new_york_dst(days) { 21 } else { 22 };
    days * DAY_MS + utc_hour * HOUR_MS
}

/// The first rollover strictly after `ms`, epoch ms: when an order placed DAY at `ms` expires.
#[must_use]
pub fn rollover_after(ms: i64) -> i64 {
    let today = ms.div_euclid(DAY_MS);
    (today - 1..=today + 1)
        .map(rollover_of)
        .find(|r| *r > ms)
        .unwrap_or_else(|| rollover_of(today + 1))
}

/// The day of the week of the New York date a rollover ends, 0 = Sunday ... 6 = Saturday.
#[must_use]
pub fn rollover_weekday(rollover_ms: i64) -> u8 {
    // A rollover is at 21:00 or 22:00 UTC, on the UTC date of the New York date it ends.
    u8::try_from(weekday(rollover_ms.div_euclid(DAY_MS))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: i64, d: i64, h: i64, min: i64) -> i64 {
        days_from_civil(y, m, d) * DAY_MS + h * HOUR_MS + min * 60_000
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-1, 0, 19_000, 20_000, 20_424] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(weekday(0), 4, "1970-01-01 was a Thursday");
    }

    #[test]
    fn the_day_ends_at_five_in_new_york() {
        // Summer (EDT, UTC-4): 17:00 New York is 21:00 UTC.
        assert_eq!(
            rollover_after(at(2026, 7, 15, 12, 0)),
            at(2026, 7, 15, 21, 0)
        );
        assert_eq!(
            rollover_after(at(2026, 7, 15, 21, 0)),
            at(2026, 7, 16, 21, 0)
        );
        // Winter (EST, UTC-5): 22:00 UTC; just after 21:00 UTC it is still 16:xx there.
        assert_eq!(
            rollover_after(at(2026, 12, 4, 21, 30)),
            at(2026, 12, 4, 22, 0)
        );
        assert_eq!(
            rollover_after(at(2026, 12, 4, 23, 0)),
            at(2026, 12, 5, 22, 0)
        );
        // 2026: DST from Sunday 8 March to Sunday 1 November.
        assert_eq!(rollover_after(at(2026, 3, 7, 12, 0)), at(2026, 3, 7, 22, 0));
        assert_eq!(rollover_after(at(2026, 3, 8, 12, 0)), at(2026, 3, 8, 21, 0));
        assert_eq!(
            rollover_after(at(2026, 10, 31, 12, 0)),
            at(2026, 10, 31, 21, 0)
        );
        assert_eq!(
            rollover_after(at(2026, 11, 1, 12, 0)),
            at(2026, 11, 1, 22, 0)
        );
    }
}
