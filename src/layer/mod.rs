//! tollgate in process: a Tower layer that validates bearer tokens and puts [`Claims`](crate::Claims) in the
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

mod builder;
#[cfg(feature = "axum")]
mod extract;
mod service;

use crate::config::{CacheConfig, ClientAuthMethod, Config, ConfigError, ProviderConfig};
use crate::exchange::{ExchangeError, Exchanger};
use crate::provider::{Provider, ProviderError};
use crate::validate::Validator;

pub use builder::AuthBuilder;
#[cfg(feature = "axum")]
pub use extract::AuthRejection;
pub use service::{AuthLayer, AuthService, BearerToken, ResponseFuture};
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
/// use tollgate_devidp::{ALICE, DEFAULT_TENANT_ID, DevIdp, DevIdpConfig, FRONTEND_CLIENT_ID, TOLLGATE_CLIENT_ID};
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
        // One provider: its two caches share `max_memory`.
        let share = cache.max_memory_per_cache(1);
        let validator = Validator::with_memory(p.clone(), cache.validation_capacity, share);
        let exchanges = provider.grant != crate::config::ProviderGrant::IntrospectOnly;
        let exchanger = if exchanges && has_client_credential(provider) {
            Some(Exchanger::with_memory(
                validator.clone(),
                cache.obo_capacity,
                share,
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
        AuthBuilder::new()
    }

    /// A layer requiring a valid token (add requirements with its methods).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
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
        AuthLayer::new(self.validator.clone())
    }

    /// The validator (for tokens that do not arrive in an `Authorization` header).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # use tollgate_devidp::ALICE_OID;
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
