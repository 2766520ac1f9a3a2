//! HTTP load against a running Herald: batch publish throughput, and SSE
//! fan-out to many subscribers.
//!
//! ```text
//! cargo run --release -p herald-server --example http_bench -- publish <server> <clients> <batch> <seconds>
//! cargo run --release -p herald-server --example http_bench -- fanout  <server> <subscribers> <events> <server pid>
//! ```
//!
//! `publish` creates a topic (`fsync = always`, 4 partitions) and has
//! `clients` connections each post batches of `batch` 128-byte events
//! (`application/cloudevents-batch+json`), one request in flight each, for
//! `seconds`. `fanout` opens `subscribers` SSE subscriptions to a fresh topic,
//! publishes `events` events in batches of 100, and waits until every
//! subscriber has received every event; it reports deliveries per second and
//! the server's RSS (from `/proc/<pid>/status`) before and after.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a measuring tool"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.first().map(String::as_str) {
        Some("publish") => runtime.block_on(publish(
            &args[1],
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
        )),
        Some("fanout") => runtime.block_on(fanout(
            &args[1],
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
        )),
        _ => eprintln!("usage: http_bench publish|fanout …"),
    }
}

fn batch(prefix: &str, start: u64, size: u64) -> String {
    let payload = "x".repeat(100);
    let events: Vec<Value> = (start..start + size)
        .map(|index| {
            json!({ "specversion": "1.0", "id": format!("{prefix}-{index}"), "source": "/bench", "type": "bench",
                    "datacontenttype": "text/plain", "data": payload })
        })
        .collect();
    serde_json::to_string(&events).unwrap()
}

async fn publish(server: &str, clients: u64, size: u64, seconds: u64) {
    let http = reqwest::Client::new();
    let topic = format!("bench-{}", std::process::id());
    let created = http
        .post(format!("{server}/v1/topics"))
        .json(&json!({ "name": topic, "partitions": 4, "fsync": "always" }))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    let url = format!("{server}/v1/topics/{topic}/events");
    let published = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (http, url, published) = (http.clone(), url.clone(), Arc::clone(&published));
            tokio::spawn(async move {
                let mut next = 0;
                while Instant::now() < deadline {
                    let body = batch(&format!("c{client}"), next, size);
                    next += size;
                    let answer = http
                        .post(&url)
                        .header("content-type", "application/cloudevents-batch+json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), 201);
                    published.fetch_add(size, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = published.load(Ordering::Relaxed);
    println!(
        "HTTP batch publish: {clients} clients x batches of {size}, fsync=always: {total} events in {elapsed:.1} s = {:.0} events/s ({:.0} requests/s)",
        total as f64 / elapsed,
        total as f64 / elapsed / size as f64
    );
}

async fn fanout(server: &str, subscribers: usize, events: u64, pid: u32) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(subscribers + 8)
        .build()
        .unwrap();
    let topic = format!("fanout-{}", std::process::id());
    let created = http
        .post(format!("{server}/v1/topics"))
        .json(&json!({ "name": topic, "partitions": 1, "fsync": "never" }))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success());
    let rss_before = rss_kib(pid);
    let delivered = Arc::new(AtomicU64::new(0));
    let url = format!("{server}/v1/topics/{topic}/events/stream?from=latest");
    let mut tasks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let delivered = Arc::clone(&delivered);
        tasks.push(tokio::spawn(async move {
            let mut stream = response.bytes_stream();
            let mut seen = 0;
            let mut carry = String::new();
            while seen < events {
                let chunk = stream.next().await.unwrap().unwrap();
                carry.push_str(&String::from_utf8_lossy(&chunk));
                let frames = carry.matches("\n\n").count();
                let ids = carry.matches("\nid:").count() + usize::from(carry.starts_with("id:"));
                if frames > 0 {
                    let cut = carry.rfind("\n\n").unwrap() + 2;
                    carry.drain(..cut);
                }
                seen += ids as u64;
                delivered.fetch_add(ids as u64, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let publish_url = format!("{server}/v1/topics/{topic}/events");
    for start in (0..events).step_by(100) {
        let size = 100.min(events - start);
        let answer = http
            .post(&publish_url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(batch("f", start, size))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
    }
    let mut peak = rss_before;
    let watcher = {
        let delivered = Arc::clone(&delivered);
        let target = events * subscribers as u64;
        tokio::spawn(async move {
            let mut peak = 0;
            while delivered.load(Ordering::Relaxed) < target {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    peak = peak.max(watcher.await.unwrap()).max(rss_kib(pid));
    let total = delivered.load(Ordering::Relaxed);
    println!(
        "SSE fan-out: {subscribers} subscribers x {events} events: {total} deliveries in {elapsed:.2} s = {:.0} deliveries/s; server RSS {} MiB before, peak {} MiB",
        total as f64 / elapsed,
        rss_before / 1024,
        peak / 1024
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix(" kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}
