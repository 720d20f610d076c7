//! [`Store`] on sled 0.34: one tree per record kind, JSON values, a flush
//! after every write (sled's own background flush runs only every 500 ms).

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{AgentRecord, ClusterRecord, Store, StoreError, StoredState};

const AGENTS: &str = "agents";
const CLUSTERS: &str = "clusters";

/// The coordinator's sled database.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    agents: sled::Tree,
    clusters: sled::Tree,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. Fails if another process
    /// holds it, which is how two coordinators on one data dir are refused.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| StoreError::Engine(format!("cannot open {}: {e}", dir.display())))?;
        let agents = db.open_tree(AGENTS).map_err(engine)?;
        let clusters = db.open_tree(CLUSTERS).map_err(engine)?;
        Ok(SledStore {
            db,
            agents,
            clusters,
        })
    }

    fn put<T: Serialize>(&self, tree: &sled::Tree, key: &str, v: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(v).map_err(|e| StoreError::Engine(e.to_string()))?;
        tree.insert(key.as_bytes(), bytes).map_err(engine)?;
        self.db.flush().map_err(engine)?;
        Ok(())
    }
}

fn scan<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv.map_err(engine)?;
            serde_json::from_slice(&v).map_err(|e| StoreError::Decode {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}

impl Store for SledStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        Ok(StoredState {
            agents: scan(&self.agents)?,
            clusters: scan(&self.clusters)?,
        })
    }

    fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.put(&self.agents, &agent.host, agent)
    }

    fn remove_agent(&self, host: &str) -> Result<bool, StoreError> {
        let existed = self
            .agents
            .remove(host.as_bytes())
            .map_err(engine)?
            .is_some();
        self.db.flush().map_err(engine)?;
        Ok(existed)
    }

    fn put_cluster(&self, cluster: &ClusterRecord) -> Result<(), StoreError> {
        self.put(&self.clusters, &cluster.name, cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conforms_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            super::super::conformance::run(&s);
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap().agents.len(), 1);
    }
}
