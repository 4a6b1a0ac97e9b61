//! A `metrics` recorder for unit tests: it records each handle registration (`name{k=v,...}`),
//! sums counter increments and keeps histogram values, so a test can check both what was
//! measured and how often a handle was looked up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

/// Install with `metrics::set_default_local_recorder(&recorder)` on a current-thread runtime, so
/// every task the test spawns records into it.
#[derive(Default)]
pub(crate) struct TestRecorder {
    registered: Arc<Mutex<Vec<String>>>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    histograms: Arc<Mutex<Vec<(String, f64)>>>,
}

impl TestRecorder {
    /// Every registration so far, in order, as `name{k=v,...}`.
    pub(crate) fn registered(&self) -> Vec<String> {
        lock(&self.registered).clone()
    }

    /// The sum of a counter's increments, by `name{k=v,...}`.
    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.counts).clone()
    }

    /// Every histogram value recorded, in order, with its `name{k=v,...}`.
    pub(crate) fn histograms(&self) -> Vec<(String, f64)> {
        lock(&self.histograms).clone()
    }

    fn register(&self, key: &Key) -> String {
        let text = key_text(key);
        lock(&self.registered).push(text.clone());
        text
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn key_text(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

struct Summed {
    key: String,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl metrics::CounterFn for Summed {
    fn increment(&self, value: u64) {
        *lock(&self.counts).entry(self.key.clone()).or_default() += value;
    }
    fn absolute(&self, _: u64) {}
}

struct Kept {
    key: String,
    values: Arc<Mutex<Vec<(String, f64)>>>,
}

impl metrics::HistogramFn for Kept {
    fn record(&self, value: f64) {
        lock(&self.values).push((self.key.clone(), value));
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let key = self.register(key);
        Counter::from_arc(Arc::new(Summed {
            key,
            counts: self.counts.clone(),
        }))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.register(key);
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let key = self.register(key);
        Histogram::from_arc(Arc::new(Kept {
            key,
            values: self.histograms.clone(),
        }))
    }
}
