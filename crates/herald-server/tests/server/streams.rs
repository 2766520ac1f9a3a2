//! Event streams over HTTP: optimistic concurrency with If-Match /
//! If-None-Match / expected_version, reads both ways, metadata with ETag,
//! snapshots, deletion, and the errors.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use serde_json::{Value, json};

use crate::support::{Api, TestServer};

fn event(ty: &str, amount: u64) -> Value {
    json!({ "specversion": "1.0", "source": "/shop", "type": ty, "data": { "amount": amount } })
}

async fn append(
    api: &Api,
    stream: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    api.post_raw(
        &format!("/v1/topics/orders/streams/{stream}/events"),
        Some("application/json"),
        headers,
        serde_json::to_vec(body).unwrap(),
    )
    .await
}

#[tokio::test]
async fn given_a_stream_when_appending_with_expectations_should_enforce_versions_and_read_back() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "orders", "partitions": 2 }))
        .await;

    let created = append(
        &api,
        "order-42",
        &event("order.created", 10),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["etag"], "\"0\"");
    assert_eq!(
        created.json::<Value>().await.unwrap(),
        json!({ "first_version": 0, "last_version": 0 })
    );

    let again = append(
        &api,
        "order-42",
        &event("order.created", 10),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(again.status(), 409);
    let problem: Value = again.json().await.unwrap();
    assert_eq!(problem["code"], "version_conflict");
    assert_eq!(problem["current_version"], 0);

    let paid = append(
        &api,
        "order-42",
        &event("payment.succeeded", 10),
        &[("if-match", "\"0\"")],
    )
    .await;
    assert_eq!(paid.status(), 201);
    let mut stale = event("payment.succeeded", 10);
    stale["expected_version"] = json!(5);
    let conflict = append(&api, "order-42", &stale, &[]).await;
    assert_eq!(conflict.status(), 409);
    assert_eq!(
        conflict.json::<Value>().await.unwrap()["current_version"],
        1
    );

    let batch = json!({ "events": [event("order.shipped", 0), event("order.delivered", 0)], "expected_version": "exists" });
    let shipped = append(&api, "order-42", &batch, &[]).await;
    assert_eq!(shipped.status(), 201);
    assert_eq!(
        shipped.json::<Value>().await.unwrap(),
        json!({ "first_version": 2, "last_version": 3 })
    );

    let forward: Value = api
        .get("/v1/topics/orders/streams/order-42/events")
        .await
        .json()
        .await
        .unwrap();
    let versions: Vec<u64> = forward["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [0, 1, 2, 3]);
    assert_eq!(forward["events"][1]["type"], "payment.succeeded");
    let backward: Value = api
        .get("/v1/topics/orders/streams/order-42/events?direction=backward&limit=2")
        .await
        .json()
        .await
        .unwrap();
    let versions: Vec<u64> = backward["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2]);
    assert_eq!(backward["next_version"], 1);

    let metadata = api.get("/v1/topics/orders/streams/order-42").await;
    assert_eq!(metadata.headers()["etag"], "\"3\"");
    let metadata: Value = metadata.json().await.unwrap();
    assert_eq!(metadata["version"], 3);
    assert_eq!(metadata["deleted"], false);

    // Snapshots.
    let snapshot = json!({ "version": 3, "state": { "status": "delivered", "paid": 10 } });
    assert_eq!(
        api.put("/v1/topics/orders/streams/order-42/snapshot", &snapshot)
            .await
            .status(),
        200
    );
    assert_eq!(
        api.get("/v1/topics/orders/streams/order-42/snapshot")
            .await
            .json::<Value>()
            .await
            .unwrap(),
        snapshot
    );
    let ahead = api
        .put(
            "/v1/topics/orders/streams/order-42/snapshot",
            &json!({ "version": 9, "state": {} }),
        )
        .await;
    assert_eq!(ahead.status(), 400);

    // Soft delete: reads as gone, takes no more events.
    assert_eq!(
        api.delete("/v1/topics/orders/streams/order-42")
            .await
            .status(),
        204
    );
    let gone = api.get("/v1/topics/orders/streams/order-42/events").await;
    assert_eq!(gone.status(), 404);
    assert_eq!(
        gone.json::<Value>().await.unwrap()["code"],
        "stream_not_found"
    );
    let refused = append(&api, "order-42", &event("order.created", 1), &[]).await;
    assert_eq!(refused.status(), 410);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["code"],
        "stream_deleted"
    );
}

async fn get_if_none_match(api: &Api, path: &str, condition: &str) -> reqwest::Response {
    let headers = [("if-none-match", condition)];
    api.send_raw(reqwest::Method::GET, path, None, &headers, "")
        .await
}

#[tokio::test]
async fn given_a_stream_etag_when_metadata_is_read_with_if_none_match_should_answer_304_until_it_changes()
 {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "orders" })).await;
    let path = "/v1/topics/orders/streams/order-7";
    assert_eq!(
        append(&api, "order-7", &event("order.created", 1), &[])
            .await
            .status(),
        201
    );
    let get = |condition| get_if_none_match(&api, path, condition);

    let first = api.get(path).await;
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, "\"0\"");

    for condition in ["\"0\"", "W/\"0\"", "\"5\", \"0\"", "*"] {
        let unchanged = get(condition).await;
        assert_eq!(unchanged.status(), 304, "If-None-Match: {condition}");
        assert_eq!(unchanged.headers()["etag"], "\"0\"");
        assert!(unchanged.bytes().await.unwrap().is_empty());
    }
    let other = get("\"5\"").await;
    assert_eq!(other.status(), 200);

    assert_eq!(
        append(&api, "order-7", &event("order.paid", 1), &[])
            .await
            .status(),
        201
    );
    let changed = get("\"0\"").await;
    assert_eq!(changed.status(), 200);
    assert_eq!(changed.headers()["etag"], "\"1\"");
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["version"], 1);
}

#[tokio::test]
async fn given_two_concurrent_payments_at_one_version_when_appended_should_let_exactly_one_win() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "orders" })).await;
    assert_eq!(
        append(
            &api,
            "order-7",
            &event("order.created", 5),
            &[("if-none-match", "*")]
        )
        .await
        .status(),
        201
    );
    let payment = event("payment.succeeded", 5);
    let (first, second) = tokio::join!(
        append(&api, "order-7", &payment, &[("if-match", "\"0\"")]),
        append(&api, "order-7", &payment, &[("if-match", "\"0\"")]),
    );
    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
    let metadata: Value = api
        .get("/v1/topics/orders/streams/order-7")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["version"], 1);
}

#[tokio::test]
async fn given_bad_stream_requests_when_sent_should_answer_problems_and_change_nothing() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "orders" })).await;
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("if-match", "abc")], "invalid_argument"),
        (
            &[("if-match", "\"1\""), ("if-none-match", "*")],
            "invalid_argument",
        ),
        (&[("if-none-match", "\"3\"")], "invalid_argument"),
    ];
    for (headers, code) in cases {
        let answer = append(&api, "order-1", &event("t", 1), headers).await;
        assert_eq!(answer.status(), 400);
        assert_eq!(answer.json::<Value>().await.unwrap()["code"], code);
    }
    let mut bad_expected = event("t", 1);
    bad_expected["expected_version"] = json!("sometimes");
    assert_eq!(
        append(&api, "order-1", &bad_expected, &[]).await.status(),
        400
    );
    let missing_type = json!({ "specversion": "1.0", "source": "/s" });
    assert_eq!(
        append(&api, "order-1", &missing_type, &[]).await.status(),
        400
    );
    let not_json = api
        .post_raw(
            "/v1/topics/orders/streams/order-1/events",
            Some("application/json"),
            &[],
            "{",
        )
        .await;
    assert_eq!(not_json.status(), 400);
    assert_eq!(
        not_json.json::<Value>().await.unwrap()["code"],
        "malformed_json"
    );
    let bad_name = api.get("/v1/topics/orders/streams/bad%20name").await;
    assert_eq!(bad_name.status(), 400);
    assert_eq!(
        bad_name.json::<Value>().await.unwrap()["code"],
        "invalid_name"
    );
    let unknown_topic = append(&api, "order-1", &event("t", 1), &[]).await;
    assert_eq!(unknown_topic.status(), 201, "orders exists");
    let no_topic = api.get("/v1/topics/nope/streams/order-1").await;
    assert_eq!(no_topic.status(), 404);
    // Nothing bad was appended: only the one good event.
    let metadata: Value = api
        .get("/v1/topics/orders/streams/order-1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["version"], 0);
}
