//! Scenario 2 of the product: a subscription gateway.
//!
//! A client subscribes to a topic over Server-Sent Events and gets events
//! pushed as they are published. Its connection is cut mid-stream; it
//! reconnects with the last SSE id it saw as `Last-Event-ID` and resumes
//! exactly there. [`run`] plays both sides against a running Herald and
//! checks the outcome: every event received exactly once, in publish order
//! per key.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use serde_json::{Value, json};

/// What a run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Events published.
    pub published: usize,
    /// Events received over both connections.
    pub received: usize,
    /// Events received before the cut.
    pub before_cut: usize,
    /// The `Last-Event-ID` the client resumed with.
    pub resumed_from: String,
}

/// Publishes `events` events to a fresh topic while a subscriber follows it
/// over SSE; the subscriber's connection is cut after `cut_after` events and
/// resumed with `Last-Event-ID`. Fails unless every event arrives exactly
/// once and in order per key.
pub async fn run(server: &str, topic: &str, events: usize, cut_after: usize) -> Result<Report> {
    ensure!(cut_after < events, "cut_after must be below events");
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{server}/v1/topics"))
        .json(&json!({ "name": topic, "partitions": 2 }))
        .send()
        .await
        .context("cannot reach Herald")?;
    ensure!(
        created.status().is_success(),
        "creating the topic: {}",
        created.text().await?
    );

    // Subscribe from now on; the subscription's start is fixed once the
    // response head arrives, so publishing after that loses nothing.
    let url = format!("{server}/v1/topics/{topic}/events/stream?from=latest");
    let first = http.get(&url).send().await?.error_for_status()?;
    let publisher = tokio::spawn(publish(
        http.clone(),
        format!("{server}/v1/topics/{topic}/events"),
        events,
    ));

    let mut received: Vec<Value> = Vec::with_capacity(events);
    let last_id = read_events(first, cut_after, &mut received).await?;
    // The connection is dropped here: cut off mid-stream, while the
    // publisher goes on.
    let before_cut = received.len();
    let resumed = http
        .get(&url)
        .header("Last-Event-ID", &last_id)
        .send()
        .await?
        .error_for_status()?;
    read_events(resumed, events - before_cut, &mut received).await?;
    publisher.await??;

    check(&received, events)?;
    Ok(Report {
        published: events,
        received: received.len(),
        before_cut,
        resumed_from: last_id,
    })
}

async fn publish(http: reqwest::Client, url: String, events: usize) -> Result<()> {
    for index in 0..events {
        let event = json!({
            "specversion": "1.0",
            "id": format!("evt-{index}"),
            "source": "/scenario/subscription-gateway",
            "type": "demo.tick",
            "key": format!("key-{}", index % 4),
            "data": { "sequence": index },
        });
        let answer = http
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .json(&event)
            .send()
            .await?;
        ensure!(
            answer.status().is_success(),
            "publish {index}: {}",
            answer.text().await?
        );
        if index % 10 == 0 {
            // Let the subscriber see events arrive over time, not all at once.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(())
}

/// Reads `count` SSE events from `response` into `received`; returns the last
/// SSE id.
async fn read_events(
    response: reqwest::Response,
    count: usize,
    received: &mut Vec<Value>,
) -> Result<String> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut last_id = String::new();
    let mut taken = 0;
    while taken < count {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .context("no event within 30 s")?
            .context("the stream ended")??;
        buffer.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let (mut id, mut data) = (None, String::new());
            for line in frame.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                } else if line.starts_with("event: error") {
                    bail!("the server ended the stream with an error: {frame}");
                }
            }
            let Some(id) = id else { continue }; // a keep-alive comment
            received.push(serde_json::from_str(&data)?);
            last_id = id;
            taken += 1;
            if taken == count {
                break;
            }
        }
    }
    Ok(last_id)
}

/// Every event exactly once, and per key in publish order.
fn check(received: &[Value], events: usize) -> Result<()> {
    let mut seen = HashSet::new();
    let mut last_per_key: HashMap<String, u64> = HashMap::new();
    for event in received {
        let id = event["id"].as_str().context("event without id")?.to_owned();
        ensure!(seen.insert(id.clone()), "{id} received twice");
        let sequence = event["data"]["sequence"]
            .as_u64()
            .context("event without sequence")?;
        let key = event["key"]
            .as_str()
            .context("event without key")?
            .to_owned();
        if let Some(previous) = last_per_key.insert(key.clone(), sequence) {
            ensure!(
                previous < sequence,
                "key {key}: {sequence} after {previous}"
            );
        }
    }
    ensure!(
        seen.len() == events,
        "received {} of {events} events",
        seen.len()
    );
    Ok(())
}
