//! Whole operations run against scripted agents: given these positions and
//! these replies, which commands go out, what the outcome is and what the
//! journal keeps. The real-process suite checks the same against real
//! servers; these say why in milliseconds.

use std::collections::BTreeSet;

use dbfleet_proto::pb;

use super::Failovers;
use super::fixtures::{Scene, Seen, reply, server};
use super::journal::{Operation, OperationKind};
use super::procedure::now_unix_ms;
use crate::config::FailoverConfig;

/// db1 (the primary) down under its live agent; db2 and db3 lost it,
/// db2 the further.
async fn db1_down() -> Scene {
    Scene::new(
        &[
            ("db1", Seen::Down),
            ("db2", Seen::LostReplica(10)),
            ("db3", Seen::LostReplica(9)),
        ],
        FailoverConfig::default(),
    )
    .await
}

/// Every agent acknowledges the barrier, the replicas freeze at their
/// positions, db2 can be promoted and db3 repointed.
fn script_the_replicas(scene: &Scene) {
    for h in ["db1", "db2", "db3"] {
        scene.agents.answer(h, "barrier", reply(None, ""));
    }
    scene.agents.answer(
        "db2",
        "freeze",
        reply(server("db2", Seen::LostReplica(10)), "frozen"),
    );
    scene.agents.answer(
        "db3",
        "freeze",
        reply(server("db3", Seen::LostReplica(9)), "frozen"),
    );
    scene.agents.answer(
        "db2",
        "promote",
        reply(server("db2", Seen::Primary(10)), "promoted"),
    );
    scene.agents.answer(
        "db3",
        "repoint",
        reply(server("db3", Seen::LostReplica(10)), "repointed"),
    );
}

fn failover_of(scene: &Scene, old: &str) -> Operation {
    Operation::new(
        Failovers::new_id("main", OperationKind::Failover, &scene.epoch),
        OperationKind::Failover,
        scene.epoch.clone(),
        old.into(),
        "a test asked".into(),
        now_unix_ms(),
    )
}

async fn outcome(scene: &Scene, op: Operation) -> pb::OperationResult {
    let mut rx = scene.failovers.start(op).await.expect("journaled");
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return r;
        }
        rx.changed().await.expect("the operation ends");
    }
}

fn set(hosts: &[&str]) -> BTreeSet<String> {
    hosts.iter().map(|h| h.to_string()).collect()
}

/// The members left behind, by name.
fn left_behind(scene: &Scene) -> BTreeSet<String> {
    scene
        .fleet
        .cluster_record("main")
        .control
        .rejoining
        .into_keys()
        .collect()
}

#[tokio::test]
async fn a_failover_freezes_fences_promotes_the_furthest_and_repoints_the_rest() {
    let scene = db1_down().await;
    script_the_replicas(&scene);
    scene
        .agents
        .answer("db1", "fence", reply(None, "mysqld confirmed stopped"));
    let r = outcome(&scene, failover_of(&scene, "db1")).await;
    assert_eq!(r.outcome, "completed", "{}", r.message);
    assert_eq!(r.new_primary, "db2");
    assert!(
        r.fence_proof.contains("agent of db1 confirmed stopped"),
        "{}",
        r.fence_proof
    );
    let a = &scene.agents;
    assert_eq!(a.sent_of("freeze"), ["db2", "db3"]);
    assert_eq!(a.sent_of("fence"), ["db1"]);
    assert_eq!(a.sent_of("promote"), ["db2"]);
    assert_eq!(
        a.sent_of("repoint"),
        ["db3"],
        "the failed primary is not repointed"
    );
    // the fence comes before the promotion, the freeze before the fence
    let order: Vec<&str> = a.sent().iter().map(|(_, k)| *k).collect();
    let at = |k: &str| order.iter().position(|x| *x == k).unwrap();
    assert!(
        at("freeze") < at("fence") && at("fence") < at("promote") && at("promote") < at("repoint")
    );
    // the journal: no operation left, the new primary remembered, the
    // failed one left behind until it rejoins
    let rec = scene.fleet.cluster_record("main");
    assert!(rec.control.operation.is_none());
    assert_eq!(rec.last_primary.as_deref(), Some("db2"));
    assert_eq!(rec.control.promoted_at.as_deref(), Some("0-1-10"));
    assert_eq!(left_behind(&scene), set(&["db1"]));
    assert_eq!(
        rec.control.rejoining["db1"], "0-1-10",
        "forked where db2 was promoted"
    );
    assert_eq!(
        rec.control.events.back().map(|e| e.kind.as_str()),
        Some("failover-completed")
    );
}

#[tokio::test]
async fn without_any_fence_proof_a_failover_blocks_with_the_replicas_frozen_and_holds() {
    let scene = db1_down().await;
    script_the_replicas(&scene);
    let primary_before = scene.fleet.cluster_record("main").last_primary;
    // db1's agent does not answer; no STONITH hook, no self-fence, and
    // its semi-sync settings were never observed by this coordinator
    let r = outcome(&scene, failover_of(&scene, "db1")).await;
    assert_eq!(r.outcome, "blocked");
    assert!(
        r.message.contains("no fence proof for db1")
            && r.message
                .contains("dbfleet failover --cluster main --confirm-fenced db1"),
        "{}",
        r.message
    );
    assert!(
        scene.agents.sent_of("promote").is_empty(),
        "nobody promoted"
    );
    let rec = scene.fleet.cluster_record("main");
    assert!(rec.control.held.is_some(), "automatic failover held");
    assert_eq!(rec.control.frozen, set(&["db2", "db3"]));
    assert!(rec.control.rejoining.is_empty());
    assert_eq!(rec.last_primary, primary_before, "the primary is unchanged");
}

#[tokio::test]
async fn the_operators_confirmation_is_a_fence_proof() {
    let scene = db1_down().await;
    script_the_replicas(&scene);
    let op = Operation {
        confirm_fenced: Some("db1".into()),
        ..failover_of(&scene, "db1")
    };
    let r = outcome(&scene, op).await;
    assert_eq!(r.outcome, "completed", "{}", r.message);
    assert!(r.fence_proof.contains("operator confirmed db1 is fenced"));
    assert!(scene.agents.sent_of("fence").is_empty(), "not asked");
}

#[tokio::test]
async fn a_replica_whose_repoint_answer_was_lost_is_not_marked_left_behind() {
    // its agent may have obeyed before the answer was lost: it may follow
    // the new primary unseen, so only the failed primary is left behind
    let scene = db1_down().await;
    script_the_replicas(&scene);
    scene
        .agents
        .answer("db1", "fence", reply(None, "mysqld confirmed stopped"));
    scene
        .agents
        .answer("db3", "repoint", Err("db3: no answer within 20s".into()));
    let r = outcome(&scene, failover_of(&scene, "db1")).await;
    assert_eq!(r.outcome, "completed", "{}", r.message);
    assert_eq!(left_behind(&scene), set(&["db1"]));
}

/// db3 was left behind by an earlier failover and is down now; db1, the
/// primary since, was last seen with `registered` replicas (server ids)
/// and dies too.
async fn db3_left_behind_earlier(registered: Vec<u32>) -> Scene {
    let scene = Scene::new(
        &[
            ("db1", Seen::Primary(10)),
            ("db2", Seen::LostReplica(10)),
            ("db3", Seen::LostReplica(5)),
        ],
        FailoverConfig::default(),
    )
    .await;
    let mut db1 = server("db1", Seen::Primary(10)).unwrap();
    db1.replica_server_ids = registered;
    scene.report_state("db1", Some(db1)).await;
    scene.remember();
    scene.report("db1", Seen::Down).await;
    scene.report("db3", Seen::Down).await;
    scene
        .fleet
        .update_cluster("main", scene.epoch.clone(), |r| {
            r.control.rejoining.insert("db3".into(), "0-1-5".into());
            Ok(())
        })
        .await
        .unwrap();
    script_the_replicas(&scene);
    scene
        .agents
        .answer("db1", "fence", reply(None, "mysqld confirmed stopped"));
    scene
}

#[tokio::test]
async fn a_member_left_behind_earlier_and_proven_apart_is_neither_waited_for_nor_repointed() {
    // db1's registered replicas did not include db3: it never replicated
    // from db1, so it holds none of its acknowledged writes
    let scene = db3_left_behind_earlier(vec![2]).await;
    let r = outcome(&scene, failover_of(&scene, "db1")).await;
    assert_eq!(r.outcome, "completed", "{}", r.message);
    assert_eq!(r.new_primary, "db2");
    assert!(
        scene.agents.sent_of("repoint").is_empty(),
        "db3 rejoins through the repair loop's divergence check"
    );
    assert_eq!(left_behind(&scene), set(&["db1", "db3"]));
    let rec = scene.fleet.cluster_record("main");
    assert_eq!(rec.control.rejoining["db3"], "0-1-5", "keeps its own fork");
    let done = rec.control.events.back().unwrap();
    assert!(
        done.evidence
            .iter()
            .any(|e| e.contains("db3: left behind by the last operation")),
        "{:?}",
        done.evidence
    );
}

#[tokio::test]
async fn a_member_left_behind_but_registered_with_the_dead_primary_is_waited_for() {
    // db3 was registered with db1: it may have acknowledged db1's last
    // writes, so the mark alone proves nothing and the failover waits
    let scene = db3_left_behind_earlier(vec![2, 3]).await;
    let r = outcome(&scene, failover_of(&scene, "db1")).await;
    assert_eq!(r.outcome, "blocked", "{}", r.message);
    assert!(
        r.message
            .contains("unreachable replica(s) db3 may hold the last acknowledged writes"),
        "{}",
        r.message
    );
    assert!(scene.agents.sent_of("promote").is_empty());
}

/// db2 the writable primary at `0-2-50` (promoted there), db1 back from
/// an earlier failover, read-only and replicating from nobody, with its
/// binlog at `0-1-{db1_at}`, left behind at fork `0-1-10`.
async fn db1_back(db1_at: u64) -> Scene {
    let scene = Scene::new(&[("db2", Seen::LostReplica(0))], FailoverConfig::default()).await;
    let mut db2 = server("db2", Seen::Primary(50)).unwrap();
    for p in [
        &mut db2.gtid.executed,
        &mut db2.gtid.current_pos,
        &mut db2.gtid.binlog_pos,
    ] {
        *p = "0-2-50".into();
    }
    scene.report_state("db2", Some(db2)).await;
    let mut db1 = server("db1", Seen::Primary(db1_at)).unwrap();
    db1.read_only = true;
    db1.semi_sync.source_enabled = false;
    scene.report_state("db1", Some(db1)).await;
    scene
        .fleet
        .update_cluster("main", scene.epoch.clone(), |r| {
            r.last_primary = Some("db2".into());
            r.control.promoted_at = Some("0-2-50".into());
            r.control.rejoining.insert("db1".into(), "0-1-10".into());
            Ok(())
        })
        .await
        .unwrap();
    scene
}

#[tokio::test]
async fn a_member_left_behind_is_checked_against_its_own_fork_point() {
    // db1 holds 0-1-11 and 0-1-12, never acknowledged: beyond its fork at
    // 0-1-10, though below the last promotion (0-2-50) in sequence
    let scene = db1_back(12).await;
    scene.failovers.tick().await;
    let rec = scene.fleet.cluster_record("main");
    assert!(
        rec.control.needs_rebuild.contains("db1"),
        "diverged past its own fork point: {:?}",
        rec.control.events.back()
    );
    assert!(scene.agents.sent_of("repoint").is_empty(), "not repointed");
}

#[tokio::test]
async fn a_member_left_behind_is_counted_again_before_its_repoint_and_marked_again_when_it_fails() {
    let scene = db1_back(10).await;
    scene
        .agents
        .answer("db1", "repoint", Err("db1: no answer within 20s".into()));
    scene.failovers.tick().await;
    assert_eq!(scene.agents.sent_of("repoint"), ["db1"], "repointed");
    let rec = scene.fleet.cluster_record("main");
    assert!(
        !rec.control.needs_rebuild.contains("db1"),
        "at its fork point"
    );
    assert_eq!(
        rec.control.rejoining.get("db1").map(String::as_str),
        Some("0-1-10"),
        "the repoint failed: left behind again, at the same fork"
    );
}
