//! The queue and keyed group state machine. Pure: no I/O, time passed in.
//! Its effects (dead letters to record, event bodies to read back) are
//! returned as data for the caller to carry out.
//!
//! Per partition the group keeps a **floor** (every offset below it is
//! finished: acked, dead-lettered or filtered out), the finished offsets
//! above it as ranges, a **frontier** (the next offset to read from the log)
//! and a read-ahead buffer. Every event handed out and not finished, or
//! read and not yet deliverable, is **pending**, in one of three states:
//! leased to a member until a deadline; waiting until a time (a backoff, a
//! nack delay, or a delayed event's `deliver_at`); or, in keyed mode,
//! blocked behind an earlier event of its key. Two heaps order the leases by
//! deadline and the waiting events by time, and waiting events whose time
//! came queue up as **due**, so every operation costs O(log pending) —
//! nothing scans the backlog.
//!
//! # Memory: bounded by bytes, and no head-of-line stall
//!
//! A pending entry is light: its coordinates, attempts, state and (keyed)
//! key, at a fixed cost ([`ENTRY_COST`] plus its key). Event **bodies** are
//! held only where they are about to be delivered: the read-ahead buffer,
//! due entries whose body was read back, and — while it fits a quarter of
//! the budget, to spare a re-read — entries waiting or blocked. Every other
//! body is dropped and read back from the log when its entry comes due
//! ([`QueueState::bodies_wanted`], [`QueueState::attach`]). [`Budget`]
//! bounds both, in bytes:
//!
//! - `buffered_bytes`: bodies in memory — half for the read-ahead, a
//!   quarter at most for kept bodies of entries not ready, and loads for
//!   due entries within the rest (at least one at a time). A delayed or
//!   blocked event never holds read-ahead budget, so ready events read
//!   after 100,000 delayed ones are still read and delivered at once.
//! - `pending_bytes`: the light entries. Once full, no new events are read
//!   until some finish: the one bound on how far past non-ready events a
//!   group looks (with the default 64 MiB, about 260,000 of them).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use herald_backend::{Delivery, GroupSpec};
use herald_types::StoredEvent;
use serde::{Deserialize, Serialize};

use super::ranges::RangeSet;

/// Read-ahead per partition: refill below this many buffered events.
pub const LOW_WATER: usize = 256;

/// Bytes of one read-ahead read from a partition, at most (whole batches
/// are kept: the read may return up to one batch more).
pub const READ_AHEAD_BYTES: usize = 256 * 1024;

/// What one pending entry costs in memory besides its key: the entry in the
/// map (~100 bytes with its slot), its place in a heap or the due queue and
/// keyed queue (up to 2 x 32), and a finished range it may split (~48).
pub const ENTRY_COST: usize = 256;

/// The memory each queue or keyed group may hold, in bytes. Event bodies
/// (`buffered_bytes`): half for the read-ahead, a quarter at most kept for
/// events waiting or blocked, and the rest for bodies read back for due
/// redeliveries. Bookkeeping of pending events (`pending_bytes`): 256 bytes
/// each plus twice its key; once full, the group reads no further until
/// some finish. Defaults: 32 MiB and 64 MiB (about 260,000 pending events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Event bodies held in memory.
    pub buffered_bytes: usize,
    /// Bookkeeping of pending events, at 256 bytes plus twice the key each.
    pub pending_bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            buffered_bytes: 32 * 1024 * 1024,
            pending_bytes: 64 * 1024 * 1024,
        }
    }
}

/// An event leaving the group for its dead-letter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterEffect {
    /// Where the event is.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Why it was given up on.
    pub reason: String,
    /// How many deliveries it had.
    pub attempts: u32,
    /// When, in ms since the Unix epoch.
    pub dead_at: i64,
}

/// What a queue or keyed group holds in memory, as its [`Budget`] counts
/// it: for measurements and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Pending events (leased, waiting or blocked).
    pub entries: usize,
    /// Their bookkeeping, as budgeted.
    pub pending_bytes: usize,
    /// Event bodies in the read-ahead buffers.
    pub read_ahead_bytes: usize,
    /// Event bodies held by pending events.
    pub held_bytes: usize,
}

#[derive(Debug)]
struct Cursor {
    floor: u64,
    finished: RangeSet,
    frontier: u64,
    buffer: VecDeque<Arc<StoredEvent>>,
}

#[derive(Debug)]
enum EntryState {
    Leased {
        deadline: i64,
        member: Arc<str>,
        attempt: u32,
    },
    Waiting {
        at: i64,
    },
    Blocked,
}

#[derive(Debug)]
struct Entry {
    /// The body, when held (see the module docs); read back otherwise.
    event: Option<Arc<StoredEvent>>,
    /// The body's size as budgeted (0 until it was seen).
    size: usize,
    /// Keyed mode: the key that orders it.
    key: Option<Arc<str>>,
    /// Its `deliver_at`, for when it is unblocked.
    deliver_at: Option<i64>,
    attempts: u32,
    state: EntryState,
}

type Coordinates = (u32, u64);

/// What survives a restart: per partition the floor, the finished ranges,
/// leases (deadline, member, attempt) and redeliveries waiting (their time),
/// so a restart neither redelivers everything at once nor forgets delivery
/// counts. Events not yet delivered (delayed, blocked, new) are read again
/// from the log from the floor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub partitions: Vec<PartitionSnapshot>,
}

/// One partition of a [`QueueSnapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub floor: u64,
    pub finished: RangeSet,
    /// `(offset, attempts)` of pending events, from snapshots taken before
    /// leases and retries were kept (read, never written now).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<(u64, u32)>,
    /// Finished offsets made pending again by a redrive and not yet settled:
    /// read again from the log after a restart.
    #[serde(default)]
    pub redriven: Vec<u64>,
    /// Leases outstanding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<SavedLease>,
    /// Redeliveries waiting for their time (backoff or nack delay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<SavedRetry>,
}

/// A lease in a [`PartitionSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLease {
    pub offset: u64,
    pub attempt: u32,
    pub deadline: i64,
    pub member: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A redelivery waiting in a [`PartitionSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRetry {
    pub offset: u64,
    pub attempts: u32,
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The state of a queue or keyed group.
#[derive(Debug)]
pub struct QueueState {
    keyed: bool,
    spec: GroupSpec,
    budget: Budget,
    cursors: Vec<Cursor>,
    pending: HashMap<Coordinates, Entry>,
    /// `(deadline, partition, offset, attempt)` — stale entries are skipped.
    leases: BinaryHeap<Reverse<(i64, u32, u64, u32)>>,
    /// `(at, partition, offset)` — stale entries are skipped.
    waiting: BinaryHeap<Reverse<(i64, u32, u64)>>,
    /// Waiting entries whose time came, in that order: leased before new
    /// events once their bodies are held. Stale entries are skipped.
    due: VecDeque<Coordinates>,
    /// Keyed mode: per partition and key, the pending offsets in order; the
    /// head is the one that may be in flight.
    keys: HashMap<(u32, Arc<str>), VecDeque<u64>>,
    leased: usize,
    /// Bytes of bodies in the read-ahead buffers.
    read_ahead_bytes: usize,
    /// Bytes of bodies held by pending entries.
    held_bytes: usize,
    /// Bookkeeping bytes of the pending entries.
    pending_bytes: usize,
    /// Delivery counts restored from an old snapshot, consumed as events
    /// are read.
    restored_attempts: HashMap<Coordinates, u32>,
    next_partition: usize,
    /// Bumped by `reset`, so reads started before it are discarded.
    epoch: u64,
    /// Redriven events to read again from the log (after a restart).
    reloads: Vec<Coordinates>,
    /// Members that fetched recently → when (ms), for status. Soft state:
    /// queue members hold no assignment, only leases.
    members: std::collections::BTreeMap<String, i64>,
}

/// The budgeted size of an event's body: its data and attributes.
pub fn body_size(event: &StoredEvent) -> usize {
    let event = &event.event;
    let attributes = [
        Some(event.id.len()),
        Some(event.source.len()),
        Some(event.ty.len()),
        event.subject.as_ref().map(String::len),
        event.key.as_ref().map(String::len),
        event.datacontenttype.as_ref().map(String::len),
        event.dataschema.as_ref().map(String::len),
    ];
    let extensions: usize = event
        .extensions
        .iter()
        .map(|(name, value)| {
            let value = match value {
                herald_types::ExtensionValue::String(text) => text.len(),
                _ => 8,
            };
            name.len() + 48 + value
        })
        .sum();
    256 + event.data.as_ref().map_or(0, bytes::Bytes::len)
        + attributes.into_iter().flatten().sum::<usize>()
        + extensions
}

fn entry_cost(key: Option<&Arc<str>>) -> usize {
    // The key is held by the entry and by its keyed queue.
    ENTRY_COST + key.map_or(0, |key| 2 * key.len())
}

impl QueueState {
    /// A fresh group starting at `starts` (one offset per partition).
    pub fn new(spec: GroupSpec, budget: Budget, starts: &[u64]) -> Self {
        let snapshot = QueueSnapshot {
            partitions: starts
                .iter()
                .map(|&floor| PartitionSnapshot {
                    floor,
                    ..PartitionSnapshot::default()
                })
                .collect(),
        };
        Self::restore(spec, budget, snapshot)
    }

    /// A group as persisted: leases and waiting redeliveries come back as
    /// they were (their bodies are read back when they come due).
    pub fn restore(spec: GroupSpec, budget: Budget, snapshot: QueueSnapshot) -> Self {
        let mut state = Self {
            keyed: spec.mode == herald_backend::GroupMode::Keyed,
            spec,
            budget,
            cursors: Vec::new(),
            pending: HashMap::new(),
            leases: BinaryHeap::new(),
            waiting: BinaryHeap::new(),
            due: VecDeque::new(),
            keys: HashMap::new(),
            leased: 0,
            read_ahead_bytes: 0,
            held_bytes: 0,
            pending_bytes: 0,
            restored_attempts: HashMap::new(),
            next_partition: 0,
            epoch: 0,
            reloads: Vec::new(),
            members: std::collections::BTreeMap::new(),
        };
        for (index, saved) in snapshot.partitions.into_iter().enumerate() {
            let partition = index as u32;
            for lease in saved.leases {
                let state_now = EntryState::Leased {
                    deadline: lease.deadline,
                    member: Arc::from(lease.member),
                    attempt: lease.attempt,
                };
                state.leases.push(Reverse((
                    lease.deadline,
                    partition,
                    lease.offset,
                    lease.attempt,
                )));
                state.leased += 1;
                state.insert_restored(
                    (partition, lease.offset),
                    lease.key,
                    lease.attempt,
                    state_now,
                );
            }
            for retry in saved.retries {
                state
                    .waiting
                    .push(Reverse((retry.at, partition, retry.offset)));
                state.insert_restored(
                    (partition, retry.offset),
                    retry.key,
                    retry.attempts,
                    EntryState::Waiting { at: retry.at },
                );
            }
            // Counts of events finished since are stale: drop them.
            for (offset, attempts) in saved.attempts {
                if offset >= saved.floor && !saved.finished.contains(offset) {
                    state
                        .restored_attempts
                        .insert((partition, offset), attempts);
                }
            }
            for offset in saved.redriven {
                if !state.pending.contains_key(&(partition, offset)) {
                    state.reloads.push((partition, offset));
                }
            }
            state.cursors.push(Cursor {
                floor: saved.floor,
                finished: saved.finished,
                frontier: saved.floor,
                buffer: VecDeque::new(),
            });
        }
        state
    }

    fn insert_restored(
        &mut self,
        coordinates: Coordinates,
        key: Option<String>,
        attempts: u32,
        state: EntryState,
    ) {
        let key: Option<Arc<str>> = key.filter(|_| self.keyed).map(Arc::from);
        if let Some(key) = &key {
            self.keys
                .entry((coordinates.0, Arc::clone(key)))
                .or_default()
                .push_back(coordinates.1);
        }
        self.pending_bytes += entry_cost(key.as_ref());
        self.pending.insert(
            coordinates,
            Entry {
                event: None,
                size: 0,
                key,
                deliver_at: None,
                attempts,
                state,
            },
        );
    }

    /// After a power loss, a log can be shorter than the state persisted
    /// for it: every partition whose floor, finished offsets or pending
    /// events reach past `ends[p]` is cut back to it, so offsets the log
    /// reuses are delivered. Returns `(partition, floor before, end)` of
    /// each partition whose floor moved.
    pub fn clamp(&mut self, ends: &[u64], now: i64) -> Vec<(u32, u64, u64)> {
        let mut clamped = Vec::new();
        for (index, cursor) in self.cursors.iter_mut().enumerate() {
            let Some(&end) = ends.get(index) else {
                continue;
            };
            if cursor.floor > end {
                clamped.push((index as u32, cursor.floor, end));
                cursor.floor = end;
            }
            cursor.finished.drop_from(end);
            cursor.frontier = cursor.frontier.min(end).max(cursor.floor);
            cursor.buffer.retain(|event| event.offset < end);
        }
        let past: Vec<Coordinates> = self
            .pending
            .keys()
            .filter(|(partition, offset)| {
                ends.get(*partition as usize)
                    .is_some_and(|end| *offset >= *end)
            })
            .copied()
            .collect();
        for coordinates in past {
            self.forget(coordinates, now);
        }
        let beyond = |(partition, offset): &Coordinates| {
            ends.get(*partition as usize)
                .is_some_and(|end| *offset >= *end)
        };
        self.reloads.retain(|coordinates| !beyond(coordinates));
        self.restored_attempts
            .retain(|coordinates, _| !beyond(coordinates));
        self.read_ahead_bytes = self
            .cursors
            .iter()
            .flat_map(|cursor| &cursor.buffer)
            .map(|event| body_size(event))
            .sum();
        clamped
    }

    /// Drops a pending entry without finishing its offset (it is not in
    /// the log any more), unblocking its key.
    fn forget(&mut self, coordinates: Coordinates, now: i64) {
        if let Some(entry) = self.remove_entry(coordinates) {
            self.release_key(coordinates, entry.key.as_ref(), now);
        }
    }

    /// Redriven events to read from the log and hand to [`QueueState::redrive`].
    pub fn take_reloads(&mut self) -> Vec<Coordinates> {
        std::mem::take(&mut self.reloads)
    }

    /// Puts back reloads that could not be read yet.
    pub fn keep_reloads(&mut self, reloads: &[Coordinates]) {
        self.reloads.extend_from_slice(reloads);
    }

    /// What must survive a restart.
    pub fn snapshot(&self) -> QueueSnapshot {
        let mut partitions: Vec<PartitionSnapshot> = self
            .cursors
            .iter()
            .map(|cursor| PartitionSnapshot {
                floor: cursor.floor,
                finished: cursor.finished.clone(),
                ..PartitionSnapshot::default()
            })
            .collect();
        for ((partition, offset), entry) in &self.pending {
            let Some(saved) = partitions.get_mut(*partition as usize) else {
                continue;
            };
            let key = || entry.key.as_deref().map(str::to_owned);
            match &entry.state {
                EntryState::Leased {
                    deadline,
                    member,
                    attempt,
                } => saved.leases.push(SavedLease {
                    offset: *offset,
                    attempt: *attempt,
                    deadline: *deadline,
                    member: member.to_string(),
                    key: key(),
                }),
                EntryState::Waiting { at } if entry.attempts > 0 => {
                    saved.retries.push(SavedRetry {
                        offset: *offset,
                        attempts: entry.attempts,
                        at: *at,
                        key: key(),
                    });
                }
                EntryState::Waiting { .. } | EntryState::Blocked => {
                    if *offset < saved.floor || saved.finished.contains(*offset) {
                        saved.redriven.push(*offset);
                    }
                }
            }
        }
        for (partition, offset) in &self.reloads {
            if let Some(saved) = partitions.get_mut(*partition as usize) {
                saved.redriven.push(*offset);
            }
        }
        for ((partition, offset), attempts) in &self.restored_attempts {
            if let Some(saved) = partitions.get_mut(*partition as usize) {
                saved.attempts.push((*offset, *attempts));
            }
        }
        for saved in &mut partitions {
            saved.attempts.sort_unstable();
            saved.redriven.sort_unstable();
            saved.leases.sort_unstable_by_key(|lease| lease.offset);
            saved.retries.sort_unstable_by_key(|retry| retry.offset);
        }
        QueueSnapshot { partitions }
    }

    /// Replaces the settings (mode is fixed).
    pub fn set_spec(&mut self, spec: GroupSpec) {
        self.spec = spec;
    }

    /// The current epoch (see [`QueueState::add_read`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What is held in memory.
    pub fn memory(&self) -> Memory {
        Memory {
            entries: self.pending.len(),
            pending_bytes: self.pending_bytes,
            read_ahead_bytes: self.read_ahead_bytes,
            held_bytes: self.held_bytes,
        }
    }

    fn entries_full(&self) -> bool {
        self.pending_bytes >= self.budget.pending_bytes
    }

    fn read_ahead_budget(&self) -> usize {
        self.budget.buffered_bytes / 2
    }

    fn keep_budget(&self) -> usize {
        self.budget.buffered_bytes / 4
    }

    /// Partitions whose read-ahead needs refilling: `(partition, from,
    /// max_bytes)`; `ends[p]` is the partition's end offset. Only the
    /// read-ahead's own budget and the bookkeeping budget stop reads:
    /// bodies of events not ready never do.
    pub fn reads_needed(&self, ends: &[u64]) -> Vec<(u32, u64, usize)> {
        let room = self
            .read_ahead_budget()
            .saturating_sub(self.read_ahead_bytes);
        if self.entries_full() || room == 0 {
            return Vec::new();
        }
        let max_bytes = room.clamp(4096, READ_AHEAD_BYTES);
        self.cursors
            .iter()
            .enumerate()
            .filter(|(partition, cursor)| {
                cursor.buffer.len() < LOW_WATER
                    && ends
                        .get(*partition)
                        .is_some_and(|end| cursor.frontier < *end)
            })
            .map(|(partition, cursor)| (partition as u32, cursor.frontier, max_bytes))
            .collect()
    }

    /// Adds events read from `partition` starting at `from`, up to `next`.
    /// Ignored if the cursor moved meanwhile (another read, or a reset in
    /// another `epoch`).
    pub fn add_read(
        &mut self,
        epoch: u64,
        partition: u32,
        from: u64,
        events: Vec<StoredEvent>,
        next: u64,
    ) {
        let Some(cursor) = self.cursors.get_mut(partition as usize) else {
            return;
        };
        if epoch != self.epoch || cursor.frontier != from {
            return;
        }
        cursor.frontier = next;
        // Offsets the read skipped are erased events (hard-deleted streams):
        // finished, so the floor moves past them.
        let mut expected = from;
        let mut gaps = Vec::new();
        for event in &events {
            gaps.extend(expected..event.offset);
            expected = event.offset + 1;
        }
        gaps.extend(expected..next);
        for event in events {
            self.read_ahead_bytes += body_size(&event);
            cursor.buffer.push_back(Arc::new(event));
        }
        for offset in gaps {
            self.finish_offset((partition, offset));
        }
    }

    /// Hard delete: `offsets` (sorted) of `partition` are no longer
    /// readable. Drops them from the read-ahead, ends their pending
    /// deliveries (a later ack of one is unknown), and marks them finished.
    pub fn erase(&mut self, partition: u32, offsets: &[u64], now: i64) {
        let Some(cursor) = self.cursors.get_mut(partition as usize) else {
            return;
        };
        let mut dropped = 0;
        cursor.buffer.retain(|event| {
            let erased = offsets.binary_search(&event.offset).is_ok();
            if erased {
                dropped += body_size(event);
            }
            !erased
        });
        self.read_ahead_bytes -= dropped;
        let frontier = cursor.frontier;
        for &offset in offsets.iter().take_while(|offset| **offset < frontier) {
            let coordinates = (partition, offset);
            if self.pending.contains_key(&coordinates) {
                self.finish(coordinates, now);
            } else {
                self.finish_offset(coordinates);
            }
        }
    }

    /// When the partition's retention removed offsets below the floor: move
    /// the floor (and frontier) up to `start`.
    pub fn skip_to(&mut self, partition: u32, start: u64) {
        let Some(cursor) = self.cursors.get_mut(partition as usize) else {
            return;
        };
        if cursor.frontier < start {
            cursor.frontier = start;
            let dropped: usize = cursor.buffer.drain(..).map(|event| body_size(&event)).sum();
            self.read_ahead_bytes -= dropped;
        }
        if cursor.floor < start {
            cursor.floor = start;
            cursor.finished.drop_below(start);
            Self::advance_floor(cursor);
        }
    }

    /// Hands out up to `max` deliveries to `member`. Expired leases are
    /// processed first; their dead letters come back as effects. Due
    /// redeliveries whose bodies are held go first, then new events.
    pub fn take(
        &mut self,
        member: &str,
        max: usize,
        now: i64,
    ) -> (Vec<Delivery>, Vec<DeadLetterEffect>) {
        let effects = self.expire(now);
        self.compact_heaps();
        self.members.insert(member.to_owned(), now);
        let member: Arc<str> = Arc::from(member);
        let mut deliveries = Vec::new();
        let max_in_flight = self.spec.max_in_flight as usize;
        while deliveries.len() < max && self.leased < max_in_flight {
            let Some(coordinates) = self.next_due(now).or_else(|| self.next_new(now)) else {
                break;
            };
            deliveries.extend(self.lease(coordinates, &member, now));
        }
        (deliveries, effects)
    }

    /// Due entries whose bodies must be read back from the log before they
    /// can be leased: the first `max` of the due queue lacking one, within
    /// the loading budget (at least one).
    pub fn bodies_wanted(&mut self, now: i64, max: usize) -> Vec<Coordinates> {
        self.promote_due(now);
        let room = self
            .budget
            .buffered_bytes
            .saturating_sub(self.read_ahead_budget())
            .saturating_sub(self.held_bytes);
        let mut wanted = Vec::new();
        let mut bytes = 0;
        for coordinates in self.due.iter().take(max.saturating_mul(2).max(64)) {
            if wanted.len() >= max {
                break;
            }
            let Some(entry) = self.pending.get(coordinates) else {
                continue;
            };
            if entry.event.is_some() || !matches!(entry.state, EntryState::Waiting { .. }) {
                continue;
            }
            if !wanted.is_empty() && bytes + entry.size > room {
                break;
            }
            bytes += entry.size;
            wanted.push(*coordinates);
        }
        wanted
    }

    /// Bodies read back for [`QueueState::bodies_wanted`]. Ignored for an
    /// entry settled meanwhile.
    pub fn attach(&mut self, event: StoredEvent) {
        let coordinates = (event.partition, event.offset);
        if let Some(entry) = self.pending.get_mut(&coordinates)
            && entry.event.is_none()
        {
            let size = body_size(&event);
            entry.size = size;
            entry.event = Some(Arc::new(event));
            self.held_bytes += size;
        }
    }

    /// A pending event the log no longer has (retention removed it, or a
    /// hard delete erased it): nothing is left to deliver, so it is
    /// finished.
    pub fn lost(&mut self, coordinates: Coordinates, now: i64) {
        if self.pending.contains_key(&coordinates) {
            self.finish(coordinates, now);
        }
    }

    /// The earliest time something changes without outside input: a lease
    /// expiring or a waiting event coming due.
    pub fn next_timer(&self) -> Option<i64> {
        let lease = self.leases.peek().map(|Reverse(entry)| entry.0);
        let waiting = self.waiting.peek().map(|Reverse(entry)| entry.0);
        match (lease, waiting) {
            (Some(lease), Some(waiting)) => Some(lease.min(waiting)),
            (one, other) => one.or(other),
        }
    }

    /// Processes leases that expired by `now`: each is retried after its
    /// backoff, or dead-lettered once it had `max_deliveries`.
    pub fn expire(&mut self, now: i64) -> Vec<DeadLetterEffect> {
        let mut effects = Vec::new();
        while let Some(Reverse((deadline, partition, offset, attempt))) =
            self.leases.peek().copied()
        {
            if deadline > now {
                break;
            }
            self.leases.pop();
            let current = matches!(
                self.pending.get(&(partition, offset)),
                Some(Entry { state: EntryState::Leased { deadline: current, attempt: leased, .. }, .. })
                    if *current == deadline && *leased == attempt
            );
            if current {
                self.unlease((partition, offset), now);
                if let Some(effect) =
                    self.retry_or_bury((partition, offset), now, None, "ack deadline exceeded")
                {
                    effects.push(effect);
                }
            }
        }
        effects
    }

    /// Moves waiting entries whose time came to the due queue.
    fn promote_due(&mut self, now: i64) {
        while let Some(Reverse((at, partition, offset))) = self.waiting.peek().copied() {
            if at > now {
                return;
            }
            self.waiting.pop();
            let due = matches!(
                self.pending.get(&(partition, offset)),
                Some(Entry { state: EntryState::Waiting { at: current }, .. }) if *current == at
            );
            if due {
                self.due.push_back((partition, offset));
            }
        }
    }

    /// The first due entry, if its body is held (the runtime reads bodies
    /// back first: [`QueueState::bodies_wanted`]).
    fn next_due(&mut self, now: i64) -> Option<Coordinates> {
        self.promote_due(now);
        while let Some(coordinates) = self.due.front().copied() {
            match self.pending.get(&coordinates) {
                Some(Entry {
                    state: EntryState::Waiting { at },
                    event,
                    ..
                }) if *at <= now => {
                    if event.is_none() {
                        return None;
                    }
                    self.due.pop_front();
                    return Some(coordinates);
                }
                // Settled or re-scheduled since: stale.
                _ => {
                    self.due.pop_front();
                }
            }
        }
        None
    }

    /// The next new event that can be leased now, from the read-ahead,
    /// partitions in turn. Filtered-out events are finished on the way;
    /// delayed ones start waiting; keyed ones behind their key are blocked.
    /// Those keep their body only while it fits the keep budget.
    fn next_new(&mut self, now: i64) -> Option<Coordinates> {
        let partitions = self.cursors.len();
        for _ in 0..partitions {
            let partition = self.next_partition % partitions;
            self.next_partition = partition + 1;
            while !self.entries_full() {
                let Some(event) = self.cursors[partition].buffer.pop_front() else {
                    break;
                };
                let size = body_size(&event);
                self.read_ahead_bytes -= size;
                let coordinates = (partition as u32, event.offset);
                let cursor = &self.cursors[partition];
                if event.offset < cursor.floor
                    || cursor.finished.contains(event.offset)
                    || self.pending.contains_key(&coordinates)
                {
                    continue;
                }
                if !self
                    .spec
                    .filter
                    .matches(&event.event.ty, event.event.subject.as_deref())
                {
                    self.finish_offset(coordinates);
                    continue;
                }
                let attempts = self.restored_attempts.remove(&coordinates).unwrap_or(0);
                let key = self.key_of(&event);
                let blocked = self.enqueue_key(coordinates, key.as_ref());
                let deliver_at = event.event.deliver_at;
                let delayed = deliver_at.filter(|at| *at > now);
                let state = match (blocked, delayed) {
                    (true, _) => EntryState::Blocked,
                    (false, Some(at)) => {
                        self.waiting
                            .push(Reverse((at, coordinates.0, coordinates.1)));
                        EntryState::Waiting { at }
                    }
                    // Leased by the caller right away.
                    (false, None) => EntryState::Waiting { at: now },
                };
                let ready = !blocked && delayed.is_none();
                let keep = ready || self.held_bytes + size <= self.keep_budget();
                if keep {
                    self.held_bytes += size;
                }
                self.pending_bytes += entry_cost(key.as_ref());
                self.pending.insert(
                    coordinates,
                    Entry {
                        event: keep.then_some(event),
                        size,
                        key,
                        deliver_at,
                        attempts,
                        state,
                    },
                );
                if ready {
                    return Some(coordinates);
                }
            }
        }
        None
    }

    /// Keyed mode: the key that orders `event`, if it has one.
    fn key_of(&self, event: &StoredEvent) -> Option<Arc<str>> {
        if !self.keyed {
            return None;
        }
        let subject = match self.spec.order_by {
            herald_backend::OrderBy::Subject => event.event.subject.as_deref(),
            herald_backend::OrderBy::Key => None,
        };
        subject.or(event.event.key.as_deref()).map(Arc::from)
    }

    /// Queues `coordinates` behind its key; returns whether an earlier event
    /// of the key is still pending (so this one must wait its turn).
    fn enqueue_key(&mut self, coordinates: Coordinates, key: Option<&Arc<str>>) -> bool {
        let Some(key) = key else { return false };
        let queue = self
            .keys
            .entry((coordinates.0, Arc::clone(key)))
            .or_default();
        queue.push_back(coordinates.1);
        queue.len() > 1
    }

    /// The heaps and the due queue drop settled entries lazily, when they
    /// reach the front. So that memory stays bounded by what is pending
    /// (not by the rate times the ack wait), rebuild one once stale entries
    /// outnumber live ones.
    fn compact_heaps(&mut self) {
        const SLACK: usize = 1024;
        if self.leases.len() > 2 * self.leased + SLACK {
            let live = self
                .pending
                .iter()
                .filter_map(|(coordinates, entry)| match entry.state {
                    EntryState::Leased {
                        deadline, attempt, ..
                    } => Some(Reverse((deadline, coordinates.0, coordinates.1, attempt))),
                    _ => None,
                });
            self.leases = live.collect();
        }
        let waiting = self.pending.len() - self.leased;
        if self.waiting.len() > 2 * waiting + SLACK {
            let due: std::collections::HashSet<Coordinates> = self.due.iter().copied().collect();
            let live = self
                .pending
                .iter()
                .filter_map(|(coordinates, entry)| match entry.state {
                    EntryState::Waiting { at } if !due.contains(coordinates) => {
                        Some(Reverse((at, coordinates.0, coordinates.1)))
                    }
                    _ => None,
                });
            self.waiting = live.collect();
        }
        if self.due.len() > 2 * waiting + SLACK {
            let pending = &self.pending;
            self.due.retain(|coordinates| {
                matches!(
                    pending.get(coordinates),
                    Some(Entry {
                        state: EntryState::Waiting { .. },
                        ..
                    })
                )
            });
        }
    }

    /// Leases a due or new entry whose body is held; the body goes out with
    /// the delivery (a redelivery reads it back).
    fn lease(&mut self, coordinates: Coordinates, member: &Arc<str>, now: i64) -> Option<Delivery> {
        let ack_wait = i64::try_from(self.spec.ack_wait_ms).unwrap_or(i64::MAX);
        let deadline = now.saturating_add(ack_wait);
        let entry = self.pending.get_mut(&coordinates)?;
        let body = entry.event.take()?;
        self.held_bytes -= entry.size;
        entry.attempts += 1;
        let attempt = entry.attempts;
        entry.state = EntryState::Leased {
            deadline,
            member: Arc::clone(member),
            attempt,
        };
        let event = Arc::try_unwrap(body).unwrap_or_else(|shared| (*shared).clone());
        self.leases
            .push(Reverse((deadline, coordinates.0, coordinates.1, attempt)));
        self.leased += 1;
        Some(Delivery {
            delivery_id: delivery_id(coordinates, attempt),
            attempt,
            event,
        })
    }

    /// Acks: the event is finished. Any pending, unblocked event may be acked,
    /// also by the id of an earlier delivery (the work was done). Returns
    /// whether it applied.
    pub fn ack(&mut self, id: &str, now: i64) -> bool {
        let Some((coordinates, _)) = parse_delivery_id(id) else {
            return false;
        };
        match self.pending.get(&coordinates) {
            Some(Entry {
                state: EntryState::Leased { .. } | EntryState::Waiting { .. },
                attempts,
                ..
            }) if *attempts > 0 => {
                self.finish(coordinates, now);
                true
            }
            _ => false,
        }
    }

    /// Nacks the current lease: redelivered after `delay` (or the backoff),
    /// or dead-lettered if it had `max_deliveries`.
    pub fn nack(
        &mut self,
        id: &str,
        delay_ms: Option<u64>,
        now: i64,
    ) -> (bool, Option<DeadLetterEffect>) {
        let Some(coordinates) = self.current_lease(id) else {
            return (false, None);
        };
        self.unlease(coordinates, now);
        (
            true,
            self.retry_or_bury(coordinates, now, delay_ms, "nacked"),
        )
    }

    /// Extends the current lease to `now + ack_wait_ms`.
    pub fn extend(&mut self, id: &str, ack_wait_ms: Option<u64>, now: i64) -> bool {
        let Some(coordinates) = self.current_lease(id) else {
            return false;
        };
        let ack_wait =
            i64::try_from(ack_wait_ms.unwrap_or(self.spec.ack_wait_ms)).unwrap_or(i64::MAX);
        let deadline = now.saturating_add(ack_wait);
        if let Some(Entry {
            state:
                EntryState::Leased {
                    deadline: current,
                    attempt,
                    ..
                },
            ..
        }) = self.pending.get_mut(&coordinates)
        {
            *current = deadline;
            self.leases
                .push(Reverse((deadline, coordinates.0, coordinates.1, *attempt)));
        }
        true
    }

    /// Sends the event straight to dead letters.
    pub fn reject(&mut self, id: &str, reason: &str, now: i64) -> Option<DeadLetterEffect> {
        let (coordinates, _) = parse_delivery_id(id)?;
        match self.pending.get(&coordinates) {
            Some(Entry {
                state: EntryState::Leased { .. } | EntryState::Waiting { .. },
                attempts,
                ..
            }) if *attempts > 0 => self.bury(coordinates, now, format!("rejected: {reason}")),
            _ => None,
        }
    }

    /// Members that fetched within the last `max(2 x ack_wait, 60 s)`, with
    /// how long ago (ms), in id order.
    pub fn members(&mut self, now: i64) -> Vec<(String, u64)> {
        let window =
            i64::try_from(self.spec.ack_wait_ms.saturating_mul(2).max(60_000)).unwrap_or(i64::MAX);
        self.members
            .retain(|_, seen| now.saturating_sub(*seen) <= window);
        self.members
            .iter()
            .map(|(member, seen)| {
                (
                    member.clone(),
                    u64::try_from(now.saturating_sub(*seen)).unwrap_or(0),
                )
            })
            .collect()
    }

    /// Every lease of `member` returns to the group, due now.
    pub fn release_member(&mut self, member: &str, now: i64) -> usize {
        self.members.remove(member);
        let released: Vec<Coordinates> = self
            .pending
            .iter()
            .filter(|(_, entry)| matches!(&entry.state, EntryState::Leased { member: holder, .. } if &**holder == member))
            .map(|(coordinates, _)| *coordinates)
            .collect();
        for coordinates in &released {
            self.unlease(*coordinates, now);
            self.waiting
                .push(Reverse((now, coordinates.0, coordinates.1)));
        }
        released.len()
    }

    /// Makes `event` (a dead letter being redriven) deliverable again as a
    /// first delivery. It stays finished for the floor; it is pending until
    /// settled again. Returns whether it was not pending already.
    pub fn redrive(&mut self, event: StoredEvent, now: i64) -> bool {
        let coordinates = (event.partition, event.offset);
        if self.pending.contains_key(&coordinates) {
            return false;
        }
        let key = self.key_of(&event);
        let state = if self.enqueue_key(coordinates, key.as_ref()) {
            EntryState::Blocked
        } else {
            self.waiting
                .push(Reverse((now, coordinates.0, coordinates.1)));
            EntryState::Waiting { at: now }
        };
        let size = body_size(&event);
        let keep = self.held_bytes + size <= self.keep_budget();
        if keep {
            self.held_bytes += size;
        }
        self.pending_bytes += entry_cost(key.as_ref());
        self.pending.insert(
            coordinates,
            Entry {
                deliver_at: event.event.deliver_at,
                event: keep.then(|| Arc::new(event)),
                size,
                key,
                attempts: 0,
                state,
            },
        );
        true
    }

    /// Moves every partition to `starts`, dropping all pending state.
    pub fn reset(&mut self, starts: &[u64]) {
        let spec = self.spec.clone();
        let epoch = self.epoch + 1;
        *self = Self::new(spec, self.budget, starts);
        self.epoch = epoch;
    }

    /// Leased deliveries outstanding.
    pub fn in_flight(&self) -> usize {
        self.leased
    }

    /// Events pending but not leased (waiting or blocked).
    pub fn waiting(&self) -> usize {
        self.pending.len() - self.leased
    }

    /// Per partition: the floor (everything below is finished).
    pub fn floors(&self) -> Vec<u64> {
        self.cursors.iter().map(|cursor| cursor.floor).collect()
    }

    /// The frontier of each partition (the next offset to read).
    pub fn frontiers(&self) -> Vec<u64> {
        self.cursors.iter().map(|cursor| cursor.frontier).collect()
    }

    /// Whether new events are wanted from the log (room for them, nothing
    /// buffered): a fetcher with nothing to hand out should wait for the log.
    pub fn wants_events(&self) -> bool {
        !self.entries_full() && self.cursors.iter().all(|cursor| cursor.buffer.is_empty())
    }

    fn current_lease(&self, id: &str) -> Option<Coordinates> {
        let (coordinates, attempt) = parse_delivery_id(id)?;
        match self.pending.get(&coordinates) {
            Some(Entry {
                state:
                    EntryState::Leased {
                        attempt: leased, ..
                    },
                ..
            }) if *leased == attempt => Some(coordinates),
            _ => None,
        }
    }

    /// Ends a lease: the entry waits (the caller says until when).
    fn unlease(&mut self, coordinates: Coordinates, now: i64) {
        if let Some(entry) = self.pending.get_mut(&coordinates)
            && matches!(entry.state, EntryState::Leased { .. })
        {
            entry.state = EntryState::Waiting { at: now };
            self.leased -= 1;
        }
    }

    fn retry_or_bury(
        &mut self,
        coordinates: Coordinates,
        now: i64,
        delay_ms: Option<u64>,
        reason: &str,
    ) -> Option<DeadLetterEffect> {
        let attempts = self.pending.get(&coordinates)?.attempts;
        if attempts >= self.spec.max_deliveries {
            let reason = format!(
                "{reason}; max deliveries ({}) reached",
                self.spec.max_deliveries
            );
            return self.bury(coordinates, now, reason);
        }
        let delay = delay_ms.unwrap_or_else(|| self.spec.backoff(attempts));
        let at = now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
        if let Some(entry) = self.pending.get_mut(&coordinates) {
            entry.state = EntryState::Waiting { at };
        }
        self.waiting
            .push(Reverse((at, coordinates.0, coordinates.1)));
        None
    }

    fn bury(
        &mut self,
        coordinates: Coordinates,
        now: i64,
        reason: String,
    ) -> Option<DeadLetterEffect> {
        let entry = self.pending.get(&coordinates)?;
        let effect = DeadLetterEffect {
            partition: coordinates.0,
            offset: coordinates.1,
            reason,
            attempts: entry.attempts,
            dead_at: now,
        };
        self.finish(coordinates, now);
        Some(effect)
    }

    /// Removes a pending entry and its budget; returns it.
    fn remove_entry(&mut self, coordinates: Coordinates) -> Option<Entry> {
        let entry = self.pending.remove(&coordinates)?;
        if matches!(entry.state, EntryState::Leased { .. }) {
            self.leased -= 1;
        }
        if entry.event.is_some() {
            self.held_bytes -= entry.size;
        }
        self.pending_bytes -= entry_cost(entry.key.as_ref());
        Some(entry)
    }

    /// The event is finished: forget it, move the floor, unblock its key.
    fn finish(&mut self, coordinates: Coordinates, now: i64) {
        let Some(entry) = self.remove_entry(coordinates) else {
            return;
        };
        self.finish_offset(coordinates);
        self.release_key(coordinates, entry.key.as_ref(), now);
    }

    /// Keyed mode: `coordinates` leaves its key's queue; the next of the key
    /// is unblocked.
    fn release_key(&mut self, coordinates: Coordinates, key: Option<&Arc<str>>, now: i64) {
        let Some(key) = key else {
            return;
        };
        let slot = (coordinates.0, Arc::clone(key));
        let next = self.keys.get_mut(&slot).and_then(|queue| {
            queue.retain(|offset| *offset != coordinates.1);
            queue.front().copied()
        });
        match next {
            Some(offset) => self.unblock((coordinates.0, offset), now),
            None => {
                self.keys.remove(&slot);
            }
        }
    }

    fn unblock(&mut self, coordinates: Coordinates, now: i64) {
        if let Some(entry) = self.pending.get_mut(&coordinates)
            && matches!(entry.state, EntryState::Blocked)
        {
            let at = entry.deliver_at.unwrap_or(now).max(now);
            entry.state = EntryState::Waiting { at };
            self.waiting
                .push(Reverse((at, coordinates.0, coordinates.1)));
        }
    }

    fn finish_offset(&mut self, (partition, offset): Coordinates) {
        let Some(cursor) = self.cursors.get_mut(partition as usize) else {
            return;
        };
        if offset < cursor.floor {
            return;
        }
        cursor.finished.insert(offset);
        Self::advance_floor(cursor);
    }

    fn advance_floor(cursor: &mut Cursor) {
        while let Some(end) = cursor.finished.take_range_at(cursor.floor) {
            cursor.floor = end;
        }
    }
}

/// `"<partition>.<offset>.<attempt>"`.
pub fn delivery_id((partition, offset): Coordinates, attempt: u32) -> String {
    format!("{partition}.{offset}.{attempt}")
}

/// The coordinates and attempt of a delivery id, or `None` if malformed.
pub fn parse_delivery_id(id: &str) -> Option<(Coordinates, u32)> {
    let mut parts = id.splitn(3, '.');
    let partition = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let attempt = parts.next()?.parse().ok()?;
    Some(((partition, offset), attempt))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use bytes::Bytes;
    use herald_backend::{GroupMode, GroupSpec};
    use herald_types::{Event, StoredEvent};
    use proptest::prelude::*;

    use super::{Budget, ENTRY_COST, QueueState, READ_AHEAD_BYTES, parse_delivery_id};

    fn stored(partition: u32, offset: u64, key: &str) -> StoredEvent {
        let mut event = Event::new(format!("{partition}-{offset}"), "/test", "t");
        event.key = Some(key.to_owned());
        event.data = Some(Bytes::new());
        StoredEvent {
            topic: "t".parse().unwrap(),
            partition,
            offset,
            appended_at: 0,
            event,
        }
    }

    /// Point 2 of the hardening issue: a day-delayed backlog must not hold
    /// up a ready event read after it.
    #[test]
    fn given_100k_events_delayed_a_day_when_a_ready_one_follows_should_deliver_it_at_once() {
        let now = 1_000_000i64;
        let mut state = QueueState::new(GroupSpec::new(GroupMode::Queue), Budget::default(), &[0]);
        let mut offset = 0u64;
        while offset < 100_000 {
            let events: Vec<StoredEvent> = (offset..offset + 1_000)
                .map(|offset| {
                    let mut event = stored(0, offset, "k");
                    event.event.deliver_at = Some(now + 86_400_000);
                    event
                })
                .collect();
            for (partition, from, _) in state.reads_needed(&[100_001]) {
                assert_eq!((partition, from), (0, offset));
            }
            state.add_read(0, 0, offset, events, offset + 1_000);
            let (deliveries, _) = state.take("m", 10, now);
            assert!(deliveries.is_empty(), "nothing is due yet");
            offset += 1_000;
        }
        assert_eq!(
            state
                .reads_needed(&[100_001])
                .first()
                .map(|read| (read.0, read.1)),
            Some((0, 100_000)),
            "the read-ahead stalled behind delayed events"
        );
        state.add_read(0, 0, 100_000, vec![stored(0, 100_000, "k")], 100_001);
        let (deliveries, _) = state.take("m", 10, now);
        let offsets: Vec<u64> = deliveries
            .iter()
            .map(|delivery| delivery.event.offset)
            .collect();
        assert_eq!(offsets, [100_000]);
    }

    /// Point 2: memory is bounded by bytes, whatever the payloads: 100,000
    /// delayed events of 16 KiB hold no more bodies than the budget allows,
    /// and their bookkeeping is the fixed cost per entry.
    #[test]
    fn given_100k_delayed_events_with_large_payloads_when_read_should_stay_within_the_byte_budget()
    {
        let now = 1_000_000i64;
        let budget = Budget::default();
        let mut state = QueueState::new(GroupSpec::new(GroupMode::Queue), budget, &[0]);
        let payload = Bytes::from(vec![b'x'; 16 * 1024]);
        let mut offset = 0u64;
        while offset < 100_000 {
            let Some((_, from, max_bytes)) = state.reads_needed(&[100_000]).first().copied() else {
                panic!("reads stopped at {offset}: {:?}", state.memory());
            };
            assert_eq!(from, offset);
            // As the log would: whole events up to about `max_bytes`.
            let count = (max_bytes / payload.len()).clamp(1, 100_000 - offset as usize) as u64;
            let events: Vec<StoredEvent> = (offset..offset + count)
                .map(|offset| {
                    let mut event = stored(0, offset, "k");
                    event.event.data = Some(payload.clone());
                    event.event.deliver_at = Some(now + 86_400_000);
                    event
                })
                .collect();
            state.add_read(0, 0, offset, events, offset + count);
            let memory = state.memory();
            assert!(
                memory.read_ahead_bytes <= budget.buffered_bytes / 2 + READ_AHEAD_BYTES,
                "{memory:?}"
            );
            let (deliveries, _) = state.take("m", 10, now);
            assert!(deliveries.is_empty());
            offset += count;
        }
        let memory = state.memory();
        assert_eq!(memory.entries, 100_000);
        assert!(memory.held_bytes <= budget.buffered_bytes / 4, "{memory:?}");
        assert_eq!(memory.read_ahead_bytes, 0);
        assert_eq!(memory.pending_bytes, 100_000 * ENTRY_COST);
        assert!(memory.pending_bytes <= budget.pending_bytes);
    }

    /// Bodies dropped from waiting entries are read back when they come
    /// due: the entry asks for its body, and is leased once it has it.
    #[test]
    fn given_a_delayed_event_without_its_body_when_due_should_ask_for_it_and_then_deliver() {
        let budget = Budget {
            buffered_bytes: 4, // keeps no body of an event not ready
            pending_bytes: 1 << 20,
        };
        let mut state = QueueState::new(GroupSpec::new(GroupMode::Queue), budget, &[0]);
        let mut delayed = stored(0, 0, "k");
        delayed.event.deliver_at = Some(1_000);
        state.add_read(0, 0, 0, vec![delayed.clone()], 1);
        assert!(state.take("m", 1, 0).0.is_empty());
        assert_eq!(
            state.memory().held_bytes,
            0,
            "the waiting entry kept its body"
        );
        assert!(
            state.take("m", 1, 1_000).0.is_empty(),
            "leased without a body"
        );
        assert_eq!(state.bodies_wanted(1_000, 10), vec![(0, 0)]);
        state.attach(delayed);
        let (deliveries, _) = state.take("m", 1, 1_000);
        assert_eq!(deliveries.len(), 1);
        assert_eq!(
            state.memory().held_bytes,
            0,
            "the body left with the delivery"
        );
    }

    /// Point 2: a key whose head is leased and never settled holds back only
    /// its own key, however long its backlog.
    #[test]
    fn given_a_stuck_key_with_a_100k_backlog_when_other_keys_follow_should_deliver_them() {
        let mut state = QueueState::new(GroupSpec::new(GroupMode::Keyed), Budget::default(), &[0]);
        state.add_read(0, 0, 0, vec![stored(0, 0, "stuck")], 1);
        let (head, _) = state.take("m", 1, 0);
        assert_eq!(head.len(), 1);
        let mut offset = 1u64;
        while offset <= 100_000 {
            let events: Vec<StoredEvent> = (offset..offset + 1_000)
                .map(|offset| stored(0, offset, "stuck"))
                .collect();
            if state.reads_needed(&[100_011]).is_empty() {
                break;
            }
            state.add_read(0, 0, offset, events, offset + 1_000);
            let (deliveries, _) = state.take("m", 10, 0);
            assert!(deliveries.is_empty(), "the stuck key's backlog is blocked");
            offset += 1_000;
        }
        assert_eq!(
            state
                .reads_needed(&[100_011])
                .first()
                .map(|read| (read.0, read.1)),
            Some((0, 100_001)),
            "the read-ahead stalled behind the stuck key"
        );
        let others: Vec<StoredEvent> = (100_001..100_011)
            .map(|offset| stored(0, offset, &format!("other-{offset}")))
            .collect();
        state.add_read(0, 0, 100_001, others, 100_011);
        let (deliveries, _) = state.take("m", 100, 0);
        assert_eq!(deliveries.len(), 10, "every other key is delivered");
    }

    #[derive(Debug, Clone)]
    enum Step {
        Fetch { member: u8, max: u8 },
        Ack { pick: u16 },
        Nack { pick: u16 },
        Leave { member: u8 },
        Advance { ms: u16 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..6, 1u8..8).prop_map(|(member, max)| Step::Fetch { member, max }),
            4 => any::<u16>().prop_map(|pick| Step::Ack { pick }),
            1 => any::<u16>().prop_map(|pick| Step::Nack { pick }),
            1 => (0u8..6).prop_map(|member| Step::Leave { member }),
            1 => (0u16..2_000).prop_map(|ms| Step::Advance { ms }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Many members race on a keyed group with acks, nacks, lease
        /// expiries and members leaving: no key ever has two events in
        /// flight, and a key's events are first delivered in publish order,
        /// each only after the one before it was finished.
        #[test]
        fn given_racing_members_when_keyed_should_keep_one_in_flight_per_key_in_order(
            keys in prop::collection::vec(0u8..5, 1..60),
            steps in prop::collection::vec(step(), 1..200),
        ) {
            let mut spec = GroupSpec::new(GroupMode::Keyed);
            spec.ack_wait_ms = 500;
            spec.backoff_ms = vec![100];
            spec.max_deliveries = 1_000;
            let mut state = QueueState::new(spec, Budget::default(), &[0, 0]);
            // Two partitions; a key lives in one partition (as the partitioner does).
            let mut per_partition: [Vec<StoredEvent>; 2] = [Vec::new(), Vec::new()];
            for key in &keys {
                let partition = u32::from(key % 2);
                let offset = per_partition[partition as usize].len() as u64;
                per_partition[partition as usize].push(stored(partition, offset, &format!("k{key}")));
            }
            for (partition, events) in per_partition.iter().enumerate() {
                let next = events.len() as u64;
                state.add_read(0, partition as u32, 0, events.clone(), next);
            }
            let mut now = 0i64;
            // Delivery id → key, for leases believed outstanding.
            let mut in_hand: BTreeMap<String, String> = BTreeMap::new();
            // Per key: offsets finished, and the order of first deliveries.
            let mut finished: HashMap<String, Vec<u64>> = HashMap::new();
            let mut first_seen: HashMap<String, Vec<u64>> = HashMap::new();
            for step in steps {
                match step {
                    Step::Fetch { member, max } => {
                        let (deliveries, _) = state.take(&format!("m{member}"), usize::from(max), now);
                        for delivery in deliveries {
                            let key = delivery.event.event.key.clone().unwrap();
                            let offset = delivery.event.offset;
                            // Every earlier event of the key is finished already.
                            let earlier: Vec<u64> = per_partition[delivery.event.partition as usize]
                                .iter()
                                .filter(|event| event.event.key.as_deref() == Some(&key) && event.offset < offset)
                                .map(|event| event.offset)
                                .collect();
                            let done = finished.entry(key.clone()).or_default();
                            prop_assert!(earlier.iter().all(|offset| done.contains(offset)),
                                "key {} delivered {} before earlier events finished", key, offset);
                            let seen = first_seen.entry(key.clone()).or_default();
                            if !seen.contains(&offset) {
                                prop_assert!(seen.last().is_none_or(|last| *last < offset), "key {} out of order", key);
                                seen.push(offset);
                            }
                            in_hand.insert(delivery.delivery_id, key);
                        }
                    }
                    Step::Ack { pick } => {
                        if let Some(id) = in_hand.keys().nth(usize::from(pick) % in_hand.len().max(1)).cloned() {
                            let key = in_hand.remove(&id).unwrap();
                            if state.ack(&id, now) {
                                let ((_, offset), _) = parse_delivery_id(&id).unwrap();
                                finished.entry(key).or_default().push(offset);
                            }
                        }
                    }
                    Step::Nack { pick } => {
                        if let Some(id) = in_hand.keys().nth(usize::from(pick) % in_hand.len().max(1)).cloned() {
                            in_hand.remove(&id);
                            state.nack(&id, None, now);
                        }
                    }
                    Step::Leave { member } => {
                        state.release_member(&format!("m{member}"), now);
                    }
                    Step::Advance { ms } => {
                        now += i64::from(ms);
                        state.expire(now);
                    }
                }
                // Invariant: at most one leased event per key.
                let mut leased_keys: HashMap<String, usize> = HashMap::new();
                for (coordinates, entry) in &state.pending {
                    if matches!(entry.state, super::EntryState::Leased { .. }) {
                        let key = entry.key.as_deref().unwrap().to_owned();
                        *leased_keys.entry(key.clone()).or_default() += 1;
                        prop_assert!(leased_keys[&key] == 1, "key {} has two events in flight ({:?})", key, coordinates);
                    }
                }
                prop_assert_eq!(state.in_flight(), state.pending.values().filter(|entry| matches!(entry.state, super::EntryState::Leased { .. })).count());
            }
        }
    }
}
