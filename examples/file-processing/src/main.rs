//! Against a running Herald (`herald serve`):
//!
//! ```text
//! cargo run -p file-processing -- worker [server]
//! cargo run -p file-processing -- client <file> <output.gz> [server]
//! cargo run -p file-processing -- client-webhook <file> <output.gz> [server]
//! ```
//!
//! `client-webhook` is notified by a signed webhook instead of SSE: the
//! server must be allowed to reach this machine's loopback, e.g.
//! `HERALD_WEBHOOKS__ALLOW_TARGETS='["127.0.0.1/32"]' herald serve`.
#![allow(clippy::print_stdout, reason = "an example prints its report")]

use std::path::PathBuf;

use anyhow::{Context, bail};
use file_processing::WorkerOptions;
use tokio_util::sync::CancellationToken;

const DEFAULT_SERVER: &str = "http://127.0.0.1:7800";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.first().map(String::as_str) {
        Some("worker") => {
            let server = args.get(1).map_or(DEFAULT_SERVER, String::as_str);
            let cancel = CancellationToken::new();
            let options = WorkerOptions {
                member: format!("worker-{}", std::process::id()),
                pause_after_progress: None,
            };
            println!(
                "worker on queue {} at {server}; Ctrl-C stops",
                file_processing::QUEUE
            );
            let stop = cancel.clone();
            let completed = runtime.block_on(async move {
                let worker = file_processing::run_worker(server.to_owned(), options, cancel);
                tokio::pin!(worker);
                tokio::select! {
                    done = &mut worker => done,
                    _ = tokio::signal::ctrl_c() => { stop.cancel(); worker.await }
                }
            })?;
            println!("completed {completed} jobs");
        }
        Some(mode @ ("client" | "client-webhook")) => {
            let input = PathBuf::from(args.get(1).context("client <file> <output.gz>")?);
            let output = PathBuf::from(args.get(2).context("client <file> <output.gz>")?);
            let server = args.get(3).map_or(DEFAULT_SERVER, String::as_str);
            let report = if mode == "client" {
                runtime.block_on(file_processing::run(server, &input, &output))?
            } else {
                runtime.block_on(file_processing::run_notified_by_webhook(
                    server, &input, &output,
                ))?
            };
            println!(
                "job {}: {} bytes, {} lines, {} words; gzip {} bytes → {} (blob {}); notified: {}",
                report.job_id,
                report.stats.bytes,
                report.stats.lines,
                report.stats.words,
                report.stats.compressed_bytes,
                output.display(),
                report.result_blob,
                report.notifications.join(", ")
            );
        }
        _ => bail!(
            "usage: file-processing worker [server] | client[-webhook] <file> <output.gz> [server]"
        ),
    }
    Ok(())
}
