//! HTTP server loop shared by the listeners.
//!
//! One accept loop per listener: HTTP/1.1 and h2c (prior knowledge) on the same port, upgrades
//! (WebSocket) enabled, request header limits enforced by hyper, and a bounded graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower::Service;

/// Limits on request headers; exceeding one gives `431 Request Header Fields Too Large`.
#[derive(Debug, Clone)]
pub(crate) struct ServerLimits {
    /// Most header fields accepted in one HTTP/1.1 request.
    pub(crate) max_headers: usize,
    /// Most bytes of request head (request line and headers) accepted; also hyper's HTTP/1
    /// read buffer size (at least 8 KiB) and the HTTP/2 header list limit.
    pub(crate) max_header_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_headers: HYPER_DEFAULT_MAX_HEADERS,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Serves `router` on `listener` (HTTP/1.1 and h2c prior-knowledge) until `shutdown` resolves;
/// then stops accepting, lets in-flight requests finish for at most `grace`, and returns.
///
/// Each request carries `axum::extract::ConnectInfo<SocketAddr>` in its extensions and upgrades
/// (WebSocket) are supported. Accept errors are logged and retried after a short pause.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    serve_from(listener, router, limits, shutdown, grace).await
}

/// hyper keeps up to this many header slots on the stack; setting any value moves them to the
/// heap for every request, so the default is left alone.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// hyper refuses an HTTP/1 read buffer smaller than this.
const HYPER_MIN_BUF_SIZE: usize = 8192;
/// Pause after a resource error from `accept` (EMFILE, ENFILE, ENOBUFS): retrying at once would
/// spin on the same error while connections being closed elsewhere free descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// A client that has not finished sending its request head by then is dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The source of connections; a trait so tests can inject accept errors.
trait Acceptor {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Acceptor for TcpListener {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

async fn serve_from(
    mut acceptor: impl Acceptor,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let builder = connection_builder(limits);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow with every connection.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = acceptor.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection_error(&error) => {
                tracing::debug!(%error, "accept failed for one connection");
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying after a pause");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        configure_accepted(&stream);
        // Like `into_make_service_with_connect_info` does for `axum::serve`: every request of
        // this connection carries the peer address. Cloning the router is a reference count.
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request)
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(error) = connection.await {
                // Client resets and protocol errors are routine on a public listener.
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }

    // Closing the listener first makes new connection attempts fail fast instead of queueing.
    drop(acceptor);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "shutdown grace period over; closing remaining connections"
        );
    }
    connections.shutdown().await;
    Ok(())
}

fn connection_builder(limits: ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    {
        let mut http1 = builder.http1();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUF_SIZE));
        if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            http1.max_headers(limits.max_headers);
        }
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
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

#[cfg(test)]
mod tests {
    use super::*;
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
}
