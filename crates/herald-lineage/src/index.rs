//! The index: every event that carries a `correlationid` or `causationid`,
//! under both, and under its own id, in the backend's `Kv` (bucket
//! [`BUCKET`]). Events with neither cost a read and nothing else.
//!
//! | key | value |
//! |---|---|
//! | `c.<h(correlationid)>.<position>` | the event's [`Entry`] |
//! | `k.<h(causationid)>.<position>` | the same |
//! | `i.<h(id)>.<position>` | the same |
//! | `x.<position>` | the event's keys above (to remove them) |
//! | `p.<t(topic)>.<partition>` | the next offset to index (a checkpoint) |
//!
//! `h` is the first 16 bytes of SHA-256 in hex (ids of any length and
//! character make keys of one length and alphabet, which every backend's
//! `Kv` takes), `t` its first 8; `<position>` is
//! `<t(topic)>.<partition>.<offset>` (20 digits), so one event is one key
//! per index.
//!
//! The index follows the log's retention: when a partition's first offset
//! moves on, the entries of the events before it go (through their `x`
//! keys), and so do all of a topic's when it is deleted (or made again:
//! its offsets start over). The entries keep the id itself, and a query
//! drops any entry whose id is not the one asked for.
//!
//! [`Indexer`] follows every partition of every topic from its checkpoint,
//! reads what was appended since, and writes the batch's entries and the
//! new checkpoint in one `kv_put_many`: after a crash it reads again from
//! the last checkpoint, and writing an entry twice writes the same key. A
//! query first asks it for a pass that starts after the query
//! ([`IndexerHandle::caught_up`]), so what was appended before is listed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use herald_backend::{Backend, Error as BackendError, KvDurability};
use herald_types::{StoredEvent, TopicName};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The `Kv` bucket of the index.
pub const BUCKET: &str = "lineage";
/// Events read per partition per batch.
const BATCH: usize = 4096;
/// Batches per partition per pass, so one busy partition does not hold up
/// the others.
const BATCHES_PER_PASS: usize = 4;
/// The longest wait between passes while nothing is appended.
const IDLE_MAX: Duration = Duration::from_millis(500);
/// The wait after a pass that caught up with every partition: events that
/// trickle in are indexed in passes of many, not one pass (and one
/// checkpoint) per event.
const IDLE_MIN: Duration = Duration::from_millis(20);
/// A partition's checkpoint is written with every batch that files
/// entries, else once it is this many offsets behind: a restart reads
/// again at most this many events without any (their keys are idempotent).
const CHECKPOINT_EVERY: u64 = 65_536;

/// What a pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// A partition has more to read than one pass takes: pass again now.
    Behind,
    /// Read up to every partition's end.
    CaughtUp,
    /// Nothing to read.
    None,
}

/// What the index keeps of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its id.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its source.
    pub source: String,
    /// Its subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it was appended, ms since the Unix epoch.
    pub at: i64,
    /// Its correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// The id of the event that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
}

impl Entry {
    /// The entry of a stored event.
    #[must_use]
    pub fn of(stored: &StoredEvent) -> Self {
        let event = &stored.event;
        Self {
            topic: stored.topic.as_str().to_owned(),
            partition: stored.partition,
            offset: stored.offset,
            id: event.id.clone(),
            ty: event.ty.clone(),
            source: event.source.clone(),
            subject: event.subject.clone(),
            at: stored.appended_at,
            correlationid: event.correlationid.clone(),
            causationid: event.causationid.clone(),
        }
    }

    /// Where it is: one key per event in each index.
    fn position(&self) -> String {
        format!(
            "{}{:020}",
            partition_prefix(&self.topic, self.partition),
            self.offset
        )
    }

    /// Its keys in the indexes (none: not indexed). Its `x` key, which
    /// lists them, is [`Entry::position`] after `x.`.
    fn keys(&self) -> Vec<String> {
        if self.correlationid.is_none() && self.causationid.is_none() {
            return Vec::new();
        }
        let position = self.position();
        let mut keys = vec![format!("i.{}.{position}", hash(&self.id))];
        if let Some(correlation) = &self.correlationid {
            keys.push(format!("c.{}.{position}", hash(correlation)));
        }
        if let Some(causation) = &self.causationid {
            keys.push(format!("k.{}.{position}", hash(causation)));
        }
        keys
    }
}

/// Which index to look in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// Events with this correlation id.
    Correlation,
    /// Events caused by this event id.
    Causation,
    /// The event of this id.
    Id,
}

impl By {
    fn letter(self) -> char {
        match self {
            Self::Correlation => 'c',
            Self::Causation => 'k',
            Self::Id => 'i',
        }
    }
}

/// The entries filed under `value` in one index, at most `limit`.
pub async fn lookup(
    backend: &dyn Backend,
    by: By,
    value: &str,
    limit: usize,
) -> Result<Vec<Entry>, BackendError> {
    let prefix = format!("{}.{}.", by.letter(), hash(value));
    let mut entries = Vec::new();
    let mut after: Option<String> = None;
    while entries.len() < limit {
        let keys = backend
            .kv_keys(BUCKET, &prefix, after.as_deref(), 256)
            .await?;
        let Some(last) = keys.last() else { break };
        after = Some(last.clone());
        for key in keys {
            let Some(found) = backend.kv_get(BUCKET, &key).await? else {
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<Entry>(&found.value) else {
                warn!(key, "Skipping a lineage entry that does not decode.");
                continue;
            };
            let matches = match by {
                By::Correlation => entry.correlationid.as_deref() == Some(value),
                By::Causation => entry.causationid.as_deref() == Some(value),
                By::Id => entry.id == value,
            };
            if matches {
                entries.push(entry);
            }
        }
    }
    entries.truncate(limit);
    Ok(entries)
}

/// The first 16 bytes of SHA-256 of `value`, in hex.
fn hash(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `<t(topic)>.`: every position of a topic starts so.
fn topic_prefix(topic: &str) -> String {
    format!("{}.", &hash(topic)[..16])
}

/// `<t(topic)>.<partition>.`: every position of a partition starts so.
fn partition_prefix(topic: &str, partition: u32) -> String {
    format!("{}{partition}.", topic_prefix(topic))
}

fn checkpoint_key(topic: &str, partition: u32) -> String {
    format!("p.{}", partition_prefix(topic, partition))
}

/// Follows every partition and keeps the index; see the module docs.
#[derive(Debug)]
pub struct Indexer {
    backend: Arc<dyn Backend>,
    /// Next offset to index, per topic and partition, once known.
    next: HashMap<(String, u32), u64>,
    /// Entries of events before this offset are removed, per partition.
    pruned: HashMap<(String, u32), u64>,
    /// The checkpoint last written or read, per partition.
    checkpointed: HashMap<(String, u32), u64>,
    /// The topics of the last pass (their key prefixes); none before the
    /// first, which compares the checkpoints' with the topics there are.
    topics: Option<HashSet<String>>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Passes begun.
    started: AtomicU64,
    /// Passes done (the number of the last).
    done: watch::Sender<u64>,
    /// Starts a pass now.
    wake: Notify,
    /// Whether the indexer runs in this process (with a backend several
    /// nodes share, on the node that holds its lease).
    running: AtomicBool,
}

/// What queries hold of the indexer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IndexerHandle {
    shared: Arc<Shared>,
}

impl IndexerHandle {
    /// Waits (up to `within`) for a pass of the indexer that began after
    /// this call, so events appended before it are in the index. False
    /// when the indexer runs elsewhere (another node holds its lease) or
    /// the pass did not end in time; the index may then lag a little.
    pub async fn caught_up(&self, within: Duration) -> bool {
        if !self.shared.running.load(Ordering::Acquire) {
            return false;
        }
        let target = self.shared.started.load(Ordering::Acquire) + 1;
        let mut done = self.shared.done.subscribe();
        self.shared.wake.notify_one();
        tokio::time::timeout(within, done.wait_for(|pass| *pass >= target))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }
}

impl Indexer {
    /// An indexer over `backend`; [`Indexer::run`] drives it.
    #[must_use]
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        let (done, _) = watch::channel(0);
        Self {
            backend,
            next: HashMap::new(),
            pruned: HashMap::new(),
            checkpointed: HashMap::new(),
            topics: None,
            shared: Arc::new(Shared {
                started: AtomicU64::new(0),
                done,
                wake: Notify::new(),
                running: AtomicBool::new(false),
            }),
        }
    }

    /// The handle queries wait on.
    #[must_use]
    pub fn handle(&self) -> IndexerHandle {
        IndexerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Indexes until `cancel` fires, under the lease `lineage.indexer`
    /// where nodes share the backend (one node indexes; another takes over
    /// from the checkpoints when it goes).
    pub async fn run(self, cancel: CancellationToken) {
        let backend = Arc::clone(&self.backend);
        let indexer = Arc::new(tokio::sync::Mutex::new(self));
        herald_backend::lease::run_while_held(
            backend,
            "lineage.indexer",
            Duration::from_secs(15),
            cancel,
            move |held| {
                let indexer = Arc::clone(&indexer);
                async move {
                    let mut indexer = indexer.lock().await;
                    // Checkpoints may have moved on another node meanwhile.
                    indexer.next.clear();
                    indexer.pruned.clear();
                    indexer.checkpointed.clear();
                    indexer.topics = None;
                    indexer.follow(held).await;
                }
            },
        )
        .await;
    }

    async fn follow(&mut self, cancel: CancellationToken) {
        let shared = Arc::clone(&self.shared);
        shared.running.store(true, Ordering::Release);
        let mut idle = IDLE_MIN;
        while !cancel.is_cancelled() {
            let pass = shared.started.fetch_add(1, Ordering::AcqRel) + 1;
            let progress = match self.pass().await {
                Ok(progress) => progress,
                Err(error) => {
                    warn!(%error, "Lineage indexing failed; trying again.");
                    Progress::None
                }
            };
            shared.done.send_replace(pass);
            match progress {
                Progress::Behind => {
                    idle = IDLE_MIN;
                    tokio::task::yield_now().await;
                    continue;
                }
                Progress::CaughtUp => idle = IDLE_MIN,
                Progress::None => {}
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = shared.wake.notified() => {}
                () = tokio::time::sleep(idle) => idle = (idle * 2).min(IDLE_MAX),
            }
        }
        shared.running.store(false, Ordering::Release);
    }

    /// One pass over every partition.
    async fn pass(&mut self) -> Result<Progress, BackendError> {
        let mut progressed = false;
        let mut behind = false;
        let listed = self.backend.list_topics().await?;
        let current: HashSet<String> = listed
            .iter()
            .map(|info| topic_prefix(info.spec.name.as_str()))
            .collect();
        // Deleted topics: those of the last pass, or (the first pass) of a
        // checkpoint, that are gone.
        let before = match self.topics.take() {
            Some(before) => before,
            None => self.checkpointed_topics().await?,
        };
        for gone in before.difference(&current) {
            self.remove(&format!("x.{gone}"), None).await?;
            self.remove_keys(&format!("p.{gone}")).await?;
            progressed = true;
        }
        self.next
            .retain(|(topic, _), _| current.contains(&topic_prefix(topic)));
        self.pruned
            .retain(|(topic, _), _| current.contains(&topic_prefix(topic)));
        self.topics = Some(current);
        for info in listed {
            let topic = info.spec.name;
            let description = match self.backend.describe_topic(&topic).await {
                Ok(description) => description,
                Err(BackendError::TopicNotFound { .. }) => continue,
                Err(error) => return Err(error),
            };
            for partition in description.partition_info {
                let (start, end) = (partition.start_offset, partition.end_offset);
                let key = (topic.as_str().to_owned(), partition.partition);
                let next = match self.next.get(&key) {
                    Some(next) => *next,
                    None => self.checkpoint(&topic, partition.partition).await?,
                };
                let positions = format!(
                    "x.{}",
                    partition_prefix(topic.as_str(), partition.partition)
                );
                // Past the end: the topic was deleted and made again; what
                // the index holds of it is of the old one.
                if next > end {
                    self.remove(&positions, None).await?;
                    self.pruned.insert(key.clone(), start);
                }
                // Retention took events: their entries go too.
                if start > self.pruned.get(&key).copied().unwrap_or(0) {
                    self.remove(&positions, Some(start)).await?;
                    self.pruned.insert(key.clone(), start);
                }
                let mut next = if next < start || next > end {
                    start
                } else {
                    next
                };
                for _ in 0..BATCHES_PER_PASS {
                    if next >= end {
                        break;
                    }
                    match self.batch(&topic, partition.partition, next).await {
                        Ok(Some(after)) => {
                            progressed = true;
                            next = after;
                        }
                        Ok(None) => break,
                        Err(BackendError::OffsetOutOfRange { .. }) => {
                            next = start;
                            break;
                        }
                        Err(BackendError::TopicNotFound { .. }) => break,
                        Err(error) => return Err(error),
                    }
                }
                behind |= next < end;
                self.next.insert(key, next);
            }
        }
        Ok(if behind {
            Progress::Behind
        } else if progressed {
            Progress::CaughtUp
        } else {
            Progress::None
        })
    }

    /// Indexes one batch from `from`; the offset after it (none: nothing
    /// there yet).
    async fn batch(
        &mut self,
        topic: &TopicName,
        partition: u32,
        from: u64,
    ) -> Result<Option<u64>, BackendError> {
        let read = self
            .backend
            .read_correlated(topic, partition, from, BATCH)
            .await?;
        if read.events.is_empty() && read.next_offset <= from {
            return Ok(None);
        }
        let mut writes = Vec::new();
        for stored in &read.events {
            let entry = Entry::of(stored);
            let keys = entry.keys();
            if keys.is_empty() {
                continue;
            }
            let value = Bytes::from(serde_json::to_vec(&entry).unwrap_or_default());
            let listed = Bytes::from(serde_json::to_vec(&keys).unwrap_or_default());
            writes.push((BUCKET.to_owned(), format!("x.{}", entry.position()), listed));
            for key in keys {
                writes.push((BUCKET.to_owned(), key, value.clone()));
            }
        }
        let key = (topic.as_str().to_owned(), partition);
        let checkpointed = self.checkpointed.get(&key).copied().unwrap_or(0);
        if writes.is_empty() && read.next_offset.saturating_sub(checkpointed) < CHECKPOINT_EVERY {
            return Ok(Some(read.next_offset));
        }
        if !writes.is_empty() {
            debug!(topic = %topic, partition, entries = writes.len(), "Indexed lineage.");
        }
        writes.push((
            BUCKET.to_owned(),
            checkpoint_key(topic.as_str(), partition),
            Bytes::from(read.next_offset.to_string()),
        ));
        self.backend
            .kv_put_many(writes, KvDurability::Deferred)
            .await?;
        self.checkpointed.insert(key, read.next_offset);
        Ok(Some(read.next_offset))
    }

    /// The topic prefixes the checkpoints name.
    async fn checkpointed_topics(&self) -> Result<HashSet<String>, BackendError> {
        let mut topics = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let keys = self
                .backend
                .kv_keys(BUCKET, "p.", after.as_deref(), 1_000)
                .await?;
            let Some(last) = keys.last() else { break };
            after = Some(last.clone());
            for key in &keys {
                if let Some(topic) = key.strip_prefix("p.").and_then(|rest| rest.get(..17)) {
                    topics.insert(topic.to_owned());
                }
            }
        }
        Ok(topics)
    }

    /// Removes the entries of the events whose `x` keys start with
    /// `positions`, those before offset `below` only when given.
    async fn remove(&self, positions: &str, below: Option<u64>) -> Result<(), BackendError> {
        loop {
            let keys = self.backend.kv_keys(BUCKET, positions, None, 256).await?;
            let last_page = keys.len() < 256;
            let mut deletes = Vec::new();
            let mut reached = false;
            for key in keys {
                let offset = key
                    .rsplit('.')
                    .next()
                    .and_then(|tail| tail.parse::<u64>().ok());
                if let (Some(below), Some(offset)) = (below, offset)
                    && offset >= below
                {
                    reached = true;
                    break;
                }
                if let Some(listed) = self.backend.kv_get(BUCKET, &key).await?
                    && let Ok(entries) = serde_json::from_slice::<Vec<String>>(&listed.value)
                {
                    deletes.extend(entries.into_iter().map(|entry| (BUCKET.to_owned(), entry)));
                }
                deletes.push((BUCKET.to_owned(), key));
            }
            if deletes.is_empty() {
                return Ok(());
            }
            let removed = deletes.len();
            self.backend.kv_delete_many(deletes).await?;
            debug!(positions, removed, "Removed lineage entries.");
            if reached || last_page {
                return Ok(());
            }
        }
    }

    /// Removes every key starting with `prefix`.
    async fn remove_keys(&self, prefix: &str) -> Result<(), BackendError> {
        loop {
            let keys = self.backend.kv_keys(BUCKET, prefix, None, 1_000).await?;
            if keys.is_empty() {
                return Ok(());
            }
            let deletes = keys
                .into_iter()
                .map(|key| (BUCKET.to_owned(), key))
                .collect();
            self.backend.kv_delete_many(deletes).await?;
        }
    }

    async fn checkpoint(&mut self, topic: &TopicName, partition: u32) -> Result<u64, BackendError> {
        let stored = self
            .backend
            .kv_get(BUCKET, &checkpoint_key(topic.as_str(), partition))
            .await?;
        let offset = stored
            .and_then(|entry| std::str::from_utf8(&entry.value).ok()?.parse().ok())
            .unwrap_or(0);
        self.checkpointed
            .insert((topic.as_str().to_owned(), partition), offset);
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use herald_backend::topic::TopicSpec;
    use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
    use herald_types::{Event, EventInput};

    use super::*;

    async fn open(dir: &std::path::Path) -> Arc<dyn Backend> {
        let backend =
            EmbeddedBackend::open(EmbeddedOptions::new(dir), herald_log::LogMetrics::new())
                .await
                .unwrap();
        Arc::new(backend)
    }

    fn events(from: usize, to: usize, correlated: bool) -> Vec<EventInput> {
        (from..to)
            .map(|n| {
                let mut event = Event::new(format!("e-{n}"), "/t", "t");
                if correlated {
                    event.correlationid = Some("c".into());
                    event.causationid = Some(format!("e-{}", n.saturating_sub(1)));
                }
                EventInput {
                    event,
                    partition: None,
                }
            })
            .collect()
    }

    /// Runs an indexer until it has caught up; returns what the index holds.
    async fn index(backend: &Arc<dyn Backend>) -> Vec<Entry> {
        let indexer = Indexer::new(Arc::clone(backend));
        let handle = indexer.handle();
        let cancel = CancellationToken::new();
        let running = tokio::spawn(indexer.run(cancel.clone()));
        while !handle.caught_up(Duration::from_secs(5)).await {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        running.await.unwrap();
        lookup(&**backend, By::Correlation, "c", 1_000)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn given_events_before_and_after_a_restart_the_index_should_list_each_correlated_one_once()
     {
        let dir = tempfile::tempdir().unwrap();
        let topic: TopicName = "orders".parse().unwrap();
        let backend = open(dir.path()).await;
        let mut spec = TopicSpec::new(topic.clone());
        spec.partitions = 3;
        backend.create_topic(spec).await.unwrap();
        backend
            .publish(&topic, events(0, 200, false))
            .await
            .unwrap();
        backend
            .publish(&topic, events(200, 203, true))
            .await
            .unwrap();
        let first = index(&backend).await;
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|entry| entry.topic == "orders"));
        // From its checkpoints, after a restart: only the new ones are read.
        backend.shutdown().await.unwrap();
        drop(backend);
        let backend = open(dir.path()).await;
        backend
            .publish(&topic, events(203, 205, true))
            .await
            .unwrap();
        let mut ids: Vec<String> = index(&backend)
            .await
            .into_iter()
            .map(|entry| entry.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["e-200", "e-201", "e-202", "e-203", "e-204"]);
        let caused = lookup(&*backend, By::Causation, "e-202", 10).await.unwrap();
        assert_eq!(caused.len(), 1);
        assert_eq!(caused[0].id, "e-203");
        let own = lookup(&*backend, By::Id, "e-204", 10).await.unwrap();
        assert_eq!(own[0].causationid.as_deref(), Some("e-203"));
        // An id no event carries finds nothing.
        assert!(
            lookup(&*backend, By::Correlation, "d", 10)
                .await
                .unwrap()
                .is_empty()
        );

        // A deleted topic's entries go; made again, only its new events are there.
        backend.delete_topic(&topic).await.unwrap();
        assert!(index(&backend).await.is_empty());
        let mut spec = TopicSpec::new(topic.clone());
        spec.partitions = 1;
        backend.create_topic(spec).await.unwrap();
        backend
            .publish(&topic, events(300, 302, true))
            .await
            .unwrap();
        let ids: Vec<String> = index(&backend)
            .await
            .into_iter()
            .map(|entry| entry.id)
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        let leftover = backend.kv_keys(BUCKET, "", None, 1_000).await.unwrap();
        // Two events × (i, c, k, x) and one checkpoint.
        assert_eq!(leftover.len(), 9, "{leftover:?}");
    }

    #[tokio::test]
    async fn given_only_uncorrelated_events_when_indexed_should_write_nothing_until_a_checkpoint_is_due()
     {
        let dir = tempfile::tempdir().unwrap();
        let topic: TopicName = "clicks".parse().unwrap();
        let backend = open(dir.path()).await;
        backend
            .create_topic(TopicSpec::new(topic.clone()))
            .await
            .unwrap();
        backend
            .publish(&topic, events(0, 300, false))
            .await
            .unwrap();
        assert!(index(&backend).await.is_empty());
        // No entries and far fewer offsets than CHECKPOINT_EVERY: no write
        // at all (a restart reads them again, finding nothing).
        let keys = backend.kv_keys(BUCKET, "", None, 10).await.unwrap();
        assert!(keys.is_empty(), "{keys:?}");
        // An entry brings its checkpoint with it.
        backend
            .publish(&topic, events(300, 301, true))
            .await
            .unwrap();
        assert_eq!(index(&backend).await.len(), 1);
        let checkpoint = backend
            .kv_get(BUCKET, &checkpoint_key("clicks", 0))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&checkpoint.value[..], b"301");
    }
}
