//! A second failure while the first one's repairs are still running:
//! real servers (lossless semi-sync), agents and a coordinator pair, a
//! primary and two or three replicas, a writer and a sampler. Each test ends with
//! exactly one writable primary, every acknowledged write on it, never two
//! members writable at once, and the member the first failover left
//! behind rejoined (or marked for rebuild when it holds a transaction that
//! was never acknowledged).

use dbfleet_integration_tests::failover::{
    check_witnesses, events, loaded_fleet_on, new_primary, wait_acked,
};
use dbfleet_integration_tests::on_both_flavors;
use dbfleet_integration_tests::workload::{Sampler, Writer, ids_on};
use dbfleet_integration_tests::{TestFleet, has_problem, member, sole_active};
use dbfleet_proto::model::Flavor;
use dbfleet_proto::pb;

/// Two automatic failovers in a row must not be held by the anti-flap
/// budget: these tests are about the second one.
const TWO_FAILOVERS: &str = "[failover]\nbudget = 3\n";

/// Waits until `host` follows the primary with both threads, or was
/// marked for rebuild, and no longer counts as left behind.
async fn rejoined_or_marked(fleet: &TestFleet, host: &str) -> pb::ClusterView {
    fleet
        .wait_until(&format!("{host} rejoined or marked for rebuild"), |c| {
            let m = member(c, host);
            let p = member(c, &c.primary);
            !m.rejoining
                && !has_problem(c, "not-rejoined", host)
                && (m.needs_rebuild
                    || (m.source == p.mysql_address && m.io_running && m.sql_running))
        })
        .await
}

/// How many failovers completed.
fn completed_failovers(fleet: &TestFleet) -> usize {
    events(fleet)
        .iter()
        .filter(|e| e["kind"] == "failover-completed")
        .count()
}

/// A loaded fleet of a primary and two replicas whose primary db1 was
/// killed and replaced: the writes of the first writer were stopped before
/// the kill (db1 holds no transaction the others lack, so it can rejoin:
/// with two replicas, the last server standing needs it as its semi-sync
/// acker), and a second writer runs on the new primary. Returns the fleet,
/// the first writer's acknowledged ids, the second writer, the sampler and
/// the new primary.
async fn first_failover_done(flavor: Flavor) -> (TestFleet, Vec<u64>, Writer, Sampler, String) {
    let (mut fleet, writer, sampler) = loaded_fleet_on(flavor, 2, TWO_FAILOVERS).await;
    let first_acked = writer.stop().await;
    fleet.kill_mysqld("db1");
    let first = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    let writer = Writer::start(&fleet, &first.primary).await;
    wait_acked(&writer, 20).await;
    (fleet, first_acked, writer, sampler, first.primary)
}

/// The other surviving replica besides `primary`.
fn other_than(primary: &str) -> &'static str {
    if primary == "db2" { "db3" } else { "db2" }
}

/// Every id in `acked` is on `host`.
async fn still_there(fleet: &TestFleet, acked: &[u64], host: &str) {
    let present = ids_on(fleet, host).await;
    let missing: Vec<&u64> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "first writer's ids missing on {host}: {missing:?}"
    );
}

on_both_flavors! {
async fn the_new_primary_killed_while_the_old_one_restarts_is_replaced(flavor: Flavor) {
    let (mut fleet, first_acked, writer, sampler, p) = first_failover_done(flavor).await;
    fleet
        .wait_until("db1 shown as left behind", |c| {
            member(c, "db1").rejoining && has_problem(c, "not-rejoined", "db1")
        })
        .await;
    // The new primary dies while the old one is on its way back: db1
    // comes up fenced, with nobody writable to rejoin. It must not count
    // against the last replica's confirmation.
    fleet.kill_mysqld(&p);
    fleet.start_mysqld("db1").unwrap();
    let last = other_than(&p);
    let second = new_primary(&fleet, &p, &[last, "db1"]).await;
    assert_eq!(second.primary, last, "a member left behind is never promoted");
    assert_eq!(completed_failovers(&fleet), 2);
    rejoined_or_marked(&fleet, "db1").await;
    check_witnesses(&fleet, writer, sampler, last).await;
    still_there(&fleet, &first_acked, last).await;
}
}

#[tokio::test]
async fn the_new_primary_dying_while_the_old_one_is_still_down_is_replaced_and_the_old_one_rejoins_later()
 {
    let (mut fleet, first_acked, writer, sampler, p) = first_failover_done(Flavor::MariaDb).await;
    fleet.kill_mysqld(&p);
    let last = other_than(&p);
    // db1's agent says its mysqld is down: it cannot confirm, and must not
    // count against the one replica that does
    let second = new_primary(&fleet, &p, &[last]).await;
    assert_eq!(second.primary, last);
    // both dead primaries are left behind, and status says so
    fleet
        .wait_until("both dead primaries shown as left behind", |c| {
            ["db1", p.as_str()]
                .iter()
                .all(|h| member(c, h).rejoining && has_problem(c, "not-rejoined", h))
        })
        .await;
    let evidence = events(&fleet)
        .iter()
        .rev()
        .find(|e| e["kind"] == "failover-completed")
        .map(|e| e.to_string())
        .unwrap();
    assert!(
        evidence.contains("db1: left behind by the last operation"),
        "the evidence names the member left out: {evidence}"
    );
    // the last server has no semi-sync acker until db1 is back
    fleet.start_mysqld("db1").unwrap();
    rejoined_or_marked(&fleet, "db1").await;
    fleet.start_mysqld(&p).unwrap();
    rejoined_or_marked(&fleet, &p).await;
    check_witnesses(&fleet, writer, sampler, last).await;
    still_there(&fleet, &first_acked, last).await;
}

#[tokio::test]
async fn a_coordinator_killed_before_the_repairs_after_a_failover_leaves_them_to_the_other() {
    let (mut fleet, writer, sampler) = loaded_fleet_on(Flavor::MariaDb, 3, TWO_FAILOVERS).await;
    fleet.kill_mysqld("db1");
    let first = new_primary(&fleet, "db1", &["db2", "db3", "db4"]).await;
    // The active dies with db1's repairs still ahead (its mysqld is down:
    // nothing can rejoin it yet); they fall to the other coordinator.
    let active = sole_active(&fleet.coordinators())
        .map(|c| c["id"].as_str().unwrap().to_string())
        .expect("an active coordinator");
    fleet.kill(&format!("coordinator-{active}"));
    fleet
        .wait_coordinators("the other coordinator active", |c| {
            sole_active(c).is_some_and(|a| a["id"] != active.as_str())
        })
        .await;
    fleet.start_mysqld("db1").unwrap();
    rejoined_or_marked(&fleet, "db1").await;
    let rejoin = events(&fleet)
        .into_iter()
        .rev()
        .find(|e| (e["kind"] == "rejoined" || e["kind"] == "needs-rebuild") && e["host"] == "db1")
        .expect("db1's repair recorded");
    assert!(
        !rejoin
            .to_string()
            .contains(&format!("\"coordinator\":\"{active}\"")),
        "repaired by the new active: {rejoin}"
    );
    // and the next failure is still handled, by the new active
    let p = first.primary.clone();
    fleet.kill_mysqld(&p);
    let followers: Vec<&str> = ["db2", "db3", "db4"]
        .into_iter()
        .filter(|h| *h != p)
        .collect();
    let second = new_primary(&fleet, &p, &followers).await;
    check_witnesses(&fleet, writer, sampler, &second.primary).await;
}
