//! The upstream's HTTP/1.1 connections, opened on demand and reused.
//!
//! [`UpstreamPool::send`] sends a request on an idle connection to the one upstream, or on a
//! new one, and returns the response with its body wrapped: when the body has been read to its
//! end, the connection goes back to the pool, from the body itself. A body dropped before its
//! end (the client went away) takes its connection with it: the rest of that response is still
//! in the connection, so it cannot carry another.
//!
//! Why not hyper-util's legacy `Client`: it serves any number of hosts over both protocols, and
//! for one HTTP/1.1 upstream that costs, per request, a pool lookup keyed by scheme and
//! authority (SipHash), a boxed response future, the absolute URI it then turns back into
//! origin-form, and a task spawned to wait until the connection can take the next request (how
//! it returns an HTTP/1.1 connection to its pool). The proxy pays for each on every request; the
//! bare proxy of the benchmarks (`examples/bare_proxy.rs`) still uses the legacy `Client`, as
//! the floor to measure against.
//!
//! What the legacy `Client` did that still matters is kept: a request that was never written
//! because its pooled connection had just closed (an upstream may close an idle keep-alive
//! connection at any time, RFC 9112 §9.6) is retried on another connection; idle connections are
//! closed after [`IDLE_TIMEOUT`]; connecting has its own time limit; `TCP_NODELAY` is set.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Connections to one upstream; cheap to clone, clones share the connections.
#[derive(Clone)]
pub(super) struct UpstreamPool(Arc<Shared>);

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error("the upstream URL has no host")]
    NoHost,
    #[error("could not connect to the upstream")]
    Connect(#[source] std::io::Error),
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error("the upstream failed before sending a response")]
    Upstream(#[source] hyper::Error),
}

impl UpstreamPool {
    /// A pool for `authority` (`host[:port]`, port 80 when absent); `None` when the upstream
    /// URL has none, and then every request fails with [`SendError::NoHost`]. No connection is
    /// opened yet.
    pub(super) fn new(authority: Option<Authority>, connect_timeout: Duration) -> Self {
        Self::with_idle_timeout(authority, connect_timeout, IDLE_TIMEOUT)
    }

    /// [`UpstreamPool::new`] with another idle timeout (tests wait less than 90 s).
    pub(super) fn with_idle_timeout(
        authority: Option<Authority>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self(Arc::new(Shared {
            authority,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            reaping: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Sends `request` (origin-form target, `Host` set) and returns the upstream's response.
    /// With `reuse` false (an upgrade request: after `101` the connection is the tunnel's) the
    /// connection is never put back.
    pub(super) async fn send(
        &self,
        mut request: Request<Body>,
        reuse: bool,
    ) -> Result<Response<Body>, SendError> {
        while let Some(mut sender) = self.checkout().await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.checkin_at_end(response, sender, reuse)),
                Err(mut failed) => match failed.take_message() {
                    // Never written: the connection closed first. Try the next one.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Upstream(failed.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Upstream)?;
        Ok(self.checkin_at_end(response, sender, reuse))
    }

    /// How many connections are idle in the pool.
    #[cfg(test)]
    pub(super) fn idle_connections(&self) -> usize {
        self.0.lock_idle().len()
    }

    /// The most recently used idle connection that can take a request now, if any: it is the
    /// likeliest to be open still. A connection goes back when its response body ended, which
    /// can be just before its connection task has noticed; `ready` waits for that.
    async fn checkout(&self) -> Option<SendRequest<Body>> {
        loop {
            let idle = self.0.lock_idle().pop()?;
            let mut sender = idle.sender;
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let authority = self.0.authority.as_ref().ok_or(SendError::NoHost)?;
        // An IPv6 literal is bracketed in an authority, and not in a lookup.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.0.connect_timeout, connect_any(host, port))
            .await
            .map_err(|_| SendError::ConnectTimeout)?
            .map_err(SendError::Connect)?;
        // Small requests and responses go out at once (Nagle would hold them for the ACK).
        stream.set_nodelay(true).map_err(SendError::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Upstream)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// `response` with a body that returns `sender` to the pool when it ends (at once when the
    /// body is empty: the server side never polls such a body).
    fn checkin_at_end(
        &self,
        response: Response<Incoming>,
        sender: SendRequest<Body>,
        reuse: bool,
    ) -> Response<Body> {
        let mut checkin = reuse.then(|| Checkin {
            sender,
            pool: self.0.clone(),
        });
        if http_body::Body::is_end_stream(response.body())
            && let Some(done) = checkin.take()
        {
            done.pool.put_back(done.sender);
        }
        response.map(|inner| Body::new(ResponseBody { inner, checkin }))
    }
}

/// How long a connection may sit idle before it is closed (hyper-util's default is the same).
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

struct Shared {
    authority: Option<Authority>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Whether the task that closes connections idle too long has been started (at the first
    /// connection put back: that is in a runtime, where `new` may not be).
    reaping: std::sync::atomic::AtomicBool,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Shared {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The list is consistent between any two statements: a panic elsewhere leaves it usable.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put_back(self: &Arc<Self>, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        self.lock_idle().push(idle);
        if !self
            .reaping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Closes the connections idle for the idle timeout or more, checking a few times per period,
/// until the pool is dropped (a reload builds a new one).
async fn reap(pool: Weak<Shared>) {
    loop {
        let Some(period) = pool.upgrade().map(|pool| pool.idle_timeout / 3) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let timeout = pool.idle_timeout;
        // Dropping a connection's sender closes it.
        pool.lock_idle()
            .retain(|idle| !idle.sender.is_closed() && now.duration_since(idle.since) < timeout);
    }
}

/// Connects to the first of `host`'s addresses that accepts, in the order the resolver gives.
async fn connect_any(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the upstream host has no address",
        )
    }))
}

/// The connection to put back when a response body ends.
struct Checkin {
    sender: SendRequest<Body>,
    pool: Arc<Shared>,
}

pin_project_lite::pin_project! {
    /// An upstream response body that puts its connection back in the pool at its end.
    struct ResponseBody {
        #[pin]
        inner: Incoming,
        checkin: Option<Checkin>,
    }
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            // The end is no frame at all, or a body that knows nothing follows what it just
            // gave (its length reached): the server may not poll again after that.
            None => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
            // A connection whose response failed midway is not reused.
            Some(Err(_)) => {
                *this.checkin = None;
                false
            }
        };
        if ended && let Some(done) = this.checkin.take() {
            done.pool.put_back(done.sender);
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
