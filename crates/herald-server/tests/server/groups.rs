//! `/v1/topics/{topic}/groups/{group}`: settings, status, fetch and every
//! settlement, commits, resets, dead letters, and the ways each is refused.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers; clippy only exempts #[test] functions themselves"
)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    Api, TestServer, delivered_ids, delivery_ids, event, expect_json, expect_problem,
};

const G: &str = "/v1/topics/orders/groups";

/// A server with topic `orders` (`partitions`) holding events `e0`…`e{n-1}`.
async fn orders_with_events(partitions: u32, count: usize) -> (TestServer, Api) {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders", "partitions": partitions}))
        .await;
    if count > 0 {
        let batch: Vec<Value> = (0..count)
            .map(|index| event(&format!("e{index}")))
            .collect();
        api.publish("orders", Value::from(batch)).await;
    }
    (server, api)
}

fn ids(deliveries: &[Value]) -> BTreeSet<String> {
    delivered_ids(deliveries).into_iter().collect()
}

#[tokio::test]
async fn given_new_group_when_put_should_answer_201_then_200_on_update_and_409_on_mode_change() {
    let (_server, api) = orders_with_events(2, 3).await;

    let response = api
        .put(
            &format!("{G}/workers"),
            &json!({"mode": "queue", "ack_wait_ms": 5000}),
        )
        .await;
    assert_eq!(response.headers()["location"], format!("{G}/workers"));
    let group = expect_json(response, 201).await;
    assert_eq!(group["name"], "workers");
    assert_eq!(group["mode"], "queue");
    assert_eq!(group["ack_wait_ms"], 5000);
    assert_eq!(group["start"], "earliest");
    assert!(group["created_at"].as_str().unwrap().ends_with('Z'));

    let response = api
        .put(
            &format!("{G}/workers"),
            &json!({"mode": "queue", "ack_wait_ms": 9000, "max_deliveries": 2}),
        )
        .await;
    let group = expect_json(response, 200).await;
    assert_eq!(group["ack_wait_ms"], 9000);
    assert_eq!(group["max_deliveries"], 2);

    let response = api
        .put(&format!("{G}/workers"), &json!({"mode": "stream"}))
        .await;
    expect_problem(response, 409, "group_conflict").await;

    let status = api.group_status("orders", "workers").await;
    assert_eq!(status["mode"], "queue");
    assert_eq!(status["ack_wait_ms"], 9000);
    assert_eq!(status["in_flight"], 0);
    assert_eq!(status["dead_letters"], 0);
    assert_eq!(status["members"], json!([]));
    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2);
    let lag: u64 = partitions
        .iter()
        .map(|partition| partition["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(lag, 3);
    assert_eq!(partitions[0]["committed"], 0);
}

#[tokio::test]
async fn given_queue_group_when_fetched_and_acked_should_settle_idempotently_and_redeliver_the_rest()
 {
    let (_server, api) = orders_with_events(2, 4).await;
    api.put_group(
        "orders",
        "workers",
        json!({"mode": "queue", "backoff_ms": [0]}),
    )
    .await;

    let deliveries = api.drain("orders", "workers", "w1", 300).await;
    assert_eq!(deliveries.len(), 4);
    assert!(deliveries.iter().all(|delivery| delivery["attempt"] == 1));
    let all = delivery_ids(&deliveries);
    let (acked, unacked) = all.split_at(2);

    let outcome = api
        .group_call("orders", "workers", "ack", json!({"delivery_ids": acked}))
        .await;
    assert_eq!(outcome, json!({"acked": 2, "unknown": []}));
    let outcome = api
        .group_call("orders", "workers", "ack", json!({"delivery_ids": acked}))
        .await;
    assert_eq!(outcome["acked"], 0, "acks are idempotent");
    assert_eq!(outcome["unknown"].as_array().unwrap().len(), 2);
    let outcome = api
        .group_call(
            "orders",
            "workers",
            "ack",
            json!({"delivery_ids": ["no-such-id"]}),
        )
        .await;
    assert_eq!(outcome, json!({"acked": 0, "unknown": ["no-such-id"]}));
    assert_eq!(api.group_status("orders", "workers").await["in_flight"], 2);

    let outcome = api
        .group_call(
            "orders",
            "workers",
            "nack",
            json!({"delivery_ids": unacked, "delay_ms": 0}),
        )
        .await;
    assert_eq!(outcome, json!({"nacked": 2, "unknown": []}));

    let again = api.drain("orders", "workers", "w2", 300).await;
    assert_eq!(ids(&again), ids(&deliveries[2..]));
    assert!(again.iter().all(|delivery| delivery["attempt"] == 2));
    let fetched = api.fetch("orders", "workers", "w2", 10, 0).await;
    assert_eq!(
        fetched,
        json!({"deliveries": []}),
        "queue mode has no generation"
    );
}

#[tokio::test]
async fn given_long_poll_fetch_when_event_published_should_return_it_before_wait_ms() {
    let (_server, api) = orders_with_events(1, 0).await;
    api.put_group("orders", "workers", json!({"mode": "queue"}))
        .await;

    let started = Instant::now();
    let empty = api.fetch("orders", "workers", "w1", 10, 200).await;
    assert_eq!(empty["deliveries"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(150), "waited");

    let poller = api.clone();
    let fetch =
        tokio::spawn(async move { poller.fetch("orders", "workers", "w1", 10, 30_000).await });
    let started = Instant::now();
    api.publish("orders", json!([event("late")])).await;
    let fetched = fetch.await.unwrap();
    assert_eq!(
        delivered_ids(fetched["deliveries"].as_array().unwrap()),
        ["late"]
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered on the publish"
    );
}

#[tokio::test]
async fn given_deliveries_when_extended_should_apply_or_report_unknown() {
    let (_server, api) = orders_with_events(1, 1).await;
    api.put_group(
        "orders",
        "workers",
        json!({"mode": "queue", "ack_wait_ms": 60_000}),
    )
    .await;
    let fetched = api.fetch("orders", "workers", "w1", 10, 1000).await;
    let leased = delivery_ids(fetched["deliveries"].as_array().unwrap());

    let outcome = api
        .group_call(
            "orders",
            "workers",
            "extend",
            json!({"delivery_ids": leased, "ack_wait_ms": 120_000}),
        )
        .await;
    assert_eq!(outcome, json!({"extended": 1, "unknown": []}));
    let outcome = api
        .group_call(
            "orders",
            "workers",
            "extend",
            json!({"delivery_ids": leased}),
        )
        .await;
    assert_eq!(
        outcome["extended"], 1,
        "the group's ack_wait_ms when absent"
    );
    let response = api
        .post(
            &format!("{G}/workers/extend"),
            &json!({"delivery_ids": leased, "ack_wait_ms": 0}),
        )
        .await;
    expect_problem(response, 400, "invalid_argument").await;
    assert_eq!(api.group_status("orders", "workers").await["in_flight"], 1);
}

#[tokio::test]
async fn given_rejected_delivery_should_be_listed_as_dead_letter_and_redriven_on_request() {
    let (_server, api) = orders_with_events(1, 2).await;
    api.put_group("orders", "workers", json!({"mode": "queue"}))
        .await;
    let fetched = api.fetch("orders", "workers", "w1", 10, 1000).await;
    let deliveries = fetched["deliveries"].as_array().unwrap().clone();
    let first = deliveries[0]["delivery_id"].clone();
    let second = deliveries[1]["delivery_id"].clone();

    let outcome = api
        .group_call(
            "orders",
            "workers",
            "reject",
            json!({"delivery_ids": [first], "reason": "cannot parse"}),
        )
        .await;
    assert_eq!(outcome, json!({"rejected": 1, "unknown": []}));
    api.group_call(
        "orders",
        "workers",
        "reject",
        json!({"delivery_ids": [second]}),
    )
    .await;

    let letters = expect_json(api.get(&format!("{G}/workers/dead-letters")).await, 200).await;
    let letters = letters["events"].as_array().unwrap().clone();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["reason"], "rejected: cannot parse");
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["event"]["id"], deliveries[0]["event"]["id"]);
    assert_eq!(
        letters[0]["original"],
        json!({"partition": 0, "offset": deliveries[0]["event"]["offset"]})
    );
    assert!(letters[0]["dead_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(letters[1]["reason"], "rejected: no reason given");
    assert_eq!(
        api.group_status("orders", "workers").await["dead_letters"],
        2
    );
    let limited = expect_json(
        api.get(&format!("{G}/workers/dead-letters?limit=1")).await,
        200,
    )
    .await;
    assert_eq!(limited["events"].as_array().unwrap().len(), 1);

    // Redrive one by id, then the rest.
    let redriven = api
        .group_call(
            "orders",
            "workers",
            "dead-letters/redrive",
            json!({"ids": [letters[0]["id"]]}),
        )
        .await;
    assert_eq!(redriven, json!({"redriven": 1}));
    let again = api.drain("orders", "workers", "w1", 300).await;
    assert_eq!(
        delivered_ids(&again),
        [deliveries[0]["event"]["id"].as_str().unwrap()]
    );
    let response = api
        .post_raw(&format!("{G}/workers/dead-letters/redrive"), None, &[], "")
        .await;
    assert_eq!(expect_json(response, 200).await, json!({"redriven": 1}));
    let letters = expect_json(api.get(&format!("{G}/workers/dead-letters")).await, 200).await;
    assert_eq!(letters["events"], json!([]));
}

#[tokio::test]
async fn given_stream_group_when_members_commit_should_fence_stale_generations() {
    let (_server, api) = orders_with_events(2, 0).await;
    for index in 0..6 {
        let mut pinned = event(&format!("e{index}"));
        pinned["partition"] = json!(index % 2);
        api.publish("orders", json!([pinned])).await;
    }
    api.put_group("orders", "audit", json!({"mode": "stream"}))
        .await;

    let fetched = api.fetch("orders", "audit", "m1", 100, 1000).await;
    assert_eq!(fetched["assignment"], json!([0, 1]));
    let generation = fetched["generation"].as_u64().unwrap();
    assert!(!fetched["deliveries"].as_array().unwrap().is_empty());

    let commit = json!({
        "member": "m1",
        "generation": generation,
        "offsets": [{"partition": 0, "offset": 2}, {"partition": 1, "offset": 1}],
    });
    assert_eq!(
        api.group_call("orders", "audit", "commit", commit).await,
        json!({})
    );
    let status = api.group_status("orders", "audit").await;
    assert_eq!(status["partitions"][0]["committed"], 2);
    assert_eq!(status["partitions"][1]["committed"], 1);
    assert_eq!(status["members"][0]["member"], "m1");

    // A second member joins: the generation moves on, m1's is stale.
    let joined = api.fetch("orders", "audit", "m2", 100, 0).await;
    let newer = joined["generation"].as_u64().unwrap();
    assert!(newer > generation);
    let stale = json!({
        "member": "m1",
        "generation": generation,
        "offsets": [{"partition": 0, "offset": 3}],
    });
    let response = api.post(&format!("{G}/audit/commit"), &stale).await;
    expect_problem(response, 409, "stale_generation").await;
    assert_eq!(
        api.group_status("orders", "audit").await["partitions"][0]["committed"],
        2
    );

    // m1 leaves: m2 owns everything after its next fetch.
    api.group_call("orders", "audit", "leave", json!({"member": "m1"}))
        .await;
    let fetched = api.fetch("orders", "audit", "m2", 100, 0).await;
    assert_eq!(fetched["assignment"], json!([0, 1]));
}

#[tokio::test]
async fn given_group_when_reset_should_deliver_again_from_the_new_position() {
    let (_server, api) = orders_with_events(1, 3).await;
    api.put_group("orders", "workers", json!({"mode": "queue"}))
        .await;
    let first = api.drain("orders", "workers", "w1", 200).await;
    api.group_call(
        "orders",
        "workers",
        "ack",
        json!({"delivery_ids": delivery_ids(&first)}),
    )
    .await;
    assert_eq!(
        api.group_status("orders", "workers").await["partitions"][0]["committed"],
        3
    );

    let reset = api
        .group_call("orders", "workers", "reset", json!({"to": "earliest"}))
        .await;
    assert_eq!(reset, json!({}));
    let again = api.drain("orders", "workers", "w1", 200).await;
    assert_eq!(delivered_ids(&again), ["e0", "e1", "e2"]);

    api.group_call("orders", "workers", "reset", json!({"to": {"offset": 2}}))
        .await;
    let tail = api.drain("orders", "workers", "w1", 200).await;
    assert_eq!(delivered_ids(&tail), ["e2"]);

    api.group_call("orders", "workers", "reset", json!({"to": "latest"}))
        .await;
    assert_eq!(
        api.drain("orders", "workers", "w1", 200).await,
        Vec::<Value>::new()
    );
    api.group_call(
        "orders",
        "workers",
        "reset",
        json!({"to": {"time": "2000-01-01T00:00:00Z"}}),
    )
    .await;
    assert_eq!(api.drain("orders", "workers", "w1", 200).await.len(), 3);

    for to in [
        json!("middle"),
        json!({"time": "noon"}),
        json!({"offset": -1}),
        json!(null),
    ] {
        let response = api
            .post(&format!("{G}/workers/reset"), &json!({"to": to}))
            .await;
        expect_problem(response, 400, "invalid_argument").await;
    }
    let response = api.post(&format!("{G}/workers/reset"), &json!({})).await;
    expect_problem(response, 400, "invalid_argument").await;
}

#[tokio::test]
async fn given_member_when_it_leaves_should_return_its_leases_at_once() {
    let (_server, api) = orders_with_events(1, 1).await;
    api.put_group(
        "orders",
        "workers",
        json!({"mode": "queue", "ack_wait_ms": 300_000}),
    )
    .await;
    let taken = api.fetch("orders", "workers", "w1", 10, 1000).await;
    assert_eq!(taken["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.fetch("orders", "workers", "w2", 10, 0).await["deliveries"],
        json!([])
    );

    let left = api
        .group_call("orders", "workers", "leave", json!({"member": "w1"}))
        .await;
    assert_eq!(left, json!({}));

    let fetched = api.fetch("orders", "workers", "w2", 10, 1000).await;
    assert_eq!(
        delivered_ids(fetched["deliveries"].as_array().unwrap()),
        ["e0"]
    );
    for body in [
        json!({"member": ""}),
        json!({}),
        json!({"member": "w1", "x": 1}),
    ] {
        let response = api.post(&format!("{G}/workers/leave"), &body).await;
        expect_problem(response, 400, "invalid_argument").await;
    }
}

#[tokio::test]
async fn given_group_when_deleted_should_answer_204_and_then_404_everywhere() {
    let (_server, api) = orders_with_events(1, 1).await;
    api.put_group("orders", "workers", json!({"mode": "queue"}))
        .await;

    assert_eq!(api.delete(&format!("{G}/workers")).await.status(), 204);

    expect_problem(
        api.get(&format!("{G}/workers")).await,
        404,
        "group_not_found",
    )
    .await;
    expect_problem(
        api.delete(&format!("{G}/workers")).await,
        404,
        "group_not_found",
    )
    .await;
    let posts = [
        ("fetch", json!({"member": "w1"})),
        ("ack", json!({"delivery_ids": []})),
        ("nack", json!({"delivery_ids": []})),
        ("extend", json!({"delivery_ids": []})),
        ("reject", json!({"delivery_ids": []})),
        (
            "commit",
            json!({"member": "m", "generation": 1, "offsets": []}),
        ),
        ("reset", json!({"to": "earliest"})),
        ("leave", json!({"member": "w1"})),
        ("dead-letters/redrive", json!({})),
    ];
    for (action, body) in &posts {
        let response = api.post(&format!("{G}/workers/{action}"), body).await;
        expect_problem(response, 404, "group_not_found").await;
    }
    let response = api.get(&format!("{G}/workers/dead-letters")).await;
    expect_problem(response, 404, "group_not_found").await;

    // On a topic that does not exist, the topic is what is missing.
    let response = api
        .put("/v1/topics/nope/groups/workers", &json!({"mode": "queue"}))
        .await;
    expect_problem(response, 404, "topic_not_found").await;
    for (action, body) in &posts {
        let response = api
            .post(&format!("/v1/topics/nope/groups/workers/{action}"), body)
            .await;
        expect_problem(response, 404, "topic_not_found").await;
    }
}

#[tokio::test]
async fn given_bad_group_requests_should_answer_4xx_and_change_nothing() {
    let (_server, api) = orders_with_events(1, 2).await;
    let path = format!("{G}/workers");

    for (spec, code) in [
        (json!({"mode": "fanout"}), "invalid_argument"),
        (json!({}), "invalid_argument"),
        (
            json!({"mode": "queue", "ack_wait_ms": 0}),
            "invalid_argument",
        ),
        (
            json!({"mode": "queue", "max_in_flight": 0}),
            "invalid_argument",
        ),
        (
            json!({"mode": "queue", "start": "middle"}),
            "invalid_argument",
        ),
        (
            json!({"mode": "queue", "filter": {"kinds": []}}),
            "invalid_argument",
        ),
        (
            json!({"mode": "queue", "colour": "red"}),
            "invalid_argument",
        ),
    ] {
        expect_problem(api.put(&path, &spec).await, 400, code).await;
    }
    let response = api
        .put(&format!("{G}/bad%20name"), &json!({"mode": "queue"}))
        .await;
    expect_problem(response, 400, "invalid_name").await;
    let response = api
        .send_raw(
            reqwest::Method::PUT,
            &path,
            Some("application/json"),
            &[],
            "{\"mode\":",
        )
        .await;
    expect_problem(response, 400, "malformed_json").await;
    let response = api
        .send_raw(
            reqwest::Method::PUT,
            &path,
            Some("text/plain"),
            &[],
            "{\"mode\":\"queue\"}",
        )
        .await;
    expect_problem(response, 415, "unsupported_media_type").await;
    expect_problem(api.get(&path).await, 404, "group_not_found").await;

    api.put_group("orders", "workers", json!({"mode": "queue"}))
        .await;
    for (action, body) in [
        ("fetch", json!({"member": "w1", "max": 0})),
        ("fetch", json!({"member": "w1", "wait_ms": 400_000})),
        ("fetch", json!({"member": ""})),
        ("fetch", json!({"max": 1})),
        ("fetch", json!({"member": "w1", "credits": 3})),
        ("ack", json!({"delivery_ids": "abc"})),
        ("ack", json!({})),
        ("nack", json!({"delivery_ids": [], "delay_ms": -5})),
        ("reject", json!({"delivery_ids": [], "reason": ""})),
        ("dead-letters/redrive", json!({"ids": ["one"]})),
    ] {
        let response = api.post(&format!("{path}/{action}"), &body).await;
        let problem = expect_problem(response, 400, "invalid_argument").await;
        assert!(
            !problem["detail"].as_str().unwrap().is_empty(),
            "{action} {body}"
        );
    }
    let response = api
        .post_raw(
            &format!("{path}/ack"),
            Some("application/json"),
            &[],
            "{\"delivery_ids\": [",
        )
        .await;
    expect_problem(response, 400, "malformed_json").await;
    let response = api
        .post_raw(
            &format!("{path}/ack"),
            Some("text/plain"),
            &[],
            "{\"delivery_ids\": []}",
        )
        .await;
    expect_problem(response, 415, "unsupported_media_type").await;
    for query in ["limit=0", "limit=many", "since=1"] {
        let response = api.get(&format!("{path}/dead-letters?{query}")).await;
        expect_problem(response, 400, "invalid_argument").await;
    }
    expect_problem(
        api.get(&format!("{path}?verbose=1")).await,
        400,
        "invalid_argument",
    )
    .await;
    let response = api.get(&format!("{path}/fetch")).await;
    expect_problem(response, 405, "method_not_allowed").await;

    // Nothing above leased, settled or changed anything.
    let status = api.group_status("orders", "workers").await;
    assert_eq!(status["in_flight"], 0);
    assert_eq!(status["ack_wait_ms"], 30_000);
    assert_eq!(api.drain("orders", "workers", "w1", 200).await.len(), 2);
}

/// Publishes `count` events built by `make` in batches of 1,000.
async fn publish_many(api: &Api, topic: &str, count: usize, make: impl Fn(usize) -> Value) {
    for first in (0..count).step_by(1_000) {
        let batch: Vec<Value> = (first..(first + 1_000).min(count)).map(&make).collect();
        api.publish(topic, Value::from(batch)).await;
    }
}

/// Point 2 of the hardening issue, against the binary: 100,000 events
/// delayed by a day do not hold up a ready event published after them.
#[tokio::test]
async fn given_100k_events_delayed_a_day_when_a_ready_event_follows_should_deliver_it_at_once() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "later", "partitions": 1}))
        .await;
    api.put_group("later", "workers", json!({"mode": "queue"}))
        .await;
    publish_many(&api, "later", 100_000, |index| {
        let mut delayed = event(&format!("d{index}"));
        delayed["delayms"] = json!(86_400_000);
        delayed
    })
    .await;
    api.publish("later", json!([event("ready")])).await;
    let fetched = api.fetch("later", "workers", "w", 10, 30_000).await;
    let deliveries = fetched["deliveries"].as_array().unwrap();
    assert_eq!(delivered_ids(deliveries), ["ready"]);
}

/// Point 2, keyed: one key whose head is leased and never settled, with a
/// 100,000-event backlog, does not hold up the other keys.
#[tokio::test]
async fn given_a_stuck_key_with_a_100k_backlog_when_other_keys_follow_should_deliver_them() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "accounts", "partitions": 1}))
        .await;
    api.put_group(
        "accounts",
        "workers",
        json!({"mode": "keyed", "ack_wait_ms": 3_600_000}),
    )
    .await;
    publish_many(&api, "accounts", 100_000, |index| {
        let mut stuck = event(&format!("s{index}"));
        stuck["key"] = json!("stuck");
        stuck
    })
    .await;
    let head = api.fetch("accounts", "workers", "w", 1, 30_000).await;
    assert_eq!(
        delivered_ids(head["deliveries"].as_array().unwrap()),
        ["s0"]
    );
    publish_many(&api, "accounts", 10, |index| {
        let mut other = event(&format!("o{index}"));
        other["key"] = json!(format!("other-{index}"));
        other
    })
    .await;
    let mut delivered = BTreeSet::new();
    while delivered.len() < 10 {
        let fetched = api.fetch("accounts", "workers", "w", 100, 30_000).await;
        let batch = fetched["deliveries"].as_array().unwrap().clone();
        assert!(!batch.is_empty(), "other keys stalled after {delivered:?}");
        delivered.extend(ids(&batch));
    }
    assert!(
        delivered.iter().all(|id| id.starts_with('o')),
        "{delivered:?}"
    );
}
