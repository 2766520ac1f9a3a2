//! Small durable state: keys in buckets, each value with a revision for
//! compare-and-set (jobs, workflows and webhooks keep their state here).

use bytes::Bytes;

/// A stored value and its revision (revisions grow per bucket and never repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The value.
    pub value: Bytes,
    /// Its revision.
    pub revision: u64,
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything (an unconditional write).
    Any,
    /// No value.
    Absent,
    /// The value at exactly this revision.
    Revision(u64),
}
