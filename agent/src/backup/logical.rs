//! Logical backups: `mariadb-dump` or MySQL's `mysqldump`
//! `--single-transaction` of every database with routines, events and
//! triggers, and of the `mysql` schema only the accounts and their grants,
//! plugins, UDFs and servers ([`system_tables`], as tables: MariaDB's
//! `--system=users` cannot dump a server that has accounts named by host
//! while `skip_name_resolve` is on, and MySQL has no such option). The SQL
//! is compressed and hashed on its way to the repository, like a physical
//! stream.
//!
//! Loading one builds a data directory: a new server is initialised next
//! to the target, started privately, given the dump (whose grant tables
//! replace the new server's), and shut down cleanly. The dump's own lines
//! prove it whole and say where it is consistent: `-- Dump completed`, the
//! binlog position, and the GTID state (MariaDB's `gtid_slave_pos`
//! comment; MySQL's `SET @@GLOBAL.GTID_PURGED`, which the load executes,
//! so the loaded server holds the dump's GTID set as its own).

use std::io::Write;

use mysql_async::prelude::Queryable;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::Taken;
use super::repo::{
    BackupDir, DUMP_FILE, Manifest, Pipeline, StreamTo, create_log, fed_outcome, keep_log,
    read_stored, store_output, tail,
};
use super::scratch::{ScratchOptions, ScratchServer, ServerProgram};
use dbfleet_proto::model::Flavor;

/// What a logical backup needs.
pub struct LogicalBackup {
    /// The server's flavor: which tool, options and position lines.
    pub flavor: Flavor,
    /// mariadb-dump or mysqldump, found and version-checked by the caller.
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

/// The `mysql` tables a logical backup of `flavor` holds: accounts,
/// grants, roles, plugins, UDFs and servers. Everything else there is the
/// server's own (help, time zones, statistics, replication state, and on
/// MySQL `gtid_executed`, which the dump's `GTID_PURGED` sets instead).
pub fn system_tables(flavor: Flavor) -> &'static [&'static str] {
    match flavor {
        Flavor::MariaDb => &[
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
        ],
        Flavor::MySql => &[
            "user",
            "db",
            "tables_priv",
            "columns_priv",
            "procs_priv",
            "proxies_priv",
            "role_edges",
            "default_roles",
            "global_grants",
            "password_history",
            "plugin",
            "func",
            "servers",
        ],
    }
}

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

    /// `(binlog file, position, GTID)` the dump of a `flavor` server is
    /// consistent at, if the dump is complete.
    fn position(&self, flavor: Flavor) -> Result<(String, u64, String), String> {
        let tail = String::from_utf8_lossy(&self.tail);
        if !tail.lines().any(|l| l.starts_with("-- Dump completed")) {
            return Err(
                "the dump is incomplete: it does not end with \"-- Dump completed\"".into(),
            );
        }
        let head = String::from_utf8_lossy(&self.head);
        if flavor == Flavor::MySql {
            return mysql_position(&head);
        }
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

/// Where mysqldump says a MySQL dump is consistent: its
/// `-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='F', SOURCE_LOG_POS=N;`
/// and `SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ 'SET';` lines (the set may
/// run over several lines), both at the top.
fn mysql_position(head: &str) -> Result<(String, u64, String), String> {
    let purged = head
        .split_once("SET @@GLOBAL.GTID_PURGED=")
        .map(|(_, rest)| rest.trim_start_matches("/*!80000 '+'*/").trim_start())
        .and_then(|rest| rest.strip_prefix('\''))
        .and_then(|rest| rest.split_once('\''))
        .map(|(set, _)| set.replace(['\n', ' '], ""))
        .ok_or("the dump names no GTID set (is gtid_mode on?)")?;
    let line = head
        .lines()
        .find_map(|l| l.strip_prefix("-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='"))
        .ok_or("the dump names no binlog position")?;
    let (file, rest) = line.split_once('\'').ok_or("unreadable binlog position")?;
    let position = rest
        .split("SOURCE_LOG_POS=")
        .nth(1)
        .and_then(|p| p.trim_end_matches(';').trim().parse().ok())
        .ok_or("unreadable binlog position")?;
    Ok((file.to_string(), position, purged))
}

/// The dump tool's options for `flavor` (besides credentials and the
/// tables left out): one consistent snapshot, its position recorded the
/// flavor's way.
fn dump_options(flavor: Flavor) -> Vec<&'static str> {
    let position: [&str; 2] = match flavor {
        Flavor::MariaDb => ["--master-data=2", "--gtid"],
        Flavor::MySql => ["--source-data=2", "--set-gtid-purged=ON"],
    };
    let mut options = vec!["--single-transaction"];
    options.extend(position);
    options.extend([
        "--all-databases",
        "--routines",
        "--events",
        "--triggers",
        "--hex-blob",
        "--quick",
    ]);
    options
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
        .args(dump_options(b.flavor))
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
            "{} failed ({status}): {}",
            b.tool.display(),
            tail(&log_path, 3)
        ));
    }
    let (binlog_file, binlog_position, end_gtid) = scan.position(b.flavor)?;
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

/// Where a logical backup is loaded.
pub struct Load<'a> {
    /// The backup and its manifest.
    pub backup_dir: &'a BackupDir,
    /// See `backup_dir`.
    pub manifest: &'a Manifest,
    /// The data directory to create.
    pub data: &'a Path,
    /// Logs go here.
    pub work: &'a Path,
    /// The server program the data is for (the local server's, on MySQL).
    pub program: &'a ServerProgram,
    /// Server options the target needs (InnoDB page size).
    pub extra: Vec<String>,
}

/// Builds a data directory from a logical backup: a new server, the dump
/// loaded into it through its checksum, its GTID state checked, shut down
/// cleanly.
pub async fn load(l: Load<'_>, progress: Arc<AtomicU64>) -> Result<(), String> {
    let (m, target, work) = (l.manifest, l.data, l.work);
    // MySQL's InnoDB skips hidden directories when it looks for its
    // tablespaces, the data directory itself too: a restore's staging
    // directory is hidden (so that the live server skips it), so MySQL is
    // loaded one level down and moved up once stopped.
    let hidden = target
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
    let below = target.join("loading");
    let data: &Path = if hidden { &below } else { target };
    let stored = m.data_file()?.clone();
    let client = l.program.client()?;
    let flavor = match l.program {
        ServerProgram::MariaDb => Flavor::MariaDb,
        ServerProgram::MySql { .. } => Flavor::MySql,
    };
    {
        let (program, data, extra, log) = (
            l.program.clone(),
            data.to_path_buf(),
            l.extra.clone(),
            work.join("install.log"),
        );
        tokio::task::spawn_blocking(move || program.initialize(&data, &extra, &log))
            .await
            .map_err(|e| format!("install task: {e}"))??;
    }
    let mut extra = l.extra;
    if flavor == Flavor::MySql {
        // the dump's SET @@GLOBAL.GTID_PURGED needs GTIDs on
        extra.extend([
            "--gtid-mode=ON".into(),
            "--enforce-gtid-consistency=ON".into(),
        ]);
    }
    let mut server = ScratchServer::start(
        data,
        work,
        &ScratchOptions {
            program: l.program.clone(),
            defaults_file: None,
            skip_grant_tables: false,
            extra,
        },
    )?;
    // The new server's password-less root loads the dump, whose grant
    // tables replace the new server's (root's session keeps its rights
    // until the server stops).
    let mut root = server.connect("root").await?;
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
    let (repo, key) = (l.backup_dir.repo.clone(), l.backup_dir.file(&stored.name));
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
    let (_, _, gtid) = scan.position(flavor)?;
    match flavor {
        Flavor::MariaDb if gtid != m.end_gtid => {
            return Err(format!(
                "the dump is at GTID {gtid:?}, its manifest says {:?}",
                m.end_gtid
            ));
        }
        Flavor::MariaDb => {}
        // The loaded server's own set: what GTID_PURGED made it.
        Flavor::MySql => {
            super::clone::same_gtids(&gtid, &m.end_gtid)?;
            let held: Option<String> = root
                .query_first("SELECT @@GLOBAL.gtid_executed")
                .await
                .map_err(|e| format!("reading the loaded server's GTID set: {e}"))?;
            super::clone::same_gtids(&held.unwrap_or_default(), &m.end_gtid)?;
        }
    }
    drop(root);
    server.stop().await?;
    if hidden {
        for entry in std::fs::read_dir(data)
            .map_err(|e| format!("cannot read {}: {e}", data.display()))?
            .flatten()
        {
            let to = target.join(entry.file_name());
            std::fs::rename(entry.path(), &to).map_err(|e| {
                format!(
                    "cannot move {} to {}: {e}",
                    entry.path().display(),
                    to.display()
                )
            })?;
        }
        std::fs::remove_dir(data).map_err(|e| format!("cannot remove {}: {e}", data.display()))?;
    }
    Ok(())
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
                scan.position(Flavor::MariaDb).unwrap(),
                ("ON.000001".into(), 2614, "0-1-13".into())
            );
        }
    }

    /// How mysqldump 9.7 writes a dump of a server with two sources.
    const MYSQL_DUMP: &str = "-- MySQL dump 10.13  Distrib 9.7.4, for Linux (x86_64)\n\
        SET @MYSQLDUMP_TEMP_LOG_BIN = @@SESSION.SQL_LOG_BIN;\n\
        SET @@SESSION.SQL_LOG_BIN= 0;\n\
        --\n-- GTID state at the beginning of the backup \n--\n\n\
        SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ 'ece60c5c-f29b-11f1-9f18-02fc00000001:1-2,\n\
        ff60c5c0-f29b-11f1-9f18-02fc00000002:1-7';\n\n\
        --\n-- Position to start replication or point-in-time recovery from\n--\n\n\
        -- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='db1-bin.000001', SOURCE_LOG_POS=658;\n\
        USE `mysql`;\nCREATE TABLE `user` (x int);\n\
        USE `app`;\nCREATE TABLE `t1` (x int);\n\
        SET @@SESSION.SQL_LOG_BIN = @MYSQLDUMP_TEMP_LOG_BIN;\n\
        -- Dump completed on 2026-12-08  0:11:45\n";

    #[test]
    fn a_mysql_dump_gives_its_binlog_position_and_gtid_set() {
        for size in [1, 5, 64, MYSQL_DUMP.len()] {
            let mut scan = DumpScan::default();
            for piece in MYSQL_DUMP.as_bytes().chunks(size) {
                scan.observe(piece);
            }
            assert_eq!(scan.tables, 1, "pieces of {size}");
            assert_eq!(
                scan.position(Flavor::MySql).unwrap(),
                (
                    "db1-bin.000001".into(),
                    658,
                    "ece60c5c-f29b-11f1-9f18-02fc00000001:1-2,ff60c5c0-f29b-11f1-9f18-02fc00000002:1-7"
                        .into()
                )
            );
        }
        // a dump of a server with GTIDs off names no set
        let mut scan = DumpScan::default();
        scan.observe(
            MYSQL_DUMP
                .replace("SET @@GLOBAL.GTID_PURGED", "SET @@GLOBAL.X")
                .as_bytes(),
        );
        let e = scan.position(Flavor::MySql).unwrap_err();
        assert!(e.contains("no GTID set"), "{e}");
        // read as MariaDB's, it names no position MariaDB's way
        assert!(scan.position(Flavor::MariaDb).is_err());
    }

    #[test]
    fn a_dump_cut_short_is_refused() {
        let mut scan = DumpScan::default();
        scan.observe(&DUMP.as_bytes()[..DUMP.find("-- Dump completed").unwrap()]);
        let e = scan.position(Flavor::MariaDb).unwrap_err();
        assert!(e.contains("incomplete"), "{e}");
    }
}
