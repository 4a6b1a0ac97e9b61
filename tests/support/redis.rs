//! A private `redis-server` on a loopback port, without persistence; killed on drop.
//!
//! redis-server must be told a port number (its `--port 0` means "no TCP at all"), so the
//! launcher reserves one with [`free_port`] and, should another process take it before
//! redis-server binds, starts again on a fresh port (bounded retry loop). A unix socket would
//! avoid the race but the store under test is configured with `redis://host:port` URLs.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The `--tls-port`, when started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    /// More `redis-server` arguments (TLS).
    extra: Vec<String>,
}

/// Attempts at start-up, each on fresh ports, before a port race is taken for a real failure.
const START_ATTEMPTS: usize = 5;

impl RedisServer {
    /// `None` (after [`require`]'s notice) when redis-server is not installed.
    pub fn start() -> Option<Self> {
        Self::launch(false, Vec::new())
    }

    /// A server that also speaks TLS on [`RedisServer::tls_port`] with the PEM files in `pki`
    /// (`server.pem`, `server.key`, `ca.pem`); clients need no certificate. The plain port stays
    /// open.
    pub fn start_tls(pki: &Path) -> Option<Self> {
        let file = |name: &str| pki.join(name).display().to_string();
        let extra = vec![
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        Self::launch(true, extra)
    }

    fn launch(tls: bool, extra: Vec<String>) -> Option<Self> {
        if !require("redis-server") {
            return None;
        }
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            // A port just released can come back from the next reservation: never the same two.
            let tls_port = tls.then(|| {
                std::iter::repeat_with(free_port)
                    .find(|p| *p != port)
                    .expect("a free port")
            });
            let mut server = Self {
                child: None,
                port,
                tls_port,
                dir: tempfile::tempdir().unwrap(),
                extra: extra.clone(),
            };
            match server.try_start() {
                Ok(()) => return Some(server),
                Err(why) => last = why,
            }
        }
        panic!("redis-server did not start in {START_ATTEMPTS} attempts: {last}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn raw(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Starts the server again, on the same port(s), and waits until it answers PING. No retry
    /// on other ports here: clients hold the URL, so the port must stay.
    pub fn restart(&mut self) {
        if let Err(why) = self.try_start() {
            panic!("{why}");
        }
    }

    /// Kills the server: connections are refused until [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends signal `name` (`STOP`, `CONT`) to the server process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server already running");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        if let Some(tls_port) = self.tls_port {
            command.args(["--tls-port", &tls_port.to_string()]);
        }
        let child = command
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls PING (bounded) until the server answers; `Err` when it exited (a port taken).
    fn wait_ready(&mut self) -> Result<(), String> {
        for _ in 0..500 {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("redis-server exited during start-up: {status}"));
            }
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut answer = [0u8; 7];
                if conn.write_all(b"PING\r\n").is_ok()
                    && conn.read_exact(&mut answer).is_ok()
                    && &answer == b"+PONG\r\n"
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        panic!("redis-server did not answer on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
