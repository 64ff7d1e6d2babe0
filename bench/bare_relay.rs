//! The bare relay: the benchmark's baseline on SecureChat's own stack
//! (axum, tokio-tungstenite and rustls with ring), with no accounts, no
//! storage and no encryption checks. `/ws` sends every text frame to every other open
//! socket; `/file` serves one file, for the `files` baseline with curl.
//!
//! ```text
//! bare-relay --cert CHAIN_PEM --key KEY_PEM [--file PATH]
//! ```
//! Listens on 127.0.0.1, port 0; prints `https://127.0.0.1:PORT` first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

#[derive(Default)]
struct Relay {
    next: AtomicU64,
    sockets: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    file: Option<PathBuf>,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (Some(cert), Some(key)) = (arg("--cert"), arg("--key")) else {
        eprintln!("usage: bare-relay --cert CHAIN_PEM --key KEY_PEM [--file PATH]");
        std::process::exit(2);
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let relay = Arc::new(Relay {
        file: arg("--file").map(PathBuf::from),
        ..Relay::default()
    });
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/file", get(file))
        .route("/", get(|| async { "bare relay" }))
        .with_state(relay);
    let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    listener.set_nonblocking(true)?;
    println!("https://{}", listener.local_addr()?);
    // The same acceptor as the host: TLS over TCP_NODELAY.
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
    )
    .acceptor(axum_server::accept::NoDelayAcceptor::new());
    axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

async fn upgrade(State(relay): State<Arc<Relay>>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(8 * 1024)
        .max_frame_size(1 << 20)
        .max_message_size(1 << 20)
        .on_upgrade(move |socket| serve(relay, socket))
}

async fn serve(relay: Arc<Relay>, socket: WebSocket) {
    let id = relay.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    relay
        .sockets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx);
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(text) = message {
            let others: Vec<mpsc::Sender<Message>> = relay
                .sockets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(k, _)| **k != id)
                .map(|(_, s)| s.clone())
                .collect();
            for other in others {
                // A full queue drops the frame, as SecureChat closes a slow reader.
                let _ = other.try_send(Message::Text(text.clone()));
            }
        }
    }
    relay
        .sockets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    writer.abort();
}

async fn file(State(relay): State<Arc<Relay>>) -> Response {
    let Some(path) = &relay.file else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::File::open(path).await {
        Ok(f) => {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            (
                [
                    ("content-type", "application/octet-stream".to_owned()),
                    ("content-length", len.to_string()),
                ],
                Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)),
            )
                .into_response()
        }
        Err(_) => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}
