//! What the coordinator's unit tests share: a coordinator that holds the
//! lease, and its fleet on a given store, without any network.

use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::clock::boottime;
use dbfleet_lease::{Epoch, FenceRecord, Holder, HolderAction, HolderId, Timing, Voter, VoterSet};

use crate::fleet::{Fleet, FleetRules, ReplicaTuning};
use crate::ha::{Ha, KnownActive};
use crate::membership::Admission;
use crate::store::{Store, VoterList};

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

/// The fleet of a coordinator that holds the lease ([`active_ha`]), on
/// `store`, admitting agents by `admission`, with the defaults' timings.
pub(crate) fn active_fleet(store: Arc<dyn Store>, admission: Admission) -> Arc<Fleet> {
    Arc::new(
        Fleet::load(
            store,
            active_ha(),
            FleetRules {
                agent_timeout: Duration::from_secs(5),
                default_max_lag_seconds: 60,
                default_tuning: ReplicaTuning {
                    mysql_tls: dbfleet_proto::mysql_tls::MysqlTlsMode::Off,
                    heartbeat: Duration::from_secs(1),
                    net_timeout: Duration::from_secs(4),
                },
                admission,
            },
        )
        .expect("a fleet on a fresh store"),
    )
}
