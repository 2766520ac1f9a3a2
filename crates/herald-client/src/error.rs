//! What can go wrong, as types a caller can match.

use std::collections::HashMap;
use std::fmt;

/// Every failure of the SDK.
///
/// Herald's refusals are [`Error::Api`] with a typed [`ErrorCode`]:
///
/// ```
/// use herald_client::{Error, ErrorCode};
///
/// fn is_missing_topic(error: &Error) -> bool {
///     matches!(error, Error::Api { code: ErrorCode::TopicNotFound, .. })
/// }
/// # let _ = is_missing_topic;
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Herald refused the request; `code` is its stable error code
    /// (`docs/errors.md`).
    #[error("{code}: {message}")]
    Api {
        /// The stable code.
        code: ErrorCode,
        /// What went wrong and what to fix.
        message: String,
        /// Details by name (e.g. `current_version` of a version conflict).
        metadata: HashMap<String, String>,
    },
    /// A gRPC failure without a Herald error code: the connection was lost,
    /// a deadline passed, or the endpoint is not Herald.
    #[error("gRPC call failed: {0}")]
    Rpc(Box<tonic::Status>),
    /// The endpoint could not be reached or configured.
    #[error("cannot connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The endpoint is not a valid URI.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// What was given.
        endpoint: String,
        /// Why it is not usable.
        reason: String,
    },
    /// TLS cannot be set up as asked: a CA or client certificate that is
    /// not PEM, a key that does not match its certificate, or an
    /// `https://` endpoint in a build without the `tls` feature.
    #[error("TLS: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// An event was refused before it was sent (the same rules the server
    /// applies).
    #[error("invalid event: {0}")]
    InvalidEvent(#[from] herald_types::EventError),
    /// The publisher, consumer or subscriber was closed.
    #[error("closed")]
    Closed,
    /// The server sent something the SDK cannot read.
    #[error(transparent)]
    Malformed(#[from] herald_proto::MalformedMessage),
}

impl Error {
    /// The stable code, when Herald gave one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the same request may succeed if sent again later: Herald is
    /// starting or stopping, or the connection failed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { code, .. } => code.is_retryable(),
            Self::Rpc(status) => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            Self::Connect(_) => true,
            _ => false,
        }
    }

    /// With `version_conflict`: the stream's version at the time (`None`
    /// when the stream did not exist).
    pub fn current_version(&self) -> Option<u64> {
        match self {
            Self::Api {
                code: ErrorCode::VersionConflict,
                metadata,
                ..
            } => metadata.get("current_version")?.parse().ok(),
            _ => None,
        }
    }

    /// An error a stream reported inside a call that goes on.
    pub(crate) fn from_failure(failure: herald_proto::v1::Failure) -> Self {
        Self::Api {
            code: failure.code.parse().unwrap_or(ErrorCode::Internal),
            message: failure.message,
            metadata: HashMap::new(),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        match herald_proto::error_info(&status) {
            Some((code, metadata)) => Self::Api {
                code: code
                    .parse()
                    .unwrap_or_else(|_| ErrorCode::Other(code.clone())),
                message: status.message().to_owned(),
                metadata,
            },
            None => Self::Rpc(Box::new(status)),
        }
    }
}

/// Herald's stable error codes (`docs/errors.md`). A code a newer server
/// sends that this SDK does not know is [`ErrorCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `not_found`: no resource at this path.
    NotFound,
    /// `method_not_allowed`.
    MethodNotAllowed,
    /// `malformed_json`: a body is not JSON.
    MalformedJson,
    /// `invalid_event`: an event breaks the CloudEvents or Herald rules.
    InvalidEvent,
    /// `reserved_attribute`: an event sets an attribute only Herald assigns.
    ReservedAttribute,
    /// `invalid_workflow`: a workflow definition is refused at deploy time.
    InvalidWorkflow,
    /// `workflow_version_exists`: that workflow version is deployed already.
    WorkflowVersionExists,
    /// `workflow_not_found`: no such workflow or version.
    WorkflowNotFound,
    /// `workflow_instance_not_found`: no such workflow instance.
    WorkflowInstanceNotFound,
    /// `workflow_instance_ended`: the instance ended and can no longer change.
    WorkflowInstanceEnded,
    /// `workflow_instance_conflict`: the operation does not fit the
    /// instance's status.
    WorkflowInstanceConflict,
    /// `invalid_name`: a topic, group or stream name breaks the naming rule.
    InvalidName,
    /// `invalid_argument`: a field is missing, of the wrong type or out of
    /// range.
    InvalidArgument,
    /// `unsupported_media_type`.
    UnsupportedMediaType,
    /// `payload_too_large`: a request or event exceeds a limit.
    PayloadTooLarge,
    /// `unauthenticated`: no or bad credentials (see [`ClientBuilder::bearer_token`](crate::ClientBuilder::bearer_token)).
    Unauthenticated,
    /// `forbidden`: the identity lacks the permission.
    Forbidden,
    /// `rate_limited`: over the identity's rate limit; retry later.
    RateLimited,
    /// `key_not_found`: no API key with that id.
    KeyNotFound,
    /// `tls_required`: plain HTTP reached a server that speaks TLS only;
    /// connect with `https://`.
    TlsRequired,
    /// `topic_not_found`.
    TopicNotFound,
    /// `group_not_found`.
    GroupNotFound,
    /// `partition_not_found`.
    PartitionNotFound,
    /// `event_not_found` (no event at a lineage query's position).
    EventNotFound,
    /// `topic_exists`.
    TopicExists,
    /// `limit_exceeded`: creating it would pass a server limit
    /// (`limits.max_topics`, `limits.max_partitions`).
    LimitExceeded,
    /// `group_conflict`: the group exists with another mode.
    GroupConflict,
    /// `offset_out_of_range`: removed by retention.
    OffsetOutOfRange,
    /// `stale_generation`: a stream-mode commit from an older generation.
    StaleGeneration,
    /// `revision_mismatch`: a compare-and-set found another revision.
    RevisionMismatch,
    /// `version_conflict`: an append's expected version did not match.
    VersionConflict,
    /// `stream_not_found`.
    StreamNotFound,
    /// `stream_deleted`.
    StreamDeleted,
    /// `job_not_found`.
    JobNotFound,
    /// `part_not_found`: the job has no part with that key.
    PartNotFound,
    /// `queue_not_found`: no job was ever submitted to that queue.
    QueueNotFound,
    /// `job_conflict`: a part completed twice with different results, or a
    /// job already ended.
    JobConflict,
    /// `blob_not_found`.
    BlobNotFound,
    /// `endpoint_not_found`: no webhook endpoint by that id.
    EndpointNotFound,
    /// `message_not_found`: not a message of the webhook endpoint's topics.
    MessageNotFound,
    /// `target_not_allowed`: a webhook target the server's SSRF guard refuses.
    TargetNotAllowed,
    /// `range_not_satisfiable`: a blob range outside the blob.
    RangeNotSatisfiable,
    /// `corrupt_data`: stored bytes failed validation.
    CorruptData,
    /// `unavailable`: storage not open yet; retry.
    Unavailable,
    /// `storage_unavailable`: the server's disk refused a write (full, I/O
    /// error); retry (the server recovers once the disk works again).
    StorageUnavailable,
    /// `insufficient_storage`: a blob upload would eat into the server's
    /// free-space reserve; nothing was kept.
    InsufficientStorage,
    /// `shutting_down`: retry later, or against another server.
    ShuttingDown,
    /// `internal`: the server failed.
    Internal,
    /// A code this SDK does not know.
    Other(String),
}

/// The codes with their wire names, in table order.
const CODES: &[(ErrorCode, &str)] = &[
    (ErrorCode::NotFound, "not_found"),
    (ErrorCode::MethodNotAllowed, "method_not_allowed"),
    (ErrorCode::MalformedJson, "malformed_json"),
    (ErrorCode::InvalidEvent, "invalid_event"),
    (ErrorCode::ReservedAttribute, "reserved_attribute"),
    (ErrorCode::InvalidWorkflow, "invalid_workflow"),
    (ErrorCode::WorkflowVersionExists, "workflow_version_exists"),
    (ErrorCode::WorkflowNotFound, "workflow_not_found"),
    (
        ErrorCode::WorkflowInstanceNotFound,
        "workflow_instance_not_found",
    ),
    (ErrorCode::WorkflowInstanceEnded, "workflow_instance_ended"),
    (
        ErrorCode::WorkflowInstanceConflict,
        "workflow_instance_conflict",
    ),
    (ErrorCode::InvalidName, "invalid_name"),
    (ErrorCode::InvalidArgument, "invalid_argument"),
    (ErrorCode::UnsupportedMediaType, "unsupported_media_type"),
    (ErrorCode::PayloadTooLarge, "payload_too_large"),
    (ErrorCode::Unauthenticated, "unauthenticated"),
    (ErrorCode::Forbidden, "forbidden"),
    (ErrorCode::RateLimited, "rate_limited"),
    (ErrorCode::KeyNotFound, "key_not_found"),
    (ErrorCode::TlsRequired, "tls_required"),
    (ErrorCode::TopicNotFound, "topic_not_found"),
    (ErrorCode::GroupNotFound, "group_not_found"),
    (ErrorCode::PartitionNotFound, "partition_not_found"),
    (ErrorCode::EventNotFound, "event_not_found"),
    (ErrorCode::TopicExists, "topic_exists"),
    (ErrorCode::LimitExceeded, "limit_exceeded"),
    (ErrorCode::GroupConflict, "group_conflict"),
    (ErrorCode::OffsetOutOfRange, "offset_out_of_range"),
    (ErrorCode::StaleGeneration, "stale_generation"),
    (ErrorCode::RevisionMismatch, "revision_mismatch"),
    (ErrorCode::VersionConflict, "version_conflict"),
    (ErrorCode::StreamNotFound, "stream_not_found"),
    (ErrorCode::StreamDeleted, "stream_deleted"),
    (ErrorCode::JobNotFound, "job_not_found"),
    (ErrorCode::PartNotFound, "part_not_found"),
    (ErrorCode::QueueNotFound, "queue_not_found"),
    (ErrorCode::JobConflict, "job_conflict"),
    (ErrorCode::BlobNotFound, "blob_not_found"),
    (ErrorCode::EndpointNotFound, "endpoint_not_found"),
    (ErrorCode::MessageNotFound, "message_not_found"),
    (ErrorCode::TargetNotAllowed, "target_not_allowed"),
    (ErrorCode::RangeNotSatisfiable, "range_not_satisfiable"),
    (ErrorCode::CorruptData, "corrupt_data"),
    (ErrorCode::Unavailable, "unavailable"),
    (ErrorCode::StorageUnavailable, "storage_unavailable"),
    (ErrorCode::InsufficientStorage, "insufficient_storage"),
    (ErrorCode::ShuttingDown, "shutting_down"),
    (ErrorCode::Internal, "internal"),
];

impl ErrorCode {
    /// The wire name (`topic_not_found`, …).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(code) => code,
            known => CODES
                .iter()
                .find(|(code, _)| code == known)
                .map_or("internal", |(_, wire)| wire),
        }
    }

    /// Whether a request refused with this code may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::StorageUnavailable | Self::ShuttingDown
        )
    }
}

impl std::str::FromStr for ErrorCode {
    type Err = std::convert::Infallible;

    /// Never fails: unknown codes are [`ErrorCode::Other`].
    fn from_str(wire: &str) -> Result<Self, Self::Err> {
        Ok(CODES
            .iter()
            .find(|(_, name)| *name == wire)
            .map_or_else(|| Self::Other(wire.to_owned()), |(code, _)| code.clone()))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Shorthand for results of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_every_known_code_when_parsed_back_should_round_trip() {
        for (code, wire) in CODES {
            assert_eq!(code.as_str(), *wire);
            assert_eq!(wire.parse::<ErrorCode>().ok().as_ref(), Some(code));
        }
        assert_eq!(
            "brand_new".parse::<ErrorCode>().ok(),
            Some(ErrorCode::Other("brand_new".to_owned()))
        );
    }

    #[test]
    fn given_status_with_herald_detail_should_become_typed_api_error() {
        let status = herald_proto::status(
            tonic::Code::Aborted,
            "version_conflict",
            "stream is at version 3",
            HashMap::from([("current_version".to_owned(), "3".to_owned())]),
        );
        let error = Error::from(status);
        assert_eq!(error.code(), Some(&ErrorCode::VersionConflict));
        assert_eq!(error.current_version(), Some(3));
        assert!(!error.is_retryable());
    }
}
