//! The embedded backend: Herald's own log ([`herald_log`]) for events, redb
//! for metadata and group state. The default backend; one process, one data
//! directory:
//!
//! ```text
//! <data_dir>/
//!   meta.redb                    topics, groups, group state, dead letters, kv
//!   streams.redb                 the stream index (derived from the logs)
//!   topics/<topic>/<partition>/  one herald-log per partition
//! ```
//!
//! # Event streams
//!
//! A stream's events are ordinary events of its topic, in the partition of
//! its id, each carrying its stream id and version in record headers. The
//! stream index (`streams.redb`: (topic, stream) → version and times;
//! (topic, stream, version) → (partition, offset); a per-partition
//! checkpoint) is derived from those headers: its writes are group-committed
//! by one thread without an fsync of their own, and on open every
//! partition's log is re-indexed from its checkpoint, so the index always
//! catches up with the log, which stays the source of truth. Reading a stream
//! is a range scan of the index plus one log read per event. Appends to one
//! stream are serialized by a per-stream lock held only while used;
//! appends to different streams run concurrently and share group commits.
//! Hard delete removes the index entries and snapshot, makes the events
//! unreadable through every API at once (a per-partition erased set every
//! topic read consults), and schedules their physical erasure: the
//! `stream-compactor` task rewrites the segments holding them soon after
//! (`herald_log::LogHandle::erase`) and compacts `streams.redb`. Pending
//! erasures are kept in `streams.redb`, so they survive a restart. Details:
//! `stream.rs`, `erasure.rs`.
//!
//! # Durability of group state
//!
//! Topics, groups, commits (stream mode), resets and redrives are written to
//! redb (fsynced) before the call returns. Acks, nacks, extends and lease
//! changes of queue and keyed groups are applied in memory at once and
//! persisted by the `group-flush` task: every `flush_interval` (50 ms), or at
//! once when a caller waits for it, in one redb transaction for every group
//! that changed (group commit: concurrent waiters share it).
//!
//! - `ack_durability = async` (the default): the call returns once applied.
//!   After a `kill -9` or power loss, an event acked within the last flush
//!   interval (plus the flush's own time) may be delivered once more;
//!   nothing acked earlier is, and nothing is ever lost: every event not
//!   acked is delivered again.
//! - `ack_durability = sync` (a group setting, or per call): the call
//!   returns once the transaction holding it committed; a confirmed ack is
//!   never delivered again. Unconfirmed ones (in flight at the kill) may be.
//!
//! Dead letters are recorded in the same transaction as the group state
//! that has their events finished, with a row per copy still to publish to
//! the topic's dead-letter topic; the `dead-letter-copies` task publishes
//! those (deterministic event ids, so a retry after a crash is deduplicated)
//! and removes the rows. A failed write leaves the state dirty and the dead
//! letters queued: the next round retries both. Failures are counted
//! ([`GroupMetrics`]) and, once they last 5 s, reported by
//! [`Backend::degraded`] (readiness). redb latches a real I/O error until
//! it is reopened, so a failing disk stays degraded until a restart.
//!
//! # What a restart does to timing
//!
//! A lease keeps its deadline, member and delivery id (a member may still
//! ack, nack or extend it after the restart), a nacked event its nack delay,
//! a failed delivery its backoff, and a delayed event its `deliver_at` (read
//! again from the event): none is redelivered early. What changed within
//! the last flush interval before a crash is lost as described above: a
//! lease handed out then is delivered again at once; a nack or extend made
//! then falls back to the lease's persisted deadline.
//!
//! # Background tasks
//!
//! `group-flush` persists dirty group state; `group-timer` expires leases
//! (redelivery, dead letters) and silent stream members; both sleep while
//! there is no group at all (an idle tick every 50 or 100 ms woke a worker
//! thread that delayed the request it shared a CPU with: W3's p99,
//! BENCHMARKS.md). `dead-letter-copies` publishes pending dead-letter
//! copies (when woken after a flush recorded some, and retries failures
//! with a backoff). `stream-compactor`
//! erases hard-deleted events from the segments (at open, and
//! `compaction_delay` after each hard delete). All stop on
//! [`Backend::shutdown`] (a compaction pass in progress finishes first),
//! which flushes once more, publishes pending copies once more, and closes
//! every log.

mod codec;
mod dedup;
mod erasure;
mod group;
mod meta;
mod metrics;
mod stream;
mod topic;

#[doc(hidden)]
pub use dedup::Probe as DedupProbe;
pub use group::queue::{Budget as GroupBudget, Memory as GroupMemory};
pub use meta::MetaFaults;
pub use metrics::{GroupMetrics, names as metric_names};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_backend::cancel::run_to_completion;
use herald_backend::{
    AckDurability, AckOutcome, AppendResult, Backend, CommitRequest, DeadLetter, Direction, Error,
    Events, Expect, ExpectedVersion, FetchRequest, FetchResponse, GroupInfo, GroupSpec,
    GroupStatus, Groups, Kv, KvDurability, KvEntry, PartitionOffset, PublishResult, ReadResult,
    Result, Snapshot as StreamSnapshot, StartPosition, StreamMetadata, StreamSlice, Streams,
    TopicDescription, TopicInfo, TopicSpec, TopicUpdate, Topics, topic::TopicLimits,
};
use herald_log::{Log, LogEnv, LogHandle, LogMetrics, SystemClock, WriterOptions};
use herald_types::{
    Event, EventInput, ExtensionValue, GroupName, StoredEvent, StreamId, TopicName,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use group::queue::DeadLetterEffect;
use group::{DirtyState, GroupRuntime, Snapshot};
use meta::{DeadLetterRecord, GroupWrite, Meta, group_key};
use stream::StreamStore;
use topic::TopicRuntime;

/// How the embedded backend runs.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Each partition's writer thread.
    pub writer: WriterOptions,
    /// How often queue-group acks are persisted: the window in which an ack
    /// may be lost to a crash (and its event delivered once more).
    pub flush_interval: Duration,
    /// How often leases are expired and silent members dropped without a
    /// fetch to prompt it.
    pub tick_interval: Duration,
    /// How soon after a hard delete the segments holding its events are
    /// compacted; deletes within this window share one pass. 200 ms: soon,
    /// and a burst of deletes costs one rewrite per segment, not one each.
    pub compaction_delay: Duration,
    /// Topics and partitions the backend creates at most (each partition
    /// has its own writer thread: this bounds them).
    pub topic_limits: TopicLimits,
    /// Memory each queue or keyed group may hold, in bytes (event bodies,
    /// and the bookkeeping of pending events).
    pub group_budget: GroupBudget,
    /// Memory the redb stores may use for their page caches.
    pub caches: StoreCaches,
    /// The groups' metrics (register them before opening).
    pub metrics: Arc<GroupMetrics>,
    /// Injected failures of metadata writes (tests); `None` in production.
    pub meta_faults: Option<Arc<MetaFaults>>,
}

impl EmbeddedOptions {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            writer: WriterOptions::default(),
            flush_interval: Duration::from_millis(50),
            tick_interval: Duration::from_millis(100),
            compaction_delay: Duration::from_millis(200),
            topic_limits: TopicLimits::default(),
            group_budget: GroupBudget::default(),
            caches: StoreCaches::default(),
            metrics: GroupMetrics::new(),
            meta_faults: None,
        }
    }
}

/// The page caches of the two redb stores, in bytes. redb keeps every page
/// it writes or reads in its cache up to this size (its own default is
/// 1 GiB per database), so the stores' share of the server's memory grows
/// with their files up to these bounds. Pages beyond them are read from the
/// file again (usually from the OS page cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCaches {
    /// `meta.redb`: topics, groups and their state, dead letters, the
    /// key-value store (jobs, API keys). 32 MiB.
    pub meta_bytes: usize,
    /// `streams.redb`: stream versions and the position of every stream
    /// event (it grows with the event store). 32 MiB.
    pub stream_index_bytes: usize,
}

impl Default for StoreCaches {
    fn default() -> Self {
        Self {
            meta_bytes: 32 << 20,
            stream_index_bytes: 32 << 20,
        }
    }
}

/// Opens (or creates) the redb database at `path` with a page cache of at
/// most `cache_bytes`.
fn redb_database(
    path: &std::path::Path,
    cache_bytes: usize,
) -> std::result::Result<redb::Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
}

/// Group state failing to persist for this long makes the backend report
/// itself degraded ([`Backend::degraded`]): a few seconds, so one slow or
/// failed fsync does not flap readiness, and an operator hears of a disk
/// that stays broken.
const FLUSH_DEGRADED_AFTER_MS: i64 = 5_000;

/// A row of `dead_letter_copies`: the group's key and the dead letter's id.
type CopyRow = (String, u64);

/// Dead-letter copies read per publishing pass.
const COPY_BATCH: usize = 256;

/// After a failed pass, dead-letter copies are retried after this long,
/// doubling up to [`COPY_RETRY_MAX`].
const COPY_RETRY: Duration = Duration::from_millis(200);
const COPY_RETRY_MAX: Duration = Duration::from_secs(30);

/// The embedded backend. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct EmbeddedBackend {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    data_dir: PathBuf,
    meta: Meta,
    streams: Arc<StreamStore>,
    topics: RwLock<BTreeMap<TopicName, Arc<TopicRuntime>>>,
    env: LogEnv,
    writer: WriterOptions,
    /// Checked when a topic is created.
    topic_limits: TopicLimits,
    /// Serializes topic and group creation and deletion.
    admin: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    closed: AtomicBool,
    /// Wakes the `stream-compactor` task (a hard delete scheduled erasures).
    compaction_wanted: tokio::sync::Notify,
    /// One compaction pass at a time (the task's, or a forced one).
    compacting: tokio::sync::Mutex<()>,
    /// Wakes the group tasks when a group is added (they sleep while there
    /// is none).
    group_added: tokio::sync::Notify,
    group_budget: GroupBudget,
    metrics: Arc<GroupMetrics>,
    flusher: Flusher,
    /// Since when (ms) group state has failed to persist, and why.
    flush_failing: Mutex<Option<(i64, String)>>,
    /// Wakes the `dead-letter-copies` task (a flush recorded copies).
    copies_wanted: tokio::sync::Notify,
}

/// Group commit of group state: callers that need their changes persisted
/// take a ticket and wait for a `group-flush` round that started after it.
#[derive(Debug)]
struct Flusher {
    /// Tickets given out.
    requested: AtomicU64,
    /// Wakes the flush task early.
    wake: tokio::sync::Notify,
    /// The last round: the highest ticket it covered and its outcome.
    rounds: tokio::sync::watch::Sender<(u64, Result<()>)>,
}

/// What a compaction pass did (see `erasure.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Partitions whose pending erasures were carried out.
    pub partitions: usize,
    /// Segments rewritten.
    pub segments: usize,
    /// Events whose contents were erased from the segments.
    pub events: u64,
}

/// After a failed compaction pass, the next try waits this long.
const COMPACTION_RETRY: Duration = Duration::from_secs(5);

fn task_error(error: &tokio::task::JoinError) -> Error {
    Error::Unavailable {
        detail: format!("blocking task failed: {error}"),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| task_error(&error))?
}

impl EmbeddedBackend {
    /// Opens the backend in `options.data_dir`, recovering every topic's logs
    /// and every group's state.
    pub async fn open(options: EmbeddedOptions, metrics: Arc<LogMetrics>) -> Result<Self> {
        let env = LogEnv {
            metrics,
            clock: Arc::new(SystemClock),
            ..LogEnv::default()
        };
        Self::open_with(options, env).await
    }

    /// Like [`EmbeddedBackend::open`], with the log environment given
    /// (filesystem, clock, metrics).
    pub async fn open_with(options: EmbeddedOptions, env: LogEnv) -> Result<Self> {
        let data_dir = options.data_dir.clone();
        let topics_dir = data_dir.join("topics");
        let (meta, streams) = {
            let (data_dir, topics_dir) = (data_dir.clone(), topics_dir.clone());
            let (faults, caches) = (options.meta_faults.clone(), options.caches);
            blocking(move || {
                std::fs::create_dir_all(&topics_dir).map_err(|error| Error::Unavailable {
                    detail: format!("cannot create {}: {error}", topics_dir.display()),
                })?;
                let meta = Meta::open(&data_dir.join("meta.redb"), caches.meta_bytes, faults)?;
                let streams =
                    StreamStore::open(&data_dir.join("streams.redb"), caches.stream_index_bytes)?;
                Ok((meta, streams))
            })
            .await?
        };
        let inner = Arc::new(Inner {
            data_dir,
            meta,
            streams: Arc::new(streams),
            topics: RwLock::new(BTreeMap::new()),
            env,
            writer: options.writer.clone(),
            topic_limits: options.topic_limits,
            admin: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            compaction_wanted: tokio::sync::Notify::new(),
            compacting: tokio::sync::Mutex::new(()),
            group_added: tokio::sync::Notify::new(),
            group_budget: options.group_budget,
            metrics: Arc::clone(&options.metrics),
            flusher: Flusher {
                requested: AtomicU64::new(0),
                wake: tokio::sync::Notify::new(),
                rounds: tokio::sync::watch::Sender::new((0, Ok(()))),
            },
            flush_failing: Mutex::new(None),
            copies_wanted: tokio::sync::Notify::new(),
        });
        inner.recover().await?;
        let cancel = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(flush_loop(
                Arc::clone(&inner),
                options.flush_interval,
                cancel.clone(),
            )),
            tokio::spawn(timer_loop(
                Arc::clone(&inner),
                options.tick_interval,
                cancel.clone(),
            )),
            tokio::spawn(compaction_loop(
                Arc::clone(&inner),
                options.compaction_delay,
                cancel.clone(),
            )),
            tokio::spawn(meta_probe_loop(Arc::clone(&inner), cancel.clone())),
            tokio::spawn(copy_loop(Arc::clone(&inner), cancel.clone())),
        ];
        inner.ready.store(true, Ordering::SeqCst);
        Ok(Self {
            inner,
            cancel,
            tasks: Mutex::new(tasks),
        })
    }
}

impl EmbeddedBackend {
    /// Runs a topic change to completion even if its caller goes away, so
    /// that storage and memory never disagree (a topic stored but not
    /// served until a restart, or served but deleted from storage).
    async fn administer<T, F, Fut>(&self, change: F) -> Result<T>
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        run_to_completion(change(Arc::clone(&self.inner))).await
    }

    /// Persists every group's changed state now, as the background flush
    /// does every `flush_interval`: acks made before this returns survive a
    /// crash.
    pub async fn flush_group_state(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.persist_now().await
    }

    /// What a queue or keyed group holds in memory (`None` for a stream
    /// group): for measurements and tests of its budget.
    pub fn group_memory(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupMemory>> {
        let (_, found) = self.inner.group(topic, group)?;
        Ok(found.memory())
    }

    /// Carries out every pending erasure of hard-deleted streams now (the
    /// `stream-compactor` task does it soon after each hard delete) and
    /// returns once their bytes are gone from the segments and from the
    /// stream index file.
    pub async fn compact(&self) -> Result<CompactionReport> {
        self.inner.check_open()?;
        self.inner.compact().await
    }
}

impl Inner {
    fn now(&self) -> i64 {
        self.env.clock.now_ms()
    }

    /// The lock every topic and group change holds, so changes run one at
    /// a time. Shutdown takes it after marking the backend closed: a change
    /// either finished before storage closes (also one whose caller went
    /// away, which `administer` runs on) or does not start.
    async fn admin_lock(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.admin.lock().await;
        self.check_open()?;
        Ok(guard)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// A topic, also while shutting down (for the backend's own work).
    fn lookup_topic(&self, name: &TopicName) -> Option<Arc<TopicRuntime>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn topic(&self, name: &TopicName) -> Result<Arc<TopicRuntime>> {
        self.check_open()?;
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::TopicNotFound {
                topic: name.to_string(),
            })
    }

    fn group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<(Arc<TopicRuntime>, Arc<GroupRuntime>)> {
        let runtime = self.topic(topic)?;
        let found = runtime
            .groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(group)
            .cloned();
        let found = found.ok_or_else(|| Error::GroupNotFound {
            topic: topic.to_string(),
            group: group.to_string(),
        })?;
        Ok((runtime, found))
    }

    fn topic_dir(&self, name: &TopicName) -> PathBuf {
        self.data_dir.join("topics").join(name.as_str())
    }

    /// Opens the logs of a topic's partitions.
    async fn open_partitions(&self, spec: &TopicSpec) -> Result<Vec<LogHandle>> {
        let dir = self.topic_dir(&spec.name);
        let options = topic::log_options(spec);
        let mut handles = Vec::with_capacity(spec.partitions as usize);
        for partition in 0..spec.partitions {
            let (dir, options, env, writer) = (
                dir.join(partition.to_string()),
                options.clone(),
                self.env.clone(),
                self.writer.clone(),
            );
            let handle = blocking(move || {
                let metrics = Arc::clone(&env.metrics);
                let log = Log::open(dir, options, env)
                    .map_err(|error| topic::log_error(partition, error))?;
                LogHandle::spawn(log, writer, metrics)
                    .map_err(|error| topic::log_error(partition, error))
            })
            .await?;
            handles.push(handle);
        }
        Ok(handles)
    }

    async fn recover(self: &Arc<Self>) -> Result<()> {
        let meta = self.meta.clone();
        let topics = blocking(move || meta.topics()).await?;
        let now = self.now();
        for info in topics {
            let partitions = self.open_partitions(&info.spec).await?;
            let runtime = Arc::new(TopicRuntime::new(
                info.clone(),
                self.topic_dir(&info.spec.name),
                partitions,
            ));
            runtime.rebuild_dedup(now).await?;
            self.topics
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(info.spec.name.clone(), runtime);
        }
        self.remove_orphan_topic_dirs().await?;
        self.recover_streams().await?;
        let meta = self.meta.clone();
        let groups = blocking(move || meta.groups()).await?;
        for (key, info, state) in groups {
            let Some((topic_name, _)) = key.split_once('/') else {
                continue;
            };
            let Ok(topic_name) = topic_name.parse::<TopicName>() else {
                continue;
            };
            let Ok(runtime) = self.topic(&topic_name) else {
                continue;
            };
            let snapshot = match state.as_deref().map(serde_json::from_slice::<Snapshot>) {
                Some(Ok(snapshot)) => Some(snapshot),
                Some(Err(error)) => {
                    error!(group = %key, %error, "Group state is unreadable; starting the group from its start position.");
                    None
                }
                None => None,
            };
            let starts = match snapshot {
                Some(_) => Vec::new(),
                None => runtime.start_offsets(info.spec.start).await?,
            };
            let group = Arc::new(GroupRuntime::new(
                key,
                info.clone(),
                self.group_budget,
                &starts,
                snapshot,
            ));
            // A log that lost its tail (power loss under `fsync = interval |
            // never`) is shorter than the state redb kept for it.
            for (partition, from, to) in group.clamp(&runtime.end_offsets(), now) {
                warn!(group = %group.key, partition, from, to, "Group position was past the end of its partition (the log lost its tail); clamped to the end.");
                self.metrics.state_clamped.inc();
            }
            runtime
                .groups
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(info.name.clone(), group);
        }
        info!(data_dir = %self.data_dir.display(), topics = self.topics.read().unwrap_or_else(PoisonError::into_inner).len(), "Embedded backend open.");
        Ok(())
    }

    /// Catches the stream index up with every topic's log, drops the index
    /// of topics that no longer exist, and makes the erasures a restart left
    /// pending unreadable again (the compactor carries them out soon after).
    async fn recover_streams(&self) -> Result<()> {
        let topics = self.topic_list();
        let names = topics.iter().map(|topic| topic.name.to_string()).collect();
        self.streams.purge_others(names).await?;
        for topic in topics {
            self.streams.catch_up(&topic).await?;
        }
        for (topic, partition, offsets) in self.streams.pending_erasures().await? {
            let runtime = topic.parse().ok().and_then(|name| self.topic(&name).ok());
            if let Some(erased) =
                runtime.and_then(|runtime| runtime.erased.get(partition as usize).cloned())
            {
                erased.insert(offsets);
            }
        }
        Ok(())
    }

    /// A hard delete made these `(partition, offset)`s unreadable: reads skip
    /// them from now on, groups drop them, and the compactor is woken.
    fn mark_erased(&self, topic: &TopicRuntime, erased: &[(u32, u64)]) {
        let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for &(partition, offset) in erased {
            by_partition.entry(partition).or_default().push(offset);
        }
        let groups = topic.group_list();
        for (partition, mut offsets) in by_partition {
            offsets.sort_unstable();
            if let Some(set) = topic.erased.get(partition as usize) {
                set.insert(offsets.iter().copied());
            }
            for group in &groups {
                group.erase(partition, &offsets, self.now());
            }
        }
        self.compaction_wanted.notify_one();
    }

    /// One compaction pass: every partition's pending erasures go to its
    /// log, then leave the index and the erased set; then the index file is
    /// compacted so no freed page keeps a deleted snapshot.
    async fn compact(&self) -> Result<CompactionReport> {
        let _pass = self.compacting.lock().await;
        let mut report = CompactionReport::default();
        for (topic, partition, offsets) in self.streams.pending_erasures().await? {
            let Some(runtime) = topic.parse().ok().and_then(|name| self.topic(&name).ok()) else {
                // A deleted topic: its purge removes the rows.
                continue;
            };
            let erased = runtime
                .handle(partition)?
                .erase(offsets.clone())
                .await
                .map_err(|error| topic::log_error(partition, error))?;
            self.streams
                .erasures_done(&topic, partition, offsets.clone())
                .await?;
            if let Some(set) = runtime.erased.get(partition as usize) {
                set.remove(&offsets);
            }
            report.partitions += 1;
            report.segments += erased.segments;
            report.events += erased.records;
        }
        if report.partitions > 0 {
            self.streams.compact_file().await?;
            info!(
                partitions = report.partitions,
                segments = report.segments,
                events = report.events,
                "Erased hard-deleted events from disk."
            );
        }
        Ok(report)
    }

    /// Removes topic directories no topic owns (left by a delete that crashed).
    async fn remove_orphan_topic_dirs(&self) -> Result<()> {
        let topics_dir = self.data_dir.join("topics");
        let known: Vec<String> = self
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .map(ToString::to_string)
            .collect();
        blocking(move || {
            let entries = std::fs::read_dir(&topics_dir).map_err(|error| Error::Unavailable {
                detail: format!("{}: {error}", topics_dir.display()),
            })?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !known.contains(&name) {
                    warn!(dir = %entry.path().display(), "Removing the files of a deleted topic.");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            Ok(())
        })
        .await
    }

    /// Persists the state of every group that changed, with the dead
    /// letters and redrives in their outboxes, in one transaction. On
    /// failure every outbox goes back and the groups stay dirty, so the next
    /// round retries all of it. Only the `group-flush` task (and shutdown,
    /// after stopping it) calls this, so rounds never overlap.
    async fn flush(&self) -> Result<()> {
        let groups = self.all_groups();
        let mut writes = Vec::new();
        let mut taken: Vec<(Arc<GroupRuntime>, group::Outbox)> = Vec::new();
        for group in groups {
            let Some(DirtyState { snapshot, outbox }) = group.take_dirty() else {
                continue;
            };
            let state = match serde_json::to_vec(&snapshot) {
                Ok(state) => state,
                Err(error) => {
                    group.restore_outbox(outbox);
                    for (group, outbox) in taken {
                        group.restore_outbox(outbox);
                    }
                    return Err(Error::Corrupt {
                        detail: format!("group state: {error}"),
                    });
                }
            };
            let copy = group
                .key
                .split_once('/')
                .and_then(|(topic, _)| topic.parse::<TopicName>().ok())
                .and_then(|topic| self.lookup_topic(&topic))
                .is_some_and(|topic| topic.info().spec.dead_letter_topic.is_some());
            writes.push(GroupWrite {
                key: group.key.clone(),
                state,
                buried: outbox.buried.iter().map(dead_letter_record).collect(),
                copy,
                unlisted: outbox.unlisted.clone(),
            });
            taken.push((group, outbox));
        }
        let meta = self.meta.clone();
        if writes.is_empty() {
            // No group changed, but a deferred key-value write may wait for
            // a durable commit (`KvDurability::Deferred`: within a round).
            if !meta.has_deferred() {
                return Ok(());
            }
            return blocking(move || meta.sync_deferred()).await.map(drop);
        }
        match blocking(move || meta.commit_groups(&writes)).await {
            Ok(recorded) => {
                if recorded > 0 {
                    self.metrics.dead_letters.inc_by(recorded);
                    self.copies_wanted.notify_one();
                }
                Ok(())
            }
            Err(error) => {
                for (group, outbox) in taken {
                    group.restore_outbox(outbox);
                }
                Err(error)
            }
        }
    }

    /// Waits until every group change made before this call is persisted
    /// (with its dead letters): asks the `group-flush` task for a round and
    /// waits for one that started after the ask. Concurrent callers share
    /// a round (one transaction). The round runs in that task, so a caller
    /// that goes away changes nothing.
    async fn persist_now(&self) -> Result<()> {
        let mut rounds = self.flusher.rounds.subscribe();
        let ticket = self.flusher.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.flusher.wake.notify_one();
        loop {
            {
                let round = rounds.borrow_and_update();
                if round.0 >= ticket {
                    return round.1.clone();
                }
            }
            if rounds.changed().await.is_err() {
                return Err(Error::ShuttingDown);
            }
        }
    }

    /// Asks for a flush round soon, without waiting for it.
    fn kick_flush(&self) {
        self.flusher.wake.notify_one();
    }

    /// After a settle: persists before returning if the call or the group
    /// wants it (`sync`), or if it produced dead letters (recorded before
    /// the call returns). A failed persist fails a sync call; otherwise the
    /// next round retries it.
    async fn settled(
        &self,
        group: &GroupRuntime,
        durability: AckDurability,
        buried: bool,
    ) -> Result<()> {
        let sync = group.ack_durability().max(durability) == AckDurability::Sync;
        if !sync && !buried {
            return Ok(());
        }
        match self.persist_now().await {
            Ok(()) => Ok(()),
            Err(error) if sync => Err(error),
            Err(error) => {
                warn!(group = %group.key, %error, "Dead letters not recorded yet; the next flush retries.");
                Ok(())
            }
        }
    }

    /// Books the outcome of a flush round: metrics, and how long group
    /// state has been failing to persist (for readiness).
    fn record_flush(&self, result: &Result<()>) {
        let mut failing = self
            .flush_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                self.metrics.flushes.inc();
                self.metrics.flush_failing.set(0);
                if let Some((since, _)) = failing.take() {
                    info!(
                        failed_for_ms = self.now() - since,
                        "Group state persists again."
                    );
                }
            }
            Err(error) => {
                self.metrics.flush_failures.inc();
                self.metrics.flush_failing.set(1);
                match &mut *failing {
                    Some((_, last)) => *last = error.to_string(),
                    None => {
                        error!(%error, "Persisting group state failed; retrying every round.");
                        *failing = Some((self.now(), error.to_string()));
                    }
                }
            }
        }
    }

    /// Group state that has failed to persist for
    /// [`FLUSH_DEGRADED_AFTER_MS`], as a health issue: acks, dead letters and
    /// leases since then are in memory only.
    fn group_state_issue(&self) -> Option<herald_backend::HealthIssue> {
        let failing = self
            .flush_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (since, error) = failing.as_ref()?;
        let for_ms = self.now().saturating_sub(*since);
        (for_ms >= FLUSH_DEGRADED_AFTER_MS).then(|| herald_backend::HealthIssue {
            component: "group state".to_owned(),
            code: "unavailable",
            error: format!(
                "failed to persist for {} s (acks, dead letters and leases since are in memory only): {error}",
                for_ms / 1000
            ),
            since_ms: *since,
        })
    }

    /// Publishes pending dead-letter copies to their topics' dead-letter
    /// topics, oldest first, and forgets each once published (or once it
    /// cannot be: the topic, its dead-letter topic or the event is gone).
    /// Each copy's event id is derived from its dead letter, so one
    /// published again after a crash is deduplicated. Returns whether more
    /// are pending.
    async fn publish_copies(&self) -> Result<bool> {
        let meta = self.meta.clone();
        let pending = blocking(move || meta.pending_copies(COPY_BATCH)).await?;
        let more = pending.len() == COPY_BATCH;
        // Per dead-letter topic: the copies, and the rows they clear.
        let mut batches: BTreeMap<TopicName, (Vec<EventInput>, Vec<CopyRow>)> = BTreeMap::new();
        let mut dropped = Vec::new();
        for (key, id, record) in pending {
            let found = key.split_once('/').and_then(|(topic, group)| {
                let topic = topic.parse::<TopicName>().ok()?;
                let group = group.parse::<GroupName>().ok()?;
                Some((self.lookup_topic(&topic)?, group))
            });
            let Some((source, group)) = found else {
                dropped.push((key, id));
                continue;
            };
            let Some(target) = source.info().spec.dead_letter_topic else {
                dropped.push((key, id));
                continue;
            };
            if self.lookup_topic(&target).is_none() {
                warn!(topic = %source.name, dead_letter_topic = %target, "The dead-letter topic does not exist; the dead letter is kept in the group's list only.");
                dropped.push((key, id));
                continue;
            }
            let Some(event) = read_one(&source, record.original).await? else {
                warn!(topic = %source.name, partition = record.original.partition, offset = record.original.offset, "A dead letter's event is gone from the log; no copy published.");
                dropped.push((key, id));
                continue;
            };
            let batch = batches.entry(target).or_default();
            batch.0.push(dead_letter_copy(&event, &group, &record, id));
            batch.1.push((key, id));
        }
        let now = self.now();
        for (target, (copies, rows)) in batches {
            let Some(runtime) = self.lookup_topic(&target) else {
                continue;
            };
            let published = match runtime.publish(copies.clone(), now).await {
                Ok(_) => rows,
                // Down for now (an I/O error, shutting down): retried later.
                Err(error) if error.is_retryable() => return Err(error),
                // One copy the dead-letter topic refuses (too large for it,
                // say) must not hold up the others: one by one, and the
                // refused ones are kept in the list only.
                Err(_) => {
                    let mut published = Vec::with_capacity(rows.len());
                    for (copy, row) in copies.into_iter().zip(rows) {
                        match runtime.publish(vec![copy], now).await {
                            Ok(_) => published.push(row),
                            Err(error) if error.is_retryable() => return Err(error),
                            Err(error) => {
                                error!(dead_letter_topic = %target, group = %row.0, id = row.1, %error, "The dead-letter topic refuses this copy; the dead letter is kept in the group's list only.");
                                dropped.push(row);
                            }
                        }
                    }
                    published
                }
            };
            self.metrics
                .dead_letter_copies
                .inc_by(published.len() as u64);
            let meta = self.meta.clone();
            blocking(move || meta.copies_done(&published)).await?;
        }
        let meta = self.meta.clone();
        blocking(move || meta.copies_done(&dropped)).await?;
        Ok(more)
    }

    /// The open topics, as a snapshot (no lock held afterwards).
    fn topic_list(&self) -> Vec<Arc<TopicRuntime>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Returns once some topic has a group (at once if one has).
    async fn until_a_group_exists(&self) {
        loop {
            let added = self.group_added.notified();
            tokio::pin!(added);
            // Registered before the check: a group added after it wakes us.
            added.as_mut().enable();
            let any = self.topic_list().iter().any(|topic| {
                !topic
                    .groups
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_empty()
            });
            if any {
                return;
            }
            added.await;
        }
    }

    fn all_groups(&self) -> Vec<Arc<GroupRuntime>> {
        self.topic_list()
            .iter()
            .flat_map(|topic| topic.group_list())
            .collect()
    }
}

/// A dead letter as the list records it.
fn dead_letter_record(effect: &DeadLetterEffect) -> DeadLetterRecord {
    DeadLetterRecord {
        original: PartitionOffset {
            partition: effect.partition,
            offset: effect.offset,
        },
        reason: effect.reason.clone(),
        attempts: effect.attempts,
        dead_at: effect.dead_at,
    }
}

/// The event published to a dead-letter topic: the original, with extensions
/// saying where it came from and why, and an id derived from the dead
/// letter (`<topic>.<partition>.<offset>.<group>.<dead-letter id>`): the same
/// for every attempt to publish it, so the dead-letter topic's dedup window
/// drops a copy published again after a crash.
fn dead_letter_copy(
    original: &StoredEvent,
    group: &GroupName,
    record: &DeadLetterRecord,
    id: u64,
) -> EventInput {
    let mut event: Event = original.event.clone();
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
        ("dlreason", ExtensionValue::String(record.reason.clone())),
        (
            "dlattempts",
            ExtensionValue::Integer(i64::from(record.attempts)),
        ),
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

/// The `group-flush` task: a round every `interval`, or at once when a
/// caller asks ([`Inner::persist_now`]); each round covers every ticket
/// given out before it started.
async fn flush_loop(inner: Arc<Inner>, interval: Duration, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Ticks only while some group exists (see the module docs); a
        // caller waiting for a round is served either way.
        let tick = async {
            inner.until_a_group_exists().await;
            ticker.tick().await;
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tick => {}
            () = inner.flusher.wake.notified() => {}
        }
        let covered = inner.flusher.requested.load(Ordering::SeqCst);
        let result = inner.flush().await;
        inner.record_flush(&result);
        inner
            .flusher
            .rounds
            .send_modify(|round| *round = (covered, result));
    }
}

async fn timer_loop(inner: Arc<Inner>, interval: Duration, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = inner.until_a_group_exists() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut buried = false;
        for topic in inner.topic_list() {
            for group in topic.group_list() {
                buried |= group.tick(inner.now());
            }
        }
        if buried {
            inner.kick_flush();
        }
    }
}

/// The `dead-letter-copies` task: publishes pending dead-letter copies at
/// start (a restart may have left some), whenever a flush recorded new
/// ones, and again after a failure with a doubling backoff.
async fn copy_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    let mut retry = COPY_RETRY;
    let mut pending = true;
    loop {
        if pending {
            match inner.publish_copies().await {
                Ok(more) => {
                    retry = COPY_RETRY;
                    pending = more;
                    if more {
                        continue;
                    }
                }
                Err(error) => {
                    inner.metrics.dead_letter_copy_failures.inc();
                    warn!(%error, retry_ms = retry.as_millis() as u64, "Publishing dead-letter copies failed; will retry.");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                        () = inner.copies_wanted.notified() => {}
                    }
                    retry = (retry * 2).min(COPY_RETRY_MAX);
                    continue;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = inner.copies_wanted.notified() => pending = true,
        }
    }
}

/// The `stream-compactor` task: a compaction pass at start (erasures a
/// restart left pending) and `delay` after each wake-up.
/// While `meta.redb` is failed (a write failed: disk full, I/O error),
/// tries to reopen it every [`meta::REOPEN_BACKOFF`], so it recovers by
/// itself once the disk works, without waiting for a call.
async fn meta_probe_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(meta::REOPEN_BACKOFF) => {}
        }
        if inner.meta.failure().is_some() {
            let meta = inner.meta.clone();
            let _ = tokio::task::spawn_blocking(move || meta.probe()).await;
        }
    }
}

async fn compaction_loop(inner: Arc<Inner>, delay: Duration, cancel: CancellationToken) {
    loop {
        if let Err(error) = inner.compact().await {
            warn!(%error, "Compacting away hard-deleted events failed; will retry.");
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(COMPACTION_RETRY) => continue,
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = inner.compaction_wanted.notified() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[async_trait]
impl Topics for EmbeddedBackend {
    async fn create_topic(&self, spec: TopicSpec) -> Result<TopicInfo> {
        self.administer(move |inner| async move {
            inner.check_open()?;
            spec.validate()?;
            let _admin = inner.admin_lock().await?;
            if inner.topic(&spec.name).is_ok() {
                return Err(Error::TopicExists {
                    topic: spec.name.to_string(),
                });
            }
            {
                let topics = inner.topics.read().unwrap_or_else(PoisonError::into_inner);
                let partitions = topics
                    .values()
                    .map(|topic| u64::from(topic.info().spec.partitions))
                    .sum();
                inner.topic_limits.check(&spec, topics.len(), partitions)?;
            }
            let dir = inner.topic_dir(&spec.name);
            {
                let dir = dir.clone();
                blocking(move || {
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir).map_err(|error| Error::Unavailable {
                            detail: format!("{}: {error}", dir.display()),
                        })?;
                    }
                    Ok(())
                })
                .await?;
            }
            let info = TopicInfo {
                spec: spec.clone(),
                created_at: inner.now(),
            };
            // A topic of the same name deleted earlier leaves no stream index.
            inner.streams.purge(&spec.name).await?;
            let partitions = inner.open_partitions(&spec).await?;
            let runtime = Arc::new(TopicRuntime::new(info.clone(), dir, partitions));
            let (meta, stored) = (inner.meta.clone(), info.clone());
            if let Err(error) = blocking(move || meta.put_topic(&stored)).await {
                let _ = runtime.close().await;
                return Err(error);
            }
            inner
                .topics
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(spec.name.clone(), runtime);
            info!(topic = %spec.name, partitions = spec.partitions, "Created topic.");
            Ok(info)
        })
        .await
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.inner.check_open()?;
        let topics = self
            .inner
            .topics
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(topics.values().map(|topic| topic.info()).collect())
    }

    async fn describe_topic(&self, topic: &TopicName) -> Result<TopicDescription> {
        let runtime = self.inner.topic(topic)?;
        Ok(TopicDescription {
            info: runtime.info(),
            partition_info: runtime.partition_info(),
        })
    }

    async fn update_topic(&self, topic: &TopicName, update: TopicUpdate) -> Result<TopicInfo> {
        let topic = topic.clone();
        self.administer(move |inner| async move {
            let _admin = inner.admin_lock().await?;
            let runtime = inner.topic(&topic)?;
            let mut info = runtime.info();
            let spec = info.spec.updated(&update);
            spec.validate()?;
            let window_changed = spec.dedup_window_ms != info.spec.dedup_window_ms;
            info.spec = spec;
            let (meta, stored) = (inner.meta.clone(), info.clone());
            blocking(move || meta.put_topic(&stored)).await?;
            runtime.set_info(info.clone());
            runtime.set_retention(&info.spec).await?;
            if window_changed {
                // Publishes now see the ids the log holds within the new
                // window, as they would after a restart.
                runtime.rebuild_dedup(inner.now()).await?;
            }
            Ok(info)
        })
        .await
    }

    async fn delete_topic(&self, topic: &TopicName) -> Result<()> {
        let topic = topic.clone();
        self.administer(move |inner| async move {
            let _admin = inner.admin_lock().await?;
            let runtime = inner.topic(&topic)?;
            let (meta, name) = (inner.meta.clone(), topic.to_string());
            blocking(move || meta.delete_topic(&name)).await?;
            inner
                .topics
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&topic);
            runtime.close().await?;
            inner.streams.purge(&topic).await?;
            let dir = runtime.dir.clone();
            blocking(move || {
                std::fs::remove_dir_all(&dir).map_err(|error| Error::Unavailable {
                    detail: format!("{}: {error}", dir.display()),
                })
            })
            .await?;
            info!(topic = %topic, "Deleted topic.");
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Events for EmbeddedBackend {
    async fn publish(
        &self,
        topic: &TopicName,
        events: Vec<EventInput>,
    ) -> Result<Vec<PublishResult>> {
        let runtime = self.inner.topic(topic)?;
        runtime.publish(events, self.inner.now()).await
    }

    async fn read(
        &self,
        topic: &TopicName,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadResult> {
        self.inner.topic(topic)?.read(partition, from, max).await
    }

    async fn offset_for_time(
        &self,
        topic: &TopicName,
        partition: u32,
        time_ms: i64,
    ) -> Result<u64> {
        self.inner
            .topic(topic)?
            .offset_for_time(partition, time_ms)
            .await
    }

    async fn wait_for(
        &self,
        topic: &TopicName,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64> {
        self.inner
            .topic(topic)?
            .wait_for(partition, offset, timeout)
            .await
    }
}

#[async_trait]
impl Groups for EmbeddedBackend {
    async fn put_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        spec: GroupSpec,
    ) -> Result<(GroupInfo, bool)> {
        spec.validate()?;
        let (topic, group) = (topic.clone(), group.clone());
        self.administer(move |inner| async move {
            let (topic, group) = (&topic, &group);
            let _admin = inner.admin_lock().await?;
            let runtime = inner.topic(topic)?;
            let key = group_key(topic.as_str(), group.as_str());
            let existing = runtime
                .groups
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(group)
                .cloned();
            if let Some(existing) = existing {
                let mut info = existing.info();
                if info.spec.mode != spec.mode {
                    return Err(Error::GroupConflict {
                        group: group.to_string(),
                        existing: info.spec.mode.to_string(),
                    });
                }
                info.spec = spec.clone();
                let (meta, stored) = (inner.meta.clone(), info.clone());
                // Stored and made in memory by one task, so a caller that goes
                // away cannot leave the two apart.
                blocking(move || {
                    meta.put_group(&key, &stored, None)?;
                    existing.set_spec(spec);
                    Ok(())
                })
                .await?;
                return Ok((info, false));
            }
            let info = GroupInfo {
                name: group.clone(),
                spec: spec.clone(),
                created_at: inner.now(),
            };
            let starts = runtime.start_offsets(spec.start).await?;
            let created = Arc::new(GroupRuntime::new(
                key.clone(),
                info.clone(),
                inner.group_budget,
                &starts,
                None,
            ));
            let state =
                serde_json::to_vec(&created.snapshot()).map_err(|error| Error::Corrupt {
                    detail: format!("group state: {error}"),
                })?;
            let (meta, stored, added) = (inner.meta.clone(), info.clone(), Arc::clone(&inner));
            let name = group.clone();
            blocking(move || {
                meta.put_group(&key, &stored, Some(&state))?;
                runtime
                    .groups
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name, created);
                added.group_added.notify_waiters();
                Ok(())
            })
            .await?;
            info!(topic = %topic, group = %group, mode = %spec.mode, "Created group.");
            Ok((info, true))
        })
        .await
    }

    async fn list_groups(&self, topic: &TopicName) -> Result<Vec<GroupInfo>> {
        let runtime = self.inner.topic(topic)?;
        // A BTreeMap: already in name order.
        let groups = runtime
            .groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|group| group.info())
            .collect();
        Ok(groups)
    }

    async fn group_status(&self, topic: &TopicName, group: &GroupName) -> Result<GroupStatus> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let (members, partitions, in_flight, pending, generation) =
            found.status(&runtime.end_offsets(), self.inner.now());
        let (meta, key) = (self.inner.meta.clone(), found.key.clone());
        let dead_letters = blocking(move || meta.dead_letter_count(&key)).await?;
        Ok(GroupStatus {
            info: found.info(),
            members,
            partitions,
            in_flight,
            pending,
            dead_letters,
            generation,
        })
    }

    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<()> {
        let (topic, group) = (topic.clone(), group.clone());
        self.administer(move |inner| async move {
            let _admin = inner.admin_lock().await?;
            let (runtime, found) = inner.group(&topic, &group)?;
            let (meta, key, name) = (inner.meta.clone(), found.key.clone(), group.clone());
            // Deleted from storage and memory by one task (see put_group).
            blocking(move || {
                meta.delete_group(&key)?;
                runtime
                    .groups
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&name);
                Ok(())
            })
            .await
        })
        .await
    }

    async fn fetch(
        &self,
        topic: &TopicName,
        group: &GroupName,
        request: FetchRequest,
    ) -> Result<FetchResponse> {
        request.validate()?;
        let (runtime, found) = self.inner.group(topic, group)?;
        let clock = Arc::clone(&self.inner.env.clock);
        let (response, buried) = found
            .fetch(&runtime, &request, move || clock.now_ms())
            .await?;
        if buried {
            self.inner.kick_flush();
        }
        Ok(response)
    }

    async fn ack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        let (_, found) = self.inner.group(topic, group)?;
        let now = self.inner.now();
        let (outcome, _) = found.settle(delivery_ids, |state, id| (state.ack(id, now), None));
        self.inner.settled(&found, durability, false).await?;
        Ok(outcome)
    }

    async fn nack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        delay: Option<Duration>,
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        let (_, found) = self.inner.group(topic, group)?;
        let now = self.inner.now();
        let delay_ms = delay.map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let (outcome, buried) =
            found.settle(delivery_ids, |state, id| state.nack(id, delay_ms, now));
        self.inner.settled(&found, durability, buried).await?;
        Ok(outcome)
    }

    async fn extend(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        ack_wait: Option<Duration>,
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        let (_, found) = self.inner.group(topic, group)?;
        let now = self.inner.now();
        let ack_wait_ms = ack_wait.map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        let (outcome, _) = found.settle(delivery_ids, |state, id| {
            (state.extend(id, ack_wait_ms, now), None)
        });
        self.inner.settled(&found, durability, false).await?;
        Ok(outcome)
    }

    async fn reject(
        &self,
        topic: &TopicName,
        group: &GroupName,
        delivery_ids: &[String],
        reason: &str,
        durability: AckDurability,
    ) -> Result<AckOutcome> {
        let (_, found) = self.inner.group(topic, group)?;
        let now = self.inner.now();
        let (outcome, buried) = found.settle(delivery_ids, |state, id| {
            let effect = state.reject(id, reason, now);
            (effect.is_some(), effect)
        });
        self.inner.settled(&found, durability, buried).await?;
        Ok(outcome)
    }

    async fn commit(
        &self,
        topic: &TopicName,
        group: &GroupName,
        request: CommitRequest,
    ) -> Result<()> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let offsets: Vec<(u32, u64)> = request
            .offsets
            .iter()
            .map(|entry| (entry.partition, entry.offset))
            .collect();
        found.commit(
            &request.member,
            request.generation,
            &offsets,
            &runtime.end_offsets(),
        )?;
        self.inner.persist_now().await
    }

    async fn reset(&self, topic: &TopicName, group: &GroupName, to: StartPosition) -> Result<()> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let starts = runtime.start_offsets(to).await?;
        found.reset(&starts);
        self.inner.persist_now().await
    }

    async fn leave(&self, topic: &TopicName, group: &GroupName, member: &str) -> Result<()> {
        let (_, found) = self.inner.group(topic, group)?;
        found.leave(member, self.inner.now());
        Ok(())
    }

    async fn dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let (meta, key) = (self.inner.meta.clone(), found.key.clone());
        let records = blocking(move || meta.dead_letters(&key, limit)).await?;
        let mut letters = Vec::with_capacity(records.len());
        for (id, record) in records {
            let event = read_one(&runtime, record.original).await?;
            letters.push(DeadLetter {
                id,
                event,
                reason: record.reason,
                attempts: record.attempts,
                original: record.original,
                dead_at: record.dead_at,
            });
        }
        Ok(letters)
    }

    /// Reads the dead letters and their events (changing nothing), then in
    /// one step makes the events deliverable and queues the ids to leave the
    /// list, then waits for the flush that writes both in one transaction.
    /// A caller that goes away before that step changed nothing; after it,
    /// the flush happens anyway.
    async fn redrive(
        &self,
        topic: &TopicName,
        group: &GroupName,
        ids: Option<&[u64]>,
    ) -> Result<u64> {
        let (runtime, found) = self.inner.group(topic, group)?;
        let _one_at_a_time = found.redriving.lock().await;
        let (meta, key, ids) = (
            self.inner.meta.clone(),
            found.key.clone(),
            ids.map(<[u64]>::to_vec),
        );
        let records = blocking(move || meta.dead_letters_by_id(&key, ids.as_deref())).await?;
        let mut events = Vec::with_capacity(records.len());
        let mut listed = Vec::with_capacity(records.len());
        for (id, record) in records {
            listed.push(id);
            // Gone from the log: it leaves the list, with nothing to deliver.
            if let Some(event) = read_one(&runtime, record.original).await? {
                events.push(event);
            }
        }
        let count = found.redrive(events, listed, self.inner.now());
        self.inner.persist_now().await?;
        Ok(count)
    }
}

/// The event at `position`, or `None` if retention removed it.
async fn read_one(topic: &TopicRuntime, position: PartitionOffset) -> Result<Option<StoredEvent>> {
    match topic.read(position.partition, position.offset, 1).await {
        Ok(read) => Ok(read
            .events
            .into_iter()
            .next()
            .filter(|event| event.offset == position.offset)),
        Err(Error::OffsetOutOfRange { .. }) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Bucket and key names for the kv store: 1–200 bytes, no NUL.
fn check_kv_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 200 || name.contains('\0') {
        return Err(Error::invalid(field, "must be 1 to 200 bytes without NUL"));
    }
    Ok(())
}

#[async_trait]
impl Kv for EmbeddedBackend {
    async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<KvEntry>> {
        self.inner.check_open()?;
        check_kv_name("bucket", bucket)?;
        check_kv_name("key", key)?;
        let (meta, bucket, key) = (self.inner.meta.clone(), bucket.to_owned(), key.to_owned());
        blocking(move || meta.kv_get(&bucket, &key)).await
    }

    async fn kv_put(&self, bucket: &str, key: &str, value: Bytes, expect: Expect) -> Result<u64> {
        self.inner.check_open()?;
        check_kv_name("bucket", bucket)?;
        check_kv_name("key", key)?;
        let (meta, bucket, key) = (self.inner.meta.clone(), bucket.to_owned(), key.to_owned());
        blocking(move || meta.kv_put(&bucket, &key, &value, expect)).await
    }

    async fn kv_put_many(
        &self,
        entries: Vec<(String, String, Bytes)>,
        durability: KvDurability,
    ) -> Result<()> {
        self.inner.check_open()?;
        for (bucket, key, _) in &entries {
            check_kv_name("bucket", bucket)?;
            check_kv_name("key", key)?;
        }
        let meta = self.inner.meta.clone();
        blocking(move || meta.kv_put_many(&entries, durability)).await
    }

    async fn kv_delete(&self, bucket: &str, key: &str, expect: Expect) -> Result<bool> {
        self.inner.check_open()?;
        check_kv_name("bucket", bucket)?;
        check_kv_name("key", key)?;
        let (meta, bucket, key) = (self.inner.meta.clone(), bucket.to_owned(), key.to_owned());
        blocking(move || meta.kv_delete(&bucket, &key, expect)).await
    }

    async fn kv_delete_many(&self, entries: Vec<(String, String)>) -> Result<u64> {
        self.inner.check_open()?;
        for (bucket, key) in &entries {
            check_kv_name("bucket", bucket)?;
            check_kv_name("key", key)?;
        }
        let meta = self.inner.meta.clone();
        blocking(move || meta.kv_delete_many(&entries)).await
    }

    async fn kv_keys(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.inner.check_open()?;
        check_kv_name("bucket", bucket)?;
        let (meta, bucket, prefix, after) = (
            self.inner.meta.clone(),
            bucket.to_owned(),
            prefix.to_owned(),
            after.map(str::to_owned),
        );
        blocking(move || meta.kv_keys(&bucket, &prefix, after.as_deref(), limit)).await
    }
}

#[async_trait]
impl Streams for EmbeddedBackend {
    async fn append(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        events: Vec<EventInput>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        let runtime = self.inner.topic(topic)?;
        self.inner
            .streams
            .append(runtime, stream, events, expected)
            .await
    }

    async fn read_stream(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        let runtime = self.inner.topic(topic)?;
        self.inner
            .streams
            .read(&runtime, stream, from_version, direction, limit)
            .await
    }

    async fn stream_metadata(
        &self,
        topic: &TopicName,
        stream: &StreamId,
    ) -> Result<StreamMetadata> {
        self.inner.topic(topic)?;
        self.inner.streams.metadata(topic, stream).await
    }

    async fn delete_stream(&self, topic: &TopicName, stream: &StreamId, hard: bool) -> Result<()> {
        let runtime = self.inner.topic(topic)?;
        let (inner, stream) = (Arc::clone(&self.inner), stream.clone());
        // Runs to completion even if the caller goes away: once the delete
        // is committed, its events must become unreadable and be compacted.
        tokio::spawn(async move {
            let erased = inner.streams.delete(&runtime, &stream, hard).await?;
            if !erased.is_empty() {
                inner.mark_erased(&runtime, &erased);
            }
            Ok(())
        })
        .await
        .map_err(|error| task_error(&error))?
    }

    async fn put_snapshot(
        &self,
        topic: &TopicName,
        stream: &StreamId,
        version: u64,
        state: serde_json::Value,
    ) -> Result<()> {
        self.inner.topic(topic)?;
        self.inner
            .streams
            .put_snapshot(topic, stream, version, &state)
            .await
    }

    async fn get_snapshot(
        &self,
        topic: &TopicName,
        stream: &StreamId,
    ) -> Result<Option<StreamSnapshot>> {
        self.inner.topic(topic)?;
        self.inner.streams.get_snapshot(topic, stream).await
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    fn health(&self) -> Vec<herald_backend::HealthIssue> {
        let code = "storage_unavailable";
        let mut issues = Vec::new();
        for topic in self.inner.topic_list() {
            for (partition, failure) in topic.failures() {
                issues.push(herald_backend::HealthIssue {
                    component: format!("topic {} partition {partition}", topic.name),
                    code,
                    error: failure.error.to_string(),
                    since_ms: failure.since_ms,
                });
            }
        }
        let stores = [
            ("meta.redb", self.inner.meta.failure()),
            ("streams.redb", self.inner.streams.failure()),
        ];
        for (component, failure) in stores {
            if let Some((error, since_ms)) = failure {
                issues.push(herald_backend::HealthIssue {
                    component: component.to_owned(),
                    code,
                    error,
                    since_ms,
                });
            }
        }
        if let Some(issue) = self.inner.group_state_issue() {
            issues.push(issue);
        }
        issues
    }

    async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        inner.ready.store(false, Ordering::SeqCst);
        // A topic or group change under way ends before storage closes.
        drop(inner.admin.lock().await);
        self.cancel.cancel();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            let _ = task.await;
        }
        let flushed = inner.flush().await;
        inner.record_flush(&flushed);
        // Callers still waiting for a round get this last one.
        let last = flushed.clone();
        inner
            .flusher
            .rounds
            .send_modify(|round| *round = (u64::MAX, last));
        if let Err(error) = inner.publish_copies().await {
            warn!(%error, "Publishing dead-letter copies at shutdown failed; they are published after the restart.");
        }
        let topics = inner.topic_list();
        let mut result = flushed;
        for topic in &topics {
            if let Err(error) = topic.close().await {
                result = result.and(Err(error));
            }
        }
        // The logs are closed: nothing is in flight, every checkpoint can
        // move to its partition's end.
        if let Err(error) = inner.streams.checkpoint(&topics).await {
            result = result.and(Err(error));
        }
        if let Err(error) = inner.streams.close().await {
            result = result.and(Err(error));
        }
        info!(data_dir = %inner.data_dir.display(), "Embedded backend closed.");
        result
    }
}
