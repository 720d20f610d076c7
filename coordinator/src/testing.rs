//! What the coordinator's unit tests share: a coordinator that holds the
//! lease, without any network.

use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::clock::boottime;
use dbfleet_lease::{Epoch, FenceRecord, Holder, HolderAction, HolderId, Timing, Voter, VoterSet};

use crate::ha::{Ha, KnownActive};
use crate::store::VoterList;

/// HA state of a coordinator that holds the lease of a one-voter list,
/// with a standby that has acknowledged everything.
pub(crate) fn active_ha() -> Arc<Ha> {
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
