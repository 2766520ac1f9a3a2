//! The `herald` client subcommands, run as the real binary against a live
//! server.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::process::Output;

use serde_json::Value;

use tokio::io::AsyncBufReadExt as _;

use crate::support::{STARTUP_TIMEOUT, TestServer, herald, run_to_exit, serve_at, single_error};

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

/// Text of three, four and two bytes a character, so that network chunks
/// split some of them.
const WIDE: &str = "日本語 😀 héllo";

fn wide_event(id: &str, key: &str, partition: u32) -> Value {
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/cli", "type": "wide",
        "key": key, "partition": partition,
        // Long enough to span several reads of the SSE body.
        "data": format!("{id} {}", WIDE.repeat(800)),
    })
}

/// The ids of the JSON events `herald tail --output json` printed.
fn tailed_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            let data = event["data"].as_str().unwrap();
            assert!(
                !data.contains('\u{fffd}') && data.ends_with(WIDE),
                "multi-byte text arrived whole: {data:.80}"
            );
            event["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn given_multibyte_events_when_tailed_should_print_them_intact() {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(serde_json::json!({"name": "wide", "partitions": 1}))
        .await;
    let events: Vec<Value> = (0..20)
        .map(|index| wide_event(&format!("w{index}"), "k", 0))
        .collect();
    api.publish("wide", Value::Array(events)).await;
    let printed = stdout(
        &cli(
            &server,
            &[
                "tail", "wide", "--from", "earliest", "--count", "20", "--output", "json",
            ],
        )
        .await,
    );
    let expected: Vec<String> = (0..20).map(|index| format!("w{index}")).collect();
    assert_eq!(tailed_ids(&printed), expected);
}

#[tokio::test]
async fn given_a_tail_when_the_server_restarts_should_resume_and_print_each_event_once() {
    let (server, api) = TestServer::start_ready().await;
    let addr = server.addr;
    api.create_topic(serde_json::json!({"name": "restarts", "partitions": 2}))
        .await;
    let before: Vec<Value> = (0..4)
        .map(|index| wide_event(&format!("before-{index}"), "k", index % 2))
        .collect();
    api.publish("restarts", Value::Array(before)).await;

    let dir = tempfile::tempdir().unwrap();
    let mut tail = herald(dir.path());
    tail.args([
        "tail",
        "restarts",
        "--from",
        "earliest",
        "--count",
        "8",
        "--output",
        "json",
        "--retries",
        "100",
        "--retry-max-ms",
        "200",
        "--server",
        &server.url(""),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = tail.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    for _ in 0..4 {
        let line = tokio::time::timeout(STARTUP_TIMEOUT, lines.next_line())
            .await
            .expect("the events before the restart are printed")
            .unwrap()
            .expect("tail still running");
        printed.push_str(&line);
        printed.push('\n');
    }

    server.signal("TERM").await;
    let (status, _stderr, dir) = server.wait().await;
    assert!(status.success(), "graceful stop: {status}");
    let command = serve_at(dir.path(), &dir.path().join("data"), &addr.to_string());
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let after: Vec<Value> = (0..4)
        .map(|index| wide_event(&format!("after-{index}"), "k", index % 2))
        .collect();
    api.publish("restarts", Value::Array(after)).await;

    while let Some(line) = tokio::time::timeout(STARTUP_TIMEOUT, lines.next_line())
        .await
        .expect("tail prints the events after the restart and exits")
        .unwrap()
    {
        printed.push_str(&line);
        printed.push('\n');
    }
    let status = child.wait().await.unwrap();
    assert!(status.success(), "tail exits 0 after --count: {status}");
    let mut ids = tailed_ids(&printed);
    ids.sort();
    let mut expected: Vec<String> = (0..4)
        .flat_map(|index| [format!("before-{index}"), format!("after-{index}")])
        .collect();
    expected.sort();
    assert_eq!(ids, expected, "each event exactly once");
}

#[tokio::test]
async fn given_no_server_when_tail_retries_should_give_up_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let mut tail = herald(dir.path());
    tail.args([
        "tail",
        "t",
        "--from",
        "earliest",
        "--retries",
        "2",
        "--retry-max-ms",
        "50",
        "--server",
        "http://127.0.0.1:9",
    ]);
    let output = run_to_exit(tail).await;
    assert!(single_error(&output, 3).contains("gave up after 2 retries"));
}

#[tokio::test]
async fn given_keyed_partitioned_events_when_tailed_with_positions_should_print_what_was_asked() {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(serde_json::json!({"name": "kc", "partitions": 2}))
        .await;
    let event = |id: &str, key: &str, partition: u32| {
        serde_json::json!({
            "specversion": "1.0", "id": id, "source": "/cli", "type": "t",
            "key": key, "partition": partition, "data": {"n": id},
        })
    };
    api.publish(
        "kc",
        serde_json::json!([
            event("a", "ka", 0),
            event("b", "kb", 1),
            event("c", "kc", 1),
            event("d", "kd", 1)
        ]),
    )
    .await;
    let template = ["--format", "%t %p %o %k %s\\n"];
    let all = stdout(
        &cli(
            &server,
            &[
                &["tail", "kc", "--from", "earliest", "--count", "4"],
                &template[..],
            ]
            .concat(),
        )
        .await,
    );
    let mut lines: Vec<&str> = all.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "kc 0 0 ka {\"n\":\"a\"}",
            "kc 1 0 kb {\"n\":\"b\"}",
            "kc 1 1 kc {\"n\":\"c\"}",
            "kc 1 2 kd {\"n\":\"d\"}"
        ]
    );
    let partition = stdout(
        &cli(
            &server,
            &[
                &[
                    "tail",
                    "kc",
                    "--partition",
                    "1",
                    "--offset",
                    "1",
                    "--count",
                    "2",
                ],
                &template[..],
            ]
            .concat(),
        )
        .await,
    );
    assert_eq!(
        partition,
        "kc 1 1 kc {\"n\":\"c\"}\nkc 1 2 kd {\"n\":\"d\"}\n"
    );
    let last = stdout(
        &cli(
            &server,
            &[
                &["tail", "kc", "-p", "1", "--offset", "-1", "-c", "1"],
                &template[..],
            ]
            .concat(),
        )
        .await,
    );
    assert_eq!(last, "kc 1 2 kd {\"n\":\"d\"}\n");

    // --from-time: only what was appended at or after the time.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    api.publish(
        "kc",
        serde_json::json!([event("e", "ke", 0), event("f", "kf", 1)]),
    )
    .await;
    // The two partitions append on their own, so either may come first: the
    // earlier of the two times selects both.
    let mut appended = Vec::new();
    for (partition, offset) in [(0, 1), (1, 3)] {
        let read = api
            .get(&format!(
                "/v1/topics/kc/events?partition={partition}&from_offset={offset}"
            ))
            .await;
        let body = crate::support::expect_json(read, 200).await;
        appended.push(body["events"][0]["appendedat"].as_str().unwrap().to_owned());
    }
    let appended = appended.into_iter().min().unwrap();
    let since = stdout(
        &cli(
            &server,
            &[
                &["tail", "kc", "--from-time", &appended, "--count", "2"],
                &template[..],
            ]
            .concat(),
        )
        .await,
    );
    let mut since: Vec<&str> = since.lines().collect();
    since.sort_unstable();
    assert_eq!(
        since,
        ["kc 0 1 ke {\"n\":\"e\"}", "kc 1 3 kf {\"n\":\"f\"}"]
    );

    // The table shows keys and payloads.
    let table = stdout(
        &cli(
            &server,
            &["tail", "kc", "--from", "earliest", "-c", "1", "-p", "0"],
        )
        .await,
    );
    assert!(table.starts_with("PARTITION  OFFSET  KEY"), "{table}");
    assert!(
        table.contains("ka") && table.contains("{\"n\":\"a\"}"),
        "{table}"
    );
}

#[tokio::test]
async fn given_a_group_of_another_mode_when_consumed_with_mode_should_fail_clearly() {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(serde_json::json!({"name": "modes"})).await;
    api.put_group("modes", "billing", serde_json::json!({"mode": "stream"}))
        .await;
    let output = cli(
        &server,
        &[
            "consume",
            "modes",
            "billing",
            "--mode",
            "queue",
            "--idle-exit-ms",
            "100",
        ],
    )
    .await;
    let line = single_error(&output, 1);
    assert!(
        line.contains("group_conflict") && line.contains("stream mode"),
        "{line}"
    );
    // Without --mode, or with the group's own, it consumes.
    let same = cli(
        &server,
        &[
            "consume",
            "modes",
            "billing",
            "--mode",
            "stream",
            "--idle-exit-ms",
            "100",
        ],
    )
    .await;
    stdout(&same);
}

#[tokio::test]
async fn given_a_server_that_is_not_herald_when_called_should_exit_5_not_3() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
                let _ = tokio::io::AsyncWriteExt::write_all(
                    &mut socket,
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 6\r\nconnection: close\r\n\r\n<html>",
                )
                .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["topic", "list"][..],
        &["tail", "t", "--from", "earliest"][..],
    ] {
        let mut command = herald(dir.path());
        command
            .args(args)
            .args(["--server", &format!("http://{addr}")]);
        let output = run_to_exit(command).await;
        let line = single_error(&output, 5);
        assert!(line.contains("not"), "{line}");
    }
}

#[tokio::test]
async fn given_contexts_when_selected_by_flag_env_or_use_should_reach_their_server() {
    let (server, _api) = TestServer::start_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let mut command = herald(dir.path());
        command.args(args).envs(env);
        run_to_exit(command)
    };
    let args = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let url = server.url("");
    stdout(&run(args(&format!("context add local --server {url}")), vec![]).await);
    stdout(
        &run(
            args("context add dead --server http://127.0.0.1:9 --token hrd_secret --select"),
            vec![],
        )
        .await,
    );
    let listed = stdout(&run(args("context list"), vec![]).await);
    assert!(
        listed.contains("dead *") && listed.contains(&url),
        "{listed}"
    );
    assert!(
        !listed.contains("hrd_secret"),
        "never print a token: {listed}"
    );
    let config = dir.path().join(".config/herald/config.toml");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the file may hold tokens");
    }

    // The selected context is unreachable; flag, env and --server win over it.
    single_error(&run(args("topic list"), vec![]).await, 3);
    stdout(&run(args("--context local topic list"), vec![]).await);
    stdout(&run(args("topic list"), vec![("HERALD_CONTEXT", "local".into())]).await);
    stdout(&run(args("topic list"), vec![("HERALD_SERVER", url.clone())]).await);
    single_error(
        &run(
            args("--context dead topic list"),
            vec![("HERALD_CONTEXT", "local".into())],
        )
        .await,
        3,
    );
    let unknown = run(args("--context nope topic list"), vec![]).await;
    assert!(single_error(&unknown, 2).contains("nope"));

    stdout(&run(args("context use local"), vec![]).await);
    stdout(&run(args("topic list"), vec![]).await);
    stdout(&run(args("context rm dead"), vec![]).await);
    let listed = stdout(&run(args("--output json context list"), vec![]).await);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["contexts"].as_array().unwrap().len(), 1);
    assert_eq!(listed["contexts"][0]["name"], "local");
}

#[tokio::test]
async fn given_groups_on_a_topic_when_listed_should_show_each_with_mode_and_lag() {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(serde_json::json!({"name": "listed", "partitions": 2}))
        .await;
    api.create_topic(serde_json::json!({"name": "other"})).await;
    api.put_group("listed", "billing", serde_json::json!({"mode": "stream"}))
        .await;
    api.put_group("listed", "audit", serde_json::json!({"mode": "queue"}))
        .await;
    api.put_group("other", "elsewhere", serde_json::json!({"mode": "queue"}))
        .await;
    let events: Vec<Value> = (0..3)
        .map(|index| crate::support::event(&format!("l{index}")))
        .collect();
    api.publish("listed", Value::Array(events)).await;

    let listed: Value = serde_json::from_str(&stdout(
        &cli(&server, &["group", "list", "listed", "--output", "json"]).await,
    ))
    .unwrap();
    let groups = listed["groups"].as_array().unwrap();
    let summary: Vec<(&str, &str, u64)> = groups
        .iter()
        .map(|group| {
            (
                group["name"].as_str().unwrap(),
                group["mode"].as_str().unwrap(),
                group["lag"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [("audit", "queue", 3), ("billing", "stream", 3)]);
    let table = stdout(&cli(&server, &["group", "list", "listed"]).await);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("LAG") && !table.contains("elsewhere"),
        "{table}"
    );
    let status = stdout(&cli(&server, &["group", "status", "listed", "billing"]).await);
    assert!(status.contains("lag 3"), "{status}");
    let missing = cli(&server, &["group", "list", "nope"]).await;
    assert!(single_error(&missing, 1).contains("topic_not_found"));
}

#[tokio::test]
async fn given_a_job_watch_when_the_server_restarts_should_follow_the_job_to_its_end() {
    let (server, api) = TestServer::start_ready().await;
    let addr = server.addr;
    // No worker: the job ends partial at its deadline, after the restart.
    let submitted = crate::support::expect_json(
        api.post(
            "/v1/queues/restarting/jobs",
            &serde_json::json!({"data": null, "parts": [{"key": "a"}], "deadline_ms": 4000}),
        )
        .await,
        202,
    )
    .await;
    let job_id = submitted["job_id"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut watch = herald(dir.path());
    watch
        .args(["job", "watch", &job_id, "--output", "json", "--server"])
        .arg(server.url(""))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = watch.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(STARTUP_TIMEOUT, lines.next_line())
        .await
        .expect("the job's current state is printed")
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap()["status"],
        "pending"
    );

    server.signal("TERM").await;
    let (status, _stderr, dir) = server.wait().await;
    assert!(status.success(), "graceful stop: {status}");
    let command = serve_at(dir.path(), &dir.path().join("data"), &addr.to_string());
    let (_server, _api) = TestServer::ready(TestServer::spawn(dir, command).await).await;

    let mut last = first;
    while let Some(line) = tokio::time::timeout(STARTUP_TIMEOUT, lines.next_line())
        .await
        .expect("job watch follows the job after the restart and exits")
        .unwrap()
    {
        last = line;
    }
    let status = child.wait().await.unwrap();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr)
            .await
            .unwrap();
    }
    assert!(
        status.success(),
        "job watch exits 0 once the job ended: {status}\n{stderr}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&last).unwrap()["status"],
        "partial"
    );
}
