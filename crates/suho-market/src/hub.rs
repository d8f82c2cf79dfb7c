//! One tick subscription per process: the [`TickHub`] subscribes to `market.*.tick` once,
//! parses each tick once, and hands the parsed tick to every service of the process that
//! listens to ticks (the price service, the analytics service, the market alerts).
//!
//! Each service used to hold its own subscription, so the NATS server sent every tick to the
//! process once per service and each service parsed it again. The hub halves that work with
//! two listeners and thirds it with three, which is what lets the services keep up with the
//! raw NATS rate (`suho bench market`).
//!
//! Each listener has its own bounded queue ([`TickHub::QUEUE`] ticks, as deep as an async-nats
//! subscription's), filled in batches of whatever arrived together. A listener that falls so far behind that its queue is full misses ticks,
//! as it would have missed them with its own subscription; the others go on. Every tick a
//! listener misses is counted ([`TICKS_DROPPED_METRIC`], label `listener`, and
//! the counter [`TickHub::listen`] returns) and logged, never silent. A tick the hub cannot parse is logged and
//! counted in [`MALFORMED_TICKS_METRIC`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use suho_domain::{subject, Tick};
use suho_messaging::MarketBus;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::MarketServiceError;

/// Counter of ticks a listener missed because its queue was full, label `listener`.
pub const TICKS_DROPPED_METRIC: &str = "market_hub_ticks_dropped_total";
/// Counter of tick messages that did not parse as a tick.
pub const MALFORMED_TICKS_METRIC: &str = "market_malformed_ticks_total";

/// A tick as received: parsed once, with the message it came in (its subject and headers).
#[derive(Debug)]
pub struct ReceivedTick {
    /// The parsed tick.
    pub tick: Tick,
    /// The NATS message it was parsed from.
    pub message: async_nats::Message,
}

/// Ticks handed to a listener in one queue operation.
type Batch = Arc<Vec<Arc<ReceivedTick>>>;

/// The ticks of one listener, in the order the hub received them.
///
/// The hub hands ticks over in batches (whatever arrived together, up to
/// [`TickHub::MAX_BATCH`]), so a busy listener pays one queue operation and one wake-up per
/// batch instead of per tick; [`TickReceiver::recv`] still yields them one by one.
#[derive(Debug)]
pub struct TickReceiver {
    queue: mpsc::UnboundedReceiver<Batch>,
    /// Ticks handed to this listener and not yet taken, shared with the hub, which bounds it.
    queued: Arc<AtomicUsize>,
    batch: Batch,
    next: usize,
}

impl TickReceiver {
    /// The next tick; `None` once the hub has stopped and every tick was taken.
    pub async fn recv(&mut self) -> Option<Arc<ReceivedTick>> {
        loop {
            if let Some(tick) = self.batch.get(self.next) {
                self.next += 1;
                self.queued.fetch_sub(1, Ordering::Relaxed);
                return Some(Arc::clone(tick));
            }
            self.batch = self.queue.recv().await?;
            self.next = 0;
        }
    }
}

struct Listener {
    name: &'static str,
    queue: mpsc::UnboundedSender<Batch>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl Listener {
    /// Hands `batch` over, or counts it as missed when the listener's queue has no room;
    /// `false` once the listener has gone.
    fn offer(&self, batch: &Batch) -> bool {
        let len = batch.len();
        if self.queued.load(Ordering::Relaxed) + len > TickHub::QUEUE {
            let missed = self.dropped.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
            metrics::counter!(TICKS_DROPPED_METRIC, "listener" => self.name).increment(len as u64);
            // The first miss, then about one line per 10,000: a lagging listener must not
            // also flood the log.
            if missed <= len as u64 || missed % 10_000 < len as u64 {
                tracing::warn!(
                    listener = self.name,
                    missed,
                    "a tick listener is behind; its queue is full and it misses ticks"
                );
            }
            return true;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        if self.queue.send(Arc::clone(batch)).is_err() {
            tracing::debug!(listener = self.name, "tick listener gone");
            return false;
        }
        true
    }
}

/// Subscribes to every tick once and fans the parsed ticks out to its listeners.
pub struct TickHub {
    listeners: Vec<Listener>,
}

impl std::fmt::Debug for TickHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TickHub")
            .field(
                "listeners",
                &self.listeners.iter().map(|l| l.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for TickHub {
    fn default() -> Self {
        Self::new()
    }
}

impl TickHub {
    /// Ticks a listener may have waiting before it misses some.
    pub const QUEUE: usize = 65_536;
    /// Most ticks handed over at once.
    pub const MAX_BATCH: usize = 512;

    /// A hub with no listeners yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            listeners: Vec::new(),
        }
    }

    /// Adds a listener named `name` (in logs and metrics); returns its ticks and the counter
    /// of the ticks it missed.
    pub fn listen(&mut self, name: &'static str) -> (TickReceiver, Arc<AtomicU64>) {
        let (queue, ticks) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        self.listeners.push(Listener {
            name,
            queue,
            queued: Arc::clone(&queued),
            dropped: Arc::clone(&dropped),
        });
        let receiver = TickReceiver {
            queue: ticks,
            queued,
            batch: Arc::new(Vec::new()),
            next: 0,
        };
        (receiver, dropped)
    }

    /// Subscribes to `market.*.tick` and delivers until `shutdown`, the subscription ends, or
    /// every listener has gone.
    ///
    /// # Errors
    /// The subscription could not be made.
    pub async fn run(
        mut self,
        bus: MarketBus,
        shutdown: CancellationToken,
    ) -> Result<(), MarketServiceError> {
        let mut messages = bus.subscribe(subject::all_ticks(bus.prefix())).await?;
        tracing::debug!(hub = ?self, "tick hub subscribed");
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = messages.next() => message,
            };
            let Some(first) = first else {
                tracing::warn!("tick subscription ended; tick hub stopping");
                return Ok(());
            };
            // Whatever else has already arrived goes in the same batch.
            let mut batch = Vec::with_capacity(16);
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match serde_json::from_slice::<Tick>(&message.payload) {
                    Ok(tick) => batch.push(Arc::new(ReceivedTick { tick, message })),
                    Err(e) => {
                        metrics::counter!(MALFORMED_TICKS_METRIC).increment(1);
                        tracing::warn!(subject = %message.subject, error = %e, "ignoring a malformed tick");
                    }
                }
                if batch.len() < Self::MAX_BATCH {
                    next = messages.next().now_or_never().flatten();
                }
            }
            if batch.is_empty() {
                continue;
            }
            let batch = Arc::new(batch);
            self.listeners.retain(|listener| listener.offer(&batch));
            if self.listeners.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Runs `service` on the ticks of a hub of its own (one subscription, one listener) until the
/// service returns; the standalone form of a service that usually shares the process's hub.
///
/// # Errors
/// The hub's subscription failed, or the service's own error.
pub async fn with_own_hub<F, E>(
    bus: &MarketBus,
    name: &'static str,
    shutdown: &CancellationToken,
    service: impl FnOnce(TickReceiver) -> F,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: From<MarketServiceError>,
{
    let mut hub = TickHub::new();
    let (ticks, _) = hub.listen(name);
    let hub_stop = shutdown.child_token();
    let hub = hub.run(bus.clone(), hub_stop.clone());
    let service = service(ticks);
    tokio::pin!(hub, service);
    tokio::select! {
        ran = &mut service => {
            hub_stop.cancel();
            ran
        }
        hubbed = &mut hub => {
            // The hub ended: its subscription failed (an error), or it ended or was shut
            // down, which closes the service's queue; the service then stops on its own.
            hubbed?;
            service.await
        }
    }
}
