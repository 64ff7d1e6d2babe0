//! Encrypted, append-only text logs: one per chat per chat session, and the
//! audit log of security events (SECURITY.md §6).
//!
//! A log file is a sequence of records, each `u32` big-endian length `L`
//! followed by `L` bytes: a 12-byte random nonce and the AES-256-GCM
//! ciphertext (tag appended) of one UTF-8 line, with AAD
//! `"securechat/v1/log/" + <path relative to the data directory> + "/" +
//! <record index>`, so records cannot be moved between files or reordered.
//! Each record is written with one `write` call: a crash loses at most the
//! record being written, and the reader reports a torn tail and keeps
//! everything before it.
//!
//! Paths name no user and no chat: `logs/<opaque chat id>/<UTC start>_<opaque
//! session id>.txt.enc` and `audit/<UTC start>_<opaque run id>.log.enc`. The
//! mapping to names lives in the encrypted store (`chat_logs`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::secrets::{open, seal};
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

/// Appends records to one log file.
pub struct Writer {
    file: File,
    key: [u8; 32],
    rel: String,
    index: u64,
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
            key,
            rel: rel.to_owned(),
            index: 0,
        })
    }

    /// Appends one line as one record, in one write.
    pub fn append(&mut self, line: &str) -> std::io::Result<()> {
        let sealed = seal(
            &self.key,
            &record_aad(&self.rel, self.index),
            line.as_bytes(),
        );
        let len =
            u32::try_from(sealed.len()).map_err(|_| std::io::Error::other("log line too long"))?;
        let mut record = Vec::with_capacity(4 + sealed.len());
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(&sealed);
        self.file.write_all(&record)?;
        self.index += 1;
        Ok(())
    }

    /// Flushes the file to disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
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

/// What the log thread is asked to do.
enum Command {
    /// A line for the log of (`session`, `chat`), opened on first use.
    Chat {
        session: String,
        user: String,
        chat: String,
        line: String,
        at: i64,
    },
    /// A member's presence changed: a line in every open log of `session`
    /// whose chat has `user` as a member.
    Presence {
        session: String,
        user: String,
        online: bool,
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
    open: HashMap<(String, String), Writer>,
    audit: Option<Writer>,
}

impl Logger {
    /// Starts the log thread for `data_dir`, with keys derived from the
    /// `logs` and `log-names` subkeys.
    pub fn start(data_dir: &Path, db: Db, key: [u8; 32], names_key: [u8; 32], now: i64) -> Self {
        let (tx, rx) = mpsc::channel();
        let mut worker = Worker {
            data_dir: data_dir.to_owned(),
            db,
            key,
            names_key,
            run_started: now,
            run_id: opaque_id(),
            open: HashMap::new(),
            audit: None,
        };
        std::thread::Builder::new()
            .name("securechat-logs".into())
            .spawn(move || {
                for command in rx {
                    if let Some(done) = worker.handle(command) {
                        let _ = done.send(());
                        break;
                    }
                }
            })
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

    /// Logs `line` (an event, never message content) in the log of this
    /// chat session and chat.
    pub fn chat(&self, session: &str, user: &str, chat: &str, line: String, at: i64) {
        self.send(Command::Chat {
            session: session.to_owned(),
            user: user.to_owned(),
            chat: chat.to_owned(),
            line,
            at,
        });
    }

    /// Logs a presence change in the session's open logs of chats `user` is in.
    pub fn presence(&self, session: &str, user: &str, online: bool, at: i64) {
        self.send(Command::Presence {
            session: session.to_owned(),
            user: user.to_owned(),
            online,
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
    fn handle(&mut self, command: Command) -> Option<mpsc::Sender<()>> {
        let result = match command {
            Command::Chat {
                session,
                user,
                chat,
                line,
                at,
            } => self.chat_line(session, &user, chat, &line, at),
            Command::Presence {
                session,
                user,
                online,
                at,
            } => self.presence(&session, &user, online, at),
            Command::End {
                session,
                reason,
                at,
            } => self.end(&session, &reason, at),
            Command::Audit { line, at } => self.audit_line(&line, at),
            Command::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
            Command::Stop(done) => {
                for writer in self.open.values().chain(self.audit.as_ref()) {
                    let _ = writer.sync();
                }
                self.open.clear();
                return Some(done);
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "writing a log failed");
        }
        None
    }

    fn chat_line(
        &mut self,
        session: String,
        user: &str,
        chat: String,
        line: &str,
        at: i64,
    ) -> std::io::Result<()> {
        let key = (session, chat);
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
                "{} session-start user={user} chat={chat} session={session}",
                timestamp(at)
            ))?;
            let (path, chat_id, username, session_id) =
                (rel, chat.clone(), user.to_owned(), session.clone());
            self.db
                .blocking(|s| s.record_chat_log(&path, &chat_id, &username, &session_id, at))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.open.insert(key.clone(), writer);
        }
        match self.open.get_mut(&key) {
            Some(writer) => writer.append(&format!("{} {line}", timestamp(at))),
            None => Ok(()),
        }
    }

    fn presence(
        &mut self,
        session: &str,
        user: &str,
        online: bool,
        at: i64,
    ) -> std::io::Result<()> {
        let chats: Vec<String> = self
            .open
            .keys()
            .filter(|(s, _)| s == session)
            .map(|(_, c)| c.clone())
            .collect();
        for chat in chats {
            let id = chat.clone();
            let member = self
                .db
                .blocking(|s| {
                    Ok(s.chat(&id)?
                        .is_some_and(|c| c.members.iter().any(|m| m.username == user)))
                })
                .unwrap_or(false);
            if member && let Some(writer) = self.open.get_mut(&(session.to_owned(), chat)) {
                let state = if online { "online" } else { "offline" };
                writer.append(&format!("{} presence user={user} {state}", timestamp(at)))?;
            }
        }
        Ok(())
    }

    fn end(&mut self, session: &str, reason: &str, at: i64) -> std::io::Result<()> {
        let keys: Vec<(String, String)> = self
            .open
            .keys()
            .filter(|(s, _)| s == session)
            .cloned()
            .collect();
        for key in keys {
            if let Some(mut writer) = self.open.remove(&key) {
                writer.append(&format!("{} session-end reason={reason}", timestamp(at)))?;
                writer.sync()?;
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
        match self.audit.as_mut() {
            Some(writer) => {
                writer.append(&format!("{} {line}", timestamp(at)))?;
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
    fn names_are_opaque_and_times_formatted() {
        let a = opaque_chat(&[1; 32], "chat-1");
        assert_eq!(a.len(), 32);
        assert_ne!(a, opaque_chat(&[2; 32], "chat-1"));
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(file_stamp(86_400_000), "19700102T000000Z");
    }
}
