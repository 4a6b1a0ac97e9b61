//! `[listen]`: the three listeners' addresses and the limits and timeouts every connection gets.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration_str};

/// `[listen]`: where the three listeners bind.
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::ListenConfig;
/// let listen = ListenConfig::default();
/// assert_eq!(listen.public, "0.0.0.0:8080".parse().unwrap());
/// assert_eq!(listen.api, Some("127.0.0.1:7164".parse().unwrap()));
/// assert_eq!(listen.shutdown_grace, Duration::from_secs(20));
/// assert_eq!(listen.max_connections, 10_000); // per listener
/// assert_eq!(listen.header_timeout, Duration::from_secs(30));
///
/// // TOML has no null: `"off"` turns the API or admin listener off (a missing key keeps it on).
/// use tollgate::config::{Config, MapEnv};
/// let cfg = Config::from_toml_str("[listen]\napi = \"off\"\n", &MapEnv::default())?;
/// assert_eq!((cfg.listen.api, cfg.listen.admin.is_some()), (None, true));
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Proxied app routes and login routes.
    pub public: SocketAddr,
    /// Local token API; `None` (`api = "off"` in the file) disables it.
    #[serde(with = "optional_listener")]
    pub api: Option<SocketAddr>,
    /// `/healthz`, `/readyz`, `/metrics`; `None` (`admin = "off"`) disables it.
    #[serde(with = "optional_listener")]
    pub admin: Option<SocketAddr>,
    /// How long in-flight requests may run after SIGTERM.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// Most request headers accepted (more gives 431).
    pub max_request_headers: usize,
    /// Most bytes of request headers accepted (more gives 431).
    pub max_request_header_bytes: usize,
    /// Most connections each listener serves at once; more wait in the kernel's accept
    /// backlog until one closes. Must be at least 1.
    pub max_connections: usize,
    /// A connection must complete its first request head this soon after it is accepted
    /// (before HTTP/1 or HTTP/2 is even detected), and an HTTP/1.1 request head must be
    /// complete this soon after the server starts waiting for it, or the connection is closed.
    #[serde(with = "duration_str")]
    pub header_timeout: Duration,
    /// A connection with no request in progress for this long is closed (HTTP/2: after a
    /// `GOAWAY`). An HTTP/1.1 connection waiting for its next request is also bounded by
    /// `header_timeout`, whichever is shorter.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// A request body that delivers nothing for this long fails the request with `408`.
    #[serde(with = "duration_str")]
    pub body_timeout: Duration,
    /// HTTP/2: a `PING` goes out after this long without a frame from the client; without
    /// its acknowledgement within the same time the connection is closed.
    #[serde(with = "duration_str")]
    pub h2_keep_alive_interval: Duration,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            public: SocketAddr::from(([0, 0, 0, 0], 8080)),
            api: Some(SocketAddr::from(([127, 0, 0, 1], 7164))),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            shutdown_grace: Duration::from_secs(20),
            max_request_headers: 100,
            max_request_header_bytes: 64 * 1024,
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            h2_keep_alive_interval: Duration::from_secs(20),
        }
    }
}

impl ListenConfig {
    /// The longest `header_timeout`, `idle_timeout`, `body_timeout` or
    /// `h2_keep_alive_interval` accepted: far beyond any useful value, and far from the
    /// overflow of the clock arithmetic the timers do.
    const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "listen.max_connections",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("listen.header_timeout", self.header_timeout),
            ("listen.idle_timeout", self.idle_timeout),
            ("listen.body_timeout", self.body_timeout),
            ("listen.h2_keep_alive_interval", self.h2_keep_alive_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
            if value > Self::MAX_TIMEOUT {
                return Err(ConfigError::invalid(key, "must be at most 24h"));
            }
        }
        Ok(())
    }
}

/// `api`/`admin`: an address, or `"off"` for no listener. Printed back the same way, so the
/// redacted TOML `tollgate check` prints loads into the same configuration.
mod optional_listener {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    const OFF: &str = "off";

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().eq_ignore_ascii_case(OFF) {
            return Ok(None);
        }
        s.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "bad listener address {s:?} (use e.g. \"127.0.0.1:7164\", or \"off\")"
            ))
        })
    }

    pub(super) fn serialize<S: Serializer>(
        v: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(OFF),
        }
    }
}
