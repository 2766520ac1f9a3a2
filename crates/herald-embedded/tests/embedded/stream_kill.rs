//! `kill -9` of a process appending to many streams. The child is this test
//! binary, re-run on the ignored test `stream_kill::child`; eight tasks
//! append single events and small batches to random streams of a topic with
//! `fsync = always`, and print each acknowledged event:
//!
//! - `APP <stream> <version> <event id>`.
//!
//! After three kills at random moments the parent reopens the backend and
//! checks: every acknowledged event is readable at its version; the index
//! agrees with the log (per stream, the topic's events in offset order are
//! exactly the stream's events in version order, versions dense from 0, and
//! the metadata's version is the last); and appends continue at the next
//! version.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use herald_backend::{
    Backend, Direction, Events, ExpectedVersion, Fsync, Streams, TopicSpec, Topics,
};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_types::{Event, EventInput, StreamId, TopicName};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILD_DIR: &str = "HERALD_STREAM_KILL_DIR";
const CHILD_CYCLE: &str = "HERALD_STREAM_KILL_CYCLE";
const STREAMS: u32 = 300;
const PARTITIONS: u32 = 3;

fn ledger() -> TopicName {
    "ledger".parse().unwrap()
}

#[test]
fn given_appends_to_many_streams_when_killed_and_reopened_should_keep_every_acked_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    // (stream, version) → event id, as acknowledged.
    let mut acked: BTreeMap<(String, u64), String> = BTreeMap::new();
    for cycle in 0..3 {
        let kill_after = rng.random_range(100..800);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "stream_kill::child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_CYCLE, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut lines = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("APP ") else {
                continue;
            };
            let mut fields = rest.split(' ');
            let (stream, version, id) = (
                fields.next().unwrap().to_owned(),
                fields.next().unwrap().parse::<u64>().unwrap(),
                fields.next().unwrap().to_owned(),
            );
            let previous = acked.insert((stream.clone(), version), id);
            assert!(
                previous.is_none(),
                "{stream} version {version} acknowledged twice"
            );
            lines += 1;
            if lines == kill_after {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(lines, kill_after, "the child stopped before it was killed");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let backend = EmbeddedBackend::open(EmbeddedOptions::new(dir.path()), LogMetrics::new())
            .await
            .unwrap();
        // The log, per stream, in offset order.
        let mut in_log: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for partition in 0..PARTITIONS {
            let mut from = 0;
            loop {
                let read = backend
                    .read(&ledger(), partition, from, 1_000)
                    .await
                    .unwrap();
                if read.events.is_empty() {
                    break;
                }
                from = read.next_offset;
                for event in read.events {
                    let key = event.event.key.clone().unwrap();
                    in_log.entry(key).or_default().push(event.event.id);
                }
            }
        }
        let mut checked = 0;
        for (stream, log_ids) in &in_log {
            let id: StreamId = stream.parse().unwrap();
            let mut indexed = Vec::new();
            let mut from = 0;
            loop {
                let slice = backend
                    .read_stream(&ledger(), &id, from, Direction::Forward, 100)
                    .await
                    .unwrap();
                indexed.extend(slice.events);
                match slice.next_version {
                    Some(next) => from = next,
                    None => break,
                }
            }
            let versions: Vec<u64> = indexed.iter().map(|(version, _)| *version).collect();
            assert_eq!(
                versions,
                (0..log_ids.len() as u64).collect::<Vec<_>>(),
                "{stream}: versions not dense"
            );
            let ids: Vec<&String> = indexed.iter().map(|(_, event)| &event.event.id).collect();
            assert_eq!(
                ids,
                log_ids.iter().collect::<Vec<_>>(),
                "{stream}: the index disagrees with the log"
            );
            let metadata = backend.stream_metadata(&ledger(), &id).await.unwrap();
            assert_eq!(metadata.version, log_ids.len() as u64 - 1);
            for ((acked_stream, version), acked_id) in
                acked.range((stream.clone(), 0)..=(stream.clone(), u64::MAX))
            {
                assert_eq!(acked_stream, stream);
                assert_eq!(
                    log_ids.get(*version as usize),
                    Some(acked_id),
                    "{stream} version {version}: acknowledged event lost or moved"
                );
                checked += 1;
            }
            let next = backend
                .append(
                    &ledger(),
                    &id,
                    vec![input("after-restart")],
                    ExpectedVersion::Exact(metadata.version),
                )
                .await
                .unwrap();
            assert_eq!(next.first_version, metadata.version + 1);
        }
        assert_eq!(
            checked,
            acked.len(),
            "acknowledged appends to streams missing from the log"
        );
        println!(
            "stream kill -9 x3: {} acknowledged events over {} streams, all at their versions",
            acked.len(),
            in_log.len()
        );
        backend.shutdown().await.unwrap();
    });
}

fn input(id: &str) -> EventInput {
    EventInput {
        event: Event::new(id, "/stream-kill", "entry"),
        partition: None,
    }
}

/// The child: appends to random streams until killed.
#[test]
#[ignore = "run by the stream kill -9 test as a child process"]
fn child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let cycle: u64 = std::env::var(CHILD_CYCLE).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let backend = Arc::new(
            EmbeddedBackend::open(EmbeddedOptions::new(dir), LogMetrics::new())
                .await
                .unwrap(),
        );
        if backend.describe_topic(&ledger()).await.is_err() {
            let mut spec = TopicSpec::new(ledger());
            spec.partitions = PARTITIONS;
            spec.fsync = Fsync::Always;
            backend.create_topic(spec).await.unwrap();
        }
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut writers = Vec::new();
        for writer in 0..8u64 {
            let (backend, out) = (Arc::clone(&backend), Arc::clone(&out));
            writers.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(cycle * 100 + writer);
                for round in 0u64.. {
                    let stream = format!("s{}", rng.random_range(0..STREAMS));
                    let id: StreamId = stream.parse().unwrap();
                    let count = rng.random_range(1..=3);
                    let events = (0..count)
                        .map(|index| input(&format!("c{cycle}-w{writer}-{round}-{index}")))
                        .collect::<Vec<_>>();
                    let ids: Vec<String> =
                        events.iter().map(|input| input.event.id.clone()).collect();
                    let result = backend
                        .append(&ledger(), &id, events, ExpectedVersion::Any)
                        .await
                        .unwrap();
                    let mut out = out.lock().unwrap();
                    for (version, event_id) in (result.first_version..).zip(ids) {
                        writeln!(out, "APP {stream} {version} {event_id}").unwrap();
                    }
                    out.flush().unwrap();
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
    });
}
