//! `dbfleet status`: the fleet as a table for people and as JSON for
//! scripts. The JSON shape is a contract documented in `docs/cli.md`; add
//! fields, never rename or remove them.

use std::fmt::Write;

use dbfleet_proto::model::member_role_name;
use dbfleet_proto::pb;
use serde::Serialize;

/// The `--output json` document.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// Which coordinator answered.
    pub coordinator: String,
    /// Every cluster.
    pub clusters: Vec<ClusterJson>,
}

/// One cluster.
#[derive(Debug, Serialize)]
pub struct ClusterJson {
    /// Cluster name.
    pub name: String,
    /// The primary's host, or null when none is known.
    pub primary: Option<String>,
    /// Members in name order.
    pub members: Vec<MemberJson>,
    /// Problems; empty when healthy.
    pub problems: Vec<ProblemJson>,
    /// Lag above this is a problem.
    pub max_lag_seconds: u64,
    /// Heartbeat period every replica gets.
    pub replica_heartbeat_ms: u64,
    /// Net timeout every replica gets.
    pub replica_net_timeout_ms: u64,
    /// Semi-sync as dbfleet keeps it (`lossless`, `off`), or null when it
    /// leaves semi-sync as the members are configured.
    pub semi_sync_policy: Option<String>,
    /// TLS to MySQL as the policy requires it (`required`, `off`); null
    /// from a coordinator that does not say.
    pub mysql_tls_policy: Option<String>,
    /// The failover controls (automatic failover, maintenance, budget,
    /// hold, the operation running), as `dbfleet failover-policy` prints
    /// them; null from a coordinator that does not send them.
    pub control: Option<serde_json::Value>,
    /// What would happen if the primary died now; null when there is no
    /// writable primary to judge.
    pub readiness: Option<ReadinessJson>,
}

/// What a failover of the primary would find now.
#[derive(Debug, Serialize)]
pub struct ReadinessJson {
    /// No reason in `not_ready`.
    pub ready: bool,
    /// Who would be promoted; null when nobody could be.
    pub candidate: Option<String>,
    /// The fence proof if mysqld died and its agent lived; null: none.
    pub mysqld_death_proof: Option<String>,
    /// About how long until writable after that; null: unknown.
    pub mysqld_death_expected_ms: Option<u64>,
    /// The fence proof if the whole host died; null: none.
    pub host_death_proof: Option<String>,
    /// About how long until writable after a host death.
    pub host_death_expected_ms: Option<u64>,
    /// Why an acknowledged write could be lost; null: it could not.
    pub data_loss: Option<String>,
    /// Why an automatic failover would not happen or would block.
    pub not_ready: Vec<String>,
}

/// One member.
#[derive(Debug, Serialize)]
pub struct MemberJson {
    /// Host name.
    pub host: String,
    /// "primary", "replica" or "unknown".
    pub role: &'static str,
    /// Accepts writes (read_only off), as last observed.
    pub writable: bool,
    /// The agent reports and reaches mysqld.
    pub reachable: bool,
    /// The agent reported within the agent timeout.
    pub reporting: bool,
    /// `read_only` as last observed.
    pub read_only: bool,
    /// "mariadb" or "mysql"; null when never reached.
    pub flavor: Option<&'static str>,
    /// Executed GTID set.
    pub gtid_executed: String,
    /// Replication lag, null when unknown or not a replica.
    pub lag_seconds: Option<u64>,
    /// Replication IO thread running.
    pub io_running: bool,
    /// Replication SQL thread running.
    pub sql_running: bool,
    /// mysqld address.
    pub mysql_address: String,
    /// The source it replicates from, null when not a replica.
    pub source: Option<String>,
    /// Server version.
    pub version: String,
    /// Age of the last report in milliseconds, null when never reported.
    pub last_report_age_ms: Option<u64>,
    /// The agent keeps it read-only until a promotion.
    pub fenced: bool,
    /// Has transactions the primary never had: rebuild it.
    pub needs_rebuild: bool,
    /// Left behind by the last failover or switchover, not replicating
    /// from the primary yet.
    pub rejoining: bool,
    /// "lossless", "source", "replica" or "off"; null when unreachable.
    pub semi_sync: Option<String>,
    /// Binlog archiving; null when its agent does not archive.
    pub binlog_archive: Option<ArchiveJson>,
}

/// How far a member's binlogs are archived.
#[derive(Debug, Serialize)]
pub struct ArchiveJson {
    /// The archive stream.
    pub stream: String,
    /// Archived up to this file and position.
    pub file: String,
    /// See `file`.
    pub position: u64,
    /// Milliseconds since the archive last held everything the server
    /// had committed (the RPO now).
    pub lag_ms: u64,
    /// Why the last pass failed; null when it did not.
    pub error: Option<String>,
}

/// One problem.
#[derive(Debug, Serialize)]
pub struct ProblemJson {
    /// Stable kind, e.g. "replica-io-stopped".
    pub kind: String,
    /// Host concerned, null for cluster-wide problems.
    pub host: Option<String>,
    /// Human explanation.
    pub message: String,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Converts the coordinator's answer to the JSON contract.
pub fn to_json(resp: &pb::ListClustersResponse) -> StatusJson {
    StatusJson {
        coordinator: resp.coordinator_id.clone(),
        clusters: resp
            .clusters
            .iter()
            .map(|c| ClusterJson {
                name: c.name.clone(),
                primary: non_empty(&c.primary),
                members: c
                    .members
                    .iter()
                    .map(|m| MemberJson {
                        host: m.host.clone(),
                        role: member_role_name(m.role),
                        writable: m.writable,
                        reachable: m.reachable,
                        reporting: m.reporting,
                        read_only: m.read_only,
                        flavor: match pb::Flavor::try_from(m.flavor) {
                            Ok(pb::Flavor::Mariadb) => Some("mariadb"),
                            Ok(pb::Flavor::Mysql) => Some("mysql"),
                            _ => None,
                        },
                        gtid_executed: m.gtid_executed.clone(),
                        lag_seconds: m.lag_seconds,
                        io_running: m.io_running,
                        sql_running: m.sql_running,
                        mysql_address: m.mysql_address.clone(),
                        source: non_empty(&m.source),
                        version: m.version.clone(),
                        last_report_age_ms: m.last_report_age_ms,
                        fenced: m.fenced,
                        needs_rebuild: m.needs_rebuild,
                        rejoining: m.rejoining,
                        semi_sync: non_empty(&m.semi_sync),
                        binlog_archive: m.binlog_archive.as_ref().map(|a| ArchiveJson {
                            stream: a.stream.clone(),
                            file: a.file.clone(),
                            position: a.position,
                            lag_ms: a.lag_ms,
                            error: non_empty(&a.error),
                        }),
                    })
                    .collect(),
                problems: c
                    .problems
                    .iter()
                    .map(|p| ProblemJson {
                        kind: p.kind.clone(),
                        host: non_empty(&p.host),
                        message: p.message.clone(),
                    })
                    .collect(),
                max_lag_seconds: c.policy.as_ref().map_or(0, |p| p.max_lag_seconds),
                replica_heartbeat_ms: c.policy.as_ref().map_or(0, |p| p.replica_heartbeat_ms),
                replica_net_timeout_ms: c.policy.as_ref().map_or(0, |p| p.replica_net_timeout_ms),
                semi_sync_policy: c.policy.as_ref().and_then(|p| non_empty(&p.semi_sync)),
                mysql_tls_policy: c.policy.as_ref().and_then(|p| non_empty(&p.mysql_tls)),
                control: c.control.as_ref().map(crate::failover::control_json),
                readiness: c.readiness.as_ref().map(|r| ReadinessJson {
                    ready: r.ready,
                    candidate: non_empty(&r.candidate),
                    mysqld_death_proof: non_empty(&r.mysqld_death_proof),
                    mysqld_death_expected_ms: Some(r.mysqld_death_expected_ms).filter(|ms| *ms > 0),
                    host_death_proof: non_empty(&r.host_death_proof),
                    host_death_expected_ms: Some(r.host_death_expected_ms).filter(|ms| *ms > 0),
                    data_loss: non_empty(&r.data_loss),
                    not_ready: r.not_ready.clone(),
                }),
            })
            .collect(),
    }
}

/// Renders a tree per cluster, aligned for reading at a glance.
pub fn to_table(s: &StatusJson) -> String {
    let mut out = String::new();
    if s.clusters.is_empty() {
        let _ = writeln!(out, "no clusters yet (coordinator {})", s.coordinator);
    }
    for c in &s.clusters {
        let health = if c.problems.is_empty() {
            "healthy"
        } else {
            "PROBLEMS"
        };
        let _ = writeln!(
            out,
            "cluster {}  primary {}  {}  (coordinator {})",
            c.name,
            c.primary.as_deref().unwrap_or("-"),
            health,
            s.coordinator
        );
        let rows: Vec<[String; 7]> = c
            .members
            .iter()
            .map(|m| {
                let problems = c
                    .problems
                    .iter()
                    .filter(|p| p.host.as_deref() == Some(&m.host))
                    .count();
                let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
                let replica = m.role == "replica";
                [
                    m.host.clone(),
                    m.role.to_string(),
                    if !m.reachable {
                        "unreachable".into()
                    } else if m.writable {
                        "writable".into()
                    } else {
                        "read-only".into()
                    },
                    if m.gtid_executed.is_empty() {
                        "-".into()
                    } else {
                        m.gtid_executed.clone()
                    },
                    m.lag_seconds.map_or("-".into(), |l| format!("{l}s")),
                    if replica {
                        format!("{}/{}", yes_no(m.io_running), yes_no(m.sql_running))
                    } else {
                        "-".into()
                    },
                    if problems == 0 {
                        String::new()
                    } else {
                        format!("{problems} problem(s)")
                    },
                ]
            })
            .collect();
        let header = ["HOST", "ROLE", "STATE", "GTID", "LAG", "IO/SQL", ""];
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: [&str; 7]| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    let _ = write!(l, "{cell:<w$}  ");
                }
            }
            l.trim_end().to_string()
        };
        let _ = writeln!(out, "   {}", line(header));
        for (i, r) in rows.iter().enumerate() {
            let branch = if i + 1 == rows.len() {
                "└─"
            } else {
                "├─"
            };
            let cells = [&*r[0], &*r[1], &*r[2], &*r[3], &*r[4], &*r[5], &*r[6]];
            let _ = writeln!(out, "{branch} {}", line(cells));
        }
        if let Some(line) = c.readiness.as_ref().and_then(|r| readiness_line(c, r)) {
            let _ = writeln!(out, "   {line}");
        }
        for p in &c.problems {
            let _ = writeln!(
                out,
                "   ! {} {}: {}",
                p.host.as_deref().unwrap_or("cluster"),
                p.kind,
                p.message
            );
        }
    }
    out
}

/// "if db1 died now: db2 takes over (...)", for the table, or that no
/// automatic failover would complete (the problem says why).
fn readiness_line(c: &ClusterJson, r: &ReadinessJson) -> Option<String> {
    let primary = c.primary.as_deref()?;
    if !r.ready {
        return Some(format!(
            "if {primary} died now: no automatic failover would complete (see failover-not-ready)"
        ));
    }
    let candidate = r.candidate.as_deref()?;
    let secs = |ms: u64| format!("{:.1} s", ms as f64 / 1000.0);
    let mut parts = Vec::new();
    if let Some(ms) = r.mysqld_death_expected_ms {
        parts.push(format!("mysqld death about {}", secs(ms)));
    }
    match r.host_death_expected_ms {
        Some(ms) => parts.push(format!("host death about {}", secs(ms))),
        None => parts.push("host death blocks (no fence proof)".into()),
    }
    let loss = match &r.data_loss {
        Some(_) => "acknowledged writes could be lost (semi-sync not lossless)",
        None => "no acknowledged write lost",
    };
    Some(format!(
        "if {primary} died now: {candidate} takes over ({}); {loss}",
        parts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_contract_fields() {
        let resp = pb::ListClustersResponse {
            coordinator_id: "c1".into(),
            clusters: vec![pb::ClusterView {
                control: None,
                readiness: None,
                name: "main".into(),
                primary: String::new(),
                members: vec![pb::MemberView {
                    host: "db1".into(),
                    role: pb::MemberRole::Replica as i32,
                    ..Default::default()
                }],
                problems: vec![pb::Problem {
                    kind: "no-writable".into(),
                    host: String::new(),
                    message: "x".into(),
                }],
                policy: None,
            }],
        };
        let v = serde_json::to_value(to_json(&resp)).unwrap();
        assert!(v["clusters"][0]["primary"].is_null());
        let m = &v["clusters"][0]["members"][0];
        for f in [
            "host",
            "role",
            "writable",
            "reachable",
            "gtid_executed",
            "lag_seconds",
            "io_running",
            "sql_running",
        ] {
            assert!(m.get(f).is_some(), "missing {f}");
        }
        assert_eq!(m["role"], "replica");
        assert!(m["lag_seconds"].is_null());
        assert!(v["clusters"][0]["problems"][0]["host"].is_null());
        let table = to_table(&to_json(&resp));
        assert!(
            table.contains("cluster main") && table.contains("no-writable"),
            "{table}"
        );
    }
}
