//! The HTTP endpoints of a running server.

use crate::support::{TestServer, expect_json, expect_problem, wait_for_status};

#[tokio::test]
async fn given_running_server_when_get_healthz_should_answer_ok() {
    let server = TestServer::start().await;
    let response = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn given_storage_open_when_get_readyz_should_answer_ready() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let response = wait_for_status(&client, &server.url("/readyz"), 200).await;
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ready"}));
}

#[tokio::test]
async fn given_requests_when_get_metrics_should_expose_log_and_http_metrics_as_openmetrics() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for path in ["/healthz", "/healthz", "/no/such/path"] {
        client.get(server.url(path)).send().await.unwrap();
    }

    let response = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    for expected in [
        "# TYPE herald_log_append_latency_seconds histogram",
        "# TYPE herald_log_fsync_latency_seconds histogram",
        r#"herald_http_requests_total{method="GET",route="/healthz",status="2xx"} 2"#,
        r#"herald_http_requests_total{method="GET",route="unmatched",status="4xx"} 1"#,
        r#"herald_http_request_duration_seconds_count{method="GET",route="/healthz",status="2xx"} 2"#,
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        !text.contains("/no/such/path"),
        "raw paths must not become labels"
    );
}

/// `GET /metrics` → its text.
#[allow(clippy::unwrap_used, reason = "test helper")]
async fn scrape(server: &TestServer) -> String {
    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    response.text().await.unwrap()
}

#[tokio::test]
async fn given_a_group_mid_work_when_get_metrics_should_give_its_lag_in_flight_and_dead_letters() {
    let (server, api) = TestServer::start_ready().await;
    api.create_topic(serde_json::json!({"name": "orders", "partitions": 1}))
        .await;
    let events: Vec<serde_json::Value> = (0..10)
        .map(|index| {
            serde_json::json!({"specversion": "1.0", "id": format!("e{index}"), "source": "/m", "type": "t"})
        })
        .collect();
    api.publish("orders", serde_json::Value::Array(events))
        .await;
    api.put_group(
        "orders",
        "billing",
        serde_json::json!({"mode": "queue", "start": "earliest"}),
    )
    .await;
    let fetched = api.fetch("orders", "billing", "w1", 4, 1000).await;
    let ids: Vec<String> = fetched["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|delivery| delivery["delivery_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4);
    // Offsets 0 and 1 acked, 2 rejected (a dead letter), 3 still leased.
    api.group_call(
        "orders",
        "billing",
        "ack",
        serde_json::json!({"delivery_ids": &ids[..2]}),
    )
    .await;
    api.group_call(
        "orders",
        "billing",
        "reject",
        serde_json::json!({"delivery_ids": [&ids[2]], "reason": "bad"}),
    )
    .await;

    let text = scrape(&server).await;
    for expected in [
        r#"herald_group_lag{topic="orders",group="billing",partition="0"} 7"#,
        r#"herald_group_in_flight{topic="orders",group="billing"} 1"#,
        r#"herald_group_pending{topic="orders",group="billing"} 0"#,
        r#"herald_group_dead_letters_held{topic="orders",group="billing"} 1"#,
        r#"herald_group_members{topic="orders",group="billing"} 1"#,
        r#"herald_topic_events{topic="orders"} 10"#,
        r#"herald_topic_segments{topic="orders"} 1"#,
        r#"herald_topic_dedup_ids{topic="orders"} 10"#,
        r#"herald_group_deliveries_total{topic="orders",group="billing",kind="delivered"} 4"#,
        r#"herald_group_deliveries_total{topic="orders",group="billing",kind="redelivered"} 0"#,
        r#"herald_group_deliveries_total{topic="orders",group="billing",kind="acked"} 2"#,
        r#"herald_group_deliveries_total{topic="orders",group="billing",kind="nacked"} 0"#,
        r#"herald_group_deliveries_total{topic="orders",group="billing",kind="rejected"} 1"#,
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let bytes = text
        .lines()
        .find_map(|line| line.strip_prefix(r#"herald_topic_bytes{topic="orders"} "#))
        .expect("herald_topic_bytes for orders");
    assert!(bytes.parse::<u64>().unwrap() > 0, "{bytes}");
    crate::support::assert_dashboard_metrics(
        &text,
        &[
            "herald_group_",
            "herald_topic_",
            "herald_log_",
            "herald_http_",
        ],
    );

    // A deleted group leaves the metrics at the next scrape.
    let response = api.delete("/v1/topics/orders/groups/billing").await;
    assert_eq!(response.status(), 204);
    let text = scrape(&server).await;
    assert!(!text.contains(r#"group="billing""#), "{text}");
}

/// The dashboard in `docs/grafana` queries only Herald's metric families;
/// the tests that exercise each part check that its families exist
/// (`support::assert_dashboard_metrics`), and together they cover every
/// family the dashboard queries.
#[test]
fn given_the_grafana_dashboard_every_family_it_queries_is_checked_by_a_test() {
    let queried = crate::support::dashboard_metrics();
    assert!(queried.len() > 20, "{queried:?}");
    let unchecked: Vec<&String> = queried
        .iter()
        .filter(|name| {
            !crate::support::DASHBOARD_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
        .collect();
    assert!(unchecked.is_empty(), "no test checks {unchecked:?}");
}

#[tokio::test]
async fn given_unknown_path_when_requested_should_answer_404_problem_json() {
    let server = TestServer::start().await;
    let response = reqwest::get(server.url("/no/such/path")).await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:herald:problem:not_found");
    assert_eq!(problem["title"], "Not found");
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["code"], "not_found");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("/no/such/path"), "{detail}");
}

#[tokio::test]
async fn given_known_path_when_wrong_method_should_answer_405_problem_json() {
    let server = TestServer::start().await;
    let response = reqwest::Client::new()
        .post(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "method_not_allowed");
    assert_eq!(problem["status"], 405);
}

#[tokio::test]
async fn given_api_routes_when_unknown_path_or_method_should_answer_problem_json() {
    let (_server, api) = TestServer::start_ready().await;
    expect_problem(api.get("/v1/nope").await, 404, "not_found").await;
    expect_problem(api.get("/v1/topics/orders/nope").await, 404, "not_found").await;
    let response = api.put("/v1/topics", &serde_json::json!({})).await;
    expect_problem(response, 405, "method_not_allowed").await;
    let response = api.post("/v1/topics/orders", &serde_json::json!({})).await;
    expect_problem(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn given_admin_flush_when_posted_should_answer_200_once_group_state_is_persisted() {
    let (_server, api) = TestServer::start_ready().await;
    let answer = expect_json(api.post_raw("/v1/admin/flush", None, &[], "").await, 200).await;
    assert_eq!(answer, serde_json::json!({"flushed": true}));
    let response = api.get("/v1/admin/flush").await;
    expect_problem(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn given_api_requests_when_get_metrics_should_label_them_by_route_template() {
    let (_server, api) = TestServer::start_ready().await;
    api.get("/v1/topics/orders").await;
    api.get("/v1/topics/payments").await;

    let text = api.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(
            r#"herald_http_requests_total{method="GET",route="/v1/topics/{topic}",status="4xx"} 2"#
        ),
        "{text}"
    );
    assert!(!text.contains("payments"), "names must not become labels");
}
