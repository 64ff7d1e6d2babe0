//! The Linux tray: a StatusNotifierItem with a D-Bus menu (`ksni`), shown
//! by any tray host that speaks it (KDE, GNOME with AppIndicator support,
//! Xfce, LXQt, waybar…). No GTK and no system library.

use ksni::TrayMethods as _;
use ksni::menu::{CheckmarkItem, MenuItem, StandardItem, SubMenu};

use super::{Command, Commands, Request, SharedView, Tray, View, labels};

struct Sni {
    view: SharedView,
    commands: Commands,
    clipboard: Option<arboard::Clipboard>,
}

impl Sni {
    fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }
}

fn action(label: &str, enabled: bool, run: impl Fn(&mut Sni) + Send + 'static) -> MenuItem<Sni> {
    StandardItem {
        label: label.into(),
        enabled,
        activate: Box::new(run),
        ..Default::default()
    }
    .into()
}

fn text(label: &str) -> MenuItem<Sni> {
    StandardItem {
        label: label.replace('_', "__"),
        enabled: false,
        ..Default::default()
    }
    .into()
}

fn check(label: &str, checked: bool, run: impl Fn(&mut Sni) + Send + 'static) -> MenuItem<Sni> {
    CheckmarkItem {
        label: label.into(),
        checked,
        activate: Box::new(run),
        ..Default::default()
    }
    .into()
}

impl ksni::Tray for Sni {
    fn id(&self) -> String {
        "securechat".into()
    }

    fn title(&self) -> String {
        "SecureChat".into()
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        [32, 64]
            .into_iter()
            .map(|size| {
                let mut data = super::icon_rgba(size).to_vec();
                for pixel in data.chunks_exact_mut(4) {
                    pixel.rotate_right(1); // RGBA → ARGB
                }
                ksni::Icon {
                    width: size as i32,
                    height: size as i32,
                    data,
                }
            })
            .collect()
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        let view = self.view();
        ksni::ToolTip {
            title: "SecureChat".into(),
            description: view.status.clone(),
            ..Default::default()
        }
    }

    fn activate(&mut self, _x: i32, _y: i32) {
        self.send(Command::Open);
    }

    fn menu(&self) -> Vec<MenuItem<Self>> {
        let view = self.view();
        let mut join: Vec<MenuItem<Self>> = view
            .hosts
            .iter()
            .map(|(id, label)| {
                let id = id.clone();
                check(label, view.joined.as_ref() == Some(&id), move |t| {
                    t.send(Command::Join(id.clone()));
                })
            })
            .collect();
        if join.is_empty() {
            join.push(text(labels::NO_HOSTS));
        }
        let fingerprint = view.fingerprint.clone().unwrap_or_default();
        let invite = view.invite.clone().unwrap_or_default();
        let about = super::about_lines();
        vec![
            action(labels::OPEN, view.can_open, |t| t.send(Command::Open)),
            action(labels::COPY_INVITE, !invite.is_empty(), move |t| {
                super::copy(&mut t.clipboard, &invite);
            }),
            MenuItem::Separator,
            check(labels::HOSTING, view.hosting, |t| {
                t.send(Command::ToggleHosting);
            }),
            SubMenu {
                label: labels::JOIN.into(),
                submenu: join,
                ..Default::default()
            }
            .into(),
            SubMenu {
                label: labels::FINGERPRINT.into(),
                enabled: !fingerprint.is_empty(),
                submenu: vec![
                    text(&fingerprint),
                    action(labels::COPY_FINGERPRINT, true, move |t| {
                        super::copy(&mut t.clipboard, &fingerprint);
                    }),
                ],
                ..Default::default()
            }
            .into(),
            MenuItem::Separator,
            check(labels::AUTOSTART, view.autostart, |t| {
                t.send(Command::ToggleAutostart);
            }),
            action(labels::DATA_FOLDER, true, |t| {
                t.send(Command::OpenDataFolder);
            }),
            SubMenu {
                label: labels::ABOUT.into(),
                submenu: about.iter().map(|l| text(l)).collect(),
                ..Default::default()
            }
            .into(),
            MenuItem::Separator,
            action(labels::QUIT, true, |t| t.send(Command::Quit)),
        ]
    }
}

pub fn spawn(view: SharedView, commands: Commands) -> Result<Tray, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
    std::thread::Builder::new()
        .name("tray".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let tray = Sni {
                    view,
                    commands,
                    clipboard: None,
                };
                let handle = match tray.spawn().await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Some(request) = rx.recv().await {
                    match request {
                        Request::Refresh => {
                            if handle.update(|_| {}).await.is_none() {
                                break;
                            }
                        }
                        Request::Close => break,
                    }
                }
                handle.shutdown().await;
            });
        })
        .map_err(|e| e.to_string())?;
    Tray::started(&ready_rx, move |r| {
        let _ = tx.send(r);
    })
}
