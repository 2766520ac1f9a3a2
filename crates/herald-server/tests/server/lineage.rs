//! `GET /v1/lineage` on the real binary: a chain over several topics (an
//! order, its payment, a receipt), a job the payment caused (notified by
//! webhook when it ends), a dead letter and an ack, found by correlation
//! id, by causation id and from the first event's position, drawn as one
//! tree in causal order; the CLI draws the same; bad queries are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::cli::{cli, stdout};
use crate::support::{Api, TestServer, expect_json, expect_problem, serve};

async fn server() -> (TestServer, Api) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_WEBHOOKS__ALLOW_TARGETS", r#"["127.0.0.1/32"]"#);
    TestServer::ready(TestServer::spawn(dir, command).await).await
}

fn event(id: &str, ty: &str, causation: Option<&str>) -> Value {
    let mut event = json!({
        "specversion": "1.0", "id": id, "source": "/shop", "type": ty,
        "correlationid": "order-7",
    });
    if let Some(causation) = causation {
        event["causationid"] = json!(causation);
    }
    json!([event])
}

async fn lineage(api: &Api, query: &str) -> Vec<Value> {
    let answer = expect_json(api.get(&format!("/v1/lineage?{query}")).await, 200).await;
    assert_eq!(answer["truncated"], false);
    answer["nodes"].as_array().unwrap().clone()
}

/// `(kind, id, parent, depth)` of each node, in order.
fn shape(nodes: &[Value]) -> Vec<(String, String, String, u64)> {
    nodes
        .iter()
        .map(|node| {
            (
                node["kind"].as_str().unwrap().to_owned(),
                node["id"].as_str().unwrap().to_owned(),
                node["parent"].as_str().unwrap_or("-").to_owned(),
                node["depth"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn find<'a>(nodes: &'a [Value], id: &str) -> &'a Value {
    nodes
        .iter()
        .find(|node| node["id"] == id)
        .unwrap_or_else(|| panic!("no node {id} in {nodes:#?}"))
}

#[tokio::test]
async fn given_a_chain_over_topics_a_job_and_a_dead_letter_lineage_should_draw_the_whole_tree() {
    let (server, api) = server().await;
    let hook: Arc<Mutex<u32>> = Arc::default();
    let seen = Arc::clone(&hook);
    let router = Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move {
            *seen.lock().unwrap() += 1;
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hooks = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    for topic in ["orders", "payments", "receipts"] {
        api.create_topic(json!({"name": topic, "partitions": 2}))
            .await;
    }
    api.put_group("orders", "billing", json!({"mode": "queue"}))
        .await;
    api.put_group(
        "payments",
        "audit",
        json!({"mode": "queue", "start": "earliest"}),
    )
    .await;
    // Unrelated traffic the index passes over.
    let noise: Vec<Value> = (0..500)
        .map(|n| json!({"specversion": "1.0", "id": format!("n-{n}"), "source": "/x", "type": "noise"}))
        .collect();
    api.publish("orders", Value::Array(noise)).await;

    let order = api
        .publish("orders", event("o-7", "order.placed", None))
        .await;
    api.publish("payments", event("p-7", "payment.taken", Some("o-7")))
        .await;
    let job_id = crate::jobs::submit(
        &api,
        "invoices",
        json!({
            "data": {"order": "o-7"},
            "correlationid": "order-7",
            "causationid": "p-7",
            "notify": {"webhook_url": format!("http://{hooks}/invoiced")},
        }),
    )
    .await;
    api.publish("receipts", event("r-7", "receipt.sent", Some("p-7")))
        .await;
    // The payment is rejected by audit (a dead letter); billing acks the
    // order; the job is done and its end notified.
    let audit = api.drain("payments", "audit", "a1", 300).await;
    let payment = audit.iter().find(|d| d["event"]["id"] == "p-7").unwrap();
    api.group_call(
        "payments",
        "audit",
        "reject",
        json!({"delivery_ids": [payment["delivery_id"]], "reason": "amount mismatch"}),
    )
    .await;
    let billing = api.drain("orders", "billing", "b1", 300).await;
    let ids: Vec<&Value> = billing.iter().map(|d| &d["delivery_id"]).collect();
    api.group_call("orders", "billing", "ack", json!({"delivery_ids": ids}))
        .await;
    let work = crate::jobs::fetch_one(&api, "invoices", "w1").await;
    let body = json!({"delivery_id": work["delivery_id"], "result": {"invoice": 7}});
    expect_json(crate::jobs::complete(&api, &job_id, body).await, 200).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while *hook.lock().unwrap() == 0 {
        assert!(Instant::now() < deadline, "no webhook");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // By correlation id: one tree, each node after its parent.
    let attempt_logged = Instant::now() + Duration::from_secs(20);
    let nodes = loop {
        let nodes = lineage(&api, "correlationid=order-7").await;
        if nodes.iter().any(|node| node["kind"] == "webhook_attempt") {
            break nodes;
        }
        assert!(Instant::now() < attempt_logged, "{nodes:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attempt = nodes
        .iter()
        .find(|node| node["kind"] == "webhook_attempt")
        .unwrap();
    let attempt_id = attempt["id"].as_str().unwrap().to_owned();
    let s = |kind: &str, id: &str, parent: &str, depth: u64| {
        (kind.to_owned(), id.to_owned(), parent.to_owned(), depth)
    };
    assert_eq!(
        shape(&nodes),
        [
            s("event", "o-7", "-", 0),
            s("delivery", "o-7@billing", "o-7", 1),
            s("event", "p-7", "o-7", 1),
            s("delivery", "p-7@audit", "p-7", 2),
            s("job", &job_id, "p-7", 2),
            s("webhook_attempt", &attempt_id, &job_id, 3),
            s("event", "r-7", "p-7", 2),
        ],
        "{nodes:#?}"
    );
    assert_eq!(find(&nodes, "o-7@billing")["state"], "handled");
    assert_eq!(find(&nodes, "p-7@audit")["state"], "dead_lettered");
    assert_eq!(find(&nodes, &job_id)["status"], "succeeded");
    assert_eq!(attempt["succeeded"], true);
    let placed = find(&nodes, "o-7");
    assert_eq!(placed["topic"], "orders");
    assert_eq!(placed["offset"], order[0]["offset"]);
    assert_eq!(placed["type"], "order.placed");
    assert!(herald_types::parse_rfc3339_ms(placed["at"].as_str().unwrap()).is_ok());

    // From the order's position: the same tree.
    let (partition, offset) = (&order[0]["partition"], &order[0]["offset"]);
    let from_event = lineage(
        &api,
        &format!("topic=orders&partition={partition}&offset={offset}"),
    )
    .await;
    assert_eq!(shape(&from_event), shape(&nodes));

    // By causation id: what the payment caused, under it.
    let caused = lineage(&api, "causationid=p-7").await;
    let ids: Vec<(String, String, String, u64)> = shape(&caused);
    assert_eq!(ids[0], s("event", "p-7", "o-7", 0), "{caused:#?}");
    assert!(ids.contains(&s("job", &job_id, "p-7", 1)), "{caused:#?}");
    assert!(ids.contains(&s("event", "r-7", "p-7", 1)), "{caused:#?}");
    assert!(!ids.iter().any(|node| node.1 == "o-7"), "{caused:#?}");

    // The CLI draws it.
    let drawn = stdout(&cli(&server, &["lineage", "--correlationid", "order-7"]).await);
    let lines: Vec<&str> = drawn.lines().collect();
    assert!(lines[0].contains("event o-7"), "{drawn}");
    assert!(
        lines
            .iter()
            .any(|line| line.contains("└─") || line.contains("├─")),
        "{drawn}"
    );
    assert!(drawn.contains(&format!("job {job_id}")), "{drawn}");
    assert!(drawn.contains("dead_lettered"), "{drawn}");

    // Bad queries change nothing and say why.
    for query in [
        "",
        "correlationid=",
        "correlationid=a&causationid=b",
        "correlationid=a&topic=orders&offset=0",
        "topic=orders",
        "nonsense=1",
    ] {
        let response = api.get(&format!("/v1/lineage?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
    }
    expect_problem(
        api.get("/v1/lineage?topic=orders&partition=0&offset=999999")
            .await,
        404,
        "event_not_found",
    )
    .await;
    expect_problem(
        api.get("/v1/lineage?topic=nope&offset=0").await,
        404,
        "topic_not_found",
    )
    .await;
    // Nothing is known of an id no event carries.
    assert!(lineage(&api, "correlationid=unknown").await.is_empty());
}

/// Topics `questions` and `tasks`, and the workflow `support/triage`: each
/// `question.asked` on `questions` starts an instance that sets the text and
/// emits an `agent.task` on `tasks`.
pub(crate) async fn triage_workflow(api: &Api) {
    for topic in ["questions", "tasks"] {
        api.create_topic(json!({"name": topic, "partitions": 1}))
            .await;
    }
    let definition = "document: { dsl: '1.0.0', namespace: support, name: triage, version: '1' }\n\
        schedule: { on: { one: { with: { topic: questions, type: question.asked } } } }\n\
        do:\n\
        \x20 - read: { set: { text: '${ $workflow.input[0].data.text }' } }\n\
        \x20 - ask: { emit: { event: { with: { topic: tasks, source: /support, type: agent.task } } } }\n";
    let deployed = api
        .post_raw(
            "/v1/workflows",
            Some("application/yaml"),
            &[],
            definition.as_bytes().to_vec(),
        )
        .await;
    expect_json(deployed, 201).await;
}

#[tokio::test]
async fn given_a_workflow_an_event_started_lineage_should_show_its_steps_and_what_it_emitted() {
    let (_server, api) = TestServer::start_ready().await;
    triage_workflow(&api).await;
    api.publish(
        "questions",
        json!([{"specversion": "1.0", "id": "q-1", "source": "/web", "type": "question.asked",
                "correlationid": "ticket-9", "data": {"text": "where is my order?"}}]),
    )
    .await;
    // Until the instance has run both tasks and its emitted event is indexed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let nodes = loop {
        let nodes = lineage(&api, "correlationid=ticket-9").await;
        let steps = nodes
            .iter()
            .filter(|node| node["kind"] == "workflow_step")
            .count();
        if steps >= 3 && nodes.iter().any(|node| node["type"] == "agent.task") {
            break nodes;
        }
        assert!(Instant::now() < deadline, "{nodes:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let question = find(&nodes, "q-1");
    assert_eq!(question["depth"], 0);
    let instance = nodes
        .iter()
        .find(|node| node["kind"] == "workflow_step" && node["parent"] == "q-1")
        .unwrap_or_else(|| panic!("no instance under q-1: {nodes:#?}"));
    assert_eq!(instance["name"], "support/triage");
    assert_eq!(instance["depth"], 1);
    let instance_id = instance["id"].as_str().unwrap();
    let tasks: Vec<&str> = nodes
        .iter()
        .filter(|node| node["kind"] == "workflow_step" && node["parent"] == instance_id)
        .map(|node| node["name"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["read", "ask"], "{nodes:#?}");
    let emitted = nodes
        .iter()
        .find(|node| node["type"] == "agent.task")
        .unwrap();
    assert_eq!(emitted["parent"], instance_id);
    assert_eq!(emitted["depth"], 2);
    // Each node comes after its parent.
    for (index, node) in nodes.iter().enumerate() {
        if let Some(parent) = node["parent"].as_str()
            && let Some(at) = nodes.iter().position(|other| other["id"] == parent)
        {
            assert!(at < index, "{node} before its parent");
        }
    }
}
