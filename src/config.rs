//! Settings: where data lives, where to listen, and every limit the server
//! enforces. Flags override the environment, which overrides the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The port hosts listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8443;

/// Who may create an account (the first account may always be created, and
/// becomes the administrator).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone who can reach the server.
    Open,
    /// Only people holding an invite code from an administrator.
    Invite,
    /// Nobody.
    Closed,
}

impl RegistrationMode {
    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Invite => "invite",
            Self::Closed => "closed",
        }
    }
    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "invite" => Some(Self::Invite),
            "closed" => Some(Self::Closed),
            _ => None,
        }
    }
}

/// Everything a host needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// The directory holding the database and the certificates.
    pub data_dir: PathBuf,
    /// An administrator's own certificate chain (PEM), instead of the local CA.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// If set, the registration mode is changed to this at start.
    pub registration: Option<RegistrationMode>,
    /// Extra origins (`https://name:port`) allowed besides the one the request
    /// was addressed to; for reverse proxies and the local relay.
    pub allowed_origins: Vec<String>,
    /// The data directory's master key; `None` finds it by the rule in
    /// [`crate::secrets`] (environment, key file, OS keyring).
    pub master_key: Option<crate::secrets::MasterKey>,
    /// If set, the retention period is changed to this at start: `Some(0)`
    /// keeps everything forever, `Some(n)` keeps n days.
    pub retention_days: Option<u32>,
    /// Every limit, timeout and rate.
    pub limits: Limits,
}

impl Config {
    /// A configuration with default limits for `data_dir`, listening on `bind`.
    pub fn new(bind: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            bind,
            data_dir,
            tls_cert: None,
            tls_key: None,
            registration: None,
            allowed_origins: Vec::new(),
            master_key: None,
            retention_days: None,
            limits: Limits::default(),
        }
    }
}

/// Limits the server enforces. Defaults follow SECURITY.md §2 and §3.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket frame and message, in bytes.
    pub max_frame_bytes: usize,
    /// The WebSocket read buffer per socket: how much is read at a time
    /// (tungstenite's default is 128 KiB). An idle socket keeps it, so it
    /// is small; a larger frame gets room for its whole length once its
    /// header is read.
    pub ws_read_buffer: usize,
    /// The WebSocket write buffer per socket before flushing.
    pub ws_write_buffer: usize,
    /// Frames queued for one socket before it counts as too slow and is closed.
    pub send_queue: usize,
    /// Messages waiting to be stored; when it is full, a socket with a
    /// message to store stops reading until there is room, for at most
    /// `busy_wait`, then the message is refused as busy.
    pub writer_queue: usize,
    /// How long a message waits for room in the writer's queue.
    pub busy_wait: Duration,
    /// Chat frames per second per user, sustained.
    pub frames_per_sec: f64,
    /// Chat frames a user may send in a burst.
    pub frame_burst: f64,
    /// Frames refused for rate in a row before the socket is closed with 1008.
    pub abuse_close_after: u32,
    /// HTTP API requests per second per client address, sustained.
    pub http_per_sec: f64,
    /// HTTP API requests a client address may send in a burst.
    pub http_burst: f64,
    /// Live sockets one user may hold.
    pub max_sockets_per_user: usize,
    /// Live sockets one client address may hold.
    pub max_sockets_per_ip: usize,
    /// Argon2id hashes computed at once (each takes 19 MiB and a core).
    pub argon2_concurrency: usize,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub session_absolute: Duration,
    /// How often an open socket re-checks its session.
    pub session_recheck: Duration,
    /// How often the server pings each socket.
    pub ping_interval: Duration,
    /// A socket silent this long is closed.
    pub idle_timeout: Duration,
    /// How long a user stays "online" after their last socket closes, so a
    /// quick reconnect does not flap.
    pub presence_grace: Duration,
    /// Most members in one group.
    pub max_group_members: usize,
    /// Largest message ciphertext, in bytes.
    pub max_ciphertext_bytes: usize,
    /// Most messages one history page returns.
    pub history_page_max: usize,
    /// Most messages replayed per chat after `hello`.
    pub replay_max: usize,
    /// Failed logins for one username, within `login_window`, before a lock.
    pub user_failures_before_lock: u32,
    /// The first lock of a username; it doubles with each further failure.
    pub user_lock_base: Duration,
    /// The longest a username is locked.
    pub user_lock_max: Duration,
    /// Failed logins from one address within `login_window` before it is refused.
    pub ip_failures_before_lock: u32,
    /// How long an address is refused after too many failures.
    pub ip_lock: Duration,
    /// The window in which failures are counted.
    pub login_window: Duration,
    /// The largest file one may share, in plaintext bytes.
    pub max_file_bytes: u64,
    /// How many bytes of files (finished or not) one user may keep.
    pub user_quota_bytes: u64,
    /// How long an unfinished upload is kept.
    pub upload_expiry: Duration,
    /// The PBKDF2 iteration count every account uses. One count for all, so
    /// the count prelogin reports for unknown names gives nothing away.
    pub pbkdf2_iterations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            ws_read_buffer: 1024,
            ws_write_buffer: 8 * 1024,
            send_queue: 256,
            writer_queue: crate::server::writer::QUEUE,
            busy_wait: Duration::from_secs(2),
            frames_per_sec: 5.0,
            frame_burst: 20.0,
            abuse_close_after: 50,
            http_per_sec: 20.0,
            http_burst: 100.0,
            max_sockets_per_user: 8,
            max_sockets_per_ip: 64,
            argon2_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            session_idle: Duration::from_secs(12 * 3600),
            session_absolute: Duration::from_secs(7 * 24 * 3600),
            session_recheck: Duration::from_secs(30 * 60),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            presence_grace: Duration::from_secs(3),
            max_group_members: 50,
            max_ciphertext_bytes: 16 * 1024,
            history_page_max: 200,
            replay_max: 1000,
            user_failures_before_lock: 5,
            user_lock_base: Duration::from_secs(60),
            user_lock_max: Duration::from_secs(3600),
            ip_failures_before_lock: 20,
            ip_lock: Duration::from_secs(15 * 60),
            login_window: Duration::from_secs(15 * 60),
            pbkdf2_iterations: 600_000,
            max_file_bytes: 2 << 30,
            user_quota_bytes: 10 << 30,
            upload_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// The data directory: `SECURECHAT_DATA_DIR` if set, else the platform's
/// per-user data folder (`%APPDATA%\SecureChat`, `~/Library/Application
/// Support/SecureChat`, `$XDG_DATA_HOME/securechat` or
/// `~/.local/share/securechat`).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SECURECHAT_DATA_DIR") {
        return PathBuf::from(dir);
    }
    let env_dir = |name: &str| std::env::var_os(name).map(PathBuf::from);
    if cfg!(windows) {
        if let Some(appdata) = env_dir("APPDATA") {
            return appdata.join("SecureChat");
        }
    } else if cfg!(target_os = "macos") {
        if let Some(home) = env_dir("HOME") {
            return home.join("Library/Application Support/SecureChat");
        }
    } else if let Some(xdg) = env_dir("XDG_DATA_HOME") {
        return xdg.join("securechat");
    } else if let Some(home) = env_dir("HOME") {
        return home.join(".local/share/securechat");
    }
    PathBuf::from("securechat-data")
}
