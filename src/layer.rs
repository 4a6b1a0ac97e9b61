//! tollgate in process: a Tower layer that validates bearer tokens and puts [`Claims`] in the
//! request extensions, plus axum extractors (feature `axum`).
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
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};

use crate::config::{CacheConfig, ClientAuthMethod, ProviderConfig, Secret};
use crate::exchange::Exchanger;
use crate::provider::{Provider, ProviderError};
use crate::validate::{Claims, ValidationError, Validator, bearer_token};

/// Validation and exchange for one provider, built once and shared by layers and handlers.
#[derive(Clone, Debug)]
pub struct Auth {
    validator: Validator,
    exchanger: Option<Exchanger>,
    _refresh: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why [`Auth`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The provider could not be set up or reached.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The configuration is incomplete.
    #[error("{0}")]
    Config(String),
}

impl Auth {
    /// Builds from a provider's configuration (the same `[[providers]]` entry the sidecar reads).
    /// Keys are fetched now; when the IdP is down the error is returned (a library user decides
    /// whether to retry), and afterwards they refresh in the background.
    pub async fn from_config(
        provider: &ProviderConfig,
        cache: &CacheConfig,
    ) -> Result<Self, AuthError> {
        let p = Provider::new(provider.clone())?;
        p.refresh().await?;
        let refresh = p.spawn_refresh();
        let validator = Validator::new(p, cache.validation_capacity);
        let exchanger =
            Exchanger::new(validator.clone(), cache.obo_capacity, cache.expiry_margin).ok();
        Ok(Self {
            validator,
            exchanger,
            _refresh: Arc::new(AbortOnDrop(refresh)),
        })
    }

    /// A builder for code-first setups.
    pub fn builder() -> AuthBuilder {
        AuthBuilder {
            provider: ProviderConfig::default(),
            cache: CacheConfig::default(),
        }
    }

    /// A layer requiring a valid token (add requirements with its methods).
    pub fn layer(&self) -> AuthLayer {
        AuthLayer {
            validator: self.validator.clone(),
            scopes: Arc::from([]),
            roles: Arc::from([]),
            optional: false,
        }
    }

    /// The validator.
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// The exchanger, when a client credential is configured.
    pub fn exchanger(&self) -> Option<&Exchanger> {
        self.exchanger.as_ref()
    }
}

/// Builds an [`Auth`] from code.
#[derive(Debug, Clone)]
pub struct AuthBuilder {
    provider: ProviderConfig,
    cache: CacheConfig,
}

impl AuthBuilder {
    /// The OpenID discovery URL.
    pub fn well_known_url(mut self, url: &str) -> Self {
        self.provider.well_known_url = url::Url::parse(url).ok();
        self
    }

    /// Explicit issuer and JWKS URL instead of discovery.
    pub fn issuer(mut self, issuer: &str, jwks_uri: &str) -> Self {
        self.provider.issuer = Some(issuer.to_owned());
        self.provider.jwks_uri = url::Url::parse(jwks_uri).ok();
        self
    }

    /// This app's client id (also the default audience).
    pub fn client_id(mut self, id: &str) -> Self {
        self.provider.client_id = id.to_owned();
        self
    }

    /// A client secret, enabling the exchanger (On-Behalf-Of, client credentials).
    pub fn client_secret(mut self, secret: &str) -> Self {
        self.provider.client_secret = Some(Secret::new(secret));
        self.provider.client_auth = ClientAuthMethod::ClientSecretPost;
        self
    }

    /// Accepted audiences (default: client id and `api://<client id>`).
    pub fn audiences<I: IntoIterator<Item = S>, S: Into<String>>(mut self, audiences: I) -> Self {
        self.provider.audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// Accepted algorithms (default RS256).
    pub fn algorithms(mut self, algorithms: &[jsonwebtoken::Algorithm]) -> Self {
        self.provider.algorithms = algorithms.to_vec();
        self
    }

    /// Tenants accepted with a `{tenantid}` issuer.
    pub fn tenants<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tenants: I) -> Self {
        self.provider.allowed_tenants = tenants.into_iter().map(Into::into).collect();
        self
    }

    /// Never hand out a cached exchanged token closer than this to its expiry (default 120 s).
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.cache.expiry_margin = margin;
        self
    }

    /// Builds and loads the keys.
    pub async fn build(self) -> Result<Auth, AuthError> {
        if self.provider.client_id.is_empty() {
            return Err(AuthError::Config("client_id is required".into()));
        }
        if self.provider.well_known_url.is_none()
            && (self.provider.issuer.is_none() || self.provider.jwks_uri.is_none())
        {
            return Err(AuthError::Config(
                "a well-known URL, or an issuer and JWKS URL, is required".into(),
            ));
        }
        Auth::from_config(&self.provider, &self.cache).await
    }
}

/// A Tower layer validating bearer tokens; see [`Auth::layer`].
#[derive(Clone, Debug)]
pub struct AuthLayer {
    validator: Validator,
    scopes: Arc<[String]>,
    roles: Arc<[String]>,
    optional: bool,
}

impl AuthLayer {
    /// Any one of these scopes (`scp`) is required.
    pub fn require_scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Any one of these roles (`roles`) is required.
    pub fn require_roles<I: IntoIterator<Item = S>, S: Into<String>>(mut self, roles: I) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Requests without a token pass (without [`Claims`]); a bad token is still refused.
    pub fn optional(mut self) -> Self {
        self.optional = true;
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

/// The service [`AuthLayer`] produces.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

/// The bearer token of an authenticated request, for On-Behalf-Of calls in handlers.
#[derive(Clone)]
pub struct BearerToken(pub String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// The response future of [`AuthService`].
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for AuthService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: From<String>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The clone is the one that was not polled ready; swap so the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            match authenticate(&layer, req.headers()).await {
                Ok(Some((claims, token))) => {
                    req.extensions_mut().insert(claims);
                    req.extensions_mut().insert(BearerToken(token));
                }
                Ok(None) => {}
                Err(e) => return Ok(e.to_response()),
            }
            inner.call(req).await
        })
    }
}

async fn authenticate(
    layer: &AuthLayer,
    headers: &http::HeaderMap,
) -> Result<Option<(Claims, String)>, ValidationError> {
    let token = match bearer_token(headers)? {
        Some(t) => t,
        None if layer.optional => return Ok(None),
        None => return Err(ValidationError::Missing),
    };
    let claims = layer.validator.validate(token).await?;
    claims.check(&layer.scopes, &layer.roles)?;
    Ok(Some((claims, token.to_owned())))
}

#[cfg(feature = "axum")]
mod extract {
    //! axum extractors: [`Claims`], `Option<Claims>` and [`BearerToken`].

    use axum::extract::{FromRequestParts, OptionalFromRequestParts};
    use axum::response::{IntoResponse, Response};
    use http::request::Parts;

    use super::BearerToken;
    use crate::validate::{Claims, ValidationError, bearer_token};

    /// The rejection of tollgate's extractors: the same RFC 6750 answer as the proxy.
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

#[cfg(feature = "axum")]
pub use extract::AuthRejection;
