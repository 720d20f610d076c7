//! Durable state of the coordinator behind a small trait, so the engine
//! (sled 0.34 today) can be replaced without touching the rest.
//!
//! Two kinds of state live here:
//! - *desired state* (cluster policies and remembered primaries, the voter
//!   list, every agent's membership), changed only by ops: each op is one transaction that updates
//!   the desired records and appends to the op-log, flushed before the
//!   call returns. The active commits ops; the standby applies the active's
//!   ops in order (or installs a snapshot), so both hold the same state.
//! - the *agent registry*, built by each coordinator from the reports it
//!   receives, and not replicated (both receive every report).
//!
//! The calls block; async callers run them on the blocking pool.

use std::collections::BTreeMap;

use dbfleet_lease::{Epoch, VoterSet};
use serde::{Deserialize, Serialize};

pub(crate) mod sled;

pub use self::sled::SledStore;

/// An agent the coordinator has accepted a report from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Host name (the agent's certificate name).
    pub host: String,
    /// Cluster it reported for.
    pub cluster: String,
    /// When it first registered, Unix ms.
    pub registered_at_unix_ms: i64,
    /// Where replicas reach its mysqld.
    pub mysql_address: String,
}

/// Per-cluster desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Cluster name.
    pub name: String,
    /// Operator-set lag threshold; `None` uses the coordinator default.
    #[serde(default)]
    pub max_lag_seconds: Option<u64>,
    /// Operator-set replication heartbeat period, ms; `None` uses the
    /// coordinator's `[failover] replica_heartbeat`.
    #[serde(default)]
    pub replica_heartbeat_ms: Option<u64>,
    /// Operator-set replica net timeout, ms; `None` uses the coordinator's
    /// `[failover] replica_net_timeout`.
    #[serde(default)]
    pub replica_net_timeout_ms: Option<u64>,
    /// Semi-sync as dbfleet keeps it on every member; `None` leaves it as
    /// the members are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semi_sync: Option<dbfleet_proto::model::SemiSyncMode>,
    /// Operator-set TLS to MySQL; `None` uses the coordinator's
    /// `mysql_tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql_tls: Option<dbfleet_proto::mysql_tls::MysqlTlsMode>,
    /// The last primary observed, so a primary whose mysqld is down is
    /// still known as the primary after a coordinator restart or takeover.
    #[serde(default)]
    pub last_primary: Option<String>,
    /// Failover policy, controls, the journal and the event history.
    #[serde(default)]
    pub control: ClusterControl,
    /// The backup catalog, by id.
    #[serde(default)]
    pub backups: std::collections::BTreeMap<String, crate::backup::BackupRecord>,
    /// Restores, by job id.
    #[serde(default)]
    pub restores: std::collections::BTreeMap<String, crate::backup::restore::RestoreRecord>,
    /// When backups are taken, verified and deleted.
    #[serde(default)]
    pub backup_policy: crate::backup::schedule::BackupPolicy,
}

impl ClusterRecord {
    /// A cluster with default policy.
    pub fn empty(name: &str) -> ClusterRecord {
        ClusterRecord {
            name: name.to_string(),
            max_lag_seconds: None,
            replica_heartbeat_ms: None,
            replica_net_timeout_ms: None,
            semi_sync: None,
            mysql_tls: None,
            last_primary: None,
            control: ClusterControl::default(),
            backups: Default::default(),
            restores: Default::default(),
            backup_policy: Default::default(),
        }
    }
}

pub use crate::failover::journal::ClusterControl;

/// The voters of the coordinators' lease and where to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterList {
    /// Names, weights, version, joint configuration.
    pub set: VoterSet,
    /// Voter name → `IP:PORT` of its agent (or witness).
    pub addresses: BTreeMap<String, String>,
}

/// An agent's standing in the fleet: the cluster and MySQL address an
/// operator (or automatic admission, at its first report) admitted it
/// with, or that an operator forgot it. A report that disagrees gives the
/// agent no voice until an operator admits or moves it: a certificate
/// names a host, never the cluster it may speak in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Host (the agent's certificate name).
    pub host: String,
    /// Admitted where, or forgotten.
    pub standing: Standing,
    /// When it was decided, Unix ms.
    pub at_unix_ms: i64,
    /// Who decided: an operator's certificate name, or
    /// [`AUTOMATIC_ADMISSION`].
    pub by: String,
}

/// Who admitted an agent the coordinators admitted at its first report.
pub const AUTOMATIC_ADMISSION: &str = "automatic admission";

/// Where an agent stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "standing", rename_all = "snake_case")]
pub enum Standing {
    /// A member of `cluster` whose mysqld is reached at `mysql_address`.
    Admitted {
        /// Cluster.
        cluster: String,
        /// `host:port` of its mysqld.
        mysql_address: String,
    },
    /// Forgotten: its reports are heard but it has no voice until an
    /// operator admits it again.
    Forgotten,
}

/// One change of desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DesiredOp {
    /// An operator changed a cluster's policy: the fields that are set.
    /// Unset fields are left out of the op-log entry, so a change of the
    /// lag threshold alone reads as it did before the tuning fields
    /// existed (a standby not yet upgraded applies it).
    SetClusterPolicy {
        /// Cluster.
        cluster: String,
        /// Lag threshold.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_lag_seconds: Option<u64>,
        /// Replication heartbeat period, ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replica_heartbeat_ms: Option<u64>,
        /// Replica net timeout, ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replica_net_timeout_ms: Option<u64>,
        /// Semi-sync (a standby older than this field ignores it: upgrade
        /// the standby first).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        semi_sync: Option<dbfleet_proto::model::SemiSyncMode>,
        /// TLS to MySQL (as for semi-sync: upgrade the standby first).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mysql_tls: Option<dbfleet_proto::mysql_tls::MysqlTlsMode>,
    },
    /// The active observed a cluster's primary.
    RememberPrimary {
        /// Cluster.
        cluster: String,
        /// Primary host.
        primary: String,
    },
    /// An operator removed a decommissioned agent (written before
    /// memberships existed: it leaves no record that it was forgotten).
    ForgetAgent {
        /// Host.
        host: String,
    },
    /// An agent was admitted, moved or forgotten. Forgetting also removes
    /// it from the local registry. (A standby older than this op cannot
    /// apply it: upgrade the standby first.)
    SetMembership(Membership),
    /// Several agents admitted at once, all or none (the admission of a
    /// fleet upgraded from before memberships).
    SetMemberships(Vec<Membership>),
    /// The voter list changed (one phase of a joint change).
    SetVoters(VoterList),
    /// A cluster's record replaced whole: failover controls, a journal
    /// step, an event. Written under the desired-state write lock from the
    /// latest record, so it never loses a concurrent change.
    PutCluster(Box<ClusterRecord>),
}

/// An op with its place in the op-log and the epoch it was committed under;
/// `(seq, epoch)` identifies it, since one epoch has one writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpEntry {
    /// Position, from 1, without gaps.
    pub seq: u64,
    /// Epoch of the active that committed it.
    pub epoch: Epoch,
    /// The change.
    pub op: DesiredOp,
}

/// Where an op-log ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpPosition {
    /// Last sequence (0: none).
    pub seq: u64,
    /// Its epoch.
    pub epoch: Epoch,
}

/// All desired state at one op-log position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSnapshot {
    /// The position it reflects.
    pub at: OpPosition,
    /// Cluster records.
    pub clusters: Vec<ClusterRecord>,
    /// The voter list, once one was committed.
    pub voters: Option<VoterList>,
    /// Every agent's membership.
    #[serde(default)]
    pub members: Vec<Membership>,
}

/// Everything loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredState {
    /// Registered agents (local).
    pub agents: Vec<AgentRecord>,
    /// Cluster records (desired).
    pub clusters: Vec<ClusterRecord>,
    /// The voter list (desired), once one was committed.
    pub voters: Option<VoterList>,
    /// Memberships (desired).
    pub members: Vec<Membership>,
    /// The last op applied.
    pub applied: OpPosition,
    /// Highest epoch this coordinator has seen.
    pub max_seen: Epoch,
    /// Ops set aside after a divergence.
    pub lost_found: u64,
}

/// Why the store failed; every variant means "not durable".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O, corruption, lock held by another process).
    #[error("store: {0}")]
    Engine(String),
    /// A stored value could not be decoded.
    #[error("store: undecodable record under {key:?}: {reason}")]
    Decode {
        /// The key.
        key: String,
        /// The decoder's message.
        reason: String,
    },
    /// A replicated op does not follow the last applied one.
    #[error("store: op {got} does not follow the applied op {applied}")]
    OutOfOrder {
        /// Last applied sequence.
        applied: u64,
        /// Sequence received.
        got: u64,
    },
}

/// Durable storage of the coordinator's state.
pub trait Store: Send + Sync + 'static {
    /// Reads everything (start-up, and after a snapshot was installed).
    fn load(&self) -> Result<StoredState, StoreError>;
    /// Inserts or replaces an agent in the local registry; durable on return.
    fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;
    /// Commits `op` as the next op-log entry under `epoch` (active only);
    /// durable on return.
    fn commit(&self, epoch: &Epoch, op: &DesiredOp) -> Result<OpEntry, StoreError>;
    /// Applies the active's next op (standby); durable on return.
    fn apply(&self, entry: &OpEntry) -> Result<(), StoreError>;
    /// Up to `limit` ops after `seq`, in order.
    fn ops_after(&self, seq: u64, limit: usize) -> Result<Vec<OpEntry>, StoreError>;
    /// The epoch of op `seq`, if this op-log holds it.
    fn epoch_at(&self, seq: u64) -> Result<Option<Epoch>, StoreError>;
    /// The last `n` op positions, oldest first.
    fn tail(&self, n: usize) -> Result<Vec<OpPosition>, StoreError>;
    /// All desired state at the current position.
    fn snapshot(&self) -> Result<DesiredSnapshot, StoreError>;
    /// Replaces all desired state with `snap` (standby). Ops above
    /// `keep_through` are moved to lost+found first; a crash midway leaves
    /// a store that asks for a new snapshot.
    fn install_snapshot(
        &self,
        snap: &DesiredSnapshot,
        keep_through: u64,
    ) -> Result<u64, StoreError>;
    /// Records the highest epoch seen (so a restart asks above it).
    fn save_max_seen(&self, epoch: &Epoch) -> Result<(), StoreError>;
    /// The ops set aside after divergences, oldest first.
    fn lost_found(&self) -> Result<Vec<OpEntry>, StoreError>;
}

/// Runs a blocking store call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &std::sync::Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, crate::error::ServiceError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|_| crate::error::ServiceError::ShuttingDown)?
        .map_err(crate::error::ServiceError::from)
}

/// Where an op is applied: the sled transaction, or the in-memory copy.
pub(crate) trait DesiredWriter {
    /// The writer's error.
    type Error;
    /// A cluster's record.
    fn get_cluster(&mut self, name: &str) -> Result<Option<ClusterRecord>, Self::Error>;
    /// Replaces a cluster's record.
    fn put_cluster(&mut self, c: ClusterRecord) -> Result<(), Self::Error>;
    /// Removes an agent from the registry.
    fn forget_agent(&mut self, host: &str) -> Result<(), Self::Error>;
    /// Replaces the voter list.
    fn put_voters(&mut self, v: &VoterList) -> Result<(), Self::Error>;
    /// Replaces an agent's membership.
    fn put_membership(&mut self, m: &Membership) -> Result<(), Self::Error>;
}

/// The one definition of what every op does.
pub(crate) fn apply_op<W: DesiredWriter>(op: &DesiredOp, w: &mut W) -> Result<(), W::Error> {
    match op {
        DesiredOp::SetClusterPolicy {
            cluster,
            max_lag_seconds,
            replica_heartbeat_ms,
            replica_net_timeout_ms,
            semi_sync,
            mysql_tls,
        } => {
            let mut c = w
                .get_cluster(cluster)?
                .unwrap_or_else(|| ClusterRecord::empty(cluster));
            c.max_lag_seconds = max_lag_seconds.or(c.max_lag_seconds);
            c.replica_heartbeat_ms = replica_heartbeat_ms.or(c.replica_heartbeat_ms);
            c.replica_net_timeout_ms = replica_net_timeout_ms.or(c.replica_net_timeout_ms);
            c.semi_sync = semi_sync.or(c.semi_sync);
            c.mysql_tls = mysql_tls.or(c.mysql_tls);
            w.put_cluster(c)
        }
        DesiredOp::RememberPrimary { cluster, primary } => {
            let mut c = w
                .get_cluster(cluster)?
                .unwrap_or_else(|| ClusterRecord::empty(cluster));
            c.last_primary = Some(primary.clone());
            w.put_cluster(c)
        }
        DesiredOp::ForgetAgent { host } => w.forget_agent(host),
        DesiredOp::SetMembership(m) => {
            if m.standing == Standing::Forgotten {
                w.forget_agent(&m.host)?;
            }
            w.put_membership(m)
        }
        DesiredOp::SetMemberships(all) => all.iter().try_for_each(|m| w.put_membership(m)),
        DesiredOp::SetVoters(v) => w.put_voters(v),
        DesiredOp::PutCluster(c) => w.put_cluster((**c).clone()),
    }
}
