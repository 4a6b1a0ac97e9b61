//! Reverse proxy to the upstream app.
//!
//! [`Forwarder::forward`] sends an already authorised request to the upstream over a pooled
//! HTTP/1.1 client: the target is rewritten to the upstream, hop-by-hop headers (RFC 9110
//! §7.6.1) are removed in both directions, `X-Forwarded-*` are set, bodies are streamed, and
//! upgrades (WebSocket) are tunnelled. Failures become JSON `502`/`504` responses.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use self::pool::{SendError, UpstreamPool};

mod pool;

// The refusal shapes live in `response`; the proxy's callers still name them here.
pub(crate) use crate::response::{json_error, method_not_allowed};

/// Where and how requests are forwarded.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamSettings {
    /// `http://host:port[/base]`; the request path is appended to the base path.
    pub(crate) url: Uri,
    /// Limit on establishing a TCP connection to the upstream.
    pub(crate) connect_timeout: Duration,
    /// Limit from the end of the request body (for a request without one, from sending it)
    /// until the upstream's response headers arrive.
    pub(crate) timeout: Duration,
    /// Forward the client's `Host`; otherwise send the upstream's authority.
    pub(crate) preserve_host: bool,
    /// Keep client-supplied `X-Forwarded-*`/`Forwarded` (appending to `X-Forwarded-For`); only
    /// right when a trusted proxy in front of tollgate sets them.
    pub(crate) trust_forwarded_headers: bool,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            url: Uri::from_static("http://127.0.0.1:3000"),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            preserve_host: true,
            trust_forwarded_headers: false,
        }
    }
}

/// Forwards requests to the upstream; cheap to clone, all clones share one connection pool.
#[derive(Clone)]
pub(crate) struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    pool: UpstreamPool,
    /// `None` when the configured URL has no host; every request then fails with `502`.
    authority: Option<Authority>,
    /// The upstream's base path without a trailing `/`; empty for `/`.
    base_path: Box<str>,
    /// `Host` sent when the client's is not preserved.
    upstream_host: Option<HeaderValue>,
    timeout: Duration,
    preserve_host: bool,
    trust_forwarded_headers: bool,
    durations: UpstreamDurations,
}

impl Forwarder {
    /// Builds the forwarder and its connection pool; no connection is opened yet.
    pub(crate) fn new(settings: UpstreamSettings) -> Self {
        let authority = settings.url.authority().cloned();
        let upstream_host = authority
            .as_ref()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
        let base_path = settings.url.path().trim_end_matches('/').into();
        Self {
            inner: Arc::new(Inner {
                pool: UpstreamPool::new(authority.clone(), settings.connect_timeout),
                authority,
                base_path,
                upstream_host,
                timeout: settings.timeout,
                preserve_host: settings.preserve_host,
                trust_forwarded_headers: settings.trust_forwarded_headers,
                durations: UpstreamDurations::default(),
            }),
        }
    }

    /// Forwards `req` (already authorised, headers already adjusted by the caller) to the
    /// upstream and returns its response, or a JSON `502`/`504` when the upstream fails
    /// (`405` for `CONNECT`, which is never tunnelled).
    ///
    /// `peer` is the client's address, used for `X-Forwarded-For`. A client listing
    /// `Authorization`, `Host` or `X-Auth-*` in `Connection` does not get them removed.
    pub(crate) async fn forward(&self, mut req: Request<Body>, peer: SocketAddr) -> Response<Body> {
        use tracing::Instrument as _;
        let started = Instant::now();
        let span = crate::telemetry::span!(
            "upstream_request",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = req.method().as_str(),
            url.path = req.uri().path(),
            server.address = self.inner.authority.as_ref().map_or("", |a| a.host()),
            http.response.status_code = tracing::field::Empty,
        );
        // The upstream continues the trace from this span (W3C Trace Context).
        crate::telemetry::inject(&span, req.headers_mut());
        let result = self
            .inner
            .try_forward(req, peer)
            .instrument(span.clone())
            .await;
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        crate::telemetry::note_status(&span, status);
        match result {
            Ok(response) => {
                self.inner
                    .durations
                    .record(Outcome::Status(response.status()), started.elapsed());
                response
            }
            Err(error) => {
                match error.outcome() {
                    Some(outcome) => {
                        self.inner.durations.record(outcome, started.elapsed());
                        tracing::warn!(error = %ErrorChain(&error), "upstream request failed");
                    }
                    // The client's request was at fault, or the configuration: not the upstream.
                    None => tracing::debug!(error = %error, "request not forwarded"),
                }
                json_error(error.status(), error.code(), &error.to_string())
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body that says when it has all been sent: the upstream timeout starts then.
    struct UploadWatch<B> {
        #[pin]
        inner: B,
        done: Option<oneshot::Sender<()>>,
    }
}

impl<B: http_body::Body> http_body::Body for UploadWatch<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        // The end is no frame at all, or a body that knows nothing follows what it just gave
        // (a Content-Length reached): hyper may not poll again after that.
        if (frame.is_none() || this.inner.is_end_stream())
            && let Some(done) = this.done.take()
        {
            let _ = done.send(());
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

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");

// Cloning a static value is a pointer copy; it is never parsed or allocated again.
static HTTP: HeaderValue = HeaderValue::from_static("http");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// Why a request got no upstream response; the `Display` text is sent to the client, so it
/// never includes header values, the target or the upstream's address.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("the request target cannot be forwarded")]
    InvalidTarget,
    #[error("CONNECT is not supported")]
    ConnectMethod,
    /// Connecting, or the connection before a response: the pool's own messages.
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("the upstream did not respond in time")]
    Timeout,
    #[error("the upstream switched protocols without being asked to")]
    UnexpectedUpgrade,
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            Self::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::InvalidTarget => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::ConnectMethod => "method_not_allowed",
            Self::Timeout => "gateway_timeout",
            Self::InvalidTarget => "invalid_request",
            _ => "bad_gateway",
        }
    }

    /// The metric outcome; `None` when the upstream was never contacted.
    fn outcome(&self) -> Option<Outcome> {
        match self {
            Self::InvalidTarget | Self::ConnectMethod => None,
            Self::Send(SendError::NoHost) => None,
            Self::Timeout | Self::Send(SendError::ConnectTimeout) => Some(Outcome::Timeout),
            Self::Send(_) | Self::UnexpectedUpgrade => Some(Outcome::Error),
        }
    }
}

impl Inner {
    async fn try_forward(
        &self,
        mut req: Request<Body>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::ConnectMethod);
        }
        let upgrade = is_upgrade_request(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let original_host = original_host(&parts.uri, &parts.headers);
        parts.uri = self.upstream_target(&parts.uri)?;
        // The upstream is spoken to in HTTP/1.1 whatever the client used (h2, HTTP/1.0).
        parts.version = Version::HTTP_11;
        let tunnel_deadline = parts.extensions.get::<TunnelDeadline>().copied();
        let headers = &mut parts.headers;
        let kept = parts.extensions.get::<AddedHeaders>().map(|a| &*a.0);
        strip_hop_by_hop_keeping(headers, upgrade, kept.unwrap_or_default());
        if upgrade {
            headers.insert(header::CONNECTION, UPGRADE.clone());
        }
        set_forwarded_headers(
            headers,
            peer.ip(),
            original_host.as_ref(),
            self.trust_forwarded_headers,
        );
        // HTTP/1.1 needs a `Host` (RFC 9112 §3.2): the upstream's when the client sent none.
        let host = if self.preserve_host {
            original_host.or_else(|| self.upstream_host.clone())
        } else {
            self.upstream_host.clone()
        };
        if let Some(host) = host {
            headers.insert(header::HOST, host);
        }

        // `timeout` counts from the end of the upload, as Go's `ResponseHeaderTimeout` (and so
        // oauth2-proxy's upstream timeout) does: a slow upload of a large body is not the app
        // being slow. A request without a body (most) starts the clock at once, unwrapped.
        let (body, uploaded) = if http_body::Body::is_end_stream(&body) {
            (body, None)
        } else {
            let (done, uploaded) = oneshot::channel();
            let watched = UploadWatch {
                inner: body,
                done: Some(done),
            };
            (Body::new(watched), Some(uploaded))
        };
        let pending = self.pool.send(Request::from_parts(parts, body), !upgrade);
        let timeout = self.timeout;
        let answered = match uploaded {
            None => tokio::time::timeout(timeout, pending)
                .await
                .map_err(|_| ProxyError::Timeout)?,
            Some(uploaded) => {
                // A failed upload drops the sender: the clock starts then too.
                let deadline = async move {
                    let _ = uploaded.await;
                    tokio::time::sleep(timeout).await;
                };
                tokio::select! {
                    biased;
                    answered = pending => answered,
                    () = deadline => return Err(ProxyError::Timeout),
                }
            }
        };
        let mut response = answered?;

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ProxyError::UnexpectedUpgrade);
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, tunnel_deadline));
            let (mut parts, _empty) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            parts.headers.insert(header::CONNECTION, UPGRADE.clone());
            return Ok(Response::from_parts(parts, Body::empty()));
        }

        strip_hop_by_hop(response.headers_mut(), false);
        Ok(response)
    }

    /// The target sent upstream, in origin-form (RFC 9112 §3.2.1): the base path, then the
    /// original path and query. A target already in origin-form under an empty base is kept.
    fn upstream_target(&self, original: &Uri) -> Result<Uri, ProxyError> {
        if self.base_path.is_empty() && original.authority().is_none() {
            return Ok(original.clone());
        }
        let original = original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // `*` (OPTIONS) has no path to put under the base.
        if self.base_path.is_empty() || !original.as_str().starts_with('/') {
            return Ok(Uri::from(original));
        }
        let mut joined = String::with_capacity(self.base_path.len() + original.as_str().len());
        joined.push_str(&self.base_path);
        joined.push_str(original.as_str());
        PathAndQuery::from_maybe_shared(Bytes::from(joined))
            .map(Uri::from)
            .map_err(|_| ProxyError::InvalidTarget)
    }
}

/// A valid HTTP/1.1 upgrade: `Upgrade` present and named by `Connection`.
fn is_upgrade_request(req: &Request<Body>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
}

/// The host the client addressed: the h2 `:authority` or absolute-form authority, else `Host`.
fn original_host(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    match uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => headers.get(header::HOST).cloned(),
    }
}

/// When the token that authorised an upgrade request expires (seconds since the epoch), carried
/// as a request extension: the tunnel is closed then.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TunnelDeadline(pub(crate) u64);

/// Header names tollgate set on a request for the upstream beyond the fixed ones (a route's
/// `obo_headers`), carried as a request extension: a client naming them in `Connection` must
/// not get them stripped after they were set.
#[derive(Clone, Debug)]
pub(crate) struct AddedHeaders(pub(crate) Arc<[HeaderName]>);

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named in `Connection` and the fixed
/// set. With `keep_upgrade`, `Upgrade` stays for a valid upgrade handshake.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_hop_by_hop_keeping(headers, keep_upgrade, &[]);
}

/// [`strip_hop_by_hop`], where `Connection` cannot name any of `kept` either.
fn strip_hop_by_hop_keeping(headers: &mut HeaderMap, keep_upgrade: bool, kept: &[HeaderName]) {
    // One pass over the names finds what is present: most messages carry no hop-by-hop field,
    // and a lookup for each absent one costs more than the scan.
    let found = headers
        .keys()
        .fold(0u8, |found, name| found | hop_by_hop_bit(name));
    if found == 0 {
        return;
    }
    if found & HOP_CONNECTION != 0 {
        let mut connection = headers.get_all(header::CONNECTION).iter();
        match (connection.next(), connection.next()) {
            (Some(only), None) => {
                let only = only.clone();
                remove_connection_options(headers, &only, keep_upgrade, kept);
            }
            _ => {
                let all: Vec<HeaderValue> = headers
                    .get_all(header::CONNECTION)
                    .iter()
                    .cloned()
                    .collect();
                for value in &all {
                    remove_connection_options(headers, value, keep_upgrade, kept);
                }
            }
        }
    }
    for (bit, name) in &HOP_BY_HOP {
        if found & bit != 0 && !(keep_upgrade && *bit == HOP_UPGRADE) {
            headers.remove(name);
        }
    }
}

/// Bit `i` stands for `config::HOP_BY_HOP[i]`.
const HOP_CONNECTION: u8 = 1;
const HOP_UPGRADE: u8 = 1 << 5;
static HOP_BY_HOP: [(u8, HeaderName); 8] = [
    hop(0),
    hop(1),
    hop(2),
    hop(3),
    hop(4),
    hop(5),
    hop(6),
    hop(7),
];

const fn hop(i: usize) -> (u8, HeaderName) {
    (
        1 << i,
        HeaderName::from_static(crate::config::HOP_BY_HOP[i]),
    )
}

/// The field's bit in [`HOP_BY_HOP`], 0 for the others. A `match` on the (lowercase) name: the
/// length alone rules out most fields, where comparing with each name in turn cost more than
/// the rest of the header rewriting.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    match name.as_str() {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => 1 << 3,
        "transfer-encoding" => 1 << 4,
        "upgrade" => 1 << 5,
        "proxy-authenticate" => 1 << 6,
        "proxy-authorization" => 1 << 7,
        _ => 0,
    }
}

/// Removes the fields a `Connection` value names, except those the caller put there for the
/// upstream: a client must not be able to strip the injected `Authorization`, `X-Auth-*` or
/// `X-MS-CLIENT-PRINCIPAL*` identity headers, `X-Request-Id`, a route's `obo_headers` (`kept`)
/// or `Host` by listing them as hop-by-hop.
fn remove_connection_options(
    headers: &mut HeaderMap,
    value: &HeaderValue,
    keep_upgrade: bool,
    kept: &[HeaderName],
) {
    for token in value.as_bytes().split(|&b| b == b',') {
        let token = token.trim_ascii();
        let Ok(name) = std::str::from_utf8(token) else {
            continue;
        };
        if name.is_empty()
            || name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("authorization")
            || starts_with_ignore_case(name, "x-auth-")
            || starts_with_ignore_case(name, "x-ms-client-principal")
            || name.eq_ignore_ascii_case("x-request-id")
            || kept.iter().any(|k| name.eq_ignore_ascii_case(k.as_str()))
            || (keep_upgrade && name.eq_ignore_ascii_case("upgrade"))
        {
            continue;
        }
        // `&str` lookups are case-insensitive and do not allocate; invalid names match nothing.
        headers.remove(name);
    }
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Sets `X-Forwarded-For`/`-Proto`/`-Host`. Client-supplied values are replaced (and
/// `Forwarded` dropped) unless they come from a trusted proxy (RFC 9700 §4.13: they are
/// otherwise attacker-controlled); a trusted `X-Forwarded-For` gets the peer appended.
fn set_forwarded_headers(
    headers: &mut HeaderMap,
    peer: IpAddr,
    original_host: Option<&HeaderValue>,
    trusted: bool,
) {
    let peer = peer.to_canonical();
    if trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut chain = Vec::with_capacity(64);
        for (i, value) in headers.get_all(&X_FORWARDED_FOR).iter().enumerate() {
            if i > 0 {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(value.as_bytes());
        }
        let mut buf = [0u8; IP_TEXT_MAX];
        if let Some(len) = format_ip(peer, &mut buf) {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(&buf[..len]);
        }
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(chain)) {
            headers.insert(&X_FORWARDED_FOR, value);
        }
    } else if let Some(value) = peer_header_value(peer) {
        headers.insert(&X_FORWARDED_FOR, value);
    }

    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HTTP.clone());
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match original_host {
            Some(host) => {
                headers.insert(&X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    // Other spellings of the client address that apps and frameworks read (nginx's real_ip,
    // Akamai and Cloudflare's True-Client-IP): only a trusted proxy may set them. Most
    // requests carry none: one pass over the names costs less than three removals' hashing.
    let untrusted = [&header::FORWARDED, &X_REAL_IP, &TRUE_CLIENT_IP];
    if !trusted && headers.keys().any(|k| untrusted.contains(&k)) {
        for name in untrusted {
            headers.remove(name);
        }
    }
}

/// `X-Forwarded-For` for a request from `peer`: the thread keeps the last one made, since a
/// connection's requests (and a sidecar's, from one ingress or app) come from the same
/// address; making it is a formatting and an allocation, a kept one's clone neither.
fn peer_header_value(peer: IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static LAST_PEER: std::cell::RefCell<Option<(IpAddr, Option<HeaderValue>)>> =
            const { std::cell::RefCell::new(None) };
    }
    crate::util::thread_memo(
        &LAST_PEER,
        |ip| *ip == peer,
        || peer,
        || ip_header_value(peer),
        Option::clone,
    )
}

/// The address as a header value without an intermediate `String`.
fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    let mut buf = [0u8; IP_TEXT_MAX];
    let len = format_ip(ip, &mut buf)?;
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// The longest textual IPv6 address is 45 bytes.
const IP_TEXT_MAX: usize = 48;

/// Writes `ip` as text into `buf`, returning its length. IPv4, the usual peer, skips the
/// `fmt` machinery, which costs more than the rest of the header rewriting.
fn format_ip(ip: IpAddr, buf: &mut [u8; IP_TEXT_MAX]) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            Some(len)
        }
        IpAddr::V6(v6) => {
            let mut cursor = &mut buf[..];
            write!(cursor, "{v6}").ok()?;
            Some(IP_TEXT_MAX - cursor.len())
        }
    }
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections, until
/// either side closes or `deadline` (the authorising token's `exp`) passes. The bytes are not
/// parsed, so at the deadline both connections are simply closed; WebSocket clients see an
/// abnormal closure and reconnect with a fresh token.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    deadline: Option<TunnelDeadline>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let expiry = async {
        match deadline {
            Some(TunnelDeadline(exp)) => {
                let left = exp.saturating_sub(crate::util::now());
                tokio::time::sleep(Duration::from_secs(left)).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        copied = copy => {
            if let Err(error) = copied {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
        }
        () = expiry => tracing::debug!("upgraded connection closed: its token expired"),
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Status(StatusCode),
    Error,
    Timeout,
}

impl Outcome {
    /// The `status` label: the status class, `error` or `timeout`.
    const LABELS: [&'static str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error", "timeout"];

    fn index(self) -> usize {
        match self {
            Outcome::Status(status) => match status.as_u16() / 100 {
                1 => 0,
                2 => 1,
                3 => 2,
                4 => 3,
                _ => 4,
            },
            Outcome::Error => 5,
            Outcome::Timeout => 6,
        }
    }
}

/// `tollgate_upstream_duration_seconds`, time to upstream response headers, by outcome. The
/// handles are looked up in the recorder once, at the first request (the recorder is installed
/// by then), not at every request.
#[derive(Default)]
struct UpstreamDurations(std::sync::OnceLock<[metrics::Histogram; 7]>);

impl UpstreamDurations {
    fn record(&self, outcome: Outcome, elapsed: Duration) {
        let histograms = self.0.get_or_init(|| {
            Outcome::LABELS
                .map(|class| metrics::histogram!("tollgate_upstream_duration_seconds", "status" => class))
        });
        histograms[outcome.index()].record(elapsed.as_secs_f64());
    }
}

/// Displays an error with its sources, for logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(current) = source {
            write!(f, ": {current}")?;
            source = current.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
