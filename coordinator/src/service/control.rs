//! The failover half of `AdminService`: operations, controls and events.

use std::sync::Arc;

use dbfleet_proto::model::Name;
use dbfleet_proto::pb;
use tracing::info;

use crate::error::ServiceError;
use crate::failover::Failovers;
use crate::failover::journal::{ClusterControl, Event, PromotionRule};
use crate::failover::procedure::now_unix_ms;
use crate::fleet::Fleet;
use crate::store::ClusterRecord;

fn cluster_name(s: &str) -> Result<String, ServiceError> {
    Name::parse(s)
        .map(|n| n.to_string())
        .map_err(|r| ServiceError::Refused(format!("cluster: {r}")))
}

/// The operator-facing view of a cluster's controls.
pub(crate) fn control_view(
    rec: &ClusterRecord,
    budget: u32,
    window_seconds: u64,
) -> pb::ClusterControl {
    let c: &ClusterControl = &rec.control;
    pb::ClusterControl {
        cluster: rec.name.clone(),
        auto_failover: c.auto_failover,
        maintenance: c.maintenance,
        budget: c.budget.unwrap_or(budget),
        window_seconds: c.window_seconds.unwrap_or(window_seconds),
        needs_ack: c.held.is_some(),
        promotion_rules: c
            .promotion
            .iter()
            .filter(|(_, r)| **r != PromotionRule::Neutral)
            .map(|(h, r)| (h.clone(), r.as_str().to_string()))
            .collect(),
        needs_rebuild: c.needs_rebuild.iter().cloned().collect(),
        frozen: c.frozen.iter().cloned().collect(),
        operation: c
            .operation
            .as_ref()
            .map(|o| format!("{} {} at step {:?}", o.kind.as_str(), o.id, o.step))
            .unwrap_or_default(),
    }
}

pub(crate) fn event_view(cluster: &str, e: &Event) -> pb::Event {
    pb::Event {
        at_unix_ms: e.at_unix_ms,
        cluster: cluster.to_string(),
        kind: e.kind.clone(),
        host: e.host.clone(),
        message: e.message.clone(),
        operation_id: e.operation_id.clone(),
        epoch: e.epoch.clone().map(Into::into),
        evidence: e.evidence.clone(),
    }
}

/// Controls the operator changes, each recorded as an event.
#[derive(Debug, Clone)]
pub(crate) struct Controls {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) failovers: Arc<Failovers>,
    pub(crate) default_budget: u32,
    pub(crate) default_window_seconds: u64,
}

/// A failover policy change in words: "automatic failover off, budget 2".
pub(crate) fn policy_words(req: &pb::SetFailoverPolicyRequest) -> String {
    let mut parts = Vec::new();
    if let Some(a) = req.auto_failover {
        parts.push(format!(
            "automatic failover {}",
            if a { "on" } else { "off" }
        ));
    }
    if let Some(b) = req.budget {
        parts.push(format!("budget {b}"));
    }
    if let Some(w) = req.window_seconds {
        parts.push(format!("window {w}s"));
    }
    if parts.is_empty() {
        "nothing changed".to_string()
    } else {
        parts.join(", ")
    }
}

impl Controls {
    /// Changes `cluster`'s controls by `f`, recording event `kind` whose
    /// message names operator `by`.
    async fn change(
        &self,
        cluster: &str,
        kind: &str,
        by: &str,
        message: String,
        f: impl FnOnce(&mut ClusterRecord) -> Result<(), ServiceError> + Send + 'static,
    ) -> Result<pb::ClusterControl, ServiceError> {
        let epoch = self.fleet.ha().write_epoch()?;
        let message = format!("{message} (by operator {by})");
        let e = Event {
            at_unix_ms: now_unix_ms(),
            kind: kind.to_string(),
            host: String::new(),
            message: message.clone(),
            operation_id: String::new(),
            epoch: Some(epoch.clone()),
            evidence: vec![],
        };
        let rec = self
            .fleet
            .update_cluster(cluster, epoch, move |r| {
                f(r)?;
                r.control.record(e);
                Ok(r.clone())
            })
            .await?;
        info!(cluster, kind, detail = message, "cluster control changed");
        Ok(control_view(
            &rec,
            self.default_budget,
            self.default_window_seconds,
        ))
    }

    pub(crate) async fn maintenance(
        &self,
        req: pb::SetMaintenanceRequest,
        by: &str,
    ) -> Result<pb::ClusterControl, ServiceError> {
        let cluster = cluster_name(&req.cluster)?;
        let on = req.on;
        self.change(
            &cluster,
            "maintenance",
            by,
            format!("maintenance {}", if on { "on" } else { "off" }),
            move |r| {
                r.control.maintenance = on;
                Ok(())
            },
        )
        .await
    }

    pub(crate) async fn policy(
        &self,
        req: pb::SetFailoverPolicyRequest,
        by: &str,
    ) -> Result<pb::ClusterControl, ServiceError> {
        let cluster = cluster_name(&req.cluster)?;
        if req.budget == Some(0) || req.window_seconds == Some(0) {
            return Err(ServiceError::Refused(
                "budget and window must be at least 1 (turn automatic failover off instead)".into(),
            ));
        }
        let msg = format!("failover policy: {}", policy_words(&req));
        self.change(&cluster, "failover-policy", by, msg, move |r| {
            if let Some(a) = req.auto_failover {
                r.control.auto_failover = a;
            }
            if let Some(b) = req.budget {
                r.control.budget = Some(b);
            }
            if let Some(w) = req.window_seconds {
                r.control.window_seconds = Some(w);
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn promotion_rule(
        &self,
        req: pb::SetPromotionRuleRequest,
        by: &str,
    ) -> Result<pb::ClusterControl, ServiceError> {
        let rule = PromotionRule::parse(&req.rule).map_err(ServiceError::Refused)?;
        let host = req.host.clone();
        let cluster = self
            .fleet
            .agent_views()
            .into_iter()
            .find(|a| a.host == host)
            .map(|a| a.cluster)
            .ok_or_else(|| ServiceError::UnknownAgent(host.clone()))?;
        let h = host.clone();
        self.change(
            &cluster,
            "promotion-rule",
            by,
            format!("{host}: {}", rule.as_str()),
            move |r| {
                if rule == PromotionRule::Neutral {
                    r.control.promotion.remove(&h);
                } else {
                    r.control.promotion.insert(h, rule);
                }
                Ok(())
            },
        )
        .await
    }

    pub(crate) async fn acknowledge(
        &self,
        req: pb::AcknowledgeRequest,
        by: &str,
    ) -> Result<pb::ClusterControl, ServiceError> {
        let cluster = cluster_name(&req.cluster)?;
        let held = self.fleet.cluster_record(&cluster).control.held;
        self.change(
            &cluster,
            "acknowledged",
            by,
            format!(
                "automatic failover re-armed{}",
                held.map(|h| format!(" (was held: {h})"))
                    .unwrap_or_default()
            ),
            |r| {
                r.control.held = None;
                r.control.recent_failovers.clear();
                Ok(())
            },
        )
        .await
    }

    pub(crate) fn events(
        &self,
        req: &pb::ListEventsRequest,
    ) -> Result<pb::ListEventsResponse, ServiceError> {
        let clusters = if req.cluster.is_empty() {
            self.fleet.cluster_names()
        } else {
            vec![cluster_name(&req.cluster)?]
        };
        let mut events: Vec<pb::Event> = clusters
            .iter()
            .flat_map(|c| {
                let rec = self.fleet.cluster_record(c);
                rec.control
                    .events
                    .iter()
                    .map(|e| event_view(c, e))
                    .collect::<Vec<_>>()
            })
            .collect();
        events.sort_by_key(|e| e.at_unix_ms);
        if req.limit > 0 && events.len() > req.limit as usize {
            events.drain(..events.len() - req.limit as usize);
        }
        Ok(pb::ListEventsResponse { events })
    }
}

/// An archive further behind its server than this is a problem: the RPO
/// of a lost host.
const ARCHIVE_LAG_PROBLEM_MS: u64 = 60_000;

/// Every cluster's view (or `only`'s) with what desired state adds: what
/// `dbfleet status` and the metrics endpoint both show.
pub(crate) fn full_views(
    fleet: &Fleet,
    failovers: &Failovers,
    only: Option<&Name>,
) -> Vec<pb::ClusterView> {
    let mut views = fleet.cluster_views(only);
    for v in &mut views {
        decorate(v, &fleet.cluster_record(&v.name));
        if let Some(r) = crate::failover::readiness::of(failovers, &v.name) {
            if !r.not_ready.is_empty() {
                v.problems.push(pb::Problem {
                    kind: "failover-not-ready".into(),
                    host: String::new(),
                    message: format!(
                        "if the primary {} died now, automatic failover would not complete: {}",
                        v.primary,
                        r.not_ready.join("; ")
                    ),
                });
            }
            v.readiness = Some(r.view());
        }
    }
    views
}

/// Adds what desired state knows to a derived view: each member's rule,
/// fence and rebuild mark, and the problems an operator must act on.
pub(crate) fn decorate(view: &mut pb::ClusterView, rec: &ClusterRecord) {
    let c = &rec.control;
    let primary_address = view
        .members
        .iter()
        .find(|m| m.host == view.primary)
        .map(|m| m.mysql_address.clone())
        .unwrap_or_default();
    for m in &mut view.members {
        m.promotion_rule = c.rule(&m.host).as_str().to_string();
        m.needs_rebuild = c.needs_rebuild.contains(&m.host);
        let follows = match (
            dbfleet_proto::model::MysqlAddress::parse(&m.source),
            dbfleet_proto::model::MysqlAddress::parse(&primary_address),
        ) {
            (Ok(source), Ok(primary)) => source.same_endpoint(&primary),
            _ => false,
        };
        m.rejoining = !m.needs_rebuild && c.left_behind(&m.host, follows);
    }
    let problem = |kind: &str, host: &str, message: String| pb::Problem {
        kind: kind.to_string(),
        host: host.to_string(),
        message,
    };
    for h in &c.needs_rebuild {
        view.problems.push(problem(
            "needs-rebuild",
            h,
            format!("{h} has transactions the primary never had; rebuild it from a backup"),
        ));
    }
    for m in view.members.iter().filter(|m| m.rejoining) {
        view.problems.push(problem(
            "not-rejoined",
            &m.host,
            format!(
                "{} was the primary a failover replaced and does not replicate from the new one yet; it rejoins once its mysqld answers and its GTIDs show no divergence (or is marked needs-rebuild), and until then it is never promoted",
                m.host
            ),
        ));
    }
    for m in &view.members {
        if let Some(a) = m.binlog_archive.as_ref().filter(|a| !a.error.is_empty()) {
            view.problems.push(problem(
                "binlog-archive-failing",
                &m.host,
                format!(
                    "binlog archiving of {} is failing ({} s behind): {}",
                    m.host,
                    a.lag_ms / 1000,
                    a.error
                ),
            ));
        }
    }
    for m in &view.members {
        if let Some(a) = m
            .binlog_archive
            .as_ref()
            .filter(|a| a.error.is_empty() && a.lag_ms > ARCHIVE_LAG_PROBLEM_MS)
        {
            view.problems.push(problem(
                "binlog-archive-lagging",
                &m.host,
                format!(
                    "the binlog archive of {} is {} s behind its server: transactions since then would be lost with the host",
                    m.host,
                    a.lag_ms / 1000
                ),
            ));
        }
    }
    let now = dbfleet_common::clock::unix_ms();
    for (kind, message) in crate::backup::schedule::problems(now, &rec.backup_policy, &rec.backups)
    {
        view.problems.push(problem(kind, "", message));
    }
    for (h, why) in &c.detached {
        view.problems.push(problem(
            "detached",
            h,
            format!("{h} is out of service: {why}"),
        ));
    }
    for h in &c.frozen {
        view.problems.push(problem(
            "replica-frozen",
            h,
            format!(
                "{h} was stopped by a failover that did not complete; it resumes when the primary accepts writes again"
            ),
        ));
    }
    if let Some(held) = &c.held {
        view.problems.push(problem(
            "failover-held",
            "",
            format!("automatic failover is held: {held}"),
        ));
    }
    if let Some(op) = &c.operation {
        view.problems.push(problem(
            "operation-in-progress",
            &op.old_primary,
            format!("{} {} at step {:?}", op.kind.as_str(), op.id, op.step),
        ));
    }
    if c.maintenance {
        view.problems.push(problem(
            "maintenance",
            "",
            "maintenance mode: no automatic failover or repair".into(),
        ));
    }
}
