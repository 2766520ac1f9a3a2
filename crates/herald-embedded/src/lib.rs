//! The embedded backend: Herald's own log ([`herald_log`]) for events, redb
//! for metadata and group state. The default backend; one process, one data
//! directory:
//!
//! ```text
//! <data_dir>/
//!   meta.redb                    topics, groups, group state, dead letters, kv
//!   streams.redb                 the stream index (derived from the logs)
//!   topics/<topic>/<partition>/  one herald-log per partition
//!   topics/<topic>/dedup/        the dedup window's hash key and runs
//!                                (derived from the logs: `dedup_runs.rs`)
//! ```
//!
//! # Layout
//!
//! One module per backend trait, as `herald-nats` has them:
//! `topics.rs`, `events.rs`, `groups.rs`, `streams.rs`, `kv.rs` (each the
//! trait's `impl` on [`EmbeddedBackend`] and nothing else). The backend's
//! own machinery beside them: `topic.rs` (a topic's partition logs,
//! routing, dedup: `TopicRuntime`, which groups read through
//! `herald_groups::Source`), `stream.rs` (the stream index), `erasure.rs`
//! (hard-deleted events: the erased set and the `stream-compactor` task),
//! `persist.rs` (group state persistence: the `group-flush` and
//! `group-timer` tasks), `dead_letters.rs` (the `dead-letter-copies`
//! task), `meta.rs` (the redb tables), `dedup.rs` and `dedup_runs.rs`
//! (the window in memory and on disk), `codec.rs`,
//! `metrics.rs`. The group state machines and their fetch/settle runtime
//! are `herald-groups`; this backend persists their snapshots in redb.
//! This file holds the options, opening and recovery, and [`Backend`]
//! (health, shutdown).
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
//! catches up with the log, which stays the source of truth (the
//! `stream-checkpoint` task moves the checkpoints every second while the
//! logs grow, so after a crash that is about a second of log, plain
//! publishes included). Reading a stream
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
mod correlated;
mod dead_letters;
mod dedup;
mod dedup_runs;
mod erasure;
mod events;
mod groups;
mod kv;
mod meta;
mod metrics;
mod persist;
mod stream;
mod streams;
mod topic;
mod topics;

#[doc(hidden)]
pub use dedup::Probe as DedupProbe;
pub use erasure::CompactionReport;
pub use herald_groups::{Budget as GroupBudget, Memory as GroupMemory};
pub use meta::MetaFaults;
pub use metrics::{GroupMetrics, names as metric_names};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use herald_backend::cancel::run_to_completion;
use herald_backend::{Backend, Error, Result, TopicSpec, topic::TopicLimits};
use herald_log::{Log, LogEnv, LogHandle, LogMetrics, SystemClock, WriterOptions};
use herald_types::{GroupName, TopicName};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use dead_letters::copy_loop;
use erasure::compaction_loop;
use herald_groups::{Flusher, GroupRuntime, Snapshot};
use meta::Meta;
use persist::{flush_loop, timer_loop};
use stream::{StreamStore, TopicStreams};
use topic::TopicRuntime;

/// One topic of the backend: its partition logs, routing and dedup
/// ([`TopicRuntime`]), the stream index's state of the topic
/// ([`TopicStreams`]) and its groups. The three parts know nothing of each
/// other (`topic.rs` neither groups nor streams; groups and `stream.rs`
/// read events through a `&TopicRuntime`): this entry is where they meet.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) runtime: Arc<TopicRuntime>,
    pub(crate) streams: Arc<TopicStreams>,
    pub(crate) groups: RwLock<BTreeMap<GroupName, Arc<GroupRuntime>>>,
}

impl Topic {
    fn new(runtime: TopicRuntime) -> Self {
        let streams = Arc::new(TopicStreams::new(&runtime));
        Self {
            runtime: Arc::new(runtime),
            streams,
            groups: RwLock::default(),
        }
    }

    /// The topic's groups, as a snapshot (no lock held afterwards).
    pub(crate) fn group_list(&self) -> Vec<Arc<GroupRuntime>> {
        self.groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

impl std::ops::Deref for Topic {
    type Target = TopicRuntime;

    fn deref(&self) -> &TopicRuntime {
        &self.runtime
    }
}

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
    /// Ids per dedup run at most: what a crash can leave for the next open
    /// to read back from the log (see `dedup_runs.rs`).
    pub dedup_run_ids: usize,
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
            dedup_run_ids: dedup_runs::RUN_IDS,
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
    topics: RwLock<BTreeMap<TopicName, Arc<Topic>>>,
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
    dedup_run_ids: usize,
    metrics: Arc<GroupMetrics>,
    flusher: Flusher,
    /// Since when (ms) group state has failed to persist, and why.
    flush_failing: Mutex<Option<(i64, String)>>,
    /// Wakes the `dead-letter-copies` task (a flush recorded copies).
    copies_wanted: tokio::sync::Notify,
}

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
            dedup_run_ids: options.dedup_run_ids.max(1),
            metrics: Arc::clone(&options.metrics),
            flusher: Flusher::new(),
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
            tokio::spawn(stream_checkpoint_loop(Arc::clone(&inner), cancel.clone())),
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

    /// The stream index's checkpoint of each partition `(topic, partition,
    /// offset)`: the next open re-indexes the log from there. For tests.
    #[doc(hidden)]
    pub async fn stream_checkpoints(&self) -> Result<Vec<(String, u32, u64)>> {
        self.inner.check_open()?;
        self.inner.streams.checkpoints().await
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
    fn lookup_topic(&self, name: &TopicName) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn topic(&self, name: &TopicName) -> Result<Arc<Topic>> {
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
    ) -> Result<(Arc<Topic>, Arc<GroupRuntime>)> {
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
            let runtime = Arc::new(Topic::new(TopicRuntime::new(
                info.clone(),
                self.topic_dir(&info.spec.name),
                partitions,
                self.dedup_run_ids,
            )));
            runtime.open_dedup(now).await?;
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

    /// The open topics, as a snapshot (no lock held afterwards).
    fn topic_list(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// The `stream-compactor` task: a compaction pass at start (erasures a
/// restart left pending) and `delay` after each wake-up.
/// While `meta.redb` is failed (a write failed: disk full, I/O error),
/// tries to reopen it every [`meta::REOPEN_BACKOFF`], so it recovers by
/// itself once the disk works, without waiting for a call.
/// The `stream-checkpoint` task: every [`stream::DURABLE_EVERY`] while some
/// log grows, moves the stream index's checkpoints to the logs' ends, so
/// that the open after a crash re-reads about a second of each log, not
/// everything published since the last clean stop (a partition with only
/// plain publishes has no stream append to move its checkpoint).
async fn stream_checkpoint_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(stream::DURABLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ends: Vec<Vec<u64>> = Vec::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let topics = inner.topic_list();
        let ends: Vec<Vec<u64>> = topics.iter().map(|topic| topic.end_offsets()).collect();
        if ends == last_ends {
            continue;
        }
        let streams: Vec<Arc<TopicStreams>> = topics
            .iter()
            .map(|topic| Arc::clone(&topic.streams))
            .collect();
        match inner.streams.checkpoint(&streams, false).await {
            Ok(()) => last_ends = ends,
            Err(error) => {
                warn!(%error, "Moving the stream index's checkpoints failed; will retry.");
            }
        }
    }
}

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

    fn storage_stats(&self) -> Vec<herald_backend::TopicStorageStats> {
        self.inner
            .topic_list()
            .iter()
            .map(|topic| {
                let (segments, dedup_ids) = topic.storage_stats();
                herald_backend::TopicStorageStats {
                    topic: topic.name.clone(),
                    segments,
                    dedup_ids,
                }
            })
            .collect()
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
        let flushed = inner.last_flush().await;
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
        let streams: Vec<Arc<TopicStreams>> = topics
            .iter()
            .map(|topic| Arc::clone(&topic.streams))
            .collect();
        if let Err(error) = inner.streams.checkpoint(&streams, true).await {
            result = result.and(Err(error));
        }
        if let Err(error) = inner.streams.close().await {
            result = result.and(Err(error));
        }
        info!(data_dir = %inner.data_dir.display(), "Embedded backend closed.");
        result
    }
}
