//! `herald-bench restart`: W9's recovery half — how long `herald serve`
//! takes to serve again, and how much memory it holds then, against the
//! size of its log, after `kill -9` and after a clean stop.
//!
//! ```text
//! cargo build --release -p herald-bench -p herald-server --bin herald --bin herald-bench
//! target/release/herald-bench restart --sizes-gb 1,5,10 --out w9-restart
//! ```
//!
//! One `herald serve` (release, fresh temp dir) gets a topic of
//! `--partitions` partitions at `fsync = always` (D2) with its default
//! dedup window, and a queue group on it that nobody consumes (a backlog
//! the size of the log). The SDK's Publisher fills it with events of
//! `--payload` bytes until the topic holds the first size; then the server
//! is killed with SIGKILL and started again on the same data dir, then
//! stopped with SIGTERM and started again, each time timed from spawning
//! the new process to its first `/readyz` 200 and to a first publish
//! answered, with the RSS it has when ready. Then it fills up to the next
//! size, and so on. Each restart checks that the topic still holds every
//! acknowledged event.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use herald_client::{Event, Fsync, GroupMode, GroupOptions, Start, TopicOptions};
use serde_json::{Value, json};

use crate::noise::ProcessFootprint;
use crate::peers::{self, Herald};

/// The restart run's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RestartArgs {
    /// Log sizes to restart at, in GB (10^9 bytes of events on disk), in
    /// increasing order: the log grows from one to the next.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    sizes_gb: Vec<f64>,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Where the server's data dir goes.
    #[arg(long, default_value = "/tmp")]
    tmp: PathBuf,
    /// Where `summary.json` goes.
    #[arg(long, default_value = "w9-restart")]
    out: PathBuf,
    /// The herald binary (default: next to this binary).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// Keep the data dir at the end (its path is printed), to profile
    /// restarts of it by hand.
    #[arg(long)]
    keep: bool,
}

const TOPIC: &str = "w9";

/// Runs the restart measurement.
pub async fn run(args: RestartArgs) -> Result<()> {
    ensure!(
        args.sizes_gb.windows(2).all(|pair| pair[0] < pair[1]),
        "--sizes-gb must increase"
    );
    std::fs::create_dir_all(&args.out)?;
    let herald_bin = args.herald_bin.clone().unwrap_or_else(peers::find_herald);
    let mut herald = Herald::launch(&herald_bin, &args.tmp, Stdio::inherit(), false)?;
    let http = reqwest::Client::new();
    peers::wait_ok(&http, &format!("{}/readyz", herald.endpoint.url), "herald").await?;
    let client = herald.endpoint.client().await?;
    client
        .create_topic(
            TopicOptions::new(TOPIC)
                .partitions(args.partitions)
                .fsync(Fsync::Always)
                .retention(None, None, None),
        )
        .await?;
    client
        .put_group(
            TOPIC,
            GroupOptions::new("backlog", GroupMode::Queue).start(Start::Earliest),
        )
        .await?;
    drop(client);

    let payload = Bytes::from(vec![b'x'; args.payload]);
    let mut acked = 0u64;
    let mut results = Vec::new();
    for &size_gb in &args.sizes_gb {
        let target = (size_gb * 1e9) as u64;
        let filling = Instant::now();
        let added = fill(&herald, &payload, target).await?;
        acked += added;
        let fill_seconds = filling.elapsed().as_secs_f64();
        let bytes = topic_bytes(&herald.endpoint.client().await?).await?;
        println!(
            "restart: {:.2} GB in {acked} events ({added} added in {fill_seconds:.1} s)",
            bytes as f64 / 1e9
        );
        for crash in [true, false] {
            let result = restart(&mut herald, &http, &payload, crash, acked).await?;
            // The probe and the events published after the restart.
            acked += 1 + result["published_after"].as_u64().unwrap_or(0);
            println!(
                "restart: {} at {:.2} GB: listening in {:.0} ms, ready in {:.0} ms, first publish in {:.0} ms, RSS at ready {:.1} MB; then {:.0} events/s (fill: {:.0}/s)",
                if crash { "kill -9" } else { "SIGTERM" },
                bytes as f64 / 1e9,
                result["listening_ms"].as_f64().unwrap_or(0.0),
                result["ready_ms"].as_f64().unwrap_or(0.0),
                result["first_publish_ms"].as_f64().unwrap_or(0.0),
                result["rss_at_ready_bytes"].as_f64().unwrap_or(0.0) / 1e6,
                result["publish_rate_after"].as_f64().unwrap_or(0.0),
                added as f64 / fill_seconds,
            );
            let mut result = result;
            result["size_gb"] = json!(size_gb);
            result["log_bytes"] = json!(bytes);
            result["events"] = json!(acked);
            result["fill_seconds"] = json!(fill_seconds);
            results.push(result);
        }
    }
    let summary = json!({
        "payload": args.payload,
        "partitions": args.partitions,
        "fsync": "always",
        "herald": peers::version(&herald_bin),
        "runs": results,
    });
    let path = args.out.join("summary.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)?;
    println!("restart: wrote {}", path.display());
    if args.keep {
        println!("restart: kept {}", herald.stop_and_keep().display());
    }
    Ok(())
}

/// Publishes until the topic holds `target` bytes; returns the events
/// acknowledged.
async fn fill(herald: &Herald, payload: &Bytes, target: u64) -> Result<u64> {
    let client = herald.endpoint.client().await?;
    let client = &client;
    publish_until(herald, payload, |_| async move {
        Ok(topic_bytes(client).await? >= target)
    })
    .await
}

/// Publishes for `duration`; returns how many events were
/// acknowledged.
async fn fill_for(herald: &Herald, payload: &Bytes, duration: Duration) -> Result<u64> {
    let started = Instant::now();
    publish_until(herald, payload, |_| async move {
        Ok(started.elapsed() >= duration)
    })
    .await
}

/// Publishes with the SDK's Publisher (at most 1,000 unacknowledged) until
/// `done` (asked about every 100 ms) says so; returns the events
/// acknowledged.
async fn publish_until<F, Fut>(herald: &Herald, payload: &Bytes, done: F) -> Result<u64>
where
    F: Fn(()) -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let client = herald.endpoint.client().await?;
    let publisher = client
        .publisher(TOPIC)
        .max_batch(250)
        .window(4)
        .linger(Duration::from_millis(1))
        .build();
    let mut pending = std::collections::VecDeque::with_capacity(1000);
    let mut acked = 0u64;
    let mut checked = Instant::now();
    loop {
        if checked.elapsed() > Duration::from_millis(100) {
            checked = Instant::now();
            if done(()).await? {
                break;
            }
        }
        if pending.len() >= 1000 {
            let ack: herald_client::PendingPublish = pending.pop_front().context("empty")?;
            ack.await?;
            acked += 1;
        }
        let mut event = Event::new("", "/bench", "bench.w9");
        event.datacontenttype = Some("application/octet-stream".to_owned());
        event.data = Some(payload.clone());
        pending.push_back(publisher.publish(event).await?);
    }
    while let Some(ack) = pending.pop_front() {
        ack.await?;
        acked += 1;
    }
    Ok(acked)
}

/// The topic's bytes on disk, over its partitions.
async fn topic_bytes(client: &herald_client::Client) -> Result<u64> {
    let described = client.describe_topic(TOPIC).await?;
    Ok(described.partitions.iter().map(|p| p.bytes).sum())
}

/// One restart: stops the server (`crash`: SIGKILL, else SIGTERM), starts
/// it on the same data dir, and times it until `/readyz` answers 200 and a
/// first publish is acknowledged; checks that `acked` events are kept.
async fn restart(
    herald: &mut Herald,
    http: &reqwest::Client,
    payload: &Bytes,
    crash: bool,
    acked: u64,
) -> Result<Value> {
    let restarted = herald.restart(crash, Stdio::inherit())?;
    let ready_url = format!("{}/readyz", herald.endpoint.url);
    let (ready, rss) = loop {
        if let Ok(response) = http.get(&ready_url).send().await
            && response.status().is_success()
        {
            break (
                restarted.started.elapsed(),
                ProcessFootprint::take(herald.pid()).rss_bytes,
            );
        }
        ensure!(
            restarted.started.elapsed() < Duration::from_secs(600),
            "not ready 10 minutes after the restart"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let client = herald.endpoint.client().await?;
    let mut probe = Event::new("", "/bench", "bench.w9.probe");
    probe.data = Some(Bytes::from_static(b"probe"));
    client.publish(TOPIC, [probe]).await?;
    let first_publish = restarted.started.elapsed();
    let described = client.describe_topic(TOPIC).await?;
    let kept: u64 = described
        .partitions
        .iter()
        .map(|p| p.end_offset - p.start_offset)
        .sum();
    ensure!(
        kept == acked + 1,
        "after the restart the topic holds {kept} events; {} were acknowledged",
        acked + 1
    );
    // The publish rate right after the restart, while the window's ids
    // from before it are on disk (runs), against the fill's.
    let measuring = Instant::now();
    let after = fill_for(herald, payload, Duration::from_secs(3)).await?;
    let after_rate = after as f64 / measuring.elapsed().as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(json!({
        "publish_rate_after": after_rate,
        "published_after": after,
        "stop": if crash { "kill -9" } else { "SIGTERM" },
        "stopped_ms": ms(restarted.stopped_in),
        "listening_ms": ms(restarted.listening_in),
        "ready_ms": ms(ready),
        "first_publish_ms": ms(first_publish),
        "rss_at_ready_bytes": rss,
    }))
}
