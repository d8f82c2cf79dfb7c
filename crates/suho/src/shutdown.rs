//! Stopping, bounded whatever a library does.
//!
//! - [`on_signals`]: the first SIGINT, SIGTERM or SIGHUP (a closed terminal) cancels the
//!   run's token and arms the [`Watchdog`]; a second one fires the watchdog at once (exit
//!   status 130). The handlers are installed before anything is started, so a signal at any
//!   moment is a clean stop, never the default kill that would orphan the servers.
//! - [`Running`]: the names of the tasks and stop steps still under way, so a stop that
//!   takes too long can say what did not stop.
//! - [`Watchdog`]: once armed, if the process has not exited within [`STOP_DEADLINE`], it
//!   logs what is still running, stops the servers this process started (its children:
//!   the stack servers of `suho up`, a bench's throwaway servers; never servers it reused)
//!   with no clean shutdown (`suho_stack::kill_children`), and exits with status 1. It is a
//!   plain thread, so a blocked async worker or a library call that never returns cannot
//!   hold it up.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// From the first signal, how long a stop may take before the watchdog ends it. The clean
/// path fits well inside it: the services get 3 s ([`Application::run`](crate::Application::run)),
/// the servers [`suho_stack::STOP_GRACE`].
pub const STOP_DEADLINE: Duration = Duration::from_secs(8);

/// Exit status when the watchdog ends a stop that took too long.
pub const EXIT_STOP_TIMED_OUT: i32 = 1;
/// Exit status when a second signal ends the stop at once.
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// The tasks and steps still under way, by name (a name may be held several times).
#[derive(Debug, Clone, Default)]
pub struct Running(Arc<Mutex<BTreeMap<String, usize>>>);

/// Holds one entry of [`Running`] until dropped.
#[derive(Debug)]
pub struct Step {
    running: Running,
    name: String,
}

impl Running {
    /// Notes `name` as running until the returned [`Step`] is dropped.
    #[must_use]
    pub fn enter(&self, name: impl Into<String>) -> Step {
        let name = name.into();
        *self.lock().entry(name.clone()).or_default() += 1;
        Step {
            running: self.clone(),
            name,
        }
    }

    /// `fut`, noted as `name` while it runs (and until it is dropped).
    pub fn track<F: Future>(&self, name: &str, fut: F) -> impl Future<Output = F::Output> {
        let step = self.enter(name);
        async move {
            let out = fut.await;
            drop(step);
            out
        }
    }

    /// What is still running, as `name` or `name (xN)`.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(name, &n)| {
                if n > 1 {
                    format!("{name} (x{n})")
                } else {
                    name.clone()
                }
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        let mut map = self.running.lock();
        if let Some(n) = map.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.name);
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    what: String,
    running: Running,
    armed: std::sync::Once,
}

/// The last resort of a stop; see the module documentation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Watchdog(Arc<Inner>);

impl Watchdog {
    /// A watchdog for `what` (the command, as the user typed it: `suho up`).
    #[must_use]
    pub fn new(what: &str) -> Watchdog {
        Watchdog(Arc::new(Inner {
            what: what.to_string(),
            running: Running::default(),
            armed: std::sync::Once::new(),
        }))
    }

    /// What this process has under way; the watchdog names it when it fires.
    #[must_use]
    pub fn running(&self) -> &Running {
        &self.0.running
    }

    /// Starts the countdown (once; later calls do nothing): if the process is still here
    /// `deadline` from now, the watchdog fires.
    pub fn arm(&self, deadline: Duration) {
        self.0.armed.call_once(|| {
            let dog = self.clone();
            let spawned = std::thread::Builder::new()
                .name("suho-watchdog".into())
                .spawn(move || {
                    std::thread::sleep(deadline);
                    dog.fire(
                        &format!("did not stop within {}s", deadline.as_secs()),
                        EXIT_STOP_TIMED_OUT,
                    );
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start the shutdown watchdog");
            }
        });
    }

    /// Ends the process now: names what is still running, stops the servers it started
    /// (its child processes) with no clean shutdown, and exits with `code`.
    pub fn fire(&self, why: &str, code: i32) -> ! {
        let running = self.0.running.names();
        let still = if running.is_empty() {
            "nothing of its own".to_string()
        } else {
            running.join(", ")
        };
        tracing::error!(
            "{} {why}; still running: {still}; killing the processes it started",
            self.0.what
        );
        let left = suho_stack::kill_children();
        if !left.is_empty() {
            let shown: Vec<String> = left
                .iter()
                .map(|(pid, name)| format!("{name} (pid {pid})"))
                .collect();
            tracing::error!("still running after SIGKILL: {}", shown.join(", "));
        }
        suho_telemetry::output::flush(Duration::from_millis(500));
        std::process::exit(code)
    }
}

/// Installs the SIGINT, SIGTERM and SIGHUP handlers now and follows them: the first signal
/// cancels `token` and arms `watchdog` with [`STOP_DEADLINE`]; a second one fires it at
/// once. Must be called inside a Tokio runtime.
///
/// # Errors
/// A handler could not be installed.
pub fn on_signals(
    token: CancellationToken,
    watchdog: Watchdog,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        let mut first = true;
        loop {
            let name = tokio::select! {
                Some(()) = interrupt.recv() => "SIGINT",
                Some(()) = terminate.recv() => "SIGTERM",
                Some(()) = hangup.recv() => "SIGHUP",
                else => return,
            };
            if first {
                first = false;
                tracing::info!(
                    signal = name,
                    "stopping (a second signal stops at once; at most {}s)",
                    STOP_DEADLINE.as_secs()
                );
                token.cancel();
                watchdog.arm(STOP_DEADLINE);
            } else {
                watchdog.fire(
                    &format!("was stopped by a second signal ({name})"),
                    EXIT_SECOND_SIGNAL,
                );
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_names_what_is_under_way_until_it_ends() {
        let running = Running::default();
        let a = running.enter("trading-engine");
        let b = running.enter("heartbeat");
        let c = running.enter("heartbeat");
        assert_eq!(running.names(), vec!["heartbeat (x2)", "trading-engine"]);
        drop(b);
        drop(a);
        assert_eq!(running.names(), vec!["heartbeat"]);
        drop(c);
        assert!(running.names().is_empty());
    }

    #[tokio::test]
    async fn a_tracked_future_is_named_while_it_runs() {
        let running = Running::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(running.track("audit", async move {
            let _ = rx.await;
        }));
        tokio::task::yield_now().await;
        assert_eq!(running.names(), vec!["audit"]);
        let _ = tx.send(());
        task.await.expect("the task ends");
        assert!(running.names().is_empty());
    }
}
