//! A topic's events at run time: one log per partition, routing and the
//! deduplication index. It knows neither groups nor streams: they read
//! through it, and `crate::Topic` holds the three together.
//!
//! Deduplication keeps, for the last `dedup_window_ms`, a map from a 128-bit
//! hash of each event id to the position it was appended at. The log is the
//! source of truth; the ids also go to disk in runs (`dedup_runs.rs`), so
//! that on open only the log's tail past the last run is read back, and a
//! re-publish after a crash or a restart is still caught. A
//! publish reserves its ids before appending; a concurrent publish of the
//! same id waits for that append and then reports the original position.
//! Once ids are reserved the publish runs to completion even if its caller
//! goes away (see [`TopicRuntime::publish`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use herald_backend::cancel::run_to_completion;
use herald_backend::{
    Error, Fsync, PartitionInfo, PublishResult, ReadResult, Result, TopicInfo, TopicSpec,
};
use herald_log::{AppendAck, FsyncPolicy, LogError, LogHandle, LogOptions, NewRecord, Retention};
use herald_types::{Event, EventInput, TopicName, partition_for_key};
use tracing::{info, warn};

use crate::codec;
use crate::correlated::{CorrelatedOffsets, Stretch};
use crate::dedup::{Dedup, Key, KeyedHash, Runs, Slot};
use crate::dedup_runs::{self, IdHasher, NewRun};
use crate::erasure::ErasedOffsets;

/// Bytes read from a log per read call.
const READ_BYTES: usize = 1024 * 1024;

/// The log options a topic's settings call for.
pub(crate) fn log_options(spec: &TopicSpec) -> LogOptions {
    let fsync = match spec.fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Interval => FsyncPolicy::Interval(Duration::from_millis(spec.fsync_interval_ms)),
        Fsync::Never => FsyncPolicy::Never,
    };
    LogOptions {
        fsync,
        retention: retention(spec),
        ..LogOptions::default()
    }
}

fn retention(spec: &TopicSpec) -> Retention {
    Retention {
        max_age: spec.retention.max_age_ms.map(Duration::from_millis),
        max_bytes: spec.retention.max_bytes,
        max_records: spec.retention.max_events,
    }
}

/// Maps a log error to the backend's.
pub(crate) fn log_error(partition: u32, error: LogError) -> Error {
    match error {
        LogError::OffsetOutOfRange { offset, start } => Error::OffsetOutOfRange {
            partition,
            offset,
            start,
        },
        LogError::Corrupt { .. } | LogError::Lost { .. } => Error::Corrupt {
            detail: error.to_string(),
        },
        LogError::Closed => Error::ShuttingDown,
        LogError::Io { .. } | LogError::Failed { .. } => Error::StorageUnavailable {
            detail: format!("partition {partition}: {error}"),
        },
        other => Error::Unavailable {
            detail: other.to_string(),
        },
    }
}

/// A topic of the embedded backend.
#[derive(Debug)]
pub(crate) struct TopicRuntime {
    pub(crate) name: TopicName,
    pub(crate) dir: PathBuf,
    info: RwLock<TopicInfo>,
    partitions: Vec<LogHandle>,
    dedup: Mutex<Dedup>,
    /// Held while a dedup run is written (one at a time, in order).
    run_writer: Arc<tokio::sync::Mutex<()>>,
    /// Ids per dedup run at most.
    run_ids: usize,
    round_robin: AtomicU64,
    /// Per partition: offsets of hard-deleted events not yet compacted away;
    /// reads skip them (see `erasure.rs`).
    pub(crate) erased: Vec<Arc<ErasedOffsets>>,
    /// Per partition: where this process appended correlated events (see
    /// `correlated.rs`).
    correlated: Vec<CorrelatedOffsets>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How one event of a publish is resolved.
enum Plan {
    Append {
        partition: u32,
        hash: Option<Key>,
    },
    /// A duplicate of an earlier event of the same call.
    SameAs(usize),
    Duplicate {
        partition: u32,
        offset: u64,
    },
    /// The id is being appended by another publish: wait for it.
    Wait {
        hash: Key,
    },
}

impl TopicRuntime {
    pub(crate) fn new(
        info: TopicInfo,
        dir: PathBuf,
        partitions: Vec<LogHandle>,
        run_ids: usize,
    ) -> Self {
        let erased = partitions.iter().map(|_| Arc::default()).collect();
        let correlated = partitions
            .iter()
            .map(|handle| CorrelatedOffsets::new(handle.reader().end_offset()))
            .collect();
        Self {
            name: info.spec.name.clone(),
            dir,
            info: RwLock::new(info),
            partitions,
            dedup: Mutex::new(Dedup::new()),
            run_writer: Arc::default(),
            run_ids,
            round_robin: AtomicU64::new(0),
            erased,
            correlated,
        }
    }

    pub(crate) fn info(&self) -> TopicInfo {
        self.info
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_info(&self, info: TopicInfo) {
        *self.info.write().unwrap_or_else(PoisonError::into_inner) = info;
    }

    pub(crate) fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// The partitions whose log is failed (a write or fsync failed, not yet
    /// recovered), with why.
    pub(crate) fn failures(&self) -> Vec<(u32, herald_log::LogFailure)> {
        (0u32..)
            .zip(&self.partitions)
            .filter_map(|(partition, handle)| Some((partition, handle.failure()?)))
            .collect()
    }

    /// Appends `records` to `partition`; `correlated` are the positions
    /// (in `records`) of events with a correlation or causation id, which
    /// the partition's [`CorrelatedOffsets`] learn of.
    pub(crate) async fn append(
        &self,
        partition: u32,
        records: Vec<NewRecord>,
        correlated: &[usize],
    ) -> Result<AppendAck> {
        let handle = self.handle(partition)?;
        let hints = &self.correlated[partition as usize];
        let tracked =
            (!correlated.is_empty()).then(|| hints.begin(|| handle.reader().end_offset()));
        let ack = handle
            .append(records)
            .await
            .map_err(|error| log_error(partition, error))?;
        if let Some(tracked) = tracked {
            let offsets: Vec<u64> = correlated
                .iter()
                .map(|&position| ack.base_offset + position as u64)
                .collect();
            tracked.finish(&offsets);
        }
        Ok(ack)
    }

    pub(crate) fn handle(&self, partition: u32) -> Result<&LogHandle> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| Error::PartitionNotFound {
                topic: self.name.to_string(),
                partition,
                partitions: self.partition_count(),
            })
    }

    /// Segment files over the partitions, and ids in the dedup window.
    pub(crate) fn storage_stats(&self) -> (u64, u64) {
        let segments = self
            .partitions
            .iter()
            .map(|handle| handle.reader().segment_count() as u64)
            .sum();
        (segments, lock(&self.dedup).len() as u64)
    }

    /// One past the last event, per partition.
    pub(crate) fn end_offsets(&self) -> Vec<u64> {
        self.partitions
            .iter()
            .map(|handle| handle.reader().end_offset())
            .collect()
    }

    pub(crate) fn partition_info(&self) -> Vec<PartitionInfo> {
        self.partitions
            .iter()
            .enumerate()
            .map(|(partition, handle)| PartitionInfo {
                partition: partition as u32,
                start_offset: handle.reader().start_offset(),
                end_offset: handle.reader().end_offset(),
                bytes: handle.reader().size_bytes(),
            })
            .collect()
    }

    fn dedup_dir(&self) -> PathBuf {
        self.dir.join("dedup")
    }

    /// Opens the dedup window (at open and when the topic is created): its
    /// hash key, the runs on disk still inside the window, and the ids of
    /// the log's tail past the last intact run, so a publish answers after
    /// a restart as it did before. Ids already in the index keep their
    /// position (the first one wins, as for publishes); events appended to
    /// streams are skipped, as stream appends do not enter the window.
    pub(crate) async fn open_dedup(&self, now: i64) -> Result<()> {
        let window = i64::try_from(self.info().spec.dedup_window_ms).unwrap_or(i64::MAX);
        let cutoff = if window == 0 {
            i64::MAX
        } else {
            now.saturating_sub(window)
        };
        let (dir, partitions) = (self.dedup_dir(), self.partitions.len());
        let (hasher, opened) = tokio::task::spawn_blocking(move || {
            let hasher = dedup_runs::load_key(&dir)?;
            Ok::<_, std::io::Error>((hasher, dedup_runs::open(&dir, partitions, cutoff)?))
        })
        .await
        .map_err(|error| Error::Unavailable {
            detail: format!("dedup open task: {error}"),
        })?
        .map_err(|error| Error::Unavailable {
            detail: format!("{}: {error}", self.dedup_dir().display()),
        })?;
        for (path, error) in &opened.damaged {
            warn!(topic = %self.name, path = %path.display(), %error, "A dedup run is unreadable; the log is read back from the run before it.");
        }
        let ends = self.end_offsets();
        let runs = Runs::new(opened.runs, ends, opened.next_seq, cutoff);
        *lock(&self.dedup) = Dedup::with_hasher(hasher);
        if window == 0 {
            lock(&self.dedup).persist(runs);
            return Ok(());
        }
        let from = opened
            .covered
            .unwrap_or_else(|| vec![0; self.partitions.len()]);
        let started = std::time::Instant::now();
        let found = self.scan_ids(hasher, cutoff, &from).await?;
        let read_back: usize = found.iter().map(Vec::len).sum();
        let on_disk: usize = runs.old.iter().map(dedup_runs::Run::len).sum();
        info!(topic = %self.name, runs = runs.old.len(), ids_in_runs = on_disk, ids_read_back = read_back, elapsed_ms = started.elapsed().as_millis() as u64, "Opened the dedup window.");
        let mut dedup = lock(&self.dedup);
        dedup.persist(runs);
        for (partition, entries) in (0u32..).zip(found) {
            for (key, offset, appended_at) in entries {
                dedup.record_found(key, partition, offset, appended_at);
            }
        }
        dedup.sort_order();
        Ok(())
    }

    /// Reads the whole window of every partition back into the dedup index
    /// (when the window changes: a longer one holds ids no run kept).
    pub(crate) async fn rebuild_dedup(&self, now: i64) -> Result<()> {
        let window = i64::try_from(self.info().spec.dedup_window_ms).unwrap_or(i64::MAX);
        if window == 0 {
            return Ok(());
        }
        let cutoff = now.saturating_sub(window);
        let hasher = lock(&self.dedup).hasher();
        let found = self
            .scan_ids(hasher, cutoff, &vec![0; self.partitions.len()])
            .await?;
        let mut dedup = lock(&self.dedup);
        for (partition, entries) in (0u32..).zip(found) {
            for (key, offset, appended_at) in entries {
                dedup.record_found(key, partition, offset, appended_at);
            }
        }
        dedup.sort_order();
        Ok(())
    }

    /// The id hash, offset and append time of every published event of each
    /// partition from `from` (or the window's start at `cutoff`, if later)
    /// to its end; the partitions read at once.
    async fn scan_ids(
        &self,
        hasher: IdHasher,
        cutoff: i64,
        from: &[u64],
    ) -> Result<Vec<Vec<(Key, u64, i64)>>> {
        let scans = (0u32..).zip(&self.partitions).map(|(partition, handle)| {
            let reader = handle.reader().clone();
            let from = from.get(partition as usize).copied().unwrap_or(0);
            let scan = tokio::task::spawn_blocking(
                move || -> std::result::Result<Vec<(Key, u64, i64)>, LogError> {
                    let mut next = reader.offset_for_timestamp(cutoff)?.max(from);
                    let mut entries = Vec::new();
                    loop {
                        let batch = reader.read_skipping_lost(next, READ_BYTES)?;
                        if batch.records.is_empty() {
                            return Ok(entries);
                        }
                        next = batch.next_offset;
                        for record in &batch.records {
                            if record.timestamp < cutoff || codec::record_stream(record).is_some() {
                                continue;
                            }
                            if let Some(id) = codec::record_id(record) {
                                entries.push((hasher.hash(id), record.offset, record.timestamp));
                            }
                        }
                    }
                },
            );
            async move {
                scan.await
                    .map_err(|error| Error::Unavailable {
                        detail: format!("dedup rebuild task: {error}"),
                    })?
                    .map_err(|error| log_error(partition, error))
            }
        });
        futures::future::try_join_all(scans).await
    }

    /// Writes a run taken from the window, off the caller's path; `writer`
    /// is the run writer's lock, taken by the caller so runs go to disk one
    /// at a time in the order they were taken.
    fn write_run(
        &self,
        run: NewRun,
        writer: tokio::sync::OwnedMutexGuard<()>,
    ) -> tokio::task::JoinHandle<()> {
        let dir = self.dedup_dir();
        let window = i64::try_from(self.info().spec.dedup_window_ms).unwrap_or(i64::MAX);
        let topic = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let newest = run.entries.iter().map(|entry| entry.appended_at).max();
            let seq = run.seq;
            if let Err(error) = dedup_runs::write(&dir, run) {
                warn!(%topic, seq, %error, "Could not write a dedup run; a restart reads more of the log back.");
            }
            if let Some(newest) = newest {
                let cutoff = newest.saturating_sub(window);
                if let Err(error) = dedup_runs::remove_expired(&dir, cutoff) {
                    warn!(%topic, %error, "Could not remove expired dedup runs.");
                }
            }
            drop(writer);
        })
    }

    /// See [`herald_backend::Events::publish`].
    ///
    /// From the moment `plan` reserves ids until `execute` records (or
    /// releases) them, the publish runs to completion even if its caller
    /// goes away: a reservation left behind would make every later publish
    /// of those ids wait forever, and an append already handed to a log
    /// writer lands whatever the caller does, so its position must be
    /// recorded for a re-publish to report.
    pub(crate) async fn publish(
        self: &Arc<Self>,
        inputs: Vec<EventInput>,
        now: i64,
    ) -> Result<Vec<PublishResult>> {
        let spec = self.info().spec;
        spec.check_events(&inputs)?;
        let window_ms = spec.dedup_window_ms;
        loop {
            let (plans, appending) = self.plan(&inputs, window_ms, now);
            if self.wait_for_pending(&plans).await {
                continue;
            }
            let reserved = plans
                .iter()
                .any(|plan| matches!(plan, Plan::Append { hash: Some(_), .. }));
            if !reserved {
                return self
                    .execute(&inputs, plans, &appending, window_ms, now)
                    .await;
            }
            let topic = Arc::clone(self);
            return run_to_completion(async move {
                topic
                    .execute(&inputs, plans, &appending, window_ms, now)
                    .await
            })
            .await;
        }
    }

    /// Decides, under the dedup lock, what happens to each event, reserving
    /// the ids to append; returns with the plans the partitions it will
    /// append reserved ids to and their ends now (see [`Dedup::appending`]),
    /// which `execute` releases.
    fn plan(
        &self,
        inputs: &[EventInput],
        window_ms: u64,
        now: i64,
    ) -> (Vec<Plan>, Vec<(u32, u64)>) {
        let mut dedup = lock(&self.dedup);
        if window_ms > 0 {
            dedup.expire(now.saturating_sub(i64::try_from(window_ms).unwrap_or(i64::MAX)));
        }
        // Each id hashed and looked up once; the lookups stay valid below,
        // where only this call's own reservations change the index (and
        // `seen` catches those).
        let looked_up: Vec<(Key, Option<Slot>)> = if window_ms > 0 {
            inputs
                .iter()
                .map(|input| {
                    let hash = dedup.hash(input.event.id.as_bytes());
                    (hash, dedup.get(hash))
                })
                .collect()
        } else {
            Vec::new()
        };
        let waiting = looked_up
            .iter()
            .any(|(_, slot)| matches!(slot, Some(Slot::Pending)));
        let mut seen: HashMap<Key, usize, BuildHasherDefault<KeyedHash>> =
            HashMap::with_capacity_and_hasher(looked_up.len(), BuildHasherDefault::default());
        let mut plans = Vec::with_capacity(inputs.len());
        let mut appending = Vec::new();
        for (index, input) in inputs.iter().enumerate() {
            let partition = self.choose_partition(input);
            let Some(&(hash, slot)) = looked_up.get(index) else {
                plans.push(Plan::Append {
                    partition,
                    hash: None,
                });
                continue;
            };
            if let Some(&first) = seen.get(&hash) {
                plans.push(Plan::SameAs(first));
                continue;
            }
            match slot {
                Some(Slot::Done { partition, offset }) => {
                    plans.push(Plan::Duplicate { partition, offset });
                }
                Some(Slot::Pending) => plans.push(Plan::Wait { hash }),
                None => {
                    seen.insert(hash, index);
                    if !waiting {
                        dedup.reserve(hash);
                        if !appending.iter().any(|&(noted, _)| noted == partition) {
                            let end = self.partitions[partition as usize].reader().end_offset();
                            dedup.appending(partition, end);
                            appending.push((partition, end));
                        }
                    }
                    plans.push(Plan::Append {
                        partition,
                        hash: Some(hash),
                    });
                }
            }
        }
        (plans, appending)
    }

    /// If some ids are being appended by another publish, waits until a
    /// publish finishes and returns true (the caller plans again).
    async fn wait_for_pending(&self, plans: &[Plan]) -> bool {
        if !plans.iter().any(|plan| matches!(plan, Plan::Wait { .. })) {
            return false;
        }
        let mut finished = lock(&self.dedup).finished.subscribe();
        let still_pending = {
            let dedup = lock(&self.dedup);
            plans.iter().any(|plan| matches!(plan, Plan::Wait { hash } if dedup.get(*hash) == Some(Slot::Pending)))
        };
        if still_pending {
            let _ = finished.changed().await;
        }
        true
    }

    async fn execute(
        &self,
        inputs: &[EventInput],
        plans: Vec<Plan>,
        appending: &[(u32, u64)],
        window_ms: u64,
        now: i64,
    ) -> Result<Vec<PublishResult>> {
        // Group the appends by partition, keeping call order.
        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (index, plan) in plans.iter().enumerate() {
            if let Plan::Append { partition, .. } = plan {
                by_partition.entry(*partition).or_default().push(index);
            }
        }
        let appends = by_partition.iter().map(|(&partition, indexes)| {
            let records = indexes
                .iter()
                .map(|&index| codec::encode(&inputs[index].event))
                .collect();
            let correlated =
                correlated_positions(indexes.iter().map(|&index| &inputs[index].event));
            async move {
                let outcome = self.append(partition, records, &correlated).await;
                (partition, outcome)
            }
        });
        let outcomes = futures::future::join_all(appends).await;

        let mut positions: HashMap<usize, (u32, u64)> = HashMap::new();
        let mut failure = None;
        {
            let mut state = lock(&self.dedup);
            for (partition, outcome) in outcomes {
                let indexes = &by_partition[&partition];
                match outcome {
                    Ok(ack) => {
                        for (position, &index) in indexes.iter().enumerate() {
                            let offset = ack.base_offset + position as u64;
                            positions.insert(index, (partition, offset));
                            if let Plan::Append {
                                hash: Some(hash), ..
                            } = plans[index]
                            {
                                state.record(hash, partition, offset, ack.timestamp);
                            }
                        }
                    }
                    Err(error) => {
                        for &index in indexes {
                            if let Plan::Append {
                                hash: Some(hash), ..
                            } = plans[index]
                            {
                                state.release(hash);
                            }
                        }
                        failure = Some(error);
                    }
                }
            }
            for &(partition, end) in appending {
                state.appended(partition, end);
            }
            if window_ms > 0 {
                state.finished.send_modify(|count| *count += 1);
            }
            let interval = dedup_runs::run_interval(window_ms);
            if state.run_due(now, interval, self.run_ids)
                && let Ok(writer) = Arc::clone(&self.run_writer).try_lock_owned()
                && let Some(run) = state.take_run(&self.end_offsets(), false)
            {
                drop(self.write_run(run, writer));
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let unresolved = || Error::Unavailable {
            detail: "a publish raced another of the same event id; retry".into(),
        };
        plans
            .iter()
            .enumerate()
            .map(|(index, plan)| {
                let id = inputs[index].event.id.clone();
                let (partition, offset, duplicate) = match plan {
                    Plan::Append { .. } => {
                        let (partition, offset) =
                            positions.get(&index).copied().ok_or_else(unresolved)?;
                        (partition, offset, false)
                    }
                    Plan::SameAs(first) => {
                        let (partition, offset) =
                            positions.get(first).copied().ok_or_else(unresolved)?;
                        (partition, offset, true)
                    }
                    Plan::Duplicate { partition, offset } => (*partition, *offset, true),
                    Plan::Wait { .. } => return Err(unresolved()),
                };
                Ok(PublishResult {
                    id,
                    partition,
                    offset,
                    duplicate,
                })
            })
            .collect()
    }

    fn choose_partition(&self, input: &EventInput) -> u32 {
        let partitions = self.partition_count();
        if let Some(partition) = input.partition {
            return partition;
        }
        match &input.event.key {
            Some(key) => partition_for_key(key.as_bytes(), partitions),
            None => {
                (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(partitions)) as u32
            }
        }
    }

    /// See [`herald_backend::Events::read`].
    pub(crate) async fn read(&self, partition: u32, from: u64, max: usize) -> Result<ReadResult> {
        self.read_sized(partition, from, max, Select::All).await
    }

    /// See [`herald_backend::Events::read_correlated`]: the records are
    /// looked at by their headers, and only those with a correlation or
    /// causation id are decoded.
    pub(crate) async fn read_correlated(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadResult> {
        let reader = self.handle(partition)?.reader();
        let stretch =
            self.correlated[partition as usize]
                .clear_until(from, reader.start_offset(), || reader.end_offset());
        match stretch {
            // Appended by this process without a correlated event: nothing
            // to read.
            Stretch::Clear { until } => Ok(ReadResult {
                events: Vec::new(),
                next_offset: until,
            }),
            Stretch::Read => {
                self.read_sized(partition, from, max, Select::Correlated)
                    .await
            }
        }
    }

    /// Reads about what `max` events need (2 KiB each, 64 KiB to 1 MiB),
    /// not a fixed megabyte: many small readers (subscriptions at the tail)
    /// would each hold a megabyte buffer otherwise.
    async fn read_sized(
        &self,
        partition: u32,
        from: u64,
        max: usize,
        select: Select,
    ) -> Result<ReadResult> {
        let max_bytes = max.saturating_mul(2048).clamp(64 * 1024, READ_BYTES);
        self.read_bounded(partition, from, max, max_bytes, select)
            .await
    }

    /// Reads about `max_bytes` of whole batches from `from`: every event they
    /// hold at or after `from`, however many (for read-ahead, which keeps
    /// them all rather than decode a batch twice).
    pub(crate) async fn read_chunk(
        &self,
        partition: u32,
        from: u64,
        max_bytes: usize,
    ) -> Result<ReadResult> {
        self.read_bounded(partition, from, usize::MAX, max_bytes, Select::All)
            .await
    }

    /// Reads from `from` until `max` records are counted (see [`Select`])
    /// or about `max_bytes` are read.
    async fn read_bounded(
        &self,
        partition: u32,
        from: u64,
        max: usize,
        max_bytes: usize,
        select: Select,
    ) -> Result<ReadResult> {
        let reader = self.handle(partition)?.reader().clone();
        let erased = Arc::clone(&self.erased[partition as usize]);
        let topic = self.name.clone();
        let max = max.max(1);
        tokio::task::spawn_blocking(move || {
            let mut events = Vec::new();
            let mut next = from;
            // Records counted toward `max`: events returned, or with
            // `Select::Correlated` every record looked at.
            let mut counted = 0;
            while counted < max {
                // Erased events are skipped: those pending compaction by the
                // set, those compacted by their empty records. A removal from
                // the set during the log read means a compaction switched
                // segments meanwhile: read again (see `erasure.rs`).
                let (batch, skip) = loop {
                    let removals = erased.removals();
                    // Offsets lost to damage (fenced off by the log's
                    // recovery, which reported them) are stepped over.
                    // Decode no more than the events still wanted.
                    let batch = reader
                        .read_skipping_lost_limited(next, max_bytes, max - counted)
                        .map_err(|error| log_error(partition, error))?;
                    let range = batch
                        .records
                        .first()
                        .map_or((0, 0), |first| (first.offset, batch.next_offset));
                    let skip = erased.within(range.0, range.1);
                    if erased.removals() == removals {
                        break (batch, skip);
                    }
                };
                if batch.records.is_empty() {
                    break;
                }
                for record in batch.records {
                    if counted == max {
                        break;
                    }
                    next = record.offset + 1;
                    if select == Select::Correlated {
                        counted += 1;
                        if !codec::is_correlated(&record) {
                            continue;
                        }
                    }
                    if record.is_erased()
                        || skip
                            .as_ref()
                            .is_some_and(|skip| skip.contains(&record.offset))
                    {
                        continue;
                    }
                    let event = codec::decode(&topic, partition, record).map_err(|error| {
                        Error::Corrupt {
                            detail: error.to_string(),
                        }
                    })?;
                    events.push(event);
                    if select == Select::All {
                        counted += 1;
                    }
                }
                if max == usize::MAX {
                    break;
                }
            }
            Ok(ReadResult {
                events,
                next_offset: next,
            })
        })
        .await
        .map_err(|error| Error::Unavailable {
            detail: format!("read task: {error}"),
        })?
    }

    /// See [`herald_backend::Events::offset_for_time`].
    pub(crate) async fn offset_for_time(&self, partition: u32, time_ms: i64) -> Result<u64> {
        let reader = self.handle(partition)?.reader().clone();
        tokio::task::spawn_blocking(move || reader.offset_for_timestamp(time_ms))
            .await
            .map_err(|error| Error::Unavailable {
                detail: format!("seek task: {error}"),
            })?
            .map_err(|error| log_error(partition, error))
    }

    /// See [`herald_backend::Events::wait_for`].
    pub(crate) async fn wait_for(
        &self,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let reader = self.handle(partition)?.reader();
        match tokio::time::timeout(timeout, reader.wait_for(offset)).await {
            Ok(result) => result.map_err(|error| log_error(partition, error)),
            Err(_) => Ok(reader.end_offset()),
        }
    }

    /// Resolves when any of `(partition, offset)` has an event at or after
    /// `offset`; never, if the list is empty.
    pub(crate) async fn wait_any(&self, waits: &[(u32, u64)]) {
        let futures: Vec<_> = waits
            .iter()
            .filter_map(|&(partition, offset)| {
                let reader = self.partitions.get(partition as usize)?.reader().clone();
                Some(Box::pin(async move {
                    let _ = reader.wait_for(offset).await;
                }))
            })
            .collect();
        if futures.is_empty() {
            std::future::pending::<()>().await;
        }
        futures::future::select_all(futures).await;
    }

    /// Where each partition starts for a group starting at `start`.
    pub(crate) async fn start_offsets(
        &self,
        start: herald_backend::StartPosition,
    ) -> Result<Vec<u64>> {
        use herald_backend::StartPosition;
        let mut starts = Vec::with_capacity(self.partitions.len());
        for (partition, handle) in self.partitions.iter().enumerate() {
            let reader = handle.reader();
            let offset = match start {
                StartPosition::Earliest => reader.start_offset(),
                StartPosition::Latest => reader.end_offset(),
                StartPosition::Offset { offset } => {
                    offset.clamp(reader.start_offset(), reader.end_offset())
                }
                StartPosition::Time { time_ms } => {
                    self.offset_for_time(partition as u32, time_ms).await?
                }
            };
            starts.push(offset);
        }
        Ok(starts)
    }

    /// Applies new retention to every partition's log.
    pub(crate) async fn set_retention(&self, spec: &TopicSpec) -> Result<()> {
        for (partition, handle) in self.partitions.iter().enumerate() {
            handle
                .set_retention(retention(spec))
                .await
                .map_err(|error| log_error(partition as u32, error))?;
        }
        Ok(())
    }

    /// Closes every partition cleanly, after writing the dedup window's last
    /// run (so the next open reads nothing back).
    pub(crate) async fn close(&self) -> Result<()> {
        let writer = Arc::clone(&self.run_writer).lock_owned().await;
        let last = lock(&self.dedup).take_run(&self.end_offsets(), true);
        if let Some(run) = last {
            let _ = self.write_run(run, writer).await;
        }
        let mut first_error = None;
        for (partition, handle) in self.partitions.iter().enumerate() {
            if let Err(error) = handle.close().await
                && !matches!(error, LogError::Closed)
            {
                first_error.get_or_insert(log_error(partition as u32, error));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The positions of the events with a correlation or causation id.
pub(crate) fn correlated_positions<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<usize> {
    events
        .enumerate()
        .filter(|(_, event)| event.is_correlated())
        .map(|(position, _)| position)
        .collect()
}

/// Which records a read returns, and what its `max` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Select {
    /// Every event; `max` counts the events returned.
    All,
    /// Events with a correlation or causation id; `max` counts the records
    /// looked at, so a partition without any is read at a bounded cost.
    Correlated,
}

/// Groups read the topic's partitions through this.
#[async_trait::async_trait]
impl herald_groups::Source for TopicRuntime {
    fn end_offsets(&self) -> Vec<u64> {
        TopicRuntime::end_offsets(self)
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> Result<ReadResult> {
        TopicRuntime::read(self, partition, from, max).await
    }

    async fn read_chunk(&self, partition: u32, from: u64, max_bytes: usize) -> Result<ReadResult> {
        TopicRuntime::read_chunk(self, partition, from, max_bytes).await
    }

    async fn wait_any(&self, waits: &[(u32, u64)]) {
        TopicRuntime::wait_any(self, waits).await;
    }
}
