//! Credentials: every call, unary or streaming, carries
//! `authorization: Bearer <token>` when the client was built with
//! [`ClientBuilder::bearer_token`](crate::ClientBuilder::bearer_token) (an
//! API key `hrd_…` or a JWT).

use std::task::{Context, Poll};

use http::{HeaderValue, Request, header};
use tower_service::Service;

/// A transport that adds the `authorization` header to every request.
#[derive(Debug, Clone)]
pub(crate) struct Authorized<S> {
    inner: S,
    /// `Bearer <token>`, marked sensitive (never printed by `Debug`).
    authorization: Option<HeaderValue>,
}

impl<S> Authorized<S> {
    pub(crate) fn new(inner: S, authorization: Option<HeaderValue>) -> Self {
        Self {
            inner,
            authorization,
        }
    }
}

impl<S, B> Service<Request<B>> for Authorized<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, value.clone());
        }
        self.inner.call(request)
    }
}

/// `Bearer <token>` as a sensitive header value, or why it cannot be one.
pub(crate) fn bearer(token: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the bearer token has characters a header cannot carry".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}
