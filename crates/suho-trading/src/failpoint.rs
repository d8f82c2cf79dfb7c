//! Failpoints for crash and shutdown tests: `SUHO_FAILPOINT=<name>` makes the process abort
//! (as a `kill -9` would: no unwinding, no clean-up, nothing flushed) at [`hit`], or the
//! calling thread block for good at [`stall`] (as a library call that never returns would),
//! the first time the code reaches the point named `<name>`. Without the variable this is
//! one cached lookup.
//!
//! Points: `engine.before_commit` (a command executed and its outcome sent in the open
//! Kafka transaction, before the transaction and the offset commit); a journaling engine's
//! `engine.after_journal` (a batch with a command journaled and confirmed, nothing of it
//! published) and `engine.before_offsets` (published, its offsets not committed);
//! `up.stop_servers` (a
//! stall: `suho up` about to stop the servers it started, so its watchdog must).

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("SUHO_FAILPOINT")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .as_deref()
}

/// Aborts the process if the failpoint `name` is armed.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        // Not `eprintln!`, which panics when stderr is closed.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("failpoint {name}: aborting the process\n").as_bytes(),
        );
        std::process::abort();
    }
}

/// Blocks the calling thread for good if the failpoint `name` is armed.
pub fn stall(name: &str) {
    if armed() == Some(name) {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("failpoint {name}: stalling this thread\n").as_bytes(),
        );
        loop {
            std::thread::park();
        }
    }
}
