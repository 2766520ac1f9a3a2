//! The Rust SDK for [Herald](https://example.invalid/herald), over its gRPC
//! API (`herald.v1`).
//!
//! - [`Client`]: a connection (cheap to clone) with topic and group
//!   administration, unary publish and reads, and event streams;
//! - [`Publisher`]: batches events (linger, max batch, max bytes), pipelines
//!   batches over one `PublishStream`, applies backpressure, and gives each
//!   event's position back to its caller;
//! - [`Consumer`]: a member of a consumer group (stream, queue or keyed
//!   mode), yielding [`Delivery`]s to [`ack`](Delivery::ack),
//!   [`nack`](Delivery::nack), [`extend`](Delivery::extend) or
//!   [`reject`](Delivery::reject);
//! - [`Subscriber`]: a tail of a topic from a position, resuming after a
//!   lost connection;
//! - jobs and blobs: [`Client::submit_job`] (with an input blob from
//!   [`Client::put_blob`] and scatter-gather parts), [`Client::wait_job`] /
//!   [`Client::watch_job`] for the result, and [`JobWorker`] for workers;
//! - [`Aggregate`]: an event-sourced aggregate in the decider style
//!   (`evolve`, `decide`), loaded from its latest snapshot plus newer events
//!   and appended with optimistic concurrency.
//!
//! ```no_run
//! use herald_client::{Client, Event, GroupMode, GroupOptions, TopicOptions};
//!
//! # async fn demo() -> herald_client::Result<()> {
//! let client = Client::connect("http://127.0.0.1:8080").await?;
//! client.create_topic(TopicOptions::new("orders").partitions(4)).await?;
//! client
//!     .put_group("orders", GroupOptions::new("billing", GroupMode::Queue))
//!     .await?;
//!
//! let publisher = client.publisher("orders").build();
//! let ack = publisher
//!     .publish(Event::new("", "/shop", "order.created"))
//!     .await?;
//! let position = ack.await?;
//! println!("stored at {}:{}", position.partition, position.offset);
//!
//! let mut consumer = client.consumer("orders", "billing").build().await?;
//! while let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     println!("{}", delivery.event().event.ty);
//!     delivery.ack()?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The SDK depends on no server crate: only the protocol (`herald-proto`)
//! and the shared types (`herald-types`).

#![warn(missing_docs)]

mod aggregate;
mod auth;
mod consumer;
mod error;
mod jobs;
mod options;
mod publisher;
mod subscriber;
#[cfg(feature = "tls")]
mod tls;
mod unary;
pub mod webhooks;

use std::future::Future;
use std::time::Duration;

use herald_proto::v1;
use herald_proto::v1::events_client::EventsClient;
use herald_proto::v1::groups_client::GroupsClient;
use herald_proto::v1::streams_client::StreamsClient;
use herald_proto::v1::topics_client::TopicsClient;
use tonic::transport::{Channel, Endpoint};

pub use aggregate::{Aggregate, Decider, HandleError, Loaded};
pub use consumer::{Consumer, ConsumerBuilder, Delivery};
pub use error::{Error, ErrorCode, Result};
pub use herald_proto::v1 as proto;
pub use herald_proto::v1::{PublishResult, StreamMetadata, TopicDescription};
/// W3C trace context helpers: [`trace::traceparent`] of a span to hand on
/// (a job submitted from a [`Delivery::span`]), [`trace::parse`].
pub use herald_trace as trace;
pub use herald_types::{Event, EventInput, ExtensionValue, StoredEvent};
pub use jobs::{BlobInfo, Job, JobSpec, JobStatus, JobTask, JobWorker};
pub use options::{AckDurability, Expected, Fsync, GroupMode, GroupOptions, Start, TopicOptions};
pub use publisher::{PendingPublish, Publisher, PublisherBuilder};
pub use subscriber::{From, Subscriber, SubscriberBuilder};

/// How the client retries calls that failed for a transient reason
/// (Herald starting or stopping, a lost connection): exponential backoff
/// from `initial` to `max`, at most `attempts` tries in all.
///
/// Publishes are retried safely because the SDK gives every event an id
/// before sending it, so a retried publish is deduplicated by the topic.
/// Stream appends and other calls whose effect is unknown after a lost
/// connection are not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all (1 = no retry).
    pub attempts: u32,
    /// The first backoff.
    pub initial: Duration,
    /// The longest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff before try number `attempt + 1` (`attempt` from 1).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Runs `call` until it succeeds, fails for good, or tries run out.
    pub(crate) async fn run<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(error) if error.is_retryable() && attempt < self.attempts => {
                    tracing::debug!(%error, attempt, "Retrying a Herald call.");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    retry: RetryPolicy,
    lazy: bool,
    token: Option<String>,
    #[cfg(feature = "tls")]
    tls: tls::Settings,
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` with every call: an API key
    /// (`hrd_…`) or a JWT. Needed when the server has auth configured.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// `https://` endpoints: trust the CA certificates in `pem` (PEM, one
    /// or more), and only them, instead of the system's roots; for a
    /// server whose certificate comes from a private CA.
    #[cfg(feature = "tls")]
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca = Some(pem.into());
        self
    }

    /// `https://` endpoints: present this certificate chain and private key
    /// (PEM) to a server that asks for client certificates (mTLS).
    #[cfg(feature = "tls")]
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.tls.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A deadline for each unary call (default none). Streaming calls
    /// (publish streams, consumers, subscriptions) have none.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// How transient failures are retried (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Connect on first use instead of in [`ClientBuilder::connect`].
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// Connects (or, [`lazy`](Self::lazy), prepares to). `https://`
    /// endpoints need the `tls` feature (on by default).
    pub async fn connect(self) -> Result<Client> {
        let authorization = self
            .token
            .as_deref()
            .map(auth::bearer)
            .transpose()
            .map_err(|reason| Error::InvalidEndpoint {
                endpoint: self.endpoint.clone(),
                reason,
            })?;
        let invalid = |reason: String| Error::InvalidEndpoint {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let uri: http::Uri = self
            .endpoint
            .parse()
            .map_err(|error: http::uri::InvalidUri| invalid(error.to_string()))?;
        let transport = match uri.scheme_str() {
            Some("http") => Transport::Plain,
            #[cfg(feature = "tls")]
            Some("https") => {
                Transport::Tls(tls::TlsConnector::new(&uri, self.tls.client_config()?)?)
            }
            #[cfg(not(feature = "tls"))]
            Some("https") => {
                return Err(Error::Tls {
                    reason: "https:// endpoints need herald-client's `tls` feature".to_owned(),
                });
            }
            _ => return Err(invalid("the scheme must be http:// or https://".to_owned())),
        };
        // The channel's endpoint is the plain address: over TLS its
        // connector makes the TLS stream and the origin says https.
        let plain = match &transport {
            Transport::Plain => self.endpoint.clone(),
            #[cfg(feature = "tls")]
            Transport::Tls(_) => format!(
                "http://{}",
                uri.authority().map_or("", http::uri::Authority::as_str)
            ),
        };
        let endpoint = Endpoint::from_shared(plain)
            .map_err(|error| invalid(error.to_string()))?
            .origin(uri.clone())
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_adaptive_window(true);
        // Unary calls go on their own HTTP/2 connection (`unary.rs`), TLS
        // or not; the channel carries only streams and connects on the
        // first one.
        let direct = unary::Direct::new(&uri, self.connect_timeout, &transport)
            .ok_or_else(|| invalid("no host".to_owned()))?;
        let channel = match transport {
            Transport::Plain => endpoint.connect_lazy(),
            #[cfg(feature = "tls")]
            Transport::Tls(connector) => endpoint.connect_with_connector_lazy(connector),
        };
        if !self.lazy {
            self.retry
                .run(|| async { Ok(direct.connect().await?) })
                .await?;
        }
        let unary = direct;
        Ok(Client {
            channel: auth::Authorized::new(channel, authorization.clone()),
            unary: auth::Authorized::new(unary, authorization),
            request_timeout: self.request_timeout,
            retry: self.retry,
        })
    }
}

/// The transport of streaming calls: the channel, with credentials.
pub(crate) type Streams = auth::Authorized<Channel>;

/// How a client reaches its endpoint.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// `http://`: plain TCP (HTTP/2 with prior knowledge).
    Plain,
    /// `https://`: TLS, ALPN h2.
    #[cfg(feature = "tls")]
    Tls(tls::TlsConnector),
}

/// A connection to Herald. Cheap to clone: clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    /// Streaming calls (and, over TLS, unary ones).
    pub(crate) channel: Streams,
    /// Unary calls.
    pub(crate) unary: auth::Authorized<unary::Unary>,
    request_timeout: Option<Duration>,
    retry: RetryPolicy,
}

impl Client {
    /// A builder for a client of `endpoint` (`http://host:port`, or
    /// `https://host:port` with the `tls` feature).
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            retry: RetryPolicy::default(),
            lazy: false,
            token: None,
            #[cfg(feature = "tls")]
            tls: tls::Settings::default(),
        }
    }

    /// Connects to `endpoint` with the defaults.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self> {
        Self::builder(endpoint).connect().await
    }

    /// Unary calls of `Events`.
    fn events(&self) -> EventsClient<auth::Authorized<unary::Unary>> {
        EventsClient::new(self.unary.clone()).max_decoding_message_size(usize::MAX)
    }

    /// Streaming calls of `Events`.
    pub(crate) fn events_stream(&self) -> EventsClient<Streams> {
        EventsClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX)
    }

    /// Unary calls of `Groups`.
    fn groups(&self) -> GroupsClient<auth::Authorized<unary::Unary>> {
        GroupsClient::new(self.unary.clone()).max_decoding_message_size(usize::MAX)
    }

    /// Streaming calls of `Groups`.
    pub(crate) fn groups_stream(&self) -> GroupsClient<Streams> {
        GroupsClient::new(self.channel.clone()).max_decoding_message_size(usize::MAX)
    }

    fn topics(&self) -> TopicsClient<auth::Authorized<unary::Unary>> {
        TopicsClient::new(self.unary.clone())
    }

    pub(crate) fn streams(&self) -> StreamsClient<auth::Authorized<unary::Unary>> {
        StreamsClient::new(self.unary.clone()).max_decoding_message_size(usize::MAX)
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// A unary request with the client's deadline.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = self.request_timeout {
            request.set_timeout(timeout);
        }
        request
    }

    // ------------------------------------------------------------ topics

    /// Creates a topic; [`ErrorCode::TopicExists`] if it exists.
    pub async fn create_topic(&self, options: TopicOptions) -> Result<v1::Topic> {
        let message = v1::CreateTopicRequest {
            topic: Some(options.into_proto()),
        };
        let created = self.topics().create_topic(self.request(message)).await?;
        Ok(created.into_inner())
    }

    /// Every topic.
    pub async fn list_topics(&self) -> Result<Vec<v1::Topic>> {
        let listed = self
            .retry
            .run(|| async {
                let request = self.request(v1::ListTopicsRequest {});
                Ok(self.topics().list_topics(request).await?)
            })
            .await?;
        Ok(listed.into_inner().topics)
    }

    /// A topic with its partitions' extents.
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        let described = self
            .retry
            .run(|| async {
                let request = self.request(v1::TopicRequest {
                    topic: topic.to_owned(),
                });
                Ok(self.topics().describe_topic(request).await?)
            })
            .await?;
        Ok(described.into_inner())
    }

    /// Changes a topic's retention, dedup window or event size limit
    /// (fields left `None` stay as they are).
    pub async fn update_topic(&self, update: v1::UpdateTopicRequest) -> Result<v1::Topic> {
        let updated = self.topics().update_topic(self.request(update)).await?;
        Ok(updated.into_inner())
    }

    /// Deletes a topic with its groups.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        let request = self.request(v1::TopicRequest {
            topic: topic.to_owned(),
        });
        self.topics().delete_topic(request).await?;
        Ok(())
    }

    // ------------------------------------------------------------ events

    /// Publishes events in one batch (atomic per partition) and returns
    /// their positions once durable. Events without an id get one here, so
    /// the retries of the client's [`RetryPolicy`] are deduplicated.
    pub async fn publish(
        &self,
        topic: &str,
        events: impl IntoIterator<Item = impl Into<EventInput>>,
    ) -> Result<Vec<PublishResult>> {
        let events = publisher::prepare_all(events)?;
        let published = self
            .retry
            .run(|| async {
                let request = self.request(v1::PublishRequest {
                    topic: topic.to_owned(),
                    events: events.clone(),
                    request_id: 0,
                });
                Ok(self.events().publish(request).await?)
            })
            .await?;
        Ok(published.into_inner().results)
    }

    /// A [`Publisher`] for `topic`: batched, pipelined publishing.
    pub fn publisher(&self, topic: &str) -> PublisherBuilder {
        PublisherBuilder::new(self.clone(), topic)
    }

    /// Reads up to `limit` events of one partition from `from_offset`;
    /// returns them and the offset to read from next.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
        limit: u32,
    ) -> Result<(Vec<StoredEvent>, u64)> {
        let read = self
            .retry
            .run(|| async {
                let request = self.request(v1::ReadRequest {
                    topic: topic.to_owned(),
                    partition,
                    from_offset,
                    limit,
                });
                Ok(self.events().read(request).await?)
            })
            .await?
            .into_inner();
        let events = read
            .events
            .into_iter()
            .map(StoredEvent::try_from)
            .collect::<Result<_, _>>()?;
        Ok((events, read.next_offset))
    }

    /// A [`Subscriber`] tailing `topic`.
    pub fn subscribe(&self, topic: &str) -> SubscriberBuilder {
        SubscriberBuilder::new(self.clone(), topic)
    }

    // ------------------------------------------------------------ groups

    /// Creates a group on `topic`, or updates its settings; returns it and
    /// whether it was created.
    pub async fn put_group(&self, topic: &str, options: GroupOptions) -> Result<(v1::Group, bool)> {
        let request = self.request(v1::PutGroupRequest {
            topic: topic.to_owned(),
            group: Some(options.into_proto()),
        });
        let put = self.groups().put_group(request).await?.into_inner();
        let group = put.group.ok_or_else(|| herald_proto::MalformedMessage {
            what: "PutGroupResponse",
            reason: "no group".to_owned(),
        })?;
        Ok((group, put.created))
    }

    /// A group's state: members, progress per partition, in flight, dead
    /// letters.
    pub async fn group_status(&self, topic: &str, group: &str) -> Result<v1::GroupStatus> {
        let status = self
            .retry
            .run(|| async {
                let request = self.request(v1::GroupRequest {
                    topic: topic.to_owned(),
                    group: group.to_owned(),
                });
                Ok(self.groups().get_group(request).await?)
            })
            .await?;
        Ok(status.into_inner())
    }

    /// Deletes a group.
    pub async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        let request = self.request(v1::GroupRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
        });
        self.groups().delete_group(request).await?;
        Ok(())
    }

    /// Moves a group's position.
    pub async fn reset_group(&self, topic: &str, group: &str, to: Start) -> Result<()> {
        let request = self.request(v1::ResetGroupRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            to: Some(to.into_proto()),
        });
        self.groups().reset_group(request).await?;
        Ok(())
    }

    /// Up to `limit` dead letters of a group, oldest first.
    pub async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        limit: u32,
    ) -> Result<Vec<v1::DeadLetter>> {
        let request = self.request(v1::DeadLettersRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            limit,
        });
        let listed = self.groups().list_dead_letters(request).await?;
        Ok(listed.into_inner().dead_letters)
    }

    /// Delivers dead letters again (all when `ids` is empty); returns how
    /// many.
    pub async fn redrive(&self, topic: &str, group: &str, ids: Vec<u64>) -> Result<u64> {
        let request = self.request(v1::RedriveRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            ids,
        });
        Ok(self.groups().redrive(request).await?.into_inner().redriven)
    }

    /// A [`Consumer`] of `group` on `topic`.
    pub fn consumer(&self, topic: &str, group: &str) -> ConsumerBuilder {
        ConsumerBuilder::new(self.clone(), topic, group)
    }

    // ----------------------------------------------------------- streams

    /// Appends events to an event stream atomically, if the stream's
    /// version meets `expected`; returns the first and last version taken.
    /// A mismatch is [`ErrorCode::VersionConflict`] with
    /// [`Error::current_version`]. Not retried (its effect is unknown after
    /// a lost connection).
    pub async fn append(
        &self,
        topic: &str,
        stream: &str,
        events: impl IntoIterator<Item = impl Into<EventInput>>,
        expected: Expected,
    ) -> Result<v1::AppendResponse> {
        let request = self.request(v1::AppendRequest {
            topic: topic.to_owned(),
            stream: stream.to_owned(),
            events: publisher::prepare_all(events)?,
            expected: Some(expected.into_proto()),
        });
        Ok(self.streams().append(request).await?.into_inner())
    }

    /// Reads up to `limit` events of a stream from `from_version` (forward)
    /// or down from it (`backward`; `None` = from the last); returns them
    /// with their versions and where to continue.
    pub async fn read_stream(
        &self,
        topic: &str,
        stream: &str,
        from_version: Option<u64>,
        backward: bool,
        limit: u32,
    ) -> Result<(Vec<(u64, StoredEvent)>, Option<u64>)> {
        let read = self
            .retry
            .run(|| async {
                let request = self.request(v1::ReadStreamRequest {
                    topic: topic.to_owned(),
                    stream: stream.to_owned(),
                    from_version,
                    backward,
                    limit,
                });
                Ok(self.streams().read_stream(request).await?)
            })
            .await?
            .into_inner();
        let mut events = Vec::with_capacity(read.events.len());
        for versioned in read.events {
            let event = versioned
                .event
                .ok_or_else(|| herald_proto::MalformedMessage {
                    what: "VersionedEvent",
                    reason: "no event".to_owned(),
                })?;
            events.push((versioned.version, StoredEvent::try_from(event)?));
        }
        Ok((events, read.next_version))
    }

    /// A stream's version and times.
    pub async fn stream_metadata(&self, topic: &str, stream: &str) -> Result<StreamMetadata> {
        let request = self.request(v1::StreamRequest {
            topic: topic.to_owned(),
            stream: stream.to_owned(),
        });
        Ok(self.streams().get_stream(request).await?.into_inner())
    }

    /// Deletes a stream: soft (its events stay in the topic) or `hard`.
    pub async fn delete_stream(&self, topic: &str, stream: &str, hard: bool) -> Result<()> {
        let request = self.request(v1::DeleteStreamRequest {
            topic: topic.to_owned(),
            stream: stream.to_owned(),
            hard,
        });
        self.streams().delete_stream(request).await?;
        Ok(())
    }

    /// Stores a snapshot of a stream's state as of `version`.
    pub async fn put_snapshot(
        &self,
        topic: &str,
        stream: &str,
        version: u64,
        state: &serde_json::Value,
    ) -> Result<()> {
        let state_json = serde_json::to_vec(state).map_err(|error| Error::Api {
            code: ErrorCode::InvalidArgument,
            message: format!("snapshot state does not serialize: {error}"),
            metadata: std::collections::HashMap::new(),
        })?;
        let request = self.request(v1::PutSnapshotRequest {
            topic: topic.to_owned(),
            stream: stream.to_owned(),
            snapshot: Some(v1::Snapshot {
                version,
                state_json: state_json.into(),
            }),
        });
        self.streams().put_snapshot(request).await?;
        Ok(())
    }

    /// The latest snapshot of a stream: its version and state.
    pub async fn get_snapshot(
        &self,
        topic: &str,
        stream: &str,
    ) -> Result<Option<(u64, serde_json::Value)>> {
        let request = self.request(v1::StreamRequest {
            topic: topic.to_owned(),
            stream: stream.to_owned(),
        });
        let got = self.streams().get_snapshot(request).await?.into_inner();
        let Some(snapshot) = got.snapshot else {
            return Ok(None);
        };
        let state = serde_json::from_slice(&snapshot.state_json).map_err(|error| {
            herald_proto::MalformedMessage {
                what: "Snapshot",
                reason: error.to_string(),
            }
        })?;
        Ok(Some((snapshot.version, state)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_default_policy_when_backing_off_should_double_up_to_the_max() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), Duration::from_millis(50));
        assert_eq!(policy.backoff(2), Duration::from_millis(100));
        assert_eq!(policy.backoff(40), Duration::from_secs(2));
    }
}
