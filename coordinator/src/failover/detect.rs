//! The holistic rule that declares a primary dead (brief §5), free of I/O:
//! the caller feeds what each member's agent last said and keeps the clock.

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
}

/// Which path a dead primary takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownPath {
    /// Its agent is alive and says mysqld is down: the agent is the fence.
    Fast,
    /// Its agent is silent too: a longer window and a fence from elsewhere.
    Slow,
}

/// The verdict on a cluster's primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The primary's agent reaches it.
    Up,
    /// Down from our side and confirmed by a majority of the other members
    /// (replicas that lost it), with no reachable replica still receiving.
    Down {
        /// Fast or slow.
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
    if p.server.is_some() {
        return Health::Up;
    }
    let (path, mut evidence) = match (p.reporting, p.mysql_error) {
        (true, Some(e)) => (
            DownPath::Fast,
            vec![format!("{primary}: agent reports mysqld unreachable: {e}")],
        ),
        _ => (
            DownPath::Slow,
            vec![format!("{primary}: agent not reporting")],
        ),
    };
    let replicas: Vec<&MemberSeen<'_>> = members
        .iter()
        .filter(|m| m.host != primary && m.in_service)
        .collect();
    if replicas.is_empty() {
        return Health::Unconfirmed {
            why: "no replica can confirm the primary is down".into(),
        };
    }
    let reachable: Vec<&&MemberSeen<'_>> = replicas.iter().filter(|m| m.server.is_some()).collect();
    let mut still_receiving = Vec::new();
    let mut confirming = 0;
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
        return Health::UnreachablePrimary { evidence };
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
        };
        let r = |host, s| MemberSeen {
            host,
            reporting: true,
            server: Some(s),
            mysql_error: None,
            in_service: true,
        };
        let silent = |host| MemberSeen {
            host,
            reporting: false,
            server: None,
            mysql_error: None,
            in_service: true,
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
        // agent silent too: slow path
        let m = [silent("db1"), r("db2", &lost), r("db3", &lost)];
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
}
