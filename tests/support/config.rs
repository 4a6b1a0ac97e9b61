//! TOML for tollgate's configuration: the `[listen]` block every test starts from.

use std::net::SocketAddr;

/// `[listen]` with the public, API and admin listeners on free loopback ports.
pub fn listen(shutdown_grace: &str) -> String {
    listen_public("127.0.0.1:0".parse().unwrap(), shutdown_grace)
}

/// `[listen]` with the public listener on `public` (a port the test must know before start,
/// e.g. for `[login] public_url`) and API and admin on free loopback ports.
pub fn listen_public(public: SocketAddr, shutdown_grace: &str) -> String {
    format!(
        "[listen]\npublic = \"{public}\"\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nshutdown_grace = \"{shutdown_grace}\"\n"
    )
}

/// A path as a TOML string (quoted and escaped).
pub fn toml_str(path: &std::path::Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}
