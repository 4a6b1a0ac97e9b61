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

mod gate;
pub(crate) mod state;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access_log::AccessLogLayer;
use crate::config::{Config, ProviderGrant};
use crate::exchange::Exchanger;
use crate::http_server::{self, ServerLimits};
use crate::provider::{Provider, ProviderError};
use crate::proxy::{Forwarder, UpstreamSettings};
use crate::routes::RouteTable;
use crate::validate::Validator;

use state::AppState;
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
    state: Arc<AppState>,
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
        crate::admin::install_metrics();
        let mut providers = HashMap::new();
        for p in &config.providers {
            let provider = Provider::new(p.clone())?;
            let validator = Validator::new(provider.clone(), config.cache.validation_capacity);
            providers.insert(p.name.clone(), (provider, validator));
        }
        let mut exchangers = HashMap::new();
        for (name, (provider, validator)) in &providers {
            if provider.config().grant == ProviderGrant::IntrospectOnly {
                let why = "it only validates tokens (grant = \"introspect_only\")";
                exchangers.insert(name.clone(), Err(why.to_owned()));
                continue;
            }
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

fn public_router(state: Arc<AppState>) -> Router {
    let router = crate::login::routes(Router::new(), &state);
    router
        .method_not_allowed_fallback(crate::proxy::method_not_allowed)
        .fallback(gate::public_request)
        .with_state(state)
}
