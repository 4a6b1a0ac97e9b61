//! `[[providers]]`: one OpenID Connect provider each, how tollgate authenticates to it, and the
//! client-id, tenant and URL rules they are checked with.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{ConfigError, Secret, duration_str};

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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// What the provider's tokens are exchanged with: `entra_obo` (On-Behalf-Of, the default),
    /// `introspect_only` (tokens are validated and introspected, never exchanged: ID-porten),
    /// `token_exchange` (RFC 8693: TokenX) or `jwt_bearer` (RFC 7523 grant: Maskinporten).
    pub grant: ProviderGrant,
    /// This app's client id (may be empty for `grant = "introspect_only"` with `audiences`).
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
    /// Client capabilities declared on every token request (On-Behalf-Of, client credentials,
    /// refresh) as `claims={"access_token":{"xms_cc":{"values":[...]}}}`. `["cp1"]` tells Entra
    /// that tollgate handles Continuous Access Evaluation claims challenges, so it issues
    /// long-lived CAE tokens that an upstream can revoke at once (Microsoft identity platform,
    /// "Continuous access evaluation" and "Claims challenges, claims requests and client
    /// capabilities").
    pub client_capabilities: Vec<String>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            name: "entra_id".into(),
            well_known_url: None,
            issuer: None,
            jwks_uri: None,
            token_endpoint: None,
            grant: ProviderGrant::EntraObo,
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
            client_capabilities: Vec::new(),
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

    /// True when `name` designates this provider (`azuread` is accepted for `entra_id`). Texas's
    /// other names (`tokenx`, `maskinporten`, `idporten`) are provider names themselves: the
    /// `TOKEN_X_*`, `MASKINPORTEN_*` and `IDPORTEN_*` families create providers so named.
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

/// What a provider's tokens are exchanged with (`grant`).
///
/// ```
/// use tollgate::config::{Config, MapEnv, ProviderGrant};
/// let toml = r#"
/// [[providers]]
/// name = "idporten"
/// grant = "introspect_only"
/// well_known_url = "https://idporten.no/.well-known/openid-configuration"
/// audiences = ["https://my-app.example"]
/// "#;
/// let cfg = Config::from_toml_str(toml, &MapEnv::default())?;
/// assert_eq!(cfg.providers[0].grant, ProviderGrant::IntrospectOnly);
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderGrant {
    /// Entra's On-Behalf-Of (RFC 7523 jwt-bearer with `requested_token_use=on_behalf_of`) for
    /// user tokens, client credentials for app tokens.
    #[default]
    EntraObo,
    /// Tokens are validated and introspected, never exchanged (ID-porten: the app receives
    /// them and nothing downstream needs another).
    IntrospectOnly,
    /// RFC 8693 token exchange for user tokens (NAIS TokenX, Keycloak, any RFC 8693 server):
    /// `subject_token` + `audience`, tollgate authenticating with `private_key_jwt`.
    TokenExchange,
    /// RFC 7523 §2.1 JWT bearer grant for app tokens (Maskinporten): an assertion signed with the
    /// client key carries `scope` (and optional `resource`, `authorization_details`).
    JwtBearer,
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

/// Checks `[[providers]]`: each one's name is set and unique, then its own options, and only
/// after all of them every `allowed_client_ids` list (the order errors are reported in).
pub(super) fn check_providers(providers: &[ProviderConfig]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            return Err(ConfigError::invalid(
                format!("providers[{i}].name"),
                "must not be empty",
            ));
        }
        if p.name.contains('#') {
            // `#` namespaces the store's session records (`{provider}#session`).
            return Err(ConfigError::invalid(
                format!("providers[{i}].name"),
                "must not contain '#'",
            ));
        }
        if !names.insert(p.name.as_str()) {
            return Err(ConfigError::invalid(
                format!("providers[{i}].name"),
                format!("duplicate provider name {:?}", p.name),
            ));
        }
        p.check(i)?;
    }
    for (i, p) in providers.iter().enumerate() {
        if p.allowed_client_ids.iter().any(|id| id.is_empty()) {
            return Err(ConfigError::invalid(
                format!("providers[{i}].allowed_client_ids"),
                "a client id is blank",
            ));
        }
    }
    Ok(())
}

/// The provider answering to `name` (aliases included).
pub(super) fn named<'a>(providers: &'a [ProviderConfig], name: &str) -> Option<&'a ProviderConfig> {
    providers.iter().find(|p| p.answers_to(name))
}

impl ProviderConfig {
    /// The options of the provider at index `i` in `[[providers]]`, its name aside.
    fn check(&self, i: usize) -> Result<(), ConfigError> {
        let at = |k: &str| format!("providers[{i}].{k}");
        if let Some(bad) = self
            .client_capabilities
            .iter()
            .find(|c| c.is_empty() || !c.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(ConfigError::invalid(
                at("client_capabilities"),
                format!("{bad:?} is not a capability name (letters and digits, e.g. \"cp1\")"),
            ));
        }
        if self.client_id.trim().is_empty() {
            if self.grant != ProviderGrant::IntrospectOnly {
                return Err(ConfigError::invalid(
                    at("client_id"),
                    "missing (set it, or AZURE_APP_CLIENT_ID / TOKEN_X_CLIENT_ID / MASKINPORTEN_CLIENT_ID)",
                ));
            }
            // Without a client id there is no default audience to check tokens against.
            if self.audiences.is_empty() {
                return Err(ConfigError::invalid(
                    at("audiences"),
                    "grant = \"introspect_only\" without a client_id needs audiences (IDPORTEN_AUDIENCE)",
                ));
            }
        }
        if self.well_known_url.is_none() && (self.issuer.is_none() || self.jwks_uri.is_none()) {
            return Err(ConfigError::invalid(
                at("well_known_url"),
                "missing: set well_known_url (AZURE_APP_WELL_KNOWN_URL) or both issuer and jwks_uri",
            ));
        }
        for (k, u) in [
            ("well_known_url", &self.well_known_url),
            ("jwks_uri", &self.jwks_uri),
            ("token_endpoint", &self.token_endpoint),
        ] {
            if let Some(u) = u {
                check_idp_url(u).map_err(|m| ConfigError::invalid(at(k), m))?;
            }
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                at("algorithms"),
                "must list at least one algorithm",
            ));
        }
        if let Some(a) = self.algorithms.iter().find(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            )
        }) {
            return Err(ConfigError::invalid(
                at("algorithms"),
                format!("{a:?} is a shared-secret algorithm; only asymmetric ones are accepted"),
            ));
        }
        let templated = self
            .issuer
            .as_deref()
            .is_some_and(|i| i.contains("{tenantid}"))
            || self
                .additional_issuers
                .iter()
                .any(|i| i.contains("{tenantid}"));
        if templated && self.allowed_tenants.is_empty() {
            return Err(ConfigError::invalid(
                at("allowed_tenants"),
                "required with a {tenantid} issuer template: list the tenant ids, or [\"*\"] to accept any tenant",
            ));
        }
        if let Some(t) = &self.client_credentials_tenant
            && !is_guid(t)
        {
            return Err(ConfigError::invalid(
                at("client_credentials_tenant"),
                "must be a tenant id (GUID), not a domain or an alias",
            ));
        }
        if self.jwks_unknown_kid_min_interval.is_zero() {
            return Err(ConfigError::invalid(
                at("jwks_unknown_kid_min_interval"),
                "must be greater than 0",
            ));
        }
        if self.jwks_refresh.is_zero() {
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
        match self.client_auth {
            ClientAuthMethod::ClientSecretPost | ClientAuthMethod::ClientSecretBasic => {}
            ClientAuthMethod::PrivateKeyJwt => {
                let jwk = self.client_jwk.is_some() || self.client_jwk_file.is_some();
                need(
                    jwk || self.client_key_file.is_some(),
                    "client_key_file",
                    "private_key_jwt needs client_key_file (+ client_cert_file), client_jwk_file, or AZURE_APP_JWK / TOKEN_X_PRIVATE_JWK / MASKINPORTEN_CLIENT_JWK",
                )?;
                need(
                    jwk || self.client_cert_file.is_some(),
                    "client_cert_file",
                    "client_key_file needs client_cert_file: the IdP finds the key by the certificate's thumbprint",
                )?;
            }
            ClientAuthMethod::Federated => need(
                self.client_assertion_file.is_some(),
                "client_assertion_file",
                "federated client authentication needs client_assertion_file",
            )?,
        }
        // Both grants sign with the client's own key: TokenX accepts only private_key_jwt client
        // authentication, and a jwt_bearer grant is an assertion signed with that key.
        let key_grant = match self.grant {
            ProviderGrant::TokenExchange => Some((
                "token_exchange",
                "RFC 8693 token exchange authenticates with private_key_jwt",
            )),
            ProviderGrant::JwtBearer => Some((
                "jwt_bearer",
                "the jwt_bearer grant is an assertion signed with the client key",
            )),
            ProviderGrant::EntraObo | ProviderGrant::IntrospectOnly => None,
        };
        if let Some((grant, why)) = key_grant {
            need(
                self.client_auth == ClientAuthMethod::PrivateKeyJwt,
                "client_auth",
                &format!(
                    "grant = \"{grant}\" needs client_auth = \"private_key_jwt\" and a private key (client_jwk_file, or the TOKEN_X_PRIVATE_JWK / MASKINPORTEN_CLIENT_JWK variable): {why}"
                ),
            )?;
        }
        Ok(())
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

/// A GUID in its hyphenated 8-4-4-4-12 form (any case), as Entra writes application ids.
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
