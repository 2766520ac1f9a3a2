//! Consumer groups, for every backend: a group at run time is its state
//! machine (`queue.rs` for queue and keyed mode, `stream.rs` for stream
//! mode) behind a mutex, plus the I/O around it — reading ahead from the
//! topic's partitions through a [`Source`] (the backend's), long-polling,
//! and handing effects (dead letters) back to the backend, which persists
//! the group's [`Snapshot`] and outbox where it keeps state.
//!
//! Locking: the state machine's mutex is never held across `.await`; reads
//! from the log happen outside it and are applied afterwards (guarded by the
//! machine's epoch and the cursor's position, so a stale read is dropped).
//! One fetch at a time refills the read-ahead (`fetch_lock`), so two fetchers
//! never read the same stretch twice.
//!
//! Dead letters the machine produces, and dead letters a redrive takes off
//! the list, wait in the group's outbox under the same mutex as the
//! machine: [`GroupRuntime::take_dirty`] takes the snapshot and empties the
//! outbox in one step, and the backend writes both in one transaction, so
//! the persisted state never has an event finished without its dead letter
//! (or redriven while still listed).

pub mod flusher;
pub mod queue;
pub mod ranges;
pub mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use herald_backend::{
    AckOutcome, Error, FetchRequest, FetchResponse, GroupCounters, GroupInfo, GroupMode,
    GroupPartitionStatus, GroupSpec, MemberStatus, ReadResult, Result,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use flusher::Flusher;
use herald_types::{EventInput, ExtensionValue, GroupName, StoredEvent};
pub use queue::{Budget, DeadLetterEffect, Memory};
use queue::{QueueSnapshot, QueueState};
use stream::{StreamSnapshot, StreamState};

/// Bytes of batches read from a partition per stream-mode refill (all their
/// events are kept: a batch is decoded once). Queue and keyed groups read
/// within their budget (`queue::READ_AHEAD_BYTES` at most).
const READ_AHEAD_BYTES: usize = queue::READ_AHEAD_BYTES;

/// Bytes read per read-back of the bodies of due redeliveries: one batch or
/// a few, around the offset wanted.
const LOAD_BYTES: usize = 64 * 1024;

/// A group's persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Snapshot {
    Queue(QueueSnapshot),
    Stream(StreamSnapshot),
}

#[derive(Debug)]
enum Machine {
    Queue(Box<QueueState>),
    Stream(StreamState),
}

/// Writes that must commit together with the next snapshot.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Dead letters to record (the snapshot has their events finished).
    pub buried: Vec<DeadLetterEffect>,
    /// Dead-letter ids to take off the list (the snapshot has their events
    /// redriven).
    pub unlisted: Vec<u64>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.buried.is_empty() && self.unlisted.is_empty()
    }
}

/// The machine and its outbox, under one mutex.
#[derive(Debug)]
struct Locked {
    machine: Machine,
    outbox: Outbox,
}

/// A group's state to persist, with the outbox that goes with it.
#[derive(Debug)]
pub struct DirtyState {
    pub snapshot: Snapshot,
    pub outbox: Outbox,
}

/// A group of one topic.
#[derive(Debug)]
pub struct GroupRuntime {
    /// `topic/group`, its key in the metadata store.
    pub key: String,
    info: Mutex<GroupInfo>,
    machine: Mutex<Locked>,
    /// Wakes long-polling fetchers when something may have become deliverable.
    changed: Notify,
    fetch_lock: tokio::sync::Mutex<()>,
    /// State changed since the last persist.
    dirty: AtomicBool,
    /// One redrive at a time (it reads the list, then changes the state).
    pub redriving: tokio::sync::Mutex<()>,
    /// What this process did for the group (metrics).
    counters: Mutex<GroupCounters>,
}

/// Which settle [`GroupRuntime::settle`] applies, for the group's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    /// Done with: never delivered again.
    Ack,
    /// Delivered again after a delay.
    Nack,
    /// The lease kept longer.
    Extend,
    /// A dead letter at once.
    Reject,
}

/// Where a group reads its topic's events: the backend's partitions.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// One past the last event, per partition.
    fn end_offsets(&self) -> Vec<u64>;

    /// Up to `max` events of `partition` from `from` (offsets of erased
    /// events skipped); [`herald_backend::Error::OffsetOutOfRange`] below
    /// the partition's start.
    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<ReadResult>;

    /// About `max_bytes` of events of `partition` from `from`, however many
    /// that is (read-ahead).
    async fn read_chunk(&self, partition: u32, from: u64, max_bytes: usize) -> Result<ReadResult>;

    /// Returns once any `(partition, offset)` of `waits` has an event at
    /// `offset` or later (at once if one has); never if `waits` is empty.
    async fn wait_any(&self, waits: &[(u32, u64)]);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GroupRuntime {
    /// A group starting at `starts`, or restored from `snapshot`.
    pub fn new(
        key: String,
        info: GroupInfo,
        budget: Budget,
        starts: &[u64],
        snapshot: Option<Snapshot>,
    ) -> Self {
        let spec = info.spec.clone();
        let machine = match (spec.mode, snapshot) {
            (GroupMode::Stream, Some(Snapshot::Stream(saved))) => {
                Machine::Stream(StreamState::restore(spec, &saved))
            }
            (GroupMode::Stream, _) => Machine::Stream(StreamState::restore(
                spec,
                &StreamSnapshot {
                    generation: 0,
                    committed: starts.to_vec(),
                },
            )),
            (_, Some(Snapshot::Queue(saved))) => {
                Machine::Queue(Box::new(QueueState::restore(spec, budget, saved)))
            }
            (_, _) => Machine::Queue(Box::new(QueueState::new(spec, budget, starts))),
        };
        Self {
            key,
            info: Mutex::new(info),
            machine: Mutex::new(Locked {
                machine,
                outbox: Outbox::default(),
            }),
            changed: Notify::new(),
            fetch_lock: tokio::sync::Mutex::new(()),
            dirty: AtomicBool::new(true),
            counters: Mutex::new(GroupCounters::default()),
            redriving: tokio::sync::Mutex::new(()),
        }
    }

    pub fn info(&self) -> GroupInfo {
        lock(&self.info).clone()
    }

    /// The group's `ack_durability` setting.
    pub fn ack_durability(&self) -> herald_backend::AckDurability {
        lock(&self.info).spec.ack_durability
    }

    /// Replaces the settings (same mode).
    pub fn set_spec(&self, spec: GroupSpec) {
        lock(&self.info).spec = spec.clone();
        match &mut lock(&self.machine).machine {
            Machine::Queue(state) => state.set_spec(spec),
            Machine::Stream(state) => state.set_spec(spec),
        }
        self.changed.notify_waiters();
    }

    /// The state to persist and its outbox, if it changed since the last
    /// call: taken in one step, so they are consistent.
    pub fn take_dirty(&self) -> Option<DirtyState> {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return None;
        }
        let mut locked = lock(&self.machine);
        let snapshot = Self::snapshot_of(&locked.machine);
        Some(DirtyState {
            snapshot,
            outbox: std::mem::take(&mut locked.outbox),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        Self::snapshot_of(&lock(&self.machine).machine)
    }

    fn snapshot_of(machine: &Machine) -> Snapshot {
        match machine {
            Machine::Queue(state) => Snapshot::Queue(state.snapshot()),
            Machine::Stream(state) => Snapshot::Stream(state.snapshot()),
        }
    }

    /// After a failed persist: the outbox goes back (ahead of anything added
    /// since) and the state is dirty again, so the next persist retries it.
    pub fn restore_outbox(&self, outbox: Outbox) {
        if !outbox.is_empty() {
            let mut locked = lock(&self.machine);
            let mut buried = outbox.buried;
            buried.append(&mut locked.outbox.buried);
            locked.outbox.buried = buried;
            let mut unlisted = outbox.unlisted;
            unlisted.append(&mut locked.outbox.unlisted);
            locked.outbox.unlisted = unlisted;
        }
        self.mark_dirty();
    }

    /// Puts the dirty flag back after a failed persist.
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// After a power loss: cuts the state back to the partitions' `ends`
    /// (see [`QueueState::clamp`]); returns `(partition, from, to)` of each
    /// partition whose position moved.
    pub fn clamp(&self, ends: &[u64], now: i64) -> Vec<(u32, u64, u64)> {
        let clamped = match &mut lock(&self.machine).machine {
            Machine::Queue(state) => state.clamp(ends, now),
            Machine::Stream(state) => state.clamp(ends),
        };
        if !clamped.is_empty() {
            self.mark_dirty();
        }
        clamped
    }

    /// Queue and keyed groups: what the state machine holds in memory.
    pub fn memory(&self) -> Option<queue::Memory> {
        match &lock(&self.machine).machine {
            Machine::Queue(state) => Some(state.memory()),
            Machine::Stream(_) => None,
        }
    }

    /// Hard delete: `offsets` (sorted) of `partition` must not be delivered
    /// any more, including those already read ahead or leased.
    pub fn erase(&self, partition: u32, offsets: &[u64], now: i64) {
        match &mut lock(&self.machine).machine {
            Machine::Queue(state) => state.erase(partition, offsets, now),
            Machine::Stream(state) => state.erase(partition, offsets),
        }
        self.mark_dirty();
        self.changed.notify_waiters();
    }

    /// Hands out deliveries per the mode, long-polling up to `wait_ms`.
    /// Dead letters of leases found expired go to the outbox; returns the
    /// response and whether there were any (the caller persists them).
    pub async fn fetch(
        &self,
        topic: &dyn Source,
        request: &FetchRequest,
        now: impl Fn() -> i64,
    ) -> Result<(FetchResponse, bool)> {
        let deadline = Instant::now() + Duration::from_millis(request.wait_ms);
        let mut buried = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (response, waits, timer, session) = {
                let _refilling = self.fetch_lock.lock().await;
                if let Machine::Stream(state) = &mut lock(&self.machine).machine {
                    state.heartbeat(&request.member, now());
                }
                self.refill(topic, &request.member, now()).await?;
                self.load_bodies(topic, request.max as usize, now()).await?;
                let mut locked = lock(&self.machine);
                let Locked { machine, outbox } = &mut *locked;
                let now = now();
                match machine {
                    Machine::Queue(state) => {
                        let (deliveries, expired) =
                            state.take(&request.member, request.max as usize, now);
                        buried |= !expired.is_empty();
                        outbox.buried.extend(expired);
                        // Every partition, at its frontier: one whose log
                        // grew since the refill above wakes the wait at once
                        // (filtering those out lost that wake-up, and the
                        // fetch slept until its deadline).
                        let waits: Vec<(u32, u64)> = if state.wants_events() {
                            state
                                .frontiers()
                                .into_iter()
                                .enumerate()
                                .map(|(partition, frontier)| (partition as u32, frontier))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        let response = FetchResponse {
                            deliveries,
                            assignment: None,
                            generation: None,
                        };
                        (response, waits, state.next_timer(), None)
                    }
                    Machine::Stream(state) => {
                        state.heartbeat(&request.member, now);
                        let deliveries = state.take(&request.member, request.max as usize);
                        let response = FetchResponse {
                            deliveries,
                            assignment: Some(state.assignment(&request.member)),
                            generation: Some(state.generation()),
                        };
                        let waits = state.frontiers(&request.member);
                        let session = lock(&self.info).spec.session_timeout_ms;
                        (response, waits, None, Some(session))
                    }
                }
            };
            if !response.deliveries.is_empty() || buried {
                self.dirty.store(true, Ordering::SeqCst);
            }
            if !response.deliveries.is_empty() {
                let mut counters = lock(&self.counters);
                counters.delivered += response.deliveries.len() as u64;
                counters.redelivered += response
                    .deliveries
                    .iter()
                    .filter(|delivery| delivery.attempt > 1)
                    .count() as u64;
            }
            if !response.deliveries.is_empty() || Instant::now() >= deadline {
                return Ok((response, buried));
            }
            // Nothing yet: wait for new events, a settle, a timer or the deadline.
            let mut wake_at = deadline;
            if let Some(timer) = timer {
                let in_ms = u64::try_from(timer.saturating_sub(now())).unwrap_or(0);
                wake_at = wake_at.min(Instant::now() + Duration::from_millis(in_ms));
            }
            if let Some(session) = session {
                // Keep heartbeating while long-polling.
                wake_at = wake_at.min(
                    Instant::now()
                        + Duration::from_millis(session / 3).max(Duration::from_millis(10)),
                );
            }
            let new_events = topic.wait_any(&waits);
            tokio::select! {
                () = notified => {}
                () = new_events => {}
                () = tokio::time::sleep_until(wake_at.into()) => {}
            }
        }
    }

    /// Reads back the bodies of due redeliveries (their entries dropped
    /// them: see `queue.rs`), at most as many as could be leased now.
    async fn load_bodies(&self, topic: &dyn Source, max: usize, now: i64) -> Result<()> {
        let wanted = match &mut lock(&self.machine).machine {
            Machine::Queue(state) => {
                let max_in_flight = lock(&self.info).spec.max_in_flight as usize;
                let room = max_in_flight.saturating_sub(state.in_flight());
                state.bodies_wanted(now, max.min(room))
            }
            Machine::Stream(_) => return Ok(()),
        };
        let mut by_partition: std::collections::BTreeMap<u32, Vec<u64>> =
            std::collections::BTreeMap::new();
        for (partition, offset) in wanted {
            by_partition.entry(partition).or_default().push(offset);
        }
        for (partition, mut offsets) in by_partition {
            offsets.sort_unstable();
            let mut index = 0;
            while let Some(&from) = offsets.get(index) {
                let (events, next) = match topic.read_chunk(partition, from, LOAD_BYTES).await {
                    Ok(read) => (read.events, read.next_offset.max(from + 1)),
                    // Retention removed what lies below `start`.
                    Err(Error::OffsetOutOfRange { start, .. }) => (Vec::new(), start.max(from + 1)),
                    Err(error) => return Err(error),
                };
                let covered = offsets[index..].partition_point(|offset| *offset < next);
                let mut locked = lock(&self.machine);
                let Machine::Queue(state) = &mut locked.machine else {
                    return Ok(());
                };
                let mut found = std::collections::HashSet::new();
                for event in events {
                    if offsets[index..index + covered]
                        .binary_search(&event.offset)
                        .is_ok()
                    {
                        found.insert(event.offset);
                        state.attach(event);
                    }
                }
                // Wanted, in the range read, and not there: gone from the log.
                for &offset in &offsets[index..index + covered] {
                    if !found.contains(&offset) {
                        state.lost((partition, offset), now);
                    }
                }
                index += covered;
            }
        }
        Ok(())
    }

    /// Refills the read-ahead of the partitions that need it, and reads back
    /// redriven events restored from a snapshot.
    async fn refill(&self, topic: &dyn Source, member: &str, now: i64) -> Result<()> {
        let reloads = match &mut lock(&self.machine).machine {
            Machine::Queue(state) => state.take_reloads(),
            Machine::Stream(_) => Vec::new(),
        };
        for (index, &(partition, offset)) in reloads.iter().enumerate() {
            match topic.read(partition, offset, 1).await {
                Ok(read) => {
                    if let Some(event) =
                        read.events.into_iter().find(|event| event.offset == offset)
                        && let Machine::Queue(state) = &mut lock(&self.machine).machine
                    {
                        state.redrive(event, now);
                    }
                }
                // Retention removed it: nothing left to deliver.
                Err(Error::OffsetOutOfRange { .. }) => {}
                Err(error) => {
                    // Keep the rest for the next fetch.
                    if let Machine::Queue(state) = &mut lock(&self.machine).machine {
                        state.keep_reloads(&reloads[index..]);
                    }
                    return Err(error);
                }
            }
        }
        let ends = topic.end_offsets();
        let (epoch, needed) = match &lock(&self.machine).machine {
            Machine::Queue(state) => (state.epoch(), state.reads_needed(&ends)),
            Machine::Stream(state) => (
                state.epoch(),
                state
                    .reads_needed(member, &ends)
                    .into_iter()
                    .map(|(partition, from)| (partition, from, READ_AHEAD_BYTES))
                    .collect(),
            ),
        };
        for (partition, from, max_bytes) in needed {
            match topic.read_chunk(partition, from, max_bytes).await {
                Ok(read) => match &mut lock(&self.machine).machine {
                    Machine::Queue(state) => {
                        state.add_read(epoch, partition, from, read.events, read.next_offset);
                    }
                    Machine::Stream(state) => {
                        state.add_read(epoch, partition, from, read.events, read.next_offset);
                    }
                },
                Err(Error::OffsetOutOfRange { start, .. }) => {
                    match &mut lock(&self.machine).machine {
                        Machine::Queue(state) => state.skip_to(partition, start),
                        Machine::Stream(state) => state.skip_to(partition, start),
                    }
                    self.dirty.store(true, Ordering::SeqCst);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Applies `apply` to each delivery id of a queue or keyed group; dead
    /// letters it produces go to the outbox. Returns the outcome and whether
    /// there were any. Stream groups have nothing to settle per delivery:
    /// every id is unknown.
    pub fn settle(
        &self,
        ids: &[String],
        kind: Settle,
        mut apply: impl FnMut(&mut QueueState, &str) -> (bool, Option<DeadLetterEffect>),
    ) -> (AckOutcome, bool) {
        let mut outcome = AckOutcome::default();
        let mut buried = false;
        {
            let mut locked = lock(&self.machine);
            let Locked { machine, outbox } = &mut *locked;
            for id in ids {
                let applied = match machine {
                    Machine::Queue(state) => {
                        let (applied, effect) = apply(state, id);
                        if let Some(effect) = effect {
                            outbox.buried.push(effect);
                            buried = true;
                        }
                        applied
                    }
                    Machine::Stream(_) => false,
                };
                if applied {
                    outcome.acked += 1;
                } else {
                    outcome.unknown.push(id.clone());
                }
            }
        }
        if outcome.acked > 0 {
            self.dirty.store(true, Ordering::SeqCst);
            self.changed.notify_waiters();
            let mut counters = lock(&self.counters);
            let counter = match kind {
                Settle::Ack => Some(&mut counters.acked),
                Settle::Nack => Some(&mut counters.nacked),
                Settle::Reject => Some(&mut counters.rejected),
                Settle::Extend => None,
            };
            if let Some(counter) = counter {
                *counter += outcome.acked;
            }
        }
        (outcome, buried)
    }

    /// Stream mode: commits offsets (see [`StreamState::commit`]).
    pub fn commit(
        &self,
        member: &str,
        generation: u64,
        offsets: &[(u32, u64)],
        ends: &[u64],
    ) -> Result<()> {
        match &mut lock(&self.machine).machine {
            Machine::Stream(state) => state.commit(member, generation, offsets, ends)?,
            Machine::Queue(_) => {
                return Err(Error::invalid(
                    "mode",
                    "commit is for stream groups; queue and keyed groups ack",
                ));
            }
        }
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Moves the group to `starts`.
    pub fn reset(&self, starts: &[u64]) {
        match &mut lock(&self.machine).machine {
            Machine::Queue(state) => state.reset(starts),
            Machine::Stream(state) => state.reset(starts),
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// The member leaves: leases released, partitions reassigned.
    pub fn leave(&self, member: &str, now: i64) {
        match &mut lock(&self.machine).machine {
            Machine::Queue(state) => {
                state.release_member(member, now);
            }
            Machine::Stream(state) => {
                state.leave(member);
            }
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Redelivers dead letters (their events, read again from the log) and
    /// queues their ids to leave the list with the next persist, in one
    /// step. Returns how many events became deliverable again.
    pub fn redrive(&self, events: Vec<herald_types::StoredEvent>, ids: Vec<u64>, now: i64) -> u64 {
        let mut redriven = 0;
        {
            let mut locked = lock(&self.machine);
            let Locked { machine, outbox } = &mut *locked;
            if let Machine::Queue(state) = machine {
                for event in events {
                    if state.redrive(event, now) {
                        redriven += 1;
                    }
                }
            }
            outbox.unlisted.extend(ids);
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        redriven
    }

    /// Timer work: expire leases (their dead letters go to the outbox) and
    /// silent members. Returns whether any event was dead-lettered.
    pub fn tick(&self, now: i64) -> bool {
        let (buried, due) = {
            let mut locked = lock(&self.machine);
            let Locked { machine, outbox } = &mut *locked;
            match machine {
                Machine::Queue(state) => {
                    let effects = state.expire(now);
                    let due = state.next_timer().is_some_and(|timer| timer <= now);
                    let buried = !effects.is_empty();
                    outbox.buried.extend(effects);
                    (buried, due)
                }
                Machine::Stream(state) => {
                    state.tick(now);
                    (false, false)
                }
            }
        };
        if buried || due {
            self.dirty.store(true, Ordering::SeqCst);
            self.changed.notify_waiters();
        }
        buried
    }

    /// What this process did for the group since it started.
    pub fn counters(&self) -> GroupCounters {
        *lock(&self.counters)
    }

    /// Positions, lag, members and counts for the status call.
    pub fn status(
        &self,
        ends: &[u64],
        now: i64,
    ) -> (Vec<MemberStatus>, Vec<GroupPartitionStatus>, u64, u64, u64) {
        let mut locked = lock(&self.machine);
        let (committed, owners, members, in_flight, pending, generation) = match &mut locked.machine
        {
            Machine::Queue(state) => {
                let floors = state.floors();
                let owners = vec![None; floors.len()];
                let members = state
                    .members(now)
                    .into_iter()
                    .map(|(member, idle_ms)| MemberStatus {
                        member,
                        partitions: Vec::new(),
                        idle_ms,
                    })
                    .collect();
                (
                    floors,
                    owners,
                    members,
                    state.in_flight() as u64,
                    state.waiting() as u64,
                    0,
                )
            }
            Machine::Stream(state) => (
                state.committed(),
                state.owners(),
                state.members(now),
                0,
                0,
                state.generation(),
            ),
        };
        let partitions = committed
            .iter()
            .zip(owners)
            .enumerate()
            .map(|(partition, (&committed, assigned_to))| {
                let end_offset = ends.get(partition).copied().unwrap_or(committed);
                GroupPartitionStatus {
                    partition: partition as u32,
                    committed,
                    end_offset,
                    lag: end_offset.saturating_sub(committed),
                    assigned_to,
                }
            })
            .collect();
        (members, partitions, in_flight, pending, generation)
    }
}

/// The event published to a dead-letter topic: the original, with extensions
/// saying where it came from and why, and an id derived from the dead
/// letter (`<topic>.<partition>.<offset>.<group>.<dead-letter id>`): the same
/// for every attempt to publish it, so the dead-letter topic's dedup window
/// drops a copy published again after a crash.
pub fn dead_letter_copy(
    original: &StoredEvent,
    group: &GroupName,
    reason: &str,
    attempts: u32,
    id: u64,
) -> EventInput {
    let mut event: herald_types::Event = original.event.clone();
    event.id = format!(
        "{}.{}.{}.{}.{}",
        original.topic, original.partition, original.offset, group, id
    );
    event.deliver_at = None;
    let extensions = [
        (
            "dltopic",
            ExtensionValue::String(original.topic.to_string()),
        ),
        ("dlgroup", ExtensionValue::String(group.to_string())),
        (
            "dlpartition",
            ExtensionValue::Integer(i64::from(original.partition)),
        ),
        (
            "dloffset",
            ExtensionValue::Integer(i64::try_from(original.offset).unwrap_or(i64::MAX)),
        ),
        ("dlreason", ExtensionValue::String(reason.to_owned())),
        ("dlattempts", ExtensionValue::Integer(i64::from(attempts))),
        ("dlid", ExtensionValue::String(original.event.id.clone())),
    ];
    for (name, value) in extensions {
        event.extensions.insert(name.to_owned(), value);
    }
    EventInput {
        event,
        partition: None,
    }
}

/// The event at `position` of `source`, or `None` if retention removed it.
pub async fn read_one(
    source: &dyn Source,
    position: herald_backend::PartitionOffset,
) -> Result<Option<StoredEvent>> {
    match source.read(position.partition, position.offset, 1).await {
        Ok(read) => Ok(read
            .events
            .into_iter()
            .next()
            .filter(|event| event.offset == position.offset)),
        Err(Error::OffsetOutOfRange { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}
