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

/// Adds the access log to a listener's router.
#[derive(Clone, Copy)]
pub(crate) struct AccessLogLayer {
    listener: &'static str,
}

impl AccessLogLayer {
    /// Logs each request answered by the listener named `listener`.
    pub(crate) fn new(listener: &'static str) -> Self {
        Self { listener }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            listener: self.listener,
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
    listener: &'static str,
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

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let entry = Entry {
            listener: self.listener,
            started: Instant::now(),
            method: req.method().clone(),
            // A clone shares the request target's bytes; the handler may rewrite its own copy.
            uri: req.uri().clone(),
            peer: req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
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
        let result = ready!(this.inner.poll(cx));
        if let (Some(entry), Ok(response)) = (this.entry.take(), &result) {
            entry.log(response);
        }
        Poll::Ready(result)
    }
}

struct Entry {
    listener: &'static str,
    started: Instant,
    method: Method,
    uri: Uri,
    peer: Option<SocketAddr>,
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
            "request"
        );
    }
}
