//! `herald.v1.Events`: publish (unary and pipelined), read, subscribe.

use std::future::Future;
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

use super::{GrpcState, backend_status, caller, convert, failure, limit, shutting_down};
use crate::auth::Caller;
use crate::auth::permissions::Action;
use crate::http::events::{DEFAULT_READ_LIMIT, MAX_READ_LIMIT};
use crate::http::tail::{self, Filter, Start};
use crate::problem::Problem;

/// Batches one `PublishStream` call may have in flight (published, not yet
/// acknowledged), besides their bytes (`limits.max_publish_stream_bytes`).
/// A client sending faster is paused by HTTP/2 flow control: the server
/// stops reading its requests.
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
        let caller = caller(&request)?;
        let backend = self.state.backend()?;
        let traceparent = traceparent(&request);
        let request = request.into_inner();
        let now_ms = self.state.clock.now_ms();
        let results = publish(&*backend, &caller, request, now_ms, traceparent.as_deref())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v1::PublishResponse { results }))
    }

    type PublishStreamStream = BoxStream<v1::PublishAck>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<v1::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let caller = caller(&request)?;
        let backend = self.state.backend()?;
        let traceparent = traceparent(&request);
        let incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(SEND_BUFFER);
        let clock = Arc::clone(&self.state.clock);
        let publish = move |request: v1::PublishRequest| {
            let backend = Arc::clone(&backend);
            let caller = caller.clone();
            let now_ms = clock.now_ms();
            let traceparent = traceparent.clone();
            async move {
                let request_id = request.request_id;
                match publish(&*backend, &caller, request, now_ms, traceparent.as_deref()).await {
                    Ok(results) => v1::PublishAck {
                        request_id,
                        results,
                        error: None,
                    },
                    Err(problem) => v1::PublishAck {
                        request_id,
                        results: Vec::new(),
                        error: Some(failure(&problem)),
                    },
                }
            }
        };
        let window = Window {
            batches: PUBLISH_WINDOW,
            bytes: self.state.max_publish_stream_bytes,
        };
        tokio::spawn(pipeline(
            incoming,
            publish,
            sender,
            self.state.stopping.clone(),
            window,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn read(
        &self,
        request: Request<v1::ReadRequest>,
    ) -> Result<Response<v1::ReadResponse>, Status> {
        let caller = caller(&request)?;
        let backend = self.state.backend()?;
        let request = request.into_inner();
        caller.require(Action::TopicsRead, &request.topic)?;
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
        let caller = caller(&request)?;
        let backend = self.state.backend()?;
        let request = request.into_inner();
        caller.require(Action::TopicsRead, &request.topic)?;
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

/// The call's `traceparent` metadata (while tracing is on).
pub(super) fn traceparent<T>(request: &Request<T>) -> Option<String> {
    if !herald_trace::enabled() {
        return None;
    }
    let value = request.metadata().get("traceparent")?;
    value.to_str().ok().map(str::to_owned)
}

/// One publish: decode, check, append; the results once durable.
async fn publish(
    backend: &dyn Backend,
    caller: &Caller,
    request: v1::PublishRequest,
    now_ms: i64,
    traceparent: Option<&str>,
) -> Result<Vec<v1::PublishResult>, Problem> {
    caller.require(Action::TopicsPublish, &request.topic)?;
    let (topic, mut inputs) = convert::publish_request(request, now_ms)?;
    caller.publish(inputs.len(), crate::auth::limits::payload_bytes(&inputs))?;
    let _spans = crate::trace::publishing(&topic, &mut inputs, traceparent);
    let results = backend.publish(&topic, inputs).await?;
    Ok(results.into_iter().map(convert::publish_result).collect())
}

/// How much one `PublishStream` call may have in flight.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// Batches.
    batches: usize,
    /// Bytes of batches (their encoded size). The next batch is read while
    /// fewer are in flight, so the bound is this plus one batch (itself at
    /// most `limits.max_request_bytes`).
    bytes: usize,
}

/// Runs a `PublishStream` call: reads batches while the [`Window`] has room,
/// publishes each at once, and sends the acks in the order the batches came.
/// Batches to one partition are appended in the order they came too:
/// [`FuturesOrdered`] first-polls in order, a publish runs without a
/// cooperative budget up to its partitions' writer queues, and those queues
/// (a fair semaphore, then a channel) are FIFO.
async fn pipeline<Incoming, Publish, Publishing>(
    mut incoming: Incoming,
    publish: Publish,
    sender: mpsc::Sender<Result<v1::PublishAck, Status>>,
    stopping: tokio_util::sync::CancellationToken,
    window: Window,
) where
    Incoming: Stream<Item = Result<v1::PublishRequest, Status>> + Unpin,
    Publish: Fn(v1::PublishRequest) -> Publishing,
    Publishing: Future<Output = v1::PublishAck>,
{
    let mut in_flight = FuturesOrdered::new();
    let mut in_flight_bytes = 0_usize;
    let mut reading = true;
    loop {
        let room = in_flight.len() < window.batches && in_flight_bytes < window.bytes;
        tokio::select! {
            biased;
            () = stopping.cancelled() => {
                let _ = sender.send(Err(shutting_down())).await;
                return;
            }
            Some((ack, bytes)) = in_flight.next(), if !in_flight.is_empty() => {
                in_flight_bytes -= bytes;
                if sender.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
            next = incoming.next(), if reading && room => match next {
                Some(Ok(request)) => {
                    let bytes = prost::Message::encoded_len(&request);
                    in_flight_bytes += bytes;
                    let publishing = publish(request);
                    // Unconstrained: with Tokio's cooperative budget a
                    // batch could be told "not now" halfway through its
                    // partitions and a later batch, polled with a fresh
                    // budget, could reach a shared partition first —
                    // breaking append order. Without it a batch only waits
                    // in the partition writers' queues, which are FIFO.
                    in_flight.push_back(tokio::task::unconstrained(async move {
                        (publishing.await, bytes)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn batch(request_id: u64, data_bytes: usize) -> v1::PublishRequest {
        v1::PublishRequest {
            topic: "orders".to_owned(),
            request_id,
            events: vec![v1::Event {
                source: "/test".to_owned(),
                r#type: "t".to_owned(),
                data: Some(bytes::Bytes::from(vec![7; data_bytes])),
                ..v1::Event::default()
            }],
        }
    }

    /// Publishes that never finish (a disk that stalls): the pipeline must
    /// stop reading once the window's bytes are in flight.
    #[tokio::test(flavor = "current_thread")]
    async fn given_publishes_that_do_not_finish_when_batches_keep_coming_should_read_no_more_than_the_byte_window()
     {
        const BATCH: usize = 64 * 1024;
        const WINDOW: usize = 1024 * 1024;
        let read = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&read);
        let incoming =
            futures::stream::iter((0..1_000).map(|id| Ok(batch(id, BATCH)))).inspect(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            });
        let (sender, _receiver) = mpsc::channel(SEND_BUFFER);
        let stopping = tokio_util::sync::CancellationToken::new();
        let window = Window {
            batches: PUBLISH_WINDOW,
            bytes: WINDOW,
        };
        let publish = |_request| std::future::pending::<v1::PublishAck>();
        let running = tokio::spawn(pipeline(
            Box::pin(incoming),
            publish,
            sender,
            stopping.clone(),
            window,
        ));
        // Single-threaded: after enough turns the pipeline has read all it
        // will; every input is ready at once, so this waits on no clock.
        for _ in 0..1_000 {
            tokio::task::yield_now().await;
        }
        let batches_read = read.load(Ordering::SeqCst);
        stopping.cancel();
        running.await.unwrap();
        assert!(
            batches_read <= WINDOW / BATCH + 1,
            "read {batches_read} batches of {BATCH} bytes with a {WINDOW}-byte window"
        );
        assert!(batches_read >= WINDOW / BATCH, "read only {batches_read}");
    }
}
