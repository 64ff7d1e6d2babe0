use std::collections::BTreeMap;

use securechat::client::{Client, Connection};
use securechat::protocol::{ClientFrame, ServerFrame, close};

use super::harness::{TestServer, expect, expect_close, expect_message, online, send_text};

/// Reconnects `bob` and replays `chat` from the last message in `seen`,
/// appending what arrives; returns the new socket.
async fn catch_up(bob: &mut Client, chat: &str, seen: &mut Vec<(u64, String)>) -> Connection {
    let mut socket = bob.connect().await.unwrap();
    let last = seen.last().map_or(0, |m| m.0);
    let (_, replayed) = socket
        .hello(BTreeMap::from([(chat.to_owned(), last)]))
        .await
        .unwrap();
    for m in replayed {
        seen.push((m.seq, bob.open(&m).await.unwrap()));
    }
    socket
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_sockets_and_a_restart_lose_nothing_and_repeat_nothing() {
    let mut server = TestServer::start_with(|l| l.frame_burst = 100.0).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let chat = alice.open_direct("bob").await.unwrap();
    let (mut sa, _) = online(&alice).await;
    let (mut sb, _) = online(&bob).await;
    let mut seen: Vec<(u64, String)> = Vec::new();

    // Ten messages; bob's socket drops after reading five.
    for i in 0..10 {
        send_text(&mut alice, &mut sa, &chat, &format!("m{i}")).await;
    }
    for _ in 0..5 {
        let m = expect_message(&mut sb).await;
        seen.push((m.seq, bob.open(&m).await.unwrap()));
    }
    drop(sb);
    for i in 10..15 {
        send_text(&mut alice, &mut sa, &chat, &format!("m{i}")).await;
    }
    let mut sb = catch_up(&mut bob, &chat.id, &mut seen).await;

    // Alice sends one that is stored, but she loses the ack to a restart; and
    // a resend with the same id after the restart is stored once.
    let id = uuid::Uuid::new_v4().to_string();
    let envelope = alice.seal_text(&chat, &id, "m15").await.unwrap();
    let frame = ClientFrame::Send {
        id: id.clone(),
        chat: chat.id.clone(),
        envelope,
    };
    sa.send(&frame).await.unwrap();
    expect(&mut sa, "the first ack", |f| match f {
        ServerFrame::Ack {
            id: a,
            duplicate: false,
            ..
        } if *a == id => Some(()),
        _ => None,
    })
    .await;
    server.restart().await;
    assert_eq!(expect_close(&mut sa).await, Some(close::GOING_AWAY));
    assert_eq!(expect_close(&mut sb).await, Some(close::GOING_AWAY));

    let (mut sa, _) = online(&alice).await;
    sa.send(&frame).await.unwrap();
    let seq = expect(&mut sa, "the duplicate ack", |f| match f {
        ServerFrame::Ack {
            id: a,
            duplicate: true,
            seq,
            ..
        } if *a == id => Some(*seq),
        _ => None,
    })
    .await;
    assert_eq!(seq, 16);
    for i in 16..20 {
        send_text(&mut alice, &mut sa, &chat, &format!("m{i}")).await;
    }
    let mut sb = catch_up(&mut bob, &chat.id, &mut seen).await;
    super::harness::expect_nothing_queued(&mut sb).await;

    let want: Vec<(u64, String)> = (0..20).map(|i| (i + 1, format!("m{i}"))).collect();
    assert_eq!(seen, want, "every message exactly once, in order");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_messages_during_a_replay_are_not_doubled() {
    let mut server = TestServer::start_with(|l| l.frame_burst = 300.0).await;
    let mut alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let chat = alice.open_direct("bob").await.unwrap();
    let (mut sa, _) = online(&alice).await;
    // More than one batch of replayed frames (64 go out per flush).
    for i in 0..100 {
        send_text(&mut alice, &mut sa, &chat, &format!("m{i}")).await;
    }
    // Bob connects and, while his replay is under way, alice keeps sending.
    let mut sb = bob.connect().await.unwrap();
    sb.send(&ClientFrame::Hello {
        since: BTreeMap::from([(chat.id.clone(), 0)]),
    })
    .await
    .unwrap();
    for i in 100..110 {
        send_text(&mut alice, &mut sa, &chat, &format!("m{i}")).await;
    }
    let mut seqs = Vec::new();
    while seqs.len() < 110 {
        seqs.push(expect_message(&mut sb).await.seq);
    }
    assert_eq!(seqs, (1..=110).collect::<Vec<u64>>());
    super::harness::expect_nothing_queued(&mut sb).await;
    server.stop().await;
}
