use reqwest::{Method, StatusCode};
use securechat::client::Client;
use securechat::protocol::close;

use super::harness::{
    TestServer, WAIT, ca, expect_close, keys, online, password, send_text, spawn_host,
};

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, _out) = spawn_host(dir.path()).await;
    let mut alice = Client::new(&url, &ca(dir.path())).unwrap();
    alice
        .register("alice", &password("alice"), keys(0), None)
        .await
        .unwrap();
    let mut bob = Client::new(&url, &ca(dir.path())).unwrap();
    bob.register("bob", &password("bob"), keys(1), None)
        .await
        .unwrap();
    let chat = alice.open_direct("bob").await.unwrap();
    let (mut sa, _) = online(&alice).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(send_text(&mut alice, &mut sa, &chat, &format!("kept {i}")).await);
    }
    child.kill().await.unwrap(); // SIGKILL: no chance to flush anything.
    child.wait().await.unwrap();

    let (mut child, url, _out) = spawn_host(dir.path()).await;
    let mut bob = Client::new(&url, &ca(dir.path())).unwrap();
    bob.login("bob", &password("bob")).await.unwrap();
    let page = bob.history(&chat.id, "after=0&limit=100").await.unwrap();
    assert_eq!(page.messages.len(), 20);
    for (m, (id, seq)) in page.messages.iter().zip(&acked) {
        assert_eq!((&m.id, m.seq), (id, *seq));
    }
    assert_eq!(bob.open(&page.messages[19]).await.unwrap(), "kept 19");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, mut out) = super::harness::spawn_host_with(dir.path(), |c| {
        c.env("SECURECHAT_LOG", "info");
    })
    .await;
    let mut alice = Client::new(&url, &ca(dir.path())).unwrap();
    alice
        .register("alice", &password("alice"), keys(0), None)
        .await
        .unwrap();
    let (mut socket, _) = online(&alice).await;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(expect_close(&mut socket).await, Some(close::GOING_AWAY));
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    let mut rest = Vec::new();
    while let Ok(Some(line)) = out.next_line().await {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|l| l.contains("SecureChat stopped")),
        "{rest:?}"
    );
    // A host keeps a rotated log file in its data directory.
    let diagnostics: Vec<_> = std::fs::read_dir(dir.path().join("diagnostics"))
        .expect("a diagnostics folder")
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        diagnostics.iter().any(|log| log.contains("hosting")),
        "{diagnostics:?}"
    );
    // The database is checkpointed: no write-ahead log left behind with data.
    let wal = std::fs::metadata(dir.path().join("securechat.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_carries_the_security_headers() {
    let mut server = TestServer::start().await;
    let client = server.client();
    for path in ["/", "/css/app.css", "/api/me", "/no-such-file"] {
        let r = client.raw(Method::GET, path, None).await.unwrap();
        let h = r.headers();
        assert_eq!(
            h["content-security-policy"],
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            "{path}"
        );
        assert!(
            h["strict-transport-security"]
                .to_str()
                .unwrap()
                .starts_with("max-age=")
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let r = client.raw(Method::GET, "/", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("SecureChat"));
    let r = client.raw(Method::GET, "/api/me", None).await.unwrap();
    // Every /api/ answer is JSON in the same shape, framework errors included.
    for (method, path, status, code) in [
        (
            Method::PUT,
            "/api/me",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/nothing",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/api/login",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
        ),
    ] {
        let r = client.raw(method, path, None).await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"],
            code,
            "{path}"
        );
    }
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "unauthorized"
    );
    server.stop().await;
}
