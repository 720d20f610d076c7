//! Turning a backup into a data directory mysqld can start on, for a
//! restore and for a verification alike. A physical backup is unpacked
//! through its checksum and prepared, an incremental one on top of its
//! full backup and every incremental in between; a logical one is loaded
//! into a new server. Either way the result must be at the GTID its
//! manifest names.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::repo::{BackupDir, Manifest, chain, fed_outcome, read_stored, tail};
use super::{logical, tools};

/// What building a data directory needs.
pub struct Build {
    /// The backup in the repository.
    pub backup_dir: BackupDir,
    /// The data directory to create.
    pub data: PathBuf,
    /// A directory of the job's own for logs and unpacked increments.
    pub work: PathBuf,
    /// Server options the target needs when a new server is initialised
    /// for a logical backup (its InnoDB page size).
    pub server_options: Vec<String>,
    /// The server program a logical backup is loaded with: of the
    /// backup's flavor (on MySQL, the local server's own).
    pub program: super::scratch::ServerProgram,
    /// Bytes read from the repository so far.
    pub progress: Arc<AtomicU64>,
    /// The step it is on.
    pub phase: super::Phase,
}

/// Builds the data directory; returns the backup's manifest.
pub async fn build(b: Build) -> Result<Manifest, String> {
    let m = Manifest::read_usable(&b.backup_dir)?;
    std::fs::create_dir_all(&b.work)
        .map_err(|e| format!("cannot create {}: {e}", b.work.display()))?;
    if m.method == "logical" {
        b.phase.set("loading the dump");
        logical::load(
            logical::Load {
                backup_dir: &b.backup_dir,
                manifest: &m,
                data: &b.data,
                work: &b.work,
                program: &b.program,
                extra: b.server_options,
            },
            b.progress,
        )
        .await?;
        return Ok(m);
    }
    if m.flavor == "mysql" {
        // A CLONE copy needs no preparing; its GTID set is checked once a
        // server runs on it.
        b.phase.set("reading the backup");
        let dir = b.backup_dir.clone();
        return tokio::task::spawn_blocking(move || {
            super::clone::unpack(&dir, &m, &b.data, b.progress).map(|()| m)
        })
        .await
        .map_err(|e| format!("restore task: {e}"))?;
    }
    tokio::task::spawn_blocking(move || {
        let links = chain(&b.backup_dir)?;
        let (full_dir, full) = &links[0];
        b.phase.set("reading the backup");
        unpack(full_dir, full, &b.data, b.progress.clone())?;
        b.phase.set("preparing");
        prepare(&b.data, None, &b.work)?;
        for (dir, inc) in &links[1..] {
            let delta = b.work.join(format!("incremental-{}", inc.id));
            let _ = std::fs::remove_dir_all(&delta);
            b.phase.set("reading an incremental backup");
            unpack(dir, inc, &delta, b.progress.clone())?;
            b.phase.set("preparing an incremental backup");
            prepare(&b.data, Some(&delta), &b.work)?;
            let _ = std::fs::remove_dir_all(&delta);
        }
        let info =
            std::fs::read_to_string(b.data.join("xtrabackup_binlog_info")).unwrap_or_default();
        let gtid = info.split_whitespace().nth(2).unwrap_or_default();
        if gtid != m.end_gtid {
            return Err(format!(
                "the restored data is at GTID {gtid:?}, the manifest says {:?}",
                m.end_gtid
            ));
        }
        Ok(m)
    })
    .await
    .map_err(|e| format!("restore task: {e}"))?
}

/// Unpacks one physical backup's stream into `into` (created).
fn unpack(
    dir: &BackupDir,
    m: &Manifest,
    into: &Path,
    progress: Arc<AtomicU64>,
) -> Result<(), String> {
    let mbstream = tools::find("mbstream")?;
    let mut cmd = Command::new(&mbstream);
    cmd.arg("-x").arg("-C").arg(into);
    unpack_with(cmd, "mbstream", dir, m, into, progress)
}

/// Feeds a backup's stored stream, read back through its checksum, to
/// `unpacker` (which writes into `into`, created first); `name` says
/// which tool failed.
pub(super) fn unpack_with(
    mut unpacker: Command,
    name: &str,
    dir: &BackupDir,
    m: &Manifest,
    into: &Path,
    progress: Arc<AtomicU64>,
) -> Result<(), String> {
    let stored = m.data_file()?;
    std::fs::create_dir_all(into).map_err(|e| format!("cannot create {}: {e}", into.display()))?;
    let mut child = unpacker
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let fed = {
        let mut stdin = child.stdin.take().expect("piped");
        read_stored(
            &dir.repo,
            &dir.file(&stored.name),
            stored,
            progress,
            &mut stdin,
        )
    };
    let status = child.wait().map_err(|e| format!("{name}: {e}"))?;
    fed_outcome(fed, status, |status| {
        format!("{name} could not unpack the stream of {} ({status})", m.id)
    })
}

/// `mariadb-backup --prepare` of `data`, applying `delta` (an unpacked
/// incremental backup) when given.
fn prepare(data: &Path, delta: Option<&Path>, work: &Path) -> Result<(), String> {
    let tool = tools::find("mariadb-backup")?;
    let log = work.join("prepare.log");
    let out = File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut cmd = Command::new(&tool);
    cmd.arg("--prepare")
        .arg(format!("--target-dir={}", data.display()));
    if let Some(d) = delta {
        cmd.arg(format!("--incremental-dir={}", d.display()));
    }
    let status = cmd
        .stdout(Stdio::null())
        .stderr(out)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    if !status.success() {
        return Err(format!(
            "mariadb-backup --prepare failed ({status}): {}",
            tail(&log, 3)
        ));
    }
    Ok(())
}
