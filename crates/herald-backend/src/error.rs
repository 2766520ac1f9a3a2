//! The backend's errors: one enum every backend returns, each variant with a
//! stable machine code the gateway maps to HTTP and gRPC statuses.

/// What a backend call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No topic by that name.
    #[error("topic {topic:?} does not exist")]
    TopicNotFound {
        /// The topic asked for.
        topic: String,
    },
    /// A topic by that name exists already.
    #[error("topic {topic:?} already exists")]
    TopicExists {
        /// The topic.
        topic: String,
    },
    /// No group by that name on the topic.
    #[error("group {group:?} does not exist on topic {topic:?}")]
    GroupNotFound {
        /// The topic.
        topic: String,
        /// The group asked for.
        group: String,
    },
    /// The group exists with settings that cannot change (its mode).
    #[error("group {group:?} exists with mode {existing}; delete it to change its mode")]
    GroupConflict {
        /// The group.
        group: String,
        /// Its current mode.
        existing: String,
    },
    /// The topic has no such partition.
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    PartitionNotFound {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many it has.
        partitions: u32,
    },
    /// A field of the request is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field, as the API names it.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// An event larger than the topic allows.
    #[error(
        "event of {size} bytes exceeds the topic's limit of {max} bytes; put large payloads in a blob"
    )]
    PayloadTooLarge {
        /// The event's size.
        size: usize,
        /// The topic's `max_event_bytes`.
        max: usize,
    },
    /// The offset is before the partition's start (removed by retention).
    #[error(
        "offset {offset} of partition {partition} was removed by retention; the partition starts at {start}"
    )]
    OffsetOutOfRange {
        /// The partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// The first offset still kept.
        start: u64,
    },
    /// A stream-mode commit from a member of an older generation, or for a
    /// partition it is no longer assigned.
    #[error("generation {generation} is stale (the group is at {current}); fetch again to rejoin")]
    StaleGeneration {
        /// The generation the member sent.
        generation: u64,
        /// The group's current generation.
        current: u64,
    },
    /// A compare-and-set on small durable state found another revision.
    #[error("revision mismatch on {key:?}: expected {expected:?}, current {current:?}")]
    RevisionMismatch {
        /// The key.
        key: String,
        /// The revision the caller expected (`None`: expected absent).
        expected: Option<u64>,
        /// The current revision (`None`: absent).
        current: Option<u64>,
    },
    /// An append's expected version did not match the stream; nothing was
    /// appended.
    #[error(
        "stream {stream:?} {}, not at the expected {expected}",
        current.map_or_else(|| "does not exist".to_owned(), |version| format!("is at version {version}"))
    )]
    VersionConflict {
        /// The stream.
        stream: String,
        /// What the caller expected.
        expected: crate::ExpectedVersion,
        /// The stream's current version (`None`: the stream does not exist).
        current: Option<u64>,
    },
    /// No stream by that id on the topic, or it was deleted.
    #[error("stream {stream:?} does not exist on topic {topic:?}")]
    StreamNotFound {
        /// The topic.
        topic: String,
        /// The stream asked for.
        stream: String,
    },
    /// The stream was deleted: it takes no more events.
    #[error("stream {stream:?} on topic {topic:?} was deleted; it takes no more events")]
    StreamDeleted {
        /// The topic.
        topic: String,
        /// The stream.
        stream: String,
    },
    /// Creating the resource would pass a limit the server is configured
    /// with (topics per server, partitions per server); nothing was created.
    #[error("{what} would exceed {limit} = {max}; delete some first, or raise the limit")]
    LimitExceeded {
        /// What the call would have created (`a topic of 4 partitions`).
        what: String,
        /// The configuration key of the limit (`limits.max_topics`).
        limit: &'static str,
        /// Its value.
        max: u64,
    },
    /// Stored data failed validation; it was not served.
    #[error("corrupt data: {detail}")]
    Corrupt {
        /// Where and what.
        detail: String,
    },
    /// The storage failed; the call may succeed later.
    #[error("storage unavailable: {detail}")]
    Unavailable {
        /// The underlying error.
        detail: String,
    },
    /// The disk refused a write or fsync (full, or an I/O error): nothing of
    /// the call was stored, what was stored before is safe, and the call may
    /// succeed once the disk works again (the backend recovers by itself;
    /// [`crate::Backend::health`] says what is affected meanwhile).
    #[error("storage unavailable: the disk refused a write: {detail}")]
    StorageUnavailable {
        /// The underlying error.
        detail: String,
    },
    /// The backend is shutting down.
    #[error("the backend is shutting down")]
    ShuttingDown,
}

impl Error {
    /// The stable machine-readable code of this error (the `code` of the
    /// problem+json body, and the key of the gateway's status table).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TopicNotFound { .. } => "topic_not_found",
            Self::TopicExists { .. } => "topic_exists",
            Self::GroupNotFound { .. } => "group_not_found",
            Self::GroupConflict { .. } => "group_conflict",
            Self::PartitionNotFound { .. } => "partition_not_found",
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::OffsetOutOfRange { .. } => "offset_out_of_range",
            Self::StaleGeneration { .. } => "stale_generation",
            Self::RevisionMismatch { .. } => "revision_mismatch",
            Self::VersionConflict { .. } => "version_conflict",
            Self::StreamNotFound { .. } => "stream_not_found",
            Self::StreamDeleted { .. } => "stream_deleted",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::Corrupt { .. } => "corrupt_data",
            Self::Unavailable { .. } => "unavailable",
            Self::StorageUnavailable { .. } => "storage_unavailable",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::StorageUnavailable { .. } | Self::ShuttingDown
        )
    }

    /// An invalid-argument error.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Results of backend calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
