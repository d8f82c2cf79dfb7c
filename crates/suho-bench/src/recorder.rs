//! The platform's own timings, read by the benches: a process-wide `metrics` recorder that
//! keeps the histograms the benches report (the bridge's batch time, the engine's per-tick
//! cost) in HdrHistograms of nanoseconds and drops every other metric.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use hdrhistogram::Histogram;

use crate::trading::{new_histogram, MAX_LATENCY_NS};

/// The histograms kept, by metric name.
const KEPT: [&str; 2] = [
    suho_bridge::BATCH_SECONDS_METRIC,
    suho_trading::TICK_SECONDS_METRIC,
];

type Kept = HashMap<&'static str, Arc<Mutex<Histogram<u64>>>>;

/// The histogram metric `name` (one of [`KEPT`]) lands in, through the recorder installed on
/// first use; `None` when another recorder was installed first (then that figure is not
/// reported) or `name` is not kept.
pub(crate) fn histogram(name: &str) -> Option<&'static Mutex<Histogram<u64>>> {
    static KEEPS: OnceLock<Option<Kept>> = OnceLock::new();
    KEEPS
        .get_or_init(|| {
            let mut kept = Kept::new();
            for name in KEPT {
                kept.insert(name, Arc::new(Mutex::new(new_histogram().ok()?)));
            }
            metrics::set_global_recorder(Keeper(kept.clone())).ok()?;
            Some(kept)
        })
        .as_ref()?
        .get(name)
        .map(|h| &**h)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A `metrics` recorder that keeps the histograms of [`KEPT`] and drops the rest.
struct Keeper(Kept);

struct Sink(Arc<Mutex<Histogram<u64>>>);

impl metrics::HistogramFn for Sink {
    fn record(&self, seconds: f64) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ns = (seconds * 1e9) as u64;
        lock(&self.0).saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }
}

impl metrics::Recorder for Keeper {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        match self.0.get(key.name()) {
            Some(h) => metrics::Histogram::from_arc(Arc::new(Sink(Arc::clone(h)))),
            None => metrics::Histogram::noop(),
        }
    }
}
