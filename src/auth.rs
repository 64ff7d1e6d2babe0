//! Accounts and sessions (SECURITY.md §1–§3): username rules, Argon2id of the
//! client's auth key on a pool of low-priority threads behind a semaphore, session tokens
//! (only their SHA-256 is stored), the session cookie, the authenticated-user
//! extractor, and the login throttling arithmetic.

use std::sync::Arc;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::Output;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::error::ApiError;
use crate::protocol::B64;
use crate::server::App;
use crate::store::{SessionRow, Throttle, UserRow};

/// The session cookie's name. The `__Host-` prefix makes browsers insist on
/// `Secure`, `Path=/` and no `Domain`.
pub const SESSION_COOKIE: &str = "__Host-sc_session";

/// Argon2id with OWASP's minimum: m = 19 456 KiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    // These constants are valid Argon2 parameters; `Params::new` only fails
    // outside the algorithm's bounds.
    let params = Params::new(19_456, 2, 1, Some(32)).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Fills a fresh array from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The OS RNG failing is not recoverable: there is nothing safe to do
    // without randomness.
    if let Err(e) = getrandom::fill(&mut out) {
        panic!("the operating system's random source failed: {e}");
    }
    out
}

/// Checks and canonicalises a username: 3–32 characters of `a-z 0-9 _ . -`,
/// compared case-insensitively, so stored in lowercase.
pub fn canonical_username(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim().to_ascii_lowercase();
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if !(3..=32).contains(&name.len()) || !ok_chars {
        return Err(ApiError::bad_request(
            "invalid_username",
            "A username has 3 to 32 characters: letters a–z, digits, '_', '.' or '-'.",
        ));
    }
    Ok(name)
}

/// Hashes and verifies auth keys with Argon2id, at most `concurrency` at a
/// time, on [`Hashers`]: threads of their own at a lower priority.
pub struct Passwords {
    /// Bounds the hashes queued or running: each takes 19 MiB and a whole
    /// core. A permit is held until the hash ends, even if its caller has
    /// gone (a dropped request).
    semaphore: Arc<Semaphore>,
    /// The threads that run the hashes, one per permit.
    hashers: Hashers,
    /// A hash of random bytes, verified against for unknown users so that a
    /// login's timing does not tell whether the user exists.
    dummy_hash: String,
    /// Argon2id's working memory (19 MiB each), handed from one verification
    /// to the next while more are waiting: during a burst of logins each one
    /// no longer maps and zeroes fresh pages, which cost a third as much
    /// again as the hash itself. The last verification of a burst drops it.
    memory: Mutex<Vec<Vec<Block>>>,
    /// Verifications asked for and not yet finished (waiting or running).
    pending: AtomicUsize,
    /// New hashes made (see [`Passwords::hashes_made`]).
    made: std::sync::atomic::AtomicU64,
}

impl Passwords {
    /// Prepares the hasher; computes the dummy hash (one Argon2id run).
    pub fn new(concurrency: usize) -> Result<Self, String> {
        let dummy = random_bytes::<32>();
        let dummy_hash = argon2()
            .hash_password_with_salt(&dummy, &random_bytes::<16>())
            .map_err(|e| e.to_string())?
            .to_string();
        let concurrency = concurrency.max(1);
        Ok(Self {
            semaphore: Arc::new(Semaphore::new(concurrency)),
            hashers: Hashers::start(concurrency)?,
            dummy_hash,
            memory: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
            made: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The Argon2id PHC string of `auth_key` with a fresh 16-byte salt.
    pub async fn hash(&self, auth_key: Vec<u8>) -> Result<String, ApiError> {
        let permit = self.permit().await?;
        self.made.fetch_add(1, Ordering::Relaxed);
        self.hashers
            .run(permit, move || {
                argon2()
                    .hash_password_with_salt(&auth_key, &random_bytes::<16>())
                    .map(|h| h.to_string())
                    .map_err(ApiError::internal)
            })
            .await?
    }

    /// True if and only if `auth_key` matches `hash`. With no hash (unknown
    /// user) it verifies against the dummy hash and returns false, taking the
    /// same time.
    pub async fn verify(&self, hash: Option<String>, auth_key: Vec<u8>) -> Result<bool, ApiError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        self.pending.fetch_add(1, Ordering::SeqCst);
        let _pending = Pending(&self.pending);
        let permit = self.permit().await?;
        let memory = self.memory.lock().ok().and_then(|mut m| m.pop());
        let (ok, memory) = self
            .hashers
            .run(permit, move || {
                let mut memory = memory.unwrap_or_default();
                let ok = verify_in(&mut memory, &auth_key, &hash);
                (ok, memory)
            })
            .await?;
        if let Ok(mut kept) = self.memory.lock() {
            if self.pending.load(Ordering::SeqCst) > 1 {
                kept.push(memory);
            } else {
                kept.clear();
            }
        }
        Ok(known && ok)
    }

    /// How many new password hashes were made (accounts created or reset,
    /// passwords changed) since the start.
    pub fn hashes_made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Waits for room for one more hash.
    async fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(ApiError::internal)
    }
}

/// A job for [`Hashers`].
type HashJob = Box<dyn FnOnce() + Send>;

/// Threads that run Argon2id and nothing else, at a lower priority on
/// Linux ([`crate::priority`]), so a storm of sign-ins delays the chat less
/// (docs/BENCHMARKS.md, "The sign-ins' hashes at a lower priority"). The
/// blocking pool cannot be used for this: a thread could not take its
/// priority back without privileges, and would then run the store's
/// calls at the lower one.
struct Hashers {
    jobs: std::sync::mpsc::Sender<HashJob>,
}

impl Hashers {
    /// Starts `count` threads. They end when the last sender is dropped.
    fn start(count: usize) -> Result<Self, String> {
        let (jobs, queue) = std::sync::mpsc::channel::<HashJob>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..count {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    if let Err(e) = crate::priority::lower()
                        && i == 0
                    {
                        tracing::warn!("Argon2id runs at the host's own priority: {e}");
                    }
                    loop {
                        let next = queue
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .recv();
                        let Ok(job) = next else { return };
                        // A panicking job drops its answer's sender, which
                        // its caller sees as an error; the thread goes on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| format!("starting the hashing threads: {e}"))?;
        }
        Ok(Self { jobs })
    }

    /// Runs `f` on one of the threads and returns what it returned;
    /// `permit` is released when `f` has run. A job whose caller has gone
    /// before a thread takes it is skipped.
    async fn run<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _permit = permit;
                if !answer.is_closed() {
                    let _ = answer.send(f());
                }
            }))
            .map_err(|_| ApiError::internal("the hashing threads have stopped"))?;
        answered
            .await
            .map_err(|_| ApiError::internal("a hashing job failed"))
    }
}

/// Counts a verification as pending until dropped.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `PasswordVerifier::verify_password` with working memory the caller
/// keeps: parse the PHC string, hash `auth_key` with its algorithm,
/// version, parameters and salt, and compare in constant time.
fn verify_in(memory: &mut Vec<Block>, auth_key: &[u8], hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm.as_str()),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut out = [0u8; Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    memory.resize(params.block_count(), Block::default());
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(auth_key, salt.as_ref(), &mut *out, &mut memory[..])
        .is_ok()
        && Output::new(out).is_ok_and(|computed| computed == *expected)
}

/// How long an account-reset code stays valid.
pub const RESET_CODE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(72 * 3600);

/// A new one-time reset code issued at `now`: the code (shown once), the
/// hash the store keeps, and when it expires.
pub fn reset_code(now: i64) -> (String, [u8; 32], i64) {
    let code = B64::encode(&random_bytes::<16>());
    let hash = invite_hash(&code);
    (code, hash, now + ms(RESET_CODE_LIFETIME))
}

/// An Argon2id hash of random bytes: a stored hash no key matches, which
/// takes a real verification's time to refuse (for accounts being reset).
pub fn unusable_hash() -> String {
    argon2()
        .hash_password_with_salt(&random_bytes::<32>(), &random_bytes::<16>())
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// The salt `prelogin` reports for a username that does not exist: stable per
/// name, so repeated probes cannot tell it from a real one.
pub fn fake_salt(server_secret: &[u8], username: &str) -> [u8; 16] {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(server_secret).unwrap_or_else(|_| {
        // HMAC accepts keys of any length.
        unreachable!("HMAC key of any length is valid")
    });
    mac.update(username.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&tag[..16]);
    salt
}

/// A new session token: the cookie value and the hash the store keeps.
pub fn new_session_token() -> (String, [u8; 32]) {
    let token = random_bytes::<32>();
    (B64::encode(&token), Sha256::digest(token).into())
}

/// The stored hash of a cookie value, or `None` if it is not a token.
pub fn token_hash(cookie_value: &str) -> Option<[u8; 32]> {
    let bytes = B64::decode(cookie_value)?;
    (bytes.len() == 32).then(|| Sha256::digest(&bytes).into())
}

/// SHA-256 of an invite code, as stored.
pub fn invite_hash(code: &str) -> [u8; 32] {
    Sha256::digest(code.trim().as_bytes()).into()
}

/// The `Set-Cookie` value that hands the browser its session.
pub fn session_cookie(token: &str, max_age_secs: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age_secs}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("__Host-sc_session=; Max-Age=0; Path=/; Secure"))
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-sc_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
    )
}

/// The value of the cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned())
}

/// The session token from the request's cookies, if any.
pub fn session_from_headers(headers: &HeaderMap) -> Option<[u8; 32]> {
    cookie(headers, SESSION_COOKIE).and_then(|value| token_hash(&value))
}

/// True if and only if the session is within both its idle and absolute
/// lifetimes at `now`.
pub fn session_alive(session: &SessionRow, now: i64, limits: &Limits) -> bool {
    let idle = i64::try_from(limits.session_idle.as_millis()).unwrap_or(i64::MAX);
    let absolute = i64::try_from(limits.session_absolute.as_millis()).unwrap_or(i64::MAX);
    now - session.last_seen < idle && now - session.created_at < absolute && !session.user.disabled
}

/// Looks up and validates a session; refreshes its idle timer (at most once a
/// minute, to spare the disk). Expired sessions are deleted.
pub async fn check_session(app: &App, hash: [u8; 32]) -> Result<SessionRow, ApiError> {
    let now = app.clock.now_ms();
    let limits = app.config.limits.clone();
    app.db
        .call(move |s| {
            let Some(session) = s.session(&hash)? else {
                return Ok(None);
            };
            if !session_alive(&session, now, &limits) {
                s.delete_session(&hash)?;
                return Ok(None);
            }
            if now - session.last_seen > 60_000 {
                s.touch_session(&hash, now)?;
            }
            Ok(Some(session))
        })
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// The signed-in user of a request. Handlers that take this cannot run
/// without a valid session.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: UserRow,
    pub session: [u8; 32],
}

impl FromRequestParts<App> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let hash = session_from_headers(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        let session = check_session(app, hash).await?;
        Ok(Self {
            user: session.user,
            session: hash,
        })
    }
}

/// An administrator's session.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<App> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, app).await?;
        if !user.user.is_admin {
            return Err(ApiError::forbidden(
                "not_admin",
                "Only an administrator can do that.",
            ));
        }
        Ok(Self(user))
    }
}

/// What a failed login does to a username's counters: failures within the
/// window (or within a window after the last lock ended) are counted; from
/// the `user_failures_before_lock`-th on, each locks the name for the base
/// time doubled per further failure, capped.
pub fn user_failure(t: Throttle, now: i64, limits: &Limits) -> Throttle {
    let window = ms(limits.login_window);
    // The count restarts only after a quiet window with no lock in it: a
    // failure soon after a lock ends keeps doubling towards the cap.
    let quiet = now - t.window_start > window && now - t.locked_until > window;
    let mut t = if quiet {
        Throttle {
            window_start: now,
            failures: 0,
            locked_until: t.locked_until,
        }
    } else {
        t
    };
    t.failures = t.failures.saturating_add(1);
    if t.failures >= limits.user_failures_before_lock {
        let doublings = (t.failures - limits.user_failures_before_lock).min(30);
        let lock = ms(limits.user_lock_base)
            .saturating_mul(1i64 << doublings)
            .min(ms(limits.user_lock_max));
        t.locked_until = now + lock;
    }
    t
}

/// What a failed login does to an address's counters: at
/// `ip_failures_before_lock` failures in the window the address is refused
/// for `ip_lock`.
pub fn ip_failure(t: Throttle, now: i64, limits: &Limits) -> Throttle {
    let window = ms(limits.login_window);
    let mut t = if now - t.window_start > window {
        Throttle {
            window_start: now,
            failures: 0,
            locked_until: t.locked_until,
        }
    } else {
        t
    };
    t.failures = t.failures.saturating_add(1);
    if t.failures >= limits.ip_failures_before_lock {
        t.locked_until = now + ms(limits.ip_lock);
    }
    t
}

/// Milliseconds in `d`, saturating.
pub fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The one answer to every failed or refused login, whatever the cause.
pub fn login_failed(retry_after_ms: Option<u64>) -> ApiError {
    const MESSAGE: &str = "Sign-in failed. Check your username and password; after several failures, wait before trying again.";
    match retry_after_ms {
        Some(ms) => ApiError::too_many("login_failed", MESSAGE, ms),
        None => ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "login_failed",
            MESSAGE,
        ),
    }
}

/// Shared handle type for [`Passwords`].
pub type SharedPasswords = Arc<Passwords>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_with_kept_memory_agrees_with_the_crate() {
        use argon2::password_hash::PasswordVerifier;
        // Small parameters keep the test quick; the memory is resized to
        // whatever each hash's parameters ask.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, Some(32)).unwrap(),
        );
        let other = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(128, 2, 1, Some(16)).unwrap(),
        );
        let mut memory = Vec::new();
        for argon in [small, other] {
            let hash = argon
                .hash_password_with_salt(b"right key", &random_bytes::<16>())
                .unwrap()
                .to_string();
            for key in [&b"right key"[..], b"wrong key", b""] {
                let theirs = argon.verify_password(key, hash.as_str()).is_ok();
                assert_eq!(verify_in(&mut memory, key, &hash), theirs, "{hash}");
                assert_eq!(theirs, key == b"right key");
            }
        }
        assert!(!verify_in(&mut memory, b"right key", "not a PHC string"));
        assert!(!verify_in(
            &mut memory,
            b"right key",
            "$argon2id$v=19$m=64,t=1,p=1"
        ));
    }

    #[tokio::test]
    async fn a_burst_of_verifications_shares_memory_and_drops_it_after() {
        let passwords = std::sync::Arc::new(Passwords::new(1).unwrap());
        let hash = passwords.hash(b"key".to_vec()).await.unwrap();
        let runs: Vec<_> = (0..3)
            .map(|i| {
                let (p, h) = (passwords.clone(), hash.clone());
                tokio::spawn(async move { p.verify(Some(h), vec![i; 3]).await })
            })
            .collect();
        let right = passwords.verify(Some(hash.clone()), b"key".to_vec()).await;
        assert!(right.unwrap());
        for run in runs {
            assert!(!run.await.unwrap().unwrap());
        }
        assert!(!passwords.verify(None, b"key".to_vec()).await.unwrap());
        assert_eq!(passwords.pending.load(Ordering::SeqCst), 0);
        assert!(passwords.memory.lock().unwrap().is_empty());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_on_threads_of_their_own_at_a_lower_priority() {
        let passwords = Passwords::new(2).unwrap();
        let permit = passwords.permit().await.unwrap();
        let (name, nice) = passwords
            .hashers
            .run(permit, || {
                (
                    std::thread::current().name().map(str::to_owned),
                    crate::priority::nice_of(None).unwrap(),
                )
            })
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("argon2-"));
        // A process already nicer than that keeps its own value.
        let own = crate::priority::nice_of(None).unwrap();
        assert_eq!(nice, own.max(crate::priority::NICE));
    }

    #[tokio::test]
    async fn a_hashing_job_that_panics_is_an_error_and_the_threads_go_on() {
        let passwords = Passwords::new(1).unwrap();
        let permit = passwords.permit().await.unwrap();
        let failed = passwords
            .hashers
            .run(permit, || -> u8 { panic!("a failing job") })
            .await;
        assert_eq!(failed.unwrap_err().code, "internal");
        // The one thread is still there.
        let hash = passwords.hash(b"key".to_vec()).await.unwrap();
        assert!(passwords.verify(Some(hash), b"key".to_vec()).await.unwrap());
    }

    #[tokio::test]
    async fn a_job_holds_its_permit_until_it_ends_and_one_whose_caller_left_is_skipped() {
        use std::sync::atomic::AtomicBool;
        use std::sync::mpsc;
        let hashers = Arc::new(Hashers::start(1).unwrap());
        let permits = Arc::new(Semaphore::new(2));
        // A job that runs until the test lets it go; its caller leaves.
        let (started, running) = mpsc::channel();
        let (release, gate) = mpsc::channel::<()>();
        let first = {
            let (hashers, permit) = (
                hashers.clone(),
                permits.clone().acquire_owned().await.unwrap(),
            );
            tokio::spawn(async move {
                hashers
                    .run(permit, move || {
                        started.send(()).unwrap();
                        gate.recv().unwrap();
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || running.recv().unwrap())
            .await
            .unwrap();
        // A second job waits for the thread; its caller leaves too.
        let ran = Arc::new(AtomicBool::new(false));
        let second = {
            let (hashers, permit, ran) = (
                hashers.clone(),
                permits.clone().acquire_owned().await.unwrap(),
                ran.clone(),
            );
            tokio::spawn(async move {
                hashers
                    .run(permit, move || ran.store(true, Ordering::SeqCst))
                    .await
            })
        };
        tokio::task::yield_now().await;
        first.abort();
        second.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert!(second.await.unwrap_err().is_cancelled());
        // Both permits are still held: one by the running job, one by the queued one.
        assert_eq!(permits.available_permits(), 0);
        release.send(()).unwrap();
        // Both come back once the thread is past them, and the second never ran.
        let third = permits.clone().acquire_many_owned(2).await.unwrap();
        let after = hashers.run(third, || ()).await;
        assert!(after.is_ok());
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn usernames_are_canonical() {
        assert_eq!(canonical_username(" Alice.B-2_ ").unwrap(), "alice.b-2_");
        for bad in ["ab", "a b c", "ålice", &"x".repeat(33), "bob!"] {
            assert!(canonical_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_lock_starts_at_the_fifth_failure_and_doubles_to_the_cap() {
        let limits = Limits::default();
        let mut t = Throttle::default();
        let now = 1_000_000_000;
        for _ in 0..4 {
            t = user_failure(t, now, &limits);
            assert_eq!(t.locked_until, 0);
        }
        t = user_failure(t, now, &limits);
        assert_eq!(t.locked_until - now, 60_000);
        t = user_failure(t, now, &limits);
        assert_eq!(t.locked_until - now, 120_000);
        for _ in 0..20 {
            t = user_failure(t, now, &limits);
        }
        assert_eq!(t.locked_until - now, 3_600_000);
    }

    #[test]
    fn failures_right_after_each_lock_keep_doubling_to_an_hour() {
        let limits = Limits::default();
        let mut t = Throttle::default();
        let mut now = 1_000_000_000;
        let mut locks = Vec::new();
        for _ in 0..12 {
            t = user_failure(t, now, &limits);
            if t.locked_until > now {
                locks.push((t.locked_until - now) / 60_000);
                now = t.locked_until + 1_000; // try again just after the lock
            }
        }
        assert_eq!(locks, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        // A quiet window after the lock ends starts the count afresh.
        t = user_failure(t, t.locked_until + ms(limits.login_window) + 1, &limits);
        assert_eq!(t.failures, 1);
    }

    #[test]
    fn ip_lock_engages_at_twenty_failures_in_the_window() {
        let limits = Limits::default();
        let mut t = Throttle::default();
        let now = 1_000_000_000;
        for _ in 0..19 {
            t = ip_failure(t, now, &limits);
        }
        assert_eq!(t.locked_until, 0);
        // Outside the window the count starts again.
        let later = now + ms(limits.login_window) + 1;
        t = ip_failure(t, later, &limits);
        assert_eq!((t.failures, t.locked_until), (1, 0));
        for _ in 0..19 {
            t = ip_failure(t, later, &limits);
        }
        assert_eq!(t.locked_until - later, 15 * 60_000);
    }

    #[test]
    fn tokens_hash_and_reject_garbage() {
        let (token, hash) = new_session_token();
        assert_eq!(token_hash(&token), Some(hash));
        assert_eq!(token_hash("not-a-token"), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("a=b; {SESSION_COOKIE}={token}").parse().unwrap(),
        );
        assert_eq!(session_from_headers(&headers), Some(hash));
    }

    #[test]
    fn fake_salts_are_stable_and_distinct() {
        assert_eq!(fake_salt(b"k", "bob"), fake_salt(b"k", "bob"));
        assert_ne!(fake_salt(b"k", "bob"), fake_salt(b"k", "eve"));
        assert_ne!(fake_salt(b"k", "bob"), fake_salt(b"j", "bob"));
    }
}
