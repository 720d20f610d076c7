//! Turning SIGINT/SIGTERM into a cancellation every task can watch, and
//! bounding how long a graceful stop may take.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
