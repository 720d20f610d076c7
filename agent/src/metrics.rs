//! The agent's Prometheus endpoint. A scrape runs no query: it renders
//! the collector's last collection (the same one the reports are made
//! from) and the agent's in-memory state, so scrapes never pile work onto
//! mysqld and answer at once even while mysqld is stuck or down.

pub mod family;
pub mod ha;
pub mod mysqld;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use dbfleet_proto::model::MysqlObservation;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::backup::Jobs;
use crate::binlog_archive::ArchiveStatus;
use crate::fence::Fence;
use crate::guard::Guard;
use crate::mysql::observer::Collection;
use family::Family;

/// When each coordinator last accepted a report, kept by the reporters.
#[derive(Debug)]
pub struct ReportAcks {
    started: Instant,
    last: Mutex<HashMap<String, Instant>>,
}

impl ReportAcks {
    /// No report accepted yet; ages count from now.
    pub fn new() -> ReportAcks {
        ReportAcks {
            started: Instant::now(),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// The coordinator at `addr` accepted a report now.
    pub fn accepted(&self, addr: &str) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), Instant::now());
    }

    /// Seconds since `addr` last accepted a report (since start, if never).
    fn age(&self, addr: &str) -> f64 {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.get(addr)
            .copied()
            .unwrap_or(self.started)
            .elapsed()
            .as_secs_f64()
    }
}

impl Default for ReportAcks {
    fn default() -> Self {
        ReportAcks::new()
    }
}

/// Everything a scrape reads.
pub struct Sources {
    /// The agent's cluster.
    pub cluster: String,
    /// The agent's host.
    pub host: String,
    /// The coordinators reports go to.
    pub coordinators: Vec<String>,
    /// The collector's last collection.
    pub collections: watch::Receiver<Option<Arc<Collection>>>,
    /// The read-only guard.
    pub guard: Arc<Guard>,
    /// The voter's fence record.
    pub fence: Arc<Fence>,
    /// Backup jobs.
    pub jobs: Arc<Jobs>,
    /// The binlog archive.
    pub archive: Arc<ArchiveStatus>,
    /// Report acknowledgements.
    pub acks: Arc<ReportAcks>,
}

impl Sources {
    /// Every family, as a scrape shows them.
    pub fn families(&self) -> Vec<Family> {
        let collection = self.collections.borrow().clone();
        let mut out = Vec::new();
        let (state, sample) = match collection.as_deref() {
            Some(c) => {
                out.extend(mysqld::exporter(c.answered, &c.runs));
                let state = match &c.observation {
                    MysqlObservation::Reachable(s) => Some(s.as_ref()),
                    MysqlObservation::Unreachable { .. } => None,
                };
                (state, c.sample.as_ref())
            }
            None => {
                out.extend(mysqld::exporter(false, &[]));
                (None, None)
            }
        };
        if let Some(s) = sample {
            out.extend(mysqld::global_status(&s.status));
            out.extend(mysqld::global_variables(&s.variables));
            out.extend(mysqld::slave_status(&s.replica_rows));
        }
        let coordinators: Vec<(String, f64)> = self
            .coordinators
            .iter()
            .map(|a| (a.clone(), self.acks.age(a)))
            .collect();
        let jobs = self.jobs.snapshot();
        let archive = self.archive.report();
        out.extend(ha::families(&ha::HaInputs {
            cluster: &self.cluster,
            host: &self.host,
            state,
            status: sample.map(|s| &s.status),
            fenced: self.guard.current().fenced,
            epoch_term: self.fence.promised_term(),
            coordinators: &coordinators,
            jobs: &jobs,
            archive: archive.as_ref(),
            now_unix_ms: dbfleet_common::clock::unix_ms(),
        }));
        out
    }
}

async fn scrape(State(sources): State<Arc<Sources>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        family::render(sources.families()),
    )
}

/// Serves `/metrics` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>, cancel: CancellationToken) {
    let addr = listener.local_addr().ok();
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(sources);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        warn!(?addr, error = %e, "metrics endpoint stopped");
    }
}
