//! `dbfleet rebuild HOST`: re-provisioning a member that cannot rejoin
//! (marked `needs-rebuild` after it diverged) or that a DBA wants fresh,
//! and making it a replica again, with one command.
//!
//! On MySQL the member's agent runs `CLONE INSTANCE FROM` a donor: a
//! healthy replica in service, the primary only when none is or when the
//! operator names it (a clone reads the donor's whole data set). On
//! MariaDB, which has no CLONE, the cluster's newest verified backup is
//! restored. Either way it is followed as a restore without a target: the
//! host is out of service while it runs, and back in service, rejoined by
//! the repair loop and no longer marked, when it completes.

use dbfleet_proto::model::Flavor;
use dbfleet_proto::pb;

use super::restore::{RestoreRecord, refuse};
use super::{BackupRecord, Backups, choose_host, stamp};
use crate::error::ServiceError;
use crate::fleet::MemberState;
use crate::store::ClusterRecord;

/// The member to clone `host` from: `named` when given (any member in
/// service but `host`), else the replica in service with the least lag,
/// else the primary. Members out of service (detached, diverged) never
/// serve: their data is not the cluster's.
fn donor<'a>(
    rec: &ClusterRecord,
    members: &'a [MemberState],
    host: &str,
    named: &str,
) -> Result<&'a MemberState, String> {
    let serving: Vec<MemberState> = members
        .iter()
        .filter(|m| m.host != host && !rec.control.out_of_service(&m.host))
        .cloned()
        .collect();
    let chosen = if named.is_empty() {
        choose_host(&serving).map_err(|e| format!("no member can be cloned from: {e}"))?
    } else if named == host {
        return Err(format!("{host} cannot be cloned from itself"));
    } else if !serving.iter().any(|m| m.host == named) {
        return Err(format!(
            "{named} is not a member of the cluster in service; name a replica that is"
        ));
    } else if members
        .iter()
        .find(|m| m.host == named)
        .and_then(MemberState::server)
        .is_none()
    {
        return Err(format!("{named}'s mysqld is not reachable"));
    } else {
        named.to_string()
    };
    members
        .iter()
        .find(|m| m.host == chosen)
        .ok_or_else(|| format!("{chosen} is not a member"))
}

/// The newest completed backup of the cluster whose verification passed.
fn newest_verified(rec: &ClusterRecord) -> Option<&BackupRecord> {
    rec.backups
        .values()
        .filter(|b| b.status == "completed" && b.verification == "verified")
        .max_by_key(|b| b.finished_at_unix_ms)
}

impl Backups {
    /// `dbfleet rebuild`.
    pub async fn rebuild(
        &self,
        req: pb::RebuildMemberRequest,
    ) -> Result<pb::RestoreView, ServiceError> {
        let epoch = self.fleet.ha().write_epoch()?;
        let (cluster, members) = self
            .fleet
            .cluster_names()
            .into_iter()
            .map(|c| {
                let members = self.fleet.members(&c);
                (c, members)
            })
            .find(|(_, members)| members.iter().any(|m| m.host == req.host))
            .ok_or_else(|| ServiceError::Refused(format!("{} is not a member", req.host)))?;
        let m = members
            .iter()
            .find(|m| m.host == req.host)
            .expect("found above");
        let rec = self.fleet.cluster_record(&cluster);
        if let Some(why) = refuse(&rec, m) {
            return Err(ServiceError::Refused(why));
        }
        let Some(server) = m.server() else {
            return Err(ServiceError::Refused(format!(
                "{}'s mysqld is not reachable",
                m.host
            )));
        };
        if server.flavor == Flavor::MariaDb {
            if !req.from.is_empty() {
                return Err(ServiceError::Refused(
                    "MariaDB has no CLONE: a MariaDB member is rebuilt from the newest verified backup; leave out --from".into(),
                ));
            }
            let b = newest_verified(&rec).ok_or_else(|| {
                ServiceError::Refused(format!(
                    "cluster {cluster} has no verified backup to rebuild {} from; take one and verify it (dbfleet backup run, dbfleet backup verify)",
                    m.host
                ))
            })?;
            let r = RestoreRecord {
                rebuild: true,
                ..RestoreRecord::running(format!("rebuild-{}-{}", m.host, stamp()), &b.id, &m.host)
            };
            return self.start(&cluster, m, epoch, r, None).await;
        }
        let d = donor(&rec, &members, &m.host, &req.from).map_err(ServiceError::Refused)?;
        // MySQL clones one instance at a time, and only between servers of
        // one version
        if let Some(job) = super::running_job(d) {
            return Err(ServiceError::Refused(format!(
                "{} is busy with {job}; retry when it ends, or name another donor with --from",
                d.host
            )));
        }
        let donor_version = d.server().map(|s| s.version.clone()).unwrap_or_default();
        if donor_version != server.version {
            return Err(ServiceError::Refused(format!(
                "{} runs MySQL {donor_version} and {} runs {}: CLONE copies only between servers of one version; upgrade one of them or name another donor with --from",
                d.host, m.host, server.version
            )));
        }
        let r = RestoreRecord {
            donor: d.host.clone(),
            rebuild: true,
            ..RestoreRecord::running(format!("rebuild-{}-{}", m.host, stamp()), "", &m.host)
        };
        let tls = self.fleet.replica_tuning(&cluster).tls();
        self.start(&cluster, m, epoch, r, Some((d.mysql_address.clone(), tls)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbfleet_proto::model::{
        IoThread, MysqlAddress, MysqlObservation, Name, Replication, Report, ServerState,
    };

    /// A reporting member: a replica lagging `lag` seconds, or (`None`)
    /// a primary, writable when `writable`.
    fn member(host: &str, lag: Option<u64>, writable: bool) -> MemberState {
        let replication = lag.map(|lag| Replication {
            tls: None,
            source: MysqlAddress::parse("127.0.0.1:3306").unwrap(),
            io_thread: IoThread::Running,
            sql_running: true,
            last_io_error: String::new(),
            last_sql_error: String::new(),
            seconds_behind: Some(lag),
            auto_position: true,
            received_gtid: String::new(),
            heartbeat_ms: None,
            net_timeout_ms: None,
        });
        let server = ServerState {
            tls: None,
            version: "9.7.4".into(),
            flavor: Flavor::MySql,
            server_id: 1,
            server_uuid: String::new(),
            read_only: !writable,
            super_read_only: !writable,
            gtid: Default::default(),
            replication,
            semi_sync: Default::default(),
            binlog: Default::default(),
            replicas_connected: 0,
            replica_server_ids: vec![],
        };
        MemberState {
            host: host.into(),
            mysql_address: "127.0.0.1:3306".into(),
            agent_address: None,
            report: Some(Report {
                host: Name::parse(host).unwrap(),
                cluster: Name::parse("main").unwrap(),
                agent_instance: "i".into(),
                sequence: 1,
                observed_at_unix_ms: 0,
                agent_version: "t".into(),
                mysql_address: MysqlAddress::parse("127.0.0.1:3306").unwrap(),
                mysql: MysqlObservation::Reachable(Box::new(server)),
                agent: Default::default(),
            }),
            received_at: None,
            reporting: true,
        }
    }

    fn names(rec: &ClusterRecord, members: &[MemberState], host: &str, named: &str) -> String {
        match donor(rec, members, host, named) {
            Ok(m) => m.host.clone(),
            Err(e) => format!("refused: {e}"),
        }
    }

    #[test]
    fn the_donor_is_a_replica_in_service_the_primary_only_when_none_is() {
        let members = vec![
            member("db1", None, true),
            member("db2", Some(5), false),
            member("db3", Some(1), false),
            member("db4", Some(0), false),
        ];
        let mut rec = ClusterRecord::empty("main");
        // the least lagging replica, never the host itself
        assert_eq!(names(&rec, &members, "db4", ""), "db3");
        assert_eq!(names(&rec, &members, "db3", ""), "db4");
        // a diverged or detached member never serves
        rec.control.needs_rebuild.insert("db4".into());
        rec.control.detached.insert("db3".into(), "restored".into());
        assert_eq!(names(&rec, &members, "db2", ""), "db1");
        // named: any member in service but the host
        assert_eq!(names(&rec, &members, "db4", "db1"), "db1");
        assert!(names(&rec, &members, "db4", "db4").contains("itself"));
        assert!(
            names(&rec, &members, "db2", "db3").contains("not a member of the cluster in service")
        );
        assert!(names(&rec, &members, "db2", "db9").contains("not a member"));
    }
}
