//! The HTTP surface: one axum [`Router`] served on the one listener.
//!
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`;
//! - the REST API under `/v1` (the contract is `docs/api.md`): topics
//!   ([`topics`]), events ([`events`]), consumer groups ([`groups`]), jobs
//!   ([`jobs`]), blobs ([`blobs`]), webhook endpoints ([`webhooks`]), and
//!   `POST /v1/admin/flush`,
//!   `POST /v1/admin/compact` ([`admin`]);
//! - `GET /openapi.json` (OpenAPI 3.1, generated from the handlers'
//!   `#[utoipa::path]` attributes) and `GET /docs` ([`openapi`]);
//! - the web console under `GET /ui` ([`console`]: static files compiled
//!   into the binary; it calls the REST API like any client);
//! - RFC 9457 problems for everything that fails, including unknown paths
//!   (404) and methods (405).
//!
//! Handlers are thin: parse (with the extractors of [`extract`], whose
//! failures are problems, never axum's plain-text rejections) → one backend
//! call → map the result. Backend errors become problems through the code
//! table in [`crate::problem`].
//!
//! The router is built before storage opens (liveness answers during
//! recovery), so the storage sits in a [`StorageSlot`] filled once it has
//! opened; until then every API call answers 503 `unavailable`.
//!
//! Every request passes through two middlewares: one that turns a panic in
//! a handler into a 500 problem (the connection survives, the panic is
//! logged), and one that counts requests by method, route template and
//! status class.

pub mod admin;
pub mod auth;
pub mod blobs;
pub mod console;
pub mod events;
pub mod extract;
pub mod groups;
pub mod health;
pub mod jobs;
pub mod lineage;
mod observe;
pub mod openapi;
mod openapi_refine;
mod push;
pub mod streams;
pub(crate) mod tail;
pub mod topics;
pub mod webhooks;
pub mod workflows;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_backend::Backend;
use herald_log::Clock;
use tokio_util::sync::CancellationToken;
use tracing::error;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use crate::blobs::BlobStore;
use crate::connections::IdleBody;
use crate::metrics::{self, Metrics};
use crate::problem::{Code, Problem};
use crate::storage::StorageHandle;

pub use health::{Phase, Readiness};

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Whether storage is open and the server is not stopping.
    pub readiness: Readiness,
    /// Storage, once open.
    pub storage: StorageSlot,
    /// Wall-clock time for parsing events (`delay_ms`, generated ids).
    pub clock: Arc<dyn Clock>,
    /// Fires when shutdown begins: long polls stop waiting.
    pub stopping: CancellationToken,
    /// The largest request body accepted (`limits.max_request_bytes`); also
    /// the largest WebSocket message.
    pub max_request_bytes: usize,
    /// A REST request body that sends nothing for this long fails
    /// (`connections.idle_timeout_ms`).
    pub body_idle_timeout: std::time::Duration,
    /// Blob storage (open before the backend: it needs only the data directory).
    pub blobs: BlobStore,
    /// The job service, once storage is open.
    pub jobs: JobsSlot,
    /// The webhook service, once storage is open.
    pub webhooks: WebhooksSlot,
    /// The workflow engine, once storage is open.
    pub workflows: WorkflowsSlot,
    /// Lineage queries, once storage is open.
    pub lineage: LineageSlot,
    /// Credentials, permissions, rate limits, audit.
    pub auth: Arc<crate::auth::Auth>,
}

impl AppState {
    /// The backend, or 503 `unavailable` while storage is still opening.
    pub fn backend(&self) -> Result<&dyn Backend, Problem> {
        Ok(self.storage.get()?.backend())
    }

    /// The backend as a shared handle, for work that outlives the request
    /// (subscriptions).
    pub fn shared_backend(&self) -> Result<Arc<dyn Backend>, Problem> {
        Ok(self.storage.get()?.shared_backend())
    }
}

/// Where a service that runs on storage (jobs, webhooks) goes once storage
/// has opened; empty before. Cheap to clone.
#[derive(Debug)]
pub struct ServiceSlot<T>(Arc<OnceLock<T>>);

impl<T> Clone for ServiceSlot<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Default for ServiceSlot<T> {
    fn default() -> Self {
        Self(Arc::new(OnceLock::new()))
    }
}

impl<T> ServiceSlot<T> {
    /// Fills the slot; a second call is ignored (the service starts once).
    pub fn set(&self, service: T) {
        let _ = self.0.set(service);
    }

    /// The service, or 503 `unavailable` while storage is still opening.
    pub fn get(&self) -> Result<&T, Problem> {
        self.0.get().ok_or_else(|| {
            Problem::new(
                Code::Unavailable,
                "Storage is still opening (recovering the data directory); retry shortly.",
            )
        })
    }
}

/// Where the job service goes once storage has opened.
pub type JobsSlot = ServiceSlot<herald_jobs::Handle>;

/// Where the webhook service goes once storage has opened.
pub type WebhooksSlot = ServiceSlot<herald_webhooks::Handle>;

/// Where the workflow engine goes once storage has opened.
pub type WorkflowsSlot = ServiceSlot<herald_workflows::Engine>;

/// Where lineage queries go once storage has opened.
pub type LineageSlot = ServiceSlot<herald_lineage::Lineage>;

impl AppState {
    /// The job service, or 503 `unavailable` while storage is still opening.
    pub fn jobs(&self) -> Result<&herald_jobs::Handle, Problem> {
        self.jobs.get()
    }

    /// The webhook service, or 503 `unavailable` while storage is still opening.
    pub fn webhooks(&self) -> Result<&herald_webhooks::Handle, Problem> {
        self.webhooks.get()
    }
}

/// Where storage goes once it has opened; empty before. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct StorageSlot(Arc<OnceLock<StorageHandle>>);

impl StorageSlot {
    /// Fills the slot; a second call is ignored (storage opens once).
    pub fn set(&self, storage: StorageHandle) {
        // Storage opens once per process; a second value would be a bug, and
        // keeping the first is the safe reaction to it.
        let _ = self.0.set(storage);
    }

    /// The storage, or 503 `unavailable` (with `Retry-After`) while empty.
    pub fn get(&self) -> Result<&StorageHandle, Problem> {
        self.0.get().ok_or_else(|| {
            Problem::new(
                Code::Unavailable,
                "Storage is still opening (recovering the data directory); retry shortly.",
            )
        })
    }
}

/// The whole HTTP API, with its OpenAPI document at `/openapi.json` and a
/// browsable page at `/docs`.
///
/// `grpc` (the gRPC services, see [`crate::grpc`]) is merged in before the
/// middlewares, so gRPC calls are counted and guarded the same way.
pub fn router(state: AppState, grpc: Router) -> Router {
    let body_limit = DefaultBodyLimit::max(state.max_request_bytes);
    let body_idle_timeout = state.body_idle_timeout;
    let metrics = Arc::clone(&state.metrics);
    let policy = crate::auth::policy::PolicyState {
        auth: Arc::clone(&state.auth),
        jobs: state.jobs.clone(),
    };
    let (routes, document) = documented_routes().split_for_parts();
    let document = Arc::new(openapi::finish(document));
    Router::new()
        .merge(routes)
        .route(
            "/openapi.json",
            get(openapi::serve).with_state(Arc::clone(&document)),
        )
        .merge(openapi::docs_page())
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // REST bodies only: a gRPC stream's body may rightly be silent.
        .layer(middleware::map_request(
            move |request: Request| async move {
                request.map(|body| Body::new(IdleBody::new(body, body_idle_timeout)))
            },
        ))
        .merge(grpc)
        // Every route, REST and gRPC, after routing (so the route template
        // is known) and not the 404/405 fallbacks: the permission table.
        .route_layer(middleware::from_fn_with_state(
            policy,
            crate::auth::policy::enforce,
        ))
        .layer(body_limit)
        // `Router::layer` runs after routing, so `MatchedPath` is known; it
        // also wraps the fallbacks, so 404s and 405s are counted too.
        .layer(observe::ObserveLayer::new(metrics))
}

/// The OpenAPI document of [`router`] (as JSON), without a server behind it.
pub fn openapi_document() -> serde_json::Value {
    openapi::finish(documented_routes().into_openapi())
}

/// Every documented route: each handler's `#[utoipa::path]` gives both its
/// route and its OpenAPI operation, so the two cannot drift apart.
fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics_text))
        .merge(api_routes())
}

/// The `/v1` REST API (`docs/api.md`; a test keeps its routes equal to these).
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(topics::create, topics::list))
        .routes(routes!(topics::describe, topics::update, topics::delete))
        .routes(routes!(events::publish, events::read))
        .routes(routes!(groups::list))
        .routes(routes!(groups::put, groups::status, groups::delete))
        .routes(routes!(groups::fetch))
        .routes(routes!(groups::ack))
        .routes(routes!(groups::nack))
        .routes(routes!(groups::extend))
        .routes(routes!(groups::reject))
        .routes(routes!(groups::commit))
        .routes(routes!(groups::reset))
        .routes(routes!(groups::leave))
        .routes(routes!(groups::dead_letters))
        .routes(routes!(groups::redrive))
        .routes(routes!(streams::append, streams::read))
        .routes(routes!(streams::metadata, streams::delete))
        .routes(routes!(streams::put_snapshot, streams::get_snapshot))
        .routes(routes!(push::sse))
        .routes(routes!(push::tail_ws))
        .routes(routes!(push::group_ws))
        .routes(routes!(admin::flush))
        .routes(routes!(admin::compact))
        .routes(routes!(lineage::lineage))
        .routes(routes!(jobs::submit))
        .routes(routes!(jobs::status))
        .routes(routes!(jobs::events))
        .routes(routes!(jobs::progress))
        .routes(routes!(jobs::complete))
        .routes(routes!(jobs::fetch))
        .routes(routes!(jobs::ack))
        .routes(routes!(jobs::nack))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::attempts))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(webhooks::recover))
        .routes(routes!(webhooks::jobs))
        .routes(routes!(workflows::deploy, workflows::list))
        .routes(routes!(workflows::show))
        .routes(routes!(workflows::start))
        .routes(routes!(workflows::instances))
        .routes(routes!(workflows::instance))
        .routes(routes!(workflows::history))
        .routes(routes!(workflows::events))
        .routes(routes!(workflows::cancel))
        .routes(routes!(workflows::suspend))
        .routes(routes!(workflows::resume))
        .routes(routes!(workflows::retry))
        .routes(routes!(workflows::rerun))
        .routes(routes!(workflows::socket))
        // Blob uploads stream to storage, bounded by limits.max_blob_bytes
        // (checked as they stream), not by the request body limit.
        .routes(routes!(blobs::upload).layer(DefaultBodyLimit::disable()))
        .routes(routes!(blobs::download, blobs::head))
        .routes(routes!(auth::create, auth::list))
        .routes(routes!(auth::update, auth::revoke))
        .routes(routes!(auth::rotate))
        .routes(routes!(auth::whoami))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every metric, in OpenMetrics text format.",
         content_type = "application/openmetrics-text", body = String),
    )
)]
async fn metrics_text(State(state): State<AppState>) -> Response {
    if let Ok(backend) = state.backend() {
        state.metrics.refresh(backend).await;
    }
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            error!(%error, "Cannot encode metrics.");
            Problem::new(Code::Internal, "Cannot encode metrics.").into_response()
        }
    }
}

/// The REST 404 problem; a gRPC call (`application/grpc*`) to a service
/// Herald does not serve gets the status gRPC clients expect instead,
/// `UNIMPLEMENTED` (trailers-only).
async fn not_found(request: Request) -> Response {
    if crate::auth::policy::is_grpc(&request) {
        return crate::auth::policy::grpc_refusal(Problem::new(
            Code::MethodNotAllowed,
            format!(
                "No gRPC service here has the method {}; server reflection lists them.",
                request.uri().path()
            ),
        ));
    }
    Problem::new(
        Code::NotFound,
        format!(
            "No resource for {} {}.",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        Code::MethodNotAllowed,
        format!("{} does not support {method}.", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use axum::http::{StatusCode, header};

    use super::*;

    #[test]
    fn given_storage_not_open_when_handler_asks_for_backend_should_answer_503_unavailable() {
        let slot = StorageSlot::default();
        let problem = slot.get().unwrap_err();
        assert_eq!(problem.code(), Code::Unavailable);
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
}
