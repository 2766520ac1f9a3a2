//! The transport of unary calls: one HTTP/2 connection driven by `h2`
//! directly, under tonic's generated clients.
//!
//! tonic's `Channel` puts every request through a `tower::Buffer` task and
//! hyper's dispatch task, and hyper's body pipe sends a request's HEADERS
//! and its DATA in two socket writes (the DATA frame waits for flow-control
//! capacity, which h2 assigns only once the connection task has opened the
//! stream). A unary call knows its whole body before it is sent, so here the
//! body is collected first and handed to h2 with the headers: h2 buffers the
//! DATA frame until the stream opens and writes both frames in one go. One
//! serial publish costs half the client CPU this way (`examples/serial` in
//! herald-bench; BENCHMARKS.md, issue 7).
//!
//! Streaming calls (publish streams, consumers, subscriptions, blobs) stay
//! on the `Channel`. Over `https://` this connection is a TLS stream from
//! the same connector and configuration the channel uses (`tls.rs`), ALPN
//! h2, so unary calls keep their one write per call over TLS too.
//!
//! The connection is opened on first use and again after it is lost: a
//! request that finds the connection closed *before* it is sent waits for a
//! new one, so nothing is lost by reconnecting; a connection lost while a
//! request is in flight fails that request as `UNAVAILABLE` (retried by the
//! client's [`RetryPolicy`](crate::RetryPolicy) where that is safe).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::Status;
use tonic::body::Body;
use tower_service::Service;

use crate::Transport;

/// The flow-control windows the client advertises (hyper's defaults for
/// its HTTP/2 client): large enough that a unary reply of a few MiB needs
/// no window update round trip.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What unary calls go through: their own HTTP/2 connection.
pub(crate) type Unary = Direct;

impl Service<Request<Body>> for Direct {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let direct = self.clone();
        Box::pin(async move { direct.send(request).await.map_err(Into::into) })
    }
}

/// One HTTP/2 connection for unary calls (shared by clones), opened on
/// first use and reopened after it is lost.
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `host:port` to connect to.
    address: String,
    authority: Authority,
    /// `http` or `https`, as the requests say.
    scheme: Scheme,
    /// Plain TCP, or TLS through this connector.
    transport: Transport,
    connect_timeout: Duration,
    user_agent: HeaderValue,
    /// The open connection's request handle, if there is one, and its
    /// generation (one more on each reconnect).
    current: std::sync::Mutex<Option<(u64, h2::client::SendRequest<Bytes>)>>,
    /// Held while reconnecting.
    connecting: tokio::sync::Mutex<()>,
}

impl Direct {
    /// A transport for `endpoint` (`http://host:port`, or `https://` with a
    /// TLS `transport`), not yet connected.
    pub(crate) fn new(
        endpoint: &Uri,
        connect_timeout: Duration,
        transport: &Transport,
    ) -> Option<Self> {
        let authority = endpoint.authority()?.clone();
        let (scheme, default_port) = match transport {
            Transport::Plain => (Scheme::HTTP, 80),
            #[cfg(feature = "tls")]
            Transport::Tls(_) => (Scheme::HTTPS, 443),
        };
        let port = authority.port_u16().unwrap_or(default_port);
        Some(Self {
            inner: Arc::new(Inner {
                address: format!("{}:{port}", authority.host()),
                authority,
                scheme,
                transport: transport.clone(),
                connect_timeout,
                user_agent: HeaderValue::from_static(concat!(
                    "herald-client/",
                    env!("CARGO_PKG_VERSION")
                )),
                current: std::sync::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Opens the connection now (a client that is not lazy).
    pub(crate) async fn connect(&self) -> Result<(), Status> {
        self.ready().await.map(drop)
    }

    /// Sends one unary request and returns its response, within the
    /// deadline the request carries (`grpc-timeout`, set from the client's
    /// request timeout), as tonic's channel does.
    async fn send(&self, request: Request<Body>) -> Result<Response<Body>, Status> {
        match deadline(request.headers()) {
            Some(timeout) => tokio::time::timeout(timeout, self.exchange(request))
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "no reply within the call's deadline ({timeout:?})"
                    )))
                }),
            None => self.exchange(request).await,
        }
    }

    async fn exchange(&self, request: Request<Body>) -> Result<Response<Body>, Status> {
        let (mut parts, body) = request.into_parts();
        let (data, trailers) = collect(body).await?;
        parts.uri = self.uri(parts.uri.path_and_query())?;
        parts.version = http::Version::HTTP_2;
        parts
            .headers
            .entry(http::header::USER_AGENT)
            .or_insert_with(|| self.inner.user_agent.clone());
        let head = Request::from_parts(parts, ());

        let mut sender = self.ready().await?;
        let end_of_stream = data.is_empty() && trailers.is_none();
        let (response, mut stream) = sender
            .send_request(head, end_of_stream)
            .map_err(|error| status_of(&error))?;
        // Queued behind the headers before the connection task runs: h2
        // writes HEADERS and DATA together once the stream opens.
        if !data.is_empty() {
            stream
                .send_data(data, trailers.is_none())
                .map_err(|error| status_of(&error))?;
        }
        if let Some(trailers) = trailers {
            stream
                .send_trailers(trailers)
                .map_err(|error| status_of(&error))?;
        }
        let response = response.await.map_err(|error| status_of(&error))?;
        Ok(response.map(|recv| Body::new(Incoming { recv, done: false })))
    }

    /// The connection's request handle, ready for a new stream; connects
    /// (again) when there is none or the one there is has closed.
    async fn ready(&self) -> Result<h2::client::SendRequest<Bytes>, Status> {
        let seen = self.current();
        if let Some((_, sender)) = seen.clone() {
            match sender.ready().await {
                Ok(ready) => return Ok(ready),
                // Closed before this request was sent: reconnecting loses
                // nothing.
                Err(error) => tracing::debug!(%error, "Herald connection closed; reconnecting."),
            }
        }
        // One caller reconnects; the others wait for it and use its
        // connection.
        let _connecting = self.inner.connecting.lock().await;
        let generation = seen.map_or(0, |(generation, _)| generation);
        if let Some((newer, sender)) = self.current()
            && newer != generation
            && let Ok(ready) = sender.ready().await
        {
            return Ok(ready);
        }
        let sender = self.open().await?;
        {
            let mut current = self
                .inner
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let next = current.as_ref().map_or(0, |(generation, _)| *generation) + 1;
            *current = Some((next, sender.clone()));
        }
        sender
            .ready()
            .await
            .map_err(|error| Status::unavailable(format!("HTTP/2: {error}")))
    }

    /// The connection there is (with its generation), if any.
    fn current(&self) -> Option<(u64, h2::client::SendRequest<Bytes>)> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn open(&self) -> Result<h2::client::SendRequest<Bytes>, Status> {
        let address = &self.inner.address;
        let connect = async {
            match &self.inner.transport {
                Transport::Plain => {
                    let tcp = tokio::net::TcpStream::connect(address).await?;
                    tcp.set_nodelay(true)?;
                    handshake(tcp).await
                }
                #[cfg(feature = "tls")]
                Transport::Tls(connector) => handshake(connector.connect().await?).await,
            }
        };
        tokio::time::timeout(self.inner.connect_timeout, connect)
            .await
            .map_err(|_| Status::unavailable(format!("connecting to {address} timed out")))?
            .map_err(|error| Status::unavailable(format!("connecting to {address}: {error}")))
    }

    /// The request URI: the endpoint's scheme and authority, the call's
    /// path.
    fn uri(&self, path: Option<&PathAndQuery>) -> Result<Uri, Status> {
        Uri::builder()
            .scheme(self.inner.scheme.clone())
            .authority(self.inner.authority.clone())
            .path_and_query(
                path.cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
            .build()
            .map_err(|error| Status::internal(format!("request URI: {error}")))
    }
}

/// The HTTP/2 handshake on a connected stream (plain or TLS); the
/// connection's task is spawned, its request handle returned.
async fn handshake<I>(io: I) -> std::io::Result<h2::client::SendRequest<Bytes>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "Herald connection ended.");
        }
    });
    Ok(sender)
}

/// A gRPC status for an h2 failure, as the gRPC HTTP/2 mapping has it: a
/// lost connection or a refused stream is `UNAVAILABLE` (the server may not
/// have seen the call), a cancelled stream `CANCELLED`, the rest `INTERNAL`.
fn status_of(error: &h2::Error) -> Status {
    let message = format!("HTTP/2: {error}");
    if error.is_io() || error.is_go_away() {
        return Status::unavailable(message);
    }
    match error.reason() {
        Some(h2::Reason::REFUSED_STREAM) => Status::unavailable(message),
        Some(h2::Reason::CANCEL) => Status::cancelled(message),
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Status::resource_exhausted(message),
        _ => Status::internal(message),
    }
}

/// The timeout a `grpc-timeout` header gives (`<digits><unit>`, the unit
/// one of `H M S m u n`).
fn deadline(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A unary request's whole body: its data and trailers (tonic's encoder
/// yields the one message at once).
async fn collect(mut body: Body) -> Result<(Bytes, Option<HeaderMap>), Status> {
    let mut data = BytesMut::new();
    let mut first: Option<Bytes> = None;
    let mut trailers = None;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) if first.is_none() && data.is_empty() => first = Some(chunk),
            Ok(chunk) => {
                if let Some(first) = first.take() {
                    data.extend_from_slice(&first);
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(map) = frame.into_trailers() {
                    trailers = Some(map);
                }
            }
        }
    }
    Ok((first.unwrap_or_else(|| data.freeze()), trailers))
}

/// A response body read from h2: DATA frames (their flow-control capacity
/// given back as they are read), then trailers.
struct Incoming {
    recv: h2::RecvStream,
    done: bool,
}

impl http_body::Body for Incoming {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.recv.poll_data(cx)) {
            Some(Ok(chunk)) => {
                let _ = self.recv.flow_control().release_capacity(chunk.len());
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Some(Err(error)) => {
                self.done = true;
                return Poll::Ready(Some(Err(status_of(&error))));
            }
            None => {}
        }
        let trailers = std::task::ready!(self.recv.poll_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(status_of(&error)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_str(value).ok()?);
        deadline(&headers)
    }

    #[test]
    fn grpc_timeout_headers_give_the_call_deadline() {
        assert_eq!(timeout_of("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout_of("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout_of("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout_of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout_of("750u"), Some(Duration::from_micros(750)));
        assert_eq!(timeout_of("90n"), Some(Duration::from_nanos(90)));
        assert_eq!(timeout_of("5x"), None);
        assert_eq!(timeout_of("m"), None);
        assert_eq!(timeout_of(""), None);
        assert_eq!(deadline(&HeaderMap::new()), None);
    }
}
