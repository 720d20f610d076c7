//! Restoring a backup onto this agent's host, optionally to a point in
//! time.
//!
//! Everything that can fail without touching the running server happens
//! first: the binlogs a point-in-time target needs are found and fetched
//! through their checksums, and the backup is made a data directory next
//! inside the current one (unpacked and prepared with its increments, or a
//! dump loaded into a new server). Only then is mysqld shut down, the data
//! directory's contents swapped (see [`super::swap`]: the previous ones
//! kept aside until the restored server runs), and mysqld started with the
//! operator's `start_command`. The
//! restored server starts a new binlog history (`RESET MASTER`), takes the
//! backup's GTID position as its replication position, and replays the
//! archived binlogs up to the target. It is left read-only.

use std::io::{BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use dbfleet_common::gtid_set::GtidSet;
use dbfleet_common::gtid_state::GtidState;
use dbfleet_proto::model::Flavor;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tracing::{info, warn};

use super::repo::{BackupDir, Manifest, read_stored, tail};
use super::swap::Swap;
use super::{datadir, tools};
use crate::binlog_archive::events;
use crate::binlog_archive::store::{self, Target};
use crate::mysql::observer::{self, MysqlTarget};
use crate::mysql::process::{self, ServerFiles};
use crate::repository::Repository;
use rustix::process::Signal;

/// How long mysqld may take to shut down, and to accept connections
/// after its start (crash recovery of a large buffer pool is slow).
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long, after a start command exited successfully, no mysqld may
/// hold the data directory before the restore fails, quoting the
/// command's output (instead of after [`START_TIMEOUT`]).
const NO_SERVER_AFTER_EXIT: Duration = Duration::from_secs(10);

/// What a restore needs.
pub struct Restore {
    /// The job's id (names its directories).
    pub job_id: String,
    /// The backup in the repository.
    pub backup_dir: BackupDir,
    /// The repository and cluster, for the binlog archive.
    pub repository: Arc<Repository>,
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
    /// Hosts whose archive streams must not be replayed (out of service:
    /// diverged, or restored to another point).
    pub exclude_hosts: Vec<String>,
    /// Whose archived binlogs may be replayed.
    pub writers: store::Writers,
    /// Bytes read so far.
    pub progress: Arc<AtomicU64>,
    /// The step it is on.
    pub phase: super::Phase,
}

/// What a restore writes into its job's marker before each step an agent
/// killed mid-restore must undo, or report, at its next start.
pub enum Journal<'a> {
    /// The backup is about to be made a data directory in the swap's
    /// staging directory: remove it.
    Staging(&'a Swap),
    /// mysqld is about to be shut down and the data directory's contents
    /// swapped: once mysqld is proven stopped, put the previous contents
    /// back (wherever the swap stopped) and start it again.
    Swapping(&'a ServerFiles),
    /// `start_command` is about to run on the restored data: nothing may
    /// be moved from under it any more.
    Starting,
}

/// The staging directory, removed however the restore ends: after a
/// swap it is gone already; a restore that failed before leaves no copy
/// of the backup in the data directory.
struct RemovedWhenDone(PathBuf);

impl Drop for RemovedWhenDone {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.0.display(), error = %e, "the restore's staging directory could not be removed");
        }
    }
}

/// The server's facts a restore depends on.
pub(super) struct Facts {
    datadir: PathBuf,
    /// Its files, by which its process is identified and proven stopped.
    pub(super) files: ServerFiles,
    version: String,
    page_size: u64,
}

pub(super) async fn facts(t: &MysqlTarget) -> Result<Facts, String> {
    let limit = t.connect_timeout + t.query_timeout;
    tokio::time::timeout(limit, async {
        let (mut conn, _) = observer::connect(t).await?;
        let rows: Vec<(String, String)> = conn
            .query(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('datadir', 'version', 'read_only', \
                 'innodb_page_size', 'innodb_data_home_dir', 'innodb_data_file_path', 'port', 'socket')",
            )
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.disconnect().await;
        let vars: std::collections::HashMap<String, String> = rows.into_iter().collect();
        let var = |name: &str| {
            vars.get(name)
                .cloned()
                .ok_or_else(|| format!("mysqld did not report @@{name}"))
        };
        if var("read_only")? != "ON" {
            return Err(
                "mysqld here is writable: a primary is never restored over (switch over first)"
                    .to_string(),
            );
        }
        let files = ServerFiles::from_variables(&vars, &t.address.host).ok_or(
            "mysqld's datadir, data file path or port cannot be read: its process cannot be identified",
        )?;
        Ok(Facts {
            datadir: PathBuf::from(var("datadir")?.trim_end_matches('/')),
            files,
            version: var("version")?,
            page_size: var("innodb_page_size")?
                .parse()
                .map_err(|_| "mysqld reported an innodb_page_size that is not a number")?,
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
fn fetch_binlogs(
    repo: &Repository,
    plan: &store::Plan,
    dir: &Path,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for ((_, name), chunks) in store::by_file(&plan.chunks) {
        let path = dir.join(&name);
        let mut out = std::fs::File::create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        for c in chunks {
            let stored = format!("{}/{}", plan.key, c.stored.name);
            let mut bytes = Vec::new();
            read_stored(
                repo,
                &stored,
                &c.stored,
                Arc::new(AtomicU64::new(0)),
                &mut bytes,
            )
            .map_err(|e| format!("archived binlog: {}", String::from(e)))?;
            if bytes.len() as u64 != c.end - c.start {
                return Err(format!(
                    "archived binlog {} holds {} bytes, its meta says {}",
                    repo.describe(&stored),
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

/// Stops a mysqld that may not answer: SIGTERM, then SIGKILL after
/// [`STOP_TIMEOUT`]; `Ok` only once it is proven gone (see
/// [`stopped_and_exited`]). Only the process holding the server's lock
/// file is signalled.
async fn terminate(files: &ServerFiles) -> Result<(), String> {
    let Some(server) = process::pin(files)? else {
        return process::wait_stopped(files, STOP_TIMEOUT)
            .await
            .map(drop)
            .map_err(|e| format!("mysqld cannot be proven stopped: {e}"));
    };
    let mut last = String::new();
    for signal in [Signal::TERM, Signal::KILL] {
        server.signal(signal)?;
        match stopped_and_exited(&server, files).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(format!("mysqld cannot be proven stopped: {last}"))
}

/// Shuts mysqld down and waits until its process is proven gone.
async fn stop_mysqld(t: &MysqlTarget, files: &ServerFiles) -> Result<(), String> {
    let server = process::pin(files)?.ok_or_else(|| {
        format!(
            "nothing holds {}'s lock although mysqld answers: the agent cannot tell when it has stopped",
            files.lock_file.display()
        )
    })?;

    let (mut conn, _) = observer::connect(t).await?;
    conn.query_drop("SHUTDOWN")
        .await
        .map_err(|e| format!("SHUTDOWN: {e}"))?;
    drop(conn);
    stopped_and_exited(&server, files).await.map_err(|e| {
        format!(
            "mysqld (pid {}) did not stop within {STOP_TIMEOUT:?}: {e}",
            server.pid()
        )
    })
}

/// The data directory is mysqld's no more: its process has exited (it
/// still deletes files after releasing InnoDB's lock), and
/// [`process::wait_stopped`] proves that nothing else serves the files.
async fn stopped_and_exited(
    server: &process::PinnedServer,
    files: &ServerFiles,
) -> Result<(), String> {
    server.wait_exit(STOP_TIMEOUT).await?;
    process::wait_stopped(files, STOP_TIMEOUT).await.map(drop)
}

/// Runs the start command in its own process group, reaped in the
/// background (its output in `work`), and waits until mysqld accepts
/// connections.
pub(super) async fn start_mysqld(
    start_command: &[String],
    target: &MysqlTarget,
    work: &Path,
    phase: &super::Phase,
    files: &ServerFiles,
) -> Result<Conn, String> {
    let (program, args) = start_command.split_first().ok_or("empty start_command")?;
    let log = work.join("start.log");
    let out =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
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
    let place = match &target.socket {
        Some(s) => s.display().to_string(),
        None => target.address.to_string(),
    };
    phase.set("waiting for mysqld to accept connections after start_command");
    info!(
        place,
        "restore: start_command ran; waiting for mysqld to accept connections"
    );
    let output = || match tail(&log, 5) {
        t if t.trim().is_empty() => "it printed nothing".to_string(),
        t => format!("its output: {t}"),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let mut exited_ok = false;
    // Since when, after the command exited successfully, no mysqld holds
    // the data directory's lock: a command that returns once mysqld runs
    // (systemctl start) or starts it in the background leaves one holding
    // it (crash recovery may take long, and is waited for); one that
    // exits 0 without starting anything leaves none, and fails the
    // restore soon instead of after START_TIMEOUT.
    let mut no_server_since: Option<Instant> = None;
    loop {
        if let Ok((conn, _)) = observer::connect(target).await {
            return Ok(conn);
        }
        let status = exited.lock().unwrap_or_else(|p| p.into_inner()).take();
        match status {
            Some(Ok(s)) if !s.success() => {
                return Err(format!(
                    "start_command {program} failed ({s}); {}",
                    output()
                ));
            }
            Some(Ok(_)) => exited_ok = true,
            Some(Err(e)) => return Err(format!("cannot wait for start_command {program}: {e}")),
            None => {}
        }
        if exited_ok && matches!(process::identify(files), Ok(None)) {
            let since = *no_server_since.get_or_insert_with(Instant::now);
            if since.elapsed() > NO_SERVER_AFTER_EXIT {
                return Err(format!(
                    "start_command {program} exited successfully but no mysqld runs on {} (nothing holds {}'s lock {NO_SERVER_AFTER_EXIT:?} later); {}",
                    files.datadir.display(),
                    files.lock_file.display(),
                    output()
                ));
            }
        } else {
            no_server_since = None;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "mysqld did not accept connections at {place} within {START_TIMEOUT:?} after start_command {program}; {}",
                output()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After the restored server did not start (`failure`): stops it for
/// good, puts the previous data back and starts mysqld on it; returns
/// the restore's error, saying where everything is.
async fn put_back(
    r: &Restore,
    files: &ServerFiles,
    swap: &Swap,
    journal: &mut impl FnMut(Journal<'_>) -> Result<(), String>,
    failure: String,
) -> String {
    // It may be running without answering: stopped for good first, or
    // the data would move from under it.
    if let Err(stop) = terminate(files).await {
        return format!(
            "the restored server did not start: {failure}; it cannot be stopped either ({stop}), so the restored data stays in {} and the previous data in {}",
            files.datadir.display(),
            swap.aside().display()
        );
    }
    let back = journal(Journal::Swapping(files)).and_then(|()| swap.put_back());
    let again = match back {
        Ok(kept) => {
            let kept = kept
                .map(|k| {
                    format!(
                        " (the restored copy is kept in {}: remove it once it is no longer needed)",
                        k.display()
                    )
                })
                .unwrap_or_default();
            match start_mysqld(&r.start_command, &r.target, &r.work, &r.phase, files).await {
                Ok(_) => format!("the previous data is back and mysqld runs on it{kept}"),
                Err(e) => format!("the previous data is back but mysqld did not start: {e}{kept}"),
            }
        }
        Err(e) => format!(
            "the previous data could not be put back: {e}; it is in {}",
            swap.aside().display()
        ),
    };
    format!("the restored server did not start: {failure}; {again}")
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

/// Where replay stops, as GTIDs (inclusive): for a GTID target the
/// target; for a time, the transactions after the backup before the first
/// one after it whose timestamp is at or after the time (file creation and
/// rotation events carry later times than the transactions a lagging
/// replica writes after them, so `--stop-datetime` would stop too early).
/// `None`: nothing to replay. A target the backup is already past is
/// refused.
fn stop_position(
    files: &[PathBuf],
    flavor: Flavor,
    start: &GtidState,
    to: &Target,
) -> Result<Option<GtidState>, String> {
    let mut stop = start.clone();
    match to {
        Target::Gtid(g) => {
            let past = match (start, g) {
                // holds something of the target's domains beyond it
                (GtidState::MariaDb(_), _) => !g.covers(start) && start.covers(g),
                // holds any transaction the target does not
                (GtidState::MySql(s), GtidState::MySql(t)) if !s.is_subset_of(t) => {
                    return Err(format!(
                        "the backup holds transactions the target {t} does not ({}): restore an older backup",
                        s.subtract(t)
                    ));
                }
                _ => false,
            };
            if past {
                return Err(format!(
                    "the backup is at GTID {start}, past the target {g}: restore an older backup"
                ));
            }
            stop = stop.merge(g);
        }
        Target::Time(_) | Target::Latest => {
            let t = match to {
                Target::Time(t) => *t,
                _ => i64::MAX,
            };
            let mut past: Option<String> = None;
            let mut done = false;
            for f in files {
                let file = std::fs::File::open(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                // Read to the end: a transaction the backup holds may come
                // after the stop (a replica logs in its own order), and if
                // it committed at or after the time the backup is too new.
                events::each_transaction(BufReader::new(file), flavor, |x| {
                    let new = !start.holds(&x.gtid);
                    let late = i64::from(x.ts) >= t;
                    if late && !new {
                        past = Some(x.gtid.to_string());
                        return false;
                    }
                    done |= late;
                    if new && !done {
                        stop.record(&x.gtid);
                    }
                    true
                })
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                if past.is_some() {
                    break;
                }
            }
            if let Some(gtid) = past {
                return Err(format!(
                    "the backup already holds transaction {gtid}, committed at or after the target time: restore an older backup"
                ));
            }
        }
    }
    Ok((stop != *start).then_some(stop))
}

/// The programs a replay runs: one decoding the binlogs from the backup's
/// position to the stop, and the client applying what it prints.
struct Replay {
    decode: Command,
    client: PathBuf,
}

impl Replay {
    /// MariaDB: `mariadb-binlog` between two GTID positions, with strict
    /// mode off for the decoder (the files may start before the backup).
    fn mariadb(start: &GtidState, stop: &GtidState) -> Result<Replay, String> {
        let mut decode = Command::new(tools::find("mariadb-binlog")?);
        decode
            .arg("--skip-gtid-strict-mode")
            .arg(format!("--start-position={start}"))
            .arg(format!("--stop-position={stop}"));
        Ok(Replay {
            decode,
            client: tools::find("mariadb")?,
        })
    }

    /// MySQL: `mysqlbinlog` printing exactly the transactions the backup
    /// lacks up to the stop, with their GTIDs (so the restored server's
    /// set ends at the stop); the server's own tools, from its basedir.
    fn mysql(
        basedir: &Path,
        version: &str,
        start: &GtidSet,
        stop: &GtidSet,
    ) -> Result<Replay, String> {
        // of the server's version: another (MariaDB's mysqlbinlog in
        // PATH, say) may misread the events
        let tool = |name: &str| {
            let path = tools::find_beside(basedir, name)?;
            tools::check_matches(&tools::version(&path)?, version)?;
            Ok::<_, String>(path)
        };
        let mut decode = Command::new(tool("mysqlbinlog")?);
        decode.arg(format!("--include-gtids={}", stop.subtract(start)));
        Ok(Replay {
            decode,
            client: tool("mysql")?,
        })
    }
}

/// Replays `files` through the client, with the agent's credentials in
/// `defaults_file` and logs in `work`.
fn replay_with(
    work: &Path,
    defaults_file: &Path,
    files: &[PathBuf],
    replay: Replay,
) -> Result<(), String> {
    let Replay { mut decode, client } = replay;
    let decoder = decode.get_program().to_string_lossy().to_string();
    let decode_log = work.join("binlog-decoder.log");
    let apply_log = work.join("replay.log");
    let mut decoding = decode
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::File::create(&decode_log)
                .map_err(|e| format!("cannot create {}: {e}", decode_log.display()))?,
        )
        .spawn()
        .map_err(|e| format!("cannot run {decoder}: {e}"))?;
    let events = decoding.stdout.take().expect("piped");
    let apply = Command::new(&client)
        .arg(format!("--defaults-extra-file={}", defaults_file.display()))
        .arg("--binary-mode")
        .stdin(events)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&apply_log)
                .map_err(|e| format!("cannot create {}: {e}", apply_log.display()))?,
        )
        .status()
        .map_err(|e| format!("cannot run {}: {e}", client.display()))?;
    let decoded = decoding.wait().map_err(|e| format!("{decoder}: {e}"))?;
    // the client first: when it fails, the decoder dies of SIGPIPE
    if !apply.success() {
        return Err(format!(
            "replaying the binlogs failed ({apply}): {}",
            tail(&apply_log, 3)
        ));
    }
    if !decoded.success() {
        return Err(format!(
            "{decoder} failed ({decoded}): {}",
            tail(&decode_log, 3)
        ));
    }
    Ok(())
}

/// Runs the restore; returns a one-line summary. `journal` is told of each
/// step before it is taken (see [`Journal`]); when it cannot record one,
/// the step is not taken.
pub async fn restore(
    r: Restore,
    mut journal: impl FnMut(Journal<'_>) -> Result<(), String>,
) -> Result<String, String> {
    let started = Instant::now();
    let f = facts(&r.target).await?;
    // refused before anything is built: such a server cannot be stopped
    process::refuse_socket_activated(&f.files)?;
    let manifest = Manifest::read_usable(&r.backup_dir)?;
    if major_minor(&manifest.server_version) != major_minor(&f.version) {
        return Err(format!(
            "the backup is of {} and this server runs {}: restore onto the same major version",
            manifest.server_version, f.version
        ));
    }
    let flavor = if manifest.flavor == Flavor::MySql.as_str() {
        Flavor::MySql
    } else {
        Flavor::MariaDb
    };
    let mysql = flavor == Flavor::MySql;
    let start = match flavor {
        Flavor::MySql => GtidSet::parse(&manifest.end_gtid)
            .map(GtidState::MySql)
            .map_err(|e| format!("the backup's GTID set: {e}"))?,
        Flavor::MariaDb => GtidState::MariaDb(
            dbfleet_common::gtid::Position::parse(&manifest.end_gtid)
                .map_err(|e| format!("the backup's GTID position: {e}"))?,
        ),
    };
    if let Some(Target::Gtid(g)) = &r.to
        && !g.is_empty()
        && g.is_mysql() != mysql
    {
        return Err(match flavor {
            Flavor::MySql => format!(
                "{g} is a MariaDB GTID position, but backup {} is of MySQL: give a MySQL GTID set (server_uuid:1-42)",
                manifest.id
            ),
            Flavor::MariaDb => format!(
                "{g} is a MySQL GTID set, but backup {} is of MariaDB: give a MariaDB GTID position (domain-server-seq, e.g. 0-1-42)",
                manifest.id
            ),
        });
    }
    let datadir_meta =
        std::fs::metadata(&f.datadir).map_err(|e| process::cannot_read(&f.datadir, &e))?;
    std::fs::create_dir_all(&r.work)
        .map_err(|e| format!("cannot create {}: {e}", r.work.display()))?;
    // 1. the binlogs and where replay stops, before anything is touched
    let binlogs = match &r.to {
        Some(target) => {
            let streams: Vec<store::Stream> = store::read_streams(&r.repository, &r.cluster)
                .map_err(|e| format!("cannot read the binlog archive: {e}"))?
                .into_iter()
                .filter(|s| {
                    !r.exclude_hosts
                        .iter()
                        .any(|h| s.name.starts_with(&format!("{h}-")))
                })
                .collect();
            let (streams, unproven) = store::proven(streams, &r.writers);
            let planned = store::plan(&streams, &start, target).map_err(|e| {
                if unproven.is_empty() {
                    e
                } else {
                    format!(
                        "{e}; left out as not proven written by an admitted member: {}",
                        unproven.join("; ")
                    )
                }
            });
            // A rebuild replays what the archive holds; without one the
            // primary's binlogs cover the way from the backup.
            match (planned, target) {
                (Ok(plan), _) => {
                    r.phase.set("fetching archived binlogs");
                    let dir = r.work.join("binlogs");
                    let (target, start2, repo) =
                        (target.clone(), start.clone(), r.repository.clone());
                    let fetched = tokio::task::spawn_blocking(move || {
                        let files = fetch_binlogs(&repo, &plan, &dir)?;
                        let stop = stop_position(&files, flavor, &start2, &target)?;
                        Ok::<_, String>((plan, files, stop))
                    })
                    .await
                    .map_err(|e| format!("fetch task: {e}"))??;
                    Some(fetched)
                }
                (Err(e), Target::Latest) => {
                    warn!(
                        error = e,
                        "no archived binlogs to replay after the backup; the rejoin takes everything from the primary"
                    );
                    None
                }
                (Err(e), _) => return Err(e),
            }
        }
        None => None,
    };
    // 2. the backup, made a data directory inside the current one
    let swap = Swap::new(&f.datadir, &r.job_id, flavor);
    let staging = swap.staging().to_path_buf();
    journal(Journal::Staging(&swap))?;
    let _ = std::fs::remove_dir_all(&staging);
    let _staging = RemovedWhenDone(staging.clone());
    let program = super::verify::program_for(&manifest, &r.target).await?;
    datadir::build(datadir::Build {
        backup_dir: r.backup_dir.clone(),
        data: staging.clone(),
        work: r.work.clone(),
        server_options: vec![format!("--innodb-page-size={}", f.page_size)],
        program,
        progress: r.progress.clone(),
        phase: r.phase.clone(),
    })
    .await?;
    if mysql {
        persist_read_only(&staging)?;
    }
    chown_tree(&staging, datadir_meta.uid(), datadir_meta.gid())
        .map_err(|e| format!("cannot give {} mysqld's owner: {e}", staging.display()))?;
    // 3. the swap; the server may have been promoted meanwhile
    facts(&r.target).await?;
    info!(datadir = %f.datadir.display(), "restore: stopping mysqld");
    r.phase.set("swapping the data directory");
    journal(Journal::Swapping(&f.files))?;
    stop_mysqld(&r.target, &f.files).await?;
    if let Err(e) = swap.swap_in() {
        let again =
            match start_mysqld(&r.start_command, &r.target, &r.work, &r.phase, &f.files).await {
                Ok(_) => "mysqld runs on the previous data".to_string(),
                Err(e2) => format!("mysqld did not start again: {e2}"),
            };
        return Err(format!("{e}; {again}"));
    }
    r.phase.set("starting mysqld");
    let conn = match journal(Journal::Starting) {
        Ok(()) => start_mysqld(&r.start_command, &r.target, &r.work, &r.phase, &f.files).await,
        Err(e) => Err(e),
    };
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => return Err(put_back(&r, &f.files, &swap, &mut journal, e).await),
    };
    // A server configured to start writable accepted writes between its
    // start and the statements below: say so, with the fix.
    // (best effort: the statements below fail the restore on their own)
    let started_writable = conn
        .query_first::<u8, _>("SELECT @@read_only")
        .await
        .ok()
        .flatten()
        == Some(0);
    if started_writable {
        warn!(
            "the restored mysqld started writable; add read_only = ON to its configuration so that a restored or restarted server never accepts writes before the coordinator decides"
        );
    }
    if mysql {
        // 4. MySQL: the copy holds its GTID set (mysql.gtid_executed) and
        // no binlog; it stays read-only across restarts and replicates
        // from nobody until the coordinator repoints it.
        keep_apart(&mut conn, "restored server").await?;
        let found = gtid_executed(&mut conn).await?;
        super::clone::same_gtids(&found, &manifest.end_gtid)?;
        if let Err(e) = swap.discard_previous() {
            warn!(error = e, "the previous data could not be removed");
        }
        let mut summary = format!(
            "restored backup {} at GTID set {}",
            manifest.id,
            one_line(&manifest.end_gtid)
        );
        match binlogs {
            Some((plan, files, Some(GtidState::MySql(stop)))) => {
                let replayed_at = Instant::now();
                r.phase.set("replaying binlogs");
                replay_into_mysql(&r, &mut conn, files.clone(), &start, stop).await?;
                summary.push_str(&format!(
                    "; replayed {} binlog file(s) of stream {} in {:.1}s to GTID set {}",
                    files.len(),
                    plan.stream,
                    replayed_at.elapsed().as_secs_f64(),
                    one_line(&gtid_executed(&mut conn).await?)
                ));
            }
            Some(_) => summary.push_str("; no archived transaction to replay after it"),
            None => {}
        }
        let _ = conn.disconnect().await;
        return Ok(completed(summary, started_writable, started));
    }
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
    if let Err(e) = swap.discard_previous() {
        warn!(error = e, "the previous data could not be removed");
    }
    let mut summary = format!(
        "restored backup {} at GTID {}",
        manifest.id,
        one_line(&manifest.end_gtid)
    );
    // 5. the point in time
    if let Some((plan, files, Some(stop))) = binlogs {
        let replayed_at = Instant::now();
        r.phase.set("replaying binlogs");
        {
            let programs = Replay::mariadb(&start, &stop)?;
            let r = Arc::new(r);
            let (rr, files2) = (r.clone(), files.clone());
            tokio::task::spawn_blocking(move || {
                replay_with(&rr.work, &rr.defaults_file, &files2, programs)
            })
            .await
            .map_err(|e| format!("replay task: {e}"))??;
        }
        let now: String = conn
            .query_first("SELECT @@gtid_binlog_pos")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        conn.query_drop(format!("SET GLOBAL gtid_slave_pos = '{now}'"))
            .await
            .map_err(|e| format!("restored server: setting gtid_slave_pos: {e}"))?;
        summary.push_str(&format!(
            "; replayed {} binlog file(s) of stream {} in {:.1}s to GTID {now}",
            files.len(),
            plan.stream,
            replayed_at.elapsed().as_secs_f64()
        ));
    } else if r.to.is_some() {
        summary.push_str("; no archived transaction to replay after it");
    }
    let _ = conn.disconnect().await;
    Ok(completed(summary, started_writable, started))
}

/// Keeps a MySQL server whose data was replaced (`what`, for errors)
/// read-only across restarts and replicating from nobody until the
/// coordinator repoints it (a copy of a replica carries its replication
/// settings).
pub(super) async fn keep_apart(conn: &mut Conn, what: &str) -> Result<(), String> {
    for sql in [
        "SET PERSIST super_read_only = ON",
        "STOP REPLICA",
        "RESET REPLICA ALL",
    ] {
        conn.query_drop(sql)
            .await
            .map_err(|e| format!("{what}: {sql}: {e}"))?;
    }
    Ok(())
}

/// A MySQL server's `gtid_executed`, after its data was replaced.
pub(super) async fn gtid_executed(conn: &mut Conn) -> Result<String, String> {
    conn.query_first::<String, _>("SELECT @@GLOBAL.gtid_executed")
        .await
        .map_err(|e| format!("reading the server's GTID set after its data was replaced: {e}"))
        .map(Option::unwrap_or_default)
}

/// Replays the archived `files` into the restored MySQL server from the
/// backup's set `start` to `stop`. `super_read_only` stops every client,
/// so it is lifted for the replay while `read_only` stays on: only
/// accounts with `CONNECTION_ADMIN` (the agent's, a DBA's) can write
/// meanwhile. It is set again however the replay ends, and stays
/// persisted throughout, so a restart in between starts read-only.
async fn replay_into_mysql(
    r: &Restore,
    conn: &mut Conn,
    files: Vec<PathBuf>,
    start: &GtidState,
    stop: GtidSet,
) -> Result<(), String> {
    let GtidState::MySql(start) = start else {
        return Err("a MySQL restore from a backup with a MariaDB position".into());
    };
    let (basedir, version): (String, String) = conn
        .query_first("SELECT @@basedir, @@version")
        .await
        .map_err(|e| format!("restored server: asking for its basedir: {e}"))?
        .unwrap_or_default();
    let programs = Replay::mysql(Path::new(&basedir), &version, start, &stop)?;
    conn.query_drop("SET GLOBAL super_read_only = OFF")
        .await
        .map_err(|e| format!("restored server: lifting super_read_only for the replay: {e}"))?;
    let (work, defaults_file) = (r.work.clone(), r.defaults_file.clone());
    let replayed =
        tokio::task::spawn_blocking(move || replay_with(&work, &defaults_file, &files, programs))
            .await
            .map_err(|e| format!("replay task: {e}"))
            .and_then(|r| r);
    // on a fresh connection: this one sat idle through the replay
    let fenced = super::rebuild::fence_again(&r.target).await;
    if !fenced.is_empty() {
        return Err(format!(
            "after the replay{}{fenced}",
            replayed
                .err()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    replayed?;
    let found = gtid_executed(conn).await?;
    match GtidSet::parse(&found) {
        Ok(set) if set == stop => Ok(()),
        _ => Err(format!(
            "after the replay the server holds GTID set {}, not {stop}, where the replay was to stop; see {}",
            one_line(&found),
            r.work.join("replay.log").display()
        )),
    }
}

/// A GTID state on one line (MySQL breaks multi-source sets).
fn one_line(gtids: &str) -> String {
    gtids.replace('\n', "")
}

/// Writes `super_read_only = ON` into a MySQL copy's `mysqld-auto.cnf`
/// before it is swapped in: the previous data directory's persisted
/// settings go aside with it, and the restored server must start
/// read-only whatever its my.cnf says (persisted settings outrank it).
fn persist_read_only(data: &Path) -> Result<(), String> {
    let path = data.join("mysqld-auto.cnf");
    let mut json: serde_json::Value = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not MySQL's JSON: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({"Version": 2}),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    json["mysql_dynamic_variables"]["super_read_only"] = serde_json::json!({
        "Value": "ON",
        "Metadata": {
            "Timestamp": dbfleet_common::clock::unix_ms() * 1000,
            "User": "dbfleet",
            "Host": "localhost"
        }
    });
    let bytes = serde_json::to_vec(&json).map_err(|e| e.to_string())?;
    dbfleet_common::durable::write_atomic(&path, &bytes, 0o640)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The restore's closing summary.
fn completed(mut summary: String, started_writable: bool, started: Instant) -> String {
    if started_writable {
        summary.push_str("; mysqld started writable (set read_only = ON in its configuration)");
    }
    summary.push_str(&format!(
        "; read-only ({:.1}s)",
        started.elapsed().as_secs_f64()
    ));
    info!(summary, "restore completed");
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` as binlog file `name` in a directory of the test's.
    fn binlog_file(test: &str, bytes: &[u8]) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("dbfleet-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("b.000001");
        std::fs::write(&file, bytes).unwrap();
        (dir, file)
    }

    fn g(text: &str) -> GtidState {
        GtidState::parse(text).unwrap()
    }

    #[test]
    fn a_time_stops_before_the_first_later_transaction_not_at_a_later_file_start() {
        use crate::binlog_archive::events::testing::{event, gtid};
        use crate::binlog_archive::events::{GTID_EVENT, MAGIC};
        // a replica catching up: its file was created (ts 200) after the
        // transactions it then logged (ts 100, 101), then one at 300
        let mut bytes = MAGIC.to_vec();
        bytes.extend(event(200, 15, 3, &[0; 40]));
        for (ts, seq) in [(99, 4), (100, 5), (101, 6), (300, 7)] {
            bytes.extend(event(ts, GTID_EVENT, 1, &gtid(seq, 0)));
        }
        let (dir, file) = binlog_file("stop", &bytes);
        let files = [file];
        let start = g("0-1-4");
        let stop = |to| stop_position(&files, Flavor::MariaDb, &start, &to);
        assert_eq!(
            stop(Target::Time(150)).unwrap().unwrap().to_string(),
            "0-1-6"
        );
        // nothing after the backup is before 100: nothing to replay
        assert_eq!(stop(Target::Time(100)).unwrap(), None);
        // the backup itself holds a transaction at 99: too new a backup
        let e = stop(Target::Time(99)).unwrap_err();
        assert!(e.contains("already holds transaction 0-1-4"), "{e}");
        let e = stop(Target::Gtid(g("0-1-3"))).unwrap_err();
        assert!(e.contains("past the target"), "{e}");
        assert_eq!(stop(Target::Gtid(g("0-1-6"))).unwrap().unwrap(), g("0-1-6"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_mysql_stop_is_the_backups_set_and_what_came_before_the_time() {
        use crate::binlog_archive::events::testing::{event, mysql_gtid};
        use crate::binlog_archive::events::{MAGIC, MYSQL_GTID_EVENT};
        const U: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let set = |t: &str| g(&t.replace('U', U));
        // U:3 was applied before U:2 (parallel appliers): the backup holds
        // U:1 and U:3, the file U:2 at 100, U:3 at 100, U:4 at 101, U:5 at 300
        let mut bytes = MAGIC.to_vec();
        bytes.extend(event(200, 15, 1, &[0; 40]));
        for (ts, n) in [(100, 3), (100, 2), (101, 4), (300, 5)] {
            bytes.extend(event(ts, MYSQL_GTID_EVENT, 1, &mysql_gtid(U, n)));
        }
        let (dir, file) = binlog_file("mysql-stop", &bytes);
        let files = [file];
        let start = set("U:1:3");
        let stop = |to| stop_position(&files, Flavor::MySql, &start, &to);
        assert_eq!(stop(Target::Time(150)).unwrap().unwrap(), set("U:1-4"));
        // U:3, which the backup holds, committed at 100
        let e = stop(Target::Time(100)).unwrap_err();
        assert!(
            e.contains(&format!("already holds transaction {U}:3")),
            "{e}"
        );
        // a target lacking one of the backup's transactions
        let e = stop(Target::Gtid(set("U:1-2"))).unwrap_err();
        assert!(
            e.contains("holds transactions the target") && e.contains(&format!("{U}:3")),
            "{e}"
        );
        assert_eq!(
            stop(Target::Gtid(set("U:1-3:5"))).unwrap().unwrap(),
            set("U:1-3:5")
        );
        assert_eq!(stop(Target::Gtid(set("U:1:3"))).unwrap(), None);
        // the backup's U:1, logged after the stop at 301: too new a backup,
        // however late in the file it comes
        bytes.extend(event(301, MYSQL_GTID_EVENT, 1, &mysql_gtid(U, 1)));
        std::fs::write(&files[0], &bytes).unwrap();
        let e = stop(Target::Time(150)).unwrap_err();
        assert!(
            e.contains(&format!("already holds transaction {U}:1")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("10.11.19-MariaDB-0+deb12u1-log"), "10.11");
        assert_ne!(major_minor("10.6.1-MariaDB"), major_minor("10.11.2"));
    }
}
