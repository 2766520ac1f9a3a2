//! A full disk under the real binary: the data directory lives on a small
//! tmpfs mounted for the test (root only: the tests skip, saying so, where
//! mounting is not permitted). Filling the disk makes publishes answer 503
//! `storage_unavailable` and `/readyz` name the failed partition; freeing
//! space lets the server recover by itself (no restart), with every
//! acknowledged event stored exactly once. Blob uploads keep the configured
//! free-space reserve and answer 507 `insufficient_storage`, keeping nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers; clippy only exempts #[test] functions themselves"
)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{
    Api, TestServer, event, expect_json, expect_problem, serve_with_data_dir, wait_for_status,
};

/// A tmpfs of a few MiB mounted on a temp directory; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts one of `size_mib`, or `None` (with a message) if this process
    /// may not mount filesystems.
    fn mount(size_mib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Self { dir }),
            Ok(output) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(error) => {
                eprintln!("SKIPPED: cannot run mount: {error}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk refuses: the disk is then full.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(28) => break,
                Err(error) => panic!("filling the disk: {error}"),
            }
        }
        path
    }

    /// Free bytes on the disk.
    fn free(&self) -> u64 {
        let output = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a server that has not exited yet still holds files there.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A server whose data directory is on `disk`, with `env` set.
async fn serve_on(disk: &SmallDisk, env: &[(&str, &str)]) -> (TestServer, Api) {
    let cwd = tempfile::tempdir().unwrap();
    let mut command = serve_with_data_dir(cwd.path(), &disk.path().join("data"));
    for (name, value) in env {
        command.env(name, value);
    }
    TestServer::ready(TestServer::spawn(cwd, command).await).await
}

/// The server's `grpc.health.v1` status (of the whole server, `""`).
async fn grpc_health(server: &TestServer) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Polls gRPC health until it is `status` (at most 10 s).
async fn wait_for_grpc_health(server: &TestServer, status: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while grpc_health(server).await != status as i32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gRPC health is not {status:?} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes one event of about 2 KiB; returns the response.
async fn publish(api: &Api, id: &str) -> reqwest::Response {
    let mut padded = event(id);
    padded["data"]["pad"] = json!("x".repeat(2048));
    api.post("/v1/topics/orders/events", &padded).await
}

/// Every event of partition 0, as (offset, id).
async fn stored(api: &Api) -> Vec<(u64, String)> {
    api.partition_events("orders", 0)
        .await
        .into_iter()
        .map(|(offset, event)| (offset, event["id"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn given_full_disk_when_publishing_should_answer_503_then_recover_by_itself_with_every_acked_event_once()
 {
    let Some(disk) = SmallDisk::mount(24) else {
        return;
    };
    let (server, api) = serve_on(&disk, &[]).await;
    api.create_topic(json!({"name": "orders", "partitions": 1, "fsync": "always"}))
        .await;
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for index in 0..10 {
        let id = format!("before-{index}");
        let ack = expect_json(publish(&api, &id).await, 201).await;
        acked.insert(id, ack["results"][0]["offset"].as_u64().unwrap());
    }

    let filler = disk.fill();
    // The segment's last page may still hold an event or two.
    let mut index = 0;
    let refused = loop {
        let id = format!("during-{index}");
        let response = publish(&api, &id).await;
        if response.status().as_u16() == 201 {
            let ack = expect_json(response, 201).await;
            acked.insert(id, ack["results"][0]["offset"].as_u64().unwrap());
            index += 1;
            assert!(index < 20, "the full disk took 20 events");
            continue;
        }
        break expect_problem(response, 503, "storage_unavailable").await;
    };
    let refused_id = format!("during-{index}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{refused}"
    );
    // Meanwhile: refused fast, readiness says why, reads go on.
    expect_problem(
        publish(&api, "never-retried").await,
        503,
        "storage_unavailable",
    )
    .await;
    // The metadata store fails too (redb needs reopening after that).
    let group = api
        .put(
            "/v1/topics/orders/groups/workers",
            &json!({"mode": "queue"}),
        )
        .await;
    expect_problem(group, 503, "storage_unavailable").await;
    let ready = expect_json(api.get("/readyz").await, 503).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    let problems: BTreeMap<String, Value> = ready["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|problem| {
            (
                problem["component"].as_str().unwrap().to_owned(),
                problem.clone(),
            )
        })
        .collect();
    for component in ["topic orders partition 0", "meta.redb"] {
        let problem = &problems[component];
        assert_eq!(problem["code"], "storage_unavailable", "{ready}");
        assert!(
            problem["error"].as_str().unwrap().contains("No space left"),
            "{ready}"
        );
    }
    assert_eq!(stored(&api).await.len(), acked.len());
    wait_for_grpc_health(&server, ServingStatus::NotServing).await;

    // Space returns: the server recovers by itself (readiness first, with
    // no request needed); the client retries the refused event with the
    // same id until it is stored.
    std::fs::remove_file(filler).unwrap();
    wait_for_status(&api.client, &api.url("/readyz"), 200).await;
    wait_for_grpc_health(&server, ServingStatus::Serving).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ack = loop {
        let response = publish(&api, &refused_id).await;
        if response.status().as_u16() == 201 {
            break expect_json(response, 201).await;
        }
        expect_problem(response, 503, "storage_unavailable").await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "not recovered 20 s after space returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    acked.insert(
        refused_id.clone(),
        ack["results"][0]["offset"].as_u64().unwrap(),
    );
    let again = expect_json(publish(&api, &refused_id).await, 201).await;
    assert_eq!(again["results"][0]["duplicate"], true, "{again}");
    let ack = expect_json(publish(&api, "after-0").await, 201).await;
    let group = api
        .put(
            "/v1/topics/orders/groups/workers",
            &json!({"mode": "queue"}),
        )
        .await;
    expect_json(group, 201).await;
    acked.insert(
        "after-0".into(),
        ack["results"][0]["offset"].as_u64().unwrap(),
    );

    // Every acknowledged event is there exactly once, at its offset; the
    // refused ones that were not retried are not.
    let events = stored(&api).await;
    let offsets: Vec<u64> = events.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(
        offsets,
        (0..events.len() as u64).collect::<Vec<_>>(),
        "dense"
    );
    let found: BTreeMap<String, u64> = events
        .into_iter()
        .map(|(offset, id)| (id, offset))
        .collect();
    assert_eq!(found, acked);

    let metrics = api.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("herald_log_io_failures_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_log_recoveries_total 1"),
        "{metrics}"
    );
    server.signal("TERM").await;
    let (status, stderr, _dir) = server.wait().await;
    assert!(status.success(), "{stderr}");
}

#[tokio::test]
async fn given_free_space_reserve_when_a_blob_upload_would_eat_into_it_should_answer_507_and_keep_nothing()
 {
    // Small enough that a refused upload's rest is read whole before the
    // answer (the server drains up to 16 MiB), so the client sees the 507.
    let Some(disk) = SmallDisk::mount(24) else {
        return;
    };
    let reserve = 12 * 1024 * 1024;
    let (server, api) = serve_on(
        &disk,
        &[("HERALD_BLOBS__MIN_FREE_BYTES", &reserve.to_string())],
    )
    .await;
    let document = expect_json(api.get("/openapi.json").await, 200).await;
    let documented = &document["paths"]["/v1/blobs"]["post"]["responses"]["507"];
    assert!(documented.is_object(), "POST /v1/blobs documents no 507");
    let free_before = disk.free();
    let too_big = free_before - reserve + 1024 * 1024;
    assert!(too_big < 15 * 1024 * 1024, "{too_big}");

    // Announced: refused before anything is written.
    let response = api
        .client
        .post(api.url("/v1/blobs"))
        .header("content-type", "application/octet-stream")
        .body(vec![7_u8; too_big as usize])
        .send()
        .await
        .unwrap();
    expect_problem(response, 507, "insufficient_storage").await;

    // Streamed without a length: refused as the free space runs low.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..too_big / (256 * 1024) + 1)
        .map(|_| Ok(vec![9_u8; 256 * 1024]))
        .collect();
    let response = api
        .client
        .post(api.url("/v1/blobs"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    expect_problem(response, 507, "insufficient_storage").await;

    // Nothing was kept (an aborted part still being written is removed
    // once it finishes), and an upload that fits is stored.
    let tmp = disk.path().join("data/blobs/tmp");
    let blobs = disk.path().join("data/blobs/sha256");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let leftovers = std::fs::read_dir(&tmp).map_or(0, Iterator::count)
            + std::fs::read_dir(&blobs).map_or(0, Iterator::count);
        let free = disk.free();
        if leftovers == 0 && free + 1024 * 1024 >= free_before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{leftovers} files left in {} or {}, {free} bytes free of {free_before}",
            tmp.display(),
            blobs.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = api
        .client
        .post(api.url("/v1/blobs"))
        .header("content-type", "application/octet-stream")
        .body(vec![1_u8; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    let blob: Value = expect_json(response, 201).await;
    assert_eq!(blob["size"], 2 * 1024 * 1024);
    server.signal("TERM").await;
    let (status, stderr, _dir) = server.wait().await;
    assert!(status.success(), "{stderr}");
}
