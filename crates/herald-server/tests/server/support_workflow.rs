//! Scenario 5 end to end (`examples/support-workflow`) against the real
//! binary: the happy and unhappy paths, a `kill -9` during the wait with
//! the timer firing after the restart, a `kill -9` between an HTTP call's
//! effect and its record (called once more, with the same idempotency
//! key), and a cancel during the wait running the compensation.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use serde_json::{Value, json};
use support_workflow::{Services, ask, ended, instance_of, outcomes, setup, spawn_agent};
use tokio_util::sync::CancellationToken;

use crate::support::{Api, TestServer, expect_json, serve};

const SETTLE: Duration = Duration::from_secs(60);

/// A server allowed to call the example's local services.
async fn start(dir: tempfile::TempDir) -> (TestServer, Api) {
    let mut command = serve(dir.path());
    command.env("HERALD_WEBHOOKS__ALLOW_TARGETS", r#"["127.0.0.1/32"]"#);
    TestServer::ready(TestServer::spawn(dir, command).await).await
}

/// Kills the server (`kill -9`) and starts it again on its data.
async fn kill_and_restart(server: TestServer) -> (TestServer, Api) {
    server.signal("KILL").await;
    let (status, stderr, dir) = server.wait().await;
    assert_eq!(status.code(), None, "killed; stderr:\n{stderr}");
    start(dir).await
}

async fn status_of(api: &Api, instance_id: &str) -> String {
    let view = expect_json(
        api.get(&format!("/v1/workflow-instances/{instance_id}"))
            .await,
        200,
    )
    .await;
    view["status"].as_str().unwrap().to_owned()
}

async fn until_waiting(api: &Api, instance_id: &str) {
    let deadline = std::time::Instant::now() + SETTLE;
    while status_of(api, instance_id).await != "waiting" {
        assert!(std::time::Instant::now() < deadline, "never waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn given_the_support_workflow_should_answer_escalate_compensate_and_skip() {
    let (server, _api) = start(tempfile::tempdir().unwrap()).await;
    // The agent answers within the timeout unless told not to; on NATS an
    // answer's trip takes more hops (the agents' group runs on its owner,
    // the listen wakes on the stream's stored notice), so it gets a margin
    // for a loaded CI machine.
    let timeout_ms = if std::env::var_os("HERALD_TEST_NATS_URL").is_some() {
        3_000
    } else {
        1_500
    };
    let report = support_workflow::run(&server.url(""), timeout_ms)
        .await
        .unwrap();
    let instance = |question: &str| &report.instances[question];
    let outcome = |question: &str| report.outcomes.get(question).cloned().unwrap_or_default();

    assert_eq!(
        instance("q-bill")["status"],
        "completed",
        "{:?}",
        instance("q-bill")
    );
    assert_eq!(
        instance("q-bill")["output"],
        json!({"questionId": "q-bill", "category": "billing",
               "answer": "answer to q-bill (billing)", "escalated": false})
    );
    assert_eq!(outcome("q-bill"), ["question.closed"]);
    assert_eq!(
        instance("q-general")["output"]["answer"],
        "answer to q-general (general)"
    );
    // Nobody answered: escalated at the timeout, then closed.
    assert_eq!(
        instance("q-silent")["output"],
        json!({"questionId": "q-silent", "category": "general", "answer": null, "escalated": true})
    );
    assert_eq!(
        outcome("q-silent"),
        ["question.escalated", "question.closed"]
    );
    // The CRM refused: the agent's task withdrawn, the instance faulted.
    assert_eq!(instance("q-crm")["status"], "faulted");
    assert_eq!(
        instance("q-crm")["error"]["type"],
        "https://example.com/support/unresolved"
    );
    assert_eq!(outcome("q-crm"), ["question.withdrawn"]);
    // No human needed: the switch ended it before any call.
    assert_eq!(instance("q-self")["status"], "completed");
    assert!(outcome("q-self").is_empty());
    let calls_for = |question: &str, path: &str| {
        report
            .calls
            .iter()
            .filter(|call| call.question == question && call.path == path)
            .count()
    };
    assert_eq!(calls_for("q-self", "/classify"), 0);
    // The flaky notifier failed twice per question before it took it.
    assert_eq!(calls_for("q-bill", "/notify"), 3);
    assert_eq!(calls_for("q-bill", "/classify"), 1);
}

#[tokio::test]
async fn given_a_kill_during_the_wait_should_fire_the_timeout_after_the_restart() {
    let (server, api) = start(tempfile::tempdir().unwrap()).await;
    let services = Services::start(0).await.unwrap();
    setup(&server.url(""), &services.url, 2_000).await.unwrap();
    ask(&server.url(""), "q-wait", "no-answer: hello?", true)
        .await
        .unwrap();
    let instance = instance_of(&server.url(""), "q-wait", SETTLE)
        .await
        .unwrap();
    let id = instance["instance_id"].as_str().unwrap().to_owned();
    until_waiting(&api, &id).await;

    let (server, _api) = kill_and_restart(server).await;
    let done = ended(&server.url(""), &id, SETTLE).await.unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["escalated"], true);
    let outcome = outcomes(&server.url("")).await.unwrap();
    assert_eq!(outcome["q-wait"], ["question.escalated", "question.closed"]);
}

#[tokio::test]
async fn given_a_kill_between_a_call_and_its_record_should_call_once_more_with_the_same_key() {
    let (server, _api) = start(tempfile::tempdir().unwrap()).await;
    let services = Services::start(0).await.unwrap();
    setup(&server.url(""), &services.url, 30_000).await.unwrap();
    let held = services.hold_classifier();
    let arrived = held.arrived();
    ask(&server.url(""), "q-held", "my invoice is wrong", true)
        .await
        .unwrap();
    tokio::time::timeout(SETTLE, arrived)
        .await
        .expect("the classifier was called");
    // The call reached the service; the server dies before its answer.
    let (server, _api) = kill_and_restart(server).await;
    held.release();
    let stop = CancellationToken::new();
    let agent = spawn_agent(&server.url(""), stop.clone());
    let instance = instance_of(&server.url(""), "q-held", SETTLE)
        .await
        .unwrap();
    let done = ended(
        &server.url(""),
        instance["instance_id"].as_str().unwrap(),
        SETTLE,
    )
    .await
    .unwrap();
    stop.cancel();
    agent.await.unwrap().unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["output"]["category"], "billing");
    let classified: Vec<String> = services
        .calls()
        .into_iter()
        .filter(|call| call.question == "q-held" && call.path == "/classify")
        .map(|call| call.idempotency_key)
        .collect();
    assert_eq!(classified.len(), 2, "{classified:?}");
    assert_eq!(classified[0], classified[1]);
    assert!(!classified[0].is_empty());
}

#[tokio::test]
async fn given_a_cancel_during_the_wait_should_run_the_compensation() {
    let (server, api) = start(tempfile::tempdir().unwrap()).await;
    let services = Services::start(0).await.unwrap();
    setup(&server.url(""), &services.url, 600_000)
        .await
        .unwrap();
    ask(&server.url(""), "q-cancel", "no-answer: cancel me", true)
        .await
        .unwrap();
    let instance = instance_of(&server.url(""), "q-cancel", SETTLE)
        .await
        .unwrap();
    let id = instance["instance_id"].as_str().unwrap().to_owned();
    until_waiting(&api, &id).await;
    let cancelled = api
        .post_raw(
            &format!("/v1/workflow-instances/{id}/cancel"),
            None,
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    let done = ended(&server.url(""), &id, SETTLE).await.unwrap();
    assert_eq!(done["status"], "cancelled", "{done}");
    let outcome = outcomes(&server.url("")).await.unwrap();
    assert_eq!(outcome["q-cancel"], ["question.withdrawn"]);
    let withdrawn: Vec<Value> = support_workflow::events(&server.url(""), "support-events")
        .await
        .unwrap();
    assert_eq!(
        withdrawn[0]["data"]["reason"],
        "https://herald.dev/workflows/errors/cancelled"
    );
}
