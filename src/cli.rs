//! The command line. Users never need it: with no arguments the program hosts
//! with the embedded defaults. Admins and tests use the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::clock::SystemClock;
use crate::config::{self, Config, RegistrationMode};

/// SecureChat: end-to-end encrypted team chat for one local network.
#[derive(Debug, Parser)]
#[command(name = "securechat", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Host the chat: an HTTPS + wss:// server with a certificate of its own.
    Host(HostArgs),
}

/// Flags of `securechat host`.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// Address and port to listen on. 0.0.0.0 serves the whole LAN; port 0
    /// picks a free port. If the default port is taken, the next free one is used.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], config::DEFAULT_PORT)))]
    pub bind: SocketAddr,
    /// Data directory (default: SECURECHAT_DATA_DIR, else the platform's
    /// per-user data folder).
    #[arg(long, env = "SECURECHAT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run without a tray icon or window, logging to stderr. (This version
    /// always runs this way.)
    #[arg(long)]
    pub headless: bool,
    /// Do not open a browser. (This version never opens one.)
    #[arg(long)]
    pub no_browser: bool,
    /// Your own certificate chain (PEM) instead of the local CA's.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Who may create accounts: open, invite (an invite code is needed) or
    /// closed. Remembered in the data directory.
    #[arg(long, value_enum)]
    pub registration: Option<RegistrationMode>,
    /// An extra allowed Origin (https://name:port), e.g. behind a proxy.
    /// Repeatable.
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,
}

impl Default for HostArgs {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], config::DEFAULT_PORT)),
            data_dir: std::env::var_os("SECURECHAT_DATA_DIR").map(PathBuf::from),
            headless: true,
            no_browser: true,
            tls_cert: None,
            tls_key: None,
            registration: None,
            allowed_origins: Vec::new(),
        }
    }
}

/// Parses the command line and runs it; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SECURECHAT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("securechat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Host(HostArgs::default())) {
        Command::Host(args) => runtime.block_on(host(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("securechat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `securechat host`: serve until Ctrl-C or SIGTERM, then shut down cleanly.
pub async fn host(args: HostArgs) -> Result<(), String> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(config::default_data_dir);
    let mut config = Config::new(args.bind, data_dir);
    config.tls_cert = args.tls_cert;
    config.tls_key = args.tls_key;
    config.registration = args.registration;
    config.allowed_origins = args.allowed_origins;
    let mut running = crate::server::start(config, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    println!("SecureChat {} is hosting. Open:", env!("CARGO_PKG_VERSION"));
    for url in running.urls() {
        println!("  {url}");
    }
    println!(
        "CA certificate fingerprint (SHA-256): {}",
        running.fingerprint()
    );
    println!("Press Ctrl+C to stop.");
    tokio::select! {
        () = stop_signal() => {}
        result = running.wait() => {
            return result.map_err(|e| format!("the server stopped: {e}"));
        }
    }
    eprintln!("Stopping: closing connections and flushing the database…");
    running.shutdown().await;
    println!("SecureChat stopped.");
    Ok(())
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
