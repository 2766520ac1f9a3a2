//! A disk fault in the middle of a partition's active segment: the log
//! fences the damaged batch off and keeps the batches after it; the backend
//! opens over it (dedup rebuild, stream index catch-up), and reads and
//! consumer groups step over the lost offsets instead of failing on them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use herald_backend::{
    AckDurability, Backend, Events, FetchRequest, GroupMode, GroupSpec, Groups, TopicSpec, Topics,
};
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;
use herald_types::{Event, EventInput, GroupName, TopicName};

fn topic() -> TopicName {
    "orders".parse().unwrap()
}

fn input(id: &str) -> EventInput {
    let mut event = Event::new(id, "/orders", "order.placed");
    event.data = Some(Bytes::from(format!("payload of {id}")));
    EventInput {
        event,
        partition: Some(0),
    }
}

async fn open(dir: &Path) -> Arc<EmbeddedBackend> {
    Arc::new(
        EmbeddedBackend::open(EmbeddedOptions::new(dir), LogMetrics::new())
            .await
            .unwrap(),
    )
}

/// The segment files under `dir`.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(segments(&path));
        } else if path.extension().is_some_and(|extension| extension == "log") {
            found.push(path);
        }
    }
    found
}

/// Flips a byte in the payload of batch `index` of `segment`.
fn damage_batch(segment: &Path, index: usize) {
    let mut bytes = std::fs::read(segment).unwrap();
    let mut position = 0;
    for _ in 0..index {
        let length = u32::from_le_bytes(bytes[position + 8..position + 12].try_into().unwrap());
        position += 12 + length as usize;
    }
    bytes[position + 45] ^= 0x40;
    std::fs::write(segment, bytes).unwrap();
}

#[tokio::test]
async fn given_damaged_batch_in_the_middle_of_a_partition_when_reopened_should_open_and_step_over_it()
 {
    let dir = tempfile::tempdir().unwrap();
    let backend = open(dir.path()).await;
    let mut spec = TopicSpec::new(topic());
    spec.partitions = 1;
    backend.create_topic(spec).await.unwrap();
    for index in 0..10 {
        backend
            .publish(&topic(), vec![input(&format!("e{index}"))])
            .await
            .unwrap();
    }
    backend.shutdown().await.unwrap();
    drop(backend);
    let segment = segments(dir.path())
        .into_iter()
        .find(|path| path.to_string_lossy().contains("orders"))
        .unwrap();
    damage_batch(&segment, 4);

    let backend = open(dir.path()).await;
    let read = backend.read(&topic(), 0, 0, 100).await.unwrap();
    let ids: Vec<&str> = read
        .events
        .iter()
        .map(|event| event.event.id.as_str())
        .collect();
    assert_eq!(ids, ["e0", "e1", "e2", "e3", "e5", "e6", "e7", "e8", "e9"]);
    assert_eq!(read.next_offset, 10);

    let group: GroupName = "workers".parse().unwrap();
    backend
        .put_group(&topic(), &group, GroupSpec::new(GroupMode::Queue))
        .await
        .unwrap();
    let mut delivered = Vec::new();
    for _ in 0..20 {
        let fetched = backend
            .fetch(
                &topic(),
                &group,
                FetchRequest {
                    member: "member".into(),
                    max: 100,
                    wait_ms: 0,
                },
            )
            .await
            .unwrap();
        if fetched.deliveries.is_empty() {
            break;
        }
        let ids: Vec<String> = fetched
            .deliveries
            .iter()
            .map(|delivery| delivery.delivery_id.clone())
            .collect();
        backend
            .ack(&topic(), &group, &ids, AckDurability::Async)
            .await
            .unwrap();
        delivered.extend(
            fetched
                .deliveries
                .into_iter()
                .map(|delivery| delivery.event.event.id),
        );
    }
    assert_eq!(
        delivered,
        ["e0", "e1", "e2", "e3", "e5", "e6", "e7", "e8", "e9"],
        "the group delivers every event but the lost one"
    );
    backend.publish(&topic(), vec![input("e10")]).await.unwrap();
    backend.shutdown().await.unwrap();
}
