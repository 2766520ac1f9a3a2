//! What a consumer group holds in memory behind events that are not ready,
//! and whether a ready event still goes out at once (hardening point 2).
//!
//! `cargo run --release -p herald-embedded --example group_memory -- [delayed|keyed] [events] [value bytes]`
//!
//! - `delayed`: `events` events delayed by a day, then one ready event.
//! - `keyed`: a keyed group; `events` events of one key whose first
//!   delivery is leased and never settled, then one event of another key.
//!
//! The backlog is published first (fsync = never, dedup off), then the peak
//! RSS is reset, then one fetch asks for the ready event. Prints how long
//! that fetch took, what the group holds as its budget counts it, and the
//! process's RSS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a measuring tool"
)]

use std::time::Instant;

use bytes::Bytes;
use herald_backend::{
    Backend, Events, FetchRequest, Fsync, GroupMode, GroupSpec, Groups, TopicSpec, Topics,
};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_types::{Event, EventInput, GroupName, TopicName};

#[path = "support/bench.rs"]
mod bench;
use bench::{reset_peak_rss, rss_kib};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keyed = args.first().is_some_and(|mode| mode == "keyed");
    let events: u64 = args.get(1).map_or(100_000, |value| value.parse().unwrap());
    let size: usize = args.get(2).map_or(1_024, |value| value.parse().unwrap());
    let dir = bench::data_dir();
    bench::runtime().block_on(run(dir.path(), keyed, events, size));
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

async fn run(dir: &std::path::Path, keyed: bool, total: u64, size: usize) {
    let backend = EmbeddedBackend::open(EmbeddedOptions::new(dir), LogMetrics::new())
        .await
        .unwrap();
    let topic: TopicName = "backlog".parse().unwrap();
    let group: GroupName = "workers".parse().unwrap();
    let mut spec = TopicSpec::new(topic.clone());
    spec.fsync = Fsync::Never;
    spec.dedup_window_ms = 0;
    backend.create_topic(spec).await.unwrap();
    let mut group_spec = GroupSpec::new(if keyed {
        GroupMode::Keyed
    } else {
        GroupMode::Queue
    });
    group_spec.ack_wait_ms = 3_600_000;
    backend.put_group(&topic, &group, group_spec).await.unwrap();
    let payload = Bytes::from(vec![b'x'; size]);
    let event = |id: String, key: &str| {
        let mut event = Event::new(id, "/bench", "bench");
        event.data = Some(payload.clone());
        event.key = Some(key.to_owned());
        if !keyed {
            event.deliver_at = Some(now_ms() + 86_400_000);
        }
        EventInput {
            event,
            partition: None,
        }
    };
    let started = Instant::now();
    for first in (0..total).step_by(1_000) {
        let batch = (first..(first + 1_000).min(total))
            .map(|index| event(format!("backlog-{index}"), "stuck"))
            .collect();
        backend.publish(&topic, batch).await.unwrap();
    }
    let published = started.elapsed();
    if keyed {
        // The head of the stuck key goes out and is never settled.
        let request = FetchRequest {
            member: "stuck".into(),
            max: 1,
            wait_ms: 10_000,
        };
        let head = backend.fetch(&topic, &group, request).await.unwrap();
        assert_eq!(head.deliveries.len(), 1);
    }
    let mut ready = event("ready".into(), "other");
    ready.event.deliver_at = None;
    backend.publish(&topic, vec![ready]).await.unwrap();
    let rss_before = rss_kib("VmRSS");
    reset_peak_rss();
    let started = Instant::now();
    let request = FetchRequest {
        member: "w".into(),
        max: 10,
        wait_ms: 60_000,
    };
    let fetched = backend.fetch(&topic, &group, request).await.unwrap();
    let took = started.elapsed();
    let ids: Vec<&str> = fetched
        .deliveries
        .iter()
        .map(|delivery| delivery.event.event.id.as_str())
        .collect();
    assert_eq!(ids, ["ready"]);
    let memory = backend.group_memory(&topic, &group).unwrap().unwrap();
    println!(
        "{} backlog of {total} x {size} B (published in {:.1} s): the ready event came in {:.0} ms",
        if keyed { "stuck-key" } else { "day-delayed" },
        published.as_secs_f64(),
        took.as_secs_f64() * 1e3
    );
    println!(
        "group holds {} pending entries: bookkeeping {:.1} MiB, bodies held {:.1} MiB, read-ahead {:.1} MiB",
        memory.entries,
        memory.pending_bytes as f64 / 1_048_576.0,
        memory.held_bytes as f64 / 1_048_576.0,
        memory.read_ahead_bytes as f64 / 1_048_576.0
    );
    println!(
        "RSS before the fetch {} MiB, peak during it {} MiB, after {} MiB",
        rss_before / 1024,
        rss_kib("VmHWM") / 1024,
        rss_kib("VmRSS") / 1024
    );
    backend.shutdown().await.unwrap();
}
