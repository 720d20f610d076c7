//! Turns observations of mysqld into reports: one every report interval,
//! and one at once whenever what the agent sees changes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dbfleet_proto::model::{MysqlAddress, MysqlObservation, Name, Report};
use dbfleet_proto::pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::mysql::observer::Observer;

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
}

/// Observes every `collect` and publishes a report when the observation
/// changed or `report` has passed since the last one, until `cancel`.
pub async fn run(
    mut observer: Observer,
    id: ReportIdentity,
    collect: Duration,
    report: Duration,
    out: watch::Sender<Option<pb::AgentReport>>,
    cancel: CancellationToken,
) {
    let mut sequence = 0u64;
    let mut last: Option<(Instant, MysqlObservation)> = None;
    let mut tick = tokio::time::interval(collect);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let observation = tokio::select! {
            _ = cancel.cancelled() => return,
            o = observer.observe() => o,
        };
        let due = match &last {
            None => true,
            Some((at, prev)) => *prev != observation || at.elapsed() >= report,
        };
        if !due {
            continue;
        }
        sequence += 1;
        let observed_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let r = Report {
            host: id.host.clone(),
            cluster: id.cluster.clone(),
            agent_instance: id.instance.clone(),
            sequence,
            observed_at_unix_ms,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            mysql_address: id.mysql_address.clone(),
            mysql: observation.clone(),
        };
        last = Some((Instant::now(), observation));
        out.send_replace(Some(pb::AgentReport::from(r)));
    }
}
