use securechat::client::{Client, ClientError};
use securechat::protocol::{ClientFrame, ServerFrame, close};

use super::harness::{
    TestServer, expect, expect_close, expect_error, expect_message, online, send_envelope,
    send_text,
};

fn refused_status(result: Result<securechat::client::Connection, ClientError>) -> u16 {
    match result {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(ClientError::Ws(e)) => match *e {
            tokio_tungstenite::tungstenite::Error::Http(ref response) => response.status().as_u16(),
            ref other => panic!("unexpected error {other}"),
        },
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_needs_a_live_session_and_our_origin() {
    let mut server = TestServer::start().await;
    let alice = server.user("alice").await;

    assert_eq!(
        refused_status(server.client().connect().await),
        401,
        "no session"
    );

    let mut forged = server.client();
    forged.set_session_token(Some(securechat::protocol::B64::encode(&[3u8; 32])));
    assert_eq!(
        refused_status(forged.connect().await),
        401,
        "unknown session"
    );

    let mut foreign = Client::new(&server.url(), &server.ca()).unwrap();
    foreign.set_session_token(alice.session_token().map(str::to_owned));
    foreign.set_origin("https://evil.example");
    assert_eq!(
        refused_status(foreign.connect().await),
        403,
        "foreign origin"
    );
    foreign.set_origin(&format!("https://{}.evil.example", server.addr));
    assert_eq!(
        refused_status(foreign.connect().await),
        403,
        "no substring matches"
    );

    online(&alice).await;
    // Seven days later the session is over, however active.
    server.clock.advance_ms(7 * 24 * 3600 * 1000 + 1);
    assert_eq!(
        refused_status(alice.connect().await),
        401,
        "expired session"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_closes_that_sessions_sockets_and_logout_all_closes_every_one() {
    let mut server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut phone = server.client();
    phone
        .login("alice", &super::harness::password("alice"))
        .await
        .unwrap();
    let (mut desk, _) = online(&alice).await;
    let (mut pocket, _) = online(&phone).await;

    let old = alice.session_token().unwrap().to_owned();
    alice.logout().await.unwrap();
    assert_eq!(expect_close(&mut desk).await, Some(close::SESSION_ENDED));
    alice.set_session_token(Some(old));
    assert_eq!(
        refused_status(alice.connect().await),
        401,
        "a logged-out token is dead"
    );
    super::harness::expect_nothing_queued(&mut pocket).await;

    phone.logout_all().await.unwrap();
    assert_eq!(expect_close(&mut pocket).await, Some(close::SESSION_ENDED));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_get_clear_errors_and_everyone_else_is_served() {
    let mut server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let _carol = server.user("carol").await;
    let chat = alice.open_direct("bob").await.unwrap();
    let (mut sa, _) = online(&alice).await;
    let (mut sb, _) = online(&bob).await;

    // Before hello nothing but hello and ping is taken.
    let mut early = alice.connect().await.unwrap();
    early
        .send(&ClientFrame::Typing {
            chat: chat.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(expect_error(&mut early).await.0, "hello_required");

    sa.send_text("{not json").await.unwrap();
    assert_eq!(expect_error(&mut sa).await.0, "bad_json");
    sa.send_text(r#"{"type":"shout","text":"hi"}"#)
        .await
        .unwrap();
    assert_eq!(expect_error(&mut sa).await.0, "unknown_type");
    // A frame is an object: serde would take a struct as an array of its
    // fields, but the host does not.
    sa.send_text(r#"["ping","x"]"#).await.unwrap();
    assert_eq!(expect_error(&mut sa).await.0, "unknown_type");
    sa.send_text(r#"{"type":"send","id":"x"}"#).await.unwrap();
    assert_eq!(expect_error(&mut sa).await.0, "bad_frame");

    // Wrong wrapped-key sets: one missing, one extra.
    for members in [vec!["alice"], vec!["alice", "bob", "carol"]] {
        let members: Vec<String> = members.into_iter().map(str::to_owned).collect();
        let id = uuid::Uuid::new_v4().to_string();
        let envelope = alice.seal_for(&chat.id, &members, &id, "x").await.unwrap();
        send_envelope(&mut sa, id, &chat.id, envelope).await;
        assert_eq!(expect_error(&mut sa).await.0, "members_mismatch");
    }
    // A malformed envelope.
    let id = uuid::Uuid::new_v4().to_string();
    let mut envelope = alice.seal_text(&chat, &id, "x").await.unwrap();
    envelope.iv.0.truncate(8);
    send_envelope(&mut sa, id, &chat.id, envelope).await;
    assert_eq!(expect_error(&mut sa).await.0, "bad_envelope");
    // Base64 with stray trailing bits: refused while parsing, as before.
    let id = uuid::Uuid::new_v4().to_string();
    let envelope = alice.seal_text(&chat, &id, "x").await.unwrap();
    let mut frame = serde_json::to_value(ClientFrame::Send {
        id,
        chat: chat.id.clone(),
        envelope,
    })
    .unwrap();
    frame["envelope"]["iv"] = "AAAAAAAAAAAAAAB".into();
    sa.send_text(&frame.to_string()).await.unwrap();
    assert_eq!(expect_error(&mut sa).await.0, "bad_frame");
    // A repeated key fails the strict parse; the loose one takes the last.
    sa.send_text(r#"{"type":"ping","nonce":"a","nonce":"b"}"#)
        .await
        .unwrap();
    let nonce = expect(&mut sa, "a pong", |f| match f {
        ServerFrame::Pong { nonce } => Some(nonce.clone()),
        _ => None,
    })
    .await;
    assert_eq!(nonce.as_deref(), Some("b"));
    // A chat that does not exist.
    let id = uuid::Uuid::new_v4().to_string();
    let envelope = alice.seal_text(&chat, &id, "x").await.unwrap();
    send_envelope(&mut sa, id, &uuid::Uuid::new_v4().to_string(), envelope).await;
    assert_eq!(expect_error(&mut sa).await.0, "not_member");

    // Still serving: alice's own socket and bob's.
    send_text(&mut alice, &mut sa, &chat, "still here").await;
    let m = expect_message(&mut sb).await;
    assert_eq!(bob.open(&m).await.unwrap(), "still here");

    // An oversize frame closes that socket with 1009, and only that one.
    let big = format!(r#"{{"type":"ping","nonce":"{}"}}"#, "x".repeat(70 * 1024));
    // The server may close before the whole frame is written, so the write
    // itself can fail; what matters is the close and that nothing else stops.
    let _ = sa.send_text(&big).await;
    let code = expect_close(&mut sa).await;
    assert!(
        matches!(code, Some(close::TOO_BIG) | None),
        "closed with {code:?}"
    );
    let (mut sa, _) = online(&alice).await;
    send_text(&mut alice, &mut sa, &chat, "back again").await;
    let m = expect_message(&mut sb).await;
    assert_eq!(bob.open(&m).await.unwrap(), "back again");
    server.stop().await;
}

/// Holds the store until the returned sender is dropped or sent to.
async fn hold_the_store(app: &securechat::server::App) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, holding) = tokio::sync::oneshot::channel();
    let db = app.db.clone();
    tokio::spawn(async move {
        db.call(move |_| {
            let _ = held.send(());
            let _ = released.recv();
            Ok(())
        })
        .await
    });
    holding.await.unwrap();
    release
}

/// Waits until the writer's queue has `room` free places.
async fn writer_room(app: &securechat::server::App, room: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.writer.capacity() != room {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer's queue never had {room} free"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A host whose writer's queue holds one message, so that the test fills
/// it on cue by holding the store; alice and bob online in a direct chat,
/// and eight messages sealed by alice.
struct Busy {
    server: TestServer,
    app: securechat::server::App,
    sa: securechat::client::Connection,
    sb: securechat::client::Connection,
    chat: String,
    sealed: Vec<(String, securechat::protocol::Envelope)>,
}

impl Busy {
    async fn start(busy_wait: std::time::Duration) -> Self {
        let mut server = TestServer::start_with(|l| {
            l.writer_queue = 1;
            l.busy_wait = busy_wait;
        })
        .await;
        let app = server.running.as_ref().unwrap().app.clone();
        let mut alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let chat = alice.open_direct("bob").await.unwrap();
        let (sa, _) = online(&alice).await;
        let (sb, _) = online(&bob).await;
        let mut sealed = Vec::new();
        for i in 0..8 {
            let id = uuid::Uuid::new_v4().to_string();
            let envelope = alice.seal_text(&chat, &id, &format!("m{i}")).await.unwrap();
            sealed.push((id, envelope));
        }
        Self {
            server,
            app,
            sa,
            sb,
            chat: chat.id,
            sealed,
        }
    }

    /// Alice sends message `i`; returns its id.
    async fn send(&mut self, i: usize) -> String {
        let (id, envelope) = self.sealed[i].clone();
        send_envelope(&mut self.sa, id.clone(), &self.chat, envelope).await;
        id
    }

    /// Alice's next ack (id, seq) or refusal (id, code, retry_after_ms).
    async fn answer(&mut self) -> Result<(String, u64), (Option<String>, String, Option<u64>)> {
        expect(&mut self.sa, "an ack or a refusal", |f| match f {
            ServerFrame::Ack { id, seq, .. } => Some(Ok((id.clone(), *seq))),
            ServerFrame::Error {
                id,
                code,
                retry_after_ms,
                ..
            } => Some(Err((id.clone(), code.clone(), *retry_after_ms))),
            _ => None,
        })
        .await
    }

    /// Message `i` is acked as `seq`, and bob receives it.
    async fn stored(&mut self, i: usize, seq: u64) {
        assert_eq!(self.answer().await, Ok((self.sealed[i].0.clone(), seq)));
        let got = expect_message(&mut self.sb).await;
        assert_eq!((got.id, got.seq), (self.sealed[i].0.clone(), seq));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_writer_queue_holds_the_sender_back_until_there_is_room() {
    // Room may take an hour: nothing is refused as busy in this test.
    let mut t = Busy::start(std::time::Duration::from_secs(3600)).await;
    // The writer takes m0 and waits for the store, the queue holds m1;
    // m2 finds no room, so alice's socket stops reading: m3 waits unread.
    let release = hold_the_store(&t.app).await;
    for i in 0..4 {
        t.send(i).await;
    }
    // Nothing is answered while the store is held...
    let quiet = tokio::time::timeout(std::time::Duration::from_secs(1), t.answer()).await;
    assert!(
        quiet.is_err(),
        "answered while the store was held: {quiet:?}"
    );
    // ...and once it is free, every message is stored, in order.
    release.send(()).unwrap();
    for (i, seq) in (0..4).zip(1..) {
        t.stored(i, seq).await;
    }
    super::harness::expect_nothing_queued(&mut t.sb).await;
    t.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_without_room_in_time_is_refused_as_busy() {
    // Long enough for the writer to take m0 off the queue before m1 would
    // be refused in its turn.
    let wait = std::time::Duration::from_secs(1);
    let mut t = Busy::start(wait).await;
    let release = hold_the_store(&t.app).await;
    for i in 0..2 {
        t.send(i).await;
    }
    // The writer has m0 and the queue m1, so m2 finds no room.
    writer_room(&t.app, 0).await;
    let started = tokio::time::Instant::now();
    let id = t.send(2).await;
    // Refused once the wait is over, with the time to wait before sending
    // it again.
    let refused = t.answer().await;
    assert!(started.elapsed() >= wait);
    assert_eq!(refused, Err((Some(id), "rate_limited".into(), Some(250))));
    release.send(()).unwrap();
    t.stored(0, 1).await;
    t.stored(1, 2).await;
    // Sent again, the refused message is stored after them.
    t.send(2).await;
    t.stored(2, 3).await;
    super::harness::expect_nothing_queued(&mut t.sb).await;
    t.server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_past_the_bucket_is_refused_and_not_delivered() {
    // No refill to speak of, so exactly the burst gets through.
    let mut server = TestServer::start_with(|l| {
        l.frames_per_sec = 0.001;
        l.frame_burst = 20.0;
        l.abuse_close_after = 10;
    })
    .await;
    let mut alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let chat = alice.open_direct("bob").await.unwrap();
    let (mut sa, _) = online(&alice).await;
    let (mut sb, _) = online(&bob).await;

    let mut ids = Vec::new();
    for i in 0..25 {
        let id = uuid::Uuid::new_v4().to_string();
        let envelope = alice
            .seal_text(&chat, &id, &format!("burst {i}"))
            .await
            .unwrap();
        ids.push(id.clone());
        send_envelope(&mut sa, id, &chat.id, envelope).await;
    }
    let (mut acked, mut limited) = (0, 0);
    while acked + limited < 25 {
        match expect(&mut sa, "ack or error", |f| match f {
            ServerFrame::Ack { .. } => Some(Ok(())),
            ServerFrame::Error {
                code,
                retry_after_ms,
                id,
                ..
            } => Some(Err((code.clone(), *retry_after_ms, id.clone()))),
            _ => None,
        })
        .await
        {
            Ok(()) => acked += 1,
            Err((code, retry, id)) => {
                assert_eq!(code, "rate_limited");
                assert!(retry.unwrap() > 0);
                // The refusal names the message it refused.
                assert!(ids[20..].contains(&id.unwrap()));
                limited += 1;
            }
        }
    }
    assert_eq!((acked, limited), (20, 5));
    for seq in 1..=20 {
        assert_eq!(expect_message(&mut sb).await.seq, seq);
    }
    super::harness::expect_nothing_queued(&mut sb).await;

    // Keeping on flooding closes the socket with a policy violation.
    for _ in 0..10 {
        sa.send(&ClientFrame::Typing {
            chat: chat.id.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(expect_close(&mut sa).await, Some(close::POLICY));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_peer_is_closed_and_an_answering_one_is_kept() {
    let mut server = TestServer::start_with(|l| {
        l.ping_interval = std::time::Duration::from_millis(100);
        l.idle_timeout = std::time::Duration::from_millis(400);
    })
    .await;
    let alice = server.user("alice").await;
    let (mut silent, _) = online(&alice).await;
    let (mut lively, _) = online(&alice).await;
    // The lively socket keeps reading (and so answers pings) until the
    // server has dropped the silent one, which never answers.
    let hub = server.running.as_ref().unwrap().app.hub.clone();
    let deadline = tokio::time::Instant::now() + super::harness::WAIT;
    while hub.socket_count() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent socket was never closed"
        );
        let tick = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        if let Ok(Ok(securechat::client::Event::Closed(code))) =
            tokio::time::timeout_at(tick, lively.next_event()).await
        {
            panic!("the answering socket was closed ({code:?})");
        }
    }
    // Its close frame may be lost to the client, which cannot answer the
    // pings it never read before the server hangs up.
    let code = expect_close(&mut silent).await;
    assert!(matches!(code, Some(close::IDLE) | None), "{code:?}");
    super::harness::expect_nothing_queued(&mut lively).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_welcome_larger_than_any_client_frame_is_still_written() {
    // Client frames of at most 4 KiB; the welcome of a user in 100 groups
    // with long names is several times that, as server frames may be.
    let mut server = TestServer::start_with(|l| {
        l.max_frame_bytes = 4096;
        l.http_per_sec = 1000.0;
        l.http_burst = 1000.0;
    })
    .await;
    let mut alice = server.user("alice").await;
    let _bob = server.user("bob").await;
    for i in 0..100 {
        let name = format!("{i:02} {}", "a long group name ".repeat(3));
        alice.create_group(name.trim(), &["bob"]).await.unwrap();
    }
    let (_socket, chats) = online(&alice).await;
    assert_eq!(chats.len(), 100);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_first_hello_is_free_of_the_rate_limit_even_when_malformed() {
    let mut server = TestServer::start_with(|l| {
        l.frames_per_sec = 0.001;
        l.frame_burst = 5.0;
        l.abuse_close_after = 10;
    })
    .await;
    let alice = server.user("alice").await;
    let mut socket = alice.connect().await.unwrap();
    // A malformed hello again and again: one free, five taken, ten refused.
    for _ in 0..30 {
        if socket
            .send_text(r#"{"type":"hello","since":[]}"#)
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(expect_close(&mut socket).await, Some(close::POLICY));
    server.stop().await;
}
