//! What the failover tests share: a loaded fleet (a writer and a sampler
//! running), waiting for a new primary, checking the witnesses, the event
//! history and cutting the primary's host off.

use std::time::Duration;

use dbfleet_proto::model::Flavor;
use dbfleet_proto::pb;
use serde_json::Value;

use crate::workload::{Sampler, Writer, ids_on};
use crate::{PATIENCE, Partition, TestFleet, member};

/// A fleet of a primary and two replicas with an active coordinator, a
/// writer and a sampler running, and some writes acknowledged.
pub async fn loaded_fleet(extra: &str) -> (TestFleet, Writer, Sampler) {
    loaded_fleet_of(2, extra).await
}

/// [`loaded_fleet`] with `replicas` replicas.
pub async fn loaded_fleet_of(replicas: usize, extra: &str) -> (TestFleet, Writer, Sampler) {
    loaded_fleet_on(Flavor::MariaDb, replicas, extra).await
}

/// [`loaded_fleet_of`] on `flavor`'s servers.
pub async fn loaded_fleet_on(
    flavor: Flavor,
    replicas: usize,
    extra: &str,
) -> (TestFleet, Writer, Sampler) {
    let fleet = TestFleet::start_spec(replicas, 2, |spec| {
        spec.coordinator_extra = extra.to_string();
        spec.flavor = flavor;
    })
    .await;
    // every voter granting the active: at start a voter reached only by
    // the winner's barrier may still promise the other's late Prepare,
    // and an operation asked for then is aborted with the lease
    fleet.wait_settled("an active coordinator", |_| true).await;
    let writer = Writer::start(&fleet, "db1").await;
    let sampler = Sampler::start(&fleet);
    wait_acked(&writer, 20).await;
    (fleet, writer, sampler)
}

/// Waits until `w` has `n` acknowledged writes.
pub async fn wait_acked(w: &Writer, n: usize) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while w.acked_count() < n {
        assert!(
            tokio::time::Instant::now() < give_up,
            "only {} writes acknowledged, waiting for {n}",
            w.acked_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a member other than `old` is the only writable primary and
/// every member in `followers` replicates from it with both threads.
pub async fn new_primary(fleet: &TestFleet, old: &str, followers: &[&str]) -> pb::ClusterView {
    fleet
        .wait_until("a new primary with its replicas following", |c| {
            let p = c.primary.as_str();
            !p.is_empty()
                && p != old
                && c.members.iter().filter(|m| m.writable).count() == 1
                && member(c, p).writable
                && followers.iter().filter(|h| **h != p).all(|h| {
                    let m = member(c, h);
                    m.source == member(c, p).mysql_address && m.io_running && m.sql_running
                })
        })
        .await
}

/// Stops the witnesses and checks what every test promises.
pub async fn check_witnesses(fleet: &TestFleet, writer: Writer, sampler: Sampler, primary: &str) {
    let n = writer.acked_count();
    wait_acked(&writer, n + 10).await;
    let acked = writer.stop().await;
    let ((most, which), samples) = sampler.stop().await;
    assert!(samples > 10, "the sampler ran ({samples} samples)");
    assert!(most <= 1, "{most} members were writable at once: {which:?}");
    let present = ids_on(fleet, primary).await;
    let missing: Vec<&u64> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing on {primary}: {missing:?}",
        missing.len()
    );
}

/// `dbfleet events --output json`: every event, oldest first.
pub fn events(fleet: &TestFleet) -> Vec<Value> {
    let out = fleet.cli(&["events", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("events JSON");
    v["events"].as_array().cloned().unwrap_or_default()
}

/// The evidence of the last event of `kind`, joined; waits for one (an
/// operation's end is recorded just after the new primary shows).
pub fn evidence_of(fleet: &TestFleet, kind: &str) -> String {
    let give_up = std::time::Instant::now() + PATIENCE;
    loop {
        let e = events(fleet);
        if let Some(last) = e.iter().rev().find(|e| e["kind"] == kind) {
            return format!("{last}");
        }
        assert!(
            std::time::Instant::now() < give_up,
            "no {kind} event in {e:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Cuts db1's host off from every other member, the coordinators, and
/// 127.0.0.1 (where replicas and test clients connect from); its agent
/// still reaches its own mysqld through the socket.
pub fn cut_off_db1(fleet: &TestFleet) -> Partition {
    let db1 = fleet.info.members[0].address.clone();
    let mut others: Vec<String> = fleet.info.members[1..]
        .iter()
        .map(|m| m.address.clone())
        .collect();
    others.extend(
        fleet
            .info
            .coordinators
            .iter()
            .map(|c| c.address.split(':').next().unwrap().to_string()),
    );
    others.push("127.0.0.1".into());
    Partition::cut(&fleet.slot, &[db1], &others)
}

/// Makes db1 a semi-sync source that may fall back to asynchronous
/// replication: no fence proof, though it still keeps acknowledged writes
/// on a replica.
pub async fn semi_sync_may_fall_back(fleet: &TestFleet) {
    fleet
        .sql("db1", "SET GLOBAL rpl_semi_sync_master_timeout = 10000")
        .await
        .unwrap();
    fleet
        .wait_until("db1 a semi-sync source that may fall back", |c| {
            member(c, "db1").semi_sync == "source"
        })
        .await;
}
