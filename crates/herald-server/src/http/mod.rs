//! The HTTP surface: one axum [`Router`] served on the one listener.
//!
//! Today: `GET /healthz`, `GET /readyz`, `GET /metrics`, and RFC 9457
//! problems for unknown paths (404) and methods (405). Every request passes
//! through a metrics middleware, which counts it by method, route template and
//! status class.

pub mod health;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::{debug, error};

use crate::metrics::{self, HttpLabels, Metrics};
use crate::problem::{Code, Problem};

pub use health::{Phase, Readiness};

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Whether storage is open and the server is not stopping.
    pub readiness: Readiness,
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // `Router::layer` runs after routing, so `MatchedPath` is known; it
        // also wraps the fallbacks, so 404s and 405s are counted too.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            record_metrics,
        ))
        .with_state(state)
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            error!(%error, "Cannot encode metrics.");
            Problem::new(Code::Internal, "Cannot encode metrics.").into_response()
        }
    }
}

async fn not_found(method: Method, uri: Uri) -> Problem {
    Problem::new(
        Code::NotFound,
        format!("No resource for {method} {}.", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        Code::MethodNotAllowed,
        format!("{} does not support {method}.", uri.path()),
    )
}

/// Counts and times every request (to its response head).
async fn record_metrics(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let labels = HttpLabels::new(&method, route.as_deref(), response.status());
    metrics.http().observe(&labels, elapsed);
    debug!(
        %method,
        route = %labels.route,
        status = response.status().as_u16(),
        elapsed_us = elapsed.as_micros(),
        "Answered request."
    );
    response
}
