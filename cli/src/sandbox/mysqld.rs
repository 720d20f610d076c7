//! Real Oracle MySQL servers for the sandbox's MySQL flavor: the same
//! fleet shape as MariaDB's (GTID auto-position, lossless semi-sync, every
//! server starting read-only) on MySQL 9.7 as `./scripts/install-mysql`
//! unpacks it under `target/tools/mysql`.
//!
//! Debian 12 ships no MySQL; the installed tree comes from Debian's
//! unstable suite and runs through its own dynamic loader (the wrappers in
//! `bin/`), so paths and users are the host's and mysqld runs as the
//! sandbox's service user like MariaDB. A data directory is a copy of one
//! initialised template (3 s to initialise, 0.3 s to copy) with its
//! `auto.cnf` removed, so each server gets its own `server_uuid`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::SandboxError;
use super::mariadb::{SEMI_SYNC_TIMEOUT_MS, Server};
use super::process::ServiceUser;

/// Environment variable naming the MySQL install (the directory holding
/// `bin/mysqld` and `root/`); default `target/tools/mysql` beside the
/// dbfleet binaries.
pub const MYSQL_HOME_ENV: &str = "DBFLEET_MYSQL_HOME";

/// The fix when no MySQL is installed.
pub const INSTALL_FIX: &str = "run `./scripts/install-mysql` (or `./scripts/setup`) to unpack MySQL 9.7 into target/tools/mysql";

/// An unpacked MySQL: wrappers in `bin/`, the packages' files in `root/`.
#[derive(Debug, Clone)]
pub struct MysqlInstall {
    /// The install's directory.
    pub home: PathBuf,
}

impl MysqlInstall {
    /// The install [`MYSQL_HOME_ENV`] names, or `target/tools/mysql` for
    /// binaries in `target/debug` or `target/release`; `None` when it is
    /// not complete there.
    pub fn find(dbfleet_dir: &Path) -> Option<MysqlInstall> {
        let home = match std::env::var_os(MYSQL_HOME_ENV) {
            Some(d) => PathBuf::from(d),
            None => dbfleet_dir.parent()?.join("tools/mysql"),
        };
        let install = MysqlInstall { home };
        (install.mysqld().is_file() && install.home.join("root/usr/sbin/mysqld").is_file())
            .then_some(install)
    }

    /// The mysqld wrapper.
    pub fn mysqld(&self) -> PathBuf {
        self.home.join("bin/mysqld")
    }

    /// A client program's wrapper (`mysql`, `mysqldump`, `mysqlbinlog`).
    pub fn program(&self, name: &str) -> PathBuf {
        self.home.join("bin").join(name)
    }

    fn usr(&self) -> PathBuf {
        self.home.join("root/usr")
    }

    /// The options that tell mysqld where its own files are (it would
    /// otherwise look in the host's /usr, which holds MariaDB's).
    fn location_options(&self) -> [String; 4] {
        let usr = self.usr();
        [
            format!("basedir = {}", usr.display()),
            format!("plugin_dir = {}", usr.join("lib/mysql/plugin").display()),
            format!("lc_messages_dir = {}", usr.join("share/mysql").display()),
            format!(
                "character_sets_dir = {}",
                usr.join("share/mysql/charsets").display()
            ),
        ]
    }

    /// An initialised data directory to copy: made once per install (in
    /// the install when it is writable, else under `fallback`), by a
    /// private directory renamed into place so concurrent sandboxes never
    /// copy a half-made one.
    fn template(&self, fallback: &Path, log: &Path) -> Result<PathBuf, SandboxError> {
        let shared = self.home.join("template");
        if shared.join("mysql.ibd").is_file() {
            return Ok(shared);
        }
        let (place, target) = if is_writable(&self.home) {
            (self.home.clone(), shared)
        } else {
            (fallback.to_path_buf(), fallback.join("mysql-template"))
        };
        let work = place.join(format!("template.{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).map_err(|e| SandboxError::io(&work, e))?;
        let mut cmd = Command::new(self.mysqld());
        cmd.arg("--no-defaults")
            .arg("--initialize-insecure")
            .arg("--skip-log-bin")
            .arg(format!("--basedir={}", self.usr().display()))
            .arg(format!(
                "--lc-messages-dir={}",
                self.usr().join("share/mysql").display()
            ))
            .arg(format!(
                "--character-sets-dir={}",
                self.usr().join("share/mysql/charsets").display()
            ))
            .arg("--innodb-redo-log-capacity=8M")
            .arg(format!("--datadir={}", work.join("data").display()));
        if nix::unistd::geteuid().is_root() {
            // The copies are given to the service user afterwards.
            cmd.arg("--user=root");
        }
        let out = cmd.output().map_err(|e| {
            SandboxError::Mariadb(format!(
                "cannot run {}: {e}; {INSTALL_FIX}",
                self.mysqld().display()
            ))
        })?;
        let _ = fs::write(log, [&out.stdout[..], &out.stderr[..]].concat());
        if !out.status.success() {
            let _ = fs::remove_dir_all(&work);
            return Err(SandboxError::Mariadb(format!(
                "mysqld --initialize failed ({}): {}",
                out.status,
                super::mariadb::log_tail(log)
            )));
        }
        // One server_uuid per copy: each gets its own at first start.
        let _ = fs::remove_file(work.join("data/auto.cnf"));
        if fs::rename(work.join("data"), &target).is_err() {
            // Another sandbox finished first: use theirs.
            if !target.join("mysql.ibd").is_file() {
                let _ = fs::remove_dir_all(&work);
                return Err(SandboxError::Mariadb(format!(
                    "cannot put MySQL's template data directory at {}",
                    target.display()
                )));
            }
        }
        let _ = fs::remove_dir_all(&work);
        Ok(target)
    }
}

fn is_writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Creates `s`'s data directory from the template and writes its option
/// file; with `user`, the server's whole directory is theirs.
pub fn install(
    mysql: &MysqlInstall,
    sandbox: &Path,
    s: &Server,
    log: &Path,
    user: Option<&ServiceUser>,
) -> Result<(), SandboxError> {
    let template = mysql.template(sandbox, log)?;
    fs::create_dir_all(s.tmpdir()).map_err(|e| SandboxError::io(&s.tmpdir(), e))?;
    fs::create_dir_all(s.dir.join("files")).map_err(|e| SandboxError::io(&s.dir, e))?;
    let out = Command::new("cp")
        .arg("-a")
        .arg(&template)
        .arg(s.datadir())
        .output()
        .map_err(|e| SandboxError::io(&s.datadir(), e))?;
    if !out.status.success() {
        return Err(SandboxError::Mariadb(format!(
            "copying MySQL's template data directory to {} failed: {}",
            s.datadir().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    fs::write(s.cnf(), cnf(mysql, s)).map_err(|e| SandboxError::io(&s.cnf(), e))?;
    if let Some(u) = user {
        u.give(&s.dir, true)
            .map_err(|e| SandboxError::io(&s.dir, e))?;
    }
    Ok(())
}

/// The option file: GTIDs, binlogs, semi-sync (source side off until the
/// server is a primary), read-only with `super_read_only` from the start.
fn cnf(mysql: &MysqlInstall, s: &Server) -> String {
    format!(
        "# Written by `dbfleet sandbox up` for {host} (MySQL).\n\
         [mysqld]\n\
         {locations}\n\
         datadir = {datadir}\n\
         tmpdir = {tmpdir}\n\
         socket = {socket}\n\
         secure_file_priv = {files}\n\
         bind_address = {ip}\n\
         port = {port}\n\
         report_host = {ip}\n\
         report_port = {port}\n\
         mysqlx = OFF\n\
         server_id = {server_id}\n\
         log_bin = {host}-bin\n\
         relay_log = {host}-relay\n\
         gtid_mode = ON\n\
         enforce_gtid_consistency = ON\n\
         read_only = ON\n\
         super_read_only = ON\n\
         skip_name_resolve = ON\n\
         replica_net_timeout = 4\n\
         plugin_load_add = semisync_source.so\n\
         plugin_load_add = semisync_replica.so\n\
         plugin_load_add = mysql_clone.so\n\
         loose_rpl_semi_sync_source_enabled = OFF\n\
         loose_rpl_semi_sync_replica_enabled = ON\n\
         loose_rpl_semi_sync_source_timeout = {semi_sync_timeout}\n\
         loose_rpl_semi_sync_source_wait_no_replica = ON\n\
         loose_rpl_semi_sync_source_wait_point = AFTER_SYNC\n\
         innodb_buffer_pool_size = 32M\n\
         innodb_redo_log_capacity = 8M\n\
         performance_schema = OFF\n\
         max_connections = 100\n{tls}",
        host = s.host,
        locations = mysql.location_options().join("\n"),
        datadir = s.datadir().display(),
        tmpdir = s.tmpdir().display(),
        socket = s.socket.display(),
        files = s.dir.join("files").display(),
        ip = s.ip,
        port = s.port,
        server_id = s.server_id,
        semi_sync_timeout = SEMI_SYNC_TIMEOUT_MS,
        tls = s.tls_options(),
    )
}
