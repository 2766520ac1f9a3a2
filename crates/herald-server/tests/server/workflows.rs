//! Workflow definitions over HTTP: deployed from YAML or JSON, refused with
//! the path of what is wrong, fixed once deployed, listed and shown by
//! version.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use serde_json::{Value, json};

use crate::support::{Api, TestServer};

fn yaml(version: &str, greeting: &str) -> String {
    format!(
        "document: {{ dsl: '1.0.0', namespace: support, name: question, version: '{version}' }}\n\
         do:\n  - greet: {{ set: {{ greeting: '{greeting}' }} }}\n  - shout: {{ set: '${{ {{ loud: .greeting }} }}' }}\n"
    )
}

async fn deploy(api: &Api, content_type: &str, body: &str) -> reqwest::Response {
    api.post_raw(
        "/v1/workflows",
        Some(content_type),
        &[],
        body.as_bytes().to_vec(),
    )
    .await
}

#[tokio::test]
async fn given_definitions_should_deploy_once_per_version_and_show_them() {
    let (_server, api) = TestServer::start_ready().await;
    let first = deploy(&api, "application/yaml", &yaml("1.0.0", "hello")).await;
    assert_eq!(first.status(), 201);
    assert_eq!(
        first.headers()["location"],
        "/v1/workflows/support/question"
    );
    assert_eq!(
        first.json::<Value>().await.unwrap(),
        json!({"namespace": "support", "name": "question", "version": "1.0.0"})
    );
    // The same version again, changed: refused, the first kept.
    let again = deploy(&api, "application/yaml", &yaml("1.0.0", "changed")).await;
    assert_eq!(again.status(), 409);
    assert_eq!(
        again.json::<Value>().await.unwrap()["code"],
        "workflow_version_exists"
    );
    // JSON works too, and versions order like semver.
    let as_json = json!({
        "document": {"dsl": "1.0.0", "namespace": "support", "name": "question", "version": "1.10.0"},
        "do": [{"greet": {"set": {"greeting": "newest"}}}]
    });
    assert_eq!(
        deploy(&api, "application/json", &as_json.to_string())
            .await
            .status(),
        201
    );
    assert_eq!(
        deploy(&api, "text/yaml", &yaml("1.9.0", "middle"))
            .await
            .status(),
        201
    );

    let listed: Value = api.get("/v1/workflows").await.json().await.unwrap();
    assert_eq!(
        listed,
        json!({"workflows": [{"namespace": "support", "name": "question",
                              "versions": ["1.0.0", "1.9.0", "1.10.0"], "latest": "1.10.0"}]})
    );
    let latest: Value = api
        .get("/v1/workflows/support/question")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(latest["definition"]["version"], "1.10.0");
    assert_eq!(
        latest["definition"]["document"]["do"][0]["greet"]["set"]["greeting"],
        "newest"
    );
    assert!(
        latest["definition"]["deployed_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let first: Value = api
        .get("/v1/workflows/support/question?version=1.0.0")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        first["definition"]["document"]["do"][0]["greet"]["set"]["greeting"],
        "hello"
    );
    for path in [
        "/v1/workflows/support/nothing",
        "/v1/workflows/support/question?version=7",
    ] {
        let missing = api.get(path).await;
        assert_eq!(missing.status(), 404, "{path}");
        assert_eq!(
            missing.json::<Value>().await.unwrap()["code"],
            "workflow_not_found"
        );
    }
}

#[tokio::test]
async fn given_broken_definitions_should_be_refused_naming_the_path_and_store_nothing() {
    let (_server, api) = TestServer::start_ready().await;
    for (body, path, needle) in [
        (yaml("1", "x").replace("set: {", "sett: {"), "do[0].greet", "needs one of"),
        (yaml("1", "x").replace(".greeting", ".greeting |"), "do[1].shout.set", "jq syntax"),
        (
            "document: { dsl: '1.0.0', namespace: n, name: w, version: '1' }\ndo:\n  - build: { run: { container: { image: alpine } } }\n".to_owned(),
            "do[0].build.run.container",
            "not supported",
        ),
        ("document: { dsl: '0.8', namespace: n, name: w, version: '1' }\ndo: []\n".to_owned(), "document.dsl", "1.0.x"),
        ("do: [ : ]".to_owned(), "", "YAML"),
    ] {
        let refused = deploy(&api, "application/yaml", &body).await;
        assert_eq!(refused.status(), 400, "{body}");
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_workflow", "{problem}");
        assert_eq!(problem["path"], path, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(needle), "{problem}");
    }
    let wrong_type = deploy(&api, "text/plain", &yaml("1", "x")).await;
    assert_eq!(wrong_type.status(), 415);
    let listed: Value = api.get("/v1/workflows").await.json().await.unwrap();
    assert_eq!(listed, json!({"workflows": []}));
}

async fn wait_status(api: &Api, id: &str, wanted: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let view = crate::support::expect_json(
            api.get(&format!("/v1/workflow-instances/{id}")).await,
            200,
        )
        .await;
        if view["status"] == wanted {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {wanted}: {view}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An instance started over HTTP waits on a durable timer; the server is
/// killed (`kill -9`) during the wait; after the restart the timer fires at
/// its recorded time and the instance completes, its steps inspectable.
#[tokio::test]
async fn given_an_instance_waiting_when_the_server_is_killed_should_complete_after_restart() {
    let (server, api) = TestServer::start_ready().await;
    let definition = "document: { dsl: '1.0.0', namespace: ops, name: nap, version: '1' }\n\
         do:\n  - first: { set: { step: 1, who: '${ .who }' } }\n  - nap: { wait: { milliseconds: 1500 } }\n  - last: { set: { step: 2, who: '${ .who }' } }\n";
    assert_eq!(
        deploy(&api, "application/yaml", definition).await.status(),
        201
    );
    let started = api
        .post(
            "/v1/workflows/ops/nap/instances",
            &json!({"input": {"who": "ada"}}),
        )
        .await;
    assert_eq!(started.status(), 201);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let started = started.json::<Value>().await.unwrap();
    let id = started["instance_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/workflow-instances/{id}"));
    assert_eq!(started["version"], "1");
    wait_status(&api, &id, "waiting").await;

    server.signal("KILL").await;
    let (status, stderr, dir) = server.wait().await;
    assert_eq!(status.code(), None, "killed; stderr:\n{stderr}");
    let command = crate::support::serve(dir.path());
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let ended = crate::support::expect_json(
        api.get(&format!("/v1/workflow-instances/{id}?wait_ms=30000"))
            .await,
        200,
    )
    .await;
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["output"], json!({"step": 2, "who": "ada"}));
    let history = crate::support::expect_json(
        api.get(&format!("/v1/workflow-instances/{id}/history"))
            .await,
        200,
    )
    .await;
    let steps = history["steps"].as_array().unwrap();
    let tasks: Vec<&str> = steps
        .iter()
        .map(|step| step["task"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["first", "nap", "last"]);
    assert!(steps.iter().all(|step| step["status"] == "completed"));
    let nap = &steps[1];
    let (from, to) = (
        herald_types::parse_rfc3339_ms(nap["started_at"].as_str().unwrap()).unwrap(),
        herald_types::parse_rfc3339_ms(nap["ended_at"].as_str().unwrap()).unwrap(),
    );
    assert!(to - from >= 1500, "the timer fired after {} ms", to - from);
    let listed = crate::support::expect_json(
        api.get("/v1/workflow-instances?namespace=ops&status=completed")
            .await,
        200,
    )
    .await;
    assert_eq!(listed["instances"][0]["instance_id"], json!(id));
}

#[tokio::test]
async fn given_bad_instance_requests_should_answer_problems() {
    let (_server, api) = TestServer::start_ready().await;
    let definition = "document: { dsl: '1.0.0', namespace: ops, name: hold, version: '1' }\n\
         do:\n  - hold: { wait: PT1H }\n";
    deploy(&api, "application/yaml", definition).await;
    crate::support::expect_problem(
        api.post("/v1/workflows/ops/missing/instances", &json!({}))
            .await,
        404,
        "workflow_not_found",
    )
    .await;
    crate::support::expect_problem(
        api.post(
            "/v1/workflows/ops/hold/instances",
            &json!({"input": {}, "extra": 1}),
        )
        .await,
        400,
        "invalid_argument",
    )
    .await;
    crate::support::expect_problem(
        api.get("/v1/workflow-instances/nope").await,
        404,
        "workflow_instance_not_found",
    )
    .await;
    let started = crate::support::expect_json(
        api.post("/v1/workflows/ops/hold/instances", &json!({}))
            .await,
        201,
    )
    .await;
    let id = started["instance_id"].as_str().unwrap();
    wait_status(&api, id, "waiting").await;
    crate::support::expect_problem(
        api.post_raw(
            &format!("/v1/workflow-instances/{id}/resume"),
            None,
            &[],
            Vec::new(),
        )
        .await,
        409,
        "workflow_instance_conflict",
    )
    .await;
    let cancelled = crate::support::expect_json(
        api.post_raw(
            &format!("/v1/workflow-instances/{id}/cancel"),
            None,
            &[],
            Vec::new(),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(cancelled["instance_id"], json!(id));
    wait_status(&api, id, "cancelled").await;
    crate::support::expect_problem(
        api.post_raw(
            &format!("/v1/workflow-instances/{id}/suspend"),
            None,
            &[],
            Vec::new(),
        )
        .await,
        409,
        "workflow_instance_ended",
    )
    .await;
    crate::support::expect_problem(
        api.get("/v1/workflow-instances?limit=0").await,
        400,
        "invalid_argument",
    )
    .await;
}

#[tokio::test]
async fn given_the_cli_should_deploy_start_and_inspect_workflows() {
    let (server, api) = TestServer::start_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greet.yaml");
    std::fs::write(
        &file,
        "document: { dsl: '1.0.0', namespace: cli, name: greet, version: '1' }\n\
         do:\n  - hello: { set: { greeting: '${ \"hello \" + .name }' } }\n",
    )
    .unwrap();
    let deployed = crate::cli::stdout(
        &crate::cli::cli(&server, &["workflow", "deploy", file.to_str().unwrap()]).await,
    );
    assert!(deployed.contains("greet"), "{deployed}");
    let started = crate::cli::stdout(
        &crate::cli::cli(
            &server,
            &[
                "--output",
                "json",
                "workflow",
                "start",
                "cli/greet",
                "--input",
                r#"{"name":"ada"}"#,
                "--wait",
                "30",
            ],
        )
        .await,
    );
    let started: Value = serde_json::from_str(&started).unwrap();
    assert_eq!(started["status"], "completed", "{started}");
    assert_eq!(started["output"], json!({"greeting": "hello ada"}));
    let id = started["instance_id"].as_str().unwrap();
    let history = crate::cli::stdout(&crate::cli::cli(&server, &["workflow", "history", id]).await);
    assert!(
        history.contains("/do/0/hello") && history.contains("completed"),
        "{history}"
    );
    let listed = crate::cli::stdout(
        &crate::cli::cli(
            &server,
            &[
                "workflow",
                "instances",
                "--workflow",
                "cli/greet",
                "--started-after",
                "2020-01-01T00:00:00Z",
            ],
        )
        .await,
    );
    assert!(listed.contains(id), "{listed}");
    let rerun = crate::cli::stdout(
        &crate::cli::cli(&server, &["--output", "json", "workflow", "rerun", id]).await,
    );
    let rerun: Value = serde_json::from_str(&rerun).unwrap();
    assert_ne!(rerun["instance_id"], started["instance_id"]);
    assert_eq!(rerun["input"], json!({"name": "ada"}));
    wait_status(&api, rerun["instance_id"].as_str().unwrap(), "completed").await;
    let bad = crate::cli::cli(&server, &["workflow", "start", "nonamespace"]).await;
    assert_eq!(bad.status.code(), Some(2));
    // Metrics: what ran, by bounded labels.
    let metrics = api.get("/metrics").await.text().await.unwrap();
    for line in [
        "herald_workflow_instances_started_total 2",
        "herald_workflow_instances_ended_total{status=\"completed\"} 2",
        "herald_workflow_tasks_total{kind=\"set\",outcome=\"completed\"} 2",
        "herald_workflow_timers_pending 0",
    ] {
        assert!(
            metrics.lines().any(|got| got == line),
            "{line} in:\n{metrics}"
        );
    }
    crate::support::assert_dashboard_metrics(&metrics, &["herald_workflow_"]);
}

/// The history over SSE: every record in order from the first, ending after
/// the instance's end; `Last-Event-ID` resumes after a record.
#[tokio::test]
async fn given_an_instance_when_its_events_are_streamed_should_show_each_record_and_resume() {
    let (server, api) = TestServer::start_ready().await;
    let definition = "document: { dsl: '1.0.0', namespace: ops, name: steps, version: '1' }\n\
         do:\n  - one: { set: { n: 1 } }\n  - nap: { wait: { milliseconds: 200 } }\n  - two: { set: { n: 2 } }\n";
    deploy(&api, "application/yaml", definition).await;
    let started = crate::support::expect_json(
        api.post("/v1/workflows/ops/steps/instances", &json!({}))
            .await,
        201,
    )
    .await;
    let id = started["instance_id"].as_str().unwrap();
    let path = format!("/v1/workflow-instances/{id}/events");
    let is_end = |frame: &crate::support::SseFrame| {
        frame.event.as_deref() == Some("io.serverlessworkflow.workflow.completed.v1")
    };
    let frames =
        crate::support::sse_frames(api.get(&path).await, |frames| frames.iter().any(is_end)).await;
    assert_eq!(
        frames[0].event.as_deref(),
        Some("io.serverlessworkflow.workflow.started.v1")
    );
    assert_eq!(frames[0].id.as_deref(), Some("0"));
    assert_eq!(frames.last().unwrap().data["output"], json!({"n": 2}));
    let completed: Vec<&str> = frames
        .iter()
        .filter(|frame| frame.event.as_deref() == Some("io.serverlessworkflow.task.completed.v1"))
        .map(|frame| frame.data["name"].as_str().unwrap())
        .collect();
    assert_eq!(completed, ["one", "nap", "two"]);
    let versions: Vec<u64> = frames
        .iter()
        .map(|frame| frame.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "{versions:?}"
    );
    // Resumed after the third record: the rest, the same.
    let resumed = api
        .send_raw(
            reqwest::Method::GET,
            &path,
            None,
            &[("last-event-id", frames[2].id.as_deref().unwrap())],
            Vec::new(),
        )
        .await;
    let rest = crate::support::sse_frames(resumed, |frames| frames.iter().any(is_end)).await;
    assert_eq!(rest.len(), frames.len() - 3);
    assert_eq!(rest[0].id, frames[3].id);
    crate::support::expect_problem(
        api.get("/v1/workflow-instances/nope/events").await,
        404,
        "workflow_instance_not_found",
    )
    .await;
    // The WebSocket sends the same records, from `from` on, and closes
    // after the end.
    let url = server
        .url(&format!("/v1/workflow-instances/{id}/ws?from=3"))
        .replacen("http://", "ws://", 1);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut messages = Vec::new();
    while let Some(message) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        futures::StreamExt::next(&mut socket),
    )
    .await
    .unwrap()
    {
        match message.unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                messages.push(serde_json::from_str::<Value>(&text).unwrap());
            }
            tokio_tungstenite::tungstenite::Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(messages.len(), frames.len() - 3, "{messages:?}");
    for (message, frame) in messages.iter().zip(&frames[3..]) {
        assert_eq!(message["id"].to_string(), frame.id.clone().unwrap());
        assert_eq!(message["event"].as_str(), frame.event.as_deref());
        assert_eq!(message["record"], frame.data);
    }
    // A re-run: a new instance of the same version with the same input.
    let rerun = api
        .post(&format!("/v1/workflow-instances/{id}/rerun"), &json!({}))
        .await;
    let location = rerun.headers()["location"].to_str().unwrap().to_owned();
    let rerun = crate::support::expect_json(rerun, 201).await;
    let second = rerun["instance_id"].as_str().unwrap();
    assert_ne!(second, id);
    assert_eq!(location, format!("/v1/workflow-instances/{second}"));
    assert_eq!(
        (rerun["version"].as_str(), &rerun["input"]),
        (Some("1"), &started["input"])
    );
    let done = wait_status(&api, second, "completed").await;
    assert_eq!(done["output"], json!({"n": 2}));
    // Listed by start time: the re-run started after the first.
    let first_started = started["started_at"].as_str().unwrap();
    let listed = crate::support::expect_json(
        api.get(&format!(
            "/v1/workflow-instances?name=steps&started_before={first_started}"
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(listed["instances"], json!([]));
    let listed = crate::support::expect_json(
        api.get(&format!(
            "/v1/workflow-instances?name=steps&started_after={first_started}"
        ))
        .await,
        200,
    )
    .await;
    assert_eq!(listed["instances"].as_array().unwrap().len(), 2);
    crate::support::expect_problem(
        api.get("/v1/workflow-instances?started_after=yesterday")
            .await,
        400,
        "invalid_argument",
    )
    .await;
}
