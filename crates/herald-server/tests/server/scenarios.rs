//! Scenarios 1 and 3 end to end: `examples/file-processing` (including a
//! worker killed mid-job) and `examples/shard-processing` (including a
//! shard that never answers).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::Read as _;
use std::time::Duration;

use file_processing::WorkerOptions;
use tokio_util::sync::CancellationToken;

use crate::support::{TestServer, expect_json, serve};

/// A text file of known shape: `lines` lines of 7 words each.
fn write_text(path: &std::path::Path, lines: usize) -> Vec<u8> {
    let mut text = String::new();
    for line in 0..lines {
        text.push_str(&format!("line {line} of the quick brown fox\n"));
    }
    std::fs::write(path, &text).unwrap();
    text.into_bytes()
}

fn gunzip(path: &std::path::Path) -> Vec<u8> {
    let mut decoder = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    let mut plain = Vec::new();
    decoder.read_to_end(&mut plain).unwrap();
    plain
}

fn worker(
    server: &str,
    member: &str,
    pause: Option<Duration>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<usize>>,
) {
    let cancel = CancellationToken::new();
    let options = WorkerOptions {
        member: member.to_owned(),
        pause_after_progress: pause,
    };
    let task = tokio::spawn(file_processing::run_worker(
        server.to_owned(),
        options,
        cancel.clone(),
    ));
    (cancel, task)
}

#[tokio::test]
async fn given_file_processing_example_should_compress_count_and_notify_over_sse() {
    let (server, _api) = TestServer::start_ready().await;
    let url = server.url("");
    let input = server.dir.path().join("input.txt");
    let output = server.dir.path().join("output.gz");
    let text = write_text(&input, 20_000);
    let (stop, task) = worker(&url, "w1", None);

    let report = file_processing::run(&url, &input, &output).await.unwrap();
    assert_eq!(report.stats.bytes, text.len() as u64);
    assert_eq!(report.stats.lines, 20_000);
    assert_eq!(report.stats.words, 20_000 * 7);
    assert!(
        report.stats.compressed_bytes < report.stats.bytes / 4,
        "{report:?}"
    );
    assert_eq!(gunzip(&output), text);
    assert_eq!(
        report.notifications.first().map(String::as_str),
        Some("status")
    );
    assert_eq!(
        report.notifications.last().map(String::as_str),
        Some("result")
    );
    assert!(
        report.notifications.iter().any(|kind| kind == "progress"),
        "{report:?}"
    );
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap(), 1);
}

#[tokio::test]
async fn given_file_processing_example_notified_by_webhook_should_get_the_signed_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_WEBHOOKS__ALLOW_TARGETS", r#"["127.0.0.1/32"]"#);
    let (server, _api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let url = server.url("");
    let input = server.dir.path().join("input.txt");
    let output = server.dir.path().join("output.gz");
    let text = write_text(&input, 2_000);
    let (stop, task) = worker(&url, "w1", None);

    let report = file_processing::run_notified_by_webhook(&url, &input, &output)
        .await
        .unwrap();
    assert_eq!(report.stats.bytes, text.len() as u64);
    assert_eq!(report.stats.lines, 2_000);
    assert_eq!(gunzip(&output), text);
    assert_eq!(report.notifications, ["webhook herald.job.succeeded"]);
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap(), 1);
}

#[tokio::test]
async fn given_file_processing_worker_killed_mid_job_should_be_finished_by_another_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_JOBS__ACK_WAIT_MS", "1000");
    let (server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let url = server.url("");
    let input = server.dir.path().join("input.txt");
    let output = server.dir.path().join("output.gz");
    let text = write_text(&input, 5_000);

    // Worker A stalls after reporting progress; it is killed there.
    let (_stop_a, worker_a) = worker(&url, "worker-a", Some(Duration::from_secs(600)));
    let http = reqwest::Client::new();
    let (job_id, blob) = file_processing::submit_file(&http, &url, &input)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job = expect_json(api.get(&format!("/v1/jobs/{job_id}")).await, 200).await;
        if job["progress"]["message"] == "compressing" {
            assert_eq!(job["status"], "running");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker A never started: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker_a.abort();
    assert!(worker_a.await.unwrap_err().is_cancelled());

    // Worker B gets the request once A's lease runs out and finishes it.
    let (stop_b, worker_b) = worker(&url, "worker-b", None);
    let report = file_processing::await_result(&http, &url, &job_id, &blob, &output)
        .await
        .unwrap();
    assert_eq!(report.stats.lines, 5_000);
    assert_eq!(gunzip(&output), text);
    stop_b.cancel();
    assert_eq!(worker_b.await.unwrap().unwrap(), 1);
}

#[tokio::test]
async fn given_shard_processing_with_a_silent_shard_should_end_partial_listing_exactly_it() {
    let (server, _api) = TestServer::start_ready().await;
    let report = shard_processing::run(&server.url(""), 200, 4, Some(2), 2_000)
        .await
        .unwrap();
    assert_eq!(report.status, "partial", "{report:?}");
    assert_eq!(report.missing, ["shard-02"]);
    assert_eq!(report.done, 3);
    let gathered: Vec<&str> = report.gathered.keys().map(String::as_str).collect();
    assert_eq!(gathered, ["shard-00", "shard-01", "shard-03"]);
    for key in ["shard-00", "shard-01", "shard-02", "shard-03"] {
        let seen: Vec<&str> = report.seen[key].iter().map(String::as_str).collect();
        assert_eq!(seen, [key], "worker {key} sees only its own shard");
    }
}

#[tokio::test]
async fn given_shard_processing_with_every_shard_answering_should_gather_all() {
    let (server, _api) = TestServer::start_ready().await;
    let report = shard_processing::run(&server.url(""), 200, 4, None, 30_000)
        .await
        .unwrap();
    assert_eq!(report.status, "succeeded", "{report:?}");
    assert!(report.missing.is_empty());
    let users: u64 = report
        .gathered
        .values()
        .map(|result| result["users_updated"].as_u64().unwrap())
        .sum();
    assert_eq!(users, 200);
    assert_eq!(report.done, 4);
}
