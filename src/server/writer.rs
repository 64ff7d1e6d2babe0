//! The send path's group commit. Every `send` frame is handed to one writer
//! task, which takes all the messages waiting at that moment, stores them in
//! one transaction (one synchronous commit, so one fsync, for the batch),
//! fans each stored message out in order, and only then queues each
//! sender's ack (or refusal) on the sending socket. A message is acked only
//! once it is on disk, exactly as before; under load, one fsync now covers
//! many messages instead of one.
//!
//! One writer, and fan-out in batch order, keep what the old per-message
//! lock kept: every socket receives each chat's messages in sequence order.

use tokio::sync::mpsc;

use crate::chat::encode;
use crate::protocol::{Envelope, MessageRecord, ServerFrame};
use crate::server::App;
use crate::store::{Insert, NewMessage, StoreError};

/// The most messages stored by one commit.
const MAX_BATCH: usize = 512;

/// A message on its way to the store.
pub struct Pending {
    pub chat: String,
    pub id: String,
    pub sender_id: i64,
    pub sender: String,
    pub envelope: Envelope,
    /// The ciphertext's length, for the chat log.
    pub ct_len: usize,
    pub now: i64,
    /// The sending socket (it gets the ack, not the message).
    pub conn_id: u64,
    /// The sender's chat-log session.
    pub log_session: String,
}

/// An `error` frame refusing message `id`.
pub fn refusal(id: &str, code: &str, message: String, members: Option<Vec<String>>) -> ServerFrame {
    ServerFrame::Error {
        code: code.to_owned(),
        message,
        id: Some(id.to_owned()),
        retry_after_ms: None,
        members,
    }
}

/// What the sender hears about its message.
fn answer(id: String, chat: String, result: Result<Insert, StoreError>) -> ServerFrame {
    match result {
        Ok(Insert::Stored { seq, ts, .. }) => ServerFrame::Ack {
            id,
            chat,
            seq,
            ts,
            duplicate: false,
        },
        Ok(Insert::Duplicate { seq, ts }) => ServerFrame::Ack {
            id,
            chat,
            seq,
            ts,
            duplicate: true,
        },
        Ok(Insert::MembersMismatch { members }) => refusal(
            &id,
            "members_mismatch",
            "The wrapped keys must cover exactly the chat's current members.".into(),
            Some(members),
        ),
        Ok(Insert::NotMember) => refusal(
            &id,
            "not_member",
            "You are not a member of that chat.".into(),
            None,
        ),
        Ok(Insert::IdTaken) => refusal(
            &id,
            "duplicate_id",
            "That message id is already used by another message.".into(),
            None,
        ),
        Err(e) => {
            tracing::error!(error = %e, "storing a message failed");
            refusal(
                &id,
                "store_failed",
                "The server could not store the message; send it again.".into(),
                None,
            )
        }
    }
}

/// The writer's queue.
pub type Writer = mpsc::Sender<Pending>;

/// A queue for [`run`]; bounded, so a flood waits instead of growing memory.
pub fn channel() -> (Writer, mpsc::Receiver<Pending>) {
    mpsc::channel(4 * MAX_BATCH)
}

/// Stores and fans out batches until the server shuts down.
pub async fn run(app: App, mut queue: mpsc::Receiver<Pending>) {
    loop {
        let first = tokio::select! {
            () = app.shutdown.cancelled() => break,
            next = queue.recv() => match next {
                Some(p) => p,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let rows: Vec<NewMessage> = batch
            .iter_mut()
            .map(|p| NewMessage {
                chat_id: p.chat.clone(),
                id: p.id.clone(),
                sender_id: p.sender_id,
                // Moved, not copied; put back below for the frames.
                envelope: std::mem::take(&mut p.envelope),
                now: p.now,
            })
            .collect();
        let stored = app
            .db
            .call(move |s| {
                let results = s.insert_messages(&rows);
                Ok((rows, results))
            })
            .await;
        let (rows, results) = match stored {
            Ok((rows, Ok(results))) => (rows, results),
            Ok((_, Err(e))) | Err(e) => {
                tracing::error!(error = %e, count = batch.len(), "storing messages failed");
                for p in batch {
                    let frame = answer(
                        p.id,
                        p.chat,
                        Err(StoreError::Corrupt("the batch was not stored".into())),
                    );
                    app.hub
                        .send_to_conn(p.sender_id, p.conn_id, &encode(&frame));
                }
                continue;
            }
        };
        for ((p, row), result) in batch.into_iter().zip(rows).zip(results) {
            if let Ok(Insert::Stored { seq, ts, members }) = &result {
                let frame = encode(&ServerFrame::Message {
                    message: MessageRecord {
                        id: p.id.clone(),
                        chat: p.chat.clone(),
                        sender: p.sender.clone(),
                        seq: *seq,
                        ts: *ts,
                        envelope: row.envelope,
                    },
                });
                app.logger.chat(
                    &p.log_session,
                    &p.sender,
                    &p.chat,
                    format!("message-sent id={} seq={seq} bytes={}", p.id, p.ct_len),
                    *ts,
                );
                // The sender's other sockets get the message; its socket the ack.
                app.hub
                    .send_to_users(members.iter().map(|m| m.user_id), &frame, Some(p.conn_id));
            }
            let frame = answer(p.id, p.chat, result);
            app.hub
                .send_to_conn(p.sender_id, p.conn_id, &encode(&frame));
        }
    }
}
