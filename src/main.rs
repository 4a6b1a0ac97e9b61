//! The `tollgate` command: serve | check | demo | dev-idp | keygen | store rotate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::config::{Config, LogFormat, ProcessEnv};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Identity sidecar for apps behind Entra ID or any OIDC provider"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (public, api and admin listeners).
    Serve {
        /// Configuration file (TOML); TOLLGATE_* and AZURE_* environment variables are merged in.
        #[arg(long, short, default_value = "tollgate.toml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Load and validate the configuration, print it with secrets redacted.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "tollgate.toml", env = "TOLLGATE_CONFIG")]
        config: PathBuf,
    },
    /// Start a dev IdP, an echo app and the sidecar on loopback, and print commands to try.
    Demo {
        /// Public listener port of the sidecar (0 picks a free one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run the local development OpenID provider alone.
    DevIdp {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9400")]
        listen: std::net::SocketAddr,
        /// Optional TOML file with extra users and apps.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print a new token-store encryption key line (`kid:base64`).
    Keygen,
    /// Token store maintenance.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Re-seal every stored entry under the first configured key.
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
            // `access = true` shows the access lines whatever `level` keeps quiet (RUST_LOG,
            // when set, still decides alone).
            let level = if cfg.log.access {
                format!("{},tollgate::access=info", cfg.log.level)
            } else {
                cfg.log.level.clone()
            };
            init_logging(cfg.log.format, &level);
            let ignored = tollgate::config::ignored_env_names(&ProcessEnv);
            if !ignored.is_empty() {
                tracing::debug!(names = ?ignored, "TOLLGATE_* variables without a SECTION__KEY are not configuration; ignored");
            }
            let server = tollgate::server::Server::bind(cfg)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(public = %server.public_addr(), api = ?server.api_addr(), admin = ?server.admin_addr(), "listening");
            server
                .run(shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::Check { config } => {
            let cfg = load(&config)?;
            print!("{}", cfg.to_redacted_toml());
            eprintln!("configuration OK");
            Ok(())
        }
        Command::Demo { port } => {
            init_logging(LogFormat::Pretty, "warn,tollgate=info");
            tollgate::demo::run(port, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }
        Command::DevIdp { listen, config } => {
            init_logging(LogFormat::Pretty, "info");
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

/// Loads the configuration; the default file may be absent (environment-only setups).
fn load(path: &Path) -> Result<Config, String> {
    let explicit = path != Path::new("tollgate.toml") || path.exists();
    Config::load(explicit.then_some(path), &ProcessEnv).map_err(|e| e.to_string())
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: in a file or a log collector they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
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
