//! `herald.v1.Events`: publish (unary and pipelined), read, subscribe.

use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt as _};
use herald_backend::Backend;
use herald_proto::v1;
use herald_types::TopicName;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{GrpcState, backend_status, convert, failure, limit, shutting_down};
use crate::http::events::{DEFAULT_READ_LIMIT, MAX_READ_LIMIT};
use crate::http::tail::{self, Filter, Start};
use crate::problem::Problem;

/// Batches one `PublishStream` call may have in flight (published, not yet
/// acknowledged). A client sending faster is paused by HTTP/2 flow control:
/// the server stops reading its requests.
const PUBLISH_WINDOW: usize = 4_096;
/// Acks (or subscription batches) buffered toward a slow client before the
/// server stops producing more.
const SEND_BUFFER: usize = 256;
/// Events a subscription sends in one message at most.
const SUBSCRIBE_BATCH: usize = 256;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The `Events` service.
#[derive(Debug)]
pub(super) struct EventsService {
    state: GrpcState,
}

impl EventsService {
    pub(super) fn new(state: GrpcState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl v1::events_server::Events for EventsService {
    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let backend = self.state.backend()?;
        let request = request.into_inner();
        let results = publish(&*backend, request, self.state.clock.now_ms())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v1::PublishResponse { results }))
    }

    type PublishStreamStream = BoxStream<v1::PublishAck>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<v1::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let backend = self.state.backend()?;
        let incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(SEND_BUFFER);
        tokio::spawn(pipeline(backend, incoming, sender, self.state.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn read(
        &self,
        request: Request<v1::ReadRequest>,
    ) -> Result<Response<v1::ReadResponse>, Status> {
        let backend = self.state.backend()?;
        let request = request.into_inner();
        let topic: TopicName = convert::name(&request.topic)?;
        let limit = limit(request.limit, DEFAULT_READ_LIMIT, MAX_READ_LIMIT)?;
        let read = backend
            .read(&topic, request.partition, request.from_offset, limit)
            .await
            .map_err(backend_status)?;
        Ok(Response::new(v1::ReadResponse {
            events: read.events.into_iter().map(Into::into).collect(),
            next_offset: read.next_offset,
        }))
    }

    type SubscribeStream = BoxStream<v1::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let backend = self.state.backend()?;
        let request = request.into_inner();
        let topic: TopicName = convert::name(&request.topic)?;
        let start = match request.from.and_then(|from| from.from) {
            None | Some(v1::from::From::Latest(_)) => Start::Latest,
            Some(v1::from::From::Earliest(_)) => Start::Earliest,
            Some(v1::from::From::Positions(positions)) => Start::At(herald_types::Positions(
                positions
                    .offsets
                    .into_iter()
                    .map(|at| herald_types::Position::new(at.partition, at.offset))
                    .collect(),
            )),
        };
        let positions = tail::start(&*backend, &topic, &start)
            .await
            .map_err(backend_status)?;
        let filter = Filter {
            types: request.types,
            subject: request.subject_prefix,
            correlationid: request.correlationid,
        };
        let stopping = self.state.stopping.clone();
        let events = tail::follow(backend, topic, positions, filter)
            .ready_chunks(SUBSCRIBE_BATCH)
            .map(|chunk| {
                let mut events = Vec::with_capacity(chunk.len());
                for tailed in chunk {
                    match tailed {
                        Ok(tailed) => events.push(tailed.event.into()),
                        // Events before the failure go out first only if
                        // there were none: the client resumes from its last
                        // position either way.
                        Err(error) => return Err(backend_status(error)),
                    }
                }
                Ok(v1::SubscribeResponse { events })
            })
            .take_until(stopping.cancelled_owned())
            .chain(futures::stream::once(async { Err(shutting_down()) }));
        Ok(Response::new(Box::pin(events)))
    }
}

/// One publish: decode, check, append; the results once durable.
async fn publish(
    backend: &dyn Backend,
    request: v1::PublishRequest,
    now_ms: i64,
) -> Result<Vec<v1::PublishResult>, Problem> {
    let (topic, inputs) = convert::publish_request(request, now_ms)?;
    let results = backend.publish(&topic, inputs).await?;
    Ok(results.into_iter().map(convert::publish_result).collect())
}

/// Runs a `PublishStream` call: reads batches while fewer than
/// [`PUBLISH_WINDOW`] are in flight, publishes each at once, and sends the
/// acks in the order the batches came. Batches to one partition are appended
/// in the order they came too: [`FuturesOrdered`] first-polls in order, a
/// publish runs without a cooperative budget up to its partitions' writer
/// queues, and those queues (a fair semaphore, then a channel) are FIFO.
async fn pipeline(
    backend: Arc<dyn Backend>,
    mut incoming: Streaming<v1::PublishRequest>,
    sender: mpsc::Sender<Result<v1::PublishAck, Status>>,
    state: GrpcState,
) {
    let mut in_flight = FuturesOrdered::new();
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            () = state.stopping.cancelled() => {
                let _ = sender.send(Err(shutting_down())).await;
                return;
            }
            Some(ack) = in_flight.next(), if !in_flight.is_empty() => {
                if sender.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
            next = incoming.next(), if reading && in_flight.len() < PUBLISH_WINDOW => match next {
                Some(Ok(request)) => {
                    let backend = Arc::clone(&backend);
                    let now_ms = state.clock.now_ms();
                    // Unconstrained: with Tokio's cooperative budget a
                    // batch could be told "not now" halfway through its
                    // partitions and a later batch, polled with a fresh
                    // budget, could reach a shared partition first —
                    // breaking append order. Without it a batch only waits
                    // in the partition writers' queues, which are FIFO.
                    in_flight.push_back(tokio::task::unconstrained(async move {
                        let request_id = request.request_id;
                        match publish(&*backend, request, now_ms).await {
                            Ok(results) => v1::PublishAck { request_id, results, error: None },
                            Err(problem) => v1::PublishAck {
                                request_id,
                                results: Vec::new(),
                                error: Some(failure(&problem)),
                            },
                        }
                    }));
                }
                // The client finished sending (or went away): answer what
                // is in flight, then end.
                Some(Err(_)) | None => reading = false,
            },
            else => return,
        }
    }
}
