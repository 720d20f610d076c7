//! mysqld as a process, identified by the kernel rather than by a pid
//! file: fencing's proof that the server is stopped, the only process a
//! fence may kill, and the restore's wait for the server it shut down.
//!
//! A pid file proves nothing: it may be unreadable by the agent's user,
//! missing after a typo, stale after a crash, or name a recycled pid of
//! another program. InnoDB holds a POSIX write lock on its first system
//! tablespace file for as long as mysqld runs, and the kernel names the
//! holder exactly (`F_GETLK`), in any pid namespace, whoever owns the
//! process. So the server's files as the server itself reported them while
//! the agent was connected ([`ServerFiles`]) identify its process, and the
//! lock released plus the server's address and socket refusing connections
//! is positive evidence that it stopped. Every error along the way (an
//! unreadable file, an unexpected answer) means "cannot prove", never
//! "stopped".

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The files and endpoints of the mysqld the agent observed, from its own
/// variables while connected (`@@datadir`, `@@innodb_data_home_dir`,
/// `@@innodb_data_file_path`, `@@port`, `@@socket`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFiles {
    /// The data directory.
    pub datadir: PathBuf,
    /// InnoDB's first system tablespace file, which mysqld keeps locked.
    pub lock_file: PathBuf,
    /// `host:port`: the configured address's host with the server's port.
    pub address: String,
    /// The server's Unix socket, if it has one.
    pub socket: Option<PathBuf>,
}

impl ServerFiles {
    /// The server's files from its global variables; `host` is where it
    /// listens (the agent's configured address). `None` when a variable is
    /// missing (then nothing can be proven about its process).
    pub fn from_variables(vars: &HashMap<String, String>, host: &str) -> Option<ServerFiles> {
        let datadir = PathBuf::from(vars.get("datadir").filter(|d| !d.is_empty())?);
        let home = vars
            .get("innodb_data_home_dir")
            .filter(|d| !d.is_empty())
            .map_or_else(|| datadir.clone(), |h| datadir.join(h));
        let first = vars
            .get("innodb_data_file_path")
            .map(String::as_str)
            .unwrap_or("ibdata1:12M:autoextend")
            .split(';')
            .next()?
            .split(':')
            .next()
            .filter(|f| !f.is_empty())?;
        let port: u16 = vars.get("port")?.parse().ok().filter(|p| *p > 0)?;
        let socket = vars
            .get("socket")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Some(ServerFiles {
            lock_file: home.join(first),
            datadir,
            address,
            socket,
        })
    }
}

/// The user the agent runs as, for messages that name a fix.
pub fn agent_user() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}

/// "cannot read PATH: ERROR", with the fix when the agent's user lacks
/// the permission: mysqld's files are its user's, and so must the agent be.
pub fn cannot_read(path: &Path, e: &std::io::Error) -> String {
    let fix = if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "; the agent runs as {}: run it as the user mysqld runs as (`mysql`), as the shipped unit does (docs/deploy.md)",
            agent_user()
        )
    } else {
        String::new()
    };
    format!("cannot read {}: {e}{fix}", path.display())
}

/// The pid holding the POSIX lock on `file`, `None` when nobody holds it.
/// An error (the file cannot be opened, `fcntl` fails) says so with the
/// fix: it proves nothing either way.
pub fn lock_holder(file: &Path) -> Result<Option<i32>, String> {
    use nix::fcntl::{FcntlArg, fcntl};
    let f = std::fs::File::open(file).map_err(|e| cannot_read(file, &e))?;
    // Only a regular file is ever locked by mysqld: a directory (or a
    // device) would answer "unlocked" and prove nothing.
    let kind = f
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if !kind.is_file() {
        return Err(format!(
            "{} is not a regular file, so it is not mysqld's data file",
            file.display()
        ));
    }
    let mut lock = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(&f, FcntlArg::F_GETLK(&mut lock))
        .map_err(|e| format!("cannot ask who locks {}: {e}", file.display()))?;
    if lock.l_type == nix::libc::F_UNLCK as i16 {
        return Ok(None);
    }
    if lock.l_pid <= 1 {
        // A lock held from another pid namespace, or an answer that names
        // no process the agent could signal.
        return Err(format!(
            "{} is locked by a process the agent cannot name (pid {})",
            file.display(),
            lock.l_pid
        ));
    }
    Ok(Some(lock.l_pid))
}

/// The command name of `pid` (`/proc/PID/comm`, readable by every user).
fn command_name(pid: i32) -> Result<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .map_err(|e| format!("cannot read the command name of pid {pid}: {e}"))
}

/// Whether a command name is a MySQL or MariaDB server's.
fn is_server_command(name: &str) -> bool {
    name.starts_with("mysqld") || name.starts_with("mariadbd")
}

/// Whether process `pid` was started by socket activation: systemd hands
/// it its listening sockets in `LISTEN_FDS` (Debian's `mariadb.socket`).
/// Such a server is started again by the service manager on the next
/// connection to its socket or port, so nothing the agent does can prove
/// it stopped. Its environment is readable by its own user (and root).
pub fn socket_activated(pid: i32) -> Result<bool, String> {
    let path = PathBuf::from(format!("/proc/{pid}/environ"));
    let environ = std::fs::read(&path).map_err(|e| cannot_read(&path, &e))?;
    Ok(environ
        .split(|b| *b == 0)
        .any(|var| var.starts_with(b"LISTEN_FDS=")))
}

/// What to do about a socket-activated mysqld, for every message that
/// mentions one.
pub const SOCKET_ACTIVATION_FIX: &str = "systemd starts it again on the next connection, so the \
     agent can never prove it stopped (a fence blocks, a restore cannot stop it): disable the \
     socket unit and start mysqld by its service (systemctl disable --now mariadb.socket; \
     systemctl restart mariadb)";

/// Refuses a job that stops mysqld (a restore, a rebuild) when the server
/// holding `files` was started by socket activation: it could never be
/// proven stopped.
pub fn refuse_socket_activated(files: &ServerFiles) -> Result<(), String> {
    match identify(files)? {
        Some(pid) if socket_activated(pid)? => Err(format!(
            "mysqld (pid {pid}) was started by socket activation: {SOCKET_ACTIVATION_FIX}"
        )),
        _ => Ok(()),
    }
}

/// The live mysqld serving `files`: the holder of its lock file, whose
/// command is a MySQL or MariaDB server. `Ok(None)`: nothing holds it.
pub fn identify(files: &ServerFiles) -> Result<Option<i32>, String> {
    let Some(pid) = lock_holder(&files.lock_file)? else {
        return Ok(None);
    };
    let name = command_name(pid)?;
    if !is_server_command(&name) {
        return Err(format!(
            "{} is locked by pid {pid} ({name}), which is not mysqld or mariadbd",
            files.lock_file.display()
        ));
    }
    Ok(Some(pid))
}

/// How an endpoint answered a connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// Refused (or, for a socket, absent): nothing listens.
    Refused,
    /// Something listens.
    Listening,
    /// No answer either way.
    Unknown(String),
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

async fn probe_tcp(address: &str) -> Endpoint {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Endpoint::Listening,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Endpoint::Refused,
        Ok(Err(e)) => Endpoint::Unknown(format!("connecting to {address}: {e}")),
        Err(_) => Endpoint::Unknown(format!("{address} did not answer within {PROBE_TIMEOUT:?}")),
    }
}

async fn probe_socket(path: &Path) -> Endpoint {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(path)).await {
        Ok(Ok(_)) => Endpoint::Listening,
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            Endpoint::Refused
        }
        Ok(Err(e)) => Endpoint::Unknown(format!("connecting to {}: {e}", path.display())),
        Err(_) => Endpoint::Unknown(format!(
            "{} did not answer within {PROBE_TIMEOUT:?}",
            path.display()
        )),
    }
}

/// Positive evidence that no mysqld serves `files`: nothing holds the
/// lock file, and the address and socket refuse connections. `Err` says
/// why it cannot be proven (still running, or unknown).
pub async fn prove_stopped(files: &ServerFiles) -> Result<String, String> {
    // open and fcntl block (a data directory on a hung NFS mount would
    // hold a runtime thread): on the blocking pool.
    let file = files.lock_file.clone();
    let holder = tokio::task::spawn_blocking(move || lock_holder(&file))
        .await
        .map_err(|e| format!("the lock check did not finish: {e}"))??;
    if let Some(pid) = holder {
        return Err(format!(
            "pid {pid} still holds {}'s lock: mysqld runs",
            files.lock_file.display()
        ));
    }
    let mut refused = vec![files.address.clone()];
    match probe_tcp(&files.address).await {
        Endpoint::Refused => {}
        Endpoint::Listening => {
            return Err(format!(
                "nothing holds {}'s lock, but {} accepts connections: another server may serve it",
                files.lock_file.display(),
                files.address
            ));
        }
        Endpoint::Unknown(e) => return Err(e),
    }
    if let Some(socket) = &files.socket {
        match probe_socket(socket).await {
            Endpoint::Refused => refused.push(socket.display().to_string()),
            Endpoint::Listening => {
                return Err(format!(
                    "nothing holds {}'s lock, but {} accepts connections",
                    files.lock_file.display(),
                    socket.display()
                ));
            }
            Endpoint::Unknown(e) => return Err(e),
        }
    }
    Ok(format!(
        "nothing holds {}'s lock and {} refuse connections",
        files.lock_file.display(),
        refused.join(" and ")
    ))
}

/// Waits until [`prove_stopped`] proves it, up to `within`; the last
/// reason otherwise.
pub async fn wait_stopped(files: &ServerFiles, within: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        match prove_stopped(files).await {
            Ok(proof) => return Ok(proof),
            Err(e) if start.elapsed() > within => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A mysqld process pinned by a pidfd: a signal reaches it and never a
/// process that later reuses its pid, and its exit is seen when it
/// happens. Shutting down, InnoDB releases its lock before the process
/// ends (MariaDB deletes `ibtmp1` after it), so whoever moves the data
/// directory's files waits for the exit, not for the lock.
#[derive(Debug)]
pub struct PinnedServer {
    pid: i32,
    fd: rustix::fd::OwnedFd,
}

/// Pins the mysqld serving `files`: the lock holder is opened as a pidfd,
/// then checked to still hold the lock, so a pid recycled in between is
/// never pinned. `None` when no mysqld holds the lock.
pub fn pin(files: &ServerFiles) -> Result<Option<PinnedServer>, String> {
    let Some(pid) = identify(files)? else {
        return Ok(None);
    };
    let raw = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| format!("pid {pid} cannot be signalled"))?;
    let fd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        // Gone in between: it holds nothing any more.
        Err(rustix::io::Errno::SRCH) => return Ok(None),
        Err(e) => return Err(format!("cannot pin mysqld (pid {pid}): {e}")),
    };
    if lock_holder(&files.lock_file)? != Some(pid) {
        return identify(files).and_then(|now| match now {
            None => Ok(None),
            Some(other) => Err(format!(
                "the lock on {} moved from pid {pid} to pid {other} while pinning it; not signalled",
                files.lock_file.display()
            )),
        });
    }
    Ok(Some(PinnedServer { pid, fd }))
}

impl PinnedServer {
    /// The pinned process's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal`; `false` when the process had already exited.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<bool, String> {
        let pid = self.pid;
        match rustix::process::pidfd_send_signal(self.fd.as_fd(), signal) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(rustix::io::Errno::PERM) => Err(format!(
                "not permitted to signal mysqld (pid {pid}): the agent runs as {}, mysqld as another user; run the agent as the user mysqld runs as (`mysql`), as the shipped unit does",
                agent_user()
            )),
            Err(e) => Err(format!("cannot signal mysqld (pid {pid}): {e}")),
        }
    }

    /// Waits until the process has exited (its pidfd turns readable), up
    /// to `within`; `poll` blocks, so on the blocking pool.
    pub async fn wait_exit(&self, within: Duration) -> Result<(), String> {
        let pid = self.pid;
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| format!("cannot watch mysqld (pid {pid}): {e}"))?;
        let timeout = rustix::event::Timespec::try_from(within)
            .map_err(|_| format!("cannot wait {within:?} for mysqld (pid {pid})"))?;
        let exited = tokio::task::spawn_blocking(move || {
            let mut watch = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            loop {
                match rustix::event::poll(&mut watch, Some(&timeout)) {
                    Err(rustix::io::Errno::INTR) => continue,
                    other => return other,
                }
            }
        })
        .await
        .map_err(|e| format!("the wait for mysqld (pid {pid}) did not finish: {e}"))?
        .map_err(|e| format!("cannot watch mysqld (pid {pid}): {e}"))?;
        if exited == 0 {
            return Err(format!(
                "mysqld (pid {pid}) has not exited within {within:?}"
            ));
        }
        Ok(())
    }
}

/// Sends `signal` to the mysqld serving `files` and nothing else (see
/// [`pin`]). Returns the pid signalled, `None` when no mysqld holds the
/// lock.
pub fn signal_server(
    files: &ServerFiles,
    signal: rustix::process::Signal,
) -> Result<Option<i32>, String> {
    let Some(server) = pin(files)? else {
        return Ok(None);
    };
    Ok(server.signal(signal)?.then_some(server.pid))
}

/// The last [`ServerFiles`] seen while connected, kept in the agent's
/// state directory: a restarted agent whose mysqld hangs still knows which
/// process and files were its server.
#[derive(Debug)]
pub struct KnownServer {
    path: PathBuf,
    current: std::sync::Mutex<Option<ServerFiles>>,
}

impl KnownServer {
    /// The record at `path`; none (nothing known yet) when it is missing.
    /// A record that cannot be read is reported and treated as unknown:
    /// nothing can then be proven until the agent sees its server again.
    pub fn open(path: &Path) -> KnownServer {
        let current = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(files) => Some(files),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable record of mysqld's files; nothing about its process can be proven until the agent connects to it again");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the record of mysqld's files; nothing about its process can be proven until the agent connects to it again");
                None
            }
        };
        KnownServer {
            path: path.to_path_buf(),
            current: std::sync::Mutex::new(current),
        }
    }

    /// What is known of the server's files.
    pub fn get(&self) -> Option<ServerFiles> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records what the connected server reported; written durably when it
    /// changed. True when it changed.
    pub fn observed(&self, files: ServerFiles) -> Result<bool, String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref() == Some(&files) {
            return Ok(false);
        }
        let bytes = serde_json::to_vec_pretty(&files).map_err(|e| e.to_string())?;
        dbfleet_common::durable::write_atomic(&self.path, &bytes, 0o600)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        *current = Some(files);
        Ok(true)
    }
}

/// Follows the collections: each one made while connected updates what
/// is known of the server's files, and a lock file the agent cannot use
/// is logged with its fix once (until it can use it again), because a
/// fence could then prove nothing.
pub async fn follow(
    known: std::sync::Arc<KnownServer>,
    mut collections: tokio::sync::watch::Receiver<
        Option<std::sync::Arc<super::observer::Collection>>,
    >,
    host: String,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut complained: Option<String> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = collections.changed() => if changed.is_err() { return },
        }
        let files = {
            let latest = collections.borrow_and_update();
            latest
                .as_ref()
                .and_then(|c| c.sample.as_ref())
                .and_then(|s| ServerFiles::from_variables(&s.variables, &host))
        };
        let Some(files) = files else { continue };
        match known.observed(files.clone()) {
            Ok(true) => tracing::info!(
                datadir = %files.datadir.display(),
                lock_file = %files.lock_file.display(),
                address = files.address,
                "mysqld's files recorded: fencing identifies its process by the lock on the lock file"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(error = e, "cannot record mysqld's files"),
        }
        let probe = files.clone();
        let identified = tokio::task::spawn_blocking(move || identify(&probe))
            .await
            .unwrap_or_else(|e| Err(format!("the identification did not finish: {e}")));
        let problem = match identified {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!(
                "nothing holds {}'s lock although mysqld answers (innodb_read_only?)",
                files.lock_file.display()
            )),
            Err(e) => Some(e),
        };
        match (&problem, &complained) {
            (Some(p), Some(c)) if p == c => {}
            (Some(p), _) => tracing::warn!(
                problem = p,
                "the agent cannot identify its mysqld's process: a fence could neither prove it stopped nor kill it"
            ),
            (None, Some(_)) => tracing::info!("the agent identifies its mysqld's process again"),
            (None, None) => {}
        }
        complained = problem;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A process systemd started by socket activation carries
    /// `LISTEN_FDS` in its environment; one started otherwise does not.
    #[test]
    fn a_socket_activated_process_is_told_by_its_environment() {
        let mut activated = std::process::Command::new("sleep")
            .arg("30")
            .env("LISTEN_FDS", "1")
            .env("LISTEN_PID", "1")
            .spawn()
            .unwrap();
        let mut plain = std::process::Command::new("sleep")
            .arg("30")
            .env_remove("LISTEN_FDS")
            .spawn()
            .unwrap();
        let pid = |c: &std::process::Child| i32::try_from(c.id()).unwrap();
        assert_eq!(socket_activated(pid(&activated)), Ok(true));
        assert_eq!(socket_activated(pid(&plain)), Ok(false));
        for c in [&mut activated, &mut plain] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let e = socket_activated(pid(&plain)).unwrap_err();
        assert!(e.contains("/proc/"), "a gone process cannot be told: {e}");
    }

    #[test]
    fn the_lock_file_follows_the_server_variables() {
        let base = [
            ("datadir", "/var/lib/mysql/"),
            ("innodb_data_file_path", "ibdata1:12M:autoextend"),
            ("port", "3306"),
            ("socket", "/run/mysqld/mysqld.sock"),
        ];
        let f = ServerFiles::from_variables(&vars(&base), "10.0.0.5").unwrap();
        assert_eq!(f.lock_file, Path::new("/var/lib/mysql/ibdata1"));
        assert_eq!(f.address, "10.0.0.5:3306");
        assert_eq!(
            f.socket.as_deref(),
            Some(Path::new("/run/mysqld/mysqld.sock"))
        );

        let mut moved = vars(&base);
        moved.insert("innodb_data_home_dir".into(), "/data/innodb".into());
        moved.insert(
            "innodb_data_file_path".into(),
            "sys1:10M;sys2:10M:autoextend".into(),
        );
        let f = ServerFiles::from_variables(&moved, "h").unwrap();
        assert_eq!(f.lock_file, Path::new("/data/innodb/sys1"));

        for missing in ["datadir", "port"] {
            let mut v = vars(&base);
            v.remove(missing);
            assert_eq!(ServerFiles::from_variables(&v, "h"), None, "{missing}");
        }
        let mut zero = vars(&base);
        zero.insert("port".into(), "0".into());
        assert_eq!(ServerFiles::from_variables(&zero, "h"), None);
    }

    #[test]
    fn a_permission_error_names_the_user_and_the_fix() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let text = cannot_read(Path::new("/var/lib/mysql/db1-bin.000001"), &denied);
        assert!(
            text.starts_with("cannot read /var/lib/mysql/db1-bin.000001: ")
                && text.contains(&format!("the agent runs as {}", agent_user()))
                && text.contains("`mysql`"),
            "{text}"
        );
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!cannot_read(Path::new("/x"), &missing).contains("runs as"));
    }

    #[test]
    fn only_server_commands_are_servers() {
        assert!(is_server_command("mariadbd"));
        assert!(is_server_command("mysqld"));
        assert!(!is_server_command("sleep"));
        assert!(!is_server_command("python3"));
    }

    fn files_in(dir: &Path, port: u16) -> ServerFiles {
        ServerFiles {
            datadir: dir.to_path_buf(),
            lock_file: dir.join("ibdata1"),
            address: format!("127.0.0.1:{port}"),
            socket: Some(dir.join("mysqld.sock")),
        }
    }

    /// A port that refuses connections: bound, then closed.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_missing_or_unreadable_lock_file_proves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path(), closed_port());
        let why = prove_stopped(&files).await.unwrap_err();
        assert!(
            why.contains("cannot read") && why.contains("ibdata1"),
            "{why}"
        );
        // A directory where the file should be cannot be read either.
        std::fs::create_dir(&files.lock_file).unwrap();
        let why = prove_stopped(&files).await.unwrap_err();
        assert!(why.contains("not a regular file"), "{why}");
        assert_eq!(
            signal_server(&files, rustix::process::Signal::KILL).ok(),
            None
        );
    }

    #[tokio::test]
    async fn an_unlocked_file_and_refused_endpoints_prove_a_stop_and_a_listener_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = files_in(dir.path(), closed_port());
        std::fs::write(&files.lock_file, b"").unwrap();
        let proof = prove_stopped(&files).await.unwrap();
        assert!(proof.contains("refuse connections"), "{proof}");
        assert_eq!(identify(&files), Ok(None));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        files.address = listener.local_addr().unwrap().to_string();
        let why = prove_stopped(&files).await.unwrap_err();
        assert!(why.contains("accepts connections"), "{why}");

        files.address = format!("127.0.0.1:{}", closed_port());
        let _socket =
            std::os::unix::net::UnixListener::bind(files.socket.as_ref().unwrap()).unwrap();
        let why = prove_stopped(&files).await.unwrap_err();
        assert!(why.contains("mysqld.sock accepts connections"), "{why}");
    }

    #[test]
    fn a_lock_held_by_another_program_is_never_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let files = files_in(dir.path(), closed_port());
        std::fs::write(&files.lock_file, b"").unwrap();
        // flock(1) takes BSD locks; a POSIX lock needs a program that uses
        // fcntl: python's fcntl.lockf does.
        let mut holder = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
            ])
            .arg(&files.lock_file)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked");
        assert_eq!(lock_holder(&files.lock_file), Ok(Some(holder.id() as i32)));
        let why = signal_server(&files, rustix::process::Signal::KILL).unwrap_err();
        assert!(why.contains("not mysqld or mariadbd"), "{why}");
        assert_eq!(holder.try_wait().unwrap(), None, "the holder still runs");
        holder.kill().unwrap();
        holder.wait().unwrap();
    }
}
