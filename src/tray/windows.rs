//! The Windows tray: `tray-icon` with a `muda` menu, on a thread of its own
//! that pumps that thread's window messages (the icon's hidden window lives
//! there).

use std::collections::HashMap;
use std::time::Duration;

use tray_icon::menu::{
    CheckMenuItem, IsMenuItem, Menu, MenuEvent, MenuId, MenuItem, PredefinedMenuItem, Submenu,
};
use tray_icon::{MouseButton, MouseButtonState, TrayIcon, TrayIconBuilder, TrayIconEvent};

use super::{Command, Commands, Request, SharedView, Tray, View, labels};

enum Action {
    Send(Command),
    Copy(String),
}

/// The menu of `view` and what each item does.
fn build(view: &View) -> Result<(Menu, HashMap<MenuId, Action>), String> {
    let menu = Menu::new();
    let mut actions = HashMap::new();
    let e = |e: tray_icon::menu::Error| e.to_string();
    let mut item = |label: &str, enabled: bool, action: Option<Action>| -> MenuItem {
        let item = MenuItem::new(label, enabled, None);
        if let Some(a) = action {
            actions.insert(item.id().clone(), a);
        }
        item
    };
    let open = item(
        labels::OPEN,
        view.can_open,
        Some(Action::Send(Command::Open)),
    );
    let invite = view.invite.clone().unwrap_or_default();
    let copy_invite = item(
        labels::COPY_INVITE,
        !invite.is_empty(),
        Some(Action::Copy(invite)),
    );
    let fingerprint = view.fingerprint.clone().unwrap_or_default();
    let fp_text = item(&fingerprint, false, None);
    let copy_fp = item(
        labels::COPY_FINGERPRINT,
        true,
        Some(Action::Copy(fingerprint.clone())),
    );
    let data = item(
        labels::DATA_FOLDER,
        true,
        Some(Action::Send(Command::OpenDataFolder)),
    );
    let quit = item(labels::QUIT, true, Some(Action::Send(Command::Quit)));
    let about_lines: Vec<MenuItem> = super::about_lines()
        .iter()
        .map(|l| item(l, false, None))
        .collect();
    let mut hosts: Vec<CheckMenuItem> = Vec::new();
    for (id, label) in &view.hosts {
        let entry = CheckMenuItem::new(label, true, view.joined.as_ref() == Some(id), None);
        actions.insert(entry.id().clone(), Action::Send(Command::Join(id.clone())));
        hosts.push(entry);
    }
    let no_hosts = MenuItem::new(labels::NO_HOSTS, false, None);
    let hosting = CheckMenuItem::new(labels::HOSTING, true, view.hosting, None);
    actions.insert(hosting.id().clone(), Action::Send(Command::ToggleHosting));
    let autostart = CheckMenuItem::new(labels::AUTOSTART, true, view.autostart, None);
    actions.insert(
        autostart.id().clone(),
        Action::Send(Command::ToggleAutostart),
    );

    let join = Submenu::new(labels::JOIN, true);
    if hosts.is_empty() {
        join.append(&no_hosts).map_err(e)?;
    }
    for h in &hosts {
        join.append(h).map_err(e)?;
    }
    let cert = Submenu::new(labels::FINGERPRINT, !fingerprint.is_empty());
    cert.append(&fp_text).map_err(e)?;
    cert.append(&copy_fp).map_err(e)?;
    let about = Submenu::new(labels::ABOUT, true);
    for l in &about_lines {
        about.append(l).map_err(e)?;
    }
    let sep = || PredefinedMenuItem::separator();
    let (s1, s2, s3) = (sep(), sep(), sep());
    let items: [&dyn IsMenuItem; 12] = [
        &open,
        &copy_invite,
        &s1,
        &hosting,
        &join,
        &cert,
        &s2,
        &autostart,
        &data,
        &about,
        &s3,
        &quit,
    ];
    for i in items {
        menu.append(i).map_err(e)?;
    }
    Ok((menu, actions))
}

/// Dispatches this thread's pending window messages (the tray icon's
/// hidden window and its menu live on this thread).
#[allow(unsafe_code)]
fn pump_messages() {
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        DispatchMessageW, MSG, PM_REMOVE, PeekMessageW, TranslateMessage,
    };
    // SAFETY: MSG is plain data that PeekMessageW fills in; a null window
    // handle asks for every message of the calling thread, and each message
    // is handed back to the system on the same thread.
    unsafe {
        let mut msg: MSG = std::mem::zeroed();
        while PeekMessageW(&mut msg, std::ptr::null_mut(), 0, 0, PM_REMOVE) != 0 {
            TranslateMessage(&msg);
            DispatchMessageW(&msg);
        }
    }
}

fn show(tray: &TrayIcon, view: &SharedView) -> Result<HashMap<MenuId, Action>, String> {
    let view = view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (menu, actions) = build(&view)?;
    tray.set_menu(Some(Box::new(menu)));
    // Windows caps tooltips at 127 characters.
    let tip: String = view.tooltip().chars().take(127).collect();
    let _ = tray.set_tooltip(Some(tip));
    Ok(actions)
}

pub fn spawn(view: SharedView, commands: Commands) -> Result<Tray, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("tray".into())
        .spawn(move || {
            let started = (|| {
                let icon = tray_icon::Icon::from_rgba(super::icon_rgba(32).to_vec(), 32, 32)
                    .map_err(|e| e.to_string())?;
                let tray = TrayIconBuilder::new()
                    .with_icon(icon)
                    .with_tooltip("SecureChat")
                    .with_menu_on_left_click(false)
                    .build()
                    .map_err(|e| e.to_string())?;
                let actions = show(&tray, &view)?;
                Ok::<_, String>((tray, actions))
            })();
            let (tray, mut actions) = match started {
                Ok(t) => {
                    let _ = ready_tx.send(Ok(()));
                    t
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut clipboard = None;
            loop {
                pump_messages();
                while let Ok(event) = MenuEvent::receiver().try_recv() {
                    match actions.get(&event.id) {
                        Some(Action::Send(c)) => {
                            let _ = commands.send(c.clone());
                        }
                        Some(Action::Copy(text)) => super::copy(&mut clipboard, text),
                        None => {}
                    }
                }
                while let Ok(event) = TrayIconEvent::receiver().try_recv() {
                    if let TrayIconEvent::Click {
                        button: MouseButton::Left,
                        button_state: MouseButtonState::Up,
                        ..
                    } = event
                    {
                        let _ = commands.send(Command::Open);
                    }
                }
                match rx.try_recv() {
                    Ok(Request::Refresh) => match show(&tray, &view) {
                        Ok(a) => actions = a,
                        Err(e) => tracing::warn!(error = %e, "cannot update the tray menu"),
                    },
                    Ok(Request::Close) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        break;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            drop(tray);
        })
        .map_err(|e| e.to_string())?;
    Tray::started(&ready_rx, move |r| {
        let _ = tx.send(r);
    })
}
