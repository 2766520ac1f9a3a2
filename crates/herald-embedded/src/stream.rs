//! Event streams: the stream index and appends with optimistic concurrency.
//!
//! The log is the source of truth. Each event appended to a stream carries
//! its stream id and version in record headers (`stm`, `ver`: see
//! `codec.rs`); the index in `<data_dir>/streams.redb` is derived from them:
//!
//! | table | key | value |
//! |---|---|---|
//! | `streams` | (topic, stream) | (last version, created_at, updated_at, state: 0 live, 1 soft deleted, 2 hard deleted) |
//! | `stream_events` | (topic, stream, version) | (partition, offset) |
//! | `stream_positions` | (topic, partition, offset) | (stream, version) — the reverse map |
//! | `stream_checkpoints` | (topic, partition) | every stream record below this offset is indexed |
//! | `stream_snapshots` | (topic, stream) | (version, JSON state) |
//! | `stream_erasures` | (topic, partition, offset) | () — events of hard-deleted streams not yet compacted away |
//!
//! # Writing the index without an fsync per append
//!
//! One thread, `stream-index`, owns the index's write transactions. An
//! append sends its entries over a channel and waits; the thread takes every
//! request queued, applies them in one redb transaction and answers them all
//! (group commit, as the log writer does). Those commits use
//! `Durability::None` (no fsync); every [`DURABLE_EVERY`], when the thread
//! falls idle for [`IDLE_SYNC`], for deletes, snapshots and topic purges,
//! and on shutdown, a commit is `Immediate`, which makes everything before it
//! durable. A crash therefore loses at most the index's recent tail, never
//! the log's — and the tail is rebuilt from the log on open:
//!
//! # Recovery (catch-up from the log)
//!
//! Each partition has a checkpoint written in the same transaction as the
//! entries it covers. On open, before serving, for every partition:
//!
//! 1. entries at or past the log's end (a log that lost an unsynced tail,
//!    `fsync = never`/`interval`) are removed and their streams' versions
//!    set back to the last entry left — the index never points past the log;
//! 2. the log is read from the checkpoint to its end and every record with
//!    `stm`/`ver` headers is indexed (idempotent: an entry already there is
//!    written again), then the checkpoint moves to the end.
//!
//! The checkpoint must never pass a stream record that is not indexed. Appends
//! to different streams of a partition finish in any order, so each append
//! registers the partition's end offset (a lower bound of its own offsets)
//! in the partition's [`PartitionTracker`] before appending and deregisters
//! once its entries are committed; a commit writes as checkpoint the lowest
//! registered offset, or the end offset when none is in flight.
//!
//! # Concurrency
//!
//! Appends to one stream are serialized by a per-stream async lock (a
//! sharded map whose entries are removed as soon as no one holds or waits
//! for them, so memory follows the streams being appended to, not the
//! streams that exist). The critical section — read the version, check the
//! expectation, append to the log, commit the index entries — runs in a
//! spawned task, so a caller that goes away cannot leave an event in the log
//! that the index never heard of. Appends to different streams run
//! concurrently and share the log's group commit and the index's.
//!
//! If an index commit fails after its events are in the log, the index is
//! behind the log and versions could be given out twice: stream operations
//! then fail with `unavailable` until the backend is reopened, which rebuilds
//! the index from the log.
//!
//! # Deletion
//!
//! Soft delete marks the stream deleted (reads say not found; appends are
//! refused); its events stay in the topic. Hard delete, in one durable
//! transaction, removes the stream's index entries and snapshot, keeps the
//! row as a tombstone (the stream id cannot be reused, and catch-up does not
//! index its events again), and moves the events' positions from
//! `stream_positions` to `stream_erasures`. The backend then makes those
//! offsets unreadable at once and has them compacted out of the segments
//! soon after; `erasure.rs` describes how. If catch-up meets an event of a
//! hard-deleted stream that the delete did not know of, it schedules its
//! erasure the same way.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use herald_backend::{
    AppendResult, Direction, Error, ExpectedVersion, PublishResult, Result, Snapshot,
    StreamMetadata, StreamSlice,
};
use herald_log::{LogReader, Record};
use herald_types::{EventInput, StreamId, TopicName, partition_for_key};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::oneshot;
use tracing::{error, info};

use crate::codec;
use crate::topic::{TopicRuntime, correlated_positions, log_error};

/// The longest the index goes without an `Immediate` commit while busy: the
/// most index work a crash can cost at recovery (re-reading this much log).
pub(crate) const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// After this long without requests, pending non-durable commits are made
/// durable.
pub(crate) const IDLE_SYNC: Duration = Duration::from_millis(200);
/// At most this many requests in one index transaction.
const MAX_ROUND: usize = 4096;
/// How long a round may wait for the appends of the previous round's size
/// to arrive. A log commit round acknowledges its appends together, but
/// their tasks reach this thread one by one over some tens of
/// microseconds; without the wait they would be split over several redb
/// commits, and a commit (pages copied and checksummed per table touched)
/// costs more than the entries it writes. Half the log's commit linger.
const ROUND_LINGER: Duration = Duration::from_micros(50);
/// Bytes read from the log per read during catch-up.
const CATCH_UP_BYTES: usize = 1024 * 1024;
/// Bytes read from the log to fetch one stream event (and its neighbours).
const EVENT_READ_BYTES: usize = 64 * 1024;
/// Shards of the per-stream lock map.
const LOCK_SHARDS: usize = 64;
/// Shards of a topic's [`RowCache`], and the rows each keeps at most.
const ROW_CACHE_SHARDS: usize = 64;
const ROW_CACHE_SHARD_ROWS: usize = 512;

const STREAMS: TableDefinition<'_, (&str, &str), (u64, i64, i64, u8)> =
    TableDefinition::new("streams");
const STREAM_EVENTS: TableDefinition<'_, (&str, &str, u64), (u32, u64)> =
    TableDefinition::new("stream_events");
const STREAM_POSITIONS: TableDefinition<'_, (&str, u32, u64), (&str, u64)> =
    TableDefinition::new("stream_positions");
const CHECKPOINTS: TableDefinition<'_, (&str, u32), u64> =
    TableDefinition::new("stream_checkpoints");
const SNAPSHOTS: TableDefinition<'_, (&str, &str), (u64, &[u8])> =
    TableDefinition::new("stream_snapshots");
const ERASURES: TableDefinition<'_, (&str, u32, u64), ()> = TableDefinition::new("stream_erasures");

const LIVE: u8 = 0;
const SOFT_DELETED: u8 = 1;
const HARD_DELETED: u8 = 2;

/// A stream's row in the `streams` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    version: u64,
    created_at: i64,
    updated_at: i64,
    state: u8,
}

impl Row {
    fn from_tuple((version, created_at, updated_at, state): (u64, i64, i64, u8)) -> Self {
        Self {
            version,
            created_at,
            updated_at,
            state,
        }
    }

    fn tuple(self) -> (u64, i64, i64, u8) {
        (self.version, self.created_at, self.updated_at, self.state)
    }

    fn deleted(self) -> bool {
        self.state != LIVE
    }
}

fn storage(error: impl std::fmt::Display) -> Error {
    Error::StorageUnavailable {
        detail: format!("stream index: {error}"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Unavailable {
            detail: format!("stream index task: {error}"),
        })?
}

/// The stream index's state of one topic: per partition the appends in
/// flight, and the rows of recently appended streams. Built beside the
/// topic's [`TopicRuntime`], whose partitions it tracks; a topic created
/// anew gets a new one.
#[derive(Debug)]
pub(crate) struct TopicStreams {
    topic: TopicName,
    trackers: Vec<Arc<PartitionTracker>>,
    rows: RowCache,
}

impl TopicStreams {
    pub(crate) fn new(topic: &TopicRuntime) -> Self {
        Self {
            topic: topic.name.clone(),
            trackers: (0..topic.partition_count())
                .filter_map(|partition| topic.handle(partition).ok())
                .map(|handle| Arc::new(PartitionTracker::new(handle.reader().clone())))
                .collect(),
            rows: RowCache::default(),
        }
    }
}

/// The stream appends in flight on one partition, so that the index's
/// checkpoint never passes an append whose entries are not committed yet.
#[derive(Debug)]
struct PartitionTracker {
    reader: LogReader,
    /// Lower bounds of the offsets of appends in flight, with their counts.
    in_flight: Mutex<BTreeMap<u64, usize>>,
}

impl PartitionTracker {
    fn new(reader: LogReader) -> Self {
        Self {
            reader,
            in_flight: Mutex::new(BTreeMap::new()),
        }
    }

    /// Registers an append about to start; returns its lower bound. The end
    /// offset is read under the lock [`PartitionTracker::checkpoint`] takes,
    /// so a checkpoint computed before the registration is at most this.
    fn register(&self) -> u64 {
        let mut in_flight = lock(&self.in_flight);
        let low = self.reader.end_offset();
        *in_flight.entry(low).or_default() += 1;
        low
    }

    fn release(&self, low: u64) {
        let mut in_flight = lock(&self.in_flight);
        if let Some(count) = in_flight.get_mut(&low) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&low);
            }
        }
    }

    /// An offset below which every stream record is indexed once the
    /// appends committed so far are.
    fn checkpoint(&self) -> u64 {
        let in_flight = lock(&self.in_flight);
        in_flight
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.reader.end_offset())
    }
}

/// The rows of a topic's recently appended streams, so that an append
/// learns the stream's version without a read transaction (and the thread
/// hop of a blocking task).
///
/// Only code holding the stream's lock reads or changes a stream's entry:
/// an append reads it, and after its index commit stores the row it wrote;
/// a delete forgets it before releasing the lock. The index writer thread
/// applies exactly what the append computed, so the cached row is the
/// committed row. Each shard is cleared when it is full (the next append of
/// those streams reads the index again), which bounds the memory to about
/// `ROW_CACHE_SHARDS * ROW_CACHE_SHARD_ROWS` rows per topic. A topic created
/// anew gets a new [`TopicStreams`] and with it an empty cache.
#[derive(Debug)]
struct RowCache {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<Box<str>, Row>>>,
}

impl Default for RowCache {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..ROW_CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }
}

impl RowCache {
    fn shard(&self, stream: &str) -> MutexGuard<'_, HashMap<Box<str>, Row>> {
        let index = self.hasher.hash_one(stream) as usize % self.shards.len();
        lock(&self.shards[index])
    }

    fn get(&self, stream: &str) -> Option<Row> {
        self.shard(stream).get(stream).copied()
    }

    fn put(&self, stream: &str, row: Row) {
        let mut shard = self.shard(stream);
        if shard.len() >= ROW_CACHE_SHARD_ROWS && !shard.contains_key(stream) {
            shard.clear();
        }
        shard.insert(stream.into(), row);
    }

    fn forget(&self, stream: &str) {
        self.shard(stream).remove(stream);
    }
}

/// A request to the index writer thread.
enum Op {
    Append {
        topic: String,
        stream: String,
        partition: u32,
        first_version: u64,
        base_offset: u64,
        count: u64,
        appended_at: i64,
        tracker: Arc<PartitionTracker>,
    },
    Delete {
        topic: String,
        stream: String,
        hard: bool,
    },
    Snapshot {
        topic: String,
        stream: String,
        version: u64,
        state: Vec<u8>,
    },
    /// Moves the checkpoints of these partitions as far as they can go
    /// (every second while their logs grow, and at shutdown, so partitions
    /// that only had plain publishes are not re-read on the next open);
    /// `durable` at shutdown, else durable with the next durable commit.
    Checkpoint {
        partitions: Vec<(String, u32, Arc<PartitionTracker>)>,
        durable: bool,
    },
    /// Removes everything of a topic (deleted or created anew).
    Purge { topic: String },
    /// The log erased these offsets: drop their `stream_erasures` rows.
    Erased {
        topic: String,
        partition: u32,
        offsets: Vec<u64>,
    },
    /// Commits durably and stops the thread.
    Stop,
}

impl Op {
    fn needs_durability(&self) -> bool {
        !matches!(
            self,
            Self::Append { .. } | Self::Checkpoint { durable: false, .. }
        )
    }
}

/// What an op reports back: the `(partition, offset)`s a hard delete
/// scheduled for erasure (empty for every other op).
type Outcome = Vec<(u32, u64)>;

struct Request {
    op: Op,
    done: oneshot::Sender<Result<Outcome>>,
}

/// The index database behind a lock that every transaction holds shared:
/// compacting the file ([`StreamStore::compact_file`]) needs it alone.
#[derive(Debug)]
struct Index(RwLock<Database>);

impl Index {
    /// The database, for transactions that end before the guard does.
    fn shared(&self) -> RwLockReadGuard<'_, Database> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stream index and the per-stream locks. One per backend.
#[derive(Debug)]
pub(crate) struct StreamStore {
    db: Arc<Index>,
    writer: mpsc::Sender<Request>,
    locks: Arc<StreamLocks>,
    /// Set when an index commit failed after its events were appended.
    failed: AtomicBool,
    /// Why, and since when (ms), for readiness.
    failure: Mutex<Option<(String, i64)>>,
}

impl StreamStore {
    /// Opens (or creates) the index at `path`, with a page cache of at most
    /// `cache_bytes`, and starts its writer thread.
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Self> {
        let db = crate::redb_database(path, cache_bytes)
            .map_err(|error| storage(format!("{}: {error}", path.display())))?;
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(STREAMS).map_err(storage)?;
            txn.open_table(STREAM_EVENTS).map_err(storage)?;
            txn.open_table(STREAM_POSITIONS).map_err(storage)?;
            txn.open_table(CHECKPOINTS).map_err(storage)?;
            txn.open_table(SNAPSHOTS).map_err(storage)?;
            txn.open_table(ERASURES).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        let db = Arc::new(Index(RwLock::new(db)));
        let (writer, requests) = mpsc::channel();
        let thread_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name("stream-index".into())
            .spawn(move || run_writer(&thread_db, &requests))
            .map_err(|error| storage(format!("cannot start the index writer: {error}")))?;
        Ok(Self {
            db,
            writer,
            locks: Arc::new(StreamLocks::new()),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        })
    }

    async fn send(&self, op: Op) -> Result<()> {
        self.request(op).await.map(drop)
    }

    async fn request(&self, op: Op) -> Result<Outcome> {
        let (done, answer) = oneshot::channel();
        self.writer
            .send(Request { op, done })
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    fn check_healthy(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::StorageUnavailable {
                detail: "the stream index fell behind the log after a write failure; restart the server to rebuild it".into(),
            });
        }
        Ok(())
    }

    /// Why stream operations are refused, while they are: (error, since ms).
    pub(crate) fn failure(&self) -> Option<(String, i64)> {
        lock(&self.failure).clone()
    }

    /// Commits everything durably and stops the writer thread.
    pub(crate) async fn close(&self) -> Result<()> {
        self.send(Op::Stop).await
    }

    /// Moves every partition's checkpoint of `topics` to what is indexed
    /// (at shutdown: their ends). Durable when it returns if `durable`, else
    /// with the writer's next durable commit (within [`DURABLE_EVERY`] or
    /// [`IDLE_SYNC`]).
    pub(crate) async fn checkpoint(
        &self,
        topics: &[Arc<TopicStreams>],
        durable: bool,
    ) -> Result<()> {
        let partitions = topics
            .iter()
            .flat_map(|topic| {
                topic
                    .trackers
                    .iter()
                    .zip(0u32..)
                    .map(|(tracker, partition)| {
                        (topic.topic.to_string(), partition, Arc::clone(tracker))
                    })
            })
            .collect();
        self.send(Op::Checkpoint {
            partitions,
            durable,
        })
        .await
    }

    /// Removes the index of a topic. Durable when it returns.
    pub(crate) async fn purge(&self, topic: &TopicName) -> Result<()> {
        self.send(Op::Purge {
            topic: topic.to_string(),
        })
        .await
    }

    /// Removes the index of every topic not in `topics` (left by a topic
    /// delete that crashed before its purge was durable).
    pub(crate) async fn purge_others(&self, topics: Vec<String>) -> Result<()> {
        let db = Arc::clone(&self.db);
        let orphans = blocking(move || {
            let db = db.shared();
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(CHECKPOINTS).map_err(storage)?;
            let mut orphans = Vec::new();
            for entry in table.iter().map_err(storage)? {
                let (key, _) = entry.map_err(storage)?;
                let topic = key.value().0.to_owned();
                if !topics.contains(&topic) && !orphans.contains(&topic) {
                    orphans.push(topic);
                }
            }
            Ok(orphans)
        })
        .await?;
        for topic in orphans {
            self.send(Op::Purge { topic }).await?;
        }
        Ok(())
    }

    /// Brings the index of `topic` up to its log (see the module docs).
    pub(crate) async fn catch_up(&self, topic: &TopicRuntime) -> Result<()> {
        for partition in 0..topic.partition_count() {
            let reader = topic.handle(partition)?.reader().clone();
            let (db, name) = (Arc::clone(&self.db), topic.name.to_string());
            let indexed =
                blocking(move || catch_up_partition(&db.shared(), &name, partition, &reader))
                    .await?;
            if indexed > 0 {
                info!(topic = %topic.name, partition, records = indexed, "Stream index caught up with the log.");
            }
        }
        Ok(())
    }

    /// See [`herald_backend::Streams::append`].
    pub(crate) async fn append(
        self: &Arc<Self>,
        topic: Arc<TopicRuntime>,
        state: Arc<TopicStreams>,
        stream: &StreamId,
        mut events: Vec<EventInput>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        self.check_healthy()?;
        for input in &mut events {
            input.event.key = Some(stream.to_string());
            input.partition = None;
        }
        topic.info().spec.check_events(&events)?;
        let guard = self.locks.lock(topic.name.as_str(), stream.as_str()).await;
        let (store, stream) = (Arc::clone(self), stream.clone());
        // The critical section runs to completion even if the caller goes
        // away: see "Concurrency" in the module docs.
        tokio::spawn(async move {
            let result = store
                .append_locked(&topic, &state, &stream, events, expected)
                .await;
            drop(guard);
            result
        })
        .await
        .map_err(|error| Error::Unavailable {
            detail: format!("stream append task: {error}"),
        })?
    }

    async fn append_locked(
        &self,
        topic: &TopicRuntime,
        state: &TopicStreams,
        stream: &StreamId,
        events: Vec<EventInput>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        let row = match state.rows.get(stream.as_str()) {
            Some(row) => Some(row),
            None => self.row(&topic.name, stream).await?,
        };
        if row.is_some_and(Row::deleted) {
            return Err(Error::StreamDeleted {
                topic: topic.name.to_string(),
                stream: stream.to_string(),
            });
        }
        let current = row.map(|row| row.version);
        if !expected.admits(current) {
            return Err(Error::VersionConflict {
                stream: stream.to_string(),
                expected,
                current,
            });
        }
        let first_version = current.map_or(0, |version| version + 1);
        let partition = partition_for_key(stream.as_str().as_bytes(), topic.partition_count());
        let records = events
            .iter()
            .zip(first_version..)
            .map(|(input, version)| codec::encode_in_stream(&input.event, stream.as_str(), version))
            .collect();
        let tracker = Arc::clone(&state.trackers[partition as usize]);
        let low = tracker.register();
        let correlated = correlated_positions(events.iter().map(|input| &input.event));
        let ack = match topic.append(partition, records, &correlated).await {
            Ok(ack) => ack,
            Err(error) => {
                tracker.release(low);
                return Err(error);
            }
        };
        let count = events.len() as u64;
        let indexed = self
            .send(Op::Append {
                topic: topic.name.to_string(),
                stream: stream.to_string(),
                partition,
                first_version,
                base_offset: ack.base_offset,
                count,
                appended_at: ack.timestamp,
                tracker: Arc::clone(&tracker),
            })
            .await;
        tracker.release(low);
        if let Err(error) = indexed {
            self.failed.store(true, Ordering::SeqCst);
            lock(&self.failure).get_or_insert_with(|| {
                let since_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| {
                        i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
                    });
                (error.to_string(), since_ms)
            });
            error!(topic = %topic.name, stream = %stream, %error, "Stream index write failed after the log append; stream operations stop until the backend is reopened.");
            return Err(error);
        }
        // The row the index writer just committed (see `Tables::index`).
        let last_version = first_version + count - 1;
        state.rows.put(
            stream.as_str(),
            match row {
                Some(row) => Row {
                    version: row.version.max(last_version),
                    updated_at: row.updated_at.max(ack.timestamp),
                    ..row
                },
                None => Row {
                    version: last_version,
                    created_at: ack.timestamp,
                    updated_at: ack.timestamp,
                    state: LIVE,
                },
            },
        );
        let positions = events
            .into_iter()
            .zip(ack.base_offset..)
            .map(|(input, offset)| PublishResult {
                id: input.event.id,
                partition,
                offset,
                duplicate: false,
            })
            .collect();
        Ok(AppendResult {
            first_version,
            last_version,
            positions,
        })
    }

    async fn row(&self, topic: &TopicName, stream: &StreamId) -> Result<Option<Row>> {
        let (db, topic, stream) = (Arc::clone(&self.db), topic.to_string(), stream.to_string());
        blocking(move || {
            let db = db.shared();
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(STREAMS).map_err(storage)?;
            let row = table
                .get((topic.as_str(), stream.as_str()))
                .map_err(storage)?;
            Ok(row.map(|row| Row::from_tuple(row.value())))
        })
        .await
    }

    async fn live_row(&self, topic: &TopicName, stream: &StreamId) -> Result<Row> {
        self.check_healthy()?;
        match self.row(topic, stream).await? {
            Some(row) if !row.deleted() => Ok(row),
            _ => Err(not_found(topic, stream)),
        }
    }

    /// See [`herald_backend::Streams::read_stream`].
    pub(crate) async fn read(
        &self,
        topic: &TopicRuntime,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        let row = self.live_row(&topic.name, stream).await?;
        let limit = limit.max(1);
        let (db, name, id) = (
            Arc::clone(&self.db),
            topic.name.to_string(),
            stream.to_string(),
        );
        let entries = blocking(move || {
            let db = db.shared();
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(STREAM_EVENTS).map_err(storage)?;
            let (name, id) = (name.as_str(), id.as_str());
            let mut entries = Vec::with_capacity(limit.min(1024));
            let mut push = |entry: EventEntry<'_>| -> Result<()> {
                let (key, value) = entry.map_err(storage)?;
                let (partition, offset) = value.value();
                entries.push((key.value().2, partition, offset));
                Ok(())
            };
            match direction {
                Direction::Forward => {
                    let range = table
                        .range((name, id, from_version)..=(name, id, u64::MAX))
                        .map_err(storage)?;
                    for entry in range.take(limit) {
                        push(entry)?;
                    }
                }
                Direction::Backward => {
                    let range = table
                        .range((name, id, 0)..=(name, id, from_version))
                        .map_err(storage)?;
                    for entry in range.rev().take(limit) {
                        push(entry)?;
                    }
                }
            }
            Ok(entries)
        })
        .await?;
        let next_version = match (direction, entries.last()) {
            (Direction::Forward, Some(&(last, ..))) if last < row.version => Some(last + 1),
            (Direction::Backward, Some(&(last, ..))) if last > 0 => Some(last - 1),
            _ => None,
        };
        let events = self.fetch_events(topic, stream, entries).await?;
        Ok(StreamSlice {
            events,
            next_version,
        })
    }

    /// Reads the events at the given `(version, partition, offset)`s, one
    /// log read per event at most (neighbours read together are reused).
    async fn fetch_events(
        &self,
        topic: &TopicRuntime,
        stream: &StreamId,
        entries: Vec<(u64, u32, u64)>,
    ) -> Result<Vec<(u64, herald_types::StoredEvent)>> {
        let Some(&(_, partition, _)) = entries.first() else {
            return Ok(Vec::new());
        };
        let reader = topic.handle(partition)?.reader().clone();
        let (name, stream) = (topic.name.clone(), stream.to_string());
        blocking(move || {
            let mut wanted: Vec<u64> = entries.iter().map(|&(_, _, offset)| offset).collect();
            wanted.sort_unstable();
            let mut records: HashMap<u64, Record> = HashMap::with_capacity(wanted.len());
            for offset in wanted {
                if records.contains_key(&offset) {
                    continue;
                }
                let batch = match reader.read(offset, EVENT_READ_BYTES) {
                    Ok(batch) => batch,
                    // Removed by retention, or lost to damage: missing from
                    // the stream's reads.
                    Err(
                        herald_log::LogError::OffsetOutOfRange { .. }
                        | herald_log::LogError::Lost { .. },
                    ) => continue,
                    Err(error) => return Err(log_error(partition, error)),
                };
                for record in batch.records {
                    if record.offset >= offset {
                        records.insert(record.offset, record);
                    }
                }
            }
            let mut events = Vec::with_capacity(entries.len());
            for (version, partition, offset) in entries {
                let Some(record) = records.remove(&offset) else {
                    continue;
                };
                if codec::record_stream(&record) != Some((stream.as_str(), version)) {
                    return Err(Error::Corrupt {
                        detail: format!(
                            "stream index: {stream} version {version} points at partition {partition} offset {offset}, which holds another record"
                        ),
                    });
                }
                let event = codec::decode(&name, partition, record).map_err(|error| {
                    Error::Corrupt {
                        detail: error.to_string(),
                    }
                })?;
                events.push((version, event));
            }
            Ok(events)
        })
        .await
    }

    /// See [`herald_backend::Streams::stream_metadata`].
    pub(crate) async fn metadata(
        &self,
        topic: &TopicName,
        stream: &StreamId,
    ) -> Result<StreamMetadata> {
        self.check_healthy()?;
        let row = self
            .row(topic, stream)
            .await?
            .ok_or_else(|| not_found(topic, stream))?;
        Ok(StreamMetadata {
            stream: stream.clone(),
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            deleted: row.deleted(),
        })
    }

    /// See [`herald_backend::Streams::delete_stream`]. A hard delete returns
    /// the `(partition, offset)`s of the events it scheduled for erasure,
    /// durably recorded in `stream_erasures` (see `erasure.rs`).
    pub(crate) async fn delete(
        &self,
        topic: &TopicRuntime,
        state: &TopicStreams,
        stream: &StreamId,
        hard: bool,
    ) -> Result<Vec<(u32, u64)>> {
        self.check_healthy()?;
        let _guard = self.locks.lock(topic.name.as_str(), stream.as_str()).await;
        // Forgotten under the lock, whatever the outcome: the next append
        // reads the row the delete left.
        state.rows.forget(stream.as_str());
        self.request(Op::Delete {
            topic: topic.name.to_string(),
            stream: stream.to_string(),
            hard,
        })
        .await
    }

    /// Every partition's checkpoint `(topic, partition, offset)`: the next
    /// open re-indexes its log from there.
    pub(crate) async fn checkpoints(&self) -> Result<Vec<(String, u32, u64)>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let db = db.shared();
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(CHECKPOINTS).map_err(storage)?;
            let mut all = Vec::new();
            for entry in table.iter().map_err(storage)? {
                let (key, value) = entry.map_err(storage)?;
                let (topic, partition) = key.value();
                all.push((topic.to_owned(), partition, value.value()));
            }
            Ok(all)
        })
        .await
    }

    /// The erasures still pending compaction: per (topic, partition), the
    /// offsets, ascending.
    pub(crate) async fn pending_erasures(&self) -> Result<Vec<(String, u32, Vec<u64>)>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let db = db.shared();
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(ERASURES).map_err(storage)?;
            let mut pending: Vec<(String, u32, Vec<u64>)> = Vec::new();
            for entry in table.iter().map_err(storage)? {
                let (key, _) = entry.map_err(storage)?;
                let (topic, partition, offset) = key.value();
                match pending.last_mut() {
                    Some((last_topic, last_partition, offsets))
                        if last_topic == topic && *last_partition == partition =>
                    {
                        offsets.push(offset);
                    }
                    _ => pending.push((topic.to_owned(), partition, vec![offset])),
                }
            }
            Ok(pending)
        })
        .await
    }

    /// Compacts `streams.redb` so the pages freed by hard deletes (snapshot
    /// states, index entries) are dropped from the file or reused, rather than
    /// left behind with their old bytes. Waits for the transactions in
    /// flight and holds off new ones while it runs.
    pub(crate) async fn compact_file(&self) -> Result<()> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let mut db = db.0.write().unwrap_or_else(PoisonError::into_inner);
            db.compact().map_err(storage)?;
            Ok(())
        })
        .await
    }

    /// Forgets erasures the log has carried out. Durable when it returns.
    pub(crate) async fn erasures_done(
        &self,
        topic: &str,
        partition: u32,
        offsets: Vec<u64>,
    ) -> Result<()> {
        self.send(Op::Erased {
            topic: topic.to_owned(),
            partition,
            offsets,
        })
        .await
    }

    /// See [`herald_backend::Streams::put_snapshot`].
    pub(crate) async fn put_snapshot(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        version: u64,
        state: &serde_json::Value,
    ) -> Result<()> {
        self.check_healthy()?;
        let state = serde_json::to_vec(state)
            .map_err(|error| Error::invalid("state", error.to_string()))?;
        self.send(Op::Snapshot {
            topic: topic.to_string(),
            stream: stream.to_string(),
            version,
            state,
        })
        .await
    }

    /// See [`herald_backend::Streams::get_snapshot`].
    pub(crate) async fn get_snapshot(
        &self,
        topic: &TopicName,
        stream: &StreamId,
    ) -> Result<Option<Snapshot>> {
        self.live_row(topic, stream).await?;
        let (db, name, id) = (Arc::clone(&self.db), topic.to_string(), stream.to_string());
        let stored = blocking(move || {
            let db = db.shared();
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let stored = table.get((name.as_str(), id.as_str())).map_err(storage)?;
            Ok(stored.map(|stored| {
                let (version, state) = stored.value();
                (version, state.to_vec())
            }))
        })
        .await?;
        stored
            .map(|(version, state)| {
                let state = serde_json::from_slice(&state).map_err(|error| Error::Corrupt {
                    detail: format!("snapshot of {stream}: {error}"),
                })?;
                Ok(Snapshot { version, state })
            })
            .transpose()
    }
}

/// One entry of a `stream_events` range.
type EventEntry<'a> = std::result::Result<
    (
        redb::AccessGuard<'a, (&'static str, &'static str, u64)>,
        redb::AccessGuard<'a, (u32, u64)>,
    ),
    redb::StorageError,
>;

fn not_found(topic: &TopicName, stream: &StreamId) -> Error {
    Error::StreamNotFound {
        topic: topic.to_string(),
        stream: stream.to_string(),
    }
}

// ------------------------------------------------------------ the writer --

/// The index writer thread: group-commits queued requests (see the module
/// docs).
fn run_writer(index: &Index, requests: &mpsc::Receiver<Request>) {
    let mut last_durable = Instant::now();
    let mut pending_durability = false;
    let mut last_round = 0;
    loop {
        let first = if pending_durability {
            match requests.recv_timeout(IDLE_SYNC) {
                Ok(request) => request,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(error) = commit(&index.shared(), &mut [], true) {
                        error!(%error, "Stream index durable commit failed; will retry.");
                    } else {
                        pending_durability = false;
                        last_durable = Instant::now();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = commit(&index.shared(), &mut [], true);
                    return;
                }
            }
        } else {
            match requests.recv() {
                Ok(request) => request,
                Err(_) => return,
            }
        };
        // As in the log writer: wait (briefly) for as many requests as the
        // previous round carried, so one commit carries a whole cohort.
        let linger_until = Instant::now() + ROUND_LINGER;
        let mut round = vec![first];
        while round.len() < MAX_ROUND {
            let next = match requests.try_recv() {
                Ok(request) => Some(request),
                Err(_) if round.len() < last_round => requests
                    .recv_timeout(linger_until.saturating_duration_since(Instant::now()))
                    .ok(),
                Err(_) => None,
            };
            match next {
                Some(request) => round.push(request),
                None => break,
            }
        }
        last_round = round.len();
        let stop = round.iter().any(|request| matches!(request.op, Op::Stop));
        let durable = stop
            || round.iter().any(|request| request.op.needs_durability())
            || last_durable.elapsed() >= DURABLE_EVERY;
        let mut outcomes: Vec<Result<Outcome>> = round.iter().map(|_| Ok(Vec::new())).collect();
        let ops: Vec<&Op> = round.iter().map(|request| &request.op).collect();
        match commit_ops(&index.shared(), &ops, &mut outcomes, durable) {
            Ok(()) => {
                if durable {
                    last_durable = Instant::now();
                    pending_durability = false;
                } else {
                    pending_durability = true;
                }
            }
            Err(error) => {
                error!(%error, "Stream index commit failed.");
                outcomes = round.iter().map(|_| Err(error.clone())).collect();
            }
        }
        for (request, outcome) in round.into_iter().zip(outcomes) {
            let _ = request.done.send(outcome);
        }
        if stop {
            return;
        }
    }
}

fn commit(db: &Database, outcomes: &mut [Result<Outcome>], durable: bool) -> Result<()> {
    commit_ops(db, &[], outcomes, durable)
}

/// The tables of one index write transaction.
struct Tables<'txn> {
    streams: Table<'txn, (&'static str, &'static str), (u64, i64, i64, u8)>,
    events: Table<'txn, (&'static str, &'static str, u64), (u32, u64)>,
    positions: Table<'txn, (&'static str, u32, u64), (&'static str, u64)>,
    checkpoints: Table<'txn, (&'static str, u32), u64>,
    snapshots: Table<'txn, (&'static str, &'static str), (u64, &'static [u8])>,
    erasures: Table<'txn, (&'static str, u32, u64), ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> std::result::Result<Self, redb::Error> {
        Ok(Self {
            streams: txn.open_table(STREAMS)?,
            events: txn.open_table(STREAM_EVENTS)?,
            positions: txn.open_table(STREAM_POSITIONS)?,
            checkpoints: txn.open_table(CHECKPOINTS)?,
            snapshots: txn.open_table(SNAPSHOTS)?,
            erasures: txn.open_table(ERASURES)?,
        })
    }

    /// Records events `first_version..` of `stream` at `base_offset..`.
    /// Idempotent; a hard-deleted stream's events are not indexed again but
    /// scheduled for erasure (catch-up meeting events the delete did not
    /// know of).
    #[allow(clippy::too_many_arguments, reason = "one append's coordinates")]
    fn index(
        &mut self,
        topic: &str,
        stream: &str,
        partition: u32,
        first_version: u64,
        base_offset: u64,
        count: u64,
        appended_at: i64,
    ) -> std::result::Result<(), redb::Error> {
        let row = self
            .streams
            .get((topic, stream))?
            .map(|row| Row::from_tuple(row.value()));
        if count == 0 {
            return Ok(());
        }
        if row.is_some_and(|row| row.state == HARD_DELETED) {
            for offset in base_offset..base_offset + count {
                self.erasures.insert((topic, partition, offset), ())?;
            }
            return Ok(());
        }
        for index in 0..count {
            let (version, offset) = (first_version + index, base_offset + index);
            self.events
                .insert((topic, stream, version), (partition, offset))?;
            self.positions
                .insert((topic, partition, offset), (stream, version))?;
        }
        let last = first_version + count - 1;
        let row = match row {
            Some(row) => Row {
                version: row.version.max(last),
                updated_at: row.updated_at.max(appended_at),
                ..row
            },
            None => Row {
                version: last,
                created_at: appended_at,
                updated_at: appended_at,
                state: LIVE,
            },
        };
        self.streams.insert((topic, stream), row.tuple())?;
        Ok(())
    }

    fn delete(
        &mut self,
        topic: &str,
        stream: &str,
        hard: bool,
    ) -> std::result::Result<Result<Outcome>, redb::Error> {
        let Some(mut row) = self
            .streams
            .get((topic, stream))?
            .map(|row| Row::from_tuple(row.value()))
        else {
            return Ok(Err(Error::StreamNotFound {
                topic: topic.to_owned(),
                stream: stream.to_owned(),
            }));
        };
        if hard {
            let mut removed = Vec::new();
            for entry in self
                .events
                .extract_from_if((topic, stream, 0)..=(topic, stream, u64::MAX), |_, _| true)?
            {
                let (_, value) = entry?;
                removed.push(value.value());
            }
            for &(partition, offset) in &removed {
                self.positions.remove((topic, partition, offset))?;
                self.erasures.insert((topic, partition, offset), ())?;
            }
            self.snapshots.remove((topic, stream))?;
            row.state = HARD_DELETED;
            self.streams.insert((topic, stream), row.tuple())?;
            return Ok(Ok(removed));
        }
        row.state = row.state.max(SOFT_DELETED);
        self.streams.insert((topic, stream), row.tuple())?;
        Ok(Ok(Vec::new()))
    }

    fn snapshot(
        &mut self,
        topic: &str,
        stream: &str,
        version: u64,
        state: &[u8],
    ) -> std::result::Result<Result<Outcome>, redb::Error> {
        let row = self
            .streams
            .get((topic, stream))?
            .map(|row| Row::from_tuple(row.value()));
        match row {
            Some(row) if !row.deleted() => {
                if version > row.version {
                    return Ok(Err(Error::invalid(
                        "version",
                        format!(
                            "snapshot version {version} is past the stream's version {}",
                            row.version
                        ),
                    )));
                }
                self.snapshots.insert((topic, stream), (version, state))?;
                Ok(Ok(Vec::new()))
            }
            _ => Ok(Err(Error::StreamNotFound {
                topic: topic.to_owned(),
                stream: stream.to_owned(),
            })),
        }
    }

    fn purge(&mut self, topic: &str) -> std::result::Result<(), redb::Error> {
        self.streams.retain(|(name, _), _| name != topic)?;
        self.events.retain(|(name, _, _), _| name != topic)?;
        self.positions.retain(|(name, _, _), _| name != topic)?;
        self.checkpoints.retain(|(name, _), _| name != topic)?;
        self.snapshots.retain(|(name, _), _| name != topic)?;
        self.erasures.retain(|(name, _, _), _| name != topic)?;
        Ok(())
    }

    fn set_checkpoint(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> std::result::Result<(), redb::Error> {
        self.checkpoints.insert((topic, partition), offset)?;
        Ok(())
    }
}

/// Applies `ops` in one transaction; logical failures (a missing stream) go
/// to `outcomes`, storage failures fail the whole transaction.
fn commit_ops(
    db: &Database,
    ops: &[&Op],
    outcomes: &mut [Result<Outcome>],
    durable: bool,
) -> Result<()> {
    let mut run = || -> std::result::Result<(), redb::Error> {
        let mut txn = db.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None)?;
        }
        {
            let mut tables = Tables::open(&txn)?;
            let mut trackers: BTreeMap<(&str, u32), &Arc<PartitionTracker>> = BTreeMap::new();
            for (op, outcome) in ops.iter().zip(outcomes.iter_mut()) {
                match op {
                    Op::Append {
                        topic,
                        stream,
                        partition,
                        first_version,
                        base_offset,
                        count,
                        appended_at,
                        tracker,
                    } => {
                        tables.index(
                            topic,
                            stream,
                            *partition,
                            *first_version,
                            *base_offset,
                            *count,
                            *appended_at,
                        )?;
                        trackers.insert((topic.as_str(), *partition), tracker);
                    }
                    Op::Delete {
                        topic,
                        stream,
                        hard,
                    } => *outcome = tables.delete(topic, stream, *hard)?,
                    Op::Snapshot {
                        topic,
                        stream,
                        version,
                        state,
                    } => *outcome = tables.snapshot(topic, stream, *version, state)?,
                    Op::Checkpoint { partitions, .. } => {
                        for (topic, partition, tracker) in partitions {
                            trackers.insert((topic.as_str(), *partition), tracker);
                        }
                    }
                    Op::Purge { topic } => {
                        tables.purge(topic)?;
                        trackers.retain(|(name, _), _| name != topic);
                    }
                    Op::Erased {
                        topic,
                        partition,
                        offsets,
                    } => {
                        for offset in offsets {
                            tables
                                .erasures
                                .remove((topic.as_str(), *partition, *offset))?;
                        }
                    }
                    Op::Stop => {}
                }
            }
            for ((topic, partition), tracker) in trackers {
                let checkpoint = tracker.checkpoint();
                let current = tables
                    .checkpoints
                    .get((topic, partition))?
                    .map_or(0, |stored| stored.value());
                if checkpoint > current {
                    tables.set_checkpoint(topic, partition, checkpoint)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    };
    run().map_err(storage)
}

/// Repairs and catches up one partition's index (see "Recovery"). Returns
/// how many stream records were indexed.
fn catch_up_partition(
    db: &Database,
    topic: &str,
    partition: u32,
    reader: &LogReader,
) -> Result<u64> {
    let end = reader.end_offset();
    // 1. Entries past the log's end: the log lost an unsynced tail.
    let txn = db.begin_write().map_err(storage)?;
    let mut from = {
        let mut tables = Tables::open(&txn).map_err(storage)?;
        let mut lost: Vec<(String, u64)> = Vec::new();
        for entry in tables
            .positions
            .extract_from_if(
                (topic, partition, end)..=(topic, partition, u64::MAX),
                |_, _| true,
            )
            .map_err(storage)?
        {
            let (_, value) = entry.map_err(storage)?;
            let (stream, version) = value.value();
            lost.push((stream.to_owned(), version));
        }
        for (stream, version) in &lost {
            tables
                .events
                .remove((topic, stream.as_str(), *version))
                .map_err(storage)?;
        }
        for (stream, _) in &lost {
            let last = tables
                .events
                .range((topic, stream.as_str(), 0)..=(topic, stream.as_str(), u64::MAX))
                .map_err(storage)?
                .next_back()
                .transpose()
                .map_err(storage)?
                .map(|(key, _)| key.value().2);
            let row = tables
                .streams
                .get((topic, stream.as_str()))
                .map_err(storage)?
                .map(|row| Row::from_tuple(row.value()));
            match (last, row) {
                (Some(version), Some(row)) => {
                    let row = Row { version, ..row };
                    tables
                        .streams
                        .insert((topic, stream.as_str()), row.tuple())
                        .map_err(storage)?;
                }
                (None, Some(row)) if row.state == LIVE => {
                    tables
                        .streams
                        .remove((topic, stream.as_str()))
                        .map_err(storage)?;
                }
                _ => {}
            }
        }
        if !lost.is_empty() {
            info!(
                topic,
                partition,
                entries = lost.len(),
                "Removed stream index entries past the end of the log."
            );
        }
        let checkpoint = tables
            .checkpoints
            .get((topic, partition))
            .map_err(storage)?
            .map_or(0, |stored| stored.value());
        checkpoint.min(end).max(reader.start_offset())
    };
    txn.commit().map_err(storage)?;

    // 2. Index the log from the checkpoint to its end.
    let mut indexed = 0;
    while from < end {
        let batch = reader
            .read_skipping_lost(from, CATCH_UP_BYTES)
            .map_err(|error| log_error(partition, error))?;
        if batch.records.is_empty() {
            break;
        }
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut tables = Tables::open(&txn).map_err(storage)?;
            for record in &batch.records {
                if let Some((stream, version)) = codec::record_stream(record) {
                    tables
                        .index(
                            topic,
                            stream,
                            partition,
                            version,
                            record.offset,
                            1,
                            record.timestamp,
                        )
                        .map_err(storage)?;
                    indexed += 1;
                }
            }
            tables
                .set_checkpoint(topic, partition, batch.next_offset)
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        from = batch.next_offset;
    }
    Ok(indexed)
}

// ----------------------------------------------------- per-stream locks --

/// Per-stream async locks in a sharded map; an entry lives only while
/// someone holds or waits for it.
#[derive(Debug)]
struct StreamLocks {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Holds a stream's lock; removes the map entry on drop when no one else
/// wants it.
pub(crate) struct StreamGuard {
    locks: Arc<StreamLocks>,
    key: String,
    entry: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl StreamLocks {
    fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..LOCK_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[index]
    }

    async fn lock(self: &Arc<Self>, topic: &str, stream: &str) -> StreamGuard {
        let key = format!("{topic}/{stream}");
        let entry = Arc::clone(lock(self.shard(&key)).entry(key.clone()).or_default());
        let guard = Arc::clone(&entry).lock_owned().await;
        StreamGuard {
            locks: Arc::clone(self),
            key,
            entry,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut shard = lock(self.locks.shard(&self.key));
        // The map's reference and ours: no one else holds or waits.
        if Arc::strong_count(&self.entry) == 2 {
            shard.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[tokio::test]
    async fn given_stream_locks_when_released_should_leave_no_entry_behind() {
        let locks = Arc::new(StreamLocks::new());
        {
            let _first = locks.lock("t", "a").await;
            let _other = locks.lock("t", "b").await;
            assert_eq!(locks.len(), 2);
        }
        assert_eq!(locks.len(), 0, "idle streams must not stay in memory");
    }

    #[tokio::test]
    async fn given_a_held_stream_lock_when_another_waits_should_serialize_and_then_clean_up() {
        let locks = Arc::new(StreamLocks::new());
        let held = locks.lock("t", "a").await;
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _guard = locks.lock("t", "a").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0);
    }
}
