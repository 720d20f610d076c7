//! `dbfleet top`: one frame of the live view, computed from the
//! coordinator's answer and the previous frame's samples. Pure (no clock,
//! no terminal), so what a frame shows, the QPS above all, is unit-tested;
//! [`crate::watch`] does the refreshing and the drawing. The JSON frame is
//! a contract documented in `docs/cli.md`: add fields, never rename or
//! remove them.

use std::collections::HashMap;
use std::fmt::Write;

use dbfleet_proto::pb;
use serde::Serialize;

use crate::status::ProblemJson;
use dbfleet_proto::model::member_role_name;

/// Shown for a value that does not apply or is unknown.
const NONE: &str = "—";

/// One `--output json` line: a whole frame.
#[derive(Debug, Serialize)]
pub struct TopJson {
    /// When the CLI took this frame (Unix ms, CLI clock).
    pub at_unix_ms: i64,
    /// Which coordinator answered.
    pub coordinator: String,
    /// Every cluster.
    pub clusters: Vec<TopCluster>,
}

/// One cluster of a frame.
#[derive(Debug, Serialize)]
pub struct TopCluster {
    /// Cluster name.
    pub name: String,
    /// The primary's host, or null when none is known.
    pub primary: Option<String>,
    /// No problems.
    pub healthy: bool,
    /// Members in the coordinator's order (by name).
    pub members: Vec<TopMember>,
    /// Problems; empty when healthy.
    pub problems: Vec<ProblemJson>,
}

/// One member's row.
#[derive(Debug, Serialize)]
pub struct TopMember {
    /// Host name.
    pub host: String,
    /// "primary", "replica" or "unknown" (as in `dbfleet status`).
    pub role: &'static str,
    /// Accepts writes, as last observed.
    pub writable: bool,
    /// The agent reports and reaches mysqld.
    pub reachable: bool,
    /// Statements per second between the last two observations; null on
    /// the first one, after a restart (the counter went backwards) and
    /// without load counters.
    pub qps: Option<f64>,
    /// The `Questions` counter; null when the server did not answer.
    pub queries_total: Option<u64>,
    /// `Threads_connected`; null without load counters.
    pub threads_connected: Option<u32>,
    /// `Threads_running`; null without load counters.
    pub threads_running: Option<u32>,
    /// `Uptime`; null without load counters.
    pub uptime_seconds: Option<u64>,
    /// When the agent observed the counters (Unix ms, agent clock).
    pub observed_at_unix_ms: Option<i64>,
    /// Replication lag, null when unknown or not a replica.
    pub lag_seconds: Option<u64>,
    /// Replication IO thread running.
    pub io_running: bool,
    /// Replication SQL thread running.
    pub sql_running: bool,
    /// "lossless", "source", "replica" or "off"; null when unreachable.
    pub semi_sync: Option<String>,
    /// Age of the last report in milliseconds, null when never reported.
    pub last_report_age_ms: Option<u64>,
}

/// What one member looked like in the previous frame: the rate needs two
/// observations, and a view repeated before a new report arrived must keep
/// the rate it had rather than blank it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    queries_total: u64,
    uptime_seconds: u64,
    observed_at_unix_ms: i64,
    qps: Option<f64>,
}

/// The samples of the previous frame, per cluster and host; empty before
/// the first.
#[derive(Debug, Clone, Default)]
pub struct Previous(HashMap<(String, String), Sample>);

/// The rate of `load.queries_total` since `prev`, over the agent's clock.
fn sample(prev: Option<&Sample>, load: &pb::ServerLoad, at: i64) -> Sample {
    let qps = match prev {
        // The same report seen again (we refresh faster than agents
        // report): the same rate.
        Some(p)
            if p.observed_at_unix_ms == at
                && p.queries_total == load.queries_total
                && p.uptime_seconds == load.uptime_seconds =>
        {
            p.qps
        }
        // A later observation of the same server run.
        Some(p)
            if at > p.observed_at_unix_ms
                && load.queries_total >= p.queries_total
                && load.uptime_seconds >= p.uptime_seconds =>
        {
            let seconds = (at - p.observed_at_unix_ms) as f64 / 1000.0;
            Some((load.queries_total - p.queries_total) as f64 / seconds)
        }
        // First sight, a restart (counter or uptime went backwards), or
        // the agent's clock stepped back: no rate until the next one.
        _ => None,
    };
    Sample {
        queries_total: load.queries_total,
        uptime_seconds: load.uptime_seconds,
        observed_at_unix_ms: at,
        qps,
    }
}

/// The frame for `resp` given the previous frame's samples, and the
/// samples to pass to the next call. `at_unix_ms` only stamps the frame.
pub fn frame(
    resp: &pb::ListClustersResponse,
    prev: &Previous,
    at_unix_ms: i64,
) -> (TopJson, Previous) {
    let mut next = Previous::default();
    let clusters = resp
        .clusters
        .iter()
        .map(|c| TopCluster {
            name: c.name.clone(),
            primary: (!c.primary.is_empty()).then(|| c.primary.clone()),
            healthy: c.problems.is_empty(),
            members: c
                .members
                .iter()
                .map(|m| {
                    let key = (c.name.clone(), m.host.clone());
                    let observed = m.load.as_ref().filter(|_| m.observed_at_unix_ms > 0);
                    let s = observed.map(|l| sample(prev.0.get(&key), l, m.observed_at_unix_ms));
                    if let Some(s) = s {
                        next.0.insert(key, s);
                    }
                    TopMember {
                        host: m.host.clone(),
                        role: member_role_name(m.role),
                        writable: m.writable,
                        reachable: m.reachable,
                        qps: s.and_then(|s| s.qps),
                        queries_total: observed.map(|l| l.queries_total),
                        threads_connected: observed.map(|l| l.threads_connected),
                        threads_running: observed.map(|l| l.threads_running),
                        uptime_seconds: observed.map(|l| l.uptime_seconds),
                        observed_at_unix_ms: observed.map(|_| m.observed_at_unix_ms),
                        lag_seconds: m.lag_seconds,
                        io_running: m.io_running,
                        sql_running: m.sql_running,
                        semi_sync: (!m.semi_sync.is_empty()).then(|| m.semi_sync.clone()),
                        last_report_age_ms: m.last_report_age_ms,
                    }
                })
                .collect(),
            problems: c
                .problems
                .iter()
                .map(|p| ProblemJson {
                    kind: p.kind.clone(),
                    host: (!p.host.is_empty()).then(|| p.host.clone()),
                    message: p.message.clone(),
                })
                .collect(),
        })
        .collect();
    let json = TopJson {
        at_unix_ms,
        coordinator: resp.coordinator_id.clone(),
        clusters,
    };
    (json, next)
}

const HEADER: [&str; 10] = [
    "HOST",
    "ROLE",
    "WRITABLE",
    "QPS",
    "CONN",
    "RUN",
    "LAG",
    "IO/SQL",
    "SEMI-SYNC",
    "REPORT",
];

fn row(m: &TopMember) -> [String; 10] {
    let or_none = |v: Option<String>| v.unwrap_or_else(|| NONE.to_string());
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    [
        m.host.clone(),
        match m.role {
            "unknown" => NONE.to_string(),
            r => r.to_string(),
        },
        if !m.reachable {
            "unreachable".into()
        } else {
            yes_no(m.writable).into()
        },
        // Blank, not "—": there is a rate, just not yet.
        m.qps.map_or(String::new(), |q| format!("{q:.1}")),
        or_none(m.threads_connected.map(|n| n.to_string())),
        or_none(m.threads_running.map(|n| n.to_string())),
        or_none(m.lag_seconds.map(|l| format!("{l}s"))),
        if m.role == "replica" {
            format!("{}/{}", yes_no(m.io_running), yes_no(m.sql_running))
        } else {
            NONE.into()
        },
        or_none(m.semi_sync.clone()),
        m.last_report_age_ms
            .map_or("never".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
    ]
}

/// Columns padded to their widest cell (in characters: "—" is one).
fn aligned(rows: &[[String; 10]]) -> Vec<String> {
    let mut widths = [0usize; 10];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|r| {
            let mut l = String::new();
            for (cell, w) in r.iter().zip(widths) {
                let _ = write!(l, "{cell:<w$}  ");
            }
            l.trim_end().to_string()
        })
        .collect()
}

/// The frame as text lines: per cluster a header, a row per member and
/// the problems. Never a blank line: in a pipe, a blank line ends a frame.
pub fn lines(f: &TopJson) -> Vec<String> {
    let mut out = Vec::new();
    if f.clusters.is_empty() {
        out.push(format!("no clusters yet (coordinator {})", f.coordinator));
    }
    for c in &f.clusters {
        let health = match c.problems.len() {
            0 => "healthy".to_string(),
            1 => "1 problem".to_string(),
            n => format!("{n} problems"),
        };
        out.push(format!(
            "cluster {}  primary {}  {health}  (coordinator {})",
            c.name,
            c.primary.as_deref().unwrap_or(NONE),
            f.coordinator
        ));
        let mut rows = vec![HEADER.map(String::from)];
        rows.extend(c.members.iter().map(row));
        out.extend(aligned(&rows).into_iter().map(|l| format!("  {l}")));
        for p in &c.problems {
            out.push(format!(
                "  ! {} {}: {}",
                p.host.as_deref().unwrap_or("cluster"),
                p.kind,
                p.message
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(host: &str, role: pb::MemberRole, load: Option<(u64, i64)>) -> pb::MemberView {
        pb::MemberView {
            host: host.into(),
            role: role as i32,
            reachable: true,
            writable: role == pb::MemberRole::Primary,
            load: load.map(|(q, _)| pb::ServerLoad {
                queries_total: q,
                threads_connected: 3,
                threads_running: 1,
                uptime_seconds: 600,
            }),
            observed_at_unix_ms: load.map_or(0, |(_, at)| at),
            last_report_age_ms: Some(400),
            ..Default::default()
        }
    }

    fn view(members: Vec<pb::MemberView>) -> pb::ListClustersResponse {
        pb::ListClustersResponse {
            coordinator_id: "c1".into(),
            clusters: vec![pb::ClusterView {
                name: "main".into(),
                primary: "db1".into(),
                members,
                ..Default::default()
            }],
        }
    }

    fn qps(f: &TopJson, host: &str) -> Option<f64> {
        f.clusters[0]
            .members
            .iter()
            .find(|m| m.host == host)
            .unwrap()
            .qps
    }

    #[test]
    fn qps_is_the_counter_rate_over_the_agent_clock() {
        let first = view(vec![member(
            "db1",
            pb::MemberRole::Primary,
            Some((1000, 10_000)),
        )]);
        let (f1, prev) = frame(&first, &Previous::default(), 1);
        assert_eq!(qps(&f1, "db1"), None, "no rate from one observation");
        let row1 = lines(&f1).into_iter().find(|l| l.contains("db1 ")).unwrap();
        assert!(!row1.contains("0.0"), "first view leaves QPS blank: {row1}");

        let second = view(vec![member(
            "db1",
            pb::MemberRole::Primary,
            Some((1200, 12_000)),
        )]);
        let (f2, prev) = frame(&second, &prev, 2);
        assert_eq!(qps(&f2, "db1"), Some(100.0));
        let text = lines(&f2).join("\n");
        assert!(text.contains("100.0"), "{text}");

        // The same report again (refreshing faster than agents report).
        let (f3, _) = frame(&second, &prev, 3);
        assert_eq!(qps(&f3, "db1"), Some(100.0));
    }

    #[test]
    fn a_counter_that_went_backwards_is_a_restart_not_a_rate() {
        let before = view(vec![member(
            "db1",
            pb::MemberRole::Primary,
            Some((5000, 10_000)),
        )]);
        let (_, prev) = frame(&before, &Previous::default(), 1);
        let restarted = view(vec![member(
            "db1",
            pb::MemberRole::Primary,
            Some((40, 12_000)),
        )]);
        let (f, prev) = frame(&restarted, &prev, 2);
        assert_eq!(qps(&f, "db1"), None);
        // and the next observation rates against the restarted counter
        let after = view(vec![member(
            "db1",
            pb::MemberRole::Primary,
            Some((60, 14_000)),
        )]);
        let (f, _) = frame(&after, &prev, 3);
        assert_eq!(qps(&f, "db1"), Some(10.0));
    }

    #[test]
    fn a_member_without_load_shows_blanks_and_nulls() {
        let mut down = member("db2", pb::MemberRole::Replica, None);
        down.reachable = false;
        down.last_report_age_ms = None;
        let v = view(vec![
            member("db1", pb::MemberRole::Primary, Some((1, 1))),
            down,
            member("db3", pb::MemberRole::Unknown, Some((1, 1))),
        ]);
        let (f, prev) = frame(&v, &Previous::default(), 1);
        assert_eq!(prev.0.len(), 2, "only members with load are sampled");
        let m = serde_json::to_value(&f.clusters[0].members[1]).unwrap();
        for k in [
            "qps",
            "queries_total",
            "threads_connected",
            "threads_running",
        ] {
            assert!(m[k].is_null(), "{k}: {m}");
        }
        let text = lines(&f);
        let db2 = text.iter().find(|l| l.contains("db2")).unwrap();
        assert!(
            db2.contains("unreachable") && db2.contains("never") && db2.contains(NONE),
            "{db2}"
        );
        let db3 = text.iter().find(|l| l.contains("db3")).unwrap();
        let cells: Vec<&str> = db3.split_whitespace().collect();
        assert_eq!(cells[..2], ["db3", NONE], "unknown role: {db3}");
    }

    #[test]
    fn frame_lists_header_rows_and_problems_aligned() {
        let mut v = view(vec![
            member("db1", pb::MemberRole::Primary, Some((1, 1))),
            member("db22", pb::MemberRole::Replica, Some((1, 1))),
        ]);
        v.clusters[0].members[1].lag_seconds = Some(3);
        v.clusters[0].members[1].io_running = true;
        v.clusters[0].problems.push(pb::Problem {
            kind: "replica-sql-stopped".into(),
            host: "db22".into(),
            message: "replication SQL thread is stopped".into(),
        });
        let (f, _) = frame(&v, &Previous::default(), 1);
        let text = lines(&f);
        assert_eq!(
            text[0],
            "cluster main  primary db1  1 problem  (coordinator c1)"
        );
        assert!(text[1].trim_start().starts_with("HOST"), "{text:?}");
        let col = |l: &str, word: &str| l.find(word).unwrap();
        assert_eq!(
            col(&text[2], "primary"),
            col(&text[3], "replica"),
            "{text:#?}"
        );
        assert!(
            text[3].contains("3s") && text[3].contains("yes/no"),
            "{}",
            text[3]
        );
        assert_eq!(
            text[4],
            "  ! db22 replica-sql-stopped: replication SQL thread is stopped"
        );
        assert!(text.iter().all(|l| !l.trim().is_empty()));
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["clusters"][0]["healthy"], false);
        assert_eq!(json["clusters"][0]["members"][0]["threads_connected"], 3);
    }
}
