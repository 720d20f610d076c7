//! Validated domain types for the messages a receiver acts on.
//!
//! Receivers convert with `TryFrom<pb::X>`, which names the offending field in
//! a [`ProtocolError`]; senders convert back with the infallible `From`. Types
//! are precise where the wire is loose: a reachable server always has a flavor
//! and a version, a replica always has a source address.

use std::fmt;
use std::str::FromStr;

use crate::pb;

/// A message that failed validation; answered with `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A required field was absent or empty.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field was present but its value is not acceptable.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `mysql.replication.source_port`.
        field: &'static str,
        /// What is wrong with it, in words an operator can act on.
        reason: String,
    },
}

/// The longest reason a refusal carries: a reason may quote the refused
/// value, and a peer sending megabytes must not get them into every log
/// line and error that mentions the refusal.
const MAX_REASON: usize = 512;

impl ProtocolError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ProtocolError::Invalid {
            field,
            reason: clip(&reason.into(), MAX_REASON),
        }
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), saying how
/// much was left out.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

impl From<ProtocolError> for tonic::Status {
    fn from(e: ProtocolError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// A host or cluster name: what certificates, configs and logs call a thing.
///
/// Restricted to `[A-Za-z0-9._-]`, 1 to 63 characters, so it is safe in a
/// certificate URI, a file name and a metric label alike.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Checks `s` against the naming rule; the error says which rule failed.
    pub fn parse(s: &str) -> Result<Name, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > 63 {
            return Err(format!("{s:?} is longer than 63 characters"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "{s:?} contains {c:?}; use letters, digits, '.', '_' and '-' only"
            ));
        }
        Ok(Name(s.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::parse(s)
    }
}

fn name_field(field: &'static str, value: &str) -> Result<Name, ProtocolError> {
    if value.is_empty() {
        return Err(ProtocolError::Missing(field));
    }
    Name::parse(value).map_err(|r| ProtocolError::invalid(field, r))
}

/// A MySQL endpoint as replicas dial it: host (name or IP) and TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MysqlAddress {
    /// Host name or IP address, compared case-insensitively.
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
}

impl MysqlAddress {
    /// Parses `host:port` (IPv6 as `[addr]:port`).
    pub fn parse(s: &str) -> Result<MysqlAddress, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{:?} has no host", clip(s, 80)));
        }
        if host.parse::<std::net::IpAddr>().is_err() && !is_host_name(host) {
            return Err(format!(
                "{:?} is neither an IP address nor a host name (letters, digits, '-', '_' and '.', at most 253 characters)",
                clip(s, 80)
            ));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?} has no valid port"))?;
        if port == 0 {
            return Err(format!("{s:?} has port 0"));
        }
        Ok(MysqlAddress {
            host: host.to_string(),
            port,
        })
    }

    /// True when both name the same endpoint (host compared without case).
    pub fn same_endpoint(&self, other: &MysqlAddress) -> bool {
        self.port == other.port && self.host.eq_ignore_ascii_case(&other.host)
    }
}

/// A DNS name (or an `/etc/hosts` name with underscores): dot-separated
/// labels of letters, digits, '-' and '_', each 1 to 63 long, at most 253
/// in all. Nothing a shell, a SQL string or a log reader would read as
/// anything but a name.
fn is_host_name(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for MysqlAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The server family; every SQL difference in the agent hangs off it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// MariaDB 10.6 and later (domain-server-seq GTIDs, `SHOW SLAVE STATUS`).
    MariaDb,
    /// MySQL 8.4 and later; 9.7 is tested (UUID GTID sets, `SHOW REPLICA STATUS`).
    MySql,
}

impl Flavor {
    /// Lower-case name used in tables, JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::MariaDb => "mariadb",
            Flavor::MySql => "mysql",
        }
    }
}

impl From<Flavor> for pb::Flavor {
    fn from(f: Flavor) -> Self {
        match f {
            Flavor::MariaDb => pb::Flavor::Mariadb,
            Flavor::MySql => pb::Flavor::Mysql,
        }
    }
}

/// The replication IO thread as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoThread {
    /// Not running (`Slave_IO_Running: No`).
    Stopped,
    /// Trying to connect to its source (`Connecting`).
    Connecting,
    /// Connected and receiving (`Yes`).
    Running,
}

impl From<IoThread> for pb::IoThreadState {
    fn from(s: IoThread) -> Self {
        match s {
            IoThread::Stopped => pb::IoThreadState::Stopped,
            IoThread::Connecting => pb::IoThreadState::Connecting,
            IoThread::Running => pb::IoThreadState::Running,
        }
    }
}

/// GTID positions; which ones are filled depends on the flavor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidState {
    /// Every transaction this server has (MySQL gtid_executed, MariaDB gtid_current_pos).
    pub executed: String,
    /// MariaDB gtid_current_pos.
    pub current_pos: String,
    /// MariaDB gtid_binlog_pos.
    pub binlog_pos: String,
    /// MariaDB gtid_slave_pos.
    pub slave_pos: String,
}

/// A configured replication channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// The source this replica dials.
    pub source: MysqlAddress,
    /// IO thread state.
    pub io_thread: IoThread,
    /// SQL (applier) thread running.
    pub sql_running: bool,
    /// Last IO error text, empty when none.
    pub last_io_error: String,
    /// Last SQL error text, empty when none.
    pub last_sql_error: String,
    /// Lag in seconds; `None` when the server does not know it.
    pub seconds_behind: Option<u64>,
    /// GTID auto-positioning in use.
    pub auto_position: bool,
    /// GTIDs the IO thread has received.
    pub received_gtid: String,
    /// Heartbeat period asked of the source.
    pub heartbeat_ms: Option<u64>,
    /// `slave_net_timeout`: silence before the replica reconnects.
    pub net_timeout_ms: Option<u64>,
    /// How the connection to the source is secured; `None` when the agent
    /// does not say.
    pub tls: Option<crate::mysql_tls::LinkTls>,
}

/// Semi-synchronous replication switches and their live state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SemiSync {
    /// Source side enabled.
    pub source_enabled: bool,
    /// Source side currently waiting for acks (not fallen back to async).
    pub source_active: bool,
    /// Replica side enabled.
    pub replica_enabled: bool,
    /// Replica side currently acknowledging.
    pub replica_active: bool,
    /// How long a commit waits for an ack before falling back to async.
    pub timeout_ms: u64,
    /// Keeps waiting with no replica connected.
    pub wait_no_replica: bool,
    /// Replicas acknowledging now.
    pub clients: u32,
}

/// Longer than this, a semi-sync source never falls back to async in
/// practice: a commit waits (and is not acknowledged) until a replica acks.
pub const SEMI_SYNC_NO_FALLBACK_MS: u64 = 24 * 3600 * 1000;

impl SemiSync {
    /// Every acknowledged commit is on at least one acknowledging replica:
    /// semi-sync enabled, no timeout fallback, waits even with no replica.
    pub fn lossless(&self) -> bool {
        self.source_enabled && self.wait_no_replica && self.timeout_ms >= SEMI_SYNC_NO_FALLBACK_MS
    }
}

/// The agent's own state that travels with its reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentState {
    /// gRPC address for commands (empty when not advertised).
    pub address: String,
    /// The agent keeps mysqld read-only until a Promote.
    pub fenced: bool,
    /// Why (a Fence command, a crash of a primary, a self-fence).
    pub fence_reason: String,
    /// Self-fence timeout of a cut-off primary; zero when disabled.
    pub self_fence_timeout_ms: u64,
    /// Longest time between reports, which bounds when a self-fence acts.
    pub report_interval_ms: u64,
    /// Backup and verification jobs, running and recently finished.
    pub jobs: Vec<pb::Job>,
    /// Binlog archiving, when the agent archives.
    pub binlog_archive: Option<pb::BinlogArchive>,
    /// Load counters, when mysqld answered.
    pub load: Option<pb::ServerLoad>,
    /// What the agent's configuration checks found.
    pub config_problems: Vec<ConfigProblem>,
}

/// Kinds of [`ConfigProblem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigProblemKind {
    /// mysqld's configuration would start it writable after a restart.
    StartsWritable,
    /// `[mysql] address` does not reach the server behind the socket:
    /// never a candidate, never a source to repoint to.
    MysqlAddressMismatch,
    /// The agent cannot identify mysqld's process (no fence proof, no kill).
    CannotIdentifyMysqld,
    /// The agent account lacks a privilege dbfleet needs.
    MissingPrivilege,
    /// mysqld was started by socket activation (`mariadb.socket`): the
    /// service manager starts it again on the next connection, so it can
    /// never be proven stopped.
    SocketActivated,
    /// A kind this build does not know (from a newer agent), kept as sent.
    Other(String),
}

impl ConfigProblemKind {
    /// The cluster problem's kind.
    pub fn as_str(&self) -> &str {
        match self {
            ConfigProblemKind::StartsWritable => "starts-writable",
            ConfigProblemKind::MysqlAddressMismatch => "mysql-address-mismatch",
            ConfigProblemKind::CannotIdentifyMysqld => "cannot-identify-mysqld",
            ConfigProblemKind::MissingPrivilege => "missing-privilege",
            ConfigProblemKind::SocketActivated => "socket-activated",
            ConfigProblemKind::Other(s) => s,
        }
    }

    /// The kind `s` names.
    pub fn parse(s: &str) -> ConfigProblemKind {
        match s {
            "starts-writable" => ConfigProblemKind::StartsWritable,
            "mysql-address-mismatch" => ConfigProblemKind::MysqlAddressMismatch,
            "cannot-identify-mysqld" => ConfigProblemKind::CannotIdentifyMysqld,
            "missing-privilege" => ConfigProblemKind::MissingPrivilege,
            "socket-activated" => ConfigProblemKind::SocketActivated,
            other => ConfigProblemKind::Other(other.to_string()),
        }
    }
}

/// One thing the agent found wrong in its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// What kind.
    pub kind: ConfigProblemKind,
    /// In words, with the fix.
    pub message: String,
}

impl From<&ConfigProblem> for pb::ConfigProblem {
    fn from(p: &ConfigProblem) -> pb::ConfigProblem {
        pb::ConfigProblem {
            kind: p.kind.as_str().to_string(),
            message: p.message.clone(),
        }
    }
}

impl TryFrom<pb::ConfigProblem> for ConfigProblem {
    type Error = ProtocolError;

    fn try_from(m: pb::ConfigProblem) -> Result<Self, Self::Error> {
        if m.kind.is_empty() || m.kind.len() > 64 {
            return Err(ProtocolError::invalid(
                "config_problems.kind",
                "must be 1 to 64 characters",
            ));
        }
        if m.message.is_empty() {
            return Err(ProtocolError::Missing("config_problems.message"));
        }
        Ok(ConfigProblem {
            kind: ConfigProblemKind::parse(&m.kind),
            message: m.message,
        })
    }
}

/// Binary log settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binlog {
    /// `log_bin` on.
    pub enabled: bool,
    /// `binlog_format`.
    pub format: String,
}

/// What a reachable server looked like at one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// `@@version`.
    pub version: String,
    /// Detected family.
    pub flavor: Flavor,
    /// `@@server_id`.
    pub server_id: u32,
    /// `@@server_uuid` (MySQL only; empty on MariaDB).
    pub server_uuid: String,
    /// `@@read_only`.
    pub read_only: bool,
    /// `@@super_read_only` (MySQL); equals `read_only` on MariaDB.
    pub super_read_only: bool,
    /// GTID positions.
    pub gtid: GtidState,
    /// Present when configured as a replica.
    pub replication: Option<Replication>,
    /// Semi-sync state.
    pub semi_sync: SemiSync,
    /// Binary log settings.
    pub binlog: Binlog,
    /// Replicas connected now: with self-fencing on, those whose
    /// connection the kernel shows alive; otherwise the dump threads.
    pub replicas_connected: u32,
    /// Server ids of the replicas registered with it now.
    pub replica_server_ids: Vec<u32>,
    /// Its TLS and the agent's connection to it; `None` when the agent
    /// does not say.
    pub tls: Option<crate::mysql_tls::ServerTls>,
}

impl ServerState {
    /// Accepts ordinary writes: neither read_only nor super_read_only.
    pub fn writable(&self) -> bool {
        !self.read_only && !self.super_read_only
    }
}

/// Either a fresh observation of the server or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MysqlObservation {
    /// The agent could not query mysqld.
    Unreachable {
        /// The reason, free of credentials.
        error: String,
    },
    /// The agent queried mysqld successfully.
    Reachable(Box<ServerState>),
}

/// One validated agent report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Reporting host; checked against the certificate by the coordinator.
    pub host: Name,
    /// Cluster the host belongs to.
    pub cluster: Name,
    /// Per-process nonce of the agent.
    pub agent_instance: String,
    /// Per-process report counter.
    pub sequence: u64,
    /// Agent clock at observation, Unix ms.
    pub observed_at_unix_ms: i64,
    /// Agent build version.
    pub agent_version: String,
    /// Where replicas reach this server.
    pub mysql_address: MysqlAddress,
    /// The observation itself.
    pub mysql: MysqlObservation,
    /// The agent's fence and address.
    pub agent: AgentState,
}

impl TryFrom<pb::AgentReport> for Report {
    type Error = ProtocolError;

    fn try_from(m: pb::AgentReport) -> Result<Self, Self::Error> {
        let host = name_field("host", &m.host)?;
        let cluster = name_field("cluster", &m.cluster)?;
        if m.agent_instance.is_empty() {
            return Err(ProtocolError::Missing("agent_instance"));
        }
        if m.mysql_address.is_empty() {
            return Err(ProtocolError::Missing("mysql_address"));
        }
        let mysql_address = MysqlAddress::parse(&m.mysql_address)
            .map_err(|r| ProtocolError::invalid("mysql_address", r))?;
        let mysql = m.mysql.ok_or(ProtocolError::Missing("mysql"))?;
        let mysql = if mysql.reachable {
            MysqlObservation::Reachable(Box::new(server_state(mysql)?))
        } else {
            MysqlObservation::Unreachable { error: mysql.error }
        };
        Ok(Report {
            host,
            cluster,
            agent_instance: m.agent_instance,
            sequence: m.sequence,
            observed_at_unix_ms: m.observed_at_unix_ms,
            agent_version: m.agent_version,
            mysql_address,
            mysql,
            agent: AgentState {
                address: m.agent_address,
                fenced: m.fenced,
                fence_reason: m.fence_reason,
                self_fence_timeout_ms: m.self_fence_timeout_ms,
                report_interval_ms: m.report_interval_ms,
                jobs: m.jobs,
                binlog_archive: m.binlog_archive,
                load: m.load,
                config_problems: m
                    .config_problems
                    .into_iter()
                    .map(ConfigProblem::try_from)
                    .collect::<Result<_, _>>()?,
            },
        })
    }
}

fn server_state(m: pb::MysqlState) -> Result<ServerState, ProtocolError> {
    let flavor = match pb::Flavor::try_from(m.flavor) {
        Ok(pb::Flavor::Mariadb) => Flavor::MariaDb,
        Ok(pb::Flavor::Mysql) => Flavor::MySql,
        Ok(pb::Flavor::Unspecified) => return Err(ProtocolError::Missing("mysql.flavor")),
        Err(_) => {
            return Err(ProtocolError::invalid(
                "mysql.flavor",
                format!("unknown value {}", m.flavor),
            ));
        }
    };
    if m.version.is_empty() {
        return Err(ProtocolError::Missing("mysql.version"));
    }
    let replication = m.replication.map(replication).transpose()?;
    let gtid = m.gtid.unwrap_or_default();
    let semi = m.semi_sync.unwrap_or_default();
    let binlog = m.binlog.unwrap_or_default();
    Ok(ServerState {
        version: m.version,
        flavor,
        server_id: m.server_id,
        server_uuid: m.server_uuid,
        read_only: m.read_only,
        super_read_only: m.super_read_only,
        gtid: GtidState {
            executed: gtid.executed,
            current_pos: gtid.current_pos,
            binlog_pos: gtid.binlog_pos,
            slave_pos: gtid.slave_pos,
        },
        replication,
        semi_sync: SemiSync {
            source_enabled: semi.source_enabled,
            source_active: semi.source_active,
            replica_enabled: semi.replica_enabled,
            replica_active: semi.replica_active,
            timeout_ms: semi.timeout_ms,
            wait_no_replica: semi.wait_no_replica,
            clients: semi.clients,
        },
        binlog: Binlog {
            enabled: binlog.enabled,
            format: binlog.format,
        },
        replicas_connected: m.replicas_connected,
        replica_server_ids: m.replica_server_ids,
        tls: crate::mysql_tls::ServerTls::from_pb(m.tls)?,
    })
}

fn replication(r: pb::ReplicationStatus) -> Result<Replication, ProtocolError> {
    if r.source_host.is_empty() {
        return Err(ProtocolError::Missing("mysql.replication.source_host"));
    }
    let port = u16::try_from(r.source_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            ProtocolError::invalid(
                "mysql.replication.source_port",
                format!("{} is not a TCP port (1-65535)", r.source_port),
            )
        })?;
    let io_thread = match pb::IoThreadState::try_from(r.io_thread) {
        Ok(pb::IoThreadState::Stopped) => IoThread::Stopped,
        Ok(pb::IoThreadState::Connecting) => IoThread::Connecting,
        Ok(pb::IoThreadState::Running) => IoThread::Running,
        Ok(pb::IoThreadState::Unspecified) => {
            return Err(ProtocolError::Missing("mysql.replication.io_thread"));
        }
        Err(_) => {
            return Err(ProtocolError::invalid(
                "mysql.replication.io_thread",
                format!("unknown value {}", r.io_thread),
            ));
        }
    };
    Ok(Replication {
        source: MysqlAddress {
            host: r.source_host,
            port,
        },
        io_thread,
        sql_running: r.sql_running,
        last_io_error: r.last_io_error,
        last_sql_error: r.last_sql_error,
        seconds_behind: r.seconds_behind,
        auto_position: r.auto_position,
        received_gtid: r.received_gtid,
        heartbeat_ms: r.heartbeat_ms,
        net_timeout_ms: r.net_timeout_ms,
        tls: crate::mysql_tls::LinkTls::from_pb(r.tls)?,
    })
}

impl From<ServerState> for pb::MysqlState {
    fn from(s: ServerState) -> Self {
        pb::MysqlState {
            reachable: true,
            error: String::new(),
            version: s.version,
            flavor: pb::Flavor::from(s.flavor) as i32,
            server_id: s.server_id,
            server_uuid: s.server_uuid,
            read_only: s.read_only,
            super_read_only: s.super_read_only,
            gtid: Some(pb::GtidState {
                executed: s.gtid.executed,
                current_pos: s.gtid.current_pos,
                binlog_pos: s.gtid.binlog_pos,
                slave_pos: s.gtid.slave_pos,
            }),
            replication: s.replication.map(|r| pb::ReplicationStatus {
                source_host: r.source.host,
                source_port: u32::from(r.source.port),
                io_thread: pb::IoThreadState::from(r.io_thread) as i32,
                sql_running: r.sql_running,
                last_io_error: r.last_io_error,
                last_sql_error: r.last_sql_error,
                seconds_behind: r.seconds_behind,
                auto_position: r.auto_position,
                received_gtid: r.received_gtid,
                heartbeat_ms: r.heartbeat_ms,
                net_timeout_ms: r.net_timeout_ms,
                tls: crate::mysql_tls::LinkTls::to_pb(r.tls),
            }),
            semi_sync: Some(pb::SemiSyncState {
                source_enabled: s.semi_sync.source_enabled,
                source_active: s.semi_sync.source_active,
                replica_enabled: s.semi_sync.replica_enabled,
                replica_active: s.semi_sync.replica_active,
                timeout_ms: s.semi_sync.timeout_ms,
                wait_no_replica: s.semi_sync.wait_no_replica,
                clients: s.semi_sync.clients,
            }),
            binlog: Some(pb::BinlogState {
                enabled: s.binlog.enabled,
                format: s.binlog.format,
            }),
            replicas_connected: s.replicas_connected,
            replica_server_ids: s.replica_server_ids,
            tls: s.tls.map(pb::MysqlTlsState::from),
        }
    }
}

/// A reachable server's state, as command replies carry it.
impl TryFrom<pb::MysqlState> for ServerState {
    type Error = ProtocolError;

    fn try_from(m: pb::MysqlState) -> Result<Self, Self::Error> {
        server_state(m)
    }
}

impl From<Report> for pb::AgentReport {
    fn from(r: Report) -> Self {
        let mysql = match r.mysql {
            MysqlObservation::Unreachable { error } => pb::MysqlState {
                reachable: false,
                error,
                ..Default::default()
            },
            MysqlObservation::Reachable(s) => pb::MysqlState::from(*s),
        };
        pb::AgentReport {
            host: r.host.0,
            cluster: r.cluster.0,
            agent_instance: r.agent_instance,
            sequence: r.sequence,
            observed_at_unix_ms: r.observed_at_unix_ms,
            agent_version: r.agent_version,
            mysql_address: r.mysql_address.to_string(),
            mysql: Some(mysql),
            agent_address: r.agent.address,
            fenced: r.agent.fenced,
            fence_reason: r.agent.fence_reason,
            self_fence_timeout_ms: r.agent.self_fence_timeout_ms,
            report_interval_ms: r.agent.report_interval_ms,
            jobs: r.agent.jobs,
            binlog_archive: r.agent.binlog_archive,
            load: r.agent.load,
            config_problems: r
                .agent
                .config_problems
                .iter()
                .map(pb::ConfigProblem::from)
                .collect(),
        }
    }
}

/// A validated policy change for one cluster: the fields that are `Some`
/// change, the others keep their value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPolicyChange {
    /// The cluster to change.
    pub cluster: Name,
    /// Replica lag above which the coordinator flags a problem.
    pub max_lag_seconds: Option<u64>,
    /// Replication heartbeat period, in ms.
    pub replica_heartbeat_ms: Option<u64>,
    /// Replica net timeout, in ms (whole seconds: MariaDB and MySQL keep
    /// it in seconds).
    pub replica_net_timeout_ms: Option<u64>,
    /// Semi-sync as dbfleet keeps it on every member.
    pub semi_sync: Option<SemiSyncMode>,
    /// TLS to MySQL.
    pub mysql_tls: Option<crate::mysql_tls::MysqlTlsMode>,
}

/// Semi-sync as a cluster's policy asks dbfleet to keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SemiSyncMode {
    /// Every acknowledged commit is on a replica: the primary's source side
    /// waits (AFTER_SYNC, with no replica too, never falling back), every
    /// replica acknowledges. A dead primary host is then fenced by
    /// stopping its replicas.
    Lossless,
    /// Asynchronous replication: no member waits or acknowledges.
    Off,
}

impl SemiSyncMode {
    /// As the CLI and JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SemiSyncMode::Lossless => "lossless",
            SemiSyncMode::Off => "off",
        }
    }

    /// The mode `s` names.
    pub fn parse(s: &str) -> Result<SemiSyncMode, String> {
        match s {
            "lossless" => Ok(SemiSyncMode::Lossless),
            "off" => Ok(SemiSyncMode::Off),
            other => Err(format!(
                "\"{other}\" is not a semi-sync mode: use lossless or off"
            )),
        }
    }
}

/// Shortest heartbeat period a policy may ask for: shorter ones cost
/// every primary an event per replica that often, for no faster failover
/// than the report interval allows.
pub const MIN_REPLICA_HEARTBEAT_MS: u64 = 100;
/// Longest heartbeat period or net timeout a policy may ask for.
pub const MAX_REPLICA_TIMING_MS: u64 = 3_600_000;

impl TryFrom<pb::SetClusterPolicyRequest> for ClusterPolicyChange {
    type Error = ProtocolError;

    fn try_from(m: pb::SetClusterPolicyRequest) -> Result<Self, Self::Error> {
        let cluster = name_field("cluster", &m.cluster)?;
        if m.max_lag_seconds.is_none()
            && m.replica_heartbeat_ms.is_none()
            && m.replica_net_timeout_ms.is_none()
            && m.semi_sync.is_none()
            && m.mysql_tls.is_none()
        {
            return Err(ProtocolError::invalid(
                "policy",
                "nothing to change: set max_lag_seconds, replica_heartbeat_ms, replica_net_timeout_ms, semi_sync or mysql_tls",
            ));
        }
        let semi_sync = m
            .semi_sync
            .as_deref()
            .map(SemiSyncMode::parse)
            .transpose()
            .map_err(|r| ProtocolError::invalid("semi_sync", r))?;
        let mysql_tls = m
            .mysql_tls
            .as_deref()
            .map(crate::mysql_tls::MysqlTlsMode::parse)
            .transpose()
            .map_err(|r| ProtocolError::invalid("mysql_tls", r))?;
        if m.max_lag_seconds == Some(0) {
            return Err(ProtocolError::invalid(
                "max_lag_seconds",
                "must be at least 1 second",
            ));
        }
        if let Some(hb) = m.replica_heartbeat_ms
            && !(MIN_REPLICA_HEARTBEAT_MS..=MAX_REPLICA_TIMING_MS).contains(&hb)
        {
            return Err(ProtocolError::invalid(
                "replica_heartbeat_ms",
                "must be between 100 ms and 1 hour",
            ));
        }
        if let Some(net) = m.replica_net_timeout_ms
            && (!(1_000..=MAX_REPLICA_TIMING_MS).contains(&net) || net % 1_000 != 0)
        {
            return Err(ProtocolError::invalid(
                "replica_net_timeout_ms",
                "must be whole seconds between 1 s and 1 hour",
            ));
        }
        Ok(ClusterPolicyChange {
            cluster,
            max_lag_seconds: m.max_lag_seconds,
            replica_heartbeat_ms: m.replica_heartbeat_ms,
            replica_net_timeout_ms: m.replica_net_timeout_ms,
            semi_sync,
            mysql_tls,
        })
    }
}

/// Validates the host of a `ForgetAgent` request.
pub fn forget_agent_host(m: &pb::ForgetAgentRequest) -> Result<Name, ProtocolError> {
    name_field("host", &m.host)
}

/// A validated `AdmitAgent` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitAgent {
    /// The agent's host.
    pub host: Name,
    /// Where to admit it; `None`: where it reports.
    pub place: Option<(Name, MysqlAddress)>,
}

impl TryFrom<&pb::AdmitAgentRequest> for AdmitAgent {
    type Error = ProtocolError;

    fn try_from(m: &pb::AdmitAgentRequest) -> Result<AdmitAgent, ProtocolError> {
        let host = name_field("host", &m.host)?;
        let place = match (m.cluster.is_empty(), m.mysql_address.is_empty()) {
            (true, true) => None,
            (false, false) => Some((
                name_field("cluster", &m.cluster)?,
                MysqlAddress::parse(&m.mysql_address)
                    .map_err(|r| ProtocolError::invalid("mysql_address", r))?,
            )),
            (true, false) | (false, true) => {
                return Err(ProtocolError::invalid(
                    "cluster",
                    "give both the cluster and the MySQL address (a move), or neither (admit the agent where it reports)",
                ));
            }
        };
        Ok(AdmitAgent { host, place })
    }
}

/// Validates an optional cluster filter (empty means all clusters).
pub fn cluster_filter(m: &pb::ListClustersRequest) -> Result<Option<Name>, ProtocolError> {
    if m.cluster.is_empty() {
        Ok(None)
    } else {
        name_field("cluster", &m.cluster).map(Some)
    }
}

/// A member role's word ("primary", "replica" or "unknown"), the one
/// the CLI's JSON, `dbfleet top` and the coordinator's metrics all use.
pub fn member_role_name(role: i32) -> &'static str {
    match pb::MemberRole::try_from(role) {
        Ok(pb::MemberRole::Primary) => "primary",
        Ok(pb::MemberRole::Replica) => "replica",
        _ => "unknown",
    }
}

impl pb::command_request::Command {
    /// The command in one word, as the agent's logs and the coordinator's
    /// tests name it.
    pub fn name(&self) -> &'static str {
        use pb::command_request::Command;
        match self {
            Command::Barrier(_) => "barrier",
            Command::Fence(_) => "fence",
            Command::Freeze(_) => "freeze",
            Command::Promote(_) => "promote",
            Command::Repoint(_) => "repoint",
            Command::WaitGtid(_) => "wait-gtid",
            Command::Thaw(_) => "thaw",
            Command::StartBackup(_) => "start-backup",
            Command::StartVerify(_) => "start-verify",
            Command::StartRestore(_) => "start-restore",
            Command::DeleteBackup(_) => "delete-backup",
            Command::PruneArchive(_) => "prune-archive",
            Command::SetSemiSync(_) => "set-semi-sync",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            host: Name::parse("db1").unwrap(),
            cluster: Name::parse("main").unwrap(),
            agent_instance: "abc".into(),
            sequence: 7,
            observed_at_unix_ms: 1,
            agent_version: "0.1.0".into(),
            mysql_address: MysqlAddress::parse("127.0.0.11:3306").unwrap(),
            mysql: MysqlObservation::Reachable(Box::new(ServerState {
                tls: Some(crate::mysql_tls::ServerTls {
                    ca: "/etc/mysql/ca.pem".into(),
                    require_secure_transport: true,
                    agent_connection: crate::mysql_tls::AgentConnection::Socket,
                }),
                version: "10.11.19-MariaDB".into(),
                flavor: Flavor::MariaDb,
                server_id: 1,
                server_uuid: String::new(),
                read_only: true,
                super_read_only: true,
                gtid: GtidState {
                    executed: "0-1-5".into(),
                    ..Default::default()
                },
                replication: Some(Replication {
                    tls: Some(crate::mysql_tls::LinkTls::Verified),
                    source: MysqlAddress::parse("127.0.0.12:3306").unwrap(),
                    io_thread: IoThread::Running,
                    sql_running: true,
                    last_io_error: String::new(),
                    last_sql_error: String::new(),
                    seconds_behind: Some(0),
                    auto_position: true,
                    received_gtid: "0-1-5".into(),
                    heartbeat_ms: Some(1000),
                    net_timeout_ms: Some(4000),
                }),
                semi_sync: SemiSync::default(),
                binlog: Binlog {
                    enabled: true,
                    format: "ROW".into(),
                },
                replicas_connected: 2,
                replica_server_ids: vec![2, 3],
            })),
            agent: AgentState {
                address: "127.0.0.11:7000".into(),
                fenced: true,
                fence_reason: "test".into(),
                self_fence_timeout_ms: 3000,
                report_interval_ms: 1000,
                jobs: vec![],
                binlog_archive: None,
                load: Some(pb::ServerLoad {
                    queries_total: 12,
                    threads_connected: 3,
                    threads_running: 1,
                    uptime_seconds: 60,
                }),
                config_problems: vec![ConfigProblem {
                    kind: ConfigProblemKind::StartsWritable,
                    message: "mysqld would start writable".into(),
                }],
            },
        }
    }

    #[test]
    fn report_round_trips() {
        let r = sample();
        let back = Report::try_from(pb::AgentReport::from(r.clone())).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut m = pb::AgentReport::from(sample());
        m.host = "db 1".into();
        let e = Report::try_from(m).unwrap_err();
        assert!(e.to_string().contains("`host`"), "{e}");

        let mut m = pb::AgentReport::from(sample());
        m.mysql
            .as_mut()
            .unwrap()
            .replication
            .as_mut()
            .unwrap()
            .source_port = 70000;
        let e = Report::try_from(m).unwrap_err();
        assert!(
            e.to_string().contains("mysql.replication.source_port"),
            "{e}"
        );

        let mut m = pb::AgentReport::from(sample());
        m.mysql.as_mut().unwrap().flavor = 0;
        assert_eq!(
            Report::try_from(m).unwrap_err(),
            ProtocolError::Missing("mysql.flavor")
        );

        let mut m = pb::AgentReport::from(sample());
        m.mysql = None;
        assert_eq!(
            Report::try_from(m).unwrap_err(),
            ProtocolError::Missing("mysql")
        );
    }

    #[test]
    fn unreachable_needs_no_server_fields() {
        let m = pb::AgentReport {
            mysql: Some(pb::MysqlState {
                reachable: false,
                error: "connection refused".into(),
                ..Default::default()
            }),
            ..pb::AgentReport::from(sample())
        };
        let r = Report::try_from(m).unwrap();
        assert!(matches!(r.mysql, MysqlObservation::Unreachable { .. }));
    }

    #[test]
    fn names_and_addresses() {
        assert!(Name::parse("db-1.example_x").is_ok());
        assert!(Name::parse("").is_err());
        assert!(Name::parse(&"a".repeat(64)).is_err());
        assert!(Name::parse("a/b").is_err());
        let a = MysqlAddress::parse("DB1:3306").unwrap();
        assert!(a.same_endpoint(&MysqlAddress::parse("db1:3306").unwrap()));
        assert!(MysqlAddress::parse("db1").is_err());
        assert!(MysqlAddress::parse("db1:0").is_err());
        assert_eq!(
            MysqlAddress::parse("[::1]:3306").unwrap().to_string(),
            "[::1]:3306"
        );
        assert!(MysqlAddress::parse("db_1.example.com:3306").is_ok());
        for hostile in [
            "$(reboot):3306",
            "db1;rm -rf /:3306",
            "db1' OR '1:3306",
            "a..b:3306",
            "db 1:3306",
        ] {
            let e = MysqlAddress::parse(hostile).unwrap_err();
            assert!(e.contains("neither an IP address nor a host name"), "{e}");
        }
        let huge = format!("{}:3306", "$".repeat(3 << 20));
        assert!(MysqlAddress::parse(&huge).unwrap_err().len() < 300);
    }

    /// A refused value of megabytes is quoted in at most a few hundred
    /// bytes, wherever the refusal is logged or returned.
    #[test]
    fn a_refusal_never_carries_the_refused_megabytes() {
        let e = ProtocolError::invalid("mysql_address", "x".repeat(3 << 20));
        assert!(e.to_string().len() < 600, "{}", e.to_string().len());
        assert!(e.to_string().contains("more bytes"));
        assert_eq!(clip("héllo", 2), "h… (5 more bytes)");
        assert_eq!(clip("short", 10), "short");
    }
}
