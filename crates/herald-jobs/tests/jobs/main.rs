//! The job service on the real embedded backend, in process: what a submit
//! or an update leaves behind when its caller goes away at each await point,
//! and how effects that fail after their compare-and-set are retried.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
#![allow(
    clippy::async_yields_async,
    reason = "the cancellation harness's setup yields the operation under test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_backend::cancel::{Outcome, drop_at_each_await};
use herald_backend::{Backend, Events, Groups, Kv, TopicSpec, Topics};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_jobs::{
    BLOB_REFS_BUCKET, CompleteRequest, Handle, JOBS_BUCKET, Job, JobRequest, Options, PartInput,
    Service, Status, SubmitRequest, SystemClock, TIMERS_BUCKET,
};
use herald_log::LogMetrics;
use herald_types::TopicName;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(10);
const BLOB: &str = "sha256:5e0f1b9ddc08b0eb2bfcb3a6c5f5e0e8f8ae0c9e4ce05d6a1f6f1c6b1e3e7a90";
/// Polls an operation through at most this many awaits.
const MAX_POLLS: usize = 400;

struct Fixture {
    _dir: tempfile::TempDir,
    backend: Arc<EmbeddedBackend>,
    handle: Handle,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(
            EmbeddedBackend::open(EmbeddedOptions::new(dir.path()), LogMetrics::new())
                .await
                .unwrap(),
        );
        let service = Service::start(
            Arc::clone(&backend) as Arc<dyn Backend>,
            options,
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        let handle = service.handle();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(service.run(cancel.clone()));
        Self {
            _dir: dir,
            backend,
            handle,
            cancel,
            task,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
        self.backend.shutdown().await.unwrap();
    }
}

fn options() -> Options {
    Options {
        timer_interval: Duration::from_millis(20),
        ..Options::default()
    }
}

fn scatter(parts: &[&str], blob: bool) -> SubmitRequest {
    SubmitRequest {
        data: json!({"scatter": true}),
        blob: blob.then(|| BLOB.to_owned()),
        parts: Some(
            parts
                .iter()
                .map(|key| PartInput {
                    key: (*key).to_owned(),
                    data: json!(key),
                })
                .collect(),
        ),
        deadline_ms: Some(3_600_000),
        result_ttl_ms: None,
        notify: None,
        traceparent: None,
        correlationid: None,
        causationid: None,
    }
}

fn topic(name: &str) -> TopicName {
    name.parse().unwrap()
}

/// Stores `record` a moment from now, as a submit does after publishing.
fn store_later(fixture: &Fixture, record: Job) -> tokio::task::JoinHandle<()> {
    let backend = Arc::clone(&fixture.backend);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        backend
            .kv_put(
                JOBS_BUCKET,
                &record.job_id,
                serde_json::to_vec(&record).unwrap().into(),
                herald_backend::Expect::Absent,
            )
            .await
            .unwrap();
    })
}

/// A worker's outcome for `part`: `result` or a `result_blob`.
fn outcome(
    part: Option<&str>,
    result: Option<serde_json::Value>,
    result_blob: Option<String>,
) -> CompleteRequest {
    CompleteRequest {
        part: part.map(str::to_owned),
        outcome: herald_jobs::Outcome {
            result,
            result_blob,
            error: None,
        },
        delivery_id: None,
    }
}

/// Every job request on a queue's topic: job id → parts requested.
async fn requests(backend: &EmbeddedBackend, queue: &str) -> BTreeMap<String, BTreeSet<String>> {
    let topic = topic(&format!("jobs.{queue}"));
    let partitions = backend
        .describe_topic(&topic)
        .await
        .unwrap()
        .partition_info
        .len() as u32;
    let mut requested: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for partition in 0..partitions {
        let mut from = 0;
        loop {
            let read = backend.read(&topic, partition, from, 1_000).await.unwrap();
            if read.events.is_empty() {
                break;
            }
            from = read.next_offset;
            for event in read.events {
                let request: JobRequest =
                    serde_json::from_slice(event.event.data.as_deref().unwrap()).unwrap();
                requested
                    .entry(request.job_id)
                    .or_default()
                    .insert(request.part.unwrap_or_default());
            }
        }
    }
    requested
}

/// Every stored job record.
async fn records(backend: &EmbeddedBackend) -> Vec<Job> {
    let keys = backend
        .kv_keys(JOBS_BUCKET, "", None, 100_000)
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for key in keys {
        if let Some(entry) = backend.kv_get(JOBS_BUCKET, &key).await.unwrap() {
            jobs.push(serde_json::from_slice(&entry.value).unwrap());
        }
    }
    jobs
}

async fn keys(backend: &EmbeddedBackend, bucket: &str) -> Vec<String> {
    backend.kv_keys(bucket, "", None, 100_000).await.unwrap()
}

/// The kinds of transition events published for `job_id`.
async fn transitions(backend: &EmbeddedBackend, job_id: &str) -> Vec<String> {
    let events = topic("herald.jobs");
    let mut kinds = Vec::new();
    let mut from = 0;
    loop {
        let read = match backend.read(&events, 0, from, 1_000).await {
            Ok(read) => read,
            Err(herald_backend::Error::TopicNotFound { .. }) => return kinds,
            Err(error) => panic!("{error}"),
        };
        if read.events.is_empty() {
            return kinds;
        }
        from = read.next_offset;
        for event in read.events {
            if event.event.subject.as_deref() == Some(job_id) {
                kinds.push(event.event.ty.trim_start_matches("herald.job.").to_owned());
            }
        }
    }
}

/// Waits until `condition` holds, failing with `what` after [`LONG`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + LONG;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every recorded job has all its requests on the queue, its deadline timer
/// and its blob pin: none is left that never runs or never ends.
async fn assert_every_recorded_job_is_dispatched(backend: &EmbeddedBackend, queue: &str) {
    let requested = requests(backend, queue).await;
    let timers = keys(backend, TIMERS_BUCKET).await;
    let pins = keys(backend, BLOB_REFS_BUCKET).await;
    for job in records(backend).await {
        let parts: BTreeSet<String> = job.parts.iter().map(|part| part.key.clone()).collect();
        assert_eq!(
            requested.get(&job.job_id),
            Some(&parts),
            "job {} is recorded but not (fully) dispatched",
            job.job_id
        );
        let deadline = format!(".deadline.{}", job.job_id);
        assert!(
            timers.iter().any(|key| key.ends_with(&deadline)),
            "job {} has no deadline timer",
            job.job_id
        );
        if let Some(blob) = &job.blob {
            assert!(
                pins.contains(&format!("{blob}/{}", job.job_id)),
                "job {} does not pin its blob",
                job.job_id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_submit_dropped_at_each_await_should_leave_every_recorded_job_dispatched() {
    let fixture = Fixture::start(options()).await;
    // The queue's topics and groups exist: the drops hit the submit itself.
    fixture
        .handle
        .submit("q", scatter(&["warm"], false))
        .await
        .unwrap();
    let polls = drop_at_each_await(
        MAX_POLLS,
        |_| {
            let handle = fixture.handle.clone();
            async move { async move { handle.submit("q", scatter(&["a", "b"], true)).await } }
        },
        |outcome| {
            let backend = Arc::clone(&fixture.backend);
            if let Outcome::Finished(_, submitted) = &outcome {
                assert_eq!(submitted.as_ref().unwrap().status, Status::Pending);
            }
            async move {
                // Work a dropped submit finishes on its own may still run:
                // wait until two looks agree.
                let deadline = Instant::now() + LONG;
                let mut previous = None;
                loop {
                    let now = (
                        records(&backend).await.len(),
                        requests(&backend, "q").await,
                        keys(&backend, TIMERS_BUCKET).await,
                        keys(&backend, BLOB_REFS_BUCKET).await,
                    );
                    if previous.as_ref() == Some(&now) {
                        break;
                    }
                    previous = Some(now);
                    assert!(Instant::now() < deadline, "the stored state never settles");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert_every_recorded_job_is_dispatched(&backend, "q").await;
            }
        },
    )
    .await;
    assert!(polls > 2, "the submit never reached an await point");
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_complete_dropped_at_each_await_should_store_all_of_its_outcome_or_none() {
    let fixture = Fixture::start(options()).await;
    let result_blob = |polls: usize| format!("sha256:{:064x}", polls);
    drop_at_each_await(
        MAX_POLLS,
        |polls| {
            let handle = fixture.handle.clone();
            async move {
                let job = handle.submit("q", scatter(&["only"], false)).await.unwrap();
                let request = outcome(Some("only"), None, Some(result_blob(polls)));
                let job_id = job.job_id.clone();
                async move { (job_id.clone(), handle.complete(&job_id, request).await) }
            }
        },
        |outcome| {
            let (backend, handle) = (Arc::clone(&fixture.backend), fixture.handle.clone());
            let (polls, job_id) = match &outcome {
                Outcome::Finished(polls, (job_id, completed)) => {
                    assert_eq!(completed.as_ref().unwrap().status, Status::Succeeded);
                    (*polls, Some(job_id.clone()))
                }
                Outcome::Dropped(polls) => (*polls, None),
            };
            async move {
                // Find the job of this round: the one pinning its result blob
                // or the newest.
                let jobs = records(&backend).await;
                let job = match job_id {
                    Some(id) => jobs.into_iter().find(|job| job.job_id == id).unwrap(),
                    None => jobs
                        .into_iter()
                        .max_by_key(|job| job.job_id.clone())
                        .unwrap(),
                };
                // Either the outcome is stored, with everything it implies,
                // or nothing of it is. (Work a dropped complete finishes on
                // its own may still be running: give it a moment.)
                let job = handle
                    .wait(&job.job_id, Duration::from_millis(500))
                    .await
                    .unwrap();
                if job.status != Status::Succeeded {
                    assert!(
                        !keys(&backend, BLOB_REFS_BUCKET)
                            .await
                            .iter()
                            .any(|key| key.ends_with(&job.job_id)),
                        "an outcome that was not stored left its pin"
                    );
                    return;
                }
                let pin = format!("{}/{}", result_blob(polls), job.job_id);
                let expire = format!(".expire.{}", job.job_id);
                eventually("the result blob is pinned", || {
                    let backend = Arc::clone(&backend);
                    let pin = pin.clone();
                    async move { keys(&backend, BLOB_REFS_BUCKET).await.contains(&pin) }
                })
                .await;
                eventually("the expiry timer is stored", || {
                    let backend = Arc::clone(&backend);
                    let expire = expire.clone();
                    async move {
                        keys(&backend, TIMERS_BUCKET)
                            .await
                            .iter()
                            .any(|key| key.ends_with(&expire))
                    }
                })
                .await;
                eventually("the succeeded event is published", || {
                    let backend = Arc::clone(&backend);
                    let job_id = job.job_id.clone();
                    async move {
                        transitions(&backend, &job_id)
                            .await
                            .contains(&"succeeded".to_owned())
                    }
                })
                .await;
            }
        },
    )
    .await;
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_transition_event_that_fails_to_publish_should_be_retried_until_it_is() {
    let fixture = Fixture::start(options()).await;
    let job = fixture
        .handle
        .submit("q", scatter(&["only"], false))
        .await
        .unwrap();
    // The events topic is gone: the `succeeded` event cannot be published.
    fixture
        .backend
        .delete_topic(&topic("herald.jobs"))
        .await
        .unwrap();
    let request = outcome(Some("only"), Some(json!(1)), None);
    let done = fixture.handle.complete(&job.job_id, request).await.unwrap();
    assert_eq!(done.status, Status::Succeeded);
    fixture
        .backend
        .create_topic(TopicSpec::new(topic("herald.jobs")))
        .await
        .unwrap();
    eventually(
        "the failed transition event is published once possible",
        || {
            let backend = Arc::clone(&fixture.backend);
            let job_id = job.job_id.clone();
            async move {
                transitions(&backend, &job_id)
                    .await
                    .contains(&"succeeded".to_owned())
            }
        },
    )
    .await;
    fixture.stop().await;
}

/// Publishes the request of a job that has no record (as a submit that
/// crashed before storing it leaves), pinning its blob as that submit did.
async fn orphan_request(fixture: &Fixture, job_id: &str) {
    let request = JobRequest {
        job_id: job_id.to_owned(),
        queue: "q".into(),
        part: None,
        data: json!({}),
        blob: Some(BLOB.into()),
    };
    let mut event = herald_types::Event::new(job_id, "/test", "herald.job.request");
    event.key = Some(job_id.to_owned());
    event.data = Some(serde_json::to_vec(&request).unwrap().into());
    fixture
        .backend
        .publish(
            &topic("jobs.q"),
            vec![herald_types::EventInput {
                event,
                partition: None,
            }],
        )
        .await
        .unwrap();
    fixture
        .backend
        .kv_put(
            BLOB_REFS_BUCKET,
            &format!("{BLOB}/{job_id}"),
            bytes::Bytes::new(),
            herald_backend::Expect::Any,
        )
        .await
        .unwrap();
}

fn fetch_request(wait_ms: u64) -> herald_backend::FetchRequest {
    herald_backend::FetchRequest {
        member: "worker".into(),
        max: 10,
        wait_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_request_of_a_job_never_stored_should_be_discarded_after_the_grace_with_its_pin() {
    let fixture = Fixture::start(Options {
        orphan_grace_ms: 2_000,
        ..options()
    })
    .await;
    fixture
        .handle
        .submit("q", scatter(&["warm"], false))
        .await
        .unwrap();
    let warm = fixture
        .handle
        .fetch("q", fetch_request(5_000))
        .await
        .unwrap();
    assert_eq!(warm.len(), 1);
    let orphan = uuid::Uuid::now_v7().to_string();
    orphan_request(&fixture, &orphan).await;
    // Young: not handed out (its record may be on its way), not discarded.
    let young = fixture.handle.fetch("q", fetch_request(0)).await.unwrap();
    assert!(young.is_empty());
    let pin = format!("{BLOB}/{orphan}");
    assert!(
        keys(&fixture.backend, BLOB_REFS_BUCKET)
            .await
            .contains(&pin)
    );
    // Past the grace it is discarded, its pin removed, and it never returns.
    eventually("the orphan's pin is removed", || {
        let (handle, backend, pin) = (
            fixture.handle.clone(),
            Arc::clone(&fixture.backend),
            pin.clone(),
        );
        async move {
            let fetched = handle.fetch("q", fetch_request(200)).await.unwrap();
            assert!(fetched.is_empty(), "an orphan request was handed out");
            !keys(&backend, BLOB_REFS_BUCKET).await.contains(&pin)
        }
    })
    .await;
    let status = fixture
        .backend
        .group_status(&topic("jobs.q"), &"workers".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        status.in_flight + status.pending,
        1,
        "only the warm-up is left"
    );
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_request_ahead_of_its_record_should_be_delivered_once_the_record_is_stored() {
    let fixture = Fixture::start(options()).await;
    let template = fixture
        .handle
        .submit("q", scatter(&["warm"], false))
        .await
        .unwrap();
    fixture
        .handle
        .fetch("q", fetch_request(5_000))
        .await
        .unwrap();
    let job_id = uuid::Uuid::now_v7().to_string();
    orphan_request(&fixture, &job_id).await;
    let record = Job {
        job_id: job_id.clone(),
        parts: Vec::new(),
        blob: Some(BLOB.into()),
        ..template
    };
    let store = store_later(&fixture, record);
    let fetched = fixture
        .handle
        .fetch("q", fetch_request(5_000))
        .await
        .unwrap();
    store.await.unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].request.job_id, job_id);
    assert_eq!(
        fixture.handle.get(&job_id).await.unwrap().status,
        Status::Running
    );
    fixture.stop().await;
}

/// Blob storage as a set, to drive the collector protocol step by step.
#[derive(Debug, Default)]
struct Stored(std::sync::Mutex<BTreeSet<String>>);

impl herald_jobs::BlobStorage for Stored {
    fn exists<'a>(
        &'a self,
        blob: &'a str,
    ) -> herald_jobs::blobs::BoxFuture<'a, Result<bool, String>> {
        let found = self.0.lock().unwrap().contains(blob);
        Box::pin(async move { Ok(found) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_collection_in_progress_when_a_job_pins_the_blob_should_refuse_the_job_and_leave_no_pin()
 {
    let stored = Arc::new(Stored::default());
    stored.0.lock().unwrap().insert(BLOB.to_owned());
    let fixture = Fixture::start(Options {
        blob_storage: Some(Arc::clone(&stored) as Arc<dyn herald_jobs::BlobStorage>),
        ..options()
    })
    .await;
    let backend: Arc<dyn Backend> = Arc::clone(&fixture.backend) as Arc<dyn Backend>;
    fixture
        .handle
        .submit("q", scatter(&["warm"], false))
        .await
        .unwrap();
    // The collector has checked: nothing references the blob.
    assert!(
        herald_jobs::blobs::begin_collection(&*backend, BLOB)
            .await
            .unwrap()
    );
    // A submit pins it meanwhile, and waits for the collection to end...
    let submit = {
        let handle = fixture.handle.clone();
        tokio::spawn(async move { handle.submit("q", scatter(&["a"], true)).await })
    };
    eventually("the submit has pinned the blob", || {
        let backend = Arc::clone(&fixture.backend);
        async move { !keys(&backend, BLOB_REFS_BUCKET).await.is_empty() }
    })
    .await;
    assert!(!submit.is_finished(), "the pin waits for the collection");
    // ...which deletes the blob.
    stored.0.lock().unwrap().remove(BLOB);
    herald_jobs::blobs::end_collection(&*backend, BLOB)
        .await
        .unwrap();
    let refused = submit.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), "blob_not_found");
    assert!(keys(&fixture.backend, BLOB_REFS_BUCKET).await.is_empty());
    assert!(
        records(&fixture.backend)
            .await
            .iter()
            .all(|job| job.blob.is_none()),
        "no job references the deleted blob"
    );
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_pinned_blob_when_the_collector_claims_it_should_keep_it_and_leave_no_claim() {
    let stored = Arc::new(Stored::default());
    stored.0.lock().unwrap().insert(BLOB.to_owned());
    let fixture = Fixture::start(Options {
        blob_storage: Some(Arc::clone(&stored) as Arc<dyn herald_jobs::BlobStorage>),
        ..options()
    })
    .await;
    let backend: Arc<dyn Backend> = Arc::clone(&fixture.backend) as Arc<dyn Backend>;
    let job = fixture
        .handle
        .submit("q", scatter(&["a"], true))
        .await
        .unwrap();
    assert!(
        !herald_jobs::blobs::begin_collection(&*backend, BLOB)
            .await
            .unwrap(),
        "a pinned blob is not collected"
    );
    assert!(
        herald_jobs::blobs::collections_in_progress(&*backend)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        fixture
            .handle
            .get(&job.job_id)
            .await
            .unwrap()
            .blob
            .as_deref(),
        Some(BLOB)
    );
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_worker_completing_a_job_just_ahead_of_its_record_should_complete_it() {
    // A worker consuming `jobs.<queue>` with its own group may report on a
    // request before its submit has stored the record (requests go first).
    let fixture = Fixture::start(options()).await;
    let template = fixture
        .handle
        .submit("q", scatter(&["warm"], false))
        .await
        .unwrap();
    let job_id = uuid::Uuid::now_v7().to_string();
    let record = Job {
        job_id: job_id.clone(),
        parts: Vec::new(),
        ..template
    };
    let store = store_later(&fixture, record);
    let request = outcome(None, Some(json!("done")), None);
    let completed = fixture.handle.complete(&job_id, request).await.unwrap();
    store.await.unwrap();
    assert_eq!(completed.status, Status::Succeeded);
    fixture.stop().await;
}
