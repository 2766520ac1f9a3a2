//! The interpreter: runs one instance of a definition, task by task, with
//! the DSL's data flow (`if`, `input.from`, the task, `output.as`,
//! `export.as`, `then`), replaying what its history holds ([`crate::history`])
//! and recording what it does.
//!
//! Cancellation and suspension reach a run at its checkpoints (before each
//! task, and while it waits): a cancel raises [`WorkflowError::cancelled`]
//! in the task, which unwinds through `try`s whose `catch` takes it (their
//! `catch.do` runs: compensation, undisturbed) and ends the instance
//! `cancelled`; a suspend unwinds the run at once, and a resume replays it
//! from the history to where it was.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use herald_backend::{Backend, Error as BackendError};
use herald_types::{EventInput, TopicName};
use rand::Rng as _;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::dsl::{
    Backoff, Call, CallOutput, Catch, Endpoint, ErrorRef, EventConsumption, FlowDirective,
    HttpCall, ListenRead, OpenApiCall, RetryPolicy, RetryRef, Set, Task, TaskKind, TaskList,
    TimeoutRef, join_paths,
};
use crate::error::{CANCELLED, WorkflowError};
use crate::eval::{Compiled, Scope};
use crate::history::{Control, HistoryError, Journal, Mark, Outcome, Record};
use crate::now_ms;

pub(crate) mod herald;
pub use herald::is_builtin;

/// Why a run stopped short of an end.
#[derive(Debug)]
pub enum Fault {
    /// A task raised an error nothing caught.
    Error(WorkflowError),
    /// The instance was suspended: the run stops; a resume replays it.
    Suspended,
    /// The run waits on a timer due at this time (ms since the Unix epoch)
    /// and nothing else: it stops, its history written, and the engine
    /// replays it when the timer is due (so a waiting instance costs no
    /// task and no memory of its own meanwhile).
    Parked(i64),
    /// The history could not be written.
    History(HistoryError),
}

impl From<WorkflowError> for Fault {
    fn from(error: WorkflowError) -> Self {
        Self::Error(error)
    }
}

impl From<HistoryError> for Fault {
    fn from(error: HistoryError) -> Self {
        Self::History(error)
    }
}

type Step<'a, T> = Pin<Box<dyn Future<Output = Result<T, Fault>> + Send + 'a>>;

/// What a run needs from the engine around it.
#[derive(Debug, Clone)]
pub struct Env {
    /// Storage: topics to emit to and listen on.
    pub backend: Arc<dyn Backend>,
    /// The outbound HTTP client of `call: http` (the webhooks' one: SSRF
    /// guard, no redirects).
    pub http: Option<herald_webhooks::Sender>,
    /// How long one HTTP call may take, answer included.
    pub http_timeout: Duration,
    /// Secrets by name (`$secrets` shows those `use.secrets` lists).
    pub secrets: Arc<HashMap<String, String>>,
    /// The job service `call: herald.job` submits to (none: it raises a
    /// runtime error).
    pub jobs: Option<herald_jobs::Handle>,
    /// The OpenAPI documents `call: openapi` loaded lately, by URL.
    pub documents: Arc<crate::openapi::Documents>,
    /// The engine's metrics.
    pub metrics: Arc<crate::WorkflowMetrics>,
}

/// How a task list ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListEnd {
    /// Its last task ran.
    Done,
    /// A task said `then: exit`: the composite task around it ends.
    Exited,
    /// A task said `then: end`: the workflow ends.
    Ended,
}

/// Where a task says to go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flow {
    Continue,
    Exit,
    End,
    Goto(String),
}

impl Flow {
    fn of(directive: Option<&FlowDirective>) -> Self {
        match directive {
            None | Some(FlowDirective::Continue) => Self::Continue,
            Some(FlowDirective::Exit) => Self::Exit,
            Some(FlowDirective::End) => Self::End,
            Some(FlowDirective::Goto(name)) => Self::Goto(name.clone()),
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Continue => "continue".to_owned(),
            Self::Exit => "exit".to_owned(),
            Self::End => "end".to_owned(),
            Self::Goto(name) => name.clone(),
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "continue" => Self::Continue,
            "exit" => Self::Exit,
            "end" => Self::End,
            name => Self::Goto(name.to_owned()),
        }
    }
}

/// The variables in scope and whether compensation runs.
#[derive(Debug, Clone, Default)]
struct Frame {
    scope: Scope,
    /// Inside a `catch.do` taking a cancel: cancel checkpoints pass.
    compensating: bool,
    /// The key of the task run around (empty at the top): a task's key
    /// counts its runs within its parent's run, so keys stay the same on
    /// a replay whatever the history let it skip.
    parent: String,
    /// Whether a long timer here may park the run: not inside a `fork`
    /// (other branches run) nor under a task's `timeout` (it races).
    parkable: bool,
}

/// Timers due later than this park the run instead of holding a task.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// One run of one instance.
pub struct Run {
    id: String,
    compiled: Arc<Compiled>,
    env: Env,
    journal: tokio::sync::Mutex<Journal>,
    occurrences: Mutex<HashMap<(String, String), u32>>,
    context: Mutex<Value>,
    control: Arc<watch::Sender<Control>>,
    blocked: watch::Sender<usize>,
    workflow: Value,
    runtime: Value,
    secrets: Value,
    /// When this run last began to publish an event (ms since the Unix
    /// epoch): a `listen` after it also sees events stored since then, so
    /// an answer to what it emitted, stored before the listen began, is
    /// not missed.
    emitted_at: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Run")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Run {
    /// A run of instance `id` started at `started_at` with `input`, over
    /// its `journal`. `blocked` counts the branches waiting (0: running).
    #[must_use]
    pub fn new(
        id: String,
        compiled: Arc<Compiled>,
        env: Env,
        journal: Journal,
        control: Arc<watch::Sender<Control>>,
        blocked: watch::Sender<usize>,
        (input, started_at): (Value, i64),
    ) -> Self {
        let workflow = json!({
            "id": id,
            "definition": compiled.definition.source,
            "input": input,
            "startedAt": started_at_of(started_at),
        });
        let listed: Vec<&String> = compiled
            .definition
            .workflow
            .use_
            .as_ref()
            .and_then(|used| used.secrets.as_ref())
            .map(|names| names.iter().collect())
            .unwrap_or_default();
        let secrets: Map<String, Value> = listed
            .into_iter()
            .filter_map(|name| {
                env.secrets
                    .get(name)
                    .map(|value| (name.clone(), Value::String(value.clone())))
            })
            .collect();
        Self {
            id,
            compiled,
            env,
            journal: tokio::sync::Mutex::new(journal),
            occurrences: Mutex::new(HashMap::new()),
            context: Mutex::new(Value::Object(Map::new())),
            control,
            blocked,
            workflow,
            runtime: json!({"name": "herald", "version": env!("CARGO_PKG_VERSION")}),
            secrets: Value::Object(secrets),
            emitted_at: std::sync::atomic::AtomicI64::new(i64::MAX),
        }
    }

    /// The definition's `use`, when it has one.
    fn used(&self) -> Option<&crate::dsl::Use> {
        self.compiled.definition.workflow.use_.as_ref()
    }

    /// Gives the journal back (the run is over).
    pub fn into_journal(self) -> Journal {
        self.journal.into_inner()
    }

    /// Runs the workflow: `input.from`, the tasks, `output.as`, within the
    /// workflow's `timeout`. The end itself is the caller's to record.
    pub async fn run(&self) -> Result<Value, Fault> {
        let workflow = &self.compiled.definition.workflow;
        let raw = self.workflow["input"].clone();
        let mut frame = self.base_frame(&raw, None);
        // The workflow's own timeout races the whole run: no parking.
        frame.parkable = workflow.timeout.is_none();
        let input = match workflow
            .input
            .as_ref()
            .and_then(|input| input.from.as_ref())
        {
            Some(from) => self
                .compiled
                .transform(from, "input.from", &raw, &frame.scope)?,
            None => raw,
        };
        let span = herald_trace::hop!(
            "workflow.run",
            self.traceparent().as_deref(),
            herald.workflow.instance = %self.id,
        );
        let body = async {
            let (output, _) = self
                .list(&workflow.do_, "do", "/do", input.clone(), &frame)
                .await?;
            Ok::<_, Fault>(output)
        }
        .instrument(span);
        let output = match &workflow.timeout {
            Some(timeout) => {
                let after = self.timeout_of(timeout);
                self.within("/#timeout", after, "the workflow", body)
                    .await?
            }
            None => body.await?,
        };
        match workflow
            .output
            .as_ref()
            .and_then(|output| output.as_.as_ref())
        {
            Some(shape) => {
                let mut frame = self.base_frame(&output, None);
                frame.scope.set("$output", output.clone());
                Ok(self
                    .compiled
                    .transform(shape, "output.as", &output, &frame.scope)?)
            }
            None => Ok(output),
        }
    }

    /// The runtime arguments for an expression.
    fn base_frame(&self, input: &Value, task: Option<&Value>) -> Frame {
        let context = self.context.lock().map_or(Value::Null, |c| c.clone());
        let scope = Scope {
            variables: vec![
                ("$input".to_owned(), input.clone()),
                ("$output".to_owned(), Value::Null),
                ("$context".to_owned(), context),
                ("$task".to_owned(), task.cloned().unwrap_or(Value::Null)),
                ("$workflow".to_owned(), self.workflow.clone()),
                ("$runtime".to_owned(), self.runtime.clone()),
                ("$secrets".to_owned(), self.secrets.clone()),
                ("$authorization".to_owned(), Value::Null),
            ],
        };
        Frame {
            scope,
            compensating: false,
            parent: String::new(),
            parkable: true,
        }
    }

    /// `frame` with the runtime arguments of a task.
    fn task_frame(&self, outer: &Frame, input: &Value, task: &Value) -> Frame {
        let mut frame = outer.clone();
        let context = self.context.lock().map_or(Value::Null, |c| c.clone());
        frame.scope.set("$input", input.clone());
        frame.scope.set("$context", context);
        frame.scope.set("$task", task.clone());
        frame
    }

    fn timeout_of(&self, timeout: &TimeoutRef) -> Duration {
        match timeout {
            TimeoutRef::Inline(timeout) => timeout.after.0,
            TimeoutRef::Named(name) => self
                .used()
                .and_then(|used| used.timeouts.as_ref())
                .and_then(|timeouts| timeouts.get(name))
                .map_or(Duration::MAX, |timeout| timeout.after.0),
        }
    }

    /// The key of the next run of the task at `reference` within the run
    /// of its parent `parent`: `<reference>#<parent's runs>.<run>`, e.g.
    /// `/do/1/loop/do/0/step#0.2` (the third run of `step` in the first
    /// run of `loop`).
    fn key(&self, parent: &str, reference: &str) -> String {
        let mut occurrences = self
            .occurrences
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = occurrences
            .entry((parent.to_owned(), reference.to_owned()))
            .or_insert(0);
        let chain = parent.rsplit_once('#').map_or("", |(_, chain)| chain);
        let key = if chain.is_empty() {
            format!("{reference}#{count}")
        } else {
            format!("{reference}#{chain}.{count}")
        };
        *count += 1;
        key
    }

    /// Stops here if an operator asked to.
    fn checkpoint(&self, frame: &Frame) -> Result<(), Fault> {
        let control = *self.control.borrow();
        if control.cancel && !frame.compensating {
            return Err(Fault::Error(WorkflowError::cancelled()));
        }
        if control.suspended {
            return Err(Fault::Suspended);
        }
        Ok(())
    }

    /// At the boundary of an iteration (or attempt) of the loop run `key`:
    /// folds the history into a snapshot when it grew past half its bound,
    /// the loop marked to resume at `next` from `value`.
    async fn boundary(&self, key: &str, next: usize, value: &Value) -> Result<(), Fault> {
        let mut journal = self.journal.lock().await;
        if !journal.should_compact() {
            return Ok(());
        }
        let context = self.context.lock().map_or(Value::Null, |c| c.clone());
        let counts = self
            .occurrences
            .lock()
            .map(|occurrences| {
                occurrences
                    .iter()
                    .filter(|((parent, _), _)| parent == key)
                    .map(|((_, reference), count)| (reference.clone(), *count))
                    .collect()
            })
            .unwrap_or_default();
        let mark = Mark {
            next,
            value: value.clone(),
            context,
            counts,
        };
        journal.compact(key, mark).await?;
        Ok(())
    }

    /// Where the loop run `key` resumes, if a compaction marked it: its
    /// `$context` and the runs of the tasks under it restored.
    async fn resume_at(&self, key: &str) -> Option<Mark> {
        let mark = self.journal.lock().await.mark(key).cloned()?;
        if let Ok(mut context) = self.context.lock() {
            context.clone_from(&mark.context);
        }
        if let Ok(mut occurrences) = self.occurrences.lock() {
            for (reference, count) in &mark.counts {
                occurrences.insert((key.to_owned(), reference.clone()), *count);
            }
        }
        Some(mark)
    }

    async fn push(&self, record: Record) {
        self.journal.lock().await.push(record);
    }

    async fn flush(&self) -> Result<(), Fault> {
        let mut journal = self.journal.lock().await;
        let result = journal.flush().await;
        // Operators' records read while writing: the run sees them now.
        let recorded = journal.control();
        self.control
            .send_if_modified(|control| control.merge(recorded));
        Ok(result?)
    }

    /// Waits for `work` with the history written and the instance shown
    /// waiting; a cancel or suspend ends the wait.
    async fn block<T>(
        &self,
        frame: &Frame,
        work: impl Future<Output = Result<T, Fault>>,
    ) -> Result<T, Fault> {
        let mut control = self.control.subscribe();
        self.flush().await?;
        self.checkpoint(frame)?;
        self.blocked.send_modify(|count| *count += 1);
        let _unblock = Unblock(&self.blocked);
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => return result,
                changed = control.changed() => {
                    if changed.is_err() {
                        // Not while the run holds the sender.
                        std::future::pending::<()>().await;
                    }
                    self.checkpoint(frame)?;
                }
            }
        }
    }

    /// A durable timer: fires `delay` after it was first set (a replay keeps
    /// the due time it recorded; a late one fires at once).
    async fn timer(&self, key: &str, delay: Duration, frame: &Frame) -> Result<(), Fault> {
        let due = self.due(key, delay).await;
        let far = i64::try_from(PARK_AFTER.as_millis()).unwrap_or(i64::MAX);
        if frame.parkable && due.saturating_sub(now_ms()) > far {
            self.flush().await?;
            self.checkpoint(frame)?;
            return Err(Fault::Parked(due));
        }
        self.block(frame, async {
            sleep_until_ms(due).await;
            Ok(())
        })
        .await
    }

    /// The due time of the timer `key`, set now if it never was.
    async fn due(&self, key: &str, delay: Duration) -> i64 {
        let mut journal = self.journal.lock().await;
        if let Some(due) = journal.timer(key) {
            return due;
        }
        let now = now_ms();
        let due = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        journal.push(Record::TimerSet {
            key: key.to_owned(),
            due,
            at: now,
        });
        due
    }

    /// `work` within `after` of its first start: `…/errors/timeout` past it.
    async fn within<T>(
        &self,
        key: &str,
        after: Duration,
        what: &str,
        work: impl Future<Output = Result<T, Fault>>,
    ) -> Result<T, Fault> {
        let due = self.due(key, after).await;
        tokio::select! {
            result = work => result,
            () = sleep_until_ms(due) => Err(Fault::Error(WorkflowError::timeout(format!(
                "{what} did not end within {} ms", after.as_millis()
            )))),
        }
    }

    /// Runs a task list from its first task, following `then`s.
    fn list<'a>(
        &'a self,
        list: &'a TaskList,
        path: &'a str,
        reference: &'a str,
        input: Value,
        frame: &'a Frame,
    ) -> Step<'a, (Value, ListEnd)> {
        Box::pin(async move {
            let mut index = 0;
            let mut value = input;
            while let Some((name, task)) = list.0.get(index) {
                let (output, flow) = self
                    .task(
                        name,
                        task,
                        &format!("{path}[{index}].{name}"),
                        &format!("{reference}/{index}/{name}"),
                        value,
                        frame,
                    )
                    .await?;
                value = output;
                match flow {
                    Flow::Continue => index += 1,
                    Flow::Exit => return Ok((value, ListEnd::Exited)),
                    Flow::End => return Ok((value, ListEnd::Ended)),
                    Flow::Goto(target) => {
                        index = list
                            .0
                            .iter()
                            .position(|(candidate, _)| *candidate == target)
                            .ok_or_else(|| {
                                WorkflowError::runtime(format!("no task {target:?} to go to"))
                            })?;
                    }
                }
            }
            Ok((value, ListEnd::Done))
        })
    }

    /// Runs one task: memoised if the history has it, else `if`,
    /// `input.from`, the task within its `timeout`, `output.as`,
    /// `export.as`, recorded.
    fn task<'a>(
        &'a self,
        name: &'a str,
        task: &'a Task,
        path: &'a str,
        reference: &'a str,
        raw: Value,
        outer: &'a Frame,
    ) -> Step<'a, (Value, Flow)> {
        Box::pin(async move {
            let key = self.key(&outer.parent, reference);
            if let Some(done) = self.journal.lock().await.completed(&key).cloned() {
                if let Some(context) = done.context
                    && let Ok(mut slot) = self.context.lock()
                {
                    *slot = context;
                }
                return Ok((done.output, Flow::parse(&done.flow)));
            }
            // A task this run began before (the history says so) is where
            // the instance was: a cancel or suspend reaches it inside, at
            // its own wait, so the `try`s around that point catch it. A task
            // not begun yet stops here.
            let begun = self.journal.lock().await.started_at(&key);
            if begun.is_none() {
                self.checkpoint(outer)?;
            }
            // A replayed task keeps the start it recorded.
            let started_at = begun.unwrap_or_else(now_ms);
            let descriptor = json!({
                "name": name, "reference": reference, "input": raw,
                "startedAt": started_at_of(started_at),
            });
            let mut frame = self.task_frame(outer, &raw, &descriptor);
            frame.parent.clone_from(&key);
            let common = &task.common;
            // `if` false: the task is skipped, its raw input passed on.
            if common.if_.is_some()
                && !self
                    .compiled
                    .holds(&join_paths(path, "if"), &raw, &frame.scope)
                    .map_err(|error| Fault::Error(error.at(reference)))?
            {
                return Ok((raw, Flow::Continue));
            }
            let context_before = self.context.lock().map_or(Value::Null, |c| c.clone());
            // A child of the run's span, or of the task this one is in.
            let span = herald_trace::hop!(
                "workflow.task",
                None,
                otel.name = %format!("task {name}"),
                herald.workflow.task = reference,
                otel.status_code = tracing::field::Empty,
            );
            let result = async {
                let input = match common.input.as_ref().and_then(|input| input.from.as_ref()) {
                    Some(from) => self.compiled.transform(
                        from,
                        &join_paths(path, "input.from"),
                        &raw,
                        &frame.scope,
                    )?,
                    None => raw.clone(),
                };
                let mut frame = frame.clone();
                frame.scope.set("$input", input.clone());
                {
                    let mut journal = self.journal.lock().await;
                    if !journal.was_started(&key) {
                        journal.push(Record::TaskStarted {
                            key: key.clone(),
                            name: name.to_owned(),
                            input: input.clone(),
                            attempt: 1,
                            at: started_at,
                        });
                    }
                }
                if common.timeout.is_some() {
                    frame.parkable = false;
                }
                let work = self.kind(name, task, path, reference, &key, input.clone(), &frame);
                let (output, flow) = match &common.timeout {
                    Some(timeout) => {
                        let after = self.timeout_of(timeout);
                        self.within(
                            &format!("{key}#timeout"),
                            after,
                            &format!("task {reference}"),
                            work,
                        )
                        .await?
                    }
                    None => work.await?,
                };
                let output = match common
                    .output
                    .as_ref()
                    .and_then(|output| output.as_.as_ref())
                {
                    Some(shape) => self.compiled.transform(
                        shape,
                        &join_paths(path, "output.as"),
                        &output,
                        &frame.scope,
                    )?,
                    None => output,
                };
                if let Some(shape) = common
                    .export
                    .as_ref()
                    .and_then(|export| export.as_.as_ref())
                {
                    let mut scope = frame.scope.clone();
                    scope.set("$output", output.clone());
                    let context = self.compiled.transform(
                        shape,
                        &join_paths(path, "export.as"),
                        &output,
                        &scope,
                    )?;
                    if let Ok(mut slot) = self.context.lock() {
                        *slot = context;
                    }
                }
                let flow = match flow {
                    Flow::Continue => Flow::of(common.then.as_ref()),
                    chosen => chosen,
                };
                Ok::<_, Fault>((output, flow))
            }
            .instrument(span.clone())
            .await;
            if let Err(Fault::Error(_)) = &result {
                span.record("otel.status_code", "ERROR");
            }
            let now = now_ms();
            if let Ok(_) | Err(Fault::Error(_)) = &result {
                self.env
                    .metrics
                    .task(&task.kind, result.is_err(), now - started_at);
            }
            match result {
                Ok((output, flow)) => {
                    let context = self.context.lock().map_or(Value::Null, |c| c.clone());
                    self.push(Record::TaskCompleted {
                        key,
                        name: name.to_owned(),
                        output: output.clone(),
                        context: (context != context_before).then_some(context),
                        flow: flow.text(),
                        started_at,
                        at: now,
                    })
                    .await;
                    Ok((output, flow))
                }
                Err(Fault::Error(error)) => {
                    let error = error.at(reference);
                    self.push(Record::TaskFaulted {
                        key,
                        name: name.to_owned(),
                        error: error.clone(),
                        started_at,
                        at: now,
                    })
                    .await;
                    Err(Fault::Error(error))
                }
                Err(other) => Err(other),
            }
        })
    }

    /// What the task itself does, on its transformed input.
    #[allow(clippy::too_many_arguments)]
    fn kind<'a>(
        &'a self,
        name: &'a str,
        task: &'a Task,
        path: &'a str,
        reference: &'a str,
        key: &'a str,
        input: Value,
        frame: &'a Frame,
    ) -> Step<'a, (Value, Flow)> {
        Box::pin(async move {
            let at = |field: &str| join_paths(path, field);
            let scope = &frame.scope;
            match &task.kind {
                TaskKind::Set(Set::Map(map)) => Ok((
                    self.compiled.template(
                        &Value::Object(map.clone()),
                        &at("set"),
                        &input,
                        scope,
                    )?,
                    Flow::Continue,
                )),
                TaskKind::Set(Set::Expr(_)) => Ok((
                    self.compiled.eval(&at("set"), &input, scope)?,
                    Flow::Continue,
                )),
                TaskKind::Do(list) => {
                    let (output, end) = self
                        .list(list, &at("do"), &format!("{reference}/do"), input, frame)
                        .await?;
                    Ok((output, ended(end)))
                }
                TaskKind::Switch(cases) => {
                    for (index, (case_name, case)) in cases.iter().enumerate() {
                        let matched = match &case.when {
                            Some(_) => self.compiled.holds(
                                &at(&format!("switch[{index}].{case_name}.when")),
                                &input,
                                scope,
                            )?,
                            None => true,
                        };
                        if matched {
                            return Ok((input, Flow::of(Some(&case.then))));
                        }
                    }
                    Ok((input, Flow::Continue))
                }
                TaskKind::Raise(raise) => Err(Fault::Error(self.raised(
                    &raise.error,
                    path,
                    reference,
                    &input,
                    scope,
                )?)),
                TaskKind::Wait(duration) => {
                    self.timer(&format!("{key}#wait"), duration.0, frame)
                        .await?;
                    Ok((input, Flow::Continue))
                }
                TaskKind::For(looping) => {
                    let items = match self.compiled.eval(&at("for.in"), &input, scope)? {
                        Value::Array(items) => items,
                        Value::Null => Vec::new(),
                        Value::Object(members) => members.into_iter().map(|(_, v)| v).collect(),
                        other => {
                            return Err(Fault::Error(WorkflowError::expression(format!(
                                "{}: for.in gave {other}, not an array",
                                at("for.in")
                            ))));
                        }
                    };
                    let each = looping.for_.each.as_deref().unwrap_or("item");
                    let index_name = looping.for_.at.as_deref().unwrap_or("index");
                    let (start, mut value) = match self.resume_at(key).await {
                        Some(mark) => (mark.next, mark.value),
                        None => (0, input),
                    };
                    for (index, item) in items.into_iter().enumerate().skip(start) {
                        let mut inner = frame.clone();
                        inner.scope = inner
                            .scope
                            .with(each, item)
                            .with(index_name, Value::from(index));
                        if looping.while_.is_some()
                            && !self.compiled.holds(&at("while"), &value, &inner.scope)?
                        {
                            break;
                        }
                        let (output, end) = self
                            .list(
                                &looping.do_,
                                &at("do"),
                                &format!("{reference}/do"),
                                value,
                                &inner,
                            )
                            .await?;
                        value = output;
                        match end {
                            ListEnd::Done => self.boundary(key, index + 1, &value).await?,
                            ListEnd::Exited => break,
                            ListEnd::Ended => return Ok((value, Flow::End)),
                        }
                    }
                    Ok((value, Flow::Continue))
                }
                TaskKind::Fork(fork) => self.fork(fork, path, reference, input, frame).await,
                TaskKind::Try(tried) => {
                    self.try_(tried, (name, path, reference, key), input, frame)
                        .await
                }
                TaskKind::Emit(_) => {
                    self.emit(task, path, key, &input, scope).await?;
                    Ok((input, Flow::Continue))
                }
                TaskKind::Listen(listen) => {
                    let events = self
                        .listen(&listen.listen.to, &at("listen.to"), key, &input, frame)
                        .await?;
                    let read = listen.listen.read.unwrap_or(ListenRead::Data);
                    let output = events
                        .into_iter()
                        .map(|envelope| match read {
                            ListenRead::Envelope => envelope,
                            ListenRead::Data | ListenRead::Raw => {
                                envelope.get("data").cloned().unwrap_or(Value::Null)
                            }
                        })
                        .collect();
                    Ok((Value::Array(output), Flow::Continue))
                }
                TaskKind::Call(Call::Http(http)) => {
                    let output = self
                        .call_once(key, async {
                            let outgoing = self.http_request(http, path, &input, scope)?;
                            self.send(outgoing, key).await
                        })
                        .await?;
                    Ok((output, Flow::Continue))
                }
                TaskKind::Call(Call::OpenApi(call)) => {
                    let output = self
                        .call_once(key, async {
                            match self.openapi_request(call, path, &input, scope).await? {
                                Ok(outgoing) => self.send(outgoing, key).await,
                                Err(error) => Ok(Outcome::Err(error)),
                            }
                        })
                        .await?;
                    Ok((output, Flow::Continue))
                }
                TaskKind::Call(Call::Function {
                    name: function,
                    with,
                }) => {
                    let arguments = self.compiled.template(
                        &Value::Object(with.clone()),
                        &at("with"),
                        &input,
                        scope,
                    )?;
                    let callee = self
                        .used()
                        .and_then(|used| used.functions.as_ref())
                        .and_then(|functions| functions.get(function));
                    let Some(callee) = callee else {
                        if herald::is_builtin(function) {
                            let Value::Object(arguments) = arguments else {
                                return Err(Fault::Error(WorkflowError::validation(format!(
                                    "{function}'s arguments are a map"
                                ))));
                            };
                            let output = self.herald(function, key, arguments, frame).await?;
                            return Ok((output, Flow::Continue));
                        }
                        return Err(Fault::Error(WorkflowError::runtime(format!(
                            "no function {function:?}"
                        ))));
                    };
                    let (output, _) = self
                        .task(
                            function,
                            callee,
                            &format!("use.functions.{function}"),
                            &format!("{reference}/call/{function}"),
                            arguments,
                            frame,
                        )
                        .await?;
                    let _ = name;
                    Ok((output, Flow::Continue))
                }
            }
        })
    }

    /// The error a `raise` raises.
    fn raised(
        &self,
        error: &ErrorRef,
        path: &str,
        reference: &str,
        input: &Value,
        scope: &Scope,
    ) -> Result<WorkflowError, WorkflowError> {
        let (definition, inline) = match error {
            ErrorRef::Inline(definition) => (definition.clone(), true),
            ErrorRef::Named(name) => (
                self.compiled
                    .definition
                    .workflow
                    .use_
                    .as_ref()
                    .and_then(|used| used.errors.as_ref())
                    .and_then(|errors| errors.get(name))
                    .cloned()
                    .ok_or_else(|| WorkflowError::runtime(format!("no error {name:?}")))?,
                false,
            ),
        };
        let field = |value: Value, name: &str| -> Result<Value, WorkflowError> {
            if inline {
                self.compiled.template(
                    &value,
                    &join_paths(path, &format!("raise.error.{name}")),
                    input,
                    scope,
                )
            } else {
                Ok(value)
            }
        };
        let text = |value: Value| match value {
            Value::Null => None,
            Value::String(text) => Some(text),
            other => Some(other.to_string()),
        };
        let status = field(definition.status.clone(), "status")?;
        let status = status
            .as_u64()
            .or_else(|| status.as_str().and_then(|text| text.parse().ok()))
            .and_then(|status| u16::try_from(status).ok())
            .ok_or_else(|| {
                WorkflowError::validation(format!(
                    "an error's status must be a number, not {status}"
                ))
            })?;
        Ok(WorkflowError {
            type_: definition.type_.clone(),
            status,
            title: text(field(
                definition.title.clone().map_or(Value::Null, Value::String),
                "title",
            )?),
            detail: text(field(
                definition.detail.clone().map_or(Value::Null, Value::String),
                "detail",
            )?),
            instance: Some(
                text(field(
                    definition
                        .instance
                        .clone()
                        .map_or(Value::Null, Value::String),
                    "instance",
                )?)
                .unwrap_or_else(|| reference.to_owned()),
            ),
        })
    }

    /// `fork`: the branches at once; all outputs in order, or the first to
    /// complete with `compete`.
    async fn fork(
        &self,
        fork: &crate::dsl::Fork,
        path: &str,
        reference: &str,
        input: Value,
        frame: &Frame,
    ) -> Result<(Value, Flow), Fault> {
        let branches_path = join_paths(path, "fork.branches");
        let mut frame = frame.clone();
        frame.parkable = false;
        let frame = &frame;
        let branches: Vec<_> = fork
            .branches
            .0
            .iter()
            .enumerate()
            .map(|(index, (name, task))| {
                let path = format!("{branches_path}[{index}].{name}");
                let reference = format!("{reference}/fork/branches/{index}/{name}");
                let input = input.clone();
                async move {
                    self.task(name, task, &path, &reference, input, frame)
                        .await
                        .map(|(output, _)| output)
                }
            })
            .map(Box::pin)
            .collect();
        if fork.compete {
            let (output, _) = futures::future::select_ok(branches).await?;
            Ok((output, Flow::Continue))
        } else {
            let outputs = futures::future::try_join_all(branches).await?;
            Ok((Value::Array(outputs), Flow::Continue))
        }
    }

    /// `try`/`catch`, with retries and compensation.
    async fn try_(
        &self,
        tried: &crate::dsl::Try,
        (name, path, reference, key): (&str, &str, &str, &str),
        input: Value,
        frame: &Frame,
    ) -> Result<(Value, Flow), Fault> {
        let catch = &tried.catch;
        let caught_name = catch.as_.as_deref().unwrap_or("error");
        // The first attempt began when the `try` did (recorded: a replay
        // keeps the duration limit where it was).
        let mut first = self
            .journal
            .lock()
            .await
            .started_at(key)
            .unwrap_or_else(now_ms);
        let mut attempt: u32 = 1;
        if let Some(mark) = self.resume_at(key).await {
            attempt = u32::try_from(mark.next).unwrap_or(u32::MAX);
            first = mark.value.as_i64().unwrap_or(first);
        }
        loop {
            let result = self
                .list(
                    &tried.try_,
                    &join_paths(path, "try"),
                    &format!("{reference}/try"),
                    input.clone(),
                    frame,
                )
                .await;
            let error = match result {
                Ok((output, end)) => return Ok((output, ended(end))),
                Err(Fault::Error(error)) => error,
                Err(other) => return Err(other),
            };
            let scope = frame.scope.with(caught_name, error.to_value());
            if !self.catches(catch, path, &error, &scope)? {
                return Err(Fault::Error(error));
            }
            let cancelled = error.type_ == CANCELLED;
            let policy = self.retry_policy(catch);
            if !cancelled
                && let Some(policy) = &policy
                && let Some(delay) =
                    self.retry_delay(policy, path, &error, &scope, attempt, first)?
            {
                attempt += 1;
                self.env.metrics.retry();
                let due = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(0));
                self.push(Record::TaskRetried {
                    key: key.to_owned(),
                    name: name.to_owned(),
                    attempt,
                    due,
                    at: now_ms(),
                })
                .await;
                self.timer(&format!("{key}#retry{attempt}"), delay, frame)
                    .await?;
                // The attempts before are done: what they recorded may go.
                self.boundary(key, attempt as usize, &json!(first)).await?;
                continue;
            }
            let output = match &catch.do_ {
                Some(list) => {
                    let mut inner = frame.clone();
                    inner.scope = scope;
                    inner.compensating |= cancelled;
                    let (output, end) = self
                        .list(
                            list,
                            &join_paths(path, "catch.do"),
                            &format!("{reference}/catch/do"),
                            input.clone(),
                            &inner,
                        )
                        .await?;
                    if cancelled {
                        return Err(Fault::Error(error));
                    }
                    return Ok((output, ended(end)));
                }
                // Retries ran out and nothing takes over: the error goes on.
                None if policy.is_some() => return Err(Fault::Error(error)),
                None => input.clone(),
            };
            if cancelled {
                return Err(Fault::Error(error));
            }
            return Ok((output, Flow::Continue));
        }
    }

    /// Whether `catch` takes `error`.
    fn catches(
        &self,
        catch: &Catch,
        path: &str,
        error: &WorkflowError,
        scope: &Scope,
    ) -> Result<bool, Fault> {
        let value = error.to_value();
        if let Some(with) = catch
            .errors
            .as_ref()
            .and_then(|errors| errors.with.as_ref())
        {
            for (field, wanted) in with {
                let actual = value.get(field).unwrap_or(&Value::Null);
                let matches = match (wanted, actual) {
                    (Value::String(wanted), Value::Number(actual)) => wanted == &actual.to_string(),
                    (Value::Number(wanted), Value::String(actual)) => actual == &wanted.to_string(),
                    _ => wanted == actual,
                };
                if !matches {
                    return Ok(false);
                }
            }
        }
        if catch.when.is_some()
            && !self
                .compiled
                .holds(&join_paths(path, "catch.when"), &value, scope)?
        {
            return Ok(false);
        }
        if catch.except_when.is_some()
            && self
                .compiled
                .holds(&join_paths(path, "catch.exceptWhen"), &value, scope)?
        {
            return Ok(false);
        }
        Ok(true)
    }

    fn retry_policy(&self, catch: &Catch) -> Option<(RetryPolicy, String)> {
        match catch.retry.as_ref()? {
            RetryRef::Inline(policy) => Some((policy.clone(), String::new())),
            RetryRef::Named(name) => self
                .used()
                .and_then(|used| used.retries.as_ref())
                .and_then(|retries| retries.get(name))
                .map(|policy| (policy.clone(), format!("use.retries.{name}"))),
        }
    }

    /// The delay before attempt `attempt + 1`, or `None` when the policy
    /// says not to retry. Like the DSL's Java runtime: constant `delay`,
    /// linear `delay × n`, exponential `delay × 2ⁿ`, plus jitter.
    fn retry_delay(
        &self,
        (policy, named_path): &(RetryPolicy, String),
        path: &str,
        error: &WorkflowError,
        scope: &Scope,
        attempt: u32,
        first: i64,
    ) -> Result<Option<Duration>, Fault> {
        let policy_path = if named_path.is_empty() {
            join_paths(path, "catch.retry")
        } else {
            named_path.clone()
        };
        let value = error.to_value();
        if policy.when.is_some()
            && !self
                .compiled
                .holds(&join_paths(&policy_path, "when"), &value, scope)?
        {
            return Ok(None);
        }
        if policy.except_when.is_some()
            && self
                .compiled
                .holds(&join_paths(&policy_path, "exceptWhen"), &value, scope)?
        {
            return Ok(None);
        }
        let limit = policy.limit.as_ref();
        if let Some(count) = limit
            .and_then(|limit| limit.attempt.as_ref())
            .and_then(|attempt| attempt.count)
            && attempt >= count
        {
            return Ok(None);
        }
        if let Some(total) = limit.and_then(|limit| limit.duration)
            && u128::try_from(now_ms().saturating_sub(first)).unwrap_or(0) >= total.0.as_millis()
        {
            return Ok(None);
        }
        let base = policy.delay.map_or(Duration::ZERO, |delay| delay.0);
        let delay = match policy.backoff {
            None | Some(Backoff::Constant(_)) => base,
            Some(Backoff::Linear(_)) => base.saturating_mul(attempt),
            Some(Backoff::Exponential(_)) => base.saturating_mul(1u32 << attempt.min(31)),
        };
        let jitter = policy.jitter.as_ref().map_or(Duration::ZERO, |jitter| {
            let (from, to) = (jitter.from.0.as_millis(), jitter.to.0.as_millis());
            let spread = to.saturating_sub(from);
            let extra = if spread == 0 {
                0
            } else {
                rand::rng().random_range(0..=spread)
            };
            Duration::from_millis(u64::try_from(from + extra).unwrap_or(u64::MAX))
        });
        Ok(Some(delay.saturating_add(jitter)))
    }

    /// `emit`: publishes the event (its `topic` attribute names the topic),
    /// once: a replay takes the recorded position, and a repeat after a
    /// crash is deduplicated by the event's id, derived from the instance.
    async fn emit(
        &self,
        task: &Task,
        path: &str,
        key: &str,
        input: &Value,
        scope: &Scope,
    ) -> Result<(), Fault> {
        let effect = format!("{key}#emit");
        if let Some(outcome) = self.journal.lock().await.effect(&effect).cloned() {
            return replayed(outcome).map(|_| ());
        }
        let TaskKind::Emit(emit) = &task.kind else {
            return Ok(());
        };
        let attributes = self.compiled.template(
            &Value::Object(emit.event.with.clone()),
            &join_paths(path, "emit.event.with"),
            input,
            scope,
        )?;
        let mut attributes = match attributes {
            Value::Object(attributes) => attributes,
            _ => Map::new(),
        };
        let Some(Value::String(topic)) = attributes.remove("topic") else {
            return Err(Fault::Error(WorkflowError::validation(
                "an emitted event names its topic in `topic`",
            )));
        };
        let topic = TopicName::try_from(topic.as_str())
            .map_err(|error| WorkflowError::validation(error.to_string()))?;
        attributes.insert("specversion".to_owned(), json!("1.0"));
        attributes
            .entry("id")
            .or_insert_with(|| json!(format!("{}.{key}", self.id)));
        let correlation = self.correlation();
        attributes
            .entry("correlationid")
            .or_insert_with(|| json!(correlation));
        attributes
            .entry("causationid")
            .or_insert_with(|| json!(self.id));
        if let Some(context) = herald_trace::traceparent(&tracing::Span::current()) {
            attributes
                .entry("traceparent")
                .or_insert_with(|| json!(context));
        }
        let body = serde_json::to_vec(&Value::Object(attributes))
            .map_err(|error| WorkflowError::runtime(error.to_string()))?;
        let sending = now_ms();
        let event = EventInput::from_json(&body, sending)
            .map_err(|error| WorkflowError::validation(format!("the emitted event: {error}")))?;
        self.emitted_at
            .fetch_min(sending, std::sync::atomic::Ordering::Relaxed);
        let outcome = match self.env.backend.publish(&topic, vec![event]).await {
            Ok(results) => {
                let result = results.first();
                Outcome::Ok(json!({
                    "topic": topic.as_ref(),
                    "partition": result.map(|r| r.partition),
                    "offset": result.map(|r| r.offset),
                    "id": result.map(|r| r.id.clone()),
                }))
            }
            Err(
                error @ (BackendError::TopicNotFound { .. }
                | BackendError::InvalidArgument { .. }
                | BackendError::PayloadTooLarge { .. }),
            ) => Outcome::Err(WorkflowError::communication(
                400,
                format!("emit to {topic}: {error}"),
            )),
            Err(error) => return Err(Fault::History(HistoryError::Storage(error))),
        };
        let mut journal = self.journal.lock().await;
        journal.push(Record::Effect {
            key: effect,
            outcome: outcome.clone(),
            at: now_ms(),
        });
        drop(journal);
        replayed(outcome).map(|_| ())
    }

    /// The trace the instance continues: the triggering event's, when an
    /// event started it.
    fn traceparent(&self) -> Option<String> {
        self.workflow["input"]
            .get(0)
            .and_then(|event| event.get("traceparent"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The correlation id of what the instance emits: the triggering event's
    /// when an event started it, else the instance's id.
    pub(crate) fn correlation(&self) -> String {
        self.workflow["input"]
            .get(0)
            .and_then(|event| event.get("correlationid").or_else(|| event.get("id")))
            .and_then(Value::as_str)
            .map_or_else(|| self.id.clone(), str::to_owned)
    }

    /// A call's answer, once per key: recorded; a repeat after a crash
    /// carries the same `Idempotency-Key`.
    async fn call_once(
        &self,
        key: &str,
        call: impl Future<Output = Result<Outcome, Fault>>,
    ) -> Result<Value, Fault> {
        let effect = format!("{key}#http");
        if let Some(outcome) = self.journal.lock().await.effect(&effect).cloned() {
            return replayed(outcome);
        }
        let outcome = call.await?;
        self.journal.lock().await.push(Record::Effect {
            key: effect,
            outcome: outcome.clone(),
            at: now_ms(),
        });
        // Recorded before the next task runs.
        self.flush().await?;
        replayed(outcome)
    }

    /// `call: http`'s request.
    fn http_request(
        &self,
        http: &HttpCall,
        path: &str,
        input: &Value,
        scope: &Scope,
    ) -> Result<Outgoing, Fault> {
        let at = |field: &str| join_paths(path, field);
        let endpoint = match &http.endpoint {
            Endpoint::Uri(uri) => uri,
            Endpoint::Object(object) => &object.uri,
        };
        let url = match crate::expr::embedded(endpoint) {
            Some(_) => match self.compiled.eval(&at("with.endpoint"), input, scope)? {
                Value::String(url) => url,
                other => {
                    return Err(Fault::Error(WorkflowError::expression(format!(
                        "the endpoint is {other}, not a string"
                    ))));
                }
            },
            None => expand_template(endpoint, input),
        };
        let mut url = reqwest::Url::parse(&url).map_err(|error| {
            WorkflowError::validation(format!("endpoint {url:?} is not a URL: {error}"))
        })?;
        let map_of = |value: &Option<Value>, field: &str| -> Result<Map<String, Value>, Fault> {
            let value = match value {
                None => return Ok(Map::new()),
                Some(Value::String(_)) => {
                    self.compiled
                        .eval(&at(&format!("with.{field}")), input, scope)?
                }
                Some(value) => {
                    self.compiled
                        .template(value, &at(&format!("with.{field}")), input, scope)?
                }
            };
            Ok(match value {
                Value::Object(map) => map,
                _ => Map::new(),
            })
        };
        let headers = map_of(&http.headers, "headers")?;
        let query = map_of(&http.query, "query")?;
        {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in &query {
                pairs.append_pair(name, &plain(value));
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let body = match &http.body {
            Some(body) => Some(
                self.compiled
                    .template(body, &at("with.body"), input, scope)?,
            ),
            None => None,
        };
        Ok(Outgoing {
            method: http.method.clone(),
            url,
            headers,
            body,
            output: http.output.unwrap_or(CallOutput::Content),
        })
    }

    /// `call: openapi`'s request: the operation found in the document
    /// (loaded once a minute at most per URL), its parameters filled.
    async fn openapi_request(
        &self,
        call: &OpenApiCall,
        path: &str,
        input: &Value,
        scope: &Scope,
    ) -> Result<Result<Outgoing, WorkflowError>, Fault> {
        let at = |field: &str| join_paths(path, field);
        let document =
            self.compiled
                .template(&call.document, &at("with.document"), input, scope)?;
        let parameters = match &call.parameters {
            Some(parameters) => match self.compiled.template(
                &Value::Object(parameters.clone()),
                &at("with.parameters"),
                input,
                scope,
            )? {
                Value::Object(parameters) => parameters,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        let (content, base) = match document_source(&document)? {
            DocumentSource::Inline(content) => (Arc::new(content), None),
            DocumentSource::Url(url) => match self.env.documents.get(&url) {
                Some(content) => (content, Some(url)),
                None => match self.fetch_document(&url).await {
                    Ok(content) => {
                        let content = Arc::new(content);
                        self.env.documents.put(&url, Arc::clone(&content));
                        (content, Some(url))
                    }
                    Err(error) => return Ok(Err(error)),
                },
            },
        };
        let request =
            match crate::openapi::request(&content, base.as_ref(), &call.operation_id, &parameters)
            {
                Ok(request) => request,
                Err(error) => return Ok(Err(error)),
            };
        Ok(Ok(Outgoing {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            output: call.output.unwrap_or(CallOutput::Content),
        }))
    }

    /// GETs an OpenAPI document through the guarded client.
    async fn fetch_document(&self, url: &reqwest::Url) -> Result<Value, WorkflowError> {
        let Some(sender) = &self.env.http else {
            return Err(WorkflowError::runtime(
                "this server has no outbound HTTP client",
            ));
        };
        let request = sender
            .request(reqwest::Method::GET, url.clone())
            .map_err(|refused| WorkflowError::communication(403, format!("{url}: {refused}")))?
            .timeout(self.env.http_timeout);
        let response = request.send().await.map_err(|error| {
            WorkflowError::communication(
                503,
                format!("loading the OpenAPI document {url}: {error}"),
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(WorkflowError::communication(
                status.as_u16(),
                format!("loading the OpenAPI document {url}: {status}"),
            ));
        }
        let bytes = response.bytes().await.map_err(|error| {
            WorkflowError::communication(
                503,
                format!("loading the OpenAPI document {url}: {error}"),
            )
        })?;
        crate::openapi::parse_document(&bytes)
    }

    /// Sends `outgoing` through the guarded client, with the run's
    /// `Idempotency-Key`; what it answered, as `output` asks.
    async fn send(&self, outgoing: Outgoing, key: &str) -> Result<Outcome, Fault> {
        let Outgoing {
            method,
            url,
            headers,
            body,
            output,
        } = outgoing;
        let Some(sender) = &self.env.http else {
            return Ok(Outcome::Err(WorkflowError::runtime(
                "this server has no outbound HTTP client",
            )));
        };
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|error| WorkflowError::validation(error.to_string()))?;
        let mut request = match sender.request(method.clone(), url.clone()) {
            Ok(request) => request,
            Err(refused) => {
                return Ok(Outcome::Err(WorkflowError::communication(
                    403,
                    format!("{url}: {refused}"),
                )));
            }
        };
        for (name, value) in &headers {
            request = request.header(name.as_str(), plain(value));
        }
        request = request
            .header("idempotency-key", format!("{}:{key}", self.id))
            .timeout(self.env.http_timeout);
        // The call is part of the task's span: the callee continues it.
        if let Some(context) = herald_trace::traceparent(&tracing::Span::current()) {
            request = request.header("traceparent", context);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                let status = if error.is_timeout() { 408 } else { 503 };
                return Ok(Outcome::Err(WorkflowError::communication(
                    status,
                    format!("{method} {url}: {error}"),
                )));
            }
        };
        let status = response.status();
        let response_headers: Map<String, Value> = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
                )
            })
            .collect();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => {
                return Ok(Outcome::Err(WorkflowError::communication(
                    503,
                    format!("{method} {url}: reading the answer: {error}"),
                )));
            }
        };
        let content = serde_json::from_slice::<Value>(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if !status.is_success() {
            let mut error = WorkflowError::communication(
                status.as_u16(),
                format!("{method} {url} answered {status}"),
            );
            error.title = Some("Communication failed".to_owned());
            return Ok(Outcome::Err(error));
        }
        Ok(Outcome::Ok(match output {
            CallOutput::Content => content,
            CallOutput::Raw => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes))
            }
            CallOutput::Response => json!({
                "request": {"method": method.as_str(), "uri": url.as_str(), "headers": headers},
                "statusCode": status.as_u16(),
                "headers": response_headers,
                "content": content,
            }),
        }))
    }

    /// `listen`: waits for the events the consumption strategy asks for,
    /// on the topics its filters name, from when the listen began, or from
    /// when the run's last `emit` before it began publishing if the listen
    /// follows one (a reply to it may be stored before the listen starts;
    /// recorded: a restart keeps listening from there, and sees what came
    /// meanwhile).
    async fn listen(
        &self,
        consumption: &EventConsumption,
        path: &str,
        key: &str,
        input: &Value,
        frame: &Frame,
    ) -> Result<Vec<Value>, Fault> {
        let effect = format!("{key}#events");
        if let Some(outcome) = self.journal.lock().await.effect(&effect).cloned() {
            return match replayed(outcome)? {
                Value::Array(events) => Ok(events),
                _ => Ok(Vec::new()),
            };
        }
        let since = {
            let since_key = format!("{key}#since");
            let mut journal = self.journal.lock().await;
            match journal.effect(&since_key) {
                Some(Outcome::Ok(since)) => since.as_i64().unwrap_or(0),
                _ => {
                    // From now, or from this run's last emit if that came
                    // first: a reply to it may already be stored.
                    let now = now_ms();
                    let since = self
                        .emitted_at
                        .swap(i64::MAX, std::sync::atomic::Ordering::Relaxed)
                        .min(now);
                    journal.push(Record::Effect {
                        key: since_key,
                        outcome: Outcome::Ok(json!(since)),
                        at: now,
                    });
                    since
                }
            }
        };
        let mut listening = Listening::new(&self.compiled, consumption, path, input, &frame.scope)?;
        let events = self
            .block(frame, async {
                listening
                    .run(&self.compiled, &self.env.backend, since, &frame.scope)
                    .await
            })
            .await?;
        let outcome = Outcome::Ok(Value::Array(events.clone()));
        self.journal.lock().await.push(Record::Effect {
            key: effect,
            outcome,
            at: now_ms(),
        });
        self.flush().await?;
        Ok(events)
    }
}

/// Counts a wait out when it ends, however it ends.
struct Unblock<'a>(&'a watch::Sender<usize>);

impl Drop for Unblock<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count = count.saturating_sub(1));
    }
}

/// A listen in progress (also a `schedule.on` trigger's filter).
pub(crate) struct Listening {
    filters: Vec<Filter>,
    mode: Mode,
    until: Option<String>,
    /// `until` as a consumption strategy: its events end the listening
    /// (they are not part of the output).
    until_events: Option<Box<Listening>>,
    matched: Vec<bool>,
    events: Vec<Value>,
    /// The topics the filters name.
    pub(crate) topics: Vec<TopicName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    One,
    Any,
    All,
}

struct Filter {
    topic: TopicName,
    attributes: Map<String, Value>,
    /// `(from path, expected value)`: `None` until the first event sets it.
    correlate: Vec<(String, Option<Value>)>,
}

impl Listening {
    pub(crate) fn new(
        compiled: &Compiled,
        consumption: &EventConsumption,
        path: &str,
        input: &Value,
        scope: &Scope,
    ) -> Result<Self, Fault> {
        let mode = if consumption.one.is_some() {
            Mode::One
        } else if consumption.any.is_some() {
            Mode::Any
        } else {
            Mode::All
        };
        let filters = consumption.filters(path);
        let mut built = Vec::new();
        for (at, filter) in filters {
            let with = filter.with.clone().unwrap_or_default();
            let mut attributes = match compiled.template(
                &Value::Object(with),
                &join_paths(&at, "with"),
                input,
                scope,
            )? {
                Value::Object(attributes) => attributes,
                _ => Map::new(),
            };
            let topic = match attributes.remove("topic") {
                Some(Value::String(topic)) => TopicName::try_from(topic.as_str())
                    .map_err(|error| WorkflowError::validation(error.to_string()))?,
                _ => {
                    return Err(Fault::Error(WorkflowError::validation(
                        "a listened event names its topic in `with.topic`",
                    )));
                }
            };
            let mut correlate = Vec::new();
            for (name, correlation) in filter.correlate.iter().flatten() {
                let here = join_paths(&join_paths(&at, "correlate"), name);
                let expected = match &correlation.expect {
                    Some(_) => Some(compiled.eval(&join_paths(&here, "expect"), input, scope)?),
                    None => None,
                };
                correlate.push((join_paths(&here, "from"), expected));
            }
            built.push(Filter {
                topic,
                attributes,
                correlate,
            });
        }
        let mut topics: Vec<TopicName> = built.iter().map(|filter| filter.topic.clone()).collect();
        let until = match &consumption.until {
            Some(Value::String(_)) => Some(join_paths(path, "until")),
            _ => None,
        };
        let until_events = match &consumption.until {
            Some(Value::Object(strategy)) => {
                let strategy: EventConsumption =
                    serde_json::from_value(Value::Object(strategy.clone())).map_err(|error| {
                        WorkflowError::validation(format!("{path}.until: {error}"))
                    })?;
                let until = Self::new(
                    compiled,
                    &strategy,
                    &join_paths(path, "until"),
                    input,
                    scope,
                )?;
                topics.extend(until.topics.iter().cloned());
                Some(Box::new(until))
            }
            _ => None,
        };
        topics.sort();
        topics.dedup();
        Ok(Self {
            matched: vec![false; built.len()],
            filters: built,
            mode,
            until,
            until_events,
            events: Vec::new(),
            topics,
        })
    }

    /// Whether the consumption is satisfied.
    pub(crate) fn done(&self, compiled: &Compiled, scope: &Scope) -> Result<bool, Fault> {
        Ok(match self.mode {
            Mode::One => self.matched[0],
            Mode::All => self.matched.iter().all(|matched| *matched),
            Mode::Any => match (&self.until, &self.until_events) {
                (_, Some(until)) => until.done(compiled, scope)?,
                (None, None) => self.matched.iter().any(|matched| *matched),
                (Some(until), None) => {
                    !self.events.is_empty()
                        && compiled.holds(until, &Value::Array(self.events.clone()), scope)?
                }
            },
        })
    }

    /// Takes `envelope` if a filter still open matches it; whether one did.
    pub(crate) fn offer(
        &mut self,
        compiled: &Compiled,
        envelope: &Value,
        scope: &Scope,
    ) -> Result<bool, Fault> {
        if let Some(until) = &mut self.until_events
            && until.offer(compiled, envelope, scope)?
        {
            return Ok(true);
        }
        for (index, filter) in self.filters.iter_mut().enumerate() {
            if self.matched[index] && self.mode != Mode::Any {
                continue;
            }
            if envelope.get("topic").and_then(Value::as_str) != Some(filter.topic.as_ref()) {
                continue;
            }
            let attributes_match = filter.attributes.iter().all(|(name, wanted)| {
                envelope
                    .get(name)
                    .is_some_and(|actual| plain(actual) == plain(wanted))
            });
            if !attributes_match {
                continue;
            }
            let mut values = Vec::with_capacity(filter.correlate.len());
            let mut correlated = true;
            for (from, expected) in &filter.correlate {
                let value = compiled.eval(from, envelope, scope)?;
                if expected.as_ref().is_some_and(|expected| *expected != value) {
                    correlated = false;
                    break;
                }
                values.push(value);
            }
            if !correlated {
                continue;
            }
            for ((_, expected), value) in filter.correlate.iter_mut().zip(values) {
                expected.get_or_insert(value);
            }
            self.matched[index] = true;
            self.events.push(envelope.clone());
            return Ok(true);
        }
        Ok(false)
    }

    async fn run(
        &mut self,
        compiled: &Compiled,
        backend: &Arc<dyn Backend>,
        since: i64,
        scope: &Scope,
    ) -> Result<Vec<Value>, Fault> {
        let mut cursors: Vec<(TopicName, u32, u64)> = Vec::new();
        for topic in &self.topics {
            let partitions = loop {
                match backend.describe_topic(topic).await {
                    Ok(description) => break description.partition_info.len(),
                    // Not created yet: wait for it.
                    Err(BackendError::TopicNotFound { .. }) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) => return Err(Fault::History(HistoryError::Storage(error))),
                }
            };
            for partition in 0..u32::try_from(partitions).unwrap_or(0) {
                let offset = backend
                    .offset_for_time(topic, partition, since)
                    .await
                    .map_err(|error| Fault::History(HistoryError::Storage(error)))?;
                cursors.push((topic.clone(), partition, offset));
            }
        }
        loop {
            let mut progressed = false;
            for (topic, partition, cursor) in &mut cursors {
                let read = match backend.read(topic, *partition, *cursor, 256).await {
                    Ok(read) => read,
                    Err(BackendError::OffsetOutOfRange { .. }) => {
                        *cursor = backend
                            .offset_for_time(topic, *partition, since)
                            .await
                            .map_err(|error| Fault::History(HistoryError::Storage(error)))?;
                        continue;
                    }
                    Err(error) => return Err(Fault::History(HistoryError::Storage(error))),
                };
                if read.next_offset > *cursor {
                    progressed = true;
                }
                *cursor = read.next_offset;
                for stored in &read.events {
                    let envelope = serde_json::to_value(stored).unwrap_or(Value::Null);
                    self.offer(compiled, &envelope, scope)?;
                    if self.done(compiled, scope)? {
                        return Ok(std::mem::take(&mut self.events));
                    }
                }
            }
            if !progressed {
                let waits = cursors.iter().map(|(topic, partition, cursor)| {
                    Box::pin(backend.wait_for(topic, *partition, *cursor, Duration::from_secs(5)))
                });
                let _ = futures::future::select_all(waits).await;
            }
        }
    }
}

/// The DSL's `startedAt` of `$workflow` and `$task`: ISO 8601 and epoch.
/// An HTTP request a call makes.
struct Outgoing {
    method: String,
    url: reqwest::Url,
    headers: Map<String, Value>,
    body: Option<Value>,
    output: CallOutput,
}

/// Where an OpenAPI document comes from.
enum DocumentSource {
    /// `document: {endpoint}`: a URL (or `{uri}`).
    Url(reqwest::Url),
    /// `document: {content}` (Herald's extension): the document itself.
    Inline(Value),
}

/// `with.document`, evaluated: `{name?, endpoint: <uri> | {uri}}` as the
/// DSL's external resource, or `{name?, content: {…}}`.
fn document_source(document: &Value) -> Result<DocumentSource, WorkflowError> {
    if let Some(content) = document.get("content") {
        return Ok(DocumentSource::Inline(content.clone()));
    }
    let endpoint = document.get("endpoint");
    let uri = match endpoint {
        Some(Value::String(uri)) => uri,
        Some(Value::Object(object)) => match object.get("uri") {
            Some(Value::String(uri)) => uri,
            _ => {
                return Err(WorkflowError::validation(
                    "the OpenAPI document's endpoint has no uri",
                ));
            }
        },
        _ => {
            return Err(WorkflowError::validation(
                "the OpenAPI document takes `endpoint` (its URL) or `content`",
            ));
        }
    };
    reqwest::Url::parse(uri)
        .map(DocumentSource::Url)
        .map_err(|error| {
            WorkflowError::validation(format!("the OpenAPI document's URL {uri:?}: {error}"))
        })
}

fn started_at_of(ms: i64) -> Value {
    json!({
        "iso8601": herald_types::format_rfc3339_ms(ms),
        "epoch": {"seconds": ms.div_euclid(1000), "milliseconds": ms},
    })
}

/// A recorded outcome as a result.
fn replayed(outcome: Outcome) -> Result<Value, Fault> {
    match outcome {
        Outcome::Ok(value) => Ok(value),
        Outcome::Err(error) => Err(Fault::Error(error)),
    }
}

fn ended(end: ListEnd) -> Flow {
    match end {
        ListEnd::Ended => Flow::End,
        ListEnd::Done | ListEnd::Exited => Flow::Continue,
    }
}

/// A JSON value as header, query or attribute text.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A URI template's `{name}`s filled from `input`'s fields.
fn expand_template(template: &str, input: &Value) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                let value = input.get(name).map(plain).unwrap_or_default();
                out.extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

async fn sleep_until_ms(due: i64) {
    let now = now_ms();
    if due > now {
        let wait = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_uri_templates_should_fill_and_encode_fields() {
        let input = json!({"id": 42, "name": "a b"});
        assert_eq!(
            expand_template("http://h/pets/{id}?n={name}", &input),
            "http://h/pets/42?n=a+b"
        );
        assert_eq!(expand_template("http://h/{missing}", &input), "http://h/");
        assert_eq!(expand_template("http://h/{open", &input), "http://h/{open");
    }
}
