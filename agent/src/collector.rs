//! Turns observations of mysqld into reports: one every report interval,
//! and one at once whenever what the agent sees changes.

use std::time::{Duration, Instant};

use std::sync::Arc;

use dbfleet_proto::model::{
    AgentState, ConfigProblem, MysqlAddress, MysqlObservation, Name, Report,
};
use dbfleet_proto::pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::guard::Guard;
use crate::mysql::observer::{Collection, Observer};

/// What every report of this agent process carries.
#[derive(Debug, Clone)]
pub struct ReportIdentity {
    /// This host.
    pub host: Name,
    /// Its cluster.
    pub cluster: Name,
    /// Random per process.
    pub instance: String,
    /// Where replicas reach the server.
    pub mysql_address: MysqlAddress,
    /// Where coordinators send commands.
    pub agent_address: String,
    /// Self-fence timeout (zero: disabled).
    pub self_fence_timeout_ms: u64,
    /// Longest time between reports.
    pub report_interval_ms: u64,
}

/// What reports carry besides the observation: the jobs, the binlog
/// archive and what the configuration checks found.
pub struct ReportSources {
    /// Backup, verification and restore jobs.
    pub jobs: Arc<crate::backup::Jobs>,
    /// Binlog archiving.
    pub archive: Arc<crate::binlog_archive::ArchiveStatus>,
    /// The latest configuration problems (`mysql::verify`).
    pub config_problems: watch::Receiver<Vec<ConfigProblem>>,
}

/// Where the collector publishes.
pub struct Outputs {
    /// Reports, for the coordinators.
    pub reports: watch::Sender<Option<pb::AgentReport>>,
    /// Every collection, raw, for the metrics endpoint.
    pub collections: watch::Sender<Option<Arc<Collection>>>,
}

/// Observes every `collect` and publishes a report when the observation,
/// the read-only guard or a job's state changed, or `report` has passed
/// since the last one, until `cancel`.
pub async fn run(
    mut observer: Observer,
    guard: Arc<Guard>,
    mut backups: ReportSources,
    id: ReportIdentity,
    (collect, report): (Duration, Duration),
    out: Outputs,
    cancel: CancellationToken,
) {
    let mut sequence = 0u64;
    let mut last: Option<(Instant, Reported)> = None;
    let mut guard_changes = guard.subscribe();
    let mut tick = tokio::time::interval(collect);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = guard_changes.changed() => {}
            _ = backups.config_problems.changed() => {}
        }
        let collection = tokio::select! {
            _ = cancel.cancelled() => return,
            c = observer.collect() => Arc::new(c),
        };
        let observation = collection.observation.clone();
        let load = collection.sample.as_ref().map(|s| load_of(&s.status));
        out.collections.send_replace(Some(collection));
        let g = guard.current();
        let job_list = backups.jobs.snapshot();
        // A job that starts, moves to its next step or ends is reported
        // at once; its byte count waits for the next report.
        let job_states: Vec<String> = job_list
            .iter()
            .map(|j| format!("{}:{}:{}", j.id, j.state, j.phase))
            .collect();
        let config_problems = backups.config_problems.borrow_and_update().clone();
        let now = Reported {
            observation: observation.clone(),
            fenced: g.fenced,
            job_states,
            config_problems: config_problems.clone(),
        };
        let due = match &last {
            None => true,
            Some((at, prev)) => *prev != now || at.elapsed() >= report,
        };
        if !due {
            continue;
        }
        sequence += 1;
        let observed_at_unix_ms = dbfleet_common::clock::unix_ms();
        let r = Report {
            host: id.host.clone(),
            cluster: id.cluster.clone(),
            agent_instance: id.instance.clone(),
            sequence,
            observed_at_unix_ms,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            mysql_address: id.mysql_address.clone(),
            mysql: observation.clone(),
            agent: AgentState {
                address: id.agent_address.clone(),
                fenced: g.fenced,
                fence_reason: g.reason.clone(),
                self_fence_timeout_ms: id.self_fence_timeout_ms,
                report_interval_ms: id.report_interval_ms,
                jobs: job_list,
                binlog_archive: backups.archive.report(),
                load,
                config_problems: config_problems.clone(),
            },
        };
        last = Some((Instant::now(), now));
        out.reports.send_replace(Some(pb::AgentReport::from(r)));
    }
}

/// What a report said that makes the next one due at once when it changes.
#[derive(Debug, PartialEq)]
struct Reported {
    observation: MysqlObservation,
    fenced: bool,
    /// Each job's id, state and step (not its byte count).
    job_states: Vec<String>,
    config_problems: Vec<ConfigProblem>,
}

/// The load counters `dbfleet top` shows, from SHOW GLOBAL STATUS.
fn load_of(status: &std::collections::HashMap<String, String>) -> pb::ServerLoad {
    let n = |k: &str| {
        status
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    pb::ServerLoad {
        queries_total: n("Questions"),
        threads_connected: n("Threads_connected") as u32,
        threads_running: n("Threads_running") as u32,
        uptime_seconds: n("Uptime"),
    }
}
