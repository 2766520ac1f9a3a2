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

/// Reconnects after a cut (a server restart) this many times in a row
/// before giving up (exit 3); the wait doubles from 100 ms up to 5 s.
const WATCH_RETRIES: u32 = 10;

/// Follows the job's SSE with a bar of parts done; prints the ended job.
/// A job's events are states, not a log (each connection starts with the
/// current one), so after a cut it reconnects and goes on.
async fn watch(api: &Api, job_id: &str) -> Result<(), Error> {
    let progress = ProgressBar::new(1).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} parts {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if api.output == Output::Json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    progress.enable_steady_tick(Duration::from_millis(200));
    let mut failures = 0u32;
    let result = loop {
        let cause = match watch_once(api, job_id, &progress).await {
            Ok(Watched::Ended) => break Ok(()),
            Ok(Watched::Cut { received, cause }) => {
                if received {
                    failures = 0;
                }
                cause
            }
            // No answer, or a server still opening its storage (503).
            Err(error) if super::retryable(&error) => error,
            Err(error) => break Err(error),
        };
        failures += 1;
        if failures > WATCH_RETRIES {
            break Err(Error::Connection(format!(
                "gave up after {WATCH_RETRIES} retries: {cause}"
            )));
        }
        let wait = Duration::from_millis(100)
            .saturating_mul(1 << (failures - 1).min(16))
            .min(Duration::from_secs(5));
        tokio::time::sleep(wait).await;
    };
    progress.finish_and_clear();
    result
}

/// How one connection of `job watch` ended.
enum Watched {
    /// The job ended (and was printed).
    Ended,
    /// Cut off; whether it brought a state first.
    Cut { received: bool, cause: Error },
}

async fn watch_once(api: &Api, job_id: &str, progress: &ProgressBar) -> Result<Watched, Error> {
    let response = api
        .sse(
            &format!("/v1/jobs/{}/events", Api::segment(job_id)),
            &[],
            None,
        )
        .await?;
    let mut received = false;
    let mut stream = response.bytes_stream();
    let mut decoder = super::sse::Decoder::default();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                let cause = Error::Connection(format!("event stream cut off: {error}"));
                return Ok(Watched::Cut { received, cause });
            }
        };
        for frame in decoder.push(&chunk) {
            if frame.event.as_deref() == Some("error") {
                let error = super::stream_error(&frame.data);
                // A server stopping ends the stream with `unavailable`:
                // like a cut, worth reconnecting for.
                if super::retryable(&error) {
                    return Ok(Watched::Cut {
                        received,
                        cause: error,
                    });
                }
                return Err(error);
            }
            let Ok(job) = serde_json::from_str::<Value>(&frame.data) else {
                continue;
            };
            received = true;
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
                return Ok(Watched::Ended);
            }
        }
    }
    let cause = Error::Connection("the event stream ended before the job did".into());
    Ok(Watched::Cut { received, cause })
}
