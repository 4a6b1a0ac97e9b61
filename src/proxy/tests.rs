//! Unit tests of the forwarder: hop-by-hop and forwarded headers, bodies, timeouts, upgrades
//! and tunnels, against small upstreams built on `axum::serve`.

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
    /// What the echo upstream saw of `request`, sent through the proxy.
    async fn of(request: reqwest::RequestBuilder) -> Seen {
        request.send().await.unwrap().json().await.unwrap()
    }

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

    let seen = Seen::of(client.get(with_base.url("/a/b?x=1&y=%20z"))).await;
    assert_eq!(seen.target, "/base/a/b?x=1&y=%20z");

    let seen = Seen::of(client.get(without_base.url("/a/b?x=1"))).await;
    assert_eq!(seen.target, "/a/b?x=1");

    drop(client);
    with_base.stop().await;
    without_base.stop().await;
    upstream.stop().await;
}

#[test]
fn upstream_target_is_the_base_then_the_target_in_origin_form() {
    let forwarder = Forwarder::new(UpstreamSettings {
        url: Uri::from_static("http://up.internal:8081/app"),
        ..UpstreamSettings::default()
    });
    let target = |f: &Forwarder, original| f.inner.upstream_target(&Uri::from_static(original));
    // An absolute-form target (or an h2 request's) loses the client's scheme and authority.
    let uri = target(&forwarder, "http://front.example/x/y?q=1").unwrap();
    assert_eq!(uri, "/app/x/y?q=1");
    assert_eq!(target(&forwarder, "/").unwrap(), "/app/");
    // The asterisk form (OPTIONS *) is not a path and stays as it is.
    assert_eq!(target(&forwarder, "*").unwrap().path(), "*");

    let root = Forwarder::new(UpstreamSettings {
        url: Uri::from_static("http://up.internal/"),
        ..UpstreamSettings::default()
    });
    assert_eq!(target(&root, "/p?q").unwrap(), "/p?q");
    let uri = target(&root, "https://front.example/p?q").unwrap();
    assert_eq!(
        (uri.scheme(), uri.authority(), uri.to_string().as_str()),
        (None, None, "/p?q")
    );
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
    // Each alone goes too.
    for name in ["forwarded", "x-real-ip", "true-client-ip"] {
        let seen = Seen::of(
            reqwest::Client::new()
                .get(proxy.url("/"))
                .header(name, "203.0.113.7"),
        )
        .await;
        assert!(seen.all(name).is_empty(), "{name}");
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    }
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
    let seen = Seen::of(client.get(proxy.url("/"))).await;
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
    // The thread's kept value is the last peer's only.
    for peer in [
        "192.0.2.1",
        "192.0.2.1",
        "192.0.2.2",
        "2001:db8::1",
        "192.0.2.1",
    ] {
        set_forwarded_headers(&mut headers, peer.parse().unwrap(), None, false);
        assert_eq!(headers["x-forwarded-for"], peer);
    }
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

    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr))
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

#[test]
fn each_hop_by_hop_name_has_its_own_bit() {
    // `hop_by_hop_bit` spells the names out for speed: it must agree with the list.
    for (bit, name) in &HOP_BY_HOP {
        assert_eq!(hop_by_hop_bit(name), *bit, "{name}");
    }
    for other in [
        "host",
        "user-agent",
        "x-connection",
        "tee",
        "upgrade-insecure-requests",
    ] {
        assert_eq!(
            hop_by_hop_bit(&HeaderName::from_static(other)),
            0,
            "{other}"
        );
    }
}

/// What a [`keep_alive_upstream`] saw: connections accepted, and connections that ended.
#[derive(Default)]
struct ConnectionCounts {
    accepted: AtomicU64,
    ended: AtomicU64,
}

/// A raw HTTP/1.1 upstream answering each request (no body) with [`reply_to`], counting its
/// connections. With `close_after_each`, it closes each connection after one response, without
/// saying so (no `Connection: close`), as an upstream ending an idle keep-alive connection does.
async fn keep_alive_upstream(
    close_after_each: bool,
) -> (
    SocketAddr,
    Arc<ConnectionCounts>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(ConnectionCounts::default());
    let seen = counts.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.accepted.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                'requests: loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break 'requests,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reply = reply_to(&head);
                    head.clear();
                    if stream.write_all(reply).await.is_err() || close_after_each {
                        break;
                    }
                }
                seen.ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts, task)
}

/// `200 ok` with a length; for `HEAD`, its head alone; for `/chunked`, the same body in
/// chunks; for `/204`, `204 No Content`.
fn reply_to(head: &[u8]) -> &'static [u8] {
    if head.starts_with(b"HEAD ") {
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    } else if head.starts_with(b"GET /chunked ") {
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n"
    } else if head.starts_with(b"GET /204 ") {
        b"HTTP/1.1 204 No Content\r\n\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    }
}

#[tokio::test]
async fn bodiless_and_chunked_responses_give_their_connection_back() {
    // A response with no body (HEAD, 204) is never polled for one: its connection goes back at
    // once. A chunked body ends with its last chunk.
    let (addr, counts, upstream) = keep_alive_upstream(false).await;
    let proxy = proxy(settings_for(addr)).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let head = client.head(proxy.url("/")).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        let chunked = client.get(proxy.url("/chunked")).send().await.unwrap();
        assert_eq!(chunked.text().await.unwrap(), "ok");
        let empty = client.get(proxy.url("/204")).send().await.unwrap();
        assert_eq!(empty.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1, "one, reused");
    drop(client);
    proxy.stop().await;
    upstream.abort();
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    assert_eq!(connections_for_five_gets(false).await, 1, "one, reused");
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    // Every GET still gets its `200` (no `502`), each over a new connection.
    assert_eq!(connections_for_five_gets(true).await, 5);
}

/// Five GETs in a row through the proxy to a [`keep_alive_upstream`], each answered `200 ok`:
/// the connections the upstream accepted.
async fn connections_for_five_gets(close_after_each: bool) -> u64 {
    let (addr, counts, upstream) = keep_alive_upstream(close_after_each).await;
    let proxy = proxy(settings_for(addr)).await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let response = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    drop(client);
    proxy.stop().await;
    upstream.abort();
    counts.accepted.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_response_read_halfway_does_not_put_its_connection_back() {
    // The body is longer than what the client reads: the connection still holds the rest.
    let (addr, upstream) =
        scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly ten b").await;
    let pool = pool::UpstreamPool::new(
        Some(addr.to_string().parse().unwrap()),
        Duration::from_secs(2),
    );
    let response = pool.send(get_root(addr), true).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"only ten b");
    drop(body);
    assert_eq!(pool.idle_connections(), 0);
    upstream.abort();
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let (addr, counts, upstream) = keep_alive_upstream(false).await;
    let idle_timeout = Duration::from_millis(150);
    let authority = Some(addr.to_string().parse().unwrap());
    let pool =
        pool::UpstreamPool::with_idle_timeout(authority, Duration::from_secs(2), idle_timeout);
    let response = pool.send(get_root(addr), true).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    assert_eq!(
        pool.idle_connections(),
        1,
        "back in the pool at the body's end"
    );
    // The reaper looks every third of the timeout: closed within 4/3 of it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while counts.ended.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle connection is closed");
    assert_eq!(pool.idle_connections(), 0);
    upstream.abort();
}

/// `GET /` for `addr`, as the forwarder hands it to the pool: origin-form, `Host` set.
fn get_root(addr: SocketAddr) -> Request<Body> {
    Request::builder()
        .uri("/")
        .header(header::HOST, addr.to_string())
        .body(Body::empty())
        .unwrap()
}
