//! Running a failover or switchover as journaled steps (brief §5).
//!
//! The journal (the cluster record's `operation`) holds the step about to
//! run; it is written through the op-log, acknowledged by the standby,
//! before the step acts. Every agent command is idempotent, so the
//! coordinator that holds the lease next re-runs the recorded step (after
//! its own epoch barrier) and carries on. Commands carry the epoch: once
//! the barrier passed, an older active can no longer drive any member.

pub(crate) use dbfleet_common::clock::unix_ms as now_unix_ms;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbfleet_lease::Epoch;
use dbfleet_proto::lease::millis;
use dbfleet_proto::model::{ConfigProblemKind, Flavor, MysqlAddress, ServerState};
use dbfleet_proto::pb;
use dbfleet_proto::pb::command_request::Command;
use futures::future::join_all;
use tracing::Instrument;
use tracing::{error, info, warn};

use super::Failovers;
use super::hooks::{self, Payload};
use super::journal::{Event, Frozen, Operation, OperationKind, Step};
use super::plan::{self, Constraints};
use super::positions::Positions;
use crate::agent_commands::Sending;
use crate::error::ServiceError;
use crate::fleet::MemberState;

/// How a step ended badly.
#[derive(Debug, Clone)]
pub(crate) enum StepError {
    /// This coordinator lost the lease or met a higher epoch: its successor
    /// resumes from the journal.
    Aborted(String),
    /// The procedure cannot go on safely; the cluster is left read-only.
    Blocked(String),
    /// A switchover gave up before the promotion and undid its fence.
    RolledBack(String),
}

/// The step after `step`, or `None` when done.
fn next(kind: OperationKind, step: Step) -> Option<Step> {
    let order: &[Step] = match kind {
        OperationKind::Failover => &[
            Step::Barrier,
            Step::Freeze,
            Step::Fence,
            Step::Choose,
            Step::Promote,
            Step::Repoint,
            Step::Hooks,
        ],
        OperationKind::Switchover => &[
            Step::Barrier,
            Step::Fence,
            Step::Choose,
            Step::Promote,
            Step::Repoint,
            Step::Hooks,
        ],
    };
    let i = order.iter().position(|s| *s == step)?;
    order.get(i + 1).copied()
}

fn step_number(step: Step) -> u32 {
    step as u32 + 1
}

pub(super) fn frozen_from(s: &ServerState) -> Frozen {
    let r = s.replication.as_ref();
    Frozen {
        executed: s.gtid.executed.clone(),
        received: r.map(|r| r.received_gtid.clone()).unwrap_or_default(),
        binlog_pos: s.gtid.binlog_pos.clone(),
        slave_pos: s.gtid.slave_pos.clone(),
        server_id: s.server_id,
        server_uuid: s.server_uuid.clone(),
        applier_error: r
            .filter(|r| !r.sql_running || !r.last_sql_error.is_empty())
            .map(|r| {
                if r.last_sql_error.is_empty() {
                    "SQL thread stopped".to_string()
                } else {
                    r.last_sql_error.clone()
                }
            })
            .unwrap_or_default(),
    }
}

pub(super) fn reply_state(reply: &pb::CommandReply) -> Option<ServerState> {
    ServerState::try_from(reply.mysql.clone()?).ok()
}

impl Failovers {
    pub(super) fn member(&self, op: &Operation, host: &str) -> Option<MemberState> {
        self.fleet
            .members(&self.cluster_of(op))
            .into_iter()
            .find(|m| m.host == host)
    }

    pub(super) fn cluster_of(&self, op: &Operation) -> String {
        op.id.split('/').next().unwrap_or_default().to_string()
    }

    /// The lease still backs `op`'s epoch.
    pub(super) fn still_ours(&self, op: &Operation) -> Result<(), StepError> {
        let ha = self.fleet.ha();
        let now = dbfleet_common::clock::boottime();
        let h = ha.holder();
        if h.command_epoch(now).as_ref() != Some(&op.epoch) {
            return Err(StepError::Aborted(
                "this coordinator no longer holds the lease; the next active resumes the operation"
                    .into(),
            ));
        }
        Ok(())
    }

    /// One command to one member's agent under the operation's epoch.
    pub(crate) async fn command(
        &self,
        op: &Operation,
        m: &MemberState,
        command: Command,
        timeout: Duration,
    ) -> Result<pb::CommandReply, String> {
        self.still_ours(op).map_err(|e| match e {
            StepError::Aborted(m) | StepError::Blocked(m) | StepError::RolledBack(m) => m,
        })?;
        let sending = Sending {
            epoch: &op.epoch,
            operation_id: &op.id,
            step: step_number(op.step),
            timeout,
        };
        self.agents.send(self.fleet.ha(), m, sending, command).await
    }

    async fn journal(&self, op: &Operation) -> Result<(), StepError> {
        let cluster = self.cluster_of(op);
        let o = op.clone();
        self.fleet
            .update_cluster(&cluster, op.epoch.clone(), move |rec| {
                rec.control.operation = Some(o);
                Ok(())
            })
            .await
            .map_err(|e| StepError::Aborted(format!("cannot journal the step: {e}")))
    }

    /// Runs `op` from its recorded step to the end and returns the outcome.
    pub(crate) async fn drive(
        self: Arc<Self>,
        mut op: Operation,
        resumed: bool,
    ) -> pb::OperationResult {
        let started = Instant::now();
        info!(operation = op.id, kind = op.kind.as_str(), step = ?op.step, resumed, "operation running");
        if resumed && op.step != Step::Barrier {
            // A successor first makes sure no older active drives anyone.
            if let Err(e) = self.barrier(&op).await {
                return self.finish(op, Err(e), started).await;
            }
        }
        loop {
            let result = match op.step {
                Step::Barrier => self.barrier(&op).await,
                Step::Freeze => self.freeze(&mut op).await,
                Step::Fence => self.fence(&mut op).await,
                Step::Choose => self.choose(&mut op).await,
                Step::Promote => self.promote(&mut op).await,
                Step::Repoint => self.repoint(&mut op).await,
                Step::Hooks => {
                    self.post_hooks(&op).await;
                    Ok(())
                }
            };
            if let Err(e) = result {
                return self.finish(op, Err(e), started).await;
            }
            if op.step == Step::Barrier && op.old_primary_last_seen.is_none() {
                // journaled with the next step
                op.old_primary_last_seen =
                    self.last_server(&op.old_primary)
                        .map(|s| super::journal::LastSeen {
                            executed: s.gtid.executed,
                            server_uuid: s.server_uuid,
                        });
            }
            if op.step == Step::Barrier && op.automatic && op.kind == OperationKind::Failover {
                // The re-check under the recorded intent.
                let cluster = self.cluster_of(&op);
                if !matches!(
                    self.assess(&cluster),
                    Some((_, super::detect::Health::Down { .. }))
                ) {
                    let e = StepError::RolledBack(
                        "the re-check no longer finds the primary dead".into(),
                    );
                    return self.finish(op, Err(e), started).await;
                }
            }
            match next(op.kind, op.step) {
                Some(step) => {
                    op.step = step;
                    if let Err(e) = self.journal(&op).await {
                        return self.finish(op, Err(e), started).await;
                    }
                }
                None => return self.finish(op, Ok(()), started).await,
            }
        }
    }

    async fn barrier(&self, op: &Operation) -> Result<(), StepError> {
        self.still_ours(op)?;
        let members = self.fleet.members(&self.cluster_of(op));
        let calls = members.iter().map(|m| async move {
            let r = self
                .command(
                    op,
                    m,
                    Command::Barrier(pb::EpochBarrier {}),
                    self.clients_timeout(),
                )
                .await;
            (m.host.clone(), r)
        });
        for (host, r) in join_all(calls).await {
            if let Err(e) = r {
                info!(
                    operation = op.id,
                    host,
                    error = e,
                    "barrier not acknowledged (member unreachable)"
                );
            }
        }
        self.still_ours(op)
    }

    pub(super) fn clients_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    async fn freeze(&self, op: &mut Operation) -> Result<(), StepError> {
        let members = self.fleet.members(&self.cluster_of(op));
        let timeout = self.cfg.apply_timeout;
        let frozen_ops = members
            .iter()
            .filter(|m| m.host != op.old_primary && m.server().is_some())
            .map(|m| {
                let op = &*op;
                async move {
                    let r = self
                        .command(
                            op,
                            m,
                            Command::Freeze(pb::Freeze {
                                apply_timeout_ms: millis(timeout),
                            }),
                            timeout + Duration::from_secs(5),
                        )
                        .await;
                    (m.host.clone(), r)
                }
            });
        let mut frozen = BTreeMap::new();
        for (host, r) in join_all(frozen_ops).await {
            match r.map(|reply| (reply_state(&reply), reply.detail)) {
                // A member that replicates from nobody (a former primary
                // not yet rejoined) is no candidate and acknowledges
                // nothing: the rejoin check judges it later.
                Ok((Some(state), detail)) if state.replication.is_some() => {
                    info!(operation = op.id, host, detail, "replica frozen");
                    frozen.insert(host, frozen_from(&state));
                }
                Ok((Some(_), detail)) => {
                    info!(operation = op.id, host, detail, "not a replica; left out")
                }
                Ok((None, _)) => warn!(operation = op.id, host, "freeze returned no state"),
                Err(e) => warn!(operation = op.id, host, error = e, "cannot freeze replica"),
            }
        }
        self.still_ours(op)?;
        op.frozen = frozen;
        Ok(())
    }

    /// A switchover that cannot go on: make the old primary writable
    /// again (it was never replaced) and stop.
    pub(super) async fn rollback(&self, op: &Operation, why: &str) -> StepError {
        warn!(operation = op.id, why, "switchover rolling back");
        if let Some(m) = self.member(op, &op.old_primary)
            && let Err(e) = self
                .command(
                    op,
                    &m,
                    Command::Promote(self.promote_command(&self.cluster_of(op))),
                    Duration::from_secs(20),
                )
                .await
        {
            return StepError::Blocked(format!(
                "{why}; and restoring {} as the writable primary failed: {e}",
                op.old_primary
            ));
        }
        StepError::RolledBack(why.to_string())
    }

    async fn choose(&self, op: &mut Operation) -> Result<(), StepError> {
        let cluster = self.cluster_of(op);
        let rec = self.fleet.cluster_record(&cluster);
        let members = self.fleet.members(&cluster);
        if op.kind == OperationKind::Switchover {
            let candidate = op.candidate.clone().unwrap_or_default();
            let target = op
                .frozen
                .get(&op.old_primary)
                .map(|f| f.executed.clone())
                .unwrap_or_default();
            let Some(m) = members.iter().find(|m| m.host == candidate) else {
                return Err(self
                    .rollback(op, &format!("{candidate} is not a member"))
                    .await);
            };
            let wait = Command::WaitGtid(pb::WaitGtid {
                gtid: target.clone(),
                timeout_ms: millis(self.cfg.apply_timeout),
            });
            return match self
                .command(op, m, wait, self.cfg.apply_timeout + Duration::from_secs(5))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(self
                    .rollback(op, &format!("{candidate} did not reach {target}: {e}"))
                    .await),
            };
        }
        let old_address = members
            .iter()
            .find(|m| m.host == op.old_primary)
            .and_then(|m| MysqlAddress::parse(&m.mysql_address).ok());
        let inputs: Vec<plan::Member<'_>> = members
            .iter()
            .filter(|m| m.host != op.old_primary)
            .map(|m| plan::Member {
                left_behind: rec.control.rejoining.contains_key(&m.host),
                apart: self.apart(
                    &rec.control,
                    &members,
                    m,
                    &op.old_primary,
                    old_address.as_ref(),
                ),
                host: &m.host,
                rule: rec.control.rule(&m.host),
                frozen: op.frozen.get(&m.host),
                semi_sync_replica: m.report.as_ref().is_none_or(|r| match &r.mysql {
                    dbfleet_proto::model::MysqlObservation::Reachable(s) => {
                        s.semi_sync.replica_enabled
                    }
                    _ => true,
                }),
                needs_rebuild: rec.control.out_of_service(&m.host),
                address_mismatch: m.has_config_problem(&ConfigProblemKind::MysqlAddressMismatch),
            })
            .collect();
        let lossless = self
            .last_semi_sync(&op.old_primary)
            .is_some_and(|s| s.lossless());
        let flavor =
            Self::cluster_flavor(&members).map_err(|e| StepError::Blocked(e.to_string()))?;
        let (old_primary_executed, old_primary_uuid) = self.old_primary_seen(op);
        let choice = plan::choose(
            &inputs,
            Constraints {
                requested_to: op.requested_to.as_deref(),
                allow_data_loss: op.allow_data_loss,
                lossless,
                flavor,
                old_primary_executed: &old_primary_executed,
                old_primary_uuid: &old_primary_uuid,
            },
        )
        .map_err(StepError::Blocked)?;
        op.evidence.extend(choice.evidence.iter().cloned());
        let candidate = members
            .iter()
            .find(|m| m.host == choice.candidate)
            .cloned()
            .ok_or_else(|| StepError::Blocked(format!("{} vanished", choice.candidate)))?;
        if let Some(source) = &choice.catch_up_from {
            let src = members
                .iter()
                .find(|m| &m.host == source)
                .ok_or_else(|| StepError::Blocked(format!("{source} vanished")))?;
            let addr = MysqlAddress::parse(&src.mysql_address)
                .map_err(|e| StepError::Blocked(format!("{source}: {e}")))?;
            self.command(
                op,
                &candidate,
                self.repoint_to(&self.cluster_of(op), &addr),
                Duration::from_secs(20),
            )
            .await
            .map_err(|e| StepError::Blocked(format!("catch-up of {}: {e}", candidate.host)))?;
            let wait = Command::WaitGtid(pb::WaitGtid {
                gtid: choice.required.clone(),
                timeout_ms: millis(self.cfg.apply_timeout),
            });
            self.command(
                op,
                &candidate,
                wait,
                self.cfg.apply_timeout + Duration::from_secs(5),
            )
            .await
            .map_err(|e| StepError::Blocked(format!("catch-up of {}: {e}", candidate.host)))?;
            info!(
                operation = op.id,
                candidate = candidate.host,
                source,
                "candidate caught up"
            );
        }
        op.candidate = Some(choice.candidate);
        Ok(())
    }

    /// Replication from `source` with the heartbeat, net timeout and TLS
    /// of `cluster`'s policy.
    pub(super) fn repoint_to(&self, cluster: &str, source: &MysqlAddress) -> Command {
        let tuning = self.fleet.replica_tuning(cluster);
        Command::Repoint(pb::Repoint {
            source_host: source.host.clone(),
            source_port: u32::from(source.port),
            heartbeat_ms: millis(tuning.heartbeat),
            net_timeout_ms: millis(tuning.net_timeout),
            tls: tuning.tls(),
        })
    }

    /// A Promote that carries the cluster's semi-sync policy.
    pub(super) fn promote_command(&self, cluster: &str) -> pb::Promote {
        pb::Promote {
            lossless_semi_sync: self.fleet.cluster_record(cluster).semi_sync
                == Some(dbfleet_proto::model::SemiSyncMode::Lossless),
        }
    }

    async fn promote(&self, op: &mut Operation) -> Result<(), StepError> {
        let candidate = op.candidate.clone().unwrap_or_default();
        let m = self
            .member(op, &candidate)
            .ok_or_else(|| StepError::Blocked(format!("{candidate} vanished")))?;
        let reply = self
            .command(
                op,
                &m,
                Command::Promote(self.promote_command(&self.cluster_of(op))),
                Duration::from_secs(20),
            )
            .await
            .map_err(|e| StepError::Blocked(format!("promotion of {candidate} failed: {e}")))?;
        let state = reply_state(&reply);
        op.promoted_at = state.as_ref().map(|s| s.gtid.executed.clone());
        op.promoted_unix_ms = Some(now_unix_ms());
        info!(
            operation = op.id,
            candidate,
            at = op.promoted_at.as_deref().unwrap_or(""),
            "promoted"
        );
        Ok(())
    }

    async fn repoint(&self, op: &mut Operation) -> Result<(), StepError> {
        let candidate = op.candidate.clone().unwrap_or_default();
        let members = self.fleet.members(&self.cluster_of(op));
        let Some(new) = members.iter().find(|m| m.host == candidate) else {
            return Err(StepError::Blocked(format!("{candidate} vanished")));
        };
        let addr = MysqlAddress::parse(&new.mysql_address)
            .map_err(|e| StepError::Blocked(format!("{candidate}: {e}")))?;
        let cluster = self.cluster_of(op);
        // Replicas with their own writes cannot follow the new primary:
        // they are marked for rebuild instead of repointed.
        let flavor =
            Self::cluster_flavor(&members).map_err(|e| StepError::Blocked(e.to_string()))?;
        let seen = |f: &super::journal::Frozen| -> Positions {
            let executed = Positions::parse(flavor, &f.executed);
            let received = Positions::parse(flavor, &f.received);
            match (executed, received) {
                (Ok(e), Ok(r)) => e.union(&r),
                _ => Positions::empty(flavor),
            }
        };
        let (old_executed, old_uuid) = self.old_primary_seen(op);
        let errant: Vec<(String, Vec<String>)> = op
            .frozen
            .iter()
            .filter(|(host, _)| **host != op.old_primary)
            .filter_map(|(host, f)| {
                let mut elsewhere = Positions::parse(flavor, &old_executed)
                    .unwrap_or_else(|_| Positions::empty(flavor));
                for (other, g) in &op.frozen {
                    if other != host {
                        elsewhere = elsewhere.union(&seen(g));
                    }
                }
                // What cannot be compared is not proven clean: the member
                // is set aside, not repointed.
                let w = super::positions::errant(flavor, f, &elsewhere, &old_uuid)
                    .unwrap_or_else(|e| vec![format!("(its GTIDs cannot be compared: {e})")]);
                (!w.is_empty()).then(|| (host.clone(), w))
            })
            .collect();
        if !errant.is_empty() {
            let events: Vec<Event> = errant
                .iter()
                .map(|(h, w)| {
                    self.event(
                        op,
                        "needs-rebuild",
                        h,
                        format!("{h} has errant transactions {} and cannot follow {candidate}; rebuild it", w.join(",")),
                        vec![],
                    )
                })
                .collect();
            let hosts: Vec<String> = errant.iter().map(|(h, _)| h.clone()).collect();
            self.fleet
                .update_cluster(&cluster, op.epoch.clone(), move |r| {
                    r.control.needs_rebuild.extend(hosts);
                    for e in events {
                        r.control.record(e);
                    }
                    Ok(())
                })
                .await
                .map_err(|e| StepError::Aborted(format!("cannot record the rebuild marks: {e}")))?;
        }
        let rec = self.fleet.cluster_record(&cluster);
        let others = members.iter().filter(|m| {
            m.host != candidate
                && !rec.control.out_of_service(&m.host)
                // A failed primary rejoins when it returns (after its
                // divergence check against its own fork point); a
                // switched-over one follows now.
                && (m.host != op.old_primary || op.kind == OperationKind::Switchover)
                // So does a member an earlier failover left behind.
                && !rec.control.rejoining.contains_key(&m.host)
        });
        let cluster = self.cluster_of(op);
        let running: &Operation = op;
        let calls = others.map(|m| {
            let cmd = self.repoint_to(&cluster, &addr);
            async move {
                let r = self.command(running, m, cmd, Duration::from_secs(20)).await;
                (m.host.clone(), r)
            }
        });
        let replies = join_all(calls).await;
        for (host, r) in replies {
            match r {
                Ok(reply) => info!(operation = op.id, host, detail = reply.detail, "repointed"),
                // The repair loop repoints it when it is back.
                Err(e) => warn!(operation = op.id, host, error = e, "cannot repoint now"),
            }
        }
        self.still_ours(op)
    }

    pub(super) fn payload<'a>(
        &self,
        op: &'a Operation,
        hook: &'a str,
        cluster: &'a str,
        new_primary: &'a str,
        new_address: &'a str,
    ) -> Payload<'a> {
        Payload {
            hook,
            cluster,
            kind: op.kind.as_str(),
            operation_id: &op.id,
            old_primary: &op.old_primary,
            new_primary,
            new_primary_address: new_address,
            epoch_term: op.epoch.term,
            epoch_coordinator: &op.epoch.coordinator,
            reason: &op.reason,
        }
    }

    async fn post_hooks(&self, op: &Operation) {
        if self.cfg.post_hook.is_empty() {
            return;
        }
        let cluster = self.cluster_of(op);
        let candidate = op.candidate.clone().unwrap_or_default();
        let address = self
            .member(op, &candidate)
            .map(|m| m.mysql_address)
            .unwrap_or_default();
        let hook = format!("post-{}", op.kind.as_str());
        let payload = self.payload(op, &hook, &cluster, &candidate, &address);
        if let Err(e) = hooks::run(&self.cfg.post_hook, &payload, self.cfg.hook_timeout).await {
            error!(operation = op.id, error = e, "post hook failed");
            let event = self.event(op, "hook-failed", &candidate, e, vec![]);
            let _ = self.record_event(&cluster, &op.epoch, event).await;
        }
    }

    pub(crate) fn event(
        &self,
        op: &Operation,
        kind: &str,
        host: &str,
        message: String,
        evidence: Vec<String>,
    ) -> Event {
        Event {
            operation_id: op.id.clone(),
            ..Event::new(kind, host, message, &op.epoch, evidence)
        }
    }

    /// Ends the operation: clears the journal, records the outcome.
    async fn finish(
        &self,
        op: Operation,
        result: Result<(), StepError>,
        started: Instant,
    ) -> pb::OperationResult {
        let cluster = self.cluster_of(&op);
        let kind = op.kind.as_str();
        let (outcome, message) = match &result {
            Ok(()) => (
                "completed",
                format!(
                    "{} replaced {} as primary",
                    op.candidate.as_deref().unwrap_or(""),
                    op.old_primary
                ),
            ),
            Err(StepError::Aborted(m)) => ("aborted", m.clone()),
            Err(StepError::Blocked(m)) => ("blocked", m.clone()),
            Err(StepError::RolledBack(m)) => (
                "failed",
                format!("{m}; {} stays the primary", op.old_primary),
            ),
        };
        let write_gap_ms = match (op.fenced_unix_ms, op.promoted_unix_ms) {
            (Some(f), Some(p)) if op.kind == OperationKind::Switchover => (p - f).max(0) as u64,
            _ => 0,
        };
        let mut evidence = op.evidence.clone();
        if let Some(p) = &op.fence_proof {
            evidence.push(format!("fence proof: {p}"));
        }
        let result_pb = pb::OperationResult {
            id: op.id.clone(),
            cluster: cluster.clone(),
            kind: kind.to_string(),
            outcome: outcome.to_string(),
            old_primary: op.old_primary.clone(),
            new_primary: if result.is_ok() {
                op.candidate.clone().unwrap_or_default()
            } else {
                String::new()
            },
            epoch: Some(op.epoch.clone().into()),
            reason: op.reason.clone(),
            fence_proof: op.fence_proof.clone().unwrap_or_default(),
            message: message.clone(),
            duration_ms: millis(started.elapsed()),
            write_gap_ms,
        };
        self.fleet
            .counters()
            .operation_ended(&cluster, kind, outcome);
        match outcome {
            "completed" => info!(
                operation = op.id,
                kind,
                detail = message,
                "operation completed"
            ),
            _ => error!(
                operation = op.id,
                kind,
                outcome,
                detail = message,
                "operation did not complete"
            ),
        }
        if matches!(result, Err(StepError::Aborted(_))) {
            // The journal stays for the next active to resume.
            return result_pb;
        }
        let event = self.event(
            &op,
            &format!("{kind}-{outcome}"),
            op.candidate.as_deref().unwrap_or(&op.old_primary),
            message.clone(),
            evidence,
        );
        let done = result.is_ok();
        let blocked = matches!(result, Err(StepError::Blocked(_)));
        let (candidate, promoted_at, automatic) =
            (op.candidate.clone(), op.promoted_at.clone(), op.automatic);
        let hold = message.clone();
        // Left behind: the failed primary, until the repair loop sees it
        // follow the new one; it forked where the new one was promoted. (A
        // replica the Repoint step could not reach is not marked: it may
        // have obeyed before the answer was lost, and follow the new
        // primary unseen.)
        let left_behind = (op.kind == OperationKind::Failover).then(|| {
            (
                op.old_primary.clone(),
                op.promoted_at.clone().unwrap_or_default(),
            )
        });
        let frozen: Vec<String> = match op.kind {
            OperationKind::Failover => op
                .frozen
                .keys()
                .filter(|h| **h != op.old_primary)
                .cloned()
                .collect(),
            OperationKind::Switchover => Vec::new(),
        };
        let written = self
            .fleet
            .update_cluster(&cluster, op.epoch.clone(), move |rec| {
                rec.control.operation = None;
                rec.control.record(event);
                if done {
                    rec.control.frozen.clear();
                    if let Some(c) = &candidate {
                        rec.control.rejoining.remove(c);
                    }
                    rec.control.rejoining.extend(left_behind);
                    rec.last_primary = candidate;
                    rec.control.promoted_at = promoted_at;
                    if automatic {
                        rec.control.recent_failovers.push(now_unix_ms());
                    }
                }
                if blocked {
                    rec.control.held = Some(hold);
                }
                if !done {
                    rec.control.frozen.extend(frozen);
                }
                Ok(())
            })
            .await;
        if let Err(e) = written {
            error!(operation = op.id, error = %e, "cannot record the operation's end; the next active resumes it");
        }
        self.mark_ended(&cluster);
        result_pb
    }

    /// Starts an operation: journals it (intent) and runs it in its own
    /// task; the receiver gets the outcome.
    pub(crate) async fn start(
        self: &Arc<Self>,
        op: Operation,
    ) -> Result<tokio::sync::watch::Receiver<Option<pb::OperationResult>>, ServiceError> {
        let cluster = self.cluster_of(&op);
        let o = op.clone();
        let intent = self.event(
            &op,
            &format!("{}-started", op.kind.as_str()),
            &op.old_primary,
            op.reason.clone(),
            op.evidence.clone(),
        );
        self.fleet
            .update_cluster(&cluster, op.epoch.clone(), move |rec| {
                if let Some(cur) = &rec.control.operation {
                    return Err(ServiceError::OperationInProgress(format!(
                        "{} {} is in progress (step {:?})",
                        cur.kind.as_str(),
                        cur.id,
                        cur.step
                    )));
                }
                // An operator's failover is the decision a hold waits for.
                if !o.automatic && o.kind == OperationKind::Failover {
                    rec.control.held = None;
                }
                rec.control.operation = Some(o);
                rec.control.record(intent);
                Ok(())
            })
            .await?;
        Ok(self.spawn(op, false))
    }

    /// Runs `op` in a task unless one already runs it here.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        op: Operation,
        resumed: bool,
    ) -> tokio::sync::watch::Receiver<Option<pb::OperationResult>> {
        let cluster = self.cluster_of(&op);
        let mut running = crate::ha::relock(&self.running);
        if let Some(rx) = running.get(&cluster)
            && rx.borrow().is_none()
        {
            return rx.clone();
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        // Every line the operation logs names its cluster and id.
        let span = tracing::error_span!("operation", cluster = %cluster, operation = %op.id, kind = op.kind.as_str());
        running.insert(cluster, rx.clone());
        let me = self.clone();
        tokio::spawn(
            async move {
                let result = me.drive(op, resumed).await;
                tx.send_replace(Some(result));
            }
            .instrument(span),
        );
        rx
    }

    /// A new operation's id: `CLUSTER/KIND-EPOCHTERM-UNIXMS`.
    pub(crate) fn new_id(cluster: &str, kind: OperationKind, epoch: &Epoch) -> String {
        format!(
            "{cluster}/{}-{}-{}",
            kind.as_str(),
            epoch.term,
            now_unix_ms()
        )
    }

    /// What the old primary was last seen to hold and its server_uuid:
    /// frozen by this operation (a switchover), else its last report in
    /// memory, else the one journaled at the barrier (after a restart or
    /// a takeover); empty when none is known.
    fn old_primary_seen(&self, op: &Operation) -> (String, String) {
        seen(
            op.frozen.get(&op.old_primary),
            self.last_server(&op.old_primary),
            op.old_primary_last_seen.as_ref(),
        )
    }

    /// The cluster's one flavor, from its reachable members' reports
    /// (MariaDB when none is reachable: nothing is compared then). A
    /// cluster mixing flavors, or on a MySQL dbfleet does not support, is
    /// refused: GTIDs of one flavor mean nothing to the other, so no
    /// candidate could be chosen safely.
    pub(crate) fn cluster_flavor(members: &[MemberState]) -> Result<Flavor, ServiceError> {
        let servers: Vec<(&str, &dbfleet_proto::model::ServerState)> = members
            .iter()
            .filter_map(|m| Some((m.host.as_str(), m.server()?)))
            .collect();
        if let Some(why) = crate::topology::flavor_problem(&servers) {
            return Err(ServiceError::Refused(why));
        }
        Ok(servers.first().map_or(Flavor::MariaDb, |(_, s)| s.flavor))
    }
}

/// The old primary's executed set and server_uuid from what is known:
/// frozen by the operation, else its report in memory and the one
/// journaled at the barrier together (a coordinator that took over may
/// hold an older report than the journal's; the old primary held both).
fn seen(
    frozen: Option<&super::journal::Frozen>,
    in_memory: Option<dbfleet_proto::model::ServerState>,
    journaled: Option<&super::journal::LastSeen>,
) -> (String, String) {
    use dbfleet_common::gtid_state::GtidState;
    if let Some(f) = frozen {
        return (f.executed.clone(), f.server_uuid.clone());
    }
    let memory = in_memory.map(|s| (s.gtid.executed, s.server_uuid));
    let journal = journaled.map(|l| (l.executed.clone(), l.server_uuid.clone()));
    match (memory, journal) {
        (Some((a, uuid)), Some((b, other))) => {
            let both = GtidState::parse(&a)
                .and_then(|x| Ok(x.merge(&GtidState::parse(&b)?)))
                .map(|m| m.to_string())
                .unwrap_or(a);
            (both, if uuid.is_empty() { other } else { uuid })
        }
        (Some(m), None) | (None, Some(m)) => m,
        (None, None) => Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::journal::{Frozen, LastSeen};
    use super::*;

    fn server(executed: &str) -> dbfleet_proto::model::ServerState {
        dbfleet_proto::model::ServerState {
            tls: None,
            version: "9.7.4".into(),
            flavor: Flavor::MySql,
            server_id: 1,
            server_uuid: "now".into(),
            read_only: false,
            super_read_only: false,
            gtid: dbfleet_proto::model::GtidState {
                executed: executed.into(),
                ..Default::default()
            },
            replication: None,
            semi_sync: Default::default(),
            binlog: Default::default(),
            replicas_connected: 0,
            replica_server_ids: vec![],
        }
    }

    #[test]
    fn what_the_old_primary_held_survives_a_coordinator_restart_through_the_journal() {
        let frozen = Frozen {
            executed: "frozen".into(),
            received: String::new(),
            binlog_pos: String::new(),
            slave_pos: String::new(),
            server_id: 1,
            server_uuid: "f".into(),
            applier_error: String::new(),
        };
        let journaled = LastSeen {
            executed: "journaled".into(),
            server_uuid: "j".into(),
        };
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            seen(Some(&frozen), Some(server("memory")), Some(&journaled)),
            pair("frozen", "f")
        );
        // a newer journal and an older memory: what both say
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let newer = LastSeen {
            executed: format!("{u}:1-9"),
            server_uuid: u.into(),
        };
        assert_eq!(
            seen(None, Some(server(&format!("{u}:1-5"))), Some(&newer)),
            pair(&format!("{u}:1-9"), "now")
        );
        // restarted: no report of the dead primary in memory
        assert_eq!(seen(None, None, Some(&journaled)), pair("journaled", "j"));
        assert_eq!(seen(None, None, None), pair("", ""));
    }
}
