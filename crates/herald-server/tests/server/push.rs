//! Push: SSE and WebSocket subscriptions, consuming a group over a
//! WebSocket, and scenario 2 (examples/subscription-gateway).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestServer, sse_frames};

fn event(id: &str, ty: &str, key: &str) -> Value {
    json!({ "specversion": "1.0", "id": id, "source": "/test", "type": ty, "key": key, "data": { "id": id } })
}

/// Reads SSE frames until `count` events arrived: `(id, event)` pairs.
pub(crate) async fn sse_events(response: reqwest::Response, count: usize) -> Vec<(String, Value)> {
    sse_frames(response, |frames| {
        frames.iter().filter(|frame| frame.id.is_some()).count() >= count
    })
    .await
    .into_iter()
    .filter_map(|frame| Some((frame.id?, frame.data)))
    .collect()
}

#[tokio::test]
async fn given_a_subscriber_cut_off_mid_stream_when_it_resumes_with_last_event_id_should_get_every_event_once_in_order()
 {
    let (server, _api) = TestServer::start_ready().await;
    let report = subscription_gateway::run(&server.url(""), "ticks", 300, 120)
        .await
        .unwrap();
    assert_eq!(report.received, 300);
    assert_eq!(report.before_cut, 120);
}

#[tokio::test]
async fn given_filters_when_subscribing_over_sse_should_receive_only_matching_events_from_the_start()
 {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "orders", "partitions": 2 }))
        .await;
    let events: Vec<Value> = (0..20)
        .map(|index| {
            event(
                &format!("e{index}"),
                if index % 2 == 0 {
                    "order.paid"
                } else {
                    "order.created"
                },
                &format!("k{}", index % 3),
            )
        })
        .collect();
    api.publish("orders", Value::Array(events)).await;
    let response = api
        .get("/v1/topics/orders/events/stream?from=earliest&type=order.paid")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let received = sse_events(response, 10).await;
    assert!(
        received
            .iter()
            .all(|(_, event)| event["type"] == "order.paid")
    );
    let mut ids: Vec<String> = received
        .iter()
        .map(|(_, event)| event["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);
    // Every SSE id is a position list that resumes after its event.
    assert!(received.iter().all(|(id, _)| id.contains(':')));
}

#[tokio::test]
async fn given_bad_subscriptions_when_opened_should_answer_problems_before_streaming() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "orders" })).await;
    let unknown = api.get("/v1/topics/nope/events/stream").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["code"],
        "topic_not_found"
    );
    let bad_from = api
        .get("/v1/topics/orders/events/stream?from=yesterday")
        .await;
    assert_eq!(bad_from.status(), 400);
    assert_eq!(
        bad_from.json::<Value>().await.unwrap()["code"],
        "invalid_argument"
    );
    let bad_partition = api.get("/v1/topics/orders/events/stream?from=7:0").await;
    assert_eq!(bad_partition.status(), 404);
    assert_eq!(
        bad_partition.json::<Value>().await.unwrap()["code"],
        "partition_not_found"
    );
    let typo = api
        .get("/v1/topics/orders/events/stream?frm=earliest")
        .await;
    assert_eq!(typo.status(), 400);
    let bad_ws = api.get("/v1/topics/nope/ws").await;
    assert_eq!(bad_ws.status(), 404);
    let not_upgraded = api.get("/v1/topics/orders/ws").await;
    assert_eq!(not_upgraded.status(), 400);
    assert_eq!(
        not_upgraded.json::<Value>().await.unwrap()["code"],
        "invalid_argument"
    );
}

#[tokio::test]
async fn given_a_websocket_subscription_when_events_are_published_should_push_each_as_json() {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "orders" })).await;
    let url = server
        .url("/v1/topics/orders/ws?from=latest")
        .replacen("http://", "ws://", 1);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    api.publish(
        "orders",
        json!([event("w1", "t", "a"), event("w2", "t", "a")]),
    )
    .await;
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            assert!(value["id"].as_str().unwrap().starts_with("0:"));
            ids.push(value["event"]["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids, ["w1", "w2"]);
}

#[tokio::test]
async fn given_a_group_websocket_when_deliveries_are_acked_over_it_should_settle_them() {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "jobs" })).await;
    api.put_group("jobs", "workers", json!({ "mode": "queue" }))
        .await;
    api.publish(
        "jobs",
        json!([event("j1", "t", "a"), event("j2", "t", "b")]),
    )
    .await;
    let url = server
        .url("/v1/topics/jobs/groups/workers/ws?member=socket&max=10")
        .replacen("http://", "ws://", 1);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut delivery_ids = Vec::new();
    while delivery_ids.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            delivery_ids.push(
                value["delivery"]["delivery_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    socket
        .send(Message::text(json!({ "ack": delivery_ids }).to_string()))
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if let Some(ack) = value.get("ack") {
                assert_eq!(ack["acked"], 2);
                break;
            }
        }
    }
    let status: Value = api
        .get("/v1/topics/jobs/groups/workers")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["in_flight"], 0);
    assert_eq!(status["partitions"][0]["committed"], 2);
}

/// The next text message of `socket` that is not a delivery.
async fn next_reply<S>(socket: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value.get("delivery").is_none() {
                return value;
            }
        }
    }
}

#[tokio::test]
async fn given_a_group_websocket_when_settlements_are_bad_or_not_acks_should_answer_documented_codes_and_counts()
 {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "jobs" })).await;
    api.put_group("jobs", "workers", json!({ "mode": "queue" }))
        .await;
    api.publish(
        "jobs",
        json!([
            event("j1", "t", "a"),
            event("j2", "t", "b"),
            event("j3", "t", "c")
        ]),
    )
    .await;
    let url = server
        .url("/v1/topics/jobs/groups/workers/ws?member=socket&max=3")
        .replacen("http://", "ws://", 1);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            ids.push(
                value["delivery"]["delivery_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }

    let bad = [
        ("{\"ack\": [", "malformed_json"),
        (r#"{"ack": "not-a-list"}"#, "invalid_argument"),
        (r#"{"acknowledge": []}"#, "invalid_argument"),
        ("{}", "invalid_argument"),
        (r#"{"ack": [], "delay_ms": 5}"#, "invalid_argument"),
        (r#"{"extend": [], "ack_wait_ms": 0}"#, "invalid_argument"),
        (r#"{"reject": [], "reason": ""}"#, "invalid_argument"),
    ];
    for (text, code) in bad {
        socket.send(Message::text(text)).await.unwrap();
        let reply = next_reply(&mut socket).await;
        assert_eq!(reply["error"]["code"], code, "{text}: {reply}");
        assert_eq!(reply["error"]["status"], 400, "{text}: {reply}");
    }
    let status = api.group_status("jobs", "workers").await;
    assert_eq!(
        status["in_flight"], 3,
        "a refused settlement settles nothing"
    );

    let send = |value: Value| Message::text(value.to_string());
    socket
        .send(send(json!({ "extend": [&ids[0]] })))
        .await
        .unwrap();
    let reply = next_reply(&mut socket).await;
    assert_eq!(reply, json!({ "extend": { "extended": 1, "unknown": [] } }));
    socket
        .send(send(
            json!({ "nack": [&ids[0], "nope"], "delay_ms": 60_000 }),
        ))
        .await
        .unwrap();
    let reply = next_reply(&mut socket).await;
    assert_eq!(
        reply,
        json!({ "nack": { "nacked": 1, "unknown": ["nope"] } })
    );
    socket
        .send(send(json!({ "reject": [&ids[1]], "reason": "bad input" })))
        .await
        .unwrap();
    let reply = next_reply(&mut socket).await;
    assert_eq!(reply, json!({ "reject": { "rejected": 1, "unknown": [] } }));
    socket
        .send(send(json!({ "ack": [&ids[2]] })))
        .await
        .unwrap();
    let reply = next_reply(&mut socket).await;
    assert_eq!(reply, json!({ "ack": { "acked": 1, "unknown": [] } }));
}
