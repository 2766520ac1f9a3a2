//! Metadata in redb (`<data_dir>/meta.redb`): topics, groups, group state,
//! dead letters and the small key-value state.
//!
//! Every call is one write or read transaction and does blocking I/O: the
//! backend runs them on `spawn_blocking`. Write transactions commit with
//! redb's default (immediate, fsynced) durability, so what a call wrote
//! survives a crash once it returns; the one exception is
//! [`Meta::kv_put_many`] with [`KvDurability::Deferred`], which commits
//! without an fsync and is made durable by the next durable commit (every
//! commit covers the ones before it): the next group-state flush, or an
//! empty one ([`Meta::sync_deferred`]) when no group changed.
//!
//! | table | key | value |
//! |---|---|---|
//! | `topics` | topic | JSON [`TopicInfo`] |
//! | `groups` | `topic/group` | JSON [`GroupInfo`] |
//! | `group_state` | `topic/group` | JSON queue or stream snapshot |
//! | `dead_letters` | (`topic/group`, id) | JSON [`DeadLetterRecord`] |
//! | `dead_letter_ids` | `topic/group` | last dead-letter id given out |
//! | `dead_letter_copies` | (`topic/group`, id) | JSON [`DeadLetterRecord`]: copy to publish |
//! | `kv` | (bucket, key) | (revision, value) |
//! | `kv_revisions` | bucket | last revision given out |
//!
//! `/` cannot occur in names, so `topic/group` is unambiguous.
//!
//! Group state, the dead letters it produced, the copies still to publish to
//! the dead-letter topic and the dead letters a redrive took off the list are
//! written in one transaction ([`Meta::commit_groups`]): a crash or a failed
//! write leaves all of them or none. Dead-letter ids are never reused within
//! a group (`dead_letter_ids`), so a copy's event id, built from its id, is
//! unique and a republished copy is deduplicated.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use herald_backend::{
    Error, Expect, GroupInfo, KvDurability, KvEntry, PartitionOffset, Result, TopicInfo,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

const TOPICS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("topics");
const GROUPS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("groups");
const GROUP_STATE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("group_state");
const DEAD_LETTERS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("dead_letters");
const DEAD_LETTER_IDS: TableDefinition<'_, &str, u64> = TableDefinition::new("dead_letter_ids");
const DEAD_LETTER_COPIES: TableDefinition<'_, (&str, u64), &[u8]> =
    TableDefinition::new("dead_letter_copies");
const KV: TableDefinition<'_, (&str, &str), (u64, &[u8])> = TableDefinition::new("kv");
const KV_REVISIONS: TableDefinition<'_, &str, u64> = TableDefinition::new("kv_revisions");

/// A dead letter as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeadLetterRecord {
    pub(crate) original: PartitionOffset,
    pub(crate) reason: String,
    pub(crate) attempts: u32,
    pub(crate) dead_at: i64,
}

/// A stored group: its key, settings and persisted state.
pub(crate) type StoredGroup = (String, GroupInfo, Option<Vec<u8>>);

/// One group's part of a [`Meta::commit_groups`] transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupWrite {
    pub(crate) key: String,
    pub(crate) state: Vec<u8>,
    /// Dead letters to append to the list.
    pub(crate) buried: Vec<DeadLetterRecord>,
    /// Whether each also gets a copy on the topic's dead-letter topic.
    pub(crate) copy: bool,
    /// Dead-letter ids to take off the list (redriven).
    pub(crate) unlisted: Vec<u64>,
}

/// A dead letter whose copy is still to be published: its group's key, its
/// id in the group's list, the record.
pub(crate) type PendingCopy = (String, u64, DeadLetterRecord);

/// Injected failures of metadata writes: the seam that lets tests make
/// group state, dead letters and kv writes fail (as a full or failing disk
/// would) and then recover. A write chosen to fail runs its transaction and
/// then rolls it back instead of committing; the caller gets the error a
/// failed commit gives (`unavailable`). Pass it in `EmbeddedOptions`.
#[derive(Debug, Default)]
pub struct MetaFaults {
    fail_next: AtomicU64,
    fail_all: AtomicBool,
    failed: AtomicU64,
}

impl MetaFaults {
    /// No failures until armed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Fails the next `writes` write transactions.
    pub fn fail_next_writes(&self, writes: u64) {
        self.fail_next.store(writes, Ordering::SeqCst);
    }

    /// Fails every write transaction while `on`.
    pub fn fail_writes(&self, on: bool) {
        self.fail_all.store(on, Ordering::SeqCst);
    }

    /// How many writes were failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    fn should_fail(&self) -> bool {
        let fail = self.fail_all.load(Ordering::SeqCst)
            || self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
        if fail {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        fail
    }
}

/// The metadata store.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    store: Arc<Store>,
    faults: Option<Arc<MetaFaults>>,
}

/// The database, and how it recovers from a failed write: redb fails every
/// later operation (`PreviousIo`) after one failed write or fsync, until the
/// database is reopened. So a failed write records the failure, and the next
/// call after [`REOPEN_BACKOFF`] reopens the file (redb repairs it from its
/// last committed transaction) and proves it takes a durable commit; until
/// then calls fail with `storage_unavailable` and [`Meta::failure`] says why.
#[derive(Debug)]
struct Store {
    path: PathBuf,
    /// redb's page cache, in bytes (kept for a reopen).
    cache_bytes: usize,
    /// `None` only while a reopen has closed the old database and could not
    /// open the new one.
    db: RwLock<Option<Arc<Database>>>,
    failure: Mutex<Option<StoreFailure>>,
    /// A commit without an fsync ([`KvDurability::Deferred`]) awaits a
    /// durable one.
    deferred: AtomicBool,
}

#[derive(Debug, Clone)]
struct StoreFailure {
    error: String,
    since_ms: i64,
    next_reopen: Instant,
}

/// How long after a failed write (or reopen) the store tries to reopen.
pub(crate) const REOPEN_BACKOFF: Duration = Duration::from_millis(200);

/// The key of a group in the group tables.
pub(crate) fn group_key(topic: &str, group: &str) -> String {
    format!("{topic}/{group}")
}

fn storage(error: impl std::fmt::Display) -> Error {
    Error::StorageUnavailable {
        detail: format!("metadata store: {error}"),
    }
}

/// Whether redb failed on the disk (and needs reopening), rather than on
/// the data.
fn is_io(error: &redb::Error) -> bool {
    matches!(error, redb::Error::Io(_) | redb::Error::PreviousIo)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|error| Error::Corrupt {
        detail: format!("encoding metadata: {error}"),
    })
}

fn from_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| Error::Corrupt {
        detail: format!("{what}: {error}"),
    })
}

impl Meta {
    /// Opens (or creates) the store at `path` and its tables, with a page
    /// cache of at most `cache_bytes`.
    pub(crate) fn open(
        path: &Path,
        cache_bytes: usize,
        faults: Option<Arc<MetaFaults>>,
    ) -> Result<Self> {
        let db = Self::open_database(path, cache_bytes)?;
        Ok(Self {
            store: Arc::new(Store {
                path: path.to_path_buf(),
                cache_bytes,
                db: RwLock::new(Some(Arc::new(db))),
                failure: Mutex::new(None),
                deferred: AtomicBool::new(false),
            }),
            faults,
        })
    }

    fn open_database(path: &Path, cache_bytes: usize) -> Result<Database> {
        let db = crate::redb_database(path, cache_bytes)
            .map_err(|error| storage(format!("{}: {error}", path.display())))?;
        let txn = db.begin_write().map_err(storage)?;
        {
            txn.open_table(TOPICS).map_err(storage)?;
            txn.open_table(GROUPS).map_err(storage)?;
            txn.open_table(GROUP_STATE).map_err(storage)?;
            txn.open_table(DEAD_LETTERS).map_err(storage)?;
            txn.open_table(DEAD_LETTER_IDS).map_err(storage)?;
            txn.open_table(DEAD_LETTER_COPIES).map_err(storage)?;
            txn.open_table(KV).map_err(storage)?;
            txn.open_table(KV_REVISIONS).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(db)
    }

    /// Why the store refuses calls, while it does: (error, since ms).
    pub(crate) fn failure(&self) -> Option<(String, i64)> {
        lock(&self.store.failure)
            .as_ref()
            .map(|failure| (failure.error.clone(), failure.since_ms))
    }

    /// Reopens a failed store if its backoff has passed (the backend's
    /// `storage-probe` task calls this, so the store recovers, and readiness
    /// clears, without waiting for a call). Blocking I/O.
    pub(crate) fn probe(&self) {
        let _ = self.db();
    }

    /// The database, reopening it first if a write failed and the backoff
    /// has passed.
    fn db(&self) -> Result<Arc<Database>> {
        let due = lock(&self.store.failure)
            .as_ref()
            .map(|failure| failure.next_reopen <= Instant::now());
        if due == Some(true) {
            self.reopen();
        }
        if let Some(failure) = lock(&self.store.failure).as_ref() {
            return Err(storage(format!(
                "{} failed a write ({}); retrying",
                self.store.path.display(),
                failure.error
            )));
        }
        self.store
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| storage("reopening"))
    }

    /// Maps a redb error; one from the disk fails the store until a reopen.
    fn failed(&self, error: impl Into<redb::Error>) -> Error {
        let error = error.into();
        if is_io(&error) {
            let mut failure = lock(&self.store.failure);
            if failure.is_none() {
                tracing::error!(path = %self.store.path.display(), %error, "Metadata store write failed; refusing calls until it is reopened (retrying).");
                *failure = Some(StoreFailure {
                    error: error.to_string(),
                    since_ms: now_ms(),
                    next_reopen: Instant::now() + REOPEN_BACKOFF,
                });
            }
        }
        storage(error)
    }

    /// Closes the failed database, opens it again and proves a durable
    /// commit works; on success the store serves again.
    fn reopen(&self) {
        let mut slot = self
            .store
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // redb refuses to open a file this process still has open: the old
        // database goes first (a call still holding it keeps it alive, and
        // the open fails until it is done).
        drop(slot.take());
        let reopened = Self::open_database(&self.store.path, self.store.cache_bytes);
        let mut failure = lock(&self.store.failure);
        match reopened {
            Ok(db) => {
                *slot = Some(Arc::new(db));
                *failure = None;
                tracing::info!(path = %self.store.path.display(), "Metadata store reopened after its failed write; serving again.");
            }
            Err(error) => {
                tracing::debug!(path = %self.store.path.display(), %error, "Metadata store still failing; will retry.");
                if let Some(failure) = failure.as_mut() {
                    failure.next_reopen = Instant::now() + REOPEN_BACKOFF;
                }
            }
        }
    }

    pub(crate) fn topics(&self) -> Result<Vec<TopicInfo>> {
        let txn = self
            .db()?
            .begin_read()
            .map_err(|error| self.failed(error))?;
        let table = txn.open_table(TOPICS).map_err(storage)?;
        let mut topics = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (_, value) = entry.map_err(storage)?;
            topics.push(from_json("topic", value.value())?);
        }
        Ok(topics)
    }

    pub(crate) fn put_topic(&self, info: &TopicInfo) -> Result<()> {
        let bytes = to_json(info)?;
        self.write(|txn| {
            txn.open_table(TOPICS)?
                .insert(info.spec.name.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// Removes the topic and everything of its groups.
    pub(crate) fn delete_topic(&self, topic: &str) -> Result<()> {
        let prefix = format!("{topic}/");
        self.write(|txn| {
            txn.open_table(TOPICS)?.remove(topic)?;
            for table in [GROUPS, GROUP_STATE] {
                let mut table = txn.open_table(table)?;
                table.retain(|key, _| !key.starts_with(&prefix))?;
            }
            txn.open_table(DEAD_LETTERS)?
                .retain(|(key, _), _| !key.starts_with(&prefix))?;
            Ok(())
        })
    }

    pub(crate) fn groups(&self) -> Result<Vec<StoredGroup>> {
        let txn = self
            .db()?
            .begin_read()
            .map_err(|error| self.failed(error))?;
        let groups = txn.open_table(GROUPS).map_err(storage)?;
        let states = txn.open_table(GROUP_STATE).map_err(storage)?;
        let mut found = Vec::new();
        for entry in groups.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let key = key.value().to_owned();
            let info: GroupInfo = from_json("group", value.value())?;
            let state = states
                .get(key.as_str())
                .map_err(storage)?
                .map(|state| state.value().to_vec());
            found.push((key, info, state));
        }
        Ok(found)
    }

    /// Stores a group's settings, and its state if given.
    pub(crate) fn put_group(
        &self,
        key: &str,
        info: &GroupInfo,
        state: Option<&[u8]>,
    ) -> Result<()> {
        let bytes = to_json(info)?;
        self.write(|txn| {
            txn.open_table(GROUPS)?.insert(key, bytes.as_slice())?;
            if let Some(state) = state {
                txn.open_table(GROUP_STATE)?.insert(key, state)?;
            }
            Ok(())
        })
    }

    pub(crate) fn delete_group(&self, key: &str) -> Result<()> {
        self.write(|txn| {
            txn.open_table(GROUPS)?.remove(key)?;
            txn.open_table(GROUP_STATE)?.remove(key)?;
            txn.open_table(DEAD_LETTERS)?
                .retain(|(group, _), _| group != key)?;
            Ok(())
        })
    }

    /// Stores the state of several groups in one transaction (one fsync),
    /// with the dead letters each produced (and their copies to publish)
    /// and the dead letters each redrive took off the list: all or nothing.
    /// A group deleted meanwhile stays deleted. Returns how many dead
    /// letters were recorded.
    pub(crate) fn commit_groups(&self, writes: &[GroupWrite]) -> Result<u64> {
        if writes.is_empty() {
            return Ok(0);
        }
        let encoded: Vec<Vec<Vec<u8>>> = writes
            .iter()
            .map(|write| write.buried.iter().map(to_json).collect::<Result<_>>())
            .collect::<Result<_>>()?;
        self.write(|txn| {
            let groups = txn.open_table(GROUPS)?;
            let mut states = txn.open_table(GROUP_STATE)?;
            let mut letters = txn.open_table(DEAD_LETTERS)?;
            let mut last_ids = txn.open_table(DEAD_LETTER_IDS)?;
            let mut copies = txn.open_table(DEAD_LETTER_COPIES)?;
            let mut recorded = 0;
            for (write, buried) in writes.iter().zip(&encoded) {
                let key = write.key.as_str();
                if groups.get(key)?.is_none() {
                    continue;
                }
                states.insert(key, write.state.as_slice())?;
                if !buried.is_empty() {
                    // Ids are never reused: from the last one given out (or,
                    // for a list older than that table, its last entry).
                    let last = match last_ids.get(key)?.map(|last| last.value()) {
                        Some(last) => last,
                        None => letters
                            .range((key, 0)..=(key, u64::MAX))?
                            .next_back()
                            .transpose()?
                            .map_or(0, |(id, _)| id.value().1),
                    };
                    for (id, bytes) in (last + 1..).zip(buried) {
                        letters.insert((key, id), bytes.as_slice())?;
                        if write.copy {
                            copies.insert((key, id), bytes.as_slice())?;
                        }
                    }
                    last_ids.insert(key, last + buried.len() as u64)?;
                    recorded += buried.len() as u64;
                }
                for id in &write.unlisted {
                    letters.remove((key, *id))?;
                }
            }
            Ok(recorded)
        })
    }

    /// Dead-letter copies still to publish, oldest first, at most `limit`.
    pub(crate) fn pending_copies(&self, limit: usize) -> Result<Vec<PendingCopy>> {
        let txn = self
            .db()?
            .begin_read()
            .map_err(|error| self.failed(error))?;
        let table = txn.open_table(DEAD_LETTER_COPIES).map_err(storage)?;
        let mut found = Vec::new();
        for entry in table.iter().map_err(storage)?.take(limit) {
            let (key, value) = entry.map_err(storage)?;
            let (group, id) = key.value();
            found.push((
                group.to_owned(),
                id,
                from_json("dead-letter copy", value.value())?,
            ));
        }
        Ok(found)
    }

    /// Forgets copies that were published (or cannot be).
    pub(crate) fn copies_done(&self, done: &[(String, u64)]) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let mut table = txn.open_table(DEAD_LETTER_COPIES)?;
            for (group, id) in done {
                table.remove((group.as_str(), *id))?;
            }
            Ok(())
        })
    }

    /// Dead letters of a group by id (all of them when `ids` is `None`).
    pub(crate) fn dead_letters_by_id(
        &self,
        key: &str,
        ids: Option<&[u64]>,
    ) -> Result<Vec<(u64, DeadLetterRecord)>> {
        let Some(ids) = ids else {
            return self.dead_letters(key, usize::MAX);
        };
        let txn = self
            .db()?
            .begin_read()
            .map_err(|error| self.failed(error))?;
        let table = txn.open_table(DEAD_LETTERS).map_err(storage)?;
        let mut found = Vec::new();
        for &id in ids {
            if let Some(value) = table.get((key, id)).map_err(storage)? {
                found.push((id, from_json("dead letter", value.value())?));
            }
        }
        Ok(found)
    }

    /// Up to `limit` dead letters of a group, oldest first.
    pub(crate) fn dead_letters(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetterRecord)>> {
        let txn = self
            .db()?
            .begin_read()
            .map_err(|error| self.failed(error))?;
        let table = txn.open_table(DEAD_LETTERS).map_err(storage)?;
        let mut found = Vec::new();
        for entry in table
            .range((key, 0)..=(key, u64::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (id, value) = entry.map_err(storage)?;
            found.push((id.value().1, from_json("dead letter", value.value())?));
        }
        Ok(found)
    }

    pub(crate) fn dead_letter_count(&self, key: &str) -> Result<u64> {
        let txn = self
            .db()?
            .begin_read()
            .map_err(|error| self.failed(error))?;
        let table = txn.open_table(DEAD_LETTERS).map_err(storage)?;
        let count = table
            .range((key, 0)..=(key, u64::MAX))
            .map_err(storage)?
            .count();
        Ok(count as u64)
    }

    pub(crate) fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>> {
        let txn = self
            .db()?
            .begin_read()
            .map_err(|error| self.failed(error))?;
        let table = txn.open_table(KV).map_err(storage)?;
        let entry = table.get((bucket, key)).map_err(storage)?;
        Ok(entry.map(|entry| {
            let (revision, value) = entry.value();
            KvEntry {
                value: bytes::Bytes::copy_from_slice(value),
                revision,
            }
        }))
    }

    pub(crate) fn kv_put(
        &self,
        bucket: &str,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<u64> {
        self.write(|txn| {
            let mut table = txn.open_table(KV)?;
            let current = table.get((bucket, key))?.map(|entry| entry.value().0);
            if let Some(mismatch) = mismatch(key, current, expect) {
                return Ok(Err(mismatch));
            }
            let mut revisions = txn.open_table(KV_REVISIONS)?;
            let revision = revisions.get(bucket)?.map_or(0, |last| last.value()) + 1;
            revisions.insert(bucket, revision)?;
            table.insert((bucket, key), (revision, value))?;
            Ok(Ok(revision))
        })?
    }

    /// Writes every entry in one transaction, with an fsync or, when
    /// `durability` is [`KvDurability::Deferred`], without one (made
    /// durable by the next durable commit).
    pub(crate) fn kv_put_many(
        &self,
        entries: &[(String, String, bytes::Bytes)],
        durability: KvDurability,
    ) -> Result<()> {
        let durable = durability == KvDurability::Sync;
        self.write_with(durable, |txn| {
            let mut table = txn.open_table(KV)?;
            let mut revisions = txn.open_table(KV_REVISIONS)?;
            // Each bucket's last revision is read and written once, not per
            // entry (a batch is mostly one or two buckets).
            let mut last: Vec<(&str, u64)> = Vec::new();
            for (bucket, key, value) in entries {
                let slot = match last.iter().position(|(name, _)| *name == bucket.as_str()) {
                    Some(slot) => slot,
                    None => {
                        let current = revisions
                            .get(bucket.as_str())?
                            .map_or(0, |last| last.value());
                        last.push((bucket.as_str(), current));
                        last.len() - 1
                    }
                };
                last[slot].1 += 1;
                table.insert(
                    (bucket.as_str(), key.as_str()),
                    (last[slot].1, value.as_ref()),
                )?;
            }
            for (bucket, revision) in last {
                revisions.insert(bucket, revision)?;
            }
            Ok(())
        })
    }

    /// Whether a deferred write awaits a durable commit.
    pub(crate) fn has_deferred(&self) -> bool {
        self.store.deferred.load(Ordering::SeqCst)
    }

    /// Makes a deferred write durable with an empty durable commit, if one
    /// awaits it; `false` when none did.
    pub(crate) fn sync_deferred(&self) -> Result<bool> {
        if !self.has_deferred() {
            return Ok(false);
        }
        self.write(|_| Ok(()))?;
        Ok(true)
    }

    pub(crate) fn kv_delete(&self, bucket: &str, key: &str, expect: Expect) -> Result<bool> {
        self.write(|txn| {
            let mut table = txn.open_table(KV)?;
            let current = table.get((bucket, key))?.map(|entry| entry.value().0);
            if let Some(mismatch) = mismatch(key, current, expect) {
                return Ok(Err(mismatch));
            }
            Ok(Ok(table.remove((bucket, key))?.is_some()))
        })?
    }

    /// Deletes every entry in one transaction (one fsync); returns how
    /// many were there.
    pub(crate) fn kv_delete_many(&self, entries: &[(String, String)]) -> Result<u64> {
        self.write(|txn| {
            let mut table = txn.open_table(KV)?;
            let mut deleted = 0;
            for (bucket, key) in entries {
                if table.remove((bucket.as_str(), key.as_str()))?.is_some() {
                    deleted += 1;
                }
            }
            Ok(deleted)
        })
    }

    pub(crate) fn kv_keys(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let txn = self
            .db()?
            .begin_read()
            .map_err(|error| self.failed(error))?;
        let table = txn.open_table(KV).map_err(storage)?;
        let start = after.map_or(prefix, |after| after.max(prefix));
        let mut keys = Vec::new();
        for entry in table.range((bucket, start)..).map_err(storage)? {
            let (key, _) = entry.map_err(storage)?;
            let (entry_bucket, entry_key) = key.value();
            if entry_bucket != bucket || !entry_key.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|after| entry_key <= after) {
                continue;
            }
            keys.push(entry_key.to_owned());
            if keys.len() >= limit {
                break;
            }
        }
        Ok(keys)
    }

    /// Runs `body` in one write transaction and commits it durably.
    fn write<T>(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        self.write_with(true, body)
    }

    /// Runs `body` in one write transaction and commits it, durably (an
    /// fsync, which makes every commit before it durable too) or not.
    fn write_with<T>(
        &self,
        durable: bool,
        body: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(|error| self.failed(error))?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|error| self.failed(error))?;
        }
        let value = body(&txn).map_err(|error| self.failed(error))?;
        if self
            .faults
            .as_ref()
            .is_some_and(|faults| faults.should_fail())
        {
            txn.abort().map_err(|error| self.failed(error))?;
            return Err(storage("injected write failure (MetaFaults)"));
        }
        // Cleared while this transaction holds the write lock: a deferred
        // commit after this one sets it again once it has committed.
        let deferred = durable && self.store.deferred.swap(false, Ordering::SeqCst);
        if let Err(error) = txn.commit() {
            if deferred {
                self.store.deferred.store(true, Ordering::SeqCst);
            }
            return Err(self.failed(error));
        }
        if !durable {
            self.store.deferred.store(true, Ordering::SeqCst);
        }
        Ok(value)
    }
}

fn mismatch(key: &str, current: Option<u64>, expect: Expect) -> Option<Error> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Revision(revision) => current == Some(revision),
    };
    let expected = match expect {
        Expect::Revision(revision) => Some(revision),
        Expect::Any | Expect::Absent => None,
    };
    (!ok).then(|| Error::RevisionMismatch {
        key: key.to_owned(),
        expected,
        current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// redb keeps each page it writes in its cache up to the cache's size
    /// (1 GiB unless told otherwise), so a store's memory grew with its file:
    /// it stays within the size it is opened with.
    #[test]
    fn given_a_small_cache_when_the_file_grows_past_it_should_keep_the_cache_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, cache) = (dir.path().join("meta.redb"), 1 << 20);
        let meta = Meta::open(&path, cache, None).unwrap();
        let value = vec![7_u8; 64 << 10];
        for key in 0..128 {
            meta.kv_put("test", &format!("k{key:03}"), &value, Expect::Any)
                .unwrap();
        }
        let file = std::fs::metadata(&path).unwrap().len();
        assert!(file > 4 * cache as u64, "the file is only {file} bytes");
        let used = meta.db().unwrap().cache_stats().used_bytes();
        assert!(used > 0 && used <= cache, "{used} bytes cached");
    }

    fn entry(key: &str) -> (String, String, bytes::Bytes) {
        (
            "b".to_owned(),
            key.to_owned(),
            bytes::Bytes::from_static(b"v"),
        )
    }

    /// A deferred batch waits for a durable commit: the next durable write
    /// covers it, or `sync_deferred` makes one; a synced batch leaves none.
    #[test]
    fn given_a_deferred_batch_when_a_durable_commit_follows_should_no_longer_wait_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.redb"), 1 << 20, None).unwrap();
        meta.kv_put_many(&[entry("a")], KvDurability::Sync).unwrap();
        assert!(
            !meta.sync_deferred().unwrap(),
            "a synced batch needs no sync"
        );

        meta.kv_put_many(&[entry("b")], KvDurability::Deferred)
            .unwrap();
        assert!(meta.sync_deferred().unwrap(), "a deferred batch needs one");
        assert!(!meta.sync_deferred().unwrap(), "one sync covers it");

        meta.kv_put_many(&[entry("c")], KvDurability::Deferred)
            .unwrap();
        meta.kv_put("b", "d", b"v", Expect::Any).unwrap();
        assert!(!meta.sync_deferred().unwrap(), "a durable write covered it");
    }

    /// Revisions grow by one per entry across buckets in one batch, as
    /// they do one write at a time.
    #[test]
    fn given_a_batch_over_two_buckets_when_written_should_number_each_bucket_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.redb"), 1 << 20, None).unwrap();
        meta.kv_put("x", "first", b"v", Expect::Any).unwrap();
        let batch = [
            (
                "x".to_owned(),
                "k1".to_owned(),
                bytes::Bytes::from_static(b"1"),
            ),
            (
                "y".to_owned(),
                "k1".to_owned(),
                bytes::Bytes::from_static(b"1"),
            ),
            (
                "x".to_owned(),
                "k2".to_owned(),
                bytes::Bytes::from_static(b"2"),
            ),
        ];
        meta.kv_put_many(&batch, KvDurability::Deferred).unwrap();
        let revision =
            |bucket: &str, key: &str| meta.kv_get(bucket, key).unwrap().unwrap().revision;
        assert_eq!(
            (
                revision("x", "k1"),
                revision("y", "k1"),
                revision("x", "k2")
            ),
            (2, 1, 3)
        );
        assert_eq!(meta.kv_put("x", "k3", b"v", Expect::Any).unwrap(), 4);
    }
}
