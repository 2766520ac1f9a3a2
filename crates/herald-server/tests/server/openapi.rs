//! `GET /openapi.json` and `GET /docs` of the running binary.
//!
//! The document is generated from the router itself (each handler's
//! `#[utoipa::path]` registers its route and its operation together), so
//! the checks here are: every documented operation is really routed (the
//! router's own 404/405 fallbacks never answer it), the contract of
//! `api.md` is all there, and the document is OpenAPI 3.1 with every error
//! response a problem.

use serde_json::Value;

use crate::support::{TestServer, expect_json};

/// The routes of `api.md` (Topics, Events, Consumer groups, Operations) that
/// the gateway serves: each must be in the document.
const CONTRACT: &[(&str, &str)] = &[
    ("post", "/v1/topics"),
    ("get", "/v1/topics"),
    ("get", "/v1/topics/{topic}"),
    ("patch", "/v1/topics/{topic}"),
    ("delete", "/v1/topics/{topic}"),
    ("post", "/v1/topics/{topic}/events"),
    ("get", "/v1/topics/{topic}/events"),
    ("get", "/v1/topics/{topic}/events/stream"),
    ("get", "/v1/topics/{topic}/ws"),
    ("put", "/v1/topics/{topic}/groups/{group}"),
    ("get", "/v1/topics/{topic}/groups/{group}"),
    ("delete", "/v1/topics/{topic}/groups/{group}"),
    ("post", "/v1/topics/{topic}/groups/{group}/fetch"),
    ("post", "/v1/topics/{topic}/groups/{group}/ack"),
    ("post", "/v1/topics/{topic}/groups/{group}/nack"),
    ("post", "/v1/topics/{topic}/groups/{group}/extend"),
    ("post", "/v1/topics/{topic}/groups/{group}/reject"),
    ("post", "/v1/topics/{topic}/groups/{group}/commit"),
    ("post", "/v1/topics/{topic}/groups/{group}/reset"),
    ("post", "/v1/topics/{topic}/groups/{group}/leave"),
    ("get", "/v1/topics/{topic}/groups/{group}/dead-letters"),
    (
        "post",
        "/v1/topics/{topic}/groups/{group}/dead-letters/redrive",
    ),
    ("get", "/v1/topics/{topic}/groups/{group}/ws"),
    ("post", "/v1/admin/flush"),
    ("post", "/v1/admin/compact"),
    ("post", "/v1/blobs"),
    ("get", "/v1/blobs/{id}"),
    ("post", "/v1/queues/{queue}/jobs"),
    ("get", "/v1/jobs/{job_id}"),
    ("get", "/v1/jobs/{job_id}/events"),
    ("post", "/v1/jobs/{job_id}/progress"),
    ("post", "/v1/jobs/{job_id}/complete"),
    ("post", "/v1/queues/{queue}/fetch"),
    ("post", "/v1/queues/{queue}/ack"),
    ("post", "/v1/queues/{queue}/nack"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for method in METHODS {
            if let Some(operation) = item.get(*method) {
                found.push(((*method).to_owned(), path.clone(), operation.clone()));
            }
        }
    }
    found
}

#[tokio::test]
async fn given_running_server_when_get_openapi_json_should_describe_every_routed_operation() {
    let (_server, api) = TestServer::start_ready().await;
    let document = expect_json(api.get("/openapi.json").await, 200).await;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        document["openapi"]
    );
    assert_eq!(document["info"]["title"], "Herald");
    let operations = operations(&document);
    for (method, path) in CONTRACT {
        assert!(
            operations.iter().any(|(m, p, _)| m == method && p == path),
            "{method} {path} is not in /openapi.json"
        );
    }
    // The document comes from the router, and every operation in it is
    // routed: the router's fallbacks (not_found, method_not_allowed) never
    // answer. The topic and group are left missing, so nothing changes.
    for (method, path, operation) in &operations {
        let concrete = path
            .replace("{topic}", "no-such-topic")
            .replace("{group}", "no-such-group");
        let response = api
            .client
            .request(method.to_uppercase().parse().unwrap(), api.url(&concrete))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            !matches!(
                body["code"].as_str(),
                Some("not_found" | "method_not_allowed")
            ),
            "{method} {path} is documented but not routed: {status} {body}"
        );
        // Every error response of a /v1 operation is a problem.
        if path.starts_with("/v1/") {
            let responses = operation["responses"].as_object().unwrap();
            let errors: Vec<_> = responses
                .iter()
                .filter(|(status, _)| status.starts_with('4') || status.starts_with('5'))
                .collect();
            assert!(!errors.is_empty(), "{method} {path} documents no errors");
            for (status, response) in errors {
                assert_eq!(
                    response["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
            }
        }
    }
    let codes = &document["components"]["schemas"]["ErrorCode"]["enum"];
    assert!(
        codes
            .as_array()
            .unwrap()
            .contains(&"topic_not_found".into())
    );
}

#[tokio::test]
async fn given_openapi_json_should_describe_content_types_of_publish_sse_and_websockets() {
    let (_server, api) = TestServer::start_ready().await;
    let document = expect_json(api.get("/openapi.json").await, 200).await;
    let paths = &document["paths"];
    let publish = &paths["/v1/topics/{topic}/events"]["post"]["requestBody"]["content"];
    for media in [
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "application/json",
    ] {
        assert!(publish.get(media).is_some(), "publish lacks {media}");
    }
    let sse = &paths["/v1/topics/{topic}/events/stream"]["get"]["responses"]["200"]["content"];
    assert!(sse.get("text/event-stream").is_some(), "{sse}");
    for socket in [
        "/v1/topics/{topic}/ws",
        "/v1/topics/{topic}/groups/{group}/ws",
    ] {
        assert!(
            paths[socket]["get"]["responses"].get("101").is_some(),
            "{socket}"
        );
    }
}

#[tokio::test]
async fn given_running_server_when_get_docs_should_serve_swagger_ui_locally() {
    let (_server, api) = TestServer::start_ready().await;
    let response = api.get("/docs/").await;
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("swagger"), "{page}");
    // The assets come from the binary, not a CDN.
    assert!(!page.contains("https://"), "{page}");
    let script = api.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(script.status(), 200);
}
