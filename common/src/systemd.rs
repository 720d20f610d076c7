//! systemd `Type=notify` support: readiness once listeners serve, watchdog
//! pings while the runtime is alive, and a stopping notice. Outside systemd
//! (no `NOTIFY_SOCKET`) every call is a no-op.
//!
//! The notification settings are taken out of the environment at start
//! ([`take_environment`]), so that no program the process starts (a scratch
//! mariadbd, mariadb-backup, a hook, `start_command`) inherits them and
//! notifies, or pings the watchdog, in the service's name.

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// The connected notification socket and the watchdog interval (µs, 0:
/// none), as found at start.
static MANAGER: OnceLock<(Option<UnixDatagram>, u64)> = OnceLock::new();

/// Takes `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` out of the
/// environment, keeping what they said for the calls below. Call it first
/// thing in `main`, before any thread or child process.
pub fn take_environment() {
    MANAGER.get_or_init(|| {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let s = UnixDatagram::unbound().ok()?;
            s.connect(path).ok()?;
            Some(s)
        });
        // Each of these unsets what it read (the crate does what this
        // crate may not: `remove_var`); the status is a real message.
        let _ = sd_notify::notify(true, &[NotifyState::Status("starting")]);
        let mut usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(true, &mut usec);
        (socket, if watchdog { usec } else { 0 })
    });
}

fn notify(states: &[NotifyState<'_>]) {
    let Some((Some(socket), _)) = MANAGER.get() else {
        return;
    };
    let mut msg = String::new();
    for s in states {
        let _ = writeln!(msg, "{s}");
    }
    let _ = socket.send(msg.as_bytes());
}

/// Tells systemd the service is ready; call after listeners are bound.
pub fn notify_ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Tells systemd a graceful stop has begun.
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half its interval until `cancel`, when
/// `WatchdogSec=` is set for the unit. A runtime that stops scheduling
/// tasks stops pinging, and systemd restarts the service.
pub fn spawn_watchdog(cancel: CancellationToken) {
    let usec = MANAGER.get().map_or(0, |(_, usec)| *usec);
    if usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        loop {
            notify(&[NotifyState::Watchdog]);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}
