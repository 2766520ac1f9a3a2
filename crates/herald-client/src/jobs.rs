//! Async jobs and blobs: submit (with an input blob and scatter-gather
//! parts), wait for or watch the result, and run workers.
//!
//! ```no_run
//! use herald_client::{Client, JobSpec};
//! use serde_json::json;
//!
//! # async fn demo(client: Client) -> herald_client::Result<()> {
//! // The caller: upload, submit, await the result.
//! let blob = client.put_blob_bytes(b"hello world".to_vec()).await?;
//! let job = client
//!     .submit_job("wordcount", JobSpec::new(json!({"lang": "en"})).blob(&blob.id))
//!     .await?;
//! let done = client.wait_job(&job.job_id, std::time::Duration::from_secs(30)).await?;
//! println!("{:?}: {:?}", done.status, done.result);
//!
//! // A worker: take a request, do the work, complete it.
//! let mut worker = client.job_worker("wordcount");
//! let task = worker.next().await?;
//! let input = client.get_blob_bytes(task.blob.as_deref().unwrap_or_default()).await?;
//! task.progress(Some(0.5), Some("counting")).await?;
//! task.complete(json!({"words": input.split(|b| *b == b' ').count()})).await?;
//! # Ok(())
//! # }
//! ```

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use herald_proto::v1;
use herald_proto::v1::jobs_client::JobsClient;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Client, Error, ErrorCode, Result};

/// Bytes per chunk when uploading a blob.
const BLOB_CHUNK: usize = 256 * 1024;

/// A job to submit.
#[derive(Debug, Clone, Serialize)]
pub struct JobSpec {
    data: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    blob: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<Vec<PartSpec>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_ttl_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
struct PartSpec {
    key: String,
    data: Value,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl JobSpec {
    /// A job whose request is `data`.
    pub fn new(data: Value) -> Self {
        Self {
            data,
            blob: None,
            parts: None,
            deadline_ms: None,
            result_ttl_ms: None,
        }
    }

    /// The job's input blob (uploaded with [`Client::put_blob`]).
    pub fn blob(mut self, id: impl Into<String>) -> Self {
        self.blob = Some(id.into());
        self
    }

    /// Adds a part: routed by `key` to the worker that owns it; the job
    /// completes when every part has reported.
    pub fn part(mut self, key: impl Into<String>, data: Value) -> Self {
        self.parts.get_or_insert_with(Vec::new).push(PartSpec {
            key: key.into(),
            data,
        });
        self
    }

    /// Ends the job at this deadline: `partial` (listing the missing parts)
    /// or `failed`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline_ms = Some(millis(deadline));
        self
    }

    /// How long the result is kept after the job ends.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl_ms = Some(millis(ttl));
        self
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Submitted, not yet picked up.
    Pending,
    /// A worker reported on it.
    Running,
    /// Done, with a result.
    Succeeded,
    /// Ended with an error (or its attempts ran out).
    Failed,
    /// Its deadline passed with parts missing.
    Partial,
    /// A status this SDK does not know.
    #[serde(other)]
    Unknown,
}

impl JobStatus {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Partial)
    }
}

/// A job as Herald reports it (`GET /v1/jobs/{job_id}`).
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    /// Its id.
    pub job_id: String,
    /// Its queue.
    pub queue: String,
    /// Where it is.
    pub status: JobStatus,
    /// The request.
    #[serde(default)]
    pub data: Value,
    /// The input blob.
    #[serde(default)]
    pub blob: Option<String>,
    /// Its parts with their outcomes.
    #[serde(default)]
    pub parts: Vec<Value>,
    /// Progress (`done`, `total`, `reported`, `message`).
    #[serde(default)]
    pub progress: Value,
    /// The result, once succeeded.
    #[serde(default)]
    pub result: Option<Value>,
    /// The result blob, if the worker stored one.
    #[serde(default)]
    pub result_blob: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// With `partial`: the parts that never reported.
    #[serde(default)]
    pub missing: Vec<String>,
    /// When it was submitted (RFC 3339, e.g. `2026-12-03T07:30:00.000Z`).
    #[serde(default)]
    pub created_at: Option<String>,
    /// When it last changed (RFC 3339).
    #[serde(default)]
    pub updated_at: Option<String>,
    /// When it ends as `partial` (or `failed`) if not done (RFC 3339), for
    /// a job submitted with a deadline.
    #[serde(default)]
    pub deadline_at: Option<String>,
    /// When the ended job's result is removed (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Bumped by every change.
    #[serde(default)]
    pub version: u64,
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// `sha256:<hex>`: the content address.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &'static str, json: &[u8]) -> Result<T> {
    serde_json::from_slice(json).map_err(|error| {
        Error::Malformed(herald_proto::MalformedMessage {
            what,
            reason: error.to_string(),
        })
    })
}

fn encode(value: &impl Serialize) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|error| Error::Api {
            code: ErrorCode::InvalidArgument,
            message: error.to_string(),
            metadata: std::collections::HashMap::new(),
        })
}

impl Client {
    /// Unary calls of `Jobs`.
    fn jobs(&self) -> JobsClient<crate::auth::Authorized<crate::unary::Unary>> {
        JobsClient::new(self.unary.clone()).max_decoding_message_size(usize::MAX)
    }

    /// Streaming calls of `Jobs` (watches and blobs).
    fn jobs_stream(&self) -> JobsClient<crate::Streams> {
        JobsClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX)
    }

    /// Submits a job to `queue`; answers at once (status `pending`).
    pub async fn submit_job(&self, queue: &str, spec: JobSpec) -> Result<Job> {
        let request = v1::SubmitJobRequest {
            queue: queue.to_owned(),
            request_json: encode(&spec)?,
        };
        let job = self.jobs().submit_job(request).await?.into_inner();
        decode("Job", &job.job_json)
    }

    /// A job as it is now.
    pub async fn job(&self, job_id: &str) -> Result<Job> {
        self.wait_job(job_id, Duration::ZERO).await
    }

    /// A job once it has ended, or as it is after `wait` (at most 5 min).
    pub async fn wait_job(&self, job_id: &str, wait: Duration) -> Result<Job> {
        let request = v1::GetJobRequest {
            job_id: job_id.to_owned(),
            wait_ms: millis(wait),
        };
        let job = self.jobs().get_job(request).await?.into_inner();
        decode("Job", &job.job_json)
    }

    /// The job now, then after every change (progress, parts, the result),
    /// ending with it ended.
    pub async fn watch_job(
        &self,
        job_id: &str,
    ) -> Result<impl Stream<Item = Result<Job>> + Send + 'static> {
        let request = v1::WatchJobRequest {
            job_id: job_id.to_owned(),
        };
        let stream = self.jobs_stream().watch_job(request).await?.into_inner();
        Ok(stream.map(|update| decode("Job", &update?.job_json)))
    }

    /// Uploads a blob from a stream of chunks; returns its content address
    /// (the same bytes always give the same id, stored once).
    pub async fn put_blob(
        &self,
        chunks: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Result<BlobInfo> {
        let chunks = chunks.map(|data| v1::BlobChunk { data });
        let info = self.jobs_stream().put_blob(chunks).await?.into_inner();
        Ok(BlobInfo {
            id: info.id,
            size: info.size,
        })
    }

    /// Uploads a blob held in memory.
    pub async fn put_blob_bytes(&self, bytes: impl Into<Bytes>) -> Result<BlobInfo> {
        let bytes: Bytes = bytes.into();
        let chunks: Vec<Bytes> = (0..bytes.len())
            .step_by(BLOB_CHUNK)
            .map(|start| bytes.slice(start..(start + BLOB_CHUNK).min(bytes.len())))
            .collect();
        self.put_blob(futures::stream::iter(chunks)).await
    }

    /// Downloads a blob, or the byte `range` of it, as a stream of chunks.
    pub async fn get_blob(
        &self,
        id: &str,
        range: Option<Range<u64>>,
    ) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static> {
        let request = v1::GetBlobRequest {
            id: id.to_owned(),
            offset: range.as_ref().map(|range| range.start),
            length: range.map(|range| range.end.saturating_sub(range.start)),
        };
        let stream = self.jobs_stream().get_blob(request).await?.into_inner();
        Ok(stream.map(|chunk| Ok(chunk?.data)))
    }

    /// Downloads a whole blob into memory.
    pub async fn get_blob_bytes(&self, id: &str) -> Result<Bytes> {
        let mut stream = Box::pin(self.get_blob(id, None).await?);
        let mut whole = Vec::new();
        while let Some(chunk) = stream.next().await {
            whole.extend_from_slice(&chunk?);
        }
        Ok(whole.into())
    }

    /// A worker for `queue`'s job requests.
    pub fn job_worker(&self, queue: &str) -> JobWorker {
        JobWorker {
            client: self.clone(),
            queue: queue.to_owned(),
            member: format!("worker-{}", std::process::id()),
            wait: Duration::from_secs(30),
        }
    }
}

/// How often a [`JobWorker`] looks again for a queue that does not exist yet.
const QUEUE_POLL: Duration = Duration::from_secs(1);

/// Takes job requests of one queue, one at a time. A request is leased: a
/// worker that dies has it redelivered to another after the lease.
#[derive(Debug)]
pub struct JobWorker {
    client: Client,
    queue: String,
    member: String,
    wait: Duration,
}

impl JobWorker {
    /// This worker's member id (default: from the process id).
    pub fn member(mut self, member: impl Into<String>) -> Self {
        self.member = member.into();
        self
    }

    /// The next job request, waiting (long-polling) until there is one; on
    /// a queue no job was submitted to yet, until the first submit creates
    /// it.
    pub async fn next(&mut self) -> Result<JobTask> {
        loop {
            let request = v1::FetchJobsRequest {
                queue: self.queue.clone(),
                member: self.member.clone(),
                max: 1,
                wait_ms: millis(self.wait),
            };
            let fetched = match self.client.jobs().fetch_jobs(request).await {
                Ok(fetched) => fetched.into_inner(),
                // No job was ever submitted to the queue: a fetch does not
                // create it (unless the server says so), so wait for the
                // first submit as a long-poll would.
                Err(status) => match Error::from(status) {
                    Error::Api {
                        code: ErrorCode::QueueNotFound,
                        ..
                    } => {
                        tokio::time::sleep(self.wait.min(QUEUE_POLL)).await;
                        continue;
                    }
                    error => return Err(error),
                },
            };
            let mut tasks: Vec<TaskWire> = decode("JobDelivery", &fetched.deliveries_json)?;
            if let Some(task) = tasks.pop() {
                return Ok(JobTask {
                    client: self.client.clone(),
                    delivery_id: task.delivery_id,
                    attempt: task.attempt,
                    job_id: task.job_id,
                    part: task.part,
                    data: task.data,
                    blob: task.blob,
                });
            }
        }
    }
}

#[derive(Deserialize)]
struct TaskWire {
    delivery_id: String,
    attempt: u32,
    job_id: String,
    #[serde(default)]
    part: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    blob: Option<String>,
}

/// One job request (a whole job, or one part of it) leased to a worker.
#[derive(Debug)]
pub struct JobTask {
    client: Client,
    /// The lease; completing with it acks the request.
    pub delivery_id: String,
    /// 1 for the first delivery, then 2, 3…
    pub attempt: u32,
    /// The job.
    pub job_id: String,
    /// The part, for a job with parts.
    pub part: Option<String>,
    /// The request (the part's, for a part).
    pub data: Value,
    /// The job's input blob.
    pub blob: Option<String>,
}

impl JobTask {
    /// Reports progress (and extends the lease).
    pub async fn progress(&self, fraction: Option<f64>, message: Option<&str>) -> Result<Job> {
        let body = json!({
            "part": self.part,
            "progress": fraction,
            "message": message,
            "delivery_id": self.delivery_id,
        });
        self.update(true, &body).await
    }

    /// Done, with `result`.
    pub async fn complete(self, result: Value) -> Result<Job> {
        let body = json!({"part": self.part, "result": result, "delivery_id": self.delivery_id});
        self.update(false, &body).await
    }

    /// Done, with a result blob (uploaded with [`Client::put_blob`]) and an
    /// optional result document.
    pub async fn complete_with_blob(self, blob: &str, result: Option<Value>) -> Result<Job> {
        let body = json!({
            "part": self.part,
            "result": result,
            "result_blob": blob,
            "delivery_id": self.delivery_id,
        });
        self.update(false, &body).await
    }

    /// Failed for good, with `error` (not redelivered).
    pub async fn fail(self, error: &str) -> Result<Job> {
        let body = json!({"part": self.part, "error": error, "delivery_id": self.delivery_id});
        self.update(false, &body).await
    }

    async fn update(&self, progress: bool, body: &Value) -> Result<Job> {
        // Absent fields are left out rather than sent as null.
        let body: serde_json::Map<String, Value> = body
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, value)| !value.is_null())
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let request = v1::JobUpdateRequest {
            job_id: self.job_id.clone(),
            body_json: encode(&body)?,
        };
        let mut jobs = self.client.jobs();
        let job = if progress {
            jobs.progress(request).await?
        } else {
            jobs.complete(request).await?
        };
        decode("Job", &job.into_inner().job_json)
    }
}
