//! Jobs: submit, the worker side through the queue endpoints, long-poll and
//! SSE, parts and deadlines, redelivery, dead letters, restarts, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Api, TestServer, expect_json, expect_problem, serve, sse_frames};

/// Submits `body` to `queue` → the job id (asserts 202 and `Location`).
pub async fn submit(api: &Api, queue: &str, body: Value) -> String {
    let response = api.post(&format!("/v1/queues/{queue}/jobs"), &body).await;
    let location = response
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_owned());
    let submitted = expect_json(response, 202).await;
    let job_id = submitted["job_id"].as_str().unwrap().to_owned();
    assert_eq!(location.as_deref(), Some(&*format!("/v1/jobs/{job_id}")));
    assert_eq!(submitted["status"], "pending");
    job_id
}

/// One fetch from the queue (waiting up to `wait_ms`) → the deliveries.
pub async fn fetch(api: &Api, queue: &str, member: &str, wait_ms: u64) -> Vec<Value> {
    let body = json!({"member": member, "max": 10, "wait_ms": wait_ms});
    let fetched = expect_json(
        api.post(&format!("/v1/queues/{queue}/fetch"), &body).await,
        200,
    )
    .await;
    fetched["deliveries"].as_array().unwrap().clone()
}

/// Fetches until a delivery arrives (within 20 s).
pub async fn fetch_one(api: &Api, queue: &str, member: &str) -> Value {
    for _ in 0..20 {
        if let Some(delivery) = fetch(api, queue, member, 1_000).await.into_iter().next() {
            return delivery;
        }
    }
    panic!("no delivery on queue {queue} within 20 s");
}

/// `GET /v1/jobs/{id}?wait_ms=` → the job (asserts 200).
pub async fn job(api: &Api, job_id: &str, wait_ms: u64) -> Value {
    expect_json(
        api.get(&format!("/v1/jobs/{job_id}?wait_ms={wait_ms}"))
            .await,
        200,
    )
    .await
}

/// Waits (long-polling) until the job has ended.
pub async fn ended(api: &Api, job_id: &str) -> Value {
    for _ in 0..30 {
        let job = job(api, job_id, 1_000).await;
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "partial")
        ) {
            return job;
        }
    }
    panic!("job {job_id} did not end within 30 s");
}

/// `POST /v1/jobs/{job_id}/complete` with `body` → the response.
pub(crate) async fn complete(api: &Api, job_id: &str, body: Value) -> reqwest::Response {
    api.post(&format!("/v1/jobs/{job_id}/complete"), &body)
        .await
}

/// Reads SSE frames until one of type `result`: `(event type, data)` pairs.
async fn sse_until_result(response: reqwest::Response) -> Vec<(String, Value)> {
    sse_frames(response, |frames| {
        frames
            .last()
            .is_some_and(|frame| frame.event.as_deref() == Some("result"))
    })
    .await
    .into_iter()
    .map(|frame| (frame.event.unwrap_or_default(), frame.data))
    .collect()
}

#[tokio::test]
async fn given_submitted_job_when_worker_completes_should_notify_over_sse_long_poll_and_topic() {
    let (_server, api) = TestServer::start_ready().await;
    let job_id = submit(&api, "resize", json!({"data": {"width": 64}})).await;
    let pending = job(&api, &job_id, 0).await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["progress"]["total"], 1);

    let sse = api
        .client
        .get(api.url(&format!("/v1/jobs/{job_id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let waiter = {
        let api = api.clone();
        let job_id = job_id.clone();
        tokio::spawn(async move { job(&api, &job_id, 20_000).await })
    };

    let delivery = fetch_one(&api, "resize", "w1").await;
    assert_eq!(delivery["job_id"], job_id);
    assert_eq!(delivery["data"], json!({"width": 64}));
    assert_eq!(delivery["attempt"], 1);
    let progressed = expect_json(
        api.post(
            &format!("/v1/jobs/{job_id}/progress"),
            &json!({"progress": 50, "message": "half", "delivery_id": delivery["delivery_id"]}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(progressed["status"], "running");
    assert_eq!(progressed["progress"]["message"], "half");
    let done = expect_json(
        complete(
            &api,
            &job_id,
            json!({"result": {"ok": true}, "delivery_id": delivery["delivery_id"]}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(done["status"], "succeeded");

    let frames = sse_until_result(sse).await;
    let kinds: Vec<&str> = frames.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"status"));
    assert_eq!(kinds.last(), Some(&"result"));
    assert!(kinds.contains(&"progress"), "{kinds:?}");
    assert_eq!(frames.last().unwrap().1["result"], json!({"ok": true}));
    let waited = waiter.await.unwrap();
    assert_eq!(waited["status"], "succeeded");
    assert_eq!(waited["result"], json!({"ok": true}));

    // Every transition is an event on herald.jobs, in order.
    let read = expect_json(
        api.get("/v1/topics/herald.jobs/events?partition=0&from_offset=0&limit=100")
            .await,
        200,
    )
    .await;
    let types: Vec<String> = read["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["subject"] == job_id)
        .map(|event| event["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "herald.job.submitted",
            "herald.job.running",
            "herald.job.progress",
            "herald.job.succeeded"
        ]
    );
    // The delivery was acked with the completion: nothing comes back.
    assert!(fetch(&api, "resize", "w2", 300).await.is_empty());

    // Each transition counted once, the duration observed once.
    let metrics = api.get("/metrics").await.text().await.unwrap();
    for expected in [
        r#"herald_job_transitions_total{kind="submitted"} 1"#,
        r#"herald_job_transitions_total{kind="running"} 1"#,
        r#"herald_job_transitions_total{kind="progress"} 1"#,
        r#"herald_job_transitions_total{kind="succeeded"} 1"#,
        r#"herald_job_duration_seconds_count{status="succeeded"} 1"#,
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in:\n{metrics}"
        );
    }
}

/// `job[field]` as ms since the epoch, asserting it is RFC 3339 with ms in UTC.
fn rfc3339_ms(job: &Value, field: &str) -> i64 {
    let text = job[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string: {job}"));
    assert!(
        text.len() == "2026-12-03T07:30:00.000Z".len() && text.ends_with('Z'),
        "{field}: {text}"
    );
    herald_types::parse_rfc3339_ms(text).unwrap()
}

#[tokio::test]
async fn given_a_job_when_read_completed_or_followed_should_render_its_times_in_rfc3339() {
    let (_server, api) = TestServer::start_ready().await;
    let job_id = submit(&api, "clock", json!({"deadline_ms": 600_000})).await;
    let pending = job(&api, &job_id, 0).await;
    let created = rfc3339_ms(&pending, "created_at");
    assert_eq!(rfc3339_ms(&pending, "updated_at"), created);
    assert_eq!(rfc3339_ms(&pending, "deadline_at"), created + 600_000);
    assert!(pending.get("expires_at").is_none(), "{pending}");

    let sse = api
        .client
        .get(api.url(&format!("/v1/jobs/{job_id}/events")))
        .send()
        .await
        .unwrap();
    let delivery = fetch_one(&api, "clock", "w1").await;
    let done = expect_json(
        complete(
            &api,
            &job_id,
            json!({"result": 1, "delivery_id": delivery["delivery_id"]}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(rfc3339_ms(&done, "created_at"), created);
    assert!(rfc3339_ms(&done, "updated_at") >= created);
    let expires = rfc3339_ms(&done, "expires_at");
    assert_eq!(
        expires,
        rfc3339_ms(&done, "updated_at") + done["result_ttl_ms"].as_i64().unwrap()
    );
    let frames = sse_until_result(sse).await;
    for (_, frame) in &frames {
        assert_eq!(rfc3339_ms(frame, "created_at"), created);
    }
    assert_eq!(rfc3339_ms(&frames.last().unwrap().1, "expires_at"), expires);
}

#[tokio::test]
async fn given_bad_job_input_should_answer_4xx_problem_and_change_nothing() {
    let (_server, api) = TestServer::start_ready().await;
    // Unknown and malformed job ids.
    for id in ["0190d3c0-0000-7000-8000-000000000000", "nope"] {
        expect_problem(
            api.get(&format!("/v1/jobs/{id}")).await,
            404,
            "job_not_found",
        )
        .await;
        expect_problem(
            complete(&api, id, json!({"result": 1})).await,
            404,
            "job_not_found",
        )
        .await;
    }
    // Malformed part lists: nothing is submitted (the queue's topic is never made).
    for (parts, code) in [
        (json!([]), "invalid_argument"),
        (json!([{"key": "a"}, {"key": "a"}]), "invalid_argument"),
        (json!([{"key": ""}]), "invalid_argument"),
        (json!([{"data": 1}]), "invalid_argument"),
        (json!({"key": "a"}), "invalid_argument"),
        (json!("a,b"), "invalid_argument"),
    ] {
        let response = api
            .post("/v1/queues/shards/jobs", &json!({"parts": parts}))
            .await;
        let problem = expect_problem(response, 400, code).await;
        assert!(!problem["detail"].as_str().unwrap().is_empty(), "{problem}");
    }
    expect_problem(
        api.get("/v1/topics/jobs.shards").await,
        404,
        "topic_not_found",
    )
    .await;
    expect_problem(
        api.post(
            "/v1/queues/shards/jobs",
            &json!({"blob": format!("sha256:{}", "0".repeat(64))}),
        )
        .await,
        404,
        "blob_not_found",
    )
    .await;
    expect_problem(
        api.post("/v1/queues/bad queue/jobs", &json!({})).await,
        400,
        "invalid_name",
    )
    .await;
    expect_problem(
        api.post_raw("/v1/queues/q/jobs", Some("application/json"), &[], "{")
            .await,
        400,
        "malformed_json",
    )
    .await;

    // A part completed twice: the same outcome is fine, a different one is
    // a conflict and changes nothing.
    let job_id = submit(
        &api,
        "shards",
        json!({"parts": [{"key": "s1", "data": 1}, {"key": "s2", "data": 2}]}),
    )
    .await;
    let first = expect_json(
        complete(&api, &job_id, json!({"part": "s1", "result": "one"})).await,
        200,
    )
    .await;
    assert_eq!(first["progress"]["done"], 1);
    let again = expect_json(
        complete(&api, &job_id, json!({"part": "s1", "result": "one"})).await,
        200,
    )
    .await;
    assert_eq!(again, first);
    expect_problem(
        complete(&api, &job_id, json!({"part": "s1", "result": "other"})).await,
        409,
        "job_conflict",
    )
    .await;
    expect_problem(
        complete(&api, &job_id, json!({"part": "s9", "result": 1})).await,
        404,
        "part_not_found",
    )
    .await;
    expect_problem(
        complete(&api, &job_id, json!({"result": 1})).await,
        400,
        "invalid_argument",
    )
    .await;
    assert_eq!(job(&api, &job_id, 0).await, first);
    expect_problem(
        api.get(&format!("/v1/jobs/{job_id}?wait_ms=999999")).await,
        400,
        "invalid_argument",
    )
    .await;
}

#[tokio::test]
async fn given_worker_dies_mid_job_when_lease_expires_should_redeliver_to_another_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_JOBS__ACK_WAIT_MS", "500");
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let job_id = submit(&api, "work", json!({"data": "payload"})).await;

    // Worker A takes the job, reports progress, and dies (never completes).
    let taken = fetch_one(&api, "work", "worker-a").await;
    expect_json(
        api.post(
            &format!("/v1/jobs/{job_id}/progress"),
            &json!({"progress": 10, "delivery_id": taken["delivery_id"]}),
        )
        .await,
        200,
    )
    .await;

    // Worker B gets it again once A's lease expired, and finishes it.
    let again = fetch_one(&api, "work", "worker-b").await;
    assert_eq!(again["job_id"], job_id);
    assert_eq!(again["attempt"], 2);
    expect_json(
        complete(
            &api,
            &job_id,
            json!({"result": "by b", "delivery_id": again["delivery_id"]}),
        )
        .await,
        200,
    )
    .await;
    let done = ended(&api, &job_id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], "by b");
}

#[tokio::test]
async fn given_job_whose_attempts_run_out_should_end_failed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_JOBS__MAX_ATTEMPTS", "2");
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let job_id = submit(&api, "flaky", json!({"data": 1})).await;
    for attempt in 1..=2 {
        let delivery = fetch_one(&api, "flaky", "w").await;
        assert_eq!(delivery["attempt"], attempt);
        let nacked = expect_json(
            api.post(
                "/v1/queues/flaky/nack",
                &json!({"delivery_ids": [delivery["delivery_id"]], "delay_ms": 0}),
            )
            .await,
            200,
        )
        .await;
        assert_eq!(nacked, json!({"nacked": 1}));
    }
    let failed = ended(&api, &job_id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("attempts exhausted"), "{error}");
    assert!(error.contains("2 attempts"), "{error}");
}

#[tokio::test]
async fn given_server_restarted_between_submit_and_completion_should_complete_and_keep_deadlines() {
    let (server, api) = TestServer::start_ready().await;
    let job_id = submit(&api, "durable", json!({"data": "x"})).await;
    let parts_id = submit(
        &api,
        "durable-parts",
        json!({"parts": [{"key": "a"}, {"key": "b"}], "deadline_ms": 3_000}),
    )
    .await;
    expect_json(
        complete(&api, &parts_id, json!({"part": "a", "result": 1})).await,
        200,
    )
    .await;

    server.signal("TERM").await;
    let (status, stderr, dir) = server.wait().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    let command = serve(dir.path());
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;

    assert_eq!(job(&api, &job_id, 0).await["status"], "pending");
    let delivery = fetch_one(&api, "durable", "after-restart").await;
    assert_eq!(delivery["job_id"], job_id);
    expect_json(
        complete(
            &api,
            &job_id,
            json!({"result": "done", "delivery_id": delivery["delivery_id"]}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(ended(&api, &job_id).await["status"], "succeeded");

    // The deadline was stored, not held in memory: it fires after the restart.
    let partial = ended(&api, &parts_id).await;
    assert_eq!(partial["status"], "partial");
    assert_eq!(partial["missing"], json!(["b"]));
    assert_eq!(partial["progress"]["done"], 1);
}

#[tokio::test]
async fn given_short_result_ttl_when_it_passes_should_remove_the_job() {
    let (_server, api) = TestServer::start_ready().await;
    let job_id = submit(&api, "brief", json!({"result_ttl_ms": 200})).await;
    expect_json(complete(&api, &job_id, json!({"result": 1})).await, 200).await;
    for _ in 0..100 {
        let response = api.get(&format!("/v1/jobs/{job_id}")).await;
        if response.status() == 404 {
            expect_problem(response, 404, "job_not_found").await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job_id} was not removed after its result_ttl_ms");
}

#[tokio::test]
async fn given_server_crashing_right_after_storing_a_job_when_restarted_should_have_dispatched_it()
{
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    // The job service aborts the process right after the job's record is
    // written (a crash at the worst point of a submit).
    command.env("TEST_HERALD_FAILPOINT", "jobs.submit.after_record");
    let (server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let crashed = api
        .client
        .post(api.url("/v1/queues/crash/jobs"))
        .json(&json!({"data": {"n": 1}, "deadline_ms": 600_000}))
        .send()
        .await;
    assert!(
        crashed.is_err(),
        "the submit should have crashed the server: {crashed:?}"
    );
    let (status, _stderr, dir) = server.wait().await;
    assert!(!status.success(), "the server crashed");

    let command = serve(dir.path());
    let (_server, api) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    // The stored job is on the queue: a worker gets it and can finish it.
    let delivery = fetch_one(&api, "crash", "after-crash").await;
    let job_id = delivery["job_id"].as_str().unwrap().to_owned();
    assert_eq!(delivery["data"], json!({"n": 1}));
    expect_json(
        complete(
            &api,
            &job_id,
            json!({"result": "done", "delivery_id": delivery["delivery_id"]}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(ended(&api, &job_id).await["status"], "succeeded");
}
