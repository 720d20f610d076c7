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
pub mod scratch;
pub mod tools;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dbfleet_common::clock::unix_ms;
use dbfleet_proto::model::Flavor;
use dbfleet_proto::pb;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::binlog_archive::store::Target;
use crate::mysql::control::ControlError;
use crate::mysql::observer::{self, MysqlTarget};
use dbfleet_common::gtid::Position;
use repo::{Manifest, StoredFile, backup_dir};

/// `[backup]` of the agent's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The repository: a local or mounted directory shared by the
    /// cluster's agents (docs/backups.md).
    pub repository: PathBuf,
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
}

struct Entry {
    job: pb::Job,
    progress: Arc<AtomicU64>,
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
            // Killed between the manifest and the marker's removal: the
            // backup is complete and says so.
            let job = match Manifest::read(&m.partial) {
                Ok(manifest) if m.kind == "backup" => completed_job(
                    &m.id,
                    &m.kind,
                    "completed before the agent stopped",
                    &manifest,
                ),
                _ => {
                    for p in std::iter::once(&m.partial).chain(&m.also) {
                        let _ = std::fs::remove_dir_all(p);
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
                ..e.job.clone()
            })
            .collect()
    }

    /// Stops running jobs (the agent is shutting down).
    pub fn stop(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn config(&self) -> Result<&BackupConfig, ControlError> {
        self.config.as_ref().ok_or_else(|| {
            ControlError::NotConfigured(
                "this agent has no [backup] section (repository = \"/path\") in its config".into(),
            )
        })
    }

    /// Registers a job unless it exists (idempotent) or another runs.
    /// `Ok(Err(words))`: already known, with its state in words.
    fn register(
        &self,
        id: &str,
        kind: &str,
        uses: &str,
    ) -> Result<Result<Arc<AtomicU64>, String>, ControlError> {
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
        list.push(Entry {
            job: pb::Job {
                id: id.to_string(),
                kind: kind.to_string(),
                state: RUNNING.into(),
                ..Default::default()
            },
            progress: progress.clone(),
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
        Ok(Ok(progress))
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

    /// Starts backup `id` into the repository: `method` "physical" (an
    /// incremental one on top of `parent` when given) or "logical".
    pub fn start_backup(
        self: &Arc<Self>,
        id: &str,
        method: &str,
        parent: &str,
    ) -> Result<String, ControlError> {
        valid_id(id)?;
        let method = match (method, parent) {
            ("" | "physical", _) => "physical",
            ("logical", "") => "logical",
            ("logical", _) => {
                return Err(ControlError::NotConfigured(
                    "a logical backup cannot be incremental".into(),
                ));
            }
            (other, _) => {
                return Err(ControlError::NotConfigured(format!(
                    "backup method {other:?} is unknown; use physical or logical"
                )));
            }
        };
        let parent = (!parent.is_empty()).then(|| parent.to_string());
        if let Some(p) = &parent {
            valid_id(p)?;
        }
        let cfg = self.config()?.clone();
        let dir = backup_dir(&cfg.repository, &self.cluster, id);
        // The id may be one an earlier agent process finished (its job list
        // is gone): never write into, or on failure remove, another backup.
        if let Ok(manifest) = Manifest::read(&dir) {
            let mut list = self.lock();
            if !list.iter().any(|e| e.job.id == id) {
                list.push(Entry {
                    job: completed_job(id, "backup", "completed earlier", &manifest),
                    progress: Arc::new(AtomicU64::new(0)),
                    uses: String::new(),
                });
            }
            return Ok(format!("backup {id} is already completed"));
        }
        if dir.exists() {
            return Err(ControlError::NotConfigured(format!(
                "{} exists without a manifest; remove it or use another backup id",
                dir.display()
            )));
        }
        let progress = match self.register(id, "backup", "")? {
            Ok(p) => p,
            Err(known) => return Ok(known),
        };
        if let Err(e) = self.write_marker(&Marker {
            id: id.to_string(),
            kind: "backup".into(),
            partial: dir.clone(),
            also: vec![],
        }) {
            self.finish(id, Err(e.to_string()));
            return Err(e);
        }
        let jobs = self.clone();
        let id = id.to_string();
        let method = method.to_string();
        tokio::spawn(async move {
            let result = jobs
                .backup(&id, &method, parent, &cfg, dir.clone(), progress)
                .await;
            if let Err(e) = &result {
                error!(backup = id, error = e, "backup failed; removing its files");
                let _ = std::fs::remove_dir_all(&dir);
            }
            jobs.finish(&id, result);
        });
        Ok("backup started".into())
    }

    async fn backup(
        &self,
        id: &str,
        method: &str,
        parent: Option<String>,
        cfg: &BackupConfig,
        dir: PathBuf,
        progress: Arc<AtomicU64>,
    ) -> Result<(String, String), String> {
        let started = unix_ms();
        let (flavor, state, datadir) = self.server_facts().await?;
        if flavor != Flavor::MariaDb {
            return Err(
                "backups of MySQL (xtrabackup, mysqldump) are not supported yet; this agent backs up MariaDB only"
                    .into(),
            );
        }
        let base = match &parent {
            Some(p) => Some(self.incremental_base(cfg, p, &state)?),
            None => None,
        };
        let tool = tools::find(if method == "logical" {
            "mariadb-dump"
        } else {
            "mariadb-backup"
        })?;
        let tool_version = tools::version(&tool)?;
        tools::check_matches(&tool_version, &state.version)?;
        let ignore_tables = if method == "logical" {
            self.unkept_system_tables().await?
        } else {
            Vec::new()
        };
        let defaults = self.dir.join(format!("{id}.cnf"));
        self.write_defaults(&defaults)?;
        let tool_tmp = self.scratch.join(format!("{id}.tool"));
        info!(backup = id, method, parent, dir = %dir.display(), "backup running");
        let taken = if method == "logical" {
            let b = logical::LogicalBackup {
                tool,
                tool_version,
                dir: dir.clone(),
                defaults_file: defaults.clone(),
                ignore_tables,
                level: cfg.compression_level,
                threads: cfg.compression_threads,
                progress,
                cancel: self.cancel.clone(),
            };
            tokio::task::spawn_blocking(move || logical::take(&b)).await
        } else {
            let b = physical::PhysicalBackup {
                tool,
                tool_version,
                tool_tmp: tool_tmp.clone(),
                dir: dir.clone(),
                defaults_file: defaults.clone(),
                datadir: datadir.unwrap_or_default(),
                level: cfg.compression_level,
                threads: cfg.compression_threads,
                progress,
                cancel: self.cancel.clone(),
                incremental_lsn: base.as_ref().map(|m| m.lsn_to),
            };
            tokio::task::spawn_blocking(move || physical::take(&b)).await
        }
        .map_err(|e| format!("backup task: {e}"));
        let _ = std::fs::remove_file(&defaults);
        let _ = std::fs::remove_dir_all(&tool_tmp);
        let taken = taken??;
        let manifest = Manifest {
            format: 1,
            id: id.to_string(),
            cluster: self.cluster.clone(),
            host: self.host.clone(),
            server_id: state.server_id,
            server_uuid: state.server_uuid.clone(),
            flavor: flavor.as_str().to_string(),
            server_version: state.version.clone(),
            method: method.into(),
            parent,
            lsn_from: taken.lsn_from,
            lsn_to: taken.lsn_to,
            tables: taken.tables,
            start_gtid: state.gtid.executed.clone(),
            end_gtid: taken.end_gtid,
            binlog_file: taken.binlog_file,
            binlog_position: taken.binlog_position,
            stream_bytes: taken.stream_bytes,
            files: vec![taken.stored],
            compression: format!("zstd-{}", cfg.compression_level),
            tool: taken.tool,
            started_at_unix_ms: started,
            finished_at_unix_ms: unix_ms(),
        };
        manifest
            .write(&dir)
            .map_err(|e| format!("cannot write the manifest in {}: {e}", dir.display()))?;
        let detail = format!(
            "{} stream bytes stored as {} ({} ms) at GTID {:?}",
            manifest.stream_bytes,
            manifest.files[0].bytes,
            manifest.finished_at_unix_ms - manifest.started_at_unix_ms,
            manifest.end_gtid
        );
        info!(backup = id, detail, "backup completed");
        Ok((
            detail,
            serde_json::to_string(&manifest).expect("manifests encode"),
        ))
    }

    /// The manifest an incremental backup builds on, once it is known to
    /// be this server's: taken here, by the same server, physical, and
    /// part of what the server holds now. (A host restored since then is
    /// refused by the coordinator, which knows its restores.)
    fn incremental_base(
        &self,
        cfg: &BackupConfig,
        parent: &str,
        state: &dbfleet_proto::model::ServerState,
    ) -> Result<Manifest, String> {
        let m = Manifest::read_usable(&backup_dir(&cfg.repository, &self.cluster, parent))?;
        let held = Position::parse(&state.gtid.executed)
            .map(|now| Position::parse(&m.end_gtid).is_ok_and(|then| now.covers(&then)))
            .unwrap_or(false);
        let why = if m.method != "physical" || m.lsn_to == 0 {
            Some(format!("{parent} is no physical backup with a known LSN"))
        } else if m.host != self.host || m.server_id != state.server_id {
            Some(format!(
                "{parent} was taken on {} (server id {}), not on this server",
                m.host, m.server_id
            ))
        } else if !held {
            Some(format!(
                "this server no longer holds {parent}'s GTID {}",
                m.end_gtid
            ))
        } else {
            None
        };
        match why {
            Some(why) => Err(format!(
                "cannot take an incremental backup on top of it: {why}; take a full backup"
            )),
            None => Ok(m),
        }
    }

    /// What the manifest says about the server, and its data directory,
    /// within the connect and query timeouts (a hung mysqld fails the job
    /// instead of keeping it, and every later one, waiting).
    async fn server_facts(
        &self,
    ) -> Result<(Flavor, dbfleet_proto::model::ServerState, Option<String>), String> {
        let limit = self.target.connect_timeout + self.target.query_timeout;
        tokio::time::timeout(limit, async {
            let (mut conn, flavor) = observer::connect(&self.target).await?;
            let state = observer::read_state(&mut conn, flavor).await?;
            let datadir: Option<String> = conn
                .query_first("SELECT @@datadir")
                .await
                .map_err(|e| e.to_string())?;
            let _ = conn.disconnect().await;
            Ok((flavor, state, datadir))
        })
        .await
        .map_err(|_| format!("mysqld did not answer within {limit:?}"))?
    }

    /// The server's `mysql` tables a logical backup leaves out.
    async fn unkept_system_tables(&self) -> Result<Vec<String>, String> {
        let limit = self.target.connect_timeout + self.target.query_timeout;
        let all: Vec<String> = tokio::time::timeout(limit, async {
            let (mut conn, _) = observer::connect(&self.target).await?;
            let all = conn
                .query(
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'mysql'",
                )
                .await
                .map_err(|e| e.to_string());
            let _ = conn.disconnect().await;
            all
        })
        .await
        .map_err(|_| format!("mysqld did not answer within {limit:?}"))??;
        Ok(all
            .into_iter()
            .filter(|t| !logical::SYSTEM_TABLES.contains(&t.as_str()))
            .collect())
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

    /// Removes backup `id` from the repository (retention): its manifest
    /// first, so a deletion cut short leaves no usable-looking backup.
    /// Refused while a job of this agent uses it.
    pub async fn delete_backup(&self, id: &str) -> Result<String, ControlError> {
        valid_id(id)?;
        let cfg = self.config()?;
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
        let dir = backup_dir(&cfg.repository, &self.cluster, id);
        if !dir.exists() {
            return Ok(format!("backup {id} is not in the repository"));
        }
        let target = dir.clone();
        let gone = tokio::task::spawn_blocking(move || {
            std::fs::remove_file(target.join(repo::MANIFEST_FILE))
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .and_then(|()| std::fs::remove_dir_all(&target))
        })
        .await
        .map_err(|e| ControlError::Repository(format!("delete task: {e}")))?;
        gone.map_err(|e| {
            ControlError::Repository(format!("cannot delete {}: {e}", dir.display()))
        })?;
        info!(backup = id, "backup deleted from the repository");
        Ok(format!("backup {id} deleted"))
    }

    /// Deletes the archived binlogs of every stream of the cluster that no
    /// restore of a backup at or after `keep_from` needs (retention).
    pub async fn prune_archive(&self, keep_from: &str) -> Result<String, ControlError> {
        let keep = Position::parse(keep_from).map_err(ControlError::NotConfigured)?;
        let repository = self.config()?.repository.clone();
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

    /// Starts verifying backup `backup_id` as job `job_id`.
    pub fn start_verify(
        self: &Arc<Self>,
        job_id: &str,
        backup_id: &str,
    ) -> Result<String, ControlError> {
        valid_id(job_id)?;
        valid_id(backup_id)?;
        let cfg = self.config()?.clone();
        let backup = backup_dir(&cfg.repository, &self.cluster, backup_id);
        let scratch = self.scratch.join(job_id);
        let progress = match self.register(job_id, "verify", backup_id)? {
            Ok(p) => p,
            Err(known) => return Ok(known),
        };
        if let Err(e) = self.write_marker(&Marker {
            id: job_id.to_string(),
            kind: "verify".into(),
            partial: scratch.clone(),
            also: vec![],
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
        let cfg = self.config()?.clone();
        let start_command = self.start_command.clone().ok_or_else(|| {
            ControlError::NotConfigured(
                "this agent cannot start mysqld after a restore: set [mysql] start_command \
                 (e.g. [\"systemctl\", \"start\", \"mariadb\"])"
                    .into(),
            )
        })?;
        let backup = backup_dir(&cfg.repository, &self.cluster, backup_id);
        let work = self.scratch.join(job_id);
        let progress = match self.register(job_id, "restore", backup_id)? {
            Ok(p) => p,
            Err(known) => return Ok(known),
        };
        let marker = Marker {
            id: job_id.to_string(),
            kind: "restore".into(),
            partial: work.clone(),
            also: vec![],
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
                        backup_dir: backup,
                        repository: cfg.repository.clone(),
                        cluster: jobs.cluster.clone(),
                        work: work.clone(),
                        target: jobs.target.clone(),
                        defaults_file: defaults.clone(),
                        start_command,
                        to,
                        exclude_hosts,
                        progress,
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
