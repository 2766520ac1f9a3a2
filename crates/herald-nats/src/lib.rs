//! The NATS JetStream backend: Herald's backend traits on a NATS cluster
//! (`async-nats`, nats-server 2.12 or later), so several Herald nodes serve
//! one system with the API unchanged.
//!
//! # Layout
//!
//! As `herald-embedded`: one module per backend trait — `topics.rs`,
//! `events.rs`, `groups.rs`, `streams.rs`, `kv.rs` — each the trait's
//! `impl` on [`NatsBackend`] and nothing else; the backend's own machinery
//! beside them: `names.rs` (how Herald's names become stream names and
//! subjects), `codec.rs` (an event as a NATS message), `api.rs` (the
//! JetStream API requests async-nats has no call for: atomic batches,
//! batched direct gets), `topic.rs` (the topic catalogue and its cache),
//! `source.rs` (a topic's partitions as `herald-groups` reads them),
//! `group.rs` (consumer groups: ownership, forwarding, state writes),
//! `blobs.rs` (blobs in a JetStream object store, as an `object_store`).
//! This file holds the options, connecting, and [`Backend`].
//!
//! # Mapping
//!
//! | Herald | JetStream |
//! |---|---|
//! | key-value state (every bucket) | one stream `<prefix>-kv`, subjects `<prefix>.kv.<bucket>.<key>`, one message kept per subject; revision = the message's stream sequence; a delete writes a tombstone (header `Herald-Op: del`) that expires after [`kv::TOMBSTONE_TTL`] |
//! | topic | its settings in the `topics` bucket of that stream |
//! | partition `p` of topic `t` | one stream `<prefix>-t-<t>-<p>` holding `<prefix>.t.<t>.<p>.>`; offset = stream sequence − 1, so offsets are dense per partition as on the embedded backend; retention by age, bytes and count per partition |
//! | event | one message on `<prefix>.t.<t>.<p>.e`: the data as payload, the attributes as `ce-` headers (`codec.rs`) |
//! | "stored" notifications | each partition stream republishes the headers of what it stored (with `Nats-Sequence`) on `<prefix>.stored.<t>.<p>.>`: waiters and groups learn a partition's end without polling |
//! | dedup window | the partition stream's `duplicate_window`, the event id as `Nats-Msg-Id` |
//! | the events of one publish in one partition | one atomic batch (ADR-50): all stored, contiguous, or none |
//! | event-sourcing stream `s` | its events on `<prefix>.t.<t>.<p>.s.<s>` in the partition of its id, version in `Herald-Version`; expected version = `Nats-Expected-Last-Subject-Sequence`; deleted streams' rows and snapshots in key-value buckets (`streams.rs`) |
//! | blob | an object in the object store bucket `<prefix>-blobs` (`blobs.rs`): chunks on `$O.<bucket>.C.<nuid>`, its description on `$O.<bucket>.M.<name>` |
//! | consumer group | settings, state, lease and dead letters in key-value buckets; run by one owner node at a time, other nodes forward calls to it (`group.rs`) |
//!
//! Names are escaped (`names.rs`): topic names may hold `.`, which
//! subjects and stream names cannot.

mod api;
pub mod blobs;
mod codec;
mod events;
mod group;
mod groups;
mod kv;
mod names;
mod source;
mod streams;
mod topic;
mod topics;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use herald_backend::{Backend, Error, Result};
use tracing::info;

use names::Names;
use topic::Catalogue;

/// How the NATS backend connects and lays out its streams.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:4222`, `tls://…`); any one reachable is
    /// enough, the client learns the rest of the cluster from it.
    pub urls: Vec<String>,
    /// A credentials file (JWT and NKey seed), for decentralized auth.
    pub credentials_file: Option<PathBuf>,
    /// An NKey seed (`SU…`).
    pub nkey_seed: Option<String>,
    /// A token.
    pub token: Option<String>,
    /// A user name and password.
    pub user_password: Option<(String, String)>,
    /// CA certificates (PEM) to verify the servers with; setting one
    /// requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM), for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Require TLS even without a CA file (the system's roots).
    pub tls_required: bool,
    /// The JetStream domain (leaf-node setups); `None` for the local one.
    pub domain: Option<String>,
    /// Replicas of every stream Herald creates (1, or 3 on a cluster of
    /// three or more).
    pub replicas: usize,
    /// The first part of every stream name and subject, so several Herald
    /// systems can share one NATS account. Letters, digits, `-`, `_`.
    pub prefix: String,
    /// How long a JetStream request may take.
    pub request_timeout: Duration,
    /// How long a node's ownership of a consumer group lasts unrenewed:
    /// when a node dies, its groups move to another node after this long.
    pub group_lease: Duration,
    /// Memory each consumer group may hold (as on the embedded backend).
    pub group_budget: herald_groups::Budget,
    /// How many topics and partitions may be created.
    pub topic_limits: herald_backend::topic::TopicLimits,
}

impl NatsOptions {
    /// Options for a server at `url`, one replica, prefix `herald`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            credentials_file: None,
            nkey_seed: None,
            token: None,
            user_password: None,
            tls_ca_file: None,
            tls_client: None,
            tls_required: false,
            domain: None,
            replicas: 1,
            prefix: "herald".into(),
            request_timeout: Duration::from_secs(10),
            group_lease: Duration::from_secs(5),
            group_budget: herald_groups::Budget::default(),
            topic_limits: herald_backend::topic::TopicLimits::default(),
        }
    }
}

/// How long connecting waits for JetStream to answer (a cluster electing
/// its leader) before giving up.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// How long a shutdown spends writing group state and giving up leases.
const STOP_GROUPS_WITHIN: Duration = Duration::from_secs(3);

/// The NATS backend. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct NatsBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    replicas: usize,
    /// The JetStream API's subject prefix (`$JS.API`, or a domain's).
    api: String,
    /// How long a JetStream request may take.
    timeout: Duration,
    topics: Catalogue,
    topic_limits: herald_backend::topic::TopicLimits,
    /// The consumer groups this node runs (`group.rs`).
    groups: group::GroupHost,
    closed: AtomicBool,
}

/// A NATS or JetStream failure as the backend's error.
pub(crate) fn unavailable(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        detail: format!("NATS {what}: {error}"),
    }
}

/// A direct get's message, `None` if there is none.
pub(crate) fn found(
    result: std::result::Result<
        jetstream::message::StreamMessage,
        jetstream::stream::DirectGetError,
    >,
    what: &str,
) -> Result<Option<jetstream::message::StreamMessage>> {
    match result {
        Ok(message) => Ok(Some(message)),
        Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(unavailable(what, error)),
    }
}

impl NatsBackend {
    /// Connects to NATS and makes sure the key-value stream exists.
    pub async fn connect(options: NatsOptions) -> Result<Self> {
        let names = Names::new(&options.prefix)?;
        if !(1..=5).contains(&options.replicas) {
            return Err(Error::InvalidArgument {
                field: "nats.replicas".into(),
                reason: format!("{} is not between 1 and 5", options.replicas),
            });
        }
        let mut connect = async_nats::ConnectOptions::new()
            .name("herald")
            .connection_timeout(options.request_timeout)
            .retry_on_initial_connect();
        if let Some(path) = &options.credentials_file {
            connect =
                connect
                    .credentials_file(path)
                    .await
                    .map_err(|error| Error::InvalidArgument {
                        field: "nats.credentials_file".into(),
                        reason: format!("{}: {error}", path.display()),
                    })?;
        }
        if let Some(seed) = &options.nkey_seed {
            connect = connect.nkey(seed.clone());
        }
        if let Some(token) = &options.token {
            connect = connect.token(token.clone());
        }
        if let Some((user, password)) = &options.user_password {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &options.tls_ca_file {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &options.tls_client {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        if options.tls_required {
            connect = connect.require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = options
            .urls
            .iter()
            .map(|url| {
                url.parse().map_err(|error| Error::InvalidArgument {
                    field: "nats.url".into(),
                    reason: format!("{url:?}: {error}"),
                })
            })
            .collect::<Result<_>>()?;
        // Retrying the first connect makes `connect` return at once; the
        // first request below waits for the connection (up to its timeout).
        let client = connect
            .connect(urls)
            .await
            .map_err(|error| unavailable("connect", error))?;
        let mut js = match &options.domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        };
        js.set_timeout(options.request_timeout);
        let topics = Catalogue::new(client.clone(), &names).await?;
        let inner = Arc::new(Inner {
            client,
            js,
            names,
            replicas: options.replicas,
            api: options.domain.as_ref().map_or_else(
                || "$JS.API".to_owned(),
                |domain| format!("$JS.{domain}.API"),
            ),
            timeout: options.request_timeout,
            topics,
            topic_limits: options.topic_limits,
            groups: group::GroupHost::new(options.group_lease, options.group_budget),
            closed: AtomicBool::new(false),
        });
        // A cluster still electing its JetStream leader refuses stream
        // requests for a few seconds: wait that out, not a misconfiguration.
        let deadline = std::time::Instant::now() + STARTUP_PATIENCE;
        loop {
            match inner.ensure_kv_stream().await {
                Ok(()) => break,
                Err(error) if std::time::Instant::now() < deadline => {
                    tracing::warn!(%error, "JetStream not ready yet; retrying.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error),
            }
        }
        inner.start_group_tasks();
        info!(urls = ?options.urls, prefix = %options.prefix, "NATS backend connected.");
        Ok(Self { inner })
    }
}

impl NatsBackend {
    /// Persists the consumer-group state this node runs now (acks, nacks,
    /// leases), as the background flush does every 50 ms.
    pub async fn flush_group_state(&self) -> Result<()> {
        self.inner.flush_group_state().await
    }

    /// The partitions of `topic` as consumer groups (`herald-groups`) read
    /// them: reads, and ends kept current by the streams' republished
    /// headers.
    pub async fn partitions(
        &self,
        topic: &herald_types::TopicName,
    ) -> Result<Arc<dyn herald_groups::Source>> {
        let runtime = self.inner.topic(topic).await?;
        let source = source::PartitionSource::open(Arc::clone(&self.inner), runtime).await?;
        Ok(Arc::new(source))
    }
}

impl Inner {
    /// A handle on stream `name` (no request is made).
    pub(crate) async fn stream(&self, name: &str) -> Result<jetstream::stream::Stream<()>> {
        self.js
            .get_stream_no_info(name)
            .await
            .map_err(|error| unavailable(&format!("stream {name}"), error))
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Backend for NatsBackend {
    fn is_ready(&self) -> bool {
        !self.inner.closed.load(Ordering::SeqCst)
            && self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    fn health(&self) -> Vec<herald_backend::HealthIssue> {
        let state = self.inner.client.connection_state();
        if state == async_nats::connection::State::Connected {
            return Vec::new();
        }
        vec![herald_backend::HealthIssue {
            component: "nats".into(),
            code: "storage_unavailable",
            error: format!("not connected to NATS ({state})"),
            since_ms: 0,
        }]
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn shutdown(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Group state written and leases given up while the connection is
        // open; then no more calls.
        let groups = match tokio::time::timeout(STOP_GROUPS_WITHIN, self.inner.stop_groups()).await
        {
            Ok(stopped) => stopped,
            Err(_) => {
                tracing::warn!(
                    "Group state not written within the shutdown's bound; the groups move to another node once their leases expire."
                );
                Ok(())
            }
        };
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.topics.close();
        // Publishes already acknowledged are stored; flush what is buffered.
        self.inner
            .client
            .flush()
            .await
            .map_err(|error| unavailable("flush", error))?;
        info!("NATS backend closed.");
        groups
    }
}
