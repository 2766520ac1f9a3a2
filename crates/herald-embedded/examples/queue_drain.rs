//! Drains a backlog through a queue group with per-event acks, in process,
//! and reports events/s, the per-event cost over the drain (is it flat?) and
//! the process's peak RSS while draining (is memory bounded?).
//!
//! `cargo run --release -p herald-embedded --example queue_drain -- [events] [consumers] [value bytes] [partitions]`
//!
//! The backlog is published first (fsync = never, dedup off, batches of
//! 1,000), then the peak-RSS counter is reset (`/proc/self/clear_refs`), then
//! `consumers` tasks fetch up to 1,000 deliveries each and ack every one of
//! them by id until the group has acked the whole backlog.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a measuring tool"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_backend::{
    AckDurability, Backend, Events, FetchRequest, Fsync, GroupMode, GroupSpec, Groups, TopicSpec,
    Topics,
};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_types::{Event, EventInput, GroupName, TopicName};

#[path = "support/bench.rs"]
mod bench;
use bench::{reset_peak_rss, rss_kib};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let events: u64 = args
        .first()
        .map_or(1_000_000, |value| value.parse().unwrap());
    let consumers: u64 = args.get(1).map_or(1, |value| value.parse().unwrap());
    let size: usize = args.get(2).map_or(128, |value| value.parse().unwrap());
    let partitions: u32 = args.get(3).map_or(1, |value| value.parse().unwrap());
    let dir = bench::data_dir();
    bench::runtime().block_on(run(dir.path(), events, consumers, size, partitions));
}

async fn run(dir: &std::path::Path, total: u64, consumers: u64, size: usize, partitions: u32) {
    let backend = Arc::new(
        EmbeddedBackend::open(EmbeddedOptions::new(dir), LogMetrics::new())
            .await
            .unwrap(),
    );
    let topic: TopicName = "drain".parse().unwrap();
    let group: GroupName = "workers".parse().unwrap();
    let mut spec = TopicSpec::new(topic.clone());
    spec.partitions = partitions;
    spec.fsync = Fsync::Never;
    spec.dedup_window_ms = 0;
    backend.create_topic(spec).await.unwrap();
    backend
        .put_group(&topic, &group, GroupSpec::new(GroupMode::Queue))
        .await
        .unwrap();

    let started = Instant::now();
    let payload = Bytes::from(vec![b'x'; size]);
    let batch = 1_000u64;
    for first in (0..total).step_by(batch as usize) {
        let events = (first..(first + batch).min(total))
            .map(|index| {
                let mut event = Event::new(format!("e{index}"), "/bench", "bench");
                event.data = Some(payload.clone());
                event.datacontenttype = Some("application/octet-stream".into());
                EventInput {
                    event,
                    partition: None,
                }
            })
            .collect();
        backend.publish(&topic, events).await.unwrap();
    }
    let published = started.elapsed();
    let rss_after_publish = rss_kib("VmRSS");
    reset_peak_rss();

    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut slices = Vec::new();
    let sampler = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            // Per-event cost per tenth of the backlog.
            let mut marks = Vec::new();
            let mut next = total / 10;
            let mut last = Instant::now();
            while next <= total && next > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if acked.load(Ordering::Relaxed) >= next {
                    marks.push((
                        last.elapsed().as_secs_f64() * 1e6 / (total / 10) as f64,
                        rss_kib("VmRSS"),
                    ));
                    last = Instant::now();
                    next += total / 10;
                }
            }
            marks
        })
    };
    let tasks: Vec<_> = (0..consumers)
        .map(|consumer| {
            let (backend, topic, group, acked) = (
                Arc::clone(&backend),
                topic.clone(),
                group.clone(),
                Arc::clone(&acked),
            );
            tokio::spawn(async move {
                let member = format!("consumer-{consumer}");
                while acked.load(Ordering::Relaxed) < total {
                    let request = FetchRequest {
                        member: member.clone(),
                        max: 1_000,
                        wait_ms: 100,
                    };
                    let deliveries = backend
                        .fetch(&topic, &group, request)
                        .await
                        .unwrap()
                        .deliveries;
                    if deliveries.is_empty() {
                        continue;
                    }
                    let ids: Vec<String> = deliveries
                        .into_iter()
                        .map(|delivery| delivery.delivery_id)
                        .collect();
                    let outcome = backend
                        .ack(&topic, &group, &ids, AckDurability::Async)
                        .await
                        .unwrap();
                    acked.fetch_add(outcome.acked, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let drained = started.elapsed();
    slices.extend(sampler.await.unwrap());
    let status = backend.group_status(&topic, &group).await.unwrap();
    let lag: u64 = status
        .partitions
        .iter()
        .map(|partition| partition.lag)
        .sum();
    println!(
        "backlog {total} x {size} B on {partitions} partition(s): published in {:.1} s ({:.0} events/s), RSS after publish {} MiB",
        published.as_secs_f64(),
        total as f64 / published.as_secs_f64(),
        rss_after_publish / 1024
    );
    println!(
        "drain with {consumers} consumer(s), fetch 1,000 + ack each id: {:.1} s, {:.0} events/s, peak RSS while draining {} MiB, lag after {lag}",
        drained.as_secs_f64(),
        total as f64 / drained.as_secs_f64(),
        rss_kib("VmHWM") / 1024
    );
    let costs: Vec<String> = slices
        .iter()
        .map(|(micros, rss)| format!("{micros:.2} µs/{} MiB", rss / 1024))
        .collect();
    println!(
        "per-event cost and RSS by tenth of the backlog: {}",
        costs.join(", ")
    );
    backend.shutdown().await.unwrap();
}
