//! Configuration: a TOML file merged with `TOLLGATE_*` environment variables and the Texas/NAIS
//! names for the Entra provider, validated before anything starts.
//!
//! Sources, later ones win:
//! 1. the TOML file (`--config`, default `tollgate.toml`; a missing default file is fine),
//! 2. `TOLLGATE_<SECTION>__<KEY>` variables (`__` splits levels: `TOLLGATE_UPSTREAM__URL`),
//! 3. the NAIS names (`AZURE_APP_CLIENT_ID`, `AZURE_APP_CLIENT_SECRET`, `AZURE_APP_JWK`,
//!    `AZURE_APP_WELL_KNOWN_URL`, `AZURE_OPENID_CONFIG_ISSUER`, `AZURE_OPENID_CONFIG_JWKS_URI`,
//!    `AZURE_OPENID_CONFIG_TOKEN_ENDPOINT`, `BIND_ADDRESS`), applied to the provider named
//!    `entra_id` (created when absent and `AZURE_APP_CLIENT_ID` is set; `AZURE_ENABLED=false`
//!    turns them off), and `IDPORTEN_ENABLED=true` with `IDPORTEN_AUDIENCE`,
//!    `IDPORTEN_WELL_KNOWN_URL`, `IDPORTEN_ISSUER`, `IDPORTEN_JWKS_URI` for an introspect-only
//!    provider `idporten`; `TOKEN_X_ENABLED=true` with `TOKEN_X_CLIENT_ID`,
//!    `TOKEN_X_PRIVATE_JWK`, `TOKEN_X_WELL_KNOWN_URL`, `TOKEN_X_ISSUER`, `TOKEN_X_JWKS_URI`,
//!    `TOKEN_X_TOKEN_ENDPOINT` for an RFC 8693 provider `tokenx`; `MASKINPORTEN_ENABLED=true`
//!    with `MASKINPORTEN_CLIENT_ID`, `MASKINPORTEN_CLIENT_JWK`, `MASKINPORTEN_WELL_KNOWN_URL`,
//!    `MASKINPORTEN_ISSUER`, `MASKINPORTEN_JWKS_URI`, `MASKINPORTEN_TOKEN_ENDPOINT` for a
//!    `jwt_bearer` provider `maskinporten`,
//! 4. Azure Workload Identity's `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`,
//!    `AZURE_TENANT_ID` and `AZURE_AUTHORITY_HOST`: a federated client assertion for `entra_id`
//!    (created when absent and both ids are set) unless it has a secret or key of its own,
//! 5. with the `otel` feature, OpenTelemetry's `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`
//!    and `OTEL_RESOURCE_ATTRIBUTES`, for the `[telemetry]` keys the file and the `TOLLGATE_*`
//!    variables leave unset.
//!
//! The environment is read through [`EnvSource`] so tests inject values instead of mutating the
//! process environment.
//!
//! ```
//! use tollgate::config::{Config, MapEnv};
//! let env = MapEnv::from([
//!     ("AZURE_APP_CLIENT_ID", "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"),
//!     ("AZURE_APP_WELL_KNOWN_URL", "http://127.0.0.1:9400/t/v2.0/.well-known/openid-configuration"),
//!     ("TOLLGATE_UPSTREAM__URL", "http://127.0.0.1:3000"),
//! ]);
//! let cfg = Config::from_toml_str("", &env).unwrap();
//! assert_eq!(cfg.providers[0].name, "entra_id");
//! assert_eq!(cfg.upstream.url.as_str(), "http://127.0.0.1:3000/");
//! ```

mod api;
mod byte_size;
mod cache;
pub mod duration_str;
mod env;
mod listen;
mod log;
mod login;
mod provider;
mod redact;
mod reload;
mod route;
mod secret;
mod session;
mod telemetry;
mod upstream;

use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};

pub use self::api::ApiConfig;
pub use self::byte_size::{ByteSize, ByteSizeError};
pub use self::cache::{CacheConfig, SharedCache};
pub use self::env::{EnvSource, MapEnv, ProcessEnv, ignored_env_names};
pub use self::listen::ListenConfig;
pub use self::log::{LogConfig, LogFormat};
pub use self::login::LoginConfig;
pub use self::provider::{ClientAuthMethod, ProviderConfig, ProviderGrant, is_loopback_host};
pub(crate) use self::provider::{is_guid, normalize_client_ids, target_problem};
pub use self::reload::ReloadConfig;
#[cfg(feature = "server")]
pub(crate) use self::route::HOP_BY_HOP;
pub use self::route::{AuthMode, IdentityHeaders, RouteConfig};
pub use self::secret::Secret;
pub use self::session::SessionConfig;
pub use self::telemetry::TelemetryConfig;
pub use self::upstream::UpstreamConfig;
pub use crate::store::{StoreConfig, StoreKind};

/// The whole configuration of a tollgate process.
///
/// Every section has defaults: a file with no providers and no routes is valid.
///
/// ```
/// use tollgate::config::{Config, MapEnv};
/// let toml = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n";
/// let cfg = Config::from_toml_str(toml, &MapEnv::default())?;
/// assert_eq!(cfg.listen.public.port(), 8080);
/// assert!(cfg.providers.is_empty() && cfg.routes.is_empty());
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listener addresses.
    pub listen: ListenConfig,
    /// Local token API settings.
    pub api: ApiConfig,
    /// Logging.
    pub log: LogConfig,
    /// The app tollgate proxies to.
    pub upstream: UpstreamConfig,
    /// Identity providers.
    pub providers: Vec<ProviderConfig>,
    /// Public routes, matched by longest path prefix.
    pub routes: Vec<RouteConfig>,
    /// Token caches.
    pub cache: CacheConfig,
    /// Interactive-login proxy.
    pub login: LoginConfig,
    /// Per-user token store.
    pub store: StoreConfig,
    /// Reloading while serving.
    pub reload: ReloadConfig,
    /// Browser sign-in and cookie sessions.
    pub session: SessionConfig,
    /// OpenTelemetry tracing.
    pub telemetry: TelemetryConfig,
}

/// A configuration error; its message starts with the option's name.
///
/// ```
/// use tollgate::config::{Config, ConfigError, MapEnv};
/// let err = Config::from_toml_str("[cache]\nobo_capacity = 0\n", &MapEnv::default()).unwrap_err();
/// assert!(matches!(&err, ConfigError::Invalid { option, .. } if option == "cache"));
/// assert_eq!(err.to_string(), "cache: capacities must be greater than 0");
/// let err = Config::from_toml_str("[nope]\n", &MapEnv::default()).unwrap_err();
/// assert!(matches!(err, ConfigError::Parse(_)));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed into the configuration.
    #[error("{0}")]
    Parse(String),
    /// An option has an invalid value.
    #[error("{option}: {message}")]
    Invalid {
        /// Dotted option name, e.g. `providers[0].client_id`.
        option: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    fn invalid(option: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            option: option.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads `path` (when given; a missing file is an error) merged with `env`, then validates.
    ///
    /// ```
    /// use tollgate::config::{Config, MapEnv};
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("tollgate.toml");
    /// std::fs::write(&path, "[log]\nlevel = \"debug\"\n")?;
    /// assert_eq!(Config::load(Some(&path), &MapEnv::default())?.log.level, "debug");
    /// assert!(Config::load(Some(&dir.path().join("missing.toml")), &MapEnv::default()).is_err());
    /// assert_eq!(Config::load(None, &MapEnv::default())?.log.level, "info");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(path: Option<&Path>, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError::Parse(format!("cannot read {}: {e}", p.display())))?,
            None => String::new(),
        };
        Self::from_toml_str(&text, env)
    }

    /// Parses TOML text merged with `env`, then validates.
    ///
    /// ```
    /// use tollgate::config::{Config, MapEnv};
    /// let env = MapEnv::from([("TOLLGATE_LOG__LEVEL", "warn")]);
    /// let cfg = Config::from_toml_str("[log]\nlevel = \"debug\"\n", &env)?;
    /// assert_eq!(cfg.log.level, "warn"); // TOLLGATE_* variables override the file
    /// # Ok::<(), tollgate::config::ConfigError>(())
    /// ```
    pub fn from_toml_str(text: &str, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        redact::refuse_inline_secrets(text)?;
        let vars = env.vars();
        let figment = env::merge_tollgate_vars(Figment::new().merge(Toml::string(text)), &vars);
        route::check_identity_headers(&figment)?;
        let mut cfg: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(redact::redact_figment(&e)))?;
        env::apply_nais_env(&mut cfg, &vars)?;
        env::apply_idporten_env(&mut cfg, &vars)?;
        env::apply_token_x_env(&mut cfg, &vars)?;
        env::apply_maskinporten_env(&mut cfg, &vars)?;
        env::apply_workload_identity(&mut cfg, &vars)?;
        // Without the exporter compiled in, a pod's OTEL_* variables (meant for the app) are
        // not this build's to refuse.
        #[cfg(feature = "otel")]
        telemetry::apply_otel_env(&mut cfg.telemetry, &vars, |key| figment.contains(key))?;
        cfg.normalize();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes values in the one form the IdP puts in tokens. Entra accepts an application
    /// (client) id in any case on the wire but always emits it in lower case in `aud` and
    /// `azp`/`appid`: an id pasted in upper case from the portal would otherwise match no token.
    fn normalize(&mut self) {
        for p in &mut self.providers {
            let id = p.client_id.trim();
            if is_guid(id) {
                p.client_id = id.to_ascii_lowercase();
            }
            normalize_client_ids(&mut p.allowed_client_ids);
        }
        for r in &mut self.routes {
            normalize_client_ids(&mut r.allowed_client_ids);
        }
    }

    /// Checks every rule that types alone do not express.
    ///
    /// ```
    /// use tollgate::config::{Config, RouteConfig};
    /// let mut cfg = Config::default();
    /// assert!(cfg.validate().is_ok());
    /// cfg.routes.push(RouteConfig::default()); // needs a token, but no provider is configured
    /// assert_eq!(cfg.validate().unwrap_err().to_string(), "providers: at least one provider is needed by the routes");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        // The order is the order errors are reported in: the first failing check wins.
        if self.providers.is_empty() && !self.routes.iter().all(|r| r.auth == AuthMode::None) {
            return Err(ConfigError::invalid(
                "providers",
                "at least one provider is needed by the routes",
            ));
        }
        provider::check_providers(&self.providers)?;
        route::check_routes(&self.routes, &self.providers)?;
        self.upstream.check()?;
        self.listen.check()?;
        self.api.check(self.listen.api)?;
        self.login
            .check(&self.providers, self.listen.api, &self.api)?;
        self.session.check(&self.providers)?;
        route::check_session_routes(&self.routes, &self.session, &self.providers)?;
        check_store(&self.store)?;
        self.log.check()?;
        self.cache.check(&self.store)?;
        self.reload.check()?;
        self.telemetry.check()?;
        Ok(())
    }

    /// The provider a route uses.
    ///
    /// ```
    /// use tollgate::config::{Config, ProviderConfig, RouteConfig};
    /// let cfg = Config { providers: vec![ProviderConfig::default()], ..Default::default() };
    /// assert_eq!(cfg.route_provider(&RouteConfig::default())?.name, "entra_id"); // the only one
    /// let other = RouteConfig { provider: Some("idporten".into()), ..Default::default() };
    /// assert_eq!(cfg.route_provider(&other).unwrap_err(), "no provider named \"idporten\"");
    /// # Ok::<(), String>(())
    /// ```
    pub fn route_provider(&self, route: &RouteConfig) -> Result<&ProviderConfig, String> {
        route.provider_in(&self.providers)
    }

    /// The provider answering to `name` (aliases included).
    ///
    /// ```
    /// use tollgate::config::{Config, ProviderConfig};
    /// let cfg = Config { providers: vec![ProviderConfig::default()], ..Default::default() };
    /// assert_eq!(cfg.provider_named("azuread").map(|p| p.name.as_str()), Some("entra_id"));
    /// assert!(cfg.provider_named("idporten").is_none());
    /// ```
    pub fn provider_named(&self, name: &str) -> Option<&ProviderConfig> {
        provider::named(&self.providers, name)
    }

    /// The effective configuration as TOML, secrets shown as `[redacted]`.
    ///
    /// ```
    /// use tollgate::config::{Config, MapEnv};
    /// let env = MapEnv::from([
    ///     ("AZURE_APP_CLIENT_ID", "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"),
    ///     ("AZURE_APP_CLIENT_SECRET", "s3cret"),
    ///     ("AZURE_APP_WELL_KNOWN_URL", "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration"),
    /// ]);
    /// let toml = Config::from_toml_str("", &env)?.to_redacted_toml();
    /// assert!(toml.contains("client_secret = \"[redacted]\"") && !toml.contains("s3cret"));
    /// # Ok::<(), tollgate::config::ConfigError>(())
    /// ```
    pub fn to_redacted_toml(&self) -> String {
        redact::toml_string(self)
    }
}

/// `[store]`: the Redis URL is checked here, without connecting, so `tollgate check` refuses
/// one that cannot work.
fn check_store(store: &StoreConfig) -> Result<(), ConfigError> {
    #[cfg(feature = "redis")]
    if store.kind == StoreKind::Redis
        && let Some(why) = store
            .url
            .as_deref()
            .and_then(crate::store::redis_url_problem)
    {
        return Err(ConfigError::invalid("store.url", why));
    }
    #[cfg(not(feature = "redis"))]
    let _ = store;
    Ok(())
}
