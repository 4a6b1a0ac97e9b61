//! Connection hardening of the listeners (`[listen]`): a silent socket or a bare HTTP/2 preface
//! is closed after `header_timeout`, a stalled request body gets `408` and the upstream never
//! sees it whole, `max_connections` leaves further connections in the kernel's backlog, and
//! running out of file descriptors neither floods the log nor stops the server for good.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// tollgate with every listener on loopback, one open route (`auth = "none"`) to `upstream`,
/// and `listen` added to `[listen]`.
fn open_config(upstream: &str, listen: &str) -> String {
    format!(
        r#"
{listen_block}{listen}

[upstream]
url = "{upstream}"
timeout = "5s"

[[routes]]
path = "/"
auth = "none"
"#,
        listen_block = support::config::listen("5s")
    )
}

async fn open_proxy(upstream: &str, listen: &str) -> RunningServer {
    let cfg = Config::from_toml_str(&open_config(upstream, listen), &MapEnv::default()).unwrap();
    Server::bind(cfg).await.unwrap().spawn()
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent;
/// fails, rather than hangs, when that takes longer than `within`.
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
    assert!(
        read.is_ok(),
        "the server kept the connection open past {within:?}"
    );
    seen
}

/// Sends a keep-alive `GET` on `stream` and reads the start of its answer.
async fn get_kept_alive(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /held HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_silent_connection_is_closed_on_every_listener() {
    let echo = Echo::start().await;
    let server = open_proxy(&echo.url(), r#"header_timeout = "300ms""#).await;
    for addr in [server.public, server.api.unwrap(), server.admin.unwrap()] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let seen = closed_within(&mut silent, Duration::from_secs(10)).await;
        assert!(seen.is_empty(), "{addr}: {seen:?}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bare_http2_preface_is_closed() {
    let echo = Echo::start().await;
    let server = open_proxy(&echo.url(), r#"header_timeout = "300ms""#).await;
    let mut stream = TcpStream::connect(server.public).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // The server's SETTINGS may come first; then the connection must end.
    closed_within(&mut stream, Duration::from_secs(10)).await;
    server.shutdown().await.unwrap();
}

/// An upstream that reads each request body and counts the whole and the broken ones.
#[derive(Clone, Default)]
struct BodyCounts {
    complete: Arc<AtomicUsize>,
    broken: Arc<AtomicUsize>,
}

async fn body_upstream() -> (String, BodyCounts) {
    let counts = BodyCounts::default();
    let seen = counts.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Body| {
        let seen = seen.clone();
        async move {
            match axum::body::to_bytes(body, usize::MAX).await {
                Ok(_) => seen.complete.fetch_add(1, Ordering::SeqCst),
                Err(_) => seen.broken.fetch_add(1, Ordering::SeqCst),
            };
            "read"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, counts)
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_upstream_never_gets_it_whole() {
    let (upstream, counts) = body_upstream().await;
    let server = open_proxy(&upstream, r#"body_timeout = "300ms""#).await;
    let mut stream = TcpStream::connect(server.public).await.unwrap();
    // Ten of the hundred announced bytes, then nothing.
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let answer = closed_within(&mut stream, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"], "request_timeout");
    assert_eq!(
        body["error_description"],
        "the request body stalled: nothing arrived for 300ms"
    );

    // The proxy aborted its upstream request: the app's body read fails.
    for _ in 0..400 {
        if counts.broken.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        counts.broken.load(Ordering::SeqCst),
        1,
        "upstream saw the abort"
    );
    assert_eq!(counts.complete.load(Ordering::SeqCst), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn max_connections_leaves_the_next_connection_waiting_until_one_closes() {
    let echo = Echo::start().await;
    let server = open_proxy(&echo.url(), "max_connections = 2").await;
    // Two kept-alive connections, each known to be accepted: it has been answered.
    let mut first = TcpStream::connect(server.public).await.unwrap();
    assert!(get_kept_alive(&mut first).await.starts_with("HTTP/1.1 200"));
    let mut second = TcpStream::connect(server.public).await.unwrap();
    assert!(
        get_kept_alive(&mut second)
            .await
            .starts_with("HTTP/1.1 200")
    );

    // The kernel completes the third handshake; tollgate does not take the connection.
    let mut third = TcpStream::connect(server.public).await.unwrap();
    third
        .write_all(b"GET /third HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "third connection served while two were held"
    );
    assert_eq!(echo.hits(), 2);

    drop(first);
    let answer = closed_within(&mut third, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(echo.hits(), 3);
    assert!(
        get_kept_alive(&mut second)
            .await
            .starts_with("HTTP/1.1 200")
    );
    server.shutdown().await.unwrap();
}

/// `tollgate serve` in a child process, optionally with a descriptor limit; its log lines.
struct ChildTollgate {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
    _config: tempfile::NamedTempFile,
}

impl Drop for ChildTollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildTollgate {
    fn start(config: &str, max_fds: Option<u32>) -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), config).unwrap();
        // The limit applies to the child only; `exec` keeps the shell out of the way.
        let limit = max_fds.map_or(String::new(), |n| format!("ulimit -n {n} && "));
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" serve --config \"$1\""))
            .arg(env!("CARGO_BIN_EXE_tollgate"))
            .arg(file.path())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            log,
            _config: file,
        }
    }

    fn lines_with(&self, text: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// Waits (bounded) for a log line containing `text`.
    async fn wait_for(&self, text: &str) -> String {
        for _ in 0..400 {
            if let Some(line) = self.lines_with(text).into_iter().next() {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no log line with {text:?}: {:?}", self.log.lock().unwrap());
    }

    /// The public listener's address, from the JSON `listening` line.
    async fn public(&self) -> SocketAddr {
        let listening: Value = serde_json::from_str(&self.wait_for("\"listening\"").await).unwrap();
        listening["fields"]["public"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

#[tokio::test]
async fn the_access_log_shows_the_408_of_a_stalled_body() {
    let (upstream, _counts) = body_upstream().await;
    let config = open_config(&upstream, r#"body_timeout = "300ms""#)
        + "\n[log]\nformat = \"json\"\nlevel = \"info\"\naccess = true\n";
    let tollgate = ChildTollgate::start(&config, None);
    let mut stream = TcpStream::connect(tollgate.public().await).await.unwrap();
    stream
        .write_all(b"POST /stalled HTTP/1.1\r\nhost: app\r\ncontent-length: 100\r\n\r\n0123")
        .await
        .unwrap();
    let answer = closed_within(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with(b"HTTP/1.1 408 "), "{answer:?}");
    let line: Value = serde_json::from_str(&tollgate.wait_for("/stalled").await).unwrap();
    assert_eq!(line["target"], "tollgate::access");
    assert_eq!(line["fields"]["status"], 408, "{line}");
}

#[tokio::test]
async fn out_of_descriptors_the_server_backs_off_quietly_and_recovers() {
    let echo = Echo::start().await;
    let config = open_config(&echo.url(), "") + "\n[log]\nformat = \"json\"\nlevel = \"info\"\n";
    let tollgate = ChildTollgate::start(&config, Some(64));
    let public = tollgate.public().await;

    // More connections than the child has descriptors: it accepts until EMFILE, the rest wait
    // in the backlog.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(public).await.unwrap());
    }
    let first = tollgate.wait_for("accept failed").await;
    assert!(first.contains("Too many open files"), "{first}");
    // A window in which a retry every 100 ms, each logged, would have written some 30 lines.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warnings = tollgate.lines_with("accept failed");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");

    drop(held);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answer = http
        .get(format!("http://{public}/after"))
        .send()
        .await
        .expect("served again once descriptors are free");
    assert_eq!(answer.status(), 200);
    let echoed: Value = answer.json().await.unwrap();
    assert_eq!(echoed["path"], "/after");
}
