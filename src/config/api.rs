//! `[api]`: the local token API's key and the opt-outs from needing one.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret};

/// `[api]`: the local token API.
///
/// The key comes from a file or the environment; an inline `key` in the file is refused.
///
/// ```
/// use tollgate::config::{Config, MapEnv};
/// let cfg = Config::from_toml_str("[api]\nkey_file = \"/run/secrets/api_key\"\n", &MapEnv::default())?;
/// assert_eq!(cfg.api.key_file.as_deref(), Some("/run/secrets/api_key".as_ref()));
/// assert!(Config::from_toml_str("[api]\nkey = \"s3cret\"\n", &MapEnv::default()).is_err());
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// File holding the API key clients send as `Authorization: Bearer <key>`.
    pub key_file: Option<PathBuf>,
    /// The API key itself, from the environment only (`TOLLGATE_API__KEY`).
    pub key: Option<Secret>,
    /// Allow a non-loopback API address without a key.
    pub allow_insecure_api: bool,
    /// With `[login]` on, serve the API (and its `/api/v1/token/delegated`, which hands out
    /// signed-in users' tokens) without a key: any process that reaches the API address can then
    /// get any stored user's tokens. Off by default; `tollgate check` asks for a key instead.
    pub allow_unauthenticated_delegated: bool,
}

impl ApiConfig {
    /// True when clients must present a key, from `key_file` or the environment.
    pub(super) fn keyed(&self) -> bool {
        self.key.is_some() || self.key_file.is_some()
    }

    /// A keyless API is refused off loopback unless explicitly allowed; `listener` is
    /// `listen.api`.
    pub(super) fn check(&self, listener: Option<SocketAddr>) -> Result<(), ConfigError> {
        if let Some(api) = listener
            && !api.ip().is_loopback()
            && !self.keyed()
            && !self.allow_insecure_api
        {
            return Err(ConfigError::invalid(
                "listen.api",
                format!(
                    "{api} is not a loopback address: set api.key_file, or allow_insecure_api = true"
                ),
            ));
        }
        Ok(())
    }
}
