//! The job record, the requests that change it, and its state machine as
//! pure functions: `(job, command, now) → unchanged | (job', effects)`.
//!
//! ```text
//!            submit                 first start/progress/part
//!   (none) ─────────▶ pending ────────────────────────────▶ running
//!                        │                                     │
//!                        └──────────────┬──────────────────────┘
//!                                       │ every part reported (or the whole job):
//!                                       │   no error → succeeded, else failed
//!                                       │ dead letter (attempts exhausted) → that part failed
//!                                       │ deadline: parts → partial (missing listed),
//!                                       │           whole job → failed
//!                                       ▼
//!                       succeeded | failed | partial ──(result_ttl_ms)──▶ removed
//! ```
//!
//! A job without `parts` is one implicit part (`part` absent in calls).
//! Completing is idempotent per part: the same outcome again changes
//! nothing; a different one is a [`Error::Conflict`] and changes nothing.
//! Effects are data ([`Effect`]); the service writes timers and blob pins
//! before the new record and publishes events after it (see the crate docs).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = JobStatus))]
pub enum Status {
    /// Submitted; no worker has reported yet.
    Pending,
    /// A worker started it or reported progress.
    Running,
    /// Every part reported without error.
    Succeeded,
    /// It, or one of its parts, failed (error reported, or attempts exhausted).
    Failed,
    /// Its deadline passed before every part reported (`missing` lists them).
    Partial,
}

impl Status {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Partial)
    }

    /// The name as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Partial => "partial",
        }
    }
}

/// Where a part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PartStatus {
    /// Not reported yet.
    Pending,
    /// Reported a result.
    Succeeded,
    /// Reported an error, or exhausted its attempts.
    Failed,
}

/// What a worker reported for a part (or the whole job).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = JobOutcome))]
pub struct Outcome {
    /// The result, any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// A blob holding the result (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_blob: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One part of a scatter-gather job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = JobPart))]
pub struct Part {
    /// The part's key: its routing key and its name in calls.
    pub key: String,
    /// Where it is.
    pub status: PartStatus,
    /// The request data of this part.
    #[serde(default)]
    pub data: Value,
    /// What the worker reported.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Progress: parts done of the total, and the latest report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = JobProgress))]
pub struct Progress {
    /// Parts reported (a job without parts has one).
    pub done: u32,
    /// Parts in all.
    pub total: u32,
    /// The latest `progress` a worker reported (its own scale, e.g. 0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<f64>,
    /// The latest `message` a worker reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where to notify when the job ends (stored; delivery is the webhook
/// service's, which consumes the job events topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notify {
    /// The URL to POST the final job to.
    pub webhook_url: String,
}

/// A job as stored (times in ms since the Unix epoch); the API renders it
/// as a [`JobView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub job_id: String,
    /// The queue it was submitted to.
    pub queue: String,
    /// Where it is.
    pub status: Status,
    /// The request data.
    #[serde(default)]
    pub data: Value,
    /// The request's input blob, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Its parts (empty: a job without parts).
    #[serde(default)]
    pub parts: Vec<Part>,
    /// Parts done of the total, and the latest report.
    pub progress: Progress,
    /// The whole job's result (jobs without parts; parts carry their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The whole job's result blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_blob: Option<String>,
    /// Why it failed or is partial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `partial`: the keys of the parts that never reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Where to notify when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// Submitted at, ms since the Unix epoch.
    pub created_at: i64,
    /// Last changed at, ms since the Unix epoch.
    pub updated_at: i64,
    /// When it ends as `partial` (or `failed`) if not done, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<i64>,
    /// How long the result is kept once the job ended.
    pub result_ttl_ms: u64,
    /// When the ended job is removed, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Transitions so far (the sequence number of its events).
    pub version: u64,
    /// The trace it continues (W3C `traceparent`), carried by its requests
    /// and transition events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The correlation id its requests and transition events carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// The id of the event that caused it, carried on likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
}

/// A job as the API renders it (`GET /v1/jobs/{job_id}`, its SSE events,
/// the gRPC job documents, a job's webhook notification): the stored [`Job`]
/// with its times as RFC 3339 strings (ms, UTC) like every other time of the
/// API. The store keeps ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Job))]
pub struct JobView {
    /// The job's id.
    pub job_id: String,
    /// The queue it was submitted to.
    pub queue: String,
    /// Where it is.
    pub status: Status,
    /// The request data.
    pub data: Value,
    /// The request's input blob, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Its parts (empty: a job without parts).
    pub parts: Vec<Part>,
    /// Parts done of the total, and the latest report.
    pub progress: Progress,
    /// The whole job's result (jobs without parts; parts carry their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The whole job's result blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_blob: Option<String>,
    /// Why it failed or is partial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `partial`: the keys of the parts that never reported.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// Where to notify when it ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// When it was submitted (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(example = "2026-12-03T07:30:00.000Z"))]
    pub created_at: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// When it ends as `partial` (or `failed`) if not done (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<String>,
    /// How long the result is kept once the job ended.
    pub result_ttl_ms: u64,
    /// When the ended job is removed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Transitions so far (the sequence number of its events).
    pub version: u64,
    /// The trace it continues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Its correlation id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// The id of the event that caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        Self {
            job_id: job.job_id,
            queue: job.queue,
            status: job.status,
            data: job.data,
            blob: job.blob,
            parts: job.parts,
            progress: job.progress,
            result: job.result,
            result_blob: job.result_blob,
            error: job.error,
            missing: job.missing,
            notify: job.notify,
            created_at: herald_types::format_rfc3339_ms(job.created_at),
            updated_at: herald_types::format_rfc3339_ms(job.updated_at),
            deadline_at: job.deadline_at.map(herald_types::format_rfc3339_ms),
            result_ttl_ms: job.result_ttl_ms,
            expires_at: job.expires_at.map(herald_types::format_rfc3339_ms),
            version: job.version,
            traceparent: job.traceparent,
            correlationid: job.correlationid,
            causationid: job.causationid,
        }
    }
}

/// `POST /v1/queues/{queue}/jobs`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubmitRequest {
    /// The request, any JSON; workers get it as is.
    #[serde(default)]
    pub data: Value,
    /// An input blob (`sha256:<hex>`, uploaded with `POST /v1/blobs`).
    #[serde(default)]
    pub blob: Option<String>,
    /// Scatter-gather: one request per part, routed by its key.
    #[serde(default)]
    pub parts: Option<Vec<PartInput>>,
    /// End the job this long after submission if not every part reported.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Keep the result this long after the job ended (default: the
    /// service's `default_result_ttl_ms`).
    #[serde(default)]
    pub result_ttl_ms: Option<u64>,
    /// Where to notify when it ends.
    #[serde(default)]
    pub notify: Option<Notify>,
    /// The trace the job continues (W3C `traceparent`; over HTTP the
    /// request's `traceparent` header when absent here).
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The correlation id of what caused it (lineage follows it).
    #[serde(default)]
    pub correlationid: Option<String>,
    /// The id of the event that caused it (lineage draws the job under it).
    #[serde(default)]
    pub causationid: Option<String>,
}

/// One part of a submit.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartInput {
    /// The part's key (1–200 bytes, unique in the job): routes the part's
    /// request (events with one key share a partition).
    pub key: String,
    /// The part's request data.
    #[serde(default)]
    pub data: Value,
}

/// `POST /v1/jobs/{job_id}/progress`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProgressRequest {
    /// The part's key (required for jobs with parts; absent otherwise).
    #[serde(default)]
    pub part: Option<String>,
    /// Progress on the worker's own scale (e.g. 0–100); the job shows the
    /// latest as `progress.reported`.
    #[serde(default)]
    pub progress: Option<f64>,
    /// A short human-readable message; the job shows the latest as
    /// `progress.message`.
    #[serde(default)]
    pub message: Option<String>,
    /// The delivery being worked on (its `delivery_id` from the fetch): its
    /// lease is extended by the queue's ack wait.
    #[serde(default)]
    pub delivery_id: Option<String>,
}

/// `POST /v1/jobs/{job_id}/complete`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompleteRequest {
    /// The part (required for jobs with parts).
    #[serde(default)]
    pub part: Option<String>,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The delivery this completes: acked once the outcome is stored.
    #[serde(default)]
    pub delivery_id: Option<String>,
}

/// Limits a submit is checked against.
#[derive(Debug, Clone, Copy)]
pub struct SubmitLimits {
    /// The most parts.
    pub max_parts: usize,
    /// The longest part key, in bytes.
    pub max_key_bytes: usize,
    /// The default result TTL.
    pub default_result_ttl_ms: u64,
    /// The longest result TTL and deadline.
    pub max_ttl_ms: u64,
}

/// What happens to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A worker received the request of `part` (attempt n).
    Started {
        /// The part.
        part: Option<String>,
    },
    /// A worker reported progress.
    Progress {
        /// The part.
        part: Option<String>,
        /// Progress on the worker's scale.
        progress: Option<f64>,
        /// A message.
        message: Option<String>,
    },
    /// A worker reported the outcome of `part`.
    Complete {
        /// The part.
        part: Option<String>,
        /// The outcome.
        outcome: Outcome,
    },
    /// The request of `part` exhausted its attempts (a dead letter).
    DeadLetter {
        /// The part.
        part: Option<String>,
        /// Why, as the group recorded it.
        reason: String,
    },
    /// The job's deadline passed.
    Deadline,
}

/// A side effect of a transition, executed by the service once the new
/// record is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Publish a transition event of this kind on the job events topic.
    Emit(&'static str),
    /// Publish the requests to the queue's topic (submit).
    Dispatch,
    /// Store a timer: at `due_ms`, fire `kind` for the job.
    Schedule {
        /// When.
        due_ms: i64,
        /// `deadline` or `expire`.
        kind: TimerKind,
    },
    /// Record that the job references this blob.
    PinBlob(String),
}

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// End the job as `partial`/`failed` if it has not ended.
    Deadline,
    /// Remove the ended job and its blob references.
    Expire,
}

impl TimerKind {
    /// The name in timer keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::Expire => "expire",
        }
    }
}

impl std::str::FromStr for TimerKind {
    type Err = ();

    fn from_str(text: &str) -> std::result::Result<Self, ()> {
        match text {
            "deadline" => Ok(Self::Deadline),
            "expire" => Ok(Self::Expire),
            _ => Err(()),
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Nothing (an idempotent repeat, or a late report of an ended job).
    Unchanged,
    /// The new record and what to do once it is stored.
    Changed(Box<Job>, Vec<Effect>),
}

/// A new job from a submit, checked against `limits`; the effects store its
/// timers, pin its blob and dispatch its requests.
pub fn new_job(
    job_id: String,
    queue: String,
    request: SubmitRequest,
    limits: SubmitLimits,
    now: i64,
) -> Result<(Job, Vec<Effect>)> {
    check_context(&request)?;
    let parts = match request.parts {
        None => Vec::new(),
        Some(parts) => check_parts(parts, limits)?,
    };
    let result_ttl_ms = request
        .result_ttl_ms
        .unwrap_or(limits.default_result_ttl_ms);
    if result_ttl_ms == 0 || result_ttl_ms > limits.max_ttl_ms {
        return Err(Error::invalid(
            "result_ttl_ms",
            format!("must be between 1 and {}", limits.max_ttl_ms),
        ));
    }
    if let Some(deadline_ms) = request.deadline_ms
        && (deadline_ms == 0 || deadline_ms > limits.max_ttl_ms)
    {
        return Err(Error::invalid(
            "deadline_ms",
            format!("must be between 1 and {}", limits.max_ttl_ms),
        ));
    }
    if let Some(blob) = &request.blob {
        check_blob_id("blob", blob)?;
    }
    if let Some(notify) = &request.notify
        && !(notify.webhook_url.starts_with("http://")
            || notify.webhook_url.starts_with("https://"))
    {
        return Err(Error::invalid(
            "notify.webhook_url",
            "must be an http:// or https:// URL",
        ));
    }
    let deadline_at = request
        .deadline_ms
        .map(|deadline| now.saturating_add(i64::try_from(deadline).unwrap_or(i64::MAX)));
    let total = u32::try_from(parts.len().max(1)).unwrap_or(u32::MAX);
    let job = Job {
        job_id,
        queue,
        status: Status::Pending,
        data: request.data,
        blob: request.blob,
        parts,
        progress: Progress {
            done: 0,
            total,
            reported: None,
            message: None,
        },
        result: None,
        result_blob: None,
        error: None,
        missing: Vec::new(),
        notify: request.notify,
        created_at: now,
        updated_at: now,
        deadline_at,
        result_ttl_ms,
        expires_at: None,
        version: 1,
        traceparent: request.traceparent,
        correlationid: request.correlationid,
        causationid: request.causationid,
    };
    let mut effects = Vec::new();
    if let Some(blob) = &job.blob {
        effects.push(Effect::PinBlob(blob.clone()));
    }
    if let Some(due_ms) = deadline_at {
        effects.push(Effect::Schedule {
            due_ms,
            kind: TimerKind::Deadline,
        });
    }
    effects.push(Effect::Dispatch);
    effects.push(Effect::Emit("submitted"));
    Ok((job, effects))
}

/// A submit's trace and lineage context follows the rules of the same
/// event attributes (non-empty; a well-formed `traceparent`).
fn check_context(request: &SubmitRequest) -> Result<()> {
    for (field, value) in [
        ("traceparent", &request.traceparent),
        ("correlationid", &request.correlationid),
        ("causationid", &request.causationid),
    ] {
        let Some(value) = value else { continue };
        let mut probe = herald_types::Event::new("probe", "probe", "probe");
        match field {
            "traceparent" => probe.traceparent = Some(value.clone()),
            "correlationid" => probe.correlationid = Some(value.clone()),
            _ => probe.causationid = Some(value.clone()),
        }
        probe
            .validate()
            .map_err(|error| Error::invalid(field, error.to_string()))?;
    }
    Ok(())
}

/// Applies `command` to `job` at `now`.
pub fn apply(job: &Job, command: &Command, now: i64) -> Result<Applied> {
    match command {
        Command::Started { part } => {
            part_index(job, part.as_deref())?;
            if job.status != Status::Pending {
                return Ok(Applied::Unchanged);
            }
            let mut next = job.clone();
            next.status = Status::Running;
            Ok(changed(next, now, vec![Effect::Emit("running")]))
        }
        Command::Progress {
            part,
            progress,
            message,
        } => {
            part_index(job, part.as_deref())?;
            if job.status.is_terminal() {
                return Ok(Applied::Unchanged);
            }
            let mut next = job.clone();
            next.status = Status::Running;
            next.progress.reported = *progress;
            next.progress.message.clone_from(message);
            Ok(changed(next, now, vec![Effect::Emit("progress")]))
        }
        Command::Complete { part, outcome } => complete(job, part.as_deref(), outcome, now),
        Command::DeadLetter { part, reason } => {
            let index = part_index(job, part.as_deref())?;
            let reported = match index {
                Some(index) => job.parts[index].status != PartStatus::Pending,
                None => job.status.is_terminal(),
            };
            if reported || job.status.is_terminal() {
                return Ok(Applied::Unchanged);
            }
            let outcome = Outcome {
                error: Some(format!("attempts exhausted: {reason}")),
                ..Outcome::default()
            };
            complete(job, part.as_deref(), &outcome, now)
        }
        Command::Deadline => {
            if job.status.is_terminal() {
                return Ok(Applied::Unchanged);
            }
            let mut next = job.clone();
            if next.parts.is_empty() {
                next.status = Status::Failed;
                next.error = Some("the deadline passed before a worker completed the job".into());
            } else {
                next.status = Status::Partial;
                next.missing = next
                    .parts
                    .iter()
                    .filter(|part| part.status == PartStatus::Pending)
                    .map(|part| part.key.clone())
                    .collect();
                next.error = Some(format!(
                    "the deadline passed before {} of {} parts reported",
                    next.missing.len(),
                    next.parts.len()
                ));
            }
            let kind = next.status.as_str();
            Ok(changed_final(next, now, kind))
        }
    }
}

/// Whether `id` is a blob id: `sha256:` and 64 lowercase hex digits.
pub fn is_blob_id(id: &str) -> bool {
    id.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

fn check_blob_id(field: &str, id: &str) -> Result<()> {
    if is_blob_id(id) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{id:?} is not a blob id (sha256:<64 lowercase hex digits>)"),
        ))
    }
}

fn check_parts(parts: Vec<PartInput>, limits: SubmitLimits) -> Result<Vec<Part>> {
    if parts.is_empty() {
        return Err(Error::invalid(
            "parts",
            "must not be empty; leave it out for a job without parts",
        ));
    }
    if parts.len() > limits.max_parts {
        return Err(Error::invalid(
            "parts",
            format!("at most {} parts, got {}", limits.max_parts, parts.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    parts
        .into_iter()
        .enumerate()
        .map(|(index, part)| {
            if part.key.is_empty() || part.key.len() > limits.max_key_bytes {
                return Err(Error::invalid(
                    format!("parts[{index}].key"),
                    format!("must be 1 to {} bytes", limits.max_key_bytes),
                ));
            }
            if part.key.chars().any(char::is_control) {
                return Err(Error::invalid(
                    format!("parts[{index}].key"),
                    "must not contain control characters",
                ));
            }
            if !seen.insert(part.key.clone()) {
                return Err(Error::invalid(
                    format!("parts[{index}].key"),
                    format!("{:?} appears twice; part keys must be unique", part.key),
                ));
            }
            Ok(Part {
                key: part.key,
                status: PartStatus::Pending,
                data: part.data,
                outcome: Outcome::default(),
            })
        })
        .collect()
}

/// The index of `part` in `job` (`None` for a job without parts), or why
/// the call does not fit the job's shape.
fn part_index(job: &Job, part: Option<&str>) -> Result<Option<usize>> {
    match (job.parts.is_empty(), part) {
        (true, None) => Ok(None),
        (true, Some(_)) => Err(Error::invalid(
            "part",
            format!("job {:?} has no parts; leave part out", job.job_id),
        )),
        (false, None) => Err(Error::invalid(
            "part",
            format!("job {:?} has parts; name the part", job.job_id),
        )),
        (false, Some(key)) => job
            .parts
            .iter()
            .position(|candidate| candidate.key == key)
            .map(Some)
            .ok_or_else(|| Error::PartNotFound {
                job_id: job.job_id.clone(),
                part: key.to_owned(),
            }),
    }
}

fn complete(job: &Job, part: Option<&str>, outcome: &Outcome, now: i64) -> Result<Applied> {
    let index = part_index(job, part)?;
    if outcome.result.is_some() && outcome.error.is_some() {
        return Err(Error::invalid(
            "error",
            "give either a result (and/or result_blob) or an error, not both",
        ));
    }
    if let Some(blob) = &outcome.result_blob {
        check_blob_id("result_blob", blob)?;
    }
    let name = part.map_or_else(|| "the job".to_owned(), |key| format!("part {key:?}"));
    let recorded = match index {
        Some(index) => {
            let recorded = &job.parts[index];
            (recorded.status != PartStatus::Pending).then(|| recorded.outcome.clone())
        }
        None => job.status.is_terminal().then(|| Outcome {
            result: job.result.clone(),
            result_blob: job.result_blob.clone(),
            error: job.error.clone(),
        }),
    };
    if let Some(recorded) = recorded {
        if &recorded == outcome {
            return Ok(Applied::Unchanged);
        }
        return Err(Error::Conflict {
            job_id: job.job_id.clone(),
            detail: format!("{name} already ended with a different outcome; nothing was changed"),
        });
    }
    if job.status.is_terminal() {
        return Err(Error::Conflict {
            job_id: job.job_id.clone(),
            detail: format!(
                "the job ended ({}) before {name} reported",
                job.status.as_str()
            ),
        });
    }
    let mut next = job.clone();
    let mut effects = Vec::new();
    if let Some(blob) = &outcome.result_blob {
        effects.push(Effect::PinBlob(blob.clone()));
    }
    next.progress.done = next.progress.done.saturating_add(1);
    match index {
        Some(index) => {
            let slot = &mut next.parts[index];
            slot.status = if outcome.error.is_some() {
                PartStatus::Failed
            } else {
                PartStatus::Succeeded
            };
            slot.outcome = outcome.clone();
            if next
                .parts
                .iter()
                .any(|part| part.status == PartStatus::Pending)
            {
                next.status = Status::Running;
                effects.push(Effect::Emit("part_completed"));
                return Ok(changed(next, now, effects));
            }
            let failed: Vec<&str> = next
                .parts
                .iter()
                .filter(|part| part.status == PartStatus::Failed)
                .map(|part| part.key.as_str())
                .collect();
            if failed.is_empty() {
                next.status = Status::Succeeded;
            } else {
                next.status = Status::Failed;
                next.error = Some(format!("parts failed: {}", failed.join(", ")));
            }
        }
        None => {
            next.result.clone_from(&outcome.result);
            next.result_blob.clone_from(&outcome.result_blob);
            next.error.clone_from(&outcome.error);
            next.status = if outcome.error.is_some() {
                Status::Failed
            } else {
                Status::Succeeded
            };
        }
    }
    let kind = next.status.as_str();
    let Applied::Changed(next, mut rest) = changed_final(next, now, kind) else {
        return Ok(Applied::Unchanged);
    };
    effects.append(&mut rest);
    Ok(Applied::Changed(next, effects))
}

fn changed(mut next: Job, now: i64, effects: Vec<Effect>) -> Applied {
    next.updated_at = now;
    next.version = next.version.saturating_add(1);
    Applied::Changed(Box::new(next), effects)
}

/// The job ended: keep its result for `result_ttl_ms`.
fn changed_final(mut next: Job, now: i64, kind: &'static str) -> Applied {
    let expires_at = now.saturating_add(i64::try_from(next.result_ttl_ms).unwrap_or(i64::MAX));
    next.expires_at = Some(expires_at);
    changed(
        next,
        now,
        vec![
            Effect::Schedule {
                due_ms: expires_at,
                kind: TimerKind::Expire,
            },
            Effect::Emit(kind),
        ],
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde_json::json;

    use super::*;

    const LIMITS: SubmitLimits = SubmitLimits {
        max_parts: 4,
        max_key_bytes: 10,
        default_result_ttl_ms: 1_000,
        max_ttl_ms: 10_000,
    };

    fn submit(parts: Option<Vec<&str>>) -> Job {
        let request = SubmitRequest {
            data: json!({"x": 1}),
            blob: None,
            parts: parts.map(|keys| {
                keys.into_iter()
                    .map(|key| PartInput {
                        key: key.into(),
                        data: json!(key),
                    })
                    .collect()
            }),
            deadline_ms: Some(500),
            result_ttl_ms: None,
            notify: None,
            traceparent: None,
            correlationid: None,
            causationid: None,
        };
        new_job("j1".into(), "q".into(), request, LIMITS, 100)
            .unwrap()
            .0
    }

    fn done(part: Option<&str>, result: Value) -> Command {
        Command::Complete {
            part: part.map(str::to_owned),
            outcome: Outcome {
                result: Some(result),
                ..Outcome::default()
            },
        }
    }

    fn unwrap_changed(applied: Applied) -> (Job, Vec<Effect>) {
        match applied {
            Applied::Changed(job, effects) => (*job, effects),
            Applied::Unchanged => panic!("expected a change"),
        }
    }

    #[test]
    fn given_whole_job_when_completed_twice_same_should_be_unchanged_and_different_conflict() {
        let job = submit(None);
        let (job, effects) = unwrap_changed(apply(&job, &done(None, json!(1)), 200).unwrap());
        assert_eq!(job.status, Status::Succeeded);
        assert_eq!(job.expires_at, Some(1_200));
        assert!(effects.contains(&Effect::Emit("succeeded")));
        assert_eq!(
            apply(&job, &done(None, json!(1)), 300).unwrap(),
            Applied::Unchanged
        );
        let conflict = apply(&job, &done(None, json!(2)), 300).unwrap_err();
        assert_eq!(conflict.code(), "job_conflict");
    }

    #[test]
    fn given_parts_when_all_report_should_succeed_and_count_progress() {
        let job = submit(Some(vec!["a", "b"]));
        let (job, _) = unwrap_changed(apply(&job, &done(Some("a"), json!(1)), 200).unwrap());
        assert_eq!((job.status, job.progress.done), (Status::Running, 1));
        let (job, _) = unwrap_changed(apply(&job, &done(Some("b"), json!(2)), 200).unwrap());
        assert_eq!((job.status, job.progress.done), (Status::Succeeded, 2));
    }

    #[test]
    fn given_parts_when_deadline_passes_should_be_partial_listing_missing() {
        let job = submit(Some(vec!["a", "b", "c"]));
        let (job, _) = unwrap_changed(apply(&job, &done(Some("b"), json!(1)), 200).unwrap());
        let (job, _) = unwrap_changed(apply(&job, &Command::Deadline, 600).unwrap());
        assert_eq!(job.status, Status::Partial);
        assert_eq!(job.missing, vec!["a".to_owned(), "c".to_owned()]);
        let late = apply(&job, &done(Some("a"), json!(1)), 700).unwrap_err();
        assert_eq!(late.code(), "job_conflict");
        assert_eq!(
            apply(&job, &Command::Deadline, 700).unwrap(),
            Applied::Unchanged
        );
    }

    #[test]
    fn given_malformed_parts_when_submitted_should_refuse_naming_field() {
        for (parts, field) in [
            (vec![], "parts"),
            (vec!["a", "a"], "parts[1].key"),
            (vec![""], "parts[0].key"),
            (vec!["a", "b", "c", "d", "e"], "parts"),
            (vec!["much-too-long-key"], "parts[0].key"),
        ] {
            let request = SubmitRequest {
                data: Value::Null,
                blob: None,
                parts: Some(
                    parts
                        .into_iter()
                        .map(|key| PartInput {
                            key: key.into(),
                            data: Value::Null,
                        })
                        .collect(),
                ),
                deadline_ms: None,
                result_ttl_ms: None,
                notify: None,
                traceparent: None,
                correlationid: None,
                causationid: None,
            };
            let error = new_job("j".into(), "q".into(), request, LIMITS, 0).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidArgument { field: actual, .. } if actual == field),
                "{error}"
            );
        }
    }

    #[test]
    fn given_dead_letter_when_part_pending_should_fail_part_but_not_after_report() {
        let job = submit(Some(vec!["a"]));
        let dead = Command::DeadLetter {
            part: Some("a".into()),
            reason: "lease expired".into(),
        };
        let (failed, _) = unwrap_changed(apply(&job, &dead, 200).unwrap());
        assert_eq!(failed.status, Status::Failed);
        assert!(failed.error.unwrap().contains('a'));
        let (ok, _) = unwrap_changed(apply(&job, &done(Some("a"), json!(1)), 200).unwrap());
        assert_eq!(apply(&ok, &dead, 300).unwrap(), Applied::Unchanged);
    }

    #[test]
    fn given_unknown_part_should_be_part_not_found() {
        let job = submit(Some(vec!["a"]));
        let error = apply(&job, &done(Some("zz"), json!(1)), 200).unwrap_err();
        assert_eq!(error.code(), "part_not_found");
    }
}
