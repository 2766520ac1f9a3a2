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
//!
//! # Memory per id
//!
//! Every id in the window costs one map bucket and one expiry entry, so
//! both are packed (`examples/dedup_memory.rs` measures them; BENCHMARKS.md
//! has the figures): a bucket is the 128-bit hash as two `u64` words (a
//! `u128` is 16-byte aligned and padded every bucket to 48 bytes) and the
//! position packed in one `u64` (partition in the top 10 bits, offset in
//! the low 54), with a reserved value for "being appended" instead of an
//! enum tag; 24 bytes. The append time is not in the map: only expiry needs
//! it, and the expiry queue has it, as milliseconds from its chunk's base
//! time in an `i32` beside the hash in four `u32` words; 20 bytes.
//!
//! The hash stays 128 bits: a false duplicate drops an event (the publisher
//! is told it was stored), and at 100k ids/s over a 2-minute window a
//! 64-bit hash would make one about every half year.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use tokio::sync::watch;
use tracing::error;

use crate::dedup_runs::{IdHasher, NewRun, Run, RunEntry};

/// Maps of the window (a power of two).
pub(crate) const SHARDS: usize = 16;

/// Entries per chunk of the expiry queue (20 KiB).
const CHUNK: usize = 1024;

/// Bits of a packed position that hold the offset; the partition takes the
/// rest (10 bits: a topic has at most 1,024 partitions).
const OFFSET_BITS: u32 = 54;
const _: () = assert!(herald_backend::topic::MAX_PARTITIONS <= 1 << (64 - OFFSET_BITS));

/// The packed position of an id whose publish is still appending.
const PENDING: u64 = u64::MAX;

/// Where an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Appended at this position.
    Done { partition: u32, offset: u64 },
    /// Being appended by a publish in flight.
    Pending,
}

impl Slot {
    fn unpack(packed: u64) -> Self {
        if packed == PENDING {
            return Self::Pending;
        }
        Self::Done {
            partition: (packed >> OFFSET_BITS) as u32,
            offset: packed & ((1 << OFFSET_BITS) - 1),
        }
    }
}

/// The packed position, if it fits: an offset below 2^54 − 1 (at a million
/// appends a second to one partition, 570 years).
fn pack(partition: u32, offset: u64) -> Option<u64> {
    let packed = (u64::from(partition) << OFFSET_BITS) | offset;
    (offset < (1 << OFFSET_BITS) - 1 && partition < 1 << (64 - OFFSET_BITS) && packed != PENDING)
        .then_some(packed)
}

/// A map key: a 128-bit id hash as two words, 8-byte aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key(u64, u64);

impl Key {
    pub(crate) fn new(high: u64, low: u64) -> Self {
        Self(high, low)
    }

    pub(crate) fn words64(self) -> (u64, u64) {
        (self.0, self.1)
    }

    /// Which shard holds it: the top `log2(SHARDS)` bits.
    fn shard(self) -> usize {
        (self.0 >> (64 - SHARDS.trailing_zeros())) as usize
    }

    fn words(self) -> [u32; 4] {
        [
            (self.0 >> 32) as u32,
            self.0 as u32,
            (self.1 >> 32) as u32,
            self.1 as u32,
        ]
    }

    fn from_words(words: [u32; 4]) -> Self {
        Self(
            (u64::from(words[0]) << 32) | u64::from(words[1]),
            (u64::from(words[2]) << 32) | u64::from(words[3]),
        )
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: its low word is the map's hash.
        state.write_u64(self.1);
    }
}

/// One of the window's maps: key → packed position.
type Shard = HashMap<Key, u64, BuildHasherDefault<KeyedHash>>;

/// The window of one topic.
#[derive(Debug)]
pub(crate) struct Dedup {
    hasher: IdHasher,
    shards: Box<[Shard]>,
    /// The recorded keys in append order, with their times, for expiry.
    /// Each recorded key has exactly one entry: a key is recorded only when
    /// absent or pending, and leaves the map only when its entry expires.
    order: Expiry,
    /// Bumped when pending publishes finish, for the publishes waiting on them.
    pub(crate) finished: watch::Sender<u64>,
    /// The window on disk (`dedup_runs.rs`); `None` in memory-only use.
    runs: Option<Runs>,
}

/// What the window keeps for its runs on disk.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    /// Runs written before the open with ids still in the window, newest
    /// first: the ids the memory map does not hold.
    pub(crate) old: Vec<Run>,
    /// Each partition's end when the topic opened: a run's position at or
    /// past it is not in the log (a tail lost to power loss).
    pub(crate) ends_at_open: Vec<u64>,
    /// The window's start as of the last expiry.
    cutoff: i64,
    /// Ids recorded since the last run was taken, and the oldest's time.
    fresh: Vec<RunEntry>,
    fresh_since: i64,
    /// Publishes appending with reserved ids: (partition, the partition's
    /// end when they reserved) → how many.
    in_flight: BTreeMap<(u32, u64), u32>,
    /// The next run's sequence number.
    pub(crate) next_seq: u64,
    /// Set when the topic closes: no run is taken after its last.
    closed: bool,
}

impl Runs {
    /// What a topic opened with: the runs still in the window (newest
    /// first), its partitions' ends, the next sequence number.
    pub(crate) fn new(old: Vec<Run>, ends_at_open: Vec<u64>, next_seq: u64, cutoff: i64) -> Self {
        Self {
            old,
            ends_at_open,
            cutoff,
            next_seq,
            ..Self::default()
        }
    }
}

impl Dedup {
    /// A window keyed at random, in memory only.
    pub(crate) fn new() -> Self {
        Self::with_hasher(IdHasher::random())
    }

    pub(crate) fn with_hasher(hasher: IdHasher) -> Self {
        Self {
            hasher,
            shards: (0..SHARDS).map(|_| HashMap::default()).collect(),
            order: Expiry::default(),
            finished: watch::Sender::new(0),
            runs: None,
        }
    }

    /// Keeps runs from now on (see `dedup_runs.rs`): lookups also search
    /// `runs.old`, and recorded ids gather for the next run.
    pub(crate) fn persist(&mut self, runs: Runs) {
        self.runs = Some(runs);
    }

    /// The id's 128-bit hash, keyed per topic (so ids cannot be chosen to
    /// collide): the key of every other call.
    pub(crate) fn hash(&self, id: &[u8]) -> Key {
        self.hasher.hash(id)
    }

    pub(crate) fn hasher(&self) -> IdHasher {
        self.hasher
    }

    fn shard(&self, key: Key) -> &Shard {
        &self.shards[key.shard()]
    }

    fn shard_mut(&mut self, key: Key) -> &mut Shard {
        &mut self.shards[key.shard()]
    }

    pub(crate) fn get(&self, key: Key) -> Option<Slot> {
        if let Some(&packed) = self.shard(key).get(&key) {
            return Some(Slot::unpack(packed));
        }
        let runs = self.runs.as_ref()?;
        for run in &runs.old {
            match run.find(key) {
                Ok(Some(entry)) if entry.appended_at >= runs.cutoff => {
                    if let Slot::Done { partition, offset } = Slot::unpack(entry.packed)
                        && runs
                            .ends_at_open
                            .get(partition as usize)
                            .is_some_and(|&end| offset < end)
                    {
                        return Some(Slot::Done { partition, offset });
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    error!(seq = run.seq, %error, "A dedup run could not be read; an id it holds may be appended again.");
                }
            }
        }
        None
    }

    /// Notes a publish about to append reserved ids to `partition`, whose
    /// end is `end`: until [`Dedup::appended`], a run covers no further.
    pub(crate) fn appending(&mut self, partition: u32, end: u64) {
        if let Some(runs) = &mut self.runs {
            *runs.in_flight.entry((partition, end)).or_default() += 1;
        }
    }

    /// The publish noted by [`Dedup::appending`] recorded or released its ids.
    pub(crate) fn appended(&mut self, partition: u32, end: u64) {
        if let Some(runs) = &mut self.runs
            && let std::collections::btree_map::Entry::Occupied(mut entry) =
                runs.in_flight.entry((partition, end))
        {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    /// Whether the ids gathered should go to disk now: `run_ids` of them,
    /// or the oldest `interval` ms old.
    pub(crate) fn run_due(&self, now: i64, interval: i64, run_ids: usize) -> bool {
        self.runs.as_ref().is_some_and(|runs| {
            !runs.closed
                && (runs.fresh.len() >= run_ids
                    || (!runs.fresh.is_empty() && now.saturating_sub(runs.fresh_since) >= interval))
        })
    }

    /// Takes the ids gathered as the next run, with what it covers given
    /// the partitions' ends now (`last`: the topic is closing, and no run is
    /// taken after this one).
    pub(crate) fn take_run(&mut self, ends: &[u64], last: bool) -> Option<NewRun> {
        let runs = self.runs.as_mut()?;
        if runs.closed {
            return None;
        }
        runs.closed = last;
        let covered = (0u32..)
            .zip(ends)
            .map(|(partition, &end)| {
                runs.in_flight
                    .range((partition, 0)..=(partition, u64::MAX))
                    .next()
                    .map_or(end, |(&(_, reserved_at), _)| reserved_at.min(end))
            })
            .collect();
        let seq = runs.next_seq;
        runs.next_seq += 1;
        Some(NewRun {
            seq,
            entries: std::mem::take(&mut runs.fresh),
            covered,
        })
    }

    fn gather(&mut self, key: Key, packed: u64, appended_at: i64) {
        if let Some(runs) = &mut self.runs {
            if runs.fresh.is_empty() {
                runs.fresh_since = appended_at;
            }
            runs.fresh.push(RunEntry {
                key,
                packed,
                appended_at,
            });
        }
    }

    /// Marks `key` as being appended.
    pub(crate) fn reserve(&mut self, key: Key) {
        self.shard_mut(key).insert(key, PENDING);
    }

    /// Forgets a reservation (its append failed).
    pub(crate) fn release(&mut self, key: Key) {
        let shard = self.shard_mut(key);
        if shard.get(&key) == Some(&PENDING) {
            shard.remove(&key);
        }
    }

    /// Records where a reserved `key` was appended.
    pub(crate) fn record(&mut self, key: Key, partition: u32, offset: u64, appended_at: i64) {
        let Some(packed) = pack(partition, offset) else {
            // Unreachable in practice (see `pack`): not deduplicated, rather
            // than a wrong position.
            self.release(key);
            return;
        };
        self.shard_mut(key).insert(key, packed);
        self.order.push_back(appended_at, key);
        self.gather(key, packed, appended_at);
    }

    /// Records `key` found in the log at `appended_at`, unless the window
    /// already has it (a rebuild: the first position of an id wins, as for
    /// publishes). Call [`Dedup::sort_order`] after the last one.
    pub(crate) fn record_found(&mut self, key: Key, partition: u32, offset: u64, appended_at: i64) {
        let Some(packed) = pack(partition, offset) else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(vacant) = self.shard_mut(key).entry(key) {
            vacant.insert(packed);
            self.order.push_back(appended_at, key);
            self.gather(key, packed, appended_at);
        }
    }

    /// Forgets every id appended before `cutoff`.
    pub(crate) fn expire(&mut self, cutoff: i64) {
        if let Some(runs) = &mut self.runs {
            runs.cutoff = cutoff;
            runs.old.retain(|run| run.max_time >= cutoff);
        }
        while let Some((appended_at, key)) = self.order.front() {
            if appended_at >= cutoff {
                break;
            }
            self.order.pop_front();
            let shard = self.shard_mut(key);
            if shard.get(&key).is_some_and(|&packed| packed != PENDING) {
                shard.remove(&key);
            }
        }
    }

    /// Puts the expiry order back in time order (after a rebuild recorded
    /// the partitions one after the other).
    pub(crate) fn sort_order(&mut self) {
        self.order.sort();
    }

    /// Ids in the window (done or pending).
    pub(crate) fn len(&self) -> usize {
        let on_disk = self
            .runs
            .as_ref()
            .map_or(0, |runs| runs.old.iter().map(Run::len).sum());
        self.shards.iter().map(HashMap::len).sum::<usize>() + on_disk
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
        let key = self.0.hash(id);
        self.0.reserve(key);
        self.0.record(key, partition, offset, appended_at);
    }

    /// Whether `id` is in the window.
    pub fn contains(&self, id: &[u8]) -> bool {
        self.0.get(self.0.hash(id)).is_some()
    }

    /// Forgets every id appended before `cutoff`.
    pub fn expire(&mut self, cutoff: i64) {
        self.0.expire(cutoff);
    }
}

/// Hashes a key that already is a keyed hash: its low 64 bits, as they are.
/// (Hashing it again with SipHash added nothing but time.)
#[derive(Debug, Default)]
pub(crate) struct KeyedHash(u64);

impl Hasher for KeyedHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Key`s reach this hasher (`write_u64`); any other input is
        // folded in rather than trusted.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// One expiry entry: a key and its append time in ms after its chunk's base.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: i32,
    key: [u32; 4],
}

/// A chunk of the expiry queue: up to [`CHUNK`] entries whose times are
/// within an `i32` of its base.
#[derive(Debug)]
struct Chunk {
    base: i64,
    entries: VecDeque<Entry>,
}

/// The expiry queue: a FIFO queue in chunks, so pushing never moves the
/// entries already queued (a `VecDeque` doubles and copies itself).
#[derive(Debug, Default)]
struct Expiry {
    chunks: VecDeque<Chunk>,
}

impl Expiry {
    fn push_back(&mut self, appended_at: i64, key: Key) {
        let key = key.words();
        if let Some(chunk) = self.chunks.back_mut()
            && chunk.entries.len() < CHUNK
            && let Ok(at) = i32::try_from(appended_at.saturating_sub(chunk.base))
        {
            chunk.entries.push_back(Entry { at, key });
            return;
        }
        let mut entries = VecDeque::with_capacity(CHUNK);
        entries.push_back(Entry { at: 0, key });
        self.chunks.push_back(Chunk {
            base: appended_at,
            entries,
        });
    }

    fn front(&self) -> Option<(i64, Key)> {
        let chunk = self.chunks.front()?;
        let entry = chunk.entries.front()?;
        Some((
            chunk.base.saturating_add(i64::from(entry.at)),
            Key::from_words(entry.key),
        ))
    }

    fn pop_front(&mut self) {
        if let Some(chunk) = self.chunks.front_mut() {
            chunk.entries.pop_front();
            if chunk.entries.is_empty() {
                self.chunks.pop_front();
            }
        }
    }

    fn sort(&mut self) {
        let mut all: Vec<(i64, Key)> = Vec::with_capacity(self.chunks.len() * CHUNK);
        while let Some(entry) = self.front() {
            all.push(entry);
            self.pop_front();
        }
        all.sort_unstable();
        for (appended_at, key) in all {
            self.push_back(appended_at, key);
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(dedup: &mut Dedup, key: Key, offset: u64, at: i64) {
        dedup.reserve(key);
        dedup.record(key, (offset % 7) as u32, offset, at);
    }

    #[test]
    fn ids_are_found_where_they_were_recorded_and_expire_in_time_order() {
        let mut dedup = Dedup::new();
        let keys: Vec<Key> = (0..5000u32)
            .map(|id| dedup.hash(&id.to_be_bytes()))
            .collect();
        for (index, &key) in keys.iter().enumerate() {
            recorded(&mut dedup, key, index as u64, index as i64);
        }
        assert_eq!(dedup.len(), 5000);
        assert!(dedup.shards.iter().all(|shard| !shard.is_empty()));
        assert_eq!(
            dedup.get(keys[4321]),
            Some(Slot::Done {
                partition: 4321 % 7,
                offset: 4321
            })
        );
        dedup.expire(3000);
        assert_eq!(dedup.len(), 2000);
        assert!(dedup.get(keys[2999]).is_none());
        assert!(dedup.get(keys[3000]).is_some());
        // A reservation released (its append failed) leaves no trace.
        dedup.reserve(keys[0]);
        assert_eq!(dedup.get(keys[0]), Some(Slot::Pending));
        dedup.release(keys[0]);
        assert!(dedup.get(keys[0]).is_none());
        dedup.expire(i64::MAX);
        assert_eq!(dedup.len(), 0);
        assert!(dedup.order.is_empty());
    }

    #[test]
    fn positions_pack_into_a_word_up_to_the_largest_partition_and_offset() {
        let largest = (1 << OFFSET_BITS) - 2;
        for (partition, offset) in [(0, 0), (1023, largest), (517, 1 << 40)] {
            let packed = pack(partition, offset).unwrap();
            assert_eq!(Slot::unpack(packed), Slot::Done { partition, offset });
        }
        assert_eq!(pack(1023, largest + 1), None, "would read as pending");
        assert_eq!(pack(1024, 0), None);
    }

    #[test]
    fn an_offset_too_large_to_pack_releases_its_reservation() {
        let mut dedup = Dedup::new();
        let key = dedup.hash(b"far");
        dedup.reserve(key);
        dedup.record(key, 0, u64::MAX - 1, 5);
        assert!(dedup.get(key).is_none());
        assert!(dedup.order.is_empty());
    }

    #[test]
    fn a_rebuilt_order_is_sorted_by_time_and_keeps_the_first_position() {
        let mut dedup = Dedup::new();
        for (at, id, offset) in [(30i64, 1u32, 0u64), (10, 2, 1), (20, 3, 2), (40, 1, 3)] {
            let key = dedup.hash(&id.to_be_bytes());
            dedup.record_found(key, 0, offset, at);
        }
        dedup.sort_order();
        assert_eq!(
            dedup.get(dedup.hash(&1u32.to_be_bytes())),
            Some(Slot::Done {
                partition: 0,
                offset: 0
            })
        );
        dedup.expire(25);
        assert_eq!(dedup.len(), 1);
        assert_eq!(dedup.order.front().map(|(at, _)| at), Some(30));
    }

    #[test]
    fn the_expiry_queue_is_fifo_across_chunks_and_far_apart_times() {
        let mut queue = Expiry::default();
        let times: Vec<i64> = (0..(3 * CHUNK as i64 + 7))
            .map(|index| {
                if index == 1500 {
                    index + (1 << 40)
                } else {
                    index
                }
            })
            .collect();
        for (index, &at) in times.iter().enumerate() {
            queue.push_back(at, Key(index as u64, !(index as u64)));
        }
        for (index, &at) in times.iter().enumerate() {
            assert_eq!(
                queue.front(),
                Some((at, Key(index as u64, !(index as u64))))
            );
            queue.pop_front();
        }
        assert!(queue.front().is_none() && queue.is_empty());
    }

    #[test]
    fn buckets_and_expiry_entries_are_packed() {
        assert_eq!(size_of::<(Key, u64)>(), 24);
        assert_eq!(size_of::<Entry>(), 20);
    }
}
