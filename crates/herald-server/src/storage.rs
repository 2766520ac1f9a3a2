//! The storage layer as the server sees it: opened once the listener is up,
//! closed last at shutdown.
//!
//! Storage is a [`Backend`]; this is the one place that names a concrete
//! one (today the embedded backend: herald-log plus redb in the data
//! directory). [`Storage::open`] recovers it; [`Storage::shutdown`] persists
//! group state, flushes and fsyncs every log, closes them, then releases the
//! data directory's lock.

use std::path::PathBuf;
use std::sync::Arc;

use herald_backend::Backend;
use herald_backend::topic::TopicLimits;
use herald_embedded::{EmbeddedBackend, EmbeddedOptions, GroupBudget, GroupMetrics, StoreCaches};
use herald_log::LogMetrics;
use tracing::info;

use crate::data_dir::DataDir;

/// Open storage.
#[derive(Debug)]
pub struct Storage {
    data_dir: DataDir,
    backend: Arc<EmbeddedBackend>,
}

/// What request handlers hold of open storage. Cheap to clone. It stays
/// valid after [`Storage::shutdown`]; calls then fail with
/// [`herald_backend::Error::ShuttingDown`].
#[derive(Clone, Debug)]
pub struct StorageHandle {
    backend: Arc<EmbeddedBackend>,
}

impl StorageHandle {
    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The backend as a shared handle.
    pub fn shared_backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend) as Arc<dyn Backend>
    }

    /// Persists consumer-group state now (acks, nacks, leases), as the
    /// backend's background flush does every 50 ms: acks made before this
    /// returns survive a crash. For operations and tests
    /// (`POST /v1/admin/flush`).
    pub async fn flush_group_state(&self) -> Result<(), herald_backend::Error> {
        self.backend.flush_group_state().await
    }

    /// Carries out every pending erasure of hard-deleted streams now (the
    /// backend does it in the background soon after each hard delete) and
    /// returns once their bytes are gone from the data directory. For
    /// operations and tests (`POST /v1/admin/compact`).
    pub async fn compact(
        &self,
    ) -> Result<herald_embedded::CompactionReport, herald_backend::Error> {
        self.backend.compact().await
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
    /// Opens (and, after a crash, recovers) storage in `data_dir`, creating
    /// topics within `topic_limits` and holding at most `budget` per group.
    /// The backend's file work runs on blocking threads.
    pub async fn open(
        data_dir: DataDir,
        metrics: Arc<LogMetrics>,
        groups: Arc<GroupMetrics>,
        budget: GroupBudget,
        topic_limits: TopicLimits,
        caches: StoreCaches,
    ) -> Result<Self, Error> {
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
        Ok(Self {
            data_dir,
            backend: Arc::new(backend),
        })
    }

    /// The backend, for the API handlers.
    pub fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend) as Arc<dyn Backend>
    }

    /// A cheap handle for the API handlers: the backend, plus the
    /// operations of this storage that are not part of the backend trait.
    pub fn handle(&self) -> StorageHandle {
        StorageHandle {
            backend: Arc::clone(&self.backend),
        }
    }

    /// Flushes and closes storage, then releases the data directory.
    /// Called once HTTP has drained, so no request can still write.
    pub async fn shutdown(self) -> Result<(), Error> {
        let path = self.data_dir.path().display().to_string();
        let closed = self.backend.shutdown().await.map_err(Error::Backend);
        self.data_dir.close();
        info!(%path, "Closed storage.");
        closed
    }
}
