//! Batched, pipelined publishing over one `PublishStream`.
//!
//! ```text
//! publish(event) ─▶ bounded queue ─▶ batcher task ─▶ PublishStream ─▶ Herald
//!   (waits when the queue is full:    │ linger / max batch / max bytes
//!    backpressure)                    │ at most `window` batches in flight
//!                                     ◀─ acks (in order) resolve each
//!                                        event's PendingPublish
//! ```
//!
//! Every event gets an id before it is queued, so when the stream breaks the
//! batches in flight are sent again on a new stream and the topic's dedup
//! window drops what had already been appended: each event is stored once
//! and its caller gets its one position.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use herald_proto::v1;
use herald_types::{Event, EventInput};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Client, Error, PublishResult, Result};

/// Builds a [`Publisher`].
#[derive(Debug)]
pub struct PublisherBuilder {
    client: Client,
    topic: String,
    linger: Duration,
    max_batch: usize,
    max_bytes: usize,
    window: usize,
    queue: usize,
}

impl PublisherBuilder {
    pub(crate) fn new(client: Client, topic: &str) -> Self {
        Self {
            client,
            topic: topic.to_owned(),
            linger: Duration::from_millis(1),
            max_batch: 1_000,
            max_bytes: 1 << 20,
            window: 64,
            queue: 10_000,
        }
    }

    /// How long a batch waits for more events before it is sent (default
    /// 1 ms). Zero sends whatever is queued at once.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Events per batch at most (default 1,000).
    pub fn max_batch(mut self, events: usize) -> Self {
        self.max_batch = events.max(1);
        self
    }

    /// Bytes of payload per batch at most (default 1 MiB; a larger event
    /// goes alone).
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes.max(1);
        self
    }

    /// Batches in flight (sent, not yet acknowledged) at most (default 64).
    pub fn window(mut self, batches: usize) -> Self {
        self.window = batches.max(1);
        self
    }

    /// Events queued before [`Publisher::publish`] waits (default 10,000).
    pub fn queue(mut self, events: usize) -> Self {
        self.queue = events.max(1);
        self
    }

    /// Starts the publisher's task (on the current Tokio runtime).
    pub fn build(self) -> Publisher {
        let (sender, receiver) = mpsc::channel(self.queue);
        let task = Batcher {
            client: self.client,
            topic: self.topic,
            linger: self.linger,
            max_batch: self.max_batch,
            max_bytes: self.max_bytes,
            window: self.window,
            queued: receiver,
        };
        tokio::spawn(task.run());
        Publisher { queue: sender }
    }
}

/// Publishes events in batches over one pipelined stream. Cheap to clone;
/// the task ends once every clone is dropped and what was queued is
/// acknowledged.
#[derive(Debug, Clone)]
pub struct Publisher {
    queue: mpsc::Sender<Queued>,
}

impl Publisher {
    /// Queues an event (waiting while the queue is full) and returns a
    /// future of its position, resolved once it is durable. An empty id is
    /// replaced by a generated one first.
    ///
    /// ```no_run
    /// # async fn demo(publisher: herald_client::Publisher) -> herald_client::Result<()> {
    /// use herald_client::Event;
    /// let mut pending = Vec::new();
    /// for n in 0..100 {
    ///     let event = Event::new(format!("order-{n}"), "/shop", "order.created");
    ///     pending.push(publisher.publish(event).await?);
    /// }
    /// for ack in pending {
    ///     let stored = ack.await?;
    ///     assert!(!stored.duplicate);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(&self, event: impl Into<EventInput>) -> Result<PendingPublish> {
        let event = prepare(event.into())?;
        let (reply, receiver) = oneshot::channel();
        let bytes = event.data.as_ref().map_or(0, bytes::Bytes::len) + 64;
        self.queue
            .send(Queued {
                event,
                bytes,
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        Ok(PendingPublish(receiver))
    }
}

/// The position of a published event, once it is durable.
#[derive(Debug)]
pub struct PendingPublish(oneshot::Receiver<Result<PublishResult>>);

impl Future for PendingPublish {
    type Output = Result<PublishResult>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(context)
            .map(|outcome| outcome.unwrap_or(Err(Error::Closed)))
    }
}

/// An event as sent: checked, with an id.
pub(crate) fn prepare(input: EventInput) -> Result<v1::Event> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    let partition = input.partition;
    let mut event: Event = input.event;
    if event.id.is_empty() {
        event.id = Event::generate_id(now_ms);
    }
    if event.traceparent.is_none() {
        // The caller's trace, when the application exports spans (an
        // OpenTelemetry layer): Herald's `publish` span continues it.
        event.traceparent = herald_trace::traceparent(&tracing::Span::current());
    }
    Ok(EventInput::from_parts(event, partition, None, now_ms)?.into())
}

/// [`prepare`] for each.
pub(crate) fn prepare_all(
    events: impl IntoIterator<Item = impl Into<EventInput>>,
) -> Result<Vec<v1::Event>> {
    events
        .into_iter()
        .map(|event| prepare(event.into()))
        .collect()
}

struct Queued {
    event: v1::Event,
    bytes: usize,
    reply: oneshot::Sender<Result<PublishResult>>,
}

/// A batch sent and not yet acknowledged.
struct InFlight {
    request_id: u64,
    events: Vec<v1::Event>,
    replies: Vec<oneshot::Sender<Result<PublishResult>>>,
}

/// One open `PublishStream`.
struct Connection {
    requests: mpsc::Sender<v1::PublishRequest>,
    acks: tonic::Streaming<v1::PublishAck>,
}

struct Batcher {
    client: Client,
    topic: String,
    linger: Duration,
    max_batch: usize,
    max_bytes: usize,
    window: usize,
    queued: mpsc::Receiver<Queued>,
}

impl Batcher {
    async fn run(mut self) {
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut next_id = 1u64;
        let mut batch: Vec<Queued> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut deadline: Option<Instant> = None;
        let mut connection: Option<Connection> = None;
        let mut open = true;
        let mut failures = 0u32;
        loop {
            if !open && batch.is_empty() && in_flight.is_empty() {
                return;
            }
            if connection.is_none() {
                match self.reconnect(&in_flight).await {
                    Ok(fresh) => connection = Some(fresh),
                    Err(error) => {
                        failures += 1;
                        let policy = self.client.retry_policy();
                        if !error.is_retryable() || failures >= policy.attempts {
                            fail_all(&mut in_flight, &mut batch, &error);
                            // Keep serving new events: the next one tries
                            // to connect again.
                            failures = 0;
                            if !open {
                                return;
                            }
                            match self.queued.recv().await {
                                Some(queued) => {
                                    batch_bytes = queued.bytes;
                                    batch.push(queued);
                                    deadline = Some(Instant::now() + self.linger);
                                }
                                None => return,
                            }
                        } else {
                            tokio::time::sleep(policy.backoff(failures)).await;
                        }
                        continue;
                    }
                }
            }
            let Some(live) = connection.as_mut() else {
                continue;
            };
            let full = batch.len() >= self.max_batch || batch_bytes >= self.max_bytes;
            let can_send = in_flight.len() < self.window;
            let due = deadline.is_some_and(|at| at <= Instant::now());
            if !batch.is_empty() && can_send && (full || due || !open) {
                let sent = std::mem::take(&mut batch);
                batch_bytes = 0;
                deadline = None;
                let request_id = next_id;
                next_id += 1;
                let (events, replies): (Vec<_>, Vec<_>) = sent
                    .into_iter()
                    .map(|queued| (queued.event, queued.reply))
                    .unzip();
                let request = v1::PublishRequest {
                    topic: self.topic.clone(),
                    events: events.clone(),
                    request_id,
                };
                in_flight.push_back(InFlight {
                    request_id,
                    events,
                    replies,
                });
                if live.requests.send(request).await.is_err() {
                    connection = None;
                }
                continue;
            }
            let accept = open && !full;
            let linger = async {
                match deadline {
                    Some(at) if !batch.is_empty() => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                queued = self.queued.recv(), if accept => match queued {
                    Some(queued) => {
                        if batch.is_empty() {
                            deadline = Some(Instant::now() + self.linger);
                        }
                        batch_bytes += queued.bytes;
                        batch.push(queued);
                        // Take whatever else is queued without waiting.
                        while batch.len() < self.max_batch && batch_bytes < self.max_bytes {
                            match self.queued.try_recv() {
                                Ok(queued) => {
                                    batch_bytes += queued.bytes;
                                    batch.push(queued);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    None => open = false,
                },
                ack = live.acks.next(), if !in_flight.is_empty() => match ack {
                    Some(Ok(ack)) => {
                        failures = 0;
                        settle(&mut in_flight, ack);
                    }
                    Some(Err(status)) => {
                        tracing::debug!(%status, "Publish stream failed; reconnecting.");
                        connection = None;
                    }
                    None => connection = None,
                },
                () = linger => {}
            }
        }
    }

    /// Opens a new stream and sends every batch in flight again, in order.
    async fn reconnect(&self, in_flight: &VecDeque<InFlight>) -> Result<Connection> {
        let (requests, receiver) = mpsc::channel(self.window.max(in_flight.len()) + 1);
        for batch in in_flight {
            let request = v1::PublishRequest {
                topic: self.topic.clone(),
                events: batch.events.clone(),
                request_id: batch.request_id,
            };
            // Capacity covers every batch in flight.
            let _ = requests.try_send(request);
        }
        let response = self
            .client
            .events_stream()
            .publish_stream(ReceiverStream::new(receiver))
            .await?;
        Ok(Connection {
            requests,
            acks: response.into_inner(),
        })
    }
}

/// Resolves the batch an ack answers (acks come in send order; older
/// batches answered on a broken stream were resent and are answered again).
fn settle(in_flight: &mut VecDeque<InFlight>, ack: v1::PublishAck) {
    let Some(index) = in_flight
        .iter()
        .position(|batch| batch.request_id == ack.request_id)
    else {
        return;
    };
    let Some(batch) = in_flight.remove(index) else {
        return;
    };
    match ack.error {
        Some(failure) => {
            for reply in batch.replies {
                let _ = reply.send(Err(Error::from_failure(failure.clone())));
            }
        }
        None => {
            let mut results = ack.results.into_iter();
            for reply in batch.replies {
                let outcome = results.next().ok_or_else(|| {
                    Error::Malformed(herald_proto::MalformedMessage {
                        what: "PublishAck",
                        reason: "fewer results than events".to_owned(),
                    })
                });
                let _ = reply.send(outcome);
            }
        }
    }
}

fn fail_all(in_flight: &mut VecDeque<InFlight>, batch: &mut Vec<Queued>, error: &Error) {
    let describe = || Error::Api {
        code: error
            .code()
            .cloned()
            .unwrap_or(crate::ErrorCode::Unavailable),
        message: error.to_string(),
        metadata: std::collections::HashMap::new(),
    };
    for flight in in_flight.drain(..) {
        for reply in flight.replies {
            let _ = reply.send(Err(describe()));
        }
    }
    for queued in batch.drain(..) {
        let _ = queued.reply.send(Err(describe()));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn given_a_span_of_the_caller_when_an_event_is_prepared_should_carry_its_trace() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("app")));
        let (inside, outside, own) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("checkout");
            let inside = span.in_scope(|| prepare(Event::new("a", "/s", "t").into()).unwrap());
            let outside = prepare(Event::new("b", "/s", "t").into()).unwrap();
            let mut given = Event::new("c", "/s", "t");
            given.traceparent =
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
            let own = span.in_scope(|| prepare(given.into()).unwrap());
            (inside, outside, own)
        });
        let spans = exporter.get_finished_spans().unwrap();
        let checkout = spans.iter().find(|span| span.name == "checkout").unwrap();
        let carried = herald_trace::parse(inside.traceparent.as_deref().unwrap()).unwrap();
        assert_eq!(carried.span_id(), checkout.span_context.span_id());
        assert_eq!(outside.traceparent, None);
        assert_eq!(
            own.traceparent.as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
    }
}
