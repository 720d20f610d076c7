//! The optional I/O rate limit of a backup (`[backup]
//! rate_limit_mib_per_s`). A backup tool writes its stream into a pipe
//! this agent reads; reading it no faster than the limit makes the tool
//! block on the pipe, so the server's disks see the tool read its data
//! files at that rate, and the repository sees it written at most at that
//! rate before compression.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest single sleep, so that a cancelled backup stops promptly
/// even under a very low limit.
const SLICE: Duration = Duration::from_millis(100);

/// How long a reader that has taken `bytes` in `elapsed` must wait so that
/// its average since the start stays at or under `bytes_per_s`.
pub fn owed(bytes: u64, elapsed: Duration, bytes_per_s: u64) -> Duration {
    let due = Duration::from_secs_f64(bytes as f64 / bytes_per_s.max(1) as f64);
    due.saturating_sub(elapsed)
}

/// Paces one stream.
pub struct Throttle {
    bytes_per_s: u64,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    /// A throttle whose clock starts now.
    pub fn new(bytes_per_s: u64) -> Throttle {
        Throttle {
            bytes_per_s,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` more bytes read and waits until they are within the
    /// limit; stops waiting, with an error, when `cancel` is set.
    pub fn pass(&mut self, n: usize, cancel: &AtomicBool) -> Result<(), String> {
        self.bytes += n as u64;
        loop {
            let wait = owed(self.bytes, self.started.elapsed(), self.bytes_per_s);
            if wait.is_zero() {
                return Ok(());
            }
            if cancel.load(Ordering::Relaxed) {
                return Err("stopped: the agent is shutting down".into());
            }
            std::thread::sleep(wait.min(SLICE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_ahead_of_the_limit_owes_the_difference_and_one_behind_owes_nothing() {
        let mib = 1 << 20;
        assert_eq!(
            owed(4 * mib, Duration::from_secs(1), 2 * mib),
            Duration::from_secs(1)
        );
        assert_eq!(
            owed(4 * mib, Duration::from_secs(3), 2 * mib),
            Duration::ZERO
        );
        assert_eq!(
            owed(mib, Duration::ZERO, 4 * mib),
            Duration::from_millis(250)
        );
        assert_eq!(owed(0, Duration::ZERO, 1), Duration::ZERO);
    }

    #[test]
    fn a_cancelled_wait_stops_with_an_error() {
        let mut t = Throttle::new(1);
        let cancel = AtomicBool::new(true);
        let e = t.pass(1 << 30, &cancel).unwrap_err();
        assert!(e.contains("shutting down"), "{e}");
    }
}
