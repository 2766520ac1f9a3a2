//! Event streams (event sourcing): the types of [`crate::Streams`].
//!
//! A stream is an aggregate's history (`order-42`) stored on a topic, its
//! category. Its events carry dense versions from 0; every event of a stream
//! goes to the partition of its id, so the stream is ordered and an append of
//! several events is atomic.

use std::fmt;

use herald_types::{StoredEvent, StreamId};
use serde::{Deserialize, Serialize};

use crate::PublishResult;

/// What the appender expects of the stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// No check: append whatever the version.
    Any,
    /// The stream must not exist yet (also not as a deleted stream).
    NoStream,
    /// The stream must exist (and not be deleted).
    Exists,
    /// The stream's last version must be exactly this.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => formatter.write_str("any"),
            Self::NoStream => formatter.write_str("no_stream"),
            Self::Exists => formatter.write_str("exists"),
            Self::Exact(version) => write!(formatter, "{version}"),
        }
    }
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `current` (`None`: no stream)
    /// meets the expectation.
    pub fn admits(self, current: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current.is_none(),
            Self::Exists => current.is_some(),
            Self::Exact(version) => current == Some(version),
        }
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppendResult {
    /// The version of the first event appended.
    pub first_version: u64,
    /// The version of the last event appended: the stream's version now.
    pub last_version: u64,
    /// Where each event landed in the topic, in call order.
    pub positions: Vec<PublishResult>,
}

/// Which way a stream is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Ascending versions.
    #[default]
    Forward,
    /// Descending versions.
    Backward,
}

/// Events read from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSlice {
    /// `(version, event)` in the order read.
    pub events: Vec<(u64, StoredEvent)>,
    /// The version to read from next in the same direction, or `None` when
    /// the read reached the stream's end (forward: its last version at the
    /// time of the read; backward: version 0).
    pub next_version: Option<u64>,
}

/// What is known of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamMetadata {
    /// The stream's id.
    pub stream: StreamId,
    /// Its last version (the number of events appended minus one).
    pub version: u64,
    /// When its first event was appended (ms since the Unix epoch).
    pub created_at: i64,
    /// When its last event was appended (ms since the Unix epoch).
    pub updated_at: i64,
    /// Whether it was deleted (soft or hard).
    pub deleted: bool,
}

/// A stream's snapshot: state folded from its events up to `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last version folded into `state`.
    pub version: u64,
    /// The folded state, as the application encodes it.
    pub state: serde_json::Value,
}
