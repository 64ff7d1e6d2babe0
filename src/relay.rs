//! The local relay for joiners (ARCHITECTURE.md "What a double-click does",
//! step 4): it listens on 127.0.0.1 only, serves the web UI embedded in this
//! executable, and forwards `/api/` and `/ws` to a host over TLS pinned to
//! the host's CA fingerprint. Browsers treat `http://127.0.0.1` as a secure
//! context, so WebCrypto works with no certificate warning, and the
//! JavaScript that holds the user's keys comes from the user's own copy of
//! the program. The network hop stays `wss://`.
//!
//! The session cookie is renamed on the loopback side (`sc_relay`, no
//! `Secure`, since the page is `http://127.0.0.1`) and restored toward the
//! host as `__Host-sc_session`: it is never weakened on the network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message as BrowserMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message as HostMessage};
use tokio_util::sync::CancellationToken;

use crate::auth::SESSION_COOKIE;
use crate::error::ApiError;

/// The loopback name of the session cookie.
pub const RELAY_COOKIE: &str = "sc_relay";

/// What can go wrong starting a relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the host at {0} cannot be reached: {1}")]
    Unreachable(String, String),
    #[error(
        "the host at {host} presented a certificate with fingerprint {got}, not the expected {want}: refusing to connect (someone may be intercepting, or the host was reinstalled)"
    )]
    Mismatch {
        host: String,
        got: String,
        want: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// A verifier that accepts any certificate chain once, only to read the
/// host's CA certificate; its fingerprint is then checked against the pin
/// and every real connection verifies against that CA alone.
#[derive(Debug)]
struct Capture {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: std::sync::Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The host's CA certificate: the last of the chain it presents, read once
/// with [`Capture`].
async fn fetch_ca(host: &str, port: u16) -> Result<CertificateDer<'static>, RelayError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(Capture {
        provider: provider.clone(),
        chain: std::sync::Mutex::new(Vec::new()),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let unreachable = |e: &dyn std::fmt::Display| {
        RelayError::Unreachable(format!("{host}:{port}"), e.to_string())
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|e| unreachable(&e))?
    .map_err(|e| unreachable(&e))?;
    let name =
        ServerName::try_from(host.to_owned()).map_err(|e| RelayError::Invalid(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| unreachable(&e))?;
    let chain = capture
        .chain
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    chain
        .last()
        .cloned()
        .ok_or_else(|| unreachable(&"no certificate"))
}

/// Shared state of a running relay.
struct Shared {
    /// `https://host:port`, no trailing slash.
    host_base: String,
    /// The relay's own origin, `http://127.0.0.1:PORT`.
    own_origin: String,
    /// HTTP client pinned to the host's CA.
    http: reqwest::Client,
    /// TLS for the host's WebSocket, pinned the same way.
    tls: Arc<rustls::ClientConfig>,
    /// The host's name and port, for probing its certificate.
    host: (String, u16),
    /// The pinned fingerprint.
    fingerprint: String,
    health: std::sync::Mutex<Health>,
    shutdown: CancellationToken,
}

/// How the relay's link to the host is, as of the last request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Connected,
    /// The host does not answer (it may be restarting); the relay retries
    /// with every request.
    Unreachable,
    /// The host answers with a certificate other than the pinned one
    /// (fingerprint given): every request is refused.
    Mismatch(String),
}

impl Shared {
    fn set_health(&self, health: Health) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = health;
    }

    /// After a failed connection: is the host gone, or is it presenting
    /// another certificate? Records and returns the answer.
    async fn diagnose(&self) -> Health {
        let health = match fetch_ca(&self.host.0, self.host.1).await {
            Ok(ca) => {
                let got = crate::tls::fingerprint(&ca);
                if same_fingerprint(&got, &self.fingerprint) {
                    Health::Unreachable
                } else {
                    tracing::warn!(host = %self.host_base, %got, pinned = %self.fingerprint, "the host's certificate changed: refusing it");
                    Health::Mismatch(got)
                }
            }
            Err(_) => Health::Unreachable,
        };
        self.set_health(health.clone());
        health
    }
}

fn same_fingerprint(a: &str, b: &str) -> bool {
    a.replace(':', "").eq_ignore_ascii_case(&b.replace(':', ""))
}

/// The page's message for a relay that cannot reach its host.
fn unhealthy(health: &Health) -> Response {
    match health {
        Health::Mismatch(got) => relay_error(
            StatusCode::BAD_GATEWAY,
            "host_certificate_changed",
            &format!(
                "The host now presents a different certificate (fingerprint {got}). SecureChat refuses to connect: someone may be intercepting, or the host was reinstalled. Ask the host's owner for the fingerprint; if it was reinstalled, remove it from the remembered hosts."
            ),
        ),
        _ => relay_error(
            StatusCode::BAD_GATEWAY,
            "host_unreachable",
            "The host cannot be reached right now. It retries by itself.",
        ),
    }
}

/// A relay that is running.
pub struct RunningRelay {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The host's CA fingerprint it is pinned to.
    pub fingerprint: String,
    shared: Arc<Shared>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningRelay {
    /// The URL to open in a browser.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The link to the host as of the last request.
    pub fn health(&self) -> Health {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks the host now (a TLS handshake) and returns the link's health.
    pub async fn check(&self) -> Health {
        match self
            .shared
            .http
            .get(format!("{}/", self.shared.host_base))
            .send()
            .await
        {
            Ok(_) => {
                self.shared.set_health(Health::Connected);
                Health::Connected
            }
            Err(_) => self.shared.diagnose().await,
        }
    }

    /// Stops the relay.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.serve).await;
    }
}

/// Starts a relay to `host_url` (`https://host:port`) on `bind` (a loopback
/// address). `pin` is the expected SHA-256 fingerprint of the host's CA (as
/// `securechat host` prints it); without one, the certificate is trusted on
/// first use and its fingerprint returned for the caller to remember.
pub async fn start(
    host_url: &str,
    pin: Option<&str>,
    bind: SocketAddr,
) -> Result<RunningRelay, RelayError> {
    if !bind.ip().is_loopback() {
        return Err(RelayError::Invalid(
            "the relay listens on loopback only".into(),
        ));
    }
    let url = reqwest::Url::parse(host_url)
        .map_err(|e| RelayError::Invalid(format!("{host_url}: {e}")))?;
    if url.scheme() != "https" {
        return Err(RelayError::Invalid(
            "the host's address must start with https://".into(),
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| RelayError::Invalid("the host's address has no host".into()))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(443);
    let ca = fetch_ca(&host, port).await?;
    let fingerprint = crate::tls::fingerprint(&ca);
    if let Some(want) = pin
        && !same_fingerprint(want, &fingerprint)
    {
        return Err(RelayError::Mismatch {
            host: host_url.to_owned(),
            got: fingerprint,
            want: want.to_owned(),
        });
    }
    let tls =
        crate::tls::pinned_client_config(&ca).map_err(|e| RelayError::Invalid(e.to_string()))?;
    let mut http_tls = tls.clone();
    http_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(http_tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| RelayError::Invalid(e.to_string()))?;
    let listener = std::net::TcpListener::bind(bind).map_err(|e| RelayError::Bind(bind, e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| RelayError::Bind(bind, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| RelayError::Bind(bind, e))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| RelayError::Bind(bind, e))?;
    let shared = Arc::new(Shared {
        host_base: format!("{}://{}", url.scheme(), url.authority()),
        own_origin: format!("http://{addr}"),
        http,
        tls: Arc::new(tls),
        host: (host.clone(), port),
        fingerprint: fingerprint.clone(),
        health: std::sync::Mutex::new(Health::Connected),
        shutdown: CancellationToken::new(),
    });
    let app = Router::new()
        .route("/ws", get(websocket))
        .route("/api/{*path}", any(forward))
        .fallback(crate::server::assets_fallback)
        .layer(axum::middleware::from_fn(
            crate::server::security_headers_layer,
        ))
        .with_state(shared.clone());
    let stop = shared.shutdown.clone();
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    Ok(RunningRelay {
        addr,
        fingerprint,
        shared,
        serve,
    })
}

fn own_origin_ok(headers: &HeaderMap, shared: &Shared) -> bool {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o == shared.own_origin)
}

/// The session token the browser holds for the relay.
fn relay_token(headers: &HeaderMap) -> Option<String> {
    crate::auth::cookie(headers, RELAY_COOKIE)
}

/// Rewrites the host's session cookie for the loopback page.
fn loopback_cookie(set_cookie: &str) -> Option<HeaderValue> {
    let (pair, attrs) = set_cookie.split_once(';').unwrap_or((set_cookie, ""));
    let (name, value) = pair.split_once('=')?;
    if name.trim() != SESSION_COOKIE {
        return None;
    }
    let max_age = attrs
        .split(';')
        .find_map(|a| a.trim().strip_prefix("Max-Age="))
        .unwrap_or("0");
    HeaderValue::from_str(&format!(
        "{RELAY_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}",
        value.trim()
    ))
    .ok()
}

fn relay_error(status: StatusCode, code: &'static str, message: &str) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// `/api/*`: forwards the request to the host and the answer back.
async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let state_changing = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if state_changing && !own_origin_ok(&parts.headers, &shared) {
        return relay_error(
            StatusCode::FORBIDDEN,
            "bad_origin",
            "This request came from a page that is not SecureChat.",
        );
    }
    let Ok(body) = axum::body::to_bytes(body, (crate::files::CHUNK_CIPHER as usize) + 4096).await
    else {
        return relay_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "The request is too large.",
        );
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut out = shared
        .http
        .request(method, format!("{}{path}", shared.host_base))
        .header(header::ORIGIN.as_str(), &shared.host_base)
        .body(body.to_vec());
    if let Some(ct) = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        out = out.header(header::CONTENT_TYPE.as_str(), ct);
    }
    if let Some(token) = relay_token(&parts.headers) {
        out = out.header(header::COOKIE.as_str(), format!("{SESSION_COOKIE}={token}"));
    }
    let answer = match out.send().await {
        Ok(a) => {
            shared.set_health(Health::Connected);
            a
        }
        Err(_) => return unhealthy(&shared.diagnose().await),
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for name in ["content-type", "retry-after", "cache-control"] {
        if let Some(v) = answer
            .headers()
            .get(name)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            headers.insert(header::HeaderName::from_static(name), v);
        }
    }
    for cookie in answer.headers().get_all("set-cookie") {
        if let Some(v) = cookie.to_str().ok().and_then(loopback_cookie) {
            headers.append(header::SET_COOKIE, v);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    (status, headers, Body::from(bytes)).into_response()
}

/// `/ws`: a browser socket joined to a socket to the host. The host's socket
/// is opened first, so a host that refuses it (401 for a session that ended,
/// 403, 429, 503) has its answer passed to the browser as the upgrade's, as
/// without the relay: a page tells a refused upgrade from a closed socket
/// (it then asks `/api/me` whether its session still holds).
async fn websocket(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !own_origin_ok(&headers, &shared) {
        return relay_error(
            StatusCode::FORBIDDEN,
            "bad_origin",
            "This connection came from a page that is not SecureChat.",
        );
    }
    let host = match connect_host(&shared, relay_token(&headers)).await {
        Ok(host) => host,
        Err(refused) => return refused,
    };
    ws.max_message_size(1 << 20)
        .on_upgrade(move |browser| pump(shared, host, browser))
}

/// How long the relay waits for the host to take a page's socket.
const HOST_SOCKET_WAIT: Duration = Duration::from_secs(10);

type HostSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the socket to the host with the page's session, or says why not:
/// the host's own answer if it gave one, else the relay's 502.
async fn connect_host(shared: &Shared, token: Option<String>) -> Result<HostSocket, Response> {
    let url = format!("{}/ws", shared.host_base.replacen("https://", "wss://", 1));
    let mut request = url
        .into_client_request()
        .map_err(|_| unhealthy(&Health::Unreachable))?;
    let h = request.headers_mut();
    if let Ok(origin) = shared.host_base.parse() {
        h.insert("Origin", origin);
    }
    if let Some(cookie) = token.and_then(|t| format!("{SESSION_COOKIE}={t}").parse().ok()) {
        h.insert("Cookie", cookie);
    }
    let config = tungstenite::protocol::WebSocketConfig::default().max_message_size(Some(1 << 20));
    // The page waits for this answer with its socket still connecting,
    // which its own checks leave alone: a host that does not answer (asleep,
    // gone from the network) is given up here, as the page gives up a
    // silent socket.
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(tokio_tungstenite::Connector::Rustls(shared.tls.clone())),
    );
    let Ok(connected) = tokio::time::timeout(HOST_SOCKET_WAIT, connecting).await else {
        shared.set_health(Health::Unreachable);
        return Err(unhealthy(&Health::Unreachable));
    };
    match connected {
        Ok((host, _)) => {
            shared.set_health(Health::Connected);
            Ok(host)
        }
        Err(tungstenite::Error::Http(answer)) => {
            // The host is there and answered: its status and its JSON body.
            let status =
                StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut refused = Response::new(Body::from(answer.body().clone().unwrap_or_default()));
            *refused.status_mut() = status;
            refused.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(retry) = answer
                .headers()
                .get("retry-after")
                .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
            {
                refused.headers_mut().insert(header::RETRY_AFTER, retry);
            }
            Err(refused)
        }
        Err(_) => Err(unhealthy(&shared.diagnose().await)),
    }
}

async fn pump(shared: Arc<Shared>, host: HostSocket, mut browser: WebSocket) {
    let (mut to_host, mut from_host) = host.split();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                let _ = browser.send(BrowserMessage::Close(Some(CloseFrame { code: 1001, reason: "relay stopping".into() }))).await;
                break;
            }
            m = browser.recv() => match m {
                Some(Ok(BrowserMessage::Text(t))) => {
                    if to_host.send(HostMessage::text(t.as_str())).await.is_err() { break; }
                }
                Some(Ok(BrowserMessage::Binary(b))) => {
                    if to_host.send(HostMessage::binary(b)).await.is_err() { break; }
                }
                Some(Ok(BrowserMessage::Ping(_) | BrowserMessage::Pong(_))) => {}
                _ => {
                    let _ = to_host.send(HostMessage::Close(None)).await;
                    break;
                }
            },
            m = from_host.next() => match m {
                Some(Ok(HostMessage::Text(t))) => {
                    if browser.send(BrowserMessage::Text(t.as_str().into())).await.is_err() { break; }
                }
                Some(Ok(HostMessage::Binary(b))) => {
                    if browser.send(BrowserMessage::Binary(b)).await.is_err() { break; }
                }
                Some(Ok(HostMessage::Close(frame))) => {
                    let close = frame.map(|f| CloseFrame { code: u16::from(f.code), reason: f.reason.as_str().into() });
                    let _ = browser.send(BrowserMessage::Close(close)).await;
                    break;
                }
                Some(Ok(_)) => {}
                _ => {
                    // The host went away: the page reconnects (through us) by itself.
                    let _ = browser.send(BrowserMessage::Close(Some(CloseFrame { code: 1012, reason: "host connection lost".into() }))).await;
                    break;
                }
            },
        }
    }
}
