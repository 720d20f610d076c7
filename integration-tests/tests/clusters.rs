//! Several clusters under one coordinator pair, with real processes: two
//! clusters of a primary and a replica each (main: db1 → db2, main2:
//! db3 → db4), their agents all voting, two coordinators. A writer per
//! cluster records every acknowledged write and the sampler checks, every
//! 50 ms, that no cluster ever has two writable members.

use std::time::Duration;

use dbfleet_integration_tests::failover::wait_acked;
use dbfleet_integration_tests::workload::{Sampler, Writer, ids_on};
use dbfleet_integration_tests::{AGENT_TIMEOUT, TestFleet, member, sample, scrape, sole_active};
use dbfleet_proto::pb;
use serde_json::Value;

/// At most this many clusters may look dead at once before the breaker
/// holds every automatic failover. The fast path's window is widened
/// from 1 s so that the test is about the counting, not about both
/// deaths reaching the coordinator within one second on a busy machine.
const BREAKER: &str = "[failover]\nbreaker_max_dead_clusters = 1\nfast_window = \"3s\"\n";

/// `dbfleet events --cluster C --output json`: the cluster's events.
fn events(fleet: &TestFleet, cluster: &str) -> Vec<Value> {
    let (ok, v) = fleet.cli_json(&["events", "--cluster", cluster]);
    assert!(ok, "{v}");
    v["events"].as_array().cloned().unwrap_or_default()
}

fn kinds(fleet: &TestFleet, cluster: &str) -> Vec<String> {
    events(fleet, cluster)
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

/// The active coordinator's count of detections of `cluster` that ended
/// in `outcome`.
fn detections(fleet: &TestFleet, cluster: &str, outcome: &str) -> f64 {
    let c = fleet.coordinators();
    let id = sole_active(&c).expect("an active coordinator")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let text = scrape(&fleet.coordinator(&id).metrics_address);
    sample(
        &text,
        "dbfleet_coordinator_detections_total",
        &[("cluster", cluster), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// `primary` writable and the only writable member of `c`, and `replica`
/// replicating from it with both threads.
fn serves(c: &pb::ClusterView, primary: &str, replica: &str) -> bool {
    let p = member(c, primary);
    let r = member(c, replica);
    c.primary == primary
        && p.writable
        && !r.writable
        && r.source == p.mysql_address
        && r.io_running
        && r.sql_running
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_holds_failover_while_too_many_clusters_die_and_each_cluster_fails_over_alone()
{
    let mut fleet = TestFleet::start_spec(1, 2, |s| {
        s.clusters = 2;
        s.coordinator_extra = BREAKER.into();
    })
    .await;
    fleet
        .wait_coordinators("an active coordinator", |c| sole_active(c).is_some())
        .await;
    let status = fleet.status_json();
    let names: Vec<&str> = status["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["main", "main2"], "{status}");
    let main_writer = Writer::start(&fleet, "db1").await;
    let main2_writer = Writer::start(&fleet, "db3").await;
    let sampler = Sampler::start(&fleet);
    wait_acked(&main_writer, 20).await;
    wait_acked(&main2_writer, 20).await;

    // Both primaries die at once: more dead clusters than the breaker
    // allows, so neither is failed over, and each is told why.
    fleet.kill("mariadbd-db1");
    fleet.kill("mariadbd-db3");
    for cluster in ["main", "main2"] {
        fleet
            .wait_cluster(cluster, "the breaker's event recorded", |_| {
                kinds(&fleet, cluster)
                    .iter()
                    .any(|k| k == "failover-breaker")
            })
            .await;
    }
    let breaker = events(&fleet, "main")
        .into_iter()
        .find(|e| e["kind"] == "failover-breaker")
        .unwrap();
    assert!(
        breaker.to_string().contains("2 clusters look dead at once"),
        "{breaker}"
    );
    assert!(detections(&fleet, "main", "breaker") >= 1.0);
    assert!(detections(&fleet, "main2", "breaker") >= 1.0);
    // The fast path (mysqld down under a live agent) would fail over after
    // its 3 s window: nothing may start while we watch well past it.
    let watch = 2 * AGENT_TIMEOUT;
    let until = std::time::Instant::now() + watch;
    while std::time::Instant::now() < until {
        let status = fleet.status_json();
        for c in status["clusters"].as_array().unwrap() {
            assert!(
                c["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|m| m["writable"] != true),
                "a replica was promoted under the breaker: {status}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for cluster in ["main", "main2"] {
        let k = kinds(&fleet, cluster);
        assert!(
            !k.iter().any(|k| k == "failover-started"),
            "{cluster}: {k:?}"
        );
    }

    // main's primary comes back: main2 is now the only dead cluster, so
    // the breaker lets its failover through, and main keeps its primary.
    fleet.start_mysqld("db1").unwrap();
    fleet
        .wait_cluster("main", "db1 the primary of main again", |c| {
            serves(c, "db1", "db2")
        })
        .await;
    fleet
        .wait_cluster("main2", "db4 promoted in main2", |c| {
            c.primary == "db4" && member(c, "db4").writable
        })
        .await;
    let main_kinds = kinds(&fleet, "main");
    assert!(
        !main_kinds.iter().any(|k| k == "failover-started"),
        "main was never failed over: {main_kinds:?}"
    );
    assert!(detections(&fleet, "main2", "failover") >= 1.0);

    // main2's old primary returns read-only. It rejoins as db4's replica,
    // unless the kill caught a commit that db3 had written to its binlog
    // but db4 never received: then it is marked for a rebuild instead.
    fleet.start_mysqld("db3").unwrap();
    let c = fleet
        .wait_cluster("main2", "db3 rejoined or marked needs-rebuild", |c| {
            serves(c, "db4", "db3") || member(c, "db3").needs_rebuild
        })
        .await;
    let rejoined = serves(&c, "db4", "db3");
    assert!(!member(&c, "db3").writable, "{c:?}");

    // No acknowledged write of either cluster is missing on its primary,
    // and no cluster ever had two writable members. Lossless semi-sync
    // keeps main2's writes waiting while db4 has no replica to ack them.
    for (writer, primary, more) in [(main_writer, "db1", true), (main2_writer, "db4", rejoined)] {
        if more {
            let n = writer.acked_count();
            wait_acked(&writer, n + 10).await;
        }
        let acked = writer.stop().await;
        let present = ids_on(&fleet, primary).await;
        let missing: Vec<&u64> = acked.iter().filter(|id| !present.contains(id)).collect();
        assert!(missing.is_empty(), "{primary} lacks {missing:?}");
    }
    let ((most, which), samples) = sampler.stop().await;
    assert!(samples > 10, "the sampler ran ({samples} samples)");
    assert!(
        most <= 1,
        "{most} members of one cluster were writable at once: {which:?}"
    );
}
