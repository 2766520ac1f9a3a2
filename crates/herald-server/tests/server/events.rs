//! `/v1/topics/{topic}/events`: publishing in every CloudEvents content
//! mode, reading back, and every way a publish can be refused.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers; clippy only exempts #[test] functions themselves"
)]

use serde_json::{Value, json};

use crate::support::{Api, TestServer, event, expect_json, expect_problem, serve};

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

async fn end_offsets(api: &Api, topic: &str) -> Vec<u64> {
    let topic = expect_json(api.get(&format!("/v1/topics/{topic}")).await, 200).await;
    topic["partition_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|partition| partition["end_offset"].as_u64().unwrap())
        .collect()
}

async fn read(api: &Api, topic: &str, query: &str) -> Value {
    expect_json(
        api.get(&format!("/v1/topics/{topic}/events?{query}")).await,
        200,
    )
    .await
}

#[tokio::test]
async fn given_structured_event_when_published_should_answer_201_and_read_back_as_cloudevent() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders"})).await;

    let body = json!({
        "specversion": "1.0",
        "id": "order-1",
        "source": "/shop",
        "type": "order.placed",
        "subject": "order/1",
        "correlationid": "c-1",
        "data": {"total": 42},
    });
    let response = api
        .post_raw(
            "/v1/topics/orders/events",
            Some(STRUCTURED),
            &[],
            body.to_string(),
        )
        .await;
    let answer = expect_json(response, 201).await;
    assert_eq!(
        answer,
        json!({"results": [{"id": "order-1", "partition": 0, "offset": 0, "duplicate": false}]})
    );

    let page = read(&api, "orders", "partition=0&from_offset=0").await;
    assert_eq!(page["next_offset"], 1);
    let stored = &page["events"][0];
    assert_eq!(stored["id"], "order-1");
    assert_eq!(stored["source"], "/shop");
    assert_eq!(stored["type"], "order.placed");
    assert_eq!(stored["subject"], "order/1");
    assert_eq!(stored["correlationid"], "c-1");
    assert_eq!(stored["data"], json!({"total": 42}));
    assert_eq!(stored["topic"], "orders");
    assert_eq!(stored["partition"], 0);
    assert_eq!(stored["offset"], 0);
    assert!(stored["appendedat"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn given_plain_json_event_without_id_when_published_should_get_an_assigned_id() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders"})).await;

    let body = json!({"specversion": "1.0", "source": "/shop", "type": "order.placed"});
    let answer = expect_json(api.post("/v1/topics/orders/events", &body).await, 201).await;

    let id = answer["results"][0]["id"].as_str().unwrap();
    assert!(!id.is_empty());
    let page = read(&api, "orders", "").await;
    assert_eq!(page["events"][0]["id"], id);
}

#[tokio::test]
async fn given_batch_with_one_key_when_published_should_land_contiguously_in_one_partition() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders", "partitions": 4}))
        .await;

    let batch: Vec<Value> = (0..3)
        .map(|index| {
            let mut event = event(&format!("e{index}"));
            event["key"] = json!("customer-7");
            event
        })
        .collect();
    let results = api.publish("orders", Value::from(batch)).await;

    assert_eq!(results.len(), 3);
    let partition = results[0]["partition"].as_u64().unwrap();
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["id"], format!("e{index}"));
        assert_eq!(result["partition"], partition);
        assert_eq!(result["offset"], index as u64);
    }
    let page = read(&api, "orders", &format!("partition={partition}")).await;
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e0", "e1", "e2"]);
}

#[tokio::test]
async fn given_binary_mode_event_when_published_should_take_headers_as_attributes_and_body_as_data()
{
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "logs"})).await;

    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "line-1"),
        ("ce-source", "/app"),
        ("ce-type", "log.line"),
        ("ce-subject", "app%2Fweb"),
        ("ce-key", "web"),
    ];
    let response = api
        .post_raw(
            "/v1/topics/logs/events",
            Some("text/plain"),
            &headers,
            "hello, world",
        )
        .await;
    let answer = expect_json(response, 201).await;
    assert_eq!(answer["results"][0]["id"], "line-1");

    let stored = &read(&api, "logs", "").await["events"][0];
    assert_eq!(stored["type"], "log.line");
    assert_eq!(stored["subject"], "app/web");
    assert_eq!(stored["key"], "web");
    assert_eq!(stored["datacontenttype"], "text/plain");
    assert_eq!(stored["data"], "hello, world");

    // application/json with ce-specversion is binary mode too: the body is data.
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "line-2"),
        ("ce-source", "/app"),
        ("ce-type", "log.line"),
    ];
    let response = api
        .post_raw(
            "/v1/topics/logs/events",
            Some("application/json"),
            &headers,
            "{\"level\": \"info\"}",
        )
        .await;
    expect_json(response, 201).await;
    let stored = &read(&api, "logs", "from_offset=1").await["events"][0];
    assert_eq!(stored["id"], "line-2");
    assert_eq!(stored["data"], json!({"level": "info"}));
}

#[tokio::test]
async fn given_known_event_id_when_republished_should_answer_duplicate_with_original_position() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders", "partitions": 2}))
        .await;
    let first = api.publish("orders", json!([event("a"), event("b")])).await;

    let again = api.publish("orders", json!([event("b"), event("c")])).await;

    assert_eq!(again[0]["duplicate"], true);
    assert_eq!(again[0]["partition"], first[1]["partition"]);
    assert_eq!(again[0]["offset"], first[1]["offset"]);
    assert_eq!(again[1]["duplicate"], false);
    let total: u64 = end_offsets(&api, "orders").await.iter().sum();
    assert_eq!(total, 3, "the duplicate was not appended");
}

#[tokio::test]
async fn given_explicit_partition_when_published_should_use_it_or_answer_404() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders", "partitions": 2}))
        .await;

    let mut pinned = event("a");
    pinned["partition"] = json!(1);
    let results = api.publish("orders", json!([pinned])).await;
    assert_eq!(results[0]["partition"], 1);

    let mut missing = event("b");
    missing["partition"] = json!(5);
    let response = api.post("/v1/topics/orders/events", &missing).await;
    expect_problem(response, 404, "partition_not_found").await;
    assert_eq!(end_offsets(&api, "orders").await, [0, 1]);
}

#[tokio::test]
async fn given_events_when_read_by_offset_time_and_limit_should_page_through_the_partition() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders"})).await;
    let batch: Vec<Value> = (0..5).map(|index| event(&format!("e{index}"))).collect();
    api.publish("orders", Value::from(batch)).await;

    let page = read(&api, "orders", "partition=0&from_offset=2&limit=2").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["events"][0]["offset"], 2);
    assert_eq!(page["events"][1]["offset"], 3);
    assert_eq!(page["next_offset"], 4);

    let page = read(&api, "orders", "from_offset=4").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_offset"], 5);

    let page = read(&api, "orders", "from_offset=5").await;
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next_offset"], 5);

    let page = read(&api, "orders", "from_time=2000-01-01T00:00:00Z").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 5);
    assert_eq!(page["events"][0]["offset"], 0);

    let page = read(&api, "orders", "from_time=9999-01-01T00:00:00Z").await;
    assert_eq!(page["events"], json!([]));
    assert_eq!(page["next_offset"], 5);
}

#[tokio::test]
async fn given_bad_read_query_should_answer_400_or_404_naming_the_problem() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders"})).await;

    for (query, status, code) in [
        ("partition=9", 404, "partition_not_found"),
        (
            "from_offset=1&from_time=2026-01-01T00:00:00Z",
            400,
            "invalid_argument",
        ),
        ("from_time=yesterday", 400, "invalid_argument"),
        ("from_offset=-1", 400, "invalid_argument"),
        ("limit=0", 400, "invalid_argument"),
        ("limit=10001", 400, "invalid_argument"),
        ("limit=ten", 400, "invalid_argument"),
        ("partition=0&colour=red", 400, "invalid_argument"),
    ] {
        let response = api.get(&format!("/v1/topics/orders/events?{query}")).await;
        let problem = expect_problem(response, status, code).await;
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{query}");
    }
    let response = api.get("/v1/topics/nope/events").await;
    expect_problem(response, 404, "topic_not_found").await;
}

#[tokio::test]
async fn given_invalid_events_when_published_should_answer_400_and_append_nothing() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders"})).await;
    let path = "/v1/topics/orders/events";

    let mut no_source = event("a");
    no_source.as_object_mut().unwrap().remove("source");
    let mut no_type = event("a");
    no_type.as_object_mut().unwrap().remove("type");
    let mut no_specversion = event("a");
    no_specversion
        .as_object_mut()
        .unwrap()
        .remove("specversion");
    let mut old_specversion = event("a");
    old_specversion["specversion"] = json!("0.3");
    let mut bad_time = event("a");
    bad_time["time"] = json!("yesterday");
    for body in [
        no_source,
        no_type,
        no_specversion,
        old_specversion,
        bad_time,
    ] {
        let response = api
            .post_raw(path, Some(STRUCTURED), &[], body.to_string())
            .await;
        expect_problem(response, 400, "invalid_event").await;
    }

    // One bad element refuses the whole batch, naming its index.
    let mut bad = event("b");
    bad.as_object_mut().unwrap().remove("type");
    let batch = json!([event("a"), bad, event("c")]).to_string();
    let response = api.post_raw(path, Some(BATCH), &[], batch).await;
    let problem = expect_problem(response, 400, "invalid_event").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("events[1]"),
        "{problem}"
    );

    for (content_type, body) in [
        (BATCH, "[]"),
        (BATCH, "{\"specversion\": \"1.0\"}"),
        (STRUCTURED, "[]"),
        (STRUCTURED, "42"),
    ] {
        let response = api.post_raw(path, Some(content_type), &[], body).await;
        expect_problem(response, 400, "invalid_event").await;
    }

    // Binary mode without the required headers.
    let response = api
        .post_raw(path, Some("text/plain"), &[("ce-specversion", "1.0")], "x")
        .await;
    expect_problem(response, 400, "invalid_event").await;

    assert_eq!(end_offsets(&api, "orders").await, [0]);
}

#[tokio::test]
async fn given_malformed_json_when_published_should_answer_400_malformed_json() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders"})).await;
    let path = "/v1/topics/orders/events";

    for (content_type, body) in [
        (STRUCTURED, "{\"id\":"),
        ("application/json", "{'id': 1}"),
        (BATCH, "[{\"id\": \"a\"},"),
        (STRUCTURED, ""),
        (STRUCTURED, "\u{feff}{}"),
    ] {
        let response = api.post_raw(path, Some(content_type), &[], body).await;
        let problem = expect_problem(response, 400, "malformed_json").await;
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    assert_eq!(end_offsets(&api, "orders").await, [0]);
}

#[tokio::test]
async fn given_wrong_content_type_when_published_should_answer_415() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders"})).await;
    let body = event("a").to_string();

    for content_type in [
        Some("text/plain"),
        Some("application/xml"),
        Some("application/cloudevents+xml"),
        None,
    ] {
        let response = api
            .post_raw("/v1/topics/orders/events", content_type, &[], body.clone())
            .await;
        let problem = expect_problem(response, 415, "unsupported_media_type").await;
        assert!(
            problem["detail"].as_str().unwrap().contains(STRUCTURED),
            "says what to send: {problem}"
        );
    }
    assert_eq!(end_offsets(&api, "orders").await, [0]);
}

#[tokio::test]
async fn given_event_over_topic_limit_when_published_should_answer_413_and_append_nothing() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "orders", "max_event_bytes": 1024}))
        .await;

    let mut large = event("big");
    large["data"] = json!("x".repeat(2000));
    let batch = json!([event("small"), large]).to_string();
    let response = api
        .post_raw("/v1/topics/orders/events", Some(BATCH), &[], batch)
        .await;

    expect_problem(response, 413, "payload_too_large").await;
    assert_eq!(end_offsets(&api, "orders").await, [0]);
}

#[tokio::test]
async fn given_body_over_request_limit_should_answer_413_and_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_LIMITS__MAX_REQUEST_BYTES", "4096");
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    api.create_topic(json!({"name": "orders"})).await;

    let mut large = event("big");
    large["data"] = json!("x".repeat(8000));
    let response = api
        .post_raw(
            "/v1/topics/orders/events",
            Some(STRUCTURED),
            &[],
            large.to_string(),
        )
        .await;
    let problem = expect_problem(response, 413, "payload_too_large").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("4096"),
        "{problem}"
    );

    let response = api
        .post("/v1/topics", &json!({"name": "x".repeat(5000)}))
        .await;
    expect_problem(response, 413, "payload_too_large").await;

    assert_eq!(end_offsets(&api, "orders").await, [0]);
    let results = api.publish("orders", json!([event("small")])).await;
    assert_eq!(results[0]["offset"], 0);
}

#[tokio::test]
async fn given_unknown_topic_when_published_should_answer_404_topic_not_found() {
    let (_server, api) = TestServer::start_ready().await;
    let response = api.post("/v1/topics/nope/events", &event("a")).await;
    expect_problem(response, 404, "topic_not_found").await;
    let response = api
        .post("/v1/topics/orders/events?sync=1", &event("a"))
        .await;
    expect_problem(response, 400, "invalid_argument").await;
}

/// A batch of `count` events of about 1 KiB, ids `<prefix>-<n>`.
fn big_batch(prefix: &str, count: usize) -> Value {
    let events: Vec<Value> = (0..count)
        .map(|index| {
            let mut event = event(&format!("{prefix}-{index}"));
            event["data"] = json!({"pad": "x".repeat(1_000)});
            event
        })
        .collect();
    Value::Array(events)
}

#[tokio::test]
async fn given_connection_cut_mid_publish_when_republished_should_answer_and_store_each_event_once()
{
    use tokio::io::AsyncWriteExt as _;

    let (server, api) = TestServer::start_ready().await;
    // fsync = always: each publish waits for its disk sync, so a cut lands
    // while the publish is in flight.
    api.create_topic(json!({"name": "cut", "partitions": 4, "fsync": "always"}))
        .await;
    let rounds = 24;
    for round in 0..rounds {
        let body = big_batch(&format!("r{round}"), 300).to_string();
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /v1/topics/cut/events HTTP/1.1\r\nHost: {}\r\nContent-Type: {BATCH}\r\nContent-Length: {}\r\n\r\n",
            server.addr,
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(body.as_bytes()).await.unwrap();
        // Cut at a different moment each round: at once, or a little later.
        if round % 4 != 0 {
            tokio::time::sleep(std::time::Duration::from_micros(500 * (round % 4))).await;
        }
        drop(socket);
    }
    // Every batch again: each answers in its normal time, with the original
    // position of what was appended and new positions for the rest.
    let mut reported = std::collections::BTreeMap::new();
    for round in 0..rounds {
        let body = big_batch(&format!("r{round}"), 300).to_string();
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            api.post_raw("/v1/topics/cut/events", Some(BATCH), &[], body),
        )
        .await
        .unwrap_or_else(|_| panic!("the re-publish of round {round} hangs"));
        let answer = expect_json(response, 201).await;
        for result in answer["results"].as_array().unwrap() {
            reported.insert(
                result["id"].as_str().unwrap().to_owned(),
                (
                    result["partition"].as_u64().unwrap(),
                    result["offset"].as_u64().unwrap(),
                ),
            );
        }
    }
    // Stored once each, where the re-publish said.
    let mut stored: std::collections::BTreeMap<String, Vec<(u64, u64)>> =
        std::collections::BTreeMap::new();
    for partition in 0..4 {
        let mut from = 0;
        loop {
            let page = read(
                &api,
                "cut",
                &format!("partition={partition}&from_offset={from}&limit=1000"),
            )
            .await;
            let events = page["events"].as_array().unwrap();
            if events.is_empty() {
                break;
            }
            for stored_event in events {
                let offset = stored_event["offset"].as_u64().unwrap();
                stored
                    .entry(stored_event["id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push((partition, offset));
                from = offset + 1;
            }
        }
    }
    assert_eq!(stored.len(), reported.len());
    for (id, position) in &reported {
        assert_eq!(stored.get(id), Some(&vec![*position]), "{id}");
    }
}
