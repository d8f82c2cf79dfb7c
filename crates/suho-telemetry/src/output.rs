//! Output that never stops the process: a write to stdout or stderr neither panics nor blocks
//! because the reader has gone (a closed pipe gives `EPIPE`, a closed terminal `EIO`).
//!
//! - Log lines ([`Stderr`], the writer `init_tracing` installs, and [`stderr_line`]) go to
//!   a bounded queue that one thread of their own writes to stderr. A logging call only
//!   queues: it returns at once even when the terminal has stopped reading, and a line that
//!   cannot be written, or finds the queue full, is dropped and counted ([`dropped`]).
//!   `tracing-subscriber`'s own fallback (an `eprintln!`, which panics on a closed stderr) is
//!   turned off, so a log call inside a librdkafka callback cannot unwind through it.
//! - Report lines ([`stdout_line`]) are written to stdout at once, in order, and a write
//!   error (the reader went away) is ignored.
//! - [`flush`] waits, for a bounded time, until the queued log lines are written: the
//!   binary calls it before it exits.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Log lines waiting for the writer thread, at most.
const QUEUE_LINES: usize = 16_384;

/// Lines queued and not yet written (or dropped) by the writer thread.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Lines dropped: queue full, or stderr refused them.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The queue into the writer thread, started on first use.
fn queue() -> Option<&'static SyncSender<Vec<u8>>> {
    static QUEUE: OnceLock<Option<SyncSender<Vec<u8>>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
            std::thread::Builder::new()
                .name("suho-stderr".into())
                .spawn(move || {
                    let stderr = std::io::stderr();
                    for line in rx {
                        if stderr.lock().write_all(&line).is_err() {
                            DROPPED.fetch_add(1, Ordering::Relaxed);
                        }
                        PENDING.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Queues `bytes` for stderr; drops them (counted) when the queue is full.
fn enqueue(bytes: Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    let Some(tx) = queue() else {
        // No writer thread could be started: write here, ignoring a gone reader.
        if std::io::stderr().lock().write_all(&bytes).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        return;
    };
    PENDING.fetch_add(1, Ordering::SeqCst);
    match tx.try_send(bytes) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            PENDING.fetch_sub(1, Ordering::SeqCst);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Queues one line for stderr (a newline is added), as log lines are: never blocks, never
/// panics.
pub fn stderr_line(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    enqueue(bytes);
}

/// Writes `text` and a newline to stdout now; a reader that has gone is ignored (the line is
/// lost, the process goes on).
pub fn stdout_line(text: &str) {
    stdout_text(&format!("{text}\n"));
}

/// Writes `text` to stdout as is (no newline added), like [`stdout_line`].
pub fn stdout_text(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Waits until every queued log line has been written or dropped, at most `within`.
/// Returns whether the queue emptied.
pub fn flush(within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while PENDING.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Log lines dropped so far (the queue was full, or stderr refused them).
#[must_use]
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The `tracing` writer of [`crate::init_tracing`]: each event becomes one queued line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

/// One event's bytes, queued when the formatter drops it.
#[derive(Debug, Default)]
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        enqueue(std::mem::take(&mut self.0));
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_queued_and_flushed() {
        stderr_line("suho-telemetry output test line");
        {
            let mut line = Line::default();
            line.write_all(b"an event\n").expect("a Line takes bytes");
        }
        assert!(flush(Duration::from_secs(5)), "the queue drains");
    }
}
