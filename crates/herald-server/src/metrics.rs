//! The process's metrics registry: the server's own metrics and every
//! component's (the log engine's, the consumer groups'), exposed on
//! `GET /metrics`.
//!
//! prometheus-client keeps no global state, so the registry is built once
//! here and shared behind an `Arc`. Labels are bounded: HTTP metrics are
//! labelled by method (a fixed set), route *template* (`/v1/topics/{name}`,
//! never the concrete path) and status class.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use herald_backend::Backend;
use herald_embedded::GroupMetrics;
use herald_log::LogMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Media type of the exposition format prometheus-client writes. Prometheus
/// misreads OpenMetrics text (`_total`, `# EOF`) served as `text/plain`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Metric names, as registered: counters get `_total` appended on exposition
/// and histograms registered with a unit get `_seconds`.
pub mod names {
    /// HTTP requests answered.
    pub const HTTP_REQUESTS: &str = "herald_http_requests";
    /// Time from receiving a request to having its response head.
    pub const HTTP_REQUEST_DURATION: &str = "herald_http_request_duration";
}

/// Route label of requests that matched no route (404s): one value for
/// every unknown path, so scanners cannot blow up the label set.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http: HttpMetrics,
    log: Arc<LogMetrics>,
    groups: Arc<GroupMetrics>,
    tls: crate::tls::TlsMetrics,
    webhooks: Arc<herald_webhooks::WebhookMetrics>,
    workflows: Arc<herald_workflows::WorkflowMetrics>,
    jobs: Arc<herald_jobs::JobMetrics>,
    state: StateGauges,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let http = HttpMetrics::default();
        http.register(&mut registry);
        let log = LogMetrics::new();
        log.register(&mut registry);
        let groups = GroupMetrics::new();
        groups.register(&mut registry);
        let tls = crate::tls::TlsMetrics::default();
        tls.register(&mut registry);
        let webhooks = Arc::new(herald_webhooks::WebhookMetrics::default());
        webhooks.register(&mut registry);
        let workflows = Arc::new(herald_workflows::WorkflowMetrics::default());
        workflows.register(&mut registry);
        let jobs = Arc::new(herald_jobs::JobMetrics::default());
        jobs.register(&mut registry);
        let state = StateGauges::default();
        state.register(&mut registry);
        Arc::new(Self {
            registry,
            http,
            log,
            groups,
            tls,
            webhooks,
            workflows,
            jobs,
            state,
        })
    }

    /// The HTTP layer's metrics.
    pub fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// The log engine's metrics, to hand to the engine when it opens.
    pub fn log(&self) -> &Arc<LogMetrics> {
        &self.log
    }

    /// The consumer groups' metrics, to hand to the backend when it opens.
    pub fn groups(&self) -> &Arc<GroupMetrics> {
        &self.groups
    }

    /// The TLS listener's metrics (reloads, failed handshakes).
    pub fn tls(&self) -> &crate::tls::TlsMetrics {
        &self.tls
    }

    /// The webhook service's metrics.
    pub fn webhooks(&self) -> &Arc<herald_webhooks::WebhookMetrics> {
        &self.webhooks
    }

    /// The job service's metrics.
    pub fn jobs(&self) -> &Arc<herald_jobs::JobMetrics> {
        &self.jobs
    }

    /// The workflow engine's metrics.
    pub fn workflows(&self) -> &Arc<herald_workflows::WorkflowMetrics> {
        &self.workflows
    }

    /// Reads the gauges of state the backend holds (each group's lag per
    /// partition, in-flight, pending and dead letters; each topic's events
    /// and bytes) afresh: at every scrape, so they are never stale and
    /// deleted groups and topics drop out. A failed read leaves its series
    /// out of this scrape.
    pub async fn refresh(&self, backend: &dyn Backend) {
        self.state.refresh(backend).await;
    }

    /// Every metric in OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// A topic's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

/// A group's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    topic: String,
    group: String,
}

/// A group partition's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupPartitionLabels {
    topic: String,
    group: String,
    partition: String,
}

/// A group's counter series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupCountLabels {
    topic: String,
    group: String,
    /// `delivered`, `redelivered`, `acked`, `nacked` or `rejected`.
    kind: &'static str,
}

/// Gauges read from the backend at each scrape. Labels are topic, group
/// and partition names: as many series as the operator made groups and
/// partitions (bounded by `limits`), never per event or key.
#[derive(Debug, Default)]
struct StateGauges {
    lag: Family<GroupPartitionLabels, Gauge>,
    in_flight: Family<GroupLabels, Gauge>,
    pending: Family<GroupLabels, Gauge>,
    dead_letters: Family<GroupLabels, Gauge>,
    members: Family<GroupLabels, Gauge>,
    topic_events: Family<TopicLabels, Gauge>,
    topic_bytes: Family<TopicLabels, Gauge>,
    topic_segments: Family<TopicLabels, Gauge>,
    topic_dedup_ids: Family<TopicLabels, Gauge>,
    /// Counters the backend keeps per group (since the process started),
    /// carried into Prometheus counters: the value last seen per series.
    counts: Family<GroupCountLabels, Counter>,
    seen: std::sync::Mutex<std::collections::HashMap<GroupCountLabels, u64>>,
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl StateGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "herald_group_lag",
            "Events of the partition the group has not finished (end offset minus committed)",
            self.lag.clone(),
        );
        registry.register(
            "herald_group_in_flight",
            "Deliveries of the group leased and not settled",
            self.in_flight.clone(),
        );
        registry.register(
            "herald_group_pending",
            "Events of the group waiting: delayed, backing off, or behind a busy key",
            self.pending.clone(),
        );
        registry.register(
            "herald_group_dead_letters_held",
            "Dead letters listed for the group (not redriven)",
            self.dead_letters.clone(),
        );
        registry.register(
            "herald_group_members",
            "Members the group has seen recently",
            self.members.clone(),
        );
        registry.register(
            "herald_group_deliveries",
            "Deliveries of the group by what became of them (delivered, redelivered, acked, nacked, rejected)",
            self.counts.clone(),
        );
        registry.register(
            "herald_topic_events",
            "Events the topic keeps (end minus start offset, summed over partitions)",
            self.topic_events.clone(),
        );
        registry.register(
            "herald_topic_bytes",
            "Bytes the topic's partitions take in storage",
            self.topic_bytes.clone(),
        );
        registry.register(
            "herald_topic_segments",
            "Segment files of the topic's partitions (embedded backend)",
            self.topic_segments.clone(),
        );
        registry.register(
            "herald_topic_dedup_ids",
            "Event ids in the topic's dedup window (embedded backend)",
            self.topic_dedup_ids.clone(),
        );
    }

    async fn refresh(&self, backend: &dyn Backend) {
        self.lag.clear();
        for family in [
            &self.in_flight,
            &self.pending,
            &self.dead_letters,
            &self.members,
        ] {
            family.clear();
        }
        for family in [
            &self.topic_events,
            &self.topic_bytes,
            &self.topic_segments,
            &self.topic_dedup_ids,
        ] {
            family.clear();
        }
        for stats in backend.storage_stats() {
            let labels = TopicLabels {
                topic: stats.topic.to_string(),
            };
            self.topic_segments
                .get_or_create(&labels)
                .set(gauge_value(stats.segments));
            self.topic_dedup_ids
                .get_or_create(&labels)
                .set(gauge_value(stats.dedup_ids));
        }
        let Ok(topics) = backend.list_topics().await else {
            return;
        };
        let mut counted = Vec::new();
        for info in topics {
            let topic = &info.spec.name;
            let labels = TopicLabels {
                topic: topic.to_string(),
            };
            if let Ok(description) = backend.describe_topic(topic).await {
                let (events, bytes) = description.partition_info.iter().fold(
                    (0u64, 0u64),
                    |(events, bytes), partition| {
                        (
                            events + partition.end_offset.saturating_sub(partition.start_offset),
                            bytes + partition.bytes,
                        )
                    },
                );
                self.topic_events
                    .get_or_create(&labels)
                    .set(gauge_value(events));
                self.topic_bytes
                    .get_or_create(&labels)
                    .set(gauge_value(bytes));
            }
            let Ok(groups) = backend.list_groups(topic).await else {
                continue;
            };
            for group in groups {
                let Ok(status) = backend.group_status(topic, &group.name).await else {
                    continue;
                };
                let labels = GroupLabels {
                    topic: topic.to_string(),
                    group: group.name.to_string(),
                };
                self.in_flight
                    .get_or_create(&labels)
                    .set(gauge_value(status.in_flight));
                self.pending
                    .get_or_create(&labels)
                    .set(gauge_value(status.pending));
                self.dead_letters
                    .get_or_create(&labels)
                    .set(gauge_value(status.dead_letters));
                self.members
                    .get_or_create(&labels)
                    .set(gauge_value(status.members.len() as u64));
                let counters = status.counters;
                for (kind, value) in [
                    ("delivered", counters.delivered),
                    ("redelivered", counters.redelivered),
                    ("acked", counters.acked),
                    ("nacked", counters.nacked),
                    ("rejected", counters.rejected),
                ] {
                    counted.push((
                        GroupCountLabels {
                            topic: labels.topic.clone(),
                            group: labels.group.clone(),
                            kind,
                        },
                        value,
                    ));
                }
                for partition in &status.partitions {
                    let labels = GroupPartitionLabels {
                        topic: labels.topic.clone(),
                        group: labels.group.clone(),
                        partition: partition.partition.to_string(),
                    };
                    self.lag
                        .get_or_create(&labels)
                        .set(gauge_value(partition.lag));
                }
            }
        }
        self.count(counted);
    }

    /// Moves each group counter to the backend's value; a value below the
    /// last seen (the group made anew) starts its series again, and groups
    /// gone since the last scrape drop out.
    fn count(&self, counted: Vec<(GroupCountLabels, u64)>) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut now = std::collections::HashMap::with_capacity(counted.len());
        for (labels, value) in counted {
            match seen.get(&labels) {
                Some(&last) if value >= last => {
                    self.counts.get_or_create(&labels).inc_by(value - last);
                }
                _ => {
                    self.counts.remove(&labels);
                    self.counts.get_or_create(&labels).inc_by(value);
                }
            }
            now.insert(labels, value);
        }
        for gone in seen.keys().filter(|labels| !now.contains_key(*labels)) {
            self.counts.remove(gone);
        }
        *seen = now;
    }
}

/// Labels of the HTTP metrics. Every field has a bounded set of values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// A standard method name, or `OTHER`.
    pub method: &'static str,
    /// The matched route template, or [`UNMATCHED_ROUTE`].
    pub route: Cow<'static, str>,
    /// `1xx` … `5xx`.
    pub status: &'static str,
}

impl HttpLabels {
    /// Labels of one request.
    pub fn new(method: &Method, route: Option<Cow<'static, str>>, status: StatusCode) -> Self {
        Self {
            method: method_label(method),
            route: route.unwrap_or(Cow::Borrowed(UNMATCHED_ROUTE)),
            status: status_class(status),
        }
    }
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// Request count and latency per method, route and status class.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: HistogramFamily::new_with_constructor(|| {
                // 100 µs to ~26 s, doubling: a health check lands in the
                // first buckets, a long-poll fetch in the last ones.
                Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
            }),
        }
    }
}

impl HttpMetrics {
    /// Records one answered request.
    pub fn observe(&self, labels: &HttpLabels, elapsed: Duration) {
        self.requests.get_or_create(labels).inc();
        self.duration
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            names::HTTP_REQUESTS,
            "HTTP requests answered, by method, route template and status class",
            self.requests.clone(),
        );
        registry.register_with_unit(
            names::HTTP_REQUEST_DURATION,
            "Time to produce an HTTP response head, by method, route template and status class",
            Unit::Seconds,
            self.duration.clone(),
        );
    }
}

fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_request_when_observed_should_expose_counter_and_histogram_with_labels() {
        let metrics = Metrics::new();
        let labels = HttpLabels::new(&Method::GET, Some("/healthz".into()), StatusCode::OK);
        metrics.http().observe(&labels, Duration::from_millis(3));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                r#"herald_http_requests_total{method="GET",route="/healthz",status="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("herald_http_request_duration_seconds_bucket{"),
            "{text}"
        );
        assert!(text.contains("herald_log_append_latency_seconds"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn given_every_registered_metric_when_exposed_should_name_no_unit_twice() {
        let text = Metrics::new().encode().unwrap();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split(' ').next())
            .collect();
        assert!(families.contains(&"herald_log_appended_bytes"), "{text}");
        for unit in ["bytes", "seconds"] {
            let doubled = format!("_{unit}_{unit}");
            let offenders: Vec<&&str> = families
                .iter()
                .filter(|name| name.contains(&doubled))
                .collect();
            assert!(offenders.is_empty(), "doubled unit in {offenders:?}");
        }
    }

    #[test]
    fn given_unusual_method_and_status_when_labelled_should_stay_bounded() {
        let method = Method::from_bytes(b"BREW").unwrap();
        let labels = HttpLabels::new(&method, None, StatusCode::from_u16(599).unwrap());
        assert_eq!(labels.method, "OTHER");
        assert_eq!(labels.route, UNMATCHED_ROUTE);
        assert_eq!(labels.status, "5xx");
    }
}
