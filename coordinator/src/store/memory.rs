//! In-memory [`Store`] for unit tests of the coordinator's logic.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{AgentRecord, ClusterRecord, Store, StoreError, StoredState};

/// A store that forgets everything when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<(
        BTreeMap<String, AgentRecord>,
        BTreeMap<String, ClusterRecord>,
    )>,
}

impl MemoryStore {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        (
            BTreeMap<String, AgentRecord>,
            BTreeMap<String, ClusterRecord>,
        ),
    > {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        let g = self.lock();
        Ok(StoredState {
            agents: g.0.values().cloned().collect(),
            clusters: g.1.values().cloned().collect(),
        })
    }

    fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.lock().0.insert(agent.host.clone(), agent.clone());
        Ok(())
    }

    fn remove_agent(&self, host: &str) -> Result<bool, StoreError> {
        Ok(self.lock().0.remove(host).is_some())
    }

    fn put_cluster(&self, cluster: &ClusterRecord) -> Result<(), StoreError> {
        self.lock().1.insert(cluster.name.clone(), cluster.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conforms() {
        super::super::conformance::run(&super::MemoryStore::default());
    }
}
