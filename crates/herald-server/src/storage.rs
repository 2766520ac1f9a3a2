//! The storage layer as the server sees it: opened once the listener is up,
//! closed last at shutdown.
//!
//! Storage is a [`Backend`]; this is the one place that names the concrete
//! ones: the embedded backend (herald-log plus redb in the data directory)
//! or the NATS backend (a JetStream cluster). [`Storage::open`] recovers
//! or connects; [`Storage::shutdown`] persists group state, flushes and
//! closes the backend, then releases the data directory's lock. Blobs live
//! in the data directory (embedded), in the backend's object store (NATS),
//! or in S3 (`blobs.s3_bucket`, either backend).

use std::path::PathBuf;
use std::sync::Arc;

use herald_backend::Backend;
use herald_backend::topic::TopicLimits;
use herald_embedded::{EmbeddedBackend, EmbeddedOptions, GroupBudget, GroupMetrics, StoreCaches};
use herald_log::LogMetrics;
use herald_nats::{NatsBackend, NatsOptions};
use tracing::info;

use crate::data_dir::DataDir;

/// Open storage.
#[derive(Debug)]
pub struct Storage {
    data_dir: DataDir,
    backend: Concrete,
}

/// The backend, with what it offers beyond the trait.
#[derive(Clone, Debug)]
enum Concrete {
    Embedded(Arc<EmbeddedBackend>),
    Nats(Arc<NatsBackend>),
}

impl Concrete {
    fn shared(&self) -> Arc<dyn Backend> {
        match self {
            Self::Embedded(backend) => Arc::clone(backend) as Arc<dyn Backend>,
            Self::Nats(backend) => Arc::clone(backend) as Arc<dyn Backend>,
        }
    }
}

/// Which backend [`Storage::open`] opens, with its settings.
#[derive(Debug, Clone)]
pub enum BackendChoice {
    /// The embedded stores in the data directory.
    Embedded {
        groups: Arc<GroupMetrics>,
        budget: GroupBudget,
        topic_limits: TopicLimits,
        caches: StoreCaches,
    },
    /// A NATS JetStream cluster.
    Nats(Box<NatsOptions>),
}

/// What request handlers hold of open storage. Cheap to clone. It stays
/// valid after [`Storage::shutdown`]; calls then fail with
/// [`herald_backend::Error::ShuttingDown`].
#[derive(Clone, Debug)]
pub struct StorageHandle {
    backend: Concrete,
    shared: Arc<dyn Backend>,
}

impl StorageHandle {
    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.shared
    }

    /// The backend as a shared handle.
    pub fn shared_backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.shared)
    }

    /// Persists consumer-group state now (acks, nacks, leases), as the
    /// backend's background flush does every 50 ms: acks made before this
    /// returns survive a crash. For operations and tests
    /// (`POST /v1/admin/flush`).
    pub async fn flush_group_state(&self) -> Result<(), herald_backend::Error> {
        match &self.backend {
            Concrete::Embedded(backend) => backend.flush_group_state().await,
            Concrete::Nats(backend) => backend.flush_group_state().await,
        }
    }

    /// Carries out every pending erasure of hard-deleted streams now (the
    /// backend does it in the background soon after each hard delete) and
    /// returns once their bytes are gone from the data directory. For
    /// operations and tests (`POST /v1/admin/compact`). On NATS a hard
    /// delete purges at once: nothing is pending.
    pub async fn compact(
        &self,
    ) -> Result<herald_embedded::CompactionReport, herald_backend::Error> {
        match &self.backend {
            Concrete::Embedded(backend) => backend.compact().await,
            Concrete::Nats(_) => Ok(herald_embedded::CompactionReport::default()),
        }
    }
}

/// Why storage could not be opened or closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the store could not be read or written.
    #[error("storage I/O error on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The backend failed to open or close.
    #[error("storage backend: {0}")]
    Backend(#[source] herald_backend::Error),
}

impl Storage {
    /// Opens (and, after a crash, recovers) storage in `data_dir`, or
    /// connects to NATS, as `choice` says. The embedded backend's file work
    /// runs on blocking threads.
    pub async fn open(
        data_dir: DataDir,
        metrics: Arc<LogMetrics>,
        choice: BackendChoice,
    ) -> Result<Self, Error> {
        let backend = match choice {
            BackendChoice::Embedded {
                groups,
                budget,
                topic_limits,
                caches,
            } => {
                let options = EmbeddedOptions {
                    topic_limits,
                    metrics: groups,
                    group_budget: budget,
                    caches,
                    ..EmbeddedOptions::new(data_dir.path())
                };
                let backend = EmbeddedBackend::open(options, metrics)
                    .await
                    .map_err(Error::Backend)?;
                info!(path = %data_dir.path().display(), "Opened storage.");
                Concrete::Embedded(Arc::new(backend))
            }
            BackendChoice::Nats(options) => {
                let backend = NatsBackend::connect(*options)
                    .await
                    .map_err(Error::Backend)?;
                Concrete::Nats(Arc::new(backend))
            }
        };
        Ok(Self { data_dir, backend })
    }

    /// The backend, for the API handlers.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.backend.shared()
    }

    /// The backend's own blob store, if it has one (NATS: the system's
    /// object store bucket, shared by every node).
    pub async fn blob_objects(
        &self,
    ) -> Result<Option<Arc<dyn object_store::ObjectStore>>, herald_backend::Error> {
        match &self.backend {
            Concrete::Embedded(_) => Ok(None),
            Concrete::Nats(backend) => Ok(Some(Arc::new(backend.blobs().await?))),
        }
    }

    /// A cheap handle for the API handlers: the backend, plus the
    /// operations of this storage that are not part of the backend trait.
    pub fn handle(&self) -> StorageHandle {
        StorageHandle {
            backend: self.backend.clone(),
            shared: self.backend.shared(),
        }
    }

    /// Flushes and closes storage, then releases the data directory.
    /// Called once HTTP has drained, so no request can still write.
    pub async fn shutdown(self) -> Result<(), Error> {
        let path = self.data_dir.path().display().to_string();
        let closed = self
            .backend
            .shared()
            .shutdown()
            .await
            .map_err(Error::Backend);
        self.data_dir.close();
        info!(%path, "Closed storage.");
        closed
    }
}
