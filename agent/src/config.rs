//! The agent's TOML config, validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbfleet_common::config::{ConfigError, load_toml};
use dbfleet_common::tls::TlsPaths;
use dbfleet_proto::model::{MysqlAddress, Name};
use serde::Deserialize;

/// Environment variable that overrides `mysql.password_file`.
pub const PASSWORD_FILE_ENV: &str = "DBFLEET_MYSQL_PASSWORD_FILE";

/// `dbfleet-agent --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's name; its certificate must be `dbfleet://agent/HOST`.
    pub host: String,
    /// A witness votes in the coordinators' lease and does nothing else:
    /// no mysqld, no cluster, no reports.
    #[serde(default)]
    pub witness: bool,
    /// The replication cluster this host belongs to (not for a witness).
    #[serde(default)]
    pub cluster: String,
    /// Log level or filter (`info`, `info,dbfleet_agent=debug`); read
    /// again on SIGHUP. Absent: `RUST_LOG`, else `info`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Where the agent keeps its fence record (the lease promise, in
    /// `voter/`), which must survive restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How long a voter whose fence record was lost grants nothing; at
    /// least the coordinators' lease × (1 + drift) + margin.
    #[serde(default = "default_amnesia_quarantine", with = "humantime_serde")]
    pub amnesia_quarantine: Duration,
    /// gRPC address coordinators call (state, later commands and votes).
    pub listen: SocketAddr,
    /// The address coordinators should dial for commands, when it differs
    /// from `listen` (NAT, a wildcard listen address).
    #[serde(default)]
    pub advertise: Option<String>,
    /// A primary cut off from the active coordinator and from all its
    /// replicas for this long turns itself read-only (brief §4), and the
    /// coordinators may count on it as a fence proof. Unset: never. Keep it
    /// above the coordinators' takeover time (only the lease holder's acks
    /// count) and the replicas' heartbeat period (a cut replica is seen
    /// when a heartbeat goes unacknowledged).
    #[serde(default, with = "humantime_serde")]
    pub self_fence_timeout: Option<Duration>,
    /// Every coordinator, `NAME@HOST:PORT`: the name its certificate
    /// carries (its `id`) and where it listens. The agent reports to each,
    /// and obeys (votes, commands, state) only these names: a certificate
    /// of role coordinator with another name is refused. The names are
    /// read again on SIGHUP; the addresses at the next start.
    pub coordinators: Vec<String>,
    /// Where Prometheus scrapes `/metrics`. Default: the `listen`
    /// address's IP on port 9104, mysqld_exporter's port, so an existing
    /// scrape config finds it. A witness serves none.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve `/metrics` over mutual TLS with the `[tls]` certificates
    /// instead of plain HTTP: scrapers need a certificate from the fleet
    /// CA with role viewer, operator or coordinator. Off by default, so an
    /// existing plain scrape config keeps working.
    #[serde(default)]
    pub metrics_tls: bool,
    /// Longest time between two reports.
    #[serde(default = "default_report_interval", with = "humantime_serde")]
    pub report_interval: Duration,
    /// How often mysqld is observed; a change is reported at once.
    #[serde(default = "default_collect_interval", with = "humantime_serde")]
    pub collect_interval: Duration,
    /// How often certificate files are checked for changes.
    #[serde(default = "default_cert_reload", with = "humantime_serde")]
    pub cert_reload_interval: Duration,
    /// How long a graceful stop may take.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The local server (not for a witness).
    #[serde(default)]
    pub mysql: Option<MysqlConfig>,
    /// Backups: where the repository is. Without it the agent refuses
    /// backup and verification commands.
    #[serde(default)]
    pub backup: Option<crate::backup::BackupConfig>,
    /// Certificates.
    pub tls: TlsPaths,
    /// The file it was loaded from (read again on SIGHUP).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// How to reach the local mysqld.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// `host:port` of mysqld, as replicas reach it.
    pub address: String,
    /// mysqld's Unix socket. When set the agent talks to its server through
    /// it rather than over TCP, so a network cut never hides the local
    /// server from its agent (a cut-off primary must still be able to fence
    /// itself read-only).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Account the agent uses.
    pub user: String,
    /// File holding the password (mode 0600); never put it in the config.
    pub password_file: PathBuf,
    /// Deadline for connecting.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline for one observation's queries.
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Account replicas of this server use to connect to their source.
    #[serde(default)]
    pub replication_user: Option<String>,
    /// File holding its password (mode 0600).
    #[serde(default)]
    pub replication_password_file: Option<PathBuf>,
    /// The CA (PEM) that signed the mysqld certificates. When set, the
    /// agent's TCP connections to MySQL (to its own server without a
    /// `socket`, and the replication account's login at `address` that
    /// checks the address) and the backup tools' use TLS and accept only a
    /// server whose certificate this CA signed for the address dialled.
    /// Without it they are plain TCP. Needed whenever mysqld sets
    /// `require_secure_transport`.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// mysqld's pid file, for `check-config` to compare with the server's
    /// `@@pid_file`. Fencing never trusts it: it identifies mysqld's
    /// process by the lock InnoDB holds on its data file (see
    /// `mysql::process`).
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// How the agent starts mysqld after restoring a backup onto it, as a
    /// program and its arguments (no shell), e.g. `["systemctl", "start",
    /// "mariadb"]`. It may return once mysqld runs or stay in the
    /// foreground (it is then left running, in its own process group).
    /// Without it the agent refuses restores: it stops mysqld with
    /// `SHUTDOWN` but could not start it again.
    #[serde(default)]
    pub start_command: Option<Vec<String>>,
}

fn default_amnesia_quarantine() -> Duration {
    Duration::from_secs(30)
}
/// mysqld_exporter's port, the agent's default for `/metrics`.
pub const METRICS_PORT: u16 = 9104;

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/dbfleet/agent")
}
fn default_report_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_collect_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_cert_reload() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_query_timeout() -> Duration {
    Duration::from_secs(2)
}

impl AgentConfig {
    /// Loads and validates `path`; `password_file_override` (from the
    /// environment) replaces `mysql.password_file`.
    pub fn load(
        path: &Path,
        password_file_override: Option<PathBuf>,
    ) -> Result<AgentConfig, ConfigError> {
        let mut c: AgentConfig = load_toml(path)?;
        c.source = Some(path.to_path_buf());
        if let (Some(p), Some(m)) = (password_file_override, c.mysql.as_mut()) {
            m.password_file = p;
        }
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        Name::parse(&c.host).map_err(|r| invalid("host", r))?;
        if let Some(l) = &c.log_level {
            dbfleet_common::telemetry::check_level(l).map_err(|r| invalid("log_level", r))?;
        }
        if c.coordinators.is_empty() {
            return Err(invalid(
                "coordinators",
                "list at least one coordinator as NAME@HOST:PORT".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, a) in c.coordinators.iter().enumerate() {
            let (name, _) =
                parse_coordinator(a).map_err(|r| invalid(&format!("coordinators[{i}]"), r))?;
            if !names.insert(name.clone()) {
                return Err(invalid(
                    &format!("coordinators[{i}]"),
                    format!("coordinator {name} is listed twice: each coordinator once"),
                ));
            }
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&c.amnesia_quarantine) {
            return Err(invalid(
                "amnesia_quarantine",
                "must be between 1s and 1h, and at least the coordinators' lease × (1 + drift) + \
                 margin (default 30s): a voter that lost its record and grants at once can \
                 grant a second coordinator the lease while the first still holds it"
                    .into(),
            ));
        }
        if c.witness {
            if c.mysql.is_some() || !c.cluster.is_empty() {
                return Err(invalid(
                    "witness",
                    "a witness watches no mysqld: remove [mysql] and cluster, or set witness = false"
                        .into(),
                ));
            }
            if c.metrics_tls {
                return Err(invalid(
                    "metrics_tls",
                    "a witness serves no /metrics: remove metrics_tls".into(),
                ));
            }
            return Ok(c);
        }
        Name::parse(&c.cluster).map_err(|r| invalid("cluster", r))?;
        if let Some(b) = &mut c.backup {
            let mut store = crate::repository::Repository::open(&b.repository, b.s3.as_ref())
                .map_err(|r| invalid("backup.repository", r))?;
            if let Some(path) = &b.seal_key_file {
                let key = dbfleet_common::seal::SealKey::load(path)
                    .map_err(|r| invalid("backup.seal_key_file", r))?;
                store = store.sealed_with(key);
            }
            b.store = Some(std::sync::Arc::new(store));
            if !(1..=19).contains(&b.compression_level) {
                return Err(invalid(
                    "backup.compression_level",
                    "must be between 1 and 19 (zstd)".into(),
                ));
            }
            if !(1..=64).contains(&b.compression_threads) {
                return Err(invalid(
                    "backup.compression_threads",
                    "must be between 1 and 64".into(),
                ));
            }
            if b.rate_limit_mib_per_s
                .is_some_and(|m| !(1..=1 << 20).contains(&m))
            {
                return Err(invalid(
                    "backup.rate_limit_mib_per_s",
                    "must be between 1 and 1048576 MiB/s; remove it for no limit".into(),
                ));
            }
            if b.archive_interval < Duration::from_millis(100) {
                return Err(invalid(
                    "backup.archive_interval",
                    "must be at least 100ms".into(),
                ));
            }
        }
        let Some(mysql) = &c.mysql else {
            return Err(invalid(
                "mysql",
                "missing [mysql] section (or set witness = true for a voting-only agent)".into(),
            ));
        };
        MysqlAddress::parse(&mysql.address).map_err(|r| invalid("mysql.address", r))?;
        if mysql.user.is_empty() {
            return Err(invalid("mysql.user", "must not be empty".into()));
        }
        for (field, d) in [
            ("mysql.connect_timeout", mysql.connect_timeout),
            ("mysql.query_timeout", mysql.query_timeout),
        ] {
            if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&d) {
                return Err(invalid(
                    field,
                    "must be between 100ms and 10m: at 0 every connection and every fence \
                     fails, and a longer one holds a failover that long"
                        .into(),
                ));
            }
        }
        if mysql
            .start_command
            .as_ref()
            .is_some_and(|c| c.first().is_none_or(|p| p.is_empty()))
        {
            return Err(invalid(
                "mysql.start_command",
                "must name a program, e.g. [\"systemctl\", \"start\", \"mariadb\"]".into(),
            ));
        }
        if mysql.replication_user.is_some() != mysql.replication_password_file.is_some() {
            return Err(invalid(
                "mysql.replication_user",
                "set both replication_user and replication_password_file, or neither".into(),
            ));
        }
        if let Some(a) = &c.advertise {
            MysqlAddress::parse(a).map_err(|r| invalid("advertise", r))?;
        }
        if c.self_fence_timeout
            .is_some_and(|t| t < Duration::from_secs(1))
        {
            return Err(invalid(
                "self_fence_timeout",
                "must be at least 1s (it must outlast a report interval or two)".into(),
            ));
        }
        if c.report_interval < Duration::from_millis(100) {
            return Err(invalid("report_interval", "must be at least 100ms".into()));
        }
        if c.collect_interval < Duration::from_millis(50) || c.collect_interval > c.report_interval
        {
            return Err(invalid(
                "collect_interval",
                "must be between 50ms and report_interval".into(),
            ));
        }
        Ok(c)
    }

    /// The parsed mysql address (validated by `load`); `None` for a witness.
    pub fn mysql_address(&self) -> Option<MysqlAddress> {
        let m = self.mysql.as_ref()?;
        Some(MysqlAddress::parse(&m.address).expect("validated in AgentConfig::load"))
    }

    /// The coordinators as (certificate name, `host:port`) (validated by
    /// `load`).
    pub fn coordinator_endpoints(&self) -> Vec<(String, String)> {
        self.coordinators
            .iter()
            .map(|c| parse_coordinator(c).expect("validated in AgentConfig::load"))
            .collect()
    }

    /// The coordinators' certificate names, the only ones obeyed.
    pub fn coordinator_names(&self) -> Vec<String> {
        self.coordinator_endpoints()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    /// Where the fence record lives: in a directory of its own, which the
    /// agent creates at its first start. Its absence is what tells a first
    /// start from a lost record, and `state_dir` itself may exist empty
    /// before the first start (systemd's `StateDirectory`, or a DBA's
    /// provisioning).
    pub fn fence_record_path(&self) -> PathBuf {
        self.state_dir.join("voter").join("fence-record.json")
    }

    /// Where earlier agents kept the fence record (moved at start).
    pub fn legacy_fence_record_path(&self) -> PathBuf {
        self.state_dir.join("fence-record.json")
    }

    /// Where the files of the observed mysqld are recorded (fencing
    /// identifies its process by them).
    pub fn known_server_path(&self) -> PathBuf {
        self.state_dir.join("mysqld-files.json")
    }

    /// Where the read-only guard keeps its durable flag.
    pub fn guard_path(&self) -> PathBuf {
        self.state_dir.join("read-only-guard.json")
    }

    /// Where `/metrics` is served (`None` for a witness).
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        if self.witness {
            return None;
        }
        Some(
            self.metrics_listen
                .unwrap_or_else(|| std::net::SocketAddr::new(self.listen.ip(), METRICS_PORT)),
        )
    }

    /// The gRPC address coordinators dial.
    pub fn command_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// The coordinators' names in the configuration file at `path`, checked as
/// `load` checks them: what SIGHUP applies.
pub fn coordinator_names_in(path: &Path) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Coordinators {
        coordinators: Vec<String>,
    }
    let c: Coordinators = load_toml(path).map_err(|e| e.to_string())?;
    if c.coordinators.is_empty() {
        return Err("coordinators lists no coordinator".into());
    }
    c.coordinators
        .iter()
        .map(|e| parse_coordinator(e).map(|(n, _)| n))
        .collect()
}

/// One `coordinators` entry, `NAME@HOST:PORT`, as (name, `host:port`).
fn parse_coordinator(entry: &str) -> Result<(String, String), String> {
    let Some((name, address)) = entry.split_once('@') else {
        return Err(format!(
            "{entry:?} names no coordinator: write NAME@HOST:PORT with the name its certificate \
             carries (the coordinator's id), e.g. \"c1@{entry}\"; the agent obeys only the \
             coordinators listed"
        ));
    };
    Name::parse(name).map_err(|r| format!("{entry:?}: {r}"))?;
    MysqlAddress::parse(address).map_err(|r| format!("{entry:?}: {r}"))?;
    Ok((name.to_string(), address.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// A mis-typed configuration is refused with an error, never a
        /// panic (the shipped example, mutated).
        #[test]
        fn a_mutated_config_is_refused_or_loaded_never_a_panic(
            text in dbfleet_common::mutation::mutated_text(include_str!("../../deploy/config/agent.toml"))
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent.toml");
            std::fs::write(&path, text).unwrap();
            let _ = AgentConfig::load(&path, None);
        }
    }

    #[test]
    fn shipped_example_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.toml");
        let c = AgentConfig::load(&p, None).unwrap();
        assert_eq!(c.coordinators.len(), 2);
        let o = AgentConfig::load(&p, Some(PathBuf::from("/run/secret"))).unwrap();
        assert_eq!(o.mysql.unwrap().password_file, PathBuf::from("/run/secret"));
    }

    #[test]
    fn shipped_witness_example_is_valid_and_a_witness_with_mysql_is_refused() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/witness.toml");
        let c = AgentConfig::load(&p, None).unwrap();
        assert!(c.witness && c.mysql.is_none());
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("w.toml");
        let text = "cluster = \"main\"\n".to_string() + &std::fs::read_to_string(&p).unwrap();
        std::fs::write(&bad, text).unwrap();
        let e = AgentConfig::load(&bad, None).unwrap_err().to_string();
        assert!(e.contains("witness watches no mysqld"), "{e}");
    }

    #[test]
    fn metrics_tls_is_off_by_default_and_refused_on_a_witness() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.toml");
        assert!(!AgentConfig::load(&p, None).unwrap().metrics_tls);
        let d = tempfile::tempdir().unwrap();
        let on = d.path().join("a.toml");
        let text = "metrics_tls = true\n".to_string() + &std::fs::read_to_string(&p).unwrap();
        std::fs::write(&on, text).unwrap();
        assert!(AgentConfig::load(&on, None).unwrap().metrics_tls);
        let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/witness.toml");
        let bad = d.path().join("w.toml");
        let text = "metrics_tls = true\n".to_string() + &std::fs::read_to_string(&w).unwrap();
        std::fs::write(&bad, text).unwrap();
        let e = AgentConfig::load(&bad, None).unwrap_err().to_string();
        assert!(e.contains("remove metrics_tls"), "{e}");
    }
}
