//! Prometheus metrics of the embedded backend's consumer groups: persisting
//! group state, dead letters and their copies, and state clamped after a
//! power loss. One [`GroupMetrics`] per process, no per-group labels (label
//! cardinality stays bounded however many groups exist); the server
//! registers it with [`GroupMetrics::register`] and passes it in
//! `EmbeddedOptions::metrics`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Metric names, as registered (prometheus-client appends `_total` to
/// counters).
pub mod names {
    /// Group-state persists committed (each one transaction for every group
    /// that changed, shared by the sync acks waiting on it).
    pub const FLUSHES: &str = "herald_group_flushes";
    /// Group-state persists that failed (retried on the next round).
    pub const FLUSH_FAILURES: &str = "herald_group_flush_failures";
    /// 1 while group state is failing to persist, else 0.
    pub const FLUSH_FAILING: &str = "herald_group_flush_failing";
    /// Dead letters recorded.
    pub const DEAD_LETTERS: &str = "herald_group_dead_letters";
    /// Dead-letter copies published to dead-letter topics.
    pub const DEAD_LETTER_COPIES: &str = "herald_group_dead_letter_copies";
    /// Attempts to publish dead-letter copies that failed (retried).
    pub const DEAD_LETTER_COPY_FAILURES: &str = "herald_group_dead_letter_copy_failures";
    /// Group partitions whose persisted position was past the log's end at
    /// open (the log lost its tail) and was clamped to it.
    pub const STATE_CLAMPED: &str = "herald_group_state_clamped";
}

/// The groups' metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone, Debug, Default)]
pub struct GroupMetrics {
    pub(crate) flushes: Counter,
    pub(crate) flush_failures: Counter,
    pub(crate) flush_failing: Gauge,
    pub(crate) dead_letters: Counter,
    pub(crate) dead_letter_copies: Counter,
    pub(crate) dead_letter_copy_failures: Counter,
    pub(crate) state_clamped: Counter,
}

impl GroupMetrics {
    /// Creates the metrics, shared behind an `Arc`.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Persists committed so far.
    pub fn flushes_total(&self) -> u64 {
        self.flushes.get()
    }

    /// Failed persists so far.
    pub fn flush_failures_total(&self) -> u64 {
        self.flush_failures.get()
    }

    /// Dead-letter copies that failed to publish so far.
    pub fn dead_letter_copy_failures_total(&self) -> u64 {
        self.dead_letter_copy_failures.get()
    }

    /// Group partitions clamped to their log's end so far.
    pub fn state_clamped_total(&self) -> u64 {
        self.state_clamped.get()
    }

    /// Registers every metric with `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            names::FLUSHES,
            "Group-state persists committed (one transaction each)",
            self.flushes.clone(),
        );
        registry.register(
            names::FLUSH_FAILURES,
            "Group-state persists that failed and will be retried",
            self.flush_failures.clone(),
        );
        registry.register(
            names::FLUSH_FAILING,
            "1 while group state is failing to persist",
            self.flush_failing.clone(),
        );
        registry.register(
            names::DEAD_LETTERS,
            "Dead letters recorded",
            self.dead_letters.clone(),
        );
        registry.register(
            names::DEAD_LETTER_COPIES,
            "Dead-letter copies published to dead-letter topics",
            self.dead_letter_copies.clone(),
        );
        registry.register(
            names::DEAD_LETTER_COPY_FAILURES,
            "Attempts to publish dead-letter copies that failed and will be retried",
            self.dead_letter_copy_failures.clone(),
        );
        registry.register(
            names::STATE_CLAMPED,
            "Group partitions clamped to their log's end at open (the log lost its tail)",
            self.state_clamped.clone(),
        );
    }
}
