//! The conformance suite: the semantics of [`Backend`] as executable checks.
//! Every backend runs all of it through [`conformance_suite!`]:
//!
//! ```ignore
//! struct Embedded { /* temp dir, backend */ }
//! #[async_trait::async_trait]
//! impl herald_backend::conformance::Harness for Embedded { /* start, backend, restart */ }
//! herald_backend::conformance_suite!(Embedded);
//! ```
//!
//! Checks wait on conditions (a fetch's long-poll, a bounded retry loop),
//! never on fixed sleeps, and assert outcomes. Lease and delay timings use
//! short settings (hundreds of ms) so the suite stays quick.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support"
)]
#![allow(
    clippy::async_yields_async,
    reason = "the cancellation checks' setup yields the operation under test"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use herald_types::{Event, EventInput, GroupName, StoredEvent, StreamId, TopicName};

use crate::{
    AckDurability, Backend, CommitRequest, Delivery, Direction, Error, Expect, ExpectedVersion,
    FetchRequest, Fsync, GroupFilter, GroupMode, GroupSpec, KvDurability, PartitionOffset,
    ReadResult, RetentionSpec, StartPosition, TopicSpec, TopicUpdate,
};

/// What the suite needs from a backend's test setup.
#[async_trait]
pub trait Harness: Send + Sync + Sized + 'static {
    /// A fresh backend on empty storage.
    async fn start() -> Self;
    /// The backend under test.
    fn backend(&self) -> Arc<dyn Backend>;
    /// Shuts the backend down cleanly and opens it again on the same storage.
    async fn restart(self) -> Self;
}

/// Generates one `#[tokio::test]` per conformance check for harness
/// `$harness`; with `run_if = guard`, each test runs its check only if
/// `guard()` is true (a backend whose server may be missing says so there).
#[macro_export]
macro_rules! conformance_suite {
    ($harness:ty) => {
        $crate::conformance_suite!($harness, run_if = $crate::conformance::always);
    };
    ($harness:ty, run_if = $guard:path) => {
        $crate::conformance_suite!(@tests $harness; $guard;
            topics_are_created_listed_described_updated_and_deleted,
            invalid_topic_settings_are_refused_and_change_nothing,
            publish_assigns_dense_offsets_and_keys_keep_their_partition,
            a_batch_lands_in_order_and_an_invalid_event_fails_it_whole,
            republished_ids_within_the_window_are_not_appended_twice,
            reads_by_offset_and_time_and_waits_for_new_events,
            correlated_reads_keep_only_correlated_events_of_the_offsets_looked_at,
            queue_hands_out_each_event_once_and_acked_events_never_return,
            groups_are_listed_per_topic_by_name,
            acks_are_idempotent_and_unknown_ids_are_reported,
            a_caught_up_long_poll_wakes_for_events_published_while_it_waits,
            an_expired_lease_is_redelivered_to_another_member,
            the_first_group_expires_its_leases_without_being_fetched,
            nack_redelivers_after_the_delay_and_backoff,
            max_deliveries_sends_the_event_to_dead_letters_and_redrive_brings_it_back,
            reject_dead_letters_at_once_and_copies_to_the_dead_letter_topic,
            extend_keeps_the_lease,
            a_member_that_leaves_returns_its_leases_at_once,
            max_in_flight_limits_outstanding_leases,
            delayed_events_are_not_delivered_before_their_time,
            filters_skip_events_and_count_them_as_handled,
            start_positions_and_reset_move_the_group,
            keyed_groups_keep_one_event_per_key_in_flight_in_order,
            keyed_groups_ordered_by_subject_keep_one_event_per_subject_in_flight,
            stream_groups_assign_partitions_and_fence_stale_generations,
            stream_commits_survive_a_restart,
            queue_state_survives_a_restart,
            redriven_dead_letters_survive_a_restart,
            redelivery_timing_and_leases_survive_a_restart,
            sync_settles_are_answered_once_persisted,
            topics_groups_and_dedup_survive_a_restart,
            publish_dedup_and_stream_appends_answer_the_same_after_a_restart,
            a_changed_dedup_window_answers_as_after_a_restart,
            kv_compare_and_set,
            kv_batches_are_written_and_deleted_whole_and_survive_a_restart,
            a_lease_has_one_holder_until_it_expires_or_is_given_up,
            a_task_under_a_lease_runs_on_one_node_at_a_time,
            stream_appends_honour_each_expectation_and_conflicts_change_nothing,
            stream_versions_are_dense_and_reads_page_forward_and_backward,
            stream_metadata_and_soft_and_hard_delete,
            stream_snapshots_are_kept_up_to_the_stream_version,
            streams_survive_a_restart,
            writers_racing_on_one_stream_get_one_winner_per_version,
            a_publish_dropped_at_any_await_is_stored_once_and_a_republish_answers,
            a_stream_append_dropped_at_any_await_is_all_or_nothing,
            a_hard_delete_dropped_at_any_await_is_all_or_nothing,
            a_reject_dropped_at_any_await_records_the_dead_letter_and_its_copy,
            a_redrive_dropped_at_any_await_loses_no_dead_letter,
            a_leave_dropped_at_any_await_returns_the_leases_or_keeps_them,
            administration_dropped_at_any_await_is_the_same_after_a_restart,
        );
    };
    (@tests $harness:ty; $guard:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if $guard() {
                    $crate::conformance::$name::<$harness>().await;
                }
            }
        )*
    };
}

/// The guard of a suite that always runs.
pub fn always() -> bool {
    true
}

// ---------------------------------------------------------------- helpers --

fn topic(name: &str) -> TopicName {
    name.parse().unwrap()
}

fn group(name: &str) -> GroupName {
    name.parse().unwrap()
}

fn event(id: &str, ty: &str) -> EventInput {
    let mut event = Event::new(id, "/conformance", ty);
    event.data = Some(Bytes::from(format!("{{\"id\":\"{id}\"}}")));
    event.datacontenttype = Some("application/json".into());
    EventInput {
        event,
        partition: None,
    }
}

fn keyed(id: &str, key: &str) -> EventInput {
    let mut input = event(id, "test.keyed");
    input.event.key = Some(key.into());
    input
}

async fn make_topic(backend: &dyn Backend, name: &str, partitions: u32) -> TopicName {
    let mut spec = TopicSpec::new(topic(name));
    spec.partitions = partitions;
    backend.create_topic(spec).await.unwrap();
    topic(name)
}

fn queue_spec(mode: GroupMode) -> GroupSpec {
    let mut spec = GroupSpec::new(mode);
    spec.ack_wait_ms = 300;
    spec.backoff_ms = vec![50];
    spec.max_deliveries = 3;
    spec
}

fn fetch_request(member: &str, max: u32, wait_ms: u64) -> FetchRequest {
    FetchRequest {
        member: member.into(),
        max,
        wait_ms,
    }
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| delivery.delivery_id.clone())
        .collect()
}

fn event_ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| delivery.event.event.id.clone())
        .collect()
}

/// Fetches until `count` deliveries arrived in total or `timeout` passed.
async fn fetch_until(
    backend: &dyn Backend,
    topic: &TopicName,
    group: &GroupName,
    member: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + timeout;
    let mut all = Vec::new();
    while all.len() < count && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = u64::try_from(left.as_millis())
            .unwrap_or(u64::MAX)
            .min(1_000);
        let want = u32::try_from(count - all.len()).unwrap_or(u32::MAX);
        let response = backend
            .fetch(topic, group, fetch_request(member, want, wait))
            .await
            .unwrap();
        all.extend(response.deliveries);
    }
    all
}

async fn publish_all(backend: &dyn Backend, topic: &TopicName, events: Vec<EventInput>) {
    backend.publish(topic, events).await.unwrap();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const LONG: Duration = Duration::from_secs(10);

// ----------------------------------------------------------------- topics --

/// Topics: create, list, describe, update, delete; duplicates and unknowns.
pub async fn topics_are_created_listed_described_updated_and_deleted<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 3).await;
    assert!(matches!(
        backend.create_topic(TopicSpec::new(orders.clone())).await,
        Err(Error::TopicExists { .. })
    ));
    make_topic(&*backend, "audit", 1).await;
    let names: Vec<String> = backend
        .list_topics()
        .await
        .unwrap()
        .iter()
        .map(|info| info.spec.name.to_string())
        .collect();
    assert_eq!(names, ["audit", "orders"]);
    let described = backend.describe_topic(&orders).await.unwrap();
    assert_eq!(described.partition_info.len(), 3);
    assert!(
        described
            .partition_info
            .iter()
            .all(|partition| partition.end_offset == 0)
    );

    let update = TopicUpdate {
        retention: Some(RetentionSpec {
            max_events: Some(1_000),
            ..RetentionSpec::default()
        }),
        max_event_bytes: Some(4096),
        ..TopicUpdate::default()
    };
    let updated = backend.update_topic(&orders, update).await.unwrap();
    assert_eq!(updated.spec.max_event_bytes, 4096);
    assert_eq!(updated.spec.retention.max_events, Some(1_000));
    assert_eq!(
        backend
            .describe_topic(&orders)
            .await
            .unwrap()
            .info
            .spec
            .max_event_bytes,
        4096
    );

    backend.delete_topic(&orders).await.unwrap();
    assert!(matches!(
        backend.describe_topic(&orders).await,
        Err(Error::TopicNotFound { .. })
    ));
    assert!(matches!(
        backend.delete_topic(&orders).await,
        Err(Error::TopicNotFound { .. })
    ));
    assert!(matches!(
        backend.publish(&orders, vec![event("a", "t")]).await,
        Err(Error::TopicNotFound { .. })
    ));
    // The name can be used again, and starts empty.
    make_topic(&*backend, "orders", 1).await;
    assert_eq!(
        backend
            .describe_topic(&orders)
            .await
            .unwrap()
            .partition_info[0]
            .end_offset,
        0
    );
    backend.shutdown().await.unwrap();
}

/// Invalid settings are refused with the offending field and change nothing.
pub async fn invalid_topic_settings_are_refused_and_change_nothing<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let mut spec = TopicSpec::new(topic("bad"));
    spec.partitions = 0;
    match backend.create_topic(spec).await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "partitions"),
        other => panic!("expected invalid partitions, got {other:?}"),
    }
    let mut spec = TopicSpec::new(topic("bad"));
    spec.fsync = Fsync::Interval;
    spec.fsync_interval_ms = 0;
    assert!(matches!(
        backend.create_topic(spec).await,
        Err(Error::InvalidArgument { .. })
    ));
    let mut spec = TopicSpec::new(topic("bad"));
    spec.dedup_window_ms = crate::topic::MAX_DEDUP_WINDOW_MS + 1;
    match backend.create_topic(spec).await {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "dedup_window_ms"),
        other => panic!("expected an invalid dedup window, got {other:?}"),
    }
    assert!(backend.list_topics().await.unwrap().is_empty());
    let good = make_topic(&*backend, "good", 1).await;
    let update = TopicUpdate {
        dedup_window_ms: Some(crate::topic::MAX_DEDUP_WINDOW_MS + 1),
        ..TopicUpdate::default()
    };
    assert!(matches!(
        backend.update_topic(&good, update).await,
        Err(Error::InvalidArgument { .. })
    ));
    let update = TopicUpdate {
        max_event_bytes: Some(0),
        ..TopicUpdate::default()
    };
    assert!(matches!(
        backend.update_topic(&good, update).await,
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(
        backend
            .describe_topic(&good)
            .await
            .unwrap()
            .info
            .spec
            .max_event_bytes,
        1024 * 1024
    );
    backend.shutdown().await.unwrap();
}

// ----------------------------------------------------------------- events --

/// Offsets are dense per partition; a key always maps to the same partition;
/// an explicit partition is honoured and an unknown one refused.
pub async fn publish_assigns_dense_offsets_and_keys_keep_their_partition<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 4).await;
    let mut by_key: HashMap<String, BTreeSet<u32>> = HashMap::new();
    let mut offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for index in 0..40 {
        let key = format!("customer-{}", index % 5);
        let results = backend
            .publish(&orders, vec![keyed(&format!("e{index}"), &key)])
            .await
            .unwrap();
        by_key.entry(key).or_default().insert(results[0].partition);
        offsets
            .entry(results[0].partition)
            .or_default()
            .push(results[0].offset);
    }
    assert!(
        by_key.values().all(|partitions| partitions.len() == 1),
        "a key moved: {by_key:?}"
    );
    for (partition, list) in &offsets {
        assert_eq!(
            *list,
            (0..list.len() as u64).collect::<Vec<_>>(),
            "partition {partition} not dense"
        );
    }
    let mut explicit = event("explicit", "t");
    explicit.partition = Some(3);
    assert_eq!(
        backend.publish(&orders, vec![explicit]).await.unwrap()[0].partition,
        3
    );
    let mut wrong = event("wrong", "t");
    wrong.partition = Some(4);
    assert!(matches!(
        backend.publish(&orders, vec![wrong]).await,
        Err(Error::PartitionNotFound { .. })
    ));
    backend.shutdown().await.unwrap();
}

/// A batch's events of one partition land contiguously and in order; one
/// invalid event (too large) fails the whole batch and appends nothing.
pub async fn a_batch_lands_in_order_and_an_invalid_event_fails_it_whole<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let mut spec = TopicSpec::new(topic("batch"));
    spec.max_event_bytes = 2048;
    backend.create_topic(spec).await.unwrap();
    let batch = topic("batch");
    let events: Vec<EventInput> = (0..10)
        .map(|index| event(&format!("b{index}"), "t"))
        .collect();
    let results = backend.publish(&batch, events).await.unwrap();
    assert_eq!(
        results
            .iter()
            .map(|result| result.offset)
            .collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    let read = backend.read(&batch, 0, 0, 100).await.unwrap();
    assert_eq!(
        read.events
            .iter()
            .map(|stored| stored.event.id.clone())
            .collect::<Vec<_>>(),
        (0..10).map(|index| format!("b{index}")).collect::<Vec<_>>()
    );
    assert_eq!(
        read.events[3].event.data,
        Some(Bytes::from("{\"id\":\"b3\"}"))
    );

    let mut too_big = event("big", "t");
    too_big.event.data = Some(Bytes::from(vec![b'x'; 4096]));
    let mixed = vec![event("ok-1", "t"), too_big, event("ok-2", "t")];
    assert!(matches!(
        backend.publish(&batch, mixed).await,
        Err(Error::PayloadTooLarge { max: 2048, .. })
    ));
    assert_eq!(
        backend.describe_topic(&batch).await.unwrap().partition_info[0].end_offset,
        10
    );
    assert!(matches!(
        backend.publish(&batch, Vec::new()).await,
        Err(Error::InvalidArgument { .. })
    ));
    backend.shutdown().await.unwrap();
}

/// Re-publishing an id within the dedup window returns the original position.
pub async fn republished_ids_within_the_window_are_not_appended_twice<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 2).await;
    let first = backend
        .publish(&orders, vec![keyed("order-1", "a")])
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    let again = backend
        .publish(&orders, vec![keyed("order-1", "a"), keyed("order-2", "a")])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!(
        (again[0].partition, again[0].offset),
        (first[0].partition, first[0].offset)
    );
    assert!(!again[1].duplicate);
    let same_call = backend
        .publish(&orders, vec![keyed("order-3", "b"), keyed("order-3", "b")])
        .await
        .unwrap();
    assert!(!same_call[0].duplicate && same_call[1].duplicate);
    assert_eq!(same_call[0].offset, same_call[1].offset);
    // Concurrent publishes of one id: exactly one appends.
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let backend = Arc::clone(&backend);
            let orders = orders.clone();
            tokio::spawn(async move {
                backend
                    .publish(&orders, vec![keyed("raced", "c")])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut appended = 0;
    let mut positions = BTreeSet::new();
    for racer in racers {
        let result = racer.await.unwrap();
        appended += usize::from(!result[0].duplicate);
        positions.insert((result[0].partition, result[0].offset));
    }
    assert_eq!(appended, 1);
    assert_eq!(positions.len(), 1);
    let total: u64 = backend
        .describe_topic(&orders)
        .await
        .unwrap()
        .partition_info
        .iter()
        .map(|p| p.end_offset)
        .sum();
    assert_eq!(total, 4, "order-1, order-2, order-3, raced");
    backend.shutdown().await.unwrap();
}

/// Reads from an offset, seeks by time, and wakes a waiter on a new event.
pub async fn reads_by_offset_and_time_and_waits_for_new_events<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let log = make_topic(&*backend, "log", 1).await;
    let before = now_ms();
    publish_all(
        &*backend,
        &log,
        (0..5)
            .map(|index| event(&format!("r{index}"), "t"))
            .collect(),
    )
    .await;
    let read = backend.read(&log, 0, 2, 2).await.unwrap();
    assert_eq!(
        read.events
            .iter()
            .map(|stored| stored.offset)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(read.next_offset, 4);
    assert!(
        read.events
            .iter()
            .all(|stored| stored.appended_at >= before - 1000)
    );
    assert_eq!(
        backend
            .offset_for_time(&log, 0, before - 60_000)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        backend
            .offset_for_time(&log, 0, now_ms() + 60_000)
            .await
            .unwrap(),
        5
    );
    assert!(matches!(
        backend.read(&log, 9, 0, 1).await,
        Err(Error::PartitionNotFound { .. })
    ));

    let waiter = {
        let (backend, log) = (Arc::clone(&backend), log.clone());
        tokio::spawn(async move { backend.wait_for(&log, 0, 5, LONG).await.unwrap() })
    };
    publish_all(&*backend, &log, vec![event("r5", "t")]).await;
    assert_eq!(waiter.await.unwrap(), 6);
    backend.shutdown().await.unwrap();
}

/// A correlated read returns, among the `max` offsets it looks at, only the
/// events with a correlation or causation id (whole), and moves past all of
/// them, so a stretch without any is walked at a bounded cost.
pub async fn correlated_reads_keep_only_correlated_events_of_the_offsets_looked_at<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let log = make_topic(&*backend, "lineage-read", 1).await;
    let events = (0..10)
        .map(|index| {
            let mut input = event(&format!("l{index}"), "t");
            match index {
                1 | 4 | 7 => input.event.correlationid = Some(format!("c{index}")),
                8 => input.event.causationid = Some("l7".into()),
                _ => {}
            }
            input
        })
        .collect();
    publish_all(&*backend, &log, events).await;
    let offsets = |read: &ReadResult| {
        read.events
            .iter()
            .map(|stored| stored.offset)
            .collect::<Vec<_>>()
    };
    let first = backend.read_correlated(&log, 0, 0, 5).await.unwrap();
    assert_eq!(offsets(&first), [1, 4]);
    assert_eq!(first.next_offset, 5);
    assert_eq!(first.events[0].event.id, "l1");
    assert_eq!(first.events[0].event.correlationid.as_deref(), Some("c1"));
    assert_eq!(
        first.events[0].event.data.as_deref(),
        Some(&b"{\"id\":\"l1\"}"[..])
    );
    let rest = backend.read_correlated(&log, 0, 5, 100).await.unwrap();
    assert_eq!(offsets(&rest), [7, 8]);
    assert_eq!(rest.events[1].event.causationid.as_deref(), Some("l7"));
    assert_eq!(rest.next_offset, 10);
    let end = backend.read_correlated(&log, 0, 10, 100).await.unwrap();
    assert!(end.events.is_empty());
    assert_eq!(end.next_offset, 10);
    backend.shutdown().await.unwrap();
}

// ------------------------------------------------------------ queue groups --

/// A topic lists its own groups, by name, with their mode; a deleted group
/// is gone from the list; an unknown topic is an error.
pub async fn groups_are_listed_per_topic_by_name<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 1).await;
    let other = make_topic(&*backend, "other", 1).await;
    assert!(backend.list_groups(&orders).await.unwrap().is_empty());
    for (name, mode) in [
        ("shipping", GroupMode::Keyed),
        ("billing", GroupMode::Stream),
        ("audit", GroupMode::Queue),
    ] {
        backend
            .put_group(&orders, &group(name), queue_spec(mode))
            .await
            .unwrap();
    }
    backend
        .put_group(&other, &group("elsewhere"), queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    let listed: Vec<(String, GroupMode)> = backend
        .list_groups(&orders)
        .await
        .unwrap()
        .into_iter()
        .map(|info| (info.name.to_string(), info.spec.mode))
        .collect();
    assert_eq!(
        listed,
        [
            ("audit".to_owned(), GroupMode::Queue),
            ("billing".to_owned(), GroupMode::Stream),
            ("shipping".to_owned(), GroupMode::Keyed),
        ]
    );
    backend
        .delete_group(&orders, &group("billing"))
        .await
        .unwrap();
    assert_eq!(backend.list_groups(&orders).await.unwrap().len(), 2);
    assert!(matches!(
        backend.list_groups(&topic("missing")).await,
        Err(Error::TopicNotFound { .. })
    ));
}

/// Two members share a queue group: every event goes to exactly one of
/// them; acked events never come back.
pub async fn queue_hands_out_each_event_once_and_acked_events_never_return<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 3).await;
    let workers = group("workers");
    let (_, created) = backend
        .put_group(&jobs, &workers, queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    assert!(created);
    publish_all(
        &*backend,
        &jobs,
        (0..30)
            .map(|index| event(&format!("j{index}"), "t"))
            .collect(),
    )
    .await;
    let first = fetch_until(&*backend, &jobs, &workers, "w1", 15, LONG).await;
    let second = fetch_until(&*backend, &jobs, &workers, "w2", 15, LONG).await;
    let mut seen: Vec<String> = event_ids(&first)
        .into_iter()
        .chain(event_ids(&second))
        .collect();
    seen.sort();
    let mut expected: Vec<String> = (0..30).map(|index| format!("j{index}")).collect();
    expected.sort();
    assert_eq!(seen, expected, "each event to exactly one member");
    assert!(
        first
            .iter()
            .chain(&second)
            .all(|delivery| delivery.attempt == 1)
    );
    let outcome = backend
        .ack(&jobs, &workers, &ids(&first), AckDurability::Async)
        .await
        .unwrap();
    assert_eq!(outcome.acked, 15);
    backend
        .ack(&jobs, &workers, &ids(&second), AckDurability::Async)
        .await
        .unwrap();
    // Well past the ack wait: nothing comes back.
    let later = backend
        .fetch(&jobs, &workers, fetch_request("w1", 100, 800))
        .await
        .unwrap();
    assert!(
        later.deliveries.is_empty(),
        "acked events returned: {:?}",
        event_ids(&later.deliveries)
    );
    let status = backend.group_status(&jobs, &workers).await.unwrap();
    assert_eq!(status.in_flight, 0);
    assert_eq!(
        status
            .partitions
            .iter()
            .map(|partition| partition.lag)
            .sum::<u64>(),
        0
    );
    let members: Vec<&str> = status
        .members
        .iter()
        .map(|member| member.member.as_str())
        .collect();
    assert_eq!(
        members,
        ["w1", "w2"],
        "members that fetched show in the status"
    );
    backend.shutdown().await.unwrap();
}

/// Acking twice, or an unknown or malformed id, changes nothing and is reported.
/// A consumer that has caught up long-polls while a producer keeps
/// publishing: every fetch must wake for the new events, never sleep until
/// its (here one minute) deadline. Events that land between the fetch's read
/// of the log and the start of its wait are the race this checks for.
pub async fn a_caught_up_long_poll_wakes_for_events_published_while_it_waits<H: Harness>() {
    const EVENTS: usize = 3_000;
    let harness = H::start().await;
    let backend = harness.backend();
    let live = make_topic(&*backend, "live", 1).await;
    let workers = group("workers");
    // No lease timer may end a stalled wait early.
    let mut spec = GroupSpec::new(GroupMode::Queue);
    spec.ack_wait_ms = 600_000;
    backend.put_group(&live, &workers, spec).await.unwrap();
    let producer = {
        let (backend, live) = (Arc::clone(&backend), live.clone());
        tokio::spawn(async move {
            for index in 0..EVENTS {
                publish_all(&*backend, &live, vec![event(&format!("e{index}"), "t")]).await;
            }
        })
    };
    let consumed = tokio::time::timeout(Duration::from_secs(50), async {
        let mut received = 0;
        while received < EVENTS {
            let response = backend
                .fetch(&live, &workers, fetch_request("w1", 1_000, 60_000))
                .await
                .unwrap();
            received += response.deliveries.len();
            backend
                .ack(
                    &live,
                    &workers,
                    &ids(&response.deliveries),
                    AckDurability::Async,
                )
                .await
                .unwrap();
        }
        received
    })
    .await;
    producer.await.unwrap();
    assert_eq!(
        consumed.ok(),
        Some(EVENTS),
        "a long poll slept through new events"
    );
}

pub async fn acks_are_idempotent_and_unknown_ids_are_reported<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    backend
        .put_group(&jobs, &workers, queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    publish_all(&*backend, &jobs, vec![event("only", "t")]).await;
    let deliveries = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    let id = deliveries[0].delivery_id.clone();
    assert_eq!(
        backend
            .ack(
                &jobs,
                &workers,
                std::slice::from_ref(&id),
                AckDurability::Async
            )
            .await
            .unwrap()
            .acked,
        1
    );
    let again = backend
        .ack(
            &jobs,
            &workers,
            &[id.clone(), "garbage".into(), "0.99.1".into()],
            AckDurability::Async,
        )
        .await
        .unwrap();
    assert_eq!(again.acked, 0);
    assert_eq!(
        again.unknown,
        [id, "garbage".to_owned(), "0.99.1".to_owned()]
    );
    assert!(matches!(
        backend
            .ack(&jobs, &group("nobody"), &[], AckDurability::Async)
            .await,
        Err(Error::GroupNotFound { .. })
    ));
    backend.shutdown().await.unwrap();
}

/// A member that takes an event and dies (never acks): once the lease expires
/// another member gets it, as attempt 2.
pub async fn an_expired_lease_is_redelivered_to_another_member<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    backend
        .put_group(&jobs, &workers, queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    publish_all(&*backend, &jobs, vec![event("fragile", "t")]).await;
    let taken = fetch_until(&*backend, &jobs, &workers, "doomed", 1, LONG).await;
    assert_eq!(taken[0].attempt, 1);
    let retried = fetch_until(&*backend, &jobs, &workers, "survivor", 1, LONG).await;
    assert_eq!(retried.len(), 1, "the expired lease was not redelivered");
    assert_eq!(retried[0].event.event.id, "fragile");
    assert_eq!(retried[0].attempt, 2);
    // The dead member's late ack of its old delivery still settles the event.
    assert_eq!(
        backend
            .ack(&jobs, &workers, &ids(&taken), AckDurability::Async)
            .await
            .unwrap()
            .acked,
        1
    );
    assert!(
        backend
            .ack(&jobs, &workers, &ids(&retried), AckDurability::Async)
            .await
            .unwrap()
            .acked
            == 0
    );
    backend.shutdown().await.unwrap();
}

/// The group timer runs for the first group of a backend that had none (an
/// idle backend may let it sleep): a lease that expires on its last allowed
/// delivery reaches the dead letters with nobody fetching again.
pub async fn the_first_group_expires_its_leases_without_being_fetched<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    let mut spec = queue_spec(GroupMode::Queue);
    spec.max_deliveries = 1;
    backend.put_group(&jobs, &workers, spec).await.unwrap();
    publish_all(&*backend, &jobs, vec![event("abandoned", "t")]).await;
    let taken = fetch_until(&*backend, &jobs, &workers, "gone", 1, LONG).await;
    assert_eq!(taken[0].attempt, 1);
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let letters = backend.dead_letters(&jobs, &workers, 10).await.unwrap();
        if letters.len() == 1 {
            let id = letters[0]
                .event
                .as_ref()
                .map(|stored| stored.event.id.as_str());
            assert_eq!(id, Some("abandoned"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired lease never reached the dead letters"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backend.shutdown().await.unwrap();
}

/// A nack with a delay is redelivered after it, not before; without a delay
/// the backoff applies.
pub async fn nack_redelivers_after_the_delay_and_backoff<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    let mut spec = queue_spec(GroupMode::Queue);
    spec.ack_wait_ms = 10_000;
    backend.put_group(&jobs, &workers, spec).await.unwrap();
    publish_all(&*backend, &jobs, vec![event("again", "t")]).await;
    let first = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    let nacked_at = now_ms();
    let outcome = backend
        .nack(
            &jobs,
            &workers,
            &ids(&first),
            Some(Duration::from_millis(400)),
            AckDurability::Async,
        )
        .await
        .unwrap();
    assert_eq!(outcome.acked, 1);
    let immediate = backend
        .fetch(&jobs, &workers, fetch_request("w", 1, 0))
        .await
        .unwrap();
    assert!(
        immediate.deliveries.is_empty(),
        "redelivered before the nack delay"
    );
    let second = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    assert!(
        now_ms() >= nacked_at + 400,
        "redelivered before the nack delay"
    );
    assert_eq!(second[0].attempt, 2);
    // A stale delivery id cannot nack the new lease.
    assert_eq!(
        backend
            .nack(&jobs, &workers, &ids(&first), None, AckDurability::Async)
            .await
            .unwrap()
            .acked,
        0
    );
    backend
        .nack(&jobs, &workers, &ids(&second), None, AckDurability::Async)
        .await
        .unwrap();
    let third = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    assert_eq!(third[0].attempt, 3);
    backend.shutdown().await.unwrap();
}

/// After `max_deliveries` the event goes to dead letters with its reason,
/// attempts and coordinates; redrive makes it deliverable again.
pub async fn max_deliveries_sends_the_event_to_dead_letters_and_redrive_brings_it_back<
    H: Harness,
>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    backend
        .put_group(&jobs, &workers, queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    publish_all(
        &*backend,
        &jobs,
        vec![event("poison", "t"), event("fine", "t")],
    )
    .await;
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let deliveries = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
        let poison: Vec<Delivery> = deliveries
            .iter()
            .filter(|delivery| delivery.event.event.id == "poison")
            .cloned()
            .collect();
        let fine: Vec<Delivery> = deliveries
            .iter()
            .filter(|delivery| delivery.event.event.id != "poison")
            .cloned()
            .collect();
        backend
            .ack(&jobs, &workers, &ids(&fine), AckDurability::Async)
            .await
            .unwrap();
        if poison.is_empty() {
            let more = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
            attempts.push(more[0].attempt);
            backend
                .nack(&jobs, &workers, &ids(&more), None, AckDurability::Async)
                .await
                .unwrap();
        } else {
            attempts.push(poison[0].attempt);
            backend
                .nack(&jobs, &workers, &ids(&poison), None, AckDurability::Async)
                .await
                .unwrap();
        }
    }
    assert_eq!(attempts, [1, 2, 3]);
    let letters = backend.dead_letters(&jobs, &workers, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(
        letters[0].original,
        PartitionOffset {
            partition: 0,
            offset: 0
        }
    );
    assert!(
        letters[0].reason.contains("max deliveries"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        letters[0]
            .event
            .as_ref()
            .map(|stored| stored.event.id.as_str()),
        Some("poison")
    );
    assert_eq!(
        backend
            .group_status(&jobs, &workers)
            .await
            .unwrap()
            .dead_letters,
        1
    );
    let nothing = backend
        .fetch(&jobs, &workers, fetch_request("w", 1, 300))
        .await
        .unwrap();
    assert!(nothing.deliveries.is_empty());

    assert_eq!(backend.redrive(&jobs, &workers, None).await.unwrap(), 1);
    assert!(
        backend
            .dead_letters(&jobs, &workers, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let back = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    assert_eq!(back[0].event.event.id, "poison");
    assert_eq!(back[0].attempt, 1);
    backend.shutdown().await.unwrap();
}

/// Reject dead-letters at once, and a topic's dead-letter topic gets a copy
/// that says where it came from.
pub async fn reject_dead_letters_at_once_and_copies_to_the_dead_letter_topic<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let dead = make_topic(&*backend, "jobs-dead", 1).await;
    let mut spec = TopicSpec::new(topic("jobs"));
    spec.dead_letter_topic = Some(dead.clone());
    backend.create_topic(spec).await.unwrap();
    let jobs = topic("jobs");
    let workers = group("workers");
    backend
        .put_group(&jobs, &workers, queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    publish_all(&*backend, &jobs, vec![event("malformed", "t")]).await;
    let deliveries = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    let outcome = backend
        .reject(
            &jobs,
            &workers,
            &ids(&deliveries),
            "schema mismatch",
            AckDurability::Async,
        )
        .await
        .unwrap();
    assert_eq!(outcome.acked, 1);
    let letters = backend.dead_letters(&jobs, &workers, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(letters[0].reason.contains("schema mismatch"));
    assert_eq!(letters[0].attempts, 1);
    // The copy is published shortly after (at least once).
    assert_eq!(backend.wait_for(&dead, 0, 1, LONG).await.unwrap(), 1);
    let copies = backend.read(&dead, 0, 0, 10).await.unwrap();
    assert_eq!(copies.events.len(), 1);
    let copy = &copies.events[0].event;
    assert_eq!(copy.ty, "t");
    assert!(copy.extensions.contains_key("dlreason") && copy.extensions.contains_key("dloffset"));
    backend.shutdown().await.unwrap();
}

/// Extending a lease keeps it past the original ack wait.
pub async fn extend_keeps_the_lease<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    backend
        .put_group(&jobs, &workers, queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    publish_all(&*backend, &jobs, vec![event("slow", "t")]).await;
    let deliveries = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    let outcome = backend
        .extend(
            &jobs,
            &workers,
            &ids(&deliveries),
            Some(Duration::from_secs(30)),
            AckDurability::Async,
        )
        .await
        .unwrap();
    assert_eq!(outcome.acked, 1);
    // Three original ack waits later, still leased to the first member.
    let other = backend
        .fetch(&jobs, &workers, fetch_request("other", 1, 900))
        .await
        .unwrap();
    assert!(
        other.deliveries.is_empty(),
        "an extended lease was redelivered"
    );
    assert_eq!(
        backend
            .ack(&jobs, &workers, &ids(&deliveries), AckDurability::Async)
            .await
            .unwrap()
            .acked,
        1
    );
    backend.shutdown().await.unwrap();
}

/// When a member leaves, its leases go to others at once, not after the ack wait.
pub async fn a_member_that_leaves_returns_its_leases_at_once<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    let mut spec = queue_spec(GroupMode::Queue);
    spec.ack_wait_ms = 60_000;
    backend.put_group(&jobs, &workers, spec).await.unwrap();
    publish_all(&*backend, &jobs, vec![event("handoff", "t")]).await;
    fetch_until(&*backend, &jobs, &workers, "leaving", 1, LONG).await;
    backend.leave(&jobs, &workers, "leaving").await.unwrap();
    let taken = backend
        .fetch(&jobs, &workers, fetch_request("staying", 1, 5_000))
        .await
        .unwrap();
    assert_eq!(event_ids(&taken.deliveries), ["handoff"]);
    backend.shutdown().await.unwrap();
}

/// No more than `max_in_flight` leases are outstanding.
pub async fn max_in_flight_limits_outstanding_leases<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 2).await;
    let workers = group("workers");
    let mut spec = queue_spec(GroupMode::Queue);
    spec.max_in_flight = 5;
    spec.ack_wait_ms = 60_000;
    backend.put_group(&jobs, &workers, spec).await.unwrap();
    publish_all(
        &*backend,
        &jobs,
        (0..20)
            .map(|index| event(&format!("f{index}"), "t"))
            .collect(),
    )
    .await;
    let first = fetch_until(&*backend, &jobs, &workers, "w", 5, LONG).await;
    assert_eq!(first.len(), 5);
    let more = backend
        .fetch(&jobs, &workers, fetch_request("w", 10, 200))
        .await
        .unwrap();
    assert!(more.deliveries.is_empty(), "exceeded max_in_flight");
    assert_eq!(
        backend
            .group_status(&jobs, &workers)
            .await
            .unwrap()
            .in_flight,
        5
    );
    backend
        .ack(&jobs, &workers, &ids(&first[..2]), AckDurability::Async)
        .await
        .unwrap();
    let after = backend
        .fetch(&jobs, &workers, fetch_request("w", 10, 1_000))
        .await
        .unwrap();
    assert_eq!(after.deliveries.len(), 2);
    backend.shutdown().await.unwrap();
}

/// An event with `deliver_at` in the future is not handed out before then;
/// events after it are not held up.
pub async fn delayed_events_are_not_delivered_before_their_time<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    backend
        .put_group(&jobs, &workers, queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    let due = now_ms() + 600;
    let mut later = event("later", "t");
    later.event.deliver_at = Some(due);
    publish_all(&*backend, &jobs, vec![later, event("now", "t")]).await;
    let first = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    assert_eq!(event_ids(&first), ["now"]);
    backend
        .ack(&jobs, &workers, &ids(&first), AckDurability::Async)
        .await
        .unwrap();
    let second = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    assert_eq!(event_ids(&second), ["later"]);
    assert!(now_ms() >= due, "delivered before deliver_at");
    backend.shutdown().await.unwrap();
}

/// Filters by type and subject prefix; skipped events count as handled.
pub async fn filters_skip_events_and_count_them_as_handled<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 1).await;
    let billing = group("billing");
    let mut spec = queue_spec(GroupMode::Queue);
    spec.filter = GroupFilter {
        types: vec!["order.paid".into()],
        subject_prefix: Some("eu/".into()),
    };
    backend.put_group(&orders, &billing, spec).await.unwrap();
    let mut paid_eu = event("paid-eu", "order.paid");
    paid_eu.event.subject = Some("eu/42".into());
    let mut paid_us = event("paid-us", "order.paid");
    paid_us.event.subject = Some("us/7".into());
    let mut created_eu = event("created-eu", "order.created");
    created_eu.event.subject = Some("eu/42".into());
    publish_all(&*backend, &orders, vec![created_eu, paid_us, paid_eu]).await;
    let deliveries = fetch_until(&*backend, &orders, &billing, "w", 1, LONG).await;
    assert_eq!(event_ids(&deliveries), ["paid-eu"]);
    backend
        .ack(&orders, &billing, &ids(&deliveries), AckDurability::Async)
        .await
        .unwrap();
    let status = backend.group_status(&orders, &billing).await.unwrap();
    assert_eq!(status.partitions[0].committed, 3);
    assert_eq!(status.partitions[0].lag, 0);
    backend.shutdown().await.unwrap();
}

/// Groups start at earliest, latest, an offset or a time, and reset moves them.
pub async fn start_positions_and_reset_move_the_group<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let log = make_topic(&*backend, "log", 1).await;
    publish_all(
        &*backend,
        &log,
        (0..5)
            .map(|index| event(&format!("s{index}"), "t"))
            .collect(),
    )
    .await;
    let mut latest = queue_spec(GroupMode::Queue);
    latest.start = StartPosition::Latest;
    backend
        .put_group(&log, &group("latest"), latest)
        .await
        .unwrap();
    let mut at_offset = queue_spec(GroupMode::Queue);
    at_offset.start = StartPosition::Offset { offset: 3 };
    backend
        .put_group(&log, &group("offset"), at_offset)
        .await
        .unwrap();
    let mut by_time = queue_spec(GroupMode::Queue);
    by_time.start = StartPosition::Time {
        time_ms: now_ms() + 60_000,
    };
    backend
        .put_group(&log, &group("time"), by_time)
        .await
        .unwrap();
    backend
        .put_group(&log, &group("earliest"), queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    publish_all(&*backend, &log, vec![event("s5", "t")]).await;

    let first_of = |deliveries: Vec<Delivery>| {
        deliveries
            .first()
            .map(|delivery| delivery.event.event.id.clone())
    };
    assert_eq!(
        first_of(fetch_until(&*backend, &log, &group("latest"), "w", 1, LONG).await).as_deref(),
        Some("s5")
    );
    assert_eq!(
        first_of(fetch_until(&*backend, &log, &group("offset"), "w", 1, LONG).await).as_deref(),
        Some("s3")
    );
    assert_eq!(
        first_of(fetch_until(&*backend, &log, &group("time"), "w", 1, LONG).await).as_deref(),
        Some("s5")
    );
    assert_eq!(
        first_of(fetch_until(&*backend, &log, &group("earliest"), "w", 1, LONG).await).as_deref(),
        Some("s0")
    );

    backend
        .reset(&log, &group("latest"), StartPosition::Offset { offset: 1 })
        .await
        .unwrap();
    let status = backend.group_status(&log, &group("latest")).await.unwrap();
    assert_eq!(status.partitions[0].committed, 1);
    assert_eq!(status.in_flight, 0);
    let after_reset = fetch_until(&*backend, &log, &group("latest"), "w", 5, LONG).await;
    assert_eq!(event_ids(&after_reset), ["s1", "s2", "s3", "s4", "s5"]);
    backend.shutdown().await.unwrap();
}

// ------------------------------------------------------------ keyed groups --

/// Keyed: per key one event in flight and in publish order, across many
/// members; different keys in parallel.
pub async fn keyed_groups_keep_one_event_per_key_in_flight_in_order<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let accounts = make_topic(&*backend, "accounts", 2).await;
    let ledger = group("ledger");
    let mut spec = queue_spec(GroupMode::Keyed);
    spec.ack_wait_ms = 60_000;
    backend.put_group(&accounts, &ledger, spec).await.unwrap();
    let keys = ["alice", "bob", "carol", "dave"];
    let mut events = Vec::new();
    for sequence in 0..5 {
        for key in keys {
            events.push(keyed(&format!("{key}-{sequence}"), key));
        }
    }
    publish_all(&*backend, &accounts, events).await;
    // First fetch: one event per key (the heads), not more.
    let heads = backend
        .fetch(&accounts, &ledger, fetch_request("m1", 100, 2_000))
        .await
        .unwrap()
        .deliveries;
    let mut head_ids = event_ids(&heads);
    head_ids.sort();
    assert_eq!(head_ids, ["alice-0", "bob-0", "carol-0", "dave-0"]);
    let nothing = backend
        .fetch(&accounts, &ledger, fetch_request("m2", 100, 200))
        .await
        .unwrap();
    assert!(
        nothing.deliveries.is_empty(),
        "a second event of a key went out while the first was in flight"
    );
    // Ack in turn from several members: each key's events come in order.
    let mut order: HashMap<String, Vec<u32>> = HashMap::new();
    let mut in_hand = heads;
    let mut round = 0;
    while !in_hand.is_empty() {
        for delivery in &in_hand {
            let (key, sequence) = delivery.event.event.id.split_once('-').unwrap();
            order
                .entry(key.to_owned())
                .or_default()
                .push(sequence.parse().unwrap());
        }
        backend
            .ack(&accounts, &ledger, &ids(&in_hand), AckDurability::Async)
            .await
            .unwrap();
        round += 1;
        let member = format!("m{}", round % 3);
        in_hand = backend
            .fetch(&accounts, &ledger, fetch_request(&member, 100, 1_000))
            .await
            .unwrap()
            .deliveries;
        let mut per_key = BTreeSet::new();
        for delivery in &in_hand {
            assert!(
                per_key.insert(delivery.event.event.key.clone()),
                "two events of one key in flight"
            );
        }
    }
    for key in keys {
        assert_eq!(order[key], [0, 1, 2, 3, 4], "key {key} out of order");
    }
    backend.shutdown().await.unwrap();
}

/// Keyed with `order_by: subject`: one event in flight per subject (in one
/// partition), whatever its key; an event without a subject is ordered by
/// its key.
pub async fn keyed_groups_ordered_by_subject_keep_one_event_per_subject_in_flight<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 1).await;
    let by_subject = group("by-subject");
    let mut spec = queue_spec(GroupMode::Keyed);
    spec.ack_wait_ms = 60_000;
    spec.order_by = crate::OrderBy::Subject;
    backend.put_group(&orders, &by_subject, spec).await.unwrap();
    let with_subject = |id: &str, key: &str, subject: Option<&str>| {
        let mut input = keyed(id, key);
        input.event.subject = subject.map(str::to_owned);
        input
    };
    publish_all(
        &*backend,
        &orders,
        vec![
            with_subject("s1-a", "k1", Some("order-1")),
            with_subject("s1-b", "k2", Some("order-1")),
            with_subject("s2-a", "k1", Some("order-2")),
            with_subject("none-a", "k3", None),
            with_subject("none-b", "k3", None),
        ],
    )
    .await;
    let heads = backend
        .fetch(&orders, &by_subject, fetch_request("m1", 100, 2_000))
        .await
        .unwrap()
        .deliveries;
    let mut head_ids = event_ids(&heads);
    head_ids.sort();
    // Keys k1 and k2 differ, but s1-b waits behind s1-a (same subject);
    // s2-a shares s1-a's key but not its subject; none-b waits on its key.
    assert_eq!(head_ids, ["none-a", "s1-a", "s2-a"]);
    backend
        .ack(&orders, &by_subject, &ids(&heads), AckDurability::Async)
        .await
        .unwrap();
    let next = backend
        .fetch(&orders, &by_subject, fetch_request("m1", 100, 2_000))
        .await
        .unwrap()
        .deliveries;
    let mut next_ids = event_ids(&next);
    next_ids.sort();
    assert_eq!(next_ids, ["none-b", "s1-b"]);
    backend.shutdown().await.unwrap();
}

// ----------------------------------------------------------- stream groups --

/// Stream: partitions are dealt out over members, each read in order; a join
/// bumps the generation; a stale generation cannot commit.
pub async fn stream_groups_assign_partitions_and_fence_stale_generations<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let clicks = make_topic(&*backend, "clicks", 4).await;
    let analytics = group("analytics");
    let mut spec = GroupSpec::new(GroupMode::Stream);
    spec.session_timeout_ms = 60_000;
    backend.put_group(&clicks, &analytics, spec).await.unwrap();
    for partition in 0..4u32 {
        let events = (0..3)
            .map(|index| {
                let mut input = event(&format!("p{partition}-{index}"), "click");
                input.partition = Some(partition);
                input
            })
            .collect();
        publish_all(&*backend, &clicks, events).await;
    }
    let alone = backend
        .fetch(&clicks, &analytics, fetch_request("a", 100, 1_000))
        .await
        .unwrap();
    assert_eq!(alone.assignment.as_deref(), Some(&[0, 1, 2, 3][..]));
    let first_generation = alone.generation.unwrap();
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for delivery in &alone.deliveries {
        per_partition
            .entry(delivery.event.partition)
            .or_default()
            .push(delivery.event.offset);
    }
    assert!(
        per_partition
            .values()
            .all(|offsets| offsets.windows(2).all(|pair| pair[0] < pair[1]))
    );

    let joined = backend
        .fetch(&clicks, &analytics, fetch_request("b", 100, 0))
        .await
        .unwrap();
    let generation = joined.generation.unwrap();
    assert!(generation > first_generation);
    let b_partitions = joined.assignment.clone().unwrap();
    let a_partitions = backend
        .fetch(&clicks, &analytics, fetch_request("a", 1, 0))
        .await
        .unwrap()
        .assignment
        .unwrap();
    assert_eq!(a_partitions.len() + b_partitions.len(), 4);
    assert!(
        a_partitions
            .iter()
            .all(|partition| !b_partitions.contains(partition))
    );

    let stale = CommitRequest {
        member: "a".into(),
        generation: first_generation,
        offsets: vec![PartitionOffset {
            partition: a_partitions[0],
            offset: 1,
        }],
    };
    assert!(matches!(
        backend.commit(&clicks, &analytics, stale).await,
        Err(Error::StaleGeneration { .. })
    ));
    let not_owned = CommitRequest {
        member: "a".into(),
        generation,
        offsets: vec![PartitionOffset {
            partition: b_partitions[0],
            offset: 1,
        }],
    };
    assert!(matches!(
        backend.commit(&clicks, &analytics, not_owned).await,
        Err(Error::StaleGeneration { .. })
    ));
    let current = CommitRequest {
        member: "a".into(),
        generation,
        offsets: vec![PartitionOffset {
            partition: a_partitions[0],
            offset: 2,
        }],
    };
    backend.commit(&clicks, &analytics, current).await.unwrap();
    let status = backend.group_status(&clicks, &analytics).await.unwrap();
    assert_eq!(status.partitions[a_partitions[0] as usize].committed, 2);
    assert_eq!(status.members.len(), 2);

    // When b leaves, a owns everything again, from the committed offsets.
    backend.leave(&clicks, &analytics, "b").await.unwrap();
    let regained = backend
        .fetch(&clicks, &analytics, fetch_request("a", 100, 1_000))
        .await
        .unwrap();
    assert_eq!(regained.assignment.as_deref(), Some(&[0, 1, 2, 3][..]));
    let b_first = b_partitions[0];
    let replayed: Vec<u64> = regained
        .deliveries
        .iter()
        .filter(|delivery| delivery.event.partition == b_first)
        .map(|delivery| delivery.event.offset)
        .collect();
    assert_eq!(
        replayed,
        [0, 1, 2],
        "b's partition restarts from its committed offset"
    );
    backend.shutdown().await.unwrap();
}

/// Stream commits survive a restart; the generation moves on so members of
/// before the restart are fenced.
pub async fn stream_commits_survive_a_restart<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let clicks = make_topic(&*backend, "clicks", 1).await;
    let analytics = group("analytics");
    backend
        .put_group(&clicks, &analytics, GroupSpec::new(GroupMode::Stream))
        .await
        .unwrap();
    publish_all(
        &*backend,
        &clicks,
        (0..6)
            .map(|index| event(&format!("c{index}"), "click"))
            .collect(),
    )
    .await;
    let fetched = backend
        .fetch(&clicks, &analytics, fetch_request("a", 3, 1_000))
        .await
        .unwrap();
    let generation = fetched.generation.unwrap();
    let commit = CommitRequest {
        member: "a".into(),
        generation,
        offsets: vec![PartitionOffset {
            partition: 0,
            offset: 3,
        }],
    };
    backend
        .commit(&clicks, &analytics, commit.clone())
        .await
        .unwrap();
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    assert!(matches!(
        backend.commit(&clicks, &analytics, commit).await,
        Err(Error::StaleGeneration { .. })
    ));
    let resumed = backend
        .fetch(&clicks, &analytics, fetch_request("a", 10, 1_000))
        .await
        .unwrap();
    assert_eq!(event_ids(&resumed.deliveries), ["c3", "c4", "c5"]);
    backend.shutdown().await.unwrap();
}

/// After a clean restart: acked events stay acked, unacked ones come back,
/// dead letters are kept.
pub async fn queue_state_survives_a_restart<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 2).await;
    let workers = group("workers");
    let mut spec = queue_spec(GroupMode::Queue);
    spec.ack_wait_ms = 60_000;
    backend.put_group(&jobs, &workers, spec).await.unwrap();
    publish_all(
        &*backend,
        &jobs,
        (0..10)
            .map(|index| event(&format!("q{index}"), "t"))
            .collect(),
    )
    .await;
    let taken = fetch_until(&*backend, &jobs, &workers, "w", 10, LONG).await;
    let (acked, unacked) = taken.split_at(6);
    backend
        .ack(&jobs, &workers, &ids(acked), AckDurability::Async)
        .await
        .unwrap();
    backend
        .reject(
            &jobs,
            &workers,
            &ids(&unacked[..1]),
            "bad",
            AckDurability::Async,
        )
        .await
        .unwrap();
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    // Leases survive the restart; the member leaving returns them at once.
    backend.leave(&jobs, &workers, "w").await.unwrap();
    let again = fetch_until(&*backend, &jobs, &workers, "w", 3, LONG).await;
    let mut returned = event_ids(&again);
    returned.sort();
    let mut expected = event_ids(&unacked[1..]);
    expected.sort();
    assert_eq!(returned, expected, "exactly the unacked events come back");
    assert!(
        again.iter().all(|delivery| delivery.attempt == 2),
        "delivery counts survive"
    );
    let extra = backend
        .fetch(&jobs, &workers, fetch_request("w", 10, 300))
        .await
        .unwrap();
    assert!(extra.deliveries.is_empty());
    assert_eq!(
        backend
            .dead_letters(&jobs, &workers, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    backend.shutdown().await.unwrap();
}

/// A dead letter that was redriven but not yet delivered again is still
/// delivered after a restart (the redrive removed it from the list).
pub async fn redriven_dead_letters_survive_a_restart<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    backend
        .put_group(&jobs, &workers, queue_spec(GroupMode::Queue))
        .await
        .unwrap();
    publish_all(
        &*backend,
        &jobs,
        vec![event("doomed", "t"), event("after", "t")],
    )
    .await;
    let first = fetch_until(&*backend, &jobs, &workers, "w", 2, LONG).await;
    let (doomed, after): (Vec<Delivery>, Vec<Delivery>) = first
        .into_iter()
        .partition(|delivery| delivery.event.event.id == "doomed");
    backend
        .reject(&jobs, &workers, &ids(&doomed), "bad", AckDurability::Async)
        .await
        .unwrap();
    backend
        .ack(&jobs, &workers, &ids(&after), AckDurability::Async)
        .await
        .unwrap();
    assert_eq!(backend.redrive(&jobs, &workers, None).await.unwrap(), 1);
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    let again = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
    assert_eq!(
        event_ids(&again),
        ["doomed"],
        "the redriven event was lost in the restart"
    );
    backend.shutdown().await.unwrap();
}

/// A restart does not redeliver everything at once: a lease keeps its
/// deadline (and its delivery id still settles it), a nack delay and a
/// backoff keep their time, and a delayed event its `deliver_at`.
pub async fn redelivery_timing_and_leases_survive_a_restart<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    let mut spec = queue_spec(GroupMode::Queue);
    spec.ack_wait_ms = 60_000;
    spec.backoff_ms = vec![60_000];
    backend.put_group(&jobs, &workers, spec).await.unwrap();
    let mut delayed = event("delayed", "t");
    delayed.event.deliver_at = Some(now_ms() + 60_000);
    publish_all(
        &*backend,
        &jobs,
        vec![
            event("leased", "t"),
            event("nacked", "t"),
            event("backed-off", "t"),
            delayed,
        ],
    )
    .await;
    let taken = fetch_until(&*backend, &jobs, &workers, "w", 3, LONG).await;
    let by_id = |id: &str| -> Vec<Delivery> {
        taken
            .iter()
            .filter(|delivery| delivery.event.event.id == id)
            .cloned()
            .collect()
    };
    backend
        .nack(
            &jobs,
            &workers,
            &ids(&by_id("nacked")),
            Some(Duration::from_secs(60)),
            AckDurability::Async,
        )
        .await
        .unwrap();
    backend
        .nack(
            &jobs,
            &workers,
            &ids(&by_id("backed-off")),
            None,
            AckDurability::Async,
        )
        .await
        .unwrap();
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    let early = backend
        .fetch(&jobs, &workers, fetch_request("w", 10, 500))
        .await
        .unwrap();
    assert!(
        early.deliveries.is_empty(),
        "a restart redelivered {:?} before its time",
        event_ids(&early.deliveries)
    );
    let settled = backend
        .ack(
            &jobs,
            &workers,
            &ids(&by_id("leased")),
            AckDurability::Async,
        )
        .await
        .unwrap();
    assert_eq!(
        settled.acked, 1,
        "a lease from before the restart can still be acked with its delivery id"
    );
    let status = backend.group_status(&jobs, &workers).await.unwrap();
    assert_eq!(
        (status.in_flight, status.pending),
        (0, 3),
        "nacked, backed-off and delayed events wait their time"
    );
    backend.shutdown().await.unwrap();
}

/// `ack_durability` is a group setting that round-trips, and every settle
/// takes a per-call durability: sync ones answer as usual (once
/// persisted), and a sync ack holds across a restart.
pub async fn sync_settles_are_answered_once_persisted<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    let mut spec = queue_spec(GroupMode::Queue);
    spec.ack_wait_ms = 60_000;
    spec.ack_durability = AckDurability::Sync;
    let (info, _) = backend.put_group(&jobs, &workers, spec).await.unwrap();
    assert_eq!(info.spec.ack_durability, AckDurability::Sync);
    let mut spec = info.spec.clone();
    spec.ack_durability = AckDurability::Async;
    backend.put_group(&jobs, &workers, spec).await.unwrap();
    let status = backend.group_status(&jobs, &workers).await.unwrap();
    assert_eq!(status.info.spec.ack_durability, AckDurability::Async);
    publish_all(
        &*backend,
        &jobs,
        (0..4)
            .map(|index| event(&format!("s{index}"), "t"))
            .collect(),
    )
    .await;
    let taken = fetch_until(&*backend, &jobs, &workers, "w", 4, LONG).await;
    let sync = AckDurability::Sync;
    let one = |index: usize| vec![taken[index].delivery_id.clone()];
    let acked = backend.ack(&jobs, &workers, &one(0), sync).await.unwrap();
    let extended = backend
        .extend(&jobs, &workers, &one(1), None, sync)
        .await
        .unwrap();
    let nacked = backend
        .nack(
            &jobs,
            &workers,
            &one(2),
            Some(Duration::from_secs(60)),
            sync,
        )
        .await
        .unwrap();
    let rejected = backend
        .reject(&jobs, &workers, &one(3), "bad", sync)
        .await
        .unwrap();
    assert_eq!(
        [acked.acked, extended.acked, nacked.acked, rejected.acked],
        [1, 1, 1, 1]
    );
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    backend.leave(&jobs, &workers, "w").await.unwrap();
    let again = backend
        .fetch(&jobs, &workers, fetch_request("w", 10, 500))
        .await
        .unwrap();
    assert_eq!(
        event_ids(&again.deliveries),
        [taken[1].event.event.id.clone()],
        "only the extended lease (released by leave) comes back"
    );
    backend.shutdown().await.unwrap();
}

/// Topics, groups and the dedup window survive a restart.
pub async fn topics_groups_and_dedup_survive_a_restart<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 2).await;
    backend
        .put_group(&orders, &group("billing"), queue_spec(GroupMode::Keyed))
        .await
        .unwrap();
    let first = backend
        .publish(&orders, vec![keyed("order-1", "x")])
        .await
        .unwrap();
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    assert_eq!(
        backend
            .describe_topic(&orders)
            .await
            .unwrap()
            .info
            .spec
            .partitions,
        2
    );
    let status = backend
        .group_status(&orders, &group("billing"))
        .await
        .unwrap();
    assert_eq!(status.info.spec.mode, GroupMode::Keyed);
    let again = backend
        .publish(&orders, vec![keyed("order-1", "x")])
        .await
        .unwrap();
    assert!(again[0].duplicate, "dedup forgot the id across a restart");
    assert_eq!(again[0].offset, first[0].offset);
    // Mode cannot change.
    assert!(matches!(
        backend
            .put_group(&orders, &group("billing"), queue_spec(GroupMode::Queue))
            .await,
        Err(Error::GroupConflict { .. })
    ));
    backend.shutdown().await.unwrap();
}

/// What the restart checks compare: publishes and stream appends against
/// the state left before a restart, with `phase` naming the ids that each
/// run uses once.
async fn answers_to_probes(backend: &dyn Backend, orders: &TopicName, phase: &str) -> Vec<String> {
    let mut seen = Vec::new();
    // Ids published before, one published in a stream, a new one.
    let published = backend
        .publish(
            orders,
            vec![
                keyed("p-1", "a"),
                keyed("p-2", "b"),
                keyed(&format!("streamed-{phase}"), "c"),
                keyed(&format!("new-{phase}"), "d"),
            ],
        )
        .await
        .unwrap();
    for result in published {
        let id = result.id.replace(phase, "<phase>");
        let position = if result.id.starts_with("p-") {
            format!("{}/{}", result.partition, result.offset)
        } else {
            String::new()
        };
        seen.push(format!(
            "publish {id}: duplicate {} {position}",
            result.duplicate
        ));
    }
    // Appends against each expectation, to live and deleted streams.
    let probes = [
        ("live", ExpectedVersion::Exact(0)),
        ("live", ExpectedVersion::NoStream),
        ("soft", ExpectedVersion::Any),
        ("hard", ExpectedVersion::Any),
    ];
    for (name, expected) in probes {
        let outcome = backend
            .append(orders, &stream(name), stream_events("probe", 1), expected)
            .await;
        seen.push(match outcome {
            Ok(appended) => format!("append {name}: version {}", appended.first_version),
            Err(Error::VersionConflict { current, .. }) => {
                format!("append {name}: conflict at {current:?}")
            }
            Err(error) => format!("append {name}: {}", error.code()),
        });
    }
    let fresh = stream(&format!("fresh-{phase}"));
    let appended = backend
        .append(
            orders,
            &fresh,
            stream_events(phase, 2),
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    seen.push(format!(
        "append fresh: versions {}..={} duplicate {:?}",
        appended.first_version,
        appended.last_version,
        appended
            .positions
            .iter()
            .map(|position| position.duplicate)
            .collect::<Vec<_>>()
    ));
    seen
}

/// Publish dedup and stream appends answer the same after a restart as
/// before it: the index rebuilt from the log is the index publishes built.
pub async fn publish_dedup_and_stream_appends_answer_the_same_after_a_restart<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 2).await;
    publish_all(
        &*backend,
        &orders,
        vec![keyed("p-1", "a"), keyed("p-2", "b")],
    )
    .await;
    // Stream appends of ids a publish then uses (not deduplicated by id).
    for (name, ids) in [
        ("live", vec!["streamed-before", "streamed-after"]),
        ("soft", vec!["soft-0"]),
        ("hard", vec!["hard-0"]),
    ] {
        let events = ids.iter().map(|id| event(id, "test.stream")).collect();
        backend
            .append(&orders, &stream(name), events, ExpectedVersion::NoStream)
            .await
            .unwrap();
    }
    backend
        .delete_stream(&orders, &stream("soft"), false)
        .await
        .unwrap();
    backend
        .delete_stream(&orders, &stream("hard"), true)
        .await
        .unwrap();
    let before = answers_to_probes(&*backend, &orders, "before").await;
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    let after = answers_to_probes(&*backend, &orders, "after").await;
    assert_eq!(
        before, after,
        "answers before (left) and after (right) a restart"
    );
    backend.shutdown().await.unwrap();
}

/// Turning the dedup window on (or changing it) makes publishes see the ids
/// the log holds within the new window, as a restart would.
pub async fn a_changed_dedup_window_answers_as_after_a_restart<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let mut spec = TopicSpec::new(topic("orders"));
    spec.dedup_window_ms = 0;
    backend.create_topic(spec).await.unwrap();
    let orders = topic("orders");
    publish_all(
        &*backend,
        &orders,
        vec![event("w-1", "t"), event("w-2", "t")],
    )
    .await;
    backend
        .update_topic(
            &orders,
            TopicUpdate {
                dedup_window_ms: Some(120_000),
                ..TopicUpdate::default()
            },
        )
        .await
        .unwrap();
    let before = backend
        .publish(&orders, vec![event("w-1", "t")])
        .await
        .unwrap();
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    let after = backend
        .publish(&orders, vec![event("w-2", "t")])
        .await
        .unwrap();
    assert_eq!(
        (before[0].duplicate, before[0].offset),
        (after[0].duplicate, after[0].offset - 1),
        "an id published before the window was turned on answers the same before and after a restart"
    );
    backend.shutdown().await.unwrap();
}

// --------------------------------------------------------------------- kv --

/// Leases (`crate::lease`): one holder at a time; a holder that stops
/// renewing loses it once it expires, and a release frees it at once.
pub async fn a_lease_has_one_holder_until_it_expires_or_is_given_up<H: Harness>() {
    use crate::lease::Lease;
    let harness = H::start().await;
    let backend = harness.backend();
    let length = Duration::from_millis(400);
    let mut first = Lease::new(Arc::clone(&backend), "timers", length);
    let mut second = Lease::new(Arc::clone(&backend), "timers", length);
    let mut other = Lease::new(Arc::clone(&backend), "collector", length);
    assert!(first.try_hold().await.unwrap());
    assert!(first.is_held());
    assert!(!second.try_hold().await.unwrap(), "held by the first");
    assert!(!second.is_held());
    assert!(other.try_hold().await.unwrap(), "leases are by name");
    assert!(first.try_hold().await.unwrap(), "the holder renews");

    // The first stops renewing (a node that died): the second takes the
    // lease once it has expired, and the first cannot take it back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.try_hold().await.unwrap() {
        assert!(Instant::now() < deadline, "an expired lease is never taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!first.try_hold().await.unwrap(), "a lost lease stays lost");
    assert!(!first.is_held());

    // Given up, it is free at once.
    second.release().await;
    assert!(first.try_hold().await.unwrap());
    first.release().await;
    other.release().await;
    backend.shutdown().await.unwrap();
}

/// `crate::lease::run_while_held`: two nodes run the same task under one
/// lease; it runs on one of them at a time, and moves to the other when the
/// holder shuts down. (A backend no other process can share runs the task
/// at once and holds no lease: nothing to check there but that it runs.)
pub async fn a_task_under_a_lease_runs_on_one_node_at_a_time<H: Harness>() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio_util::sync::CancellationToken;

    let harness = H::start().await;
    let backend = harness.backend();
    if !backend.is_shared() {
        let cancel = CancellationToken::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&ran);
        cancel.cancel();
        crate::lease::run_while_held(
            Arc::clone(&backend),
            "sweep",
            Duration::from_millis(300),
            cancel,
            move |stop| {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    stop.cancelled().await;
                }
            },
        )
        .await;
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the task runs at once");
        assert_eq!(
            backend
                .kv_get(crate::lease::LEASES_BUCKET, "sweep")
                .await
                .unwrap(),
            None,
            "no lease written"
        );
        backend.shutdown().await.unwrap();
        return;
    }
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let starts = Arc::new(Mutex::new(Vec::<usize>::new()));
    let nodes: Vec<(CancellationToken, tokio::task::JoinHandle<()>)> = (0..2)
        .map(|node| {
            let cancel = CancellationToken::new();
            let (running, most, starts) =
                (Arc::clone(&running), Arc::clone(&most), Arc::clone(&starts));
            let runner = crate::lease::run_while_held(
                Arc::clone(&backend),
                "sweep",
                Duration::from_millis(300),
                cancel.clone(),
                move |stop| {
                    let (running, most, starts) =
                        (Arc::clone(&running), Arc::clone(&most), Arc::clone(&starts));
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        starts.lock().unwrap().push(node);
                        stop.cancelled().await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                },
            );
            (cancel, tokio::spawn(runner))
        })
        .collect();
    let wait_for = |count: usize| {
        let starts = Arc::clone(&starts);
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen = starts.lock().unwrap().clone();
                if seen.len() >= count {
                    return seen;
                }
                assert!(
                    Instant::now() < deadline,
                    "the task started {} times",
                    seen.len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let first = wait_for(1).await[0];
    // Several renewal rounds of both nodes pass: still one run.
    let mut lease = crate::lease::Lease::new(Arc::clone(&backend), "sweep", Duration::from_secs(1));
    for _ in 0..5 {
        assert!(
            !lease.try_hold().await.unwrap(),
            "the lease is held throughout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(starts.lock().unwrap().len(), 1, "one node runs the task");

    // The holder shuts down: its task stops and the other node's starts.
    nodes[first].0.cancel();
    let seen = wait_for(2).await;
    assert_eq!(seen[1], 1 - first, "the other node takes over");
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two runs at once");
    for (cancel, runner) in nodes {
        cancel.cancel();
        runner.await.unwrap();
    }
    assert_eq!(running.load(Ordering::SeqCst), 0);
    backend.shutdown().await.unwrap();
}

/// Small durable state: revisions, compare-and-set, delete.
pub async fn kv_compare_and_set<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    assert_eq!(backend.kv_get("jobs", "j1").await.unwrap(), None);
    let first = backend
        .kv_put("jobs", "j1", Bytes::from("pending"), Expect::Absent)
        .await
        .unwrap();
    assert!(matches!(
        backend
            .kv_put("jobs", "j1", Bytes::from("again"), Expect::Absent)
            .await,
        Err(Error::RevisionMismatch {
            current: Some(_),
            ..
        })
    ));
    let second = backend
        .kv_put(
            "jobs",
            "j1",
            Bytes::from("running"),
            Expect::Revision(first),
        )
        .await
        .unwrap();
    assert!(second > first);
    assert!(matches!(
        backend
            .kv_put("jobs", "j1", Bytes::from("stale"), Expect::Revision(first))
            .await,
        Err(Error::RevisionMismatch { .. })
    ));
    let entry = backend.kv_get("jobs", "j1").await.unwrap().unwrap();
    assert_eq!(
        (entry.value, entry.revision),
        (Bytes::from("running"), second)
    );
    backend
        .kv_put("jobs", "j2", Bytes::from("x"), Expect::Any)
        .await
        .unwrap();
    backend
        .kv_put("other", "j3", Bytes::from("x"), Expect::Any)
        .await
        .unwrap();
    assert_eq!(
        backend.kv_keys("jobs", "j", None, 10).await.unwrap(),
        ["j1", "j2"]
    );
    assert_eq!(
        backend.kv_keys("jobs", "j", Some("j1"), 10).await.unwrap(),
        ["j2"]
    );
    assert!(
        backend
            .kv_delete("jobs", "j1", Expect::Revision(second))
            .await
            .unwrap()
    );
    assert!(!backend.kv_delete("jobs", "j1", Expect::Any).await.unwrap());
    backend.shutdown().await.unwrap();
}

/// Batches of writes (either durability) and deletes over several
/// buckets: every entry lands with its own revision, a delete skips what
/// is absent, and both outlast a clean restart.
pub async fn kv_batches_are_written_and_deleted_whole_and_survive_a_restart<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let entry = |bucket: &str, key: &str| {
        (
            bucket.to_owned(),
            key.to_owned(),
            Bytes::from(key.to_owned()),
        )
    };
    backend
        .kv_put_many(
            vec![entry("log", "a1"), entry("index", "a1"), entry("log", "a2")],
            KvDurability::Sync,
        )
        .await
        .unwrap();
    backend
        .kv_put_many(
            vec![entry("log", "b1"), entry("index", "b1")],
            KvDurability::Deferred,
        )
        .await
        .unwrap();
    let revision = async |bucket: &str, key: &str| {
        backend.kv_get(bucket, key).await.unwrap().unwrap().revision
    };
    let (a1, a2, b1) = (
        revision("log", "a1").await,
        revision("log", "a2").await,
        revision("log", "b1").await,
    );
    assert!(a1 < a2 && a2 < b1, "{a1} {a2} {b1}");
    let deleted = backend
        .kv_delete_many(vec![
            ("log".to_owned(), "a1".to_owned()),
            ("index".to_owned(), "a1".to_owned()),
            ("log".to_owned(), "absent".to_owned()),
        ])
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    assert_eq!(
        backend.kv_keys("log", "", None, 10).await.unwrap(),
        ["a2", "b1"]
    );
    assert_eq!(
        backend.kv_keys("index", "", None, 10).await.unwrap(),
        ["b1"]
    );
    assert_eq!(
        backend.kv_get("log", "b1").await.unwrap().unwrap().value,
        Bytes::from("b1")
    );
    backend.shutdown().await.unwrap();
}

// ---------------------------------------------------------------- streams --

fn stream(name: &str) -> StreamId {
    name.parse().unwrap()
}

fn stream_events(prefix: &str, count: usize) -> Vec<EventInput> {
    (0..count)
        .map(|index| event(&format!("{prefix}-{index}"), "test.stream"))
        .collect()
}

async fn stream_ids(
    backend: &dyn Backend,
    topic: &TopicName,
    id: &StreamId,
    from: u64,
    direction: Direction,
    limit: usize,
) -> (Vec<(u64, String)>, Option<u64>) {
    let slice = backend
        .read_stream(topic, id, from, direction, limit)
        .await
        .unwrap();
    let events = slice
        .events
        .into_iter()
        .map(|(version, event)| (version, event.event.id))
        .collect();
    (events, slice.next_version)
}

/// Every expectation, conflicts carrying the current version and changing
/// nothing; the events are ordinary events of the topic, keyed by the stream.
pub async fn stream_appends_honour_each_expectation_and_conflicts_change_nothing<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let topic = make_topic(backend.as_ref(), "orders", 3).await;
    let order = stream("order-1");

    let missing = backend
        .append(
            &topic,
            &order,
            stream_events("e", 1),
            ExpectedVersion::Exists,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(missing, Error::VersionConflict { current: None, .. }),
        "{missing:?}"
    );
    assert_eq!(missing.code(), "version_conflict");
    let created = backend
        .append(
            &topic,
            &order,
            stream_events("a", 2),
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!((created.first_version, created.last_version), (0, 1));
    assert_eq!(created.positions.len(), 2);
    let partition = herald_types::partition_for_key(b"order-1", 3);
    assert!(
        created
            .positions
            .iter()
            .all(|position| position.partition == partition)
    );
    assert_eq!(created.positions[1].offset, created.positions[0].offset + 1);

    for (expected, current) in [
        (ExpectedVersion::NoStream, Some(1)),
        (ExpectedVersion::Exact(0), Some(1)),
        (ExpectedVersion::Exact(7), Some(1)),
    ] {
        match backend
            .append(&topic, &order, stream_events("x", 3), expected)
            .await
        {
            Err(Error::VersionConflict {
                current: got,
                expected: echoed,
                ..
            }) => {
                assert_eq!(got, current, "conflict on {expected}");
                assert_eq!(echoed, expected);
            }
            other => panic!("{expected}: {other:?}"),
        }
    }
    let exists = backend
        .append(
            &topic,
            &order,
            stream_events("b", 1),
            ExpectedVersion::Exists,
        )
        .await
        .unwrap();
    assert_eq!(exists.first_version, 2);
    let exact = backend
        .append(
            &topic,
            &order,
            stream_events("c", 1),
            ExpectedVersion::Exact(2),
        )
        .await
        .unwrap();
    assert_eq!(exact.first_version, 3);
    let any = backend
        .append(&topic, &order, stream_events("d", 2), ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!((any.first_version, any.last_version), (4, 5));

    // The conflicts appended nothing: the stream and the topic hold 6 events.
    let (events, next) =
        stream_ids(backend.as_ref(), &topic, &order, 0, Direction::Forward, 100).await;
    let ids: Vec<&str> = events.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, ["a-0", "a-1", "b-0", "c-0", "d-0", "d-1"]);
    assert_eq!(next, None);
    let read = backend.read(&topic, partition, 0, 100).await.unwrap();
    assert_eq!(read.events.len(), 6, "a conflict appended to the topic");
    assert!(
        read.events
            .iter()
            .all(|event| event.event.key.as_deref() == Some("order-1"))
    );

    let empty = backend
        .append(&topic, &order, Vec::new(), ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert_eq!(empty.code(), "invalid_argument");
    let unknown = backend
        .read_stream(&topic, &stream("order-2"), 0, Direction::Forward, 10)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "stream_not_found");
}

/// Versions are dense from 0 across appends; reads page both ways.
pub async fn stream_versions_are_dense_and_reads_page_forward_and_backward<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let topic = make_topic(backend.as_ref(), "accounts", 2).await;
    let account = stream("acc-7");
    let other = stream("acc-8");
    for round in 0..5 {
        backend
            .append(
                &topic,
                &account,
                stream_events(&format!("r{round}"), 2),
                ExpectedVersion::Any,
            )
            .await
            .unwrap();
        backend
            .append(
                &topic,
                &other,
                stream_events(&format!("o{round}"), 1),
                ExpectedVersion::Any,
            )
            .await
            .unwrap();
    }
    let mut forward = Vec::new();
    let mut from = 0;
    loop {
        let (page, next) = stream_ids(
            backend.as_ref(),
            &topic,
            &account,
            from,
            Direction::Forward,
            3,
        )
        .await;
        assert!(page.len() <= 3);
        forward.extend(page);
        match next {
            Some(next) => from = next,
            None => break,
        }
    }
    let versions: Vec<u64> = forward.iter().map(|(version, _)| *version).collect();
    assert_eq!(versions, (0..10).collect::<Vec<_>>());
    assert_eq!(forward[9].1, "r4-1");

    let mut backward = Vec::new();
    let mut from = u64::MAX;
    loop {
        let (page, next) = stream_ids(
            backend.as_ref(),
            &topic,
            &account,
            from,
            Direction::Backward,
            4,
        )
        .await;
        backward.extend(page);
        match next {
            Some(next) => from = next,
            None => break,
        }
    }
    let mut reversed = forward.clone();
    reversed.reverse();
    assert_eq!(backward, reversed);

    let (middle, next) = stream_ids(
        backend.as_ref(),
        &topic,
        &account,
        6,
        Direction::Backward,
        2,
    )
    .await;
    assert_eq!(
        middle
            .iter()
            .map(|(version, _)| *version)
            .collect::<Vec<_>>(),
        [6, 5]
    );
    assert_eq!(next, Some(4));
    let (past_end, next) = stream_ids(
        backend.as_ref(),
        &topic,
        &account,
        10,
        Direction::Forward,
        5,
    )
    .await;
    assert!(past_end.is_empty() && next.is_none());
    let (others, _) =
        stream_ids(backend.as_ref(), &topic, &other, 0, Direction::Forward, 100).await;
    assert_eq!(others.len(), 5, "streams must not see each other's events");
}

/// Metadata, then soft delete (reads as deleted, events stay in the topic),
/// then hard delete (index gone, events hidden from topic reads).
pub async fn stream_metadata_and_soft_and_hard_delete<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let topic = make_topic(backend.as_ref(), "carts", 1).await;
    let cart = stream("cart-1");
    let before = now_ms();
    backend
        .append(
            &topic,
            &cart,
            stream_events("c", 3),
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    let metadata = backend.stream_metadata(&topic, &cart).await.unwrap();
    assert_eq!(metadata.stream, cart);
    assert_eq!(metadata.version, 2);
    assert!(!metadata.deleted);
    assert!(metadata.created_at >= before - 1_000 && metadata.updated_at >= metadata.created_at);
    assert_eq!(
        backend
            .stream_metadata(&topic, &stream("nope"))
            .await
            .unwrap_err()
            .code(),
        "stream_not_found"
    );
    assert_eq!(
        backend
            .delete_stream(&topic, &stream("nope"), false)
            .await
            .unwrap_err()
            .code(),
        "stream_not_found"
    );

    backend.delete_stream(&topic, &cart, false).await.unwrap();
    let read = backend
        .read_stream(&topic, &cart, 0, Direction::Forward, 10)
        .await
        .unwrap_err();
    assert_eq!(read.code(), "stream_not_found");
    let metadata = backend.stream_metadata(&topic, &cart).await.unwrap();
    assert!(metadata.deleted);
    assert_eq!(metadata.version, 2);
    let append = backend
        .append(&topic, &cart, stream_events("z", 1), ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert_eq!(append.code(), "stream_deleted");
    let in_topic = backend.read(&topic, 0, 0, 100).await.unwrap();
    assert_eq!(
        in_topic.events.len(),
        3,
        "a soft delete keeps the events for consumers"
    );

    // Hard delete of another stream; its neighbours are untouched.
    let (gone, kept) = (stream("cart-2"), stream("cart-3"));
    for id in [&gone, &kept] {
        backend
            .append(
                &topic,
                id,
                stream_events(id.as_str(), 2),
                ExpectedVersion::NoStream,
            )
            .await
            .unwrap();
    }
    backend
        .put_snapshot(&topic, &gone, 1, serde_json::json!({"n": 2}))
        .await
        .unwrap();
    backend.delete_stream(&topic, &gone, true).await.unwrap();
    assert_eq!(
        backend
            .read_stream(&topic, &gone, 0, Direction::Forward, 10)
            .await
            .unwrap_err()
            .code(),
        "stream_not_found"
    );
    assert!(
        backend
            .stream_metadata(&topic, &gone)
            .await
            .unwrap()
            .deleted
    );
    assert_eq!(
        backend
            .get_snapshot(&topic, &gone)
            .await
            .unwrap_err()
            .code(),
        "stream_not_found"
    );
    let (kept_events, _) =
        stream_ids(backend.as_ref(), &topic, &kept, 0, Direction::Forward, 10).await;
    assert_eq!(kept_events.len(), 2);
    // No topic read serves the hard-deleted events; the others keep their
    // offsets (one partition: cart-1 at 0..3, cart-2 at 3..5, cart-3 at 5..7).
    let positions = |events: Vec<StoredEvent>| -> Vec<(String, u64)> {
        events
            .into_iter()
            .map(|event| (event.event.id, event.offset))
            .collect()
    };
    let expected = |ids: &[(&str, u64)]| -> Vec<(String, u64)> {
        ids.iter()
            .map(|(id, offset)| ((*id).to_owned(), *offset))
            .collect()
    };
    let in_topic = backend.read(&topic, 0, 0, 100).await.unwrap();
    assert_eq!(
        positions(in_topic.events),
        expected(&[
            ("c-0", 0),
            ("c-1", 1),
            ("c-2", 2),
            ("cart-3-0", 5),
            ("cart-3-1", 6)
        ]),
        "a hard delete hides the stream's events from topic reads"
    );
    // Soft then hard upgrades, and hides the events too.
    backend.delete_stream(&topic, &cart, true).await.unwrap();
    assert!(
        backend
            .stream_metadata(&topic, &cart)
            .await
            .unwrap()
            .deleted
    );
    let in_topic = backend.read(&topic, 0, 0, 100).await.unwrap();
    assert_eq!(
        positions(in_topic.events),
        expected(&[("cart-3-0", 5), ("cart-3-1", 6)])
    );
}

/// Snapshots: none at first, replaced by later ones, never past the version.
pub async fn stream_snapshots_are_kept_up_to_the_stream_version<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let topic = make_topic(backend.as_ref(), "ledgers", 1).await;
    let ledger = stream("ledger-1");
    assert_eq!(
        backend
            .put_snapshot(&topic, &ledger, 0, serde_json::json!({}))
            .await
            .unwrap_err()
            .code(),
        "stream_not_found"
    );
    backend
        .append(
            &topic,
            &ledger,
            stream_events("l", 4),
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!(backend.get_snapshot(&topic, &ledger).await.unwrap(), None);
    backend
        .put_snapshot(&topic, &ledger, 1, serde_json::json!({"balance": 10}))
        .await
        .unwrap();
    backend
        .put_snapshot(&topic, &ledger, 3, serde_json::json!({"balance": 25}))
        .await
        .unwrap();
    let past = backend
        .put_snapshot(&topic, &ledger, 4, serde_json::json!({"balance": 99}))
        .await
        .unwrap_err();
    assert_eq!(past.code(), "invalid_argument");
    let snapshot = backend
        .get_snapshot(&topic, &ledger)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.version, 3);
    assert_eq!(snapshot.state, serde_json::json!({"balance": 25}));
}

/// Streams, their versions, deletions and snapshots survive a restart, and
/// appends continue at the next version.
pub async fn streams_survive_a_restart<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let topic = make_topic(backend.as_ref(), "shipments", 2).await;
    for index in 0..20 {
        let id = stream(&format!("ship-{index}"));
        backend
            .append(
                &topic,
                &id,
                stream_events(&format!("s{index}"), index % 3 + 1),
                ExpectedVersion::NoStream,
            )
            .await
            .unwrap();
    }
    backend
        .put_snapshot(&topic, &stream("ship-2"), 2, serde_json::json!("folded"))
        .await
        .unwrap();
    backend
        .delete_stream(&topic, &stream("ship-4"), false)
        .await
        .unwrap();
    backend
        .delete_stream(&topic, &stream("ship-5"), true)
        .await
        .unwrap();
    drop(backend);
    let harness = harness.restart().await;
    let backend = harness.backend();
    for index in 0..20 {
        let id = stream(&format!("ship-{index}"));
        if index == 4 || index == 5 {
            assert!(backend.stream_metadata(&topic, &id).await.unwrap().deleted);
            assert_eq!(
                backend
                    .read_stream(&topic, &id, 0, Direction::Forward, 10)
                    .await
                    .unwrap_err()
                    .code(),
                "stream_not_found"
            );
            continue;
        }
        let count = (index % 3 + 1) as u64;
        let (events, _) =
            stream_ids(backend.as_ref(), &topic, &id, 0, Direction::Forward, 10).await;
        assert_eq!(events.len() as u64, count, "{id}");
        let next = backend
            .append(
                &topic,
                &id,
                stream_events("after", 1),
                ExpectedVersion::Exact(count - 1),
            )
            .await
            .unwrap();
        assert_eq!(next.first_version, count);
    }
    let snapshot = backend
        .get_snapshot(&topic, &stream("ship-2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (snapshot.version, snapshot.state),
        (2, serde_json::json!("folded"))
    );
}

/// 32 writers race on one stream, each appending with the exact version it
/// read and retrying on conflict: exactly one winner per version, no gaps,
/// no duplicates, and every loser is told the current version.
pub async fn writers_racing_on_one_stream_get_one_winner_per_version<H: Harness>() {
    const WRITERS: usize = 32;
    const APPENDS_EACH: usize = 8;
    let harness = H::start().await;
    let backend = harness.backend();
    let topic = make_topic(backend.as_ref(), "race", 4).await;
    let id = stream("contested");
    backend
        .append(
            &topic,
            &id,
            stream_events("seed", 1),
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let (backend, topic, id) = (Arc::clone(&backend), topic.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut conflicts = 0u64;
            let mut version = backend.stream_metadata(&topic, &id).await.unwrap().version;
            while won.len() < APPENDS_EACH {
                let event = event(&format!("w{writer}-{}", won.len()), "test.race");
                match backend
                    .append(&topic, &id, vec![event], ExpectedVersion::Exact(version))
                    .await
                {
                    Ok(result) => {
                        assert_eq!(result.first_version, version + 1);
                        won.push((result.first_version, format!("w{writer}-{}", won.len())));
                        version = result.last_version;
                    }
                    Err(Error::VersionConflict { current, .. }) => {
                        let current = current.expect("the stream exists");
                        assert!(current > version, "a loser must learn a newer version");
                        let actual = backend.stream_metadata(&topic, &id).await.unwrap().version;
                        assert!(actual >= current, "the reported version went backwards");
                        conflicts += 1;
                        version = current;
                    }
                    Err(other) => panic!("writer {writer}: {other:?}"),
                }
            }
            (won, conflicts)
        }));
    }
    let mut winners: BTreeMap<u64, String> = BTreeMap::new();
    let mut conflicts = 0;
    for task in tasks {
        let (won, lost) = task.await.unwrap();
        conflicts += lost;
        for (version, event_id) in won {
            assert!(
                winners.insert(version, event_id).is_none(),
                "version {version} won twice"
            );
        }
    }
    let total = (WRITERS * APPENDS_EACH) as u64;
    assert_eq!(
        winners.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "gaps"
    );
    assert!(conflicts > 0, "the writers never raced");
    let mut stored = Vec::new();
    let mut from = 0;
    loop {
        let (page, next) =
            stream_ids(backend.as_ref(), &topic, &id, from, Direction::Forward, 100).await;
        stored.extend(page);
        match next {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(stored.len() as u64, total + 1, "duplicates or losses");
    for (version, event_id) in stored.into_iter().skip(1) {
        assert_eq!(
            winners.get(&version),
            Some(&event_id),
            "version {version} holds a loser"
        );
    }
}

// ----------------------------------------------------------- cancellation --
//
// Each check drops an operation at each of its await points in turn
// (`cancel::drop_at_each_await`) and then checks that it either completed
// or left nothing behind, and that a retry answers as it normally would.

/// The most polls a cancellation check drives one operation through
/// (every count up to 64, then doubling: `cancel::drop_at_each_await`).
const MAX_POLLS: usize = 4096;

/// Every event of `topic`, by id, with its positions.
async fn stored_positions(
    backend: &dyn Backend,
    topic: &TopicName,
) -> BTreeMap<String, Vec<(u32, u64)>> {
    let partitions = backend
        .describe_topic(topic)
        .await
        .unwrap()
        .partition_info
        .len() as u32;
    let mut stored: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for partition in 0..partitions {
        let mut from = 0;
        loop {
            let read = backend.read(topic, partition, from, 1_000).await.unwrap();
            if read.events.is_empty() {
                break;
            }
            from = read.next_offset;
            for event in read.events {
                stored
                    .entry(event.event.id)
                    .or_default()
                    .push((event.partition, event.offset));
            }
        }
    }
    stored
}

/// Awaits `operation`, failing the check if it has not answered within
/// [`LONG`]: it hangs on something a cancelled call left behind.
async fn answers<T>(what: &str, operation: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LONG, operation)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {LONG:?}: it hangs"))
}

fn polls_of<T>(outcome: &crate::cancel::Outcome<T>) -> usize {
    match outcome {
        crate::cancel::Outcome::Dropped(polls) | crate::cancel::Outcome::Finished(polls, _) => {
            *polls
        }
    }
}

/// A publish dropped at any await point leaves each event stored at most
/// once, and re-publishing it answers in its normal time: with the original
/// position if it was appended, as a new append if not.
pub async fn a_publish_dropped_at_any_await_is_stored_once_and_a_republish_answers<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let mut spec = TopicSpec::new(topic("orders"));
    spec.partitions = 2;
    spec.fsync = Fsync::Always;
    backend.create_topic(spec).await.unwrap();
    let orders = topic("orders");
    let batch = |polls: usize| {
        vec![
            keyed(&format!("dropped-{polls}-a"), "a"),
            keyed(&format!("dropped-{polls}-b"), "b"),
            keyed(&format!("dropped-{polls}-c"), "a"),
        ]
    };
    let polls = crate::cancel::drop_at_each_await(
        MAX_POLLS,
        |polls| {
            let (backend, orders, events) = (Arc::clone(&backend), orders.clone(), batch(polls));
            async move { async move { backend.publish(&orders, events).await } }
        },
        |outcome| {
            let (backend, orders, polls) =
                (Arc::clone(&backend), orders.clone(), polls_of(&outcome));
            if let crate::cancel::Outcome::Finished(_, results) = outcome {
                assert!(results.unwrap().iter().all(|result| !result.duplicate));
            }
            async move {
                let again = answers(
                    "a re-publish after a cancelled publish",
                    backend.publish(&orders, batch(polls)),
                )
                .await
                .unwrap();
                let stored = stored_positions(&*backend, &orders).await;
                for result in again {
                    assert_eq!(
                        stored.get(&result.id).cloned().unwrap_or_default(),
                        vec![(result.partition, result.offset)],
                        "{} must be stored once, where the re-publish says",
                        result.id
                    );
                }
            }
        },
    )
    .await;
    assert!(polls > 1, "the publish never reached an await point");
    backend.shutdown().await.unwrap();
}

/// A stream append dropped at any await point appended all its events or
/// none, and the index agrees with the topic.
pub async fn a_stream_append_dropped_at_any_await_is_all_or_nothing<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 2).await;
    let stream = |polls: usize| -> StreamId { format!("order-{polls}").parse().unwrap() };
    let events = |polls: usize| {
        (0..3)
            .map(|index| event(&format!("s{polls}-{index}"), "order.changed"))
            .collect::<Vec<_>>()
    };
    crate::cancel::drop_at_each_await(
        MAX_POLLS,
        |polls| {
            let (backend, orders) = (Arc::clone(&backend), orders.clone());
            let (stream, events) = (stream(polls), events(polls));
            async move {
                async move {
                    backend
                        .append(&orders, &stream, events, ExpectedVersion::NoStream)
                        .await
                }
            }
        },
        |outcome| {
            let (backend, orders, polls) =
                (Arc::clone(&backend), orders.clone(), polls_of(&outcome));
            if let crate::cancel::Outcome::Finished(_, result) = outcome {
                assert_eq!(result.unwrap().last_version, 2);
            }
            async move {
                let retry = answers(
                    "a retried stream append",
                    backend.append(
                        &orders,
                        &stream(polls),
                        events(polls),
                        ExpectedVersion::NoStream,
                    ),
                )
                .await;
                match retry {
                    // Nothing was appended: the retry appended it all.
                    Ok(appended) => assert_eq!(appended.last_version, 2),
                    // All of it was.
                    Err(Error::VersionConflict { current, .. }) => assert_eq!(current, Some(2)),
                    Err(error) => panic!("unexpected: {error}"),
                }
                let slice = backend
                    .read_stream(&orders, &stream(polls), 0, Direction::Forward, 10)
                    .await
                    .unwrap();
                assert_eq!(slice.events.len(), 3);
                let stored = stored_positions(&*backend, &orders).await;
                for index in 0..3 {
                    let id = format!("s{polls}-{index}");
                    assert_eq!(stored.get(&id).map(Vec::len), Some(1), "{id} stored once");
                }
            }
        },
    )
    .await;
    backend.shutdown().await.unwrap();
}

/// A hard delete dropped at any await point deleted the stream (its events
/// unreadable) or left it whole, and a retried delete completes it.
pub async fn a_hard_delete_dropped_at_any_await_is_all_or_nothing<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let orders = make_topic(&*backend, "orders", 1).await;
    let stream = |polls: usize| -> StreamId { format!("gone-{polls}").parse().unwrap() };
    let id = |polls: usize| format!("gone-{polls}-0");
    crate::cancel::drop_at_each_await(
        MAX_POLLS,
        |polls| {
            let (backend, orders, stream, id) = (
                Arc::clone(&backend),
                orders.clone(),
                stream(polls),
                id(polls),
            );
            async move {
                backend
                    .append(
                        &orders,
                        &stream,
                        vec![event(&id, "t")],
                        ExpectedVersion::NoStream,
                    )
                    .await
                    .unwrap();
                async move { backend.delete_stream(&orders, &stream, true).await }
            }
        },
        |outcome| {
            let (backend, orders, polls) =
                (Arc::clone(&backend), orders.clone(), polls_of(&outcome));
            if let crate::cancel::Outcome::Finished(_, result) = outcome {
                result.unwrap();
            }
            async move {
                let readable = stored_positions(&*backend, &orders)
                    .await
                    .contains_key(&id(polls));
                let metadata = backend
                    .stream_metadata(&orders, &stream(polls))
                    .await
                    .unwrap();
                assert_eq!(
                    readable, !metadata.deleted,
                    "deleted: {}, its event readable: {readable}",
                    metadata.deleted
                );
                answers(
                    "a retried hard delete",
                    backend.delete_stream(&orders, &stream(polls), true),
                )
                .await
                .unwrap();
                assert!(
                    !stored_positions(&*backend, &orders)
                        .await
                        .contains_key(&id(polls))
                );
            }
        },
    )
    .await;
    backend.shutdown().await.unwrap();
}

/// A queue group on `jobs` whose dead letters are copied to `jobs-dead`,
/// with a long lease.
async fn dead_lettering_group(backend: &dyn Backend) -> (TopicName, TopicName, GroupName) {
    let dead = make_topic(backend, "jobs-dead", 1).await;
    let mut spec = TopicSpec::new(topic("jobs"));
    spec.dead_letter_topic = Some(dead.clone());
    backend.create_topic(spec).await.unwrap();
    let workers = group("workers");
    let mut group_spec = queue_spec(GroupMode::Queue);
    group_spec.ack_wait_ms = 60_000;
    backend
        .put_group(&topic("jobs"), &workers, group_spec)
        .await
        .unwrap();
    (topic("jobs"), dead, workers)
}

/// Publishes `id` to `topic` and leases it to member `w` of `group`;
/// returns the delivery ids.
async fn lease_one(
    backend: &dyn Backend,
    topic: &TopicName,
    group: &GroupName,
    id: &str,
) -> Vec<String> {
    publish_all(backend, topic, vec![event(id, "t")]).await;
    let leased = fetch_until(backend, topic, group, "w", 1, LONG).await;
    assert_eq!(event_ids(&leased), [id]);
    ids(&leased)
}

/// Whether the group lists a dead letter of event `id`.
async fn dead_letter_listed(
    backend: &dyn Backend,
    topic: &TopicName,
    group: &GroupName,
    id: &str,
) -> bool {
    backend
        .dead_letters(topic, group, 1_000)
        .await
        .unwrap()
        .iter()
        .any(|letter| {
            letter
                .event
                .as_ref()
                .is_some_and(|event| event.event.id == id)
        })
}

/// A reject dropped at any await point dead-lettered the event — in the
/// group's list and as a copy on the dead-letter topic, both — or left it
/// leased; never one without the other.
pub async fn a_reject_dropped_at_any_await_records_the_dead_letter_and_its_copy<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let (jobs, dead, workers) = dead_lettering_group(&*backend).await;
    crate::cancel::drop_at_each_await(
        MAX_POLLS,
        |polls| {
            let (backend, jobs, workers) = (Arc::clone(&backend), jobs.clone(), workers.clone());
            async move {
                let leased = lease_one(&*backend, &jobs, &workers, &format!("bad-{polls}")).await;
                async move { backend.reject(&jobs, &workers, &leased, "schema mismatch", AckDurability::Async).await }
            }
        },
        |outcome| {
            let (backend, jobs, dead, workers, polls) = (
                Arc::clone(&backend),
                jobs.clone(),
                dead.clone(),
                workers.clone(),
                polls_of(&outcome),
            );
            async move {
                let id = format!("bad-{polls}");
                let dlid = herald_types::ExtensionValue::String(id.clone());
                // The copy is published after the record: wait for it.
                let deadline = Instant::now() + LONG;
                loop {
                    let listed = dead_letter_listed(&*backend, &jobs, &workers, &id).await;
                    let copied = backend
                        .read(&dead, 0, 0, 10_000)
                        .await
                        .unwrap()
                        .events
                        .iter()
                        .any(|copy| copy.event.extensions.get("dlid") == Some(&dlid));
                    if listed && copied {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{id}: dead letter listed: {listed}, copied to the dead-letter topic: {copied}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        },
    )
    .await;
    backend.shutdown().await.unwrap();
}

/// A redrive dropped at any await point left each dead letter either in the
/// list or delivered again: never neither.
pub async fn a_redrive_dropped_at_any_await_loses_no_dead_letter<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let (jobs, _, workers) = dead_lettering_group(&*backend).await;
    crate::cancel::drop_at_each_await(
        MAX_POLLS,
        |polls| {
            let (backend, jobs, workers) = (Arc::clone(&backend), jobs.clone(), workers.clone());
            async move {
                let leased = lease_one(&*backend, &jobs, &workers, &format!("back-{polls}")).await;
                backend
                    .reject(&jobs, &workers, &leased, "not now", AckDurability::Async)
                    .await
                    .unwrap();
                async move { backend.redrive(&jobs, &workers, None).await }
            }
        },
        |outcome| {
            let (backend, jobs, workers, polls) = (
                Arc::clone(&backend),
                jobs.clone(),
                workers.clone(),
                polls_of(&outcome),
            );
            async move {
                let id = format!("back-{polls}");
                if dead_letter_listed(&*backend, &jobs, &workers, &id).await {
                    // Not redriven: a retry brings it back.
                    answers("a retried redrive", backend.redrive(&jobs, &workers, None))
                        .await
                        .unwrap();
                }
                let delivered = fetch_until(&*backend, &jobs, &workers, "w", 1, LONG).await;
                assert_eq!(
                    event_ids(&delivered),
                    std::slice::from_ref(&id),
                    "{id} is neither a dead letter nor delivered again"
                );
                backend
                    .ack(&jobs, &workers, &ids(&delivered), AckDurability::Async)
                    .await
                    .unwrap();
            }
        },
    )
    .await;
    backend.shutdown().await.unwrap();
}

/// A leave dropped at any await point returned the member's leases or kept
/// them; a retried leave returns them.
pub async fn a_leave_dropped_at_any_await_returns_the_leases_or_keeps_them<H: Harness>() {
    let harness = H::start().await;
    let backend = harness.backend();
    let jobs = make_topic(&*backend, "jobs", 1).await;
    let workers = group("workers");
    let mut spec = queue_spec(GroupMode::Queue);
    spec.ack_wait_ms = 60_000;
    backend.put_group(&jobs, &workers, spec).await.unwrap();
    crate::cancel::drop_at_each_await(
        MAX_POLLS,
        |polls| {
            let (backend, jobs, workers) = (Arc::clone(&backend), jobs.clone(), workers.clone());
            async move {
                lease_one(&*backend, &jobs, &workers, &format!("held-{polls}")).await;
                async move { backend.leave(&jobs, &workers, "w").await }
            }
        },
        |outcome| {
            let (backend, jobs, workers, polls) = (
                Arc::clone(&backend),
                jobs.clone(),
                workers.clone(),
                polls_of(&outcome),
            );
            async move {
                answers("a retried leave", backend.leave(&jobs, &workers, "w"))
                    .await
                    .unwrap();
                let taken = fetch_until(&*backend, &jobs, &workers, "other", 1, LONG).await;
                assert_eq!(event_ids(&taken), [format!("held-{polls}")]);
                backend
                    .ack(&jobs, &workers, &ids(&taken), AckDurability::Async)
                    .await
                    .unwrap();
            }
        },
    )
    .await;
    backend.shutdown().await.unwrap();
}

/// What a backend serves of topics and groups: each topic with its dead-letter
/// topic and dedup window, and its groups with their ack waits.
async fn admin_view(backend: &dyn Backend) -> Vec<String> {
    let mut view = Vec::new();
    for info in backend.list_topics().await.unwrap() {
        let spec = &info.spec;
        view.push(format!(
            "topic {} dead letters {:?} window {}",
            spec.name, spec.dead_letter_topic, spec.dedup_window_ms
        ));
        for name in ["g1", "g2", "g3"] {
            if let Ok(status) = backend.group_status(&spec.name, &group(name)).await {
                view.push(format!(
                    "group {}/{name} ack wait {}",
                    spec.name, status.info.spec.ack_wait_ms
                ));
            }
        }
    }
    view
}

/// Topic and group administration dropped at any await point: what the
/// backend serves afterwards is what it serves after a restart (the change
/// was made in both memory and storage, or in neither).
pub async fn administration_dropped_at_any_await_is_the_same_after_a_restart<H: Harness>() {
    let harness = Arc::new(tokio::sync::Mutex::new(Some(H::start().await)));
    let backend = || {
        let harness = Arc::clone(&harness);
        async move { harness.lock().await.as_ref().unwrap().backend() }
    };
    make_topic(&*backend().await, "dead", 1).await;
    // Each round drops one kind of change at the round's poll count.
    type Change = fn(
        Arc<dyn Backend>,
        usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    let changes: [(&str, Change); 5] = [
        ("create topic", |backend, round| {
            Box::pin(async move {
                let mut spec = TopicSpec::new(topic(&format!("t{round}")));
                spec.dead_letter_topic = Some(topic("dead"));
                let _ = backend.create_topic(spec).await;
            })
        }),
        ("update topic", |backend, round| {
            Box::pin(async move {
                let update = TopicUpdate {
                    dead_letter_topic: Some(None),
                    dedup_window_ms: Some(1_000 + round as u64),
                    ..TopicUpdate::default()
                };
                let _ = backend.update_topic(&topic("dead"), update).await;
            })
        }),
        ("put group", |backend, round| {
            Box::pin(async move {
                let mut spec = queue_spec(GroupMode::Queue);
                spec.ack_wait_ms = 1_000 + round as u64;
                let _ = backend.put_group(&topic("dead"), &group("g1"), spec).await;
            })
        }),
        ("delete group", |backend, _| {
            Box::pin(async move {
                let _ = backend.delete_group(&topic("dead"), &group("g1")).await;
            })
        }),
        ("delete topic", |backend, round| {
            Box::pin(async move {
                let _ = backend
                    .delete_topic(&topic(&format!("t{}", round.saturating_sub(1))))
                    .await;
            })
        }),
    ];
    for (name, change) in changes {
        crate::cancel::drop_at_each_await(
            MAX_POLLS,
            |round| {
                let backend = backend();
                async move {
                    let backend = backend.await;
                    // What the deletes remove exists first.
                    let mut spec = TopicSpec::new(topic(&format!("t{}", round.saturating_sub(1))));
                    spec.dead_letter_topic = Some(topic("dead"));
                    let _ = backend.create_topic(spec).await;
                    let _ = backend
                        .put_group(&topic("dead"), &group("g1"), queue_spec(GroupMode::Queue))
                        .await;
                    change(backend, round)
                }
            },
            |_| {
                let harness = Arc::clone(&harness);
                async move {
                    let mut slot = harness.lock().await;
                    let current = slot.take().unwrap();
                    // A change a dropped call finishes on its own may still
                    // run: changes are made one at a time, so one more (that
                    // changes nothing) returns after it.
                    let exists = current
                        .backend()
                        .create_topic(TopicSpec::new(topic("dead")))
                        .await;
                    assert!(
                        matches!(exists, Err(Error::TopicExists { .. })),
                        "{exists:?}"
                    );
                    let before = admin_view(&*current.backend()).await;
                    let restarted = current.restart().await;
                    let after = admin_view(&*restarted.backend()).await;
                    *slot = Some(restarted);
                    assert_eq!(
                        before, after,
                        "{name}: served before (left) and after (right) a restart"
                    );
                }
            },
        )
        .await;
    }
    let harness = harness.lock().await.take().unwrap();
    harness.backend().shutdown().await.unwrap();
}
