//! Interoperability with an independent CloudEvents implementation (the
//! `cloudevents-sdk` crate as an oracle): what it sends in structured, batch
//! and binary mode Herald accepts, and what Herald serves it parses back to
//! the same event.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV10};
use serde_json::{Value, json};

use crate::support::TestServer;

fn sdk_event(id: &str) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("/sdk/orders")
        .ty("com.example.order.placed")
        .subject("orders/42")
        .time("2026-11-26T10:00:00Z")
        .extension("tenant", "acme")
        .extension("priority", 3)
        .data(
            "application/json",
            json!({ "order": 42, "items": ["a", "b"] }),
        )
        .build()
        .unwrap()
}

/// Reads events back and parses each with the SDK.
async fn served(api: &crate::support::Api, topic: &str) -> Vec<(Value, Event)> {
    let read: Value = api
        .get(&format!(
            "/v1/topics/{topic}/events?partition=0&from_offset=0&limit=100"
        ))
        .await
        .json()
        .await
        .unwrap();
    read["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|json| {
            let event: Event = serde_json::from_value(json.clone()).unwrap_or_else(|error| {
                panic!("the SDK cannot parse what Herald serves: {error}\n{json}")
            });
            (json.clone(), event)
        })
        .collect()
}

fn assert_same(sent: &Event, got: &Event) {
    assert_eq!(got.id(), sent.id());
    assert_eq!(got.source(), sent.source());
    assert_eq!(got.ty(), sent.ty());
    assert_eq!(got.subject(), sent.subject());
    assert_eq!(got.time(), sent.time());
    assert_eq!(got.datacontenttype(), sent.datacontenttype());
    assert_eq!(
        got.extension("tenant").map(ToString::to_string),
        Some("acme".to_owned())
    );
    assert_eq!(
        got.extension("priority").map(ToString::to_string),
        Some("3".to_owned())
    );
    let data = |event: &Event| match event.data() {
        Some(Data::Json(value)) => value.clone(),
        Some(Data::String(text)) => serde_json::from_str(text).unwrap(),
        Some(Data::Binary(bytes)) => serde_json::from_slice(bytes).unwrap(),
        None => Value::Null,
    };
    assert_eq!(data(got), data(sent));
}

#[tokio::test]
async fn given_sdk_events_in_every_http_mode_when_published_should_be_accepted_and_served_back_parseable()
 {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({ "name": "interop" })).await;
    let path = "/v1/topics/interop/events";

    // Structured mode.
    let structured = sdk_event("structured-1");
    let body = serde_json::to_vec(&structured).unwrap();
    let answer = api
        .post_raw(path, Some("application/cloudevents+json"), &[], body)
        .await;
    assert_eq!(answer.status(), 201, "{}", answer.text().await.unwrap());

    // Batch mode.
    let batch = vec![sdk_event("batch-1"), sdk_event("batch-2")];
    let body = serde_json::to_vec(&batch).unwrap();
    let answer = api
        .post_raw(path, Some("application/cloudevents-batch+json"), &[], body)
        .await;
    assert_eq!(answer.status(), 201, "{}", answer.text().await.unwrap());

    // Binary mode, as the SDK's HTTP binding writes it.
    let binary = sdk_event("binary-1");
    let request: axum::http::Request<Option<Vec<u8>>> = binary.clone().try_into().unwrap();
    let mut call = api.client.post(api.url(path));
    for (name, value) in request.headers() {
        call = call.header(name.as_str(), value.as_bytes());
    }
    let answer = call
        .body(request.body().clone().unwrap_or_default())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "{}", answer.text().await.unwrap());

    let got = served(&api, "interop").await;
    let sent = [structured, batch[0].clone(), batch[1].clone(), binary];
    assert_eq!(got.len(), sent.len());
    for ((json, event), original) in got.iter().zip(&sent) {
        assert_same(original, event);
        // Herald's coordinates travel as extra members the SDK keeps.
        assert!(json.get("offset").is_some() && json.get("partition").is_some());
    }
}
