//! `/v1/topics/{topic}/streams/{stream}…`: event streams per aggregate
//! (`docs/api.md`, "Event streams").
//!
//! Optimistic concurrency over HTTP: `If-Match: "<version>"` (append only if
//! the stream is at that version), `If-Match: *` (the stream exists),
//! `If-None-Match: *` (it does not), or the body field `expected_version`
//! (`"any"`, `"no_stream"`, `"exists"` or a number). A mismatch is 409
//! `version_conflict` whose document carries `current_version`. The stream's
//! version is its `ETag`.

use axum::Json;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_backend::{Direction, ExpectedVersion, Snapshot};
use herald_types::{EventInput, StreamId, TopicName, format_rfc3339_ms};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::extract::{NoQuery, Query, read_body};
use crate::auth::Caller;
use crate::problem::{Code, Problem};
use axum::Extension;

/// Events a stream read returns when `limit` is not given.
pub const DEFAULT_READ_LIMIT: u32 = 100;
/// The most events one stream read returns.
pub const MAX_READ_LIMIT: u32 = 1_000;

/// The topic and stream of a stream path.
#[derive(Debug)]
pub struct StreamPath {
    /// The topic (the stream's category).
    pub topic: TopicName,
    /// The stream (aggregate id).
    pub stream: StreamId,
}

impl FromRequestParts<AppState> for StreamPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Path((topic, stream)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| Problem::new(Code::InvalidName, rejection.body_text()))?;
        Ok(Self {
            topic: topic.parse()?,
            stream: stream.parse()?,
        })
    }
}

/// The outcome of an append.
#[derive(Debug, Serialize, ToSchema)]
pub struct Appended {
    /// The version of the first event appended.
    pub first_version: u64,
    /// The version of the last event appended (the stream's new version).
    pub last_version: u64,
}

/// `POST /v1/topics/{topic}/streams/{stream}/events`: append one event, an
/// array, or `{events, expected_version}`, atomically.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/streams/{stream}/events", tag = "streams",
    params(
        ("topic" = String, Path, description = "The topic (the stream's category).", example = "orders"),
        ("stream" = String, Path, description = "The stream (aggregate id).", example = "order-42"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: append only at that version; `*`: the stream must exist."),
        ("If-None-Match" = Option<String>, Header, description = "`*`: the stream must not exist."),
    ),
    request_body(content = Value, description = "One CloudEvent, an array of them, or `{\"events\": [...], \"expected_version\": \"any\"|\"no_stream\"|\"exists\"|<n>}`; a single event may carry `expected_version` too.",
        content_type = "application/json"),
    responses((status = 201, description = "Appended; durable per the topic's fsync policy.", body = Appended,
        headers(("ETag" = String, description = "The stream's new version, quoted."))))
)]
pub async fn append(
    State(state): State<AppState>,
    StreamPath { topic, stream }: StreamPath,
    _query: NoQuery,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, Problem> {
    let backend = state.backend()?;
    let body = read_body(request, &state).await?;
    let value: Value = serde_json::from_slice(&body).map_err(|error| {
        Problem::new(
            Code::MalformedJson,
            format!("The body is not JSON: {error}."),
        )
    })?;
    let (events, body_expected) = split_body(value)?;
    let now = state.clock.now_ms();
    let mut inputs = match events {
        Value::Array(_) => {
            EventInput::batch_from_json(&serde_json::to_vec(&events).unwrap_or_default(), now)?
        }
        single => vec![EventInput::from_json(
            &serde_json::to_vec(&single).unwrap_or_default(),
            now,
        )?],
    };
    let expected = expectation(&headers, body_expected)?;
    let incoming = crate::trace::incoming(&headers);
    let _spans = crate::trace::appending(&topic, &stream, &mut inputs, incoming);
    let result = backend.append(&topic, &stream, inputs, expected).await?;
    let etag = format!("\"{}\"", result.last_version);
    let mut response = (
        StatusCode::CREATED,
        Json(Appended {
            first_version: result.first_version,
            last_version: result.last_version,
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

/// Splits an append body into the events and a body `expected_version`.
fn split_body(value: Value) -> Result<(Value, Option<Value>), Problem> {
    match value {
        Value::Array(_) => Ok((value, None)),
        Value::Object(mut members) => {
            let expected = members.remove("expected_version");
            match members.remove("events") {
                Some(events @ (Value::Array(_) | Value::Object(_))) if members.is_empty() => {
                    Ok((events, expected))
                }
                Some(_) => Err(Problem::new(
                    Code::InvalidArgument,
                    "`events` must be an array of events (or one event) and stand alone with `expected_version`.",
                )),
                None => Ok((Value::Object(members), expected)),
            }
        }
        _ => Err(Problem::new(
            Code::InvalidEvent,
            "The body must be an event, an array of events, or {events, expected_version}.",
        )),
    }
}

/// The expectation from `If-Match` / `If-None-Match` or the body; giving both
/// is an error.
fn expectation(headers: &HeaderMap, body: Option<Value>) -> Result<ExpectedVersion, Problem> {
    let text = |name| {
        headers
            .get(name)
            .map(|value| value.to_str().unwrap_or("").trim().to_owned())
    };
    let from_headers = match (text(header::IF_MATCH), text(header::IF_NONE_MATCH)) {
        (Some(_), Some(_)) => {
            return Err(Problem::new(
                Code::InvalidArgument,
                "Give If-Match or If-None-Match, not both.",
            ));
        }
        (None, Some(value)) if value == "*" => Some(ExpectedVersion::NoStream),
        (None, Some(value)) => {
            return Err(Problem::new(
                Code::InvalidArgument,
                format!("If-None-Match {value:?}: only * is supported."),
            ));
        }
        (Some(value), None) if value == "*" => Some(ExpectedVersion::Exists),
        (Some(value), None) => {
            let version = value.trim_matches('"').parse::<u64>().map_err(|_| {
                Problem::new(
                    Code::InvalidArgument,
                    format!("If-Match {value:?}: expected a quoted version such as \"3\"."),
                )
            })?;
            Some(ExpectedVersion::Exact(version))
        }
        (None, None) => None,
    };
    let from_body = match body {
        None => None,
        Some(Value::String(text)) => Some(match text.as_str() {
            "any" => ExpectedVersion::Any,
            "no_stream" => ExpectedVersion::NoStream,
            "exists" => ExpectedVersion::Exists,
            other => {
                return Err(Problem::new(
                    Code::InvalidArgument,
                    format!(
                        "expected_version {other:?}: use any, no_stream, exists or a version number."
                    ),
                ));
            }
        }),
        Some(Value::Number(number)) => Some(ExpectedVersion::Exact(number.as_u64().ok_or_else(
            || {
                Problem::new(
                    Code::InvalidArgument,
                    "expected_version must be a non-negative whole number.",
                )
            },
        )?)),
        Some(_) => {
            return Err(Problem::new(
                Code::InvalidArgument,
                "expected_version must be a string or a number.",
            ));
        }
    };
    match (from_headers, from_body) {
        (Some(_), Some(_)) => Err(Problem::new(
            Code::InvalidArgument,
            "Give the expectation in a header or the body, not both.",
        )),
        (Some(expected), None) | (None, Some(expected)) => Ok(expected),
        (None, None) => Ok(ExpectedVersion::Any),
    }
}

/// Query of a stream read.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// The version to start at (default: 0 forward, the last backward).
    from_version: Option<u64>,
    /// `forward` (default) or `backward`.
    #[param(value_type = Option<String>)]
    direction: Option<Direction>,
    /// At most this many events (1–1,000, default 100).
    limit: Option<u32>,
}

/// A page of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    /// The events, each with its `version`.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    /// The version to read next, or null at the end.
    pub next_version: Option<u64>,
}

/// `GET /v1/topics/{topic}/streams/{stream}/events`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/streams/{stream}/events", tag = "streams",
    params(
        ("topic" = String, Path, description = "The topic.", example = "orders"),
        ("stream" = String, Path, description = "The stream.", example = "order-42"),
        ReadQuery,
    ),
    responses((status = 200, description = "Events of the stream in version order.", body = StreamPage))
)]
pub async fn read(
    State(state): State<AppState>,
    StreamPath { topic, stream }: StreamPath,
    Query(query): Query<ReadQuery>,
) -> Result<Json<StreamPage>, Problem> {
    let backend = state.backend()?;
    let direction = query.direction.unwrap_or_default();
    let limit = query.limit.unwrap_or(DEFAULT_READ_LIMIT);
    if !(1..=MAX_READ_LIMIT).contains(&limit) {
        return Err(Problem::new(
            Code::InvalidArgument,
            "limit must be between 1 and 1000.",
        ));
    }
    let from = query.from_version.unwrap_or(match direction {
        Direction::Forward => 0,
        Direction::Backward => u64::MAX,
    });
    let slice = backend
        .read_stream(&topic, &stream, from, direction, limit as usize)
        .await?;
    let events = slice
        .events
        .into_iter()
        .map(|(version, event)| {
            let mut json = serde_json::to_value(&event).unwrap_or(Value::Null);
            if let Some(members) = json.as_object_mut() {
                members.insert("version".into(), json!(version));
            }
            json
        })
        .collect();
    Ok(Json(StreamPage {
        events,
        next_version: slice.next_version,
    }))
}

/// A stream's metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamInfo {
    /// The stream.
    pub stream: String,
    /// Its current version.
    pub version: u64,
    /// When its first event was appended (RFC 3339).
    pub created_at: String,
    /// When its last event was appended (RFC 3339).
    pub updated_at: String,
    /// Whether it was deleted.
    pub deleted: bool,
}

/// `GET /v1/topics/{topic}/streams/{stream}`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/streams/{stream}", tag = "streams",
    params(
        ("topic" = String, Path, description = "The topic.", example = "orders"),
        ("stream" = String, Path, description = "The stream.", example = "order-42"),
        ("If-None-Match" = Option<String>, Header, description = "ETags (`\"<version>\"`, comma-separated) or `*`: 304 Not Modified when one matches the stream's."),
    ),
    responses(
        (status = 200, description = "The stream's version and times.", body = StreamInfo,
         headers(("ETag" = String, description = "The stream's version, quoted."))),
        (status = 304, description = "Not modified: `If-None-Match` names the stream's current ETag; no body.",
         headers(("ETag" = String, description = "The stream's version, quoted."))),
    )
)]
pub async fn metadata(
    State(state): State<AppState>,
    StreamPath { topic, stream }: StreamPath,
    _query: NoQuery,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let metadata = state.backend()?.stream_metadata(&topic, &stream).await?;
    let etag = format!("\"{}\"", metadata.version);
    if let Some(condition) = headers.get(header::IF_NONE_MATCH)
        && none_match_fails(condition.to_str().unwrap_or_default(), &etag)
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(value) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, value);
        }
        return Ok(response);
    }
    let mut response = Json(StreamInfo {
        stream: metadata.stream.to_string(),
        version: metadata.version,
        created_at: format_rfc3339_ms(metadata.created_at),
        updated_at: format_rfc3339_ms(metadata.updated_at),
        deleted: metadata.deleted,
    })
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

/// Whether `If-None-Match: condition` fails for a resource whose ETag is
/// `etag` (RFC 9110 §13.1.2: `*`, or any listed tag equal under the weak
/// comparison): a GET then answers 304 Not Modified.
fn none_match_fails(condition: &str, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let condition = condition.trim();
    condition == "*" || condition.split(',').any(|tag| opaque(tag) == opaque(etag))
}

/// Query of a delete.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// `true`: remove the stream's events from every read (hard delete).
    hard: Option<bool>,
}

/// `DELETE /v1/topics/{topic}/streams/{stream}`.
#[utoipa::path(
    delete, path = "/v1/topics/{topic}/streams/{stream}", tag = "streams",
    params(
        ("topic" = String, Path, description = "The topic.", example = "orders"),
        ("stream" = String, Path, description = "The stream.", example = "order-42"),
        DeleteQuery,
    ),
    responses((status = 204, description = "Deleted."))
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    StreamPath { topic, stream }: StreamPath,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, Problem> {
    let hard = query.hard.unwrap_or(false);
    state
        .backend()?
        .delete_stream(&topic, &stream, hard)
        .await?;
    if hard {
        caller
            .stream_hard_deleted(topic.as_str(), stream.as_str())
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A snapshot of a stream's folded state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// The version the state was folded up to.
    pub version: u64,
    /// The state: any JSON value (an object, a number, …).
    pub state: Value,
}

/// `PUT /v1/topics/{topic}/streams/{stream}/snapshot`.
#[utoipa::path(
    put, path = "/v1/topics/{topic}/streams/{stream}/snapshot", tag = "streams",
    params(
        ("topic" = String, Path, description = "The topic.", example = "orders"),
        ("stream" = String, Path, description = "The stream.", example = "order-42"),
    ),
    request_body(content = SnapshotBody, description = "The state folded up to `version` (at most the stream's version)."),
    responses((status = 200, description = "Stored.", body = SnapshotBody))
)]
pub async fn put_snapshot(
    State(state): State<AppState>,
    StreamPath { topic, stream }: StreamPath,
    _query: NoQuery,
    request: Request,
) -> Result<Json<SnapshotBody>, Problem> {
    let backend = state.backend()?;
    let body = read_body(request, &state).await?;
    let snapshot: SnapshotBody = super::extract::parse_json(&body)?;
    backend
        .put_snapshot(&topic, &stream, snapshot.version, snapshot.state.clone())
        .await?;
    Ok(Json(snapshot))
}

/// `GET /v1/topics/{topic}/streams/{stream}/snapshot`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/streams/{stream}/snapshot", tag = "streams",
    params(
        ("topic" = String, Path, description = "The topic.", example = "orders"),
        ("stream" = String, Path, description = "The stream.", example = "order-42"),
    ),
    responses((status = 200, description = "The latest snapshot.", body = SnapshotBody))
)]
pub async fn get_snapshot(
    State(state): State<AppState>,
    StreamPath { topic, stream }: StreamPath,
    _query: NoQuery,
) -> Result<Json<SnapshotBody>, Problem> {
    match state.backend()?.get_snapshot(&topic, &stream).await? {
        Some(Snapshot { version, state }) => Ok(Json(SnapshotBody { version, state })),
        None => Err(Problem::new(
            Code::NotFound,
            format!("Stream {stream} has no snapshot."),
        )),
    }
}
