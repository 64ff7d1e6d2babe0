//! A native client of the SecureChat protocol: the HTTPS API over reqwest and
//! `/ws` over tokio-tungstenite, both over rustls pinned to the host's CA,
//! with the end-to-end crypto of SECURITY.md §1 and §4 from [`crypto`].
//! Tests, benchmarks and admin commands use it.

pub mod crypto;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::protocol::{
    AccountRequest, AddMemberRequest, B64, ChangePasswordRequest, ChatInfo, ClientFrame,
    CreateChatRequest, Envelope, HistoryPage, LoginRequest, LoginResponse, Me, MessageRecord,
    PreloginRequest, PreloginResponse, ServerFrame, UserEntry, WrappedKey,
};
use crypto::{CryptoError, PublicKeys, UserKeys, Wrapped};

/// What can go wrong for the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an API error.
    #[error("HTTP {status}: {code}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
        retry_after_ms: Option<u64>,
    },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("WebSocket: {0}")]
    Ws(#[from] Box<tungstenite::Error>),
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("not signed in")]
    NotSignedIn,
    /// Writing a downloaded file failed.
    #[error("writing the file: {0}")]
    Io(#[from] std::io::Error),
    /// A contact's keys differ from the ones pinned on first contact.
    #[error(
        "{0}'s keys have changed since first contact: compare safety numbers before trusting them"
    )]
    KeyChanged(String),
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        Self::Ws(Box::new(e))
    }
}

/// Shorthand for client results.
pub type Result<T> = std::result::Result<T, ClientError>;

fn wrapped_to_wire(w: &Wrapped) -> WrappedKey {
    WrappedKey {
        iv: w.iv.to_vec().into(),
        ct: w.ct.clone().into(),
    }
}

fn wrapped_from_wire(w: &WrappedKey) -> Result<Wrapped> {
    let iv: [u8; 12] =
        w.iv.0
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Protocol("wrapped key IV is not 12 bytes".into()))?;
    Ok(Wrapped {
        iv,
        ct: w.ct.0.clone(),
    })
}

/// The content of a message, before encryption (SECURITY.md §4).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TextContent {
    pub v: u8,
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

/// What a file message carries, end-to-end encrypted (SECURITY.md §5): all
/// a recipient needs to fetch, decrypt and check the file.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FileDescriptor {
    /// The server's id of the file (also the chunks' AAD).
    pub id: String,
    pub name: String,
    pub mime: String,
    /// Plaintext bytes.
    pub size: u64,
    pub chunks: u32,
    /// SHA-256 of the whole plaintext.
    pub sha256: B64,
    /// The AES-256-GCM file key.
    pub key: B64,
    /// The 7-byte nonce prefix.
    pub nonce_prefix: B64,
}

impl FileDescriptor {
    fn secrets(&self) -> Result<([u8; 32], [u8; crypto::FILE_NONCE_PREFIX])> {
        let key = self.key.0.as_slice().try_into();
        let prefix = self.nonce_prefix.0.as_slice().try_into();
        match (key, prefix) {
            (Ok(k), Ok(p)) => Ok((k, p)),
            _ => Err(ClientError::Protocol(
                "the file descriptor's key or nonce has the wrong length".into(),
            )),
        }
    }
}

/// A client of one host.
pub struct Client {
    base: String,
    origin: String,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    /// The session cookie's value, once signed in.
    session: Option<String>,
    /// The signed-in user's name and private keys.
    me: Option<(String, UserKeys)>,
    /// Public keys of other users, pinned on first fetch (trust on first use).
    pinned: HashMap<String, PublicKeys>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("user", &self.me.as_ref().map(|m| &m.0))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the host at `base_url` (`https://host:port`), trusting only
    /// the certificate `anchor` (the host's CA).
    pub fn new(base_url: &str, anchor: &CertificateDer<'_>) -> Result<Self> {
        let base = base_url.trim_end_matches('/').to_owned();
        let tls = crate::tls::pinned_client_config(anchor)?;
        let mut http_tls = tls.clone();
        http_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(http_tls)
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            origin: base.clone(),
            base,
            http,
            tls: Arc::new(tls),
            session: None,
            me: None,
            pinned: HashMap::new(),
        })
    }

    /// The session cookie's name: the host's, or the local relay's when the
    /// base is a relay on `http://127.0.0.1`.
    fn cookie_name(&self) -> &'static str {
        if self.base.starts_with("http://") {
            crate::relay::RELAY_COOKIE
        } else {
            crate::auth::SESSION_COOKIE
        }
    }

    /// Uses `origin` as the `Origin` header instead of the base URL.
    pub fn set_origin(&mut self, origin: &str) {
        self.origin = origin.to_owned();
    }

    /// The signed-in username.
    pub fn username(&self) -> Option<&str> {
        self.me.as_ref().map(|m| m.0.as_str())
    }

    /// The session cookie's value, if signed in.
    pub fn session_token(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Replaces the session cookie's value (tests use this to replay an old one).
    pub fn set_session_token(&mut self, token: Option<String>) {
        self.session = token;
    }

    /// Sends a request and returns the raw status, headers and body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Origin", &self.origin);
        if let Some(token) = &self.session {
            req = req.header("Cookie", format!("{}={token}", self.cookie_name()));
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        Ok(req.send().await?)
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = self.raw(method, path, body.as_ref()).await?;
        self.take_cookie(&response);
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol(format!("{path}: {e}")))
    }

    fn take_cookie(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let Ok(value) = value.to_str() else { continue };
            let Some(pair) = value.split(';').next() else {
                continue;
            };
            if let Some((name, token)) = pair.split_once('=')
                && name.trim() == self.cookie_name()
            {
                self.session = (!token.is_empty()).then(|| token.to_owned());
            }
        }
    }

    /// `POST /api/prelogin`.
    pub async fn prelogin(&mut self, username: &str) -> Result<PreloginResponse> {
        let body = PreloginRequest {
            username: username.to_owned(),
        };
        self.call(Method::POST, "/api/prelogin", Some(&body)).await
    }

    /// Creates an account with `keys` (generate them with
    /// [`UserKeys::generate`] on a blocking thread) and signs in.
    pub async fn register(
        &mut self,
        username: &str,
        password: &str,
        keys: UserKeys,
        invite: Option<&str>,
    ) -> Result<Me> {
        let mut body = account_request(username, password, &keys).await?;
        body.invite = invite.map(str::to_owned);
        self.adopt("/api/register", body, keys).await
    }

    /// Sends a new account's (or a reset account's) keys to `path` and, on
    /// success, signs in with them.
    async fn adopt(&mut self, path: &str, body: AccountRequest, keys: UserKeys) -> Result<Me> {
        let response: LoginResponse = self.call(Method::POST, path, Some(&body)).await?;
        let public = keys.public();
        self.pinned.insert(body.username.clone(), public);
        self.me = Some((body.username, keys));
        Ok(response.user)
    }

    /// The auth key for `username` and `password`, as login sends it.
    pub async fn auth_key(&mut self, username: &str, password: &str) -> Result<[u8; 32]> {
        let pre = self.prelogin(username).await?;
        let password = password.to_owned();
        let derived = tokio::task::spawn_blocking(move || {
            crypto::derive_keys(&password, &pre.salt.0, pre.iterations)
        })
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
        Ok(derived.auth_key)
    }

    /// Signs in: prelogin, derive, login, unwrap the private keys.
    pub async fn login(&mut self, username: &str, password: &str) -> Result<Me> {
        let username = username.trim().to_ascii_lowercase();
        let pre = self.prelogin(&username).await?;
        let password = password.to_owned();
        let derived = tokio::task::spawn_blocking(move || {
            crypto::derive_keys(&password, &pre.salt.0, pre.iterations)
        })
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
        let body = LoginRequest {
            username: username.clone(),
            auth_key: derived.auth_key.to_vec().into(),
        };
        let response: LoginResponse = self.call(Method::POST, "/api/login", Some(&body)).await?;
        let enc = wrapped_from_wire(&response.keys.enc_private)?;
        let sig = wrapped_from_wire(&response.keys.sig_private)?;
        let wrap_key = derived.wrap_key;
        let name = username.clone();
        let keys = tokio::task::spawn_blocking(move || {
            UserKeys::from_wrapped(&wrap_key, &name, &enc, &sig)
        })
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
        if keys.public().enc_spki() != response.keys.enc_public.0
            || keys.public().sig_spki() != response.keys.sig_public.0
        {
            return Err(ClientError::Protocol(
                "the server returned public keys that do not match the private keys".into(),
            ));
        }
        self.pinned.insert(username.clone(), keys.public());
        self.me = Some((username, keys));
        Ok(response.user)
    }

    /// Sends a login with a raw auth key; returns the status and error code
    /// (for tests of throttling).
    pub async fn login_attempt(
        &mut self,
        username: &str,
        auth_key: &[u8],
    ) -> Result<(StatusCode, serde_json::Value, Option<String>)> {
        let body = serde_json::json!({ "username": username, "auth_key": B64::encode(auth_key) });
        let response = self.raw(Method::POST, "/api/login", Some(&body)).await?;
        self.take_cookie(&response);
        let status = response.status();
        let retry = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let json = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, json, retry))
    }

    /// `POST /api/logout`.
    pub async fn logout(&mut self) -> Result<()> {
        let _: serde_json::Value = self
            .call::<(), _>(Method::POST, "/api/logout", None)
            .await?;
        self.session = None;
        Ok(())
    }

    /// `POST /api/logout-all`.
    pub async fn logout_all(&mut self) -> Result<()> {
        let _: serde_json::Value = self
            .call::<(), _>(Method::POST, "/api/logout-all", None)
            .await?;
        self.session = None;
        Ok(())
    }

    /// `GET /api/me`.
    pub async fn me(&mut self) -> Result<Me> {
        self.call::<(), _>(Method::GET, "/api/me", None).await
    }

    /// Changes the password: new salt, auth key and re-wrapped keys.
    pub async fn change_password(&mut self, old: &str, new: &str) -> Result<()> {
        let (username, keys) = self.me.clone().ok_or(ClientError::NotSignedIn)?;
        let old_key = self.auth_key(&username, old).await?;
        // The same keys, re-wrapped under the new password.
        let fresh = account_request(&username, new, &keys).await?;
        let body = ChangePasswordRequest {
            old_auth_key: old_key.to_vec().into(),
            salt: fresh.salt,
            iterations: fresh.iterations,
            auth_key: fresh.auth_key,
            enc_private: fresh.enc_private,
            sig_private: fresh.sig_private,
        };
        let _: serde_json::Value = self
            .call(Method::POST, "/api/change-password", Some(&body))
            .await?;
        Ok(())
    }

    /// `GET /api/users`.
    pub async fn users(&mut self) -> Result<Vec<UserEntry>> {
        self.call::<(), _>(Method::GET, "/api/users", None).await
    }

    /// The public keys of `username`, pinned on first use: a later change is
    /// an error, never silently accepted.
    pub async fn public_keys(&mut self, username: &str) -> Result<PublicKeys> {
        if let Some(keys) = self.pinned.get(username) {
            return Ok(keys.clone());
        }
        let entry: UserEntry = self
            .call::<(), _>(Method::GET, &format!("/api/users/{username}"), None)
            .await?;
        let keys = PublicKeys::from_spki(&entry.enc_public.0, &entry.sig_public.0)?;
        self.pinned.insert(username.to_owned(), keys.clone());
        Ok(keys)
    }

    /// Fetches `username`'s keys again and compares them with the pinned
    /// ones: [`ClientError::KeyChanged`] if they differ (after an account
    /// reset, or an attack). Pins them if none were.
    pub async fn check_keys(&mut self, username: &str) -> Result<PublicKeys> {
        let entry: UserEntry = self
            .call::<(), _>(Method::GET, &format!("/api/users/{username}"), None)
            .await?;
        let keys = PublicKeys::from_spki(&entry.enc_public.0, &entry.sig_public.0)?;
        match self.pinned.get(username) {
            Some(pinned) if *pinned != keys => Err(ClientError::KeyChanged(username.to_owned())),
            _ => {
                self.pinned.insert(username.to_owned(), keys.clone());
                Ok(keys)
            }
        }
    }

    /// Trusts `username`'s current keys after the user has checked them.
    pub fn accept_keys(&mut self, username: &str, keys: PublicKeys) {
        self.pinned.insert(username.to_owned(), keys);
    }

    /// Completes an administrator's reset with its one-time code: a new
    /// password and new key pairs, then signed in.
    pub async fn complete_reset(
        &mut self,
        username: &str,
        code: &str,
        password: &str,
        keys: UserKeys,
    ) -> Result<Me> {
        let mut body = account_request(username, password, &keys).await?;
        body.code = Some(code.to_owned());
        self.adopt("/api/reset", body, keys).await
    }

    /// `GET /api/chats`.
    pub async fn chats(&mut self) -> Result<Vec<ChatInfo>> {
        self.call::<(), _>(Method::GET, "/api/chats", None).await
    }

    /// Opens (or finds) the direct chat with `peer`.
    pub async fn open_direct(&mut self, peer: &str) -> Result<ChatInfo> {
        let body = CreateChatRequest::Direct {
            peer: peer.to_owned(),
        };
        self.call(Method::POST, "/api/chats", Some(&body)).await
    }

    /// Creates a group with the given members (the caller is added as owner).
    pub async fn create_group(&mut self, name: &str, members: &[&str]) -> Result<ChatInfo> {
        let body = CreateChatRequest::Group {
            name: name.to_owned(),
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        self.call(Method::POST, "/api/chats", Some(&body)).await
    }

    /// Adds a member to a group.
    pub async fn add_member(&mut self, chat: &str, username: &str) -> Result<ChatInfo> {
        let body = AddMemberRequest {
            username: username.to_owned(),
        };
        self.call(
            Method::POST,
            &format!("/api/chats/{chat}/members"),
            Some(&body),
        )
        .await
    }

    /// Removes a member from a group (or leaves, naming oneself).
    pub async fn remove_member(&mut self, chat: &str, username: &str) -> Result<()> {
        let _: serde_json::Value = self
            .call::<(), _>(
                Method::DELETE,
                &format!("/api/chats/{chat}/members/{username}"),
                None,
            )
            .await?;
        Ok(())
    }

    /// A page of history: `query` is e.g. `"after=0&limit=50"`.
    pub async fn history(&mut self, chat: &str, query: &str) -> Result<HistoryPage> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/chats/{chat}/messages?{query}"),
            None,
        )
        .await
    }

    /// Starts uploading `data` to `chat`: the server's file record, and the
    /// descriptor (with a fresh key) to send once the chunks are up.
    pub async fn start_upload(
        &mut self,
        chat: &str,
        name: &str,
        mime: &str,
        data: &[u8],
    ) -> Result<FileDescriptor> {
        use sha2::Digest;
        let chunks = data.len().div_ceil(crypto::FILE_CHUNK).max(1) as u32;
        let size = data.len() as u64 + 16 * u64::from(chunks);
        let body = crate::files::CreateFile {
            chat: chat.to_owned(),
            size,
            chunks,
        };
        let status: crate::files::FileStatus =
            self.call(Method::POST, "/api/files", Some(&body)).await?;
        let data_hash = sha2::Sha256::digest(data).to_vec();
        Ok(FileDescriptor {
            id: status.id,
            name: name.to_owned(),
            mime: mime.to_owned(),
            size: data.len() as u64,
            chunks,
            sha256: data_hash.into(),
            key: crypto::random_bytes_vec(32)?.into(),
            nonce_prefix: crypto::random_bytes_vec(crypto::FILE_NONCE_PREFIX)?.into(),
        })
    }

    /// The upload state of a file.
    pub async fn file_status(&mut self, id: &str) -> Result<crate::files::FileStatus> {
        self.call::<(), _>(Method::GET, &format!("/api/files/{id}"), None)
            .await
    }

    /// Encrypts and uploads the chunks `which` of `data`, a few at once
    /// (each one's round trip and the host's flush to disk overlap).
    pub async fn put_chunks(
        &mut self,
        file: &FileDescriptor,
        data: &[u8],
        which: impl IntoIterator<Item = u32>,
    ) -> Result<()> {
        let (key, prefix) = file.secrets()?;
        let (key, prefix, this) = (&key, &prefix, &*self);
        let mut puts = futures_util::stream::iter(which)
            .map(|index| async move {
                let last = index + 1 == file.chunks;
                let plain = data.get(chunk_range(index, data.len())).ok_or_else(|| {
                    ClientError::Protocol("chunk past the end of the data".into())
                })?;
                let ct = crypto::seal_chunk(key, prefix, &file.id, index, last, plain)?;
                this.put_chunk(&file.id, index, ct).await
            })
            .buffer_unordered(CHUNKS_IN_FLIGHT);
        while let Some(put) = puts.next().await {
            put?;
        }
        Ok(())
    }

    /// `PUT /api/files/{id}/chunks/{index}` with one sealed chunk.
    async fn put_chunk(&self, id: &str, index: u32, ct: Vec<u8>) -> Result<()> {
        let mut req = self
            .http
            .put(format!("{}/api/files/{id}/chunks/{index}", self.base))
            .header("Origin", &self.origin)
            .header("Content-Type", "application/octet-stream")
            .body(ct);
        if let Some(token) = &self.session {
            req = req.header("Cookie", format!("{}={token}", self.cookie_name()));
        }
        let response = req.send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(api_error(status, &response.bytes().await?));
        }
        Ok(())
    }

    /// Uploads whatever chunks the server does not hold yet, then completes
    /// the upload (also how an interrupted upload resumes).
    pub async fn finish_upload(&mut self, file: &FileDescriptor, data: &[u8]) -> Result<()> {
        let held = self.file_status(&file.id).await?.received;
        let missing: Vec<u32> = (0..file.chunks).filter(|i| !held.contains(i)).collect();
        self.put_chunks(file, data, missing).await?;
        let _: crate::files::FileStatus = self
            .call::<(), _>(
                Method::POST,
                &format!("/api/files/{}/complete", file.id),
                None,
            )
            .await?;
        Ok(())
    }

    /// Uploads a whole file to `chat`; returns the descriptor to send.
    pub async fn upload_file(
        &mut self,
        chat: &str,
        name: &str,
        mime: &str,
        data: &[u8],
    ) -> Result<FileDescriptor> {
        let file = self.start_upload(chat, name, mime, data).await?;
        self.finish_upload(&file, data).await?;
        Ok(file)
    }

    /// One raw (ciphertext) chunk of a file.
    pub async fn get_chunk(&self, id: &str, index: u32) -> Result<Vec<u8>> {
        self.get_chunk_into(id, index, Vec::new()).await
    }

    /// [`Client::get_chunk`] into `buf` (cleared first, so a few buffers
    /// serve a whole download). Refuses a body longer than a chunk can be.
    async fn get_chunk_into(&self, id: &str, index: u32, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        let mut response = self
            .raw(
                Method::GET,
                &format!("/api/files/{id}/chunks/{index}"),
                None,
            )
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(api_error(status, &response.bytes().await?));
        }
        let most = (crypto::FILE_CHUNK + crypto::TAG_LEN) as u64;
        buf.clear();
        buf.reserve(response.content_length().unwrap_or(0).min(most) as usize);
        while let Some(piece) = response.chunk().await? {
            if (buf.len() + piece.len()) as u64 > most {
                return Err(ClientError::Protocol(format!(
                    "chunk {index} is longer than a chunk can be"
                )));
            }
            buf.extend_from_slice(&piece);
        }
        Ok(buf)
    }

    /// Downloads, decrypts and checks a file: every chunk in order, the last
    /// one marked last, and the SHA-256 of the whole.
    pub async fn download_file(&mut self, file: &FileDescriptor) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0));
        self.download_file_to(file, &mut out).await?;
        Ok(out)
    }

    /// [`Client::download_file`], writing the plaintext to `out` chunk by
    /// chunk, so memory stays flat whatever the file's size. Each chunk is
    /// authenticated before it is written, but the whole (its length and
    /// SHA-256) only at the end: on an error, discard what was written.
    pub async fn download_file_to<W>(&mut self, file: &FileDescriptor, out: &mut W) -> Result<()>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let (key, prefix) = file.secrets()?;
        // Buffers go back here once written out, for the next requests.
        let spare = std::sync::Mutex::new(Vec::<Vec<u8>>::new());
        let take = || {
            spare
                .lock()
                .ok()
                .and_then(|mut s| s.pop())
                .unwrap_or_default()
        };
        // A few chunks in flight at once hide each request's round trip;
        // `buffered` keeps them in order.
        let mut chunks = futures_util::stream::iter(0..file.chunks)
            .map(|index| self.get_chunk_into(&file.id, index, take()))
            .buffered(CHUNKS_IN_FLIGHT);
        let (mut index, mut written) = (0, 0u64);
        let mut hash = sha2::Sha256::new();
        while let Some(buf) = chunks.next().await {
            let mut buf = buf?;
            let last = index + 1 == file.chunks;
            crypto::open_chunk_in_place(&key, &prefix, &file.id, index, last, &mut buf)?;
            written += buf.len() as u64;
            if written > file.size {
                return Err(ClientError::Crypto(CryptoError::Decrypt));
            }
            // Hashed while the chunk is still in the cache.
            hash.update(&buf);
            out.write_all(&buf).await?;
            if let Ok(mut s) = spare.lock() {
                s.push(buf);
            }
            index += 1;
        }
        out.flush().await?;
        if written != file.size || hash.finalize().as_slice() != file.sha256.0.as_slice() {
            return Err(ClientError::Crypto(CryptoError::Decrypt));
        }
        Ok(())
    }

    /// Seals a file message (content type `file`) for every member of `chat`.
    pub async fn seal_file(
        &mut self,
        chat: &ChatInfo,
        id: &str,
        file: &FileDescriptor,
    ) -> Result<Envelope> {
        let members: Vec<String> = chat.members.iter().map(|m| m.username.clone()).collect();
        let content = serde_json::json!({ "v": 1, "type": "file", "file": file });
        self.seal_content(&chat.id, &members, id, &content).await
    }

    /// Verifies and decrypts a message; returns its content JSON.
    pub async fn open_content(&mut self, message: &MessageRecord) -> Result<serde_json::Value> {
        let plain = self.open_bytes(message).await?;
        serde_json::from_slice(&plain).map_err(|e| ClientError::Protocol(format!("content: {e}")))
    }

    /// Opens `/ws` with the session cookie and this client's Origin.
    pub async fn connect(&self) -> Result<Connection> {
        // https:// → wss:// to a host; http:// → ws:// to a local relay.
        let url = format!(
            "{}/ws",
            self.base
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        );
        let mut request = url.into_client_request()?;
        let headers = request.headers_mut();
        headers.insert(
            "Origin",
            self.origin
                .parse()
                .map_err(|_| ClientError::Protocol("bad origin".into()))?,
        );
        if let Some(token) = &self.session {
            headers.insert(
                "Cookie",
                format!("{}={token}", self.cookie_name())
                    .parse()
                    .map_err(|_| ClientError::Protocol("bad cookie".into()))?,
            );
        }
        let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(Connector::Rustls(self.tls.clone())),
        )
        .await?;
        Ok(Connection { ws })
    }

    /// Encrypts and signs `text` for every member of `chat`, as message `id`.
    pub async fn seal_text(&mut self, chat: &ChatInfo, id: &str, text: &str) -> Result<Envelope> {
        let members: Vec<String> = chat.members.iter().map(|m| m.username.clone()).collect();
        self.seal_for(&chat.id, &members, id, text).await
    }

    /// Encrypts and signs `text` for the named `members` of chat `chat_id`.
    pub async fn seal_for(
        &mut self,
        chat_id: &str,
        members: &[String],
        id: &str,
        text: &str,
    ) -> Result<Envelope> {
        let content = serde_json::json!({ "v": 1, "type": "text", "text": text });
        self.seal_content(chat_id, members, id, &content).await
    }

    /// Encrypts and signs any content JSON for the named `members`.
    pub async fn seal_content(
        &mut self,
        chat_id: &str,
        members: &[String],
        id: &str,
        content: &serde_json::Value,
    ) -> Result<Envelope> {
        let (username, keys) = self.me.clone().ok_or(ClientError::NotSignedIn)?;
        let mut recipients = Vec::with_capacity(members.len());
        for m in members {
            recipients.push((m.clone(), self.public_keys(m).await?));
        }
        let content =
            serde_json::to_vec(content).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (chat_id, id) = (chat_id.to_owned(), id.to_owned());
        let sealed = tokio::task::spawn_blocking(move || {
            let refs: Vec<(&str, &PublicKeys)> =
                recipients.iter().map(|(n, k)| (n.as_str(), k)).collect();
            crypto::seal(&id, &username, &chat_id, &content, &refs, &keys)
        })
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
        Ok(Envelope {
            v: 1,
            iv: sealed.iv.to_vec().into(),
            ct: sealed.ct.into(),
            keys: sealed
                .keys
                .into_iter()
                .map(|(k, v)| (k, B64(v)))
                .collect::<BTreeMap<_, _>>(),
            sig: sealed.sig.into(),
        })
    }

    /// Verifies and decrypts a text message addressed to the signed-in user;
    /// returns its text.
    pub async fn open(&mut self, message: &MessageRecord) -> Result<String> {
        let plain = self.open_bytes(message).await?;
        let content: TextContent = serde_json::from_slice(&plain)
            .map_err(|e| ClientError::Protocol(format!("content: {e}")))?;
        Ok(content.text)
    }

    async fn open_bytes(&mut self, message: &MessageRecord) -> Result<Vec<u8>> {
        let (me, keys) = self.me.clone().ok_or(ClientError::NotSignedIn)?;
        let sender = self.public_keys(&message.sender).await?;
        let wrapped = message
            .envelope
            .keys
            .get(&me)
            .ok_or(ClientError::Crypto(CryptoError::NotARecipient))?
            .0
            .clone();
        let m = message.clone();
        tokio::task::spawn_blocking(move || {
            crypto::open(
                &m.id,
                &m.sender,
                &m.chat,
                &m.envelope.iv.0,
                &m.envelope.ct.0,
                &wrapped,
                &m.envelope.sig.0,
                &sender,
                &keys,
            )
        })
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .map_err(ClientError::Crypto)
    }
}

/// A new account's body: a fresh salt, the derived auth key, and `keys`
/// wrapped under the derived wrap key (SECURITY.md §1).
async fn account_request(
    username: &str,
    password: &str,
    keys: &UserKeys,
) -> Result<AccountRequest> {
    let username = username.trim().to_ascii_lowercase();
    let salt = crypto::random_salt()?;
    let iterations = crypto::PBKDF2_ITERATIONS;
    let (password, name, keys) = (password.to_owned(), username.clone(), keys.clone());
    let (derived, public, enc, sig) = tokio::task::spawn_blocking(move || -> Result<_> {
        let derived = crypto::derive_keys(&password, &salt, iterations)?;
        let (enc, sig) = keys.wrap(&derived.wrap_key, &name)?;
        Ok((derived, keys.public(), enc, sig))
    })
    .await
    .map_err(|e| ClientError::Protocol(e.to_string()))??;
    Ok(AccountRequest {
        username,
        salt: salt.to_vec().into(),
        iterations,
        auth_key: derived.auth_key.to_vec().into(),
        enc_public: public.enc_spki().into(),
        sig_public: public.sig_spki().into(),
        enc_private: wrapped_to_wire(&enc),
        sig_private: wrapped_to_wire(&sig),
        invite: None,
        code: None,
    })
}

/// How many file chunks a transfer keeps in flight.
const CHUNKS_IN_FLIGHT: usize = 4;

fn chunk_range(index: u32, len: usize) -> std::ops::Range<usize> {
    let start = index as usize * crypto::FILE_CHUNK;
    start..(start + crypto::FILE_CHUNK).min(len)
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    ClientError::Api {
        status,
        code: json["error"].as_str().unwrap_or("").to_owned(),
        message: json["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
        retry_after_ms: json["retry_after_ms"].as_u64(),
    }
}

/// What arrives on a socket.
#[derive(Debug, Clone)]
pub enum Event {
    /// A frame from the server.
    Frame(ServerFrame),
    /// The socket closed, with the server's close code if it sent one.
    Closed(Option<u16>),
}

/// An open `/ws` connection.
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Connection {
    /// Sends a frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        let text =
            serde_json::to_string(frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send_text(&text).await
    }

    /// Sends raw text (tests use this for malformed frames).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next frame or close, skipping WebSocket pings and pongs.
    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            match self.ws.next().await {
                None => return Ok(Event::Closed(None)),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => {
                    return Ok(Event::Closed(None));
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(text))) => {
                    let frame = serde_json::from_str(&text).map_err(|e| {
                        ClientError::Protocol(format!("bad frame from server: {e}: {text}"))
                    })?;
                    return Ok(Event::Frame(frame));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Event::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next frame; a close is an error.
    pub async fn next_frame(&mut self) -> Result<ServerFrame> {
        match self.next_event().await? {
            Event::Frame(f) => Ok(f),
            Event::Closed(code) => Err(ClientError::Protocol(format!("socket closed ({code:?})"))),
        }
    }

    /// Sends `hello` and collects the welcome's chats and every replayed
    /// message until `synced`.
    pub async fn hello(
        &mut self,
        since: BTreeMap<String, u64>,
    ) -> Result<(Vec<ChatInfo>, Vec<MessageRecord>)> {
        self.send(&ClientFrame::Hello { since }).await?;
        let mut chats = None;
        let mut replayed = Vec::new();
        loop {
            match self.next_frame().await? {
                ServerFrame::Welcome { chats: c, .. } => chats = Some(c),
                ServerFrame::Message { message } => replayed.push(message),
                ServerFrame::Synced {} => break,
                _ => {}
            }
        }
        Ok((chats.unwrap_or_default(), replayed))
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
