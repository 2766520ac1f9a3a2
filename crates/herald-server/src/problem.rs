//! RFC 9457 problem details (`application/problem+json`): the one shape of
//! every error the HTTP API returns, and **the** table of stable error codes.
//!
//! ```json
//! {
//!   "type": "urn:herald:problem:topic_not_found",
//!   "title": "Topic not found",
//!   "status": 404,
//!   "detail": "topic \"orders\" does not exist",
//!   "code": "topic_not_found"
//! }
//! ```
//!
//! `code` is the stable, machine-readable identifier clients match on; it is
//! an extension member, as RFC 9457 §3.2 allows. `type` is derived from it
//! as a URN: Herald has no published documentation site whose URLs could
//! promise to stay put, and a URN identifies without pretending to resolve.
//! `title` is fixed per code; `detail` is free text about this occurrence.
//!
//! # The code table
//!
//! [`Code`] is the single place where a failure gets its public identity:
//! each code has one HTTP status and one gRPC status (the gRPC services
//! answer with it and put the code in a `google.rpc.ErrorInfo` detail), and
//! `docs/errors.md` lists the same table for
//! clients (a unit test keeps the two equal). The backend's codes
//! ([`herald_backend::Error::code`]) and the event codec's
//! ([`herald_types::EventError::code`]) are entries of this table; a test
//! checks that every one of them is.
//!
//! A code, once released, never changes meaning, status or gRPC status. New
//! failure modes add codes.
//!
//! Only three kinds of code answer 5xx: `unavailable`, `storage_unavailable`
//! and `shutting_down` (503, with `Retry-After`: try again),
//! `insufficient_storage` (507: a blob upload refused to keep the disk's
//! free-space reserve), and `corrupt_data` / `internal` (500: the server is
//! at fault, an operator must look). No request input can produce the last
//! two.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_types::{EventError, InvalidName};
use serde::Serialize;
use tracing::{error, warn};

/// Media type of problem details.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Prefix of the `type` URI; the code follows it.
pub const TYPE_PREFIX: &str = "urn:herald:problem:";

/// Seconds a client is asked to wait (`Retry-After`) before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Declares [`Code`] and its columns from one table, so that a code cannot
/// exist without its wire name, HTTP status, gRPC status and title.
macro_rules! codes {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident => $wire:literal, $status:ident, $grpc:ident, $title:literal;
    )*) => {
        /// The stable error codes (see the module docs).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Self::$variant),*];

            /// The code as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire,)* }
            }

            /// The HTTP status this code is returned with.
            pub const fn status(self) -> StatusCode {
                match self { $(Self::$variant => StatusCode::$status,)* }
            }

            /// The gRPC status this code is returned with, by its canonical
            /// name (`NOT_FOUND`, …).
            pub const fn grpc(self) -> &'static str {
                match self { $(Self::$variant => stringify!($grpc),)* }
            }

            /// The gRPC status this code is returned with. Resolved at
            /// compile time: a name in the table that is not a gRPC status
            /// fails the build instead of falling back to `INTERNAL`.
            pub const fn grpc_status(self) -> tonic::Code {
                match self {
                    $(Self::$variant => {
                        const STATUS: tonic::Code = match herald_proto::grpc_code(stringify!($grpc)) {
                            Some(status) => status,
                            None => panic!(concat!("not a gRPC status: ", stringify!($grpc))),
                        };
                        STATUS
                    })*
                }
            }

            /// The short, fixed, human-readable summary.
            pub const fn title(self) -> &'static str {
                match self { $(Self::$variant => $title,)* }
            }
        }
    };
}

codes! {
    /// No resource at this path.
    NotFound => "not_found", NOT_FOUND, NOT_FOUND, "Not found";
    /// The path exists but not for this method.
    MethodNotAllowed => "method_not_allowed", METHOD_NOT_ALLOWED, UNIMPLEMENTED, "Method not allowed";
    /// The body is not JSON at all (a syntax error or a truncated document),
    /// or a string in it holds a lone UTF-16 surrogate escape.
    MalformedJson => "malformed_json", BAD_REQUEST, INVALID_ARGUMENT, "Malformed JSON";
    /// An event breaks the CloudEvents or Herald rules (a missing `source`, a
    /// bad `time`, …).
    InvalidEvent => "invalid_event", BAD_REQUEST, INVALID_ARGUMENT, "Invalid event";
    /// An event sets an attribute only Herald assigns (`topic`, `offset`,
    /// `appendedat`), or an extension takes a CloudEvents or Herald name.
    ReservedAttribute => "reserved_attribute", BAD_REQUEST, INVALID_ARGUMENT, "Reserved attribute";
    /// A topic or group name breaks the naming rule.
    InvalidName => "invalid_name", BAD_REQUEST, INVALID_ARGUMENT, "Invalid name";
    /// A field or query parameter is unknown, missing, of the wrong type, or
    /// out of range.
    InvalidArgument => "invalid_argument", BAD_REQUEST, INVALID_ARGUMENT, "Invalid argument";
    /// The request's content type is not one this endpoint accepts.
    UnsupportedMediaType => "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, INVALID_ARGUMENT, "Unsupported media type";
    /// The request body exceeds `limits.max_request_bytes`, an event the
    /// topic's `max_event_bytes`, or a blob `limits.max_blob_bytes`.
    PayloadTooLarge => "payload_too_large", PAYLOAD_TOO_LARGE, RESOURCE_EXHAUSTED, "Payload too large";
    /// No credentials, or bad ones (unknown, revoked or expired key, invalid
    /// JWT).
    Unauthenticated => "unauthenticated", UNAUTHORIZED, UNAUTHENTICATED, "Unauthenticated";
    /// The identity lacks the permission; the problem names the action and
    /// the resource.
    Forbidden => "forbidden", FORBIDDEN, PERMISSION_DENIED, "Forbidden";
    /// Over the identity's rate limit; retry after `Retry-After` seconds.
    RateLimited => "rate_limited", TOO_MANY_REQUESTS, RESOURCE_EXHAUSTED, "Rate limited";
    /// No API key with that id.
    KeyNotFound => "key_not_found", NOT_FOUND, NOT_FOUND, "Key not found";
    /// Plain HTTP reached a port that speaks TLS only (`[tls]`); answered
    /// before closing the connection.
    TlsRequired => "tls_required", BAD_REQUEST, FAILED_PRECONDITION, "TLS required";
    /// No topic by that name.
    TopicNotFound => "topic_not_found", NOT_FOUND, NOT_FOUND, "Topic not found";
    /// No group by that name on the topic.
    GroupNotFound => "group_not_found", NOT_FOUND, NOT_FOUND, "Group not found";
    /// The topic has no such partition.
    PartitionNotFound => "partition_not_found", NOT_FOUND, NOT_FOUND, "Partition not found";
    /// No event at that position (lineage's starting event): never
    /// appended there, or removed by retention.
    EventNotFound => "event_not_found", NOT_FOUND, NOT_FOUND, "Event not found";
    /// A topic by that name exists already.
    TopicExists => "topic_exists", CONFLICT, ALREADY_EXISTS, "Topic exists";
    /// Creating it would pass a configured limit (`limits.max_topics`,
    /// `limits.max_partitions`); nothing was created.
    LimitExceeded => "limit_exceeded", CONFLICT, RESOURCE_EXHAUSTED, "Limit exceeded";
    /// The group exists with a mode that cannot change.
    GroupConflict => "group_conflict", CONFLICT, FAILED_PRECONDITION, "Group conflict";
    /// The offset was removed by retention.
    OffsetOutOfRange => "offset_out_of_range", BAD_REQUEST, OUT_OF_RANGE, "Offset out of range";
    /// A stream-mode commit from an older generation, or for a partition the
    /// member no longer owns.
    StaleGeneration => "stale_generation", CONFLICT, ABORTED, "Stale generation";
    /// A compare-and-set found another revision.
    RevisionMismatch => "revision_mismatch", CONFLICT, ABORTED, "Revision mismatch";
    /// An append's expected version did not match the stream's.
    VersionConflict => "version_conflict", CONFLICT, ABORTED, "Version conflict";
    /// No stream by that id on the topic.
    StreamNotFound => "stream_not_found", NOT_FOUND, NOT_FOUND, "Stream not found";
    /// The stream was deleted; it takes no more events.
    StreamDeleted => "stream_deleted", GONE, FAILED_PRECONDITION, "Stream deleted";
    /// No job by that id (never submitted, or its result expired).
    JobNotFound => "job_not_found", NOT_FOUND, NOT_FOUND, "Job not found";
    /// The job has no part with that key.
    PartNotFound => "part_not_found", NOT_FOUND, NOT_FOUND, "Part not found";
    /// No queue by that name (no job was ever submitted to it).
    QueueNotFound => "queue_not_found", NOT_FOUND, NOT_FOUND, "Queue not found";
    /// A completion contradicts what the job recorded: the part already has
    /// a different outcome, or the job ended without it.
    JobConflict => "job_conflict", CONFLICT, FAILED_PRECONDITION, "Job conflict";
    /// No blob by that id.
    BlobNotFound => "blob_not_found", NOT_FOUND, NOT_FOUND, "Blob not found";
    /// No webhook endpoint by that id.
    EndpointNotFound => "endpoint_not_found", NOT_FOUND, NOT_FOUND, "Webhook endpoint not found";
    /// The message is not one of the endpoint's (or retention removed it).
    MessageNotFound => "message_not_found", NOT_FOUND, NOT_FOUND, "Message not found";
    /// A webhook target on an address the SSRF guard refuses (loopback,
    /// private, link-local, metadata…) and `webhooks.allow_targets` does not allow.
    TargetNotAllowed => "target_not_allowed", BAD_REQUEST, INVALID_ARGUMENT, "Target not allowed";
    /// A workflow definition is broken or uses what Herald does not run;
    /// `path` names the offending field (`do[2].checkCredit.call`).
    InvalidWorkflow => "invalid_workflow", BAD_REQUEST, INVALID_ARGUMENT, "Invalid workflow";
    /// That workflow version is deployed already (versions never change).
    WorkflowVersionExists => "workflow_version_exists", CONFLICT, ALREADY_EXISTS, "Workflow version exists";
    /// No workflow (or version) by that name.
    WorkflowNotFound => "workflow_not_found", NOT_FOUND, NOT_FOUND, "Workflow not found";
    /// No workflow instance by that id.
    WorkflowInstanceNotFound => "workflow_instance_not_found", NOT_FOUND, NOT_FOUND, "Workflow instance not found";
    /// The instance ended: it can no longer be cancelled, suspended or resumed.
    WorkflowInstanceEnded => "workflow_instance_ended", CONFLICT, FAILED_PRECONDITION, "Workflow instance ended";
    /// The operation does not fit the instance's status (resume of one not
    /// suspended, retry of one not faulted).
    WorkflowInstanceConflict => "workflow_instance_conflict", CONFLICT, FAILED_PRECONDITION, "Workflow instance conflict";
    /// The `Range` starts at or past the end of the blob.
    RangeNotSatisfiable => "range_not_satisfiable", RANGE_NOT_SATISFIABLE, OUT_OF_RANGE, "Range not satisfiable";
    /// Stored bytes failed validation; they were not served.
    CorruptData => "corrupt_data", INTERNAL_SERVER_ERROR, DATA_LOSS, "Corrupt data";
    /// Storage is not open yet, or failed; retry later.
    Unavailable => "unavailable", SERVICE_UNAVAILABLE, UNAVAILABLE, "Service unavailable";
    /// The disk refused a write or fsync (full, or an I/O error); nothing of
    /// the request was stored; the server recovers by itself once the disk
    /// works again, so retry later.
    StorageUnavailable => "storage_unavailable", SERVICE_UNAVAILABLE, UNAVAILABLE, "Storage unavailable";
    /// A blob upload would leave less free space on the disk than
    /// `blobs.min_free_bytes`; nothing was kept.
    InsufficientStorage => "insufficient_storage", INSUFFICIENT_STORAGE, RESOURCE_EXHAUSTED, "Insufficient storage";
    /// The server is shutting down; retry against it (or another) later.
    ShuttingDown => "shutting_down", SERVICE_UNAVAILABLE, UNAVAILABLE, "Shutting down";
    /// The server failed; nothing the client can fix.
    Internal => "internal", INTERNAL_SERVER_ERROR, INTERNAL, "Internal server error";
}

impl Code {
    /// The code whose wire name is `wire`, if any.
    pub fn from_wire(wire: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|code| code.as_str() == wire)
    }

    /// Whether the same request may succeed later (a 503).
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::StorageUnavailable | Self::ShuttingDown
        )
    }
}

/// One problem details document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    code: Code,
    detail: Option<String>,
    /// Extension members (RFC 9457 §3.2), e.g. `current_version`.
    extensions: Vec<(&'static str, serde_json::Value)>,
}

impl Problem {
    /// A problem of kind `code`, explained by `detail`.
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: Some(detail.into()),
            extensions: Vec::new(),
        }
    }

    /// Adds an extension member to the document.
    pub fn with(mut self, name: &'static str, value: serde_json::Value) -> Self {
        self.extensions.push((name, value));
        self
    }

    /// The stable code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// What went wrong this time.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// Seconds to wait before retrying: 1 for a 503, the limiter's wait for
    /// 429 `rate_limited`; `None` otherwise.
    pub fn retry_after_s(&self) -> Option<u64> {
        if self.code.is_retryable() {
            return Some(RETRY_AFTER_SECS);
        }
        if self.code == Code::RateLimited {
            let seconds = self
                .extensions
                .iter()
                .find(|(name, _)| *name == "retry_after_s")
                .and_then(|(_, value)| value.as_u64());
            return Some(seconds.unwrap_or(RETRY_AFTER_SECS));
        }
        None
    }

    /// The extension members (for the gRPC `ErrorInfo` metadata).
    pub fn extensions(&self) -> &[(&'static str, serde_json::Value)] {
        &self.extensions
    }
}

impl From<herald_backend::Error> for Problem {
    /// Maps a backend error by its stable code. Server-side failures are
    /// logged here, once, since the client cannot act on them.
    fn from(failure: herald_backend::Error) -> Self {
        let code = Code::from_wire(failure.code()).unwrap_or(Code::Internal);
        let current_version = match &failure {
            herald_backend::Error::VersionConflict { current, .. } => {
                Some(serde_json::json!(current))
            }
            _ => None,
        };
        if code.status().is_server_error() {
            if code.is_retryable() {
                warn!(code = failure.code(), error = %failure, "Backend unavailable.");
            } else {
                error!(code = failure.code(), error = %failure, "Backend failed.");
            }
        }
        let problem = Self::new(code, failure.to_string());
        match current_version {
            Some(version) => problem.with("current_version", version),
            None => problem,
        }
    }
}

impl From<EventError> for Problem {
    fn from(failure: EventError) -> Self {
        let code = Code::from_wire(failure.code()).unwrap_or(Code::InvalidEvent);
        Self::new(code, failure.to_string())
    }
}

impl From<InvalidName> for Problem {
    fn from(failure: InvalidName) -> Self {
        Self::new(Code::InvalidName, failure.to_string())
    }
}

impl From<herald_jobs::Error> for Problem {
    fn from(failure: herald_jobs::Error) -> Self {
        match failure {
            herald_jobs::Error::Backend(error) => Self::from(error),
            failure => {
                let code = Code::from_wire(failure.code()).unwrap_or(Code::Internal);
                if code.status().is_server_error() {
                    error!(code = failure.code(), error = %failure, "Job service failed.");
                }
                Self::new(code, failure.to_string())
            }
        }
    }
}

impl From<herald_webhooks::Error> for Problem {
    fn from(failure: herald_webhooks::Error) -> Self {
        match failure {
            herald_webhooks::Error::Backend(error) => Self::from(error),
            failure => {
                let code = Code::from_wire(failure.code()).unwrap_or(Code::Internal);
                if code.status().is_server_error() {
                    error!(error = %failure, "Webhook service failed.");
                }
                Self::new(code, failure.to_string())
            }
        }
    }
}

impl From<herald_workflows::store::StoreError> for Problem {
    fn from(failure: herald_workflows::store::StoreError) -> Self {
        use herald_workflows::store::StoreError;
        match failure {
            StoreError::Invalid(error) => {
                let path = error.path().to_owned();
                Self::new(Code::InvalidWorkflow, error.to_string())
                    .with("path", serde_json::Value::String(path))
            }
            StoreError::VersionExists(_) => {
                Self::new(Code::WorkflowVersionExists, failure.to_string())
            }
            StoreError::NotFound(_) => Self::new(Code::WorkflowNotFound, failure.to_string()),
            StoreError::Backend(error) => Self::from(error),
            StoreError::Corrupt { .. } => {
                error!(error = %failure, "A stored workflow definition is unreadable.");
                Self::new(Code::CorruptData, failure.to_string())
            }
        }
    }
}

impl From<herald_workflows::EngineError> for Problem {
    fn from(failure: herald_workflows::EngineError) -> Self {
        use herald_workflows::EngineError;
        use herald_workflows::history::HistoryError;
        match failure {
            EngineError::NotFound(_) => {
                Self::new(Code::WorkflowInstanceNotFound, failure.to_string())
            }
            EngineError::Ended(_) => Self::new(Code::WorkflowInstanceEnded, failure.to_string()),
            EngineError::Conflict { .. } => {
                Self::new(Code::WorkflowInstanceConflict, failure.to_string())
            }
            EngineError::Definition(error) => Self::from(error),
            EngineError::Storage(error) | EngineError::History(HistoryError::Storage(error)) => {
                Self::from(error)
            }
            EngineError::History(error) => {
                error!(error = %error, "Writing a workflow instance's history failed.");
                Self::new(Code::Internal, error.to_string())
            }
        }
    }
}

impl From<herald_lineage::Error> for Problem {
    fn from(error: herald_lineage::Error) -> Self {
        match error {
            herald_lineage::Error::Backend(error) => Self::from(error),
            not_found @ herald_lineage::Error::EventNotFound { .. } => {
                Self::new(Code::EventNotFound, not_found.to_string())
            }
            other => Self::new(Code::Internal, other.to_string()),
        }
    }
}

impl From<crate::blobs::Error> for Problem {
    fn from(failure: crate::blobs::Error) -> Self {
        let code = match &failure {
            crate::blobs::Error::NotFound { .. } => Code::BlobNotFound,
            crate::blobs::Error::TooLarge { .. } => Code::PayloadTooLarge,
            crate::blobs::Error::InsufficientStorage { .. } => Code::InsufficientStorage,
            crate::blobs::Error::RangeNotSatisfiable { .. } => Code::RangeNotSatisfiable,
            crate::blobs::Error::CutOff(_) => Code::InvalidArgument,
            crate::blobs::Error::NotReady => Code::StorageUnavailable,
            crate::blobs::Error::Store(_) | crate::blobs::Error::Open { .. } => {
                error!(error = %failure, source = ?std::error::Error::source(&failure), "Blob storage failed.");
                Code::Unavailable
            }
        };
        Self::new(code, failure.to_string())
    }
}

impl From<crate::auth::keys::Error> for Problem {
    fn from(failure: crate::auth::keys::Error) -> Self {
        match failure {
            crate::auth::keys::Error::Backend(error) => Self::from(error),
            failure => {
                error!(error = %failure, source = ?std::error::Error::source(&failure), "API key store failed.");
                Self::new(Code::Internal, failure.to_string())
            }
        }
    }
}

/// The document as serialized: members in RFC 9457 order, then extensions.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    code: &'static str,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = Wire {
            type_uri: format!("{TYPE_PREFIX}{}", self.code.as_str()),
            title: self.code.title(),
            status: self.code.status().as_u16(),
            detail: self.detail.as_deref(),
            code: self.code.as_str(),
        };
        if self.extensions.is_empty() {
            return wire.serialize(serializer);
        }
        let mut document = serde_json::to_value(&wire).map_err(serde::ser::Error::custom)?;
        if let Some(members) = document.as_object_mut() {
            for (name, value) in &self.extensions {
                members.insert((*name).to_owned(), value.clone());
            }
        }
        document.serialize(serializer)
    }
}

impl utoipa::PartialSchema for Code {
    /// A string enum of every wire name, in table order.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Self::ALL.iter().map(|code| code.as_str())))
            .description(Some(
                "The stable error code (docs/errors.md): clients match on it.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Code {
    fn name() -> std::borrow::Cow<'static, str> {
        "ErrorCode".into()
    }
}

impl utoipa::PartialSchema for Problem {
    /// The members [`Wire`] serializes.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::ToSchema as _;
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let string = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
        };
        ObjectBuilder::new()
            .property(
                "type",
                string("A URN naming the kind of problem: urn:herald:problem:<code>."),
            )
            .property("title", string("A short summary, fixed per code."))
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(400))
                    .maximum(Some(599))
                    .description(Some("The HTTP status.")),
            )
            .property(
                "detail",
                string("What went wrong this time, and what to fix."),
            )
            .property("code", utoipa::openapi::Ref::from_schema_name(Code::name()))
            .required("type")
            .required("title")
            .required("status")
            .required("code")
            .description(Some("An RFC 9457 problem details document."))
            .into()
    }
}

impl utoipa::ToSchema for Problem {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema as _;
        schemas.push((Code::name().into_owned(), Code::schema()));
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after_s();
        let mut response = (self.code.status(), axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const ERRORS_MD: &str = include_str!("../../../docs/errors.md");

    #[test]
    fn given_not_found_when_serialized_should_carry_rfc9457_members_and_code() {
        let problem = Problem::new(Code::NotFound, "No route for GET /nope.");
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "urn:herald:problem:not_found",
                "title": "Not found",
                "status": 404,
                "detail": "No route for GET /nope.",
                "code": "not_found",
            })
        );
    }

    #[test]
    fn given_problem_when_into_response_should_set_status_and_media_type() {
        let response = Problem::new(Code::MethodNotAllowed, "x").into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn given_retryable_code_when_into_response_should_answer_503_with_retry_after() {
        for code in [
            Code::Unavailable,
            Code::StorageUnavailable,
            Code::ShuttingDown,
        ] {
            let response = Problem::new(code, "x").into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
    }

    #[test]
    fn given_code_table_should_have_unique_wire_names_and_only_503_or_500_server_errors() {
        let mut seen = std::collections::HashSet::new();
        for &code in Code::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            assert_eq!(Code::from_wire(code.as_str()), Some(code));
            let status = code.status();
            if status.is_server_error() {
                assert!(
                    status == StatusCode::SERVICE_UNAVAILABLE
                        || matches!(
                            code,
                            Code::Internal | Code::CorruptData | Code::InsufficientStorage
                        ),
                    "{} must not answer {status}",
                    code.as_str()
                );
            }
            assert_eq!(
                code.is_retryable(),
                status == StatusCode::SERVICE_UNAVAILABLE
            );
        }
    }

    #[test]
    fn given_every_backend_error_when_mapped_should_have_its_own_table_entry() {
        use herald_backend::Error;
        let errors = [
            Error::TopicNotFound { topic: "t".into() },
            Error::TopicExists { topic: "t".into() },
            Error::GroupNotFound {
                topic: "t".into(),
                group: "g".into(),
            },
            Error::GroupConflict {
                group: "g".into(),
                existing: "queue".into(),
            },
            Error::PartitionNotFound {
                topic: "t".into(),
                partition: 3,
                partitions: 1,
            },
            Error::invalid("max", "too big"),
            Error::PayloadTooLarge { size: 2, max: 1 },
            Error::OffsetOutOfRange {
                partition: 0,
                offset: 1,
                start: 2,
            },
            Error::StaleGeneration {
                generation: 1,
                current: 2,
            },
            Error::RevisionMismatch {
                key: "k".into(),
                expected: None,
                current: Some(1),
            },
            Error::VersionConflict {
                stream: "order-1".into(),
                expected: herald_backend::ExpectedVersion::Exact(1),
                current: Some(2),
            },
            Error::StreamNotFound {
                topic: "t".into(),
                stream: "s".into(),
            },
            Error::StreamDeleted {
                topic: "t".into(),
                stream: "s".into(),
            },
            Error::LimitExceeded {
                what: "topic \"t\"".into(),
                limit: "limits.max_topics",
                max: 1,
            },
            Error::Corrupt { detail: "x".into() },
            Error::Unavailable { detail: "x".into() },
            Error::ShuttingDown,
        ];
        for failure in errors {
            let wire = failure.code();
            let code = Code::from_wire(wire);
            assert!(code.is_some(), "backend code {wire} is not in the table");
            assert_eq!(Problem::from(failure).code().as_str(), wire);
        }
        for failure in [
            herald_jobs::Error::JobNotFound { job_id: "j".into() },
            herald_jobs::Error::PartNotFound {
                job_id: "j".into(),
                part: "p".into(),
            },
            herald_jobs::Error::QueueNotFound { queue: "q".into() },
            herald_jobs::Error::Conflict {
                job_id: "j".into(),
                detail: "d".into(),
            },
            herald_jobs::Error::invalid("parts", "empty"),
            herald_jobs::Error::BlobNotFound {
                field: "blob".into(),
                blob: "sha256:0".into(),
            },
        ] {
            let wire = failure.code();
            assert!(Code::from_wire(wire).is_some(), "job code {wire}");
            assert_eq!(Problem::from(failure).code().as_str(), wire);
        }
        for wire in ["malformed_json", "invalid_event"] {
            assert!(Code::from_wire(wire).is_some(), "event code {wire}");
        }
    }

    /// Every `.rs` file under `dir`, recursively.
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn given_the_crate_sources_should_convert_to_problem_only_in_this_module() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let elsewhere: Vec<String> = files
            .iter()
            .filter(|path| !path.ends_with("problem.rs"))
            .filter(|path| {
                std::fs::read_to_string(path)
                    .unwrap()
                    .contains(" for Problem {")
            })
            .map(|path| path.display().to_string())
            .collect();
        assert!(
            elsewhere.is_empty(),
            "every `From<…> for Problem` lives in problem.rs, the code table: {elsewhere:?}"
        );
    }

    /// `docs/errors.md` rows: `| `code` | status | GRPC | …`.
    fn documented_codes() -> BTreeMap<String, (u16, String)> {
        ERRORS_MD
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let status = cells.get(2)?.parse().ok()?;
                let grpc = cells.get(3)?.trim_matches('`');
                Some((code.to_owned(), (status, grpc.to_owned())))
            })
            .collect()
    }

    #[test]
    fn given_docs_errors_md_should_list_exactly_the_code_table() {
        let documented = documented_codes();
        let table: BTreeMap<String, (u16, String)> = Code::ALL
            .iter()
            .map(|code| {
                (
                    code.as_str().to_owned(),
                    (code.status().as_u16(), code.grpc().to_owned()),
                )
            })
            .collect();
        assert_eq!(
            documented, table,
            "docs/errors.md and problem::Code disagree; update the doc's table"
        );
    }
}
