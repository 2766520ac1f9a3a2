//! A consumer group at run time: its state machine ([`queue`] or
//! [`stream`]) behind a mutex, plus the I/O around it — reading ahead from
//! the topic's partitions, long-polling, and handing effects (dead letters)
//! back to the backend.
//!
//! Locking: the state machine's mutex is never held across `.await`; reads
//! from the log happen outside it and are applied afterwards (guarded by the
//! machine's epoch and the cursor's position, so a stale read is dropped).
//! One fetch at a time refills the read-ahead (`fetch_lock`), so two fetchers
//! never read the same stretch twice.

pub(crate) mod queue;
pub(crate) mod ranges;
pub(crate) mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use herald_backend::{
    AckOutcome, Error, FetchRequest, FetchResponse, GroupInfo, GroupMode, GroupPartitionStatus,
    GroupSpec, MemberStatus, Result,
};
use herald_types::GroupName;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::topic::TopicRuntime;
use queue::{DeadLetterEffect, QueueSnapshot, QueueState};
use stream::{StreamSnapshot, StreamState};

/// Bytes of batches read from a partition per refill (all their events are
/// kept: a batch is decoded once).
const READ_AHEAD_BYTES: usize = 256 * 1024;

/// A group's persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Snapshot {
    Queue(QueueSnapshot),
    Stream(StreamSnapshot),
}

#[derive(Debug)]
enum Machine {
    Queue(Box<QueueState>),
    Stream(StreamState),
}

/// A group of one topic.
#[derive(Debug)]
pub(crate) struct GroupRuntime {
    /// `topic/group`, its key in the metadata store.
    pub(crate) key: String,
    pub(crate) name: GroupName,
    info: Mutex<GroupInfo>,
    machine: Mutex<Machine>,
    /// Wakes long-polling fetchers when something may have become deliverable.
    changed: Notify,
    fetch_lock: tokio::sync::Mutex<()>,
    /// State changed since the last persist.
    dirty: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GroupRuntime {
    /// A group starting at `starts`, or restored from `snapshot`.
    pub(crate) fn new(
        key: String,
        info: GroupInfo,
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
                Machine::Queue(Box::new(QueueState::restore(spec, saved)))
            }
            (_, _) => Machine::Queue(Box::new(QueueState::new(spec, starts))),
        };
        Self {
            key,
            name: info.name.clone(),
            info: Mutex::new(info),
            machine: Mutex::new(machine),
            changed: Notify::new(),
            fetch_lock: tokio::sync::Mutex::new(()),
            dirty: AtomicBool::new(true),
        }
    }

    pub(crate) fn info(&self) -> GroupInfo {
        lock(&self.info).clone()
    }

    /// Replaces the settings (same mode).
    pub(crate) fn set_spec(&self, spec: GroupSpec) {
        lock(&self.info).spec = spec.clone();
        match &mut *lock(&self.machine) {
            Machine::Queue(state) => state.set_spec(spec),
            Machine::Stream(state) => state.set_spec(spec),
        }
        self.changed.notify_waiters();
    }

    /// The state to persist, if it changed since the last call.
    pub(crate) fn take_dirty_snapshot(&self) -> Option<Snapshot> {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return None;
        }
        Some(self.snapshot())
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        match &*lock(&self.machine) {
            Machine::Queue(state) => Snapshot::Queue(state.snapshot()),
            Machine::Stream(state) => Snapshot::Stream(state.snapshot()),
        }
    }

    /// Puts the dirty flag back after a failed persist.
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Hard delete: `offsets` (sorted) of `partition` must not be delivered
    /// any more, including those already read ahead or leased.
    pub(crate) fn erase(&self, partition: u32, offsets: &[u64], now: i64) {
        match &mut *lock(&self.machine) {
            Machine::Queue(state) => state.erase(partition, offsets, now),
            Machine::Stream(state) => state.erase(partition, offsets),
        }
        self.mark_dirty();
        self.changed.notify_waiters();
    }

    /// Hands out deliveries per the mode, long-polling up to `wait_ms`.
    /// Returns the response and dead letters to record.
    pub(crate) async fn fetch(
        &self,
        topic: &TopicRuntime,
        request: &FetchRequest,
        now: impl Fn() -> i64,
    ) -> Result<(FetchResponse, Vec<DeadLetterEffect>)> {
        let deadline = Instant::now() + Duration::from_millis(request.wait_ms);
        let mut effects = Vec::new();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (response, waits, timer, session) = {
                let _refilling = self.fetch_lock.lock().await;
                if let Machine::Stream(state) = &mut *lock(&self.machine) {
                    state.heartbeat(&request.member, now());
                }
                self.refill(topic, &request.member, now()).await?;
                let mut machine = lock(&self.machine);
                let now = now();
                match &mut *machine {
                    Machine::Queue(state) => {
                        let (deliveries, expired) =
                            state.take(&request.member, request.max as usize, now);
                        effects.extend(expired);
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
            if !response.deliveries.is_empty() || !effects.is_empty() {
                self.dirty.store(true, Ordering::SeqCst);
            }
            if !response.deliveries.is_empty() || Instant::now() >= deadline {
                return Ok((response, effects));
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

    /// Refills the read-ahead of the partitions that need it, and reads back
    /// redriven events restored from a snapshot.
    async fn refill(&self, topic: &TopicRuntime, member: &str, now: i64) -> Result<()> {
        let reloads = match &mut *lock(&self.machine) {
            Machine::Queue(state) => state.take_reloads(),
            Machine::Stream(_) => Vec::new(),
        };
        for (index, &(partition, offset)) in reloads.iter().enumerate() {
            match topic.read(partition, offset, 1).await {
                Ok(read) => {
                    if let Some(event) =
                        read.events.into_iter().find(|event| event.offset == offset)
                        && let Machine::Queue(state) = &mut *lock(&self.machine)
                    {
                        state.redrive(event, now);
                    }
                }
                // Retention removed it: nothing left to deliver.
                Err(Error::OffsetOutOfRange { .. }) => {}
                Err(error) => {
                    // Keep the rest for the next fetch.
                    if let Machine::Queue(state) = &mut *lock(&self.machine) {
                        state.keep_reloads(&reloads[index..]);
                    }
                    return Err(error);
                }
            }
        }
        let ends = topic.end_offsets();
        let (epoch, needed) = match &*lock(&self.machine) {
            Machine::Queue(state) => (state.epoch(), state.reads_needed(&ends)),
            Machine::Stream(state) => (state.epoch(), state.reads_needed(member, &ends)),
        };
        for (partition, from) in needed {
            match topic.read_chunk(partition, from, READ_AHEAD_BYTES).await {
                Ok(read) => match &mut *lock(&self.machine) {
                    Machine::Queue(state) => {
                        state.add_read(epoch, partition, from, read.events, read.next_offset);
                    }
                    Machine::Stream(state) => {
                        state.add_read(epoch, partition, from, read.events, read.next_offset);
                    }
                },
                Err(Error::OffsetOutOfRange { start, .. }) => {
                    match &mut *lock(&self.machine) {
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

    /// Applies `apply` to each delivery id of a queue or keyed group.
    /// Stream groups have nothing to settle per delivery: every id is unknown.
    pub(crate) fn settle(
        &self,
        ids: &[String],
        mut apply: impl FnMut(&mut QueueState, &str) -> (bool, Option<DeadLetterEffect>),
    ) -> (AckOutcome, Vec<DeadLetterEffect>) {
        let mut outcome = AckOutcome::default();
        let mut effects = Vec::new();
        {
            let mut machine = lock(&self.machine);
            for id in ids {
                let applied = match &mut *machine {
                    Machine::Queue(state) => {
                        let (applied, effect) = apply(state, id);
                        effects.extend(effect);
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
        }
        (outcome, effects)
    }

    /// Stream mode: commits offsets (see [`StreamState::commit`]).
    pub(crate) fn commit(
        &self,
        member: &str,
        generation: u64,
        offsets: &[(u32, u64)],
        ends: &[u64],
    ) -> Result<()> {
        match &mut *lock(&self.machine) {
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
    pub(crate) fn reset(&self, starts: &[u64]) {
        match &mut *lock(&self.machine) {
            Machine::Queue(state) => state.reset(starts),
            Machine::Stream(state) => state.reset(starts),
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// The member leaves: leases released, partitions reassigned.
    pub(crate) fn leave(&self, member: &str, now: i64) {
        match &mut *lock(&self.machine) {
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

    /// Redelivers dead letters (their events, read again from the log).
    pub(crate) fn redrive(&self, events: Vec<herald_types::StoredEvent>, now: i64) {
        if let Machine::Queue(state) = &mut *lock(&self.machine) {
            for event in events {
                state.redrive(event, now);
            }
        }
        self.dirty.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Timer work: expire leases (returning dead letters) and silent members.
    pub(crate) fn tick(&self, now: i64) -> Vec<DeadLetterEffect> {
        let (effects, due) = match &mut *lock(&self.machine) {
            Machine::Queue(state) => {
                let effects = state.expire(now);
                let due = state.next_timer().is_some_and(|timer| timer <= now);
                (effects, due)
            }
            Machine::Stream(state) => {
                state.tick(now);
                (Vec::new(), false)
            }
        };
        if !effects.is_empty() || due {
            self.dirty.store(true, Ordering::SeqCst);
            self.changed.notify_waiters();
        }
        effects
    }

    /// Positions, lag, members and counts for the status call.
    pub(crate) fn status(
        &self,
        ends: &[u64],
        now: i64,
    ) -> (Vec<MemberStatus>, Vec<GroupPartitionStatus>, u64, u64, u64) {
        let mut machine = lock(&self.machine);
        let (committed, owners, members, in_flight, pending, generation) = match &mut *machine {
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
