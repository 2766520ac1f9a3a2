//! The embedded backend's integration tests, in one binary: the backend
//! conformance suite, and `kill -9` of processes using the backend (groups,
//! streams).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod damage;
mod dedup;
mod erasure;
mod groups;
mod kill;
mod lineage;
mod stream_kill;
mod sync_kill;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use herald_backend::conformance::Harness;
use herald_backend::{AckDurability, Backend, FetchRequest, Groups};
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

/// Re-runs this test binary on the ignored test `name` — a child to
/// `kill -9` — with `vars` set and its stdout piped.
fn spawn_child(name: &str, vars: &[(&str, &std::ffi::OsStr)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in vars {
        command.env(key, value);
    }
    command.spawn().unwrap()
}

/// The runtime a kill test and its children run the backend on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The members `child-0`… of killed children never come back: their
/// leases (which a restart keeps until their deadline) return as their
/// leaving would.
async fn release_children(
    backend: &EmbeddedBackend,
    topic: &herald_types::TopicName,
    group: &herald_types::GroupName,
    children: u32,
) {
    for cycle in 0..children {
        backend
            .leave(topic, group, &format!("child-{cycle}"))
            .await
            .unwrap();
    }
}

/// As the member `checker`, fetches and acks until a fetch brings nothing;
/// returns the ids of the events delivered.
async fn drain_acking(
    backend: &EmbeddedBackend,
    topic: &herald_types::TopicName,
    group: &herald_types::GroupName,
) -> BTreeSet<String> {
    let mut delivered = BTreeSet::new();
    loop {
        let request = FetchRequest {
            member: "checker".into(),
            max: 1_000,
            wait_ms: 300,
        };
        let response = backend.fetch(topic, group, request).await.unwrap();
        if response.deliveries.is_empty() {
            return delivered;
        }
        let ids: Vec<String> = response
            .deliveries
            .iter()
            .map(|delivery| delivery.delivery_id.clone())
            .collect();
        delivered.extend(
            response
                .deliveries
                .into_iter()
                .map(|delivery| delivery.event.event.id),
        );
        backend
            .ack(topic, group, &ids, AckDurability::Async)
            .await
            .unwrap();
    }
}
