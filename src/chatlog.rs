//! Encrypted, append-only text logs: one per chat per chat session, and the
//! audit log of security events (SECURITY.md §6).
//!
//! A log file is a sequence of records, each `u32` big-endian length `L`
//! followed by `L` bytes: a 12-byte random nonce and the AES-256-GCM
//! ciphertext (tag appended) of one UTF-8 line, with AAD
//! `"securechat/v1/log/" + <path relative to the data directory> + "/" +
//! <record index>`, so records cannot be moved between files or reordered.
//! The log thread seals each line as it comes and writes the records of a
//! burst with one `write` call, before it waits for more: a crash loses at
//! most the lines not yet written, and the reader reports a torn tail and
//! keeps every record before it. The thread flushes the logs to disk once
//! it has written 512 KiB (`SYNC_BYTES`) since the last flush (and a log whose
//! session ends, and every audit line, at once), so a crash of the machine
//! loses at most about that much more (more only while the thread pauses
//! after flushing many logs: `SYNC_PAUSE_PER_LOG`).
//!
//! Paths name no user and no chat: `logs/<opaque chat id>/<UTC start>_<opaque
//! session id>.txt.enc` and `audit/<UTC start>_<opaque run id>.log.enc`. The
//! mapping to names lives in the encrypted store (`chat_logs`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use aes_gcm::Aes256Gcm;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::chat::LogEvent;
use crate::secrets::{open, seal_append, sealed_len};
use crate::store::Db;

/// Largest record the reader accepts; anything larger is damage.
const MAX_RECORD: usize = 1 << 20;

fn record_aad(rel: &str, index: u64) -> Vec<u8> {
    format!("securechat/v1/log/{rel}/{index}").into_bytes()
}

/// Time as the logs write it: RFC 3339 UTC with milliseconds.
pub fn timestamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

/// Time as file names carry it: `20261128T214000Z`.
pub fn file_stamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    t.format(&f).unwrap_or_default()
}

/// A random opaque id (16 hex digits).
pub fn opaque_id() -> String {
    crate::auth::random_bytes::<8>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The opaque directory name of a chat's logs: keyed, so the name says
/// nothing without the master key.
pub fn opaque_chat(names_key: &[u8; 32], chat_id: &str) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(names_key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(chat_id.as_bytes());
    mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How many record nonces are drawn from the OS in one call.
const NONCES_PER_DRAW: usize = 32;

/// Random 96-bit nonces from the OS random source, drawn [`NONCES_PER_DRAW`]
/// at a time: each is used once, as [`crate::secrets::seal`] would draw it,
/// without one system call per record.
struct Nonces {
    pool: [u8; 12 * NONCES_PER_DRAW],
    used: usize,
}

impl Nonces {
    fn new() -> Self {
        Self {
            pool: [0; 12 * NONCES_PER_DRAW],
            used: NONCES_PER_DRAW,
        }
    }

    fn next(&mut self) -> [u8; 12] {
        if self.used == NONCES_PER_DRAW {
            self.pool = crate::auth::random_bytes();
            self.used = 0;
        }
        let at = self.used * 12;
        self.used += 1;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&self.pool[at..at + 12]);
        nonce
    }
}

/// Appends records to one log file. Records are sealed as they come and
/// written together by [`Writer::write_out`] (or [`Writer::sync`], or when
/// the writer is dropped), so a burst of lines costs one `write`.
pub struct Writer {
    file: File,
    path: PathBuf,
    cipher: Aes256Gcm,
    nonces: Nonces,
    rel: String,
    /// Sealed records not yet written.
    pending: Vec<u8>,
    /// The index of the next record sealed.
    index: u64,
    /// The file's length and record count as last written in full.
    written_len: u64,
    written_index: u64,
    /// How much of the file was last flushed to disk.
    synced_len: u64,
    /// A failed write could not be cut back: the file ends in a torn
    /// record, after which nothing would be readable, so nothing more is
    /// written to it.
    broken: bool,
}

impl Writer {
    /// Creates a new log at `data_dir/rel` (its folder too, owner-only).
    pub fn create(data_dir: &Path, rel: &str, key: [u8; 32]) -> std::io::Result<Self> {
        let path = data_dir.join(rel);
        if let Some(dir) = path.parent() {
            crate::secrets::create_private_dir(dir)?;
        }
        let mut options = OpenOptions::new();
        options.append(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        Ok(Self {
            file: options.open(&path)?,
            path,
            cipher: Aes256Gcm::new(&key.into()),
            nonces: Nonces::new(),
            rel: rel.to_owned(),
            pending: Vec::new(),
            index: 0,
            written_len: 0,
            written_index: 0,
            synced_len: 0,
            broken: false,
        })
    }

    /// Seals one line as one record; it reaches the file with the next
    /// [`Writer::write_out`].
    pub fn append(&mut self, line: &str) -> std::io::Result<()> {
        let len = u32::try_from(sealed_len(line.len()))
            .ok()
            .filter(|&l| l as usize <= MAX_RECORD)
            .ok_or_else(|| std::io::Error::other("log line too long"))?;
        let start = self.pending.len();
        self.pending.extend_from_slice(&len.to_be_bytes());
        let aad = record_aad(&self.rel, self.index);
        if seal_append(
            &self.cipher,
            self.nonces.next(),
            &aad,
            line.as_bytes(),
            &mut self.pending,
        )
        .is_err()
        {
            self.pending.truncate(start);
            return Err(std::io::Error::other("sealing a log record failed"));
        }
        self.index += 1;
        Ok(())
    }

    /// Writes the sealed records in one `write`. If that fails (a full
    /// disk), the file is cut back to its last whole record and the waiting
    /// records are dropped, so the log stays readable and later records
    /// follow on; the error says how many lines were lost. If even the cut
    /// fails, the log takes no more lines.
    pub fn write_out(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = if self.broken {
            Err(std::io::Error::other(
                "the log ends in a torn record that could not be cut off",
            ))
        } else {
            self.file.write_all(&self.pending)
        };
        let (lost, bytes) = (self.index - self.written_index, self.pending.len() as u64);
        self.pending.clear();
        match result {
            Ok(()) => {
                self.written_len += bytes;
                self.written_index = self.index;
                Ok(())
            }
            Err(e) => {
                self.index = self.written_index;
                // Appending handles cannot truncate on Windows: a plain
                // write handle does.
                if !self.broken
                    && let Err(cut) = OpenOptions::new()
                        .write(true)
                        .open(&self.path)
                        .and_then(|f| f.set_len(self.written_len))
                {
                    self.broken = true;
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "{lost} log line(s) not written: {e}; cutting off the torn record failed too ({cut}), so this log takes no more lines"
                        ),
                    ));
                }
                Err(std::io::Error::new(
                    e.kind(),
                    format!("{lost} log line(s) not written: {e}"),
                ))
            }
        }
    }

    /// Writes what is pending and flushes the file to disk.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.write_out()?;
        self.file.sync_data()?;
        self.synced_len = self.written_len;
        Ok(())
    }

    /// Bytes written to the file but not yet flushed to disk.
    fn unsynced(&self) -> u64 {
        self.written_len - self.synced_len
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Err(e) = self.write_out() {
            tracing::error!(error = %e, "writing a log failed");
        }
    }
}

/// What reading a log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    /// Every complete record, in order.
    pub lines: Vec<String>,
    /// If the file ends in damage (a record cut short by a crash, or bytes
    /// that do not decrypt), what and where; everything before it is in
    /// `lines`.
    pub damage: Option<String>,
}

/// Reads and decrypts the log at `data_dir/rel`.
pub fn read(data_dir: &Path, rel: &str, key: &[u8; 32]) -> std::io::Result<Contents> {
    let mut bytes = Vec::new();
    File::open(data_dir.join(rel))?.read_to_end(&mut bytes)?;
    let mut lines = Vec::new();
    let mut at = 0usize;
    let damage = loop {
        if at == bytes.len() {
            break None;
        }
        let Some(len) = bytes.get(at..at + 4) else {
            break Some(format!("torn record at byte {at}: its length is cut short"));
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_RECORD {
            break Some(format!(
                "damaged record at byte {at}: impossible length {len}"
            ));
        }
        let Some(sealed) = bytes.get(at + 4..at + 4 + len) else {
            break Some(format!(
                "torn record at byte {at}: {} of {len} bytes present",
                bytes.len() - at - 4
            ));
        };
        let index = lines.len() as u64;
        match open(key, &record_aad(rel, index), sealed).and_then(|p| String::from_utf8(p).ok()) {
            Some(line) => lines.push(line),
            None => {
                break Some(format!(
                    "record {index} at byte {at} does not decrypt: damaged or not this log's"
                ));
            }
        }
        at += 4 + len;
    };
    Ok(Contents { lines, damage })
}

/// Every log file below `data_dir/<sub>` (relative paths, sorted).
pub fn list_files(data_dir: &Path, sub: &str) -> std::io::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            // The entry's own type: links are not followed.
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file()
                && path.extension().is_some_and(|e| e == "enc")
                && let Ok(rel) = path.strip_prefix(root)
            {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    let dir = data_dir.join(sub);
    if dir.exists() {
        walk(data_dir, &dir, &mut out)?;
    }
    out.sort();
    Ok(out)
}

/// The most lines (a command of [`Command::Events`] counts one per event,
/// any other command one) the log thread handles before it writes what they
/// sealed.
const BATCH: usize = 256;

/// How long the log thread pauses after writing, so that a busy host wakes
/// it once per pause rather than once per line.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// How many bytes the log thread writes before it flushes them to disk.
/// Left to the kernel, written logs stay in memory until they are 30
/// seconds old and then go to disk all at once: tens of megabytes on a busy
/// host. A disk that flushes everything it holds on every sync then makes
/// the store's next commit wait for all of it, hundreds of milliseconds.
/// Flushed in steps of this size, a commit waits for at most about one.
const SYNC_BYTES: u64 = 512 * 1024;

/// After a flush of N logs, the next flush waits at least N times this:
/// every log flushed costs a sync of its own, and when many logs each take
/// a few lines (a large group's members), flushes every 512 KiB would cost
/// a sync per log every few messages. So the thread flushes at most about
/// a thousand logs a second, and holds more than 512 KiB only then.
const SYNC_PAUSE_PER_LOG: std::time::Duration = std::time::Duration::from_millis(1);

/// How long a chat session's logs stay open after it ends. A message is
/// stored, and its `message-sent` line logged in its sender's session, a
/// moment after it was read from the socket, which may have closed
/// meanwhile: the line still goes to that session's log, after its
/// `session-end` line, instead of starting a second log of the same
/// session (whose name, taken in the same second, would be the first's).
const LATE_LINES: std::time::Duration = std::time::Duration::from_secs(10);

/// What the log thread is asked to do.
enum Command {
    /// What happened in one chat session of `user`, in order: a chat line
    /// goes to the log of (`session`, its chat), opened on first use; a
    /// presence change to every open log of `session` whose chat has the
    /// user who came or went as a member. A socket sends one command for
    /// all the frames of one flush (the writer one per message stored, for
    /// the sender's line), with its names shared rather than copied.
    Events {
        session: Arc<str>,
        user: Arc<str>,
        events: Vec<LogEvent>,
        at: i64,
    },
    /// The chat session ended: a last line in each of its logs, then close.
    End {
        session: String,
        reason: String,
        at: i64,
    },
    /// A line for the audit log.
    Audit { line: String, at: i64 },
    /// Answer once everything sent before has been written.
    Flush(mpsc::Sender<()>),
    /// Flush everything and stop.
    Stop(mpsc::Sender<()>),
}

impl Command {
    /// How many lines this command counts for in a [`BATCH`].
    fn lines(&self) -> usize {
        match self {
            Self::Events { events, .. } => events.len(),
            _ => 1,
        }
    }
}

/// The writer of all logs, on a thread of its own so that no socket or
/// request waits for the disk. Cheap to clone.
#[derive(Clone)]
pub struct Logger {
    tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logger")
    }
}

struct Worker {
    data_dir: PathBuf,
    db: Db,
    key: [u8; 32],
    names_key: [u8; 32],
    run_started: i64,
    run_id: String,
    /// Open chat logs by (session, chat).
    open: HashMap<(Arc<str>, Arc<str>), Writer>,
    /// Logs of chat sessions that ended, by (session, chat), with when the
    /// session ended, kept for [`LATE_LINES`].
    ended: HashMap<(Arc<str>, Arc<str>), (Writer, std::time::Instant)>,
    /// Chat sessions that ended less than [`LATE_LINES`] ago, with when.
    ended_sessions: HashMap<Arc<str>, std::time::Instant>,
    audit: Option<Writer>,
    /// The last time written out, and when: a busy host logs many lines
    /// in the same millisecond.
    last_stamp: (i64, String),
    /// Bytes written since the last flush of every log (see [`SYNC_BYTES`]).
    /// It still counts the bytes of a log flushed and closed at its
    /// session's end, so the next flush may come a little early.
    unsynced: u64,
    /// No flush before then (see [`SYNC_PAUSE_PER_LOG`]).
    next_sync: std::time::Instant,
    /// How long an ended session's logs take late lines: [`LATE_LINES`].
    late_lines: std::time::Duration,
}

impl Logger {
    /// Starts the log thread for `data_dir`, with keys derived from the
    /// `logs` and `log-names` subkeys.
    pub fn start(data_dir: &Path, db: Db, key: [u8; 32], names_key: [u8; 32], now: i64) -> Self {
        let (tx, rx) = mpsc::channel::<Command>();
        let worker = Worker::new(data_dir, db, key, names_key, now);
        std::thread::Builder::new()
            .name("securechat-logs".into())
            .spawn(move || worker.serve(&rx))
            .map(|_| ())
            .unwrap_or_else(
                |e| tracing::error!(error = %e, "cannot start the log thread; logs are off"),
            );
        Self { tx }
    }

    fn send(&self, command: Command) {
        // The thread ends only at shutdown; a line after that is dropped.
        let _ = self.tx.send(command);
    }

    /// Logs `events` (never message content) in the logs of chat session
    /// `session` of `user`: see [`LogEvent`].
    pub fn events(&self, session: &Arc<str>, user: &Arc<str>, events: Vec<LogEvent>, at: i64) {
        if events.is_empty() {
            return;
        }
        self.send(Command::Events {
            session: session.clone(),
            user: user.clone(),
            events,
            at,
        });
    }

    /// Ends a chat session's logs.
    pub fn end(&self, session: &str, reason: &str, at: i64) {
        self.send(Command::End {
            session: session.to_owned(),
            reason: reason.to_owned(),
            at,
        });
    }

    /// Appends to the audit log.
    pub fn audit(&self, line: String, at: i64) {
        self.send(Command::Audit { line, at });
    }

    /// Returns once every line handed over before has been written (or the
    /// thread is gone).
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::channel();
        self.send(Command::Flush(done_tx));
        let _ = done_rx.recv_timeout(std::time::Duration::from_secs(10));
    }

    /// Flushes and closes every log; returns when done (or the thread is gone).
    pub fn stop(&self) {
        let (done_tx, done_rx) = mpsc::channel();
        self.send(Command::Stop(done_tx));
        let _ = done_rx.recv_timeout(std::time::Duration::from_secs(10));
    }
}

impl Worker {
    /// The log thread: everything queued (up to a bound) is handled, then
    /// the sealed records are written, one `write` per log. Then the thread
    /// pauses briefly: lines that come meanwhile queue up without waking it
    /// one by one, and are written together. While ended sessions' logs
    /// wait for late lines, it wakes when they are due to close, so an idle
    /// host flushes and closes them too. Returns at `Stop`, or once every
    /// sender is gone, with the state it ends in.
    fn serve(mut self, rx: &mpsc::Receiver<Command>) -> Self {
        loop {
            let command = match self.late_lines_due() {
                None => match rx.recv() {
                    Ok(command) => command,
                    Err(_) => return self,
                },
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(command) => command,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.write_out();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return self,
                },
            };
            let mut handled = command.lines();
            let mut stop = self.handle(command);
            while stop.is_none() && handled < BATCH {
                match rx.try_recv() {
                    Ok(command) => {
                        handled += command.lines();
                        stop = self.handle(command);
                    }
                    Err(_) => break,
                }
            }
            self.write_out();
            if let Some(done) = stop {
                let _ = done.send(());
                return self;
            }
            // A full batch means more is waiting: no pause then.
            if handled < BATCH {
                std::thread::sleep(LINGER);
            }
        }
    }

    /// How long until the first ended session's logs stop waiting for late
    /// lines (zero if overdue); `None` if none wait.
    fn late_lines_due(&self) -> Option<std::time::Duration> {
        self.ended_sessions
            .values()
            .chain(self.ended.values().map(|(_, ended)| ended))
            .min()
            .map(|ended| {
                (*ended + self.late_lines).saturating_duration_since(std::time::Instant::now())
            })
    }

    fn new(data_dir: &Path, db: Db, key: [u8; 32], names_key: [u8; 32], now: i64) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            db,
            key,
            names_key,
            run_started: now,
            run_id: opaque_id(),
            open: HashMap::new(),
            ended: HashMap::new(),
            ended_sessions: HashMap::new(),
            audit: None,
            last_stamp: (0, timestamp(0)),
            unsynced: 0,
            next_sync: std::time::Instant::now(),
            late_lines: LATE_LINES,
        }
    }

    /// Every log this worker has open: the chat sessions', the audit log,
    /// and those of sessions that ended a moment ago.
    fn writers(&mut self) -> impl Iterator<Item = &mut Writer> {
        self.open
            .values_mut()
            .chain(self.audit.as_mut())
            .chain(self.ended.values_mut().map(|(writer, _)| writer))
    }

    /// Writes every log's sealed records, and once [`SYNC_BYTES`] have
    /// been written since the last flush (and [`SYNC_PAUSE_PER_LOG`] for
    /// every log it flushed has passed), flushes every log that has
    /// unflushed bytes. A flush that fails is reported, and not tried again
    /// before the next 512 KiB.
    fn write_out(&mut self) {
        let mut written = 0;
        for writer in self.writers() {
            let before = writer.written_len;
            if let Err(e) = writer.write_out() {
                tracing::error!(error = %e, "writing a log failed");
            }
            written += writer.written_len - before;
        }
        self.unsynced += written;
        // Ended sessions' logs past their late lines: flushed and closed.
        let late_lines = self.late_lines;
        self.ended_sessions
            .retain(|_, ended| ended.elapsed() < late_lines);
        self.ended.retain(|_, (writer, ended)| {
            if ended.elapsed() < late_lines {
                return true;
            }
            if let Err(e) = writer.sync() {
                tracing::error!(error = %e, "flushing a log to disk failed");
            }
            false
        });
        if self.unsynced >= SYNC_BYTES && std::time::Instant::now() >= self.next_sync {
            let mut flushed = 0u32;
            for writer in self.writers() {
                if writer.unsynced() > 0 {
                    flushed += 1;
                    if let Err(e) = writer.sync() {
                        tracing::error!(error = %e, "flushing a log to disk failed");
                    }
                }
            }
            self.unsynced = 0;
            self.next_sync = std::time::Instant::now() + SYNC_PAUSE_PER_LOG * flushed;
        }
    }

    fn handle(&mut self, command: Command) -> Option<mpsc::Sender<()>> {
        let result = match command {
            Command::Events {
                session,
                user,
                events,
                at,
            } => {
                // A line that fails is reported and the next still written.
                let stamp = self.stamp(at);
                for event in events {
                    let written = match event {
                        LogEvent::Chat { chat, line } => {
                            self.chat_line(&session, &user, chat, &line, at, &stamp)
                        }
                        LogEvent::Presence {
                            user: member,
                            online,
                        } => self.presence(&session, &member, online, &stamp),
                    };
                    if let Err(e) = written {
                        tracing::error!(error = %e, "writing a log failed");
                    }
                }
                Ok(())
            }
            Command::End {
                session,
                reason,
                at,
            } => self.end(&session, &reason, at),
            Command::Audit { line, at } => self.audit_line(&line, at),
            Command::Flush(done) => {
                self.write_out();
                let _ = done.send(());
                Ok(())
            }
            Command::Stop(done) => {
                for writer in self.writers() {
                    if let Err(e) = writer.sync() {
                        tracing::error!(error = %e, "writing a log failed");
                    }
                }
                self.open.clear();
                self.ended.clear();
                self.ended_sessions.clear();
                return Some(done);
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "writing a log failed");
        }
        None
    }

    /// [`timestamp`]`(at)`, written again only when `at` changes.
    fn stamp(&mut self, at: i64) -> String {
        if self.last_stamp.0 != at {
            self.last_stamp = (at, timestamp(at));
        }
        self.last_stamp.1.clone()
    }

    fn chat_line(
        &mut self,
        session: &Arc<str>,
        user: &str,
        chat: Arc<str>,
        line: &str,
        at: i64,
        stamp: &str,
    ) -> std::io::Result<()> {
        let key = (session.clone(), chat);
        if let Some((writer, _)) = self.ended.get_mut(&key) {
            // A message the session sent, stored after the session ended.
            return writer.append(&format!("{stamp} {line}"));
        }
        if !self.open.contains_key(&key) {
            let (session, chat) = (&key.0, &key.1);
            let rel = format!(
                "logs/{}/{}_{}.txt.enc",
                opaque_chat(&self.names_key, chat),
                file_stamp(at),
                session
            );
            let mut writer = Writer::create(&self.data_dir, &rel, self.key)?;
            writer.append(&format!(
                "{stamp} session-start user={user} chat={chat} session={session}"
            ))?;
            let (path, chat_id, username, session_id) =
                (rel, chat.to_string(), user.to_owned(), session.to_string());
            self.db
                .blocking(|s| s.record_chat_log(&path, &chat_id, &username, &session_id, at))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            // The first line of a session that already ended (its message
            // stored after its socket closed): closed with its session's
            // other logs, not kept open for a session end that came already.
            if let Some(&ended) = self.ended_sessions.get(&key.0) {
                writer.append(&format!("{stamp} {line}"))?;
                self.ended.insert(key, (writer, ended));
                return Ok(());
            }
            self.open.insert(key.clone(), writer);
        }
        match self.open.get_mut(&key) {
            Some(writer) => writer.append(&format!("{stamp} {line}")),
            None => Ok(()),
        }
    }

    fn presence(
        &mut self,
        session: &Arc<str>,
        user: &str,
        online: bool,
        stamp: &str,
    ) -> std::io::Result<()> {
        let chats: Vec<Arc<str>> = self
            .open
            .keys()
            .filter(|(s, _)| s == session)
            .map(|(_, c)| c.clone())
            .collect();
        for chat in chats {
            let member = self
                .db
                .blocking(|s| {
                    Ok(s.chat(&chat)?
                        .is_some_and(|c| c.members.iter().any(|m| m.username == user)))
                })
                .unwrap_or(false);
            if member && let Some(writer) = self.open.get_mut(&(session.clone(), chat)) {
                let state = if online { "online" } else { "offline" };
                writer.append(&format!("{stamp} presence user={user} {state}"))?;
            }
        }
        Ok(())
    }

    fn end(&mut self, session: &str, reason: &str, at: i64) -> std::io::Result<()> {
        let keys: Vec<(Arc<str>, Arc<str>)> = self
            .open
            .keys()
            .filter(|(s, _)| **s == *session)
            .cloned()
            .collect();
        let stamp = self.stamp(at);
        let now = std::time::Instant::now();
        self.ended_sessions.insert(Arc::from(session), now);
        for key in keys {
            if let Some(mut writer) = self.open.remove(&key) {
                writer.append(&format!("{stamp} session-end reason={reason}"))?;
                writer.sync()?;
                self.ended.insert(key, (writer, now));
            }
        }
        Ok(())
    }

    fn audit_line(&mut self, line: &str, at: i64) -> std::io::Result<()> {
        if self.audit.is_none() {
            let rel = format!(
                "audit/{}_{}.log.enc",
                file_stamp(self.run_started),
                self.run_id
            );
            self.audit = Some(Writer::create(&self.data_dir, &rel, self.key)?);
        }
        let stamp = self.stamp(at);
        match self.audit.as_mut() {
            Some(writer) => {
                writer.append(&format!("{stamp} {line}"))?;
                // Security events are few and matter: each reaches the disk.
                writer.sync()
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store where alice has direct chats `c-bob` and `c-carol`.
    fn alice_with_two_chats() -> Db {
        use crate::store::{Admission, Store, tests::user};
        let mut store = Store::open_in_memory().unwrap();
        let [alice, bob, carol] = ["alice", "bob", "carol"]
            .map(|name| store.create_user(user(name), Admission::Open, 1).unwrap());
        store.direct_chat(alice.id, bob.id, "c-bob", 1).unwrap();
        store.direct_chat(alice.id, carol.id, "c-carol", 1).unwrap();
        Db::new(store)
    }

    #[test]
    fn a_sessions_events_reach_its_logs_in_order_and_presence_only_where_a_member() {
        let dir = tempfile::tempdir().unwrap();
        let db = alice_with_two_chats();
        let key = [7u8; 32];
        let logger = Logger::start(dir.path(), db.clone(), key, [8u8; 32], 1);

        let (session, me): (Arc<str>, Arc<str>) = (Arc::from("s1"), Arc::from("alice"));
        let line = |chat: &str, line: &str| LogEvent::Chat {
            chat: Arc::from(chat),
            line: Arc::from(line),
        };
        let at = 1_767_225_600_000; // 2026-01-01T00:00:00.000Z
        logger.events(
            &session,
            &me,
            vec![
                line("c-bob", "first"),
                line("c-carol", "to carol"),
                LogEvent::Presence {
                    user: Arc::from("bob"),
                    online: true,
                },
                line("c-bob", "second"),
            ],
            at,
        );
        // Bob's own session has a log of the same chat: nothing of Alice's
        // session goes there, nor does her session's end close it.
        let (bobs, bob_name): (Arc<str>, Arc<str>) = (Arc::from("s2"), Arc::from("bob"));
        logger.events(&bobs, &bob_name, vec![line("c-bob", "bob's")], at);
        logger.events(&session, &me, Vec::new(), at + 1);
        logger.events(&session, &me, vec![line("c-bob", "third")], at + 2);
        logger.end("s1", "gone", at + 3);
        // A message the session sent, stored after it ended: into the same
        // log, not a second one (which would have had the first one's name).
        logger.events(&session, &me, vec![line("c-bob", "stored late")], at + 4);
        // The first line of an ended session in a chat: a log of its own,
        // closed with the session's others (none is left open for good).
        logger.events(&session, &me, vec![line("c-dave", "first late")], at + 5);
        logger.stop();
        let t = |ms: i64| timestamp(at + ms);

        let logs = db.blocking(|s| s.chat_logs()).unwrap();
        assert_eq!(logs.len(), 4, "{logs:?}");
        let read_log = |chat: &str, session: &str| {
            let row = logs
                .iter()
                .find(|l| l.chat_id == chat && l.session_id == session)
                .unwrap();
            let user = if session == "s1" { "alice" } else { "bob" };
            assert_eq!(row.username, user);
            let contents = read(dir.path(), &row.path, &key).unwrap();
            assert_eq!(contents.damage, None);
            contents.lines
        };
        assert_eq!(
            read_log("c-bob", "s1"),
            [
                format!("{} session-start user=alice chat=c-bob session=s1", t(0)),
                format!("{} first", t(0)),
                format!("{} presence user=bob online", t(0)),
                format!("{} second", t(0)),
                format!("{} third", t(2)),
                format!("{} session-end reason=gone", t(3)),
                format!("{} stored late", t(4)),
            ]
        );
        // Bob is not in the chat with Carol: no presence line there.
        assert_eq!(
            read_log("c-carol", "s1"),
            [
                format!("{} session-start user=alice chat=c-carol session=s1", t(0)),
                format!("{} to carol", t(0)),
                format!("{} session-end reason=gone", t(3)),
            ]
        );
        assert_eq!(
            read_log("c-dave", "s1"),
            [
                format!("{} session-start user=alice chat=c-dave session=s1", t(5)),
                format!("{} first late", t(5)),
            ]
        );
        assert_eq!(
            read_log("c-bob", "s2"),
            [
                format!("{} session-start user=bob chat=c-bob session=s2", t(0)),
                format!("{} bob's", t(0)),
            ]
        );
    }

    #[test]
    fn an_ended_sessions_late_lines_leave_no_log_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut worker = Worker::new(dir.path(), alice_with_two_chats(), [7u8; 32], [8u8; 32], 1);
        let (session, me): (Arc<str>, Arc<str>) = (Arc::from("s1"), Arc::from("alice"));
        let events = |chat: &str| Command::Events {
            session: session.clone(),
            user: me.clone(),
            events: vec![LogEvent::Chat {
                chat: Arc::from(chat),
                line: Arc::from("message-sent"),
            }],
            at: 1_767_225_600_000,
        };
        assert!(worker.handle(events("c-bob")).is_none());
        worker.handle(Command::End {
            session: "s1".into(),
            reason: "gone".into(),
            at: 1_767_225_600_001,
        });
        // A late line where the session had a log, and one where it had none.
        worker.handle(events("c-bob"));
        worker.handle(events("c-carol"));
        worker.write_out();
        assert!(worker.open.is_empty());
        assert_eq!(worker.ended.len(), 2);
        assert_eq!(worker.ended_sessions.len(), 1);
    }

    #[test]
    fn an_idle_log_thread_closes_ended_sessions_logs_when_their_late_lines_are_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut worker = Worker::new(dir.path(), alice_with_two_chats(), [7u8; 32], [8u8; 32], 1);
        worker.late_lines = std::time::Duration::from_millis(20);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || worker.serve(&rx));
        tx.send(Command::Events {
            session: Arc::from("s1"),
            user: Arc::from("alice"),
            events: vec![LogEvent::Chat {
                chat: Arc::from("c-bob"),
                line: Arc::from("message-sent"),
            }],
            at: 1_767_225_600_000,
        })
        .unwrap();
        tx.send(Command::End {
            session: "s1".into(),
            reason: "gone".into(),
            at: 1_767_225_600_001,
        })
        .unwrap();
        // Nothing more comes; well past the late lines, the thread is asked to end.
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(tx);
        let worker = thread.join().unwrap();
        assert!(worker.open.is_empty());
        assert!(worker.ended.is_empty());
        assert!(worker.ended_sessions.is_empty());
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let key = [5u8; 32];
        let rel = "logs/abc/20260101T000000Z_s1.txt.enc";
        let mut w = Writer::create(dir.path(), rel, key).unwrap();
        for i in 0..3 {
            w.append(&format!("line {i}")).unwrap();
        }
        drop(w);
        let full = read(dir.path(), rel, &key).unwrap();
        assert_eq!(full.lines, vec!["line 0", "line 1", "line 2"]);
        assert_eq!(full.damage, None);

        // A crash in the middle of the fourth record.
        let path = dir.path().join(rel);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&100u32.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let torn = read(dir.path(), rel, &key).unwrap();
        assert_eq!(torn.lines.len(), 3);
        assert!(torn.damage.unwrap().contains("torn record"));

        // Another key, or the same records under another name, do not open.
        assert_eq!(read(dir.path(), rel, &[6u8; 32]).unwrap().lines.len(), 0);
        let other = "logs/abc/other.txt.enc";
        std::fs::copy(&path, dir.path().join(other)).unwrap();
        assert!(read(dir.path(), other, &key).unwrap().damage.is_some());
    }

    #[test]
    fn the_log_thread_flushes_every_log_once_sync_bytes_are_written() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let db = alice_with_two_chats();
        let mut worker = Worker::new(dir.path(), db, [7u8; 32], [8u8; 32], 1);
        let (session, me): (Arc<str>, Arc<str>) = (Arc::from("s1"), Arc::from("alice"));
        let text: Arc<str> = Arc::from("x".repeat(1000));
        // Writes `n` lines to `chat`'s log, as one burst of the thread.
        let burst = |worker: &mut Worker, chat: &str, n: usize| {
            let events = (0..n)
                .map(|_| LogEvent::Chat {
                    chat: Arc::from(chat),
                    line: text.clone(),
                })
                .collect();
            let command = Command::Events {
                session: session.clone(),
                user: me.clone(),
                events,
                at: 1_767_225_600_000,
            };
            assert!(worker.handle(command).is_none());
            worker.write_out();
        };
        let state = |worker: &Worker, chat: &str| {
            let writer = &worker.open[&(Arc::from("s1"), Arc::from(chat))];
            (writer.written_len, writer.unsynced())
        };

        // A few lines to bob's log; then bursts of about 64 KB to carol's,
        // as the thread writes them, until 512 KiB have been written in
        // all. Until then, nothing is flushed.
        burst(&mut worker, "c-bob", 10);
        let (bob_written, _) = state(&worker, "c-bob");
        let (mut bursts, mut per_burst) = (0, 0);
        while bursts == 0 || worker.unsynced + per_burst < SYNC_BYTES {
            let before = worker.unsynced;
            burst(&mut worker, "c-carol", 64);
            (bursts, per_burst) = (bursts + 1, worker.unsynced - before);
            assert_eq!(state(&worker, "c-bob"), (bob_written, bob_written));
            let (carol_written, carol_unsynced) = state(&worker, "c-carol");
            assert_eq!(carol_unsynced, carol_written);
            assert_eq!(worker.unsynced, bob_written + carol_written);
        }
        assert!(bursts >= 6, "{bursts}");

        // The burst that crosses 512 KiB flushes every log with unflushed
        // bytes, bob's few lines included.
        burst(&mut worker, "c-carol", 64);
        assert_eq!(state(&worker, "c-bob"), (bob_written, 0));
        assert_eq!(state(&worker, "c-carol").1, 0);
        assert_eq!(worker.unsynced, 0);

        // Until the pause after the last flush is over, more than 512 KiB
        // may wait.
        worker.next_sync = Instant::now() + Duration::from_secs(3600);
        burst(&mut worker, "c-carol", 600);
        assert!(worker.unsynced >= SYNC_BYTES);
        assert!(state(&worker, "c-carol").1 >= SYNC_BYTES);
        // Then the next burst flushes both logs, and the next flush waits
        // for a pause of two logs.
        worker.next_sync = Instant::now();
        let before = Instant::now();
        burst(&mut worker, "c-bob", 1);
        assert_eq!(
            (state(&worker, "c-carol").1, state(&worker, "c-bob").1),
            (0, 0)
        );
        assert!(worker.next_sync >= before + SYNC_PAUSE_PER_LOG * 2);
        assert!(worker.next_sync <= Instant::now() + SYNC_PAUSE_PER_LOG * 2);

        // Every record is there.
        for (chat, n) in [("c-bob", 11), ("c-carol", 64 * (bursts + 1) + 600)] {
            let rel = worker.open[&(session.clone(), Arc::from(chat))].rel.clone();
            let contents = read(dir.path(), &rel, &[7u8; 32]).unwrap();
            assert_eq!((contents.lines.len(), contents.damage), (n + 1, None));
        }
    }

    #[test]
    fn records_wait_for_one_write_and_a_failed_write_loses_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let key = [7u8; 32];
        let rel = "logs/abc/20260101T000000Z_s2.txt.enc";
        let path = dir.path().join(rel);
        let mut w = Writer::create(dir.path(), rel, key).unwrap();
        w.append("kept 0").unwrap();
        w.append("kept 1").unwrap();
        assert!(!w.pending.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        w.write_out().unwrap();
        assert!(w.pending.is_empty());
        let written = std::fs::metadata(&path).unwrap().len();

        // A write that fails part-way (here: a handle that cannot write,
        // after a torn piece reached the file) drops only the lines it
        // carried, says so, and cuts the torn piece off.
        let writable = std::mem::replace(&mut w.file, File::open(&path).unwrap());
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[0, 0, 1])
            .unwrap();
        w.append("lost").unwrap();
        let err = w.write_out().unwrap_err();
        assert!(
            err.to_string().contains("1 log line(s) not written"),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), written);

        // Later lines follow on, and a dropped writer writes what it holds.
        w.file = writable;
        w.append("kept 2").unwrap();
        drop(w);
        let contents = read(dir.path(), rel, &key).unwrap();
        assert_eq!(contents.lines, vec!["kept 0", "kept 1", "kept 2"]);
        assert_eq!(contents.damage, None);

        // If the torn piece cannot be cut off, the log takes no more lines.
        let rel = "logs/abc/20260101T000000Z_s3.txt.enc";
        let mut w = Writer::create(dir.path(), rel, key).unwrap();
        w.append("kept").unwrap();
        w.write_out().unwrap();
        let writable = std::mem::replace(&mut w.file, File::open(dir.path().join(rel)).unwrap());
        w.path = dir.path().join("no such folder/log");
        w.append("lost").unwrap();
        assert!(
            w.write_out()
                .unwrap_err()
                .to_string()
                .contains("takes no more lines")
        );
        w.file = writable;
        w.append("refused").unwrap();
        assert!(w.write_out().is_err());
        drop(w);
        assert_eq!(read(dir.path(), rel, &key).unwrap().lines, vec!["kept"]);

        // A line too long for the reader is refused, not written.
        let mut w = Writer::create(dir.path(), "logs/abc/long.txt.enc", key).unwrap();
        assert!(w.append(&"x".repeat(MAX_RECORD)).is_err());
        assert!(w.pending.is_empty());
    }

    #[test]
    fn record_nonces_are_never_reused() {
        let mut nonces = Nonces::new();
        let drawn: std::collections::HashSet<[u8; 12]> = (0..3 * NONCES_PER_DRAW + 1)
            .map(|_| nonces.next())
            .collect();
        assert_eq!(drawn.len(), 3 * NONCES_PER_DRAW + 1);
    }

    #[test]
    fn names_are_opaque_and_times_formatted() {
        let a = opaque_chat(&[1; 32], "chat-1");
        assert_eq!(a.len(), 32);
        assert_ne!(a, opaque_chat(&[2; 32], "chat-1"));
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(file_stamp(86_400_000), "19700102T000000Z");
    }
}
