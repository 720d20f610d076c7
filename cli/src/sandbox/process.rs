//! Background processes of a sandbox: started detached with a log file and
//! a pid file, and stopped only after checking that the pid still belongs
//! to this sandbox (a recycled pid is never signalled).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid};

/// The unprivileged user a sandbox started by root runs mysqld and the
/// agents as: `mysql`, as the shipped units and Debian's packages do, so
/// that a permission the agent lacks on a real host fails in the sandbox
/// and the tests too.
pub const SERVICE_USER: &str = "mysql";

/// Who runs a sandbox's mysqld and agents.
#[derive(Debug, Clone)]
pub struct ServiceUser {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: Uid,
    /// Its primary group.
    pub gid: Gid,
}

impl ServiceUser {
    /// [`SERVICE_USER`] when running as root; `None` (run as the caller)
    /// otherwise. Root without that user is an error naming the fix.
    pub fn for_sandbox() -> Result<Option<ServiceUser>, String> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        match nix::unistd::User::from_name(SERVICE_USER) {
            Ok(Some(u)) => Ok(Some(ServiceUser {
                name: u.name,
                uid: u.uid,
                gid: u.gid,
            })),
            Ok(None) => Err(format!(
                "the sandbox runs mysqld and the agents as the `{SERVICE_USER}` user, which does not exist: install mariadb-server (./scripts/setup) or create it with `useradd --system {SERVICE_USER}`"
            )),
            Err(e) => Err(format!("cannot look up the `{SERVICE_USER}` user: {e}")),
        }
    }

    /// The first existing directory on the way to `dir` (absolute) this
    /// user cannot enter, asked of the kernel as them (ACLs and modes
    /// alike); `None` when every one opens, or when that cannot be asked.
    /// Without this a sandbox under a directory closed to them (a 0700
    /// `mktemp -d`) fails deep inside mariadb-install-db with "InnoDB:
    /// Unable to create temporary file; errno: 13".
    pub fn closed_directory(&self, dir: &Path) -> Option<PathBuf> {
        let mut path = PathBuf::new();
        for part in dir.components() {
            path.push(part);
            if !path.is_dir() {
                return None;
            }
            let enters = Command::new("test")
                .arg("-x")
                .arg(&path)
                .uid(self.uid.as_raw())
                .gid(self.gid.as_raw())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?
                .success();
            if !enters {
                return Some(path);
            }
        }
        None
    }

    /// Gives `path` (and, when `recursive`, everything below it) to this
    /// user and its group.
    pub fn give(&self, path: &Path, recursive: bool) -> std::io::Result<()> {
        nix::unistd::chown(path, Some(self.uid), Some(self.gid)).map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("chown {}: {e}", path.display()),
            )
        })?;
        if recursive && fs::symlink_metadata(path)?.is_dir() {
            for e in fs::read_dir(path)? {
                self.give(&e?.path(), true)?;
            }
        }
        Ok(())
    }
}

/// Starts `program` in its own process group (so the operator's Ctrl-C in
/// the shell that ran `sandbox up` does not reach it), output appended to
/// `log`, pid written to `pidfile`; as `user` when given (the log and the
/// pid file are then theirs too, so a program that reopens them by name
/// can).
pub fn spawn(
    program: &Path,
    args: &[String],
    log: &Path,
    pidfile: &Path,
    user: Option<&ServiceUser>,
) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    if let Some(u) = user {
        u.give(log, false)?;
        // mysqld writes its own pid to the same file: theirs before it starts.
        fs::write(pidfile, "")?;
        u.give(pidfile, false)?;
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start {}: {e}", program.display()))
        })?;
    if let Err(e) = fs::write(pidfile, format!("{}\n", child.id())) {
        // Without a pid file nothing could ever stop it: stop it now.
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

/// Why a started process never listened.
#[derive(Debug)]
pub enum NotListening {
    /// It exited first.
    Exited(std::process::ExitStatus),
    /// Nothing accepted connections within the timeout.
    TimedOut,
}

/// Waits until `address` accepts TCP connections, failing early if `child`
/// exits (its log then says why).
pub async fn wait_listening(
    child: &mut Child,
    address: &str,
    timeout: Duration,
) -> Result<(), NotListening> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotListening::Exited(status));
        }
        if start.elapsed() > timeout {
            return Err(NotListening::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// True when the command line of `pid` names a path inside `dir` (every
/// sandbox process is started with one). `dir/` is matched, so the sandbox
/// `/x/1` never claims the processes of `/x/10`.
pub fn belongs_to(pid: u32, dir: &Path) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
    let needle = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    cmdline.contains(&needle)
}

/// Reads a pid file.
pub fn read_pid(pidfile: &Path) -> Option<u32> {
    fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), signal);
    }
}

/// SIGTERM, then SIGKILL after `grace`; returns once the process is gone.
/// SIGTERM is repeated every second: a mariadbd still starting up can miss
/// the first one, and a second one to a process already stopping is
/// harmless.
pub fn stop(pid: u32, grace: Duration, reap: &mut dyn FnMut() -> bool) {
    signal(pid, Signal::SIGCONT);
    signal(pid, Signal::SIGTERM);
    let start = Instant::now();
    let mut last_term = Instant::now();
    let mut killed = false;
    loop {
        if reap() || !alive(pid) {
            return;
        }
        if !killed && start.elapsed() > grace {
            signal(pid, Signal::SIGKILL);
            killed = true;
        } else if !killed && last_term.elapsed() >= Duration::from_secs(1) {
            signal(pid, Signal::SIGTERM);
            last_term = Instant::now();
        }
        if start.elapsed() > grace + Duration::from_secs(10) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every `*.pid` file in `run_dir`, as (name, path).
pub fn pidfiles(run_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pid"))
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p)))
        .collect();
    v.sort();
    v
}

/// Stop order: agents first (so nothing reports a half-stopped fleet),
/// then coordinators, then the servers.
pub fn stop_rank(name: &str) -> u8 {
    if name.starts_with("agent-") {
        0
    } else if name.starts_with("coordinator-") {
        1
    } else {
        2
    }
}
