//! Gauges derived at every scrape from the same cluster views `dbfleet
//! status` shows, so a dashboard and the CLI never disagree. They are
//! built anew for each scrape: a cluster, member or problem that is gone
//! is gone from the next scrape instead of keeping its last value.

use std::collections::BTreeMap;

use dbfleet_proto::pb;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::topology::kind;

/// A cluster's health in one word, for alerts and dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// No problem.
    Healthy,
    /// Problems, but one writable primary that reports.
    Degraded,
    /// No writable primary, more than one, or the primary is unreachable.
    Critical,
}

impl Health {
    const ALL: [Health; 3] = [Health::Healthy, Health::Degraded, Health::Critical];

    fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Critical => "critical",
        }
    }
}

/// Problems that mean writes may be failing or unsafe right now.
const CRITICAL: [&str; 3] = [
    kind::NO_WRITABLE,
    kind::MULTIPLE_WRITABLE,
    kind::UNREACHABLE_PRIMARY,
];

/// The named primary is reachable, writable and its agent reports.
pub fn primary_up(view: &pb::ClusterView) -> bool {
    !view.primary.is_empty()
        && view
            .members
            .iter()
            .any(|m| m.host == view.primary && m.reachable && m.writable && m.reporting)
}

/// How healthy `view` is.
pub fn health(view: &pb::ClusterView) -> Health {
    if !primary_up(view)
        || view
            .problems
            .iter()
            .any(|p| CRITICAL.contains(&p.kind.as_str()))
    {
        Health::Critical
    } else if view.problems.is_empty() {
        Health::Healthy
    } else {
        Health::Degraded
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabel {
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterHealthLabels {
    cluster: String,
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterRoleLabels {
    cluster: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    cluster: String,
    problem: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    cluster: String,
    host: String,
}

/// Registers the fleet's gauges, filled from `views` and `agents`.
pub(super) fn register(
    registry: &mut Registry,
    views: &[pb::ClusterView],
    agents: &[pb::AgentView],
) {
    let clusters = Family::<HealthLabel, Gauge>::default();
    let cluster_health = Family::<ClusterHealthLabels, Gauge>::default();
    let primary = Family::<ClusterLabel, Gauge>::default();
    let writable = Family::<ClusterLabel, Gauge>::default();
    let members = Family::<ClusterRoleLabels, Gauge>::default();
    let problems = Family::<ProblemLabels, Gauge>::default();
    let reporting = Family::<MemberLabels, Gauge>::default();
    let age = Family::<MemberLabels, Gauge<f64, AtomicU64>>::default();

    let mut by_health = BTreeMap::new();
    for view in views {
        let h = health(view);
        *by_health.entry(h).or_insert(0i64) += 1;
        let cluster = || view.name.clone();
        for each in Health::ALL {
            cluster_health
                .get_or_create(&ClusterHealthLabels {
                    cluster: cluster(),
                    health: each.as_str().to_string(),
                })
                .set(i64::from(each == h));
        }
        primary
            .get_or_create(&ClusterLabel { cluster: cluster() })
            .set(i64::from(primary_up(view)));
        writable
            .get_or_create(&ClusterLabel { cluster: cluster() })
            .set(view.members.iter().filter(|m| m.writable).count() as i64);
        for role in ["primary", "replica", "unknown"] {
            members
                .get_or_create(&ClusterRoleLabels {
                    cluster: cluster(),
                    role: role.to_string(),
                })
                .set(
                    view.members
                        .iter()
                        .filter(|m| dbfleet_proto::model::member_role_name(m.role) == role)
                        .count() as i64,
                );
        }
        for p in &view.problems {
            problems
                .get_or_create(&ProblemLabels {
                    cluster: cluster(),
                    problem: p.kind.clone(),
                })
                .inc();
        }
        for m in &view.members {
            let labels = MemberLabels {
                cluster: cluster(),
                host: m.host.clone(),
            };
            reporting.get_or_create(&labels).set(i64::from(m.reporting));
            if let Some(ms) = m.last_report_age_ms {
                age.get_or_create(&labels).set(ms as f64 / 1000.0);
            }
        }
    }
    for each in Health::ALL {
        clusters
            .get_or_create(&HealthLabel {
                health: each.as_str().to_string(),
            })
            .set(by_health.get(&each).copied().unwrap_or(0));
    }
    registry.register("clusters", "Clusters by health", clusters);
    registry.register(
        "cluster_health",
        "1 for the cluster's current health (critical: no writable primary, more than one, or the primary unreachable)",
        cluster_health,
    );
    registry.register(
        "cluster_primary_up",
        "The named primary is reachable, writable and its agent reports",
        primary,
    );
    registry.register(
        "cluster_writable_members",
        "Members that accept writes (more than 1 is a split brain)",
        writable,
    );
    registry.register("cluster_members", "Members by role", members);
    registry.register("problems", "Current problems by kind", problems);
    registry.register(
        "member_reporting",
        "The member's agent reported within the agent timeout",
        reporting,
    );
    registry.register(
        "member_report_age_seconds",
        "Since the member's last accepted report",
        age,
    );
    let registered = Gauge::<i64>::default();
    registered.set(agents.len() as i64);
    registry.register("agents_registered", "Agents known to the fleet", registered);
    let connected = Gauge::<i64>::default();
    connected.set(agents.iter().filter(|a| a.connected).count() as i64);
    registry.register(
        "agents_connected",
        "Agents with a report stream open to this coordinator",
        connected,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(host: &str, writable: bool, reporting: bool) -> pb::MemberView {
        pb::MemberView {
            host: host.into(),
            role: if writable {
                pb::MemberRole::Primary as i32
            } else {
                pb::MemberRole::Replica as i32
            },
            writable,
            reachable: true,
            reporting,
            last_report_age_ms: Some(250),
            ..Default::default()
        }
    }

    fn view(problems: &[&str]) -> pb::ClusterView {
        pb::ClusterView {
            name: "main".into(),
            primary: "db1".into(),
            members: vec![member("db1", true, true), member("db2", false, true)],
            problems: problems
                .iter()
                .map(|k| pb::Problem {
                    kind: k.to_string(),
                    host: "db2".into(),
                    message: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn health_follows_the_primary_and_the_problems() {
        assert_eq!(health(&view(&[])), Health::Healthy);
        assert_eq!(health(&view(&["replica-lagging"])), Health::Degraded);
        assert_eq!(health(&view(&["multiple-writable"])), Health::Critical);
        let mut silent = view(&[]);
        silent.members[0].reporting = false;
        assert!(!primary_up(&silent));
        assert_eq!(health(&silent), Health::Critical);
        let mut none = view(&[]);
        none.primary.clear();
        assert_eq!(health(&none), Health::Critical);
    }

    #[test]
    fn a_scrape_shows_what_the_views_say_and_nothing_stale() {
        let render = |views: &[pb::ClusterView]| {
            let mut r = Registry::with_prefix("dbfleet_coordinator");
            register(&mut r, views, &[]);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
            out
        };
        let lagging = render(&[view(&["replica-lagging", "replica-lagging"])]);
        assert!(lagging.contains(
            "dbfleet_coordinator_problems{cluster=\"main\",problem=\"replica-lagging\"} 2"
        ));
        assert!(lagging.contains(
            "dbfleet_coordinator_cluster_health{cluster=\"main\",health=\"degraded\"} 1"
        ));
        assert!(
            lagging.contains("dbfleet_coordinator_cluster_writable_members{cluster=\"main\"} 1")
        );
        assert!(lagging.contains(
            "dbfleet_coordinator_member_report_age_seconds{cluster=\"main\",host=\"db2\"} 0.25"
        ));
        let cleared = render(&[view(&[])]);
        assert!(!cleared.contains("problem=\"replica-lagging\""));
        assert!(cleared.contains("dbfleet_coordinator_clusters{health=\"healthy\"} 1"));
    }
}
