//! The access log (`[log] access = true`): one `info` event per answered request, under the
//! `tollgate::access` target, on the public and API listeners (not the admin one: probes and
//! scrapes every few seconds would bury the requests that matter).
//!
//! | field | value |
//! | --- | --- |
//! | `listener` | `public` or `api` |
//! | `method`, `path` | as the client sent them; never the query, which carries authorization codes and `state` on the login flow |
//! | `status` | the answer's status |
//! | `elapsed_ms` | until the response head was ready (a streamed body may take longer) |
//! | `peer` | the client's address |
//! | `user` | public listener: the authenticated user's `oid` (else `sub`) |
//! | `error` | public listener: the RFC 6750 error code of a refused token |
//!
//! A request whose client went away before the answer was ready is not logged.
//!
//! With `[log] request_id = true` the same layer gives every request an `X-Request-Id`, the
//! header Envoy, nginx and most app frameworks use to correlate logs. It keeps one the client
//! sent (visible ASCII, at most 128 bytes), else makes a UUID v4. The app receives it with the
//! request, the client gets it back on the response, and the access line carries it as
//! `request_id`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::ConnectInfo;
use http::{Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// Adds the access log and request ids to a listener's router.
#[derive(Clone, Copy)]
pub(crate) struct AccessLogLayer {
    listener: &'static str,
    log: bool,
    request_id: bool,
}

impl AccessLogLayer {
    /// For the listener named `listener`: `log` each answered request, give each a
    /// `request_id`.
    pub(crate) fn new(listener: &'static str, log: bool, request_id: bool) -> Self {
        Self {
            listener,
            log,
            request_id,
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            layer: *self,
        }
    }
}

/// `X-Request-Id`: not registered with IANA, but the de facto name.
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// Longest client-sent request id kept; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The client's request id when it is one worth keeping, else a new UUID v4.
fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    match (sent.next(), sent.next()) {
        (Some(id), None)
            if !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            id.clone()
        }
        _ => {
            let mut buf = uuid::Uuid::encode_buffer();
            let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            // A hyphenated UUID is lower-case hex and `-`: always a header value.
            http::HeaderValue::from_str(id).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
        }
    }
}

/// What a handler adds to its response for the access log: who was served, or why not.
#[derive(Clone, Debug, Default)]
pub(crate) struct AccessNote {
    pub(crate) user: Option<Arc<str>>,
    pub(crate) error: Option<&'static str>,
}

/// The service of [`AccessLogLayer`].
#[derive(Clone)]
pub(crate) struct AccessLog<S> {
    inner: S,
    layer: AccessLogLayer,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AccessLog<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let request_id = self.layer.request_id.then(|| {
            let id = request_id(req.headers());
            req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            id
        });
        let entry = Entry {
            listener: self.layer.listener,
            log: self.layer.log,
            started: Instant::now(),
            method: req.method().clone(),
            // A clone shares the request target's bytes; the handler may rewrite its own copy.
            uri: req.uri().clone(),
            peer: req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
            request_id,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            entry: Some(entry),
        }
    }
}

pin_project! {
    /// The response future of [`AccessLog`]: logs when the inner future answers.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        entry: Option<Entry>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Some(entry), Ok(response)) = (this.entry.take(), &mut result) {
            if let Some(id) = &entry.request_id {
                response
                    .headers_mut()
                    .insert(X_REQUEST_ID.clone(), id.clone());
            }
            if entry.log {
                entry.log(response);
            }
        }
        Poll::Ready(result)
    }
}

struct Entry {
    listener: &'static str,
    log: bool,
    started: Instant,
    method: Method,
    uri: Uri,
    peer: Option<SocketAddr>,
    request_id: Option<http::HeaderValue>,
}

impl Entry {
    fn log<B>(self, response: &Response<B>) {
        let note = response.extensions().get::<AccessNote>();
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "tollgate::access",
            listener = self.listener,
            method = %self.method,
            path = self.uri.path(),
            status = response.status().as_u16(),
            elapsed_ms = (elapsed_ms * 1000.0).round() / 1000.0,
            peer = self.peer.map(tracing::field::display),
            user = note.and_then(|n| n.user.as_deref()),
            error = note.and_then(|n| n.error),
            request_id = self.request_id.as_ref().and_then(|id| id.to_str().ok()),
            "request"
        );
    }
}
