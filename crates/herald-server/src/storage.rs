//! The storage layer as the server sees it: opened once the listener is up,
//! closed last at shutdown.
//!
//! Placeholder: the log engine (`herald-log`) is not wired in yet, so
//! opening only takes ownership of the locked [`DataDir`] and the engine's
//! metrics, and closing releases the lock. The engine plugs in here:
//! [`Storage::open`] runs its recovery (blocking, on a blocking thread) and
//! [`Storage::shutdown`] flushes, fsyncs and closes it, then drops the lock.

use std::path::PathBuf;
use std::sync::Arc;

use herald_log::LogMetrics;
use tracing::info;

use crate::data_dir::DataDir;

/// Open storage.
#[derive(Debug)]
pub struct Storage {
    data_dir: DataDir,
    /// Handed to the engine, which records into the registered metrics.
    #[expect(dead_code, reason = "read by the log engine once it is wired in")]
    metrics: Arc<LogMetrics>,
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
}

impl Storage {
    /// Opens (and, after a crash, recovers) storage in `data_dir`.
    ///
    /// Blocking: the server runs it on a blocking thread, never on a
    /// request-handling task.
    pub fn open(data_dir: DataDir, metrics: Arc<LogMetrics>) -> Result<Self, Error> {
        info!(path = %data_dir.path().display(), "Opened storage.");
        Ok(Self { data_dir, metrics })
    }

    /// Flushes and closes storage, then releases the data directory.
    /// Called once HTTP has drained, so no request can still write.
    pub async fn shutdown(self) -> Result<(), Error> {
        let path = self.data_dir.path().display().to_string();
        self.data_dir.close();
        info!(%path, "Closed storage.");
        Ok(())
    }
}
