//! The webhook service: endpoints as a stored resource, delivery from the
//! log through Herald's own consumer groups, the circuit breaker,
//! auto-disable and the attempt log. Built only on the backend traits, like
//! the job service, so it runs on any backend.
//!
//! # How a message is delivered
//!
//! ```text
//! endpoint stored ── group `webhooks.<endpoint id>` on each of its topics
//!   (queue mode; keyed by subject when `ordered`), from the endpoint's creation time
//! topic loop ── circuit permits? ── in-flight budget ── fetch ── one task per delivery
//! delivery ── filter (types, subject) ── rate limit ── POST, signed ── attempt logged
//!   2xx                 ── ack
//!   failure, attempts left ── nack with the schedule's delay (Retry-After as a floor)
//!   failure, last attempt  ── reject: a dead letter of the group, with the reason
//!   410 Gone, or failing without a success for `disable_after` ── endpoint disabled,
//!                              event `herald.webhook.endpoint.disabled` on `herald.webhooks`
//! ```
//!
//! The group does the durable part: where delivery is, which messages wait
//! for a retry and until when (a nack's delay survives a restart), leases
//! (a crash mid-attempt hands the message out again once `ack_wait_ms`
//! passes), dead letters and their redrive. So a restart resumes exactly:
//! at least once, never lost.
//!
//! Each endpoint has its own in-flight budget and rate limit, and its own
//! fetch loops, so a slow or failing endpoint only ever waits on its own.
//! When `circuit.failures` attempts in a row fail, its circuit opens: its
//! loops stop fetching for `circuit.cool_down`, then one probe goes out;
//! a message already fetched when the circuit opened is put back for later
//! (logged as an attempt of class `circuit_open`, and counted as one).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use herald_backend::{
    AckDurability, Backend, Expect, GroupFilter, GroupMode, GroupSpec, KvDurability, OrderBy,
    StartPosition, TopicSpec,
};
use herald_types::webhook::Secret;
use herald_types::{Event, EventInput, GroupName, TopicName, format_rfc3339_ms};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::attempt::{Message, Outcome, Sender};
use crate::circuit::{Circuit, CircuitOptions};
use crate::delivery::{Counts, Live, Runner, Settle, settle, topic_loop};
use crate::endpoint::{EndpointSpec, Filter, InvalidEndpoint};
use crate::metrics::WebhookMetrics;
use crate::schedule::Schedule;
use crate::store::{
    ATTEMPTS_BUCKET, AttemptRecord, BY_MESSAGE_BUCKET, BY_OFFSET_BUCKET, ENDPOINTS_BUCKET,
    Endpoint, EndpointStats, EndpointView, State, StoredSecret, Trigger, attempts_older_than,
    decode_page, encode_page, is_page, message_id, page_id, page_of, parse_message_id, parse_run,
    run_keys, runs_around,
};

/// The source of the service's own events.
const SOURCE: &str = "/herald/webhooks";
/// Most endpoints listed or reconciled.
pub const MAX_ENDPOINTS: usize = 10_000;
/// Most attempts one listing returns.
pub const MAX_ATTEMPTS_LISTED: usize = 1_000;
/// Most dead letters one recover redrives per topic.
const MAX_RECOVER: usize = 100_000;

/// The service's settings (`webhooks.*` in the server's configuration).
#[derive(Debug, Clone)]
pub struct Options {
    /// When failed attempts are retried.
    pub schedule: Schedule,
    /// One attempt's whole time: connect, send, answer and body.
    pub attempt_timeout: Duration,
    /// Connecting alone.
    pub connect_timeout: Duration,
    /// Attempts in flight per endpoint at most.
    pub max_in_flight: u32,
    /// The circuit breaker.
    pub circuit: CircuitOptions,
    /// An endpoint failing without a success this long is disabled.
    pub disable_after: Duration,
    /// Attempt records are deleted this long after the attempt.
    pub attempt_retention: Duration,
    /// A rotated-out secret keeps signing this long, unless the rotation
    /// says otherwise.
    pub rotation_overlap: Duration,
    /// How often endpoints are reloaded from storage (changes made through
    /// this process apply at once; this picks up other nodes' changes).
    pub refresh_interval: Duration,
    /// How often attempt records past `attempt_retention` are deleted.
    pub sweep_interval: Duration,
    /// Where the service's own events go (`herald.webhook.endpoint.disabled`).
    pub events_topic: TopicName,
    /// This process's member id in the endpoints' groups.
    pub member: String,
    /// The job service's transition topic (jobs' `notify.webhook_url`).
    pub jobs_topic: TopicName,
    /// The secret job notifications are signed with; `None`: one
    /// generated once and kept in storage.
    pub job_secret: Option<Secret>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            schedule: Schedule::default(),
            attempt_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_in_flight: 64,
            circuit: CircuitOptions {
                failures: 10,
                cool_down: Duration::from_secs(30),
            },
            disable_after: Duration::from_secs(5 * 24 * 3600),
            attempt_retention: Duration::from_secs(30 * 24 * 3600),
            rotation_overlap: Duration::from_secs(24 * 3600),
            refresh_interval: Duration::from_secs(2),
            sweep_interval: Duration::from_secs(60),
            events_topic: name("herald.webhooks"),
            member: "herald".to_owned(),
            jobs_topic: name("herald.jobs"),
            job_secret: None,
        }
    }
}

impl Options {
    /// A group that drives deliveries from events appended since
    /// `since_ms`: a lease outlives an attempt, a message gets the
    /// schedule's attempts, and the leases outstanding cover the attempts
    /// in flight and those whose record is being written and whose settle
    /// is on its way.
    pub(crate) fn delivery_group(&self, mode: GroupMode, since_ms: i64) -> GroupSpec {
        let mut spec = GroupSpec::new(mode);
        spec.start = StartPosition::Time { time_ms: since_ms };
        spec.ack_wait_ms = millis(self.attempt_timeout + self.connect_timeout) + 30_000;
        spec.max_deliveries = self.schedule.attempts();
        spec.backoff_ms = vec![1_000];
        spec.max_in_flight = self
            .max_in_flight
            .max(1)
            .saturating_mul(4)
            .min(herald_backend::group::MAX_IN_FLIGHT_LIMIT);
        spec
    }
}

/// A name known to be valid.
pub(crate) fn name<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    match text.parse() {
        Ok(parsed) => parsed,
        Err(error) => unreachable!("{text:?} is a valid name: {error:?}"),
    }
}

/// What the service refuses or fails with; [`Error::code`] is the stable
/// code of its problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint by that id.
    #[error("webhook endpoint {0:?} does not exist")]
    EndpointNotFound(String),
    /// No such message on the endpoint's topics.
    #[error("message {0:?} is not one of this endpoint's (or retention removed it)")]
    MessageNotFound(String),
    /// A refused definition.
    #[error(transparent)]
    Invalid(#[from] InvalidEndpoint),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] herald_backend::Error),
    /// A stored record that does not parse.
    #[error("stored webhook data is corrupt: {0}")]
    Corrupt(String),
}

impl Error {
    /// The stable error code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::EndpointNotFound(_) => "endpoint_not_found",
            Self::MessageNotFound(_) => "message_not_found",
            Self::Invalid(invalid) => invalid.code(),
            Self::Backend(_) | Self::Corrupt(_) => "internal",
        }
    }
}

/// The service's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Changes to an endpoint (`PATCH`); absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<u32>,
    /// Fixed for the endpoint's life (its groups' mode): a different value
    /// is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered: Option<bool>,
    /// `true` re-enables a disabled endpoint (and forgets its failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl EndpointPatch {
    fn apply(&self, record: &mut Endpoint) -> Result<()> {
        if let Some(ordered) = self.ordered
            && ordered != record.ordered
        {
            return Err(InvalidEndpoint::Field {
                field: "ordered".into(),
                reason: "fixed for an endpoint's life; create a new endpoint".into(),
            }
            .into());
        }
        if let Some(url) = &self.url {
            record.url.clone_from(url);
        }
        if let Some(description) = &self.description {
            record.description = Some(description.clone());
        }
        if let Some(filter) = &self.filter {
            record.filter = filter.clone();
        }
        if let Some(headers) = &self.headers {
            record.headers.clone_from(headers);
        }
        if let Some(rate) = self.rate_limit_per_s {
            record.rate_limit_per_s = (rate > 0).then_some(rate);
        }
        if let Some(enabled) = self.enabled {
            if enabled && !record.enabled {
                record.disabled_reason = None;
                record.failing_since = None;
            }
            record.enabled = enabled;
        }
        Ok(())
    }
}

/// Which attempts to list (`GET …/attempts` query).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct AttemptQuery {
    /// `succeeded` or `failed`.
    #[serde(default)]
    pub status: Option<String>,
    /// One message's attempts only.
    #[serde(default)]
    pub message_id: Option<String>,
    /// At most this many (default 100, at most 1,000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Older than this attempt (the last `attempt_id` of the previous page).
    #[serde(default)]
    pub before: Option<String>,
}

/// The webhook service; [`Service::run`] drives delivery.
#[derive(Debug)]
pub struct Service {
    shared: Arc<Shared>,
}

/// The API of the webhook service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) sender: Sender,
    pub(crate) options: Options,
    pub(crate) metrics: Arc<WebhookMetrics>,
    pub(crate) runners: Mutex<HashMap<String, Arc<Runner>>>,
    /// Wakes the reconcile loop after a change made here.
    pub(crate) changed: Notify,
    /// Topic loops and attempts in flight: a stop waits for them, so an
    /// attempt that went out is logged and settled before storage closes.
    pub(crate) tasks: TaskTracker,
    /// The attempt log's writer ([`log_writer`]).
    pub(crate) log: mpsc::Sender<LogWrite>,
}

/// An attempt record to write, the delivery to ack once it is, and who
/// waits for both.
pub(crate) struct LogWrite {
    record: AttemptRecord,
    ack: Option<Ack>,
    written: oneshot::Sender<()>,
}

/// A delivery acked by the attempt log's writer, with the others of its
/// write and group in one call.
pub(crate) struct Ack {
    pub(crate) topic: TopicName,
    pub(crate) group: GroupName,
    pub(crate) delivery_id: String,
}

impl std::fmt::Debug for LogWrite {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LogWrite")
            .field("message_id", &self.record.message_id)
            .finish_non_exhaustive()
    }
}

/// Most records one attempt-log write takes.
const LOG_BATCH: usize = 512;

/// How long the attempt log waits for more records when a write would
/// take few.
const LOG_GATHER: Duration = Duration::from_millis(1);

/// Writes attempt records as they come, each batch in one step
/// (`Kv::kv_put_many`): attempts in flight at once share a write, and each
/// endpoint's attempts of one write share a page (one stored row, and a
/// few more for its runs of offsets: [`crate::store::run_keys`]). The write gives the
/// attempts their ids ([`crate::store::page_id`]) and times; the deliveries to ack
/// after it are acked per group in one call (a nack or a reject, which
/// can wait on a durable dead letter, is left to its delivery). It is
/// [`KvDurability::Deferred`]: no fsync of its own, durable with the
/// group-state flush that carries the settles made after it, so a crash
/// never leaves an acked delivery without its record (it can lose the last
/// records only with their settles: those deliveries come back and are
/// attempted, and logged, again). Ends when the service is dropped.
async fn log_writer(backend: Arc<dyn Backend>, mut requests: mpsc::Receiver<LogWrite>) {
    let mut pages: u64 = rand::random();
    let mut batch = Vec::with_capacity(LOG_BATCH);
    while requests.recv_many(&mut batch, LOG_BATCH).await > 0 {
        if (2..LOG_BATCH / 8).contains(&batch.len()) {
            // Records came in while the last write ran: under load they keep
            // coming, and a moment's wait lets one commit take many (a
            // commit costs about as much as all the inserts of a small
            // batch). The deliveries went out already; only their settles
            // wait. A lone record (one in flight, an ordered endpoint's
            // next message waiting on its settle) is written at once.
            tokio::time::sleep(LOG_GATHER).await;
            while batch.len() < LOG_BATCH {
                match requests.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
        }
        let mut waiting = Vec::with_capacity(batch.len());
        let mut acks: Vec<((TopicName, GroupName), Vec<String>)> = Vec::new();
        let mut by_endpoint: Vec<Vec<AttemptRecord>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for write in batch.drain(..) {
            waiting.push(write.written);
            if let Some(ack) = write.ack {
                match acks
                    .iter_mut()
                    .find(|((topic, group), _)| *topic == ack.topic && *group == ack.group)
                {
                    Some((_, ids)) => ids.push(ack.delivery_id),
                    None => acks.push(((ack.topic, ack.group), vec![ack.delivery_id])),
                }
            }
            let at = match index.get(&write.record.endpoint_id) {
                Some(at) => *at,
                None => {
                    by_endpoint.push(Vec::new());
                    index.insert(write.record.endpoint_id.clone(), by_endpoint.len() - 1);
                    by_endpoint.len() - 1
                }
            };
            by_endpoint[at].push(write.record);
        }
        let now = now_ms();
        let mut entries = Vec::with_capacity(waiting.len() + by_endpoint.len());
        for records in by_endpoint {
            // The page's id gives its records their ids (by their places)
            // and their time, so a listing's order (by id) and its times
            // agree.
            let page = page_id(now, pages);
            pages = pages.wrapping_add(1);
            let endpoint_id = &records[0].endpoint_id;
            for key in run_keys(endpoint_id, &page, &records) {
                entries.push((BY_OFFSET_BUCKET.to_owned(), key, Bytes::new()));
            }
            entries.push((
                ATTEMPTS_BUCKET.to_owned(),
                format!("{endpoint_id}/{page}"),
                encode_page(&records),
            ));
        }
        if let Err(error) = backend.kv_put_many(entries, KvDurability::Deferred).await {
            warn!(%error, "Could not write webhook attempt records.");
        }
        for ((topic, group), ids) in acks {
            if let Err(error) = backend
                .ack(&topic, &group, &ids, AckDurability::Async)
                .await
            {
                warn!(%error, topic = %topic, group = %group, "Could not ack webhook deliveries; they come back.");
            }
        }
        for written in waiting {
            let _ = written.send(());
        }
    }
}

pub(crate) fn spec_of(record: &Endpoint) -> EndpointSpec {
    EndpointSpec {
        url: record.url.clone(),
        description: record.description.clone(),
        filter: record.filter.clone(),
        secret: record.secrets.first().map(|stored| stored.secret.clone()),
        headers: record.headers.clone(),
        rate_limit_per_s: record.rate_limit_per_s,
        ordered: record.ordered,
        enabled: record.enabled,
    }
}

/// A new signing secret: 32 bytes from the thread's CSPRNG (ChaCha,
/// seeded from the OS).
#[must_use]
pub fn new_secret() -> Secret {
    let bytes: [u8; 32] = rand::random();
    match Secret::from_bytes(&bytes) {
        Ok(secret) => secret,
        Err(error) => unreachable!("32 bytes make a secret: {error}"),
    }
}

/// The group that drives `endpoint_id` on each of its topics.
pub fn group_name(endpoint_id: &str) -> GroupName {
    name(&format!("webhooks.{endpoint_id}"))
}

pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| Error::Corrupt(error.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

impl Service {
    /// The service over `backend`, delivering through `sender`. Call it
    /// within a Tokio runtime (it starts the attempt log's writer).
    pub fn new(
        backend: Arc<dyn Backend>,
        sender: Sender,
        options: Options,
        metrics: Arc<WebhookMetrics>,
    ) -> Self {
        let (log, requests) = mpsc::channel(4 * LOG_BATCH);
        tokio::spawn(log_writer(Arc::clone(&backend), requests));
        Self {
            shared: Arc::new(Shared {
                backend,
                sender,
                options,
                metrics,
                runners: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                tasks: TaskTracker::new(),
                log,
            }),
        }
    }

    /// The API.
    #[must_use]
    pub fn handle(&self) -> Handle {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Delivers for every enabled endpoint, and sweeps expired attempt
    /// records, until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        info!("Webhook service running.");
        let shared = &self.shared;
        shared
            .tasks
            .spawn(crate::jobs::jobs_loop(Arc::clone(shared), cancel.clone()));
        // The sweep runs on one node of those sharing a backend at a time.
        let sweep = {
            let swept = Arc::clone(shared);
            herald_backend::lease::run_while_held(
                Arc::clone(&shared.backend),
                "webhooks.sweep",
                Duration::from_secs(30),
                cancel.clone(),
                move |stop| {
                    let shared = Arc::clone(&swept);
                    async move { sweep_loop(&shared, &stop).await }
                },
            )
        };
        tokio::join!(reconcile_loop(shared, &cancel), sweep);
        let runners: Vec<_> = shared
            .runners
            .lock()
            .map(|mut runners| runners.drain().map(|(_, runner)| runner).collect())
            .unwrap_or_default();
        for runner in runners {
            runner.cancel.cancel();
        }
        // Attempts in flight end within their timeout; then they settle.
        shared.tasks.close();
        let grace = shared.options.attempt_timeout + Duration::from_secs(5);
        if tokio::time::timeout(grace, shared.tasks.wait())
            .await
            .is_err()
        {
            warn!("Webhook attempts still in flight at shutdown; their messages come back.");
        }
        info!("Webhook service stopped.");
    }
}

impl Handle {
    /// Creates an endpoint: checks it (the target against the SSRF guard),
    /// creates its groups on the topics that exist, stores it. The answer
    /// carries the secret.
    pub async fn create(&self, spec: EndpointSpec) -> Result<EndpointView> {
        let shared = &self.shared;
        let checked = spec.check(shared.sender.policy(), new_secret).await?;
        let now = now_ms();
        let endpoint_id = format!("ep_{}", uuid::Uuid::now_v7().simple());
        let record = Endpoint {
            endpoint_id: endpoint_id.clone(),
            url: checked.url.to_string(),
            description: spec.description,
            filter: spec.filter,
            headers: spec.headers,
            rate_limit_per_s: spec.rate_limit_per_s,
            ordered: spec.ordered,
            enabled: spec.enabled,
            secrets: vec![StoredSecret {
                secret: checked.secret.to_string(),
                expires_at: None,
            }],
            disabled_reason: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        // Groups first: a stored endpoint always has them (or makes them
        // when its topic appears); a crash before the record leaves groups
        // that nothing reads.
        for topic in record.topics() {
            match shared.ensure_group(&record, &topic).await {
                Ok(()) | Err(Error::Backend(herald_backend::Error::TopicNotFound { .. })) => {}
                Err(error) => return Err(error),
            }
        }
        shared
            .backend
            .kv_put(
                ENDPOINTS_BUCKET,
                &endpoint_id,
                encode(&record),
                Expect::Absent,
            )
            .await?;
        shared.changed.notify_one();
        info!(endpoint = %endpoint_id, url = %record.url, "Webhook endpoint created.");
        let mut view = shared.view(&record);
        view.secret = Some(checked.secret.to_string());
        Ok(view)
    }

    /// Every endpoint, oldest first.
    pub async fn list(&self) -> Result<Vec<EndpointView>> {
        let records = self.shared.load_all().await?;
        Ok(records
            .iter()
            .map(|(record, _)| self.shared.view(record))
            .collect())
    }

    /// One endpoint.
    pub async fn get(&self, endpoint_id: &str) -> Result<EndpointView> {
        let (record, _) = self.shared.load(endpoint_id).await?;
        Ok(self.shared.view(&record))
    }

    /// Changes an endpoint. The changed endpoint is checked whole (its
    /// target too) before it is stored; a refused change stores nothing.
    pub async fn update(&self, endpoint_id: &str, patch: EndpointPatch) -> Result<EndpointView> {
        let shared = &self.shared;
        let record = loop {
            let (mut record, revision) = shared.load(endpoint_id).await?;
            patch.apply(&mut record)?;
            spec_of(&record)
                .check(shared.sender.policy(), new_secret)
                .await?;
            record.updated_at = now_ms();
            match shared
                .backend
                .kv_put(
                    ENDPOINTS_BUCKET,
                    endpoint_id,
                    encode(&record),
                    Expect::Revision(revision),
                )
                .await
            {
                Ok(_) => break record,
                Err(herald_backend::Error::RevisionMismatch { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        };
        for topic in record.topics() {
            match shared.ensure_group(&record, &topic).await {
                Ok(()) | Err(Error::Backend(herald_backend::Error::TopicNotFound { .. })) => {}
                Err(error) => return Err(error),
            }
        }
        shared.apply_now(endpoint_id).await;
        shared.changed.notify_one();
        Ok(shared.view(&record))
    }

    /// Deletes an endpoint, its groups and its attempt log.
    pub async fn delete(&self, endpoint_id: &str) -> Result<()> {
        let shared = &self.shared;
        let (record, revision) = shared.load(endpoint_id).await?;
        // The record first: once it is gone nothing delivers for it.
        shared
            .backend
            .kv_delete(ENDPOINTS_BUCKET, endpoint_id, Expect::Revision(revision))
            .await?;
        shared.stop_runner(endpoint_id);
        let group = group_name(endpoint_id);
        for topic in record.topics() {
            match shared.backend.delete_group(&topic, &group).await {
                Ok(())
                | Err(
                    herald_backend::Error::TopicNotFound { .. }
                    | herald_backend::Error::GroupNotFound { .. },
                ) => {}
                Err(error) => return Err(error.into()),
            }
        }
        shared.metrics.forget(endpoint_id);
        shared.delete_attempts(endpoint_id, None).await?;
        shared.changed.notify_one();
        info!(endpoint = endpoint_id, "Webhook endpoint deleted.");
        Ok(())
    }

    /// A new secret; the current one keeps signing for `overlap` (the
    /// configured overlap when `None`), so receivers can switch without a
    /// gap. Returns the new secret.
    pub async fn rotate_secret(
        &self,
        endpoint_id: &str,
        overlap: Option<Duration>,
    ) -> Result<String> {
        let shared = &self.shared;
        let overlap = overlap.unwrap_or(shared.options.rotation_overlap);
        let secret = new_secret();
        let text = secret.to_string();
        shared
            .modify(endpoint_id, |record| {
                let now = now_ms();
                let end = now.saturating_add(i64::try_from(millis(overlap)).unwrap_or(i64::MAX));
                for old in &mut record.secrets {
                    old.expires_at = Some(old.expires_at.map_or(end, |at| at.min(end)));
                }
                record
                    .secrets
                    .retain(|old| old.expires_at.is_none_or(|at| at > now));
                record.secrets.insert(
                    0,
                    StoredSecret {
                        secret: text.clone(),
                        expires_at: None,
                    },
                );
                Ok(())
            })
            .await?;
        shared.apply_now(endpoint_id).await;
        shared.changed.notify_one();
        Ok(text)
    }

    /// An endpoint's attempts, newest first (also those of the job
    /// notifications, under [`crate::jobs::JOBS_ENDPOINT_ID`]). A `status`
    /// other than `succeeded` or `failed` is refused (`invalid_argument`),
    /// whichever API the query came through.
    pub async fn attempts(
        &self,
        endpoint_id: &str,
        query: AttemptQuery,
    ) -> Result<Vec<AttemptRecord>> {
        if let Some(status) = &query.status
            && !matches!(status.as_str(), "succeeded" | "failed")
        {
            return Err(InvalidEndpoint::Field {
                field: "status".into(),
                reason: format!("{status:?} is neither succeeded nor failed"),
            }
            .into());
        }
        let shared = &self.shared;
        if endpoint_id != crate::jobs::JOBS_ENDPOINT_ID {
            shared.load(endpoint_id).await?;
        }
        let limit = query.limit.unwrap_or(100).clamp(1, MAX_ATTEMPTS_LISTED);
        let wanted = |record: &AttemptRecord| match query.status.as_deref() {
            Some("succeeded") => record.succeeded,
            Some("failed") => !record.succeeded,
            _ => true,
        };
        let mut found = Vec::new();
        let mut keep = |record: AttemptRecord| {
            if wanted(&record) {
                found.push(record);
            }
            found.len() >= limit
        };
        if let Some(message) = &query.message_id {
            // A message's attempts are few (its schedule's, and any by
            // hand): all of them, then newest first from the cursor.
            for record in shared.attempts_of_message(endpoint_id, message).await? {
                if query
                    .before
                    .as_ref()
                    .is_none_or(|before| record.attempt_id.as_str() > before.as_str())
                    && keep(record)
                {
                    break;
                }
            }
            return Ok(found);
        }
        // Pages list newest first by their ids, and so do a page's records.
        let prefix = format!("{endpoint_id}/");
        let mut after = None;
        if let Some(before) = &query.before {
            // The rest of the page holding `before`, then the pages after.
            let page = page_of(before);
            for record in shared.page(endpoint_id, page).await? {
                if record.attempt_id.as_str() > before.as_str() && keep(record) {
                    return Ok(found);
                }
            }
            after = Some(format!("{prefix}{page}"));
        }
        for _ in 0..64 {
            let keys = shared
                .backend
                .kv_keys(ATTEMPTS_BUCKET, &prefix, after.as_deref(), 64)
                .await?;
            let Some(last) = keys.last() else { break };
            after = Some(last.clone());
            for key in &keys {
                let page = &key[prefix.len()..];
                for record in shared.page(endpoint_id, page).await? {
                    if keep(record) {
                        return Ok(found);
                    }
                }
            }
        }
        Ok(found)
    }

    /// One more attempt of a message now, outside its schedule (its
    /// outcome is logged; a failure schedules nothing). 202: it runs in the
    /// background.
    pub async fn redeliver(&self, endpoint_id: &str, message: &str) -> Result<()> {
        let shared = &self.shared;
        let (record, revision) = shared.load(endpoint_id).await?;
        let not_found = || Error::MessageNotFound(message.to_owned());
        let (topic, partition, offset) = parse_message_id(message).ok_or_else(not_found)?;
        if !record.filter.topics.iter().any(|t| t == topic.as_str()) {
            return Err(not_found());
        }
        let read = match shared.backend.read(&topic, partition, offset, 1).await {
            Ok(read) => read,
            Err(
                herald_backend::Error::OffsetOutOfRange { .. }
                | herald_backend::Error::PartitionNotFound { .. }
                | herald_backend::Error::TopicNotFound { .. },
            ) => return Err(not_found()),
            Err(error) => return Err(error.into()),
        };
        let event = read
            .events
            .into_iter()
            .find(|event| event.offset == offset)
            .ok_or_else(not_found)?;
        let live = Arc::new(Live::new(record, revision)?);
        let shared = Arc::clone(shared);
        let tasks = shared.tasks.clone();
        tasks.spawn(async move {
            let message_id = event_message_id(&event);
            let previous = shared
                .attempts_of(&live.record.endpoint_id, &message_id)
                .await;
            let outcome = shared.send(&live, &event, &message_id).await;
            let record = shared.attempt_record(
                &live.record.endpoint_id,
                message_id,
                previous + 1,
                &outcome,
                Trigger::Manual,
                "none".to_owned(),
            );
            shared.note_outcome(&live.record.endpoint_id, &outcome);
            shared.log_attempt(record).await;
        });
        Ok(())
    }

    /// The secret job notifications are signed with.
    pub async fn job_secret(&self) -> Result<String> {
        Ok(crate::jobs::job_secret(&self.shared).await?.to_string())
    }

    /// Checks a job's `notify.webhook_url` as an endpoint's URL is checked
    /// (400 `target_not_allowed` for a refused address).
    pub async fn check_notify_url(&self, url: &str) -> Result<()> {
        let parsed: reqwest::Url = url.parse().map_err(|error| InvalidEndpoint::Field {
            field: "notify.webhook_url".into(),
            reason: format!("not a URL: {error}"),
        })?;
        self.shared
            .sender
            .policy()
            .check_target(&parsed)
            .await
            .map_err(InvalidEndpoint::from)?;
        Ok(())
    }

    /// Redelivers every message that failed (was dead-lettered) between
    /// `since` and `until` (ms), each with a fresh schedule. Returns how many.
    pub async fn recover(&self, endpoint_id: &str, since: i64, until: Option<i64>) -> Result<u64> {
        let shared = &self.shared;
        let (record, _) = shared.load(endpoint_id).await?;
        let group = group_name(endpoint_id);
        let mut total = 0;
        for topic in record.topics() {
            let dead = match shared
                .backend
                .dead_letters(&topic, &group, MAX_RECOVER)
                .await
            {
                Ok(dead) => dead,
                Err(
                    herald_backend::Error::TopicNotFound { .. }
                    | herald_backend::Error::GroupNotFound { .. },
                ) => continue,
                Err(error) => return Err(error.into()),
            };
            let ids: Vec<u64> = dead
                .iter()
                .filter(|letter| {
                    letter.dead_at >= since && until.is_none_or(|end| letter.dead_at <= end)
                })
                .map(|letter| letter.id)
                .collect();
            if !ids.is_empty() {
                total += shared.backend.redrive(&topic, &group, Some(&ids)).await?;
            }
        }
        info!(
            endpoint = endpoint_id,
            redelivering = total,
            "Webhook endpoint recovering."
        );
        Ok(total)
    }
}

pub(crate) fn event_message_id(event: &herald_types::StoredEvent) -> String {
    message_id(event.topic.as_str(), event.partition, event.offset)
}

impl Shared {
    pub(crate) async fn load(&self, endpoint_id: &str) -> Result<(Endpoint, u64)> {
        let entry = self
            .backend
            .kv_get(ENDPOINTS_BUCKET, endpoint_id)
            .await?
            .ok_or_else(|| Error::EndpointNotFound(endpoint_id.to_owned()))?;
        Ok((decode(&entry.value)?, entry.revision))
    }

    pub(crate) async fn load_all(&self) -> Result<Vec<(Endpoint, u64)>> {
        let keys = self
            .backend
            .kv_keys(ENDPOINTS_BUCKET, "", None, MAX_ENDPOINTS)
            .await?;
        let mut records = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(entry) = self.backend.kv_get(ENDPOINTS_BUCKET, &key).await? {
                match decode::<Endpoint>(&entry.value) {
                    Ok(record) => records.push((record, entry.revision)),
                    Err(error) => {
                        warn!(endpoint = key, %error, "Skipping a corrupt webhook endpoint.");
                    }
                }
            }
        }
        records.sort_by_key(|(record, _)| record.created_at);
        Ok(records)
    }

    /// Compare-and-set of an endpoint's record.
    pub(crate) async fn modify(
        &self,
        endpoint_id: &str,
        mut change: impl FnMut(&mut Endpoint) -> Result<()>,
    ) -> Result<Endpoint> {
        loop {
            let (mut record, revision) = self.load(endpoint_id).await?;
            change(&mut record)?;
            record.updated_at = now_ms();
            match self
                .backend
                .kv_put(
                    ENDPOINTS_BUCKET,
                    endpoint_id,
                    encode(&record),
                    Expect::Revision(revision),
                )
                .await
            {
                Ok(_) => return Ok(record),
                Err(herald_backend::Error::RevisionMismatch { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    pub(crate) fn view(&self, record: &Endpoint) -> EndpointView {
        let runner = self
            .runners
            .lock()
            .ok()
            .and_then(|runners| runners.get(&record.endpoint_id).cloned());
        let (stats, open) = runner.map_or((EndpointStats::default(), false), |runner| {
            (
                runner.stats.lock().map(|s| s.view()).unwrap_or_default(),
                runner.circuit.lock().is_ok_and(|c| c.is_open()),
            )
        });
        let state = if !record.enabled {
            State::Disabled
        } else if open {
            State::CircuitOpen
        } else {
            State::Enabled
        };
        EndpointView {
            endpoint_id: record.endpoint_id.clone(),
            url: record.url.clone(),
            description: record.description.clone(),
            filter: record.filter.clone(),
            headers: record.headers.clone(),
            rate_limit_per_s: record.rate_limit_per_s,
            ordered: record.ordered,
            enabled: record.enabled,
            state,
            disabled_reason: record.disabled_reason.clone(),
            failing_since: record.failing_since.map(format_rfc3339_ms),
            secret: None,
            created_at: format_rfc3339_ms(record.created_at),
            updated_at: format_rfc3339_ms(record.updated_at),
            stats,
        }
    }

    /// The group of `record` on `topic`, created or brought up to date.
    pub(crate) async fn ensure_group(&self, record: &Endpoint, topic: &TopicName) -> Result<()> {
        let options = &self.options;
        let mode = if record.ordered {
            GroupMode::Keyed
        } else {
            GroupMode::Queue
        };
        // Events appended since the endpoint exists.
        let mut spec = options.delivery_group(mode, record.created_at);
        spec.order_by = OrderBy::Subject;
        // Literal types and the subject prefix are skipped by the group
        // itself; patterns with `*` are matched at delivery.
        let literal = record.filter.types.iter().all(|ty| !ty.contains('*'));
        spec.filter = GroupFilter {
            types: if literal {
                record.filter.types.clone()
            } else {
                Vec::new()
            },
            subject_prefix: record.filter.subject_prefix.clone(),
        };
        self.backend
            .put_group(topic, &group_name(&record.endpoint_id), spec)
            .await?;
        Ok(())
    }

    /// Applies a change stored by this process to the endpoint's runner at
    /// once, so it holds when the call that made it returns (a change of
    /// topics, or of enabled, is left to the reconcile it was woken for).
    async fn apply_now(&self, endpoint_id: &str) {
        let runner = self
            .runners
            .lock()
            .ok()
            .and_then(|runners| runners.get(endpoint_id).cloned());
        if let Some(runner) = runner
            && let Ok((record, revision)) = self.load(endpoint_id).await
        {
            runner.update(&record, revision);
        }
    }

    pub(crate) fn stop_runner(&self, endpoint_id: &str) {
        if let Some(runner) = self
            .runners
            .lock()
            .ok()
            .and_then(|mut runners| runners.remove(endpoint_id))
        {
            runner.cancel.cancel();
        }
    }

    /// Brings the running endpoints in line with the stored ones.
    pub(crate) async fn reconcile(self: &Arc<Self>, cancel: &CancellationToken) -> Result<()> {
        let records = self.load_all().await?;
        let mut wanted = HashSet::new();
        let mut disabled = 0;
        for (record, revision) in records {
            if !record.enabled {
                disabled += 1;
                continue;
            }
            wanted.insert(record.endpoint_id.clone());
            let existing = self
                .runners
                .lock()
                .ok()
                .and_then(|runners| runners.get(&record.endpoint_id).cloned());
            if let Some(runner) = &existing {
                if runner.update(&record, revision) {
                    continue;
                }
                // Other topics: new loops.
                self.stop_runner(&record.endpoint_id);
            }
            match Live::new(record, revision) {
                Ok(live) => self.start_runner(live, cancel),
                Err(error) => warn!(%error, "A stored webhook endpoint fails its checks."),
            }
        }
        let stale: Vec<String> = self
            .runners
            .lock()
            .map(|runners| {
                runners
                    .keys()
                    .filter(|id| !wanted.contains(*id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for endpoint_id in stale {
            self.stop_runner(&endpoint_id);
        }
        self.metrics.set_disabled(disabled);
        Ok(())
    }

    pub(crate) fn start_runner(self: &Arc<Self>, live: Live, cancel: &CancellationToken) {
        let endpoint_id = live.record.endpoint_id.clone();
        let topics = live.record.topics();
        let failing_since = live.record.failing_since;
        let runner = Arc::new(Runner {
            live: RwLock::new(Arc::new(live)),
            circuit: Mutex::new(Circuit::default()),
            stats: Mutex::new(Counts::default()),
            metrics: self.metrics.endpoint(&endpoint_id),
            budget: Arc::new(Semaphore::new(self.options.max_in_flight.max(1) as usize)),
            next_slot: tokio::sync::Mutex::new(None),
            failing_since: Mutex::new(failing_since),
            cancel: cancel.child_token(),
        });
        if let Ok(mut runners) = self.runners.lock() {
            runners.insert(endpoint_id.clone(), Arc::clone(&runner));
        }
        debug!(endpoint = %endpoint_id, "Delivering to a webhook endpoint.");
        for topic in topics {
            self.tasks
                .spawn(topic_loop(Arc::clone(self), Arc::clone(&runner), topic));
        }
    }

    /// One attempt of `event` (its `webhook-id` is `id`) to `live`'s
    /// endpoint, now.
    pub(crate) async fn send(
        &self,
        live: &Live,
        event: &herald_types::StoredEvent,
        id: &str,
    ) -> Outcome {
        let now = now_ms();
        // Room for the attributes and the data as base64, so the body is
        // written without growing.
        let data = event.event.data.as_ref().map_or(0, Bytes::len);
        let mut body = Vec::with_capacity(512 + data / 3 * 4 + 4);
        if event.write_json(&mut body).is_err() {
            body.clear();
        }
        let message = Message {
            id,
            body: Bytes::from(body),
            traceparent: event.event.traceparent.as_deref(),
        };
        self.sender
            .send(
                &live.url,
                &live.signing(now),
                &live.headers,
                &message,
                now / 1000,
                self.options.attempt_timeout,
            )
            .await
    }

    pub(crate) fn attempt_record(
        &self,
        endpoint_id: &str,
        message_id: String,
        attempt: u32,
        outcome: &Outcome,
        trigger: Trigger,
        next: String,
    ) -> AttemptRecord {
        AttemptRecord {
            // Both given by its page, when read back (its id and time).
            attempt_id: String::new(),
            endpoint_id: endpoint_id.to_owned(),
            message_id,
            attempt,
            at: String::new(),
            succeeded: outcome.succeeded(),
            status_code: outcome.status_code,
            latency_ms: millis(outcome.latency),
            error_class: outcome.class.as_str().to_owned(),
            error: outcome.error.clone(),
            response_excerpt: outcome.response_excerpt.clone(),
            trigger,
            next,
        }
    }

    /// Counts an outcome in the endpoint's stats and the metrics (an
    /// endpoint without a runner here, as jobs' notifications: the
    /// metrics only).
    pub(crate) fn note_outcome(&self, endpoint_id: &str, outcome: &Outcome) {
        let runner = self
            .runners
            .lock()
            .ok()
            .and_then(|runners| runners.get(endpoint_id).cloned());
        match runner {
            Some(runner) => runner.note(outcome),
            None => self.metrics.attempt(endpoint_id, outcome),
        }
    }

    /// Logs an attempt record ([`log_writer`]), with the attempts in
    /// flight beside it. A failure is logged, not returned: the delivery's
    /// outcome stands without its record.
    pub(crate) async fn log_attempt(&self, record: AttemptRecord) {
        self.write_log(record, None).await;
    }

    /// Logs an attempt record, then settles its delivery `delivery_id` of
    /// `group` on `topic` as `how` says (an ack in one call with the
    /// others of its write). A failure to settle is logged: the lease
    /// expires and the message comes back (at least once).
    pub(crate) async fn log_and_settle(
        &self,
        record: AttemptRecord,
        topic: &TopicName,
        group: &GroupName,
        delivery_id: &str,
        how: Settle,
    ) {
        if matches!(how, Settle::Ack) {
            let ack = Ack {
                topic: topic.clone(),
                group: group.clone(),
                delivery_id: delivery_id.to_owned(),
            };
            self.write_log(record, Some(ack)).await;
        } else {
            self.write_log(record, None).await;
            settle(self, topic, group, delivery_id, how).await;
        }
    }

    async fn write_log(&self, record: AttemptRecord, ack: Option<Ack>) {
        let (written, done) = oneshot::channel();
        if self
            .log
            .send(LogWrite {
                record,
                ack,
                written,
            })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// `endpoint_id`'s attempt page `page`, newest first (empty when gone
    /// or unreadable).
    async fn page(&self, endpoint_id: &str, page: &str) -> Result<Vec<AttemptRecord>> {
        let entry = self
            .backend
            .kv_get(ATTEMPTS_BUCKET, &format!("{endpoint_id}/{page}"))
            .await?;
        Ok(entry
            .and_then(|entry| decode_page(endpoint_id, page, &entry.value))
            .unwrap_or_default())
    }

    /// Every logged attempt of `message` to `endpoint_id`, newest first:
    /// those its runs of offsets name ([`BY_OFFSET_BUCKET`]), and those
    /// logged before runs ([`BY_MESSAGE_BUCKET`]).
    pub(crate) async fn attempts_of_message(
        &self,
        endpoint_id: &str,
        message: &str,
    ) -> Result<Vec<AttemptRecord>> {
        let mut pages: Vec<String> = Vec::new();
        if let Some((topic, partition, offset)) = parse_message_id(message) {
            let (prefix, mut after) = runs_around(endpoint_id, &topic, partition, offset);
            'runs: loop {
                let keys = self
                    .backend
                    .kv_keys(BY_OFFSET_BUCKET, &prefix, Some(&after), 256)
                    .await?;
                let Some(last) = keys.last() else { break };
                after.clone_from(last);
                for key in &keys {
                    let Some((first, last, page)) = parse_run(&key[prefix.len()..]) else {
                        continue;
                    };
                    if first > offset {
                        break 'runs;
                    }
                    if last >= offset && !pages.iter().any(|known| known == page) {
                        pages.push(page.to_owned());
                    }
                }
            }
        }
        let prefix = format!("{endpoint_id}/{message}/");
        let mut after = None;
        loop {
            let keys = self
                .backend
                .kv_keys(BY_MESSAGE_BUCKET, &prefix, after.as_deref(), 256)
                .await?;
            let Some(last) = keys.last() else { break };
            after = Some(last.clone());
            for key in &keys {
                let page = page_of(&key[prefix.len()..]);
                if !pages.iter().any(|known| known == page) {
                    pages.push(page.to_owned());
                }
            }
        }
        let mut records = Vec::new();
        for page in &pages {
            records.extend(
                self.page(endpoint_id, page)
                    .await?
                    .into_iter()
                    .filter(|record| record.message_id == message),
            );
        }
        records.sort_by(|a, b| a.attempt_id.cmp(&b.attempt_id));
        records.dedup_by(|a, b| a.attempt_id == b.attempt_id);
        Ok(records)
    }

    /// How many attempts of `message` are logged.
    pub(crate) async fn attempts_of(&self, endpoint_id: &str, message: &str) -> u32 {
        self.attempts_of_message(endpoint_id, message)
            .await
            .map_or(0, |records| {
                u32::try_from(records.len()).unwrap_or(u32::MAX)
            })
    }

    /// Deletes `endpoint_id`'s attempt records older than `before_ms`
    /// (all of them when `None`).
    pub(crate) async fn delete_attempts(
        &self,
        endpoint_id: &str,
        before_ms: Option<i64>,
    ) -> Result<u64> {
        let prefix = format!("{endpoint_id}/");
        let mut after = before_ms.map(|before| attempts_older_than(endpoint_id, before));
        let mut deleted = 0;
        loop {
            let keys = self
                .backend
                .kv_keys(ATTEMPTS_BUCKET, &prefix, after.as_deref(), 256)
                .await?;
            if keys.is_empty() {
                return Ok(deleted);
            }
            // A listing's pages in one durable step: a sweep keeps up with
            // attempts logged thousands a second (one fsync per record did
            // not).
            let mut doomed = Vec::with_capacity(keys.len() * 2);
            for key in &keys {
                let page = &key[prefix.len()..];
                if let Some(entry) = self.backend.kv_get(ATTEMPTS_BUCKET, key).await?
                    && let Some(records) = decode_page(endpoint_id, page, &entry.value)
                {
                    deleted += records.len() as u64;
                    if is_page(&entry.value) {
                        // A page: indexed by runs of offsets.
                        doomed.extend(
                            run_keys(endpoint_id, page, &records)
                                .into_iter()
                                .map(|run| (BY_OFFSET_BUCKET.to_owned(), run)),
                        );
                    } else {
                        // An attempt logged before pages: by its message.
                        doomed.extend(records.iter().map(|record| {
                            (
                                BY_MESSAGE_BUCKET.to_owned(),
                                format!(
                                    "{}/{}/{}",
                                    record.endpoint_id, record.message_id, record.attempt_id
                                ),
                            )
                        }));
                    }
                }
                doomed.push((ATTEMPTS_BUCKET.to_owned(), key.clone()));
            }
            self.backend.kv_delete_many(doomed).await?;
            after = keys.last().cloned();
        }
    }

    /// An attempt failed at `now`: remembers when the failures began;
    /// disables the endpoint when they have lasted `disable_after`.
    pub(crate) async fn note_failure(
        self: &Arc<Self>,
        endpoint_id: &str,
        since: Option<i64>,
        now: i64,
    ) {
        match since {
            None => {
                let result = self
                    .modify(endpoint_id, |record| {
                        record.failing_since.get_or_insert(now);
                        Ok(())
                    })
                    .await;
                if let Err(error) = result {
                    debug!(%error, "Could not note a webhook endpoint's first failure.");
                }
                self.changed.notify_one();
            }
            Some(since)
                if now - since
                    >= i64::try_from(millis(self.options.disable_after)).unwrap_or(i64::MAX) =>
            {
                let reason = format!(
                    "no successful delivery since {} ({} days or more)",
                    format_rfc3339_ms(since),
                    self.options.disable_after.as_secs() / 86_400
                );
                self.disable(endpoint_id, &reason).await;
            }
            Some(_) => {}
        }
    }

    /// An attempt succeeded after failures: the run of failures ends.
    pub(crate) async fn note_recovery(&self, endpoint_id: &str) {
        let result = self
            .modify(endpoint_id, |record| {
                record.failing_since = None;
                Ok(())
            })
            .await;
        if let Err(error) = result {
            debug!(%error, "Could not note a webhook endpoint's recovery.");
        }
        self.changed.notify_one();
    }

    /// Disables an endpoint on Herald's own decision, and says so on the
    /// events topic.
    pub(crate) async fn disable(self: &Arc<Self>, endpoint_id: &str, reason: &str) {
        let mut was_enabled = false;
        let result = self
            .modify(endpoint_id, |record| {
                was_enabled = record.enabled;
                record.enabled = false;
                record.disabled_reason = Some(reason.to_owned());
                Ok(())
            })
            .await;
        let record = match result {
            Ok(record) => record,
            Err(error) => {
                warn!(%error, endpoint = endpoint_id, "Could not disable a failing webhook endpoint.");
                return;
            }
        };
        self.stop_runner(endpoint_id);
        self.changed.notify_one();
        if !was_enabled {
            return;
        }
        warn!(endpoint = endpoint_id, reason, "Webhook endpoint disabled.");
        let data = serde_json::json!({
            "endpoint_id": endpoint_id,
            "url": record.url,
            "reason": reason,
            "failing_since": record.failing_since.map(format_rfc3339_ms),
        });
        let mut event = Event::new(
            format!("{endpoint_id}.disabled.{}", record.updated_at),
            SOURCE,
            "herald.webhook.endpoint.disabled",
        );
        event.subject = Some(endpoint_id.to_owned());
        event.key = Some(endpoint_id.to_owned());
        event.datacontenttype = Some("application/json".into());
        event.data = Some(encode(&data));
        let topic = &self.options.events_topic;
        if let Err(error) = self
            .backend
            .create_topic(TopicSpec::new(topic.clone()))
            .await
            && !matches!(error, herald_backend::Error::TopicExists { .. })
        {
            warn!(%error, "Could not create the webhook events topic.");
        }
        if let Err(error) = self
            .backend
            .publish(
                topic,
                vec![EventInput {
                    event,
                    partition: None,
                }],
            )
            .await
        {
            warn!(%error, "Could not publish that a webhook endpoint was disabled.");
        }
    }
}

async fn reconcile_loop(shared: &Arc<Shared>, cancel: &CancellationToken) {
    loop {
        if let Err(error) = shared.reconcile(cancel).await {
            warn!(%error, "Could not load webhook endpoints; trying again.");
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = shared.changed.notified() => {}
            () = tokio::time::sleep(shared.options.refresh_interval) => {}
        }
    }
}

/// Deletes attempt records past their retention, every `sweep_interval`.
async fn sweep_loop(shared: &Arc<Shared>, cancel: &CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(shared.options.sweep_interval) => {}
        }
        let cutoff =
            now_ms() - i64::try_from(millis(shared.options.attempt_retention)).unwrap_or(i64::MAX);
        let endpoints = match shared
            .backend
            .kv_keys(ENDPOINTS_BUCKET, "", None, MAX_ENDPOINTS)
            .await
        {
            Ok(mut endpoints) => {
                endpoints.push(crate::jobs::JOBS_ENDPOINT_ID.to_owned());
                endpoints
            }
            Err(error) => {
                warn!(%error, "Could not list webhook endpoints to sweep their attempts.");
                continue;
            }
        };
        for endpoint_id in endpoints {
            match shared.delete_attempts(&endpoint_id, Some(cutoff)).await {
                Ok(0) => {}
                Ok(deleted) => {
                    debug!(endpoint = %endpoint_id, deleted, "Expired webhook attempts.");
                }
                Err(error) => warn!(%error, "Could not expire webhook attempts."),
            }
        }
    }
}
