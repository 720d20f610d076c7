//! The active coordinator's backup work of its own, every tick: deleting
//! what retention removes, starting the backup the schedule says is due,
//! and verifying completed backups when the policy says so. What to do is
//! decided in `schedule` from the catalog; this module only carries it
//! out, each step journaled in the catalog before the agent is asked
//! (a deletion is marked `deleting` first, so a backup being deleted is
//! never listed as usable, and a coordinator that takes over finishes it).

use std::collections::BTreeSet;

use dbfleet_common::clock::unix_ms;
use dbfleet_lease::Epoch;
use dbfleet_proto::pb;
use dbfleet_proto::pb::command_request::Command;
use tracing::{info, warn};

use super::schedule::{self, BackupPolicy, Kind};
use super::{Backups, DELETING, RUNNING};
use crate::error::ServiceError;
use crate::store::ClusterRecord;

/// How soon a verification no host could start is tried again.
const VERIFY_RETRY_MS: i64 = 5_000;

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
    pub(super) async fn follow_policy(&self, cluster: &str, epoch: &Epoch, rec: &ClusterRecord) {
        let now = unix_ms();
        self.delete_expired(cluster, epoch, rec, now).await;
        let p = &rec.backup_policy;
        if let Some(kind) = schedule::due(now, p, &rec.backups)
            && self.may_try(cluster, kind.as_str(), now, kind.retry_after_ms(p))
        {
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
        if let Some(b) = schedule::to_verify(p, &rec.backups)
            && !rec.backups.values().any(|b| b.status == RUNNING)
            && self.may_try(cluster, "verify", now, VERIFY_RETRY_MS)
        {
            let req = pb::VerifyBackupRequest {
                id: b.id.clone(),
                host: String::new(),
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
        let mut busy: BTreeSet<String> = rec
            .restores
            .values()
            .filter(|r| r.status == RUNNING)
            .map(|r| r.backup_id.clone())
            .collect();
        busy.extend(
            rec.backups
                .values()
                .filter(|b| b.status == RUNNING)
                .filter_map(|b| b.parent.clone()),
        );
        let expired = schedule::expired(now, &rec.backup_policy, &rec.backups, &busy);
        if !expired.is_empty() {
            let ids = expired.clone();
            let marked = self
                .fleet
                .update_cluster(cluster, epoch.clone(), move |rec| {
                    for id in &ids {
                        if let Some(b) = rec.backups.get_mut(id) {
                            b.status = DELETING.into();
                        }
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = marked {
                warn!(cluster, error = %e, "cannot mark expired backups; retrying");
                return;
            }
            info!(cluster, backups = ?expired, "retention removes these backups");
        }
        let deleting: Vec<(String, String, bool)> = self
            .fleet
            .cluster_record(cluster)
            .backups
            .values()
            .filter(|b| b.status == DELETING)
            .map(|b| (b.id.clone(), b.host.clone(), b.manifest_json.is_empty()))
            .collect();
        for (id, host, no_files) in deleting {
            if !no_files && let Err(e) = self.delete_files(cluster, epoch, &id, &host).await {
                warn!(
                    cluster,
                    backup = id,
                    error = e,
                    "cannot delete the backup's files yet; retrying"
                );
                continue;
            }
            let gone = id.clone();
            let r = self
                .fleet
                .update_cluster(cluster, epoch.clone(), move |rec| {
                    rec.backups.remove(&gone);
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
