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

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::chat::{LogEvent, StoredFrames, encode};
use crate::protocol::{SerializedEnvelope, ServerFrame};
use crate::server::App;
use crate::store::{Insert, NewMessage, StoreError};

/// The most messages stored by one commit.
const MAX_BATCH: usize = 512;

/// A message on its way to the store.
pub struct Pending {
    pub chat: String,
    pub id: String,
    pub sender_id: i64,
    pub sender: Arc<str>,
    pub envelope: SerializedEnvelope,
    /// The sending socket (it gets the ack, not the message).
    pub conn_id: u64,
    /// The sender's chat-log session.
    pub log_session: Arc<str>,
}

/// What the writer keeps of a [`Pending`] while the store holds the row.
struct Sent {
    chat: String,
    id: String,
    sender_id: i64,
    sender: Arc<str>,
    conn_id: u64,
    log_session: Arc<str>,
}

impl Pending {
    /// The row to store, stamped `now`, and what the writer keeps.
    fn split(self, now: i64) -> (Sent, NewMessage) {
        let row = NewMessage {
            chat_id: self.chat.clone(),
            id: self.id.clone(),
            sender_id: self.sender_id,
            envelope: self.envelope,
            now,
        };
        let sent = Sent {
            chat: self.chat,
            id: self.id,
            sender_id: self.sender_id,
            sender: self.sender,
            conn_id: self.conn_id,
            log_session: self.log_session,
        };
        (sent, row)
    }
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

/// The refusal of message `id` that the host could not store.
pub fn store_failed(id: &str) -> ServerFrame {
    refusal(
        id,
        "store_failed",
        "The server could not store the message; send it again.".into(),
        None,
    )
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
            store_failed(&id)
        }
    }
}

/// The writer's queue.
pub type Writer = mpsc::Sender<Pending>;

/// The messages the writer's queue holds by default: four full batches.
pub const QUEUE: usize = 4 * MAX_BATCH;

/// A queue of `capacity` messages for [`run`]; bounded, so a flood waits
/// instead of growing memory.
pub fn channel(capacity: usize) -> (Writer, mpsc::Receiver<Pending>) {
    mpsc::channel(capacity.max(1))
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
        // A batch is stamped when it is stored, so messages are stored in
        // the order of their time (the retention sweep relies on it), even
        // those that waited for room in the queue. The envelopes move to
        // the store's thread and back, uncopied.
        let now = app.clock.now_ms();
        let (batch, rows): (Vec<Sent>, Vec<NewMessage>) =
            batch.into_iter().map(|p| p.split(now)).unzip();
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
                let frames = StoredFrames::new(&p.id, &p.chat, &p.sender, *seq, *ts, &row.envelope);
                let line = format!(
                    "message-sent id={} seq={seq} bytes={}",
                    p.id,
                    row.envelope.ct_len()
                );
                let event = LogEvent::Chat {
                    chat: Arc::from(p.chat.as_str()),
                    line: Arc::from(line),
                };
                app.logger
                    .events(&p.log_session, &p.sender, vec![event], *ts);
                // The sender's other sockets get the message; its socket the
                // ack. Each member gets its own wrapped key only.
                app.hub.send_to_members(
                    members.iter().map(|m| (m.user_id, m.username.as_str())),
                    Some(p.conn_id),
                    |reader| frames.for_reader(reader),
                );
            }
            let frame = answer(p.id, p.chat, result);
            app.hub
                .send_to_conn(p.sender_id, p.conn_id, &encode(&frame));
        }
    }
}
