//! `herald.v1.Jobs`: jobs and blobs over gRPC. Job documents are the REST
//! shapes as JSON text (see the proto), checked by the same serde types and
//! handled by the same job service as `http/jobs.rs`.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use herald_backend::FetchRequest;
use herald_jobs::JobView;
use herald_jobs::model::{CompleteRequest, Job, ProgressRequest, SubmitRequest};
use herald_proto::v1;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};

use super::{GrpcState, caller, invalid, job_queue, shutting_down};
use crate::auth::permissions::Action;
use crate::auth::quotas;
use crate::http::jobs::{Follow, MAX_WAIT_MS, require_blob};
use crate::problem::{Code, Problem};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The `Jobs` service.
#[derive(Debug)]
pub(super) struct JobsService {
    state: GrpcState,
}

impl JobsService {
    pub(super) fn new(state: GrpcState) -> Self {
        Self { state }
    }

    fn jobs(&self) -> Result<&herald_jobs::Handle, Status> {
        Ok(self.state.jobs.get()?)
    }
}

/// A JSON body, refused as `malformed_json` / `invalid_argument` like REST.
fn body<T: DeserializeOwned>(field: &str, json: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(json).map_err(|error| {
        let code = if error.is_syntax() || error.is_eof() {
            Code::MalformedJson
        } else {
            Code::InvalidArgument
        };
        Problem::new(code, format!("{field}: {error}")).into()
    })
}

fn json<T: Serialize>(value: &T) -> Result<Bytes, Status> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|error| Problem::new(Code::Internal, error.to_string()).into())
}

/// The job as `GET /v1/jobs/{job_id}` renders it (RFC 3339 times).
fn job_response(job: Job) -> Result<Response<v1::JobResponse>, Status> {
    Ok(Response::new(v1::JobResponse {
        job_json: json(&JobView::from(job))?,
    }))
}

#[tonic::async_trait]
impl v1::jobs_server::Jobs for JobsService {
    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        let jobs = self.jobs()?;
        let caller = caller(&request)?;
        let traceparent = super::events::traceparent(&request);
        let request = request.into_inner();
        caller.require(Action::JobsSubmit, &request.queue)?;
        let mut submit: SubmitRequest = body("request_json", &request.request_json)?;
        if submit.traceparent.is_none() {
            submit.traceparent = traceparent;
        }
        if let Some(blob) = &submit.blob {
            require_blob(&self.state.blobs, "blob", blob).await?;
        }
        let job = jobs
            .submit(&request.queue, submit)
            .await
            .map_err(Problem::from)?;
        job_response(job)
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        let jobs = self.jobs()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::JobsRead, &job_queue(jobs, &request.job_id).await)?;
        if request.wait_ms > MAX_WAIT_MS {
            return Err(invalid("wait_ms", format!("must be at most {MAX_WAIT_MS}")));
        }
        let wait = Duration::from_millis(request.wait_ms);
        let job = tokio::select! {
            biased;
            job = jobs.wait(&request.job_id, wait) => job,
            () = self.state.stopping.cancelled() => jobs.get(&request.job_id).await,
        }
        .map_err(Problem::from)?;
        job_response(job)
    }

    type WatchJobStream = BoxStream<v1::JobResponse>;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller(&request)?;
        let jobs = self.jobs()?.clone();
        let job_id = request.into_inner().job_id;
        caller.require(Action::JobsRead, &job_queue(&jobs, &job_id).await)?;
        // Subscribe first, then read: no change can fall in between.
        let updates = jobs.subscribe();
        let job = jobs.get(&job_id).await.map_err(Problem::from)?;
        let follow = Follow {
            jobs,
            job_id,
            updates,
            ended: job.status.is_terminal(),
        };
        let rest = futures::stream::unfold(follow, Follow::next_job);
        let stopping = self.state.stopping.clone();
        let stream = futures::stream::once(async move { job })
            .chain(rest)
            .map(|job| {
                Ok(v1::JobResponse {
                    job_json: json(&JobView::from(job))?,
                })
            })
            .take_until(stopping.cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn progress(
        &self,
        request: Request<v1::JobUpdateRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        let jobs = self.jobs()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::JobsWork, &job_queue(jobs, &request.job_id).await)?;
        let progress: ProgressRequest = body("body_json", &request.body_json)?;
        let job = jobs
            .progress(&request.job_id, progress)
            .await
            .map_err(Problem::from)?;
        job_response(job)
    }

    async fn complete(
        &self,
        request: Request<v1::JobUpdateRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        let jobs = self.jobs()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::JobsWork, &job_queue(jobs, &request.job_id).await)?;
        let complete: CompleteRequest = body("body_json", &request.body_json)?;
        if let Some(blob) = &complete.outcome.result_blob {
            require_blob(&self.state.blobs, "result_blob", blob).await?;
        }
        let job = jobs
            .complete(&request.job_id, complete)
            .await
            .map_err(Problem::from)?;
        job_response(job)
    }

    async fn fetch_jobs(
        &self,
        request: Request<v1::FetchJobsRequest>,
    ) -> Result<Response<v1::FetchJobsResponse>, Status> {
        let jobs = self.jobs()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::JobsWork, &request.queue)?;
        let fetch = FetchRequest {
            member: request.member,
            max: request.max.max(1),
            wait_ms: request.wait_ms,
        };
        fetch.validate().map_err(Problem::from)?;
        let fetched = tokio::select! {
            biased;
            fetched = jobs.fetch(&request.queue, fetch) => fetched.map_err(Problem::from)?,
            () = self.state.stopping.cancelled() => return Err(shutting_down()),
        };
        Ok(Response::new(v1::FetchJobsResponse {
            deliveries_json: json(&fetched)?,
        }))
    }

    async fn put_blob(
        &self,
        request: Request<Streaming<v1::BlobChunk>>,
    ) -> Result<Response<v1::BlobInfo>, Status> {
        self.state.blobs.check_space(0).map_err(Problem::from)?;
        let caller = caller(&request)?;
        caller.require(Action::BlobsWrite, "*")?;
        let backend = self.state.backend()?;
        let allowance = quotas::blob_allowance(&*backend, &caller).await?;
        let max = allowance.unwrap_or(u64::MAX);
        let chunks = request
            .into_inner()
            .map(|chunk| chunk.map(|chunk| chunk.data).map_err(axum::Error::new));
        let info = match self.state.blobs.put_within(chunks, max).await {
            Ok(info) => info,
            Err(crate::blobs::Error::TooLarge { max: cut }) if cut == max => {
                let quota = caller.principal.limits().max_blob_bytes;
                return Err(quotas::blob_quota_exceeded(&caller.principal.id, quota).into());
            }
            Err(error) => return Err(Problem::from(error).into()),
        };
        quotas::record_blob(&*backend, &caller, &info.id, info.size).await;
        Ok(Response::new(v1::BlobInfo {
            id: info.id,
            size: info.size,
        }))
    }

    type GetBlobStream = BoxStream<v1::BlobChunk>;

    async fn get_blob(
        &self,
        request: Request<v1::GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::BlobsRead, &request.id)?;
        let blobs = &self.state.blobs;
        let size = blobs.size(&request.id).await.map_err(Problem::from)?;
        let start = request.offset.unwrap_or(0);
        let end = request
            .length
            .map_or(size, |length| start.saturating_add(length).min(size));
        if start > size || (start == size && size > 0) || start > end {
            return Err(Problem::new(
                Code::RangeNotSatisfiable,
                format!("bytes {start}.. are outside the blob ({size} bytes)"),
            )
            .into());
        }
        let range = (start != 0 || end != size).then_some(start..end);
        let bytes = blobs.get(&request.id, range).await.map_err(Problem::from)?;
        let stream = bytes.map(|chunk| match chunk {
            Ok(data) => Ok(v1::BlobChunk { data }),
            Err(error) => Err(Problem::new(Code::Internal, error.to_string()).into()),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
