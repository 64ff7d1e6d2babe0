//! SecureChat: a self-hosted, end-to-end encrypted chat for teams on one local
//! network. One executable hosts an HTTPS + `wss://` server; browsers and the
//! native client talk to it with the protocol in `docs/PROTOCOL.md`. The server
//! relays and stores ciphertext only.
//!
//! # Layout
//! - [`cli`]: the clap definitions of every subcommand and their dispatch.
//! - [`admin`]: accounts, invites, chat logs and the audit log of a data
//!   directory, for the command line.
//! - [`config`]: settings from flags and environment; limits; the data directory.
//! - [`clock`]: the time source, injectable so tests can move time forward.
//! - [`secrets`]: the master key (OS keyring, environment or key file) and its
//!   subkeys.
//! - [`tls`]: the local CA and leaf certificate (rcgen), the rustls server config.
//! - [`server`]: HTTP routes, static assets with security headers, the WebSocket
//!   endpoint, graceful shutdown.
//! - [`auth`]: registration, prelogin, login, Argon2id, sessions, throttling.
//! - [`chat`]: the hub: live sockets per user, presence, fan-out, rate limits.
//! - [`files`]: chunked, resumable, end-to-end encrypted file sharing.
//! - [`relay`]: the local relay a joiner's browser uses, pinned to the host.
//! - [`launcher`]: what a double-click does: one instance, host or join,
//!   remembered choices and hosts, opening the browser.
//! - [`desktop`]: the desktop program: one role (hosting, joined, neither)
//!   shown in the tray, and the tray's commands carried out.
//! - [`tray`]: the tray icon and its menu (cargo feature `tray`).
//! - [`discovery`]: mDNS advertise and browse of hosts on the LAN.
//! - [`autostart`]: Start at login (Run key, XDG autostart, LaunchAgent).
//! - [`store`]: SQLite access and migrations; nothing else touches SQL.
//! - [`chatlog`]: encrypted per-session chat logs and the audit log, their
//!   writer thread and their reader.
//! - [`protocol`]: the wire types shared by the server and the native client.
//! - [`client`]: a native client of the protocol with the end-to-end crypto.
//! - [`error`]: the API error type, mapped to HTTP status and a safe message.
//! - [`priority`]: background threads (the password hashing) at a lower
//!   priority.

pub mod admin;
pub mod auth;
pub mod autostart;
pub mod chat;
pub mod chatlog;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod desktop;
pub mod discovery;
pub mod error;
pub mod files;
pub mod launcher;
pub mod priority;
pub mod protocol;
pub mod relay;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tls;
pub mod tray;
