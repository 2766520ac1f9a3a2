//! The job service's errors, each with a stable code the gateway maps to a
//! problem (`herald-server/src/problem.rs`).

/// What a job call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No job by that id (never submitted, or its result expired).
    #[error("job {job_id:?} does not exist (never submitted, or its result expired)")]
    JobNotFound {
        /// The id asked for.
        job_id: String,
    },
    /// The job has no part with that key.
    #[error("job {job_id:?} has no part {part:?}")]
    PartNotFound {
        /// The job.
        job_id: String,
        /// The part key asked for.
        part: String,
    },
    /// No queue by that name: no job was ever submitted to it (a worker
    /// fetch does not create a queue unless configured to).
    #[error("queue {queue:?} does not exist; submitting a job to it creates it")]
    QueueNotFound {
        /// The queue asked for.
        queue: String,
    },
    /// The call contradicts what the job already recorded (a part completed
    /// again with a different outcome, or after the job ended without it).
    /// Nothing was changed.
    #[error("job {job_id:?}: {detail}")]
    Conflict {
        /// The job.
        job_id: String,
        /// What conflicts.
        detail: String,
    },
    /// A field of the request is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field, as the API names it.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A blob the job references does not exist (never uploaded, or removed
    /// by the collector just before the job could pin it).
    #[error("{field} {blob:?} does not exist; upload it with POST /v1/blobs first")]
    BlobNotFound {
        /// The field that names it (`blob`, `result_blob`).
        field: String,
        /// The blob id.
        blob: String,
    },
    /// A job record could not be decoded.
    #[error("job record {job_id:?} is corrupt: {detail}")]
    Corrupt {
        /// The job.
        job_id: String,
        /// What failed.
        detail: String,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] herald_backend::Error),
}

impl Error {
    /// The stable machine-readable code (the key of the gateway's table).
    pub fn code(&self) -> &'static str {
        match self {
            Self::JobNotFound { .. } => "job_not_found",
            Self::PartNotFound { .. } => "part_not_found",
            Self::QueueNotFound { .. } => "queue_not_found",
            Self::Conflict { .. } => "job_conflict",
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::BlobNotFound { .. } => "blob_not_found",
            Self::Corrupt { .. } => "corrupt_data",
            Self::Backend(error) => error.code(),
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Backend(error) if error.is_retryable())
    }

    /// An invalid-argument error.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Results of job calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
