//! The `herald` client subcommands, run as the real binary against a live
//! server.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::process::Output;

use serde_json::Value;

use crate::support::{TestServer, herald, run_to_exit, single_error};

pub(crate) async fn cli(server: &TestServer, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = herald(dir.path());
    command.args(args).args(["--server", &server.url("")]);
    run_to_exit(command).await
}

/// The stdout of a command that must have succeeded (else its stderr).
pub(crate) fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn given_a_live_server_when_driven_by_the_cli_should_create_publish_consume_and_report() {
    let (server, _api) = TestServer::start_ready().await;
    let created = stdout(
        &cli(
            &server,
            &[
                "topic",
                "create",
                "orders",
                "--partitions",
                "2",
                "--output",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(
        serde_json::from_str::<Value>(&created).unwrap()["name"],
        "orders"
    );
    let listed = stdout(&cli(&server, &["topic", "list"]).await);
    assert!(
        listed.lines().next().unwrap().starts_with("NAME"),
        "{listed}"
    );
    assert!(listed.contains("orders"), "{listed}");

    let one = stdout(
        &cli(
            &server,
            &[
                "publish",
                "orders",
                "--type",
                "order.created",
                "--key",
                "o-1",
                "--data",
                "{\"total\":3}",
            ],
        )
        .await,
    );
    assert!(
        one.contains("false"),
        "a fresh event is not a duplicate: {one}"
    );

    // Bulk from NDJSON: 1,000 events, then the same file again (all duplicates).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.ndjson");
    let lines: Vec<String> = (0..1000)
        .map(|index| {
            format!("{{\"specversion\":\"1.0\",\"id\":\"bulk-{index}\",\"source\":\"/cli\",\"type\":\"order.paid\",\"key\":\"k{}\"}}", index % 7)
        })
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let path = file.to_str().unwrap();
    let bulk = stdout(
        &cli(
            &server,
            &[
                "publish", "orders", "--file", path, "--batch", "300", "--output", "json",
            ],
        )
        .await,
    );
    let summary: Value = serde_json::from_str(&bulk).unwrap();
    assert_eq!(summary["published"], 1000);
    assert_eq!(summary["duplicates"], 0);
    let again: Value = serde_json::from_str(&stdout(
        &cli(
            &server,
            &["publish", "orders", "--file", path, "--output", "json"],
        )
        .await,
    ))
    .unwrap();
    assert_eq!(again["duplicates"], 1000);

    let described = stdout(
        &cli(
            &server,
            &["topic", "describe", "orders", "--output", "json"],
        )
        .await,
    );
    let total: u64 = serde_json::from_str::<Value>(&described).unwrap()["partition_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|partition| partition["end_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1001);

    let tailed = stdout(
        &cli(
            &server,
            &[
                "tail",
                "orders",
                "--from",
                "earliest",
                "--type",
                "order.created",
                "--count",
                "1",
                "--output",
                "json",
            ],
        )
        .await,
    );
    let event: Value = serde_json::from_str(tailed.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["key"], "o-1");
    let three = stdout(
        &cli(
            &server,
            &["tail", "orders", "--from", "earliest", "--count", "3"],
        )
        .await,
    );
    assert_eq!(three.lines().count(), 4, "a header and three rows: {three}");

    let consumed = stdout(
        &cli(
            &server,
            &[
                "consume",
                "orders",
                "billing",
                "--count",
                "1001",
                "--max",
                "500",
                "--idle-exit-ms",
                "3000",
                "--output",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(consumed.lines().count(), 1001);
    let status: Value = serde_json::from_str(&stdout(
        &cli(
            &server,
            &["group", "status", "orders", "billing", "--output", "json"],
        )
        .await,
    ))
    .unwrap();
    let lag: u64 = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|partition| partition["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(lag, 0, "every consumed event was acked");
    let reset = cli(
        &server,
        &["group", "reset", "orders", "billing", "--to", "earliest"],
    )
    .await;
    assert!(stdout(&reset).contains("reset"));
}

#[tokio::test]
async fn given_failures_when_running_the_cli_should_print_one_line_and_exit_with_its_code() {
    let (server, _api) = TestServer::start_ready().await;
    let missing = cli(&server, &["topic", "describe", "nope"]).await;
    let line = single_error(&missing, 1);
    assert!(line.contains("topic_not_found"), "{line}");
    let bad_position = cli(&server, &["group", "reset", "t", "g", "--to", "yesterday"]).await;
    assert!(single_error(&bad_position, 2).contains("earliest"));
    let dir = tempfile::tempdir().unwrap();
    let mut unreachable = herald(dir.path());
    unreachable.args(["topic", "list", "--server", "http://127.0.0.1:9"]);
    let output = run_to_exit(unreachable).await;
    assert!(single_error(&output, 3).contains("cannot reach"));
    let absent = cli(
        &server,
        &["publish", "t", "--file", "/nonexistent/events.ndjson"],
    )
    .await;
    single_error(&absent, 4);
}

#[tokio::test]
async fn given_a_live_server_when_jobs_and_blobs_are_driven_by_the_cli_should_round_trip() {
    let (server, _api) = TestServer::start_ready().await;
    let input = server.dir.path().join("input.bin");
    let bytes: Vec<u8> = (0..300_000_u32).map(|index| (index % 241) as u8).collect();
    std::fs::write(&input, &bytes).unwrap();

    let put = cli(
        &server,
        &["--output", "json", "blob", "put", input.to_str().unwrap()],
    )
    .await;
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let stored: Value = serde_json::from_str(&stdout(&put)).unwrap();
    assert_eq!(stored["size"], 300_000);
    let id = stored["id"].as_str().unwrap();

    let copy = server.dir.path().join("copy.bin");
    let get = cli(&server, &["blob", "get", id, "-o", copy.to_str().unwrap()]).await;
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(std::fs::read(&copy).unwrap(), bytes);

    // No worker answers: the job ends partial at its deadline, listing both parts.
    let submitted = cli(
        &server,
        &[
            "--output",
            "json",
            "job",
            "submit",
            "cli-queue",
            "--blob",
            id,
            "--part",
            "a",
            "--part",
            "b={\"n\": 2}",
            "--deadline-ms",
            "300",
            "--wait",
        ],
    )
    .await;
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let job: Value = serde_json::from_str(&stdout(&submitted)).unwrap();
    assert_eq!(job["status"], "partial");
    assert_eq!(job["missing"], serde_json::json!(["a", "b"]));
    let job_id = job["job_id"].as_str().unwrap();

    let status = cli(&server, &["job", "status", job_id]).await;
    assert!(status.status.success());
    assert!(stdout(&status).contains("partial"), "{}", stdout(&status));
    let watched = cli(&server, &["job", "watch", job_id]).await;
    assert!(watched.status.success());
    assert!(stdout(&watched).contains("partial"), "{}", stdout(&watched));

    let unknown = cli(&server, &["job", "status", "no-such-job"]).await;
    assert!(single_error(&unknown, 1).contains("job_not_found"));
}
