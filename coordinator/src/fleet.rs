//! The coordinator's picture of the fleet: registered agents (local,
//! durable), desired state (cluster records and the voter list, changed
//! only through op-log ops), and each agent's latest report (observed
//! state, memory only, rebuilt from reports after a restart or takeover).
//!
//! Every change is written to the store before the in-memory state changes
//! and before anything is acknowledged, so a coordinator that dies right
//! after an ack still has what it acked. Desired state is changed only by
//! the active ([`Fleet::commit_operator`], [`Fleet::remember_primaries`])
//! or by replication from it ([`Fleet::apply_replicated`],
//! [`Fleet::install_snapshot`]).

use dbfleet_common::clock::unix_ms as now_unix_ms;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dbfleet_proto::model::{
    ClusterPolicyChange, Flavor, MysqlObservation, Name, ProtocolError, Report,
};
use dbfleet_proto::pb;
use tracing::info;

use dbfleet_lease::Epoch;

use crate::error::ServiceError;
use crate::ha::Ha;
use crate::store::{
    AgentRecord, ClusterRecord, DesiredOp, DesiredSnapshot, DesiredWriter, OpEntry, Store,
    StoreError, VoterList, apply_op, blocking,
};
use crate::topology::{self, ClusterInput, MemberInput};

/// Thresholds the fleet is judged by.
#[derive(Debug, Clone, Copy)]
pub struct FleetRules {
    /// Silence longer than this marks an agent as not reporting.
    pub agent_timeout: Duration,
    /// Lag threshold for clusters without a policy of their own.
    pub default_max_lag_seconds: u64,
    /// Replication heartbeat and net timeout for clusters without their
    /// own (the coordinator's `[failover]` section).
    pub default_tuning: ReplicaTuning,
}

/// How quickly a replica notices it lost its primary: the heartbeat period
/// its primary sends at, and the silence after which it reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaTuning {
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Net timeout.
    pub net_timeout: Duration,
}

#[derive(Debug)]
struct AgentEntry {
    record: AgentRecord,
    last: Option<(Instant, Report)>,
    /// Replication configured at the last report that reached mysqld.
    last_replicating: Option<bool>,
    streams: usize,
}

#[derive(Debug, Default)]
struct FleetState {
    agents: BTreeMap<String, AgentEntry>,
    clusters: BTreeMap<String, ClusterRecord>,
}

/// Shared by the report stream handlers, the admin API and the observer.
#[derive(Debug)]
pub struct Fleet {
    store: Arc<dyn Store>,
    ha: Arc<Ha>,
    rules: FleetRules,
    state: Mutex<FleetState>,
    /// Serializes changes of desired state (see [`Fleet::commit`]).
    writes: tokio::sync::Mutex<()>,
    /// What the metrics endpoint counts.
    counters: crate::metrics::Counters,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// One member and its latest report, for failover.
#[derive(Debug, Clone)]
pub struct MemberState {
    /// Host.
    pub host: String,
    /// Registered mysql address.
    pub mysql_address: String,
    /// Where its agent takes commands.
    pub agent_address: Option<String>,
    /// The latest report, however old.
    pub report: Option<Report>,
    /// When it arrived.
    pub received_at: Option<Instant>,
    /// Reported within the agent timeout.
    pub reporting: bool,
}

impl MemberState {
    /// Whether its agent's latest report names a configuration problem of
    /// `kind`.
    pub fn has_config_problem(&self, kind: &dbfleet_proto::model::ConfigProblemKind) -> bool {
        self.report
            .as_ref()
            .is_some_and(|r| r.agent.config_problems.iter().any(|p| p.kind == *kind))
    }

    /// Fresh server state, when the agent reports and reaches mysqld.
    pub fn server(&self) -> Option<&dbfleet_proto::model::ServerState> {
        match (&self.report, self.reporting) {
            (Some(r), true) => match &r.mysql {
                MysqlObservation::Reachable(s) => Some(s),
                MysqlObservation::Unreachable { .. } => None,
            },
            _ => None,
        }
    }

    /// Why the agent cannot reach mysqld (fresh reports only).
    pub fn mysql_error(&self) -> Option<&str> {
        match (&self.report, self.reporting) {
            (Some(r), true) => match &r.mysql {
                MysqlObservation::Unreachable { error } => Some(error),
                MysqlObservation::Reachable(_) => None,
            },
            _ => None,
        }
    }
}

/// Decrements an agent's open-stream count when its stream ends.
#[derive(Debug)]
pub struct StreamGuard {
    fleet: Arc<Fleet>,
    host: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(e) = self.fleet.lock().agents.get_mut(&self.host) {
            e.streams = e.streams.saturating_sub(1);
        }
    }
}

/// Applies ops to the in-memory copy, exactly as the store applies them.
struct MemoryWriter<'a> {
    state: &'a mut FleetState,
    voters: &'a mut Option<VoterList>,
}

impl DesiredWriter for MemoryWriter<'_> {
    type Error = std::convert::Infallible;

    fn get_cluster(&mut self, name: &str) -> Result<Option<ClusterRecord>, Self::Error> {
        Ok(self.state.clusters.get(name).cloned())
    }
    fn put_cluster(&mut self, c: ClusterRecord) -> Result<(), Self::Error> {
        self.state.clusters.insert(c.name.clone(), c);
        Ok(())
    }
    fn forget_agent(&mut self, host: &str) -> Result<(), Self::Error> {
        self.state.agents.remove(host);
        Ok(())
    }
    fn put_voters(&mut self, v: &VoterList) -> Result<(), Self::Error> {
        *self.voters = Some(v.clone());
        Ok(())
    }
}

impl Fleet {
    /// Loads the registry and desired state from `store`.
    pub fn load(
        store: Arc<dyn Store>,
        ha: Arc<Ha>,
        rules: FleetRules,
    ) -> Result<Fleet, StoreError> {
        let state = Self::read_state(store.as_ref())?;
        Ok(Fleet {
            store,
            ha,
            rules,
            state: Mutex::new(state),
            writes: tokio::sync::Mutex::new(()),
            counters: crate::metrics::Counters::default(),
        })
    }

    fn read_state(store: &dyn Store) -> Result<FleetState, StoreError> {
        let stored = store.load()?;
        let mut state = FleetState::default();
        for record in stored.agents {
            state.agents.insert(
                record.host.clone(),
                AgentEntry {
                    record,
                    last: None,
                    last_replicating: None,
                    streams: 0,
                },
            );
        }
        for c in stored.clusters {
            state.clusters.insert(c.name.clone(), c);
        }
        Ok(state)
    }

    /// Applies a durable op to memory (voter lists go to the lease).
    fn apply_in_memory(&self, op: &DesiredOp) {
        let mut voters = None;
        {
            let mut st = self.lock();
            let Ok(()) = apply_op(
                op,
                &mut MemoryWriter {
                    state: &mut st,
                    voters: &mut voters,
                },
            );
        }
        if let Some(v) = voters {
            info!(version = v.set.version, voters = ?v.set.members(), "voter list changed");
            self.ha.set_voters(v);
        }
        if let DesiredOp::ForgetAgent { host } = op {
            info!(host, "agent forgotten");
        }
    }

    /// Commits `op` under `epoch` while holding the write lock.
    async fn commit_locked(&self, epoch: Epoch, op: DesiredOp) -> Result<u64, ServiceError> {
        let e = epoch.clone();
        let entry = blocking(&self.store, move |s| s.commit(&e, &op)).await?;
        self.apply_in_memory(&entry.op);
        self.ha.applied_to(entry.seq);
        // A commit that outlived the lease (a disk stall, a pause) is
        // durable here but may be superseded by the next active: do not
        // report it as done.
        if self.ha.write_epoch().ok().as_ref() != Some(&epoch) {
            return Err(ServiceError::OutcomeUnknown(
                "the lease lapsed while the change was being committed".into(),
            ));
        }
        Ok(entry.seq)
    }

    /// Commits an operator's change: only on the active with complete
    /// desired state; durable before it returns, and acknowledged by the
    /// standby too while one is connected.
    pub async fn commit_operator(self: &Arc<Self>, op: DesiredOp) -> Result<u64, ServiceError> {
        let seq = self
            .commit(move |f| async move {
                let epoch = f.ha.write_epoch()?;
                f.commit_locked(epoch, op).await
            })
            .await?;
        self.ha.wait_standby(seq).await?;
        Ok(seq)
    }

    /// Applies the active's next op (standby, or an active-degraded
    /// coordinator catching up).
    pub async fn apply_replicated(self: &Arc<Self>, entry: OpEntry) -> Result<(), ServiceError> {
        self.commit(move |f| async move {
            let e = entry.clone();
            blocking(&f.store, move |s| s.apply(&e)).await?;
            f.apply_in_memory(&entry.op);
            f.ha.applied_to(entry.seq);
            Ok(())
        })
        .await
    }

    /// All desired state at one op-log position (for a standby too far
    /// behind or diverged).
    pub async fn snapshot(self: &Arc<Self>) -> Result<DesiredSnapshot, ServiceError> {
        self.commit(|f| async move { blocking(&f.store, |s| s.snapshot()).await })
            .await
    }

    /// Replaces desired state with the active's snapshot; our ops after
    /// `keep_through` go to lost+found. Returns how many were set aside.
    pub async fn install_snapshot(
        self: &Arc<Self>,
        snap: DesiredSnapshot,
        keep_through: u64,
    ) -> Result<u64, ServiceError> {
        self.commit(move |f| async move {
            let sn = snap.clone();
            let set_aside =
                blocking(&f.store, move |s| s.install_snapshot(&sn, keep_through)).await?;
            let fresh = Self::read_state(f.store.as_ref())?;
            {
                let mut st = f.lock();
                st.clusters = fresh.clusters;
                for (host, a) in fresh.agents {
                    st.agents.entry(host).or_insert(a);
                }
            }
            if let Some(v) = snap.voters {
                f.ha.set_voters(v);
            }
            f.ha.applied_to(snap.at.seq);
            Ok(set_aside)
        })
        .await
    }

    fn lock(&self) -> MutexGuard<'_, FleetState> {
        // A panic while holding the lock leaves plain data behind, still
        // consistent field by field; keep serving rather than cascade.
        crate::ha::relock(&self.state)
    }

    /// Marks a report stream from `host` as open until the guard drops.
    /// Called after the stream's first accepted report, so the agent is
    /// registered by then.
    pub fn stream_opened(self: &Arc<Self>, host: &str) -> StreamGuard {
        if let Some(e) = self.lock().agents.get_mut(host) {
            e.streams += 1;
        }
        StreamGuard {
            fleet: self.clone(),
            host: host.to_string(),
        }
    }

    /// Runs a change of desired state with every other such change held
    /// off (each reads the latest record, so none overwrites another), and
    /// to completion even when the caller goes away, so sled and memory
    /// never disagree about a write that reached the disk.
    async fn commit<T, F, Fut>(self: &Arc<Self>, change: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Fleet>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, ServiceError>> + Send + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let _serial = me.writes.lock().await;
            change(me.clone()).await
        })
        .await
        .map_err(|_| ServiceError::ShuttingDown)?
    }

    /// The registration a report calls for, if any (new or moved agent).
    fn registration(&self, report: &Report) -> Option<AgentRecord> {
        let host = report.host.as_str();
        let cluster = report.cluster.as_str();
        let address = report.mysql_address.to_string();
        let st = self.lock();
        match st.agents.get(host) {
            Some(e) if e.record.cluster == cluster && e.record.mysql_address == address => None,
            Some(e) => Some(AgentRecord {
                cluster: cluster.to_string(),
                mysql_address: address,
                ..e.record.clone()
            }),
            None => Some(AgentRecord {
                host: host.to_string(),
                cluster: cluster.to_string(),
                registered_at_unix_ms: now_unix_ms(),
                mysql_address: address,
            }),
        }
    }

    /// Accepts one validated report from the agent whose certificate name
    /// is `identity`. Registers the agent (durably) first if it is new or
    /// moved, then records the observation.
    pub async fn accept_report(
        self: &Arc<Self>,
        identity: &str,
        report: Report,
    ) -> Result<(), ServiceError> {
        if report.host.as_str() != identity {
            return Err(ServiceError::ForeignHost {
                identity: identity.to_string(),
                claimed: report.host.to_string(),
            });
        }
        if self.registration(&report).is_some() {
            let r = report.clone();
            self.commit(move |f| async move {
                let Some(a) = f.registration(&r) else {
                    return Ok(());
                };
                let stored = a.clone();
                blocking(&f.store, move |s| s.put_agent(&stored)).await?;
                info!(
                    host = a.host,
                    cluster = a.cluster,
                    mysql_address = a.mysql_address,
                    "agent registered"
                );
                let mut st = f.lock();
                let entry = st
                    .agents
                    .entry(a.host.clone())
                    .or_insert_with(|| AgentEntry {
                        record: a.clone(),
                        last: None,
                        last_replicating: None,
                        streams: 0,
                    });
                entry.record = a;
                Ok(())
            })
            .await?;
        }
        let mut st = self.lock();
        // Forgotten between registration and here: the next report registers it again.
        let Some(entry) = st.agents.get_mut(report.host.as_str()) else {
            return Ok(());
        };
        if let MysqlObservation::Reachable(s) = &report.mysql {
            entry.last_replicating = Some(s.replication.is_some());
        }
        entry.last = Some((Instant::now(), report));
        Ok(())
    }

    /// Views of every cluster (or one), judged at this instant.
    pub fn cluster_views(&self, only: Option<&Name>) -> Vec<pb::ClusterView> {
        let st = self.lock();
        let now = Instant::now();
        let mut names: Vec<&str> = st.clusters.keys().map(String::as_str).collect();
        for e in st.agents.values() {
            if !names.contains(&e.record.cluster.as_str()) {
                names.push(&e.record.cluster);
            }
        }
        names.sort_unstable();
        names
            .into_iter()
            .filter(|n| only.is_none_or(|o| o.as_str() == *n))
            // A cluster whose agents were all forgotten (or that only ever
            // had a policy) has nothing to show or to judge.
            .filter(|n| st.agents.values().any(|e| e.record.cluster == *n))
            .map(|name| {
                let rec = st.clusters.get(name);
                let members = st
                    .agents
                    .values()
                    .filter(|e| e.record.cluster == name)
                    .map(|e| MemberInput {
                        host: &e.record.host,
                        mysql_address: &e.record.mysql_address,
                        last: e.last.as_ref().map(|(_, r)| r),
                        age: e
                            .last
                            .as_ref()
                            .map(|(at, _)| now.saturating_duration_since(*at)),
                        last_replicating: e.last_replicating,
                    })
                    .collect();
                topology::derive(&ClusterInput {
                    name,
                    members,
                    max_lag_seconds: rec
                        .and_then(|c| c.max_lag_seconds)
                        .unwrap_or(self.rules.default_max_lag_seconds),
                    tuning: self.tuning_of(rec),
                    semi_sync: rec.and_then(|c| c.semi_sync),
                    agent_timeout: self.rules.agent_timeout,
                    last_primary: rec.and_then(|c| c.last_primary.as_deref()),
                })
            })
            .collect()
    }

    /// Every registered agent.
    pub fn agent_views(&self) -> Vec<pb::AgentView> {
        let st = self.lock();
        let now = Instant::now();
        st.agents
            .values()
            .map(|e| pb::AgentView {
                host: e.record.host.clone(),
                cluster: e.record.cluster.clone(),
                registered_at_unix_ms: e.record.registered_at_unix_ms,
                connected: e.streams > 0,
                last_report_age_ms: e
                    .last
                    .as_ref()
                    .map(|(at, _)| now.saturating_duration_since(*at).as_millis() as u64),
                agent_version: e
                    .last
                    .as_ref()
                    .map(|(_, r)| r.agent_version.clone())
                    .unwrap_or_default(),
                agent_instance: e
                    .last
                    .as_ref()
                    .map(|(_, r)| r.agent_instance.clone())
                    .unwrap_or_default(),
                last_sequence: e.last.as_ref().map_or(0, |(_, r)| r.sequence),
            })
            .collect()
    }

    /// Sets a cluster policy (an operator write on the active); returns
    /// the policy in force after it.
    pub async fn set_policy(
        self: &Arc<Self>,
        change: ClusterPolicyChange,
    ) -> Result<pb::ClusterPolicy, ServiceError> {
        let cluster = change.cluster.to_string();
        if change.semi_sync.is_some()
            && let Some(m) = self.members(&cluster).into_iter().find(|m| {
                m.report.as_ref().is_some_and(|r| {
                    matches!(&r.mysql, MysqlObservation::Reachable(s) if s.flavor == Flavor::MySql)
                })
            })
        {
            return Err(ServiceError::Refused(format!(
                "{} runs MySQL: dbfleet does not set semi-sync on MySQL yet; configure it in my.cnf",
                m.host
            )));
        }
        let before = self.cluster_record(&cluster);
        let tuning = self.tuning_of(Some(&ClusterRecord {
            replica_heartbeat_ms: change.replica_heartbeat_ms.or(before.replica_heartbeat_ms),
            replica_net_timeout_ms: change
                .replica_net_timeout_ms
                .or(before.replica_net_timeout_ms),
            ..before
        }));
        // A replica that times out before its next heartbeat reconnects
        // all the time and confirms a loss that did not happen. Checked
        // when the tuning changes only: a lag change is not refused for
        // values set earlier.
        let tunes =
            change.replica_heartbeat_ms.is_some() || change.replica_net_timeout_ms.is_some();
        if tunes && tuning.heartbeat >= tuning.net_timeout {
            return Err(ServiceError::Protocol(ProtocolError::Invalid {
                field: "replica_heartbeat_ms",
                reason: format!(
                    "the heartbeat ({} ms) must be shorter than the replica net timeout ({} ms); set --replica-heartbeat lower or --replica-net-timeout higher",
                    tuning.heartbeat.as_millis(),
                    tuning.net_timeout.as_millis()
                ),
            }));
        }
        self.commit_operator(DesiredOp::SetClusterPolicy {
            cluster: cluster.clone(),
            max_lag_seconds: change.max_lag_seconds,
            replica_heartbeat_ms: change.replica_heartbeat_ms,
            replica_net_timeout_ms: change.replica_net_timeout_ms,
            semi_sync: change.semi_sync,
        })
        .await?;
        let rec = self.cluster_record(&cluster);
        let policy = pb::ClusterPolicy {
            cluster: cluster.clone(),
            max_lag_seconds: rec
                .max_lag_seconds
                .unwrap_or(self.rules.default_max_lag_seconds),
            replica_heartbeat_ms: tuning.heartbeat.as_millis() as u64,
            replica_net_timeout_ms: tuning.net_timeout.as_millis() as u64,
            semi_sync: rec
                .semi_sync
                .map(|m| m.as_str().to_string())
                .unwrap_or_default(),
        };
        info!(
            cluster,
            max_lag_seconds = policy.max_lag_seconds,
            replica_heartbeat_ms = policy.replica_heartbeat_ms,
            replica_net_timeout_ms = policy.replica_net_timeout_ms,
            semi_sync = policy.semi_sync,
            "cluster policy changed"
        );
        Ok(policy)
    }

    /// The replication tuning in force for a cluster of record `rec`.
    fn tuning_of(&self, rec: Option<&ClusterRecord>) -> ReplicaTuning {
        let d = self.rules.default_tuning;
        ReplicaTuning {
            heartbeat: rec
                .and_then(|r| r.replica_heartbeat_ms)
                .map_or(d.heartbeat, Duration::from_millis),
            net_timeout: rec
                .and_then(|r| r.replica_net_timeout_ms)
                .map_or(d.net_timeout, Duration::from_millis),
        }
    }

    /// The heartbeat and net timeout the replicas of `cluster` get.
    pub fn replica_tuning(&self, cluster: &str) -> ReplicaTuning {
        self.tuning_of(Some(&self.cluster_record(cluster)))
    }

    /// Removes an agent that no longer reports (an operator write).
    pub async fn forget_agent(self: &Arc<Self>, host: &Name) -> Result<(), ServiceError> {
        let host = host.to_string();
        let seq = self
            .commit(move |f| async move {
                let epoch = f.ha.write_epoch()?;
                {
                    let st = f.lock();
                    let e = st
                        .agents
                        .get(&host)
                        .ok_or_else(|| ServiceError::UnknownAgent(host.clone()))?;
                    let fresh = e
                        .last
                        .as_ref()
                        .is_some_and(|(at, _)| at.elapsed() <= f.rules.agent_timeout);
                    if e.streams > 0 || fresh {
                        return Err(ServiceError::AgentStillReporting(host));
                    }
                    // A silent primary may still be writable behind a cut:
                    // forgetting it would drop it from the failover's view.
                    if let Some(rec) = st.clusters.get(&e.record.cluster) {
                        if rec.last_primary.as_deref() == Some(host.as_str()) {
                            return Err(ServiceError::Refused(format!(
                                "{host} is the primary of {}; fail over or switch over first",
                                rec.name
                            )));
                        }
                        if let Some(op) = &rec.control.operation {
                            return Err(ServiceError::Refused(format!(
                                "{} {} is under way in {}; wait for it to end",
                                op.kind.as_str(),
                                op.id,
                                rec.name
                            )));
                        }
                    }
                }
                f.commit_locked(epoch, DesiredOp::ForgetAgent { host })
                    .await
            })
            .await?;
        self.ha.wait_standby(seq).await?;
        Ok(())
    }

    /// A cluster's desired record (defaults when it has none yet).
    pub fn cluster_record(&self, name: &str) -> ClusterRecord {
        self.lock()
            .clusters
            .get(name)
            .cloned()
            .unwrap_or_else(|| ClusterRecord::empty(name))
    }

    /// Names of every cluster with registered agents.
    pub fn cluster_names(&self) -> Vec<String> {
        let st = self.lock();
        let mut names: Vec<String> = st
            .agents
            .values()
            .map(|e| e.record.cluster.clone())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The members of `cluster` with their latest reports.
    pub fn members(&self, cluster: &str) -> Vec<MemberState> {
        let st = self.lock();
        let now = Instant::now();
        let voters = self.ha.voters().addresses;
        st.agents
            .values()
            .filter(|e| e.record.cluster == cluster)
            .map(|e| {
                let report = e.last.as_ref().map(|(_, r)| r.clone());
                let agent_address = report
                    .as_ref()
                    .map(|r| r.agent.address.clone())
                    .filter(|a| !a.is_empty())
                    .or_else(|| voters.get(&e.record.host).cloned());
                MemberState {
                    host: e.record.host.clone(),
                    mysql_address: e.record.mysql_address.clone(),
                    agent_address,
                    received_at: e.last.as_ref().map(|(at, _)| *at),
                    reporting: e.last.as_ref().is_some_and(|(at, _)| {
                        now.saturating_duration_since(*at) <= self.rules.agent_timeout
                    }),
                    report,
                }
            })
            .collect()
    }

    /// Changes a cluster's record under the desired-state write lock, from
    /// the latest record, committed under `epoch` (which must still be
    /// ours) and acknowledged by the standby when it is up. `change`
    /// returns `Ok(None)` to write nothing.
    pub async fn update_cluster<T: Send + 'static>(
        self: &Arc<Self>,
        name: &str,
        epoch: Epoch,
        change: impl FnOnce(&mut ClusterRecord) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let name = name.to_string();
        let (seq, out) = self
            .commit(move |f| async move {
                let mut rec = f.cluster_record(&name);
                let before = rec.clone();
                let out = change(&mut rec)?;
                if rec == before {
                    return Ok((None, out));
                }
                let seq = f
                    .commit_locked(epoch, DesiredOp::PutCluster(Box::new(rec)))
                    .await?;
                Ok((Some(seq), out))
            })
            .await?;
        if let Some(seq) = seq {
            self.ha.wait_standby(seq).await?;
        }
        Ok(out)
    }

    /// What this coordinator counts for its metrics endpoint.
    pub fn counters(&self) -> &crate::metrics::Counters {
        &self.counters
    }

    /// The lease and op-log state.
    pub fn ha(&self) -> &Arc<Ha> {
        &self.ha
    }

    /// Thresholds.
    pub fn rules(&self) -> FleetRules {
        self.rules
    }

    /// Cluster records whose remembered primary differs from the one
    /// derived now.
    fn primary_changes(&self) -> Vec<ClusterRecord> {
        let views = self.cluster_views(None);
        let st = self.lock();
        views
            .into_iter()
            .filter(|v| !v.primary.is_empty())
            .filter_map(|v| {
                let rec = st
                    .clusters
                    .get(&v.name)
                    .cloned()
                    .unwrap_or_else(|| ClusterRecord::empty(&v.name));
                (rec.last_primary.as_deref() != Some(v.primary.as_str())).then(|| ClusterRecord {
                    last_primary: Some(v.primary.clone()),
                    ..rec
                })
            })
            .collect()
    }

    /// Remembers each cluster's currently derived primary, durably and
    /// replicated, so a restart or takeover still knows which member was
    /// the primary while it is down. Only the active with complete desired
    /// state does this (it is an automatic change). Runs every second:
    /// when nothing changed it takes no write lock.
    pub async fn remember_primaries(self: &Arc<Self>) -> Result<(), ServiceError> {
        if self.ha.automatic_epoch().is_none() || self.primary_changes().is_empty() {
            return Ok(());
        }
        self.commit(|f| async move {
            // Again under the write lock, against the latest records.
            for rec in f.primary_changes() {
                let Some(epoch) = f.ha.automatic_epoch() else {
                    return Ok(());
                };
                let primary = rec.last_primary.clone().unwrap_or_default();
                info!(cluster = rec.name, primary, "primary observed");
                f.commit_locked(
                    epoch,
                    DesiredOp::RememberPrimary {
                        cluster: rec.name,
                        primary,
                    },
                )
                .await?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::KnownActive;
    use crate::store::SledStore;
    use dbfleet_common::clock::boottime;
    use dbfleet_lease::{FenceRecord, Holder, HolderAction, HolderId, Timing, Voter, VoterSet};
    use dbfleet_proto::model::{MysqlAddress, MysqlObservation};

    /// HA state of a coordinator that holds the lease of a one-voter list.
    fn active_ha() -> Arc<Ha> {
        let set = VoterSet::new([("v1".to_string(), 1)].into_iter().collect()).unwrap();
        let mut h = Holder::new(
            HolderId {
                coordinator: "c1".into(),
                incarnation: 1,
            },
            Timing::standard(),
            set.clone(),
            Epoch::zero(),
            Duration::ZERO,
        );
        let mut v = Voter::boot(FenceRecord::default(), Duration::ZERO);
        let now = boottime();
        for a in h.tick(now) {
            if let HolderAction::Broadcast { round, request, .. } = a {
                let reply = v.handle(request, now).reply;
                h.on_reply("v1", round, reply, now);
            }
        }
        assert!(h.lease_valid(now));
        let voters = VoterList {
            set,
            addresses: [("v1".to_string(), "127.0.0.1:1".to_string())]
                .into_iter()
                .collect(),
        };
        let peer = KnownActive {
            id: "c2".into(),
            address: "127.0.0.1:2".into(),
        };
        let ha = Arc::new(Ha::new(
            h,
            "127.0.0.1:3".into(),
            peer,
            voters,
            0,
            0,
            Duration::from_secs(1),
        ));
        // A standby that has acknowledged everything: these tests are about
        // the fleet, not replication.
        ha.standby().send_modify(|l| l.acked = u64::MAX);
        ha
    }

    fn report(host: &str, cluster: &str) -> Report {
        Report {
            host: Name::parse(host).unwrap(),
            cluster: Name::parse(cluster).unwrap(),
            agent_instance: "i".into(),
            sequence: 1,
            observed_at_unix_ms: 0,
            agent_version: "t".into(),
            mysql_address: MysqlAddress::parse("127.0.0.1:3306").unwrap(),
            mysql: MysqlObservation::Unreachable {
                error: "down".into(),
            },
            agent: Default::default(),
        }
    }

    fn fleet(store: Arc<dyn Store>) -> Arc<Fleet> {
        Arc::new(
            Fleet::load(
                store,
                active_ha(),
                FleetRules {
                    agent_timeout: Duration::from_secs(5),
                    default_max_lag_seconds: 60,
                    default_tuning: ReplicaTuning {
                        heartbeat: Duration::from_secs(1),
                        net_timeout: Duration::from_secs(4),
                    },
                },
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn registration_is_durable_and_identity_is_enforced() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let f = fleet(store.clone());
        let e = f
            .accept_report("db1", report("db2", "main"))
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::ForeignHost { .. }));
        f.accept_report("db1", report("db1", "main")).await.unwrap();
        let stored = store.load().unwrap();
        assert_eq!(stored.agents.len(), 1);
        assert_eq!(
            stored.applied.seq, 0,
            "registrations are local, not desired state"
        );
        // a reload knows the agent, without a report yet
        let f2 = fleet(store.clone());
        let v = f2.cluster_views(None);
        assert_eq!(v[0].members[0].host, "db1");
        assert!(!v[0].members[0].reporting);
        // moving to another cluster is re-registered
        f.accept_report("db1", report("db1", "other"))
            .await
            .unwrap();
        assert_eq!(store.load().unwrap().agents[0].cluster, "other");
    }

    #[tokio::test]
    async fn the_observed_primary_survives_a_restart_while_its_server_is_down() {
        use dbfleet_proto::model::{Binlog, Flavor, GtidState, SemiSync, ServerState};
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let f = fleet(store.clone());
        let mut r = report("db1", "main");
        r.mysql = MysqlObservation::Reachable(Box::new(ServerState {
            version: "10.11".into(),
            flavor: Flavor::MariaDb,
            server_id: 1,
            server_uuid: String::new(),
            read_only: false,
            super_read_only: false,
            gtid: GtidState::default(),
            replication: None,
            semi_sync: SemiSync::default(),
            binlog: Binlog::default(),
            replicas_connected: 0,
            replica_server_ids: vec![],
        }));
        f.accept_report("db1", r).await.unwrap();
        f.remember_primaries().await.unwrap();
        assert_eq!(
            store.load().unwrap().applied.seq,
            1,
            "remembered through the op-log"
        );
        let restarted = fleet(store);
        assert_eq!(restarted.cluster_views(None)[0].primary, "db1");
    }

    #[tokio::test]
    async fn forget_refuses_a_reporting_agent() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let f = fleet(store.clone());
        f.accept_report("db1", report("db1", "main")).await.unwrap();
        let name = Name::parse("db1").unwrap();
        assert!(matches!(
            f.forget_agent(&name).await,
            Err(ServiceError::AgentStillReporting(_))
        ));
        let f2 = fleet(store.clone());
        f2.forget_agent(&name).await.unwrap();
        assert!(store.load().unwrap().agents.is_empty());
        assert!(matches!(
            f2.forget_agent(&name).await,
            Err(ServiceError::UnknownAgent(_))
        ));
    }
}
