//! OpenTelemetry export of the real binary to a real OTLP receiver (this
//! test's, decoding with the `opentelemetry-proto` types): one event's
//! journey — publish, queue delivery, ack, a job its consumer submits, the
//! job's dispatch and end, the webhook that notifies its end — is one
//! trace, each hop a span parented on the one before; over OTLP/HTTP and
//! OTLP/gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{Value, json};

use crate::support::{Api, TestServer, expect_json, serve};

/// The client's own span, the root of the trace.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

/// Spans received, with their resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

fn keep(received: &Received, request: ExportTraceServiceRequest) {
    let mut received = received.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|attribute| attribute.key == "service.name")
            .and_then(|attribute| attribute.value.as_ref()?.value.clone())
            .map(|value| match value {
                AnyValue::StringValue(name) => name,
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push((service.clone(), span));
            }
        }
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf bodies).
async fn http_receiver() -> (SocketAddr, Received) {
    let received = Received::default();
    let keep_in = Arc::clone(&received);
    let router = Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = Arc::clone(&keep_in);
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        keep(&received, request);
                        StatusCode::OK
                    }
                    Err(_) => StatusCode::BAD_REQUEST,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, received)
}

struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC receiver (HTTP/2 without TLS, as the server's own gRPC).
async fn grpc_receiver() -> (SocketAddr, Received) {
    use tower::ServiceExt as _;
    let received = Received::default();
    let service = TraceServiceServer::new(GrpcReceiver(Arc::clone(&received)))
        .map_request(|request: axum::http::Request<axum::body::Body>| {
            request.map(tonic::body::Body::new)
        })
        .map_response(axum::response::IntoResponse::into_response);
    let router = Router::new().route_service(
        "/opentelemetry.proto.collector.trace.v1.TraceService/{*method}",
        service,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, received)
}

/// A webhook receiver keeping each request's headers.
async fn webhook_receiver() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let record = Arc::clone(&seen);
    let router = Router::new().fallback(move |headers: HeaderMap| {
        let record = Arc::clone(&record);
        async move {
            record.lock().unwrap().push(headers);
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, seen)
}

/// A server exporting to `endpoint` over `protocol`, flushing spans every
/// 100 ms, allowed to notify webhooks on loopback.
async fn server(endpoint: &str, protocol: &str) -> (TestServer, Api) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command
        .env("HERALD_LOG__FORMAT", "json")
        .env("HERALD_LOG__LEVEL", "info,herald_webhooks=debug")
        .env("HERALD_TELEMETRY__OTLP_ENDPOINT", endpoint)
        .env("HERALD_TELEMETRY__OTLP_PROTOCOL", protocol)
        .env("HERALD_TELEMETRY__SERVICE_NAME", "herald-under-test")
        .env("HERALD_WEBHOOKS__ALLOW_TARGETS", r#"["127.0.0.1/32"]"#)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    TestServer::ready(TestServer::spawn(dir, command).await).await
}

async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The span id of a `traceparent`.
fn span_of(traceparent: &str) -> String {
    traceparent.split('-').nth(2).unwrap().to_owned()
}

/// The spans named `name` received so far.
fn named(received: &Received, name: &str) -> Vec<Span> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, span)| span.name == name)
        .map(|(_, span)| span.clone())
        .collect()
}

/// Waits for the one span named `name`, and checks it is in the trace and
/// a child of `parent`.
async fn hop(received: &Received, name: &str, parent: &str) -> Span {
    let seen = || {
        let received = received.lock().unwrap();
        let names: Vec<(String, String)> = received
            .iter()
            .map(|(_, span)| (span.name.clone(), hex(&span.parent_span_id)))
            .collect();
        format!("span {name} (received: {names:?})")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let span = loop {
        if let Some(span) = named(received, name).into_iter().next() {
            break span;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}",
            seen()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(hex(&span.trace_id), TRACE_ID, "{name} is in the trace");
    assert_eq!(hex(&span.parent_span_id), parent, "{name}'s parent");
    span
}

#[tokio::test]
async fn given_otlp_http_when_an_event_travels_to_a_job_and_its_webhook_should_export_one_trace_of_its_hops()
 {
    let (otlp, received) = http_receiver().await;
    let (hooks, seen) = webhook_receiver().await;
    let (server, api) = server(&format!("http://{otlp}/v1/traces"), "http/protobuf").await;
    let http = reqwest::Client::new();
    api.create_topic(json!({"name": "orders", "partitions": 1}))
        .await;
    api.put_group("orders", "billing", json!({"mode": "queue"}))
        .await;

    // A client publishes in its own trace.
    let client = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let published = http
        .post(api.url("/v1/topics/orders/events"))
        .header("traceparent", &client)
        .json(
            &json!({"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "order.placed"}),
        )
        .send()
        .await
        .unwrap();
    expect_json(published, 201).await;

    // Its consumer gets it, and submits a job in the delivery's trace.
    let fetched = api.fetch("orders", "billing", "c1", 1, 5_000).await;
    let delivery = &fetched["deliveries"][0];
    let delivered = delivery["event"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(delivered.contains(TRACE_ID), "{delivered}");
    let submitted = http
        .post(api.url("/v1/queues/invoices/jobs"))
        .header("traceparent", &delivered)
        .json(&json!({
            "data": {"order": "o-1"},
            "correlationid": "o-1",
            "notify": {"webhook_url": format!("http://{hooks}/done")},
        }))
        .send()
        .await
        .unwrap();
    let job_id = expect_json(submitted, 202).await["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    api.group_call(
        "orders",
        "billing",
        "ack",
        json!({"delivery_ids": [delivery["delivery_id"]]}),
    )
    .await;

    // A worker does the job; its end is notified.
    let work = crate::jobs::fetch_one(&api, "invoices", "w1").await;
    let dispatched = work["traceparent"].as_str().unwrap().to_owned();
    let body = json!({"delivery_id": work["delivery_id"], "result": {"invoice": 7}});
    expect_json(crate::jobs::complete(&api, &job_id, body).await, 200).await;
    let notified = until("the webhook", || {
        let seen = seen.lock().unwrap();
        seen.first()
            .and_then(|headers| headers.get("traceparent"))
            .map(|value| value.to_str().unwrap().to_owned())
    })
    .await;

    // One trace, each hop under the one it came from.
    let publish = hop(&received, "publish", CLIENT_SPAN).await;
    let deliver = hop(&received, "deliver", &hex(&publish.span_id)).await;
    assert_eq!(span_of(&delivered), hex(&deliver.span_id));
    let ack = hop(&received, "ack", &hex(&deliver.span_id)).await;
    assert_eq!(ack.kind, 1, "ack is internal");
    let submit = hop(&received, "job.submit", &span_of(&delivered)).await;
    let dispatch = hop(&received, "job.dispatch", &hex(&submit.span_id)).await;
    assert_eq!(span_of(&dispatched), hex(&dispatch.span_id));
    let succeeded = hop(&received, "job.succeeded", &hex(&submit.span_id)).await;
    let attempt = hop(&received, "webhook.attempt", &hex(&succeeded.span_id)).await;
    assert_eq!(span_of(&notified), hex(&attempt.span_id));
    // Kinds: producer (4), consumer (5), client (3).
    assert_eq!(publish.kind, 4);
    assert_eq!(deliver.kind, 5);
    assert_eq!(attempt.kind, 3);
    let services: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(service, _)| service.clone())
        .collect();
    assert!(
        services
            .iter()
            .all(|service| service == "herald-under-test"),
        "{services:?}"
    );
    // Nothing else is exported (hop spans only, each once), and the job
    // carries its lineage on.
    let job = crate::jobs::job(&api, &job_id, 0).await;
    assert_eq!(job["correlationid"], "o-1");
    let names: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, span)| span.name.clone())
        .collect();
    assert_eq!(
        names.iter().filter(|name| *name == "publish").count(),
        1,
        "{names:?}"
    );
    // A log line written inside a hop carries its trace id.
    server.signal("TERM").await;
    let (_, stderr, _) = server.wait().await;
    let line = stderr
        .lines()
        .find(|line| line.contains("Webhook attempt sent."))
        .unwrap_or_else(|| panic!("no attempt logged:\n{stderr}"));
    let line: Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["span"]["trace_id"], TRACE_ID, "{line}");
}

#[tokio::test]
async fn given_otlp_grpc_when_a_tail_subscriber_gets_an_event_should_export_publish_and_push_in_one_trace()
 {
    let (otlp, received) = grpc_receiver().await;
    let (_server, api) = server(&format!("http://{otlp}"), "grpc").await;
    api.create_topic(json!({"name": "news", "partitions": 1}))
        .await;
    let client = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    // The event carries the client's trace itself (structured mode).
    api.publish(
        "news",
        json!([{"specversion": "1.0", "id": "n-1", "source": "/desk", "type": "story",
               "traceparent": client}]),
    )
    .await;
    let response = reqwest::Client::new()
        .get(api.url("/v1/topics/news/events/stream?from=earliest"))
        .send()
        .await
        .unwrap();
    let frames = crate::support::sse_frames(response, |frames| !frames.is_empty()).await;
    let pushed: &Value = &frames[0].data;
    let publish = hop(&received, "publish", CLIENT_SPAN).await;
    let push = hop(&received, "push", &hex(&publish.span_id)).await;
    assert_eq!(
        span_of(pushed["traceparent"].as_str().unwrap()),
        hex(&push.span_id)
    );
}

#[tokio::test]
async fn given_tracing_off_when_an_event_is_published_should_store_it_as_sent() {
    let (_server, api) = TestServer::start_ready().await;
    api.create_topic(json!({"name": "plain", "partitions": 1}))
        .await;
    api.publish(
        "plain",
        json!([{"specversion": "1.0", "id": "p-1", "source": "/s", "type": "t"}]),
    )
    .await;
    let stored = api.partition_events("plain", 0).await;
    assert!(stored[0].1.get("traceparent").is_none(), "{:?}", stored[0]);
}

#[tokio::test]
async fn given_otlp_when_an_event_starts_a_workflow_and_a_stream_append_continues_a_trace_should_export_their_spans()
 {
    let (otlp, received) = http_receiver().await;
    let (_server, api) = server(&format!("http://{otlp}/v1/traces"), "http/protobuf").await;
    crate::lineage::triage_workflow(&api).await;
    api.create_topic(json!({"name": "carts", "partitions": 1}))
        .await;
    let client = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    api.publish(
        "questions",
        json!([{"specversion": "1.0", "id": "q-1", "source": "/web", "type": "question.asked",
                "traceparent": client, "data": {"text": "where?"}}]),
    )
    .await;
    let publish = hop(&received, "publish", CLIENT_SPAN).await;
    let run = hop(&received, "workflow.run", &hex(&publish.span_id)).await;
    let read = hop(&received, "task read", &hex(&run.span_id)).await;
    let ask = hop(&received, "task ask", &hex(&run.span_id)).await;
    assert!(read.end_time_unix_nano <= ask.start_time_unix_nano);
    // What the task emitted carries the task's context.
    let tasks = api.partition_events("tasks", 0).await;
    let stamped = tasks[0].1["traceparent"].as_str().unwrap().to_owned();
    assert_eq!(span_of(&stamped), hex(&ask.span_id));

    // A stream append continues the request's trace.
    let appended = reqwest::Client::new()
        .post(api.url("/v1/topics/carts/streams/cart-1/events"))
        .header("traceparent", &client)
        .json(&json!({"specversion": "1.0", "id": "c-1", "source": "/shop", "type": "cart.opened"}))
        .send()
        .await
        .unwrap();
    expect_json(appended, 201).await;
    hop(&received, "append", CLIENT_SPAN).await;
}
