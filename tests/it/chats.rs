use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use securechat::client::Client;
use securechat::protocol::{ChatInfo, ClientFrame, MessageRecord, ServerFrame};

use super::harness::{
    TestServer, expect, expect_error, expect_message, expect_nothing_queued, online, send_envelope,
    send_text, status, trio,
};

#[tokio::test(flavor = "multi_thread")]
async fn three_users_exchange_messages_pairwise_and_outsiders_see_nothing() {
    let mut server = TestServer::start().await;
    let ([mut u1, mut u2, mut u3], [mut s1, mut s2, mut s3]) = trio(&mut server).await;

    let c12 = u1.open_direct("user2").await.unwrap();
    let c23 = u2.open_direct("user3").await.unwrap();
    let c31 = u3.open_direct("user1").await.unwrap();
    assert_eq!(
        u2.open_direct("user1").await.unwrap().id,
        c12.id,
        "one direct chat per pair"
    );

    send_text(&mut u1, &mut s1, &c12, "hello two, from one **bold**").await;
    let m = expect_message(&mut s2).await;
    assert_eq!(
        (m.sender.as_str(), m.seq, m.chat.as_str()),
        ("user1", 1, c12.id.as_str())
    );
    assert_eq!(u2.open(&m).await.unwrap(), "hello two, from one **bold**");

    send_text(&mut u2, &mut s2, &c23, "hi three 👋").await;
    let m = expect_message(&mut s3).await;
    assert_eq!(u3.open(&m).await.unwrap(), "hi three 👋");

    send_text(&mut u3, &mut s3, &c31, "and back to one").await;
    let m = expect_message(&mut s1).await;
    assert_eq!(u1.open(&m).await.unwrap(), "and back to one");

    // The server stored ciphertext only.
    let db = std::fs::read(server.dir.path().join("securechat.db")).unwrap_or_default();
    let wal = std::fs::read(server.dir.path().join("securechat.db-wal")).unwrap_or_default();
    for hay in [&db, &wal] {
        assert!(
            !hay.windows(9).any(|w| w == b"hi three "),
            "plaintext on disk"
        );
    }

    // user3 is not in c12: no history, no chat, no sending, no typing.
    assert_eq!(
        status(&u3, Method::GET, &format!("/api/chats/{}/messages", c12.id)).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status(&u3, Method::GET, &format!("/api/chats/{}", c12.id)).await,
        StatusCode::NOT_FOUND
    );
    assert!(u3.chats().await.unwrap().iter().all(|c| c.id != c12.id));
    let members = vec!["user1".to_owned(), "user2".to_owned(), "user3".to_owned()];
    let id = uuid::Uuid::new_v4().to_string();
    let envelope = u3
        .seal_for(&c12.id, &members, &id, "let me in")
        .await
        .unwrap();
    send_envelope(&mut s3, id, &c12.id, envelope).await;
    assert_eq!(expect_error(&mut s3).await.0, "not_member");
    s3.send(&ClientFrame::Typing {
        chat: c12.id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(expect_error(&mut s3).await.0, "not_member");

    // Members page history; the page holds the envelope, which opens.
    let page = u2.history(&c12.id, "limit=10").await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(
        u2.open(&page.messages[0]).await.unwrap(),
        "hello two, from one **bold**"
    );
    expect_nothing_queued(&mut s1).await;
    expect_nothing_queued(&mut s2).await;
    server.stop().await;
}

/// Chat `id` as `client`'s chat list has it now.
async fn chat_as_seen_by(client: &mut Client, id: &str) -> ChatInfo {
    client
        .chats()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn group_members_all_decrypt_and_a_removed_member_gets_nothing_more() {
    let mut server = TestServer::start().await;
    let ([mut u1, mut u2, mut u3], [mut s1, mut s2, mut s3]) = trio(&mut server).await;

    let group = u1.create_group("Team", &["user2", "user3"]).await.unwrap();
    assert_eq!(group.members.len(), 3);
    for s in [&mut s2, &mut s3] {
        expect(s, "the new group", |f| match f {
            ServerFrame::Chat { chat } if chat.id == group.id => Some(()),
            _ => None,
        })
        .await;
    }
    // The sender's second socket gets the message too.
    let mut s1b = u1.connect().await.unwrap();
    s1b.hello(BTreeMap::new()).await.unwrap();
    send_text(&mut u1, &mut s1, &group, "to everyone").await;
    // Each reader gets its own wrapped key only: live, in the history, and
    // replayed after `hello`.
    let own = |m: &MessageRecord, me: &str| {
        assert_eq!(m.envelope.keys.keys().collect::<Vec<_>>(), [me], "{m:?}");
    };
    for (client, socket, me) in [
        (&mut u1, &mut s1b, "user1"),
        (&mut u2, &mut s2, "user2"),
        (&mut u3, &mut s3, "user3"),
    ] {
        let m = expect_message(socket).await;
        own(&m, me);
        assert_eq!(client.open(&m).await.unwrap(), "to everyone");
        let page = client.history(&group.id, "after=0").await.unwrap();
        assert_eq!(page.messages.len(), 1);
        own(&page.messages[0], me);
        assert_eq!(client.open(&page.messages[0]).await.unwrap(), "to everyone");
        let mut again = client.connect().await.unwrap();
        let (_, replayed) = again
            .hello(BTreeMap::from([(group.id.clone(), 0)]))
            .await
            .unwrap();
        assert_eq!(replayed.len(), 1);
        own(&replayed[0], me);
        again.close().await;
    }
    s1b.close().await;
    send_text(&mut u3, &mut s3, &group, "three says hi").await;
    for (client, socket) in [(&mut u1, &mut s1), (&mut u2, &mut s2)] {
        let m = expect_message(socket).await;
        assert_eq!(client.open(&m).await.unwrap(), "three says hi");
    }

    // Only the owner removes others.
    assert_eq!(
        status(
            &u2,
            Method::DELETE,
            &format!("/api/chats/{}/members/user3", group.id)
        )
        .await,
        StatusCode::FORBIDDEN
    );
    u1.remove_member(&group.id, "user3").await.unwrap();
    expect(&mut s3, "removal notice", |f| match f {
        ServerFrame::ChatRemoved { chat } if *chat == group.id => Some(()),
        _ => None,
    })
    .await;

    // A send still keyed for the old members is refused with the new list.
    let id = uuid::Uuid::new_v4().to_string();
    let stale = u1.seal_text(&group, &id, "stale").await.unwrap();
    send_envelope(&mut s1, id, &group.id, stale).await;
    let (code, _, members) = expect_error(&mut s1).await;
    assert_eq!(code, "members_mismatch");
    assert_eq!(
        members.unwrap(),
        vec!["user1".to_owned(), "user2".to_owned()]
    );

    let group = chat_as_seen_by(&mut u1, &group.id).await;
    send_text(&mut u1, &mut s1, &group, "after removal").await;
    let m = expect_message(&mut s2).await;
    assert_eq!(u2.open(&m).await.unwrap(), "after removal");
    expect_nothing_queued(&mut s3).await;
    assert_eq!(
        status(
            &u3,
            Method::GET,
            &format!("/api/chats/{}/messages", group.id)
        )
        .await,
        StatusCode::NOT_FOUND,
        "removed members lose history access"
    );

    // Added again, user3 finds nothing unread: the three messages so far
    // were not sealed for them.
    let again = u1.add_member(&group.id, "user3").await.unwrap();
    assert_eq!(again.last_seq, 3);
    let seen = chat_as_seen_by(&mut u3, &group.id).await;
    assert_eq!((seen.last_seq, seen.read_seq), (3, 3));
    u1.remove_member(&group.id, "user3").await.unwrap();

    // Leaving: user2 leaves; user1 remains owner.
    u2.remove_member(&group.id, "user2").await.unwrap();
    let left = chat_as_seen_by(&mut u1, &group.id).await;
    assert_eq!(left.members.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_typing_and_read_reach_the_members() {
    let mut server = TestServer::start().await;
    let mut u1 = server.user("user1").await;
    let u2 = server.user("user2").await;
    let (mut s1, _) = online(&u1).await;
    let (mut s2, _) = online(&u2).await;
    expect(&mut s1, "user2 online", |f| match f {
        ServerFrame::Presence { user, online: true } if user == "user2" => Some(()),
        _ => None,
    })
    .await;
    let chat = u1.open_direct("user2").await.unwrap();
    s2.send(&ClientFrame::Typing {
        chat: chat.id.clone(),
    })
    .await
    .unwrap();
    expect(&mut s1, "typing", |f| match f {
        ServerFrame::Typing { user, .. } if user == "user2" => Some(()),
        _ => None,
    })
    .await;
    let (_, seq) = send_text(&mut u1, &mut s1, &chat, "read me").await;
    expect_message(&mut s2).await;
    s2.send(&ClientFrame::Read {
        chat: chat.id.clone(),
        seq,
    })
    .await
    .unwrap();
    expect(&mut s1, "read mark", |f| match f {
        ServerFrame::Read { user, seq: s, .. } if user == "user2" && *s == seq => Some(()),
        _ => None,
    })
    .await;
    s2.close().await;
    expect(
        &mut s1,
        "user2 offline after the grace period",
        |f| match f {
            ServerFrame::Presence {
                user,
                online: false,
            } if user == "user2" => Some(()),
            _ => None,
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_of_more_names_than_it_holds_is_refused_before_any_is_looked_up() {
    let mut server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let _bob = server.user("bob").await;
    // 60 distinct names, none of them an account: too many, not "not found".
    let names: Vec<String> = (0..60).map(|i| format!("nobody{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    super::harness::assert_refused(alice.create_group("Crowd", &refs).await, "too_many_members");
    // Repeats and the caller's own name do not count twice.
    let mut repeated = vec!["bob"; 80];
    repeated.extend(["Bob", "alice", "ALICE"]);
    let group = alice.create_group("Pair", &repeated).await.unwrap();
    assert_eq!(group.members.len(), 2);
    // A name that is not an account, among few: "not found", as before.
    super::harness::assert_refused(
        alice.create_group("Trio", &["bob", "nobody"]).await,
        "not_found",
    );
    server.stop().await;
}
