//! Token exchange: On-Behalf-Of (RFC 7523 jwt-bearer + `requested_token_use=on_behalf_of`) or
//! RFC 8693 token exchange for user tokens, client credentials (RFC 6749 §4.4) or a JWT bearer
//! grant (RFC 7523 §2.1, Maskinporten) for app tokens, and refresh (§6), with a cache of exchanged
//! tokens. Which grant a user or app token takes is the provider's `grant`.
//!
//! Cache rules (design "Exchange"): the key is `sha256` over the length-prefixed provider, client
//! id, grant, target and subject token (for app tokens: the `resource` and
//! `authorization_details` sent with a jwt_bearer grant), so no field can run into the next; an entry lives until
//! `min(token exp, subject exp) - expiry_margin`; concurrent misses for one key make one IdP call,
//! run in a spawned task so a caller that goes away does not cancel it for the others; errors are
//! never cached; `skip_cache` fetches anew and replaces the entry.
//! With `[cache] shared = "redis"`, a miss looks in the replicas' shared cache before the IdP
//! (`shared.rs`).
//!
//! ```no_run
//! # async fn f(exchanger: tollgate::exchange::Exchanger, user_token: &str) -> Result<(), tollgate::exchange::ExchangeError> {
//! let token = exchanger.on_behalf_of(user_token, "api://downstream/.default", false).await?;
//! println!("Bearer token valid for {} s", token.expires_in());
//! # Ok(()) }
//! ```

mod cache;
#[cfg(test)]
pub(crate) use cache::TokenCache;
#[cfg(feature = "server")]
pub(crate) use cache::is_json_plain;
pub(crate) mod grants;
mod shared;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tracing::Instrument as _;

pub use cache::ExchangedToken;
pub use grants::{IdpError, RefreshedTokens};
pub(crate) use shared::SharedCache;

use crate::provider::Provider;
use crate::provider::client_auth::{ClientAuth, ClientAuthError};
use crate::validate::{ValidationError, Validator};

/// Why an exchange failed. Display never includes a token.
///
/// ```
/// use http::StatusCode;
/// use tollgate::exchange::ExchangeError;
/// let err = ExchangeError::InvalidRequest("target must not be empty".into());
/// assert_eq!((err.status(), err.code()), (StatusCode::BAD_REQUEST, "invalid_request"));
/// assert_eq!(err.to_json(), serde_json::json!({"error": "invalid_request", "error_description": "target must not be empty"}));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The subject token did not validate; nothing was sent to the IdP.
    #[error("the user token is not valid: {0}")]
    InvalidSubject(ValidationError),
    /// A request field is wrong (empty target...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The IdP refused (its OAuth error, `claims`/`suberror` kept for step-up).
    #[error("the identity provider refused the exchange: {}", .0.error)]
    Idp(Box<IdpError>),
    /// The IdP could not be reached or answered garbage.
    #[error("the identity provider failed: {message}")]
    Upstream {
        /// What happened (no token content).
        message: String,
        /// A timeout rather than a failure.
        timeout: bool,
    },
    /// tollgate's own client credential could not be used: misconfigured, or (a platform's
    /// federated token file) not there yet.
    #[error("client authentication is {state}: {0}", state = client_auth_state(.0))]
    ClientAuth(#[from] ClientAuthError),
    /// The provider has no token endpoint.
    #[error("the provider has no token endpoint (discovery not loaded yet?)")]
    NoTokenEndpoint,
}

impl ExchangeError {
    /// The HTTP status the local API answers with.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tollgate::exchange::ExchangeError;
    /// let timeout = ExchangeError::Upstream { message: "timed out".into(), timeout: true };
    /// assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
    /// assert_eq!(ExchangeError::NoTokenEndpoint.status(), StatusCode::BAD_GATEWAY);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidSubject(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Idp(e) if e.status >= 500 => StatusCode::BAD_GATEWAY,
            Self::Idp(_) => StatusCode::BAD_REQUEST,
            Self::Upstream { timeout: true, .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream { .. } | Self::NoTokenEndpoint => StatusCode::BAD_GATEWAY,
            Self::ClientAuth(c) if c.is_unavailable() => StatusCode::BAD_GATEWAY,
            Self::ClientAuth(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OAuth error code.
    ///
    /// ```
    /// # use tollgate::exchange::{ExchangeError, IdpError};
    /// # let idp_error = |error: &str, description: Option<&str>| IdpError {
    /// #     status: 400, error: error.into(), description: description.map(Into::into),
    /// #     suberror: None, claims: None, error_codes: vec![],
    /// # };
    /// assert_eq!(ExchangeError::Idp(Box::new(idp_error("invalid_grant", None))).code(), "invalid_grant");
    /// assert_eq!(ExchangeError::NoTokenEndpoint.code(), "server_error");
    /// ```
    pub fn code(&self) -> &str {
        match self {
            Self::InvalidSubject(_) => "invalid_grant",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Idp(e) => &e.error,
            Self::Upstream { .. } | Self::NoTokenEndpoint | Self::ClientAuth(_) => "server_error",
        }
    }

    /// The error as a JSON body `{error, error_description[, suberror, claims, error_codes]}`.
    ///
    /// ```
    /// use tollgate::exchange::{ExchangeError, IdpError};
    /// let err = ExchangeError::Idp(Box::new(IdpError {
    ///     status: 400,
    ///     error: "interaction_required".into(),
    ///     description: Some("AADSTS50079: multi-factor authentication is required".into()),
    ///     suberror: Some("basic_action".into()),
    ///     claims: Some(r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#.into()),
    ///     error_codes: vec![50079],
    /// }));
    /// let body = err.to_json();
    /// assert_eq!((body["error"].as_str(), body["suberror"].as_str()), (Some("interaction_required"), Some("basic_action")));
    /// assert_eq!(body["error_codes"], serde_json::json!([50079]));
    /// ```
    pub fn to_json(&self) -> Value {
        let mut body =
            serde_json::json!({"error": self.code(), "error_description": self.description()});
        if let Self::Idp(e) = self {
            if let Some(s) = &e.suberror {
                body["suberror"] = Value::String(s.clone());
            }
            if let Some(c) = &e.claims {
                body["claims"] = Value::String(c.clone());
            }
            if !e.error_codes.is_empty() {
                body["error_codes"] = Value::from(e.error_codes.clone());
            }
        }
        body
    }

    /// Human description for `error_description`.
    ///
    /// ```
    /// # use tollgate::exchange::{ExchangeError, IdpError};
    /// # let idp_error = |error: &str, description: Option<&str>| IdpError {
    /// #     status: 400, error: error.into(), description: description.map(Into::into),
    /// #     suberror: None, claims: None, error_codes: vec![],
    /// # };
    /// let refused = ExchangeError::Idp(Box::new(idp_error("invalid_grant", Some("AADSTS50173: the grant has expired"))));
    /// assert_eq!(refused.description(), "AADSTS50173: the grant has expired");
    /// assert_eq!(ExchangeError::InvalidRequest("bad target".into()).description(), "bad target");
    /// ```
    pub fn description(&self) -> String {
        match self {
            Self::Idp(e) => e.description.clone().unwrap_or_else(|| self.to_string()),
            other => other.to_string(),
        }
    }
}

/// Exchanges tokens with one provider. Cheap to clone; clones share the cache.
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::{ProviderConfig, Secret};
/// use tollgate::{exchange::Exchanger, provider::Provider, validate::Validator};
/// let provider = Provider::new(ProviderConfig {
///     client_id: "app".into(),
///     client_secret: Some(Secret::new("s3cret")), // the exchanger needs a client credential
///     issuer: Some("https://login.example/v2.0".into()),
///     jwks_uri: Some("https://login.example/keys".parse()?),
///     ..Default::default()
/// })?;
/// let exchanger = Exchanger::new(Validator::new(provider, 10_000), 10_000, Duration::from_secs(120))?;
/// assert_eq!(exchanger.provider().name(), "entra_id");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Exchanger {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<Provider>,
    validator: Validator,
    auth: ClientAuth,
    cache: cache::TokenCache,
    /// The cache shared with other replicas (`[cache] shared`), consulted on a miss.
    shared: Option<SharedCache>,
    metrics: CacheMetrics,
}

/// This exchanger's cache metric handles, registered at first use (after the server installed
/// its recorder) so a cached exchange costs atomic updates, not registry lookups with labels.
#[derive(Default)]
struct CacheMetrics {
    /// `tollgate_exchange_cache_total{grant, result}`, by [`Grant::index`] then miss/hit.
    lookups: [[OnceLock<metrics::Counter>; 2]; 4],
    /// `tollgate_exchange_cache_entries{provider}`: each provider's exchanger has its own.
    entries: OnceLock<metrics::Gauge>,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("provider", &self.inner.provider.name())
            .finish()
    }
}

/// What an app token request may carry besides its target, for a `jwt_bearer` provider
/// (Maskinporten): an RFC 8707 `resource` (the audience the token is for) and RFC 9396
/// `authorization_details`. Other grants ignore them, as Texas does for Entra.
///
/// ```
/// use tollgate::exchange::AppTokenExtras;
/// let extras = AppTokenExtras {
///     resource: Some("https://api.example.no".into()),
///     authorization_details: Some(serde_json::json!([{"type": "urn:altinn:systemuser"}])),
/// };
/// assert!(!extras.is_empty() && AppTokenExtras::default().is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppTokenExtras {
    /// `resource`: the audience asked for.
    pub resource: Option<String>,
    /// `authorization_details`: a JSON array, passed on as it is.
    pub authorization_details: Option<Value>,
}

impl AppTokenExtras {
    /// Whether nothing besides the target is asked for.
    ///
    /// ```
    /// use tollgate::exchange::AppTokenExtras;
    /// assert!(AppTokenExtras { resource: None, authorization_details: None }.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.resource.is_none() && self.authorization_details.is_none()
    }

    /// The part of the cache key these extras make: empty without any (so a plain request
    /// keeps its key), else a digest of both, each marked present or not.
    fn cache_part(&self) -> Vec<u8> {
        if self.is_empty() {
            return Vec::new();
        }
        let details = self
            .authorization_details
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        crate::util::sha256_of_parts(&[
            if self.resource.is_some() { b"r" } else { b"-" },
            self.resource.as_deref().unwrap_or("").as_bytes(),
            if self.authorization_details.is_some() {
                b"d"
            } else {
                b"-"
            },
            details.as_bytes(),
        ])
        .to_vec()
    }
}

/// Which grant an exchange used; part of the cache key and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    OnBehalfOf,
    ClientCredentials,
    TokenExchange,
    JwtBearer,
}

impl Grant {
    fn label(self) -> &'static str {
        match self {
            Self::OnBehalfOf => "on_behalf_of",
            Self::ClientCredentials => "client_credentials",
            Self::TokenExchange => "token_exchange",
            Self::JwtBearer => "jwt_bearer",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::OnBehalfOf => 0,
            Self::ClientCredentials => 1,
            Self::TokenExchange => 2,
            Self::JwtBearer => 3,
        }
    }
}

impl Exchanger {
    /// An exchanger for the validator's provider, caching up to `capacity` tokens and never
    /// handing one out closer than `expiry_margin` to its expiry.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use tollgate::{config::ProviderConfig, exchange::{ExchangeError, Exchanger}, provider::Provider, validate::Validator};
    /// let provider = Provider::new(ProviderConfig {
    ///     client_id: "app".into(),
    ///     issuer: Some("https://login.example/v2.0".into()),
    ///     jwks_uri: Some("https://login.example/keys".parse()?),
    ///     ..Default::default() // no client secret
    /// })?;
    /// let err = Exchanger::new(Validator::new(provider, 100), 100, Duration::from_secs(120)).unwrap_err();
    /// assert!(matches!(err, ExchangeError::ClientAuth(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(
        validator: Validator,
        capacity: u64,
        expiry_margin: Duration,
    ) -> Result<Self, ExchangeError> {
        let max_bytes = crate::config::CacheConfig::default().max_memory_per_cache(1);
        Self::with_memory(validator, capacity, max_bytes, expiry_margin)
    }

    /// [`Exchanger::new`] with the token cache holding at most `max_bytes` (each entry weighed
    /// by its heap footprint: the token, its `Authorization` value and the cache's own
    /// bookkeeping); `capacity` stays an upper limit on the count. [`Exchanger::new`] gives
    /// the cache half of `[cache] max_memory`'s default.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tollgate::config::{ProviderConfig, Secret};
    /// # use tollgate::{exchange::Exchanger, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse()?),
    /// #     client_secret: Some(Secret::new("s")),
    /// #     ..Default::default()
    /// # })?;
    /// let validator = Validator::with_memory(provider, 100_000, 4 << 20);
    /// let exchanger = Exchanger::with_memory(validator, 100_000, 4 << 20, Duration::from_secs(120))?;
    /// assert_eq!((exchanger.max_cache_bytes(), exchanger.cached_bytes()), (4 << 20, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_memory(
        validator: Validator,
        capacity: u64,
        max_bytes: u64,
        expiry_margin: Duration,
    ) -> Result<Self, ExchangeError> {
        Self::with_shared_cache(validator, capacity, max_bytes, expiry_margin, None)
    }

    /// [`Exchanger::with_memory`] with a cache shared by replicas behind its own
    /// (`[cache] shared`).
    pub(crate) fn with_shared_cache(
        validator: Validator,
        capacity: u64,
        max_bytes: u64,
        expiry_margin: Duration,
        shared: Option<SharedCache>,
    ) -> Result<Self, ExchangeError> {
        let provider = validator.provider().clone();
        let auth = ClientAuth::from_config(provider.config())?;
        Ok(Self {
            inner: Arc::new(Inner {
                provider,
                validator,
                auth,
                cache: cache::TokenCache::with_memory(capacity, max_bytes, expiry_margin),
                shared,
                metrics: CacheMetrics::default(),
            }),
        })
    }

    /// The provider.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tollgate::config::{ProviderConfig, Secret};
    /// # use tollgate::{exchange::Exchanger, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     client_secret: Some(Secret::new("s3cret")),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse()?),
    /// #     ..Default::default()
    /// # })?;
    /// # let exchanger = Exchanger::new(Validator::new(provider, 100), 100, Duration::from_secs(120))?;
    /// assert_eq!(exchanger.provider().config().client_id, "app");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn provider(&self) -> &Arc<Provider> {
        &self.inner.provider
    }

    /// Entries in the cache (approximate; for metrics and tests).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tollgate::config::{ProviderConfig, Secret};
    /// # use tollgate::{exchange::Exchanger, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     client_secret: Some(Secret::new("s3cret")),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse()?),
    /// #     ..Default::default()
    /// # })?;
    /// # let exchanger = Exchanger::new(Validator::new(provider, 100), 100, Duration::from_secs(120))?;
    /// assert_eq!(exchanger.cached_entries(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cached_entries(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// The bytes the exchanged-token cache holds now (its entries' weights).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tollgate::config::{ProviderConfig, Secret};
    /// # use tollgate::{exchange::Exchanger, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse()?),
    /// #     client_secret: Some(Secret::new("s")),
    /// #     ..Default::default()
    /// # })?;
    /// let exchanger = Exchanger::new(Validator::new(provider, 100), 100, Duration::from_secs(120))?;
    /// assert_eq!(exchanger.cached_bytes(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cached_bytes(&self) -> u64 {
        self.inner.cache.bytes()
    }

    /// The most bytes the exchanged-token cache may hold.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tollgate::config::{ProviderConfig, Secret};
    /// # use tollgate::{exchange::Exchanger, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse()?),
    /// #     client_secret: Some(Secret::new("s")),
    /// #     ..Default::default()
    /// # })?;
    /// let exchanger = Exchanger::new(Validator::new(provider, 100), 100, Duration::from_secs(120))?;
    /// assert_eq!(exchanger.max_cache_bytes(), 32 << 20); // half of max_memory's 64MiB
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_cache_bytes(&self) -> u64 {
        self.inner.cache.max_bytes()
    }

    /// On-Behalf-Of: a token for `target` acting as the user of `user_token`, which must be a
    /// valid access token for this app (checked before anything is sent to the IdP). A
    /// `token_exchange` provider (TokenX) is asked by RFC 8693 instead, with `target` as the
    /// `audience`; a `jwt_bearer` one (Maskinporten) makes no user tokens and is refused.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder()
    /// #     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    /// #     .client_id(TOLLGATE_CLIENT_ID)
    /// #     .client_secret(tollgate_devidp::TOLLGATE_CLIENT_SECRET)
    /// #     .build()
    /// #     .await?;
    /// # use tollgate_devidp::{ALICE, DOWNSTREAM_APP_ID_URI, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// use tollgate::exchange::ExchangeError;
    /// let exchanger = auth.exchanger().expect("a client secret is configured");
    /// let user_token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// let target = format!("{DOWNSTREAM_APP_ID_URI}/.default");
    /// let token = exchanger.on_behalf_of(&user_token, &target, false).await?;
    /// assert!(token.expires_in() > 0);
    /// let refused = exchanger.on_behalf_of("not-a-jwt", &target, false).await.unwrap_err();
    /// assert!(matches!(refused, ExchangeError::InvalidSubject(_))); // never sent to the IdP
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn on_behalf_of(
        &self,
        user_token: &str,
        target: &str,
        skip_cache: bool,
    ) -> Result<ExchangedToken, ExchangeError> {
        check_target(target)?;
        let subject = self
            .inner
            .validator
            .validate(user_token)
            .await
            .map_err(ExchangeError::InvalidSubject)?;
        self.on_behalf_of_checked(&subject, user_token, target, skip_cache)
            .await
    }

    /// [`Exchanger::on_behalf_of`] through the connection's last token where it keeps one (the
    /// token API's): a client sending the same token again is not validated again.
    #[cfg(feature = "server")]
    pub(crate) async fn on_behalf_of_on(
        &self,
        last_token: Option<&crate::validate::LastToken>,
        user_token: &str,
        target: &str,
        skip_cache: bool,
    ) -> Result<ExchangedToken, ExchangeError> {
        check_target(target)?;
        let subject = crate::validate::validate_on(last_token, &self.inner.validator, user_token)
            .await
            .map_err(ExchangeError::InvalidSubject)?;
        self.on_behalf_of_checked(&subject, user_token, target, skip_cache)
            .await
    }

    /// [`Exchanger::on_behalf_of`] for a token this exchanger's validator has just validated into
    /// `subject`, to a `target` that passed the same check as [`Exchanger::on_behalf_of`]'s when
    /// the configuration was loaded (the proxy path: a route's `obo` or `obo_headers`): no
    /// second validation, no second look at the target.
    #[cfg(feature = "server")]
    pub(crate) async fn on_behalf_of_subject(
        &self,
        subject: &crate::validate::Claims,
        user_token: &str,
        target: &str,
        skip_cache: bool,
    ) -> Result<ExchangedToken, ExchangeError> {
        self.on_behalf_of_checked(subject, user_token, target, skip_cache)
            .await
    }

    /// The token [`Exchanger::on_behalf_of_subject`] would answer from this replica's cache,
    /// when it has a usable one: the proxy's path for a user's request that comes again, with
    /// no future to build or box. Counted and traced as the cache hit it is. `None` for every
    /// other case, refusals included: the caller then asks `on_behalf_of_subject`, which
    /// answers them.
    #[cfg(feature = "server")]
    pub(crate) fn cached_for_subject(
        &self,
        subject: &crate::validate::Claims,
        target: &str,
    ) -> Option<ExchangedToken> {
        self.refuse_user_subject(subject).ok()?;
        let grant = self.user_grant();
        let key = self.cache_key(grant, target, subject.token_digest()?);
        let token = self.inner.cache.usable(&key)?;
        let span = self.span(grant);
        if !span.is_none() {
            span.record("cache", "hit");
        }
        self.count_lookup(grant, true);
        Some(token)
    }

    /// This exchanger for the credential `cfg` now names, sharing its token cache: itself when
    /// the credential read again is the same, a copy with the new one otherwise (a rotated
    /// secret file). Tokens already exchanged stay valid whichever credential got them.
    #[cfg(feature = "server")]
    pub(crate) fn with_credential_of(
        &self,
        cfg: &crate::config::ProviderConfig,
    ) -> Result<Self, ExchangeError> {
        let auth = ClientAuth::from_config(cfg)?;
        if auth.same_as(&self.inner.auth) {
            return Ok(self.clone());
        }
        Ok(Self {
            inner: Arc::new(Inner {
                provider: self.inner.provider.clone(),
                validator: self.inner.validator.clone(),
                auth,
                cache: self.inner.cache.clone(),
                shared: self.inner.shared.clone(),
                metrics: CacheMetrics::default(),
            }),
        })
    }

    /// Forgets the cached On-Behalf-Of token of `subject` (claims this exchanger's validator
    /// produced) for `target`: the upstream refused it with a claims challenge (Continuous Access
    /// Evaluation revoked it, or it lacks a claim), so the next request must not get it again.
    #[cfg(feature = "server")]
    pub(crate) async fn forget_on_behalf_of(
        &self,
        subject: &crate::validate::Claims,
        target: &str,
    ) {
        let Some(digest) = subject.token_digest() else {
            return;
        };
        let key = self.cache_key(self.user_grant(), target, digest);
        self.inner.cache.forget(&key).await;
        if let Some(shared) = &self.inner.shared {
            shared.forget(&key).await;
        }
    }

    /// The exchange itself, once `target` has passed [`check_target`].
    async fn on_behalf_of_checked(
        &self,
        subject: &crate::validate::Claims,
        user_token: &str,
        target: &str,
        skip_cache: bool,
    ) -> Result<ExchangedToken, ExchangeError> {
        self.refuse_user_subject(subject)?;
        // The validator's digest of this very token, else (claims not from a validator) our own.
        let subject_digest = subject
            .token_digest()
            .copied()
            .unwrap_or_else(|| crate::util::sha256(user_token.as_bytes()));
        let subject_exp = subject.expires_at();
        let grant = self.user_grant();
        // Built on a miss only: a cache hit copies neither the token nor the target.
        let make_fetch = || {
            let tid = subject.tid().map(str::to_owned);
            let this = self.clone();
            let token = user_token.to_owned();
            let target = target.to_owned();
            move || async move {
                let (provider, auth) = (&this.inner.provider, &this.inner.auth);
                if grant == Grant::TokenExchange {
                    // An RFC 8693 server names no tenant in its endpoint.
                    let endpoint = this.token_endpoint(None)?;
                    return grants::token_exchange(provider, auth, &endpoint, &token, &target)
                        .await;
                }
                let endpoint = this.token_endpoint(tid.as_deref())?;
                grants::on_behalf_of(provider, auth, &endpoint, &token, &target).await
            }
        };
        self.cached(
            grant,
            target,
            &subject_digest,
            Some(subject_exp),
            skip_cache,
            make_fetch,
        )
        .await
    }

    /// Why `subject` cannot be exchanged for a token on the user's behalf here: a provider
    /// whose grant gives app tokens only, or an app-only token (there is no user to act for).
    fn refuse_user_subject(&self, subject: &crate::validate::Claims) -> Result<(), ExchangeError> {
        self.refuse_grant(
            crate::config::ProviderGrant::JwtBearer,
            "app tokens only: use /api/v1/token",
        )?;
        if subject.is_app_only() {
            return Err(ExchangeError::InvalidSubject(
                ValidationError::InvalidToken(
                    "an app-only token cannot be exchanged on behalf of a user".into(),
                ),
            ));
        }
        Ok(())
    }

    /// Client credentials: an app token for `target` (`<resource>/.default`).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder()
    /// #     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    /// #     .client_id(TOLLGATE_CLIENT_ID)
    /// #     .client_secret(tollgate_devidp::TOLLGATE_CLIENT_SECRET)
    /// #     .build()
    /// #     .await?;
    /// # use tollgate_devidp::DOWNSTREAM_APP_ID_URI;
    /// let exchanger = auth.exchanger().expect("a client secret is configured");
    /// let target = format!("{DOWNSTREAM_APP_ID_URI}/.default");
    /// let first = exchanger.client_credentials(&target, false).await?;
    /// let again = exchanger.client_credentials(&target, false).await?; // from the cache
    /// assert_eq!(first.access_token(), again.access_token());
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn client_credentials(
        &self,
        target: &str,
        skip_cache: bool,
    ) -> Result<ExchangedToken, ExchangeError> {
        self.app_token(target, &AppTokenExtras::default(), skip_cache)
            .await
    }

    /// An app token for `target` by the provider's grant: client credentials, or for a
    /// `jwt_bearer` provider (Maskinporten) an assertion signed with the client key carrying
    /// `scope = target` and the `extras`. Cached per target and extras.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder()
    /// #     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    /// #     .client_id(TOLLGATE_CLIENT_ID)
    /// #     .client_secret(tollgate_devidp::TOLLGATE_CLIENT_SECRET)
    /// #     .build()
    /// #     .await?;
    /// # use tollgate_devidp::DOWNSTREAM_APP_ID_URI;
    /// use tollgate::exchange::AppTokenExtras;
    /// let exchanger = auth.exchanger().expect("a client secret is configured");
    /// // An Entra provider takes client credentials and ignores a resource, as Texas does.
    /// let extras = AppTokenExtras { resource: Some("https://ignored.example".into()), ..Default::default() };
    /// let token = exchanger.app_token(&format!("{DOWNSTREAM_APP_ID_URI}/.default"), &extras, false).await?;
    /// assert!(token.expires_in() > 0);
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn app_token(
        &self,
        target: &str,
        extras: &AppTokenExtras,
        skip_cache: bool,
    ) -> Result<ExchangedToken, ExchangeError> {
        check_target(target)?;
        self.refuse_grant(
            crate::config::ProviderGrant::TokenExchange,
            "user tokens only: use /api/v1/token/exchange",
        )?;
        if self.inner.provider.config().grant == crate::config::ProviderGrant::JwtBearer {
            return self.jwt_bearer(target, extras, skip_cache).await;
        }
        // An app token belongs to one tenant, and there is no user token to name it: Entra
        // refuses client credentials at `common`/`organizations` (AADSTS50059). With
        // `client_credentials_tenant` the request goes to that tenant; without, say so here,
        // with the fix, instead of passing the IdP's refusal on.
        let tenant = self
            .inner
            .provider
            .config()
            .client_credentials_tenant
            .clone();
        if tenant.is_none()
            && let Some(alias) = self
                .inner
                .provider
                .metadata()
                .and_then(|m| m.token_endpoint.clone())
                .as_ref()
                .and_then(|e| multi_tenant_segment(e.as_str()))
        {
            return Err(ExchangeError::InvalidRequest(format!(
                "client credentials need a tenant: the provider's token endpoint is the \
                 multi-tenant {alias} one; set client_credentials_tenant, or configure a \
                 tenant-specific well_known_url or token_endpoint for app tokens"
            )));
        }
        let make_fetch = || {
            let this = self.clone();
            let target = target.to_owned();
            move || async move {
                let endpoint = this.token_endpoint(tenant.as_deref())?;
                grants::client_credentials(
                    &this.inner.provider,
                    &this.inner.auth,
                    &endpoint,
                    &target,
                )
                .await
            }
        };
        self.cached(
            Grant::ClientCredentials,
            target,
            b"",
            None,
            skip_cache,
            make_fetch,
        )
        .await
    }

    /// Redeems a refresh token for `target` (not cached: the caller stores the rotated tokens).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder()
    /// #     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    /// #     .client_id(TOLLGATE_CLIENT_ID)
    /// #     .client_secret(tollgate_devidp::TOLLGATE_CLIENT_SECRET)
    /// #     .build()
    /// #     .await?;
    /// # use tollgate_devidp::{ALICE_UPN, DEV_PASSWORD, DOWNSTREAM_APP_ID_URI, TOLLGATE_CLIENT_SECRET};
    /// # let target = format!("{DOWNSTREAM_APP_ID_URI}/.default");
    /// # let scope = format!("openid offline_access {target}");
    /// # let form = [("grant_type", "password"), ("client_id", TOLLGATE_CLIENT_ID), ("client_secret", TOLLGATE_CLIENT_SECRET),
    /// #     ("username", ALICE_UPN), ("password", DEV_PASSWORD), ("scope", &scope)];
    /// # let response = reqwest::Client::new().post(idp.token_endpoint(DEFAULT_TENANT_ID)).form(&form).send().await?;
    /// # let body: serde_json::Value = response.json().await?;
    /// # let refresh_token = body["refresh_token"].as_str().ok_or("no refresh token")?.to_owned();
    /// let exchanger = auth.exchanger().expect("a client secret is configured");
    /// let tokens = exchanger.refresh(&refresh_token, &target, Some(DEFAULT_TENANT_ID)).await?;
    /// assert!(tokens.expires_in > 0);
    /// let rotated = tokens.refresh_token.expect("the IdP rotates refresh tokens");
    /// assert_ne!(rotated, refresh_token);
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn refresh(
        &self,
        refresh_token: &str,
        target: &str,
        tid: Option<&str>,
    ) -> Result<RefreshedTokens, ExchangeError> {
        check_target(target)?;
        let endpoint = self.token_endpoint(tid)?;
        let started = std::time::Instant::now();
        let span = crate::telemetry::span!(
            "exchange",
            otel.status_code = tracing::field::Empty,
            provider = self.inner.provider.name(),
            grant = "refresh_token",
            error.type = tracing::field::Empty,
        );
        let result = grants::refresh(
            &self.inner.provider,
            &self.inner.auth,
            &endpoint,
            refresh_token,
            target,
        )
        .instrument(span.clone())
        .await;
        if let Err(e) = &result
            && !span.is_none()
        {
            span.record("error.type", e.code());
            span.record("otel.status_code", "ERROR");
        }
        record("refresh_token", &result, started);
        result
    }

    /// Redeems the authorization code of a browser sign-in tollgate started itself
    /// (`[session]`): the token response with its ID token, still to be validated.
    #[cfg(feature = "server")]
    pub(crate) async fn redeem_code(
        &self,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<grants::TokenResponse, ExchangeError> {
        let endpoint = self.token_endpoint(None)?;
        let started = std::time::Instant::now();
        let result = grants::authorization_code(
            &self.inner.provider,
            &self.inner.auth,
            &endpoint,
            code,
            redirect_uri,
            code_verifier,
        )
        .await;
        record("authorization_code", &result, started);
        result
    }

    /// The jwt_bearer grant (Maskinporten): the assertion's `aud` is the provider's issuer.
    async fn jwt_bearer(
        &self,
        target: &str,
        extras: &AppTokenExtras,
        skip_cache: bool,
    ) -> Result<ExchangedToken, ExchangeError> {
        let make_fetch = || {
            let this = self.clone();
            let target = target.to_owned();
            let extras = extras.clone();
            move || async move {
                let metadata = this
                    .inner
                    .provider
                    .metadata()
                    .ok_or(ExchangeError::NoTokenEndpoint)?;
                let endpoint = this.token_endpoint(None)?;
                grants::jwt_bearer(
                    &this.inner.provider,
                    &this.inner.auth,
                    &endpoint,
                    &metadata.issuer,
                    &target,
                    &extras,
                )
                .await
            }
        };
        let subject = extras.cache_part();
        self.cached(
            Grant::JwtBearer,
            target,
            &subject,
            None,
            skip_cache,
            make_fetch,
        )
        .await
    }

    /// The grant user tokens are exchanged with: RFC 8693 for a `token_exchange` provider,
    /// On-Behalf-Of otherwise.
    fn user_grant(&self) -> Grant {
        match self.inner.provider.config().grant {
            crate::config::ProviderGrant::TokenExchange => Grant::TokenExchange,
            _ => Grant::OnBehalfOf,
        }
    }

    /// Refuses a request this provider's `grant` cannot answer, before anything is sent.
    fn refuse_grant(
        &self,
        grant: crate::config::ProviderGrant,
        what: &str,
    ) -> Result<(), ExchangeError> {
        let config = self.inner.provider.config();
        if config.grant != grant {
            return Ok(());
        }
        let name = match grant {
            crate::config::ProviderGrant::EntraObo => "entra_obo",
            crate::config::ProviderGrant::IntrospectOnly => "introspect_only",
            crate::config::ProviderGrant::TokenExchange => "token_exchange",
            crate::config::ProviderGrant::JwtBearer => "jwt_bearer",
        };
        Err(ExchangeError::InvalidRequest(format!(
            "identity provider '{}' (grant = \"{name}\") gives {what}",
            config.name
        )))
    }

    /// The token endpoint; a `common`/`organizations` authority is replaced by the user's tenant
    /// (OBO is asked of the tenant that issued the user's token, its `tid`: a multi-tenant
    /// authority names no tenant).
    fn token_endpoint(&self, tid: Option<&str>) -> Result<String, ExchangeError> {
        let metadata = self
            .inner
            .provider
            .metadata()
            .ok_or(ExchangeError::NoTokenEndpoint)?;
        let endpoint = metadata
            .token_endpoint
            .as_ref()
            .ok_or(ExchangeError::NoTokenEndpoint)?
            .to_string();
        if let (Some(tid), Some(alias)) = (tid, multi_tenant_segment(&endpoint)) {
            // The tid becomes a path segment: only a tenant id (GUID) may go there.
            if tid.is_empty() || !tid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(ExchangeError::InvalidSubject(
                    ValidationError::InvalidToken("the token's tid is not a tenant id".into()),
                ));
            }
            return Ok(endpoint.replacen(alias, &format!("/{tid}/"), 1));
        }
        Ok(endpoint)
    }

    /// The cached token, or one shared fetch built by `make_fetch` (called on a miss only).
    async fn cached<M, F, Fut>(
        &self,
        grant: Grant,
        target: &str,
        subject: &[u8],
        subject_exp: Option<u64>,
        skip_cache: bool,
        make_fetch: M,
    ) -> Result<ExchangedToken, ExchangeError>
    where
        M: FnOnce() -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<grants::TokenResponse, ExchangeError>>
            + Send
            + 'static,
    {
        let key = self.cache_key(grant, target, subject);
        let label = grant.label();
        let span = self.span(grant);
        let replicas = self.inner.shared.clone();
        let make = move || {
            let fetch = make_fetch();
            // The fetch runs in a task of its own (see `get_or_else`): its IdP call stays a
            // child of the exchange that started it.
            let parent = tracing::Span::current();
            let idp = move || async move {
                let started = std::time::Instant::now();
                let result = fetch()
                    .await
                    .and_then(|r| ExchangedToken::from_response(r, subject_exp));
                record(label, &result, started);
                result
            };
            // In-process miss -> the replicas' shared cache -> the IdP.
            move || shared::through(replicas, key, skip_cache, subject_exp, idp).instrument(parent)
        };
        let (result, hit) = self
            .inner
            .cache
            .get_or_else(key, skip_cache, make)
            .instrument(span.clone())
            .await;
        if !span.is_none() {
            span.record("cache", if hit { "hit" } else { "miss" });
            if let Err(e) = &result {
                span.record("error.type", e.code());
                span.record("otel.status_code", "ERROR");
            }
        }
        self.count_lookup(grant, hit);
        result
    }

    /// The cache key of `grant`'s token for `target` and `subject`; a user token's digest's
    /// through this thread's memo of the last one (`cache::user_key`).
    fn cache_key(&self, grant: Grant, target: &str, subject: &[u8]) -> [u8; 32] {
        let (provider, client_id) = (self.inner.provider.name(), self.inner.auth.client_id());
        match (grant, <&[u8; 32]>::try_from(subject)) {
            (Grant::OnBehalfOf | Grant::TokenExchange, Ok(digest)) => {
                cache::user_key(provider, client_id, grant, target, digest)
            }
            _ => cache::key(provider, client_id, grant, target, subject),
        }
    }

    /// The `exchange` span of one lookup (`cache` and the error recorded in it later).
    fn span(&self, grant: Grant) -> tracing::Span {
        crate::telemetry::span!(
            "exchange",
            otel.status_code = tracing::field::Empty,
            provider = self.inner.provider.name(),
            grant = grant.label(),
            cache = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    }

    /// `tollgate_exchange_cache_total` for one lookup, and the cache's entries.
    fn count_lookup(&self, grant: Grant, hit: bool) {
        let m = &self.inner.metrics;
        let label = grant.label();
        m.lookups[grant.index()][usize::from(hit)]
            .get_or_init(|| metrics::counter!("tollgate_exchange_cache_total", "grant" => label, "result" => if hit { "hit" } else { "miss" }))
            .increment(1);
        m.entries
            .get_or_init(|| metrics::gauge!("tollgate_exchange_cache_entries", "provider" => self.inner.provider.name().to_owned()))
            .set(self.inner.cache.entry_count() as f64);
    }
}

/// The multi-tenant authority segment (`/common/`, `/organizations/`) of a token endpoint.
fn multi_tenant_segment(endpoint: &str) -> Option<&'static str> {
    ["/common/", "/organizations/"]
        .into_iter()
        .find(|alias| endpoint.contains(alias))
}

fn record<T>(grant: &'static str, result: &Result<T, ExchangeError>, started: std::time::Instant) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(ExchangeError::Idp(_)) => "refused",
        Err(ExchangeError::Upstream { timeout: true, .. }) => "timeout",
        Err(_) => "error",
    };
    metrics::counter!("tollgate_exchanges_total", "grant" => grant, "result" => outcome)
        .increment(1);
    metrics::histogram!("tollgate_idp_duration_seconds", "grant" => grant)
        .record(started.elapsed().as_secs_f64());
}

fn check_target(target: &str) -> Result<(), ExchangeError> {
    match crate::config::target_problem(target) {
        Some(why) => Err(ExchangeError::InvalidRequest(why.into())),
        None => Ok(()),
    }
}

/// How [`ExchangeError::ClientAuth`] reads: a wrong credential and one the platform has not
/// provided yet call for different actions from the operator.
fn client_auth_state(e: &ClientAuthError) -> &'static str {
    if e.is_unavailable() {
        "unavailable for now"
    } else {
        "misconfigured"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderConfig, Secret};

    fn exchanger(token_endpoint: &str) -> Exchanger {
        exchanger_named("entra_id", token_endpoint)
    }

    fn exchanger_named(name: &str, token_endpoint: &str) -> Exchanger {
        let provider = Provider::new(ProviderConfig {
            name: name.into(),
            client_id: "client".into(),
            client_secret: Some(Secret::new("secret")),
            issuer: Some("https://login.example/{tenantid}/v2.0".into()),
            jwks_uri: Some(
                "https://login.example/common/discovery/v2.0/keys"
                    .parse()
                    .unwrap(),
            ),
            token_endpoint: Some(token_endpoint.parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
        Exchanger::new(Validator::new(provider, 10), 10, Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn targets_that_are_blank_or_hold_control_characters_are_refused() {
        for bad in [
            "",
            "  ",
            "api://x/.default\n",
            "api://x\0",
            "api://x/\u{85}.default",
        ] {
            let err = check_target(bad).expect_err(bad);
            assert!(
                matches!(err, ExchangeError::InvalidRequest(_)),
                "{bad:?}: {err}"
            );
        }
        for good in [
            "api://x/.default",
            "https://graph.microsoft.com/User.Read",
            "api://\u{e9}t\u{e9}/.default",
        ] {
            assert!(check_target(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_multi_tenant_authority_is_replaced_by_the_users_tenant() {
        let tid = "66666666-7777-8888-9999-000000000000";
        for alias in ["common", "organizations"] {
            let x = exchanger(&format!("https://login.example/{alias}/oauth2/v2.0/token"));
            assert_eq!(
                x.token_endpoint(Some(tid)).unwrap(),
                format!("https://login.example/{tid}/oauth2/v2.0/token")
            );
            // Client credentials name no user tenant.
            assert_eq!(
                x.token_endpoint(None).unwrap(),
                format!("https://login.example/{alias}/oauth2/v2.0/token")
            );
            for bad in ["", "../../evil", "x?y=1", "a/b"] {
                assert!(
                    matches!(
                        x.token_endpoint(Some(bad)),
                        Err(ExchangeError::InvalidSubject(_))
                    ),
                    "{bad:?}"
                );
            }
        }
        let single = "https://login.example/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token";
        assert_eq!(exchanger(single).token_endpoint(Some(tid)).unwrap(), single);
    }

    // Single-threaded runtime: the spawned fetch task sees the thread's local recorder too.
    #[tokio::test(flavor = "current_thread")]
    async fn cache_metric_handles_are_registered_once_per_exchanger_and_labelled_by_provider() {
        let recorder = crate::test_metrics::TestRecorder::default();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let endpoint = "https://login.example/t/oauth2/v2.0/token";
        let fetch = || async {
            Ok(grants::TokenResponse {
                access_token: "exchanged".into(),
                expires_in: 3600,
                refresh_token: None,
                scope: None,
                id_token: None,
            })
        };
        for (name, calls) in [("entra_id", 5), ("other_idp", 3)] {
            let x = exchanger_named(name, endpoint);
            for _ in 0..calls {
                let t = x
                    .cached(
                        Grant::ClientCredentials,
                        "api://t/.default",
                        b"",
                        None,
                        false,
                        || fetch,
                    )
                    .await
                    .unwrap();
                assert_eq!(t.access_token(), "exchanged");
            }
        }
        let registered = recorder.registered();
        let of = |prefix: &str| {
            let mut v: Vec<&str> = registered
                .iter()
                .filter(|k| k.starts_with(prefix))
                .map(String::as_str)
                .collect();
            v.sort_unstable();
            v
        };
        // One registration per handle and exchanger, however many lookups.
        assert_eq!(
            of("tollgate_exchange_cache_entries"),
            [
                "tollgate_exchange_cache_entries{provider=entra_id}",
                "tollgate_exchange_cache_entries{provider=other_idp}"
            ]
        );
        assert_eq!(
            of("tollgate_exchange_cache_total"),
            [
                "tollgate_exchange_cache_total{grant=client_credentials,result=hit}",
                "tollgate_exchange_cache_total{grant=client_credentials,result=hit}",
                "tollgate_exchange_cache_total{grant=client_credentials,result=miss}",
                "tollgate_exchange_cache_total{grant=client_credentials,result=miss}",
            ]
        );
        let counts = recorder.counts();
        assert_eq!(
            counts["tollgate_exchange_cache_total{grant=client_credentials,result=hit}"],
            4 + 2
        );
        assert_eq!(
            counts["tollgate_exchange_cache_total{grant=client_credentials,result=miss}"],
            2
        );
        assert_eq!(
            counts["tollgate_exchanges_total{grant=client_credentials,result=ok}"],
            2
        );
    }
}
