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
    AdmitAgent, ClusterPolicyChange, Flavor, MysqlObservation, Name, ProtocolError, Report,
};
use dbfleet_proto::mysql_tls::MysqlTlsMode;
use dbfleet_proto::pb;
use tracing::info;

use dbfleet_lease::Epoch;

use crate::error::ServiceError;
use crate::ha::Ha;
use crate::membership::{Admission, Voice};
use crate::store::{
    AUTOMATIC_ADMISSION, AgentRecord, ClusterRecord, DesiredOp, DesiredSnapshot, DesiredWriter,
    Membership, OpEntry, Standing, Store, StoreError, VoterList, apply_op, blocking,
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
    /// How agents never seen before become members.
    pub admission: Admission,
}

/// Why TLS to MySQL cannot be required of a member yet: its server has no
/// CA to check a source's certificate with, so every repoint would be
/// refused (and a failover would leave its replicas stopped). A member
/// whose mysqld cannot be observed now does not hold the change back.
fn cannot_require_tls(host: &str, report: Option<&Report>) -> Option<String> {
    let MysqlObservation::Reachable(s) = &report?.mysql else {
        return None;
    };
    match &s.tls {
        None => Some(format!(
            "the agent on {host} does not report TLS to MySQL: upgrade it before requiring TLS; nothing changed"
        )),
        Some(t) if t.ca.is_empty() => Some(format!(
            "mysqld on {host} has no CA (ssl_ca), so as a replica it could not check its source's certificate: \
             give every member a certificate (`dbfleet cert issue --role mysql`) with ssl_ca, ssl_cert and ssl_key \
             first, then require TLS; nothing changed"
        )),
        Some(_) => None,
    }
}

/// How replicas are set up: how quickly a replica notices it lost its
/// primary (the heartbeat period its primary sends at, and the silence
/// after which it reconnects), and whether its link must be verified TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaTuning {
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Net timeout.
    pub net_timeout: Duration,
    /// TLS to MySQL.
    pub mysql_tls: MysqlTlsMode,
}

impl ReplicaTuning {
    /// Replicas connect to their source over verified TLS.
    pub fn tls(&self) -> bool {
        self.mysql_tls == MysqlTlsMode::Required
    }
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
    members: BTreeMap<String, Membership>,
}

/// An agent counted in a cluster, and whether its reports are: those of
/// an agent admitted at another cluster or address than it reports are
/// not (it counts as silent where it was admitted).
struct Counted<'a> {
    entry: &'a AgentEntry,
    mysql_address: &'a str,
    heard: bool,
}

impl FleetState {
    fn voice(&self, admission: Admission, e: &AgentEntry) -> Voice {
        Voice::of(
            admission,
            self.members.get(&e.record.host),
            &e.record.cluster,
            &e.record.mysql_address,
        )
    }

    /// The agents counted in `cluster`: members reporting for it, and
    /// agents admitted to it that report something else.
    fn counted<'a>(&'a self, admission: Admission, cluster: &str) -> Vec<Counted<'a>> {
        self.agents
            .values()
            .filter_map(|e| match self.voice(admission, e) {
                Voice::Member if e.record.cluster == cluster => Some(Counted {
                    entry: e,
                    mysql_address: &e.record.mysql_address,
                    heard: true,
                }),
                Voice::AdmittedElsewhere { cluster: c, .. } if c == cluster => {
                    let Some(Standing::Admitted { mysql_address, .. }) =
                        self.members.get(&e.record.host).map(|m| &m.standing)
                    else {
                        return None;
                    };
                    Some(Counted {
                        entry: e,
                        mysql_address,
                        heard: false,
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// The cluster in which `host` is counted, if any.
    fn counted_cluster(&self, admission: Admission, host: &str) -> Option<String> {
        let e = self.agents.get(host);
        match (e.map(|e| self.voice(admission, e)), self.members.get(host)) {
            (Some(Voice::Member), _) => e.map(|e| e.record.cluster.clone()),
            (
                _,
                Some(Membership {
                    standing: Standing::Admitted { cluster, .. },
                    ..
                }),
            ) => Some(cluster.clone()),
            _ => None,
        }
    }

    /// Clusters in which some agent is counted, sorted.
    fn counted_clusters(&self, admission: Admission) -> Vec<String> {
        let mut names: Vec<String> = self
            .agents
            .values()
            .filter_map(|e| match self.voice(admission, e) {
                Voice::Member => Some(e.record.cluster.clone()),
                Voice::AdmittedElsewhere { cluster, .. } => Some(cluster),
                Voice::AwaitingAdmission | Voice::Forgotten { .. } => None,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Refuses a membership change of `host` while a backup, verification
/// or restore runs on it: its end would never be seen.
fn refuse_during_jobs(rec: &ClusterRecord, host: &str) -> Result<(), ServiceError> {
    let backup = rec.backups.values().find(|b| {
        (b.host == host && b.status == "running")
            || b.verify_job.as_ref().is_some_and(|(_, h)| h == host)
    });
    if let Some(b) = backup {
        return Err(ServiceError::Refused(format!(
            "{host} is running a job for backup {} in {}; wait for it to end",
            b.id, rec.name
        )));
    }
    if let Some(r) = rec
        .restores
        .values()
        .find(|r| r.host == host && r.status == "running")
    {
        return Err(ServiceError::Refused(format!(
            "{host} is being restored ({}) in {}; wait for it to end",
            r.id, rec.name
        )));
    }
    Ok(())
}

/// Refuses a membership change while an operation runs in the cluster.
fn refuse_during_operation(rec: &ClusterRecord) -> Result<(), ServiceError> {
    match &rec.control.operation {
        Some(op) => Err(ServiceError::Refused(format!(
            "{} {} is under way in {}; wait for it to end",
            op.kind.as_str(),
            op.id,
            rec.name
        ))),
        None => Ok(()),
    }
}

/// Who admitted the agents of a fleet upgraded from a version without
/// memberships.
pub const UPGRADE_ADMISSION: &str = "the upgrade (registered before memberships existed)";

/// The problem kind of an agent that reports for a cluster without a
/// voice in it.
pub const NOT_A_MEMBER: &str = "agent-not-a-member";

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

    /// Whether its fresh report shows it replicating from `source`.
    pub fn follows(&self, source: &dbfleet_proto::model::MysqlAddress) -> bool {
        self.server()
            .and_then(|s| s.replication.as_ref())
            .is_some_and(|r| r.source.same_endpoint(source))
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
    fn put_membership(&mut self, m: &Membership) -> Result<(), Self::Error> {
        self.state.members.insert(m.host.clone(), m.clone());
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
        for m in stored.members {
            state.members.insert(m.host.clone(), m);
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
        match op {
            DesiredOp::ForgetAgent { host } => info!(host, "agent forgotten"),
            DesiredOp::SetMemberships(all) => {
                for m in all {
                    info!(host = m.host, by = m.by, "agent admitted");
                }
            }
            DesiredOp::SetMembership(m) => match &m.standing {
                Standing::Admitted {
                    cluster,
                    mysql_address,
                } => info!(
                    host = m.host,
                    cluster,
                    mysql_address,
                    by = m.by,
                    "agent admitted"
                ),
                Standing::Forgotten => info!(host = m.host, by = m.by, "agent forgotten"),
            },
            _ => {}
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
                st.members = fresh.members;
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
        let admit =
            Voice::admit_automatically(self.rules.admission, st.members.get(report.host.as_str()));
        // Forgotten between registration and here: the next report registers it again.
        let Some(entry) = st.agents.get_mut(report.host.as_str()) else {
            return Ok(());
        };
        if let MysqlObservation::Reachable(s) = &report.mysql {
            entry.last_replicating = Some(s.replication.is_some());
        }
        entry.last = Some((Instant::now(), report));
        drop(st);
        if admit && self.ha.write_epoch().is_ok() {
            // Off the report stream: the stream must not wait for a commit.
            let me = self.clone();
            let host = identity.to_string();
            tokio::spawn(async move { me.admit_at_first_report(host).await });
        }
        Ok(())
    }

    /// Pins an agent no one has decided on where it reports (admission at
    /// first report, on the active). Nothing is written when a decision
    /// was made meanwhile.
    async fn admit_at_first_report(self: &Arc<Self>, host: String) {
        let done = self
            .commit(move |f| async move {
                let epoch = f.ha.write_epoch()?;
                let membership = {
                    let st = f.lock();
                    let Some(e) = st.agents.get(&host) else {
                        return Ok(());
                    };
                    if !Voice::admit_automatically(f.rules.admission, st.members.get(&host)) {
                        return Ok(());
                    }
                    Membership {
                        host: host.clone(),
                        standing: Standing::Admitted {
                            cluster: e.record.cluster.clone(),
                            mysql_address: e.record.mysql_address.clone(),
                        },
                        at_unix_ms: now_unix_ms(),
                        by: AUTOMATIC_ADMISSION.to_string(),
                    }
                };
                f.commit_locked(epoch, DesiredOp::SetMembership(membership))
                    .await
                    .map(drop)
            })
            .await;
        if let Err(e) = done {
            // The next report tries again.
            tracing::debug!(error = %e, "automatic admission not committed");
        }
    }

    /// Views of every cluster (or one), judged at this instant.
    pub fn cluster_views(&self, only: Option<&Name>) -> Vec<pb::ClusterView> {
        let st = self.lock();
        let now = Instant::now();
        let admission = self.rules.admission;
        // A cluster in which no agent counts (all forgotten, or one that
        // only ever had a policy) has nothing to show or to judge.
        st.counted_clusters(admission)
            .iter()
            .filter(|n| only.is_none_or(|o| o.as_str() == n.as_str()))
            .map(|name| {
                let name = name.as_str();
                let rec = st.clusters.get(name);
                let members = st
                    .counted(admission, name)
                    .into_iter()
                    .map(|c| {
                        let e = c.entry;
                        let last = e.last.as_ref().filter(|_| c.heard);
                        MemberInput {
                            host: &e.record.host,
                            mysql_address: c.mysql_address,
                            last: last.map(|(_, r)| r),
                            age: last.map(|(at, _)| now.saturating_duration_since(*at)),
                            last_replicating: e.last_replicating.filter(|_| c.heard),
                        }
                    })
                    .collect();
                let mut view = topology::derive(&ClusterInput {
                    name,
                    members,
                    max_lag_seconds: rec
                        .and_then(|c| c.max_lag_seconds)
                        .unwrap_or(self.rules.default_max_lag_seconds),
                    tuning: self.tuning_of(rec),
                    semi_sync: rec.and_then(|c| c.semi_sync),
                    agent_timeout: self.rules.agent_timeout,
                    last_primary: rec.and_then(|c| c.last_primary.as_deref()),
                });
                // Agents that report for it without a voice: shown, so an
                // operator sees an unexpected one or a forgotten admission.
                // Shown where it reports and, when admitted elsewhere, where
                // it was admitted too.
                for e in st.agents.values() {
                    let voice = st.voice(admission, e);
                    let here = e.record.cluster == name
                        || matches!(&voice, Voice::AdmittedElsewhere { cluster, .. } if cluster == name);
                    if here && !voice.is_member() {
                        view.problems.push(pb::Problem {
                            kind: NOT_A_MEMBER.to_string(),
                            host: e.record.host.clone(),
                            message: voice.explain(
                                &e.record.host,
                                &e.record.cluster,
                                &e.record.mysql_address,
                            ),
                        });
                        // What its own configuration checks found (a
                        // mistyped address, say) explains why: shown,
                        // never counted.
                        let found = e.last.iter().flat_map(|(_, r)| &r.agent.config_problems);
                        view.problems.extend(found.map(|p| pb::Problem {
                            kind: p.kind.as_str().to_string(),
                            host: e.record.host.clone(),
                            message: p.message.clone(),
                        }));
                    }
                }
                view
            })
            .collect()
    }

    /// Every registered agent.
    pub fn agent_views(&self) -> Vec<pb::AgentView> {
        let st = self.lock();
        let now = Instant::now();
        st.agents
            .values()
            .map(|e| {
                let voice = st.voice(self.rules.admission, e);
                let (admitted_cluster, admitted_mysql_address) =
                    match st.members.get(&e.record.host).map(|m| &m.standing) {
                        Some(Standing::Admitted {
                            cluster,
                            mysql_address,
                        }) => (cluster.clone(), mysql_address.clone()),
                        _ if voice.is_member() => {
                            (e.record.cluster.clone(), e.record.mysql_address.clone())
                        }
                        _ => (String::new(), String::new()),
                    };
                (e, voice, admitted_cluster, admitted_mysql_address)
            })
            .map(
                |(e, voice, admitted_cluster, admitted_mysql_address)| pb::AgentView {
                    standing: voice.word().to_string(),
                    standing_detail: voice.explain(
                        &e.record.host,
                        &e.record.cluster,
                        &e.record.mysql_address,
                    ),
                    admitted_cluster,
                    admitted_mysql_address,
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
                },
            )
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
        if change.mysql_tls == Some(MysqlTlsMode::Required)
            && let Some(why) = self
                .members(&cluster)
                .iter()
                .find_map(|m| cannot_require_tls(&m.host, m.report.as_ref()))
        {
            return Err(ServiceError::Refused(why));
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
            mysql_tls: change.mysql_tls,
        })
        .await?;
        let rec = self.cluster_record(&cluster);
        let tuning = self.tuning_of(Some(&rec));
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
            mysql_tls: tuning.mysql_tls.as_str().to_string(),
        };
        info!(
            cluster,
            max_lag_seconds = policy.max_lag_seconds,
            replica_heartbeat_ms = policy.replica_heartbeat_ms,
            replica_net_timeout_ms = policy.replica_net_timeout_ms,
            semi_sync = policy.semi_sync,
            mysql_tls = policy.mysql_tls,
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
            mysql_tls: rec.and_then(|r| r.mysql_tls).unwrap_or(d.mysql_tls),
        }
    }

    /// The heartbeat and net timeout the replicas of `cluster` get.
    pub fn replica_tuning(&self, cluster: &str) -> ReplicaTuning {
        self.tuning_of(Some(&self.cluster_record(cluster)))
    }

    /// Forgets an agent (an operator write): it has no voice from now on,
    /// even while it reports, until an operator admits it again.
    pub async fn forget_agent(self: &Arc<Self>, host: &Name, by: &str) -> Result<(), ServiceError> {
        let host = host.to_string();
        let by = by.to_string();
        let seq = self
            .commit(move |f| async move {
                let epoch = f.ha.write_epoch()?;
                {
                    let st = f.lock();
                    let cluster = st.counted_cluster(f.rules.admission, &host);
                    if cluster.is_none()
                        && !st.agents.contains_key(&host)
                        && !st.members.contains_key(&host)
                    {
                        return Err(ServiceError::UnknownAgent(host));
                    }
                    // A silent primary may still be writable behind a cut:
                    // forgetting it would drop it from the failover's view.
                    if let Some(rec) = cluster.as_deref().and_then(|c| st.clusters.get(c)) {
                        if rec.last_primary.as_deref() == Some(host.as_str()) {
                            return Err(ServiceError::Refused(format!(
                                "{host} is the primary of {}; fail over or switch over first",
                                rec.name
                            )));
                        }
                        refuse_during_operation(rec)?;
                        refuse_during_jobs(rec, &host)?;
                    }
                }
                let forgotten = Membership {
                    host,
                    standing: Standing::Forgotten,
                    at_unix_ms: now_unix_ms(),
                    by,
                };
                f.commit_locked(epoch, DesiredOp::SetMembership(forgotten))
                    .await
            })
            .await?;
        self.ha.wait_standby(seq).await?;
        Ok(())
    }

    /// Admits an agent (an operator write): where it reports, or at
    /// `place` (a move). Returns where it is admitted.
    pub async fn admit_agent(
        self: &Arc<Self>,
        request: AdmitAgent,
        by: &str,
    ) -> Result<(String, String), ServiceError> {
        let by = by.to_string();
        let (seq, place) = self
            .commit(move |f| async move {
                let epoch = f.ha.write_epoch()?;
                let host = request.host.to_string();
                let (cluster, mysql_address) = {
                    let st = f.lock();
                    let (cluster, mysql_address) = match &request.place {
                        Some((c, a)) => (c.to_string(), a.to_string()),
                        None => {
                            let e = st.agents.get(&host).ok_or_else(|| {
                                ServiceError::Refused(format!(
                                    "{host} has not reported to this coordinator, so where it belongs is unknown: name it (dbfleet agents move {host} --cluster CLUSTER --mysql-address HOST:PORT)"
                                ))
                            })?;
                            (e.record.cluster.clone(), e.record.mysql_address.clone())
                        }
                    };
                    let from = st.counted_cluster(f.rules.admission, &host);
                    for c in from.iter().chain(std::iter::once(&cluster)) {
                        if let Some(rec) = st.clusters.get(c) {
                            refuse_during_operation(rec)?;
                            refuse_during_jobs(rec, &host)?;
                        }
                    }
                    let admitted_at = match st.members.get(&host).map(|m| &m.standing) {
                        Some(Standing::Admitted {
                            cluster,
                            mysql_address,
                        }) => Some((cluster.clone(), mysql_address.clone())),
                        _ => None,
                    };
                    // Replicas dial the primary's address: moving it
                    // under them is a switchover's job.
                    if let Some(rec) = from.as_deref().and_then(|c| st.clusters.get(c))
                        && rec.last_primary.as_deref() == Some(host.as_str())
                        && admitted_at.as_ref()
                            != Some(&(cluster.clone(), mysql_address.clone()))
                    {
                        return Err(ServiceError::Refused(format!(
                            "{host} is the primary of {}; switch over first, then move it",
                            rec.name
                        )));
                    }
                    (cluster, mysql_address)
                };
                let admitted = Membership {
                    host,
                    standing: Standing::Admitted {
                        cluster: cluster.clone(),
                        mysql_address: mysql_address.clone(),
                    },
                    at_unix_ms: now_unix_ms(),
                    by,
                };
                let seq = f
                    .commit_locked(epoch, DesiredOp::SetMembership(admitted))
                    .await?;
                Ok((seq, (cluster, mysql_address)))
            })
            .await?;
        self.ha.wait_standby(seq).await?;
        Ok(place)
    }

    /// A cluster's desired record (defaults when it has none yet).
    pub fn cluster_record(&self, name: &str) -> ClusterRecord {
        self.lock()
            .clusters
            .get(name)
            .cloned()
            .unwrap_or_else(|| ClusterRecord::empty(name))
    }

    /// Names of every cluster in which some agent is counted.
    pub fn cluster_names(&self) -> Vec<String> {
        self.lock().counted_clusters(self.rules.admission)
    }

    /// The members of `cluster` with their latest reports.
    pub fn members(&self, cluster: &str) -> Vec<MemberState> {
        let st = self.lock();
        let now = Instant::now();
        let voters = self.ha.voters().addresses;
        st.counted(self.rules.admission, cluster)
            .into_iter()
            .map(|c| {
                let e = c.entry;
                let last = e.last.as_ref().filter(|_| c.heard);
                let report = last.map(|(_, r)| r.clone());
                let agent_address = report
                    .as_ref()
                    .map(|r| r.agent.address.clone())
                    .filter(|a| !a.is_empty())
                    .or_else(|| voters.get(&e.record.host).cloned());
                MemberState {
                    host: e.record.host.clone(),
                    mysql_address: c.mysql_address.to_string(),
                    agent_address,
                    received_at: last.map(|(at, _)| *at),
                    reporting: last.is_some_and(|(at, _)| {
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

    /// A fleet upgraded from a version without memberships has clusters
    /// with a remembered primary and no membership at all: its registered
    /// agents were the members, and stay members (admitted where they are
    /// registered, [`UPGRADE_ADMISSION`]) instead of all losing their voice
    /// at once. Only the active with complete desired state does this; once
    /// any membership exists it does nothing.
    pub async fn admit_registered_before_memberships(self: &Arc<Self>) -> Result<(), ServiceError> {
        fn upgraded(st: &FleetState) -> Vec<Membership> {
            if !st.members.is_empty() {
                return Vec::new();
            }
            st.agents
                .values()
                .filter(|e| {
                    st.clusters
                        .get(&e.record.cluster)
                        .is_some_and(|c| c.last_primary.is_some())
                })
                .map(|e| Membership {
                    host: e.record.host.clone(),
                    standing: Standing::Admitted {
                        cluster: e.record.cluster.clone(),
                        mysql_address: e.record.mysql_address.clone(),
                    },
                    at_unix_ms: now_unix_ms(),
                    by: UPGRADE_ADMISSION.to_string(),
                })
                .collect()
        }
        if self.ha.automatic_epoch().is_none() || upgraded(&self.lock()).is_empty() {
            return Ok(());
        }
        self.commit(|f| async move {
            let admitted = upgraded(&f.lock());
            let Some(epoch) = f.ha.automatic_epoch() else {
                return Ok(());
            };
            if admitted.is_empty() {
                return Ok(());
            }
            // One op: all of them or none, so a lapse halfway never leaves
            // the rest out for good.
            f.commit_locked(epoch, DesiredOp::SetMemberships(admitted))
                .await
                .map(drop)
        })
        .await
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
    use crate::store::SledStore;
    use crate::testing::active_ha;
    use dbfleet_proto::model::{MysqlAddress, MysqlObservation};

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
        fleet_admitting(store, Admission::FirstReport)
    }

    fn fleet_admitting(store: Arc<dyn Store>, admission: Admission) -> Arc<Fleet> {
        crate::testing::active_fleet(store, admission)
    }

    fn standing(f: &Fleet, host: &str) -> String {
        f.agent_views()
            .into_iter()
            .find(|a| a.host == host)
            .map(|a| a.standing)
            .unwrap_or_default()
    }

    fn counted(f: &Fleet, cluster: &str) -> Vec<String> {
        f.members(cluster).into_iter().map(|m| m.host).collect()
    }

    fn admit(host: &str, place: Option<(&str, &str)>) -> AdmitAgent {
        AdmitAgent {
            host: Name::parse(host).unwrap(),
            place: place.map(|(c, a)| (Name::parse(c).unwrap(), MysqlAddress::parse(a).unwrap())),
        }
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
        let f = fleet_admitting(store.clone(), Admission::Operator);
        let mut r = report("db1", "main");
        r.mysql = MysqlObservation::Reachable(Box::new(ServerState {
            tls: None,
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
        f.admit_agent(admit("db1", None), "dba").await.unwrap();
        f.remember_primaries().await.unwrap();
        assert_eq!(
            store.load().unwrap().applied.seq,
            2,
            "admitted, then remembered, through the op-log"
        );
        let restarted = fleet_admitting(store, Admission::Operator);
        assert_eq!(restarted.cluster_views(None)[0].primary, "db1");
    }

    #[tokio::test]
    async fn an_agent_has_a_voice_only_once_admitted_and_none_once_forgotten_even_while_reporting()
    {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let f = fleet_admitting(store.clone(), Admission::Operator);
        f.accept_report("db1", report("db1", "main")).await.unwrap();
        assert_eq!(standing(&f, "db1"), "awaiting admission");
        assert!(f.cluster_views(None).is_empty(), "no member yet");
        let (cluster, address) = f.admit_agent(admit("db1", None), "dba").await.unwrap();
        assert_eq!(
            (cluster.as_str(), address.as_str()),
            ("main", "127.0.0.1:3306")
        );
        assert_eq!(standing(&f, "db1"), "member");
        assert_eq!(counted(&f, "main"), ["db1"]);

        let name = Name::parse("db1").unwrap();
        f.forget_agent(&name, "dba").await.unwrap();
        f.accept_report("db1", report("db1", "main")).await.unwrap();
        assert_eq!(standing(&f, "db1"), "forgotten");
        assert!(
            counted(&f, "main").is_empty(),
            "a forgotten agent is not counted"
        );
        // durable and the same after a restart
        let restarted = fleet_admitting(store.clone(), Admission::FirstReport);
        restarted
            .accept_report("db1", report("db1", "main"))
            .await
            .unwrap();
        assert_eq!(standing(&restarted, "db1"), "forgotten");
        restarted
            .admit_agent(admit("db1", None), "dba")
            .await
            .unwrap();
        assert_eq!(counted(&restarted, "main"), ["db1"]);
        assert!(matches!(
            restarted
                .forget_agent(&Name::parse("db7").unwrap(), "dba")
                .await,
            Err(ServiceError::UnknownAgent(_))
        ));
        assert!(matches!(
            restarted.admit_agent(admit("db7", None), "dba").await,
            Err(ServiceError::Refused(m)) if m.contains("dbfleet agents move db7")
        ));
    }

    #[tokio::test]
    async fn an_agent_reporting_another_place_counts_as_silent_where_it_was_admitted_until_moved() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let f = fleet_admitting(store, Admission::Operator);
        f.accept_report("db1", report("db1", "main")).await.unwrap();
        f.admit_agent(admit("db1", None), "dba").await.unwrap();
        let mut elsewhere = report("db1", "main");
        elsewhere.mysql_address = MysqlAddress::parse("127.0.0.9:3306").unwrap();
        f.accept_report("db1", elsewhere.clone()).await.unwrap();
        let m = f.members("main");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mysql_address, "127.0.0.1:3306", "the admitted address");
        assert!(
            !m[0].reporting && m[0].report.is_none(),
            "its reports are not heard"
        );
        let view = &f.cluster_views(None)[0];
        let p = view
            .problems
            .iter()
            .find(|p| p.kind == NOT_A_MEMBER)
            .expect("shown as a problem");
        assert!(
            p.message
                .contains("dbfleet agents move db1 --cluster main --mysql-address 127.0.0.9:3306"),
            "{}",
            p.message
        );
        f.admit_agent(admit("db1", Some(("main", "127.0.0.9:3306"))), "dba")
            .await
            .unwrap();
        f.accept_report("db1", elsewhere).await.unwrap();
        let m = f.members("main");
        assert!(m[0].reporting && m[0].mysql_address == "127.0.0.9:3306");
        // a report for another cluster: still counted, silent, in main
        f.accept_report("db1", report("db1", "other"))
            .await
            .unwrap();
        assert_eq!(counted(&f, "main"), ["db1"]);
        assert!(counted(&f, "other").is_empty());
    }

    #[tokio::test]
    async fn agents_registered_before_memberships_existed_stay_members_after_the_upgrade() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        // The old version: registrations and a remembered primary, no
        // membership.
        for host in ["db1", "db2"] {
            store
                .put_agent(&AgentRecord {
                    host: host.into(),
                    cluster: "main".into(),
                    registered_at_unix_ms: 1,
                    mysql_address: "127.0.0.1:3306".into(),
                })
                .unwrap();
        }
        store
            .commit(
                &active_ha().write_epoch().unwrap(),
                &DesiredOp::RememberPrimary {
                    cluster: "main".into(),
                    primary: "db1".into(),
                },
            )
            .unwrap();
        let f = fleet_admitting(store.clone(), Admission::Operator);
        assert!(counted(&f, "main").is_empty(), "before the upgrade step");
        f.admit_registered_before_memberships().await.unwrap();
        assert_eq!(counted(&f, "main"), ["db1", "db2"]);
        assert_eq!(store.load().unwrap().applied.seq, 2, "all in one op");
        assert!(
            store
                .load()
                .unwrap()
                .members
                .iter()
                .all(|m| m.by == UPGRADE_ADMISSION)
        );
        // Once: a new agent later awaits the operator.
        f.accept_report("db3", report("db3", "main")).await.unwrap();
        f.admit_registered_before_memberships().await.unwrap();
        assert_eq!(standing(&f, "db3"), "awaiting admission");
    }

    #[tokio::test]
    async fn a_host_is_not_forgotten_or_moved_while_a_job_runs_on_it() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let f = fleet_admitting(store, Admission::Operator);
        f.accept_report("db2", report("db2", "main")).await.unwrap();
        f.admit_agent(admit("db2", None), "dba").await.unwrap();
        let restore: crate::backup::restore::RestoreRecord = serde_json::from_value(
            serde_json::json!({"id": "r1", "backup_id": "b1", "host": "db2",
                "status": "running", "started_at_unix_ms": 1}),
        )
        .unwrap();
        let epoch = f.ha().write_epoch().unwrap();
        let running = restore.clone();
        f.update_cluster("main", epoch.clone(), move |r| {
            r.restores.insert("r1".into(), running);
            Ok(())
        })
        .await
        .unwrap();
        let name = Name::parse("db2").unwrap();
        for refused in [
            f.forget_agent(&name, "dba").await,
            f.admit_agent(admit("db2", Some(("other", "127.0.0.2:3306"))), "dba")
                .await
                .map(drop),
        ] {
            assert!(
                matches!(&refused, Err(ServiceError::Refused(m)) if m.contains("being restored (r1)")),
                "{refused:?}"
            );
        }
        f.update_cluster("main", epoch, move |r| {
            r.restores.insert(
                "r1".into(),
                crate::backup::restore::RestoreRecord {
                    status: "completed".into(),
                    ..restore
                },
            );
            Ok(())
        })
        .await
        .unwrap();
        f.forget_agent(&name, "dba").await.unwrap();
    }

    #[tokio::test]
    async fn admission_at_first_report_pins_the_agent_where_it_first_reported() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let f = fleet(store.clone());
        f.accept_report("db1", report("db1", "main")).await.unwrap();
        assert_eq!(standing(&f, "db1"), "member");
        let give_up = Instant::now() + Duration::from_secs(10);
        while store.load().unwrap().members.is_empty() {
            assert!(Instant::now() < give_up, "never pinned");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let m = &store.load().unwrap().members[0];
        assert_eq!(m.by, AUTOMATIC_ADMISSION);
        f.accept_report("db1", report("db1", "other"))
            .await
            .unwrap();
        assert_eq!(standing(&f, "db1"), "admitted elsewhere");
        assert_eq!(counted(&f, "main"), ["db1"]);
    }

    #[test]
    fn tls_is_required_only_of_members_whose_server_can_check_a_source() {
        use dbfleet_proto::model::{Flavor, ServerState};
        use dbfleet_proto::mysql_tls::{AgentConnection, ServerTls};
        let with = |tls: Option<ServerTls>| {
            let mut r = report("db1", "main");
            r.mysql = MysqlObservation::Reachable(Box::new(ServerState {
                tls,
                version: "10.11".into(),
                flavor: Flavor::MariaDb,
                server_id: 1,
                server_uuid: String::new(),
                read_only: true,
                super_read_only: true,
                gtid: Default::default(),
                replication: None,
                semi_sync: Default::default(),
                binlog: Default::default(),
                replicas_connected: 0,
                replica_server_ids: vec![],
            }));
            r
        };
        let ready = ServerTls {
            ca: "/etc/mysql/ca.pem".into(),
            require_secure_transport: false,
            agent_connection: AgentConnection::Plain,
        };
        assert_eq!(
            cannot_require_tls("db1", Some(&with(Some(ready.clone())))),
            None
        );
        let no_ca = cannot_require_tls(
            "db1",
            Some(&with(Some(ServerTls {
                ca: String::new(),
                ..ready
            }))),
        )
        .unwrap();
        assert!(
            no_ca.contains("no CA (ssl_ca)") && no_ca.contains("nothing changed"),
            "{no_ca}"
        );
        assert!(
            cannot_require_tls("db1", Some(&with(None)))
                .unwrap()
                .contains("upgrade it")
        );
        // unobserved members do not hold the change back
        assert_eq!(cannot_require_tls("db1", None), None);
        assert_eq!(
            cannot_require_tls("db1", Some(&report("db1", "main"))),
            None
        );
    }
}
