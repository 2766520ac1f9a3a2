//! The log's errors.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::FormatError;

/// What can go wrong in the log. Cloneable, so one failed commit round can
/// fail each of its callers with the same cause.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A filesystem operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Stored bytes failed validation. They are never served.
    #[error("corrupt data in {path} at byte {position}: {source}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the bad batch starts.
        position: u64,
        /// What is wrong with it.
        #[source]
        source: FormatError,
    },
    /// Records were lost to corruption of a sealed segment; reading can
    /// resume at `resume_at`.
    #[error("offsets {from}..{resume_at} are unreadable: segment {path} is damaged")]
    Lost {
        /// The damaged segment.
        path: PathBuf,
        /// The first unreadable offset.
        from: u64,
        /// The first readable offset after the damage.
        resume_at: u64,
    },
    /// The offset is before the log's start (removed by retention).
    #[error("offset {offset} is before the log start {start}")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The first offset still in the log.
        start: u64,
    },
    /// A write or fsync failed (a full disk, an I/O error): the log refuses
    /// appends, without touching the disk, until its writer's probe finds
    /// the disk working again and recovers it. Retryable.
    #[error(
        "log {path} is unavailable after an I/O error ({cause}); appends are refused until the disk works again"
    )]
    Failed {
        /// The log's directory.
        path: PathBuf,
        /// The error that failed the log.
        cause: Box<LogError>,
    },
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// An append with no records.
    #[error("an append needs at least one record")]
    EmptyAppend,
    /// An append larger than one batch may be.
    #[error("append of {bytes} bytes exceeds the batch limit of {max} bytes")]
    BatchTooLarge {
        /// The encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Invalid options.
    #[error("invalid log option {key}: {reason}")]
    InvalidOptions {
        /// The option's name.
        key: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}

impl LogError {
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            operation,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Failed { .. })
    }

    /// Whether this is a failure of the disk (an I/O error, or a log failed
    /// by one), as opposed to bad input, damage or a closed log.
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Failed { .. })
    }
}
