//! The coordinator pair: the lease that makes exactly one of them active
//! (`driver`), desired-state replication from the active to the standby
//! (`replication`), and the voter list (`voters`). [`Ha`] is the state
//! they share with the API: who is active, under which epoch, and how far
//! each op-log has got.

pub mod driver;
pub mod replication;
pub mod voters;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use dbfleet_common::clock::boottime;
use dbfleet_lease::{Epoch, Holder, Role};
use dbfleet_proto::lease::millis;
use dbfleet_proto::pb;
use tokio::sync::watch;
use tracing::warn;

use crate::error::ServiceError;
use crate::store::VoterList;

/// Locks `m` even if a panic poisoned it: the guarded values are plain
/// data, consistent field by field, so serving on beats cascading panics.
pub(crate) fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The active coordinator as far as this one knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownActive {
    /// Its id.
    pub id: String,
    /// Where operators reach it.
    pub address: String,
}

/// The standby's replication link, as the active sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StandbyLink {
    /// A standby is streaming from us.
    pub connected: bool,
    /// Highest op it acknowledged.
    pub acked: u64,
    /// It missed an acknowledgement deadline and has not reconnected since:
    /// writes stop waiting for it.
    pub written_off: bool,
}

/// State shared by the lease driver, replication and the API.
#[derive(Debug)]
pub struct Ha {
    id: String,
    address: String,
    peer: KnownActive,
    holder: Mutex<Holder>,
    applied: watch::Sender<u64>,
    standby: watch::Sender<StandbyLink>,
    active: Mutex<Option<KnownActive>>,
    voters: Mutex<VoterList>,
    lost_found: AtomicU64,
    /// The active's op-log end, from its heartbeats (standby side).
    active_committed: AtomicU64,
    standby_ack_timeout: Duration,
    /// Voter-list changes run one at a time.
    pub(crate) voter_change: tokio::sync::Mutex<()>,
}

impl Ha {
    /// Shared state around `holder`, with the op-log at `applied`.
    pub fn new(
        holder: Holder,
        address: String,
        peer: KnownActive,
        voters: VoterList,
        applied: u64,
        lost_found: u64,
        standby_ack_timeout: Duration,
    ) -> Ha {
        Ha {
            id: holder.id().coordinator.clone(),
            address,
            peer,
            holder: Mutex::new(holder),
            applied: watch::Sender::new(applied),
            standby: watch::Sender::new(StandbyLink::default()),
            active: Mutex::new(None),
            voters: Mutex::new(voters),
            lost_found: AtomicU64::new(lost_found),
            active_committed: AtomicU64::new(0),
            standby_ack_timeout,
            voter_change: tokio::sync::Mutex::new(()),
        }
    }

    /// The holder, locked briefly (never across an await).
    pub fn holder(&self) -> MutexGuard<'_, Holder> {
        relock(&self.holder)
    }

    /// This coordinator's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The other coordinator.
    pub fn peer(&self) -> &KnownActive {
        &self.peer
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.holder().role(boottime())
    }

    /// The epoch to commit an operator's write under, or why not: only the
    /// active with complete desired state writes.
    pub fn write_epoch(&self) -> Result<Epoch, ServiceError> {
        let now = boottime();
        let h = self.holder();
        match h.role(now) {
            Role::Active => h.command_epoch(now).ok_or_else(|| self.not_active()),
            Role::ActiveDegraded => Err(ServiceError::Degraded {
                applied: *self.applied.borrow(),
                required: h.required_seq(),
            }),
            Role::Standby | Role::Candidate => Err(self.not_active()),
        }
    }

    /// The epoch for an automatic change (remembering a primary, later
    /// failovers): a valid lease and complete desired state, else `None`.
    pub fn automatic_epoch(&self) -> Option<Epoch> {
        let now = boottime();
        let h = self.holder();
        if h.may_change_topology(now) {
            h.command_epoch(now)
        } else {
            None
        }
    }

    /// The redirect for a write that reached a non-active coordinator.
    pub fn not_active(&self) -> ServiceError {
        let active = relock(&self.active).clone();
        ServiceError::NotActive {
            id: self.id.clone(),
            active,
        }
    }

    /// An agent has promised `higher`: step down if it is above our epoch.
    /// Whether we stepped down.
    pub fn met_higher_epoch(&self, higher: &Epoch) -> bool {
        let stepped = !self.holder().on_higher_epoch(higher, boottime()).is_empty();
        if stepped {
            self.set_active(None);
        }
        stepped
    }

    /// Records who the active is (from its heartbeats, or ourselves).
    pub fn set_active(&self, active: Option<KnownActive>) {
        *relock(&self.active) = active;
    }

    /// Ourselves as the active.
    pub fn me(&self) -> KnownActive {
        KnownActive {
            id: self.id.clone(),
            address: self.address.clone(),
        }
    }

    /// The op-log advanced to `seq` (committed here, or applied from the active).
    pub fn applied_to(&self, seq: u64) {
        {
            let mut h = self.holder();
            h.set_applied_seq(seq);
            h.set_committed_seq(seq);
        }
        self.applied.send_replace(seq);
    }

    /// Current op-log end.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits for op-log changes.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The standby link (active side).
    pub fn standby(&self) -> &watch::Sender<StandbyLink> {
        &self.standby
    }

    /// Makes a committed op safe to acknowledge: either the standby has it,
    /// or (standby slow or absent) a lease renewal begun after the commit
    /// reached a majority, so the voters know this sequence is committed
    /// and a standby that takes over without it knows it is behind. A
    /// standby that misses the deadline is written off (later writes wait
    /// only for the renewal) until it reconnects.
    pub async fn wait_standby(&self, seq: u64) -> Result<(), ServiceError> {
        let committed_at = boottime();
        if !self.standby.borrow().written_off {
            let mut rx = self.standby.subscribe();
            let waited = tokio::time::timeout(
                self.standby_ack_timeout,
                rx.wait_for(|l| l.written_off || l.acked >= seq),
            )
            .await;
            match waited {
                Ok(Ok(l)) if l.acked >= seq => return Ok(()),
                Ok(_) => {}
                Err(_) => {
                    self.standby.send_modify(|l| l.written_off = true);
                    warn!(seq, timeout = ?self.standby_ack_timeout, "standby did not acknowledge in time; going on without it until it reconnects");
                }
            }
        }
        let t = *self.holder().timing();
        let give_up = boottime() + t.renew_interval * 2 + t.rpc_timeout * 2;
        loop {
            if self
                .holder()
                .last_confirmed()
                .is_some_and(|c| c >= committed_at)
            {
                return Ok(());
            }
            if boottime() >= give_up {
                return Err(ServiceError::OutcomeUnknown(
                    "neither the standby nor a majority of voters confirmed the change in time"
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The voter list in force.
    pub fn voters(&self) -> VoterList {
        relock(&self.voters).clone()
    }

    /// Installs a committed or replicated voter list.
    pub fn set_voters(&self, list: VoterList) {
        self.holder().set_voters(list.set.clone());
        *relock(&self.voters) = list;
    }

    /// The active told us where its op-log ends.
    pub fn set_active_committed(&self, seq: u64) {
        self.active_committed.store(seq, Ordering::Relaxed);
    }

    /// Ops the standby lacks: on the active, those not acknowledged by a
    /// connected standby (all of them when none is connected); on a
    /// standby, those the active has and we have not applied.
    pub fn oplog_lag(&self) -> u64 {
        let applied = self.applied();
        match self.role() {
            Role::Active | Role::ActiveDegraded => {
                applied.saturating_sub(self.standby.borrow().acked)
            }
            Role::Standby | Role::Candidate => self
                .active_committed
                .load(Ordering::Relaxed)
                .saturating_sub(applied),
        }
    }

    /// Ops set aside after a divergence.
    pub fn set_lost_found(&self, n: u64) {
        self.lost_found.store(n, Ordering::Relaxed);
    }

    /// This coordinator's status for operators and metrics.
    pub fn status(&self) -> pb::CoordinatorStatus {
        let now = boottime();
        let h = self.holder();
        let role = h.role(now);
        let active = matches!(role, Role::Active | Role::ActiveDegraded);
        let known = relock(&self.active).clone();
        let link = *self.standby.borrow();
        pb::CoordinatorStatus {
            id: self.id.clone(),
            role: role.as_str().to_string(),
            epoch: h.epoch().filter(|_| active).cloned().map(Into::into),
            lease_remaining_ms: h.lease_remaining(now).map(millis),
            applied_seq: self.applied(),
            required_seq: h.required_seq(),
            active_id: known.as_ref().map(|k| k.id.clone()).unwrap_or_default(),
            active_address: known.map(|k| k.address).unwrap_or_default(),
            max_seen_epoch: Some(h.max_seen().clone().into()),
            standby_acked_seq: (active && link.connected).then_some(link.acked),
            lost_and_found: self.lost_found.load(Ordering::Relaxed),
            peer_id: self.peer.id.clone(),
            peer_address: self.peer.address.clone(),
            address: self.address.clone(),
        }
    }
}
