//! Turning SIGINT/SIGTERM into a cancellation every task can watch, and
//! bounding how long a graceful stop may take.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Runs `reload` on every SIGHUP (systemd's `ExecReload`) until `cancel`;
/// `what` names, for the log, what a failed handler leaves fixed. The
/// handler is installed before this returns: until then SIGHUP's default
/// action ends the process, so call it first thing in the runtime.
pub fn on_sighup(
    what: &'static str,
    cancel: CancellationToken,
    mut reload: impl FnMut() + Send + 'static,
) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; {what} stays as it is");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = hup.recv() => reload(),
            }
        }
    });
}

/// Cancels `token` on the first SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, shutting down"),
            _ = int.recv() => info!("SIGINT received, shutting down"),
            _ = token.cancelled() => return,
        }
        token.cancel();
    });
}

/// Waits for `fut` at most `deadline`; returns whether it finished in time.
pub async fn within<F: Future>(deadline: Duration, what: &str, fut: F) -> bool {
    match tokio::time::timeout(deadline, fut).await {
        Ok(_) => true,
        Err(_) => {
            warn!(what, ?deadline, "did not stop within the shutdown deadline");
            false
        }
    }
}
