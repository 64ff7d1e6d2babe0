//! The wire: JSON bodies of the HTTP API and the frames of `/ws`, shared by the
//! server and the native client. `docs/PROTOCOL.md` is the contract; these
//! types are its implementation, so a change here is a change there.
//!
//! Binary values travel as unpadded base64url ([`B64`]). Message content only
//! ever appears inside an [`Envelope`] as ciphertext: no type here has a field
//! that could hold message text.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes that travel as an unpadded base64url string. Decoding happens while
/// parsing, so a handler never sees malformed base64.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl B64 {
    /// Encodes bytes as unpadded base64url.
    pub fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }
    /// Decodes unpadded base64url.
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        URL_SAFE_NO_PAD.decode(s).ok()
    }
    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True if and only if there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for B64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for B64 {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&Self::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::decode(&s)
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom("invalid unpadded base64url"))
    }
}

/// Unpadded base64url checked while parsing exactly as [`B64`] is, but kept
/// as the text it came as, with the length of the bytes it encodes. The
/// decoder refuses padding and stray trailing bits, so a byte string has one
/// such text only: this text is what encoding the bytes again would give.
#[derive(Clone, PartialEq, Eq)]
struct B64Text {
    text: String,
    len: usize,
}

impl<'de> Deserialize<'de> for B64Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        thread_local! {
            // Decoding only checks the text; its bytes are not kept.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let len = SCRATCH.with_borrow_mut(|bytes| {
            bytes.clear();
            let len = URL_SAFE_NO_PAD
                .decode_vec(s.as_bytes(), bytes)
                .ok()
                .map(|()| bytes.len());
            // Keep at most 64 KiB per thread between frames.
            if bytes.capacity() > 64 * 1024 {
                *bytes = Vec::new();
            }
            len
        });
        let len = len.ok_or_else(|| serde::de::Error::custom("invalid unpadded base64url"))?;
        Ok(Self {
            text: s.into_owned(),
            len,
        })
    }
}

/// A private key encrypted by its owner's client (AES-256-GCM under the
/// password-derived wrap key). The server stores it and cannot open it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// 12-byte AES-GCM IV.
    pub iv: B64,
    /// Ciphertext of the PKCS#8 DER private key, with the 16-byte tag appended.
    pub ct: B64,
}

/// `POST /api/prelogin` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreloginRequest {
    pub username: String,
}

/// `POST /api/prelogin` response: what the client needs to derive its keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreloginResponse {
    pub salt: B64,
    pub iterations: u32,
}

/// The body of `POST /api/register` and `POST /api/reset`: a new account's
/// (or a reset account's new) salt, auth key and key pairs. `invite` goes
/// only with register, `code` only (and always) with reset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRequest {
    pub username: String,
    pub salt: B64,
    pub iterations: u32,
    pub auth_key: B64,
    pub enc_public: B64,
    pub sig_public: B64,
    pub enc_private: WrappedKey,
    pub sig_private: WrappedKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `POST /api/login` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub auth_key: B64,
}

/// The signed-in user, as `GET /api/me` and login return it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Me {
    pub username: String,
    pub is_admin: bool,
    pub created_at: i64,
}

/// A user's own keys, returned at login so a new browser can unwrap them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountKeys {
    pub salt: B64,
    pub iterations: u32,
    pub enc_public: B64,
    pub sig_public: B64,
    pub enc_private: WrappedKey,
    pub sig_private: WrappedKey,
}

/// `POST /api/login` and `POST /api/register` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub user: Me,
    pub keys: AccountKeys,
}

/// `POST /api/change-password` request: proof of the old password and the
/// replacement salt, auth key and re-wrapped private keys, swapped atomically.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub old_auth_key: B64,
    pub salt: B64,
    pub iterations: u32,
    pub auth_key: B64,
    pub enc_private: WrappedKey,
    pub sig_private: WrappedKey,
}

/// One entry of the user directory (`GET /api/users`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserEntry {
    pub username: String,
    pub enc_public: B64,
    pub sig_public: B64,
    pub online: bool,
    pub is_admin: bool,
    pub disabled: bool,
}

/// The kind of a chat.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    /// Exactly two people; at most one direct chat per pair.
    Direct,
    /// A named group with an owner.
    Group,
}

/// A member of a chat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub username: String,
    /// `owner` or `member`.
    pub role: String,
}

/// A chat as its members see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatInfo {
    pub id: String,
    pub kind: ChatKind,
    /// The group's name; `null` for direct chats.
    pub name: Option<String>,
    pub members: Vec<Member>,
    /// The sequence number of the newest message, 0 if none.
    pub last_seq: u64,
    /// The last sequence number the caller marked as read.
    pub read_seq: u64,
    pub created_at: i64,
}

/// `POST /api/chats` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CreateChatRequest {
    /// Open (or return the existing) direct chat with `peer`.
    Direct { peer: String },
    /// Create a group; the caller becomes its owner and a member.
    Group { name: String, members: Vec<String> },
}

/// `POST /api/chats/{id}/members` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    pub username: String,
}

/// `PATCH /api/chats/{id}` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameChatRequest {
    pub name: String,
}

/// An end-to-end encrypted message as the server relays and stores it:
/// opaque bytes plus the wrapped keys for each member. SECURITY.md §4.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Envelope format version; 1.
    pub v: u8,
    /// 12-byte AES-GCM IV.
    pub iv: B64,
    /// AES-256-GCM ciphertext of the content JSON, tag appended.
    pub ct: B64,
    /// Member username → the message key wrapped with RSA-OAEP-SHA256 under
    /// that member's encryption key. Covers exactly the chat's members.
    pub keys: BTreeMap<String, B64>,
    /// RSA-PSS-SHA256 signature by the sender over SHA-256(AAD ‖ IV ‖ ct).
    pub sig: B64,
}

/// [`Envelope`] with its binary parts kept as their base64url text: what the
/// server parses a `send` frame's envelope into (same fields, same order,
/// same checks), so it never decodes and encodes the base64 again.
#[derive(Deserialize)]
#[serde(rename = "Envelope", deny_unknown_fields)]
struct EnvelopeText {
    v: u8,
    iv: B64Text,
    ct: B64Text,
    keys: BTreeMap<String, B64Text>,
    sig: B64Text,
}

impl EnvelopeText {
    /// The parts of `envelope`, encoded.
    fn of(envelope: &Envelope) -> Self {
        let b64 = |b: &B64| B64Text {
            text: B64::encode(&b.0),
            len: b.len(),
        };
        Self {
            v: envelope.v,
            iv: b64(&envelope.iv),
            ct: b64(&envelope.ct),
            keys: envelope
                .keys
                .iter()
                .map(|(name, key)| (name.clone(), b64(key)))
                .collect(),
            sig: b64(&envelope.sig),
        }
    }

    /// The envelope of these parts, as the JSON text that serde_json writes
    /// for the [`Envelope`] they encode (compact, its fields in order, the
    /// keys sorted by name), with where each key's entry lies in it.
    ///
    /// Written out here rather than by serde_json, which would look up every
    /// character of the base64 (nearly all of an envelope) in its table of
    /// characters to escape: base64url has none, and each part was checked to
    /// be base64url when it was read. Only the names go through serde_json's
    /// escaping. serde_json then parses the whole text once as it makes it a
    /// [`RawValue`](serde_json::value::RawValue) (skipping through strings a
    /// word at a time), so a text that is not JSON is refused, never stored.
    /// The length is computed first, so the text is written without growing
    /// and becomes the `RawValue` without being copied.
    fn write(self) -> Result<SerializedEnvelope, serde_json::Error> {
        let names = self
            .keys
            .keys()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        let v = self.v.to_string();
        let parts = [&self.iv, &self.ct, &self.sig];
        let len = r#"{"v":,"iv":"","ct":"","keys":{},"sig":""}"#.len()
            + v.len()
            + parts.iter().map(|p| p.text.len()).sum::<usize>()
            + self
                .keys
                .values()
                .zip(&names)
                .map(|(key, name)| name.len() + key.text.len() + r#":"","#.len())
                .sum::<usize>()
            - usize::from(!names.is_empty());
        let mut out = String::with_capacity(len);
        out.push_str(r#"{"v":"#);
        out.push_str(&v);
        out.push_str(r#","iv":""#);
        out.push_str(&self.iv.text);
        out.push_str(r#"","ct":""#);
        out.push_str(&self.ct.text);
        out.push_str(r#"","keys":{"#);
        let keys_start = out.len();
        let mut entries = Vec::with_capacity(names.len());
        for (i, (name, key)) in names.iter().zip(self.keys.values()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let start = out.len();
            out.push_str(name);
            out.push_str(r#":""#);
            out.push_str(&key.text);
            out.push('"');
            entries.push(start..out.len());
        }
        let keys = keys_start..out.len();
        out.push_str(r#"},"sig":""#);
        out.push_str(&self.sig.text);
        out.push_str(r#""}"#);
        debug_assert_eq!(out.len(), len);
        let sizes = EnvelopeSizes::of(
            self.v,
            self.iv.len,
            self.ct.len,
            self.sig.len,
            self.keys.values().map(|k| k.len),
        );
        Ok(SerializedEnvelope {
            json: serde_json::value::RawValue::from_string(out)?,
            recipients: self.keys.into_keys().collect(),
            entries,
            keys,
            sizes,
        })
    }
}

/// An envelope's version and the lengths in bytes of its parts: what the
/// server checks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeSizes {
    pub v: u8,
    pub iv: usize,
    pub ct: usize,
    pub sig: usize,
    /// How many wrapped keys it has.
    pub keys: usize,
    /// The shortest and the longest wrapped key (0 when there are none).
    pub shortest_key: usize,
    pub longest_key: usize,
}

impl EnvelopeSizes {
    fn of(v: u8, iv: usize, ct: usize, sig: usize, keys: impl Iterator<Item = usize>) -> Self {
        let (mut keys_n, mut shortest_key, mut longest_key) = (0, usize::MAX, 0);
        for len in keys {
            keys_n += 1;
            shortest_key = shortest_key.min(len);
            longest_key = longest_key.max(len);
        }
        Self {
            v,
            iv,
            ct,
            sig,
            keys: keys_n,
            shortest_key: if keys_n == 0 { 0 } else { shortest_key },
            longest_key,
        }
    }
}

/// An envelope serialised once, when it is accepted: the same JSON text is
/// stored in the database, and each `message` frame is cut from it (with
/// only its reader's wrapped key, [`SerializedEnvelope::write_for`]), so
/// the host never encodes a message's base64 twice. The server parses a
/// `send` frame's envelope straight into it (see [`ClientFrame`]): the text
/// is then the envelope written out again in [`Envelope`]'s own form, with
/// the base64 kept as it came, which gives the same text as
/// [`SerializedEnvelope::new`] of the decoded envelope.
pub struct SerializedEnvelope {
    json: Box<serde_json::value::RawValue>,
    /// The usernames it wraps a key for, sorted (the key map's order).
    recipients: Vec<String>,
    /// Where each recipient's `"name":"key"` entry lies in `json`, in the
    /// order of `recipients`.
    entries: Vec<std::ops::Range<usize>>,
    /// Where the key map's entries lie in `json`: between its braces.
    keys: std::ops::Range<usize>,
    sizes: EnvelopeSizes,
}

impl SerializedEnvelope {
    /// Serialises `envelope`.
    ///
    /// # Errors
    /// Only if serde_json fails to write JSON text, which these plain
    /// types never make it do.
    pub fn new(envelope: &Envelope) -> Result<Self, serde_json::Error> {
        EnvelopeText::of(envelope).write()
    }

    /// The envelope's JSON text.
    pub fn json(&self) -> &serde_json::value::RawValue {
        &self.json
    }

    /// The envelope's JSON text as `reader` receives it, appended to `out`
    /// (which the caller sizes with [`SerializedEnvelope::len_for`]): the
    /// same text with only `reader`'s own entry left in `keys`
    /// (none if it wraps no key for them). Receivers use their own entry
    /// only, and the signature does not cover `keys` (PROTOCOL.md §2.7), so
    /// a member of a group of N gets one wrapped key, not N.
    pub fn write_for(&self, reader: &str, out: &mut String) {
        let json = self.json.get();
        out.push_str(&json[..self.keys.start]);
        if let Some(entry) = self.entry_of(reader) {
            out.push_str(&json[entry.clone()]);
        }
        out.push_str(&json[self.keys.end..]);
    }

    /// The length of what [`SerializedEnvelope::write_for`] writes.
    pub fn len_for(&self, reader: &str) -> usize {
        self.json.get().len() - self.keys.len() + self.entry_of(reader).map_or(0, |e| e.len())
    }

    fn entry_of(&self, reader: &str) -> Option<&std::ops::Range<usize>> {
        self.recipients
            .binary_search_by(|r| r.as_str().cmp(reader))
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// The usernames it wraps a key for, sorted.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// Whether it wraps a key for `username`.
    pub fn wraps_for(&self, username: &str) -> bool {
        self.entry_of(username).is_some()
    }

    /// Its version and the lengths of its parts.
    pub fn sizes(&self) -> &EnvelopeSizes {
        &self.sizes
    }

    /// The ciphertext's length in bytes.
    pub fn ct_len(&self) -> usize {
        self.sizes.ct
    }
}

/// Sizes only, as [`B64`]'s `Debug` shows lengths only: a log line never
/// carries an envelope's ciphertext or keys.
impl std::fmt::Debug for SerializedEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerializedEnvelope")
            .field("recipients", &self.recipients)
            .field("sizes", &self.sizes)
            .finish()
    }
}

impl<'de> Deserialize<'de> for SerializedEnvelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EnvelopeText::deserialize(d)?
            .write()
            .map_err(serde::de::Error::custom)
    }
}

/// A stored message with its routing metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageRecord {
    /// The client-chosen UUID v4.
    pub id: String,
    pub chat: String,
    pub sender: String,
    /// Per-chat sequence number, from 1, without gaps.
    pub seq: u64,
    /// Server time of acceptance, in milliseconds since the Unix epoch.
    pub ts: i64,
    pub envelope: Envelope,
}

/// `GET /api/chats/{id}/messages` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Messages in ascending sequence order.
    pub messages: Vec<MessageRecord>,
    /// True if and only if more messages exist beyond this page, in the
    /// direction asked for.
    pub more: bool,
}

/// A frame a client sends on `/ws`. Clients write `send` envelopes as
/// [`Envelope`]; the server reads them as [`SerializedEnvelope`], the same
/// JSON checked the same way, kept as text to store and relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame<E = Envelope> {
    /// Must be the first frame. `since` maps chat id → the last sequence
    /// number the client holds; the server replays what follows.
    Hello {
        #[serde(default)]
        since: BTreeMap<String, u64>,
    },
    /// Send a message. Resending the same `id` is acknowledged again and
    /// stored once.
    Send {
        id: String,
        chat: String,
        envelope: E,
    },
    /// The user is typing in `chat`.
    Typing { chat: String },
    /// The user has read `chat` up to `seq`.
    Read { chat: String, seq: u64 },
    /// Application-level heartbeat; answered with `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
    },
}

/// Limits a client should respect, announced in `welcome`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireLimits {
    pub max_frame_bytes: usize,
    pub max_ciphertext_bytes: usize,
    pub max_group_members: usize,
    pub frames_per_sec: f64,
    pub frame_burst: f64,
}

/// A frame the server sends on `/ws`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The answer to `hello`: who you are, your chats, who is online.
    Welcome {
        user: Me,
        chats: Vec<ChatInfo>,
        online: Vec<String>,
        limits: WireLimits,
    },
    /// A message (live, or replayed after `hello`).
    Message { message: MessageRecord },
    /// All replayed messages have been sent; live traffic follows.
    Synced {},
    /// The message `id` is stored as `seq` in `chat`.
    Ack {
        id: String,
        chat: String,
        seq: u64,
        ts: i64,
        /// True if and only if this id had been stored before (a resend).
        duplicate: bool,
    },
    /// A user came online or went offline.
    Presence { user: String, online: bool },
    /// A user's directory entry is new or changed: a new account, or new
    /// keys after a reset (clients compare them with what they pinned).
    User { user: UserEntry },
    /// A member is typing.
    Typing { chat: String, user: String },
    /// A member has read up to `seq`.
    Read {
        chat: String,
        user: String,
        seq: u64,
    },
    /// A chat you belong to was created or changed (name, members).
    Chat { chat: ChatInfo },
    /// You are no longer a member of `chat`.
    ChatRemoved { chat: String },
    /// The answer to `ping`.
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
    },
    /// Something the client sent was refused. See PROTOCOL.md for codes.
    Error {
        code: String,
        message: String,
        /// The message id the error refers to, for `send`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// For `rate_limited`: wait this long before sending again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// For `members_mismatch`: the chat's current members.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<String>>,
    },
}

/// WebSocket close codes the server uses besides the standard ones.
pub mod close {
    /// The server is shutting down (standard "going away").
    pub const GOING_AWAY: u16 = 1001;
    /// A policy was broken: sustained flooding.
    pub const POLICY: u16 = 1008;
    /// A frame or message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The socket fell too far behind; reconnect and send `hello`.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The session ended (logout, sign out everywhere, expiry, password change).
    pub const SESSION_ENDED: u16 = 4001;
    /// The socket was silent for longer than the idle timeout.
    pub const IDLE: u16 = 4002;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> B64 {
        B64((0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect())
    }

    fn envelope(ct: usize, members: &[&str]) -> Envelope {
        Envelope {
            v: 1,
            iv: bytes(12, 1),
            ct: bytes(ct, 2),
            keys: members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.to_string(), bytes(512, i as u8)))
                .collect(),
            sig: bytes(512, 9),
        }
    }

    fn same(a: &SerializedEnvelope, b: &SerializedEnvelope) {
        assert_eq!(a.json().get(), b.json().get());
        assert_eq!(a.recipients(), b.recipients());
        assert_eq!(a.sizes(), b.sizes());
    }

    #[test]
    fn the_server_reads_an_envelope_as_the_text_it_would_write() {
        // Every length modulo 3 (base64's tails), no keys, one, several, and
        // names that JSON escapes.
        for ct in [0, 16, 17, 18, 1000, 16_368] {
            for members in [&[][..], &["alice"], &["zoë", "bob", "a\"b\\c", "ünï"]] {
                let e = envelope(ct, members);
                let written = SerializedEnvelope::new(&e).unwrap();
                let text = serde_json::to_string(&e).unwrap();
                same(&serde_json::from_str(&text).unwrap(), &written);
                // Inside a frame, parsed straight or through a Value.
                let frame = serde_json::to_string(&ClientFrame::Send {
                    id: "x".into(),
                    chat: "c".into(),
                    envelope: e.clone(),
                })
                .unwrap();
                for parsed in [
                    serde_json::from_str::<ClientFrame<SerializedEnvelope>>(&frame).unwrap(),
                    serde_json::from_value(serde_json::from_str(&frame).unwrap()).unwrap(),
                ] {
                    let ClientFrame::Send { envelope, .. } = parsed else {
                        panic!("not a send frame");
                    };
                    same(&envelope, &written);
                }
                let sizes = written.sizes();
                assert_eq!((sizes.v, sizes.iv, sizes.ct, sizes.sig), (1, 12, ct, 512));
                assert_eq!(sizes.keys, members.len());
                let key = if members.is_empty() { 0 } else { 512 };
                assert_eq!((sizes.shortest_key, sizes.longest_key), (key, key));
            }
        }
    }

    #[test]
    fn the_text_is_serde_json_s_for_any_version_names_and_lengths() {
        let names = [
            "a\nb", "\u{1}", "\u{1f}", "a/b", "\u{7f}", "\u{2028}", "😀", "q\"", "b\\",
        ];
        for v in [0, 1, 9, 10, 99, 100, 255] {
            for members in [&[][..], &names[..1], &names[..]] {
                for (iv, sig) in [(0, 0), (1, 2), (12, 512)] {
                    let mut e = envelope(17, members);
                    e.v = v;
                    e.iv = bytes(iv, 1);
                    e.sig = bytes(sig, 9);
                    // Keys of several lengths.
                    for (i, key) in e.keys.values_mut().enumerate() {
                        *key = bytes(i * 7, 3);
                    }
                    let text = serde_json::to_string(&e).unwrap();
                    let read: SerializedEnvelope = serde_json::from_str(&text).unwrap();
                    assert_eq!(read.json().get(), text);
                    same(&read, &SerializedEnvelope::new(&e).unwrap());
                }
            }
        }
    }

    #[test]
    fn escaped_and_repeated_names_are_stored_as_serde_json_reads_them() {
        let key = B64::encode(&[7; 4]);
        let other = B64::encode(&[8; 4]);
        let sig = B64::encode(&[9; 4]);
        // "\u0061lice" is "alice": the later one wins, in both readings.
        let text = format!(
            r#"{{"v":1,"iv":"","ct":"","keys":{{"alice":"{key}","\u0061lice":"{other}","\ud83d\ude00":"{key}"}},"sig":"{sig}"}}"#
        );
        let e: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(e.keys.len(), 2);
        assert_eq!(e.keys["alice"], B64(vec![8; 4]));
        let read: SerializedEnvelope = serde_json::from_str(&text).unwrap();
        same(&read, &SerializedEnvelope::new(&e).unwrap());
        assert!(
            read.json().get().contains("\"😀\""),
            "{}",
            read.json().get()
        );
    }

    #[test]
    fn an_envelope_written_another_way_is_stored_in_the_one_form() {
        let e = envelope(40, &["bob", "alice"]);
        let canonical = SerializedEnvelope::new(&e).unwrap();
        let b = |v: &B64| B64::encode(&v.0);
        // Other key order, whitespace, and a JSON escape inside base64.
        let iv = b(&e.iv);
        let escaped_iv = format!("\\u{:04x}{}", iv.as_bytes()[0], &iv[1..]);
        let text = format!(
            r#" {{ "sig" : "{}", "keys": {{"bob": "{}", "alice": "{}"}},
                "ct":"{}", "iv": "{escaped_iv}", "v": 1 }} "#,
            b(&e.sig),
            b(&e.keys["bob"]),
            b(&e.keys["alice"]),
            b(&e.ct),
        );
        same(&serde_json::from_str(&text).unwrap(), &canonical);
        // serde also takes a struct as an array of its fields, in order;
        // both types do, and the stored form is still the object.
        let array = format!(
            r#"[1, "{}", "{}", {{"alice": "{}", "bob": "{}"}}, "{}"]"#,
            iv,
            b(&e.ct),
            b(&e.keys["alice"]),
            b(&e.keys["bob"]),
            b(&e.sig),
        );
        assert_eq!(serde_json::from_str::<Envelope>(&array).unwrap(), e);
        same(&serde_json::from_str(&array).unwrap(), &canonical);
    }

    #[test]
    fn the_server_refuses_what_envelope_refuses() {
        let good = serde_json::to_value(envelope(20, &["alice"])).unwrap();
        let with = |field: &str, value: serde_json::Value| {
            let mut v = good.clone();
            v[field] = value;
            v.to_string()
        };
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("sig");
        let bad = [
            with("iv", "AAAAAAAAAAAAAAA=".into()), // padded
            with("iv", "AA==".into()),
            with("iv", "AB".into()),   // stray trailing bits
            with("iv", "AA+A".into()), // not base64url
            with("iv", "AA/A".into()),
            with("iv", "A".into()), // no whole byte
            with("iv", 12.into()),
            with("v", 256.into()),
            with("v", (-1).into()),
            with("v", 1.5.into()),
            with("keys", serde_json::json!(["alice"])),
            with("keys", serde_json::json!({"alice": "AB"})),
            with("extra", 1.into()),
            missing.to_string(),
            "[]".into(),
        ];
        for text in bad {
            assert!(serde_json::from_str::<Envelope>(&text).is_err(), "{text}");
            assert!(
                serde_json::from_str::<SerializedEnvelope>(&text).is_err(),
                "{text}"
            );
        }
        // A repeated field fails both.
        let text = good.to_string();
        let repeated = text.replacen("{", r#"{"v":1,"#, 1);
        assert!(serde_json::from_str::<Envelope>(&repeated).is_err());
        assert!(serde_json::from_str::<SerializedEnvelope>(&repeated).is_err());
        // Errors name the type as the protocol does.
        let err = serde_json::from_str::<SerializedEnvelope>("\"x\"").unwrap_err();
        assert!(err.to_string().contains("struct Envelope"), "{err}");
        // The good one passes both.
        serde_json::from_str::<Envelope>(&good.to_string()).unwrap();
        serde_json::from_str::<SerializedEnvelope>(&good.to_string()).unwrap();
    }
}
