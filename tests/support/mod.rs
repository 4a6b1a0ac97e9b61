//! Test helpers shared by every integration test binary: keys and hand-made JWS, a static IdP,
//! an echo upstream, a private `redis-server`, a headless browser, `[listen]` TOML, and the one
//! way a test says it was skipped.
//!
//! Each binary uses a subset, hence `dead_code` is allowed here.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod config;
#[cfg(feature = "axum")]
pub mod echo;
#[cfg(feature = "axum")]
pub mod idp;
pub mod keys;
#[cfg(feature = "redis")]
pub mod redis;

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(feature = "axum")]
pub use echo::Echo;
#[cfg(feature = "axum")]
pub use idp::StaticIdp;
pub use keys::{TestKey, b64, jwt_claims, merge, user_claims};

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const OTHER_TENANT: &str = "66666666-7777-8888-9999-000000000000";
pub const CLIENT_ID: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
/// The challenge an Entra-protected API sends when Continuous Access Evaluation revoked the
/// token (Microsoft's example; the claims ask for a token issued after the revocation).
pub const CAE_CHALLENGE: &str = r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoiMTYwNDEwNjY1MSJ9fX0=""#;

/// Seconds since the Unix epoch, as JWT `iat`/`exp` count them.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Whether `tool` is installed: a test returns early when it is not, after saying so on stderr.
/// With `CI` set a missing tool fails the test instead, so CI never passes by skipping.
///
/// `tool` is a program on PATH that answers `--version` (`openssl` answers `version`), or an
/// absolute path that must exist (Debian's `/usr/bin/chromium`).
pub fn require(tool: &str) -> bool {
    if installed(tool) {
        return true;
    }
    skip(tool);
    false
}

/// Reports the current test as skipped for lack of `tool` (panics when `CI` is set).
pub fn skip(tool: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is not installed and CI is set: {test} cannot be skipped"
    );
    // Straight to stderr: the harness captures eprintln! of passing tests.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped {test}: {tool} is not installed");
}

fn installed(tool: &str) -> bool {
    if tool.starts_with('/') {
        return std::path::Path::new(tool).exists();
    }
    let arg = if tool == "openssl" {
        "version"
    } else {
        "--version"
    };
    std::process::Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// A loopback port that was free a moment ago. Racy (another process may take it before the
/// caller binds it): only for programs that must be told a port number and cannot be handed a
/// listener (chromedriver, redis-server); tollgate itself takes pre-bound listeners through
/// `Server::from_listeners`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP client that follows no redirects (so every hop can be checked) and ignores proxy
/// environment variables.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// The body of a GET of `url`, which must answer.
pub async fn get_text(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// The sum of the Prometheus samples `name` carrying all of `labels` (0 when absent), from an
/// admin `/metrics` page.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
