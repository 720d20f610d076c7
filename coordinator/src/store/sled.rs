//! [`Store`] on sled 0.34. Trees: `agents` (local registry), `desired`
//! (`cluster/NAME`, `member/HOST`, `voters`), `oplog` (big-endian seq → [`OpEntry`]),
//! `meta` (applied position, max seen epoch, snapshot marker) and
//! `lost_found`. Values are JSON. Every write is flushed before returning
//! (sled's own background flush runs only every 500 ms).

use std::path::Path;

use dbfleet_lease::Epoch;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::{
    AgentRecord, ClusterRecord, DesiredOp, DesiredSnapshot, DesiredWriter, Membership, OpEntry,
    OpPosition, Store, StoreError, StoredState, VoterList, apply_op,
};

const APPLIED: &[u8] = b"applied";
const MAX_SEEN: &[u8] = b"max_seen";
const SNAPSHOT_MARKER: &[u8] = b"snapshot_in_progress";
const VOTERS: &[u8] = b"voters";
const CLUSTER_PREFIX: &str = "cluster/";
const MEMBER_PREFIX: &str = "member/";

/// The coordinator's sled database.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    agents: sled::Tree,
    desired: sled::Tree,
    oplog: sled::Tree,
    meta: sled::Tree,
    lost_found: sled::Tree,
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records always encode")
}

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn scan<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv.map_err(engine)?;
            decode(&k, &v)
        })
        .collect()
}

fn cluster_key(name: &str) -> Vec<u8> {
    format!("{CLUSTER_PREFIX}{name}").into_bytes()
}

fn member_key(host: &str) -> Vec<u8> {
    format!("{MEMBER_PREFIX}{host}").into_bytes()
}

/// The values under `prefix` in `tree`.
fn scan_prefix<T: DeserializeOwned>(tree: &sled::Tree, prefix: &str) -> Result<Vec<T>, StoreError> {
    tree.scan_prefix(prefix.as_bytes())
        .map(|kv| {
            let (k, v) = kv.map_err(engine)?;
            decode(&k, &v)
        })
        .collect()
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn tx_get<T: DeserializeOwned>(t: &TransactionalTree, key: &[u8]) -> TxResult<Option<T>> {
    match t.get(key)? {
        Some(v) => decode(key, &v)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
        None => Ok(None),
    }
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => engine(e),
    }
}

struct TxWriter<'a> {
    desired: &'a TransactionalTree,
    agents: &'a TransactionalTree,
}

impl DesiredWriter for TxWriter<'_> {
    type Error = ConflictableTransactionError<StoreError>;

    fn get_cluster(&mut self, name: &str) -> TxResult<Option<ClusterRecord>> {
        tx_get(self.desired, &cluster_key(name))
    }
    fn put_cluster(&mut self, c: ClusterRecord) -> TxResult<()> {
        self.desired.insert(cluster_key(&c.name), encode(&c))?;
        Ok(())
    }
    fn forget_agent(&mut self, host: &str) -> TxResult<()> {
        self.agents.remove(host.as_bytes())?;
        Ok(())
    }
    fn put_voters(&mut self, v: &VoterList) -> TxResult<()> {
        self.desired.insert(VOTERS, encode(v))?;
        Ok(())
    }
    fn put_membership(&mut self, m: &Membership) -> TxResult<()> {
        self.desired.insert(member_key(&m.host), encode(m))?;
        Ok(())
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. Fails if another process
    /// holds it, which is how two coordinators on one data dir are refused.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|e| StoreError::Engine(format!("cannot open {}: {e}", dir.display())))?;
        Self::from_db(db)
    }

    /// A store that lives only as long as the value (tests).
    pub fn temporary() -> Result<SledStore, StoreError> {
        Self::from_db(sled::Config::new().temporary(true).open().map_err(engine)?)
    }

    fn from_db(db: sled::Db) -> Result<SledStore, StoreError> {
        let s = SledStore {
            agents: db.open_tree("agents").map_err(engine)?,
            desired: db.open_tree("desired").map_err(engine)?,
            oplog: db.open_tree("oplog").map_err(engine)?,
            meta: db.open_tree("meta").map_err(engine)?,
            lost_found: db.open_tree("lost_found").map_err(engine)?,
            db,
        };
        if s.meta.contains_key(SNAPSHOT_MARKER).map_err(engine)? {
            // A snapshot install was cut short: start from nothing, so the
            // active sends a whole new snapshot.
            s.desired.clear().map_err(engine)?;
            s.oplog.clear().map_err(engine)?;
            s.meta.remove(APPLIED).map_err(engine)?;
            s.meta.remove(SNAPSHOT_MARKER).map_err(engine)?;
            s.flush()?;
        }
        Ok(s)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine)?;
        Ok(())
    }

    fn applied(&self) -> Result<OpPosition, StoreError> {
        if self.meta.contains_key(SNAPSHOT_MARKER).map_err(engine)? {
            // A snapshot install was cut short: claim nothing, so the
            // active sends a new snapshot.
            return Ok(OpPosition::default());
        }
        match self.meta.get(APPLIED).map_err(engine)? {
            Some(v) => decode(APPLIED, &v),
            None => Ok(OpPosition::default()),
        }
    }

    /// One transaction: apply `entry.op` to desired state, append it to the
    /// op-log, and advance the applied position.
    fn append(&self, entry: &OpEntry, expect_prev: u64) -> Result<(), StoreError> {
        (&self.desired, &self.oplog, &self.meta, &self.agents)
            .transaction(|(desired, oplog, meta, agents)| {
                let applied: OpPosition = tx_get(meta, APPLIED)?.unwrap_or_default();
                if applied.seq != expect_prev || entry.seq != applied.seq + 1 {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::OutOfOrder {
                            applied: applied.seq,
                            got: entry.seq,
                        },
                    ));
                }
                apply_op(&entry.op, &mut TxWriter { desired, agents })?;
                oplog.insert(&entry.seq.to_be_bytes(), encode(entry))?;
                let pos = OpPosition {
                    seq: entry.seq,
                    epoch: entry.epoch.clone(),
                };
                meta.insert(APPLIED, encode(&pos))?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.flush()
    }
}

impl Store for SledStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        let clusters = scan_prefix(&self.desired, CLUSTER_PREFIX)?;
        let members = scan_prefix(&self.desired, MEMBER_PREFIX)?;
        let voters = match self.desired.get(VOTERS).map_err(engine)? {
            Some(v) => Some(decode(VOTERS, &v)?),
            None => None,
        };
        let max_seen = match self.meta.get(MAX_SEEN).map_err(engine)? {
            Some(v) => decode(MAX_SEEN, &v)?,
            None => Epoch::zero(),
        };
        Ok(StoredState {
            agents: scan(&self.agents)?,
            clusters,
            voters,
            members,
            applied: self.applied()?,
            max_seen,
            lost_found: self.lost_found.len() as u64,
        })
    }

    fn put_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.agents
            .insert(agent.host.as_bytes(), encode(agent))
            .map_err(engine)?;
        self.flush()
    }

    fn commit(&self, epoch: &Epoch, op: &DesiredOp) -> Result<OpEntry, StoreError> {
        let applied = self.applied()?;
        let entry = OpEntry {
            seq: applied.seq + 1,
            epoch: epoch.clone(),
            op: op.clone(),
        };
        self.append(&entry, applied.seq)?;
        Ok(entry)
    }

    fn apply(&self, entry: &OpEntry) -> Result<(), StoreError> {
        self.append(entry, entry.seq.saturating_sub(1))
    }

    fn ops_after(&self, seq: u64, limit: usize) -> Result<Vec<OpEntry>, StoreError> {
        self.oplog
            .range((seq + 1).to_be_bytes()..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(engine)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn epoch_at(&self, seq: u64) -> Result<Option<Epoch>, StoreError> {
        match self.oplog.get(seq.to_be_bytes()).map_err(engine)? {
            Some(v) => decode::<OpEntry>(&seq.to_be_bytes(), &v).map(|e| Some(e.epoch)),
            None => Ok(None),
        }
    }

    fn tail(&self, n: usize) -> Result<Vec<OpPosition>, StoreError> {
        if self.applied()?.seq == 0 {
            return Ok(Vec::new());
        }
        let mut out: Vec<OpPosition> = self
            .oplog
            .iter()
            .rev()
            .take(n)
            .map(|kv| {
                let (k, v) = kv.map_err(engine)?;
                let e: OpEntry = decode(&k, &v)?;
                Ok(OpPosition {
                    seq: e.seq,
                    epoch: e.epoch,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        out.reverse();
        Ok(out)
    }

    fn snapshot(&self) -> Result<DesiredSnapshot, StoreError> {
        // The active is the single writer and commits under its write lock,
        // which the caller holds, so this reads one consistent point.
        let s = self.load()?;
        Ok(DesiredSnapshot {
            at: s.applied,
            clusters: s.clusters,
            voters: s.voters,
            members: s.members,
        })
    }

    fn install_snapshot(
        &self,
        snap: &DesiredSnapshot,
        keep_through: u64,
    ) -> Result<u64, StoreError> {
        self.meta
            .insert(SNAPSHOT_MARKER, b"1".to_vec())
            .map_err(engine)?;
        self.flush()?;
        let mut set_aside = 0;
        for kv in self.oplog.range((keep_through + 1).to_be_bytes()..) {
            let (k, v) = kv.map_err(engine)?;
            self.lost_found.insert(k, v).map_err(engine)?;
            set_aside += 1;
        }
        self.oplog.clear().map_err(engine)?;
        self.desired.clear().map_err(engine)?;
        for c in &snap.clusters {
            self.desired
                .insert(cluster_key(&c.name), encode(c))
                .map_err(engine)?;
        }
        if let Some(v) = &snap.voters {
            self.desired.insert(VOTERS, encode(v)).map_err(engine)?;
        }
        for m in &snap.members {
            self.desired
                .insert(member_key(&m.host), encode(m))
                .map_err(engine)?;
        }
        self.meta
            .insert(APPLIED, encode(&snap.at))
            .map_err(engine)?;
        self.flush()?;
        self.meta.remove(SNAPSHOT_MARKER).map_err(engine)?;
        self.flush()?;
        Ok(set_aside)
    }

    fn save_max_seen(&self, epoch: &Epoch) -> Result<(), StoreError> {
        self.meta.insert(MAX_SEEN, encode(epoch)).map_err(engine)?;
        self.flush()
    }

    fn lost_found(&self) -> Result<Vec<OpEntry>, StoreError> {
        scan(&self.lost_found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(term: u64, c: &str) -> Epoch {
        Epoch {
            term,
            coordinator: c.into(),
        }
    }
    /// Opens `dir` again after the test dropped its store. sled releases its
    /// file lock only when its background I/O threads let go of the file,
    /// which may be after the drop returns; a new process never sees this.
    fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match SledStore::open(dir) {
                Err(StoreError::Engine(m))
                    if m.contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other.unwrap(),
            }
        }
    }
    fn policy(cluster: &str, lag: u64) -> DesiredOp {
        DesiredOp::SetClusterPolicy {
            mysql_tls: None,
            cluster: cluster.into(),
            max_lag_seconds: Some(lag),
            replica_heartbeat_ms: None,
            replica_net_timeout_ms: None,
            semi_sync: None,
        }
    }

    #[test]
    fn a_policy_change_keeps_the_fields_it_does_not_set() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.commit(&e(1, "c1"), &policy("main", 9)).unwrap();
        s.commit(
            &e(1, "c1"),
            &DesiredOp::SetClusterPolicy {
                mysql_tls: None,
                cluster: "main".into(),
                max_lag_seconds: None,
                replica_heartbeat_ms: Some(500),
                replica_net_timeout_ms: None,
                semi_sync: Some(dbfleet_proto::model::SemiSyncMode::Lossless),
            },
        )
        .unwrap();
        let c = &s.load().unwrap().clusters[0];
        assert_eq!(c.max_lag_seconds, Some(9));
        assert_eq!(c.replica_heartbeat_ms, Some(500));
        assert_eq!(
            c.semi_sync,
            Some(dbfleet_proto::model::SemiSyncMode::Lossless)
        );
        assert_eq!(c.replica_net_timeout_ms, None);
        // An op-log entry written before the tuning fields existed.
        let old: DesiredOp =
            serde_json::from_str(r#"{"SetClusterPolicy":{"cluster":"main","max_lag_seconds":7}}"#)
                .unwrap();
        assert_eq!(old, policy("main", 7));
        // ... and the same change written now reads as it did then.
        assert_eq!(
            serde_json::to_string(&policy("main", 7)).unwrap(),
            r#"{"SetClusterPolicy":{"cluster":"main","max_lag_seconds":7}}"#
        );
    }

    #[test]
    fn commits_survive_a_reopen_and_replicate_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.put_agent(&AgentRecord {
                host: "db1".into(),
                cluster: "main".into(),
                registered_at_unix_ms: 1,
                mysql_address: "127.0.0.1:3306".into(),
            })
            .unwrap();
            assert_eq!(s.commit(&e(1, "c1"), &policy("main", 9)).unwrap().seq, 1);
            s.commit(
                &e(1, "c1"),
                &DesiredOp::RememberPrimary {
                    cluster: "main".into(),
                    primary: "db1".into(),
                },
            )
            .unwrap();
            s.save_max_seen(&e(3, "c2")).unwrap();
        }
        let s = reopen(dir.path());
        let st = s.load().unwrap();
        assert_eq!(
            st.applied,
            OpPosition {
                seq: 2,
                epoch: e(1, "c1")
            }
        );
        assert_eq!(st.max_seen, e(3, "c2"));
        assert_eq!(
            st.clusters,
            vec![ClusterRecord {
                mysql_tls: None,
                control: Default::default(),
                backups: Default::default(),
                restores: Default::default(),
                backup_policy: Default::default(),
                name: "main".into(),
                max_lag_seconds: Some(9),
                replica_heartbeat_ms: None,
                replica_net_timeout_ms: None,
                semi_sync: None,
                last_primary: Some("db1".into())
            }]
        );
        assert_eq!(st.agents.len(), 1);

        let standby = SledStore::temporary().unwrap();
        let ops = s.ops_after(0, 10).unwrap();
        assert_eq!(ops.len(), 2);
        assert!(matches!(
            standby.apply(&ops[1]),
            Err(StoreError::OutOfOrder { applied: 0, got: 2 })
        ));
        for op in &ops {
            standby.apply(op).unwrap();
        }
        assert_eq!(standby.load().unwrap().clusters, st.clusters);
        assert_eq!(standby.tail(5).unwrap().len(), 2);
        assert_eq!(standby.epoch_at(2).unwrap(), Some(e(1, "c1")));
    }

    #[test]
    fn a_snapshot_replaces_desired_state_and_sets_the_diverged_tail_aside() {
        let active = SledStore::temporary().unwrap();
        active.commit(&e(1, "c1"), &policy("a", 5)).unwrap();
        active.commit(&e(2, "c2"), &policy("b", 6)).unwrap();
        let old = SledStore::temporary().unwrap();
        old.apply(&active.ops_after(0, 1).unwrap()[0]).unwrap();
        // The old active committed seq 2 under its own epoch, never replicated.
        old.commit(&e(1, "c1"), &policy("lost", 7)).unwrap();
        let snap = active.snapshot().unwrap();
        assert_eq!(old.install_snapshot(&snap, 1).unwrap(), 1);
        let st = old.load().unwrap();
        assert_eq!(
            st.applied,
            OpPosition {
                seq: 2,
                epoch: e(2, "c2")
            }
        );
        assert_eq!(st.clusters.len(), 2);
        assert_eq!(st.lost_found, 1);
        assert_eq!(old.lost_found().unwrap()[0].op, policy("lost", 7));
        // It continues from the snapshot's position.
        old.apply(&OpEntry {
            seq: 3,
            epoch: e(2, "c2"),
            op: policy("c", 1),
        })
        .unwrap();
    }

    #[test]
    fn memberships_replicate_and_travel_in_snapshots_and_forgetting_unregisters() {
        use crate::store::{Membership, Standing};
        let member = |standing| Membership {
            host: "db1".into(),
            standing,
            at_unix_ms: 1,
            by: "dba".into(),
        };
        let admitted = member(Standing::Admitted {
            cluster: "main".into(),
            mysql_address: "10.0.0.1:3306".into(),
        });
        let active = SledStore::temporary().unwrap();
        active
            .put_agent(&AgentRecord {
                host: "db1".into(),
                cluster: "main".into(),
                registered_at_unix_ms: 1,
                mysql_address: "10.0.0.1:3306".into(),
            })
            .unwrap();
        active
            .commit(&e(1, "c1"), &DesiredOp::SetMembership(admitted.clone()))
            .unwrap();
        let standby = SledStore::temporary().unwrap();
        standby.apply(&active.ops_after(0, 1).unwrap()[0]).unwrap();
        assert_eq!(standby.load().unwrap().members, [admitted]);
        let forgotten = member(Standing::Forgotten);
        active
            .commit(&e(1, "c1"), &DesiredOp::SetMembership(forgotten.clone()))
            .unwrap();
        let st = active.load().unwrap();
        assert!(st.agents.is_empty(), "forgetting unregisters");
        assert_eq!(st.members, std::slice::from_ref(&forgotten));
        let fresh = SledStore::temporary().unwrap();
        fresh
            .install_snapshot(&active.snapshot().unwrap(), 0)
            .unwrap();
        assert_eq!(fresh.load().unwrap().members, [forgotten]);
    }

    #[test]
    fn a_snapshot_install_cut_short_by_a_crash_starts_over_from_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.commit(&e(1, "c1"), &policy("a", 5)).unwrap();
            // The crash came after the marker was written, mid-install.
            s.meta.insert(SNAPSHOT_MARKER, b"1".to_vec()).unwrap();
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        let st = s.load().unwrap();
        assert_eq!(st.applied, OpPosition::default());
        assert!(st.clusters.is_empty() && s.tail(5).unwrap().is_empty());
        // The next op the active sends is accepted from the start.
        s.apply(&OpEntry {
            seq: 1,
            epoch: e(2, "c2"),
            op: policy("b", 6),
        })
        .unwrap();
    }

    #[test]
    fn forget_agent_removes_it_from_the_registry_in_the_same_transaction() {
        let s = SledStore::temporary().unwrap();
        s.put_agent(&AgentRecord {
            host: "db2".into(),
            cluster: "main".into(),
            registered_at_unix_ms: 1,
            mysql_address: "127.0.0.1:3306".into(),
        })
        .unwrap();
        s.commit(&e(1, "c1"), &DesiredOp::ForgetAgent { host: "db2".into() })
            .unwrap();
        assert!(s.load().unwrap().agents.is_empty());
    }
}
