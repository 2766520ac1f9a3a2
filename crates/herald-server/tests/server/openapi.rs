//! `GET /openapi.json` and `GET /docs` of the running binary.
//!
//! The document is generated from the router itself (each handler's
//! `#[utoipa::path]` registers its route and its operation together), so
//! the checks here are: every documented operation is really routed (the
//! router's own 404/405 fallbacks never answer it), the REST contract of
//! `docs/api.md` and the document list the same routes, the document is
//! OpenAPI 3.1 with every error response a problem, its operation ids are
//! unique, it states the server's limits, and its links are valid.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{TestServer, expect_json};

/// The REST contract, kept equal to the document by
/// [`given_openapi_json_and_docs_api_md_should_list_the_same_routes`].
const API_MD: &str = include_str!("../../../../docs/api.md");

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// The routes of `docs/api.md`: `(method, path, planned)` for every table row
/// whose first cell is one backticked `METHOD /path`. A route under a
/// heading marked "(planned)" is not built yet.
fn contract_routes() -> Vec<(String, String, bool)> {
    let mut routes = Vec::new();
    let mut planned = false;
    for line in API_MD.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            planned = heading.contains("(planned)");
            continue;
        }
        let Some(cell) = line
            .strip_prefix("| `")
            .and_then(|row| row.split('`').next())
        else {
            continue;
        };
        let Some((method, path)) = cell.split_once(' ') else {
            continue;
        };
        if METHODS.contains(&method.to_lowercase().as_str()) && path.starts_with('/') {
            routes.push((method.to_lowercase(), path.to_owned(), planned));
        }
    }
    routes
}

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
    // The document comes from the router, and every operation in it is
    // routed: the router's fallbacks (not_found, method_not_allowed) never
    // answer. The topic and group are left missing, so nothing changes.
    for (method, path, operation) in &operations {
        if method == "head" {
            // reqwest reads no body of a HEAD; the GET of the path is checked.
            continue;
        }
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

#[tokio::test]
async fn given_openapi_json_and_docs_api_md_should_list_the_same_routes() {
    let (_server, api) = TestServer::start_ready().await;
    let document = expect_json(api.get("/openapi.json").await, 200).await;
    let documented: BTreeSet<(String, String)> = operations(&document)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let contract = contract_routes();
    let built: BTreeSet<(String, String)> = contract
        .iter()
        .filter(|(_, _, planned)| !planned)
        .map(|(method, path, _)| (method.clone(), path.clone()))
        .collect();
    assert!(built.len() >= 40, "docs/api.md lists only {built:?}");
    let undocumented: Vec<_> = documented.difference(&built).collect();
    assert!(
        undocumented.is_empty(),
        "in /openapi.json but not in docs/api.md (add a row): {undocumented:?}"
    );
    let unrouted: Vec<_> = built.difference(&documented).collect();
    assert!(
        unrouted.is_empty(),
        "in docs/api.md but not in /openapi.json (mark it planned, or build it): {unrouted:?}"
    );
    for (method, path, _) in contract.iter().filter(|(_, _, planned)| *planned) {
        assert!(
            !documented.contains(&(method.clone(), path.clone())),
            "{method} {path} is built: move it out of its planned section in docs/api.md"
        );
    }
}

#[tokio::test]
async fn given_openapi_json_should_give_every_operation_a_unique_operation_id() {
    let (_server, api) = TestServer::start_ready().await;
    let document = expect_json(api.get("/openapi.json").await, 200).await;
    let mut seen = BTreeSet::new();
    for (method, path, operation) in operations(&document) {
        let id = operation["operationId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!id.is_empty(), "{method} {path} has no operationId");
        assert!(
            seen.insert(id.clone()),
            "operationId {id} is used twice ({method} {path})"
        );
    }
}

/// The schema at `pointer` of the document.
fn at<'a>(document: &'a Value, pointer: &str) -> &'a Value {
    document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("/openapi.json has nothing at {pointer}"))
}

fn parameter<'a>(document: &'a Value, method: &str, path: &str, name: &str) -> &'a Value {
    let operation = &document["paths"][path][method];
    operation["parameters"]
        .as_array()
        .and_then(|parameters| parameters.iter().find(|p| p["name"] == name))
        .map(|parameter| &parameter["schema"])
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

#[tokio::test]
async fn given_openapi_json_should_state_the_limits_the_server_checks() {
    use herald_backend::group::{MAX_FETCH, MAX_FETCH_WAIT_MS, MAX_IN_FLIGHT_LIMIT};
    use herald_backend::topic::{MAX_EVENT_BYTES_LIMIT, MAX_PARTITIONS};

    let (_server, api) = TestServer::start_ready().await;
    let document = expect_json(api.get("/openapi.json").await, 200).await;
    let schemas = "/components/schemas";
    for (pointer, keyword, value) in [
        (
            "TopicSpec/properties/partitions",
            "maximum",
            u64::from(MAX_PARTITIONS),
        ),
        ("TopicSpec/properties/max_event_bytes", "minimum", 1),
        (
            "TopicSpec/properties/max_event_bytes",
            "maximum",
            MAX_EVENT_BYTES_LIMIT,
        ),
        ("GroupSpec/properties/ack_wait_ms", "minimum", 1),
        (
            "GroupSpec/properties/max_in_flight",
            "maximum",
            u64::from(MAX_IN_FLIGHT_LIMIT),
        ),
        ("QueueFetch/properties/max", "maximum", u64::from(MAX_FETCH)),
        (
            "QueueFetch/properties/wait_ms",
            "maximum",
            MAX_FETCH_WAIT_MS,
        ),
        ("QueueFetch/properties/member", "minLength", 1),
        ("LeaveRequest/properties/member", "maxLength", 200),
        ("ExtendRequest/properties/ack_wait_ms", "minimum", 1),
        ("SubmitRequest/properties/parts", "minItems", 1),
    ] {
        assert_eq!(
            at(&document, &format!("{schemas}/{pointer}"))[keyword],
            value,
            "{pointer} {keyword}"
        );
    }
    // Names in paths follow the naming rule wherever they appear.
    for (method, path, name) in [
        (
            "post",
            "/v1/topics/{topic}/streams/{stream}/events",
            "topic",
        ),
        (
            "post",
            "/v1/topics/{topic}/streams/{stream}/events",
            "stream",
        ),
        (
            "get",
            "/v1/topics/{topic}/streams/{stream}/snapshot",
            "stream",
        ),
    ] {
        let reference = parameter(&document, method, path, name)["$ref"]
            .as_str()
            .unwrap();
        let pattern = &at(&document, &reference[1..])["pattern"];
        assert_eq!(
            pattern,
            herald_types::openapi::NAME_PATTERN,
            "{path} {name}"
        );
    }
    let queue = parameter(&document, "post", "/v1/queues/{queue}/jobs", "queue");
    assert_eq!(queue["maxLength"], 195);
    let limit = parameter(
        &document,
        "get",
        "/v1/topics/{topic}/streams/{stream}/events",
        "limit",
    );
    assert_eq!(limit["maximum"], 1000);
    // An extension attribute is 1–20 of a-z0-9 and not a reserved name.
    let event = at(&document, &format!("{schemas}/CloudEvent"));
    assert_eq!(event["additionalProperties"], false, "{event}");
    let names: Vec<&String> = event["patternProperties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert!(names[0].contains("appendedat") && names[0].ends_with("[a-z0-9]{1,20}$"));
}

/// The stated limits are the server's: the bound is accepted, one past it
/// refused with 400 (a schema stricter or looser than the server fails here).
#[tokio::test]
async fn given_stated_bounds_when_sent_at_and_past_them_should_be_accepted_and_refused() {
    let (_server, api) = TestServer::start_ready().await;
    let document = expect_json(api.get("/openapi.json").await, 200).await;
    let property = |schema: &str, name: &str, keyword: &str| {
        at(
            &document,
            &format!("/components/schemas/{schema}/properties/{name}"),
        )[keyword]
            .as_u64()
            .unwrap_or_else(|| panic!("{schema}.{name} states no {keyword}"))
    };
    api.create_topic(serde_json::json!({"name": "bounds"}))
        .await;
    let partitions = property("TopicSpec", "partitions", "maximum");
    let in_flight = property("GroupSpec", "max_in_flight", "maximum");
    let fetch_max = property("FetchRequest", "max", "maximum");
    let member = property("LeaveRequest", "member", "maxLength") as usize;
    type Case = (&'static str, &'static str, Box<dyn Fn(u64) -> Value>);
    let cases: Vec<Case> = vec![
        (
            "put",
            "/v1/topics/bounds/groups/g",
            Box::new(|v| serde_json::json!({"mode": "queue", "max_in_flight": v})),
        ),
        (
            "post",
            "/v1/topics/bounds/groups/g/fetch",
            Box::new(|v| serde_json::json!({"member": "m", "max": v})),
        ),
        (
            "post",
            "/v1/topics/bounds/groups/g/leave",
            Box::new(|v| serde_json::json!({"member": "m".repeat(v as usize)})),
        ),
        (
            "post",
            "/v1/topics",
            Box::new(|v| serde_json::json!({"name": format!("t{v}"), "partitions": v})),
        ),
    ];
    for ((method, path, body), bound) in
        cases
            .into_iter()
            .zip([in_flight, fetch_max, member as u64, partitions])
    {
        let send = |value: u64| {
            let body = body(value);
            let api = &api;
            async move {
                match method {
                    "put" => api.put(path, &body).await,
                    _ => api.post(path, &body).await,
                }
            }
        };
        let at_bound = send(bound).await.status().as_u16();
        assert!(
            (200..300).contains(&at_bound),
            "{method} {path} at {bound}: {at_bound}"
        );
        let past = send(bound + 1).await;
        assert_eq!(
            past.status().as_u16(),
            400,
            "{method} {path} at {}",
            bound + 1
        );
    }
}

/// Whether `schema` (through `$ref` and `allOf`) has the property `field`.
fn has_property(document: &Value, schema: &Value, field: &str) -> bool {
    let schema = match schema["$ref"].as_str() {
        Some(reference) => at(document, &reference[1..]),
        None => schema,
    };
    !schema["properties"][field].is_null()
        || schema["allOf"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|part| has_property(document, part, field))
}

/// Every link names an operation of the document, parameters it has, and
/// takes its values from what the source operation has: its path
/// parameters, its request body, the properties of its response.
#[tokio::test]
async fn given_openapi_json_links_should_join_existing_operations_by_existing_fields() {
    let (_server, api) = TestServer::start_ready().await;
    let document = expect_json(api.get("/openapi.json").await, 200).await;
    let all = operations(&document);
    let by_id: std::collections::BTreeMap<&str, &Value> = all
        .iter()
        .filter_map(|(_, _, operation)| operation["operationId"].as_str().map(|id| (id, operation)))
        .collect();
    let mut count = 0;
    for (method, path, operation) in &all {
        for (status, response) in operation["responses"].as_object().unwrap() {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                count += 1;
                let label = format!("{method} {path} {status} → {name}");
                let target_id = link["operationId"].as_str().unwrap();
                let target = by_id
                    .get(target_id)
                    .unwrap_or_else(|| panic!("{label}: no {target_id}"));
                let target_parameters: Vec<&str> = target["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                let mut expressions = Vec::new();
                for (parameter, expression) in link["parameters"].as_object().unwrap() {
                    assert!(
                        target_parameters.contains(&parameter.as_str()),
                        "{label}: {parameter}"
                    );
                    expressions.push(expression.clone());
                }
                let mut stack = vec![link.get("requestBody").cloned().unwrap_or(Value::Null)];
                while let Some(value) = stack.pop() {
                    match value {
                        Value::Array(items) => stack.extend(items),
                        Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
                        string @ Value::String(_) => expressions.push(string),
                        _ => {}
                    }
                }
                if link.get("requestBody").is_some() {
                    assert!(
                        !target["requestBody"].is_null(),
                        "{label}: target takes no body"
                    );
                }
                for expression in expressions.iter().filter_map(Value::as_str) {
                    if let Some(name) = expression.strip_prefix("$request.path.") {
                        assert!(
                            path.contains(&format!("{{{name}}}")),
                            "{label}: {expression}"
                        );
                    } else if expression.starts_with("$request.body#/") {
                        assert!(!operation["requestBody"].is_null(), "{label}: {expression}");
                    } else if let Some(pointer) = expression.strip_prefix("$response.body#/") {
                        let field = pointer.split('/').next().unwrap();
                        let schema = &response["content"]["application/json"]["schema"];
                        assert!(
                            has_property(&document, schema, field),
                            "{label}: {expression} is not in the response {schema}"
                        );
                    } else {
                        assert!(!expression.starts_with('$'), "{label}: {expression}");
                    }
                }
            }
        }
    }
    assert!(count >= 40, "only {count} links");
}

#[tokio::test]
async fn given_openapi_json_should_document_the_worker_progress_body_and_job_times() {
    let (_server, api) = TestServer::start_ready().await;
    let document = expect_json(api.get("/openapi.json").await, 200).await;
    let body = &document["paths"]["/v1/jobs/{job_id}/progress"]["post"]["requestBody"];
    let description = body["description"].as_str().unwrap_or_default();
    for field in ["part", "progress", "message", "delivery_id", "running"] {
        assert!(description.contains(field), "{field}: {body}");
    }
    let example = &body["content"]["application/json"]["example"];
    assert!(example["progress"].is_number(), "{body}");
    let schema = at(&document, "/components/schemas/ProgressRequest");
    for field in ["part", "progress", "message", "delivery_id"] {
        let property = &schema["properties"][field];
        assert!(property["description"].is_string(), "{field}: {schema}");
    }
    assert_eq!(schema["additionalProperties"], false, "{schema}");
    // The job it answers with: times are RFC 3339 strings.
    let job = at(&document, "/components/schemas/Job");
    for field in ["created_at", "updated_at", "deadline_at", "expires_at"] {
        let kind = &job["properties"][field]["type"];
        assert!(
            kind == "string" || kind == &serde_json::json!(["string", "null"]),
            "{field}: {job}"
        );
    }
}
