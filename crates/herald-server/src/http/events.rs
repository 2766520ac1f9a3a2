//! Events: `POST /v1/topics/{topic}/events` (publish) and
//! `GET /v1/topics/{topic}/events` (read a partition).
//!
//! Publishing accepts the CloudEvents HTTP content modes:
//!
//! | request | mode |
//! |---|---|
//! | `Content-Type: application/cloudevents+json` | structured, one event |
//! | `Content-Type: application/cloudevents-batch+json` | batch: a JSON array |
//! | a `ce-specversion` header (any other content type) | binary: `ce-*` headers, the body is `data` |
//! | `Content-Type: application/json` without `ce-specversion` | structured, one event |
//!
//! Anything else is 415. The answer (201) comes only after the backend
//! returns, which is once every event is durable under the topic's fsync
//! policy.

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use herald_backend::PublishResult;
use herald_types::{EventInput, StoredEvent, TopicName, parse_rfc3339_ms};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::extract::{NoQuery, Query, TopicPath, media_type, read_body};
use crate::problem::{Code, Problem};
use axum::Extension;

/// Structured mode, one event.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// Batch mode, an array of events.
pub const CLOUDEVENTS_BATCH_JSON: &str = "application/cloudevents-batch+json";
/// The header whose presence selects binary mode.
pub const BINARY_MODE_HEADER: &str = "ce-specversion";

/// Events a read returns when `limit` is not given.
pub const DEFAULT_READ_LIMIT: u32 = 100;
/// The most events one read returns.
pub const MAX_READ_LIMIT: u32 = 10_000;

/// `POST /v1/topics/{topic}/events` → 201 `{results: [{id, partition, offset, duplicate}]}`.
#[utoipa::path(
    post, path = "/v1/topics/{topic}/events", tag = "events",
    params(
        ("topic" = TopicName, Path, description = "The topic.", example = "orders"),
        ("ce-specversion" = Option<String>, Header, description = "Binary mode: its presence makes the body the event's data and the `ce-*` headers its attributes (`ce-id`, `ce-source`, `ce-type`, `ce-subject`, `ce-key`, `ce-partition`, `ce-delayms`, …; `topic`, `offset` and `appendedat` are Herald's and refused)."),
        ("ce-source" = Option<String>, Header, description = "Binary mode: the source."),
        ("ce-type" = Option<String>, Header, description = "Binary mode: the type."),
        ("ce-id" = Option<String>, Header, description = "Binary mode: the id (assigned when absent)."),
    ),
    request_body(
        description = "One CloudEvent (structured mode), a JSON array of them (batch mode), or \
                       any body with `ce-*` headers (binary mode).",
        content(
            (EventInput = "application/cloudevents+json"),
            (EventInput = "application/json"),
            (Vec<EventInput> = "application/cloudevents-batch+json"),
            (Vec<u8> = "application/octet-stream"),
        )
    ),
    responses(
        (status = 201, description = "Appended, and durable under the topic's fsync policy.",
         body = PublishResponse),
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    Extension(caller): Extension<crate::auth::Caller>,
    TopicPath(topic): TopicPath,
    _query: NoQuery,
    headers: axum::http::HeaderMap,
    PublishBody(mut events): PublishBody,
) -> Result<(StatusCode, Json<PublishResponse>), Problem> {
    caller.publish(events.len(), crate::auth::limits::payload_bytes(&events))?;
    let _spans = crate::trace::publishing(&topic, &mut events, crate::trace::incoming(&headers));
    let results = state.backend()?.publish(&topic, events).await?;
    Ok((StatusCode::CREATED, Json(PublishResponse { results })))
}

#[utoipa::path(
    get, path = "/v1/topics/{topic}/events", tag = "events",
    params(("topic" = TopicName, Path, description = "The topic.", example = "orders"), ReadQuery),
    responses((status = 200, description = "Events of one partition, in offset order.", body = ReadResponse))
)]
/// `GET /v1/topics/{topic}/events?partition=&from_offset=|from_time=&limit=`
/// → 200 `{events: [...], next_offset}`. Without `from_offset` or
/// `from_time`, reads from the first event still kept.
pub async fn read(
    State(state): State<AppState>,
    TopicPath(topic): TopicPath,
    Query(query): Query<ReadQuery>,
) -> Result<Json<ReadResponse>, Problem> {
    let backend = state.backend()?;
    let partition = query.partition.unwrap_or(0);
    let limit = query.limit()?;
    let from = match query.start()? {
        ReadFrom::Offset(offset) => offset,
        ReadFrom::Time(time_ms) => backend.offset_for_time(&topic, partition, time_ms).await?,
        ReadFrom::Earliest => {
            let description = backend.describe_topic(&topic).await?;
            description
                .partition_info
                .get(partition as usize)
                .map_or(0, |info| info.start_offset)
        }
    };
    let read = backend
        .read(&topic, partition, from, limit as usize)
        .await?;
    Ok(Json(ReadResponse {
        events: read.events,
        next_offset: read.next_offset,
    }))
}

/// Publish answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublishResponse {
    results: Vec<PublishResult>,
}

/// Query of a read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// The partition (default 0).
    partition: Option<u32>,
    /// Read from this offset…
    from_offset: Option<u64>,
    /// …or from the first event appended at or after this RFC 3339 time.
    #[param(format = DateTime)]
    from_time: Option<String>,
    /// At most this many events (default 100, at most 10,000).
    #[param(minimum = 1, maximum = 10_000)]
    limit: Option<u32>,
}

impl ReadQuery {
    fn limit(&self) -> Result<u32, Problem> {
        let limit = self.limit.unwrap_or(DEFAULT_READ_LIMIT);
        if !(1..=MAX_READ_LIMIT).contains(&limit) {
            return Err(Problem::new(
                Code::InvalidArgument,
                format!("invalid limit: must be between 1 and {MAX_READ_LIMIT}"),
            ));
        }
        Ok(limit)
    }

    /// Where to start: an offset, a time, or (neither given) the earliest.
    fn start(&self) -> Result<ReadFrom, Problem> {
        match (self.from_offset, &self.from_time) {
            (Some(_), Some(_)) => Err(Problem::new(
                Code::InvalidArgument,
                "invalid from_offset: give from_offset or from_time, not both",
            )),
            (Some(offset), None) => Ok(ReadFrom::Offset(offset)),
            (None, Some(time)) => parse_rfc3339_ms(time).map(ReadFrom::Time).map_err(|error| {
                Problem::new(Code::InvalidArgument, format!("invalid from_time: {error}"))
            }),
            (None, None) => Ok(ReadFrom::Earliest),
        }
    }
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFrom {
    /// This offset.
    Offset(u64),
    /// The first event appended at or after this time (ms since the epoch).
    Time(i64),
    /// The first event still kept.
    Earliest,
}

/// Read answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadResponse {
    events: Vec<StoredEvent>,
    next_offset: u64,
}

/// The events of a publish request, decoded per its content mode (see the
/// module docs). The content type is checked before the body is read.
#[derive(Debug)]
pub struct PublishBody(pub Vec<EventInput>);

impl FromRequest<AppState> for PublishBody {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Problem> {
        let mode = Mode::of(request.headers())?;
        let now_ms = state.clock.now_ms();
        let events = match mode {
            Mode::Structured => {
                let body = read_body(request, state).await?;
                vec![EventInput::from_json(&body, now_ms)?]
            }
            Mode::Batch => {
                let body = read_body(request, state).await?;
                EventInput::batch_from_json(&body, now_ms)?
            }
            Mode::Binary => {
                let binary = BinaryHeaders::of(request.headers())?;
                let body = read_body(request, state).await?;
                let attributes = binary
                    .attributes
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str()));
                vec![EventInput::from_binary(
                    attributes,
                    binary.content_type.as_deref(),
                    body,
                    now_ms,
                )?]
            }
        };
        Ok(Self(events))
    }
}

/// The CloudEvents HTTP content mode of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Structured,
    Batch,
    Binary,
}

impl Mode {
    fn of(headers: &HeaderMap) -> Result<Self, Problem> {
        let media = media_type(headers)?;
        match media.as_deref() {
            Some(CLOUDEVENTS_JSON) => Ok(Self::Structured),
            Some(CLOUDEVENTS_BATCH_JSON) => Ok(Self::Batch),
            _ if headers.contains_key(BINARY_MODE_HEADER) => Ok(Self::Binary),
            Some("application/json") => Ok(Self::Structured),
            other => Err(Problem::new(
                Code::UnsupportedMediaType,
                format!(
                    "{} cannot be published; send one event as {CLOUDEVENTS_JSON} or \
                     application/json, a batch as {CLOUDEVENTS_BATCH_JSON}, or use binary \
                     mode (ce-specversion, ce-id, ce-source, ce-type headers; the body is the \
                     data).",
                    other.map_or_else(
                        || "A request without Content-Type".to_owned(),
                        |media| format!("Content-Type {media}")
                    )
                ),
            )),
        }
    }
}

/// What a binary-mode publish carries in its headers, copied out so the
/// body can be read after.
#[derive(Debug)]
struct BinaryHeaders {
    /// The `ce-*` headers.
    attributes: Vec<(String, String)>,
    /// The raw `Content-Type` (it becomes `datacontenttype`).
    content_type: Option<String>,
}

impl BinaryHeaders {
    /// A `ce-*` header that is not visible ASCII is refused.
    fn of(headers: &HeaderMap) -> Result<Self, Problem> {
        let mut attributes = Vec::new();
        for (name, value) in headers {
            if !name.as_str().starts_with("ce-") {
                continue;
            }
            let value = value.to_str().map_err(|_not_ascii| {
            Problem::new(
                Code::InvalidEvent,
                format!(
                    "header {name} is not visible ASCII; percent-encode it (CloudEvents HTTP binding)"
                ),
            )
        })?;
            attributes.push((name.as_str().to_owned(), value.to_owned()));
        }
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok(Self {
            attributes,
            content_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use axum::http::header::CONTENT_TYPE;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn given_content_types_when_mode_chosen_should_follow_the_cloudevents_binding() {
        let cases = [
            (
                vec![(CONTENT_TYPE.as_str(), CLOUDEVENTS_JSON)],
                Mode::Structured,
            ),
            (
                vec![(
                    CONTENT_TYPE.as_str(),
                    "application/cloudevents+json; charset=utf-8",
                )],
                Mode::Structured,
            ),
            (
                vec![(CONTENT_TYPE.as_str(), CLOUDEVENTS_BATCH_JSON)],
                Mode::Batch,
            ),
            (
                vec![(CONTENT_TYPE.as_str(), "application/json")],
                Mode::Structured,
            ),
            (
                vec![
                    (CONTENT_TYPE.as_str(), "application/json"),
                    ("ce-specversion", "1.0"),
                ],
                Mode::Binary,
            ),
            (
                vec![
                    (CONTENT_TYPE.as_str(), "image/png"),
                    ("ce-specversion", "1.0"),
                ],
                Mode::Binary,
            ),
            (vec![("ce-specversion", "1.0")], Mode::Binary),
        ];
        for (pairs, expected) in cases {
            let map = headers(&pairs.iter().map(|(n, v)| (*n, *v)).collect::<Vec<_>>());
            assert_eq!(Mode::of(&map).unwrap(), expected, "{pairs:?}");
        }
    }

    #[test]
    fn given_other_content_type_without_ce_headers_should_be_415() {
        for pairs in [vec![(CONTENT_TYPE.as_str(), "text/plain")], vec![]] {
            let map = headers(&pairs);
            let problem = Mode::of(&map).unwrap_err();
            assert_eq!(problem.code(), Code::UnsupportedMediaType);
        }
    }

    #[test]
    fn given_read_query_with_both_starts_should_be_invalid_argument() {
        let query = ReadQuery {
            partition: None,
            from_offset: Some(1),
            from_time: Some("2026-01-01T00:00:00Z".to_owned()),
            limit: None,
        };
        assert_eq!(query.start().unwrap_err().code(), Code::InvalidArgument);
    }
}
