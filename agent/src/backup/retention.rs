//! What retention asks of an agent: deleting a backup from the
//! repository, and pruning the binlog archive below the oldest kept backup.

use dbfleet_common::gtid_state::GtidState;
use tracing::info;

use super::repo::{self, BackupDir};
use super::{Jobs, RUNNING, valid_id};
use crate::mysql::control::ControlError;

impl Jobs {
    /// Removes backup `id` from the repository (retention): its manifest
    /// first, so a deletion cut short leaves no usable-looking backup.
    /// Refused while a job of this agent uses it.
    pub async fn delete_backup(&self, id: &str) -> Result<String, ControlError> {
        valid_id(id)?;
        let dir = BackupDir::new(self.repository()?, &self.cluster, id);
        if let Some(e) = self
            .lock()
            .iter()
            .find(|e| e.job.state == RUNNING && e.uses == id)
        {
            return Err(ControlError::Busy(format!(
                "{} {} uses backup {id}",
                e.job.kind, e.job.id
            )));
        }
        let target = dir.clone();
        let gone = tokio::task::spawn_blocking(move || {
            if !target.repo.exists(&target.key)? {
                return Ok(false);
            }
            target.repo.remove(&target.file(repo::MANIFEST_FILE))?;
            target.repo.remove_all(&target.key).map(|()| true)
        })
        .await
        .map_err(|e| ControlError::Repository(format!("delete task: {e}")))?;
        let gone = gone.map_err(|e| {
            ControlError::Repository(format!("cannot delete {}: {e}", dir.describe()))
        })?;
        if !gone {
            return Ok(format!("backup {id} is not in the repository"));
        }
        info!(backup = id, "backup deleted from the repository");
        Ok(format!("backup {id} deleted"))
    }

    /// Deletes the archived binlogs of every stream of the cluster that no
    /// restore of a backup at or after `keep_from` needs (retention).
    pub async fn prune_archive(&self, keep_from: &str) -> Result<String, ControlError> {
        let keep = GtidState::parse(keep_from).map_err(ControlError::NotConfigured)?;
        let repository = self.repository()?.clone();
        let cluster = self.cluster.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            crate::binlog_archive::store::prune(&repository, &cluster, &keep)
        })
        .await
        .map_err(|e| ControlError::Repository(format!("prune task: {e}")))?
        .map_err(|e| ControlError::Repository(format!("cannot prune the binlog archive: {e}")))?;
        if pruned > 0 {
            info!(
                keep_from,
                chunks = pruned,
                "archived binlogs no kept backup needs deleted"
            );
        }
        Ok(format!("{pruned} archived binlog chunks deleted"))
    }
}
