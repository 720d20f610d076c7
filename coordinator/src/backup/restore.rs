//! Restores: which host may be restored over, the record that follows the
//! agent's job, and what the host is afterwards.
//!
//! A restore takes its host out of service first (`control.detached`,
//! written with the restore's intent): nothing repoints, repairs or
//! promotes it while its mysqld is down or holds old data. A restore
//! without a target puts it back in service when it completes; the repair
//! loop then makes it a replica of the primary from the backup's
//! position. A point-in-time restore leaves it detached, holding exactly
//! the data up to the target, until the operator restores it again.

use dbfleet_common::clock::unix_ms;
use dbfleet_lease::Epoch;
use dbfleet_proto::pb;
use dbfleet_proto::pb::command_request::Command;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Backups, RUNNING, job_end, jobs_of, stamp};
use crate::error::ServiceError;
use crate::failover::journal::Event;
use crate::fleet::MemberState;
use crate::store::ClusterRecord;

/// One restore, as the coordinator follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// Job id on the agent.
    pub id: String,
    /// The backup restored.
    pub backup_id: String,
    /// The host restored onto.
    pub host: String,
    /// Unix seconds to stop replay at (0: none).
    #[serde(default)]
    pub to_time_unix: i64,
    /// GTIDs to replay up to (empty: none).
    #[serde(default)]
    pub to_gtid: String,
    /// A rebuild by CLONE: the member cloned from (`backup_id` is then
    /// empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub donor: String,
    /// Asked for by `dbfleet rebuild`: from a backup, every archived
    /// transaction after it is replayed before the rejoin.
    #[serde(default)]
    pub rebuild: bool,
    /// "running", "completed" or "failed".
    pub status: String,
    /// Why it failed.
    #[serde(default)]
    pub error: String,
    /// What the agent did.
    #[serde(default)]
    pub detail: String,
    /// When it was asked for and when it ended (Unix ms).
    pub started_at_unix_ms: i64,
    /// End.
    #[serde(default)]
    pub finished_at_unix_ms: i64,
}

impl RestoreRecord {
    /// A restore of `backup_id` (empty for a CLONE) onto `host`, running
    /// from now, to no target.
    pub(super) fn running(id: String, backup_id: &str, host: &str) -> RestoreRecord {
        RestoreRecord {
            id,
            backup_id: backup_id.to_string(),
            host: host.to_string(),
            to_time_unix: 0,
            to_gtid: String::new(),
            donor: String::new(),
            rebuild: false,
            status: RUNNING.into(),
            error: String::new(),
            detail: String::new(),
            started_at_unix_ms: unix_ms(),
            finished_at_unix_ms: 0,
        }
    }

    fn point_in_time(&self) -> bool {
        self.to_time_unix != 0 || !self.to_gtid.is_empty()
    }

    /// What the host's data comes from, for events and messages.
    pub(super) fn source(&self) -> String {
        if self.donor.is_empty() {
            format!("backup {}", self.backup_id)
        } else {
            format!("a CLONE of {}", self.donor)
        }
    }

    fn target(&self) -> String {
        if self.to_time_unix != 0 {
            let t =
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.to_time_unix as u64);
            format!("time {}", humantime::format_rfc3339_seconds(t))
        } else if !self.to_gtid.is_empty() {
            format!("GTID {}", self.to_gtid)
        } else {
            "latest (rejoin as a replica)".into()
        }
    }

    /// As the API shows it.
    pub fn view(&self, cluster: &str) -> pb::RestoreView {
        pb::RestoreView {
            id: self.id.clone(),
            cluster: cluster.to_string(),
            backup_id: self.backup_id.clone(),
            host: self.host.clone(),
            target: self.target(),
            status: self.status.clone(),
            error: self.error.clone(),
            detail: self.detail.clone(),
            started_at_unix_ms: self.started_at_unix_ms,
            finished_at_unix_ms: self.finished_at_unix_ms,
            donor: self.donor.clone(),
            ..Default::default()
        }
    }
}

/// Why desired state forbids restoring over `host` now, if it does.
fn refuse_in(rec: &ClusterRecord, host: &str) -> Option<String> {
    if rec.last_primary.as_deref() == Some(host) {
        return Some(format!(
            "{host} is the primary; switch over to another member before restoring it"
        ));
    }
    if let Some(op) = &rec.control.operation {
        return Some(format!(
            "{} {} is in progress; restore when it ends",
            op.kind.as_str(),
            op.id
        ));
    }
    if let Some(r) = rec
        .restores
        .values()
        .find(|r| r.host == host && r.status == RUNNING)
    {
        return Some(format!("restore {} onto {host} is already running", r.id));
    }
    None
}

/// Why `host` may not be restored over (or rebuilt) now, if it may not.
pub(super) fn refuse(rec: &ClusterRecord, m: &MemberState) -> Option<String> {
    let host = &m.host;
    if let Some(why) = refuse_in(rec, host) {
        return Some(why);
    }
    if m.server().is_some_and(|s| s.writable()) {
        return Some(format!(
            "{host} is writable; only a read-only member is restored over"
        ));
    }
    if !m.reporting {
        return Some(format!("{host}'s agent is not reporting"));
    }
    if let Some(job) = super::running_job(m) {
        return Some(format!("{host} is busy with {job}; retry when it ends"));
    }
    if m.server().is_none() {
        return Some(format!(
            "{host}'s mysqld is not reachable; the agent needs it running to find its data directory"
        ));
    }
    None
}

impl Backups {
    /// `dbfleet backup restore`.
    pub async fn restore(
        &self,
        req: pb::RestoreBackupRequest,
    ) -> Result<pb::RestoreView, ServiceError> {
        let epoch = self.fleet.ha().write_epoch()?;
        if req.to_time_unix != 0 && !req.to_gtid.is_empty() {
            return Err(ServiceError::Refused(
                "give a time or a GTID to restore to, not both".into(),
            ));
        }
        if req.to_time_unix < 0 {
            return Err(ServiceError::Refused(format!(
                "{} is not a time after 1970",
                req.to_time_unix
            )));
        }
        if !req.to_gtid.is_empty() {
            dbfleet_common::gtid_state::GtidState::parse(&req.to_gtid)
                .map_err(ServiceError::Refused)?;
        }
        let (cluster, b) = self.find(&req.id)?;
        if b.status != "completed" {
            return Err(ServiceError::Refused(format!(
                "backup {} is {}; only a completed backup can be restored",
                b.id, b.status
            )));
        }
        let members = self.fleet.members(&cluster);
        let m = members.iter().find(|m| m.host == req.host).ok_or_else(|| {
            ServiceError::Refused(format!("{} is not a member of {cluster}", req.host))
        })?;
        let rec = self.fleet.cluster_record(&cluster);
        if let Some(why) = refuse(&rec, m) {
            return Err(ServiceError::Refused(why));
        }
        let r = RestoreRecord {
            to_time_unix: req.to_time_unix,
            to_gtid: req.to_gtid.clone(),
            ..RestoreRecord::running(format!("restore-{}-{}", m.host, stamp()), &b.id, &m.host)
        };
        self.start(&cluster, m, epoch, r, None).await
    }

    /// Records restore `r` onto `m` (the host out of service first) and
    /// starts it on the agent: from its backup, or as a CLONE of the
    /// mysqld at `clone` (its address and whether TLS is required).
    pub(super) async fn start(
        &self,
        cluster: &str,
        m: &MemberState,
        epoch: Epoch,
        r: RestoreRecord,
        clone: Option<(String, bool)>,
    ) -> Result<pb::RestoreView, ServiceError> {
        let cluster = cluster.to_string();
        // Intent first, and the host out of service before its mysqld stops.
        let r = {
            let mut r = r;
            let e = Event::new(
                if r.rebuild {
                    "rebuild-started"
                } else {
                    "restore-started"
                },
                &m.host,
                format!("restoring {} onto {} ({})", r.source(), m.host, r.target()),
                &epoch,
                vec![],
            );
            self.fleet
                .update_cluster(&cluster, epoch.clone(), move |rec| {
                    // again on the record being changed: a switchover or
                    // another restore may have started since the check
                    let unusable = || {
                        if r.donor.is_empty() {
                            super::schedule::unusable(&rec.backups, &r.backup_id)
                        } else {
                            None
                        }
                    };
                    if let Some(why) = refuse_in(rec, &r.host).or_else(unusable) {
                        return Err(ServiceError::Refused(why));
                    }
                    while rec.restores.contains_key(&r.id) {
                        r.id.push_str("-1");
                    }
                    rec.control.detached.insert(
                        r.host.clone(),
                        format!("restore {} of {} running", r.id, r.source()),
                    );
                    rec.control.record(e);
                    rec.restores.insert(r.id.clone(), r.clone());
                    Ok(r)
                })
                .await?
        };
        // Out-of-service members' streams are never replayed (they
        // diverged, or hold another point in time), nor this host's own.
        let rec = self.fleet.cluster_record(&cluster);
        let mut exclude_hosts: Vec<String> = rec
            .control
            .detached
            .keys()
            .chain(&rec.control.needs_rebuild)
            .cloned()
            .collect();
        exclude_hosts.sort();
        exclude_hosts.dedup();
        let (clone_donor, clone_tls) = clone.unwrap_or_default();
        let cmd = Command::StartRestore(pb::StartRestore {
            job_id: r.id.clone(),
            backup_id: r.backup_id.clone(),
            to_time_unix: r.to_time_unix,
            to_gtid: r.to_gtid.clone(),
            clone_donor,
            clone_tls,
            replay_archive: r.rebuild && r.donor.is_empty(),
            exclude_hosts,
            // Only members' streams, each chunk signed by its member.
            archive_writers: self
                .fleet
                .members(&cluster)
                .into_iter()
                .map(|m| m.host)
                .collect(),
        });
        match self.command(m, &epoch, cmd).await {
            Ok(detail) => {
                info!(restore = r.id, host = r.host, detail, "restore started");
                Ok(r.view(&cluster))
            }
            Err(e) => {
                // The agent may have started it all the same (a reply
                // lost): the record stays running and the host out of
                // service until its reports end it (or a minute of
                // reports without it does).
                warn!(
                    restore = r.id,
                    host = r.host,
                    error = e,
                    "restore start not confirmed; following the agent's reports"
                );
                let mut v = r.view(&cluster);
                v.detail =
                    format!("the agent did not confirm the start ({e}); following its reports");
                Ok(v)
            }
        }
    }

    /// `dbfleet backup restore` waiting for the end.
    pub fn get_restore(&self, id: &str) -> Result<pb::RestoreView, ServiceError> {
        self.fleet
            .cluster_names()
            .into_iter()
            .find_map(|c| {
                let rec = self.fleet.cluster_record(&c);
                let r = rec.restores.get(id)?;
                let mut v = r.view(&c);
                // how far it is, live from its agent's report
                if r.status == RUNNING
                    && let Some(j) = jobs_of(&self.fleet.members(&c), &r.host)
                        .iter()
                        .find(|j| j.id == r.id)
                {
                    v.bytes = j.bytes;
                    v.phase = j.phase.clone();
                }
                Some(v)
            })
            .ok_or_else(|| ServiceError::UnknownBackup(format!("restore {id}")))
    }

    /// Ends running restores from the agents' reports.
    pub(super) async fn follow_restores(&self, cluster: &str, epoch: &Epoch, rec: &ClusterRecord) {
        if !rec.restores.values().any(|r| r.status == RUNNING) {
            return;
        }
        let members = self.fleet.members(cluster);
        let now = unix_ms();
        let ended: Vec<RestoreRecord> = rec
            .restores
            .values()
            .filter(|r| r.status == RUNNING)
            .filter_map(|r| {
                let (state, detail, _, _) =
                    job_end(&members, &r.host, &r.id, r.started_at_unix_ms, now)?;
                let mut n = r.clone();
                n.finished_at_unix_ms = now;
                if state == "completed" {
                    n.status = state;
                    n.detail = detail;
                } else {
                    n.status = "failed".into();
                    n.error = detail;
                }
                Some(n)
            })
            .collect();
        for r in ended {
            let rebuild = r.rebuild;
            let (kind, message, detached) = match (r.status.as_str(), r.point_in_time()) {
                ("completed", false) => (
                    if rebuild { "rebuilt" } else { "restored" },
                    format!(
                        "{} restored from {}; it rejoins as a replica",
                        r.host,
                        r.source()
                    ),
                    None,
                ),
                ("completed", true) => (
                    "restored",
                    format!(
                        "{} restored from backup {} to {}; it stays out of service",
                        r.host,
                        r.backup_id,
                        r.target()
                    ),
                    Some(format!(
                        "restored from backup {} to {} and kept apart; restore it without a target to make it a replica again",
                        r.backup_id,
                        r.target()
                    )),
                ),
                _ => (
                    if rebuild {
                        "rebuild-failed"
                    } else {
                        "restore-failed"
                    },
                    format!("restore {} onto {} failed: {}", r.id, r.host, r.error),
                    Some(format!(
                        "restore {} failed ({}); restore it again",
                        r.id, r.error
                    )),
                ),
            };
            info!(
                cluster,
                restore = r.id,
                host = r.host,
                status = r.status,
                "restore ended"
            );
            let e = Event::new(kind, &r.host, message, epoch, vec![r.detail.clone()]);
            let res = self
                .fleet
                .update_cluster(cluster, epoch.clone(), move |rec| {
                    match detached {
                        Some(why) => {
                            rec.control.detached.insert(r.host.clone(), why);
                        }
                        None => {
                            rec.control.detached.remove(&r.host);
                            // rebuilt from a backup: no longer diverged
                            rec.control.needs_rebuild.remove(&r.host);
                        }
                    }
                    rec.control.record(e);
                    rec.restores.insert(r.id.clone(), r);
                    Ok(())
                })
                .await;
            if let Err(e) = res {
                warn!(cluster, error = %e, "cannot record the restore's end; retrying");
            }
        }
    }
}
