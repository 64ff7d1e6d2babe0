use std::collections::HashSet;
use std::path::Path;

use reqwest::{Method, StatusCode};
use securechat::client::{Client, ClientError, FileDescriptor};
use securechat::protocol::ChatInfo;

use super::harness::{TestServer, assert_refused, expect_message, send_envelope, trio};

/// Deterministic pseudo-random bytes (xorshift), fast even unoptimised.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// True if any 8-byte-aligned sample of `needles` appears anywhere in `hay`
/// (one pass with a set of 8-byte prefixes, then a full compare).
fn contains_any(hay: &[u8], needles: &[&[u8]]) -> bool {
    let prefixes: HashSet<[u8; 8]> = needles.iter().map(|n| n[..8].try_into().unwrap()).collect();
    hay.windows(8).enumerate().any(|(i, w)| {
        prefixes.contains(<&[u8; 8]>::try_from(w).unwrap())
            && needles.iter().any(|n| hay[i..].starts_with(n))
    })
}

async fn share(
    client: &mut Client,
    socket: &mut securechat::client::Connection,
    chat: &ChatInfo,
    file: &FileDescriptor,
) {
    let id = uuid::Uuid::new_v4().to_string();
    let envelope = client.seal_file(chat, &id, file).await.unwrap();
    send_envelope(socket, id, &chat.id, envelope).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_50_mib_file_arrives_byte_identical_and_outsiders_get_403() {
    let mut server = TestServer::start().await;
    let ([mut u1, mut u2, u3], [mut s1, mut s2, _s3]) = trio(&mut server).await;
    let chat = u1.open_direct("user2").await.unwrap();
    let data = noise(50 << 20, 7);
    let file = u1
        .upload_file(
            &chat.id,
            "holiday-video.bin",
            "application/octet-stream",
            &data,
        )
        .await
        .unwrap();
    assert_eq!(file.chunks, 50);
    share(&mut u1, &mut s1, &chat, &file).await;

    let message = expect_message(&mut s2).await;
    let content = u2.open_content(&message).await.unwrap();
    assert_eq!(content["type"], "file");
    let received: FileDescriptor = serde_json::from_value(content["file"].clone()).unwrap();
    assert_eq!(received, file);
    let got = u2.download_file(&received).await.unwrap();
    assert!(got == data, "byte-identical");

    // user3 is not in the chat: refused for the status and every chunk.
    let r = u3
        .raw(Method::GET, &format!("/api/files/{}", file.id), None)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for index in 0..file.chunks {
        match u3.get_chunk(&file.id, index).await {
            Err(ClientError::Api { status, .. }) => {
                assert_eq!(status, StatusCode::FORBIDDEN, "chunk {index}")
            }
            other => panic!("chunk {index}: {other:?}"),
        }
    }
    server.stop().await;

    // Nothing of the plaintext (nor the file's name) is on disk.
    let samples: Vec<&[u8]> = (0..64)
        .map(|i| &data[i * 800_000 + 3..i * 800_000 + 35])
        .collect();
    let mut needles = samples.clone();
    needles.push(b"holiday-video");
    for path in files_under(server.dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !contains_any(&bytes, &needles),
            "plaintext in {}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn altered_swapped_and_truncated_files_are_detected() {
    let mut server = TestServer::start().await;
    let ([mut u1, mut u2, _u3], _) = trio(&mut server).await;
    let chat = u1.open_direct("user2").await.unwrap();
    let data = noise(3 * (1 << 20) + 12345, 11);
    let file = u1
        .upload_file(&chat.id, "f.bin", "application/octet-stream", &data)
        .await
        .unwrap();
    assert_eq!(file.chunks, 4);
    assert_eq!(u2.download_file(&file).await.unwrap(), data);
    let dir = server.dir.path().join("files").join(&file.id);
    let chunk = |i: u32| dir.join(i.to_string());

    // One byte altered on disk.
    let original = std::fs::read(chunk(1)).unwrap();
    let mut altered = original.clone();
    altered[500] ^= 1;
    std::fs::write(chunk(1), &altered).unwrap();
    assert!(u2.download_file(&file).await.is_err(), "an altered chunk");
    std::fs::write(chunk(1), &original).unwrap();

    // Two chunks swapped.
    let second = std::fs::read(chunk(2)).unwrap();
    std::fs::write(chunk(1), &second).unwrap();
    std::fs::write(chunk(2), &original).unwrap();
    assert!(u2.download_file(&file).await.is_err(), "swapped chunks");
    std::fs::write(chunk(1), &original).unwrap();
    std::fs::write(chunk(2), &second).unwrap();
    assert_eq!(u2.download_file(&file).await.unwrap(), data, "restored");

    // Truncated: the last chunk dropped, the one before passed off as last.
    let mut short = file.clone();
    short.chunks = 3;
    short.size = 3 << 20;
    assert!(u2.download_file(&short).await.is_err(), "a truncated file");
    std::fs::remove_file(chunk(3)).unwrap();
    assert!(u2.download_file(&file).await.is_err(), "a missing chunk");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_interrupted_by_a_restart_resumes() {
    let mut server = TestServer::start().await;
    let ([mut u1, mut u2, _u3], _) = trio(&mut server).await;
    let chat = u1.open_direct("user2").await.unwrap();
    let data = noise(5 << 20, 3);
    let file = u1
        .start_upload(&chat.id, "big.bin", "application/octet-stream", &data)
        .await
        .unwrap();
    u1.put_chunks(&file, &data, 0..2).await.unwrap();
    server.restart().await;
    let status = u1.file_status(&file.id).await.unwrap();
    assert_eq!((status.received, status.complete), (vec![0, 1], false));
    u1.finish_upload(&file, &data).await.unwrap();
    assert!(u1.file_status(&file.id).await.unwrap().complete);
    assert_eq!(u2.download_file(&file).await.unwrap(), data);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_quota_get_clear_errors() {
    let mut server = TestServer::start_with(|l| {
        l.max_file_bytes = 3 << 20;
        l.user_quota_bytes = 5 << 20;
    })
    .await;
    let ([mut u1, mut u2, mut u3], _) = trio(&mut server).await;
    let chat = u1.open_direct("user2").await.unwrap();
    let small = noise(2 << 20, 5);

    let too_big = noise(4 << 20, 1);
    assert_refused(
        u1.start_upload(&chat.id, "x", "x", &too_big).await,
        "too_large",
    );
    let body = serde_json::json!({"chat": chat.id, "size": (2 << 20) + 32, "chunks": 3});
    let r = u1
        .raw(Method::POST, "/api/files", Some(&body))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "bad_size"
    );
    assert_refused(
        u3.start_upload(&chat.id, "x", "x", &small).await,
        "not_found",
    );

    let first = u1.start_upload(&chat.id, "a", "x", &small).await.unwrap();
    // A chunk of the wrong size, completing early, fetching early.
    let r = u1
        .raw(
            Method::GET,
            &format!("/api/files/{}/chunks/0", first.id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // A chunk index that is not one is refused in JSON, as everything
    // under /api/ is.
    for idx in ["abc", "4294967296", "-1"] {
        for method in [Method::GET, Method::PUT] {
            let r = u1
                .raw(
                    method.clone(),
                    &format!("/api/files/{}/chunks/{idx}", first.id),
                    None,
                )
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method} {idx}");
            assert_eq!(
                r.json::<serde_json::Value>().await.unwrap()["error"],
                "bad_request",
                "{method} {idx}"
            );
        }
    }
    assert_refused(u2.put_chunks(&first, &small, 0..1).await, "not_uploader");
    let r = u1
        .raw(
            Method::POST,
            &format!("/api/files/{}/complete", first.id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "incomplete"
    );
    // The last chunk cut short: half a MiB where a whole one is declared.
    assert_refused(
        u1.put_chunks(&first, &small[..3 << 19], 1..2).await,
        "bad_chunk",
    );
    u1.finish_upload(&first, &small).await.unwrap();

    // Quota: 2 + 2 MiB fit in 5, a third does not.
    u1.upload_file(&chat.id, "b", "x", &small).await.unwrap();
    assert_refused(
        u1.start_upload(&chat.id, "c", "x", &small).await,
        "quota_exceeded",
    );

    // An unfinished upload is dropped after a day; finished files stay.
    let stale = u2.start_upload(&chat.id, "d", "x", &small).await.unwrap();
    server.clock.advance_ms(25 * 3600 * 1000);
    let mut fresh = server.client();
    fresh
        .login("user1", &super::harness::password("user1"))
        .await
        .unwrap();
    let app = server.running.as_ref().unwrap().app.clone();
    securechat::server::apply_retention(&app).await.unwrap();
    assert_refused(fresh.file_status(&stale.id).await, "not_found");
    assert!(fresh.file_status(&first.id).await.unwrap().complete);
    assert!(!server.dir.path().join("files").join(&stale.id).exists());
    server.stop().await;
}
