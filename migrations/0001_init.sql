-- SecureChat store, version 1. Message content is never here: envelopes are
-- end-to-end ciphertext the server cannot read.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,      -- canonical lowercase
    created_at     INTEGER NOT NULL,
    is_admin       INTEGER NOT NULL DEFAULT 0,
    disabled       INTEGER NOT NULL DEFAULT 0,
    salt           BLOB NOT NULL,              -- client's PBKDF2 salt
    iterations     INTEGER NOT NULL,
    auth_hash      TEXT NOT NULL,              -- Argon2id PHC string of auth_key
    enc_public     BLOB NOT NULL,              -- SPKI DER
    sig_public     BLOB NOT NULL,
    enc_private_iv BLOB NOT NULL,              -- wrapped by the client
    enc_private_ct BLOB NOT NULL,
    sig_private_iv BLOB NOT NULL,
    sig_private_ct BLOB NOT NULL
);

CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY,               -- SHA-256 of the cookie token
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    ip         TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE invites (
    code_hash  BLOB PRIMARY KEY,               -- SHA-256 of the code
    created_by INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    uses_left  INTEGER NOT NULL
);

CREATE TABLE throttle (
    kind         TEXT NOT NULL,                -- 'user' or 'ip'
    key          TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);

CREATE TABLE chats (
    id         TEXT PRIMARY KEY,               -- UUID v4
    kind       TEXT NOT NULL,                  -- 'direct' or 'group'
    name       TEXT,
    direct_key TEXT UNIQUE,                    -- 'lowid:highid' for direct chats
    created_by INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE members (
    chat_id   TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    user_id   INTEGER NOT NULL REFERENCES users(id),
    role      TEXT NOT NULL,                   -- 'owner' or 'member'
    joined_at INTEGER NOT NULL,
    read_seq  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX members_user ON members(user_id);

CREATE TABLE messages (
    chat_id   TEXT NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    id        TEXT NOT NULL UNIQUE,            -- client-chosen UUID
    sender_id INTEGER NOT NULL REFERENCES users(id),
    ts        INTEGER NOT NULL,
    envelope  TEXT NOT NULL,                   -- JSON of protocol::Envelope
    PRIMARY KEY (chat_id, seq)
);

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY,
    ts     INTEGER NOT NULL,
    event  TEXT NOT NULL,
    actor  TEXT NOT NULL,
    detail TEXT NOT NULL
);
