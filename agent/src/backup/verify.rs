//! Verifying a backup by restoring it: the stored stream is read back
//! through its checksum, unpacked, prepared, and started as a scratch
//! mysqld (no network, no grants, no binlog) whose tables are all checked
//! and whose GTID position must be the manifest's. Everything lives under
//! one scratch directory, removed afterwards whatever happened.

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use super::repo::{DATA_FILE, HashingReader, Manifest, tail};
use super::tools;

/// What a verification needs.
pub struct Verification {
    /// The backup's directory in the repository.
    pub backup_dir: PathBuf,
    /// An empty directory of its own (removed by the caller).
    pub scratch: PathBuf,
    /// Bytes read so far.
    pub progress: Arc<AtomicU64>,
}

/// Unpacks the backup in `backup_dir` into `data` (created) through its
/// checksum and prepares it, the tool's log in `work`; returns the
/// manifest. Verification and restore both start with this.
pub fn unpack_and_prepare(
    backup_dir: &Path,
    data: &Path,
    work: &Path,
    progress: Arc<AtomicU64>,
) -> Result<Manifest, String> {
    let manifest = Manifest::read(backup_dir).map_err(|e| {
        format!(
            "{} is not a usable backup: no readable manifest ({e})",
            backup_dir.display()
        )
    })?;
    let stored = manifest
        .files
        .iter()
        .find(|f| f.name == DATA_FILE)
        .ok_or("the manifest lists no data file")?;
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let mbstream = tools::find("mbstream")?;
    let mut unpack = Command::new(&mbstream)
        .arg("-x")
        .arg("-C")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", mbstream.display()))?;
    let path = backup_dir.join(DATA_FILE);
    let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut reader = HashingReader::new(BufReader::new(file), progress);
    let copied = {
        let mut stdin = unpack.stdin.take().expect("piped");
        zstd::stream::copy_decode(&mut reader, &mut stdin).and_then(|()| stdin.flush())
    };
    if copied.is_err() {
        // Hash the whole file whatever stopped the unpacking (a full
        // scratch disk is no corrupt backup).
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    }
    let status = unpack.wait().map_err(|e| format!("mbstream: {e}"))?;
    let (bytes, sha) = reader.finish();
    if sha != stored.sha256 || bytes != stored.bytes {
        return Err(format!(
            "{} is corrupt: {bytes} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
            path.display(),
            stored.bytes,
            stored.sha256
        ));
    }
    copied.map_err(|e| format!("cannot decompress {}: {e}", path.display()))?;
    if !status.success() {
        return Err(format!("mbstream could not unpack the stream ({status})"));
    }
    let tool = tools::find("mariadb-backup")?;
    let log = work.join("prepare.log");
    let out = File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let status = Command::new(&tool)
        .arg("--prepare")
        .arg(format!("--target-dir={}", data.display()))
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
    let info = std::fs::read_to_string(data.join("xtrabackup_binlog_info")).unwrap_or_default();
    let gtid = info.split_whitespace().nth(2).unwrap_or_default();
    if gtid != manifest.end_gtid {
        return Err(format!(
            "the restored data is at GTID {gtid:?}, the manifest says {:?}",
            manifest.end_gtid
        ));
    }
    Ok(manifest)
}

/// A scratch mysqld on `scratch/data`, killed when dropped.
struct Scratch {
    child: Child,
    /// The socket's private directory (mode 0700: the server runs without
    /// grants, so only the agent's user may reach it).
    socket_dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

fn start(scratch: &Path) -> Result<Scratch, String> {
    let mysqld = tools::find("mariadbd")?;
    // A Unix socket path must stay under 108 bytes; scratch paths can be
    // longer.
    let socket_dir = std::env::temp_dir().join(format!(
        "dbfleet-verify-{}-{}",
        std::process::id(),
        dbfleet_common::clock::unix_ms()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&socket_dir)
        .map_err(|e| format!("cannot create {}: {e}", socket_dir.display()))?;
    let socket = socket_dir.join("mysqld.sock");
    let mut cmd = Command::new(&mysqld);
    // backup-my.cnf carries the source's InnoDB layout (page size, redo
    // and undo settings) that the data files need.
    cmd.arg(format!(
        "--defaults-file={}",
        scratch.join("data/backup-my.cnf").display()
    ))
    .arg(format!("--datadir={}", scratch.join("data").display()))
    .arg(format!("--socket={}", socket.display()))
    .arg(format!(
        "--pid-file={}",
        scratch.join("mysqld.pid").display()
    ))
    .arg(format!(
        "--log-error={}",
        scratch.join("mysqld.err").display()
    ))
    .arg("--skip-networking")
    .arg("--skip-grant-tables")
    .arg("--skip-log-bin")
    .arg("--skip-slave-start")
    .arg("--innodb-buffer-pool-size=64M")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if nix::unistd::geteuid().is_root() {
        cmd.arg("--user=root");
    }
    let child = cmd.spawn().map_err(|e| {
        let _ = std::fs::remove_dir_all(&socket_dir);
        format!("cannot run {}: {e}", mysqld.display())
    })?;
    Ok(Scratch {
        child,
        socket_dir,
        socket,
    })
}

async fn connect(s: &mut Scratch, scratch: &Path) -> Result<Conn, String> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = s.child.try_wait() {
            return Err(format!(
                "the restored server would not start ({status}): {}",
                tail(&scratch.join("mysqld.err"), 3)
            ));
        }
        if s.socket.exists() {
            let opts = OptsBuilder::default()
                .socket(Some(s.socket.to_string_lossy().into_owned()))
                .user(Some("root"))
                .prefer_socket(true);
            if let Ok(c) = Conn::new(opts).await {
                return Ok(c);
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "the restored server did not accept connections within 120s: {}",
                tail(&scratch.join("mysqld.err"), 3)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks every table of the restored server; returns how many.
async fn check_tables(conn: &mut Conn) -> Result<usize, String> {
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' \
             AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'sys')",
        )
        .await
        .map_err(|e| format!("listing tables: {e}"))?;
    for (schema, table) in &tables {
        let name = format!(
            "`{}`.`{}`",
            schema.replace('`', "``"),
            table.replace('`', "``")
        );
        let rows: Vec<(String, String, String, String)> = conn
            .query(format!("CHECK TABLE {name}"))
            .await
            .map_err(|e| format!("CHECK TABLE {name}: {e}"))?;
        if let Some(bad) = rows.iter().find(|(_, _, kind, text)| {
            kind.eq_ignore_ascii_case("error") || (kind == "status" && text != "OK")
        }) {
            return Err(format!("CHECK TABLE {name}: {} {}", bad.2, bad.3));
        }
    }
    Ok(tables.len())
}

/// Restores, starts, checks; returns a one-line summary.
pub async fn verify(v: Verification) -> Result<String, String> {
    let started = Instant::now();
    let scratch = v.scratch.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        unpack_and_prepare(
            &v.backup_dir,
            &v.scratch.join("data"),
            &v.scratch,
            v.progress,
        )
    })
    .await
    .map_err(|e| format!("restore task: {e}"))??;
    let mut server = start(&scratch)?;
    let mut conn = connect(&mut server, &scratch).await?;
    let checked = check_tables(&mut conn).await;
    let _ = conn.query_drop("SHUTDOWN").await;
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && matches!(server.child.try_wait(), Ok(None)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    let tables = checked?;
    Ok(format!(
        "restored, prepared and started; {tables} tables checked; at GTID {:?} as the manifest says ({:.1}s)",
        manifest.end_gtid,
        started.elapsed().as_secs_f64()
    ))
}
