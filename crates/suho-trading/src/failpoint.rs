//! A failpoint for crash tests: `SUHO_FAILPOINT=<name>` makes the process abort (as a
//! `kill -9` would: no unwinding, no clean-up, nothing flushed) the first time the code
//! reaches the point named `<name>`. Without the variable this is one cached lookup.
//!
//! Points: `engine.before_commit` (a command executed and its outcome sent in the open
//! Kafka transaction, before the transaction and the offset commit).

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
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}
