//! Logical backups: `mariadb-dump --single-transaction` of every database
//! with routines, events and triggers, and of the `mysql` schema only the
//! accounts and their grants, plugins, UDFs and servers ([`SYSTEM_TABLES`],
//! as tables: `--system=users` cannot dump a server that has accounts
//! named by host while `skip_name_resolve` is on). The SQL is compressed
//! and hashed on its way to the repository, like a physical stream.
//!
//! Loading one builds a data directory: a new server is initialised next
//! to the target, started privately, given the dump (whose grant tables
//! replace the new server's), and shut down cleanly. The dump's own last
//! lines prove it whole: `-- Dump completed` and the GTID it is consistent
//! at.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::Taken;
use super::repo::{
    BackupDir, DUMP_FILE, Manifest, Pipeline, StreamTo, create_log, fed_outcome, keep_log,
    read_stored, store_output, tail,
};
use super::scratch::{ScratchOptions, ScratchServer, install_db};
use super::tools;

/// What a logical backup needs.
pub struct LogicalBackup {
    /// mariadb-dump, found and version-checked by the caller.
    pub tool: PathBuf,
    /// Its `--version` line, for the manifest.
    pub tool_version: String,
    /// The backup's place in the repository (new: the caller has made
    /// sure no other backup is there).
    pub dir: BackupDir,
    /// A directory of the agent's for the tool's log (removed by the
    /// caller).
    pub work: PathBuf,
    /// `--defaults-extra-file` with the agent's credentials (mode 0600).
    pub defaults_file: PathBuf,
    /// The server's `mysql` tables not in [`SYSTEM_TABLES`].
    pub ignore_tables: Vec<String>,
    /// Compression and rate limit.
    pub pipeline: Pipeline,
    /// Bytes stored so far, for reports.
    pub progress: Arc<AtomicU64>,
    /// Set to stop early (the agent shuts down).
    pub cancel: Arc<AtomicBool>,
}

/// The `mysql` tables a logical backup holds: accounts, grants, roles,
/// plugins, UDFs and servers.
pub const SYSTEM_TABLES: &[&str] = &[
    "global_priv",
    "db",
    "tables_priv",
    "columns_priv",
    "procs_priv",
    "proxies_priv",
    "roles_mapping",
    "plugin",
    "func",
    "servers",
];

/// How many bytes of a dump's beginning and end are kept to read its
/// position lines from.
const KEEP: usize = 64 * 1024;
/// How much of a line is looked at (statements of interest are short;
/// data lines are long).
const LINE_START: usize = 256;

/// Watches a dump stream go by: counts the tables it creates outside the
/// `mysql` schema and keeps its head and tail, where mariadb-dump writes
/// the position it is consistent at.
#[derive(Default)]
struct DumpScan {
    head: Vec<u8>,
    tail: Vec<u8>,
    tables: u64,
    /// The start of the line being read.
    line: Vec<u8>,
    /// The schema of the `USE` statement last seen.
    schema: String,
}

impl DumpScan {
    fn observe(&mut self, piece: &[u8]) {
        if self.head.len() < KEEP {
            let n = (KEEP - self.head.len()).min(piece.len());
            self.head.extend_from_slice(&piece[..n]);
        }
        self.tail.extend_from_slice(piece);
        if self.tail.len() > 2 * KEEP {
            self.tail.drain(..self.tail.len() - KEEP);
        }
        let mut rest = piece;
        loop {
            let end = rest.iter().position(|b| *b == b'\n');
            let part = &rest[..end.unwrap_or(rest.len())];
            let room = LINE_START.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..room.min(part.len())]);
            let Some(end) = end else { break };
            self.line_done();
            rest = &rest[end + 1..];
        }
    }

    fn line_done(&mut self) {
        let line = std::mem::take(&mut self.line);
        if let Some(name) = line.strip_prefix(b"USE `") {
            let name = name.strip_suffix(b"`;").unwrap_or(name);
            self.schema = String::from_utf8_lossy(name).into_owned();
        } else if line.starts_with(b"CREATE TABLE `") && self.schema != "mysql" {
            self.tables += 1;
        }
    }

    /// `(binlog file, position, GTID)` the dump is consistent at, if the
    /// dump is complete.
    fn position(&self) -> Result<(String, u64, String), String> {
        let tail = String::from_utf8_lossy(&self.tail);
        if !tail.lines().any(|l| l.starts_with("-- Dump completed")) {
            return Err(
                "the dump is incomplete: it does not end with \"-- Dump completed\"".into(),
            );
        }
        let head = String::from_utf8_lossy(&self.head);
        // at the end in current mariadb-dump, at the top in older ones
        let gtid = tail
            .lines()
            .rev()
            .chain(head.lines())
            .find_map(|l| l.strip_prefix("-- SET GLOBAL gtid_slave_pos='"))
            .and_then(|rest| rest.split('\'').next())
            .ok_or("the dump names no GTID position (is log_bin on?)")?
            .to_string();
        let line = head
            .lines()
            .find_map(|l| l.strip_prefix("-- CHANGE MASTER TO MASTER_LOG_FILE='"))
            .ok_or("the dump names no binlog position")?;
        let (file, rest) = line.split_once('\'').ok_or("unreadable binlog position")?;
        let position = rest
            .split("MASTER_LOG_POS=")
            .nth(1)
            .and_then(|p| p.trim_end_matches(';').trim().parse().ok())
            .ok_or("unreadable binlog position")?;
        Ok((file.to_string(), position, gtid))
    }
}

/// Runs the dump into `b.dir`. On error the caller removes what it
/// stored.
pub fn take(b: &LogicalBackup) -> Result<Taken, String> {
    let (log_path, log) = create_log(&b.work)?;
    let mut child = Command::new(&b.tool)
        .arg(format!(
            "--defaults-extra-file={}",
            b.defaults_file.display()
        ))
        .args([
            "--single-transaction",
            "--master-data=2",
            "--gtid",
            "--all-databases",
            "--routines",
            "--events",
            "--triggers",
            "--hex-blob",
            "--quick",
        ])
        .args(
            b.ignore_tables
                .iter()
                .map(|t| format!("--ignore-table=mysql.{t}")),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", b.tool.display()))?;
    let mut scan = DumpScan::default();
    let to = StreamTo {
        dir: &b.dir,
        name: DUMP_FILE,
        pipeline: b.pipeline,
        progress: b.progress.clone(),
        cancel: &b.cancel,
    };
    let (stored, status) = store_output(&mut child, to, |piece| scan.observe(piece))?;
    if !status.success() {
        return Err(format!(
            "mariadb-dump failed ({status}): {}",
            tail(&log_path, 3)
        ));
    }
    let (binlog_file, binlog_position, end_gtid) = scan.position()?;
    keep_log(&b.dir, &log_path)?;
    Ok(Taken {
        stream_bytes: stored.raw,
        stored: stored.file(DUMP_FILE),
        end_gtid,
        binlog_file,
        binlog_position,
        lsn_from: 0,
        lsn_to: 0,
        tables: scan.tables,
        tool: b.tool_version.clone(),
    })
}

/// Passes what is written on to `inner`, watching it as a dump.
struct Scanned<'a, W> {
    inner: W,
    scan: &'a mut DumpScan,
}

impl<W: Write> Write for Scanned<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.scan.observe(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Builds a data directory in `data` from the logical backup in
/// `backup_dir` (its manifest `m`): a new server, the dump loaded into it
/// through its checksum, shut down cleanly. `extra` are server options the
/// target needs (InnoDB page size). Logs go into `work`.
pub async fn load(
    backup_dir: &BackupDir,
    m: &Manifest,
    data: &Path,
    work: &Path,
    extra: Vec<String>,
    progress: Arc<AtomicU64>,
) -> Result<(), String> {
    let stored = m.data_file()?.clone();
    let client = tools::find("mariadb")?;
    {
        let (data, extra, log) = (data.to_path_buf(), extra.clone(), work.join("install.log"));
        tokio::task::spawn_blocking(move || install_db(&data, &extra, &log))
            .await
            .map_err(|e| format!("install task: {e}"))??;
    }
    let mut server = ScratchServer::start(
        data,
        work,
        &ScratchOptions {
            program: super::scratch::ServerProgram::MariaDb,
            defaults_file: None,
            skip_grant_tables: false,
            extra,
        },
    )?;
    // The new server's password-less root loads the dump, whose grant
    // tables replace the new server's (root's session keeps its rights
    // until the server stops).
    drop(server.connect("root").await?);
    let load_log = work.join("load.log");
    let mut child = Command::new(&client)
        .arg("--no-defaults")
        .arg(format!("--socket={}", server.socket().display()))
        .arg("--user=root")
        .arg("--binary-mode")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&load_log)
                .map_err(|e| format!("cannot create {}: {e}", load_log.display()))?,
        )
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", client.display()))?;
    let stdin = child.stdin.take().expect("piped");
    let (repo, key) = (backup_dir.repo.clone(), backup_dir.file(&stored.name));
    let (fed, scan) = tokio::task::spawn_blocking(move || {
        let mut scan = DumpScan::default();
        let mut out = Scanned {
            inner: stdin,
            scan: &mut scan,
        };
        let fed = read_stored(&repo, &key, &stored, progress, &mut out);
        drop(out);
        (fed, scan)
    })
    .await
    .map_err(|e| format!("load task: {e}"))?;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| format!("load task: {e}"))?
        .map_err(|e| format!("waiting for the client: {e}"))?;
    fed_outcome(fed, status, |status| {
        format!("loading the dump failed ({status}): {}", tail(&load_log, 3))
    })?;
    let (_, _, gtid) = scan.position()?;
    if gtid != m.end_gtid {
        return Err(format!(
            "the dump is at GTID {gtid:?}, its manifest says {:?}",
            m.end_gtid
        ));
    }
    server.stop().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "-- MariaDB dump\n\
        -- CHANGE MASTER TO MASTER_LOG_FILE='ON.000001', MASTER_LOG_POS=2614;\n\
        USE `mysql`;\nCREATE TABLE `global_priv` (x int);\n\
        USE `app`;\nCREATE TABLE `a` (x int);\nREPLACE INTO `a` VALUES (1);\n\
        \nCREATE TABLE `b` (x int);\nREPLACE INTO `b` VALUES ('\\nCREATE TABLE `x`');\n\
        -- SET GLOBAL gtid_slave_pos='0-1-13';\n\
        -- Dump completed on 2026-11-21 12:22:56\n";

    #[test]
    fn a_dump_seen_in_any_pieces_gives_its_tables_and_position() {
        for size in [1, 3, 7, 64, DUMP.len()] {
            let mut scan = DumpScan::default();
            for piece in DUMP.as_bytes().chunks(size) {
                scan.observe(piece);
            }
            assert_eq!(scan.tables, 2, "pieces of {size}");
            assert_eq!(
                scan.position().unwrap(),
                ("ON.000001".into(), 2614, "0-1-13".into())
            );
        }
    }

    #[test]
    fn a_dump_cut_short_is_refused() {
        let mut scan = DumpScan::default();
        scan.observe(&DUMP.as_bytes()[..DUMP.find("-- Dump completed").unwrap()]);
        let e = scan.position().unwrap_err();
        assert!(e.contains("incomplete"), "{e}");
    }
}
