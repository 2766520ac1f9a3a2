//! Restarts of the real binary on the same data directory, after a graceful
//! stop (SIGTERM) and after `kill -9`: what was acknowledged over HTTP is
//! still there afterwards.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers; clippy only exempts #[test] functions themselves"
)]

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::support::{Api, TestServer, delivered_ids, delivery_ids, event, expect_json, serve};

/// Events published per partition.
const PER_PARTITION: usize = 6;

/// What the first run acknowledged, to check against after the restart.
struct Before {
    /// Event id → `(partition, offset)` as the publish answered.
    positions: BTreeMap<String, (u64, u64)>,
    /// Events the queue group acked.
    acked: BTreeSet<String>,
    /// Events the queue group received and did not ack.
    unacked: BTreeSet<String>,
    /// What the stream group committed, per partition.
    committed: [u64; 2],
}

/// Topic `orders` (2 partitions, fsync always), queue group `workers`,
/// stream group `audit`; publishes, consumes part, acks part, commits.
async fn first_run(api: &Api) -> Before {
    api.create_topic(json!({"name": "orders", "partitions": 2, "fsync": "always"}))
        .await;
    api.put_group(
        "orders",
        "workers",
        json!({"mode": "queue", "ack_wait_ms": 300_000}),
    )
    .await;
    api.put_group("orders", "audit", json!({"mode": "stream"}))
        .await;

    // Ids on all but two events; the two get ids from Herald.
    let mut batch = Vec::new();
    for index in 0..2 * PER_PARTITION {
        let mut published = event(&format!("e{index}"));
        published["partition"] = json!(index % 2);
        if index >= 2 * PER_PARTITION - 2 {
            published.as_object_mut().unwrap().remove("id");
        }
        batch.push(published);
    }
    let results = api.publish("orders", Value::from(batch)).await;
    let positions: BTreeMap<String, (u64, u64)> = results
        .iter()
        .map(|result| {
            (
                result["id"].as_str().unwrap().to_owned(),
                (
                    result["partition"].as_u64().unwrap(),
                    result["offset"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(positions.len(), 2 * PER_PARTITION);

    // The queue group takes everything and acks every third delivery.
    let deliveries = api.drain("orders", "workers", "w1", 300).await;
    assert_eq!(deliveries.len(), 2 * PER_PARTITION);
    let (mut acked, mut unacked) = (BTreeSet::new(), BTreeSet::new());
    let mut to_ack = Vec::new();
    for (index, delivery) in deliveries.iter().enumerate() {
        let id = delivery["event"]["id"].as_str().unwrap().to_owned();
        if index % 3 == 0 {
            to_ack.push(delivery["delivery_id"].clone());
            acked.insert(id);
        } else {
            unacked.insert(id);
        }
    }
    let outcome = api
        .group_call("orders", "workers", "ack", json!({"delivery_ids": to_ack}))
        .await;
    assert_eq!(outcome["acked"], acked.len());
    let status = api.group_status("orders", "workers").await;
    assert_eq!(status["in_flight"], unacked.len());

    // The stream group reads and commits part of each partition.
    let fetched = api.fetch("orders", "audit", "s1", 100, 1000).await;
    assert_eq!(fetched["assignment"], json!([0, 1]));
    let committed = [2, 3];
    let commit = json!({
        "member": "s1",
        "generation": fetched["generation"],
        "offsets": [
            {"partition": 0, "offset": committed[0]},
            {"partition": 1, "offset": committed[1]},
        ],
    });
    api.group_call("orders", "audit", "commit", commit).await;

    Before {
        positions,
        acked,
        unacked,
        committed,
    }
}

/// Checks the second run against the first.
async fn after_restart(api: &Api, before: &Before) {
    // Topics and groups are still there, with their settings.
    let topic = expect_json(api.get("/v1/topics/orders").await, 200).await;
    assert_eq!(topic["partitions"], 2);
    assert_eq!(topic["fsync"], "always");
    let ends: Vec<u64> = topic["partition_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|partition| partition["end_offset"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ends, [PER_PARTITION as u64; 2],
        "every published event is kept"
    );
    assert_eq!(api.group_status("orders", "workers").await["mode"], "queue");
    assert_eq!(api.group_status("orders", "audit").await["mode"], "stream");

    // Every published event reads back at the position the publish gave.
    for partition in 0..2 {
        let page = expect_json(
            api.get(&format!("/v1/topics/orders/events?partition={partition}"))
                .await,
            200,
        )
        .await;
        for stored in page["events"].as_array().unwrap() {
            let id = stored["id"].as_str().unwrap();
            let position = (partition, stored["offset"].as_u64().unwrap());
            assert_eq!(before.positions.get(id), Some(&position), "{id}");
        }
    }

    // Re-publishing a known id is a duplicate at its original position.
    let known = api.publish("orders", json!([event("e3")])).await;
    assert_eq!(known[0]["duplicate"], true);
    let (partition, offset) = before.positions["e3"];
    assert_eq!(known[0]["partition"], partition);
    assert_eq!(known[0]["offset"], offset);

    // Leases survive the restart (until their deadline); the first run's
    // member leaving returns them. Then the queue group delivers exactly
    // what was not acked.
    api.group_call("orders", "workers", "leave", json!({"member": "w1"}))
        .await;
    let redelivered = api.drain("orders", "workers", "w2", 300).await;
    let redelivered_ids: BTreeSet<String> = delivered_ids(&redelivered).into_iter().collect();
    assert_eq!(
        redelivered_ids, before.unacked,
        "unacked come back, acked never"
    );
    assert!(redelivered_ids.is_disjoint(&before.acked));
    assert_eq!(redelivered.len(), before.unacked.len(), "each once");
    assert!(redelivered.iter().all(|delivery| delivery["attempt"] == 2));
    api.group_call(
        "orders",
        "workers",
        "ack",
        json!({"delivery_ids": delivery_ids(&redelivered)}),
    )
    .await;

    // The stream group resumes from its commit.
    let resumed = api.drain("orders", "audit", "s1", 300).await;
    for (partition, &committed) in before.committed.iter().enumerate() {
        let offsets: Vec<u64> = resumed
            .iter()
            .filter(|delivery| delivery["event"]["partition"] == partition)
            .map(|delivery| delivery["event"]["offset"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (committed..PER_PARTITION as u64).collect();
        assert_eq!(offsets, expected, "partition {partition}");
    }
}

#[tokio::test]
async fn given_acked_and_committed_state_when_server_restarts_after_sigterm_should_keep_it() {
    let (server, api) = TestServer::start_ready().await;
    let before = first_run(&api).await;

    server.signal("TERM").await;
    let (status, stderr, dir) = server.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");

    let command = serve(dir.path());
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    after_restart(&api, &before).await;
}

#[tokio::test]
async fn given_acked_and_committed_state_when_server_is_killed_should_lose_nothing_acknowledged() {
    let (server, api) = TestServer::start_ready().await;
    let before = first_run(&api).await;
    // Queue acks persist within 50 ms; the flush makes "within" now, so
    // the kill below cannot fall inside that window.
    let flushed = expect_json(api.post_raw("/v1/admin/flush", None, &[], "").await, 200).await;
    assert_eq!(flushed["flushed"], true);

    server.signal("KILL").await;
    let (status, stderr, dir) = server.wait().await;
    assert_eq!(status.code(), None, "killed by a signal; stderr:\n{stderr}");

    let command = serve(dir.path());
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    after_restart(&api, &before).await;
}

/// Hardening point 6 against the binary: acks answered with `"sync": true`,
/// or by a group whose `ack_durability` is `sync`, survive a `kill -9` that
/// follows at once (no flush in between); the events left unacked come
/// back, the acked ones never.
#[tokio::test]
async fn given_sync_acks_when_the_server_is_killed_right_after_should_not_redeliver_them() {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "jobs", "partitions": 1}))
        .await;
    api.put_group(
        "jobs",
        "by-group",
        json!({"mode": "queue", "ack_durability": "sync"}),
    )
    .await;
    api.put_group("jobs", "by-call", json!({"mode": "queue"}))
        .await;
    let batch: Vec<Value> = (0..10).map(|index| event(&format!("j{index}"))).collect();
    api.publish("jobs", Value::from(batch)).await;
    let mut unacked = BTreeMap::new();
    for (group, flag) in [("by-group", json!({})), ("by-call", json!({"sync": true}))] {
        let fetched = api.fetch("jobs", group, "w", 10, 5_000).await;
        let deliveries = fetched["deliveries"].as_array().unwrap().clone();
        assert_eq!(deliveries.len(), 10);
        let (acked, rest) = deliveries.split_at(6);
        let mut body = json!({"delivery_ids": delivery_ids(acked)});
        if let Some(sync) = flag.get("sync") {
            body["sync"] = sync.clone();
        }
        let outcome = api.group_call("jobs", group, "ack", body).await;
        assert_eq!(outcome["acked"], 6);
        let rest: BTreeSet<String> = delivered_ids(rest).into_iter().collect();
        unacked.insert(group, rest);
    }
    server.signal("KILL").await;
    let (status, stderr, dir) = server.wait().await;
    assert_eq!(status.code(), None, "killed by a signal; stderr:\n{stderr}");
    let command = serve(dir.path());
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let group = api.group_status("jobs", "by-group").await;
    assert_eq!(group["ack_durability"], "sync", "the setting is kept");
    for (group, rest) in unacked {
        api.group_call("jobs", group, "leave", json!({"member": "w"}))
            .await;
        let again = api.drain("jobs", group, "w2", 300).await;
        let again: BTreeSet<String> = delivered_ids(&again).into_iter().collect();
        assert_eq!(
            again, rest,
            "{group}: a confirmed sync ack came back, or an unacked event did not"
        );
    }
}
