//! Administration of a data directory from the command line, whether the
//! server is running or not: accounts, invites, chat logs and the audit log.
//! Changes to accounts are picked up by a running server within a second
//! (it watches the store's `admin_epoch`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::chatlog::{self, Contents, Writer};
use crate::protocol::B64;
use crate::secrets::{self, KeyringUse, MasterKey};
use crate::store::{Store, StoreError, UserRow};

pub use crate::auth::RESET_CODE_LIFETIME;

/// What can go wrong administering a data directory.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "{0} holds no SecureChat data (start `securechat host` there first, or pass --data-dir)"
    )]
    NoData(PathBuf),
    #[error("{0}")]
    Secrets(#[from] secrets::SecretsError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("there is no user named {0:?}")]
    NoSuchUser(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// One chat log as `logs list` shows it.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Relative to the data directory.
    pub path: String,
    /// When it started (ms since the epoch), if recorded.
    pub started_at: Option<i64>,
    /// The account whose chat session it records.
    pub user: Option<String>,
    /// The chat's name (group) or its members (direct chat).
    pub chat: Option<String>,
}

/// An opened data directory.
pub struct Admin {
    data_dir: PathBuf,
    store: Store,
    master: MasterKey,
    /// This run's audit log, opened on the first administrative change.
    audit: Option<Writer>,
}

/// Writes a new file readable by its owner only; an existing file (or link)
/// at `path` is an error, never overwritten.
fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents)
}

/// Parses a duration such as `30s`, `15m`, `24h` or `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, AdminError> {
    let text = text.trim();
    let invalid = || AdminError::Invalid(format!("{text:?} is not a duration like 30m, 24h or 7d"));
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(unit_at);
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(invalid()),
    };
    if secs == 0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs(secs))
}

fn now_ms() -> i64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_ms()
}

impl Admin {
    /// Opens `data_dir` with its master key found as the server finds it.
    /// Refuses a directory without data rather than creating any.
    pub fn open(data_dir: &Path) -> Result<Self, AdminError> {
        if !data_dir.join("securechat.db").exists() {
            return Err(AdminError::NoData(data_dir.to_owned()));
        }
        let env = std::env::var(secrets::MASTER_KEY_ENV).ok();
        let master = secrets::load_or_create(data_dir, env.as_deref(), KeyringUse::Ask)?;
        Self::open_with(data_dir, master)
    }

    /// Opens `data_dir` with the given master key.
    pub fn open_with(data_dir: &Path, master: MasterKey) -> Result<Self, AdminError> {
        if !data_dir.join("securechat.db").exists() {
            return Err(AdminError::NoData(data_dir.to_owned()));
        }
        secrets::check_or_record(data_dir, &master)?;
        let store = Store::open(&data_dir.join("securechat.db"), &master.subkey("db"))?;
        Ok(Self {
            data_dir: data_dir.to_owned(),
            store,
            master,
            audit: None,
        })
    }

    fn audit(&mut self, event: &str, detail: &str) -> Result<(), AdminError> {
        let now = now_ms();
        self.store.audit(now, event, "(command line)", detail)?;
        if self.audit.is_none() {
            let rel = format!(
                "audit/{}_{}.log.enc",
                chatlog::file_stamp(now),
                chatlog::opaque_id()
            );
            let writer = Writer::create(&self.data_dir, &rel, self.master.subkey("logs"))
                .map_err(|e| AdminError::Io(self.data_dir.join(&rel), e))?;
            self.audit = Some(writer);
        }
        if let Some(writer) = self.audit.as_mut() {
            let line = format!(
                "{} {event} actor=(command line) {detail}",
                chatlog::timestamp(now)
            );
            writer
                .append(&line)
                .and_then(|()| writer.sync())
                .map_err(|e| AdminError::Io(self.data_dir.join("audit"), e))?;
        }
        Ok(())
    }

    fn user(&self, name: &str) -> Result<UserRow, AdminError> {
        let canonical = name.trim().to_ascii_lowercase();
        self.store
            .user_by_name(&canonical)?
            .ok_or_else(|| AdminError::NoSuchUser(name.to_owned()))
    }

    /// Every account.
    pub fn users(&self) -> Result<Vec<UserRow>, AdminError> {
        Ok(self.store.users()?)
    }

    /// Disables or enables an account. Disabling ends its sessions, so a
    /// running server closes its sockets at once.
    pub fn set_disabled(&mut self, name: &str, disabled: bool) -> Result<(), AdminError> {
        let user = self.user(name)?;
        self.store
            .set_user_flags(user.id, user.is_admin, disabled)?;
        if disabled {
            self.store.delete_user_sessions(user.id)?;
        }
        self.store.bump_admin_epoch()?;
        let event = if disabled {
            "user_disabled"
        } else {
            "user_enabled"
        };
        self.audit(event, &format!("user={}", user.username))
    }

    /// Makes an account an administrator.
    pub fn promote(&mut self, name: &str) -> Result<(), AdminError> {
        let user = self.user(name)?;
        self.store.set_user_flags(user.id, true, user.disabled)?;
        self.audit("user_promoted", &format!("user={}", user.username))
    }

    /// Resets an account: its password stops working, its private keys are
    /// deleted (its old messages can no longer be read), its sessions end,
    /// and the returned one-time code lets its owner set a new password and
    /// new keys within [`RESET_CODE_LIFETIME`].
    pub fn reset(&mut self, name: &str) -> Result<(String, i64), AdminError> {
        let user = self.user(name)?;
        let (code, hash, expires) = crate::auth::reset_code(now_ms());
        let unusable = crate::auth::unusable_hash();
        self.store.start_reset(user.id, &hash, expires, &unusable)?;
        self.store.bump_admin_epoch()?;
        self.audit("user_reset", &format!("user={}", user.username))?;
        Ok((code, expires))
    }

    /// Creates an invite code for `uses` accounts, valid for `valid_for`.
    pub fn create_invite(
        &mut self,
        uses: u32,
        valid_for: Duration,
    ) -> Result<(String, i64), AdminError> {
        if uses == 0 || uses > 1000 {
            return Err(AdminError::Invalid(
                "--uses must be between 1 and 1000".into(),
            ));
        }
        let admin = self
            .store
            .users()?
            .into_iter()
            .find(|u| u.is_admin)
            .ok_or_else(|| AdminError::Invalid("create an administrator account first".into()))?;
        let code = B64::encode(&crate::auth::random_bytes::<16>());
        let now = now_ms();
        let expires = now + crate::auth::ms(valid_for);
        self.store.create_invite(
            &crate::auth::invite_hash(&code),
            admin.id,
            now,
            expires,
            uses,
        )?;
        self.audit(
            "invite_created",
            &format!("uses={uses} expires_at={expires}"),
        )?;
        Ok((code, expires))
    }

    /// Every chat log: those the store knows, and any file it does not.
    pub fn logs(&self) -> Result<Vec<LogEntry>, AdminError> {
        let known = self.store.chat_logs()?;
        let files = chatlog::list_files(&self.data_dir, "logs")
            .map_err(|e| AdminError::Io(self.data_dir.join("logs"), e))?;
        let mut out: Vec<LogEntry> = known
            .iter()
            .filter(|l| files.contains(&l.path))
            .map(|l| LogEntry {
                path: l.path.clone(),
                started_at: Some(l.started_at),
                user: Some(l.username.clone()),
                chat: l.chat_label.clone(),
            })
            .collect();
        for file in files {
            if !known.iter().any(|l| l.path == file) {
                out.push(LogEntry {
                    path: file,
                    started_at: None,
                    user: None,
                    chat: None,
                });
            }
        }
        Ok(out)
    }

    /// The relative path of a log named as `logs list` shows it, or by a
    /// path inside the data directory.
    fn resolve(&self, file: &str) -> Result<String, AdminError> {
        let path = Path::new(file);
        let rel = if path.is_absolute() {
            path.strip_prefix(&self.data_dir)
                .map_err(|_| {
                    AdminError::Invalid(format!("{file} is not inside {}", self.data_dir.display()))
                })?
                .to_string_lossy()
                .replace('\\', "/")
        } else {
            file.replace('\\', "/")
        };
        // Only a log that `logs list` would show: no other file, no other
        // spelling of a path (the records' AAD binds the exact path).
        let listed = ["logs", "audit"].iter().any(|sub| {
            chatlog::list_files(&self.data_dir, sub).is_ok_and(|files| files.contains(&rel))
        });
        if !listed {
            return Err(AdminError::Invalid(format!(
                "{file} is not a log (see `securechat logs list`)"
            )));
        }
        Ok(rel)
    }

    /// Decrypts one log.
    pub fn read_log(&self, file: &str) -> Result<Contents, AdminError> {
        let rel = self.resolve(file)?;
        chatlog::read(&self.data_dir, &rel, &self.master.subkey("logs"))
            .map_err(|e| AdminError::Io(self.data_dir.join(&rel), e))
    }

    /// Decrypts every chat log into `out` as plain `.txt` files, one per
    /// log, named by start time, chat and user (plus the log's own opaque
    /// ids, so no two collide); returns their paths. The folder and files
    /// are readable by their owner only, and no existing file is replaced.
    pub fn export_logs(&self, out: &Path) -> Result<Vec<PathBuf>, AdminError> {
        secrets::create_private_dir(out).map_err(|e| AdminError::Io(out.to_owned(), e))?;
        let label = |s: Option<&str>| {
            s.unwrap_or("unknown")
                .chars()
                .map(|c| {
                    if c.is_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        };
        let mut written = Vec::new();
        for entry in self.logs()? {
            let contents = self.read_log(&entry.path)?;
            let rel = Path::new(&entry.path);
            let stem = rel
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".txt.enc").to_owned())
                .unwrap_or_default();
            let chat_dir = rel
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().chars().take(8).collect::<String>())
                .unwrap_or_default();
            let name = format!(
                "{stem}_{chat_dir}_{}_{}.txt",
                label(entry.chat.as_deref()),
                label(entry.user.as_deref())
            );
            let mut text = contents.lines.join("\n");
            text.push('\n');
            if let Some(damage) = &contents.damage {
                text.push_str(&format!("# the log ends in damage, skipped: {damage}\n"));
            }
            let path = out.join(name);
            write_new_private(&path, text.as_bytes())
                .map_err(|e| AdminError::Io(path.clone(), e))?;
            written.push(path);
        }
        Ok(written)
    }

    /// Every audit log, oldest first, decrypted.
    pub fn audit_logs(&self) -> Result<Vec<(String, Contents)>, AdminError> {
        let files = chatlog::list_files(&self.data_dir, "audit")
            .map_err(|e| AdminError::Io(self.data_dir.join("audit"), e))?;
        files
            .into_iter()
            .map(|rel| {
                let contents = chatlog::read(&self.data_dir, &rel, &self.master.subkey("logs"))
                    .map_err(|e| AdminError::Io(self.data_dir.join(&rel), e))?;
                Ok((rel, contents))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "7", "d", "7w", "0h", "-1d", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_directory_without_data_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let err = Admin::open_with(dir.path(), MasterKey::from_bytes([1; 32]))
            .err()
            .unwrap();
        assert!(matches!(err, AdminError::NoData(_)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
