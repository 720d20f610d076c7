//! Restoring a backup onto this agent's host, optionally to a point in
//! time.
//!
//! Everything that can fail without touching the running server happens
//! first: the binlogs a point-in-time target needs are found and fetched
//! through their checksums, and the backup is unpacked and prepared next
//! to the data directory. Only then is mysqld shut down, the data
//! directory swapped (the old one kept aside until the restored server
//! runs), and mysqld started with the operator's `start_command`. The
//! restored server starts a new binlog history (`RESET MASTER`), takes the
//! backup's GTID position as its replication position, and replays the
//! archived binlogs up to the target. It is left read-only.

use std::io::{BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use dbfleet_common::gtid::Position;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tracing::info;

use super::repo::{HashingReader, Manifest, tail};
use super::tools;
use super::verify::unpack_and_prepare;
use crate::binlog_archive::store::{self, Target};
use crate::mysql::observer::{self, MysqlTarget};

/// How long mysqld may take to shut down, and to accept connections
/// after its start (crash recovery of a large buffer pool is slow).
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// What a restore needs.
pub struct Restore {
    /// The job's id (names its directories).
    pub job_id: String,
    /// The backup's directory in the repository.
    pub backup_dir: PathBuf,
    /// The repository and cluster, for the binlog archive.
    pub repository: PathBuf,
    /// See `repository`.
    pub cluster: String,
    /// A directory of the job's own for logs and fetched binlogs.
    pub work: PathBuf,
    /// How to reach mysqld.
    pub target: MysqlTarget,
    /// The agent's credentials as an option file, for the client tools.
    pub defaults_file: PathBuf,
    /// How to start mysqld.
    pub start_command: Vec<String>,
    /// The point in time, if any.
    pub to: Option<Target>,
    /// Bytes read so far.
    pub progress: Arc<AtomicU64>,
}

impl Restore {
    /// Where the backup is unpacked: next to the data directory, so the
    /// swap is a rename.
    pub fn staging(datadir: &Path, job_id: &str) -> PathBuf {
        sibling(datadir, &format!("restore-{job_id}"))
    }
}

fn sibling(datadir: &Path, suffix: &str) -> PathBuf {
    let name = datadir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    datadir.with_file_name(format!(".{name}.{suffix}"))
}

/// The server's facts a restore depends on.
struct Facts {
    datadir: PathBuf,
    pid_file: PathBuf,
    version: String,
}

async fn facts(t: &MysqlTarget) -> Result<Facts, String> {
    let limit = t.connect_timeout + t.query_timeout;
    tokio::time::timeout(limit, async {
        let (mut conn, _) = observer::connect(t).await?;
        let row: Option<(String, String, String, u8)> = conn
            .query_first("SELECT @@datadir, @@pid_file, @@version, @@read_only")
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.disconnect().await;
        let (datadir, pid_file, version, read_only) = row.ok_or("no answer")?;
        if read_only == 0 {
            return Err(
                "mysqld here is writable: a primary is never restored over (switch over first)"
                    .to_string(),
            );
        }
        let datadir = PathBuf::from(datadir.trim_end_matches('/'));
        let pid_file = if Path::new(&pid_file).is_absolute() {
            PathBuf::from(pid_file)
        } else {
            datadir.join(pid_file)
        };
        Ok(Facts {
            datadir,
            pid_file,
            version,
        })
    })
    .await
    .map_err(|_| format!("mysqld did not answer within {limit:?}"))?
}

/// `10.11` of `10.11.19-MariaDB-...`.
fn major_minor(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Decompresses the chunks of a plan into whole binlog files in `dir`,
/// each chunk through its checksum; returns the files in order.
fn fetch_binlogs(plan: &store::Plan, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for ((_, name), chunks) in store::by_file(&plan.chunks) {
        let path = dir.join(&name);
        let mut out = std::fs::File::create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        for c in chunks {
            let stored = plan.dir.join(&c.stored.name);
            let f = std::fs::File::open(&stored)
                .map_err(|e| format!("cannot open {}: {e}", stored.display()))?;
            let mut reader = HashingReader::new(BufReader::new(f), Arc::new(AtomicU64::new(0)));
            let mut bytes = Vec::new();
            let decoded = zstd::stream::copy_decode(&mut reader, &mut bytes);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            let (n, sha) = reader.finish();
            if sha != c.stored.sha256 || n != c.stored.bytes {
                return Err(format!(
                    "archived binlog {} is corrupt: {n} bytes with SHA-256 {sha}, its meta says {} bytes with {}",
                    stored.display(),
                    c.stored.bytes,
                    c.stored.sha256
                ));
            }
            decoded.map_err(|e| format!("cannot decompress {}: {e}", stored.display()))?;
            if bytes.len() as u64 != c.end - c.start {
                return Err(format!(
                    "archived binlog {} holds {} bytes, its meta says {}",
                    stored.display(),
                    bytes.len(),
                    c.end - c.start
                ));
            }
            out.write_all(&bytes)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        files.push(path);
    }
    Ok(files)
}

/// Whether process `pid` still runs (a zombie has ended).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Shuts mysqld down and waits until its process has ended.
async fn stop_mysqld(t: &MysqlTarget, pid_file: &Path) -> Result<(), String> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "cannot read mysqld's pid from {}: without it the agent cannot tell when it has stopped",
                pid_file.display()
            )
        })?;
    let (mut conn, _) = observer::connect(t).await?;
    conn.query_drop("SHUTDOWN")
        .await
        .map_err(|e| format!("SHUTDOWN: {e}"))?;
    drop(conn);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while running(pid) {
        if Instant::now() > deadline {
            return Err(format!(
                "mysqld (pid {pid}) did not stop within {STOP_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Runs the start command in its own process group, reaped in the
/// background, and waits until mysqld accepts connections.
async fn start_mysqld(r: &Restore) -> Result<Conn, String> {
    let (program, args) = r.start_command.split_first().ok_or("empty start_command")?;
    let log = r.work.join("start.log");
    let err =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run start_command {program}: {e}"))?;
    let exited = Arc::new(std::sync::Mutex::new(None));
    {
        let exited = exited.clone();
        std::thread::spawn(move || {
            let status = child.wait();
            *exited.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        });
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok((conn, _)) = observer::connect(&r.target).await {
            return Ok(conn);
        }
        let status = exited.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(Ok(s)) = status
            && !s.success()
        {
            return Err(format!(
                "start_command {program} failed ({s}): {}",
                tail(&log, 3)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "mysqld did not accept connections within {START_TIMEOUT:?} after start_command"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Gives `dir` and everything in it `uid`/`gid`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            chown_tree(&e.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// Replays `files` from `start` up to the target through the client.
fn replay(r: &Restore, files: &[PathBuf], start: &str) -> Result<(), String> {
    let binlog_tool = tools::find("mariadb-binlog")?;
    let client = tools::find("mariadb")?;
    let mut cmd = Command::new(&binlog_tool);
    cmd.env("TZ", "UTC")
        .arg("--skip-gtid-strict-mode")
        .arg(format!("--start-position={start}"));
    match &r.to {
        Some(Target::Time(t)) => {
            let at = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(*t as u64),
            )
            .to_string();
            // 2026-11-21T10:00:00Z -> 2026-11-21 10:00:00 (UTC, see TZ)
            cmd.arg(format!(
                "--stop-datetime={}",
                at.trim_end_matches('Z').replace('T', " ")
            ));
        }
        Some(Target::Gtid(g)) => {
            cmd.arg(format!("--stop-position={g}"));
        }
        None => {}
    }
    let decode_log = r.work.join("mariadb-binlog.log");
    let apply_log = r.work.join("replay.log");
    let mut decode = cmd
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::File::create(&decode_log)
                .map_err(|e| format!("cannot create {}: {e}", decode_log.display()))?,
        )
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binlog_tool.display()))?;
    let events = decode.stdout.take().expect("piped");
    let apply = Command::new(&client)
        .arg(format!(
            "--defaults-extra-file={}",
            r.defaults_file.display()
        ))
        .arg("--binary-mode")
        .stdin(events)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&apply_log)
                .map_err(|e| format!("cannot create {}: {e}", apply_log.display()))?,
        )
        .status()
        .map_err(|e| format!("cannot run {}: {e}", client.display()))?;
    let decoded = decode.wait().map_err(|e| format!("mariadb-binlog: {e}"))?;
    if !decoded.success() {
        return Err(format!(
            "mariadb-binlog failed ({decoded}): {}",
            tail(&decode_log, 3)
        ));
    }
    if !apply.success() {
        return Err(format!(
            "replaying the binlogs failed ({apply}): {}",
            tail(&apply_log, 3)
        ));
    }
    Ok(())
}

/// Runs the restore; returns a one-line summary. `note_staging` is told
/// where the backup will be unpacked before anything is written there (so
/// an agent killed mid-restore can remove it at its next start).
pub async fn restore(
    r: Restore,
    note_staging: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<String, String> {
    let started = Instant::now();
    let f = facts(&r.target).await?;
    let manifest = Manifest::read(&r.backup_dir).map_err(|e| {
        format!(
            "{} is not a usable backup: no readable manifest ({e})",
            r.backup_dir.display()
        )
    })?;
    if major_minor(&manifest.server_version) != major_minor(&f.version) {
        return Err(format!(
            "the backup is of {} and this server runs {}: restore onto the same major version",
            manifest.server_version, f.version
        ));
    }
    let start = Position::parse(&manifest.end_gtid)?;
    std::fs::create_dir_all(&r.work)
        .map_err(|e| format!("cannot create {}: {e}", r.work.display()))?;
    // 1. the binlogs, before anything is touched
    let binlogs = match &r.to {
        Some(target) => {
            let streams = store::read_streams(&r.repository, &r.cluster)
                .map_err(|e| format!("cannot read the binlog archive: {e}"))?;
            let plan = store::plan(&streams, &start, target)?;
            let dir = r.work.join("binlogs");
            let fetched =
                tokio::task::spawn_blocking(move || fetch_binlogs(&plan, &dir).map(|f| (plan, f)))
                    .await
                    .map_err(|e| format!("fetch task: {e}"))??;
            Some(fetched)
        }
        None => None,
    };
    // 2. the backup, unpacked and prepared beside the data directory
    let staging = Restore::staging(&f.datadir, &r.job_id);
    note_staging(&staging)?;
    let _ = std::fs::remove_dir_all(&staging);
    {
        let (backup, staging, work, progress) = (
            r.backup_dir.clone(),
            staging.clone(),
            r.work.clone(),
            r.progress.clone(),
        );
        tokio::task::spawn_blocking(move || unpack_and_prepare(&backup, &staging, &work, progress))
            .await
            .map_err(|e| format!("unpack task: {e}"))??;
    }
    let meta = std::fs::metadata(&f.datadir)
        .map_err(|e| format!("cannot read {}: {e}", f.datadir.display()))?;
    chown_tree(&staging, meta.uid(), meta.gid())
        .and_then(|()| {
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(meta.mode()))
        })
        .map_err(|e| format!("cannot give {} mysqld's owner: {e}", staging.display()))?;
    // 3. the swap
    info!(datadir = %f.datadir.display(), "restore: stopping mysqld");
    stop_mysqld(&r.target, &f.pid_file).await?;
    let before = sibling(&f.datadir, &format!("before-{}", r.job_id));
    std::fs::rename(&f.datadir, &before)
        .map_err(|e| format!("cannot move {} aside: {e}", f.datadir.display()))?;
    if let Err(e) = std::fs::rename(&staging, &f.datadir) {
        let _ = std::fs::rename(&before, &f.datadir);
        let _ = start_mysqld(&r).await;
        return Err(format!(
            "cannot move the restored data into {}: {e}; the previous data is back and mysqld restarted",
            f.datadir.display()
        ));
    }
    let mut conn = match start_mysqld(&r).await {
        Ok(c) => c,
        Err(e) => {
            let failed = sibling(&f.datadir, &format!("failed-{}", r.job_id));
            let back = std::fs::rename(&f.datadir, &failed)
                .and_then(|()| std::fs::rename(&before, &f.datadir));
            let again = match back {
                Ok(()) => match start_mysqld(&r).await {
                    Ok(_) => "the previous data is back and mysqld runs on it".to_string(),
                    Err(e2) => format!("the previous data is back but mysqld did not start: {e2}"),
                },
                Err(e2) => format!("the previous data could not be put back: {e2}"),
            };
            return Err(format!(
                "the restored server did not start: {e}; {again} (restored copy kept in {})",
                failed.display()
            ));
        }
    };
    // 4. a new history that starts at the backup's position: as a
    // replica's (slave_pos) and as its own (binlog_state), which is where
    // a later repoint takes the replication position from
    let mut history = vec![
        "SET GLOBAL read_only = ON".to_string(),
        "STOP SLAVE".to_string(),
        "RESET SLAVE ALL".to_string(),
        "RESET MASTER".to_string(),
    ];
    if !manifest.end_gtid.is_empty() {
        history.push(format!(
            "SET GLOBAL gtid_binlog_state = '{}'",
            manifest.end_gtid
        ));
    }
    history.push(format!(
        "SET GLOBAL gtid_slave_pos = '{}'",
        manifest.end_gtid
    ));
    for sql in history {
        conn.query_drop(&sql)
            .await
            .map_err(|e| format!("restored server: {sql}: {e}"))?;
    }
    let _ = std::fs::remove_dir_all(&before);
    let mut summary = format!(
        "restored backup {} at GTID {:?}",
        manifest.id, manifest.end_gtid
    );
    // 5. the point in time
    if let Some((plan, files)) = binlogs {
        let (r2_files, start_text) = (files.clone(), manifest.end_gtid.clone());
        let replayed_at = Instant::now();
        let r = Arc::new(r);
        let rr = r.clone();
        tokio::task::spawn_blocking(move || replay(&rr, &r2_files, &start_text))
            .await
            .map_err(|e| format!("replay task: {e}"))??;
        let now: String = conn
            .query_first("SELECT @@gtid_binlog_pos")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let reached = if now.is_empty() {
            manifest.end_gtid.clone()
        } else {
            now
        };
        conn.query_drop(format!("SET GLOBAL gtid_slave_pos = '{reached}'"))
            .await
            .map_err(|e| format!("restored server: setting gtid_slave_pos: {e}"))?;
        summary.push_str(&format!(
            "; replayed {} binlog file(s) of stream {} in {:.1}s to GTID {reached:?}",
            files.len(),
            plan.stream,
            replayed_at.elapsed().as_secs_f64()
        ));
    }
    let _ = conn.disconnect().await;
    summary.push_str(&format!(
        "; read-only ({:.1}s)",
        started.elapsed().as_secs_f64()
    ));
    info!(summary, "restore completed");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("10.11.19-MariaDB-0+deb12u1-log"), "10.11");
        assert_ne!(major_minor("10.6.1-MariaDB"), major_minor("10.11.2"));
    }

    #[test]
    fn a_zombie_or_missing_process_is_not_running() {
        assert!(running(std::process::id() as i32));
        assert!(!running(i32::MAX));
    }

    #[test]
    fn restore_directories_sit_beside_the_data_directory() {
        let d = Path::new("/var/lib/mysql");
        assert_eq!(
            Restore::staging(d, "j1"),
            PathBuf::from("/var/lib/.mysql.restore-j1")
        );
    }
}
