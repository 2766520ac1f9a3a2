//! The webhook service's metrics (registered into the server's
//! prometheus-client registry): attempts by endpoint and outcome, their
//! latency, each endpoint's circuit state and how many endpoints are
//! disabled. The endpoint label is bounded by the endpoints an operator
//! creates; a deleted endpoint's series are removed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::attempt::Outcome;
use crate::circuit::Circuit;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    endpoint: String,
    /// `succeeded` or the error class (`status`, `timeout`, …).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

type HistogramFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

/// The service's metrics; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct WebhookMetrics {
    attempts: Family<AttemptLabels, Counter>,
    latency: HistogramFamily,
    circuit: Family<EndpointLabels, Gauge>,
    disabled: Gauge,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self {
            attempts: Family::default(),
            latency: HistogramFamily::new_with_constructor(|| {
                // 1 ms to ~65 s, doubling.
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            circuit: Family::default(),
            disabled: Gauge::default(),
        }
    }
}

impl WebhookMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_webhook_attempts",
            "Webhook delivery attempts, by endpoint and outcome (succeeded or the error class)",
            self.attempts.clone(),
        );
        registry.register_with_unit(
            "herald_webhook_attempt_duration",
            "Time from sending a webhook attempt to its whole answer, by endpoint",
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register(
            "herald_webhook_circuit_state",
            "Each endpoint's circuit: 0 closed, 1 open, 2 half-open",
            self.circuit.clone(),
        );
        registry.register(
            "herald_webhook_endpoints_disabled",
            "Webhook endpoints disabled (by hand, or by Herald after failing)",
            self.disabled.clone(),
        );
    }

    pub(crate) fn attempt(&self, endpoint: &str, outcome: &Outcome) {
        self.attempts
            .get_or_create(&AttemptLabels {
                endpoint: endpoint.to_owned(),
                outcome: outcome_label(outcome),
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .observe(outcome.latency.as_secs_f64());
    }

    /// `endpoint`'s series, looked up once: a delivery counts through them
    /// without building labels or locking the families.
    pub(crate) fn endpoint(&self, endpoint: &str) -> EndpointMetrics {
        let labels = EndpointLabels {
            endpoint: endpoint.to_owned(),
        };
        EndpointMetrics {
            attempts: OUTCOMES.map(|outcome| {
                self.attempts
                    .get_or_create(&AttemptLabels {
                        endpoint: endpoint.to_owned(),
                        outcome,
                    })
                    .clone()
            }),
            latency: self.latency.get_or_create(&labels).clone(),
            circuit: self.circuit.get_or_create(&labels).clone(),
        }
    }

    pub(crate) fn set_disabled(&self, disabled: i64) {
        self.disabled.set(disabled);
    }

    /// Drops a stopped endpoint's series.
    pub(crate) fn forget(&self, endpoint: &str) {
        let labels = EndpointLabels {
            endpoint: endpoint.to_owned(),
        };
        self.circuit.remove(&labels);
        self.latency.remove(&labels);
        for outcome in OUTCOMES {
            self.attempts.remove(&AttemptLabels {
                endpoint: endpoint.to_owned(),
                outcome,
            });
        }
    }
}

/// Every value of the `outcome` label.
const OUTCOMES: [&str; 6] = [
    "succeeded",
    "status",
    "timeout",
    "connect",
    "target_not_allowed",
    "circuit_open",
];

/// `succeeded` or the error class.
fn outcome_label(outcome: &Outcome) -> &'static str {
    if outcome.succeeded() {
        "succeeded"
    } else {
        outcome.class.as_str()
    }
}

/// One endpoint's series (shared with the registry's families).
#[derive(Debug, Clone)]
pub(crate) struct EndpointMetrics {
    attempts: [Counter; OUTCOMES.len()],
    latency: Histogram,
    circuit: Gauge,
}

impl EndpointMetrics {
    pub(crate) fn attempt(&self, outcome: &Outcome) {
        let label = outcome_label(outcome);
        if let Some(index) = OUTCOMES.iter().position(|known| *known == label) {
            self.attempts[index].inc();
        }
        self.latency.observe(outcome.latency.as_secs_f64());
    }

    pub(crate) fn circuit(&self, circuit: &Circuit) {
        self.circuit.set(circuit.gauge());
    }
}
