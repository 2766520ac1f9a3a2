//! Where a partition's correlated events are (those with a `correlationid`
//! or `causationid`, what the lineage index files), as far as this process
//! appended them.
//!
//! The lineage indexer follows every partition. Without this it would read
//! (and check the headers of) every event ever appended, once more than the
//! consumers do; with it, [`Events::read_correlated`] steps over a stretch
//! this process appended without a correlated event and reads only the
//! stretches that hold one.
//!
//! ```text
//! append with a correlated event   begin (under the lock: the log's end E,
//!                                  the records land at or after it) ─▶
//!                                  log append ─▶ finish(offsets)
//! read_correlated(from)            under the lock: the log's end, the
//!                                  lowest E of the appends in flight; no
//!                                  known offset in [from, that bound):
//!                                  nothing to read up to it
//! ```
//!
//! What it cannot vouch for is read as before: offsets below the log's end
//! when the partition was opened (appended by an earlier process), and
//! everything once an append with a correlated event was abandoned midway
//! (its future dropped, or the log failed it: where its records went, if
//! anywhere, is unknown); and, once too many offsets wait to be read,
//! everything up to the last of them.
//!
//! [`Events::read_correlated`]: herald_backend::Events::read_correlated

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Correlated offsets kept per partition at most (about 40 bytes each)
/// before those are forgotten and read instead (an indexer far behind).
const MAX_KNOWN: usize = 1 << 16;

/// One partition's correlated offsets.
#[derive(Debug)]
pub(crate) struct CorrelatedOffsets {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Offsets from here on are vouched for; `u64::MAX`: none.
    known_from: u64,
    /// Correlated events at or after `known_from` not yet read past.
    offsets: BTreeSet<u64>,
    /// Correlated appends in flight: the log's end when each began, counted.
    in_flight: BTreeMap<u64, usize>,
}

/// What [`CorrelatedOffsets::clear_until`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stretch {
    /// No correlated event in `[from, until)`.
    Clear { until: u64 },
    /// There may be one: read.
    Read,
}

impl CorrelatedOffsets {
    /// A partition whose log ends at `end` when opened.
    pub(crate) fn new(end: u64) -> Self {
        Self {
            state: Mutex::new(State {
                known_from: end,
                offsets: BTreeSet::new(),
                in_flight: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called before an append holding a correlated event is handed to the
    /// log, with the log's end (read under the lock, so no append that
    /// began before is missed). The guard's [`Append::finish`] records
    /// where its correlated events went; dropped unfinished, nothing is
    /// vouched for any more.
    pub(crate) fn begin(&self, end: impl FnOnce() -> u64) -> Append<'_> {
        let mut state = self.lock();
        let at = end();
        *state.in_flight.entry(at).or_default() += 1;
        Append {
            offsets: self,
            at,
            finished: false,
        }
    }

    /// Whether `[from, …)` may be stepped over without reading, given the
    /// log's end (read under the lock) and its start. Forgets the offsets
    /// below `from`: the indexer has read past them.
    pub(crate) fn clear_until(&self, from: u64, start: u64, end: impl FnOnce() -> u64) -> Stretch {
        let mut state = self.lock();
        let end = end();
        if from < state.known_from || from < start {
            return Stretch::Read;
        }
        while state.offsets.first().is_some_and(|&first| first < from) {
            state.offsets.pop_first();
        }
        let bound = state.in_flight.keys().next().map_or(end, |&at| at.min(end));
        match state.offsets.first() {
            Some(&next) if next < bound.max(from) => Stretch::Read,
            _ => Stretch::Clear {
                until: bound.max(from),
            },
        }
    }

    fn end(&self, at: u64, offsets: Option<&[u64]>) {
        let mut state = self.lock();
        if let Some(count) = state.in_flight.get_mut(&at) {
            *count -= 1;
            if *count == 0 {
                state.in_flight.remove(&at);
            }
        }
        match offsets {
            Some(offsets) if state.offsets.len() + offsets.len() <= MAX_KNOWN => {
                state.offsets.extend(offsets);
            }
            // Too many waiting to be read: forget them, and have everything
            // up to the last of them read instead (appends recorded later
            // are vouched for again).
            Some(offsets) => {
                let last = offsets
                    .iter()
                    .chain(state.offsets.last())
                    .max()
                    .copied()
                    .unwrap_or(0);
                state.known_from = state.known_from.max(last.saturating_add(1));
                state.offsets.clear();
            }
            // Abandoned: its records may still reach the log at any offset
            // later on, so nothing is vouched for until a restart.
            None => {
                state.known_from = u64::MAX;
                state.offsets.clear();
            }
        }
    }
}

/// A correlated append in flight (see [`CorrelatedOffsets::begin`]).
#[derive(Debug)]
pub(crate) struct Append<'a> {
    offsets: &'a CorrelatedOffsets,
    at: u64,
    finished: bool,
}

impl Append<'_> {
    /// The append is in the log: its correlated events are at `offsets`.
    pub(crate) fn finish(mut self, offsets: &[u64]) {
        self.finished = true;
        self.offsets.end(self.at, Some(offsets));
    }
}

impl Drop for Append<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.offsets.end(self.at, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_appends_in_this_process_should_clear_only_stretches_without_correlated_events() {
        let offsets = CorrelatedOffsets::new(100);
        // Before the open: not vouched for.
        assert_eq!(offsets.clear_until(50, 0, || 100), Stretch::Read);
        assert_eq!(
            offsets.clear_until(100, 0, || 120),
            Stretch::Clear { until: 120 }
        );
        // A correlated event at 130.
        offsets.begin(|| 120).finish(&[130]);
        assert_eq!(offsets.clear_until(120, 0, || 140), Stretch::Read);
        assert_eq!(
            offsets.clear_until(131, 0, || 140),
            Stretch::Clear { until: 140 }
        );
        // In flight from 140: nothing past it is vouched for until done.
        let append = offsets.begin(|| 140);
        assert_eq!(
            offsets.clear_until(131, 0, || 150),
            Stretch::Clear { until: 140 }
        );
        assert_eq!(
            offsets.clear_until(140, 0, || 150),
            Stretch::Clear { until: 140 }
        );
        append.finish(&[]);
        assert_eq!(
            offsets.clear_until(140, 0, || 150),
            Stretch::Clear { until: 150 }
        );
        // Retention took `from`: read (the read reports it).
        assert_eq!(offsets.clear_until(150, 160, || 170), Stretch::Read);
    }

    #[test]
    fn given_more_correlated_offsets_than_kept_should_read_up_to_the_last_and_step_over_after() {
        let offsets = CorrelatedOffsets::new(0);
        let many: Vec<u64> = (0..MAX_KNOWN as u64).map(|n| n * 2).collect();
        offsets.begin(|| 0).finish(&many);
        let last = 2 * MAX_KNOWN as u64 + 10;
        offsets.begin(|| last - 5).finish(&[last]);
        let end = last + 100;
        // Forgotten: read up to and including the last of them.
        assert_eq!(offsets.clear_until(0, 0, || end), Stretch::Read);
        assert_eq!(offsets.clear_until(last, 0, || end), Stretch::Read);
        // Past it, appends are vouched for again.
        assert_eq!(
            offsets.clear_until(last + 1, 0, || end),
            Stretch::Clear { until: end }
        );
        offsets.begin(|| end).finish(&[end + 3]);
        assert_eq!(offsets.clear_until(end, 0, || end + 10), Stretch::Read);
        assert_eq!(
            offsets.clear_until(end + 4, 0, || end + 10),
            Stretch::Clear { until: end + 10 }
        );
    }

    #[test]
    fn given_an_abandoned_correlated_append_should_read_everything_from_then_on() {
        let offsets = CorrelatedOffsets::new(0);
        drop(offsets.begin(|| 10));
        assert_eq!(offsets.clear_until(10, 0, || 20), Stretch::Read);
        assert_eq!(offsets.clear_until(20, 0, || 30), Stretch::Read);
    }
}
