//! Configuration: a TOML file merged with `TOLLGATE_*` environment variables and the Texas/NAIS
//! names for the Entra provider, validated before anything starts.
//!
//! Sources, later ones win:
//! 1. the TOML file (`--config`, default `tollgate.toml`; a missing default file is fine),
//! 2. `TOLLGATE_<SECTION>__<KEY>` variables (`__` splits levels: `TOLLGATE_UPSTREAM__URL`),
//! 3. the NAIS names (`AZURE_APP_CLIENT_ID`, `AZURE_APP_CLIENT_SECRET`, `AZURE_APP_JWK`,
//!    `AZURE_APP_WELL_KNOWN_URL`, `AZURE_OPENID_CONFIG_ISSUER`, `AZURE_OPENID_CONFIG_JWKS_URI`,
//!    `AZURE_OPENID_CONFIG_TOKEN_ENDPOINT`, `BIND_ADDRESS`), applied to the provider named
//!    `entra_id` (created when absent and `AZURE_APP_CLIENT_ID` is set).
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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};
use url::Url;

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
}

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
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Proxied app routes and login routes.
    pub public: SocketAddr,
    /// Local token API; `None` disables it.
    pub api: Option<SocketAddr>,
    /// `/healthz`, `/readyz`, `/metrics`.
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

    fn validate(&self) -> Result<(), ConfigError> {
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
        }
    }
}

/// `[[providers]]`: one OpenID Connect identity provider.
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::{ClientAuthMethod, Config, MapEnv};
/// let toml = r#"
/// [[providers]]
/// name = "entra_id"
/// well_known_url = "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration"
/// client_id = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
/// "#;
/// let p = &Config::from_toml_str(toml, &MapEnv::default())?.providers[0];
/// assert_eq!(p.algorithms, [jsonwebtoken::Algorithm::RS256]);
/// assert_eq!(p.client_auth, ClientAuthMethod::ClientSecretPost);
/// assert_eq!(p.leeway, Duration::from_secs(60));
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// Name used by routes and by the API's `identity_provider` (`entra_id`; `azuread` is an alias).
    pub name: String,
    /// OpenID discovery document URL.
    pub well_known_url: Option<Url>,
    /// Issuer; overrides discovery. May contain `{tenantid}`.
    pub issuer: Option<String>,
    /// JWKS URL; overrides discovery.
    pub jwks_uri: Option<Url>,
    /// Token endpoint; overrides discovery.
    pub token_endpoint: Option<Url>,
    /// This app's client id.
    pub client_id: String,
    /// How tollgate authenticates to the token endpoint.
    pub client_auth: ClientAuthMethod,
    /// Client secret, from the environment (`AZURE_APP_CLIENT_SECRET`) only.
    pub client_secret: Option<Secret>,
    /// File holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// `private_key_jwt`: PEM private key.
    pub client_key_file: Option<PathBuf>,
    /// `private_key_jwt`: PEM certificate of that key (gives `x5t#S256`).
    pub client_cert_file: Option<PathBuf>,
    /// `private_key_jwt`: a private JWK file with `kid` (the form of `AZURE_APP_JWK`).
    pub client_jwk_file: Option<PathBuf>,
    /// `private_key_jwt`: the private JWK itself, from the environment (`AZURE_APP_JWK`) only.
    pub client_jwk: Option<Secret>,
    /// `federated`: file holding the client assertion, re-read on each use.
    pub client_assertion_file: Option<PathBuf>,
    /// Each request to the IdP (discovery, JWKS, token).
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Accepted `aud` values; default: the client id and `api://<client id>`.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms; never taken from the token.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Tenants (`tid`) accepted when the issuer is a `{tenantid}` template; `["*"]` accepts any.
    pub allowed_tenants: Vec<String>,
    /// More issuers to accept (each may contain `{tenantid}`).
    pub additional_issuers: Vec<String>,
    /// The tenant id (GUID) app tokens (client credentials) are asked for when the token
    /// endpoint is a multi-tenant `common`/`organizations` one: an app token belongs to one
    /// tenant and there is no user token to name it. Usually the app's home tenant.
    pub client_credentials_tenant: Option<String>,
    /// Accept tokens that carry neither `scp` nor `roles` on routes of this provider (default
    /// `false`). Such a token is usually an app-only token of any app in the tenant (or in any
    /// tenant, with `allowed_tenants = ["*"]`) that asked for `api://<this app>/.default`
    /// without being granted a role; Microsoft.Identity.Web refuses it the same way (IDW10201)
    /// unless `AllowWebApiToBeAuthorizedByACL` is set. A route can override this.
    pub allow_unscoped_tokens: bool,
    /// Clients (`azp` in v2 tokens, `appid` in v1) whose tokens are accepted on this provider's
    /// routes; empty accepts any client. Routes can narrow it further with their own list.
    pub allowed_client_ids: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "duration_str")]
    pub leeway: Duration,
    /// Background JWKS refresh interval.
    #[serde(with = "duration_str")]
    pub jwks_refresh: Duration,
    /// At most one JWKS refetch per this interval for tokens with an unknown `kid`.
    #[serde(with = "duration_str")]
    pub jwks_unknown_kid_min_interval: Duration,
    /// Keep serving cached keys this long while the IdP fails.
    #[serde(with = "duration_str")]
    pub jwks_max_stale: Duration,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            name: "entra_id".into(),
            well_known_url: None,
            issuer: None,
            jwks_uri: None,
            token_endpoint: None,
            client_id: String::new(),
            client_auth: ClientAuthMethod::ClientSecretPost,
            client_secret: None,
            client_secret_file: None,
            client_key_file: None,
            client_cert_file: None,
            client_jwk_file: None,
            client_jwk: None,
            client_assertion_file: None,
            timeout: Duration::from_secs(10),
            audiences: Vec::new(),
            algorithms: vec![jsonwebtoken::Algorithm::RS256],
            allowed_tenants: Vec::new(),
            additional_issuers: Vec::new(),
            client_credentials_tenant: None,
            allow_unscoped_tokens: false,
            allowed_client_ids: Vec::new(),
            leeway: Duration::from_secs(60),
            jwks_refresh: Duration::from_secs(600),
            jwks_unknown_kid_min_interval: Duration::from_secs(30),
            jwks_max_stale: Duration::from_secs(24 * 3600),
        }
    }
}

impl ProviderConfig {
    /// The accepted audiences: the configured list, or the client id and `api://<client id>`.
    ///
    /// ```
    /// use tollgate::config::ProviderConfig;
    /// let mut p = ProviderConfig { client_id: "abc".into(), ..Default::default() };
    /// assert_eq!(p.effective_audiences(), ["abc", "api://abc"]);
    /// p.audiences = vec!["https://api.example".into()];
    /// assert_eq!(p.effective_audiences(), ["https://api.example"]);
    /// ```
    pub fn effective_audiences(&self) -> Vec<String> {
        if self.audiences.is_empty() {
            vec![self.client_id.clone(), format!("api://{}", self.client_id)]
        } else {
            self.audiences.clone()
        }
    }

    /// True when `name` designates this provider (`azuread` is accepted for `entra_id`).
    ///
    /// ```
    /// use tollgate::config::ProviderConfig;
    /// let entra = ProviderConfig::default(); // named `entra_id`
    /// assert!(entra.answers_to("entra_id") && entra.answers_to("azuread"));
    /// assert!(!entra.answers_to("idporten"));
    /// ```
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || (self.name == "entra_id" && name == "azuread")
    }
}

/// How tollgate authenticates to the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2).
///
/// Set with `client_auth = "client_secret_basic"` etc.; `AZURE_APP_JWK` without a secret selects
/// `private_key_jwt`, as in Texas:
///
/// ```
/// use tollgate::config::{ClientAuthMethod, Config, MapEnv};
/// let env = MapEnv::from([
///     ("AZURE_APP_CLIENT_ID", "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"),
///     ("AZURE_APP_WELL_KNOWN_URL", "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration"),
///     ("AZURE_APP_JWK", r#"{"kty":"RSA","kid":"k1"}"#),
/// ]);
/// let cfg = Config::from_toml_str("", &env)?;
/// assert_eq!(cfg.providers[0].client_auth, ClientAuthMethod::PrivateKeyJwt);
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// HTTP Basic with the form-encoded id and secret.
    ClientSecretBasic,
    /// A JWT signed with the app's private key.
    PrivateKeyJwt,
    /// A JWT issued by another party (workload identity), read from a file on each use.
    Federated,
}

/// `[[routes]]`: what the public listener does for a path prefix.
///
/// ```
/// use tollgate::config::{AuthMode, RouteConfig};
/// let route = RouteConfig { path: "/api".into(), scopes: vec!["access_as_user".into()], ..Default::default() };
/// assert_eq!(route.auth, AuthMode::Required); // the default
/// assert!(route.identity_headers && route.obo.is_none());
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Path prefix; the longest matching prefix wins.
    pub path: String,
    /// Provider name; optional when exactly one provider is configured.
    pub provider: Option<String>,
    /// Whether a bearer token is needed.
    pub auth: AuthMode,
    /// Any of these scopes (`scp`) is enough; empty means no scope check.
    pub scopes: Vec<String>,
    /// Any of these roles (`roles`) is enough; empty means no role check.
    pub roles: Vec<String>,
    /// Replace `Authorization` with an On-Behalf-Of token for this target.
    pub obo: Option<String>,
    /// Extra headers carrying OBO tokens for other targets: header name -> target.
    pub obo_headers: BTreeMap<String, String>,
    /// Add `X-Auth-*` identity headers.
    pub identity_headers: bool,
    /// Forward CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`,
    /// and no `Authorization`) without a token, so the app can answer them: browsers never
    /// send credentials on a preflight (Fetch standard, CORS-preflight request). Like
    /// oauth2-proxy's `skip_auth_preflight`.
    pub skip_auth_preflight: bool,
    /// Also take the token from an `access_token` query parameter (RFC 6750 §2.3), for
    /// WebSocket and EventSource clients that cannot set headers (SignalR sends it this way).
    /// tollgate takes it out of the forwarded URL (URLs end up in logs) and hands the app the
    /// same `Authorization: Bearer` header a header client would have sent.
    pub token_in_query: bool,
    /// A Conditional Access authentication context (`c1` ... `c99`) the token must carry in
    /// `acrs`. Without it the client gets `401` with an `insufficient_claims` challenge asking
    /// for it, so MSAL can step the user up (Entra's authentication-context guidance).
    pub auth_context: Option<String>,
    /// Overrides the provider's `allow_unscoped_tokens` for this route.
    pub allow_unscoped_tokens: Option<bool>,
    /// Clients (`azp`/`appid`) accepted on this route, on top of the provider's list; empty
    /// adds no restriction.
    pub allowed_client_ids: Vec<String>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            path: "/".into(),
            provider: None,
            auth: AuthMode::Required,
            scopes: Vec::new(),
            roles: Vec::new(),
            obo: None,
            obo_headers: BTreeMap::new(),
            identity_headers: true,
            skip_auth_preflight: false,
            token_in_query: false,
            auth_context: None,
            allow_unscoped_tokens: None,
            allowed_client_ids: Vec::new(),
        }
    }
}

/// Whether a route needs a bearer token.
///
/// ```
/// use tollgate::config::{AuthMode, Config, MapEnv};
/// let cfg = Config::from_toml_str("[[routes]]\npath = \"/healthz\"\nauth = \"none\"\n", &MapEnv::default())?;
/// assert_eq!(cfg.routes[0].auth, AuthMode::None);
/// // Scopes need a validated token.
/// let bad = "[[routes]]\npath = \"/x\"\nauth = \"none\"\nscopes = [\"a\"]\n";
/// assert!(Config::from_toml_str(bad, &MapEnv::default()).is_err());
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token is needed.
    Required,
    /// A token is validated when present; requests without one pass unauthenticated.
    Optional,
    /// No validation; the request is proxied as is (minus spoofed identity headers).
    None,
}

/// `[cache]`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::CacheConfig;
/// let cache = CacheConfig::default();
/// assert_eq!(cache.obo_capacity, 100_000);
/// assert_eq!(cache.expiry_margin, Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most cached exchanged tokens.
    pub obo_capacity: u64,
    /// Most cached validated inbound tokens.
    pub validation_capacity: u64,
    /// A cached token is never handed out closer than this to its `exp`.
    #[serde(with = "duration_str")]
    pub expiry_margin: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            obo_capacity: 100_000,
            validation_capacity: 100_000,
            expiry_margin: Duration::from_secs(120),
        }
    }
}

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

/// A secret value: never printed, logged or serialized in clear.
///
/// ```
/// use tollgate::config::Secret;
/// let secret = Secret::new("s3cret");
/// assert_eq!(format!("{secret:?}"), "[redacted]");
/// assert_eq!(serde_json::to_string(&secret).unwrap(), "\"[redacted]\"");
/// ```
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    ///
    /// ```
    /// # use tollgate::config::Secret;
    /// let secret = Secret::new(String::from("s3cret"));
    /// assert_eq!(secret, Secret::new("s3cret"));
    /// ```
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is sent to its destination.
    ///
    /// ```
    /// # use tollgate::config::Secret;
    /// assert_eq!(Secret::new("s3cret").expose(), "s3cret");
    /// ```
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The secret's bytes are overwritten when it is dropped, so a freed buffer (a core dump, a later
/// allocation) does not still hold it.
impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
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

/// Where environment variables come from: the process, or a map in tests.
///
/// ```
/// use tollgate::config::{Config, EnvSource};
/// struct Fixed;
/// impl EnvSource for Fixed {
///     fn vars(&self) -> Vec<(String, String)> {
///         vec![("TOLLGATE_LOG__LEVEL".into(), "debug".into())]
///     }
/// }
/// assert_eq!(Config::from_toml_str("", &Fixed)?.log.level, "debug");
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
pub trait EnvSource {
    /// All variables (name, value).
    ///
    /// ```
    /// use tollgate::config::{EnvSource, MapEnv};
    /// assert_eq!(MapEnv::from([("BIND_ADDRESS", "127.0.0.1:7164")]).vars().len(), 1);
    /// ```
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
///
/// Variables whose name or value is not UTF-8 are skipped.
///
/// ```
/// use tollgate::config::{EnvSource, ProcessEnv};
/// assert!(ProcessEnv.vars().len() <= std::env::vars_os().count());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }
}

/// A fixed set of variables, for tests and embedding.
///
/// ```
/// use tollgate::config::{Config, MapEnv};
/// let env = MapEnv::from([("TOLLGATE_UPSTREAM__URL", "http://127.0.0.1:8000")]);
/// let cfg = Config::from_toml_str("[upstream]\nurl = \"http://127.0.0.1:3000\"\n", &env)?;
/// assert_eq!(cfg.upstream.url.port(), Some(8000)); // the environment wins
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MapEnv(HashMap<String, String>);

impl<const N: usize> From<[(&str, &str); N]> for MapEnv {
    fn from(vars: [(&str, &str); N]) -> Self {
        Self(
            vars.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for MapEnv {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(vars: I) -> Self {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl EnvSource for MapEnv {
    fn vars(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Option names whose values stay strings even when they look like numbers or booleans.
const STRING_KEYS: &[&str] = &[
    "client_secret",
    "client_id",
    "key",
    "client_jwk",
    "name",
    "level",
];

/// The `<SECTION>__<KEY>` part of a `TOLLGATE_*` variable that is configuration.
///
/// Only names with a `__` level separator are: Kubernetes puts `TOLLGATE_PORT`,
/// `TOLLGATE_SERVICE_HOST`, `TOLLGATE_PORT_8080_TCP_ADDR` ... into every pod of a namespace that
/// has a Service named `tollgate` (service links), and those must not stop the start. A
/// misspelt key inside a section (`TOLLGATE_LOG__LEVLE`) still has the `__` and stays an error.
/// `TOLLGATE_CONFIG` names the file (read by the CLI); it is not an option.
fn env_option(name: &str) -> Option<&str> {
    name.strip_prefix("TOLLGATE_")
        .filter(|rest| rest.contains("__") && name != "TOLLGATE_CONFIG")
}

/// The `TOLLGATE_*` variables in `env` that are not configuration and were left alone
/// (Kubernetes service links such as `TOLLGATE_SERVICE_HOST`), for a debug line at start.
///
/// ```
/// use tollgate::config::{Config, MapEnv, ignored_env_names};
/// let env = MapEnv::from([
///     ("TOLLGATE_SERVICE_HOST", "10.0.0.7"),
///     ("TOLLGATE_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
///     ("TOLLGATE_LOG__LEVEL", "debug"),
/// ]);
/// assert_eq!(Config::from_toml_str("", &env)?.log.level, "debug");
/// assert_eq!(ignored_env_names(&env), ["TOLLGATE_PORT_8080_TCP", "TOLLGATE_SERVICE_HOST"]);
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
pub fn ignored_env_names(env: &dyn EnvSource) -> Vec<String> {
    let mut names: Vec<String> = env
        .vars()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| {
            name.starts_with("TOLLGATE_") && name != "TOLLGATE_CONFIG" && env_option(name).is_none()
        })
        .collect();
    names.sort();
    names
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
        refuse_inline_secrets(text)?;
        let mut figment = Figment::new().merge(Toml::string(text));
        let vars = env.vars();
        for (name, value) in &vars {
            let Some(rest) = env_option(name) else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let last = key.rsplit('.').next().unwrap_or(&key);
            let parsed = if STRING_KEYS.contains(&last) {
                figment::value::Value::from(value.clone())
            } else {
                value
                    .parse::<figment::value::Value>()
                    .unwrap_or_else(|never| match never {})
            };
            figment = figment.merge((key, parsed));
        }
        let mut cfg: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(redact_figment(&e)))?;
        cfg.apply_nais_env(&vars)?;
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

    fn apply_nais_env(&mut self, vars: &[(String, String)]) -> Result<(), ConfigError> {
        let get = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        if let Some(addr) = get("BIND_ADDRESS") {
            let addr = addr.parse().map_err(|_| {
                ConfigError::invalid("BIND_ADDRESS", "not a socket address (host:port)")
            })?;
            self.listen.api = Some(addr);
        }
        let client_id = get("AZURE_APP_CLIENT_ID");
        let idx = match self.providers.iter().position(|p| p.name == "entra_id") {
            Some(i) => i,
            None if client_id.is_some() => {
                self.providers.push(ProviderConfig::default());
                self.providers.len() - 1
            }
            None => return Ok(()),
        };
        let p = &mut self.providers[idx];
        if let Some(id) = client_id {
            p.client_id = id;
        }
        if let Some(secret) = get("AZURE_APP_CLIENT_SECRET") {
            p.client_secret = Some(Secret(secret));
        }
        if let Some(jwk) = get("AZURE_APP_JWK") {
            p.client_jwk = Some(Secret(jwk));
            if p.client_secret.is_none() && p.client_secret_file.is_none() {
                p.client_auth = ClientAuthMethod::PrivateKeyJwt;
            }
        }
        let url = |n: &str| -> Result<Option<Url>, ConfigError> {
            get(n)
                .map(|v| Url::parse(&v).map_err(|e| ConfigError::invalid(n, e.to_string())))
                .transpose()
        };
        if let Some(u) = url("AZURE_APP_WELL_KNOWN_URL")? {
            p.well_known_url = Some(u);
        }
        if let Some(u) = url("AZURE_OPENID_CONFIG_JWKS_URI")? {
            p.jwks_uri = Some(u);
        }
        if let Some(u) = url("AZURE_OPENID_CONFIG_TOKEN_ENDPOINT")? {
            p.token_endpoint = Some(u);
        }
        if let Some(iss) = get("AZURE_OPENID_CONFIG_ISSUER") {
            p.issuer = Some(iss);
        }
        Ok(())
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
        if self.providers.is_empty() && !self.routes.iter().all(|r| r.auth == AuthMode::None) {
            return Err(ConfigError::invalid(
                "providers",
                "at least one provider is needed by the routes",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = |k: &str| format!("providers[{i}].{k}");
            if p.name.is_empty() {
                return Err(ConfigError::invalid(at("name"), "must not be empty"));
            }
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::invalid(
                    at("name"),
                    format!("duplicate provider name {:?}", p.name),
                ));
            }
            if p.client_id.trim().is_empty() {
                return Err(ConfigError::invalid(
                    at("client_id"),
                    "missing (set it or AZURE_APP_CLIENT_ID)",
                ));
            }
            if p.well_known_url.is_none() && (p.issuer.is_none() || p.jwks_uri.is_none()) {
                return Err(ConfigError::invalid(
                    at("well_known_url"),
                    "missing: set well_known_url (AZURE_APP_WELL_KNOWN_URL) or both issuer and jwks_uri",
                ));
            }
            for (k, u) in [
                ("well_known_url", &p.well_known_url),
                ("jwks_uri", &p.jwks_uri),
                ("token_endpoint", &p.token_endpoint),
            ] {
                if let Some(u) = u {
                    check_idp_url(u).map_err(|m| ConfigError::invalid(at(k), m))?;
                }
            }
            if p.algorithms.is_empty() {
                return Err(ConfigError::invalid(
                    at("algorithms"),
                    "must list at least one algorithm",
                ));
            }
            if let Some(a) = p.algorithms.iter().find(|a| {
                matches!(
                    a,
                    jsonwebtoken::Algorithm::HS256
                        | jsonwebtoken::Algorithm::HS384
                        | jsonwebtoken::Algorithm::HS512
                )
            }) {
                return Err(ConfigError::invalid(
                    at("algorithms"),
                    format!(
                        "{a:?} is a shared-secret algorithm; only asymmetric ones are accepted"
                    ),
                ));
            }
            let templated = p
                .issuer
                .as_deref()
                .is_some_and(|i| i.contains("{tenantid}"))
                || p.additional_issuers
                    .iter()
                    .any(|i| i.contains("{tenantid}"));
            if templated && p.allowed_tenants.is_empty() {
                return Err(ConfigError::invalid(
                    at("allowed_tenants"),
                    "required with a {tenantid} issuer template: list the tenant ids, or [\"*\"] to accept any tenant",
                ));
            }
            if let Some(t) = &p.client_credentials_tenant
                && !is_guid(t)
            {
                return Err(ConfigError::invalid(
                    at("client_credentials_tenant"),
                    "must be a tenant id (GUID), not a domain or an alias",
                ));
            }
            if p.jwks_unknown_kid_min_interval.is_zero() {
                return Err(ConfigError::invalid(
                    at("jwks_unknown_kid_min_interval"),
                    "must be greater than 0",
                ));
            }
            if p.jwks_refresh.is_zero() {
                return Err(ConfigError::invalid(
                    at("jwks_refresh"),
                    "must be greater than 0",
                ));
            }
            let need = |ok: bool, k: &str, m: &str| {
                if ok {
                    Ok(())
                } else {
                    Err(ConfigError::invalid(at(k), m.to_owned()))
                }
            };
            match p.client_auth {
                ClientAuthMethod::ClientSecretPost | ClientAuthMethod::ClientSecretBasic => {}
                ClientAuthMethod::PrivateKeyJwt => {
                    let jwk = p.client_jwk.is_some() || p.client_jwk_file.is_some();
                    need(
                        jwk || p.client_key_file.is_some(),
                        "client_key_file",
                        "private_key_jwt needs client_key_file (+ client_cert_file), client_jwk_file or AZURE_APP_JWK",
                    )?;
                    need(
                        jwk || p.client_cert_file.is_some(),
                        "client_cert_file",
                        "client_key_file needs client_cert_file: the IdP finds the key by the certificate's thumbprint",
                    )?;
                }
                ClientAuthMethod::Federated => need(
                    p.client_assertion_file.is_some(),
                    "client_assertion_file",
                    "federated client authentication needs client_assertion_file",
                )?,
            }
        }
        for (i, p) in self.providers.iter().enumerate() {
            if p.allowed_client_ids.iter().any(|id| id.is_empty()) {
                return Err(ConfigError::invalid(
                    format!("providers[{i}].allowed_client_ids"),
                    "a client id is blank",
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let at = |k: &str| format!("routes[{i}].{k}");
            if !r.path.starts_with('/') {
                return Err(ConfigError::invalid(at("path"), "must start with '/'"));
            }
            if r.auth != AuthMode::None {
                self.route_provider(r)
                    .map_err(|m| ConfigError::invalid(at("provider"), m))?;
            }
            if r.auth == AuthMode::None
                && (!r.scopes.is_empty()
                    || !r.roles.is_empty()
                    || r.obo.is_some()
                    || !r.obo_headers.is_empty()
                    || r.auth_context.is_some()
                    || r.token_in_query
                    || r.allow_unscoped_tokens.is_some()
                    || !r.allowed_client_ids.is_empty())
            {
                return Err(ConfigError::invalid(
                    at("auth"),
                    "scopes, roles, auth_context, token_in_query, allow_unscoped_tokens, allowed_client_ids, obo and obo_headers need auth = \"required\"",
                ));
            }
            if r.allowed_client_ids.iter().any(|id| id.is_empty()) {
                return Err(ConfigError::invalid(
                    at("allowed_client_ids"),
                    "a client id is blank",
                ));
            }
            if let Some(id) = &r.auth_context
                && (id.is_empty()
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
            {
                return Err(ConfigError::invalid(
                    at("auth_context"),
                    "must be an authentication context id such as \"c1\"",
                ));
            }
            if r.auth == AuthMode::Optional && (r.obo.is_some() || !r.obo_headers.is_empty()) {
                return Err(ConfigError::invalid(
                    at("obo"),
                    "obo needs auth = \"required\"",
                ));
            }
            if let Some(why) = r.obo.as_deref().and_then(target_problem) {
                return Err(ConfigError::invalid(at("obo"), why));
            }
            for (name, target) in &r.obo_headers {
                let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
                    return Err(ConfigError::invalid(
                        at("obo_headers"),
                        format!("{name:?} is not a valid header name"),
                    ));
                };
                if let Some(why) = reserved_header(&header) {
                    return Err(ConfigError::invalid(
                        at("obo_headers"),
                        format!("{name:?} cannot carry a token: {why}"),
                    ));
                }
                if let Some(why) = target_problem(target) {
                    return Err(ConfigError::invalid(
                        at("obo_headers"),
                        format!("{name:?}: {why}"),
                    ));
                }
            }
        }
        let mut paths = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !paths.insert(r.path.as_str()) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].path"),
                    format!("duplicate route {:?}", r.path),
                ));
            }
        }
        if !matches!(self.upstream.url.scheme(), "http") || self.upstream.url.host().is_none() {
            return Err(ConfigError::invalid(
                "upstream.url",
                "must be an http://host:port URL",
            ));
        }
        self.listen.validate()?;
        if let Some(api) = self.listen.api {
            let keyed = self.api.key.is_some() || self.api.key_file.is_some();
            if !api.ip().is_loopback() && !keyed && !self.api.allow_insecure_api {
                return Err(ConfigError::invalid(
                    "listen.api",
                    format!(
                        "{api} is not a loopback address: set api.key_file, or allow_insecure_api = true"
                    ),
                ));
            }
        }
        if self.login.enabled {
            let provider = match &self.login.provider {
                Some(name) => self.provider_named(name).ok_or_else(|| {
                    ConfigError::invalid("login.provider", format!("no provider named {name:?}"))
                })?,
                None if self.providers.len() == 1 => &self.providers[0],
                None => {
                    return Err(ConfigError::invalid(
                        "login.provider",
                        "required when several providers are configured",
                    ));
                }
            };
            let _ = provider;
            match &self.login.public_url {
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
            if self.login.redirect_uris.is_empty() {
                return Err(ConfigError::invalid(
                    "login.redirect_uris",
                    "list at least one allowed redirect URI",
                ));
            }
            for (i, u) in self.login.redirect_uris.iter().enumerate() {
                Url::parse(u).map_err(|e| {
                    ConfigError::invalid(format!("login.redirect_uris[{i}]"), e.to_string())
                })?;
            }
            if self.login.logout_hint_max_age.is_zero() {
                return Err(ConfigError::invalid(
                    "login.logout_hint_max_age",
                    "must be greater than 0",
                ));
            }
            // Loopback is no boundary in a pod: every container shares it.
            let keyed = self.api.key.is_some() || self.api.key_file.is_some();
            if self.listen.api.is_some() && !keyed && !self.api.allow_unauthenticated_delegated {
                return Err(ConfigError::invalid(
                    "api.key_file",
                    "required when [login] is enabled: /api/v1/token/delegated hands out signed-in \
                     users' tokens to any process that reaches the API; set api.key_file (or \
                     TOLLGATE_API__KEY), or api.allow_unauthenticated_delegated = true to accept that",
                ));
            }
        }
        #[cfg(feature = "redis")]
        if self.store.kind == crate::store::StoreKind::Redis
            && let Some(why) = self
                .store
                .url
                .as_deref()
                .and_then(crate::store::redis_url_problem)
        {
            return Err(ConfigError::invalid("store.url", why));
        }
        // Refused here rather than replaced by `info` at start, unseen.
        #[cfg(feature = "server")]
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!("not a tracing filter (e.g. \"info\" or \"tollgate=debug,info\"): {e}"),
            ));
        }
        if self.cache.obo_capacity == 0 || self.cache.validation_capacity == 0 {
            return Err(ConfigError::invalid(
                "cache",
                "capacities must be greater than 0",
            ));
        }
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
        match &route.provider {
            Some(name) => self
                .provider_named(name)
                .ok_or_else(|| format!("no provider named {name:?}")),
            None if self.providers.len() == 1 => Ok(&self.providers[0]),
            None if self.providers.is_empty() => Err("no provider is configured".into()),
            None => Err("required when several providers are configured".into()),
        }
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
        self.providers.iter().find(|p| p.answers_to(name))
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
        toml_string(self)
    }
}

fn toml_string(cfg: &Config) -> String {
    // figment can serialize back through its Value; TOML needs tables after plain values, which
    // figment's Dict ordering does not guarantee, so print JSON-shaped TOML via serde_json.
    let mut value = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    redact_url_credentials(&mut value);
    let mut out = String::new();
    write_toml(&mut out, "", &value);
    out
}

/// Replaces the userinfo of every URL in `value` (`redis://:password@host`,
/// `http://user:password@app`) by `[redacted]`: `tollgate check` prints the configuration.
fn redact_url_credentials(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let Some(redacted) = without_userinfo(s) {
                *s = redacted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_url_credentials),
        Value::Object(map) => map.values_mut().for_each(redact_url_credentials),
        _ => {}
    }
}

/// `scheme://[redacted]@rest` for a URL with userinfo, else `None`.
fn without_userinfo(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(format!("{scheme}://[redacted]@{}", &rest[at + 1..]))
}

fn write_toml(out: &mut String, prefix: &str, value: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(map) = value else { return };
    for (k, v) in map {
        if !matches!(v, Value::Object(_)) && !is_table_array(v) && !v.is_null() {
            out.push_str(&format!("{} = {}\n", toml_key(k), toml_value(v)));
        }
    }
    for (k, v) in map {
        let path = if prefix.is_empty() {
            toml_key(k)
        } else {
            format!("{prefix}.{}", toml_key(k))
        };
        match v {
            Value::Object(_) => {
                out.push_str(&format!("\n[{path}]\n"));
                write_toml(out, &path, v);
            }
            Value::Array(items) if is_table_array(v) => {
                for item in items {
                    out.push_str(&format!("\n[[{path}]]\n"));
                    write_toml(out, &path, item);
                }
            }
            _ => {}
        }
    }
}

fn is_table_array(v: &serde_json::Value) -> bool {
    matches!(v, serde_json::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_object()))
}

fn toml_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::String(s) => toml_basic_string(s),
        other => other.to_string(),
    }
}

/// A key as TOML writes it: bare when it may be (TOML 1.0 §Keys: `A-Za-z0-9_-`), else quoted.
/// Map keys come from the file (`obo_headers` names may hold `.`, `!` or `#`), so a bare key
/// could nest, comment out or break what follows.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        toml_basic_string(k)
    }
}

/// A TOML basic string (TOML 1.0 §String): `"` and `\` escaped, and every control character
/// but tab, which JSON's escaping leaves raw for U+007F.
fn toml_basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push('\t'),
            c if c.is_control() && u32::from(c) < 0x80 => {
                out.push_str(&format!("\\u{:04X}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A GUID in its hyphenated 8-4-4-4-12 form (any case), as Entra writes application ids.
/// The fixed hop-by-hop fields (RFC 9110 §7.6.1, plus the non-standard `Keep-Alive` and
/// `Proxy-Connection` and the proxy authentication pair), which the proxy never forwards.
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Why a route's `obo_headers` cannot use this header name, if it cannot: the value would be
/// dropped on the way (hop-by-hop fields, RFC 9110 section 7.6.1), frame the message (`Host`,
/// `Content-Length`), or take the place of a header tollgate sets itself (`Authorization` is
/// what `obo` replaces; `X-Auth-*` are the identity headers).
fn reserved_header(name: &http::HeaderName) -> Option<&'static str> {
    let name = name.as_str();
    match name {
        _ if HOP_BY_HOP.contains(&name) => {
            Some("it is a hop-by-hop header (RFC 9110 section 7.6.1) and is not forwarded")
        }
        "host" | "content-length" => Some("it frames the request"),
        "authorization" => Some("use `obo` to replace Authorization"),
        _ if name.starts_with("x-auth-") => Some("X-Auth-* are tollgate's identity headers"),
        _ => None,
    }
}

/// Trims client ids and writes GUIDs in the lower case tokens carry them in (see `normalize`);
/// other ids (Keycloak, Auth0) are case-sensitive and kept as written.
pub(crate) fn normalize_client_ids(ids: &mut [String]) {
    for id in ids {
        let trimmed = id.trim();
        *id = if is_guid(trimmed) {
            trimmed.to_ascii_lowercase()
        } else {
            trimmed.to_owned()
        };
    }
}

/// Why `target` cannot be asked for, if it cannot: shared by each request and by config
/// validation, so a route's `obo` target that would fail every request fails `tollgate check`.
pub(crate) fn target_problem(target: &str) -> Option<&'static str> {
    if target.trim().is_empty() {
        return Some("target must not be empty");
    }
    // Byte scan for the usual ASCII target; only a non-ASCII one needs decoding (C1 controls).
    let control = if target.is_ascii() {
        target.bytes().any(|b| b.is_ascii_control())
    } else {
        target.chars().any(char::is_control)
    };
    control.then_some("target contains control characters")
}

pub(crate) fn is_guid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// IdP URLs must be https, except loopback hosts (the dev IdP, tests).
fn check_idp_url(u: &Url) -> Result<(), String> {
    match u.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(u) => Ok(()),
        "http" => Err(format!(
            "must be https (http is accepted only for loopback hosts), got host {:?}",
            u.host_str().unwrap_or("")
        )),
        other => Err(format!("unsupported scheme {other:?}")),
    }
}

/// True for `localhost`, 127.0.0.0/8 and `::1`.
///
/// ```
/// use tollgate::config::is_loopback_host;
/// assert!(is_loopback_host(&"http://127.0.0.2:9400/".parse().unwrap()));
/// assert!(is_loopback_host(&"http://[::1]/".parse().unwrap()));
/// assert!(!is_loopback_host(&"https://login.microsoftonline.com/".parse().unwrap()));
/// ```
pub fn is_loopback_host(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Secrets belong in files or the environment, never only in the config file.
fn refuse_inline_secrets(text: &str) -> Result<(), ConfigError> {
    let Ok(table) = text.parse::<toml::Table>() else {
        // Syntax errors are reported by figment with their position.
        return Ok(());
    };
    if let Some(toml::Value::Array(providers)) = table.get("providers") {
        for (i, p) in providers.iter().enumerate() {
            for key in ["client_secret", "client_jwk"] {
                if p.get(key).is_some() {
                    return Err(ConfigError::invalid(
                        format!("providers[{i}].{key}"),
                        format!(
                            "inline secrets are refused in the config file; use {key}_file or the environment"
                        ),
                    ));
                }
            }
        }
    }
    if let Some(api) = table.get("api")
        && api.get("key").is_some()
    {
        return Err(ConfigError::invalid(
            "api.key",
            "inline secrets are refused in the config file; use key_file or TOLLGATE_API__KEY",
        ));
    }
    Ok(())
}

/// figment errors quote the offending value; a value may be a secret, so keep only the
/// description and the key path.
fn redact_figment(e: &figment::Error) -> String {
    let mut parts = Vec::new();
    for err in e.clone() {
        let key = if err.path.is_empty() {
            String::from("config")
        } else {
            err.path.join(".")
        };
        let kind = match &err.kind {
            figment::error::Kind::InvalidType(_, expected) => {
                format!("invalid type: expected {expected}")
            }
            figment::error::Kind::InvalidValue(_, expected) => {
                format!("invalid value: expected {expected}")
            }
            other => other.to_string(),
        };
        parts.push(format!("{key}: {kind}"));
    }
    parts.join("; ")
}

/// Durations as human strings (`"90s"`, `"10m"`) in serde.
///
/// ```
/// use std::time::Duration;
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Retry {
///     #[serde(with = "tollgate::config::duration_str")]
///     every: Duration,
/// }
/// let retry: Retry = toml::from_str("every = \"90s\"").unwrap();
/// assert_eq!(retry.every, Duration::from_secs(90));
/// assert_eq!(toml::to_string(&retry).unwrap().trim(), "every = \"1m 30s\"");
/// ```
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses a humantime string.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tollgate::config::duration_str;
    /// let d = duration_str::deserialize(serde_json::json!("10m"))?;
    /// assert_eq!(d, Duration::from_secs(600));
    /// assert!(duration_str::deserialize(serde_json::json!("soon")).is_err());
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad duration {s:?}: {e} (use e.g. \"90s\", \"10m\")"
            ))
        })
    }

    /// Prints a humantime string.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tollgate::config::duration_str;
    /// let v = duration_str::serialize(&Duration::from_secs(3600), serde_json::value::Serializer)?;
    /// assert_eq!(v, "1h");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}
