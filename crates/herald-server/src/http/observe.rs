//! The outermost layer of every request, REST and gRPC: counted and timed
//! (to its response head) by method, route and status class, and answered
//! with a 500 problem when its handler panics instead of dropping the
//! connection (a panic is a bug: logged at ERROR with its message).
//!
//! One hand-written layer rather than two `from_fn` middlewares: each of
//! those boxes its future and a clone of the service under it per request,
//! and the route label was copied twice (together about 0.5–0.8 µs of a
//! unary gRPC call's ~23 µs of server CPU, BENCHMARKS.md).

use std::any::Any;
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, Uri};
use axum::response::{IntoResponse as _, Response};
use pin_project_lite::pin_project;
use tracing::{debug, error};

use crate::metrics::{HttpLabels, Metrics};
use crate::problem::{Code, Problem};

/// See the module docs.
#[derive(Clone, Debug)]
pub(super) struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone, Debug)]
pub(super) struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|matched| route_label(matched.as_str(), request.uri().path()));
        // For the log line of a panic only (a shared, not copied, buffer).
        let uri = request.uri().clone();
        let inner = catch_unwind(AssertUnwindSafe(|| self.inner.call(request)));
        let (inner, panicked) = match inner {
            Ok(future) => (Some(future), None),
            Err(panic) => (None, Some(panic)),
        };
        Observed {
            inner,
            panicked,
            started,
            method,
            route,
            uri,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

pin_project! {
    /// The future of [`Observe`].
    pub(super) struct Observed<F> {
        #[pin]
        inner: Option<F>,
        panicked: Option<Box<dyn Any + Send>>,
        started: Instant,
        method: Method,
        route: Option<Cow<'static, str>>,
        uri: Uri,
        metrics: Arc<Metrics>,
    }
}

impl<F> Future for Observed<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = match this.inner.as_pin_mut() {
            Some(inner) => catch_unwind(AssertUnwindSafe(|| inner.poll(cx))),
            None => Err(this
                .panicked
                .take()
                .unwrap_or_else(|| Box::new("(polled again)"))),
        };
        // The inner future is not polled again after a panic: this one is
        // ready either way.
        let response = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(response))) => response,
            Ok(Poll::Ready(Err(never))) => match never {},
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                error!(method = %this.method, path = %this.uri.path(), panic = message, "Handler panicked.");
                Problem::new(Code::Internal, "The server failed on this request.").into_response()
            }
        };
        let elapsed = this.started.elapsed();
        let labels = HttpLabels::new(this.method, this.route.take(), response.status());
        this.metrics.http().observe(&labels, elapsed);
        debug!(
            method = %this.method,
            route = %labels.route,
            status = response.status().as_u16(),
            elapsed_us = elapsed.as_micros(),
            "Answered request."
        );
        Poll::Ready(Ok(response))
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// The route label of a request matched as `template`: a gRPC call to a
/// `herald.v1` method is labelled by its method's path (a bounded set, and
/// a static string: no copy), anything else by the template.
fn route_label(template: &str, path: &str) -> Cow<'static, str> {
    if template.ends_with("/{*method}")
        && let Some(method) = herald_proto::METHODS.iter().find(|method| **method == path)
    {
        return Cow::Borrowed(method);
    }
    Cow::Owned(template.to_owned())
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    async fn fine() -> &'static str {
        "fine"
    }

    #[allow(clippy::panic, reason = "the handler under test panics")]
    async fn broken() -> &'static str {
        panic!("broken handler")
    }

    #[tokio::test]
    async fn given_a_panicking_handler_should_answer_500_and_count_every_request_by_route() {
        let metrics = Metrics::new();
        let app = Router::new()
            .route("/fine/{id}", get(fine))
            .route("/broken", get(broken))
            .route("/herald.v1.Events/{*method}", get(fine))
            .layer(ObserveLayer::new(Arc::clone(&metrics)));
        let call = |path: &str| {
            let request = Request::builder().uri(path).body(Body::empty()).unwrap();
            app.clone().oneshot(request)
        };
        assert_eq!(call("/fine/7").await.unwrap().status(), StatusCode::OK);
        let broken = call("/broken").await.unwrap();
        assert_eq!(broken.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(broken.into_body(), 4096)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("\"code\":\"internal\""));
        assert_eq!(
            call("/herald.v1.Events/Publish").await.unwrap().status(),
            StatusCode::OK
        );
        call("/herald.v1.Events/Nope").await.unwrap();
        let text = metrics.encode().unwrap();
        for line in [
            r#"herald_http_requests_total{method="GET",route="/fine/{id}",status="2xx"} 1"#,
            r#"herald_http_requests_total{method="GET",route="/broken",status="5xx"} 1"#,
            r#"herald_http_requests_total{method="GET",route="/herald.v1.Events/Publish",status="2xx"} 1"#,
            r#"herald_http_requests_total{method="GET",route="/herald.v1.Events/{*method}",status="2xx"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }
}
