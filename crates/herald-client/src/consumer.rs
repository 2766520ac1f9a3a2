//! A member of a consumer group over one `Consume` call.
//!
//! The consumer grants the server credits (deliveries it may send) and
//! settles deliveries as the application finishes them; settles are batched
//! and pipelined, never awaited one by one.
//!
//! - Queue and keyed mode: a delivery's credit returns when it is settled
//!   (acked, nacked, rejected, or dropped — a dropped delivery is nacked),
//!   so at most `credits` deliveries are in the application's hands.
//! - Stream mode: a credit returns when the application takes the delivery
//!   from [`Consumer::next`]; [`Delivery::ack`] commits the partition past
//!   the event.
//!
//! When the consumer is dropped (or [`Consumer::close`]d) the call ends and
//! the server makes the member leave at once: unsettled leases return to the
//! group and stream-mode partitions are reassigned. A broken connection is
//! reopened with backoff (per the client's retry policy) under the same
//! member id; deliveries still unsettled from before are then redelivered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt as _;
use herald_proto::v1;
use herald_types::StoredEvent;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::{Client, Error, GroupMode, Result};

/// Builds a [`Consumer`].
#[derive(Debug)]
pub struct ConsumerBuilder {
    client: Client,
    topic: String,
    group: String,
    member: Option<String>,
    credits: u32,
    auto_extend: bool,
}

impl ConsumerBuilder {
    pub(crate) fn new(client: Client, topic: &str, group: &str) -> Self {
        Self {
            client,
            topic: topic.to_owned(),
            group: group.to_owned(),
            member: None,
            credits: 256,
            auto_extend: false,
        }
    }

    /// This consumer's member id (default: a random one). Keep it stable
    /// across restarts of one instance.
    pub fn member(mut self, member: impl Into<String>) -> Self {
        self.member = Some(member.into());
        self
    }

    /// Deliveries the server may send ahead (default 256).
    pub fn credits(mut self, credits: u32) -> Self {
        self.credits = credits.max(1);
        self
    }

    /// Extend the leases of unsettled deliveries automatically, every third
    /// of the group's ack wait, for as long as they are held (default off).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.auto_extend = on;
        self
    }

    /// Joins the group. Fails with [`crate::ErrorCode::GroupNotFound`] (or
    /// another typed error) if it cannot.
    pub async fn build(self) -> Result<Consumer> {
        let member = self.member.unwrap_or_else(random_member);
        let mut task = Session {
            client: self.client,
            topic: self.topic,
            group: self.group,
            member: member.clone(),
            credits: self.credits,
            auto_extend: self.auto_extend,
            mode: GroupMode::Queue,
            ack_wait: Duration::from_secs(30),
            epoch: 0,
            generation: 0,
            outstanding: HashSet::new(),
            in_hand: 0,
            owed: 0,
            awaiting: HashMap::new(),
            seq: 0,
        };
        let call = task.open().await?;
        let (deliveries_in, deliveries) = mpsc::unbounded_channel();
        let (control, control_out) = mpsc::unbounded_channel();
        let (assignment_in, assignment) = watch::channel(None);
        let mode = task.mode;
        // Deliveries get strong senders from this weak one, so the session
        // ends once the consumer and every delivery are gone.
        let weak = control.downgrade();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(task.run(
            call,
            control_out,
            weak,
            deliveries_in,
            assignment_in,
            stopped,
        ));
        Ok(Consumer {
            _stop: stop,
            deliveries,
            control,
            mode,
            member,
            assignment,
        })
    }
}

/// A member of a consumer group. Yields deliveries with [`Consumer::next`].
#[derive(Debug)]
pub struct Consumer {
    deliveries: mpsc::UnboundedReceiver<Result<Delivery>>,
    control: mpsc::UnboundedSender<Control>,
    mode: GroupMode,
    member: String,
    assignment: watch::Receiver<Option<(Vec<u32>, u64)>>,
    /// Dropped with the consumer: the session ends the call.
    _stop: oneshot::Sender<()>,
}

impl Consumer {
    /// The next delivery; `None` once the consumer has ended (after an
    /// error item saying why, unless it was closed).
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        let next = self.deliveries.recv().await;
        if self.mode == GroupMode::Stream && matches!(next, Some(Ok(_))) {
            let _ = self.control.send(Control::Credit(1));
        }
        next
    }

    /// The group's mode.
    pub fn mode(&self) -> GroupMode {
        self.mode
    }

    /// This consumer's member id.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Stream mode: the partitions this member owns and the generation, as
    /// last told by the server.
    pub fn assignment(&self) -> Option<(Vec<u32>, u64)> {
        self.assignment.borrow().clone()
    }

    /// Leaves the group now: unsettled deliveries return to it at once.
    pub fn close(self) {
        drop(self);
    }
}

/// One delivery of an event. Settle it exactly once with
/// [`ack`](Self::ack), [`nack`](Self::nack) or [`reject`](Self::reject); a
/// delivery dropped unsettled is nacked (queue and keyed mode).
#[derive(Debug)]
pub struct Delivery {
    id: String,
    attempt: u32,
    event: StoredEvent,
    mode: GroupMode,
    epoch: u64,
    control: mpsc::UnboundedSender<Control>,
    settled: bool,
}

impl Delivery {
    /// The delivery id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// 1 for the first delivery of the event to this group, then 2, 3…
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The event.
    pub fn event(&self) -> &StoredEvent {
        &self.event
    }

    /// A span for processing this delivery (`process`, kind consumer): a
    /// child of Herald's `deliver` span (the delivered event's
    /// `traceparent`) and linked to it. Instrument the handler with it, and
    /// what the handler does (its own spans, a job it submits with
    /// [`crate::trace::traceparent`] of it) continues the event's trace.
    /// Exported by the application's own `tracing-opentelemetry` layer.
    pub fn span(&self) -> tracing::Span {
        let event = &self.event().event;
        let traceparent = event.traceparent.as_deref();
        let span = tracing::info_span!(
            "process",
            otel.kind = "consumer",
            messaging.message.id = %event.id,
            trace_id = tracing::field::Empty,
        );
        herald_trace::follow(&span, traceparent);
        herald_trace::link(&span, traceparent);
        span
    }

    /// Done: the event is not delivered to this group again. In stream mode
    /// this commits the partition past the event. Pipelined: returns once
    /// queued; fails only if the consumer is gone.
    pub fn ack(mut self) -> Result<()> {
        self.settled = true;
        let message = match self.mode {
            GroupMode::Stream => Control::Commit {
                partition: self.event.partition,
                offset: self.event.offset + 1,
            },
            GroupMode::Queue | GroupMode::Keyed => Control::Ack {
                id: std::mem::take(&mut self.id),
                epoch: self.epoch,
            },
        };
        self.control.send(message).map_err(|_| Error::Closed)
    }

    /// Done, and returns only once the server has persisted the ack (as
    /// `sync` does; see [`crate::AckDurability`]): the event is not
    /// delivered to this group again, even after a server crash. Persisted
    /// acks queued together go in one request and one server write. Queue
    /// and keyed mode; in stream mode the same as [`ack`](Self::ack). An id
    /// the server no longer knows (settled already) is not an error. An
    /// error means the ack may or may not have been persisted (it was
    /// applied if the server got it; a crash may bring the event back
    /// once).
    pub async fn ack_persisted(mut self) -> Result<()> {
        if self.mode == GroupMode::Stream {
            return self.ack();
        }
        self.settled = true;
        let (done, persisted) = oneshot::channel();
        let message = Control::AckPersisted {
            id: std::mem::take(&mut self.id),
            epoch: self.epoch,
            done,
        };
        self.control.send(message).map_err(|_| Error::Closed)?;
        persisted.await.map_err(|_| Error::Closed)?
    }

    /// Not done: deliver it again after `delay` (or the group's backoff).
    pub fn nack(mut self, delay: Option<Duration>) -> Result<()> {
        self.settled = true;
        let message = Control::Nack {
            id: std::mem::take(&mut self.id),
            epoch: self.epoch,
            delay,
        };
        self.control.send(message).map_err(|_| Error::Closed)
    }

    /// Never deliverable: straight to the dead letters with `reason`.
    pub fn reject(mut self, reason: impl Into<String>) -> Result<()> {
        self.settled = true;
        let message = Control::Reject {
            id: std::mem::take(&mut self.id),
            epoch: self.epoch,
            reason: reason.into(),
        };
        self.control.send(message).map_err(|_| Error::Closed)
    }

    /// Still working on it: renew the lease for `ack_wait` (or the group's).
    pub fn extend(&self, ack_wait: Option<Duration>) -> Result<()> {
        let message = Control::Extend {
            id: self.id.clone(),
            ack_wait,
        };
        self.control.send(message).map_err(|_| Error::Closed)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled && self.mode != GroupMode::Stream {
            let _ = self.control.send(Control::Nack {
                id: std::mem::take(&mut self.id),
                epoch: self.epoch,
                delay: None,
            });
        }
    }
}

/// What deliveries and the consumer tell the session task.
#[derive(Debug)]
enum Control {
    Ack {
        id: String,
        epoch: u64,
    },
    AckPersisted {
        id: String,
        epoch: u64,
        done: oneshot::Sender<Result<()>>,
    },
    Nack {
        id: String,
        epoch: u64,
        delay: Option<Duration>,
    },
    Reject {
        id: String,
        epoch: u64,
        reason: String,
    },
    Extend {
        id: String,
        ack_wait: Option<Duration>,
    },
    Commit {
        partition: u32,
        offset: u64,
    },
    Credit(u32),
}

/// An open `Consume` call.
struct Call {
    requests: mpsc::Sender<v1::ConsumeRequest>,
    responses: tonic::Streaming<v1::ConsumeResponse>,
}

struct Session {
    client: Client,
    topic: String,
    group: String,
    member: String,
    credits: u32,
    auto_extend: bool,
    mode: GroupMode,
    ack_wait: Duration,
    /// Bumped per call: settles of an older call return no credit.
    epoch: u64,
    generation: u64,
    /// Unsettled delivery ids of this call (for auto-extension).
    outstanding: HashSet<String>,
    /// Deliveries of this call handed out and not yet settled (queue,
    /// keyed) or not yet taken by the application (stream).
    in_hand: u64,
    /// Credits earned back but not yet granted: granted in chunks of a
    /// quarter of `credits` (or when nothing is in hand), so the server
    /// fetches in batches rather than one event per settle.
    owed: u32,
    /// Persisted acks sent and not yet answered, by their request's `seq`
    /// (the persisted acks of one batch share a request).
    awaiting: HashMap<u64, Vec<oneshot::Sender<Result<()>>>>,
    /// The last `seq` given out.
    seq: u64,
}

fn request(request: v1::consume_request::Request) -> v1::ConsumeRequest {
    v1::ConsumeRequest {
        request: Some(request),
        seq: 0,
    }
}

/// A request whose outcome the server answers with `settled{seq}`.
fn answered(request: v1::consume_request::Request, seq: u64) -> v1::ConsumeRequest {
    v1::ConsumeRequest {
        request: Some(request),
        seq,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Session {
    /// Opens a call and waits for `started`.
    async fn open(&mut self) -> Result<Call> {
        let (requests, receiver) = mpsc::channel(1_024);
        let start = v1::ConsumeStart {
            topic: self.topic.clone(),
            group: self.group.clone(),
            member: self.member.clone(),
            credit: self.credits,
        };
        let _ = requests
            .send(request(v1::consume_request::Request::Start(start)))
            .await;
        let mut responses = self
            .client
            .groups_stream()
            .consume(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        match responses.message().await? {
            Some(v1::ConsumeResponse {
                response: Some(v1::consume_response::Response::Started(started)),
            }) => {
                self.mode = GroupMode::from_proto(started.mode).unwrap_or(GroupMode::Queue);
                self.ack_wait = Duration::from_millis(started.ack_wait_ms.max(1));
            }
            _ => {
                return Err(Error::Malformed(herald_proto::MalformedMessage {
                    what: "ConsumeResponse",
                    reason: "the first message was not `started`".to_owned(),
                }));
            }
        }
        self.epoch += 1;
        self.outstanding.clear();
        self.in_hand = 0;
        self.owed = 0;
        Ok(Call {
            requests,
            responses,
        })
    }

    /// Reopens a broken call with backoff; `None` when it cannot.
    async fn reopen(
        &mut self,
        deliveries: &mpsc::UnboundedSender<Result<Delivery>>,
        cause: Error,
    ) -> Option<Call> {
        for waiter in self.awaiting.drain().flat_map(|(_, waiters)| waiters) {
            let _ = waiter.send(Err(Error::Rpc(Box::new(tonic::Status::unavailable(
                "the consume call broke before the server confirmed the ack",
            )))));
        }
        if !cause.is_retryable() {
            let _ = deliveries.send(Err(cause));
            return None;
        }
        let policy = self.client.retry_policy();
        let mut last = cause;
        for attempt in 1..policy.attempts.max(2) {
            tokio::time::sleep(policy.backoff(attempt)).await;
            if deliveries.is_closed() {
                return None;
            }
            match self.open().await {
                Ok(call) => return Some(call),
                Err(error) if error.is_retryable() => last = error,
                Err(error) => {
                    last = error;
                    break;
                }
            }
        }
        let _ = deliveries.send(Err(last));
        None
    }

    async fn run(
        mut self,
        mut call: Call,
        mut control: mpsc::UnboundedReceiver<Control>,
        settle_with: mpsc::WeakUnboundedSender<Control>,
        deliveries: mpsc::UnboundedSender<Result<Delivery>>,
        assignment: watch::Sender<Option<(Vec<u32>, u64)>>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        let extend_every = self.ack_wait / 3;
        let mut extend_tick = tokio::time::interval(extend_every.max(Duration::from_millis(10)));
        extend_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let broken: Option<Error> = tokio::select! {
                // The consumer is gone: end the call now (the server makes
                // the member leave), even if deliveries are still held.
                _ = &mut stopped => return,
                first = control.recv() => {
                    let Some(first) = first else {
                        // The consumer is gone: end the call (the server
                        // makes the member leave).
                        return;
                    };
                    let mut batch = vec![first];
                    while batch.len() < 4_096 {
                        match control.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    if self.send_controls(&call, batch).await { None } else {
                        Some(Error::Rpc(Box::new(tonic::Status::unavailable("consume stream closed"))))
                    }
                }
                response = call.responses.next() => match response {
                    Some(Ok(response)) => {
                        self.receive(response, &deliveries, &assignment, &settle_with);
                        None
                    }
                    Some(Err(status)) => Some(Error::from(status)),
                    None => Some(Error::Rpc(Box::new(tonic::Status::unavailable("the server ended the call")))),
                },
                _ = extend_tick.tick(), if self.auto_extend && !self.outstanding.is_empty() => {
                    let ids: Vec<String> = self.outstanding.iter().cloned().collect();
                    let extend = v1::Extend { delivery_ids: ids, ack_wait_ms: None, sync: false };
                    let _ = call.requests.send(request(v1::consume_request::Request::Extend(extend))).await;
                    None
                }
            };
            if let Some(error) = broken {
                tracing::debug!(%error, member = %self.member, "Consume call broke.");
                match self.reopen(&deliveries, error).await {
                    Some(fresh) => call = fresh,
                    None => return,
                }
            }
        }
    }

    /// Hands deliveries to the consumer and tracks the assignment.
    fn receive(
        &mut self,
        response: v1::ConsumeResponse,
        deliveries: &mpsc::UnboundedSender<Result<Delivery>>,
        assignment: &watch::Sender<Option<(Vec<u32>, u64)>>,
        settle_with: &mpsc::WeakUnboundedSender<Control>,
    ) {
        use v1::consume_response::Response;
        match response.response {
            Some(Response::Deliveries(batch)) => {
                let Some(control) = settle_with.upgrade() else {
                    return;
                };
                for delivery in batch.deliveries {
                    let event = match delivery.event.map(StoredEvent::try_from) {
                        Some(Ok(event)) => event,
                        Some(Err(malformed)) => {
                            let _ = deliveries.send(Err(malformed.into()));
                            continue;
                        }
                        None => continue,
                    };
                    if self.auto_extend {
                        self.outstanding.insert(delivery.delivery_id.clone());
                    }
                    self.in_hand += 1;
                    let _ = deliveries.send(Ok(Delivery {
                        id: delivery.delivery_id,
                        attempt: delivery.attempt,
                        event,
                        mode: self.mode,
                        epoch: self.epoch,
                        control: control.clone(),
                        settled: false,
                    }));
                }
            }
            Some(Response::Assignment(given)) => {
                self.generation = given.generation;
                let _ = assignment.send(Some((given.partitions, given.generation)));
            }
            Some(Response::Settled(settled)) => {
                let waiters = self.awaiting.remove(&settled.seq).unwrap_or_default();
                match settled.error {
                    Some(failure) if waiters.is_empty() => {
                        tracing::warn!(code = %failure.code, message = %failure.message, "Herald refused a settle.");
                    }
                    Some(failure) => {
                        for waiter in waiters {
                            let error = Error::from_failure(failure.clone());
                            let _ = waiter.send(Err(error));
                        }
                    }
                    None => {
                        for waiter in waiters {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                }
            }
            Some(Response::Started(_)) | None => {}
        }
    }

    /// Sends a batch of settles as few messages as possible, with the
    /// credits they return. Returns false if the call is gone.
    async fn send_controls(&mut self, call: &Call, batch: Vec<Control>) -> bool {
        use v1::consume_request::Request;
        let mut acks = Vec::new();
        let mut nacks: HashMap<Option<u64>, Vec<String>> = HashMap::new();
        let mut extends: HashMap<Option<u64>, Vec<String>> = HashMap::new();
        let mut rejects = Vec::new();
        let mut commits: BTreeMap<u32, u64> = BTreeMap::new();
        let mut persisted = Vec::new();
        let mut persisted_waiters = Vec::new();
        let mut credit = 0u32;
        let current = self.epoch;
        for message in batch {
            match message {
                Control::Ack { id, epoch } => {
                    self.outstanding.remove(&id);
                    credit += u32::from(epoch == current);
                    acks.push(id);
                }
                Control::AckPersisted { id, epoch, done } => {
                    self.outstanding.remove(&id);
                    credit += u32::from(epoch == current);
                    persisted_waiters.push(done);
                    persisted.push(id);
                }
                Control::Nack { id, epoch, delay } => {
                    self.outstanding.remove(&id);
                    credit += u32::from(epoch == current);
                    nacks.entry(delay.map(millis)).or_default().push(id);
                }
                Control::Reject { id, epoch, reason } => {
                    self.outstanding.remove(&id);
                    credit += u32::from(epoch == current);
                    rejects.push((id, reason));
                }
                Control::Extend { id, ack_wait } => {
                    extends.entry(ack_wait.map(millis)).or_default().push(id);
                }
                Control::Commit { partition, offset } => {
                    let entry = commits.entry(partition).or_insert(offset);
                    *entry = (*entry).max(offset);
                }
                Control::Credit(count) => credit += count,
            }
        }
        let mut out = Vec::new();
        let mut answered_out = Vec::new();
        if !acks.is_empty() {
            out.push(Request::Ack(v1::DeliveryIds {
                delivery_ids: acks,
                sync: false,
            }));
        }
        if !persisted.is_empty() {
            // One request for the batch: the server persists it once.
            self.seq += 1;
            self.awaiting.insert(self.seq, persisted_waiters);
            let ack = Request::Ack(v1::DeliveryIds {
                delivery_ids: persisted,
                sync: true,
            });
            answered_out.push(answered(ack, self.seq));
        }
        for (delay_ms, delivery_ids) in nacks {
            out.push(Request::Nack(v1::Nack {
                delivery_ids,
                delay_ms,
                sync: false,
            }));
        }
        for (ack_wait_ms, delivery_ids) in extends {
            out.push(Request::Extend(v1::Extend {
                delivery_ids,
                ack_wait_ms,
                sync: false,
            }));
        }
        for (id, reason) in rejects {
            out.push(Request::Reject(v1::Reject {
                delivery_ids: vec![id],
                reason,
                sync: false,
            }));
        }
        if !commits.is_empty() {
            out.push(Request::Commit(v1::Commit {
                generation: self.generation,
                offsets: commits
                    .into_iter()
                    .map(|(partition, offset)| v1::PartitionOffset { partition, offset })
                    .collect(),
            }));
        }
        self.in_hand = self.in_hand.saturating_sub(u64::from(credit));
        self.owed += credit;
        if self.owed > 0 && (self.owed >= (self.credits / 4).max(1) || self.in_hand == 0) {
            out.push(Request::Credit(std::mem::take(&mut self.owed)));
        }
        for message in answered_out.into_iter().chain(out.into_iter().map(request)) {
            if call.requests.send(message).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// A member id unique enough for an anonymous consumer.
fn random_member() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("sdk-{:016x}", RandomState::new().hash_one(nanos))
}
