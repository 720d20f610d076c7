//! systemd `Type=notify` support: readiness once listeners serve, watchdog
//! pings while the runtime is alive, and a stopping notice. Outside systemd
//! (no `NOTIFY_SOCKET`) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Tells systemd the service is ready; call after listeners are bound.
pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

/// Tells systemd a graceful stop has begun.
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Pings the watchdog at half its interval until `cancel`, when
/// `WatchdogSec=` is set for the unit. A runtime that stops scheduling
/// tasks stops pinging, and systemd restarts the service.
pub fn spawn_watchdog(cancel: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        loop {
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}
