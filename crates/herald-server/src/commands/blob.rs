//! `herald blob put|get`: streamed uploads and downloads with a progress bar
//! (on stderr; hidden with `--output json`).

use std::path::PathBuf;

use clap::Subcommand;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Api, Error, Output};

/// Blob subcommands.
#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Upload a file as a blob; prints its id (`sha256:<hex>`).
    Put {
        /// The file
        file: PathBuf,
    },
    /// Download a blob to a file (or stdout).
    Get {
        /// The blob's id
        id: String,
        /// Write here instead of stdout
        #[arg(long, short = 'o', value_name = "FILE")]
        to: Option<PathBuf>,
    },
}

pub(crate) async fn run(api: &Api, command: BlobCommand) -> Result<(), Error> {
    match command {
        BlobCommand::Put { file } => {
            let stored = put(api, &file).await?;
            let row = json!({"id": stored["id"], "size": stored["size"]});
            api.print(&stored, &["id", "size"], &[row]);
            Ok(())
        }
        BlobCommand::Get { id, to } => get(api, &id, to).await,
    }
}

/// Uploads `file` (streamed) with a progress bar → the server's answer.
pub(crate) async fn put(api: &Api, file: &std::path::Path) -> Result<serde_json::Value, Error> {
    let file_error = |error: std::io::Error| Error::File(format!("{}: {error}", file.display()));
    let opened = tokio::fs::File::open(file).await.map_err(file_error)?;
    let size = opened.metadata().await.map_err(file_error)?.len();
    let progress = bar(api.output, size);
    progress.set_message("uploading");
    let counter = progress.clone();
    let chunks = futures::stream::unfold(opened, move |mut opened| {
        let counter = counter.clone();
        async move {
            let mut buffer = vec![0_u8; 256 * 1024];
            match opened.read(&mut buffer).await {
                Ok(0) => None,
                Ok(read) => {
                    buffer.truncate(read);
                    counter.inc(read as u64);
                    Some((Ok(bytes::Bytes::from(buffer)), opened))
                }
                Err(error) => Some((Err(error), opened)),
            }
        }
    });
    let stored = api
        .post_body(
            "/v1/blobs",
            "application/octet-stream",
            reqwest::Body::wrap_stream(chunks),
        )
        .await;
    progress.finish_and_clear();
    stored
}

async fn get(api: &Api, id: &str, output: Option<PathBuf>) -> Result<(), Error> {
    let response = api
        .stream(&format!("/v1/blobs/{}", Api::segment(id)), &[], None)
        .await?;
    let progress = bar(api.output, response.content_length().unwrap_or(0));
    progress.set_message("downloading");
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &output {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .map_err(|error| Error::File(format!("{}: {error}", path.display())))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|error| Error::Connection(format!("download cut off: {error}")))?;
        sink.write_all(&chunk)
            .await
            .map_err(|error| Error::File(format!("writing: {error}")))?;
        progress.inc(chunk.len() as u64);
    }
    sink.flush()
        .await
        .map_err(|error| Error::File(format!("writing: {error}")))?;
    progress.finish_and_clear();
    Ok(())
}

/// A byte progress bar on stderr (hidden for JSON output).
fn bar(output: Output, total: u64) -> ProgressBar {
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {msg} ({binary_bytes_per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if output == Output::Json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    progress
}
