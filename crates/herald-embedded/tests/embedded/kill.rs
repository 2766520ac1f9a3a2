//! `kill -9` of a process that publishes and consumes through the embedded
//! backend. The child is this test binary, re-run on the ignored test
//! `kill::child`; it prints what was acknowledged to it:
//!
//! - `PUB <id>`: a publish of `<id>` returned (durable: `fsync = always`);
//! - `ACK <id>`: an ack of `<id>` returned (applied in memory);
//! - `SETTLED`: group state was persisted; every `ACK` above is durable.
//!
//! After three kills at random moments the parent reopens the backend and
//! checks: every published event is in the topic exactly once; draining the
//! group delivers every event never acked; no event acked before a
//! `SETTLED` line comes back. (An ack after the last `SETTLED` of a run may
//! come back once: that is the documented flush window.)

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use herald_backend::{
    AckDurability, Backend, Events, FetchRequest, Fsync, GroupMode, GroupSpec, Groups, TopicSpec,
    Topics,
};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_types::{Event, EventInput, GroupName, TopicName};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILD_DIR: &str = "HERALD_EMBEDDED_KILL_DIR";
const CHILD_CYCLE: &str = "HERALD_EMBEDDED_KILL_CYCLE";

fn jobs() -> TopicName {
    "jobs".parse().unwrap()
}

fn workers() -> GroupName {
    "workers".parse().unwrap()
}

#[test]
fn given_process_killed_mid_workload_when_reopened_should_lose_no_event_and_honour_settled_acks() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut published = BTreeSet::new();
    let mut acked = BTreeSet::new();
    let mut settled = BTreeSet::new();
    for cycle in 0..3 {
        let kill_after = rng.random_range(60..400);
        let cycle_text = cycle.to_string();
        let mut child = crate::spawn_child(
            "kill::child",
            &[
                (CHILD_DIR, dir.path().as_os_str()),
                (CHILD_CYCLE, cycle_text.as_ref()),
            ],
        );
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut acked_since_settled = Vec::new();
        let mut lines = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("PUB ") {
                published.insert(id.to_owned());
            } else if let Some(id) = line.strip_prefix("ACK ") {
                acked.insert(id.to_owned());
                acked_since_settled.push(id.to_owned());
            } else if line == "SETTLED" {
                settled.extend(acked_since_settled.drain(..));
            } else {
                continue;
            }
            lines += 1;
            if lines == kill_after {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(lines, kill_after, "the child stopped before it was killed");
    }
    assert!(!settled.is_empty() && published.len() > acked.len());

    crate::runtime().block_on(async {
        let backend = EmbeddedBackend::open(EmbeddedOptions::new(dir.path()), LogMetrics::new())
            .await
            .unwrap();
        // Every published event is there, exactly once.
        let mut stored = Vec::new();
        for partition in 0..2 {
            let mut from = 0;
            loop {
                let read = backend.read(&jobs(), partition, from, 1_000).await.unwrap();
                if read.events.is_empty() {
                    break;
                }
                from = read.next_offset;
                stored.extend(read.events.into_iter().map(|event| event.event.id));
            }
        }
        let unique: BTreeSet<String> = stored.iter().cloned().collect();
        assert_eq!(unique.len(), stored.len(), "an event is stored twice");
        assert!(
            published.is_subset(&unique),
            "published events lost: {:?}",
            published.difference(&unique).collect::<Vec<_>>()
        );

        crate::release_children(&backend, &jobs(), &workers(), 3).await;
        // Drain the group.
        let delivered = crate::drain_acking(&backend, &jobs(), &workers()).await;
        let never_acked: BTreeSet<String> = unique.difference(&acked).cloned().collect();
        assert!(
            never_acked.is_subset(&delivered),
            "unacked events not redelivered: {:?}",
            never_acked.difference(&delivered).collect::<Vec<_>>()
        );
        let returned_settled: Vec<&String> = delivered.intersection(&settled).collect();
        assert!(
            returned_settled.is_empty(),
            "settled acks were not honoured: {returned_settled:?}"
        );
        println!(
            "kill -9 x3: {} published, {} acked ({} settled), {} redelivered after restart",
            published.len(),
            acked.len(),
            settled.len(),
            delivered.len()
        );
        backend.shutdown().await.unwrap();
    });
}

/// The child: publishes and consumes until killed.
#[test]
#[ignore = "run by the kill -9 test as a child process"]
fn child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let cycle: u64 = std::env::var(CHILD_CYCLE).unwrap().parse().unwrap();
    crate::runtime().block_on(async move {
        let backend = EmbeddedBackend::open(EmbeddedOptions::new(dir), LogMetrics::new())
            .await
            .unwrap();
        if backend.describe_topic(&jobs()).await.is_err() {
            let mut spec = TopicSpec::new(jobs());
            spec.partitions = 2;
            spec.fsync = Fsync::Always;
            backend.create_topic(spec).await.unwrap();
            let mut group = GroupSpec::new(GroupMode::Queue);
            group.ack_wait_ms = 60_000;
            backend.put_group(&jobs(), &workers(), group).await.unwrap();
        }
        let mut rng = StdRng::seed_from_u64(cycle);
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for round in 0u64.. {
            let events: Vec<EventInput> = (0..10)
                .map(|index| {
                    let mut event = Event::new(format!("c{cycle}-{round}-{index}"), "/kill", "job");
                    event.key = Some(format!("k{index}"));
                    EventInput {
                        event,
                        partition: None,
                    }
                })
                .collect();
            let results = backend.publish(&jobs(), events).await.unwrap();
            for result in results {
                writeln!(out, "PUB {}", result.id).unwrap();
            }
            out.flush().unwrap();
            let request = FetchRequest {
                member: format!("child-{cycle}"),
                max: 8,
                wait_ms: 0,
            };
            let deliveries = backend
                .fetch(&jobs(), &workers(), request)
                .await
                .unwrap()
                .deliveries;
            for delivery in deliveries {
                if rng.random_bool(0.7) {
                    backend
                        .ack(
                            &jobs(),
                            &workers(),
                            &[delivery.delivery_id],
                            AckDurability::Async,
                        )
                        .await
                        .unwrap();
                    writeln!(out, "ACK {}", delivery.event.event.id).unwrap();
                }
            }
            out.flush().unwrap();
            if round % 4 == 3 {
                backend.flush_group_state().await.unwrap();
                writeln!(out, "SETTLED").unwrap();
                out.flush().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}
