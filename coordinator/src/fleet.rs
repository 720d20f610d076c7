//! The coordinator's picture of the fleet: registered agents and clusters
//! (desired state, durable) next to each agent's latest report (observed
//! state, memory only, rebuilt from reports after a restart).
//!
//! A registration or policy change is written to the store before the
//! in-memory state changes and before anything is acknowledged, so a
//! coordinator that dies right after an ack still has what it acked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dbfleet_proto::model::{ClusterPolicyChange, MysqlObservation, Name, Report};
use dbfleet_proto::pb;
use tracing::info;

use crate::error::ServiceError;
use crate::store::{AgentRecord, ClusterRecord, Store, StoreError};
use crate::topology::{self, ClusterInput, MemberInput};

/// Thresholds the fleet is judged by.
#[derive(Debug, Clone, Copy)]
pub struct FleetRules {
    /// Silence longer than this marks an agent as not reporting.
    pub agent_timeout: Duration,
    /// Lag threshold for clusters without a policy of their own.
    pub default_max_lag_seconds: u64,
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
    rules: FleetRules,
    state: Mutex<FleetState>,
    /// Serializes changes of desired state (see [`Fleet::commit`]).
    writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs a blocking store call on the blocking pool.
async fn durable<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ServiceError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|_| ServiceError::ShuttingDown)?
        .map_err(ServiceError::from)
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

impl Fleet {
    /// Loads the registry from `store`.
    pub fn load(store: Arc<dyn Store>, rules: FleetRules) -> Result<Fleet, StoreError> {
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
        Ok(Fleet {
            store,
            rules,
            state: Mutex::new(state),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, FleetState> {
        // A panic while holding the lock leaves plain data behind, still
        // consistent field by field; keep serving rather than cascade.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The registration a report calls for, if any (new or moved agent,
    /// unknown cluster).
    fn registration(&self, report: &Report) -> (Option<AgentRecord>, Option<ClusterRecord>) {
        let host = report.host.as_str();
        let cluster = report.cluster.as_str();
        let address = report.mysql_address.to_string();
        let st = self.lock();
        let agent = match st.agents.get(host) {
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
        };
        let cluster_rec = (!st.clusters.contains_key(cluster)).then(|| ClusterRecord {
            name: cluster.to_string(),
            max_lag_seconds: None,
            last_primary: None,
        });
        (agent, cluster_rec)
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
        if self.registration(&report) != (None, None) {
            let r = report.clone();
            self.commit(move |f| async move {
                let (agent, cluster) = f.registration(&r);
                if let Some(c) = cluster {
                    let stored = c.clone();
                    durable(&f.store, move |s| s.put_cluster(&stored)).await?;
                    f.lock().clusters.insert(c.name.clone(), c);
                }
                if let Some(a) = agent {
                    let stored = a.clone();
                    durable(&f.store, move |s| s.put_agent(&stored)).await?;
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
                }
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

    /// Stores a cluster policy, durably, then applies it.
    pub async fn set_policy(
        self: &Arc<Self>,
        change: ClusterPolicyChange,
    ) -> Result<pb::ClusterPolicy, ServiceError> {
        self.commit(move |f| async move {
            let name = change.cluster.to_string();
            let mut rec = f
                .lock()
                .clusters
                .get(&name)
                .cloned()
                .unwrap_or(ClusterRecord {
                    name: name.clone(),
                    max_lag_seconds: None,
                    last_primary: None,
                });
            rec.max_lag_seconds = Some(change.max_lag_seconds);
            let stored = rec.clone();
            durable(&f.store, move |s| s.put_cluster(&stored)).await?;
            info!(
                cluster = name,
                max_lag_seconds = change.max_lag_seconds,
                "cluster policy changed"
            );
            f.lock().clusters.insert(name.clone(), rec);
            Ok(pb::ClusterPolicy {
                cluster: name,
                max_lag_seconds: change.max_lag_seconds,
            })
        })
        .await
    }

    /// Removes an agent that no longer reports.
    pub async fn forget_agent(self: &Arc<Self>, host: &Name) -> Result<(), ServiceError> {
        let host = host.to_string();
        self.commit(move |f| async move {
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
            }
            let h = host.clone();
            durable(&f.store, move |s| s.remove_agent(&h)).await?;
            f.lock().agents.remove(&host);
            info!(host, "agent forgotten");
            Ok(())
        })
        .await
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
                let rec = st.clusters.get(&v.name)?;
                (rec.last_primary.as_deref() != Some(v.primary.as_str())).then(|| ClusterRecord {
                    last_primary: Some(v.primary.clone()),
                    ..rec.clone()
                })
            })
            .collect()
    }

    /// Remembers each cluster's currently derived primary, durably, so a
    /// restart still knows which member was the primary while it is down.
    /// Runs every second: when nothing changed it takes no write lock.
    pub async fn remember_primaries(self: &Arc<Self>) -> Result<(), ServiceError> {
        if self.primary_changes().is_empty() {
            return Ok(());
        }
        self.commit(|f| async move {
            // Again under the write lock, against the latest records.
            for rec in f.primary_changes() {
                let stored = rec.clone();
                durable(&f.store, move |s| s.put_cluster(&stored)).await?;
                info!(
                    cluster = rec.name,
                    primary = rec.last_primary.as_deref().unwrap_or(""),
                    "primary observed"
                );
                f.lock().clusters.insert(rec.name.clone(), rec);
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
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
        }
    }

    fn fleet(store: Arc<dyn Store>) -> Arc<Fleet> {
        Arc::new(
            Fleet::load(
                store,
                FleetRules {
                    agent_timeout: Duration::from_secs(5),
                    default_max_lag_seconds: 60,
                },
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn registration_is_durable_and_identity_is_enforced() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let f = fleet(store.clone());
        let e = f
            .accept_report("db1", report("db2", "main"))
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::ForeignHost { .. }));
        f.accept_report("db1", report("db1", "main")).await.unwrap();
        let stored = store.load().unwrap();
        assert_eq!(stored.agents.len(), 1);
        assert_eq!(stored.clusters[0].name, "main");
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
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
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
        }));
        f.accept_report("db1", r).await.unwrap();
        f.remember_primaries().await.unwrap();
        let restarted = fleet(store);
        assert_eq!(restarted.cluster_views(None)[0].primary, "db1");
    }

    #[tokio::test]
    async fn forget_refuses_a_reporting_agent() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
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
