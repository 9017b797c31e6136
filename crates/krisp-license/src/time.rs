//! Time: an injectable wall clock, clock-rollback protection, and the background refresh
//! schedule (pure functions).

/// How far the wall clock may lag the latest trusted time before it counts as rolled back.
pub const ROLLBACK_TOLERANCE_SECS: i64 = 300;

pub use krisp_token::Clock;

/// The time the license is judged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedTime {
    /// Unix seconds: never earlier than the latest trusted time seen.
    pub now: i64,
    /// The wall clock lagged the latest trusted time by more than the tolerance.
    pub rolled_back: bool,
}

/// Combines the wall clock with the latest trusted time seen (`floor`: the largest of past
/// wall-clock readings and signed token issue times). Setting the clock back never moves
/// time backwards for the license, so it cannot extend one.
pub fn trusted_time(wall: i64, floor: Option<i64>) -> TrustedTime {
    match floor {
        Some(f) if wall < f => TrustedTime {
            now: f,
            rolled_back: wall.saturating_add(ROLLBACK_TOLERANCE_SECS) < f,
        },
        _ => TrustedTime {
            now: wall,
            rolled_back: false,
        },
    }
}

/// Background refresh schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// First retry delay after a failure, seconds.
    pub base_backoff: i64,
    /// Longest retry delay, seconds.
    pub max_backoff: i64,
    /// Shortest delay between successful refreshes, seconds.
    pub min_interval: i64,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            base_backoff: 30,
            max_backoff: 3600,
            min_interval: 60,
        }
    }
}

impl RefreshPolicy {
    /// When to refresh after a success: half-way through the token's validity (`iat`..`exp`),
    /// so a day-long token is renewed with half a day to spare, but not sooner than
    /// `min_interval` from `now`.
    pub fn next_after_success(&self, now: i64, iat: i64, exp: i64) -> i64 {
        let half = iat.saturating_add(exp.saturating_sub(iat) / 2);
        half.max(now.saturating_add(self.min_interval))
    }

    /// When to retry after `failures` consecutive failures (1 = the first): exponential
    /// backoff from `base_backoff`, capped at `max_backoff`, with "equal jitter" so that many
    /// clients do not retry in lockstep. `jitter` is a random number in `[0, 1)`.
    pub fn next_after_failure(&self, now: i64, failures: u32, jitter: f64) -> i64 {
        let exp = failures.saturating_sub(1).min(30);
        let delay = self
            .base_backoff
            .saturating_mul(1i64 << exp)
            .min(self.max_backoff)
            .max(1);
        let half = delay / 2;
        let jitter = jitter.clamp(0.0, 1.0);
        // Precision loss is irrelevant for delays of at most max_backoff seconds.
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let spread = ((delay - half) as f64 * jitter) as i64;
        now.saturating_add(half + spread)
    }
}

/// A random number in `[0, 1)` for [`RefreshPolicy::next_after_failure`].
pub fn random_jitter() -> f64 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_ahead_of_floor_is_trusted() {
        assert_eq!(
            trusted_time(1_000, Some(900)),
            TrustedTime {
                now: 1_000,
                rolled_back: false
            }
        );
        assert_eq!(trusted_time(5, None).now, 5);
    }

    #[test]
    fn small_lag_is_tolerated_but_does_not_go_backwards() {
        let t = trusted_time(1_000 - ROLLBACK_TOLERANCE_SECS, Some(1_000));
        assert_eq!(t.now, 1_000);
        assert!(!t.rolled_back);
    }

    #[test]
    fn clock_set_back_beyond_tolerance_is_flagged_and_floored() {
        let t = trusted_time(1_000 - ROLLBACK_TOLERANCE_SECS - 1, Some(1_000));
        assert_eq!(t.now, 1_000);
        assert!(t.rolled_back);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(10);
        c.advance(5);
        assert_eq!(c.now(), 15);
        c.set(3);
        assert_eq!(c.now(), 3);
        assert!(Clock::system().now() > 1_600_000_000);
    }

    #[test]
    fn refresh_is_scheduled_half_way_to_expiry() {
        let p = RefreshPolicy::default();
        assert_eq!(p.next_after_success(1_000, 1_000, 87_400), 44_200);
        // Late start (token almost expired): not sooner than min_interval.
        assert_eq!(p.next_after_success(87_000, 1_000, 87_400), 87_060);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RefreshPolicy::default();
        // With jitter 0 the delay is half the nominal one; with jitter ~1 almost all of it.
        assert_eq!(p.next_after_failure(0, 1, 0.0), 15);
        assert_eq!(p.next_after_failure(0, 2, 0.0), 30);
        assert_eq!(p.next_after_failure(0, 3, 0.0), 60);
        assert_eq!(p.next_after_failure(0, 1, 0.999_999), 29);
        assert_eq!(p.next_after_failure(0, 20, 0.0), 1_800);
        assert_eq!(p.next_after_failure(0, u32::MAX, 0.999_999), 3_599);
    }

    #[test]
    fn backoff_stays_within_bounds_for_any_jitter() {
        let p = RefreshPolicy::default();
        for failures in 1..40 {
            for i in 0..100 {
                let j = f64::from(i) / 100.0;
                let t = p.next_after_failure(1_000, failures, j);
                assert!(
                    t > 1_000 && t <= 1_000 + p.max_backoff,
                    "{failures} {j} {t}"
                );
            }
        }
        for _ in 0..100 {
            let j = random_jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
