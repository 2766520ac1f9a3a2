//! One delivery attempt: a signed POST through the guarded client, and
//! what came of it.
//!
//! The client never follows redirects (a 3xx is a failure, as the Standard
//! Webhooks specification asks, and a redirect to a private address must
//! not be a way around the guard), ignores proxy settings from the
//! environment, and connects only to addresses its resolver allowed
//! ([`crate::ssrf::GuardedResolver`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_types::webhook::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret, signature_header,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::ssrf::{GuardedResolver, Refused, TargetPolicy};
use tracing::Instrument as _;

/// Bytes of a response body kept in the attempt record.
pub const EXCERPT_BYTES: usize = 1024;

/// The content type of a delivery: a CloudEvent in structured JSON mode.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// How an attempt ended, for the attempt log and the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A 2xx answer.
    None,
    /// A non-2xx answer (3xx included: redirects are not followed).
    Status,
    /// No answer within the attempt's timeout.
    Timeout,
    /// The target was refused by the SSRF guard (at delivery time).
    TargetNotAllowed,
    /// Name resolution, connection, TLS or protocol failure.
    Connect,
    /// Not sent: the endpoint's circuit was open when its turn came.
    CircuitOpen,
}

impl ErrorClass {
    /// The stable word stored with the attempt.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Status => "status",
            Self::Timeout => "timeout",
            Self::TargetNotAllowed => "target_not_allowed",
            Self::Connect => "connect",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// The record of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The HTTP status, when the receiver answered.
    pub status_code: Option<u16>,
    /// From the request's start to the answer's body (or the failure).
    pub latency: Duration,
    /// What went wrong; [`ErrorClass::None`] for a 2xx.
    pub class: ErrorClass,
    /// A readable reason when not a 2xx.
    pub error: Option<String>,
    /// The first [`EXCERPT_BYTES`] of the answer's body, lossily as UTF-8.
    pub response_excerpt: String,
    /// The receiver's `Retry-After`, in seconds, on a 429 or 503.
    pub retry_after: Option<Duration>,
    /// The receiver answered `410 Gone`: the endpoint is to be disabled.
    pub gone: bool,
}

impl Outcome {
    /// Whether the message was delivered.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.class == ErrorClass::None
    }
}

/// What one attempt sends.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// `webhook-id`: the same on every attempt of one message.
    pub id: &'a str,
    /// The CloudEvent, structured JSON, exactly as signed (sent without a
    /// copy).
    pub body: bytes::Bytes,
    /// The event's W3C `traceparent`: the attempt's span continues it and
    /// sends its own (this one while tracing is off).
    pub traceparent: Option<&'a str>,
}

/// Sends attempts through one HTTP client that only reaches what the
/// target policy allows.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: Arc<TargetPolicy>,
}

impl Sender {
    /// A sender enforcing `policy`, connecting within `connect_timeout`.
    pub fn new(policy: TargetPolicy, connect_timeout: Duration) -> reqwest::Result<Self> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&policy))))
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { client, policy })
    }

    /// A request to `url` through this sender's guarded client (redirects
    /// not followed, the resolver checking every address connected to), or
    /// why the policy refuses the URL. Workflows' `call: http` sends
    /// through it.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
    ) -> Result<reqwest::RequestBuilder, Refused> {
        self.policy.check_url(&url)?;
        Ok(self.client.request(method, url))
    }

    /// The policy this sender enforces.
    #[must_use]
    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }

    /// One attempt: POST `message` to `url`, signed with each of `secrets`
    /// at `timestamp` (Unix seconds, this attempt's), with the endpoint's
    /// static `headers`, within `timeout` (answer and body included).
    pub async fn send(
        &self,
        url: &reqwest::Url,
        secrets: &[&Secret],
        headers: &[(HeaderName, HeaderValue)],
        message: &Message<'_>,
        timestamp: i64,
        timeout: Duration,
    ) -> Outcome {
        let span = herald_trace::hop!(
            "webhook.attempt",
            message.traceparent,
            otel.kind = "client",
            http.request.method = "POST",
            webhook.id = message.id,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let traceparent = herald_trace::traceparent(&span);
        let outcome = self
            .attempt(
                url,
                secrets,
                headers,
                message,
                traceparent.as_deref(),
                timestamp,
                timeout,
            )
            .instrument(span.clone())
            .await;
        if let Some(code) = outcome.status_code {
            span.record("http.response.status_code", code);
        }
        if !outcome.succeeded() {
            span.record("otel.status_code", "ERROR");
        }
        span.in_scope(|| {
            tracing::debug!(
                status = outcome.status_code,
                latency_ms = outcome.latency.as_millis(),
                succeeded = outcome.succeeded(),
                "Webhook attempt sent.",
            );
        });
        outcome
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "send's arguments and its span's context"
    )]
    async fn attempt(
        &self,
        url: &reqwest::Url,
        secrets: &[&Secret],
        headers: &[(HeaderName, HeaderValue)],
        message: &Message<'_>,
        traceparent: Option<&str>,
        timestamp: i64,
        timeout: Duration,
    ) -> Outcome {
        let started = Instant::now();
        if let Err(refused) = self.policy.check_url(url) {
            return refused_outcome(&refused, started);
        }
        let mut request_headers = HeaderMap::with_capacity(headers.len() + 6);
        for (name, value) in headers {
            request_headers.append(name.clone(), value.clone());
        }
        // Herald's own headers after the endpoint's: never overridden.
        let signature = signature_header(
            secrets.iter().copied(),
            message.id,
            timestamp,
            &message.body,
        );
        request_headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static(CLOUDEVENTS_JSON),
        );
        request_headers.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in [
            (HEADER_ID, message.id.to_owned()),
            (HEADER_TIMESTAMP, timestamp.to_string()),
            (HEADER_SIGNATURE, signature),
        ]
        .into_iter()
        .chain(
            traceparent
                .or(message.traceparent)
                .map(|value| ("traceparent", value.to_owned())),
        ) {
            if let Ok(value) = HeaderValue::try_from(value) {
                request_headers.insert(HeaderName::from_static(name), value);
            }
        }
        // The request built whole: no builder merging the headers in.
        let mut request = reqwest::Request::new(reqwest::Method::POST, url.clone());
        *request.headers_mut() = request_headers;
        *request.body_mut() = Some(message.body.clone().into());
        *request.timeout_mut() = Some(timeout);
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(error) => return failure_outcome(&error, started),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let (excerpt, body_error) = read_excerpt(response).await;
        let latency = started.elapsed();
        let (class, error) = match body_error {
            Some(error) if error.is_timeout() => (
                ErrorClass::Timeout,
                Some(format!("no whole answer within {} ms", timeout.as_millis())),
            ),
            _ if status.is_success() => (ErrorClass::None, None),
            _ => (
                ErrorClass::Status,
                Some(format!("the receiver answered {status}")),
            ),
        };
        Outcome {
            status_code: Some(status.as_u16()),
            latency,
            class,
            error,
            response_excerpt: excerpt,
            retry_after: retry_after.filter(|_| matches!(status.as_u16(), 429 | 503)),
            gone: status == reqwest::StatusCode::GONE,
        }
    }
}

/// Reads up to [`EXCERPT_BYTES`] of the body; the rest is not read (the
/// connection is dropped rather than reused when the body was longer).
async fn read_excerpt(mut response: reqwest::Response) -> (String, Option<reqwest::Error>) {
    let mut kept = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = EXCERPT_BYTES - kept.len();
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if kept.len() == EXCERPT_BYTES {
                    break;
                }
            }
            Ok(None) => break,
            Err(error) => return (String::from_utf8_lossy(&kept).into_owned(), Some(error)),
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), None)
}

fn refused_outcome(refused: &Refused, started: Instant) -> Outcome {
    Outcome {
        status_code: None,
        latency: started.elapsed(),
        class: ErrorClass::TargetNotAllowed,
        error: Some(refused.to_string()),
        response_excerpt: String::new(),
        retry_after: None,
        gone: false,
    }
}

fn failure_outcome(error: &reqwest::Error, started: Instant) -> Outcome {
    // A refusal by the guarded resolver surfaces as a connect error whose
    // source chain holds the `Refused`.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return refused_outcome(refused, started);
        }
        source = cause.source();
    }
    let class = if error.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Connect
    };
    Outcome {
        status_code: None,
        latency: started.elapsed(),
        class,
        error: Some(error_chain(error)),
        response_excerpt: String::new(),
        retry_after: None,
        gone: false,
    }
}

/// The error and its causes, `: `-separated (reqwest's own message alone
/// says only "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
