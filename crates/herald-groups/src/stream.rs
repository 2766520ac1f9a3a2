//! The stream group state machine. Pure: no I/O, time passed in.
//!
//! Each partition is owned by at most one live member and read in order.
//! Membership is soft state: a member is live while it fetches at least once
//! per `session_timeout_ms`. Any change of membership (join, leave, expiry)
//! rebalances — partitions are dealt out in ranges over the members sorted by
//! id — and bumps the **generation**. Commits carry the generation the
//! member got its assignment with; a stale one is refused, so a member that
//! lost a partition cannot move its committed offset. A partition's read
//! position restarts from its committed offset whenever its owner changes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use herald_backend::{Delivery, Error, GroupSpec, MemberStatus, Result};
use herald_types::StoredEvent;
use serde::{Deserialize, Serialize};

use super::queue::LOW_WATER;

/// What survives a restart: committed offsets and the generation (so a
/// member of a generation before the restart is still fenced).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSnapshot {
    pub generation: u64,
    pub committed: Vec<u64>,
}

#[derive(Debug)]
struct Partition {
    committed: u64,
    owner: Option<String>,
    /// The next offset to hand out.
    position: u64,
    /// The next offset to read from the log.
    frontier: u64,
    buffer: VecDeque<Arc<StoredEvent>>,
}

/// The state of a stream group.
#[derive(Debug)]
pub struct StreamState {
    spec: GroupSpec,
    generation: u64,
    /// member → last heard from (ms).
    members: BTreeMap<String, i64>,
    partitions: Vec<Partition>,
    next_partition: usize,
    epoch: u64,
}

impl StreamState {
    /// A group as persisted (or fresh, with `committed` = the start offsets).
    pub fn restore(spec: GroupSpec, snapshot: &StreamSnapshot) -> Self {
        let partitions = snapshot
            .committed
            .iter()
            .map(|&committed| Partition {
                committed,
                owner: None,
                position: committed,
                frontier: committed,
                buffer: VecDeque::new(),
            })
            .collect();
        Self {
            spec,
            // A restart is a membership change: everyone rejoins.
            generation: snapshot.generation + 1,
            members: BTreeMap::new(),
            partitions,
            next_partition: 0,
            epoch: 0,
        }
    }

    /// What must survive a restart.
    pub fn snapshot(&self) -> StreamSnapshot {
        StreamSnapshot {
            generation: self.generation,
            committed: self
                .partitions
                .iter()
                .map(|partition| partition.committed)
                .collect(),
        }
    }

    pub fn set_spec(&mut self, spec: GroupSpec) {
        self.spec = spec;
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records that `member` was heard from; joins it if new. Expires silent
    /// members. Rebalances on any change.
    pub fn heartbeat(&mut self, member: &str, now: i64) {
        let joined = self.members.insert(member.to_owned(), now).is_none();
        let expired = self.expire(now);
        if joined || expired {
            self.rebalance();
        }
    }

    /// Drops members not heard from within the session timeout; returns
    /// whether any was dropped (the caller rebalances).
    fn expire(&mut self, now: i64) -> bool {
        let timeout = i64::try_from(self.spec.session_timeout_ms).unwrap_or(i64::MAX);
        let before = self.members.len();
        self.members
            .retain(|_, last_seen| now.saturating_sub(*last_seen) <= timeout);
        self.members.len() != before
    }

    /// Expires silent members and rebalances if any left (for the timer).
    pub fn tick(&mut self, now: i64) {
        if self.expire(now) {
            self.rebalance();
        }
    }

    /// `member` leaves; its partitions go to the others.
    pub fn leave(&mut self, member: &str) -> bool {
        let left = self.members.remove(member).is_some();
        if left {
            self.rebalance();
        }
        left
    }

    /// Deals partitions out in contiguous ranges over the members in id
    /// order, and bumps the generation. A partition whose owner changes
    /// restarts from its committed offset.
    fn rebalance(&mut self) {
        self.generation += 1;
        let members: Vec<&String> = self.members.keys().collect();
        let count = self.partitions.len();
        for (index, partition) in self.partitions.iter_mut().enumerate() {
            let owner = (!members.is_empty())
                .then(|| members[index * members.len() / count.max(1)].clone());
            if owner != partition.owner {
                partition.owner = owner;
                partition.position = partition.committed;
                partition.frontier = partition.committed;
                partition.buffer.clear();
            }
        }
        self.epoch += 1;
    }

    /// The partitions `member` owns.
    pub fn assignment(&self, member: &str) -> Vec<u32> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(_, partition)| partition.owner.as_deref() == Some(member))
            .map(|(index, _)| index as u32)
            .collect()
    }

    /// `member`'s partitions that need their read-ahead refilled.
    pub fn reads_needed(&self, member: &str, ends: &[u64]) -> Vec<(u32, u64)> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(index, partition)| {
                partition.owner.as_deref() == Some(member)
                    && partition.buffer.len() < LOW_WATER
                    && ends
                        .get(*index)
                        .is_some_and(|end| partition.frontier < *end)
            })
            .map(|(index, partition)| (index as u32, partition.frontier))
            .collect()
    }

    /// Adds events read from `partition` at `from`, if nothing moved meanwhile.
    pub fn add_read(
        &mut self,
        epoch: u64,
        partition: u32,
        from: u64,
        events: Vec<StoredEvent>,
        next: u64,
    ) {
        let Some(state) = self.partitions.get_mut(partition as usize) else {
            return;
        };
        if epoch != self.epoch || state.frontier != from {
            return;
        }
        state.frontier = next;
        state.buffer.extend(events.into_iter().map(Arc::new));
    }

    /// Hard delete: drops `offsets` (sorted) of `partition` from the
    /// read-ahead; reads from the log skip them from now on.
    pub fn erase(&mut self, partition: u32, offsets: &[u64]) {
        if let Some(state) = self.partitions.get_mut(partition as usize) {
            state
                .buffer
                .retain(|event| offsets.binary_search(&event.offset).is_err());
        }
    }

    /// After a power loss: committed offsets (and read positions) past the
    /// partitions' `ends` are cut back to them, so offsets the log reuses
    /// are delivered. Returns `(partition, committed before, end)` of each
    /// partition whose committed offset moved.
    pub fn clamp(&mut self, ends: &[u64]) -> Vec<(u32, u64, u64)> {
        let mut clamped = Vec::new();
        for (index, state) in self.partitions.iter_mut().enumerate() {
            let Some(&end) = ends.get(index) else {
                continue;
            };
            if state.committed > end {
                clamped.push((index as u32, state.committed, end));
                state.committed = end;
            }
            if state.frontier > end || state.position > end {
                state.position = state.position.min(end);
                state.frontier = state.frontier.min(end);
                state.buffer.clear();
            }
        }
        if !clamped.is_empty() {
            self.epoch += 1;
        }
        clamped
    }

    /// Retention removed everything below `start`.
    pub fn skip_to(&mut self, partition: u32, start: u64) {
        let Some(state) = self.partitions.get_mut(partition as usize) else {
            return;
        };
        state.committed = state.committed.max(start);
        if state.frontier < start {
            state.frontier = start;
            state.position = state.position.max(start);
            state.buffer.clear();
        }
    }

    /// Up to `max` events from `member`'s partitions, in order per partition.
    pub fn take(&mut self, member: &str, max: usize) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        let count = self.partitions.len();
        let mut idle_rounds = 0;
        while deliveries.len() < max && idle_rounds < count {
            let index = self.next_partition % count.max(1);
            self.next_partition = index + 1;
            let Some(partition) = self.partitions.get_mut(index) else {
                break;
            };
            if partition.owner.as_deref() != Some(member) {
                idle_rounds += 1;
                continue;
            }
            let mut took = false;
            while deliveries.len() < max {
                let Some(event) = partition.buffer.pop_front() else {
                    break;
                };
                if event.offset < partition.position {
                    continue;
                }
                partition.position = event.offset + 1;
                if !self
                    .spec
                    .filter
                    .matches(&event.event.ty, event.event.subject.as_deref())
                {
                    continue;
                }
                deliveries.push(Delivery {
                    delivery_id: format!("{index}.{}.1", event.offset),
                    attempt: 1,
                    event: (*event).clone(),
                });
                took = true;
            }
            idle_rounds = if took { 0 } else { idle_rounds + 1 };
        }
        deliveries
    }

    /// Records `member`'s committed offsets, if its generation is current and
    /// it owns every partition it commits. Offsets must not pass `ends`.
    pub fn commit(
        &mut self,
        member: &str,
        generation: u64,
        offsets: &[(u32, u64)],
        ends: &[u64],
    ) -> Result<()> {
        if generation != self.generation {
            return Err(Error::StaleGeneration {
                generation,
                current: self.generation,
            });
        }
        for &(partition, offset) in offsets {
            let state = self.partitions.get(partition as usize).ok_or_else(|| {
                Error::invalid(
                    "offsets.partition",
                    format!("the topic has no partition {partition}"),
                )
            })?;
            if state.owner.as_deref() != Some(member) {
                return Err(Error::StaleGeneration {
                    generation,
                    current: self.generation,
                });
            }
            let end = ends.get(partition as usize).copied().unwrap_or(0);
            if offset > end {
                return Err(Error::invalid(
                    "offsets.offset",
                    format!("offset {offset} is past the end of partition {partition} ({end})"),
                ));
            }
        }
        for &(partition, offset) in offsets {
            if let Some(state) = self.partitions.get_mut(partition as usize) {
                state.committed = offset;
            }
        }
        Ok(())
    }

    /// Moves every partition to `starts`; everyone must rejoin.
    pub fn reset(&mut self, starts: &[u64]) {
        for (partition, &start) in self.partitions.iter_mut().zip(starts) {
            partition.committed = start;
            partition.position = start;
            partition.frontier = start;
            partition.buffer.clear();
        }
        self.members.clear();
        self.rebalance();
    }

    pub fn committed(&self) -> Vec<u64> {
        self.partitions
            .iter()
            .map(|partition| partition.committed)
            .collect()
    }

    pub fn owners(&self) -> Vec<Option<String>> {
        self.partitions
            .iter()
            .map(|partition| partition.owner.clone())
            .collect()
    }

    /// The read frontier of `member`'s partitions (to wait for new events).
    pub fn frontiers(&self, member: &str) -> Vec<(u32, u64)> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(_, partition)| partition.owner.as_deref() == Some(member))
            .map(|(index, partition)| (index as u32, partition.frontier))
            .collect()
    }

    pub fn members(&self, now: i64) -> Vec<MemberStatus> {
        self.members
            .iter()
            .map(|(member, last_seen)| MemberStatus {
                member: member.clone(),
                partitions: self.assignment(member),
                idle_ms: u64::try_from(now.saturating_sub(*last_seen)).unwrap_or(0),
            })
            .collect()
    }
}
