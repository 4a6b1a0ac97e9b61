//! `[upstream]`: the app behind tollgate and how it is reached.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{ConfigError, IdentityHeaders, duration_str};

/// `[upstream]`: the app behind tollgate.
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::{Config, MapEnv};
/// let toml = "[upstream]\nurl = \"http://127.0.0.1:8000/app\"\ntimeout = \"30s\"\n";
/// let cfg = Config::from_toml_str(toml, &MapEnv::default())?;
/// assert_eq!(cfg.upstream.timeout, Duration::from_secs(30));
/// assert_eq!(cfg.upstream.connect_timeout, Duration::from_secs(2)); // the default
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Base URL (`http://host:port[/base]`).
    pub url: Url,
    /// TCP connect timeout.
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream's response headers, counted from the end of the request
    /// body (a slow upload is not a slow app), as Go's `ResponseHeaderTimeout` does.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Keep the client's `Host` header (true) or send the upstream's authority (false).
    pub preserve_host: bool,
    /// Append to client-supplied `X-Forwarded-*` headers instead of replacing them: only behind a
    /// trusted proxy (RFC 9700 §4.13, RFC 7239 §8).
    pub trust_forwarded_headers: bool,
    /// Close an upgraded connection (WebSocket) when the token that opened it expires: the
    /// tunnel is otherwise authorised once and then lives on (default `true`).
    pub close_tunnels_at_expiry: bool,
    /// The identity headers of routes that do not set `identity_headers` (default `true`,
    /// `X-Auth-*`).
    pub identity_headers: IdentityHeaders,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: Url::parse("http://127.0.0.1:3000").expect("static URL"),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            preserve_host: true,
            trust_forwarded_headers: false,
            close_tunnels_at_expiry: true,
            identity_headers: IdentityHeaders::XAuth,
        }
    }
}

impl UpstreamConfig {
    /// Only plain `http` with a host: the upstream is the app next to tollgate.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !matches!(self.url.scheme(), "http") || self.url.host().is_none() {
            return Err(ConfigError::invalid(
                "upstream.url",
                "must be an http://host:port URL",
            ));
        }
        Ok(())
    }
}
