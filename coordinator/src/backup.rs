//! The backup catalog and its jobs: which host takes a backup, the
//! catalog entries (kept in each cluster's desired record, so the standby
//! has them), and the loop that follows the agents' jobs in their reports.
//!
//! Desired vs observed: the catalog says what was asked and what is known
//! to have happened; the agents' reports say what their jobs are doing.
//! The active reconciles the first from the second every 200 ms, so
//! a coordinator that takes over mid-backup carries on following it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dbfleet_common::clock::unix_ms;
use dbfleet_lease::Epoch;
use dbfleet_proto::model::IoThread;
use dbfleet_proto::pb;
use dbfleet_proto::pb::command_request::Command;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod automatic;
mod rebuild;
pub mod restore;
pub mod schedule;

use crate::error::ServiceError;
use crate::fleet::{Fleet, MemberState};
use crate::ha::voters::AgentClients;
use crate::store::ClusterRecord;

/// "running", "completed", "failed", and "deleting" while retention
/// removes it.
const RUNNING: &str = "running";
const DELETING: &str = "deleting";
/// How long an agent may take to accept a job.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// One backup in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// Catalog id, also its directory name in the repository.
    pub id: String,
    /// Host that takes it.
    pub host: String,
    /// "physical" or "logical".
    pub method: String,
    /// The backup an incremental one is built on.
    #[serde(default)]
    pub parent: Option<String>,
    /// "running", "completed" or "failed".
    pub status: String,
    /// Why it failed.
    #[serde(default)]
    pub error: String,
    /// Stored bytes, last seen.
    #[serde(default)]
    pub bytes: u64,
    /// The manifest (JSON) once completed.
    #[serde(default)]
    pub manifest_json: String,
    /// When it was asked for and when it ended (Unix ms).
    pub started_at_unix_ms: i64,
    /// End.
    #[serde(default)]
    pub finished_at_unix_ms: i64,
    /// "never", "running", "verified" or "failed".
    #[serde(default = "never")]
    pub verification: String,
    /// The verification job and host while running, and its summary after.
    #[serde(default)]
    pub verification_detail: String,
    /// The running verification job: (job id, host).
    #[serde(default)]
    pub verify_job: Option<(String, String)>,
    /// When that verification was asked for (Unix ms).
    #[serde(default)]
    pub verify_started_at_unix_ms: i64,
}

fn never() -> String {
    "never".into()
}

/// A catalog entry as the API shows it.
pub fn backup_view(cluster: &str, b: &BackupRecord) -> pb::BackupView {
    pb::BackupView {
        id: b.id.clone(),
        cluster: cluster.to_string(),
        host: b.host.clone(),
        method: b.method.clone(),
        status: b.status.clone(),
        verification: b.verification.clone(),
        verification_detail: b.verification_detail.clone(),
        started_at_unix_ms: b.started_at_unix_ms,
        finished_at_unix_ms: b.finished_at_unix_ms,
        bytes: b.bytes,
        error: b.error.clone(),
        manifest_json: b.manifest_json.clone(),
        parent: b.parent.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// Why no incremental backup can be taken now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoParent {
    /// Only a full backup can continue: none yet, the parent's host was
    /// restored since, the parent failed verification, or another host
    /// was asked for.
    TakeFull(String),
    /// A full backup is running: the next incremental builds on it.
    Wait(String),
}

impl NoParent {
    fn message(self) -> String {
        match self {
            NoParent::TakeFull(m) | NoParent::Wait(m) => m,
        }
    }
}

/// The backup an incremental one builds on: the newest completed physical
/// backup of the cluster, whose host must take the incremental one (InnoDB
/// LSNs are one server's). Refused when that host was restored since:
/// its data no longer continues the backup's.
pub(crate) fn incremental_parent(
    rec: &crate::store::ClusterRecord,
    host: Option<&str>,
) -> Result<BackupRecord, NoParent> {
    if let Some(full) = rec
        .backups
        .values()
        .find(|b| b.status == RUNNING && b.method == "physical" && b.parent.is_none())
    {
        return Err(NoParent::Wait(format!(
            "full backup {} is running; the next incremental backup builds on it",
            full.id
        )));
    }
    let parent = rec
        .backups
        .values()
        .filter(|b| b.status == "completed" && b.method == "physical")
        .max_by_key(|b| b.started_at_unix_ms)
        .ok_or_else(|| {
            NoParent::TakeFull(
                "there is no completed physical backup to build on: take a full backup first"
                    .into(),
            )
        })?;
    let why = if parent.verification == "failed" {
        Some(format!(
            "the newest physical backup {} failed its verification: take a full backup",
            parent.id
        ))
    } else if let Some(h) = host.filter(|h| *h != parent.host) {
        Some(format!(
            "an incremental backup continues the newest physical backup {}, taken on {}: \
             run it there (omit --host) or take a full backup on {h}",
            parent.id, parent.host
        ))
    } else {
        rec.restores
            .values()
            .find(|r| r.host == parent.host && r.started_at_unix_ms >= parent.started_at_unix_ms)
            .map(|r| {
                format!(
                    "{} was restored (restore {}) after backup {}: its data no longer continues it; take a full backup",
                    parent.host, r.id, parent.id
                )
            })
    };
    match why {
        Some(why) => Err(NoParent::TakeFull(why)),
        None => Ok(parent.clone()),
    }
}

/// `20261121T094600Z` for now.
fn stamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

pub(crate) fn running_job(m: &MemberState) -> Option<String> {
    m.report
        .as_ref()?
        .agent
        .jobs
        .iter()
        .find(|j| j.state == RUNNING)
        .map(|j| format!("{} {}", j.kind, j.id))
}

/// The host for a backup: a healthy replica (both threads running, least
/// lag), else the primary; never one already running a heavy job.
pub(crate) fn choose_host(members: &[MemberState]) -> Result<String, String> {
    let mut best: Option<(u64, &MemberState)> = None;
    let mut primary = None;
    let mut why = Vec::new();
    for m in members {
        let Some(s) = m.server() else {
            why.push(format!("{}: not reachable", m.host));
            continue;
        };
        if let Some(job) = running_job(m) {
            why.push(format!("{}: busy with {job}", m.host));
            continue;
        }
        match &s.replication {
            Some(r) if r.io_thread == IoThread::Running && r.sql_running => {
                let lag = r.seconds_behind.unwrap_or(u64::MAX);
                if best.is_none_or(|(l, _)| lag < l) {
                    best = Some((lag, m));
                }
            }
            Some(_) => why.push(format!("{}: replication not running", m.host)),
            None if s.writable() => primary = Some(m),
            None => why.push(format!("{}: neither replica nor primary", m.host)),
        }
    }
    best.map(|(_, m)| m)
        .or(primary)
        .map(|m| m.host.clone())
        .ok_or_else(|| format!("no member can take a backup now ({})", why.join("; ")))
}

/// Backups of every cluster.
#[derive(Debug)]
pub struct Backups {
    fleet: Arc<Fleet>,
    clients: Arc<AgentClients>,
    /// When an automatic start was last refused, by cluster and kind.
    tried: std::sync::Mutex<BTreeMap<String, i64>>,
    /// The position each cluster's binlog archive was last pruned to.
    pruned: std::sync::Mutex<BTreeMap<String, String>>,
}

impl Backups {
    /// The backup machinery of one coordinator.
    pub fn new(fleet: Arc<Fleet>, clients: Arc<AgentClients>) -> Arc<Backups> {
        Arc::new(Backups {
            fleet,
            clients,
            tried: Default::default(),
            pruned: Default::default(),
        })
    }

    async fn command(
        &self,
        m: &MemberState,
        epoch: &Epoch,
        cmd: Command,
    ) -> Result<String, String> {
        self.clients
            .command_member(self.fleet.ha(), m, epoch, "", 0, cmd, COMMAND_TIMEOUT)
            .await
            .map(|r| r.detail)
    }

    /// Finds a backup in every cluster's catalog.
    fn find(&self, id: &str) -> Result<(String, BackupRecord), ServiceError> {
        self.fleet
            .cluster_names()
            .into_iter()
            .find_map(|c| {
                let b = self.fleet.cluster_record(&c).backups.get(id).cloned()?;
                Some((c, b))
            })
            .ok_or_else(|| ServiceError::UnknownBackup(id.to_string()))
    }

    /// `dbfleet backup run`.
    pub async fn run(&self, req: pb::RunBackupRequest) -> Result<pb::BackupView, ServiceError> {
        let epoch = self.fleet.ha().write_epoch()?;
        let method = match (req.method.as_str(), req.incremental) {
            ("" | "physical", _) => "physical",
            ("logical", false) => "logical",
            ("logical", true) => {
                return Err(ServiceError::Refused(
                    "a logical backup cannot be incremental: use --method physical".into(),
                ));
            }
            (other, _) => {
                return Err(ServiceError::Refused(format!(
                    "backup method {other:?} is unknown: use physical or logical"
                )));
            }
        };
        if !self.fleet.cluster_names().contains(&req.cluster) {
            return Err(ServiceError::Refused(format!(
                "no cluster named {:?}",
                req.cluster
            )));
        }
        let members = self.fleet.members(&req.cluster);
        let parent = if req.incremental {
            let rec = self.fleet.cluster_record(&req.cluster);
            let given = (!req.host.is_empty()).then_some(req.host.as_str());
            Some(incremental_parent(&rec, given).map_err(|e| ServiceError::Refused(e.message()))?)
        } else {
            None
        };
        let host = match (&parent, req.host.is_empty()) {
            (Some(p), _) => p.host.clone(),
            (None, true) => choose_host(&members).map_err(ServiceError::Refused)?,
            (None, false) => req.host.clone(),
        };
        let m = members.iter().find(|m| m.host == host).ok_or_else(|| {
            ServiceError::Refused(format!("{host} is not a member of {}", req.cluster))
        })?;
        if m.server().is_none() {
            return Err(ServiceError::Refused(format!(
                "{host}'s mysqld is not reachable now"
            )));
        }
        // One heavy job per host: refused here rather than recorded and
        // failed by the agent (which refuses it too).
        if let Some(job) = running_job(m) {
            let hint = if parent.is_some() {
                "an incremental backup runs on its parent's host"
            } else {
                "or leave out --host"
            };
            return Err(ServiceError::Refused(format!(
                "{host} is busy with {job}; retry when it ends ({hint})"
            )));
        }
        let record = BackupRecord {
            id: format!("{}-{}-{host}", req.cluster, stamp()),
            host: host.clone(),
            method: method.to_string(),
            parent: parent.as_ref().map(|p| p.id.clone()),
            status: RUNNING.into(),
            error: String::new(),
            bytes: 0,
            manifest_json: String::new(),
            started_at_unix_ms: unix_ms(),
            finished_at_unix_ms: 0,
            verification: never(),
            verification_detail: String::new(),
            verify_job: None,
            verify_started_at_unix_ms: 0,
        };
        // Intent first: the catalog knows the backup before the agent runs it.
        let record = self.create(&req.cluster, &epoch, record).await?;
        let id = record.id.clone();
        let cmd = Command::StartBackup(pb::StartBackup {
            id: id.clone(),
            method: method.to_string(),
            parent: record.parent.clone().unwrap_or_default(),
        });
        let record = match self.command(m, &epoch, cmd).await {
            Ok(detail) => {
                info!(backup = id, host, detail, "backup started");
                record
            }
            Err(e) => {
                warn!(backup = id, host, error = e, "backup could not start");
                let failed = BackupRecord {
                    status: "failed".into(),
                    error: e,
                    finished_at_unix_ms: unix_ms(),
                    ..record
                };
                self.put(&req.cluster, &epoch, failed.clone()).await?;
                failed
            }
        };
        Ok(backup_view(&req.cluster, &record))
    }

    /// `dbfleet backup verify`.
    pub async fn verify(
        &self,
        req: pb::VerifyBackupRequest,
    ) -> Result<pb::BackupView, ServiceError> {
        let epoch = self.fleet.ha().write_epoch()?;
        let (cluster, b) = self.find(&req.id)?;
        if b.status != "completed" {
            return Err(ServiceError::Refused(format!(
                "backup {} is {}; only a completed backup can be verified",
                b.id, b.status
            )));
        }
        if b.verification == RUNNING {
            return Ok(backup_view(&cluster, &b));
        }
        let host = if req.host.is_empty() {
            b.host.clone()
        } else {
            req.host.clone()
        };
        let members = self.fleet.members(&cluster);
        let m = members
            .iter()
            .find(|m| m.host == host && m.reporting)
            .ok_or_else(|| ServiceError::Refused(format!("{host}'s agent is not reporting")))?;
        if let Some(job) = running_job(m) {
            return Err(ServiceError::Refused(format!(
                "{host} is busy with {job}; retry when it ends"
            )));
        }
        let job = format!("verify-{}-{}", b.id, stamp());
        // Intent first, as for a backup: a verification the agent runs is
        // always one the catalog follows. Only the verification fields
        // change, and only of an entry still completed (retention may be
        // deleting it).
        let (id, job2, host2) = (b.id.clone(), job.clone(), host.clone());
        let running = self
            .fleet
            .update_cluster(&cluster, epoch.clone(), move |rec| {
                let e = rec
                    .backups
                    .get_mut(&id)
                    .filter(|e| e.status == "completed" && e.verify_job.is_none())
                    .ok_or_else(|| {
                        ServiceError::Refused(format!(
                            "backup {id} is no longer completed, or is being verified"
                        ))
                    })?;
                e.verification = RUNNING.into();
                e.verification_detail = format!("verifying on {host2}");
                e.verify_job = Some((job2, host2));
                e.verify_started_at_unix_ms = unix_ms();
                Ok(e.clone())
            })
            .await?;
        let cmd = Command::StartVerify(pb::StartVerify {
            job_id: job.clone(),
            backup_id: running.id.clone(),
        });
        if let Err(e) = self.command(m, &epoch, cmd).await {
            let (id, before) = (b.id.clone(), b);
            self.fleet
                .update_cluster(&cluster, epoch.clone(), move |rec| {
                    if let Some(e) = rec.backups.get_mut(&id)
                        && e.verify_job.as_ref().is_some_and(|(j, _)| *j == job)
                    {
                        e.verification = before.verification;
                        e.verification_detail = before.verification_detail;
                        e.verify_job = None;
                    }
                    Ok(())
                })
                .await?;
            return Err(ServiceError::Refused(e));
        }
        Ok(self.view(&cluster, &running, &members))
    }

    /// Writes one catalog entry.
    /// Adds a new entry under its id, or under the id with the first free
    /// `-N` suffix: two backups started within one second must not share
    /// an entry (nor, on the agent, a directory).
    async fn create(
        &self,
        cluster: &str,
        epoch: &Epoch,
        mut b: BackupRecord,
    ) -> Result<BackupRecord, ServiceError> {
        self.fleet
            .update_cluster(cluster, epoch.clone(), move |rec| {
                let base = b.id.clone();
                b.id = (1..)
                    .map(|n| match n {
                        1 => base.clone(),
                        n => format!("{base}-{n}"),
                    })
                    .find(|id| !rec.backups.contains_key(id))
                    .expect("some suffix is free");
                rec.backups.insert(b.id.clone(), b.clone());
                Ok(b)
            })
            .await
    }

    async fn put(&self, cluster: &str, epoch: &Epoch, b: BackupRecord) -> Result<(), ServiceError> {
        self.fleet
            .update_cluster(cluster, epoch.clone(), move |rec| {
                rec.backups.insert(b.id.clone(), b);
                Ok(())
            })
            .await
    }

    /// An entry as the API shows it, with the live byte count of a running
    /// backup from its agent's report (not written to the catalog, which
    /// changes only when a job starts or ends).
    fn view(&self, cluster: &str, b: &BackupRecord, members: &[MemberState]) -> pb::BackupView {
        let mut v = backup_view(cluster, b);
        if b.status == RUNNING
            && let Some(j) = jobs_of(members, &b.host).iter().find(|j| j.id == b.id)
        {
            v.bytes = j.bytes;
            v.phase = j.phase.clone();
        }
        if let Some((job, host)) = &b.verify_job
            && let Some(j) = jobs_of(members, host).iter().find(|j| j.id == *job)
        {
            v.verification_bytes = j.bytes;
            v.verification_phase = j.phase.clone();
        }
        v
    }

    /// `dbfleet backup list`.
    pub fn list(&self, cluster: &str) -> Vec<pb::BackupView> {
        let mut out = Vec::new();
        for c in self.fleet.cluster_names() {
            if !cluster.is_empty() && c != cluster {
                continue;
            }
            let rec = self.fleet.cluster_record(&c);
            let members = self.fleet.members(&c);
            out.extend(rec.backups.values().map(|b| self.view(&c, b, &members)));
        }
        out.sort_by_key(|b| b.started_at_unix_ms);
        out
    }

    /// `dbfleet backup show`.
    pub fn get(&self, id: &str) -> Result<pb::BackupView, ServiceError> {
        let (c, b) = self.find(id)?;
        Ok(self.view(&c, &b, &self.fleet.members(&c)))
    }

    /// Brings running catalog entries up to date from the agents' jobs.
    async fn tick(&self) {
        // Never while degraded: the catalog is part of a record this
        // coordinator may not have caught up on.
        let Some(epoch) = self.fleet.ha().automatic_epoch() else {
            return;
        };
        for cluster in self.fleet.cluster_names() {
            let rec = self.fleet.cluster_record(&cluster);
            // Restores and backups are apart in the record: ending a
            // restore leaves `rec.backups` as read.
            self.follow_restores(&cluster, &epoch, &rec).await;
            self.follow_jobs(&cluster, &epoch, &rec).await;
            self.follow_policy(&cluster, &epoch).await;
        }
    }

    /// Ends running backups and verifications from the agents' reports.
    async fn follow_jobs(&self, cluster: &str, epoch: &Epoch, rec: &ClusterRecord) {
        if !rec
            .backups
            .values()
            .any(|b| b.status == RUNNING || b.verify_job.is_some())
        {
            return;
        }
        let members = self.fleet.members(cluster);
        let now = unix_ms();
        let mut changed: BTreeMap<String, BackupRecord> = BTreeMap::new();
        for b in rec.backups.values() {
            if let Some(n) = follow(b, &members, now) {
                changed.insert(n.id.clone(), n);
            }
        }
        if changed.is_empty() {
            return;
        }
        let read = rec.backups.clone();
        for b in changed.values() {
            if b.status != RUNNING && rec.backups.get(&b.id).is_some_and(|o| o.status == RUNNING) {
                info!(
                    backup = b.id,
                    status = b.status,
                    error = b.error,
                    "backup ended"
                );
            }
        }
        // only over entries still as they were read
        let r = self
            .fleet
            .update_cluster(cluster, epoch.clone(), move |now| {
                for (id, n) in changed {
                    if now.backups.get(&id) == read.get(&id) {
                        now.backups.insert(id, n);
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            warn!(cluster, error = %e, "cannot update the backup catalog; retrying");
        }
    }
}

/// The jobs `host`'s agent reports, and whether it reports at all.
fn jobs_of<'a>(members: &'a [MemberState], host: &str) -> &'a [pb::Job] {
    members
        .iter()
        .find(|m| m.host == host)
        .and_then(|m| m.report.as_ref())
        .map_or(&[], |r| r.agent.jobs.as_slice())
}

fn reporting(members: &[MemberState], host: &str) -> bool {
    members.iter().any(|m| m.host == host && m.reporting)
}

/// How long a reporting agent may not list a job the catalog says it runs:
/// longer than the command's timeout, so a job being started is not cut.
const UNKNOWN_JOB_GRACE_MS: i64 = 60_000;

/// A job's end as `(state, detail, manifest)`: its agent's word, or
/// failed when its agent reports without it for the grace period (the job
/// never reached the agent, or the agent restarted after it ended and
/// forgot it).
fn job_end(
    members: &[MemberState],
    host: &str,
    id: &str,
    started_at_unix_ms: i64,
    now: i64,
) -> Option<(String, String, String, u64)> {
    match jobs_of(members, host).iter().find(|j| j.id == id) {
        Some(j) if j.state != RUNNING => Some((
            j.state.clone(),
            j.detail.clone(),
            j.manifest_json.clone(),
            j.bytes,
        )),
        Some(_) => None,
        None if reporting(members, host) && now - started_at_unix_ms > UNKNOWN_JOB_GRACE_MS => {
            Some((
                "failed".into(),
                format!(
                    "the agent of {host} does not know this job (never received, or restarted after it)"
                ),
                String::new(),
                0,
            ))
        }
        None => None,
    }
}

/// The catalog entry `b` after what its agents report, if that ends a job.
fn follow(b: &BackupRecord, members: &[MemberState], now: i64) -> Option<BackupRecord> {
    let mut n = b.clone();
    if b.status == RUNNING
        && let Some((state, detail, manifest, bytes)) =
            job_end(members, &b.host, &b.id, b.started_at_unix_ms, now)
    {
        n.status = state;
        n.bytes = bytes;
        n.finished_at_unix_ms = now;
        if n.status == "completed" {
            n.manifest_json = manifest;
        } else {
            n.error = detail;
        }
    }
    if let Some((job, host)) = &b.verify_job
        && let Some((state, detail, _, _)) =
            job_end(members, host, job, b.verify_started_at_unix_ms, now)
    {
        n.verification = if state == "completed" {
            "verified"
        } else {
            "failed"
        }
        .into();
        n.verification_detail = format!("on {host}: {detail}");
        n.verify_job = None;
    }
    (n != *b).then_some(n)
}

/// Follows the agents' jobs every 200 ms while active, until `cancel`.
pub async fn run(b: Arc<Backups>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        b.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(host: &str, reporting: bool) -> MemberState {
        MemberState {
            host: host.into(),
            mysql_address: "127.0.0.1:3306".into(),
            agent_address: None,
            report: None,
            received_at: None,
            reporting,
        }
    }

    fn record(id: &str, host: &str, method: &str, status: &str, at: i64) -> BackupRecord {
        BackupRecord {
            id: id.into(),
            host: host.into(),
            method: method.into(),
            parent: None,
            status: status.into(),
            error: String::new(),
            bytes: 0,
            manifest_json: String::new(),
            started_at_unix_ms: at,
            finished_at_unix_ms: 0,
            verification: never(),
            verification_detail: String::new(),
            verify_job: None,
            verify_started_at_unix_ms: 0,
        }
    }

    #[test]
    fn an_incremental_builds_on_the_newest_completed_physical_backup_on_its_host() {
        let mut rec = crate::store::ClusterRecord::empty("main");
        let e = incremental_parent(&rec, None).unwrap_err().message();
        assert!(e.contains("take a full backup first"), "{e}");
        for b in [
            record("full", "db2", "physical", "completed", 10),
            record("dump", "db3", "logical", "completed", 30),
            record("broken", "db3", "physical", "failed", 40),
        ] {
            rec.backups.insert(b.id.clone(), b);
        }
        assert_eq!(incremental_parent(&rec, None).unwrap().id, "full");
        assert_eq!(incremental_parent(&rec, Some("db2")).unwrap().id, "full");
        let e = incremental_parent(&rec, Some("db3")).unwrap_err().message();
        assert!(e.contains("taken on db2"), "{e}");
        rec.restores.insert(
            "r1".into(),
            restore::RestoreRecord {
                id: "r1".into(),
                backup_id: "other".into(),
                host: "db2".into(),
                to_time_unix: 0,
                to_gtid: String::new(),
                donor: String::new(),
                rebuild: false,
                status: "completed".into(),
                error: String::new(),
                detail: String::new(),
                started_at_unix_ms: 20,
                finished_at_unix_ms: 25,
            },
        );
        let e = incremental_parent(&rec, None).unwrap_err().message();
        assert!(e.contains("db2 was restored"), "{e}");
    }

    #[test]
    fn a_job_its_reporting_agent_does_not_know_fails_after_the_grace_only() {
        let members = [member("db2", true)];
        assert_eq!(
            job_end(&members, "db2", "b1", 0, UNKNOWN_JOB_GRACE_MS),
            None
        );
        let (state, why, _, _) =
            job_end(&members, "db2", "b1", 0, UNKNOWN_JOB_GRACE_MS + 1).unwrap();
        assert_eq!(state, "failed");
        assert!(why.contains("does not know this job"), "{why}");
        // a silent agent may still be running it
        let silent = [member("db2", false)];
        assert_eq!(
            job_end(&silent, "db2", "b1", 0, 10 * UNKNOWN_JOB_GRACE_MS),
            None
        );
    }
}
