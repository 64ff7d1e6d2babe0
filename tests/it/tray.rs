//! The tray, end to end: the real executable under Xvfb registers its
//! StatusNotifierItem with a tray host, and every menu item is driven over
//! D-Bus exactly as a desktop's tray would drive it.
//!
//! The tray host is this test: it owns `org.kde.StatusNotifierWatcher` on a
//! private session bus (test.sh runs the suite under `dbus-run-session` with
//! Xvfb and sets SECURECHAT_TEST_TRAY=1), so it sees what any panel would.
//! The browser is a script recording the URLs it is asked to open.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use zbus::zvariant::{OwnedValue, Value};

use super::harness::{WAIT, test_master_key_env};

struct Watcher {
    items: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    async fn register_status_notifier_item(
        &self,
        service: &str,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) {
        let sender = header.sender().map(ToString::to_string).unwrap_or_default();
        let item = if service.starts_with('/') {
            (sender, service.to_owned())
        } else {
            (service.to_owned(), "/StatusNotifierItem".to_owned())
        };
        let _ = self.items.send(item);
    }

    fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        Vec::new()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }
}

/// A menu entry as the dbusmenu layout gives it.
#[derive(Debug, Clone)]
struct Entry {
    id: i32,
    label: String,
    enabled: bool,
    /// `Some(checked)` for checkmark items.
    toggle: Option<bool>,
    children: Vec<Entry>,
}

impl Entry {
    fn find(&self, label: &str) -> Option<&Entry> {
        if self.label == label {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(label))
    }
}

type Node = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);
/// An icon: width, height, ARGB bytes.
type Pixmap = (i32, i32, Vec<u8>);
/// The StatusNotifierItem tooltip: icon name, icons, title, description.
type ToolTip = (String, Vec<Pixmap>, String, String);

fn entry(node: Node) -> Entry {
    let (id, props, children) = node;
    let label = props
        .get("label")
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
        .unwrap_or_default()
        .replace("__", "_");
    let enabled = props
        .get("enabled")
        .and_then(|v| bool::try_from(v.try_clone().ok()?).ok())
        .unwrap_or(true);
    let toggle = props
        .get("toggle-state")
        .and_then(|v| i32::try_from(v.try_clone().ok()?).ok())
        .map(|s| s == 1);
    let children = children
        .into_iter()
        .map(|c| entry(Node::try_from(c).expect("a menu node")))
        .collect();
    Entry {
        id,
        label,
        enabled,
        toggle,
        children,
    }
}

struct Item {
    conn: zbus::Connection,
    name: String,
    path: String,
}

impl Item {
    async fn property(&self, name: &str) -> OwnedValue {
        let reply = self
            .conn
            .call_method(
                Some(self.name.as_str()),
                self.path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.kde.StatusNotifierItem", name),
            )
            .await
            .expect("property");
        let value: OwnedValue = reply.body().deserialize().expect("a variant");
        value
    }

    async fn tooltip(&self) -> String {
        let value = self.property("ToolTip").await;
        let (_, _, _, description): ToolTip = value.try_into().expect("a tooltip");
        description
    }

    async fn menu(&self) -> Entry {
        let path = OwnedValue::try_into(self.property("Menu").await)
            .map(|p: zbus::zvariant::OwnedObjectPath| p.to_string())
            .expect("a menu path");
        let reply = self
            .conn
            .call_method(
                Some(self.name.as_str()),
                path.as_str(),
                Some("com.canonical.dbusmenu"),
                "GetLayout",
                &(0i32, -1i32, Vec::<String>::new()),
            )
            .await
            .expect("GetLayout");
        let (_, root): (u32, Node) = reply.body().deserialize().expect("a layout");
        entry(root)
    }

    async fn click(&self, label: &str) {
        self.try_click(label).await.expect("Event");
    }

    /// Clicks; the program may answer with an error or not at all when the
    /// click ends it (Quit).
    async fn try_click(&self, label: &str) -> zbus::Result<zbus::message::Message> {
        let menu = self.menu().await;
        let id = menu
            .find(label)
            .unwrap_or_else(|| panic!("no menu item {label:?} in {menu:#?}"))
            .id;
        let path = OwnedValue::try_into(self.property("Menu").await)
            .map(|p: zbus::zvariant::OwnedObjectPath| p.to_string())
            .expect("a menu path");
        self.conn
            .call_method(
                Some(self.name.as_str()),
                path.as_str(),
                Some("com.canonical.dbusmenu"),
                "Event",
                &(id, "clicked", Value::from(0i32), 0u32),
            )
            .await
    }

    /// Waits until the tooltip satisfies `ok`.
    async fn tooltip_until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        tokio::time::timeout(WAIT, async {
            loop {
                let tip = self.tooltip().await;
                if ok(&tip) {
                    return tip;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the tooltip never showed {what}"))
    }
}

fn desktop_command(dir: &Path, home: &Path, opened: &Path) -> Command {
    let browser = home.join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$1\" >> '{}'\n", opened.display()),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_securechat"));
    command
        .args(["host", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("SECURECHAT_LOG", "warn")
        .env("SECURECHAT_MASTER_KEY", test_master_key_env())
        .env("BROWSER", &browser)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn opened(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn tray_registers_exposes_every_item_and_quits_gracefully() {
    if std::env::var_os("SECURECHAT_TEST_TRAY").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the tray test under Xvfb and a session bus: run ./test.sh"
        );
        eprintln!("SKIPPED the tray test: run ./test.sh (Xvfb and a private session bus)");
        return;
    }
    let (tx, mut registered) = tokio::sync::mpsc::unbounded_channel();
    let conn = zbus::connection::Builder::session()
        .expect("a session bus")
        .name("org.kde.StatusNotifierWatcher")
        .unwrap()
        .serve_at("/StatusNotifierWatcher", Watcher { items: tx })
        .unwrap()
        .build()
        .await
        .expect("the watcher's name");

    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let opened_file = home.path().join("opened.txt");
    let mut child = desktop_command(dir.path(), home.path(), &opened_file)
        .spawn()
        .expect("the executable starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (url, fingerprint) = tokio::time::timeout(WAIT, async {
        let mut url = None;
        loop {
            let line = lines.next_line().await.unwrap().expect("output");
            if let Some(u) = line.trim().strip_prefix("https://") {
                url = Some(format!("https://{u}"));
            }
            if let Some(fp) = line.strip_prefix("CA certificate fingerprint (SHA-256): ") {
                break (url.expect("a URL first"), fp.trim().to_owned());
            }
        }
    })
    .await
    .expect("the host starts");
    let addr = url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();

    let (name, path) = tokio::time::timeout(WAIT, registered.recv())
        .await
        .expect("the icon registers with the tray host")
        .unwrap();
    let item = Item { conn, name, path };

    // The icon, in two sizes, and the state in the tooltip.
    let pixmaps: Vec<Pixmap> = item.property("IconPixmap").await.try_into().unwrap();
    let sizes: Vec<(i32, i32)> = pixmaps.iter().map(|(w, h, _)| (*w, *h)).collect();
    assert_eq!(sizes, [(32, 32), (64, 64)]);
    assert!(
        pixmaps
            .iter()
            .all(|(w, h, d)| d.len() == (w * h * 4) as usize)
    );
    let tip = item
        .tooltip_until("hosting", |t| t.starts_with("Hosting on"))
        .await;
    assert_eq!(tip, format!("Hosting on {addr} · 0 online"));
    // The browser was opened at the host.
    until("the browser opens", || opened(&opened_file).len() == 1).await;
    assert_eq!(opened(&opened_file), std::slice::from_ref(&url));

    // Every item of ARCHITECTURE.md's menu.
    let menu = item.menu().await;
    let labels: Vec<&str> = menu.children.iter().map(|e| e.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "Open SecureChat",
            "Copy invite link",
            "",
            "Hosting",
            "Join",
            "Certificate fingerprint",
            "",
            "Start at login",
            "Open data folder",
            "About",
            "",
            "Quit"
        ]
    );
    assert_eq!(menu.find("Hosting").unwrap().toggle, Some(true));
    assert_eq!(menu.find("Start at login").unwrap().toggle, Some(false));
    assert!(menu.find("Copy invite link").unwrap().enabled);
    let join = menu.find("Join").unwrap();
    assert!(!join.children.is_empty());
    let cert = menu.find("Certificate fingerprint").unwrap();
    assert_eq!(cert.children[0].label, fingerprint);
    assert_eq!(cert.children[1].label, "Copy fingerprint");
    let about = menu.find("About").unwrap();
    assert_eq!(
        about.children[0].label,
        format!("SecureChat {}", env!("CARGO_PKG_VERSION"))
    );

    // Open SecureChat opens the browser again.
    item.click("Open SecureChat").await;
    until("Open SecureChat", || opened(&opened_file).len() == 2).await;
    assert_eq!(opened(&opened_file)[1], url);

    // A second launch opens the running instance and exits.
    let second = desktop_command(dir.path(), home.path(), &opened_file)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(second.success());
    // (The browser is started, not waited for.)
    until("the second launch's browser", || {
        opened(&opened_file).len() == 3
    })
    .await;
    assert_eq!(opened(&opened_file)[2], url);

    // Start at login toggles both ways.
    let entry = home.path().join("config/autostart/securechat.desktop");
    item.click("Start at login").await;
    until("the autostart entry", || entry.is_file()).await;
    tokio::time::timeout(WAIT, async {
        while item.menu().await.find("Start at login").unwrap().toggle != Some(true) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("Start at login is checked");
    item.click("Start at login").await;
    until("the autostart entry to go", || !entry.exists()).await;

    // Hosting off stops the server; on starts it again.
    item.click("Hosting").await;
    item.tooltip_until("not hosting", |t| t == "Not hosting")
        .await;
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    item.click("Hosting").await;
    item.tooltip_until("hosting again", |t| t.starts_with("Hosting on 127.0.0.1:"))
        .await;
    // (Hosting again opens the browser at it.)
    until("the browser at the new host", || {
        opened(&opened_file).len() == 4
    })
    .await;

    // Join ▸ lists another host found on the network (here: advertised on
    // loopback), and picking it joins it through the local relay.
    if super::discovery::loopback_multicast() {
        let other_dir = tempfile::tempdir().unwrap();
        let (mut other, other_url, _out) = super::harness::spawn_host(other_dir.path()).await;
        let other_addr = other_url.trim_start_matches("https://").to_owned();
        let label = tokio::time::timeout(WAIT, async {
            loop {
                let menu = item.menu().await;
                let join = menu.find("Join").unwrap();
                if let Some(e) = join.children.iter().find(|e| e.label.contains(&other_addr)) {
                    return e.label.clone();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the other host is listed under Join");
        let before = opened(&opened_file).len();
        item.click(&label).await;
        let tip = item
            .tooltip_until("joined", |t| t.starts_with("Joined "))
            .await;
        let name = label.split(" (").next().unwrap();
        assert_eq!(tip, format!("Joined {name}"));
        until("the relay page opens", || {
            opened(&opened_file).len() == before + 1
        })
        .await;
        let relay_url = opened(&opened_file)[before].clone();
        assert!(relay_url.starts_with("http://127.0.0.1:"), "{relay_url}");
        let menu = item.menu().await;
        assert_eq!(menu.find("Hosting").unwrap().toggle, Some(false));
        let _ = other.kill().await;
    } else {
        eprintln!("SKIPPED joining from the tray: loopback has no MULTICAST flag");
    }

    // Quit shuts down gracefully.
    // (The program may be gone before it answers the click.)
    let _ = item.try_click("Quit").await;
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("Quit ends the program")
        .unwrap();
    assert!(status.success());
    let mut rest = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push(line);
    }
    assert_eq!(rest.last().map(String::as_str), Some("SecureChat stopped."));
}
