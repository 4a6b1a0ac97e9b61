//! `[reload]`: taking a changed configuration while serving (`SIGHUP`, or watching the file).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration_str};

/// `[reload]`: `SIGHUP` always reloads the file; `watch = true` also reloads when it changes.
///
/// Routes, upstream, providers (audiences, scopes, keys), identity headers, the API key and
/// the log level change without dropping a connection; the caches of providers whose settings
/// did not change are kept. Listener addresses, `[store]`, `[cache]`, `[login] enabled` and
/// `[telemetry]` stay as the process started (a reload changing them is refused: restart for
/// those).
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::{Config, MapEnv};
/// let cfg = Config::from_toml_str("[reload]\nwatch = true\n", &MapEnv::default())?;
/// assert!(cfg.reload.watch);
/// assert_eq!(cfg.reload.debounce, Duration::from_millis(500));
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Reload when the configuration file changes (checked once a second).
    pub watch: bool,
    /// A changed file is read once it has stayed unchanged this long, so an editor's or a
    /// ConfigMap's several writes make one reload.
    #[serde(with = "duration_str")]
    pub debounce: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: false,
            debounce: Duration::from_millis(500),
        }
    }
}

impl ReloadConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.debounce > Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "reload.debounce",
                "must be at most 60s",
            ));
        }
        Ok(())
    }
}
