//! The OpenAPI 3.1 document (`GET /openapi.json`) and the browsable page
//! (`GET /docs`, Swagger UI with its assets compiled into the binary: no CDN).
//!
//! The document is generated from the code: each handler's
//! `#[utoipa::path]` attribute registers its route *and* its operation
//! (utoipa-axum's `routes!`), request and response types derive
//! `utoipa::ToSchema` (in herald-types and herald-backend behind their
//! `openapi` feature), and the types with hand-written serde have schemas
//! written to match it. [`finish`] then adds the error responses every
//! operation can give, as `application/problem+json` with the [`Problem`]
//! schema, from the one code table ([`Code`]).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{OpenApi as _, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};

use herald_types::{GroupName, StreamId, TopicName};
use serde_json::Value;

use super::AppState;
use crate::problem::{CONTENT_TYPE, Code, Problem};

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// Where the browsable page is served.
pub const DOCS_PATH: &str = "/docs";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Herald's REST API: topics, CloudEvents publishing and reading, consumer \
                       groups, push over SSE and WebSocket, jobs and blobs. Every error is an RFC 9457 problem \
                       (`application/problem+json`) with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "topics", description = "Create, list, describe, change and delete topics."),
        (name = "events", description = "Publish CloudEvents and read them back; follow a topic."),
        (name = "groups", description = "Consumer groups: fetch, settle, commit, dead letters."),
        (name = "jobs", description = "Jobs and scatter-gather parts: submit, await (long-poll or SSE), and the worker side. Workers fetch from `/v1/queues/{queue}/fetch` (group `workers` of topic `jobs.<queue>`) or consume that topic with a group of their own; each request event's data is `{job_id, queue, part, data, blob}`, keyed by the part key."),
        (name = "blobs", description = "Content-addressed blobs (`sha256:<hex>`): streamed upload, download with `Range`."),
        (name = "workflows", description = "Workflow definitions in the Serverless Workflow DSL 1.0 (YAML or JSON): deployed once per version, checked at deploy time."),
        (name = "operations", description = "Health, readiness, metrics, admin."),
    ),
    components(schemas(Problem, Code, TopicName, GroupName, StreamId))
)]
struct ApiDoc;

/// The document before routes are added: info, tags, shared schemas.
pub(super) fn base() -> OpenApi {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document
}

/// The document as served: [`render`], then what the derives cannot say
/// (unique operation ids, the server's limits, links:
/// [`super::openapi_refine`]).
pub(super) fn finish(document: OpenApi) -> Value {
    let mut json = render(document);
    let missing = super::openapi_refine::refine(&mut json);
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "OpenAPI rules found no target; the document lacks them."
        );
    }
    json
}

/// The generated document as JSON: [`with_problems`], then
/// [`inline_closed_bases`].
pub(super) fn render(document: OpenApi) -> Value {
    let mut json = serde_json::to_value(with_problems(document)).unwrap_or(Value::Null);
    let schemas = json
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or(Value::Null);
    inline_closed_bases(&mut json, &schemas);
    json
}

/// A response view flattens a request type (`Topic` = `TopicSpec` +
/// `created_at`); utoipa renders that as `allOf: [{$ref: TopicSpec}, …]`,
/// but `TopicSpec` refuses unknown fields (`additionalProperties: false`,
/// true of the request), which no rendered topic could then satisfy. Such a
/// base is inlined into the `allOf` without that one keyword.
fn inline_closed_bases(value: &mut Value, schemas: &Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::Array(parts)) = object.get_mut("allOf") {
                for part in parts.iter_mut() {
                    let target = part
                        .get("$ref")
                        .and_then(Value::as_str)
                        .and_then(|reference| reference.strip_prefix("#/components/schemas/"))
                        .and_then(|name| schemas.get(name));
                    if let Some(Value::Object(base)) = target
                        && base.get("additionalProperties") == Some(&Value::Bool(false))
                    {
                        let mut open = base.clone();
                        open.remove("additionalProperties");
                        *part = Value::Object(open);
                    }
                }
            }
            for child in object.values_mut() {
                inline_closed_bases(child, schemas);
            }
        }
        Value::Array(items) => {
            for item in items {
                inline_closed_bases(item, schemas);
            }
        }
        _ => {}
    }
}

/// Adds the problem responses to every operation (see [`error_codes`]).
fn with_problems(mut document: OpenApi) -> OpenApi {
    for (path, item) in &mut document.paths.paths {
        for (method, operation) in operations(item) {
            for (status, codes) in error_codes(method, path, operation) {
                let description = format!(
                    "A problem (RFC 9457) with code {}.",
                    codes
                        .iter()
                        .map(|code| format!("`{}`", code.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let response = ResponseBuilder::new()
                    .description(description)
                    .content(
                        CONTENT_TYPE,
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                Problem::name(),
                            ))))
                            .build(),
                    )
                    .build();
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert(RefOr::T(response));
            }
        }
    }
    document
}

/// `GET /openapi.json`.
pub(super) async fn serve(State(document): State<Arc<Value>>) -> Json<Arc<Value>> {
    Json(document)
}

/// `GET /docs`: Swagger UI over [`DOCUMENT_PATH`].
pub(super) fn docs_page() -> Router<AppState> {
    Router::from(SwaggerUi::new(DOCS_PATH).config(Config::new([DOCUMENT_PATH])))
}

fn operations(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|operation| (method, operation)))
    .collect()
}

/// The problem codes an operation can answer with, by HTTP status.
fn error_codes(
    method: &str,
    path: &str,
    operation: &Operation,
) -> std::collections::BTreeMap<u16, Vec<Code>> {
    let mut codes = Vec::new();
    if path.starts_with("/v1/") {
        codes.extend([
            Code::InvalidArgument,
            Code::Unavailable,
            Code::StorageUnavailable,
            Code::ShuttingDown,
        ]);
        codes.extend([Code::Internal, Code::CorruptData]);
    }
    if path.contains("{topic}") {
        codes.extend([Code::InvalidName, Code::TopicNotFound]);
    }
    if path.contains("{group}") {
        codes.extend([Code::GroupNotFound]);
    }
    if path.contains("{stream}") {
        codes.extend([Code::StreamNotFound]);
    }
    if path.contains("{job_id}") {
        codes.push(Code::JobNotFound);
    }
    if path.contains("{queue}") {
        codes.push(Code::InvalidName);
    }
    if path.contains("{key_id}") {
        codes.push(Code::KeyNotFound);
    }
    // Every route but the open ones needs credentials (auth::policy).
    if !matches!(path, "/healthz" | "/readyz") {
        codes.extend([Code::Unauthenticated, Code::Forbidden, Code::RateLimited]);
    }
    if operation.request_body.is_some() {
        codes.extend([
            Code::MalformedJson,
            Code::UnsupportedMediaType,
            Code::PayloadTooLarge,
        ]);
    }
    match (method, path) {
        ("post", "/v1/topics") => {
            codes.extend([Code::InvalidName, Code::TopicExists, Code::LimitExceeded]);
        }
        ("patch", "/v1/topics/{topic}") => codes.push(Code::TopicNotFound),
        ("post", "/v1/topics/{topic}/events") => {
            codes.extend([Code::InvalidEvent, Code::PartitionNotFound]);
        }
        ("get", "/v1/topics/{topic}/events") => {
            codes.extend([Code::PartitionNotFound, Code::OffsetOutOfRange]);
        }
        ("get", "/v1/topics/{topic}/events/stream" | "/v1/topics/{topic}/ws") => {
            codes.push(Code::PartitionNotFound);
        }
        ("put", "/v1/topics/{topic}/groups/{group}") => codes.push(Code::GroupConflict),
        ("post", "/v1/topics/{topic}/streams/{stream}/events") => {
            codes.extend([
                Code::InvalidEvent,
                Code::VersionConflict,
                Code::StreamDeleted,
            ]);
        }
        ("get", "/v1/topics/{topic}/streams/{stream}/snapshot") => codes.push(Code::NotFound),
        // The first submit creates the queue's topic: within the limits.
        ("post", "/v1/queues/{queue}/jobs") => {
            codes.extend([Code::BlobNotFound, Code::LimitExceeded]);
        }
        ("post", "/v1/queues/{queue}/fetch") => {
            codes.extend([Code::QueueNotFound, Code::LimitExceeded]);
        }
        ("post", "/v1/jobs/{job_id}/progress") => codes.push(Code::PartNotFound),
        ("post", "/v1/jobs/{job_id}/complete") => {
            codes.extend([Code::PartNotFound, Code::BlobNotFound, Code::JobConflict]);
        }
        ("get", "/v1/blobs/{id}") => codes.extend([Code::BlobNotFound, Code::RangeNotSatisfiable]),
        ("post", "/v1/blobs") => codes.push(Code::InsufficientStorage),
        (_, path) if path.ends_with("/commit") => {
            codes.extend([Code::StaleGeneration, Code::PartitionNotFound]);
        }
        (_, path) if path.ends_with("/reset") => codes.push(Code::OffsetOutOfRange),
        ("get", "/metrics") => codes.push(Code::Internal),
        _ => {}
    }
    let mut by_status = std::collections::BTreeMap::<u16, Vec<Code>>::new();
    for code in codes {
        let entry = by_status.entry(code.status().as_u16()).or_default();
        if !entry.contains(&code) {
            entry.push(code);
        }
    }
    by_status
}
