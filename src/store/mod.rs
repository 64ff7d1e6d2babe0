//! The database: SQLite through rusqlite, schema migrations from
//! `migrations/`, and every SQL statement the program runs. Nothing outside
//! this module touches SQL.
//!
//! The store runs in WAL mode with `synchronous = FULL`, so a message is on
//! disk before it is acknowledged and survives `kill -9` or power loss.
//! [`Db`] is the async handle the server uses: it runs each call on the
//! blocking thread pool, never on the async workers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::protocol::{ChatKind, Envelope, SerializedEnvelope, WrappedKey};

/// The migrations, in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_logs_and_reset.sql"),
    include_str!("../../migrations/0003_files.sql"),
    include_str!("../../migrations/0004_no_messages_ts.sql"),
    include_str!("../../migrations/0005_last_seq_floor.sql"),
];

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken; the text says which, safe to show.
    #[error("{0}")]
    Conflict(String),
    /// The database itself failed.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The database cannot be read with this key.
    #[error("the database cannot be decrypted with this key")]
    WrongKey,
    /// A file operation around the database failed.
    #[error("{0}")]
    Io(String),
    /// The blocking task running the query failed.
    #[error("store task failed: {0}")]
    Task(String),
}

/// Shorthand for store results.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A user's row, secrets included: never serialise it directly.
#[derive(Clone)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    pub created_at: i64,
    pub is_admin: bool,
    pub disabled: bool,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub auth_hash: String,
    pub enc_public: Vec<u8>,
    pub sig_public: Vec<u8>,
    pub enc_private: WrappedKey,
    pub sig_private: WrappedKey,
    /// When an administrator's reset code expires; 0 if no reset is pending.
    pub reset_expires: i64,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("is_admin", &self.is_admin)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A new account, as registration hands it to the store.
pub struct NewUser {
    pub username: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub auth_hash: String,
    pub enc_public: Vec<u8>,
    pub sig_public: Vec<u8>,
    pub enc_private: WrappedKey,
    pub sig_private: WrappedKey,
}

/// New credentials after a password change.
pub struct NewCredentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub auth_hash: String,
    pub enc_private: WrappedKey,
    pub sig_private: WrappedKey,
}

/// How registration is authorised, checked inside the insert's transaction.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Registration is open (or this is the first account).
    Open,
    /// Consume one use of the invite whose code hashes to this.
    Invite([u8; 32]),
    /// Only the first account may be created.
    FirstOnly,
}

/// Whether `username` may be created under `admission`: `Conflict`
/// `registration_closed`, `invalid_invite` or `username_taken` if not;
/// otherwise whether it is the first account. With `consume`, one use of
/// the invite is taken.
fn admit(
    conn: &rusqlite::Connection,
    username: &str,
    admission: &Admission,
    now: i64,
    consume: bool,
) -> Result<bool> {
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
    let first = count == 0;
    if !first {
        match admission {
            Admission::Open => {}
            Admission::FirstOnly => {
                return Err(StoreError::Conflict("registration_closed".into()));
            }
            Admission::Invite(hash) => {
                let valid = if consume {
                    conn.execute(
                        "UPDATE invites SET uses_left = uses_left - 1
                         WHERE code_hash = ?1 AND uses_left > 0 AND expires_at > ?2",
                        params![hash.as_slice(), now],
                    )? > 0
                } else {
                    conn.query_row(
                        "SELECT EXISTS(SELECT 1 FROM invites
                         WHERE code_hash = ?1 AND uses_left > 0 AND expires_at > ?2)",
                        params![hash.as_slice(), now],
                        |r| r.get(0),
                    )?
                };
                if !valid {
                    return Err(StoreError::Conflict("invalid_invite".into()));
                }
            }
        }
    }
    let taken: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM users WHERE username = ?1)",
        [username],
        |r| r.get(0),
    )?;
    if taken {
        return Err(StoreError::Conflict("username_taken".into()));
    }
    Ok(first)
}

/// A session joined with its user.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub token_hash: [u8; 32],
    pub created_at: i64,
    pub last_seen: i64,
    pub user: UserRow,
}

/// A session as administrators see it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The SHA-256 of the token (not the token).
    pub hash: [u8; 32],
    pub username: String,
    pub created_at: i64,
    pub last_seen: i64,
    pub ip: String,
}

/// Login failure counters for one username or one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttle {
    pub window_start: i64,
    pub failures: u32,
    pub locked_until: i64,
}

/// A chat's row and its members.
#[derive(Debug, Clone)]
pub struct ChatRow {
    pub id: String,
    pub kind: ChatKind,
    pub name: Option<String>,
    pub created_by: i64,
    pub created_at: i64,
    /// The sequence number of the newest message stored in the chat (0 if
    /// none ever was), kept when the retention sweep deletes that message.
    pub last_seq: u64,
    /// (user id, username, role, read_seq), in join order.
    pub members: Vec<MemberRow>,
}

/// One member of a chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub user_id: i64,
    pub username: String,
    pub role: String,
    pub read_seq: u64,
}

impl ChatRow {
    /// True if and only if `user_id` is a member.
    pub fn has_member(&self, user_id: i64) -> bool {
        self.members.iter().any(|m| m.user_id == user_id)
    }
}

/// A stored message.
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: String,
    pub chat_id: String,
    pub sender: String,
    pub seq: u64,
    pub ts: i64,
    pub envelope: Envelope,
}

/// The outcome of storing a message.
#[derive(Debug, Clone)]
pub enum Insert {
    /// Stored now, as `seq` at `ts`; `members` are the chat's members at that
    /// moment, the ones to deliver to.
    Stored {
        seq: u64,
        ts: i64,
        members: Arc<Vec<MemberRow>>,
    },
    /// This id was stored before in the same chat by the same sender.
    Duplicate { seq: u64, ts: i64 },
    /// The envelope's key map does not name exactly the current members.
    MembersMismatch { members: Vec<String> },
    /// The sender is not a member of the chat (or it does not exist).
    NotMember,
    /// The id is taken by another chat or sender.
    IdTaken,
}

/// A message to store (see [`Store::insert_messages`]).
#[derive(Debug)]
pub struct NewMessage {
    pub chat_id: String,
    pub id: String,
    pub sender_id: i64,
    pub envelope: SerializedEnvelope,
    pub now: i64,
}

/// One chat log file and what it belongs to.
#[derive(Debug, Clone)]
pub struct ChatLogRow {
    /// Relative to the data directory.
    pub path: String,
    pub chat_id: String,
    /// The chat's name now: a group's name, or "a & b" for a direct chat;
    /// `None` if the chat no longer exists.
    pub chat_label: Option<String>,
    pub username: String,
    pub session_id: String,
    pub started_at: i64,
}

/// A shared file's record: sizes and who may fetch it, never its name or
/// content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub id: String,
    pub chat_id: String,
    pub uploader_id: i64,
    /// Total ciphertext bytes.
    pub size: u64,
    /// Ciphertext bytes of every chunk but the last.
    pub chunk_size: u64,
    pub chunks: u32,
    pub created_at: i64,
    pub completed_at: Option<i64>,
}

impl FileRow {
    /// The exact ciphertext length of chunk `idx`.
    pub fn chunk_len(&self, idx: u32) -> u64 {
        if idx + 1 < self.chunks {
            self.chunk_size
        } else {
            self.size - self.chunk_size * u64::from(self.chunks - 1)
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub ts: i64,
    pub event: String,
    pub actor: String,
    pub detail: String,
}

/// SQLCipher's raw-key syntax for a 32-byte key: no passphrase derivation.
fn raw_key(key: &[u8; 32]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("x'{hex}'")
}

/// SQLCipher's page size for a new database. SQLCipher encrypts,
/// authenticates and writes whole pages: with its default 4 KiB, a direct
/// chat's envelope (about 2.5 KB) takes a page of its own and one to a
/// group of 8 (about 6.6 KB) two; in 8 KiB pages three direct envelopes
/// share a page and the group's fits in one (docs/BENCHMARKS.md).
pub const PAGE_SIZE: u32 = 8_192;

/// SQLCipher's page authentication for a new database: HMAC-SHA256, which
/// the CPU's SHA extensions compute about twice as fast as SQLCipher's
/// default HMAC-SHA512 (docs/BENCHMARKS.md). Each page carries its 32-byte
/// tag, checked whenever the page is read.
pub const PAGE_HMAC: &str = "HMAC_SHA256";

/// How SQLCipher lays out a database's pages: their size and the HMAC that
/// authenticates each one. Neither is written anywhere readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    page_size: u32,
    hmac: &'static str,
}

impl Layout {
    /// Keys `conn` with `key` and sets this layout; nothing is read yet.
    fn key(self, conn: &Connection, key: &[u8; 32]) -> rusqlite::Result<()> {
        conn.execute_batch(&format!(
            "PRAGMA key = \"{}\"; PRAGMA cipher_page_size = {}; PRAGMA cipher_hmac_algorithm = {};",
            raw_key(key),
            self.page_size,
            self.hmac
        ))
    }
}

/// The layouts a database may have, tried in this order: a new database's
/// ([`PAGE_SIZE`], [`PAGE_HMAC`]); 8 KiB pages with HMAC-SHA512, as builds
/// after 0.5.0 made them until pages were authenticated with HMAC-SHA256;
/// and SQLCipher's defaults, which 0.5.0 and earlier use.
const LAYOUTS: [Layout; 3] = [
    Layout {
        page_size: PAGE_SIZE,
        hmac: PAGE_HMAC,
    },
    Layout {
        page_size: PAGE_SIZE,
        hmac: "HMAC_SHA512",
    },
    Layout {
        page_size: 4_096,
        hmac: "HMAC_SHA512",
    },
];

/// Serializes the tries of [`open_keyed`]: SQLCipher's log level, which a
/// try turns down, is one for the whole process.
static LOG_LEVEL: Mutex<()> = Mutex::new(());

/// SQLCipher's log level turned off until dropped, then put back.
struct Quiet<'a> {
    conn: &'a Connection,
    level: String,
}

impl<'a> Quiet<'a> {
    fn new(conn: &'a Connection) -> Result<Self> {
        // One of SQLCipher's own names (ERROR, WARN, ...), so safe to put back.
        let level: String = conn.query_row("PRAGMA cipher_log_level", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
        Ok(Self { conn, level })
    }
}

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        let _ = self
            .conn
            .execute_batch(&format!("PRAGMA cipher_log_level = {};", self.level));
    }
}

/// Opens the SQLCipher database at `path` with `key`. The page layout is
/// not written anywhere readable (the header is encrypted too), so each of
/// [`LAYOUTS`] is tried until the first read succeeds; a new database gets
/// the first. A try that fails writes nothing to the database or its log:
/// it only reads (at most it rebuilds the log's index, `-shm`, as any
/// reader would) and does not checkpoint when it closes. Only "not a
/// database" (a wrong key or layout) moves on to the next layout; any
/// other failure is returned as it is. Returns the connection and the
/// layout that read the database.
fn open_keyed(
    path: &Path,
    key: &[u8; 32],
    flags: rusqlite::OpenFlags,
) -> Result<(Connection, Layout)> {
    let _serial = LOG_LEVEL.lock().unwrap_or_else(|p| p.into_inner());
    for (i, layout) in LAYOUTS.into_iter().enumerate() {
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        // SQLCipher logs a failed decryption as an error; only the last
        // try's failure is one (a wrong key).
        let quiet = if i + 1 < LAYOUTS.len() {
            Some(Quiet::new(&conn)?)
        } else {
            None
        };
        layout.key(&conn, key)?;
        let read = conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()));
        drop(quiet);
        match read {
            Ok(()) => {
                conn.set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    false,
                )?;
                return Ok((conn, layout));
            }
            // SQLCipher reports a wrong key (or layout) as "file is not a database".
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::WrongKey)
}

/// True if and only if `key` decrypts the SQLCipher database at `path`.
/// Opens it read-only and changes nothing.
pub fn key_opens(path: &Path, key: &[u8; 32]) -> bool {
    open_keyed(path, key, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).is_ok()
}

/// True if and only if `path` exists and starts with the plaintext SQLite
/// header (a database from before encryption at rest).
pub fn is_plaintext(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut header = [0u8; 16];
    match std::fs::File::open(path) {
        Ok(mut f) => Ok(f.read_exact(&mut header).is_ok() && &header == b"SQLite format 3\0"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::Io(format!("{}: {e}", path.display()))),
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Copies the database open on `conn`, schema version included, into the
/// new file `fresh`, keyed with `key` in the current layout ([`PAGE_SIZE`],
/// [`PAGE_HMAC`]), and syncs that file.
fn export_to(conn: &Connection, fresh: &Path, key: &[u8; 32]) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    conn.execute(
        "ATTACH DATABASE ?1 AS fresh KEY ?2",
        params![fresh.to_string_lossy(), raw_key(key)],
    )?;
    conn.execute_batch(&format!(
        "PRAGMA fresh.cipher_page_size = {PAGE_SIZE}; PRAGMA fresh.cipher_hmac_algorithm = {PAGE_HMAC};"
    ))?;
    conn.query_row("SELECT sqlcipher_export('fresh')", [], |_| Ok(()))?;
    conn.execute_batch(&format!(
        "PRAGMA fresh.user_version = {version}; DETACH DATABASE fresh;"
    ))?;
    std::fs::File::open(fresh)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Io(format!("syncing {}: {e}", fresh.display())))
}

/// Gives the file `to` the owner and permissions of `from`, as far as this
/// process may (an `admin` command run by root must not leave the host's
/// user a database it cannot write).
#[cfg(unix)]
fn keep_owner(from: &Path, to: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(from) {
        let _ = std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()));
        let _ = std::fs::set_permissions(to, meta.permissions());
    }
}

#[cfg(not(unix))]
fn keep_owner(_from: &Path, _to: &Path) {}

/// Puts the synced file `fresh` in the place of the database at `path` in
/// one rename, with the old file's owner and permissions, and removes the
/// old database's log index (`-shm`). The old database must have no
/// write-ahead log (it was folded into the file first): a log beside the
/// new file would be read with it, so if one has appeared (a process that
/// does not take the lock), nothing is replaced. A crash at any point
/// leaves either the old database or the new one, whole.
fn replace_with(fresh: &Path, path: &Path) -> Result<()> {
    if path.with_extension("db-wal").exists() {
        return Err(StoreError::Io(format!(
            "{} has a write-ahead log again: another process has it open",
            path.display()
        )));
    }
    keep_owner(path, fresh);
    std::fs::rename(fresh, path)
        .map_err(|e| StoreError::Io(format!("replacing {}: {e}", path.display())))?;
    sync_dir(path);
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
    Ok(())
}

/// Folds the write-ahead log of the database open on `conn` into its file
/// and leaves it without one (`journal_mode = DELETE`), or fails if
/// another connection has it open (SQLite then keeps WAL mode).
fn fold_log(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(StoreError::Io(
            "the database's write-ahead log cannot be folded in: another process has it open"
                .into(),
        ));
    }
    Ok(())
}

/// Encrypts a plaintext database in place, once: a backup copy is made
/// first and removed only after the encrypted copy has replaced the
/// original. A crash before the replacement leaves the original in place,
/// and the next start begins again from it; a crash after it leaves a
/// backup that the next start deletes. Only for a caller that holds the
/// database alone ([`Holders::Alone`]).
fn encrypt_plaintext(path: &Path, key: &[u8; 32]) -> Result<()> {
    let io =
        |what: &str, e: std::io::Error| StoreError::Io(format!("{what} {}: {e}", path.display()));
    let backup = path.with_extension("db.plaintext-backup");
    let fresh = path.with_extension("db.encrypting");
    // Fold the write-ahead log into the file, so one file holds it all.
    fold_log(&Connection::open(path)?)?;
    std::fs::copy(path, &backup).map_err(|e| io("backing up", e))?;
    std::fs::File::open(&backup)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("backing up", e))?;
    let _ = std::fs::remove_file(&fresh);
    export_to(&Connection::open(path)?, &fresh, key)?;
    replace_with(&fresh, path)?;
    std::fs::remove_file(&backup).map_err(|e| io("removing the backup of", e))?;
    Ok(())
}

/// Rewrites the database at `path`, which `key` reads in an older layout
/// than [`LAYOUTS`]`[0]`, into the current one, once. Its log is folded
/// into the file and the file left without one (`journal_mode = DELETE`,
/// which the next open sets back to WAL); the connection then keeps its
/// read lock until it closes (`locking_mode = EXCLUSIVE`), so that no
/// process that does not take [`Holders`]'s lock (a build before this
/// one) can commit while the database is exported to `<name>.db.relayout`;
/// the copy is synced and renamed over the old file. Such a process
/// having the database open makes the rewrite fail at once. A crash
/// before the rename leaves the old database whole, and the next start
/// that holds the database alone removes the partial copy and begins
/// again; a failure removes the copy and leaves the old database's
/// content as it was. Only for a caller that holds the database alone
/// ([`Holders::Alone`]).
fn relayout(path: &Path, key: &[u8; 32]) -> Result<()> {
    let fresh = path.with_extension("db.relayout");
    let _ = std::fs::remove_file(&fresh);
    let done = (|| {
        let (conn, _) = open_keyed(path, key, rusqlite::OpenFlags::default())?;
        conn.busy_timeout(std::time::Duration::ZERO)?;
        fold_log(&conn)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        export_to(&conn, &fresh, key)?;
        drop(conn);
        replace_with(&fresh, path)
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&fresh);
    }
    done
}

/// The file beside a database (`<name>.db.lock`) that every [`Store`] with
/// the database open holds a lock on, so that none rewrites the database
/// (encrypting a plaintext one, moving it to the current page layout)
/// while another has it open: the other would go on writing to the file
/// that was replaced, and its writes would be lost. An `admin` command
/// run beside a running host is such a case. (Builds before this one take
/// no such lock; SQLite's own locks make a rewrite fail while one of them
/// has the database open, see [`relayout`].)
///
/// An opener takes the lock exclusively if nobody holds it
/// ([`Holders::Alone`]), rewrites what needs it and applies migrations,
/// then holds it shared for as long as its store is open; one that finds
/// it held waits for any exclusive holder to finish, then holds it shared
/// ([`Holders::Shared`]) and rewrites nothing. The lock is the operating
/// system's (`flock` on Linux and macOS, `LockFileEx` on Windows), which
/// ends with the process (on Windows, shortly after a process is killed).
/// Where the standard library has no such lock, every opener counts as
/// [`Holders::Shared`]. (On NFS, Linux makes `flock` a per-process lock, so
/// two stores of one process do not exclude each other there.)
enum Holders {
    /// No other [`Store`] has the database open, and none can open it
    /// until [`Holders::share`].
    Alone(std::fs::File),
    /// Others may have it open.
    Shared(std::fs::File),
}

impl Holders {
    fn join(path: &Path) -> Result<Self> {
        let lock = path.with_extension("db.lock");
        let io = |e: std::io::Error| StoreError::Io(format!("locking {}: {e}", lock.display()));
        let file = open_lock(&lock)?;
        match file.try_lock() {
            Ok(()) => Ok(Self::Alone(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                wait_shared(&file, &lock)?;
                Ok(Self::Shared(file))
            }
            Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                tracing::warn!("no file locks here: the database is never rewritten in place");
                Ok(Self::Shared(file))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// From [`Holders::Alone`] to [`Holders::Shared`], for the database at
    /// `path`. The exclusive lock is let go by closing its handle, and the
    /// lock taken shared on a new one: the standard library does not
    /// convert a lock in one step, and under Wine unlocking and then
    /// locking shared on the same handle failed with a lock violation. So
    /// another opener may come first and hold it alone meanwhile: this
    /// waits for it. A connection kept open through the change is safe:
    /// the other cannot fold that connection's log, so it rewrites nothing
    /// (see [`relayout`]).
    /// Returns the handle that holds the lock shared.
    fn share(self, path: &Path) -> Result<std::fs::File> {
        match self {
            Self::Alone(file) => {
                drop(file);
                let lock = path.with_extension("db.lock");
                let file = open_lock(&lock)?;
                wait_shared(&file, &lock)?;
                Ok(file)
            }
            Self::Shared(file) => Ok(file),
        }
    }
}

/// Opens the lock file `lock`, creating it if needed. A lock needs only a
/// handle open for reading, so a lock file made by another user (an
/// `admin` command run as root) still serves.
fn open_lock(lock: &Path) -> Result<std::fs::File> {
    match std::fs::File::open(lock) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock),
        opened => opened,
    }
    .map_err(|e| StoreError::Io(format!("opening {}: {e}", lock.display())))
}

/// How long an opener waits for another that holds the database alone
/// (while it keys, rewrites or migrates it) before it gives up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Takes `file`'s lock shared, waiting (in steps of 10 ms) while another
/// handle holds it exclusively: another opener that keys, rewrites or
/// migrates the database, or (on Windows) a handle closed a moment ago.
/// Only the calls that fail at once are used; the blocking ones behaved
/// differently under Wine. A wait of over two seconds is logged, and one
/// of over [`LOCK_WAIT`] is an error.
fn wait_shared(file: &std::fs::File, lock: &Path) -> Result<()> {
    let start = std::time::Instant::now();
    let mut warned = false;
    loop {
        match file.try_lock_shared() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                let waited = start.elapsed();
                if waited > LOCK_WAIT {
                    return Err(StoreError::Io(format!(
                        "another process has held {} alone for over {} s; stop it and start again",
                        lock.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                if !warned && waited > std::time::Duration::from_secs(2) {
                    tracing::warn!(lock = %lock.display(), "waiting for another process that is rewriting the database");
                    warned = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Io(format!("locking {}: {e}", lock.display())));
            }
        }
    }
}

/// The synchronous store over one SQLite connection.
pub struct Store {
    // Declared first, so it stops (and closes its connection) before the
    // main connection closes.
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    /// [`Holders`]'s lock, held shared for as long as the store is open
    /// (declared last, so it is let go after the connections close); none
    /// in memory.
    _lock: Option<std::fs::File>,
}

/// The log pages written since the checkpointer was last woken at which it
/// is woken again: a quarter of SQLite's own threshold (1 000 pages), so
/// that each of its copies, and the sync of the database file after it,
/// carries about 2 MB. On a disk whose flush carries every write it has
/// accepted, whatever the file (a virtual disk with a write-back cache),
/// a commit's sync of the log that comes while the thread's copy reaches
/// the disk waits for all of it: 8 MB copies at 1 000 pages held the
/// group's p99 at half load at 21–29 ms in full `fanout` runs, 2 MB ones
/// at 10–15 ms (docs/BENCHMARKS.md, "Checkpoints of 250 pages").
const CHECKPOINT_PAGES: std::ffi::c_int = 250;

/// The log's length at which a commit copies the log back itself (8 000
/// pages of 8 KiB, about 66 MB of log file), should the checkpointer fall
/// behind (a host whose core is never idle) or be gone. It does not bound
/// the log's file while the thread holds the checkpoint's lock: a commit's
/// copy then finds it taken and leaves the log to the thread (in overloaded
/// benchmark steps the log reached 97 MB, and 220–350 MB when the thread
/// ran at a lower priority).
const CHECKPOINT_BEHIND_PAGES: std::ffi::c_int = 8_000;

/// Copies the write-ahead log back into the database file on a thread of
/// its own, with a second connection, so that commits never wait for the
/// bulk of that work.
///
/// SQLite's automatic checkpoint runs inside the commit that takes the log
/// past 1 000 pages: that commit (and so every message acked after it)
/// waits for the page copies and a sync of the database file. Here that
/// commit only wakes the thread (once per [`CHECKPOINT_PAGES`] written).
/// The thread copies the log with a passive checkpoint while later
/// commits go on, then syncs the database file, so that the pages it
/// copied are on disk.
///
/// The log starts again from its beginning only at the first commit after
/// a checkpoint that copied every commit and synced the database file. A
/// host under steady load commits every millisecond or so, more often
/// than any copy and sync takes, so the thread alone never catches up: the
/// log used to grow to [`CHECKPOINT_BEHIND_PAGES`], and the commit there
/// copied the rest and synced the database file with up to 66 MB of
/// unsynced pages, 7 to 106 ms during which no message was acked or
/// delivered. So, once the thread has synced its copy, the next commit
/// copies what was committed since (tens of pages) and syncs those, and
/// the commit after it starts the log again. The price is two syncs of
/// the database file per [`CHECKPOINT_PAGES`] instead of one per 8 000,
/// which the commits' syncs of the log can wait behind; small copies keep
/// each such wait short (docs/BENCHMARKS.md, "The half-load tail" and
/// "Checkpoints of 250 pages").
struct Checkpointer {
    wake: std::sync::mpsc::SyncSender<()>,
    shared: Arc<CheckpointState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the thread and the commits' hook share.
#[derive(Default)]
struct CheckpointState {
    stop: std::sync::atomic::AtomicBool,
    /// The thread's copy is in the database file and synced: the next
    /// commit copies the rest itself.
    synced: std::sync::atomic::AtomicBool,
    /// For tests: the log's pages after the last commit, the thread's
    /// checkpoints that succeeded, the commits' copies of the rest after
    /// them (and of the whole log once the thread is gone), and the
    /// commits' copies of a log that grew too long.
    #[cfg_attr(not(test), allow(dead_code))]
    log_pages: std::sync::atomic::AtomicI32,
    #[cfg_attr(not(test), allow(dead_code))]
    runs: std::sync::atomic::AtomicU64,
    #[cfg_attr(not(test), allow(dead_code))]
    finished: std::sync::atomic::AtomicU64,
    #[cfg_attr(not(test), allow(dead_code))]
    behind: std::sync::atomic::AtomicU64,
}

impl Checkpointer {
    /// Starts the thread on `conn`, a second connection to the database.
    fn start(conn: Connection) -> Result<Self> {
        use std::sync::atomic::Ordering;
        // Whatever the build's default, a checkpoint syncs the database
        // file before the log may start again.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let shared = Arc::new(CheckpointState::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("db-checkpoint".into())
                .spawn(move || {
                    // At the host's own priority, not lowered as the
                    // sign-ins' hashes are: a lowered thread got too little
                    // of a core that overload kept busy, and held the
                    // checkpoint's lock meanwhile, so the commits' own
                    // copies found it taken and the log grew to 220–350 MB;
                    // a commit that then copied it took about a second of
                    // the core, the host delivered 40–80 % of its maximum
                    // after the overload, and its half-load latency
                    // suffered (docs/BENCHMARKS.md, "The checkpointer at
                    // the host's priority").
                    while woken.recv().is_ok() {
                        if shared.stop.load(Ordering::Acquire) {
                            return;
                        }
                        // Passive: copies what no reader still needs, and
                        // never waits for the writer.
                        if let Err(e) = conn.wal_checkpoint_v2(
                            rusqlite::DEFAULT_NAME,
                            rusqlite::wal::CheckpointMode::PASSIVE,
                        ) {
                            checkpoint_failed(&e);
                            continue;
                        }
                        shared.runs.fetch_add(1, Ordering::Release);
                        match sync_database_file(&conn) {
                            Ok(()) => shared.synced.store(true, Ordering::Release),
                            Err(e) => {
                                tracing::warn!(error = %e, "could not sync the database file")
                            }
                        }
                    }
                })
                .map_err(|e| StoreError::Io(format!("starting the checkpoint thread: {e}")))?
        };
        Ok(Self {
            wake,
            shared,
            thread: Some(thread),
        })
    }

    /// The hook run after each commit, which leaves `pages` in the log:
    /// wakes the thread once per [`CHECKPOINT_PAGES`] written, copies what the
    /// thread left once it has synced its copy, and copies the log back
    /// itself if the thread is gone or the log too long.
    fn hook(
        wake: std::sync::mpsc::SyncSender<()>,
        shared: Arc<CheckpointState>,
    ) -> impl FnMut(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()> + Send + 'static
    {
        use std::sync::atomic::Ordering;
        // The log's length after the last commit, and when the thread was
        // last woken (both in pages; only this hook reads them).
        let (mut last, mut woken_at) = (0, 0);
        move |wal, pages| {
            if pages < last {
                // The log started again from its beginning.
                woken_at = 0;
            }
            last = pages;
            shared.log_pages.store(pages, Ordering::Release);
            let behind = pages >= CHECKPOINT_BEHIND_PAGES;
            let mut copy = behind || shared.synced.swap(false, Ordering::AcqRel);
            if !copy && pages >= woken_at + CHECKPOINT_PAGES {
                match wake.try_send(()) {
                    // Full: a wake-up is already waiting, which covers this
                    // commit too.
                    Ok(()) | Err(std::sync::mpsc::TrySendError::Full(())) => woken_at = pages,
                    Err(std::sync::mpsc::TrySendError::Disconnected(())) => copy = true,
                }
            }
            if copy {
                let count = if behind {
                    &shared.behind
                } else {
                    &shared.finished
                };
                count.fetch_add(1, Ordering::Release);
                if let Err(e) = wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE) {
                    // Busy: the thread is copying; the next commit tries again.
                    if behind {
                        tracing::debug!(error = %e, pages, "the write-ahead log is long and the checkpointer busy");
                    }
                    checkpoint_failed(&e);
                }
            }
            // An error here would fail the statement whose commit is done.
            Ok(())
        }
    }

    /// Stops the thread and waits for it (and its connection) to end: at
    /// most the copy it is running.
    fn stop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        // Full: a wake-up is already waiting; the thread sees `stop` after it.
        let _ = self.wake.try_send(());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

/// Syncs the main database file of `conn` to disk through SQLite's own
/// handle of it (its VFS's `xSync`: `fsync` or `fdatasync` on Unix,
/// `FlushFileBuffers` on Windows). A handle of our own would not do on
/// Unix: closing any descriptor of a file drops every POSIX lock the
/// process holds on it, SQLite's included.
#[allow(unsafe_code)]
fn sync_database_file(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::ffi;
    let failed = |rc| rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None);
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn` is open, and SQLITE_FCNTL_FILE_POINTER writes one
    // pointer (the main database's `sqlite3_file`, owned by the
    // connection) into `file`, which outlives the call.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(failed(rc));
    }
    // SAFETY: `file` is null or the connection's open file, valid while
    // `conn` is borrowed; its methods are its VFS's, and `xSync` takes the
    // file and SQLite's sync flags. Only this thread uses `conn`, and no
    // statement of it is running.
    let rc = unsafe {
        match file
            .as_ref()
            .and_then(|f| f.pMethods.as_ref())
            .and_then(|m| m.xSync)
        {
            Some(sync) => sync(file, ffi::SQLITE_SYNC_NORMAL),
            None => ffi::SQLITE_OK,
        }
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(failed(rc))
    }
}

/// Logs a checkpoint's failure, unless another checkpoint was running
/// (it copies the same log).
fn checkpoint_failed(e: &rusqlite::Error) {
    if e.sqlite_error_code() != Some(rusqlite::ErrorCode::DatabaseBusy) {
        tracing::warn!(error = %e, "could not copy the write-ahead log into the database");
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wrapped(iv: Vec<u8>, ct: Vec<u8>) -> WrappedKey {
    WrappedKey {
        iv: iv.into(),
        ct: ct.into(),
    }
}

/// How many compiled statements a connection keeps (see [`Store::init`]).
const STATEMENT_CACHE: usize = 64;

const USER_COLUMNS: &str = "u.id, u.username, u.created_at, u.is_admin, u.disabled, u.salt, \
     u.iterations, u.auth_hash, u.enc_public, u.sig_public, u.enc_private_iv, u.enc_private_ct, \
     u.sig_private_iv, u.sig_private_ct, u.reset_expires";

fn user_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get(at)?,
        username: r.get(at + 1)?,
        created_at: r.get(at + 2)?,
        is_admin: r.get(at + 3)?,
        disabled: r.get(at + 4)?,
        salt: r.get(at + 5)?,
        iterations: r.get(at + 6)?,
        auth_hash: r.get(at + 7)?,
        enc_public: r.get(at + 8)?,
        sig_public: r.get(at + 9)?,
        enc_private: wrapped(r.get(at + 10)?, r.get(at + 11)?),
        sig_private: wrapped(r.get(at + 12)?, r.get(at + 13)?),
        reset_expires: r.get(at + 14)?,
    })
}

fn kind_from_str(s: &str) -> Result<ChatKind> {
    match s {
        "direct" => Ok(ChatKind::Direct),
        "group" => Ok(ChatKind::Group),
        other => Err(StoreError::Corrupt(format!("chat kind {other:?}"))),
    }
}

fn kind_str(kind: ChatKind) -> &'static str {
    match kind {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
    }
}

/// A successful sign-in, stored with the settling of its attempt
/// ([`Store::settle_success`]): its audit record and its new session.
#[derive(Debug, Clone, Copy)]
pub struct SignIn<'a> {
    pub now: i64,
    /// The audit event (`login`, `reset_completed`).
    pub event: &'a str,
    pub actor: &'a str,
    pub detail: &'a str,
    pub token_hash: &'a [u8; 32],
    pub user_id: i64,
}

fn insert_audit(conn: &Connection, now: i64, event: &str, actor: &str, detail: &str) -> Result<()> {
    conn.prepare_cached("INSERT INTO audit (ts, event, actor, detail) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![now, event, actor, detail])?;
    Ok(())
}

fn insert_session(
    conn: &Connection,
    token_hash: &[u8; 32],
    user_id: i64,
    now: i64,
    ip: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions (token_hash, user_id, created_at, last_seen, ip) VALUES (?1, ?2, ?3, ?3, ?4)",
    )?
    .execute(params![token_hash.as_slice(), user_id, now, ip])?;
    Ok(())
}

/// SQL for the last sequence number of the chat aliased `c`: its newest
/// stored message's. Storing a message writes nothing to its chat's row
/// (one page less in every commit); `chats.last_seq` is only a floor that
/// the retention sweep raises before it deletes a chat's messages, so a
/// chat whose newest messages are gone never hands out their numbers again.
macro_rules! last_seq_of_c {
    () => {
        "MAX(c.last_seq, IFNULL((SELECT MAX(newest.seq) FROM messages newest WHERE newest.chat_id = c.id), 0))"
    };
}

impl Store {
    /// Opens (creating if needed) the SQLCipher database at `path`, keyed
    /// with `key` (the `db` subkey), and applies any migrations not yet
    /// applied. When no other store has the database open ([`Holders`]),
    /// a plaintext database from 0.1.0 is first encrypted in place (see
    /// [`encrypt_plaintext`]), and one in an older page layout (4 KiB pages
    /// or HMAC-SHA512, as 0.5.0 made them) is rewritten in the current one
    /// (see [`relayout`]); if that fails, it opens as it is and the next
    /// such open tries again. An older layout found while another store has
    /// the database open is left for a later start.
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<Self> {
        let flags = rusqlite::OpenFlags::default();
        match Holders::join(path)? {
            alone @ Holders::Alone(_) => {
                if is_plaintext(path)? {
                    encrypt_plaintext(path, key)?;
                } else {
                    // A backup left by a migration that finished but crashed
                    // before removing it is plaintext: it must not linger.
                    let _ = std::fs::remove_file(path.with_extension("db.plaintext-backup"));
                }
                let (mut conn, layout) = open_keyed(path, key, flags)?;
                if layout != LAYOUTS[0] {
                    drop(conn);
                    if let Err(e) = relayout(path, key) {
                        tracing::warn!(error = %e, "the database keeps its older page layout for now");
                    }
                    conn = open_keyed(path, key, flags)?.0;
                }
                // Migrations too run while no other store can open the
                // database. Another opener may come while the lock then
                // changes hands: it finds nothing to rewrite, or (after a
                // failed rewrite) fails to fold this connection's log.
                let mut store = Self::init(conn)?;
                store._lock = Some(alone.share(path)?);
                Ok(store)
            }
            shared @ Holders::Shared(_) => {
                if is_plaintext(path)? {
                    return Err(StoreError::Io(format!(
                        "{} is not encrypted yet and another process has it open; stop that process and start again",
                        path.display()
                    )));
                }
                let mut store = Self::init(open_keyed(path, key, flags)?.0)?;
                store._lock = Some(shared.share(path)?);
                Ok(store)
            }
        }
    }

    /// An in-memory store, for unit tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Plans that do not depend on the values bound to them. Without
        // this, SQLite marks a statement whose plan looked at a bound value
        // (such as `chat_id = ?1` in a join) to be compiled again once the
        // binding is cleared, and the statement cache clears every
        // statement it takes back: so the members of a chat were read by
        // parsing and planning their query anew for every batch. None of
        // our queries gains from value-dependent plans (no LIKE, no
        // partial indexes, no ANALYZE statistics); `LIMIT ?` was marked the
        // same way. Should ANALYZE or `PRAGMA optimize` ever be run, its
        // statistics will not be used for bound values.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every statement of a request's path (sessions, sign-ins, sends)
        // stays compiled; the default keeps 16, fewer than those.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut store = Self {
            checkpointer: None,
            conn,
            _lock: None,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Moves the copying of the write-ahead log back into the database
    /// file off the commits, to a thread of its own with a second
    /// connection keyed with `key` (see [`Checkpointer`]); for the host,
    /// whose commits hold up every ack. Stores that never call this
    /// checkpoint inside the commit that fills the log, as SQLite does.
    pub fn checkpoint_in_background(&mut self, key: &[u8; 32]) -> Result<()> {
        if self.checkpointer.is_some() {
            return Ok(());
        }
        let path = match self.conn.path() {
            Some(path) if !path.is_empty() => std::path::PathBuf::from(path),
            _ => {
                return Err(StoreError::Io(
                    "the store's file is not known (in memory, or a path that is not UTF-8)".into(),
                ));
            }
        };
        let checkpointer =
            Checkpointer::start(open_keyed(&path, key, rusqlite::OpenFlags::default())?.0)?;
        // Replaces SQLite's automatic checkpoint, which is a hook too.
        self.conn.wal_hook(Some(Checkpointer::hook(
            checkpointer.wake.clone(),
            checkpointer.shared.clone(),
        )))?;
        self.checkpointer = Some(checkpointer);
        Ok(())
    }

    /// For tests: the background thread's checkpoints so far, the commits'
    /// copies of the rest after them, the commits' copies of a log grown
    /// too long, and the log's length (pages) after the last commit.
    #[cfg(test)]
    fn background_checkpoints(&self) -> (u64, u64, u64, i32) {
        use std::sync::atomic::Ordering;
        self.checkpointer.as_ref().map_or((0, 0, 0, 0), |c| {
            (
                c.shared.runs.load(Ordering::Acquire),
                c.shared.finished.load(Ordering::Acquire),
                c.shared.behind.load(Ordering::Acquire),
                c.shared.log_pages.load(Ordering::Acquire),
            )
        })
    }

    fn migrate(&mut self) -> Result<()> {
        let applied: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        let applied = usize::try_from(applied).unwrap_or(usize::MAX);
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "the database is from a newer version (schema {applied}, this build knows {})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(i + 1).unwrap_or(i64::MAX),
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Writes the WAL back into the main file and empties it; called at
    /// shutdown. A background checkpointer is stopped first (it would make
    /// this one busy); later commits copy the log back themselves.
    pub fn checkpoint(&mut self) -> Result<()> {
        if let Some(mut checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
        // One row: busy (1 if a reader or another checkpoint stopped it),
        // the log's pages, the pages copied.
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(StoreError::Io(
                "the write-ahead log is in use and was not emptied".into(),
            ));
        }
        Ok(())
    }

    // ---- settings -------------------------------------------------------

    /// The value of a setting, if set.
    pub fn setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets a setting.
    pub fn set_setting(&self, key: &str, value: &[u8]) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The setting `key`, created with `make()` if absent (atomically).
    pub fn setting_or_insert(
        &mut self,
        key: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<Vec<u8>> = tx
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?;
        let value = match existing {
            Some(v) => v,
            None => {
                let v = make();
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)",
                    params![key, v],
                )?;
                v
            }
        };
        tx.commit()?;
        Ok(value)
    }

    /// A numeric setting, 0 if unset.
    pub fn number(&self, key: &str) -> Result<i64> {
        Ok(self
            .setting(key)?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Sets a numeric setting.
    pub fn set_number(&self, key: &str, value: i64) -> Result<()> {
        self.set_setting(key, value.to_string().as_bytes())
    }

    /// Tells a running server that an administrator changed accounts from
    /// outside it (it re-checks the sessions of its open sockets).
    pub fn bump_admin_epoch(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx
            .query_row(
                "SELECT value FROM settings WHERE key = 'admin_epoch'",
                [],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        tx.execute(
            "INSERT INTO settings (key, value) VALUES ('admin_epoch', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(current + 1).to_string().into_bytes()],
        )?;
        tx.commit()?;
        Ok(())
    }

    // ---- users ------------------------------------------------------------

    /// Creates an account if `admission` allows it. The first account is
    /// always allowed and becomes an administrator.
    pub fn create_user(&mut self, new: NewUser, admission: Admission, now: i64) -> Result<UserRow> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let first = admit(&tx, &new.username, &admission, now, true)?;
        tx.execute(
            "INSERT INTO users (username, created_at, is_admin, salt, iterations, auth_hash,
                enc_public, sig_public, enc_private_iv, enc_private_ct, sig_private_iv, sig_private_ct)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                new.username,
                now,
                first,
                new.salt,
                new.iterations,
                new.auth_hash,
                new.enc_public,
                new.sig_public,
                new.enc_private.iv.0,
                new.enc_private.ct.0,
                new.sig_private.iv.0,
                new.sig_private.ct.0
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        self.user_by_id(id)
    }

    /// What [`Store::create_user`] would refuse `username` for (a `Conflict`
    /// with its code), checked without writing, so that a refusal costs no
    /// password hash. `create_user` checks again and decides.
    pub fn admission_precheck(
        &self,
        username: &str,
        admission: &Admission,
        now: i64,
    ) -> Result<()> {
        admit(&self.conn, username, admission, now, false).map(|_| ())
    }

    /// The user with this canonical username.
    pub fn user_by_name(&self, username: &str) -> Result<Option<UserRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.username = ?1"
            ))?
            .query_row([username], |r| user_from_row(r, 0))
            .optional()?)
    }

    /// The user with this id.
    pub fn user_by_id(&self, id: i64) -> Result<UserRow> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1"
            ))?
            .query_row([id], |r| user_from_row(r, 0))
            .optional()?
            .ok_or(StoreError::NotFound)
    }

    /// Every user, by username.
    pub fn users(&self) -> Result<Vec<UserRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {USER_COLUMNS} FROM users u ORDER BY u.username"
        ))?;
        let rows = stmt.query_map([], |r| user_from_row(r, 0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sets a user's admin and disabled flags.
    pub fn set_user_flags(&self, user_id: i64, is_admin: bool, disabled: bool) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE users SET is_admin = ?2, disabled = ?3 WHERE id = ?1",
            params![user_id, is_admin, disabled],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Replaces a user's credentials and wrapped keys, and ends every session
    /// but `keep`, in one transaction. Returns the ended sessions' hashes.
    pub fn change_credentials(
        &mut self,
        user_id: i64,
        creds: NewCredentials,
        keep: &[u8; 32],
    ) -> Result<Vec<[u8; 32]>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE users SET salt = ?2, iterations = ?3, auth_hash = ?4,
                enc_private_iv = ?5, enc_private_ct = ?6, sig_private_iv = ?7, sig_private_ct = ?8
             WHERE id = ?1",
            params![
                user_id,
                creds.salt,
                creds.iterations,
                creds.auth_hash,
                creds.enc_private.iv.0,
                creds.enc_private.ct.0,
                creds.sig_private.iv.0,
                creds.sig_private.ct.0
            ],
        )?;
        let ended = Self::session_hashes(&tx, user_id, Some(keep))?;
        tx.execute(
            "DELETE FROM sessions WHERE user_id = ?1 AND token_hash != ?2",
            params![user_id, keep.as_slice()],
        )?;
        tx.commit()?;
        Ok(ended)
    }

    // ---- sessions ---------------------------------------------------------

    fn session_hashes(
        conn: &Connection,
        user_id: i64,
        except: Option<&[u8; 32]>,
    ) -> Result<Vec<[u8; 32]>> {
        let mut stmt = conn.prepare("SELECT token_hash FROM sessions WHERE user_id = ?1")?;
        let rows = stmt.query_map([user_id], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let bytes = row?;
            let hash: [u8; 32] = bytes
                .try_into()
                .map_err(|_| StoreError::Corrupt("session hash length".into()))?;
            if Some(&hash) != except {
                out.push(hash);
            }
        }
        Ok(out)
    }

    /// Records a new session.
    pub fn create_session(
        &self,
        token_hash: &[u8; 32],
        user_id: i64,
        now: i64,
        ip: &str,
    ) -> Result<()> {
        insert_session(&self.conn, token_hash, user_id, now, ip)
    }

    /// The session with this token hash, with its user.
    pub fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT s.created_at, s.last_seen, {USER_COLUMNS}
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1"
            ))?
            .query_row([token_hash.as_slice()], |r| {
                Ok(SessionRow {
                    token_hash: *token_hash,
                    created_at: r.get(0)?,
                    last_seen: r.get(1)?,
                    user: user_from_row(r, 2)?,
                })
            })
            .optional()?)
    }

    /// Marks a session as used at `now`.
    pub fn touch_session(&self, token_hash: &[u8; 32], now: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE sessions SET last_seen = ?2 WHERE token_hash = ?1")?
            .execute(params![token_hash.as_slice(), now])?;
        Ok(())
    }

    /// Every session, most recently used first.
    pub fn all_sessions(&self) -> Result<Vec<SessionInfo>> {
        let mut stmt = self.conn.prepare(
            "SELECT s.token_hash, u.username, s.created_at, s.last_seen, s.ip
             FROM sessions s JOIN users u ON u.id = s.user_id ORDER BY s.last_seen DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, user, created, seen, ip) = row?;
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("session hash length".into()))?;
            out.push(SessionInfo {
                hash,
                username: user,
                created_at: created,
                last_seen: seen,
                ip,
            });
        }
        Ok(out)
    }

    /// Ends one session.
    pub fn delete_session(&self, token_hash: &[u8; 32]) -> Result<()> {
        self.conn.execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            [token_hash.as_slice()],
        )?;
        Ok(())
    }

    /// Ends every session of a user; returns their hashes.
    pub fn delete_user_sessions(&mut self, user_id: i64) -> Result<Vec<[u8; 32]>> {
        let tx = self.conn.transaction()?;
        let ended = Self::session_hashes(&tx, user_id, None)?;
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?;
        tx.commit()?;
        Ok(ended)
    }

    // ---- invites ----------------------------------------------------------

    /// Stores an invite code's hash.
    pub fn create_invite(
        &self,
        code_hash: &[u8; 32],
        created_by: i64,
        now: i64,
        expires_at: i64,
        uses: u32,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO invites (code_hash, created_by, created_at, expires_at, uses_left) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![code_hash.as_slice(), created_by, now, expires_at, uses],
        )?;
        Ok(())
    }

    // ---- login throttling -------------------------------------------------

    /// The counters for (`kind`, `key`), zero if none.
    pub fn throttle(&self, kind: &str, key: &str) -> Result<Throttle> {
        Self::read_throttle(&self.conn, kind, key)
    }

    /// Applies `update` to the counters for (`kind`, `key`) atomically and
    /// returns the new value.
    pub fn update_throttle(
        &mut self,
        kind: &str,
        key: &str,
        update: impl FnOnce(Throttle) -> Throttle,
    ) -> Result<Throttle> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let new = update(Self::read_throttle(&tx, kind, key)?);
        Self::write_throttle(&tx, kind, key, new)?;
        tx.commit()?;
        Ok(new)
    }

    /// Counts one login attempt against every (`kind`, `key`) in `entries`,
    /// atomically: if any of them is locked at `now`, nothing changes and
    /// the latest lock end is returned as `Err`; otherwise each counter
    /// becomes `apply(kind, counter)` and the (old, new) pairs are returned.
    /// Counting before the password is checked means parallel attempts
    /// cannot slip past a lock while the first ones are being verified.
    pub fn count_attempt(
        &mut self,
        entries: &[(&str, &str)],
        now: i64,
        apply: impl Fn(&str, Throttle) -> Throttle,
    ) -> Result<std::result::Result<Vec<(Throttle, Throttle)>, i64>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut old = Vec::with_capacity(entries.len());
        for (kind, key) in entries {
            old.push(Self::read_throttle(&tx, kind, key)?);
        }
        let locked_until = old.iter().map(|t| t.locked_until).max().unwrap_or(0);
        if locked_until > now {
            return Ok(Err(locked_until));
        }
        let mut out = Vec::with_capacity(entries.len());
        for ((kind, key), before) in entries.iter().zip(old) {
            let after = apply(kind, before);
            Self::write_throttle(&tx, kind, key, after)?;
            out.push((before, after));
        }
        tx.commit()?;
        Ok(Ok(out))
    }

    /// Undoes a counted attempt that succeeded: the username's counter is
    /// cleared, and the address's goes back by one. Its lock goes back to
    /// `ip_before`'s only if it is still the one this attempt set (a lock
    /// from other failures in the meantime stays). In the same transaction
    /// (one commit), the sign-in's audit record and its session are stored.
    pub fn settle_success(
        &mut self,
        user: &str,
        ip: &str,
        ip_before: Throttle,
        ip_after: Throttle,
        sign_in: &SignIn<'_>,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("DELETE FROM throttle WHERE kind = 'user' AND key = ?1")?
            .execute([user])?;
        let current = Self::read_throttle(&tx, "ip", ip)?;
        let locked_until = if current.locked_until == ip_after.locked_until {
            ip_before.locked_until
        } else {
            current.locked_until
        };
        let restored = Throttle {
            failures: current.failures.saturating_sub(1),
            locked_until,
            ..current
        };
        Self::write_throttle(&tx, "ip", ip, restored)?;
        insert_audit(
            &tx,
            sign_in.now,
            sign_in.event,
            sign_in.actor,
            sign_in.detail,
        )?;
        insert_session(&tx, sign_in.token_hash, sign_in.user_id, sign_in.now, ip)?;
        tx.commit()?;
        Ok(())
    }

    fn read_throttle(conn: &Connection, kind: &str, key: &str) -> Result<Throttle> {
        Ok(conn
            .prepare_cached(
                "SELECT window_start, failures, locked_until FROM throttle WHERE kind = ?1 AND key = ?2",
            )?
            .query_row(params![kind, key], |r| {
                Ok(Throttle {
                    window_start: r.get(0)?,
                    failures: r.get(1)?,
                    locked_until: r.get(2)?,
                })
            })
            .optional()?
            .unwrap_or_default())
    }

    fn write_throttle(conn: &Connection, kind: &str, key: &str, t: Throttle) -> Result<()> {
        conn.prepare_cached(
            "INSERT INTO throttle (kind, key, window_start, failures, locked_until) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(kind, key) DO UPDATE SET window_start = excluded.window_start,
                failures = excluded.failures, locked_until = excluded.locked_until",
        )?
        .execute(params![kind, key, t.window_start, t.failures, t.locked_until])?;
        Ok(())
    }

    // ---- chats ------------------------------------------------------------

    /// The members of chat `?1`, in the order they joined.
    const MEMBERS_SQL: &str = "SELECT m.user_id, u.username, m.role, m.read_seq FROM members m
             JOIN users u ON u.id = m.user_id WHERE m.chat_id = ?1 ORDER BY m.joined_at, u.username";

    fn load_members(conn: &Connection, chat_id: &str) -> Result<Vec<MemberRow>> {
        let mut stmt = conn.prepare_cached(Self::MEMBERS_SQL)?;
        let rows = stmt.query_map([chat_id], |r| {
            Ok(MemberRow {
                user_id: r.get(0)?,
                username: r.get(1)?,
                role: r.get(2)?,
                read_seq: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn load_chat(conn: &Connection, chat_id: &str) -> Result<Option<ChatRow>> {
        let row = conn
            .query_row(
                concat!(
                    "SELECT c.id, c.kind, c.name, c.created_by, c.created_at, ",
                    last_seq_of_c!(),
                    " FROM chats c WHERE c.id = ?1"
                ),
                [chat_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, u64>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, kind, name, created_by, created_at, last_seq)) = row else {
            return Ok(None);
        };
        Ok(Some(ChatRow {
            members: Self::load_members(conn, &id)?,
            id,
            kind: kind_from_str(&kind)?,
            name,
            created_by,
            created_at,
            last_seq,
        }))
    }

    /// The chat with this id, with its members.
    pub fn chat(&self, chat_id: &str) -> Result<Option<ChatRow>> {
        Self::load_chat(&self.conn, chat_id)
    }

    /// Every chat `user_id` belongs to, newest first.
    pub fn chats_of(&self, user_id: i64) -> Result<Vec<ChatRow>> {
        let ids: Vec<String> = {
            let mut stmt = self.conn.prepare(
                "SELECT c.id FROM chats c JOIN members m ON m.chat_id = c.id
                 WHERE m.user_id = ?1 ORDER BY c.created_at DESC",
            )?;
            let rows = stmt.query_map([user_id], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(chat) = Self::load_chat(&self.conn, &id)? {
                out.push(chat);
            }
        }
        Ok(out)
    }

    /// The direct chat between two users, created if it does not exist.
    pub fn direct_chat(
        &mut self,
        a: i64,
        b: i64,
        new_id: &str,
        now: i64,
    ) -> Result<(ChatRow, bool)> {
        let key = format!("{}:{}", a.min(b), a.max(b));
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<String> = tx
            .query_row("SELECT id FROM chats WHERE direct_key = ?1", [&key], |r| {
                r.get(0)
            })
            .optional()?;
        let (id, created) = match existing {
            Some(id) => (id, false),
            None => {
                tx.execute(
                    "INSERT INTO chats (id, kind, name, direct_key, created_by, created_at) VALUES (?1, 'direct', NULL, ?2, ?3, ?4)",
                    params![new_id, key, a, now],
                )?;
                for user in [a, b] {
                    tx.execute(
                        "INSERT OR IGNORE INTO members (chat_id, user_id, role, joined_at) VALUES (?1, ?2, 'member', ?3)",
                        params![new_id, user, now],
                    )?;
                }
                (new_id.to_owned(), true)
            }
        };
        let chat = Self::load_chat(&tx, &id)?.ok_or(StoreError::NotFound)?;
        tx.commit()?;
        Ok((chat, created))
    }

    /// Creates a group owned by `owner` with `members` (owner included).
    pub fn create_group(
        &mut self,
        id: &str,
        name: &str,
        owner: i64,
        members: &[i64],
        now: i64,
    ) -> Result<ChatRow> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO chats (id, kind, name, direct_key, created_by, created_at) VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
            params![id, kind_str(ChatKind::Group), name, owner, now],
        )?;
        tx.execute(
            "INSERT INTO members (chat_id, user_id, role, joined_at) VALUES (?1, ?2, 'owner', ?3)",
            params![id, owner, now],
        )?;
        for &user in members.iter().filter(|&&u| u != owner) {
            tx.execute(
                "INSERT OR IGNORE INTO members (chat_id, user_id, role, joined_at) VALUES (?1, ?2, 'member', ?3)",
                params![id, user, now],
            )?;
        }
        let chat = Self::load_chat(&tx, id)?.ok_or(StoreError::NotFound)?;
        tx.commit()?;
        Ok(chat)
    }

    /// Adds a member to a group; returns the updated chat. The new member's
    /// read mark starts at the chat's last message: what came before was
    /// not sealed for them, so it is not theirs to count as unread.
    pub fn add_member(&mut self, chat_id: &str, user_id: i64, now: i64) -> Result<ChatRow> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            concat!(
                "INSERT OR IGNORE INTO members (chat_id, user_id, role, joined_at, read_seq) SELECT ?1, ?2, 'member', ?3, ",
                last_seq_of_c!(),
                " FROM chats c WHERE c.id = ?1"
            ),
            params![chat_id, user_id, now],
        )?;
        if n == 0 && Self::load_chat(&tx, chat_id)?.is_none() {
            return Err(StoreError::NotFound);
        }
        if n == 0 {
            return Err(StoreError::Conflict("already a member".into()));
        }
        let chat = Self::load_chat(&tx, chat_id)?.ok_or(StoreError::NotFound)?;
        tx.commit()?;
        Ok(chat)
    }

    /// Removes a member from a group. If the owner leaves, the longest-standing
    /// member becomes owner; if nobody is left, the chat is deleted. Returns
    /// the chat as it is now, or `None` if it was deleted.
    pub fn remove_member(&mut self, chat_id: &str, user_id: i64) -> Result<Option<ChatRow>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM members WHERE chat_id = ?1 AND user_id = ?2",
            params![chat_id, user_id],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let remaining = Self::load_members(&tx, chat_id)?;
        let result = if remaining.is_empty() {
            tx.execute("DELETE FROM chats WHERE id = ?1", [chat_id])?;
            None
        } else {
            if !remaining.iter().any(|m| m.role == "owner") {
                tx.execute(
                    "UPDATE members SET role = 'owner' WHERE chat_id = ?1 AND user_id = ?2",
                    params![chat_id, remaining[0].user_id],
                )?;
            }
            Self::load_chat(&tx, chat_id)?
        };
        tx.commit()?;
        Ok(result)
    }

    /// Renames a group.
    pub fn rename_chat(&self, chat_id: &str, name: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE chats SET name = ?2 WHERE id = ?1",
            params![chat_id, name],
        )?;
        Ok(())
    }

    /// Records that `user_id` has read `chat_id` up to `seq` (never backwards).
    pub fn set_read(&self, chat_id: &str, user_id: i64, seq: u64) -> Result<u64> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.conn.execute(
            concat!(
                "UPDATE members SET read_seq = MAX(read_seq, MIN(?3, (SELECT ",
                last_seq_of_c!(),
                " FROM chats c WHERE c.id = ?1))) WHERE chat_id = ?1 AND user_id = ?2"
            ),
            params![chat_id, user_id, seq],
        )?;
        Ok(self.conn.query_row(
            "SELECT read_seq FROM members WHERE chat_id = ?1 AND user_id = ?2",
            params![chat_id, user_id],
            |r| r.get(0),
        )?)
    }

    // ---- messages ---------------------------------------------------------

    /// Stores a message if `sender_id` is a member and `keys_for` names
    /// exactly the current members; idempotent on `id`.
    pub fn insert_message(
        &mut self,
        chat_id: &str,
        id: &str,
        sender_id: i64,
        envelope: &Envelope,
        now: i64,
    ) -> Result<Insert> {
        let envelope =
            SerializedEnvelope::new(envelope).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.insert_alone(chat_id, id, sender_id, &envelope, now)
    }

    /// Stores one message in a transaction of its own.
    fn insert_alone(
        &mut self,
        chat_id: &str,
        id: &str,
        sender_id: i64,
        envelope: &SerializedEnvelope,
        now: i64,
    ) -> Result<Insert> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = Self::insert_in(
            &tx,
            &mut HashMap::new(),
            chat_id,
            id,
            sender_id,
            envelope,
            now,
        )?;
        tx.commit()?;
        Ok(inserted)
    }

    /// Stores a batch of messages in one transaction, so one synchronous
    /// commit (one fsync) makes all of them durable: the group commit of the
    /// send path. A refusal (not a member, a duplicate…) writes nothing, so
    /// it needs no undo. Should storing fail for any message (a database
    /// error), the whole batch is rolled back and each message is stored in
    /// a transaction of its own, so one failure touches no other message.
    /// The results are in the batch's order.
    pub fn insert_messages(&mut self, batch: &[NewMessage]) -> Result<Vec<Result<Insert>>> {
        let together = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut results = Vec::with_capacity(batch.len());
            // Membership cannot change inside the transaction, so each
            // chat's members are read once per batch.
            let mut members = HashMap::new();
            for m in batch {
                results.push(Self::insert_in(
                    &tx,
                    &mut members,
                    &m.chat_id,
                    &m.id,
                    m.sender_id,
                    &m.envelope,
                    m.now,
                )?);
            }
            tx.commit()?;
            Ok(results)
        })();
        match together {
            Ok(results) => Ok(results.into_iter().map(Ok).collect()),
            Err(_) if batch.len() > 1 => Ok(batch
                .iter()
                .map(|m| self.insert_alone(&m.chat_id, &m.id, m.sender_id, &m.envelope, m.now))
                .collect()),
            Err(e) => Ok(vec![Err(e)]),
        }
    }

    fn insert_in(
        tx: &rusqlite::Connection,
        members_of: &mut HashMap<String, Arc<Vec<MemberRow>>>,
        chat_id: &str,
        id: &str,
        sender_id: i64,
        envelope: &SerializedEnvelope,
        now: i64,
    ) -> Result<Insert> {
        let existing = tx
            .prepare_cached("SELECT chat_id, sender_id, seq, ts FROM messages WHERE id = ?1")?
            .query_row([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, u64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .optional()?;
        if let Some((c, s, seq, ts)) = existing {
            return Ok(if c == chat_id && s == sender_id {
                Insert::Duplicate { seq, ts }
            } else {
                Insert::IdTaken
            });
        }
        let members = match members_of.get(chat_id) {
            Some(members) => members.clone(),
            None => {
                let members = Arc::new(Self::load_members(tx, chat_id)?);
                members_of.insert(chat_id.to_owned(), members.clone());
                members
            }
        };
        if !members.iter().any(|m| m.user_id == sender_id) {
            return Ok(Insert::NotMember);
        }
        let exact = members.len() == envelope.recipients().len()
            && members.iter().all(|m| envelope.wraps_for(&m.username));
        if !exact {
            return Ok(Insert::MembersMismatch {
                members: members.iter().map(|m| m.username.clone()).collect(),
            });
        }
        let seq: u64 = tx
            .prepare_cached(concat!(
                "SELECT ",
                last_seq_of_c!(),
                " + 1 FROM chats c WHERE c.id = ?1"
            ))?
            .query_row([chat_id], |r| r.get(0))?;
        tx.prepare_cached(
            "INSERT INTO messages (chat_id, seq, id, sender_id, ts, envelope) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![chat_id, seq, id, sender_id, now, envelope.json().get()])?;
        Ok(Insert::Stored {
            seq,
            ts: now,
            members,
        })
    }

    fn message_rows(
        &self,
        sql: &str,
        chat_id: &str,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<MessageRow>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        // Sequence numbers from clients may exceed SQLite's integers; none
        // stored ever does, so clamping keeps the comparison's meaning.
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![chat_id, seq, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sender, seq, ts, json) = row?;
            let envelope =
                serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push(MessageRow {
                id,
                chat_id: chat_id.to_owned(),
                sender,
                seq,
                ts,
                envelope,
            });
        }
        Ok(out)
    }

    /// The messages of chat `?1` with sequence numbers above `?2`, oldest
    /// first, at most `?3`.
    const MESSAGES_AFTER_SQL: &str =
        "SELECT m.id, u.username, m.seq, m.ts, m.envelope FROM messages m
             JOIN users u ON u.id = m.sender_id
             WHERE m.chat_id = ?1 AND m.seq > ?2 ORDER BY m.seq ASC LIMIT ?3";

    /// Up to `limit` messages of `chat_id` with sequence numbers above `after`,
    /// oldest first.
    pub fn messages_after(
        &self,
        chat_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<MessageRow>> {
        self.message_rows(Self::MESSAGES_AFTER_SQL, chat_id, after, limit)
    }

    /// Up to `limit` messages of `chat_id` with sequence numbers below
    /// `before`, returned oldest first.
    pub fn messages_before(
        &self,
        chat_id: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<MessageRow>> {
        let mut rows = self.message_rows(
            "SELECT m.id, u.username, m.seq, m.ts, m.envelope FROM messages m
             JOIN users u ON u.id = m.sender_id
             WHERE m.chat_id = ?1 AND m.seq < ?2 ORDER BY m.seq DESC LIMIT ?3",
            chat_id,
            before,
            limit,
        )?;
        rows.reverse();
        Ok(rows)
    }

    // ---- chat logs, retention, account reset -------------------------------

    /// Records which chat, user and session a new log file belongs to.
    pub fn record_chat_log(
        &self,
        path: &str,
        chat_id: &str,
        username: &str,
        session_id: &str,
        started_at: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO chat_logs (path, chat_id, username, session_id, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![path, chat_id, username, session_id, started_at],
        )?;
        Ok(())
    }

    /// Every recorded chat log, oldest first.
    pub fn chat_logs(&self) -> Result<Vec<ChatLogRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT l.path, l.chat_id, l.username, l.session_id, l.started_at, c.kind, c.name
             FROM chat_logs l LEFT JOIN chats c ON c.id = l.chat_id ORDER BY l.started_at, l.path",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                ChatLogRow {
                    path: r.get(0)?,
                    chat_id: r.get(1)?,
                    username: r.get(2)?,
                    session_id: r.get(3)?,
                    started_at: r.get(4)?,
                    chat_label: None,
                },
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut log, kind, name) = row?;
            log.chat_label = match kind.as_deref() {
                Some("group") => name,
                Some(_) => {
                    let members = Self::load_members(&self.conn, &log.chat_id)?;
                    Some(
                        members
                            .into_iter()
                            .map(|m| m.username)
                            .collect::<Vec<_>>()
                            .join(" & "),
                    )
                }
                None => None,
            };
            out.push(log);
        }
        Ok(out)
    }

    /// Deletes messages older than `cutoff`; returns how many went.
    ///
    /// Messages have no index on their time: rows are appended in the order
    /// the host stamps them, so the old ones are the first rowids. A binary
    /// search along the rowid finds the first message stamped at or after
    /// `cutoff`, reading a few pages instead of the whole table, and the
    /// messages before it go. The time is checked again on every row
    /// deleted, so a message is never deleted early, even if the host's
    /// clock once went back. A message stored after such a step back may
    /// then outlive the period, until the newer ones stored before it have
    /// gone too.
    ///
    /// In the same transaction, each chat that loses messages first has its
    /// `last_seq` floor raised to its newest message's number (see
    /// `last_seq_of_c!`), so its numbers keep rising after its newest
    /// messages are gone.
    pub fn prune_messages(&mut self, cutoff: i64) -> Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut first = tx.prepare_cached(
            "SELECT rowid, ts FROM messages WHERE rowid >= ?1 ORDER BY rowid LIMIT 1",
        )?;
        let mut at_or_after = |rowid: i64| -> Result<Option<(i64, i64)>> {
            Ok(first
                .query_row([rowid], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
        };
        // The cut lies in [low, high]: every row before `low` is older than
        // `cutoff`, and the first row at or after `high` (if any) is not.
        let Some((mut low, _)) = at_or_after(i64::MIN)? else {
            return Ok(0);
        };
        let mut high = tx
            .query_row("SELECT max(rowid) FROM messages", [], |r| {
                r.get::<_, i64>(0)
            })?
            .saturating_add(1);
        while low < high {
            let middle = low + (high - low) / 2;
            match at_or_after(middle)? {
                Some((rowid, ts)) if ts < cutoff && rowid < high => low = rowid.saturating_add(1),
                _ => high = middle,
            }
        }
        drop(first);
        tx.execute(
            concat!(
                "UPDATE chats AS c SET last_seq = ",
                last_seq_of_c!(),
                " WHERE c.id IN (SELECT chat_id FROM messages WHERE rowid < ?1 AND ts < ?2)"
            ),
            params![low, cutoff],
        )?;
        let deleted = tx.execute(
            "DELETE FROM messages WHERE rowid < ?1 AND ts < ?2",
            params![low, cutoff],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    /// The chat logs started before `cutoff` (paths relative to the data
    /// directory).
    pub fn chat_logs_before(&self, cutoff: i64) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT path FROM chat_logs WHERE started_at < ?1")?;
        let rows = stmt.query_map([cutoff], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets a chat log whose file is gone.
    pub fn forget_chat_log(&self, path: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM chat_logs WHERE path = ?1", [path])?;
        Ok(())
    }

    /// Starts an administrator's reset of `user_id`: the password stops
    /// working, the wrapped private keys are deleted (so the old history can
    /// no longer be opened by anyone), every session ends, and the code
    /// whose hash is given may set new credentials until `expires`.
    /// Returns the ended sessions.
    pub fn start_reset(
        &mut self,
        user_id: i64,
        code_hash: &[u8; 32],
        expires: i64,
        unusable_hash: &str,
    ) -> Result<Vec<[u8; 32]>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE users SET auth_hash = ?4, enc_private_iv = x'', enc_private_ct = x'',
                sig_private_iv = x'', sig_private_ct = x'', reset_code_hash = ?2, reset_expires = ?3
             WHERE id = ?1",
            params![user_id, code_hash.as_slice(), expires, unusable_hash],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let ended = Self::session_hashes(&tx, user_id, None)?;
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?;
        tx.commit()?;
        Ok(ended)
    }

    /// Completes a reset if `code_hash` matches the pending one at `now`:
    /// new salt, auth hash, public and wrapped private keys. `None` if there
    /// is no such pending reset.
    pub fn complete_reset(
        &mut self,
        username: &str,
        code_hash: &[u8; 32],
        now: i64,
        new: NewUser,
    ) -> Result<Option<UserRow>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pending: Option<(i64, Option<Vec<u8>>, i64)> = tx
            .query_row(
                "SELECT id, reset_code_hash, reset_expires FROM users WHERE username = ?1 AND disabled = 0",
                [username],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let id = match pending {
            Some((id, Some(stored), expires))
                if expires > now
                    && subtle::ConstantTimeEq::ct_eq(stored.as_slice(), code_hash.as_slice())
                        .into() =>
            {
                id
            }
            _ => return Ok(None),
        };
        tx.execute(
            "UPDATE users SET salt = ?2, iterations = ?3, auth_hash = ?4, enc_public = ?5, sig_public = ?6,
                enc_private_iv = ?7, enc_private_ct = ?8, sig_private_iv = ?9, sig_private_ct = ?10,
                reset_code_hash = NULL, reset_expires = 0
             WHERE id = ?1",
            params![
                id,
                new.salt,
                new.iterations,
                new.auth_hash,
                new.enc_public,
                new.sig_public,
                new.enc_private.iv.0,
                new.enc_private.ct.0,
                new.sig_private.iv.0,
                new.sig_private.ct.0
            ],
        )?;
        tx.commit()?;
        Ok(Some(self.user_by_id(id)?))
    }

    /// Deletes what nothing will read again: sessions past their idle or
    /// absolute lifetime (a session is otherwise deleted only when next
    /// presented), and throttle counters whose window and lock both ended
    /// more than `window` ago, which count as fresh ones. Returns how many
    /// sessions and counters went.
    pub fn prune_spent(
        &self,
        now: i64,
        idle: i64,
        absolute: i64,
        window: i64,
    ) -> Result<(usize, usize)> {
        let sessions = self.conn.execute(
            "DELETE FROM sessions WHERE last_seen <= ?1 OR created_at <= ?2",
            params![now.saturating_sub(idle), now.saturating_sub(absolute)],
        )?;
        let spent = now.saturating_sub(window);
        let counters = self.conn.execute(
            "DELETE FROM throttle WHERE window_start < ?1 AND locked_until < ?1",
            params![spent],
        )?;
        Ok((sessions, counters))
    }

    /// Deletes invites that are used up or expired before `now`.
    pub fn prune_invites(&self, now: i64) -> Result<()> {
        self.conn.execute(
            "DELETE FROM invites WHERE uses_left <= 0 OR expires_at <= ?1",
            [now],
        )?;
        Ok(())
    }

    // ---- files ------------------------------------------------------------

    fn file_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
        Ok(FileRow {
            id: r.get(0)?,
            chat_id: r.get(1)?,
            uploader_id: r.get(2)?,
            size: r.get(3)?,
            chunk_size: r.get(4)?,
            chunks: r.get(5)?,
            created_at: r.get(6)?,
            completed_at: r.get(7)?,
        })
    }

    const FILE_COLUMNS: &'static str =
        "id, chat_id, uploader_id, size, chunk_size, chunks, created_at, completed_at";

    /// Records a new upload if the uploader's files (finished or not) stay
    /// within `quota` bytes; `Err(Conflict("quota_exceeded"))` otherwise.
    pub fn create_file(&mut self, file: &FileRow, quota: u64) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let used: u64 = tx.query_row(
            "SELECT COALESCE(SUM(size), 0) FROM files WHERE uploader_id = ?1",
            [file.uploader_id],
            |r| r.get(0),
        )?;
        if used.saturating_add(file.size) > quota {
            return Err(StoreError::Conflict("quota_exceeded".into()));
        }
        tx.execute(
            &format!(
                "INSERT INTO files ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                Self::FILE_COLUMNS
            ),
            params![
                file.id,
                file.chat_id,
                file.uploader_id,
                file.size,
                file.chunk_size,
                file.chunks,
                file.created_at,
                file.completed_at
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The file with this id.
    pub fn file(&self, id: &str) -> Result<Option<FileRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {} FROM files WHERE id = ?1", Self::FILE_COLUMNS),
                [id],
                Self::file_from_row,
            )
            .optional()?)
    }

    /// The indexes of the chunks held for a file, ascending.
    pub fn file_chunks(&self, id: &str) -> Result<Vec<u32>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT idx FROM file_chunks WHERE file_id = ?1 ORDER BY idx")?;
        let rows = stmt.query_map([id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records that chunk `idx` is on disk.
    pub fn add_file_chunk(&self, id: &str, idx: u32) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO file_chunks (file_id, idx) VALUES (?1, ?2)",
            params![id, idx],
        )?;
        Ok(())
    }

    /// Marks an upload complete if every chunk is held; returns whether it is.
    pub fn complete_file(&mut self, id: &str, now: i64) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE files SET completed_at = COALESCE(completed_at, ?2)
             WHERE id = ?1 AND chunks = (SELECT COUNT(*) FROM file_chunks WHERE file_id = ?1)",
            params![id, now],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Deletes a file's records (its chunks on disk are the caller's).
    pub fn delete_file(&self, id: &str) -> Result<()> {
        self.conn.execute("DELETE FROM files WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Files to delete: uploads unfinished since before `stale_before`,
    /// files created before `retention_cutoff` (if any), and files whose
    /// chat is gone.
    pub fn expired_files(
        &self,
        stale_before: i64,
        retention_cutoff: Option<i64>,
    ) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT id FROM files WHERE (completed_at IS NULL AND created_at < ?1)
                OR (?2 IS NOT NULL AND created_at < ?2)",
        )?;
        let rows = stmt.query_map(params![stale_before, retention_cutoff], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every file id the store knows (to find chunk folders left behind).
    pub fn file_ids(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT id FROM files")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- audit ------------------------------------------------------------

    /// Appends a security event to the audit log.
    pub fn audit(&self, now: i64, event: &str, actor: &str, detail: &str) -> Result<()> {
        insert_audit(&self.conn, now, event, actor, detail)
    }

    /// The newest `limit` audit records, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, ts, event, actor, detail FROM audit ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                ts: r.get(1)?,
                event: r.get(2)?,
                actor: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The async handle to the store: one connection behind a mutex, each call
/// run on the blocking thread pool. A std `Mutex` is right here: it is only
/// ever locked inside `spawn_blocking`, never across an `.await`.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Mutex<Store>>,
}

impl Db {
    /// Wraps an opened store.
    pub fn new(store: Store) -> Self {
        Self {
            inner: Arc::new(Mutex::new(store)),
        }
    }

    /// Runs `f` with the store on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut store)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` with the store on the current thread; for startup and
    /// shutdown, outside the async workers.
    pub fn blocking<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        let mut store = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut store)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn user(name: &str) -> NewUser {
        let w = || WrappedKey {
            iv: vec![0; 12].into(),
            ct: vec![1; 32].into(),
        };
        NewUser {
            username: name.into(),
            salt: vec![0; 16],
            iterations: 600_000,
            auth_hash: "$argon2id$dummy".into(),
            enc_public: vec![1],
            sig_public: vec![2],
            enc_private: w(),
            sig_private: w(),
        }
    }

    /// An in-memory store with three accounts.
    fn alice_bob_and_carol() -> (Store, UserRow, UserRow, UserRow) {
        let mut s = Store::open_in_memory().unwrap();
        let [a, b, c] = ["alice", "bob", "carol"]
            .map(|name| s.create_user(user(name), Admission::Open, 1).unwrap());
        (s, a, b, c)
    }

    fn envelope(keys: &[&str]) -> Envelope {
        Envelope {
            v: 1,
            iv: vec![0; 12].into(),
            ct: vec![0; 16].into(),
            keys: keys
                .iter()
                .map(|k| (k.to_string(), vec![0; 4].into()))
                .collect(),
            sig: vec![0; 4].into(),
        }
    }

    /// What a commit of messages writes, in pages of the log: for each of
    /// `sizes`, the mean over `commits` commits of that many messages spread
    /// over 8 direct chats, after `history` messages in batches of 500.
    fn pages_per_commit(history: usize, sizes: &[usize], commits: usize) -> Vec<f64> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("securechat.db");
        let mut s = Store::open(&path, &[3u8; 32]).unwrap();
        // The log only grows: each commit's pages are its growth.
        s.conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        let frames = || {
            let log = std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
            log.saturating_sub(32) / (PAGE_SIZE as u64 + 24)
        };
        // Eight direct chats, each with an envelope of a real one's size:
        // two RSA-4096 wrapped keys, a signature, a short text (2.3 KB).
        let chats: Vec<(String, i64, Envelope)> = (0..8)
            .map(|i| {
                let [a, b] = [2 * i, 2 * i + 1].map(|u| {
                    s.create_user(user(&format!("u{u}")), Admission::Open, 1)
                        .unwrap()
                });
                let (chat, _) = s.direct_chat(a.id, b.id, &format!("chat{i}"), 2).unwrap();
                let envelope = Envelope {
                    v: 1,
                    iv: vec![1; 12].into(),
                    ct: vec![2; 150].into(),
                    keys: [a.username, b.username]
                        .into_iter()
                        .map(|k| (k, vec![3; 512].into()))
                        .collect(),
                    sig: vec![4; 512].into(),
                };
                (chat.id, a.id, envelope)
            })
            .collect();
        let mut sent = 0u32;
        let mut commit = |s: &mut Store, size: usize| {
            let batch: Vec<NewMessage> = (0..size)
                .map(|_| {
                    sent += 1;
                    let (chat, sender, envelope) = &chats[sent as usize % chats.len()];
                    NewMessage {
                        chat_id: chat.clone(),
                        // Time-ordered, as clients make them.
                        id: format!("{sent:08x}-0000-7000-8000-000000000000"),
                        sender_id: *sender,
                        envelope: SerializedEnvelope::new(envelope).unwrap(),
                        now: i64::from(sent),
                    }
                })
                .collect();
            let before = frames();
            for stored in s.insert_messages(&batch).unwrap() {
                assert!(matches!(stored.unwrap(), Insert::Stored { .. }));
            }
            frames() - before
        };
        for _ in 0..history / 500 {
            commit(&mut s, 500);
        }
        sizes
            .iter()
            .map(|&size| {
                let pages: u64 = (0..commits).map(|_| commit(&mut s, size)).sum();
                pages as f64 / commits as f64
            })
            .collect()
    }

    #[test]
    fn a_commit_writes_its_messages_and_one_index_leaf_per_chat() {
        // The log's pages of a commit of 27 messages over 8 chats: the
        // header, the new leaves of the table (3 messages to a leaf) and
        // their parent, the last leaf of the (chat, seq) index in each
        // chat, and the last leaf of the ids' index. Page counts do not
        // vary from run to run: measured 3.8 pages for a lone message,
        // 15.7 for 8 messages and 24.7 for 27; one more index on the
        // messages adds 1.0, 1.5 and 1.5, a write of the chat's row
        // 1.0 to a lone message (both tried).
        let [lone, eight, batch] = pages_per_commit(5_000, &[1, 8, 27], 40)[..] else {
            unreachable!()
        };
        assert!(lone < 4.3, "{lone} pages for a lone message");
        assert!(eight < 16.5, "{eight} pages for 8 messages in 8 chats");
        assert!(batch < 25.5, "{batch} pages for 27 messages in 8 chats");
    }

    #[test]
    fn the_log_is_copied_back_off_the_commits_and_by_the_commits_once_the_thread_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("securechat.db");
        let key = [3u8; 32];
        let mut s = Store::open(&path, &key).unwrap();
        assert!(
            Store::open_in_memory()
                .unwrap()
                .checkpoint_in_background(&key)
                .is_err()
        );
        s.checkpoint_in_background(&key).unwrap();
        s.checkpoint_in_background(&key).unwrap();
        // 64 KiB a value: an insert writes about 11 pages of 8 KiB, an
        // overwrite about 9; `fill` writes at least `pages` pages.
        let value = |i: usize| vec![u8::try_from(i % 251).unwrap(); 64 << 10];
        let mut written = 0;
        let mut fill = |s: &Store, pages: usize| {
            for _ in 0..pages.div_ceil(8) {
                s.set_setting(&format!("fill-{written}"), &value(written))
                    .unwrap();
                written += 1;
            }
        };
        // Past the log's threshold: the commits wake the thread and go on.
        // Once it has copied and synced, the next commit copies the rest,
        // and the commit after it starts the log again from its beginning,
        // although the commits never pause. Without that, these commits
        // (with the fill, about 6 200 pages) would only add to the log:
        // the commits' own copy of a long log waits for 8 000 pages.
        fill(&s, 1_200);
        let mut restarted = false;
        for i in 0..5_000 {
            s.set_setting("tick", &value(i)).unwrap();
            if s.background_checkpoints().3 < 100 {
                restarted = true;
                break;
            }
        }
        let (runs, finished, behind, pages) = s.background_checkpoints();
        assert!(
            restarted,
            "the log never started again: {pages} pages, {runs} runs, {finished} finished"
        );
        assert!(runs >= 1);
        assert!(finished >= 1);
        assert_eq!(behind, 0, "a commit copied a long log itself");
        // The thread copies at the host's own priority: lowered, it held
        // the checkpoint's lock while a busy core starved it.
        #[cfg(target_os = "linux")]
        {
            let own = crate::priority::nice_of(None);
            assert!(own.is_some());
            assert_eq!(crate::priority::nice_of(Some("db-checkpoint")), own);
        }

        // At shutdown the thread stops and the log is emptied; later
        // commits copy the log back themselves, so it starts again near
        // its threshold instead of growing.
        s.checkpoint().unwrap();
        let wal = path.with_extension("db-wal");
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        fill(&s, 2_000);
        let frame = u64::from(PAGE_SIZE) + 24;
        let limit = 32 + frame * u64::try_from(CHECKPOINT_PAGES + 100).unwrap();
        let len = std::fs::metadata(&wal).unwrap().len();
        assert!(len < limit, "the log grew to {len} bytes");

        // Nothing was lost on the way.
        drop(s);
        let s = Store::open(&path, &key).unwrap();
        for i in 0..written {
            let stored = s.setting(&format!("fill-{i}")).unwrap().unwrap();
            assert!(stored == value(i), "fill-{i} differs");
        }
    }

    #[test]
    fn a_plaintext_database_from_0_1_0_is_encrypted_in_place_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("securechat.db");
        {
            // A 0.1.0 database: schema 1, plaintext, in WAL mode.
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO settings (key, value) VALUES ('registration_mode', CAST('invite' AS BLOB))",
                [],
            )
            .unwrap();
        }
        assert!(is_plaintext(&path).unwrap());
        let key = [9u8; 32];
        let store = Store::open(&path, &key).unwrap();
        assert_eq!(
            store.setting("registration_mode").unwrap().unwrap(),
            b"invite"
        );
        assert_eq!(wal_page_size(&path), PAGE_SIZE);
        drop(store);
        assert!(!is_plaintext(&path).unwrap(), "the file is encrypted now");
        assert_eq!(readable_as(&path, &key), Some(LAYOUTS[0]));
        assert!(
            !path.with_extension("db.plaintext-backup").exists(),
            "the backup is gone"
        );
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(8).any(|w| w == b"settings"));
        assert!(matches!(
            Store::open(&path, &[8u8; 32]),
            Err(StoreError::WrongKey)
        ));
        let again = Store::open(&path, &key).unwrap();
        assert_eq!(again.number("admin_epoch").unwrap(), 0);
    }

    /// The page size SQLCipher uses for an open store (it answers
    /// `page_size` as text).
    fn page_size(store: &Store) -> u32 {
        let size: String = store
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap();
        size.parse().unwrap()
    }

    /// The page size in the header of a database's write-ahead log (the
    /// log's header is not encrypted).
    fn wal_page_size(db: &Path) -> u32 {
        let wal = std::fs::read(db.with_extension("db-wal")).unwrap();
        u32::from_be_bytes(wal[8..12].try_into().unwrap())
    }

    /// The one of [`LAYOUTS`] that reads the database at `path` when given
    /// alone to a fresh connection, if no other layout reads it too. (The
    /// other layouts' failures show in the test's output as SQLCipher's
    /// errors: its log level is the whole process's, which other tests
    /// check, so it is left alone.)
    fn readable_as(path: &Path, key: &[u8; 32]) -> Option<Layout> {
        let reads = |layout: &Layout| {
            let conn = Connection::open(path).unwrap();
            layout.key(&conn, key).unwrap();
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
                .is_ok()
        };
        let readable: Vec<Layout> = LAYOUTS.iter().filter(|l| reads(l)).copied().collect();
        match readable[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// A copy of the database at `path` and its log, taken while it is open
    /// (as a crash leaves them: the last commit only in the log), next to it
    /// as `crashed-<name>`.
    fn crash_copy(path: &Path) -> std::path::PathBuf {
        let name = path.file_name().unwrap().to_string_lossy();
        let crashed = path.with_file_name(format!("crashed-{name}"));
        std::fs::copy(path, &crashed).unwrap();
        std::fs::copy(
            path.with_extension("db-wal"),
            crashed.with_extension("db-wal"),
        )
        .unwrap();
        crashed
    }

    /// The bytes of a database and of its log.
    fn files(path: &Path) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(path).unwrap(),
            std::fs::read(path.with_extension("db-wal")).unwrap(),
        )
    }

    /// The HMAC that SQLCipher authenticates an open store's pages with.
    fn page_hmac(store: &Store) -> String {
        store
            .conn
            .pragma_query_value(None, "cipher_hmac_algorithm", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_has_8_kib_pages_authenticated_with_hmac_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let key = [3u8; 32];
        let store = Store::open(&path, &key).unwrap();
        assert_eq!(page_size(&store), PAGE_SIZE);
        assert_eq!(page_hmac(&store), PAGE_HMAC);
        assert_eq!(wal_page_size(&path), PAGE_SIZE);
        // On disk: only the new layout reads it.
        assert_eq!(readable_as(&path, &key), Some(LAYOUTS[0]));
        drop(store);
        assert!(key_opens(&path, &key));
        assert!(!key_opens(&path, &[4u8; 32]));
        assert!(matches!(
            Store::open(&path, &[4u8; 32]),
            Err(StoreError::WrongKey)
        ));
    }

    /// A database as `layout` makes it, with a setting, its last commit
    /// only in its log (as a crash leaves it), next to a copy that was
    /// closed cleanly: (cleanly closed, crashed).
    fn older_database(
        dir: &Path,
        layout: Layout,
        key: &[u8; 32],
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let path = dir.join(format!("{}-{}.db", layout.page_size, layout.hmac));
        let conn = Connection::open(&path).unwrap();
        layout.key(&conn, key).unwrap();
        let store = Store::init(conn).unwrap();
        store.set_setting("registration_mode", b"invite").unwrap();
        assert_eq!(wal_page_size(&path), layout.page_size);
        let crashed = crash_copy(&path);
        drop(store);
        assert_eq!(readable_as(&path, key), Some(layout));
        (path, crashed)
    }

    /// The layout of an open store's pages, and whether it kept the
    /// setting [`older_database`] made.
    fn layout_and_setting(store: &Store) -> (u32, String, bool) {
        let kept =
            store.setting("registration_mode").unwrap().as_deref() == Some(b"invite".as_slice());
        (page_size(store), page_hmac(store), kept)
    }

    /// The layout of a store rewritten in the current one, with its setting.
    fn current() -> (u32, String, bool) {
        (PAGE_SIZE, PAGE_HMAC.to_owned(), true)
    }

    /// The lock beside the database at `path`, held as another process's
    /// store would hold it: shared, or alone (`exclusive`) while it
    /// rewrites the database.
    fn held_by_another(path: &Path, exclusive: bool) -> std::fs::File {
        let other = std::fs::File::create(path.with_extension("db.lock")).unwrap();
        if exclusive {
            other.try_lock().unwrap();
        } else {
            other.lock_shared().unwrap();
        }
        other
    }

    /// Opens the database at `path` again and checks that it is in the
    /// current layout, with [`older_database`]'s setting and `name` set to
    /// `value`.
    fn reopens_current_with(path: &Path, key: &[u8; 32], name: &str, value: &[u8]) {
        let store = Store::open(path, key).unwrap();
        assert_eq!(store.setting(name).unwrap().as_deref(), Some(value));
        assert_eq!(layout_and_setting(&store), current());
    }

    /// The schema version of an open store.
    fn schema(store: &Store) -> i64 {
        store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_database_in_an_older_layout_is_rewritten_in_the_current_one_even_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let key = [5u8; 32];
        for old in [LAYOUTS[2], LAYOUTS[1]] {
            let (path, crashed) = older_database(dir.path(), old, &key);

            // Wrong keys, and the tries of newer layouts before each open,
            // leave the database and its log as they were, and SQLCipher's
            // log level too. Read between tries: other tests open stores at
            // the same time, and a try turns the process's log level down
            // while it runs.
            let level = |p: &Path| -> String {
                let _serial = LOG_LEVEL.lock().unwrap_or_else(|e| e.into_inner());
                Connection::open(p)
                    .unwrap()
                    .query_row("PRAGMA cipher_log_level", [], |r| r.get(0))
                    .unwrap()
            };
            let (before, level_before) = (files(&crashed), level(&crashed));
            assert!(!key_opens(&crashed, &[6u8; 32]));
            assert!(matches!(
                Store::open(&crashed, &[6u8; 32]),
                Err(StoreError::WrongKey)
            ));
            assert!(key_opens(&crashed, &key));
            assert!(files(&crashed) == before, "a try changed the files");
            assert_eq!(level(&crashed), level_before);

            // A copy that a crash cut short is begun again.
            std::fs::write(crashed.with_extension("db.relayout"), b"torn").unwrap();
            for path in [&path, &crashed] {
                let store = Store::open(path, &key).unwrap();
                // The last commit is kept, even one only in the log.
                assert_eq!(layout_and_setting(&store), current(), "{old:?}");
                assert_eq!(schema(&store), i64::try_from(MIGRATIONS.len()).unwrap());
                store.set_setting("after", b"yes").unwrap();
                assert_eq!(wal_page_size(path), PAGE_SIZE);
                drop(store);
                assert_eq!(readable_as(path, &key), Some(LAYOUTS[0]));
                assert!(!path.with_extension("db.relayout").exists());
                assert!(!key_opens(path, &[6u8; 32]));
                reopens_current_with(path, &key, "after", b"yes");
            }
        }
    }

    #[test]
    fn an_older_layout_is_left_alone_while_another_process_has_the_database_open() {
        let dir = tempfile::tempdir().unwrap();
        let key = [7u8; 32];
        let (path, _) = older_database(dir.path(), LAYOUTS[2], &key);
        // Another process's hold, as its open store keeps it.
        let other = held_by_another(&path, false);

        let first = Store::open(&path, &key).unwrap();
        let second = Store::open(&path, &key).unwrap();
        for store in [&first, &second] {
            assert_eq!(
                (page_size(store), page_hmac(store).as_str()),
                (4_096, "HMAC_SHA512")
            );
        }
        first.set_setting("from", b"first").unwrap();
        assert_eq!(second.setting("from").unwrap().unwrap(), b"first");
        // The stores hold the lock too: with the other process gone, a
        // third opener still finds the database in use.
        drop(other);
        let third = Store::open(&path, &key).unwrap();
        assert_eq!(page_size(&third), 4_096);
        drop((first, second, third));
        assert_eq!(readable_as(&path, &key), Some(LAYOUTS[2]));

        // Alone, it is rewritten; while it is open, nobody else can hold
        // the database alone.
        let alone = Store::open(&path, &key).unwrap();
        assert_eq!(page_size(&alone), PAGE_SIZE);
        assert_eq!(alone.setting("from").unwrap().unwrap(), b"first");
        // It shares the database once it is open.
        let beside = Store::open(&path, &key).unwrap();
        assert_eq!(page_size(&beside), PAGE_SIZE);
        drop(beside);
        let probe = std::fs::File::open(path.with_extension("db.lock")).unwrap();
        assert!(matches!(
            probe.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(alone);
        probe.try_lock().unwrap();
    }

    #[test]
    fn an_opener_waits_while_another_holds_the_database_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = [4u8; 32];
        let (path, _) = older_database(dir.path(), LAYOUTS[2], &key);
        // Another process in the middle of a rewrite.
        let other = held_by_another(&path, true);
        let opener = {
            let path = path.clone();
            std::thread::spawn(move || Store::open(&path, &key).map(|s| page_size(&s)))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!opener.is_finished(), "opened beside an exclusive holder");
        drop(other);
        // Then it opens the database as it finds it, and leaves any rewrite
        // to an opener that finds nobody else.
        assert_eq!(opener.join().unwrap().unwrap(), 4_096);
    }

    #[test]
    fn a_plaintext_database_is_not_encrypted_while_another_process_has_it_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.db");
        // A 0.1.0 database: schema 1, plaintext.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        drop(conn);
        let other = held_by_another(&path, false);
        let err = Store::open(&path, &[1u8; 32]).err().unwrap();
        assert!(err.to_string().contains("another process"), "{err}");
        assert!(is_plaintext(&path).unwrap(), "left as it was");
        drop(other);
        Store::open(&path, &[1u8; 32]).unwrap();
        assert!(!is_plaintext(&path).unwrap());
    }

    #[test]
    fn a_rewrite_stops_while_a_process_without_the_lock_has_the_database_open() {
        let dir = tempfile::tempdir().unwrap();
        let key = [9u8; 32];
        let old = LAYOUTS[2];
        let (path, _) = older_database(dir.path(), old, &key);
        // A build before this one: it takes no lock beside the database.
        let other = Connection::open(&path).unwrap();
        old.key(&other, &key).unwrap();
        other
            .query_row("SELECT count(*) FROM settings", [], |_| Ok(()))
            .unwrap();

        let store = Store::open(&path, &key).unwrap();
        assert_eq!(page_size(&store), 4_096);
        assert!(!path.with_extension("db.relayout").exists());
        other
            .execute(
                "INSERT INTO settings (key, value) VALUES ('other', CAST('yes' AS BLOB))",
                [],
            )
            .unwrap();
        assert_eq!(store.setting("other").unwrap().unwrap(), b"yes");
        drop((store, other));

        reopens_current_with(&path, &key, "other", b"yes");
    }

    #[test]
    fn a_rewrite_that_fails_leaves_the_database_in_its_older_layout() {
        let dir = tempfile::tempdir().unwrap();
        let key = [8u8; 32];
        let (path, _) = older_database(dir.path(), LAYOUTS[2], &key);
        // The copy cannot be made: its name is taken by a directory.
        let blocked = path.with_extension("db.relayout");
        std::fs::create_dir(&blocked).unwrap();
        let store = Store::open(&path, &key).unwrap();
        assert_eq!(
            layout_and_setting(&store),
            (4_096, "HMAC_SHA512".to_owned(), true)
        );
        store.set_setting("during", b"kept").unwrap();
        drop(store);
        assert_eq!(readable_as(&path, &key), Some(LAYOUTS[2]));
        std::fs::remove_dir(&blocked).unwrap();
        reopens_current_with(&path, &key, "during", b"kept");
    }

    #[test]
    fn first_user_is_admin_and_others_need_admission() {
        let mut s = Store::open_in_memory().unwrap();
        let a = s
            .create_user(user("alice"), Admission::FirstOnly, 1)
            .unwrap();
        assert!(a.is_admin);
        let err = s
            .create_user(user("bob"), Admission::FirstOnly, 1)
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(ref c) if c == "registration_closed"));
        let b = s.create_user(user("bob"), Admission::Open, 1).unwrap();
        assert!(!b.is_admin);
        let err = s.create_user(user("bob"), Admission::Open, 1).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(ref c) if c == "username_taken"));
    }

    #[test]
    fn invites_are_consumed_and_expire() {
        let mut s = Store::open_in_memory().unwrap();
        let a = s.create_user(user("alice"), Admission::Open, 1).unwrap();
        s.create_invite(&[7; 32], a.id, 1, 100, 1).unwrap();
        s.create_user(user("bob"), Admission::Invite([7; 32]), 50)
            .unwrap();
        let err = s
            .create_user(user("carol"), Admission::Invite([7; 32]), 50)
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(ref c) if c == "invalid_invite"));
        s.create_invite(&[8; 32], a.id, 1, 100, 5).unwrap();
        let err = s
            .create_user(user("carol"), Admission::Invite([8; 32]), 100)
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(ref c) if c == "invalid_invite"));
    }

    #[test]
    fn a_batch_is_checked_message_by_message_and_committed_once() {
        let (mut s, a, b, c) = alice_bob_and_carol();
        let (chat, _) = s.direct_chat(a.id, b.id, "chat-1", 1).unwrap();
        let m = |id: &str, sender: i64, members: &[&str], now: i64| NewMessage {
            chat_id: chat.id.clone(),
            id: id.into(),
            sender_id: sender,
            envelope: SerializedEnvelope::new(&envelope(members)).unwrap(),
            now,
        };
        let both = ["alice", "bob"];
        let results = s
            .insert_messages(&[
                m("m1", a.id, &both, 10),
                m("m1", a.id, &both, 20),
                m("m1", b.id, &both, 20),
                m("m2", c.id, &both, 20),
                m("m3", a.id, &["alice"], 20),
                m("m4", b.id, &both, 30),
            ])
            .unwrap();
        let results: Vec<Insert> = results.into_iter().map(Result::unwrap).collect();
        assert!(matches!(results[0], Insert::Stored { seq: 1, ts: 10, .. }));
        assert!(matches!(results[1], Insert::Duplicate { seq: 1, ts: 10 }));
        assert!(matches!(results[2], Insert::IdTaken));
        assert!(matches!(results[3], Insert::NotMember));
        assert!(matches!(results[4], Insert::MembersMismatch { .. }));
        assert!(matches!(results[5], Insert::Stored { seq: 2, ts: 30, .. }));
        let stored = s.messages_after(&chat.id, 0, 10).unwrap();
        assert_eq!(
            stored.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m1", "m4"]
        );
    }

    #[test]
    fn cached_statements_are_not_compiled_again_for_new_values() {
        let (mut s, a, b, c) = alice_bob_and_carol();
        let (ab, _) = s.direct_chat(a.id, b.id, "chat-ab", 1).unwrap();
        let (ac, _) = s.direct_chat(a.id, c.id, "chat-ac", 1).unwrap();
        // Batches to either chat, one after another: each reads its chat's
        // members with the cached statement and another value bound.
        for i in 0..6 {
            let (chat, to) = if i % 2 == 0 {
                (&ab, "bob")
            } else {
                (&ac, "carol")
            };
            let stored = s
                .insert_messages(&[NewMessage {
                    chat_id: chat.id.clone(),
                    id: format!("m{i}"),
                    sender_id: a.id,
                    envelope: SerializedEnvelope::new(&envelope(&["alice", to])).unwrap(),
                    now: 10 + i,
                }])
                .unwrap();
            assert!(matches!(stored[0], Ok(Insert::Stored { .. })), "{stored:?}");
        }
        // Reading each chat's messages with another chat id and limit.
        for i in 0..6 {
            let chat = if i % 2 == 0 { &ab } else { &ac };
            assert_eq!(s.messages_after(&chat.id, 0, 10 + i).unwrap().len(), 3);
        }
        for (sql, runs) in [(Store::MEMBERS_SQL, 6), (Store::MESSAGES_AFTER_SQL, 6)] {
            // The statement that ran (not one prepared afresh) ran each time
            // without being compiled again.
            let stmt = s.conn.prepare_cached(sql).unwrap();
            assert!(
                stmt.get_status(rusqlite::StatementStatus::Run) >= runs,
                "{sql}"
            );
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "compiled again: {sql}"
            );
        }
    }

    #[test]
    fn messages_are_sequenced_idempotent_and_member_checked() {
        let (mut s, a, b, c) = alice_bob_and_carol();
        let (chat, created) = s.direct_chat(a.id, b.id, "chat-1", 1).unwrap();
        assert!(created);
        let (again, created) = s.direct_chat(b.id, a.id, "chat-2", 1).unwrap();
        assert!(!created);
        assert_eq!(again.id, chat.id);

        let env = envelope(&["alice", "bob"]);
        let first = s.insert_message(&chat.id, "m1", a.id, &env, 10).unwrap();
        assert!(matches!(first, Insert::Stored { seq: 1, ts: 10, .. }));
        let dup = s.insert_message(&chat.id, "m1", a.id, &env, 20).unwrap();
        assert!(matches!(dup, Insert::Duplicate { seq: 1, ts: 10 }));
        let taken = s.insert_message(&chat.id, "m1", b.id, &env, 20).unwrap();
        assert!(matches!(taken, Insert::IdTaken));
        let outsider = s.insert_message(&chat.id, "m2", c.id, &env, 20).unwrap();
        assert!(matches!(outsider, Insert::NotMember));
        let wrong = s
            .insert_message(&chat.id, "m3", a.id, &envelope(&["alice"]), 20)
            .unwrap();
        assert!(matches!(wrong, Insert::MembersMismatch { .. }));
        let second = s.insert_message(&chat.id, "m4", b.id, &env, 30).unwrap();
        assert!(matches!(second, Insert::Stored { seq: 2, .. }));

        let after = s.messages_after(&chat.id, 0, 10).unwrap();
        assert_eq!(after.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(after[1].sender, "bob");
        let before = s.messages_before(&chat.id, 2, 10).unwrap();
        assert_eq!(
            before.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["m1"]
        );
        assert_eq!(s.set_read(&chat.id, b.id, 99).unwrap(), 2);
        assert_eq!(s.set_read(&chat.id, b.id, 1).unwrap(), 2);
    }

    /// The ids of the messages left in `chat`, in order.
    fn ids_in(s: &Store, chat: &str) -> Vec<String> {
        let left = s.messages_after(chat, 0, 1000).unwrap();
        left.into_iter().map(|m| m.id).collect()
    }

    #[test]
    fn expired_sessions_and_spent_counters_are_swept_and_live_ones_kept() {
        let (mut s, a, _, _) = alice_bob_and_carol();
        let (hour, day) = (3_600_000i64, 86_400_000i64);
        let now = 100 * day;
        // Idle 12 h, absolute 30 days, a counting window of 15 minutes.
        let (idle, absolute, window) = (12 * hour, 30 * day, 15 * 60_000);
        s.create_session(&[1; 32], a.id, now - hour, "10.0.0.1")
            .unwrap(); // live
        s.create_session(&[2; 32], a.id, now - 13 * hour, "10.0.0.1")
            .unwrap(); // idle too long
        s.create_session(&[3; 32], a.id, now - 31 * day, "10.0.0.1")
            .unwrap();
        s.touch_session(&[3; 32], now - hour).unwrap(); // in use, but too old
        let counter = |window_start, locked_until| {
            move |_: Throttle| Throttle {
                window_start,
                failures: 3,
                locked_until,
            }
        };
        s.update_throttle("user", "counting", counter(now - 60_000, 0))
            .unwrap();
        s.update_throttle("user", "locked", counter(now - 2 * hour, now + hour))
            .unwrap();
        s.update_throttle(
            "user",
            "lock-just-ended",
            counter(now - 2 * hour, now - 60_000),
        )
        .unwrap();
        s.update_throttle("ip", "10.0.0.9", counter(now - hour, now - hour))
            .unwrap();
        assert_eq!(s.prune_spent(now, idle, absolute, window).unwrap(), (2, 1));
        assert!(s.session(&[1; 32]).unwrap().is_some());
        assert!(s.session(&[2; 32]).unwrap().is_none());
        assert!(s.session(&[3; 32]).unwrap().is_none());
        for kept in ["counting", "locked", "lock-just-ended"] {
            assert_eq!(s.throttle("user", kept).unwrap().failures, 3, "{kept}");
        }
        assert_eq!(s.throttle("ip", "10.0.0.9").unwrap(), Throttle::default());
    }

    #[test]
    fn retention_cuts_along_the_rowid_and_never_deletes_a_newer_message() {
        let (mut s, a, b, _) = alice_bob_and_carol();
        let (chat, _) = s.direct_chat(a.id, b.id, "chat", 1).unwrap();
        let env = envelope(&["alice", "bob"]);
        // No index on the time: storing a message writes no page for it.
        let indexes: Vec<String> = s
            .conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert!(!indexes.iter().any(|i| i == "messages_ts"), "{indexes:?}");
        // The sweep deletes by a range of rowids, not by reading every row.
        let plan: String = s
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN DELETE FROM messages WHERE rowid < ?1 AND ts < ?2",
                [0, 0],
                |r| r.get(3),
            )
            .unwrap();
        assert!(
            plan.contains("USING INTEGER PRIMARY KEY (rowid<?)"),
            "{plan}"
        );

        // Stamped 10, 20, ..., 1000, in order.
        for i in 1..=100 {
            let stored = s
                .insert_message(&chat.id, &format!("m{i:03}"), a.id, &env, 10 * i)
                .unwrap();
            assert!(matches!(stored, Insert::Stored { .. }));
        }
        let all = ids_in(&s, &chat.id);
        // Each cut is exact, gaps left by earlier sweeps included.
        for (cutoff, gone) in [(5, 0), (10, 0), (11, 1), (255, 25), (255, 25), (600, 59)] {
            s.prune_messages(cutoff).unwrap();
            assert_eq!(ids_in(&s, &chat.id), all[gone..], "cutoff {cutoff}");
        }
        assert_eq!(s.prune_messages(2000).unwrap(), 41);
        assert!(ids_in(&s, &chat.id).is_empty());
        assert_eq!(s.prune_messages(2000).unwrap(), 0);

        // The clock went back after "late": no newer message goes early,
        // whether or not the sweep reaches "back" past "late".
        for (id, ts) in [
            ("early", 3000),
            ("late", 9000),
            ("back", 3100),
            ("then", 9100),
        ] {
            s.insert_message(&chat.id, id, a.id, &env, ts).unwrap();
        }
        s.prune_messages(5000).unwrap();
        let left = ids_in(&s, &chat.id);
        assert!(!left.contains(&"early".to_owned()), "{left:?}");
        assert!(left.ends_with(&["then".to_owned()]) && left.contains(&"late".to_owned()));
        s.prune_messages(9050).unwrap();
        assert_eq!(ids_in(&s, &chat.id), ["then"]);
    }

    /// A chat's seq as its row holds it (the floor), not as the store reads it.
    fn floor_of(s: &Store, chat: &str) -> u64 {
        s.conn
            .query_row("SELECT last_seq FROM chats WHERE id = ?1", [chat], |r| {
                r.get(0)
            })
            .unwrap()
    }

    /// Stores `ids` in `chat` from `sender`, stamped `ts`; their sequence numbers.
    fn store_all(
        s: &mut Store,
        chat: &str,
        sender: i64,
        env: &Envelope,
        ids: &[&str],
        ts: i64,
    ) -> Vec<u64> {
        ids.iter()
            .map(
                |id| match s.insert_message(chat, id, sender, env, ts).unwrap() {
                    Insert::Stored { seq, .. } => seq,
                    other => panic!("{id}: {other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn sequence_numbers_come_from_the_messages_and_keep_rising_after_the_sweep() {
        let (mut s, a, b, c) = alice_bob_and_carol();
        let (ab, _) = s.direct_chat(a.id, b.id, "ab", 1).unwrap();
        let (ac, _) = s.direct_chat(a.id, c.id, "ac", 2).unwrap();
        let to_b = envelope(&["alice", "bob"]);
        let to_c = envelope(&["alice", "carol"]);

        // Storing a message writes nothing to its chat's row.
        assert_eq!(
            store_all(&mut s, &ab.id, a.id, &to_b, &["b1", "b2", "b3"], 10),
            [1, 2, 3]
        );
        assert_eq!(
            store_all(&mut s, &ac.id, a.id, &to_c, &["c1", "c2"], 50),
            [1, 2]
        );
        assert_eq!((floor_of(&s, &ab.id), floor_of(&s, &ac.id)), (0, 0));
        assert_eq!(s.chat(&ab.id).unwrap().unwrap().last_seq, 3);
        assert_eq!(s.chat(&ac.id).unwrap().unwrap().last_seq, 2);
        let seqs = |s: &Store| -> Vec<u64> {
            s.chats_of(a.id)
                .unwrap()
                .iter()
                .map(|c| c.last_seq)
                .collect()
        };
        // Newest chat first.
        assert_eq!(seqs(&s), [2, 3]);
        // Reading is clamped to the newest message.
        assert_eq!(s.set_read(&ab.id, b.id, 99).unwrap(), 3);

        // The sweep takes every message of one chat: only that chat's
        // floor is raised, and its numbers go on from there.
        assert_eq!(s.prune_messages(20).unwrap(), 3);
        assert!(ids_in(&s, &ab.id).is_empty());
        assert_eq!((floor_of(&s, &ab.id), floor_of(&s, &ac.id)), (3, 0));
        assert_eq!(s.chat(&ab.id).unwrap().unwrap().last_seq, 3);
        assert_eq!(store_all(&mut s, &ab.id, a.id, &to_b, &["b4"], 60), [4]);
        assert_eq!(s.set_read(&ab.id, b.id, 99).unwrap(), 4);
        // A batch goes on from the same numbers, one after another.
        let batch: Vec<NewMessage> = ["b5", "c3", "b6"]
            .into_iter()
            .map(|id| NewMessage {
                chat_id: if id.starts_with('b') {
                    ab.id.clone()
                } else {
                    ac.id.clone()
                },
                id: id.to_owned(),
                sender_id: a.id,
                envelope: SerializedEnvelope::new(if id.starts_with('b') { &to_b } else { &to_c })
                    .unwrap(),
                now: 70,
            })
            .collect();
        let stored: Vec<u64> = s
            .insert_messages(&batch)
            .unwrap()
            .into_iter()
            .map(|r| match r.unwrap() {
                Insert::Stored { seq, .. } => seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(stored, [5, 3, 6]);

        // A sweep that leaves each chat's newest messages raises the floors
        // to them all the same.
        assert_eq!(s.prune_messages(65).unwrap(), 3);
        assert_eq!(ids_in(&s, &ab.id), ["b5", "b6"]);
        assert_eq!(ids_in(&s, &ac.id), ["c3"]);
        assert_eq!((floor_of(&s, &ab.id), floor_of(&s, &ac.id)), (6, 3));
        // Then everything goes: each chat keeps its newest number.
        assert_eq!(s.prune_messages(1000).unwrap(), 3);
        assert_eq!((floor_of(&s, &ab.id), floor_of(&s, &ac.id)), (6, 3));
        assert_eq!(seqs(&s), [3, 6]);
        assert_eq!(s.set_read(&ab.id, b.id, 99).unwrap(), 6);
        assert_eq!(store_all(&mut s, &ac.id, a.id, &to_c, &["c4"], 2000), [4]);

        // Finding the next number reads the newest index entry only, not
        // the chat's messages: the same steps with 1 message or 200.
        let steps = |s: &Store| -> i32 {
            let mut q = s
                .conn
                .prepare(concat!(
                    "SELECT ",
                    last_seq_of_c!(),
                    " + 1 FROM chats c WHERE c.id = ?1"
                ))
                .unwrap();
            q.query_row([&ac.id], |r| r.get::<_, u64>(0)).unwrap();
            q.get_status(rusqlite::StatementStatus::VmStep)
        };
        let one = steps(&s);
        let ids: Vec<String> = (0..199).map(|i| format!("more{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        store_all(&mut s, &ac.id, a.id, &to_c, &ids, 2000);
        assert_eq!(steps(&s), one);
    }

    #[test]
    fn groups_hand_over_ownership_and_vanish_when_empty() {
        let mut s = Store::open_in_memory().unwrap();
        let a = s.create_user(user("alice"), Admission::Open, 1).unwrap();
        let b = s.create_user(user("bob"), Admission::Open, 2).unwrap();
        let g = s
            .create_group("g1", "team", a.id, &[a.id, b.id], 3)
            .unwrap();
        assert_eq!(g.members.len(), 2);
        let g = s.remove_member("g1", a.id).unwrap().unwrap();
        assert_eq!(g.members[0].username, "bob");
        assert_eq!(g.members[0].role, "owner");
        assert!(s.remove_member("g1", b.id).unwrap().is_none());
        assert!(s.chat("g1").unwrap().is_none());
    }

    #[test]
    fn attempts_are_counted_before_checking_and_locks_refuse_them() {
        let mut s = Store::open_in_memory().unwrap();
        let bump = |_: &str, t: Throttle| Throttle {
            failures: t.failures + 1,
            locked_until: if t.failures + 1 >= 2 { 100 } else { 0 },
            ..t
        };
        let entries = [("ip", "1.2.3.4"), ("user", "alice")];
        let first = s.count_attempt(&entries, 10, bump).unwrap().unwrap();
        assert_eq!(first[1].1.failures, 1);
        let second = s.count_attempt(&entries, 10, bump).unwrap().unwrap();
        assert_eq!(second[1].1.locked_until, 100);
        assert_eq!(
            s.count_attempt(&entries, 10, bump).unwrap(),
            Err(100),
            "locked: refused, not counted"
        );
        assert_eq!(s.throttle("user", "alice").unwrap().failures, 2);
        // A success clears the name and takes the attempt back from the address.
        let alice = s.create_user(user("alice"), Admission::Open, 1).unwrap();
        let token_hash = [9u8; 32];
        let sign_in = SignIn {
            now: 20,
            event: "login",
            actor: "alice",
            detail: "ip=1.2.3.4",
            token_hash: &token_hash,
            user_id: alice.id,
        };
        s.settle_success("alice", "1.2.3.4", second[0].0, second[0].1, &sign_in)
            .unwrap();
        assert_eq!(s.throttle("user", "alice").unwrap(), Throttle::default());
        let ip = s.throttle("ip", "1.2.3.4").unwrap();
        assert_eq!((ip.failures, ip.locked_until), (1, 0));
        // The sign-in's audit record and session were stored with it.
        let audit = &s.audit_log(1).unwrap()[0];
        assert_eq!(
            (audit.event.as_str(), audit.actor.as_str()),
            ("login", "alice")
        );
        assert_eq!(s.session(&token_hash).unwrap().unwrap().user.id, alice.id);
    }
}
