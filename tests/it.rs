//! Integration tests, compiled into one binary. Each starts the real server
//! in-process on 127.0.0.1:0 over real TLS and drives it with the native
//! client.

mod it {
    /// Registration, login, throttling, sessions, password change.
    mod accounts;
    /// Encryption at rest, chat logs, the master key and admin commands.
    mod at_rest;
    /// The benchmark tool's scenarios in their tiny form.
    mod bench;
    /// Direct and group chats: delivery, decryption, membership.
    mod chats;
    /// Delivery across dropped sockets, restarts and kill -9.
    mod delivery;
    /// LAN discovery over mDNS.
    mod discovery;
    /// Encrypted file sharing: transfer, authorization, tampering, resume, limits.
    mod files;
    /// Starts servers, makes users, waits for frames.
    pub mod harness;
    /// The executable: clean shutdown, static files and headers.
    mod process;
    /// The local relay for joiners: pinning, origins, recovery.
    mod relay;
    /// WebSocket admission and abuse: origins, sessions, bad frames, rates.
    mod socket;
    /// The tray under Xvfb, driven over D-Bus like a desktop's tray.
    #[cfg(target_os = "linux")]
    mod tray;
}
