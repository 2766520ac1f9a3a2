//! Jobs (`herald-jobs` behind HTTP): submit, status with long-poll, SSE,
//! and the worker side.
//!
//! | method and path | body / query | answer |
//! |---|---|---|
//! | `POST /v1/queues/{queue}/jobs` | [`SubmitRequest`] | 202 `{job_id, status}` with `Location` |
//! | `GET /v1/jobs/{job_id}` | `wait_ms` (≤ 300 000) long-polls until it ends | 200 [`JobView`] (times in RFC 3339) |
//! | `GET /v1/jobs/{job_id}/events` | | SSE: `status` (now), `progress` (each change), `result` (the end; then the stream closes) |
//! | `POST /v1/jobs/{job_id}/progress` | [`ProgressRequest`] | 200 [`JobView`] |
//! | `POST /v1/jobs/{job_id}/complete` | [`CompleteRequest`] (idempotent per part) | 200 [`JobView`]; 409 `job_conflict` for a different outcome |
//! | `POST /v1/queues/{queue}/fetch` | `{member, max, wait_ms}` | 200 `{deliveries: [{delivery_id, attempt, job_id, part, data, blob}]}`; 404 `queue_not_found` if no job was ever submitted to the queue (a fetch creates it only with `jobs.create_queues_on_fetch`) |
//! | `POST /v1/queues/{queue}/ack` | `{delivery_ids}` | 200 `{acked}` |
//! | `POST /v1/queues/{queue}/nack` | `{delivery_ids, delay_ms?}` | 200 `{nacked}` |
//!
//! Workers may instead consume the queue's topic `jobs.<queue>` with any
//! group of their own (group `workers` is the one the queue endpoints use):
//! each event's data is a `JobRequest` `{job_id, queue, part, data, blob}`,
//! its key and subject the part key (or the job id). Shard workers use a
//! `keyed` or `stream` group, or a group with `filter.subject_prefix` = their
//! key, to see only their parts.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use herald_backend::FetchRequest;
use herald_jobs::{CompleteRequest, Job, JobDelivery, JobView, ProgressRequest, SubmitRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::AppState;
use super::extract::{JsonBody, NoQuery, Query};
use crate::problem::{Code, Problem};

/// The longest `wait_ms` of a status long-poll.
pub const MAX_WAIT_MS: u64 = 300_000;

/// The `{queue}` of a path.
#[derive(Debug)]
pub struct QueuePath(pub String);

impl FromRequestParts<AppState> for QueuePath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Path(queue) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Problem::new(Code::InvalidName, rejection.body_text()))?;
        // The queue names the topic `jobs.<queue>`, so it follows the name rule.
        format!("jobs.{queue}")
            .parse::<herald_types::TopicName>()
            .map_err(|error| {
                Problem::new(
                    Code::InvalidName,
                    format!("invalid queue {queue:?}: {error}"),
                )
            })?;
        Ok(Self(queue))
    }
}

/// The `{job_id}` of a path.
#[derive(Debug)]
pub struct JobPath(pub String);

impl FromRequestParts<AppState> for JobPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Path(job_id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Problem::new(Code::NotFound, rejection.body_text()))?;
        Ok(Self(job_id))
    }
}

/// What a submit answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    /// The job's id.
    pub job_id: String,
    /// `pending`.
    pub status: herald_jobs::Status,
}

/// `GET /v1/jobs/{job_id}` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait up to this long for the job to end (0: answer at once).
    #[serde(default)]
    #[param(maximum = 300_000)]
    pub wait_ms: u64,
}

/// A worker's fetch.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueFetch {
    /// The worker (any stable string naming it).
    pub member: String,
    /// Requests wanted at most.
    #[serde(default = "default_max")]
    pub max: u32,
    /// Wait up to this long for the first.
    #[serde(default)]
    pub wait_ms: u64,
}

fn default_max() -> u32 {
    1
}

/// What a worker's fetch answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueDeliveries {
    /// Requests, possibly none.
    pub deliveries: Vec<JobDelivery>,
}

/// Ack or nack of queue deliveries.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSettle {
    /// The deliveries.
    pub delivery_ids: Vec<String>,
    /// Nack only: redeliver after this long (default: the backoff).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// What a queue ack did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Settled {
    /// Deliveries acked.
    pub acked: u64,
}

/// What a queue nack did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Nacked {
    /// Deliveries released for redelivery (or dead-lettered after their last
    /// attempt).
    pub nacked: u64,
}

/// `POST /v1/queues/{queue}/jobs` → 202.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/jobs", tag = "jobs",
    params(("queue" = String, Path, description = "The queue (its topic is `jobs.<queue>`, created by its first submit).", example = "thumbnails")),
    request_body = SubmitRequest,
    responses(
        (status = 202, description = "Accepted; its requests are on the queue.", body = Submitted,
         headers(("Location" = String, description = "The job's URL."))),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    QueuePath(queue): QueuePath,
    _query: NoQuery,
    headers: axum::http::HeaderMap,
    JsonBody(mut request): JsonBody<SubmitRequest>,
) -> Result<Response, Problem> {
    let jobs = state.jobs()?;
    if request.traceparent.is_none() {
        request.traceparent = crate::trace::incoming(&headers).map(str::to_owned);
    }
    if let Some(blob) = &request.blob {
        require_blob(&state.blobs, "blob", blob).await?;
    }
    if let Some(notify) = &request.notify {
        // Delivered like a webhook endpoint's: the same SSRF guard.
        state
            .webhooks()?
            .check_notify_url(&notify.webhook_url)
            .await?;
    }
    let job = jobs.submit(&queue, request).await?;
    let location = format!("/v1/jobs/{}", job.job_id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(Submitted {
            job_id: job.job_id,
            status: job.status,
        }),
    )
        .into_response())
}

/// `GET /v1/jobs/{job_id}` → 200 (after up to `wait_ms` for it to end).
#[utoipa::path(
    get, path = "/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "The job."), WaitQuery),
    responses(
        (status = 200, description = "The job (ended, or as it is when `wait_ms` ran out).", body = JobView),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    JobPath(job_id): JobPath,
    Query(query): Query<WaitQuery>,
) -> Result<Json<JobView>, Problem> {
    if query.wait_ms > MAX_WAIT_MS {
        return Err(Problem::new(
            Code::InvalidArgument,
            format!("invalid wait_ms: must be at most {MAX_WAIT_MS}"),
        ));
    }
    let jobs = state.jobs()?;
    let wait = Duration::from_millis(query.wait_ms);
    tokio::select! {
        biased;
        job = jobs.wait(&job_id, wait) => Ok(Json(job?.into())),
        // Shutdown does not wait for long polls: answer with the job as it is.
        () = state.stopping.cancelled() => Ok(Json(jobs.get(&job_id).await?.into())),
    }
}

/// `GET /v1/jobs/{job_id}/events` → SSE.
#[utoipa::path(
    get, path = "/v1/jobs/{job_id}/events", tag = "jobs",
    params(("job_id" = String, Path, description = "The job.")),
    responses(
        (status = 200, description = "`text/event-stream`: event `status` with the job now, `progress` with the job after each change, `result` with the ended job (then the stream ends).",
         content_type = "text/event-stream", body = JobStreamEvent),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    JobPath(job_id): JobPath,
    _query: NoQuery,
) -> Result<Response, Problem> {
    let jobs = state.jobs()?.clone();
    // Subscribe first, then read: no change can fall in between.
    let updates = jobs.subscribe();
    let job = jobs.get(&job_id).await?;
    let first = sse_event(
        if job.status.is_terminal() {
            "result"
        } else {
            "status"
        },
        &job,
    );
    let state_machine = Follow {
        jobs,
        job_id,
        updates,
        ended: job.status.is_terminal(),
    };
    let rest = futures::stream::unfold(state_machine, Follow::next);
    let stream = futures::stream::once(async move { first })
        .chain(rest)
        .map(Ok::<_, Infallible>)
        .take_until(state.stopping.clone().cancelled_owned());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One event of `GET /v1/jobs/{job_id}/events` (documentation only).
#[derive(Debug, utoipa::ToSchema)]
#[allow(
    dead_code,
    reason = "describes the SSE frames for OpenAPI; never built"
)]
pub struct JobStreamEvent {
    /// `status` (the first), `progress`, or `result` (the last).
    pub event: String,
    /// The job's version after the change.
    pub id: String,
    /// The job, as JSON text.
    pub data: String,
}

/// One job's changes as SSE events.
/// A job's changes after `updates` was subscribed, until it ends (also
/// behind the gRPC `WatchJob`).
pub(crate) struct Follow {
    pub(crate) jobs: herald_jobs::Handle,
    pub(crate) job_id: String,
    pub(crate) updates: broadcast::Receiver<Arc<Job>>,
    pub(crate) ended: bool,
}

impl Follow {
    /// The job after its next change; `None` once it has ended.
    pub(crate) async fn next_job(mut self) -> Option<(Job, Self)> {
        if self.ended {
            return None;
        }
        loop {
            let job = match self.updates.recv().await {
                Ok(update) if update.job_id == self.job_id => (*update).clone(),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.jobs.get(&self.job_id).await.ok()?
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            self.ended = job.status.is_terminal();
            return Some((job, self));
        }
    }

    async fn next(self) -> Option<(Event, Self)> {
        let (job, follow) = self.next_job().await?;
        let kind = if follow.ended { "result" } else { "progress" };
        Some((sse_event(kind, &job), follow))
    }
}

fn sse_event(kind: &str, job: &Job) -> Event {
    Event::default()
        .event(kind)
        .id(job.version.to_string())
        .json_data(JobView::from(job.clone()))
        .unwrap_or_else(|error| Event::default().event("error").data(error.to_string()))
}

/// `POST /v1/jobs/{job_id}/progress` → 200.
#[utoipa::path(
    post, path = "/v1/jobs/{job_id}/progress", tag = "jobs",
    params(("job_id" = String, Path, description = "The job.")),
    request_body(content = ProgressRequest,
        description = "A worker's report, every field optional: `part` (required for a job with parts: the part's key), `progress` (a number on the worker's own scale, e.g. 0–100) and `message` (short text), shown as the job's `progress.reported` and `progress.message` and sent to its followers as an SSE `progress` event; `delivery_id` (from the fetch) extends that delivery's lease by the queue's ack wait. The first report makes a pending job `running`.",
        example = json!({"progress": 50, "message": "resized 2 of 4", "delivery_id": "0.3.17"})),
    responses(
        (status = 200, description = "Recorded (ignored once the job ended): the job as `GET /v1/jobs/{job_id}` renders it.", body = JobView),
    )
)]
pub async fn progress(
    State(state): State<AppState>,
    JobPath(job_id): JobPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<ProgressRequest>,
) -> Result<Json<JobView>, Problem> {
    Ok(Json(state.jobs()?.progress(&job_id, request).await?.into()))
}

/// `POST /v1/jobs/{job_id}/complete` → 200.
#[utoipa::path(
    post, path = "/v1/jobs/{job_id}/complete", tag = "jobs",
    params(("job_id" = String, Path, description = "The job.")),
    request_body = CompleteRequest,
    responses(
        (status = 200, description = "Recorded, or the same outcome was recorded before.", body = JobView),
    )
)]
pub async fn complete(
    State(state): State<AppState>,
    JobPath(job_id): JobPath,
    _query: NoQuery,
    JsonBody(request): JsonBody<CompleteRequest>,
) -> Result<Json<JobView>, Problem> {
    let jobs = state.jobs()?;
    if let Some(blob) = &request.outcome.result_blob {
        require_blob(&state.blobs, "result_blob", blob).await?;
    }
    Ok(Json(jobs.complete(&job_id, request).await?.into()))
}

/// `POST /v1/queues/{queue}/fetch` → 200 requests.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/fetch", tag = "jobs",
    params(("queue" = String, Path, description = "The queue.", example = "thumbnails")),
    request_body = QueueFetch,
    responses((status = 200, description = "Job requests leased to this worker (group `workers` of topic `jobs.<queue>`); complete with `delivery_id` to ack.", body = QueueDeliveries))
)]
pub async fn fetch(
    State(state): State<AppState>,
    QueuePath(queue): QueuePath,
    _query: NoQuery,
    JsonBody(request): JsonBody<QueueFetch>,
) -> Result<Json<QueueDeliveries>, Problem> {
    let jobs = state.jobs()?;
    let request = FetchRequest {
        member: request.member,
        max: request.max,
        wait_ms: request.wait_ms,
    };
    request.validate()?;
    tokio::select! {
        biased;
        fetched = jobs.fetch(&queue, request) => Ok(Json(QueueDeliveries { deliveries: fetched? })),
        () = state.stopping.cancelled() => Err(Problem::new(
            Code::ShuttingDown,
            "The server is shutting down; fetch again once it is back (or from another).",
        )),
    }
}

/// `POST /v1/queues/{queue}/ack` → 200.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/ack", tag = "jobs",
    params(("queue" = String, Path, description = "The queue.", example = "thumbnails")),
    request_body = QueueSettle,
    responses((status = 200, description = "Acked (idempotent).", body = Settled))
)]
pub async fn ack(
    State(state): State<AppState>,
    QueuePath(queue): QueuePath,
    _query: NoQuery,
    JsonBody(request): JsonBody<QueueSettle>,
) -> Result<Json<Settled>, Problem> {
    let acked = state.jobs()?.ack(&queue, &request.delivery_ids).await?;
    Ok(Json(Settled { acked }))
}

/// `POST /v1/queues/{queue}/nack` → 200.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/nack", tag = "jobs",
    params(("queue" = String, Path, description = "The queue.", example = "thumbnails")),
    request_body = QueueSettle,
    responses((status = 200, description = "Released for redelivery (or dead-lettered after the last attempt).", body = Nacked))
)]
pub async fn nack(
    State(state): State<AppState>,
    QueuePath(queue): QueuePath,
    _query: NoQuery,
    JsonBody(request): JsonBody<QueueSettle>,
) -> Result<Json<Nacked>, Problem> {
    let delay = request.delay_ms.map(Duration::from_millis);
    let nacked = state
        .jobs()?
        .nack(&queue, &request.delivery_ids, delay)
        .await?;
    Ok(Json(Nacked { nacked }))
}

/// Refuses a blob id that is malformed or names no stored blob.
pub(crate) async fn require_blob(
    blobs: &crate::blobs::BlobStore,
    field: &str,
    blob: &str,
) -> Result<(), Problem> {
    if !herald_jobs::model::is_blob_id(blob) {
        return Err(Problem::new(
            Code::InvalidArgument,
            format!(
                "invalid {field}: {blob:?} is not a blob id (sha256:<64 lowercase hex digits>)"
            ),
        ));
    }
    if blobs.exists(blob).await? {
        Ok(())
    } else {
        Err(Problem::new(
            Code::BlobNotFound,
            format!("{field} {blob:?} does not exist; upload it with POST /v1/blobs first"),
        ))
    }
}
