//! An instance's history: an event stream in Herald's own event store (topic
//! [`HISTORY_TOPIC`], one stream per instance), written with optimistic
//! concurrency, so two engines can never both advance an instance, and
//! read back on recovery.
//!
//! Replay is by key: every task run has a key, the JSON Pointer of the task
//! and how many times this run entered it before (`/do/0/fetch#0`). What a
//! task produced (`task_completed`: output, `$context`, where to go next)
//! and what an effect answered (`effect`: an HTTP call's response, an
//! emitted event's position, the events a `listen` consumed) are recorded
//! under their key; a run that comes back to a key takes the record instead
//! of running the task again. Timers record their due time (`timer_set`),
//! so a restart neither resets nor drifts them. Records that only serve
//! replay wait in memory and go out with the next write: an effect is
//! recorded after it happened (a crash in between repeats it once, with
//! the same idempotency key), a timer before it is waited on.
//!
//! # Compaction
//!
//! A long `for` loop, or a `try` retrying for ever, would make the replay
//! set grow without end. At the boundary of an iteration (or of an
//! attempt) everything under the loop's key is finished, so once the
//! records read or written since the last snapshot pass
//! [`Journal::should_compact`] (half the instance's bound) the run folds
//! its replay state into a snapshot of the stream ([`Journal::compact`]):
//! what replay needs of the tasks outside the loop, plus a [`Mark`] saying
//! where the loop is (its next index, its value, `$context`, how many
//! times each task under it ran), without the records of the iterations
//! done. A load takes the snapshot and the records after it; the loop
//! resumes at its mark. The stream itself keeps every record (inspection
//! reads them all); the bound applies to what a load replays: the records
//! since the last snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use herald_backend::{Backend, Direction, Error as BackendError, ExpectedVersion};
use herald_types::{Event, EventInput, StreamId, TopicName};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::WorkflowError;

/// The topic holding every instance's history stream.
pub const HISTORY_TOPIC: &str = "herald.workflows";

/// One record of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// The instance started.
    Started {
        /// `document.namespace`.
        namespace: String,
        /// `document.name`.
        name: String,
        /// `document.version`: the instance keeps it.
        version: String,
        /// The raw input.
        input: Value,
        /// When, ms since the Unix epoch.
        at: i64,
    },
    /// A task began (the first time: a replay does not record it again).
    TaskStarted {
        /// The run's key of the task.
        key: String,
        /// The task's name.
        name: String,
        /// Its transformed input.
        input: Value,
        /// Its attempt (1 outside `try` retries).
        attempt: u32,
        /// When.
        at: i64,
    },
    /// A task ended with an output.
    TaskCompleted {
        /// The run's key of the task.
        key: String,
        /// The task's name.
        name: String,
        /// Its output (after `output.as`).
        output: Value,
        /// `$context` after it, when it changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<Value>,
        /// Where to go next: `continue`, `exit`, `end` or a task's name.
        flow: String,
        /// When it started.
        started_at: i64,
        /// When.
        at: i64,
    },
    /// A task raised an error.
    TaskFaulted {
        /// The run's key of the task.
        key: String,
        /// The task's name.
        name: String,
        /// The error.
        error: WorkflowError,
        /// When it started.
        started_at: i64,
        /// When.
        at: i64,
    },
    /// A `try` retries after an error.
    TaskRetried {
        /// The `try` task's key.
        key: String,
        /// The `try` task's name.
        name: String,
        /// The attempt coming.
        attempt: u32,
        /// When it runs.
        due: i64,
        /// When.
        at: i64,
    },
    /// What an effect answered.
    Effect {
        /// The effect's key (its task's key and what it is).
        key: String,
        /// The answer, or the error it raised.
        outcome: Outcome,
        /// When.
        at: i64,
    },
    /// A durable timer (a `wait`, a retry delay, a timeout).
    TimerSet {
        /// The timer's key.
        key: String,
        /// When it fires, ms since the Unix epoch.
        due: i64,
        /// When.
        at: i64,
    },
    /// Suspend asked.
    Suspended {
        /// When.
        at: i64,
    },
    /// Resume asked.
    Resumed {
        /// When.
        at: i64,
    },
    /// Cancel asked.
    CancelRequested {
        /// When.
        at: i64,
    },
    /// Retry of a faulted instance asked: records of failures before this
    /// one no longer count, so the failed task runs again.
    RetryRequested {
        /// When.
        at: i64,
    },
    /// The instance completed.
    Completed {
        /// Its output.
        output: Value,
        /// When.
        at: i64,
    },
    /// The instance faulted.
    Faulted {
        /// The error.
        error: WorkflowError,
        /// When.
        at: i64,
    },
    /// The instance was cancelled.
    Cancelled {
        /// When.
        at: i64,
    },
}

impl Record {
    /// The CloudEvents type the record is stored under: the DSL's lifecycle
    /// events where one fits, Herald's otherwise.
    #[must_use]
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Started { .. } => "io.serverlessworkflow.workflow.started.v1",
            Self::TaskStarted { .. } => "io.serverlessworkflow.task.started.v1",
            Self::TaskCompleted { .. } => "io.serverlessworkflow.task.completed.v1",
            Self::TaskFaulted { .. } => "io.serverlessworkflow.task.faulted.v1",
            Self::TaskRetried { .. } => "io.serverlessworkflow.task.retried.v1",
            Self::Effect { .. } => "dev.herald.workflow.effect.v1",
            Self::TimerSet { .. } => "dev.herald.workflow.timer.v1",
            Self::Suspended { .. } => "io.serverlessworkflow.workflow.suspended.v1",
            Self::Resumed { .. } => "io.serverlessworkflow.workflow.resumed.v1",
            Self::CancelRequested { .. } => "dev.herald.workflow.cancel-requested.v1",
            Self::RetryRequested { .. } => "dev.herald.workflow.retry-requested.v1",
            Self::Completed { .. } => "io.serverlessworkflow.workflow.completed.v1",
            Self::Faulted { .. } => "io.serverlessworkflow.workflow.faulted.v1",
            Self::Cancelled { .. } => "io.serverlessworkflow.workflow.cancelled.v1",
        }
    }

    /// Whether an operator wrote it (not the engine running the instance).
    #[must_use]
    pub fn is_control(&self) -> bool {
        matches!(
            self,
            Self::Suspended { .. }
                | Self::Resumed { .. }
                | Self::CancelRequested { .. }
                | Self::RetryRequested { .. }
        )
    }
}

/// What an effect answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its value.
    Ok(Value),
    /// The error it raised.
    Err(WorkflowError),
}

/// Where an instance's life stands, by its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Control {
    /// Suspend asked and not resumed.
    pub suspended: bool,
    /// Cancel asked.
    pub cancel: bool,
    /// The history version of the last operator record this reflects: of
    /// two views, the one with the higher version is the newer.
    pub version: u64,
}

impl Control {
    /// Takes `other` if it is newer; whether it was.
    pub fn merge(&mut self, other: Control) -> bool {
        if other.version > self.version {
            *self = other;
            true
        } else {
            false
        }
    }
}

/// A memoised task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completed {
    /// Its output.
    pub output: Value,
    /// `$context` after it, when it changed.
    pub context: Option<Value>,
    /// Where to go next.
    pub flow: String,
}

/// Where a loop (or a retrying `try`) stood at its last compaction: a
/// replay resumes it here instead of replaying the iterations before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// The next iteration's index (a `try`: the next attempt).
    pub next: usize,
    /// The value the next iteration starts from.
    pub value: Value,
    /// `$context` then.
    pub context: Value,
    /// How many times each task directly under the loop's key ran (keys
    /// count runs, so the next iteration's keys stay the same).
    pub counts: Vec<(String, u32)>,
}

/// An instance's replay state at a version of its history.
#[derive(Debug, Serialize, Deserialize)]
struct Folded {
    started: Record,
    completed: HashMap<String, Completed>,
    effects: HashMap<String, Outcome>,
    timers: HashMap<String, i64>,
    begun: HashMap<String, i64>,
    marks: HashMap<String, Mark>,
    control: Control,
}

/// Whether `key` (a task's key, or an effect's or timer's derived from
/// one) belongs to a run under the task run `parent`: its pointer is under
/// the parent's and its chain of runs extends the parent's.
#[must_use]
pub fn is_under(key: &str, parent: &str) -> bool {
    let (Some((parent_ref, parent_chain)), Some((reference, chain))) =
        (parent.split_once('#'), key.split_once('#'))
    else {
        return false;
    };
    reference
        .strip_prefix(parent_ref)
        .is_some_and(|rest| rest.starts_with('/'))
        && chain
            .strip_prefix(parent_chain)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Why the history could not be written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Another engine wrote to the instance: this one must stop running it.
    #[error("another engine advanced the instance")]
    Lost,
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] BackendError),
    /// The history is at its bound.
    #[error("the instance's history reached its bound of {0} records")]
    Full(usize),
}

/// An instance's history as the engine running it sees it.
#[derive(Debug)]
pub struct Journal {
    backend: Arc<dyn Backend>,
    topic: TopicName,
    stream: StreamId,
    source: String,
    /// The stream's version (`None`: no stream yet).
    version: Option<u64>,
    /// Every record, in order (written and pending).
    records: Vec<Record>,
    written: usize,
    completed: HashMap<String, Completed>,
    effects: HashMap<String, Outcome>,
    timers: HashMap<String, i64>,
    /// Task runs recorded as started, with when.
    started: HashMap<String, i64>,
    marks: HashMap<String, Mark>,
    control: Control,
    max_records: usize,
    /// Told of every write (followers of the history wake on it).
    notify: Option<Arc<tokio::sync::watch::Sender<u64>>>,
}

impl Journal {
    /// Reads the history of `instance` (empty when there is none).
    pub async fn load(
        backend: Arc<dyn Backend>,
        instance: &str,
        max_records: usize,
    ) -> Result<Self, HistoryError> {
        let topic = history_topic();
        let stream = stream_id(instance)?;
        let mut journal = Self {
            backend,
            topic,
            stream,
            source: format!("/herald/workflows/{instance}"),
            version: None,
            records: Vec::new(),
            written: 0,
            completed: HashMap::new(),
            effects: HashMap::new(),
            timers: HashMap::new(),
            started: HashMap::new(),
            marks: HashMap::new(),
            control: Control::default(),
            max_records,
            notify: None,
        };
        let snapshot = match journal
            .backend
            .get_snapshot(&journal.topic, &journal.stream)
            .await
        {
            Ok(snapshot) => snapshot,
            Err(BackendError::StreamNotFound { .. }) => None,
            Err(error) => return Err(error.into()),
        };
        let from = match snapshot {
            Some(snapshot) => {
                let folded: Folded = serde_json::from_value(snapshot.state).map_err(|error| {
                    HistoryError::Storage(BackendError::invalid(
                        "snapshot",
                        format!("the history snapshot of {instance} does not read: {error}"),
                    ))
                })?;
                journal.records.push(folded.started);
                journal.written = 1;
                journal.completed = folded.completed;
                journal.effects = folded.effects;
                journal.timers = folded.timers;
                journal.started = folded.begun;
                journal.marks = folded.marks;
                journal.control = folded.control;
                journal.version = Some(snapshot.version);
                snapshot.version + 1
            }
            None => 0,
        };
        journal.read_from(from).await?;
        Ok(journal)
    }

    /// Where the loop (or `try`) run `key` stood at the last compaction.
    #[must_use]
    pub fn mark(&self, key: &str) -> Option<&Mark> {
        self.marks.get(key)
    }

    /// Whether the records since the last snapshot passed half the bound:
    /// a loop at an iteration's boundary compacts then.
    #[must_use]
    pub fn should_compact(&self) -> bool {
        self.records.len() > self.max_records / 2
    }

    /// Writes what is pending, then folds the replay state into a snapshot
    /// where the loop (or `try`) run `key` stands at `mark`: everything
    /// under `key` is left out (the iterations before are done), and the
    /// records in memory start again from the snapshot.
    pub async fn compact(&mut self, key: &str, mark: Mark) -> Result<(), HistoryError> {
        self.flush().await?;
        let Some(version) = self.version else {
            return Ok(());
        };
        let Some(started) = self.records.first().cloned() else {
            return Ok(());
        };
        self.completed.retain(|done, _| !is_under(done, key));
        self.effects.retain(|effect, _| !is_under(effect, key));
        self.timers.retain(|timer, _| !is_under(timer, key));
        self.started.retain(|begun, _| !is_under(begun, key));
        self.marks.retain(|marked, _| !is_under(marked, key));
        self.marks.insert(key.to_owned(), mark);
        let folded = Folded {
            started,
            completed: self.completed.clone(),
            effects: self.effects.clone(),
            timers: self.timers.clone(),
            begun: self.started.clone(),
            marks: self.marks.clone(),
            control: self.control,
        };
        let state = serde_json::to_value(&folded).map_err(|error| {
            HistoryError::Storage(BackendError::invalid("snapshot", error.to_string()))
        })?;
        self.backend
            .put_snapshot(&self.topic, &self.stream, version, state)
            .await?;
        self.records.truncate(1);
        self.written = 1;
        Ok(())
    }

    /// Reads and applies the records from `from` on.
    async fn read_from(&mut self, mut from: u64) -> Result<(), HistoryError> {
        loop {
            let slice = match self
                .backend
                .read_stream(&self.topic, &self.stream, from, Direction::Forward, 512)
                .await
            {
                Ok(slice) => slice,
                Err(BackendError::StreamNotFound { .. }) => return Ok(()),
                Err(error) => return Err(error.into()),
            };
            for (version, stored) in &slice.events {
                let record = decode(&stored.event)?;
                self.apply(&record);
                if record.is_control() {
                    self.control.version = *version;
                }
                self.records.push(record);
                self.written += 1;
                self.version = Some(*version);
            }
            match slice.next_version {
                Some(next) if !slice.events.is_empty() => from = next,
                _ => return Ok(()),
            }
        }
    }

    fn apply(&mut self, record: &Record) {
        match record {
            Record::TaskCompleted {
                key,
                output,
                context,
                flow,
                ..
            } => {
                self.completed.insert(
                    key.clone(),
                    Completed {
                        output: output.clone(),
                        context: context.clone(),
                        flow: flow.clone(),
                    },
                );
            }
            Record::Effect { key, outcome, .. } => {
                self.effects.insert(key.clone(), outcome.clone());
            }
            Record::TimerSet { key, due, .. } => {
                self.timers.insert(key.clone(), *due);
            }
            Record::TaskStarted { key, at, .. } => {
                self.started.entry(key.clone()).or_insert(*at);
            }
            Record::Suspended { .. } => self.control.suspended = true,
            Record::Resumed { .. } => self.control.suspended = false,
            Record::CancelRequested { .. } => self.control.cancel = true,
            Record::RetryRequested { .. } => {
                // Failures before this no longer count: the faulted task runs
                // again, its failed effects and timers with it.
                self.effects
                    .retain(|_, outcome| matches!(outcome, Outcome::Ok(_)));
                self.timers.clear();
            }
            _ => {}
        }
    }

    /// The records read or written since the last snapshot (after the
    /// `started` record), in order.
    #[must_use]
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The stream's version (`None`: nothing written yet).
    #[must_use]
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// What operators asked.
    #[must_use]
    pub fn control(&self) -> Control {
        self.control
    }

    /// The memoised task of `key`.
    #[must_use]
    pub fn completed(&self, key: &str) -> Option<&Completed> {
        self.completed.get(key)
    }

    /// The recorded answer of the effect `key`.
    #[must_use]
    pub fn effect(&self, key: &str) -> Option<&Outcome> {
        self.effects.get(key)
    }

    /// Whether the task run `key` was recorded as started.
    #[must_use]
    pub fn was_started(&self, key: &str) -> bool {
        self.started.contains_key(key)
    }

    /// When the task run `key` was first recorded as started.
    #[must_use]
    pub fn started_at(&self, key: &str) -> Option<i64> {
        self.started.get(key).copied()
    }

    /// The recorded due time of the timer `key`.
    #[must_use]
    pub fn timer(&self, key: &str) -> Option<i64> {
        self.timers.get(key).copied()
    }

    /// The last record (the instance's end, when it ended).
    #[must_use]
    pub fn last(&self) -> Option<&Record> {
        self.records.last()
    }

    /// The first record (`started`), when written.
    #[must_use]
    pub fn started(&self) -> Option<&Record> {
        self.records.first()
    }

    /// Adds `record`; it is written with the next [`Journal::flush`].
    pub fn push(&mut self, record: Record) {
        self.apply(&record);
        self.records.push(record);
    }

    /// Tells `notify` of every write from now on.
    pub fn notify_with(&mut self, notify: Arc<tokio::sync::watch::Sender<u64>>) {
        self.notify = Some(notify);
    }

    /// Lets the history grow past its bound (to record the instance's end).
    pub fn lift_bound(&mut self) {
        self.max_records = usize::MAX;
    }

    /// Whether records wait to be written.
    #[must_use]
    pub fn has_pending(&self) -> bool {
        self.written < self.records.len()
    }

    /// Adds `record` and writes everything pending.
    pub async fn record(&mut self, record: Record) -> Result<(), HistoryError> {
        self.push(record);
        self.flush().await
    }

    /// Writes the pending records at the version read. When an operator
    /// wrote meanwhile (suspend, cancel, …), their records are read and the
    /// write is tried again after them; any other writer means another
    /// engine runs the instance: [`HistoryError::Lost`].
    pub async fn flush(&mut self) -> Result<(), HistoryError> {
        while self.has_pending() {
            if self.records.len() > self.max_records {
                return Err(HistoryError::Full(self.max_records));
            }
            let pending = &self.records[self.written..];
            let events = pending
                .iter()
                .map(|record| encode(record, &self.source))
                .collect::<Result<Vec<_>, _>>()?;
            let expected = match self.version {
                None => ExpectedVersion::NoStream,
                Some(version) => ExpectedVersion::Exact(version),
            };
            match self
                .backend
                .append(&self.topic, &self.stream, events, expected)
                .await
            {
                Ok(appended) => {
                    self.written = self.records.len();
                    self.version = Some(appended.last_version);
                    if let Some(notify) = &self.notify {
                        notify.send_modify(|count| *count = count.wrapping_add(1));
                    }
                }
                Err(BackendError::VersionConflict { .. }) => self.catch_up().await?,
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Reads what others wrote since the version read; only operators'
    /// records are taken (they go before the pending ones).
    async fn catch_up(&mut self) -> Result<(), HistoryError> {
        let pending: Vec<Record> = self.records.drain(self.written..).collect();
        let from = self.version.map_or(0, |version| version + 1);
        let before = self.records.len();
        self.read_from(from).await?;
        if self.records[before..]
            .iter()
            .any(|record| !record.is_control())
        {
            return Err(HistoryError::Lost);
        }
        for record in pending {
            self.push(record);
        }
        Ok(())
    }
}

/// Appends an operator's `record` to the history of `instance`, whatever its
/// version (the engine running it reads it before its next write).
pub async fn append_control(
    backend: &dyn Backend,
    instance: &str,
    record: &Record,
) -> Result<u64, HistoryError> {
    let event = encode(record, &format!("/herald/workflows/{instance}"))?;
    let appended = backend
        .append(
            &history_topic(),
            &stream_id(instance)?,
            vec![event],
            ExpectedVersion::Exists,
        )
        .await?;
    Ok(appended.last_version)
}

/// Reads up to `max` records of `instance`'s history from `from`, with
/// their versions (empty past the end or when there is no history).
pub async fn read(
    backend: &dyn Backend,
    instance: &str,
    from: u64,
    max: usize,
) -> Result<Vec<(u64, Record)>, HistoryError> {
    let slice = match backend
        .read_stream(
            &history_topic(),
            &stream_id(instance)?,
            from,
            Direction::Forward,
            max.max(1),
        )
        .await
    {
        Ok(slice) => slice,
        Err(BackendError::StreamNotFound { .. }) => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    slice
        .events
        .iter()
        .map(|(version, stored)| Ok((*version, decode(&stored.event)?)))
        .collect()
}

/// Every record of `instance`'s history, in order (also those a snapshot
/// folded: the stream keeps them).
pub async fn read_all(backend: &dyn Backend, instance: &str) -> Result<Vec<Record>, HistoryError> {
    let mut records = Vec::new();
    let mut from = 0;
    loop {
        let slice = read(backend, instance, from, 512).await?;
        let Some((last, _)) = slice.last() else {
            return Ok(records);
        };
        from = last + 1;
        records.extend(slice.into_iter().map(|(_, record)| record));
    }
}

/// The topic of every instance's history.
pub(crate) fn history_topic() -> TopicName {
    TopicName::try_from(HISTORY_TOPIC).unwrap_or_else(|_| unreachable!("a valid topic name"))
}

fn stream_id(instance: &str) -> Result<StreamId, HistoryError> {
    StreamId::try_from(instance).map_err(|error| {
        HistoryError::Storage(BackendError::invalid("instance_id", error.to_string()))
    })
}

fn encode(record: &Record, source: &str) -> Result<EventInput, HistoryError> {
    let data = serde_json::to_vec(record).map_err(|error| {
        HistoryError::Storage(BackendError::invalid("record", error.to_string()))
    })?;
    let now = crate::now_ms();
    let mut event = Event::new(Event::generate_id(now), source, record.event_type());
    // An instance an event started names it as its cause (lineage).
    if let Record::Started { input, .. } = record
        && let Some(trigger) = input.get(0).and_then(Value::as_object)
        && let Some(Value::String(id)) = trigger.get("id")
    {
        let correlation = match trigger.get("correlationid") {
            Some(Value::String(correlation)) => correlation,
            _ => id,
        };
        event.correlationid = Some(correlation.clone());
        event.causationid = Some(id.clone());
    }
    event.data = Some(data.into());
    event.datacontenttype = Some("application/json".to_owned());
    Ok(EventInput {
        event,
        partition: None,
    })
}

fn decode(event: &Event) -> Result<Record, HistoryError> {
    let data = event.data.as_deref().unwrap_or_default();
    serde_json::from_slice(data).map_err(|error| {
        HistoryError::Storage(BackendError::invalid(
            "record",
            format!("history record {} does not read: {error}", event.id),
        ))
    })
}
