//! Time as the core sees it: a value passed in, never read from a clock.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. Wall-clock, because replicas sharing a store must
/// agree on deadlines; the shell reads the clock and passes the value in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp `ms` milliseconds after the epoch.
    pub const fn from_ms(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_ms(self) -> u64 {
        self.0
    }

    /// This timestamp plus `ms` milliseconds (saturating).
    pub const fn plus_ms(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    /// This timestamp plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Self {
        self.plus_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// How long from `self` until `later` (zero if `later` is not later).
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Timestamp(t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RFC 3339 in UTC with milliseconds; humantime stops at the year 9999.
        let t = UNIX_EPOCH + Duration::from_millis(self.0.min(LAST_RFC3339_MS));
        write!(f, "{}", humantime::format_rfc3339_millis(t))
    }
}

/// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write.
const LAST_RFC3339_MS: u64 = 253_402_300_799_999;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_formats_as_rfc3339() {
        let t = Timestamp::from_ms(1_700_000_000_123);
        assert_eq!(t.plus_ms(877).as_ms(), 1_700_000_001_000);
        assert_eq!(Timestamp::from_ms(u64::MAX).plus_ms(1).as_ms(), u64::MAX);
        assert_eq!(t.until(t.plus_ms(5)), Duration::from_millis(5));
        assert_eq!(t.plus_ms(5).until(t), Duration::ZERO);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.123Z");
        assert_eq!(Timestamp::from_ms(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::from_ms(951_782_400_000).to_string(), "2000-02-29T00:00:00.000Z");
        assert_eq!(Timestamp::from_ms(u64::MAX).to_string(), "9999-12-31T23:59:59.999Z");
    }
}
