//! The `tollgate` command: serve | check | demo | dev-idp | keygen | store rotate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::config::{AuthMode, ClientAuthMethod, Config, LogFormat, ProcessEnv, ProviderConfig};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Identity sidecar for apps behind Entra ID or any OIDC provider",
    after_help = "Example:\n  tollgate check -c /etc/tollgate/tollgate.toml && tollgate serve -c /etc/tollgate/tollgate.toml\n\nRun `tollgate <COMMAND> --help` for each command's example."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (public, api and admin listeners).
    #[command(
        after_help = "Example:\n  tollgate serve --config /etc/tollgate/tollgate.toml\n  AZURE_APP_CLIENT_ID, AZURE_APP_WELL_KNOWN_URL, BIND_ADDRESS and TOLLGATE_SECTION__KEY variables override the file."
    )]
    Serve {
        /// Configuration file (TOML); TOLLGATE_* and AZURE_* environment variables are merged in.
        #[arg(long, short, default_value = "tollgate.toml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Load and validate the configuration, print it with secrets redacted.
    ///
    /// The redacted TOML goes to standard output; a summary of the listeners, providers and
    /// routes in force goes to standard error.
    #[command(after_help = "Example:\n  tollgate check --config tollgate.toml > effective.toml")]
    Check {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "tollgate.toml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Start a dev IdP, an echo app and the sidecar on loopback, and print commands to try.
    #[command(after_help = "Example (0 picks a free port):\n  tollgate demo --port 0")]
    Demo {
        /// Public listener port of the sidecar (0 picks a free one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run the local development OpenID provider alone.
    #[command(after_help = "Example:\n  tollgate dev-idp --listen 127.0.0.1:9400")]
    DevIdp {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9400")]
        listen: std::net::SocketAddr,
        /// Optional TOML file with extra users and apps.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print a new token-store encryption key line (`kid:base64`).
    #[command(
        after_help = "Example (see `tollgate store rotate --help` to add a key):\n  tollgate keygen > store_keys"
    )]
    Keygen,
    /// Token store maintenance.
    #[command(
        after_help = "Example:\n  tollgate store rotate --config /etc/tollgate/tollgate.toml"
    )]
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Re-seal every stored entry under the first configured key.
    #[command(
        after_help = "Example (the new key first, the old ones kept after it):\n  (tollgate keygen; cat store_keys) > store_keys.new && mv store_keys.new store_keys\n  tollgate store rotate --config tollgate.toml"
    )]
    Rotate {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "tollgate.toml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One worker asked for (`TOKIO_WORKER_THREADS=1`, a sidecar's usual CPU share): a
    // current-thread runtime does the same work without the work-stealing scheduler's
    // cross-thread parking and queues.
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { config } => {
            let cfg = load(&config)?;
            // Started before the first span: the server's spans are opened only once it runs.
            #[cfg(feature = "otel")]
            let telemetry =
                tollgate::telemetry::Telemetry::start(&cfg.telemetry).map_err(|e| e.to_string())?;
            #[cfg(feature = "otel")]
            let exported = telemetry.as_ref().map(|t| t.layer());
            #[cfg(not(feature = "otel"))]
            let exported = None;
            // `access = true` shows the access lines whatever `level` keeps quiet (RUST_LOG,
            // when set, still decides alone).
            let set_level = init_logging(cfg.log.format, &log_filter(&cfg), exported);
            let watch = cfg.reload.watch.then_some(cfg.reload.debounce);
            let ignored = tollgate::config::ignored_env_names(&ProcessEnv);
            if !ignored.is_empty() {
                tracing::debug!(names = ?ignored, "TOLLGATE_* variables without a SECTION__KEY are not configuration; ignored");
            }
            let server = tollgate::server::Server::bind(cfg)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(public = %server.public_addr(), api = ?server.api_addr(), admin = ?server.admin_addr(), "listening");
            let reload = Reload {
                reloader: server.reloader(),
                path: config,
                set_level,
            };
            let reload = std::sync::Arc::new(reload);
            #[cfg(unix)]
            tokio::spawn(reload.clone().on_sighup());
            if let Some(debounce) = watch {
                tokio::spawn(reload.watch(debounce));
            }
            let served = server.run(shutdown_signal()).await;
            // The spans of the last requests are still queued: sent before the process ends.
            #[cfg(feature = "otel")]
            if let Some(t) = telemetry {
                let flushed = tokio::task::spawn_blocking(move || t.shutdown()).await;
                if let Ok(Err(e)) = flushed {
                    tracing::warn!(error = %e, "telemetry: the last spans were not exported");
                }
            }
            served.map_err(|e| e.to_string())
        }
        Command::Check { config } => {
            let cfg = load(&config)?;
            print!("{}", cfg.to_redacted_toml());
            // On stderr, so stdout stays a TOML file that can be saved and loaded again.
            eprint!("{}", in_force(&cfg));
            eprintln!("configuration OK");
            Ok(())
        }
        Command::Demo { port } => {
            drop(init_logging(LogFormat::Pretty, "warn,tollgate=info", None));
            tollgate::demo::run(port, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::DevIdp { listen, config } => {
            drop(init_logging(LogFormat::Pretty, "info", None));
            let mut cfg = match config {
                Some(path) => tollgate_devidp::DevIdpConfig::from_toml_file(&path)
                    .map_err(|e| e.to_string())?,
                None => tollgate_devidp::DevIdpConfig::default(),
            };
            cfg.listen = listen;
            tollgate_devidp::run(cfg, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::Keygen => {
            println!("{}", tollgate::store::keygen());
            Ok(())
        }
        Command::Store {
            command: StoreCommand::Rotate { config },
        } => {
            let cfg = load(&config)?;
            let store = tollgate::store::open(&cfg.store)
                .await
                .map_err(|e| e.to_string())?;
            let n = store.rotate_keys().await.map_err(|e| e.to_string())?;
            println!("re-sealed {n} entries under the first key");
            Ok(())
        }
    }
}

/// What `tollgate check` says is in force: the listeners, each provider and each route, one
/// line each. It names where secrets come from, never their values.
fn in_force(cfg: &Config) -> String {
    let mut out = String::from("in force:\n");
    let addr =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    out.push_str(&format!("  listener public {}\n", cfg.listen.public));
    out.push_str(&format!("  listener api {}\n", addr(cfg.listen.api)));
    out.push_str(&format!("  listener admin {}\n", addr(cfg.listen.admin)));
    // Said only when on: off is the default, and the summary lists what is in force.
    if let Some(url) = cfg.telemetry.traces_url() {
        out.push_str(&format!(
            "  telemetry OTLP/HTTP to {}, service {}, sample ratio {}, user attribute {}\n",
            without_userinfo(&url),
            cfg.telemetry.service_name,
            cfg.telemetry.sample_ratio,
            if cfg.telemetry.user_attribute {
                "on"
            } else {
                "off"
            }
        ));
    }
    if cfg.providers.is_empty() {
        out.push_str("  providers none\n");
    }
    for p in &cfg.providers {
        let mut idp = Vec::new();
        if let Some(u) = &p.well_known_url {
            idp.push(format!("well-known {}", without_userinfo(u)));
        }
        if let Some(issuer) = &p.issuer {
            idp.push(format!("issuer {issuer}"));
        }
        out.push_str(&format!(
            "  provider {}: {}, client id {}, credential {}, grant {}\n",
            p.name,
            idp.join(", "),
            p.client_id,
            credential(p),
            grant_name(p.grant),
        ));
    }
    if cfg.routes.is_empty() {
        out.push_str("  routes none\n");
    }
    for r in &cfg.routes {
        let mut line = format!("  route {}: auth {}", r.path, auth_mode(r.auth));
        if r.auth != AuthMode::None
            && let Ok(p) = cfg.route_provider(r)
        {
            line.push_str(&format!(", provider {}", p.name));
        }
        if !r.scopes.is_empty() {
            line.push_str(&format!(", scopes {}", r.scopes.join(" ")));
        }
        if !r.roles.is_empty() {
            line.push_str(&format!(", roles {}", r.roles.join(" ")));
        }
        if let Some(target) = &r.obo {
            line.push_str(&format!(", obo {target}"));
        }
        for (header, target) in &r.obo_headers {
            line.push_str(&format!(", obo {target} in {header}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    let s = &cfg.session;
    if s.enabled {
        let provider = s
            .provider_in(&cfg.providers)
            .map_or("", |p| p.name.as_str());
        let url = s.public_url.as_ref().map(without_userinfo);
        out.push_str(&format!(
            "  sessions at {}: provider {provider}, cookie {}, lifetime {}s, idle {}s, store {}\n",
            url.map(String::from).unwrap_or_default(),
            s.cookie_name(),
            s.lifetime.as_secs(),
            s.idle_timeout.as_secs(),
            format!("{:?}", cfg.store.kind).to_lowercase(),
        ));
    }
    out
}

/// How tollgate authenticates to the provider's token endpoint and where the credential comes
/// from, in the order the provider takes them (the environment before a file); `none` when it
/// has nothing to send (the provider then only validates tokens).
fn credential(p: &ProviderConfig) -> String {
    let from = |env: bool, file: &Option<PathBuf>| match (env, file) {
        (true, _) => "environment".to_owned(),
        (false, Some(f)) => format!("file {}", f.display()),
        (false, None) => "nowhere".to_owned(),
    };
    match p.client_auth {
        ClientAuthMethod::ClientSecretPost | ClientAuthMethod::ClientSecretBasic => {
            if p.client_secret.is_none() && p.client_secret_file.is_none() {
                "none".to_owned()
            } else {
                format!(
                    "secret from {}",
                    from(p.client_secret.is_some(), &p.client_secret_file)
                )
            }
        }
        ClientAuthMethod::PrivateKeyJwt => {
            let source = if p.client_jwk.is_some() || p.client_jwk_file.is_some() {
                from(p.client_jwk.is_some(), &p.client_jwk_file)
            } else {
                from(false, &p.client_key_file)
            };
            format!("private key from {source}")
        }
        ClientAuthMethod::Federated => format!(
            "federated assertion from {}",
            from(false, &p.client_assertion_file)
        ),
    }
}

fn grant_name(grant: tollgate::config::ProviderGrant) -> &'static str {
    use tollgate::config::ProviderGrant;
    match grant {
        ProviderGrant::EntraObo => "entra_obo",
        ProviderGrant::IntrospectOnly => "introspect_only",
        ProviderGrant::TokenExchange => "token_exchange",
        ProviderGrant::JwtBearer => "jwt_bearer",
    }
}

fn auth_mode(mode: AuthMode) -> &'static str {
    match mode {
        AuthMode::Required => "required",
        AuthMode::Optional => "optional",
        AuthMode::None => "none",
        AuthMode::Session => "session",
    }
}

/// A URL may carry a user and password (`https://user:pass@idp`): the summary shows neither.
fn without_userinfo(u: &url::Url) -> url::Url {
    let mut u = u.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u
}

/// Loads the configuration; the default file may be absent (environment-only setups).
fn load(path: &Path) -> Result<Config, String> {
    let explicit = path != Path::new("tollgate.toml") || path.exists();
    Config::load(explicit.then_some(path), &ProcessEnv).map_err(|e| e.to_string())
}

/// The log filter `[log]` asks for: `level`, plus the access lines when `access = true` shows
/// them whatever `level` keeps quiet.
fn log_filter(cfg: &Config) -> String {
    if cfg.log.access {
        format!("{},tollgate::access=info", cfg.log.level)
    } else {
        cfg.log.level.clone()
    }
}

/// Changes the log filter while running; does nothing when `RUST_LOG` chose it.
type SetLevel = Box<dyn Fn(&str) + Send + Sync>;

/// A layer beside the log output: the OpenTelemetry exporter's, when telemetry is on.
type ExtraLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

fn init_logging(format: LogFormat, level: &str, exported: Option<ExtraLayer>) -> SetLevel {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // RUST_LOG, when set, decides alone, at start and after every reload.
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // The filter is the log output's alone (a per-layer filter): `[log] level = "warn"` keeps
    // the log quiet without keeping the exported spans from being recorded.
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colour codes only for a terminal: in a file or a log collector they are noise.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let log: ExtraLayer = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Pretty => fmt.with_filter(filter).boxed(),
    };
    let layers: Vec<ExtraLayer> = std::iter::once(log).chain(exported).collect();
    let _ = tracing_subscriber::registry().with(layers).try_init();
    level_setter(handle, pinned)
}

fn level_setter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
    pinned: bool,
) -> SetLevel {
    Box::new(move |level| {
        if pinned {
            return;
        }
        match tracing_subscriber::EnvFilter::try_new(level) {
            Ok(filter) => {
                if handle.reload(filter).is_err() {
                    tracing::warn!("the log filter could not be changed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "log.level not applied"),
        }
    })
}

/// Reloads the configuration file on `SIGHUP` and, with `[reload] watch`, when it changes.
struct Reload {
    reloader: tollgate::server::Reloader,
    path: PathBuf,
    set_level: SetLevel,
}

impl Reload {
    /// Reads the file (and the environment) again and puts it in force; a file that does not
    /// load or a configuration the server refuses leaves the one in force, with an error logged.
    async fn now(&self, trigger: &'static str) {
        let cfg = match load(&self.path) {
            Ok(cfg) => cfg,
            Err(e) => {
                self.reloader.refused(&e);
                return;
            }
        };
        let level = log_filter(&cfg);
        tracing::info!(trigger, file = %self.path.display(), "reloading the configuration");
        if self.reloader.reload(cfg).await.is_ok() {
            (self.set_level)(&level);
        }
    }

    #[cfg(unix)]
    async fn on_sighup(self: std::sync::Arc<Self>) {
        let kind = tokio::signal::unix::SignalKind::hangup();
        let Ok(mut hangups) = tokio::signal::unix::signal(kind) else {
            tracing::warn!("cannot listen for SIGHUP; reload by restarting");
            return;
        };
        while hangups.recv().await.is_some() {
            self.now("SIGHUP").await;
        }
    }

    /// Looks at the file once a second; a change is read once the file has stayed the same for
    /// `debounce` (an editor, or Kubernetes swapping a ConfigMap's files, writes in steps).
    async fn watch(self: std::sync::Arc<Self>, debounce: std::time::Duration) {
        let stamp = |path: &Path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut seen = stamp(&self.path);
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let now = stamp(&self.path);
            if now == seen || now.is_none() {
                continue;
            }
            // Settled: unchanged for `debounce`.
            let mut settled = now;
            loop {
                tokio::time::sleep(debounce).await;
                let again = stamp(&self.path);
                if again == settled {
                    break;
                }
                settled = again;
            }
            seen = settled;
            self.now("file changed").await;
        }
    }
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
