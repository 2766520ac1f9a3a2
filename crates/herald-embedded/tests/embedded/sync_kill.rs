//! `kill -9` of a process whose queue group acks with `ack_durability =
//! sync` and rejects events into dead letters copied to a dead-letter
//! topic. The child is this test binary, re-run on the ignored test
//! `sync_kill::child`, with the background flush slowed to an hour so that
//! only what a call persisted itself can survive; it prints:
//!
//! - `PUB <id>`: a publish of `<id>` returned (durable: `fsync = always`);
//! - `ACK <id>`: a sync ack of `<id>` returned (persisted);
//! - `REJ <id>`: a reject of `<id>` returned (its dead letter recorded).
//!
//! After three kills at random moments the parent reopens the backend and
//! checks: no confirmed ack comes back; every rejected event is a dead
//! letter and never comes back; no published event is lost (each is acked,
//! a dead letter, or delivered again); and the dead-letter topic ends up
//! with exactly one copy of each dead letter (copies still pending at a
//! kill are published after the restart; one published twice is
//! deduplicated).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::time::Duration;

use herald_backend::{
    AckDurability, Backend, Events, FetchRequest, Fsync, GroupMode, GroupSpec, Groups, TopicSpec,
    Topics,
};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_types::{Event, EventInput, ExtensionValue, GroupName, TopicName};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILD_DIR: &str = "HERALD_EMBEDDED_SYNC_KILL_DIR";
const CHILD_CYCLE: &str = "HERALD_EMBEDDED_SYNC_KILL_CYCLE";

fn jobs() -> TopicName {
    "jobs".parse().unwrap()
}

fn dead() -> TopicName {
    "jobs-dead".parse().unwrap()
}

fn workers() -> GroupName {
    "workers".parse().unwrap()
}

async fn open(dir: &std::path::Path) -> EmbeddedBackend {
    let options = EmbeddedOptions {
        // Only what a call persists itself survives a kill.
        flush_interval: Duration::from_secs(3_600),
        ..EmbeddedOptions::new(dir)
    };
    EmbeddedBackend::open(options, LogMetrics::new())
        .await
        .unwrap()
}

#[test]
fn given_sync_acks_and_rejects_when_killed_should_never_redeliver_a_confirmed_ack_nor_lose_a_dead_letter()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let (mut published, mut acked, mut rejected) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for cycle in 0..3 {
        let kill_after = rng.random_range(60..400);
        let cycle_text = cycle.to_string();
        let mut child = crate::spawn_child(
            "sync_kill::child",
            &[
                (CHILD_DIR, dir.path().as_os_str()),
                (CHILD_CYCLE, cycle_text.as_ref()),
            ],
        );
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut lines = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            let (kind, id) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match kind {
                "PUB" => published.insert(id.to_owned()),
                "ACK" => acked.insert(id.to_owned()),
                "REJ" => rejected.insert(id.to_owned()),
                _ => continue,
            };
            lines += 1;
            if lines == kill_after {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(lines, kill_after, "the child stopped before it was killed");
    }
    assert!(!acked.is_empty() && !rejected.is_empty());

    crate::runtime().block_on(async {
        let backend = open(dir.path()).await;
        crate::release_children(&backend, &jobs(), &workers(), 3).await;
        let delivered = crate::drain_acking(&backend, &jobs(), &workers()).await;
        let returned: Vec<&String> = delivered.intersection(&acked).collect();
        assert!(returned.is_empty(), "confirmed sync acks came back: {returned:?}");
        let letters: BTreeSet<String> = backend
            .dead_letters(&jobs(), &workers(), 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|letter| letter.event.map(|event| event.event.id))
            .collect();
        let missing: Vec<&String> = rejected.difference(&letters).collect();
        assert!(missing.is_empty(), "confirmed rejects lost their dead letter: {missing:?}");
        let back: Vec<&String> = delivered.intersection(&rejected).collect();
        assert!(back.is_empty(), "rejected events came back: {back:?}");
        let lost: Vec<&String> = published
            .iter()
            .filter(|id| !acked.contains(*id) && !letters.contains(*id) && !delivered.contains(*id))
            .collect();
        assert!(lost.is_empty(), "published events lost: {lost:?}");
        // Every dead letter gets exactly one copy (pending ones go out after
        // the restart).
        let want = letters.len() as u64;
        let end = backend
            .wait_for(&dead(), 0, want, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(end >= want, "{end} copies for {want} dead letters");
        let copies = backend.read(&dead(), 0, 0, 100_000).await.unwrap().events;
        let mut per_original: BTreeMap<String, usize> = BTreeMap::new();
        for copy in &copies {
            if let Some(ExtensionValue::String(original)) = copy.event.extensions.get("dlid") {
                *per_original.entry(original.clone()).or_default() += 1;
            }
        }
        let copied: BTreeSet<String> = per_original.keys().cloned().collect();
        assert_eq!(copied, letters, "copies and dead letters differ");
        let doubled: Vec<_> = per_original.iter().filter(|(_, count)| **count > 1).collect();
        assert!(doubled.is_empty(), "copies published twice: {doubled:?}");
        println!(
            "kill -9 x3 (sync acks): {} published, {} acked, {} rejected, {} redelivered, {} copies",
            published.len(),
            acked.len(),
            rejected.len(),
            delivered.len(),
            copies.len()
        );
        backend.shutdown().await.unwrap();
    });
}

/// The child: publishes, sync-acks and rejects until killed.
#[test]
#[ignore = "run by the sync kill -9 test as a child process"]
fn child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let cycle: u64 = std::env::var(CHILD_CYCLE).unwrap().parse().unwrap();
    crate::runtime().block_on(async move {
        let backend = open(std::path::Path::new(&dir)).await;
        if backend.describe_topic(&jobs()).await.is_err() {
            backend.create_topic(TopicSpec::new(dead())).await.unwrap();
            let mut spec = TopicSpec::new(jobs());
            spec.partitions = 2;
            spec.fsync = Fsync::Always;
            spec.dead_letter_topic = Some(dead());
            backend.create_topic(spec).await.unwrap();
            let mut group = GroupSpec::new(GroupMode::Queue);
            group.ack_wait_ms = 60_000;
            group.ack_durability = AckDurability::Sync;
            backend.put_group(&jobs(), &workers(), group).await.unwrap();
        }
        let mut rng = StdRng::seed_from_u64(cycle);
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for round in 0u64.. {
            let events: Vec<EventInput> = (0..10)
                .map(|index| EventInput {
                    event: Event::new(format!("c{cycle}-{round}-{index}"), "/kill", "job"),
                    partition: None,
                })
                .collect();
            for result in backend.publish(&jobs(), events).await.unwrap() {
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
                let ids = [delivery.delivery_id];
                let id = delivery.event.event.id;
                let roll: f64 = rng.random();
                if roll < 0.6 {
                    // The group's ack_durability makes it sync.
                    let outcome = backend
                        .ack(&jobs(), &workers(), &ids, AckDurability::Async)
                        .await
                        .unwrap();
                    if outcome.acked == 1 {
                        writeln!(out, "ACK {id}").unwrap();
                    }
                } else if roll < 0.75 {
                    let outcome = backend
                        .reject(&jobs(), &workers(), &ids, "bad", AckDurability::Async)
                        .await
                        .unwrap();
                    if outcome.acked == 1 {
                        writeln!(out, "REJ {id}").unwrap();
                    }
                }
                out.flush().unwrap();
            }
        }
    });
}
