//! Prometheus metrics of the log engine.
//!
//! One [`LogMetrics`] is shared by every partition of a process (no per-partition
//! labels: label cardinality stays bounded however many topics exist). The
//! server registers it once with [`LogMetrics::register`].

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Metric names, as exposed before the counter suffix (prometheus-client
/// appends `_total` to counters). A name with a unit ends in it here
/// (`_bytes`); prometheus-client appends the unit itself, so
/// [`LogMetrics::register`] registers it without the suffix — registering the
/// whole name gave `herald_log_appended_bytes_bytes_total`. Latencies are
/// the exception: their names have no unit and the exposition adds `_seconds`.
pub mod names {
    /// Latency of an append, from the writer taking it to its acknowledgement.
    pub const APPEND_LATENCY: &str = "herald_log_append_latency";
    /// Latency of one `fdatasync` of a segment.
    pub const FSYNC_LATENCY: &str = "herald_log_fsync_latency";
    /// Records appended.
    pub const APPENDED_RECORDS: &str = "herald_log_appended_records";
    /// Bytes appended (encoded batches).
    pub const APPENDED_BYTES: &str = "herald_log_appended_bytes";
    /// Group-commit rounds (one write, at most one fsync each).
    pub const COMMIT_ROUNDS: &str = "herald_log_commit_rounds";
    /// Appends written on the caller's thread (an idle writer, no fsync per
    /// round); also counted as rounds.
    pub const INLINE_APPENDS: &str = "herald_log_inline_appends";
    /// Batches found corrupt (checksum or framing) when read or recovered.
    pub const CORRUPT_BATCHES: &str = "herald_log_corrupt_batches";
    /// Bytes cut off the tail of a segment by recovery.
    pub const RECOVERY_TRUNCATED_BYTES: &str = "herald_log_recovery_truncated_bytes";
    /// Segments removed by retention.
    pub const SEGMENTS_DELETED: &str = "herald_log_segments_deleted";
    /// Records whose contents a compaction erased.
    pub const ERASED_RECORDS: &str = "herald_log_erased_records";
    /// Writes or fsyncs that failed and put a log in its failed state.
    pub const IO_FAILURES: &str = "herald_log_io_failures";
    /// Failed logs the writer's probe recovered.
    pub const RECOVERIES: &str = "herald_log_recoveries";
    /// Logs in their failed state now (refusing appends).
    pub const FAILED_LOGS: &str = "herald_log_failed_logs";
}

/// `name` without its unit `suffix`, which prometheus-client appends again
/// on exposition (OpenMetrics wants a metric with a unit to end in it, once).
fn without_unit_suffix<'a>(name: &'a str, suffix: &str) -> &'a str {
    name.strip_suffix(suffix).unwrap_or(name)
}

/// Latency buckets: 10 µs to ~5 s, doubling. An fsync on a virtio disk takes
/// 0.2-4 ms, an in-memory append a few µs; both land mid-range.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_01, 2.0, 20)
}

/// The log engine's metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct LogMetrics {
    pub(crate) append_latency: Histogram,
    pub(crate) fsync_latency: Histogram,
    pub(crate) appended_records: Counter,
    pub(crate) appended_bytes: Counter,
    pub(crate) commit_rounds: Counter,
    pub(crate) inline_appends: Counter,
    pub(crate) corrupt_batches: Counter,
    pub(crate) recovery_truncated_bytes: Counter,
    pub(crate) segments_deleted: Counter,
    pub(crate) erased_records: Counter,
    pub(crate) io_failures: Counter,
    pub(crate) recoveries: Counter,
    pub(crate) failed_logs: Gauge,
}

impl Default for LogMetrics {
    fn default() -> Self {
        Self {
            append_latency: Histogram::new(latency_buckets()),
            fsync_latency: Histogram::new(latency_buckets()),
            appended_records: Counter::default(),
            appended_bytes: Counter::default(),
            commit_rounds: Counter::default(),
            inline_appends: Counter::default(),
            corrupt_batches: Counter::default(),
            recovery_truncated_bytes: Counter::default(),
            segments_deleted: Counter::default(),
            erased_records: Counter::default(),
            io_failures: Counter::default(),
            recoveries: Counter::default(),
            failed_logs: Gauge::default(),
        }
    }
}

impl LogMetrics {
    /// Creates the metrics, shared behind an `Arc`.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Group-commit rounds so far.
    pub fn commit_rounds_total(&self) -> u64 {
        self.commit_rounds.get()
    }

    /// Appends written on the caller's thread so far.
    pub fn inline_appends_total(&self) -> u64 {
        self.inline_appends.get()
    }

    /// Corrupt batches found so far.
    pub fn corrupt_batches_total(&self) -> u64 {
        self.corrupt_batches.get()
    }

    /// Bytes recovery has truncated so far.
    pub fn recovery_truncated_bytes_total(&self) -> u64 {
        self.recovery_truncated_bytes.get()
    }

    /// Records appended so far.
    pub fn appended_records_total(&self) -> u64 {
        self.appended_records.get()
    }

    /// Records erased by compaction so far.
    pub fn erased_records_total(&self) -> u64 {
        self.erased_records.get()
    }

    /// Writes or fsyncs that failed a log so far.
    pub fn io_failures_total(&self) -> u64 {
        self.io_failures.get()
    }

    /// Failed logs recovered so far.
    pub fn recoveries_total(&self) -> u64 {
        self.recoveries.get()
    }

    /// Logs in their failed state now.
    pub fn failed_logs(&self) -> i64 {
        self.failed_logs.get()
    }

    /// Registers every metric with `registry`.
    pub fn register(&self, registry: &mut Registry) {
        use prometheus_client::registry::Unit;
        registry.register_with_unit(
            names::APPEND_LATENCY,
            "Append latency from the writer taking the request to its acknowledgement",
            Unit::Seconds,
            self.append_latency.clone(),
        );
        registry.register_with_unit(
            names::FSYNC_LATENCY,
            "Latency of one fdatasync of a log segment",
            Unit::Seconds,
            self.fsync_latency.clone(),
        );
        registry.register(
            names::APPENDED_RECORDS,
            "Records appended to the log",
            self.appended_records.clone(),
        );
        registry.register_with_unit(
            without_unit_suffix(names::APPENDED_BYTES, "_bytes"),
            "Encoded bytes appended to the log",
            Unit::Bytes,
            self.appended_bytes.clone(),
        );
        registry.register(
            names::COMMIT_ROUNDS,
            "Group-commit rounds: one write and at most one fsync each",
            self.commit_rounds.clone(),
        );
        registry.register(
            names::INLINE_APPENDS,
            "Appends written on the caller's thread because the writer was idle (no fsync per round)",
            self.inline_appends.clone(),
        );
        registry.register(
            names::CORRUPT_BATCHES,
            "Record batches found corrupt when read or recovered",
            self.corrupt_batches.clone(),
        );
        registry.register_with_unit(
            without_unit_suffix(names::RECOVERY_TRUNCATED_BYTES, "_bytes"),
            "Bytes truncated from segment tails by crash recovery",
            Unit::Bytes,
            self.recovery_truncated_bytes.clone(),
        );
        registry.register(
            names::SEGMENTS_DELETED,
            "Sealed segments removed by retention",
            self.segments_deleted.clone(),
        );
        registry.register(
            names::ERASED_RECORDS,
            "Records whose contents a compaction erased (hard delete)",
            self.erased_records.clone(),
        );
        registry.register(
            names::IO_FAILURES,
            "Writes or fsyncs of a log that failed (disk full, I/O error) and put it in its failed state",
            self.io_failures.clone(),
        );
        registry.register(
            names::RECOVERIES,
            "Failed logs that the writer's probe recovered once the disk worked again",
            self.recoveries.clone(),
        );
        registry.register(
            names::FAILED_LOGS,
            "Logs in their failed state now, refusing appends",
            self.failed_logs.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition() -> String {
        let mut registry = Registry::default();
        LogMetrics::new().register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn given_byte_counters_when_exposed_should_name_their_unit_once() {
        let text = exposition();
        assert!(!text.contains("_bytes_bytes"), "{text}");
        assert!(
            text.contains(&format!("{}_total 0", names::APPENDED_BYTES)),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}_total 0", names::RECOVERY_TRUNCATED_BYTES)),
            "{text}"
        );
        assert!(
            text.contains(&format!("# UNIT {} bytes", names::APPENDED_BYTES)),
            "{text}"
        );
    }

    #[test]
    fn given_latency_histograms_when_exposed_should_end_in_seconds_once() {
        let text = exposition();
        assert!(!text.contains("_seconds_seconds"), "{text}");
        assert!(
            text.contains("herald_log_fsync_latency_seconds_bucket{"),
            "{text}"
        );
    }
}
