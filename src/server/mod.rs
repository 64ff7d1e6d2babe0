//! The HTTPS server: routes, static assets with security headers, Origin and
//! rate checks for the API, the WebSocket endpoint, and graceful shutdown.
//!
//! [`start`] takes a [`Config`] and a [`Clock`], binds (port 0 works), and
//! returns a [`Running`] handle whose [`Running::shutdown`] closes every socket
//! with 1001, waits for the tasks and flushes the store.

pub mod api;
mod assets;
pub mod writer;
mod ws;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Passwords;
use crate::chat::{Hub, RateLimiter};
use crate::chatlog::Logger;
use crate::clock::Clock;
use crate::config::{Config, RegistrationMode};
use crate::error::ApiError;
use crate::secrets::{self, MasterKey};
use crate::store::{Db, Store};
use crate::tls::{self, TlsMaterial};

/// Everything a request handler may need, shared by all of them.
pub struct AppState {
    /// Settings and limits.
    pub config: Config,
    /// The store, through the blocking pool.
    pub db: Db,
    /// Live sockets and presence.
    pub hub: Arc<Hub>,
    /// The time source for expiry and throttling.
    pub clock: Arc<dyn Clock>,
    /// Argon2id hashing behind a semaphore.
    pub passwords: Passwords,
    /// Keys the fake salts of unknown usernames.
    pub server_secret: Vec<u8>,
    /// Chat frames per user.
    pub frame_limiter: RateLimiter<i64>,
    /// API requests per client address.
    pub http_limiter: RateLimiter<IpAddr>,
    /// The send path's group commit: stores, fans out, then answers (see
    /// [`writer`]).
    pub writer: writer::Writer,
    /// Fired when the server shuts down.
    pub shutdown: CancellationToken,
    /// Counts live socket tasks, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The certificate material, for the fingerprint.
    pub tls: TlsMaterial,
    /// Writes the encrypted chat and audit logs.
    pub logger: Logger,
    /// Attempts refused during a lock that are in the audit log already, by
    /// (event, address, end of the lock): one record a lock, not one per
    /// refused attempt.
    pub refusals_audited: std::sync::Mutex<std::collections::HashSet<(&'static str, String, i64)>>,
}

/// The shared handle given to handlers.
pub type App = Arc<AppState>;

impl AppState {
    /// The registration mode in force.
    pub async fn registration_mode(&self) -> Result<RegistrationMode, ApiError> {
        let raw = self.db.call(|s| s.setting("registration_mode")).await?;
        Ok(raw
            .and_then(|v| RegistrationMode::parse(std::str::from_utf8(&v).ok()?))
            .unwrap_or(RegistrationMode::Open))
    }

    /// The audit event's line in the encrypted audit log file (and its
    /// name in the process log); its database record is the caller's.
    pub fn audit_file(&self, event: &'static str, actor: &str, detail: &str, now: i64) {
        // Only the event's name goes to the process log: its details
        // (names, addresses) belong in the encrypted audit log alone.
        tracing::info!(event, "audit");
        self.logger
            .audit(format!("{event} actor={actor} {detail}"), now);
    }

    /// Appends to the audit log; a failure to write is logged, not fatal to
    /// the request that caused it.
    pub async fn audit(&self, event: &'static str, actor: &str, detail: String) {
        let now = self.clock.now_ms();
        let actor = actor.to_owned();
        self.audit_file(event, &actor, &detail, now);
        if let Err(e) = self
            .db
            .call(move |s| s.audit(now, event, &actor, &detail))
            .await
        {
            tracing::error!(error = %e, "could not write the audit log");
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Secrets(#[from] secrets::SecretsError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot prepare password hashing: {0}")]
    Hashing(String),
}

/// A server that is running.
pub struct Running {
    /// The address it listens on (with the real port when bound to 0).
    pub addr: SocketAddr,
    /// Where the data directory's master key came from.
    pub key_source: secrets::KeySource,
    /// The shared state, for tests and admin commands in-process.
    pub app: App,
    handle: axum_server::Handle<SocketAddr>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The HTTPS URLs people can open: loopback first, then LAN addresses
    /// when listening on all interfaces.
    pub fn urls(&self) -> Vec<String> {
        let port = self.addr.port();
        let ip = self.addr.ip();
        if !ip.is_unspecified() {
            return vec![url_for(&ip.to_string(), port)];
        }
        let mut urls = vec![url_for("localhost", port)];
        for name in tls::local_names() {
            if let Ok(addr) = name.parse::<IpAddr>()
                && !addr.is_loopback()
                && (addr.is_ipv4() || ip.is_ipv6())
            {
                urls.push(url_for(&name, port));
            }
        }
        urls
    }

    /// The SHA-256 fingerprint of the certificate clients pin.
    pub fn fingerprint(&self) -> &str {
        &self.app.tls.fingerprint
    }

    /// Stops the server: every socket is closed with 1001, in-flight requests
    /// get a few seconds, then the store is checkpointed.
    pub async fn shutdown(self) {
        self.app.shutdown.cancel();
        self.app.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.app.tasks.wait()).await;
        self.handle.graceful_shutdown(Some(Duration::from_secs(5)));
        match self.serve.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "server task failed"),
            Ok(Ok(())) => {}
        }
        let logger = self.app.logger.clone();
        let _ = tokio::task::spawn_blocking(move || logger.stop()).await;
        if let Err(e) = self.app.db.call(|s| s.checkpoint()).await {
            tracing::warn!(error = %e, "could not checkpoint the database");
        }
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        (&mut self.serve)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

fn url_for(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("https://[{host}]:{port}/")
    } else {
        format!("https://{host}:{port}/")
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    // The default port may be taken (another program, a second host): then
    // the next free one, as ARCHITECTURE.md promises.
    let attempts = if addr.port() == crate::config::DEFAULT_PORT {
        20
    } else {
        1
    };
    let mut last = None;
    for i in 0..attempts {
        let candidate = SocketAddr::new(addr.ip(), addr.port() + i);
        match TcpListener::bind(candidate) {
            Ok(listener) => {
                listener
                    .set_nonblocking(true)
                    .map_err(|e| StartError::Bind(candidate, e))?;
                return Ok(listener);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(StartError::Bind(
        addr,
        last.unwrap_or_else(|| std::io::Error::other("no port")),
    ))
}

/// The data directory's master key: the configured one (checked against the
/// directory), or found by the rule in [`crate::secrets`].
pub fn open_master_key(config: &Config) -> Result<MasterKey, StartError> {
    Ok(match &config.master_key {
        Some(key) => {
            secrets::check_or_record(&config.data_dir, key)?;
            key.clone()
        }
        None => {
            let env = std::env::var(secrets::MASTER_KEY_ENV).ok();
            secrets::load_or_create(&config.data_dir, env.as_deref(), secrets::KeyringUse::Ask)?
        }
    })
}

/// Opens the store, prepares TLS, binds and starts serving.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let master = open_master_key(&config)?;
    tracing::info!("the master key comes from {}", master.source);
    let db_key = master.subkey("db");
    // Off the async workers: opening may rewrite an older database, or
    // wait while another process holds it alone (see `Store::open`).
    let store = {
        let path = config.data_dir.join("securechat.db");
        tokio::task::spawn_blocking(move || {
            let mut store = Store::open(&path, &db_key)?;
            if let Err(e) = store.checkpoint_in_background(&db_key) {
                tracing::warn!(error = %e, "commits will copy the write-ahead log back themselves");
            }
            Ok::<_, crate::store::StoreError>(store)
        })
        .await
        .map_err(|e| crate::store::StoreError::Task(e.to_string()))??
    };
    let db = Db::new(store);
    // A host from 0.1.0 keeps the secret it had (now inside the encrypted
    // store), so fake prelogin salts do not change across the upgrade;
    // a new host derives it from the master key and stores nothing.
    let server_secret = match db.blocking(|s| s.setting("server_secret"))? {
        Some(stored) => stored,
        None => master.subkey("server-secret").to_vec(),
    };
    if let Some(mode) = config.registration {
        db.blocking(|s| s.set_setting("registration_mode", mode.as_str().as_bytes()))?;
    }
    if let Some(days) = config.retention_days {
        db.blocking(|s| s.set_number("retention_days", i64::from(days)))?;
    }
    let material = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => tls::load_custom(cert, key)?,
        _ => tls::load_or_create(
            &config.data_dir.join("tls"),
            &tls::local_names(),
            &master.subkey("tls"),
        )?,
    };
    let rustls_config = tls::server_config(&material)?;
    let logger = Logger::start(
        &config.data_dir,
        db.clone(),
        master.subkey("logs"),
        master.subkey("log-names"),
        clock.now_ms(),
    );
    let passwords =
        Passwords::new(config.limits.argon2_concurrency).map_err(StartError::Hashing)?;
    let listener = bind(config.bind)?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.bind, e))?;

    let limits = &config.limits;
    let (writer_tx, writer_rx) = writer::channel(config.limits.writer_queue);
    let app: App = Arc::new(AppState {
        hub: Hub::new(
            limits.send_queue,
            limits.max_sockets_per_user,
            limits.max_sockets_per_ip,
            limits.presence_grace,
        ),
        frame_limiter: RateLimiter::new(limits.frames_per_sec, limits.frame_burst),
        http_limiter: RateLimiter::new(limits.http_per_sec, limits.http_burst),
        config,
        db,
        clock,
        passwords,
        server_secret,
        writer: writer_tx,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        tls: material,
        logger,
        refusals_audited: std::sync::Mutex::default(),
    });

    let handle = axum_server::Handle::new();
    // TCP_NODELAY: without it, Nagle's algorithm and the peer's delayed
    // acknowledgements stall the tail of every response (measured: file
    // chunks downloaded at 45 MiB/s instead of hundreds).
    let tls = axum_server::tls_rustls::RustlsAcceptor::new(
        axum_server::tls_rustls::RustlsConfig::from_config(rustls_config),
    )
    .acceptor(axum_server::accept::NoDelayAcceptor::new());
    let server = axum_server::from_tcp(listener)
        .map_err(|e| StartError::Bind(addr, e))?
        .acceptor(tls)
        .handle(handle.clone());
    let service = router(app.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let serve = tokio::spawn(async move { server.serve(service).await });
    tokio::spawn(maintenance(app.clone()));
    tokio::spawn(writer::run(app.clone(), writer_rx));
    tracing::info!(%addr, fingerprint = %app.tls.fingerprint, "SecureChat is listening");
    Ok(Running {
        addr,
        key_source: master.source.clone(),
        app,
        handle,
        serve,
    })
}

/// Housekeeping while the server runs: every second it notices changes an
/// administrator made from the command line (and closes sockets whose
/// session or account is gone); every hour it applies the retention period
/// and drops spent invites, expired sessions and spent sign-in counters.
async fn maintenance(app: App) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_epoch = app.db.call(|s| s.number("admin_epoch")).await.unwrap_or(0);
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Ok(epoch) = app.db.call(|s| s.number("admin_epoch")).await
            && epoch != seen_epoch
        {
            seen_epoch = epoch;
            close_revoked_sockets(&app).await;
        }
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(tokio::time::Instant::now());
            if let Err(e) = apply_retention(&app).await {
                tracing::error!(error = %e, "applying the retention period failed");
            }
        }
    }
}

/// Closes every socket whose session was deleted or whose account was
/// disabled (by a command-line tool, outside this process).
pub async fn close_revoked_sockets(app: &App) {
    let live = app.hub.sessions();
    let revoked = app
        .db
        .call(move |s| {
            let mut revoked = Vec::new();
            for (_, hash) in live {
                match s.session(&hash)? {
                    Some(session) if !session.user.disabled => {}
                    _ => revoked.push(hash),
                }
            }
            Ok(revoked)
        })
        .await;
    match revoked {
        Ok(revoked) => app
            .hub
            .close_sessions(&revoked, crate::protocol::close::SESSION_ENDED),
        Err(e) => tracing::error!(error = %e, "checking sessions failed"),
    }
}

/// Deletes messages and chat logs older than the retention period (if one
/// is set), spent invites, expired sessions and spent sign-in counters.
pub async fn apply_retention(app: &App) -> Result<(), crate::store::StoreError> {
    let now = app.clock.now_ms();
    let days = app.db.call(|s| s.number("retention_days")).await?;
    app.db.call(move |s| s.prune_invites(now)).await?;
    let limits = &app.config.limits;
    let (idle, absolute, window) = (
        crate::auth::ms(limits.session_idle),
        crate::auth::ms(limits.session_absolute),
        crate::auth::ms(limits.login_window),
    );
    match app
        .db
        .call(move |s| s.prune_spent(now, idle, absolute, window))
        .await
    {
        Ok((0, 0)) => {}
        Ok((sessions, counters)) => {
            tracing::info!(
                sessions,
                counters,
                "expired sessions and spent sign-in counters removed"
            );
        }
        // The rest of the sweep goes on.
        Err(e) => tracing::error!(error = %e, "removing expired sessions failed"),
    }
    let file_cutoff = (days > 0).then(|| now - days.saturating_mul(86_400_000));
    if let Err(e) = crate::files::prune(app, file_cutoff).await {
        tracing::error!(error = %e, "pruning files failed");
    }
    if days <= 0 {
        return Ok(());
    }
    let cutoff = now - days.saturating_mul(86_400_000);
    let messages = app.db.call(move |s| s.prune_messages(cutoff)).await?;
    let old_logs = app.db.call(move |s| s.chat_logs_before(cutoff)).await?;
    let dir = app.config.data_dir.clone();
    // A log is deleted only once nothing has been written to it since the
    // cutoff (a session still running keeps its log), and forgotten only
    // once its file is gone.
    let gone = tokio::task::spawn_blocking(move || {
        let cutoff =
            std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(cutoff).unwrap_or(0));
        let mut gone = Vec::new();
        for rel in old_logs {
            let path = dir.join(&rel);
            let quiet = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_or(true, |modified| modified < cutoff);
            if !quiet {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => continue,
            }
            if let Some(parent) = path.parent() {
                // Removes the chat's folder once it is empty; fails harmlessly otherwise.
                let _ = std::fs::remove_dir(parent);
            }
            gone.push(rel);
        }
        gone
    })
    .await
    .map_err(|e| crate::store::StoreError::Task(e.to_string()))?;
    let removed = gone.len();
    app.db
        .call(move |s| {
            for rel in &gone {
                s.forget_chat_log(rel)?;
            }
            Ok(())
        })
        .await?;
    if messages > 0 || removed > 0 {
        tracing::info!(messages, logs = removed, days, "retention applied");
    }
    Ok(())
}

/// Every route of the server.
pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/prelogin", post(api::prelogin))
        .route("/register", post(api::register))
        .route("/login", post(api::login))
        .route("/logout", post(api::logout))
        .route("/logout-all", post(api::logout_all))
        .route("/me", get(api::me))
        .route("/keys", get(api::own_keys))
        .route("/change-password", post(api::change_password))
        .route("/reset", post(api::complete_reset))
        .route("/users", get(api::users))
        .route("/users/{name}", get(api::user))
        .route("/chats", get(api::chats).post(api::create_chat))
        .route("/chats/{id}", get(api::chat).patch(api::rename_chat))
        .route("/chats/{id}/members", post(api::add_member))
        .route(
            "/chats/{id}/members/{name}",
            axum::routing::delete(api::remove_member),
        )
        .route("/chats/{id}/messages", get(api::history))
        .route(
            "/admin/registration",
            get(api::get_registration).put(api::set_registration),
        )
        .route("/admin/invites", post(api::create_invite))
        .route(
            "/admin/users/{name}",
            axum::routing::patch(api::admin_update_user),
        )
        .route("/files", post(crate::files::create))
        .route(
            "/files/{id}",
            get(crate::files::get_status).delete(crate::files::delete),
        )
        .route("/files/{id}/complete", post(crate::files::complete))
        .route(
            "/files/{id}/chunks/{idx}",
            get(crate::files::get_chunk)
                .put(crate::files::put_chunk)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::files::CHUNK_CIPHER as usize,
                )),
        )
        .route("/admin/users/{name}/reset", post(api::admin_reset_user))
        .route("/admin/audit", get(api::audit_log))
        .route("/admin/sessions", get(api::admin_sessions))
        .route(
            "/admin/sessions/{id}",
            axum::routing::delete(api::admin_end_session),
        )
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), api_guard));
    Router::new()
        .nest("/api", api)
        .route("/ws", get(ws::upgrade))
        .fallback(assets::serve)
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

/// The client address of a request.
pub fn client_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// True if and only if the request's `Origin` is exactly `https://` + the
/// `Host` it was sent to, or one of the configured extra origins. A missing
/// `Origin` is refused: every browser sends one on these requests, and the
/// native client does too.
pub fn origin_allowed(headers: &HeaderMap, config: &Config) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin = origin.to_ascii_lowercase();
    if config
        .allowed_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(&origin))
    {
        return true;
    }
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| origin == format!("https://{}", host.to_ascii_lowercase()))
}

/// Rate-limits API calls per address and refuses state-changing requests
/// from a foreign `Origin` (cross-site request forgery).
async fn api_guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let ip = client_ip(&request);
    // File chunks are authenticated, size-bounded and many: they are not
    // counted against the per-address API budget (which would cap a file's
    // speed at that many MiB a second).
    let chunk = request.uri().path().contains("/chunks/");
    if !chunk && let Err(wait) = app.http_limiter.check(&ip, app.clock.now_ms()) {
        return ApiError::too_many("rate_limited", "Too many requests. Please slow down.", wait)
            .into_response();
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && !origin_allowed(request.headers(), &app.config) {
        return ApiError::forbidden(
            "bad_origin",
            "This request came from a page that is not SecureChat.",
        )
        .into_response();
    }
    next.run(request).await
}

/// The embedded web UI, for the local relay too.
pub async fn assets_fallback(method: Method, uri: axum::http::Uri) -> Response {
    assets::serve(method, uri).await
}

/// The headers of SECURITY.md §7, for the local relay too.
pub async fn security_headers_layer(request: Request, next: Next) -> Response {
    security_headers(request, next).await
}

/// The headers of SECURITY.md §7, on every response.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
