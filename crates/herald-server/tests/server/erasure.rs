//! Hard delete of a stream really erases it: unreadable through every API at
//! once (topic reads, SSE, consumer groups), and after compaction its
//! payload bytes are in no file under the data directory, while the other
//! streams' events in the same segments keep their offsets and contents.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;

use serde_json::{Value, json};

use crate::push::sse_events;
use crate::support::{Api, TestServer, expect_json, serve};

/// The erased stream's payloads carry this; nothing else does.
const MARKER: &str = "PII-7f3a9c-alice@example.com";

fn event(ty: &str, note: &str) -> Value {
    json!({ "specversion": "1.0", "source": "/people", "type": ty, "data": { "note": note } })
}

async fn append(api: &Api, stream: &str, body: &Value) {
    let response = api
        .post(&format!("/v1/topics/people/streams/{stream}/events"), body)
        .await;
    expect_json(response, 201).await;
}

/// Every event of partition 0, as `(offset, event)`.
async fn topic_events(api: &Api) -> Vec<(u64, Value)> {
    api.partition_events("people", 0).await
}

/// The files under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut names = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                names.push(path.file_name().unwrap().to_string_lossy().into_owned());
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|window| window == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    for expected in ["meta.redb", "streams.redb", "00000000000000000000.log"] {
        assert!(names.iter().any(|name| name == expected), "{names:?}");
    }
    found
}

#[tokio::test]
async fn given_a_hard_deleted_stream_when_compacted_should_leave_its_payload_in_no_file_and_keep_the_others()
 {
    let (server, api) = TestServer::start_ready().await;
    // One partition: the erased stream's events share segments with the others.
    api.create_topic(json!({ "name": "people", "partitions": 1 }))
        .await;
    api.put_group("people", "mailer", json!({ "mode": "queue" }))
        .await;

    for round in 0..5 {
        append(
            &api,
            "alice",
            &event("person.updated", &format!("{MARKER} #{round}")),
        )
        .await;
        append(
            &api,
            "bob",
            &event("person.updated", &format!("bob #{round}")),
        )
        .await;
        api.publish(
            "people",
            json!([event("audit", &format!("plain #{round}"))]),
        )
        .await;
    }
    let snapshot = json!({ "version": 4, "state": { "email": MARKER } });
    let put = api
        .put("/v1/topics/people/streams/alice/snapshot", &snapshot)
        .await;
    assert_eq!(put.status(), 200);
    // A consumer holds a lease on one of alice's events and has more read
    // ahead.
    let leased = api.fetch("people", "mailer", "m1", 1, 0).await;
    assert!(leased.to_string().contains(MARKER), "{leased}");
    let before = topic_events(&api).await;
    assert_eq!(before.len(), 15);
    assert!(!files_containing(&server.data_dir(), MARKER.as_bytes()).is_empty());

    let deleted = api
        .delete("/v1/topics/people/streams/alice?hard=true")
        .await;
    assert_eq!(deleted.status(), 204);

    // At once: no API serves alice's events.
    let after = topic_events(&api).await;
    let kept: Vec<(u64, Value)> = before
        .iter()
        .filter(|(_, event)| !event.to_string().contains(MARKER))
        .cloned()
        .collect();
    assert_eq!(kept.len(), 10);
    assert_eq!(after, kept, "the others keep their offsets and contents");
    let stream = api.get("/v1/topics/people/streams/alice/events").await;
    assert_eq!(stream.status(), 404);
    let gone = api.get("/v1/topics/people/streams/alice/snapshot").await;
    assert_eq!(gone.status(), 404);
    let delivered = api.drain("people", "mailer", "m2", 200).await;
    let delivered = Value::from(delivered);
    assert!(!delivered.to_string().contains(MARKER), "{delivered}");
    assert_eq!(delivered.as_array().unwrap().len(), 10, "{delivered}");
    api.publish("people", json!([event("audit", "sentinel")]))
        .await;
    let sse = api
        .get("/v1/topics/people/events/stream?from=earliest")
        .await;
    let streamed = sse_events(sse, 11).await;
    assert!(
        streamed
            .iter()
            .all(|(_, event)| !event.to_string().contains(MARKER))
    );
    assert_eq!(streamed[10].1["data"]["note"], "sentinel");

    // After compaction: the bytes are gone from every file.
    let compacted = expect_json(api.post_raw("/v1/admin/compact", None, &[], "").await, 200).await;
    assert!(compacted["events"].is_u64(), "{compacted}");
    let holding = files_containing(&server.data_dir(), MARKER.as_bytes());
    assert!(holding.is_empty(), "still holding the payload: {holding:?}");
    assert_eq!(topic_events(&api).await[..10], kept[..]);

    // And after a restart: still gone, the others still there, appends to
    // the tombstoned id refused.
    server.signal("TERM").await;
    let (status, stderr, dir) = server.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    let command = serve(dir.path());
    let (server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    assert_eq!(topic_events(&api).await[..10], kept[..]);
    let refused = api
        .post(
            "/v1/topics/people/streams/alice/events",
            &event("person.updated", "again"),
        )
        .await;
    assert_eq!(refused.status(), 410);
    let holding = files_containing(&server.data_dir(), MARKER.as_bytes());
    assert!(holding.is_empty(), "still holding the payload: {holding:?}");
}
