//! Real MariaDB servers for the sandbox: a fresh datadir per member, a
//! config with GTID replication, binlogs and semi-sync, the accounts the
//! fleet needs, and replication from the primary.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use dbfleet_proto::model::Flavor;
use dbfleet_proto::privileges;

use super::SandboxError;
use super::process::ServiceUser;

/// Lossless semi-sync: a commit waits for a replica's ack this long (over
/// a day) before it would fall back to asynchronous replication, so an
/// acknowledged write is always on a replica and a dead primary is fenced
/// by stopping its replicas.
pub const SEMI_SYNC_TIMEOUT_MS: u64 = 100_000_000;

/// Account the agents use.
pub const AGENT_USER: &str = "dbfleet_agent";
/// Account replicas use to connect to their source.
pub const REPL_USER: &str = "dbfleet_repl";
/// The ordinary application account.
pub const APP_USER: &str = "app";
/// The application's database.
pub const APP_DATABASE: &str = "app";

/// Passwords of the sandbox's accounts (random per sandbox). `Debug`
/// shows no password.
#[derive(Clone)]
pub struct Credentials {
    /// root@localhost.
    pub root: String,
    /// [`AGENT_USER`].
    pub agent: String,
    /// [`REPL_USER`].
    pub repl: String,
    /// [`APP_USER`].
    pub app: String,
}

impl Credentials {
    /// Every password, for scans that prove none leaked.
    pub fn all(&self) -> [&str; 4] {
        [&self.root, &self.agent, &self.repl, &self.app]
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// One mysqld of the sandbox.
#[derive(Debug, Clone)]
pub struct Server {
    /// MariaDB or MySQL.
    pub flavor: Flavor,
    /// Member name (db1, db2, ...).
    pub host: String,
    /// The cluster it belongs to.
    pub cluster: String,
    /// Address it listens on.
    pub ip: Ipv4Addr,
    /// Port it listens on.
    pub port: u16,
    /// Unique server_id.
    pub server_id: u32,
    /// Its directory (datadir is `dir/data`).
    pub dir: PathBuf,
    /// Unix socket (short path, under /tmp, unique per address and port).
    pub socket: PathBuf,
    /// The initial primary (made writable after bootstrap; every server
    /// starts read-only, so a restarted one never accepts writes before
    /// its agent and the coordinator agree).
    pub read_only: bool,
    /// Its TLS certificate: with it the server requires TLS of every TCP
    /// client, replication included.
    pub tls: Option<ServerTlsFiles>,
}

/// A mysqld's certificate from the fleet's CA.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// The CA, which also checks the certificates of the sources this
    /// server replicates from.
    pub ca: PathBuf,
    /// Its certificate, naming its address.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl Server {
    /// The option-file lines of its certificate (both flavors spell them
    /// alike): with them it refuses plain TCP.
    pub fn tls_options(&self) -> String {
        self.tls
            .as_ref()
            .map(|t| {
                format!(
                    "ssl_ca = {}\nssl_cert = {}\nssl_key = {}\nrequire_secure_transport = ON\n",
                    t.ca.display(),
                    t.cert.display(),
                    t.key.display()
                )
            })
            .unwrap_or_default()
    }

    /// The name its mysqld runs under in the sandbox's `run/` and `logs/`.
    pub fn process_name(&self) -> String {
        match self.flavor {
            Flavor::MariaDb => format!("mariadbd-{}", self.host),
            Flavor::MySql => format!("mysqld-{}", self.host),
        }
    }

    /// The datadir.
    pub fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Its private temporary directory.
    pub fn tmpdir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The server's option file.
    pub fn cnf(&self) -> PathBuf {
        self.dir.join("my.cnf")
    }

    /// Options for the DBA's `root@localhost`, over the server's socket
    /// (the agent account has only what dbfleet needs; the sandbox's own
    /// setup and the tests act as the DBA).
    pub fn root_opts(&self, password: &str) -> OptsBuilder {
        OptsBuilder::default()
            .socket(Some(self.socket.to_string_lossy().into_owned()))
            .user(Some("root"))
            .pass(Some(password))
    }

    /// TCP options for `user`: verified TLS when the server has a
    /// certificate (it then refuses plain TCP).
    pub fn tcp_opts(&self, user: &str, password: &str) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname(self.ip.to_string())
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(password))
            .prefer_socket(false)
            .ssl_opts(self.tls.as_ref().map(|t| {
                mysql_async::SslOpts::default()
                    .with_root_certs(vec![t.ca.clone().into()])
                    .with_disable_built_in_roots(true)
            }))
    }
}

/// Creates a MariaDB datadir with `mariadb-install-db` and writes the option
/// file; with `user`, the server's whole directory is theirs (mysqld then
/// runs as them).
pub fn install(
    install_db: &Path,
    s: &Server,
    log: &Path,
    user: Option<&ServiceUser>,
) -> Result<(), SandboxError> {
    // A private tmpdir: concurrent bootstraps in one /tmp collide on
    // temporary table file names.
    fs::create_dir_all(s.tmpdir()).map_err(|e| SandboxError::io(&s.tmpdir(), e))?;
    if let Some(u) = user {
        u.give(&s.dir, true)
            .map_err(|e| SandboxError::io(&s.dir, e))?;
    }
    let mut cmd = Command::new(install_db);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", s.datadir().display()))
        .arg(format!("--tmpdir={}", s.tmpdir().display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--innodb-log-file-size=16M")
        .arg("--innodb-data-file-path=ibdata1:10M:autoextend");
    if let Some(u) = user {
        cmd.arg(format!("--user={}", u.name));
    }
    let out = cmd
        .output()
        .map_err(|e| SandboxError::Mariadb(format!("cannot run {}: {e}", install_db.display())))?;
    let _ = fs::write(log, [&out.stdout[..], &out.stderr[..]].concat());
    if !out.status.success() {
        return Err(SandboxError::Mariadb(format!(
            "mariadb-install-db failed for {} ({}): {}",
            s.host,
            out.status,
            log_tail(log)
        )));
    }
    let cnf = format!(
        "# Written by `dbfleet sandbox up` for {host}.\n\
         [mariadbd]\n\
         datadir = {datadir}\n\
         tmpdir = {tmpdir}\n\
         socket = {socket}\n\
         bind-address = {ip}\n\
         port = {port}\n\
         server_id = {server_id}\n\
         log_basename = {host}\n\
         log_bin = {host}-bin\n\
         binlog_format = ROW\n\
         log_slave_updates = ON\n\
         gtid_strict_mode = ON\n\
         read_only = ON\n\
         skip_name_resolve = ON\n\
         slave_net_timeout = 4\n\
         rpl_semi_sync_master_enabled = OFF\n\
         rpl_semi_sync_slave_enabled = ON\n\
         rpl_semi_sync_master_timeout = {semi_sync_timeout}\n\
         rpl_semi_sync_master_wait_no_slave = ON\n\
         rpl_semi_sync_master_wait_point = AFTER_SYNC\n\
         innodb_buffer_pool_size = 32M\n\
         innodb_log_file_size = 16M\n\
         innodb_data_file_path = ibdata1:10M:autoextend\n\
         performance_schema = OFF\n\
         max_connections = 100\n{tls}",
        host = s.host,
        datadir = s.datadir().display(),
        tmpdir = s.tmpdir().display(),
        socket = s.socket.display(),
        ip = s.ip,
        port = s.port,
        server_id = s.server_id,
        semi_sync_timeout = SEMI_SYNC_TIMEOUT_MS,
        tls = s.tls_options(),
    );
    fs::write(s.cnf(), cnf).map_err(|e| SandboxError::io(&s.cnf(), e))?;
    if let Some(u) = user {
        u.give(&s.dir, true)
            .map_err(|e| SandboxError::io(&s.dir, e))?;
    }
    Ok(())
}

/// The arguments that start this server's mariadbd.
pub fn args(s: &Server, pidfile: &Path, log: &Path) -> Vec<String> {
    vec![
        format!("--defaults-file={}", s.cnf().display()),
        format!("--pid-file={}", pidfile.display()),
        format!("--log-error={}", log.display()),
    ]
}

pub(crate) fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Waits until root can log in over the socket; fails early if the
/// process died, quoting its error log.
pub async fn wait_ready(
    s: &Server,
    child: &mut Child,
    log: &Path,
    timeout: Duration,
) -> Result<Conn, SandboxError> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(SandboxError::Mariadb(format!(
                "the mysqld of {} exited ({status}): {}",
                s.host,
                log_tail(log)
            )));
        }
        let opts = OptsBuilder::default()
            .socket(Some(s.socket.to_string_lossy().into_owned()))
            .user(Some("root"));
        if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(2), Conn::new(opts)).await {
            return Ok(conn);
        }
        if start.elapsed() > timeout {
            return Err(SandboxError::Mariadb(format!(
                "the mysqld of {} did not accept connections within {timeout:?}: {}",
                s.host,
                log_tail(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the accounts and the application database without writing
/// them to the binlog (every member gets the same ones, so there is
/// nothing to replicate), then gives root a password.
pub async fn bootstrap(
    mut root: Conn,
    flavor: Flavor,
    creds: &Credentials,
) -> Result<(), SandboxError> {
    let agent_grant = privileges::agent_grant(flavor, AGENT_USER, "localhost")
        .expect("both flavors' agent privileges are known");
    let fail = |step: &str, e: mysql_async::Error| {
        SandboxError::Mariadb(format!("bootstrap step `{step}` failed: {e}"))
    };
    root.query_drop("SET SESSION sql_log_bin = 0")
        .await
        .map_err(|e| fail("SET SESSION sql_log_bin = 0", e))?;
    // mariadb-install-db leaves root without a password over TCP
    // (127.0.0.1, ::1, the host name): only root@localhost, with a
    // password, stays.
    let passwordless: Vec<(String, String)> = root
        .query("SELECT user, host FROM mysql.user WHERE (user = 'root' AND host <> 'localhost') OR user = ''")
        .await
        .map_err(|e| fail("listing install-db's accounts", e))?;
    let mut statements: Vec<String> = passwordless
        .iter()
        .map(|(user, host)| format!("DROP USER '{user}'@'{host}'"))
        .collect();
    statements.extend([
        format!(
            "CREATE USER '{AGENT_USER}'@'localhost' IDENTIFIED BY '{}'",
            creds.agent
        ),
        agent_grant,
        format!(
            "CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{}'",
            creds.repl
        ),
        privileges::replication_grant(flavor, REPL_USER, "%"),
        format!("CREATE DATABASE {APP_DATABASE}"),
        format!("CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{}'", creds.app),
        format!("GRANT ALL PRIVILEGES ON {APP_DATABASE}.* TO '{APP_USER}'@'%'"),
        format!(
            "ALTER USER 'root'@'localhost' IDENTIFIED BY '{}'",
            creds.root
        ),
    ]);
    if flavor == Flavor::MySql {
        // super_read_only refuses account changes even to root; it is
        // set again below, before anyone else can connect.
        statements.insert(0, "SET GLOBAL super_read_only = OFF".into());
        statements.push("SET GLOBAL super_read_only = ON".into());
    }
    for sql in &statements {
        // The statement may carry a password: say which step failed, not what it was.
        let step = sql.split(" IDENTIFIED").next().unwrap_or(sql);
        root.query_drop(sql).await.map_err(|e| fail(step, e))?;
    }
    let _ = root.disconnect().await;
    Ok(())
}

/// Points `replica` at `primary` with GTID auto-positioning and starts it.
pub async fn replicate_from(
    replica: &Server,
    primary: &Server,
    creds: &Credentials,
) -> Result<(), SandboxError> {
    let mut conn = Conn::new(replica.root_opts(&creds.root))
        .await
        .map_err(|e| SandboxError::Mariadb(format!("connect to {}: {e}", replica.host)))?;
    let sql = match replica.flavor {
        Flavor::MariaDb => format!(
            "CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT={}, MASTER_USER='{REPL_USER}', \
             MASTER_PASSWORD='{}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, \
             MASTER_HEARTBEAT_PERIOD=1{}",
            primary.ip,
            primary.port,
            creds.repl,
            replica
                .tls
                .as_ref()
                .map(|t| format!(
                    ", MASTER_SSL=1, MASTER_SSL_CA='{}', MASTER_SSL_VERIFY_SERVER_CERT=1",
                    t.ca.display()
                ))
                .unwrap_or_default()
        ),
        // Without TLS, caching_sha2_password needs the source's RSA key
        // for the first login.
        Flavor::MySql => format!(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='{}', SOURCE_PORT={}, \
             SOURCE_USER='{REPL_USER}', SOURCE_PASSWORD='{}', SOURCE_AUTO_POSITION=1, \
             SOURCE_CONNECT_RETRY=1, SOURCE_HEARTBEAT_PERIOD=1, {}",
            primary.ip,
            primary.port,
            creds.repl,
            match &replica.tls {
                Some(t) => format!(
                    "SOURCE_SSL=1, SOURCE_SSL_CA='{}', SOURCE_SSL_VERIFY_SERVER_CERT=1",
                    t.ca.display()
                ),
                None => "GET_SOURCE_PUBLIC_KEY=1".into(),
            }
        ),
    };
    let start = match replica.flavor {
        Flavor::MariaDb => "START SLAVE",
        Flavor::MySql => "START REPLICA",
    };
    conn.query_drop(sql).await.map_err(|e| {
        SandboxError::Mariadb(format!(
            "pointing {} at its source failed: {e}",
            replica.host
        ))
    })?;
    conn.query_drop(start)
        .await
        .map_err(|e| SandboxError::Mariadb(format!("{start} on {} failed: {e}", replica.host)))?;
    let _ = conn.disconnect().await;
    Ok(())
}

/// Makes the initial primary writable with lossless semi-sync (every
/// server starts read-only with the source side of semi-sync off).
pub async fn make_writable(primary: &Server, creds: &Credentials) -> Result<(), SandboxError> {
    let mut conn = Conn::new(primary.root_opts(&creds.root))
        .await
        .map_err(|e| SandboxError::Mariadb(format!("connect to {}: {e}", primary.host)))?;
    let statements: &[&str] = match primary.flavor {
        Flavor::MariaDb => &[
            "SET GLOBAL rpl_semi_sync_master_enabled = ON",
            "SET GLOBAL read_only = OFF",
        ],
        // Writable until restarted: super_read_only stays ON in my.cnf.
        Flavor::MySql => &[
            "SET GLOBAL rpl_semi_sync_source_enabled = ON",
            "SET GLOBAL super_read_only = OFF",
            "SET GLOBAL read_only = OFF",
        ],
    };
    for sql in statements {
        conn.query_drop(*sql).await.map_err(|e| {
            SandboxError::Mariadb(format!("making {} the primary: {e}", primary.host))
        })?;
    }
    let _ = conn.disconnect().await;
    Ok(())
}
