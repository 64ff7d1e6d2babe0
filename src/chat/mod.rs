//! The hub: for each online user, the live sockets and their bounded send
//! queues; presence with a grace period; fan-out; per-user and per-address
//! limits. It holds no message content, only already-serialised frames.

mod ratelimit;

pub use ratelimit::RateLimiter;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::protocol::{SerializedEnvelope, ServerFrame};

/// What adds lines to a chat session's logs: delivering a frame to the
/// receiving session, or a message sent, to the sender's (see
/// [`crate::chatlog::Logger::events`]).
#[derive(Debug, Clone)]
pub enum LogEvent {
    /// A line for the log of `chat`.
    Chat { chat: Arc<str>, line: Arc<str> },
    /// A user's presence changed.
    Presence { user: Arc<str>, online: bool },
}

/// A frame serialised once, for any number of sockets.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The JSON text of the frame.
    pub text: Utf8Bytes,
    /// For `message` frames: the chat and sequence number, so a socket that
    /// is replaying history can skip what it already sent.
    pub chat_seq: Option<(Arc<str>, u64)>,
    /// The chat-log event of delivering it (never message content).
    pub log: Option<LogEvent>,
}

/// Serialises a frame once, for any number of sockets, with the log event
/// its delivery implies.
pub fn encode(frame: &ServerFrame) -> Outbound {
    let (chat_seq, log) = match frame {
        ServerFrame::Message { message } => {
            let (chat_seq, log) = delivered(
                &message.id,
                &message.chat,
                &message.sender,
                message.seq,
                message.envelope.ct.len(),
            );
            (Some(chat_seq), Some(log))
        }
        ServerFrame::Presence { user, online } => (
            None,
            Some(LogEvent::Presence {
                user: Arc::from(user.as_str()),
                online: *online,
            }),
        ),
        ServerFrame::ChatRemoved { chat } => (
            None,
            Some(LogEvent::Chat {
                chat: Arc::from(chat.as_str()),
                line: Arc::from("member-left you were removed"),
            }),
        ),
        _ => (None, None),
    };
    Outbound {
        // Serialising these plain structs cannot fail.
        text: Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default()),
        chat_seq,
        log,
    }
}

/// A `message` frame of a message just stored, around its envelope's JSON
/// text (serialised once, when it was accepted). Its text is exactly what
/// [`encode`] makes of the same [`ServerFrame::Message`].
#[derive(Serialize)]
#[serde(tag = "type", rename = "message")]
struct StoredFrame<'a> {
    message: StoredRecord<'a>,
}

/// [`crate::protocol::MessageRecord`], field for field, with the envelope
/// as JSON text.
#[derive(Serialize)]
struct StoredRecord<'a> {
    id: &'a str,
    chat: &'a str,
    sender: &'a str,
    seq: u64,
    ts: i64,
    envelope: &'a RawValue,
}

/// The `message` frames of a message just stored as `seq` at `ts`, one
/// for each reader: the envelope with only the reader's own wrapped key
/// ([`SerializedEnvelope::write_for`]). Each frame's text is exactly what
/// [`encode`] makes of the same [`ServerFrame::Message`] with the
/// envelope's `keys` cut down to that entry.
pub struct StoredFrames<'a> {
    /// The frame's text up to its envelope, which is its last field.
    head: String,
    envelope: &'a SerializedEnvelope,
    chat_seq: (Arc<str>, u64),
    log: LogEvent,
}

impl<'a> StoredFrames<'a> {
    /// What the frames share, written once.
    pub fn new(
        id: &str,
        chat: &str,
        sender: &str,
        seq: u64,
        ts: i64,
        envelope: &'a SerializedEnvelope,
    ) -> Self {
        let frame = StoredFrame {
            message: StoredRecord {
                id,
                chat,
                sender,
                seq,
                ts,
                envelope: RawValue::NULL,
            },
        };
        // Serialising these plain structs cannot fail; the text ends with
        // the envelope's `null` and the two objects' closing braces.
        let mut head = serde_json::to_string(&frame).unwrap_or_default();
        debug_assert!(head.ends_with(ENDS_WITH), "{head}");
        head.truncate(head.len().saturating_sub(ENDS_WITH.len()));
        let (chat_seq, log) = delivered(id, chat, sender, seq, envelope.ct_len());
        Self {
            head,
            envelope,
            chat_seq,
            log,
        }
    }

    /// The frame `reader` (a username) receives.
    pub fn for_reader(&self, reader: &str) -> Outbound {
        let mut text =
            String::with_capacity(self.head.len() + self.envelope.len_for(reader) + CLOSING.len());
        text.push_str(&self.head);
        self.envelope.write_for(reader, &mut text);
        text.push_str(CLOSING);
        Outbound {
            text: Utf8Bytes::from(text),
            chat_seq: Some(self.chat_seq.clone()),
            log: Some(self.log.clone()),
        }
    }
}

/// How a [`StoredFrame`] with a `null` envelope ends.
const ENDS_WITH: &str = "null}}";
/// What follows the envelope in a [`StoredFrame`].
const CLOSING: &str = "}}";

/// A `message` frame's chat and sequence number, and the log event of
/// delivering it.
fn delivered(
    id: &str,
    chat: &str,
    sender: &str,
    seq: u64,
    ct_len: usize,
) -> ((Arc<str>, u64), LogEvent) {
    let chat: Arc<str> = Arc::from(chat);
    let line = format!("message-received id={id} seq={seq} sender={sender} bytes={ct_len}");
    (
        (chat.clone(), seq),
        LogEvent::Chat {
            chat,
            line: Arc::from(line),
        },
    )
}

/// Serialises a frame whose delivery writes `line` in the log of `chat`.
pub fn encode_logged(frame: &ServerFrame, chat: &str, line: &str) -> Outbound {
    Outbound {
        log: Some(LogEvent::Chat {
            chat: Arc::from(chat),
            line: Arc::from(line),
        }),
        ..encode(frame)
    }
}

/// How a socket is told to close, from outside its task.
#[derive(Debug, Default)]
pub struct CloseSignal {
    /// Fired when the socket must close.
    pub token: CancellationToken,
    /// The close code to send (first one wins).
    code: AtomicU16,
}

impl CloseSignal {
    /// Asks the socket to close with `code`.
    pub fn close(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }
    /// The code asked for, if any.
    pub fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::SeqCst) {
            0 => None,
            c => Some(c),
        }
    }
}

/// One live socket as the hub sees it.
struct Conn {
    /// Bounded queue to the socket's task; full means the reader is too slow.
    /// It holds `Arc`s: an idle socket's queue then takes 32 pointers, not
    /// 32 frames' worth of handles, and one frame for many sockets is
    /// shared.
    tx: mpsc::Sender<Arc<Outbound>>,
    /// The session the socket was opened with, so logout can close it.
    session: [u8; 32],
    /// Closes the socket.
    close: Arc<CloseSignal>,
}

/// The sockets of one user.
struct UserConns {
    username: String,
    conns: HashMap<u64, Conn>,
    /// Whether others have been told this user is online.
    online: bool,
    /// Bumped on every change, so a pending "offline" notice can tell whether
    /// the user came back meanwhile.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    users: HashMap<i64, UserConns>,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a socket was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The user has too many sockets open.
    TooManyForUser,
    /// The address has too many sockets open.
    TooManyForAddress,
}

/// A socket admitted to the hub.
pub struct Registration {
    /// This socket's id within the hub.
    pub id: u64,
    /// Frames for this socket.
    pub rx: mpsc::Receiver<Arc<Outbound>>,
    /// Fired when this socket must close.
    pub close: Arc<CloseSignal>,
}

/// The hub. Cheap to share behind an `Arc`; a std `Mutex` guards it because
/// it is never held across an `.await` and every critical section is a few
/// map operations.
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    queue: usize,
    max_per_user: usize,
    max_per_ip: usize,
    grace: Duration,
}

impl Hub {
    /// A hub with per-socket queues of `queue` frames and the given limits.
    pub fn new(queue: usize, max_per_user: usize, max_per_ip: usize, grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(1),
            queue,
            max_per_user,
            max_per_ip,
            grace,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a socket. Returns the registration and whether the user has
    /// just come online (the caller then announces it).
    pub fn register(
        &self,
        user_id: i64,
        username: &str,
        ip: IpAddr,
        session: [u8; 32],
    ) -> Result<(Registration, bool), Refused> {
        let mut inner = self.lock();
        let ip_count = inner.per_ip.get(&ip).copied().unwrap_or(0);
        if ip_count >= self.max_per_ip {
            return Err(Refused::TooManyForAddress);
        }
        let entry = inner.users.entry(user_id).or_insert_with(|| UserConns {
            username: username.to_owned(),
            conns: HashMap::new(),
            online: false,
            generation: 0,
        });
        if entry.conns.len() >= self.max_per_user {
            return Err(Refused::TooManyForUser);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue);
        let close = Arc::new(CloseSignal::default());
        entry.conns.insert(
            id,
            Conn {
                tx,
                session,
                close: close.clone(),
            },
        );
        entry.generation += 1;
        let came_online = !entry.online;
        entry.online = true;
        *inner.per_ip.entry(ip).or_insert(0) += 1;
        Ok((Registration { id, rx, close }, came_online))
    }

    /// Removes a socket. If it was the user's last, the user is announced as
    /// offline after the grace period unless a socket comes back meanwhile.
    pub fn unregister(self: &Arc<Self>, user_id: i64, conn_id: u64, ip: IpAddr) {
        let pending = {
            let mut inner = self.lock();
            if let Some(n) = inner.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.per_ip.remove(&ip);
                }
            }
            match inner.users.get_mut(&user_id) {
                Some(user) => {
                    user.conns.remove(&conn_id);
                    user.generation += 1;
                    user.conns.is_empty().then_some(user.generation)
                }
                None => None,
            }
        };
        if let Some(generation) = pending {
            let hub = self.clone();
            let grace = self.grace;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                hub.finish_offline(user_id, generation);
            });
        }
    }

    fn finish_offline(&self, user_id: i64, generation: u64) {
        let username = {
            let mut inner = self.lock();
            match inner.users.get(&user_id) {
                Some(u) if u.generation == generation && u.conns.is_empty() => {
                    inner.users.remove(&user_id).map(|u| u.username)
                }
                _ => None,
            }
        };
        if let Some(user) = username {
            self.broadcast(&encode(&ServerFrame::Presence {
                user,
                online: false,
            }));
        }
    }

    /// Queues `frame` for every socket of each user in `user_ids`, except the
    /// socket `except`. A socket whose queue is full is closed (1013): it
    /// catches up with `hello` when it reconnects.
    pub fn send_to_users(
        &self,
        user_ids: impl IntoIterator<Item = i64>,
        frame: &Outbound,
        except: Option<u64>,
    ) {
        let frame = Arc::new(frame.clone());
        let inner = self.lock();
        for user_id in user_ids {
            if let Some(user) = inner.users.get(&user_id) {
                for (id, conn) in &user.conns {
                    if Some(*id) != except {
                        Self::push(conn, &frame);
                    }
                }
            }
        }
    }

    /// Queues, for every live socket of `members` (user id and username)
    /// but `except`, the frame `make` writes for that member: made once per
    /// member, and only for members with such a socket. The frames are made
    /// outside the hub's lock, which is held only to find the sockets and
    /// to queue. A socket that opens in between gets its user's frame if
    /// the user already had one, and otherwise the message in the replay
    /// after its `hello` (the message is stored before it is sent).
    pub fn send_to_members<'m>(
        &self,
        members: impl IntoIterator<Item = (i64, &'m str)>,
        except: Option<u64>,
        make: impl Fn(&str) -> Outbound,
    ) {
        let to = |conn: &u64| Some(*conn) != except;
        let live: Vec<(i64, &str)> = {
            let inner = self.lock();
            members
                .into_iter()
                .filter(|(user_id, _)| {
                    inner
                        .users
                        .get(user_id)
                        .is_some_and(|user| user.conns.keys().any(to))
                })
                .collect()
        };
        let frames: Vec<(i64, Arc<Outbound>)> = live
            .into_iter()
            .map(|(user_id, username)| (user_id, Arc::new(make(username))))
            .collect();
        let inner = self.lock();
        for (user_id, frame) in &frames {
            if let Some(user) = inner.users.get(user_id) {
                for (_, conn) in user.conns.iter().filter(|(id, _)| to(id)) {
                    Self::push(conn, frame);
                }
            }
        }
    }

    /// Queues `frame` for one socket (`conn_id` of `user_id`), behind what
    /// is already queued for it.
    pub fn send_to_conn(&self, user_id: i64, conn_id: u64, frame: &Outbound) {
        let inner = self.lock();
        if let Some(conn) = inner
            .users
            .get(&user_id)
            .and_then(|u| u.conns.get(&conn_id))
        {
            Self::push(conn, &Arc::new(frame.clone()));
        }
    }

    fn push(conn: &Conn, frame: &Arc<Outbound>) {
        if conn.tx.try_send(frame.clone()).is_err() {
            conn.close.close(crate::protocol::close::TRY_AGAIN_LATER);
        }
    }

    /// Queues `frame` for every live socket.
    pub fn broadcast(&self, frame: &Outbound) {
        let frame = Arc::new(frame.clone());
        let inner = self.lock();
        for user in inner.users.values() {
            for conn in user.conns.values() {
                Self::push(conn, &frame);
            }
        }
    }

    /// The usernames currently online, sorted.
    pub fn online(&self) -> Vec<String> {
        let inner = self.lock();
        let mut names: Vec<String> = inner
            .users
            .values()
            .filter(|u| u.online)
            .map(|u| u.username.clone())
            .collect();
        names.sort();
        names
    }

    /// Closes every socket opened with one of `sessions`.
    pub fn close_sessions(&self, sessions: &[[u8; 32]], code: u16) {
        let inner = self.lock();
        for conn in inner.users.values().flat_map(|u| u.conns.values()) {
            if sessions.contains(&conn.session) {
                conn.close.close(code);
            }
        }
    }

    /// Closes every socket of a user.
    pub fn close_user(&self, user_id: i64, code: u16) {
        let inner = self.lock();
        if let Some(user) = inner.users.get(&user_id) {
            for conn in user.conns.values() {
                conn.close.close(code);
            }
        }
    }

    /// The sessions and users of every live socket.
    pub fn sessions(&self) -> Vec<(i64, [u8; 32])> {
        let inner = self.lock();
        inner
            .users
            .iter()
            .flat_map(|(id, u)| u.conns.values().map(move |c| (*id, c.session)))
            .collect()
    }

    /// The number of live sockets.
    pub fn socket_count(&self) -> usize {
        self.lock().users.values().map(|u| u.conns.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn group_envelope() -> crate::protocol::Envelope {
        crate::protocol::Envelope {
            v: 1,
            iv: vec![1; 12].into(),
            ct: vec![2; 40].into(),
            keys: [("bob", 3u8), ("alice \"a\"", 4), ("zoë", 6)]
                .into_iter()
                .map(|(name, b)| (name.to_owned(), vec![b; 512].into()))
                .collect(),
            sig: vec![5; 512].into(),
        }
    }

    #[test]
    fn a_stored_message_frame_is_its_record_with_the_reader_s_key_only() {
        use crate::protocol::MessageRecord;
        let envelope = group_envelope();
        let serialized = SerializedEnvelope::new(&envelope).unwrap();
        assert_eq!(serialized.recipients(), ["alice \"a\"", "bob", "zoë"]);
        assert!(serialized.wraps_for("bob") && !serialized.wraps_for("carol"));
        let frames = StoredFrames::new("m-1", "chat \\ 1", "bob", 7, 99, &serialized);
        // Each member, and someone the message was not sealed for (a member
        // added later reads it in the history with no key).
        for reader in ["alice \"a\"", "bob", "zoë", "carol", ""] {
            let fast = frames.for_reader(reader);
            let mut own = envelope.clone();
            own.keys.retain(|name, _| name == reader);
            assert_eq!(
                own.keys.len(),
                usize::from(reader != "carol" && !reader.is_empty())
            );
            let slow = encode(&ServerFrame::Message {
                message: MessageRecord {
                    id: "m-1".into(),
                    chat: "chat \\ 1".into(),
                    sender: "bob".into(),
                    seq: 7,
                    ts: 99,
                    envelope: own,
                },
            });
            assert_eq!(fast.text, slow.text, "{reader}");
            assert_eq!(fast.chat_seq, slow.chat_seq);
            let line = |o: &Outbound| match &o.log {
                Some(LogEvent::Chat { chat, line }) => (chat.to_string(), line.to_string()),
                other => panic!("{other:?}"),
            };
            assert_eq!(line(&fast), line(&slow));
            assert!(line(&fast).1.ends_with("bytes=40"));
            let mut written = String::new();
            serialized.write_for(reader, &mut written);
            assert_eq!(written.len(), serialized.len_for(reader));
        }
    }

    #[tokio::test]
    async fn each_member_s_sockets_get_that_member_s_frame_made_once() {
        let hub = Hub::new(4, 4, 10, Duration::from_millis(10));
        let (a1, _) = hub.register(1, "alice", IP, [1; 32]).unwrap();
        let (a2, _) = hub.register(1, "alice", IP, [1; 32]).unwrap();
        let (b, _) = hub.register(2, "bob", IP, [2; 32]).unwrap();
        let (c, _) = hub.register(3, "carol", IP, [3; 32]).unwrap();
        let made = std::sync::Mutex::new(Vec::new());
        // Bob's only socket is the sender's; dave (4) has none.
        hub.send_to_members(
            [(1, "alice"), (2, "bob"), (4, "dave")],
            Some(b.id),
            |name| {
                made.lock().unwrap().push(name.to_owned());
                encode_logged(&ServerFrame::Synced {}, "c", name)
            },
        );
        assert_eq!(*made.lock().unwrap(), ["alice"]);
        for mut rx in [a1.rx, a2.rx] {
            let got = rx.try_recv().unwrap();
            assert!(matches!(&got.log, Some(LogEvent::Chat { line, .. }) if &**line == "alice"));
        }
        for mut rx in [b.rx, c.rx] {
            assert!(rx.try_recv().is_err());
        }
    }

    #[tokio::test]
    async fn presence_waits_out_the_grace_period() {
        let hub = Hub::new(4, 2, 10, Duration::from_millis(50));
        let (watcher, _) = hub.register(9, "watcher", IP, [9; 32]).unwrap();
        let (a, first) = hub.register(1, "alice", IP, [1; 32]).unwrap();
        assert!(first);
        hub.unregister(1, a.id, IP);
        let (_a2, again) = hub.register(1, "alice", IP, [1; 32]).unwrap();
        assert!(!again, "a quick reconnect is not a new arrival");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(hub.online(), vec!["alice", "watcher"]);
        let mut rx = watcher.rx;
        assert!(rx.try_recv().is_err(), "no offline notice was sent");
    }

    #[tokio::test]
    async fn limits_and_slow_readers() {
        let hub = Hub::new(2, 1, 10, Duration::from_millis(10));
        let (r, _) = hub.register(1, "alice", IP, [1; 32]).unwrap();
        assert_eq!(
            hub.register(1, "alice", IP, [1; 32]).err(),
            Some(Refused::TooManyForUser)
        );
        let frame = encode(&ServerFrame::Synced {});
        for _ in 0..3 {
            hub.send_to_users([1], &frame, None);
        }
        assert_eq!(
            r.close.code(),
            Some(crate::protocol::close::TRY_AGAIN_LATER)
        );
        hub.close_sessions(&[[1; 32]], 4001);
        assert!(r.close.token.is_cancelled());
    }
}
