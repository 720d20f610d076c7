//! A physical backup of MySQL with its CLONE plugin, the one physical
//! backup MySQL 8.4 and later has without XtraBackup: the server copies
//! itself (`CLONE LOCAL DATA DIRECTORY`) into a directory of the job's, a
//! scratch mysqld started on the copy says which GTID set it holds (and
//! proves that it starts), and the copy is streamed as a tar archive
//! through zstd and SHA-256 into the repository like mariadb-backup's
//! stream. CLONE has no incremental mode: between full backups the binlog
//! archive is what a point-in-time recovery replays.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use dbfleet_common::gtid_set::GtidSet;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::Taken;
use super::repo::{BackupDir, CLONE_FILE, Pipeline, StreamTo, store_output};
use super::scratch::{ScratchOptions, ScratchServer, ServerProgram};
use crate::mysql::flavor::role::quote;

/// What a CLONE backup needs.
pub struct CloneBackup {
    /// The backup's place in the repository.
    pub dir: BackupDir,
    /// The job's own directory on the agent's disk (removed by the
    /// caller); the copy is made in `clone` inside it, which mysqld itself
    /// writes, so it must be able to.
    pub work: PathBuf,
    /// The server's own program, to start the copy with.
    pub program: ServerProgram,
    /// Compression and rate limit.
    pub pipeline: Pipeline,
    /// Bytes stored so far, for reports.
    pub progress: Arc<AtomicU64>,
    /// Set to stop early (the agent shuts down).
    pub cancel: Arc<AtomicBool>,
}

/// The server's mysqld and where its own files are, from the live server
/// (`@@basedir` holds `sbin/mysqld` in packages and `bin/mysqld` in
/// tarballs): a scratch server of exactly its version.
pub async fn server_program(conn: &mut Conn) -> Result<ServerProgram, String> {
    let row: Option<(String, String, String, String, u64)> = conn
        .query_first(
            "SELECT @@basedir, @@plugin_dir, @@lc_messages_dir, @@character_sets_dir, \
             @@innodb_redo_log_capacity",
        )
        .await
        .map_err(|e| format!("asking mysqld where its files are: {e}"))?;
    let (basedir, plugin_dir, messages, charsets, redo) =
        row.ok_or("mysqld did not say where its files are")?;
    let base = Path::new(&basedir);
    let mysqld = ["sbin/mysqld", "bin/mysqld"]
        .iter()
        .map(|p| base.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "mysqld is in neither {0}/sbin nor {0}/bin (the server's basedir); a CLONE backup starts the server's own program on its copy",
                basedir.trim_end_matches('/')
            )
        })?;
    Ok(ServerProgram::MySql {
        mysqld,
        basedir: base.to_path_buf(),
        options: vec![
            format!("--basedir={basedir}"),
            format!("--plugin-dir={plugin_dir}"),
            format!("--lc-messages-dir={messages}"),
            format!("--character-sets-dir={charsets}"),
            // The copy's redo files as the server sized them: another
            // capacity would rewrite them (and store 100 MB of default
            // redo in every backup of a server with less).
            format!("--innodb-redo-log-capacity={redo}"),
        ],
    })
}

/// The version line a manifest records as its tool.
pub fn tool_name(server_version: &str) -> String {
    format!("MySQL CLONE plugin (server {server_version})")
}

/// Takes the backup over `conn` (the agent's connection, which holds
/// `BACKUP_ADMIN`). On error the caller removes what it stored.
pub async fn take(b: CloneBackup, conn: &mut Conn, server_version: &str) -> Result<Taken, String> {
    let copy = b.work.join("clone");
    std::fs::create_dir_all(&b.work)
        .map_err(|e| format!("cannot create {}: {e}", b.work.display()))?;
    let _ = std::fs::remove_dir_all(&copy);
    conn.query_drop(format!(
        "CLONE LOCAL DATA DIRECTORY = {}",
        quote(&copy.to_string_lossy())
    ))
    .await
    .map_err(|e| {
        format!(
            "CLONE LOCAL DATA DIRECTORY into {} failed: {e} (mysqld writes the copy itself: the directory's parent must be writable by its user)",
            copy.display()
        )
    })?;
    let end_gtid = gtid_of_copy(&copy, &b.work, &b.program).await?;
    let tool = tool_name(server_version);
    tokio::task::spawn_blocking(move || {
        // Its own server_uuid stays out: a server restored from it gets a
        // new one, as a cloned server does.
        let mut child = Command::new("tar")
            .arg("-C")
            .arg(&copy)
            .arg("--exclude=./auto.cnf")
            // the keys the scratch server generated for itself
            .arg("--exclude=./*.pem")
            .arg("-cf")
            .arg("-")
            .arg(".")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        let to = StreamTo {
            dir: &b.dir,
            name: CLONE_FILE,
            pipeline: b.pipeline,
            progress: b.progress.clone(),
            cancel: &b.cancel,
        };
        let (stored, status) = store_output(&mut child, to, |_| {})?;
        if !status.success() {
            return Err(format!("tar of the CLONE copy failed ({status})"));
        }
        Ok(Taken {
            stream_bytes: stored.raw,
            stored: stored.file(CLONE_FILE),
            end_gtid,
            binlog_file: String::new(),
            binlog_position: 0,
            lsn_from: 0,
            lsn_to: 0,
            tables: 0,
            tool,
        })
    })
    .await
    .map_err(|e| format!("backup task: {e}"))?
}

/// Starts a scratch server on the copy (proving it starts) and reads the
/// GTID set it holds.
async fn gtid_of_copy(copy: &Path, work: &Path, program: &ServerProgram) -> Result<String, String> {
    let mut server = ScratchServer::start(
        copy,
        work,
        &ScratchOptions {
            program: program.clone(),
            defaults_file: None,
            skip_grant_tables: true,
            extra: Vec::new(),
        },
    )?;
    let mut conn = server.connect("root").await?;
    let gtid: Option<String> = conn
        .query_first("SELECT @@GLOBAL.gtid_executed")
        .await
        .map_err(|e| format!("reading the copy's GTID set: {e}"))?;
    drop(conn);
    server.stop().await?;
    let gtid = gtid.unwrap_or_default().replace('\n', "");
    GtidSet::parse(&gtid).map_err(|e| format!("the copy's GTID set: {e}"))?;
    Ok(gtid)
}

/// Unpacks a CLONE backup's archive into `into` (created), through its
/// checksum.
pub fn unpack(
    dir: &BackupDir,
    m: &super::repo::Manifest,
    into: &Path,
    progress: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut tar = Command::new("tar");
    tar.arg("-x").arg("-C").arg(into).arg("-f").arg("-");
    super::datadir::unpack_with(tar, "tar", dir, m, into, progress)
}

/// Whether a restored copy holds exactly the manifest's GTID set.
pub fn same_gtids(found: &str, manifest: &str) -> Result<(), String> {
    let parse = |t: &str| GtidSet::parse(&t.replace('\n', "")).map_err(|e| e.to_string());
    if parse(found)? == parse(manifest)? {
        Ok(())
    } else {
        Err(format!(
            "the restored data holds GTID set {found:?}, the manifest says {manifest:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_sets_compare_as_sets_not_text() {
        let a = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7";
        assert!(same_gtids(&format!("{a},\n"), a).is_ok());
        assert!(same_gtids("3E11FA47-71CA-11E1-9E33-C80AA9429562:7:1-5", a).is_ok());
        let e = same_gtids("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5", a).unwrap_err();
        assert!(e.contains("the manifest says"), "{e}");
        assert!(same_gtids("0-1-5", a).is_err());
        assert!(tool_name("9.7.4-2").contains("CLONE"));
    }
}
