//! The holistic rule that declares a primary dead (brief §5), free of I/O:
//! the caller feeds what each member's agent last said and how long ago,
//! and keeps the clock.

use std::time::Duration;

use dbfleet_proto::model::{IoThread, MysqlAddress, ServerState};

/// One member as the detector sees it.
#[derive(Debug, Clone, Copy)]
pub struct MemberSeen<'a> {
    /// Host name.
    pub host: &'a str,
    /// The agent reported within the agent timeout.
    pub reporting: bool,
    /// Fresh state, when the agent reaches mysqld.
    pub server: Option<&'a ServerState>,
    /// Why the agent cannot reach mysqld (fresh report only).
    pub mysql_error: Option<&'a str>,
    /// False for a member out of service (detached by a restore, marked
    /// for a rebuild): it replicates from nobody on purpose, so it neither
    /// confirms nor counts.
    pub in_service: bool,
    /// Left behind by the last operation and provably apart from this
    /// primary (`ClusterControl::apart`): it never received from it, so it
    /// neither confirms nor counts.
    pub apart: bool,
    /// How long ago its latest report arrived (`None`: never).
    pub silent_for: Option<Duration>,
    /// The interval its agent reports at.
    pub report_interval: Duration,
}

impl MemberSeen<'_> {
    /// Its agent missed two reports in a row (it may still be within the
    /// agent timeout). A live agent whose server answers misses one at
    /// most; one whose collections run into their deadlines (a hung
    /// server) may miss more, which is why a late agent alone decides
    /// nothing.
    fn late(&self) -> bool {
        self.silent_for
            .is_none_or(|s| s > 2 * self.report_interval.max(Duration::from_millis(100)))
    }
}

/// Which path a dead primary takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownPath {
    /// Its agent is alive and says mysqld is down: the agent is the fence.
    Fast,
    /// Its agent fell silent (two reports missed), and every other member
    /// in service answers and has confirmed since the primary's last
    /// report that it lost the primary: the whole host looks dead, and the
    /// evidence is complete without waiting for the agent timeout. The
    /// fence comes from elsewhere, as on the slow path.
    Host,
    /// Its agent is silent beyond the agent timeout and a majority of the
    /// others confirm: a longer window and a fence from elsewhere.
    Slow,
}

impl DownPath {
    /// The path in words, for the operation's reason.
    pub fn describe(self) -> &'static str {
        match self {
            DownPath::Fast => "fast path: its agent reports mysqld down",
            DownPath::Host => "host path: its agent fell silent and every other member lost it",
            DownPath::Slow => "slow path: its agent is silent",
        }
    }
}

/// The verdict on a cluster's primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The primary's agent reaches it (or is merely late, without complete
    /// evidence of the host's death).
    Up,
    /// Down from our side and confirmed by a majority of the other members
    /// (replicas that lost it), with no reachable replica still receiving.
    Down {
        /// Fast, host or slow.
        path: DownPath,
        /// What was seen.
        evidence: Vec<String>,
    },
    /// Down from our side, but a replica still receives from it: alert,
    /// never fail over.
    UnreachablePrimary {
        /// What was seen.
        evidence: Vec<String>,
    },
    /// Down from our side without enough confirmation.
    Unconfirmed {
        /// Why not.
        why: String,
    },
}

/// Applies the rule to `primary` (listening on `address`) and its peers.
pub fn assess(primary: &str, address: &MysqlAddress, members: &[MemberSeen<'_>]) -> Health {
    let Some(p) = members.iter().find(|m| m.host == primary) else {
        return Health::Unconfirmed {
            why: format!("primary {primary} is not a registered member"),
        };
    };
    let late = p.late();
    if p.server.is_some() && !late {
        return Health::Up;
    }
    // An agent whose last report within the agent timeout said mysqld is
    // down keeps the fast path however late its next report is: a hung
    // server makes every collection run into its deadline.
    let (path, mut evidence) = match (p.reporting, p.mysql_error) {
        (true, Some(e)) => (
            DownPath::Fast,
            vec![format!("{primary}: agent reports mysqld unreachable: {e}")],
        ),
        _ => (
            DownPath::Slow,
            vec![match p.silent_for {
                Some(s) => format!(
                    "{primary}: agent not reporting (silent for {})",
                    humantime::format_duration(Duration::from_millis(s.as_millis() as u64))
                ),
                None => format!("{primary}: agent not reporting"),
            }],
        ),
    };
    let mut replicas: Vec<&MemberSeen<'_>> = Vec::new();
    for m in members.iter().filter(|m| m.host != primary && m.in_service) {
        if m.apart {
            evidence.push(format!(
                "{}: left behind by the last operation and not rejoined; not replicating from {primary} (its report, and {primary}'s registered replicas), so it neither confirms nor counts",
                m.host
            ));
        } else {
            replicas.push(m);
        }
    }
    // Late without the fast path's word, but within the agent timeout.
    let only_late = path == DownPath::Slow && p.reporting;
    if replicas.is_empty() {
        return Health::Unconfirmed {
            why: "no replica can confirm the primary is down".into(),
        };
    }
    let reachable: Vec<&&MemberSeen<'_>> = replicas.iter().filter(|m| m.server.is_some()).collect();
    let mut still_receiving = Vec::new();
    let mut confirming = 0;
    // Confirmations made after the primary's last report: on the host
    // path they are what shows the whole host went away.
    let mut confirmed_since = 0;
    for m in &reachable {
        let s = m.server.expect("filtered on server");
        match &s.replication {
            Some(r) if r.source.same_endpoint(address) => {
                if r.io_thread == IoThread::Running {
                    still_receiving.push(m.host);
                    evidence.push(format!(
                        "{}: IO thread still connected to {primary}",
                        m.host
                    ));
                } else {
                    confirming += 1;
                    if let (Some(mine), Some(its)) = (m.silent_for, p.silent_for)
                        && mine < its
                    {
                        confirmed_since += 1;
                    }
                    evidence.push(format!(
                        "{}: lost {primary} (IO thread {:?}{})",
                        m.host,
                        r.io_thread,
                        if r.last_io_error.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", r.last_io_error)
                        }
                    ));
                }
            }
            _ => evidence.push(format!("{}: does not replicate from {primary}", m.host)),
        }
    }
    if !still_receiving.is_empty() {
        // A late agent whose server still feeds a replica is likely just
        // late; it still counts for the breaker (a power loss shows on the
        // replicas only after their net timeout).
        if only_late {
            return Health::Unconfirmed {
                why: format!(
                    "{primary}'s agent missed two reports, but {} still receive from it",
                    still_receiving.join(", ")
                ),
            };
        }
        return Health::UnreachablePrimary { evidence };
    }
    if path == DownPath::Slow && confirmed_since == replicas.len() {
        return Health::Down {
            path: DownPath::Host,
            evidence,
        };
    }
    if only_late {
        // Not yet silent for the agent timeout, and the others do not all
        // confirm: no failover yet, but it looks dead (the breaker counts
        // it, so primaries that die together are counted together).
        return Health::Unconfirmed {
            why: format!(
                "{primary}'s agent missed two reports and not every other member has confirmed since that it lost {primary}; waiting for the agent timeout"
            ),
        };
    }
    // Only a replica of this primary can confirm it lost it: one reachable
    // but replicating from elsewhere (or not at all) neither confirms nor
    // vetoes, and does not make up the majority.
    if confirming * 2 <= replicas.len() {
        return Health::Unconfirmed {
            why: format!(
                "only {confirming} of {} other members confirm they lost {primary} ({} reachable); a majority must confirm, so members that do not replicate from {primary} count against it: repoint them to {primary} or take them out of service, or fail over with `dbfleet failover`",
                replicas.len(),
                reachable.len(),
            ),
        };
    }
    Health::Down { path, evidence }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbfleet_proto::model::{Binlog, Flavor, GtidState, Replication, SemiSync};

    const SEC: Duration = Duration::from_secs(1);

    fn server(source: Option<(&str, IoThread)>) -> ServerState {
        ServerState {
            tls: None,
            version: "10.11".into(),
            flavor: Flavor::MariaDb,
            server_id: 2,
            server_uuid: String::new(),
            read_only: source.is_some(),
            super_read_only: source.is_some(),
            gtid: GtidState::default(),
            replication: source.map(|(a, io)| Replication {
                tls: None,
                source: MysqlAddress::parse(a).unwrap(),
                io_thread: io,
                sql_running: true,
                last_io_error: String::new(),
                last_sql_error: String::new(),
                seconds_behind: None,
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

    #[test]
    fn the_rule_needs_every_reachable_replica_and_a_majority() {
        let addr = MysqlAddress::parse("127.0.0.11:3306").unwrap();
        let lost = server(Some(("127.0.0.11:3306", IoThread::Connecting)));
        let receiving = server(Some(("127.0.0.11:3306", IoThread::Running)));
        let up = server(None);
        let primary_down = MemberSeen {
            host: "db1",
            reporting: true,
            server: None,
            mysql_error: Some("Connection refused"),
            in_service: true,
            apart: false,
            silent_for: Some(SEC / 2),
            report_interval: SEC,
        };
        let r = |host, s| MemberSeen {
            host,
            reporting: true,
            server: Some(s),
            mysql_error: None,
            in_service: true,
            apart: false,
            silent_for: Some(SEC / 2),
            report_interval: SEC,
        };
        let silent = |host| MemberSeen {
            host,
            reporting: false,
            server: None,
            mysql_error: None,
            in_service: true,
            apart: false,
            silent_for: Some(10 * SEC),
            report_interval: SEC,
        };
        // healthy primary
        let m = [r("db1", &up), r("db2", &lost)];
        assert_eq!(assess("db1", &addr, &m), Health::Up);
        // fast path, both replicas confirm
        let m = [primary_down, r("db2", &lost), r("db3", &lost)];
        assert!(matches!(
            assess("db1", &addr, &m),
            Health::Down {
                path: DownPath::Fast,
                ..
            }
        ));
        // one replica still receives: alert only
        let m = [primary_down, r("db2", &lost), r("db3", &receiving)];
        assert!(matches!(
            assess("db1", &addr, &m),
            Health::UnreachablePrimary { .. }
        ));
        // agent silent too, every replica lost it since: the host path
        let m = [silent("db1"), r("db2", &lost), r("db3", &lost)];
        assert!(matches!(
            assess("db1", &addr, &m),
            Health::Down {
                path: DownPath::Host,
                ..
            }
        ));
        // a majority, not all: the slow path
        let m = [
            silent("db1"),
            r("db2", &lost),
            r("db3", &lost),
            silent("db4"),
        ];
        assert!(matches!(
            assess("db1", &addr, &m),
            Health::Down {
                path: DownPath::Slow,
                ..
            }
        ));
        // half the replicas unreachable: no majority
        let m = [silent("db1"), r("db2", &lost), silent("db3")];
        assert!(matches!(
            assess("db1", &addr, &m),
            Health::Unconfirmed { .. }
        ));
        // a reachable member that does not replicate from the primary does
        // not confirm: one of three confirming is no majority
        let m = [primary_down, r("db2", &lost), r("db3", &up), silent("db4")];
        let Health::Unconfirmed { why } = assess("db1", &addr, &m) else {
            panic!("{:?}", assess("db1", &addr, &m));
        };
        assert!(why.contains("only 1 of 3 other members confirm"), "{why}");
        // ... nor does it veto: two of three confirming is one
        let m = [
            primary_down,
            r("db2", &lost),
            r("db3", &up),
            r("db4", &lost),
        ];
        assert!(matches!(assess("db1", &addr, &m), Health::Down { .. }));
        // ... and one out of service neither: one confirming of one in service
        let detached = MemberSeen {
            in_service: false,
            ..r("db3", &up)
        };
        let m = [primary_down, r("db2", &lost), detached];
        assert!(matches!(assess("db1", &addr, &m), Health::Down { .. }));
        // no replicas at all
        let m = [silent("db1")];
        assert!(matches!(
            assess("db1", &addr, &m),
            Health::Unconfirmed { .. }
        ));
    }
    #[test]
    fn a_host_death_is_decided_once_the_agent_missed_two_reports_and_every_replica_lost_it_since() {
        let addr = MysqlAddress::parse("127.0.0.11:3306").unwrap();
        let lost = server(Some(("127.0.0.11:3306", IoThread::Connecting)));
        let receiving = server(Some(("127.0.0.11:3306", IoThread::Running)));
        let up = server(None);
        let seen = |host, server, silent_for: Duration| MemberSeen {
            host,
            reporting: silent_for <= 5 * SEC,
            server,
            mysql_error: None,
            in_service: true,
            apart: false,
            silent_for: Some(silent_for),
            report_interval: SEC,
        };
        let primary = |silent_for| seen("db1", Some(&up), silent_for);
        let replica = |host, s, silent_for| seen(host, Some(s), silent_for);
        let host_path = |m: &[MemberSeen<'_>]| {
            matches!(
                assess("db1", &addr, m),
                Health::Down {
                    path: DownPath::Host,
                    ..
                }
            )
        };
        // one report missed: not late yet, whatever the replicas say
        let m = [
            primary(SEC * 3 / 2),
            replica("db2", &lost, SEC / 2),
            replica("db3", &lost, SEC / 2),
        ];
        assert_eq!(assess("db1", &addr, &m), Health::Up);
        // two missed and both replicas lost it since its last report
        let m = [
            primary(SEC * 5 / 2),
            replica("db2", &lost, SEC / 2),
            replica("db3", &lost, SEC / 2),
        ];
        assert!(host_path(&m));
        // a replica still receiving: likely merely late, never failed
        // over, but counted by the breaker
        let m = [
            primary(SEC * 5 / 2),
            replica("db2", &lost, SEC / 2),
            replica("db3", &receiving, SEC / 2),
        ];
        let Health::Unconfirmed { why } = assess("db1", &addr, &m) else {
            panic!("{:?}", assess("db1", &addr, &m));
        };
        assert!(why.contains("db3 still receive"), "{why}");
        // a confirmation older than the primary's last report proves
        // nothing about the host: wait for the agent timeout (it looks
        // dead meanwhile, for the breaker)
        let m = [
            primary(SEC * 5 / 2),
            replica("db2", &lost, SEC / 2),
            replica("db3", &lost, 3 * SEC),
        ];
        assert!(matches!(
            assess("db1", &addr, &m),
            Health::Unconfirmed { .. }
        ));
        // a replica that does not answer: not complete either
        let m = [
            primary(SEC * 5 / 2),
            replica("db2", &lost, SEC / 2),
            seen("db3", None, SEC / 2),
        ];
        assert!(matches!(
            assess("db1", &addr, &m),
            Health::Unconfirmed { .. }
        ));
        // an agent that said mysqld is down keeps the fast path however
        // late its next report (a hung server's collections run into
        // their deadlines)
        let said_down = MemberSeen {
            server: None,
            mysql_error: Some("timed out"),
            ..primary(SEC * 7 / 2)
        };
        let m = [
            said_down,
            replica("db2", &lost, SEC / 2),
            replica("db3", &lost, 3 * SEC),
        ];
        assert!(matches!(
            assess("db1", &addr, &m),
            Health::Down {
                path: DownPath::Fast,
                ..
            }
        ));
        // a slower agent is late only after two of its own intervals
        let slow_agent = MemberSeen {
            report_interval: 2 * SEC,
            ..primary(SEC * 5 / 2)
        };
        let m = [
            slow_agent,
            replica("db2", &lost, SEC / 2),
            replica("db3", &lost, SEC / 2),
        ];
        assert_eq!(assess("db1", &addr, &m), Health::Up);
    }

    #[test]
    fn a_member_left_behind_by_the_last_operation_neither_confirms_nor_counts() {
        // db2 was promoted when db1 died; db1 came back fenced and has not
        // rejoined when db2 dies too
        let addr = MysqlAddress::parse("127.0.0.12:3306").unwrap();
        let lost = server(Some(("127.0.0.12:3306", IoThread::Connecting)));
        let receiving = server(Some(("127.0.0.12:3306", IoThread::Running)));
        let fenced = server(None);
        let primary_down = MemberSeen {
            host: "db2",
            reporting: true,
            server: None,
            mysql_error: Some("Connection refused"),
            in_service: true,
            apart: false,
            silent_for: Some(SEC / 2),
            report_interval: SEC,
        };
        let m = |host, server, apart| MemberSeen {
            host,
            reporting: true,
            server,
            mysql_error: None,
            in_service: true,
            apart,
            silent_for: Some(SEC / 2),
            report_interval: SEC,
        };
        // without the mark, the fenced old primary outvotes db3
        let v = [
            primary_down,
            m("db1", Some(&fenced), false),
            m("db3", Some(&lost), false),
        ];
        assert!(matches!(
            assess("db2", &addr, &v),
            Health::Unconfirmed { .. }
        ));
        // marked: db3 alone confirms, and the evidence says why db1 is left out
        let v = [
            primary_down,
            m("db1", Some(&fenced), true),
            m("db3", Some(&lost), false),
        ];
        let Health::Down { path, evidence } = assess("db2", &addr, &v) else {
            panic!("{:?}", assess("db2", &addr, &v));
        };
        assert_eq!(path, DownPath::Fast);
        assert!(
            evidence
                .iter()
                .any(|e| e.contains("db1: left behind by the last operation")),
            "{evidence:?}"
        );
        // its mysqld still down, or its agent silent (the caller proved it
        // apart by the primary's registered replicas): left out all the same
        let v = [
            primary_down,
            m("db1", None, true),
            m("db3", Some(&lost), false),
        ];
        assert!(matches!(assess("db2", &addr, &v), Health::Down { .. }));
        let gone = MemberSeen {
            reporting: false,
            silent_for: Some(60 * SEC),
            ..m("db1", None, true)
        };
        let v = [primary_down, gone, m("db3", Some(&lost), false)];
        assert!(matches!(assess("db2", &addr, &v), Health::Down { .. }));
        // not apart (seen replicating from the primary): it counts, and
        // still receiving, it vetoes
        let v = [
            primary_down,
            m("db1", Some(&receiving), false),
            m("db3", Some(&lost), false),
        ];
        assert!(matches!(
            assess("db2", &addr, &v),
            Health::UnreachablePrimary { .. }
        ));
        // nobody else left: nobody confirms
        let v = [primary_down, m("db1", Some(&fenced), true)];
        assert!(matches!(
            assess("db2", &addr, &v),
            Health::Unconfirmed { .. }
        ));
    }
}
