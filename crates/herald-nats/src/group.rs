//! Consumer groups on the NATS backend: `herald-groups`' runtime (the same
//! state machines as on the embedded backend) on one node per group at a
//! time, its owner, with the group's state in key-value buckets.
//!
//! - **Ownership.** A lease in `groups.owners` (node id, expiry), taken
//!   with compare-and-set once absent or expired. The owner renews it with
//!   every state write: each write is one atomic batch that ends with the
//!   lease expecting its last revision, so a node that lost its lease (it
//!   expired and another node took it) cannot overwrite its successor's
//!   state; its batch fails whole and it stops running the group. An owner
//!   that cannot renew (NATS unreachable) stops serving calls once its
//!   lease would have expired, but keeps the group's state in memory: its
//!   next write that still finds the lease's revision (nobody took over)
//!   persists it and serving resumes with nothing lost. A write that finds
//!   the lease moved but still naming this node was its own, its answer
//!   lost (a timeout): the owner writes on from that revision.
//! - **Calls.** Every call goes to the owner: run here if this node owns
//!   the group, else forwarded by request/reply on the subject only the
//!   owner subscribes to ([`crate::names::Names::group_subject`]). No
//!   responders (no owner, or one that died) means the lease is free or
//!   will be at its expiry: the caller takes it then.
//! - **State.** `groups` holds each group's settings, `groups.state` its
//!   runtime's snapshot with the dead-letter counter, `groups.dead` its
//!   dead letters (`<topic>/<group>/<created_at>/<id>`, so a group made
//!   again under the name never sees its predecessor's), `groups.copies`
//!   the dead letters still to copy to the topic's dead-letter topic. A
//!   flush writes a group's snapshot with the dead letters of its outbox
//!   in the batch that renews the lease: the persisted state never has an
//!   event finished without its dead letter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use herald_backend::{
    AckDurability, AckOutcome, CommitRequest, DeadLetter, Error, Expect, FetchRequest,
    FetchResponse, GroupInfo, GroupStatus, PartitionOffset, Result, StartPosition,
};
use herald_groups::{
    Budget, DirtyState, Flusher, GroupRuntime, Settle, Snapshot, Source, read_one,
};
use herald_types::{GroupName, TopicName};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::MAX_BATCH;
use crate::kv::KvWrite;
use crate::source::PartitionSource;
use crate::topics::now_ms;
use crate::{Inner, unavailable};

/// Each group's settings ([`GroupInfo`]), at `<topic>/<group>`.
pub(crate) const GROUPS_BUCKET: &str = "groups";
/// Each group's runtime state ([`StateRecord`]).
pub(crate) const STATE_BUCKET: &str = "groups.state";
/// Each group's owner ([`Lease`]).
const OWNERS_BUCKET: &str = "groups.owners";
/// Dead letters ([`DeadRecord`]), at `<topic>/<group>/<created_at>/<id>`.
const DEAD_BUCKET: &str = "groups.dead";
/// Dead letters still to copy to the dead-letter topic (same keys).
const COPIES_BUCKET: &str = "groups.copies";

/// How often owned groups' timers run (lease expiry, silent members).
const TICK: Duration = Duration::from_millis(100);
/// How often changed group state is written.
const FLUSH: Duration = Duration::from_millis(50);
/// How long a caller waits for a group's owner to answer or its lease to
/// free, besides the call's own time.
const ROUTE_PATIENCE: Duration = Duration::from_secs(30);

/// The key of a group in the buckets.
pub(crate) fn group_key(topic: &TopicName, group: &GroupName) -> String {
    format!("{topic}/{group}")
}

#[derive(Debug, Serialize, Deserialize)]
struct StateRecord {
    snapshot: Snapshot,
    /// The next dead letter's id.
    next_dead: u64,
    /// Dead letters listed.
    dead: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    node: String,
    /// Ms since the Unix epoch.
    expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeadRecord {
    original: PartitionOffset,
    reason: String,
    attempts: u32,
    dead_at: i64,
}

/// A new group's first state record.
pub(crate) fn initial_state(snapshot: Snapshot) -> Result<Bytes> {
    encode(&StateRecord {
        snapshot,
        next_dead: 0,
        dead: 0,
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|error| Error::Corrupt {
            detail: format!("group record: {error}"),
        })
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|error| Error::Corrupt {
        detail: format!("{what}: {error}"),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call on a group, as its owner runs it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Call {
    Status,
    Fetch(FetchRequest),
    Settle {
        kind: Settle,
        ids: Vec<String>,
        /// Nack: the delay; extend: the new ack wait.
        ms: Option<u64>,
        reason: String,
        durability: AckDurability,
    },
    Commit(CommitRequest),
    Reset(StartPosition),
    Leave(String),
    DeadLetters(usize),
    Redrive(Option<Vec<u64>>),
    /// Take the stored settings (after a change of them).
    Reload,
}

impl Call {
    /// How long the call may take at the owner.
    fn budget(&self) -> Duration {
        match self {
            Self::Fetch(request) => Duration::from_millis(request.wait_ms),
            _ => Duration::ZERO,
        }
    }
}

/// What a call answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Status(Box<GroupStatus>),
    Fetch(FetchResponse),
    Outcome(AckOutcome),
    Done,
    DeadLetters(Vec<DeadLetter>),
    Count(u64),
}

/// A forwarded call's answer on the wire.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Ok(Reply),
    Err(WireError),
    /// This node does not own the group (any more): route again.
    NotOwner,
}

/// The errors a group call returns, on the wire.
#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    TopicNotFound {
        topic: String,
    },
    GroupNotFound {
        topic: String,
        group: String,
    },
    InvalidArgument {
        field: String,
        reason: String,
    },
    PartitionNotFound {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    OffsetOutOfRange {
        partition: u32,
        offset: u64,
        start: u64,
    },
    StaleGeneration {
        generation: u64,
        current: u64,
    },
    Corrupt {
        detail: String,
    },
    ShuttingDown,
    Unavailable {
        detail: String,
    },
}

impl From<&Error> for WireError {
    fn from(error: &Error) -> Self {
        match error.clone() {
            Error::TopicNotFound { topic } => Self::TopicNotFound { topic },
            Error::GroupNotFound { topic, group } => Self::GroupNotFound { topic, group },
            Error::InvalidArgument { field, reason } => Self::InvalidArgument { field, reason },
            Error::PartitionNotFound {
                topic,
                partition,
                partitions,
            } => Self::PartitionNotFound {
                topic,
                partition,
                partitions,
            },
            Error::OffsetOutOfRange {
                partition,
                offset,
                start,
            } => Self::OffsetOutOfRange {
                partition,
                offset,
                start,
            },
            Error::StaleGeneration {
                generation,
                current,
            } => Self::StaleGeneration {
                generation,
                current,
            },
            Error::Corrupt { detail } => Self::Corrupt { detail },
            Error::ShuttingDown => Self::ShuttingDown,
            other => Self::Unavailable {
                detail: other.to_string(),
            },
        }
    }
}

impl From<WireError> for Error {
    fn from(error: WireError) -> Self {
        match error {
            WireError::TopicNotFound { topic } => Self::TopicNotFound { topic },
            WireError::GroupNotFound { topic, group } => Self::GroupNotFound { topic, group },
            WireError::InvalidArgument { field, reason } => Self::InvalidArgument { field, reason },
            WireError::PartitionNotFound {
                topic,
                partition,
                partitions,
            } => Self::PartitionNotFound {
                topic,
                partition,
                partitions,
            },
            WireError::OffsetOutOfRange {
                partition,
                offset,
                start,
            } => Self::OffsetOutOfRange {
                partition,
                offset,
                start,
            },
            WireError::StaleGeneration {
                generation,
                current,
            } => Self::StaleGeneration {
                generation,
                current,
            },
            WireError::Corrupt { detail } => Self::Corrupt { detail },
            WireError::ShuttingDown => Self::ShuttingDown,
            WireError::Unavailable { detail } => Self::Unavailable { detail },
        }
    }
}

/// The groups this node runs, and the tasks that keep them.
#[derive(Debug)]
pub(crate) struct GroupHost {
    /// This process's id in leases.
    node: String,
    lease_ms: i64,
    budget: Budget,
    owned: Mutex<HashMap<String, Arc<Owned>>>,
    /// One acquisition at a time on this node.
    acquiring: tokio::sync::Mutex<()>,
    flusher: Flusher,
    /// Wakes the dead-letter copier.
    copies_wanted: tokio::sync::Notify,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl GroupHost {
    pub(crate) fn new(lease: Duration, budget: Budget) -> Self {
        Self {
            node: uuid_like(),
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
            budget,
            owned: Mutex::new(HashMap::new()),
            acquiring: tokio::sync::Mutex::new(()),
            flusher: Flusher::new(),
            copies_wanted: tokio::sync::Notify::new(),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    fn local(&self, key: &str) -> Option<Arc<Owned>> {
        lock(&self.owned).get(key).cloned()
    }

    fn all(&self) -> Vec<Arc<Owned>> {
        lock(&self.owned).values().cloned().collect()
    }

    /// Stops running `owned` here (its lease lost, or the group deleted).
    fn forget(&self, owned: &Owned, why: &str) {
        let mut map = lock(&self.owned);
        if map
            .get(&owned.key)
            .is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), owned))
        {
            map.remove(&owned.key);
            owned.server.abort();
            info!(group = %owned.key, why, "No longer running this group here.");
        }
    }
}

/// A random id for this process (a UUIDv7 as event ids make them).
fn uuid_like() -> String {
    herald_types::Event::generate_id(now_ms())
}

/// A group this node owns.
#[derive(Debug)]
struct Owned {
    key: String,
    topic: TopicName,
    group: GroupName,
    /// The group's `created_at`: part of its dead letters' keys.
    created_at: i64,
    runtime: Arc<GroupRuntime>,
    source: Arc<PartitionSource>,
    lease: Mutex<LeaseState>,
    /// The next dead letter's id and how many are listed, as persisted.
    dead: Mutex<(u64, u64)>,
    /// One state write at a time (the flush task, and a call renewing a
    /// stale lease): two would expect the same lease revision, and the
    /// loser would take itself for deposed.
    writing: tokio::sync::Mutex<()>,
    server: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy)]
struct LeaseState {
    revision: u64,
    /// When the lease was last written (ms since the Unix epoch).
    renewed_at: i64,
}

impl Owned {
    fn dead_prefix(&self) -> String {
        format!("{}/{}/", self.key, self.created_at)
    }

    fn dead_key(&self, id: u64) -> String {
        format!("{}{id:020}", self.dead_prefix())
    }

    /// Whether the lease still holds here: renewed less than a lease ago
    /// (less a margin for clock and transit).
    fn valid(&self, lease_ms: i64) -> bool {
        let renewed_at = lock(&self.lease).renewed_at;
        now_ms() < renewed_at + lease_ms - lease_ms / 5
    }
}

/// Where a call goes.
enum Route {
    Here(Arc<Owned>),
    /// Another node holds the lease until then.
    There(i64),
    /// The lease changed while it was read: look again.
    Again,
}

impl Inner {
    /// Starts the group tasks (flush, timers, dead-letter copies).
    pub(crate) fn start_group_tasks(self: &Arc<Self>) {
        let mut tasks = lock(&self.groups.tasks);
        let inner = Arc::clone(self);
        tasks.push(tokio::spawn(async move { inner.flush_loop().await }));
        let inner = Arc::clone(self);
        tasks.push(tokio::spawn(async move { inner.timer_loop().await }));
        let inner = Arc::clone(self);
        tasks.push(tokio::spawn(async move { inner.copy_loop().await }));
    }

    /// At shutdown: a last flush, then every lease given up, so another
    /// node (or this one, restarted) takes the groups over at once.
    pub(crate) async fn stop_groups(&self) -> Result<()> {
        self.groups.cancel.cancel();
        let tasks: Vec<JoinHandle<()>> = lock(&self.groups.tasks).drain(..).collect();
        // Each loop returns at its next turn once cancelled; none is aborted,
        // so a state write in flight completes and its lease revision is
        // known to the last flush below (an aborted one would leave the
        // lease a revision ahead of what this node expects).
        for task in tasks {
            let _ = task.await;
        }
        let flushed = self.flush_all().await;
        self.groups.flusher.close(flushed.clone());
        for owned in self.groups.all() {
            let revision = lock(&owned.lease).revision;
            if let Err(error) = self
                .kv_delete(OWNERS_BUCKET, &owned.key, Expect::Revision(revision))
                .await
            {
                warn!(group = %owned.key, %error, "Could not give up a group's lease; another node takes it once it expires.");
            }
            self.groups.forget(&owned, "shutting down");
        }
        flushed
    }

    /// Waits until the state of the groups run here is persisted.
    pub(crate) async fn flush_group_state(&self) -> Result<()> {
        self.groups.flusher.persist_now().await
    }

    /// Runs `call` on the group's owner: here, or forwarded to it.
    pub(crate) async fn group_call(
        self: &Arc<Self>,
        topic: &TopicName,
        group: &GroupName,
        call: Call,
    ) -> Result<Reply> {
        let key = group_key(topic, group);
        let deadline = Instant::now() + ROUTE_PATIENCE + call.budget();
        let payload = encode(&call)?;
        let mut call = Some(call);
        loop {
            self.check_open()?;
            let route = match self.groups.local(&key) {
                Some(owned) => Route::Here(owned),
                None => self.route(topic, group, &key).await?,
            };
            match route {
                Route::Here(owned) => {
                    if !owned.valid(self.groups.lease_ms) {
                        // Renewals failed (NATS unreachable, a leader
                        // election): renew now. Still the lease's revision
                        // → serving again with nothing lost; another node
                        // took it → forgotten here, route again.
                        // In a task of its own: a caller that goes away
                        // must not cut a state write in half.
                        let (inner, flushing) = (Arc::clone(self), Arc::clone(&owned));
                        let renewed = tokio::spawn(async move { inner.flush(&flushing).await })
                            .await
                            .unwrap_or_else(|error| Err(unavailable("group state", error)));
                        if let Err(error) = renewed {
                            if Instant::now() >= deadline {
                                return Err(error);
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        continue;
                    }
                    let Some(call) = call.take() else {
                        return Err(unavailable("group call", "lost"));
                    };
                    return self.run(&owned, call).await;
                }
                Route::Again => continue,
                Route::There(expires_at) => {
                    let timeout =
                        self.timeout() + call.as_ref().map_or(Duration::ZERO, Call::budget);
                    match self.forward(&key, payload.clone(), timeout).await? {
                        Some(Answer::Ok(reply)) => return Ok(reply),
                        Some(Answer::Err(error)) => return Err(error.into()),
                        Some(Answer::NotOwner) | None => {
                            if Instant::now() >= deadline {
                                return Err(unavailable(
                                    "group call",
                                    format!("no node serves group {key:?}"),
                                ));
                            }
                            // The owner is gone or going: its lease frees
                            // at its expiry (or sooner, given up).
                            let wait = (expires_at - now_ms()).clamp(20, 200);
                            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                        }
                    }
                }
            }
        }
    }

    /// Sends `payload` to the group's owner; `None` if nobody answers.
    async fn forward(
        &self,
        key: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Option<Answer>> {
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        match self
            .client
            .send_request(self.names.group_subject(key), request)
            .await
        {
            Ok(message) => decode(&message.payload, "a forwarded group call's answer").map(Some),
            Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(None),
            Err(error) => Err(unavailable("forwarded group call", error)),
        }
    }

    /// Who runs group `key`: this node (taking the lease if it is free),
    /// or another until its lease's expiry.
    async fn route(
        self: &Arc<Self>,
        topic: &TopicName,
        group: &GroupName,
        key: &str,
    ) -> Result<Route> {
        let _one = self.groups.acquiring.lock().await;
        if let Some(owned) = self.groups.local(key) {
            return Ok(Route::Here(owned));
        }
        let Some(entry) = self.kv_get(GROUPS_BUCKET, key).await? else {
            // The topic's absence is the better answer.
            self.topic(topic).await?;
            return Err(Error::GroupNotFound {
                topic: topic.to_string(),
                group: group.to_string(),
            });
        };
        let info: GroupInfo = decode(&entry.value, "group settings")?;
        let now = now_ms();
        let expect = match self.kv_get(OWNERS_BUCKET, key).await? {
            Some(current) => {
                let lease: Lease = decode(&current.value, "group lease")?;
                if lease.node != self.groups.node && lease.expires_at > now {
                    return Ok(Route::There(lease.expires_at));
                }
                Expect::Revision(current.revision)
            }
            None => Expect::Absent,
        };
        let lease = encode(&Lease {
            node: self.groups.node.clone(),
            expires_at: now + self.groups.lease_ms,
        })?;
        let revision = match self.kv_put(OWNERS_BUCKET, key, lease, expect).await {
            Ok(revision) => revision,
            Err(Error::RevisionMismatch { .. }) => return Ok(Route::Again),
            Err(error) => return Err(error),
        };
        let owned = self
            .take_over(
                topic,
                group,
                key,
                info,
                LeaseState {
                    revision,
                    renewed_at: now,
                },
            )
            .await;
        match owned {
            Ok(owned) => Ok(Route::Here(owned)),
            Err(error) => {
                // Give the lease back: nobody runs the group until then.
                let _ = self
                    .kv_delete(OWNERS_BUCKET, key, Expect::Revision(revision))
                    .await;
                Err(error)
            }
        }
    }

    /// Loads the group's state and starts running it here (its lease just
    /// taken), answering forwarded calls from now on.
    async fn take_over(
        self: &Arc<Self>,
        topic: &TopicName,
        group: &GroupName,
        key: &str,
        info: GroupInfo,
        lease: LeaseState,
    ) -> Result<Arc<Owned>> {
        let runtime_topic = self.topic(topic).await?;
        let source = Arc::new(PartitionSource::open(Arc::clone(self), runtime_topic).await?);
        let state = match self.kv_get(STATE_BUCKET, key).await? {
            Some(entry) => Some(decode::<StateRecord>(&entry.value, "group state")?),
            None => None,
        };
        let (snapshot, dead) = match state {
            Some(record) => (Some(record.snapshot), (record.next_dead, record.dead)),
            None => (None, (0, 0)),
        };
        let starts = match snapshot {
            Some(_) => Vec::new(),
            None => self.start_offsets(topic, info.spec.start).await?,
        };
        let created_at = info.created_at;
        let runtime = Arc::new(GroupRuntime::new(
            key.to_owned(),
            info,
            self.groups.budget,
            &starts,
            snapshot,
        ));
        // NATS streams lose nothing acknowledged, but a partition stream
        // made again (deleted by hand) may be shorter than the state says.
        for (partition, from, to) in runtime.clamp(&source.end_offsets(), now_ms()) {
            warn!(group = %key, partition, from, to, "Group state was past its partition's end; moved back to the end.");
        }
        let calls = self
            .client
            .subscribe(self.names.group_subject(key))
            .await
            .map_err(|error| unavailable("subscribe", error))?;
        // Every write of the group's settings (a trigger only: the write
        // may have been refused, so the stored settings are read again).
        let settings = self
            .client
            .subscribe(self.names.kv_subject(GROUPS_BUCKET, key))
            .await
            .map_err(|error| unavailable("subscribe", error))?;
        let owned = Arc::new_cyclic(|weak: &Weak<Owned>| {
            let server = tokio::spawn(serve(Arc::downgrade(self), weak.clone(), calls, settings));
            Owned {
                key: key.to_owned(),
                topic: topic.clone(),
                group: group.clone(),
                created_at,
                runtime,
                source,
                lease: Mutex::new(lease),
                dead: Mutex::new(dead),
                writing: tokio::sync::Mutex::new(()),
                server,
            }
        });
        lock(&self.groups.owned).insert(key.to_owned(), Arc::clone(&owned));
        // A predecessor may have left copies to publish.
        self.groups.copies_wanted.notify_one();
        info!(group = %key, node = %self.groups.node, "Running this group here.");
        Ok(owned)
    }

    /// Where a group starts (or is reset to) in each partition.
    pub(crate) async fn start_offsets(
        &self,
        topic: &TopicName,
        start: StartPosition,
    ) -> Result<Vec<u64>> {
        let runtime = self.topic(topic).await?;
        let mut starts = Vec::with_capacity(runtime.streams.len());
        for (partition, stream) in (0u32..).zip(&runtime.streams) {
            let extent = self.partition_state(&runtime, partition, stream).await?;
            let end = extent.last_sequence;
            let first = extent.first_sequence.saturating_sub(1).min(end);
            starts.push(match start {
                StartPosition::Earliest => first,
                StartPosition::Latest => end,
                StartPosition::Offset { offset } => offset.clamp(first, end),
                StartPosition::Time { time_ms } => {
                    self.offset_for_time(topic, partition, time_ms).await?
                }
            });
        }
        Ok(starts)
    }

    /// Runs `call` on a group this node owns.
    async fn run(&self, owned: &Owned, call: Call) -> Result<Reply> {
        let runtime = &owned.runtime;
        match call {
            Call::Status => {
                // What is stored is what is served, even after a settings
                // change whose caller went away before telling the owner.
                self.reload_settings(owned).await?;
                let (members, partitions, in_flight, pending, generation) =
                    runtime.status(&owned.source.end_offsets(), now_ms());
                let dead_letters = lock(&owned.dead).1;
                Ok(Reply::Status(Box::new(GroupStatus {
                    info: runtime.info(),
                    members,
                    partitions,
                    in_flight,
                    pending,
                    dead_letters,
                    generation,
                    counters: runtime.counters(),
                })))
            }
            Call::Fetch(request) => {
                let (response, buried) = runtime.fetch(&*owned.source, &request, now_ms).await?;
                if buried {
                    self.groups.flusher.kick();
                }
                Ok(Reply::Fetch(response))
            }
            Call::Settle {
                kind,
                ids,
                ms,
                reason,
                durability,
            } => {
                let now = now_ms();
                let (outcome, buried) = runtime.settle(&ids, kind, |state, id| match kind {
                    Settle::Ack => (state.ack(id, now), None),
                    Settle::Nack => state.nack(id, ms, now),
                    Settle::Extend => (state.extend(id, ms, now), None),
                    Settle::Reject => {
                        let effect = state.reject(id, &reason, now);
                        (effect.is_some(), effect)
                    }
                });
                let sync = runtime.ack_durability().max(durability) == AckDurability::Sync;
                if sync || buried {
                    match self.groups.flusher.persist_now().await {
                        Ok(()) => {}
                        Err(error) if sync => return Err(error),
                        Err(error) => {
                            warn!(group = %owned.key, %error, "Dead letters not recorded yet; the next flush retries.");
                        }
                    }
                }
                Ok(Reply::Outcome(outcome))
            }
            Call::Commit(request) => {
                let offsets: Vec<(u32, u64)> = request
                    .offsets
                    .iter()
                    .map(|entry| (entry.partition, entry.offset))
                    .collect();
                runtime.commit(
                    &request.member,
                    request.generation,
                    &offsets,
                    &owned.source.end_offsets(),
                )?;
                self.groups.flusher.persist_now().await?;
                Ok(Reply::Done)
            }
            Call::Reset(to) => {
                let starts = self.start_offsets(&owned.topic, to).await?;
                runtime.reset(&starts);
                self.groups.flusher.persist_now().await?;
                Ok(Reply::Done)
            }
            Call::Leave(member) => {
                runtime.leave(&member, now_ms());
                Ok(Reply::Done)
            }
            Call::DeadLetters(limit) => {
                let keys = self
                    .kv_keys(DEAD_BUCKET, &owned.dead_prefix(), None, limit)
                    .await?;
                let mut letters = Vec::with_capacity(keys.len());
                for (id, record) in self.dead_records(owned, keys).await? {
                    letters.push(DeadLetter {
                        id,
                        event: read_one(&*owned.source, record.original).await?,
                        reason: record.reason,
                        attempts: record.attempts,
                        original: record.original,
                        dead_at: record.dead_at,
                    });
                }
                Ok(Reply::DeadLetters(letters))
            }
            Call::Redrive(ids) => {
                let _one_at_a_time = runtime.redriving.lock().await;
                let keys = match ids {
                    Some(ids) => ids.iter().map(|&id| owned.dead_key(id)).collect(),
                    None => self.all_keys(DEAD_BUCKET, &owned.dead_prefix()).await?,
                };
                let records = self.dead_records(owned, keys).await?;
                let mut events = Vec::with_capacity(records.len());
                let mut listed = Vec::with_capacity(records.len());
                for (id, record) in records {
                    listed.push(id);
                    // Gone from the log: it leaves the list, with nothing
                    // to deliver.
                    if let Some(event) = read_one(&*owned.source, record.original).await? {
                        events.push(event);
                    }
                }
                let count = runtime.redrive(events, listed, now_ms());
                self.groups.flusher.persist_now().await?;
                Ok(Reply::Count(count))
            }
            Call::Reload => {
                self.reload_settings(owned).await?;
                Ok(Reply::Done)
            }
        }
    }

    /// Takes the group's stored settings, if they changed; a group whose
    /// settings are gone (deleted, perhaps made again) stops running here.
    async fn reload_settings(&self, owned: &Owned) -> Result<()> {
        let stored = match self.kv_get(GROUPS_BUCKET, &owned.key).await? {
            Some(entry) => Some(decode::<GroupInfo>(&entry.value, "group settings")?),
            None => None,
        };
        match stored {
            Some(stored) if stored.created_at == owned.created_at => {
                if stored.spec != owned.runtime.info().spec {
                    owned.runtime.set_spec(stored.spec);
                }
                Ok(())
            }
            _ => {
                self.groups.forget(owned, "deleted");
                Err(Error::GroupNotFound {
                    topic: owned.topic.to_string(),
                    group: owned.group.to_string(),
                })
            }
        }
    }

    /// The dead letters at `keys` of `owned` that exist, with their ids.
    async fn dead_records(
        &self,
        owned: &Owned,
        keys: Vec<String>,
    ) -> Result<Vec<(u64, DeadRecord)>> {
        let prefix = owned.dead_prefix();
        let mut records = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(id) = key
                .strip_prefix(&prefix)
                .and_then(|id| id.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(entry) = self.kv_get(DEAD_BUCKET, &key).await? {
                records.push((id, decode(&entry.value, "dead letter")?));
            }
        }
        Ok(records)
    }

    /// Every key of `bucket` under `prefix`.
    async fn all_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        self.kv_keys(bucket, prefix, None, usize::MAX).await
    }

    /// Deletes everything of group `key` that outlives a delete of its
    /// settings: its dead letters and copies (best effort; their keys
    /// carry the group's creation time, so a group made again under the
    /// name never sees them).
    pub(crate) async fn forget_group_rows(&self, key: &str, created_at: i64) {
        let prefix = format!("{key}/{created_at}/");
        for bucket in [DEAD_BUCKET, COPIES_BUCKET] {
            let rows = match self.all_keys(bucket, &prefix).await {
                Ok(keys) => keys,
                Err(error) => {
                    warn!(group = %key, %error, "Could not list a deleted group's dead letters; they stay as garbage.");
                    continue;
                }
            };
            for chunk in rows.chunks(MAX_BATCH) {
                let entries = chunk
                    .iter()
                    .map(|row| (bucket.to_owned(), row.clone()))
                    .collect();
                if let Err(error) = self.kv_delete_many(entries).await {
                    warn!(group = %key, %error, "Could not delete a deleted group's dead letters; they stay as garbage.");
                }
            }
        }
    }

    /// Deletes group `key`'s settings (if still at `revision`), state and
    /// lease in one batch; `false` if the settings changed meanwhile.
    pub(crate) async fn delete_group_rows(&self, key: &str, revision: u64) -> Result<bool> {
        let delete = |bucket, expect| KvWrite {
            bucket,
            key: key.to_owned(),
            value: None,
            expect,
        };
        let written = self
            .kv_write_many(vec![
                delete(STATE_BUCKET, Expect::Any),
                delete(OWNERS_BUCKET, Expect::Any),
                delete(GROUPS_BUCKET, Expect::Revision(revision)),
            ])
            .await?;
        Ok(written.is_some())
    }

    /// Deletes every group of `topic` (the topic is being deleted).
    pub(crate) async fn forget_groups(&self, topic: &TopicName) -> Result<()> {
        for key in self.all_keys(GROUPS_BUCKET, &format!("{topic}/")).await? {
            let Some(entry) = self.kv_get(GROUPS_BUCKET, &key).await? else {
                continue;
            };
            let created_at = decode::<GroupInfo>(&entry.value, "group settings")
                .map_or(0, |info| info.created_at);
            if self.delete_group_rows(&key, entry.revision).await? {
                self.release_here(&key);
                self.forget_group_rows(&key, created_at).await;
            }
        }
        Ok(())
    }

    /// Stops running group `key` here, if this node does.
    pub(crate) fn release_here(&self, key: &str) {
        if let Some(owned) = self.groups.local(key) {
            self.groups.forget(&owned, "deleted");
        }
    }

    // ------------------------------------------------------------ flush --

    async fn flush_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(FLUSH);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.groups.cancel.cancelled() => return,
                _ = ticker.tick() => {}
                () = self.groups.flusher.asked() => {}
            }
            let _ = self.groups.flusher.round(self.flush_all()).await;
        }
    }

    /// Writes every owned group's changes (and renews leases due).
    async fn flush_all(&self) -> Result<()> {
        let owned = self.groups.all();
        let results = futures::future::join_all(owned.iter().map(|owned| self.flush(owned))).await;
        results.into_iter().collect::<Result<Vec<()>>>().map(drop)
    }

    /// Writes `owned`'s changes with its outbox, renewing its lease in the
    /// same batch; renews the lease alone when it is a third through.
    async fn flush(&self, owned: &Owned) -> Result<()> {
        let _one_at_a_time = owned.writing.lock().await;
        let now = now_ms();
        let lease = *lock(&owned.lease);
        let renew = now - lease.renewed_at >= self.groups.lease_ms / 3;
        let dirty = owned.runtime.take_dirty();
        if dirty.is_none() && !renew {
            return Ok(());
        }
        let mut result = self.write_state(owned, dirty.as_ref(), lease, now).await;
        if let Ok(None) = result
            && let Some(revision) = self.lease_still_here(owned, lease.revision).await
        {
            // A write of ours whose answer was lost (a timeout) landed: the
            // lease moved on without leaving this node. Write again from
            // the revision it left.
            let lease = LeaseState { revision, ..lease };
            result = self.write_state(owned, dirty.as_ref(), lease, now).await;
        }
        match result {
            Ok(Some((revision, dead, copies))) => {
                *lock(&owned.lease) = LeaseState {
                    revision,
                    renewed_at: now,
                };
                *lock(&owned.dead) = dead;
                if copies {
                    self.groups.copies_wanted.notify_one();
                }
                Ok(())
            }
            Ok(None) => {
                // Another node took the lease: its state wins, and what
                // changed here since the last write is void — callers
                // waiting for this write must not hear it succeeded.
                self.groups.forget(owned, "lease taken by another node");
                Err(unavailable(
                    "group state",
                    format!(
                        "group {:?} moved to another node; changes made here since its last write are void",
                        owned.key
                    ),
                ))
            }
            Err(error) => {
                // Kept, not served while the lease is stale (see `valid`):
                // a later write that still finds the lease's revision
                // persists everything; one that does not drops it.
                if let Some(DirtyState { outbox, .. }) = dirty {
                    owned.runtime.restore_outbox(outbox);
                }
                Err(error)
            }
        }
    }

    /// The lease's current revision if this node still holds it at a later
    /// revision than `expected` (only this node writes its own id into the
    /// lease, so such a revision is one of its own writes).
    async fn lease_still_here(&self, owned: &Owned, expected: u64) -> Option<u64> {
        let entry = self.kv_get(OWNERS_BUCKET, &owned.key).await.ok()??;
        let lease: Lease = decode(&entry.value, "group lease").ok()?;
        (lease.node == self.groups.node && entry.revision > expected).then_some(entry.revision)
    }

    /// One group's state write: `Ok(Some(lease revision, dead counters,
    /// whether copies were recorded))`, or `Ok(None)` if the lease is no
    /// longer this node's (nothing written).
    async fn write_state(
        &self,
        owned: &Owned,
        dirty: Option<&DirtyState>,
        lease: LeaseState,
        now: i64,
    ) -> Result<Option<(u64, (u64, u64), bool)>> {
        let (mut next, mut count) = *lock(&owned.dead);
        let mut writes = Vec::new();
        let mut copies = false;
        if let Some(DirtyState { snapshot, outbox }) = dirty {
            let copy = self
                .topic(&owned.topic)
                .await
                .is_ok_and(|topic| topic.info.spec.dead_letter_topic.is_some());
            for effect in &outbox.buried {
                let record = encode(&DeadRecord {
                    original: PartitionOffset {
                        partition: effect.partition,
                        offset: effect.offset,
                    },
                    reason: effect.reason.clone(),
                    attempts: effect.attempts,
                    dead_at: effect.dead_at,
                })?;
                let key = owned.dead_key(next);
                next += 1;
                count += 1;
                if copy {
                    copies = true;
                    writes.push(put(COPIES_BUCKET, key.clone(), record.clone()));
                }
                writes.push(put(DEAD_BUCKET, key, record));
            }
            for &id in &outbox.unlisted {
                count = count.saturating_sub(1);
                writes.push(KvWrite {
                    bucket: DEAD_BUCKET,
                    key: owned.dead_key(id),
                    value: None,
                    expect: Expect::Any,
                });
            }
            writes.push(put(
                STATE_BUCKET,
                owned.key.clone(),
                encode(&StateRecord {
                    snapshot: snapshot.clone(),
                    next_dead: next,
                    dead: count,
                })?,
            ));
        }
        let renewal = encode(&Lease {
            node: self.groups.node.clone(),
            expires_at: now + self.groups.lease_ms,
        })?;
        // Batches of at most MAX_BATCH, each ending with the lease at its
        // last revision; the state goes in the last one, so a cut between
        // two leaves dead letters of events still pending (delivered and
        // dead-lettered again at worst), never the reverse.
        let mut revision = lease.revision;
        let mut rest = writes.into_iter().peekable();
        loop {
            let mut batch: Vec<KvWrite> = rest.by_ref().take(MAX_BATCH - 1).collect();
            batch.push(KvWrite {
                bucket: OWNERS_BUCKET,
                key: owned.key.clone(),
                value: Some(renewal.clone()),
                expect: Expect::Revision(revision),
            });
            match self.kv_write_many(batch).await? {
                Some(written) => revision = written,
                None => return Ok(None),
            }
            if rest.peek().is_none() {
                return Ok(Some((revision, (next, count), copies)));
            }
        }
    }

    // ----------------------------------------------------------- timers --

    async fn timer_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.groups.cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let mut buried = false;
            for owned in self.groups.all() {
                buried |= owned.runtime.tick(now_ms());
            }
            if buried {
                self.groups.flusher.kick();
            }
        }
    }

    // --------------------------------------------------- dead-letter copies --

    async fn copy_loop(self: Arc<Self>) {
        let mut retry = Duration::from_millis(200);
        loop {
            tokio::select! {
                () = self.groups.cancel.cancelled() => return,
                () = self.groups.copies_wanted.notified() => {}
            }
            loop {
                match self.publish_copies().await {
                    Ok(()) => {
                        retry = Duration::from_millis(200);
                        break;
                    }
                    Err(error) => {
                        warn!(%error, retry_ms = retry.as_millis() as u64, "Publishing dead-letter copies failed; will retry.");
                        tokio::select! {
                            () = self.groups.cancel.cancelled() => return,
                            () = tokio::time::sleep(retry) => {}
                        }
                        retry = (retry * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    }

    /// Publishes the pending dead-letter copies of every owned group to
    /// its topic's dead-letter topic, and forgets each once published (or
    /// once it cannot be). Copies' ids derive from their dead letters, so
    /// one published again after a crash is deduplicated.
    async fn publish_copies(&self) -> Result<()> {
        for owned in self.groups.all() {
            let keys = self.all_keys(COPIES_BUCKET, &owned.dead_prefix()).await?;
            if keys.is_empty() {
                continue;
            }
            let target = self
                .topic(&owned.topic)
                .await
                .ok()
                .and_then(|topic| topic.info.spec.dead_letter_topic.clone());
            let prefix = owned.dead_prefix();
            let mut done = Vec::with_capacity(keys.len());
            for key in keys {
                let Some(entry) = self.kv_get(COPIES_BUCKET, &key).await? else {
                    continue;
                };
                let record: DeadRecord = decode(&entry.value, "dead-letter copy")?;
                let id = key
                    .strip_prefix(&prefix)
                    .and_then(|id| id.parse::<u64>().ok())
                    .unwrap_or_default();
                if let Some(target) = &target
                    && let Some(event) = read_one(&*owned.source, record.original).await?
                {
                    let copy = herald_groups::dead_letter_copy(
                        &event,
                        &owned.group,
                        &record.reason,
                        record.attempts,
                        id,
                    );
                    match self.publish(target, vec![copy]).await {
                        Ok(_) => {}
                        Err(error) if error.is_retryable() => return Err(error),
                        Err(error) => {
                            warn!(dead_letter_topic = %target, group = %owned.key, id, %error, "The dead-letter topic refuses this copy; the dead letter is kept in the group's list only.");
                        }
                    }
                }
                done.push((COPIES_BUCKET.to_owned(), key));
            }
            self.kv_delete_many(done).await?;
        }
        Ok(())
    }
}

fn put(bucket: &'static str, key: String, value: Bytes) -> KvWrite {
    KvWrite {
        bucket,
        key,
        value: Some(value),
        expect: Expect::Any,
    }
}

/// Answers forwarded calls on an owned group, and takes its settings when
/// they change, until the group no longer runs here.
async fn serve(
    inner: Weak<Inner>,
    owned: Weak<Owned>,
    calls: async_nats::Subscriber,
    settings: async_nats::Subscriber,
) {
    let mut incoming = futures::stream::select(
        calls.map(|message| (true, message)),
        settings.map(|message| (false, message)),
    );
    while let Some((call, message)) = incoming.next().await {
        let (Some(inner), owned) = (inner.upgrade(), owned.upgrade()) else {
            return;
        };
        if !call {
            if let Some(owned) = owned
                && let Err(error) = inner.reload_settings(&owned).await
            {
                warn!(group = %owned.key, %error, "Could not read the group's new settings; the next change or status call retries.");
            }
            continue;
        }
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        tokio::spawn(async move {
            let answer = match owned {
                Some(owned)
                    if owned.valid(inner.groups.lease_ms)
                        && inner.groups.local(&owned.key).is_some() =>
                {
                    match decode::<Call>(&message.payload, "a forwarded group call") {
                        Ok(call) => match inner.run(&owned, call).await {
                            Ok(reply) => Answer::Ok(reply),
                            Err(error) => Answer::Err(WireError::from(&error)),
                        },
                        Err(error) => Answer::Err(WireError::from(&error)),
                    }
                }
                _ => Answer::NotOwner,
            };
            let payload = match encode(&answer) {
                Ok(payload) => payload,
                Err(error) => match encode(&Answer::Err(WireError::from(&error))) {
                    Ok(payload) => payload,
                    Err(_) => return,
                },
            };
            if let Err(error) = inner.client.publish(reply, payload).await {
                warn!(%error, "Could not answer a forwarded group call.");
            }
        });
    }
}
