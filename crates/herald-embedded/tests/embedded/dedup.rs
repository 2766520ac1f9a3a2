//! What an open reads back from the logs. The dedup window across
//! restarts, now that its ids go to disk in runs (`dedup_runs.rs`) and an
//! open reads back only the log past the last one: a `kill -9` while
//! publishing, and runs naming positions a log lost to power loss. And the
//! stream index's checkpoints, which follow logs that only take plain
//! publishes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use herald_backend::{Backend, Events, Fsync, TopicSpec, Topics};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::{LogEnv, LogMetrics, MemFs, Tail};
use herald_types::{Event, EventInput, TopicName};

const CHILD_DIR: &str = "HERALD_EMBEDDED_DEDUP_KILL_DIR";
const CHILD_CYCLE: &str = "HERALD_EMBEDDED_DEDUP_KILL_CYCLE";
/// Small runs, so that a few thousand ids make many of them.
const RUN_IDS: usize = 200;

fn topic() -> TopicName {
    "orders".parse().unwrap()
}

fn input(id: &str) -> EventInput {
    EventInput {
        event: Event::new(id, "/dedup", "t"),
        partition: None,
    }
}

fn options(dir: &Path) -> EmbeddedOptions {
    EmbeddedOptions {
        dedup_run_ids: RUN_IDS,
        ..EmbeddedOptions::new(dir)
    }
}

fn runs_on_disk(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("topics/orders/dedup"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("run-"))
                .count()
        })
        .unwrap_or(0)
}

/// Three `kill -9`s of a process publishing batches of new ids (and some
/// ids again); after each, every id a publish acknowledged is answered as a
/// duplicate at the position first reported, whether it sits in a run
/// written before the kill or in the log's tail past the last run.
#[test]
fn given_process_killed_while_publishing_when_reopened_should_answer_every_acknowledged_id_as_a_duplicate()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    for cycle in 0..3u32 {
        let cycle_text = cycle.to_string();
        let mut child = crate::spawn_child(
            "dedup::child",
            &[
                (CHILD_DIR, dir.path().as_os_str()),
                (CHILD_CYCLE, cycle_text.as_ref()),
            ],
        );
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let kill_after = 1_500 + 700 * cycle as usize;
        let mut lines = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            let mut words = line.split_whitespace();
            if words.next() == Some("PUB") {
                let id = words.next().unwrap().to_owned();
                let partition = words.next().unwrap().parse().unwrap();
                let offset = words.next().unwrap().parse().unwrap();
                let first = *acknowledged
                    .entry(id.clone())
                    .or_insert((partition, offset));
                assert_eq!(
                    first,
                    (partition, offset),
                    "{id} was acknowledged at two positions"
                );
                lines += 1;
            }
            if lines >= kill_after {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(
        runs_on_disk(dir.path()) > 1,
        "precondition: runs were written before the kills"
    );
    crate::runtime().block_on(async {
        let backend = EmbeddedBackend::open(options(dir.path()), LogMetrics::new())
            .await
            .unwrap();
        let ids: Vec<String> = acknowledged.keys().cloned().collect();
        for chunk in ids.chunks(500) {
            let results = backend
                .publish(&topic(), chunk.iter().map(|id| input(id)).collect())
                .await
                .unwrap();
            for result in results {
                assert!(result.duplicate, "{} was appended again", result.id);
                assert_eq!(
                    (result.partition, result.offset),
                    acknowledged[&result.id],
                    "{} answered at another position",
                    result.id
                );
            }
        }
        // Nothing was appended twice: the log holds each id once, where
        // its publish reported it.
        let mut stored: BTreeMap<String, (u32, u64)> = BTreeMap::new();
        for partition in 0..3u32 {
            let mut from = 0;
            loop {
                let read = backend
                    .read(&topic(), partition, from, 1_000)
                    .await
                    .unwrap();
                if read.events.is_empty() {
                    break;
                }
                for event in read.events {
                    let id = event.event.id.clone();
                    let again = stored.insert(id.clone(), (event.partition, event.offset));
                    assert!(again.is_none(), "{id} is in the log twice");
                }
                from = read.next_offset;
            }
        }
        for (id, position) in &acknowledged {
            assert_eq!(
                stored.get(id),
                Some(position),
                "{id} is not where it was acknowledged"
            );
        }
        backend.shutdown().await.unwrap();
    });
}

/// The child of the kill test: four tasks at once publish batches of 20 new
/// ids (and every tenth batch, ten ids of its previous batch again), so
/// runs are taken while other publishes are appending, to a 3-partition
/// `fsync = always` topic, printing `PUB <id> <partition> <offset>` for
/// each acknowledged one, until killed.
#[test]
#[ignore = "run as a child process by the kill test"]
fn child() {
    let dir = std::env::var_os(CHILD_DIR).expect("child of the kill test");
    let cycle: u64 = std::env::var(CHILD_CYCLE).unwrap().parse().unwrap();
    crate::runtime().block_on(async move {
        let backend = EmbeddedBackend::open(options(Path::new(&dir)), LogMetrics::new())
            .await
            .unwrap();
        let mut spec = TopicSpec::new(topic());
        spec.partitions = 3;
        spec.fsync = Fsync::Always;
        let _ = backend.create_topic(spec).await;
        let backend = Arc::new(backend);
        let publishers = (0..4u64).map(|task| {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move {
                let mut previous: Vec<String> = Vec::new();
                for batch in 0u64.. {
                    let mut ids: Vec<String> = (0..20)
                        .map(|index| format!("c{cycle}-t{task}-b{batch}-e{index}"))
                        .collect();
                    if batch % 10 == 9 {
                        ids.extend(previous.iter().take(10).cloned());
                    }
                    let results = backend
                        .publish(&topic(), ids.iter().map(|id| input(id)).collect())
                        .await
                        .unwrap();
                    let mut out = String::new();
                    for result in &results {
                        out.push_str(&format!(
                            "PUB {} {} {}\n",
                            result.id, result.partition, result.offset
                        ));
                    }
                    print!("{out}");
                    previous = ids;
                }
            })
        });
        futures::future::join_all(publishers).await;
    });
}

/// Runs written before power loss name positions the log no longer holds
/// (`fsync = never`: its unsynced tail is gone, the runs were synced). An
/// id of the lost tail is appended again when re-published, not reported
/// at a position now holding another event; one the log kept is still a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_runs_naming_a_lost_tail_when_the_ids_are_republished_should_append_the_lost_ones_again()
 {
    let dir = tempfile::tempdir().unwrap();
    let fs = MemFs::new();
    let open = |fs: &MemFs| {
        let env = LogEnv {
            fs: Arc::new(fs.clone()),
            ..LogEnv::default()
        };
        EmbeddedBackend::open_with(options(dir.path()), env)
    };
    let backend = open(&fs).await.unwrap();
    let mut spec = TopicSpec::new(topic());
    spec.fsync = Fsync::Never;
    backend.create_topic(spec).await.unwrap();
    let ids: Vec<String> = (0..10).map(|index| format!("old-{index}")).collect();
    backend
        .publish(&topic(), ids.iter().map(|id| input(id)).collect())
        .await
        .unwrap();
    // Power loss: the log's unsynced bytes are gone; the run the shutdown
    // writes (real files, synced) names all ten.
    fs.crash_now();
    let _ = backend.shutdown().await;
    drop(backend);
    assert!(
        runs_on_disk(dir.path()) >= 1,
        "precondition: a run was written"
    );
    let image = fs.crash_image(Tail::Lost);
    let backend = open(&image).await.unwrap();
    let end = backend
        .describe_topic(&topic())
        .await
        .unwrap()
        .partition_info[0]
        .end_offset;
    assert!(end < 10, "precondition: the log lost its tail (end {end})");
    let results = backend
        .publish(&topic(), ids.iter().map(|id| input(id)).collect())
        .await
        .unwrap();
    for (index, result) in results.iter().enumerate() {
        if (index as u64) < end {
            assert!(result.duplicate, "{} was kept by the log", result.id);
            assert_eq!(result.offset, index as u64);
        } else {
            assert!(!result.duplicate, "{} was lost with the tail", result.id);
        }
    }
    let appended: Vec<u64> = results
        .iter()
        .filter(|result| !result.duplicate)
        .map(|result| result.offset)
        .collect();
    assert_eq!(appended, (end..10).collect::<Vec<_>>());
    backend.shutdown().await.unwrap();
}

/// A topic with only plain publishes (no stream append to move its stream
/// index checkpoints) still has them follow its logs, within about a
/// second, so the open after a crash re-indexes about a second of log, not
/// everything since the last clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_only_plain_publishes_when_the_logs_grow_should_move_the_stream_checkpoints_to_their_ends()
 {
    let dir = tempfile::tempdir().unwrap();
    let backend = EmbeddedBackend::open(EmbeddedOptions::new(dir.path()), LogMetrics::new())
        .await
        .unwrap();
    let mut spec = TopicSpec::new(topic());
    spec.partitions = 2;
    backend.create_topic(spec).await.unwrap();
    backend
        .publish(
            &topic(),
            (0..50)
                .map(|index| input(&format!("plain-{index}")))
                .collect(),
        )
        .await
        .unwrap();
    let ends: Vec<u64> = backend
        .describe_topic(&topic())
        .await
        .unwrap()
        .partition_info
        .iter()
        .map(|partition| partition.end_offset)
        .collect();
    assert_eq!(ends.iter().sum::<u64>(), 50);
    let wanted: Vec<(String, u32, u64)> = (0u32..)
        .zip(&ends)
        .map(|(partition, &end)| ("orders".to_owned(), partition, end))
        .collect();
    let started = std::time::Instant::now();
    loop {
        let mut checkpoints = backend.stream_checkpoints().await.unwrap();
        checkpoints.sort();
        if checkpoints == wanted {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the checkpoints stayed at {checkpoints:?}; the logs end at {ends:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    backend.shutdown().await.unwrap();
}
