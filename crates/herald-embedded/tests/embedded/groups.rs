//! Consumer groups through the backend API, beyond the conformance suite:
//! group state that points past a log which lost its tail (the `MemFs`
//! crash seam), multi-step calls abandoned by their caller at every await
//! point (the future dropped after N polls), metadata writes that fail
//! (the `MetaFaults` seam), and sync acks sharing transactions.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use herald_backend::{
    AckDurability, Backend, CommitRequest, Events, FetchRequest, Fsync, GroupMode, GroupSpec,
    Groups, PartitionOffset, TopicSpec, Topics,
};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions, GroupMetrics, MetaFaults};
use herald_log::{LogEnv, MemFs, Tail};
use herald_types::{Event, EventInput, GroupName, TopicName};

fn name<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().unwrap()
}

fn input(id: &str) -> EventInput {
    EventInput {
        event: Event::new(id, "/groups", "t"),
        partition: None,
    }
}

fn fetch(member: &str, max: u32, wait_ms: u64) -> FetchRequest {
    FetchRequest {
        member: member.into(),
        max,
        wait_ms,
    }
}

async fn open_on(dir: &Path, fs: &MemFs, metrics: &Arc<GroupMetrics>) -> Arc<EmbeddedBackend> {
    let env = LogEnv {
        fs: Arc::new(fs.clone()),
        ..LogEnv::default()
    };
    let options = EmbeddedOptions {
        metrics: Arc::clone(metrics),
        ..EmbeddedOptions::new(dir)
    };
    Arc::new(EmbeddedBackend::open_with(options, env).await.unwrap())
}

/// Polls `future` at most `polls` times (each poll after the wake-up the
/// previous one waited for), then drops it: the caller went away at its
/// `polls`-th await point. Returns the output if it finished before.
async fn poll_then_drop<F: Future>(future: F, polls: usize) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut left = polls;
    std::future::poll_fn(|context| {
        if left == 0 {
            return Poll::Ready(None);
        }
        left -= 1;
        future.as_mut().poll(context).map(Some)
    })
    .await
}

/// Fetches up to `max` deliveries as member `w`; returns their ids.
async fn fetch_ids(
    backend: &dyn Backend,
    topic: &TopicName,
    group: &GroupName,
    max: u32,
) -> Vec<String> {
    let taken = backend
        .fetch(topic, group, fetch("w", max, 5_000))
        .await
        .unwrap();
    taken
        .deliveries
        .into_iter()
        .map(|delivery| delivery.delivery_id)
        .collect()
}

/// Fetches until nothing more comes within `quiet_ms`; returns event ids.
async fn drain(backend: &dyn Backend, topic: &TopicName, group: &GroupName) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let response = backend
            .fetch(topic, group, fetch("check", 100, 300))
            .await
            .unwrap();
        if response.deliveries.is_empty() {
            return ids;
        }
        ids.extend(
            response
                .deliveries
                .into_iter()
                .map(|delivery| delivery.event.event.id),
        );
    }
}

async fn dead_letter_ids(
    backend: &dyn Backend,
    topic: &TopicName,
    group: &GroupName,
) -> Vec<String> {
    let mut ids: Vec<String> = backend
        .dead_letters(topic, group, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|letter| letter.event.map(|event| event.event.id))
        .collect();
    ids.sort();
    ids
}

/// Point 3 of the hardening issue: after power loss an `fsync = never`
/// topic's log is shorter than its groups' state (which redb synced). The
/// groups are clamped to the log's end on restore, and the events the topic
/// takes next, at the reused offsets, are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_group_state_past_a_log_that_lost_its_tail_when_reopened_should_clamp_and_deliver_reused_offsets()
 {
    let dir = tempfile::tempdir().unwrap();
    let fs = MemFs::new();
    let metrics = GroupMetrics::new();
    let backend = open_on(dir.path(), &fs, &metrics).await;
    let topic: TopicName = name("volatile");
    let mut spec = TopicSpec::new(topic.clone());
    spec.fsync = Fsync::Never;
    backend.create_topic(spec).await.unwrap();
    let (queue, stream): (GroupName, GroupName) = (name("workers"), name("readers"));
    backend
        .put_group(&topic, &queue, GroupSpec::new(GroupMode::Queue))
        .await
        .unwrap();
    backend
        .put_group(&topic, &stream, GroupSpec::new(GroupMode::Stream))
        .await
        .unwrap();
    backend
        .publish(
            &topic,
            (0..10)
                .map(|index| input(&format!("old-{index}")))
                .collect(),
        )
        .await
        .unwrap();
    let taken = backend
        .fetch(&topic, &queue, fetch("w", 10, 5_000))
        .await
        .unwrap();
    assert_eq!(taken.deliveries.len(), 10);
    let ids: Vec<String> = taken
        .deliveries
        .iter()
        .map(|d| d.delivery_id.clone())
        .collect();
    assert_eq!(
        backend
            .ack(&topic, &queue, &ids, AckDurability::Async)
            .await
            .unwrap()
            .acked,
        10
    );
    let read = backend
        .fetch(&topic, &stream, fetch("r", 10, 5_000))
        .await
        .unwrap();
    assert_eq!(read.deliveries.len(), 10);
    backend
        .commit(
            &topic,
            &stream,
            CommitRequest {
                member: "r".into(),
                generation: read.generation.unwrap(),
                offsets: vec![PartitionOffset {
                    partition: 0,
                    offset: 10,
                }],
            },
        )
        .await
        .unwrap();
    backend.flush_group_state().await.unwrap();
    // Power loss: the log's unsynced bytes are gone; redb's state is not.
    fs.crash_now();
    let _ = backend.shutdown().await;
    drop(backend);
    let image = fs.crash_image(Tail::Lost);
    let backend = open_on(dir.path(), &image, &metrics).await;
    let end = backend.describe_topic(&topic).await.unwrap().partition_info[0].end_offset;
    assert!(end < 10, "precondition: the log lost its tail (end {end})");
    for group in [&queue, &stream] {
        let status = backend.group_status(&topic, group).await.unwrap();
        assert_eq!(
            status.partitions[0].committed, end,
            "group {group} was not clamped to the log's end"
        );
    }
    assert_eq!(metrics.state_clamped_total(), 2, "each clamp is counted");
    backend
        .publish(
            &topic,
            (0..3).map(|index| input(&format!("new-{index}"))).collect(),
        )
        .await
        .unwrap();
    for (group, member) in [(&queue, "w"), (&stream, "r")] {
        let again = backend
            .fetch(&topic, group, fetch(member, 10, 2_000))
            .await
            .unwrap();
        let ids: Vec<String> = again
            .deliveries
            .iter()
            .map(|d| d.event.event.id.clone())
            .collect();
        assert_eq!(
            ids,
            ["new-0", "new-1", "new-2"],
            "group {group} skipped events at reused offsets"
        );
    }
    backend.shutdown().await.unwrap();
}

/// A fresh backend with `count` events rejected into `workers`' dead
/// letters; the topic copies dead letters to `jobs-dead`.
async fn with_dead_letters(
    dir: &Path,
    count: usize,
) -> (Arc<EmbeddedBackend>, TopicName, GroupName) {
    let backend = Arc::new(
        EmbeddedBackend::open(EmbeddedOptions::new(dir), herald_log::LogMetrics::new())
            .await
            .unwrap(),
    );
    let dead: TopicName = name("jobs-dead");
    backend
        .create_topic(TopicSpec::new(dead.clone()))
        .await
        .unwrap();
    let topic: TopicName = name("jobs");
    let mut spec = TopicSpec::new(topic.clone());
    spec.dead_letter_topic = Some(dead);
    backend.create_topic(spec).await.unwrap();
    let group: GroupName = name("workers");
    backend
        .put_group(&topic, &group, GroupSpec::new(GroupMode::Queue))
        .await
        .unwrap();
    backend
        .publish(
            &topic,
            (0..count)
                .map(|index| input(&format!("e{index}")))
                .collect(),
        )
        .await
        .unwrap();
    (backend, topic, group)
}

async fn reopen(dir: &Path, backend: Arc<EmbeddedBackend>) -> Arc<EmbeddedBackend> {
    backend.shutdown().await.unwrap();
    drop(backend);
    Arc::new(
        EmbeddedBackend::open(EmbeddedOptions::new(dir), herald_log::LogMetrics::new())
            .await
            .unwrap(),
    )
}

/// Point 1: a redrive whose caller goes away at any await point leaves each
/// dead letter either still listed or delivered again — never neither —
/// both at once and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_redrive_dropped_at_each_await_point_should_keep_every_dead_letter_listed_or_redelivered()
 {
    for restart in [false, true] {
        for polls in 1.. {
            let dir = tempfile::tempdir().unwrap();
            let (backend, topic, group) = with_dead_letters(dir.path(), 3).await;
            let ids = fetch_ids(&*backend, &topic, &group, 3).await;
            assert_eq!(
                backend
                    .reject(&topic, &group, &ids, "bad", AckDurability::Async)
                    .await
                    .unwrap()
                    .acked,
                3
            );
            let finished = poll_then_drop(backend.redrive(&topic, &group, None), polls)
                .await
                .is_some();
            let backend = if restart {
                reopen(dir.path(), backend).await
            } else {
                // What the dropped call queued for the next flush is written.
                backend.flush_group_state().await.unwrap();
                backend
            };
            let mut seen = dead_letter_ids(&*backend, &topic, &group).await;
            seen.extend(drain(&*backend, &topic, &group).await);
            seen.sort();
            assert_eq!(
                seen,
                ["e0", "e1", "e2"],
                "redrive dropped after {polls} polls (restart: {restart}) lost or duplicated a dead letter"
            );
            backend.shutdown().await.unwrap();
            if finished {
                break;
            }
        }
    }
}

/// Point 4 with point 1: a reject whose caller goes away at any await point
/// either did nothing (the event is delivered again) or dead-lettered the
/// event, and then its copy reaches the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_reject_dropped_at_each_await_point_should_dead_letter_and_copy_or_keep_the_event()
{
    for polls in 1.. {
        let dir = tempfile::tempdir().unwrap();
        let (backend, topic, group) = with_dead_letters(dir.path(), 1).await;
        let ids = fetch_ids(&*backend, &topic, &group, 1).await;
        let finished = poll_then_drop(
            backend.reject(&topic, &group, &ids, "bad", AckDurability::Async),
            polls,
        )
        .await
        .is_some();
        backend.leave(&topic, &group, "w").await.unwrap();
        // What the dropped call queued for the next flush is written.
        backend.flush_group_state().await.unwrap();
        let listed = dead_letter_ids(&*backend, &topic, &group).await;
        if listed.is_empty() {
            assert_eq!(
                drain(&*backend, &topic, &group).await,
                ["e0"],
                "reject dropped after {polls} polls lost the event"
            );
        } else {
            assert_eq!(listed, ["e0"]);
            let dead: TopicName = name("jobs-dead");
            let end = backend
                .wait_for(&dead, 0, 1, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(
                end, 1,
                "reject dropped after {polls} polls never copied its dead letter"
            );
        }
        backend.shutdown().await.unwrap();
        if finished {
            break;
        }
    }
}

/// Point 1: a nack that dead-letters (the last delivery) or a leave, whose
/// caller goes away at any await point, leaves the event either still
/// deliverable or dead-lettered — never neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_burying_nack_or_a_leave_dropped_at_each_await_point_should_keep_the_event() {
    for action in ["nack", "leave"] {
        for polls in 1.. {
            let dir = tempfile::tempdir().unwrap();
            let (backend, topic, group) = with_dead_letters(dir.path(), 1).await;
            let mut spec = GroupSpec::new(GroupMode::Queue);
            spec.max_deliveries = 1;
            backend.put_group(&topic, &group, spec).await.unwrap();
            let ids = fetch_ids(&*backend, &topic, &group, 1).await;
            let finished = match action {
                "nack" => poll_then_drop(
                    backend.nack(&topic, &group, &ids, None, AckDurability::Async),
                    polls,
                )
                .await
                .is_some(),
                _ => poll_then_drop(backend.leave(&topic, &group, "w"), polls)
                    .await
                    .is_some(),
            };
            let backend = reopen(dir.path(), backend).await;
            backend.leave(&topic, &group, "w").await.unwrap();
            let mut seen = dead_letter_ids(&*backend, &topic, &group).await;
            seen.extend(drain(&*backend, &topic, &group).await);
            assert_eq!(
                seen,
                ["e0"],
                "{action} dropped after {polls} polls lost or duplicated the event"
            );
            backend.shutdown().await.unwrap();
            if finished {
                break;
            }
        }
    }
}

async fn open_with_faults(
    dir: &Path,
    faults: &Arc<MetaFaults>,
    metrics: &Arc<GroupMetrics>,
) -> Arc<EmbeddedBackend> {
    let options = EmbeddedOptions {
        meta_faults: Some(Arc::clone(faults)),
        metrics: Arc::clone(metrics),
        ..EmbeddedOptions::new(dir)
    };
    Arc::new(
        EmbeddedBackend::open(options, herald_log::LogMetrics::new())
            .await
            .unwrap(),
    )
}

/// Topic `jobs` with group `workers` (`spec`) holding an event per id, all
/// fetched by member `w`: the names and the delivery ids, in order.
async fn jobs_fetched(
    backend: &EmbeddedBackend,
    spec: GroupSpec,
    ids: &[String],
) -> (TopicName, GroupName, Vec<String>) {
    let topic: TopicName = name("jobs");
    backend
        .create_topic(TopicSpec::new(topic.clone()))
        .await
        .unwrap();
    let group: GroupName = name("workers");
    backend.put_group(&topic, &group, spec).await.unwrap();
    backend
        .publish(&topic, ids.iter().map(|id| input(id)).collect())
        .await
        .unwrap();
    let max = u32::try_from(ids.len()).unwrap();
    let delivery_ids = fetch_ids(backend, &topic, &group, max).await;
    assert_eq!(delivery_ids.len(), ids.len());
    (topic, group, delivery_ids)
}

/// Point 4: the write that would record a dead letter fails. The event is
/// not lost: the dead letter is recorded by a later flush (retried, not
/// only logged), together with the event leaving the group, and both
/// survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_failing_dead_letter_write_when_an_event_is_rejected_should_record_it_on_a_later_flush()
 {
    let dir = tempfile::tempdir().unwrap();
    let (faults, metrics) = (MetaFaults::new(), GroupMetrics::new());
    let backend = open_with_faults(dir.path(), &faults, &metrics).await;
    let (topic, group, ids) = jobs_fetched(
        &backend,
        GroupSpec::new(GroupMode::Queue),
        &["poison".to_owned()],
    )
    .await;
    faults.fail_next_writes(1);
    let outcome = backend
        .reject(&topic, &group, &ids, "bad", AckDurability::Async)
        .await
        .unwrap();
    assert_eq!(outcome.acked, 1);
    assert!(faults.failed() >= 1, "precondition: a write failed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dead_letter_ids(&*backend, &topic, &group).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead letter whose write failed was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.flush_failures_total() >= 1,
        "the failure is counted"
    );
    let backend = reopen(dir.path(), backend).await;
    assert_eq!(dead_letter_ids(&*backend, &topic, &group).await, ["poison"]);
    assert!(drain(&*backend, &topic, &group).await.is_empty());
    backend.shutdown().await.unwrap();
}

/// Point 6: group state that keeps failing to persist is counted, makes
/// the backend report itself degraded (readiness) with the reason, fails
/// sync acks, and recovers once writes succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_group_state_failing_to_persist_when_it_lasts_should_report_degraded_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, metrics) = (MetaFaults::new(), GroupMetrics::new());
    let backend = open_with_faults(dir.path(), &faults, &metrics).await;
    let (topic, group, ids) = jobs_fetched(
        &backend,
        GroupSpec::new(GroupMode::Queue),
        &["a".to_owned(), "b".to_owned()],
    )
    .await;
    faults.fail_writes(true);
    let async_ack = backend
        .ack(&topic, &group, &ids[..1], AckDurability::Async)
        .await
        .unwrap();
    assert_eq!(async_ack.acked, 1, "an async ack is confirmed once applied");
    let sync_ack = backend
        .ack(&topic, &group, &ids[1..], AckDurability::Sync)
        .await;
    assert!(
        matches!(&sync_ack, Err(error) if error.is_retryable()),
        "a sync ack that could not be persisted must fail: {sync_ack:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let reason = loop {
        let issues = backend.health();
        if let Some(issue) = issues.iter().find(|issue| issue.component == "group state") {
            break issue.error.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reported degraded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("failed to persist"), "{reason}");
    assert!(metrics.flush_failures_total() >= 2);
    faults.fail_writes(false);
    backend.flush_group_state().await.unwrap();
    assert!(backend.health().is_empty(), "recovered once writes succeed");
    let backend = reopen(dir.path(), backend).await;
    backend.leave(&topic, &group, "w").await.unwrap();
    assert!(
        drain(&*backend, &topic, &group).await.is_empty(),
        "both acks were persisted once storage recovered"
    );
    backend.shutdown().await.unwrap();
}

/// Point 6: sync acks arriving together share transactions (group
/// commit) instead of taking one each, and each is persisted when it
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_concurrent_sync_acks_should_share_transactions_and_be_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = GroupMetrics::new();
    let options = EmbeddedOptions {
        metrics: Arc::clone(&metrics),
        // No background rounds: every round below is one a sync ack asked for.
        flush_interval: Duration::from_secs(3_600),
        ..EmbeddedOptions::new(dir.path())
    };
    let backend = Arc::new(
        EmbeddedBackend::open(options, herald_log::LogMetrics::new())
            .await
            .unwrap(),
    );
    let mut spec = GroupSpec::new(GroupMode::Queue);
    spec.ack_durability = AckDurability::Sync;
    let events: Vec<String> = (0..64).map(|index| format!("e{index}")).collect();
    let (topic, group, ids) = jobs_fetched(&backend, spec, &events).await;
    let before = metrics.flushes_total();
    let acks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let (backend, topic, group) = (Arc::clone(&backend), topic.clone(), group.clone());
            tokio::spawn(async move {
                // The group's setting makes each ack sync.
                backend
                    .ack(&topic, &group, &[id], AckDurability::Async)
                    .await
                    .unwrap()
                    .acked
            })
        })
        .collect();
    for ack in acks {
        assert_eq!(ack.await.unwrap(), 1);
    }
    let rounds = metrics.flushes_total() - before;
    assert!(
        (1..64).contains(&rounds),
        "64 concurrent sync acks took {rounds} transactions"
    );
    let backend = reopen(dir.path(), backend).await;
    backend.leave(&topic, &group, "w").await.unwrap();
    assert!(drain(&*backend, &topic, &group).await.is_empty());
    backend.shutdown().await.unwrap();
}
