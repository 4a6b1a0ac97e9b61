//! `[login]`: the interactive-login proxy's provider, public URL and allowed redirects.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{ApiConfig, ConfigError, ProviderConfig, duration_str};

/// `[login]`: the interactive-login proxy.
///
/// ```
/// use tollgate::config::{Config, LoginConfig, MapEnv};
/// let login = LoginConfig::default();
/// assert!(!login.enabled && login.require_pkce);
/// // Enabled, it needs a provider, a public URL and allowed redirect URIs.
/// let err = Config::from_toml_str("[login]\nenabled = true\n", &MapEnv::default()).unwrap_err();
/// assert!(err.to_string().starts_with("login."));
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginConfig {
    /// Serve the login routes on the public listener.
    pub enabled: bool,
    /// Provider the login goes to.
    pub provider: Option<String>,
    /// tollgate's public base URL, used in the rewritten discovery document.
    pub public_url: Option<Url>,
    /// Scopes added to every authorize request (`offline_access` is always added).
    pub extra_scopes: Vec<String>,
    /// Allowed `redirect_uri` values (exact match).
    pub redirect_uris: Vec<String>,
    /// Allowed `post_logout_redirect_uri` values (exact match).
    pub post_logout_redirect_uris: Vec<String>,
    /// Refuse authorize requests without an S256 PKCE challenge (default `true`: RFC 9700 §2.1.1
    /// asks every client for PKCE, and a confidential client loses nothing by sending it).
    pub require_pkce: bool,
    /// The oldest `id_token_hint` (by its `iat`) a logout forgets the user's stored tokens for
    /// (default 12 hours: a working day's session whose app keeps the login's ID token as its
    /// hint). An older hint still reaches the IdP's end-session endpoint; the tokens stay until
    /// the refresh token dies or the app deletes the user. A hint must also be of the session the
    /// tokens were stored from (`sid`), so a leaked old ID token cannot sign the user out later.
    #[serde(with = "duration_str")]
    pub logout_hint_max_age: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            provider: None,
            public_url: None,
            extra_scopes: Vec::new(),
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            require_pkce: true,
            logout_hint_max_age: Duration::from_secs(12 * 3600),
        }
    }
}

impl LoginConfig {
    /// With login on: a provider to send users to, a public URL, the redirect URIs, and a key on
    /// the API (it hands out the stored users' tokens). `api_listener` is `listen.api`.
    pub(super) fn check(
        &self,
        providers: &[ProviderConfig],
        api_listener: Option<SocketAddr>,
        api: &ApiConfig,
    ) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        match &self.provider {
            Some(name) => {
                if super::provider::named(providers, name).is_none() {
                    return Err(ConfigError::invalid(
                        "login.provider",
                        format!("no provider named {name:?}"),
                    ));
                }
            }
            None if providers.len() == 1 => {}
            None => {
                return Err(ConfigError::invalid(
                    "login.provider",
                    "required when several providers are configured",
                ));
            }
        }
        match &self.public_url {
            None => {
                return Err(ConfigError::invalid(
                    "login.public_url",
                    "required when login is enabled",
                ));
            }
            Some(u) if !matches!(u.scheme(), "http" | "https") => {
                return Err(ConfigError::invalid(
                    "login.public_url",
                    "must be an http(s) URL",
                ));
            }
            Some(_) => {}
        }
        if self.redirect_uris.is_empty() {
            return Err(ConfigError::invalid(
                "login.redirect_uris",
                "list at least one allowed redirect URI",
            ));
        }
        for (i, u) in self.redirect_uris.iter().enumerate() {
            Url::parse(u).map_err(|e| {
                ConfigError::invalid(format!("login.redirect_uris[{i}]"), e.to_string())
            })?;
        }
        if self.logout_hint_max_age.is_zero() {
            return Err(ConfigError::invalid(
                "login.logout_hint_max_age",
                "must be greater than 0",
            ));
        }
        // Loopback is no boundary in a pod: every container shares it.
        if api_listener.is_some() && !api.keyed() && !api.allow_unauthenticated_delegated {
            return Err(ConfigError::invalid(
                "api.key_file",
                "required when [login] is enabled: /api/v1/token/delegated hands out signed-in \
                 users' tokens to any process that reaches the API; set api.key_file (or \
                 TOLLGATE_API__KEY), or api.allow_unauthenticated_delegated = true to accept that",
            ));
        }
        Ok(())
    }
}
