//! Failover and switchover with real processes: three real servers
//! (lossless semi-sync; the main tests on MariaDB and on MySQL), three agents, two coordinators, a writer that
//! records every acknowledged write and a sampler that checks every 50 ms
//! how many members accept writes. Every test checks: never two writable
//! members, no acknowledged write missing on the new primary, every
//! replica replicating from the new primary.

use std::time::Duration;

use dbfleet_integration_tests::failover::{
    check_witnesses, cut_off_db1, events, evidence_of, loaded_fleet, loaded_fleet_of,
    loaded_fleet_on, new_primary, semi_sync_may_fall_back, wait_acked,
};
use dbfleet_integration_tests::flavored::{
    on_read_only_replica, semi_sync_replica_off, semi_sync_source_enabled, start_io, stop_io,
};
use dbfleet_integration_tests::on_both_flavors;
use dbfleet_integration_tests::workload::{Sampler, Writer};
use dbfleet_integration_tests::{PATIENCE, TestFleet, member, sole_active};
use dbfleet_proto::model::Flavor;
use dbfleet_proto::pb;
use serde_json::Value;

/// After the active coordinator `killed` was killed mid-failover: waits
/// until the other one finished it, checks the witnesses, that it was
/// resumed and completed under the new active's epoch; returns the new
/// primary's view and the completion event.
async fn finished_by_the_other(
    fleet: &TestFleet,
    writer: Writer,
    sampler: Sampler,
    killed: &str,
) -> (pb::ClusterView, String) {
    fleet
        .wait_until("the failover finished by the other coordinator", |c| {
            c.control.as_ref().is_some_and(|k| k.operation.is_empty()) && c.primary != "db1"
        })
        .await;
    let view = new_primary(fleet, "db1", &["db2", "db3"]).await;
    check_witnesses(fleet, writer, sampler, &view.primary).await;
    evidence_of(fleet, "failover-resumed");
    let done = evidence_of(fleet, "failover-completed");
    assert!(
        !done.contains(&format!("\"coordinator\":\"{killed}\"")),
        "completed under the new active's epoch: {done}"
    );
    (view, done)
}

fn pid(fleet: &TestFleet, name: &str) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(fleet.pid(name).expect("running") as i32)
}

on_both_flavors! {
async fn kill_9_of_the_primary_mysqld_fails_over_fast_and_the_old_primary_rejoins(flavor: Flavor) {
    let (mut fleet, writer, sampler) = loaded_fleet_on(flavor, 2, "").await;
    // status says beforehand what a failover would find
    let status = fleet.status_json();
    let ready = &status["clusters"][0]["readiness"];
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(ready["candidate"] == "db2" || ready["candidate"] == "db3", "{ready}");
    assert!(
        ready["mysqld_death_proof"].as_str().unwrap().contains("agent of db1")
            && ready["host_death_proof"].as_str().unwrap().contains("lossless semi-sync")
            && ready["data_loss"].is_null(),
        "{ready}"
    );
    fleet.kill_mysqld("db1");
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    let primary = view.primary.clone();
    check_witnesses(&fleet, writer, sampler, &primary).await;
    // the new primary runs semi-sync as the old one did, so the next
    // failover can be fenced by it too
    let s = fleet.server(&primary).unwrap();
    let mut c = mysql_async::Conn::new(s.root_opts(&fleet.credentials.root))
        .await
        .unwrap();
    let on: Option<u8> =
        mysql_async::prelude::Queryable::query_first(&mut c, semi_sync_source_enabled(flavor))
            .await
            .unwrap();
    assert_eq!(on, Some(1), "semi-sync source enabled on {primary}");
    let proof = evidence_of(&fleet, "failover-completed");
    assert!(
        proof.contains("agent of db1 confirmed stopped"),
        "fence proof from the old primary's agent: {proof}"
    );
    // the status JSON the issue names: one writable primary, the others following
    let status = fleet.status_json();
    let c = &status["clusters"][0];
    assert_eq!(c["primary"], primary.as_str());
    // the old primary comes back read-only and rejoins as a replica
    fleet.start_mysqld("db1").unwrap();
    new_primary(&fleet, "db1", &["db1", "db2", "db3"]).await;
    evidence_of(&fleet, "rejoined");
}
}

on_both_flavors! {
async fn death_of_the_primary_host_is_fenced_by_lossless_semi_sync(flavor: Flavor) {
    let (mut fleet, writer, sampler) = loaded_fleet_on(flavor, 2, "").await;
    fleet.kill("agent-db1");
    fleet.kill_mysqld("db1");
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    let proof = evidence_of(&fleet, "failover-completed");
    assert!(
        proof.contains("lossless semi-sync") && proof.contains("agent not reporting"),
        "slow path, fenced by semi-sync: {proof}"
    );
    // the host returns: rejoined, or marked for rebuild if it holds a
    // transaction that was never acknowledged
    fleet.start_mysqld("db1").unwrap();
    fleet.start_agent("db1").unwrap();
    fleet
        .wait_until("db1 rejoined or marked for rebuild", |c| {
            let m = member(c, "db1");
            m.needs_rebuild || (m.source == member(c, &view.primary).mysql_address && m.io_running)
        })
        .await;
}
}

#[tokio::test]
async fn a_hung_primary_is_killed_by_its_agent_and_replaced() {
    let (fleet, writer, sampler) = loaded_fleet("").await;
    nix::sys::signal::kill(
        pid(&fleet, "mariadbd-db1"),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    let proof = evidence_of(&fleet, "failover-completed");
    assert!(
        proof.contains("killed the unresponsive mysqld"),
        "the agent killed the hung server: {proof}"
    );
}

on_both_flavors! {
async fn a_replica_with_an_errant_transaction_is_never_promoted(flavor: Flavor) {
    // Three replicas: with the errant one set aside and the old primary
    // dead, the fourth member is the new primary's semi-sync acker
    // (lossless semi-sync halts writes with no replica at all).
    let (mut fleet, writer, sampler) = loaded_fleet_on(flavor, 3, "").await;
    let out = fleet.cli(&["promotion-rule", "db3", "prefer"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // db3 stops acknowledging: otherwise it may be the only replica that
    // received the last acknowledged write, which its errant transaction
    // then keeps it from applying, and the failover rightly holds
    for sql in [
        semi_sync_replica_off(flavor),
        stop_io(flavor),
        start_io(flavor),
    ] {
        fleet.sql("db3", sql).await.unwrap();
    }
    // a write made directly on the replica: a GTID its primary never had
    for sql in on_read_only_replica(flavor, "INSERT INTO app.writer_log (id) VALUES (999999999)") {
        fleet.sql("db3", &sql).await.unwrap();
    }
    fleet.kill_mysqld("db1");
    let view = new_primary(&fleet, "db1", &["db2", "db4"]).await;
    assert_eq!(view.primary, "db2", "db3 is preferred but errant");
    check_witnesses(&fleet, writer, sampler, "db2").await;
    let why = evidence_of(&fleet, "failover-completed");
    assert!(why.contains("db3: errant transactions"), "{why}");
    fleet
        .wait_until("db3 marked for rebuild", |c| member(c, "db3").needs_rebuild)
        .await;
}
}

on_both_flavors! {
async fn a_lagging_preferred_candidate_catches_up_before_promotion(flavor: Flavor) {
    let (mut fleet, writer, sampler) = loaded_fleet_on(flavor, 2, "").await;
    let out = fleet.cli(&["promotion-rule", "db2", "prefer"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // db2 stops receiving; db3 alone acknowledges the next writes
    fleet.sql("db2", stop_io(flavor)).await.unwrap();
    let n = writer.acked_count();
    wait_acked(&writer, n + 30).await;
    fleet.kill_mysqld("db1");
    let view = new_primary(&fleet, "db1", &["db3"]).await;
    assert_eq!(view.primary, "db2", "the preferred candidate");
    check_witnesses(&fleet, writer, sampler, "db2").await;
    let why = evidence_of(&fleet, "failover-completed");
    assert!(why.contains("catching up from db3"), "{why}");
}
}

fn switchover(fleet: &TestFleet, to: &str) -> Value {
    let out = fleet.cli(&[
        "switchover",
        "--cluster",
        "main",
        "--to",
        to,
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "switchover to {to}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("switchover JSON")
}

on_both_flavors! {
async fn switchover_there_and_back_loses_nothing(flavor: Flavor) {
    let (fleet, writer, sampler) = loaded_fleet_on(flavor, 2, "").await;
    let there = switchover(&fleet, "db2");
    assert_eq!(there["outcome"], "completed");
    assert_eq!(there["new_primary"], "db2");
    new_primary(&fleet, "db1", &["db1", "db3"]).await;
    let n = writer.acked_count();
    wait_acked(&writer, n + 20).await;
    let back = switchover(&fleet, "db1");
    assert_eq!(back["outcome"], "completed");
    new_primary(&fleet, "db2", &["db2", "db3"]).await;
    check_witnesses(&fleet, writer, sampler, "db1").await;
    assert!(
        back["fence_proof"]
            .as_str()
            .unwrap()
            .contains("confirmed read-only")
    );
}
}

on_both_flavors! {
async fn a_coordinator_killed_mid_failover_is_replaced_and_the_other_finishes(flavor: Flavor) {
    // The post hook blocks the first time it runs, holding the failover at
    // its last journaled step while the active coordinator is killed.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hook-ran");
    let extra = format!(
        "[failover]\npost_hook = [\"sh\", \"-c\", \"if [ ! -e {m} ]; then touch {m}; sleep 600; fi\"]\nhook_timeout = \"900s\"\n",
        m = marker.display()
    );
    let (mut fleet, writer, sampler) = loaded_fleet_on(flavor, 2, &extra).await;
    let c = fleet
        .wait_coordinators("an active", |c| sole_active(c).is_some())
        .await;
    let active = sole_active(&c).unwrap()["id"].as_str().unwrap().to_string();
    fleet.kill_mysqld("db1");
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !marker.exists() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the post hook never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.kill(&format!("coordinator-{active}"));
    finished_by_the_other(&fleet, writer, sampler, &active).await;
}
}

#[tokio::test]
async fn the_primary_host_cut_off_by_iptables_is_replaced_and_fenced_when_it_returns() {
    let (fleet, writer, sampler) = loaded_fleet("").await;
    let cut = cut_off_db1(&fleet);
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    // the sampler cannot see the cut-off host; it checks the rest while cut
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    let proof = evidence_of(&fleet, "failover-completed");
    assert!(proof.contains("lossless semi-sync"), "{proof}");
    drop(cut);
    // back on the network, still writable but unable to commit (no
    // acknowledging replica): the coordinator fences it, then it rejoins
    // or is marked for rebuild
    let end = fleet
        .wait_until("db1 fenced and rejoined or marked", |c| {
            let m = member(c, "db1");
            m.reachable
                && !m.writable
                && (m.needs_rebuild || m.source == member(c, &view.primary).mysql_address)
        })
        .await;
    assert_eq!(end.members.iter().filter(|m| m.writable).count(), 1);
}

/// The read-only guard of `host`'s agent as it is on disk.
fn guard_of(fleet: &TestFleet, host: &str) -> Value {
    let path = fleet
        .dir
        .join(format!("{host}/agent-state/read-only-guard.json"));
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_cut_off_primary_fences_itself_and_a_coordinator_killed_while_waiting_is_replaced() {
    let mut fleet = TestFleet::start_spec(2, 2, |spec| {
        spec.self_fence_timeout = Some(Duration::from_secs(3))
    })
    .await;
    let c = fleet
        .wait_coordinators("an active coordinator", |c| sole_active(c).is_some())
        .await;
    let active = sole_active(&c).unwrap()["id"].as_str().unwrap().to_string();
    // Semi-sync that falls back to asynchronous replication is no fence
    // proof, yet it still keeps acknowledged writes on a replica.
    semi_sync_may_fall_back(&fleet).await;
    let writer = Writer::start(&fleet, "db1").await;
    let sampler = Sampler::start(&fleet);
    wait_acked(&writer, 20).await;

    let cut = cut_off_db1(&fleet);

    // The active reaches the Fence step, where it can only wait for db1's
    // self-fence; it is killed there and the other coordinator resumes.
    fleet
        .wait_until("the failover at its Fence step", |c| {
            c.control
                .as_ref()
                .is_some_and(|k| k.operation.contains("at step Fence"))
        })
        .await;
    fleet.kill(&format!("coordinator-{active}"));

    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let g = guard_of(&fleet, "db1");
        if g["fenced"] == true {
            let reason = g["reason"].as_str().unwrap_or_default();
            assert!(reason.starts_with("self-fence"), "{g}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "db1 never fenced itself: {g}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (view, done) = finished_by_the_other(&fleet, writer, sampler, &active).await;
    assert!(
        done.contains("self-fence of db1 provably elapsed"),
        "{done}"
    );

    drop(cut);
    let end = fleet
        .wait_until("db1 back read-only and rejoined or marked", |c| {
            let m = member(c, "db1");
            m.reachable
                && !m.writable
                && m.fenced
                && (m.needs_rebuild || m.source == member(c, &view.primary).mysql_address)
        })
        .await;
    assert_eq!(end.members.iter().filter(|m| m.writable).count(), 1);
}

#[tokio::test]
async fn replicas_get_the_cluster_policy_heartbeat_and_net_timeout_and_are_retuned_when_it_changes()
{
    let fleet = TestFleet::start(2, 1).await;
    fleet
        .wait_coordinators("an active coordinator", |c| sole_active(c).is_some())
        .await;
    // MariaDB's defaults: the replica would notice a dead primary only
    // after a minute, and detection waits for every replica to notice.
    for sql in [
        "STOP SLAVE",
        "SET GLOBAL slave_net_timeout = 60",
        "CHANGE MASTER TO MASTER_HEARTBEAT_PERIOD = 30",
        "START SLAVE",
    ] {
        fleet.sql("db2", sql).await.unwrap();
    }
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let tuned = loop {
        if let Some(e) = events(&fleet)
            .into_iter()
            .find(|e| e["kind"] == "replication-tuned" && e["host"] == "db2")
        {
            break e;
        }
        assert!(tokio::time::Instant::now() < give_up, "db2 was never tuned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The agent's collection may fall between the statements above (its
    // variables read before SET GLOBAL, its status after CHANGE MASTER):
    // the event names what that observation showed off, and the repoint
    // sets both, as checked below.
    let message = tuned["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("heartbeat 30000 ms") || message.contains("net timeout 60000 ms"),
        "{tuned}"
    );
    assert_eq!(
        fleet
            .query_one("db2", "SELECT @@slave_net_timeout")
            .await
            .as_deref(),
        Some("4")
    );
    let period = fleet
        .query_one(
            "db2",
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME = 'SLAVE_HEARTBEAT_PERIOD'",
        )
        .await;
    assert_eq!(period.as_deref(), Some("1.000"));
    let db1 = fleet.info.members[0].address.clone();
    fleet
        .wait_until("db2 replicating from db1 again", |c| {
            let m = member(c, "db2");
            m.io_running && m.sql_running && m.source.starts_with(&db1)
        })
        .await;

    // A policy that would have replicas time out before a heartbeat, or a
    // net timeout MariaDB cannot keep, is refused and changes nothing.
    for (args, expected) in [
        (
            ["--replica-heartbeat", "5s", "--replica-net-timeout", "3s"],
            "must be shorter than the replica net timeout",
        ),
        (
            [
                "--replica-heartbeat",
                "500ms",
                "--replica-net-timeout",
                "2500ms",
            ],
            "must be whole seconds",
        ),
    ] {
        let mut all = vec!["policy", "--cluster", "main"];
        all.extend(args);
        let out = fleet.cli(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        fleet.status_json()["clusters"][0]["replica_net_timeout_ms"],
        4000
    );

    // The cluster's own policy: every replica is re-tuned to it.
    let (ok, policy) = fleet.cli_json(&[
        "policy",
        "--cluster",
        "main",
        "--replica-heartbeat",
        "500ms",
        "--replica-net-timeout",
        "3s",
    ]);
    assert!(ok, "{policy}");
    assert_eq!(policy["replica_heartbeat_ms"], 500, "{policy}");
    assert_eq!(policy["replica_net_timeout_ms"], 3000, "{policy}");
    assert_eq!(policy["max_lag_seconds"], 60, "unchanged: {policy}");
    let status = fleet.status_json();
    assert_eq!(status["clusters"][0]["replica_heartbeat_ms"], 500);
    for host in ["db2", "db3"] {
        let give_up = tokio::time::Instant::now() + PATIENCE;
        loop {
            let net = fleet.query_one(host, "SELECT @@slave_net_timeout").await;
            let period = fleet
                .query_one(
                    host,
                    "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                     WHERE VARIABLE_NAME = 'SLAVE_HEARTBEAT_PERIOD'",
                )
                .await;
            if net.as_deref() == Some("3") && period.as_deref() == Some("0.500") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "{host} not re-tuned: net timeout {net:?}, heartbeat {period:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    fleet
        .wait_until("both replicas replicating from db1", |c| {
            ["db2", "db3"].iter().all(|h| {
                let m = member(c, h);
                m.io_running && m.sql_running && m.source.starts_with(&db1)
            })
        })
        .await;
}

#[tokio::test]
async fn a_failover_without_fence_proof_blocks_and_its_replicas_resume_when_the_primary_returns() {
    let (fleet, writer, sampler) = loaded_fleet("").await;
    // Semi-sync that may fall back is no proof, and there is no STONITH
    // hook and no self-fence: a cut-off primary cannot be proven fenced.
    semi_sync_may_fall_back(&fleet).await;
    let cut = cut_off_db1(&fleet);
    let blocked = fleet
        .wait_until("the failover blocked with the replicas frozen", |c| {
            c.control.as_ref().is_some_and(|k| {
                k.needs_ack && k.operation.is_empty() && k.frozen == ["db2", "db3"]
            })
        })
        .await;
    assert_eq!(blocked.primary, "db1", "nobody was promoted");
    let why = evidence_of(&fleet, "failover-blocked");
    assert!(
        why.contains("no fence proof for db1") && why.contains("--confirm-fenced db1"),
        "{why}"
    );
    for host in ["db2", "db3"] {
        assert!(!member(&blocked, host).io_running, "{host} stays stopped");
    }
    drop(cut);
    let end = fleet
        .wait_until("the replicas resumed from db1", |c| {
            c.control.as_ref().is_some_and(|k| k.frozen.is_empty())
                && ["db2", "db3"].iter().all(|h| {
                    let m = member(c, h);
                    m.io_running && m.sql_running && m.source == member(c, "db1").mysql_address
                })
        })
        .await;
    assert_eq!(end.primary, "db1");
    evidence_of(&fleet, "thawed");
    check_witnesses(&fleet, writer, sampler, "db1").await;
}

#[tokio::test]
async fn an_unmanaged_semi_sync_replica_voids_the_semi_sync_fence_proof() {
    let (mut fleet, writer, sampler) = loaded_fleet_of(3, "").await;
    // db4 leaves dbfleet's management but keeps acknowledging db1's
    // commits: its agent stops, it leaves the lease's voters (so the
    // other three keep a majority when db1 dies) and the operator
    // forgets it.
    fleet.kill("agent-db4");
    let voter = |h: &str| {
        let m = fleet.info.members.iter().find(|m| m.host == h).unwrap();
        format!("{h}@{}", m.agent_address)
    };
    let (db1, db2, db3) = (voter("db1"), voter("db2"), voter("db3"));
    let out = fleet.cli(&["voters", "set", &db1, &db2, &db3]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let give_up = std::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    loop {
        let out = fleet.cli(&["agents", "forget", "db4"]);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            std::time::Instant::now() < give_up,
            "db4 never forgotten: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet
        .wait_until("db4 no longer a member", |c| {
            !c.members.iter().any(|m| m.host == "db4")
        })
        .await;
    assert_eq!(
        fleet
            .query_one("db4", "SELECT @@rpl_semi_sync_slave_enabled")
            .await
            .as_deref(),
        Some("1"),
        "db4 still acknowledges db1"
    );
    // The primary host dies: lossless semi-sync with db2 and db3 frozen is
    // no proof while db4 may still acknowledge, so the failover blocks.
    fleet.kill("agent-db1");
    fleet.kill("mariadbd-db1");
    let blocked = fleet
        .wait_until("the failover blocked", |c| {
            c.control.as_ref().is_some_and(|k| {
                k.needs_ack && k.operation.is_empty() && k.frozen == ["db2", "db3"]
            })
        })
        .await;
    assert_eq!(blocked.primary, "db1", "nobody was promoted");
    // (db1's last report may still be within the agent timeout: the host
    // path decides before it runs out)
    assert!(
        blocked
            .members
            .iter()
            .all(|m| m.host == "db1" || !m.writable),
        "nobody was promoted"
    );
    let why = evidence_of(&fleet, "failover-blocked");
    assert!(
        why.contains("unmanaged replica may still acknowledge"),
        "the semi-sync proof names the unmanaged replica: {why}"
    );
    writer.stop().await;
    let ((most, which), _) = sampler.stop().await;
    assert!(most <= 1, "{most} members were writable at once: {which:?}");
}

#[tokio::test]
async fn a_primary_host_that_comes_back_writable_is_fenced_by_its_own_agent() {
    let (mut fleet, writer, sampler) = loaded_fleet("").await;
    fleet.kill("agent-db1");
    fleet.kill("mariadbd-db1");
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    // No coordinator repair may fence it for us: only the agent acts.
    let out = fleet.cli(&["maintenance", "on", "--cluster", "main"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The host comes back with a mysqld that starts writable (a my.cnf
    // without read_only) while its agent is still down.
    fleet.start_mysqld("db1").unwrap();
    let give_up = std::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    while let Err(e) = fleet.sql("db1", "SET GLOBAL read_only = 0").await {
        assert!(
            std::time::Instant::now() < give_up,
            "db1's mysqld never answered: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.start_agent("db1").unwrap();
    loop {
        let g = guard_of(&fleet, "db1");
        let ro = fleet.query_one("db1", "SELECT @@read_only").await;
        if g["fenced"] == true && ro.as_deref() == Some("1") {
            let reason = g["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("restarted since the agent last saw it"),
                "{g}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "db1 was never fenced by its agent: guard {g}, read_only {ro:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = fleet.cli(&["maintenance", "off", "--cluster", "main"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet
        .wait_until("db1 rejoined or marked for rebuild", |c| {
            let m = member(c, "db1");
            !m.writable
                && (m.needs_rebuild
                    || (m.source == member(c, &view.primary).mysql_address && m.io_running))
        })
        .await;
}

#[tokio::test]
async fn a_primary_only_the_coordinators_lose_is_reported_and_never_failed_over() {
    let (fleet, writer, sampler) = loaded_fleet("").await;
    // db1's host loses both coordinators, but its replicas still receive
    // from it: unreachable-primary, an alert, not a failover.
    let db1 = fleet.info.members[0].address.clone();
    let coordinators: Vec<String> = fleet
        .info
        .coordinators
        .iter()
        .map(|c| c.address.split(':').next().unwrap().to_string())
        .collect();
    let cut = dbfleet_integration_tests::Partition::cut(&fleet.slot, &[db1], &coordinators);
    fleet
        .wait_until("db1 reported as an unreachable primary", |c| {
            dbfleet_integration_tests::has_problem(c, "unreachable-primary", "db1")
        })
        .await;
    // A failover of a silent primary would start once its agent had been
    // silent for the agent timeout and then the slow window (5 s by
    // default): nothing may start while we watch twice that.
    let watch = 2 * (dbfleet_integration_tests::AGENT_TIMEOUT + Duration::from_secs(5));
    let until = std::time::Instant::now() + watch;
    while std::time::Instant::now() < until {
        let status = fleet.status_json();
        assert_eq!(status["clusters"][0]["primary"], "db1", "{status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !events(&fleet)
            .iter()
            .any(|e| e["kind"] == "failover-started"),
        "no failover started: {:#?}",
        events(&fleet)
    );
    drop(cut);
    fleet
        .wait_until("db1 observed again and the problem gone", |c| {
            member(c, "db1").reporting
                && !dbfleet_integration_tests::has_problem(c, "unreachable-primary", "db1")
        })
        .await;
    check_witnesses(&fleet, writer, sampler, "db1").await;
}

#[tokio::test]
async fn a_fenced_mysql_member_comes_back_read_only_even_if_its_my_cnf_says_writable() {
    let (mut fleet, writer, sampler) = loaded_fleet_on(Flavor::MySql, 2, "").await;
    let there = switchover(&fleet, "db2");
    assert_eq!(there["outcome"], "completed");
    new_primary(&fleet, "db1", &["db1", "db3"]).await;
    check_witnesses(&fleet, writer, sampler, "db2").await;
    // The fence persisted super_read_only in db1's mysqld-auto.cnf, and
    // the promotion in db2's, which is writable all the same.
    for host in ["db1", "db2"] {
        let path = fleet
            .server(host)
            .unwrap()
            .datadir()
            .join("mysqld-auto.cnf");
        let p = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            p.contains("\"super_read_only\": {\"Value\": \"ON\""),
            "{host}: {p}"
        );
    }
    assert_eq!(
        fleet
            .query_one("db2", "SELECT @@super_read_only")
            .await
            .as_deref(),
        Some("0")
    );
    // With its agent gone nobody but MySQL decides how db1 starts: its
    // my.cnf now says writable, and it restarts.
    fleet.kill("agent-db1");
    fleet.kill_mysqld("db1");
    let cnf = fleet.server("db1").unwrap().cnf();
    let text = std::fs::read_to_string(&cnf).unwrap();
    let writable = text
        .replace("read_only = ON", "read_only = OFF")
        .replace("super_read_only = ON", "super_read_only = OFF");
    assert_ne!(text, writable);
    std::fs::write(&cnf, writable).unwrap();
    fleet.start_mysqld("db1").unwrap();
    let s = fleet.server("db1").unwrap().clone();
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let (read_only, super_read_only) = loop {
        if let Ok(mut c) = mysql_async::Conn::new(s.root_opts(&fleet.credentials.root)).await {
            let row: Option<(u8, u8)> = mysql_async::prelude::Queryable::query_first(
                &mut c,
                "SELECT @@read_only, @@super_read_only",
            )
            .await
            .unwrap();
            break row.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "db1's mysqld never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (read_only, super_read_only),
        (1, 1),
        "persisted read-only wins"
    );
    // check-config counts the persisted setting, and without it says
    // that db1 would start writable.
    let config = fleet.dir.join("agent-db1.toml");
    let (ok, text) = fleet.check_config(&config);
    assert!(ok && !text.contains("would start writable"), "{text}");
    let persisted = fleet
        .server("db1")
        .unwrap()
        .datadir()
        .join("mysqld-auto.cnf");
    std::fs::remove_file(persisted).unwrap();
    let (ok, text) = fleet.check_config(&config);
    assert!(
        !ok && text.contains("would start writable")
            && text.contains("no super_read_only is persisted"),
        "{text}"
    );
    // Its agent back, it rejoins as a replica of db2.
    fleet.start_agent("db1").unwrap();
    new_primary(&fleet, "db1", &["db1", "db3"]).await;
}
