//! Rate-limited warnings: bad input from one misbehaving peer must not flood the logs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one message through per `interval` and counts the others.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) const fn new(interval: Duration) -> Self {
        Throttle { interval, state: Mutex::new((None, 0)) }
    }

    /// `Some(suppressed)` when a message may be logged now (with how many were dropped
    /// since the last one), `None` when it must be dropped.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_and_a_count_of_the_rest() {
        let t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.allow_at(t0), Some(0));
        assert_eq!(t.allow_at(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_millis(20)), None);
        assert_eq!(t.allow_at(t0 + Duration::from_millis(1_001)), Some(2));
    }
}
