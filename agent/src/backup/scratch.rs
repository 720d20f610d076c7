//! A private mysqld on a directory of the agent's: verification checks a
//! restored backup with one, and a logical backup is loaded into one to
//! become a data directory. It listens only on a Unix socket in a
//! directory of mode 0700, never on the network, and is killed when
//! dropped.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql_async::{Conn, OptsBuilder};
use tracing::warn;

use super::repo::tail;
use super::tools;

/// How long a scratch server may take to start and to stop.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Which server program a scratch server runs: the data decides (a MySQL
/// data directory needs MySQL's mysqld, of the same version as the server
/// it came from, so the agent runs its own server's program).
#[derive(Debug, Clone)]
pub enum ServerProgram {
    /// `mariadbd`, found like the other MariaDB tools.
    MariaDb,
    /// MySQL's `mysqld` and the options its data needs: where its own
    /// files are (`--basedir`, `--plugin-dir`, ...) and its redo capacity,
    /// as the live server reports them.
    MySql {
        /// The program.
        mysqld: PathBuf,
        /// The server's `@@basedir`, where its client tools are.
        basedir: PathBuf,
        /// Its options.
        options: Vec<String>,
    },
}

impl ServerProgram {
    /// The command-line client of the same server: `mariadb`, or MySQL's
    /// own `mysql` from its basedir.
    pub fn client(&self) -> Result<PathBuf, String> {
        match self {
            ServerProgram::MariaDb => tools::find("mariadb"),
            ServerProgram::MySql { basedir, .. } => tools::find_beside(basedir, "mysql"),
        }
    }

    /// Creates the system tables of a new server in `data` with a
    /// password-less `root@localhost` (reachable only through the scratch
    /// server's private socket; a loaded dump's grant tables replace
    /// it): `mariadb-install-db`, or MySQL's `mysqld --initialize-insecure`
    /// without the TLS files it generates (the restored server makes its
    /// own at its first start, as after a CLONE).
    pub fn initialize(&self, data: &Path, extra: &[String], log: &Path) -> Result<(), String> {
        let ServerProgram::MySql {
            mysqld, options, ..
        } = self
        else {
            return install_db(data, extra, log);
        };
        let mut cmd = Command::new(mysqld);
        cmd.arg("--no-defaults")
            .args(options)
            .arg("--initialize-insecure")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--log-error={}", log.display()))
            .args(extra);
        initialize_with(cmd, "mysqld --initialize-insecure", data, log)?;
        for entry in std::fs::read_dir(data)
            .map_err(|e| format!("cannot read {}: {e}", data.display()))?
            .flatten()
        {
            if entry.path().extension().is_some_and(|x| x == "pem") {
                std::fs::remove_file(entry.path())
                    .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
            }
        }
        Ok(())
    }
}

/// How to start a scratch server.
pub struct ScratchOptions {
    /// The server program.
    pub program: ServerProgram,
    /// The option file the data needs (a physical backup's
    /// `backup-my.cnf`, which carries the source's InnoDB layout); `None`:
    /// no option file at all.
    pub defaults_file: Option<PathBuf>,
    /// Without grant tables anyone on the socket is root: for checking a
    /// restored server, whose accounts are the source's.
    pub skip_grant_tables: bool,
    /// More server options (e.g. `--innodb-page-size`).
    pub extra: Vec<String>,
}

/// A running scratch mysqld on `data`.
pub struct ScratchServer {
    child: Child,
    /// The socket's private directory.
    socket_dir: PathBuf,
    socket: PathBuf,
    error_log: PathBuf,
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

/// Kills a scratch server a killed agent left running on a data
/// directory under `dir` (at most three levels down), and waits until it
/// has let go, so the directory can be removed.
///
/// The server is found through the POSIX lock InnoDB holds on `ibdata1`
/// while it runs: the kernel names the holder in our own pid namespace,
/// so neither a pid file (whose pid may have been reused) nor `/proc`
/// (which may show another namespace) is trusted.
pub fn kill_left_running(dir: &Path) {
    for data in data_dirs(dir, 3) {
        // Only the mysqld holding this scratch data directory, pinned as
        // fencing pins it (see `mysql::process::signal_server`).
        let files = crate::mysql::process::ServerFiles {
            lock_file: data.join("ibdata1"),
            datadir: data.clone(),
            address: String::new(),
            socket: None,
        };
        match crate::mysql::process::signal_server(&files, rustix::process::Signal::KILL) {
            Ok(Some(pid)) => {
                warn!(pid, data = %data.display(), "killed a scratch mysqld a killed agent left running");
            }
            Ok(None) => continue,
            Err(e) => {
                warn!(data = %data.display(), error = e, "cannot kill what holds a scratch data directory");
                continue;
            }
        }
        let started = Instant::now();
        while lock_holder(&data.join("ibdata1")).is_some() && started.elapsed() < TIMEOUT {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `dir` and the directories below it, `depth` levels down, that hold an
/// `ibdata1`.
fn data_dirs(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if dir.join("ibdata1").is_file() {
        found.push(dir.to_path_buf());
    }
    if depth > 0
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                found.extend(data_dirs(&e.path(), depth - 1));
            }
        }
    }
    found
}

/// The pid locking `file`; none when nobody does or it cannot be told.
fn lock_holder(file: &Path) -> Option<i32> {
    crate::mysql::process::lock_holder(file).ok().flatten()
}

/// Whether the agent runs as root (then mysqld must be told it may).
fn as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Creates the system tables of a new server in `data`, with a
/// password-less `root@localhost` (reachable only through the scratch
/// server's private socket, and dropped before the data is used).
fn install_db(data: &Path, extra: &[String], log: &Path) -> Result<(), String> {
    let mut cmd = Command::new(tools::find("mariadb-install-db")?);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .args(extra);
    initialize_with(cmd, "mariadb-install-db", data, log)
}

/// Runs `cmd` (`what`, a server's initialisation) into `data`, as root
/// when the agent is root, its output in `log`. The tools create the
/// directory but not its parents, and take an empty one as it is.
fn initialize_with(mut cmd: Command, what: &str, data: &Path, log: &Path) -> Result<(), String> {
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let out =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    if as_root() {
        cmd.arg("--user=root");
    }
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !status.success() {
        return Err(format!("{what} failed ({status}): {}", tail(log, 3)));
    }
    Ok(())
}

/// What a server's error log says went wrong: its error lines (the
/// first three: the cause comes before the "Aborting" that follows it),
/// or its last lines when it names no error.
fn server_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("[ERROR]") && !l.contains("Aborting"))
        .take(3)
        .collect();
    if errors.is_empty() {
        tail(log, 3)
    } else {
        errors.join(" | ")
    }
}

impl ScratchServer {
    /// Starts mysqld on `data`; its pid file and error log go into `dir`.
    pub fn start(data: &Path, dir: &Path, o: &ScratchOptions) -> Result<ScratchServer, String> {
        let mysqld = match &o.program {
            ServerProgram::MariaDb => tools::find("mariadbd")?,
            ServerProgram::MySql { mysqld, .. } => mysqld.clone(),
        };
        // A Unix socket path must stay under 108 bytes; scratch paths can
        // be longer.
        let socket_dir = std::env::temp_dir().join(format!(
            "dbfleet-scratch-{}-{}",
            std::process::id(),
            dbfleet_common::clock::unix_ms()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&socket_dir)
            .map_err(|e| format!("cannot create {}: {e}", socket_dir.display()))?;
        let socket = socket_dir.join("mysqld.sock");
        let error_log = dir.join("mysqld.err");
        let mut cmd = Command::new(&mysqld);
        match &o.defaults_file {
            Some(f) => cmd.arg(format!("--defaults-file={}", f.display())),
            None => cmd.arg("--no-defaults"),
        };
        cmd.arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", error_log.display()))
            .arg("--skip-networking")
            .arg("--skip-log-bin")
            .arg("--innodb-buffer-pool-size=256M");
        match &o.program {
            ServerProgram::MariaDb => {
                cmd.arg("--skip-slave-start");
            }
            // No X Protocol port, no import/export outside its own
            // directory (the packaged default directory may not exist).
            ServerProgram::MySql { options, .. } => {
                cmd.args(options)
                    .arg("--skip-replica-start")
                    .arg("--mysqlx=OFF")
                    .arg("--performance-schema=OFF")
                    .arg(format!("--secure-file-priv={}", dir.display()));
            }
        }
        cmd.args(&o.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if o.skip_grant_tables {
            cmd.arg("--skip-grant-tables");
        }
        if as_root() {
            cmd.arg("--user=root");
        }
        let child = cmd.spawn().map_err(|e| {
            let _ = std::fs::remove_dir_all(&socket_dir);
            format!("cannot run {}: {e}", mysqld.display())
        })?;
        Ok(ScratchServer {
            child,
            socket_dir,
            socket,
            error_log,
        })
    }

    /// The server's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A connection as `user` (no password), once the server accepts one.
    pub async fn connect(&mut self, user: &str) -> Result<Conn, String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the scratch server would not start ({status}): {}",
                    server_errors(&self.error_log)
                ));
            }
            if self.socket.exists() {
                let opts = OptsBuilder::default()
                    .socket(Some(self.socket.to_string_lossy().into_owned()))
                    .user(Some(user))
                    .prefer_socket(true);
                match Conn::new(opts).await {
                    Ok(c) => return Ok(c),
                    Err(mysql_async::Error::Server(e)) => {
                        return Err(format!("the scratch server refused {user}: {e}"));
                    }
                    Err(_) => {}
                }
            }
            if started.elapsed() > TIMEOUT {
                return Err(format!(
                    "the scratch server did not accept connections within {TIMEOUT:?}: {}",
                    server_errors(&self.error_log)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Shuts the server down cleanly (SIGTERM), so its data directory can
    /// be used by another server, and waits for it.
    pub async fn stop(mut self) -> Result<(), String> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "the scratch server did not shut down cleanly ({status}): {}",
                        server_errors(&self.error_log)
                    ));
                }
                Ok(None) if started.elapsed() < TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    return Err(format!(
                        "the scratch server did not stop within {TIMEOUT:?}"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real scratch server whose agent died (its handle forgotten, so
    /// nothing stops it) is killed by the next start's clean-up; a live
    /// process the leftover pid file names, but which holds no lock, is
    /// left alone.
    #[tokio::test]
    async fn a_left_running_scratch_server_is_killed_and_a_reused_pid_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("job").join("data");
        install_db(&data, &[], &dir.path().join("install.log")).unwrap();
        let mut server = ScratchServer::start(
            &data,
            &dir.path().join("job"),
            &ScratchOptions {
                program: ServerProgram::MariaDb,
                defaults_file: None,
                skip_grant_tables: true,
                extra: Vec::new(),
            },
        )
        .unwrap();
        drop(server.connect("root").await.unwrap());
        let mysqld = server.child.id() as i32;
        assert_eq!(lock_holder(&data.join("ibdata1")), Some(mysqld));
        let socket_dir = server.socket_dir.clone();
        std::mem::forget(server);

        let mut stranger = Command::new("sleep").arg("600").spawn().unwrap();
        std::fs::write(
            dir.path().join("job").join("mysqld.pid"),
            stranger.id().to_string(),
        )
        .unwrap();

        kill_left_running(dir.path());
        assert_eq!(lock_holder(&data.join("ibdata1")), None);
        assert!(
            std::fs::read_to_string(format!("/proc/{mysqld}/stat")).map_or(true, |stat| stat
                .rsplit_once(") ")
                .is_some_and(|(_, s)| s.starts_with('Z'))),
            "the scratch mysqld is gone"
        );
        assert_eq!(
            stranger.try_wait().unwrap(),
            None,
            "the process the pid file names, holding no lock, still runs"
        );
        stranger.kill().unwrap();
        stranger.wait().unwrap();
        let _ = std::fs::remove_dir_all(socket_dir);
    }
}
