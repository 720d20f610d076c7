//! A physical backup with mariadb-backup, streamed: the tool's xbstream
//! output is compressed (zstd, multithreaded) and hashed (SHA-256) in this
//! process on its way to the repository, never staged whole on local disk.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::Taken;
use super::repo::{
    BackupDir, DATA_FILE, Pipeline, StreamTo, create_log, keep_log, store_output, tail,
};

/// What a physical backup needs.
pub struct PhysicalBackup {
    /// mariadb-backup, found and version-checked by the caller.
    pub tool: PathBuf,
    /// Its `--version` line, for the manifest.
    pub tool_version: String,
    /// The backup's place in the repository (new: the caller has made
    /// sure no other backup is there).
    pub dir: BackupDir,
    /// The tool's own temporary directory and its log, on the agent's
    /// disk rather than in the repository (removed by the caller).
    pub tool_tmp: PathBuf,
    /// `--defaults-extra-file` with the agent's credentials (mode 0600):
    /// the password never appears in argv.
    pub defaults_file: PathBuf,
    /// mysqld's data directory.
    pub datadir: String,
    /// Compression and rate limit.
    pub pipeline: Pipeline,
    /// Bytes stored so far, for reports.
    pub progress: Arc<AtomicU64>,
    /// Set to stop early (the agent shuts down).
    pub cancel: Arc<AtomicBool>,
    /// For an incremental backup: copy only the pages changed after this
    /// LSN (the parent's `lsn_to`).
    pub incremental_lsn: Option<u64>,
}

/// `MySQL binlog position: filename 'F', position 'P', GTID of the last
/// change 'G'` from mariadb-backup's log.
fn binlog_position(log: &str) -> Option<(String, u64, String)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("MySQL binlog position: filename"))?;
    let quoted: Vec<&str> = line.split('\'').collect();
    // [_, file, _, position, _, gtid, _]
    let file = quoted.get(1)?.to_string();
    let position = quoted.get(3)?.parse().ok()?;
    let gtid = quoted.get(5).map(|g| g.to_string()).unwrap_or_default();
    Some((file, position, gtid))
}

/// `from_lsn` and `to_lsn` of an `xtrabackup_checkpoints` file.
fn checkpoints(text: &str) -> Option<(u64, u64)> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    Some((value("from_lsn")?, value("to_lsn")?))
}

/// Runs the backup into `b.dir`. On error the caller removes what it
/// stored.
pub fn take(b: &PhysicalBackup) -> Result<Taken, String> {
    let tool = &b.tool;
    let scratch = &b.tool_tmp;
    let (log_path, log) = create_log(scratch)?;
    let lsn_dir = scratch.join("lsn");
    std::fs::create_dir_all(&lsn_dir)
        .map_err(|e| format!("cannot create {}: {e}", lsn_dir.display()))?;
    let mut cmd = Command::new(tool);
    cmd.arg(format!(
        "--defaults-extra-file={}",
        b.defaults_file.display()
    ))
    .arg("--backup")
    .arg("--stream=xbstream")
    .arg("--slave-info")
    .arg(format!("--datadir={}", b.datadir))
    .arg(format!("--target-dir={}", scratch.display()))
    .arg(format!("--extra-lsndir={}", lsn_dir.display()));
    if let Some(lsn) = b.incremental_lsn {
        cmd.arg(format!("--incremental-lsn={lsn}"));
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let to = StreamTo {
        dir: &b.dir,
        name: DATA_FILE,
        pipeline: b.pipeline,
        progress: b.progress.clone(),
        cancel: &b.cancel,
    };
    let (stored, status) = store_output(&mut child, to, |_| {})?;
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() || !log_text.contains("completed OK!") {
        return Err(format!(
            "mariadb-backup failed ({status}): {}",
            tail(&log_path, 3)
        ));
    }
    let (binlog_file, binlog_position, end_gtid) = binlog_position(&log_text)
        .ok_or("mariadb-backup did not log its binlog position (is log_bin on?)")?;
    let lsn_file = lsn_dir.join("xtrabackup_checkpoints");
    let (lsn_from, lsn_to) = std::fs::read_to_string(&lsn_file)
        .ok()
        .as_deref()
        .and_then(checkpoints)
        .ok_or_else(|| format!("mariadb-backup wrote no readable {}", lsn_file.display()))?;
    keep_log(&b.dir, &log_path)?;
    Ok(Taken {
        stream_bytes: stored.raw,
        stored: stored.file(DATA_FILE),
        end_gtid,
        binlog_file,
        binlog_position,
        lsn_from,
        lsn_to,
        tables: 0,
        tool: b.tool_version.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consistent_position_is_read_from_the_tools_log() {
        let log = "[00] 2026-11-21 09:49:12 Streaming ./x\n\
                   [00] 2026-11-21 09:49:12 MySQL binlog position: filename 'mysql-bin.000002', position '321', GTID of the last change '0-1-42'\n\
                   [00] 2026-11-21 09:49:12 completed OK!\n";
        assert_eq!(
            binlog_position(log),
            Some(("mysql-bin.000002".into(), 321, "0-1-42".into()))
        );
        assert_eq!(binlog_position("completed OK!"), None);
    }

    #[test]
    fn the_lsns_are_read_from_the_checkpoints_file() {
        let text =
            "backup_type = incremental\nfrom_lsn = 44404\nto_lsn = 52186\nlast_lsn = 52190\n";
        assert_eq!(checkpoints(text), Some((44404, 52186)));
        assert_eq!(checkpoints("backup_type = full-backuped\n"), None);
    }
}
