//! Time as the server sees it. Everything that expires (sessions, lockouts,
//! rate limits) reads the time from a [`Clock`], so tests can move it forward
//! instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in milliseconds since 1970-01-01T00:00:00Z.
    fn now_ms(&self) -> i64;
}

/// The operating system's clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that starts at the system time and moves only when told to.
/// Used by tests that check expiry and lockouts without waiting.
#[derive(Debug)]
pub struct ManualClock {
    /// The offset added to the system time, so ordinary timers still run.
    offset_ms: AtomicI64,
}

impl ManualClock {
    /// A manual clock reading the system time plus nothing, for now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            offset_ms: AtomicI64::new(0),
        })
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.offset_ms.load(Ordering::SeqCst)
    }
}
