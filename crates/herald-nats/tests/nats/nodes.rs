//! Several Herald nodes (backends) on one NATS: what one does, the others
//! see; racing writers on different nodes get one winner per version.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_backend::{
    Backend, Error, Expect, ExpectedVersion, RetentionSpec, TopicSpec, TopicUpdate,
};
use herald_types::{StreamId, TopicName};

use crate::{Server, connect, keyed, nats_available};

/// Waits (up to 10 s) until `check` holds.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_topics_events_streams_and_state() {
    if !nats_available() {
        return;
    }
    let server = Server::start();
    let mut nodes: Vec<Arc<dyn Backend>> = Vec::new();
    for _ in 0..3 {
        nodes.push(connect(&server.url).await as Arc<dyn Backend>);
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let orders: TopicName = "orders".parse().unwrap();
    let mut spec = TopicSpec::new(orders.clone());
    spec.partitions = 2;
    a.create_topic(spec.clone()).await.unwrap();
    assert!(matches!(
        b.create_topic(spec).await,
        Err(Error::TopicExists { .. })
    ));
    assert_eq!(c.list_topics().await.unwrap().len(), 1);

    // Published on A, read on B and C; a re-publish on B is caught.
    let published = a
        .publish(
            &orders,
            (0..10)
                .map(|i| keyed(&format!("e{i}"), &format!("k{}", i % 3)))
                .collect(),
        )
        .await
        .unwrap();
    let mut read = 0;
    for node in [b, c] {
        for partition in 0..2 {
            let events = node.read(&orders, partition, 0, 100).await.unwrap().events;
            for stored in &events {
                let original = published.iter().find(|p| p.id == stored.event.id).unwrap();
                assert_eq!(
                    (original.partition, original.offset),
                    (partition, stored.offset)
                );
            }
            read += events.len();
        }
    }
    assert_eq!(read, 20, "each of B and C reads the 10 events");
    let again = b.publish(&orders, vec![keyed("e3", "k0")]).await.unwrap();
    let original = published.iter().find(|p| p.id == "e3").unwrap();
    assert!(again[0].duplicate);
    assert_eq!(
        (again[0].partition, again[0].offset),
        (original.partition, original.offset)
    );

    // A waiter on C wakes for a publish on A.
    let waiter = {
        let (c, orders) = (Arc::clone(c), orders.clone());
        let partition = original.partition;
        let end =
            c.describe_topic(&orders).await.unwrap().partition_info[partition as usize].end_offset;
        tokio::spawn(async move {
            c.wait_for(&orders, partition, end, Duration::from_secs(30))
                .await
                .unwrap()
                > end
        })
    };
    a.publish(&orders, vec![keyed("late", "k0")]).await.unwrap();
    assert!(waiter.await.unwrap(), "the waiter on C saw A's event");

    // A change on A reaches B, which has the topic cached.
    a.update_topic(
        &orders,
        TopicUpdate {
            retention: Some(RetentionSpec {
                max_age_ms: Some(86_400_000),
                ..RetentionSpec::default()
            }),
            ..TopicUpdate::default()
        },
    )
    .await
    .unwrap();
    until("B sees A's retention change", || async {
        b.describe_topic(&orders)
            .await
            .unwrap()
            .info
            .spec
            .retention
            .max_age_ms
            == Some(86_400_000)
    })
    .await;

    // Key-value compare-and-set across nodes.
    let first = a
        .kv_put("jobs", "j1", Bytes::from("a"), Expect::Absent)
        .await
        .unwrap();
    assert!(matches!(
        b.kv_put("jobs", "j1", Bytes::from("b"), Expect::Absent)
            .await,
        Err(Error::RevisionMismatch { .. })
    ));
    b.kv_put("jobs", "j1", Bytes::from("b"), Expect::Revision(first))
        .await
        .unwrap();
    assert_eq!(
        c.kv_get("jobs", "j1").await.unwrap().unwrap().value,
        Bytes::from("b")
    );

    // Writers on all three nodes racing on one stream: one winner per
    // version, versions dense.
    let ledger: TopicName = "ledger".parse().unwrap();
    a.create_topic(TopicSpec::new(ledger.clone()))
        .await
        .unwrap();
    let id: StreamId = "account-1".parse().unwrap();
    a.append(
        &ledger,
        &id,
        vec![keyed("seed", "x")],
        ExpectedVersion::NoStream,
    )
    .await
    .unwrap();
    const WRITERS_PER_NODE: usize = 4;
    const WINS_EACH: usize = 5;
    let mut writers = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        for writer in 0..WRITERS_PER_NODE {
            let (node, ledger, id) = (Arc::clone(node), ledger.clone(), id.clone());
            writers.push(tokio::spawn(async move {
                let mut won = Vec::new();
                let mut conflicts = 0;
                let mut version = node.stream_metadata(&ledger, &id).await.unwrap().version;
                while won.len() < WINS_EACH {
                    let name = format!("n{index}-w{writer}-{}", won.len());
                    match node
                        .append(
                            &ledger,
                            &id,
                            vec![keyed(&name, "x")],
                            ExpectedVersion::Exact(version),
                        )
                        .await
                    {
                        Ok(result) => {
                            won.push(result.first_version);
                            version = result.last_version;
                        }
                        Err(Error::VersionConflict { current, .. }) => {
                            conflicts += 1;
                            version = current.unwrap();
                        }
                        Err(error) => panic!("{error}"),
                    }
                }
                (won, conflicts)
            }));
        }
    }
    let mut versions = BTreeSet::new();
    let mut conflicts = 0;
    for writer in writers {
        let (won, lost) = writer.await.unwrap();
        conflicts += lost;
        for version in won {
            assert!(versions.insert(version), "version {version} won twice");
        }
    }
    let total = nodes.len() * WRITERS_PER_NODE * WINS_EACH;
    assert_eq!(versions, (1..=total as u64).collect::<BTreeSet<_>>());
    let metadata = c.stream_metadata(&ledger, &id).await.unwrap();
    assert_eq!(metadata.version, total as u64);
    println!(
        "three nodes: {read} events read across nodes, 1 duplicate caught; {total} appends won by {} writers with {conflicts} conflicts, versions 1..={total} each once",
        nodes.len() * WRITERS_PER_NODE
    );

    // Deleted on A: gone for B.
    a.delete_topic(&orders).await.unwrap();
    until("B sees the topic deleted", || async {
        matches!(
            b.describe_topic(&orders).await,
            Err(Error::TopicNotFound { .. })
        )
    })
    .await;
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
}
