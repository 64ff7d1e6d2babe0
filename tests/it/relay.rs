use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use securechat::client::{Client, ClientError};
use securechat::relay::{self, RelayError};

use super::harness::{TestServer, expect_close, expect_message, keys, online, password, send_text};

async fn start_relay(server: &TestServer) -> relay::RunningRelay {
    let fingerprint = server.running.as_ref().unwrap().fingerprint().to_owned();
    relay::start(
        &server.url(),
        Some(&fingerprint),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("relay starts")
}

/// A client of the relay (plain HTTP on loopback; the anchor is unused).
fn via(relay: &relay::RunningRelay, server: &TestServer) -> Client {
    Client::new(relay.url().trim_end_matches('/'), &server.ca()).unwrap()
}

/// "joiner", registered through the relay.
async fn joiner(relay: &relay::RunningRelay, server: &TestServer) -> Client {
    let mut joiner = via(relay, server);
    joiner
        .register("joiner", &password("joiner"), keys(0), None)
        .await
        .unwrap();
    joiner
}

#[tokio::test(flavor = "multi_thread")]
async fn a_native_client_chats_and_shares_files_through_the_relay() {
    let mut server = TestServer::start().await;
    let relay = start_relay(&server).await;
    let mut joiner = joiner(&relay, &server).await;
    let mut direct = server.user("direct").await;
    let (mut sj, _) = online(&joiner).await;
    let (mut sd, _) = online(&direct).await;
    let chat = joiner.open_direct("direct").await.unwrap();
    send_text(&mut joiner, &mut sj, &chat, "through the relay").await;
    assert_eq!(
        direct.open(&expect_message(&mut sd).await).await.unwrap(),
        "through the relay"
    );
    send_text(&mut direct, &mut sd, &chat, "and back").await;
    assert_eq!(
        joiner.open(&expect_message(&mut sj).await).await.unwrap(),
        "and back"
    );

    let data: Vec<u8> = (0..(3 << 20) + 99).map(|i| (i * 7 % 251) as u8).collect();
    let file = joiner
        .upload_file(&chat.id, "r.bin", "application/octet-stream", &data)
        .await
        .unwrap();
    assert_eq!(direct.download_file(&file).await.unwrap(), data);
    assert_eq!(joiner.download_file(&file).await.unwrap(), data);

    // The session cookie on the loopback side is the relay's own.
    let r = joiner.raw(Method::GET, "/api/me", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    relay.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_with_another_certificate_and_a_foreign_origin_are_refused() {
    let mut server = TestServer::start().await;
    let wrong = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
    let refused = relay::start(&server.url(), Some(wrong), "127.0.0.1:0".parse().unwrap()).await;
    match refused {
        Err(RelayError::Mismatch { .. }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a host with another certificate was accepted"),
    }
    let relay = start_relay(&server).await;
    let mut joiner = joiner(&relay, &server).await;
    joiner.set_origin("http://evil.example");
    let r = joiner.raw(Method::POST, "/api/logout", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    match joiner.connect().await {
        Err(ClientError::Ws(e)) => assert!(e.to_string().contains("403"), "{e}"),
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("a foreign origin was let through"),
    }
    relay.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_and_its_client_recover_when_the_host_restarts() {
    let mut server = TestServer::start_with(|l| l.frame_burst = 100.0).await;
    let relay = start_relay(&server).await;
    let mut joiner = joiner(&relay, &server).await;
    let mut direct = server.user("direct").await;
    let chat = direct.open_direct("joiner").await.unwrap();
    let (mut sj, _) = online(&joiner).await;
    let (mut sd, _) = online(&direct).await;
    send_text(&mut direct, &mut sd, &chat, "before").await;
    let first = expect_message(&mut sj).await;
    server.restart().await;
    let code = expect_close(&mut sj).await;
    assert!(matches!(code, Some(1001) | Some(1012) | None), "{code:?}");
    let (mut sd, _) = online(&direct).await;
    send_text(&mut direct, &mut sd, &chat, "after").await;
    // The joiner's client reconnects through the same relay and catches up.
    let mut sj = joiner.connect().await.unwrap();
    let (_, replayed) = sj
        .hello(BTreeMap::from([(chat.id.clone(), first.seq)]))
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(joiner.open(&replayed[0]).await.unwrap(), "after");
    relay.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_gone_or_reinstalled_is_reported_and_a_new_certificate_refused() {
    let mut server = TestServer::start().await;
    let relay = start_relay(&server).await;
    let client = via(&relay, &server);
    assert_eq!(relay.check().await, relay::Health::Connected);

    // Gone: "unreachable", and the page is told so.
    server.stop().await;
    assert_eq!(relay.check().await, relay::Health::Unreachable);
    let r = client.raw(Method::GET, "/api/me", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "host_unreachable");

    // Reinstalled (a new CA on the same address): refused with a clear
    // message, never forwarded.
    let other = tempfile::tempdir().unwrap();
    let mut config = securechat::config::Config::new(server.addr, other.path().to_owned());
    config.master_key = Some(super::harness::test_master_key());
    let impostor =
        securechat::server::start(config, std::sync::Arc::new(securechat::clock::SystemClock))
            .await
            .expect("another host on the same address");
    let r = client.raw(Method::GET, "/api/me", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "host_certificate_changed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&impostor.fingerprint().to_owned()),
        "{body}"
    );
    assert!(matches!(relay.health(), relay::Health::Mismatch(fp) if fp == impostor.fingerprint()));
    relay.shutdown().await;
    impostor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_the_host_refuses_is_refused_through_the_relay_with_the_hosts_answer() {
    let mut server = TestServer::start().await;
    let relay = start_relay(&server).await;
    // No session (as after it ended): the host's 401, not an open socket
    // that closes, so a page knows to ask whether it is still signed in.
    match via(&relay, &server).connect().await {
        Err(ClientError::Ws(e)) => assert!(e.to_string().contains("401"), "{e}"),
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("a socket without a session was opened"),
    }
    // A host that is gone: the relay's 502.
    let joiner = joiner(&relay, &server).await;
    server.stop().await;
    match joiner.connect().await {
        Err(ClientError::Ws(e)) => assert!(e.to_string().contains("502"), "{e}"),
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("a socket to a host that is gone was opened"),
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_takes_the_connection_but_never_answers_is_given_up() {
    let mut server = TestServer::start().await;
    let relay = start_relay(&server).await;
    let joiner = joiner(&relay, &server).await;
    server.stop().await;
    // Something on the host's address that takes connections and says nothing.
    let silent = tokio::net::TcpListener::bind(server.addr).await.unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let started = std::time::Instant::now();
    match joiner.connect().await {
        Err(ClientError::Ws(e)) => assert!(e.to_string().contains("502"), "{e}"),
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("a socket to a silent host was opened"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    held.abort();
    relay.shutdown().await;
}
