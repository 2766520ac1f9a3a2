//! The engine: starts instances, runs each in a task of its own
//! ([`crate::run`]), resumes them after a restart from their histories
//! ([`crate::history`]), and answers operators (show, list, history,
//! cancel, suspend, resume, retry).
//!
//! Each instance also has an entry in the `Kv` bucket [`INSTANCES_BUCKET`]:
//! its status, input, output and error, for reads and lists. The history
//! is the truth; the entry follows it, and a restart corrects an entry a
//! crash left behind.
//!
//! # Several nodes on one backend
//!
//! With [`Options::shared_backend`] (NATS: several Herald nodes), each
//! instance that has not ended is owned by the node running it: its id in
//! the `Kv` bucket [`OWNERS_BUCKET`], written when a node starts, resumes
//! or wakes it, removed when it ends. Each node keeps a lease of its own
//! (`workflows.node.<node>`, `herald_backend::lease`) while it lives. A
//! node that starts resumes only instances whose owner is not alive (its
//! lease expired or given up), and one node at a time (the lease
//! `workflows.adopt`) looks every [`ADOPT_EVERY`] for such instances and
//! takes them over, by compare-and-set on the owner entry: a dead node's
//! instances, timers included, go on elsewhere within a node lease's
//! length, and an instance another node runs is not run twice. Should two
//! nodes still run one instance (a node cut off from NATS past its lease),
//! the history's optimistic concurrency lets one advance it; the other
//! leaves it. On one node alone (the embedded backend) there are no owner
//! entries: a start resumes every instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_backend::{Backend, Error as BackendError, Expect, TopicSpec};
use herald_types::{Event, format_rfc3339_ms};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::error::{CANCELLED, WorkflowError};
use crate::eval::Compiled;
use crate::history::{self, Control, HistoryError, Journal, Record};
use crate::now_ms;
use crate::run::{Env, Fault, Run};
use crate::store::{Definitions, StoreError, StoredDefinition};

/// The `Kv` bucket of instances' entries, by instance id.
pub const INSTANCES_BUCKET: &str = "workflows.instances";

/// The `Kv` bucket of the node running each instance that has not ended,
/// by instance id (with [`Options::shared_backend`]).
pub const OWNERS_BUCKET: &str = "workflows.owners";

/// How often a node looks for instances whose owner died.
pub const ADOPT_EVERY: Duration = Duration::from_secs(5);

/// How long a node's own lease lasts unrenewed: its instances move to
/// another node this long after it dies.
const NODE_LEASE: Duration = Duration::from_secs(15);

/// The lease of the node `node`.
fn node_lease(node: &str) -> String {
    format!("workflows.node.{node}")
}

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started, not yet running.
    Pending,
    /// Running a task.
    Running,
    /// Waiting: a timer, an event, a retry delay.
    Waiting,
    /// Suspended by an operator.
    Suspended,
    /// Ended with an output.
    Completed,
    /// Ended with an error.
    Faulted,
    /// Cancelled by an operator.
    Cancelled,
}

impl Status {
    /// Whether the instance ended.
    #[must_use]
    pub fn ended(self) -> bool {
        matches!(self, Self::Completed | Self::Faulted | Self::Cancelled)
    }

    /// Its name in the API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Suspended => "suspended",
            Self::Completed => "completed",
            Self::Faulted => "faulted",
            Self::Cancelled => "cancelled",
        }
    }
}

/// An instance as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    /// Its id.
    pub instance_id: String,
    /// Its definition's namespace.
    pub namespace: String,
    /// Its definition's name.
    pub name: String,
    /// The definition's version it runs (kept for its whole life).
    pub version: String,
    /// Where it is.
    pub status: Status,
    /// Its input.
    pub input: Value,
    /// Its output, once completed.
    #[serde(default)]
    pub output: Option<Value>,
    /// Its error, once faulted.
    #[serde(default)]
    pub error: Option<WorkflowError>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    #[serde(default)]
    pub ended_at: Option<String>,
    /// When a parked instance (waiting on a timer) is due to run again, ms
    /// since the Unix epoch; a restart schedules it without replaying it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<i64>,
}

/// One step of an instance's history: a task run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// The task's name.
    pub task: String,
    /// Its JSON Pointer in the definition.
    pub path: String,
    /// `running`, `completed` or `faulted`.
    pub status: &'static str,
    /// Its input (transformed), when recorded.
    pub input: Option<Value>,
    /// Its output.
    pub output: Option<Value>,
    /// Its error.
    pub error: Option<WorkflowError>,
    /// Its attempt (a `try` retrying counts up).
    pub attempt: u32,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    pub ended_at: Option<String>,
}

/// What tasks call out to.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// The outbound HTTP client of `call: http` and `call: openapi` (the
    /// webhooks' one: SSRF guard, no redirects); none: those calls raise a
    /// runtime error.
    pub http: Option<herald_webhooks::Sender>,
    /// The job service of `call: herald.job`; none: it raises a runtime
    /// error.
    pub jobs: Option<herald_jobs::Handle>,
}

/// What the engine is set up with.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long one `call: http` may take.
    pub http_timeout: Duration,
    /// The most records an instance's history holds; past it the instance
    /// faults (`…/errors/runtime`).
    pub max_history_records: usize,
    /// Secrets by name, for `$secrets`.
    pub secrets: HashMap<String, String>,
    /// Whether other nodes run engines on the same backend (NATS): then
    /// instances have owners (see the module docs).
    pub shared_backend: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            http_timeout: Duration::from_secs(30),
            max_history_records: 10_000,
            secrets: HashMap::new(),
            shared_backend: false,
        }
    }
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such instance.
    #[error("no workflow instance {0:?}")]
    NotFound(String),
    /// The instance ended: it can no longer be cancelled, suspended, ….
    #[error("the instance is {0}: it can no longer be changed")]
    Ended(&'static str),
    /// The operation does not fit the instance's status (resume of a
    /// running instance, retry of one that did not fault).
    #[error("the instance is {status}: {message}")]
    Conflict {
        /// Its status.
        status: &'static str,
        /// What would fit.
        message: &'static str,
    },
    /// The definition.
    #[error(transparent)]
    Definition(#[from] StoreError),
    /// Storage.
    #[error(transparent)]
    Storage(#[from] BackendError),
    /// The history.
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// The workflow engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Arc<dyn Backend>,
    definitions: Definitions,
    env: Env,
    options: Options,
    compiled: Mutex<HashMap<String, Arc<Compiled>>>,
    /// Per `namespace/name`: the version whose `schedule.on` runs, and how
    /// to stop it.
    triggers: Mutex<HashMap<String, (String, CancellationToken)>>,
    live: Mutex<HashMap<String, Arc<watch::Sender<Control>>>>,
    /// Instances parked on a timer: `(due, id)`, soonest first.
    parked: Mutex<std::collections::BTreeSet<(i64, String)>>,
    /// Told when a parked instance is added.
    wake: tokio::sync::Notify,
    /// Bumped by every instance entry written and every history write.
    changes: Arc<watch::Sender<u64>>,
    /// Whether the history topic is known to exist (made at the first start).
    history_ready: std::sync::atomic::AtomicBool,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// This engine's id among those sharing the backend.
    node: String,
}

impl Engine {
    /// An engine on `backend`, calling out through `http` (none: `call:
    /// http` raises a runtime error). Call [`Engine::recover`] to resume
    /// the instances a previous run left.
    pub async fn start(
        backend: Arc<dyn Backend>,
        services: Services,
        options: Options,
        metrics: Arc<crate::WorkflowMetrics>,
        cancel: CancellationToken,
    ) -> Result<Self, EngineError> {
        let env = Env {
            backend: Arc::clone(&backend),
            http: services.http,
            jobs: services.jobs,
            documents: Arc::default(),
            http_timeout: options.http_timeout,
            secrets: Arc::new(options.secrets.clone()),
            metrics,
        };
        let engine = Self {
            inner: Arc::new(Inner {
                definitions: Definitions::new(Arc::clone(&backend)),
                backend,
                env,
                options,
                compiled: Mutex::new(HashMap::new()),
                triggers: Mutex::new(HashMap::new()),
                live: Mutex::new(HashMap::new()),
                parked: Mutex::new(std::collections::BTreeSet::new()),
                wake: tokio::sync::Notify::new(),
                changes: Arc::new(watch::Sender::new(0)),
                history_ready: std::sync::atomic::AtomicBool::new(false),
                cancel,
                tasks: TaskTracker::new(),
                node: uuid::Uuid::now_v7().to_string(),
            }),
        };
        let waker = engine.clone();
        engine
            .inner
            .tasks
            .spawn(async move { waker.wake_parked().await });
        if engine.inner.options.shared_backend {
            engine.start_node_tasks().await;
        }
        Ok(engine)
    }

    /// With a shared backend: takes this node's lease (before any instance
    /// runs here) and keeps it, and adopts the instances of dead nodes (one
    /// node at a time).
    async fn start_node_tasks(&self) {
        let inner = &self.inner;
        let mut alive = herald_backend::lease::Lease::new(
            Arc::clone(&inner.backend),
            &node_lease(&inner.node),
            NODE_LEASE,
        );
        // Held before the engine answers, so other nodes see this one alive
        // before any instance runs here.
        if let Err(error) = alive.try_hold().await {
            warn!(%error, "Could not take this node's workflow lease; retrying.");
        }
        let cancel = inner.cancel.clone();
        inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(NODE_LEASE / 3) => {}
                }
                if let Err(error) = alive.try_hold().await {
                    warn!(%error, "Could not renew this node's workflow lease; retrying.");
                }
            }
            alive.release().await;
        });
        let adopter = self.clone();
        inner.tasks.spawn(herald_backend::lease::run_while_held(
            Arc::clone(&inner.backend),
            "workflows.adopt",
            NODE_LEASE,
            inner.cancel.clone(),
            move |stop| {
                let engine = adopter.clone();
                async move {
                    loop {
                        if let Err(error) = engine.adopt_orphans().await {
                            warn!(%error, "Could not look for workflow instances of dead nodes.");
                        }
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(ADOPT_EVERY) => {}
                        }
                    }
                }
            },
        ));
    }

    /// Takes over the instances whose owner node is not alive (see the
    /// module docs) and runs them here; returns how many. Called every
    /// [`ADOPT_EVERY`] on one node with a shared backend.
    pub async fn adopt_orphans(&self) -> Result<usize, EngineError> {
        let backend = &*self.inner.backend;
        let mut alive: HashMap<String, bool> = HashMap::new();
        let mut adopted = 0;
        let mut after: Option<String> = None;
        loop {
            let page = backend
                .kv_keys(OWNERS_BUCKET, "", after.as_deref(), 1000)
                .await?;
            let full = page.len() == 1000;
            for id in &page {
                let Some(entry) = backend.kv_get(OWNERS_BUCKET, id).await? else {
                    continue;
                };
                let owner = String::from_utf8_lossy(&entry.value).into_owned();
                if owner == self.inner.node {
                    continue;
                }
                let owner_alive = match alive.get(&owner) {
                    Some(known) => *known,
                    None => {
                        let known =
                            herald_backend::lease::is_held(backend, &node_lease(&owner)).await?;
                        alive.insert(owner.clone(), known);
                        known
                    }
                };
                if owner_alive {
                    continue;
                }
                // One adopter wins the owner entry.
                match backend
                    .kv_put(
                        OWNERS_BUCKET,
                        id,
                        Bytes::from(self.inner.node.clone()),
                        Expect::Revision(entry.revision),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(BackendError::RevisionMismatch { .. }) => continue,
                    Err(error) => return Err(error.into()),
                }
                if self.resume_here(id).await? {
                    info!(instance = %id, node = %owner, "Took over a workflow instance of a node that is gone.");
                    adopted += 1;
                }
            }
            after = page.last().cloned();
            if !full {
                return Ok(adopted);
            }
        }
    }

    /// Runs instance `id` here (parked if it waits on a timer) unless it
    /// ended or is gone; an ended or missing one loses its owner entry.
    async fn resume_here(&self, id: &str) -> Result<bool, EngineError> {
        match self.read(id).await? {
            Some(view) if !view.status.ended() => {
                match (view.status, view.wake_at) {
                    (Status::Waiting, Some(due)) => self.park(id, due),
                    _ => self.spawn(id, Control::default()),
                }
                Ok(true)
            }
            _ => {
                self.disown(id).await;
                Ok(false)
            }
        }
    }

    /// With a shared backend: records this node as the one running `id`.
    async fn own(&self, id: &str) {
        if !self.inner.options.shared_backend {
            return;
        }
        if let Err(error) = self
            .inner
            .backend
            .kv_put(
                OWNERS_BUCKET,
                id,
                Bytes::from(self.inner.node.clone()),
                Expect::Any,
            )
            .await
        {
            warn!(instance = id, %error, "Could not record which node runs a workflow instance.");
        }
    }

    /// With a shared backend: `id` ended, it needs no owner.
    async fn disown(&self, id: &str) {
        if !self.inner.options.shared_backend {
            return;
        }
        if let Err(error) = self
            .inner
            .backend
            .kv_delete(OWNERS_BUCKET, id, Expect::Any)
            .await
        {
            warn!(instance = id, %error, "Could not remove an ended workflow instance's owner.");
        }
    }

    /// How many instances run in a task now, and how many are parked on a
    /// timer (holding no task).
    #[must_use]
    pub fn load(&self) -> (usize, usize) {
        let live = self.inner.live.lock().map_or(0, |live| live.len());
        let parked = self.inner.parked.lock().map_or(0, |parked| parked.len());
        (live, parked)
    }

    /// Runs parked instances again when their timers are due.
    async fn wake_parked(&self) {
        loop {
            let notified = self.inner.wake.notified();
            let next = self
                .inner
                .parked
                .lock()
                .ok()
                .and_then(|parked| parked.first().map(|(due, _)| *due));
            let now = now_ms();
            match next {
                Some(due) if due <= now => {
                    let due_now: Vec<String> = match self.inner.parked.lock() {
                        Ok(mut parked) => {
                            let later = parked.split_off(&(now + 1, String::new()));
                            let due = std::mem::replace(&mut *parked, later);
                            due.into_iter().map(|(_, id)| id).collect()
                        }
                        Err(_) => Vec::new(),
                    };
                    for id in due_now {
                        self.spawn(&id, Control::default());
                    }
                    self.count_load();
                }
                Some(due) => {
                    let wait = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
                    tokio::select! {
                        () = self.inner.cancel.cancelled() => return,
                        () = notified => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                None => {
                    tokio::select! {
                        () = self.inner.cancel.cancelled() => return,
                        () = notified => {}
                    }
                }
            }
        }
    }

    /// Runs instance `id` again at `due`.
    fn park(&self, id: &str, due: i64) {
        if let Ok(mut parked) = self.inner.parked.lock() {
            parked.insert((due, id.to_owned()));
        }
        self.inner.wake.notify_one();
        self.count_load();
    }

    /// The running and parked gauges, as they are now.
    fn count_load(&self) {
        let (live, parked) = self.load();
        self.inner.env.metrics.load(live, parked);
    }

    /// The definitions store.
    #[must_use]
    pub fn definitions(&self) -> &Definitions {
        &self.inner.definitions
    }

    pub(crate) fn triggers(&self) -> &Mutex<HashMap<String, (String, CancellationToken)>> {
        &self.inner.triggers
    }

    pub(crate) fn cancel_token(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.inner.backend)
    }

    /// Resumes every instance that had not ended, and starts the
    /// `schedule.on` triggers of every workflow's latest version; returns
    /// how many instances resumed.
    pub async fn recover(&self) -> Result<usize, EngineError> {
        for (namespace, name, _) in self.inner.definitions.list().await? {
            self.refresh_trigger(&namespace, &name).await?;
        }
        let mut resumed = 0;
        let shared = self.inner.options.shared_backend;
        for id in self.ids().await? {
            let Some(view) = self.read(&id).await? else {
                continue;
            };
            if shared && !view.status.ended() {
                // Another node's, while it lives: not ours to run. One
                // without an owner entry (written before owners were) is
                // taken; the adopter takes the others once theirs dies.
                if let Some(entry) = self.inner.backend.kv_get(OWNERS_BUCKET, &id).await? {
                    let owner = String::from_utf8_lossy(&entry.value).into_owned();
                    if owner != self.inner.node
                        && herald_backend::lease::is_held(&*self.inner.backend, &node_lease(&owner))
                            .await?
                    {
                        continue;
                    }
                }
                self.own(&id).await;
            }
            match (view.status, view.wake_at) {
                (status, _) if status.ended() => {}
                // Parked on a timer: scheduled, not replayed now.
                (Status::Waiting, Some(due)) => {
                    self.park(&id, due);
                    resumed += 1;
                }
                _ => {
                    self.spawn(&id, Control::default());
                    resumed += 1;
                }
            }
        }
        if resumed > 0 {
            info!(instances = resumed, "Resumed workflow instances.");
        }
        Ok(resumed)
    }

    /// Stops running instances (they resume at the next start) and waits
    /// for their tasks.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Starts an instance of `namespace/name` at `version` (the latest when
    /// `None`) with `input`.
    pub async fn start_instance(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
        input: Value,
    ) -> Result<InstanceView, EngineError> {
        let stored = match version {
            Some(version) => self.inner.definitions.get(namespace, name, version).await?,
            None => self.inner.definitions.latest(namespace, name).await?,
        };
        let id = Event::generate_id(now_ms());
        self.start_with_id(&id, &stored, input).await
    }

    /// Starts instance `id` of `stored` with `input`, or, when it was
    /// started already (a trigger's event delivered again), makes sure it
    /// runs and answers it as it is.
    pub(crate) async fn start_with_id(
        &self,
        id: &str,
        stored: &StoredDefinition,
        input: Value,
    ) -> Result<InstanceView, EngineError> {
        self.ensure_history_topic().await?;
        let now = now_ms();
        let view = InstanceView {
            instance_id: id.to_owned(),
            namespace: stored.namespace.clone(),
            name: stored.name.clone(),
            version: stored.version.clone(),
            status: Status::Pending,
            input: input.clone(),
            output: None,
            error: None,
            started_at: format_rfc3339_ms(now),
            ended_at: None,
            wake_at: None,
        };
        // Owned before it exists: no node starting now finds it ownerless.
        self.own(id).await;
        let created = match self.write(&view, Expect::Absent).await {
            Ok(()) => {
                self.inner.env.metrics.started();
                true
            }
            Err(EngineError::Storage(BackendError::RevisionMismatch { .. })) => false,
            Err(error) => return Err(error),
        };
        let mut journal = Journal::load(
            Arc::clone(&self.inner.backend),
            id,
            self.inner.options.max_history_records,
        )
        .await?;
        if journal.started().is_none() {
            let started = journal
                .record(Record::Started {
                    namespace: stored.namespace.clone(),
                    name: stored.name.clone(),
                    version: stored.version.clone(),
                    input,
                    at: now,
                })
                .await;
            match started {
                // Started meanwhile by another call.
                Ok(()) | Err(HistoryError::Lost) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.spawn(id, Control::default());
        if created {
            Ok(view)
        } else {
            self.get(id).await
        }
    }

    /// Creates the topic of the histories the first time an instance starts.
    async fn ensure_history_topic(&self) -> Result<(), EngineError> {
        use std::sync::atomic::Ordering;
        if self.inner.history_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut spec = TopicSpec::new(history::history_topic());
        spec.partitions = 4;
        // Stream appends are not deduplicated; versions make them safe.
        spec.dedup_window_ms = 0;
        spec.max_event_bytes = 4 * 1024 * 1024;
        match self.inner.backend.create_topic(spec).await {
            Ok(_) | Err(BackendError::TopicExists { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        self.inner.history_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Deploys a definition (see [`Definitions::deploy`]); when it is the
    /// workflow's latest version, its `schedule.on` trigger follows it.
    pub async fn deploy(
        &self,
        text: &str,
        deployed_at: String,
    ) -> Result<StoredDefinition, EngineError> {
        let stored = self.inner.definitions.deploy(text, deployed_at).await?;
        self.refresh_trigger(&stored.namespace, &stored.name)
            .await?;
        Ok(stored)
    }

    /// An instance.
    pub async fn get(&self, id: &str) -> Result<InstanceView, EngineError> {
        self.read(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(id.to_owned()))
    }

    /// An instance once it ended, or as it is after `wait`.
    pub async fn wait(&self, id: &str, wait: Duration) -> Result<InstanceView, EngineError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.inner.changes.subscribe();
        loop {
            changes.mark_unchanged();
            let view = self.get(id).await?;
            if view.status.ended() {
                return Ok(view);
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(view),
                () = self.inner.cancel.cancelled() => return Ok(view),
                _ = changes.changed() => {}
            }
        }
    }

    /// Instances, newest first, matching the filters, at most `limit`,
    /// older than the instance `before` when given.
    pub async fn list(
        &self,
        filter: &ListFilter,
        limit: usize,
    ) -> Result<Vec<InstanceView>, EngineError> {
        let mut ids = self.ids().await?;
        ids.reverse();
        let mut found = Vec::new();
        for id in ids {
            if filter
                .before
                .as_deref()
                .is_some_and(|before| id.as_str() >= before)
            {
                continue;
            }
            let Some(view) = self.read(&id).await? else {
                continue;
            };
            if filter.keeps(&view) {
                found.push(view);
                if found.len() >= limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// The records of an instance's history from version `from` (at most
    /// 256), waiting up to `wait` for one when there is none yet.
    pub async fn records(
        &self,
        id: &str,
        from: u64,
        wait: Duration,
    ) -> Result<Vec<(u64, Record)>, EngineError> {
        self.get(id).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.inner.changes.subscribe();
        loop {
            changes.mark_unchanged();
            let records = history::read(&*self.inner.backend, id, from, 256).await?;
            if !records.is_empty() {
                return Ok(records);
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                () = self.inner.cancel.cancelled() => return Ok(Vec::new()),
                _ = changes.changed() => {}
            }
        }
    }

    /// The steps of an instance's history, in the order they began.
    pub async fn history(&self, id: &str) -> Result<Vec<StepView>, EngineError> {
        self.get(id).await?;
        let records = history::read_all(&*self.inner.backend, id).await?;
        Ok(steps(&records))
    }

    /// Cancels an instance: what it waits on stops, `catch`es that take the
    /// cancel run their `do`, and it ends `cancelled`.
    pub async fn cancel(&self, id: &str) -> Result<InstanceView, EngineError> {
        self.control(id, Record::CancelRequested { at: now_ms() }, |control| {
            control.cancel = true;
        })
        .await
    }

    /// Suspends an instance: it stops at its next step or wait.
    pub async fn suspend(&self, id: &str) -> Result<InstanceView, EngineError> {
        let view = self.get(id).await?;
        if view.status == Status::Suspended {
            return Ok(view);
        }
        self.control(id, Record::Suspended { at: now_ms() }, |control| {
            control.suspended = true;
        })
        .await
    }

    /// Resumes a suspended instance.
    pub async fn resume(&self, id: &str) -> Result<InstanceView, EngineError> {
        let view = self.get(id).await?;
        if view.status.ended() {
            return Err(EngineError::Ended(view.status.as_str()));
        }
        if view.status != Status::Suspended {
            return Err(EngineError::Conflict {
                status: view.status.as_str(),
                message: "only a suspended instance resumes",
            });
        }
        self.control(id, Record::Resumed { at: now_ms() }, |control| {
            control.suspended = false;
        })
        .await
    }

    /// Starts a new instance of the version `id` ran, with its input (the
    /// instance itself is left as it is, whatever its status).
    pub async fn rerun(&self, id: &str) -> Result<InstanceView, EngineError> {
        let view = self.get(id).await?;
        self.start_instance(&view.namespace, &view.name, Some(&view.version), view.input)
            .await
    }

    /// Runs a faulted instance again from the task that failed (what
    /// completed before it is not run again).
    pub async fn retry(&self, id: &str) -> Result<InstanceView, EngineError> {
        let mut view = self.get(id).await?;
        if view.status != Status::Faulted {
            return Err(EngineError::Conflict {
                status: view.status.as_str(),
                message: "only a faulted instance is retried",
            });
        }
        history::append_control(
            &*self.inner.backend,
            id,
            &Record::RetryRequested { at: now_ms() },
        )
        .await?;
        view.status = Status::Pending;
        view.error = None;
        view.ended_at = None;
        self.write(&view, Expect::Any).await?;
        self.spawn(id, Control::default());
        Ok(view)
    }

    async fn control(
        &self,
        id: &str,
        record: Record,
        change: impl Fn(&mut Control),
    ) -> Result<InstanceView, EngineError> {
        let view = self.get(id).await?;
        if view.status.ended() {
            return Err(EngineError::Ended(view.status.as_str()));
        }
        let version = history::append_control(&*self.inner.backend, id, &record).await?;
        let live = self
            .inner
            .live
            .lock()
            .ok()
            .and_then(|live| live.get(id).cloned());
        match live {
            Some(sender) => {
                sender.send_if_modified(|control| {
                    if version > control.version {
                        change(control);
                        control.version = version;
                        true
                    } else {
                        false
                    }
                });
            }
            // Not running here: a run replays the history, record included.
            None => self.spawn(id, Control::default()),
        }
        self.get(id).await
    }

    /// Runs instance `id` in a task of its own, unless one runs it already.
    fn spawn(&self, id: &str, control: Control) {
        let Ok(mut live) = self.inner.live.lock() else {
            return;
        };
        if live.contains_key(id) {
            return;
        }
        let sender = Arc::new(watch::Sender::new(control));
        live.insert(id.to_owned(), Arc::clone(&sender));
        drop(live);
        self.count_load();
        let engine = self.clone();
        let id = id.to_owned();
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = async {
                    engine.own(&id).await;
                    engine.drive(&id, sender).await;
                } => {}
            }
            if let Ok(mut live) = engine.inner.live.lock() {
                live.remove(&id);
            }
            engine.count_load();
        });
    }

    /// Runs an instance until it ends, is suspended (then waits for a
    /// resume), or another engine takes it.
    async fn drive(&self, id: &str, control: Arc<watch::Sender<Control>>) {
        loop {
            match self.drive_once(id, &control).await {
                Ok(Pass::Ended) => {
                    self.disown(id).await;
                    return;
                }
                Ok(Pass::Parked(due)) => {
                    self.park(id, due);
                    return;
                }
                Ok(Pass::Again) => {}
                Err(EngineError::History(HistoryError::Lost)) => {
                    info!(
                        instance = id,
                        "Another engine advanced the instance; leaving it."
                    );
                    return;
                }
                Err(error) => {
                    warn!(instance = id, %error, "Running the workflow instance failed; trying again in 1 s.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One pass: replay and run.
    async fn drive_once(
        &self,
        id: &str,
        control: &Arc<watch::Sender<Control>>,
    ) -> Result<Pass, EngineError> {
        let options = &self.inner.options;
        let mut journal = Journal::load(
            Arc::clone(&self.inner.backend),
            id,
            options.max_history_records,
        )
        .await?;
        journal.notify_with(Arc::clone(&self.inner.changes));
        let Some(Record::Started {
            namespace,
            name,
            version,
            input,
            at,
        }) = journal.started().cloned()
        else {
            // Never started (a crash between the entry and the history).
            let mut view = self.get(id).await?;
            view.status = Status::Faulted;
            view.error = Some(WorkflowError::runtime("the instance never started"));
            self.write(&view, Expect::Any).await?;
            return Ok(Pass::Ended);
        };
        let mut view = self.get(id).await?;
        if let Some(end) = end_of(journal.last()) {
            apply_end(&mut view, end);
            self.write(&view, Expect::Any).await?;
            return Ok(Pass::Ended);
        }
        // What the history says an operator asked, with what was asked
        // since this task began.
        let recorded = journal.control();
        control.send_if_modified(|current| current.merge(recorded));
        let mut changes = control.subscribe();
        let now_control = *changes.borrow_and_update();
        if now_control.suspended && !now_control.cancel {
            self.set_status(&mut view, Status::Suspended).await?;
            let _ = changes.changed().await;
            return Ok(Pass::Again);
        }
        let compiled = match self.compiled(&namespace, &name, &version).await {
            Ok(compiled) => compiled,
            // Its definition no longer reads (or was removed): the instance
            // cannot go on.
            Err(EngineError::Definition(
                error @ (StoreError::Invalid(_)
                | StoreError::NotFound(_)
                | StoreError::Corrupt { .. }),
            )) => {
                let end = Record::Faulted {
                    error: WorkflowError::runtime(format!(
                        "definition {namespace}/{name}/{version}: {error}"
                    )),
                    at: now_ms(),
                };
                return self.finish(id, journal, end).await;
            }
            Err(error) => return Err(error),
        };
        view.wake_at = None;
        self.set_status(&mut view, Status::Running).await?;
        let (blocked, mut blocked_changes) = watch::channel(0usize);
        let run = Run::new(
            id.to_owned(),
            compiled,
            self.inner.env.clone(),
            journal,
            Arc::clone(control),
            blocked,
            (input, at),
        );
        let result = {
            let follow = async {
                let mut waiting = false;
                while blocked_changes.changed().await.is_ok() {
                    let now_waiting = *blocked_changes.borrow() > 0;
                    if now_waiting != waiting {
                        waiting = now_waiting;
                        let status = if waiting {
                            Status::Waiting
                        } else {
                            Status::Running
                        };
                        let _ = self.set_status(&mut view.clone(), status).await;
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                result = run.run() => result,
                () = follow => unreachable!("follow never ends"),
            }
        };
        let end = match result {
            Ok(output) => Record::Completed {
                output,
                at: now_ms(),
            },
            Err(Fault::Error(error)) if error.type_ == CANCELLED => {
                Record::Cancelled { at: now_ms() }
            }
            Err(Fault::Error(error)) => Record::Faulted {
                error,
                at: now_ms(),
            },
            Err(Fault::History(HistoryError::Full(bound))) => Record::Faulted {
                error: WorkflowError::runtime(format!(
                    "the instance's history reached its bound of {bound} records"
                )),
                at: now_ms(),
            },
            Err(Fault::History(HistoryError::Storage(
                error @ (BackendError::PayloadTooLarge { .. }
                | BackendError::InvalidArgument { .. }),
            ))) => Record::Faulted {
                error: WorkflowError::runtime(format!("recording the history: {error}")),
                at: now_ms(),
            },
            Err(Fault::Parked(due)) => {
                let mut journal = run.into_journal();
                journal.flush().await?;
                let mut view = self.get(id).await?;
                view.status = Status::Waiting;
                view.wake_at = Some(due);
                self.write(&view, Expect::Any).await?;
                return Ok(Pass::Parked(due));
            }
            Err(Fault::Suspended) => {
                let mut journal = run.into_journal();
                journal.flush().await?;
                let mut view = self.get(id).await?;
                self.set_status(&mut view, Status::Suspended).await?;
                loop {
                    let now = *changes.borrow_and_update();
                    if !now.suspended || now.cancel {
                        return Ok(Pass::Again);
                    }
                    if changes.changed().await.is_err() {
                        return Ok(Pass::Ended);
                    }
                }
            }
            Err(Fault::History(error)) => return Err(error.into()),
        };
        self.finish(id, run.into_journal(), end).await
    }

    /// Records the instance's `end` after what is pending, and its entry
    /// after that.
    async fn finish(
        &self,
        id: &str,
        mut journal: Journal,
        end: Record,
    ) -> Result<Pass, EngineError> {
        // The end goes out with what is pending, in one append.
        journal.push(end.clone());
        match journal.flush().await {
            Ok(()) => {}
            Err(HistoryError::Lost) => return Err(HistoryError::Lost.into()),
            // What did not fit is not written; the end is, alone.
            Err(_) => {
                journal = Journal::load(Arc::clone(&self.inner.backend), id, usize::MAX).await?;
                journal.lift_bound();
                journal.record(end.clone()).await?;
            }
        }
        let mut view = self.get(id).await?;
        apply_end(&mut view, &end);
        self.inner.env.metrics.ended(view.status.as_str());
        self.write(&view, Expect::Any).await?;
        Ok(Pass::Ended)
    }

    pub(crate) async fn compiled(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Arc<Compiled>, EngineError> {
        let key = format!("{namespace}/{name}/{version}");
        if let Some(compiled) = self
            .inner
            .compiled
            .lock()
            .ok()
            .and_then(|compiled| compiled.get(&key).cloned())
        {
            return Ok(compiled);
        }
        let stored = self.inner.definitions.get(namespace, name, version).await?;
        let definition = stored.definition().map_err(StoreError::from)?;
        let compiled = Compiled::new(definition);
        if let Ok(mut cache) = self.inner.compiled.lock() {
            cache.insert(key, Arc::clone(&compiled));
        }
        Ok(compiled)
    }

    async fn set_status(&self, view: &mut InstanceView, status: Status) -> Result<(), EngineError> {
        if view.status == status {
            return Ok(());
        }
        view.status = status;
        self.write(view, Expect::Any).await
    }

    async fn read(&self, id: &str) -> Result<Option<InstanceView>, EngineError> {
        let Some(entry) = self.inner.backend.kv_get(INSTANCES_BUCKET, id).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&entry.value).ok())
    }

    async fn write(&self, view: &InstanceView, expect: Expect) -> Result<(), EngineError> {
        let value = serde_json::to_vec(view)
            .map_err(|error| BackendError::invalid("instance", error.to_string()))?;
        self.inner
            .backend
            .kv_put(
                INSTANCES_BUCKET,
                &view.instance_id,
                Bytes::from(value),
                expect,
            )
            .await?;
        self.inner.changes.send_modify(|count| *count += 1);
        Ok(())
    }

    async fn ids(&self) -> Result<Vec<String>, EngineError> {
        let mut ids = Vec::new();
        loop {
            let page = self
                .inner
                .backend
                .kv_keys(INSTANCES_BUCKET, "", ids.last().map(String::as_str), 1000)
                .await?;
            let full = page.len() == 1000;
            ids.extend(page);
            if !full {
                return Ok(ids);
            }
        }
    }
}

/// How one pass of a run ended.
enum Pass {
    /// The instance ended.
    Ended,
    /// Run it again (resumed, or cancelled while suspended).
    Again,
    /// Parked on a timer due then.
    Parked(i64),
}

/// Filters of [`Engine::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this name.
    pub name: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only instances older than this one (a page's last id).
    pub before: Option<String>,
    /// Only instances started at or after this time (ms since the epoch).
    pub started_after: Option<i64>,
    /// Only instances started before this time (ms since the epoch).
    pub started_before: Option<i64>,
}

impl ListFilter {
    fn keeps(&self, view: &InstanceView) -> bool {
        let started = herald_types::parse_rfc3339_ms(&view.started_at).unwrap_or(0);
        self.namespace
            .as_deref()
            .is_none_or(|namespace| namespace == view.namespace)
            && self.name.as_deref().is_none_or(|name| name == view.name)
            && self.status.is_none_or(|status| status == view.status)
            && self.started_after.is_none_or(|after| started >= after)
            && self.started_before.is_none_or(|before| started < before)
    }
}

fn end_of(record: Option<&Record>) -> Option<&Record> {
    record.filter(|record| {
        matches!(
            record,
            Record::Completed { .. } | Record::Faulted { .. } | Record::Cancelled { .. }
        )
    })
}

fn apply_end(view: &mut InstanceView, end: &Record) {
    match end {
        Record::Completed { output, at } => {
            view.status = Status::Completed;
            view.output = Some(output.clone());
            view.ended_at = Some(format_rfc3339_ms(*at));
        }
        Record::Faulted { error, at } => {
            view.status = Status::Faulted;
            view.error = Some(error.clone());
            view.ended_at = Some(format_rfc3339_ms(*at));
        }
        Record::Cancelled { at } => {
            view.status = Status::Cancelled;
            view.ended_at = Some(format_rfc3339_ms(*at));
        }
        _ => {}
    }
}

/// Task runs from history records, in the order they began.
fn steps(records: &[Record]) -> Vec<StepView> {
    let mut order: Vec<String> = Vec::new();
    let mut by_key: HashMap<String, StepView> = HashMap::new();
    fn step<'a>(
        order: &mut Vec<String>,
        by_key: &'a mut HashMap<String, StepView>,
        key: &str,
        name: &str,
    ) -> &'a mut StepView {
        if !by_key.contains_key(key) {
            order.push(key.to_owned());
        }
        by_key.entry(key.to_owned()).or_insert_with(|| StepView {
            task: name.to_owned(),
            path: key
                .rsplit_once('#')
                .map_or(key, |(path, _)| path)
                .to_owned(),
            status: "running",
            input: None,
            output: None,
            error: None,
            attempt: 1,
            started_at: None,
            ended_at: None,
        })
    }
    for record in records {
        match record {
            Record::TaskStarted {
                key,
                name,
                input,
                attempt,
                at,
            } => {
                let step = step(&mut order, &mut by_key, key, name);
                step.input = Some(input.clone());
                step.attempt = *attempt;
                step.started_at
                    .get_or_insert_with(|| format_rfc3339_ms(*at));
            }
            Record::TaskCompleted {
                key,
                name,
                output,
                started_at,
                at,
                ..
            } => {
                let step = step(&mut order, &mut by_key, key, name);
                step.status = "completed";
                step.output = Some(output.clone());
                step.started_at
                    .get_or_insert_with(|| format_rfc3339_ms(*started_at));
                step.ended_at = Some(format_rfc3339_ms(*at));
            }
            Record::TaskFaulted {
                key,
                name,
                error,
                started_at,
                at,
            } => {
                let step = step(&mut order, &mut by_key, key, name);
                step.status = "faulted";
                step.error = Some(error.clone());
                step.started_at
                    .get_or_insert_with(|| format_rfc3339_ms(*started_at));
                step.ended_at = Some(format_rfc3339_ms(*at));
            }
            Record::TaskRetried {
                key, name, attempt, ..
            } => {
                step(&mut order, &mut by_key, key, name).attempt = *attempt;
            }
            _ => {}
        }
    }
    order
        .into_iter()
        .filter_map(|key| by_key.remove(&key))
        .collect()
}
