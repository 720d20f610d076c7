//! The coordinator's TOML config, validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbfleet_common::config::{ConfigError, load_toml};
use dbfleet_common::tls::TlsPaths;
use dbfleet_lease::{Timing, VoterSet};
use dbfleet_proto::model::Name;
use dbfleet_proto::mysql_tls::MysqlTlsMode;
use serde::Deserialize;

use crate::store::VoterList;

/// `dbfleet-coordinator --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This coordinator's id; its certificate must be `dbfleet://coordinator/ID`.
    pub id: String,
    /// gRPC address agents and operators connect to.
    pub listen: SocketAddr,
    /// Directory of the sled database (created if missing).
    pub data_dir: PathBuf,
    /// Certificates.
    pub tls: TlsPaths,
    /// How often certificate files are checked for changes.
    #[serde(default = "default_cert_reload", with = "humantime_serde")]
    pub cert_reload_interval: Duration,
    /// How long a graceful stop may take before it is cut short.
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Topology rules.
    #[serde(default)]
    pub topology: TopologyConfig,
    /// The lease and the peer coordinator.
    pub lease: LeaseConfig,
    /// Where Prometheus scrapes `/metrics` (omit to disable).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` over mutual TLS with the `[tls]` certificates:
    /// only viewer, operator and coordinator certificates may scrape. Off
    /// by default, so an existing plain scrape config keeps working.
    #[serde(default)]
    pub metrics_tls: bool,
    /// Log level or filter (`info`, `info,dbfleet_coordinator=debug`);
    /// read again on SIGHUP. Absent: `RUST_LOG`, else `info`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// TLS to MySQL for clusters whose policy does not say: `required`
    /// makes every repointed replica use verified TLS and shows members
    /// that go without it as problems; `off` (the default) accepts plain
    /// TCP.
    #[serde(default = "default_mysql_tls")]
    pub mysql_tls: MysqlTlsMode,
    /// Detection windows, anti-flap defaults, hooks.
    #[serde(default)]
    pub failover: FailoverConfig,
}

/// How failures are detected and failovers run (brief §5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// Fast path: the primary's agent says mysqld is down and the replicas
    /// agree, for this long. Also the host path's window (the agent missed
    /// two reports and every other member lost the primary since), counted
    /// from the primary's last report.
    #[serde(default = "default_fast_window", with = "humantime_serde")]
    pub fast_window: Duration,
    /// Slow path: the primary's agent is silent (beyond the agent timeout)
    /// and the replicas agree, for this long.
    #[serde(default = "default_slow_window", with = "humantime_serde")]
    pub slow_window: Duration,
    /// Automatic failovers per cluster per window before `dbfleet ack`.
    #[serde(default = "default_budget")]
    pub budget: u32,
    /// The anti-flap window.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// More clusters than this dead at once holds every automatic failover
    /// (a network problem on our side is likelier than many deaths).
    #[serde(default = "default_breaker")]
    pub breaker_max_dead_clusters: usize,
    /// How long frozen replicas may take to apply their relay logs.
    #[serde(default = "default_apply_timeout", with = "humantime_serde")]
    pub apply_timeout: Duration,
    /// Replication heartbeat period set on every repointed replica.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub replica_heartbeat: Duration,
    /// Replica net timeout set on every repointed replica.
    #[serde(default = "default_net_timeout", with = "humantime_serde")]
    pub replica_net_timeout: Duration,
    /// Runs before a failover or switchover with the JSON payload on
    /// stdin; a non-zero exit vetoes it. Program and arguments.
    #[serde(default)]
    pub pre_hook: Vec<String>,
    /// Runs after a promotion (routing: ProxySQL, VIP, DNS).
    #[serde(default)]
    pub post_hook: Vec<String>,
    /// Powers off or isolates the old primary; exit 0 is a fence proof.
    #[serde(default)]
    pub stonith_hook: Vec<String>,
    /// Longest run of a hook.
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub hook_timeout: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            fast_window: default_fast_window(),
            slow_window: default_slow_window(),
            budget: default_budget(),
            window: default_window(),
            breaker_max_dead_clusters: default_breaker(),
            apply_timeout: default_apply_timeout(),
            replica_heartbeat: default_heartbeat(),
            replica_net_timeout: default_net_timeout(),
            pre_hook: Vec::new(),
            post_hook: Vec::new(),
            stonith_hook: Vec::new(),
            hook_timeout: default_hook_timeout(),
        }
    }
}

fn default_mysql_tls() -> MysqlTlsMode {
    MysqlTlsMode::Off
}

fn default_fast_window() -> Duration {
    Duration::from_secs(1)
}
fn default_slow_window() -> Duration {
    Duration::from_secs(5)
}
fn default_budget() -> u32 {
    1
}
fn default_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_breaker() -> usize {
    2
}
fn default_apply_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_net_timeout() -> Duration {
    Duration::from_secs(4)
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The coordinators' lease (reference §3.3, §3.9): timings, the voters it
/// starts with, and the other coordinator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// `T`: a majority of grants keeps the active for this long.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// `r`: renewal interval (normally lease / 5).
    #[serde(default = "default_renew", with = "humantime_serde")]
    pub renew_interval: Duration,
    /// `τ`: how long one round of lease requests may take.
    #[serde(default = "default_rpc_timeout", with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// `ρ`: largest clock-rate error assumed, in parts per million.
    #[serde(default = "default_drift")]
    pub drift_ppm: u32,
    /// `δ`: safety margin the active gives up at the end of its lease.
    #[serde(default = "default_margin", with = "humantime_serde")]
    pub margin: Duration,
    /// The voter list used until one is committed to desired state:
    /// `NAME@IP:PORT` of agents (or witnesses). Both coordinators must
    /// start with the same list.
    pub voters: Vec<String>,
    /// The other coordinator, `ID@IP:PORT`.
    pub peer: String,
    /// The address the peer and operators are redirected to for this
    /// coordinator (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// How long an operator write waits for the standby's acknowledgement
    /// before the active carries on without it.
    #[serde(default = "default_standby_ack", with = "humantime_serde")]
    pub standby_ack_timeout: Duration,
}

/// `NAME@IP:PORT`, as voters and peers are written.
pub fn parse_named_address(s: &str) -> Result<(String, String), String> {
    let (name, addr) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?} is not NAME@IP:PORT"))?;
    Name::parse(name)?;
    addr.parse::<SocketAddr>()
        .map_err(|_| format!("{addr:?} in {s:?} is not IP:PORT"))?;
    Ok((name.to_string(), addr.to_string()))
}

impl LeaseConfig {
    /// The lease timings.
    pub fn timing(&self) -> Timing {
        Timing {
            lease: self.lease,
            renew_interval: self.renew_interval,
            rpc_timeout: self.rpc_timeout,
            drift_ppm: self.drift_ppm,
            margin: self.margin,
        }
    }

    /// The configured voters, parsed (validated by `load`).
    pub fn voter_list(&self) -> VoterList {
        let parsed: Vec<(String, String)> = self
            .voters
            .iter()
            .map(|v| parse_named_address(v).expect("validated in CoordinatorConfig::load"))
            .collect();
        let set = VoterSet::new(parsed.iter().map(|(n, _)| (n.clone(), 1)).collect())
            .expect("validated in CoordinatorConfig::load");
        VoterList {
            set,
            addresses: parsed.into_iter().collect(),
        }
    }

    /// The peer's id and address (validated by `load`).
    pub fn peer(&self) -> (String, String) {
        parse_named_address(&self.peer).expect("validated in CoordinatorConfig::load")
    }
}

fn default_lease() -> Duration {
    Duration::from_secs(10)
}
fn default_renew() -> Duration {
    Duration::from_secs(2)
}
fn default_rpc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_drift() -> u32 {
    10_000
}
fn default_margin() -> Duration {
    Duration::from_secs(1)
}
fn default_standby_ack() -> Duration {
    Duration::from_secs(2)
}

/// Thresholds for judging members.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// An agent silent for longer is flagged as not reporting.
    #[serde(default = "default_agent_timeout", with = "humantime_serde")]
    pub agent_timeout: Duration,
    /// Lag threshold for clusters without their own policy.
    #[serde(default = "default_max_lag")]
    pub default_max_lag_seconds: u64,
    /// How an agent never seen before becomes a member: `"operator"` (the
    /// default: `dbfleet agents admit`) or `"first-report"` (admitted and
    /// pinned where its first report says).
    #[serde(default)]
    pub admission: crate::membership::Admission,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            agent_timeout: default_agent_timeout(),
            default_max_lag_seconds: default_max_lag(),
            admission: Default::default(),
        }
    }
}

fn default_cert_reload() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown() -> Duration {
    Duration::from_secs(10)
}
fn default_agent_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_lag() -> u64 {
    60
}

/// Whether `program` (a hook's) can be run: an absolute path to an
/// executable file, or a name found in `PATH`. A missing pre-hook would
/// veto every failover, a missing STONITH hook prove nothing, only when
/// it is needed.
fn runnable(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = Path::new(program);
    let found = if path.is_absolute() {
        executable(path)
    } else if program.contains('/') {
        return Err(format!(
            "{program:?} is a relative path: give the program's absolute path"
        ));
    } else {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| executable(&d.join(program))))
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "{program:?} does not exist or is not executable: a hook that cannot run fails every time it is needed"
        ))
    }
}

impl CoordinatorConfig {
    /// Loads and validates `path`.
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let c: CoordinatorConfig = load_toml(path)?;
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        Name::parse(&c.id).map_err(|r| invalid("id", r))?;
        if let Some(l) = &c.log_level {
            dbfleet_common::telemetry::check_level(l).map_err(|r| invalid("log_level", r))?;
        }
        if c.topology.agent_timeout < Duration::from_millis(500) {
            return Err(invalid(
                "topology.agent_timeout",
                "must be at least 500ms (several agent report intervals)".into(),
            ));
        }
        if c.topology.default_max_lag_seconds == 0 {
            return Err(invalid(
                "topology.default_max_lag_seconds",
                "must be at least 1".into(),
            ));
        }
        c.lease
            .timing()
            .validate()
            .map_err(|e| invalid("lease", format!("unsafe lease timings: {e}")))?;
        if c.lease.voters.is_empty() {
            return Err(invalid(
                "lease.voters",
                "list the voting agents as NAME@IP:PORT (three or more for fault tolerance)".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, v) in c.lease.voters.iter().enumerate() {
            let (name, _) =
                parse_named_address(v).map_err(|r| invalid(&format!("lease.voters[{i}]"), r))?;
            if !names.insert(name.clone()) {
                return Err(invalid(
                    &format!("lease.voters[{i}]"),
                    format!(
                        "voter {name} is listed twice: a majority counted over duplicates is no majority; list each voter once"
                    ),
                ));
            }
        }
        let (peer, _) = parse_named_address(&c.lease.peer).map_err(|r| invalid("lease.peer", r))?;
        if peer == c.id {
            return Err(invalid(
                "lease.peer",
                "names this coordinator itself; name the other coordinator".into(),
            ));
        }
        if c.failover.budget == 0 {
            return Err(invalid(
                "failover.budget",
                "must be at least 1: 0 holds every automatic failover (to hold them on purpose, \
                 use `dbfleet failover-policy` per cluster)"
                    .into(),
            ));
        }
        if c.failover.window < Duration::from_secs(1) {
            return Err(invalid(
                "failover.window",
                "must be at least 1s: the anti-flap budget counts failovers within it".into(),
            ));
        }
        for (field, hook) in [
            ("failover.pre_hook", &c.failover.pre_hook),
            ("failover.post_hook", &c.failover.post_hook),
            ("failover.stonith_hook", &c.failover.stonith_hook),
        ] {
            if let Some(program) = hook.first() {
                runnable(program).map_err(|r| invalid(field, r))?;
            }
        }
        if c.cert_reload_interval < Duration::from_secs(1) {
            return Err(invalid(
                "cert_reload_interval",
                "must be at least 1s".into(),
            ));
        }
        Ok(c)
    }
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
            text in dbfleet_common::mutation::mutated_text(include_str!("../../deploy/config/coordinator.toml"))
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("coordinator.toml");
            std::fs::write(&path, text).unwrap();
            let _ = CoordinatorConfig::load(&path);
        }
    }

    #[test]
    fn shipped_example_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/coordinator.toml");
        let c = CoordinatorConfig::load(&p).unwrap();
        assert_eq!(c.topology.agent_timeout, Duration::from_secs(5));
        assert_eq!(c.lease.voter_list().set.voters.len(), 3);
        assert_eq!(c.lease.peer().0, "c2");
    }

    #[test]
    fn unsafe_lease_timings_refuse_to_start() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/coordinator.toml");
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("renew_interval = \"2s\"", "renew_interval = \"8s\"");
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("c.toml");
        std::fs::write(&bad, text).unwrap();
        let e = CoordinatorConfig::load(&bad).unwrap_err().to_string();
        assert!(
            e.contains("lease") && e.contains("shorten renew_interval"),
            "{e}"
        );
    }
}
