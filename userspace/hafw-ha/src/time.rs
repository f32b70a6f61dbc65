//! The core's notion of time: a monotonic timestamp supplied by the caller.
//!
//! The core never reads a clock. The tokio shell picks an epoch once (`let start =
//! std::time::Instant::now()`) and passes `Timestamp::ZERO + start.elapsed()` with every call;
//! simulations pass virtual time. Both are deterministic from the core's point of view, which is
//! what lets the tests assert timer durations exactly.

use std::{
    fmt,
    ops::{Add, Sub},
    time::Duration,
};

use serde::Serialize;

/// A point on the caller's monotonic clock, in nanoseconds since an epoch the caller chose.
///
/// Serialized as the plain number of nanoseconds. Arithmetic saturates instead of panicking: a core
/// that has run for 584 years has bigger problems than a wrapped timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch.
    pub const ZERO: Self = Self(0);

    /// A timestamp `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// A timestamp `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Self;

    fn add(self, rhs: Duration) -> Self {
        // Durations past u64 nanoseconds (584 years) cannot be configured (see `Timers::validate`),
        // so saturating here only guards against arithmetic on already-saturated values.
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(nanos))
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;

    /// Same as [`Timestamp::saturating_duration_since`].
    fn sub(self, rhs: Timestamp) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Display for Timestamp {
    /// Seconds with microsecond precision, e.g. `12.345678s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}s",
            self.0 / 1_000_000_000,
            (self.0 % 1_000_000_000) / 1_000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(1500);
        assert_eq!(t + Duration::from_millis(500), Timestamp::from_millis(2000));
        assert_eq!(Timestamp::from_millis(2000) - t, Duration::from_millis(500));
        assert_eq!(t - Timestamp::from_millis(2000), Duration::ZERO);
        assert_eq!(
            Timestamp::from_nanos(u64::MAX - 1) + Duration::from_secs(1),
            Timestamp::from_nanos(u64::MAX)
        );
        assert_eq!(t.to_string(), "1.500000s");
    }
}
