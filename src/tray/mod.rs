//! The tray icon and its menu (ARCHITECTURE.md, step 5): Open SecureChat ·
//! Copy invite link · Hosting on/off · Join ▸ · Certificate fingerprint ·
//! Start at login · Open data folder · About · Quit.
//!
//! The desktop controller ([`crate::desktop`]) owns the state and publishes
//! a [`View`]; the tray shows it and sends [`Command`]s back. The tray runs on
//! its own thread, so a tray failure never takes the server down. Backends:
//! `ksni` (StatusNotifierItem over D-Bus) on Linux and the BSDs, `tray-icon`
//! on Windows. Copying to the clipboard happens in the tray itself.

use std::sync::{Arc, Mutex};

#[cfg(all(feature = "tray", unix, not(target_os = "macos")))]
mod sni;
#[cfg(all(feature = "tray", windows))]
mod windows;

/// What the tray shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// "Hosting on 192.168.1.20:8443 · 3 online", "Joined alice-pc",
    /// "Host unreachable — retrying".
    pub status: String,
    /// Hosting is on.
    pub hosting: bool,
    /// Hosts found on the LAN now: (discovery id, label). The one joined is
    /// marked by `joined`.
    pub hosts: Vec<(String, String)>,
    /// The discovery id of the host joined, if any.
    pub joined: Option<String>,
    /// The certificate fingerprint of the chat (hosted or joined).
    pub fingerprint: Option<String>,
    /// The invite text: link(s) and fingerprint.
    pub invite: Option<String>,
    /// Start at login is on.
    pub autostart: bool,
    /// Whether an address to open exists.
    pub can_open: bool,
}

impl View {
    /// The tooltip: the product and the status.
    pub fn tooltip(&self) -> String {
        format!("SecureChat — {}", self.status)
    }
}

/// What the tray asks of the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Open,
    ToggleHosting,
    /// Join the host with this discovery id.
    Join(String),
    ToggleAutostart,
    OpenDataFolder,
    Quit,
}

/// The menu's labels, shared by the backends (and the smoke test reads
/// them through D-Bus).
pub mod labels {
    pub const OPEN: &str = "Open SecureChat";
    pub const COPY_INVITE: &str = "Copy invite link";
    pub const HOSTING: &str = "Hosting";
    pub const JOIN: &str = "Join";
    pub const NO_HOSTS: &str = "No other hosts found";
    pub const FINGERPRINT: &str = "Certificate fingerprint";
    pub const COPY_FINGERPRINT: &str = "Copy fingerprint";
    pub const AUTOSTART: &str = "Start at login";
    pub const DATA_FOLDER: &str = "Open data folder";
    pub const ABOUT: &str = "About";
    pub const QUIT: &str = "Quit";
}

/// The About lines.
pub fn about_lines() -> [String; 2] {
    [
        format!("SecureChat {}", env!("CARGO_PKG_VERSION")),
        "End-to-end encrypted team chat for this network".to_owned(),
    ]
}

/// The view as the tray reads it.
pub type SharedView = Arc<Mutex<View>>;
/// Where the tray sends commands.
pub type Commands = tokio::sync::mpsc::UnboundedSender<Command>;

/// What the controller asks of a backend's thread.
#[cfg_attr(not(feature = "tray"), allow(dead_code))]
enum Request {
    /// Show the current view.
    Refresh,
    /// Remove the icon and end the thread.
    Close,
}

/// A running tray: its thread is told through `send`.
pub struct Tray {
    send: Box<dyn Fn(Request) + Send + Sync>,
}

impl Tray {
    /// Waits for a backend's thread to report its start, then the tray
    /// that talks to it through `send`.
    #[cfg_attr(not(feature = "tray"), allow(dead_code))]
    fn started(
        ready: &std::sync::mpsc::Receiver<Result<(), String>>,
        send: impl Fn(Request) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        ready
            .recv()
            .map_err(|_| "the tray thread ended".to_owned())??;
        Ok(Self {
            send: Box::new(send),
        })
    }

    /// Shows the current view.
    pub fn refresh(&self) {
        (self.send)(Request::Refresh);
    }

    /// Removes the icon.
    pub fn close(self) {
        (self.send)(Request::Close);
    }
}

/// The icon, RGBA, `size`×`size` (32 or 64).
pub fn icon_rgba(size: u32) -> &'static [u8] {
    match size {
        32 => include_bytes!("../../assets/icon-32.rgba"),
        _ => include_bytes!("../../assets/icon-64.rgba"),
    }
}

/// Shows the tray icon. An error means there is none (no display, no tray
/// host, or a build without the `tray` feature): the caller runs headless.
pub fn spawn(view: SharedView, commands: Commands) -> Result<Tray, String> {
    #[cfg(all(feature = "tray", unix, not(target_os = "macos")))]
    {
        sni::spawn(view, commands)
    }
    #[cfg(all(feature = "tray", windows))]
    {
        windows::spawn(view, commands)
    }
    #[cfg(not(all(feature = "tray", any(windows, all(unix, not(target_os = "macos"))))))]
    {
        let _ = (view, commands);
        Err("this build has no tray icon".into())
    }
}

/// Copies `text` to the clipboard (kept by `holder`, which must outlive the
/// paste on X11).
#[cfg(all(feature = "tray", not(target_os = "macos")))]
fn copy(holder: &mut Option<arboard::Clipboard>, text: &str) {
    if holder.is_none() {
        match arboard::Clipboard::new() {
            Ok(c) => *holder = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no clipboard");
                return;
            }
        }
    }
    if let Some(c) = holder.as_mut()
        && let Err(e) = c.set_text(text.to_owned())
    {
        tracing::warn!(error = %e, "cannot copy to the clipboard");
    }
}
