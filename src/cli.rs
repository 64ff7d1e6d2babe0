//! The command line. Users never need it: with no arguments the program hosts
//! with the embedded defaults. Admins and tests use the subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

/// Prints a line to standard output. A closed or broken output (a terminal
/// gone, a pipe nobody reads) must never stop a running host, so write
/// errors are ignored where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// [`say!`] for the rest of the crate.
pub(crate) fn say(line: &str) {
    say!("{line}");
}

/// [`say!`] for standard error.
macro_rules! warn {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// [`warn!`] for the rest of the crate.
pub(crate) fn warn(line: &str) {
    warn!("{line}");
}

use crate::admin::{Admin, AdminError};
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
    /// Join a host: a local relay on 127.0.0.1, pinned to the host's
    /// certificate, for this computer's browser. Prints its URL first.
    Join(JoinArgs),
    /// Manage accounts (works whether the server is running or not).
    User {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        action: UserAction,
    },
    /// Create invite codes.
    Invite {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        action: InviteAction,
    },
    /// Read the encrypted chat logs.
    Logs {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        action: LogsAction,
    },
    /// Read the encrypted audit log of security events.
    Audit {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        action: AuditAction,
    },
}

/// Flags of `securechat join`.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// The host's address, as its owner shares it: https://ADDRESS:PORT/
    /// (default: the first host found on this network).
    pub url: Option<String>,
    /// The host's certificate fingerprint (SHA-256, as `securechat host`
    /// prints it). Without it, the one remembered for this host is used; a
    /// host joined the first time is trusted on first use and remembered.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// The relay's port on 127.0.0.1 (default: any free one).
    #[arg(long, default_value_t = 0)]
    pub relay_port: u16,
    /// Do not open a browser and show no tray icon: print the relay's URL
    /// as the first line and serve until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub no_browser: bool,
    /// Data directory, where remembered hosts and the log are kept (default:
    /// SECURECHAT_DATA_DIR, else the platform's per-user data folder).
    #[arg(long, env = "SECURECHAT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also log to stderr (the log file is in the data directory's diagnostics/).
    #[arg(long)]
    pub verbose: bool,
}

/// The data directory of an admin command.
#[derive(Debug, Clone, Args)]
pub struct DataDir {
    /// Data directory (default: SECURECHAT_DATA_DIR, else the platform's
    /// per-user data folder).
    #[arg(long, env = "SECURECHAT_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

impl DataDir {
    fn path(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(config::default_data_dir)
    }
}

/// `securechat user …`
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// List every account.
    List,
    /// Disable an account: it cannot sign in, and its open sessions end at once.
    Disable { name: String },
    /// Enable a disabled account.
    Enable { name: String },
    /// Make an account an administrator.
    Promote { name: String },
    /// Reset an account: prints a one-time code its owner uses to choose a new
    /// password. Their keys are replaced, so their old messages become unreadable.
    Reset { name: String },
}

/// `securechat invite …`
#[derive(Debug, Subcommand)]
pub enum InviteAction {
    /// Create an invite code (needed when registration is `invite`).
    Create {
        /// How many accounts the code may create.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long the code is valid: 30m, 24h, 7d…
        #[arg(long, default_value = "7d")]
        expires: String,
    },
}

/// `securechat logs …`
#[derive(Debug, Subcommand)]
pub enum LogsAction {
    /// List the chat logs: file, start, user and chat.
    List,
    /// Decrypt and print one log (as `logs list` names it).
    Show { file: String },
    /// Decrypt every chat log into DIR as plain .txt files.
    Export { dir: PathBuf },
}

/// `securechat audit …`
#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Decrypt and print the audit log.
    Show,
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
    /// Run without a tray icon or browser, logging to stderr (for servers).
    #[arg(long)]
    pub headless: bool,
    /// Do not open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Also log to stderr (the log file is <data>/diagnostics/).
    #[arg(long)]
    pub verbose: bool,
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
    /// Keep messages and chat logs this many days (0: forever). Remembered in
    /// the data directory.
    #[arg(long)]
    pub retention_days: Option<u32>,
    /// An extra allowed Origin (https://name:port), e.g. behind a proxy.
    /// Repeatable.
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,
}

impl HostArgs {
    /// The server configuration these flags describe.
    fn config(&self) -> Config {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(config::default_data_dir);
        let mut config = Config::new(self.bind, data_dir);
        config.tls_cert = self.tls_cert.clone();
        config.tls_key = self.tls_key.clone();
        config.registration = self.registration;
        config.allowed_origins = self.allowed_origins.clone();
        config.retention_days = self.retention_days;
        config
    }
}

impl Default for HostArgs {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], config::DEFAULT_PORT)),
            data_dir: std::env::var_os("SECURECHAT_DATA_DIR").map(PathBuf::from),
            headless: false,
            no_browser: false,
            verbose: false,
            tls_cert: None,
            tls_key: None,
            registration: None,
            retention_days: None,
            allowed_origins: Vec::new(),
        }
    }
}

/// Where log lines go: stderr (if asked) from the start, and a daily-rotated
/// file `<data>/diagnostics/securechat.log.*` (seven kept) once
/// [`Logging::start_file`] is called, which a host does only after its master
/// key has proven itself, so a refused start leaves the data directory as it
/// was. `SECURECHAT_LOG` sets the filter (default `info`).
struct Logging {
    reload: tracing_subscriber::reload::Handle<Option<FileLayer>, Base>,
    guard: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// The subscriber under the file layer: the registry behind the one filter.
type Base =
    tracing_subscriber::layer::Layered<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;
type FileLayer = Box<dyn tracing_subscriber::Layer<Base> + Send + Sync>;

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("SECURECHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

impl Logging {
    fn init(stderr: bool) -> Self {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let (file, reload) = tracing_subscriber::reload::Layer::new(None::<FileLayer>);
        let stderr_layer =
            stderr.then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
        let _ = tracing_subscriber::registry()
            .with(filter())
            .with(file)
            .with(stderr_layer)
            .try_init();
        Self {
            reload,
            guard: None,
        }
    }

    /// Starts writing the log file in `<data_dir>/diagnostics/`.
    fn start_file(&mut self, data_dir: &std::path::Path) {
        let dir = data_dir.join("diagnostics");
        if crate::secrets::create_private_dir(&dir).is_err() {
            return;
        }
        let Ok(appender) = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("securechat")
            .filename_suffix("log")
            .max_log_files(7)
            .build(&dir)
        else {
            return;
        };
        let (writer, guard) = tracing_appender::non_blocking(appender);
        self.guard = Some(guard);
        let layer: FileLayer = Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer),
        );
        let _ = self.reload.modify(|slot| *slot = Some(layer));
    }
}

/// A Windows release build has no console of its own (a double-click opens
/// no window). Run from a terminal with arguments, it attaches to that
/// terminal's console so its output and `--help` are seen.
#[cfg(windows)]
#[allow(unsafe_code)]
fn attach_parent_console() {
    use windows_sys::Win32::System::Console::{ATTACH_PARENT_PROCESS, AttachConsole};
    if std::env::args_os().len() > 1 {
        // SAFETY: a plain Win32 call with a constant argument; failure (no
        // parent console, or one already attached) changes nothing.
        unsafe {
            AttachConsole(ATTACH_PARENT_PROCESS);
        }
    }
}

/// Parses the command line and runs it; the process's exit code.
pub fn main() -> ExitCode {
    #[cfg(windows)]
    attach_parent_console();
    let cli = Cli::parse();
    // No arguments: the double-click path.
    let command = cli.command.unwrap_or(Command::Host(HostArgs::default()));
    // Hosts and relays also log to a file (a GUI program has no console);
    // `--headless` or `--verbose` keeps stderr. Admin commands use stderr.
    let stderr = match &command {
        Command::Host(a) => a.headless || a.verbose,
        Command::Join(a) => a.verbose,
        _ => true,
    };
    let mut logging = Logging::init(stderr);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!("securechat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let double_click = cli_was_empty();
    let result = match command {
        Command::Host(args) if args.headless => runtime.block_on(host(args, &mut logging)),
        Command::Host(args) => {
            let start = if double_click {
                crate::desktop::Start::Auto
            } else {
                crate::desktop::Start::Host
            };
            runtime.block_on(crate::desktop::run(
                start,
                args.config(),
                0,
                !args.no_browser,
                |dir| logging.start_file(dir),
            ))
        }
        Command::Join(args) if args.no_browser => {
            logging.start_file(&join_data_dir(&args));
            runtime.block_on(join(args))
        }
        Command::Join(args) => {
            let mut config = HostArgs::default().config();
            config.data_dir = join_data_dir(&args);
            let start = crate::desktop::Start::Join {
                url: args.url,
                fingerprint: args.fingerprint,
            };
            runtime.block_on(crate::desktop::run(
                start,
                config,
                args.relay_port,
                true,
                |dir| logging.start_file(dir),
            ))
        }
        Command::User { dir, action } => admin_command(&dir, |a| user(a, action)),
        Command::Invite { dir, action } => admin_command(&dir, |a| invite(a, action)),
        Command::Logs { dir, action } => admin_command(&dir, |a| logs(a, action)),
        Command::Audit { dir, action } => admin_command(&dir, |a| audit(a, action)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            warn!("securechat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the program was started with no arguments (a double-click).
fn cli_was_empty() -> bool {
    std::env::args_os().len() <= 1
}

fn join_data_dir(args: &JoinArgs) -> PathBuf {
    args.data_dir
        .clone()
        .unwrap_or_else(config::default_data_dir)
}

/// `securechat host --headless`: serve until Ctrl-C or SIGTERM, then shut
/// down cleanly.
async fn host(args: HostArgs, logging: &mut Logging) -> Result<(), String> {
    let mut running = crate::server::start(args.config(), Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    logging.start_file(&running.app.config.data_dir);
    tracing::info!(
        urls = ?running.urls(),
        fingerprint = %running.fingerprint(),
        key = %running.key_source,
        "hosting"
    );
    say!("SecureChat {} is hosting. Open:", env!("CARGO_PKG_VERSION"));
    for url in running.urls() {
        say!("  {url}");
    }
    say!(
        "CA certificate fingerprint (SHA-256): {}",
        running.fingerprint()
    );
    say!(
        "Data: {} (master key from {})",
        running.app.config.data_dir.display(),
        running.key_source
    );
    // Found by double-clicking teammates (on loopback only when bound there).
    let advert = crate::discovery::Advertiser::start(
        &crate::discovery::Scope::for_bind(running.addr.ip()),
        running.addr.port(),
        running.fingerprint(),
    )
    .inspect_err(|e| tracing::warn!(error = %e, "not advertised on the LAN"))
    .ok();
    say!("Press Ctrl+C to stop.");
    tokio::select! {
        () = stop_signal() => {}
        result = running.wait() => {
            return result.map_err(|e| format!("the server stopped: {e}"));
        }
    }
    warn!("Stopping: closing connections and flushing the database…");
    if let Some(advert) = advert {
        advert.stop().await;
    }
    running.shutdown().await;
    say!("SecureChat stopped.");
    Ok(())
}

/// `securechat join --no-browser`: the relay's URL as the first line, then
/// serve until Ctrl-C or SIGTERM. The host's fingerprint is remembered
/// (trust on first use) and checked on every later join.
pub async fn join(args: JoinArgs) -> Result<(), String> {
    let data_dir = join_data_dir(&args);
    let mut settings = crate::launcher::Settings::load(&data_dir);
    let (url, fingerprint) = match args.url {
        Some(url) => {
            let pin = args
                .fingerprint
                .or_else(|| settings.pin_for(&url).map(str::to_owned));
            (url, pin)
        }
        None => {
            let browser = crate::discovery::Browser::start(&crate::discovery::Scope::default())
                .map_err(|e| e.to_string())?;
            let found = browser
                .wait_for(crate::launcher::BROWSE_FOR * 2, |_| true)
                .await
                .into_iter()
                .next()
                .ok_or("no SecureChat host answered on this network; give its address: securechat join https://ADDRESS:PORT/")?;
            (
                found.url().ok_or("the host found has no usable address")?,
                Some(found.fingerprint),
            )
        }
    };
    let bind = std::net::SocketAddr::from(([127, 0, 0, 1], args.relay_port));
    let relay = crate::relay::start(&url, fingerprint.as_deref(), bind)
        .await
        .map_err(|e| e.to_string())?;
    say!("{}", relay.url());
    say!(
        "Relaying to {url} (certificate fingerprint {})",
        relay.fingerprint
    );
    settings.remember(&url, &relay.fingerprint);
    if let Err(e) = settings.save(&data_dir) {
        tracing::warn!(error = %e, "cannot remember the host's fingerprint");
    }
    say!("Press Ctrl+C to stop.");
    stop_signal().await;
    relay.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
pub(crate) async fn stop_signal() {
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

fn admin_command(
    dir: &DataDir,
    run: impl FnOnce(&mut Admin) -> Result<(), AdminError>,
) -> Result<(), String> {
    let mut admin = Admin::open(&dir.path()).map_err(|e| e.to_string())?;
    run(&mut admin).map_err(|e| e.to_string())
}

fn when(ms: i64) -> String {
    crate::chatlog::timestamp(ms)
}

fn user(admin: &mut Admin, action: UserAction) -> Result<(), AdminError> {
    match action {
        UserAction::List => {
            say!(
                "{:<32}  {:<5}  {:<8}  {:<24}",
                "USER",
                "ADMIN",
                "STATE",
                "CREATED"
            );
            for u in admin.users()? {
                let state = if u.reset_expires > 0 {
                    "reset"
                } else if u.disabled {
                    "disabled"
                } else {
                    "active"
                };
                let admin_flag = if u.is_admin { "yes" } else { "no" };
                say!(
                    "{:<32}  {:<5}  {:<8}  {:<24}",
                    u.username,
                    admin_flag,
                    state,
                    when(u.created_at)
                );
            }
        }
        UserAction::Disable { name } => {
            admin.set_disabled(&name, true)?;
            say!("Disabled {name}: they cannot sign in, and their open sessions have ended.");
        }
        UserAction::Enable { name } => {
            admin.set_disabled(&name, false)?;
            say!("Enabled {name}.");
        }
        UserAction::Promote { name } => {
            admin.promote(&name)?;
            say!("{name} is now an administrator.");
        }
        UserAction::Reset { name } => {
            let (code, expires) = admin.reset(&name)?;
            say!(
                "Reset code for {name} (shown once, valid until {}):",
                when(expires)
            );
            say!("  {code}");
            say!("They choose a new password with it. Their old messages can no longer be read,");
            say!("and their contacts will see that their keys changed.");
        }
    }
    Ok(())
}

fn invite(admin: &mut Admin, action: InviteAction) -> Result<(), AdminError> {
    match action {
        InviteAction::Create { uses, expires } => {
            let valid_for = crate::admin::parse_duration(&expires)?;
            let (code, until) = admin.create_invite(uses, valid_for)?;
            say!(
                "Invite code (shown once; {uses} use(s), valid until {}):",
                when(until)
            );
            say!("  {code}");
        }
    }
    Ok(())
}

fn print_damage(file: &str, damage: &Option<String>) {
    if let Some(damage) = damage {
        warn!("warning: {file}: the end of the log is damaged and was skipped: {damage}");
    }
}

fn logs(admin: &mut Admin, action: LogsAction) -> Result<(), AdminError> {
    match action {
        LogsAction::List => {
            for log in admin.logs()? {
                say!(
                    "{}  {}  {}  {}",
                    log.path,
                    log.started_at.map_or_else(|| "-".to_owned(), when),
                    log.user.as_deref().unwrap_or("(unknown user)"),
                    log.chat.as_deref().unwrap_or("(unknown chat)")
                );
            }
        }
        LogsAction::Show { file } => {
            let contents = admin.read_log(&file)?;
            for line in &contents.lines {
                say!("{line}");
            }
            print_damage(&file, &contents.damage);
        }
        LogsAction::Export { dir } => {
            let written = admin.export_logs(&dir)?;
            say!("Wrote {} log(s) to {}", written.len(), dir.display());
        }
    }
    Ok(())
}

fn audit(admin: &mut Admin, action: AuditAction) -> Result<(), AdminError> {
    match action {
        AuditAction::Show => {
            for (file, contents) in admin.audit_logs()? {
                for line in &contents.lines {
                    say!("{line}");
                }
                print_damage(&file, &contents.damage);
            }
        }
    }
    Ok(())
}
