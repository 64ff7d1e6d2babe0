-- 0.2.0: per-session chat logs, admin account reset, retention.

ALTER TABLE users ADD COLUMN reset_code_hash BLOB;       -- SHA-256 of a one-time reset code
ALTER TABLE users ADD COLUMN reset_expires INTEGER NOT NULL DEFAULT 0;

CREATE TABLE chat_logs (
    path       TEXT PRIMARY KEY,                 -- relative to the data directory
    chat_id    TEXT NOT NULL,
    username   TEXT NOT NULL,
    session_id TEXT NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE INDEX chat_logs_started ON chat_logs(started_at);

CREATE INDEX messages_ts ON messages(ts);
