//! THE permission table: for every route (REST by method and route
//! template, gRPC by method path) the action it needs and where its
//! resource comes from, and the route layer that enforces it
//! ([`enforce`]; the steps are in the [module docs](super)).
//!
//! A route with no row is refused with 403 (fail closed), so a route added
//! without a row cannot be reached; the table-driven test
//! (`tests/server/auth_table.rs`) walks every operation of
//! `/openapi.json` and every gRPC method against it.

use std::sync::Arc;

use axum::extract::{FromRequestParts as _, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use super::permissions::{self, Action};
use super::{Auth, PeerCertificate, Principal};
use crate::http::JobsSlot;
use crate::problem::{Code, Problem};

/// The query parameter that may carry a token on SSE and WebSocket routes
/// (browsers cannot set headers there).
pub const ACCESS_TOKEN: &str = "access_token";

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Nothing: `/healthz`, `/readyz`, gRPC health, the console's files
    /// (`/ui`).
    Open,
    /// Open when `auth.public_docs`, else any identity: `/openapi.json`,
    /// `/docs`, gRPC reflection.
    Docs,
    /// Open when `auth.public_metrics`, else `metrics:read`.
    Metrics,
    /// Any identity (`GET /v1/auth/whoami`).
    Identified,
    /// `action` on the resource `Resource` names.
    On(Action, Resource),
}

/// Where a route's resource comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// The path parameter of this name (`topic`, `queue`).
    Path(&'static str),
    /// The queue of the job `{job_id}` names.
    Job,
    /// The blob `{id}` names.
    Blob,
    /// No name: `*` (admin routes, uploads).
    Any,
    /// Inside the body or gRPC message: the layer checks that the action is
    /// granted on some resource, the handler checks the one it reads
    /// ([`super::Caller::require`]), or filters a list to what the caller
    /// may see.
    InBody,
}

/// One REST route.
#[derive(Debug, Clone, Copy)]
pub struct RestRoute {
    /// `GET`, `POST`, …
    pub method: &'static str,
    /// The route template, as axum's `MatchedPath` gives it.
    pub path: &'static str,
    /// What it needs.
    pub rule: Rule,
    /// Whether `?access_token=` is accepted (SSE and WebSocket only).
    pub query_token: bool,
}

const fn rest(method: &'static str, path: &'static str, rule: Rule) -> RestRoute {
    RestRoute {
        method,
        path,
        rule,
        query_token: false,
    }
}

/// An SSE or WebSocket route: a token may come in `?access_token=`.
const fn push(path: &'static str, rule: Rule) -> RestRoute {
    RestRoute {
        method: "GET",
        path,
        rule,
        query_token: true,
    }
}

const fn on(action: Action, resource: Resource) -> Rule {
    Rule::On(action, resource)
}

const TOPIC: Resource = Resource::Path("topic");
const QUEUE: Resource = Resource::Path("queue");

/// Every REST route (swagger UI's `/docs/...` aside: [`Rule::Docs`]; and
/// the console's `/ui/...`: [`Rule::Open`]).
pub const REST: &[RestRoute] = &[
    rest("GET", "/healthz", Rule::Open),
    rest("GET", "/readyz", Rule::Open),
    rest("GET", "/metrics", Rule::Metrics),
    rest("GET", "/openapi.json", Rule::Docs),
    // topics
    rest(
        "POST",
        "/v1/topics",
        on(Action::TopicsManage, Resource::InBody),
    ),
    rest(
        "GET",
        "/v1/topics",
        on(Action::TopicsRead, Resource::InBody),
    ),
    rest("GET", "/v1/topics/{topic}", on(Action::TopicsRead, TOPIC)),
    rest(
        "PATCH",
        "/v1/topics/{topic}",
        on(Action::TopicsManage, TOPIC),
    ),
    rest(
        "DELETE",
        "/v1/topics/{topic}",
        on(Action::TopicsManage, TOPIC),
    ),
    // events
    rest(
        "POST",
        "/v1/topics/{topic}/events",
        on(Action::TopicsPublish, TOPIC),
    ),
    rest(
        "GET",
        "/v1/topics/{topic}/events",
        on(Action::TopicsRead, TOPIC),
    ),
    push(
        "/v1/topics/{topic}/events/stream",
        on(Action::TopicsRead, TOPIC),
    ),
    push("/v1/topics/{topic}/ws", on(Action::TopicsRead, TOPIC)),
    // groups
    rest(
        "GET",
        "/v1/topics/{topic}/groups",
        on(Action::GroupsRead, TOPIC),
    ),
    rest(
        "PUT",
        "/v1/topics/{topic}/groups/{group}",
        on(Action::GroupsManage, TOPIC),
    ),
    rest(
        "GET",
        "/v1/topics/{topic}/groups/{group}",
        on(Action::GroupsRead, TOPIC),
    ),
    rest(
        "DELETE",
        "/v1/topics/{topic}/groups/{group}",
        on(Action::GroupsManage, TOPIC),
    ),
    rest(
        "POST",
        "/v1/topics/{topic}/groups/{group}/fetch",
        on(Action::TopicsConsume, TOPIC),
    ),
    rest(
        "POST",
        "/v1/topics/{topic}/groups/{group}/ack",
        on(Action::TopicsConsume, TOPIC),
    ),
    rest(
        "POST",
        "/v1/topics/{topic}/groups/{group}/nack",
        on(Action::TopicsConsume, TOPIC),
    ),
    rest(
        "POST",
        "/v1/topics/{topic}/groups/{group}/extend",
        on(Action::TopicsConsume, TOPIC),
    ),
    rest(
        "POST",
        "/v1/topics/{topic}/groups/{group}/reject",
        on(Action::TopicsConsume, TOPIC),
    ),
    rest(
        "POST",
        "/v1/topics/{topic}/groups/{group}/commit",
        on(Action::TopicsConsume, TOPIC),
    ),
    rest(
        "POST",
        "/v1/topics/{topic}/groups/{group}/leave",
        on(Action::TopicsConsume, TOPIC),
    ),
    rest(
        "POST",
        "/v1/topics/{topic}/groups/{group}/reset",
        on(Action::GroupsManage, TOPIC),
    ),
    rest(
        "GET",
        "/v1/topics/{topic}/groups/{group}/dead-letters",
        on(Action::GroupsRead, TOPIC),
    ),
    rest(
        "POST",
        "/v1/topics/{topic}/groups/{group}/dead-letters/redrive",
        on(Action::GroupsManage, TOPIC),
    ),
    push(
        "/v1/topics/{topic}/groups/{group}/ws",
        on(Action::TopicsConsume, TOPIC),
    ),
    // streams
    rest(
        "POST",
        "/v1/topics/{topic}/streams/{stream}/events",
        on(Action::StreamsAppend, TOPIC),
    ),
    rest(
        "GET",
        "/v1/topics/{topic}/streams/{stream}/events",
        on(Action::StreamsRead, TOPIC),
    ),
    rest(
        "GET",
        "/v1/topics/{topic}/streams/{stream}",
        on(Action::StreamsRead, TOPIC),
    ),
    rest(
        "DELETE",
        "/v1/topics/{topic}/streams/{stream}",
        on(Action::StreamsDelete, TOPIC),
    ),
    rest(
        "PUT",
        "/v1/topics/{topic}/streams/{stream}/snapshot",
        on(Action::StreamsAppend, TOPIC),
    ),
    rest(
        "GET",
        "/v1/topics/{topic}/streams/{stream}/snapshot",
        on(Action::StreamsRead, TOPIC),
    ),
    // jobs
    rest(
        "POST",
        "/v1/queues/{queue}/jobs",
        on(Action::JobsSubmit, QUEUE),
    ),
    rest(
        "POST",
        "/v1/queues/{queue}/fetch",
        on(Action::JobsWork, QUEUE),
    ),
    rest(
        "POST",
        "/v1/queues/{queue}/ack",
        on(Action::JobsWork, QUEUE),
    ),
    rest(
        "POST",
        "/v1/queues/{queue}/nack",
        on(Action::JobsWork, QUEUE),
    ),
    rest(
        "GET",
        "/v1/jobs/{job_id}",
        on(Action::JobsRead, Resource::Job),
    ),
    push(
        "/v1/jobs/{job_id}/events",
        on(Action::JobsRead, Resource::Job),
    ),
    rest(
        "POST",
        "/v1/jobs/{job_id}/progress",
        on(Action::JobsWork, Resource::Job),
    ),
    rest(
        "POST",
        "/v1/jobs/{job_id}/complete",
        on(Action::JobsWork, Resource::Job),
    ),
    // webhooks (creating or changing an endpoint also checks topics:read
    // on each of its topics, in the handler)
    rest(
        "POST",
        "/v1/workflows",
        on(Action::WorkflowsManage, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/workflows",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/workflows/{namespace}/{name}",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/workflows/{namespace}/{name}/instances",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/workflow-instances",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/workflow-instances/{instance_id}",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/workflow-instances/{instance_id}/history",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/workflow-instances/{instance_id}/events",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/workflow-instances/{instance_id}/cancel",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/workflow-instances/{instance_id}/suspend",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/workflow-instances/{instance_id}/resume",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/workflow-instances/{instance_id}/retry",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/workflow-instances/{instance_id}/rerun",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    push(
        "/v1/workflow-instances/{instance_id}/ws",
        on(Action::WorkflowsRun, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/webhooks/endpoints",
        on(Action::WebhooksManage, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/webhooks/endpoints",
        on(Action::WebhooksManage, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/webhooks/endpoints/{endpoint_id}",
        on(Action::WebhooksManage, Resource::Any),
    ),
    rest(
        "PATCH",
        "/v1/webhooks/endpoints/{endpoint_id}",
        on(Action::WebhooksManage, Resource::Any),
    ),
    rest(
        "DELETE",
        "/v1/webhooks/endpoints/{endpoint_id}",
        on(Action::WebhooksManage, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/webhooks/endpoints/{endpoint_id}/rotate-secret",
        on(Action::WebhooksManage, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/webhooks/endpoints/{endpoint_id}/attempts",
        on(Action::WebhooksManage, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/webhooks/endpoints/{endpoint_id}/messages/{message_id}/redeliver",
        on(Action::WebhooksManage, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/webhooks/endpoints/{endpoint_id}/recover",
        on(Action::WebhooksManage, Resource::Any),
    ),
    rest(
        "GET",
        "/v1/webhooks/jobs",
        on(Action::WebhooksManage, Resource::Any),
    ),
    // blobs
    rest("POST", "/v1/blobs", on(Action::BlobsWrite, Resource::Any)),
    rest(
        "GET",
        "/v1/blobs/{id}",
        on(Action::BlobsRead, Resource::Blob),
    ),
    rest(
        "HEAD",
        "/v1/blobs/{id}",
        on(Action::BlobsRead, Resource::Blob),
    ),
    // lineage: it follows events across topics
    rest("GET", "/v1/lineage", on(Action::TopicsRead, Resource::Any)),
    // administration
    rest("POST", "/v1/admin/flush", on(Action::Admin, Resource::Any)),
    rest(
        "POST",
        "/v1/admin/compact",
        on(Action::Admin, Resource::Any),
    ),
    rest("POST", "/v1/auth/keys", on(Action::Admin, Resource::Any)),
    rest("GET", "/v1/auth/keys", on(Action::Admin, Resource::Any)),
    rest(
        "PATCH",
        "/v1/auth/keys/{key_id}",
        on(Action::Admin, Resource::Any),
    ),
    rest(
        "DELETE",
        "/v1/auth/keys/{key_id}",
        on(Action::Admin, Resource::Any),
    ),
    rest(
        "POST",
        "/v1/auth/keys/{key_id}/rotate",
        on(Action::Admin, Resource::Any),
    ),
    rest("GET", "/v1/auth/whoami", Rule::Identified),
];

const fn grpc(path: &'static str, action: Action) -> (&'static str, Rule) {
    (path, Rule::On(action, Resource::InBody))
}

/// Every gRPC method. The resource of each is in its message: the service
/// checks it ([`super::Caller::require`]) before acting.
pub const GRPC: &[(&str, Rule)] = &[
    grpc("/herald.v1.Events/Publish", Action::TopicsPublish),
    grpc("/herald.v1.Events/PublishStream", Action::TopicsPublish),
    grpc("/herald.v1.Events/Read", Action::TopicsRead),
    grpc("/herald.v1.Events/Subscribe", Action::TopicsRead),
    grpc("/herald.v1.Topics/CreateTopic", Action::TopicsManage),
    grpc("/herald.v1.Topics/ListTopics", Action::TopicsRead),
    grpc("/herald.v1.Topics/DescribeTopic", Action::TopicsRead),
    grpc("/herald.v1.Topics/UpdateTopic", Action::TopicsManage),
    grpc("/herald.v1.Topics/DeleteTopic", Action::TopicsManage),
    grpc("/herald.v1.Groups/PutGroup", Action::GroupsManage),
    grpc("/herald.v1.Groups/GetGroup", Action::GroupsRead),
    grpc("/herald.v1.Groups/DeleteGroup", Action::GroupsManage),
    grpc("/herald.v1.Groups/ResetGroup", Action::GroupsManage),
    grpc("/herald.v1.Groups/ListDeadLetters", Action::GroupsRead),
    grpc("/herald.v1.Groups/Redrive", Action::GroupsManage),
    grpc("/herald.v1.Groups/Consume", Action::TopicsConsume),
    grpc("/herald.v1.Streams/Append", Action::StreamsAppend),
    grpc("/herald.v1.Streams/ReadStream", Action::StreamsRead),
    grpc("/herald.v1.Streams/GetStream", Action::StreamsRead),
    grpc("/herald.v1.Streams/DeleteStream", Action::StreamsDelete),
    grpc("/herald.v1.Streams/PutSnapshot", Action::StreamsAppend),
    grpc("/herald.v1.Streams/GetSnapshot", Action::StreamsRead),
    grpc("/herald.v1.Jobs/SubmitJob", Action::JobsSubmit),
    grpc("/herald.v1.Jobs/GetJob", Action::JobsRead),
    grpc("/herald.v1.Jobs/WatchJob", Action::JobsRead),
    grpc("/herald.v1.Jobs/Progress", Action::JobsWork),
    grpc("/herald.v1.Jobs/Complete", Action::JobsWork),
    grpc("/herald.v1.Jobs/FetchJobs", Action::JobsWork),
    grpc("/herald.v1.Jobs/PutBlob", Action::BlobsWrite),
    grpc("/herald.v1.Jobs/GetBlob", Action::BlobsRead),
    // webhooks: the service checks `webhooks:manage` on `*` (as the REST
    // rows do) and `topics:read` on each topic of a filter it is given
    grpc("/herald.v1.Webhooks/CreateEndpoint", Action::WebhooksManage),
    grpc("/herald.v1.Webhooks/ListEndpoints", Action::WebhooksManage),
    grpc("/herald.v1.Webhooks/GetEndpoint", Action::WebhooksManage),
    grpc("/herald.v1.Webhooks/UpdateEndpoint", Action::WebhooksManage),
    grpc("/herald.v1.Webhooks/DeleteEndpoint", Action::WebhooksManage),
    grpc("/herald.v1.Webhooks/RotateSecret", Action::WebhooksManage),
    grpc("/herald.v1.Webhooks/ListAttempts", Action::WebhooksManage),
    grpc("/herald.v1.Webhooks/Redeliver", Action::WebhooksManage),
    grpc("/herald.v1.Webhooks/Recover", Action::WebhooksManage),
    grpc(
        "/herald.v1.Webhooks/GetJobNotifications",
        Action::WebhooksManage,
    ),
    ("/grpc.health.v1.Health/Check", Rule::Open),
    ("/grpc.health.v1.Health/Watch", Rule::Open),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Rule::Docs,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Rule::Docs,
    ),
];

/// The rule of a REST route, or of a gRPC method (`template` is then the
/// request path). `None`: no row, refuse.
pub fn rule(method: &Method, template: &str) -> Option<(Rule, bool)> {
    if template == "/docs" || template.starts_with("/docs/") {
        return Some((Rule::Docs, false));
    }
    // The console's files hold no data (its REST calls carry credentials).
    if template == "/ui" || template.starts_with("/ui/") {
        return Some((Rule::Open, false));
    }
    if let Some((_, rule)) = GRPC.iter().find(|(path, _)| *path == template) {
        return Some((*rule, false));
    }
    let find = |method: &str| {
        REST.iter()
            .find(|route| route.method == method && route.path == template)
            .map(|route| (route.rule, route.query_token))
    };
    // axum answers HEAD with the GET handler.
    find(method.as_str()).or_else(|| (method == Method::HEAD).then(|| find("GET")).flatten())
}

/// What [`enforce`] needs.
#[derive(Debug, Clone)]
pub struct PolicyState {
    /// Credentials, buckets, audit.
    pub auth: Arc<Auth>,
    /// Jobs, for the queue of a job id.
    pub jobs: JobsSlot,
}

/// The route layer: see the [module docs](super).
pub async fn enforce(State(state): State<PolicyState>, request: Request, next: Next) -> Response {
    let grpc = is_grpc(&request);
    match admit(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(problem) if grpc => grpc_refusal(problem),
        Err(problem) => problem.into_response(),
    }
}

async fn admit(state: &PolicyState, mut request: Request) -> Result<Request, Problem> {
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned())
        .unwrap_or_default();
    let is_grpc_route = GRPC.iter().any(|(path, _)| *path == request.uri().path());
    let key = if is_grpc_route {
        request.uri().path().to_owned()
    } else {
        template
    };
    let Some((rule, query_token)) = rule(request.method(), &key) else {
        // A known path with another method: the router's 405, answered
        // here (a method routed without a row is refused just the same).
        if key.ends_with("/{*method}") {
            // A method a gRPC service does not have: UNIMPLEMENTED.
            return Err(Problem::new(
                Code::MethodNotAllowed,
                format!("No such gRPC method: {}.", request.uri().path()),
            ));
        }
        if REST.iter().any(|route| route.path == key) {
            return Err(Problem::new(
                Code::MethodNotAllowed,
                format!(
                    "{} does not support {}.",
                    request.uri().path(),
                    request.method()
                ),
            ));
        }
        return Err(Problem::new(
            Code::Forbidden,
            format!(
                "no permission rule covers {} {}; refused",
                request.method(),
                request.uri().path()
            ),
        ));
    };
    let auth = &state.auth;
    let public = match rule {
        Rule::Open => true,
        Rule::Docs => auth.public_docs(),
        Rule::Metrics => auth.public_metrics(),
        Rule::Identified | Rule::On(..) => false,
    };
    if public {
        return Ok(request);
    }
    let from_query = if query_token {
        take_query_token(request.uri_mut())
    } else {
        None
    };
    let token = bearer(&request).or(from_query);
    let principal = auth
        .authenticate(
            token.as_deref(),
            request.extensions().get::<PeerCertificate>(),
        )
        .await?;
    check(state, &mut request, &principal, rule).await?;
    principal.buckets.request()?;
    request.extensions_mut().insert(auth.caller(principal));
    Ok(request)
}

async fn check(
    state: &PolicyState,
    request: &mut Request,
    principal: &Principal,
    rule: Rule,
) -> Result<(), Problem> {
    let (action, resource) = match rule {
        Rule::Open | Rule::Docs | Rule::Identified => return Ok(()),
        Rule::Metrics => (Action::MetricsRead, Resource::Any),
        Rule::On(action, resource) => (action, resource),
    };
    let name = match resource {
        Resource::Any => "*".to_owned(),
        Resource::InBody => {
            if permissions::allows_somewhere(&principal.permissions, action) {
                return Ok(());
            }
            "*".to_owned()
        }
        Resource::Path(param) => path_param(request, param)
            .await?
            .unwrap_or_else(|| "*".to_owned()),
        Resource::Blob => path_param(request, "id")
            .await?
            .unwrap_or_else(|| "*".to_owned()),
        Resource::Job => {
            let job_id = path_param(request, "job_id").await?.unwrap_or_default();
            match job_queue(state, &job_id).await {
                Some(queue) => queue,
                // No such job (or storage still opening): the handler
                // answers 404/503 to anyone who may take the action at all.
                None if permissions::allows_somewhere(&principal.permissions, action) => {
                    return Ok(());
                }
                None => "*".to_owned(),
            }
        }
    };
    if principal.allows(action, &name) {
        Ok(())
    } else {
        Err(state.auth.forbidden(&principal.id, action, &name))
    }
}

async fn path_param(request: &mut Request, name: &str) -> Result<Option<String>, Problem> {
    let (mut parts, body) = std::mem::take(request).into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &()).await;
    *request = Request::from_parts(parts, body);
    let params =
        params.map_err(|rejection| Problem::new(Code::InvalidName, rejection.body_text()))?;
    Ok(params
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned()))
}

async fn job_queue(state: &PolicyState, job_id: &str) -> Option<String> {
    let jobs = state.jobs.get().ok()?;
    jobs.get(job_id).await.ok().map(|job| job.queue)
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Removes `access_token` from the query and returns it, so neither the
/// handler's query parsing nor any log sees it.
fn take_query_token(uri: &mut Uri) -> Option<String> {
    let query = uri.query()?;
    let mut token = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name == ACCESS_TOKEN {
                token = Some(value.to_owned());
                false
            } else {
                true
            }
        })
        .collect();
    let token = token?;
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = rebuilt.parse().ok();
    *uri = Uri::from_parts(parts).unwrap_or_default();
    // Tokens are URL-safe (`hrd_…`, base64url JWTs); decode anyway.
    Some(percent_decode(&token))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (byte, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                index += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                index += 1;
            }
            _ => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// A refusal as a gRPC status (trailers-only), with `retry-after` when
/// rate limited.
pub(crate) fn grpc_refusal(problem: Problem) -> Response {
    let retry_after = problem.retry_after_s();
    let mut response = tonic::Status::from(problem).into_http::<axum::body::Body>();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_query_with_access_token_when_taken_should_remove_it_and_keep_the_rest() {
        let mut uri: Uri = "/v1/topics/t/ws?from=start&access_token=hrd_x%5Fy&partition=1"
            .parse()
            .unwrap();
        assert_eq!(take_query_token(&mut uri).as_deref(), Some("hrd_x_y"));
        assert_eq!(uri.to_string(), "/v1/topics/t/ws?from=start&partition=1");
        let mut only: Uri = "/v1/topics/t/ws?access_token=abc".parse().unwrap();
        assert_eq!(take_query_token(&mut only).as_deref(), Some("abc"));
        assert_eq!(only.to_string(), "/v1/topics/t/ws");
        let mut none: Uri = "/v1/topics/t/ws?from=start".parse().unwrap();
        assert_eq!(take_query_token(&mut none), None);
    }

    #[test]
    fn given_each_table_should_name_each_route_once() {
        let mut seen = std::collections::HashSet::new();
        for route in REST {
            assert!(
                seen.insert((route.method, route.path)),
                "{} {}",
                route.method,
                route.path
            );
        }
        for (path, _) in GRPC {
            assert!(seen.insert(("POST", path)), "{path}");
        }
    }

    #[test]
    fn given_head_request_should_follow_get_rule_and_unknown_route_has_none() {
        assert!(rule(&Method::HEAD, "/v1/topics/{topic}/events").is_some());
        assert!(rule(&Method::POST, "/v1/nope").is_none());
        assert_eq!(
            rule(&Method::GET, "/docs/{*rest}").map(|(rule, _)| rule),
            Some(Rule::Docs)
        );
    }
}
