//! The injectable Unix-seconds clock both sides judge token times with: production reads the
//! system clock; tests move a manual one (to expire codes, sessions, trials and grace
//! without sleeping).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix-seconds wall clock, cheap to clone. Tests use [`Clock::manual`].
#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stands at `start` until moved with [`Clock::set`] or [`Clock::advance`].
    pub fn manual(start: i64) -> Self {
        Self(Some(Arc::new(AtomicI64::new(start))))
    }

    /// Current time, Unix seconds.
    pub fn now(&self) -> i64 {
        match &self.0 {
            Some(t) => t.load(Ordering::Relaxed),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        }
    }

    /// Moves a manual clock by `secs` (either way); no effect on the system clock.
    pub fn advance(&self, secs: i64) {
        if let Some(t) = &self.0 {
            t.fetch_add(secs, Ordering::Relaxed);
        }
    }

    /// Sets a manual clock; no effect on the system clock.
    pub fn set(&self, now: i64) {
        if let Some(t) = &self.0 {
            t.store(now, Ordering::Relaxed);
        }
    }
}
