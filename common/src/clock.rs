//! The two clocks of the lease protocol. Voters time grants on the
//! monotonic clock; holders time their lease on `CLOCK_BOOTTIME`, which
//! keeps counting while the machine is suspended, so a frozen holder never
//! underestimates how long it was away. Wall-clock time is never used for
//! timing: [`unix_ms`] only stamps records and events for people.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Wall-clock Unix milliseconds, for stamping records and events (0 if the
/// clock is before 1970).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Monotonic time since this clock was made (the voter's clock).
#[derive(Debug, Clone, Copy)]
pub struct Monotonic {
    origin: Instant,
}

impl Monotonic {
    /// Starts counting now.
    pub fn new() -> Monotonic {
        Monotonic {
            origin: Instant::now(),
        }
    }

    /// Time since the origin.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

impl Default for Monotonic {
    fn default() -> Self {
        Monotonic::new()
    }
}

/// `CLOCK_BOOTTIME`: time since boot, including suspend (the holder's clock).
pub fn boottime() -> Duration {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is available on Linux");
    Duration::new(
        u64::try_from(ts.tv_sec()).unwrap_or(0),
        u32::try_from(ts.tv_nsec()).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_never_goes_backwards() {
        let a = boottime();
        let b = boottime();
        assert!(b >= a && a > Duration::ZERO);
    }
}
