//! The active coordinator's backup work of its own, every tick: deleting
//! what retention removes, starting the backup the schedule says is due,
//! and verifying completed backups when the policy says so. What to do is
//! decided in `schedule` from the catalog; this module only carries it
//! out, each step journaled in the catalog before the agent is asked
//! (a deletion is marked `deleting` first, so a backup being deleted is
//! never listed as usable, and a coordinator that takes over finishes it).

use dbfleet_common::clock::unix_ms;
use dbfleet_lease::Epoch;
use dbfleet_proto::pb;
use dbfleet_proto::pb::command_request::Command;
use tracing::{info, warn};

use super::schedule::{self, BackupPolicy, Kind};
use super::{Backups, DELETING, NoParent};
use crate::error::ServiceError;
use crate::store::ClusterRecord;

/// How soon a verification no host could start is tried again.
const VERIFY_RETRY_MS: i64 = 5_000;
/// How soon the deletion of a backup's files is tried again.
const DELETE_RETRY_MS: i64 = 10_000;

impl Backups {
    /// `dbfleet backup schedule --cluster C ...`: sets the policy.
    pub async fn set_policy(&self, p: pb::BackupPolicy) -> Result<pb::BackupPolicy, ServiceError> {
        let epoch = self.fleet.ha().write_epoch()?;
        if !self.fleet.cluster_names().contains(&p.cluster) {
            return Err(ServiceError::Refused(format!(
                "no cluster named {:?}",
                p.cluster
            )));
        }
        let policy = BackupPolicy {
            set_at_unix_ms: unix_ms(),
            ..BackupPolicy::from_pb(&p)
        };
        let cluster = p.cluster.clone();
        let stored = policy.clone();
        self.fleet
            .update_cluster(&cluster, epoch, move |rec| {
                rec.backup_policy = stored;
                Ok(())
            })
            .await?;
        info!(cluster, ?policy, "backup policy set");
        Ok(policy.to_pb(&cluster))
    }

    /// The policy of a cluster.
    pub fn get_policy(&self, cluster: &str) -> Result<pb::BackupPolicy, ServiceError> {
        if !self.fleet.cluster_names().iter().any(|c| c == cluster) {
            return Err(ServiceError::Refused(format!(
                "no cluster named {cluster:?}"
            )));
        }
        Ok(self
            .fleet
            .cluster_record(cluster)
            .backup_policy
            .to_pb(cluster))
    }

    /// One pass of the cluster's automatic work.
    pub(super) async fn follow_policy(&self, cluster: &str, epoch: &Epoch) {
        let now = unix_ms();
        let rec = self.fleet.cluster_record(cluster);
        self.delete_expired(cluster, epoch, &rec, now).await;
        self.prune_archive(cluster, epoch, &rec).await;
        let p = &rec.backup_policy;
        if let Some(kind) = schedule::due(now, p, &rec.backups)
            && self.may_try(cluster, kind.as_str(), now, kind.retry_after_ms(p))
        {
            self.start_scheduled(cluster, &rec, kind).await;
        }
        if let Some(b) = schedule::to_verify(p, &rec.backups)
            && self.may_try(cluster, "verify", now, VERIFY_RETRY_MS)
        {
            // the host that took it, else any member free to (they share
            // the repository)
            let members = self.fleet.members(cluster);
            let host = members
                .iter()
                .filter(|m| m.reporting && super::running_job(m).is_none())
                .min_by_key(|m| m.host != b.host)
                .map(|m| m.host.clone());
            if let Some(host) = host {
                let req = pb::VerifyBackupRequest {
                    id: b.id.clone(),
                    host,
                };
                match self.verify(req).await {
                    Ok(_) => info!(
                        cluster,
                        backup = b.id,
                        "verification of a new backup started"
                    ),
                    Err(e) => {
                        warn!(cluster, backup = b.id, error = %e, "verification could not start; retrying later")
                    }
                }
            }
        }
    }

    /// Starts a scheduled backup of `kind`; an incremental one that
    /// cannot build on the newest physical backup (its host was restored,
    /// it failed verification) becomes a full one, and one that waits for
    /// a running full backup is not started.
    async fn start_scheduled(&self, cluster: &str, rec: &ClusterRecord, mut kind: Kind) {
        if kind == Kind::Incremental {
            match super::incremental_parent(rec, None) {
                Ok(_) => {}
                Err(NoParent::Wait(_)) => return,
                Err(NoParent::TakeFull(why)) => {
                    info!(
                        cluster,
                        why, "scheduled incremental backup becomes a full one"
                    );
                    kind = Kind::Full;
                }
            }
        }
        let req = pb::RunBackupRequest {
            cluster: cluster.to_string(),
            host: String::new(),
            method: if kind == Kind::Logical {
                "logical"
            } else {
                "physical"
            }
            .into(),
            incremental: kind == Kind::Incremental,
        };
        match self.run(req).await {
            Ok(b) => info!(
                cluster,
                backup = b.id,
                kind = kind.as_str(),
                "scheduled backup started"
            ),
            Err(e) => {
                warn!(cluster, kind = kind.as_str(), error = %e, "scheduled backup could not start; retrying later")
            }
        }
    }

    /// Whether an automatic start refused before it was journaled (no
    /// member could take it) may be tried again: not more often than a
    /// failed backup is retried.
    fn may_try(&self, cluster: &str, what: &str, now: i64, wait: i64) -> bool {
        let key = format!("{cluster}/{what}");
        let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
        if tried.get(&key).is_some_and(|at| now - at < wait) {
            return false;
        }
        tried.insert(key, now);
        true
    }

    /// Marks what retention removes as `deleting`, then has an agent
    /// delete each from the repository and drops its entry.
    async fn delete_expired(&self, cluster: &str, epoch: &Epoch, rec: &ClusterRecord, now: i64) {
        let being_deleted = |rec: &ClusterRecord| -> Vec<(String, String, bool)> {
            rec.backups
                .values()
                .filter(|b| b.status == DELETING)
                .map(|b| (b.id.clone(), b.host.clone(), b.manifest_json.is_empty()))
                .collect()
        };
        let mut deleting = being_deleted(rec);
        let busy = schedule::in_use(&rec.backups, &rec.restores);
        if !schedule::expired(now, &rec.backup_policy, &rec.backups, &busy).is_empty() {
            // decided again on the record being changed: a restore or a
            // verification may have started using one since
            let marked = self
                .fleet
                .update_cluster(cluster, epoch.clone(), move |rec| {
                    let busy = schedule::in_use(&rec.backups, &rec.restores);
                    let ids = schedule::expired(now, &rec.backup_policy, &rec.backups, &busy);
                    for id in &ids {
                        if let Some(b) = rec.backups.get_mut(id) {
                            b.status = DELETING.into();
                        }
                    }
                    Ok((ids, being_deleted(rec)))
                })
                .await;
            match marked {
                Ok((ids, now_deleting)) => {
                    info!(cluster, backups = ?ids, "retention removes these backups");
                    deleting = now_deleting;
                }
                Err(e) => {
                    warn!(cluster, error = %e, "cannot mark expired backups; retrying");
                    return;
                }
            }
        }
        for (id, host, no_files) in deleting {
            if !no_files {
                if !self.may_try(cluster, &format!("delete/{id}"), now, DELETE_RETRY_MS) {
                    continue;
                }
                if let Err(e) = self.delete_files(cluster, epoch, &id, &host).await {
                    warn!(
                        cluster,
                        backup = id,
                        error = e,
                        "cannot delete the backup's files yet; retrying"
                    );
                    continue;
                }
            }
            let gone = id.clone();
            let r = self
                .fleet
                .update_cluster(cluster, epoch.clone(), move |rec| {
                    if rec.backups.get(&gone).is_some_and(|b| b.status == DELETING) {
                        rec.backups.remove(&gone);
                    }
                    Ok(())
                })
                .await;
            match r {
                Ok(()) => info!(cluster, backup = id, "backup deleted"),
                Err(e) => {
                    warn!(cluster, backup = id, error = %e, "cannot drop the catalog entry; retrying")
                }
            }
        }
    }

    /// Has an agent delete the archived binlogs older than every kept
    /// backup needs, when retention is on and the oldest kept backup
    /// changed since the last time.
    async fn prune_archive(&self, cluster: &str, epoch: &Epoch, rec: &ClusterRecord) {
        if !rec.backup_policy.retains() {
            return;
        }
        let Some(keep_from) = schedule::archive_keep_from(&rec.backups) else {
            return;
        };
        let done = self
            .pruned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            == Some(&keep_from);
        if done {
            return;
        }
        let mut members = self.fleet.members(cluster);
        members.retain(|m| m.reporting);
        let Some(m) = members.first() else { return };
        let cmd = Command::PruneArchive(pb::PruneArchive {
            keep_from_gtid: keep_from.clone(),
        });
        match self.command(m, epoch, cmd).await {
            Ok(detail) => {
                info!(cluster, keep_from, detail, "binlog archive pruned");
                self.pruned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(cluster.to_string(), keep_from);
            }
            Err(e) => warn!(
                cluster,
                error = e,
                "cannot prune the binlog archive yet; retrying"
            ),
        }
    }

    /// Has an agent of the cluster that reports (the backup's own host
    /// first) remove the backup's directory from the repository.
    async fn delete_files(
        &self,
        cluster: &str,
        epoch: &Epoch,
        id: &str,
        host: &str,
    ) -> Result<(), String> {
        let mut members = self.fleet.members(cluster);
        members.retain(|m| m.reporting);
        members.sort_by_key(|m| m.host != host);
        let m = members
            .first()
            .ok_or_else(|| "no agent of the cluster reports".to_string())?;
        self.command(
            m,
            epoch,
            Command::DeleteBackup(pb::DeleteBackup { id: id.to_string() }),
        )
        .await
        .map(|_| ())
    }
}
