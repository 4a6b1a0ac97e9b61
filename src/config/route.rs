//! `[[routes]]`: what the public listener does for each path prefix, and which headers a route
//! may put exchanged tokens in.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::provider::target_problem;
use super::{ConfigError, ProviderConfig};

/// `[[routes]]`: what the public listener does for a path prefix.
///
/// ```
/// use tollgate::config::{AuthMode, RouteConfig};
/// let route = RouteConfig { path: "/api".into(), scopes: vec!["access_as_user".into()], ..Default::default() };
/// assert_eq!(route.auth, AuthMode::Required); // the default
/// assert!(route.identity_headers.is_none() && route.obo.is_none()); // `[upstream]`'s applies
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
    /// Which identity headers the app gets (see [`IdentityHeaders`]); `None` takes
    /// `[upstream] identity_headers`.
    pub identity_headers: Option<IdentityHeaders>,
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
            identity_headers: None,
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
    /// A signed-in browser session (`[session]`) or a valid token. Without either, a browser
    /// navigation is sent to sign in and anything else gets `401`.
    Session,
}

/// `identity_headers` (a route's, or `[upstream]`'s for routes without one): the headers that
/// tell the app who called. Written `true` (as `"x-auth"`), `false` or `"easyauth"`.
///
/// ```
/// use tollgate::config::{Config, IdentityHeaders, MapEnv};
/// let toml = "[upstream]\nidentity_headers = \"easyauth\"\n\n[[routes]]\npath = \"/\"\nauth = \"none\"\nidentity_headers = true\n";
/// let cfg = Config::from_toml_str(toml, &MapEnv::default())?;
/// assert_eq!(cfg.upstream.identity_headers, IdentityHeaders::EasyAuth);
/// assert_eq!(cfg.routes[0].identity_headers, Some(IdentityHeaders::XAuth));
/// let bad = toml.replace("= true", "= \"yes\"");
/// let err = Config::from_toml_str(&bad, &MapEnv::default()).unwrap_err();
/// assert_eq!(err.to_string(), "routes[0].identity_headers: must be true, false, \"x-auth\" or \"easyauth\"");
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityHeaders {
    /// `false`: none.
    None,
    /// `true` or `"x-auth"`: `X-Auth-Subject`, `-Oid`, `-Tid`, `-Name`, `-Scopes`, `-Roles`.
    #[default]
    XAuth,
    /// `"easyauth"`: Azure App Service authentication's `X-MS-CLIENT-PRINCIPAL`, `-ID`, `-NAME`
    /// and `-IDP`, so an app leaving App Service reads its caller as before.
    EasyAuth,
}

/// What an `identity_headers` value may be, as its errors say.
const IDENTITY_HEADERS_VALUES: &str = "true, false, \"x-auth\" or \"easyauth\"";

impl<'de> Deserialize<'de> for IdentityHeaders {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(IdentityHeadersVisitor)
    }
}

impl Serialize for IdentityHeaders {
    // `true`/`false` as before the enum existed, so `tollgate check` prints existing
    // configurations as it did.
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => ser.serialize_bool(false),
            Self::XAuth => ser.serialize_bool(true),
            Self::EasyAuth => ser.serialize_str("easyauth"),
        }
    }
}

struct IdentityHeadersVisitor;

impl serde::de::Visitor<'_> for IdentityHeadersVisitor {
    type Value = IdentityHeaders;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(IDENTITY_HEADERS_VALUES)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<IdentityHeaders, E> {
        Ok(if v {
            IdentityHeaders::XAuth
        } else {
            IdentityHeaders::None
        })
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IdentityHeaders, E> {
        match v {
            "x-auth" => Ok(IdentityHeaders::XAuth),
            "easyauth" => Ok(IdentityHeaders::EasyAuth),
            _ => Err(E::invalid_value(
                serde::de::Unexpected::Other("a string"),
                &self,
            )),
        }
    }
}

/// Checks the `identity_headers` values before the configuration is extracted, so that a bad
/// one is reported under its option's name (`routes[1].identity_headers`) rather than figment's
/// path (`routes.1.identity_headers`).
pub(super) fn check_identity_headers(figment: &figment::Figment) -> Result<(), ConfigError> {
    let bad = |v: &figment::value::Value| IdentityHeaders::deserialize(v).is_err();
    if figment
        .find_value("upstream.identity_headers")
        .is_ok_and(|v| bad(&v))
    {
        return Err(ConfigError::invalid(
            "upstream.identity_headers",
            format!("must be {IDENTITY_HEADERS_VALUES}"),
        ));
    }
    if let Ok(figment::value::Value::Array(_, routes)) = figment.find_value("routes") {
        for (i, route) in routes.iter().enumerate() {
            if route.find_ref("identity_headers").is_some_and(bad) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].identity_headers"),
                    format!("must be {IDENTITY_HEADERS_VALUES}"),
                ));
            }
        }
    }
    Ok(())
}

/// Checks `[[routes]]`: each route's own options, then that no path is configured twice (the
/// order errors are reported in).
pub(super) fn check_routes(
    routes: &[RouteConfig],
    providers: &[ProviderConfig],
) -> Result<(), ConfigError> {
    for (i, r) in routes.iter().enumerate() {
        r.check(i, providers)?;
    }
    let mut paths = HashSet::new();
    for (i, r) in routes.iter().enumerate() {
        if !paths.insert(r.path.as_str()) {
            return Err(ConfigError::invalid(
                format!("routes[{i}].path"),
                format!("duplicate route {:?}", r.path),
            ));
        }
    }
    Ok(())
}

/// Routes with `auth = "session"` need `[session]` on, and use its provider (the session's user
/// must be one the route's exchanges and checks know).
pub(super) fn check_session_routes(
    routes: &[RouteConfig],
    session: &super::SessionConfig,
    providers: &[ProviderConfig],
) -> Result<(), ConfigError> {
    for (i, r) in routes.iter().enumerate() {
        if r.auth != AuthMode::Session {
            continue;
        }
        if !session.enabled {
            return Err(ConfigError::invalid(
                format!("routes[{i}].auth"),
                "\"session\" needs [session] enabled = true",
            ));
        }
        let route_provider = r.provider_in(providers).map(|p| p.name.as_str());
        let session_provider = session.provider_in(providers).map(|p| p.name.as_str());
        if route_provider.ok() != session_provider {
            return Err(ConfigError::invalid(
                format!("routes[{i}].provider"),
                "a session route must use the [session] provider",
            ));
        }
    }
    Ok(())
}

impl RouteConfig {
    /// Whether the route exchanges the inbound token (`obo` or `obo_headers`).
    pub(crate) fn exchanges(&self) -> bool {
        self.obo.is_some() || !self.obo_headers.is_empty()
    }

    /// The provider this route uses among `providers`: the one it names, else the only one.
    pub(super) fn provider_in<'a>(
        &self,
        providers: &'a [ProviderConfig],
    ) -> Result<&'a ProviderConfig, String> {
        match &self.provider {
            Some(name) => super::provider::named(providers, name)
                .ok_or_else(|| format!("no provider named {name:?}")),
            None if providers.len() == 1 => Ok(&providers[0]),
            None if providers.is_empty() => Err("no provider is configured".into()),
            None => Err("required when several providers are configured".into()),
        }
    }

    /// The options of the route at index `i` in `[[routes]]`; its provider must be among
    /// `providers` unless it needs no token.
    fn check(&self, i: usize, providers: &[ProviderConfig]) -> Result<(), ConfigError> {
        let at = |k: &str| format!("routes[{i}].{k}");
        if !self.path.starts_with('/') {
            return Err(ConfigError::invalid(at("path"), "must start with '/'"));
        }
        if self.auth != AuthMode::None {
            self.provider_in(providers)
                .map_err(|m| ConfigError::invalid(at("provider"), m))?;
        }
        if self.auth == AuthMode::None
            && (!self.scopes.is_empty()
                || !self.roles.is_empty()
                || self.exchanges()
                || self.auth_context.is_some()
                || self.token_in_query
                || self.allow_unscoped_tokens.is_some()
                || !self.allowed_client_ids.is_empty())
        {
            return Err(ConfigError::invalid(
                at("auth"),
                "scopes, roles, auth_context, token_in_query, allow_unscoped_tokens, allowed_client_ids, obo and obo_headers need auth = \"required\"",
            ));
        }
        if self.allowed_client_ids.iter().any(|id| id.is_empty()) {
            return Err(ConfigError::invalid(
                at("allowed_client_ids"),
                "a client id is blank",
            ));
        }
        if let Some(id) = &self.auth_context
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
        if self.auth == AuthMode::Optional && self.exchanges() {
            return Err(ConfigError::invalid(
                at("obo"),
                "obo needs auth = \"required\"",
            ));
        }
        if let Some(why) = self.obo.as_deref().and_then(target_problem) {
            return Err(ConfigError::invalid(at("obo"), why));
        }
        // A jwt_bearer grant (Maskinporten) makes app tokens: no user token is exchanged by it.
        if self.exchanges()
            && self
                .provider_in(providers)
                .is_ok_and(|p| p.grant == super::ProviderGrant::JwtBearer)
        {
            return Err(ConfigError::invalid(
                at("obo"),
                "the route's provider has grant = \"jwt_bearer\", which gives app tokens only; exchange user tokens through an entra_obo or token_exchange provider",
            ));
        }
        for (name, target) in &self.obo_headers {
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
        Ok(())
    }
}

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
/// what `obo` replaces; `X-Auth-*` and `X-MS-CLIENT-PRINCIPAL*` are the identity headers).
fn reserved_header(name: &http::HeaderName) -> Option<&'static str> {
    let name = name.as_str();
    match name {
        _ if HOP_BY_HOP.contains(&name) => {
            Some("it is a hop-by-hop header (RFC 9110 section 7.6.1) and is not forwarded")
        }
        "host" | "content-length" => Some("it frames the request"),
        "authorization" => Some("use `obo` to replace Authorization"),
        _ if name.starts_with("x-auth-") => Some("X-Auth-* are tollgate's identity headers"),
        _ if name.starts_with("x-ms-client-principal") => {
            Some("X-MS-CLIENT-PRINCIPAL* are tollgate's Easy Auth identity headers")
        }
        _ => None,
    }
}
