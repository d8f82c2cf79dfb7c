//! Login throttling: failed logins are counted per e-mail address and per client IP over a
//! sliding window; past the limit, further attempts are refused with 429 and `Retry-After`
//! until the oldest failure leaves the window. A successful login clears its address's
//! failures. The counts live in this gateway process (a restart forgets them; several
//! gateways would each count their own share).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits of the login throttle.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    /// Failures allowed per address within the window.
    pub per_email: usize,
    /// Failures allowed per client IP within the window.
    pub per_ip: usize,
    /// The window.
    pub window: Duration,
}

impl Default for ThrottleLimits {
    /// 5 failures per address and 20 per IP in 15 minutes.
    fn default() -> Self {
        Self {
            per_email: 5,
            per_ip: 20,
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
    by_email: HashMap<String, VecDeque<Instant>>,
    by_ip: HashMap<IpAddr, VecDeque<Instant>>,
}

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
        let w = self.limits.window;
        let mut f = self.lock();
        let email = email.trim().to_lowercase();
        let by_email = f.by_email.get_mut(&email).map(|t| {
            prune(t, now, w);
            wait(t, self.limits.per_email, now, w)
        });
        let by_ip = f.by_ip.get_mut(&ip).map(|t| {
            prune(t, now, w);
            wait(t, self.limits.per_ip, now, w)
        });
        by_email.flatten().max(by_ip.flatten())
    }

    /// Counts a failed login.
    pub fn failed(&self, email: &str, ip: IpAddr) {
        let now = Instant::now();
        let mut f = self.lock();
        // Bound the memory a flood of made-up addresses can take.
        if f.by_email.len() > 100_000 {
            let w = self.limits.window;
            f.by_email.retain(|_, t| {
                prune(t, now, w);
                !t.is_empty()
            });
        }
        f.by_email
            .entry(email.trim().to_lowercase())
            .or_default()
            .push_back(now);
        f.by_ip.entry(ip).or_default().push_back(now);
    }

    /// A successful login clears the address's failures.
    pub fn succeeded(&self, email: &str) {
        self.lock().by_email.remove(&email.trim().to_lowercase());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_email_and_per_ip_and_success_clears_the_email() {
        let t = LoginThrottle::new(ThrottleLimits {
            per_email: 3,
            per_ip: 5,
            window: Duration::from_secs(60),
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check("A@x.io", ip).is_none());
            t.failed("a@x.io", ip);
        }
        let wait = t.check("a@X.io", ip).expect("throttled by address");
        assert!(wait <= Duration::from_secs(60) && wait >= Duration::from_secs(1));
        // Another address from the same IP still has room, until the IP's limit.
        assert!(t.check("b@x.io", ip).is_none());
        t.failed("b@x.io", ip);
        t.failed("c@x.io", ip);
        assert!(t.check("d@x.io", ip).is_some(), "throttled by IP");
        let other_ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(t.check("d@x.io", other_ip).is_none());
        t.succeeded("a@x.io");
        assert!(t.check("a@x.io", other_ip).is_none());
    }
}
