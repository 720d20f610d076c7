//! Deriving a cluster's roles, health and problems from agent reports.
//!
//! Pure: it sees the latest report of each member and how old it is, and
//! nothing else, so every rule here is tested without sockets or clocks.
//! Observed state is never persisted; only the resulting primary's name is
//! remembered (by the caller) so that a primary whose mysqld died is still
//! called the primary.

use std::time::Duration;

use dbfleet_proto::model::{Flavor, IoThread, MysqlAddress, MysqlObservation, Report, ServerState};
use dbfleet_proto::mysql_tls::{AgentConnection, LinkTls};
use dbfleet_proto::pb;

/// Stable problem kinds; dashboards and scripts match on these strings.
pub mod kind {
    /// The agent sent nothing within the agent timeout (or never).
    pub const AGENT_NOT_REPORTING: &str = "agent-not-reporting";
    /// The agent reports that it cannot query its mysqld.
    pub const MYSQL_UNREACHABLE: &str = "mysql-unreachable";
    /// A replica's IO thread is stopped.
    pub const REPLICA_IO_STOPPED: &str = "replica-io-stopped";
    /// A replica's IO thread keeps trying to connect to its source.
    pub const REPLICA_IO_CONNECTING: &str = "replica-io-connecting";
    /// A replica's SQL thread is stopped.
    pub const REPLICA_SQL_STOPPED: &str = "replica-sql-stopped";
    /// A replica reports an IO or SQL error.
    pub const REPLICATION_ERROR: &str = "replication-error";
    /// A replica lags more than the cluster's threshold.
    pub const REPLICA_LAGGING: &str = "replica-lagging";
    /// A replica replicates from something other than the primary.
    pub const WRONG_SOURCE: &str = "wrong-source";
    /// More than one member accepts writes.
    pub const MULTIPLE_WRITABLE: &str = "multiple-writable";
    /// No member accepts writes.
    pub const NO_WRITABLE: &str = "no-writable";
    /// The primary cannot be observed but replicas still receive from it.
    pub const UNREACHABLE_PRIMARY: &str = "unreachable-primary";
    /// The cluster's policy requires TLS to MySQL and a member's server,
    /// replication link or agent connection goes without it.
    pub const MYSQL_TLS_OFF: &str = "mysql-tls-off";
    /// The members run different flavors, or a MySQL dbfleet does not
    /// support: failover and switchover are refused.
    pub const UNSUPPORTED_FLAVOR: &str = "unsupported-flavor";
}

/// One member as the coordinator knows it.
#[derive(Debug, Clone, Copy)]
pub struct MemberInput<'a> {
    /// Host name.
    pub host: &'a str,
    /// Registered mysql address (used until a report arrives).
    pub mysql_address: &'a str,
    /// The latest accepted report, however old.
    pub last: Option<&'a Report>,
    /// Age of that report.
    pub age: Option<Duration>,
    /// Whether replication was configured at the last observation that
    /// reached mysqld (so a replica whose server is down stays a replica).
    pub last_replicating: Option<bool>,
}

/// A cluster and the thresholds to judge it by.
#[derive(Debug, Clone)]
pub struct ClusterInput<'a> {
    /// Cluster name.
    pub name: &'a str,
    /// Its members, in display order.
    pub members: Vec<MemberInput<'a>>,
    /// Lag above this is a problem.
    pub max_lag_seconds: u64,
    /// The replication tuning in force (shown with the policy).
    pub tuning: crate::fleet::ReplicaTuning,
    /// Semi-sync as the policy keeps it (`None`: as members are configured).
    pub semi_sync: Option<dbfleet_proto::model::SemiSyncMode>,
    /// A report older than this means the agent is not reporting.
    pub agent_timeout: Duration,
    /// The primary remembered from earlier observations.
    pub last_primary: Option<&'a str>,
}

/// What the rules see of a member after applying the freshness rule.
struct Member<'a> {
    input: MemberInput<'a>,
    reporting: bool,
    /// Fresh server state, when the agent reports and reaches mysqld.
    server: Option<&'a ServerState>,
    address: Option<MysqlAddress>,
}

impl Member<'_> {
    fn writable(&self) -> bool {
        self.server.is_some_and(ServerState::writable)
    }

    fn replicates(&self) -> bool {
        match self.server {
            Some(s) => s.replication.is_some(),
            None => self.input.last_replicating == Some(true),
        }
    }
}

fn problem(kind: &str, host: &str, message: String) -> pb::Problem {
    pb::Problem {
        kind: kind.to_string(),
        host: host.to_string(),
        message,
    }
}

/// Derives the view of one cluster.
pub fn derive(input: &ClusterInput<'_>) -> pb::ClusterView {
    let members: Vec<Member<'_>> = input
        .members
        .iter()
        .map(|m| {
            let reporting = m.last.is_some() && m.age.is_some_and(|a| a <= input.agent_timeout);
            let server = match (reporting, m.last.map(|r| &r.mysql)) {
                (true, Some(MysqlObservation::Reachable(s))) => Some(&**s),
                _ => None,
            };
            let address = m
                .last
                .map(|r| r.mysql_address.clone())
                .or_else(|| MysqlAddress::parse(m.mysql_address).ok());
            Member {
                input: *m,
                reporting,
                server,
                address,
            }
        })
        .collect();

    let primary = choose_primary(&members, input.last_primary);
    let primary_address = primary
        .and_then(|p| members.iter().find(|m| m.input.host == p))
        .and_then(|m| m.address.clone());

    let mut problems = Vec::new();
    let mut views = Vec::new();
    for m in &members {
        member_problems(m, input, primary, primary_address.as_ref(), &mut problems);
        views.push(member_view(m, primary));
    }

    let writable: Vec<&str> = members
        .iter()
        .filter(|m| m.writable())
        .map(|m| m.input.host)
        .collect();
    if writable.len() > 1 {
        problems.push(problem(
            kind::MULTIPLE_WRITABLE,
            "",
            format!(
                "{} members accept writes: {}",
                writable.len(),
                writable.join(", ")
            ),
        ));
    } else if writable.is_empty() && members.iter().all(|m| m.reporting) {
        // With a silent agent nobody knows whether its server is
        // writable; that member already carries agent-not-reporting.
        problems.push(problem(
            kind::NO_WRITABLE,
            "",
            "no member accepts writes".to_string(),
        ));
    }

    if let (Some(p), Some(addr)) = (primary, primary_address.as_ref())
        && members
            .iter()
            .any(|m| m.input.host == p && m.server.is_none())
    {
        let receiving: Vec<&str> = members
            .iter()
            .filter(|m| {
                m.server
                    .and_then(|s| s.replication.as_ref())
                    .is_some_and(|r| {
                        r.io_thread == IoThread::Running && r.source.same_endpoint(addr)
                    })
            })
            .map(|m| m.input.host)
            .collect();
        if !receiving.is_empty() {
            problems.push(problem(
                kind::UNREACHABLE_PRIMARY,
                p,
                format!(
                    "{p} cannot be observed but {} still receive(s) from it: not failing over",
                    receiving.join(", ")
                ),
            ));
        }
    }

    let servers: Vec<(&str, &ServerState)> = members
        .iter()
        .filter_map(|m| Some((m.input.host, m.server?)))
        .collect();
    if let Some(why) = flavor_problem(&servers) {
        problems.push(problem(kind::UNSUPPORTED_FLAVOR, "", why));
    }

    pb::ClusterView {
        control: None,
        readiness: None,
        name: input.name.to_string(),
        primary: primary.unwrap_or_default().to_string(),
        members: views,
        problems,
        policy: Some(pb::ClusterPolicy {
            cluster: input.name.to_string(),
            max_lag_seconds: input.max_lag_seconds,
            replica_heartbeat_ms: input.tuning.heartbeat.as_millis() as u64,
            replica_net_timeout_ms: input.tuning.net_timeout.as_millis() as u64,
            semi_sync: input
                .semi_sync
                .map(|m| m.as_str().to_string())
                .unwrap_or_default(),
            mysql_tls: input.tuning.mysql_tls.as_str().to_string(),
        }),
    }
}

/// Why these servers cannot form one cluster dbfleet fails over: MariaDB
/// and MySQL mixed (their GTIDs cannot be compared), or a MySQL older than
/// 8.4 (8.0 is end of life and lacks the statements dbfleet uses).
pub fn flavor_problem(servers: &[(&str, &ServerState)]) -> Option<String> {
    let of = |f: Flavor| -> Vec<&str> {
        servers
            .iter()
            .filter(|(_, s)| s.flavor == f)
            .map(|(h, _)| *h)
            .collect()
    };
    let (mariadb, mysql) = (of(Flavor::MariaDb), of(Flavor::MySql));
    if !mariadb.is_empty() && !mysql.is_empty() {
        return Some(format!(
            "the cluster mixes MariaDB ({}) and MySQL ({}); a cluster is one flavor, because their GTIDs cannot be compared: move the odd members to a cluster of their own",
            mariadb.join(", "),
            mysql.join(", ")
        ));
    }
    let old: Vec<String> = servers
        .iter()
        .filter(|(_, s)| s.flavor == Flavor::MySql && !mysql_supported(&s.version))
        .map(|(h, s)| format!("{h} runs MySQL {}", s.version))
        .collect();
    (!old.is_empty()).then(|| {
        format!(
            "{}; dbfleet supports MySQL 8.4 and later (8.0 is end of life): upgrade it",
            old.join(", ")
        )
    })
}

/// MySQL 8.4 or later, from `SELECT VERSION()` (`9.7.4-2`, `8.4.3-log`).
fn mysql_supported(version: &str) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (8, 4),
        _ => false,
    }
}

/// The primary is the one writable member that does not replicate. Without
/// one (its mysqld is down, say), it is the member the reporting replicas
/// point at, and failing that the one remembered. Two writable
/// non-replicas make it ambiguous: no primary is named.
fn choose_primary<'a>(members: &[Member<'a>], last_primary: Option<&'a str>) -> Option<&'a str> {
    let writable_sources: Vec<&Member<'a>> = members
        .iter()
        .filter(|m| m.writable() && !m.replicates())
        .collect();
    match writable_sources.as_slice() {
        [one] => return Some(one.input.host),
        [] => {}
        _ => return None,
    }
    let mut votes: Vec<(&'a str, usize)> = Vec::new();
    for r in members
        .iter()
        .filter_map(|m| m.server?.replication.as_ref())
    {
        if let Some(target) = members.iter().find(|m| {
            m.address
                .as_ref()
                .is_some_and(|a| a.same_endpoint(&r.source))
        }) {
            match votes.iter_mut().find(|(h, _)| *h == target.input.host) {
                Some((_, n)) => *n += 1,
                None => votes.push((target.input.host, 1)),
            }
        }
    }
    votes.sort_by_key(|v| std::cmp::Reverse(v.1));
    match votes.as_slice() {
        [(host, _)] => return Some(host),
        [(host, a), (_, b), ..] if a > b => return Some(host),
        _ => {}
    }
    last_primary.filter(|p| members.iter().any(|m| m.input.host == *p))
}

fn member_problems(
    m: &Member<'_>,
    input: &ClusterInput<'_>,
    primary: Option<&str>,
    primary_address: Option<&MysqlAddress>,
    out: &mut Vec<pb::Problem>,
) {
    let host = m.input.host;
    if !m.reporting {
        let message = match m.input.age {
            Some(age) => format!("no report for {}", humanize(age)),
            None => "never reported to this coordinator".to_string(),
        };
        out.push(problem(kind::AGENT_NOT_REPORTING, host, message));
        return;
    }
    // What the agent's configuration checks found (starts-writable,
    // mysql-address-mismatch, ...), as they were reported.
    for p in m.input.last.iter().flat_map(|r| &r.agent.config_problems) {
        out.push(problem(p.kind.as_str(), host, p.message.clone()));
    }
    let Some(s) = m.server else {
        let error = match m.input.last.map(|r| &r.mysql) {
            Some(MysqlObservation::Unreachable { error }) => error.as_str(),
            _ => "",
        };
        out.push(problem(
            kind::MYSQL_UNREACHABLE,
            host,
            format!("agent cannot reach mysqld: {error}"),
        ));
        return;
    };
    if input.tuning.tls() {
        for message in tls_gaps(host, s) {
            out.push(problem(kind::MYSQL_TLS_OFF, host, message));
        }
    }
    let Some(r) = &s.replication else { return };
    match r.io_thread {
        IoThread::Stopped => out.push(problem(
            kind::REPLICA_IO_STOPPED,
            host,
            "replication IO thread is stopped".into(),
        )),
        IoThread::Connecting => out.push(problem(
            kind::REPLICA_IO_CONNECTING,
            host,
            format!("replication IO thread cannot connect to {}", r.source),
        )),
        IoThread::Running => {}
    }
    if !r.sql_running {
        out.push(problem(
            kind::REPLICA_SQL_STOPPED,
            host,
            "replication SQL thread is stopped".into(),
        ));
    }
    for (thread, error) in [("IO", &r.last_io_error), ("SQL", &r.last_sql_error)] {
        if !error.is_empty() {
            out.push(problem(
                kind::REPLICATION_ERROR,
                host,
                format!("{thread} thread error: {error}"),
            ));
        }
    }
    if let Some(lag) = r.seconds_behind
        && lag > input.max_lag_seconds
    {
        out.push(problem(
            kind::REPLICA_LAGGING,
            host,
            format!("{lag}s behind (threshold {}s)", input.max_lag_seconds),
        ));
    }
    if let (Some(p), Some(pa)) = (primary, primary_address)
        && p != host
        && !r.source.same_endpoint(pa)
    {
        out.push(problem(
            kind::WRONG_SOURCE,
            host,
            format!("replicates from {} but the primary is {p} ({pa})", r.source),
        ));
    }
}

/// Where a member goes without the TLS its cluster's policy requires, each
/// said with the fix. An agent that does not report its TLS is not
/// believed to use it.
fn tls_gaps(host: &str, s: &ServerState) -> Vec<String> {
    let Some(t) = &s.tls else {
        return vec![format!(
            "the agent on {host} does not report TLS to MySQL: upgrade it"
        )];
    };
    let mut gaps = Vec::new();
    if t.ca.is_empty() {
        gaps.push(format!(
            "mysqld on {host} has no CA (ssl_ca), so it cannot check a source's certificate: \
             issue it one with `dbfleet cert issue --role mysql` and set ssl_ca, ssl_cert and ssl_key"
        ));
    }
    if !t.require_secure_transport {
        gaps.push(format!(
            "mysqld on {host} accepts plain TCP clients: set require_secure_transport = ON"
        ));
    }
    if t.agent_connection == AgentConnection::Plain {
        gaps.push(format!(
            "the agent on {host} reaches mysqld over plain TCP: set [mysql] tls_ca_file, or socket"
        ));
    }
    if let Some(r) = &s.replication {
        match r.tls {
            Some(LinkTls::Verified) => {}
            Some(other) => gaps.push(format!(
                "{host} replicates from {} over {}; the coordinator repoints it with verified TLS",
                r.source,
                other.describe()
            )),
            None => gaps.push(format!(
                "the agent on {host} does not report how its replication is secured: upgrade it"
            )),
        }
    }
    gaps
}

fn member_view(m: &Member<'_>, primary: Option<&str>) -> pb::MemberView {
    let role = if primary == Some(m.input.host) {
        pb::MemberRole::Primary
    } else if m.replicates() {
        pb::MemberRole::Replica
    } else {
        pb::MemberRole::Unknown
    };
    let s = m.server;
    let repl = s.and_then(|s| s.replication.as_ref());
    pb::MemberView {
        host: m.input.host.to_string(),
        role: role as i32,
        writable: m.writable(),
        reachable: s.is_some(),
        reporting: m.reporting,
        gtid_executed: s.map(|s| s.gtid.executed.clone()).unwrap_or_default(),
        lag_seconds: repl.and_then(|r| r.seconds_behind),
        io_running: repl.is_some_and(|r| r.io_thread == IoThread::Running),
        sql_running: repl.is_some_and(|r| r.sql_running),
        mysql_address: m
            .address
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| m.input.mysql_address.to_string()),
        source: repl.map(|r| r.source.to_string()).unwrap_or_default(),
        version: s.map(|s| s.version.clone()).unwrap_or_default(),
        flavor: s.map(|s| pb::Flavor::from(s.flavor) as i32).unwrap_or(0),
        last_report_age_ms: m.input.age.map(|a| a.as_millis() as u64),
        read_only: s.is_some_and(|s| s.read_only),
        fenced: m.input.last.is_some_and(|r| r.agent.fenced),
        promotion_rule: String::new(),
        needs_rebuild: false,
        rejoining: false,
        semi_sync: s.map(|s| semi_sync_word(&s.semi_sync)).unwrap_or_default(),
        binlog_archive: m.input.last.and_then(|r| r.agent.binlog_archive.clone()),
        // Only a reachable server's counters: a down one has no load.
        load: s.and(m.input.last.and_then(|r| r.agent.load)),
        observed_at_unix_ms: m.input.last.map_or(0, |r| r.observed_at_unix_ms),
    }
}

/// A member's semi-sync role in one word.
fn semi_sync_word(s: &dbfleet_proto::model::SemiSync) -> String {
    match (s.source_enabled, s.lossless(), s.replica_enabled) {
        (true, true, _) => "lossless",
        (true, false, _) => "source",
        (false, _, true) => "replica",
        (false, _, false) => "off",
    }
    .to_string()
}

fn humanize(d: Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbfleet_proto::model::{Binlog, Flavor, GtidState, Name, Replication, SemiSync};

    fn server(read_only: bool, source: Option<&str>) -> ServerState {
        ServerState {
            tls: None,
            version: "10.11.19-MariaDB".into(),
            flavor: Flavor::MariaDb,
            server_id: 1,
            server_uuid: String::new(),
            read_only,
            super_read_only: read_only,
            gtid: GtidState {
                executed: "0-1-10".into(),
                ..Default::default()
            },
            replication: source.map(|s| Replication {
                tls: None,
                source: MysqlAddress::parse(s).unwrap(),
                io_thread: IoThread::Running,
                sql_running: true,
                last_io_error: String::new(),
                last_sql_error: String::new(),
                seconds_behind: Some(0),
                auto_position: true,
                received_gtid: String::new(),
                heartbeat_ms: None,
                net_timeout_ms: None,
            }),
            semi_sync: SemiSync::default(),
            binlog: Binlog::default(),
            replicas_connected: 0,
            replica_server_ids: vec![],
        }
    }

    fn report(host: &str, obs: MysqlObservation) -> Report {
        Report {
            host: Name::parse(host).unwrap(),
            cluster: Name::parse("main").unwrap(),
            agent_instance: "x".into(),
            sequence: 1,
            observed_at_unix_ms: 0,
            agent_version: "t".into(),
            mysql_address: MysqlAddress::parse(&format!("{host}:3306")).unwrap(),
            mysql: obs,
            agent: Default::default(),
        }
    }

    fn reach(s: ServerState) -> MysqlObservation {
        MysqlObservation::Reachable(Box::new(s))
    }

    #[test]
    fn a_cluster_is_one_flavor_on_a_supported_mysql() {
        let maria = server(false, None);
        let mysql = |version: &str| ServerState {
            flavor: Flavor::MySql,
            version: version.into(),
            ..server(true, None)
        };
        let (m97, m84, m80) = (mysql("9.7.4-2"), mysql("8.4.3-log"), mysql("8.0.40"));
        assert_eq!(flavor_problem(&[("db1", &maria), ("db2", &maria)]), None);
        assert_eq!(flavor_problem(&[("db1", &m97), ("db2", &m84)]), None);
        assert_eq!(flavor_problem(&[]), None);
        let mixed = flavor_problem(&[("db1", &maria), ("db2", &m97), ("db3", &maria)]).unwrap();
        assert!(
            mixed.contains("MariaDB (db1, db3) and MySQL (db2)") && mixed.contains("one flavor"),
            "{mixed}"
        );
        let old = flavor_problem(&[("db1", &m97), ("db2", &m80)]).unwrap();
        assert!(
            old.starts_with("db2 runs MySQL 8.0.40;") && old.contains("8.4 and later"),
            "{old}"
        );
        for (version, ok) in [
            ("8.4.0", true),
            ("8.3.0", false),
            ("10.0.1", true),
            ("5.7.44-log", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(mysql_supported(version), ok, "{version}");
        }
        // The view carries it as a problem.
        let reports = vec![
            report("db1", reach(server(false, None))),
            report(
                "db2",
                reach(ServerState {
                    flavor: Flavor::MySql,
                    ..server(true, Some("db1:3306"))
                }),
            ),
        ];
        let v = view(&reports, &[Some(0), Some(0)], None);
        assert!(
            v.problems
                .iter()
                .any(|p| p.kind == kind::UNSUPPORTED_FLAVOR),
            "{:?}",
            v.problems
        );
    }

    fn healthy() -> Vec<Report> {
        vec![
            report("db1", reach(server(false, None))),
            report("db2", reach(server(true, Some("db1:3306")))),
            report("db3", reach(server(true, Some("db1:3306")))),
        ]
    }

    fn view(
        reports: &[Report],
        ages: &[Option<u64>],
        last_primary: Option<&str>,
    ) -> pb::ClusterView {
        let members = reports
            .iter()
            .zip(ages)
            .map(|(r, age)| MemberInput {
                host: r.host.as_str(),
                mysql_address: "",
                last: Some(r),
                age: age.map(Duration::from_millis),
                last_replicating: Some(r.host.as_str() != "db1"),
            })
            .collect();
        derive(&ClusterInput {
            name: "main",
            members,
            max_lag_seconds: 30,
            tuning: crate::fleet::ReplicaTuning {
                mysql_tls: dbfleet_proto::mysql_tls::MysqlTlsMode::Off,
                heartbeat: Duration::from_secs(1),
                net_timeout: Duration::from_secs(4),
            },
            semi_sync: None,
            agent_timeout: Duration::from_secs(5),
            last_primary,
        })
    }

    fn kinds(v: &pb::ClusterView) -> Vec<(String, String)> {
        v.problems
            .iter()
            .map(|p| (p.kind.clone(), p.host.clone()))
            .collect()
    }

    const FRESH: [Option<u64>; 3] = [Some(100), Some(100), Some(100)];

    #[test]
    fn healthy_cluster_has_one_primary_and_no_problems() {
        let v = view(&healthy(), &FRESH, None);
        assert_eq!(v.primary, "db1");
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        let roles: Vec<i32> = v.members.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            vec![
                pb::MemberRole::Primary as i32,
                pb::MemberRole::Replica as i32,
                pb::MemberRole::Replica as i32
            ]
        );
        assert!(v.members[0].writable && !v.members[1].writable);
        assert!(v.members[1].io_running && v.members[1].sql_running);
    }

    #[test]
    fn replica_thread_states_errors_and_lag_are_problems() {
        let mut rs = healthy();
        let mut s = server(true, Some("db1:3306"));
        let r = s.replication.as_mut().unwrap();
        r.io_thread = IoThread::Stopped;
        r.sql_running = false;
        r.last_sql_error = "Duplicate entry".into();
        rs[1] = report("db2", reach(s));
        let mut s = server(true, Some("db1:3306"));
        s.replication.as_mut().unwrap().seconds_behind = Some(31);
        rs[2] = report("db3", reach(s));
        let k = kinds(&view(&rs, &FRESH, None));
        for want in [
            (kind::REPLICA_IO_STOPPED, "db2"),
            (kind::REPLICA_SQL_STOPPED, "db2"),
            (kind::REPLICATION_ERROR, "db2"),
            (kind::REPLICA_LAGGING, "db3"),
        ] {
            assert!(
                k.contains(&(want.0.into(), want.1.into())),
                "{want:?} in {k:?}"
            );
        }
    }

    #[test]
    fn silent_agent_and_unreachable_mysqld() {
        let mut rs = healthy();
        rs[2] = report(
            "db3",
            MysqlObservation::Unreachable {
                error: "refused".into(),
            },
        );
        let v = view(&rs, &[Some(100), Some(60_000), Some(100)], None);
        let k = kinds(&v);
        assert!(k.contains(&(kind::AGENT_NOT_REPORTING.into(), "db2".into())));
        assert!(k.contains(&(kind::MYSQL_UNREACHABLE.into(), "db3".into())));
        assert!(!v.members[2].reachable);
        assert!(!v.members[1].reporting && !v.members[1].reachable);
        // roles survive: a silent replica is still a replica
        assert_eq!(v.members[1].role, pb::MemberRole::Replica as i32);
        assert_eq!(v.primary, "db1");
    }

    #[test]
    fn dead_primary_is_still_named_from_its_replicas() {
        let mut rs = healthy();
        rs[0] = report(
            "db1",
            MysqlObservation::Unreachable {
                error: "refused".into(),
            },
        );
        let v = view(&rs, &FRESH, None);
        assert_eq!(v.primary, "db1");
        assert_eq!(v.members[0].role, pb::MemberRole::Primary as i32);
        let k = kinds(&v);
        assert!(k.contains(&(kind::NO_WRITABLE.into(), String::new())));
        assert!(!k.iter().any(|(k, _)| k == kind::WRONG_SOURCE), "{k:?}");
    }

    #[test]
    fn remembered_primary_when_nothing_else_tells() {
        let rs = [report(
            "db1",
            MysqlObservation::Unreachable { error: "x".into() },
        )];
        let members = vec![MemberInput {
            host: "db1",
            mysql_address: "db1:3306",
            last: Some(&rs[0]),
            age: Some(Duration::from_millis(1)),
            last_replicating: Some(false),
        }];
        let mut input = ClusterInput {
            name: "main",
            members,
            max_lag_seconds: 30,
            tuning: crate::fleet::ReplicaTuning {
                mysql_tls: dbfleet_proto::mysql_tls::MysqlTlsMode::Off,
                heartbeat: Duration::from_secs(1),
                net_timeout: Duration::from_secs(4),
            },
            semi_sync: None,
            agent_timeout: Duration::from_secs(5),
            last_primary: Some("db1"),
        };
        assert_eq!(derive(&input).primary, "db1");
        input.last_primary = Some("gone");
        assert_eq!(derive(&input).primary, "");
    }

    #[test]
    fn two_writable_members_and_wrong_source() {
        let mut rs = healthy();
        rs[1] = report("db2", reach(server(false, None)));
        let v = view(&rs, &FRESH, None);
        assert_eq!(v.primary, "");
        assert!(kinds(&v).contains(&(kind::MULTIPLE_WRITABLE.into(), String::new())));

        let mut rs = healthy();
        rs[2] = report("db3", reach(server(true, Some("db2:3306"))));
        let k = kinds(&view(&rs, &FRESH, None));
        assert!(
            k.contains(&(kind::WRONG_SOURCE.into(), "db3".into())),
            "{k:?}"
        );
    }

    #[test]
    fn never_reported_member() {
        let members = vec![MemberInput {
            host: "db9",
            mysql_address: "db9:3306",
            last: None,
            age: None,
            last_replicating: None,
        }];
        let v = derive(&ClusterInput {
            name: "main",
            members,
            max_lag_seconds: 30,
            tuning: crate::fleet::ReplicaTuning {
                mysql_tls: dbfleet_proto::mysql_tls::MysqlTlsMode::Off,
                heartbeat: Duration::from_secs(1),
                net_timeout: Duration::from_secs(4),
            },
            semi_sync: None,
            agent_timeout: Duration::from_secs(5),
            last_primary: None,
        });
        assert_eq!(v.members[0].role, pb::MemberRole::Unknown as i32);
        assert_eq!(v.members[0].mysql_address, "db9:3306");
        assert!(kinds(&v).contains(&(kind::AGENT_NOT_REPORTING.into(), "db9".into())));
    }

    #[test]
    fn tls_gaps_name_every_part_without_verified_tls_and_its_fix() {
        use dbfleet_proto::mysql_tls::ServerTls;
        let complete = ServerTls {
            ca: "/etc/mysql/tls/ca.pem".into(),
            require_secure_transport: true,
            agent_connection: AgentConnection::Socket,
        };
        let mut s = server(true, Some("db1:3306"));
        s.tls = Some(complete.clone());
        s.replication.as_mut().unwrap().tls = Some(LinkTls::Verified);
        assert_eq!(tls_gaps("db2", &s), Vec::<String>::new());
        // the agent over verified TCP is as good as the socket
        s.tls = Some(ServerTls {
            agent_connection: AgentConnection::Tls,
            ..complete.clone()
        });
        assert_eq!(tls_gaps("db2", &s), Vec::<String>::new());

        let cases: [(ServerTls, Option<LinkTls>, &str); 5] = [
            (
                ServerTls {
                    ca: String::new(),
                    ..complete.clone()
                },
                Some(LinkTls::Verified),
                "has no CA (ssl_ca)",
            ),
            (
                ServerTls {
                    require_secure_transport: false,
                    ..complete.clone()
                },
                Some(LinkTls::Verified),
                "require_secure_transport = ON",
            ),
            (
                ServerTls {
                    agent_connection: AgentConnection::Plain,
                    ..complete.clone()
                },
                Some(LinkTls::Verified),
                "tls_ca_file",
            ),
            (complete.clone(), Some(LinkTls::Off), "over plain TCP"),
            (
                complete.clone(),
                None,
                "does not report how its replication",
            ),
        ];
        for (tls, link, says) in cases {
            s.tls = Some(tls);
            s.replication.as_mut().unwrap().tls = link;
            let gaps = tls_gaps("db2", &s);
            assert_eq!(gaps.len(), 1, "{gaps:?}");
            assert!(gaps[0].contains(says), "{gaps:?} should say {says}");
        }
        // an agent that does not report TLS at all is not believed
        s.tls = None;
        assert!(tls_gaps("db2", &s)[0].contains("upgrade it"));
    }

    #[test]
    fn tls_problems_appear_only_when_the_policy_requires_tls() {
        let plain = server(true, Some("db1:3306"));
        let mut input = ClusterInput {
            name: "main",
            members: vec![],
            max_lag_seconds: 10,
            tuning: crate::fleet::ReplicaTuning {
                heartbeat: Duration::from_secs(1),
                net_timeout: Duration::from_secs(4),
                mysql_tls: dbfleet_proto::mysql_tls::MysqlTlsMode::Off,
            },
            semi_sync: None,
            agent_timeout: Duration::from_secs(5),
            last_primary: None,
        };
        let primary = report("db1", reach(server(false, None)));
        let replica = report("db2", reach(plain));
        let member = |host, r| MemberInput {
            host,
            mysql_address: "",
            last: Some(r),
            age: Some(Duration::ZERO),
            last_replicating: None,
        };
        input.members = vec![member("db1", &primary), member("db2", &replica)];
        let tls_problems = |v: &pb::ClusterView| {
            v.problems
                .iter()
                .filter(|p| p.kind == kind::MYSQL_TLS_OFF)
                .count()
        };
        let v = derive(&input);
        assert_eq!(tls_problems(&v), 0);
        assert_eq!(v.policy.unwrap().mysql_tls, "off");
        input.tuning.mysql_tls = dbfleet_proto::mysql_tls::MysqlTlsMode::Required;
        let v = derive(&input);
        assert_eq!(tls_problems(&v), 2, "{:?}", v.problems);
        assert_eq!(v.policy.unwrap().mysql_tls, "required");
    }
}
