//! The accept loop and each connection's timeouts (`[connections]`).
//!
//! ```text
//! serve(listener, app, options, tls, stop)
//!   accept ─▶ TCP_NODELAY ─▶ one task per connection (a JoinSet: dropping
//!   the serve future aborts every connection)
//!     [tls] on: the TLS handshake first (`tls.rs`), within
//!             tls.handshake_timeout_ms; its ALPN picks h2 or http/1.1, and
//!             a verified client certificate's PeerCertificate goes into
//!             every request's extensions
//!     hyper-util's auto builder: HTTP/1 or HTTP/2 (h2c, or h2 over TLS), upgrades
//!     HTTP/1  header_read_timeout: the request head must arrive in time;
//!             hyper waits for a head between keep-alive requests too, so
//!             this also closes an idle HTTP/1 connection
//!     HTTP/2  a PING every keep_alive_interval, the connection dropped when
//!             one goes unanswered for KEEP_ALIVE_TIMEOUT
//!     both    idle_timeout: no request in flight for that long (also a
//!             client that never sends a byte, or half an HTTP/2 preface)
//!             → graceful close
//!   max_per_address: a remote IP already holding that many connections
//!   has the new one closed at once (counted per IP, released when the
//!   connection task ends)
//!   stop fires: stop accepting (the listener closes), every connection
//!   closes gracefully (in-flight requests finish), then serve returns
//! ```
//!
//! "In flight" means from the moment hyper hands the request to the router
//! until the response body has been sent or dropped, so long-polls, SSE and
//! gRPC streams keep their connection; an upgraded WebSocket leaves hyper's
//! connection altogether. A request body that stalls is bounded separately:
//! [`IdleBody`] fails a REST body that sends nothing for `idle_timeout`.
//!
//! `axum::serve` could not do this: it sets no timer, so hyper's header read
//! timeout never ran, and it has no idle timeout at all — a client could
//! hold a connection (and its task) forever with half a request line.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::config::ConnectionOptions;
use crate::tls::{PeerCertificate, Tls};

/// How long an HTTP/2 keep-alive PING may go unanswered before the
/// connection is dropped (hyper's default).
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves `app` on `listener` until `stop` fires, then closes every
/// connection gracefully and returns once they are all gone (see the module
/// docs). With `tls`, every connection is a TLS connection. Dropping the
/// future aborts the connections still open.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ConnectionOptions,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout());
    builder
        .http2()
        .timer(TokioTimer::new())
        // Extended CONNECT: WebSockets over HTTP/2, as axum::serve allowed.
        .enable_connect_protocol()
        .keep_alive_interval(options.keep_alive_interval())
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let per_address = PerAddress::new(options.max_per_address);
    let mut connections = JoinSet::new();
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match per_address.admit(peer.ip()) {
                    Some(slot) => (tcp, slot),
                    None => {
                        debug!(peer = %peer.ip(), "Too many connections from one address; closing the new one.");
                        continue;
                    }
                },
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
        };
        let (tcp, slot) = tcp;
        // No Nagle: small responses (acks, deliveries' tails) must not wait
        // for the peer's delayed ACK.
        if let Err(error) = tcp.set_nodelay(true) {
            debug!(%error, "Cannot set TCP_NODELAY.");
        }
        let served = connection(
            Arc::clone(&builder),
            tcp,
            tls.clone(),
            app.clone(),
            options.idle_timeout(),
            stop.clone(),
        );
        connections.spawn(async move {
            served.await;
            drop(slot);
        });
    }
    // New connections are refused from here on.
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Open connections per remote IP address (`connections.max_per_address`).
#[derive(Debug, Clone)]
struct PerAddress {
    max: u32,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>>,
}

/// One admitted connection's place in its address's count.
#[derive(Debug)]
struct Slot {
    ip: std::net::IpAddr,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>>,
}

impl PerAddress {
    fn new(max: u32) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it holds
    /// `max` already (0: no limit, no counting).
    fn admit(&self, ip: std::net::IpAddr) -> Option<Option<Slot>> {
        if self.max == 0 {
            return Some(None);
        }
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Some(Slot {
            ip,
            open: Arc::clone(&self.open),
        }))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An accept that failed: a connection reset before it was accepted is the
/// peer's business; anything else (out of file descriptors) is logged and
/// waited out, as `axum::serve` does, instead of spinning.
async fn accept_failed(error: &io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    warn!(%error, "Cannot accept a connection; retrying in 1 s.");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves one connection (after its TLS handshake, with `tls`) until it
/// ends, closing it gracefully once `stop` fires or it has been idle for
/// `idle_timeout`.
async fn connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    tcp: TcpStream,
    tls: Option<Arc<Tls>>,
    app: Router,
    idle_timeout: Duration,
    stop: CancellationToken,
) {
    let Some(tls) = tls else {
        return http(builder, tcp, None, app, idle_timeout, stop).await;
    };
    // The handshake has its own timeout (a client that stalls it must not
    // hold the task); a shutdown meanwhile just drops the connection.
    let accepted = tokio::select! {
        () = stop.cancelled() => return,
        accepted = tls.accept(tcp) => accepted,
    };
    match accepted {
        Ok((stream, peer)) => http(builder, stream, peer, app, idle_timeout, stop).await,
        Err(error) => debug!(%error, "Closed a connection without a TLS session."),
    }
}

/// Serves HTTP on one connection's byte stream (plain TCP or TLS); `peer`
/// goes into every request's extensions.
async fn http<I>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: I,
    peer: Option<PeerCertificate>,
    app: Router,
    idle_timeout: Duration,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let started = InFlight::start(&activity);
            let app = app.clone();
            if let Some(peer) = &peer {
                request.extensions_mut().insert(peer.clone());
            }
            async move {
                let response: Response = app.oneshot(request.map(Body::new)).await?;
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _in_flight: started,
                    })
                }))
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    debug!(%error, "Connection ended with an error.");
                }
                return;
            }
            () = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = activity.idle_for(idle_timeout), if !closing => {
                debug!(timeout_ms = idle_timeout.as_millis(), "Closing an idle connection.");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Requests in flight on one connection, and when the last one ended. Kept
/// with atomics only: a request's start and end never wake the connection's
/// task (each wake would poll the whole HTTP/2 connection again); the idle
/// check wakes on a timer instead, at most once per `idle_timeout`.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection opened), in ms since
    /// `opened`.
    last_end_ms: AtomicU64,
    opened: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves once no request has been in flight for `timeout` in a row.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let wait = if self.in_flight.load(Ordering::Acquire) == 0 {
                let idle = Duration::from_millis(
                    self.now_ms()
                        .saturating_sub(self.last_end_ms.load(Ordering::Acquire)),
                );
                if idle >= timeout {
                    return;
                }
                timeout - idle
            } else {
                // Busy: look again a whole timeout later (a request that
                // ends meanwhile records its end, counted from then).
                timeout
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One request in flight: counted from the router's call until its response
/// body has been sent or dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The end's time first: whoever sees the count drop sees it too.
        let now = self.0.now_ms();
        self.0.last_end_ms.fetch_max(now, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight.
#[derive(Debug)]
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails when it sends nothing for `timeout` while it is
/// being read: a client that stops halfway through a body must not hold its
/// request (and connection) forever. REST routes only: a gRPC stream's
/// request body may rightly be silent for long.
#[derive(Debug)]
pub struct IdleBody {
    body: Body,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl IdleBody {
    /// Wraps `body`.
    pub fn new(body: Body, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }
}

/// The error of an [`IdleBody`] that waited too long.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of the request body for {} ms (connections.idle_timeout_ms)", .0.as_millis())]
pub struct BodyStalled(Duration);

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame);
        }
        if !this.armed {
            this.armed = true;
            let deadline = tokio::time::Instant::now() + this.timeout;
            this.sleep.as_mut().reset(deadline);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyStalled(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
