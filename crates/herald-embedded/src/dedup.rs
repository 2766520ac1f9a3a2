//! A topic's deduplication window in memory: a map from a 128-bit keyed hash
//! of each event id to where it was appended, and the same hashes in append
//! order for expiry (see `topic.rs` for how publishes use it).
//!
//! Both grow with the publish rate and are touched on every publish, under
//! the topic's dedup lock. A `HashMap` or `VecDeque` grows by moving all of
//! itself into a fresh allocation twice its size, inside one publish: at a
//! few thousand ids that was 0.2–0.7 ms on the development VM (page faults
//! on the new memory, then the copy), every doubling, on whichever publish
//! crossed the line (BENCHMARKS.md, issue 7). So the map is split into
//! [`SHARDS`] maps by hash, each growing on its own at 1/16 of the cost, and
//! the order is a queue of fixed-size chunks that never moves an entry.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use tokio::sync::watch;

/// Maps of the window (a power of two).
pub(crate) const SHARDS: usize = 16;

/// Entries per chunk of the expiry queue (32 KiB).
const CHUNK: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    /// Appended at this position and time.
    Done {
        partition: u32,
        offset: u64,
        appended_at: i64,
    },
    /// Being appended by a publish in flight.
    Pending,
}

/// One of the window's maps.
type Shard = HashMap<u128, Slot, BuildHasherDefault<KeyedHash>>;

/// Which shard holds `hash`: its top `log2(SHARDS)` bits.
fn shard_of(hash: u128) -> usize {
    (hash >> (128 - SHARDS.trailing_zeros())) as usize
}

/// The window of one topic.
#[derive(Debug)]
pub(crate) struct Dedup {
    hashers: (RandomState, RandomState),
    shards: Box<[Shard]>,
    /// `(appended_at, hash)` in append order, for expiry.
    order: Chunked<(i64, u128)>,
    /// Bumped when pending publishes finish, for the publishes waiting on them.
    pub(crate) finished: watch::Sender<u64>,
}

impl Dedup {
    pub(crate) fn new() -> Self {
        Self {
            hashers: (RandomState::new(), RandomState::new()),
            shards: (0..SHARDS).map(|_| HashMap::default()).collect(),
            order: Chunked::default(),
            finished: watch::Sender::new(0),
        }
    }

    /// The id's 128-bit hash, keyed per process (so ids cannot be chosen to
    /// collide): the key of every other call.
    pub(crate) fn hash(&self, id: &[u8]) -> u128 {
        (u128::from(self.hashers.0.hash_one(id)) << 64) | u128::from(self.hashers.1.hash_one(id))
    }

    /// The shard of a hash: its top bits (the maps hash by its low half).
    fn shard(&self, hash: u128) -> &Shard {
        &self.shards[shard_of(hash)]
    }

    fn shard_mut(&mut self, hash: u128) -> &mut Shard {
        &mut self.shards[shard_of(hash)]
    }

    pub(crate) fn get(&self, hash: &u128) -> Option<&Slot> {
        self.shard(*hash).get(hash)
    }

    /// Marks `hash` as being appended.
    pub(crate) fn reserve(&mut self, hash: u128) {
        self.shard_mut(hash).insert(hash, Slot::Pending);
    }

    /// Forgets `hash` (its append failed).
    pub(crate) fn release(&mut self, hash: u128) {
        self.shard_mut(hash).remove(&hash);
    }

    /// Records where `hash` was appended.
    pub(crate) fn record(&mut self, hash: u128, partition: u32, offset: u64, appended_at: i64) {
        self.shard_mut(hash).insert(
            hash,
            Slot::Done {
                partition,
                offset,
                appended_at,
            },
        );
        self.order.push_back((appended_at, hash));
    }

    /// Forgets every id appended before `cutoff`.
    pub(crate) fn expire(&mut self, cutoff: i64) {
        while let Some(&(appended_at, hash)) = self.order.front() {
            if appended_at >= cutoff {
                break;
            }
            self.order.pop_front();
            let shard = self.shard_mut(hash);
            if matches!(shard.get(&hash), Some(Slot::Done { appended_at: at, .. }) if *at == appended_at)
            {
                shard.remove(&hash);
            }
        }
    }

    /// Puts the expiry order back in time order (after a rebuild recorded
    /// the partitions one after the other).
    pub(crate) fn sort_order(&mut self) {
        self.order.sort_unstable();
    }

    /// Ids in the window (done or pending).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }
}

/// The window, for measuring its memory per id
/// (`examples/dedup_memory.rs`); not an API.
#[doc(hidden)]
#[derive(Debug)]
pub struct Probe(Dedup);

impl Default for Probe {
    fn default() -> Self {
        Self(Dedup::new())
    }
}

impl Probe {
    /// Records `id` as appended at `(partition, offset)` at `appended_at`.
    pub fn record(&mut self, id: &[u8], partition: u32, offset: u64, appended_at: i64) {
        let hash = self.0.hash(id);
        self.0.record(hash, partition, offset, appended_at);
    }

    /// Whether `id` is in the window.
    pub fn contains(&self, id: &[u8]) -> bool {
        self.0.get(&self.0.hash(id)).is_some()
    }

    /// Forgets every id appended before `cutoff`.
    pub fn expire(&mut self, cutoff: i64) {
        self.0.expire(cutoff);
    }
}

/// Hashes a key that already is a keyed 128-bit hash: its low 64 bits, as
/// they are. (Hashing it again with SipHash added nothing but time.)
#[derive(Debug, Default)]
pub(crate) struct KeyedHash(u64);

impl Hasher for KeyedHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys reach this hasher (`write_u128`); any other input
        // is folded in rather than trusted.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

/// A FIFO queue in chunks of [`CHUNK`] entries: pushing never moves the
/// entries already queued (a `VecDeque` doubles and copies itself).
#[derive(Debug)]
struct Chunked<T> {
    chunks: VecDeque<VecDeque<T>>,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self {
            chunks: VecDeque::new(),
        }
    }
}

impl<T: Ord> Chunked<T> {
    fn push_back(&mut self, value: T) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push_back(value),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(value);
                self.chunks.push_back(chunk);
            }
        }
    }

    fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(VecDeque::front)
    }

    fn pop_front(&mut self) -> Option<T> {
        let chunk = self.chunks.front_mut()?;
        let value = chunk.pop_front();
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        value
    }

    fn sort_unstable(&mut self) {
        let mut all: Vec<T> = self.chunks.drain(..).flatten().collect();
        all.sort_unstable();
        for value in all {
            self.push_back(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_where_they_were_recorded_and_expire_in_time_order() {
        let mut dedup = Dedup::new();
        let hashes: Vec<u128> = (0..5000u32)
            .map(|id| dedup.hash(&id.to_be_bytes()))
            .collect();
        for (index, &hash) in hashes.iter().enumerate() {
            dedup.record(hash, 0, index as u64, index as i64);
        }
        assert_eq!(dedup.len(), 5000);
        assert!(dedup.shards.iter().all(|shard| !shard.is_empty()));
        assert!(matches!(
            dedup.get(&hashes[4321]),
            Some(Slot::Done { offset: 4321, .. })
        ));
        dedup.expire(3000);
        assert_eq!(dedup.len(), 2000);
        assert!(dedup.get(&hashes[2999]).is_none());
        assert!(dedup.get(&hashes[3000]).is_some());
        // A reservation released (its append failed) leaves no trace.
        dedup.reserve(hashes[0]);
        dedup.release(hashes[0]);
        assert!(dedup.get(&hashes[0]).is_none());
        dedup.expire(i64::MAX);
        assert_eq!(dedup.len(), 0);
        assert!(dedup.order.front().is_none());
    }

    #[test]
    fn a_rebuilt_order_is_sorted_by_time() {
        let mut dedup = Dedup::new();
        for (at, id) in [(30i64, 1u32), (10, 2), (20, 3)] {
            let hash = dedup.hash(&id.to_be_bytes());
            dedup.record(hash, 0, 0, at);
        }
        dedup.sort_order();
        dedup.expire(25);
        assert_eq!(dedup.len(), 1);
        assert_eq!(dedup.order.front().map(|&(at, _)| at), Some(30));
    }

    #[test]
    fn chunked_queue_is_fifo_across_chunks() {
        let mut queue = Chunked::default();
        for value in 0..(3 * CHUNK + 7) {
            queue.push_back(value);
        }
        for expected in 0..(3 * CHUNK + 7) {
            assert_eq!(queue.front(), Some(&expected));
            assert_eq!(queue.pop_front(), Some(expected));
        }
        assert_eq!(queue.pop_front(), None);
        assert!(queue.chunks.is_empty());
    }
}
