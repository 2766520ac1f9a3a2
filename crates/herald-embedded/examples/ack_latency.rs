//! The cost of persisting acks before confirming them (hardening point 6):
//! acks per second and ack latency of a queue group with `ack_durability`
//! `async` (confirmed once applied, persisted within 50 ms) or `sync`
//! (confirmed once persisted; concurrent acks share one redb transaction).
//!
//! `cargo run --release -p herald-embedded --example ack_latency -- <async|sync> [workers] [seconds] [events]`
//!
//! `events` (default 400,000) are published first (fsync = never: the
//! publishes are not measured). Then `workers` tasks each fetch one
//! delivery at a time and ack it by id, timing each ack call, for `seconds`
//! (default 10). Prints acks/s, the ack latency percentiles, and how many
//! redb transactions group state took (acks per transaction).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a measuring tool"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_backend::{
    AckDurability, Backend, Events, FetchRequest, Fsync, GroupMode, GroupSpec, Groups, TopicSpec,
    Topics,
};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions, GroupMetrics};
use herald_log::LogMetrics;
use herald_types::{Event, EventInput, GroupName, TopicName};

#[path = "support/bench.rs"]
mod bench;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let durability = match args.first().map(String::as_str) {
        Some("sync") => AckDurability::Sync,
        _ => AckDurability::Async,
    };
    let workers: usize = args.get(1).map_or(16, |value| value.parse().unwrap());
    let seconds: u64 = args.get(2).map_or(10, |value| value.parse().unwrap());
    let events: u64 = args.get(3).map_or(400_000, |value| value.parse().unwrap());
    let dir = bench::data_dir();
    bench::runtime().block_on(run(dir.path(), durability, workers, seconds, events));
}

async fn run(
    dir: &std::path::Path,
    durability: AckDurability,
    workers: usize,
    seconds: u64,
    total: u64,
) {
    let metrics = GroupMetrics::new();
    let options = EmbeddedOptions {
        metrics: Arc::clone(&metrics),
        ..EmbeddedOptions::new(dir)
    };
    let backend = Arc::new(
        EmbeddedBackend::open(options, LogMetrics::new())
            .await
            .unwrap(),
    );
    let topic: TopicName = "acks".parse().unwrap();
    let group: GroupName = "workers".parse().unwrap();
    let mut spec = TopicSpec::new(topic.clone());
    spec.fsync = Fsync::Never;
    spec.dedup_window_ms = 0;
    backend.create_topic(spec).await.unwrap();
    let mut group_spec = GroupSpec::new(GroupMode::Queue);
    group_spec.ack_durability = durability;
    group_spec.max_in_flight = 100_000;
    backend.put_group(&topic, &group, group_spec).await.unwrap();
    let payload = Bytes::from(vec![b'x'; 128]);
    for first in (0..total).step_by(1_000) {
        let batch = (first..(first + 1_000).min(total))
            .map(|index| {
                let mut event = Event::new(format!("e{index}"), "/bench", "bench");
                event.data = Some(payload.clone());
                EventInput {
                    event,
                    partition: None,
                }
            })
            .collect();
        backend.publish(&topic, batch).await.unwrap();
    }
    let flushes_before = metrics.flushes_total();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let (backend, topic, group) = (Arc::clone(&backend), topic.clone(), group.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let member = format!("worker-{worker}");
                while Instant::now() < until {
                    let request = FetchRequest {
                        member: member.clone(),
                        max: 1,
                        wait_ms: 100,
                    };
                    let fetched = backend.fetch(&topic, &group, request).await.unwrap();
                    let Some(delivery) = fetched.deliveries.into_iter().next() else {
                        break;
                    };
                    let acking = Instant::now();
                    let outcome = backend
                        .ack(
                            &topic,
                            &group,
                            &[delivery.delivery_id],
                            AckDurability::Async,
                        )
                        .await
                        .unwrap();
                    latencies.push(acking.elapsed());
                    assert_eq!(outcome.acked, 1);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let transactions = metrics.flushes_total() - flushes_before;
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies
            .get(index)
            .map_or(0.0, |latency| latency.as_secs_f64() * 1e3)
    };
    let mean = latencies.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3
        / latencies.len().max(1) as f64;
    println!(
        "{durability} acks, {workers} workers: {} acks in {:.1} s = {:.0} acks/s; ack latency mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms; {} group-state transactions ({:.1} acks each)",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        percentile(0.999),
        transactions,
        latencies.len() as f64 / transactions.max(1) as f64
    );
    backend.shutdown().await.unwrap();
}
