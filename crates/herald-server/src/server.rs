//! The server: built from [`Options`], run until cancelled.
//!
//! ```text
//! Server::bind(options)     lock the data directory, bind the listener
//! Server::run(cancel)       serve HTTP and gRPC on the one listener at once
//!                           (/healthz 200, /readyz 503, the API 503
//!                           `unavailable`, gRPC health NOT_SERVING)
//!                           open storage on a blocking thread → the API
//!                           serves, /readyz 200
//!   cancel fires:
//!     1. /readyz → 503 ("stopping"); waiting long-poll fetches answer 503
//!     2. stop accepting (the listener closes); every connection closes
//!        gracefully: drain in-flight requests, for at most
//!        shutdown_timeout_ms (then the stragglers are dropped)
//!     3. close storage: flush, fsync, close, release the data-dir lock
//! ```
//!
//! Connections (the accept loop, header-read and idle timeouts) are
//! `connections.rs`; TLS on them (`[tls]`: handshake, reload of the
//! certificate files on change or SIGHUP, client certificates) `tls.rs`.
//! The TLS files are loaded in `bind`, so a server with unusable ones does
//! not start; the reload task runs while connections are served.
//!
//! Storage closes last so that no request still running can write to a
//! closed store; HTTP serves before storage is open so that liveness probes
//! answer during a long recovery.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_log::SystemClock;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Auth;
use crate::blobs::{self, BlobStore};
use crate::config::Options;
use crate::connections;
use crate::data_dir::{self, DataDir};
use crate::grpc::{self, GrpcState};
use crate::http::{
    self, AppState, JobsSlot, LineageSlot, Phase, Readiness, StorageSlot, WebhooksSlot,
    WorkflowsSlot,
};
use crate::metrics::Metrics;
use crate::storage::{self, Storage};
use crate::tls::{self, Tls};

/// A bound, not yet serving, Herald server.
#[derive(Debug)]
pub struct Server {
    options: Options,
    listener: TcpListener,
    local_addr: SocketAddr,
    data_dir: DataDir,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    blobs: BlobStore,
    auth: Arc<Auth>,
    storage_slot: StorageSlot,
    tls: Option<Arc<Tls>>,
}

/// Why the server could not start or did not stop cleanly. Every message
/// names the path or address involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data directory could not be created or locked.
    #[error(transparent)]
    DataDir(#[from] data_dir::Error),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A non-loopback `listen` with no auth configured and no `--insecure`.
    #[error(
        "refusing to listen on {addr} without authentication: anyone who can reach it could \
         administer Herald. Configure credentials (auth.bootstrap_key / \
         HERALD_AUTH__BOOTSTRAP_KEY, or [auth.jwt]), or pass --insecure (auth.insecure = true) \
         to serve without them"
    )]
    Insecure {
        /// The configured address.
        addr: SocketAddr,
    },
    /// The auth configuration cannot be used (a JWT key file).
    #[error("cannot set up authentication")]
    Auth(#[source] crate::auth::Error),
    /// TLS is configured but its files are missing or unusable.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// Storage failed to open.
    #[error("cannot open storage")]
    OpenStorage(#[source] storage::Error),
    /// Blob storage failed to open.
    #[error("cannot open blob storage")]
    OpenBlobs(#[source] blobs::Error),
    /// The job service could not start.
    #[error("cannot start the job service")]
    StartJobs(#[source] herald_jobs::Error),
    /// The webhook service could not start (its HTTP client, or its
    /// options).
    #[error("cannot start the webhook service: {0}")]
    StartWebhooks(String),
    /// The workflow engine could not start (its history topic, or resuming
    /// the instances left running).
    #[error("cannot start the workflow engine: {0}")]
    StartWorkflows(String),
    /// Storage failed to close cleanly.
    #[error("cannot close storage")]
    CloseStorage(#[source] storage::Error),
    /// The HTTP server stopped with an error.
    #[error("the HTTP server failed")]
    Http(#[source] io::Error),
    /// The HTTP server stopped although nothing asked it to.
    #[error("the HTTP server stopped unexpectedly")]
    HttpStopped,
    /// A server task panicked or was cancelled.
    #[error("server task `{task}` failed")]
    Task {
        /// The task's name.
        task: &'static str,
        /// Why it did not complete.
        #[source]
        source: JoinError,
    },
}

/// Applies the parts of a reloaded configuration that change without a
/// restart: the default rate limits and quotas (`[auth.limits]`). Other keys
/// take effect at the next start (TLS files reload on their own: `tls.rs`).
#[derive(Debug, Clone)]
pub struct Reloader {
    auth: Arc<Auth>,
}

impl Reloader {
    /// Applies `options` (loaded again from the same sources).
    pub fn apply(&self, options: &Options) {
        let (before, after) = (self.auth.default_limits(), options.auth.limits);
        if before == after {
            info!("Configuration reloaded; [auth.limits] unchanged.");
            return;
        }
        self.auth.set_default_limits(after);
        info!(
            ?before,
            ?after,
            "Configuration reloaded; new [auth.limits] in force."
        );
    }
}

impl Server {
    /// Locks the data directory and binds the listener. Connections queue
    /// in the listen backlog until [`Server::run`] serves them.
    ///
    /// Fails fast, before anything is served, if either is unavailable.
    pub async fn bind(options: Options) -> Result<Self, Error> {
        check_exposure(&options)?;
        // Blocking, but at startup: nothing is being served yet.
        let data_dir = DataDir::open(&options.data_dir)?;
        info!(path = %data_dir.path().display(), "Locked data directory.");
        let metrics = Metrics::new();
        let tls = if options.tls.enabled() {
            let tls = Tls::load(&options.tls, metrics.tls().clone())?;
            info!(cert = %options.tls.cert_file.display(), client_auth = ?options.tls.client_auth,
                "TLS on: the listener speaks HTTPS and gRPC over TLS only.");
            Some(tls)
        } else {
            None
        };
        let bind_error = |source| Error::Bind {
            addr: options.listen,
            source,
        };
        let listener =
            listen(options.listen, options.connections.listen_backlog.get()).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        // On NATS (without S3) blobs live in the backend's object store,
        // attached once the backend has connected.
        let blobs = if options.backend == crate::config::BackendKind::Nats
            && options.blobs.s3_bucket.is_empty()
        {
            BlobStore::in_backend(options.limits.max_blob_bytes())
        } else {
            BlobStore::open(
                data_dir.path(),
                &options.blobs.s3_bucket,
                options.limits.max_blob_bytes(),
                options.blobs.min_free_bytes,
            )
            .map_err(Error::OpenBlobs)?
        };
        let storage_slot = StorageSlot::default();
        let auth = Auth::new(&options.auth, storage_slot.clone(), Arc::new(SystemClock))
            .map_err(Error::Auth)?;
        info!(addr = %local_addr, auth = auth.is_enabled(), "Listening.");
        Ok(Self {
            auth,
            storage_slot,
            options,
            listener,
            local_addr,
            data_dir,
            metrics,
            readiness: Readiness::default(),
            blobs,
            tls,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The readiness state `/readyz` reports.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// A handle that applies a reloaded configuration to the running server
    /// (`herald serve` calls it on SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            auth: Arc::clone(&self.auth),
        }
    }

    /// Serves until `cancel` fires, then shuts down in order (see the module
    /// docs). Returns `Ok` after a clean shutdown, also when draining timed
    /// out.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        let Self {
            options,
            listener,
            local_addr: _,
            data_dir,
            metrics,
            readiness,
            blobs,
            auth,
            storage_slot,
            tls,
        } = self;

        let jobs_slot = JobsSlot::default();
        let webhooks_slot = WebhooksSlot::default();
        let workflows_slot = WorkflowsSlot::default();
        let lineage_slot = LineageSlot::default();
        let (grpc_routes, health) = grpc::router(GrpcState {
            storage: storage_slot.clone(),
            clock: Arc::new(SystemClock),
            stopping: cancel.clone(),
            max_message_bytes: options.limits.max_request_bytes(),
            max_publish_stream_bytes: options.limits.max_publish_stream_bytes(),
            jobs: jobs_slot.clone(),
            webhooks: webhooks_slot.clone(),
            blobs: blobs.clone(),
            auth: Arc::clone(&auth),
        });
        grpc::set_serving(&health, false).await;
        let app = http::router(
            AppState {
                metrics: Arc::clone(&metrics),
                readiness: readiness.clone(),
                storage: storage_slot.clone(),
                clock: Arc::new(SystemClock),
                stopping: cancel.clone(),
                max_request_bytes: options.limits.max_request_bytes(),
                body_idle_timeout: options.connections.idle_timeout(),
                blobs: blobs.clone(),
                jobs: jobs_slot.clone(),
                webhooks: webhooks_slot.clone(),
                workflows: workflows_slot.clone(),
                lineage: lineage_slot.clone(),
                auth: Arc::clone(&auth),
            },
            grpc_routes,
        );
        let stop_http = CancellationToken::new();
        // Reloads the certificate files while connections are served; it
        // stops with them.
        let _tls_watch = tls.clone().map(|tls| {
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tls.watch(stop_http.clone())))
        });
        let mut http_task: JoinHandle<io::Result<()>> = tokio::spawn(connections::serve(
            listener,
            app,
            options.connections.clone(),
            tls,
            stop_http.clone(),
        ));

        // Storage opens in its own task (its file work on blocking threads):
        // recovery reads files. A signal that arrives meanwhile takes effect
        // once it has opened.
        let choice = match options.backend {
            crate::config::BackendKind::Embedded => crate::storage::BackendChoice::Embedded {
                groups: Arc::clone(metrics.groups()),
                budget: options.groups.budget(),
                topic_limits: options.limits.topic_limits(),
                caches: options.storage.caches(),
            },
            crate::config::BackendKind::Nats => crate::storage::BackendChoice::Nats(Box::new(
                options
                    .nats
                    .options(options.groups.budget(), options.limits.topic_limits()),
            )),
        };
        let opening = tokio::spawn(Storage::open(data_dir, Arc::clone(metrics.log()), choice));
        let storage = tokio::select! {
            opened = opening => match opened {
                Ok(Ok(storage)) => storage,
                Ok(Err(error)) => {
                    stop_http.cancel();
                    http_task.abort();
                    return Err(Error::OpenStorage(error));
                }
                Err(source) => {
                    http_task.abort();
                    return Err(Error::Task { task: "open-storage", source });
                }
            },
            served = &mut http_task => return Err(http_outcome(served).err().unwrap_or(Error::HttpStopped)),
        };
        match storage.blob_objects().await {
            Ok(Some(objects)) => blobs.attach(objects),
            Ok(None) => {}
            Err(error) => {
                stop_http.cancel();
                http_task.abort();
                return Err(Error::OpenStorage(crate::storage::Error::Backend(error)));
            }
        }
        storage_slot.set(storage.handle());
        let services = CancellationToken::new();
        let service_tasks = match start_services(
            &options,
            &storage,
            blobs,
            (&jobs_slot, &webhooks_slot, &workflows_slot, &lineage_slot),
            &metrics,
            &services,
        )
        .await
        {
            Ok(tasks) => tasks,
            Err(error) => {
                stop_http.cancel();
                http_task.abort();
                let _ = storage.shutdown().await;
                return Err(error);
            }
        };
        readiness.set(Phase::Ready);
        grpc::set_serving(&health, true).await;
        let grpc_health = tokio::spawn(grpc_health_loop(
            health.clone(),
            readiness.clone(),
            storage.backend(),
            services.clone(),
        ));
        info!("Ready.");

        let stopped_early = tokio::select! {
            () = cancel.cancelled() => None,
            served = &mut http_task => Some(served),
        };
        let http_result = match stopped_early {
            Some(served) => Err(http_outcome(served).err().unwrap_or(Error::HttpStopped)),
            None => {
                info!("Shutting down.");
                readiness.set(Phase::Stopping);
                grpc::set_serving(&health, false).await;
                stop_http.cancel();
                drain(http_task, &options).await
            }
        };

        // The services stop before storage closes: nothing may write after.
        services.cancel();
        let _ = grpc_health.await;
        for task in service_tasks {
            if let Err(source) = task.await {
                warn!(error = %source, "A service task failed.");
            }
        }

        // Storage closes whatever happened to HTTP; an HTTP error is
        // reported first since it came first.
        let closed = storage.shutdown().await.map_err(Error::CloseStorage);
        http_result.and(closed)?;
        info!("Stopped.");
        Ok(())
    }
}

/// How often gRPC health follows the backend's health (see
/// [`grpc_health_loop`]).
const GRPC_HEALTH_INTERVAL: Duration = Duration::from_millis(250);

/// Makes `grpc.health.v1` say NOT_SERVING while storage is degraded (a
/// partition or store failed a write: `/readyz` lists them) and SERVING again
/// once it recovered, while the server is ready. It only flips back what it
/// flipped, so it never undoes the NOT_SERVING of a shutdown.
async fn grpc_health_loop(
    health: tonic_health::server::HealthReporter,
    readiness: Readiness,
    backend: Arc<dyn herald_backend::Backend>,
    cancel: CancellationToken,
) {
    let mut degraded = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(GRPC_HEALTH_INTERVAL) => {}
        }
        let now_degraded = !backend.health().is_empty();
        if now_degraded != degraded && readiness.phase() == Phase::Ready {
            grpc::set_serving(&health, !now_degraded).await;
            degraded = now_degraded;
        }
    }
}

/// Secure by default: a non-loopback `listen` needs auth configured or
/// `auth.insecure`, which then warns at every start.
fn check_exposure(options: &Options) -> Result<(), Error> {
    if options.listen.ip().is_loopback() || options.auth.is_configured() {
        return Ok(());
    }
    if !options.auth.insecure {
        return Err(Error::Insecure {
            addr: options.listen,
        });
    }
    warn!(
        addr = %options.listen,
        "Serving WITHOUT authentication on a non-loopback address (--insecure / \
         auth.insecure): anyone who can reach it can read, write and delete everything."
    );
    Ok(())
}

/// Starts the job service, the webhook service, the workflow engine, the
/// lineage indexer and the blob collector on open storage; returns their tasks (they stop when
/// `cancel` fires).
async fn start_services(
    options: &Options,
    storage: &Storage,
    blobs: BlobStore,
    (jobs_slot, webhooks_slot, workflows_slot, lineage_slot): (
        &JobsSlot,
        &WebhooksSlot,
        &WorkflowsSlot,
        &LineageSlot,
    ),
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let backend = storage.backend();
    let service = herald_jobs::Service::start(
        Arc::clone(&backend),
        herald_jobs::Options {
            // Pins are checked against the blobs themselves (the collector's race).
            blob_storage: Some(Arc::new(blobs.clone())),
            metrics: Arc::clone(metrics.jobs()),
            follow_other_nodes: options.backend == crate::config::BackendKind::Nats,
            ..options.jobs.service_options()
        },
        Arc::new(herald_jobs::SystemClock),
    )
    .await
    .map_err(Error::StartJobs)?;
    let jobs_handle = service.handle();
    jobs_slot.set(jobs_handle.clone());
    let jobs = tokio::spawn(service.run(cancel.clone()));
    let webhook_options = options
        .webhooks
        .service_options()
        .map_err(|error| Error::StartWebhooks(error.to_string()))?;
    let sender = herald_webhooks::Sender::new(
        options
            .webhooks
            .policy()
            .map_err(|error| Error::StartWebhooks(error.to_string()))?,
        webhook_options.connect_timeout,
    )
    .map_err(|error| Error::StartWebhooks(error.to_string()))?;
    // Workflows' `call: http` goes out through the same guarded client.
    let engine = herald_workflows::Engine::start(
        Arc::clone(&backend),
        herald_workflows::Services {
            http: Some(sender.clone()),
            jobs: Some(jobs_handle),
        },
        herald_workflows::Options {
            shared_backend: options.backend == crate::config::BackendKind::Nats,
            ..options.workflows.engine_options()
        },
        Arc::clone(metrics.workflows()),
        cancel.child_token(),
    )
    .await
    .map_err(|error| Error::StartWorkflows(error.to_string()))?;
    let webhooks = herald_webhooks::Service::new(
        Arc::clone(&backend),
        sender,
        webhook_options,
        Arc::clone(metrics.webhooks()),
    );
    webhooks_slot.set(webhooks.handle());
    let indexer = herald_lineage::Indexer::new(Arc::clone(&backend));
    lineage_slot.set(herald_lineage::Lineage::new(
        Arc::clone(&backend),
        Some(webhooks.handle()),
        indexer.handle(),
    ));
    let lineage = tokio::spawn(indexer.run(cancel.clone()));
    let webhooks = tokio::spawn(webhooks.run(cancel.clone()));
    let collector = tokio::spawn(crate::blobs::collect_loop(
        blobs,
        backend,
        options.blobs.unreferenced_ttl_ms,
        options.blobs.gc_interval_ms,
        cancel.clone(),
    ));
    engine
        .recover()
        .await
        .map_err(|error| Error::StartWorkflows(error.to_string()))?;
    workflows_slot.set(engine.clone());
    let workflows = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            engine.shutdown().await;
        }
    });
    Ok(vec![jobs, webhooks, collector, workflows, lineage])
}

/// Waits for in-flight requests, at most `shutdown_timeout_ms`.
async fn drain(mut http_task: JoinHandle<io::Result<()>>, options: &Options) -> Result<(), Error> {
    match tokio::time::timeout(options.shutdown_timeout(), &mut http_task).await {
        Ok(served) => {
            info!("Drained in-flight requests.");
            http_outcome(served)
        }
        Err(_elapsed) => {
            warn!(
                timeout_ms = options.shutdown_timeout_ms,
                "In-flight requests did not finish in time; dropping them."
            );
            http_task.abort();
            Ok(())
        }
    }
}

fn http_outcome(served: Result<io::Result<()>, JoinError>) -> Result<(), Error> {
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Error::Http(error)),
        Err(source) => Err(Error::Task {
            task: "http",
            source,
        }),
    }
}

/// Binds `addr` with a listen backlog of `backlog` connections
/// (`connections.listen_backlog`). `TcpListener::bind` would fix it at
/// 128 (mio copies std's value), so a burst of more connects than that
/// would stall on dropped SYNs. `SO_REUSEADDR` as `TcpListener::bind` sets it on Unix, so a
/// restart can bind while old connections sit in `TIME_WAIT`.
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects `count` clients to `addr` without the server accepting any;
    /// how many connected within a second each.
    async fn connect_burst(addr: SocketAddr, count: usize) -> usize {
        let mut open = Vec::with_capacity(count);
        for _ in 0..count {
            match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(stream)) => open.push(stream),
                _ => break,
            }
        }
        open.len()
    }

    #[tokio::test]
    async fn given_the_default_backlog_when_a_burst_exceeds_tokios_128_connects_should_queue_them_all()
     {
        let backlog = crate::config::ConnectionOptions::default().listen_backlog;
        assert_eq!(backlog.get(), 4_096);
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)), backlog.get()).unwrap();
        let addr = listener.local_addr().unwrap();
        // 500 is far past tokio's fixed 128 (129 connect there, then stall),
        // below a stock somaxconn of 4,096, and within a 1,024-descriptor
        // soft limit.
        assert_eq!(connect_burst(addr, 500).await, 500);
    }

    #[tokio::test]
    async fn given_a_small_backlog_when_more_connect_should_stall_past_it() {
        // The setting reaches the socket: with 8, the queue fills at about 9.
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)), 8).unwrap();
        let addr = listener.local_addr().unwrap();
        let connected = connect_burst(addr, 64).await;
        assert!(connected < 64, "{connected} connected past a backlog of 8");
    }
}
