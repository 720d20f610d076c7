//! Durable desired state behind a small trait, so the engine (sled 0.34
//! today) can be replaced without touching the coordinator.
//!
//! Every write is durable when the call returns (sled: insert, then
//! `flush`), because callers acknowledge to agents and operators right
//! after. The calls block; async callers run them on the blocking pool.

use serde::{Deserialize, Serialize};

pub(crate) mod memory;
pub(crate) mod sled;

pub use self::memory::MemoryStore;
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
    /// The last primary observed, so a primary whose mysqld is down is
    /// still known as the primary after a coordinator restart.
    #[serde(default)]
    pub last_primary: Option<String>,
}

/// Everything loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredState {
    /// Registered agents.
    pub agents: Vec<AgentRecord>,
    /// Known clusters.
    pub clusters: Vec<ClusterRecord>,
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
}

/// Durable storage of the coordinator's desired state.
pub trait Store: Send + Sync + 'static {
    /// Reads everything (start-up).
    fn load(&self) -> Result<StoredState, StoreError>;
    /// Inserts or replaces an agent; durable on return.
    fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;
    /// Removes an agent; returns whether it existed; durable on return.
    fn remove_agent(&self, host: &str) -> Result<bool, StoreError>;
    /// Inserts or replaces a cluster; durable on return.
    fn put_cluster(&self, cluster: &ClusterRecord) -> Result<(), StoreError>;
}

#[cfg(test)]
pub(crate) mod conformance {
    //! One suite both implementations must pass.
    use super::*;

    pub(crate) fn run(store: &dyn Store) {
        assert_eq!(store.load().unwrap(), StoredState::default());
        let a = AgentRecord {
            host: "db1".into(),
            cluster: "main".into(),
            registered_at_unix_ms: 5,
            mysql_address: "127.0.0.1:3306".into(),
        };
        store.put_agent(&a).unwrap();
        let mut b = a.clone();
        b.host = "db2".into();
        store.put_agent(&b).unwrap();
        let c = ClusterRecord {
            name: "main".into(),
            max_lag_seconds: Some(9),
            last_primary: Some("db1".into()),
        };
        store.put_cluster(&c).unwrap();
        let s = store.load().unwrap();
        assert_eq!(s.agents, vec![a.clone(), b.clone()]);
        assert_eq!(s.clusters, vec![c]);
        assert!(store.remove_agent("db2").unwrap());
        assert!(!store.remove_agent("db2").unwrap());
        assert_eq!(store.load().unwrap().agents, vec![a]);
    }
}
