//! Webhook endpoints through the REST API of the real binary: create (the
//! SSRF guard's 400), deliver from a topic to a real receiver, the attempt
//! log, a failing endpoint's dead letter and its recovery, rotation,
//! patch, delete, metrics, and configuration errors; the same through gRPC
//! (`herald.v1.Webhooks`), with its statuses and permission refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use herald_proto::v1;
use serde_json::{Value, json};

use crate::cli::{cli, stdout};
use crate::support::{
    Api, TestServer, expect_json, expect_problem, run_to_exit, serve, single_error,
};

type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A receiver answering `status` (changeable) to every POST.
async fn receiver(status: Arc<AtomicU16>) -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let router = Router::new().fallback(move |headers: HeaderMap, body: axum::body::Bytes| {
        let (record, status) = (Arc::clone(&record), Arc::clone(&status));
        async move {
            record.lock().unwrap().push((headers, body.to_vec()));
            StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, seen)
}

/// A server allowed to deliver to loopback, retrying after 50 ms once.
async fn server() -> (TestServer, Api) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command
        .env("HERALD_WEBHOOKS__ALLOW_TARGETS", r#"["127.0.0.1/32"]"#)
        .env("HERALD_WEBHOOKS__RETRY_SCHEDULE_MS", "[50]");
    TestServer::ready(TestServer::spawn(dir, command).await).await
}

async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn attempts(api: &Api, endpoint: &str, query: &str) -> Vec<Value> {
    let listed = expect_json(
        api.get(&format!(
            "/v1/webhooks/endpoints/{endpoint}/attempts{query}"
        ))
        .await,
        200,
    )
    .await;
    listed["attempts"].as_array().unwrap().clone()
}

/// Waits until `endpoint`'s group on `topic` holds a dead letter (the
/// attempt is logged before the message is dead-lettered, so the log alone
/// does not say a recover would find it).
async fn dead_letter_of(api: &Api, topic: &str, endpoint: &str) {
    let path = format!("/v1/topics/{topic}/groups/webhooks.{endpoint}/dead-letters");
    until("a dead letter", async || {
        let dead = expect_json(api.get(&path).await, 200).await;
        let letters = dead["events"].as_array().cloned().unwrap_or_default();
        (!letters.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn given_an_endpoint_created_over_rest_should_deliver_log_recover_and_delete() {
    let (_server, api) = server().await;
    let status = Arc::new(AtomicU16::new(200));
    let (addr, seen) = receiver(Arc::clone(&status)).await;
    api.create_topic(json!({"name": "orders"})).await;

    // Refused targets: 400 target_not_allowed, nothing stored.
    let refused = api
        .post(
            "/v1/webhooks/endpoints",
            &json!({"url": "http://10.0.0.7/hook", "filter": {"topics": ["orders"]}}),
        )
        .await;
    expect_problem(refused, 400, "target_not_allowed").await;
    let bad_header = api
        .post(
            "/v1/webhooks/endpoints",
            &json!({"url": format!("http://{addr}/"), "filter": {"topics": ["orders"]},
                    "headers": {"webhook-id": "forged"}}),
        )
        .await;
    let problem = expect_problem(bad_header, 400, "invalid_argument").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("headers.webhook-id")
    );

    let response = api
        .post(
            "/v1/webhooks/endpoints",
            &json!({"url": format!("http://{addr}/hook"), "description": "billing",
                    "filter": {"topics": ["orders"], "types": ["order.*"]}}),
        )
        .await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created = expect_json(response, 201).await;
    let endpoint = created["endpoint_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/webhooks/endpoints/{endpoint}"));
    assert_eq!(created["state"], "enabled");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let listed = expect_json(api.get("/v1/webhooks/endpoints").await, 200).await;
    assert_eq!(listed["endpoints"].as_array().unwrap().len(), 1);
    assert!(
        listed["endpoints"][0].get("secret").is_none(),
        "never listed"
    );

    api.publish(
        "orders",
        json!([{"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "order.created",
                "subject": "o-1", "data": {"total": 12}},
               {"specversion": "1.0", "id": "o-2", "source": "/shop", "type": "invoice.sent",
                "subject": "o-2", "data": {}}]),
    )
    .await;
    until("a delivery", async || {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let (headers, body) = seen.lock().unwrap()[0].clone();
    // The SDK's receiver-side check.
    herald_client::webhooks::verify(&secret, &headers, &body).unwrap();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["id"], "o-1");
    let logged = until("the attempt logged", async || {
        let logged = attempts(&api, &endpoint, "").await;
        (!logged.is_empty()).then_some(logged)
    })
    .await;
    assert_eq!(logged[0]["succeeded"], true);
    assert_eq!(
        logged[0]["message_id"],
        headers["webhook-id"].to_str().unwrap()
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "invoice.sent is filtered out"
    );

    // The receiver fails: one retry after 50 ms, then a dead letter.
    status.store(500, Ordering::SeqCst);
    api.publish(
        "orders",
        json!([{"specversion": "1.0", "id": "o-3", "source": "/shop", "type": "order.created", "subject": "o-3"}]),
    )
    .await;
    dead_letter_of(&api, "orders", &endpoint).await;
    let failed = attempts(&api, &endpoint, "?status=failed").await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0]["next"], "dead_lettered");
    assert_eq!(
        failed[1]["next"].as_str().unwrap().split(':').next(),
        Some("retry_in_ms")
    );
    expect_problem(
        api.get(&format!(
            "/v1/webhooks/endpoints/{endpoint}/attempts?status=maybe"
        ))
        .await,
        400,
        "invalid_argument",
    )
    .await;

    // Recovered: the receiver is well again.
    status.store(200, Ordering::SeqCst);
    let recovering = expect_json(
        api.post(
            &format!("/v1/webhooks/endpoints/{endpoint}/recover"),
            &json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await,
        202,
    )
    .await;
    assert_eq!(recovering["redelivering"], 1);
    until("the recovered delivery", async || {
        let ok = attempts(&api, &endpoint, "?status=succeeded").await;
        (ok.len() >= 2).then_some(())
    })
    .await;

    // Manual redelivery of the first message.
    let message = logged[0]["message_id"].as_str().unwrap().to_owned();
    let redelivered = api
        .post(
            &format!("/v1/webhooks/endpoints/{endpoint}/messages/{message}/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!(redelivered.status().as_u16(), 202);
    until("the manual attempt", async || {
        let all = attempts(&api, &endpoint, &format!("?message_id={message}")).await;
        (all.len() >= 2).then_some(())
    })
    .await;
    expect_problem(
        api.post(
            &format!("/v1/webhooks/endpoints/{endpoint}/messages/orders.0.999/redeliver"),
            &json!({}),
        )
        .await,
        404,
        "message_not_found",
    )
    .await;

    // Rotation and patch.
    let rotated = expect_json(
        api.post(
            &format!("/v1/webhooks/endpoints/{endpoint}/rotate-secret"),
            &json!({"overlap_ms": 60000}),
        )
        .await,
        200,
    )
    .await;
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    let patched = expect_json(
        api.patch(
            &format!("/v1/webhooks/endpoints/{endpoint}"),
            &json!({"description": "billing v2", "enabled": false}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(patched["state"], "disabled");
    assert_eq!(patched["description"], "billing v2");
    expect_problem(
        api.patch(
            &format!("/v1/webhooks/endpoints/{endpoint}"),
            &json!({"url": "http://192.168.1.1/"}),
        )
        .await,
        400,
        "target_not_allowed",
    )
    .await;

    // Metrics.
    let metrics = api.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "herald_webhook_attempts_total{{endpoint=\"{endpoint}\",outcome=\"succeeded\"}}"
        )),
        "{metrics}"
    );
    crate::support::assert_dashboard_metrics(&metrics, &["herald_webhook_"]);

    // Delete.
    assert_eq!(
        api.delete(&format!("/v1/webhooks/endpoints/{endpoint}"))
            .await
            .status()
            .as_u16(),
        204
    );
    expect_problem(
        api.get(&format!("/v1/webhooks/endpoints/{endpoint}")).await,
        404,
        "endpoint_not_found",
    )
    .await;
}

#[tokio::test]
async fn given_bad_webhook_configuration_should_refuse_to_start_naming_the_key() {
    for (name, value, key) in [
        (
            "HERALD_WEBHOOKS__ALLOW_TARGETS",
            r#"["not a cidr/99"]"#,
            "webhooks.allow_targets",
        ),
        (
            "HERALD_WEBHOOKS__RETRY_SCHEDULE_MS",
            "[999999999999]",
            "webhooks.retry_schedule_ms",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = serve(dir.path());
        command.env(name, value);
        let output = run_to_exit(command).await;
        let error = single_error(&output, 2);
        assert!(error.contains(key), "{error}");
    }
}

#[tokio::test]
async fn given_the_cli_should_create_list_update_show_attempts_and_delete_endpoints() {
    let (server, api) = server().await;
    let (addr, seen) = receiver(Arc::new(AtomicU16::new(204))).await;
    api.create_topic(json!({"name": "payments"})).await;
    let url = format!("http://{addr}/in");
    let created = stdout(
        &cli(
            &server,
            &[
                "webhook",
                "endpoint",
                "create",
                &url,
                "--topic",
                "payments",
                "--type",
                "payment.*",
                "--header",
                "X-Team: billing",
                "--output",
                "json",
            ],
        )
        .await,
    );
    let created: Value = serde_json::from_str(&created).unwrap();
    let endpoint = created["endpoint_id"].as_str().unwrap().to_owned();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let listed = stdout(&cli(&server, &["webhook", "endpoint", "list"]).await);
    assert!(
        listed.contains(&endpoint) && listed.contains("enabled"),
        "{listed}"
    );

    api.publish(
        "payments",
        json!([{"specversion": "1.0", "id": "p-1", "source": "/pay", "type": "payment.captured"}]),
    )
    .await;
    until("a delivery", async || {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    assert_eq!(seen.lock().unwrap()[0].0["x-team"], "billing");
    let shown = until("the attempt listed", async || {
        let shown = stdout(&cli(&server, &["webhook", "attempts", &endpoint]).await);
        shown.contains("payments.").then_some(shown)
    })
    .await;
    assert!(shown.contains("204"), "{shown}");

    let updated = stdout(
        &cli(
            &server,
            &[
                "webhook",
                "endpoint",
                "update",
                &endpoint,
                "--disable",
                "--description",
                "paused",
            ],
        )
        .await,
    );
    assert!(updated.contains("disabled"), "{updated}");
    let refused = cli(
        &server,
        &[
            "webhook",
            "endpoint",
            "create",
            "http://10.9.9.9/",
            "--topic",
            "payments",
        ],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("target_not_allowed"));
    stdout(&cli(&server, &["webhook", "endpoint", "delete", &endpoint]).await);
    let after = stdout(&cli(&server, &["webhook", "endpoint", "list"]).await);
    assert!(!after.contains(&endpoint), "{after}");
}

#[tokio::test]
async fn given_a_job_with_notify_webhook_url_when_it_ends_should_post_the_signed_job() {
    let (_server, api) = server().await;
    let (addr, seen) = receiver(Arc::new(AtomicU16::new(200))).await;
    // A refused notify target is refused at submit.
    expect_problem(
        api.post(
            "/v1/queues/thumbs/jobs",
            &json!({"data": {}, "notify": {"webhook_url": "http://169.254.169.254/"}}),
        )
        .await,
        400,
        "target_not_allowed",
    )
    .await;
    let job_id = crate::jobs::submit(
        &api,
        "thumbs",
        json!({"data": {"image": "cat.png"}, "notify": {"webhook_url": format!("http://{addr}/done")}}),
    )
    .await;
    let delivery = crate::jobs::fetch_one(&api, "thumbs", "w1").await;
    expect_json(
        api.post(
            &format!("/v1/jobs/{job_id}/complete"),
            &json!({"delivery_id": delivery["delivery_id"], "result": {"thumb": "cat-small.png"}}),
        )
        .await,
        200,
    )
    .await;
    until("the notification", async || {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let settings = expect_json(api.get("/v1/webhooks/jobs").await, 200).await;
    let secret = settings["secret"].as_str().unwrap().to_owned();
    let (headers, body) = seen.lock().unwrap()[0].clone();
    // The SDK's receiver-side check.
    herald_client::webhooks::verify(&secret, &headers, &body).unwrap();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "herald.job.succeeded");
    assert_eq!(event["data"]["job_id"], job_id.as_str());
    assert_eq!(event["data"]["result"]["thumb"], "cat-small.png");
    // The job as GET /v1/jobs/{job_id} renders it: times in RFC 3339.
    for field in ["created_at", "updated_at", "expires_at"] {
        let time = event["data"][field].as_str().unwrap_or_default();
        assert!(
            herald_types::parse_rfc3339_ms(time).is_ok(),
            "{field}: {event}"
        );
    }
    let logged = until("the attempt logged", async || {
        let logged = attempts(&api, "jobs", "").await;
        (!logged.is_empty()).then_some(logged)
    })
    .await;
    assert_eq!(logged[0]["succeeded"], true);
}

type Webhooks = v1::webhooks_client::WebhooksClient<tonic::transport::Channel>;

/// A `Webhooks` client on the server's one port.
async fn grpc(server: &TestServer) -> Webhooks {
    let channel = tonic::transport::Channel::from_shared(server.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Webhooks::new(channel)
}

/// `message` with `Authorization: Bearer <token>`.
fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The refusal of a call: its gRPC code and the stable code in its
/// `ErrorInfo`.
#[track_caller]
fn expect_status<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
    reason: &str,
) -> tonic::Status {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    let info = herald_proto::error_info(&status).map(|(reason, _)| reason);
    assert_eq!(info.as_deref(), Some(reason), "{status:?}");
    status
}

fn endpoint(url: &str, topics: &[&str]) -> v1::Endpoint {
    v1::Endpoint {
        url: url.to_owned(),
        filter: Some(v1::EndpointFilter {
            topics: topics.iter().map(ToString::to_string).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn grpc_attempts(client: &Webhooks, query: v1::ListAttemptsRequest) -> Vec<v1::Attempt> {
    client
        .clone()
        .list_attempts(query)
        .await
        .unwrap()
        .into_inner()
        .attempts
}

fn attempts_of(endpoint_id: &str) -> v1::ListAttemptsRequest {
    v1::ListAttemptsRequest {
        endpoint_id: endpoint_id.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn given_an_endpoint_created_over_grpc_should_deliver_redeliver_rotate_update_recover_and_delete()
 {
    let (server, api) = server().await;
    let mut client = grpc(&server).await;
    let status = Arc::new(AtomicU16::new(200));
    let (addr, seen) = receiver(Arc::clone(&status)).await;
    api.create_topic(json!({"name": "orders"})).await;
    let create = |endpoint: v1::Endpoint| v1::CreateEndpointRequest {
        endpoint: Some(endpoint),
    };

    // Bad input: refused as over REST, nothing stored.
    let refused = client
        .create_endpoint(create(endpoint("not a url", &["orders"])))
        .await;
    let status_of = expect_status(refused, tonic::Code::InvalidArgument, "invalid_argument");
    assert!(status_of.message().starts_with("url:"), "{status_of:?}");
    let refused = client
        .create_endpoint(create(endpoint("http://10.0.0.7/hook", &["orders"])))
        .await;
    expect_status(refused, tonic::Code::InvalidArgument, "target_not_allowed");
    let no_filter = v1::Endpoint {
        filter: None,
        ..endpoint(&format!("http://{addr}/hook"), &[])
    };
    let refused = client.create_endpoint(create(no_filter)).await;
    expect_status(refused, tonic::Code::InvalidArgument, "invalid_argument");
    let forged = v1::Endpoint {
        headers: [("webhook-id".to_owned(), "forged".to_owned())].into(),
        ..endpoint(&format!("http://{addr}/hook"), &["orders"])
    };
    let refused = client.create_endpoint(create(forged)).await;
    let status_of = expect_status(refused, tonic::Code::InvalidArgument, "invalid_argument");
    assert!(status_of.message().contains("headers.webhook-id"));
    let unknown = client
        .get_endpoint(v1::EndpointRequest {
            endpoint_id: "ep_nope".into(),
        })
        .await;
    expect_status(unknown, tonic::Code::NotFound, "endpoint_not_found");
    let listed = client.list_endpoints(v1::ListEndpointsRequest {}).await;
    assert!(listed.unwrap().into_inner().endpoints.is_empty());

    // Created: the answer carries the secret, the list never does.
    let created = client
        .create_endpoint(create(v1::Endpoint {
            description: Some("billing".into()),
            filter: Some(v1::EndpointFilter {
                topics: vec!["orders".into()],
                types: vec!["order.*".into()],
                subject_prefix: None,
            }),
            ..endpoint(&format!("http://{addr}/hook"), &[])
        }))
        .await
        .unwrap()
        .into_inner();
    let endpoint_id = created.endpoint_id.clone();
    assert!(endpoint_id.starts_with("ep_"), "{created:?}");
    assert_eq!(created.state(), v1::EndpointState::Enabled);
    assert_eq!(created.enabled, Some(true));
    assert!(created.created_at_ms > 0 && created.created_at_ms == created.updated_at_ms);
    let secret = created.secret.clone().unwrap();
    assert!(secret.starts_with("whsec_"));
    let listed = client
        .list_endpoints(v1::ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].endpoint_id, endpoint_id);
    assert_eq!(listed[0].secret, None, "never listed");

    // A delivery arrives, signed with the secret, and is logged.
    api.publish(
        "orders",
        json!([{"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "order.created",
                "subject": "o-1", "data": {"total": 12}},
               {"specversion": "1.0", "id": "o-2", "source": "/shop", "type": "invoice.sent",
                "subject": "o-2", "data": {}}]),
    )
    .await;
    until("a delivery", async || {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let (headers, body) = seen.lock().unwrap()[0].clone();
    herald_client::webhooks::verify(&secret, &headers, &body).unwrap();
    let message_id = headers["webhook-id"].to_str().unwrap().to_owned();
    let logged = until("the attempt logged", async || {
        let logged = grpc_attempts(&client, attempts_of(&endpoint_id)).await;
        (!logged.is_empty()).then_some(logged)
    })
    .await;
    assert_eq!(logged.len(), 1, "invoice.sent is filtered out: {logged:?}");
    let first = &logged[0];
    assert!(first.succeeded, "{first:?}");
    assert_eq!(first.message_id, message_id);
    assert_eq!(first.attempt, 1);
    assert_eq!(first.status_code, Some(200));
    assert_eq!(first.trigger(), v1::AttemptTrigger::Scheduled);
    assert!(first.at_ms >= created.created_at_ms, "{first:?}");
    let shown = client
        .get_endpoint(v1::EndpointRequest {
            endpoint_id: endpoint_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let stats = shown.stats.unwrap();
    assert_eq!((stats.attempts, stats.succeeded), (1, 1), "{stats:?}");
    assert!(stats.last_success_at_ms.is_some(), "{stats:?}");
    let bad_status = client
        .list_attempts(v1::ListAttemptsRequest {
            status: Some("maybe".into()),
            ..attempts_of(&endpoint_id)
        })
        .await;
    expect_status(bad_status, tonic::Code::InvalidArgument, "invalid_argument");
    let unknown = client.list_attempts(attempts_of("ep_nope")).await;
    expect_status(unknown, tonic::Code::NotFound, "endpoint_not_found");

    // Redelivered by hand: a second attempt of the same message.
    client
        .redeliver(v1::RedeliverRequest {
            endpoint_id: endpoint_id.clone(),
            message_id: message_id.clone(),
        })
        .await
        .unwrap();
    let of_message = until("the manual attempt", async || {
        let all = grpc_attempts(
            &client,
            v1::ListAttemptsRequest {
                message_id: Some(message_id.clone()),
                ..attempts_of(&endpoint_id)
            },
        )
        .await;
        (all.len() >= 2).then_some(all)
    })
    .await;
    assert_eq!(of_message[0].trigger(), v1::AttemptTrigger::Manual);
    assert_eq!(of_message[0].attempt, 2);
    assert!(of_message[0].succeeded, "{of_message:?}");
    assert_eq!(seen.lock().unwrap().len(), 2);
    let unknown = client
        .redeliver(v1::RedeliverRequest {
            endpoint_id: endpoint_id.clone(),
            message_id: "orders.0.999".into(),
        })
        .await;
    expect_status(unknown, tonic::Code::NotFound, "message_not_found");

    // Rotated: during the overlap a delivery is signed with both secrets.
    let rotated = client
        .rotate_secret(v1::RotateSecretRequest {
            endpoint_id: endpoint_id.clone(),
            overlap_ms: Some(60_000),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    api.publish(
        "orders",
        json!([{"specversion": "1.0", "id": "o-3", "source": "/shop", "type": "order.paid", "subject": "o-3"}]),
    )
    .await;
    until("the delivery after rotation", async || {
        (seen.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    let (headers, body) = seen.lock().unwrap()[2].clone();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["id"], "o-3");
    herald_client::webhooks::verify(&rotated, &headers, &body).unwrap();
    herald_client::webhooks::verify(&secret, &headers, &body).unwrap();

    // The receiver fails: one retry, then a dead letter; recovered once it
    // is well again.
    status.store(500, Ordering::SeqCst);
    api.publish(
        "orders",
        json!([{"specversion": "1.0", "id": "o-4", "source": "/shop", "type": "order.created", "subject": "o-4"}]),
    )
    .await;
    dead_letter_of(&api, "orders", &endpoint_id).await;
    let failed = grpc_attempts(
        &client,
        v1::ListAttemptsRequest {
            status: Some("failed".into()),
            ..attempts_of(&endpoint_id)
        },
    )
    .await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].next, "dead_lettered", "{failed:?}");
    status.store(200, Ordering::SeqCst);
    let recovering = client
        .recover(v1::RecoverRequest {
            endpoint_id: endpoint_id.clone(),
            since_ms: created.created_at_ms,
            until_ms: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recovering.redelivering, 1);
    let dead_message = failed[0].message_id.clone();
    until("the recovered delivery", async || {
        let ok = grpc_attempts(
            &client,
            v1::ListAttemptsRequest {
                status: Some("succeeded".into()),
                message_id: Some(dead_message.clone()),
                ..attempts_of(&endpoint_id)
            },
        )
        .await;
        (!ok.is_empty()).then_some(())
    })
    .await;

    // Updated: absent fields stay; the changed endpoint is checked whole.
    let updated = client
        .update_endpoint(v1::UpdateEndpointRequest {
            endpoint_id: endpoint_id.clone(),
            description: Some("billing v2".into()),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.state(), v1::EndpointState::Disabled);
    assert_eq!(updated.description.as_deref(), Some("billing v2"));
    assert_eq!(updated.filter.unwrap().types, ["order.*"]);
    assert_eq!(updated.secret, None);
    let refused = client
        .update_endpoint(v1::UpdateEndpointRequest {
            endpoint_id: endpoint_id.clone(),
            url: Some("http://192.168.1.1/".into()),
            ..Default::default()
        })
        .await;
    expect_status(refused, tonic::Code::InvalidArgument, "target_not_allowed");
    let refused = client
        .update_endpoint(v1::UpdateEndpointRequest {
            endpoint_id: endpoint_id.clone(),
            ordered: Some(true),
            ..Default::default()
        })
        .await;
    expect_status(refused, tonic::Code::InvalidArgument, "invalid_argument");
    let shown = client
        .get_endpoint(v1::EndpointRequest {
            endpoint_id: endpoint_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        shown.url,
        format!("http://{addr}/hook"),
        "refused changes store nothing"
    );
    assert!(!shown.ordered);

    // Deleted, with its attempt log.
    client
        .delete_endpoint(v1::EndpointRequest {
            endpoint_id: endpoint_id.clone(),
        })
        .await
        .unwrap();
    let gone = client
        .get_endpoint(v1::EndpointRequest {
            endpoint_id: endpoint_id.clone(),
        })
        .await;
    expect_status(gone, tonic::Code::NotFound, "endpoint_not_found");
    let gone = client
        .delete_endpoint(v1::EndpointRequest {
            endpoint_id: endpoint_id.clone(),
        })
        .await;
    expect_status(gone, tonic::Code::NotFound, "endpoint_not_found");
    let listed = client.list_endpoints(v1::ListEndpointsRequest {}).await;
    assert!(listed.unwrap().into_inner().endpoints.is_empty());

    // Job notifications: the same settings REST shows.
    let notifications = client
        .get_job_notifications(v1::JobNotificationsRequest {})
        .await
        .unwrap()
        .into_inner();
    let settings = expect_json(api.get("/v1/webhooks/jobs").await, 200).await;
    assert_eq!(notifications.secret, settings["secret"].as_str().unwrap());
    assert_eq!(notifications.endpoint_id, "jobs");
}

#[tokio::test]
async fn given_a_key_without_topics_read_when_it_creates_an_endpoint_over_grpc_should_be_refused() {
    let (server, _anonymous, admin) = crate::auth_table::server_with_auth(&[(
        "HERALD_WEBHOOKS__ALLOW_TARGETS",
        r#"["127.0.0.1/32"]"#,
    )])
    .await;
    admin.create_topic(json!({"name": "orders"})).await;
    let (addr, _seen) = receiver(Arc::new(AtomicU16::new(200))).await;
    let url = format!("http://{addr}/hook");
    let manage = json!({"actions": ["webhooks:manage"], "resources": ["*"]});
    let hooks_only = admin.create_key("hooks-only", json!([manage])).await;
    let both = admin
        .create_key(
            "hooks-and-orders",
            json!([manage, {"actions": ["topics:read"], "resources": ["orders"]}]),
        )
        .await;
    let readers = admin
        .create_key(
            "readers",
            json!([{"actions": ["topics:read"], "resources": ["*"]}]),
        )
        .await;
    let mut client = grpc(&server).await;
    let create = |token: &str| {
        with_token(
            token,
            v1::CreateEndpointRequest {
                endpoint: Some(endpoint(&url, &["orders"])),
            },
        )
    };

    // webhooks:manage alone: the endpoint would read `orders` for the caller.
    let refused = client.create_endpoint(create(&hooks_only)).await;
    let status = expect_status(refused, tonic::Code::PermissionDenied, "forbidden");
    let (_, metadata) = herald_proto::error_info(&status).unwrap();
    assert_eq!(metadata["action"], "topics:read", "{status:?}");
    assert_eq!(metadata["resource"], "orders", "{status:?}");
    // topics:read alone: no webhooks:manage.
    let refused = client.create_endpoint(create(&readers)).await;
    expect_status(refused, tonic::Code::PermissionDenied, "forbidden");
    let refused = client
        .list_endpoints(with_token(&readers, v1::ListEndpointsRequest {}))
        .await;
    expect_status(refused, tonic::Code::PermissionDenied, "forbidden");
    let refused = client.list_endpoints(v1::ListEndpointsRequest {}).await;
    expect_status(refused, tonic::Code::Unauthenticated, "unauthenticated");

    // Both: created; changing its filter needs topics:read again.
    let created = client
        .create_endpoint(create(&both))
        .await
        .unwrap()
        .into_inner();
    let refit = |token: &str, filter: Option<v1::EndpointFilter>| {
        with_token(
            token,
            v1::UpdateEndpointRequest {
                endpoint_id: created.endpoint_id.clone(),
                description: Some("changed".into()),
                filter,
                ..Default::default()
            },
        )
    };
    let orders = v1::EndpointFilter {
        topics: vec!["orders".into()],
        ..Default::default()
    };
    let refused = client
        .update_endpoint(refit(&hooks_only, Some(orders)))
        .await;
    expect_status(refused, tonic::Code::PermissionDenied, "forbidden");
    let updated = client
        .update_endpoint(refit(&hooks_only, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.description.as_deref(), Some("changed"));
    let listed = client
        .list_endpoints(with_token(&hooks_only, v1::ListEndpointsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    assert_eq!(listed.len(), 1, "the refused creates stored nothing");
}
