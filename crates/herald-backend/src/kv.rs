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

/// When a batch of writes ([`crate::Kv::kv_put_many`]) is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDurability {
    /// Durable when the call returns.
    Sync,
    /// Visible when the call returns, durable soon after: within the
    /// backend's group-state flush interval (the embedded one: its next
    /// flush round, every 50 ms while a consumer group exists), and
    /// never after a settle made once the call returned (a settle is not on
    /// disk without the writes before it). A crash can lose the last
    /// window's writes, but only together with the settles that followed
    /// them: a caller that writes a record, then settles (the webhook
    /// attempt log), never finds an acked delivery without its record
    /// after a crash. (A store that fails a write and reopens itself loses
    /// what was not durable yet, settles included, as a crash would; the
    /// settles still in memory are written again, their records are not.)
    Deferred,
}
