//! The master key of a data directory and the keys derived from it
//! (SECURITY.md §6).
//!
//! One random 32-byte master key per data directory. Where it comes from, in
//! this order (the first that applies wins):
//! 1. `SECURECHAT_MASTER_KEY`: 32 bytes in base64 (standard or URL-safe,
//!    padded or not). Never written anywhere. For servers and CI.
//! 2. The key file `<data>/master.key`, if it exists: 32 raw bytes, readable
//!    only by its owner (on Unix a group- or world-readable file is refused).
//! 3. The OS keyring: Windows Credential Manager, the macOS Keychain, or the
//!    Secret Service on Linux; service `SecureChat`, one entry per data
//!    directory.
//! 4. Nothing found and the directory holds no data yet: a new key is made
//!    and stored in the keyring; where no keyring answers, in the key file.
//! 5. Nothing found but the directory holds data: an error. A new key would
//!    make the existing data unreadable, so none is made.
//!
//! A key-check record (`<data>/keycheck`) proves the key is the one the data
//! was written with, before anything in the directory is opened or changed.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use hkdf::Hkdf;
use sha2::Sha256;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::client::crypto::aes_gcm_decrypt;

/// The environment variable that supplies the master key.
pub const MASTER_KEY_ENV: &str = "SECURECHAT_MASTER_KEY";
/// The keyring service name.
pub const KEYRING_SERVICE: &str = "SecureChat";
const KEYCHECK_PLAINTEXT: &[u8] = b"SecureChat key check v1";
const KEYCHECK_AAD: &[u8] = b"securechat/v1/keycheck";

/// What can go wrong finding the master key.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "the data in {0} was encrypted with another key: start with the key it was made with (SECURECHAT_MASTER_KEY, {0}/master.key or this user's keyring)"
    )]
    WrongKey(PathBuf),
    #[error(
        "the data in {0} is encrypted, but its key is not here: set SECURECHAT_MASTER_KEY, restore {0}/master.key, or sign in as the user whose keyring holds it"
    )]
    KeyMissing(PathBuf),
    #[error("SECURECHAT_MASTER_KEY must be 32 bytes in base64")]
    BadEnvKey,
    #[error("{0} must hold exactly 32 bytes")]
    BadKeyFile(PathBuf),
    #[error("{0} can be read by other users; make it readable by its owner only (chmod 600)")]
    KeyFileTooOpen(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} is damaged")]
    BadKeyCheck(PathBuf),
}

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `SECURECHAT_MASTER_KEY`.
    Environment,
    /// The OS keyring.
    Keyring,
    /// `<data>/master.key`.
    KeyFile(PathBuf),
    /// Given by the caller (tests, tools).
    Supplied,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Environment => write!(f, "the SECURECHAT_MASTER_KEY environment variable"),
            Self::Keyring => write!(f, "the operating system's keyring"),
            Self::KeyFile(p) => write!(f, "the key file {}", p.display()),
            Self::Supplied => write!(f, "the caller"),
        }
    }
}

/// A data directory's master key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    /// Where it came from, for the one announcement at start.
    pub source: KeySource,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A key given directly (tests and tools).
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self {
            key,
            source: KeySource::Supplied,
        }
    }

    /// The subkey for `purpose`: HKDF-SHA256(master, info =
    /// "securechat/v1/" + purpose), 32 bytes.
    pub fn subkey(&self, purpose: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(None, &self.key);
        let mut out = [0u8; 32];
        let info = format!("securechat/v1/{purpose}");
        // 32 bytes is far below HKDF-SHA256's output limit.
        if hk.expand(info.as_bytes(), &mut out).is_err() {
            unreachable!("HKDF output of 32 bytes is always valid");
        }
        out
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |e| SecretsError::Io(path.to_owned(), e)
}

/// The length of what [`seal`] makes of `plaintext_len` bytes: the nonce,
/// the ciphertext and the tag.
pub const fn sealed_len(plaintext_len: usize) -> usize {
    12 + plaintext_len + 16
}

/// Seals `plaintext` with AES-256-GCM under `key`: a random 12-byte nonce
/// followed by the ciphertext and tag.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sealed_len(plaintext.len()));
    // Encryption with a valid key and nonce does not fail.
    let _ = seal_append(
        &Aes256Gcm::new(key.into()),
        crate::auth::random_bytes(),
        aad,
        plaintext,
        &mut out,
    );
    out
}

/// Appends to `out` what [`seal`] makes, with a cipher whose key schedule
/// is made once for many seals and a random `nonce` the caller drew (never
/// one used before under this key). On failure `out` is as it was.
pub fn seal_append(
    cipher: &Aes256Gcm,
    nonce: [u8; 12],
    aad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), aes_gcm::Error> {
    let start = out.len();
    out.extend_from_slice(&nonce);
    let body = out.len();
    out.extend_from_slice(plaintext);
    match cipher.encrypt_inout_detached(&Nonce::from(nonce), aad, (&mut out[body..]).into()) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Opens what [`seal`] made; `None` if the key, AAD or bytes are wrong.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (nonce, ct) = sealed.split_first_chunk::<12>()?;
    aes_gcm_decrypt(key, nonce, aad, ct).ok()
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename),
/// readable only by the owner on Unix.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), std::io::Error> {
    let mut options = std::fs::OpenOptions::new();
    // A fresh, unpredictable temporary name: never an existing file or link.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let suffix: String = crate::auth::random_bytes::<6>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tmp = path.with_extension(format!("tmp-{suffix}"));
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates `dir` (and its parents) readable by its owner only on Unix.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// The keyring account name of a data directory: `master-key-<id>`, where
/// the id is random and kept (it is not secret) in `<data>/keyring-id`. A
/// name from the directory's path would change when the path is spelled
/// differently; this one cannot. `None` if the directory has no id, so no
/// keyring entry.
fn keyring_account(data_dir: &Path) -> Option<String> {
    let id = std::fs::read_to_string(data_dir.join("keyring-id")).ok()?;
    let id = id.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("master-key-{id}"))
}

/// Makes and records a new keyring account name for `data_dir`.
fn new_keyring_account(data_dir: &Path) -> Result<String, SecretsError> {
    let id: String = crate::auth::random_bytes::<8>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = data_dir.join("keyring-id");
    write_private(&path, id.as_bytes()).map_err(io(&path))?;
    Ok(format!("master-key-{id}"))
}

/// The OS keyring, asked on a thread of its own (the Secret Service client
/// must not run on an async worker).
#[cfg(any(target_os = "linux", windows, target_os = "macos"))]
mod os_keyring {
    use base64::Engine;

    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(f).join().ok()
    }

    /// The stored key, `Ok(None)` if there is none, `Err` if no keyring answers.
    pub fn get(account: &str) -> Result<Option<[u8; 32]>, String> {
        let account = account.to_owned();
        on_thread(move || {
            let entry =
                keyring::Entry::new(super::KEYRING_SERVICE, &account).map_err(|e| e.to_string())?;
            match entry.get_password() {
                Ok(text) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|_| "the keyring entry is not base64".to_owned())?;
                    let key: [u8; 32] = bytes
                        .try_into()
                        .map_err(|_| "the keyring entry is not 32 bytes".to_owned())?;
                    Ok(Some(key))
                }
                Err(keyring::Error::NoEntry) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
        .unwrap_or_else(|| Err("the keyring thread failed".into()))
    }

    /// Stores the key; `Err` if no keyring takes it.
    pub fn set(account: &str, key: &[u8; 32]) -> Result<(), String> {
        let account = account.to_owned();
        let text = base64::engine::general_purpose::STANDARD.encode(key);
        on_thread(move || {
            let entry =
                keyring::Entry::new(super::KEYRING_SERVICE, &account).map_err(|e| e.to_string())?;
            entry.set_password(&text).map_err(|e| e.to_string())?;
            // Read it back: a store that silently keeps nothing must not be
            // trusted with the only copy of the key.
            match entry.get_password() {
                Ok(back) if back == text => Ok(()),
                Ok(_) => Err("the keyring returned a different value".into()),
                Err(e) => Err(e.to_string()),
            }
        })
        .unwrap_or_else(|| Err("the keyring thread failed".into()))
    }

    /// Removes the entry (tests).
    pub fn delete(account: &str) -> Result<(), String> {
        let account = account.to_owned();
        on_thread(move || {
            let entry =
                keyring::Entry::new(super::KEYRING_SERVICE, &account).map_err(|e| e.to_string())?;
            entry.delete_credential().map_err(|e| e.to_string())
        })
        .unwrap_or_else(|| Err("the keyring thread failed".into()))
    }
}

#[cfg(not(any(target_os = "linux", windows, target_os = "macos")))]
mod os_keyring {
    pub fn get(_: &str) -> Result<Option<[u8; 32]>, String> {
        Err("no keyring on this platform".into())
    }
    pub fn set(_: &str, _: &[u8; 32]) -> Result<(), String> {
        Err("no keyring on this platform".into())
    }
    pub fn delete(_: &str) -> Result<(), String> {
        Err("no keyring on this platform".into())
    }
}

/// Removes this directory's keyring entry (for tests and `--forget-key`-like
/// tools); errors if no keyring answers.
pub fn forget_keyring_entry(data_dir: &Path) -> Result<(), String> {
    let account = keyring_account(data_dir).ok_or("this directory has no keyring entry")?;
    os_keyring::delete(&account)
}

/// How the key may be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyringUse {
    /// Ask the OS keyring (the product's default).
    Ask,
    /// Never ask it (tests that must not touch the user's keyring).
    Skip,
}

fn parse_env_key(text: &str) -> Result<[u8; 32], SecretsError> {
    let text = text.trim();
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(text).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(SecretsError::BadEnvKey)
}

fn read_key_file(path: &Path) -> Result<[u8; 32], SecretsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(SecretsError::KeyFileTooOpen(path.to_owned()));
        }
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    bytes
        .try_into()
        .map_err(|_| SecretsError::BadKeyFile(path.to_owned()))
}

/// True if and only if the directory already holds encrypted SecureChat
/// data (a plaintext database from 0.1.0 does not count: it gets a new key
/// and is encrypted).
pub fn has_encrypted_data(data_dir: &Path) -> bool {
    let db = data_dir.join("securechat.db");
    data_dir.join("keycheck").exists()
        || (db.exists() && !crate::store::is_plaintext(&db).unwrap_or(false))
}

/// Finds (or, for a directory with no data, creates) the master key by the
/// rule in this module's documentation, and checks it against the
/// directory's key-check record. Changes nothing in the directory unless a
/// new key is made. `env` is the value of `SECURECHAT_MASTER_KEY`, if set.
pub fn load_or_create(
    data_dir: &Path,
    env: Option<&str>,
    keyring: KeyringUse,
) -> Result<MasterKey, SecretsError> {
    let key_file = data_dir.join("master.key");
    let found = if let Some(text) = env {
        Some((parse_env_key(text)?, KeySource::Environment))
    } else if key_file.exists() {
        Some((
            read_key_file(&key_file)?,
            KeySource::KeyFile(key_file.clone()),
        ))
    } else if let (KeyringUse::Ask, Some(account)) = (keyring, keyring_account(data_dir)) {
        match os_keyring::get(&account) {
            Ok(Some(key)) => Some((key, KeySource::Keyring)),
            Ok(None) => None,
            Err(e) => {
                tracing::info!(reason = %e, "no OS keyring answered");
                None
            }
        }
    } else {
        None
    };
    let master = match found {
        Some((key, source)) => MasterKey { key, source },
        None if has_encrypted_data(data_dir) => {
            return Err(SecretsError::KeyMissing(data_dir.to_owned()));
        }
        None => {
            let key = crate::auth::random_bytes::<32>();
            create_private_dir(data_dir).map_err(io(data_dir))?;
            let stored = match keyring {
                KeyringUse::Skip => false,
                KeyringUse::Ask => {
                    let account = new_keyring_account(data_dir)?;
                    match os_keyring::set(&account, &key) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::info!(reason = %e, "the OS keyring did not take the key; using a key file");
                            let _ = std::fs::remove_file(data_dir.join("keyring-id"));
                            false
                        }
                    }
                }
            };
            let source = if stored {
                KeySource::Keyring
            } else {
                write_private(&key_file, &key).map_err(io(&key_file))?;
                KeySource::KeyFile(key_file.clone())
            };
            MasterKey { key, source }
        }
    };
    check_or_record(data_dir, &master)?;
    Ok(master)
}

/// Verifies `master` against `<data>/keycheck`. A directory without the
/// record gets one, but only once the key has proven itself: at once for a
/// new directory or a plaintext 0.1.0 database, and for an encrypted
/// database (whose record was lost) only if the key opens it. A wrong key
/// changes nothing.
pub fn check_or_record(data_dir: &Path, master: &MasterKey) -> Result<(), SecretsError> {
    let path = data_dir.join("keycheck");
    let key = master.subkey("keycheck");
    match std::fs::read(&path) {
        Ok(sealed) => match open(&key, KEYCHECK_AAD, &sealed) {
            Some(plain) if plain == KEYCHECK_PLAINTEXT => Ok(()),
            Some(_) => Err(SecretsError::BadKeyCheck(path)),
            None => Err(SecretsError::WrongKey(data_dir.to_owned())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let db = data_dir.join("securechat.db");
            if has_encrypted_data(data_dir) && !crate::store::key_opens(&db, &master.subkey("db")) {
                return Err(SecretsError::WrongKey(data_dir.to_owned()));
            }
            create_private_dir(data_dir).map_err(io(data_dir))?;
            write_private(&path, &seal(&key, KEYCHECK_AAD, KEYCHECK_PLAINTEXT)).map_err(io(&path))
        }
        Err(e) => Err(SecretsError::Io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subkeys_differ_by_purpose_and_are_stable() {
        let m = MasterKey::from_bytes([1; 32]);
        assert_eq!(m.subkey("db"), m.subkey("db"));
        assert_ne!(m.subkey("db"), m.subkey("logs"));
        assert_ne!(MasterKey::from_bytes([2; 32]).subkey("db"), m.subkey("db"));
        assert!(!format!("{m:?}").contains("[1"), "Debug redacts the key");
    }

    #[test]
    fn a_new_directory_gets_a_key_file_and_a_wrong_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create(&data, None, KeyringUse::Skip).unwrap();
        assert_eq!(first.source, KeySource::KeyFile(data.join("master.key")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join("master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = load_or_create(&data, None, KeyringUse::Skip).unwrap();
        assert_eq!(first.subkey("x"), again.subkey("x"));

        let wrong = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let err = load_or_create(&data, Some(&wrong), KeyringUse::Skip).unwrap_err();
        assert!(
            err.to_string().contains("was encrypted with another key"),
            "{err}"
        );

        std::fs::remove_file(data.join("master.key")).unwrap();
        let err = load_or_create(&data, None, KeyringUse::Skip).unwrap_err();
        assert!(
            matches!(err, SecretsError::KeyMissing(_)),
            "no new key over old data"
        );
    }

    #[test]
    fn the_environment_key_is_used_and_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([4u8; 32]);
        let m = load_or_create(dir.path(), Some(&key), KeyringUse::Skip).unwrap();
        assert_eq!(m.source, KeySource::Environment);
        assert!(!dir.path().join("master.key").exists());
        assert!(matches!(
            load_or_create(dir.path(), Some("short"), KeyringUse::Skip),
            Err(SecretsError::BadEnvKey)
        ));
    }

    #[cfg(unix)]
    #[test]
    fn an_open_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), None, KeyringUse::Skip).unwrap();
        let file = dir.path().join("master.key");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(dir.path(), None, KeyringUse::Skip),
            Err(SecretsError::KeyFileTooOpen(_))
        ));
    }

    #[test]
    fn sealing_binds_the_aad() {
        let sealed = seal(&[3; 32], b"a", b"hello");
        assert_eq!(open(&[3; 32], b"a", &sealed).unwrap(), b"hello");
        assert!(open(&[3; 32], b"b", &sealed).is_none());
        assert!(open(&[4; 32], b"a", &sealed).is_none());
        assert!(open(&[3; 32], b"a", &sealed[..10]).is_none());
    }
}
