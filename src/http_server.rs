//! HTTP server loop shared by the listeners.
//!
//! One accept loop per listener: HTTP/1.1 and h2c (prior knowledge) on the same port, upgrades
//! (WebSocket) enabled, request header limits enforced by hyper, and a bounded graceful shutdown.
//!
//! Connection hardening, every limit counted per listener (`[listen]` in the configuration):
//!
//! - `max_connections`: at most this many sockets are open at once, upgraded ones included. When
//!   all slots are taken the loop stops calling `accept`, so new connections wait in the kernel's
//!   backlog instead of being accepted and dropped.
//! - `header_timeout`: a connection that has not completed its first request head this long
//!   after being accepted is closed. The clock starts at `accept`, before hyper-util has seen
//!   enough bytes to tell HTTP/1 from HTTP/2, so a silent socket or a bare HTTP/2 preface is
//!   caught too (hyper's own header timer only runs inside an HTTP/1 connection). Later HTTP/1.1
//!   request heads are bounded by hyper's timer, set to the same value.
//! - `idle_timeout`: a connection with no request in progress for this long is shut down
//!   gracefully (HTTP/2: `GOAWAY`), and dropped if it is still there one `header_timeout` later.
//! - `h2_keep_alive_interval`: HTTP/2 `PING`s find dead peers; `H2_MAX_CONCURRENT_STREAMS` caps
//!   the streams of one connection.
//! - `body_timeout`: a request body that delivers nothing for this long while it is read fails,
//!   and the request is answered `408` (the proxy's upstream request is aborted with it).
//! - Accept errors that concern the listener (EMFILE, ENFILE, ENOBUFS) pause the loop, doubling
//!   from 100 ms to 1 s, and log at most one warning per 10 s with the count of those not logged.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::config::ListenConfig;
use crate::proxy::json_error;

/// Limits of one listener: request headers (exceeding one gives `431 Request Header Fields Too
/// Large`), connections and their timeouts.
#[derive(Debug, Clone)]
pub(crate) struct ServerLimits {
    /// Most header fields accepted in one HTTP/1.1 request.
    pub(crate) max_headers: usize,
    /// Most bytes of request head (request line and headers) accepted; also hyper's HTTP/1
    /// read buffer size (at least 8 KiB) and the HTTP/2 header list limit.
    pub(crate) max_header_bytes: usize,
    /// Most connections open at once.
    pub(crate) max_connections: usize,
    /// Until the first request head is complete, from `accept`; also each later HTTP/1.1 head.
    pub(crate) header_timeout: Duration,
    /// A connection without a request in progress for this long is shut down.
    pub(crate) idle_timeout: Duration,
    /// Longest pause inside a request body.
    pub(crate) body_timeout: Duration,
    /// HTTP/2 keep-alive `PING` interval, and how long its acknowledgement may take.
    pub(crate) h2_keep_alive_interval: Duration,
}

impl ServerLimits {
    /// The limits `[listen]` configures.
    pub(crate) fn from_config(listen: &ListenConfig) -> Self {
        Self {
            max_headers: listen.max_request_headers,
            max_header_bytes: listen.max_request_header_bytes,
            max_connections: listen.max_connections,
            header_timeout: listen.header_timeout,
            idle_timeout: listen.idle_timeout,
            body_timeout: listen.body_timeout,
            h2_keep_alive_interval: listen.h2_keep_alive_interval,
        }
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self::from_config(&ListenConfig::default())
    }
}

/// Serves `router` on `listener` (HTTP/1.1 and h2c prior-knowledge) until `shutdown` resolves;
/// then stops accepting, lets in-flight requests finish for at most `grace`, and returns.
///
/// Each request goes to `router` with its peer's address ([`RequestService`]), and carries a
/// [`BodyStall`] in its extensions when it has a body; upgrades (WebSocket) are supported. Accept errors are
/// logged and retried after a pause.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    router: S,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()>
where
    S: RequestService,
{
    serve_from(listener, router, limits, shutdown, grace).await
}

/// What the serving loop calls for each request, with the address of the connection's peer: an
/// axum `Router` (which gets the address as `ConnectInfo` in the request's extensions, for its
/// extractor), or the server's router of the configuration in force (which may hand it on
/// without touching the extensions).
pub(crate) trait RequestService: Clone + Send + Sync + 'static {
    /// The answer in the making.
    type Future: Future<Output = Result<axum::response::Response, std::convert::Infallible>>
        + Send
        + 'static;

    /// What the service keeps for one connection, from its first request to its last (the
    /// server's: the last bearer token the connection sent, `validate::LastToken`).
    type Connection: Default + Send + Sync + 'static;

    /// Answers `request`, which came from `peer` on `connection`.
    fn call_from(
        &self,
        peer: SocketAddr,
        connection: &Arc<Self::Connection>,
        request: Request<Body>,
    ) -> Self::Future;
}

impl RequestService for axum::Router {
    type Future = axum::routing::future::RouteFuture<std::convert::Infallible>;
    type Connection = ();

    fn call_from(&self, peer: SocketAddr, _: &Arc<()>, request: Request<Body>) -> Self::Future {
        call_router(self, peer, request)
    }
}

/// `router`'s answer to `request` from `peer`, which it gets as `ConnectInfo`.
pub(crate) fn call_router(
    router: &axum::Router,
    peer: SocketAddr,
    mut request: Request<Body>,
) -> axum::routing::future::RouteFuture<std::convert::Infallible> {
    request.extensions_mut().insert(ConnectInfo(peer));
    // A router is always ready (its `poll_ready` does nothing), and cloning it is a reference
    // count.
    router.clone().call(request)
}

/// hyper keeps up to this many header slots on the stack; setting any value moves them to the
/// heap for every request, so the default is left alone.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// hyper refuses an HTTP/1 read buffer smaller than this.
const HYPER_MIN_BUF_SIZE: usize = 8192;
/// `SETTINGS_MAX_CONCURRENT_STREAMS`: RFC 9113 §6.5.2 recommends no less than 100, so that
/// clients are not held back; hyper's default (200) is not part of its stable API.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// First pause after a resource error from `accept` (EMFILE, ENFILE, ENOBUFS): retrying at once
/// would spin on the same error while connections being closed elsewhere free descriptors.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(100);
/// The pause doubles on each error in a row up to this.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// At most one accept-error warning per this interval; the next one counts those not logged.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The source of connections; a trait so tests can inject accept errors.
trait Acceptor {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Acceptor for TcpListener {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

async fn serve_from<R: RequestService>(
    mut acceptor: impl Acceptor,
    router: R,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let builder = connection_builder(&limits);
    let timeouts = ConnectionTimeouts {
        header: limits.header_timeout,
        idle: limits.idle_timeout,
    };
    let body_timeout = limits.body_timeout;
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    let mut slot: Option<OwnedSemaphorePermit> = None;

    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow with every connection.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            // A free slot before `accept`: while the listener is full, new connections wait in
            // the kernel's backlog rather than being accepted only to be dropped.
            permit = slots.clone().acquire_owned(), if slot.is_none() => match permit {
                Ok(permit) => {
                    slot = Some(permit);
                    continue;
                }
                // The semaphore is never closed.
                Err(_) => break,
            },
            accepted = acceptor.accept(), if slot.is_some() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(error) if is_per_connection_error(&error) => {
                tracing::debug!(%error, "accept failed for one connection");
                continue;
            }
            Err(error) => {
                let (pause, warn) = backoff.failed(Instant::now());
                if let Some(not_logged) = warn {
                    tracing::warn!(
                        %error,
                        retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        not_logged,
                        "accept failed; pausing (one such warning per 10s at most; not_logged \
                         counts the others since the last one)"
                    );
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let Some(slot) = slot.take() else {
            continue;
        };
        configure_accepted(&stream);
        let activity = Arc::new(Activity::new());
        // Like `into_make_service_with_connect_info` does for `axum::serve`: every request of
        // this connection carries the peer address. Cloning the router is a reference count.
        let service = {
            let router = router.clone();
            let activity = activity.clone();
            let connection = Arc::new(R::Connection::default());
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let in_flight = activity.begin();
                let (mut parts, body) = request.into_parts();
                let version = parts.version;
                // Most requests have no body: they get no timer and no flag.
                let (body, stall) = if http_body::Body::is_end_stream(&body) {
                    (Body::new(body), None)
                } else {
                    let stall = BodyStall::new(body_timeout);
                    parts.extensions.insert(stall.clone());
                    (
                        Body::new(StallTimeout::new(body, stall.clone())),
                        Some(stall),
                    )
                };
                let response =
                    router.call_from(peer, &connection, Request::from_parts(parts, body));
                async move {
                    response.await.map(|response| {
                        let response = match stall {
                            Some(stall) => stall.answer(version, response),
                            None => response,
                        };
                        response.map(|body| Tracked {
                            body,
                            _in_flight: in_flight,
                        })
                    })
                }
            })
        };
        let socket = Socket {
            stream,
            _slot: slot,
        };
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(socket), service)
            .into_owned();
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let mut watchdog = Watchdog::new(activity, timeouts);
            let mut draining = false;
            let side_wake = Arc::new(SideWake::default());
            loop {
                let event = {
                    let side = side_event(&mut stopped, &mut watchdog, draining);
                    let mut side = std::pin::pin!(side);
                    side_wake.must_poll();
                    std::future::poll_fn(|cx| {
                        if let Poll::Ready(ended) = connection.as_mut().poll(cx) {
                            return Poll::Ready(Err(ended));
                        }
                        side_wake.poll_if_woken(cx, side.as_mut()).map(Ok)
                    })
                    .await
                };
                // Each arm either ends the connection or falls through to drain it.
                match event {
                    Err(ended) => {
                        if let Err(error) = ended {
                            // Client resets and protocol errors are routine on a public listener.
                            tracing::debug!(%peer, error = %error, "connection ended with an error");
                        }
                        return;
                    }
                    Ok(Side::Expired(Expired::NoRequest)) => {
                        tracing::debug!(%peer, "no request head within header_timeout; closing");
                        return;
                    }
                    Ok(Side::Expired(Expired::Idle)) if draining => {
                        tracing::debug!(%peer, "still open after a graceful shutdown; closing");
                        return;
                    }
                    Ok(Side::Expired(Expired::Idle)) => {
                        tracing::debug!(%peer, "idle for idle_timeout; shutting down");
                    }
                    Ok(Side::Stop) => {}
                }
                draining = true;
                watchdog.draining();
                connection.as_mut().graceful_shutdown();
            }
        });
    }

    // Closing the listener first makes new connection attempts fail fast instead of queueing.
    drop(acceptor);
    let _ = stop.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "shutdown grace period over; closing remaining connections"
        );
    }
    connections.shutdown().await;
    Ok(())
}

fn connection_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    {
        let mut http1 = builder.http1();
        http1
            .timer(TokioTimer::new())
            // hyper starts this timer whenever it begins reading a head, so it also bounds the
            // wait for the next request on a kept-alive connection.
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUF_SIZE));
        if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http1.max_headers(limits.max_headers);
        }
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_interval);
    builder
}

fn configure_accepted(stream: &TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
}

/// Errors that concern only the connection being accepted; the listener itself is fine.
fn is_per_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Pauses and warnings for accept errors that concern the listener.
#[derive(Debug)]
struct AcceptBackoff {
    /// The pause after the next error.
    pause: Duration,
    /// When the last warning was logged.
    last_warning: Option<Instant>,
    /// Errors since then that were not logged.
    not_logged: u64,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            pause: ACCEPT_PAUSE_MIN,
            last_warning: None,
            not_logged: 0,
        }
    }
}

impl AcceptBackoff {
    /// An error at `now`: the pause before the next `accept`, and `Some(errors not logged since
    /// the last warning)` when this one is to be logged.
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let pause = self.pause;
        self.pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
        let warn = match self.last_warning {
            Some(at) if now.saturating_duration_since(at) < ACCEPT_WARNING_INTERVAL => {
                self.not_logged += 1;
                None
            }
            _ => {
                self.last_warning = Some(now);
                Some(std::mem::take(&mut self.not_logged))
            }
        };
        (pause, warn)
    }

    /// A connection was accepted: the next error pauses briefly again. The warning interval
    /// keeps running, so an error that comes and goes still logs once per interval.
    fn succeeded(&mut self) {
        self.pause = ACCEPT_PAUSE_MIN;
    }
}

/// An accepted socket holding one of its listener's `max_connections` slots until it is
/// closed, also when an upgrade hands it on to a tunnel.
struct Socket {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// What a connection's requests tell its watchdog.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests handed to the router whose response body is not finished.
    in_flight: AtomicUsize,
    /// When `in_flight` last fell to 0, in milliseconds after `opened`; [`Activity::NEVER`]
    /// before the first request.
    idle_since_ms: AtomicU64,
}

impl Activity {
    const NEVER: u64 = u64::MAX;

    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(Self::NEVER),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Since when the connection has had no request in progress; `None` while one is, and
    /// `Err(opened)` when it never had one.
    fn idle_since(&self) -> Option<Result<Instant, Instant>> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        match self.idle_since_ms.load(Ordering::SeqCst) {
            Self::NEVER => Some(Err(self.opened)),
            ms => Some(Ok(self.opened + Duration::from_millis(ms))),
        }
    }
}

/// One request in progress; dropped with the response body (or the unfinished response).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let ms = Instant::now()
                .saturating_duration_since(activity.opened)
                .as_millis();
            let ms = u64::try_from(ms).unwrap_or(Activity::NEVER - 1);
            activity.idle_since_ms.store(ms, Ordering::SeqCst);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in progress until it is done.
    struct Tracked<B> {
        #[pin]
        body: B,
        _in_flight: InFlight,
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[derive(Debug, Clone, Copy)]
struct ConnectionTimeouts {
    header: Duration,
    idle: Duration,
}

/// Why a connection's watchdog fired.
#[derive(Debug, PartialEq, Eq)]
enum Expired {
    /// No request head arrived within `header_timeout` of `accept`.
    NoRequest,
    /// No request in progress for `idle_timeout` (or, once shutting down, `header_timeout`).
    Idle,
}

/// The first-request and idle deadlines of one connection, on one timer that is moved only
/// when it fires: a busy connection costs one wake-up per `idle_timeout`, not a timer update
/// per request.
struct Watchdog {
    activity: Arc<Activity>,
    timeouts: ConnectionTimeouts,
    timer: Pin<Box<Sleep>>,
    /// When a graceful shutdown began.
    draining_since: Option<Instant>,
}

impl Watchdog {
    fn new(activity: Arc<Activity>, timeouts: ConnectionTimeouts) -> Self {
        let first = activity.opened + timeouts.header.min(timeouts.idle);
        let timer = Box::pin(tokio::time::sleep_until(first));
        Self {
            activity,
            timeouts,
            timer,
            draining_since: None,
        }
    }

    /// A graceful shutdown began: the peer gets `header_timeout` more to finish, whatever the
    /// idle deadline was.
    fn draining(&mut self) {
        let now = Instant::now();
        self.draining_since = Some(now);
        let deadline = now + self.timeouts.header;
        if self.timer.deadline() < deadline {
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Resolves when a deadline has passed; cancel-safe.
    async fn expired(&mut self) -> Expired {
        loop {
            self.timer.as_mut().await;
            match self.check(Instant::now()) {
                Ok(expired) => return expired,
                Err(next) => self.timer.as_mut().reset(next),
            }
        }
    }

    /// What has expired at `now`, or when to look again: at the deadline, but never later
    /// than `idle_timeout` from now. A request may start or end meanwhile, and the earliest
    /// deadline that can then come up is its end plus `idle_timeout`.
    fn check(&self, now: Instant) -> Result<Expired, Instant> {
        let (deadline, expired) = match self.activity.idle_since() {
            // A request in progress is bounded by the body, upstream and shutdown timeouts.
            None => return Err(now + self.timeouts.idle),
            Some(Err(opened)) => (opened + self.timeouts.header, Expired::NoRequest),
            Some(Ok(since)) => (since + self.timeouts.idle, Expired::Idle),
        };
        let deadline = match self.draining_since {
            Some(since) => deadline.max(since + self.timeouts.header),
            None => deadline,
        };
        if now >= deadline {
            Ok(expired)
        } else {
            Err(deadline.min(now + self.timeouts.idle))
        }
    }
}

/// What happens to a connection besides its requests: the server stops, or its watchdog fires.
enum Side {
    Stop,
    Expired(Expired),
}

/// The next [`Side`] event of a connection (the stop is no news once it is draining).
async fn side_event(
    stopped: &mut watch::Receiver<bool>,
    watchdog: &mut Watchdog,
    draining: bool,
) -> Side {
    tokio::select! {
        biased;
        _ = stopped.changed(), if !draining => Side::Stop,
        expired = watchdog.expired() => Side::Expired(expired),
    }
}

/// Whether a connection's [`side_event`] was woken. The connection task wakes several times
/// per request (bytes in, the response ready, bytes out); polling the stop signal and the
/// watchdog's timer at each of those costs more than the rest of the task's own work, so they
/// are polled only when their own waker fired.
#[derive(Debug, Default)]
struct SideWake {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl SideWake {
    /// A new side future has not been polled yet: the next poll must.
    fn must_poll(&self) {
        self.woken.store(true, Ordering::Release);
    }

    /// Polls `side` if its waker fired since it was last polled (or it never was).
    fn poll_if_woken<F: Future>(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        side: Pin<&mut F>,
    ) -> Poll<F::Output> {
        self.task.register(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = std::task::Waker::from(self.clone());
        side.poll(&mut Context::from_waker(&waker))
    }
}

impl std::task::Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Set when a request's body stalled for `body_timeout`; in the request's extensions, so a
/// layer inside the access log can answer `408` itself (see [`answer_stalled_body`]).
#[derive(Debug, Clone)]
pub(crate) struct BodyStall {
    stalled: Arc<AtomicBool>,
    timeout: Duration,
}

static CLOSE: HeaderValue = HeaderValue::from_static("close");

impl BodyStall {
    fn new(timeout: Duration) -> Self {
        Self {
            stalled: Arc::new(AtomicBool::new(false)),
            timeout,
        }
    }

    /// `response`, or `408` when the body stalled: whatever the handler made of the failed
    /// body (the proxy's `502`, an extractor's `400`) the client's request timed out.
    fn answer(&self, version: Version, response: Response<Body>) -> Response<Body> {
        if !self.stalled.load(Ordering::SeqCst) || response.status() == StatusCode::REQUEST_TIMEOUT
        {
            return response;
        }
        let mut answer = json_error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            &format!(
                "the request body stalled: nothing arrived for {}",
                humantime::format_duration(self.timeout)
            ),
        );
        // RFC 9110 §15.5.9: with 408 the server closes the connection instead of waiting
        // longer. HTTP/2 has no `Connection` header (RFC 9113 §8.2.2); the stream just ends.
        if version < Version::HTTP_2 {
            answer
                .headers_mut()
                .insert(header::CONNECTION, CLOSE.clone());
        }
        answer
    }
}

/// Middleware (`axum::middleware::from_fn`) answering `408` for a request whose body stalled,
/// for routers behind an access log: the serving loop does the same, but outside the log.
pub(crate) async fn answer_stalled_body(
    request: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let stall = request.extensions().get::<BodyStall>().cloned();
    let version = request.version();
    let response = next.run(request).await;
    match stall {
        Some(stall) => stall.answer(version, response),
        None => response,
    }
}

/// A request body's error when the client sent nothing for `body_timeout`.
#[derive(Debug)]
struct BodyStalled(Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client sent no request body data for {}",
            humantime::format_duration(self.0)
        )
    }
}

impl std::error::Error for BodyStalled {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyStalled`] when, while it is being read, no frame
    /// arrives for the timeout. The clock runs only while the reader waits: a reader that is
    /// slow itself (an upstream applying back-pressure) does not count against the client.
    struct StallTimeout<B> {
        #[pin]
        inner: B,
        stall: BodyStall,
        // When the current wait for a frame began; `None` between waits.
        waiting_since: Option<Instant>,
        // Made at the first wait and moved only when it fires early, so a body of many frames
        // does not update the timer wheel for each.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> StallTimeout<B> {
    fn new(inner: B, stall: BodyStall) -> Self {
        Self {
            inner,
            stall,
            waiting_since: None,
            timer: None,
        }
    }
}

impl<B> http_body::Body for StallTimeout<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting_since = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let timeout = this.stall.timeout;
        let deadline = *this.waiting_since.get_or_insert_with(Instant::now) + timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= deadline {
                break;
            }
            // Fired for an earlier wait: this one has time left.
            timer.as_mut().reset(deadline);
        }
        this.stall.stalled.store(true, Ordering::SeqCst);
        Poll::Ready(Some(Err(Box::new(BodyStalled(timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    /// A running server; dropping the sender would also stop it, `stop` waits for the loop.
    struct TestServer {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl TestServer {
        async fn start(router: Router, limits: ServerLimits, grace: Duration) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            Self::start_on(listener, addr, router, limits, grace)
        }

        /// The `/peer` router with default limits and a one-second grace.
        async fn peer() -> Self {
            Self::start(
                peer_router(),
                ServerLimits::default(),
                Duration::from_secs(1),
            )
            .await
        }

        fn start_on(
            acceptor: impl Acceptor + Send + 'static,
            addr: SocketAddr,
            router: Router,
            limits: ServerLimits,
            grace: Duration,
        ) -> Self {
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = async move {
                let _ = stopped.await;
            };
            let task = tokio::spawn(serve_from(acceptor, router, limits, shutdown, grace));
            Self {
                addr,
                stop: Some(stop),
                task,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn begin_shutdown(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }

        async fn stop(mut self) {
            self.begin_shutdown();
            // Bounded so a broken shutdown fails the test instead of hanging it.
            tokio::time::timeout(Duration::from_secs(30), self.task)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
    }

    fn peer_router() -> Router {
        Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
    }

    #[tokio::test]
    async fn serves_http1_with_connect_info() {
        let server = TestServer::peer().await;
        let response = reqwest::Client::new()
            .get(server.url("/peer"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_11);
        assert_eq!(response.status(), 200);
        let peer: SocketAddr = response.text().await.unwrap().parse().unwrap();
        assert_eq!(peer.ip(), std::net::Ipv4Addr::LOCALHOST);
        assert_ne!(peer.port(), server.addr.port());
        server.stop().await;
    }

    #[tokio::test]
    async fn serves_h2c_prior_knowledge() {
        let server = TestServer::peer().await;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let response = client.get(server.url("/peer")).send().await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        let peer: SocketAddr = response.text().await.unwrap().parse().unwrap();
        assert_eq!(peer.ip(), std::net::Ipv4Addr::LOCALHOST);
        drop(client);
        server.stop().await;
    }

    /// Sends `head` on a raw connection and returns everything the server answers.
    async fn raw_exchange(addr: SocketAddr, head: Vec<u8>) -> String {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        // The server may answer and close before it has read everything; a failed write is
        // expected then and must not hide the answer.
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&head).await;
            writer
        });
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        drop(writing.await);
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn too_many_headers_get_431() {
        let server = TestServer::peer().await;
        let mut head = b"GET /peer HTTP/1.1\r\nhost: x\r\n".to_vec();
        for i in 0..200 {
            head.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let answer = raw_exchange(server.addr, head).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn configured_header_count_is_enforced() {
        let limits = ServerLimits {
            max_headers: 10,
            ..ServerLimits::default()
        };
        let server = TestServer::start(peer_router(), limits, Duration::from_secs(1)).await;
        let mut head = b"GET /peer HTTP/1.1\r\nhost: x\r\n".to_vec();
        for i in 0..20 {
            head.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"connection: close\r\n\r\n");
        let answer = raw_exchange(server.addr, head).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

        let head = b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec();
        let answer = raw_exchange(server.addr, head).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_header_gets_431() {
        let server = TestServer::peer().await;
        let mut head = b"GET /peer HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 100 * 1024));
        head.extend_from_slice(b"\r\n\r\n");
        let answer = raw_exchange(server.addr, head).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

        // A header just under the limit is still served.
        let mut head = b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 60 * 1024));
        head.extend_from_slice(b"\r\n\r\n");
        let answer = raw_exchange(server.addr, head).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_h2_header_list_is_refused() {
        let server = TestServer::peer().await;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let big = "a".repeat(100 * 1024);
        // h2 answers an over-long header list with 431 on that stream, the connection lives on.
        let refused = client
            .get(server.url("/peer"))
            .header("x-big", big)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 431);
        let ok = client.get(server.url("/peer")).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        drop(client);
        server.stop().await;
    }

    #[tokio::test]
    async fn in_flight_request_finishes_during_shutdown() {
        let (entered_tx, entered_rx) = oneshot::channel::<()>();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let entered = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let release = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
        let router = Router::new().route(
            "/slow",
            get(move || {
                let entered = entered.clone();
                let release = release.clone();
                async move {
                    if let Some(tx) = entered.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    if let Some(rx) = release.lock().await.take() {
                        let _ = rx.await;
                    }
                    "done"
                }
            }),
        );
        let mut server =
            TestServer::start(router, ServerLimits::default(), Duration::from_secs(30)).await;
        let url = server.url("/slow");
        let request = tokio::spawn(async move { reqwest::get(url).await?.text().await });
        entered_rx.await.unwrap();

        server.begin_shutdown();
        // The listener closes while the request is still running.
        let addr = server.addr;
        let mut refused = false;
        for _ in 0..1000 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "listener still accepting after shutdown");
        assert!(!server.task.is_finished());

        release_tx.send(()).unwrap();
        assert_eq!(request.await.unwrap().unwrap(), "done");
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_returns_after_grace_when_a_request_hangs() {
        let (entered_tx, entered_rx) = oneshot::channel::<()>();
        let entered = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let router = Router::new().route(
            "/hang",
            get(move || {
                let entered = entered.clone();
                async move {
                    if let Some(tx) = entered.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    std::future::pending::<()>().await;
                    "never"
                }
            }),
        );
        let server =
            TestServer::start(router, ServerLimits::default(), Duration::from_millis(50)).await;
        let url = server.url("/hang");
        let request = tokio::spawn(async move { reqwest::get(url).await });
        entered_rx.await.unwrap();
        server.stop().await;
        // The hanging connection was closed, so the client sees an error, not a response.
        assert!(request.await.unwrap().is_err());
    }

    /// Fails the first `failures` accepts with a resource error, then accepts for real.
    struct FlakyAcceptor {
        listener: TcpListener,
        failures: Arc<AtomicUsize>,
    }

    impl Acceptor for FlakyAcceptor {
        async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                // What accept(2) reports when the process is out of file descriptors.
                return Err(io::Error::other("Too many open files (os error 24)"));
            }
            self.listener.accept().await
        }
    }

    #[tokio::test]
    async fn accept_errors_are_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let failures = Arc::new(AtomicUsize::new(2));
        let acceptor = FlakyAcceptor {
            listener,
            failures: failures.clone(),
        };
        let server = TestServer::start_on(
            acceptor,
            addr,
            peer_router(),
            ServerLimits::default(),
            Duration::from_secs(1),
        );
        let response = reqwest::get(server.url("/peer")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(failures.load(Ordering::SeqCst), 0);
        assert!(!server.task.is_finished());
        server.stop().await;
    }

    #[tokio::test]
    async fn accepted_sockets_get_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        assert!(!stream.nodelay().unwrap());
        configure_accepted(&stream);
        assert!(stream.nodelay().unwrap());
    }

    #[test]
    fn per_connection_errors_do_not_pause() {
        assert!(is_per_connection_error(
            &io::ErrorKind::ConnectionAborted.into()
        ));
        assert!(!is_per_connection_error(&io::Error::from_raw_os_error(24)));
    }

    #[test]
    fn accept_errors_back_off_and_warn_once_per_interval() {
        let mut backoff = AcceptBackoff::default();
        let start = Instant::now();
        let mut pauses = Vec::new();
        let mut warnings = Vec::new();
        let mut now = start;
        // Thirty errors in a row, each after the pause the previous one asked for.
        for _ in 0..30 {
            let (pause, warn) = backoff.failed(now);
            pauses.push(pause.as_millis());
            if let Some(not_logged) = warn {
                warnings.push((now.duration_since(start).as_millis(), not_logged));
            }
            now += pause;
        }
        assert_eq!(pauses[..6], [100, 200, 400, 800, 1000, 1000]);
        // 100+200+400+800 ms, then one per second: the 10 s interval has passed at the error
        // at 10.5 s, which reports the 12 errors since the first warning.
        assert_eq!(warnings, [(0, 0), (10_500, 12), (20_500, 9)]);

        backoff.succeeded();
        assert_eq!(backoff.failed(now).0, ACCEPT_PAUSE_MIN);
    }

    /// Serves `/peer` with `limits` changed by `change`, and a one-second grace.
    async fn start_with(change: impl FnOnce(&mut ServerLimits)) -> TestServer {
        let mut limits = ServerLimits::default();
        change(&mut limits);
        TestServer::start(peer_router(), limits, Duration::from_secs(1)).await
    }

    /// Reads until the server closes the connection, or fails after `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
        let mut seen = Vec::new();
        let read = tokio::time::timeout(within, async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "connection still open after {within:?}");
        seen
    }

    #[tokio::test]
    async fn silent_connection_is_closed_after_header_timeout() {
        let server = start_with(|l| l.header_timeout = Duration::from_millis(200)).await;
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let answer = closed_within(&mut silent, Duration::from_secs(10)).await;
        assert!(answer.is_empty(), "{answer:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn idle_http1_connection_is_closed_after_idle_timeout() {
        let server = start_with(|l| l.idle_timeout = Duration::from_millis(200)).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // The answer comes at once; then the kept-alive connection idles until it is closed.
        let answer = closed_within(&mut stream, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn idle_h2_connection_gets_goaway_after_idle_timeout() {
        let server = start_with(|l| l.idle_timeout = Duration::from_millis(200)).await;
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let request = Request::get(server.url("/peer"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        // The client keeps the connection (and answers PINGs); the server ends it.
        let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
        assert!(ended.is_ok(), "h2 connection still open");
        server.stop().await;
    }

    fn echo_body_router() -> Router {
        Router::new().route(
            "/echo",
            axum::routing::post(|body: Bytes| async move { body }),
        )
    }

    #[tokio::test]
    async fn stalled_body_gets_408_and_the_connection_closes() {
        let limits = ServerLimits {
            body_timeout: Duration::from_millis(200),
            ..ServerLimits::default()
        };
        let server = TestServer::start(echo_body_router(), limits, Duration::from_secs(1)).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let answer = closed_within(&mut stream, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
        server.stop().await;
    }

    #[tokio::test]
    async fn stalled_h2_body_gets_408() {
        let limits = ServerLimits {
            body_timeout: Duration::from_millis(200),
            ..ServerLimits::default()
        };
        let server = TestServer::start(echo_body_router(), limits, Duration::from_secs(1)).await;
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        // A body that sends one frame and then never ends.
        let (frames, body) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, io::Error>>(1);
        frames
            .send(Ok(http_body::Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let body = http_body_util::StreamBody::new(tokio_stream_from(body));
        let request = Request::post(server.url("/echo")).body(body).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("answered before the client's timeout")
            .unwrap();
        assert_eq!(response.status(), 408);
        assert!(response.headers().get(header::CONNECTION).is_none());
        drop(frames);
        server.stop().await;
    }

    /// A `Stream` over an mpsc receiver (tokio-stream is not a dependency).
    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_slow_but_steady_body_is_not_cut() {
        let limits = ServerLimits {
            body_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        };
        let server = TestServer::start(echo_body_router(), limits, Duration::from_secs(1)).await;
        // Fifteen pauses of 100 ms: each far below the timeout, together well above it, so
        // a deadline that is not moved by each chunk fails the upload.
        let chunks = futures_util::stream::unfold(0, |i| async move {
            if i == 15 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, io::Error>(format!("{i};")), i + 1))
        });
        let response = reqwest::Client::new()
            .post(server.url("/echo"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let expected: String = (0..15).map(|i| format!("{i};")).collect();
        assert_eq!(response.text().await.unwrap(), expected);
        server.stop().await;
    }

    #[tokio::test]
    async fn full_listener_leaves_new_connections_in_the_backlog() {
        let server = start_with(|l| l.max_connections = 1).await;
        let mut first = TcpStream::connect(server.addr).await.unwrap();
        first
            .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = first.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        // The kernel completes the handshake, but tollgate does not take the connection.
        let mut second = TcpStream::connect(server.addr).await.unwrap();
        second
            .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
        assert!(waited.is_err(), "served while the only slot was taken");

        drop(first);
        let answer = closed_within(&mut second, Duration::from_secs(10)).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        server.stop().await;
    }
}
