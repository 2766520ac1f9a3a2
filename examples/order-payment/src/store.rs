//! Orders over Herald's event streams (HTTP, no SDK yet).
//!
//! Each order is a stream (`order-<id>`) on the category topic `orders`.
//! Handling a command:
//!
//! ```text
//! 1. load: the latest snapshot (if any), then the events after it, folded
//!    with evolve()                              → (state, version)
//! 2. decide(command, state)                    → events, or a rejection
//! 3. append them with expected_version = version (no_stream if none)
//!    409 version_conflict: someone appended first → back to 1, at most
//!    `max_attempts` times
//! 4. every `snapshot_every` versions: PUT the new state as a snapshot
//! ```
//!
//! Snapshots are an optimization: a missing or failed one only makes the
//! next load read more events.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::order::{Command, OrderEvent, OrderState, Rejection, decide, evolve, initial_state};

/// Events read per page when loading.
const PAGE: u32 = 100;

/// An order's state as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The folded state.
    pub state: OrderState,
    /// The stream's version, or `None` if the order does not exist.
    pub version: Option<u64>,
    /// The version of the snapshot the load started from, if any.
    pub snapshot_version: Option<u64>,
    /// Events read after the snapshot.
    pub events_read: usize,
}

/// A command that went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The version of the first event written.
    pub first_version: u64,
    /// The version of the last event written.
    pub last_version: u64,
    /// Version conflicts met (and retried) on the way.
    pub conflicts: u32,
}

/// Why a command did not go through.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The decider refused it (possibly after retrying a conflict: the
    /// reloaded state no longer allowed it).
    #[error("refused after {conflicts} version conflicts: {rejection}")]
    Rejected {
        /// Why.
        rejection: Rejection,
        /// Version conflicts met before the refusal.
        conflicts: u32,
    },
    /// Every attempt met a version conflict.
    #[error("gave up after {attempts} version conflicts")]
    Contended {
        /// Attempts made.
        attempts: u32,
    },
    /// Herald could not be reached or answered something unexpected.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The orders of one Herald server.
#[derive(Debug, Clone)]
pub struct Orders {
    http: reqwest::Client,
    base: String,
    topic: String,
    snapshot_every: u64,
    max_attempts: u32,
}

impl Orders {
    /// Orders on `topic` of the Herald at `server`: a snapshot every
    /// `snapshot_every` versions (at least 1); at most 5 attempts per
    /// command.
    pub fn new(server: &str, topic: &str, snapshot_every: u64) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: server.trim_end_matches('/').to_owned(),
            topic: topic.to_owned(),
            snapshot_every: snapshot_every.max(1),
            max_attempts: 5,
        }
    }

    /// The category topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the category topic (an existing one is fine).
    pub async fn create_topic(&self) -> Result<()> {
        let response = self
            .http
            .post(format!("{}/v1/topics", self.base))
            .json(&json!({ "name": self.topic, "partitions": 2 }))
            .send()
            .await
            .context("cannot reach Herald")?;
        ensure!(
            response.status().is_success() || response.status() == StatusCode::CONFLICT,
            "creating topic {}: {}",
            self.topic,
            response.text().await?
        );
        Ok(())
    }

    /// The order's whole history, in version order.
    pub async fn history(&self, order: &str) -> Result<Vec<(u64, OrderEvent)>> {
        self.events_from(order, 0).await
    }

    /// The order's state: the latest snapshot plus the events after it.
    pub async fn load(&self, order: &str) -> Result<Loaded> {
        let snapshot = self.snapshot(order).await?;
        let (state, snapshot_version) = match snapshot {
            Some((version, state)) => (state, Some(version)),
            None => (initial_state(), None),
        };
        let from = snapshot_version.map_or(0, |version| version + 1);
        let events = self.events_from(order, from).await?;
        let version = events
            .last()
            .map(|(version, _)| *version)
            .or(snapshot_version);
        Ok(Loaded {
            state: events.iter().map(|(_, event)| event).fold(state, evolve),
            version,
            snapshot_version,
            events_read: events.len(),
        })
    }

    /// Handles `command` on `order`: load, decide, append with the expected
    /// version, retry on conflict (see the module docs).
    pub async fn handle(&self, order: &str, command: &Command) -> Result<Handled, HandleError> {
        self.handle_with(order, command, None).await
    }

    /// Like [`Orders::handle`], and the first attempt waits at `barrier`
    /// between loading and appending: lets a test line up concurrent
    /// commands on the same version.
    pub async fn handle_with(
        &self,
        order: &str,
        command: &Command,
        barrier: Option<&Barrier>,
    ) -> Result<Handled, HandleError> {
        let mut conflicts = 0;
        for attempt in 0..self.max_attempts {
            let loaded = self.load(order).await?;
            let events =
                decide(command, &loaded.state).map_err(|rejection| HandleError::Rejected {
                    rejection,
                    conflicts,
                })?;
            if attempt == 0
                && let Some(barrier) = barrier
            {
                barrier.wait().await;
            }
            match self.append(order, &events, loaded.version).await? {
                Some((first_version, last_version)) => {
                    let state = events.iter().fold(loaded.state, evolve);
                    self.maybe_snapshot(order, loaded.version, last_version, &state)
                        .await;
                    return Ok(Handled {
                        first_version,
                        last_version,
                        conflicts,
                    });
                }
                None => {
                    conflicts += 1;
                    // Someone else appended: back off a little, reload.
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt + 1))).await;
                }
            }
        }
        Err(HandleError::Contended {
            attempts: self.max_attempts,
        })
    }

    /// Appends `events` expecting `version`; `None` on a version conflict.
    async fn append(
        &self,
        order: &str,
        events: &[OrderEvent],
        version: Option<u64>,
    ) -> Result<Option<(u64, u64)>> {
        let expected = version.map_or(json!("no_stream"), |version| json!(version));
        let body = json!({
            "events": events.iter().map(OrderEvent::to_cloudevent).collect::<Vec<_>>(),
            "expected_version": expected,
        });
        let response = self
            .http
            .post(self.stream_url(order, "/events"))
            .json(&body)
            .send()
            .await?;
        if response.status() == StatusCode::CONFLICT {
            let problem: Value = response.json().await?;
            ensure!(
                problem["code"] == "version_conflict",
                "unexpected conflict: {problem}"
            );
            return Ok(None);
        }
        let answer = expect_success(response).await?;
        let version = |name: &str| {
            answer[name]
                .as_u64()
                .ok_or_else(|| anyhow!("append answer without {name}: {answer}"))
        };
        Ok(Some((version("first_version")?, version("last_version")?)))
    }

    /// Writes a snapshot when the append crossed a multiple of
    /// `snapshot_every`. Best effort: a failure is only a slower next load.
    async fn maybe_snapshot(
        &self,
        order: &str,
        before: Option<u64>,
        version: u64,
        state: &OrderState,
    ) {
        let bucket = |version: u64| (version + 1) / self.snapshot_every;
        if before.is_some_and(|before| bucket(before) == bucket(version))
            || (before.is_none() && bucket(version) == 0)
        {
            return;
        }
        let body = json!({ "version": version, "state": state });
        let _ = self
            .http
            .put(self.stream_url(order, "/snapshot"))
            .json(&body)
            .send()
            .await;
    }

    async fn snapshot(&self, order: &str) -> Result<Option<(u64, OrderState)>> {
        let response = self
            .http
            .get(self.stream_url(order, "/snapshot"))
            .send()
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let snapshot = expect_success(response).await?;
        let version = snapshot["version"]
            .as_u64()
            .ok_or_else(|| anyhow!("snapshot without a version: {snapshot}"))?;
        let state = serde_json::from_value(snapshot["state"].clone())
            .context("a snapshot of another shape")?;
        Ok(Some((version, state)))
    }

    /// The events of `order` from `from` on; none if the stream does not
    /// exist.
    async fn events_from(&self, order: &str, from: u64) -> Result<Vec<(u64, OrderEvent)>> {
        let mut events = Vec::new();
        let mut next = Some(from);
        while let Some(from) = next {
            let url = self.stream_url(order, &format!("/events?from_version={from}&limit={PAGE}"));
            let response = self.http.get(url).send().await?;
            if response.status() == StatusCode::NOT_FOUND {
                break;
            }
            let page = expect_success(response).await?;
            for event in page["events"].as_array().into_iter().flatten() {
                let version = event["version"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("event without a version: {event}"))?;
                let decoded = OrderEvent::from_cloudevent(event)
                    .ok_or_else(|| anyhow!("not an order event: {event}"))?;
                events.push((version, decoded));
            }
            next = page["next_version"].as_u64();
        }
        Ok(events)
    }

    fn stream_url(&self, order: &str, rest: &str) -> String {
        format!(
            "{}/v1/topics/{}/streams/order-{order}{rest}",
            self.base, self.topic
        )
    }
}

/// The JSON body of a 2xx answer, or an error with the problem document.
pub(crate) async fn expect_success(response: reqwest::Response) -> Result<Value> {
    let status = response.status();
    let text = response.text().await?;
    ensure!(status.is_success(), "Herald answered {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
}
