//! `dbfleet sandbox up|down`: a complete local fleet on 127.x.y.z addresses
//! (a MariaDB primary and replicas, one agent each, coordinators,
//! certificates), started in the background so a newcomer can watch it
//! work; and the same fleet for the integration tests.
//!
//! `up` checks everything it can before starting anything (directory,
//! binaries, free addresses) and tears down whatever it started if a later
//! step fails, so it never leaves a half-started fleet. `down` stops only
//! processes whose pid file is in the sandbox and whose command line
//! names the sandbox directory.

mod health;
pub mod mariadb;
pub mod mysqld;
pub mod process;

pub use self::health::{describe_status, healthy};

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use dbfleet_common::certs::{self, LeafRequest};
use dbfleet_common::identity::Role;
use dbfleet_lease::Timing;
use dbfleet_proto::model::Flavor;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

use self::mariadb::{Credentials, Server};
use crate::client::{CliConfig, CliTls, Client};

/// Default port of every mysqld (each has its own address).
pub const MYSQL_PORT: u16 = 3306;
/// Default agent gRPC port.
pub const AGENT_PORT: u16 = 7100;
/// Agent metrics port (mysqld_exporter's).
pub const METRICS_PORT: u16 = 9104;
/// Coordinator gRPC port.
pub const COORDINATOR_PORT: u16 = 7200;
/// Coordinators' Prometheus port.
pub const COORDINATOR_METRICS_PORT: u16 = 9200;
/// Most servers one sandbox runs: its members take .11 to .20 of its
/// address range, its coordinators .21 and .22.
pub const MAX_SERVERS: usize = 10;
/// Name of the operator certificate the sandbox issues for the CLI.
pub const OPERATOR: &str = "sandbox";

/// Why the sandbox could not be brought up or down.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The directory is taken.
    #[error(
        "{0} already exists: a sandbox may be running there (stop it with `dbfleet sandbox down --dir {0}`), or choose another --dir"
    )]
    Exists(String),
    /// Not a sandbox directory.
    #[error("{0} is not a dbfleet sandbox (no sandbox.json or run/ inside); refusing to touch it")]
    NotASandbox(String),
    /// A program is missing.
    #[error("{program} not found (looked in {looked}): {fix}")]
    Missing {
        /// The program.
        program: String,
        /// Where it was looked for.
        looked: String,
        /// How to get it.
        fix: String,
    },
    /// An address is in use.
    #[error(
        "{0} is already in use (another sandbox, a test fleet or a mysqld?); stop whatever listens there or pick another --base"
    )]
    AddressInUse(SocketAddr),
    /// A MariaDB step failed.
    #[error("{0}")]
    Mariadb(String),
    /// A file operation failed.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        message: String,
    },
    /// Certificates could not be made.
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    /// The agents could not be admitted.
    #[error("the sandbox's agents could not be admitted within {}: {last}", humantime::format_duration(*timeout))]
    NotAdmitted {
        /// How long we tried.
        timeout: Duration,
        /// The last refusal.
        last: String,
    },
    /// The fleet did not become healthy in time.
    #[error("the fleet did not become healthy within {}; last status: {last}", humantime::format_duration(*timeout))]
    Unhealthy {
        /// How long we waited.
        timeout: Duration,
        /// What was wrong at the end.
        last: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

/// The sandbox's backup seal key, below its directory.
const SEAL_KEY: &str = "secrets/backup-seal.key";

impl SandboxError {
    fn io(path: &Path, e: impl std::fmt::Display) -> SandboxError {
        SandboxError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// The programs a sandbox runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `dbfleet-agent`.
    pub agent: PathBuf,
    /// `dbfleet-coordinator`.
    pub coordinator: PathBuf,
    /// `mariadbd`.
    pub mariadbd: PathBuf,
    /// `mariadb-install-db`.
    pub install_db: PathBuf,
    /// MySQL as `./scripts/install-mysql` unpacks it, when it has.
    pub mysql: Option<mysqld::MysqlInstall>,
}

/// Environment variable naming the directory holding `mariadbd` and
/// `mariadb-install-db` (default: PATH, then /usr/sbin and /usr/bin).
pub const MARIADB_BINDIR_ENV: &str = "DBFLEET_MARIADB_BINDIR";

const SETUP_FIX: &str = "install Debian's mariadb-server package: `sudo apt-get install mariadb-server`, or run `./scripts/setup`";

fn find_in(dirs: &[PathBuf], name: &str, fix: &str) -> Result<PathBuf, SandboxError> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| SandboxError::Missing {
            program: name.to_string(),
            looked: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            fix: fix.to_string(),
        })
}

impl Binaries {
    /// Finds the dbfleet binaries in `dbfleet_dir` and MariaDB's where
    /// [`MARIADB_BINDIR_ENV`] or the usual places say.
    pub fn find(dbfleet_dir: &Path) -> Result<Binaries, SandboxError> {
        let mariadb_dirs: Vec<PathBuf> = match std::env::var_os(MARIADB_BINDIR_ENV) {
            Some(d) => vec![PathBuf::from(d)],
            None => {
                let mut v: Vec<PathBuf> = std::env::var_os("PATH")
                    .map(|p| std::env::split_paths(&p).collect())
                    .unwrap_or_default();
                v.extend(["/usr/sbin", "/usr/bin"].map(PathBuf::from));
                v.dedup();
                v
            }
        };
        let build_fix = "build the workspace first: `cargo build --workspace`";
        Ok(Binaries {
            agent: find_in(&[dbfleet_dir.to_path_buf()], "dbfleet-agent", build_fix)?,
            coordinator: find_in(
                &[dbfleet_dir.to_path_buf()],
                "dbfleet-coordinator",
                build_fix,
            )?,
            mariadbd: find_in(&mariadb_dirs, "mariadbd", SETUP_FIX)?,
            install_db: find_in(&mariadb_dirs, "mariadb-install-db", SETUP_FIX)?,
            mysql: mysqld::MysqlInstall::find(dbfleet_dir),
        })
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The sandbox directory (must not exist).
    pub dir: PathBuf,
    /// Number of replicas.
    pub replicas: usize,
    /// Number of coordinators (1 or 2).
    pub coordinators: usize,
    /// First three octets of every address, e.g. [127, 0, 0].
    pub base: [u8; 3],
    /// Name of the first cluster; more clusters get it with their number
    /// appended (`main2`, `main3`, ...).
    pub cluster: String,
    /// Number of clusters, each a primary and `replicas` replicas (hosts
    /// are numbered across the whole fleet: db1, db2, ...).
    pub clusters: usize,
    /// Agents' report interval.
    pub report_interval: Duration,
    /// Coordinators' agent timeout.
    pub agent_timeout: Duration,
    /// The coordinators' lease.
    pub lease: Timing,
    /// TOML appended to every coordinator's config (e.g. a `[failover]`
    /// section with hooks); empty for the defaults.
    pub coordinator_extra: String,
    /// The agents' `self_fence_timeout` (unset: no self-fence).
    pub self_fence_timeout: Option<Duration>,
    /// The agents' `[backup]` section (e.g. an S3 repository); empty: a
    /// repository directory in the sandbox.
    pub agent_backup: String,
    /// Log lines of the agents and coordinators as JSON instead of text.
    pub json_logs: bool,
    /// Seal (age-encrypt) the backups with a key the sandbox generates in
    /// `secrets/backup-seal.key`.
    pub seal_backups: bool,
    /// Leave admission to the operator, as a production fleet does, and
    /// admit the sandbox's agents once they report (`dbfleet agents
    /// admit`); otherwise the coordinators admit each agent at its first
    /// report.
    pub operator_admission: bool,
    /// TLS to MySQL: every mysqld gets a certificate from the sandbox's
    /// CA and refuses plain TCP, replicas check their source's
    /// certificate, and the coordinators require it of every cluster.
    pub mysql_tls: bool,
    /// MariaDB or MySQL servers (one flavor for the whole sandbox).
    pub flavor: Flavor,
    /// Programs to run.
    pub bins: Binaries,
}

/// One member as written to `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Host name.
    pub host: String,
    /// Its cluster (empty in files written before sandboxes had several:
    /// the file's `cluster`).
    #[serde(default)]
    pub cluster: String,
    /// mysqld IP address.
    pub address: String,
    /// mysqld port.
    pub mysql_port: u16,
    /// Agent gRPC `ip:port`.
    pub agent_address: String,
    /// Agent metrics `ip:port`.
    pub metrics_address: String,
}

/// One coordinator as written to `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    /// Coordinator id.
    pub id: String,
    /// gRPC `ip:port`.
    pub address: String,
    /// Prometheus `ip:port`.
    #[serde(default)]
    pub metrics_address: String,
}

/// The lease a sandbox runs with: short, so a newcomer sees a takeover
/// within seconds (bound: lease × 1.01 + 0.5 s + 1 s + 0.5 s ≈ 7 s).
pub fn sandbox_lease() -> Timing {
    Timing {
        lease: Duration::from_secs(5),
        renew_interval: Duration::from_secs(1),
        rpc_timeout: Duration::from_millis(500),
        drift_ppm: 10_000,
        margin: Duration::from_millis(500),
    }
}

fn mariadb_name() -> String {
    Flavor::MariaDb.as_str().to_string()
}

/// `D/sandbox.json`, for scripts; documented in `docs/cli.md`. Its
/// `Debug` leaves the password out.
#[derive(Clone, Serialize, Deserialize)]
pub struct SandboxFile {
    /// Name of the first cluster.
    pub cluster: String,
    /// Members; the first of each cluster is its initial primary.
    pub members: Vec<MemberInfo>,
    /// Coordinators.
    pub coordinators: Vec<CoordinatorInfo>,
    /// Application account.
    pub app_user: String,
    /// Its password.
    pub app_password: String,
    /// The database it owns.
    pub app_database: String,
    /// The servers' flavor (`mariadb` or `mysql`); files written before
    /// the MySQL flavor have none and are MariaDB.
    #[serde(default = "mariadb_name")]
    pub flavor: String,
    /// The CA that signed the mysqld certificates, when the servers
    /// require TLS (clients check the server's certificate with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql_tls_ca: Option<PathBuf>,
}

impl std::fmt::Debug for SandboxFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxFile")
            .field("cluster", &self.cluster)
            .field("members", &self.members)
            .field("coordinators", &self.coordinators)
            .field("app_user", &self.app_user)
            .field("app_password", &"<redacted>")
            .field("app_database", &self.app_database)
            .finish()
    }
}

/// The name of the sandbox's cluster number `k` (from 0).
pub fn cluster_name(first: &str, k: usize) -> String {
    if k == 0 {
        first.to_string()
    } else {
        format!("{first}{}", k + 1)
    }
}

fn ip(base: [u8; 3], last: u8) -> Ipv4Addr {
    Ipv4Addr::new(base[0], base[1], base[2], last)
}

fn password() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn quoted(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).unwrap_or_default()
}

/// A running sandbox. Dropping it stops every process it started and
/// removes its directory, unless [`Fleet::detach`] was called.
#[derive(Debug)]
pub struct Fleet {
    /// The sandbox directory.
    pub dir: PathBuf,
    /// What `sandbox.json` says.
    pub info: SandboxFile,
    /// The servers.
    pub servers: Vec<Server>,
    /// Account passwords.
    pub credentials: Credentials,
    /// Who runs mysqld and the agents (`None`: the sandbox's own user).
    pub service_user: Option<process::ServiceUser>,
    spec: SandboxSpec,
    children: Vec<(String, Child)>,
    detached: bool,
}

impl Fleet {
    /// Builds and starts the whole fleet; on any failure stops what it
    /// started and removes the directory.
    pub async fn up(mut spec: SandboxSpec) -> Result<Fleet, SandboxError> {
        // Every path the servers and daemons get is absolute (and as
        // `down` spells it): mariadb-install-db resolves a relative
        // datadir against its basedir, /usr.
        spec.dir = absolute_dir(&spec.dir)?;
        // Members take .11 to .20 and coordinators .21 and .22.
        let per_cluster = spec.replicas + 1;
        if spec.clusters == 0
            || spec.clusters * per_cluster > MAX_SERVERS
            || !(1..=2).contains(&spec.coordinators)
        {
            return Err(SandboxError::Usage(format!(
                "--clusters × (--replicas + 1) must be 1-{MAX_SERVERS} and --coordinators 1 or 2"
            )));
        }
        if spec.dir.exists() {
            return Err(SandboxError::Exists(spec.dir.display().to_string()));
        }
        let servers: Vec<Server> = (0..spec.clusters * per_cluster)
            .map(|i| {
                let host = format!("db{}", i + 1);
                let addr = ip(spec.base, 11 + i as u8);
                let tls = spec.mysql_tls.then(|| {
                    let certs_dir = spec.dir.join("certs");
                    let files = certs::LeafFiles::of(&certs_dir, Role::Mysql, &host);
                    mariadb::ServerTlsFiles {
                        ca: certs_dir.join(certs::CA_CERT),
                        cert: files.cert,
                        key: files.key,
                    }
                });
                Server {
                    flavor: spec.flavor,
                    dir: spec.dir.join(&host),
                    socket: PathBuf::from(format!("/tmp/dbfleet-{addr}-{MYSQL_PORT}.sock")),
                    host,
                    cluster: cluster_name(&spec.cluster, i / per_cluster),
                    ip: addr,
                    port: MYSQL_PORT,
                    server_id: i as u32 + 1,
                    read_only: i % per_cluster > 0,
                    tls,
                }
            })
            .collect();
        let info = SandboxFile {
            cluster: spec.cluster.clone(),
            members: servers
                .iter()
                .map(|s| MemberInfo {
                    host: s.host.clone(),
                    cluster: s.cluster.clone(),
                    address: s.ip.to_string(),
                    mysql_port: s.port,
                    agent_address: format!("{}:{AGENT_PORT}", s.ip),
                    metrics_address: format!("{}:{METRICS_PORT}", s.ip),
                })
                .collect(),
            coordinators: (0..spec.coordinators)
                .map(|i| CoordinatorInfo {
                    id: format!("c{}", i + 1),
                    address: format!("{}:{COORDINATOR_PORT}", ip(spec.base, 21 + i as u8)),
                    metrics_address: format!(
                        "{}:{COORDINATOR_METRICS_PORT}",
                        ip(spec.base, 21 + i as u8)
                    ),
                })
                .collect(),
            app_user: mariadb::APP_USER.into(),
            app_password: String::new(),
            app_database: mariadb::APP_DATABASE.into(),
            flavor: spec.flavor.as_str().to_string(),
            mysql_tls_ca: spec
                .mysql_tls
                .then(|| spec.dir.join("certs").join(certs::CA_CERT)),
        };
        check_addresses_free(&info)?;
        let service_user = process::ServiceUser::for_sandbox().map_err(SandboxError::Usage)?;
        if let Some(u) = &service_user
            && let Some(closed) = u.closed_directory(&spec.dir)
        {
            return Err(SandboxError::Usage(format!(
                "the sandbox's mysqld and agents run as the `{}` user, who cannot enter {}: \
                 choose a directory it can reach, or open that one with `chmod o+x {}`",
                u.name,
                closed.display(),
                closed.display()
            )));
        }
        fs::create_dir_all(&spec.dir).map_err(|e| SandboxError::io(&spec.dir, e))?;
        let dir = fs::canonicalize(&spec.dir).map_err(|e| SandboxError::io(&spec.dir, e))?;
        let credentials = Credentials {
            root: password(),
            agent: password(),
            repl: password(),
            app: password(),
        };
        let mut fleet = Fleet {
            dir,
            info: SandboxFile {
                app_password: credentials.app.clone(),
                ..info
            },
            servers,
            credentials,
            service_user,
            spec,
            children: Vec::new(),
            detached: false,
        };
        // On error the fleet is dropped here, which tears down what started.
        fleet.build().await?;
        Ok(fleet)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    async fn build(&mut self) -> Result<(), SandboxError> {
        // The local repository exists only where an agent uses it.
        let backups = self.path("backups");
        let local_backups = self.spec.agent_backup.is_empty()
            || self
                .spec
                .agent_backup
                .contains(&backups.display().to_string());
        for sub in ["logs", "run", "certs", "secrets"] {
            fs::create_dir_all(self.path(sub)).map_err(|e| SandboxError::io(&self.path(sub), e))?;
        }
        if local_backups {
            fs::create_dir_all(&backups).map_err(|e| SandboxError::io(&backups, e))?;
        }
        self.write_certs()?;
        let secret = self.path("secrets/agent-mysql.password");
        certs::write_file(&secret, self.credentials.agent.as_bytes(), 0o600, false)?;
        let repl = self.path("secrets/repl-mysql.password");
        certs::write_file(&repl, self.credentials.repl.as_bytes(), 0o600, false)?;
        let seal = self.path(SEAL_KEY);
        if self.spec.seal_backups {
            let (key, _) = dbfleet_common::seal::SealKey::generate();
            certs::write_file(&seal, key.as_bytes(), 0o600, false)?;
        }
        // What the service user's mysqld and agents write or read: their
        // logs and pid files, the backup repository, their passwords and
        // their own keys; nothing else (the CA key, the coordinators' and
        // the operator's keys, the other credentials stay root's).
        if let Some(u) = &self.service_user {
            let mut theirs = vec![self.path("logs"), self.path("run"), secret, repl];
            if self.spec.seal_backups {
                theirs.push(seal);
            }
            if local_backups {
                theirs.push(backups);
            }
            for s in &self.servers {
                theirs.push(certs::LeafFiles::of(&self.path("certs"), Role::Agent, &s.host).key);
                if let Some(t) = &s.tls {
                    theirs.push(t.key.clone());
                }
            }
            for path in theirs {
                u.give(&path, false)
                    .map_err(|e| SandboxError::io(&path, e))?;
            }
        }
        certs::write_file(
            &self.path("secrets/credentials.json"),
            serde_json::json!({
                "root": self.credentials.root, "dbfleet_agent": self.credentials.agent,
                "dbfleet_repl": self.credentials.repl, "app": self.credentials.app,
            })
            .to_string()
            .as_bytes(),
            0o600,
            false,
        )?;

        for s in self.servers.clone() {
            let log = self.path(&format!("logs/install-{}.log", s.host));
            // A socket left by an earlier sandbox (perhaps another user's)
            // would keep this mysqld from listening; the address was
            // checked free above, so nothing serves it.
            let _ = fs::remove_file(&s.socket);
            match s.flavor {
                Flavor::MariaDb => mariadb::install(
                    &self.spec.bins.install_db,
                    &s,
                    &log,
                    self.service_user.as_ref(),
                )?,
                Flavor::MySql => mysqld::install(
                    self.mysql()?,
                    &self.dir,
                    &s,
                    &log,
                    self.service_user.as_ref(),
                )?,
            }
            self.start_mysqld(&s.host)?;
        }
        for s in self.servers.clone() {
            let name = s.process_name();
            let log = self.path(&format!("logs/{name}.log"));
            let child = &mut self
                .children
                .iter_mut()
                .find(|(n, _)| *n == name)
                .expect("every server was started above")
                .1;
            let root = mariadb::wait_ready(&s, child, &log, Duration::from_secs(60)).await?;
            mariadb::bootstrap(root, s.flavor, &self.credentials).await?;
        }
        for primary in self.servers.iter().filter(|s| !s.read_only) {
            for replica in self
                .servers
                .iter()
                .filter(|s| s.read_only && s.cluster == primary.cluster)
            {
                mariadb::replicate_from(replica, primary, &self.credentials).await?;
            }
            mariadb::make_writable(primary, &self.credentials).await?;
        }
        for c in self.info.coordinators.clone() {
            self.write_coordinator_config(&c)?;
            self.start_coordinator(&c.id)?;
        }
        // Agents report to every coordinator from their first second; let
        // the coordinators listen first so nobody logs a needless retry.
        for c in self.info.coordinators.clone() {
            self.wait_listening(
                &format!("coordinator-{}", c.id),
                &c.address,
                Duration::from_secs(30),
            )
            .await?;
        }
        for m in self.info.members.clone() {
            self.write_agent_config(&m)?;
            self.start_agent(&m.host)?;
        }
        self.write_cli_config()?;
        let json = serde_json::to_string_pretty(&self.info)
            .map_err(|e| SandboxError::io(&self.path("sandbox.json"), e))?;
        certs::write_file(&self.path("sandbox.json"), json.as_bytes(), 0o600, false)?;
        if self.spec.operator_admission {
            self.admit_members(Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Admits every member where it reports, as its DBA would, once an
    /// active coordinator has its registration.
    async fn admit_members(&self, timeout: Duration) -> Result<(), SandboxError> {
        let client = crate::client::Client::from_file(Some(&self.path("dbfleet.toml")))
            .map_err(|e| SandboxError::Usage(e.to_string()))?;
        let give_up = tokio::time::Instant::now() + timeout;
        for m in &self.info.members {
            loop {
                match client.admit_agent(&m.host, None).await {
                    Ok(_) => break,
                    Err(e) if tokio::time::Instant::now() >= give_up => {
                        return Err(SandboxError::NotAdmitted {
                            timeout,
                            last: e.to_string(),
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(())
    }

    fn write_certs(&self) -> Result<(), SandboxError> {
        let certs_dir = self.path("certs");
        certs::init_ca(&certs_dir)?;
        for s in &self.servers {
            let mut req = LeafRequest::new(Role::Agent, s.host.clone());
            req.ips.push(s.ip.into());
            certs::issue_leaf(&certs_dir, &certs_dir, &req)?;
            if s.tls.is_some() {
                let mut req = LeafRequest::new(Role::Mysql, s.host.clone());
                req.ips.push(s.ip.into());
                certs::issue_leaf(&certs_dir, &certs_dir, &req)?;
            }
        }
        for c in &self.info.coordinators {
            let mut req = LeafRequest::new(Role::Coordinator, c.id.clone());
            let ip: SocketAddr = c
                .address
                .parse()
                .map_err(|_| SandboxError::Usage(c.address.clone()))?;
            req.ips.push(ip.ip());
            certs::issue_leaf(&certs_dir, &certs_dir, &req)?;
        }
        certs::issue_leaf(
            &certs_dir,
            &certs_dir,
            &LeafRequest::new(Role::Operator, OPERATOR),
        )?;
        Ok(())
    }

    fn tls_block(&self, role: Role, name: &str) -> String {
        let certs_dir = self.path("certs");
        let files = certs::LeafFiles::of(&certs_dir, role, name);
        format!(
            "[tls]\nca = {}\ncert = {}\nkey = {}\n",
            quoted(&certs_dir.join(certs::CA_CERT)),
            quoted(&files.cert),
            quoted(&files.key),
        )
    }

    fn write_coordinator_config(&self, c: &CoordinatorInfo) -> Result<(), SandboxError> {
        let path = self.path(&format!("coordinator-{}.toml", c.id));
        let voters: Vec<String> = self
            .info
            .members
            .iter()
            .map(|m| format!("\"{}@{}\"", m.host, m.agent_address))
            .collect();
        // The pair's other member; a one-coordinator sandbox names the
        // address the second would have, where nothing answers.
        let peer = match self.info.coordinators.iter().find(|p| p.id != c.id) {
            Some(p) => format!("{}@{}", p.id, p.address),
            None => format!("c2@{}:{COORDINATOR_PORT}", ip(self.spec.base, 22)),
        };
        let t = &self.spec.lease;
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let text = format!(
            "# Written by `dbfleet sandbox up`.\nid = {id:?}\nlisten = {addr:?}\ndata_dir = {data}\nmetrics_listen = {metrics:?}\nmysql_tls = {mysql_tls:?}\n\n[topology]\nagent_timeout = {timeout:?}\nadmission = {admission:?}\n\n[lease]\nlease = {lease:?}\nrenew_interval = {renew:?}\nrpc_timeout = {rpc:?}\ndrift_ppm = {drift}\nmargin = {margin:?}\nvoters = [{voters}]\npeer = {peer:?}\n\n{tls}",
            id = c.id,
            addr = c.address,
            data = quoted(&self.path(&format!("{}/data", c.id))),
            metrics = c.metrics_address,
            timeout = d(self.spec.agent_timeout),
            mysql_tls = if self.spec.mysql_tls {
                "required"
            } else {
                "off"
            },
            admission = if self.spec.operator_admission {
                "operator"
            } else {
                "first-report"
            },
            lease = d(t.lease),
            renew = d(t.renew_interval),
            rpc = d(t.rpc_timeout),
            drift = t.drift_ppm,
            margin = d(t.margin),
            voters = voters.join(", "),
            tls = self.tls_block(Role::Coordinator, &c.id),
        );
        let text = format!("{text}\n{}", self.spec.coordinator_extra);
        fs::write(&path, text).map_err(|e| SandboxError::io(&path, e))
    }

    fn write_agent_config(&self, m: &MemberInfo) -> Result<(), SandboxError> {
        let path = self.path(&format!("agent-{}.toml", m.host));
        let coordinators: Vec<String> = self
            .info
            .coordinators
            .iter()
            .map(|c| format!("\"{}@{}\"", c.id, c.address))
            .collect();
        let text = format!(
            "# Written by `dbfleet sandbox up`.\nhost = {host:?}\ncluster = {cluster:?}\nlisten = {listen:?}\nmetrics_listen = {metrics:?}\ncoordinators = [{coords}]\nreport_interval = {interval:?}\ncollect_interval = {collect:?}\nstate_dir = {state}\namnesia_quarantine = {quarantine:?}\n{self_fence}\n[mysql]\naddress = \"{ip}:{port}\"\nsocket = {socket}\nuser = {user:?}\npassword_file = {pw}\nreplication_user = {repl_user:?}\nreplication_password_file = {repl_pw}\n{tls_ca}pid_file = {pid}\nstart_command = [{start}]\n\n{backup}\n{tls}",
            host = m.host,
            cluster = m.cluster,
            listen = m.agent_address,
            metrics = m.metrics_address,
            coords = coordinators.join(", "),
            interval = humantime::format_duration(self.spec.report_interval).to_string(),
            collect = humantime::format_duration(self.spec.report_interval / 2).to_string(),
            state = quoted(&self.path(&format!("{}/agent-state", m.host))),
            quarantine =
                humantime::format_duration(self.spec.lease.quarantine() + Duration::from_secs(1))
                    .to_string(),
            self_fence = self
                .spec
                .self_fence_timeout
                .map(|t| format!(
                    "self_fence_timeout = {:?}\n",
                    humantime::format_duration(t).to_string()
                ))
                .unwrap_or_default(),
            ip = m.address,
            port = m.mysql_port,
            socket = quoted(&self.server(&m.host)?.socket),
            backup = self.backup_section()?,
            user = mariadb::AGENT_USER,
            pw = quoted(&self.path("secrets/agent-mysql.password")),
            repl_user = mariadb::REPL_USER,
            repl_pw = quoted(&self.path("secrets/repl-mysql.password")),
            tls_ca = self
                .info
                .mysql_tls_ca
                .as_ref()
                .map(|ca| format!("tls_ca_file = {}\n", quoted(ca)))
                .unwrap_or_default(),
            pid = quoted(&self.path(&format!("run/{}.pid", self.server(&m.host)?.process_name()))),
            start = self.mysqld_command(&m.host)?.join(", "),
            tls = self.tls_block(Role::Agent, &m.host),
        );
        fs::write(&path, text).map_err(|e| SandboxError::io(&path, e))
    }

    /// The agents' `[backup]` section: the spec's, or a repository in the
    /// sandbox; with the sandbox's seal key when backups are sealed.
    fn backup_section(&self) -> Result<String, SandboxError> {
        let section = if self.spec.agent_backup.is_empty() {
            format!("[backup]\nrepository = {}\n", quoted(&self.path("backups")))
        } else {
            self.spec.agent_backup.clone()
        };
        if !self.spec.seal_backups {
            return Ok(section);
        }
        if !section.contains("[backup]\n") {
            return Err(SandboxError::Usage(
                "to seal the backups, the agents' backup section must have a [backup] line".into(),
            ));
        }
        Ok(section.replacen(
            "[backup]\n",
            &format!(
                "[backup]\nseal_key_file = {}\n",
                quoted(&self.path(SEAL_KEY))
            ),
            1,
        ))
    }

    fn write_cli_config(&self) -> Result<(), SandboxError> {
        let files = certs::LeafFiles::of(&self.path("certs"), Role::Operator, OPERATOR);
        let cfg = CliConfig {
            coordinators: self
                .info
                .coordinators
                .iter()
                .map(|c| c.address.clone())
                .collect(),
            tls: CliTls {
                ca: self.path("certs").join(certs::CA_CERT),
                cert: files.cert,
                key: files.key,
            },
        };
        let text =
            toml::to_string(&cfg).map_err(|e| SandboxError::io(&self.path("dbfleet.toml"), e))?;
        let path = self.path("dbfleet.toml");
        fs::write(
            &path,
            format!(
                "# Written by `dbfleet sandbox up`; use with DBFLEET_CONFIG={}\n{text}",
                path.display()
            ),
        )
        .map_err(|e| SandboxError::io(&path, e))
    }

    /// Starts `program` as `name`; as the service user when `as_service`.
    fn spawn(
        &mut self,
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        as_service: bool,
    ) -> Result<(), SandboxError> {
        let log = self.path(&format!("logs/{name}.log"));
        let pidfile = self.path(&format!("run/{name}.pid"));
        let user = self.service_user.as_ref().filter(|_| as_service);
        let child = process::spawn(&program, &args, &log, &pidfile, user)
            .map_err(|e| SandboxError::io(&program, e))?;
        self.children.retain(|(n, _)| n != name);
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Waits until `address` accepts TCP connections, failing early if the
    /// process `name` exits (its log says why).
    pub async fn wait_listening(
        &mut self,
        name: &str,
        address: &str,
        timeout: Duration,
    ) -> Result<(), SandboxError> {
        let log = self.dir.join(format!("logs/{name}.log"));
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or_else(|| SandboxError::Usage(format!("{name} was not started")))?;
        process::wait_listening(child, address, timeout)
            .await
            .map_err(|e| match e {
                process::NotListening::Exited(status) => SandboxError::Mariadb(format!(
                    "{name} exited ({status}); see {}",
                    log.display()
                )),
                process::NotListening::TimedOut => SandboxError::Unhealthy {
                    timeout,
                    last: format!("{name} is not listening on {address}"),
                },
            })
    }

    /// The installed MySQL, or the error naming how to install it.
    fn mysql(&self) -> Result<&mysqld::MysqlInstall, SandboxError> {
        self.spec
            .bins
            .mysql
            .as_ref()
            .ok_or_else(|| SandboxError::Missing {
                program: "mysqld (MySQL 9.7)".into(),
                looked: match std::env::var_os(mysqld::MYSQL_HOME_ENV) {
                    Some(home) => format!(
                        "{} ({})",
                        PathBuf::from(home).display(),
                        mysqld::MYSQL_HOME_ENV
                    ),
                    None => "target/tools/mysql beside the dbfleet binaries".into(),
                },
                fix: mysqld::INSTALL_FIX.into(),
            })
    }

    /// The server program of `host` (mariadbd or MySQL's mysqld) and its
    /// arguments.
    fn server_command(&self, host: &str) -> Result<(PathBuf, Vec<String>), SandboxError> {
        let s = self.server(host)?;
        let name = s.process_name();
        let args = mariadb::args(
            s,
            &self.path(&format!("run/{name}.pid")),
            &self.path(&format!("logs/{name}.log")),
        );
        let program = match s.flavor {
            Flavor::MariaDb => self.spec.bins.mariadbd.clone(),
            Flavor::MySql => self.mysql()?.mysqld(),
        };
        Ok((program, args))
    }

    /// How `host`'s mysqld is started, as quoted TOML strings (the agent
    /// starts it this way after a restore).
    fn mysqld_command(&self, host: &str) -> Result<Vec<String>, SandboxError> {
        let (program, args) = self.server_command(host)?;
        Ok(std::iter::once(quoted(&program))
            .chain(args.iter().map(|a| quoted(Path::new(a))))
            .collect())
    }

    /// Starts (or restarts after a stop) the mysqld (mariadbd on MariaDB)
    /// of `host`.
    pub fn start_mysqld(&mut self, host: &str) -> Result<(), SandboxError> {
        let name = self.server(host)?.process_name();
        let (program, args) = self.server_command(host)?;
        self.spawn(&name, program, args, true)
    }

    /// kill -9 of `host`'s mysqld (mariadbd on MariaDB).
    pub fn kill_mysqld(&mut self, host: &str) {
        let name = self.mysqld_name(host);
        self.kill(&name);
    }

    /// The name `host`'s server runs under in `run/` and `logs/`
    /// (`mariadbd-db1`, `mysqld-db1`), for [`Fleet::kill`] and friends.
    pub fn mysqld_name(&self, host: &str) -> String {
        self.server(host)
            .map(Server::process_name)
            .unwrap_or_else(|_| format!("mariadbd-{host}"))
    }

    /// The arguments of an agent or coordinator run on `config`.
    fn daemon_args(&self, config: &Path) -> Vec<String> {
        let mut args = vec!["--config".into(), config.display().to_string()];
        if self.spec.json_logs {
            args.extend(["--log-format".into(), "json".into()]);
        }
        args
    }

    /// Starts (or restarts) the agent of `host`.
    pub fn start_agent(&mut self, host: &str) -> Result<(), SandboxError> {
        let cfg = self.path(&format!("agent-{host}.toml"));
        let args = self.daemon_args(&cfg);
        self.spawn(
            &format!("agent-{host}"),
            self.spec.bins.agent.clone(),
            args,
            true,
        )
    }

    /// Starts (or restarts) coordinator `id`.
    pub fn start_coordinator(&mut self, id: &str) -> Result<(), SandboxError> {
        let cfg = self.path(&format!("coordinator-{id}.toml"));
        let args = self.daemon_args(&cfg);
        self.spawn(
            &format!("coordinator-{id}"),
            self.spec.bins.coordinator.clone(),
            args,
            false,
        )
    }

    /// The server named `host`.
    pub fn server(&self, host: &str) -> Result<&Server, SandboxError> {
        self.servers
            .iter()
            .find(|s| s.host == host)
            .ok_or_else(|| SandboxError::Usage(format!("no member {host}")))
    }

    /// Pid of a running process of this fleet (e.g. `agent-db1`).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Stops one process gracefully (SIGTERM, SIGKILL after `grace`).
    pub fn stop(&mut self, name: &str, grace: Duration) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let pid = child.id();
            process::stop(pid, grace, &mut || matches!(child.try_wait(), Ok(Some(_))));
            let _ = child.wait();
            let _ = fs::remove_file(self.path(&format!("run/{name}.pid")));
        }
    }

    /// Kills one process with SIGKILL and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A CLI client with the sandbox's operator certificate.
    pub fn client(&self) -> Result<Client, crate::client::ClientError> {
        Client::from_file(Some(&self.path("dbfleet.toml")))
    }

    /// Path of the CLI config.
    pub fn cli_config(&self) -> PathBuf {
        self.path("dbfleet.toml")
    }

    /// Leaves the processes running and the directory in place (for
    /// `sandbox up`, whose fleet outlives the command).
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// Stops every process this fleet started and removes its directory.
    pub fn teardown(&mut self) {
        // Processes known only by their pid files: a mariadbd an agent
        // started after a restore.
        let children: Vec<u32> = self.children.iter().map(|(_, c)| c.id()).collect();
        let dir = self.dir.clone();
        let strays: Vec<u32> = process::pidfiles(&self.path("run"))
            .into_iter()
            .filter_map(|(_, path)| process::read_pid(&path))
            .filter(|p| {
                !children.contains(p) && process::alive(*p) && process::belongs_to(*p, &dir)
            })
            .collect();
        let mut names: Vec<String> = self.children.iter().map(|(n, _)| n.clone()).collect();
        names.sort_by_key(|n| process::stop_rank(n));
        for n in names {
            self.stop(&n, Duration::from_secs(10));
        }
        for pid in strays {
            process::stop(pid, Duration::from_secs(10), &mut || false);
        }
        for s in &self.servers {
            let _ = fs::remove_file(&s.socket);
        }
        // A failing test keeps its fleet's logs for diagnosis; the next
        // claimant of its test slot removes them.
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if !self.detached {
            self.teardown();
        }
    }
}

fn check_addresses_free(info: &SandboxFile) -> Result<(), SandboxError> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for m in &info.members {
        let ip: Ipv4Addr = m
            .address
            .parse()
            .map_err(|_| SandboxError::Usage(m.address.clone()))?;
        addrs.push(SocketAddr::from((ip, m.mysql_port)));
        addrs.push(SocketAddr::from((ip, AGENT_PORT)));
        addrs.push(SocketAddr::from((ip, METRICS_PORT)));
    }
    for c in &info.coordinators {
        for a in [&c.address, &c.metrics_address] {
            addrs.push(a.parse().map_err(|_| SandboxError::Usage(a.clone()))?);
        }
    }
    for a in addrs {
        TcpListener::bind(a).map_err(|_| SandboxError::AddressInUse(a))?;
    }
    Ok(())
}

/// What `down` did.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Processes stopped.
    pub stopped: Vec<String>,
    /// Pid files whose process was already gone or not ours.
    pub skipped: Vec<String>,
}

/// `dir`, which need not exist yet, as an absolute path through its
/// canonical parent.
fn absolute_dir(dir: &Path) -> Result<PathBuf, SandboxError> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = fs::canonicalize(parent).map_err(|e| SandboxError::io(parent, e))?;
    match dir.file_name() {
        Some(name) => Ok(parent.join(name)),
        None => Ok(parent),
    }
}

/// Stops the sandbox in `dir` by its pid files and removes the directory.
pub fn down(dir: &Path) -> Result<DownReport, SandboxError> {
    if !dir.exists() {
        return Err(SandboxError::Io {
            path: dir.display().to_string(),
            message: "no such directory; nothing to stop".into(),
        });
    }
    let dir = fs::canonicalize(dir).map_err(|e| SandboxError::io(dir, e))?;
    if !dir.join("sandbox.json").exists() && !dir.join("run").is_dir() {
        return Err(SandboxError::NotASandbox(dir.display().to_string()));
    }
    let mut report = DownReport::default();
    let mut files = process::pidfiles(&dir.join("run"));
    files.sort_by_key(|(n, _)| process::stop_rank(n));
    for (name, path) in files {
        match process::read_pid(&path) {
            Some(pid) if process::alive(pid) && process::belongs_to(pid, &dir) => {
                process::stop(pid, Duration::from_secs(20), &mut || false);
                report.stopped.push(name);
            }
            _ => report.skipped.push(name),
        }
    }
    if let Ok(text) = fs::read_to_string(dir.join("sandbox.json"))
        && let Ok(info) = serde_json::from_str::<SandboxFile>(&text)
    {
        for m in info.members {
            let _ = fs::remove_file(format!("/tmp/dbfleet-{}-{}.sock", m.address, m.mysql_port));
        }
    }
    fs::remove_dir_all(&dir).map_err(|e| SandboxError::io(&dir, e))?;
    Ok(report)
}
