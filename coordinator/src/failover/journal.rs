//! What a cluster's desired state says about failover: the operator's
//! controls, the journal of the operation in progress, and the event
//! history. All of it lives in the cluster's record, so it is written by
//! one op-log op, replicated to the standby, and found by a successor that
//! must resume or roll back what a dead active started.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use dbfleet_lease::Epoch;
use serde::{Deserialize, Serialize};

/// Events kept per cluster; older ones are dropped first.
pub const EVENTS_KEPT: usize = 500;

/// Candidate priority of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromotionRule {
    /// Chosen before neutral hosts.
    Prefer,
    /// The default.
    Neutral,
    /// Never promoted.
    Never,
}

impl PromotionRule {
    /// Parses `prefer`, `neutral` or `never`.
    pub fn parse(s: &str) -> Result<PromotionRule, String> {
        match s {
            "prefer" => Ok(PromotionRule::Prefer),
            "neutral" => Ok(PromotionRule::Neutral),
            "never" => Ok(PromotionRule::Never),
            other => Err(format!(
                "{other:?} is not a promotion rule; use prefer, neutral or never"
            )),
        }
    }

    /// The name operators type.
    pub fn as_str(self) -> &'static str {
        match self {
            PromotionRule::Prefer => "prefer",
            PromotionRule::Neutral => "neutral",
            PromotionRule::Never => "never",
        }
    }
}

/// The operator's failover controls of one cluster and what the
/// coordinator keeps about past and present operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterControl {
    /// Automatic failover on.
    #[serde(default = "yes")]
    pub auto_failover: bool,
    /// Maintenance: no automatic failover and no automatic repair.
    #[serde(default)]
    pub maintenance: bool,
    /// Automatic failovers allowed per window (None: the default).
    #[serde(default)]
    pub budget: Option<u32>,
    /// The anti-flap window in seconds (None: the default).
    #[serde(default)]
    pub window_seconds: Option<u64>,
    /// When recent automatic failovers happened (Unix ms).
    #[serde(default)]
    pub recent_failovers: Vec<i64>,
    /// Automatic failover held until `dbfleet ack`, and why.
    #[serde(default)]
    pub held: Option<String>,
    /// Host → rule; absent hosts are neutral.
    #[serde(default)]
    pub promotion: BTreeMap<String, PromotionRule>,
    /// Members with transactions the primary never had.
    #[serde(default)]
    pub needs_rebuild: BTreeSet<String>,
    /// Replicas a failover froze and did not complete: they stay stopped
    /// (a primary that may still commit must not feed them) until the
    /// primary they replicate from accepts writes again.
    #[serde(default)]
    pub frozen: BTreeSet<String>,
    /// Members taken out of service by a restore, and why: never
    /// repaired, repointed or promoted until a restore puts them back
    /// (a host restored to a point in time must keep exactly that data).
    #[serde(default)]
    pub detached: BTreeMap<String, String>,
    /// Members an operation left behind (the failed primary), not yet seen
    /// replicating from the primary it promoted, each with the position
    /// that primary was promoted at (its fork point, for the member's
    /// divergence check; empty when unknown). A member so marked that is
    /// provably apart from the primary (see [`ClusterControl::apart`])
    /// never replicated from it, so it can neither confirm nor deny its
    /// death, nor hold its acknowledged writes: detection does not count
    /// it, and a failover neither waits for it nor promotes it (its
    /// divergence check has not run); only the repair loop rejoins it.
    /// Without this a fenced old primary that had not rejoined yet
    /// outvoted the replicas that saw the new primary die, and the cluster
    /// stayed without a writable member.
    #[serde(default, deserialize_with = "hosts_with_forks")]
    pub rejoining: BTreeMap<String, String>,
    /// The GTID position of the last promoted primary when it was
    /// promoted: members beyond it from another server diverged.
    #[serde(default)]
    pub promoted_at: Option<String>,
    /// The operation in progress.
    #[serde(default)]
    pub operation: Option<Operation>,
    /// History, oldest first.
    #[serde(default)]
    pub events: VecDeque<Event>,
}

fn yes() -> bool {
    true
}

/// `rejoining` as stored now (host → fork point) or by the first build
/// that had it (a list of hosts, fork points unknown).
fn hosts_with_forks<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Forks(BTreeMap<String, String>),
        Hosts(Vec<String>),
    }
    Ok(match Stored::deserialize(d)? {
        Stored::Forks(m) => m,
        Stored::Hosts(h) => h.into_iter().map(|h| (h, String::new())).collect(),
    })
}

impl Default for ClusterControl {
    fn default() -> Self {
        ClusterControl {
            auto_failover: true,
            maintenance: false,
            budget: None,
            window_seconds: None,
            recent_failovers: Vec::new(),
            held: None,
            promotion: BTreeMap::new(),
            needs_rebuild: BTreeSet::new(),
            frozen: BTreeSet::new(),
            detached: BTreeMap::new(),
            rejoining: BTreeMap::new(),
            promoted_at: None,
            operation: None,
            events: VecDeque::new(),
        }
    }
}

impl ClusterControl {
    /// The rule of `host`.
    pub fn rule(&self, host: &str) -> PromotionRule {
        self.promotion
            .get(host)
            .copied()
            .unwrap_or(PromotionRule::Neutral)
    }

    /// Never a candidate, never repaired: it diverged, or a restore took
    /// it out of service.
    pub fn out_of_service(&self, host: &str) -> bool {
        self.needs_rebuild.contains(host) || self.detached.contains_key(host)
    }

    /// Whether `host` is still left behind by the last operation: marked
    /// rejoining and not seen replicating from the primary (`follows`).
    /// For what status shows; decisions need [`ClusterControl::apart`].
    pub fn left_behind(&self, host: &str, follows: bool) -> bool {
        self.rejoining.contains_key(host) && !follows
    }

    /// Whether `host` is left behind and provably apart from the primary:
    /// the primary's last observation (`registered`) does not list its
    /// server id among the replicas registered with it, and either its
    /// fresh report shows it replicating from elsewhere or from nobody
    /// (`fresh_follows`: `None` without a fresh report) or it has none.
    /// A member the primary lists is never apart, whatever its own report
    /// says (it may reach the primary through another name); anything
    /// less than this proves nothing, and the member counts as any other.
    pub fn apart(
        &self,
        host: &str,
        fresh_follows: Option<bool>,
        server_id: Option<u32>,
        registered: Option<&[u32]>,
    ) -> bool {
        let unlisted = matches!((server_id, registered), (Some(id), Some(r)) if !r.contains(&id));
        self.rejoining.contains_key(host) && unlisted && fresh_follows != Some(true)
    }

    /// Appends an event, dropping the oldest beyond [`EVENTS_KEPT`].
    pub fn record(&mut self, event: Event) {
        self.events.push_back(event);
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }
}

/// Planned or unplanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    /// The primary is dead.
    Failover,
    /// The primary is healthy and hands over.
    Switchover,
}

impl OperationKind {
    /// Its name in events and output.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Failover => "failover",
            OperationKind::Switchover => "switchover",
        }
    }
}

/// The steps, in order. The journal holds the step about to run (or
/// running): it is persisted before the step acts, and every step is
/// idempotent, so a successor re-runs the recorded step and goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Every reachable member obeys only this epoch from here on.
    Barrier,
    /// Replicas stop receiving and apply what they received (failover).
    Freeze,
    /// The old primary can no longer commit, proven.
    Fence,
    /// The candidate is chosen (and caught up).
    Choose,
    /// The candidate becomes the writable primary.
    Promote,
    /// The others replicate from it.
    Repoint,
    /// Routing hooks run.
    Hooks,
}

/// A replica's positions after it was frozen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frozen {
    /// Everything executed (MariaDB gtid_current_pos, MySQL gtid_executed).
    pub executed: String,
    /// What the IO thread had received.
    pub received: String,
    /// MariaDB gtid_binlog_pos.
    pub binlog_pos: String,
    /// MariaDB gtid_slave_pos.
    pub slave_pos: String,
    /// Its server_id.
    pub server_id: u32,
    /// Its server_uuid (MySQL; empty on MariaDB and in journals written
    /// before MySQL support).
    #[serde(default)]
    pub server_uuid: String,
    /// The applier stopped on an error (its executed set is incomplete).
    pub applier_error: String,
}

/// The journal of one failover or switchover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Unique id (also the agents' idempotency key).
    pub id: String,
    /// Failover or switchover.
    pub kind: OperationKind,
    /// Started by detection, not by an operator.
    pub automatic: bool,
    /// Unix ms.
    pub started_unix_ms: i64,
    /// The epoch of the coordinator driving it now.
    pub epoch: Epoch,
    /// Why it started.
    pub reason: String,
    /// What was observed.
    pub evidence: Vec<String>,
    /// The primary being replaced.
    pub old_primary: String,
    /// The operator's choice of candidate.
    pub requested_to: Option<String>,
    /// Proceed without a replica that may hold acknowledged writes.
    pub allow_data_loss: bool,
    /// The operator vouches the old primary cannot commit.
    pub confirm_fenced: Option<String>,
    /// The step about to run or running.
    pub step: Step,
    /// Each frozen replica's positions.
    pub frozen: BTreeMap<String, Frozen>,
    /// How the old primary was proven unable to commit.
    pub fence_proof: Option<String>,
    /// Unix ms of the fence (a switchover's write gap starts here).
    pub fenced_unix_ms: Option<i64>,
    /// The chosen candidate.
    pub candidate: Option<String>,
    /// The candidate's executed position at promotion.
    pub promoted_at: Option<String>,
    /// Unix ms of the promotion.
    pub promoted_unix_ms: Option<i64>,
    /// The old primary's last report when the operation passed its
    /// barrier: a coordinator that restarts or takes over mid-failover has
    /// no report of a dead primary in memory, and without what it held a
    /// candidate with the old primary's last writes would look errant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary_last_seen: Option<LastSeen>,
}

/// What a server was last seen to hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSeen {
    /// Everything executed (MariaDB gtid_current_pos, MySQL gtid_executed).
    pub executed: String,
    /// Its server_uuid (MySQL; empty on MariaDB).
    pub server_uuid: String,
}

impl Operation {
    /// A new operation about to take its first step (the barrier).
    pub fn new(
        id: String,
        kind: OperationKind,
        epoch: Epoch,
        old_primary: String,
        reason: String,
        started_unix_ms: i64,
    ) -> Operation {
        Operation {
            id,
            kind,
            automatic: false,
            started_unix_ms,
            epoch,
            reason,
            evidence: Vec::new(),
            old_primary,
            requested_to: None,
            allow_data_loss: false,
            confirm_fenced: None,
            step: Step::Barrier,
            frozen: BTreeMap::new(),
            fence_proof: None,
            fenced_unix_ms: None,
            candidate: None,
            promoted_at: None,
            promoted_unix_ms: None,
            old_primary_last_seen: None,
        }
    }
}

/// One entry of the cluster's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix ms.
    pub at_unix_ms: i64,
    /// Stable kind, e.g. `failover-completed`.
    pub kind: String,
    /// The host concerned (may be empty).
    pub host: String,
    /// In words.
    pub message: String,
    /// The operation it belongs to (may be empty).
    pub operation_id: String,
    /// The epoch it was decided under.
    pub epoch: Option<Epoch>,
    /// Observations and proofs.
    pub evidence: Vec<String>,
}

impl Event {
    /// An event of no operation, decided now under `epoch`.
    pub fn new(
        kind: &str,
        host: &str,
        message: String,
        epoch: &Epoch,
        evidence: Vec<String>,
    ) -> Event {
        Event {
            at_unix_ms: dbfleet_common::clock::unix_ms(),
            kind: kind.to_string(),
            host: host.to_string(),
            message,
            operation_id: String::new(),
            epoch: Some(epoch.clone()),
            evidence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_apart_from_the_primary_only_on_positive_evidence() {
        let mut c = ClusterControl::default();
        let registered: &[u32] = &[2, 3];
        // not marked: never apart
        assert!(!c.apart("db1", Some(false), Some(1), Some(registered)));
        c.rejoining.insert("db1".into(), "0-2-20".into());
        // unlisted by the primary, and its own report agrees or is absent
        assert!(c.apart("db1", Some(false), Some(1), Some(registered)));
        assert!(c.apart("db1", None, Some(1), Some(registered)));
        // its own report shows it following: not apart
        assert!(!c.apart("db1", Some(true), Some(1), Some(registered)));
        // listed by the primary, whatever its report says (another name
        // for the same primary)
        assert!(!c.apart("db2", Some(false), Some(2), Some(registered)));
        c.rejoining.insert("db2".into(), String::new());
        assert!(!c.apart("db2", Some(false), Some(2), Some(registered)));
        // nothing known of the primary's replicas, or of its id: unproven
        assert!(!c.apart("db1", Some(false), Some(1), None));
        assert!(!c.apart("db1", None, None, Some(registered)));
    }

    #[test]
    fn members_left_behind_are_read_as_stored_before_their_fork_points_were() {
        let c: ClusterControl = serde_json::from_str(r#"{"rejoining":["db1"]}"#).unwrap();
        assert_eq!(c.rejoining.get("db1").map(String::as_str), Some(""));
        let c: ClusterControl = serde_json::from_str(r#"{"rejoining":{"db1":"0-2-50"}}"#).unwrap();
        assert_eq!(c.rejoining["db1"], "0-2-50");
        let c: ClusterControl = serde_json::from_str("{}").unwrap();
        assert!(c.rejoining.is_empty());
    }
}
