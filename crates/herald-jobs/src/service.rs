//! The job service: [`Options`] → [`Service`] (owns the timer and
//! dead-letter loops, `run(cancel)`) → [`Handle`] (cheap to clone; every
//! API call).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use herald_backend::cancel::run_to_completion;
use herald_backend::{
    AckDurability, Backend, Delivery, Expect, FetchRequest, GroupMode, GroupSpec, StartPosition,
    TopicSpec,
};
use herald_types::{Event, EventInput, ExtensionValue, GroupName, TopicName};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::blobs::{self, BlobStorage};
use crate::error::{Error, Result};
use crate::model::{
    self, Applied, Command, CompleteRequest, Effect, Job, ProgressRequest, Status, SubmitLimits,
    SubmitRequest, TimerKind,
};

/// The `Kv` bucket of job records.
pub const JOBS_BUCKET: &str = "jobs";
/// The `Kv` bucket of timers (deadlines, result expiry).
pub const TIMERS_BUCKET: &str = "jobs.timers";

/// The source of every event the service publishes.
const SOURCE: &str = "/herald/jobs";
/// The type of a request event on a queue topic.
const REQUEST_TYPE: &str = "herald.job.request";
/// How often a compare-and-set is retried under contention before giving up.
const MAX_CAS_ATTEMPTS: usize = 64;
/// Timers handled per tick at most (the rest wait for the next tick).
const TIMERS_PER_TICK: usize = 256;
/// Updates buffered for waiters; one that falls behind re-reads the record.
const UPDATES_CAPACITY: usize = 4096;
/// Transition events kept for retry at most (the oldest is dropped).
const MAX_RETRIED_EVENTS: usize = 10_000;
/// How long an update of a job submitted moments ago waits for its record:
/// a submit publishes the job's requests just before storing it, so a
/// worker (one fetching from the queue, or one consuming `jobs.<queue>`
/// with its own group) may report on it first.
const RECORD_WAIT: Duration = Duration::from_millis(500);
/// How soon a request whose record is not there yet is delivered again.
const RECORD_RETRY: Duration = Duration::from_secs(1);

/// Test-only crash points, for crash tests of the real binary: with
/// `TEST_HERALD_FAILPOINT=<name>` in its environment the process aborts
/// (no cleanup, like `kill -9`) when it reaches the point `<name>`. (Not a
/// `HERALD_` variable: those are configuration keys.)
fn failpoint(name: &str) {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("TEST_HERALD_FAILPOINT").ok());
    if point.as_deref() == Some(name) {
        tracing::error!(failpoint = name, "Failpoint reached: aborting.");
        std::process::abort();
    }
}

/// Wall-clock time, injected so tests can control it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Ms since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The service's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Transitions are published here.
    pub events_topic: TopicName,
    /// Every queue topic's dead-letter topic.
    pub dead_letter_topic: TopicName,
    /// The service's group on the dead-letter topic.
    pub dead_letter_group: GroupName,
    /// Workers' group on each queue topic.
    pub worker_group: GroupName,
    /// Partitions of an auto-created queue topic.
    pub queue_partitions: u32,
    /// Workers' lease on a request.
    pub ack_wait_ms: u64,
    /// Deliveries of a request before it is dead-lettered (the job's attempts).
    pub max_attempts: u32,
    /// Redelivery backoff.
    pub backoff_ms: Vec<u64>,
    /// The most parts a job may have.
    pub max_parts: usize,
    /// Result TTL when a submit gives none.
    pub default_result_ttl_ms: u64,
    /// The longest result TTL or deadline.
    pub max_ttl_ms: u64,
    /// How often due timers are looked for (deadline precision).
    pub timer_interval: Duration,
    /// Whether a worker fetch on a queue that does not exist creates it;
    /// otherwise it fails with [`Error::QueueNotFound`] (only a submit
    /// creates a queue).
    pub create_queues_on_fetch: bool,
    /// A request whose job has no record this long after it was published
    /// is an orphan (its submit crashed before the record: the job never
    /// existed) and workers' fetches discard it; a younger one is delivered
    /// again later. Far longer than a submit takes.
    pub orphan_grace_ms: u64,
    /// Where blobs are, to check that a pinned blob still exists (the blob
    /// collector's race, see `blobs.rs`); `None` checks only the collector's
    /// marker.
    pub blob_storage: Option<Arc<dyn BlobStorage>>,
    /// Where transitions and durations are counted.
    pub metrics: Arc<crate::JobMetrics>,
    /// Whether other Herald nodes share the backend (NATS): then the
    /// service follows [`Options::events_topic`] and tells its waiters
    /// (long polls, SSE) of transitions other nodes made too.
    pub follow_other_nodes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            events_topic: name("herald.jobs"),
            dead_letter_topic: name("herald.jobs.dead"),
            dead_letter_group: name("herald-jobs"),
            worker_group: name("workers"),
            queue_partitions: 4,
            ack_wait_ms: 30_000,
            max_attempts: 5,
            backoff_ms: vec![1_000, 5_000, 30_000],
            max_parts: 10_000,
            default_result_ttl_ms: 24 * 3_600_000,
            max_ttl_ms: 30 * 24 * 3_600_000,
            timer_interval: Duration::from_millis(100),
            create_queues_on_fetch: false,
            orphan_grace_ms: 60_000,
            blob_storage: None,
            metrics: Arc::default(),
            follow_other_nodes: false,
        }
    }
}

/// A name known to be valid.
fn name<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    match text.parse() {
        Ok(parsed) => parsed,
        // The callers pass literals that follow the naming rule.
        Err(error) => unreachable!("{text:?} is a valid name: {error:?}"),
    }
}

/// What workers receive: the request of a job or of one of its parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRequest {
    /// The job.
    pub job_id: String,
    /// Its queue.
    pub queue: String,
    /// The part (absent for a job without parts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// The request data (the part's for a part).
    #[serde(default)]
    pub data: Value,
    /// The job's input blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
}

/// One request handed to a worker (`POST /v1/queues/{queue}/fetch`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobDelivery {
    /// Give it to `complete` (or ack/nack it on the queue).
    pub delivery_id: String,
    /// 1 for the first delivery, then 2, 3…
    pub attempt: u32,
    /// The request.
    #[serde(flatten)]
    pub request: JobRequest,
    /// The trace context of this dispatch (W3C `traceparent`; while tracing
    /// is on, or when the job carries one): a worker's span continues it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The data of a transition event on the job events topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEvent {
    /// The job.
    pub job_id: String,
    /// Its queue.
    pub queue: String,
    /// What happened: `submitted`, `running`, `progress`, `part_completed`,
    /// `succeeded`, `failed`, `partial`.
    pub kind: String,
    /// The job's status after it.
    pub status: Status,
    /// Parts done of the total.
    pub done: u32,
    /// Parts in all.
    pub total: u32,
    /// Why it failed or is partial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `partial`: the parts that never reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// The job service; [`Service::run`] drives its loops.
#[derive(Debug)]
pub struct Service {
    shared: Arc<Shared>,
}

/// The API of the job service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    backend: Arc<dyn Backend>,
    options: Options,
    clock: Arc<dyn Clock>,
    updates: broadcast::Sender<Arc<Job>>,
    /// Queues whose topic and group exist (checked once per process).
    queues: Mutex<HashSet<String>>,
    /// Wakes the timer loop, which sleeps while no timer is stored.
    timer_added: tokio::sync::Notify,
    /// Transition events whose publish failed, retried by the timer loop.
    unpublished: Mutex<VecDeque<(Arc<Job>, &'static str)>>,
    /// The last version of each job told to the waiters (this node's
    /// changes, and other nodes' the follower saw), so one is told once.
    told: Mutex<HashMap<String, u64>>,
}

impl Service {
    /// The service over `backend`. Its topics (`herald.jobs`,
    /// `herald.jobs.dead`, `jobs.<queue>`) and groups are created by the
    /// first submit to a queue (a worker fetch creates none unless
    /// [`Options::create_queues_on_fetch`]), so a server that never runs a
    /// job has none of them.
    pub async fn start(
        backend: Arc<dyn Backend>,
        options: Options,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let (updates, _) = broadcast::channel(UPDATES_CAPACITY);
        Ok(Self {
            shared: Arc::new(Shared {
                backend,
                options,
                clock,
                updates,
                queues: Mutex::new(HashSet::new()),
                timer_added: tokio::sync::Notify::new(),
                unpublished: Mutex::new(VecDeque::new()),
                told: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The API.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs the timer loop and the dead-letter loop until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        info!("Job service running.");
        // Timers fire on one node of those sharing a backend at a time.
        let timers = {
            let shared = Arc::clone(&self.shared);
            herald_backend::lease::run_while_held(
                Arc::clone(&self.shared.backend),
                TIMERS_LEASE,
                LEASE_LENGTH,
                cancel.clone(),
                move |stop| {
                    let shared = Arc::clone(&shared);
                    async move { timer_loop(&shared, &stop).await }
                },
            )
        };
        tokio::join!(
            timers,
            dead_letter_loop(&self.shared, &cancel),
            follow_loop(&self.shared, &cancel),
        );
        info!("Job service stopped.");
    }
}

impl Handle {
    /// Submits a job to `queue`: dispatches it, then stores it (see
    /// [`Shared::submit_job`]). Runs to completion once started, even if the
    /// caller goes away.
    pub async fn submit(&self, queue: &str, request: SubmitRequest) -> Result<Job> {
        let job_id = uuid::Uuid::now_v7().to_string();
        self.submit_new(queue, job_id, request).await
    }

    /// Submits a job under `job_id`, a UUIDv7 the caller chose and kept
    /// (a workflow records it before submitting), or answers the job
    /// stored under it already: a caller that submits again after a crash
    /// gets one job. Its requests carry fixed ids, so a repeat that raced
    /// the first submit is absorbed by the queue topic's dedup window.
    pub async fn submit_as(
        &self,
        queue: &str,
        job_id: &str,
        request: SubmitRequest,
    ) -> Result<Job> {
        let valid = uuid::Uuid::parse_str(job_id)
            .is_ok_and(|id| id.get_version() == Some(uuid::Version::SortRand));
        if !valid {
            return Err(Error::invalid("job_id", "a job id is a UUIDv7"));
        }
        match self.get(job_id).await {
            Ok(job) => return Ok(job),
            Err(Error::JobNotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        self.submit_new(queue, job_id.to_owned(), request).await
    }

    async fn submit_new(&self, queue: &str, job_id: String, request: SubmitRequest) -> Result<Job> {
        let shared = &self.shared;
        let topic = shared.queue_topic(queue)?;
        let options = &shared.options;
        let limits = SubmitLimits {
            max_parts: options.max_parts,
            max_key_bytes: herald_types::MAX_NAME_LEN,
            default_result_ttl_ms: options.default_result_ttl_ms,
            max_ttl_ms: options.max_ttl_ms,
        };
        let now = shared.clock.now_ms();
        let span = herald_trace::hop!(
            "job.submit",
            request.traceparent.as_deref(),
            herald.job_id = %job_id,
            herald.queue = queue,
        );
        let (mut job, effects) = model::new_job(job_id, queue.to_owned(), request, limits, now)?;
        if let Some(context) = herald_trace::traceparent(&span) {
            job.traceparent = Some(context);
        }
        let requests = requests_of(&job)?;
        shared.ensure_queue(queue, &topic).await?;
        let shared = Arc::clone(&self.shared);
        run_to_completion(async move { shared.submit_job(&topic, job, effects, requests).await })
            .await
    }

    /// The job.
    pub async fn get(&self, job_id: &str) -> Result<Job> {
        self.shared.load(job_id).await.map(|(job, _)| job)
    }

    /// The job once it has ended, or as it is after `wait`.
    pub async fn wait(&self, job_id: &str, wait: Duration) -> Result<Job> {
        let mut updates = self.shared.updates.subscribe();
        let job = self.get(job_id).await?;
        if job.status.is_terminal() || wait.is_zero() {
            return Ok(job);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, updates.recv()).await {
                Err(_elapsed) => return self.get(job_id).await,
                Ok(Ok(update)) if update.job_id == job_id && update.status.is_terminal() => {
                    return Ok((*update).clone());
                }
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let job = self.get(job_id).await?;
                    if job.status.is_terminal() {
                        return Ok(job);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return self.get(job_id).await,
            }
        }
    }

    /// Every stored change of every job, as it happens (subscribe before
    /// reading the job, then filter by id). A receiver that lags must
    /// re-read the job.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Job>> {
        self.shared.updates.subscribe()
    }

    /// A worker's progress report; extends the delivery's lease if given.
    pub async fn progress(&self, job_id: &str, request: ProgressRequest) -> Result<Job> {
        let command = Command::Progress {
            part: request.part,
            progress: request.progress,
            message: request.message,
        };
        let job = self.shared.update(job_id, &command).await?;
        if let Some(delivery_id) = request.delivery_id {
            let topic = self.shared.queue_topic(&job.queue)?;
            let group = &self.shared.options.worker_group;
            self.shared
                .backend
                .extend(&topic, group, &[delivery_id], None, AckDurability::Async)
                .await?;
        }
        Ok(job)
    }

    /// A worker's outcome for the job or one part; idempotent per part. Acks
    /// the delivery, if given, once the outcome is stored.
    pub async fn complete(&self, job_id: &str, request: CompleteRequest) -> Result<Job> {
        let command = Command::Complete {
            part: request.part,
            outcome: request.outcome,
        };
        let job = self.shared.update(job_id, &command).await?;
        if let Some(delivery_id) = request.delivery_id {
            let topic = self.shared.queue_topic(&job.queue)?;
            let group = &self.shared.options.worker_group;
            self.shared
                .backend
                .ack(&topic, group, &[delivery_id], AckDurability::Async)
                .await?;
        }
        Ok(job)
    }

    /// Hands `member` up to `max` requests of `queue`, waiting up to
    /// `wait_ms`. Requests of jobs that have ended (or expired) are acked and
    /// skipped; the others mark their job `running`.
    pub async fn fetch(&self, queue: &str, request: FetchRequest) -> Result<Vec<JobDelivery>> {
        let shared = &self.shared;
        let topic = shared.queue_topic(queue)?;
        shared.ensure_queue_for_fetch(queue, &topic).await?;
        let fetched = shared
            .backend
            .fetch(&topic, &shared.options.worker_group, request)
            .await?;
        let mut deliveries = Vec::with_capacity(fetched.deliveries.len());
        let mut stale = Vec::new();
        for delivery in fetched.deliveries {
            let Some(request) = decode_request(&delivery) else {
                warn!(queue, delivery = %delivery.delivery_id, "Not a job request; dead-lettering it.");
                shared
                    .backend
                    .reject(
                        &topic,
                        &shared.options.worker_group,
                        std::slice::from_ref(&delivery.delivery_id),
                        "not a job request",
                        AckDurability::Async,
                    )
                    .await?;
                continue;
            };
            match shared.start(&request).await? {
                Started::Deliver => {
                    let traceparent = delivery.event.event.traceparent.as_deref();
                    let span = herald_trace::hop!(
                        "job.dispatch",
                        traceparent,
                        otel.kind = "consumer",
                        herald.job_id = %request.job_id,
                        herald.queue = queue,
                        herald.attempt = delivery.attempt,
                    );
                    let traceparent =
                        herald_trace::traceparent(&span).or_else(|| traceparent.map(str::to_owned));
                    deliveries.push(JobDelivery {
                        delivery_id: delivery.delivery_id,
                        attempt: delivery.attempt,
                        request,
                        traceparent,
                    });
                }
                Started::Stale => stale.push(delivery.delivery_id),
                Started::Later => {
                    shared
                        .backend
                        .nack(
                            &topic,
                            &shared.options.worker_group,
                            std::slice::from_ref(&delivery.delivery_id),
                            Some(RECORD_RETRY),
                            AckDurability::Async,
                        )
                        .await?;
                }
            }
        }
        if !stale.is_empty() {
            debug!(
                queue,
                count = stale.len(),
                "Skipped requests of ended jobs."
            );
            shared
                .backend
                .ack(
                    &topic,
                    &shared.options.worker_group,
                    &stale,
                    AckDurability::Async,
                )
                .await?;
        }
        Ok(deliveries)
    }

    /// Acks deliveries of `queue` (a worker that completes with
    /// `delivery_id` need not).
    pub async fn ack(&self, queue: &str, delivery_ids: &[String]) -> Result<u64> {
        let topic = self.shared.queue_topic(queue)?;
        let outcome = self
            .shared
            .backend
            .ack(
                &topic,
                &self.shared.options.worker_group,
                delivery_ids,
                AckDurability::Async,
            )
            .await?;
        Ok(outcome.acked)
    }

    /// Returns deliveries of `queue` for redelivery after `delay` (or the
    /// backoff).
    pub async fn nack(
        &self,
        queue: &str,
        delivery_ids: &[String],
        delay: Option<Duration>,
    ) -> Result<u64> {
        let topic = self.shared.queue_topic(queue)?;
        let outcome = self
            .shared
            .backend
            .nack(
                &topic,
                &self.shared.options.worker_group,
                delivery_ids,
                delay,
                AckDurability::Async,
            )
            .await?;
        Ok(outcome.acked)
    }

    /// The topic of `queue` (`jobs.<queue>`), for workers that consume it
    /// with their own groups.
    pub fn queue_topic(&self, queue: &str) -> Result<TopicName> {
        self.shared.queue_topic(queue)
    }
}

/// What a worker's fetch does with one request.
enum Started {
    /// Hand it to the worker.
    Deliver,
    /// Its job or part has ended, or it never existed: ack it.
    Stale,
    /// Its job's record is not there yet: deliver it again later.
    Later,
}

/// The blobs a job references (its input and result blobs).
fn blobs_of(job: &Job) -> impl Iterator<Item = &String> {
    job.blob.iter().chain(job.result_blob.iter()).chain(
        job.parts
            .iter()
            .filter_map(|part| part.outcome.result_blob.as_ref()),
    )
}

/// Whether the request still has work to do: its job has not ended and its
/// part has not reported.
fn part_is_pending(job: &Job, request: &JobRequest) -> bool {
    !job.status.is_terminal()
        && request.part.as_ref().is_none_or(|key| {
            job.parts
                .iter()
                .any(|part| &part.key == key && part.status == model::PartStatus::Pending)
        })
}

impl Shared {
    fn queue_topic(&self, queue: &str) -> Result<TopicName> {
        format!("jobs.{queue}")
            .parse()
            .map_err(|error: herald_types::InvalidName| Error::invalid("queue", error.to_string()))
    }

    /// Creates the queue's topic (with the dead-letter topic) and its
    /// worker group, once per process; the first time, also the job events
    /// topic, the dead-letter topic and the service's group on it.
    async fn ensure_queue(&self, queue: &str, topic: &TopicName) -> Result<()> {
        if self.queues_known(queue) {
            return Ok(());
        }
        let options = &self.options;
        for system in [&options.events_topic, &options.dead_letter_topic] {
            create_topic(&*self.backend, TopicSpec::new(system.clone())).await?;
        }
        let mut dead = GroupSpec::new(GroupMode::Queue);
        dead.start = StartPosition::Earliest;
        self.backend
            .put_group(&options.dead_letter_topic, &options.dead_letter_group, dead)
            .await?;
        let mut spec = TopicSpec::new(topic.clone());
        spec.partitions = options.queue_partitions;
        spec.dead_letter_topic = Some(options.dead_letter_topic.clone());
        create_topic(&*self.backend, spec).await?;
        let mut group = GroupSpec::new(GroupMode::Queue);
        group.ack_wait_ms = options.ack_wait_ms;
        group.max_deliveries = options.max_attempts;
        group.backoff_ms.clone_from(&options.backoff_ms);
        self.backend
            .put_group(topic, &options.worker_group, group)
            .await?;
        if let Ok(mut queues) = self.queues.lock() {
            queues.insert(queue.to_owned());
        }
        Ok(())
    }

    /// A fetch's [`Shared::ensure_queue`]: a queue that does not exist yet
    /// (its topic was never created) is created only if the options say so.
    async fn ensure_queue_for_fetch(&self, queue: &str, topic: &TopicName) -> Result<()> {
        if self.options.create_queues_on_fetch || self.queues_known(queue) {
            return self.ensure_queue(queue, topic).await;
        }
        match self.backend.describe_topic(topic).await {
            // It exists (submitted to before, maybe by an earlier process):
            // make sure of its group, as a submit would.
            Ok(_) => self.ensure_queue(queue, topic).await,
            Err(herald_backend::Error::TopicNotFound { .. }) => Err(Error::QueueNotFound {
                queue: queue.to_owned(),
            }),
            Err(error) => Err(error.into()),
        }
    }

    /// Marks a fetched request's job `running` and says what to do with
    /// the delivery. A request whose job has no record is either ahead of
    /// its record (its submit is storing it: wait a little, else deliver it
    /// again later) or an orphan of a submit that never stored it (older
    /// than [`Options::orphan_grace_ms`]: discarded, with its blob pin).
    async fn start(self: &Arc<Self>, request: &JobRequest) -> Result<Started> {
        let started = Command::Started {
            part: request.part.clone(),
        };
        match self.update(&request.job_id, &started).await {
            Ok(job) if part_is_pending(&job, request) => Ok(Started::Deliver),
            Ok(_) | Err(Error::PartNotFound { .. }) => Ok(Started::Stale),
            // Its submit may still be storing it (the update waited a little).
            Err(Error::JobNotFound { .. }) if self.is_young(&request.job_id) => Ok(Started::Later),
            Err(Error::JobNotFound { .. }) => {
                if let Some(blob) = &request.blob {
                    blobs::unpin(&*self.backend, blob, &request.job_id).await?;
                }
                debug!(job = %request.job_id, "Discarded the request of a job that is not stored.");
                Ok(Started::Stale)
            }
            Err(error) => Err(error),
        }
    }

    /// Whether `job_id` was made less than [`Options::orphan_grace_ms`] ago
    /// (job ids are UUIDv7s: they carry their creation time), so its submit
    /// may still be storing it.
    fn is_young(&self, job_id: &str) -> bool {
        let Some(created) = uuid::Uuid::parse_str(job_id)
            .ok()
            .and_then(|id| id.get_timestamp())
        else {
            return false;
        };
        let (seconds, nanos) = created.to_unix();
        let created_ms = i64::try_from(seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000)
            .saturating_add(i64::from(nanos / 1_000_000));
        let grace = i64::try_from(self.options.orphan_grace_ms).unwrap_or(i64::MAX);
        self.clock.now_ms().saturating_sub(created_ms) < grace
    }

    /// The job, waiting up to [`RECORD_WAIT`] for the record of a young job
    /// (see there).
    async fn load_arriving(&self, job_id: &str) -> Result<(Job, u64)> {
        let deadline = tokio::time::Instant::now() + RECORD_WAIT;
        loop {
            match self.load(job_id).await {
                Err(Error::JobNotFound { .. })
                    if tokio::time::Instant::now() < deadline && self.is_young(job_id) =>
                {
                    tokio::time::sleep(RECORD_WAIT / 20).await;
                }
                loaded => return loaded,
            }
        }
    }

    fn queues_known(&self, queue: &str) -> bool {
        self.queues
            .lock()
            .map(|queues| queues.contains(queue))
            .unwrap_or(false)
    }

    async fn load(&self, job_id: &str) -> Result<(Job, u64)> {
        let not_found = || Error::JobNotFound {
            job_id: job_id.to_owned(),
        };
        if uuid::Uuid::parse_str(job_id).is_err() {
            return Err(not_found());
        }
        let entry = self
            .backend
            .kv_get(JOBS_BUCKET, job_id)
            .await?
            .ok_or_else(not_found)?;
        let job = serde_json::from_slice(&entry.value).map_err(|error| Error::Corrupt {
            job_id: job_id.to_owned(),
            detail: error.to_string(),
        })?;
        Ok((job, entry.revision))
    }

    /// Stores a new job so that neither a crash nor a caller going away
    /// can leave a recorded job that is never dispatched or never ends:
    /// everything it needs comes first — its deadline timer, its requests,
    /// its blob pin — and its record last, as the commit point; then the
    /// `submitted` event. What comes before the record is harmless if the
    /// record never follows: a timer of a missing job does nothing, and
    /// workers discard requests of a missing job once
    /// [`Options::orphan_grace_ms`] has passed, removing their blob pins.
    async fn submit_job(
        &self,
        topic: &TopicName,
        job: Job,
        effects: Vec<Effect>,
        requests: Vec<EventInput>,
    ) -> Result<Job> {
        for effect in &effects {
            if let Effect::Schedule { due_ms, kind } = effect {
                self.schedule(*due_ms, *kind, &job.job_id).await?;
            }
        }
        self.backend.publish(topic, requests).await?;
        failpoint("jobs.submit.after_dispatch");
        for effect in &effects {
            if let Effect::PinBlob(blob) = effect {
                self.pin(blob, &job.job_id, "blob").await?;
            }
        }
        let stored = self
            .backend
            .kv_put(JOBS_BUCKET, &job.job_id, encode(&job)?, Expect::Absent)
            .await;
        if let Err(error) = stored {
            if let Some(blob) = &job.blob {
                let _ = blobs::unpin(&*self.backend, blob, &job.job_id).await;
            }
            return Err(error.into());
        }
        failpoint("jobs.submit.after_record");
        self.announce(&job, &effects).await;
        Ok(job)
    }

    /// Applies `command` by compare-and-set, with its effects (see
    /// [`Shared::update_now`]). Runs to completion once started, even if
    /// the caller goes away: a stored transition always gets its effects.
    async fn update(self: &Arc<Self>, job_id: &str, command: &Command) -> Result<Job> {
        let (shared, job_id, command) = (Arc::clone(self), job_id.to_owned(), command.clone());
        run_to_completion(async move { shared.update_now(&job_id, &command).await }).await
    }

    /// Applies `command` by compare-and-set. The transition's timers and
    /// blob pins are written before its record (a transition stored is
    /// never without them; one whose compare-and-set loses leaves a timer
    /// that finds nothing to do and a pin removed below), its events after
    /// it (a failed publish is retried by the timer loop).
    async fn update_now(&self, job_id: &str, command: &Command) -> Result<Job> {
        let mut pinned = Vec::new();
        let outcome = self.apply_stored(job_id, command, &mut pinned).await;
        if !pinned.is_empty() {
            self.remove_stray_pins(job_id, &pinned, outcome.as_ref().ok())
                .await;
        }
        outcome
    }

    async fn apply_stored(
        &self,
        job_id: &str,
        command: &Command,
        pinned: &mut Vec<String>,
    ) -> Result<Job> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (job, revision) = self.load_arriving(job_id).await?;
            let now = self.clock.now_ms();
            let Applied::Changed(next, effects) = model::apply(&job, command, now)? else {
                return Ok(job);
            };
            for effect in &effects {
                match effect {
                    Effect::Schedule { due_ms, kind } => {
                        self.schedule(*due_ms, *kind, job_id).await?;
                    }
                    Effect::PinBlob(blob) => {
                        self.pin(blob, job_id, "result_blob").await?;
                        pinned.push(blob.clone());
                    }
                    Effect::Emit(_) | Effect::Dispatch => {}
                }
            }
            let stored = self
                .backend
                .kv_put(
                    JOBS_BUCKET,
                    job_id,
                    encode(&next)?,
                    Expect::Revision(revision),
                )
                .await;
            match stored {
                Ok(_) => {
                    self.announce(&next, &effects).await;
                    return Ok(*next);
                }
                Err(herald_backend::Error::RevisionMismatch { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Err(herald_backend::Error::Unavailable {
            detail: format!("job {job_id:?} is changing too fast to update; retry"),
        }
        .into())
    }

    /// Removes pins an update wrote for a transition that was not stored,
    /// unless the stored record references the blob anyway.
    async fn remove_stray_pins(&self, job_id: &str, pinned: &[String], stored: Option<&Job>) {
        let loaded;
        let job = match stored {
            Some(job) => Some(job),
            None => {
                loaded = self.load(job_id).await.ok().map(|(job, _)| job);
                loaded.as_ref()
            }
        };
        for blob in pinned {
            let referenced = job.is_some_and(|job| blobs_of(job).any(|used| used == blob));
            if !referenced && let Err(error) = blobs::unpin(&*self.backend, blob, job_id).await {
                warn!(job = job_id, blob, %error, "Could not remove a stray blob pin; the blob is kept longer.");
            }
        }
    }

    /// Stores a timer: at `due_ms`, fire `kind` for the job.
    async fn schedule(&self, due_ms: i64, kind: TimerKind, job_id: &str) -> Result<()> {
        self.backend
            .kv_put(
                TIMERS_BUCKET,
                &timer_key(due_ms, kind, job_id),
                Bytes::new(),
                Expect::Any,
            )
            .await?;
        self.timer_added.notify_waiters();
        Ok(())
    }

    /// Pins `blob` for the job, checked against the blob collector.
    async fn pin(&self, blob: &str, job_id: &str, field: &str) -> Result<()> {
        blobs::pin(
            &*self.backend,
            self.options.blob_storage.as_deref(),
            blob,
            job_id,
            field,
        )
        .await
    }

    /// Publishes a stored transition's events (one that fails is kept for
    /// the timer loop to retry: its id is fixed, so a retry after a publish
    /// that did land is absorbed by the topic's dedup window) and tells the
    /// waiters.
    async fn announce(&self, job: &Job, effects: &[Effect]) {
        let job = Arc::new(job.clone());
        // Before the events go out: the follower, seeing them, skips them.
        self.told(&job);
        for effect in effects {
            if let Effect::Emit(kind) = effect {
                self.options.metrics.transition(&job, kind);
            }
            if let Effect::Emit(kind) = effect
                && let Err(error) = self.emit(&job, kind).await
            {
                warn!(job = %job.job_id, kind, %error, "Could not publish a job event; retrying.");
                self.retry_later(Arc::clone(&job), kind);
            }
        }
        // No receivers is fine: nobody is waiting.
        let _ = self.updates.send(job);
    }

    /// Records that waiters are told of `job` at its version; false if they
    /// were told of it (or a later version) already.
    fn told(&self, job: &Job) -> bool {
        let Ok(mut told) = self.told.lock() else {
            return true;
        };
        if told
            .get(&job.job_id)
            .is_some_and(|&version| version >= job.version)
        {
            return false;
        }
        // Bounded: past this many jobs, forget them all (a job told again
        // at worst).
        if told.len() >= MAX_TOLD {
            told.clear();
        }
        told.insert(job.job_id.clone(), job.version);
        true
    }

    fn retry_later(&self, job: Arc<Job>, kind: &'static str) {
        if let Ok(mut unpublished) = self.unpublished.lock() {
            if unpublished.len() >= MAX_RETRIED_EVENTS
                && let Some((dropped, kind)) = unpublished.pop_front()
            {
                warn!(job = %dropped.job_id, kind, "Too many job events waiting for a retry; dropped the oldest.");
            }
            unpublished.push_back((job, kind));
        }
        self.timer_added.notify_waiters();
    }

    /// Publishes the events that failed before; returns whether some still
    /// wait.
    async fn republish(&self) -> bool {
        let waiting: Vec<(Arc<Job>, &'static str)> = match self.unpublished.lock() {
            Ok(mut unpublished) => unpublished.drain(..).collect(),
            Err(_) => return false,
        };
        let mut left = false;
        for (job, kind) in waiting {
            if self.emit(&job, kind).await.is_err() {
                self.retry_later(job, kind);
                left = true;
            }
        }
        left
    }

    async fn emit(&self, job: &Job, kind: &'static str) -> herald_backend::Result<()> {
        let data = JobEvent {
            job_id: job.job_id.clone(),
            queue: job.queue.clone(),
            kind: kind.to_owned(),
            status: job.status,
            done: job.progress.done,
            total: job.progress.total,
            error: job.error.clone(),
            missing: job.missing.clone(),
        };
        let mut event = Event::new(
            format!("{}.{}", job.job_id, job.version),
            SOURCE,
            format!("herald.job.{kind}"),
        );
        let span = herald_trace::hop!(
            "job.transition",
            job.traceparent.as_deref(),
            otel.name = %format!("job.{kind}"),
            herald.job_id = %job.job_id,
        );
        event.traceparent = herald_trace::traceparent(&span).or_else(|| job.traceparent.clone());
        event.correlationid.clone_from(&job.correlationid);
        event.causationid.clone_from(&job.causationid);
        event.subject = Some(job.job_id.clone());
        event.key = Some(job.job_id.clone());
        event.datacontenttype = Some("application/json".into());
        event.data = Some(Bytes::from(serde_json::to_vec(&data).unwrap_or_default()));
        let input = EventInput {
            event,
            partition: None,
        };
        self.backend
            .publish(&self.options.events_topic, vec![input])
            .await
            .map(drop)
    }
}

async fn create_topic(backend: &dyn Backend, spec: TopicSpec) -> Result<()> {
    match backend.create_topic(spec).await {
        Ok(_) | Err(herald_backend::Error::TopicExists { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn encode(job: &Job) -> Result<Bytes> {
    serde_json::to_vec(job)
        .map(Bytes::from)
        .map_err(|error| Error::Corrupt {
            job_id: job.job_id.clone(),
            detail: error.to_string(),
        })
}

/// The request events of a job: one per part, else one.
fn requests_of(job: &Job) -> Result<Vec<EventInput>> {
    let request = |part: Option<&str>, data: &Value| -> Result<EventInput> {
        let body = JobRequest {
            job_id: job.job_id.clone(),
            queue: job.queue.clone(),
            part: part.map(str::to_owned),
            data: data.clone(),
            blob: job.blob.clone(),
        };
        let key = part.unwrap_or(&job.job_id).to_owned();
        let id = match part {
            Some(_) => format!("{}.{}", job.job_id, key),
            None => job.job_id.clone(),
        };
        let mut event = Event::new(id, SOURCE, REQUEST_TYPE);
        event.traceparent.clone_from(&job.traceparent);
        event.correlationid.clone_from(&job.correlationid);
        event.causationid.clone_from(&job.causationid);
        event.subject = Some(key.clone());
        event.key = Some(key);
        event.datacontenttype = Some("application/json".into());
        event.data =
            Some(Bytes::from(serde_json::to_vec(&body).map_err(|error| {
                Error::invalid("data", error.to_string())
            })?));
        Ok(EventInput {
            event,
            partition: None,
        })
    };
    if job.parts.is_empty() {
        return Ok(vec![request(None, &job.data)?]);
    }
    job.parts
        .iter()
        .map(|part| request(Some(&part.key), &part.data))
        .collect()
}

/// The job request a delivery carries, if it is one.
fn decode_request(delivery: &Delivery) -> Option<JobRequest> {
    let data = delivery.event.event.data.as_ref()?;
    serde_json::from_slice(data).ok()
}

fn timer_key(due_ms: i64, kind: TimerKind, job_id: &str) -> String {
    format!("{:020}.{}.{job_id}", due_ms.max(0), kind.as_str())
}

fn parse_timer_key(key: &str) -> Option<(i64, TimerKind, &str)> {
    let mut fields = key.splitn(3, '.');
    let due = fields.next()?.parse().ok()?;
    let kind = fields.next()?.parse().ok()?;
    Some((due, kind, fields.next()?))
}

/// Every `timer_interval`: fires the timers that are due, oldest first.
/// While none is stored it sleeps until one is added (or `IDLE_RESCAN`
/// passes), so an idle server does not read the timer bucket ten times a
/// second: each such tick woke a runtime thread and a blocking thread
/// (BENCHMARKS.md, W3).
/// Jobs whose last told version [`Shared::told`] keeps at most.
const MAX_TOLD: usize = 100_000;

/// With [`Options::follow_other_nodes`]: follows the events topic from its
/// end and tells this node's waiters of every transition another node
/// made (the job as stored, read again).
async fn follow_loop(shared: &Arc<Shared>, cancel: &CancellationToken) {
    if !shared.options.follow_other_nodes {
        return;
    }
    let topic = &shared.options.events_topic;
    // The topic is made by the first submit on any node: if it is not
    // there yet, all it will hold is news.
    let mut absent = false;
    let partitions = loop {
        match shared.backend.describe_topic(topic).await {
            Ok(described) => break described.partition_info,
            Err(_) => {
                absent = true;
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    };
    let followers = partitions.into_iter().map(|partition| async move {
        let mut from = if absent {
            partition.start_offset
        } else {
            partition.end_offset
        };
        while !cancel.is_cancelled() {
            let waited = tokio::select! {
                () = cancel.cancelled() => return,
                waited = shared.backend.wait_for(topic, partition.partition, from, Duration::from_secs(5)) => waited,
            };
            let read = match waited {
                Ok(end) if end > from => shared.backend.read(topic, partition.partition, from, 256).await,
                Ok(_) => continue,
                Err(error) => Err(error),
            };
            match read {
                Ok(read) => {
                    for stored in &read.events {
                        shared.tell_remote(stored).await;
                    }
                    from = read.next_offset.max(from);
                }
                Err(herald_backend::Error::OffsetOutOfRange { start, .. }) => from = start,
                Err(error) => {
                    warn!(%error, "Following job events failed; retrying.");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    });
    futures::future::join_all(followers).await;
}

impl Shared {
    /// A transition event seen on the events topic: if it is news here (made
    /// by another node), the job as stored goes to the waiters.
    async fn tell_remote(&self, stored: &herald_types::StoredEvent) {
        let Some(job_id) = stored.event.subject.as_deref() else {
            return;
        };
        let version = stored
            .event
            .id
            .rsplit_once('.')
            .and_then(|(_, version)| version.parse::<u64>().ok());
        let known = self
            .told
            .lock()
            .ok()
            .and_then(|told| told.get(job_id).copied());
        if version.is_some_and(|version| known.is_some_and(|known| known >= version)) {
            return;
        }
        if let Ok((job, _)) = self.load(job_id).await
            && self.told(&job)
        {
            let _ = self.updates.send(Arc::new(job));
        }
    }
}

async fn timer_loop(shared: &Arc<Shared>, cancel: &CancellationToken) {
    let mut ticker = tokio::time::interval(shared.options.timer_interval);
    let idle_rescan = if shared.options.follow_other_nodes {
        shared.options.timer_interval * SHARED_IDLE_TICKS
    } else {
        IDLE_RESCAN
    };
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Registered before the scan: a timer added after it wakes us.
        let added = shared.timer_added.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        match fire_due_timers(shared).await {
            Ok(Pending::None) => {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = &mut added => {}
                    () = tokio::time::sleep(idle_rescan) => {}
                }
                ticker.reset_immediately();
            }
            Ok(Pending::Some) => {}
            Err(error) => warn!(%error, "Could not fire job timers; retrying next tick."),
        }
    }
}

/// How long the timer loop sleeps with no timer stored before it looks
/// again anyway (a timer written by another process of a shared backend);
/// with [`Options::follow_other_nodes`] (other nodes add timers this one
/// is not woken for) the scan interval times [`SHARED_IDLE_TICKS`].
const IDLE_RESCAN: Duration = Duration::from_secs(10);
/// See [`IDLE_RESCAN`].
const SHARED_IDLE_TICKS: u32 = 10;

/// The lease (`herald_backend::lease`) under which one node fires timers.
const TIMERS_LEASE: &str = "jobs.timers";
/// How long a node's hold on [`TIMERS_LEASE`] lasts unrenewed: a dead
/// node's timers fire late by at most this.
const LEASE_LENGTH: Duration = Duration::from_secs(10);

/// Whether timers are left after a scan.
enum Pending {
    None,
    Some,
}

async fn fire_due_timers(shared: &Arc<Shared>) -> Result<Pending> {
    let keys = shared
        .backend
        .kv_keys(TIMERS_BUCKET, "", None, TIMERS_PER_TICK)
        .await?;
    let now = shared.clock.now_ms();
    // A full page may have more behind it; failed events are retried
    // every tick.
    let mut left = if keys.len() >= TIMERS_PER_TICK || shared.republish().await {
        Pending::Some
    } else {
        Pending::None
    };
    for key in keys {
        let Some((due, kind, job_id)) = parse_timer_key(&key) else {
            warn!(key, "Dropping a malformed job timer.");
            shared
                .backend
                .kv_delete(TIMERS_BUCKET, &key, Expect::Any)
                .await?;
            continue;
        };
        if due > now {
            left = Pending::Some;
            break;
        }
        match kind {
            TimerKind::Deadline => match shared.update(job_id, &Command::Deadline).await {
                Ok(_) | Err(Error::JobNotFound { .. }) => {}
                Err(error) => return Err(error),
            },
            TimerKind::Expire => expire(shared, job_id).await?,
        }
        shared
            .backend
            .kv_delete(TIMERS_BUCKET, &key, Expect::Any)
            .await?;
    }
    Ok(left)
}

/// Removes an ended job's record and its blob references, if it has ended
/// and its time has come (a timer written ahead of a transition that was
/// not stored finds neither and does nothing).
async fn expire(shared: &Shared, job_id: &str) -> Result<()> {
    let job = match shared.load(job_id).await {
        Ok((job, _)) => job,
        Err(Error::JobNotFound { .. }) => return Ok(()),
        Err(error) => return Err(error),
    };
    let due = job
        .expires_at
        .is_some_and(|expires_at| expires_at <= shared.clock.now_ms());
    if !job.status.is_terminal() || !due {
        return Ok(());
    }
    for blob in blobs_of(&job) {
        blobs::unpin(&*shared.backend, blob, job_id).await?;
    }
    shared
        .backend
        .kv_delete(JOBS_BUCKET, job_id, Expect::Any)
        .await?;
    debug!(job = job_id, "Removed an expired job.");
    Ok(())
}

/// Consumes the dead-letter topic: a request that exhausted its attempts
/// fails its part (or job) with the group's reason.
async fn dead_letter_loop(shared: &Arc<Shared>, cancel: &CancellationToken) {
    let options = &shared.options;
    loop {
        let request = FetchRequest {
            member: "herald-jobs".into(),
            max: 100,
            wait_ms: 1_000,
        };
        let fetched = tokio::select! {
            () = cancel.cancelled() => return,
            fetched = shared.backend.fetch(&options.dead_letter_topic, &options.dead_letter_group, request) => fetched,
        };
        let deliveries = match fetched {
            Ok(fetched) => fetched.deliveries,
            // No job has run yet: the topic and group come with the first queue.
            Err(
                herald_backend::Error::TopicNotFound { .. }
                | herald_backend::Error::GroupNotFound { .. },
            ) => {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Err(error) => {
                warn!(%error, "Could not fetch dead letters; retrying in a second.");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut handled = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            if let Err(error) = bury(shared, &delivery).await {
                warn!(%error, "Could not record a dead-lettered job request; it comes back.");
                continue;
            }
            handled.push(delivery.delivery_id);
        }
        if !handled.is_empty()
            && let Err(error) = shared
                .backend
                .ack(
                    &options.dead_letter_topic,
                    &options.dead_letter_group,
                    &handled,
                    AckDurability::Async,
                )
                .await
        {
            warn!(%error, "Could not ack dead letters; they come back (handling is idempotent).");
        }
    }
}

async fn bury(shared: &Arc<Shared>, delivery: &Delivery) -> Result<()> {
    let Some(request) = decode_request(delivery) else {
        return Ok(());
    };
    let extensions = &delivery.event.event.extensions;
    let reason = match extensions.get("dlreason") {
        Some(ExtensionValue::String(reason)) => reason.clone(),
        _ => "dead-lettered".to_owned(),
    };
    let reason = match extensions.get("dlattempts") {
        Some(ExtensionValue::Integer(attempts)) => format!("{reason} (after {attempts} attempts)"),
        _ => reason,
    };
    let command = Command::DeadLetter {
        part: request.part,
        reason,
    };
    match shared.update(&request.job_id, &command).await {
        Ok(_) | Err(Error::PartNotFound { .. }) => Ok(()),
        // A request of a job that was never stored (or has expired).
        Err(Error::JobNotFound { .. }) => match &request.blob {
            Some(blob) => blobs::unpin(&*shared.backend, blob, &request.job_id).await,
            None => Ok(()),
        },
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn given_timer_key_should_sort_by_due_and_parse_back() {
        let early = timer_key(5, TimerKind::Deadline, "a");
        let late = timer_key(40, TimerKind::Expire, "b");
        assert!(early < late);
        assert_eq!(parse_timer_key(&late), Some((40, TimerKind::Expire, "b")));
    }
}
