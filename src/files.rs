//! Encrypted file sharing (SECURITY.md §5): the HTTPS endpoints for chunked,
//! resumable uploads and downloads, their limits and quota, and the chunks
//! on disk (`<data>/files/<file id>/<index>`). Chunks are end-to-end
//! ciphertext (the STREAM construction, made by the clients); the server
//! checks sizes and membership, and never sees a name, a type or a key.
//!
//! Streaming both ways: a chunk is written to disk as it arrives and read
//! from disk as it leaves, so memory stays flat however large the file.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::server::App;
use crate::server::api::{Body as JsonBody, Segments};
use crate::store::{FileRow, StoreError};

/// Plaintext bytes per chunk; every chunk but the last is exactly this.
pub const CHUNK_PLAIN: u64 = 1 << 20;
/// AES-GCM tag bytes added to each chunk.
pub const TAG: u64 = 16;
/// Ciphertext bytes of every chunk but the last.
pub const CHUNK_CIPHER: u64 = CHUNK_PLAIN + TAG;

/// `POST /api/files` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFile {
    /// The chat the file is shared in.
    pub chat: String,
    /// Total ciphertext bytes: plaintext + 16 per chunk.
    pub size: u64,
    /// Number of chunks: ceil(plaintext / 1 MiB), at least 1.
    pub chunks: u32,
}

/// A file's upload state (`POST /api/files`, `GET /api/files/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStatus {
    pub id: String,
    pub chat: String,
    pub size: u64,
    pub chunks: u32,
    pub chunk_size: u64,
    /// The chunk indexes the server holds, ascending.
    pub received: Vec<u32>,
    pub complete: bool,
}

fn chunk_dir(app: &App, id: &str) -> PathBuf {
    app.config.data_dir.join("files").join(id)
}

fn status(file: &FileRow, received: Vec<u32>) -> FileStatus {
    FileStatus {
        id: file.id.clone(),
        chat: file.chat_id.clone(),
        size: file.size,
        chunks: file.chunks,
        chunk_size: file.chunk_size,
        received,
        complete: file.completed_at.is_some(),
    }
}

/// The file, if the caller is a member of its chat: 404 if there is no such
/// file, 403 if there is but the caller may not see it.
async fn visible_file(app: &App, user: &AuthUser, id: String) -> Result<FileRow, ApiError> {
    let user_id = user.user.id;
    let found = app
        .db
        .call(move |s| {
            let Some(file) = s.file(&id)? else {
                return Ok(None);
            };
            let member = s
                .chat(&file.chat_id)?
                .is_some_and(|c| c.has_member(user_id));
            Ok(Some((file, member)))
        })
        .await?;
    match found {
        None => Err(ApiError::not_found("No such file.")),
        Some((_, false)) => Err(ApiError::forbidden(
            "not_member",
            "That file was shared in a chat you are not in.",
        )),
        Some((file, true)) => Ok(file),
    }
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// `POST /api/files`: starts an upload to a chat the caller is in.
pub async fn create(
    State(app): State<App>,
    user: AuthUser,
    JsonBody(req): JsonBody<CreateFile>,
) -> Result<(StatusCode, Json<FileStatus>), ApiError> {
    let limits = &app.config.limits;
    let chunks = u64::from(req.chunks);
    if req.chunks == 0 || req.size < chunks * TAG + 1 {
        return Err(bad(
            "bad_size",
            "A file has at least one chunk, and each chunk at least one byte.",
        ));
    }
    let plain = req.size - chunks * TAG;
    if plain > limits.max_file_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("Files can be at most {} MiB.", limits.max_file_bytes >> 20),
        ));
    }
    if plain.div_ceil(CHUNK_PLAIN) != chunks {
        return Err(bad(
            "bad_size",
            "chunks must be the plaintext size divided by 1 MiB, rounded up.",
        ));
    }
    let (user_id, chat_id) = (user.user.id, req.chat.clone());
    let chat = app.db.call(move |s| s.chat(&chat_id)).await?;
    if !chat.is_some_and(|c| c.has_member(user_id)) {
        return Err(ApiError::not_found("No such chat."));
    }
    let file = FileRow {
        id: uuid::Uuid::new_v4().to_string(),
        chat_id: req.chat,
        uploader_id: user_id,
        size: req.size,
        chunk_size: CHUNK_CIPHER,
        chunks: req.chunks,
        created_at: app.clock.now_ms(),
        completed_at: None,
    };
    let quota = limits.user_quota_bytes;
    let record = file.clone();
    match app.db.call(move |s| s.create_file(&record, quota)).await {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::forbidden(
                "quota_exceeded",
                format!(
                    "Your files would use more than your {} MiB of space. Delete some first.",
                    quota >> 20
                ),
            ));
        }
        other => other?,
    }
    Ok((StatusCode::CREATED, Json(status(&file, Vec::new()))))
}

/// `GET /api/files/{id}`: which chunks the server holds (to resume).
pub async fn get_status(
    State(app): State<App>,
    user: AuthUser,
    Segments(id): Segments<String>,
) -> Result<Json<FileStatus>, ApiError> {
    let file = visible_file(&app, &user, id.clone()).await?;
    let received = app.db.call(move |s| s.file_chunks(&id)).await?;
    Ok(Json(status(&file, received)))
}

fn uploader_file(file: FileRow, user: &AuthUser) -> Result<FileRow, ApiError> {
    if file.uploader_id != user.user.id {
        return Err(ApiError::forbidden(
            "not_uploader",
            "Only the uploader can change an upload.",
        ));
    }
    Ok(file)
}

/// `PUT /api/files/{id}/chunks/{idx}`: one ciphertext chunk, exactly its
/// size, written to disk and flushed before the answer.
pub async fn put_chunk(
    State(app): State<App>,
    user: AuthUser,
    Segments((id, idx)): Segments<(String, u32)>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let checked = async {
        let file = uploader_file(visible_file(&app, &user, id.clone()).await?, &user)?;
        if file.completed_at.is_some() {
            return Err(ApiError::conflict(
                "complete",
                "That upload is already complete.",
            ));
        }
        if idx >= file.chunks {
            return Err(bad(
                "bad_chunk",
                format!("Chunk {idx} is past the last chunk ({}).", file.chunks - 1),
            ));
        }
        Ok(file)
    }
    .await;
    let file = match checked {
        Ok(file) => file,
        Err(e) => {
            // Read the chunk the client is still sending before refusing, so
            // it gets the refusal rather than a connection reset mid-upload.
            drain(body).await;
            return Err(e);
        }
    };
    let want = file.chunk_len(idx);
    let dir = chunk_dir(&app, &id);
    crate::secrets::create_private_dir(&dir).map_err(ApiError::internal)?;
    let tmp = dir.join(format!("{idx}.part-{}", crate::chatlog::opaque_id()));
    let written = write_chunk(&tmp, body, want).await;
    let result = match written {
        Ok(()) => tokio::fs::rename(&tmp, dir.join(idx.to_string()))
            .await
            .map_err(ApiError::internal),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result?;
    if let Ok(d) = tokio::fs::File::open(&dir).await {
        let _ = d.sync_all().await;
    }
    app.db.call(move |s| s.add_file_chunk(&id, idx)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads and drops a refused chunk's body (at most one chunk and a little:
/// anything longer is cut off by the connection closing, as before).
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut seen: u64 = 0;
    while let Some(Ok(piece)) = stream.next().await {
        seen += piece.len() as u64;
        if seen > CHUNK_CIPHER + 4096 {
            break;
        }
    }
}

/// Streams the request body into `path`, refusing any length but `want`.
async fn write_chunk(path: &Path, body: Body, want: u64) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    let mut got: u64 = 0;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|_| {
            bad(
                "bad_chunk",
                "The upload of this chunk broke off; send it again.",
            )
        })?;
        got += piece.len() as u64;
        if got > want {
            return Err(bad(
                "bad_chunk",
                format!("This chunk must be exactly {want} bytes."),
            ));
        }
        file.write_all(&piece).await.map_err(disk_error)?;
    }
    if got != want {
        return Err(bad(
            "bad_chunk",
            format!("This chunk must be exactly {want} bytes; {got} arrived."),
        ));
    }
    file.sync_all().await.map_err(disk_error)
}

fn disk_error(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(28) {
        // ENOSPC: a clear answer, and nothing half-written is kept.
        return ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "disk_full",
            "The host's disk is full. Try again once space has been freed.",
        );
    }
    ApiError::internal(e)
}

/// `POST /api/files/{id}/complete`: ends the upload once every chunk is held.
pub async fn complete(
    State(app): State<App>,
    user: AuthUser,
    Segments(id): Segments<String>,
) -> Result<Json<FileStatus>, ApiError> {
    let file = uploader_file(visible_file(&app, &user, id.clone()).await?, &user)?;
    let now = app.clock.now_ms();
    let (fid, fid2) = (id.clone(), id);
    let done = app.db.call(move |s| s.complete_file(&fid, now)).await?;
    let received = app.db.call(move |s| s.file_chunks(&fid2)).await?;
    if !done {
        return Err(ApiError::conflict(
            "incomplete",
            format!("{} of {} chunks have arrived.", received.len(), file.chunks),
        ));
    }
    let mut st = status(&file, received);
    st.complete = true;
    Ok(Json(st))
}

/// `DELETE /api/files/{id}`: the uploader cancels (or removes) a file.
pub async fn delete(
    State(app): State<App>,
    user: AuthUser,
    Segments(id): Segments<String>,
) -> Result<StatusCode, ApiError> {
    uploader_file(visible_file(&app, &user, id.clone()).await?, &user)?;
    remove(&app, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a file's chunks and record.
pub async fn remove(app: &App, id: String) -> Result<(), ApiError> {
    let dir = chunk_dir(app, &id);
    app.db.call(move |s| s.delete_file(&id)).await?;
    match tokio::fs::remove_dir_all(&dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ApiError::internal(e)),
        _ => Ok(()),
    }
}

/// `GET /api/files/{id}/chunks/{idx}`: one ciphertext chunk, streamed from
/// disk, to members of the chat it was shared in, once the upload is done.
pub async fn get_chunk(
    State(app): State<App>,
    user: AuthUser,
    Segments((id, idx)): Segments<(String, u32)>,
) -> Result<Response, ApiError> {
    let file = visible_file(&app, &user, id.clone()).await?;
    if file.completed_at.is_none() {
        return Err(ApiError::conflict(
            "incomplete",
            "That file is still being uploaded.",
        ));
    }
    if idx >= file.chunks {
        return Err(ApiError::not_found("No such chunk."));
    }
    let path = chunk_dir(&app, &id).join(idx.to_string());
    let handle = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found("That chunk is missing on the host."))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(handle, 64 * 1024);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, file.chunk_len(idx).to_string()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Deletes unfinished uploads older than the expiry, files older than the
/// retention period, and chunk folders no file record owns (a chat that was
/// deleted). Returns how many files went.
pub async fn prune(app: &App, retention_cutoff: Option<i64>) -> Result<usize, ApiError> {
    let stale_before = app.clock.now_ms() - crate::auth::ms(app.config.limits.upload_expiry);
    let expired = app
        .db
        .call(move |s| s.expired_files(stale_before, retention_cutoff))
        .await?;
    let n = expired.len();
    for id in expired {
        remove(app, id).await?;
    }
    let known: std::collections::HashSet<String> =
        app.db.call(|s| s.file_ids()).await?.into_iter().collect();
    let root = app.config.data_dir.join("files");
    if let Ok(mut entries) = tokio::fs::read_dir(&root).await {
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
    }
    Ok(n)
}
