//! `[session]`: tollgate signs browser users in itself and keeps their session server-side, for
//! apps and ingresses that are not OIDC clients (oauth2-proxy's, Easy Auth's and Wonderwall's
//! job).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{ConfigError, ProviderConfig, duration_str};

/// `[session]`: browser sign-in and cookie sessions, used by routes with `auth = "session"` and
/// by the forward-auth endpoint `/oauth2/auth`.
///
/// ```
/// use tollgate::config::{Config, MapEnv, SessionConfig};
/// let toml = r#"
/// [[providers]]
/// name = "entra_id"
/// well_known_url = "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration"
/// client_id = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
///
/// [session]
/// enabled = true
/// public_url = "https://app.example"
/// "#;
/// let cfg = Config::from_toml_str(toml, &MapEnv::default())?;
/// assert_eq!(cfg.session.cookie_name(), "__Host-tollgate"); // https: the __Host- prefix
/// assert_eq!(cfg.session.lifetime.as_secs(), 10 * 3600);
/// let plain = toml.replace("https://app.example", "http://app.example");
/// let err = Config::from_toml_str(&plain, &MapEnv::default()).unwrap_err();
/// assert!(err.to_string().starts_with("session.public_url: must be https"));
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Serve `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out`, `/oauth2/userinfo`,
    /// `/oauth2/auth` and the logout channels on the public listener.
    pub enabled: bool,
    /// Provider users sign in with; optional when exactly one is configured.
    pub provider: Option<String>,
    /// The origin browsers reach tollgate at (`https://app.example`): the callback is
    /// `<public_url>/oauth2/callback`, and same-origin redirects and requests are judged
    /// against it.
    pub public_url: Option<Url>,
    /// Scopes asked for at sign-in. The refresh token they bring also gets the tokens of the
    /// routes' `obo` targets.
    pub scopes: Vec<String>,
    /// The session cookie's name; default `__Host-tollgate` on https, `tollgate` on http.
    pub cookie_name: Option<String>,
    /// Absolute session lifetime: the user signs in again after it, however active.
    #[serde(with = "duration_str")]
    pub lifetime: Duration,
    /// A session unused this long ends.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// The user's tokens are refreshed when they have less than this left.
    #[serde(with = "duration_str")]
    pub refresh_margin: Duration,
    /// Hosts besides the public URL's that `rd` may send the browser to after sign-in or
    /// sign-out (exact host names, no wildcards).
    pub allowed_redirect_hosts: Vec<String>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            provider: None,
            public_url: None,
            scopes: ["openid", "profile", "offline_access"]
                .map(str::to_owned)
                .to_vec(),
            cookie_name: None,
            lifetime: Duration::from_secs(10 * 3600),
            idle_timeout: Duration::from_secs(3600),
            refresh_margin: Duration::from_secs(300),
            allowed_redirect_hosts: Vec::new(),
        }
    }
}

impl SessionConfig {
    /// The session cookie's name: `cookie_name`, or `__Host-tollgate` when the public URL is
    /// https (the prefix makes browsers refuse it unless `Secure`, `Path=/` and host-only, RFC
    /// 6265bis §4.1.3.2), `tollgate` on http.
    pub fn cookie_name(&self) -> &str {
        match &self.cookie_name {
            Some(name) => name,
            None if self.is_https() => "__Host-tollgate",
            None => "tollgate",
        }
    }

    /// The provider users sign in with among `providers`: the one `provider` names (aliases
    /// included), else the first (the only one, once the configuration is valid).
    ///
    /// ```
    /// use tollgate::config::{ProviderConfig, SessionConfig};
    /// let providers = [ProviderConfig::default()]; // named "entra_id"
    /// let named = SessionConfig { provider: Some("azuread".into()), ..Default::default() };
    /// assert_eq!(named.provider_in(&providers).map(|p| p.name.as_str()), Some("entra_id"));
    /// assert!(SessionConfig::default().provider_in(&[]).is_none());
    /// ```
    pub fn provider_in<'a>(&self, providers: &'a [ProviderConfig]) -> Option<&'a ProviderConfig> {
        match &self.provider {
            Some(name) => super::provider::named(providers, name),
            None => providers.first(),
        }
    }

    /// Whether cookies carry `Secure`: always, except on an http loopback public URL.
    pub fn is_https(&self) -> bool {
        self.public_url
            .as_ref()
            .is_none_or(|u| u.scheme() == "https")
    }

    /// With sessions on: a provider, an https public URL (http only on loopback), scopes with
    /// `openid`, and lifetimes that fit in each other.
    pub(super) fn check(&self, providers: &[ProviderConfig]) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        match &self.provider {
            Some(name) if super::provider::named(providers, name).is_none() => {
                return Err(ConfigError::invalid(
                    "session.provider",
                    format!("no provider named {name:?}"),
                ));
            }
            Some(_) => {}
            None if providers.len() == 1 => {}
            None => {
                return Err(ConfigError::invalid(
                    "session.provider",
                    "required when several providers are configured (or none)",
                ));
            }
        }
        let Some(url) = &self.public_url else {
            return Err(ConfigError::invalid(
                "session.public_url",
                "required when sessions are enabled",
            ));
        };
        let loopback = super::provider::is_loopback_host(url);
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(ConfigError::invalid(
                    "session.public_url",
                    "must be https (http only on a loopback host): the session cookie is \
                     Secure",
                ));
            }
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::invalid(
                "session.public_url",
                "must be an origin (scheme, host and port) without a path",
            ));
        }
        for needed in ["openid", "offline_access"] {
            if !self.scopes.iter().any(|s| s == needed) {
                return Err(ConfigError::invalid(
                    "session.scopes",
                    "must include \"openid\" (the sign-in needs an ID token) and \
                     \"offline_access\" (the session keeps the user's tokens fresh)",
                ));
            }
        }
        let name = self.cookie_name();
        if name.is_empty() || !name.bytes().all(is_cookie_name_byte) {
            return Err(ConfigError::invalid(
                "session.cookie_name",
                "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
            ));
        }
        if name.starts_with("__Host-") && !self.is_https() {
            return Err(ConfigError::invalid(
                "session.cookie_name",
                "a __Host- cookie needs an https public_url",
            ));
        }
        if self.lifetime.is_zero() || self.idle_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "session.lifetime",
                "lifetime and idle_timeout must be greater than 0",
            ));
        }
        if self.refresh_margin >= self.lifetime {
            return Err(ConfigError::invalid(
                "session.refresh_margin",
                "must be shorter than the lifetime",
            ));
        }
        for (i, host) in self.allowed_redirect_hosts.iter().enumerate() {
            if host.is_empty()
                || host.contains(['/', ':', '@', '*'])
                || host.contains(char::is_whitespace)
            {
                return Err(ConfigError::invalid(
                    format!("session.allowed_redirect_hosts[{i}]"),
                    "must be a bare host name (no scheme, port, path or wildcard)",
                ));
            }
        }
        Ok(())
    }
}

/// A `token` character (RFC 9110 §5.6.2), what RFC 6265 §4.1.1 allows in a cookie name.
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
