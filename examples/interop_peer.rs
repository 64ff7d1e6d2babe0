//! A native-client peer for the browser tests: it proves that the browser's
//! WebCrypto and the native client's RustCrypto interoperate.
//!
//! ```text
//! interop_peer echo  URL CA_PEM USER PEER   # register USER, greet PEER, echo what PEER writes
//! interop_peer reset URL CA_PEM USER CODE   # complete an administrator's reset of USER
//! interop_peer smoke URL CA_PEM USER PEER   # register both; USER sends PEER a message over wss
//! ```
//! `smoke` is the Windows installer's smoke test (installer/smoke-wine.sh):
//! it prints "delivered" once PEER has received and decrypted the message.
//! The password of USER is "interop peer password for USER". `echo` prints
//! "ready" once it listens, and runs until killed.

use std::collections::BTreeMap;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use securechat::client::crypto::UserKeys;
use securechat::client::{Client, Connection, Event};
use securechat::protocol::{ChatInfo, ClientFrame, ServerFrame};

fn password(user: &str) -> String {
    format!("interop peer password for {user}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, url, ca, user, extra] = args.as_slice() else {
        eprintln!("usage: interop_peer echo|reset URL CA_PEM USER PEER|CODE");
        std::process::exit(2);
    };
    let anchor = CertificateDer::from_pem_file(ca)?;
    let mut client = Client::new(url, &anchor)?;
    let keys = tokio::task::spawn_blocking(UserKeys::generate).await??;
    match mode.as_str() {
        "reset" => {
            client
                .complete_reset(user, extra, &password(user), keys)
                .await?;
            println!("reset");
            Ok(())
        }
        "echo" => echo(client, user, extra, keys).await,
        "smoke" => smoke(client, url, &anchor, user, extra, keys).await,
        other => Err(format!("unknown mode {other}").into()),
    }
}

/// Seals `text` for the chat's members and sends it.
async fn say(
    client: &mut Client,
    socket: &mut Connection,
    chat: &ChatInfo,
    text: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let id = uuid::Uuid::new_v4().to_string();
    let envelope = client.seal_text(chat, &id, text).await?;
    socket
        .send(&ClientFrame::Send {
            id,
            chat: chat.id.clone(),
            envelope,
        })
        .await?;
    Ok(())
}

async fn echo(
    mut client: Client,
    user: &str,
    peer: &str,
    keys: UserKeys,
) -> Result<(), Box<dyn std::error::Error>> {
    client.register(user, &password(user), keys, None).await?;
    let chat = client.open_direct(peer).await?;
    let mut socket = client.connect().await?;
    socket.hello(BTreeMap::new()).await?;
    say(&mut client, &mut socket, &chat, "hello from rust").await?;
    println!("ready");
    loop {
        match socket.next_event().await? {
            Event::Closed(code) => return Err(format!("socket closed ({code:?})").into()),
            Event::Frame(ServerFrame::Message { message }) if message.sender == peer => {
                let text = client.open(&message).await?;
                say(
                    &mut client,
                    &mut socket,
                    &chat,
                    &format!("rust got: {text}"),
                )
                .await?;
            }
            Event::Frame(_) => {}
        }
    }
}

async fn smoke(
    mut client: Client,
    url: &str,
    anchor: &CertificateDer<'static>,
    user: &str,
    peer: &str,
    keys: UserKeys,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut receiver = Client::new(url, anchor)?;
    let peer_keys = tokio::task::spawn_blocking(UserKeys::generate).await??;
    receiver
        .register(peer, &password(peer), peer_keys, None)
        .await?;
    let mut inbox = receiver.connect().await?;
    inbox.hello(BTreeMap::new()).await?;
    client.register(user, &password(user), keys, None).await?;
    // A login of its own, as a returning user would.
    client.login(user, &password(user)).await?;
    let chat = client.open_direct(peer).await?;
    let mut socket = client.connect().await?;
    socket.hello(BTreeMap::new()).await?;
    let text = "hello from the smoke test";
    say(&mut client, &mut socket, &chat, text).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, inbox.next_event()).await?? {
            Event::Closed(code) => return Err(format!("socket closed ({code:?})").into()),
            Event::Frame(ServerFrame::Message { message }) if message.sender == user => {
                let got = receiver.open(&message).await?;
                if got != text {
                    return Err(format!("received {got:?}").into());
                }
                println!("delivered");
                return Ok(());
            }
            Event::Frame(_) => {}
        }
    }
}
