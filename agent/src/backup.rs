//! Backups and their verification, run by the agent as jobs.
//!
//! A coordinator starts a job with a command and returns at once; the job's
//! progress and outcome travel in the agent's reports, so a coordinator
//! that takes over mid-backup sees the same thing. One heavy job runs at a
//! time. A marker in `state_dir/jobs` lives as long as a job: an agent
//! killed mid-job finds it at its next start, removes the partial files
//! and reports the job failed, so nothing half-written ever looks usable.

pub mod datadir;
pub mod logical;
pub mod physical;
pub mod repo;
pub mod restore;
mod retention;
pub mod scratch;
mod take;
pub mod throttle;
pub mod tools;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dbfleet_proto::pb;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::binlog_archive::store::Target;
use crate::mysql::control::ControlError;
use crate::mysql::observer::MysqlTarget;
use crate::repository::Repository;
use repo::{BackupDir, Manifest, StoredFile};

/// `[backup]` of the agent's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The repository shared by the cluster's agents (docs/backups.md):
    /// an absolute path to a local or mounted directory, or
    /// `s3://BUCKET[/PREFIX]` with a `[backup.s3]` section.
    pub repository: String,
    /// How to reach the bucket of an `s3://` repository.
    #[serde(default)]
    pub s3: Option<crate::repository::S3Config>,
    /// The opened repository (set when the config is loaded).
    #[serde(skip)]
    pub store: Option<Arc<Repository>>,
    /// Where verifications restore into a scratch server (default
    /// `state_dir/scratch`); emptied after each.
    #[serde(default)]
    pub scratch_dir: Option<PathBuf>,
    /// zstd level.
    #[serde(default = "default_level")]
    pub compression_level: i32,
    /// zstd worker threads.
    #[serde(default = "default_threads")]
    pub compression_threads: u32,
    /// Read a backup tool's stream no faster than this many MiB per second,
    /// so that a backup taken on a busy server leaves it disk bandwidth
    /// (unlimited when absent). A slower backup must copy more redo log:
    /// one whose redo log wraps before it is copied fails (docs/backups.md).
    #[serde(default)]
    pub rate_limit_mib_per_s: Option<u64>,
    /// Archive this server's binlogs into the repository continuously
    /// (point-in-time recovery needs them).
    #[serde(default = "yes")]
    pub archive_binlogs: bool,
    /// How often the archive catches up with the server: the RPO.
    #[serde(default = "default_archive_interval", with = "humantime_serde")]
    pub archive_interval: std::time::Duration,
}

fn yes() -> bool {
    true
}
fn default_archive_interval() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

impl BackupConfig {
    /// How backup streams are stored.
    pub fn pipeline(&self) -> repo::Pipeline {
        repo::Pipeline {
            level: self.compression_level,
            threads: self.compression_threads,
            rate_limit_bytes_per_s: self.rate_limit_mib_per_s.map(|m| m << 20),
        }
    }
}

fn default_level() -> i32 {
    3
}
fn default_threads() -> u32 {
    2
}

/// What a backup tool produced, for the manifest.
#[derive(Debug)]
pub struct Taken {
    /// Uncompressed stream bytes.
    pub stream_bytes: u64,
    /// The stored stream.
    pub stored: StoredFile,
    /// GTID the backup is consistent at.
    pub end_gtid: String,
    /// Binary log coordinates at that point.
    pub binlog_file: String,
    /// Position.
    pub binlog_position: u64,
    /// The LSN it copied changes from (0: a full backup) and the
    /// checkpoint LSN it reached.
    pub lsn_from: u64,
    /// See `lsn_from`.
    pub lsn_to: u64,
    /// Tables a logical backup holds.
    pub tables: u64,
    /// Tool and version.
    pub tool: String,
}

const RUNNING: &str = "running";
const COMPLETED: &str = "completed";
const FAILED: &str = "failed";
/// Finished jobs kept for reports, newest last.
const KEEP_FINISHED: usize = 16;

/// What a job's marker file says.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    id: String,
    kind: String,
    /// What to remove if the job never finished.
    partial: PathBuf,
    /// More of it, known once the job runs.
    #[serde(default)]
    also: Vec<PathBuf>,
    /// A backup job's backup, removed from the repository if it has no
    /// manifest.
    #[serde(default)]
    backup: Option<String>,
}

struct Entry {
    job: pb::Job,
    progress: Arc<AtomicU64>,
    phase: Phase,
    /// The backup a verification or restore reads.
    uses: String,
}

/// A value for a MySQL option file, double-quoted so that `#`, spaces
/// and backslashes in it are taken literally.
fn option_value(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A finished backup job as reports carry it.
fn completed_job(id: &str, kind: &str, detail: &str, manifest: &Manifest) -> pb::Job {
    pb::Job {
        id: id.to_string(),
        kind: kind.to_string(),
        state: COMPLETED.into(),
        detail: detail.to_string(),
        manifest_json: serde_json::to_string(manifest).expect("manifests encode"),
        ..Default::default()
    }
}

/// The step a running job is on ("reading the backup", "preparing", ...),
/// shown with its byte count while it runs.
#[derive(Debug, Clone, Default)]
pub struct Phase(Arc<Mutex<&'static str>>);

impl Phase {
    /// Moves the job to step `now`.
    pub fn set(&self, now: &'static str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    fn get(&self) -> &'static str {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The agent's jobs.
pub struct Jobs {
    cluster: String,
    host: String,
    config: Option<BackupConfig>,
    dir: PathBuf,
    scratch: PathBuf,
    target: MysqlTarget,
    start_command: Option<Vec<String>>,
    archive: Arc<crate::binlog_archive::ArchiveStatus>,
    list: Mutex<Vec<Entry>>,
    cancel: Arc<AtomicBool>,
}

/// Ids become directory names: letters, digits, `.`, `_` and `-` only.
fn valid_id(id: &str) -> Result<(), ControlError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ControlError::NotConfigured(format!(
            "{id:?} is not a valid job id (letters, digits, '.', '_', '-')"
        )))
    }
}

impl Jobs {
    /// The registry; cleans up after jobs a previous agent process left
    /// unfinished and lists them as failed.
    pub fn open(
        cluster: &str,
        host: &str,
        state_dir: &Path,
        config: Option<BackupConfig>,
        target: MysqlTarget,
        start_command: Option<Vec<String>>,
        archive: Arc<crate::binlog_archive::ArchiveStatus>,
    ) -> Arc<Jobs> {
        let dir = state_dir.join("jobs");
        let scratch = config
            .as_ref()
            .and_then(|c| c.scratch_dir.clone())
            .unwrap_or_else(|| state_dir.join("scratch"));
        let jobs = Jobs {
            cluster: cluster.to_string(),
            host: host.to_string(),
            config,
            dir,
            scratch,
            target,
            start_command,
            archive,
            list: Mutex::new(Vec::new()),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        jobs.clean_leftovers();
        Arc::new(jobs)
    }

    fn clean_leftovers(&self) {
        // mariadb-backup's temporary directories of backups cut short
        for e in std::fs::read_dir(&self.scratch)
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "tool") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            // credentials and half-written markers
            if path.extension().is_some_and(|x| x == "cnf" || x == "tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(m) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
            else {
                continue;
            };
            let backup = m
                .backup
                .as_ref()
                .zip(self.store())
                .map(|(id, repo)| BackupDir::new(repo, &self.cluster, id));
            // Killed between the manifest and the marker's removal: the
            // backup is complete and says so.
            let job = match backup.as_ref().map(Manifest::read) {
                Some(Ok(manifest)) => completed_job(
                    &m.id,
                    &m.kind,
                    "completed before the agent stopped",
                    &manifest,
                ),
                _ => {
                    for p in std::iter::once(&m.partial).chain(&m.also) {
                        scratch::kill_left_running(p);
                        let _ = std::fs::remove_dir_all(p);
                    }
                    if let Some(b) = &backup
                        && let Err(e) = b.repo.remove_all(&b.key)
                    {
                        warn!(job = m.id, error = %e, "the partial backup could not be removed");
                    }
                    warn!(
                        job = m.id,
                        kind = m.kind,
                        "a job was cut short by the agent's restart; its partial files were removed"
                    );
                    let detail = if m.kind == "restore" {
                        "the agent stopped during the restore; its partial files were removed. \
                         mysqld may be stopped, or running the restored data without its \
                         point-in-time replay; the previous data directory, if it was moved, \
                         is beside it as .NAME.before-JOB: restore again"
                    } else {
                        "the agent stopped during the job; its partial files were removed"
                    };
                    pb::Job {
                        state: FAILED.into(),
                        detail: detail.into(),
                        ..Default::default()
                    }
                }
            };
            self.lock().push(Entry {
                job: pb::Job {
                    id: m.id,
                    kind: m.kind,
                    ..job
                },
                progress: Arc::new(AtomicU64::new(0)),
                phase: Phase::default(),
                uses: String::new(),
            });
            let _ = std::fs::remove_file(&path);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Running and recently finished jobs, for reports.
    pub fn snapshot(&self) -> Vec<pb::Job> {
        self.lock()
            .iter()
            .map(|e| pb::Job {
                bytes: e.progress.load(Ordering::Relaxed),
                phase: if e.job.state == RUNNING {
                    e.phase.get().to_string()
                } else {
                    String::new()
                },
                ..e.job.clone()
            })
            .collect()
    }

    /// Stops running jobs (the agent is shutting down).
    pub fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The repository, when backups are configured.
    fn store(&self) -> Option<&Arc<Repository>> {
        self.config.as_ref().and_then(|c| c.store.as_ref())
    }

    fn config(&self) -> Result<&BackupConfig, ControlError> {
        self.config.as_ref().ok_or_else(|| {
            ControlError::NotConfigured(
                "this agent has no [backup] section (repository = \"/path\") in its config".into(),
            )
        })
    }

    /// The repository, or why there is none.
    fn repository(&self) -> Result<&Arc<Repository>, ControlError> {
        self.config()?.store.as_ref().ok_or_else(|| {
            ControlError::NotConfigured("the backup repository was not opened".into())
        })
    }

    /// Registers a job unless it exists (idempotent) or another runs.
    /// `Ok(Err(words))`: already known, with its state in words.
    fn register(
        &self,
        id: &str,
        kind: &str,
        uses: &str,
    ) -> Result<Result<(Arc<AtomicU64>, Phase), String>, ControlError> {
        let mut list = self.lock();
        if let Some(e) = list.iter().find(|e| e.job.id == id) {
            return Ok(Err(format!("{kind} {id} is already {}", e.job.state)));
        }
        if let Some(busy) = list.iter().find(|e| e.job.state == RUNNING) {
            return Err(ControlError::Busy(format!(
                "{} {} is running on this host; one heavy job at a time",
                busy.job.kind, busy.job.id
            )));
        }
        let progress = Arc::new(AtomicU64::new(0));
        let phase = Phase::default();
        phase.set("starting");
        list.push(Entry {
            job: pb::Job {
                id: id.to_string(),
                kind: kind.to_string(),
                state: RUNNING.into(),
                ..Default::default()
            },
            progress: progress.clone(),
            phase: phase.clone(),
            uses: uses.to_string(),
        });
        let finished: Vec<usize> = list
            .iter()
            .enumerate()
            .filter(|(_, e)| e.job.state != RUNNING)
            .map(|(i, _)| i)
            .collect();
        if finished.len() > KEEP_FINISHED {
            list.remove(finished[0]);
        }
        Ok(Ok((progress, phase)))
    }

    fn finish(&self, id: &str, result: Result<(String, String), String>) {
        let mut list = self.lock();
        if let Some(e) = list.iter_mut().find(|e| e.job.id == id) {
            match result {
                Ok((detail, manifest)) => {
                    e.job.state = COMPLETED.into();
                    e.job.detail = detail;
                    e.job.manifest_json = manifest;
                }
                Err(why) => {
                    e.job.state = FAILED.into();
                    e.job.detail = why;
                }
            }
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
    }

    fn write_marker(&self, m: &Marker) -> Result<(), ControlError> {
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| {
                dbfleet_common::durable::write_atomic(
                    &self.dir.join(format!("{}.json", m.id)),
                    &serde_json::to_vec(m).expect("markers encode"),
                    0o600,
                )
            })
            .map_err(|e| {
                ControlError::NotConfigured(format!(
                    "cannot write the job marker in {}: {e}",
                    self.dir.display()
                ))
            })
    }

    /// The agent's credentials for the tools, mode 0600: passwords never
    /// go into argv.
    fn write_defaults(&self, path: &Path) -> Result<(), String> {
        let t = &self.target;
        let place = match &t.socket {
            Some(s) => format!("socket={}\n", option_value(&s.to_string_lossy())),
            None => format!(
                "host={}\nport={}\n",
                option_value(&t.address.host),
                t.address.port
            ),
        };
        let text = format!(
            "[client]\nuser={}\npassword={}\n{place}",
            option_value(&t.user),
            option_value(t.password.expose())
        );
        dbfleet_common::durable::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Starts verifying backup `backup_id` as job `job_id`.
    pub fn start_verify(
        self: &Arc<Self>,
        job_id: &str,
        backup_id: &str,
    ) -> Result<String, ControlError> {
        valid_id(job_id)?;
        valid_id(backup_id)?;
        let backup = BackupDir::new(self.repository()?, &self.cluster, backup_id);
        let scratch = self.scratch.join(job_id);
        let (progress, phase) = match self.register(job_id, "verify", backup_id)? {
            Ok(p) => p,
            Err(known) => return Ok(known),
        };
        if let Err(e) = self.write_marker(&Marker {
            id: job_id.to_string(),
            kind: "verify".into(),
            partial: scratch.clone(),
            also: vec![],
            backup: None,
        }) {
            self.finish(job_id, Err(e.to_string()));
            return Err(e);
        }
        let jobs = self.clone();
        let job_id = job_id.to_string();
        tokio::spawn(async move {
            let _ = std::fs::remove_dir_all(&scratch);
            let result = verify::verify(verify::Verification {
                backup_dir: backup,
                scratch: scratch.clone(),
                progress,
                phase,
            })
            .await;
            let _ = std::fs::remove_dir_all(&scratch);
            match &result {
                Ok(s) => info!(job = job_id, summary = s, "backup verified"),
                Err(e) => warn!(job = job_id, error = e, "backup failed verification"),
            }
            jobs.finish(&job_id, result.map(|s| (s, String::new())));
        });
        Ok("verification started".into())
    }
}

impl Jobs {
    /// Starts restoring backup `backup_id` onto this host as job `job_id`,
    /// to a point in time when `to` says so.
    pub fn start_restore(
        self: &Arc<Self>,
        job_id: &str,
        backup_id: &str,
        to: Option<Target>,
        exclude_hosts: Vec<String>,
    ) -> Result<String, ControlError> {
        valid_id(job_id)?;
        valid_id(backup_id)?;
        let start_command = self.start_command.clone().ok_or_else(|| {
            ControlError::NotConfigured(
                "this agent cannot start mysqld after a restore: set [mysql] start_command \
                 (e.g. [\"systemctl\", \"start\", \"mariadb\"])"
                    .into(),
            )
        })?;
        let backup = BackupDir::new(self.repository()?, &self.cluster, backup_id);
        let work = self.scratch.join(job_id);
        let (progress, phase) = match self.register(job_id, "restore", backup_id)? {
            Ok(p) => p,
            Err(known) => return Ok(known),
        };
        let marker = Marker {
            id: job_id.to_string(),
            kind: "restore".into(),
            partial: work.clone(),
            also: vec![],
            backup: None,
        };
        if let Err(e) = self.write_marker(&marker) {
            self.finish(job_id, Err(e.to_string()));
            return Err(e);
        }
        let defaults = self.dir.join(format!("{job_id}.cnf"));
        let jobs = self.clone();
        let job_id = job_id.to_string();
        // The archiver must not read binlogs that are being replaced; it
        // starts a new stream afterwards, whatever happened.
        self.archive.pause();
        tokio::spawn(async move {
            let _ = std::fs::remove_dir_all(&work);
            let result = match jobs.write_defaults(&defaults) {
                Err(e) => Err(e),
                Ok(()) => {
                    let r = restore::Restore {
                        job_id: job_id.clone(),
                        repository: backup.repo.clone(),
                        backup_dir: backup,
                        cluster: jobs.cluster.clone(),
                        work: work.clone(),
                        target: jobs.target.clone(),
                        defaults_file: defaults.clone(),
                        start_command,
                        to,
                        exclude_hosts,
                        progress,
                        phase,
                    };
                    let marker_jobs = jobs.clone();
                    restore::restore(r, move |staging| {
                        marker_jobs
                            .write_marker(&Marker {
                                also: vec![staging.to_path_buf()],
                                ..marker
                            })
                            .map_err(|e| e.to_string())
                    })
                    .await
                }
            };
            let _ = std::fs::remove_file(&defaults);
            let _ = std::fs::remove_dir_all(&work);
            jobs.archive.resume_with_new_stream();
            match &result {
                Ok(s) => info!(job = job_id, summary = s, "restore completed"),
                Err(e) => error!(job = job_id, error = e, "restore failed"),
            }
            jobs.finish(&job_id, result.map(|s| (s, String::new())));
        });
        Ok("restore started".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_file_values_are_quoted_and_escaped() {
        assert_eq!(option_value(r#"p#a ss\"w"#), r#""p#a ss\\\"w""#);
    }

    #[test]
    fn job_ids_are_plain_names() {
        assert!(valid_id("main-20261121T094600Z-db2").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(valid_id(bad).is_err(), "{bad}");
        }
    }
}
