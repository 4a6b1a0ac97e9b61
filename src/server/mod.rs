//! The sidecar: three listeners built from one [`Config`], and where each request goes.
//!
//! - **public** (`listen.public`): login routes when `[login]` is on, else every request goes to
//!   `gate::public_request`: path normalised (`crate::path`), route lookup (longest prefix, ASCII case
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

mod forward_auth;
mod gate;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access_log::AccessLogLayer;
use crate::config::{Config, ProviderConfig, ProviderGrant};
use crate::exchange::Exchanger;
use crate::http_server::{self, ServerLimits};
use crate::provider::{Provider, ProviderError};
use crate::proxy::{Forwarder, UpstreamSettings};
use crate::routes::RouteTable;
use crate::validate::Validator;

use crate::state::AppState;
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
    /// A new configuration was refused; the one in force stays.
    #[error("reload refused: {0}")]
    Reload(String),
}

/// Listeners bound by the caller, for [`Server::from_listeners`].
#[derive(Debug)]
pub struct Listeners {
    /// Serves the proxied (or login) routes.
    pub public: std::net::TcpListener,
    /// Serves the token API, when given.
    pub api: Option<std::net::TcpListener>,
    /// Serves health, readiness and metrics, when given.
    pub admin: Option<std::net::TcpListener>,
}

/// A bound, not yet running, sidecar.
pub struct Server {
    live: Arc<Live>,
    public: TcpListener,
    api: Option<TcpListener>,
    admin: Option<TcpListener>,
}

impl Server {
    /// Builds providers, routes and the forwarder and binds the listeners (port 0 picks a free
    /// port). No IdP request is made yet; keys load in the background once [`Server::run`] starts.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        Self::build(config, None).await
    }

    /// Like [`Server::bind`], but serves on listeners the caller already bound, so the addresses
    /// are known (and held) before the server is built; `config.listen`'s addresses are not
    /// used, its other settings are. An `api` or `admin` listener is served only when given.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tollgate::config::{Config, MapEnv};
    /// use tollgate::server::{Listeners, Server};
    ///
    /// let env = MapEnv::from([
    ///     ("AZURE_APP_CLIENT_ID", "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"),
    ///     ("AZURE_APP_WELL_KNOWN_URL", "http://127.0.0.1:9/t/v2.0/.well-known/openid-configuration"),
    ///     ("TOLLGATE_UPSTREAM__URL", "http://127.0.0.1:3000"),
    /// ]);
    /// let config = Config::from_toml_str("", &env)?;
    /// let public = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let addr = public.local_addr()?;
    /// let listeners = Listeners { public, api: None, admin: None };
    /// let server = Server::from_listeners(config, listeners).await?;
    /// assert_eq!(server.public_addr(), addr);
    /// assert_eq!(server.api_addr(), None);
    /// # Ok(()) }
    /// ```
    pub async fn from_listeners(config: Config, listeners: Listeners) -> Result<Self, ServerError> {
        Self::build(config, Some(listeners)).await
    }

    /// Both constructors: listeners are bound (or taken over) after everything else is built,
    /// so a configuration error is reported before any port is taken.
    async fn build(config: Config, listeners: Option<Listeners>) -> Result<Self, ServerError> {
        // `Config::load` checks what it reads; a `Config` built in code is checked here, so no
        // server runs on a configuration `tollgate check` would refuse.
        config
            .validate()
            .map_err(|e| ServerError::Start(e.to_string()))?;
        crate::admin::install_metrics();
        let state = build_state(config, None).await?;
        let config = &state.config;
        let (public, api, admin) = match listeners {
            Some(Listeners { public, api, admin }) => (
                tokio_listener("public", public)?,
                api.map(|l| tokio_listener("api", l)).transpose()?,
                admin.map(|l| tokio_listener("admin", l)).transpose()?,
            ),
            None => {
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
                (public, api, admin)
            }
        };
        let live = Arc::new(Live {
            current: ArcSwap::from_pointee(Generation::new(Arc::new(state), 1)),
            reloading: tokio::sync::Mutex::new(()),
        });
        crate::admin::config_generation(1);
        Ok(Self {
            live,
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
        let live = self.live;
        let state = live.current.load_full().state.clone();
        let refreshers: Vec<_> = state
            .providers
            .values()
            .map(|(p, _)| p.spawn_refresh())
            .collect();
        let (stop_tx, stop_rx) = watch::channel(false);
        // Listener limits are the first configuration's: a reload cannot change `[listen]`.
        let limits = ServerLimits::from_config(&state.config.listen);
        let grace = state.config.listen.shutdown_grace;
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(http_server::serve(
            self.public,
            CurrentRouter::new(&live, Listener::Public),
            limits.clone(),
            stopped(stop_rx.clone()),
            grace,
        ));
        if let Some(l) = self.api {
            tasks.spawn(http_server::serve(
                l,
                CurrentRouter::new(&live, Listener::Api),
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
                CurrentRouter::new(&live, Listener::Admin),
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

    /// A handle that puts a new configuration in force while the server runs (`SIGHUP`).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.live.clone())
    }

    /// Runs the server in a background task; for tests and embedding.
    pub fn spawn(self) -> RunningServer {
        let public = self.public_addr();
        let api = self.api_addr();
        let admin = self.admin_addr();
        let reloader = self.reloader();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        RunningServer {
            public,
            api,
            admin,
            reloader,
            stop: Some(tx),
            task,
        }
    }
}

/// Builds what serving `config` takes. With `previous` (a reload), what did not change is
/// taken over rather than built again: providers with the same settings (their keys and token
/// caches) with their exchangers, the forwarder (its connection pool) when `[upstream]` is the
/// same, and always the token store, the refresh flights and the readiness flag.
async fn build_state(config: Config, previous: Option<&AppState>) -> Result<AppState, ServerError> {
    // A provider whose settings did not change keeps its keys and caches.
    let kept = |p: &ProviderConfig| {
        let old = previous?;
        let before = old.config.providers.iter().find(|b| b.name == p.name)?;
        (before == p).then_some(())?;
        Some((old.providers.get(&p.name)?, old.exchangers.get(&p.name)?))
    };
    // `[cache]` cannot change on reload: the shared cache (its Redis connection) is kept.
    let shared_cache = match previous {
        Some(old) => old.shared_cache.clone(),
        None => crate::exchange::SharedCache::open(&config).map_err(ServerError::Start)?,
    };
    // Each cache's share of `[cache] max_memory`, so that the caches of all providers together
    // stay under it: a cache built for another share (the provider count changed) is built
    // anew at the new size, its provider's keys kept.
    let share = config.cache.max_memory_per_cache(config.providers.len());
    let resized = |v: &Validator| v.max_cache_bytes() != share;
    let mut providers = HashMap::new();
    let mut exchangers = HashMap::new();
    for p in &config.providers {
        let kept = kept(p);
        let (provider, validator) = match kept {
            Some((built, _)) if !resized(&built.1) => built.clone(),
            // New, or kept with a cache of another size: a validator (and cache) at this share.
            _ => {
                let provider = match kept {
                    Some(((provider, _), _)) => provider.clone(),
                    None => Provider::new(p.clone())?,
                };
                let validator = Validator::with_memory(
                    provider.clone(),
                    config.cache.validation_capacity,
                    share,
                );
                (provider, validator)
            }
        };
        let exchanger = match kept {
            _ if p.grant == ProviderGrant::IntrospectOnly => {
                Err("it only validates tokens (grant = \"introspect_only\")".to_owned())
            }
            // The settings are the same, but a secret or key file may have been rotated: the
            // credential is read again, and the token cache kept either way.
            Some(((_, v), Ok(x))) if !resized(v) => {
                x.with_credential_of(p).map_err(|e| e.to_string())
            }
            // New, resized, or no usable credential last time (a file not there yet): built
            // (again).
            _ => Exchanger::with_shared_cache(
                validator.clone(),
                config.cache.obo_capacity,
                share,
                config.cache.expiry_margin,
                shared_cache.clone(),
            )
            .map_err(|e| e.to_string()),
        };
        if p.grant != ProviderGrant::IntrospectOnly
            && let Err(why) = &exchanger
        {
            tracing::warn!(provider = %p.name, reason = %why, "token exchange disabled for this provider");
        }
        providers.insert(p.name.clone(), (provider, validator));
        exchangers.insert(p.name.clone(), exchanger);
    }
    for (i, r) in config.routes.iter().enumerate() {
        if !r.exchanges() {
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
    let store = match previous {
        Some(old) => old.store.clone(),
        None if config.login.enabled || config.session.enabled => Some(
            crate::store::open(&config.store)
                .await
                .map_err(|e| ServerError::Start(e.to_string()))?,
        ),
        None => None,
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
    let refresh_flights = match previous {
        Some(old) => old.refresh_flights.clone(),
        None => moka::future::Cache::builder()
            .time_to_live(std::time::Duration::from_secs(2))
            .max_capacity(10_000)
            .build(),
    };
    let routes = RouteTable::new(&config, |name| {
        let (_, validator) = providers.get(name)?;
        let exchanger = exchangers.get(name).and_then(|e| e.as_ref().ok());
        Some((validator.clone(), exchanger.cloned()))
    })
    .map_err(ServerError::Start)?;
    let forwarder = match previous {
        Some(old) if old.config.upstream == config.upstream => old.forwarder.clone(),
        _ => {
            let upstream = &config.upstream;
            let url = upstream
                .url
                .as_str()
                .parse()
                .map_err(|_| ServerError::Start("upstream.url: not a valid URI".into()))?;
            Forwarder::new(UpstreamSettings {
                url,
                connect_timeout: upstream.connect_timeout,
                timeout: upstream.timeout,
                preserve_host: upstream.preserve_host,
                trust_forwarded_headers: upstream.trust_forwarded_headers,
            })
        }
    };
    let accepting = match previous {
        Some(old) => old.accepting.clone(),
        None => Arc::new(AtomicBool::new(true)),
    };
    let sessions = build_sessions(&config, previous, &store, &exchangers, &refresh_flights)?;
    Ok(AppState {
        shared_cache,
        sessions,
        config,
        providers,
        routes,
        forwarder,
        exchangers,
        store,
        refresh_flights,
        api_key,
        accepting,
    })
}

/// One configuration in force and what was built from it: the shared state and each listener's
/// router. A reload builds a new one and swaps it in whole; a request keeps the generation it
/// started with until it ends.
struct Generation {
    number: u64,
    state: Arc<AppState>,
    /// The public router would only hand every request to its fallback, the gate: requests
    /// go to the gate directly (see [`CurrentRouter`]).
    public_direct: bool,
    public: Router,
    api: Router,
    admin: Router,
}

impl Generation {
    fn new(state: Arc<AppState>, number: u64) -> Self {
        let log = &state.config.log;
        let (access, request_id) = (log.access, log.request_id);
        let routes = public_routes(&state);
        // No route of its own (login, sessions, forward-auth) and no layer around it (the
        // access log, request ids, the request's span: see `logged` and `traced`).
        let public_direct =
            !routes.has_routes() && !access && !request_id && !crate::telemetry::on();
        Self {
            number,
            public_direct,
            public: traced(logged(
                public_router(routes, state.clone()),
                "public",
                access,
                request_id,
            )),
            api: traced(logged(
                crate::api::router(state.clone()),
                "api",
                access,
                request_id,
            )),
            admin: crate::admin::router(state.clone()),
            state,
        }
    }
}

/// The generation in force, read by every request and replaced by [`Reloader::reload`].
struct Live {
    current: ArcSwap<Generation>,
    /// One reload at a time: each one builds on the generation before it.
    reloading: tokio::sync::Mutex<()>,
}

/// Which of a generation's routers a listener serves.
#[derive(Clone, Copy)]
enum Listener {
    Public,
    Api,
    Admin,
}

/// A listener's service: the router of the generation in force when the request arrives.
#[derive(Clone)]
struct CurrentRouter {
    live: Arc<Live>,
    listener: Listener,
}

impl CurrentRouter {
    fn new(live: &Arc<Live>, listener: Listener) -> Self {
        Self {
            live: live.clone(),
            listener,
        }
    }
}

impl http_server::RequestService for CurrentRouter {
    type Future = futures_util::future::Either<
        axum::routing::future::RouteFuture<std::convert::Infallible>,
        std::pin::Pin<
            Box<
                dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>>
                    + Send,
            >,
        >,
    >;

    type Connection = crate::validate::LastToken;

    fn call_from(
        &self,
        peer: SocketAddr,
        connection: &Arc<crate::validate::LastToken>,
        mut req: axum::extract::Request,
    ) -> Self::Future {
        use futures_util::future::Either;
        let generation = self.live.current.load();
        let router = match self.listener {
            // The gate without the router: no route lookup, no extractors, no `ConnectInfo`
            // in the extensions; what the router would do for every request, for less.
            Listener::Public if generation.public_direct => {
                let state = generation.state.clone();
                let last_token = connection.clone();
                return Either::Right(Box::pin(async move {
                    Ok(gate::public_request(state, peer, Some(last_token), req).await)
                }));
            }
            Listener::Public => &generation.public,
            Listener::Api => &generation.api,
            Listener::Admin => &generation.admin,
        };
        // Through a router, the gate and the token API's exchange and introspection find the
        // connection's last token in the request's extensions.
        if !matches!(self.listener, Listener::Admin) {
            req.extensions_mut().insert(connection.clone());
        }
        Either::Left(http_server::call_router(router, peer, req))
    }
}

/// `[session]`, when enabled. The key sealing sign-in cookies is the store's (a callback may
/// reach another replica), or one of this process kept across reloads for a store without one.
fn build_sessions(
    config: &Config,
    previous: Option<&AppState>,
    store: &Option<Arc<dyn crate::store::TokenStore>>,
    exchangers: &HashMap<String, Result<Exchanger, String>>,
    flights: &crate::delegation::RefreshFlights,
) -> Result<Option<crate::session::Sessions>, ServerError> {
    let cfg = &config.session;
    if !cfg.enabled {
        return Ok(None);
    }
    let provider = cfg
        .provider_in(&config.providers)
        .map(|p| p.name.clone())
        .ok_or_else(|| ServerError::Start("session.provider: no such provider".into()))?;
    let kept = previous.and_then(|old| old.sessions.as_ref());
    let sealer = match (kept, &config.store.encryption_keys_file) {
        (Some(old), _) => Ok(old.sealer().clone()),
        (None, Some(path)) => crate::store::Sealer::from_key_file(path),
        (None, None) => crate::store::Sealer::ephemeral(),
    }
    .map_err(|e| ServerError::Start(format!("session: {e}")))?;
    let store = store
        .clone()
        .ok_or_else(|| ServerError::Start("session: no token store is open".into()))?;
    let parts = crate::session::sessions::SessionParts {
        store,
        exchanger: exchangers
            .get(&provider)
            .and_then(|e| e.as_ref().ok())
            .cloned(),
        flights: flights.clone(),
    };
    let sessions = crate::session::Sessions::new(cfg, provider, sealer, parts)
        .ok_or_else(|| ServerError::Start("session.public_url: required".into()))?;
    // Logout tokens already acted on stay refused across a reload.
    Ok(Some(match kept {
        Some(old) => sessions.keeping_seen_logouts_of(old),
        None => sessions,
    }))
}

/// Takes a new configuration while the server runs ([`Server::reloader`],
/// [`RunningServer::reload`]).
///
/// Routes, upstream, providers, identity headers and the API key change at once; requests in
/// flight finish with the configuration they started with, and no connection is dropped.
/// Providers whose settings did not change keep their keys and caches. Listener addresses,
/// `[store]`, `[cache]`, `[login] enabled` and `[telemetry]` cannot change without a restart:
/// such a reload is refused, as is one that cannot be built, and the configuration in force
/// stays.
#[derive(Clone)]
pub struct Reloader(Arc<Live>);

impl Reloader {
    /// Puts `config` in force; returns its generation number (the first configuration is 1).
    pub async fn reload(&self, config: Config) -> Result<u64, ServerError> {
        let _one_at_a_time = self.0.reloading.lock().await;
        let old = self.0.current.load_full();
        let result = self.build_next(&old, config).await;
        match &result {
            Ok(number) => {
                metrics::counter!("tollgate_config_reloads_total", "result" => "ok").increment(1);
                crate::admin::config_generation(*number);
                tracing::info!(generation = number, "configuration reloaded");
            }
            Err(e) => self.refused(e),
        }
        result
    }

    /// Records a refused reload, also one that failed before it reached the server (the file
    /// did not load): logged, counted, and the configuration in force stays.
    pub fn refused(&self, error: &dyn std::fmt::Display) {
        metrics::counter!("tollgate_config_reloads_total", "result" => "error").increment(1);
        tracing::error!(error = %error, "configuration not reloaded; the one in force stays");
    }

    /// The generation number in force.
    pub fn generation(&self) -> u64 {
        self.0.current.load().number
    }

    async fn build_next(&self, old: &Generation, config: Config) -> Result<u64, ServerError> {
        config
            .validate()
            .map_err(|e| ServerError::Reload(e.to_string()))?;
        let was = &old.state.config;
        for (section, same) in [
            ("listen", was.listen == config.listen),
            ("store", was.store == config.store),
            ("cache", was.cache == config.cache),
            ("login.enabled", was.login.enabled == config.login.enabled),
            (
                "session.enabled",
                was.session.enabled == config.session.enabled,
            ),
            ("telemetry", was.telemetry == config.telemetry),
        ] {
            if !same {
                return Err(ServerError::Reload(format!(
                    "{section} cannot change on reload; restart tollgate to change it"
                )));
            }
        }
        let state = build_state(config, Some(&old.state))
            .await
            .map_err(|e| ServerError::Reload(e.to_string()))?;
        // Keys of new providers load now, so the new routes serve at once (the IdP down: as at
        // start, `503` until they load); their background refresh stops when they are dropped.
        for (name, (provider, _)) in &state.providers {
            let new = old
                .state
                .providers
                .get(name)
                .is_none_or(|(before, _)| !Arc::ptr_eq(before, provider));
            if new {
                if let Err(e) = provider.refresh().await {
                    tracing::warn!(provider = %name, error = %e, "keys not loaded yet; retrying in the background");
                }
                drop(provider.spawn_refresh());
            }
        }
        let number = old.number + 1;
        self.0
            .current
            .store(Arc::new(Generation::new(Arc::new(state), number)));
        Ok(number)
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
    reloader: Reloader,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Puts `config` in force (see [`Reloader`]); returns its generation number.
    pub async fn reload(&self, config: Config) -> Result<u64, ServerError> {
        self.reloader.reload(config).await
    }

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

/// A caller's std listener, made non-blocking and handed to the runtime.
fn tokio_listener(
    listener: &'static str,
    l: std::net::TcpListener,
) -> Result<TcpListener, ServerError> {
    let addr = l
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    l.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(l))
        .map_err(|source| ServerError::Bind {
            listener,
            addr,
            source,
        })
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

/// The router inside a span per request when telemetry runs (the client's `traceparent` its
/// parent); without telemetry, nothing is added to the request path.
fn traced(router: Router) -> Router {
    #[cfg(feature = "otel")]
    if crate::telemetry::on() {
        return router.layer(axum::middleware::from_fn(traced_request));
    }
    router
}

/// One request inside its server span, the status recorded when the response head is ready.
#[cfg(feature = "otel")]
async fn traced_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let span = crate::telemetry::inbound_span(req.method(), req.uri().path(), req.headers());
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// The public listener's own routes, by what is enabled: the login proxy's, the browser
/// session's `/oauth2/*` and forward-auth. None at all lets requests skip the router.
fn public_routes(state: &AppState) -> Router<Arc<AppState>> {
    let router = crate::login::routes(Router::new(), state);
    let router = crate::oauth2::routes(router, state);
    forward_auth::routes(router, state)
}

fn public_router(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .method_not_allowed_fallback(crate::proxy::method_not_allowed)
        .fallback(gate::routed_public_request)
        .with_state(state)
}
