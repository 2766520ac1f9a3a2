//! The log of one partition: segments, appends, reads, recovery, retention.
//!
//! [`Log`] is the single writer. It is synchronous and owns the active
//! segment; [`crate::writer`] runs it on its own thread and feeds it group
//! commit rounds. [`LogReader`] is the cheap, cloneable read side: it takes a
//! read lock only to locate bytes, then reads without holding it.
//!
//! Visibility: readers see a record only once its commit round has finished,
//! i.e. once it is durable under the log's fsync policy. Under
//! `fsync = always` a reader therefore never sees a record that a crash could
//! take back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::clock::{Clock, SystemClock};
use crate::error::LogError;
use crate::format::{
    BATCH_HEADER_LEN, BatchHeader, FormatError, MAX_BATCH_LEN, MIN_RECORD_LEN, NewRecord, Record,
    decode_batch, encode_batch, erase_records, validate_batch,
};
use crate::fs::{File, Filesystem, StdFs};
use crate::index::{OffsetIndex, TimeIndex};
use crate::metrics::LogMetrics;

/// Suffix of the files a compaction writes before renaming them into place;
/// recovery removes any it finds.
pub const COMPACTING_SUFFIX: &str = "compacting";
/// Name of the marker a clean close leaves in the log directory.
pub const CLEAN_MARKER: &str = "CLEAN";
/// The largest segment size: positions in the index are `u32`, and a segment
/// may exceed `segment_bytes` by one commit round.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// When appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every commit round is fsynced before any of its appends is acknowledged.
    Always,
    /// Appends are acknowledged once written to the OS; the writer fsyncs at
    /// most this long after the first unsynced write. A crash of the machine
    /// (not of the process) loses at most this window.
    Interval(Duration),
    /// Appends are acknowledged once written to the OS; the log fsyncs only
    /// when it seals a segment and when it closes.
    Never,
}

/// Retention limits; each removes whole sealed segments from the front.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove a segment once its newest record is older than this.
    pub max_age: Option<Duration>,
    /// Remove the oldest segments while the rest still hold at least this
    /// many bytes.
    pub max_bytes: Option<u64>,
    /// Remove the oldest segments while the rest still hold at least this
    /// many records.
    pub max_records: Option<u64>,
}

/// How one log behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// Durability of acknowledged appends.
    pub fsync: FsyncPolicy,
    /// Roll to a new segment once the active one reaches this size
    /// (a soft limit: one commit round may cross it). At most 1 GiB.
    pub segment_bytes: u64,
    /// Roll to a new segment once the active one's first record is this old.
    pub segment_age: Duration,
    /// Bytes between sparse index entries; a lookup reads about this many
    /// bytes past the entry it lands on. 4 KiB: one page.
    pub index_interval_bytes: u32,
    /// The largest append (encoded batch) accepted.
    pub max_batch_bytes: usize,
    /// Retention limits.
    pub retention: Retention,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 * 1024 * 1024,
            segment_age: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            max_batch_bytes: 16 * 1024 * 1024,
            retention: Retention::default(),
        }
    }
}

impl LogOptions {
    /// Checks the options, naming the first bad one.
    pub fn validate(&self) -> Result<(), LogError> {
        let invalid = |key, reason: &str| {
            Err(LogError::InvalidOptions {
                key,
                reason: reason.into(),
            })
        };
        if self.segment_bytes == 0 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return invalid("segment_bytes", "must be between 1 byte and 1 GiB");
        }
        if self.index_interval_bytes == 0 {
            return invalid("index_interval_bytes", "must be positive");
        }
        if self.max_batch_bytes < BATCH_HEADER_LEN || self.max_batch_bytes > MAX_BATCH_LEN {
            return invalid("max_batch_bytes", "must be between 40 bytes and 64 MiB");
        }
        if let FsyncPolicy::Interval(interval) = self.fsync
            && interval.is_zero()
        {
            return invalid("fsync_interval", "must be positive (use always instead)");
        }
        Ok(())
    }
}

/// What the log needs from its surroundings: files, time and metrics.
#[derive(Debug, Clone)]
pub struct LogEnv {
    /// Where the files live.
    pub fs: Arc<dyn Filesystem>,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Where measurements go.
    pub metrics: Arc<LogMetrics>,
}

impl Default for LogEnv {
    fn default() -> Self {
        Self {
            fs: Arc::new(StdFs),
            clock: Arc::new(SystemClock),
            metrics: LogMetrics::new(),
        }
    }
}

/// Where an acknowledged append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
    /// The append timestamp every record got (ms since the Unix epoch).
    pub timestamp: i64,
}

/// What an erase did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    /// Segments rewritten.
    pub segments: usize,
    /// Records whose contents were removed (records already erased are not
    /// counted again).
    pub records: u64,
}

/// The single writer of one partition's log.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    options: LogOptions,
    env: LogEnv,
    shared: Arc<Shared>,
    active: ActiveWriter,
    /// Unsynced bytes exist since this instant (for the interval policy).
    dirty_since: Option<Instant>,
    /// Where the active segment is known durable up to: the end of the last
    /// successful fsync (position, offset). Past it, under `interval` and
    /// `never`, are acknowledged bytes only the page cache holds.
    durable: (u64, u64),
    /// Set while the log refuses appends after an I/O error.
    failed: Option<Failed>,
    buffer: Vec<u8>,
}

/// The first delay before probing a failed log, doubled after each failed
/// probe up to [`PROBE_MAX`].
pub const PROBE_MIN: Duration = Duration::from_millis(50);
/// The longest delay between two probes of a failed log.
pub const PROBE_MAX: Duration = Duration::from_secs(1);
/// The least a probe writes (and syncs) past the end of the active segment
/// to learn whether the disk takes writes again; at least the failed
/// round's size.
const PROBE_BYTES: usize = 64 * 1024;

/// The writer's record of its failed state.
#[derive(Debug)]
struct Failed {
    error: LogError,
    /// Bytes of the round that failed (the probe writes at least this many).
    round_bytes: usize,
    /// Set once a probe found acknowledged records gone: the offset the
    /// next segment must start at (see [`Log::recover`], step 4).
    fence_to: Option<u64>,
    next_probe: Instant,
    backoff: Duration,
}

/// Why a log refuses appends, for health reports.
#[derive(Debug, Clone)]
pub struct LogFailure {
    /// The write or fsync error that failed the log.
    pub error: LogError,
    /// When it failed (ms since the Unix epoch, by the log's clock).
    pub since_ms: i64,
    /// Recovery probes that have failed since.
    pub failed_probes: u64,
    /// The last failed probe's error.
    pub last_probe_error: Option<LogError>,
}

/// The writer's private view of the active segment.
#[derive(Debug)]
struct ActiveWriter {
    file: Arc<dyn File>,
    base_offset: u64,
    position: u64,
    next_offset: u64,
    indexer: Indexer,
    last_timestamp: i64,
}

/// The read side of a log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    state: RwLock<State>,
    /// The end offset (one past the last visible record).
    end: watch::Sender<u64>,
    metrics: Arc<LogMetrics>,
    /// Set while the log is failed (see [`Log::recover`]).
    failure: std::sync::Mutex<Option<LogFailure>>,
}

#[derive(Debug)]
struct State {
    /// Ordered by base offset; the last one is active. Never empty.
    segments: Vec<Segment>,
    closed: bool,
}

#[derive(Debug)]
struct Segment {
    base_offset: u64,
    /// One past the last record (visible records only, for the active one).
    next_offset: u64,
    /// Bytes of valid, visible batches.
    size: u64,
    file: Arc<dyn File>,
    index: OffsetIndex,
    time_index: TimeIndex,
    /// Timestamp of the first record, if any.
    first_timestamp: Option<i64>,
    /// Largest record timestamp, `i64::MIN` when empty.
    max_timestamp: i64,
}

/// Decides when a batch gets index entries; shared by appends and recovery
/// so both build the same index.
#[derive(Debug, Clone, Copy)]
struct Indexer {
    interval: u64,
    bytes_since_offset_entry: u64,
    bytes_since_time_entry: u64,
}

impl Indexer {
    fn new(interval: u32) -> Self {
        Self {
            interval: u64::from(interval),
            bytes_since_offset_entry: 0,
            bytes_since_time_entry: 0,
        }
    }

    fn on_batch(&mut self, segment: &mut Segment, header: &BatchHeader, position: u64) {
        let relative = (header.base_offset - segment.base_offset) as u32;
        if self.bytes_since_offset_entry >= self.interval {
            segment.index.push(relative, position as u32);
            self.bytes_since_offset_entry = 0;
        }
        if self.bytes_since_time_entry >= self.interval
            && segment
                .time_index
                .last_timestamp()
                .is_none_or(|last| header.first_timestamp > last)
        {
            segment.time_index.push(header.first_timestamp, relative);
            self.bytes_since_time_entry = 0;
        }
        let length = header.total_len() as u64;
        self.bytes_since_offset_entry += length;
        self.bytes_since_time_entry += length;
        segment.next_offset = header.next_offset();
        segment.size = position + length;
        segment
            .first_timestamp
            .get_or_insert(header.first_timestamp);
        segment.max_timestamp = segment.max_timestamp.max(header.max_timestamp);
    }
}

fn segment_file_name(base_offset: u64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering it after a
    /// crash: see the crate documentation for the procedure.
    pub fn open(
        dir: impl Into<PathBuf>,
        options: LogOptions,
        env: LogEnv,
    ) -> Result<Self, LogError> {
        options.validate()?;
        let dir = dir.into();
        let started = Instant::now();
        let fs = &env.fs;
        fs.create_dir_all(&dir)
            .map_err(|source| LogError::io("create directory", &dir, source))?;
        let names = fs
            .list(&dir)
            .map_err(|source| LogError::io("list", &dir, source))?;
        let names = remove_compaction_leftovers(fs.as_ref(), &dir, names)?;
        let clean = names.iter().any(|name| name == CLEAN_MARKER);
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|name| name.strip_suffix(".log"))
            .filter_map(|stem| stem.parse().ok())
            .collect();
        bases.sort_unstable();
        remove_orphan_indexes(fs.as_ref(), &dir, &names, &bases)?;

        let recovery = Recovery {
            dir: &dir,
            options: &options,
            env: &env,
        };
        let mut segments = Vec::with_capacity(bases.len().max(1));
        if bases.is_empty() {
            segments.push(recovery.create_segment(0)?);
        }
        for (position, base) in bases.iter().enumerate() {
            match bases.get(position + 1) {
                Some(next_base) => segments.push(recovery.open_sealed(*base, *next_base)?),
                None => segments.extend(recovery.open_active(*base, clean)?),
            }
        }
        if clean {
            let marker = dir.join(CLEAN_MARKER);
            fs.remove(&marker)
                .map_err(|source| LogError::io("remove", &marker, source))?;
            fs.sync_dir(&dir)
                .map_err(|source| LogError::io("sync directory", &dir, source))?;
        }

        let active = segments.last().map(|segment| {
            let mut indexer = Indexer::new(options.index_interval_bytes);
            // Entries already cover the start; count from the last one.
            let covered = segment.index.last().map_or(0, |entry| u64::from(entry.1));
            indexer.bytes_since_offset_entry = segment.size - covered;
            indexer.bytes_since_time_entry = segment.size - covered;
            ActiveWriter {
                file: Arc::clone(&segment.file),
                base_offset: segment.base_offset,
                position: segment.size,
                next_offset: segment.next_offset,
                indexer,
                last_timestamp: segment.max_timestamp,
            }
        });
        let Some(active) = active else {
            return Err(LogError::InvalidOptions {
                key: "dir",
                reason: "no segment".into(),
            });
        };
        let last_timestamp = segments
            .iter()
            .map(|segment| segment.max_timestamp)
            .max()
            .unwrap_or(i64::MIN);
        if !clean && active.position > 0 {
            // What a crash left may be only in the page cache: make it
            // durable before serving it, so a later failure's recovery can
            // trust everything before the end to be on disk.
            active.file.sync_data().map_err(|source| {
                LogError::io(
                    "fsync",
                    dir.join(segment_file_name(active.base_offset, "log")),
                    source,
                )
            })?;
        }
        let end = active.next_offset;
        let durable = (active.position, active.next_offset);
        let start = segments.first().map_or(0, |segment| segment.base_offset);
        info!(
            dir = %dir.display(),
            segments = segments.len(),
            start,
            end,
            clean,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Opened log."
        );
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            state: RwLock::new(State {
                segments,
                closed: false,
            }),
            end: watch::Sender::new(end),
            metrics: Arc::clone(&env.metrics),
            failure: std::sync::Mutex::new(None),
        });
        Ok(Self {
            dir,
            options,
            env,
            shared,
            active: ActiveWriter {
                last_timestamp,
                ..active
            },
            dirty_since: None,
            durable,
            failed: None,
            buffer: Vec::new(),
        })
    }

    /// The metrics this log reports to.
    pub fn metrics(&self) -> &Arc<LogMetrics> {
        &self.env.metrics
    }

    /// Refuses with [`LogError::Failed`] while the log is failed.
    fn check_healthy(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(failed) => Err(LogError::Failed {
                path: self.dir.clone(),
                cause: Box::new(failed.error.clone()),
            }),
            None => Ok(()),
        }
    }

    /// When the writer should next call [`Log::recover`], if the log is
    /// failed.
    pub fn probe_deadline(&self) -> Option<Instant> {
        self.failed.as_ref().map(|failed| failed.next_probe)
    }

    /// A reader of this log.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The log's options.
    pub fn options(&self) -> &LogOptions {
        &self.options
    }

    /// Replaces the retention limits; they apply from the next
    /// [`Log::apply_retention`].
    pub fn set_retention(&mut self, retention: Retention) {
        self.options.retention = retention;
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// When the interval policy next requires a sync, if it does. None while
    /// the log is failed: the sync would be refused, and recovery
    /// ([`Log::recover`]) makes the bytes durable instead.
    pub fn sync_deadline(&self) -> Option<Instant> {
        if self.failed.is_some() {
            return None;
        }
        match (self.options.fsync, self.dirty_since) {
            (FsyncPolicy::Interval(interval), Some(since)) => Some(since + interval),
            _ => None,
        }
    }

    /// Checks that `records` can be appended; returns their encoded size.
    pub fn check_append(&self, records: &[NewRecord]) -> Result<usize, LogError> {
        if records.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        let bytes = BATCH_HEADER_LEN + records.iter().map(NewRecord::encoded_len).sum::<usize>();
        if bytes > self.options.max_batch_bytes {
            return Err(LogError::BatchTooLarge {
                bytes,
                max: self.options.max_batch_bytes,
            });
        }
        Ok(bytes)
    }

    /// Appends one commit round: each element of `appends` becomes one batch;
    /// all are written with one write and, under `fsync = always`, made
    /// durable with one fsync before this returns. All or nothing: on error
    /// none of them is acknowledged. A failed write or fsync fails the log:
    /// later appends are refused with [`LogError::Failed`], touching no
    /// file, until [`Log::recover`] succeeds.
    pub fn append_round(&mut self, appends: &[&[NewRecord]]) -> Result<Vec<AppendAck>, LogError> {
        self.check_healthy()?;
        let mut round_bytes = 0;
        for records in appends {
            round_bytes += self.check_append(records)?;
        }
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.env.clock.now_ms();
        if self.should_roll(round_bytes as u64, now) {
            self.roll()?;
        }
        // Append timestamps never go backwards within a partition, so the
        // time index stays sorted even if the wall clock steps back.
        let timestamp = now.max(self.active.last_timestamp);
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let mut headers = Vec::with_capacity(appends.len());
        let mut acks = Vec::with_capacity(appends.len());
        let mut next_offset = self.active.next_offset;
        for records in appends {
            let position = self.active.position + buffer.len() as u64;
            let header = encode_batch(&mut buffer, next_offset, timestamp, records);
            acks.push(AppendAck {
                base_offset: next_offset,
                last_offset: header.next_offset() - 1,
                timestamp,
            });
            next_offset = header.next_offset();
            headers.push((header, position));
        }
        let result = self.write_and_sync(&buffer);
        let written = buffer.len() as u64;
        self.buffer = buffer;
        result?;

        // Publish: index the batches and move the visible end.
        {
            let mut state = self.shared.write_state();
            let Some(segment) = state.segments.last_mut() else {
                return Err(LogError::Closed);
            };
            for (header, position) in &headers {
                self.active.indexer.on_batch(segment, header, *position);
            }
        }
        self.active.position += written;
        self.active.next_offset = next_offset;
        self.active.last_timestamp = timestamp;
        if self.options.fsync == FsyncPolicy::Always {
            self.mark_durable();
        }
        let metrics = &self.env.metrics;
        metrics.commit_rounds.inc();
        metrics.appended_bytes.inc_by(written);
        metrics
            .appended_records
            .inc_by(appends.iter().map(|records| records.len() as u64).sum());
        self.shared.end.send_replace(next_offset);
        Ok(acks)
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        let position = self.active.position;
        if let Err(source) = self.active.file.write_all_at(bytes, position) {
            // The bytes past `position` are in an unknown state (a short
            // write): try to cut them now; recovery cuts them for sure, and
            // fsyncs the cut, before anything is written past it.
            let _ = self.active.file.set_len(position);
            let error = LogError::io("write", self.active_path(), source);
            return Err(self.fail(error, bytes.len()));
        }
        match self.options.fsync {
            FsyncPolicy::Always => self.sync_active(bytes.len()),
            FsyncPolicy::Interval(_) => {
                self.dirty_since.get_or_insert_with(Instant::now);
                Ok(())
            }
            FsyncPolicy::Never => {
                self.dirty_since.get_or_insert_with(Instant::now);
                Ok(())
            }
        }
    }

    /// Makes every acknowledged append durable now.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.check_healthy()?;
        if self.dirty_since.is_some() {
            self.sync_active(0)?;
            self.mark_durable();
        }
        Ok(())
    }

    /// Fsyncs the active segment; `round_bytes` are the bytes of the round
    /// being appended, if any (for the failed state). The caller moves
    /// `durable`.
    fn sync_active(&mut self, round_bytes: usize) -> Result<(), LogError> {
        let started = Instant::now();
        if let Err(source) = self.active.file.sync_data() {
            // After a failed fsync the page cache may have dropped the dirty
            // pages (Linux marks them clean): retrying the fsync would report
            // success for lost data. Recovery writes them again.
            let error = LogError::io("fsync", self.active_path(), source);
            return Err(self.fail(error, round_bytes));
        }
        self.env
            .metrics
            .fsync_latency
            .observe(started.elapsed().as_secs_f64());
        self.dirty_since = None;
        Ok(())
    }

    /// Everything written to the active segment is durable now.
    fn mark_durable(&mut self) {
        self.durable = (self.active.position, self.active.next_offset);
    }

    /// Puts the log in its failed state after `error` (see
    /// [`Log::recover`]); returns the error for the caller.
    fn fail(&mut self, error: LogError, round_bytes: usize) -> LogError {
        let metrics = &self.env.metrics;
        metrics.io_failures.inc();
        if self.failed.is_none() {
            metrics.failed_logs.inc();
            error!(dir = %self.dir.display(), %error, "Log write failed; refusing appends until the disk works again (probing).");
            *self.shared.lock_failure() = Some(LogFailure {
                error: error.clone(),
                since_ms: self.env.clock.now_ms(),
                failed_probes: 0,
                last_probe_error: None,
            });
            self.failed = Some(Failed {
                error: error.clone(),
                round_bytes,
                fence_to: None,
                next_probe: Instant::now() + PROBE_MIN,
                backoff: PROBE_MIN,
            });
        }
        error
    }

    /// Tries to bring a failed log back (a no-op for a healthy one); the
    /// writer thread calls it with backoff ([`Log::probe_deadline`]).
    ///
    /// Nothing acknowledged is lost and nothing is duplicated:
    ///
    /// 1. Reopen the active segment (a new file handle: the old one may keep
    ///    reporting, or have swallowed, the error).
    /// 2. Bytes acknowledged but not known durable (`interval`, `never`): a
    ///    failed fsync may have dropped their dirty pages, so they are read
    ///    back, validated batch by batch, and written again.
    /// 3. Cut the file to the end of what readers see (a failed round's
    ///    partial bytes go), write a probe of zeros past it (at least the
    ///    failed round's size) and fsync; cut the probe and fsync again.
    /// 4. If step 2 found records gone (pages dropped and evicted), their
    ///    offsets are fenced off: the segment is sealed where the valid
    ///    bytes end and the next one starts at the old end, so those
    ///    offsets read as [`LogError::Lost`] and are never given to new
    ///    records.
    ///
    /// A failed round was never acknowledged nor visible: its offsets are
    /// given to the next appends.
    pub fn recover(&mut self) -> Result<(), LogError> {
        if self.failed.is_none() {
            return Ok(());
        }
        match self.try_recover() {
            Ok(()) => {
                self.failed = None;
                *self.shared.lock_failure() = None;
                let metrics = &self.env.metrics;
                metrics.recoveries.inc();
                metrics.failed_logs.dec();
                info!(dir = %self.dir.display(), "Log recovered from its I/O failure; accepting appends again.");
                Ok(())
            }
            Err(error) => {
                if let Some(failed) = self.failed.as_mut() {
                    failed.backoff = (failed.backoff * 2).min(PROBE_MAX);
                    failed.next_probe = Instant::now() + failed.backoff;
                }
                if let Some(failure) = self.shared.lock_failure().as_mut() {
                    failure.failed_probes += 1;
                    failure.last_probe_error = Some(error.clone());
                }
                debug!(dir = %self.dir.display(), %error, "Failed log still failing; will probe again.");
                Err(error)
            }
        }
    }

    fn try_recover(&mut self) -> Result<(), LogError> {
        let (round_bytes, mut fence_to) = self
            .failed
            .as_ref()
            .map_or((0, None), |failed| (failed.round_bytes, failed.fence_to));
        let path = self.active_path();
        let io = |operation| {
            let path = path.clone();
            move |source| LogError::io(operation, path, source)
        };
        // 1.
        let file = self.env.fs.open(&path, false).map_err(io("open"))?;
        // 2.
        let visible = self.active.position;
        let (durable_position, durable_offset) = self.durable;
        let mut keep = (visible, self.active.next_offset);
        if durable_position < visible {
            let mut bytes = vec![0u8; (visible - durable_position) as usize];
            file.read_exact_at(&mut bytes, durable_position)
                .map_err(io("read"))?;
            let (valid, next_offset) = valid_prefix(&bytes, durable_offset);
            file.write_all_at(&bytes[..valid], durable_position)
                .map_err(io("write"))?;
            keep = (durable_position + valid as u64, next_offset);
        }
        // 3.
        file.set_len(keep.0).map_err(io("truncate"))?;
        let probe = vec![0u8; round_bytes.max(PROBE_BYTES)];
        let probed = file
            .write_all_at(&probe, keep.0)
            .map_err(io("write"))
            .and_then(|()| file.sync_data().map_err(io("fsync")));
        file.set_len(keep.0).map_err(io("truncate"))?;
        probed?;
        file.sync_data().map_err(io("fsync"))?;
        self.active.file = Arc::clone(&file);
        if let Some(segment) = self.shared.write_state().segments.last_mut() {
            segment.file = file;
        }
        self.dirty_since = None;
        self.durable = keep;
        // 4.
        if keep.0 < visible {
            fence_to = Some(self.active.next_offset);
            if let Some(failed) = self.failed.as_mut() {
                failed.fence_to = fence_to;
            }
            self.fence_lost_tail(keep)?;
        }
        if let Some(fence_to) = fence_to
            && self.active.next_offset < fence_to
        {
            self.seal_and_start(fence_to)?;
        }
        Ok(())
    }

    /// After recovery found the active segment's records from `keep` on
    /// gone: cut its in-memory view there; the caller seals it and starts
    /// the next segment at the visible end, so the lost offsets read as
    /// [`LogError::Lost`].
    fn fence_lost_tail(&mut self, keep: (u64, u64)) -> Result<(), LogError> {
        let (position, next_offset) = keep;
        let lost_to = self.active.next_offset;
        self.env.metrics.corrupt_batches.inc();
        error!(
            dir = %self.dir.display(),
            lost_from = next_offset,
            lost_to,
            "Acknowledged records were lost after a failed fsync (their pages were dropped); their offsets are fenced off and never reused."
        );
        let recovery = Recovery {
            dir: &self.dir,
            options: &self.options,
            env: &self.env,
        };
        let (segment, _) = recovery.open_active_once(self.active.base_offset, false)?;
        debug_assert_eq!((segment.size, segment.next_offset), (position, next_offset));
        self.active.position = segment.size;
        self.active.next_offset = segment.next_offset;
        self.active.file = Arc::clone(&segment.file);
        if let Some(slot) = self.shared.write_state().segments.last_mut() {
            *slot = segment;
        }
        Ok(())
    }

    fn active_path(&self) -> PathBuf {
        self.dir
            .join(segment_file_name(self.active.base_offset, "log"))
    }

    fn should_roll(&self, incoming: u64, now: i64) -> bool {
        if self.active.position == 0 {
            return false;
        }
        if self.active.position + incoming > self.options.segment_bytes {
            return true;
        }
        let state = self.shared.read_state();
        let first = state
            .segments
            .last()
            .and_then(|segment| segment.first_timestamp);
        let age_limit = i64::try_from(self.options.segment_age.as_millis()).unwrap_or(i64::MAX);
        first.is_some_and(|first| now.saturating_sub(first) >= age_limit)
    }

    /// Seals the active segment (fsync its data, write and fsync its indexes)
    /// and starts a new one at the next offset.
    pub fn roll(&mut self) -> Result<(), LogError> {
        self.check_healthy()?;
        if self.active.position == 0 {
            return Ok(());
        }
        self.seal_and_start(self.active.next_offset)
    }

    /// Seals the active segment and starts the next one at `next_base`.
    fn seal_and_start(&mut self, next_base: u64) -> Result<(), LogError> {
        self.sync_active(0)?;
        self.write_active_indexes()?;
        let recovery = Recovery {
            dir: &self.dir,
            options: &self.options,
            env: &self.env,
        };
        let segment = recovery
            .create_segment(next_base)
            .map_err(|error| self.fail(error, 0))?;
        self.active = ActiveWriter {
            file: Arc::clone(&segment.file),
            base_offset: segment.base_offset,
            position: 0,
            next_offset: segment.base_offset,
            indexer: Indexer::new(self.options.index_interval_bytes),
            last_timestamp: self.active.last_timestamp,
        };
        self.shared.write_state().segments.push(segment);
        self.mark_durable();
        debug!(dir = %self.dir.display(), base_offset = self.active.base_offset, "Rolled segment.");
        Ok(())
    }

    fn write_active_indexes(&mut self) -> Result<(), LogError> {
        let (index, time_index) = {
            let state = self.shared.read_state();
            let segment = state.segments.last().ok_or(LogError::Closed)?;
            (segment.index.encode(), segment.time_index.encode())
        };
        let base = self.active.base_offset;
        for (extension, bytes) in [("index", index), ("timeindex", time_index)] {
            let path = self.dir.join(segment_file_name(base, extension));
            write_file(self.env.fs.as_ref(), &path, &bytes).map_err(|error| self.fail(error, 0))?;
        }
        Ok(())
    }

    /// Removes the sealed segments that retention no longer keeps; returns how
    /// many. If the whole active segment is past `max_age`, it is sealed first
    /// so an idle log still ages out.
    pub fn apply_retention(&mut self) -> Result<usize, LogError> {
        let retention = self.options.retention;
        let now = self.env.clock.now_ms();
        let cutoff = retention
            .max_age
            .map(|age| now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        if let Some(cutoff) = cutoff
            && self.active.position > 0
            && self.active.last_timestamp < cutoff
        {
            self.roll()?;
        }
        let mut removed = 0;
        loop {
            let victim = {
                let state = self.shared.read_state();
                let segments = &state.segments;
                let Some((oldest, rest)) = segments.split_first() else {
                    break;
                };
                if rest.is_empty() {
                    break;
                }
                let total_bytes: u64 = segments.iter().map(|segment| segment.size).sum();
                let end = segments.last().map_or(0, |segment| segment.next_offset);
                let expired = cutoff.is_some_and(|cutoff| oldest.max_timestamp < cutoff);
                let over_bytes = retention
                    .max_bytes
                    .is_some_and(|max| total_bytes - oldest.size >= max);
                let over_records = retention
                    .max_records
                    .is_some_and(|max| end - oldest.next_offset >= max);
                if !(expired || over_bytes || over_records) {
                    break;
                }
                oldest.base_offset
            };
            self.shared.write_state().segments.remove(0);
            let fs = self.env.fs.as_ref();
            for extension in ["log", "index", "timeindex"] {
                let path = self.dir.join(segment_file_name(victim, extension));
                match fs.remove(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(LogError::io("remove", path, source)),
                }
            }
            removed += 1;
            self.env.metrics.segments_deleted.inc();
            info!(dir = %self.dir.display(), base_offset = victim, "Removed segment by retention.");
        }
        if removed > 0 {
            self.env
                .fs
                .sync_dir(&self.dir)
                .map_err(|source| LogError::io("sync directory", &self.dir, source))?;
        }
        Ok(removed)
    }

    /// Physically erases the records at `offsets`: every segment holding
    /// one is rewritten with those records replaced by erased records (no
    /// key, no headers, an empty value; same offset and timestamp), so
    /// offsets stay dense and every other record keeps its offset and bytes.
    /// Offsets outside the log (removed by retention, not yet written) are
    /// ignored; erasing an erased record again is a no-op (no rewrite). If an
    /// offset is in the active segment, the segment is rolled first.
    ///
    /// Crash safety: each segment is rewritten into `<base>.log.compacting`
    /// (and its indexes into `.index.compacting`, `.timeindex.compacting`),
    /// fsynced; then the old indexes are removed and the directory fsynced;
    /// then the new segment is renamed over the old one and the directory
    /// fsynced; then the new indexes are renamed into place and the directory
    /// fsynced. A crash at any point leaves either the old or the new segment
    /// under the `.log` name (rename is atomic), never a mix; a segment found
    /// without indexes has them rebuilt by a scan, and recovery removes
    /// leftover `.compacting` files. Readers that located a batch before the
    /// swap finish reading the old file through their open handle.
    pub fn erase(&mut self, offsets: &[u64]) -> Result<Erased, LogError> {
        self.check_healthy()?;
        let mut offsets: Vec<u64> = offsets.to_vec();
        offsets.sort_unstable();
        offsets.dedup();
        let (start, end) = {
            let state = self.shared.read_state();
            (
                state
                    .segments
                    .first()
                    .map_or(0, |segment| segment.base_offset),
                self.active.next_offset,
            )
        };
        offsets.retain(|offset| (start..end).contains(offset));
        // Records already erased need no rewrite (an erase repeated after a
        // restart, before its caller recorded it as done).
        let reader = self.reader();
        offsets.retain(|offset| {
            reader.read(*offset, 1).map_or(true, |batch| {
                batch
                    .records
                    .iter()
                    .find(|record| record.offset == *offset)
                    .is_none_or(|record| !record.is_erased())
            })
        });
        let mut report = Erased::default();
        if offsets.is_empty() {
            return Ok(report);
        }
        if offsets
            .last()
            .is_some_and(|last| *last >= self.active.base_offset)
        {
            self.roll()?;
        }
        let bases: Vec<u64> = {
            let state = self.shared.read_state();
            let mut bases = Vec::new();
            for offset in &offsets {
                let index = state
                    .segments
                    .partition_point(|segment| segment.base_offset <= *offset);
                if let Some(segment) = index.checked_sub(1).and_then(|i| state.segments.get(i))
                    && *offset < segment.next_offset
                    && bases.last() != Some(&segment.base_offset)
                {
                    bases.push(segment.base_offset);
                }
            }
            bases
        };
        for base in bases {
            let erased = self.compact_segment(base, &offsets)?;
            report.segments += 1;
            report.records += erased;
        }
        self.env.metrics.erased_records.inc_by(report.records);
        info!(
            dir = %self.dir.display(),
            segments = report.segments,
            records = report.records,
            "Erased records by compaction."
        );
        Ok(report)
    }

    /// Rewrites the sealed segment at `base` without the contents of the
    /// records in `offsets` (sorted); returns how many were erased. See
    /// [`Log::erase`] for the crash-safe sequence.
    fn compact_segment(&mut self, base: u64, offsets: &[u64]) -> Result<u64, LogError> {
        let old = {
            let state = self.shared.read_state();
            let segment = state
                .segments
                .iter()
                .find(|segment| segment.base_offset == base)
                .ok_or(LogError::Closed)?;
            empty_segment_like(segment)
        };
        let fs = Arc::clone(&self.env.fs);
        let fs = fs.as_ref();
        let log_path = self.dir.join(segment_file_name(base, "log"));
        let temp_path = |extension: &str| {
            self.dir.join(format!(
                "{}.{COMPACTING_SUFFIX}",
                segment_file_name(base, extension)
            ))
        };
        let temp_log = temp_path("log");
        let temp = fs
            .open(&temp_log, true)
            .map_err(|source| LogError::io("create", &temp_log, source))?;
        temp.set_len(0)
            .map_err(|source| LogError::io("truncate", &temp_log, source))?;

        // 1. Copy the segment batch by batch, rewriting the batches that hold
        //    an offset to erase; index the copy as appends would.
        let mut segment = empty_segment(base, Arc::clone(&temp));
        segment.first_timestamp = old.first_timestamp;
        let mut indexer = Indexer::new(self.options.index_interval_bytes);
        let mut position = 0u64;
        let mut erased = 0u64;
        let mut buffer = Vec::new();
        while position < old.size {
            let mut header = [0u8; BATCH_HEADER_LEN];
            old.file
                .read_exact_at(&mut header, position)
                .map_err(|source| LogError::io("read", &log_path, source))?;
            let corrupt = |source| LogError::Corrupt {
                path: log_path.clone(),
                position,
                source,
            };
            let parsed = BatchHeader::parse(&header).map_err(corrupt)?;
            let mut batch = vec![0u8; parsed.total_len()];
            old.file
                .read_exact_at(&mut batch, position)
                .map_err(|source| LogError::io("read", &log_path, source))?;
            let batch = Bytes::from(batch);
            let first = offsets.partition_point(|offset| *offset < parsed.base_offset);
            let touched = offsets
                .get(first)
                .is_some_and(|offset| *offset < parsed.next_offset());
            let written = if touched {
                buffer.clear();
                let (header, count) = erase_records(&mut buffer, &batch, |offset| {
                    offsets.binary_search(&offset).is_ok()
                })
                .map_err(corrupt)?;
                erased += u64::from(count);
                temp.write_all_at(&buffer, segment.size)
                    .map_err(|source| LogError::io("write", &temp_log, source))?;
                header
            } else {
                validate_batch(&batch).map_err(corrupt)?;
                temp.write_all_at(&batch, segment.size)
                    .map_err(|source| LogError::io("write", &temp_log, source))?;
                parsed
            };
            let at = segment.size;
            indexer.on_batch(&mut segment, &written, at);
            position += parsed.total_len() as u64;
        }
        segment.max_timestamp = old.max_timestamp;
        temp.sync_data()
            .map_err(|source| LogError::io("fsync", &temp_log, source))?;
        let (temp_index, temp_time_index) = (temp_path("index"), temp_path("timeindex"));
        write_file(fs, &temp_index, &segment.index.encode())?;
        write_file(fs, &temp_time_index, &segment.time_index.encode())?;

        // 2.-4. The switch. A failure part way leaves the files in a state
        // recovery resolves but the in-memory view may disagree with them:
        // refuse appends until the log is reopened.
        let switched = self.switch_compacted(base, &temp_log, &temp_index, &temp_time_index);
        if let Err(error) = switched {
            return Err(self.fail(error, 0));
        }

        let mut state = self.shared.write_state();
        if let Some(slot) = state
            .segments
            .iter_mut()
            .find(|slot| slot.base_offset == base)
        {
            segment.next_offset = slot.next_offset.max(segment.next_offset);
            *slot = segment;
        }
        drop(state);
        debug!(dir = %self.dir.display(), base_offset = base, erased, "Compacted segment.");
        Ok(erased)
    }

    /// Puts a compacted segment's files in place of the old ones (steps 2-4
    /// of the sequence in [`Log::erase`]).
    fn switch_compacted(
        &self,
        base: u64,
        temp_log: &Path,
        temp_index: &Path,
        temp_time_index: &Path,
    ) -> Result<(), LogError> {
        let fs = self.env.fs.as_ref();
        // 2. Drop the old indexes: a crash from here on finds the segment
        //    without indexes and rebuilds them by a scan.
        for extension in ["index", "timeindex"] {
            let path = self.dir.join(segment_file_name(base, extension));
            match fs.remove(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(LogError::io("remove", path, source)),
            }
        }
        self.sync_dir()?;
        // 3. The atomic switch of the data.
        let log_path = self.dir.join(segment_file_name(base, "log"));
        fs.rename(temp_log, &log_path)
            .map_err(|source| LogError::io("rename", temp_log, source))?;
        self.sync_dir()?;
        // 4. The new indexes.
        for (from, extension) in [(temp_index, "index"), (temp_time_index, "timeindex")] {
            let to = self.dir.join(segment_file_name(base, extension));
            fs.rename(from, &to)
                .map_err(|source| LogError::io("rename", from, source))?;
        }
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), LogError> {
        self.env
            .fs
            .sync_dir(&self.dir)
            .map_err(|source| LogError::io("sync directory", &self.dir, source))
    }

    /// Closes the log cleanly: fsync, write the active segment's indexes, and
    /// leave the clean marker so the next open can trust them.
    pub fn close(mut self) -> Result<(), LogError> {
        self.shared.mark_closed();
        // A failed log closes cleanly if the disk works again by now.
        self.recover()?;
        self.sync_active(0)?;
        self.write_active_indexes()?;
        let marker = self.dir.join(CLEAN_MARKER);
        write_file(self.env.fs.as_ref(), &marker, &[])?;
        self.env
            .fs
            .sync_dir(&self.dir)
            .map_err(|source| LogError::io("sync directory", &self.dir, source))?;
        debug!(dir = %self.dir.display(), "Closed log.");
        Ok(())
    }
}

/// Writes a whole small file durably (truncate, write, fsync).
fn write_file(fs: &dyn Filesystem, path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let file = fs
        .open(path, true)
        .map_err(|source| LogError::io("open", path, source))?;
    file.set_len(0)
        .map_err(|source| LogError::io("truncate", path, source))?;
    file.write_all_at(bytes, 0)
        .map_err(|source| LogError::io("write", path, source))?;
    file.sync_data()
        .map_err(|source| LogError::io("fsync", path, source))
}

fn read_file(fs: &dyn Filesystem, path: &Path) -> Option<Vec<u8>> {
    let file = fs.open(path, false).ok()?;
    let len = usize::try_from(file.len().ok()?).ok()?;
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, 0).ok()?;
    Some(bytes)
}

/// Removes the files of a compaction that did not finish (its `.log` was
/// never renamed into place, or its indexes were not); returns the other
/// names. The removals are made durable before recovery reads anything.
fn remove_compaction_leftovers(
    fs: &dyn Filesystem,
    dir: &Path,
    names: Vec<String>,
) -> Result<Vec<String>, LogError> {
    let suffix = format!(".{COMPACTING_SUFFIX}");
    let (leftovers, names): (Vec<String>, Vec<String>) =
        names.into_iter().partition(|name| name.ends_with(&suffix));
    for name in &leftovers {
        let path = dir.join(name);
        fs.remove(&path)
            .map_err(|source| LogError::io("remove", &path, source))?;
        info!(file = %path.display(), "Removed the leftover of an unfinished compaction.");
    }
    if !leftovers.is_empty() {
        fs.sync_dir(dir)
            .map_err(|source| LogError::io("sync directory", dir, source))?;
    }
    Ok(names)
}

fn remove_orphan_indexes(
    fs: &dyn Filesystem,
    dir: &Path,
    names: &[String],
    bases: &[u64],
) -> Result<(), LogError> {
    for name in names {
        let stem = name
            .strip_suffix(".index")
            .or_else(|| name.strip_suffix(".timeindex"));
        let Some(base) = stem.and_then(|stem| stem.parse::<u64>().ok()) else {
            continue;
        };
        if bases.binary_search(&base).is_err() {
            let path = dir.join(name);
            fs.remove(&path)
                .map_err(|source| LogError::io("remove", &path, source))?;
        }
    }
    Ok(())
}

/// Opening segments at start-up.
struct Recovery<'a> {
    dir: &'a Path,
    options: &'a LogOptions,
    env: &'a LogEnv,
}

/// Damage in the middle of the active segment, and where the valid batches
/// resume after it.
struct Split {
    /// Where the damaged batch starts (the end of the valid batches before it).
    damaged_at: u64,
    /// Where the next valid batch starts.
    resume_position: u64,
    /// That batch's base offset: the first offset kept after the damage.
    resume_base: u64,
}

/// Where a scan of batches stopped.
struct ScanEnd {
    /// The first byte not part of the valid chain.
    position: u64,
    /// Why the chain ended before the file's end, if it did.
    damage: Option<FormatError>,
}

impl Recovery<'_> {
    fn path(&self, base: u64, extension: &str) -> PathBuf {
        self.dir.join(segment_file_name(base, extension))
    }

    /// Creates an empty segment file and makes its directory entry durable.
    fn create_segment(&self, base: u64) -> Result<Segment, LogError> {
        let path = self.path(base, "log");
        let file = self
            .env
            .fs
            .open(&path, true)
            .map_err(|source| LogError::io("create", &path, source))?;
        self.env
            .fs
            .sync_dir(self.dir)
            .map_err(|source| LogError::io("sync directory", self.dir, source))?;
        Ok(empty_segment(base, file))
    }

    fn open_file(&self, base: u64) -> Result<(Arc<dyn File>, u64), LogError> {
        let path = self.path(base, "log");
        let file = self
            .env
            .fs
            .open(&path, false)
            .map_err(|source| LogError::io("open", &path, source))?;
        let len = file
            .len()
            .map_err(|source| LogError::io("stat", &path, source))?;
        Ok((file, len))
    }

    /// Loads both index files, if present and consistent with the segment.
    fn load_indexes(
        &self,
        base: u64,
        file: &dyn File,
        len: u64,
    ) -> Option<(OffsetIndex, TimeIndex)> {
        let fs = self.env.fs.as_ref();
        let index = OffsetIndex::decode(&read_file(fs, &self.path(base, "index"))?, len)?;
        // The last entry must point at a batch that starts where it says.
        if let Some((relative, position)) = index.last() {
            let mut header = [0u8; BATCH_HEADER_LEN];
            file.read_exact_at(&mut header, u64::from(position)).ok()?;
            let header = BatchHeader::parse(&header).ok()?;
            if header.base_offset != base + u64::from(relative) {
                return None;
            }
        }
        let time_index =
            TimeIndex::decode(&read_file(fs, &self.path(base, "timeindex"))?, u64::MAX)?;
        Some((index, time_index))
    }

    /// A sealed segment was fsynced with its indexes when it was sealed: trust
    /// the indexes if they check out, and validate only the stretch after the
    /// last index entry to learn the segment's end. Damage found here is a
    /// disk fault, reported (error log, metric) and fenced off: the lost
    /// offsets read as [`LogError::Lost`].
    fn open_sealed(&self, base: u64, next_base: u64) -> Result<Segment, LogError> {
        let (file, len) = self.open_file(base)?;
        let path = self.path(base, "log");
        let mut segment = empty_segment(base, Arc::clone(&file));
        let loaded = self.load_indexes(base, file.as_ref(), len);
        let rebuilt = loaded.is_none();
        let (start, mut indexer) = match loaded {
            Some((index, time_index)) => {
                let (relative, position) = index.last().unwrap_or((0, 0));
                segment.index = index;
                segment.time_index = time_index;
                segment.next_offset = base + u64::from(relative);
                (
                    u64::from(position),
                    Indexer::new(self.options.index_interval_bytes),
                )
            }
            None => {
                warn!(segment = %path.display(), "Rebuilding a missing or inconsistent segment index.");
                (0, Indexer::new(self.options.index_interval_bytes))
            }
        };
        if start > 0 {
            // The first timestamp comes from the first batch.
            let mut header = [0u8; BATCH_HEADER_LEN];
            if file.read_exact_at(&mut header, 0).is_ok()
                && let Ok(header) = BatchHeader::parse(&header)
            {
                segment.first_timestamp = Some(header.first_timestamp);
            }
            segment.size = start;
        }
        let end = scan(
            file.as_ref(),
            start,
            len,
            &mut segment,
            &mut indexer,
            start > 0,
        )
        .map_err(|source| LogError::io("read", &path, source))?;
        if let Some(damage) = end.damage {
            self.env.metrics.corrupt_batches.inc();
            error!(
                segment = %path.display(),
                position = end.position,
                %damage,
                lost_from = segment.next_offset,
                lost_to = next_base,
                "Sealed segment is damaged; its tail is fenced off and will not be served."
            );
        }
        if segment.next_offset > next_base {
            return Err(LogError::Corrupt {
                path,
                position: end.position,
                source: FormatError::BadRecord {
                    index: 0,
                    reason: "segment overlaps the next one",
                },
            });
        }
        if rebuilt && end.position == len {
            self.persist_indexes(&segment)?;
        }
        Ok(segment)
    }

    /// Opens the active segment, and the segments its recovery splits off
    /// (see [`Recovery::split_active`]): the last one returned is active.
    fn open_active(&self, base: u64, clean: bool) -> Result<Vec<Segment>, LogError> {
        let mut segments = Vec::new();
        let (mut base, mut clean) = (base, clean);
        loop {
            let (segment, split) = self.open_active_once(base, clean)?;
            let Some(split) = split else {
                segments.push(segment);
                return Ok(segments);
            };
            segments.push(self.split_active(segment, &split)?);
            (base, clean) = (split.resume_base, false);
        }
    }

    /// The active segment may end in a torn or partly synced write, and may
    /// hold a damaged batch (a disk fault) in bytes that were synced and
    /// acknowledged. After a clean close its indexes are current: validate
    /// from the last index entry. After a crash, validate every batch. Where
    /// validation stops, look for a valid batch that continues the sequence
    /// further on ([`find_continuation`]): if there is one, the damage is in
    /// the middle and is returned for [`Recovery::split_active`] to fence
    /// off; if not, it is a torn tail: cut the file after the last valid
    /// batch and fsync the cut.
    fn open_active_once(
        &self,
        base: u64,
        clean: bool,
    ) -> Result<(Segment, Option<Split>), LogError> {
        let (file, len) = self.open_file(base)?;
        let path = self.path(base, "log");
        let mut segment = empty_segment(base, Arc::clone(&file));
        let mut indexer = Indexer::new(self.options.index_interval_bytes);
        let mut start = 0;
        if clean && let Some((index, time_index)) = self.load_indexes(base, file.as_ref(), len) {
            let (relative, position) = index.last().unwrap_or((0, 0));
            let mut header = [0u8; BATCH_HEADER_LEN];
            if position > 0
                && file.read_exact_at(&mut header, 0).is_ok()
                && let Ok(first) = BatchHeader::parse(&header)
            {
                segment.first_timestamp = Some(first.first_timestamp);
                segment.index = index;
                segment.time_index = time_index;
                segment.next_offset = base + u64::from(relative);
                segment.size = u64::from(position);
                start = u64::from(position);
            }
        }
        let mut end = scan(
            file.as_ref(),
            start,
            len,
            &mut segment,
            &mut indexer,
            start > 0,
        )
        .map_err(|source| LogError::io("read", &path, source))?;
        if start > 0 && end.position == start && end.damage.is_some() {
            // The index pointed at a bad batch after all: scan everything.
            segment = empty_segment(base, Arc::clone(&file));
            indexer = Indexer::new(self.options.index_interval_bytes);
            end = scan(file.as_ref(), 0, len, &mut segment, &mut indexer, false)
                .map_err(|source| LogError::io("read", &path, source))?;
        }
        if end.position < len {
            let continuation = find_continuation(
                file.as_ref(),
                end.position,
                len,
                segment.next_offset,
                segment.max_timestamp,
            )
            .map_err(|source| LogError::io("read", &path, source))?;
            if let Some((resume_position, resume_base)) = continuation {
                self.env.metrics.corrupt_batches.inc();
                error!(
                    segment = %path.display(),
                    position = end.position,
                    reason = %end.damage.as_ref().map_or_else(|| "bad batch length".to_owned(), ToString::to_string),
                    lost_from = segment.next_offset,
                    lost_to = resume_base,
                    resumes_at_position = resume_position,
                    "Active segment is damaged in the middle; the damaged batch is fenced off and will not be served, the valid batches after it are kept."
                );
                let split = Split {
                    damaged_at: end.position,
                    resume_position,
                    resume_base,
                };
                return Ok((segment, Some(split)));
            }
            let cut = len - end.position;
            warn!(
                segment = %path.display(),
                position = end.position,
                truncated_bytes = cut,
                reason = %end.damage.as_ref().map_or_else(|| "incomplete batch".to_owned(), ToString::to_string),
                "Truncating the torn or corrupt tail of the active segment."
            );
            if end.damage.is_some() {
                self.env.metrics.corrupt_batches.inc();
            }
            self.env.metrics.recovery_truncated_bytes.inc_by(cut);
            file.set_len(end.position)
                .map_err(|source| LogError::io("truncate", &path, source))?;
            file.sync_data()
                .map_err(|source| LogError::io("fsync", &path, source))?;
        }
        Ok((segment, None))
    }

    /// Fences off damage in the middle of the active segment `damaged`:
    /// the valid batches from `split.resume_position` on move to a new
    /// active segment named by their base offset, and `damaged` is cut at
    /// the damage and sealed, so the offsets in between read as
    /// [`LogError::Lost`] like damage in any sealed segment. Crash-safe at
    /// every step:
    ///
    /// ```text
    /// 1. remove <damaged>.index, .timeindex; fsync the directory
    ///    (a crash from here rebuilds them by a scan, which stops at the damage)
    /// 2. copy the rest of the file to <resume>.log.compacting; fdatasync it
    /// 3. rename it to <resume>.log; fsync the directory     <- the switch
    /// 4. truncate <damaged>.log at the damage; fdatasync; write its indexes
    /// ```
    ///
    /// Before 3 the disk holds the damaged segment as it was (recovery does
    /// this again); after it, a sealed segment whose scan stops at the damage
    /// and the new active segment.
    fn split_active(&self, mut damaged: Segment, split: &Split) -> Result<Segment, LogError> {
        let fs = self.env.fs.as_ref();
        let base = damaged.base_offset;
        let path = self.path(base, "log");
        // 1.
        for extension in ["index", "timeindex"] {
            let index = self.path(base, extension);
            match fs.remove(&index) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(LogError::io("remove", index, source)),
            }
        }
        self.sync_dir()?;
        // 2.
        let target = self.path(split.resume_base, "log");
        let temp = self.dir.join(format!(
            "{}.{COMPACTING_SUFFIX}",
            segment_file_name(split.resume_base, "log")
        ));
        let copy = fs
            .open(&temp, true)
            .map_err(|source| LogError::io("create", &temp, source))?;
        copy.set_len(0)
            .map_err(|source| LogError::io("truncate", &temp, source))?;
        let len = damaged
            .file
            .len()
            .map_err(|source| LogError::io("stat", &path, source))?;
        let mut chunk = Vec::new();
        let mut position = split.resume_position;
        while position < len {
            chunk.resize((len - position).min(1 << 20) as usize, 0);
            damaged
                .file
                .read_exact_at(&mut chunk, position)
                .map_err(|source| LogError::io("read", &path, source))?;
            copy.write_all_at(&chunk, position - split.resume_position)
                .map_err(|source| LogError::io("write", &temp, source))?;
            position += chunk.len() as u64;
        }
        copy.sync_data()
            .map_err(|source| LogError::io("fsync", &temp, source))?;
        // 3.
        fs.rename(&temp, &target)
            .map_err(|source| LogError::io("rename", &temp, source))?;
        self.sync_dir()?;
        // 4.
        damaged
            .file
            .set_len(split.damaged_at)
            .map_err(|source| LogError::io("truncate", &path, source))?;
        damaged
            .file
            .sync_data()
            .map_err(|source| LogError::io("fsync", &path, source))?;
        damaged.size = split.damaged_at;
        self.persist_indexes(&damaged)?;
        info!(
            segment = %path.display(),
            sealed_at = split.damaged_at,
            next_segment = %target.display(),
            "Split the damaged active segment: sealed before the damage, the rest continues in the next segment."
        );
        Ok(damaged)
    }

    fn sync_dir(&self) -> Result<(), LogError> {
        self.env
            .fs
            .sync_dir(self.dir)
            .map_err(|source| LogError::io("sync directory", self.dir, source))
    }

    fn persist_indexes(&self, segment: &Segment) -> Result<(), LogError> {
        let fs = self.env.fs.as_ref();
        write_file(
            fs,
            &self.path(segment.base_offset, "index"),
            &segment.index.encode(),
        )?;
        write_file(
            fs,
            &self.path(segment.base_offset, "timeindex"),
            &segment.time_index.encode(),
        )
    }
}

/// The fields of `segment` a compaction reads, without its indexes.
fn empty_segment_like(segment: &Segment) -> Segment {
    Segment {
        next_offset: segment.next_offset,
        size: segment.size,
        first_timestamp: segment.first_timestamp,
        max_timestamp: segment.max_timestamp,
        ..empty_segment(segment.base_offset, Arc::clone(&segment.file))
    }
}

fn empty_segment(base: u64, file: Arc<dyn File>) -> Segment {
    Segment {
        base_offset: base,
        next_offset: base,
        size: 0,
        file,
        index: OffsetIndex::default(),
        time_index: TimeIndex::default(),
        first_timestamp: None,
        max_timestamp: i64::MIN,
    }
}

/// Reads batches from `position` to `len`, validating each one's framing,
/// checksum and offset continuity, and feeding valid ones to `indexer`
/// (which moves `segment`'s end). `resuming` means the first batch is one the
/// index already covers. Stops at the first invalid or incomplete batch.
fn scan(
    file: &dyn File,
    mut position: u64,
    len: u64,
    segment: &mut Segment,
    indexer: &mut Indexer,
    resuming: bool,
) -> std::io::Result<ScanEnd> {
    /// Recovery reads the file in chunks this large.
    const CHUNK: usize = 1 << 20;
    let mut chunk: Vec<u8> = Vec::new();
    let mut chunk_start = position;
    let mut first = resuming;
    while position < len {
        let offset_in_chunk = (position - chunk_start) as usize;
        let available = chunk.len().saturating_sub(offset_in_chunk);
        if available < BATCH_HEADER_LEN {
            let want = CHUNK.min((len - position) as usize);
            chunk.resize(want, 0);
            file.read_exact_at(&mut chunk, position)?;
            chunk_start = position;
        }
        let offset_in_chunk = (position - chunk_start) as usize;
        let header = match BatchHeader::parse(&chunk[offset_in_chunk..]) {
            Ok(header) => header,
            // Too few bytes for a header: a torn write, not damage.
            Err(FormatError::Truncated { .. }) => {
                return Ok(ScanEnd {
                    position,
                    damage: None,
                });
            }
            Err(damage) => {
                return Ok(ScanEnd {
                    position,
                    damage: Some(damage),
                });
            }
        };
        let total = header.total_len();
        if position + total as u64 > len {
            return Ok(ScanEnd {
                position,
                damage: None,
            });
        }
        if chunk.len() - offset_in_chunk < total {
            chunk.resize(total.max(CHUNK.min((len - position) as usize)), 0);
            file.read_exact_at(&mut chunk, position)?;
            chunk_start = position;
        }
        let offset_in_chunk = (position - chunk_start) as usize;
        if let Err(damage) = validate_batch(&chunk[offset_in_chunk..offset_in_chunk + total]) {
            return Ok(ScanEnd {
                position,
                damage: Some(damage),
            });
        }
        if header.base_offset != segment.next_offset {
            let damage = FormatError::BadRecord {
                index: 0,
                reason: "batch offset breaks the sequence",
            };
            return Ok(ScanEnd {
                position,
                damage: Some(damage),
            });
        }
        if first {
            // Already indexed: only move the end.
            let mut skip_indexing = *indexer;
            skip_indexing.bytes_since_offset_entry = 0;
            skip_indexing.bytes_since_time_entry = 0;
            skip_indexing.on_batch(segment, &header, position);
            *indexer = skip_indexing;
            first = false;
        } else {
            indexer.on_batch(segment, &header, position);
        }
        position += total as u64;
    }
    Ok(ScanEnd {
        position,
        damage: None,
    })
}

/// The length of the valid batches at the start of `bytes`, the first with
/// base offset `offset` and each continuing the last; and the offset after
/// them.
fn valid_prefix(bytes: &[u8], mut offset: u64) -> (usize, u64) {
    let mut position = 0;
    while let Ok(header) = BatchHeader::parse(&bytes[position..]) {
        let end = position + header.total_len();
        if header.base_offset != offset
            || end > bytes.len()
            || validate_batch(&bytes[position..end]).is_err()
        {
            break;
        }
        offset = header.next_offset();
        position = end;
    }
    (position, offset)
}

/// After the chain of valid batches stopped at `damaged_at` (expecting
/// offset `expected` next), finds where it resumes: the position and base
/// offset of a later batch that is itself valid and continues the sequence
/// plausibly. `None` means nothing valid follows: a torn tail.
///
/// A candidate must pass every check a batch in sequence passes (framing,
/// CRC) and: its base offset is past `expected`; the offsets it skips fit in
/// the bytes it skips (each skipped record took at least 18 bytes, each batch
/// 40); its first timestamp is not before `min_timestamp` (a partition's
/// timestamps never go back). When the damaged batch's header is intact
/// (its base offset is `expected`), the candidate is where that header says
/// the next batch starts, with the base offset it says follows; a batch
/// shaped like one inside a damaged batch's payload is never taken then.
/// Otherwise the first candidate after the damage, byte by byte, is taken.
///
/// Stale bytes past a truncation cannot pose as later batches: the log
/// fsyncs every truncation of the active segment (torn-tail recovery, the
/// recovery from a failed write) before it writes past the cut, and a
/// filesystem reads never-written blocks as zeros.
fn find_continuation(
    file: &dyn File,
    damaged_at: u64,
    len: u64,
    expected: u64,
    min_timestamp: i64,
) -> std::io::Result<Option<(u64, u64)>> {
    let header_len = BATCH_HEADER_LEN as u64;
    let read_header = |position: u64| -> std::io::Result<Option<BatchHeader>> {
        if position + header_len > len {
            return Ok(None);
        }
        let mut bytes = [0u8; BATCH_HEADER_LEN];
        file.read_exact_at(&mut bytes, position)?;
        Ok(BatchHeader::parse(&bytes).ok())
    };
    let plausible = |position: u64, header: &BatchHeader| {
        let skipped_bytes = position - damaged_at;
        header.base_offset > expected
            && header.first_timestamp >= min_timestamp
            && position + header.total_len() as u64 <= len
            && (header.base_offset - expected)
                .saturating_mul(MIN_RECORD_LEN as u64)
                .saturating_add(header_len)
                <= skipped_bytes
    };
    let valid = |position: u64, header: &BatchHeader| -> std::io::Result<bool> {
        let mut batch = vec![0u8; header.total_len()];
        file.read_exact_at(&mut batch, position)?;
        Ok(validate_batch(&batch).is_ok())
    };
    if let Some(damaged) = read_header(damaged_at)?
        && damaged.base_offset == expected
    {
        let next = damaged_at + damaged.total_len() as u64;
        if let Some(header) = read_header(next)?
            && header.base_offset == damaged.next_offset()
            && plausible(next, &header)
            && valid(next, &header)?
        {
            return Ok(Some((next, header.base_offset)));
        }
    }
    const CHUNK: u64 = 1 << 20;
    let mut chunk = Vec::new();
    let mut chunk_start = damaged_at + 1;
    let mut position = chunk_start;
    while position + header_len <= len {
        if position + header_len > chunk_start + chunk.len() as u64 {
            chunk_start = position;
            chunk.resize((len - position).min(CHUNK) as usize, 0);
            file.read_exact_at(&mut chunk, position)?;
        }
        let at = (position - chunk_start) as usize;
        if let Ok(header) = BatchHeader::parse(&chunk[at..])
            && plausible(position, &header)
            && valid(position, &header)?
        {
            return Ok(Some((position, header.base_offset)));
        }
        position += 1;
    }
    Ok(None)
}

impl Drop for Log {
    fn drop(&mut self) {
        self.shared.mark_closed();
        if self.failed.take().is_some() {
            // Gone without recovering: no longer a failed log.
            self.env.metrics.failed_logs.dec();
        }
    }
}

impl Shared {
    /// Wakes every reader waiting for data; they see the log closed.
    fn mark_closed(&self) {
        self.write_state().closed = true;
        self.end.send_modify(|_| {});
    }

    fn lock_failure(&self) -> std::sync::MutexGuard<'_, Option<LogFailure>> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Records returned by a read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// The records, in offset order, starting at the offset asked for.
    pub records: Vec<Record>,
    /// The offset to read next.
    pub next_offset: u64,
}

impl LogReader {
    /// The first offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.shared
            .read_state()
            .segments
            .first()
            .map_or(0, |segment| segment.base_offset)
    }

    /// Why the log refuses appends, while it does (after a failed write or
    /// fsync, until the writer's probe recovers it).
    pub fn failure(&self) -> Option<LogFailure> {
        self.shared.lock_failure().clone()
    }

    /// One past the last visible record.
    pub fn end_offset(&self) -> u64 {
        *self.shared.end.borrow()
    }

    /// How many segment files the log has.
    pub fn segment_count(&self) -> usize {
        self.shared.read_state().segments.len()
    }

    /// Total bytes of the log's segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared
            .read_state()
            .segments
            .iter()
            .map(|segment| segment.size)
            .sum()
    }

    /// Reads visible records from offset `from`, about `max_bytes` of batches
    /// (at least one batch when any record is visible). Every batch is
    /// checksummed before any of its records is returned. A read that meets
    /// damage ([`LogError::Lost`], [`LogError::Corrupt`]) after some records
    /// returns those; the next read, from there, fails with it. Blocking I/O:
    /// call it from a blocking context.
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<ReadBatch, LogError> {
        self.read_limited(from, max_bytes, usize::MAX)
    }

    /// Like [`LogReader::read`], but stops decoding once `max_records`
    /// records are read (whole batches: the last one may take it past
    /// them). A caller that wants a few events does not pay for decoding
    /// `max_bytes` of them.
    pub fn read_limited(
        &self,
        from: u64,
        max_bytes: usize,
        max_records: usize,
    ) -> Result<ReadBatch, LogError> {
        let max_bytes = max_bytes.max(1);
        let max_records = max_records.max(1);
        let mut records = Vec::new();
        let mut next = from;
        let mut bytes_read = 0;
        loop {
            // Damage (a fenced range, a corrupt batch) past records already
            // read ends this read with them; the next read reports it.
            let location = match self.locate(next) {
                Ok(Some(location)) => location,
                Ok(None) => break,
                Err(_) if !records.is_empty() => break,
                Err(error) => return Err(error),
            };
            let progressed = match self.read_segment(
                &location,
                next,
                (max_bytes, max_records),
                &mut records,
                &mut bytes_read,
            ) {
                Ok(progressed) => progressed,
                Err(_) if !records.is_empty() => false,
                Err(error) => {
                    if let LogError::Corrupt {
                        path,
                        position,
                        source,
                    } = &error
                    {
                        self.shared.metrics.corrupt_batches.inc();
                        error!(segment = %path.display(), position, %source, "Refusing to serve a corrupt batch.");
                    }
                    return Err(error);
                }
            };
            next = records.last().map_or(next, |record| record.offset + 1);
            if !progressed || bytes_read >= max_bytes || records.len() >= max_records {
                break;
            }
        }
        Ok(ReadBatch {
            records,
            next_offset: next,
        })
    }

    /// Like [`LogReader::read`], but steps over ranges fenced off as lost
    /// (damage found by recovery: [`LogError::Lost`]) instead of failing on
    /// them, for users that must get past them (consumers, index rebuilds);
    /// recovery reported the loss. Other errors, such as a corrupt batch
    /// found by this read, still fail it.
    pub fn read_skipping_lost(&self, from: u64, max_bytes: usize) -> Result<ReadBatch, LogError> {
        self.read_skipping_lost_limited(from, max_bytes, usize::MAX)
    }

    /// [`LogReader::read_skipping_lost`] with [`LogReader::read_limited`]'s
    /// record limit.
    pub fn read_skipping_lost_limited(
        &self,
        from: u64,
        max_bytes: usize,
        max_records: usize,
    ) -> Result<ReadBatch, LogError> {
        let mut from = from;
        loop {
            match self.read_limited(from, max_bytes, max_records) {
                Err(LogError::Lost { resume_at, .. }) if resume_at > from => {
                    debug!(dir = %self.shared.dir.display(), from, resume_at, "Stepping over offsets lost to damage.");
                    from = resume_at;
                }
                other => return other,
            }
        }
    }

    /// Where offset `from` lives, or `None` at the end of the log.
    fn locate(&self, from: u64) -> Result<Option<Location>, LogError> {
        let state = self.shared.read_state();
        let segments = &state.segments;
        let start = segments.first().map_or(0, |segment| segment.base_offset);
        if from < start {
            return Err(LogError::OffsetOutOfRange {
                offset: from,
                start,
            });
        }
        let position = segments.partition_point(|segment| segment.base_offset <= from);
        let Some(segment) = position
            .checked_sub(1)
            .and_then(|index| segments.get(index))
        else {
            return Ok(None);
        };
        if from >= segment.next_offset {
            return match segments.get(position) {
                Some(next) => Err(LogError::Lost {
                    path: self
                        .shared
                        .dir
                        .join(segment_file_name(segment.base_offset, "log")),
                    from,
                    resume_at: next.base_offset,
                }),
                None => Ok(None),
            };
        }
        let (relative, file_position) = segment.index.floor((from - segment.base_offset) as u32);
        Ok(Some(Location {
            file: Arc::clone(&segment.file),
            base_offset: segment.base_offset,
            expected_offset: segment.base_offset + u64::from(relative),
            position: u64::from(file_position),
            end: segment.size,
        }))
    }

    /// Reads from one segment until `max_bytes` are read or `max_records`
    /// are in `records`; returns whether any record was added.
    fn read_segment(
        &self,
        location: &Location,
        from: u64,
        (max_bytes, max_records): (usize, usize),
        records: &mut Vec<Record>,
        bytes_read: &mut usize,
    ) -> Result<bool, LogError> {
        /// Extra bytes read past `max_bytes`: the lookup may land up to one
        /// index interval before the offset asked for.
        const SLACK: usize = 8 * 1024;
        let path = || {
            self.shared
                .dir
                .join(segment_file_name(location.base_offset, "log"))
        };
        let corrupt = |position, source| LogError::Corrupt {
            path: path(),
            position,
            source,
        };
        let mut position = location.position;
        let mut expected = location.expected_offset;
        let added_before = records.len();
        let wanted = |records: &Vec<Record>, bytes_read: usize| {
            bytes_read < max_bytes && records.len() < max_records
        };
        while position < location.end && wanted(records, *bytes_read) {
            let want = (max_bytes - *bytes_read + SLACK).min((location.end - position) as usize);
            let want = want.max(BATCH_HEADER_LEN.min((location.end - position) as usize));
            let mut chunk = vec![0u8; want];
            location
                .file
                .read_exact_at(&mut chunk, position)
                .map_err(|source| LogError::io("read", path(), source))?;
            let mut chunk = Bytes::from(chunk);
            let mut cursor = 0usize;
            while cursor + BATCH_HEADER_LEN <= chunk.len() && wanted(records, *bytes_read) {
                let at = position + cursor as u64;
                let header =
                    BatchHeader::parse(&chunk[cursor..]).map_err(|source| corrupt(at, source))?;
                let total = header.total_len();
                if at + total as u64 > location.end {
                    return Err(corrupt(
                        at,
                        FormatError::Truncated {
                            needed: total,
                            available: (location.end - at) as usize,
                        },
                    ));
                }
                let batch = if cursor + total <= chunk.len() {
                    chunk.slice(cursor..cursor + total)
                } else if records.len() == added_before && cursor == 0 {
                    // A batch larger than the chunk: read it whole.
                    let mut whole = vec![0u8; total];
                    location
                        .file
                        .read_exact_at(&mut whole, at)
                        .map_err(|source| LogError::io("read", path(), source))?;
                    chunk = Bytes::from(whole);
                    chunk.clone()
                } else {
                    break;
                };
                if header.base_offset != expected {
                    let reason = "batch offset breaks the sequence";
                    return Err(corrupt(at, FormatError::BadRecord { index: 0, reason }));
                }
                if header.next_offset() <= from {
                    // Before the offset asked for: skipped by its framing,
                    // not decoded, so damage there does not block a read
                    // past it.
                    expected = header.next_offset();
                    cursor += total;
                    continue;
                }
                let (header, batch_records) =
                    decode_batch(&batch).map_err(|source| corrupt(at, source))?;
                expected = header.next_offset();
                cursor += total;
                *bytes_read += total;
                records.extend(
                    batch_records
                        .into_iter()
                        .filter(|record| record.offset >= from),
                );
            }
            if cursor == 0 {
                break;
            }
            position += cursor as u64;
        }
        Ok(records.len() > added_before)
    }

    /// The offset of the first record appended at or after `timestamp` (ms),
    /// or the end offset if there is none.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<u64, LogError> {
        let scan_from = {
            let state = self.shared.read_state();
            let segment = state
                .segments
                .iter()
                .find(|segment| segment.max_timestamp >= timestamp);
            match segment {
                Some(segment) => {
                    segment.base_offset + u64::from(segment.time_index.scan_start(timestamp))
                }
                None => return Ok(self.end_offset()),
            }
        };
        let mut from = scan_from.max(self.start_offset());
        loop {
            let batch = self.read_skipping_lost(from, 64 * 1024)?;
            if let Some(record) = batch
                .records
                .iter()
                .find(|record| record.timestamp >= timestamp)
            {
                return Ok(record.offset);
            }
            if batch.records.is_empty() {
                return Ok(batch.next_offset);
            }
            from = batch.next_offset;
        }
    }

    /// Waits until a record at `offset` or later is visible; returns the end
    /// offset then. Returns `Err(Closed)` if the log closes first.
    pub async fn wait_for(&self, offset: u64) -> Result<u64, LogError> {
        let mut receiver = self.shared.end.subscribe();
        loop {
            let end = *receiver.borrow_and_update();
            if end > offset {
                return Ok(end);
            }
            if self.shared.read_state().closed {
                return Err(LogError::Closed);
            }
            receiver.changed().await.map_err(|_| LogError::Closed)?;
        }
    }
}

struct Location {
    file: Arc<dyn File>,
    base_offset: u64,
    expected_offset: u64,
    position: u64,
    end: u64,
}
