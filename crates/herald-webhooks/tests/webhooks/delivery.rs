//! The webhook service end to end, on the real embedded backend, against
//! real HTTP receivers on loopback: delivery from the log, retries on the
//! configured schedule, dead letters, the circuit breaker, auto-disable,
//! manual redelivery and recovery, ordered delivery, a restart mid-retry,
//! and secret rotation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use herald_backend::{Backend, Events, Groups, Kv, TopicSpec, Topics};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_types::webhook::{Secret, verify};
use herald_types::{Event, EventInput, TopicName};
use herald_webhooks::circuit::CircuitOptions;
use herald_webhooks::endpoint::{EndpointSpec, Filter};
use herald_webhooks::service::group_name;
use herald_webhooks::store::{ATTEMPTS_BUCKET, BY_MESSAGE_BUCKET, BY_OFFSET_BUCKET, State};
use herald_webhooks::{
    AttemptQuery, AttemptRecord, EndpointPatch, Handle, Options, Schedule, Sender, Service,
    TargetPolicy, WebhookMetrics,
};
use tokio_util::sync::CancellationToken;

use super::{now_ms, now_s};

/// Conditions are waited for this long at most.
const PATIENCE: Duration = Duration::from_secs(20);

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: HeaderMap,
    body: Vec<u8>,
    at: Instant,
}

impl Got {
    fn id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_owned()
    }

    fn subject(&self) -> String {
        let event: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        event["subject"].as_str().unwrap_or_default().to_owned()
    }
}

/// A receiver whose answer the test sets: a status, a delay, and "fail the
/// first N attempts of each message".
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    fail_first: Arc<AtomicU32>,
    /// Requests in progress per subject, and the most ever at once.
    in_flight: Arc<Mutex<(BTreeMap<String, u32>, u32)>>,
}

impl Receiver {
    async fn start(status: StatusCode) -> (SocketAddr, Self) {
        let receiver = Self::default();
        receiver.status.store(status.as_u16(), Ordering::SeqCst);
        let state = receiver.clone();
        let router = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move { state.answer(headers, body).await }
        });
        (super::serve(router).await, receiver)
    }

    async fn answer(&self, headers: HeaderMap, body: Bytes) -> axum::response::Response {
        let got = Got {
            headers,
            body: body.to_vec(),
            at: Instant::now(),
        };
        let subject = got.subject();
        let id = got.id();
        let earlier = {
            let mut all = self.got.lock().unwrap();
            let earlier = all.iter().filter(|seen| seen.id() == id).count();
            all.push(got);
            earlier
        };
        {
            let mut in_flight = self.in_flight.lock().unwrap();
            let now = {
                let count = in_flight.0.entry(subject.clone()).or_default();
                *count += 1;
                *count
            };
            in_flight.1 = in_flight.1.max(now);
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if let Some(count) = self.in_flight.lock().unwrap().0.get_mut(&subject) {
            *count -= 1;
        }
        let failing = u32::try_from(earlier).unwrap() < self.fail_first.load(Ordering::SeqCst);
        let status = if failing {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::from_u16(self.status.load(Ordering::SeqCst)).unwrap()
        };
        (status, "receiver says hello").into_response()
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The distinct message ids received.
    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.got().iter().map(Got::id).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    backend: Arc<EmbeddedBackend>,
    handle: Handle,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn fast_options() -> Options {
    Options {
        schedule: Schedule::from_millis(&[50, 50]).unwrap(),
        attempt_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        refresh_interval: Duration::from_millis(100),
        ..Options::default()
    }
}

async fn open_backend(dir: &Path) -> Arc<EmbeddedBackend> {
    Arc::new(
        EmbeddedBackend::open(EmbeddedOptions::new(dir), LogMetrics::new())
            .await
            .unwrap(),
    )
}

/// The receivers' address, allowed explicitly (as
/// `webhooks.allow_targets` would).
const LOOPBACK: &[&str] = &["127.0.0.1/32"];

fn start_service(
    backend: &Arc<EmbeddedBackend>,
    options: Options,
    allow: &[&str],
) -> (Handle, CancellationToken, tokio::task::JoinHandle<()>) {
    let sender = Sender::new(TargetPolicy::new(allow).unwrap(), options.connect_timeout).unwrap();
    let service = Service::new(
        Arc::clone(backend) as Arc<dyn Backend>,
        sender,
        options,
        Arc::new(WebhookMetrics::default()),
    );
    let handle = service.handle();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(service.run(cancel.clone()));
    (handle, cancel, task)
}

impl Fixture {
    async fn start(options: Options) -> Self {
        Self::start_with(options, LOOPBACK).await
    }

    async fn start_with(options: Options, allow: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend = open_backend(dir.path()).await;
        let mut spec = TopicSpec::new(topic("orders"));
        spec.partitions = 2;
        backend.create_topic(spec).await.unwrap();
        let (handle, cancel, task) = start_service(&backend, options, allow);
        Self {
            dir,
            backend,
            handle,
            cancel,
            task,
        }
    }

    /// Stops the service and closes the backend; returns the data dir.
    async fn stop(self) -> tempfile::TempDir {
        let Self {
            dir,
            backend,
            handle,
            cancel,
            task,
            ..
        } = self;
        cancel.cancel();
        task.await.unwrap();
        drop(handle);
        backend.shutdown().await.unwrap();
        // The attempt log's writer lets go of it once the service is gone.
        until("the service to let go of the backend", async || {
            (Arc::strong_count(&backend) == 1).then_some(())
        })
        .await;
        dir
    }

    /// The endpoint's logged attempts, newest first, of one status or all.
    async fn attempts(&self, endpoint_id: &str, status: Option<&str>) -> Vec<AttemptRecord> {
        self.handle
            .attempts(
                endpoint_id,
                AttemptQuery {
                    status: status.map(str::to_owned),
                    ..AttemptQuery::default()
                },
            )
            .await
            .unwrap()
    }

    /// Waits until the endpoint's group on `orders` has nothing left: no
    /// lag, nothing in flight or waiting for a retry.
    async fn drained(&self, endpoint_id: &str) {
        until("the group drained", async || {
            let status = self
                .backend
                .group_status(&topic("orders"), &group_name(endpoint_id))
                .await
                .unwrap();
            let lag: u64 = status.partitions.iter().map(|p| p.lag).sum();
            (lag == 0 && status.in_flight == 0 && status.pending == 0).then_some(())
        })
        .await;
    }

    async fn publish(&self, events: &[(impl AsRef<str>, impl AsRef<str>)]) {
        let inputs = events
            .iter()
            .map(|(id, subject)| {
                let (id, subject) = (id.as_ref(), subject.as_ref());
                let mut event = Event::new(id, "/test", "order.created");
                event.subject = Some(subject.to_owned());
                event.key = Some(subject.to_owned());
                event.datacontenttype = Some("application/json".into());
                event.data = Some(Bytes::from(format!(r#"{{"id":"{id}"}}"#)));
                EventInput {
                    event,
                    partition: None,
                }
            })
            .collect();
        self.backend
            .publish(&topic("orders"), inputs)
            .await
            .unwrap();
    }
}

fn topic(name: &str) -> TopicName {
    name.parse().unwrap()
}

fn spec(addr: SocketAddr) -> EndpointSpec {
    EndpointSpec {
        url: format!("http://{addr}/hook"),
        description: Some("test receiver".into()),
        filter: Filter {
            topics: vec!["orders".into()],
            types: vec!["order.*".into()],
            subject_prefix: None,
        },
        secret: None,
        headers: BTreeMap::new(),
        rate_limit_per_s: None,
        ordered: false,
        enabled: true,
    }
}

async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn verify_got(secret: &Secret, got: &Got) {
    let header = |name: &str| got.headers[name].to_str().unwrap().to_owned();
    assert_eq!(
        verify(
            secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &header("webhook-signature"),
            &got.body,
            now_s()
        ),
        Ok(()),
        "signature of {got:?}"
    );
}

#[tokio::test]
async fn given_an_endpoint_when_events_are_published_should_deliver_each_signed_once() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    let fixture = Fixture::start(fast_options()).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    let secret = Secret::parse(created.secret.as_deref().unwrap()).unwrap();
    fixture
        .publish(&[("e1", "a"), ("e2", "b"), ("e3", "c")])
        .await;
    let got = until("3 deliveries", async || {
        let got = receiver.got();
        (got.len() >= 3).then_some(got)
    })
    .await;
    for delivery in &got {
        verify_got(&secret, delivery);
        let event: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
        assert_eq!(
            delivery.id(),
            format!("orders.{}.{}", event["partition"], event["offset"])
        );
        assert_eq!(
            delivery.headers["content-type"],
            "application/cloudevents+json"
        );
    }
    let attempts = until("3 logged attempts", async || {
        let attempts = fixture.attempts(&created.endpoint_id, None).await;
        (attempts.len() >= 3).then_some(attempts)
    })
    .await;
    assert!(
        attempts.iter().all(|a| a.succeeded && a.next == "acked"),
        "{attempts:?}"
    );
    assert!(attempts.iter().all(|a| a.status_code == Some(200)));
    assert!(
        attempts
            .iter()
            .all(|a| a.response_excerpt == "receiver says hello")
    );
    // Newest first.
    assert!(attempts.windows(2).all(|w| w[0].at >= w[1].at));
    // Acked: nothing is left for the group.
    fixture.drained(&created.endpoint_id).await;
    assert_eq!(receiver.got().len(), 3, "each event once");
    fixture.stop().await;
}

#[tokio::test]
async fn given_attempts_in_several_pages_when_listed_by_cursor_should_give_each_once_newest_first()
{
    let (addr, _receiver) = Receiver::start(StatusCode::OK).await;
    let fixture = Fixture::start(fast_options()).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    let endpoint = &created.endpoint_id;
    // Three rounds, each logged before the next: three writes at least.
    let mut logged = 0;
    for round in 0..3 {
        let events: Vec<(String, String)> = (0..12)
            .map(|n| (format!("r{round}-{n}"), format!("s{n}")))
            .collect();
        fixture.publish(&events).await;
        logged += events.len();
        until("the round logged", async || {
            (fixture.attempts(endpoint, None).await.len() >= logged).then_some(())
        })
        .await;
    }
    let all = fixture.attempts(endpoint, None).await;
    assert_eq!(all.len(), 36);
    assert!(
        all.windows(2).all(|w| w[0].attempt_id < w[1].attempt_id),
        "newest first, by id"
    );
    assert!(
        all.windows(2).all(|w| w[0].at >= w[1].at),
        "newest first, by time"
    );
    let stored_pages = fixture
        .backend
        .kv_keys(ATTEMPTS_BUCKET, &format!("{endpoint}/"), None, 100)
        .await
        .unwrap();
    // A round's attempts arrive together: pages of several, so the
    // cursors below land inside pages.
    assert!(
        (3..36).contains(&stored_pages.len()),
        "{} pages",
        stored_pages.len()
    );
    // Pages of 5 by cursor: the same attempts in the same order, each once.
    let mut paged: Vec<AttemptRecord> = Vec::new();
    loop {
        let page = fixture
            .handle
            .attempts(
                endpoint,
                AttemptQuery {
                    limit: Some(5),
                    before: paged.last().map(|last| last.attempt_id.clone()),
                    ..AttemptQuery::default()
                },
            )
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, all);
    // Each attempt is found by its message too.
    for record in [&all[0], &all[17], &all[35]] {
        let found = fixture
            .handle
            .attempts(
                endpoint,
                AttemptQuery {
                    message_id: Some(record.message_id.clone()),
                    ..AttemptQuery::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(found, vec![record.clone()]);
    }
    fixture.stop().await;
}

#[tokio::test]
async fn given_attempts_logged_before_pages_should_list_find_and_forget_them_beside_new_ones() {
    let (addr, _receiver) = Receiver::start(StatusCode::OK).await;
    let fixture = Fixture::start(fast_options()).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    let endpoint = created.endpoint_id.clone();
    // As the log stored an attempt before pages: one record per row, keyed
    // by its own 36-character id, and its key by message.
    let old_id = herald_webhooks::store::attempt_id(1_000, 7);
    let old = AttemptRecord {
        attempt_id: old_id.clone(),
        endpoint_id: endpoint.clone(),
        message_id: "orders.0.0".into(),
        attempt: 1,
        at: "1970-01-01T00:00:01.000Z".into(),
        succeeded: false,
        status_code: Some(500),
        latency_ms: 3,
        error_class: "status".into(),
        error: Some("the receiver answered 500".into()),
        response_excerpt: String::new(),
        trigger: herald_webhooks::store::Trigger::Scheduled,
        next: "retry_in_ms:10".into(),
    };
    fixture
        .backend
        .kv_put_many(
            vec![
                (
                    ATTEMPTS_BUCKET.to_owned(),
                    format!("{endpoint}/{old_id}"),
                    Bytes::from(serde_json::to_vec(&old).unwrap()),
                ),
                (
                    BY_MESSAGE_BUCKET.to_owned(),
                    format!("{endpoint}/orders.0.0/{old_id}"),
                    Bytes::new(),
                ),
            ],
            herald_backend::KvDurability::Sync,
        )
        .await
        .unwrap();
    // The event at orders.0.0 is then delivered: a new attempt, in a page.
    fixture.publish(&[("e1", "a")]).await;
    let all = until("both attempts listed", async || {
        let all = fixture.attempts(&endpoint, None).await;
        (all.len() >= 2).then_some(all)
    })
    .await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[1], old, "the old attempt, last: it is the oldest");
    let message = all[0].message_id.clone();
    let by_message = fixture
        .handle
        .attempts(
            &endpoint,
            AttemptQuery {
                message_id: Some("orders.0.0".into()),
                ..AttemptQuery::default()
            },
        )
        .await
        .unwrap();
    if message == "orders.0.0" {
        assert_eq!(by_message, all, "found through both indexes, newest first");
    } else {
        assert_eq!(by_message, vec![old.clone()]);
    }
    fixture.handle.delete(&endpoint).await.unwrap();
    for bucket in [ATTEMPTS_BUCKET, BY_MESSAGE_BUCKET, BY_OFFSET_BUCKET] {
        let keys = fixture
            .backend
            .kv_keys(bucket, &format!("{endpoint}/"), None, 10)
            .await
            .unwrap();
        assert!(keys.is_empty(), "{bucket}: {keys:?}");
    }
    fixture.stop().await;
}

#[tokio::test]
async fn given_filters_when_events_do_not_match_should_not_deliver_them() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    let fixture = Fixture::start(fast_options()).await;
    let mut only_eu = spec(addr);
    only_eu.filter.subject_prefix = Some("eu/".into());
    let created = fixture.handle.create(only_eu).await.unwrap();
    fixture
        .publish(&[
            ("e1", "us/1"),
            ("e2", "eu/1"),
            ("e3", "us/2"),
            ("e4", "eu/2"),
        ])
        .await;
    until("2 deliveries", async || {
        (receiver.got().len() >= 2).then_some(())
    })
    .await;
    // The two others are skipped (handled), not retried.
    fixture.drained(&created.endpoint_id).await;
    let subjects: Vec<String> = receiver.got().iter().map(Got::subject).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects.iter().all(|subject| subject.starts_with("eu/")));
    fixture.stop().await;
}

#[tokio::test]
async fn given_a_receiver_failing_twice_when_delivered_should_retry_on_schedule_and_succeed() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    receiver.fail_first.store(2, Ordering::SeqCst);
    let fixture = Fixture::start(fast_options()).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    fixture.publish(&[("e1", "a")]).await;
    until("3 attempts", async || {
        (receiver.got().len() >= 3).then_some(())
    })
    .await;
    let got = receiver.got();
    assert!(
        got.iter().all(|g| g.id() == got[0].id()),
        "one webhook-id on every attempt"
    );
    let mut attempts = until("3 logged attempts", async || {
        let attempts = fixture.attempts(&created.endpoint_id, None).await;
        (attempts.len() >= 3).then_some(attempts)
    })
    .await;
    attempts.reverse();
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for failed in &attempts[..2] {
        assert!(!failed.succeeded);
        assert_eq!(failed.status_code, Some(500));
        assert_eq!(failed.error_class, "status");
        // 50 ms ± 20%.
        let delay: u64 = failed
            .next
            .strip_prefix("retry_in_ms:")
            .unwrap()
            .parse()
            .unwrap();
        assert!((40..=60).contains(&delay), "{}", failed.next);
    }
    assert!(attempts[2].succeeded);
    // The retries waited for their delay.
    assert!(got[1].at - got[0].at >= Duration::from_millis(40));
    // Per message too.
    let per_message = fixture
        .handle
        .attempts(
            &created.endpoint_id,
            AttemptQuery {
                message_id: Some(got[0].id()),
                ..AttemptQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(per_message.len(), 3);
    let failed_only = fixture.attempts(&created.endpoint_id, Some("failed")).await;
    assert_eq!(failed_only.len(), 2);
    fixture.stop().await;
}

#[tokio::test]
async fn given_a_receiver_that_times_out_when_attempts_run_out_should_dead_letter_with_the_reason()
{
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    receiver.delay_ms.store(2_000, Ordering::SeqCst);
    let options = Options {
        attempt_timeout: Duration::from_millis(200),
        schedule: Schedule::from_millis(&[20, 20]).unwrap(),
        ..fast_options()
    };
    let fixture = Fixture::start(options).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    fixture.publish(&[("e1", "a")]).await;
    let group = group_name(&created.endpoint_id);
    let dead = until("a dead letter", async || {
        let dead = fixture
            .backend
            .dead_letters(&topic("orders"), &group, 10)
            .await
            .unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("after 3 attempts (timeout)"),
        "{}",
        dead[0].reason
    );
    let attempts = fixture.attempts(&created.endpoint_id, None).await;
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a.error_class == "timeout"));
    assert_eq!(attempts[0].next, "dead_lettered");

    // Recovery: the receiver is well again; recover redelivers it.
    receiver.delay_ms.store(0, Ordering::SeqCst);
    let redelivering = fixture
        .handle
        .recover(&created.endpoint_id, 0, None)
        .await
        .unwrap();
    assert_eq!(redelivering, 1);
    until("a successful attempt", async || {
        let ok = fixture
            .attempts(&created.endpoint_id, Some("succeeded"))
            .await;
        (!ok.is_empty()).then_some(())
    })
    .await;
    fixture.stop().await;
}

#[tokio::test]
async fn given_consecutive_failures_should_open_the_circuit_probe_and_close_on_recovery() {
    let (addr, receiver) = Receiver::start(StatusCode::SERVICE_UNAVAILABLE).await;
    let options = Options {
        schedule: Schedule::from_millis(&[30; 10]).unwrap(),
        circuit: CircuitOptions {
            failures: 3,
            cool_down: Duration::from_millis(400),
        },
        max_in_flight: 1,
        ..fast_options()
    };
    let fixture = Fixture::start(options).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    fixture.publish(&[("e1", "a"), ("e2", "b")]).await;
    until("the circuit open", async || {
        let view = fixture.handle.get(&created.endpoint_id).await.unwrap();
        (view.state == State::CircuitOpen).then_some(())
    })
    .await;
    let opened_with = receiver.got().len();
    assert!(opened_with >= 3, "{opened_with}");
    // Open: nothing is sent during the cool-down (one probe after it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.got().len() <= opened_with + 1, "sent while open");
    // The probe fails: open again; then the receiver recovers and the
    // next probe closes it.
    until("a probe", async || {
        (receiver.got().len() > opened_with).then_some(())
    })
    .await;
    receiver.status.store(200, Ordering::SeqCst);
    until("both delivered", async || {
        let ok = fixture
            .attempts(&created.endpoint_id, Some("succeeded"))
            .await;
        (ok.len() >= 2).then_some(())
    })
    .await;
    let view = fixture.handle.get(&created.endpoint_id).await.unwrap();
    assert_eq!(view.state, State::Enabled);
    assert_eq!(view.stats.consecutive_failures, 0);
    fixture.stop().await;
}

#[tokio::test]
async fn given_an_endpoint_failing_past_the_disable_period_should_disable_it_and_say_so() {
    let (addr, _receiver) = Receiver::start(StatusCode::INTERNAL_SERVER_ERROR).await;
    // The circuit stays out of it (ten failures well inside 300 ms would
    // open it for longer than the test waits), and the attempts outlast
    // the disable period however slowly they run.
    let options = Options {
        schedule: Schedule::from_millis(&[50; 32]).unwrap(),
        disable_after: Duration::from_millis(300),
        circuit: CircuitOptions {
            failures: 1_000,
            cool_down: Duration::from_secs(1),
        },
        ..fast_options()
    };
    let fixture = Fixture::start(options).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    fixture.publish(&[("e1", "a")]).await;
    let view = until("disabled", async || {
        let view = fixture.handle.get(&created.endpoint_id).await.unwrap();
        (view.state == State::Disabled).then_some(view)
    })
    .await;
    assert!(!view.enabled);
    assert!(
        view.disabled_reason
            .as_deref()
            .unwrap()
            .contains("no successful delivery since"),
        "{view:?}"
    );
    let events = until("the disabled event", async || {
        let read = fixture
            .backend
            .read(&topic("herald.webhooks"), 0, 0, 10)
            .await
            .ok()?;
        (!read.events.is_empty()).then_some(read.events)
    })
    .await;
    assert_eq!(events[0].event.ty, "herald.webhook.endpoint.disabled");
    assert_eq!(
        events[0].event.subject.as_deref(),
        Some(created.endpoint_id.as_str())
    );
    // Re-enabled by hand, it delivers again and forgets its failures.
    let enabled = fixture
        .handle
        .update(
            &created.endpoint_id,
            EndpointPatch {
                enabled: Some(true),
                ..EndpointPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(enabled.state, State::Enabled);
    assert!(enabled.disabled_reason.is_none() && enabled.failing_since.is_none());
    fixture.stop().await;
}

#[tokio::test]
async fn given_a_receiver_answering_410_should_disable_the_endpoint_at_once() {
    let (addr, receiver) = Receiver::start(StatusCode::GONE).await;
    let fixture = Fixture::start(fast_options()).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    fixture.publish(&[("e1", "a")]).await;
    let view = until("disabled", async || {
        let view = fixture.handle.get(&created.endpoint_id).await.unwrap();
        (view.state == State::Disabled).then_some(view)
    })
    .await;
    assert_eq!(
        view.disabled_reason.as_deref(),
        Some("the receiver answered 410 Gone")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.got().len(), 1, "nothing more once disabled");
    fixture.stop().await;
}

#[tokio::test]
async fn given_a_delivered_message_when_redelivered_by_hand_should_send_it_again_and_log_it() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    let fixture = Fixture::start(fast_options()).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    fixture.publish(&[("e1", "a")]).await;
    until("a delivery", async || {
        (!receiver.got().is_empty()).then_some(())
    })
    .await;
    let message = receiver.got()[0].id();
    // Redelivered as a user would: once the attempt log shows the first
    // attempt (the manual one is numbered after those logged).
    until("the first attempt logged", async || {
        let attempts = fixture.attempts(&created.endpoint_id, None).await;
        (!attempts.is_empty()).then_some(())
    })
    .await;
    fixture
        .handle
        .redeliver(&created.endpoint_id, &message)
        .await
        .unwrap();
    until("a second delivery", async || {
        (receiver.got().len() >= 2).then_some(())
    })
    .await;
    assert_eq!(receiver.got()[1].id(), message);
    let attempts = until("the manual attempt logged", async || {
        let attempts = fixture.attempts(&created.endpoint_id, None).await;
        (attempts.len() >= 2).then_some(attempts)
    })
    .await;
    assert_eq!(attempts[0].trigger, herald_webhooks::store::Trigger::Manual);
    assert_eq!(attempts[0].attempt, 2);
    // An unknown message, or one of another topic: 404.
    let missing = fixture
        .handle
        .redeliver(&created.endpoint_id, "orders.0.999")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), "message_not_found");
    let other = fixture
        .handle
        .redeliver(&created.endpoint_id, "payments.0.0")
        .await
        .unwrap_err();
    assert_eq!(other.code(), "message_not_found");
    fixture.stop().await;
}

#[tokio::test]
async fn given_an_ordered_endpoint_should_deliver_each_subject_in_order_one_at_a_time() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    receiver.delay_ms.store(20, Ordering::SeqCst);
    // Each message's first attempt fails: order must hold through retries.
    receiver.fail_first.store(1, Ordering::SeqCst);
    let fixture = Fixture::start(fast_options()).await;
    let mut ordered = spec(addr);
    ordered.ordered = true;
    fixture.handle.create(ordered).await.unwrap();
    let events: Vec<(String, String)> = (0..12)
        .map(|n| (format!("e{n}"), format!("s{}", n % 3)))
        .collect();
    fixture.publish(&events).await;
    until("12 successful deliveries", async || {
        (receiver.got().len() >= 24).then_some(())
    })
    .await;
    // Per subject, first attempts come in publish order, and never two at once.
    let mut per_subject: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for got in receiver.got() {
        let event: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        let id = event["id"].as_str().unwrap().to_owned();
        let list = per_subject.entry(got.subject()).or_default();
        if list.last() != Some(&id) {
            list.push(id);
        }
    }
    for (subject, ids) in &per_subject {
        let expected: Vec<String> = events
            .iter()
            .filter(|(_, s)| s == subject)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(ids, &expected, "order of subject {subject}");
    }
    assert_eq!(
        receiver.in_flight.lock().unwrap().1,
        1,
        "one in flight per subject"
    );
    fixture.stop().await;
}

#[tokio::test]
async fn given_a_restart_while_a_message_waits_for_its_retry_should_deliver_it_after() {
    let (addr, receiver) = Receiver::start(StatusCode::INTERNAL_SERVER_ERROR).await;
    let options = Options {
        schedule: Schedule::from_millis(&[1_000]).unwrap(),
        ..fast_options()
    };
    let fixture = Fixture::start(options.clone()).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    fixture.publish(&[("e1", "a")]).await;
    until("a first attempt", async || {
        (!receiver.got().is_empty()).then_some(())
    })
    .await;
    // Stop while the retry waits (1 s), then start on the same data.
    let dir = fixture.stop().await;
    receiver.status.store(200, Ordering::SeqCst);
    let backend = open_backend(dir.path()).await;
    let (handle, cancel, task) = start_service(&backend, options, LOOPBACK);
    until("the retry after the restart", async || {
        let ok = handle
            .attempts(
                &created.endpoint_id,
                AttemptQuery {
                    status: Some("succeeded".into()),
                    ..AttemptQuery::default()
                },
            )
            .await
            .unwrap();
        (!ok.is_empty()).then_some(())
    })
    .await;
    let got = receiver.got();
    assert!(got.iter().all(|g| g.id() == got[0].id()));
    // At least once: the failed attempt and the retry, nothing lost; at
    // most one more if the restart cut an attempt short.
    assert!((2..=3).contains(&got.len()), "{}", got.len());
    cancel.cancel();
    task.await.unwrap();
    backend.shutdown().await.unwrap();
}

#[tokio::test]
async fn given_a_rotated_secret_should_sign_with_both_until_the_overlap_ends() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    let fixture = Fixture::start(fast_options()).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    let old = Secret::parse(created.secret.as_deref().unwrap()).unwrap();
    let new = fixture
        .handle
        .rotate_secret(&created.endpoint_id, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    let new = Secret::parse(&new).unwrap();
    // The rotation holds for deliveries once the call returns.
    fixture.publish(&[("e1", "a")]).await;
    let got = until("a delivery", async || receiver.got().first().cloned()).await;
    let signature = got.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    verify_got(&old, &got);
    verify_got(&new, &got);
    fixture.stop().await;
}

#[tokio::test]
async fn given_refused_targets_when_created_should_answer_target_not_allowed() {
    // The default policy: public addresses only.
    let fixture = Fixture::start_with(fast_options(), &[]).await;
    for url in [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/hook",
        "http://192.168.0.1/",
        "http://127.0.0.1:9/hook",
        // A name that resolves to loopback.
        "http://localhost:9/hook",
    ] {
        let mut bad = spec("127.0.0.1:9".parse().unwrap());
        bad.url = url.into();
        let error = fixture.handle.create(bad).await.unwrap_err();
        assert_eq!(error.code(), "target_not_allowed", "{url}: {error}");
    }
    assert!(
        fixture.handle.list().await.unwrap().is_empty(),
        "nothing stored"
    );
    fixture.stop().await;
}

#[tokio::test]
async fn given_a_deleted_endpoint_should_stop_delivering_and_forget_its_attempts() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    let fixture = Fixture::start(fast_options()).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    fixture.publish(&[("e1", "a")]).await;
    until("a delivery", async || {
        (!receiver.got().is_empty()).then_some(())
    })
    .await;
    until("its attempt logged", async || {
        let attempts = fixture.attempts(&created.endpoint_id, None).await;
        (!attempts.is_empty()).then_some(())
    })
    .await;
    fixture.handle.delete(&created.endpoint_id).await.unwrap();
    assert_eq!(
        fixture
            .handle
            .get(&created.endpoint_id)
            .await
            .unwrap_err()
            .code(),
        "endpoint_not_found"
    );
    let keys = fixture
        .backend
        .kv_keys(herald_webhooks::store::ATTEMPTS_BUCKET, "", None, 10)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    fixture.publish(&[("e2", "a")]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.ids().len(), 1);
    fixture.stop().await;
}

/// The receiver's next line, read off the runtime's worker (the read blocks).
fn next_line(python: &mut super::PythonReceiver) -> String {
    tokio::task::block_in_place(|| python.next_line())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_the_reference_library_as_receiver_should_verify_every_delivery_through_rotations() {
    let first = Secret::from_bytes(&[7; 32]).unwrap().to_string();
    let Some(mut python) = super::PythonReceiver::start(std::slice::from_ref(&first)) else {
        return;
    };
    let fixture = Fixture::start(fast_options()).await;
    let mut with_secret = spec(format!("127.0.0.1:{}", python.port).parse().unwrap());
    with_secret.secret = Some(first.clone());
    let created = fixture.handle.create(with_secret).await.unwrap();
    assert_eq!(created.secret.as_deref(), Some(first.as_str()));

    fixture.publish(&[("e1", "a")]).await;
    let line = next_line(&mut python);
    assert!(
        line.starts_with("ok orders.") && line.ends_with(" 0"),
        "{line}"
    );

    // Rotated with an hour's overlap: both secrets sign.
    let second = fixture
        .handle
        .rotate_secret(&created.endpoint_id, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    python.add_secret(&second);
    fixture.publish(&[("e2", "a")]).await;
    let line = next_line(&mut python);
    assert!(line.ends_with(" 0,1"), "both verify: {line}");

    // Rotated with no overlap: only the newest signs.
    let third = fixture
        .handle
        .rotate_secret(&created.endpoint_id, Some(Duration::ZERO))
        .await
        .unwrap();
    python.add_secret(&third);
    fixture.publish(&[("e3", "a")]).await;
    let line = next_line(&mut python);
    assert!(line.ends_with(" 2"), "only the third verifies: {line}");
    fixture.stop().await;
}

#[tokio::test]
async fn given_a_rate_limit_should_space_deliveries_to_it() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    let fixture = Fixture::start(fast_options()).await;
    let mut limited = spec(addr);
    limited.rate_limit_per_s = Some(20);
    fixture.handle.create(limited).await.unwrap();
    let events: Vec<(String, String)> = (0..10)
        .map(|n| (format!("e{n}"), format!("s{n}")))
        .collect();
    fixture.publish(&events).await;
    until("10 deliveries", async || {
        (receiver.got().len() >= 10).then_some(())
    })
    .await;
    let got = receiver.got();
    // 20/s: one every 50 ms, so nine gaps take 450 ms at least (the first
    // goes at once).
    let spread = got[9].at - got[0].at;
    assert!(spread >= Duration::from_millis(440), "{spread:?}");
    fixture.stop().await;
}

#[tokio::test]
async fn given_attempts_older_than_the_retention_should_be_swept() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    let options = Options {
        attempt_retention: Duration::from_millis(300),
        sweep_interval: Duration::from_millis(50),
        ..fast_options()
    };
    let fixture = Fixture::start(options).await;
    let created = fixture.handle.create(spec(addr)).await.unwrap();
    fixture.publish(&[("e1", "a")]).await;
    until("a delivery", async || {
        (!receiver.got().is_empty()).then_some(())
    })
    .await;
    let message = receiver.got()[0].id();
    let by_message = async || {
        fixture
            .handle
            .attempts(
                &created.endpoint_id,
                AttemptQuery {
                    message_id: Some(message.clone()),
                    ..AttemptQuery::default()
                },
            )
            .await
            .unwrap()
    };
    until("its attempt logged, and found by its message", async || {
        let all = fixture.attempts(&created.endpoint_id, None).await;
        let found = by_message().await;
        (!all.is_empty() && found.len() == all.len() && found[0] == all[0]).then_some(())
    })
    .await;
    // Gone from both indexes once older than the retention: the stored
    // keys, not only the listings (which read through the first index).
    let keys = async |bucket: &str| {
        fixture
            .backend
            .kv_keys(bucket, &format!("{}/", created.endpoint_id), None, 100)
            .await
            .unwrap()
    };
    until("the attempt swept", async || {
        let swept = keys(ATTEMPTS_BUCKET).await.is_empty()
            && keys(BY_OFFSET_BUCKET).await.is_empty()
            && keys(BY_MESSAGE_BUCKET).await.is_empty()
            && by_message().await.is_empty();
        swept.then_some(())
    })
    .await;
    fixture.stop().await;
}

#[tokio::test]
async fn given_an_endpoint_on_the_job_events_topic_should_receive_job_transitions_by_filter() {
    let (addr, receiver) = Receiver::start(StatusCode::OK).await;
    let fixture = Fixture::start(fast_options()).await;
    let jobs = herald_jobs::Service::start(
        Arc::clone(&fixture.backend) as Arc<dyn Backend>,
        herald_jobs::Options::default(),
        Arc::new(herald_jobs::SystemClock),
    )
    .await
    .unwrap()
    .handle();
    // The job events topic exists once a job was submitted.
    let first = jobs
        .submit(
            "thumbs",
            serde_json::from_value(serde_json::json!({"data": 1})).unwrap(),
        )
        .await
        .unwrap();
    // An endpoint starts at the events appended from its creation's
    // millisecond on: the first job's event must be in an earlier one.
    let published = fixture
        .backend
        .read(&topic("herald.jobs"), 0, 0, 10)
        .await
        .unwrap()
        .events
        .iter()
        .map(|event| event.appended_at)
        .max()
        .unwrap();
    until("a later millisecond", async || {
        (now_ms() > published).then_some(())
    })
    .await;
    let mut on_jobs = spec(addr);
    on_jobs.filter = Filter {
        topics: vec!["herald.jobs".into()],
        types: vec!["herald.job.*ed".into()],
        subject_prefix: None,
    };
    fixture.handle.create(on_jobs).await.unwrap();
    let second = jobs
        .submit(
            "thumbs",
            serde_json::from_value(serde_json::json!({"data": 2})).unwrap(),
        )
        .await
        .unwrap();
    // herald.job.submitted matches `herald.job.*ed`; the first job's was
    // published before the endpoint existed.
    let got = until("the second job's transition", async || {
        receiver.got().first().cloned()
    })
    .await;
    let event: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(event["type"], "herald.job.submitted");
    assert_eq!(event["subject"], second.job_id.as_str());
    assert_ne!(event["subject"], first.job_id.as_str());
    drop(jobs);
    fixture.stop().await;
}
