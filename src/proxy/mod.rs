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
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::oneshot;

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
    client: Client<HttpConnector, Body>,
    scheme: Scheme,
    /// `None` when the configured URL has no host; every request then fails with `502`.
    authority: Option<Authority>,
    /// The upstream's base path without a trailing `/`; empty for `/`.
    base_path: Box<str>,
    /// `Host` sent when the client's is not preserved.
    upstream_host: Option<HeaderValue>,
    timeout: Duration,
    preserve_host: bool,
    trust_forwarded_headers: bool,
}

impl Forwarder {
    /// Builds the forwarder and its connection pool; no connection is opened yet.
    pub(crate) fn new(settings: UpstreamSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);

        let authority = settings.url.authority().cloned();
        let upstream_host = authority
            .as_ref()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
        let base_path = settings.url.path().trim_end_matches('/').into();
        Self {
            inner: Arc::new(Inner {
                client,
                scheme: settings.url.scheme().cloned().unwrap_or(Scheme::HTTP),
                authority,
                base_path,
                upstream_host,
                timeout: settings.timeout,
                preserve_host: settings.preserve_host,
                trust_forwarded_headers: settings.trust_forwarded_headers,
            }),
        }
    }

    /// Forwards `req` (already authorised, headers already adjusted by the caller) to the
    /// upstream and returns its response, or a JSON `502`/`504` when the upstream fails
    /// (`405` for `CONNECT`, which is never tunnelled).
    ///
    /// `peer` is the client's address, used for `X-Forwarded-For`. A client listing
    /// `Authorization`, `Host` or `X-Auth-*` in `Connection` does not get them removed.
    pub(crate) async fn forward(&self, req: Request<Body>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        match self.inner.try_forward(req, peer).await {
            Ok(response) => {
                record_upstream_duration(Outcome::Status(response.status()), started.elapsed());
                response
            }
            Err(error) => {
                match error.outcome() {
                    Some(outcome) => {
                        record_upstream_duration(outcome, started.elapsed());
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

/// JSON error response `{"error": code, "error_description": description}` with `status`.
///
/// Callers add headers such as `WWW-Authenticate` through `headers_mut()`. The description is
/// sent to the client as is: it must not contain tokens or header values.
pub(crate) fn json_error(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        error_description: &'a str,
    }
    // Serialising two strings cannot fail; an empty body would still carry the status.
    let body = serde_json::to_vec(&ErrorBody {
        error: code,
        error_description: description,
    })
    .unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, APPLICATION_JSON.clone());
    headers.insert(header::CACHE_CONTROL, NO_STORE.clone());
    response
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

/// `405` for a known path asked with a method it does not serve, in the same JSON shape as
/// every other refusal; axum adds the `Allow` header (RFC 9110 §15.5.6).
pub(crate) async fn method_not_allowed(method: http::Method) -> Response<Body> {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        &format!("{method} is not allowed on this path"),
    )
}

const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");

// Cloning a static value is a pointer copy; it is never parsed or allocated again.
static HTTP: HeaderValue = HeaderValue::from_static("http");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");
pub(crate) static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
pub(crate) static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Why a request got no upstream response; the `Display` text is sent to the client, so it
/// never includes header values, the target or the upstream's address.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("the upstream URL has no host")]
    NoUpstreamHost,
    #[error("the request target cannot be forwarded")]
    InvalidTarget,
    #[error("CONNECT is not supported")]
    ConnectMethod,
    #[error("could not connect to the upstream")]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("connecting to the upstream timed out")]
    ConnectTimeout(#[source] hyper_util::client::legacy::Error),
    #[error("the upstream failed before sending a response")]
    Upstream(#[source] hyper_util::client::legacy::Error),
    #[error("the upstream did not respond in time")]
    Timeout,
    #[error("the upstream switched protocols without being asked to")]
    UnexpectedUpgrade,
}

impl ProxyError {
    fn from_client(error: hyper_util::client::legacy::Error) -> Self {
        if !error.is_connect() {
            Self::Upstream(error)
        } else if source_is_timeout(&error) {
            Self::ConnectTimeout(error)
        } else {
            Self::Connect(error)
        }
    }

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
            Self::NoUpstreamHost | Self::InvalidTarget | Self::ConnectMethod => None,
            Self::Timeout | Self::ConnectTimeout(_) => Some(Outcome::Timeout),
            Self::Connect(_) | Self::Upstream(_) | Self::UnexpectedUpgrade => Some(Outcome::Error),
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
        parts.uri = self.upstream_uri(&parts.uri)?;
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
        let host = if self.preserve_host {
            original_host
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
        let pending = self.client.request(Request::from_parts(parts, body));
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
        let mut response = answered.map_err(ProxyError::from_client)?;

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
        Ok(response.map(Body::new))
    }

    /// Upstream scheme and authority, then the base path, then the original path and query.
    fn upstream_uri(&self, original: &Uri) -> Result<Uri, ProxyError> {
        let authority = self.authority.clone().ok_or(ProxyError::NoUpstreamHost)?;
        let original = original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // `*` (OPTIONS) has no path to put under the base.
        let path_and_query = if self.base_path.is_empty() || !original.as_str().starts_with('/') {
            original
        } else {
            let mut joined = String::with_capacity(self.base_path.len() + original.as_str().len());
            joined.push_str(&self.base_path);
            joined.push_str(original.as_str());
            PathAndQuery::from_maybe_shared(Bytes::from(joined))
                .map_err(|_| ProxyError::InvalidTarget)?
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority);
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|_| ProxyError::InvalidTarget)
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

fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    HOP_BY_HOP
        .iter()
        .find(|(_, hop)| hop == name)
        .map_or(0, |(bit, _)| *bit)
}

/// Removes the fields a `Connection` value names, except those the caller put there for the
/// upstream: a client must not be able to strip the injected `Authorization`, `X-Auth-*`
/// identity headers, `X-Request-Id`, a route's `obo_headers` (`kept`) or `Host` by listing them
/// as hop-by-hop.
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
    } else if let Some(value) = ip_header_value(peer) {
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
    if !trusted {
        headers.remove(header::FORWARDED);
        // Other spellings of the client address that apps and frameworks read (nginx's
        // real_ip, Akamai and Cloudflare's True-Client-IP): only a trusted proxy may set them.
        headers.remove(&X_REAL_IP);
        headers.remove(&TRUE_CLIENT_IP);
    }
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

/// Records time to upstream response headers. Literal names and labels let `metrics` build
/// static keys, so recording allocates nothing.
fn record_upstream_duration(outcome: Outcome, elapsed: Duration) {
    macro_rules! record {
        ($class:literal) => {
            metrics::histogram!("tollgate_upstream_duration_seconds", "status" => $class)
                .record(elapsed.as_secs_f64())
        };
    }
    match outcome {
        Outcome::Status(status) => match status.as_u16() / 100 {
            1 => record!("1xx"),
            2 => record!("2xx"),
            3 => record!("3xx"),
            4 => record!("4xx"),
            _ => record!("5xx"),
        },
        Outcome::Error => record!("error"),
        Outcome::Timeout => record!("timeout"),
    }
}

fn source_is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = error.source();
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = current.source();
    }
    false
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
mod tests {
    use super::*;
    use crate::http_server::{self, ServerLimits};
    use axum::Router;
    use axum::extract::ConnectInfo;
    use futures_util::{SinkExt, StreamExt};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;
    use tokio_tungstenite::tungstenite::Message;

    /// A server task that stops when asked and is awaited, so no test leaves it behind.
    struct Running {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        async fn stop(self) {
            let _ = self.stop.send(());
            self.task.await.unwrap();
        }
    }

    /// An upstream built on `axum::serve`, independent of the code under test.
    async fn upstream(router: Router) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Running { addr, stop, task }
    }

    /// The proxy as the lead wires it: the router's fallback calls `forward`.
    async fn proxy(settings: UpstreamSettings) -> Running {
        let forwarder = Forwarder::new(settings);
        let router = Router::new().fallback(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request<Body>| {
                let forwarder = forwarder.clone();
                async move { forwarder.forward(req, peer).await }
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            http_server::serve(
                listener,
                router,
                ServerLimits::default(),
                shutdown,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        });
        Running { addr, stop, task }
    }

    fn settings_for(upstream: SocketAddr) -> UpstreamSettings {
        UpstreamSettings {
            url: format!("http://{upstream}").parse().unwrap(),
            ..UpstreamSettings::default()
        }
    }

    /// Answers with what it received, so tests can see the forwarded request.
    fn echo_router() -> Router {
        Router::new().fallback(|req: Request<Body>| async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect();
            axum::Json(json!({
                "target": parts.uri.to_string(),
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            }))
        })
    }

    #[derive(Debug, serde::Deserialize)]
    struct Seen {
        target: String,
        version: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn all(&self, name: &str) -> Vec<&str> {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        }
    }

    /// Sends raw bytes (a request with `Connection: close`) and returns the response head and
    /// body; raw so that tests control every header, including hop-by-hop ones.
    async fn raw_request(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8(answer[..split].to_vec()).unwrap();
        (head, answer[split + 4..].to_vec())
    }

    #[tokio::test]
    async fn rewrites_target_onto_upstream_base_path() {
        let upstream = upstream(echo_router()).await;
        let with_base = proxy(UpstreamSettings {
            url: format!("http://{}/base/", upstream.addr).parse().unwrap(),
            ..UpstreamSettings::default()
        })
        .await;
        let without_base = proxy(settings_for(upstream.addr)).await;
        let client = reqwest::Client::new();

        let seen: Seen = client
            .get(with_base.url("/a/b?x=1&y=%20z"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen.target, "/base/a/b?x=1&y=%20z");

        let seen: Seen = client
            .get(without_base.url("/a/b?x=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen.target, "/a/b?x=1");

        drop(client);
        with_base.stop().await;
        without_base.stop().await;
        upstream.stop().await;
    }

    #[test]
    fn upstream_uri_joins_scheme_authority_base_and_target() {
        let forwarder = Forwarder::new(UpstreamSettings {
            url: Uri::from_static("http://up.internal:8081/app"),
            ..UpstreamSettings::default()
        });
        let uri = forwarder
            .inner
            .upstream_uri(&Uri::from_static("http://front.example/x/y?q=1"))
            .unwrap();
        assert_eq!(uri, "http://up.internal:8081/app/x/y?q=1");
        let uri = forwarder
            .inner
            .upstream_uri(&Uri::from_static("/"))
            .unwrap();
        assert_eq!(uri, "http://up.internal:8081/app/");
        // The asterisk form (OPTIONS *) is not a path and stays as it is.
        let uri = forwarder
            .inner
            .upstream_uri(&Uri::from_static("*"))
            .unwrap();
        assert_eq!(uri.path(), "*");

        let root = Forwarder::new(UpstreamSettings {
            url: Uri::from_static("http://up.internal/"),
            ..UpstreamSettings::default()
        });
        let uri = root.inner.upstream_uri(&Uri::from_static("/p?q")).unwrap();
        assert_eq!(uri, "http://up.internal/p?q");
    }

    #[tokio::test]
    async fn strips_hop_by_hop_request_headers() {
        let upstream = upstream(echo_router()).await;
        let proxy = proxy(settings_for(upstream.addr)).await;
        let request = b"POST /hop HTTP/1.1\r\n\
            Host: front.example\r\n\
            Connection: close, X-Conn-Named, authorization, X-Auth-Subject\r\n\
            X-Conn-Named: drop-me\r\n\
            X-Kept: keep-me\r\n\
            Keep-Alive: timeout=5\r\n\
            Proxy-Connection: keep-alive\r\n\
            TE: trailers\r\n\
            Upgrade: websocket\r\n\
            Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n\
            Authorization: Bearer injected-by-the-caller\r\n\
            X-Auth-Subject: alice\r\n\
            Transfer-Encoding: chunked\r\n\
            \r\n\
            5\r\nhello\r\n0\r\n\r\n";
        let (head, body) = raw_request(proxy.addr, request).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let seen: Seen = serde_json::from_slice(&body).unwrap();

        for gone in [
            "x-conn-named",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
            "proxy-authorization",
            "connection",
        ] {
            assert!(seen.all(gone).is_empty(), "{gone} forwarded: {seen:?}");
        }
        assert_eq!(seen.all("x-kept"), ["keep-me"]);
        // Named in Connection, but put there for the upstream: never strippable by a client.
        assert_eq!(seen.all("authorization"), ["Bearer injected-by-the-caller"]);
        assert_eq!(seen.all("x-auth-subject"), ["alice"]);
        // The body is re-framed by the proxy's own connection, not copied framing.
        assert_eq!(seen.all("transfer-encoding"), ["chunked"]);
        assert_eq!(seen.body, "hello");

        proxy.stop().await;
        upstream.stop().await;
    }

    #[tokio::test]
    async fn strips_hop_by_hop_response_headers() {
        let upstream = upstream(Router::new().fallback(|| async {
            (
                [
                    ("connection", "x-resp-named"),
                    ("x-resp-named", "drop-me"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-authenticate", "Basic realm=\"up\""),
                    ("proxy-connection", "keep-alive"),
                    ("upgrade", "h2c"),
                    ("x-kept", "keep-me"),
                ],
                "payload",
            )
        }))
        .await;
        let proxy = proxy(settings_for(upstream.addr)).await;
        let response = reqwest::get(proxy.url("/")).await.unwrap();
        let headers = response.headers().clone();
        for gone in [
            "x-resp-named",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
            "upgrade",
            "connection",
        ] {
            assert!(!headers.contains_key(gone), "{gone} returned: {headers:?}");
        }
        assert_eq!(headers["x-kept"], "keep-me");
        assert_eq!(response.text().await.unwrap(), "payload");
        proxy.stop().await;
        upstream.stop().await;
    }

    #[test]
    fn strip_removes_every_hop_by_hop_header() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", &b"Keep-Alive, X-A"[..]),
            (
                "connection",
                b" x-b ,, upgrade, \xffbad, host, Authorization, X-Auth-Oid, X-Request-Id",
            ),
            ("x-a", b"1"),
            ("x-b", b"2"),
            ("keep-alive", b"timeout=5"),
            ("proxy-connection", b"keep-alive"),
            ("te", b"trailers"),
            ("transfer-encoding", b"gzip, chunked"),
            ("upgrade", b"websocket"),
            ("proxy-authenticate", b"Basic"),
            ("proxy-authorization", b"Basic eA=="),
            ("host", b"front.example"),
            ("authorization", b"Bearer t"),
            ("x-auth-oid", b"o"),
            ("x-request-id", b"r"),
            ("x-graph-token", b"g"),
            ("x-end-to-end", b"kept"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static("x-graph-token"),
        );
        let mut upgrade = headers.clone();
        let mut kept = headers.clone();

        strip_hop_by_hop(&mut headers, false);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "authorization",
                "host",
                "x-auth-oid",
                "x-end-to-end",
                "x-request-id"
            ]
        );
        // A route's obo_headers, set by tollgate, are not the client's to strip.
        strip_hop_by_hop_keeping(
            &mut kept,
            false,
            &[HeaderName::from_static("x-graph-token")],
        );
        assert_eq!(kept["x-graph-token"], "g");

        strip_hop_by_hop(&mut upgrade, true);
        assert_eq!(upgrade["upgrade"], "websocket");
        assert!(!upgrade.contains_key("connection"));
        assert!(!upgrade.contains_key("x-a"));
    }

    #[tokio::test]
    async fn forwarded_headers_replace_client_values() {
        let upstream = upstream(echo_router()).await;
        let proxy = proxy(settings_for(upstream.addr)).await;
        let seen: Seen = reqwest::Client::new()
            .get(proxy.url("/"))
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=203.0.113.7;proto=https")
            .header("x-real-ip", "203.0.113.7")
            .header("true-client-ip", "203.0.113.7")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
        let front = proxy.addr.to_string();
        assert_eq!(seen.all("x-forwarded-host"), [front.as_str()]);
        assert!(seen.all("forwarded").is_empty());
        assert!(seen.all("x-real-ip").is_empty());
        assert!(seen.all("true-client-ip").is_empty());
        proxy.stop().await;
        upstream.stop().await;
    }

    #[tokio::test]
    async fn trusted_forwarded_headers_are_kept_and_extended() {
        let upstream = upstream(echo_router()).await;
        let proxy = proxy(UpstreamSettings {
            trust_forwarded_headers: true,
            ..settings_for(upstream.addr)
        })
        .await;
        let client = reqwest::Client::new();
        let seen: Seen = client
            .get(proxy.url("/"))
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "app.example")
            .header("forwarded", "for=203.0.113.7;proto=https")
            .header("x-real-ip", "203.0.113.7")
            .header("true-client-ip", "203.0.113.7")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            seen.all("x-forwarded-for"),
            ["203.0.113.7, 10.0.0.1, 127.0.0.1"]
        );
        assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
        assert_eq!(seen.all("x-forwarded-host"), ["app.example"]);
        assert_eq!(seen.all("forwarded"), ["for=203.0.113.7;proto=https"]);
        assert_eq!(seen.all("x-real-ip"), ["203.0.113.7"]);
        assert_eq!(seen.all("true-client-ip"), ["203.0.113.7"]);

        // Trusted, but nothing supplied: the proxy's own values.
        let seen: Seen = client
            .get(proxy.url("/"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
        let front = proxy.addr.to_string();
        assert_eq!(seen.all("x-forwarded-host"), [front.as_str()]);

        drop(client);
        proxy.stop().await;
        upstream.stop().await;
    }

    #[test]
    fn formats_addresses_like_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.1.20",
            "::1",
            "2001:db8::ff00:42:8329",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; IP_TEXT_MAX];
            let len = format_ip(ip, &mut buf).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn forwarded_for_uses_the_plain_ipv4_of_a_mapped_peer() {
        let mut headers = HeaderMap::new();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        set_forwarded_headers(&mut headers, mapped, None, false);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        set_forwarded_headers(&mut headers, v6, None, false);
        assert_eq!(headers["x-forwarded-for"], "2001:db8::1");
        assert!(!headers.contains_key("x-forwarded-host"));
    }

    #[tokio::test]
    async fn host_is_preserved_by_default() {
        let upstream = upstream(echo_router()).await;
        let proxy = proxy(settings_for(upstream.addr)).await;
        let seen: Seen = reqwest::get(proxy.url("/"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let front = proxy.addr.to_string();
        assert_eq!(seen.all("host"), [front.as_str()]);
        proxy.stop().await;
        upstream.stop().await;
    }

    #[tokio::test]
    async fn host_is_the_upstream_authority_when_not_preserved() {
        let upstream = upstream(echo_router()).await;
        let proxy = proxy(UpstreamSettings {
            preserve_host: false,
            ..settings_for(upstream.addr)
        })
        .await;
        let seen: Seen = reqwest::get(proxy.url("/"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let back = upstream.addr.to_string();
        let front = proxy.addr.to_string();
        assert_eq!(seen.all("host"), [back.as_str()]);
        assert_eq!(seen.all("x-forwarded-host"), [front.as_str()]);
        proxy.stop().await;
        upstream.stop().await;
    }

    #[tokio::test]
    async fn h2_request_reaches_an_http1_upstream() {
        let upstream = upstream(echo_router()).await;
        let proxy = proxy(settings_for(upstream.addr)).await;
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let response = client
            .post(proxy.url("/h2?q=1"))
            .body("over h2")
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        let seen: Seen = response.json().await.unwrap();
        assert_eq!(seen.version, "HTTP/1.1");
        assert_eq!(seen.target, "/h2?q=1");
        let front = proxy.addr.to_string();
        assert_eq!(seen.all("host"), [front.as_str()]);
        assert_eq!(seen.all("x-forwarded-host"), [front.as_str()]);
        assert_eq!(seen.body, "over h2");
        drop(client);
        proxy.stop().await;
        upstream.stop().await;
    }

    #[tokio::test]
    async fn websocket_upgrade_passes_through() {
        // A WebSocket echo upstream on tokio-tungstenite.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    ws.send(message).await.unwrap();
                }
            }
        });
        let proxy = proxy(settings_for(upstream_addr)).await;

        let (mut ws, response) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr))
                .await
                .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        ws.send(Message::text("hello through the proxy"))
            .await
            .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text("hello through the proxy"));
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![1u8, 2, 3])
        );
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}

        upstream.await.unwrap();
        proxy.stop().await;
    }

    #[tokio::test]
    async fn closed_upstream_port_gives_502_bad_gateway() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let proxy = proxy(settings_for(closed)).await;
        let response = reqwest::Client::new()
            .get(proxy.url("/x?code=secret-code"))
            .header("authorization", "Bearer secret-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.text().await.unwrap();
        assert!(!body.contains("secret"), "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "bad_gateway");
        assert_eq!(
            body["error_description"],
            "could not connect to the upstream"
        );
        proxy.stop().await;
    }

    #[tokio::test]
    async fn slow_upstream_gives_504_gateway_timeout() {
        // Connections complete in the kernel's backlog, but nothing ever answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = proxy(UpstreamSettings {
            timeout: Duration::from_millis(100),
            ..settings_for(silent.local_addr().unwrap())
        })
        .await;
        let response = reqwest::get(proxy.url("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "gateway_timeout");
        proxy.stop().await;
        drop(silent);
    }

    #[tokio::test]
    async fn the_upstream_timeout_starts_when_the_upload_is_complete() {
        let upstream = upstream(echo_router()).await;
        let proxy = proxy(UpstreamSettings {
            timeout: Duration::from_millis(300),
            ..settings_for(upstream.addr)
        })
        .await;
        // Six chunks 100 ms apart: the upload alone takes twice the timeout, and the app
        // answers as soon as it has the body.
        let chunks = futures_util::stream::iter(0..6).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(Bytes::from(format!("chunk{i};")))
        });
        let response = reqwest::Client::new()
            .post(proxy.url("/upload"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen: Seen = response.json().await.unwrap();
        assert_eq!(seen.body, "chunk0;chunk1;chunk2;chunk3;chunk4;chunk5;");
        proxy.stop().await;
        upstream.stop().await;
    }

    #[tokio::test]
    async fn an_upstream_silent_after_the_upload_gives_504() {
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = proxy(UpstreamSettings {
            timeout: Duration::from_millis(100),
            ..settings_for(silent.local_addr().unwrap())
        })
        .await;
        let client = reqwest::Client::new();
        // A body of known length, and a streamed one: both end, then the clock runs out.
        let sized = client.post(proxy.url("/")).body("payload");
        let chunks = futures_util::stream::iter(["a", "b"].map(Ok::<_, std::io::Error>));
        let streamed = client
            .post(proxy.url("/"))
            .body(reqwest::Body::wrap_stream(chunks));
        for request in [sized, streamed] {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "gateway_timeout");
        }
        proxy.stop().await;
        drop(silent);
    }

    /// An upstream that reads each request head, then answers with `reply` and hangs up.
    async fn scripted_upstream(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(reply).await;
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn upstream_closing_mid_response_does_not_crash_the_proxy() {
        let (addr, upstream) =
            scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly ten b").await;
        let proxy = proxy(settings_for(addr)).await;
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let response = client.get(proxy.url("/")).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.bytes().await.is_err());
        }
        drop(client);
        proxy.stop().await;
        upstream.abort();
    }

    #[tokio::test]
    async fn upstream_closing_before_headers_gives_502() {
        let (addr, upstream) = scripted_upstream(b"").await;
        let proxy = proxy(settings_for(addr)).await;
        let response = reqwest::get(proxy.url("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_gateway");
        proxy.stop().await;
        upstream.abort();
    }

    #[tokio::test]
    async fn connect_method_is_refused() {
        let upstream = upstream(echo_router()).await;
        let proxy = proxy(settings_for(upstream.addr)).await;
        let (head, body) = raw_request(
            proxy.addr,
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "method_not_allowed");
        proxy.stop().await;
        upstream.stop().await;
    }

    #[tokio::test]
    async fn json_error_has_status_code_and_description() {
        let response = json_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the \"aud\" claim does not match",
        );
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"error": "invalid_token", "error_description": "the \"aud\" claim does not match"})
        );
    }

    // Single-threaded runtime: every task, including the proxy's, sees the local recorder.
    #[tokio::test(flavor = "current_thread")]
    async fn records_upstream_duration_by_status_class() {
        let recorder = crate::test_metrics::TestRecorder::default();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let upstream = upstream(Router::new().fallback(|req: Request<Body>| async move {
            if req.uri().path() == "/missing" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            }
        }))
        .await;
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let proxy = proxy(settings_for(upstream.addr)).await;
        let broken = proxy_for_closed(closed).await;
        let client = reqwest::Client::new();
        for (url, status) in [
            (proxy.url("/"), 200),
            (proxy.url("/missing"), 404),
            (broken.url("/"), 502),
        ] {
            assert_eq!(client.get(url).send().await.unwrap().status(), status);
        }
        drop(client);
        proxy.stop().await;
        broken.stop().await;
        upstream.stop().await;

        let recorded = recorder.histograms();
        assert!(recorded.iter().all(|(_, seconds)| *seconds >= 0.0));
        let keys: Vec<&str> = recorded.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tollgate_upstream_duration_seconds{status=2xx}",
                "tollgate_upstream_duration_seconds{status=4xx}",
                "tollgate_upstream_duration_seconds{status=error}"
            ]
        );
    }

    async fn proxy_for_closed(closed: SocketAddr) -> Running {
        proxy(settings_for(closed)).await
    }

    // ---- streaming: bodies must flow through, never be collected in memory ----

    const CHUNK: usize = 256 * 1024;
    static CHUNK_DATA: [u8; CHUNK] = [0x5a; CHUNK];
    const LARGE: u64 = 1024 * 1024 * 1024;
    /// Bytes allowed in flight or added to RSS: socket and hyper buffers are a few MiB, a
    /// buffered body would be the whole transfer.
    const MEMORY_BOUND: u64 = 64 * 1024 * 1024;
    const CHILD_ENV: &str = "TOLLGATE_PROXY_TRANSFER";

    /// Runs each 1 GiB transfer in a child process of this test binary: other tests running in
    /// this process would add their own allocations to the RSS being measured.
    #[test]
    fn streams_large_bodies_without_buffering() {
        let child_test = concat!(module_path!(), "::large_transfer_in_child");
        let child_test = child_test
            .split_once("::")
            .map_or(child_test, |(_crate, path)| path);
        for direction in ["upload", "download"] {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([child_test, "--exact", "--ignored", "--test-threads=1"])
                .env(CHILD_ENV, direction)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success() && stdout.contains("1 passed"),
                "{direction} failed:\n{stdout}\n{stderr}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "run in its own process by streams_large_bodies_without_buffering"]
    async fn large_transfer_in_child() {
        let direction = std::env::var(CHILD_ENV).unwrap_or_default();
        if direction != "download" {
            large_upload().await;
        }
        if direction != "upload" {
            large_download().await;
        }
    }

    async fn large_upload() {
        let watch = Watch::new();
        let counter = watch.clone();
        let upstream = upstream(Router::new().fallback(move |body: Body| {
            let counter = counter.clone();
            async move {
                let mut body = body;
                let mut total = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        counter.consume(data.len() as u64);
                        total += data.len() as u64;
                    }
                }
                total.to_string()
            }
        }))
        .await;
        let proxy = proxy(settings_for(upstream.addr)).await;

        let response = reqwest::Client::new()
            .post(proxy.url("/upload"))
            .body(reqwest::Body::wrap_stream(generated(LARGE, watch.clone())))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), LARGE.to_string());
        watch.assert_streamed(LARGE);

        proxy.stop().await;
        upstream.stop().await;
    }

    async fn large_download() {
        let watch = Watch::new();
        let producer = watch.clone();
        let upstream = upstream(Router::new().fallback(move || {
            let producer = producer.clone();
            async move { Body::from_stream(generated(LARGE, producer)) }
        }))
        .await;
        let proxy = proxy(settings_for(upstream.addr)).await;

        let mut response = reqwest::get(proxy.url("/download")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        while let Some(chunk) = response.chunk().await.unwrap() {
            watch.consume(chunk.len() as u64);
        }
        watch.assert_streamed(LARGE);

        proxy.stop().await;
        upstream.stop().await;
    }

    /// Current resident set size of this process, from /proc/self/status (Linux only).
    fn rss_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Watches a transfer: the gap between produced and consumed bytes and the RSS growth.
    struct Watch {
        produced: AtomicU64,
        consumed: AtomicU64,
        max_in_flight: AtomicU64,
        baseline_rss: Option<u64>,
        max_rss: AtomicU64,
    }

    impl Watch {
        fn new() -> Arc<Self> {
            let baseline_rss = rss_bytes();
            if cfg!(target_os = "linux") {
                assert!(baseline_rss.is_some(), "VmRSS unreadable");
            }
            Arc::new(Self {
                produced: AtomicU64::new(0),
                consumed: AtomicU64::new(0),
                max_in_flight: AtomicU64::new(0),
                baseline_rss,
                max_rss: AtomicU64::new(baseline_rss.unwrap_or(0)),
            })
        }

        fn produce(&self, n: u64) {
            let produced = self.produced.fetch_add(n, Ordering::SeqCst) + n;
            let in_flight = produced.saturating_sub(self.consumed.load(Ordering::SeqCst));
            self.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
            // Every 16 MiB: reading /proc is cheap at that rate.
            if produced.is_multiple_of(16 * 1024 * 1024)
                && let Some(rss) = rss_bytes()
            {
                self.max_rss.fetch_max(rss, Ordering::SeqCst);
            }
        }

        fn consume(&self, n: u64) {
            self.consumed.fetch_add(n, Ordering::SeqCst);
        }

        fn assert_streamed(&self, total: u64) {
            assert_eq!(self.produced.load(Ordering::SeqCst), total);
            assert_eq!(self.consumed.load(Ordering::SeqCst), total);
            let in_flight = self.max_in_flight.load(Ordering::SeqCst);
            assert!(in_flight < MEMORY_BOUND, "{in_flight} bytes were in flight");
            if let Some(baseline) = self.baseline_rss {
                let end = rss_bytes().unwrap_or(0);
                let peak = self.max_rss.load(Ordering::SeqCst).max(end);
                let growth = peak.saturating_sub(baseline);
                assert!(growth < MEMORY_BOUND, "RSS grew by {growth} bytes");
            }
        }
    }

    /// `total` bytes in static chunks, counted as they are handed out.
    fn generated(
        total: u64,
        watch: Arc<Watch>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::unfold(0u64, move |sent| {
            let watch = watch.clone();
            async move {
                if sent >= total {
                    return None;
                }
                let n = (total - sent).min(CHUNK as u64);
                watch.produce(n);
                let chunk = Bytes::from_static(&CHUNK_DATA[..n as usize]);
                Some((Ok(chunk), sent + n))
            }
        })
    }
}
