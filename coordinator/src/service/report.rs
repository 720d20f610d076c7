//! `ReportService`: the stream every agent keeps open to this coordinator.

use std::sync::Arc;

use dbfleet_common::identity::request_identity;
use dbfleet_proto::model::Report;
use dbfleet_proto::pb;
use dbfleet_proto::pb::report_service_server::ReportService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::error::ServiceError;
use crate::fleet::Fleet;

/// The largest report accepted, encoded. A real one is a few kilobytes
/// (its largest part, the manifests of the sixteen jobs it lists, a few
/// more); a larger one is refused before it is decoded, so no agent can
/// make every status reply that carries its view megabytes long.
pub(crate) const MAX_REPORT_BYTES: usize = 256 * 1024;

/// Receives agent reports.
#[derive(Debug, Clone)]
pub(crate) struct ReportApi {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) coordinator_id: String,
    pub(crate) cancel: CancellationToken,
}

#[tonic::async_trait]
impl ReportService for ReportApi {
    type StreamReportsStream = ReceiverStream<Result<pb::ReportAck, Status>>;

    async fn stream_reports(
        &self,
        request: Request<Streaming<pb::AgentReport>>,
    ) -> Result<Response<Self::StreamReportsStream>, Status> {
        let identity = request_identity(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let fleet = self.fleet.clone();
        let cancel = self.cancel.clone();
        let coordinator_id = self.coordinator_id.clone();
        tokio::spawn(async move {
            let host = identity.name;
            let mut guard = None;
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => break,
                    m = inbound.message() => m,
                };
                let message = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        // A report over MAX_REPORT_BYTES, or one that does
                        // not decode: the agent is told why.
                        debug!(host, error = %status, "report stream ended");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let sequence = message.sequence;
                let started = std::time::Instant::now();
                let accepted = match Report::try_from(message) {
                    Ok(report) => fleet.accept_report(&host, report).await,
                    Err(e) => Err(ServiceError::from(e)),
                };
                fleet.counters().report_processed(started.elapsed());
                if let Err(e) = accepted {
                    warn!(host, error = %e, "report refused; closing the stream");
                    let _ = tx.send(Err(e.into())).await;
                    break;
                }
                if guard.is_none() {
                    guard = Some(fleet.stream_opened(&host));
                }
                let active = fleet
                    .ha()
                    .holder()
                    .command_epoch(dbfleet_common::clock::boottime())
                    .is_some();
                let ack = pb::ReportAck {
                    sequence,
                    coordinator_id: coordinator_id.clone(),
                    active,
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
            drop(guard);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
