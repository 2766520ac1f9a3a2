//! `herald-groups` over NATS partitions: the group state machines the
//! embedded backend runs, reading a NATS topic through
//! `NatsBackend::partitions` — the base the NATS backend's groups build on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_backend::{
    Backend, Events, FetchRequest, GroupInfo, GroupMode, GroupSpec, StartPosition, TopicSpec,
    Topics,
};
use herald_groups::{Budget, GroupRuntime, Settle, Source};
use herald_types::{EventInput, TopicName};

use crate::{Server, connect, keyed, nats_available, now_ms};

fn group(mode: GroupMode) -> GroupRuntime {
    let mut spec = GroupSpec::new(mode);
    spec.start = StartPosition::Earliest;
    let info = GroupInfo {
        name: "workers".parse().unwrap(),
        spec,
        created_at: now_ms(),
    };
    GroupRuntime::new(
        "orders/workers".into(),
        info,
        Budget::default(),
        &[0, 0],
        None,
    )
}

async fn fetch(
    group: &GroupRuntime,
    source: &dyn Source,
    member: &str,
    wait_ms: u64,
) -> Vec<herald_backend::Delivery> {
    let request = FetchRequest {
        member: member.into(),
        max: 16,
        wait_ms,
    };
    group
        .fetch(source, &request, now_ms)
        .await
        .unwrap()
        .0
        .deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_and_queue_groups_run_over_nats_partitions() {
    if !nats_available() {
        return;
    }
    let server = Server::start();
    let backend = connect(&server.url).await;
    let orders: TopicName = "orders".parse().unwrap();
    let mut spec = TopicSpec::new(orders.clone());
    spec.partitions = 2;
    backend.create_topic(spec).await.unwrap();
    let events: Vec<EventInput> = (0..60)
        .map(|index| keyed(&format!("e{index}"), &format!("k{}", index % 6)))
        .collect();
    backend.publish(&orders, events).await.unwrap();
    let source = backend.partitions(&orders).await.unwrap();
    assert_eq!(source.end_offsets().iter().sum::<u64>(), 60);

    // Keyed: two members, each key in publish order, one in flight per key;
    // everything once.
    let keyed_group = group(GroupMode::Keyed);
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered < 60 {
        assert!(
            Instant::now() < deadline,
            "only {delivered} of 60 delivered"
        );
        for member in ["m1", "m2"] {
            let deliveries = fetch(&keyed_group, &*source, member, 100).await;
            let mut keys_in_batch = std::collections::BTreeSet::new();
            for delivery in &deliveries {
                let key = delivery.event.event.key.clone().unwrap();
                assert!(
                    keys_in_batch.insert(key.clone()),
                    "two of key {key} in flight"
                );
                let index: u32 = delivery.event.event.id[1..].parse().unwrap();
                seen.entry(key).or_default().push(index);
            }
            delivered += deliveries.len();
            let ids: Vec<String> = deliveries.into_iter().map(|d| d.delivery_id).collect();
            let now = now_ms();
            let (outcome, _) =
                keyed_group.settle(&ids, Settle::Ack, |state, id| (state.ack(id, now), None));
            assert_eq!(outcome.acked as usize, ids.len());
        }
    }
    for (key, indexes) in &seen {
        let mut sorted = indexes.clone();
        sorted.sort_unstable();
        assert_eq!(indexes, &sorted, "key {key} out of order");
        assert_eq!(indexes.len(), 10, "key {key}");
    }

    // Queue: a long poll at the end wakes for an event published meanwhile.
    let queue_group = group(GroupMode::Queue);
    let mut drained = 0;
    while drained < 60 {
        let deliveries = fetch(&queue_group, &*source, "m1", 100).await;
        drained += deliveries.len();
        let ids: Vec<String> = deliveries.into_iter().map(|d| d.delivery_id).collect();
        let now = now_ms();
        queue_group.settle(&ids, Settle::Ack, |state, id| (state.ack(id, now), None));
    }
    // Caught up, it long-polls (60 s each) while events arrive one at a
    // time: a poll that slept through one would miss the 30 s bound.
    const LATE: usize = 20;
    let publisher = {
        let (backend, orders) = (Arc::clone(&backend), orders.clone());
        tokio::spawn(async move {
            for index in 0..LATE {
                let late = keyed(&format!("late{index}"), "k0");
                backend.publish(&orders, vec![late]).await.unwrap();
            }
        })
    };
    let woken = tokio::time::timeout(Duration::from_secs(30), async {
        let mut received = 0;
        while received < LATE {
            let deliveries = fetch(&queue_group, &*source, "m1", 60_000).await;
            received += deliveries.len();
            let ids: Vec<String> = deliveries.into_iter().map(|d| d.delivery_id).collect();
            let now = now_ms();
            queue_group.settle(&ids, Settle::Ack, |state, id| (state.ack(id, now), None));
        }
        received
    })
    .await;
    publisher.await.unwrap();
    assert_eq!(
        woken.ok(),
        Some(LATE),
        "a long poll slept through new events"
    );
    println!(
        "groups over NATS: 60 keyed deliveries in order per key over 2 members, 60 queue deliveries, {LATE} more by long polls woken as they were stored"
    );
    backend.shutdown().await.unwrap();
}

/// A state write whose answer was lost (it landed, the owner never heard)
/// leaves the lease a revision ahead of what the owner expects; the lease
/// still names this node, so the owner writes on from there instead of
/// taking itself for deposed and voiding its changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_write_whose_answer_was_lost_does_not_depose_the_owner() {
    use herald_backend::{AckDurability, Groups};
    if !nats_available() {
        return;
    }
    let server = Server::start();
    let backend = connect(&server.url).await;
    let orders: TopicName = "orders".parse().unwrap();
    backend
        .create_topic(TopicSpec::new(orders.clone()))
        .await
        .unwrap();
    let workers = "workers".parse().unwrap();
    let mut spec = GroupSpec::new(GroupMode::Queue);
    spec.start = StartPosition::Earliest;
    backend.put_group(&orders, &workers, spec).await.unwrap();
    backend
        .publish(&orders, vec![keyed("e1", "k"), keyed("e2", "k")])
        .await
        .unwrap();
    let request = |max| FetchRequest {
        member: "m".into(),
        max,
        wait_ms: 2_000,
    };
    let first = backend.fetch(&orders, &workers, request(1)).await.unwrap();
    assert_eq!(first.deliveries.len(), 1);

    // The lease written again as this node wrote it: what a write of its
    // own whose acknowledgement never arrived leaves behind.
    let client = async_nats::connect(&server.url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    // `Names::kv_subject("groups.owners", "orders/workers")` under the
    // default prefix: `.` in a bucket name is `_d`, `/` in a key `%2F`.
    let subject = "herald.kv.groups_downers.orders%2Fworkers";
    let lease = jetstream
        .get_stream("herald-kv")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(subject)
        .await
        .unwrap();
    jetstream
        .publish(subject, lease.payload)
        .await
        .unwrap()
        .await
        .unwrap();

    // The ack is confirmed once persisted: that write finds the lease moved.
    let ids = [first.deliveries[0].delivery_id.clone()];
    backend
        .ack(&orders, &workers, &ids, AckDurability::Sync)
        .await
        .unwrap();
    backend.shutdown().await.unwrap();

    let backend = connect(&server.url).await;
    let next = backend.fetch(&orders, &workers, request(10)).await.unwrap();
    let ids: Vec<&str> = next
        .deliveries
        .iter()
        .map(|delivery| delivery.event.event.id.as_str())
        .collect();
    assert_eq!(ids, ["e2"], "the acked event stays acked");
    backend.shutdown().await.unwrap();
}
