//! What the soak's actors record: counters, latency histograms per sample
//! window, and every error, by kind and message. Nothing is retried
//! silently: the clients run without the SDK's retry policy, and the SDK's
//! own reports of what it recovered from (a consume call reopened, a
//! refused settle) are counted through a `tracing` layer.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tracing::field::{Field, Visit};

use crate::workloads::{Latency, histogram};

/// The counters, in the order they are reported.
pub const COUNTERS: &[&str] = &[
    "published",
    "queue_delivered",
    "queue_redelivered",
    "queue_acked",
    "queue_nacked",
    "queue_rejected",
    "keyed_delivered",
    "keyed_redelivered",
    "keyed_acked",
    "keyed_nacked",
    "keyed_rejected",
    "redriven",
    "appends",
    "jobs_submitted",
    "jobs_completed",
    "jobs_failed",
    "sse_sessions",
    "sse_events",
    "errors",
];

/// The latencies, in µs: publish ack (from the scheduled send time),
/// publish → first delivery per group and per SSE subscriber, stream
/// append, job submit → completed, and the disk probe's `pwrite` +
/// `fdatasync` beside the server (`mix::DiskProbe`).
pub const LATENCIES: &[&str] = &[
    "publish",
    "queue_e2e",
    "keyed_e2e",
    "sse_e2e",
    "append",
    "job",
    "disk_sync",
];

/// Distinct error messages kept; more are counted as `(other)`.
const MAX_ERROR_KINDS: usize = 200;
/// Characters of an error message kept.
const MAX_ERROR_CHARS: usize = 240;

/// Shared by every actor of a soak.
#[derive(Debug)]
pub struct Stats {
    /// The time base of the `sentns` stamp on published events.
    pub clock: Instant,
    counters: BTreeMap<&'static str, AtomicU64>,
    /// The current window's histograms.
    window: BTreeMap<&'static str, Mutex<Histogram<u64>>>,
    /// (what failed, message) → count.
    errors: Mutex<BTreeMap<(String, String), u64>>,
    /// How late the publish schedule's last send was, µs.
    behind_us: AtomicU64,
}

impl Stats {
    pub fn new() -> Result<Self> {
        let window = LATENCIES
            .iter()
            .map(|name| Ok((*name, Mutex::new(histogram()?))))
            .collect::<Result<_>>()?;
        Ok(Self {
            clock: Instant::now(),
            counters: COUNTERS
                .iter()
                .map(|name| (*name, AtomicU64::new(0)))
                .collect(),
            window,
            errors: Mutex::new(BTreeMap::new()),
            behind_us: AtomicU64::new(0),
        })
    }

    /// Adds `count` to counter `name` (one of [`COUNTERS`]).
    pub fn add(&self, name: &str, count: u64) {
        if let Some(counter) = self.counters.get(name) {
            counter.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Records `micros` in latency `name` (one of [`LATENCIES`]).
    pub fn record(&self, name: &str, micros: u64) {
        if let Some(Ok(mut hist)) = self.window.get(name).map(Mutex::lock) {
            hist.saturating_record(micros.max(1));
        }
    }

    /// Counts a failure of `what` (an actor: `publish`, `queue`, `sse`…).
    pub fn error(&self, what: &str, error: &dyn fmt::Display) {
        self.add("errors", 1);
        let message: String = error.to_string().chars().take(MAX_ERROR_CHARS).collect();
        if let Ok(mut errors) = self.errors.lock() {
            let key = (what.to_owned(), message);
            if errors.len() >= MAX_ERROR_KINDS && !errors.contains_key(&key) {
                *errors
                    .entry((what.to_owned(), "(other)".to_owned()))
                    .or_default() += 1;
            } else {
                *errors.entry(key).or_default() += 1;
            }
        }
    }

    /// The publish schedule's last send went out `micros` late.
    pub fn set_behind(&self, micros: u64) {
        self.behind_us.store(micros, Ordering::Relaxed);
    }

    pub fn behind_us(&self) -> u64 {
        self.behind_us.load(Ordering::Relaxed)
    }

    /// Every counter now.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.counters
            .iter()
            .map(|(name, counter)| (*name, counter.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn count(&self, name: &str) -> u64 {
        self.counters
            .get(name)
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    /// Ends the current window: its histograms, fresh ones in their place.
    pub fn take_window(&self) -> Result<BTreeMap<&'static str, Histogram<u64>>> {
        let mut taken = BTreeMap::new();
        for (name, hist) in &self.window {
            let mut hist = hist
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned histogram"))?;
            taken.insert(*name, std::mem::replace(&mut *hist, histogram()?));
        }
        Ok(taken)
    }

    /// The errors as JSON, most frequent first.
    pub fn errors_json(&self) -> Value {
        let Ok(errors) = self.errors.lock() else {
            return json!([]);
        };
        let mut list: Vec<_> = errors.iter().collect();
        list.sort_by(|a, b| b.1.cmp(a.1));
        Value::Array(
            list.into_iter()
                .map(|((what, message), count)| json!({"what": what, "message": message, "count": count}))
                .collect(),
        )
    }

    /// Nanoseconds since [`Stats::clock`]: the stamp a published event
    /// carries in its `sentns` extension.
    pub fn now_ns(&self) -> u64 {
        crate::workloads::nanos(self.clock.elapsed())
    }

    /// µs from the stamp `sent_ns` until now.
    pub fn since_stamp(&self, sent_ns: u64) -> u64 {
        self.now_ns().saturating_sub(sent_ns) / 1000
    }
}

/// A window's (or the run's) percentiles of each latency, as JSON.
pub fn latencies_json(hists: &BTreeMap<&'static str, Histogram<u64>>) -> Value {
    Value::Object(
        hists
            .iter()
            .map(|(name, hist)| ((*name).to_owned(), Latency::from_histogram(hist).to_json()))
            .collect(),
    )
}

/// A `tracing` layer that counts what the SDK reports at DEBUG and above
/// (a call retried, a stream reopened, a settle refused) as errors of
/// `sdk`: the SDK recovers from them quietly, a soak must not.
pub struct SdkEvents(pub std::sync::Arc<Stats>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SdkEvents {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut text = Fields(String::new());
        event.record(&mut text);
        let what = format!("sdk {}", event.metadata().level());
        self.0.error(&what, &text.0);
    }
}

/// An event's fields as `message; name=value …`.
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push_str("; ");
        }
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        } else {
            self.0.push_str(&format!("{}={value:?}", field.name()));
        }
    }
}
