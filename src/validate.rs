//! Bearer token -> [`Claims`], and every refusal as an RFC 6750 §3 challenge.
//!
//! The checks follow RFC 8725 (JWT BCP) and Microsoft's multi-tenant rules (entra-reference §9):
//! the algorithm comes from configuration only (§3.1), the key is chosen by `kid` from the
//! provider's JWKS and must be of the algorithm's type, `exp`/`iss`/`aud` are required, `nbf` is
//! honoured with the configured leeway, a `{tenantid}` issuer template is filled with the token's
//! `tid` and the tenant checked against `allowed_tenants`, and ID tokens are refused as access
//! tokens (§3.12). A validated token is cached by `sha256(token)` until its `exp`, so a repeat
//! costs a hash and a lookup instead of an RSA verification; when the IdP withdraws a key from
//! its JWKS, every cached token is checked again on its next use.
//!
//! ```no_run
//! # async fn f(provider: std::sync::Arc<tollgate::provider::Provider>, token: &str) {
//! use tollgate::validate::Validator;
//! let validator = Validator::new(provider, 100_000);
//! match validator.validate(token).await {
//!     Ok(claims) => println!("hello {}", claims.subject()),
//!     Err(e) => println!("{} {}", e.status(), e.www_authenticate()),
//! }
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::config::is_guid;
use crate::provider::Provider;

/// The realm named in every `WWW-Authenticate` challenge.
///
/// ```
/// use tollgate::validate::{REALM, ValidationError};
/// assert_eq!(ValidationError::Missing.www_authenticate(), format!("Bearer realm=\"{REALM}\""));
/// ```
pub const REALM: &str = "tollgate";

/// Longest token accepted; Entra tokens are a few KiB, this leaves room for big group lists.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
/// # let provider = Provider::new(ProviderConfig {
/// #     client_id: "app".into(),
/// #     issuer: Some("https://login.example/v2.0".into()),
/// #     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
/// #     ..Default::default()
/// # }).unwrap();
/// # let validator = Validator::new(provider, 100);
/// use tollgate::validate::MAX_TOKEN_BYTES;
/// let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
/// let err = validator.validate(&huge).await.unwrap_err(); // refused before any parsing
/// assert_eq!(err.to_string(), "the token is too large");
/// # }
/// ```
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Header parameters that would let a token pick its own key (RFC 8725 §3.10 / RFC 7515
/// §4.1.2-4.1.5): never honoured, and a token carrying them is refused outright.
const FORBIDDEN_HEADER_PARAMS: &[&str] = &["jku", "jwk", "x5u", "x5c", "crit"];

/// The validated claims of an access token. Cheap to clone.
///
/// ```
/// use tollgate::Claims;
/// let map = serde_json::from_value(serde_json::json!({
///     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
///     "oid": "99999999-8888-7777-6666-555555555555",
///     "tid": "11111111-2222-3333-4444-555555555555",
///     "name": "Alice",
///     "scp": "access_as_user User.Read",
///     "exp": 1900000000,
/// }))?;
/// let claims = Claims::from_map("entra_id", map);
/// assert_eq!(claims.oid(), Some("99999999-8888-7777-6666-555555555555"));
/// assert_eq!(claims.name(), Some("Alice"));
/// assert_eq!(claims.scopes(), ["access_as_user", "User.Read"]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Claims(Arc<ClaimsInner>);

#[derive(Debug)]
struct ClaimsInner {
    map: Map<String, Value>,
    scopes: Vec<String>,
    roles: Vec<String>,
    exp: u64,
    provider: String,
    /// `sha256(token)`, set by the validator that produced these claims.
    token_digest: std::sync::OnceLock<[u8; 32]>,
    /// The proxy's `X-Auth-*` header values, built at the first request that needs them.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    identity_headers: std::sync::OnceLock<Vec<(http::HeaderName, http::HeaderValue)>>,
    /// The token API's serialised `/introspect` answer, built at the first introspection.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    introspection: std::sync::OnceLock<bytes::Bytes>,
}

impl Claims {
    /// Builds claims from a decoded JSON object (used by the validator and by tests).
    ///
    /// ```
    /// use serde_json::{Map, json};
    /// use tollgate::Claims;
    /// let mut map = Map::new();
    /// map.insert("sub".into(), json!("user-1"));
    /// map.insert("roles".into(), json!("Reports.Read")); // a single role as a string is accepted
    /// let claims = Claims::from_map("idporten", map);
    /// assert_eq!((claims.subject(), claims.provider()), ("user-1", "idporten"));
    /// assert_eq!(claims.roles(), ["Reports.Read"]);
    /// ```
    pub fn from_map(provider: &str, map: Map<String, Value>) -> Self {
        let scopes = match map.get("scp").or_else(|| map.get("scope")) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let roles = match map.get("roles") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let exp = map.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Self(Arc::new(ClaimsInner {
            map,
            scopes,
            roles,
            exp,
            provider: provider.to_owned(),
            token_digest: std::sync::OnceLock::new(),
            identity_headers: std::sync::OnceLock::new(),
            introspection: std::sync::OnceLock::new(),
        }))
    }

    /// `sha256` of the token these claims were validated from, when a [`Validator`] made them.
    pub(crate) fn token_digest(&self) -> Option<&[u8; 32]> {
        self.0.token_digest.get()
    }

    /// The identity header values, built by `init` once and kept with these claims: a token
    /// validated from the cache then costs no formatting per request.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn identity_headers_with(
        &self,
        init: impl FnOnce(&Claims) -> Vec<(http::HeaderName, http::HeaderValue)>,
    ) -> &[(http::HeaderName, http::HeaderValue)] {
        self.0.identity_headers.get_or_init(|| init(self))
    }

    /// The serialised introspection answer, built by `init` once and kept with these claims.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn introspection_with(
        &self,
        init: impl FnOnce(&Claims) -> bytes::Bytes,
    ) -> &bytes::Bytes {
        self.0.introspection.get_or_init(|| init(self))
    }

    /// `sub`.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.subject(), "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ");
    /// ```
    pub fn subject(&self) -> &str {
        self.str("sub").unwrap_or("")
    }

    /// `oid` (Entra object id), when present.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.oid(), Some("99999999-8888-7777-6666-555555555555"));
    /// ```
    pub fn oid(&self) -> Option<&str> {
        self.str("oid")
    }

    /// `tid` (Entra tenant id), when present.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.tid(), Some("11111111-2222-3333-4444-555555555555"));
    /// ```
    pub fn tid(&self) -> Option<&str> {
        self.str("tid")
    }

    /// `name`, when present.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.name(), Some("Alice"));
    /// ```
    pub fn name(&self) -> Option<&str> {
        self.str("name")
    }

    /// `upn`, else `preferred_username`.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.username(), Some("alice@contoso.example")); // no `upn` in this token
    /// ```
    pub fn username(&self) -> Option<&str> {
        self.str("upn").or_else(|| self.str("preferred_username"))
    }

    /// `iss`.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert!(claims.issuer().starts_with("https://login.microsoftonline.com/"));
    /// ```
    pub fn issuer(&self) -> &str {
        self.str("iss").unwrap_or("")
    }

    /// Delegated scopes (`scp`, space separated; or `scope`).
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.scopes(), ["access_as_user", "User.Read"]);
    /// ```
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// App roles (`roles`).
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.roles(), ["Reports.Read"]);
    /// ```
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// `exp`, seconds since the epoch.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.expires_at(), 1900000000);
    /// ```
    pub fn expires_at(&self) -> u64 {
        self.0.exp
    }

    /// The name of the provider that issued the token.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.provider(), "entra_id");
    /// ```
    pub fn provider(&self) -> &str {
        &self.0.provider
    }

    /// Any claim.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.get("ver").and_then(|v| v.as_str()), Some("2.0"));
    /// assert!(claims.get("groups").is_none());
    /// ```
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.map.get(name)
    }

    /// All claims, as in the token.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert!(claims.as_map().contains_key("scp"));
    /// let json = serde_json::to_string(claims.as_map()).unwrap();
    /// assert!(json.contains(r#""name":"Alice""#));
    /// ```
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0.map
    }

    /// True for an app-only (client credentials) token: `idtyp: app`, or no `scp` with `sub == oid`.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert!(!claims.is_app_only()); // a user's delegated token
    /// let map = serde_json::from_value(serde_json::json!({"sub": "app-oid", "oid": "app-oid", "roles": ["Jobs.Run"]})).unwrap();
    /// assert!(tollgate::Claims::from_map("entra_id", map).is_app_only());
    /// ```
    pub fn is_app_only(&self) -> bool {
        self.str("idtyp") == Some("app")
            || (self.0.scopes.is_empty()
                && self.str("sub").is_some()
                && self.str("sub") == self.str("oid"))
    }

    /// Checks route requirements: any one of `scopes` (when non-empty) and any one of `roles`
    /// (when non-empty).
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// let any_of = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    /// assert!(claims.check(&any_of(&["Files.Read", "access_as_user"]), &[]).is_ok());
    /// let err = claims.check(&[], &any_of(&["Reports.Admin"])).unwrap_err();
    /// assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
    /// ```
    pub fn check(&self, scopes: &[String], roles: &[String]) -> Result<(), ValidationError> {
        if !scopes.is_empty() && !scopes.iter().any(|s| self.0.scopes.contains(s)) {
            return Err(ValidationError::InsufficientScope {
                scope: scopes.join(" "),
            });
        }
        if !roles.is_empty() && !roles.iter().any(|r| self.0.roles.contains(r)) {
            return Err(ValidationError::InsufficientScope {
                scope: roles.join(" "),
            });
        }
        Ok(())
    }

    /// The client the token was issued to: `azp` (v2 tokens) or `appid` (v1).
    ///
    /// ```
    /// let map = serde_json::from_value(serde_json::json!({"sub": "s", "appid": "cccccccc-3333-4444-5555-dddddddddddd"})).unwrap();
    /// let claims = tollgate::Claims::from_map("entra_id", map);
    /// assert_eq!(claims.client_id(), Some("cccccccc-3333-4444-5555-dddddddddddd"));
    /// ```
    pub fn client_id(&self) -> Option<&str> {
        self.str("azp").or_else(|| self.str("appid"))
    }

    /// The checks that come with a provider's and a route's (or layer's) access settings, after
    /// [`check`](Self::check): a token with neither `scp` nor `roles` is refused unless
    /// `allow_unscoped` (Microsoft.Identity.Web's IDW10201), and the token's client must be in
    /// each non-empty allow-list.
    pub(crate) fn check_access(
        &self,
        allow_unscoped: bool,
        client_lists: [&[String]; 2],
    ) -> Result<(), ValidationError> {
        if !allow_unscoped && self.0.scopes.is_empty() && self.0.roles.is_empty() {
            return Err(ValidationError::InsufficientScope {
                scope: String::new(),
            });
        }
        for allowed in client_lists {
            if !allowed.is_empty()
                && !self
                    .client_id()
                    .is_some_and(|id| allowed.iter().any(|a| a == id))
            {
                return Err(ValidationError::InvalidToken(
                    "the token was issued to a client that is not allowed here".into(),
                ));
            }
        }
        Ok(())
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.0.map.get(name).and_then(Value::as_str)
    }
}

/// Why a request was not authenticated or not authorised. Messages never contain the token.
///
/// ```
/// use http::StatusCode;
/// use tollgate::validate::ValidationError;
/// let expired = ValidationError::InvalidToken("the token has expired".into());
/// assert_eq!((expired.status(), expired.code()), (StatusCode::UNAUTHORIZED, "invalid_token"));
/// assert_eq!(expired.to_string(), "the token has expired");
/// assert_eq!(ValidationError::KeysUnavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// No credentials: challenge without an error code (RFC 6750 §3.1).
    #[error("no bearer token")]
    Missing,
    /// `Authorization` present but not a single well-formed `Bearer` credential.
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// The token is not acceptable.
    #[error("{0}")]
    InvalidToken(String),
    /// The token is valid but lacks a required scope or role.
    #[error("the token lacks a required scope or role")]
    InsufficientScope {
        /// The scopes (or roles), any of which would do.
        scope: String,
    },
    /// Keys are not loaded (the IdP has not been reachable since start).
    #[error("signing keys are not available yet")]
    KeysUnavailable,
}

impl ValidationError {
    /// The HTTP status for this error (RFC 6750 §3.1).
    ///
    /// ```
    /// use http::StatusCode;
    /// use tollgate::validate::ValidationError;
    /// assert_eq!(ValidationError::Missing.status(), StatusCode::UNAUTHORIZED);
    /// assert_eq!(ValidationError::InvalidRequest("two Authorization headers").status(), StatusCode::BAD_REQUEST);
    /// assert_eq!(ValidationError::InsufficientScope { scope: "a".into() }.status(), StatusCode::FORBIDDEN);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The OAuth error code for the JSON body.
    ///
    /// ```
    /// use tollgate::validate::ValidationError;
    /// assert_eq!(ValidationError::InsufficientScope { scope: "a".into() }.code(), "insufficient_scope");
    /// assert_eq!(ValidationError::KeysUnavailable.code(), "temporarily_unavailable");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "unauthorized",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(_) => "invalid_token",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::KeysUnavailable => "temporarily_unavailable",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3; auth-params as quoted-strings per RFC 9110 §11.4).
    ///
    /// ```
    /// use tollgate::validate::ValidationError;
    /// let err = ValidationError::InsufficientScope { scope: "Files.Read Files.Write".into() };
    /// assert_eq!(
    ///     err.www_authenticate(),
    ///     "Bearer realm=\"tollgate\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope or role\", scope=\"Files.Read Files.Write\""
    /// );
    /// ```
    pub fn www_authenticate(&self) -> String {
        match self {
            Self::Missing | Self::KeysUnavailable => format!("Bearer realm=\"{REALM}\""),
            // A token without any scope or role: nothing to name that would do.
            Self::InsufficientScope { scope } if scope.is_empty() => format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\"",
                quote_safe(&self.to_string())
            ),
            Self::InsufficientScope { scope } => format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                quote_safe(&self.to_string()),
                quote_safe(scope)
            ),
            other => format!(
                "Bearer realm=\"{REALM}\", error=\"{}\", error_description=\"{}\"",
                other.code(),
                quote_safe(&other.to_string())
            ),
        }
    }
}

impl ValidationError {
    /// The whole answer: status, `WWW-Authenticate` and a JSON body `{error, error_description}`.
    /// Used by the proxy, the Tower layer and the axum extractors alike.
    ///
    /// ```
    /// use tollgate::validate::ValidationError;
    /// let response: http::Response<String> = ValidationError::Missing.to_response();
    /// assert_eq!(response.status(), 401);
    /// assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    /// assert_eq!(response.body(), r#"{"error":"unauthorized","error_description":"no bearer token"}"#);
    /// ```
    pub fn to_response<B: From<String>>(&self) -> http::Response<B> {
        refusal(
            self.status(),
            self.code(),
            &self.to_string(),
            &self.www_authenticate(),
        )
    }
}

/// `401` with a claims challenge (entra-reference §6.3): `error="insufficient_claims"`, the
/// claims request `claims_json` in standard base64 and, when known, the `authorization_uri` to
/// send the user to, so the client (MSAL) can get a token that satisfies it.
pub(crate) fn claims_challenge<B: From<String>>(
    claims_json: &str,
    authorization_uri: Option<&str>,
    description: &str,
) -> http::Response<B> {
    use base64::Engine;
    let claims = base64::engine::general_purpose::STANDARD.encode(claims_json);
    let mut challenge = format!("Bearer realm=\"{REALM}\"");
    if let Some(uri) = authorization_uri {
        challenge.push_str(&format!(", authorization_uri=\"{}\"", quote_safe(uri)));
    }
    challenge.push_str(&format!(
        ", error=\"insufficient_claims\", claims=\"{claims}\""
    ));
    let mut resp = refusal(
        StatusCode::UNAUTHORIZED,
        "insufficient_claims",
        description,
        &challenge,
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// A refusal: `status`, the `WWW-Authenticate` challenge and the JSON body
/// `{error, error_description}`.
fn refusal<B: From<String>>(
    status: StatusCode,
    code: &str,
    description: &str,
    challenge: &str,
) -> http::Response<B> {
    let body = serde_json::json!({"error": code, "error_description": description}).to_string();
    let mut resp = http::Response::new(B::from(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(challenge) {
        headers.insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Whether the token's `acrs` holds the Entra authentication context `wanted` (`c1`).
pub(crate) fn has_auth_context(claims: &Claims, wanted: &str) -> bool {
    claims
        .get("acrs")
        .and_then(Value::as_array)
        .is_some_and(|acrs| acrs.iter().any(|a| a.as_str() == Some(wanted)))
}

/// The claims challenge asking for exactly the authentication context `wanted`:
/// `{"access_token":{"acrs":{"essential":true,"value":"c1"}}}`.
pub(crate) fn auth_context_challenge<B: From<String>>(
    wanted: &str,
    authorization_uri: Option<&str>,
) -> http::Response<B> {
    let request =
        serde_json::json!({"access_token": {"acrs": {"essential": true, "value": wanted}}});
    claims_challenge(
        &request.to_string(),
        authorization_uri,
        "this needs a token for the authentication context it names (step-up authentication)",
    )
}

/// RFC 6750 §3: error_description and scope values exclude `"` and `\` (and controls).
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// Extracts the token from an `Authorization` header value (RFC 6750 §2.1: scheme
/// case-insensitive, one space, token68).
///
/// Another scheme (`Basic`, `Negotiate`) is no bearer credential at all, `Ok(None)`: RFC 6750
/// §3.1 answers a request "attempted using an unsupported authentication method" like one
/// without credentials, with a challenge and no error code. A `Bearer` credential without a
/// token, or two `Authorization` headers, is malformed (`invalid_request`).
///
/// ```
/// use http::HeaderMap;
/// use tollgate::validate::{ValidationError, bearer_token};
/// let mut headers = HeaderMap::new();
/// assert_eq!(bearer_token(&headers), Ok(None));
/// headers.insert("authorization", "bearer eyJ0eXAi.eyJhdWQi.c2ln".parse().unwrap());
/// assert_eq!(bearer_token(&headers), Ok(Some("eyJ0eXAi.eyJhdWQi.c2ln")));
/// headers.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
/// assert_eq!(bearer_token(&headers), Ok(None));
/// headers.insert("authorization", "Bearer".parse().unwrap());
/// assert!(matches!(bearer_token(&headers), Err(ValidationError::InvalidRequest(_))));
/// ```
pub fn bearer_token(headers: &http::HeaderMap) -> Result<Option<&str>, ValidationError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ValidationError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| ValidationError::InvalidRequest("Authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ValidationError::InvalidRequest(
            "the Bearer credential has no token",
        ));
    }
    if !is_token68(token.as_bytes()) {
        return Err(ValidationError::InvalidToken(
            "the token is not a well-formed bearer token".into(),
        ));
    }
    Ok(Some(token))
}

/// A bearer token sent in the request.
pub(crate) enum SentToken<'a> {
    /// In `Authorization` (RFC 6750 §2.1).
    Header(&'a str),
    /// As the `access_token` query parameter (RFC 6750 §2.3), decoded.
    Query(String),
}

impl SentToken<'_> {
    #[cfg(feature = "server")]
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Header(t) => t,
            Self::Query(t) => t,
        }
    }

    /// The token as an owned string; a query token is already one.
    pub(crate) fn into_string(self) -> String {
        match self {
            Self::Header(t) => t.to_owned(),
            Self::Query(t) => t,
        }
    }
}

/// The request's bearer token: from `Authorization`, or where `query_allowed` also from the
/// query. RFC 6750 §2: a client MUST NOT use more than one method, so both is `invalid_request`.
pub(crate) fn sent_token<'a>(
    headers: &'a http::HeaderMap,
    uri: &http::Uri,
    query_allowed: bool,
) -> Result<Option<SentToken<'a>>, ValidationError> {
    let header = bearer_token(headers)?;
    if !query_allowed {
        return Ok(header.map(SentToken::Header));
    }
    match (header, query_token(uri)?) {
        (Some(_), Some(_)) => Err(ValidationError::InvalidRequest(
            "the token is both in the Authorization header and in the query",
        )),
        (Some(t), None) => Ok(Some(SentToken::Header(t))),
        (None, t) => Ok(t.map(SentToken::Query)),
    }
}

/// The `access_token` query parameter (RFC 6750 §2.3), decoded: `None` when there is none.
fn query_token(uri: &http::Uri) -> Result<Option<String>, ValidationError> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let mut found = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name == QUERY_TOKEN {
            if found.is_some() {
                return Err(ValidationError::InvalidRequest(
                    "more than one access_token query parameter",
                ));
            }
            found = Some(value.into_owned());
        }
    }
    match found {
        Some(t) if t.is_empty() => Err(ValidationError::InvalidRequest(
            "the access_token query parameter is empty",
        )),
        Some(t) if !is_token68(t.as_bytes()) => Err(ValidationError::InvalidToken(
            "the token is not a well-formed bearer token".into(),
        )),
        found => Ok(found),
    }
}

/// The query parameter RFC 6750 §2.3 names for a bearer token.
pub(crate) const QUERY_TOKEN: &str = "access_token";

/// True when every byte is a token68 character (RFC 7235 §2.1): ALPHA / DIGIT / "-" / "." /
/// "_" / "~" / "+" / "/" / "=". This runs over every byte of every token on every request, so it
/// is written without early exits or table lookups, which lets the compiler vectorise it.
pub(crate) fn is_token68(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        let lower = b | 0x20;
        ok & (lower.is_ascii_lowercase()
            | b.is_ascii_digit()
            | (b == b'-')
            | (b == b'.')
            | (b == b'_')
            | (b == b'~')
            | (b == b'+')
            | (b == b'/')
            | (b == b'='))
    })
}

/// Validates access tokens issued by one provider.
///
/// ```
/// # #[cfg(feature = "dev-idp")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
/// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
/// # use tollgate::devidp::{ALICE, ALICE_UPN, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
/// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
/// use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
/// let provider = Provider::new(ProviderConfig {
///     client_id: TOLLGATE_CLIENT_ID.into(),
///     well_known_url: Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?),
///     ..Default::default()
/// })?;
/// provider.refresh().await?;
/// let validator = Validator::new(provider, 100_000);
/// let claims = validator.validate(&token).await?;
/// assert_eq!(claims.username(), Some(ALICE_UPN));
/// # idp.shutdown().await;
/// # Ok(()) }
/// # #[cfg(not(feature = "dev-idp"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct Validator {
    provider: Arc<Provider>,
    audiences: Arc<Vec<String>>,
    /// Validated tokens by `sha256(token)`, each with the provider's key epoch it was checked
    /// under: an entry from before a key was withdrawn is validated again.
    cache: moka::sync::Cache<[u8; 32], (Claims, u64)>,
    /// `tollgate_validations_total{result="cached"}`, registered at the first hit (after the
    /// recorder is installed) so the hot path skips the registry's label lookup.
    cached_hits: Arc<std::sync::OnceLock<metrics::Counter>>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("provider", &self.provider.name())
            .finish()
    }
}

struct UntilExp;

impl moka::Expiry<[u8; 32], (Claims, u64)> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        (claims, _): &(Claims, u64),
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            claims.expires_at().saturating_sub(now()),
        ))
    }
}

impl Validator {
    /// A validator for `provider`'s tokens caching up to `cache_capacity` validated tokens.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tollgate::{config::ProviderConfig, provider::Provider, validate::{ValidationError, Validator}};
    /// let provider = Provider::new(ProviderConfig {
    ///     client_id: "app".into(),
    ///     issuer: Some("https://login.example/v2.0".into()),
    ///     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
    ///     ..Default::default()
    /// }).unwrap();
    /// let validator = Validator::new(provider, 10_000);
    /// let err = validator.validate("not-a-jwt").await.unwrap_err(); // no key needed to refuse this
    /// assert_eq!(err, ValidationError::InvalidToken("the token is not a well-formed JWT".into()));
    /// # }
    /// ```
    pub fn new(provider: Arc<Provider>, cache_capacity: u64) -> Self {
        let audiences = Arc::new(provider.config().effective_audiences());
        let cache = moka::sync::Cache::builder()
            .max_capacity(cache_capacity)
            .expire_after(UntilExp)
            .build();
        Self {
            provider,
            audiences,
            cache,
            cached_hits: Arc::default(),
        }
    }

    /// The provider this validator trusts.
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
    /// #     ..Default::default()
    /// # }).unwrap();
    /// # let validator = Validator::new(provider, 100);
    /// assert_eq!(validator.provider().config().client_id, "app");
    /// ```
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Validates `token`, from the cache when it was validated before and has not expired.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let well_known_url = Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?);
    /// # let provider = Provider::new(ProviderConfig { client_id: TOLLGATE_CLIENT_ID.into(), well_known_url, ..Default::default() })?;
    /// # provider.refresh().await?;
    /// # let validator = Validator::new(provider, 100);
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// let claims = validator.validate(&token).await?;
    /// assert!(claims.scopes().iter().any(|s| s == "access_as_user"));
    /// let again = validator.validate(&token).await?; // a hash and a lookup, no RSA
    /// assert_eq!(again.subject(), claims.subject());
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn validate(&self, token: &str) -> Result<Claims, ValidationError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(self.refuse("oversized", "the token is too large"));
        }
        let digest = sha256(token.as_bytes());
        // Read before validating: a key withdrawn while this token is checked leaves the new
        // entry under the older epoch, so the next request checks it again.
        let epoch = self.provider.key_epoch();
        if let Some((claims, checked_under)) = self.cache.get(&digest)
            && checked_under == epoch
            && claims.expires_at() > now()
        {
            self.cached_hits
                .get_or_init(|| metrics::counter!("tollgate_validations_total", "provider" => self.provider.name().to_owned(), "result" => "cached"))
                .increment(1);
            return Ok(claims);
        }
        let result = self.validate_uncached(token).await;
        let label = match &result {
            Ok(_) => "valid",
            Err(ValidationError::KeysUnavailable) => "keys_unavailable",
            Err(_) => "invalid",
        };
        metrics::counter!("tollgate_validations_total", "provider" => self.provider.name().to_owned(), "result" => label)
            .increment(1);
        let claims = result?;
        let _ = claims.0.token_digest.set(digest);
        self.cache.insert(digest, (claims.clone(), epoch));
        Ok(claims)
    }

    /// Validates without reading or filling the cache (benchmarks, first sight).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
    /// #     ..Default::default()
    /// # }).unwrap();
    /// # let validator = Validator::new(provider, 100);
    /// // The algorithm comes from the configuration (RS256), never from the token.
    /// let hs256 = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln";
    /// let err = validator.validate_uncached(hs256).await.unwrap_err();
    /// assert_eq!(err.to_string(), "algorithm HS256 is not accepted");
    /// # }
    /// ```
    pub async fn validate_uncached(&self, token: &str) -> Result<Claims, ValidationError> {
        let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the token is too large"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => {
                invalid("the token header names an unsupported algorithm or is not valid JSON")
            }
            _ => invalid("the token is not a well-formed JWT"),
        })?;
        check_header(&header)?;
        let config = self.provider.config();
        if !config.algorithms.contains(&header.alg) {
            return Err(ValidationError::InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("the token header has no kid"))?;
        let Some(key) = self.provider.key(kid).await else {
            if self.provider.key_set().is_empty() {
                return Err(ValidationError::KeysUnavailable);
            }
            return Err(invalid("the token is signed by an unknown key"));
        };
        // Keys older than `jwks_max_stale` (the IdP unreachable that long) no longer vouch for
        // anything, even before the next refresh attempt drops them.
        if !self.provider.is_ready() {
            return Err(ValidationError::KeysUnavailable);
        }
        if !key.allows(header.alg) {
            return Err(invalid(
                "the signing key does not match the token's algorithm",
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_audience(&self.audiences);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => invalid("the token has expired"),
                    K::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
                    K::InvalidAudience => invalid("the token is not meant for this audience"),
                    K::MissingRequiredClaim(c) => {
                        ValidationError::InvalidToken(format!("the token has no {c} claim"))
                    }
                    K::InvalidSignature => invalid("the token signature is invalid"),
                    K::InvalidAlgorithm => invalid("the token algorithm does not match the key"),
                    K::Base64(_) | K::Json(_) | K::Utf8(_) => {
                        invalid("the token is not a well-formed JWT")
                    }
                    _ => invalid("the token could not be verified"),
                }
            })?;
        let claims = data.claims;
        self.check_issuer(&claims, key.issuer.as_deref())?;
        refuse_id_tokens(header.typ.as_deref(), &claims)?;
        Ok(Claims::from_map(self.provider.name(), claims))
    }

    /// Validates an ID token from this provider for `client_id` (OIDC Core §3.1.3.7): signature,
    /// issuer, `aud` = `client_id`; `exp` is skipped when `allow_expired` (an `id_token_hint` at
    /// logout may be old — it only names the user). The caller checks `nonce` where the flow has
    /// one: ID tokens from a refresh grant carry none (OIDC Core §12.2).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let well_known_url = Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?);
    /// # let provider = Provider::new(ProviderConfig { client_id: TOLLGATE_CLIENT_ID.into(), well_known_url, ..Default::default() })?;
    /// # provider.refresh().await?;
    /// # let validator = Validator::new(provider, 100);
    /// # use tollgate::devidp::{ALICE_OID, ALICE_UPN, DEV_PASSWORD, TOLLGATE_CLIENT_SECRET};
    /// # let form = [("grant_type", "password"), ("client_id", TOLLGATE_CLIENT_ID), ("client_secret", TOLLGATE_CLIENT_SECRET),
    /// #     ("username", ALICE_UPN), ("password", DEV_PASSWORD), ("scope", "openid profile")];
    /// # let response = reqwest::Client::new().post(idp.token_endpoint(DEFAULT_TENANT_ID)).form(&form).send().await?;
    /// # let body: serde_json::Value = response.json().await?;
    /// # let id_token = body["id_token"].as_str().ok_or("no id_token")?.to_owned();
    /// let claims = validator.validate_id_token(&id_token, TOLLGATE_CLIENT_ID, false).await?;
    /// assert_eq!(claims.oid(), Some(ALICE_OID));
    /// assert!(validator.validate_id_token(&id_token, "another-client", false).await.is_err());
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn validate_id_token(
        &self,
        token: &str,
        client_id: &str,
        allow_expired: bool,
    ) -> Result<Claims, ValidationError> {
        let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the ID token is too large"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the ID token is not a well-formed JWT"))?;
        check_header(&header)?;
        let config = self.provider.config();
        if !config.algorithms.contains(&header.alg) {
            return Err(invalid("the ID token algorithm is not accepted"));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("the ID token header has no kid"))?;
        let key = match self.provider.key(kid).await {
            Some(k) if k.allows(header.alg) => k,
            Some(_) => {
                return Err(invalid(
                    "the signing key does not match the ID token's algorithm",
                ));
            }
            None if self.provider.key_set().is_empty() => {
                return Err(ValidationError::KeysUnavailable);
            }
            None => return Err(invalid("the ID token is signed by an unknown key")),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = !allow_expired;
        validation.validate_nbf = !allow_expired;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_audience(&[client_id]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| {
                ValidationError::InvalidToken(format!(
                    "the ID token is not valid: {}",
                    e.kind_description()
                ))
            })?;
        self.check_issuer(&data.claims, key.issuer.as_deref())?;
        Ok(Claims::from_map(self.provider.name(), data.claims))
    }

    /// `iss` must equal the provider's issuer, or a `{tenantid}` template filled with the token's
    /// own `tid` (entra-reference §9 steps 2-4); for Entra, v1 and v2 issuer forms of the same
    /// tenant are both accepted (§1.4 key rule).
    fn check_issuer(
        &self,
        claims: &Map<String, Value>,
        key_issuer: Option<&str>,
    ) -> Result<(), ValidationError> {
        let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the token has no iss claim"))?;
        let tid = claims.get("tid").and_then(Value::as_str);
        let metadata = self
            .provider
            .metadata()
            .ok_or(ValidationError::KeysUnavailable)?;
        let config = self.provider.config();
        let mut candidates: Vec<String> = vec![metadata.issuer.clone()];
        candidates.extend(config.additional_issuers.iter().cloned());
        candidates.extend(
            candidates
                .clone()
                .iter()
                .filter_map(|i| entra_v1_counterpart(i)),
        );
        let mut templated_match = false;
        let matched = candidates.iter().any(|c| {
            if c.contains("{tenantid}") {
                let ok = tid.is_some_and(|t| is_guid(t) && c.replace("{tenantid}", t) == iss);
                templated_match |= ok;
                ok
            } else {
                c == iss
            }
        });
        if !matched {
            return Err(invalid("the token was issued by an untrusted issuer"));
        }
        if let Some(key_iss) = key_issuer {
            let ok = if key_iss.contains("{tenantid}") {
                tid.is_some_and(|t| {
                    key_iss.replace("{tenantid}", t) == iss
                        || entra_v1_counterpart(key_iss)
                            .is_some_and(|v1| v1.replace("{tenantid}", t) == iss)
                })
            } else {
                key_iss == iss || entra_v1_counterpart(key_iss).is_some_and(|v1| v1 == iss)
            };
            if !ok {
                return Err(invalid("the signing key belongs to another issuer"));
            }
        }
        let allowed = &config.allowed_tenants;
        let any_tenant = allowed.iter().any(|t| t == "*");
        if (templated_match || !allowed.is_empty()) && !any_tenant {
            let t = tid.ok_or_else(|| invalid("the token has no tid claim"))?;
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(t)) {
                return Err(invalid("the token's tenant is not allowed"));
            }
        }
        Ok(())
    }

    fn refuse(&self, result: &'static str, message: &str) -> ValidationError {
        metrics::counter!("tollgate_validations_total", "provider" => self.provider.name().to_owned(), "result" => result).increment(1);
        ValidationError::InvalidToken(message.to_owned())
    }
}

/// Refuses a header that would pick its own key (RFC 8725 §3.10, RFC 7515 §4.1.2-4.1.6) or that
/// lists critical extensions: RFC 7515 §4.1.11 says a recipient must reject a JWS whose `crit`
/// names an extension it does not understand, and tollgate understands none. jsonwebtoken parses
/// `crit` into its own field, so the extras map never holds it: both places are read.
fn check_header(header: &jsonwebtoken::Header) -> Result<(), ValidationError> {
    let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
    if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() || header.x5c.is_some()
    {
        return Err(invalid(
            "the token header carries its own key (jku, jwk, x5u or x5c)",
        ));
    }
    if header.crit.is_some()
        || FORBIDDEN_HEADER_PARAMS
            .iter()
            .any(|p| header.extras.inner().contains_key(*p))
    {
        return Err(invalid("the token header has critical extensions"));
    }
    Ok(())
}

/// RFC 8725 §3.11-3.12: an ID token (or another JWT of the IdP's) must not pass as an access
/// token. Entra's access and ID tokens are both `typ: JWT`, so they are told apart by content:
/// - an explicit type that is not an access token's: a header `typ` other than `JWT` or RFC 9068's
///   `at+jwt`, or a payload `typ` of Keycloak's `ID`, `Refresh`, `Offline` or `Logout`;
/// - claims only ID tokens carry: `nonce`, `at_hash`, `c_hash` (OIDC Core §2, §3.3.2.11), and
///   `events` (a logout token, OpenID Back-Channel Logout §2.4);
/// - an Entra (`ver`) access token always names its client in `azp` (v2) or `appid` (v1); an
///   Entra ID token (a refresh grant's has no `nonce`) names neither.
fn refuse_id_tokens(
    header_typ: Option<&str>,
    claims: &Map<String, Value>,
) -> Result<(), ValidationError> {
    let not_access = || {
        Err(ValidationError::InvalidToken(
            "an ID token is not an access token".into(),
        ))
    };
    if let Some(typ) = header_typ {
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        if !(typ.eq_ignore_ascii_case("jwt") || typ.eq_ignore_ascii_case("at+jwt")) {
            return Err(ValidationError::InvalidToken(
                "the token's type (typ) is not an access token's".into(),
            ));
        }
    }
    if let Some(typ) = claims.get("typ").and_then(Value::as_str)
        && ["id", "refresh", "offline", "logout"]
            .iter()
            .any(|t| typ.eq_ignore_ascii_case(t))
    {
        return not_access();
    }
    if ["nonce", "at_hash", "c_hash", "events"]
        .iter()
        .any(|c| claims.contains_key(*c))
    {
        return not_access();
    }
    if claims.contains_key("ver") && !claims.contains_key("azp") && !claims.contains_key("appid") {
        return not_access();
    }
    Ok(())
}

/// `https://login.microsoftonline.com/X/v2.0` -> `https://sts.windows.net/X/`.
fn entra_v1_counterpart(issuer: &str) -> Option<String> {
    let tenant = issuer
        .strip_prefix("https://login.microsoftonline.com/")?
        .strip_suffix("/v2.0")?;
    Some(format!("https://sts.windows.net/{tenant}/"))
}

trait KindDescription {
    fn kind_description(&self) -> &'static str;
}

impl KindDescription for jsonwebtoken::errors::Error {
    fn kind_description(&self) -> &'static str {
        use jsonwebtoken::errors::ErrorKind as K;
        match self.kind() {
            K::ExpiredSignature => "expired",
            K::ImmatureSignature => "not valid yet",
            K::InvalidAudience => "wrong audience",
            K::InvalidSignature => "bad signature",
            K::MissingRequiredClaim(_) => "a required claim is missing",
            _ => "malformed",
        }
    }
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `kid` of a token's header, unverified (for diagnostics and tests).
///
/// ```
/// use tollgate::validate::token_kid;
/// // header {"alg":"RS256","kid":"key-1","typ":"JWT"}
/// assert_eq!(token_kid("eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIiwidHlwIjoiSldUIn0.e30.c2ln").as_deref(), Some("key-1"));
/// assert_eq!(token_kid("not-a-jwt"), None);
/// ```
pub fn token_kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// The algorithm a validator would check a token with (for diagnostics).
///
/// ```
/// use jsonwebtoken::Algorithm;
/// use tollgate::validate::token_algorithm;
/// assert_eq!(token_algorithm("eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIiwidHlwIjoiSldUIn0.e30.c2ln"), Some(Algorithm::RS256));
/// assert_eq!(token_algorithm("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln"), Some(Algorithm::HS256));
/// ```
pub fn token_algorithm(token: &str) -> Option<Algorithm> {
    jsonwebtoken::decode_header(token).ok().map(|h| h.alg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_strings_follow_rfc6750() {
        assert_eq!(
            ValidationError::Missing.www_authenticate(),
            "Bearer realm=\"tollgate\""
        );
        let e = ValidationError::InvalidToken("the token has \"expired\"".into());
        assert_eq!(
            e.www_authenticate(),
            "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
        let e = ValidationError::InsufficientScope {
            scope: "a b".into(),
        };
        assert!(e.www_authenticate().ends_with("scope=\"a b\""));
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn token68_is_exactly_the_rfc_7235_alphabet() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
            assert_eq!(is_token68(&[b]), expected, "byte {b:#04x}");
        }
        assert!(is_token68(b"eyJhbGciOi.eyJzdWIi-_~+/=="));
        assert!(!is_token68(b"eyJhbGciOi eyJzdWIi"));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_token(&h), Ok(None));
        h.insert("authorization", "bEaReR abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&h), Ok(Some("abc.def.ghi")));
        // Another scheme is no bearer credential (RFC 6750 §3.1): answered like none at all.
        for other in ["Basic abc", "Negotiate", "Bearerx abc"] {
            h.insert("authorization", other.parse().unwrap());
            assert_eq!(bearer_token(&h), Ok(None), "{other}");
        }
        for empty in ["Bearer", "Bearer ", "bearer   "] {
            h.insert("authorization", empty.parse().unwrap());
            assert_eq!(
                bearer_token(&h),
                Err(ValidationError::InvalidRequest(
                    "the Bearer credential has no token"
                )),
                "{empty:?}"
            );
        }
        h.insert("authorization", "Bearer a b".parse().unwrap());
        assert!(matches!(
            bearer_token(&h),
            Err(ValidationError::InvalidToken(_))
        ));
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.append("authorization", "Bearer y".parse().unwrap());
        assert!(matches!(
            bearer_token(&h),
            Err(ValidationError::InvalidRequest(_))
        ));
    }

    #[test]
    fn entra_issuers() {
        assert_eq!(
            entra_v1_counterpart("https://login.microsoftonline.com/{tenantid}/v2.0").as_deref(),
            Some("https://sts.windows.net/{tenantid}/")
        );
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("11111111-2222-3333-4444-55555555555/"));
    }
}
