//! Configuration: the typed [`Options`] and the layering that fills them.
//!
//! Layers, lowest to highest precedence:
//!
//! 1. built-in defaults ([`Options::default`], documented by `herald.example.toml`);
//! 2. a TOML file: `--config <path>` (must exist) or `./herald.toml` (if it exists);
//! 3. environment variables `HERALD_<KEY>`, with `__` for nesting
//!    (`HERALD_LISTEN`, `HERALD_LOG__FORMAT`);
//! 4. command-line flags ([`Overrides`]).
//!
//! Unknown keys refuse to boot, in the file and in the environment alike: a
//! typo (`lisen`, `HERALD_LISTN`) must not silently leave a default in place.
//! Every error names the key and the layer it came from, in one line.
//!
//! Only variables whose name starts with exactly `HERALD_` (upper case) are
//! configuration, less those the client subcommands read
//! ([`crate::commands::CLIENT_ENV`]: `HERALD_CA_CERT`, …). That is why the environment layer is a small provider of
//! our own rather than figment's `Env`: `Env::prefixed` matches the prefix
//! case-insensitively and reads the process environment directly, whereas
//! this one is handed the variables (so tests need not mutate the process
//! environment) and remembers each key's variable name for error messages.
//! Likewise the file layer is parsed here (not by `figment::providers::Toml`)
//! so that a syntax error is reported as one line with its line and column.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

/// The file read when `--config` is not given, relative to the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "herald.toml";
/// Prefix of the environment variables that configure Herald.
pub const ENV_PREFIX: &str = "HERALD_";
/// Separator of nested keys in environment variable names (`HERALD_LOG__FORMAT`).
pub const ENV_NESTING: &str = "__";

/// Everything `herald serve` can be configured with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Address of the one listener (HTTP API, health, metrics).
    pub listen: SocketAddr,
    /// Directory holding all durable state; locked by one server at a time.
    /// With `backend = "nats"`, blobs live in NATS's object store (unless
    /// `blobs.s3_bucket`) and it holds only the lock.
    pub data_dir: PathBuf,
    /// Where topics, groups, event streams and key-value state live: the
    /// embedded stores in `data_dir` (default), or a NATS JetStream
    /// cluster (`[nats]`), which several Herald nodes can share.
    pub backend: BackendKind,
    /// The NATS backend (`[nats]`), with `backend = "nats"`.
    pub nats: NatsConfig,
    /// Logging to stderr.
    pub log: LogOptions,
    /// Upper bound on draining in-flight requests at shutdown, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Limits on what clients may send and create.
    pub limits: LimitsOptions,
    /// Timeouts of client connections (`[connections]`).
    pub connections: ConnectionOptions,
    /// Blob storage (`[blobs]`).
    pub blobs: BlobOptions,
    /// The job service (`[jobs]`).
    pub jobs: JobOptions,
    /// Consumer groups (`[groups]`).
    pub groups: GroupOptions,
    /// The embedded stores' memory (`[storage]`).
    pub storage: StorageOptions,
    /// Authentication, permissions, rate limits and quotas (`[auth]`).
    pub auth: AuthOptions,
    /// TLS on the listener, client certificates (`[tls]`).
    pub tls: TlsOptions,
    /// Outbound webhooks (`[webhooks]`).
    pub webhooks: WebhookOptions,
    /// The workflow engine (`[workflows]`).
    pub workflows: WorkflowOptions,
    /// Trace export over OpenTelemetry (`[telemetry]`).
    pub telemetry: TelemetryOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 7800)),
            data_dir: PathBuf::from("herald-data"),
            backend: BackendKind::default(),
            nats: NatsConfig::default(),
            log: LogOptions::default(),
            shutdown_timeout_ms: 5_000,
            limits: LimitsOptions::default(),
            connections: ConnectionOptions::default(),
            blobs: BlobOptions::default(),
            jobs: JobOptions::default(),
            groups: GroupOptions::default(),
            storage: StorageOptions::default(),
            auth: AuthOptions::default(),
            tls: TlsOptions::default(),
            webhooks: WebhookOptions::default(),
            workflows: WorkflowOptions::default(),
            telemetry: TelemetryOptions::default(),
        }
    }
}

impl Options {
    /// [`Options::shutdown_timeout_ms`] as a [`Duration`].
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// Which backend serves (`backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// One machine: herald-log and redb in `data_dir`.
    #[default]
    Embedded,
    /// A NATS JetStream cluster (`[nats]`; docs/deploy.md).
    Nats,
}

/// The NATS backend (`[nats]`). Strings and paths left empty are unset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs: one (`nats://127.0.0.1:4222`), several separated by
    /// commas, or a list; the client learns the rest of the cluster.
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// A credentials file (JWT and NKey seed).
    pub credentials_file: PathBuf,
    /// An NKey seed (`SU…`).
    pub nkey_seed: String,
    /// A token.
    pub token: String,
    /// A user name (with `password`).
    pub user: String,
    /// The user's password.
    pub password: String,
    /// CA certificates (PEM) to verify the servers; implies TLS.
    pub tls_ca_file: PathBuf,
    /// A client certificate (PEM), with `tls_key_file`.
    pub tls_cert_file: PathBuf,
    /// The client certificate's key (PEM).
    pub tls_key_file: PathBuf,
    /// Require TLS (with the system's roots unless `tls_ca_file`).
    pub tls_required: bool,
    /// The JetStream domain (leaf-node setups); empty: the local one.
    pub domain: String,
    /// Replicas of every stream Herald creates: 1, or 3 on a cluster.
    pub replicas: u8,
    /// The first part of every stream name and subject, so several
    /// Herald systems can share one NATS account.
    pub prefix: String,
    /// How long a JetStream request may take, in milliseconds.
    pub request_timeout_ms: NonZeroU64,
    /// How long a node's ownership of a consumer group lasts unrenewed, in
    /// milliseconds: a dead node's groups move after this long.
    pub group_lease_ms: NonZeroU64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: vec!["nats://127.0.0.1:4222".to_owned()],
            credentials_file: PathBuf::new(),
            nkey_seed: String::new(),
            token: String::new(),
            user: String::new(),
            password: String::new(),
            tls_ca_file: PathBuf::new(),
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_required: false,
            domain: String::new(),
            replicas: 1,
            prefix: "herald".to_owned(),
            request_timeout_ms: NonZeroU64::new(10_000).unwrap_or(NonZeroU64::MIN),
            group_lease_ms: NonZeroU64::new(5_000).unwrap_or(NonZeroU64::MIN),
        }
    }
}

/// A list, or one string of comma-separated items.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text.split(',').map(|item| item.trim().to_owned()).collect(),
        OneOrMany::Many(items) => items,
    };
    let items: Vec<String> = items.into_iter().filter(|item| !item.is_empty()).collect();
    if items.is_empty() {
        return Err(serde::de::Error::custom("at least one URL"));
    }
    Ok(items)
}

impl NatsConfig {
    /// The backend's options from these.
    pub fn options(
        &self,
        budget: herald_embedded::GroupBudget,
        topic_limits: herald_backend::topic::TopicLimits,
    ) -> herald_nats::NatsOptions {
        let set = |text: &str| (!text.is_empty()).then(|| text.to_owned());
        let path = |path: &Path| (!path.as_os_str().is_empty()).then(|| path.to_owned());
        let mut options =
            herald_nats::NatsOptions::new(self.url.first().cloned().unwrap_or_default());
        options.urls = self.url.clone();
        options.credentials_file = path(&self.credentials_file);
        options.nkey_seed = set(&self.nkey_seed);
        options.token = set(&self.token);
        options.user_password = set(&self.user).map(|user| (user, self.password.clone()));
        options.tls_ca_file = path(&self.tls_ca_file);
        options.tls_client = path(&self.tls_cert_file).zip(path(&self.tls_key_file));
        options.tls_required = self.tls_required;
        options.domain = set(&self.domain);
        options.replicas = usize::from(self.replicas);
        options.prefix = self.prefix.clone();
        options.request_timeout = Duration::from_millis(self.request_timeout_ms.get());
        options.group_lease = Duration::from_millis(self.group_lease_ms.get());
        options.group_budget = budget;
        options.topic_limits = topic_limits;
        options
    }
}

/// Authentication and authorization (`[auth]`; docs/security.md).
///
/// Auth is on once any credential source is configured: a bootstrap key,
/// JWT, or a client-certificate identity. Then every request but
/// `/healthz`, `/readyz` (and `/metrics`, `/openapi.json`, `/docs` when made
/// public) needs credentials, on loopback too. With none configured, only
/// a loopback `listen` serves (no credentials needed: local use), unless
/// `insecure` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthOptions {
    /// An API key with `admin` on everything, to administer a fresh server
    /// (create scoped keys with it). At least 32 characters; empty: none.
    pub bootstrap_key: String,
    /// Serve a non-loopback `listen` without any auth configured (a warning
    /// at every start). Flag: `--insecure`.
    pub insecure: bool,
    /// `/metrics` answers without credentials (else it needs `metrics:read`).
    pub public_metrics: bool,
    /// `/openapi.json`, `/docs` and gRPC reflection answer without
    /// credentials (else any identity may read them).
    pub public_docs: bool,
    /// Bearer JWTs (`[auth.jwt]`).
    pub jwt: JwtOptions,
    /// Identities of TLS client certificates (`[[auth.mtls]]`).
    pub mtls: Vec<MtlsIdentity>,
    /// Rate limits and quotas of every identity (`[auth.limits]`); an API
    /// key's own `limits` override them. 0 is unlimited.
    pub limits: crate::auth::limits::Limits,
}

impl AuthOptions {
    /// Whether any credential source is configured (so auth is on).
    pub fn is_configured(&self) -> bool {
        !self.bootstrap_key.is_empty() || self.jwt.is_enabled() || !self.mtls.is_empty()
    }
}

/// Bearer JWTs (`[auth.jwt]`), verified with `jsonwebtoken`: the signature
/// with the configured algorithm only (never `none`), `exp` and `nbf` with
/// `leeway_s`, `iss` and `aud` exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtOptions {
    /// `HS256`, `RS256`, `ES256` or `EdDSA`; empty: JWT off.
    pub algorithm: String,
    /// The HS256 shared secret (at least 32 bytes).
    pub secret: String,
    /// RS256/ES256/EdDSA: a PEM file with the public key.
    pub public_key_file: String,
    /// RS256/ES256/EdDSA: a local JWKS file; the token's `kid` picks the key.
    pub jwks_file: String,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The claim holding the permissions: a list of `{actions, resources}`.
    pub permissions_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for JwtOptions {
    fn default() -> Self {
        Self {
            algorithm: String::new(),
            secret: String::new(),
            public_key_file: String::new(),
            jwks_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            permissions_claim: "herald_permissions".to_owned(),
            leeway_s: 30,
        }
    }
}

impl JwtOptions {
    /// Whether JWTs are accepted.
    pub fn is_enabled(&self) -> bool {
        !self.algorithm.is_empty()
    }
}

/// The identity of a TLS client certificate whose subject common name or a
/// DNS name equals `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsIdentity {
    /// The certificate's CN or one of its DNS subject alternative names.
    pub name: String,
    /// What it may do.
    pub permissions: Vec<crate::auth::permissions::Permission>,
}

/// Limits on requests (`[limits]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsOptions {
    /// The largest request body accepted, in bytes; a larger one is refused
    /// with 413 before it is read whole. Each event is further bounded by its
    /// topic's `max_event_bytes`.
    pub max_request_bytes: NonZeroU64,
    /// The largest blob `POST /v1/blobs` accepts, in bytes; a larger one is
    /// refused with 413 (before reading when `Content-Length` says so,
    /// else as soon as the stream passes it) and leaves nothing behind.
    pub max_blob_bytes: NonZeroU64,
    /// Bytes of `PublishStream` batches one call may have in flight
    /// (published, not yet acknowledged); the server stops reading the
    /// call's requests past it (HTTP/2 flow control then pauses the client).
    /// A single batch larger than this still goes through, alone.
    pub max_publish_stream_bytes: NonZeroU64,
    /// Topics the server holds at most; creating one more is refused with
    /// 409 `limit_exceeded`. The job service's topics count too.
    pub max_topics: NonZeroU32,
    /// Partitions one topic may have (at most 1,024).
    pub max_partitions_per_topic: NonZeroU32,
    /// Partitions of all topics together. Each open partition has its own
    /// writer thread and a few open files, so this bounds both; creating a
    /// topic past it is refused with 409 `limit_exceeded`.
    pub max_partitions: NonZeroU32,
}

impl Default for LimitsOptions {
    fn default() -> Self {
        Self {
            max_request_bytes: NonZeroU64::new(16 * 1024 * 1024).unwrap_or(NonZeroU64::MIN),
            max_blob_bytes: NonZeroU64::new(4 * 1024 * 1024 * 1024).unwrap_or(NonZeroU64::MIN),
            max_publish_stream_bytes: NonZeroU64::new(64 * 1024 * 1024).unwrap_or(NonZeroU64::MIN),
            max_topics: NonZeroU32::new(1_000).unwrap_or(NonZeroU32::MIN),
            max_partitions_per_topic: NonZeroU32::new(herald_backend::topic::MAX_PARTITIONS)
                .unwrap_or(NonZeroU32::MIN),
            max_partitions: NonZeroU32::new(4_096).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Timeouts of client connections (`[connections]`): a client that sends
/// half a request, or nothing, must not hold a connection for long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionOptions {
    /// HTTP/1: the whole request head (request line and headers) must
    /// arrive within this many milliseconds of the server starting to wait
    /// for it, which it also does between requests of a keep-alive
    /// connection: so this is HTTP/1's idle timeout too.
    pub header_read_timeout_ms: NonZeroU64,
    /// A connection with no request in flight for this many milliseconds is
    /// closed (also one that never sends a request, and HTTP/2 connections
    /// with no open stream); and a REST request body that sends nothing for
    /// this long fails. Streams in flight (long-polls, SSE, gRPC streams)
    /// keep their connection open.
    pub idle_timeout_ms: NonZeroU64,
    /// HTTP/2: the server pings the client this often, in milliseconds, and
    /// drops the connection when a ping is not answered within 20 s; so a
    /// vanished client does not hold its streams.
    pub keep_alive_interval_ms: NonZeroU64,
    /// Connections one remote IP address may hold open at once; one more
    /// is closed as soon as it is accepted. 0: unlimited.
    pub max_per_address: u32,
    /// Length of the listen socket's queue of connections the kernel has
    /// completed and the server has not accepted yet. A burst of connects
    /// larger than this (clients reconnecting after a restart) has SYNs
    /// dropped and stalls a second or more per retry; tokio's own listener
    /// fixes it at 128. Linux caps it at `net.core.somaxconn` (4096 by
    /// default).
    pub listen_backlog: NonZeroU32,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: NonZeroU64::new(10_000).unwrap_or(NonZeroU64::MIN),
            idle_timeout_ms: NonZeroU64::new(60_000).unwrap_or(NonZeroU64::MIN),
            keep_alive_interval_ms: NonZeroU64::new(30_000).unwrap_or(NonZeroU64::MIN),
            max_per_address: 1_024,
            listen_backlog: NonZeroU32::new(4_096).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl ConnectionOptions {
    /// [`ConnectionOptions::header_read_timeout_ms`] as a [`Duration`].
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms.get())
    }

    /// [`ConnectionOptions::idle_timeout_ms`] as a [`Duration`].
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.get())
    }

    /// [`ConnectionOptions::keep_alive_interval_ms`] as a [`Duration`].
    pub fn keep_alive_interval(&self) -> Duration {
        Duration::from_millis(self.keep_alive_interval_ms.get())
    }
}

/// TLS on the one listener (`[tls]`): off while `cert_file` is empty.
///
/// Paths are strings rather than `Option`s so that `herald.example.toml`
/// can spell every key out at its default (TOML has no null).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsOptions {
    /// The server's certificate chain (PEM, leaf first). Empty: plain
    /// HTTP/h2c; set: the listener speaks only TLS.
    pub cert_file: PathBuf,
    /// The private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates are verified
    /// against; needs `client_auth` "optional" or "required".
    pub client_ca_file: PathBuf,
    /// Whether clients present a certificate: "none", "optional" (verified
    /// when presented) or "required" (refused at the handshake without one).
    pub client_auth: ClientAuth,
    /// How often the three files are read for changes, in milliseconds; a
    /// change (or SIGHUP) reloads them for new connections.
    pub reload_interval_ms: NonZeroU64,
    /// A TLS handshake must complete within this many milliseconds of the
    /// connection being accepted, or the connection is closed.
    pub handshake_timeout_ms: NonZeroU64,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            client_auth: ClientAuth::None,
            reload_interval_ms: NonZeroU64::new(5_000).unwrap_or(NonZeroU64::MIN),
            handshake_timeout_ms: NonZeroU64::new(10_000).unwrap_or(NonZeroU64::MIN),
        }
    }
}

impl TlsOptions {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    /// [`TlsOptions::reload_interval_ms`] as a [`Duration`].
    pub fn reload_interval(&self) -> Duration {
        Duration::from_millis(self.reload_interval_ms.get())
    }

    /// [`TlsOptions::handshake_timeout_ms`] as a [`Duration`].
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.get())
    }

    /// The checks between keys: a certificate needs its key, client
    /// authentication needs a CA and TLS.
    fn check(&self) -> Result<(), Error> {
        let invalid = |key: &str, message: &str| {
            Err(Error::InvalidValue {
                key: format!("tls.{key}"),
                origin: None,
                message: message.to_owned(),
            })
        };
        let has_key = !self.key_file.as_os_str().is_empty();
        let has_ca = !self.client_ca_file.as_os_str().is_empty();
        if self.enabled() != has_key {
            return invalid(
                if has_key { "cert_file" } else { "key_file" },
                "tls.cert_file and tls.key_file must be set together",
            );
        }
        if has_ca && !self.enabled() {
            return invalid(
                "cert_file",
                "tls.client_ca_file needs TLS: set tls.cert_file and tls.key_file too",
            );
        }
        match (self.client_auth, has_ca) {
            (ClientAuth::None, true) => invalid(
                "client_auth",
                "tls.client_ca_file is set: set client_auth to \"optional\" or \"required\"",
            ),
            (ClientAuth::Optional | ClientAuth::Required, false) => invalid(
                "client_ca_file",
                "client_auth verifies client certificates against this CA file: set it",
            ),
            _ => Ok(()),
        }
    }
}

/// Whether TLS clients present a certificate (`tls.client_auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates asked for.
    #[default]
    None,
    /// Asked for; verified against `client_ca_file` when presented.
    Optional,
    /// A client without a certificate from `client_ca_file` is refused at
    /// the handshake.
    Required,
}

/// Blob storage (`[blobs]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobOptions {
    /// A blob no job references is removed once it is older than this, in
    /// milliseconds.
    pub unreferenced_ttl_ms: u64,
    /// How often unreferenced blobs are looked for, in milliseconds.
    pub gc_interval_ms: u64,
    /// Keep blobs in this S3 bucket (credentials and region from the
    /// standard `AWS_*` variables) instead of `<data_dir>/blobs`. Needs a
    /// build with the `s3` feature; empty means the data directory.
    pub s3_bucket: String,
    /// Free disk space, in bytes, that blob uploads must leave for the rest
    /// of the data directory (logs, metadata): an upload is refused with 507
    /// `insufficient_storage` when the free space is, or falls during the
    /// upload, below this plus what it still has to write. 0 turns it off;
    /// not checked for S3.
    pub min_free_bytes: u64,
}

impl Default for BlobOptions {
    fn default() -> Self {
        Self {
            unreferenced_ttl_ms: 24 * 3_600_000,
            gc_interval_ms: 60_000,
            s3_bucket: String::new(),
            min_free_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Consumer groups (`[groups]`): what each queue or keyed group may hold in
/// memory. Delayed events and events blocked behind their key keep only a
/// small entry; their bodies are read back from the log when they come due.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupOptions {
    /// Event bodies a group holds in memory, in bytes: half for reading
    /// ahead, the rest for redeliveries about to go out (and, up to a
    /// quarter, bodies of waiting events kept to spare a re-read).
    pub max_buffered_bytes: NonZeroU64,
    /// Bookkeeping of a group's pending events (leased, waiting, delayed,
    /// blocked), in bytes at 256 per event plus twice its key. When full,
    /// the group reads no further into the log until some finish.
    pub max_pending_bytes: NonZeroU64,
}

impl Default for GroupOptions {
    fn default() -> Self {
        let budget = herald_embedded::GroupBudget::default();
        let bytes = |value: usize| {
            NonZeroU64::new(u64::try_from(value).unwrap_or(u64::MAX)).unwrap_or(NonZeroU64::MIN)
        };
        Self {
            max_buffered_bytes: bytes(budget.buffered_bytes),
            max_pending_bytes: bytes(budget.pending_bytes),
        }
    }
}

impl GroupOptions {
    /// The embedded backend's budget from these.
    pub fn budget(&self) -> herald_embedded::GroupBudget {
        let bytes = |value: NonZeroU64| usize::try_from(value.get()).unwrap_or(usize::MAX);
        herald_embedded::GroupBudget {
            buffered_bytes: bytes(self.max_buffered_bytes),
            pending_bytes: bytes(self.max_pending_bytes),
        }
    }
}

/// The embedded stores (`[storage]`): how much memory their page caches
/// may take. The logs keep no cache of their own (reads go through the OS
/// page cache); the two redb files do, and without a bound redb caches up
/// to 1 GiB of each as they grow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageOptions {
    /// Page cache of `meta.redb` (topics, groups and their state, dead
    /// letters, jobs, API keys), in bytes.
    pub meta_cache_bytes: NonZeroU64,
    /// Page cache of `streams.redb` (stream versions and the position of
    /// every stream event: it grows with the event store), in bytes.
    pub stream_index_cache_bytes: NonZeroU64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        let caches = herald_embedded::StoreCaches::default();
        let bytes = |value: usize| {
            NonZeroU64::new(u64::try_from(value).unwrap_or(u64::MAX)).unwrap_or(NonZeroU64::MIN)
        };
        Self {
            meta_cache_bytes: bytes(caches.meta_bytes),
            stream_index_cache_bytes: bytes(caches.stream_index_bytes),
        }
    }
}

impl StorageOptions {
    /// The embedded backend's cache sizes from these.
    pub fn caches(&self) -> herald_embedded::StoreCaches {
        let bytes = |value: NonZeroU64| usize::try_from(value.get()).unwrap_or(usize::MAX);
        herald_embedded::StoreCaches {
            meta_bytes: bytes(self.meta_cache_bytes),
            stream_index_bytes: bytes(self.stream_index_cache_bytes),
        }
    }
}

/// The job service (`[jobs]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobOptions {
    /// Partitions of a queue's auto-created topic `jobs.<queue>`.
    pub queue_partitions: NonZeroU32,
    /// How long a worker's delivery of a request is leased, in milliseconds;
    /// a worker that dies has the request redelivered after it.
    pub ack_wait_ms: NonZeroU64,
    /// Deliveries of a request before the job (or part) fails.
    pub max_attempts: NonZeroU32,
    /// Redelivery delays after failed attempts, in milliseconds.
    pub backoff_ms: Vec<u64>,
    /// How long an ended job's result is kept when a submit does not say.
    pub default_result_ttl_ms: u64,
    /// Whether a worker fetch on a queue that does not exist yet creates it
    /// (its topic and group). Off: such a fetch answers 404
    /// `queue_not_found`, so a typo in a worker's queue name cannot make
    /// topics; the first submit creates a queue.
    pub create_queues_on_fetch: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            queue_partitions: NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN),
            ack_wait_ms: NonZeroU64::new(30_000).unwrap_or(NonZeroU64::MIN),
            max_attempts: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            backoff_ms: vec![1_000, 5_000, 30_000],
            default_result_ttl_ms: 24 * 3_600_000,
            create_queues_on_fetch: false,
        }
    }
}

impl JobOptions {
    /// The job service's options from these.
    pub fn service_options(&self) -> herald_jobs::Options {
        herald_jobs::Options {
            // The backend's limit; more would fail the first submit instead.
            queue_partitions: self
                .queue_partitions
                .get()
                .min(herald_backend::topic::MAX_PARTITIONS),
            ack_wait_ms: self.ack_wait_ms.get(),
            max_attempts: self.max_attempts.get(),
            backoff_ms: self.backoff_ms.clone(),
            default_result_ttl_ms: self.default_result_ttl_ms,
            create_queues_on_fetch: self.create_queues_on_fetch,
            ..herald_jobs::Options::default()
        }
    }
}

impl LimitsOptions {
    /// [`LimitsOptions::max_request_bytes`] as a `usize` (saturating).
    pub fn max_request_bytes(&self) -> usize {
        usize::try_from(self.max_request_bytes.get()).unwrap_or(usize::MAX)
    }

    /// [`LimitsOptions::max_blob_bytes`] as a `u64`.
    pub fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes.get()
    }

    /// [`LimitsOptions::max_publish_stream_bytes`] as a `usize` (saturating).
    pub fn max_publish_stream_bytes(&self) -> usize {
        usize::try_from(self.max_publish_stream_bytes.get()).unwrap_or(usize::MAX)
    }

    /// The topic limits the backend enforces.
    pub fn topic_limits(&self) -> herald_backend::topic::TopicLimits {
        herald_backend::topic::TopicLimits {
            max_topics: self.max_topics.get(),
            max_partitions_per_topic: self.max_partitions_per_topic.get(),
            max_partitions: self.max_partitions.get(),
        }
    }
}

/// Outbound webhooks (`[webhooks]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookOptions {
    /// Targets allowed although the SSRF guard refuses their class
    /// (loopback, private, link-local, …): CIDRs (`10.0.0.0/8`), addresses,
    /// host names, or `*.suffix`. Empty: public addresses only.
    pub allow_targets: Vec<String>,
    /// Delays between attempts, in milliseconds (the first attempt is
    /// immediate; one more attempt than delays). Default: Svix's, 5 s,
    /// 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; each jittered by ±20%.
    pub retry_schedule_ms: Vec<u64>,
    /// One attempt's whole time: connect, send, the answer and its body.
    pub attempt_timeout_ms: NonZeroU64,
    /// Connecting alone.
    pub connect_timeout_ms: NonZeroU64,
    /// Attempts in flight per endpoint at most.
    pub max_in_flight: NonZeroU32,
    /// Consecutive failed attempts that open an endpoint's circuit.
    pub circuit_failures: NonZeroU32,
    /// How long an open circuit waits before one probe.
    pub circuit_cool_down_ms: NonZeroU64,
    /// An endpoint failing without a success this long is disabled.
    pub disable_after_ms: NonZeroU64,
    /// Attempt records are deleted this long after the attempt.
    pub attempt_retention_ms: NonZeroU64,
    /// How long a rotated-out secret keeps signing next to the new one.
    pub rotation_overlap_ms: u64,
    /// The secret (`whsec_…`) jobs' `notify.webhook_url` notifications are
    /// signed with. Empty: one is generated once and kept in the data
    /// directory (`GET /v1/webhooks/jobs` shows it).
    pub job_secret: String,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        let defaults = herald_webhooks::Options::default();
        let ms = |duration: Duration| {
            NonZeroU64::new(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(NonZeroU64::MIN)
        };
        Self {
            allow_targets: Vec::new(),
            retry_schedule_ms: herald_webhooks::schedule::DEFAULT_DELAYS_MS.to_vec(),
            attempt_timeout_ms: ms(defaults.attempt_timeout),
            connect_timeout_ms: ms(defaults.connect_timeout),
            max_in_flight: NonZeroU32::new(defaults.max_in_flight).unwrap_or(NonZeroU32::MIN),
            circuit_failures: NonZeroU32::new(defaults.circuit.failures).unwrap_or(NonZeroU32::MIN),
            circuit_cool_down_ms: ms(defaults.circuit.cool_down),
            disable_after_ms: ms(defaults.disable_after),
            attempt_retention_ms: ms(defaults.attempt_retention),
            rotation_overlap_ms: ms(defaults.rotation_overlap).get(),
            job_secret: String::new(),
        }
    }
}

/// The workflow engine (`[workflows]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowOptions {
    /// How long one `call: http` may take, answer included (the task's
    /// `timeout` can make it shorter).
    pub http_timeout_ms: NonZeroU64,
    /// The most records one instance's history holds; past it the instance
    /// faults with `…/errors/runtime`.
    pub max_history_records: NonZeroU64,
    /// Secrets by name: a workflow reads those its `use.secrets` lists as
    /// `$secrets.<name>` (`HERALD_WORKFLOWS__SECRETS__<NAME>`).
    pub secrets: std::collections::BTreeMap<String, String>,
}

impl Default for WorkflowOptions {
    fn default() -> Self {
        let defaults = herald_workflows::Options::default();
        Self {
            http_timeout_ms: NonZeroU64::new(
                u64::try_from(defaults.http_timeout.as_millis()).unwrap_or(u64::MAX),
            )
            .unwrap_or(NonZeroU64::MIN),
            max_history_records: NonZeroU64::new(defaults.max_history_records as u64)
                .unwrap_or(NonZeroU64::MIN),
            secrets: std::collections::BTreeMap::new(),
        }
    }
}

impl WorkflowOptions {
    /// The engine's options.
    pub fn engine_options(&self) -> herald_workflows::Options {
        herald_workflows::Options {
            http_timeout: Duration::from_millis(self.http_timeout_ms.get()),
            max_history_records: usize::try_from(self.max_history_records.get())
                .unwrap_or(usize::MAX),
            secrets: self.secrets.clone().into_iter().collect(),
            shared_backend: false,
        }
    }
}

impl WebhookOptions {
    /// The SSRF guard's policy.
    pub fn policy(&self) -> Result<herald_webhooks::TargetPolicy, Error> {
        herald_webhooks::TargetPolicy::new(&self.allow_targets).map_err(|error| {
            Error::InvalidValue {
                key: "webhooks.allow_targets".to_owned(),
                origin: None,
                message: error.to_string(),
            }
        })
    }

    /// The webhook service's options from these.
    pub fn service_options(&self) -> Result<herald_webhooks::Options, Error> {
        let schedule =
            herald_webhooks::Schedule::from_millis(&self.retry_schedule_ms).map_err(|error| {
                Error::InvalidValue {
                    key: "webhooks.retry_schedule_ms".to_owned(),
                    origin: None,
                    message: error.to_string(),
                }
            })?;
        Ok(herald_webhooks::Options {
            schedule,
            attempt_timeout: Duration::from_millis(self.attempt_timeout_ms.get()),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.get()),
            max_in_flight: self.max_in_flight.get(),
            circuit: herald_webhooks::circuit::CircuitOptions {
                failures: self.circuit_failures.get(),
                cool_down: Duration::from_millis(self.circuit_cool_down_ms.get()),
            },
            disable_after: Duration::from_millis(self.disable_after_ms.get()),
            attempt_retention: Duration::from_millis(self.attempt_retention_ms.get()),
            rotation_overlap: Duration::from_millis(self.rotation_overlap_ms),
            job_secret: if self.job_secret.is_empty() {
                None
            } else {
                Some(
                    herald_types::webhook::Secret::parse(&self.job_secret).map_err(|error| {
                        Error::InvalidValue {
                            key: "webhooks.job_secret".to_owned(),
                            origin: None,
                            message: error.to_string(),
                        }
                    })?,
                )
            },
            ..herald_webhooks::Options::default()
        })
    }
}

/// Trace export (`[telemetry]`): off until `otlp_endpoint` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryOptions {
    /// Where to export spans over OTLP: `http://host:4317` (gRPC) or
    /// `http://host:4318/v1/traces` (HTTP/protobuf). Empty: tracing off.
    pub otlp_endpoint: String,
    /// The OTLP transport.
    pub otlp_protocol: OtlpProtocol,
    /// The share of new traces sampled, 0.0–1.0. A trace that arrives with a
    /// `traceparent` keeps its caller's decision.
    pub sample_ratio: SampleRatio,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            otlp_protocol: OtlpProtocol::default(),
            sample_ratio: SampleRatio(1.0),
            service_name: "herald".to_owned(),
        }
    }
}

/// The OTLP transport (`telemetry.otlp_protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// A sampling ratio: a finite number from 0.0 to 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct SampleRatio(f64);

impl SampleRatio {
    /// The ratio.
    pub fn get(self) -> f64 {
        self.0
    }
}

// Never NaN (refused on parse), so equality is total.
impl Eq for SampleRatio {}

impl TryFrom<f64> for SampleRatio {
    type Error = String;

    fn try_from(ratio: f64) -> Result<Self, Self::Error> {
        if (0.0..=1.0).contains(&ratio) {
            Ok(Self(ratio))
        } else {
            Err(format!("a sampling ratio is from 0.0 to 1.0, not {ratio}"))
        }
    }
}

impl From<SampleRatio> for f64 {
    fn from(ratio: SampleRatio) -> Self {
        ratio.0
    }
}

/// Logging options (`[log]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogOptions {
    /// Line format of log records.
    pub format: LogFormat,
    /// Which records to emit, as a `tracing` `EnvFilter` directive.
    pub level: LogLevel,
}

/// Line format of log records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A validated `tracing_subscriber::EnvFilter` directive, such as `info` or
/// `herald_server=debug,info`.
///
/// Note that a bare word is a valid directive meaning "everything from that
/// target": `level = "verbose"` parses, and enables target `verbose`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogLevel(String);

impl LogLevel {
    /// The directive as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LogLevel {
    fn default() -> Self {
        Self("info".to_owned())
    }
}

/// Why a `log.level` directive was refused.
#[derive(Debug, thiserror::Error)]
pub enum InvalidLogLevel {
    /// Levels, targets, span and field names are ASCII. (tracing-subscriber
    /// 0.3 slices a directive with leading whitespace at the wrong char
    /// boundary and panics on a multi-byte character: found by fuzzing.)
    #[error("a log level directive is ASCII: levels, targets, span and field names")]
    NotAscii,
    /// The `EnvFilter` parser refused it.
    #[error(transparent)]
    Parse(#[from] tracing_subscriber::filter::ParseError),
}

impl FromStr for LogLevel {
    type Err = InvalidLogLevel;

    fn from_str(directive: &str) -> Result<Self, Self::Err> {
        if !directive.is_ascii() {
            return Err(InvalidLogLevel::NotAscii);
        }
        tracing_subscriber::EnvFilter::builder().parse(directive)?;
        Ok(Self(directive.to_owned()))
    }
}

impl TryFrom<String> for LogLevel {
    type Error = InvalidLogLevel;

    fn try_from(directive: String) -> Result<Self, Self::Error> {
        directive.parse()
    }
}

impl From<LogLevel> for String {
    fn from(level: LogLevel) -> Self {
        level.0
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Values given as command-line flags; `None` leaves the lower layers in charge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Overrides {
    /// `--listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--backend`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,
    /// `--nats-url`. Left out when not given.
    #[serde(skip_serializing_if = "NatsOverrides::is_empty")]
    pub nats: NatsOverrides,
    /// `--log-format`, `--log-level`. Left out when empty: an empty table
    /// would replace a wrong-typed `log` from a lower layer (`HERALD_LOG=x`)
    /// instead of letting it fail.
    #[serde(skip_serializing_if = "LogOverrides::is_empty")]
    pub log: LogOverrides,
    /// `--insecure`. Left out when not given.
    #[serde(skip_serializing_if = "AuthOverrides::is_empty")]
    pub auth: AuthOverrides,
}

/// Command-line overrides of [`NatsConfig`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NatsOverrides {
    /// `--nats-url` (comma-separated URLs)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl NatsOverrides {
    /// Whether no NATS flag was given.
    pub fn is_empty(&self) -> bool {
        self.url.is_none()
    }
}

/// Command-line overrides of [`AuthOptions`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuthOverrides {
    /// `--insecure`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}

impl AuthOverrides {
    /// Whether no auth flag was given.
    pub fn is_empty(&self) -> bool {
        self.insecure.is_none()
    }
}

/// Command-line overrides of [`LogOptions`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LogOverrides {
    /// `--log-format`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    /// `--log-level`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
}

impl LogOverrides {
    /// Whether no log flag was given.
    pub fn is_empty(&self) -> bool {
        self.format.is_none() && self.level.is_none()
    }
}

/// Which configuration file to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigFile {
    /// Named explicitly (`--config`): it must exist.
    Required(PathBuf),
    /// The conventional location: read if it exists, skipped otherwise.
    IfExists(PathBuf),
    /// No file layer.
    None,
}

/// The inputs of [`load`], one per layer above the defaults.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The file layer.
    pub file: ConfigFile,
    /// The process environment (all of it; only `HERALD_*` is looked at).
    pub env: Vec<(OsString, OsString)>,
    /// The command-line layer.
    pub overrides: Overrides,
}

impl Sources {
    /// The sources of a real process: `--config` or `./herald.toml`, and
    /// the process environment.
    pub fn from_process(config: Option<PathBuf>, overrides: Overrides) -> Self {
        let file = match config {
            Some(path) => ConfigFile::Required(path),
            None => ConfigFile::IfExists(PathBuf::from(DEFAULT_CONFIG_FILE)),
        };
        Self {
            file,
            env: std::env::vars_os().collect(),
            overrides,
        }
    }
}

/// Where a configuration value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The built-in defaults.
    Defaults,
    /// A configuration file.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
    /// Command-line flags.
    Flags,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Defaults => f.write_str("in the built-in defaults"),
            Self::File(path) => write!(f, "in {}", path.display()),
            Self::Env(name) => write!(f, "from environment variable {name}"),
            Self::Flags => f.write_str("from the command line"),
        }
    }
}

/// Why the configuration could not be loaded. Every message is one line and
/// names the offending key or file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The configuration file is not valid TOML.
    ///
    /// The `toml` error is not kept as a source: its `Display` is a
    /// multi-line snippet. Its message and position are kept instead.
    #[error("cannot parse {}{}: {message}", path.display(), Position(*position))]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// 1-based line and column of the error, when known.
        position: Option<(usize, usize)>,
        /// What is wrong.
        message: String,
    },
    /// A key that no option has.
    #[error(
        "unknown configuration key '{key}' {origin} (expected one of: {})",
        expected.join(", ")
    )]
    UnknownKey {
        /// Dotted path of the key (`log.colour`).
        key: String,
        /// Where it was set.
        origin: Origin,
        /// The keys valid at that level.
        expected: Vec<String>,
    },
    /// A key whose value does not fit its type.
    #[error("invalid value for configuration key '{key}'{}: {message}", OriginSuffix(origin.as_ref()))]
    InvalidValue {
        /// Dotted path of the key.
        key: String,
        /// Where the value was set, when known.
        origin: Option<Origin>,
        /// What is wrong with it.
        message: String,
    },
    /// A `HERALD_*` variable whose name or value is not valid Unicode.
    #[error("environment variable {name} is not valid Unicode")]
    EnvNotUnicode {
        /// The variable's name (lossily decoded).
        name: String,
    },
    /// A `HERALD_*` value whose arrays or tables nest deeper than any
    /// configuration key does (parsing it would overflow the stack).
    #[error(
        "environment variable {name} nests arrays or tables deeper than {MAX_ENV_VALUE_NESTING} levels"
    )]
    EnvValueTooDeep {
        /// The variable's name.
        name: String,
    },
}

/// How deep a `HERALD_*` value's `[`/`{` may nest: far more than any key
/// needs, far less than what overflows the stack in figment's value parser.
pub const MAX_ENV_VALUE_NESTING: usize = 32;

/// The deepest `[`/`{` nesting in `text`, outside double-quoted strings.
fn value_nesting(text: &str) -> usize {
    let (mut depth, mut deepest, mut quoted, mut escaped) = (0usize, 0usize, false, false);
    for c in text.chars() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Builds the options from every layer of `sources`.
pub fn load(sources: &Sources) -> Result<Options, Error> {
    let file = read_file(&sources.file)?;
    layered(file, &sources.env, &sources.overrides)
}

/// [`load`] with the file layer given as text instead of read from disk:
/// `file` is a TOML document and the name that stands for it in error
/// messages (none: no file layer). What the fuzz target
/// `fuzz/fuzz_targets/config_loader.rs` drives: any text, variables and
/// flags give options or an error, never a panic.
pub fn from_text(
    file: Option<(&Path, &str)>,
    env: &[(OsString, OsString)],
    overrides: &Overrides,
) -> Result<Options, Error> {
    let file = file
        .map(|(name, text)| parse_file(name, text))
        .transpose()?;
    layered(file, env, overrides)
}

fn layered(
    file: Option<Layer>,
    env: &[(OsString, OsString)],
    overrides: &Overrides,
) -> Result<Options, Error> {
    let env = EnvLayer::from_vars(env)?;
    let flags = Layer::new(Origin::Flags, to_dict(overrides, Origin::Flags)?);
    extract(file, &env, flags)
}

/// Parses a whole TOML document as configuration, on top of the defaults only.
/// `name` stands for the document in error messages.
pub fn from_toml_str(name: &Path, text: &str) -> Result<Options, Error> {
    from_text(Some((name, text)), &[], &Overrides::default())
}

/// Checks the layers for unknown keys, then merges them over the defaults.
fn extract(file: Option<Layer>, env: &EnvLayer, flags: Layer) -> Result<Options, Error> {
    let defaults = Layer::new(
        Origin::Defaults,
        to_dict(&Options::default(), Origin::Defaults)?,
    );
    let mut figment = Figment::from(defaults.clone());
    if let Some(file) = file {
        check_known_keys(&file.dict, &defaults.dict, &mut Vec::new(), &|_| {
            file.origin.clone()
        })?;
        figment = figment.merge(file);
    }
    check_known_keys(&env.layer.dict, &defaults.dict, &mut Vec::new(), &|key| {
        Origin::Env(env.var_name(key))
    })?;
    // Flags need no check: clap only accepts the flags that exist.
    let options = figment
        .merge(env.layer.clone())
        .merge(flags)
        .extract::<Options>()
        .map_err(|error| invalid_value(&error, env))?;
    check_ranges(&options)?;
    Ok(options)
}

/// The checks a value's type cannot make.
fn check_ranges(options: &Options) -> Result<(), Error> {
    check_auth(&options.auth)?;
    let max = herald_backend::topic::MAX_PARTITIONS;
    if options.limits.max_partitions_per_topic.get() > max {
        return Err(Error::InvalidValue {
            key: "limits.max_partitions_per_topic".to_owned(),
            origin: None,
            message: format!("must be at most {max}"),
        });
    }
    if !(1..=5).contains(&options.nats.replicas) {
        return Err(Error::InvalidValue {
            key: "nats.replicas".to_owned(),
            origin: None,
            message: "must be between 1 and 5".to_owned(),
        });
    }
    if options.nats.tls_cert_file.as_os_str().is_empty()
        != options.nats.tls_key_file.as_os_str().is_empty()
    {
        return Err(Error::InvalidValue {
            key: "nats.tls_cert_file".to_owned(),
            origin: None,
            message: "nats.tls_cert_file and nats.tls_key_file go together".to_owned(),
        });
    }
    options.webhooks.policy()?;
    options.webhooks.service_options()?;
    options.tls.check()
}

/// The shortest bootstrap key accepted: a guessable one would be a master key.
pub const MIN_BOOTSTRAP_KEY_CHARS: usize = 32;

fn check_auth(auth: &AuthOptions) -> Result<(), Error> {
    let invalid = |key: &str, message: String| Error::InvalidValue {
        key: key.to_owned(),
        origin: None,
        message,
    };
    let key = &auth.bootstrap_key;
    if !key.is_empty()
        && (key.chars().count() < MIN_BOOTSTRAP_KEY_CHARS || key.chars().any(char::is_whitespace))
    {
        return Err(invalid(
            "auth.bootstrap_key",
            format!(
                "must be at least {MIN_BOOTSTRAP_KEY_CHARS} characters without spaces (e.g. `hrd_$(openssl rand -hex 32)`)"
            ),
        ));
    }
    let jwt = &auth.jwt;
    if jwt.is_enabled() {
        match jwt.algorithm.as_str() {
            "HS256" => {
                if jwt.secret.len() < 32 {
                    return Err(invalid(
                        "auth.jwt.secret",
                        "HS256 needs a secret of at least 32 bytes".to_owned(),
                    ));
                }
            }
            "RS256" | "ES256" | "EdDSA" => {
                if jwt.public_key_file.is_empty() == jwt.jwks_file.is_empty() {
                    return Err(invalid(
                        "auth.jwt.public_key_file",
                        format!(
                            "{} needs exactly one of auth.jwt.public_key_file and auth.jwt.jwks_file",
                            jwt.algorithm
                        ),
                    ));
                }
            }
            other => {
                return Err(invalid(
                    "auth.jwt.algorithm",
                    format!(
                        "\"{other}\" is not one of HS256, RS256, ES256, EdDSA (or empty for no JWT)"
                    ),
                ));
            }
        }
        if jwt.algorithm != "HS256" && !jwt.secret.is_empty() {
            return Err(invalid(
                "auth.jwt.secret",
                "is for HS256 only; keep shared secrets and public keys apart".to_owned(),
            ));
        }
        for (key, value) in [
            ("auth.jwt.issuer", &jwt.issuer),
            ("auth.jwt.audience", &jwt.audience),
            ("auth.jwt.permissions_claim", &jwt.permissions_claim),
        ] {
            if value.is_empty() {
                return Err(invalid(
                    key,
                    "must be set when auth.jwt.algorithm is".to_owned(),
                ));
            }
        }
    }
    for identity in &auth.mtls {
        if identity.name.is_empty() {
            return Err(invalid("auth.mtls.name", "must not be empty".to_owned()));
        }
        for permission in &identity.permissions {
            permission
                .check()
                .map_err(|error| invalid("auth.mtls.permissions", error.to_string()))?;
        }
    }
    Ok(())
}

/// One layer of configuration: a dictionary and where it came from.
#[derive(Clone, Debug)]
struct Layer {
    origin: Origin,
    dict: Dict,
}

impl Layer {
    fn new(origin: Origin, dict: Dict) -> Self {
        Self { origin, dict }
    }
}

/// Provider names, so an error's metadata maps back to its [`Origin`].
mod layer_names {
    pub(super) const DEFAULTS: &str = "herald defaults";
    pub(super) const FILE: &str = "herald config file";
    pub(super) const ENV: &str = "herald environment";
    pub(super) const FLAGS: &str = "herald command line";
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        match &self.origin {
            Origin::Defaults => Metadata::named(layer_names::DEFAULTS),
            Origin::File(path) => Metadata::from(layer_names::FILE, path.as_path()),
            Origin::Env(_) => Metadata::named(layer_names::ENV),
            Origin::Flags => Metadata::named(layer_names::FLAGS),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The environment layer, and which variable set each key.
#[derive(Clone, Debug)]
struct EnvLayer {
    layer: Layer,
    /// Dotted key → variable name.
    names: Map<String, String>,
}

impl Default for EnvLayer {
    fn default() -> Self {
        Self {
            layer: Layer::new(Origin::Env(String::new()), Dict::new()),
            names: Map::new(),
        }
    }
}

impl EnvLayer {
    fn from_vars(vars: &[(OsString, OsString)]) -> Result<Self, Error> {
        let mut env = Self::default();
        for (name, value) in vars {
            if !name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes())
                || crate::commands::CLIENT_ENV
                    .iter()
                    .any(|client| name.as_encoded_bytes() == client.as_bytes())
            {
                continue;
            }
            let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
                return Err(Error::EnvNotUnicode {
                    name: name.to_string_lossy().into_owned(),
                });
            };
            if value_nesting(value) > MAX_ENV_VALUE_NESTING {
                return Err(Error::EnvValueTooDeep {
                    name: name.to_owned(),
                });
            }
            let key = name[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace(ENV_NESTING, ".");
            // Values are parsed like figment's own `Env` does: `100` is an
            // integer, `true` a boolean, anything else a string.
            // figment 0.10.19 slices inside a multi-byte character (a
            // panic) when a quoted value has a backslash escape next to
            // non-ASCII text (found by the config_loader fuzz target); such a
            // value is taken as the string it is.
            let value = if value.contains('\\') && !value.is_ascii() {
                Value::from(value.to_owned())
            } else {
                value
                    .parse::<Value>()
                    .unwrap_or_else(|never| match never {})
            };
            merge_into(&mut env.layer.dict, nest(&key, value));
            env.names.insert(key, name.to_owned());
        }
        Ok(env)
    }

    /// The variable that set `key`; `HERALD_A__B` spelled out if none did.
    fn var_name(&self, key: &str) -> String {
        self.names.get(key).cloned().unwrap_or_else(|| {
            format!(
                "{ENV_PREFIX}{}",
                key.to_ascii_uppercase().replace('.', ENV_NESTING)
            )
        })
    }
}

/// `a.b` = v as `{a: {b: v}}`, keeping empty segments (figment's own `nest`
/// drops them) so that `HERALD_` or `HERALD_LOG____X` surface as unknown keys.
fn nest(key: &str, value: Value) -> Dict {
    let mut segments = key.rsplit('.');
    let last = segments.next().unwrap_or_default();
    let mut dict = Dict::new();
    dict.insert(last.to_owned(), value);
    for segment in segments {
        let mut outer = Dict::new();
        outer.insert(segment.to_owned(), Value::from(dict));
        dict = outer;
    }
    dict
}

/// Merges `addition` into `target`, recursing into tables both have.
fn merge_into(target: &mut Dict, addition: Dict) {
    for (name, value) in addition {
        match (target.get_mut(&name), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, inner)) => merge_into(existing, inner),
            (_, value) => {
                target.insert(name, value);
            }
        }
    }
}

fn read_file(file: &ConfigFile) -> Result<Option<Layer>, Error> {
    let (path, required) = match file {
        ConfigFile::Required(path) => (path, true),
        ConfigFile::IfExists(path) => (path, false),
        ConfigFile::None => return Ok(None),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound && !required => return Ok(None),
        Err(source) => {
            return Err(Error::ReadFile {
                path: path.clone(),
                source,
            });
        }
    };
    parse_file(path, &text).map(Some)
}

fn parse_file(path: &Path, text: &str) -> Result<Layer, Error> {
    let dict = toml::from_str::<Dict>(text).map_err(|error| Error::ParseFile {
        path: path.to_owned(),
        position: error.span().map(|span| line_and_column(text, span.start)),
        message: one_line(error.message()),
    })?;
    Ok(Layer::new(Origin::File(path.to_owned()), dict))
}

/// `text`'s non-empty lines joined with `; `, so an error fits on one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Fails on the first key of `given` that `known` does not have.
fn check_known_keys(
    given: &Dict,
    known: &Dict,
    path: &mut Vec<String>,
    origin_of: &dyn Fn(&str) -> Origin,
) -> Result<(), Error> {
    for (name, value) in given {
        path.push(name.clone());
        match (known.get(name), value) {
            (None, _) => {
                let key = path.join(".");
                return Err(Error::UnknownKey {
                    origin: origin_of(&key),
                    key,
                    expected: known.keys().cloned().collect(),
                });
            }
            (Some(Value::Dict(_, known_inner)), Value::Dict(_, given_inner)) => {
                check_known_keys(given_inner, known_inner, path, origin_of)?;
            }
            // A type mismatch (a table where a string belongs, or the reverse)
            // is left to deserialization, which names the key and the type.
            (Some(_), _) => {}
        }
        path.pop();
    }
    Ok(())
}

/// `value` (options, or flags) as a table. Fails only on values that have
/// no TOML form, such as a non-UTF-8 path given as a flag.
fn to_dict<T: Serialize>(value: &T, origin: Origin) -> Result<Dict, Error> {
    match Value::serialize(value) {
        Ok(Value::Dict(_, dict)) => Ok(dict),
        Ok(other) => Err(Error::InvalidValue {
            key: String::new(),
            origin: Some(origin),
            message: format!("expected a table, found {}", other.to_actual()),
        }),
        Err(error) => Err(Error::InvalidValue {
            key: error.path.join("."),
            origin: Some(origin),
            message: error.kind.to_string(),
        }),
    }
}

fn invalid_value(error: &figment::Error, env: &EnvLayer) -> Error {
    let key = error.path.join(".");
    let origin = error
        .metadata
        .as_ref()
        .and_then(|metadata| match metadata.name.as_ref() {
            layer_names::DEFAULTS => Some(Origin::Defaults),
            layer_names::FILE => metadata
                .source
                .as_ref()
                .and_then(figment::Source::file_path)
                .map(|path| Origin::File(path.to_owned())),
            layer_names::ENV => Some(Origin::Env(env.var_name(&key))),
            layer_names::FLAGS => Some(Origin::Flags),
            _ => None,
        });
    Error::InvalidValue {
        key,
        origin,
        message: kind_message(&error.kind),
    }
}

/// What is wrong with a value, in words. figment's own `Display` quotes the
/// alternatives twice for unknown variants and fields (``expected `text` or
/// `json` `` wrapped in another pair of backticks), so those two are spelled
/// out here; the rest keep figment's wording.
fn kind_message(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    let one_of = |expected: &[&str]| {
        let quoted: Vec<String> = expected.iter().map(|name| format!("`{name}`")).collect();
        match quoted.as_slice() {
            [] => "nothing".to_owned(),
            [one] => one.clone(),
            [first, second] => format!("{first} or {second}"),
            _ => format!("one of {}", quoted.join(", ")),
        }
    };
    match kind {
        Kind::UnknownVariant(found, expected) => {
            format!("unknown variant `{found}`, expected {}", one_of(expected))
        }
        Kind::UnknownField(found, expected) => {
            format!("unknown field `{found}`, expected {}", one_of(expected))
        }
        other => other.to_string(),
    }
}

/// Formats `Some((line, column))` as `:line:column`.
struct Position(Option<(usize, usize)>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

/// Formats `Some(origin)` as ` <origin>`.
struct OriginSuffix<'a>(Option<&'a Origin>);

impl fmt::Display for OriginSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(origin) => write!(f, " {origin}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../herald.example.toml");

    fn sources(file: ConfigFile, env: &[(&str, &str)], overrides: Overrides) -> Sources {
        Sources {
            file,
            env: env
                .iter()
                .map(|(name, value)| (OsString::from(name), OsString::from(value)))
                .collect(),
            overrides,
        }
    }

    fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn leaf_keys(dict: &Dict, prefix: &str, out: &mut Vec<String>) {
        for (name, value) in dict {
            let key = format!("{prefix}{name}");
            match value {
                Value::Dict(_, inner) => leaf_keys(inner, &format!("{key}."), out),
                _ => out.push(key),
            }
        }
    }

    #[test]
    fn given_example_config_when_parsed_should_equal_defaults() {
        let options = from_toml_str(Path::new("herald.example.toml"), EXAMPLE).unwrap();
        assert_eq!(options, Options::default());
    }

    #[test]
    fn given_example_config_should_spell_out_every_key() {
        let example = toml::from_str::<Dict>(EXAMPLE).unwrap();
        let (mut in_example, mut known) = (Vec::new(), Vec::new());
        leaf_keys(&example, "", &mut in_example);
        leaf_keys(
            &to_dict(&Options::default(), Origin::Defaults).unwrap(),
            "",
            &mut known,
        );
        assert_eq!(in_example, known, "herald.example.toml must set every key");
    }

    #[test]
    fn given_nothing_when_loaded_should_use_defaults() {
        let options = load(&sources(ConfigFile::None, &[], Overrides::default())).unwrap();
        assert_eq!(options, Options::default());
        assert_eq!(options.listen.to_string(), "127.0.0.1:7800");
        assert_eq!(options.shutdown_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn given_missing_default_file_when_loaded_should_skip_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = ConfigFile::IfExists(dir.path().join("herald.toml"));
        let options = load(&sources(file, &[], Overrides::default())).unwrap();
        assert_eq!(options, Options::default());
    }

    #[test]
    fn given_missing_explicit_file_when_loaded_should_fail_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let error = load(&sources(
            ConfigFile::Required(path.clone()),
            &[],
            Overrides::default(),
        ))
        .unwrap_err();
        assert!(matches!(&error, Error::ReadFile { path: p, .. } if *p == path));
        assert!(error.to_string().contains("nope.toml"), "{error}");
    }

    #[test]
    fn given_all_layers_when_loaded_should_prefer_flags_then_env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            &dir,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"from-file\"\nshutdown_timeout_ms = 1\n\
             [log]\nformat = \"json\"\nlevel = \"warn\"\n",
        );
        let env = [
            ("HERALD_DATA_DIR", "from-env"),
            ("HERALD_SHUTDOWN_TIMEOUT_MS", "250"),
            ("HERALD_LOG__LEVEL", "debug"),
            ("PATH", "/usr/bin"),
        ];
        let overrides = Overrides {
            data_dir: Some(PathBuf::from("from-flag")),
            log: LogOverrides {
                level: Some("trace".parse().unwrap()),
                ..LogOverrides::default()
            },
            ..Overrides::default()
        };
        let options = load(&sources(ConfigFile::Required(path), &env, overrides)).unwrap();
        assert_eq!(options.listen.to_string(), "127.0.0.1:1"); // file
        assert_eq!(options.shutdown_timeout_ms, 250); // env over file
        assert_eq!(options.log.format, LogFormat::Json); // file
        assert_eq!(options.data_dir, PathBuf::from("from-flag")); // flag over env
        assert_eq!(options.log.level.as_str(), "trace"); // flag over env
    }

    #[test]
    fn given_unknown_key_in_file_when_loaded_should_fail_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(&dir, "lisen = \"127.0.0.1:0\"\n");
        let error = load(&sources(
            ConfigFile::Required(path.clone()),
            &[],
            Overrides::default(),
        ))
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "unknown configuration key 'lisen' in {}",
                path.display()
            )),
            "{message}"
        );
        assert!(
            message.contains("listen"),
            "lists the valid keys: {message}"
        );
    }

    #[test]
    fn given_unknown_nested_key_in_file_when_loaded_should_name_dotted_key() {
        let error = from_toml_str(Path::new("h.toml"), "[log]\ncolour = true\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown configuration key 'log.colour' in h.toml (expected one of: format, level)"
        );
    }

    #[test]
    fn given_unknown_herald_env_var_when_loaded_should_fail_naming_variable() {
        let error = load(&sources(
            ConfigFile::None,
            &[("HERALD_LISTN", "127.0.0.1:0")],
            Overrides::default(),
        ))
        .unwrap_err();
        assert!(
            error.to_string().starts_with(
                "unknown configuration key 'listn' from environment variable HERALD_LISTN"
            ),
            "{error}"
        );
    }

    #[test]
    fn given_unrelated_env_vars_when_loaded_should_ignore_them() {
        let env = [
            ("HERALDRY", "x"),
            ("herald_listen", "nope"),
            ("MY_HERALD_X", "1"),
        ];
        let options = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap();
        assert_eq!(options, Options::default());
    }

    #[test]
    fn given_client_env_vars_when_server_loads_should_ignore_them() {
        let env = [
            ("HERALD_CA_CERT", "ca.pem"),
            ("HERALD_CLIENT_CERT", "client.pem"),
            ("HERALD_CLIENT_KEY", "client.key"),
        ];
        let options = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap();
        assert_eq!(options, Options::default());
    }

    #[test]
    fn given_tls_settings_when_loaded_should_read_every_key() {
        let env = [
            ("HERALD_TLS__CERT_FILE", "server.pem"),
            ("HERALD_TLS__KEY_FILE", "server.key"),
            ("HERALD_TLS__CLIENT_CA_FILE", "clients.pem"),
            ("HERALD_TLS__CLIENT_AUTH", "required"),
            ("HERALD_TLS__RELOAD_INTERVAL_MS", "100"),
        ];
        let options = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap();
        assert!(options.tls.enabled());
        assert_eq!(options.tls.client_auth, ClientAuth::Required);
        assert_eq!(options.tls.client_ca_file, PathBuf::from("clients.pem"));
        assert_eq!(options.tls.reload_interval(), Duration::from_millis(100));
    }

    #[test]
    fn given_inconsistent_tls_keys_when_loaded_should_fail_naming_the_key_to_set() {
        let cases = [
            ("[tls]\ncert_file = \"c.pem\"\n", "tls.key_file"),
            ("[tls]\nkey_file = \"k.pem\"\n", "tls.cert_file"),
            (
                "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_auth = \"required\"\n",
                "tls.client_ca_file",
            ),
            (
                "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\n",
                "tls.client_auth",
            ),
            (
                "[tls]\nclient_ca_file = \"ca.pem\"\nclient_auth = \"optional\"\n",
                "tls.cert_file",
            ),
            ("[tls]\nclient_auth = \"sometimes\"\n", "tls.client_auth"),
        ];
        for (text, key) in cases {
            let error = from_toml_str(Path::new("herald.toml"), text).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("invalid value for configuration key '{key}'")),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn given_empty_env_key_when_loaded_should_fail_naming_variable() {
        let error = load(&sources(
            ConfigFile::None,
            &[("HERALD_", "x")],
            Overrides::default(),
        ))
        .unwrap_err();
        assert!(error.to_string().contains("HERALD_"), "{error}");
    }

    #[test]
    fn given_nested_env_var_when_loaded_should_set_nested_key() {
        let env = [
            ("HERALD_LOG__FORMAT", "json"),
            ("HERALD_LISTEN", "127.0.0.1:0"),
        ];
        let options = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap();
        assert_eq!(options.log.format, LogFormat::Json);
        assert_eq!(options.listen.port(), 0);
    }

    #[test]
    fn given_bad_listen_in_file_when_loaded_should_fail_naming_key_and_file() {
        let error = from_toml_str(Path::new("herald.toml"), "listen = \"nope\"\n").unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("invalid value for configuration key 'listen' in herald.toml: "),
            "{message}"
        );
    }

    #[test]
    fn given_bad_env_value_when_loaded_should_fail_naming_variable() {
        let env = [("HERALD_LOG__FORMAT", "xml")];
        let error = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(
                "invalid value for configuration key 'log.format' from environment variable \
                 HERALD_LOG__FORMAT: "
            ),
            "{message}"
        );
    }

    #[test]
    fn given_listen_backlog_from_env_when_loaded_should_set_it_and_refuse_zero() {
        let defaults = load(&sources(ConfigFile::None, &[], Overrides::default())).unwrap();
        assert_eq!(defaults.connections.listen_backlog.get(), 4_096);
        let env = [("HERALD_CONNECTIONS__LISTEN_BACKLOG", "8192")];
        let options = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap();
        assert_eq!(options.connections.listen_backlog.get(), 8_192);
        let env = [("HERALD_CONNECTIONS__LISTEN_BACKLOG", "0")];
        let error = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid value for configuration key 'connections.listen_backlog'"),
            "{error}"
        );
    }

    #[test]
    fn given_unknown_variant_when_loaded_should_quote_each_alternative_once() {
        let env = [("HERALD_LOG__FORMAT", "xml")];
        let error = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid value for configuration key 'log.format' from environment variable \
             HERALD_LOG__FORMAT: unknown variant `xml`, expected `text` or `json`"
        );
        let error =
            from_toml_str(Path::new("herald.toml"), "[tls]\nclient_auth = \"some\"\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid value for configuration key 'tls.client_auth' in herald.toml: \
             unknown variant `some`, expected one of `none`, `optional`, `required`"
        );
    }

    #[test]
    fn given_an_env_value_nested_past_the_stack_when_loaded_should_refuse_it_naming_variable() {
        // 60,000 brackets overflowed the main thread's stack inside figment's
        // value parser (found by the config_loader fuzz target).
        let deep = "[".repeat(60_000);
        let env = [("HERALD_LOG__LEVEL", deep.as_str())];
        let error = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap_err();
        assert!(
            matches!(&error, Error::EnvValueTooDeep { name } if name == "HERALD_LOG__LEVEL"),
            "{error}"
        );
        // Brackets inside a quoted string are text, not nesting.
        let quoted = format!("\"{}\"", "[".repeat(100));
        assert_eq!(value_nesting(&quoted), 0);
        assert_eq!(value_nesting("[1, {a = [2]}]"), 3);
    }

    #[test]
    fn given_an_env_value_with_an_escape_next_to_a_multibyte_char_should_refuse_it_without_panicking()
     {
        // figment's escape handling panicked on this (config_loader fuzz target).
        let value = "\"/b\u{6d6}\\\"dex\"";
        let env = [("HERALD_LOG__LEVEL", value)];
        let error = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap_err();
        assert!(
            error.to_string().contains("HERALD_LOG__LEVEL"),
            "refused by name, not a panic: {error}"
        );
    }

    #[test]
    fn given_env_table_set_to_a_string_when_loaded_should_fail_naming_variable() {
        let env = [("HERALD_LOG", "json")];
        let error = load(&sources(ConfigFile::None, &env, Overrides::default())).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "invalid value for configuration key 'log' from environment variable HERALD_LOG: "
            ),
            "{error}"
        );
    }

    #[test]
    fn given_bad_log_level_when_loaded_should_fail_naming_key() {
        let error =
            from_toml_str(Path::new("herald.toml"), "[log]\nlevel = \"info,[\"\n").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid value for configuration key 'log.level' in herald.toml"),
            "{error}"
        );
    }

    #[test]
    fn given_log_level_with_leading_space_and_a_multibyte_char_should_refuse_it_without_panicking()
    {
        // tracing-subscriber's parser slices this one inside the 'é' (found
        // by the config_loader fuzz target).
        let error =
            from_toml_str(Path::new("herald.toml"), "[log]\nlevel = \" é=info\"\n").unwrap_err();
        assert!(error.to_string().contains("log.level"), "{error}");
        assert!(error.to_string().contains("ASCII"), "{error}");
        assert_eq!(
            "herald_server=debug,info"
                .parse::<LogLevel>()
                .unwrap()
                .as_str(),
            "herald_server=debug,info"
        );
    }

    #[test]
    fn given_telemetry_keys_when_loaded_should_take_valid_ones_and_refuse_others_naming_the_key() {
        let options = from_toml_str(
            Path::new("herald.toml"),
            "[telemetry]\notlp_endpoint = \"http://c:4318/v1/traces\"\n\
             otlp_protocol = \"http/protobuf\"\nsample_ratio = 0.25\n",
        )
        .unwrap();
        assert_eq!(options.telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert!((options.telemetry.sample_ratio.get() - 0.25).abs() < f64::EPSILON);
        for (text, key) in [
            (
                "[telemetry]\nsample_ratio = 1.5\n",
                "telemetry.sample_ratio",
            ),
            (
                "[telemetry]\nsample_ratio = -0.1\n",
                "telemetry.sample_ratio",
            ),
            (
                "[telemetry]\notlp_protocol = \"http/json\"\n",
                "telemetry.otlp_protocol",
            ),
        ] {
            let error = from_toml_str(Path::new("herald.toml"), text).unwrap_err();
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn given_toml_syntax_error_when_loaded_should_fail_with_one_line_and_position() {
        let error = from_toml_str(Path::new("herald.toml"), "listen = \"127.0.0.1:0\"\nx = \n")
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("cannot parse herald.toml:2:"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn given_zero_job_setting_when_loaded_should_fail_naming_key() {
        for key in ["queue_partitions", "ack_wait_ms", "max_attempts"] {
            let error = from_toml_str(Path::new("herald.toml"), &format!("[jobs]\n{key} = 0\n"))
                .unwrap_err();
            assert!(
                error.to_string().starts_with(&format!(
                    "invalid value for configuration key 'jobs.{key}' in herald.toml"
                )),
                "{error}"
            );
        }
    }

    #[test]
    fn given_zero_request_limit_when_loaded_should_fail_naming_key() {
        let error = from_toml_str(
            Path::new("herald.toml"),
            "[limits]\nmax_request_bytes = 0\n",
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with(
                "invalid value for configuration key 'limits.max_request_bytes' in herald.toml"
            ),
            "{error}"
        );
    }

    #[test]
    fn given_wrong_type_when_loaded_should_fail_naming_key() {
        let error = from_toml_str(Path::new("herald.toml"), "shutdown_timeout_ms = \"soon\"\n")
            .unwrap_err();
        assert!(
            error.to_string().starts_with(
                "invalid value for configuration key 'shutdown_timeout_ms' in herald.toml"
            ),
            "{error}"
        );
    }
}
