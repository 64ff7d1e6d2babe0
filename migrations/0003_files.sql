-- 0.4.0: encrypted file sharing. Chunks live on disk under
-- files/<file id>/<index>; they are end-to-end ciphertext.

CREATE TABLE files (
    id           TEXT PRIMARY KEY,             -- UUID v4 chosen by the server
    chat_id      TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    uploader_id  INTEGER NOT NULL REFERENCES users(id),
    size         INTEGER NOT NULL,             -- total ciphertext bytes
    chunk_size   INTEGER NOT NULL,             -- ciphertext bytes of every chunk but the last
    chunks       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    completed_at INTEGER                       -- NULL while uploading
);
CREATE INDEX files_chat ON files(chat_id);
CREATE INDEX files_uploader ON files(uploader_id);

CREATE TABLE file_chunks (
    file_id TEXT NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL,
    PRIMARY KEY (file_id, idx)
);
