//! Upload and download throughput of one large file through the native
//! client (not a test; see docs/BENCHMARKS.md).
//!
//! ```text
//! file_bench URL CA_PEM [MIB]     # default 1024 MiB
//! ```
//! Registers two throwaway users on the host, uploads MIB MiB of random data
//! from one to their direct chat, downloads it as the other, checks it, and
//! prints the times and rates.

use std::time::Instant;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use securechat::client::Client;
use securechat::client::crypto::UserKeys;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(ca)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: file_bench URL CA_PEM [MIB]");
        std::process::exit(2);
    };
    let mib: usize = args.get(3).map_or(Ok(1024), |s| s.parse())?;
    let anchor = CertificateDer::from_pem_file(ca)?;
    let tag = securechat::chatlog::opaque_id();
    let (a, b) = (format!("bench-a-{tag}"), format!("bench-b-{tag}"));
    let password = "benchmark password, long enough";
    let mut sender = Client::new(url, &anchor)?;
    let mut receiver = Client::new(url, &anchor)?;
    let (ka, kb) = tokio::join!(
        tokio::task::spawn_blocking(UserKeys::generate),
        tokio::task::spawn_blocking(UserKeys::generate)
    );
    sender.register(&a, password, ka??, None).await?;
    receiver.register(&b, password, kb??, None).await?;
    let chat = sender.open_direct(&b).await?;
    let data = securechat::client::crypto::random_bytes_vec(mib << 20)?;

    let started = Instant::now();
    let file = sender
        .upload_file(&chat.id, "bench.bin", "application/octet-stream", &data)
        .await?;
    let up = started.elapsed();
    let started = Instant::now();
    let back = receiver.download_file(&file).await?;
    let down = started.elapsed();
    assert!(back == data, "the file came back different");
    let rate = |d: std::time::Duration| mib as f64 / d.as_secs_f64();
    println!("size_mib={mib}");
    println!(
        "upload_s={:.2} upload_mib_per_s={:.1}",
        up.as_secs_f64(),
        rate(up)
    );
    println!(
        "download_s={:.2} download_mib_per_s={:.1}",
        down.as_secs_f64(),
        rate(down)
    );
    Ok(())
}
