//! What a double-click does (ARCHITECTURE.md): one instance per user, the
//! host-or-join decision, remembered choices, and opening the browser. The
//! decision reads discovery and the browser through small traits, so tests
//! need neither a network nor a browser.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::discovery::FoundHost;

/// How long a double-click browses the LAN for a host before hosting.
pub const BROWSE_FOR: Duration = Duration::from_secs(2);

/// What this computer did last time, and the hosts it trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `host` or `join`, as chosen last (by the decision or the tray menu).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// The host joined last: its URL (`https://ADDRESS:PORT`).
    #[serde(default)]
    pub last_host: Option<String>,
    /// Trust on first use: host (`ADDRESS:PORT` as in its URL) → the CA
    /// fingerprint accepted the first time. A different certificate later is
    /// refused until the user removes the entry.
    #[serde(default)]
    pub known_hosts: BTreeMap<String, String>,
}

/// Host or join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Host,
    Join,
}

/// The file of [`Settings`] in the data directory.
const SETTINGS_FILE: &str = "desktop.json";

impl Settings {
    /// Reads the settings; a missing or unreadable file gives the defaults
    /// (and a warning), never a failure to start.
    pub fn load(data_dir: &Path) -> Self {
        let path = data_dir.join(SETTINGS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "desktop settings unreadable; using defaults");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    /// Writes the settings (owner-only, replaced atomically).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        crate::secrets::create_private_dir(data_dir)?;
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::secrets::write_private(&data_dir.join(SETTINGS_FILE), &json)
    }

    /// The remembered fingerprint of the host at `url`.
    pub fn pin_for(&self, url: &str) -> Option<&str> {
        self.known_hosts.get(&host_key(url)?).map(String::as_str)
    }

    /// Remembers `fingerprint` for the host at `url` (first use).
    pub fn remember(&mut self, url: &str, fingerprint: &str) {
        if let Some(key) = host_key(url) {
            self.known_hosts.insert(key, fingerprint.to_owned());
        }
    }
}

/// `ADDRESS:PORT` of an `https://` URL, the key of [`Settings::known_hosts`].
fn host_key(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    Some(format!(
        "{}:{}",
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

/// Finds hosts on the LAN.
pub trait Discover {
    /// The hosts that answer within `within`.
    fn find(&self, within: Duration) -> impl Future<Output = Vec<FoundHost>> + Send;
}

/// Opens URLs for the user.
pub trait OpenUrl {
    /// Opens `url`; false when nothing can show it (no display).
    fn open(&self, url: &str) -> bool;
}

/// Where a double-click goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Host here.
    Host,
    /// Join this host (`https://ADDRESS:PORT`), pinned to this fingerprint
    /// when one is known.
    Join {
        url: String,
        fingerprint: Option<String>,
    },
}

/// The host-or-join decision of ARCHITECTURE.md: hosted before → host;
/// otherwise browse: the host joined last if it answers, else any host that
/// answers; a host joined before that is not answering now is still joined
/// (it may be restarting; the relay retries); nothing → host.
pub async fn decide(settings: &Settings, discover: &impl Discover) -> Decision {
    if settings.mode == Some(Mode::Host) {
        return Decision::Host;
    }
    let found = discover.find(BROWSE_FOR).await;
    let last_pin = settings
        .last_host
        .as_deref()
        .and_then(|url| settings.pin_for(url));
    let choice = found
        .iter()
        .find(|h| last_pin == Some(h.fingerprint.as_str()))
        .or_else(|| found.first());
    if let Some(host) = choice
        && let Some(url) = host.url()
    {
        return Decision::Join {
            url,
            fingerprint: Some(host.fingerprint.clone()),
        };
    }
    match (&settings.mode, &settings.last_host) {
        (Some(Mode::Join), Some(url)) => Decision::Join {
            url: url.clone(),
            fingerprint: settings.pin_for(url).map(str::to_owned),
        },
        _ => Decision::Host,
    }
}

/// The one running instance of this user's desktop program: a lock on
/// `<data>/instance.lock`, held until exit, and the URL it serves in
/// `<data>/instance.url` for a second launch to open.
pub struct Instance {
    _lock: File,
    url_file: PathBuf,
}

/// Another instance holds the lock.
#[derive(Debug)]
pub struct AlreadyRunning {
    /// The URL it serves, once it has one.
    pub url: Option<String>,
}

impl Instance {
    /// Takes the lock, or reports the running instance.
    pub fn acquire(data_dir: &Path) -> std::io::Result<Result<Self, AlreadyRunning>> {
        crate::secrets::create_private_dir(data_dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("instance.lock"))?;
        let url_file = data_dir.join("instance.url");
        match lock.try_lock() {
            Ok(()) => {
                let _ = std::fs::remove_file(&url_file);
                Ok(Ok(Self {
                    _lock: lock,
                    url_file,
                }))
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(Err(AlreadyRunning {
                url: std::fs::read_to_string(&url_file)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty()),
            })),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Publishes the URL a second launch should open.
    pub fn set_url(&self, url: &str) {
        if let Err(e) = crate::secrets::write_private(&self.url_file, url.as_bytes()) {
            tracing::warn!(error = %e, "cannot record this instance's address");
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.url_file);
    }
}

/// A second launch: wait briefly for the running instance's URL (it may be
/// starting), open it, and say what happened.
pub async fn open_running(data_dir: &Path, browser: &impl OpenUrl) -> Result<(), String> {
    for _ in 0..100 {
        match Instance::acquire(data_dir).map_err(|e| e.to_string())? {
            Err(AlreadyRunning { url: Some(url) }) => {
                if !browser.open(&url) {
                    tracing::info!(%url, "SecureChat is already running (no display to open it)");
                }
                return Ok(());
            }
            Err(AlreadyRunning { url: None }) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The other instance exited meanwhile.
            Ok(_) => return Err("SecureChat stopped while starting; start it again".into()),
        }
    }
    Err("SecureChat is already running but not answering yet; try again in a moment".into())
}

/// Whether a window can be shown: always on Windows and macOS; on other
/// systems only with an X11 or Wayland display.
pub fn has_display() -> bool {
    if cfg!(any(windows, target_os = "macos")) {
        return true;
    }
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// The system's default browser (`webbrowser`, which also honours `$BROWSER`).
pub struct SystemBrowser;

impl OpenUrl for SystemBrowser {
    fn open(&self, url: &str) -> bool {
        if !has_display() {
            tracing::info!(%url, "no display: not opening a browser");
            return false;
        }
        match webbrowser::open(url) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%url, error = %e, "cannot open the browser");
                false
            }
        }
    }
}

/// Opens a folder in the system's file manager.
pub fn open_folder(dir: &Path) -> std::io::Result<()> {
    let program = if cfg!(windows) {
        "explorer"
    } else if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    std::process::Command::new(program)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lan(Vec<FoundHost>);

    impl Discover for Lan {
        async fn find(&self, _within: Duration) -> Vec<FoundHost> {
            self.0.clone()
        }
    }

    /// Discovery that must not be asked.
    struct NoLan;

    impl Discover for NoLan {
        async fn find(&self, _within: Duration) -> Vec<FoundHost> {
            panic!("a machine that hosted before must not browse");
        }
    }

    fn found(name: &str, ip: &str, fp: &str) -> FoundHost {
        FoundHost {
            id: format!("SecureChat on {name}._securechat._tcp.local."),
            name: name.into(),
            addrs: vec![ip.parse().unwrap()],
            port: 8443,
            fingerprint: fp.into(),
            version: "0.5.0".into(),
        }
    }

    #[tokio::test]
    async fn hosted_before_hosts_again_without_browsing() {
        let settings = Settings {
            mode: Some(Mode::Host),
            ..Settings::default()
        };
        assert_eq!(decide(&settings, &NoLan).await, Decision::Host);
    }

    #[tokio::test]
    async fn a_host_found_is_joined_pinned_to_its_advertised_fingerprint() {
        let lan = Lan(vec![found("alice-pc", "192.168.1.20", "AA:BB")]);
        assert_eq!(
            decide(&Settings::default(), &lan).await,
            Decision::Join {
                url: "https://192.168.1.20:8443".into(),
                fingerprint: Some("AA:BB".into()),
            }
        );
    }

    #[tokio::test]
    async fn nothing_found_hosts() {
        assert_eq!(
            decide(&Settings::default(), &Lan(vec![])).await,
            Decision::Host
        );
    }

    #[tokio::test]
    async fn the_host_joined_last_is_preferred_and_remembered_when_silent() {
        let mut settings = Settings {
            mode: Some(Mode::Join),
            last_host: Some("https://192.168.1.30:8443".into()),
            ..Settings::default()
        };
        settings.remember("https://192.168.1.30:8443", "CC:DD");
        let lan = Lan(vec![
            found("alice-pc", "192.168.1.20", "AA:BB"),
            // The same host, now at another address.
            found("bob-pc", "192.168.1.31", "CC:DD"),
        ]);
        assert_eq!(
            decide(&settings, &lan).await,
            Decision::Join {
                url: "https://192.168.1.31:8443".into(),
                fingerprint: Some("CC:DD".into()),
            }
        );
        assert_eq!(
            decide(&settings, &Lan(vec![])).await,
            Decision::Join {
                url: "https://192.168.1.30:8443".into(),
                fingerprint: Some("CC:DD".into()),
            }
        );
    }

    #[test]
    fn second_instance_is_told_where_the_first_is() {
        let dir = tempfile::tempdir().unwrap();
        let first = Instance::acquire(dir.path()).unwrap().expect("first");
        let second = Instance::acquire(dir.path()).unwrap();
        assert!(matches!(second, Err(AlreadyRunning { url: None })));
        first.set_url("https://localhost:8443/");
        match Instance::acquire(dir.path()).unwrap() {
            Err(AlreadyRunning { url }) => {
                assert_eq!(url.as_deref(), Some("https://localhost:8443/"));
            }
            Ok(_) => panic!("the lock is held"),
        }
        drop(first);
        assert!(Instance::acquire(dir.path()).unwrap().is_ok());
    }

    #[tokio::test]
    async fn second_launch_opens_the_running_instance() {
        struct Recorder(std::sync::Mutex<Vec<String>>);
        impl OpenUrl for Recorder {
            fn open(&self, url: &str) -> bool {
                self.0.lock().unwrap().push(url.into());
                true
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let first = Instance::acquire(dir.path()).unwrap().expect("first");
        first.set_url("http://127.0.0.1:4000/");
        let browser = Recorder(Default::default());
        open_running(dir.path(), &browser).await.unwrap();
        assert_eq!(*browser.0.lock().unwrap(), ["http://127.0.0.1:4000/"]);
    }

    #[test]
    fn settings_round_trip_and_pins_are_per_host() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()), Settings::default());
        let mut s = Settings {
            mode: Some(Mode::Join),
            last_host: Some("https://10.0.0.2:8443/".into()),
            ..Settings::default()
        };
        s.remember("https://10.0.0.2:8443/", "AA");
        s.save(dir.path()).unwrap();
        let back = Settings::load(dir.path());
        assert_eq!(back, s);
        assert_eq!(back.pin_for("https://10.0.0.2:8443"), Some("AA"));
        assert_eq!(back.pin_for("https://10.0.0.2:9443"), None);
        std::fs::write(dir.path().join(SETTINGS_FILE), b"{not json").unwrap();
        assert_eq!(Settings::load(dir.path()), Settings::default());
    }
}
