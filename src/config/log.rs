//! `[log]`: output format, filter and the per-request access line.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[log]`.
///
/// ```
/// use tollgate::config::{LogConfig, LogFormat};
/// let log = LogConfig::default();
/// assert_eq!((log.format, log.level.as_str()), (LogFormat::Pretty, "info"));
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `tollgate=debug,info`.
    pub level: String,
    /// One `info` line per request the public and API listeners answer (target
    /// `tollgate::access`): listener, method,
    /// path without the query, status, time, peer, and on the public listener the user.
    pub access: bool,
    /// Give each request on the public and API listeners an `X-Request-Id` (the client's, or a
    /// new UUID): forwarded to the app, returned to the client, and in the access line.
    pub request_id: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
            access: false,
            request_id: false,
        }
    }
}

impl LogConfig {
    /// `level` must parse as a `tracing` filter: refused here rather than replaced by `info` at
    /// start, unseen.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        #[cfg(feature = "server")]
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!("not a tracing filter (e.g. \"info\" or \"tollgate=debug,info\"): {e}"),
            ));
        }
        Ok(())
    }
}

/// Log output format.
///
/// ```
/// use tollgate::config::{Config, LogFormat, MapEnv};
/// let cfg = Config::from_toml_str("[log]\nformat = \"json\"\n", &MapEnv::default())?;
/// assert_eq!(cfg.log.format, LogFormat::Json);
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}
