//! Herald's own functions, called like the DSL's custom functions (`call:
//! herald.job`, `call: herald.append`) without a `use.functions` entry:
//!
//! - `herald.job` submits a job (`with`: `queue` and the body of `POST
//!   /v1/jobs/{queue}`: `data`, `blob`, `parts`, `deadline_ms`,
//!   `result_ttl_ms`, `notify`) and waits for it to end. Its output is the
//!   job's `result` (a job without parts) or its parts (`[{key, status,
//!   result, error}]`); a job that failed or ended `partial` raises a
//!   `runtime` error (status 500) the `try`s around can catch. The job's
//!   id is chosen and recorded before the submit, so a run that crashed
//!   after submitting finds the same job instead of submitting another.
//! - `herald.append` appends events to a stream of the event store
//!   (`with`: `topic`, `stream`, `events` — or one `event` — each with
//!   `type`, `data` and optional CloudEvents attributes, and
//!   `expectedVersion`: a number, `any` (default), `no_stream` or
//!   `exists`). Its output is `{stream, firstVersion, lastVersion}`; a
//!   version conflict raises `communication` with status 409. Stream
//!   appends are not deduplicated, so the stream's version before the
//!   append is recorded first: a run that crashed after appending finds
//!   its events (ids `<instance>.<task key>.<n>`) from there on instead of
//!   appending them again.

use std::time::Duration;

use herald_backend::{Direction, Error as BackendError, ExpectedVersion};
use herald_types::{EventInput, StreamId, TopicName};
use serde_json::{Map, Value, json};

use super::{Fault, Frame, Run, replayed};
use crate::error::WorkflowError;
use crate::history::{HistoryError, Outcome, Record};
use crate::now_ms;

/// `call: herald.job`.
pub const JOB: &str = "herald.job";
/// `call: herald.append`.
pub const APPEND: &str = "herald.append";

/// Whether `name` is one of Herald's functions.
#[must_use]
pub fn is_builtin(name: &str) -> bool {
    matches!(name, JOB | APPEND)
}

/// How far a replay looks for events it may have appended before a crash.
const APPEND_SCAN: usize = 10_000;

impl Run {
    /// Runs Herald's function `name` with its evaluated `arguments`.
    pub(super) async fn herald(
        &self,
        name: &str,
        key: &str,
        arguments: Map<String, Value>,
        frame: &Frame,
    ) -> Result<Value, Fault> {
        match name {
            JOB => self.job(key, arguments, frame).await,
            _ => self.append(key, arguments).await,
        }
    }

    async fn job(
        &self,
        key: &str,
        mut arguments: Map<String, Value>,
        frame: &Frame,
    ) -> Result<Value, Fault> {
        let done = format!("{key}#job-result");
        if let Some(outcome) = self.journal.lock().await.effect(&done).cloned() {
            return replayed(outcome);
        }
        let Some(jobs) = self.env.jobs.clone() else {
            return Err(Fault::Error(WorkflowError::runtime(
                "this server runs no job service",
            )));
        };
        let Some(Value::String(queue)) = arguments.remove("queue") else {
            return Err(Fault::Error(WorkflowError::validation(
                "herald.job names its queue in `queue`",
            )));
        };
        let mut request: herald_jobs::SubmitRequest =
            serde_json::from_value(Value::Object(arguments)).map_err(|error| {
                WorkflowError::validation(format!("herald.job's arguments: {error}"))
            })?;
        // The job continues the task's trace and the instance's lineage.
        if request.traceparent.is_none() {
            request.traceparent = herald_trace::traceparent(&tracing::Span::current());
        }
        if request.correlationid.is_none() {
            request.correlationid = Some(self.correlation());
        }
        if request.causationid.is_none() {
            request.causationid = Some(self.id.clone());
        }
        // The job's id, chosen once and written before the submit.
        let chosen = format!("{key}#job");
        let recorded = match self.journal.lock().await.effect(&chosen) {
            Some(Outcome::Ok(Value::String(id))) => Some(id.clone()),
            _ => None,
        };
        let job_id = match recorded {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                self.push(Record::Effect {
                    key: chosen,
                    outcome: Outcome::Ok(Value::String(id.clone())),
                    at: now_ms(),
                })
                .await;
                self.flush().await?;
                id
            }
        };
        let outcome = match jobs.submit_as(&queue, &job_id, request).await {
            Err(herald_jobs::Error::Backend(error)) => {
                return Err(Fault::History(HistoryError::Storage(error)));
            }
            Err(error) => Outcome::Err(WorkflowError::validation(format!(
                "herald.job to {queue:?}: {error}"
            ))),
            Ok(_) => {
                let ended = self
                    .block(frame, async {
                        loop {
                            match jobs.wait(&job_id, Duration::from_secs(60)).await {
                                Ok(job) if job.status.is_terminal() => return Ok(job),
                                Ok(_) => {}
                                Err(error) => {
                                    return Err(Fault::Error(WorkflowError::runtime(format!(
                                        "job {job_id}: {error}"
                                    ))));
                                }
                            }
                        }
                    })
                    .await?;
                job_outcome(&ended)
            }
        };
        self.push(Record::Effect {
            key: done,
            outcome: outcome.clone(),
            at: now_ms(),
        })
        .await;
        self.flush().await?;
        replayed(outcome)
    }

    async fn append(&self, key: &str, arguments: Map<String, Value>) -> Result<Value, Fault> {
        let done = format!("{key}#append");
        if let Some(outcome) = self.journal.lock().await.effect(&done).cloned() {
            return replayed(outcome);
        }
        let (topic, stream, events, expected) = self.append_request(key, &arguments)?;
        let backend = &self.env.backend;
        // Where the stream was before: recorded first, so a replay after a
        // crash looks for its events from there.
        let intent = format!("{key}#append-from");
        let recorded = self.journal.lock().await.effect(&intent).cloned();
        let found = match recorded {
            Some(Outcome::Ok(from)) => {
                let from = from.as_u64().unwrap_or(0);
                self.appended_since(&topic, &stream, from, &events).await?
            }
            _ => {
                let from = match backend.stream_metadata(&topic, &stream).await {
                    Ok(metadata) => metadata.version + 1,
                    Err(BackendError::StreamNotFound { .. }) => 0,
                    Err(BackendError::TopicNotFound { .. }) => {
                        return Err(Fault::Error(WorkflowError::communication(
                            404,
                            format!("herald.append: no topic {topic}"),
                        )));
                    }
                    Err(error) => return Err(Fault::History(HistoryError::Storage(error))),
                };
                self.push(Record::Effect {
                    key: intent,
                    outcome: Outcome::Ok(json!(from)),
                    at: now_ms(),
                })
                .await;
                self.flush().await?;
                None
            }
        };
        let outcome = match found {
            Some((first, last)) => Outcome::Ok(appended(&stream, first, last)),
            None => match backend.append(&topic, &stream, events, expected).await {
                Ok(result) => {
                    Outcome::Ok(appended(&stream, result.first_version, result.last_version))
                }
                Err(error @ BackendError::VersionConflict { .. }) => Outcome::Err(
                    WorkflowError::communication(409, format!("herald.append: {error}")),
                ),
                Err(
                    error @ (BackendError::TopicNotFound { .. }
                    | BackendError::StreamDeleted { .. }
                    | BackendError::InvalidArgument { .. }
                    | BackendError::PayloadTooLarge { .. }),
                ) => Outcome::Err(WorkflowError::communication(
                    400,
                    format!("herald.append: {error}"),
                )),
                Err(error) => return Err(Fault::History(HistoryError::Storage(error))),
            },
        };
        self.push(Record::Effect {
            key: done,
            outcome: outcome.clone(),
            at: now_ms(),
        })
        .await;
        self.flush().await?;
        replayed(outcome)
    }

    /// The append `arguments` ask for, its events with their fixed ids.
    fn append_request(
        &self,
        key: &str,
        arguments: &Map<String, Value>,
    ) -> Result<(TopicName, StreamId, Vec<EventInput>, ExpectedVersion), Fault> {
        let text = |field: &str| match arguments.get(field) {
            Some(Value::String(text)) => Ok(text.clone()),
            _ => Err(WorkflowError::validation(format!(
                "herald.append takes `{field}`, a string"
            ))),
        };
        let topic = TopicName::try_from(text("topic")?.as_str())
            .map_err(|error| WorkflowError::validation(format!("herald.append: {error}")))?;
        let stream = StreamId::try_from(text("stream")?.as_str())
            .map_err(|error| WorkflowError::validation(format!("herald.append: {error}")))?;
        let listed = match (arguments.get("events"), arguments.get("event")) {
            (Some(Value::Array(events)), None) => events.clone(),
            (None, Some(event @ Value::Object(_))) => vec![event.clone()],
            _ => {
                return Err(Fault::Error(WorkflowError::validation(
                    "herald.append takes `events` (a list) or `event` (an object)",
                )));
            }
        };
        if listed.is_empty() {
            return Err(Fault::Error(WorkflowError::validation(
                "herald.append takes at least one event",
            )));
        }
        let mut events = Vec::with_capacity(listed.len());
        for (index, event) in listed.into_iter().enumerate() {
            let Value::Object(mut attributes) = event else {
                return Err(Fault::Error(WorkflowError::validation(
                    "each event of herald.append is an object",
                )));
            };
            attributes.insert("specversion".to_owned(), json!("1.0"));
            attributes.insert("id".to_owned(), json!(format!("{}.{key}.{index}", self.id)));
            attributes
                .entry("source")
                .or_insert_with(|| json!(format!("/herald/workflows/{}", self.id)));
            attributes
                .entry("correlationid")
                .or_insert_with(|| json!(self.correlation()));
            attributes
                .entry("causationid")
                .or_insert_with(|| json!(self.id));
            let body = serde_json::to_vec(&Value::Object(attributes))
                .map_err(|error| WorkflowError::runtime(error.to_string()))?;
            events.push(EventInput::from_json(&body, now_ms()).map_err(|error| {
                WorkflowError::validation(format!("herald.append's event {index}: {error}"))
            })?);
        }
        let expected = match arguments.get("expectedVersion") {
            None | Some(Value::Null) => ExpectedVersion::Any,
            Some(Value::Number(number)) => {
                ExpectedVersion::Exact(number.as_u64().ok_or_else(|| {
                    WorkflowError::validation("expectedVersion is a version, 0 or more")
                })?)
            }
            Some(Value::String(text)) => match text.as_str() {
                "any" => ExpectedVersion::Any,
                "no_stream" => ExpectedVersion::NoStream,
                "exists" => ExpectedVersion::Exists,
                other => {
                    return Err(Fault::Error(WorkflowError::validation(format!(
                        "expectedVersion {other:?}: a number, any, no_stream or exists"
                    ))));
                }
            },
            Some(other) => {
                return Err(Fault::Error(WorkflowError::validation(format!(
                    "expectedVersion {other}: a number, any, no_stream or exists"
                ))));
            }
        };
        Ok((topic, stream, events, expected))
    }

    /// The versions of `events` if they were appended from version `from`
    /// on (the first one found by its id).
    async fn appended_since(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        mut from: u64,
        events: &[EventInput],
    ) -> Result<Option<(u64, u64)>, Fault> {
        let Some(first) = events.first() else {
            return Ok(None);
        };
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        let mut scanned = 0;
        while scanned < APPEND_SCAN {
            let slice = match self
                .env
                .backend
                .read_stream(topic, stream, from, Direction::Forward, 512)
                .await
            {
                Ok(slice) => slice,
                Err(BackendError::StreamNotFound { .. }) => return Ok(None),
                Err(error) => return Err(Fault::History(HistoryError::Storage(error))),
            };
            if slice.events.is_empty() {
                return Ok(None);
            }
            for (version, stored) in &slice.events {
                if stored.event.id == first.event.id {
                    return Ok(Some((*version, version + count - 1)));
                }
            }
            scanned += slice.events.len();
            match slice.next_version {
                Some(next) => from = next,
                None => return Ok(None),
            }
        }
        Ok(None)
    }
}

fn appended(stream: &StreamId, first: u64, last: u64) -> Value {
    json!({"stream": stream.as_ref(), "firstVersion": first, "lastVersion": last})
}

/// What an ended job gives the task.
fn job_outcome(job: &herald_jobs::Job) -> Outcome {
    use herald_jobs::Status as JobStatus;
    match job.status {
        JobStatus::Succeeded if job.parts.is_empty() => {
            Outcome::Ok(job.result.clone().unwrap_or(Value::Null))
        }
        JobStatus::Succeeded => Outcome::Ok(Value::Array(
            job.parts
                .iter()
                .map(|part| {
                    json!({
                        "key": part.key,
                        "status": part.status,
                        "result": part.outcome.result,
                        "error": part.outcome.error,
                    })
                })
                .collect(),
        )),
        status => {
            let mut error = WorkflowError::runtime(format!(
                "job {} ended {}: {}",
                job.job_id,
                status.as_str(),
                job.error.as_deref().unwrap_or("no reason given")
            ));
            error.title = Some("The job did not succeed".to_owned());
            Outcome::Err(error)
        }
    }
}
