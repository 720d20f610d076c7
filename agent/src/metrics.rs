//! The agent's Prometheus endpoint. A scrape runs no query: it renders
//! the collector's last collection (the same one the reports are made
//! from), what earlier collections showed, the agent's in-memory state and
//! a few `/proc` reads, so scrapes never pile work onto mysqld and answer
//! at once even while mysqld is stuck or down. Plain HTTP by default;
//! mutual TLS with `metrics_tls`.

pub mod family;
pub mod ha;
pub mod host;
pub mod mysqld;
pub mod receive;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use dbfleet_common::tls::TlsContext;
use dbfleet_proto::model::MysqlObservation;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backup::Jobs;
use crate::binlog_archive::ArchiveStatus;
use crate::guard::Guard;
use crate::mysql::observer::Collection;
use crate::voter::LeaseVoter;
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

/// What earlier collections showed that the last one alone does not.
#[derive(Debug, Default)]
pub struct History {
    /// When replication last received something.
    pub receive: receive::ReceiveTracker,
    /// mysqld's `datadir`, as last shown: the disk metrics stay while
    /// mysqld is down (a full disk being one reason it might be).
    pub datadir: Option<PathBuf>,
    /// The host as last read (off the async workers: a `statvfs` of a
    /// hung data directory's filesystem never returns).
    pub host: host::HostSample,
    /// A host read is under way (one at a time: a hung one is not joined
    /// by another on every collection).
    pub host_reading: bool,
}

impl History {
    /// Takes in a collection that arrived at `now`.
    pub fn record(&mut self, c: &Collection, now: Instant) {
        let Some(s) = &c.sample else {
            return;
        };
        self.receive.observe(&s.replica_rows, &s.status, now);
        if let Some(d) = s.variables.get("datadir").filter(|d| !d.is_empty()) {
            self.datadir = Some(PathBuf::from(d));
        }
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
    pub voter: Arc<LeaseVoter>,
    /// Backup jobs.
    pub jobs: Arc<Jobs>,
    /// The binlog archive.
    pub archive: Arc<ArchiveStatus>,
    /// Report acknowledgements.
    pub acks: Arc<ReportAcks>,
    /// What earlier collections showed, kept by [`serve`] from every
    /// collection as it arrives.
    pub history: Mutex<History>,
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
        let (receive_age, host_sample) = {
            let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            (h.receive.age(Instant::now()), h.host.clone())
        };
        out.extend(ha::families(&ha::HaInputs {
            cluster: &self.cluster,
            host: &self.host,
            state,
            status: sample.map(|s| &s.status),
            fenced: self.guard.current().fenced,
            epoch_term: self.voter.promised_term(),
            coordinators: &coordinators,
            jobs: &jobs,
            archive: archive.as_ref(),
            receive_age,
            now_unix_ms: dbfleet_common::clock::unix_ms(),
        }));
        out.extend(host::families(&self.cluster, &self.host, &host_sample));
        out
    }

    /// Feeds every collection to the history as it arrives, until
    /// `cancel`: the receive age is only as fine as the collections it
    /// compares, not the scrapes.
    async fn follow(self: Arc<Self>, cancel: CancellationToken) {
        let mut collections = self.collections.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = collections.changed() => if changed.is_err() { return },
            }
            let c = collections.borrow_and_update().clone();
            let datadir = {
                let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = c {
                    h.record(&c, Instant::now());
                }
                if h.host_reading {
                    continue;
                }
                h.host_reading = true;
                h.datadir.clone()
            };
            let me = self.clone();
            tokio::task::spawn_blocking(move || {
                let sample = host::read(datadir.as_deref());
                let mut h = me.history.lock().unwrap_or_else(|p| p.into_inner());
                h.host = sample;
                h.host_reading = false;
            });
        }
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

/// Serves `/metrics` on `listener` until `cancel`: over mutual TLS with
/// `tls` (the agent's own certificates; only viewer, operator and
/// coordinator certificates may scrape), plain HTTP without.
pub async fn serve(
    listener: TcpListener,
    sources: Arc<Sources>,
    tls: Option<Arc<TlsContext>>,
    cancel: CancellationToken,
) {
    tokio::spawn(sources.clone().follow(cancel.clone()));
    // Prometheus asks for gzip: the ~190 KB of text goes out at about a
    // tenth. The fastest level: 15 % more bytes than the default level
    // for two thirds of its CPU per scrape (docs/benchmarks.md).
    let app = Router::new()
        .route("/metrics", get(scrape))
        .layer(
            tower_http::compression::CompressionLayer::new()
                .quality(tower_http::CompressionLevel::Fastest),
        )
        .with_state(sources);
    dbfleet_common::metrics_http::serve(listener, app, tls, cancel).await;
}
