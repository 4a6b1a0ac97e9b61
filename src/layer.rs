//! tollgate in process: a Tower layer that validates bearer tokens and puts [`Claims`] in the
//! request extensions, plus axum extractors (feature `axum`).
//!
//! The layer uses the sidecar's own [`Validator`] and [`Exchanger`], so an app embedding it gets
//! the same checks, the same caches and the same RFC 6750 answers as an app behind the proxy:
//!
//! | request | answer |
//! | --- | --- |
//! | no `Authorization` header | `401`, `WWW-Authenticate: Bearer realm="tollgate"` (passes with [`AuthLayer::optional`]) |
//! | not a single `Bearer` credential | `400`, `error="invalid_request"` |
//! | a token that does not validate | `401`, `error="invalid_token"` |
//! | valid, but no required scope or role | `403`, `error="insufficient_scope", scope="..."` |
//! | keys not loaded (IdP unreachable since start) | `503` |
//!
//! Every refusal also carries a JSON body `{"error": ..., "error_description": ...}`.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use tollgate::{Auth, Claims};
//!
//! let auth = Auth::builder()
//!     .well_known_url("https://login.microsoftonline.com/<tenant>/v2.0/.well-known/openid-configuration")
//!     .client_id("aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb")
//!     .build()
//!     .await?;
//! let app: Router = Router::new()
//!     .route("/me", get(|claims: Claims| async move { claims.subject().to_owned() }))
//!     .route_layer(auth.layer().require_scopes(["access_as_user"]));
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::config::{CacheConfig, ClientAuthMethod, Config, ConfigError, ProviderConfig, Secret};
use crate::exchange::{ExchangeError, Exchanger};
use crate::provider::{Provider, ProviderError};
use crate::validate::{Claims, ValidationError, Validator};

#[cfg(feature = "axum")]
pub use extract::AuthRejection;

/// Validation and exchange for one provider, built once and shared by layers and handlers.
///
/// Cheap to clone: clones share the signing keys, the validation cache and the exchange cache.
/// The keys are refreshed in the background until the last clone is dropped.
///
/// ```
/// # #[cfg(feature = "dev-idp")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use axum::{Router, body::Body, routing::get};
/// use http::{Request, StatusCode};
/// use tollgate::devidp::{ALICE, DEFAULT_TENANT_ID, DevIdp, DevIdpConfig, FRONTEND_CLIENT_ID, TOLLGATE_CLIENT_ID};
/// use tollgate::{Auth, Claims};
/// use tower::ServiceExt;
///
/// // A local OpenID provider stands in for Entra ID.
/// let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
/// let auth = Auth::builder()
///     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
///     .client_id(TOLLGATE_CLIENT_ID)
///     .build()
///     .await?;
/// let app = Router::new()
///     .route("/me", get(|claims: Claims| async move { claims.username().unwrap_or_default().to_owned() }))
///     .route_layer(auth.layer().require_scopes(["access_as_user"]));
///
/// let token = idp
///     .password_token(ALICE, FRONTEND_CLIENT_ID, "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/access_as_user")
///     .await?;
/// let request = Request::get("/me").header("authorization", format!("Bearer {token}"));
/// let response = app.clone().oneshot(request.body(Body::empty())?).await?;
/// assert_eq!(response.status(), StatusCode::OK);
///
/// let response = app.oneshot(Request::get("/me").body(Body::empty())?).await?;
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
/// idp.shutdown().await;
/// # Ok(()) }
/// # #[cfg(not(feature = "dev-idp"))]
/// # fn main() {}
/// ```
#[derive(Clone, Debug)]
pub struct Auth {
    validator: Validator,
    exchanger: Option<Exchanger>,
}

/// Why [`Auth`] could not be built. Messages never contain secrets.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tollgate::{Auth, config::ConfigError, layer::AuthError};
/// let err = Auth::builder().well_known_url("login.example").client_id("app").build().await.unwrap_err();
/// assert!(matches!(err, AuthError::Config(ConfigError::Invalid { ref option, .. }) if option == "well_known_url"));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The configuration is invalid; the message names the option.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The provider could not be set up or reached (discovery or JWKS).
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A client credential is configured but cannot be used (unreadable key file, ...).
    #[error(transparent)]
    Credential(#[from] ExchangeError),
}

impl Auth {
    /// Builds from a provider's configuration (the same `[[providers]]` entry and `[cache]` the
    /// sidecar reads), checked by the same rules as `tollgate check`.
    ///
    /// Keys are fetched now; when the IdP is down the error is returned (a library user decides
    /// whether to retry), and afterwards they refresh in the background. The [`Exchanger`] is
    /// there when a client credential is configured.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use tollgate::config::{Config, ProcessEnv};
    /// let config = Config::load(Some("tollgate.toml".as_ref()), &ProcessEnv)?;
    /// let auth = tollgate::Auth::from_config(&config.providers[0], &config.cache).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_config(
        provider: &ProviderConfig,
        cache: &CacheConfig,
    ) -> Result<Self, AuthError> {
        check_config(provider, cache)?;
        let p = Provider::new(provider.clone())?;
        let validator = Validator::new(p.clone(), cache.validation_capacity);
        let exchanger = if has_client_credential(provider) {
            Some(Exchanger::new(
                validator.clone(),
                cache.obo_capacity,
                cache.expiry_margin,
            )?)
        } else {
            None
        };
        p.refresh().await?;
        // The refresh task holds the provider weakly: it runs while anything built from this
        // `Auth` (a layer, a validator, an exchanger) is alive, whether or not the `Auth` is.
        drop(p.spawn_refresh());
        Ok(Self {
            validator,
            exchanger,
        })
    }

    /// A builder for code-first setups.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), tollgate::layer::AuthError> {
    /// let auth = tollgate::Auth::builder()
    ///     .well_known_url("https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration")
    ///     .client_id("aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb")
    ///     .client_secret(&std::env::var("AZURE_APP_CLIENT_SECRET").unwrap_or_default())
    ///     .tenants(["11111111-2222-3333-4444-555555555555"])
    ///     .build()
    ///     .await?;
    /// assert!(auth.exchanger().is_some());
    /// # Ok(()) }
    /// ```
    pub fn builder() -> AuthBuilder {
        AuthBuilder {
            provider: ProviderConfig::default(),
            cache: CacheConfig::default(),
            error: None,
        }
    }

    /// A layer requiring a valid token (add requirements with its methods).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # let hello = tower::service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello"))) });
    /// # let ask = |token: &str| http::Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
    /// use tower::{Layer, ServiceExt};
    /// let service = auth.layer().layer(hello); // `hello` answers "hello"
    /// let response = service.clone().oneshot(ask(&token)).await?;
    /// assert_eq!(response.status(), http::StatusCode::OK);
    /// let response = service.oneshot(http::Request::new(())).await?;
    /// assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED); // no token
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn layer(&self) -> AuthLayer {
        AuthLayer {
            inner: Arc::new(Requirements {
                validator: self.validator.clone(),
                scopes: Vec::new(),
                roles: Vec::new(),
                optional: false,
                auth_context: None,
                query_token: false,
                allow_unscoped: None,
                allowed_client_ids: Vec::new(),
            }),
        }
    }

    /// The validator (for tokens that do not arrive in an `Authorization` header).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # use tollgate::devidp::ALICE_OID;
    /// // e.g. a token sent as a WebSocket subprotocol
    /// let claims = auth.validator().validate(&token).await?;
    /// assert_eq!(claims.oid(), Some(ALICE_OID));
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// The exchanger (On-Behalf-Of, client credentials), when a client credential is configured.
    /// It shares its token cache with every clone of this `Auth`.
    ///
    /// ```no_run
    /// # async fn f(auth: tollgate::Auth, user_token: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// let exchanger = auth.exchanger().ok_or("no client credential configured")?;
    /// let downstream = exchanger
    ///     .on_behalf_of(user_token, "api://eeeeeeee-6666-7777-8888-ffffffffffff/.default", false)
    ///     .await?;
    /// let app_token = exchanger
    ///     .client_credentials("api://eeeeeeee-6666-7777-8888-ffffffffffff/.default", false)
    ///     .await?;
    /// # let _ = (downstream, app_token);
    /// # Ok(()) }
    /// ```
    pub fn exchanger(&self) -> Option<&Exchanger> {
        self.exchanger.as_ref()
    }
}

/// Builds an [`Auth`] from code; see [`Auth::builder`]. Errors (a malformed URL, a missing client
/// id...) are reported by [`AuthBuilder::build`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tollgate::Auth;
/// let err = Auth::builder().well_known_url("https://login.example/.well-known/openid-configuration").build().await.unwrap_err();
/// assert!(err.to_string().starts_with("providers[0].client_id: missing"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AuthBuilder {
    provider: ProviderConfig,
    cache: CacheConfig,
    error: Option<(&'static str, String)>,
}

impl AuthBuilder {
    /// The OpenID discovery URL (`https`, or `http` on a loopback host).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tollgate::Auth;
    /// let plain_http = "http://login.example/v2.0/.well-known/openid-configuration";
    /// let err = Auth::builder().well_known_url(plain_http).client_id("app").build().await.unwrap_err();
    /// assert!(err.to_string().starts_with("providers[0].well_known_url: must be https"));
    /// # }
    /// ```
    pub fn well_known_url(mut self, url: &str) -> Self {
        self.provider.well_known_url = self.parse_url("well_known_url", url);
        self
    }

    /// Explicit issuer and JWKS URL instead of discovery. The issuer may contain `{tenantid}`
    /// (then list the accepted [`tenants`](Self::tenants)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tollgate::Auth;
    /// let err = Auth::builder()
    ///     .issuer("https://login.microsoftonline.com/{tenantid}/v2.0", "https://login.microsoftonline.com/common/discovery/v2.0/keys")
    ///     .client_id("app")
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("providers[0].allowed_tenants: required"));
    /// # }
    /// ```
    pub fn issuer(mut self, issuer: &str, jwks_uri: &str) -> Self {
        self.provider.issuer = Some(issuer.to_owned());
        self.provider.jwks_uri = self.parse_url("jwks_uri", jwks_uri);
        self
    }

    /// The token endpoint, for exchanges when the provider is set up with
    /// [`issuer`](Self::issuer) rather than discovery (discovery supplies it otherwise).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tollgate::Auth;
    /// let err = Auth::builder()
    ///     .issuer("https://login.example/v2.0", "https://login.example/keys")
    ///     .token_endpoint("not a url")
    ///     .client_id("app")
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("token_endpoint"), "{err}");
    /// # }
    /// ```
    pub fn token_endpoint(mut self, url: &str) -> Self {
        self.provider.token_endpoint = self.parse_url("token_endpoint", url);
        self
    }

    /// This app's client id (also the default audience).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// let auth = tollgate::Auth::builder()
    ///     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .build()
    ///     .await?;
    /// assert_eq!(auth.validator().provider().config().client_id, TOLLGATE_CLIENT_ID);
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn client_id(mut self, id: &str) -> Self {
        self.provider.client_id = id.to_owned();
        self
    }

    /// A client secret, enabling the exchanger (On-Behalf-Of, client credentials).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate::devidp::TOLLGATE_CLIENT_SECRET;
    /// let auth = tollgate::Auth::builder()
    ///     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .client_secret(TOLLGATE_CLIENT_SECRET)
    ///     .build()
    ///     .await?;
    /// assert!(auth.exchanger().is_some());
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn client_secret(mut self, secret: &str) -> Self {
        self.provider.client_secret = Some(Secret::new(secret));
        self.provider.client_auth = ClientAuthMethod::ClientSecretPost;
        self
    }

    /// Accepted audiences (default: client id and `api://<client id>`).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// let auth = tollgate::Auth::builder()
    ///     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .audiences(["api://another-app"])
    ///     .build()
    ///     .await?;
    /// let err = auth.validator().validate(&token).await.unwrap_err(); // `aud` is this app
    /// assert_eq!(err.to_string(), "the token is not meant for this audience");
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn audiences<I: IntoIterator<Item = S>, S: Into<String>>(mut self, audiences: I) -> Self {
        self.provider.audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// Accepted algorithms (default RS256); shared-secret (HS*) algorithms are refused.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use jsonwebtoken::Algorithm;
    /// let err = tollgate::Auth::builder()
    ///     .well_known_url("https://login.example/.well-known/openid-configuration")
    ///     .client_id("app")
    ///     .algorithms(&[Algorithm::RS256, Algorithm::HS256])
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("HS256 is a shared-secret algorithm"));
    /// # }
    /// ```
    pub fn algorithms(mut self, algorithms: &[jsonwebtoken::Algorithm]) -> Self {
        self.provider.algorithms = algorithms.to_vec();
        self
    }

    /// Tenants accepted with a `{tenantid}` issuer; `["*"]` accepts any.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # use tollgate::devidp::SECOND_TENANT_ID;
    /// let auth = tollgate::Auth::builder()
    ///     .issuer(&idp.issuer("{tenantid}"), &idp.jwks_uri("common"))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .tenants([SECOND_TENANT_ID]) // Alice's token is from DEFAULT_TENANT_ID
    ///     .build()
    ///     .await?;
    /// let err = auth.validator().validate(&token).await.unwrap_err();
    /// assert_eq!(err.to_string(), "the token's tenant is not allowed");
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn tenants<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tenants: I) -> Self {
        self.provider.allowed_tenants = tenants.into_iter().map(Into::into).collect();
        self
    }

    /// The tenant id app tokens ([`Exchanger::client_credentials`]) are asked for when the
    /// discovered token endpoint is a multi-tenant `common`/`organizations` one. Users'
    /// On-Behalf-Of exchanges still go to each user's own tenant.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = tollgate::Auth::builder()
    ///     .well_known_url("https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration")
    ///     .client_id("aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb")
    ///     .client_credentials_tenant("contoso.onmicrosoft.com") // a domain, not a tenant id
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("providers[0].client_credentials_tenant: must be a tenant id"));
    /// # }
    /// ```
    pub fn client_credentials_tenant(mut self, tenant_id: &str) -> Self {
        self.provider.client_credentials_tenant = Some(tenant_id.to_owned());
        self
    }

    /// Never hand out a cached exchanged token closer than this to its expiry (default 120 s).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate::devidp::{DOWNSTREAM_APP_ID_URI, TOLLGATE_CLIENT_SECRET};
    /// let auth = tollgate::Auth::builder()
    ///     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .client_secret(TOLLGATE_CLIENT_SECRET)
    ///     .expiry_margin(std::time::Duration::from_secs(24 * 3600)) // longer than any token lives
    ///     .build()
    ///     .await?;
    /// let exchanger = auth.exchanger().unwrap();
    /// let target = format!("{DOWNSTREAM_APP_ID_URI}/.default");
    /// exchanger.client_credentials(&target, false).await?;
    /// exchanger.client_credentials(&target, false).await?;
    /// assert_eq!(idp.token_requests("client_credentials"), 2); // nothing could be reused
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.cache.expiry_margin = margin;
        self
    }

    /// Checks the settings, loads the keys and builds.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tollgate::layer::AuthError;
    /// let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(); // closed again
    /// let err = tollgate::Auth::builder()
    ///     .well_known_url(&format!("http://127.0.0.1:{port}/v2.0/.well-known/openid-configuration"))
    ///     .client_id("app")
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, AuthError::Provider(_))); // the IdP is down: retry later
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Auth, AuthError> {
        if let Some((option, message)) = self.error {
            return Err(ConfigError::Invalid {
                option: option.to_owned(),
                message,
            }
            .into());
        }
        Auth::from_config(&self.provider, &self.cache).await
    }

    fn parse_url(&mut self, option: &'static str, url: &str) -> Option<url::Url> {
        match url::Url::parse(url) {
            Ok(u) => Some(u),
            Err(e) => {
                self.error
                    .get_or_insert((option, format!("not a valid URL: {e}")));
                None
            }
        }
    }
}

/// A Tower layer validating bearer tokens; see [`Auth::layer`].
///
/// On success the request reaches the inner service with [`Claims`] and [`BearerToken`] in its
/// extensions; otherwise the layer answers itself (see the [module](self) table) and the inner
/// service is not called. Works with any `http` service, axum or not; in axum, `route_layer`
/// protects only the routes above it, and unmatched paths keep answering 404.
///
/// ```no_run
/// # async fn f(auth: tollgate::Auth) {
/// use axum::{Router, routing::{get, post}};
/// use tollgate::Claims;
///
/// let app: Router = Router::new()
///     .route("/reports", post(|c: Claims| async move { format!("created by {}", c.subject()) }))
///     .route_layer(auth.layer().require_roles(["Writer"]))
///     .route("/", get(|c: Option<Claims>| async move {
///         c.and_then(|c| c.name().map(str::to_owned)).unwrap_or_else(|| "anonymous".into())
///     }))
///     .layer(auth.layer().optional());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AuthLayer {
    // One Arc so that the per-request clone in `call` is a single reference-count increment.
    inner: Arc<Requirements>,
}

#[derive(Clone, Debug)]
struct Requirements {
    validator: Validator,
    scopes: Vec<String>,
    roles: Vec<String>,
    optional: bool,
    auth_context: Option<String>,
    query_token: bool,
    /// `None`: the provider's `allow_unscoped_tokens`.
    allow_unscoped: Option<bool>,
    allowed_client_ids: Vec<String>,
}

impl AuthLayer {
    /// Any one of these delegated scopes (`scp`) is required; otherwise `403 insufficient_scope`.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # let hello = tower::service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello"))) });
    /// # let ask = |token: &str| http::Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
    /// use tower::{Layer, ServiceExt};
    /// let service = auth.layer().require_scopes(["access_as_user"]).layer(hello.clone());
    /// assert_eq!(service.oneshot(ask(&token)).await?.status(), 200);
    /// let service = auth.layer().require_scopes(["Files.Read"]).layer(hello);
    /// assert_eq!(service.oneshot(ask(&token)).await?.status(), 403);
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn require_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        Arc::make_mut(&mut self.inner).scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Any one of these app roles (`roles`) is required; otherwise `403 insufficient_scope`.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # let hello = tower::service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello"))) });
    /// # let ask = |token: &str| http::Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
    /// use tower::{Layer, ServiceExt};
    /// let service = auth.layer().require_roles(["Reports.Admin"]).layer(hello);
    /// let response = service.oneshot(ask(&token)).await?;
    /// assert_eq!(response.status(), 403);
    /// assert!(response.headers()["www-authenticate"].to_str()?.ends_with("scope=\"Reports.Admin\""));
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn require_roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        Arc::make_mut(&mut self.inner).roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// An Entra Conditional Access authentication context (`c1` ... `c99`) the token's `acrs`
    /// must hold. Any other token gets `401` with the `insufficient_claims` challenge asking for
    /// it (and the IdP's `authorization_uri`), which MSAL answers by stepping the user up.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # let hello = tower::service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello"))) });
    /// # let ask = |token: &str| http::Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
    /// use tower::{Layer, ServiceExt};
    /// let service = auth.layer().require_auth_context("c1").layer(hello);
    /// let response = service.oneshot(ask(&token)).await?; // alice has not stepped up
    /// assert_eq!(response.status(), 401);
    /// assert!(response.headers()["www-authenticate"].to_str()?.contains("error=\"insufficient_claims\", claims="));
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn require_auth_context(mut self, id: &str) -> Self {
        Arc::make_mut(&mut self.inner).auth_context = Some(id.to_owned());
        self
    }

    /// Also take the token from an `access_token` query parameter (RFC 6750 §2.3) when the
    /// request has no `Authorization` header: browsers cannot set headers on a WebSocket or
    /// EventSource request, so SignalR-style clients send it this way. A token in both places
    /// is `400 invalid_request` (RFC 6750 §2 allows one method per request).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # let hello = tower::service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello"))) });
    /// use tower::{Layer, ServiceExt};
    /// let hub = http::Request::get(format!("/hub?access_token={token}")).body(())?;
    /// let service = auth.layer().allow_query_token().layer(hello.clone());
    /// assert_eq!(service.oneshot(hub).await?.status(), 200);
    /// let hub = http::Request::get(format!("/hub?access_token={token}")).body(())?;
    /// assert_eq!(auth.layer().layer(hello).oneshot(hub).await?.status(), 401); // not allowed
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn allow_query_token(mut self) -> Self {
        Arc::make_mut(&mut self.inner).query_token = true;
        self
    }

    /// Accept tokens that carry neither `scp` nor `roles` (overriding the provider's
    /// `allow_unscoped_tokens`). By default they get `403 insufficient_scope`: such a token is
    /// usually an app-only token of any app in the tenant that asked for `api://<this
    /// app>/.default` without being granted a role (Microsoft.Identity.Web's IDW10201). Allow them
    /// only where the app authorises callers itself, e.g. by [`Claims::client_id`].
    ///
    /// ```no_run
    /// # async fn f(auth: tollgate::Auth) {
    /// let app: axum::Router = axum::Router::new()
    ///     .route("/jobs", axum::routing::post(|| async { "queued" }))
    ///     .route_layer(auth.layer().allow_unscoped_tokens());
    /// # }
    /// ```
    pub fn allow_unscoped_tokens(mut self) -> Self {
        Arc::make_mut(&mut self.inner).allow_unscoped = Some(true);
        self
    }

    /// Accept only tokens issued to one of these clients (`azp`, or `appid` in v1 tokens), on
    /// top of the provider's `allowed_client_ids`; any other is `401 invalid_token`.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # let hello = tower::service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello"))) });
    /// # let ask = |token: &str| http::Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
    /// use tower::{Layer, ServiceExt};
    /// let service = auth.layer().allowed_client_ids([FRONTEND_CLIENT_ID]).layer(hello.clone());
    /// assert_eq!(service.oneshot(ask(&token)).await?.status(), 200);
    /// let service = auth.layer().allowed_client_ids(["another-client"]).layer(hello);
    /// assert_eq!(service.oneshot(ask(&token)).await?.status(), 401);
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn allowed_client_ids<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        ids: I,
    ) -> Self {
        let mut ids: Vec<String> = ids.into_iter().map(Into::into).collect();
        crate::config::normalize_client_ids(&mut ids);
        Arc::make_mut(&mut self.inner).allowed_client_ids = ids;
        self
    }

    /// Requests without a token pass (without [`Claims`]); a bad token is still refused.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate::devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # let hello = tower::service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello"))) });
    /// # let ask = |token: &str| http::Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
    /// use tower::{Layer, ServiceExt};
    /// let service = auth.layer().optional().layer(hello);
    /// assert_eq!(service.clone().oneshot(http::Request::new(())).await?.status(), 200);
    /// assert_eq!(service.oneshot(ask("not-a-jwt")).await?.status(), 401);
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn optional(mut self) -> Self {
        Arc::make_mut(&mut self.inner).optional = true;
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces. Any `http` service with a body buildable from a `String`
/// (axum's `Body`, `http_body_util::Full<Bytes>`...) can be wrapped:
///
/// ```no_run
/// # async fn f(auth: tollgate::Auth) {
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tollgate::Claims;
///
/// let service = tower::ServiceBuilder::new()
///     .layer(auth.layer())
///     .service(tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
///         let subject = req.extensions().get::<Claims>().map(|c| c.subject().to_owned());
///         Ok::<_, Infallible>(http::Response::new(Full::<Bytes>::from(subject.unwrap_or_default())))
///     }));
/// // Serve it with hyper: hyper_util::service::TowerToHyperService::new(service).
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

/// The bearer token of an authenticated request, for On-Behalf-Of calls in handlers.
///
/// The layer puts it in the request extensions next to [`Claims`]; as an axum extractor it also
/// works without the layer (the token is then only parsed, not validated). Its `Debug` output is
/// redacted.
///
/// ```no_run
/// use axum::{Json, extract::State, http::StatusCode};
/// use tollgate::{Auth, BearerToken};
///
/// async fn call_downstream(
///     State(auth): State<Auth>,
///     bearer: BearerToken,
/// ) -> Result<String, (StatusCode, Json<serde_json::Value>)> {
///     let exchanger = auth.exchanger().ok_or((StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({}))))?;
///     let token = exchanger
///         .on_behalf_of(&bearer.0, "api://eeeeeeee-6666-7777-8888-ffffffffffff/.default", false)
///         .await
///         .map_err(|e| (e.status(), Json(e.to_json())))?;
///     Ok(format!("downstream token valid for {} s", token.expires_in()))
/// }
/// ```
#[derive(Clone)]
pub struct BearerToken(pub String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AuthService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: From<String>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let sent =
            crate::validate::sent_token(req.headers(), req.uri(), self.layer.inner.query_token);
        let token = match sent {
            Ok(Some(token)) => token.into_string(),
            Ok(None) if self.layer.inner.optional => {
                return ResponseFuture::new(State::Calling {
                    future: self.inner.call(req),
                });
            }
            Ok(None) => return ResponseFuture::rejected(&ValidationError::Missing),
            Err(e) => return ResponseFuture::rejected(&e),
        };
        // The clone has not been polled ready: keep it for the next call and let the ready one
        // serve this request once the token is validated.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = Arc::clone(&self.layer.inner);
        let validation = Box::pin(async move {
            let claims = layer.validator.validate(&token).await?;
            claims.check(&layer.scopes, &layer.roles)?;
            let provider = layer.validator.provider().config();
            claims.check_access(
                layer
                    .allow_unscoped
                    .unwrap_or(provider.allow_unscoped_tokens),
                [&provider.allowed_client_ids, &layer.allowed_client_ids],
            )?;
            if let Some(wanted) = &layer.auth_context
                && !crate::validate::has_auth_context(&claims, wanted)
            {
                let authorization_uri = layer
                    .validator
                    .provider()
                    .authorization_endpoint()
                    .map(String::from);
                return Err(Refusal::AuthContext {
                    wanted: wanted.clone(),
                    authorization_uri,
                });
            }
            Ok((claims, token))
        });
        ResponseFuture::new(State::Validating {
            validation,
            inner,
            req,
        })
    }
}

type Validation = Pin<Box<dyn Future<Output = Result<(Claims, String), Refusal>> + Send>>;

/// Why the layer answers a request itself.
enum Refusal {
    Invalid(ValidationError),
    /// The token lacks the `wanted` authentication context.
    AuthContext {
        wanted: String,
        authorization_uri: Option<String>,
    },
}

impl From<ValidationError> for Refusal {
    fn from(e: ValidationError) -> Self {
        Self::Invalid(e)
    }
}

impl Refusal {
    fn to_response<B: From<String>>(&self) -> Response<B> {
        match self {
            Self::Invalid(e) => e.to_response(),
            Self::AuthContext {
                wanted,
                authorization_uri,
            } => crate::validate::auth_context_challenge(wanted, authorization_uri.as_deref()),
        }
    }
}

pin_project! {
    /// The response future of [`AuthService`]: validates the token, then runs the inner service's
    /// future (or answers the refusal).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate::devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// use tower::{Layer, Service, ServiceExt};
    /// let hello = tower::service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
    /// });
    /// let mut service = auth.layer().layer(hello);
    /// let future: tollgate::layer::ResponseFuture<_, ()> = service.ready().await?.call(http::Request::new(()));
    /// assert_eq!(future.await?.status(), 401); // no token: answered without calling `hello`
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Validating {
            validation: Validation,
            inner: S,
            req: Request<ReqB>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
        Rejected {
            response: S::Response,
        },
        Done,
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn new(state: State<S, ReqB>) -> Self {
        Self { state }
    }
}

impl<S, ReqB, ResB> ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: From<String>,
{
    fn rejected(error: &ValidationError) -> Self {
        Self::new(State::Rejected {
            response: error.to_response(),
        })
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: From<String>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Validating { validation, .. } => {
                    let result = ready!(validation.as_mut().poll(cx));
                    let StateReplace::Validating {
                        mut inner, mut req, ..
                    } = state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("the state was Validating just above");
                    };
                    match result {
                        Ok((claims, token)) => {
                            req.extensions_mut().insert(claims);
                            req.extensions_mut().insert(BearerToken(token));
                            let future = inner.call(req);
                            state.set(State::Calling { future });
                        }
                        Err(e) => state.set(State::Rejected {
                            response: e.to_response(),
                        }),
                    }
                }
                StateProj::Calling { future } => {
                    let output = ready!(future.poll(cx));
                    state.set(State::Done);
                    return Poll::Ready(output);
                }
                StateProj::Rejected { .. } => {
                    let StateReplace::Rejected { response } =
                        state.as_mut().project_replace(State::Done)
                    else {
                        unreachable!("the state was Rejected just above");
                    };
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => panic!("tollgate ResponseFuture polled after completion"),
            }
        }
    }
}

impl<S, ReqB> std::fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Validating { .. } => "validating",
            State::Calling { .. } => "calling",
            State::Rejected { .. } => "rejected",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// The sidecar's configuration rules, applied to the one provider the library uses.
fn check_config(provider: &ProviderConfig, cache: &CacheConfig) -> Result<(), ConfigError> {
    Config {
        providers: vec![provider.clone()],
        cache: cache.clone(),
        ..Config::default()
    }
    .validate()
}

/// Without a credential the app only validates; a credential that is configured but unusable is
/// an error rather than a silently missing exchanger.
fn has_client_credential(provider: &ProviderConfig) -> bool {
    match provider.client_auth {
        ClientAuthMethod::ClientSecretPost | ClientAuthMethod::ClientSecretBasic => {
            provider.client_secret.is_some() || provider.client_secret_file.is_some()
        }
        ClientAuthMethod::PrivateKeyJwt | ClientAuthMethod::Federated => true,
    }
}

#[cfg(feature = "axum")]
mod extract {
    //! axum extractors: [`Claims`], `Option<Claims>` and [`BearerToken`].

    use axum::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum::response::{IntoResponse, Response};
    use http::request::Parts;

    use super::BearerToken;
    use crate::validate::{Claims, ValidationError, bearer_token};

    /// The rejection of tollgate's extractors: the same RFC 6750 answer as the proxy and the
    /// layer (`Claims` on a route without the layer answers `401 Bearer realm="tollgate"`).
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use tollgate::{layer::AuthRejection, validate::ValidationError};
    /// let response = AuthRejection(ValidationError::Missing).into_response();
    /// assert_eq!(response.status(), 401);
    /// assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    /// ```
    #[derive(Debug)]
    pub struct AuthRejection(pub ValidationError);

    impl IntoResponse for AuthRejection {
        fn into_response(self) -> Response {
            self.0.to_response()
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for Claims {
        type Rejection = AuthRejection;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Claims>()
                .cloned()
                .ok_or(AuthRejection(ValidationError::Missing))
        }
    }

    impl<S: Send + Sync> OptionalFromRequestParts<S> for Claims {
        type Rejection = std::convert::Infallible;

        async fn from_request_parts(
            parts: &mut Parts,
            _: &S,
        ) -> Result<Option<Self>, Self::Rejection> {
            Ok(parts.extensions.get::<Claims>().cloned())
        }
    }

    impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
        type Rejection = AuthRejection;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            if let Some(t) = parts.extensions.get::<BearerToken>() {
                return Ok(t.clone());
            }
            match bearer_token(&parts.headers) {
                Ok(Some(t)) => Ok(BearerToken(t.to_owned())),
                Ok(None) => Err(AuthRejection(ValidationError::Missing)),
                Err(e) => Err(AuthRejection(e)),
            }
        }
    }
}
