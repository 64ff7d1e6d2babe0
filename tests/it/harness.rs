//! The shared test harness: a real server on 127.0.0.1:0 with a temporary data
//! directory and a manual clock, users with pre-generated keys, and helpers
//! that wait for frames with a timeout (never a sleep).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use securechat::client::crypto::UserKeys;
use securechat::client::{Client, ClientError, Connection, Event};
use securechat::clock::ManualClock;
use securechat::config::{Config, Limits};
use securechat::protocol::{ChatInfo, ClientFrame, Envelope, MessageRecord, ServerFrame};
use securechat::secrets::MasterKey;
use securechat::server::{self, Running};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Key pairs for test users, generated once per test run: RSA-4096
/// generation is the slowest thing here.
pub fn keys(i: usize) -> UserKeys {
    static KEYS: OnceLock<Vec<UserKeys>> = OnceLock::new();
    let all = KEYS.get_or_init(|| {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| UserKeys::generate().expect("key generation")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("keygen thread"))
            .collect()
    });
    all[i % all.len()].clone()
}

/// The master key of test data directories (never the user's keyring).
pub fn test_master_key() -> MasterKey {
    MasterKey::from_bytes(*b"securechat test master key 32 b!")
}

/// The same key as `SECURECHAT_MASTER_KEY` would carry it.
pub fn test_master_key_env() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b"securechat test master key 32 b!")
}

/// The password of test user `name`.
pub fn password(name: &str) -> String {
    format!("correct horse battery staple {name}")
}

/// A server under test.
pub struct TestServer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub config: Config,
    pub addr: SocketAddr,
    users: usize,
}

impl TestServer {
    /// A server with default limits, except a short presence grace.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with limits adjusted by `tune`.
    pub async fn start_with(tune: impl FnOnce(&mut Limits)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
        config.limits.presence_grace = Duration::from_millis(200);
        config.master_key = Some(test_master_key());
        tune(&mut config.limits);
        let clock = ManualClock::new();
        let running = server::start(config.clone(), clock.clone())
            .await
            .expect("server starts");
        let addr = running.addr;
        Self {
            running: Some(running),
            dir,
            clock,
            config,
            addr,
            users: 0,
        }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA certificate clients pin.
    pub fn ca(&self) -> CertificateDer<'static> {
        ca(self.dir.path())
    }

    /// A client that is not signed in.
    pub fn client(&self) -> Client {
        Client::new(&self.url(), &self.ca()).expect("client")
    }

    /// Registers `name` (keys from the shared pool) and returns its client.
    pub async fn user(&mut self, name: &str) -> Client {
        let mut client = self.client();
        let keys = keys(self.users);
        self.users += 1;
        client
            .register(name, &password(name), keys, None)
            .await
            .expect("register");
        client
    }

    /// Stops the server (sockets get 1001) and starts it again on the same
    /// port and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut config = self.config.clone();
        config.bind = self.addr;
        let running = server::start(config, self.clock.clone())
            .await
            .expect("server restarts");
        self.running = Some(running);
    }

    /// Stops the server.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// Connects and says hello with no replay.
pub async fn online(client: &Client) -> (Connection, Vec<ChatInfo>) {
    let mut conn = client.connect().await.expect("connect");
    let (chats, _) = conn.hello(BTreeMap::new()).await.expect("hello");
    (conn, chats)
}

/// The next frame accepted by `pick`, skipping others, within [`WAIT`].
pub async fn expect<T>(
    conn: &mut Connection,
    what: &str,
    mut pick: impl FnMut(&ServerFrame) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, conn.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|e| panic!("socket failed waiting for {what}: {e}"));
        match event {
            Event::Frame(frame) => {
                if let Some(v) = pick(&frame) {
                    return v;
                }
            }
            Event::Closed(code) => panic!("socket closed ({code:?}) waiting for {what}"),
        }
    }
}

/// The next `message` frame.
pub async fn expect_message(conn: &mut Connection) -> MessageRecord {
    expect(conn, "a message", |f| match f {
        ServerFrame::Message { message } => Some(message.clone()),
        _ => None,
    })
    .await
}

/// The next `error` frame's code (and retry hint).
pub async fn expect_error(conn: &mut Connection) -> (String, Option<u64>, Option<Vec<String>>) {
    expect(conn, "an error", |f| match f {
        ServerFrame::Error {
            code,
            retry_after_ms,
            members,
            ..
        } => Some((code.clone(), *retry_after_ms, members.clone())),
        _ => None,
    })
    .await
}

/// The close code the socket ends with, skipping frames.
pub async fn expect_close(conn: &mut Connection) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, conn.next_event())
            .await
            .expect("timed out waiting for the socket to close");
        match event {
            Ok(Event::Closed(code)) => return code,
            Ok(Event::Frame(_)) => {}
            Err(_) => return None,
        }
    }
}

/// Sends a text message and waits for its ack; returns (id, seq).
pub async fn send_text(
    client: &mut Client,
    conn: &mut Connection,
    chat: &ChatInfo,
    text: &str,
) -> (String, u64) {
    let id = uuid::Uuid::new_v4().to_string();
    let envelope = client.seal_text(chat, &id, text).await.expect("seal");
    send_envelope(conn, id.clone(), &chat.id, envelope).await;
    let seq = expect(conn, "an ack", |f| match f {
        ServerFrame::Ack { id: acked, seq, .. } if *acked == id => Some(*seq),
        ServerFrame::Error {
            code,
            id: Some(eid),
            ..
        } if *eid == id => panic!("send refused: {code}"),
        _ => None,
    })
    .await;
    (id, seq)
}

/// Proves nothing else is queued for `conn`: a ping's pong arrives before any
/// message frame.
pub async fn expect_nothing_queued(conn: &mut Connection) {
    conn.send(&ClientFrame::Ping {
        nonce: Some("sentinel".into()),
    })
    .await
    .expect("ping");
    expect(conn, "the sentinel pong", |f| match f {
        ServerFrame::Pong { nonce } if nonce.as_deref() == Some("sentinel") => Some(()),
        ServerFrame::Message { message } => {
            panic!("unexpected message {} in {}", message.seq, message.chat)
        }
        _ => None,
    })
    .await;
}

/// Asserts that `result` is the API error `code`.
pub fn assert_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, code: &str) {
    match result {
        Err(ClientError::Api { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected the API error {code}, got {other:?}"),
    }
}

/// Sends an already sealed envelope as message `id` (no waiting).
pub async fn send_envelope(conn: &mut Connection, id: String, chat: &str, envelope: Envelope) {
    conn.send(&ClientFrame::Send {
        id,
        chat: chat.to_owned(),
        envelope,
    })
    .await
    .expect("send");
}

/// Registers user1, user2 and user3 and brings each online.
pub async fn trio(server: &mut TestServer) -> ([Client; 3], [Connection; 3]) {
    let clients = [
        server.user("user1").await,
        server.user("user2").await,
        server.user("user3").await,
    ];
    let sockets = [
        online(&clients[0]).await.0,
        online(&clients[1]).await.0,
        online(&clients[2]).await.0,
    ];
    (clients, sockets)
}

/// The status of a body-less request by `client`.
pub async fn status(client: &Client, method: reqwest::Method, path: &str) -> reqwest::StatusCode {
    client
        .raw(method, path, None)
        .await
        .expect("request")
        .status()
}

/// Starts the real executable on 127.0.0.1:0; returns it and its URL.
pub async fn spawn_host(dir: &Path) -> (Child, String, Lines<BufReader<ChildStdout>>) {
    spawn_host_with(dir, |_| {}).await
}

/// [`spawn_host`], with the command adjusted by `tune` first (environment).
pub async fn spawn_host_with(
    dir: &Path,
    tune: impl FnOnce(&mut Command),
) -> (Child, String, Lines<BufReader<ChildStdout>>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_securechat"));
    command
        .args([
            "host",
            "--headless",
            "--no-browser",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .env("SECURECHAT_LOG", "warn")
        .env("SECURECHAT_MASTER_KEY", test_master_key_env())
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tune(&mut command);
    let mut child = command.spawn().expect("the executable starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("a URL line");
            if let Some(url) = line.trim().strip_prefix("https://") {
                break format!("https://{}", url.trim_end_matches('/'));
            }
        }
    })
    .await
    .expect("the URL is printed");
    (child, url, lines)
}

pub fn ca(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("tls/ca.pem")).unwrap()
}

/// Runs an admin command of the executable on `dir` with the test key;
/// returns (success, stdout, stderr).
pub async fn admin_cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_securechat"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("SECURECHAT_LOG", "warn")
        .env("SECURECHAT_MASTER_KEY", test_master_key_env())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the executable runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
