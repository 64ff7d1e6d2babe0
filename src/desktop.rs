//! The desktop program: what `securechat` does on a double-click, and what
//! `securechat host` / `securechat join` do with a display. It holds one
//! role at a time (hosting, joined through the local relay, or neither),
//! shows it in the tray, and carries out the tray's commands. Without a
//! display or a tray host it runs the same role headless and says so in
//! its log.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::autostart::Autostart;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::discovery::{self, Advertiser, Browser, FoundHost, Scope};
use crate::launcher::{self, Decision, Discover, Instance, Mode, OpenUrl, Settings, SystemBrowser};
use crate::relay::{Health, RunningRelay};
use crate::server::Running;
use crate::tray::{self, Command, SharedView, View};

/// How the program was started.
#[derive(Debug, Clone)]
pub enum Start {
    /// A double-click: decide.
    Auto,
    /// `securechat host`.
    Host,
    /// `securechat join [URL] [--fingerprint FP]`.
    Join {
        url: Option<String>,
        fingerprint: Option<String>,
    },
}

/// Discovery for the launcher's decision: a short mDNS browse.
struct Mdns(Scope);

impl Discover for Mdns {
    async fn find(&self, within: Duration) -> Vec<FoundHost> {
        match Browser::start(&self.0) {
            Ok(browser) => browser.wait_for(within, |_| true).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot browse the LAN");
                Vec::new()
            }
        }
    }
}

/// What this computer is doing.
enum Role {
    Idle,
    Hosting {
        running: Box<Running>,
        advert: Option<Advertiser>,
    },
    Joined {
        relay: RunningRelay,
        /// `https://ADDRESS:PORT` of the host.
        url: String,
        name: String,
    },
    /// A host to join that does not answer yet; retried every few seconds.
    Waiting {
        url: String,
        pin: Option<String>,
        why: String,
    },
}

struct Desktop {
    /// The template of a hosting configuration (bind address, data directory…).
    config: Config,
    relay_bind: SocketAddr,
    settings: Settings,
    instance: Instance,
    scope: Scope,
    browser: Option<Browser>,
    role: Role,
    view: SharedView,
    tray: Option<tray::Tray>,
    autostart: Option<Autostart>,
    open_browser: bool,
}

/// Runs the desktop program until Quit, Ctrl-C or SIGTERM. `data_ready` is
/// called once the data directory's key has proven itself (to start the
/// log file there).
pub async fn run(
    start: Start,
    config: Config,
    relay_port: u16,
    open_browser: bool,
    data_ready: impl FnOnce(&std::path::Path),
) -> Result<(), String> {
    let mut config = config;
    // The key first: a data directory whose key is wrong is left exactly as
    // it was (no lock file, no settings).
    config.master_key = Some(crate::server::open_master_key(&config).map_err(|e| e.to_string())?);
    let data_dir = config.data_dir.clone();
    let instance = match Instance::acquire(&data_dir)
        .map_err(|e| format!("cannot use the data directory {}: {e}", data_dir.display()))?
    {
        Ok(instance) => instance,
        Err(_) => {
            crate::cli::say(&format!(
                "SecureChat is already running for {}; opening it.",
                data_dir.display()
            ));
            return launcher::open_running(&data_dir, &SystemBrowser).await;
        }
    };
    let settings = Settings::load(&data_dir);
    let scope = Scope::for_bind(config.bind.ip());
    let decision = match start {
        Start::Host => Decision::Host,
        Start::Join {
            url: Some(url),
            fingerprint,
        } => Decision::Join {
            fingerprint: fingerprint.or_else(|| settings.pin_for(&url).map(str::to_owned)),
            url,
        },
        Start::Join { url: None, .. } => {
            let found = Mdns(scope.clone()).find(launcher::BROWSE_FOR * 2).await;
            let host = found.first().ok_or(
                "no SecureChat host answered on this network; give its address: securechat join https://ADDRESS:PORT/",
            )?;
            Decision::Join {
                url: host.url().ok_or("the host found has no usable address")?,
                fingerprint: Some(host.fingerprint.clone()),
            }
        }
        Start::Auto => launcher::decide(&settings, &Mdns(scope.clone())).await,
    };
    let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    let view: SharedView = Arc::new(Mutex::new(View {
        status: "Starting…".into(),
        ..View::default()
    }));
    let mut desktop = Desktop {
        relay_bind: SocketAddr::from(([127, 0, 0, 1], relay_port)),
        config,
        settings,
        instance,
        browser: None,
        scope,
        role: Role::Idle,
        view: view.clone(),
        tray: None,
        autostart: Autostart::for_user(),
        open_browser,
    };
    match decision {
        Decision::Host => desktop.host().await?,
        Decision::Join { url, fingerprint } => desktop.join(url, fingerprint, None).await,
    }
    data_ready(&desktop.config.data_dir);
    desktop.browser = Browser::start(&desktop.scope)
        .inspect_err(|e| tracing::warn!(error = %e, "the Join menu will stay empty"))
        .ok();
    desktop.tray = if !launcher::has_display() {
        tracing::info!("no display: running headless (no tray icon)");
        None
    } else {
        match tray::spawn(view, commands_tx) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::info!(error = %e, "no tray icon (no tray host?): running headless");
                None
            }
        }
    };
    desktop.update_view().await;
    desktop.open();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = crate::cli::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            command = commands.recv() => match command {
                None | Some(Command::Quit) => break,
                Some(command) => desktop.handle(command).await,
            },
            _ = tick.tick() => desktop.tick().await,
        }
        desktop.update_view().await;
    }
    crate::cli::say("Stopping: closing connections and flushing the database…");
    desktop.stop_role().await;
    if let Some(t) = desktop.tray.take() {
        t.close();
    }
    drop(desktop.browser.take());
    crate::cli::say("SecureChat stopped.");
    Ok(())
}

impl Desktop {
    fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    fn save_settings(&self) {
        if let Err(e) = self.settings.save(&self.data_dir()) {
            tracing::warn!(error = %e, "cannot save the desktop settings");
        }
    }

    /// Starts hosting here (stopping whatever ran before).
    async fn host(&mut self) -> Result<(), String> {
        self.stop_role().await;
        let running = crate::server::start(self.config.clone(), Arc::new(SystemClock))
            .await
            .map_err(|e| e.to_string())?;
        let advert = Advertiser::start(&self.scope, running.addr.port(), running.fingerprint())
            .inspect_err(|e| tracing::warn!(error = %e, "not advertised on the LAN"))
            .ok();
        crate::cli::say(&format!(
            "SecureChat {} is hosting. Open:",
            env!("CARGO_PKG_VERSION")
        ));
        for url in running.urls() {
            crate::cli::say(&format!("  {url}"));
        }
        crate::cli::say(&format!(
            "CA certificate fingerprint (SHA-256): {}",
            running.fingerprint()
        ));
        tracing::info!(urls = ?running.urls(), fingerprint = %running.fingerprint(), "hosting");
        self.instance.set_url(&local_url(&running));
        self.settings.mode = Some(Mode::Host);
        self.save_settings();
        self.role = Role::Hosting {
            running: Box::new(running),
            advert,
        };
        Ok(())
    }

    /// Joins the host at `url` through the local relay (stopping whatever
    /// ran before). A host that does not answer is retried; a certificate
    /// that differs from the pin is refused.
    async fn join(&mut self, url: String, pin: Option<String>, name: Option<String>) {
        self.stop_role().await;
        let pin = pin.or_else(|| self.settings.pin_for(&url).map(str::to_owned));
        match crate::relay::start(&url, pin.as_deref(), self.relay_bind).await {
            Ok(relay) => {
                crate::cli::say(&relay.url());
                crate::cli::say(&format!(
                    "Relaying to {url} (certificate fingerprint {})",
                    relay.fingerprint
                ));
                self.settings.remember(&url, &relay.fingerprint);
                self.settings.mode = Some(Mode::Join);
                self.settings.last_host = Some(url.clone());
                self.save_settings();
                self.instance.set_url(&relay.url());
                let name = name.unwrap_or_else(|| host_label(&url));
                self.role = Role::Joined { relay, url, name };
            }
            Err(e) => {
                tracing::warn!(host = %url, error = %e, "cannot join");
                crate::cli::warn(&format!("securechat: {e}"));
                let why = match e {
                    crate::relay::RelayError::Mismatch { .. } => {
                        "Host certificate changed — refused".to_owned()
                    }
                    _ => "Host unreachable — retrying".to_owned(),
                };
                self.role = Role::Waiting { url, pin, why };
            }
        }
    }

    async fn stop_role(&mut self) {
        match std::mem::replace(&mut self.role, Role::Idle) {
            Role::Hosting { running, advert } => {
                if let Some(advert) = advert {
                    advert.stop().await;
                }
                running.shutdown().await;
            }
            Role::Joined { relay, .. } => relay.shutdown().await,
            Role::Idle | Role::Waiting { .. } => {}
        }
    }

    fn open(&self) {
        if !self.open_browser {
            return;
        }
        if let Some(url) = self.open_url() {
            SystemBrowser.open(&url);
        }
    }

    fn open_url(&self) -> Option<String> {
        match &self.role {
            Role::Hosting { running, .. } => Some(local_url(running)),
            Role::Joined { relay, .. } => Some(relay.url()),
            _ => None,
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Open => {
                if let Some(url) = self.open_url() {
                    SystemBrowser.open(&url);
                }
            }
            Command::ToggleHosting => {
                if matches!(self.role, Role::Hosting { .. }) {
                    self.stop_role().await;
                    self.settings.mode = None;
                    self.save_settings();
                    tracing::info!("hosting switched off");
                } else if let Err(e) = self.host().await {
                    tracing::warn!(error = %e, "cannot host");
                    self.set_status(&format!("Cannot host: {e}"));
                } else {
                    self.open();
                }
            }
            Command::Join(id) => {
                let found = self
                    .browser
                    .as_ref()
                    .and_then(|b| b.hosts().into_iter().find(|h| h.id == id));
                if let Some(host) = found
                    && let Some(url) = host.url()
                {
                    // The advertised fingerprint, unless this computer already
                    // trusts another one for this host: then the pin wins and a
                    // different certificate is refused.
                    let pin = self
                        .settings
                        .pin_for(&url)
                        .map(str::to_owned)
                        .unwrap_or(host.fingerprint.clone());
                    self.join(url, Some(pin), Some(host.name.clone())).await;
                    self.open();
                }
            }
            Command::ToggleAutostart => {
                if let Some(a) = &self.autostart
                    && let Err(e) = a.set(!a.enabled())
                {
                    tracing::warn!(error = %e, "cannot change Start at login");
                }
            }
            Command::OpenDataFolder => {
                if let Err(e) = launcher::open_folder(&self.data_dir()) {
                    tracing::warn!(error = %e, "cannot open the data folder");
                }
            }
            Command::Quit => {}
        }
    }

    /// Every few seconds: retry a host that did not answer, check the relay.
    async fn tick(&mut self) {
        if let Role::Waiting { url, pin, .. } = &self.role {
            let (url, pin) = (url.clone(), pin.clone());
            self.join(url, pin, None).await;
            if matches!(self.role, Role::Joined { .. }) {
                self.open();
            }
        } else if let Role::Joined { relay, .. } = &self.role
            && relay.health() != Health::Connected
        {
            relay.check().await;
        }
    }

    fn set_status(&self, status: &str) {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).status = status.to_owned();
        if let Some(t) = &self.tray {
            t.refresh();
        }
    }

    /// Publishes the state to the tray (only when it changed).
    async fn update_view(&mut self) {
        let own = match &self.role {
            Role::Hosting { advert, .. } => advert.as_ref().map(|a| a.fullname().to_owned()),
            _ => None,
        };
        let found = self
            .browser
            .as_ref()
            .map(Browser::hosts)
            .unwrap_or_default();
        let mut view = View {
            hosts: found
                .iter()
                .filter(|h| Some(&h.id) != own.as_ref())
                .map(|h| {
                    let addr = h.url().unwrap_or_default();
                    (
                        h.id.clone(),
                        format!("{} ({})", h.name, addr.trim_start_matches("https://")),
                    )
                })
                .collect(),
            autostart: self.autostart.as_ref().is_some_and(Autostart::enabled),
            can_open: self.open_url().is_some(),
            ..View::default()
        };
        match &self.role {
            Role::Idle => view.status = "Not hosting".into(),
            Role::Waiting { why, .. } => view.status = why.clone(),
            Role::Hosting { running, .. } => {
                let addrs = invite_addresses(running.addr);
                let online = running.app.hub.online().len();
                let shown = addrs.first().map_or_else(
                    || running.addr.to_string(),
                    |u| {
                        u.trim_start_matches("https://")
                            .trim_end_matches('/')
                            .to_owned()
                    },
                );
                view.status = format!("Hosting on {shown} · {online} online");
                view.hosting = true;
                view.fingerprint = Some(running.fingerprint().to_owned());
                view.invite = Some(invite_text(&addrs, running.fingerprint()));
            }
            Role::Joined { relay, url, name } => {
                view.status = match relay.health() {
                    Health::Connected => format!("Joined {name}"),
                    Health::Unreachable => "Host unreachable — retrying".into(),
                    Health::Mismatch(_) => "Host certificate changed — refused".into(),
                };
                view.joined = found
                    .iter()
                    .find(|h| h.fingerprint == relay.fingerprint)
                    .map(|h| h.id.clone());
                view.fingerprint = Some(relay.fingerprint.clone());
                view.invite = Some(invite_text(&[format!("{url}/")], &relay.fingerprint));
            }
        }
        let changed = {
            let mut current = self.view.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *current != view;
            *current = view;
            changed
        };
        if changed && let Some(t) = &self.tray {
            t.refresh();
        }
    }
}

/// The URL this computer's browser opens for a host.
fn local_url(running: &Running) -> String {
    let port = running.addr.port();
    match running.addr.ip() {
        ip if ip.is_unspecified() => format!("https://localhost:{port}/"),
        IpAddr::V6(v6) => format!("https://[{v6}]:{port}/"),
        IpAddr::V4(v4) => format!("https://{v4}:{port}/"),
    }
}

/// The links teammates open: the LAN addresses (the default route's subnet
/// first), or the one address the host is bound to.
fn invite_addresses(bind: SocketAddr) -> Vec<String> {
    let port = bind.port();
    let ips = if bind.ip().is_unspecified() {
        discovery::lan_addresses()
            .into_iter()
            .filter(|ip| bind.is_ipv6() || ip.is_ipv4())
            .collect()
    } else {
        vec![bind.ip()]
    };
    ips.into_iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => format!("https://{v4}:{port}/"),
            IpAddr::V6(v6) => format!("https://[{v6}]:{port}/"),
        })
        .collect()
}

/// The text "Copy invite link" puts on the clipboard.
pub fn invite_text(links: &[String], fingerprint: &str) -> String {
    let mut text = String::from("Join our SecureChat: ");
    text.push_str(links.first().map_or("(no network address)", String::as_str));
    for other in links.iter().skip(1) {
        text.push_str(&format!(" (or {other})"));
    }
    text.push_str(&format!(
        "\nCertificate fingerprint (SHA-256): {fingerprint}\nYour browser warns about the certificate once: accept it only if the fingerprint it shows is this one."
    ));
    text
}

/// A host's label from its URL: its address.
fn host_label(url: &str) -> String {
    url.trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_text_names_every_link_and_the_fingerprint() {
        let text = invite_text(
            &[
                "https://192.168.1.20:8443/".into(),
                "https://10.0.0.5:8443/".into(),
            ],
            "AA:BB",
        );
        assert!(text.starts_with(
            "Join our SecureChat: https://192.168.1.20:8443/ (or https://10.0.0.5:8443/)\n"
        ));
        assert!(text.contains("Certificate fingerprint (SHA-256): AA:BB\n"));
    }

    #[test]
    fn invites_of_a_bound_host_use_its_address() {
        let bind: SocketAddr = "127.0.0.1:4443".parse().unwrap();
        assert_eq!(invite_addresses(bind), ["https://127.0.0.1:4443/"]);
    }
}
