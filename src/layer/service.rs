//! The Tower middleware: [`AuthLayer`], [`AuthService`] and their [`ResponseFuture`], side by
//! side as tower-http lays out its middlewares.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::validate::{Claims, ValidationError, Validator};

/// A Tower layer validating bearer tokens; see [`Auth::layer`](super::Auth::layer).
///
/// On success the request reaches the inner service with [`Claims`] and [`BearerToken`] in its
/// extensions; otherwise the layer answers itself (see the [module](super) table) and the inner
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
    /// No requirement beyond a valid token; the builder methods below add them.
    pub(super) fn new(validator: Validator) -> Self {
        Self {
            inner: Arc::new(Requirements {
                validator,
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

    /// Any one of these delegated scopes (`scp`) is required; otherwise `403 insufficient_scope`.
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
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
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
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
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
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
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
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
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
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let auth = tollgate::Auth::builder().well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID)).client_id(TOLLGATE_CLIENT_ID).build().await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
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
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
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
