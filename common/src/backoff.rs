//! Capped exponential backoff with full jitter for reconnect loops, so a
//! fleet of agents that lost a coordinator does not reconnect in lockstep.

use std::time::Duration;

use rand::Rng;

/// Delays between reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubles per failure, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay: uniformly random in `[ceiling/2, ceiling]`, where the
    /// ceiling doubles with each attempt up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }

    /// Forget past failures after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_stays_capped() {
        let cap = Duration::from_secs(5);
        let mut b = Backoff::new(Duration::from_millis(100), cap);
        let first = b.next_delay();
        assert!(first <= Duration::from_millis(101));
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(d <= cap + Duration::from_millis(1), "{d:?}");
            assert!(d >= Duration::from_millis(50));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(101));
    }
}
