//! Prometheus metrics of the job service: every transition by the event it
//! publishes (`submitted`, `running`, `progress`, `part_completed`,
//! `succeeded`, `failed`, `partial`), and how long ended jobs took from
//! submit to end, by how they ended. Labels are those names only (no job
//! ids or queues), so the series stay few.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::model::Job;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

fn duration_histogram() -> Histogram {
    // 5 ms to about 6 hours.
    Histogram::new(exponential_buckets(0.005, 4.0, 12))
}

/// The job service's metrics (register them, then hand them to the service
/// in [`crate::Options::metrics`]).
#[derive(Debug)]
pub struct JobMetrics {
    transitions: Family<KindLabels, Counter>,
    durations: Family<StatusLabels, Histogram, fn() -> Histogram>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        Self {
            transitions: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl JobMetrics {
    /// Registers every metric with `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_job_transitions",
            "Job transitions stored, by the event they publish",
            self.transitions.clone(),
        );
        registry.register_with_unit(
            "herald_job_duration",
            "From submit to end, of ended jobs, by how they ended",
            Unit::Seconds,
            self.durations.clone(),
        );
    }

    /// Counts a stored transition of `job` (as it is after it) that
    /// publishes `kind`.
    pub(crate) fn transition(&self, job: &Job, kind: &'static str) {
        self.transitions.get_or_create(&KindLabels { kind }).inc();
        if job.status.is_terminal() && kind == job.status.as_str() {
            let seconds = job.updated_at.saturating_sub(job.created_at).max(0) as f64 / 1000.0;
            self.durations
                .get_or_create(&StatusLabels {
                    status: job.status.as_str(),
                })
                .observe(seconds);
        }
    }

    /// Transitions counted so far that published `kind` (for tests).
    pub fn transitions_total(&self, kind: &'static str) -> u64 {
        self.transitions.get_or_create(&KindLabels { kind }).get()
    }
}
