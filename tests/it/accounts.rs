use reqwest::{Method, StatusCode};
use securechat::client::crypto::PBKDF2_ITERATIONS;
use securechat::client::{Client, ClientError};
use securechat::protocol::Me;
use serde_json::json;

use super::harness::{TestServer, assert_refused, keys, online, password};

/// Sets the registration mode as `client`; the HTTP status.
async fn set_mode(client: &Client, mode: &str) -> StatusCode {
    client
        .raw(
            Method::PUT,
            "/api/admin/registration",
            Some(&json!({ "mode": mode })),
        )
        .await
        .unwrap()
        .status()
}

/// Registers `name` (with key set `key`) on a fresh client.
async fn register(
    server: &TestServer,
    name: &str,
    key: usize,
    invite: Option<&str>,
) -> Result<Me, ClientError> {
    server
        .client()
        .register(name, &password(name), keys(key), invite)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn first_user_is_admin_and_registration_modes_are_enforced() {
    let mut server = TestServer::start().await;
    let mut admin = server.user("alice").await;
    assert!(admin.me().await.unwrap().is_admin);
    let mut bob = server.user("bob").await;
    assert!(!bob.me().await.unwrap().is_admin);

    // A refused registration costs no password hash.
    let app = server.running.as_ref().unwrap().app.clone();
    let hashes = || app.passwords.hashes_made();
    let before = hashes();
    // Taken names are refused whatever their case.
    assert_refused(register(&server, "ALICE", 3, None).await, "username_taken");

    // Only admins change the mode.
    assert_eq!(set_mode(&bob, "invite").await, StatusCode::FORBIDDEN);
    assert_eq!(set_mode(&admin, "invite").await, StatusCode::OK);
    assert_refused(register(&server, "carol", 2, None).await, "invite_required");
    assert_eq!(hashes(), before);

    let r = admin
        .raw(
            Method::POST,
            "/api/admin/invites",
            Some(&json!({"uses": 1})),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: serde_json::Value = r.json().await.unwrap();
    let code = body["code"].as_str().unwrap();
    register(&server, "carol", 2, Some(code))
        .await
        .expect("invite admits");
    assert_eq!(hashes(), before + 1);
    assert_refused(
        register(&server, "dave", 3, Some(code)).await,
        "invalid_invite",
    );

    assert_eq!(set_mode(&admin, "closed").await, StatusCode::OK);
    assert_refused(
        register(&server, "dave", 3, None).await,
        "registration_closed",
    );
    assert_eq!(hashes(), before + 1);

    let r = admin
        .raw(Method::GET, "/api/admin/audit", None)
        .await
        .unwrap();
    let audit: Vec<serde_json::Value> = r.json().await.unwrap();
    assert!(audit.iter().any(|e| e["event"] == "registration_mode"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_rejects_bad_material() {
    let server = TestServer::start().await;
    let client = server.client();
    let b = |n: usize| securechat::protocol::B64::encode(&vec![7u8; n]);
    let wrapped = json!({"iv": b(12), "ct": b(100)});
    let good_keys = keys(0).public();
    let base = json!({
        "username": "alice", "salt": b(16), "iterations": PBKDF2_ITERATIONS, "auth_key": b(32),
        "enc_public": securechat::protocol::B64::encode(&good_keys.enc_spki()),
        "sig_public": securechat::protocol::B64::encode(&good_keys.sig_spki()),
        "enc_private": wrapped, "sig_private": wrapped,
    });
    let cases = [
        ("username", json!("a b"), "invalid_username"),
        ("username", json!("xy"), "invalid_username"),
        ("salt", json!(b(8)), "invalid_keys"),
        ("auth_key", json!(b(31)), "invalid_keys"),
        ("iterations", json!(1000), "invalid_keys"),
        ("enc_public", json!(b(300)), "invalid_keys"),
        ("salt", json!("not base64!"), "bad_request"),
    ];
    for (field, value, want) in cases {
        let mut body = base.clone();
        body[field] = value;
        let r = client
            .raw(Method::POST, "/api/register", Some(&body))
            .await
            .unwrap();
        let status = r.status();
        let got: serde_json::Value = r.json().await.unwrap();
        assert!(status.is_client_error(), "{field}: {status}");
        assert_eq!(got["error"], want, "{field}: {got}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn login_failures_look_alike_lock_doubles_and_survives_restart() {
    let mut server = TestServer::start().await;
    let _alice = server.user("alice").await;
    let mut c = server.client();
    let wrong = [9u8; 32];

    // Prelogin does not reveal whether a user exists.
    let real = c.prelogin("alice").await.unwrap();
    let fake = c.prelogin("nobody").await.unwrap();
    assert_eq!(
        (real.salt.len(), real.iterations),
        (fake.salt.len(), fake.iterations)
    );
    assert_eq!(
        fake.salt,
        c.prelogin("NOBODY").await.unwrap().salt,
        "stable per name"
    );

    let (s1, wrong_pw, _) = c.login_attempt("alice", &wrong).await.unwrap();
    let (s2, unknown, _) = c.login_attempt("nobody", &wrong).await.unwrap();
    assert_eq!(s1, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (s1, &wrong_pw),
        (s2, &unknown),
        "wrong password and unknown user look alike"
    );

    for _ in 0..4 {
        let (s, _, _) = c.login_attempt("alice", &wrong).await.unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        c.login_attempt("nobody", &wrong).await.unwrap();
    }
    // Five failures: both names are locked for a minute, even for the right key.
    let right = c.auth_key("alice", &password("alice")).await.unwrap();
    let (s, locked_real, retry) = c.login_attempt("alice", &right).await.unwrap();
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((45..=60).contains(&retry), "locked for a minute: {retry}");
    let (s, locked_unknown, _) = c.login_attempt("nobody", &wrong).await.unwrap();
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(locked_real["error"], locked_unknown["error"]);
    assert_eq!(locked_real["message"], locked_unknown["message"]);
    assert_eq!(
        locked_real["message"], wrong_pw["message"],
        "one message for every failure"
    );

    // After the minute, one more failure locks for two minutes.
    server.clock.advance_ms(61_000);
    let (s, _, _) = c.login_attempt("alice", &wrong).await.unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, retry) = c.login_attempt("alice", &right).await.unwrap();
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!((105..=120).contains(&retry), "doubled: {retry}");

    // The lock is in the database: a restart does not lift it.
    server.restart().await;
    let mut c = server.client();
    let (s, _, _) = c.login_attempt("alice", &right).await.unwrap();
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);

    server.clock.advance_ms(121_000);
    c.login("alice", &password("alice"))
        .await
        .expect("login after the lock");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_failures_from_one_address_refuse_it() {
    let mut server = TestServer::start().await;
    let _alice = server.user("alice").await;
    let mut c = server.client();
    for i in 0..20 {
        let (s, _, _) = c
            .login_attempt(&format!("user{i}"), &[1u8; 32])
            .await
            .unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let right = c.auth_key("alice", &password("alice")).await.unwrap();
    let (s, _, retry) = c.login_attempt("alice", &right).await.unwrap();
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "the address is refused");
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!(
        (850..=900).contains(&retry),
        "refused for 15 minutes: {retry}"
    );
    server.clock.advance_ms(15 * 60_000 + 1000);
    c.login("alice", &password("alice"))
        .await
        .expect("allowed again");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_expire_and_password_change_ends_the_others() {
    let mut server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut other = server.client();
    other.login("alice", &password("alice")).await.unwrap();
    let (mut other_socket, _) = online(&other).await;

    alice
        .change_password(&password("alice"), "a brand new long passphrase")
        .await
        .expect("change password");
    assert_eq!(
        super::harness::expect_close(&mut other_socket).await,
        Some(securechat::protocol::close::SESSION_ENDED)
    );
    let err = other.me().await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Api {
            status: StatusCode::UNAUTHORIZED,
            ..
        }
    ));
    alice.me().await.expect("this session continues");

    let mut again = server.client();
    assert!(again.login("alice", &password("alice")).await.is_err());
    again
        .login("alice", "a brand new long passphrase")
        .await
        .expect("new password, same keys unwrap");

    // Idle timeout: 12 hours unused.
    server.clock.advance_ms(12 * 3600 * 1000 + 1000);
    let err = again.me().await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Api {
            status: StatusCode::UNAUTHORIZED,
            ..
        }
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn state_changing_requests_need_our_origin() {
    let mut server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    alice.set_origin("https://evil.example");
    let r = alice.raw(Method::POST, "/api/logout", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = alice.raw(Method::GET, "/api/me", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "reads need only the session");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_guesses_cannot_slip_past_the_lock() {
    let mut server = TestServer::start().await;
    let _alice = server.user("alice").await;
    let attempts = (0..10).map(|_| {
        let mut c = server.client();
        async move { c.login_attempt("alice", &[5u8; 32]).await.unwrap().0 }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let failed = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!((failed, refused), (5, 5), "{statuses:?}");
    // Refusals during the lock: one audit record, not one each.
    let app = server.running.as_ref().unwrap().app.clone();
    let audit = app.db.call(|s| s.audit_log(100)).await.unwrap();
    let refusals = audit
        .iter()
        .filter(|e| e.event == "login_refused_locked")
        .count();
    assert_eq!(refusals, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn administrators_see_and_end_sessions() {
    let mut server = TestServer::start().await;
    let admin = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let (mut socket, _) = online(&bob).await;
    assert_eq!(
        bob.raw(Method::GET, "/api/admin/sessions", None)
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    let r = admin
        .raw(Method::GET, "/api/admin/sessions", None)
        .await
        .unwrap();
    let sessions: Vec<serde_json::Value> = r.json().await.unwrap();
    assert_eq!(sessions.len(), 2);
    let own = sessions.iter().find(|s| s["username"] == "alice").unwrap();
    assert_eq!(own["current"], true);
    let theirs = sessions.iter().find(|s| s["username"] == "bob").unwrap();
    let path = format!("/api/admin/sessions/{}", theirs["id"].as_str().unwrap());
    let r = admin.raw(Method::DELETE, &path, None).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        super::harness::expect_close(&mut socket).await,
        Some(securechat::protocol::close::SESSION_ENDED)
    );
    assert_refused(bob.me().await, "unauthorized");
    let r = admin.raw(Method::DELETE, &path, None).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn administrators_reset_accounts_from_the_api() {
    let mut server = TestServer::start().await;
    let admin = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let r = bob
        .raw(Method::POST, "/api/admin/users/alice/reset", None)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = admin
        .raw(Method::POST, "/api/admin/users/alice/reset", None)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "not oneself");
    let r = admin
        .raw(Method::POST, "/api/admin/users/bob/reset", None)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let code = r.json::<serde_json::Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_refused(bob.me().await, "unauthorized");
    server
        .client()
        .complete_reset("bob", &code, "bob's brand new passphrase", keys(2))
        .await
        .expect("the code works");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_guesses_of_the_old_password_cannot_slip_past_the_lock() {
    let mut server = TestServer::start().await;
    let alice = server.user("alice").await;
    // The account's own wrapped keys make a well-formed body; the old auth
    // key is a guess.
    let keys: serde_json::Value = alice
        .raw(Method::GET, "/api/keys", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b64 = |bytes: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let body = json!({
        "old_auth_key": b64(&[5u8; 32]),
        "salt": keys["salt"],
        "iterations": keys["iterations"],
        "auth_key": b64(&[6u8; 32]),
        "enc_private": keys["enc_private"],
        "sig_private": keys["sig_private"],
    });
    let guesses = (0..10).map(|_| async {
        alice
            .raw(Method::POST, "/api/change-password", Some(&body))
            .await
            .unwrap()
            .status()
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let wrong = statuses
        .iter()
        .filter(|s| **s == StatusCode::FORBIDDEN)
        .count();
    let locked = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((wrong, locked), (5, 5), "{statuses:?}");
    // A sign-in during the same lock is refused too, and audited as its own kind.
    let mut other = server.client();
    let (status, _, _) = other.login_attempt("alice", &[7u8; 32]).await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let app = server.running.as_ref().unwrap().app.clone();
    let audit = app.db.call(|s| s.audit_log(100)).await.unwrap();
    assert!(
        audit.iter().any(|e| e.event == "user_locked"),
        "the lock is audited"
    );
    let count = |event: &str| audit.iter().filter(|e| e.event == event).count();
    assert_eq!(count("password_change_refused_locked"), 1);
    assert_eq!(count("login_refused_locked"), 1);
    server.stop().await;
}
