//! The time the shell reads and hands to the core.
//!
//! The core never reads a clock: every decision takes `now` as a [`Timestamp`]. The shell
//! reads it from one [`Clock`]: [`WallClock`] in production (wall-clock milliseconds,
//! because replicas sharing a store must agree on deadlines), [`TokioClock`] in tests,
//! which follows tokio's clock so that `tokio::time::pause` and `advance` move expiry,
//! batching, drain deadlines and recovery without a real sleep.

use std::fmt::Debug;
use std::time::SystemTime;

use islb_core::Timestamp;

/// Where the shell reads the time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now(&self) -> Timestamp {
        Timestamp::from(SystemTime::now())
    }
}

/// A clock that starts at the wall-clock time of its creation and then moves with tokio's
/// clock (`tokio::time::Instant`), so a paused runtime's `advance` moves it too.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: Timestamp,
    at: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `start` now.
    pub fn starting_at(start: Timestamp) -> Self {
        TokioClock { start, at: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::starting_at(WallClock.now())
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.start.plus(self.at.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_with_a_paused_runtime() {
        let clock = TokioClock::starting_at(Timestamp::from_ms(1_000));
        assert_eq!(clock.now(), Timestamp::from_ms(1_000));
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now(), Timestamp::from_ms(3_500));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(clock.now(), Timestamp::from_ms(63_500));
    }
}
