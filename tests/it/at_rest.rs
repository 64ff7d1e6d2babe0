use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use securechat::admin::Admin;
use securechat::client::ClientError;
use securechat::protocol::close;
use securechat::secrets::MasterKey;

use super::harness::{
    TestServer, admin_cli, assert_refused, ca, expect_close, expect_message, keys, online,
    password, send_text, spawn_host, test_master_key,
};

/// Every file below `dir`: relative path → contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scripted_session_leaves_nothing_readable_on_disk() {
    let mut server = TestServer::start().await;
    let names = ["zorander", "quillsby", "maribelle"];
    let mut z = server.user(names[0]).await;
    let mut q = server.user(names[1]).await;
    let mut m = server.user(names[2]).await;
    let (mut sz, _) = online(&z).await;
    let (mut sq, _) = online(&q).await;
    let (mut sm, _) = online(&m).await;
    let zq = z.open_direct(names[1]).await.unwrap();
    let qm = q.open_direct(names[2]).await.unwrap();
    let group = m
        .create_group("Porcupine Club", &[names[0], names[1]])
        .await
        .unwrap();
    let texts = [
        "porcupine secret one",
        "porcupine secret two",
        "porcupine secret three",
    ];
    send_text(&mut z, &mut sz, &zq, texts[0]).await;
    assert_eq!(
        q.open(&expect_message(&mut sq).await).await.unwrap(),
        texts[0]
    );
    send_text(&mut q, &mut sq, &qm, texts[1]).await;
    assert_eq!(
        m.open(&expect_message(&mut sm).await).await.unwrap(),
        texts[1]
    );
    send_text(&mut m, &mut sm, &group, texts[2]).await;
    assert_eq!(
        z.open(&expect_message(&mut sz).await).await.unwrap(),
        texts[2]
    );
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for (client, name) in [(&mut z, names[0]), (&mut q, names[1]), (&mut m, names[2])] {
        let key = client.auth_key(name, &password(name)).await.unwrap();
        secrets.push(key.to_vec());
        secrets.push(securechat::protocol::B64::encode(&key).into_bytes());
        secrets.push(password(name).into_bytes());
    }
    for s in [sz, sq, sm] {
        s.close().await;
    }
    server.stop().await;

    let files = snapshot(server.dir.path());
    assert!(
        files.keys().any(|p| p.starts_with("logs")),
        "chat logs were written"
    );
    assert!(
        files.keys().any(|p| p.starts_with("audit")),
        "the audit log was written"
    );
    let mut forbidden: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
    forbidden.extend(names.iter().map(|n| n.as_bytes().to_vec()));
    forbidden.extend(secrets);
    forbidden.push(b"SQLite format 3".to_vec());
    forbidden.push(b"PRIVATE KEY".to_vec());
    forbidden.push(b"Porcupine Club".to_vec());
    for table in [
        "users",
        "sessions",
        "messages",
        "chats",
        "members",
        "invites",
        "throttle",
        "chat_logs",
        "audit",
    ] {
        forbidden.push(format!("CREATE TABLE {table}").into_bytes());
        forbidden.push(table.as_bytes().to_vec());
    }
    for (path, bytes) in &files {
        let name = path.to_string_lossy();
        for user in names {
            assert!(!name.contains(user), "a username in the file name {name}");
        }
        for needle in &forbidden {
            assert!(
                !contains(bytes, needle),
                "{name} contains {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_master_key_is_refused_and_changes_nothing() {
    let mut server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let chat = alice.open_direct("bob").await.unwrap();
    let (mut sa, _) = online(&alice).await;
    send_text(&mut alice, &mut sa, &chat, "kept safe").await;
    drop(bob);
    sa.close().await;
    server.stop().await;
    let before = snapshot(server.dir.path());

    let mut config = server.config.clone();
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.master_key = Some(MasterKey::from_bytes([0x42; 32]));
    let err = securechat::server::start(config, server.clock.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("was encrypted with another key"),
        "{err}"
    );
    // The command line says the same, through the environment variable,
    // for an admin command and for the host itself.
    for args in [
        &["user", "list"][..],
        &["host", "--bind", "127.0.0.1:0"][..],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_securechat"))
            .args(args)
            .arg("--data-dir")
            .arg(server.dir.path())
            .env(
                "SECURECHAT_MASTER_KEY",
                securechat::protocol::B64::encode(&[0x42; 32]),
            )
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("was encrypted with another key"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(
        before,
        snapshot(server.dir.path()),
        "the data directory is byte-identical"
    );

    // The right key still opens everything.
    server.restart().await;
    let mut again = server.client();
    again.login("alice", &password("alice")).await.unwrap();
    let page = again.history(&chat.id, "after=0").await.unwrap();
    assert_eq!(again.open(&page.messages[0]).await.unwrap(), "kept safe");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_logs_survive_kill_9_and_export_as_readable_text() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, _out) = spawn_host(dir.path()).await;
    let mut alice = securechat::client::Client::new(&url, &ca(dir.path())).unwrap();
    alice
        .register("alice", &password("alice"), keys(0), None)
        .await
        .unwrap();
    let mut bob = securechat::client::Client::new(&url, &ca(dir.path())).unwrap();
    bob.register("bob", &password("bob"), keys(1), None)
        .await
        .unwrap();
    let chat = alice.open_direct("bob").await.unwrap();
    let (mut sa, _) = online(&alice).await;
    let (mut sb, _) = online(&bob).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            send_text(&mut alice, &mut sa, &chat, &format!("logged {i}"))
                .await
                .0,
        );
        expect_message(&mut sb).await;
    }
    // Bob's session records the deliveries once its pong shows they are out.
    super::harness::expect_nothing_queued(&mut sb).await;
    // The host writes logs on a thread of its own: wait (bounded) until the
    // last delivery is on disk, then kill it.
    let deadline = tokio::time::Instant::now() + super::harness::WAIT;
    loop {
        let admin = Admin::open_with(dir.path(), test_master_key()).unwrap();
        let logs = admin.logs().unwrap();
        let written = logs
            .iter()
            .filter(|l| l.user.as_deref() == Some("bob"))
            .any(|l| {
                let lines = admin.read_log(&l.path).unwrap().lines;
                lines.iter().any(|line| line.contains(ids[2].as_str()))
            });
        if written {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob's log never showed the last message"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    child.wait().await.unwrap();

    let admin = Admin::open_with(dir.path(), test_master_key()).unwrap();
    let logs = admin.logs().unwrap();
    let mine = |user: &str| {
        logs.iter()
            .find(|l| l.user.as_deref() == Some(user))
            .unwrap_or_else(|| panic!("a log of {user}'s session: {logs:?}"))
    };
    let alice_log = admin.read_log(&mine("alice").path).unwrap();
    let bob_log = admin.read_log(&mine("bob").path).unwrap();
    assert_eq!(mine("bob").chat.as_deref(), Some("alice & bob"));
    assert!(alice_log.lines[0].contains("session-start user=alice"));
    for id in &ids {
        assert!(
            alice_log
                .lines
                .iter()
                .any(|l| l.contains("message-sent") && l.contains(id.as_str()))
        );
        assert!(
            bob_log
                .lines
                .iter()
                .any(|l| l.contains("message-received") && l.contains(id.as_str()))
        );
    }
    assert!(
        alice_log.lines.iter().all(|l| !l.contains("logged 0")),
        "no content in logs"
    );
    assert_eq!(alice_log.damage, None);

    // A record torn by a crash mid-write is reported and skipped.
    let path = dir.path().join(&mine("alice").path);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0, 0, 0, 60, 1, 2, 3]);
    std::fs::write(&path, bytes).unwrap();
    let torn = admin.read_log(&mine("alice").path).unwrap();
    assert_eq!(torn.lines, alice_log.lines);
    assert!(torn.damage.is_some());

    let out = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = admin_cli(
        dir.path(),
        &["logs", "export", out.path().to_str().unwrap()],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Wrote 2 log(s)"), "{stdout}");
    let exported: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(exported.len(), 2, "one file per session and chat");
    let alice_txt = exported
        .iter()
        .find(|p| p.to_string_lossy().ends_with("_alice.txt"))
        .expect("alice's export");
    let text = std::fs::read_to_string(alice_txt).unwrap();
    for id in &ids {
        assert!(text.contains(id.as_str()), "{text}");
    }
    assert!(text.contains("the log ends in damage"), "{text}");
    let (ok, listing, _) = admin_cli(dir.path(), &["logs", "list"]).await;
    assert!(ok && listing.contains("alice & bob"), "{listing}");
    let (ok, shown, _) = admin_cli(dir.path(), &["logs", "show", &mine("bob").path]).await;
    assert!(ok && shown.contains("message-received"), "{shown}");
    let (ok, _, err) = admin_cli(dir.path(), &["logs", "show", "../securechat.db"]).await;
    assert!(!ok && err.contains("is not a log"), "{err}");
    let (ok, audit, _) = admin_cli(dir.path(), &["audit", "show"]).await;
    assert!(ok && audit.contains("register actor=alice"), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_disable_reset_and_invite() {
    let mut server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let dir = server.dir.path().to_owned();
    let chat = alice.open_direct("bob").await.unwrap();
    let (mut sa, _) = online(&alice).await;
    let (mut sb, _) = online(&bob).await;
    let (_, _) = send_text(&mut bob, &mut sb, &chat, "before the reset").await;
    let old = expect_message(&mut sa).await;

    // Disable: the socket closes at once, sign-in fails; enable undoes it.
    let (ok, _, err) = admin_cli(&dir, &["user", "disable", "bob"]).await;
    assert!(ok, "{err}");
    assert_eq!(expect_close(&mut sb).await, Some(close::SESSION_ENDED));
    let mut again = server.client();
    assert_refused(again.login("bob", &password("bob")).await, "login_failed");
    let (ok, listing, _) = admin_cli(&dir, &["user", "list"]).await;
    assert!(
        ok && listing
            .lines()
            .any(|l| l.starts_with("bob") && l.contains("disabled")),
        "{listing}"
    );
    assert!(admin_cli(&dir, &["user", "enable", "bob"]).await.0);
    // Bob's own client signs in again; it still holds the keys it pinned.
    bob.login("bob", &password("bob"))
        .await
        .expect("enabled again");

    // Reset: a one-time code, new keys, old history unreadable, contacts warned.
    let (ok, out, err) = admin_cli(&dir, &["user", "reset", "alice"]).await;
    assert!(ok, "{err}");
    let code = out.lines().nth(1).unwrap().trim().to_owned();
    assert_eq!(expect_close(&mut sa).await, Some(close::SESSION_ENDED));
    assert_refused(
        server.client().login("alice", &password("alice")).await,
        "login_failed",
    );
    assert_refused(
        server
            .client()
            .complete_reset("alice", "wrong-code", "new passphrase for alice", keys(2))
            .await,
        "reset_failed",
    );
    let mut reborn = server.client();
    reborn
        .complete_reset("alice", &code, "new passphrase for alice", keys(2))
        .await
        .expect("the code works once");
    assert!(
        reborn.open(&old).await.is_err(),
        "old history is unreadable with the new keys"
    );
    assert_refused(
        server
            .client()
            .complete_reset("alice", &code, "another one", keys(3))
            .await,
        "reset_failed",
    );
    let mut fresh = server.client();
    fresh.login("bob", &password("bob")).await.unwrap();
    assert!(
        fresh.check_keys("alice").await.is_ok(),
        "a new client pins the new keys"
    );
    let warned = bob.check_keys("alice").await;
    assert!(
        matches!(warned, Err(ClientError::KeyChanged(_))),
        "bob's client is warned: {warned:?}"
    );

    // Invites: uses and expiry.
    let admin_api = reborn; // alice is still the administrator
    let r = admin_api
        .raw(
            reqwest::Method::PUT,
            "/api/admin/registration",
            Some(&serde_json::json!({"mode": "invite"})),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (ok, out, _) = admin_cli(
        &dir,
        &["invite", "create", "--uses", "2", "--expires", "1h"],
    )
    .await;
    assert!(ok);
    let code = out.lines().nth(1).unwrap().trim().to_owned();
    for (i, name) in ["carol", "dave"].iter().enumerate() {
        server
            .client()
            .register(name, &password(name), keys(i), Some(&code))
            .await
            .unwrap();
    }
    assert_refused(
        server
            .client()
            .register("erin", &password("erin"), keys(3), Some(&code))
            .await,
        "invalid_invite",
    );
    let (_, out, _) = admin_cli(&dir, &["invite", "create", "--expires", "1h"]).await;
    let late = out.lines().nth(1).unwrap().trim().to_owned();
    server.clock.advance_ms(2 * 3600 * 1000);
    assert_refused(
        server
            .client()
            .register("erin", &password("erin"), keys(3), Some(&late))
            .await,
        "invalid_invite",
    );
    let (ok, _, err) = admin_cli(&dir, &["invite", "create", "--expires", "soon"]).await;
    assert!(!ok && err.contains("is not a duration"), "{err}");
    let (ok, _, err) = admin_cli(&dir, &["user", "disable", "nobody"]).await;
    assert!(!ok && err.contains("no user named"), "{err}");
    server.stop().await;
}

/// Runs only inside a private Secret Service session (test.sh starts one with
/// gnome-keyring under dbus-run-session); in CI its absence is a failure.
#[test]
fn the_master_key_lives_in_a_real_secret_service() {
    use securechat::secrets::{self, KeySource, KeyringUse, SecretsError};
    if std::env::var_os("SECURECHAT_TEST_SECRET_SERVICE").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this under a Secret Service session: run ./test.sh"
        );
        eprintln!("SKIPPED the Secret Service test: run ./test.sh to start a private one");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first = secrets::load_or_create(dir.path(), None, KeyringUse::Ask).unwrap();
    assert_eq!(first.source, KeySource::Keyring);
    assert!(
        !dir.path().join("master.key").exists(),
        "no key file when the keyring takes the key"
    );
    let again = secrets::load_or_create(dir.path(), None, KeyringUse::Ask).unwrap();
    assert_eq!(
        (again.source.clone(), again.subkey("db")),
        (KeySource::Keyring, first.subkey("db"))
    );

    // It is really in the Secret Service, under the SecureChat service.
    let found = std::process::Command::new("secret-tool")
        .args(["search", "--all", "service", "SecureChat"])
        .output()
        .expect("secret-tool (libsecret-tools) is installed");
    let listing = String::from_utf8_lossy(&found.stdout).into_owned()
        + &String::from_utf8_lossy(&found.stderr);
    assert!(listing.contains("master-key-"), "{listing}");

    // Without the entry the data cannot be opened, and no new key is made.
    secrets::forget_keyring_entry(dir.path()).unwrap();
    let err = secrets::load_or_create(dir.path(), None, KeyringUse::Ask).unwrap_err();
    assert!(matches!(err, SecretsError::KeyMissing(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_keyring_the_host_keeps_its_key_in_an_owner_only_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, _url, mut out) = super::harness::spawn_host_with(&data, |c| {
        // No key in the environment and no session bus: the key file it is.
        c.env_remove("SECURECHAT_MASTER_KEY")
            .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus");
    })
    .await;
    let mut said = String::new();
    while let Ok(Some(line)) = tokio::time::timeout(super::harness::WAIT, out.next_line())
        .await
        .expect("output")
    {
        if line.starts_with("Data:") {
            said = line;
            break;
        }
    }
    assert!(said.contains("master key from the key file"), "{said}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_messages_and_logs_only() {
    // Sessions that outlive the test's jumps in time.
    let mut server = TestServer::start_with(|l| {
        l.session_idle = std::time::Duration::from_secs(30 * 86_400);
        l.session_absolute = std::time::Duration::from_secs(30 * 86_400);
    })
    .await;
    server.stop().await;
    // A host started with a retention period of two days remembers it.
    server.config.retention_days = Some(2);
    server.restart().await;
    let mut alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let chat = alice.open_direct("bob").await.unwrap();
    let (mut sa, _) = online(&alice).await;
    send_text(&mut alice, &mut sa, &chat, "old news").await;
    sa.close().await;
    let app = server.running.as_ref().unwrap().app.clone();
    let logger = app.logger.clone();
    tokio::task::spawn_blocking(move || logger.flush())
        .await
        .unwrap();
    let logs_before = Admin::open_with(server.dir.path(), test_master_key())
        .unwrap()
        .logs()
        .unwrap();
    assert!(!logs_before.is_empty());

    // A day later nothing is due; three days later the message and its log go.
    server.clock.advance_ms(86_400_000);
    securechat::server::apply_retention(&app).await.unwrap();
    assert_eq!(
        alice
            .history(&chat.id, "after=0")
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    server.clock.advance_ms(2 * 86_400_000);
    let (mut sa, _) = online(&alice).await;
    send_text(&mut alice, &mut sa, &chat, "fresh news").await;
    securechat::server::apply_retention(&app).await.unwrap();
    let left = alice.history(&chat.id, "after=0").await.unwrap().messages;
    assert_eq!(left.len(), 1);
    assert_eq!(alice.open(&left[0]).await.unwrap(), "fresh news");
    let logs_after = Admin::open_with(server.dir.path(), test_master_key())
        .unwrap()
        .logs()
        .unwrap();
    for old in &logs_before {
        assert!(
            !server.dir.path().join(&old.path).exists(),
            "{} was kept",
            old.path
        );
        assert!(logs_after.iter().all(|l| l.path != old.path));
    }
    drop(bob);
    server.stop().await;
}
