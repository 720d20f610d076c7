//! Backups and their verification, run by the agent as jobs.
//!
//! A coordinator starts a job with a command and returns at once; the job's
//! progress and outcome travel in the agent's reports, so a coordinator
//! that takes over mid-backup sees the same thing. One heavy job runs at a
//! time. A marker in `state_dir/jobs` lives as long as a job: an agent
//! killed mid-job finds it at its next start, removes the partial files
//! and reports the job failed, so nothing half-written ever looks usable.

pub mod clone;
pub mod datadir;
pub mod logical;
pub mod physical;
pub mod rebuild;
pub mod repo;
pub mod restore;
mod retention;
pub mod scratch;
pub mod swap;
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
    /// Seal (age-encrypt) every data file stored, with the key in this
    /// file (`dbfleet backup-key generate`; 0600, the agent's user's):
    /// the same key on every agent of the fleet, since each restores and
    /// verifies the others' backups. Absent: files are stored unsealed.
    #[serde(default)]
    pub seal_key_file: Option<PathBuf>,
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

/// A restore's job detail when the agent stopped before mysqld was touched.
const CUT_SHORT_BEFORE_SWAP: &str = "the agent stopped during the restore, before mysqld was \
     touched; its partial files were removed: restore again";
const CUT_SHORT_REBUILD: &str = "the agent stopped during the rebuild; the CLONE may have \
     completed or not, and mysqld may be stopped: check mysqld and its error log, then rebuild \
     again";

const RUNNING: &str = "running";
/// A rebuild's marker kind; it is reported and followed as a restore.
const REBUILD: &str = "rebuild";
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
    /// A restore's swap of the data directory's contents, once it began.
    #[serde(default)]
    swap: Option<SwapRecord>,
    /// A rebuild by CLONE: mysqld replaces its data itself.
    #[serde(default)]
    rebuild: bool,
}

/// Where a restore's swap stood (see [`restore::Journal`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SwapRecord {
    datadir: PathBuf,
    /// mysqld's files, by which it is proven stopped before anything is
    /// moved back.
    #[serde(default)]
    files: Option<crate::mysql::process::ServerFiles>,
    step: SwapStep,
}

/// The restore's step, as the swap sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SwapStep {
    /// The restored copy is being built: nothing of the server's moved.
    Building,
    /// mysqld was being shut down, its data directory's contents may be
    /// half moved.
    Swapping,
    /// `start_command` ran on the restored data.
    Starting,
}

impl Marker {
    /// Takes down a restore's step.
    fn record(&mut self, step: restore::Journal<'_>) {
        match step {
            restore::Journal::Staging(swap) => {
                self.also = vec![swap.staging().to_path_buf()];
                self.swap = Some(SwapRecord {
                    datadir: swap.datadir().to_path_buf(),
                    files: None,
                    step: SwapStep::Building,
                });
            }
            restore::Journal::Swapping(files) => {
                if let Some(s) = &mut self.swap {
                    s.files = Some(files.clone());
                    s.step = SwapStep::Swapping;
                }
            }
            restore::Journal::Starting => {
                if let Some(s) = &mut self.swap {
                    s.step = SwapStep::Starting;
                }
            }
        }
    }
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
    /// The replication account, which a rebuild's donor admits.
    replication: Option<(String, dbfleet_common::config::Secret)>,
    archive: Arc<crate::binlog_archive::ArchiveStatus>,
    /// The fleet's CA, to check who signed archived binlogs.
    tls: Arc<dbfleet_common::tls::TlsContext>,
    list: Mutex<Vec<Entry>>,
    cancel: Arc<AtomicBool>,
}

/// A job just registered: its progress counter, its step and its marker.
type Begun = (Arc<AtomicU64>, Phase, Marker);

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

/// Whose jobs: the agent's cluster, host and state directory.
#[derive(Debug, Clone)]
pub struct JobsOf {
    /// Cluster.
    pub cluster: String,
    /// Host.
    pub host: String,
    /// The agent's state directory.
    pub state_dir: PathBuf,
}

impl Jobs {
    /// The registry; cleans up after jobs a previous agent process left
    /// unfinished and lists them as failed.
    pub async fn open(
        of: JobsOf,
        config: Option<BackupConfig>,
        target: MysqlTarget,
        (start_command, replication): (
            Option<Vec<String>>,
            Option<(String, dbfleet_common::config::Secret)>,
        ),
        archive: Arc<crate::binlog_archive::ArchiveStatus>,
        tls: Arc<dbfleet_common::tls::TlsContext>,
    ) -> Arc<Jobs> {
        let (cluster, host, state_dir) = (&of.cluster, &of.host, &of.state_dir);
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
            replication,
            archive,
            tls,
            list: Mutex::new(Vec::new()),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        jobs.clean_leftovers().await;
        Arc::new(jobs)
    }

    async fn clean_leftovers(&self) {
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
        let mut restores_cut_short = false;
        for e in entries.flatten() {
            let path = e.path();
            // credentials and half-written markers
            if path.extension().is_some_and(|x| x == "cnf" || x == "tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let mut keep_marker = false;
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
                    let (detail, done) = match &m.swap {
                        Some(swap) => self.recover_swap(&m.id, swap).await,
                        None if m.rebuild => (CUT_SHORT_REBUILD.to_string(), true),
                        None if m.kind == "restore" => (CUT_SHORT_BEFORE_SWAP.to_string(), true),
                        None => (
                            "the agent stopped during the job; its partial files were removed"
                                .to_string(),
                            true,
                        ),
                    };
                    keep_marker = !done;
                    restores_cut_short |= m.kind == "restore" || m.rebuild;
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
                    pb::Job {
                        state: FAILED.into(),
                        detail,
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
            if !keep_marker {
                let _ = std::fs::remove_file(&path);
            }
        }
        // A MySQL replay or clone lifts super_read_only while it runs: a
        // restore cut short sets it again (best effort; mysqld may be
        // down, and then starts from the persisted setting).
        if restores_cut_short {
            let fenced = rebuild::fence_again(&self.target).await;
            if !fenced.is_empty() {
                warn!(problem = fenced, "after a restore cut short");
            }
        }
    }

    /// What a restore cut short by the agent's death left of its swap,
    /// made whole where that is proven safe. Returns the job's detail, and
    /// whether the marker is done with (`false`: tried again at the
    /// agent's next start).
    async fn recover_swap(&self, job: &str, record: &SwapRecord) -> (String, bool) {
        let swap = swap::Swap::left_by(&record.datadir, job);
        let aside = swap.aside().display().to_string();
        let files = match (record.step, &record.files) {
            (SwapStep::Swapping, Some(files)) => files,
            (SwapStep::Starting, _) => {
                return (
                    format!(
                        "the agent stopped while mysqld started on the restored data, before the \
                         restore gave it its new history: restore again. The previous data is in \
                         {aside}: remove it once the host is restored"
                    ),
                    true,
                );
            }
            _ => return (CUT_SHORT_BEFORE_SWAP.to_string(), true),
        };
        let moved = swap.aside().exists();
        match crate::mysql::process::prove_stopped(files).await {
            Err(why) if !moved => (
                format!(
                    "the agent stopped while shutting mysqld down for the restore; nothing of its \
                     data was moved, and mysqld cannot be proven stopped ({why}): restore again"
                ),
                true,
            ),
            Err(why) => (
                format!(
                    "the agent stopped while swapping in the restored data, and mysqld cannot be \
                     proven stopped ({why}), so nothing was moved back: the previous data is in \
                     {aside}. Stop mysqld: the agent puts the previous data back at its next start"
                ),
                false,
            ),
            Ok(_) => match swap.put_back() {
                Ok(kept) => {
                    if let Some(k) = kept {
                        let _ = std::fs::remove_dir_all(k);
                    }
                    (
                        format!(
                            "the agent stopped while swapping in the restored data; mysqld was \
                             proven stopped, the previous data is back in place and {}: restore \
                             again",
                            self.start_mysqld_detached(job)
                        ),
                        true,
                    )
                }
                Err(e) => (
                    format!(
                        "the agent stopped while swapping in the restored data, and putting the \
                         previous data back failed: {e}. It is in {aside}; the agent tries again at \
                         its next start"
                    ),
                    false,
                ),
            },
        }
    }

    /// Runs `start_command` in its own process group without waiting for
    /// mysqld (the agent's observer sees it come up); says what was done.
    fn start_mysqld_detached(&self, job: &str) -> String {
        let Some((program, args)) = self.start_command.as_ref().and_then(|c| c.split_first())
        else {
            return "mysqld stays stopped: start it (set [mysql] start_command for the agent to)"
                .to_string();
        };
        use std::os::unix::process::CommandExt;
        let spawned = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
        match spawned {
            Ok(mut child) => {
                let (job, command) = (job.to_string(), program.clone());
                std::thread::spawn(move || match child.wait() {
                    Ok(s) if s.success() => {}
                    Ok(s) => {
                        warn!(job, command, status = %s, "start_command failed after a restore was cut short")
                    }
                    Err(e) => warn!(job, command, error = %e, "cannot wait for start_command"),
                });
                format!("start_command {program} was run to start mysqld again")
            }
            Err(e) => format!("start_command {program} could not run ({e}): start mysqld"),
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

    /// After [`Jobs::stop`]: waits, at most `limit`, until no backup or
    /// verification runs any more, so that what they started outside the
    /// agent (a tool, mysqld's CLONE statement) is ended before the agent
    /// exits. Restores and rebuilds are not stopped: their journal tells
    /// the next start what to undo.
    pub async fn stopped(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline
            && self.lock().iter().any(|e| {
                e.job.state == RUNNING && matches!(e.job.kind.as_str(), "backup" | "verify")
            })
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
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
    /// Registers job `job_id` of `kind` (using `uses`) and writes its
    /// marker, naming `partial` as what the next agent removes should this
    /// one be killed. `Ok(Err(state))`: the job is known already (a
    /// command sent again), in that state.
    fn begin(
        &self,
        job_id: &str,
        kind: &str,
        uses: &str,
        partial: &Path,
    ) -> Result<Result<Begun, String>, ControlError> {
        let (progress, phase) = match self.register(job_id, kind, uses)? {
            Ok(p) => p,
            Err(known) => return Ok(Err(known)),
        };
        let marker = Marker {
            id: job_id.to_string(),
            kind: kind.into(),
            partial: partial.to_path_buf(),
            also: vec![],
            backup: None,
            swap: None,
            rebuild: kind == REBUILD,
        };
        if let Err(e) = self.write_marker(&marker) {
            self.finish(job_id, Err(e.to_string()));
            return Err(e);
        }
        Ok(Ok((progress, phase, marker)))
    }

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
    /// go into argv. Over TCP with `tls_ca_file` the tools use verified
    /// TLS as the agent does. Each flavor's tools spell that differently
    /// (MariaDB's `ssl-verify-server-cert`, MySQL's `ssl-mode`), and both
    /// refuse an option they do not know unless it is marked `loose-`:
    /// both are written, each tool applies its own.
    fn write_defaults(&self, path: &Path) -> Result<(), String> {
        let t = &self.target;
        let place = match (&t.socket, &t.tls_ca) {
            (Some(s), _) => format!("socket={}\n", option_value(&s.to_string_lossy())),
            (None, tls_ca) => format!(
                "host={}\nport={}\n{}",
                option_value(&t.address.host),
                t.address.port,
                tls_ca
                    .as_ref()
                    .map(|ca| format!(
                        "ssl-ca={}\nloose-ssl-verify-server-cert\nloose-ssl-mode=VERIFY_IDENTITY\n",
                        option_value(&ca.to_string_lossy())
                    ))
                    .unwrap_or_default()
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
        let (progress, phase, _) = match self.begin(job_id, "verify", backup_id, &scratch)? {
            Ok(p) => p,
            Err(known) => return Ok(known),
        };
        let jobs = self.clone();
        let job_id = job_id.to_string();
        tokio::spawn(async move {
            let _ = std::fs::remove_dir_all(&scratch);
            let result = verify::verify(verify::Verification {
                backup_dir: backup,
                scratch: scratch.clone(),
                progress,
                phase,
                local_server: jobs.target.clone(),
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
        archive_writers: Vec<String>,
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
        let (progress, phase, marker) = match self.begin(job_id, "restore", backup_id, &work)? {
            Ok(p) => p,
            Err(known) => return Ok(known),
        };
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
                        writers: crate::binlog_archive::store::Writers {
                            tls: jobs.tls.clone(),
                            hosts: archive_writers,
                        },
                        progress,
                        phase,
                    };
                    let marker_jobs = jobs.clone();
                    let mut marker = marker;
                    restore::restore(r, move |step| {
                        marker.record(step);
                        marker_jobs.write_marker(&marker).map_err(|e| e.to_string())
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

    /// Starts rebuilding this host's MySQL server by CLONE from the
    /// mysqld at `donor` (`host:port`) as job `job_id`, followed like a
    /// restore.
    pub fn start_rebuild(
        self: &Arc<Self>,
        job_id: &str,
        donor: &str,
        tls: bool,
    ) -> Result<String, ControlError> {
        valid_id(job_id)?;
        let donor = dbfleet_proto::model::MysqlAddress::parse(donor).map_err(|e| {
            ControlError::NotConfigured(format!("the donor '{donor}' is not host:port: {e}"))
        })?;
        let start_command = self.start_command.clone().ok_or_else(|| {
            ControlError::NotConfigured(
                "this agent cannot start mysqld after a rebuild: set [mysql] start_command \
                 (e.g. [\"systemctl\", \"start\", \"mysql\"])"
                    .into(),
            )
        })?;
        let work = self.scratch.join(job_id);
        let uses = format!("a CLONE of {donor}");
        let (_, phase, _) = match self.begin(job_id, REBUILD, &uses, &work)? {
            Ok(p) => p,
            Err(known) => return Ok(known),
        };
        let jobs = self.clone();
        let job_id = job_id.to_string();
        let started = format!("rebuild by CLONE from {donor} started");
        // the server's binlogs are replaced: a new stream afterwards
        self.archive.pause();
        tokio::spawn(async move {
            let _ = std::fs::remove_dir_all(&work);
            let _ = std::fs::create_dir_all(&work);
            let result = rebuild::clone_from(rebuild::CloneRebuild {
                donor_host: donor.host.clone(),
                donor_port: donor.port,
                tls,
                target: jobs.target.clone(),
                replication: jobs.replication.clone(),
                start_command,
                work: work.clone(),
                phase,
            })
            .await;
            let _ = std::fs::remove_dir_all(&work);
            jobs.archive.resume_with_new_stream();
            if let Err(e) = &result {
                error!(job = job_id, error = e, "rebuild failed");
            }
            jobs.finish(&job_id, result.map(|s| (s, String::new())));
        });
        Ok(started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_file_values_are_quoted_and_escaped() {
        assert_eq!(option_value(r#"p#a ss\"w"#), r#""p#a ss\\\"w""#);
    }

    /// An agent killed mid-swap, as its next start finds it: the restored
    /// data moved in, the previous data aside, mysqld stopped. Nothing moves
    /// while something still answers on mysqld's address; once nothing
    /// does, the previous data is put back whole and `start_command` runs.
    #[tokio::test]
    async fn a_restore_cut_short_mid_swap_is_rolled_back_only_once_mysqld_is_proven_stopped() {
        let root = std::env::temp_dir().join(format!("dbfleet-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (datadir, state_dir) = (root.join("data"), root.join("state"));
        std::fs::create_dir_all(datadir.join("app")).unwrap();
        std::fs::write(datadir.join("ibdata1"), "previous").unwrap();
        let swap = swap::Swap::new(&datadir, "r1", dbfleet_proto::model::Flavor::MariaDb);
        std::fs::create_dir_all(swap.staging()).unwrap();
        std::fs::write(swap.staging().join("ibdata1"), "restored").unwrap();
        swap.swap_in().unwrap();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut marker = Marker {
            id: "r1".into(),
            kind: "restore".into(),
            partial: root.join("work"),
            also: vec![],
            backup: None,
            swap: None,
            rebuild: false,
        };
        marker.record(restore::Journal::Staging(&swap));
        let files = crate::mysql::process::ServerFiles {
            datadir: datadir.clone(),
            lock_file: datadir.join("ibdata1"),
            address: address.clone(),
            socket: None,
        };
        marker.record(restore::Journal::Swapping(&files));
        let marker_file = state_dir.join("jobs/r1.json");
        std::fs::create_dir_all(marker_file.parent().unwrap()).unwrap();
        std::fs::write(&marker_file, serde_json::to_vec(&marker).unwrap()).unwrap();
        let started = root.join("started");
        let tls = crate::binlog_archive::store::tests::agent_tls(&root.join("pki"), "db1");
        let open = || {
            Jobs::open(
                JobsOf {
                    cluster: "main".into(),
                    host: "db1".into(),
                    state_dir: state_dir.clone(),
                },
                None,
                MysqlTarget {
                    address: dbfleet_proto::model::MysqlAddress::parse(&address).unwrap(),
                    socket: None,
                    user: "agent".into(),
                    password: dbfleet_common::config::Secret::new("x"),
                    connect_timeout: std::time::Duration::from_secs(1),
                    query_timeout: std::time::Duration::from_secs(1),
                    tls_ca: None,
                },
                (
                    Some(vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        format!("touch {}", started.display()),
                    ]),
                    None,
                ),
                Arc::new(crate::binlog_archive::ArchiveStatus::default()),
                tls.clone(),
            )
        };
        let detail = |jobs: &Jobs| jobs.snapshot().pop().unwrap().detail;

        // something answers on mysqld's address: nothing moves
        let jobs = open().await;
        let d = detail(&jobs);
        assert!(
            d.contains("cannot be proven stopped") && d.contains("accepts connections"),
            "{d}"
        );
        assert_eq!(
            std::fs::read_to_string(datadir.join("ibdata1")).unwrap(),
            "restored"
        );
        assert!(marker_file.exists(), "tried again at the next start");

        // nothing does: the previous data is back, mysqld is started
        drop(listener);
        let jobs = open().await;
        let d = detail(&jobs);
        assert!(
            d.contains("the previous data is back in place") && d.contains("was run"),
            "{d}"
        );
        assert_eq!(
            std::fs::read_to_string(datadir.join("ibdata1")).unwrap(),
            "previous"
        );
        assert!(datadir.join("app").is_dir());
        let names: Vec<_> = std::fs::read_dir(&datadir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "no directory of the swap is left: {names:?}"
        );
        assert!(!marker_file.exists());
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !started.exists() {
            assert!(
                std::time::Instant::now() < give_up,
                "start_command never ran"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn job_ids_are_plain_names() {
        assert!(valid_id("main-20261121T094600Z-db2").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(valid_id(bad).is_err(), "{bad}");
        }
    }
}
