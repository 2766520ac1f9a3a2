//! `herald-bench timers`: W8's timer half — many workflow instances, each
//! waiting on a durable timer at once.
//!
//! ```text
//! cargo build --release -p herald-bench -p herald-server --bin herald --bin herald-bench
//! target/release/herald-bench timers --instances 100000 --wait-ms 240000 --tmp /dev/shm --out w8-timers
//! ```
//!
//! `herald serve` (release, fresh temp dir) gets a workflow of two tasks (a
//! `wait` of `--wait-ms`, then a `set`); `--instances` instances are
//! started over REST by `--concurrency` clients. The server's RSS is
//! sampled before, once all wait (every instance parked on its timer), and
//! after all ended. Each instance of a sample of `--sample` is read back:
//! its timer's lateness is the `wait` task's end minus its start minus the
//! wait (the history's times, ms). The wait must outlast the starting, so
//! that every instance waits at once.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::noise::ProcessFootprint;
use crate::peers::{self, Herald};

/// The timer run's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TimerArgs {
    /// Instances started.
    #[arg(long, default_value_t = 100_000)]
    instances: u64,
    /// Each instance's timer, ms after it starts.
    #[arg(long, default_value_t = 240_000)]
    wait_ms: u64,
    /// Concurrent start requests.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Instances whose lateness is read back.
    #[arg(long, default_value_t = 2_000)]
    sample: usize,
    /// Where the server's data dir goes.
    #[arg(long, default_value = "/tmp")]
    tmp: PathBuf,
    /// Where `summary.json` goes.
    #[arg(long, default_value = "w8-timers")]
    out: PathBuf,
    /// The herald binary (default: next to this binary).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
}

const WORKFLOW: &str = "document: { dsl: '1.0.0', namespace: bench, name: sleeper, version: '1' }\n\
do:\n  - nap: { wait: { milliseconds: WAIT_MS } }\n  - done: { set: { woke: true } }\n";

async fn json_of(response: reqwest::Response, status: u16) -> Result<Value> {
    let got = response.status().as_u16();
    let text = response.text().await?;
    ensure!(got == status, "expected {status}, got {got}: {text}");
    Ok(serde_json::from_str(&text)?)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs the timer measurement.
pub async fn run(args: TimerArgs) -> Result<()> {
    let herald_bin = args.herald_bin.clone().unwrap_or_else(peers::find_herald);
    let herald = Herald::launch(&herald_bin, &args.tmp, Stdio::inherit(), false)?;
    let server = herald.endpoint.url.clone();
    let http = reqwest::Client::new();
    peers::wait_ok(&http, &format!("{server}/readyz"), "herald").await?;
    let deployed = http
        .post(format!("{server}/v1/workflows"))
        .header("content-type", "application/yaml")
        .body(WORKFLOW.replace("WAIT_MS", &args.wait_ms.to_string()))
        .send()
        .await?;
    json_of(deployed, 201).await?;
    let before = ProcessFootprint::take(herald.pid());
    println!(
        "timers: herald pid {} on {server}; RSS before {:.1} MiB",
        herald.pid(),
        mib(before.rss_bytes)
    );

    // Start them all.
    let started_at = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (http, server, next) = (http.clone(), server.clone(), Arc::clone(&next));
        let total = args.instances;
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let started = http
                    .post(format!("{server}/v1/workflows/bench/sleeper/instances"))
                    .json(&json!({"input": {}}))
                    .send()
                    .await?;
                let started = json_of(started, 201).await?;
                ids.push(
                    started["instance_id"]
                        .as_str()
                        .context("instance_id")?
                        .to_owned(),
                );
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut ids = Vec::new();
    for worker in workers {
        ids.extend(worker.await??);
    }
    let start_seconds = started_at.elapsed().as_secs_f64();
    let start_rate = ids.len() as f64 / start_seconds;
    println!(
        "timers: {} instances started in {start_seconds:.1} s ({start_rate:.0}/s)",
        ids.len()
    );
    if start_seconds * 1000.0 >= args.wait_ms as f64 {
        bail!("starting took longer than the wait: raise --wait-ms");
    }
    // All waiting now: the footprint with every timer pending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = ProcessFootprint::take(herald.pid());
    println!(
        "timers: all waiting; RSS {:.1} MiB, threads {}",
        mib(waiting.rss_bytes),
        waiting.threads
    );

    // Wait for every one to end: the last started ends last.
    let last = ids.last().context("no instance")?.clone();
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms) + Duration::from_secs(600);
    loop {
        let view = json_of(
            http.get(format!(
                "{server}/v1/workflow-instances/{last}?wait_ms=60000"
            ))
            .send()
            .await?,
            200,
        )
        .await?;
        if view["status"] == "completed" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the last instance never ended: {view}"
        );
    }
    let after = ProcessFootprint::take(herald.pid());

    // Lateness of a sample, spread over the start order.
    let step = (ids.len() / args.sample.max(1)).max(1);
    let mut late = Vec::new();
    let mut not_completed = 0;
    for id in ids.iter().step_by(step) {
        let view = json_of(
            http.get(format!("{server}/v1/workflow-instances/{id}?wait_ms=60000"))
                .send()
                .await?,
            200,
        )
        .await?;
        if view["status"] != "completed" {
            not_completed += 1;
            continue;
        }
        let history = json_of(
            http.get(format!("{server}/v1/workflow-instances/{id}/history"))
                .send()
                .await?,
            200,
        )
        .await?;
        let nap = history["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|step| step["task"] == "nap"))
            .context("no nap step")?;
        let time = |field: &str| -> Result<i64> {
            herald_types::parse_rfc3339_ms(nap[field].as_str().context("time")?)
                .map_err(|error| anyhow::anyhow!("{error}"))
        };
        late.push(time("ended_at")? - time("started_at")? - i64::try_from(args.wait_ms)?);
    }
    late.sort_unstable();
    let at = |q: f64| late[((late.len() - 1) as f64 * q).round() as usize];
    let summary = json!({
        "instances": ids.len(),
        "wait_ms": args.wait_ms,
        "start_seconds": start_seconds,
        "starts_per_s": start_rate,
        "rss_mib": {"before": mib(before.rss_bytes), "all_waiting": mib(waiting.rss_bytes), "after": mib(after.rss_bytes)},
        "rss_bytes_per_waiting_instance": (waiting.rss_bytes.saturating_sub(before.rss_bytes)) as f64 / ids.len() as f64,
        "lateness_ms": {"sampled": late.len(), "p50": at(0.5), "p99": at(0.99), "max": at(1.0), "min": at(0.0)},
        "sampled_not_completed": not_completed,
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
