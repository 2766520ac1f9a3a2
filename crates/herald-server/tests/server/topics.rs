//! `/v1/topics`: create, list, describe, change, delete.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers; clippy only exempts #[test] functions themselves"
)]

use serde_json::json;

use crate::support::{TestServer, event, expect_json, expect_problem};

#[tokio::test]
async fn given_new_name_when_topic_created_should_answer_201_with_defaults_and_location() {
    let (_server, api) = TestServer::start_ready().await;

    let response = api
        .post("/v1/topics", &json!({"name": "orders", "partitions": 3}))
        .await;
    assert_eq!(response.headers()["location"], "/v1/topics/orders");
    let topic = expect_json(response, 201).await;

    assert_eq!(topic["name"], "orders");
    assert_eq!(topic["partitions"], 3);
    assert_eq!(topic["fsync"], "always");
    assert_eq!(topic["dedup_window_ms"], 120_000);
    assert_eq!(topic["max_event_bytes"], 1_048_576);
    assert_eq!(topic["dead_letter_topic"], serde_json::Value::Null);
    let created_at = topic["created_at"].as_str().unwrap();
    assert!(
        created_at.len() == 24 && created_at.ends_with('Z'),
        "RFC 3339 with ms: {created_at}"
    );
}

#[tokio::test]
async fn given_existing_topic_when_created_again_should_answer_409_and_keep_the_first() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders", "partitions": 3}))
        .await;

    let response = api
        .post("/v1/topics", &json!({"name": "orders", "partitions": 1}))
        .await;
    expect_problem(response, 409, "topic_exists").await;

    let topic = expect_json(api.get("/v1/topics/orders").await, 200).await;
    assert_eq!(topic["partitions"], 3);
}

#[tokio::test]
async fn given_topics_when_listed_and_described_should_show_settings_and_partition_extents() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "payments"})).await;
    api.create_topic(json!({"name": "orders", "partitions": 2, "fsync": "never"}))
        .await;
    api.publish(
        "orders",
        json!([
            {"specversion": "1.0", "source": "/t", "type": "t", "partition": 1},
            {"specversion": "1.0", "source": "/t", "type": "t", "partition": 1},
        ]),
    )
    .await;

    let list = expect_json(api.get("/v1/topics").await, 200).await;
    let names: Vec<&str> = list["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|topic| topic["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders", "payments"]);

    let topic = expect_json(api.get("/v1/topics/orders").await, 200).await;
    assert_eq!(topic["fsync"], "never");
    let partitions = topic["partition_info"].as_array().unwrap();
    assert_eq!(partitions.len(), 2);
    assert_eq!(partitions[0]["partition"], 0);
    assert_eq!(partitions[0]["end_offset"], 0);
    assert_eq!(partitions[1]["partition"], 1);
    assert_eq!(partitions[1]["start_offset"], 0);
    assert_eq!(partitions[1]["end_offset"], 2);
    assert!(partitions[1]["bytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn given_topic_when_patched_should_change_retention_and_limits_only() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders", "partitions": 2}))
        .await;
    api.create_topic(json!({"name": "orders-dlq"})).await;

    let patch = json!({
        "retention": {"max_events": 1000},
        "max_event_bytes": 2048,
        "dedup_window_ms": 0,
        "dead_letter_topic": "orders-dlq",
    });
    let topic = expect_json(api.patch("/v1/topics/orders", &patch).await, 200).await;
    assert_eq!(topic["retention"]["max_events"], 1000);
    assert_eq!(topic["max_event_bytes"], 2048);
    assert_eq!(topic["dedup_window_ms"], 0);
    assert_eq!(topic["dead_letter_topic"], "orders-dlq");
    assert_eq!(topic["partitions"], 2);

    // Partitions are fixed at creation: the field is not patchable.
    let response = api
        .patch("/v1/topics/orders", &json!({"partitions": 4}))
        .await;
    let problem = expect_problem(response, 400, "invalid_argument").await;
    assert!(problem["detail"].as_str().unwrap().contains("partitions"));
    let response = api
        .patch("/v1/topics/orders", &json!({"max_event_bytes": 0}))
        .await;
    expect_problem(response, 400, "invalid_argument").await;
    let response = api
        .patch("/v1/topics/orders", &json!({"dead_letter_topic": "no way"}))
        .await;
    expect_problem(response, 400, "invalid_name").await;

    let topic = expect_json(api.get("/v1/topics/orders").await, 200).await;
    assert_eq!(topic["partitions"], 2);
    assert_eq!(topic["max_event_bytes"], 2048);
    assert_eq!(topic["dead_letter_topic"], "orders-dlq");

    let topic = expect_json(
        api.patch("/v1/topics/orders", &json!({"dead_letter_topic": null}))
            .await,
        200,
    )
    .await;
    assert_eq!(topic["dead_letter_topic"], serde_json::Value::Null);
}

#[tokio::test]
async fn given_topic_when_deleted_should_answer_204_and_then_404() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders"})).await;
    api.publish("orders", json!([event("a")])).await;

    let response = api.delete("/v1/topics/orders").await;
    assert_eq!(response.status(), 204);

    expect_problem(api.get("/v1/topics/orders").await, 404, "topic_not_found").await;
    expect_problem(
        api.delete("/v1/topics/orders").await,
        404,
        "topic_not_found",
    )
    .await;
    let response = api
        .patch("/v1/topics/orders", &json!({"dedup_window_ms": 1}))
        .await;
    expect_problem(response, 404, "topic_not_found").await;
    let list = expect_json(api.get("/v1/topics").await, 200).await;
    assert_eq!(list["topics"], json!([]));

    // The name is free again, with nothing of the old topic in it.
    api.create_topic(json!({"name": "orders"})).await;
    let topic = expect_json(api.get("/v1/topics/orders").await, 200).await;
    assert_eq!(topic["partition_info"][0]["end_offset"], 0);
}

#[tokio::test]
async fn given_invalid_topic_settings_when_created_should_answer_400_and_create_nothing() {
    let (_server, api) = TestServer::start_ready().await;
    let cases = [
        (
            json!({"name": "orders", "partitions": 0}),
            "invalid_argument",
        ),
        (
            json!({"name": "orders", "partitions": 2000}),
            "invalid_argument",
        ),
        (
            json!({"name": "orders", "fsync": "sometimes"}),
            "invalid_argument",
        ),
        (
            json!({"name": "orders", "partitions": "two"}),
            "invalid_argument",
        ),
        (
            json!({"name": "orders", "colour": "red"}),
            "invalid_argument",
        ),
        (
            json!({"name": "orders", "retention": {"max_age_ms": 0}}),
            "invalid_argument",
        ),
        (
            json!({"name": "orders", "max_event_bytes": 17_000_000}),
            "invalid_argument",
        ),
        (json!({"partitions": 1}), "invalid_argument"),
        (json!({"name": "bad name"}), "invalid_name"),
        (json!({"name": "-orders"}), "invalid_name"),
        (json!({"name": "x".repeat(201)}), "invalid_name"),
        (json!({"name": ""}), "invalid_name"),
        (
            json!({"name": "orders", "dead_letter_topic": "a/b"}),
            "invalid_name",
        ),
        (
            json!({"name": "orders", "dead_letter_topic": "orders"}),
            "invalid_argument",
        ),
        (json!(["orders"]), "invalid_argument"),
    ];
    for (body, code) in cases {
        let problem = expect_problem(api.post("/v1/topics", &body).await, 400, code).await;
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{body}");
    }
    let response = api
        .post_raw(
            "/v1/topics",
            Some("application/json"),
            &[],
            "{\"name\": \"orders\",",
        )
        .await;
    expect_problem(response, 400, "malformed_json").await;
    let response = api
        .post_raw(
            "/v1/topics",
            Some("text/plain"),
            &[],
            "{\"name\": \"orders\"}",
        )
        .await;
    expect_problem(response, 415, "unsupported_media_type").await;
    let response = api
        .post("/v1/topics?dry_run=true", &json!({"name": "orders"}))
        .await;
    expect_problem(response, 400, "invalid_argument").await;

    let list = expect_json(api.get("/v1/topics").await, 200).await;
    assert_eq!(list["topics"], json!([]), "bad input creates nothing");
}

#[tokio::test]
async fn given_invalid_name_in_path_should_answer_400_invalid_name() {
    let (_server, api) = TestServer::start_ready().await;
    let long = "x".repeat(201);
    for path in [
        "/v1/topics/-orders".to_owned(),
        "/v1/topics/a%20b".to_owned(),
        "/v1/topics/a%2Fb".to_owned(),
        "/v1/topics/%FF".to_owned(),
        format!("/v1/topics/{long}"),
        format!("/v1/topics/{long}/events"),
        "/v1/topics/orders/groups/bad%20group".to_owned(),
    ] {
        expect_problem(api.get(&path).await, 400, "invalid_name").await;
    }
}
