//! Taking a backup as a job: the method's tool found and checked against
//! the server, an incremental backup's parent proven to be this server's,
//! the tool run with the agent's credentials in a private option file,
//! and the manifest written last.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use dbfleet_common::clock::unix_ms;
use dbfleet_common::gtid::Position;
use dbfleet_proto::model::Flavor;
use mysql_async::prelude::Queryable;
use tracing::{error, info, warn};

use super::repo::{BackupDir, Manifest};
use super::scratch::ServerProgram;
use super::{BackupConfig, Jobs, Marker, clone, logical, physical, tools, valid_id};
use crate::mysql::control::ControlError;
use crate::mysql::observer;

/// A backup to take, as the job runs it.
struct BackupJob {
    id: String,
    /// "physical" or "logical".
    method: String,
    /// The backup an incremental one builds on.
    parent: Option<String>,
    cfg: BackupConfig,
    dir: BackupDir,
    progress: Arc<AtomicU64>,
}

/// What the repository holds under a new backup's id.
enum Found {
    /// A backup, complete.
    Completed(Box<Manifest>),
    /// Files without a manifest: another backup's, cut short.
    Unfinished,
    /// Nothing: the id is free.
    Nothing,
}

impl Jobs {
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
        let dir = BackupDir::new(self.repository()?, &self.cluster, id);
        let (progress, phase) = match self.register(id, "backup", "")? {
            Ok(p) => p,
            Err(known) => return Ok(known),
        };
        phase.set(if method == "logical" {
            "dumping"
        } else {
            "streaming the backup"
        });
        // Nothing here touches the repository: a command holds the agent's
        // epoch lock, which lease votes need, and a bucket may hang.
        let jobs = self.clone();
        let job = BackupJob {
            id: id.to_string(),
            method: method.to_string(),
            parent,
            cfg,
            dir,
            progress,
        };
        tokio::spawn(async move {
            let result = jobs.backup_unless_present(&job).await;
            jobs.finish(&job.id, result);
        });
        Ok("backup started".into())
    }

    /// Runs backup `id` unless the repository has it already: the id may
    /// be one an earlier agent process finished (its job list is gone).
    /// Never writes into, or on failure removes, another backup.
    async fn backup_unless_present(&self, job: &BackupJob) -> Result<(String, String), String> {
        let (id, dir) = (&job.id, &job.dir);
        let look = dir.clone();
        let found = tokio::task::spawn_blocking(move || match Manifest::read(&look) {
            Ok(m) => Ok(Found::Completed(Box::new(m))),
            Err(_) => match look.repo.exists(&look.key) {
                Ok(true) => Ok(Found::Unfinished),
                Ok(false) => Ok(Found::Nothing),
                Err(e) => Err(format!("cannot look up {}: {e}", look.describe())),
            },
        })
        .await
        .map_err(|e| format!("look-up task: {e}"))??;
        match found {
            Found::Completed(m) => {
                return Ok((
                    "completed earlier".into(),
                    serde_json::to_string(&m).expect("manifests encode"),
                ));
            }
            Found::Unfinished => {
                return Err(format!(
                    "{} exists without a manifest; remove it or use another backup id",
                    dir.describe()
                ));
            }
            Found::Nothing => {}
        }
        self.write_marker(&Marker {
            id: id.to_string(),
            kind: "backup".into(),
            partial: self.tool_dir(id),
            also: vec![],
            backup: Some(id.to_string()),
            swap: None,
            rebuild: false,
        })
        .map_err(|e| e.to_string())?;
        let result = self.backup(job).await;
        if let Err(e) = &result {
            error!(backup = id, error = e, "backup failed; removing its files");
            let gone = dir.clone();
            let removed =
                tokio::task::spawn_blocking(move || gone.repo.remove_all(&gone.key)).await;
            if let Ok(Err(e)) = removed {
                warn!(backup = id, error = %e, "the failed backup's files could not be removed");
            }
        }
        result
    }

    async fn backup(&self, job: &BackupJob) -> Result<(String, String), String> {
        let BackupJob {
            id,
            method,
            parent,
            cfg,
            dir,
            progress,
        } = job;
        let started = unix_ms();
        let (flavor, state, datadir) = self.server_facts().await?;
        if flavor == Flavor::MySql && method != "logical" {
            return self.clone_backup(job, state, started).await;
        }
        let base = match &parent {
            Some(p) => Some(self.incremental_base(dir, p, &state)?),
            None => None,
        };
        let tool = match (flavor, method.as_str()) {
            (Flavor::MariaDb, "logical") => tools::find("mariadb-dump")?,
            (Flavor::MariaDb, _) => tools::find("mariadb-backup")?,
            // the server's own mysqldump, from its basedir
            (Flavor::MySql, _) => match self.server_program().await? {
                ServerProgram::MySql { basedir, .. } => tools::find_beside(&basedir, "mysqldump")?,
                ServerProgram::MariaDb => tools::find("mariadb-dump")?,
            },
        };
        let tool_version = tools::version(&tool)?;
        tools::check_matches(&tool_version, &state.version)?;
        let ignore_tables = if method == "logical" {
            self.unkept_system_tables(flavor).await?
        } else {
            Vec::new()
        };
        let defaults = self.dir.join(format!("{id}.cnf"));
        self.write_defaults(&defaults)?;
        let tool_tmp = self.tool_dir(id);
        info!(
            backup = id,
            method,
            parent,
            dir = dir.describe(),
            "backup running"
        );
        let taken = if method == "logical" {
            let b = logical::LogicalBackup {
                flavor,
                tool,
                tool_version,
                dir: dir.clone(),
                work: tool_tmp.clone(),
                defaults_file: defaults.clone(),
                ignore_tables,
                pipeline: cfg.pipeline(),
                progress: progress.clone(),
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
                pipeline: cfg.pipeline(),
                progress: progress.clone(),
                cancel: self.cancel.clone(),
                incremental_lsn: base.as_ref().map(|m| m.lsn_to),
            };
            tokio::task::spawn_blocking(move || physical::take(&b)).await
        }
        .map_err(|e| format!("backup task: {e}"));
        let _ = std::fs::remove_file(&defaults);
        let _ = std::fs::remove_dir_all(&tool_tmp);
        let taken = taken??;
        let manifest = self.manifest_of(job, &state, flavor, method, taken, started);
        self.record_manifest(dir, manifest).await
    }

    /// The local server's program and where its files are.
    async fn server_program(&self) -> Result<ServerProgram, String> {
        let limit = self.target.connect_timeout + self.target.query_timeout;
        tokio::time::timeout(limit, async {
            let (mut conn, _) = observer::connect(&self.target).await?;
            let program = clone::server_program(&mut conn).await;
            let _ = conn.disconnect().await;
            program
        })
        .await
        .map_err(|_| format!("mysqld did not answer within {limit:?}"))?
    }

    /// A MySQL physical backup: through the CLONE plugin (no XtraBackup
    /// is installable for MySQL 8.4 and later, and CLONE has no
    /// incremental mode).
    async fn clone_backup(
        &self,
        job: &BackupJob,
        state: dbfleet_proto::model::ServerState,
        started: i64,
    ) -> Result<(String, String), String> {
        if job.parent.is_some() {
            return Err(
                "MySQL's CLONE has no incremental mode; take a full backup (the binlog archive covers the time between full backups)"
                    .into(),
            );
        }
        let (dir, work) = (&job.dir, self.tool_dir(&job.id));
        let limit = self.target.connect_timeout + self.target.query_timeout;
        let (mut conn, _) = tokio::time::timeout(limit, observer::connect(&self.target))
            .await
            .map_err(|_| format!("mysqld did not answer within {limit:?}"))??;
        let program = clone::server_program(&mut conn).await?;
        info!(
            backup = job.id,
            dir = dir.describe(),
            "CLONE backup running"
        );
        let taken = clone::take(
            clone::CloneBackup {
                dir: dir.clone(),
                work: work.clone(),
                program,
                pipeline: job.cfg.pipeline(),
                progress: job.progress.clone(),
                cancel: self.cancel.clone(),
            },
            &mut conn,
            &state.version,
        )
        .await;
        let _ = conn.disconnect().await;
        super::scratch::kill_left_running(&work);
        let _ = std::fs::remove_dir_all(&work);
        let taken = taken?;
        let manifest = self.manifest_of(job, &state, Flavor::MySql, "physical", taken, started);
        self.record_manifest(dir, manifest).await
    }

    /// The job's own directory on the agent's disk: the tool's temporary
    /// files, or a CLONE copy (the job marker names it, so a restarted
    /// agent removes what a killed one left).
    fn tool_dir(&self, id: &str) -> std::path::PathBuf {
        self.scratch.join(format!("{id}.tool"))
    }

    /// The manifest of what `job` took from the server in `state`.
    fn manifest_of(
        &self,
        job: &BackupJob,
        state: &dbfleet_proto::model::ServerState,
        flavor: Flavor,
        method: &str,
        taken: super::Taken,
        started: i64,
    ) -> Manifest {
        Manifest {
            format: 1,
            id: job.id.clone(),
            cluster: self.cluster.clone(),
            host: self.host.clone(),
            server_id: state.server_id,
            server_uuid: state.server_uuid.clone(),
            flavor: flavor.as_str().to_string(),
            server_version: state.version.clone(),
            method: method.into(),
            parent: job.parent.clone(),
            lsn_from: taken.lsn_from,
            lsn_to: taken.lsn_to,
            tables: taken.tables,
            start_gtid: state.gtid.executed.clone(),
            end_gtid: taken.end_gtid,
            binlog_file: taken.binlog_file,
            binlog_position: taken.binlog_position,
            stream_bytes: taken.stream_bytes,
            files: vec![taken.stored],
            compression: format!("zstd-{}", job.cfg.compression_level),
            rate_limit_bytes_per_s: job.cfg.pipeline().rate_limit_bytes_per_s,
            sealed_for: job
                .dir
                .repo
                .seal()
                .map(|k| k.recipient())
                .unwrap_or_default(),
            tool: taken.tool,
            started_at_unix_ms: started,
            finished_at_unix_ms: unix_ms(),
        }
    }

    /// Writes the manifest last (what makes a backup exist) and says
    /// what was taken.
    async fn record_manifest(
        &self,
        dir: &BackupDir,
        manifest: Manifest,
    ) -> Result<(String, String), String> {
        let id = manifest.id.clone();
        let written = dir.clone();
        let manifest =
            tokio::task::spawn_blocking(move || manifest.write(&written).map(|()| manifest))
                .await
                .map_err(|e| format!("manifest task: {e}"))?
                .map_err(|e| format!("cannot write the manifest of {}: {e}", dir.describe()))?;
        let detail = format!(
            "{} stream bytes stored as {} ({} ms) at GTID {:?}{}",
            manifest.stream_bytes,
            manifest.files[0].bytes,
            manifest.finished_at_unix_ms - manifest.started_at_unix_ms,
            manifest.end_gtid,
            if manifest.sealed_for.is_empty() {
                String::new()
            } else {
                format!(", sealed for {}", manifest.sealed_for)
            }
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
        dir: &BackupDir,
        parent: &str,
        state: &dbfleet_proto::model::ServerState,
    ) -> Result<Manifest, String> {
        let m = Manifest::read_usable(&dir.sibling(parent))?;
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
            let state = observer::read_state(&mut conn, flavor, self.target.connection()).await?;
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

    /// The `flavor` server's `mysql` tables a logical backup leaves out.
    async fn unkept_system_tables(&self, flavor: Flavor) -> Result<Vec<String>, String> {
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
            .filter(|t| !logical::system_tables(flavor).contains(&t.as_str()))
            .collect())
    }
}
