//! The gateway's one clock. Every "now" the host stores (record and attempt
//! times, `received_on`, e-mail quiet periods, OAuth2 token expiry, plugin
//! load times) and every sleep it takes goes through a [`Clock`], handed to
//! whoever needs it rather than read from a global, so that a test can move
//! time instead of waiting for it.
//!
//! Stored timestamps are UTC microseconds since the Unix epoch (`i64`); sleeps
//! are tokio sleeps. In production the clock reads the wall clock. A clock made
//! with [`Clock::starting_at`] instead counts from a fixed instant by tokio's
//! own `Instant`, so under `tokio::time::pause()` one `advance()` moves both
//! the timestamps the gateway writes and the sleeps it takes, in step.
//!
//! The arithmetic on timestamps here saturates: a remote asking for a wait of
//! a thousand years, or a date at the end of time, never wraps a timestamp.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Where "now" comes from; cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    /// The system's wall clock.
    Wall,
    /// `start_micros` plus the tokio time elapsed since `started`.
    Tokio { start_micros: i64, started: Instant },
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl Clock {
    /// The wall clock (what the gateway runs on).
    pub fn system() -> Clock {
        Clock {
            source: Source::Wall,
        }
    }

    /// A clock that reads `start_micros` now and moves with tokio's time from
    /// here on: with `tokio::time::pause()`, only `tokio::time::advance` (or
    /// tokio's auto-advance) moves it. Call it inside the runtime whose time
    /// it should follow.
    pub fn starting_at(start_micros: i64) -> Clock {
        Clock {
            source: Source::Tokio {
                start_micros,
                started: Instant::now(),
            },
        }
    }

    /// Now, as microseconds since the Unix epoch (UTC).
    pub fn now_micros(&self) -> i64 {
        match self.source {
            Source::Wall => wall_micros(),
            Source::Tokio {
                start_micros,
                started,
            } => start_micros.saturating_add(micros(started.elapsed())),
        }
    }

    /// A monotonic instant, for measuring how long something took.
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// The timestamp `wait` from now, saturating.
    pub fn after(&self, wait: Duration) -> i64 {
        add(self.now_micros(), wait)
    }

    /// How long until the timestamp `at`; zero when it has passed.
    pub fn until(&self, at: i64) -> Duration {
        between(self.now_micros(), at)
    }

    /// Sleeps for `wait` (tokio time).
    pub async fn sleep(&self, wait: Duration) {
        tokio::time::sleep(wait).await;
    }

    /// Sleeps until the timestamp `at` (at once when it has passed).
    pub async fn sleep_until(&self, at: i64) {
        self.sleep(self.until(at)).await;
    }
}

fn wall_micros() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => micros(since_epoch),
        Err(before_epoch) => micros(before_epoch.duration()).saturating_neg(),
    }
}

/// A duration in whole microseconds, `i64::MAX` for anything longer.
pub fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The timestamp `wait` after `at`, saturating at the end of time.
pub fn add(at: i64, wait: Duration) -> i64 {
    at.saturating_add(micros(wait))
}

/// The time from `from` to `to`; zero when `to` is not later.
pub fn between(from: i64, to: i64) -> Duration {
    let micros = to.saturating_sub(from).max(0);
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_is_after_2020() {
        let first_of_2020 = crate::time::parse_timestamp("2020-01-01").unwrap();
        assert!(Clock::system().now_micros() > first_of_2020);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_on_tokio_time_moves_only_when_time_is_advanced() {
        let clock = Clock::starting_at(1_000_000);
        assert_eq!(clock.now_micros(), 1_000_000);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now_micros(), 2_500_000);
        assert_eq!(clock.until(3_000_000), Duration::from_millis(500));
        assert_eq!(clock.until(0), Duration::ZERO, "the past is due now");
    }

    #[tokio::test(start_paused = true)]
    async fn sleeps_and_timestamps_move_together() {
        let clock = Clock::starting_at(0);
        let sleeper = tokio::spawn(async move {
            clock.sleep_until(60_000_000).await;
            clock.now_micros()
        });
        // Paused time advances by itself once every task waits on a timer.
        assert_eq!(sleeper.await.unwrap(), 60_000_000);
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        assert_eq!(add(i64::MAX - 1, Duration::from_secs(1)), i64::MAX);
        assert_eq!(add(0, Duration::MAX), i64::MAX);
        assert_eq!(micros(Duration::MAX), i64::MAX);
        assert_eq!(
            between(i64::MIN, i64::MAX),
            Duration::from_micros(i64::MAX as u64)
        );
        assert_eq!(between(5, 3), Duration::ZERO);
        assert_eq!(add(10, Duration::from_micros(5)), 15);
    }
}
