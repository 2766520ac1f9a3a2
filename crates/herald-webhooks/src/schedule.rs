//! The retry schedule: when each attempt after a failure is made.
//!
//! The default is Svix's: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h,
//! 10 h and 10 h after each failure — 8 attempts over about 27.5 hours —
//! each delay moved by up to ±20% at random so that a receiver coming back
//! from an outage is not hit by every queued message at the same instant.
//! A receiver's `Retry-After` (on 429 or 503) lengthens the next delay,
//! never shortens it.

use std::time::Duration;

/// Svix's schedule: the delay before attempts 2 to 8.
pub const DEFAULT_DELAYS_MS: [u64; 7] = [
    5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000,
];

/// How far a delay may move either way, as a share of it.
pub const JITTER: f64 = 0.2;

/// An invalid schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSchedule {
    /// More retries than anyone waits for.
    #[error("a retry schedule has at most {max} delays, not {0}", max = MAX_DELAYS)]
    TooLong(usize),
    /// A delay over a week.
    #[error("a retry delay is at most 7 days ({max} ms), not {0} ms", max = MAX_DELAY_MS)]
    TooLate(u64),
}

/// Most delays a schedule has.
pub const MAX_DELAYS: usize = 32;
/// Longest delay.
pub const MAX_DELAY_MS: u64 = 7 * 24 * 3_600_000;

/// The delays between attempts; the first attempt is made at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    delays: Vec<Duration>,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            delays: DEFAULT_DELAYS_MS
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        }
    }
}

impl Schedule {
    /// A schedule of these delays (milliseconds); empty means one attempt.
    pub fn from_millis(delays: &[u64]) -> Result<Self, InvalidSchedule> {
        if delays.len() > MAX_DELAYS {
            return Err(InvalidSchedule::TooLong(delays.len()));
        }
        if let Some(late) = delays.iter().find(|ms| **ms > MAX_DELAY_MS) {
            return Err(InvalidSchedule::TooLate(*late));
        }
        Ok(Self {
            delays: delays.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        })
    }

    /// How many attempts a message gets in all.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).map_or(u32::MAX, |delays| delays + 1)
    }

    /// The wait after failed attempt `attempt` (1-based) before the next
    /// one, jittered by `unit` (a uniform draw in `[0, 1)`), at least the
    /// receiver's `retry_after`; `None` when that was the last attempt.
    #[must_use]
    pub fn next_delay(
        &self,
        attempt: u32,
        unit: f64,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let index = usize::try_from(attempt.checked_sub(1)?).ok()?;
        let base = *self.delays.get(index)?;
        let factor = 1.0 + JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        let jittered = base.mul_f64(factor);
        Some(retry_after.map_or(jittered, |floor| {
            jittered.max(floor.min(Duration::from_millis(MAX_DELAY_MS)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_the_default_when_retried_should_follow_svix_within_the_jitter() {
        let schedule = Schedule::default();
        assert_eq!(schedule.attempts(), 8);
        let expected = [5, 300, 1800, 7200, 18000, 36000, 36000];
        for (attempt, seconds) in (1..).zip(expected) {
            let base = Duration::from_secs(seconds);
            assert_eq!(schedule.next_delay(attempt, 0.5, None), Some(base));
            assert_eq!(
                schedule.next_delay(attempt, 0.0, None),
                Some(base.mul_f64(0.8))
            );
            let highest = schedule.next_delay(attempt, 0.999_999, None).unwrap();
            assert!(highest <= base.mul_f64(1.2) && highest > base.mul_f64(1.19));
        }
        assert_eq!(schedule.next_delay(8, 0.5, None), None, "8 attempts in all");
        assert_eq!(schedule.next_delay(0, 0.5, None), None);
    }

    #[test]
    fn given_retry_after_when_retried_should_wait_at_least_that_long() {
        let schedule = Schedule::from_millis(&[10, 20]).unwrap();
        assert_eq!(
            schedule.next_delay(1, 0.5, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            schedule.next_delay(2, 0.5, Some(Duration::from_millis(1))),
            Some(Duration::from_millis(20))
        );
    }

    #[test]
    fn given_bad_schedules_when_built_should_say_why() {
        assert_eq!(
            Schedule::from_millis(&[1; 33]),
            Err(InvalidSchedule::TooLong(33))
        );
        assert_eq!(
            Schedule::from_millis(&[MAX_DELAY_MS + 1]),
            Err(InvalidSchedule::TooLate(MAX_DELAY_MS + 1))
        );
        assert_eq!(Schedule::from_millis(&[]).unwrap().attempts(), 1);
    }
}
