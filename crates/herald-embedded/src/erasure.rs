//! Erasing the events of hard-deleted streams.
//!
//! A hard delete must make a stream's events unreadable at once, through
//! every API, and then remove their bytes from disk. Two mechanisms:
//!
//! 1. **At once: the erased set.** The delete's index transaction moves the
//!    stream's positions from `stream_positions` into `stream_erasures`
//!    ((topic, partition, offset), pending compaction) and commits durably;
//!    then, before the delete answers, the offsets go into the partition's
//!    in-memory [`ErasedOffsets`], and every group of the topic drops them
//!    from its read-ahead and its pending deliveries. Every topic read
//!    (`Events::read`, SSE/WebSocket subscriptions, group read-ahead) goes
//!    through one function that skips offsets in the set. A partition with
//!    nothing erased pays one atomic load per read call, nothing per event.
//! 2. **Soon after: compaction.** The `stream-compactor` task (woken by each
//!    hard delete, and on open for what a restart left pending) calls
//!    [`herald_log::LogHandle::erase`] with each partition's pending offsets:
//!    the log rewrites the affected segments with those records emptied
//!    (crash-safe; see `herald-log`). Then the rows leave `stream_erasures`
//!    (durably) and the offsets leave the set: the log itself now returns
//!    them as erased records, which reads skip too. Pending rows survive a
//!    restart, so a crash before compaction only delays it.
//!
//! Removing offsets from the set while a read is in flight could let that
//! read serve bytes it read from the old segment just before the switch; so
//! each removal bumps a counter, and a read that sees the counter move
//! during its log read reads again.

use crate::Inner;
use crate::topic;
use herald_backend::Result;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing::warn;

/// The offsets of one partition whose events are hard-deleted but may still
/// be in the log's files (pending compaction).
#[derive(Debug, Default)]
pub(crate) struct ErasedOffsets {
    /// `offsets.len()`, read without the lock: the fast path of every read.
    len: AtomicUsize,
    /// Bumped by every removal (see the module docs).
    removals: AtomicU64,
    offsets: RwLock<BTreeSet<u64>>,
}

impl ErasedOffsets {
    /// Adds offsets; reads skip them from when this returns.
    pub(crate) fn insert(&self, offsets: impl IntoIterator<Item = u64>) {
        let mut set = self.offsets.write().unwrap_or_else(PoisonError::into_inner);
        set.extend(offsets);
        self.len.store(set.len(), Ordering::SeqCst);
    }

    /// Removes offsets the log has erased.
    pub(crate) fn remove(&self, offsets: &[u64]) {
        let mut set = self.offsets.write().unwrap_or_else(PoisonError::into_inner);
        for offset in offsets {
            set.remove(offset);
        }
        self.len.store(set.len(), Ordering::SeqCst);
        self.removals.fetch_add(1, Ordering::SeqCst);
    }

    /// The removal counter, to take before a log read.
    pub(crate) fn removals(&self) -> u64 {
        self.removals.load(Ordering::SeqCst)
    }

    /// The offsets in `from..to` that reads must skip, or `None` when there
    /// are none (without taking the lock when the set is empty).
    pub(crate) fn within(&self, from: u64, to: u64) -> Option<BTreeSet<u64>> {
        if self.len.load(Ordering::SeqCst) == 0 || from >= to {
            return None;
        }
        let set = self.offsets.read().unwrap_or_else(PoisonError::into_inner);
        let found: BTreeSet<u64> = set.range(from..to).copied().collect();
        (!found.is_empty()).then_some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::ErasedOffsets;

    #[test]
    fn given_an_empty_set_when_asked_should_answer_none() {
        let set = ErasedOffsets::default();
        assert_eq!(set.within(0, u64::MAX), None);
    }

    #[test]
    fn given_offsets_when_removed_should_bump_the_counter_and_leave_the_rest() {
        let set = ErasedOffsets::default();
        set.insert([3, 5, 9]);
        assert_eq!(set.within(4, 10), Some([5, 9].into()));
        let before = set.removals();
        set.remove(&[5]);
        assert_ne!(set.removals(), before);
        assert_eq!(set.within(0, 100), Some([3, 9].into()));
        assert_eq!(set.within(4, 9), None);
    }
}

/// What a compaction pass did (see `erasure.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Partitions whose pending erasures were carried out.
    pub partitions: usize,
    /// Segments rewritten.
    pub segments: usize,
    /// Events whose contents were erased from the segments.
    pub events: u64,
}

impl Inner {
    /// Catches the stream index up with every topic's log, drops the index
    /// of topics that no longer exist, and makes the erasures a restart left
    /// pending unreadable again (the compactor carries them out soon after).
    pub(crate) async fn recover_streams(&self) -> Result<()> {
        let topics = self.topic_list();
        let names = topics.iter().map(|topic| topic.name.to_string()).collect();
        self.streams.purge_others(names).await?;
        for topic in topics {
            self.streams.catch_up(&topic).await?;
        }
        for (topic, partition, offsets) in self.streams.pending_erasures().await? {
            let runtime = topic.parse().ok().and_then(|name| self.topic(&name).ok());
            if let Some(erased) =
                runtime.and_then(|runtime| runtime.erased.get(partition as usize).cloned())
            {
                erased.insert(offsets);
            }
        }
        Ok(())
    }

    /// A hard delete made these `(partition, offset)`s unreadable: reads skip
    /// them from now on, groups drop them, and the compactor is woken.
    pub(crate) fn mark_erased(&self, topic: &crate::Topic, erased: &[(u32, u64)]) {
        let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for &(partition, offset) in erased {
            by_partition.entry(partition).or_default().push(offset);
        }
        let groups = topic.group_list();
        for (partition, mut offsets) in by_partition {
            offsets.sort_unstable();
            if let Some(set) = topic.erased.get(partition as usize) {
                set.insert(offsets.iter().copied());
            }
            for group in &groups {
                group.erase(partition, &offsets, self.now());
            }
        }
        self.compaction_wanted.notify_one();
    }

    /// One compaction pass: every partition's pending erasures go to its
    /// log, then leave the index and the erased set; then the index file is
    /// compacted so no freed page keeps a deleted snapshot.
    pub(crate) async fn compact(&self) -> Result<CompactionReport> {
        let _pass = self.compacting.lock().await;
        let mut report = CompactionReport::default();
        for (topic, partition, offsets) in self.streams.pending_erasures().await? {
            let Some(runtime) = topic.parse().ok().and_then(|name| self.topic(&name).ok()) else {
                // A deleted topic: its purge removes the rows.
                continue;
            };
            let erased = runtime
                .handle(partition)?
                .erase(offsets.clone())
                .await
                .map_err(|error| topic::log_error(partition, error))?;
            self.streams
                .erasures_done(&topic, partition, offsets.clone())
                .await?;
            if let Some(set) = runtime.erased.get(partition as usize) {
                set.remove(&offsets);
            }
            report.partitions += 1;
            report.segments += erased.segments;
            report.events += erased.records;
        }
        if report.partitions > 0 {
            self.streams.compact_file().await?;
            info!(
                partitions = report.partitions,
                segments = report.segments,
                events = report.events,
                "Erased hard-deleted events from disk."
            );
        }
        Ok(report)
    }
}

pub(crate) async fn compaction_loop(inner: Arc<Inner>, delay: Duration, cancel: CancellationToken) {
    loop {
        if let Err(error) = inner.compact().await {
            warn!(%error, "Compacting away hard-deleted events failed; will retry.");
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(COMPACTION_RETRY) => continue,
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = inner.compaction_wanted.notified() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// After a failed compaction pass, the next try waits this long.
const COMPACTION_RETRY: Duration = Duration::from_secs(5);
