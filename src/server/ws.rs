//! `/ws`: the authenticated WebSocket. One task per socket runs a `select!`
//! over the next frame from the client, the next frame queued by the hub, the
//! ping timer, the session re-check, its close signal and server shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::SinkExt;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::auth::{check_session, session_from_headers};
use crate::chat::{Outbound, Refused, encode};
use crate::client::crypto::{IV_LEN, SIGNATURE_LEN, WRAPPED_KEY_LEN};
use crate::error::ApiError;
use crate::protocol::{
    ClientFrame, EnvelopeSizes, SerializedEnvelope, ServerFrame, WireLimits, close,
};
use crate::server::api::{chat_info, message_record};
use crate::server::{App, origin_allowed};
use crate::store::UserRow;

/// A client frame as the server reads it: a `send` frame's envelope kept as
/// checked JSON text.
type Frame = ClientFrame<SerializedEnvelope>;

/// The string `name` of a loosely parsed frame, if it is an object with a
/// string there.
fn str_field(value: &serde_json::Value, name: &str) -> Option<String> {
    value.get(name)?.as_str().map(str::to_owned)
}

/// A frame's `"id"`: what a refusal by the rate limit names.
fn loose_id(text: &str) -> Option<String> {
    str_field(&serde_json::from_str(text).ok()?, "id")
}

/// `GET /ws`: upgrades only with a valid session and an allowed `Origin`.
pub async fn upgrade(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if !origin_allowed(&headers, &app.config) {
        return Err(ApiError::forbidden(
            "bad_origin",
            "This connection came from a page that is not SecureChat.",
        ));
    }
    let hash = session_from_headers(&headers).ok_or_else(ApiError::unauthorized)?;
    let session = check_session(&app, hash).await?;
    if app.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("The server is shutting down."));
    }
    let limits = &app.config.limits;
    let token = app.tasks.token();
    Ok(ws
        .read_buffer_size(limits.ws_read_buffer)
        .write_buffer_size(limits.ws_write_buffer)
        .max_write_buffer_size(MAX_SERVER_FRAME)
        .max_frame_size(limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| async move {
            let conn = Connection {
                app,
                user: SocketUser::from(session.user),
                session: hash,
                peer,
                socket,
                hello: false,
                hello_tried: false,
                replayed: HashMap::new(),
                refused_in_a_row: 0,
                conn_id: 0,
                log_session: Arc::from(crate::chatlog::opaque_id()),
            };
            conn.run().await;
            drop(token);
        }))
}

/// How long one write to a socket (a frame, or a flush) may take before the
/// socket is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most queued frames sent with one flush.
const SEND_BATCH: usize = 64;

/// What a socket keeps of its user: not the keys nor the password hash,
/// which are kilobytes that an idle socket has no use for.
struct SocketUser {
    id: i64,
    username: Arc<str>,
    is_admin: bool,
    created_at: i64,
}

impl From<UserRow> for SocketUser {
    fn from(user: UserRow) -> Self {
        Self {
            id: user.id,
            username: Arc::from(user.username),
            is_admin: user.is_admin,
            created_at: user.created_at,
        }
    }
}

/// The frames the hub queued for one socket.
type Outbox = tokio::sync::mpsc::Receiver<Arc<Outbound>>;

/// What the loop does after handling a frame.
enum Flow {
    Continue,
    Close(u16, &'static str),
    /// A message the writer's queue had no room for: the loop waits for
    /// room before it reads the socket's next frame (see
    /// [`Connection::wait_for_writer`]).
    Busy(Box<crate::server::writer::Pending>),
}

struct Connection {
    app: App,
    user: SocketUser,
    session: [u8; 32],
    peer: SocketAddr,
    socket: WebSocket,
    /// Whether `hello` has been received; live frames wait until it has.
    hello: bool,
    /// Whether a hello-typed frame came, well-formed or not: only the first
    /// is free of the rate limit.
    hello_tried: bool,
    /// The highest sequence number replayed per chat, so live frames queued
    /// during the replay are not sent twice.
    replayed: HashMap<Arc<str>, u64>,
    /// Frames refused for rate in a row; too many closes the socket.
    refused_in_a_row: u32,
    /// This socket's id in the hub.
    conn_id: u64,
    /// The opaque id of this chat session in the chat logs' names.
    log_session: Arc<str>,
}

/// The largest frame the host writes. Server frames are not bound by the
/// clients' limit (docs/PROTOCOL.md §5.8): `welcome` grows with the user's
/// chats, and a user may be added to many groups. A larger frame could not
/// be written at all; the buffer holds what is written at the moment only.
const MAX_SERVER_FRAME: usize = 16 << 20;

/// How long a client waits before resending a message the busy writer
/// refused.
const BUSY_RETRY_MS: u64 = 250;

/// The refusal of message `id` that found no room in the writer's queue
/// in time (`Limits::busy_wait`).
fn busy(id: String) -> ServerFrame {
    ServerFrame::Error {
        code: "rate_limited".into(),
        message: "The server is busy; the message is sent again shortly.".into(),
        id: Some(id),
        retry_after_ms: Some(BUSY_RETRY_MS),
        members: None,
    }
}

fn error_frame(code: &str, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error {
        code: code.to_owned(),
        message: message.into(),
        id: None,
        retry_after_ms: None,
        members: None,
    }
}

fn is_capacity_error(e: axum::Error) -> bool {
    e.into_inner()
        .downcast::<tokio_tungstenite::tungstenite::Error>()
        .is_ok_and(|e| matches!(*e, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}

impl Connection {
    async fn run(mut self) {
        let registration = match self.app.hub.register(
            self.user.id,
            &self.user.username,
            self.peer.ip(),
            self.session,
        ) {
            Ok((r, came_online)) => {
                if came_online {
                    self.app.hub.broadcast(&encode(&ServerFrame::Presence {
                        user: self.user.username.to_string(),
                        online: true,
                    }));
                }
                r
            }
            Err(refused) => {
                let reason = match refused {
                    Refused::TooManyForUser => "too many connections for this user",
                    Refused::TooManyForAddress => "too many connections from this address",
                };
                Box::pin(self.close(close::TRY_AGAIN_LATER, reason)).await;
                return;
            }
        };
        self.conn_id = registration.id;
        let mut rx = registration.rx;
        let closer = registration.close.clone();
        let limits = &self.app.config.limits;
        let idle_timeout = limits.idle_timeout;
        let mut ping =
            tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut recheck = tokio::time::interval_at(
            Instant::now() + limits.session_recheck,
            limits.session_recheck,
        );
        recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let shutdown = self.app.shutdown.clone();
        // A session ended between the upgrade's check and the registration
        // (a logout, a password change) found no socket to close: checked
        // once more now that it would.
        let ended_meanwhile = Box::pin(check_session(&self.app, self.session))
            .await
            .is_err();

        let outcome: Option<(u16, &'static str)> = if ended_meanwhile {
            Some((close::SESSION_ENDED, "session ended"))
        } else {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Some((close::GOING_AWAY, "server shutting down")),
                    _ = closer.token.cancelled() => {
                        let code = closer.code().unwrap_or(close::SESSION_ENDED);
                        let reason = match code {
                            close::TRY_AGAIN_LATER => "too far behind; reconnect and send hello",
                            _ => "session ended",
                        };
                        break Some((code, reason));
                    }
                    incoming = self.socket.recv() => {
                        last_heard = Instant::now();
                        match incoming {
                            None | Some(Ok(Message::Close(_))) => break None,
                            Some(Err(e)) => {
                                if is_capacity_error(e) {
                                    break Some((close::TOO_BIG, "frame larger than the limit"));
                                }
                                break None;
                            }
                            // Boxed: the frame handlers' state lives on the heap only
                            // while a frame is handled, not in every idle socket's task.
                            Some(Ok(message)) => {
                                let flow = match message {
                                    Message::Text(text) => Box::pin(self.handle_text(&text)).await,
                                    Message::Binary(_) => Box::pin(self.refuse_binary()).await,
                                    _ => Flow::Continue,
                                };
                                match flow {
                                    Flow::Continue => {}
                                    Flow::Close(code, reason) => break Some((code, reason)),
                                    // If the session ends or the server stops
                                    // meanwhile, the message is dropped unacked
                                    // and the next turn of the loop closes.
                                    Flow::Busy(pending) => {
                                        let ended = [&shutdown, &closer.token];
                                        let wait = self.wait_for_writer(pending, &mut rx, ended);
                                        if !Box::pin(wait).await {
                                            break None;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Some(out) = rx.recv(), if self.hello => {
                        if !Box::pin(self.send_queued(out, &mut rx)).await {
                            break None;
                        }
                    }
                    _ = ping.tick() => {
                        if last_heard.elapsed() > idle_timeout {
                            break Some((close::IDLE, "no answer to pings"));
                        }
                        if !Box::pin(self.write(Message::Ping(Default::default()))).await {
                            break None;
                        }
                    }
                    _ = recheck.tick() => {
                        if Box::pin(check_session(&self.app, self.session)).await.is_err() {
                            break Some((close::SESSION_ENDED, "session ended"));
                        }
                    }
                }
            }
        };
        let reason = outcome.map_or("disconnected", |(_, reason)| reason);
        self.app
            .logger
            .end(&self.log_session, reason, self.app.clock.now_ms());
        if let Some((code, reason)) = outcome {
            Box::pin(self.close(code, reason)).await;
        }
        self.app
            .hub
            .unregister(self.user.id, registration.id, self.peer.ip());
    }

    /// A binary frame: counted like any other frame, then refused.
    async fn refuse_binary(&mut self) -> Flow {
        if let Err(flow) = self.admit(|| None).await {
            return flow;
        }
        self.send(&error_frame(
            "bad_frame",
            "Frames are JSON text; binary frames are not accepted.",
        ))
        .await;
        Flow::Continue
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.socket.send(Message::Close(Some(frame))),
        )
        .await;
        // Give the peer a moment to answer the close, then drop the socket.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(m)) = self.socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }

    /// Writes one message; false if the socket failed or the peer has not
    /// taken it within the write timeout (a reader that stopped reading must
    /// not hold its task, its slots and its presence forever).
    async fn write(&mut self, message: Message) -> bool {
        matches!(
            tokio::time::timeout(WRITE_TIMEOUT, self.socket.send(message)).await,
            Ok(Ok(()))
        )
    }

    /// Sends a frame; a failure shows up as the socket ending.
    async fn send(&mut self, frame: &ServerFrame) {
        self.write(Message::Text(encode(frame).text)).await;
    }

    /// Sends `first` and what else is queued for this socket (up to
    /// [`SEND_BATCH`]) with one flush, but for what the replay already sent;
    /// false if the socket failed.
    async fn send_queued(&mut self, first: Arc<Outbound>, rx: &mut Outbox) -> bool {
        let mut batch = vec![first];
        while batch.len() < SEND_BATCH
            && let Ok(more) = rx.try_recv()
        {
            batch.push(more);
        }
        batch.retain(|out| {
            out.chat_seq
                .as_ref()
                .is_none_or(|(chat, seq)| self.replayed.get(chat).is_none_or(|&max| *seq > max))
        });
        batch.is_empty() || self.send_outbounds(&batch).await
    }

    /// Hands `pending` to the writer once its queue has room. Meanwhile
    /// this socket's next frames stay unread, so a sender faster than the
    /// disk is slowed down by TCP rather than refused, and the host spends
    /// its time storing instead of reading and refusing frames; what is
    /// queued for this socket still goes out. After `busy_wait` without
    /// room the message is refused as busy, to be sent again; if a token of
    /// `ended` is cancelled first, it is dropped unacked. False if the
    /// socket failed.
    async fn wait_for_writer(
        &mut self,
        pending: Box<crate::server::writer::Pending>,
        rx: &mut Outbox,
        ended: [&CancellationToken; 2],
    ) -> bool {
        let writer = self.app.writer.clone();
        // Pinned once, so this socket keeps its place among those waiting.
        let room = writer.reserve();
        tokio::pin!(room);
        let give_up = tokio::time::sleep(self.app.config.limits.busy_wait);
        tokio::pin!(give_up);
        let [first, second] = ended;
        loop {
            tokio::select! {
                biased;
                () = first.cancelled() => return true,
                () = second.cancelled() => return true,
                room = &mut room => {
                    match room {
                        Ok(permit) => permit.send(*pending),
                        Err(_) => self.send(&crate::server::writer::store_failed(&pending.id)).await,
                    }
                    return true;
                }
                () = &mut give_up => {
                    self.send(&busy(pending.id)).await;
                    return true;
                }
                Some(out) = rx.recv(), if self.hello => {
                    if !self.send_queued(out, rx).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Sends queued frames with one flush and, once they are out, logs what
    /// each means for this chat session.
    async fn send_outbounds(&mut self, outs: &[Arc<Outbound>]) -> bool {
        // Each frame, and the flush, gets its own time limit, as a frame
        // sent alone does: a slow reader is not dropped for a burst.
        for out in outs {
            let fed = tokio::time::timeout(
                WRITE_TIMEOUT,
                self.socket.feed(Message::Text(out.text.clone())),
            )
            .await;
            if !matches!(fed, Ok(Ok(()))) {
                return false;
            }
        }
        if !matches!(
            tokio::time::timeout(WRITE_TIMEOUT, self.socket.flush()).await,
            Ok(Ok(()))
        ) {
            return false;
        }
        let events = outs.iter().filter_map(|out| out.log.clone()).collect();
        self.app.logger.events(
            &self.log_session,
            &self.user.username,
            events,
            self.app.clock.now_ms(),
        );
        true
    }

    /// Takes a token from the user's bucket. Every frame counts but the
    /// connection's first `hello`, so neither garbage nor errors can be
    /// flooded. On refusal the client gets `rate_limited` (with the message
    /// id, for `send`); too many refusals in a row close the socket (1008).
    /// Counts a frame against the user's rate limit; a refusal names the
    /// frame's id (`id` is only called then).
    async fn admit(&mut self, id: impl FnOnce() -> Option<String>) -> Result<(), Flow> {
        match self
            .app
            .frame_limiter
            .check(&self.user.id, self.app.clock.now_ms())
        {
            Ok(()) => {
                self.refused_in_a_row = 0;
                Ok(())
            }
            Err(wait) => {
                self.refused_in_a_row += 1;
                if self.refused_in_a_row >= self.app.config.limits.abuse_close_after {
                    return Err(Flow::Close(close::POLICY, "sending far too fast"));
                }
                self.send(&ServerFrame::Error {
                    code: "rate_limited".into(),
                    message: "You are sending too fast; this frame was not delivered.".into(),
                    id: id(),
                    retry_after_ms: Some(wait),
                    members: None,
                })
                .await;
                Err(Flow::Continue)
            }
        }
    }

    async fn handle_text(&mut self, text: &str) -> Flow {
        // Before hello (once per connection) a frame takes the loose parse,
        // which knows that the first hello is not counted.
        if !self.hello {
            return self.handle_loose(text, false).await;
        }
        // After hello every frame counts against the rate limit before it is
        // parsed, so a refused frame costs no more than finding its id.
        if let Err(flow) = self.admit(|| loose_id(text)).await {
            return flow;
        }
        // A well-formed frame (nearly every one) is a JSON object, parsed
        // straight into its type. Any other text is parsed again loosely,
        // to say what is wrong with it.
        let object = text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{');
        match object.then(|| serde_json::from_str::<Frame>(text).ok()) {
            Some(Some(frame)) => self.handle_frame(frame).await,
            _ => self.handle_loose(text, true).await,
        }
    }

    /// A frame that is not a well-formed [`Frame`], or any frame before
    /// hello: parsed loosely, as a [`serde_json::Value`], to find its type
    /// and id; counted by the rate limit (unless `admitted` already, or it is
    /// the first hello), and refused with the reason. (A frame with a
    /// repeated key fails the strict parse but passes this one, where the
    /// last value wins, as it always has.)
    async fn handle_loose(&mut self, text: &str, admitted: bool) -> Flow {
        let parsed = serde_json::from_str::<serde_json::Value>(text);
        let field = |name: &str| parsed.as_ref().ok().and_then(|v| str_field(v, name));
        // Only the connection's first hello-typed frame is free, well-formed
        // or not: malformed ones after it count like any frame.
        let first_hello = !self.hello_tried && field("type").as_deref() == Some("hello");
        if first_hello {
            self.hello_tried = true;
        }
        if !admitted
            && !first_hello
            && let Err(flow) = self.admit(|| field("id")).await
        {
            return flow;
        }
        let value: serde_json::Value = match parsed {
            Ok(v) => v,
            Err(e) => {
                self.send(&error_frame(
                    "bad_json",
                    format!("The frame is not valid JSON: {e}."),
                ))
                .await;
                return Flow::Continue;
            }
        };
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_owned();
        let kind = kind.as_str();
        if !["hello", "send", "typing", "read", "ping"].contains(&kind) {
            let message = if kind.is_empty() {
                "The frame has no \"type\".".to_owned()
            } else {
                format!("Unknown frame type {kind:?}.")
            };
            self.send(&error_frame("unknown_type", message)).await;
            return Flow::Continue;
        }
        let id = str_field(&value, "id");
        let frame: Frame = match serde_json::from_value(value) {
            Ok(f) => f,
            Err(e) => {
                let mut err =
                    error_frame("bad_frame", format!("The {kind} frame is malformed: {e}."));
                if let ServerFrame::Error { id: slot, .. } = &mut err {
                    *slot = id;
                }
                self.send(&err).await;
                return Flow::Continue;
            }
        };
        self.handle_frame(frame).await
    }

    async fn handle_frame(&mut self, frame: Frame) -> Flow {
        match frame {
            ClientFrame::Hello { since } => self.hello(since).await,
            ClientFrame::Ping { nonce } => {
                self.send(&ServerFrame::Pong { nonce }).await;
                Flow::Continue
            }
            _ if !self.hello => {
                self.send(&error_frame(
                    "hello_required",
                    "Send hello before anything else.",
                ))
                .await;
                Flow::Continue
            }
            other => match other {
                ClientFrame::Send { id, chat, envelope } => {
                    self.send_message(id, chat, envelope).await
                }
                ClientFrame::Typing { chat } => self.typing(chat).await,
                ClientFrame::Read { chat, seq } => self.read(chat, seq).await,
                ClientFrame::Hello { .. } | ClientFrame::Ping { .. } => Flow::Continue,
            },
        }
    }

    async fn hello(&mut self, since: std::collections::BTreeMap<String, u64>) -> Flow {
        if self.hello {
            self.send(&error_frame(
                "already_hello",
                "hello was already received on this connection.",
            ))
            .await;
            return Flow::Continue;
        }
        let user_id = self.user.id;
        let replay_max = self.app.config.limits.replay_max;
        let loaded = self
            .app
            .db
            .call(move |s| {
                let chats = s.chats_of(user_id)?;
                let mut replay = Vec::new();
                for chat in &chats {
                    if let Some(&after) = since.get(&chat.id) {
                        replay.extend(s.messages_after(&chat.id, after, replay_max)?);
                    }
                }
                Ok((chats, replay))
            })
            .await;
        let (chats, replay) = match loaded {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "hello failed");
                self.send(&error_frame(
                    "internal",
                    "The server could not load your chats; reconnect to retry.",
                ))
                .await;
                return Flow::Close(1011, "internal error");
            }
        };
        let limits = &self.app.config.limits;
        let welcome = ServerFrame::Welcome {
            user: crate::protocol::Me {
                username: self.user.username.to_string(),
                is_admin: self.user.is_admin,
                created_at: self.user.created_at,
            },
            chats: chats.iter().map(|c| chat_info(c, user_id)).collect(),
            online: self.app.hub.online(),
            limits: WireLimits {
                max_frame_bytes: limits.max_frame_bytes,
                max_ciphertext_bytes: limits.max_ciphertext_bytes,
                max_group_members: limits.max_group_members,
                frames_per_sec: limits.frames_per_sec,
                frame_burst: limits.frame_burst,
            },
        };
        if !self.write(Message::Text(encode(&welcome).text)).await {
            tracing::warn!("a welcome could not be written");
            return Flow::Close(1011, "welcome failed");
        }
        let mut batch = Vec::with_capacity(replay.len().min(SEND_BATCH));
        let mut rows = replay.into_iter().peekable();
        while let Some(row) = rows.next() {
            let out = encode(&ServerFrame::Message {
                message: message_record(row, &self.user.username),
            });
            if let Some((chat, seq)) = &out.chat_seq {
                self.replayed.insert(chat.clone(), *seq);
            }
            batch.push(Arc::new(out));
            if batch.len() == SEND_BATCH || rows.peek().is_none() {
                if !self.send_outbounds(&batch).await {
                    return Flow::Close(1011, "send failed");
                }
                batch.clear();
            }
        }
        self.send(&ServerFrame::Synced {}).await;
        self.hello = true;
        Flow::Continue
    }

    fn check_envelope(&self, id: &str, chat: &str, e: &EnvelopeSizes) -> Result<(), String> {
        let limits = &self.app.config.limits;
        if uuid::Uuid::parse_str(id).is_err() || id.len() != 36 {
            return Err("id must be a UUID in its 36-character form.".into());
        }
        if chat.is_empty() || chat.len() > 64 {
            return Err("chat is not a chat id.".into());
        }
        if e.v != crate::protocol::PROTOCOL_VERSION {
            return Err(format!("envelope version {} is not supported.", e.v));
        }
        if e.iv != IV_LEN {
            return Err(format!("iv must be {IV_LEN} bytes."));
        }
        if e.sig != SIGNATURE_LEN {
            return Err(format!("sig must be {SIGNATURE_LEN} bytes."));
        }
        if e.ct < 16 || e.ct > limits.max_ciphertext_bytes {
            return Err(format!(
                "ct must be 16 to {} bytes.",
                limits.max_ciphertext_bytes
            ));
        }
        if e.keys == 0 || e.keys > limits.max_group_members {
            return Err("keys must name every member of the chat.".into());
        }
        if e.shortest_key != WRAPPED_KEY_LEN || e.longest_key != WRAPPED_KEY_LEN {
            return Err(format!("each wrapped key must be {WRAPPED_KEY_LEN} bytes."));
        }
        Ok(())
    }

    async fn send_message(
        &mut self,
        id: String,
        chat: String,
        envelope: SerializedEnvelope,
    ) -> Flow {
        if let Err(why) = self.check_envelope(&id, &chat, envelope.sizes()) {
            self.send(&crate::server::writer::refusal(
                &id,
                "bad_envelope",
                why,
                None,
            ))
            .await;
            return Flow::Continue;
        }
        // The writer stores it (group commit), fans it out, and queues the
        // ack (or refusal) for this socket behind what it already has, so
        // this socket goes on draining its own queue meanwhile. When the
        // writer's queue is full (more arrives than the disk takes), the
        // socket's loop waits for room (`Flow::Busy`).
        let pending = crate::server::writer::Pending {
            chat,
            id: id.clone(),
            sender_id: self.user.id,
            sender: self.user.username.clone(),
            envelope,
            conn_id: self.conn_id,
            log_session: self.log_session.clone(),
        };
        match self.app.writer.try_send(pending) {
            Ok(()) => Flow::Continue,
            Err(tokio::sync::mpsc::error::TrySendError::Full(pending)) => {
                Flow::Busy(Box::new(pending))
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.send(&crate::server::writer::store_failed(&id)).await;
                Flow::Continue
            }
        }
    }

    async fn member_ids(&mut self, chat: String) -> Option<Vec<i64>> {
        let user_id = self.user.id;
        let row = self
            .app
            .db
            .call(move |s| s.chat(&chat))
            .await
            .ok()
            .flatten()?;
        row.has_member(user_id)
            .then(|| row.members.iter().map(|m| m.user_id).collect())
    }

    async fn typing(&mut self, chat: String) -> Flow {
        match self.member_ids(chat.clone()).await {
            Some(ids) => {
                let frame = encode(&ServerFrame::Typing {
                    chat,
                    user: self.user.username.to_string(),
                });
                let me = self.user.id;
                self.app
                    .hub
                    .send_to_users(ids.into_iter().filter(|&id| id != me), &frame, None);
            }
            None => {
                self.send(&error_frame(
                    "not_member",
                    "You are not a member of that chat.",
                ))
                .await
            }
        }
        Flow::Continue
    }

    async fn read(&mut self, chat: String, seq: u64) -> Flow {
        let Some(ids) = self.member_ids(chat.clone()).await else {
            self.send(&error_frame(
                "not_member",
                "You are not a member of that chat.",
            ))
            .await;
            return Flow::Continue;
        };
        let (user_id, cid) = (self.user.id, chat.clone());
        match self
            .app
            .db
            .call(move |s| s.set_read(&cid, user_id, seq))
            .await
        {
            Ok(seq) => {
                let frame = encode(&ServerFrame::Read {
                    chat,
                    user: self.user.username.to_string(),
                    seq,
                });
                self.app.hub.send_to_users(ids, &frame, None);
            }
            Err(e) => {
                tracing::error!(error = %e, "storing a read mark failed");
                self.send(&error_frame(
                    "store_failed",
                    "The server could not store the read mark.",
                ))
                .await;
            }
        }
        Flow::Continue
    }
}
