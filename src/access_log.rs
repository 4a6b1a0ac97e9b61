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
//! | `route` | public listener: the matched route's `path` |
//! | `user` | public listener: the authenticated user's `oid` (else `sub`) |
//! | `error` | public listener: the RFC 6750 error code of a refused token |
//!
//! A request whose client went away before the answer was ready is not logged.
//!
//! With `[log] request_id = true` the same layer gives every request an `X-Request-Id`, the
//! header Envoy, nginx and most app frameworks use to correlate logs. It keeps one the client
//! sent (visible ASCII, at most 128 bytes), else makes a UUID v4. The app receives it with the
//! request, the client gets it back on the response, and the access line carries it as
//! `request_id`. Without it, a sane id the client sent is logged as it is, and nothing is added.

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
    if let Some(id) = sent_request_id(headers) {
        return id.clone();
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is lower-case hex and `-`: always a header value.
    http::HeaderValue::from_str(id).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
}

/// The one `X-Request-Id` the client sent, if it is visible ASCII of at most 128 bytes.
fn sent_request_id(headers: &http::HeaderMap) -> Option<&http::HeaderValue> {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    match (sent.next(), sent.next()) {
        (Some(id), None)
            if !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            Some(id)
        }
        _ => None,
    }
}

/// What a handler adds to its response for the access log: who was served, or why not.
#[derive(Clone, Debug, Default)]
pub(crate) struct AccessNote {
    /// The matched route's configured path prefix.
    pub(crate) route: Option<Arc<str>>,
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
        let request_id = if self.layer.request_id {
            let id = request_id(req.headers());
            req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            Some(id)
        } else {
            // Logged as the client sent it, when it is a sane one; never made up or echoed.
            sent_request_id(req.headers()).cloned()
        };
        let entry = Entry {
            listener: self.layer.listener,
            log: self.layer.log,
            set_request_id: self.layer.request_id,
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
            if entry.set_request_id
                && let Some(id) = &entry.request_id
            {
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
    /// `request_id` was given to the request, and so goes back on the response.
    set_request_id: bool,
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
            route = note.and_then(|n| n.route.as_deref()),
            user = note.and_then(|n| n.user.as_deref()),
            error = note.and_then(|n| n.error),
            request_id = self.request_id.as_ref().and_then(|id| id.to_str().ok()),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use tower::ServiceExt;

    use super::*;

    /// Collects what the fmt subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs one request through the layer; returns the app's request id, the response's, and
    /// the log.
    async fn once(
        layer: AccessLogLayer,
        sent: Option<&str>,
    ) -> (Option<String>, Option<String>, String) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = tower::service_fn(|req: Request<()>| async move {
            let seen = req.headers().get(&X_REQUEST_ID).cloned();
            let mut resp = Response::new(());
            if let Some(seen) = seen {
                resp.headers_mut().insert("x-app-saw", seen);
            }
            Ok::<_, Infallible>(resp)
        });
        let mut req = Request::get("/callback?code=SECRET&state=s")
            .body(())
            .unwrap();
        if let Some(id) = sent {
            req.headers_mut().insert(&X_REQUEST_ID, id.parse().unwrap());
        }
        let resp = layer.layer(app).oneshot(req).await.unwrap();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        (header("x-app-saw"), header("x-request-id"), log)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_request_ids_a_sane_client_id_is_logged_and_nothing_is_added() {
        let (app, back, log) =
            once(AccessLogLayer::new("public", true, false), Some("trace-1")).await;
        assert_eq!(
            app.as_deref(),
            Some("trace-1"),
            "the client's header passes untouched"
        );
        assert_eq!(back, None, "nothing is echoed");
        assert!(log.contains(r#"request_id="trace-1""#), "{log}");
        assert!(
            log.contains(r#"path="/callback""#) && !log.contains("SECRET"),
            "{log}"
        );
        let (app, back, log) = once(AccessLogLayer::new("public", true, false), None).await;
        assert_eq!((app, back), (None, None));
        assert!(!log.contains("request_id"), "{log}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_request_ids_every_request_gets_one_and_the_client_gets_it_back() {
        let (app, back, log) = once(AccessLogLayer::new("api", false, true), None).await;
        let id = app.expect("the app got an id");
        assert!(uuid::Uuid::try_parse(&id).is_ok(), "{id}");
        assert_eq!(back.as_deref(), Some(id.as_str()));
        assert!(log.is_empty(), "no access log asked for: {log}");
        let too_long = "x".repeat(MAX_REQUEST_ID + 1);
        let (app, back, _) = once(AccessLogLayer::new("api", false, true), Some(&too_long)).await;
        assert_ne!(app.as_deref(), Some(too_long.as_str()));
        assert_eq!(app, back);
    }
}
