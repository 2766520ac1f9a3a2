//! `herald publish …`: one event from flags, or many from NDJSON.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

use super::{Api, Error, Output};

/// `herald publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic
    topic: String,
    /// NDJSON file of CloudEvents (one JSON object per line), `-` for stdin
    #[arg(long, value_name = "PATH", conflicts_with_all = ["event_type", "data"])]
    file: Option<PathBuf>,
    /// Events per request when publishing from a file
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// The event's type (CloudEvents `type`)
    #[arg(long = "type", value_name = "TYPE", required_unless_present = "file")]
    event_type: Option<String>,
    /// The event's source
    #[arg(long, default_value = "herald-cli")]
    source: String,
    /// The event's id (Herald assigns one if absent)
    #[arg(long)]
    id: Option<String>,
    /// Partition key
    #[arg(long)]
    key: Option<String>,
    /// The event's subject
    #[arg(long)]
    subject: Option<String>,
    /// An explicit partition
    #[arg(long)]
    partition: Option<u32>,
    /// The payload: JSON, or text with --content-type
    #[arg(long)]
    data: Option<String>,
    /// Content type of --data [default: application/json]
    #[arg(long)]
    content_type: Option<String>,
}

pub(crate) async fn run(api: &Api, args: PublishArgs) -> Result<(), Error> {
    let path = format!("/v1/topics/{}/events", Api::segment(&args.topic));
    match &args.file {
        Some(file) => bulk(api, &path, file, args.batch as usize).await,
        None => single(api, &path, &args).await,
    }
}

async fn single(api: &Api, path: &str, args: &PublishArgs) -> Result<(), Error> {
    let mut event = Map::new();
    event.insert("specversion".into(), json!("1.0"));
    event.insert("source".into(), json!(args.source));
    event.insert("type".into(), json!(args.event_type));
    for (field, value) in [
        ("id", &args.id),
        ("key", &args.key),
        ("subject", &args.subject),
    ] {
        if let Some(value) = value {
            event.insert(field.into(), json!(value));
        }
    }
    if let Some(partition) = args.partition {
        event.insert("partition".into(), json!(partition));
    }
    if let Some(data) = &args.data {
        let content_type = args
            .content_type
            .clone()
            .unwrap_or_else(|| "application/json".into());
        let is_json = content_type == "application/json" || content_type.ends_with("+json");
        let value = if is_json {
            serde_json::from_str(data).map_err(|error| {
                Error::Usage(format!(
                    "--data is not JSON ({error}); give --content-type for text"
                ))
            })?
        } else {
            json!(data)
        };
        event.insert("datacontenttype".into(), json!(content_type));
        event.insert("data".into(), value);
    }
    let body = serde_json::to_vec(&Value::Object(event)).unwrap_or_default();
    let answer = api
        .post_raw(path, "application/cloudevents+json", body)
        .await?;
    let results = answer
        .get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    api.print(
        &answer,
        &["id", "partition", "offset", "duplicate"],
        &results,
    );
    Ok(())
}

async fn bulk(api: &Api, path: &str, file: &PathBuf, batch: usize) -> Result<(), Error> {
    let from_stdin = file.as_os_str() == "-";
    let (reader, size): (Box<dyn Read>, Option<u64>) = if from_stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let opened = std::fs::File::open(file)
            .map_err(|error| Error::File(format!("{}: {error}", file.display())))?;
        let size = opened.metadata().ok().map(|metadata| metadata.len());
        (Box::new(opened), size)
    };
    let progress = match size {
        Some(bytes) => ProgressBar::new(bytes).with_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {msg} ({binary_bytes_per_sec}, ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    if api.output == Output::Json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let (mut published, mut duplicates) = (0u64, 0u64);
    let mut pending: Vec<String> = Vec::with_capacity(batch);
    let mut pending_bytes = 0u64;
    for (index, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|error| Error::File(format!("{}: {error}", file.display())))?;
        pending_bytes += line.len() as u64 + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if !matches!(serde_json::from_str::<Value>(trimmed), Ok(Value::Object(_))) {
            progress.abandon();
            return Err(Error::Usage(format!(
                "{} line {}: not a JSON object",
                file.display(),
                index + 1
            )));
        }
        pending.push(trimmed.to_owned());
        if pending.len() == batch {
            let (count, duplicate) = send_batch(api, path, &mut pending)
                .await
                .inspect_err(|_| progress.abandon())?;
            published += count;
            duplicates += duplicate;
            progress.inc(std::mem::take(&mut pending_bytes));
            progress.set_message(format!("{published} events"));
        }
    }
    if !pending.is_empty() {
        let (count, duplicate) = send_batch(api, path, &mut pending)
            .await
            .inspect_err(|_| progress.abandon())?;
        published += count;
        duplicates += duplicate;
    }
    progress.inc(pending_bytes);
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let summary = json!({
        "published": published,
        "duplicates": duplicates,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "events_per_second": (published as f64 / seconds.max(1e-9)).round(),
    });
    match api.output {
        Output::Json => super::print_json(&summary),
        Output::Table => super::emit(&format!(
            "published {published} events ({duplicates} duplicates) in {seconds:.1} s, {:.0} events/s",
            published as f64 / seconds.max(1e-9)
        )),
    }
    Ok(())
}

/// Sends the pending lines as one batch; returns (events, duplicates).
async fn send_batch(api: &Api, path: &str, pending: &mut Vec<String>) -> Result<(u64, u64), Error> {
    let mut body =
        String::with_capacity(pending.iter().map(|line| line.len() + 1).sum::<usize>() + 2);
    body.push('[');
    body.push_str(&pending.join(","));
    body.push(']');
    pending.clear();
    let answer = api
        .post_raw(
            path,
            "application/cloudevents-batch+json",
            body.into_bytes(),
        )
        .await?;
    let results = answer
        .get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let duplicates = results
        .iter()
        .filter(|result| result.get("duplicate") == Some(&Value::Bool(true)))
        .count();
    Ok((results.len() as u64, duplicates as u64))
}
