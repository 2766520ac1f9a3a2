//! The permission table, walked: every operation of `/openapi.json` and
//! every gRPC method of `herald.proto` must refuse a request without
//! credentials (401 / UNAUTHENTICATED), refuse a key that lacks the action
//! or holds it only on another resource (403 / PERMISSION_DENIED), and
//! accept a key that has it. A route or method added later without its
//! row in `auth::policy` is refused for everyone, so this test fails until
//! the row is written.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use axum::http::Method;
use bytes::{Buf as _, BufMut as _};
use herald_proto::v1;
use herald_server::auth::permissions::Action;
use herald_server::auth::policy::{self, Resource, Rule};
use prost::Message as _;
use serde_json::{Value, json};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::support::{Api, TestServer, expect_json, serve};

pub const BOOTSTRAP: &str = "hrd_test_bootstrap_key_0123456789abcdef0123";

/// A server with a bootstrap key, ready, and an admin client.
pub async fn server_with_auth(env: &[(&str, &str)]) -> (TestServer, Api, Api) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_AUTH__BOOTSTRAP_KEY", BOOTSTRAP);
    for (name, value) in env {
        command.env(name, value);
    }
    let (server, anonymous) = TestServer::ready(TestServer::spawn(dir, command).await).await;
    let admin = anonymous.with_token(BOOTSTRAP);
    (server, anonymous, admin)
}

/// What a key may do for one operation's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    /// The operation's action on everything.
    Has,
    /// The operation's action on `other.*` only.
    ElsewhereOnly,
    /// Every other (non-admin) action, on everything.
    AllBut,
}

fn permissions(action: Action, grant: Grant) -> Value {
    match grant {
        Grant::Has => json!([{ "actions": [action.as_str()], "resources": ["*"] }]),
        Grant::ElsewhereOnly => json!([{ "actions": [action.as_str()], "resources": ["other.*"] }]),
        Grant::AllBut => {
            let others: Vec<&str> = Action::ALL
                .iter()
                .filter(|other| **other != action && **other != Action::Admin)
                .map(|other| other.as_str())
                .collect();
            json!([{ "actions": others, "resources": ["*"] }])
        }
    }
}

/// The fixtures every operation acts on: topic `orders.eu` with group `g`
/// and stream `s-1`, a job in queue `q`, a blob, a spare key. Idempotent.
async fn fixtures(admin: &Api) -> (String, String, String) {
    let _ = admin
        .post("/v1/topics", &json!({ "name": "orders.eu" }))
        .await;
    let _ = admin
        .put("/v1/topics/orders.eu/groups/g", &json!({ "mode": "queue" }))
        .await;
    let _ = admin
        .post_raw(
            "/v1/topics/orders.eu/streams/s-1/events",
            Some("application/cloudevents+json"),
            &[],
            json!({"specversion": "1.0", "id": "s1-0", "source": "/t", "type": "t"}).to_string(),
        )
        .await;
    let job = expect_json(
        admin
            .post("/v1/queues/q/jobs", &json!({ "data": {} }))
            .await,
        202,
    )
    .await;
    let blob = expect_json(
        admin
            .post_raw("/v1/blobs", Some("application/octet-stream"), &[], "blob")
            .await,
        201,
    )
    .await;
    let key = expect_json(
        admin
            .post(
                "/v1/auth/keys",
                &json!({ "name": "spare", "permissions": [{ "actions": ["topics:read"], "resources": ["*"] }] }),
            )
            .await,
        201,
    )
    .await;
    (
        job["job_id"].as_str().unwrap().to_owned(),
        blob["id"].as_str().unwrap().to_owned(),
        key["key_id"].as_str().unwrap().to_owned(),
    )
}

/// The request body an operation gets: enough to reach the permission
/// check of a resource named in the body.
fn body_for(method: &Method, path: &str) -> Option<(&'static str, Vec<u8>)> {
    let json = |value: Value| Some(("application/json", value.to_string().into_bytes()));
    match (method.as_str(), path) {
        ("POST", "/v1/topics") => json(json!({ "name": "orders.eu" })),
        ("POST", "/v1/blobs") => Some(("application/octet-stream", b"bytes".to_vec())),
        ("POST", "/v1/topics/{topic}/events" | "/v1/topics/{topic}/streams/{stream}/events") => {
            Some((
                "application/cloudevents+json",
                json!({"specversion": "1.0", "id": "x", "source": "/t", "type": "t"})
                    .to_string()
                    .into_bytes(),
            ))
        }
        ("POST" | "PUT" | "PATCH", _) => json(json!({})),
        _ => None,
    }
}

#[tokio::test]
async fn given_every_openapi_operation_when_called_should_need_credentials_and_its_permission() {
    let (_server, anonymous, admin) = server_with_auth(&[]).await;
    let document = expect_json(admin.get("/openapi.json").await, 200).await;
    let paths = document["paths"].as_object().unwrap();
    let mut checked = 0;
    for (template, item) in paths {
        for (method, _operation) in item.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let (rule, _) = policy::rule(&method, template)
                .unwrap_or_else(|| panic!("{method} {template} has no permission rule"));
            let (job_id, blob_id, key_id) = fixtures(&admin).await;
            let path = template
                .replace("{topic}", "orders.eu")
                .replace("{group}", "g")
                .replace("{stream}", "s-1")
                .replace("{queue}", "q")
                .replace("{job_id}", &job_id)
                .replace("{id}", &blob_id)
                .replace("{key_id}", &key_id);
            let call = |api: Api| {
                let (method, path) = (method.clone(), path.clone());
                let body = body_for(&method, template);
                async move {
                    let (content_type, bytes) = body.unwrap_or(("", Vec::new()));
                    let content_type = (!content_type.is_empty()).then_some(content_type);
                    api.send_raw(method, &path, content_type, &[], bytes)
                        .await
                        .status()
                        .as_u16()
                }
            };
            let label = format!("{method} {template}");
            let action = match rule {
                Rule::Open => {
                    assert_ne!(call(anonymous.clone()).await, 401, "{label} is open");
                    continue;
                }
                Rule::Docs | Rule::Identified => None,
                Rule::Metrics => Some((Action::MetricsRead, Resource::Any)),
                Rule::On(action, resource) => Some((action, resource)),
            };
            assert_eq!(
                call(anonymous.clone()).await,
                401,
                "{label} without credentials"
            );
            let bad = anonymous.with_token("hrd_0123456789abcdef_not-a-real-secret");
            assert_eq!(call(bad).await, 401, "{label} with a bad key");
            if let Some((action, resource)) = action {
                let lacking = admin
                    .create_key("lacking", permissions(action, Grant::AllBut))
                    .await;
                assert_eq!(
                    call(anonymous.with_token(&lacking)).await,
                    403,
                    "{label} with every action but {action}"
                );
                // A list filters what the caller may see instead.
                let lists = resource == Resource::InBody && method == Method::GET;
                if !lists {
                    let elsewhere = admin
                        .create_key("elsewhere", permissions(action, Grant::ElsewhereOnly))
                        .await;
                    assert_eq!(
                        call(anonymous.with_token(&elsewhere)).await,
                        403,
                        "{label} with {action} on other.* only"
                    );
                }
            }
            let has = match action {
                Some((action, _)) => {
                    admin
                        .create_key("has", permissions(action, Grant::Has))
                        .await
                }
                None => {
                    admin
                        .create_key(
                            "any",
                            json!([{ "actions": ["topics:read"], "resources": ["x"] }]),
                        )
                        .await
                }
            };
            let status = call(anonymous.with_token(&has)).await;
            assert!(
                status != 401 && status != 403,
                "{label} with its permission: {status}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} operations checked");
}

/// Raw protobuf bytes in and out, so one helper can call every method.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let remaining = buf.remaining();
        Ok(Some(buf.copy_to_bytes(remaining).to_vec()))
    }
}

/// The gRPC methods `herald.proto` declares, as `/herald.v1.<Service>/<Method>`.
fn proto_methods() -> Vec<String> {
    let proto = include_str!("../../../herald-proto/proto/herald/v1/herald.proto");
    let mut service = "";
    let mut methods = Vec::new();
    for line in proto.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("service ") {
            service = name.trim_end_matches('{').trim();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap().trim();
            methods.push(format!("/herald.v1.{service}/{name}"));
        }
    }
    methods
}

/// The webhook endpoint the `Webhooks` methods name: none exists, so a call
/// that passes the permission checks answers `endpoint_not_found`.
const ENDPOINT: &str = "ep_0000000000000000000000000000000";

/// One request message per method, naming resources the fixtures made.
fn message(method: &str, job_id: &str, blob_id: &str) -> Vec<u8> {
    let topic = "orders.eu".to_owned();
    let group = "g".to_owned();
    let stream = "s-1".to_owned();
    let event = v1::Event {
        id: "e".into(),
        source: "/t".into(),
        r#type: "t".into(),
        ..v1::Event::default()
    };
    let name = method.rsplit('/').next().unwrap();
    match name {
        "Publish" | "PublishStream" => v1::PublishRequest {
            topic,
            events: vec![event],
            request_id: 1,
        }
        .encode_to_vec(),
        "Read" => v1::ReadRequest {
            topic,
            ..Default::default()
        }
        .encode_to_vec(),
        "Subscribe" => v1::SubscribeRequest {
            topic,
            ..Default::default()
        }
        .encode_to_vec(),
        "CreateTopic" => v1::CreateTopicRequest {
            topic: Some(v1::Topic {
                name: topic,
                partitions: 1,
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "ListTopics" => v1::ListTopicsRequest {}.encode_to_vec(),
        "DescribeTopic" | "DeleteTopic" => v1::TopicRequest { topic }.encode_to_vec(),
        "UpdateTopic" => v1::UpdateTopicRequest {
            topic,
            ..Default::default()
        }
        .encode_to_vec(),
        "PutGroup" => v1::PutGroupRequest {
            topic,
            group: Some(v1::Group {
                name: group,
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "GetGroup" | "DeleteGroup" => v1::GroupRequest { topic, group }.encode_to_vec(),
        "ResetGroup" => v1::ResetGroupRequest {
            topic,
            group,
            ..Default::default()
        }
        .encode_to_vec(),
        "ListDeadLetters" => v1::DeadLettersRequest {
            topic,
            group,
            ..Default::default()
        }
        .encode_to_vec(),
        "Redrive" => v1::RedriveRequest {
            topic,
            group,
            ..Default::default()
        }
        .encode_to_vec(),
        "Consume" => v1::ConsumeRequest {
            request: Some(v1::consume_request::Request::Start(v1::ConsumeStart {
                topic,
                group,
                member: "m".into(),
                credit: 1,
            })),
            seq: 0,
        }
        .encode_to_vec(),
        "Append" => v1::AppendRequest {
            topic,
            stream,
            events: vec![event],
            ..Default::default()
        }
        .encode_to_vec(),
        "ReadStream" => v1::ReadStreamRequest {
            topic,
            stream,
            ..Default::default()
        }
        .encode_to_vec(),
        "GetStream" | "GetSnapshot" => v1::StreamRequest { topic, stream }.encode_to_vec(),
        "DeleteStream" => v1::DeleteStreamRequest {
            topic,
            stream,
            hard: false,
        }
        .encode_to_vec(),
        "PutSnapshot" => v1::PutSnapshotRequest {
            topic,
            stream,
            ..Default::default()
        }
        .encode_to_vec(),
        "SubmitJob" => v1::SubmitJobRequest {
            queue: "q".into(),
            request_json: b"{\"data\":{}}".to_vec().into(),
        }
        .encode_to_vec(),
        "GetJob" => v1::GetJobRequest {
            job_id: job_id.into(),
            wait_ms: 0,
        }
        .encode_to_vec(),
        "WatchJob" => v1::WatchJobRequest {
            job_id: job_id.into(),
        }
        .encode_to_vec(),
        "Progress" | "Complete" => v1::JobUpdateRequest {
            job_id: job_id.into(),
            body_json: b"{}".to_vec().into(),
        }
        .encode_to_vec(),
        "FetchJobs" => v1::FetchJobsRequest {
            queue: "q".into(),
            member: "m".into(),
            max: 1,
            wait_ms: 0,
        }
        .encode_to_vec(),
        "PutBlob" => v1::BlobChunk {
            data: b"chunk".to_vec().into(),
        }
        .encode_to_vec(),
        "GetBlob" => v1::GetBlobRequest {
            id: blob_id.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        // No topics in the filter: the call passes `topics:read` trivially
        // and is refused by the service's own checks (`webhooks.rs` tests
        // the `topics:read` check of a filter).
        "CreateEndpoint" => v1::CreateEndpointRequest {
            endpoint: Some(v1::Endpoint {
                url: "https://hooks.example.com/herald".into(),
                filter: Some(v1::EndpointFilter::default()),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "ListEndpoints" => v1::ListEndpointsRequest {}.encode_to_vec(),
        "GetEndpoint" | "DeleteEndpoint" => v1::EndpointRequest {
            endpoint_id: ENDPOINT.into(),
        }
        .encode_to_vec(),
        "UpdateEndpoint" => v1::UpdateEndpointRequest {
            endpoint_id: ENDPOINT.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "RotateSecret" => v1::RotateSecretRequest {
            endpoint_id: ENDPOINT.into(),
            overlap_ms: None,
        }
        .encode_to_vec(),
        "ListAttempts" => v1::ListAttemptsRequest {
            endpoint_id: ENDPOINT.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "Redeliver" => v1::RedeliverRequest {
            endpoint_id: ENDPOINT.into(),
            message_id: "orders.eu.0.0".into(),
        }
        .encode_to_vec(),
        "Recover" => v1::RecoverRequest {
            endpoint_id: ENDPOINT.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "GetJobNotifications" => v1::JobNotificationsRequest {}.encode_to_vec(),
        other => panic!("no request message for {other}: add one"),
    }
}

/// Calls `method` with one message; the status code it ends with (`Ok` when
/// the call was accepted; `PublishStream` reports a refused batch in its ack).
async fn grpc_call(
    channel: &tonic::transport::Channel,
    method: &str,
    token: Option<&str>,
    bytes: Vec<u8>,
) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(futures::stream::iter(vec![bytes]));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let path = axum::http::uri::PathAndQuery::try_from(method).unwrap();
    let mut response = match grpc.streaming(request, path, Raw).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status.code(),
    };
    if method.ends_with("/PublishStream") {
        let ack = response.message().await.unwrap().unwrap();
        let ack = v1::PublishAck::decode(ack.as_slice()).unwrap();
        return match ack.error {
            Some(failure) if failure.code == "forbidden" => tonic::Code::PermissionDenied,
            _ => tonic::Code::Ok,
        };
    }
    tonic::Code::Ok
}

#[tokio::test]
async fn given_every_grpc_method_when_called_should_need_credentials_and_its_permission() {
    let (server, anonymous, admin) = server_with_auth(&[]).await;
    let channel = tonic::transport::Channel::from_shared(server.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let methods = proto_methods();
    assert!(methods.len() >= 30, "{methods:?}");
    for method in &methods {
        let (rule, _) = policy::rule(&Method::POST, method)
            .unwrap_or_else(|| panic!("gRPC {method} has no permission rule"));
        let Rule::On(action, _) = rule else {
            panic!("gRPC {method} must need an action, not {rule:?}");
        };
        let (job_id, blob_id, _) = fixtures(&admin).await;
        let bytes = message(method, &job_id, &blob_id);
        assert_eq!(
            grpc_call(&channel, method, None, bytes.clone()).await,
            tonic::Code::Unauthenticated,
            "{method} without credentials"
        );
        let lacking = admin
            .create_key("lacking", permissions(action, Grant::AllBut))
            .await;
        assert_eq!(
            grpc_call(&channel, method, Some(&lacking), bytes.clone()).await,
            tonic::Code::PermissionDenied,
            "{method} with every action but {action}"
        );
        if !method.ends_with("/ListTopics") {
            let elsewhere = admin
                .create_key("elsewhere", permissions(action, Grant::ElsewhereOnly))
                .await;
            assert_eq!(
                grpc_call(&channel, method, Some(&elsewhere), bytes.clone()).await,
                tonic::Code::PermissionDenied,
                "{method} with {action} on other.* only"
            );
        }
        let has = admin
            .create_key("has", permissions(action, Grant::Has))
            .await;
        let code = grpc_call(&channel, method, Some(&has), bytes).await;
        assert!(
            code != tonic::Code::Unauthenticated && code != tonic::Code::PermissionDenied,
            "{method} with its permission: {code:?}"
        );
    }
    drop(anonymous);
}
