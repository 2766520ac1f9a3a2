//! The embedded backend's integration tests, in one binary: the backend
//! conformance suite, and `kill -9` of processes using the backend (groups,
//! streams).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod erasure;
mod groups;
mod kill;
mod stream_kill;
mod sync_kill;

use std::sync::Arc;

use herald_backend::Backend;
use herald_backend::conformance::Harness;
use herald_embedded::{EmbeddedBackend, EmbeddedOptions};
use herald_log::LogMetrics;

struct Embedded {
    dir: tempfile::TempDir,
    backend: Arc<EmbeddedBackend>,
}

async fn open(dir: &std::path::Path) -> Arc<EmbeddedBackend> {
    Arc::new(
        EmbeddedBackend::open(EmbeddedOptions::new(dir), LogMetrics::new())
            .await
            .unwrap(),
    )
}

#[async_trait::async_trait]
impl Harness for Embedded {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend = open(dir.path()).await;
        Self { dir, backend }
    }

    fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend) as Arc<dyn Backend>
    }

    async fn restart(self) -> Self {
        self.backend.shutdown().await.unwrap();
        let Self { dir, backend } = self;
        drop(backend);
        let backend = open(dir.path()).await;
        Self { dir, backend }
    }
}

herald_backend::conformance_suite!(Embedded);
