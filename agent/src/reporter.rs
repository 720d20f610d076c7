//! One long-lived report stream per coordinator, each on its own task with
//! its own reconnect backoff, so one coordinator being down or slow never
//! delays reports to the other.

use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::backoff::Backoff;
use dbfleet_common::identity::{Identity, Role};
use dbfleet_common::tls::{self, TlsContext};
use dbfleet_proto::pb;
use dbfleet_proto::pb::report_service_client::ReportServiceClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::guard::AckClock;

/// Backoff bounds between reconnect attempts.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Streams every published report to coordinator `name` at `addr` until
/// `cancel`, reconnecting with capped, jittered backoff. Whatever answers
/// at `addr` must carry that coordinator's certificate.
pub async fn report_to(
    (name, addr): (String, String),
    tls: Arc<TlsContext>,
    mut reports: watch::Receiver<Option<pb::AgentReport>>,
    acks: Arc<AckClock>,
    accepted: Arc<crate::metrics::ReportAcks>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
    let mut failures = 0u32;
    let mut last_refusal = String::new();
    loop {
        let to = (name.as_str(), addr.as_str());
        match stream_once(to, &tls, &mut reports, (&acks, &accepted), &cancel).await {
            Ok(Ended::Cancelled) => return,
            Ok(Ended::Acked) => {
                backoff.reset();
                failures = 0;
                info!(coordinator = addr, "report stream closed; reconnecting");
            }
            Err(status) => {
                failures += 1;
                let refused = matches!(
                    status.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                );
                if refused && status.message() != last_refusal {
                    // A refusal is a configuration problem a human must fix.
                    error!(coordinator = addr, error = %status.message(), "coordinator refused our reports");
                    last_refusal = status.message().to_string();
                } else if failures == 1 {
                    warn!(coordinator = addr, error = %status.message(), "cannot report to coordinator; retrying");
                } else {
                    debug!(coordinator = addr, error = %status.message(), failures, "still cannot report");
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

enum Ended {
    Cancelled,
    /// The stream worked (at least one ack) and then ended.
    Acked,
}

async fn stream_once(
    (name, addr): (&str, &str),
    tls: &Arc<TlsContext>,
    reports: &mut watch::Receiver<Option<pb::AgentReport>>,
    (clock, accepted): (&AckClock, &crate::metrics::ReportAcks),
    cancel: &CancellationToken,
) -> Result<Ended, tonic::Status> {
    let coordinator = Identity::new(Role::Coordinator, name);
    let channel = tls::channel_to(tls.clone(), addr, &coordinator, CONNECT_TIMEOUT);
    let mut client = ReportServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    // Send what we have straight away: the coordinator learns of us on
    // connect rather than one interval later.
    if let Some(r) = reports.borrow_and_update().clone() {
        let _ = tx.try_send(r);
    }
    let mut acks = client
        .stream_reports(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut acked = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(Ended::Cancelled),
            changed = reports.changed() => {
                if changed.is_err() {
                    return Ok(Ended::Cancelled);
                }
                let next = reports.borrow_and_update().clone();
                // Never wait on a slow coordinator here (that would also
                // hold off shutdown): a full queue drops this report, and
                // the next one carries the newer state anyway.
                if let Some(r) = next
                    && let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(r)
                {
                    break;
                }
            }
            ack = acks.message() => match ack {
                Ok(Some(a)) => {
                    accepted.accepted(addr);
                    if a.active {
                        clock.acked();
                    }
                    if !acked {
                        info!(coordinator = addr, coordinator_id = a.coordinator_id, "reporting to coordinator");
                    }
                    acked = true;
                }
                Ok(None) => break,
                Err(status) => return if acked && status.code() == tonic::Code::Unavailable { Ok(Ended::Acked) } else { Err(status) },
            },
        }
    }
    if acked {
        Ok(Ended::Acked)
    } else {
        Err(tonic::Status::unavailable(
            "stream closed before any report was acknowledged",
        ))
    }
}
