//! Hard delete through the backend API: erasures pending compaction survive
//! a restart and are carried out at open; leased and read-ahead events of
//! the erased stream are no longer delivered.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_backend::{
    AckDurability, Backend, Events, ExpectedVersion, FetchRequest, GroupMode, GroupSpec, Groups,
    Streams, TopicSpec, Topics,
};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_types::{Event, EventInput, GroupName, StoredEvent, StreamId, TopicName};

const MARKER: &[u8] = b"PII-erase-me-4d1e";

fn topic() -> TopicName {
    "people".parse().unwrap()
}

fn input(id: &str, data: &[u8]) -> EventInput {
    let mut event = Event::new(id, "/people", "person.updated");
    event.data = Some(Bytes::copy_from_slice(data));
    EventInput {
        event,
        partition: None,
    }
}

async fn open(dir: &Path, compaction_delay: Duration) -> Arc<EmbeddedBackend> {
    let options = EmbeddedOptions {
        compaction_delay,
        ..EmbeddedOptions::new(dir)
    };
    Arc::new(
        EmbeddedBackend::open(options, LogMetrics::new())
            .await
            .unwrap(),
    )
}

/// Whether any file under `dir` holds `needle`.
fn on_disk(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            on_disk(&path, needle)
        } else {
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(needle.len()).any(|window| window == needle)
        }
    })
}

async fn all_events(backend: &EmbeddedBackend) -> Vec<StoredEvent> {
    backend.read(&topic(), 0, 0, 1000).await.unwrap().events
}

async fn fill(backend: &EmbeddedBackend) {
    let mut spec = TopicSpec::new(topic());
    spec.partitions = 1;
    backend.create_topic(spec).await.unwrap();
    for round in 0..4 {
        for (stream, data) in [("alice", MARKER), ("bob", b"bob's data".as_slice())] {
            backend
                .append(
                    &topic(),
                    &stream.parse::<StreamId>().unwrap(),
                    vec![input(&format!("{stream}-{round}"), data)],
                    ExpectedVersion::Any,
                )
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn given_a_hard_delete_pending_compaction_when_the_backend_restarts_should_erase_it_at_open()
{
    let dir = tempfile::tempdir().unwrap();
    // No background compaction in the first run: the delete stays pending.
    let backend = open(dir.path(), Duration::from_secs(3600)).await;
    fill(&backend).await;
    let before = all_events(&backend).await;
    backend
        .delete_stream(&topic(), &"alice".parse().unwrap(), true)
        .await
        .unwrap();
    let bobs: Vec<StoredEvent> = before
        .into_iter()
        .filter(|event| event.event.id.starts_with("bob"))
        .collect();
    assert_eq!(all_events(&backend).await, bobs, "unreadable at once");
    backend.shutdown().await.unwrap();
    drop(backend);
    assert!(
        on_disk(dir.path(), MARKER),
        "not compacted yet: the test would prove nothing"
    );

    let backend = open(dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(all_events(&backend).await, bobs, "still unreadable");
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_disk(dir.path(), MARKER) {
        assert!(Instant::now() < deadline, "not erased at open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(all_events(&backend).await, bobs);
    backend.shutdown().await.unwrap();
}

#[tokio::test]
async fn given_leased_and_read_ahead_events_of_a_stream_when_hard_deleted_should_deliver_only_the_others()
 {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path(), Duration::from_millis(200)).await;
    fill(&backend).await;
    let group: GroupName = "mailer".parse().unwrap();
    backend
        .put_group(&topic(), &group, GroupSpec::new(GroupMode::Queue))
        .await
        .unwrap();
    let fetch = |max| FetchRequest {
        member: "m1".into(),
        max,
        wait_ms: 0,
    };
    // alice-0 is leased; the rest is read ahead.
    let first = backend.fetch(&topic(), &group, fetch(1)).await.unwrap();
    assert_eq!(first.deliveries[0].event.event.id, "alice-0");
    backend
        .delete_stream(&topic(), &"alice".parse().unwrap(), true)
        .await
        .unwrap();
    let rest = backend.fetch(&topic(), &group, fetch(100)).await.unwrap();
    let ids: Vec<&str> = rest
        .deliveries
        .iter()
        .map(|delivery| delivery.event.event.id.as_str())
        .collect();
    assert_eq!(ids, ["bob-0", "bob-1", "bob-2", "bob-3"]);
    let acked = backend
        .ack(
            &topic(),
            &group,
            &rest
                .deliveries
                .iter()
                .map(|delivery| delivery.delivery_id.clone())
                .collect::<Vec<_>>(),
            AckDurability::Async,
        )
        .await
        .unwrap();
    assert_eq!(acked.acked, 4);
    // Nothing left in flight: the erased lease is gone, the floor is past
    // every erased offset.
    let status = backend.group_status(&topic(), &group).await.unwrap();
    assert_eq!(status.in_flight, 0, "{status:?}");
    assert_eq!(status.pending, 0, "{status:?}");
    assert_eq!(status.partitions[0].committed, 8, "{status:?}");
    backend.shutdown().await.unwrap();
}
