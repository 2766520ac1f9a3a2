//! The gRPC surface, `herald.v1` (the protocol is `herald-proto`), served on
//! the same listener as REST: a request whose path is
//! `/<package.Service>/<method>` of one of the services below goes to tonic,
//! everything else to the REST router ([`crate::http`]). gRPC runs over
//! cleartext HTTP/2 (h2c, prior knowledge) on that listener: Herald itself
//! does not terminate TLS; put a TLS-terminating proxy in front of it for
//! encrypted traffic.
//!
//! - [`events`]: `Publish`, `PublishStream` (pipelined batches, acks in send
//!   order), `Read`, `Subscribe`;
//! - [`topics`]: topic administration;
//! - [`groups`]: group administration and `Consume` (credits, pipelined
//!   settles, the member leaves when the call ends);
//! - [`streams`]: event streams (append with expectations, reads,
//!   metadata, deletion, snapshots);
//! - [`jobs`]: jobs (submit, wait, watch, worker fetch/progress/complete,
//!   with JSON documents in the REST shapes) and blob upload/download as
//!   chunk streams;
//! - [`webhooks`]: webhook endpoints (create, list, get, update, delete,
//!   secret rotation), their attempt log, redelivery and recovery;
//! - [`convert`]: wire messages ↔ backend types (the request conversions
//!   are public for the fuzz target `grpc_requests`);
//! - `grpc.health.v1.Health` (SERVING once storage is open, NOT_SERVING
//!   while it opens and once shutdown starts) and server reflection, both
//!   `grpc.reflection.v1` and `v1alpha`, listing Herald's services and
//!   health. A call to a service or method not here answers
//!   `UNIMPLEMENTED` (the REST router's 404 problem is for REST only).
//!
//! Services are thin, like the REST handlers: decode → one backend call →
//! encode. Failures go through the same code table ([`crate::problem`]) and
//! carry the stable code in a `google.rpc.ErrorInfo` detail.

pub mod convert;
mod events;
mod groups;
mod jobs;
mod streams;
mod topics;
mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;

use herald_backend::Backend;
use herald_log::Clock;
use herald_proto::v1;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::http::StorageSlot;
use crate::problem::{Code, Problem};

/// What every service can reach.
#[derive(Clone, Debug)]
pub struct GrpcState {
    /// Storage, once open.
    pub storage: StorageSlot,
    /// Wall-clock time (generated ids, `delay_ms`).
    pub clock: Arc<dyn Clock>,
    /// Fires when shutdown begins: long-lived calls end.
    pub stopping: CancellationToken,
    /// The largest message accepted, in bytes (`limits.max_request_bytes`).
    pub max_message_bytes: usize,
    /// Bytes of batches one `PublishStream` call may have in flight
    /// (`limits.max_publish_stream_bytes`).
    pub max_publish_stream_bytes: usize,
    /// The job service, once storage is open.
    pub jobs: crate::http::JobsSlot,
    /// The webhook service, once storage is open.
    pub webhooks: crate::http::WebhooksSlot,
    /// Blob storage.
    pub blobs: crate::blobs::BlobStore,
    /// Credentials, permissions, rate limits, audit.
    pub auth: Arc<crate::auth::Auth>,
}

impl GrpcState {
    /// The backend, or `UNAVAILABLE` while storage is still opening.
    fn backend(&self) -> Result<Arc<dyn Backend>, Status> {
        Ok(self.storage.get()?.shared_backend())
    }
}

/// The gRPC services as an axum router, to be merged with the REST one, and
/// the health reporter to flip once storage is open.
pub fn router(state: GrpcState) -> (axum::Router, tonic_health::server::HealthReporter) {
    let limit = state.max_message_bytes;
    let (reporter, health) = tonic_health::server::health_reporter();
    // Both reflection versions: grpcurl and Postman speak v1, Python's
    // grpcio-reflection and older tools v1alpha. Each lists everything
    // served: Herald's services, health and both reflection versions.
    let descriptors = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(herald_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .include_reflection_service(false)
    };
    let mut router = axum::Router::new();
    router = route(
        router,
        v1::events_server::EventsServer::new(events::EventsService::new(state.clone()))
            .max_decoding_message_size(limit),
    );
    router = route(
        router,
        v1::topics_server::TopicsServer::new(topics::TopicsService::new(state.clone()))
            .max_decoding_message_size(limit),
    );
    router = route(
        router,
        v1::groups_server::GroupsServer::new(groups::GroupsService::new(state.clone()))
            .max_decoding_message_size(limit),
    );
    router = route(
        router,
        v1::streams_server::StreamsServer::new(streams::StreamsService::new(state.clone()))
            .max_decoding_message_size(limit),
    );
    router = route(
        router,
        v1::jobs_server::JobsServer::new(jobs::JobsService::new(state.clone()))
            .max_decoding_message_size(limit),
    );
    router = route(
        router,
        v1::webhooks_server::WebhooksServer::new(webhooks::WebhooksService::new(state))
            .max_decoding_message_size(limit),
    );
    router = route(router, health);
    match descriptors().build_v1() {
        Ok(reflection) => router = route(router, reflection),
        Err(error) => tracing::error!(%error, "gRPC reflection v1 is off."),
    }
    match descriptors().build_v1alpha() {
        Ok(reflection) => router = route(router, reflection),
        Err(error) => tracing::error!(%error, "gRPC reflection v1alpha is off."),
    }
    (router, reporter)
}

/// Routes `/<package.Service>/<method>` to a tonic service. (Like tonic's
/// own `Routes`, but without its catch-all fallback, so the REST router's
/// 404 problem stays the one fallback.)
fn route<S>(router: axum::Router, service: S) -> axum::Router
where
    S: tower::Service<
            axum::http::Request<tonic::body::Body>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    use tower::ServiceExt as _;
    let service = service
        .map_request(|request: axum::http::Request<axum::body::Body>| {
            request.map(tonic::body::Body::new)
        })
        .map_response(axum::response::IntoResponse::into_response);
    router.route_service(&format!("/{}/{{*method}}", S::NAME), service)
}

/// Marks every Herald service (and the server as a whole, `""`) serving or
/// not in `grpc.health.v1`.
pub async fn set_serving(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for service in [
        "",
        "herald.v1.Events",
        "herald.v1.Topics",
        "herald.v1.Groups",
        "herald.v1.Streams",
        "herald.v1.Jobs",
        "herald.v1.Webhooks",
    ] {
        reporter.set_service_status(service, status).await;
    }
}

impl From<Problem> for Status {
    /// The problem's code as the gRPC status (per the code table), its
    /// detail as the message, and an `ErrorInfo` with the stable code and
    /// the problem's extensions.
    fn from(problem: Problem) -> Self {
        let code = problem.code();
        let metadata: HashMap<String, String> = problem
            .extensions()
            .iter()
            .map(|(name, value)| {
                let text = match value {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                ((*name).to_owned(), text)
            })
            .collect();
        herald_proto::status(
            code.grpc_status(),
            code.as_str(),
            problem.detail().unwrap_or(code.title()),
            metadata,
        )
    }
}

/// The caller the permission layer put into the request
/// ([`crate::auth::policy`]); refused without one (fail closed).
fn caller<T>(request: &tonic::Request<T>) -> Result<crate::auth::Caller, Status> {
    request
        .extensions()
        .get::<crate::auth::Caller>()
        .cloned()
        .ok_or_else(|| Problem::new(Code::Forbidden, "no authenticated caller; refused").into())
}

/// The queue of job `job_id`, for a permission check; `*` when there is no
/// such job (the call then answers `job_not_found` to anyone who may take
/// the action somewhere).
async fn job_queue(jobs: &herald_jobs::Handle, job_id: &str) -> String {
    jobs.get(job_id)
        .await
        .map_or_else(|_| "*".to_owned(), |job| job.queue)
}

/// A failure inside a stream that goes on (`PublishAck.error`,
/// `Settled.error`).
fn failure(problem: &Problem) -> v1::Failure {
    let code = problem.code();
    v1::Failure {
        code: code.as_str().to_owned(),
        message: problem.detail().unwrap_or(code.title()).to_owned(),
        grpc_code: code.grpc_status() as i32,
    }
}

/// A backend error as a status.
fn backend_status(error: herald_backend::Error) -> Status {
    Problem::from(error).into()
}

/// `INVALID_ARGUMENT` (`invalid_argument`) naming the field.
fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Problem::new(Code::InvalidArgument, format!("{field}: {reason}")).into()
}

/// A request's `limit`: 0 means `default`, more than `max` is refused.
fn limit(requested: u32, default: u32, max: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(default as usize),
        limit if limit <= max => Ok(limit as usize),
        _ => Err(invalid("limit", format!("must be between 1 and {max}"))),
    }
}

/// The server is stopping: long-lived calls end with this.
fn shutting_down() -> Status {
    Problem::new(
        Code::ShuttingDown,
        "The server is shutting down; reconnect and resume.",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_every_code_when_sent_over_grpc_should_carry_the_status_its_table_row_names() {
        for &code in Code::ALL {
            let expected = herald_proto::grpc_code(code.grpc());
            assert_eq!(expected, Some(code.grpc_status()), "{}", code.as_str());
            let problem = Problem::new(code, "detail");
            let status = Status::from(problem.clone());
            assert_eq!(Some(status.code()), expected, "{}", code.as_str());
            assert_eq!(
                herald_proto::error_info(&status).map(|(reason, _)| reason),
                Some(code.as_str().to_owned())
            );
            assert_eq!(
                status.code() == tonic::Code::Internal,
                code == Code::Internal,
                "only `internal` answers INTERNAL, not {}",
                code.as_str()
            );
            let in_stream = failure(&problem);
            assert_eq!(in_stream.code, code.as_str());
            assert_eq!(in_stream.grpc_code, status.code() as i32);
        }
    }
}
