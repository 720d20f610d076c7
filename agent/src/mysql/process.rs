//! mysqld as a process, known by its pid file: whether it still runs, and
//! waiting for it to end. Fencing proves a stop with these, and a restore
//! waits with them for the server it shut down.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The pid a pid file holds.
pub fn read_pid(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Whether `pid` names a live process: signal 0 finds it, and it is no
/// zombie. When that cannot be told (`/proc` hidden, another pid
/// namespace) it counts as alive: a stop is never assumed.
pub fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// Waits until `pid` has ended; false when it still runs after `within`.
pub async fn wait_gone(pid: i32, within: Duration) -> bool {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_process_has_ended_and_this_one_runs() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(i32::MAX));
    }
}
