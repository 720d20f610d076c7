//! The Fence step: proof that the old primary can no longer commit (brief
//! §5 step 4), tried in turn: an operator's confirmation, its agent
//! (read-only or stopped), a STONITH hook, lossless semi-sync with every
//! acknowledging replica frozen, and the self-fence timeout provably
//! elapsed. Without one, the failover stops and says why.
//!
//! The self-fence proof: an agent with `self_fence_timeout` makes its
//! primary read-only (killing a hung mysqld) once it has had no ack from
//! an active coordinator and no live replica connection for the timeout
//! (`agent/src/guard.rs`). Only the lease holder's acks count, so the
//! holder knows every ack that could have counted since it took the lease:
//! the ones for the reports it received itself. With every replica frozen
//! (no live replica connection; the member the last failover left behind
//! need not be, once proven apart from the old primary) and no report
//! from the old primary since
//! this coordinator started waiting, the agent has fenced once the timeout,
//! two of its report intervals (it checks on every report) and a clock-rate
//! margin have passed. The proof assumes the agent process runs: it is the
//! agent that fences.

use std::time::{Duration, Instant};

use dbfleet_proto::model::{MysqlAddress, MysqlObservation};
use dbfleet_proto::pb;
use dbfleet_proto::pb::command_request::Command;
use tracing::{info, warn};

use super::Failovers;
use super::hooks;
use super::journal::{Operation, OperationKind};
use super::procedure::{StepError, frozen_from, now_unix_ms, reply_state};
use crate::fleet::MemberState;

/// How waiting for the old primary's self-fence ended.
pub(super) enum SelfFence {
    /// The timeout provably passed: the proof, in words.
    Elapsed(String),
    /// The old primary's agent reported again: it can be asked directly.
    AgentBack,
    /// This proof does not apply, and why.
    Unproven(String),
}

/// What the self-fence proof needs to know about the old primary and the
/// rest of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SelfFenceFacts {
    /// The agent's self-fence timeout (0: disabled).
    pub timeout_ms: u64,
    /// The agent's longest time between reports (and checks).
    pub report_interval_ms: u64,
    /// Live replica connections in its last observation of mysqld.
    pub live_replicas: Option<u32>,
    /// Members other than the old primary.
    pub others: Vec<String>,
    /// Of those, the ones not frozen by this operation.
    pub unfrozen: Vec<String>,
}

/// Slack for clocks that run at different rates: 1 part in 50.
const CLOCK_RATE_MARGIN: u32 = 50;

/// How long after the last possible ack the self-fence has surely acted,
/// or why the proof does not apply.
pub(super) fn self_fence_wait(f: &SelfFenceFacts) -> Result<Duration, String> {
    if f.timeout_ms == 0 {
        return Err("self-fence: not enabled on the old primary's agent".into());
    }
    if !f.unfrozen.is_empty() {
        return Err(format!(
            "self-fence: replica(s) {} could not be stopped and may keep the old primary from fencing itself",
            f.unfrozen.join(", ")
        ));
    }
    if let Some(n) = f.live_replicas
        && n as usize > f.others.len()
    {
        return Err(format!(
            "self-fence: the old primary last had {n} live replica connections but only {} managed members; \
             an unmanaged replica may keep it from fencing itself",
            f.others.len()
        ));
    }
    let timeout = Duration::from_millis(f.timeout_ms);
    Ok(timeout
        + timeout / CLOCK_RATE_MARGIN
        + 2 * Duration::from_millis(f.report_interval_ms.max(100))
        + Duration::from_secs(1))
}

/// The semi-sync proof stands only if every replica that can acknowledge
/// the old primary's commits is one we froze: more semi-sync clients on it
/// than managed ackers means a replica dbfleet does not manage (set up by
/// hand, or forgotten) may still acknowledge, and so let it commit.
pub(super) fn unmanaged_ackers(old: &str, clients: u32, managed: usize) -> Result<(), String> {
    if clients as usize > managed {
        return Err(format!(
            "semi-sync: {old} last had {clients} semi-sync replica(s) connected but only {managed} \
             managed member(s) acknowledge it; an unmanaged replica may still acknowledge its commits"
        ));
    }
    Ok(())
}

/// Every replica registered with the old primary when it was last seen
/// (by server id) must be a managed member this operation stopped: a
/// count alone misses an unmanaged replica standing in for a managed one
/// that was disconnected. `members` are the other members and their
/// server ids (None: never seen).
pub(super) fn registered_replicas_frozen(
    old: &str,
    registered: &[u32],
    members: &[(String, Option<u32>)],
    frozen: impl Fn(&str) -> bool,
) -> Result<(), String> {
    for id in registered {
        match members.iter().find(|(_, m)| *m == Some(*id)) {
            None => {
                return Err(format!(
                    "semi-sync: a replica with server id {id} was registered with {old} but is no managed member; \
                     an unmanaged replica may still acknowledge its commits"
                ));
            }
            Some((host, _)) if !frozen(host) => {
                return Err(format!(
                    "semi-sync: {host} (server id {id}) was registered with {old} and could not be stopped"
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

impl Failovers {
    /// The Fence step: a proof that the old primary can no longer commit,
    /// or a stop that leaves the replicas frozen and read-only.
    pub(super) async fn fence(&self, op: &mut Operation) -> Result<(), StepError> {
        for attempt in 1.. {
            if self.fence_once(op, attempt).await? {
                return Ok(());
            }
        }
        unreachable!("fence_once ends the loop by its third attempt")
    }

    /// One round of every proof in turn; `Ok(false)` when the old primary's
    /// agent reported again while waiting for its self-fence (the agent
    /// fence is worth another try).
    async fn fence_once(&self, op: &mut Operation, attempt: u32) -> Result<bool, StepError> {
        let old = self.member(op, &op.old_primary);
        let mut tried = Vec::new();
        if op.kind == OperationKind::Failover
            && op.confirm_fenced.as_deref() == Some(op.old_primary.as_str())
        {
            return self
                .fenced(
                    op,
                    format!("operator confirmed {} is fenced", op.old_primary),
                )
                .await;
        }
        if let Some(m) = &old {
            let kill = op.kind == OperationKind::Failover;
            match self
                .command(
                    op,
                    m,
                    Command::Fence(pb::Fence {
                        kill_if_unresponsive: kill,
                    }),
                    Duration::from_secs(20),
                )
                .await
            {
                Ok(reply) => {
                    let how = match pb::FenceMethod::try_from(reply.fence_method) {
                        Ok(pb::FenceMethod::ReadOnly) => "read-only",
                        Ok(pb::FenceMethod::Stopped) => "stopped",
                        _ => "unknown",
                    };
                    if op.kind == OperationKind::Switchover {
                        let Some(state) = reply_state(&reply) else {
                            return Err(self
                                .rollback(op, "the old primary's fence returned no state")
                                .await);
                        };
                        op.frozen
                            .insert(op.old_primary.clone(), frozen_from(&state));
                    }
                    return self
                        .fenced(
                            op,
                            format!("agent of {} confirmed {how}: {}", m.host, reply.detail),
                        )
                        .await;
                }
                Err(e) => {
                    if op.kind == OperationKind::Switchover {
                        return Err(self
                            .rollback(op, &format!("cannot fence the primary: {e}"))
                            .await);
                    }
                    tried.push(format!("agent fence: {e}"));
                }
            }
        }
        if !self.cfg.stonith_hook.is_empty() {
            let cluster = self.cluster_of(op);
            let payload = self.payload(op, "stonith", &cluster, "", "");
            match hooks::run(&self.cfg.stonith_hook, &payload, self.cfg.hook_timeout).await {
                Ok(()) => {
                    return self
                        .fenced(op, format!("STONITH hook fenced {}", op.old_primary))
                        .await;
                }
                Err(e) => tried.push(e),
            }
        }
        match self.semi_sync_proof(op, old.as_ref()) {
            Ok(proof) => return self.fenced(op, proof).await,
            Err(e) => tried.push(e),
        }
        if op.kind == OperationKind::Failover {
            match self.await_self_fence(op, old.as_ref()).await? {
                SelfFence::Elapsed(proof) => return self.fenced(op, proof).await,
                SelfFence::AgentBack if attempt < 3 => return Ok(false),
                SelfFence::AgentBack => tried.push(format!(
                    "self-fence: the agent of {} keeps coming back but cannot fence it",
                    op.old_primary
                )),
                SelfFence::Unproven(e) => tried.push(e),
            }
        }
        Err(StepError::Blocked(format!(
            "no fence proof for {}: {}; the replicas stay frozen and read-only. Fence it yourself and run \
             `dbfleet failover --cluster {} --confirm-fenced {}`",
            op.old_primary,
            tried.join("; "),
            self.cluster_of(op),
            op.old_primary
        )))
    }

    /// Lossless semi-sync on the old primary and every acknowledging
    /// replica frozen: a commit there can no longer be acknowledged.
    fn semi_sync_proof(&self, op: &Operation, old: Option<&MemberState>) -> Result<String, String> {
        let last = old
            .and_then(|m| m.server().cloned())
            .or_else(|| self.last_server(&op.old_primary));
        let Some(state) = last else {
            return Err("semi-sync: the old primary's settings were never observed".into());
        };
        let semi = state.semi_sync;
        if !semi.lossless() {
            return Err(format!(
                "semi-sync: not lossless on {} (enabled {}, wait_no_slave {}, timeout {} ms)",
                op.old_primary, semi.source_enabled, semi.wait_no_replica, semi.timeout_ms
            ));
        }
        let members = self.fleet.members(&self.cluster_of(op));
        let ackers: Vec<&MemberState> = members
            .iter()
            .filter(|m| m.host != op.old_primary)
            .filter(|m| {
                // Acknowledges the old primary's commits: semi-sync on and
                // replicating from it (or unknown: counted, to be safe).
                m.report.as_ref().is_none_or(|r| match &r.mysql {
                    dbfleet_proto::model::MysqlObservation::Reachable(s) => {
                        s.semi_sync.replica_enabled
                            && s.replication.as_ref().is_some_and(|rep| {
                                old.and_then(|o| MysqlAddress::parse(&o.mysql_address).ok())
                                    .is_none_or(|a| rep.source.same_endpoint(&a))
                            })
                    }
                    _ => true,
                })
            })
            .collect();
        unmanaged_ackers(&op.old_primary, semi.clients, ackers.len())?;
        let ids: Vec<(String, Option<u32>)> = members
            .iter()
            .filter(|m| m.host != op.old_primary)
            .map(|m| {
                let id = m
                    .server()
                    .map(|s| s.server_id)
                    .or_else(|| self.last_server(&m.host).map(|s| s.server_id));
                (m.host.clone(), id)
            })
            .collect();
        registered_replicas_frozen(&op.old_primary, &state.replica_server_ids, &ids, |h| {
            op.frozen.contains_key(h)
        })?;
        let unfrozen: Vec<&str> = ackers
            .iter()
            .filter(|m| !op.frozen.contains_key(&m.host))
            .map(|m| m.host.as_str())
            .collect();
        if !unfrozen.is_empty() {
            return Err(format!(
                "semi-sync: acknowledging replica(s) {} could not be stopped",
                unfrozen.join(", ")
            ));
        }
        Ok(format!(
            "lossless semi-sync on {} (timeout {} ms, wait_no_slave) and all {} acknowledging replicas stopped",
            op.old_primary,
            semi.timeout_ms,
            ackers.len()
        ))
    }

    pub(super) fn last_semi_sync(&self, host: &str) -> Option<dbfleet_proto::model::SemiSync> {
        self.last_server(host).map(|s| s.semi_sync)
    }

    /// The last observation of `host`'s server.
    pub(super) fn last_server(&self, host: &str) -> Option<dbfleet_proto::model::ServerState> {
        crate::ha::relock(&self.last_seen).get(host).cloned()
    }

    async fn fenced(&self, op: &mut Operation, proof: String) -> Result<bool, StepError> {
        info!(operation = op.id, proof, "old primary fenced");
        op.fence_proof = Some(proof);
        op.fenced_unix_ms = Some(now_unix_ms());
        Ok(true)
    }

    fn self_fence_facts(
        &self,
        op: &Operation,
        old: Option<&MemberState>,
    ) -> Option<SelfFenceFacts> {
        let old = old?;
        let report = old.report.as_ref()?;
        let address = MysqlAddress::parse(&old.mysql_address).ok();
        let members = self.fleet.members(&self.cluster_of(op));
        let control = self.fleet.cluster_record(&self.cluster_of(op)).control;
        let others: Vec<&MemberState> = members
            .iter()
            .filter(|m| m.host != op.old_primary)
            .collect();
        // Not frozen, and not the member the last failover left behind
        // and proven apart (unlisted by the old primary, and not shown
        // following it): it may hold a live replica connection that keeps
        // the old primary from fencing.
        let unfrozen = others
            .iter()
            .filter(|m| !op.frozen.contains_key(&m.host))
            .filter(|m| !self.apart(&control, &members, m, &op.old_primary, address.as_ref()))
            .map(|m| m.host.clone())
            .collect();
        Some(SelfFenceFacts {
            timeout_ms: report.agent.self_fence_timeout_ms,
            report_interval_ms: report.agent.report_interval_ms,
            live_replicas: match &report.mysql {
                MysqlObservation::Reachable(s) => Some(s.replicas_connected),
                MysqlObservation::Unreachable { .. } => None,
            },
            unfrozen,
            others: others.iter().map(|m| m.host.clone()).collect(),
        })
    }

    /// Waits until the old primary has surely fenced itself, as long as
    /// this coordinator holds the lease and hears nothing from that agent.
    async fn await_self_fence(
        &self,
        op: &Operation,
        old: Option<&MemberState>,
    ) -> Result<SelfFence, StepError> {
        let Some(facts) = self.self_fence_facts(op, old) else {
            return Ok(SelfFence::Unproven(
                "self-fence: the old primary's agent never reported".into(),
            ));
        };
        let wait = match self_fence_wait(&facts) {
            Ok(w) => w,
            Err(e) => return Ok(SelfFence::Unproven(e)),
        };
        // Acks that count come only from the lease holder, and this one
        // acked at most the reports it received: none since `since` unless
        // a newer report shows up below.
        let since = Instant::now();
        let heard = old.and_then(|m| m.received_at);
        info!(
            operation = op.id,
            host = op.old_primary,
            wait = ?wait,
            "waiting for the old primary's self-fence"
        );
        loop {
            self.still_ours(op)?;
            let now_heard = self.member(op, &op.old_primary).and_then(|m| m.received_at);
            if now_heard.is_some() && now_heard != heard {
                warn!(
                    operation = op.id,
                    host = op.old_primary,
                    "the old primary's agent reported again while waiting for its self-fence"
                );
                return Ok(SelfFence::AgentBack);
            }
            if since.elapsed() >= wait {
                return Ok(SelfFence::Elapsed(format!(
                    "self-fence of {} provably elapsed: no report for {:.1}s (timeout {} ms, report interval {} ms) \
                     and every other member stopped or proven apart from it ({} of {} stopped)",
                    op.old_primary,
                    since.elapsed().as_secs_f64(),
                    facts.timeout_ms,
                    facts.report_interval_ms,
                    op.frozen.len(),
                    facts.others.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SelfFenceFacts {
        SelfFenceFacts {
            timeout_ms: 5000,
            report_interval_ms: 1000,
            live_replicas: Some(2),
            others: vec!["db2".into(), "db3".into()],
            unfrozen: vec![],
        }
    }

    #[test]
    fn an_unmanaged_semi_sync_replica_voids_the_semi_sync_proof() {
        assert!(unmanaged_ackers("db1", 2, 2).is_ok());
        let e = unmanaged_ackers("db1", 3, 2).unwrap_err();
        assert!(e.contains("unmanaged replica"), "{e}");
        let members = [("db2".to_string(), Some(2)), ("db3".to_string(), Some(3))];
        let all = |_: &str| true;
        assert!(registered_replicas_frozen("db1", &[2, 3], &members, all).is_ok());
        // the counts match, but server 4 stands in for a disconnected db3
        let e = registered_replicas_frozen("db1", &[2, 4], &members, all).unwrap_err();
        assert!(
            e.contains("server id 4") && e.contains("unmanaged replica"),
            "{e}"
        );
        let e = registered_replicas_frozen("db1", &[2, 3], &members, |h| h == "db2").unwrap_err();
        assert!(e.contains("db3 (server id 3)"), "{e}");
        // a member never seen cannot vouch for an id
        let unseen = [("db2".to_string(), None)];
        assert!(registered_replicas_frozen("db1", &[2], &unseen, all).is_err());
    }

    #[test]
    fn the_wait_covers_the_timeout_two_checks_and_clock_drift() {
        assert_eq!(
            self_fence_wait(&facts()).unwrap(),
            Duration::from_millis(5000 + 100 + 2000 + 1000)
        );
    }

    #[test]
    fn no_proof_when_disabled_a_replica_runs_or_an_unmanaged_one_may() {
        let e = self_fence_wait(&SelfFenceFacts {
            timeout_ms: 0,
            ..facts()
        })
        .unwrap_err();
        assert!(e.contains("not enabled"), "{e}");
        let e = self_fence_wait(&SelfFenceFacts {
            unfrozen: vec!["db3".into()],
            ..facts()
        })
        .unwrap_err();
        assert!(e.contains("db3"), "{e}");
        let e = self_fence_wait(&SelfFenceFacts {
            live_replicas: Some(3),
            ..facts()
        })
        .unwrap_err();
        assert!(e.contains("unmanaged"), "{e}");
    }
}
