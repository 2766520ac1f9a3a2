//! The workflow engine's metrics (registered into the server's
//! prometheus-client registry): instances started and ended by status,
//! instances running (in a task) and parked on timers, task runs by kind
//! and outcome with their duration, retries. Labels are bounded: a task's
//! kind (`call`, `wait`, …), an outcome, a status; never an instance or a
//! workflow name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::dsl::TaskKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    /// `completed`, `faulted` or `cancelled`.
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: &'static str,
    /// `completed` or `faulted`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

/// The engine's metrics; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct WorkflowMetrics {
    started: Counter,
    ended: Family<StatusLabels, Counter>,
    running: Gauge,
    parked: Gauge,
    tasks: Family<TaskLabels, Counter>,
    task_duration: HistogramFamily,
    retries: Counter,
}

impl Default for WorkflowMetrics {
    fn default() -> Self {
        Self {
            started: Counter::default(),
            ended: Family::default(),
            running: Gauge::default(),
            parked: Gauge::default(),
            tasks: Family::default(),
            task_duration: HistogramFamily::new_with_constructor(|| {
                // 1 ms to ~18 h, ×4.
                Histogram::new(exponential_buckets(0.001, 4.0, 14))
            }),
            retries: Counter::default(),
        }
    }
}

impl WorkflowMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_workflow_instances_started",
            "Workflow instances started (by API or by a schedule.on event)",
            self.started.clone(),
        );
        registry.register(
            "herald_workflow_instances_ended",
            "Workflow instances ended, by status (completed, faulted, cancelled)",
            self.ended.clone(),
        );
        registry.register(
            "herald_workflow_instances_running",
            "Workflow instances running in a task of their own now (running, or waiting on an event or a short timer)",
            self.running.clone(),
        );
        registry.register(
            "herald_workflow_timers_pending",
            "Workflow instances parked on a timer (a wait or a retry delay), holding no task",
            self.parked.clone(),
        );
        registry.register(
            "herald_workflow_tasks",
            "Workflow task runs, by kind (call, wait, listen, …) and outcome (completed, faulted)",
            self.tasks.clone(),
        );
        registry.register_with_unit(
            "herald_workflow_task_duration",
            "Time from a workflow task's start to its end, by kind (a replayed task counts once, when it ends)",
            Unit::Seconds,
            self.task_duration.clone(),
        );
        registry.register(
            "herald_workflow_retries",
            "Retries of a try's tasks after a caught error",
            self.retries.clone(),
        );
    }

    pub(crate) fn started(&self) {
        self.started.inc();
    }

    pub(crate) fn ended(&self, status: &'static str) {
        self.ended.get_or_create(&StatusLabels { status }).inc();
    }

    pub(crate) fn load(&self, running: usize, parked: usize) {
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        self.parked.set(i64::try_from(parked).unwrap_or(i64::MAX));
    }

    pub(crate) fn task(&self, kind: &TaskKind, faulted: bool, millis: i64) {
        let kind = kind_name(kind);
        self.tasks
            .get_or_create(&TaskLabels {
                kind,
                outcome: if faulted { "faulted" } else { "completed" },
            })
            .inc();
        #[allow(clippy::cast_precision_loss, reason = "a duration in seconds")]
        self.task_duration
            .get_or_create(&KindLabels { kind })
            .observe(millis.max(0) as f64 / 1000.0);
    }

    pub(crate) fn retry(&self) {
        self.retries.inc();
    }
}

fn kind_name(kind: &TaskKind) -> &'static str {
    match kind {
        TaskKind::Call(_) => "call",
        TaskKind::Do(_) => "do",
        TaskKind::Emit(_) => "emit",
        TaskKind::For(_) => "for",
        TaskKind::Fork(_) => "fork",
        TaskKind::Listen(_) => "listen",
        TaskKind::Raise(_) => "raise",
        TaskKind::Set(_) => "set",
        TaskKind::Switch(_) => "switch",
        TaskKind::Try(_) => "try",
        TaskKind::Wait(_) => "wait",
    }
}
