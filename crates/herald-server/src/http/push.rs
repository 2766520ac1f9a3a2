//! Push to clients: SSE and WebSocket subscriptions to a topic, and
//! consuming a group over a WebSocket.
//!
//! - `GET /v1/topics/{topic}/events/stream` (SSE): one SSE event per Herald
//!   event, `data` = the event's JSON, `id` = the positions after it (see
//!   [`tail`](super::tail)), so `Last-Event-ID` resumes exactly. Query:
//!   `from=earliest|latest|<p>:<o>,…` (default `latest`; `Last-Event-ID` wins),
//!   `type` (comma-separated), `subject` (prefix), `correlationid`. Keep-alive
//!   comments every 15 s.
//! - `GET /v1/topics/{topic}/ws`: the same query; one JSON text message per
//!   event: `{"id": "<positions>", "event": {…}}`.
//! - `GET /v1/topics/{topic}/groups/{group}/ws?member=&max=`: deliveries out
//!   (`{"delivery": {delivery_id, attempt, event}}`), settlements in
//!   (`{"ack": [ids]}`, `{"nack": [ids], "delay_ms": n}`, `{"extend": [ids]}`,
//!   `{"reject": [ids], "reason": "…"}`), each answered with its REST reply
//!   under its name (`{"nack": {"nacked": 1, "unknown": []}}`) or
//!   `{"error": problem}` with the REST codes (see `Settlement::from_message`).
//!   At most `max` deliveries are unsettled on the socket; when it closes the
//!   member leaves the group, so its leases return at once.
//!
//! Errors after the stream started: SSE sends `event: error` with the problem
//! JSON and ends; WebSocket sends `{"error": {…}}` and closes. A WebSocket
//! message (or frame) larger than `limits.max_request_bytes` closes the
//! socket.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use herald_backend::{Backend, FetchRequest};
use herald_types::{GroupName, TopicName};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::extract::{GroupPath, Query, TopicPath};
use super::groups::{ExtendOutcome, MAX_REASON_BYTES, NackOutcome, RejectOutcome};
use super::tail::{self, Filter, Start};
use crate::problem::{Code, Problem};

/// The query of a topic subscription.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct TailQuery {
    /// Where to start: `earliest`, `latest` (default) or
    /// `<partition>:<offset>,…` (as an SSE id).
    from: Option<String>,
    /// Only these event types (comma-separated).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    types: Option<String>,
    /// Only events whose subject starts with this.
    subject: Option<String>,
    /// Only events with this correlation id.
    correlationid: Option<String>,
}

/// Resolves a subscription: the topic, where it starts, its filter.
async fn subscription(
    backend: &dyn Backend,
    topic: &TopicName,
    query: TailQuery,
    last_event_id: Option<&str>,
) -> Result<(Vec<u64>, Filter), Problem> {
    let start_text = last_event_id.or(query.from.as_deref()).unwrap_or("latest");
    let start: Start = start_text.parse().map_err(|error| {
        Problem::new(
            Code::InvalidArgument,
            format!("Bad start position {start_text:?}: {error}."),
        )
    })?;
    let positions = tail::start(backend, topic, &start).await?;
    let filter = Filter {
        types: query
            .types
            .map(|types| {
                types
                    .split(',')
                    .filter(|ty| !ty.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        subject: query.subject,
        correlationid: query.correlationid,
    };
    Ok((positions, filter))
}

/// A request to a WebSocket endpoint that is not a WebSocket upgrade.
#[expect(clippy::needless_pass_by_value, reason = "used as a map_err function")]
pub(crate) fn upgrade_problem(rejection: WebSocketUpgradeRejection) -> Problem {
    Problem::new(
        Code::InvalidArgument,
        format!("This endpoint speaks WebSocket: {}.", rejection.body_text()),
    )
}

/// A socket's incoming messages (and frames) are bounded like request
/// bodies, by `limits.max_request_bytes` (axum's own default is 64 MiB): a
/// larger one closes the socket before it is
/// buffered whole.
pub(crate) fn limited(upgrade: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    upgrade
        .max_message_size(state.max_request_bytes)
        .max_frame_size(state.max_request_bytes)
}

fn problem_json(problem: &Problem) -> Value {
    serde_json::to_value(problem).unwrap_or(Value::Null)
}

/// `GET /v1/topics/{topic}/events/stream`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/events/stream", tag = "events",
    params(
        ("topic" = TopicName, Path, description = "The topic.", example = "orders"), TailQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume exactly after the event with this SSE id (it wins over `from`)."),
    ),
    responses(
        (status = 200, description = "Server-sent events: one per Herald event, `data` = the event's JSON, `id` = the positions to resume after it; keep-alive comments every 15 s; `event: error` with a problem JSON if the stream fails.",
         content_type = "text/event-stream", body = String),
    )
)]
pub(crate) async fn sse(
    State(state): State<AppState>,
    TopicPath(topic): TopicPath,
    Query(query): Query<TailQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let backend = state.shared_backend()?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    let (positions, filter) = subscription(&*backend, &topic, query, last_event_id).await?;
    let events = tail::follow(backend, topic, positions, filter)
        .map(|item| {
            Ok::<_, std::convert::Infallible>(match item {
                Ok(tailed) => Event::default()
                    .id(tailed.resume.to_string())
                    .json_data(&tailed.event)
                    .unwrap_or_else(|error| {
                        Event::default().event("error").data(error.to_string())
                    }),
                Err(error) => Event::default()
                    .event("error")
                    .data(problem_json(&Problem::from(error)).to_string()),
            })
        })
        // Shutdown must not wait for subscribers: their streams end, and a
        // client reconnects with its Last-Event-ID.
        .take_until(state.stopping.clone().cancelled_owned());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `GET /v1/topics/{topic}/ws`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/ws", tag = "events",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), TailQuery),
    responses(
        (status = 101, description = "Switching Protocols to a WebSocket: one JSON text message per event, `{\"id\": \"<positions>\", \"event\": {…}}`."),
    )
)]
pub(crate) async fn tail_ws(
    State(state): State<AppState>,
    TopicPath(topic): TopicPath,
    Query(query): Query<TailQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let backend = state.shared_backend()?;
    let (positions, filter) = subscription(&*backend, &topic, query, None).await?;
    let upgrade = limited(upgrade.map_err(upgrade_problem)?, &state);
    let stopping = state.stopping.clone();
    Ok(upgrade
        .on_upgrade(move |socket| tail_socket(socket, backend, topic, positions, filter, stopping)))
}

async fn tail_socket(
    socket: WebSocket,
    backend: Arc<dyn Backend>,
    topic: TopicName,
    positions: Vec<u64>,
    filter: Filter,
    stopping: CancellationToken,
) {
    let (mut sender, mut receiver) = socket.split();
    let mut events = Box::pin(tail::follow(backend, topic, positions, filter));
    loop {
        tokio::select! {
            item = events.next() => {
                let message = match item {
                    Some(Ok(tailed)) => json!({ "id": tailed.resume.to_string(), "event": tailed.event }),
                    Some(Err(error)) => json!({ "error": problem_json(&Problem::from(error)) }),
                    None => return,
                };
                let failed = message.get("error").is_some();
                if sender.send(Message::text(message.to_string())).await.is_err() || failed {
                    let _ = sender.close().await;
                    return;
                }
            }
            incoming = receiver.next() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            () = stopping.cancelled() => {
                let _ = sender.close().await;
                return;
            }
        }
    }
}

/// The query of a group socket.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupSocketQuery {
    /// The member id (generated when absent).
    member: Option<String>,
    /// Deliveries unsettled on the socket at most.
    max: Option<u32>,
}

/// A settlement from the client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settlement {
    ack: Option<Vec<String>>,
    nack: Option<Vec<String>>,
    delay_ms: Option<u64>,
    extend: Option<Vec<String>>,
    ack_wait_ms: Option<u64>,
    reject: Option<Vec<String>>,
    reason: Option<String>,
    /// Settle only once persisted (whatever the group's `ack_durability`).
    #[serde(default)]
    sync: bool,
}

impl Settlement {
    /// Parses and checks a settlement message as REST checks the same
    /// settlement's body, with the same codes (docs/errors.md): not JSON →
    /// `malformed_json`; an unknown field, a wrong type, no settlement, a
    /// field of a settlement the message does not make, `ack_wait_ms: 0` or
    /// a `reason` out of bounds → `invalid_argument`. A refused message
    /// settles nothing.
    fn from_message(text: &str) -> Result<Self, Problem> {
        let settlement: Self = serde_json::from_str(text).map_err(|error| {
            let code = if error.is_data() {
                Code::InvalidArgument
            } else {
                Code::MalformedJson
            };
            Problem::new(code, format!("Bad settlement message: {error}."))
        })?;
        let invalid = |detail: &str| Err(Problem::new(Code::InvalidArgument, detail.to_owned()));
        if settlement.ack.is_none()
            && settlement.nack.is_none()
            && settlement.extend.is_none()
            && settlement.reject.is_none()
        {
            return invalid(
                "Bad settlement message: it needs one of ack, nack, extend or reject (an array of delivery ids).",
            );
        }
        for (field, present, owner, made) in [
            (
                "delay_ms",
                settlement.delay_ms.is_some(),
                "nack",
                settlement.nack.is_some(),
            ),
            (
                "ack_wait_ms",
                settlement.ack_wait_ms.is_some(),
                "extend",
                settlement.extend.is_some(),
            ),
            (
                "reason",
                settlement.reason.is_some(),
                "reject",
                settlement.reject.is_some(),
            ),
        ] {
            if present && !made {
                return invalid(&format!(
                    "Bad settlement message: {field} belongs to {owner}, which it does not make."
                ));
            }
        }
        if settlement.ack_wait_ms == Some(0) {
            return invalid(
                "invalid ack_wait_ms: must be positive (omit it for the group's ack_wait_ms)",
            );
        }
        if let Some(reason) = &settlement.reason
            && (reason.is_empty() || reason.len() > MAX_REASON_BYTES)
        {
            return invalid(&format!(
                "invalid reason: must be 1 to {MAX_REASON_BYTES} bytes"
            ));
        }
        Ok(settlement)
    }
}

/// `GET /v1/topics/{topic}/groups/{group}/ws`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/groups/{group}/ws", tag = "groups",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ("group" = GroupName, Path, description = "The group.", example = "workers"), GroupSocketQuery),
    responses(
        (status = 101, description = "Switching Protocols to a WebSocket: deliveries out (`{\"delivery\": {…}}`), settlements in (`{\"ack\": [ids]}`, `{\"nack\": [ids], \"delay_ms\": n}`, `{\"extend\": [ids]}`, `{\"reject\": [ids], \"reason\": \"…\"}`; `\"sync\": true` answers once persisted), each answered with the REST reply under its name (`{\"nack\": {\"nacked\": 1, \"unknown\": []}}`) or `{\"error\": problem}`: `malformed_json` if not JSON, `invalid_argument` for an unknown field, a wrong type, no settlement, a field of another settlement, `ack_wait_ms: 0` or a bad `reason` (nothing settled)."),
    )
)]
pub(crate) async fn group_ws(
    State(state): State<AppState>,
    GroupPath { topic, group }: GroupPath,
    Query(query): Query<GroupSocketQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let backend = state.shared_backend()?;
    // Fail before the upgrade if the group does not exist.
    backend.group_status(&topic, &group).await?;
    let upgrade = limited(upgrade.map_err(upgrade_problem)?, &state);
    let stopping = state.stopping.clone();
    Ok(upgrade
        .on_upgrade(move |socket| group_socket(socket, backend, topic, group, query, stopping)))
}

async fn group_socket(
    socket: WebSocket,
    backend: Arc<dyn Backend>,
    topic: TopicName,
    group: GroupName,
    query: GroupSocketQuery,
    stopping: CancellationToken,
) {
    let member = query
        .member
        .unwrap_or_else(|| format!("ws-{}", uuid_like()));
    let max = query.max.unwrap_or(100).clamp(1, 10_000) as usize;
    let (mut sender, mut receiver) = socket.split();
    let mut unsettled: HashSet<String> = HashSet::new();
    loop {
        let credit = max.saturating_sub(unsettled.len());
        let fetch = async {
            if credit == 0 {
                std::future::pending::<()>().await;
            }
            let request = FetchRequest {
                member: member.clone(),
                max: credit as u32,
                wait_ms: 5_000,
            };
            backend.fetch(&topic, &group, request).await
        };
        tokio::select! {
            fetched = fetch => match fetched {
                Ok(mut response) => {
                    crate::trace::delivered(&topic, &group, &mut response);
                    for delivery in response.deliveries {
                        unsettled.insert(delivery.delivery_id.clone());
                        let message = json!({ "delivery": delivery });
                        if sender.send(Message::text(message.to_string())).await.is_err() {
                            break;
                        }
                    }
                }
                Err(error) => {
                    let message = json!({ "error": problem_json(&Problem::from(error)) });
                    let _ = sender.send(Message::text(message.to_string())).await;
                    break;
                }
            },
            incoming = receiver.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = settle(&*backend, &topic, &group, &text, &mut unsettled).await;
                    if sender.send(Message::text(reply.to_string())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            () = stopping.cancelled() => {
                let _ = sender.close().await;
                break;
            }
        }
    }
    // Return the leases now rather than after the ack wait.
    let _ = backend.leave(&topic, &group, &member).await;
}

async fn settle(
    backend: &dyn Backend,
    topic: &TopicName,
    group: &GroupName,
    text: &str,
    unsettled: &mut HashSet<String>,
) -> Value {
    let settlement = match Settlement::from_message(text) {
        Ok(settlement) => settlement,
        Err(problem) => return json!({ "error": problem_json(&problem) }),
    };
    let durability = super::groups::durability(settlement.sync);
    let mut outcome = json!({});
    let mut forget = |ids: &[String]| {
        for id in ids {
            unsettled.remove(id);
        }
    };
    if let Some(ids) = &settlement.ack {
        forget(ids);
        outcome["ack"] = result_json(backend.ack(topic, group, ids, durability).await);
        crate::trace::settled("ack", group, ids);
    }
    if let Some(ids) = &settlement.nack {
        forget(ids);
        let delay = settlement.delay_ms.map(Duration::from_millis);
        let result = backend.nack(topic, group, ids, delay, durability).await;
        outcome["nack"] = result_json(result.map(NackOutcome::from));
        crate::trace::settled("nack", group, ids);
    }
    if let Some(ids) = &settlement.extend {
        let wait = settlement.ack_wait_ms.map(Duration::from_millis);
        let result = backend.extend(topic, group, ids, wait, durability).await;
        outcome["extend"] = result_json(result.map(ExtendOutcome::from));
        crate::trace::settled("extend", group, ids);
    }
    if let Some(ids) = &settlement.reject {
        forget(ids);
        let reason = settlement
            .reason
            .as_deref()
            .unwrap_or("rejected over WebSocket");
        let result = backend.reject(topic, group, ids, reason, durability).await;
        outcome["reject"] = result_json(result.map(RejectOutcome::from));
        crate::trace::settled("reject", group, ids);
    }
    outcome
}

/// A settlement's answer: the REST reply's shape (`{acked|nacked|extended|rejected, unknown}`),
/// or `{"error": problem}`.
fn result_json<T: serde::Serialize>(result: herald_backend::Result<T>) -> Value {
    match result {
        Ok(outcome) => json!(outcome),
        Err(error) => json!({ "error": problem_json(&Problem::from(error)) }),
    }
}

/// A short random-enough member id for anonymous sockets.
fn uuid_like() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "{:016x}",
        RandomState::new().hash_one(std::time::SystemTime::now())
    )
}
