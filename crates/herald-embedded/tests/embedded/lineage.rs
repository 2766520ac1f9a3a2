//! `read_correlated` on the embedded backend: stretches this process
//! appended without a correlated event are stepped over without a read,
//! and no correlated event is missed while appends race the reader.

use std::collections::BTreeSet;
use std::sync::Arc;

use herald_backend::{Backend as _, Events, ExpectedVersion, Streams, TopicSpec, Topics};
use herald_types::{Event, EventInput, StreamId, TopicName};

use crate::open;

fn input(id: &str, correlated: bool) -> EventInput {
    let mut event = Event::new(id, "/lineage", "t");
    if correlated {
        event.correlationid = Some("c".into());
    }
    EventInput {
        event,
        partition: None,
    }
}

#[tokio::test]
async fn given_uncorrelated_appends_of_this_process_when_read_correlated_should_step_over_them_and_read_after_a_restart()
 {
    let dir = tempfile::tempdir().unwrap();
    let topic: TopicName = "clicks".parse().unwrap();
    let backend = open(dir.path()).await;
    backend
        .create_topic(TopicSpec::new(topic.clone()))
        .await
        .unwrap();
    for batch in 0..10 {
        let inputs = (0..100)
            .map(|n| input(&format!("u-{batch}-{n}"), false))
            .collect();
        backend.publish(&topic, inputs).await.unwrap();
    }
    // A read would stop after 10 records; nothing was read.
    let stepped = backend.read_correlated(&topic, 0, 0, 10).await.unwrap();
    assert!(stepped.events.is_empty());
    assert_eq!(stepped.next_offset, 1_000);

    // A correlated event among others, and one appended to a stream.
    backend
        .publish(
            &topic,
            vec![input("a", false), input("b", true), input("c", false)],
        )
        .await
        .unwrap();
    let stream: StreamId = "order-1".parse().unwrap();
    backend
        .append(
            &topic,
            &stream,
            vec![input("d", true)],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let found = backend
        .read_correlated(&topic, 0, 1_000, 4_096)
        .await
        .unwrap();
    let ids: Vec<&str> = found
        .events
        .iter()
        .map(|stored| stored.event.id.as_str())
        .collect();
    assert_eq!(ids, ["b", "d"]);
    assert_eq!(found.next_offset, 1_004);

    // After a restart nothing before the open is vouched for: read.
    backend.shutdown().await.unwrap();
    drop(backend);
    let backend = open(dir.path()).await;
    let read = backend.read_correlated(&topic, 0, 0, 10).await.unwrap();
    assert!(read.events.is_empty());
    assert_eq!(read.next_offset, 10);
    let rest = backend.read_correlated(&topic, 0, 10, 4_096).await.unwrap();
    assert_eq!(rest.events.len(), 2);
    assert_eq!(rest.next_offset, 1_004);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_appends_racing_a_reader_when_read_correlated_should_miss_no_correlated_event() {
    let dir = tempfile::tempdir().unwrap();
    let topic: TopicName = "racing".parse().unwrap();
    let backend = open(dir.path()).await;
    backend
        .create_topic(TopicSpec::new(topic.clone()))
        .await
        .unwrap();
    let total: u64 = 8 * (0..150u64).map(|call| 1 + call % 4).sum::<u64>();
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (backend, topic) = (Arc::clone(&backend), topic.clone());
            tokio::spawn(async move {
                let mut correlated = BTreeSet::new();
                for call in 0..150 {
                    let inputs: Vec<EventInput> = (0..1 + call % 4usize)
                        .map(|n| {
                            let id = format!("w{writer}-{call}-{n}");
                            let is = (writer + call + n) % 7 == 0;
                            if is {
                                correlated.insert(id.clone());
                            }
                            input(&id, is)
                        })
                        .collect();
                    backend.publish(&topic, inputs).await.unwrap();
                }
                correlated
            })
        })
        .collect();
    let reader = {
        let (backend, topic) = (Arc::clone(&backend), topic.clone());
        tokio::spawn(async move {
            let mut found = BTreeSet::new();
            let mut next = 0;
            loop {
                let read = backend.read_correlated(&topic, 0, next, 64).await.unwrap();
                found.extend(read.events.into_iter().map(|stored| stored.event.id));
                next = read.next_offset;
                if next == total {
                    return found;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut published = BTreeSet::new();
    for writer in writers {
        published.extend(writer.await.unwrap());
    }
    let described = backend.describe_topic(&topic).await.unwrap();
    assert_eq!(described.partition_info[0].end_offset, total);
    let found = reader.await.unwrap();
    assert!(!published.is_empty());
    assert_eq!(found, published);
}
