//! Startup failures and graceful shutdown.

use tokio::io::AsyncWriteExt;

use crate::support::{
    TestServer, expect_problem, run_to_exit, serve, serve_with_data_dir, single_error,
    wait_for_status,
};

#[tokio::test]
async fn given_running_server_when_sigterm_should_exit_zero_and_release_the_data_dir() {
    let server = TestServer::start().await;
    let response = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);

    server.signal("TERM").await;
    let (status, stderr, dir) = server.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("Stopped."), "stderr:\n{stderr}");

    // The lock went with the process: a new server can take the directory.
    let command = serve(dir.path());
    let restarted = TestServer::spawn(dir, command).await;
    restarted.signal("TERM").await;
    let (status, stderr, _dir) = restarted.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
}

#[tokio::test]
async fn given_running_server_when_sigint_should_exit_zero() {
    let server = TestServer::start().await;
    server.signal("INT").await;
    let (status, stderr, _dir) = server.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
}

#[tokio::test]
async fn given_locked_data_dir_when_second_server_starts_should_fail_naming_dir() {
    let first = TestServer::start().await;
    let data_dir = first.data_dir();

    let second_cwd = tempfile::tempdir().unwrap();
    let output = run_to_exit(serve_with_data_dir(second_cwd.path(), &data_dir)).await;

    let error = single_error(&output, 1);
    assert!(error.contains(&data_dir.display().to_string()), "{error}");
    assert!(
        error.contains("locked by another herald process"),
        "{error}"
    );

    first.signal("TERM").await;
    let (status, _, _) = first.wait().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn given_data_dir_under_regular_file_when_serve_should_fail_with_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let data_dir = file.join("data");

    let output = run_to_exit(serve_with_data_dir(dir.path(), &data_dir)).await;

    let error = single_error(&output, 1);
    assert!(
        error.starts_with(&format!(
            "error: cannot create data directory {}: ",
            data_dir.display()
        )),
        "{error}"
    );
    assert!(error.contains("Not a directory"), "{error}");
}

#[tokio::test]
async fn given_request_in_flight_when_sigterm_should_drain_at_most_shutdown_timeout_then_exit_zero()
{
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_SHUTDOWN_TIMEOUT_MS", "200");
    let server = TestServer::spawn(dir, command).await;
    // A request whose head never completes stays in flight until dropped.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n")
        .await
        .unwrap();
    let client = reqwest::Client::new();
    wait_for_status(&client, &server.url("/readyz"), 200).await;

    server.signal("TERM").await;
    let (status, stderr, _dir) = server.wait().await;

    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(
        stderr.contains("did not finish in time"),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("Closed storage."), "stderr:\n{stderr}");
}

#[tokio::test]
async fn given_long_poll_fetch_waiting_when_sigterm_should_answer_503_and_exit_promptly() {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(serde_json::json!({"name": "orders"}))
        .await;
    api.put_group("orders", "audit", serde_json::json!({"mode": "stream"}))
        .await;
    let poller = api.clone();
    let fetch = tokio::spawn(async move {
        poller
            .post(
                "/v1/topics/orders/groups/audit/fetch",
                &serde_json::json!({"member": "m1", "max": 10, "wait_ms": 120_000}),
            )
            .await
    });
    // The fetch has joined the group once the member shows in the status.
    loop {
        let status = api.group_status("orders", "audit").await;
        if status["members"]
            .as_array()
            .is_some_and(|members| !members.is_empty())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    server.signal("TERM").await;

    let response = fetch.await.unwrap();
    expect_problem(response, 503, "shutting_down").await;
    // Within EXIT_TIMEOUT (5 s), far below the fetch's 120 s wait.
    let (status, stderr, _dir) = server.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
}

/// Transparent huge pages are off for the server (a 2 MiB page zeroed on
/// first touch stalled one request for 4–7 ms each time the heap grew).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn given_running_server_should_have_transparent_huge_pages_off() {
    let server = TestServer::start().await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "/proc/<pid>/status:\n{status}");
}

/// The exit codes `herald serve` can end with, as README lists them.
const README: &str = include_str!("../../../../README.md");

#[test]
fn given_readme_exit_codes_should_list_every_code_serve_exits_with() {
    let list = README
        .split("Exit codes: ")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("README has an `Exit codes: ` paragraph");
    for code in ["0 ", "1 ", "2 ", "130 "] {
        assert!(
            list.contains(code),
            "README's exit codes lack {code}: {list}"
        );
    }
}

#[tokio::test]
async fn given_a_draining_server_when_a_second_signal_arrives_should_exit_130_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_SHUTDOWN_TIMEOUT_MS", "600000");
    let server = TestServer::spawn(dir, command).await;
    let client = reqwest::Client::new();
    wait_for_status(&client, &server.url("/readyz"), 200).await;
    // A request whose head never completes keeps the drain waiting.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n")
        .await
        .unwrap();

    server.signal("TERM").await;
    // The first signal was taken once the listener stops accepting.
    while tokio::net::TcpStream::connect(server.addr).await.is_ok() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.signal("TERM").await;
    let (status, stderr, _dir) = server.wait().await;

    assert_eq!(status.code(), Some(130), "stderr:\n{stderr}");
    assert!(stderr.contains("second signal"), "stderr:\n{stderr}");
    drop(stalled);
}
