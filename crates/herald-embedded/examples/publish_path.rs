//! The cost of `Events::publish` in process, with the dedup window on (the
//! default 2 minutes): `tasks` tasks each publish `events` one-event
//! batches with fresh ids, one after the other, and the tool reports the
//! wall time per publish and the publishes per second.
//!
//! `cargo run --release -p herald-embedded --example publish_path -- [events=200000] [tasks=1] [fsync=never|always] [partitions=1]`
//!
//! With `fsync = never` an idle partition appends on the caller's thread, so
//! a serial run measures the publish path itself (validation, dedup
//! reservation and record, routing, encoding) plus one in-memory append.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a measuring tool"
)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_backend::{Backend, Events, Fsync, TopicSpec, Topics};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_types::{Event, EventInput, TopicName};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let events: usize = args.first().map_or(200_000, |value| value.parse().unwrap());
    let tasks: usize = args.get(1).map_or(1, |value| value.parse().unwrap());
    let fsync = match args.get(2).map_or("never", String::as_str) {
        "always" => Fsync::Always,
        _ => Fsync::Never,
    };
    let partitions: u32 = args.get(3).map_or(1, |value| value.parse().unwrap());
    let base = std::env::var_os("HERALD_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let backend = Arc::new(
            EmbeddedBackend::open(EmbeddedOptions::new(dir.path()), LogMetrics::new())
                .await
                .unwrap(),
        );
        let topic: TopicName = "bench".parse().unwrap();
        let mut spec = TopicSpec::new(topic.clone());
        spec.fsync = fsync;
        spec.partitions = partitions;
        backend.create_topic(spec).await.unwrap();
        let payload = Bytes::from(vec![b'x'; 128]);
        let started = Instant::now();
        let workers: Vec<_> = (0..tasks)
            .map(|task| {
                let (backend, topic, payload) =
                    (Arc::clone(&backend), topic.clone(), payload.clone());
                tokio::spawn(async move {
                    for index in 0..events {
                        let mut event = Event::new(format!("{task}-{index}"), "/bench", "bench");
                        event.data = Some(payload.clone());
                        let input = EventInput {
                            event,
                            partition: None,
                        };
                        backend.publish(&topic, vec![input]).await.unwrap();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        let elapsed = started.elapsed();
        let total = (events * tasks) as f64;
        println!(
            "{} publishes by {tasks} task(s), fsync {fsync:?}: {:.2} µs per publish (wall), {:.0} publishes/s",
            events * tasks,
            elapsed.as_secs_f64() * 1e6 / (events as f64),
            total / elapsed.as_secs_f64()
        );
        backend.shutdown().await.unwrap();
    });
}
