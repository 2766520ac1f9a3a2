//! Scenario 1 of the product: file processing through a job queue.
//!
//! A client uploads a file as a blob and submits a job referencing it; it
//! never waits on an open request: it follows the job over SSE and, once
//! notified, downloads the result blob. A worker fetches the request from
//! the queue, streams the input blob through gzip while counting bytes,
//! lines and words, reports progress, uploads the compressed file as the
//! result blob and completes the job (which acks its delivery).
//!
//! Or it is notified by webhook instead ([`run_notified_by_webhook`]): it
//! serves a receiver, submits the job with `notify.webhook_url` pointing at
//! it, checks the delivery's Standard Webhooks signature with the SDK's
//! `herald_client::webhooks::verify` (secret from `GET /v1/webhooks/jobs`),
//! and takes the job from the delivered event.
//!
//! [`submit_file`] + [`await_result`] are the client, [`run_worker`] the
//! worker; [`run`] plays both against a running Herald.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use flate2::Compression;
use flate2::write::GzEncoder;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// The queue the example uses.
pub const QUEUE: &str = "file-processing";

/// What the worker computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of the input.
    pub bytes: u64,
    /// Lines (`\n`-terminated, plus a last unterminated one).
    pub lines: u64,
    /// Words (runs of non-whitespace).
    pub words: u64,
    /// Bytes of the gzip output.
    pub compressed_bytes: u64,
}

/// What a client run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The job.
    pub job_id: String,
    /// The uploaded input.
    pub input_blob: String,
    /// The result blob (the gzip of the input).
    pub result_blob: String,
    /// The worker's statistics.
    pub stats: Stats,
    /// SSE event types received, in order (`status`, `progress`…,
    /// `result`); or `webhook <event type>` when notified by webhook.
    pub notifications: Vec<String>,
}

/// How a worker behaves.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// The worker's member name.
    pub member: String,
    /// Pause this long after the first progress report (a slow worker,
    /// for killing one mid-job).
    pub pause_after_progress: Option<Duration>,
}

/// Uploads `input`, submits a job for it, follows it over SSE until it
/// ends, and downloads the result to `output`.
pub async fn run(server: &str, input: &Path, output: &Path) -> Result<Report> {
    let http = reqwest::Client::new();
    let (job_id, input_blob) = submit_file(&http, server, input).await?;
    await_result(&http, server, &job_id, &input_blob, output).await
}

/// Uploads `input`, submits a job for it asking to be notified by
/// webhook, waits for the signed delivery on a receiver of its own (the
/// server must be allowed to reach it: `webhooks.allow_targets`), and
/// downloads the result to `output`.
pub async fn run_notified_by_webhook(server: &str, input: &Path, output: &Path) -> Result<Report> {
    let http = reqwest::Client::new();
    let settings = expect(
        http.get(format!("{server}/v1/webhooks/jobs"))
            .send()
            .await?,
        200,
    )
    .await?;
    let secret = text(&settings, "secret")?;
    let (notified, mut deliveries) = tokio::sync::mpsc::channel::<Value>(4);
    let receiver = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (secret, notified) = (secret.clone(), notified.clone());
            async move {
                // Only a delivery signed with the secret counts.
                if herald_client::webhooks::verify(&secret, &headers, &body).is_err() {
                    return axum::http::StatusCode::UNAUTHORIZED;
                }
                match serde_json::from_slice::<Value>(&body) {
                    Ok(event) => {
                        let _ = notified.send(event).await;
                        axum::http::StatusCode::NO_CONTENT
                    }
                    Err(_) => axum::http::StatusCode::BAD_REQUEST,
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let serving = tokio::spawn(async move { axum::serve(listener, receiver).await });
    let notify = json!({"webhook_url": format!("http://{address}/job-done")});
    let (job_id, input_blob) = submit(&http, server, input, Some(notify)).await?;
    let event = loop {
        let event = tokio::time::timeout(Duration::from_secs(60), deliveries.recv())
            .await
            .context("no webhook within 60 s")?
            .context("the receiver stopped")?;
        // A retry may bring an earlier job's notification: wait for ours.
        if event["data"]["job_id"] == job_id.as_str() {
            break event;
        }
    };
    serving.abort();
    let kind = text(&event, "type")?;
    finish(
        &http,
        server,
        &job_id,
        &input_blob,
        output,
        &event["data"],
        vec![format!("webhook {kind}")],
    )
    .await
}

/// Uploads `input` (streamed from disk) and submits a job for it → `(job
/// id, input blob id)`.
pub async fn submit_file(
    http: &reqwest::Client,
    server: &str,
    input: &Path,
) -> Result<(String, String)> {
    submit(http, server, input, None).await
}

async fn submit(
    http: &reqwest::Client,
    server: &str,
    input: &Path,
    notify: Option<Value>,
) -> Result<(String, String)> {
    let blob = upload_file(http, server, input).await?;
    let name = input
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut request = json!({"blob": blob, "data": {"file_name": name}});
    if let Some(notify) = notify {
        request["notify"] = notify;
    }
    let submitted = http
        .post(format!("{server}/v1/queues/{QUEUE}/jobs"))
        .json(&request)
        .send()
        .await?;
    let submitted = expect(submitted, 202).await?;
    let job_id = text(&submitted, "job_id")?;
    Ok((job_id, blob))
}

/// Follows the job over SSE until its `result`, then downloads the result
/// blob to `output`.
pub async fn await_result(
    http: &reqwest::Client,
    server: &str,
    job_id: &str,
    input_blob: &str,
    output: &Path,
) -> Result<Report> {
    let response = http
        .get(format!("{server}/v1/jobs/{job_id}/events"))
        .send()
        .await?
        .error_for_status()?;
    let (notifications, job) = follow(response).await?;
    finish(
        http,
        server,
        job_id,
        input_blob,
        output,
        &job,
        notifications,
    )
    .await
}

/// Downloads the ended `job`'s result blob to `output` → the report.
async fn finish(
    http: &reqwest::Client,
    server: &str,
    job_id: &str,
    input_blob: &str,
    output: &Path,
    job: &Value,
    notifications: Vec<String>,
) -> Result<Report> {
    ensure!(
        job["status"] == "succeeded",
        "the job did not succeed: {job}"
    );
    let result_blob = text(job, "result_blob")?;
    download(http, server, &result_blob, output).await?;
    let result = &job["result"];
    let number = |field: &str| result[field].as_u64().context(format!("result.{field}"));
    Ok(Report {
        job_id: job_id.to_owned(),
        input_blob: input_blob.to_owned(),
        result_blob,
        stats: Stats {
            bytes: number("bytes")?,
            lines: number("lines")?,
            words: number("words")?,
            compressed_bytes: number("compressed_bytes")?,
        },
        notifications,
    })
}

/// Reads SSE frames until the `result` event → the event types seen and the
/// final job.
async fn follow(response: reqwest::Response) -> Result<(Vec<String>, Value)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut kinds = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.push_str(std::str::from_utf8(&chunk?)?);
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let kind = frame
                .lines()
                .find_map(|line| line.strip_prefix("event:"))
                .map(|kind| kind.trim().to_owned());
            let data = frame
                .lines()
                .find_map(|line| line.strip_prefix("data:"))
                .map(str::trim);
            if let (Some(kind), Some(data)) = (kind, data) {
                let ended = kind == "result";
                kinds.push(kind);
                if ended {
                    return Ok((kinds, serde_json::from_str(data)?));
                }
            }
        }
    }
    bail!("the event stream ended before the job's result")
}

/// Fetches and processes job requests until `cancel` fires; returns how
/// many it completed.
pub async fn run_worker(
    server: String,
    options: WorkerOptions,
    cancel: CancellationToken,
) -> Result<usize> {
    let http = reqwest::Client::new();
    let mut completed = 0;
    loop {
        let fetch = http
            .post(format!("{server}/v1/queues/{QUEUE}/fetch"))
            .json(&json!({"member": options.member, "max": 1, "wait_ms": 500}))
            .send();
        let fetched = tokio::select! {
            () = cancel.cancelled() => return Ok(completed),
            fetched = fetch => fetched?,
        };
        // A fetch does not create the queue: until the first submit it is
        // 404 queue_not_found, and the worker waits as a long-poll would.
        if fetched.status() == 404 {
            let problem = expect(fetched, 404).await?;
            ensure!(problem["code"] == "queue_not_found", "fetch: {problem}");
            tokio::select! {
                () = cancel.cancelled() => return Ok(completed),
                () = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        }
        let fetched = expect(fetched, 200).await?;
        for delivery in fetched["deliveries"].as_array().into_iter().flatten() {
            process(&http, &server, delivery, &options).await?;
            completed += 1;
        }
    }
}

/// Processes one delivered request: gzip + statistics of its blob.
async fn process(
    http: &reqwest::Client,
    server: &str,
    delivery: &Value,
    options: &WorkerOptions,
) -> Result<()> {
    let job_id = text(delivery, "job_id")?;
    let delivery_id = text(delivery, "delivery_id")?;
    let blob = text(delivery, "blob")?;
    let response = http
        .get(format!("{server}/v1/blobs/{blob}"))
        .send()
        .await?
        .error_for_status()?;
    let total = response.content_length().unwrap_or(0);
    let mut counter = Counter::default();
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    let mut stream = response.bytes_stream();
    let mut reported = false;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        counter.feed(&chunk);
        encoder.write_all(&chunk)?;
        if !reported && counter.bytes * 2 >= total {
            reported = true;
            let percent = (counter.bytes * 100).checked_div(total).unwrap_or(100);
            http.post(format!("{server}/v1/jobs/{job_id}/progress"))
                .json(&json!({"progress": percent, "message": "compressing", "delivery_id": delivery_id}))
                .send()
                .await?
                .error_for_status()?;
            if let Some(pause) = options.pause_after_progress {
                tokio::time::sleep(pause).await;
            }
        }
    }
    let compressed = encoder.finish()?;
    let compressed_bytes = compressed.len() as u64;
    let stored = http
        .post(format!("{server}/v1/blobs"))
        .body(compressed)
        .send()
        .await?;
    let result_blob = text(&expect(stored, 201).await?, "id")?;
    let stats = counter.finish();
    let done = http
        .post(format!("{server}/v1/jobs/{job_id}/complete"))
        .json(&json!({
            "result": {
                "bytes": stats.bytes,
                "lines": stats.lines,
                "words": stats.words,
                "compressed_bytes": compressed_bytes,
            },
            "result_blob": result_blob,
            "delivery_id": delivery_id,
        }))
        .send()
        .await?;
    expect(done, 200).await?;
    Ok(())
}

/// Counts bytes, lines and words across chunk boundaries.
#[derive(Debug, Default)]
pub struct Counter {
    bytes: u64,
    lines: u64,
    words: u64,
    in_word: bool,
    last: Option<u8>,
}

impl Counter {
    /// Counts `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            self.bytes += 1;
            if byte == b'\n' {
                self.lines += 1;
            }
            let blank = byte.is_ascii_whitespace();
            if !blank && !self.in_word {
                self.words += 1;
            }
            self.in_word = !blank;
            self.last = Some(byte);
        }
    }

    /// The totals (a last line without `\n` counts).
    pub fn finish(&self) -> Stats {
        let unterminated = self.last.is_some_and(|byte| byte != b'\n');
        Stats {
            bytes: self.bytes,
            lines: self.lines + u64::from(unterminated),
            words: self.words,
            compressed_bytes: 0,
        }
    }
}

async fn upload_file(http: &reqwest::Client, server: &str, path: &Path) -> Result<String> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut buffer = vec![0_u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(bytes::Bytes::from(buffer)), file))
            }
            Err(error) => Some((Err(error), file)),
        }
    });
    let response = http
        .post(format!("{server}/v1/blobs"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await?;
    text(&expect(response, 201).await?, "id")
}

async fn download(http: &reqwest::Client, server: &str, blob: &str, output: &Path) -> Result<()> {
    let response = http
        .get(format!("{server}/v1/blobs/{blob}"))
        .send()
        .await?
        .error_for_status()?;
    let mut file = tokio::fs::File::create(output)
        .await
        .with_context(|| format!("cannot create {}", output.display()))?;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        file.write_all(&chunk?).await?;
    }
    file.flush().await?;
    Ok(())
}

async fn expect(response: reqwest::Response, status: u16) -> Result<Value> {
    let actual = response.status().as_u16();
    let body = response.text().await?;
    ensure!(actual == status, "expected {status}, got {actual}: {body}");
    Ok(serde_json::from_str(&body)?)
}

fn text(value: &Value, field: &str) -> Result<String> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {field} in {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_text_split_anywhere_when_counted_should_match_whole_counts() {
        let text = b"one two\nthree  four\n five";
        for split in 0..text.len() {
            let mut counter = Counter::default();
            counter.feed(&text[..split]);
            counter.feed(&text[split..]);
            let stats = counter.finish();
            assert_eq!(
                (stats.bytes, stats.lines, stats.words),
                (25, 3, 5),
                "{split}"
            );
        }
    }
}
