//! Failure detection, failover, switchover and the repairs after them.
//!
//! - [`detect`] and [`plan`] are the rules, free of I/O;
//! - [`journal`] is what desired state keeps (controls, the operation in
//!   progress, the event history);
//! - [`procedure`] runs an operation as journaled steps, [`fence`] is its
//!   Fence step (the proofs);
//! - [`reconcile`] is the loop on the active: detection, resuming a
//!   journaled operation, rejoining returned members.

pub mod detect;
pub(crate) mod fence;
#[cfg(test)]
mod fixtures;
pub use dbfleet_common::gtid;
pub mod hooks;
pub mod journal;
pub mod plan;
pub mod positions;
pub(crate) mod procedure;
#[cfg(test)]
mod procedure_tests;
pub mod readiness;
pub(crate) mod reconcile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbfleet_lease::Epoch;
use dbfleet_proto::model::ServerState;
use dbfleet_proto::pb;
use tokio::sync::watch;

use crate::agent_commands::AgentCommands;
use crate::config::FailoverConfig;
use crate::error::ServiceError;
use crate::fleet::Fleet;
use journal::{Operation, OperationKind};

/// Runs and tracks failovers and switchovers of every cluster.
#[derive(Debug)]
pub struct Failovers {
    fleet: Arc<Fleet>,
    /// Where commands go: the agents, or a test's script.
    agents: Arc<dyn AgentCommands>,
    cfg: FailoverConfig,
    /// Outcome of the operation running here, per cluster.
    running: Mutex<HashMap<String, watch::Receiver<Option<pb::OperationResult>>>>,
    /// The last observation of each member's server (a dead primary's
    /// last report no longer says what its semi-sync and replicas were).
    last_seen: Mutex<HashMap<String, ServerState>>,
    /// Since when each cluster's primary looks down.
    down_since: Mutex<HashMap<String, Instant>>,
    /// When each repair (per member) was last tried, to pace retries.
    repair_tried: Mutex<HashMap<String, Instant>>,
    /// The epoch we hold and since when (fresh observation rule).
    active_since: Mutex<Option<(Epoch, Instant)>>,
    /// Whether the breaker held failovers on the last tick (its log lines
    /// mark the changes, not every tick).
    breaker_on: std::sync::atomic::AtomicBool,
    /// Per cluster whose operation ended here: each member's last report
    /// then (agent instance, sequence). Repairs wait for reports made
    /// after the end (see `reconcile::Failovers::settled`).
    ended: Mutex<HashMap<String, LastReports>>,
}

/// Each member's last report as an operation ended: host → (agent
/// instance, sequence).
type LastReports = HashMap<String, (String, u64)>;

impl Failovers {
    /// The failover machinery of one coordinator.
    pub fn new(
        fleet: Arc<Fleet>,
        agents: Arc<dyn AgentCommands>,
        cfg: FailoverConfig,
    ) -> Arc<Self> {
        Arc::new(Failovers {
            fleet,
            agents,
            cfg,
            running: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            down_since: Mutex::new(HashMap::new()),
            repair_tried: Mutex::new(HashMap::new()),
            active_since: Mutex::new(None),
            breaker_on: std::sync::atomic::AtomicBool::new(false),
            ended: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for the outcome and, when the primary changed, until the
    /// agents' reports show it (so `dbfleet status` right after agrees).
    async fn wait(
        &self,
        mut rx: watch::Receiver<Option<pb::OperationResult>>,
    ) -> Result<pb::OperationResult, ServiceError> {
        let r = loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                break r;
            }
            rx.changed().await.map_err(|_| ServiceError::ShuttingDown)?;
        };
        if r.outcome == "completed" {
            let give_up = Instant::now() + Duration::from_secs(10);
            while Instant::now() < give_up
                && self.primary_of(&r.cluster).as_deref() != Some(r.new_primary.as_str())
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(r)
    }

    /// What an operator's failover or switchover of `cluster` starts from:
    /// its members, record and primary; refused for an unknown cluster,
    /// a MySQL one, or one without a known primary.
    fn operable(
        &self,
        cluster: &str,
    ) -> Result<
        (
            Vec<crate::fleet::MemberState>,
            crate::store::ClusterRecord,
            String,
        ),
        ServiceError,
    > {
        let members = self.fleet.members(cluster);
        if members.is_empty() {
            return Err(ServiceError::Refused(format!(
                "no cluster named {cluster:?}"
            )));
        }
        Self::cluster_flavor(&members)?;
        let primary = self.primary_of(cluster).ok_or_else(|| {
            ServiceError::Refused(format!("cluster {cluster} has no known primary"))
        })?;
        Ok((members, self.fleet.cluster_record(cluster), primary))
    }

    /// Appends `event` to the cluster's history under `epoch`.
    pub(crate) async fn record_event(
        &self,
        cluster: &str,
        epoch: &Epoch,
        event: journal::Event,
    ) -> Result<(), ServiceError> {
        self.fleet
            .update_cluster(cluster, epoch.clone(), move |r| {
                r.control.record(event);
                Ok(())
            })
            .await
    }

    /// An operator's failover: the primary must look down (or the
    /// operator vouches for its fence); waits for the outcome.
    pub async fn failover(
        self: &Arc<Self>,
        req: pb::FailoverRequest,
        by: &str,
    ) -> Result<pb::OperationResult, ServiceError> {
        let epoch = self.fleet.ha().write_epoch()?;
        let cluster = req.cluster.clone();
        let (members, _, primary) = self.operable(&cluster)?;
        let old = members.iter().find(|m| m.host == primary);
        if old.and_then(|m| m.server()).is_some_and(|s| s.writable()) {
            return Err(ServiceError::Refused(format!(
                "{primary} is up and writable; use `dbfleet switchover --cluster {cluster}` for a planned change"
            )));
        }
        let op = Operation {
            requested_to: Some(req.to).filter(|t| !t.is_empty()),
            allow_data_loss: req.allow_data_loss,
            confirm_fenced: Some(req.confirm_fenced).filter(|t| !t.is_empty()),
            ..Operation::new(
                Self::new_id(&cluster, OperationKind::Failover, &epoch),
                OperationKind::Failover,
                epoch,
                primary,
                format!("operator {by} requested a failover"),
                procedure::now_unix_ms(),
            )
        };
        // A manual failover re-arms a held cluster once it starts (the
        // operator decided; `start` clears the hold in the same change that
        // journals it), and a vetoed or refused one leaves it held.
        self.pre_hook(&op).await?;
        self.wait(self.start(op).await?).await
    }

    /// A planned switchover; waits for the outcome.
    pub async fn switchover(
        self: &Arc<Self>,
        req: pb::SwitchoverRequest,
        by: &str,
    ) -> Result<pb::OperationResult, ServiceError> {
        let epoch = self.fleet.ha().write_epoch()?;
        let cluster = req.cluster.clone();
        let (members, rec, primary) = self.operable(&cluster)?;
        if !members
            .iter()
            .find(|m| m.host == primary)
            .and_then(|m| m.server())
            .is_some_and(|s| s.writable())
        {
            return Err(ServiceError::Refused(format!(
                "{primary} is not a healthy writable primary; a switchover needs one (use `dbfleet failover` for a dead primary)"
            )));
        }
        let candidate = self.switchover_candidate(&members, &rec, &primary, &req.to)?;
        let op = Operation {
            requested_to: Some(candidate.clone()),
            candidate: Some(candidate.clone()),
            ..Operation::new(
                Self::new_id(&cluster, OperationKind::Switchover, &epoch),
                OperationKind::Switchover,
                epoch,
                primary,
                format!("operator {by} requested a switchover to {candidate}"),
                procedure::now_unix_ms(),
            )
        };
        self.pre_hook(&op).await?;
        self.wait(self.start(op).await?).await
    }

    fn switchover_candidate(
        &self,
        members: &[crate::fleet::MemberState],
        rec: &crate::store::ClusterRecord,
        primary: &str,
        to: &str,
    ) -> Result<String, ServiceError> {
        let primary_address = members
            .iter()
            .find(|m| m.host == primary)
            .map(|m| m.mysql_address.clone())
            .unwrap_or_default();
        let healthy = |m: &&crate::fleet::MemberState| {
            m.host != primary
                && rec.control.rule(&m.host) != journal::PromotionRule::Never
                && !rec.control.out_of_service(&m.host)
                && m.server().is_some_and(|s| {
                    s.replication.as_ref().is_some_and(|r| {
                        r.sql_running
                            && dbfleet_proto::model::MysqlAddress::parse(&primary_address)
                                .is_ok_and(|a| r.source.same_endpoint(&a))
                    })
                })
        };
        let mismatched = |m: &crate::fleet::MemberState| {
            m.has_config_problem(&dbfleet_proto::model::ConfigProblemKind::MysqlAddressMismatch)
        };
        if let Some(m) = members.iter().find(|m| m.host == to && mismatched(m)) {
            return Err(ServiceError::Refused(format!(
                "{to} cannot take over: its address mismatched (problem mysql-address-mismatch: its agent's [mysql] address {} does not reach its server, so the replicas would be pointed at the wrong place); fix the agent's config first",
                m.mysql_address
            )));
        }
        let healthy = |m: &&crate::fleet::MemberState| healthy(m) && !mismatched(m);
        if !to.is_empty() {
            return members
                .iter()
                .find(|m| m.host == to)
                .filter(healthy)
                .map(|m| m.host.clone())
                .ok_or_else(|| {
                    ServiceError::Refused(format!(
                        "{to} cannot take over: it must be a reachable replica of {primary} with a running applier, not marked never or for rebuild"
                    ))
                });
        }
        members
            .iter()
            .filter(healthy)
            .min_by_key(|m| {
                let lag = m
                    .server()
                    .and_then(|s| s.replication.as_ref()?.seconds_behind)
                    .unwrap_or(u64::MAX);
                (rec.control.rule(&m.host), lag, m.host.clone())
            })
            .map(|m| m.host.clone())
            .ok_or_else(|| {
                ServiceError::Refused(format!(
                    "no replica of {primary} can take over (each is unreachable, not replicating, or marked never)"
                ))
            })
    }

    async fn pre_hook(&self, op: &Operation) -> Result<(), ServiceError> {
        if self.cfg.pre_hook.is_empty() {
            return Ok(());
        }
        let cluster = op.id.split('/').next().unwrap_or_default().to_string();
        let hook = format!("pre-{}", op.kind.as_str());
        let payload = hooks::Payload {
            hook: &hook,
            cluster: &cluster,
            kind: op.kind.as_str(),
            operation_id: &op.id,
            old_primary: &op.old_primary,
            new_primary: op.candidate.as_deref().unwrap_or(""),
            new_primary_address: "",
            epoch_term: op.epoch.term,
            epoch_coordinator: &op.epoch.coordinator,
            reason: &op.reason,
        };
        if let Err(e) = hooks::run(&self.cfg.pre_hook, &payload, self.cfg.hook_timeout).await {
            let event = self.event(op, "hook-veto", &op.old_primary, e.clone(), vec![]);
            self.record_event(&cluster, &op.epoch, event).await?;
            return Err(ServiceError::Refused(format!("vetoed: {e}")));
        }
        Ok(())
    }

    /// The cluster's primary as derived from reports (or remembered).
    fn primary_of(&self, cluster: &str) -> Option<String> {
        let name = dbfleet_proto::model::Name::parse(cluster).ok()?;
        self.fleet
            .cluster_views(Some(&name))
            .into_iter()
            .next()
            .map(|v| v.primary)
            .filter(|p| !p.is_empty())
    }

    /// Budget and window of `rec`, with the coordinator's defaults.
    fn budget(&self, rec: &crate::store::ClusterRecord) -> (u32, Duration) {
        (
            rec.control.budget.unwrap_or(self.cfg.budget),
            rec.control
                .window_seconds
                .map_or(self.cfg.window, Duration::from_secs),
        )
    }

    /// How many automatic failovers of `rec` fall within its anti-flap
    /// window, with its budget and that window.
    fn spent(&self, rec: &crate::store::ClusterRecord) -> (usize, u32, Duration) {
        let (budget, window) = self.budget(rec);
        let cutoff = procedure::now_unix_ms() - window.as_millis() as i64;
        let recent = rec
            .control
            .recent_failovers
            .iter()
            .filter(|t| **t > cutoff)
            .count();
        (recent, budget, window)
    }
}
