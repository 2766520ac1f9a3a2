//! `herald.v1.Groups`: group administration and `Consume`.
//!
//! # A `Consume` call
//!
//! ```text
//! client                                   server
//!   start{topic, group, member, credit} ─▶  checks the group exists
//!                                       ◀─  started{mode, ack_wait_ms}
//!   credit(n), ack, nack, extend,       ─▶  reader: applies each at once
//!   reject, commit (pipelined)          ◀─  settled{seq,…} when seq ≠ 0 or
//!                                           it failed
//!                                       ◀─  deliveries (fetcher: long-polls
//!                                           the group while credits > 0)
//!                                       ◀─  assignment (stream mode, when
//!                                           it changes)
//!   (ends, or the connection drops)         the member leaves: leases
//!                                           return at once, partitions are
//!                                           reassigned
//! ```
//!
//! Credits are the consumer's flow control: the server never sends more
//! deliveries than it was granted, so a consumer bounds its own memory.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use herald_backend::{
    AckOutcome, Backend, CommitRequest, FetchRequest, GroupMode, PartitionOffset, StartPosition,
};
use herald_proto::v1;
use herald_types::{GroupName, TopicName};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::{GrpcState, backend_status, caller, convert, failure, invalid, limit, shutting_down};
use crate::auth::permissions::Action;
use crate::problem::Problem;

/// Deliveries one fetch asks for at most.
const FETCH_BATCH: u64 = 1_000;
/// How long one fetch long-polls before it is renewed (also keeps a
/// stream-mode member live: well under the default session timeout).
const FETCH_WAIT_MS: u64 = 5_000;
/// Responses buffered toward a slow client.
const SEND_BUFFER: usize = 64;

type Outgoing = mpsc::Sender<Result<v1::ConsumeResponse, Status>>;

/// The `Groups` service.
#[derive(Debug)]
pub(super) struct GroupsService {
    state: GrpcState,
}

impl GroupsService {
    pub(super) fn new(state: GrpcState) -> Self {
        Self { state }
    }
}

fn names(topic: &str, group: &str) -> Result<(TopicName, GroupName), Status> {
    Ok((convert::name(topic)?, convert::name(group)?))
}

#[tonic::async_trait]
impl v1::groups_server::Groups for GroupsService {
    async fn put_group(
        &self,
        request: Request<v1::PutGroupRequest>,
    ) -> Result<Response<v1::PutGroupResponse>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::GroupsManage, &request.topic)?;
        let group = request
            .group
            .ok_or_else(|| invalid("group", "is required"))?;
        let (topic, name) = names(&request.topic, &group.name)?;
        let spec = convert::group_spec(group)?;
        let (info, created) = backend
            .put_group(&topic, &name, spec)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::PutGroupResponse {
            group: Some(convert::group(info)),
            created,
        }))
    }

    async fn get_group(
        &self,
        request: Request<v1::GroupRequest>,
    ) -> Result<Response<v1::GroupStatus>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::GroupsRead, &request.topic)?;
        let (topic, group) = names(&request.topic, &request.group)?;
        let status = backend
            .group_status(&topic, &group)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(convert::group_status(status)))
    }

    async fn delete_group(
        &self,
        request: Request<v1::GroupRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::GroupsManage, &request.topic)?;
        let (topic, group) = names(&request.topic, &request.group)?;
        backend
            .delete_group(&topic, &group)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn reset_group(
        &self,
        request: Request<v1::ResetGroupRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::GroupsManage, &request.topic)?;
        let (topic, group) = names(&request.topic, &request.group)?;
        if request.to.as_ref().is_none_or(|to| to.start.is_none()) {
            return Err(invalid("to", "is required"));
        }
        let to = convert::start_position(request.to, StartPosition::Earliest)?;
        backend
            .reset(&topic, &group, to)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_dead_letters(
        &self,
        request: Request<v1::DeadLettersRequest>,
    ) -> Result<Response<v1::DeadLettersResponse>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::GroupsRead, &request.topic)?;
        let (topic, group) = names(&request.topic, &request.group)?;
        let limit = limit(request.limit, 100, 10_000)?;
        let dead = backend
            .dead_letters(&topic, &group, limit)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::DeadLettersResponse {
            dead_letters: dead.into_iter().map(convert::dead_letter).collect(),
        }))
    }

    async fn redrive(
        &self,
        request: Request<v1::RedriveRequest>,
    ) -> Result<Response<v1::RedriveResponse>, Status> {
        let backend = self.state.backend()?;
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.require(Action::GroupsManage, &request.topic)?;
        let (topic, group) = names(&request.topic, &request.group)?;
        let ids = (!request.ids.is_empty()).then_some(request.ids.as_slice());
        let redriven = backend
            .redrive(&topic, &group, ids)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::RedriveResponse { redriven }))
    }

    type ConsumeStream = Pin<Box<dyn Stream<Item = Result<v1::ConsumeResponse, Status>> + Send>>;

    async fn consume(
        &self,
        request: Request<Streaming<v1::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let caller = caller(&request)?;
        let backend = self.state.backend()?;
        let mut incoming = request.into_inner();
        let Some(v1::consume_request::Request::Start(start)) =
            incoming.message().await?.and_then(|first| first.request)
        else {
            return Err(invalid("start", "the first message must be `start`"));
        };
        caller.require(Action::TopicsConsume, &start.topic)?;
        let (topic, group) = names(&start.topic, &start.group)?;
        if start.member.is_empty() || start.member.len() > 200 {
            return Err(invalid("member", "must be 1 to 200 characters"));
        }
        let status = backend
            .group_status(&topic, &group)
            .await
            .map_err(backend_status)?;
        let spec = status.info.spec;
        let (sender, receiver) = mpsc::channel(SEND_BUFFER);
        let started = v1::ConsumeResponse {
            response: Some(v1::consume_response::Response::Started(v1::Started {
                mode: convert::mode(spec.mode).into(),
                ack_wait_ms: spec.ack_wait_ms,
            })),
        };
        // The channel is new and empty: this cannot wait.
        let _ = sender.send(Ok(started)).await;
        let session = Session {
            backend,
            topic,
            group,
            member: start.member,
            mode: spec.mode,
            credits: Arc::new(Credits::new(u64::from(start.credit))),
            sender,
            done: CancellationToken::new(),
            stopping: self.state.stopping.clone(),
        };
        tokio::spawn(session.run(incoming));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Deliveries the consumer still accepts.
#[derive(Debug)]
struct Credits {
    available: AtomicU64,
    granted: Notify,
}

impl Credits {
    fn new(initial: u64) -> Self {
        Self {
            available: AtomicU64::new(initial),
            granted: Notify::new(),
        }
    }

    fn grant(&self, count: u64) {
        self.available.fetch_add(count, Ordering::SeqCst);
        self.granted.notify_one();
    }

    fn take(&self, count: u64) {
        // Only the fetcher takes, and never more than it saw available.
        self.available.fetch_sub(count, Ordering::SeqCst);
    }

    /// Waits until at least one credit is available; returns how many.
    async fn wait(&self) -> u64 {
        loop {
            let granted = self.granted.notified();
            let available = self.available.load(Ordering::SeqCst);
            if available > 0 {
                return available;
            }
            granted.await;
        }
    }
}

/// One `Consume` call.
struct Session {
    backend: Arc<dyn Backend>,
    topic: TopicName,
    group: GroupName,
    member: String,
    mode: GroupMode,
    credits: Arc<Credits>,
    sender: Outgoing,
    /// Fires when the client's half ends.
    done: CancellationToken,
    stopping: CancellationToken,
}

impl Session {
    /// Reads the client's messages until its half ends, with the fetcher
    /// running beside; then the member leaves.
    async fn run(self, mut incoming: Streaming<v1::ConsumeRequest>) {
        let fetcher = tokio::spawn(fetch_loop(
            Arc::clone(&self.backend),
            self.topic.clone(),
            self.group.clone(),
            self.member.clone(),
            self.mode,
            Arc::clone(&self.credits),
            self.sender.clone(),
            self.done.clone(),
            self.stopping.clone(),
        ));
        loop {
            let message = tokio::select! {
                message = incoming.next() => message,
                () = self.stopping.cancelled() => None,
            };
            let Some(Ok(message)) = message else {
                break;
            };
            if let Some(request) = message.request {
                self.handle(request, message.seq).await;
            }
        }
        self.done.cancel();
        let _ = fetcher.await;
        // Return this member's leases now rather than after the ack wait,
        // and (stream mode) hand its partitions to the others.
        if let Err(error) = self
            .backend
            .leave(&self.topic, &self.group, &self.member)
            .await
        {
            debug!(%error, member = %self.member, "Leave after Consume failed.");
        }
    }

    async fn handle(&self, request: v1::consume_request::Request, seq: u64) {
        use v1::consume_request::Request;
        let (backend, topic, group) = (&*self.backend, &self.topic, &self.group);
        let outcome = match request {
            Request::Credit(count) => {
                self.credits.grant(u64::from(count));
                return;
            }
            Request::Ack(ids) => {
                let durability = convert::durability(ids.sync);
                let outcome = backend
                    .ack(topic, group, &ids.delivery_ids, durability)
                    .await;
                crate::trace::settled("ack", group, &ids.delivery_ids);
                outcome
            }
            Request::Nack(nack) => {
                let delay = nack.delay_ms.map(Duration::from_millis);
                let durability = convert::durability(nack.sync);
                let outcome = backend
                    .nack(topic, group, &nack.delivery_ids, delay, durability)
                    .await;
                crate::trace::settled("nack", group, &nack.delivery_ids);
                outcome
            }
            Request::Extend(extend) => {
                let wait = extend.ack_wait_ms.map(Duration::from_millis);
                let durability = convert::durability(extend.sync);
                let outcome = backend
                    .extend(topic, group, &extend.delivery_ids, wait, durability)
                    .await;
                crate::trace::settled("extend", group, &extend.delivery_ids);
                outcome
            }
            Request::Reject(reject) => {
                let durability = convert::durability(reject.sync);
                let outcome = backend
                    .reject(
                        topic,
                        group,
                        &reject.delivery_ids,
                        &reject.reason,
                        durability,
                    )
                    .await;
                crate::trace::settled("reject", group, &reject.delivery_ids);
                outcome
            }
            Request::Commit(commit) => {
                let request = CommitRequest {
                    member: self.member.clone(),
                    generation: commit.generation,
                    offsets: commit
                        .offsets
                        .into_iter()
                        .map(|at| PartitionOffset {
                            partition: at.partition,
                            offset: at.offset,
                        })
                        .collect(),
                };
                backend
                    .commit(topic, group, request)
                    .await
                    .map(|()| AckOutcome {
                        acked: 1,
                        unknown: Vec::new(),
                    })
            }
            Request::Start(_) => Err(herald_backend::Error::invalid(
                "start",
                "the call has started already",
            )),
        };
        let settled = match outcome {
            Ok(_) if seq == 0 => return,
            Ok(outcome) => v1::Settled {
                seq,
                acked: outcome.acked,
                unknown: outcome.unknown,
                error: None,
            },
            Err(error) => v1::Settled {
                seq,
                acked: 0,
                unknown: Vec::new(),
                error: Some(failure(&Problem::from(error))),
            },
        };
        let response = v1::ConsumeResponse {
            response: Some(v1::consume_response::Response::Settled(settled)),
        };
        let _ = self.sender.send(Ok(response)).await;
    }
}

/// Long-polls the group while the consumer has credits and sends what it
/// gets; ends when the client's half ends, the server stops, or the group
/// fails (then the call ends with that status).
#[allow(clippy::too_many_arguments)]
async fn fetch_loop(
    backend: Arc<dyn Backend>,
    topic: TopicName,
    group: GroupName,
    member: String,
    mode: GroupMode,
    credits: Arc<Credits>,
    sender: Outgoing,
    done: CancellationToken,
    stopping: CancellationToken,
) {
    let mut assignment: Option<(Vec<u32>, u64)> = None;
    loop {
        let available = tokio::select! {
            available = credits.wait() => available,
            () = done.cancelled() => return,
            () = stopping.cancelled() => {
                let _ = sender.send(Err(shutting_down())).await;
                return;
            }
        };
        let request = FetchRequest {
            member: member.clone(),
            max: available.min(FETCH_BATCH) as u32,
            wait_ms: FETCH_WAIT_MS,
        };
        let fetched = tokio::select! {
            fetched = backend.fetch(&topic, &group, request) => fetched,
            () = done.cancelled() => return,
            () = stopping.cancelled() => {
                let _ = sender.send(Err(shutting_down())).await;
                return;
            }
        };
        let response = match fetched {
            Ok(mut response) => {
                crate::trace::delivered(&topic, &group, &mut response);
                response
            }
            Err(error) => {
                let _ = sender.send(Err(backend_status(error))).await;
                return;
            }
        };
        if mode == GroupMode::Stream
            && let (Some(partitions), Some(generation)) = (response.assignment, response.generation)
            && assignment.as_ref() != Some(&(partitions.clone(), generation))
        {
            assignment = Some((partitions.clone(), generation));
            let message = v1::ConsumeResponse {
                response: Some(v1::consume_response::Response::Assignment(v1::Assignment {
                    partitions,
                    generation,
                })),
            };
            if sender.send(Ok(message)).await.is_err() {
                return;
            }
        }
        if response.deliveries.is_empty() {
            continue;
        }
        credits.take(response.deliveries.len() as u64);
        let message = v1::ConsumeResponse {
            response: Some(v1::consume_response::Response::Deliveries(v1::Deliveries {
                deliveries: response
                    .deliveries
                    .into_iter()
                    .map(convert::delivery)
                    .collect(),
            })),
        };
        if sender.send(Ok(message)).await.is_err() {
            return;
        }
    }
}
