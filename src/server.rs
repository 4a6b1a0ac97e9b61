//! The sidecar: three listeners built from one [`Config`], and where each request goes.
//!
//! - **public** (`listen.public`): login routes when `[login]` is on, else every request goes to
//!   `public_request`: path normalised (`crate::path`), route lookup (longest prefix, ASCII case
//!   ignored), spoofed `X-Auth-*` headers removed, bearer
//!   token validated and route requirements checked, identity headers added, then the forwarder.
//! - **api** (`listen.api`): the local token API (`crate::api`).
//! - **admin** (`listen.admin`): `/healthz`, `/readyz`, `/metrics` (`crate::admin`).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate::config::{Config, ProcessEnv};
//! let config = Config::load(Some("tollgate.toml".as_ref()), &ProcessEnv)?;
//! let server = tollgate::server::Server::bind(config).await?;
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access_log::{AccessLogLayer, AccessNote};
use crate::config::{AuthMode, Config};
use crate::exchange::{ExchangeError, Exchanger};
use crate::http_server::{self, ServerLimits};
use crate::provider::{Provider, ProviderError};
use crate::proxy::{Forwarder, UpstreamSettings, json_error};
use crate::routes::{Route, RouteTable};
use crate::store::TokenStore;
use crate::validate::{Claims, QUERY_TOKEN, SentToken, ValidationError, Validator};

/// Errors starting or running the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A provider could not be built.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// A configured part could not start.
    #[error("{0}")]
    Start(String),
}

/// Everything a request handler needs, shared by all listeners.
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) providers: HashMap<String, (Arc<Provider>, Validator)>,
    pub(crate) routes: RouteTable,
    pub(crate) forwarder: Forwarder,
    /// Per provider: the exchanger, or why it could not be built (no client credential).
    pub(crate) exchangers: HashMap<String, Result<Exchanger, String>>,
    /// The per-user token store (only with `[login]`).
    pub(crate) store: Option<Arc<dyn TokenStore>>,
    /// One refresh at a time per (provider, user, target) for delegated tokens.
    pub(crate) refresh_flights: moka::future::Cache<[u8; 32], (String, u64)>,
    /// The local API key, when configured.
    pub(crate) api_key: Option<String>,
    /// False once shutdown has begun, so `/readyz` turns away new traffic first.
    pub(crate) accepting: AtomicBool,
}

impl AppState {
    /// The provider (and its validator) answering to `name`, aliases included.
    pub(crate) fn provider(&self, name: &str) -> Option<&(Arc<Provider>, Validator)> {
        let canonical = self.config.provider_named(name)?;
        self.providers.get(&canonical.name)
    }

    /// The exchanger for provider `name`: `None` when no such provider is configured.
    pub(crate) fn exchanger(&self, name: &str) -> Option<Result<&Exchanger, &str>> {
        let canonical = self.config.provider_named(name)?;
        self.exchangers
            .get(&canonical.name)
            .map(|r| r.as_ref().map_err(String::as_str))
    }
}

/// A bound, not yet running, sidecar.
pub struct Server {
    state: Arc<AppState>,
    public: TcpListener,
    api: Option<TcpListener>,
    admin: Option<TcpListener>,
}

impl Server {
    /// Builds providers, routes and the forwarder and binds the listeners (port 0 picks a free
    /// port). No IdP request is made yet; keys load in the background once [`Server::run`] starts.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        crate::admin::install_metrics();
        let mut providers = HashMap::new();
        for p in &config.providers {
            let provider = Provider::new(p.clone())?;
            let validator = Validator::new(provider.clone(), config.cache.validation_capacity);
            providers.insert(p.name.clone(), (provider, validator));
        }
        let mut exchangers = HashMap::new();
        for (name, (_, validator)) in &providers {
            let x = Exchanger::new(
                validator.clone(),
                config.cache.obo_capacity,
                config.cache.expiry_margin,
            )
            .map_err(|e| e.to_string());
            if let Err(why) = &x {
                tracing::warn!(provider = %name, reason = %why, "token exchange disabled for this provider");
            }
            exchangers.insert(name.clone(), x);
        }
        for (i, r) in config.routes.iter().enumerate() {
            if r.obo.is_none() && r.obo_headers.is_empty() {
                continue;
            }
            let name = config
                .route_provider(r)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            if let Some(Err(why)) = exchangers.get(&name) {
                return Err(ServerError::Start(format!(
                    "routes[{i}].obo: provider {name:?} cannot exchange tokens: {why}"
                )));
            }
        }
        let store = if config.login.enabled {
            Some(
                crate::store::open(&config.store)
                    .await
                    .map_err(|e| ServerError::Start(e.to_string()))?,
            )
        } else {
            None
        };
        let api_key = match (&config.api.key, &config.api.key_file) {
            (Some(k), _) => Some(k.expose().to_owned()),
            (None, Some(path)) => {
                let key = std::fs::read_to_string(path).map_err(|e| {
                    ServerError::Start(format!("api.key_file: cannot read {}: {e}", path.display()))
                })?;
                let key = key.trim().to_owned();
                if key.is_empty() {
                    return Err(ServerError::Start(format!(
                        "api.key_file: {} is empty",
                        path.display()
                    )));
                }
                Some(key)
            }
            (None, None) => None,
        };
        let refresh_flights = moka::future::Cache::builder()
            .time_to_live(std::time::Duration::from_secs(2))
            .max_capacity(10_000)
            .build();
        let routes = RouteTable::new(&config, |name| providers.get(name).map(|(_, v)| v.clone()))
            .map_err(ServerError::Start)?;
        let upstream = &config.upstream;
        let url = upstream
            .url
            .as_str()
            .parse()
            .map_err(|_| ServerError::Start("upstream.url: not a valid URI".into()))?;
        let forwarder = Forwarder::new(UpstreamSettings {
            url,
            connect_timeout: upstream.connect_timeout,
            timeout: upstream.timeout,
            preserve_host: upstream.preserve_host,
            trust_forwarded_headers: upstream.trust_forwarded_headers,
        });
        let bind = |listener: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    listener,
                    addr,
                    source,
                })
        };
        let public = bind("public", config.listen.public).await?;
        let api = match config.listen.api {
            Some(a) => Some(bind("api", a).await?),
            None => None,
        };
        let admin = match config.listen.admin {
            Some(a) => Some(bind("admin", a).await?),
            None => None,
        };
        let state = Arc::new(AppState {
            config,
            providers,
            routes,
            forwarder,
            exchangers,
            store,
            refresh_flights,
            api_key,
            accepting: AtomicBool::new(true),
        });
        Ok(Self {
            state,
            public,
            api,
            admin,
        })
    }

    /// The public listener's address.
    pub fn public_addr(&self) -> SocketAddr {
        local(&self.public)
    }

    /// The API listener's address, when enabled.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(local)
    }

    /// The admin listener's address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(local)
    }

    /// Serves until `shutdown` resolves, then turns readiness off, stops accepting and lets
    /// in-flight requests finish for up to `listen.shutdown_grace`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let state = self.state;
        let refreshers: Vec<_> = state
            .providers
            .values()
            .map(|(p, _)| p.spawn_refresh())
            .collect();
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = ServerLimits::from_config(&state.config.listen);
        let grace = state.config.listen.shutdown_grace;
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = tokio::task::JoinSet::new();
        let log = &state.config.log;
        let (access, request_id) = (log.access, log.request_id);
        tasks.spawn(http_server::serve(
            self.public,
            logged(public_router(state.clone()), "public", access, request_id),
            limits.clone(),
            stopped(stop_rx.clone()),
            grace,
        ));
        if let Some(l) = self.api {
            tasks.spawn(http_server::serve(
                l,
                logged(crate::api::router(state.clone()), "api", access, request_id),
                limits.clone(),
                stopped(stop_rx.clone()),
                grace,
            ));
        }
        // The admin listener outlives the others: while they drain, `/readyz` answers 503, so a
        // load balancer or kubelet sees "not ready" before the sidecar goes away.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let mut admin = self.admin.map(|l| {
            AbortOnDrop(tokio::spawn(http_server::serve(
                l,
                crate::admin::router(state.clone()),
                limits,
                stopped(admin_stop_rx),
                grace,
            )))
        });
        tracing::info!("tollgate is serving");
        shutdown.await;
        tracing::info!("shutting down: readiness off, draining in-flight requests");
        // Readiness first, then the public and API listeners stop accepting and drain.
        state.accepting.store(false, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            if let Some(e) = listener_failure(done) {
                result = Err(e);
            }
        }
        let _ = admin_stop_tx.send(true);
        if let Some(admin) = admin.as_mut()
            && let Some(e) = listener_failure((&mut admin.0).await)
        {
            result = Err(e);
        }
        for r in refreshers {
            r.abort();
        }
        result
    }

    /// Runs the server in a background task; for tests and embedding.
    pub fn spawn(self) -> RunningServer {
        let public = self.public_addr();
        let api = self.api_addr();
        let admin = self.admin_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        RunningServer {
            public,
            api,
            admin,
            stop: Some(tx),
            task,
        }
    }
}

/// A server running in a background task.
pub struct RunningServer {
    /// Public listener address.
    pub public: SocketAddr,
    /// API listener address.
    pub api: Option<SocketAddr>,
    /// Admin listener address.
    pub admin: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Starts graceful shutdown and waits for it to finish.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Start(format!("server task failed: {e}"))),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// How a listener task ended, as the server's error (`None`: it stopped cleanly or was aborted).
fn listener_failure(
    done: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Option<ServerError> {
    match done {
        Ok(Err(e)) => Some(ServerError::Io(e)),
        Err(e) if e.is_panic() => Some(ServerError::Start("a listener task panicked".into())),
        _ => None,
    }
}

/// A task that ends with its owner: the admin listener must not outlive an aborted server.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn local(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// The router with the access log and request ids in front when `[log] access` or
/// `request_id` is on; with neither, nothing is added to the request path.
fn logged(router: Router, listener: &'static str, access: bool, request_id: bool) -> Router {
    // The serving loop answers 408 for a stalled request body, but outside this router: inside
    // the access log too, so its line shows the status the client got.
    let router = if access {
        router.layer(axum::middleware::from_fn(http_server::answer_stalled_body))
    } else {
        router
    };
    if access || request_id {
        router.layer(AccessLogLayer::new(listener, access, request_id))
    } else {
        router
    }
}

fn public_router(state: Arc<AppState>) -> Router {
    let router = crate::login::routes(Router::new(), &state);
    router
        .method_not_allowed_fallback(crate::proxy::method_not_allowed)
        .fallback(public_request)
        .with_state(state)
}

/// Every proxied request: route, authenticate, authorise, decorate, forward.
async fn public_request(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Response<Body> {
    // Route on, and forward, the normalised path: what was authorised is what the upstream gets.
    if let Err(why) = normalize_path(&mut req) {
        return json_error(StatusCode::BAD_REQUEST, "invalid_request", &why);
    }
    let Some(route) = state.routes.find(req.uri().path()) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route is configured for this path",
        );
    };
    // Identity headers are ours alone: whatever a client sent under X-Auth-* is dropped first,
    // on every route, so an upstream can trust them.
    remove_identity_headers(req.headers_mut());
    // The same for the route's `obo_headers`: only tollgate sets them, and a preflight (which
    // is not exchanged) must not carry a client's values under those names either.
    if let Some(added) = &route.added_headers {
        for name in added.0.iter() {
            req.headers_mut().remove(name);
        }
        req.extensions_mut().insert(added.clone());
    }
    if route.config.skip_auth_preflight && is_cors_preflight(&req) {
        if route.config.token_in_query {
            // A preflight's URL is the real request's: a token in it goes no further.
            move_query_token(&mut req, route, None);
        }
        let response = state.forwarder.forward(req, peer).await;
        route.count(response.status());
        return response;
    }
    let access = state.config.log.access;
    let mut note = AccessNote {
        route: access.then(|| route.label.clone()),
        ..AccessNote::default()
    };
    let mut response = match authenticate(route, req.headers(), req.uri()).await {
        Ok(Some(user))
            if let Some(challenge) = missing_auth_context(&state, route, &user.claims) =>
        {
            note.error = Some("insufficient_claims");
            challenge
        }
        Ok(user) => {
            if access && let Some(user) = &user {
                let c = &user.claims;
                note.user = Some(Arc::from(c.oid().unwrap_or(c.subject())));
            }
            forward_authorised(&state, route, user, req, peer).await
        }
        Err(e) => {
            note.error = Some(e.code());
            auth_error(&e)
        }
    };
    route.count(response.status());
    if access {
        response.extensions_mut().insert(note);
    }
    response
}

/// A request the route lets through (`user` is `None` where none is needed): the query token
/// moved to `Authorization`, identity headers added, tokens exchanged, then forwarded.
async fn forward_authorised(
    state: &AppState,
    route: &Route,
    user: Option<Authenticated>,
    mut req: Request<Body>,
    peer: SocketAddr,
) -> Response<Body> {
    if let Some(user) = &user {
        if user.from_query {
            move_query_token(&mut req, route, user.token.as_deref());
        }
        if route.config.identity_headers {
            add_identity_headers(req.headers_mut(), &user.claims);
        }
        // A tunnel is authorised once, at its handshake: it lives no longer than the token.
        if state.config.upstream.close_tunnels_at_expiry
            && req.headers().contains_key(http::header::UPGRADE)
        {
            req.extensions_mut()
                .insert(crate::proxy::TunnelDeadline(user.claims.expires_at()));
        }
    }
    match exchange_for_route(state, route, user, req.headers_mut()).await {
        Ok(()) => state.forwarder.forward(req, peer).await,
        Err(resp) => resp,
    }
}

/// A CORS preflight as a browser sends it (Fetch standard, "CORS-preflight request"):
/// `OPTIONS` with `Origin` and `Access-Control-Request-Method`. A browser never puts
/// credentials on one, so a request with `Authorization` is treated as an ordinary request.
fn is_cors_preflight(req: &Request<Body>) -> bool {
    let headers = req.headers();
    req.method() == http::Method::OPTIONS
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        && !headers.contains_key(http::header::AUTHORIZATION)
}

/// Replaces the request's path by its normal form ([`crate::path`]); the error says why the
/// path is refused (`400`).
fn normalize_path(req: &mut Request<Body>) -> Result<(), String> {
    let normal = match crate::path::normalize(req.uri().path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => return Err(e.to_string()),
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    set_path_and_query(req, &path_and_query)
        .map_err(|()| "the request target is not valid".to_owned())
}

/// Replaces the request target's path and query, keeping its scheme and authority.
fn set_path_and_query(req: &mut Request<Body>, path_and_query: &str) -> Result<(), ()> {
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| ())?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| ())?;
    Ok(())
}

/// Validates the bearer token as the route demands: `Ok(None)` when the request goes on
/// unauthenticated (`auth = none`, or `optional` without a token).
async fn authenticate(
    route: &Route,
    headers: &HeaderMap,
    uri: &http::Uri,
) -> Result<Option<Authenticated>, ValidationError> {
    let Some(validator) = &route.validator else {
        return Ok(None);
    };
    let sent = crate::validate::sent_token(headers, uri, route.config.token_in_query)?;
    let token = match sent {
        Some(t) => t,
        None if route.config.auth == AuthMode::Optional => return Ok(None),
        None => return Err(ValidationError::Missing),
    };
    let from_query = matches!(token, SentToken::Query(_));
    let claims = validator.validate(token.as_str()).await?;
    claims.check(&route.config.scopes, &route.config.roles)?;
    let provider = validator.provider().config();
    claims.check_access(
        route
            .config
            .allow_unscoped_tokens
            .unwrap_or(provider.allow_unscoped_tokens),
        [
            &provider.allowed_client_ids,
            &route.config.allowed_client_ids,
        ],
    )?;
    // Kept only where the route exchanges it (the headers change before the exchange, and
    // parsing them a second time would scan the whole token again) or moves it to a header.
    let token = (route.exchanges() || from_query).then(|| token.into_string());
    Ok(Some(Authenticated {
        claims,
        token,
        from_query,
    }))
}

/// A request that passed [`authenticate`].
struct Authenticated {
    claims: Claims,
    /// The inbound token, for routes that exchange it or when it came in the query.
    token: Option<String>,
    /// The token was the `access_token` query parameter (`token_in_query`).
    from_query: bool,
}

/// For a token that came in the query: the forwarded URL loses it (URLs end up in access logs,
/// RFC 6750 §5.3), and the app gets `Authorization: Bearer` as from a header client, unless
/// the route's `obo` puts the exchanged token there.
fn move_query_token(req: &mut Request<Body>, route: &Route, token: Option<&str>) {
    if let Some(path_and_query) = req.uri().path_and_query() {
        let path = path_and_query.path();
        let kept: Vec<&str> = path_and_query
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| {
                url::form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .is_none_or(|(name, _)| name != QUERY_TOKEN)
            })
            .collect();
        let rebuilt = if kept.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", kept.join("&"))
        };
        // Removing pairs from a valid target leaves a valid target: this cannot fail.
        let _ = set_path_and_query(req, &rebuilt);
    }
    if route.config.obo.is_none()
        && let Some(value) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
    {
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
}

/// For routes with `obo`: replaces `Authorization` with an On-Behalf-Of token for the upstream
/// (the inbound token never reaches it) and fills `obo_headers`. Any failure stops the request:
/// it is never forwarded without its token.
async fn exchange_for_route(
    state: &AppState,
    route: &Route,
    user: Option<Authenticated>,
    headers: &mut HeaderMap,
) -> Result<(), Response<Body>> {
    let cfg = &route.config;
    // Whatever the client sent under an injected header's name is never passed on as ours.
    for (name, _) in &route.obo_headers {
        headers.remove(name);
    }
    let Some(Authenticated {
        claims,
        token: Some(inbound),
        ..
    }) = &user
    else {
        return Ok(());
    };
    if !route.exchanges() {
        return Ok(());
    }
    let Some(Ok(exchanger)) = state.exchanger(claims.provider()) else {
        return Err(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the route's provider cannot exchange tokens",
        ));
    };
    let fail = |e: ExchangeError| {
        let authorize = exchanger.provider().authorization_endpoint();
        obo_error(&e, authorize.as_ref().map(url::Url::as_str))
    };
    if let Some(target) = &cfg.obo {
        let token = exchanger
            .on_behalf_of_subject(claims, inbound, target, false)
            .await
            .map_err(fail)?;
        headers.insert(http::header::AUTHORIZATION, token.authorization());
    }
    for (name, target) in &route.obo_headers {
        let token = exchanger
            .on_behalf_of_subject(claims, inbound, target, false)
            .await
            .map_err(fail)?;
        let Some(value) = token.access_token_value() else {
            return Err(json_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the identity provider returned an unusable token",
            ));
        };
        headers.insert(name.clone(), value);
    }
    Ok(())
}

/// For a route with `auth_context`: the claims challenge for a token whose `acrs` lacks it.
fn missing_auth_context(
    state: &AppState,
    route: &Route,
    claims: &Claims,
) -> Option<Response<Body>> {
    let wanted = route.config.auth_context.as_deref()?;
    if crate::validate::has_auth_context(claims, wanted) {
        return None;
    }
    let authorize = state
        .provider(claims.provider())
        .and_then(|(p, _)| p.authorization_endpoint());
    Some(crate::validate::auth_context_challenge(
        wanted,
        authorize.as_ref().map(url::Url::as_str),
    ))
}

/// An OBO failure on the proxy path. A Conditional Access / MFA challenge goes back to the
/// client as `401` with `error="insufficient_claims"`, the base64 `claims` and, when known, the
/// IdP's `authorization_uri`, so it can step up (entra-reference §6.3); a token that cannot be
/// exchanged (app-only) is the client's `401`; IdP failures are `502`/`504`.
fn obo_error(e: &ExchangeError, authorization_uri: Option<&str>) -> Response<Body> {
    match e {
        ExchangeError::Idp(idp) if idp.claims.is_some() => crate::validate::claims_challenge(
            idp.claims.as_deref().unwrap_or_default(),
            authorization_uri,
            "the identity provider requires additional claims (step-up authentication)",
        ),
        // The IdP refused tollgate itself (its credential, its registration, the route's
        // target): the client can do nothing about it, so it is a gateway failure, logged.
        ExchangeError::Idp(idp)
            if matches!(
                idp.error.as_str(),
                "invalid_client"
                    | "unauthorized_client"
                    | "invalid_scope"
                    | "invalid_resource"
                    | "invalid_request"
                    | "unsupported_grant_type"
            ) =>
        {
            tracing::error!(
                error = %idp.error,
                error_codes = ?idp.error_codes,
                "On-Behalf-Of: the identity provider refused tollgate's request (configuration)"
            );
            json_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                &format!(
                    "the identity provider refused tollgate's On-Behalf-Of request ({})",
                    idp.error
                ),
            )
        }
        // The user's grant does not allow the exchange (consent, a revoked session, ...).
        ExchangeError::Idp(idp) => {
            let reason = match &idp.suberror {
                Some(sub) => format!("{}, {sub}", idp.error),
                None => idp.error.clone(),
            };
            json_error(
                StatusCode::FORBIDDEN,
                "access_denied",
                &format!("the identity provider refused the On-Behalf-Of exchange ({reason})"),
            )
        }
        ExchangeError::InvalidSubject(v) => auth_error(v),
        ExchangeError::Upstream { timeout: true, .. } => json_error(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway_timeout",
            "the identity provider timed out",
        ),
        ExchangeError::ClientAuth(c) => {
            tracing::error!(error = %c, "On-Behalf-Of: tollgate's client credential is unusable");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "tollgate's client credential is misconfigured",
            )
        }
        other => {
            // The detail (addresses, OS errors) is for the operator, not the public client.
            tracing::warn!(error = %other, "On-Behalf-Of failed");
            json_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the identity provider could not be reached or answered badly",
            )
        }
    }
}

/// The RFC 6750 §3 answer for a refused request: status, `WWW-Authenticate`, JSON body.
pub(crate) fn auth_error(e: &ValidationError) -> Response<Body> {
    e.to_response()
}

const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
const X_AUTH_OID: HeaderName = HeaderName::from_static("x-auth-oid");
const X_AUTH_TID: HeaderName = HeaderName::from_static("x-auth-tid");
const X_AUTH_NAME: HeaderName = HeaderName::from_static("x-auth-name");
const X_AUTH_SCOPES: HeaderName = HeaderName::from_static("x-auth-scopes");
const X_AUTH_ROLES: HeaderName = HeaderName::from_static("x-auth-roles");

/// Drops what a client sent under our identity names, and forwarding headers spelt with `_`.
///
/// CGI, WSGI and Rack map every `-` in a header name to `_` (`HTTP_X_AUTH_OID`), so to an app
/// behind them `X_Auth_Oid` and `X-Auth-Oid` are the same header (the class of Puma's
/// CVE-2024-45614). Names are therefore compared with `_` read as `-`: any spelling of
/// `X-Auth-*` goes, and so does an underscore spelling of `X-Forwarded-*`, `Forwarded`,
/// `X-Real-IP` or `True-Client-IP` (the dashed ones are the forwarder's business, which replaces
/// or keeps them by `trust_forwarded_headers`).
fn remove_identity_headers(headers: &mut HeaderMap) {
    // Most requests carry none: one scan over the names, no allocation unless one is found.
    if !headers.keys().any(|k| is_spoofable(k.as_str().as_bytes())) {
        return;
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_spoofable(k.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// True for a name (lower case, as `HeaderName` keeps it) that is ours to set: `x-auth-*` in any
/// `-`/`_` spelling, or a forwarding header spelt with `_`.
fn is_spoofable(name: &[u8]) -> bool {
    if dashed_starts_with(name, b"x-auth-") {
        return true;
    }
    name.contains(&b'_')
        && (dashed_starts_with(name, b"x-forwarded-")
            || dashed_eq(name, b"forwarded")
            || dashed_eq(name, b"x-real-ip")
            || dashed_eq(name, b"true-client-ip"))
}

/// `name` starts with `prefix` where each `-` of the prefix may be `_` in the name.
fn dashed_starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len()
        && name
            .iter()
            .zip(prefix)
            .all(|(n, p)| n == p || (*p == b'-' && *n == b'_'))
}

fn dashed_eq(name: &[u8], other: &[u8]) -> bool {
    name.len() == other.len() && dashed_starts_with(name, other)
}

fn add_identity_headers(headers: &mut HeaderMap, claims: &Claims) {
    // Built once per validated token and kept with its cached claims; here only cloned
    // (a reference-count increment per value).
    for (name, value) in claims.identity_headers_with(identity_headers) {
        headers.insert(name.clone(), value.clone());
    }
}

/// The identity headers a validated token yields, empty claims left out.
fn identity_headers(claims: &Claims) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(6);
    let mut put = |name: HeaderName, value: &str| {
        // Claims are UTF-8; HeaderValue takes visible ASCII and obs-text but no controls, so a
        // claim with a control character is left out rather than forwarded mangled.
        if !value.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(value.as_bytes())
        {
            out.push((name, v));
        }
    };
    put(X_AUTH_SUBJECT, claims.subject());
    put(X_AUTH_OID, claims.oid().unwrap_or(""));
    put(X_AUTH_TID, claims.tid().unwrap_or(""));
    put(X_AUTH_NAME, claims.name().unwrap_or(""));
    put(X_AUTH_SCOPES, &claims.scopes().join(" "));
    put(X_AUTH_ROLES, &claims.roles().join(","));
    out
}
