//! `herald job submit|status|watch`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::{Api, Error, Output, emit};

/// Job subcommands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job to a queue; prints its id (or, with --wait, the ended job).
    Submit {
        /// The queue
        queue: String,
        /// The request data, as JSON
        #[arg(long, default_value = "null")]
        data: String,
        /// An input blob id
        #[arg(long, conflicts_with = "file")]
        blob: Option<String>,
        /// Upload this file (with a progress bar) as the input blob
        #[arg(long)]
        file: Option<PathBuf>,
        /// A part, `key` or `key=<JSON data>` (repeat for scatter-gather)
        #[arg(long = "part")]
        parts: Vec<String>,
        /// End the job (partial) this long after submission
        #[arg(long)]
        deadline_ms: Option<u64>,
        /// Keep the result this long after the job ended
        #[arg(long)]
        result_ttl_ms: Option<u64>,
        /// Wait for the job to end and print it
        #[arg(long)]
        wait: bool,
    },
    /// Print a job (optionally waiting for it to end).
    Status {
        /// The job's id
        job_id: String,
        /// Wait up to this long for it to end
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
    },
    /// Follow a job's progress over SSE until it ends.
    Watch {
        /// The job's id
        job_id: String,
    },
}

pub(crate) async fn run(api: &Api, command: JobCommand) -> Result<(), Error> {
    match command {
        JobCommand::Submit {
            queue,
            data,
            blob,
            file,
            parts,
            deadline_ms,
            result_ttl_ms,
            wait,
        } => {
            let data: Value = serde_json::from_str(&data)
                .map_err(|error| Error::Usage(format!("--data is not JSON: {error}")))?;
            let blob = match file {
                Some(file) => super::blob::put(api, &file).await?["id"]
                    .as_str()
                    .map(str::to_owned),
                None => blob,
            };
            let mut body = json!({"data": data});
            if let Some(blob) = blob {
                body["blob"] = json!(blob);
            }
            if !parts.is_empty() {
                body["parts"] = Value::Array(
                    parts
                        .iter()
                        .map(|part| parse_part(part))
                        .collect::<Result<_, _>>()?,
                );
            }
            if let Some(deadline_ms) = deadline_ms {
                body["deadline_ms"] = json!(deadline_ms);
            }
            if let Some(result_ttl_ms) = result_ttl_ms {
                body["result_ttl_ms"] = json!(result_ttl_ms);
            }
            let submitted = api
                .post(&format!("/v1/queues/{}/jobs", Api::segment(&queue)), &body)
                .await?;
            if !wait {
                api.print(
                    &submitted,
                    &["job_id", "status"],
                    std::slice::from_ref(&submitted),
                );
                return Ok(());
            }
            let job_id = submitted["job_id"].as_str().unwrap_or_default().to_owned();
            let job = wait_for(api, &job_id).await?;
            print_job(api, &job);
            Ok(())
        }
        JobCommand::Status { job_id, wait_ms } => {
            let job = api
                .get(&format!(
                    "/v1/jobs/{}?wait_ms={wait_ms}",
                    Api::segment(&job_id)
                ))
                .await?;
            print_job(api, &job);
            Ok(())
        }
        JobCommand::Watch { job_id } => watch(api, &job_id).await,
    }
}

/// `key` or `key=<JSON>`.
fn parse_part(text: &str) -> Result<Value, Error> {
    match text.split_once('=') {
        None => Ok(json!({"key": text})),
        Some((key, data)) => {
            let data: Value = serde_json::from_str(data).map_err(|error| {
                Error::Usage(format!("--part {text:?}: data is not JSON: {error}"))
            })?;
            Ok(json!({"key": key, "data": data}))
        }
    }
}

/// Long-polls until the job ended.
async fn wait_for(api: &Api, job_id: &str) -> Result<Value, Error> {
    loop {
        let job = api
            .get(&format!("/v1/jobs/{}?wait_ms=30000", Api::segment(job_id)))
            .await?;
        if is_ended(&job) {
            return Ok(job);
        }
    }
}

fn is_ended(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "partial")
    )
}

fn print_job(api: &Api, job: &Value) {
    api.print(
        job,
        &[
            "job_id",
            "status",
            "progress.done",
            "progress.total",
            "missing",
            "error",
            "result",
            "result_blob",
        ],
        std::slice::from_ref(job),
    );
}

/// Follows the job's SSE with a bar of parts done; prints the ended job.
async fn watch(api: &Api, job_id: &str) -> Result<(), Error> {
    let response = api
        .sse(
            &format!("/v1/jobs/{}/events", Api::segment(job_id)),
            &[],
            None,
        )
        .await?;
    let progress = ProgressBar::new(1).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} parts {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if api.output == Output::Json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    progress.enable_steady_tick(Duration::from_millis(200));
    let mut stream = response.bytes_stream();
    let mut decoder = super::sse::Decoder::default();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|error| Error::Connection(format!("event stream cut off: {error}")))?;
        for frame in decoder.push(&chunk) {
            if frame.event.as_deref() == Some("error") {
                progress.finish_and_clear();
                return Err(super::stream_error(&frame.data));
            }
            let Ok(job) = serde_json::from_str::<Value>(&frame.data) else {
                continue;
            };
            progress.set_length(job["progress"]["total"].as_u64().unwrap_or(1));
            progress.set_position(job["progress"]["done"].as_u64().unwrap_or(0));
            let message = job["progress"]["message"].as_str().unwrap_or_default();
            progress.set_message(format!(
                "{} {message}",
                job["status"].as_str().unwrap_or_default()
            ));
            if api.output == Output::Json {
                emit(&job.to_string());
            }
            if is_ended(&job) {
                progress.finish_and_clear();
                if api.output == Output::Table {
                    print_job(api, &job);
                }
                return Ok(());
            }
        }
    }
    progress.finish_and_clear();
    Err(Error::Connection(
        "the event stream ended before the job did".into(),
    ))
}
