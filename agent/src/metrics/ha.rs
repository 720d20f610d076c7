//! What HA needs beyond mysqld_exporter, as `dbfleet_*` families: the
//! server's role and writability, replication configured (always present
//! while mysqld answers, so "not replicating" is a value rather than a
//! missing series), lag known and lag, how long ago anything arrived from
//! the source, semi-sync state and acks, the GTID
//! transaction count, the agent's fence and epoch, how long ago each
//! coordinator accepted a report, the last backup and the binlog archive's
//! lag. Every family carries `cluster` and `host`, so rules can group by
//! cluster without relabelling.

use std::collections::HashMap;

use dbfleet_proto::model::{Flavor, IoThread, ServerState};
use dbfleet_proto::pb;

use super::family::{Family, Kind};

/// What the HA families are made from, read from memory at scrape time.
pub struct HaInputs<'a> {
    /// The agent's cluster.
    pub cluster: &'a str,
    /// The agent's host.
    pub host: &'a str,
    /// The server as last observed (`None`: mysqld did not answer).
    pub state: Option<&'a ServerState>,
    /// Its global status, for counters reports do not carry.
    pub status: Option<&'a HashMap<String, String>>,
    /// The read-only guard holds the server fenced.
    pub fenced: bool,
    /// Term of the highest epoch this agent promised.
    pub epoch_term: u64,
    /// Each coordinator's address and the seconds since it last accepted a
    /// report (since the agent started, if never).
    pub coordinators: &'a [(String, f64)],
    /// Backup, verification and restore jobs, newest last.
    pub jobs: &'a [pb::Job],
    /// The binlog archive, when archiving.
    pub archive: Option<&'a pb::BinlogArchive>,
    /// Seconds since replication last received something from the source
    /// (see [`super::receive`]).
    pub receive_age: Option<f64>,
    /// Now, Unix ms.
    pub now_unix_ms: i64,
}

const ROLES: [&str; 4] = ["primary", "replica", "read_only", "down"];

/// The server's role as this agent sees it: `replica` when replication is
/// configured, `primary` when it accepts writes, `read_only` otherwise
/// (a fenced or starting server), `down` when mysqld does not answer.
fn role(state: Option<&ServerState>) -> &'static str {
    match state {
        None => "down",
        Some(s) if s.replication.is_some() => "replica",
        Some(s) if s.writable() => "primary",
        Some(_) => "read_only",
    }
}

/// Transactions in an executed GTID set: the sequence numbers reached in
/// every MariaDB domain, or the size of every MySQL interval.
pub fn gtid_transactions(flavor: Flavor, executed: &str) -> Option<u64> {
    match flavor {
        Flavor::MariaDb => dbfleet_common::gtid::Position::parse(executed)
            .ok()
            .map(|p| p.domains().map(|d| p.seq(d)).sum()),
        Flavor::MySql => {
            let mut total = 0u64;
            for uuid_set in executed.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                for interval in uuid_set.split(':').skip(1) {
                    // a tagged GTID (8.3+) has a tag word between intervals
                    if interval.chars().next().is_some_and(|c| !c.is_ascii_digit()) {
                        continue;
                    }
                    let (a, b) = interval.split_once('-').unwrap_or((interval, interval));
                    let (a, b) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
                    total += b.checked_sub(a)? + 1;
                }
            }
            Some(total)
        }
    }
}

fn bit(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// The `dbfleet_*` families.
pub fn families(i: &HaInputs<'_>) -> Vec<Family> {
    let id = [("cluster", i.cluster), ("host", i.host)];
    let one = |name: &str, help: &str, kind: Kind, value: f64| {
        Family::single(name, help, kind, &id, value)
    };
    let mut out = Vec::new();
    let mut roles = Family::new(
        "dbfleet_role",
        "1 for the server's role as its agent sees it: primary (writable), replica (replication configured), read_only, down",
        Kind::Gauge,
    );
    let current = role(i.state);
    for r in ROLES {
        roles.push(&[id[0], id[1], ("role", r)], bit(r == current));
    }
    out.push(roles);
    out.push(one(
        "dbfleet_fenced",
        "1 while the agent holds the server read-only (fenced)",
        Kind::Gauge,
        bit(i.fenced),
    ));
    out.push(one(
        "dbfleet_epoch_term",
        "Term of the highest coordinator epoch this agent promised",
        Kind::Gauge,
        i.epoch_term as f64,
    ));
    let mut reports = Family::new(
        "dbfleet_coordinator_report_age_seconds",
        "Seconds since the coordinator last accepted a report from this agent (since the agent started, if never)",
        Kind::Gauge,
    );
    for (addr, age) in i.coordinators {
        reports.push(&[id[0], id[1], ("coordinator", addr)], *age);
    }
    out.push(reports);
    if let Some(s) = i.state {
        out.push(one(
            "dbfleet_mysql_writable",
            "1 when the server accepts writes (neither read_only nor super_read_only)",
            Kind::Gauge,
            bit(s.writable()),
        ));
        out.push(one(
            "dbfleet_replication_configured",
            "1 when the server is configured as a replica (present whenever mysqld answers)",
            Kind::Gauge,
            bit(s.replication.is_some()),
        ));
        if let Some(n) = gtid_transactions(s.flavor, &s.gtid.executed) {
            out.push(one(
                "dbfleet_gtid_executed_transactions",
                "Transactions in the server's executed GTID set",
                Kind::Gauge,
                n as f64,
            ));
        }
        let ss = &s.semi_sync;
        out.push(one(
            "dbfleet_semi_sync_source_enabled",
            "Semi-sync source side enabled",
            Kind::Gauge,
            bit(ss.source_enabled),
        ));
        out.push(one(
            "dbfleet_semi_sync_source_active",
            "Semi-sync source side waiting for acks now (0: fell back to async, or disabled)",
            Kind::Gauge,
            bit(ss.source_active),
        ));
        out.push(one(
            "dbfleet_semi_sync_replica_enabled",
            "Semi-sync replica side enabled",
            Kind::Gauge,
            bit(ss.replica_enabled),
        ));
        out.push(one(
            "dbfleet_semi_sync_replica_active",
            "Semi-sync replica side acknowledging now",
            Kind::Gauge,
            bit(ss.replica_active),
        ));
        out.push(one(
            "dbfleet_semi_sync_clients",
            "Replicas acknowledging now",
            Kind::Gauge,
            f64::from(ss.clients),
        ));
        out.push(one(
            "dbfleet_semi_sync_lossless",
            "1 when every acknowledged commit is on a replica (semi-sync with no async fallback)",
            Kind::Gauge,
            bit(ss.lossless()),
        ));
        let status = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| i.status?.get(*n)?.parse::<f64>().ok())
        };
        if let Some(v) = status(["Rpl_semi_sync_master_yes_tx", "Rpl_semi_sync_source_yes_tx"]) {
            out.push(one(
                "dbfleet_semi_sync_acked_transactions_total",
                "Commits a replica acknowledged",
                Kind::Counter,
                v,
            ));
        }
        if let Some(v) = status(["Rpl_semi_sync_master_no_tx", "Rpl_semi_sync_source_no_tx"]) {
            out.push(one(
                "dbfleet_semi_sync_unacked_transactions_total",
                "Commits no replica acknowledged (async fallback)",
                Kind::Counter,
                v,
            ));
        }
        if let Some(r) = &s.replication {
            out.push(one(
                "dbfleet_replication_io_running",
                "1 while the IO (receiver) thread is connected to its source",
                Kind::Gauge,
                bit(r.io_thread == IoThread::Running),
            ));
            out.push(one(
                "dbfleet_replication_io_connecting",
                "1 while the IO thread is trying to connect",
                Kind::Gauge,
                bit(r.io_thread == IoThread::Connecting),
            ));
            out.push(one(
                "dbfleet_replication_sql_running",
                "1 while the SQL (applier) thread runs",
                Kind::Gauge,
                bit(r.sql_running),
            ));
            out.push(one("dbfleet_replication_lag_known", "1 when the server knows its lag (0 when the applier is stopped: the lag is unknown, not zero)", Kind::Gauge, bit(r.seconds_behind.is_some())));
            if let Some(lag) = r.seconds_behind {
                out.push(one(
                    "dbfleet_replication_lag_seconds",
                    "Seconds_Behind_Master, present when known",
                    Kind::Gauge,
                    lag as f64,
                ));
            }
            if let Some(ms) = r.heartbeat_ms {
                out.push(one(
                    "dbfleet_replication_heartbeat_period_seconds",
                    "Heartbeat period the replica asked of its source",
                    Kind::Gauge,
                    ms as f64 / 1000.0,
                ));
            }
            if let Some(age) = i.receive_age {
                out.push(one(
                    "dbfleet_replication_last_received_age_seconds",
                    "Seconds since the IO thread last received a heartbeat or an event from the source (since the agent first saw the replica, if nothing since)",
                    Kind::Gauge,
                    age,
                ));
            }
            if let Some(v) = status(["Slave_received_heartbeats", "Replica_received_heartbeats"]) {
                out.push(one(
                    "dbfleet_replication_heartbeats_received_total",
                    "Heartbeats received from the source",
                    Kind::Counter,
                    v,
                ));
            }
        }
    }
    let finished: Vec<&pb::Job> = i
        .jobs
        .iter()
        .filter(|j| j.kind == "backup" && j.state != "running")
        .collect();
    if let Some(last) = finished.last() {
        out.push(one(
            "dbfleet_backup_last_succeeded",
            "1 when the last backup this agent finished completed, 0 when it failed",
            Kind::Gauge,
            bit(last.state == "completed"),
        ));
    }
    let last_completed_ms = finished
        .iter()
        .filter(|j| j.state == "completed")
        .filter_map(|j| {
            serde_json::from_str::<serde_json::Value>(&j.manifest_json).ok()?["finished_at_unix_ms"]
                .as_i64()
        })
        .max();
    if let Some(ms) = last_completed_ms {
        out.push(one(
            "dbfleet_backup_last_completed_age_seconds",
            "Seconds since the last backup this agent completed",
            Kind::Gauge,
            (i.now_unix_ms - ms).max(0) as f64 / 1000.0,
        ));
    }
    if let Some(a) = i.archive {
        out.push(one(
            "dbfleet_binlog_archive_lag_seconds",
            "How far the binlog archive is behind the server: the RPO as it stands",
            Kind::Gauge,
            a.lag_ms as f64 / 1000.0,
        ));
        out.push(one(
            "dbfleet_binlog_archive_failing",
            "1 when the archive's last pass failed",
            Kind::Gauge,
            bit(!a.error.is_empty()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_sets_count_their_transactions() {
        assert_eq!(gtid_transactions(Flavor::MariaDb, "0-1-22,1-3-7"), Some(29));
        assert_eq!(gtid_transactions(Flavor::MariaDb, ""), Some(0));
        assert_eq!(
            gtid_transactions(
                Flavor::MySql,
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:11-12,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:3"
            ),
            Some(8)
        );
        assert_eq!(gtid_transactions(Flavor::MySql, "uuid:5-3"), None);
    }

    #[test]
    fn a_down_server_has_only_the_agent_families_and_role_down() {
        let inputs = HaInputs {
            cluster: "main",
            host: "db1",
            state: None,
            status: None,
            fenced: true,
            epoch_term: 4,
            coordinators: &[("127.0.0.1:7200".into(), 1.5)],
            jobs: &[],
            archive: None,
            receive_age: Some(1.0),
            now_unix_ms: 0,
        };
        let fams = families(&inputs);
        let role = fams.iter().find(|f| f.name == "dbfleet_role").unwrap();
        assert_eq!(role.value(&[("role", "down")]), Some(1.0));
        assert_eq!(role.value(&[("role", "primary")]), Some(0.0));
        assert!(!fams.iter().any(|f| {
            f.name == "dbfleet_replication_configured"
                || f.name == "dbfleet_replication_last_received_age_seconds"
        }));
        let fenced = fams.iter().find(|f| f.name == "dbfleet_fenced").unwrap();
        assert_eq!(
            fenced.value(&[("cluster", "main"), ("host", "db1")]),
            Some(1.0)
        );
    }
}
