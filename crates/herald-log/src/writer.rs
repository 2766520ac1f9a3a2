//! The writer thread of a partition and its group commit.
//!
//! ```text
//!  callers ──append()──▶ [queue, bounded by permits] ──▶ writer thread
//!                                                         │ take everything queued
//!                                                         │ (up to max_round_bytes)
//!                                                         │ one write, one fsync
//!  callers ◀──────────── ack each (oneshot) ◀─────────────┘
//! ```
//!
//! While a round's write and fsync are in flight, new appends queue up; the
//! next round takes them all. So with N appenders each keeping one append in
//! flight, a round carries about N appends and the fsync cost is shared N
//! ways — that is the whole of group commit, and it needs no timer: an
//! append that arrives at an idle writer goes out at once.
//!
//! One refinement makes the rounds full under `fsync = always`. Callers that
//! keep one append in flight come back in cohorts: the callers acknowledged
//! by round `k` re-append while round `k + 1` is in its fsync, so without
//! help the rounds alternate between two halves of the callers. So when the
//! previous round carried `n > 1` appends, the next one waits (at most
//! `commit_linger`, from its first append) until `n` appends have arrived.
//! A lone caller (`n = 1`) never waits, so serial latency is one write plus
//! one fsync.
//!
//! A failed write or fsync puts the log in its failed state
//! ([`Log::recover`]): appends are refused at once (no disk I/O, no queueing
//! behind the disk), and the thread's timer probes the log, 50 ms after the
//! failure and then with the delay doubled up to 1 s, until the disk works
//! again. An inline append that fails the log wakes the thread so the probe
//! is scheduled; a failed log asks for no interval fsync meanwhile.
//!
//! The writer is a dedicated OS thread (its work is blocking file I/O, which
//! must never run on an async request task). Callers are async: they wait
//! for a queue permit (backpressure) and for their acknowledgement without
//! blocking a runtime thread. The thread also runs the interval fsync and
//! periodic retention.
//!
//! # Appending on the caller's thread
//!
//! Under `fsync = never` or `interval` an append costs one `pwrite` of a few
//! microseconds into the page cache, while the hop to the writer thread and
//! back costs two thread wake-ups (tens of microseconds on a VM, most of a
//! serial publish). So when the writer is idle — every queue permit free,
//! hence nothing queued, nothing in a round and nobody waiting — and its log
//! lock is free, [`LogHandle::append`] writes the batch itself under that
//! lock ([`INLINE_MAX_BYTES`] at most) and never suspends. Order holds: an
//! inline append takes no permit but only runs when no permit is taken, and
//! it finishes before its caller can start another. Under `fsync = always`
//! appends always go through the thread, where rounds share an fsync: an
//! inline append would hold a runtime thread for a whole fdatasync. (Tried
//! for lone appenders: it saved 50–100 µs of a sporadic serial durable
//! publish, but a pipelined producer whose rounds carry one batch each then
//! kept a runtime thread in fdatasync most of the time, and its end-to-end
//! p50 went from 1.3–1.9 ms to 15–34 ms: BENCHMARKS.md, issue 7.)

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::{error, warn};

use crate::error::LogError;
use crate::format::NewRecord;
use crate::log::{AppendAck, Erased, FsyncPolicy, Log, LogReader};
use crate::metrics::LogMetrics;

/// The largest append written on the caller's thread (see the module docs):
/// about 50 µs of `pwrite` at the disk's write bandwidth, so a runtime
/// thread is never held for long.
pub const INLINE_MAX_BYTES: usize = 64 * 1024;

/// How the writer thread runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// Appends that may wait in the queue; further callers wait for room.
    /// 4,096 appends of 1 KiB is 4 MiB of memory per partition at most.
    pub queue_capacity: usize,
    /// A commit round stops taking appends past this many bytes, bounding
    /// one write and the latency of the appends at its front. 4 MiB takes
    /// about 10 ms at the disk's ~400 MB/s.
    pub max_round_bytes: usize,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// Under `fsync = always`, how long a round may wait for the callers of
    /// the previous round to come back (see the module docs). Zero turns it
    /// off. 100 µs: measured best of 0/50/100/200/400 µs with 64 appenders on
    /// the development machine (about half of one fdatasync there).
    pub commit_linger: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_round_bytes: 4 * 1024 * 1024,
            retention_interval: Duration::from_secs(30),
            commit_linger: Duration::from_micros(100),
        }
    }
}

/// A cheap, cloneable handle to a partition's writer thread and its reader.
#[derive(Debug, Clone)]
pub struct LogHandle {
    sender: mpsc::Sender<Command>,
    permits: Arc<Semaphore>,
    /// `queue_capacity`: all permits free means the writer is idle.
    capacity: usize,
    shared: Arc<Shared>,
    reader: LogReader,
    dir: PathBuf,
}

/// What the writer thread and the handles share.
#[derive(Debug)]
struct Shared {
    /// The log; `None` once closed. The writer thread holds the lock for a
    /// whole round or control command; inline appends only try it.
    log: Mutex<Option<Log>>,
    metrics: Arc<LogMetrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Log>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
enum Command {
    Append {
        records: Vec<NewRecord>,
        reply: oneshot::Sender<Result<AppendAck, LogError>>,
        enqueued: Instant,
        _permit: OwnedSemaphorePermit,
    },
    Sync(oneshot::Sender<Result<(), LogError>>),
    Roll(oneshot::Sender<Result<(), LogError>>),
    Retention(oneshot::Sender<Result<usize, LogError>>),
    SetRetention(crate::log::Retention, oneshot::Sender<Result<(), LogError>>),
    Erase(Vec<u64>, oneshot::Sender<Result<Erased, LogError>>),
    Close(oneshot::Sender<Result<(), LogError>>),
    /// An inline append made the log dirty: recompute the sync deadline.
    Wake,
}

impl LogHandle {
    /// Starts the writer thread for `log`.
    pub fn spawn(
        log: Log,
        options: WriterOptions,
        metrics: Arc<LogMetrics>,
    ) -> Result<Self, LogError> {
        let (sender, receiver) = mpsc::channel();
        let reader = log.reader();
        let dir = log.dir().to_path_buf();
        let name = format!(
            "log-writer-{}",
            dir.file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let capacity = options.queue_capacity.max(1);
        let permits = Arc::new(Semaphore::new(capacity));
        let shared = Arc::new(Shared {
            log: Mutex::new(Some(log)),
            metrics,
        });
        let writer = Writer {
            last_round_appends: 0,
            shared: Arc::clone(&shared),
            receiver,
            options,
            last_retention: Instant::now(),
        };
        std::thread::Builder::new()
            .name(name)
            .spawn(move || writer.run())
            .map_err(|source| LogError::io("spawn writer thread for", &dir, source))?;
        Ok(Self {
            sender,
            permits,
            capacity,
            shared,
            reader,
            dir,
        })
    }

    /// Appends `records` as one batch; resolves once they are durable under
    /// the log's fsync policy, with their offsets. Records of one append are
    /// contiguous and all-or-nothing; appends from one caller are ordered.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<AppendAck, LogError> {
        if let Some(result) = self.append_inline(&records) {
            return result;
        }
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| LogError::Closed)?;
        let (reply, acknowledged) = oneshot::channel();
        let command = Command::Append {
            records,
            reply,
            enqueued: Instant::now(),
            _permit: permit,
        };
        self.sender.send(command).map_err(|_| LogError::Closed)?;
        acknowledged.await.map_err(|_| LogError::Closed)?
    }

    /// Appends on the caller's thread if the writer is idle and the log's
    /// policy does not fsync every round (see the module docs); `None` when
    /// the append must go through the writer thread.
    fn append_inline(&self, records: &[NewRecord]) -> Option<Result<AppendAck, LogError>> {
        if self.permits.available_permits() != self.capacity {
            return None;
        }
        let mut guard = self.shared.log.try_lock().ok()?;
        let log = guard.as_mut()?;
        if log.options().fsync == FsyncPolicy::Always {
            return None;
        }
        match log.check_append(records) {
            Ok(bytes) if bytes <= INLINE_MAX_BYTES => {}
            Ok(_) => return None,
            Err(error) => return Some(Err(error)),
        }
        let clean = log.sync_deadline().is_none();
        let started = Instant::now();
        let result = log
            .append_round(&[records])
            .and_then(|mut acks| acks.pop().ok_or(LogError::EmptyAppend));
        // The writer thread sleeps until its old deadline: have it schedule
        // the interval fsync this append now needs, or the probe of a log
        // this append failed.
        let wake = (clean && log.sync_deadline().is_some())
            || (result.is_err() && log.probe_deadline().is_some());
        drop(guard);
        if result.is_ok() {
            let metrics = &self.shared.metrics;
            metrics.inline_appends.inc();
            metrics
                .append_latency
                .observe(started.elapsed().as_secs_f64());
        }
        if wake {
            let _ = self.sender.send(Command::Wake);
        }
        Some(result)
    }

    /// Makes everything acknowledged so far durable.
    pub async fn sync(&self) -> Result<(), LogError> {
        self.request(Command::Sync).await
    }

    /// Seals the active segment and starts a new one.
    pub async fn roll(&self) -> Result<(), LogError> {
        self.request(Command::Roll).await
    }

    /// Applies retention now; returns how many segments were removed.
    pub async fn apply_retention(&self) -> Result<usize, LogError> {
        self.request(Command::Retention).await
    }

    /// Replaces the retention limits (applied at the next retention run).
    pub async fn set_retention(&self, retention: crate::log::Retention) -> Result<(), LogError> {
        self.request(|reply| Command::SetRetention(retention, reply))
            .await
    }

    /// Physically erases the records at `offsets` by compacting the segments
    /// that hold them (see [`Log::erase`]). Runs on the writer thread, so
    /// appends to this partition wait while a segment is rewritten (about
    /// one segment's read and write: 64 MiB at the default size).
    pub async fn erase(&self, offsets: Vec<u64>) -> Result<Erased, LogError> {
        self.request(|reply| Command::Erase(offsets, reply)).await
    }

    /// Finishes the appends queued so far, closes the log cleanly and stops
    /// the writer. Later calls fail with [`LogError::Closed`].
    pub async fn close(&self) -> Result<(), LogError> {
        self.permits.close();
        self.request(Command::Close).await
    }

    /// Why the log refuses appends, while it does: after a failed write or
    /// fsync, until the writer's probe (every 50 ms to 1 s) finds the disk
    /// working again and recovers the log.
    pub fn failure(&self) -> Option<crate::log::LogFailure> {
        self.reader.failure()
    }

    /// The read side.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// The log's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Command,
    ) -> Result<T, LogError> {
        let (reply, answered) = oneshot::channel();
        self.sender
            .send(command(reply))
            .map_err(|_| LogError::Closed)?;
        answered.await.map_err(|_| LogError::Closed)?
    }
}

struct Writer {
    /// Appends the previous commit round carried.
    last_round_appends: usize,
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<Command>,
    options: WriterOptions,
    last_retention: Instant,
}

/// An append taken into the current round.
struct Pending {
    records: Vec<NewRecord>,
    reply: oneshot::Sender<Result<AppendAck, LogError>>,
    enqueued: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Writer {
    fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let mut round: Vec<Pending> = Vec::new();
        loop {
            let timeout = {
                let guard = shared.lock();
                let Some(log) = guard.as_ref() else { return };
                let next_retention = self.last_retention + self.options.retention_interval;
                let deadline = [log.sync_deadline(), log.probe_deadline()]
                    .into_iter()
                    .flatten()
                    .fold(next_retention, Instant::min);
                deadline.saturating_duration_since(Instant::now())
            };
            let first = match self.receiver.recv_timeout(timeout) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    self.on_timers(&mut shared.lock());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Every handle is gone: close cleanly.
                    if let Some(log) = shared.lock().take()
                        && let Err(error) = log.close()
                    {
                        error!(%error, "Closing the log after its last handle dropped failed.");
                    }
                    return;
                }
            };
            // Held for the whole round: inline appends go through the queue
            // meanwhile (see the module docs).
            let mut guard = shared.lock();
            let Some(log) = guard.as_mut() else { return };
            let mut control = None;
            let mut round_bytes = 0;
            let linger_until = Instant::now() + self.options.commit_linger;
            let cohort = if log.options().fsync == FsyncPolicy::Always {
                self.last_round_appends
            } else {
                0
            };
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append {
                        records,
                        reply,
                        enqueued,
                        _permit,
                    } => match log.check_append(&records) {
                        Ok(bytes) => {
                            round_bytes += bytes;
                            round.push(Pending {
                                records,
                                reply,
                                enqueued,
                                _permit,
                            });
                        }
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    },
                    other => {
                        control = Some(other);
                        break;
                    }
                }
                if round_bytes < self.options.max_round_bytes {
                    next = self.receiver.try_recv().ok();
                    if next.is_none() && round.len() < cohort {
                        let left = linger_until.saturating_duration_since(Instant::now());
                        next = self.receiver.recv_timeout(left).ok();
                    }
                }
            }
            self.last_round_appends = round.len();
            commit(log, &shared.metrics, &mut round);
            if let Some(command) = control
                && self.on_control(&mut guard, command)
            {
                return;
            }
        }
    }

    /// Runs a control command; returns whether the writer should stop.
    fn on_control(&mut self, slot: &mut Option<Log>, command: Command) -> bool {
        let Some(log) = slot.as_mut() else {
            return true;
        };
        match command {
            Command::Append { .. } | Command::Wake => false,
            Command::Sync(reply) => {
                let _ = reply.send(log.sync());
                false
            }
            Command::Roll(reply) => {
                let _ = reply.send(log.roll());
                false
            }
            Command::Retention(reply) => {
                self.last_retention = Instant::now();
                let _ = reply.send(log.apply_retention());
                false
            }
            Command::SetRetention(retention, reply) => {
                log.set_retention(retention);
                let _ = reply.send(Ok(()));
                false
            }
            Command::Erase(offsets, reply) => {
                let _ = reply.send(log.erase(&offsets));
                false
            }
            Command::Close(reply) => {
                let result = slot.take().map_or(Ok(()), Log::close);
                let _ = reply.send(result);
                true
            }
        }
    }

    fn on_timers(&mut self, slot: &mut Option<Log>) {
        let Some(log) = slot.as_mut() else { return };
        if log
            .probe_deadline()
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            // A failed log: try to bring it back (it logs the outcome).
            let _ = log.recover();
        }
        if log
            .sync_deadline()
            .is_some_and(|deadline| deadline <= Instant::now())
            && let Err(error) = log.sync()
        {
            error!(dir = %log.dir().display(), %error, "Interval fsync failed.");
        }
        if self.last_retention + self.options.retention_interval <= Instant::now() {
            self.last_retention = Instant::now();
            if let Err(error) = log.apply_retention() {
                warn!(dir = %log.dir().display(), %error, "Retention failed; will retry.");
            }
        }
    }
}

/// Appends one round and answers its callers.
fn commit(log: &mut Log, metrics: &LogMetrics, round: &mut Vec<Pending>) {
    if round.is_empty() {
        return;
    }
    let appends: Vec<&[NewRecord]> = round
        .iter()
        .map(|pending| pending.records.as_slice())
        .collect();
    let result = log.append_round(&appends);
    drop(appends);
    let acknowledged = Instant::now();
    match result {
        Ok(acks) => {
            for (pending, ack) in round.drain(..).zip(acks) {
                metrics
                    .append_latency
                    .observe(acknowledged.duration_since(pending.enqueued).as_secs_f64());
                let _ = pending.reply.send(Ok(ack));
            }
        }
        Err(error) => {
            for pending in round.drain(..) {
                let _ = pending.reply.send(Err(error.clone()));
            }
        }
    }
}
