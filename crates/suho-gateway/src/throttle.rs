//! Login throttling: failed logins are counted over a sliding window per account (the
//! e-mail address), per (account, client IP) and per client IP; past a limit, further
//! attempts are refused with 429 and `Retry-After` until the oldest failure leaves the
//! window. A successful login clears its account's failures.
//!
//! The limits are shaped so that one client's failures lock out no one else: guessing one
//! account from one IP stops after `per_account_ip`; guessing it from many IPs after
//! `per_account` (the account's owner, too, then waits); one IP guessing many accounts
//! (an office or a reverse proxy holds many users behind one address) only meets the
//! looser `per_ip` ceiling. The counts live in this gateway process (a restart forgets
//! them; several gateways would each count their own share).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits of the login throttle.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    /// Failures allowed per account from one IP within the window.
    pub per_account_ip: usize,
    /// Failures allowed per account from all IPs together within the window.
    pub per_account: usize,
    /// Failures allowed per client IP over all accounts within the window.
    pub per_ip: usize,
    /// The window.
    pub window: Duration,
}

impl Default for ThrottleLimits {
    /// In 15 minutes: 5 failures per account and IP, 20 per account, 2,000 per IP.
    fn default() -> Self {
        Self {
            per_account_ip: 5,
            per_account: 20,
            per_ip: 2_000,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// Failed-login counts.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    limits: ThrottleLimits,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    by_account: HashMap<String, VecDeque<Instant>>,
    by_account_ip: HashMap<(String, IpAddr), VecDeque<Instant>>,
    by_ip: HashMap<IpAddr, VecDeque<Instant>>,
}

/// Keys kept per map before the empty ones are swept (a flood of made-up addresses).
const SWEEP_ABOVE: usize = 100_000;

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

/// How long until a full bucket has room again.
fn wait(
    times: &VecDeque<Instant>,
    limit: usize,
    now: Instant,
    window: Duration,
) -> Option<Duration> {
    if times.len() < limit {
        return None;
    }
    let oldest = times.get(times.len() - limit)?;
    Some(
        window
            .saturating_sub(now.duration_since(*oldest))
            .max(Duration::from_secs(1)),
    )
}

/// The wait `key`'s bucket of `map` imposes now, if any.
fn bucket_wait<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, VecDeque<Instant>>,
    key: &K,
    limit: usize,
    now: Instant,
    window: Duration,
) -> Option<Duration> {
    let times = map.get_mut(key)?;
    prune(times, now, window);
    wait(times, limit, now, window)
}

/// Notes a failure at `now` in `key`'s bucket, sweeping empty buckets when the map is large.
fn note<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, VecDeque<Instant>>,
    key: K,
    now: Instant,
    window: Duration,
) {
    if map.len() > SWEEP_ABOVE {
        map.retain(|_, t| {
            prune(t, now, window);
            !t.is_empty()
        });
    }
    map.entry(key).or_default().push_back(now);
}

fn account(email: &str) -> String {
    email.trim().to_lowercase()
}

impl LoginThrottle {
    /// A throttle with `limits`.
    #[must_use]
    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            failures: Mutex::new(Failures::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Some(wait)` when a login for `email` from `ip` must be refused now.
    pub fn check(&self, email: &str, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let ThrottleLimits {
            per_account_ip,
            per_account,
            per_ip,
            window,
        } = self.limits;
        let account = account(email);
        let mut f = self.lock();
        let pair = (account, ip);
        let by_pair = bucket_wait(&mut f.by_account_ip, &pair, per_account_ip, now, window);
        let by_account = bucket_wait(&mut f.by_account, &pair.0, per_account, now, window);
        let by_ip = bucket_wait(&mut f.by_ip, &ip, per_ip, now, window);
        by_pair.max(by_account).max(by_ip)
    }

    /// Counts a failed login.
    pub fn failed(&self, email: &str, ip: IpAddr) {
        let now = Instant::now();
        let window = self.limits.window;
        let account = account(email);
        let mut f = self.lock();
        note(&mut f.by_account, account.clone(), now, window);
        note(&mut f.by_account_ip, (account, ip), now, window);
        note(&mut f.by_ip, ip, now, window);
    }

    /// A successful login clears its account's failures (from every IP; the IP's own count
    /// over all accounts stays).
    pub fn succeeded(&self, email: &str) {
        let account = account(email);
        let mut f = self.lock();
        f.by_account.remove(&account);
        f.by_account_ip.retain(|(a, _), _| *a != account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ThrottleLimits {
        ThrottleLimits {
            per_account_ip: 3,
            per_account: 5,
            per_ip: 50,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn one_account_from_one_ip_is_throttled_and_a_success_clears_it() {
        let t = LoginThrottle::new(limits());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check("A@x.io", ip).is_none());
            t.failed("a@x.io", ip);
        }
        let wait = t.check("a@X.io", ip).expect("throttled by account and IP");
        assert!(wait <= Duration::from_secs(60) && wait >= Duration::from_secs(1));
        // The same account from another IP still has room, until the account's limit.
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(t.check("a@x.io", other).is_none());
        t.failed("a@x.io", other);
        t.failed("a@x.io", other);
        assert!(
            t.check("a@x.io", "10.0.0.3".parse().unwrap()).is_some(),
            "throttled by account"
        );
        t.succeeded("a@x.io");
        assert!(t.check("a@x.io", ip).is_none());
    }

    #[test]
    fn failures_for_other_accounts_from_one_ip_lock_out_no_one_below_the_ip_ceiling() {
        let t = LoginThrottle::new(ThrottleLimits::default());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..1_000 {
            let email = format!("user{}@x.io", i % 200);
            t.failed(&email, ip);
        }
        assert!(
            t.check("third@x.io", ip).is_none(),
            "a third account logs in"
        );
        // The ceiling is there all the same.
        for i in 0..1_000 {
            t.failed(&format!("more{i}@x.io"), ip);
        }
        assert!(
            t.check("third@x.io", ip).is_some(),
            "2,000 failures from one IP"
        );
        assert!(t
            .check("third@x.io", "192.0.2.8".parse().unwrap())
            .is_none());
    }
}
