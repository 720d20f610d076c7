//! `dbfleet rebuild` with real processes: a replica that took an errant
//! write directly (its data is no longer the cluster's) is re-provisioned
//! with one command, by remote CLONE from a healthy replica on MySQL and
//! from the newest verified backup on MariaDB, under a writer, and
//! rejoins holding exactly the primary's rows.

use std::time::Duration;

use dbfleet_integration_tests::backups;
use dbfleet_integration_tests::flavored::on_read_only_replica;
use dbfleet_integration_tests::workload::{Writer, ids_on};
use dbfleet_integration_tests::{PATIENCE, TestFleet, has_problem, member, on_both_flavors};
use dbfleet_proto::model::Flavor;

const ERRANT: &str = "INSERT INTO app.writer_log (id) VALUES (999999999)";

on_both_flavors! {
async fn a_replica_with_an_errant_write_is_rebuilt_with_one_command_and_rejoins_row_for_row(flavor: Flavor) {
    let fleet = TestFleet::start_spec(2, 1, |spec| spec.flavor = flavor).await;
    fleet.wait_settled("an active coordinator", |_| true).await;
    let writer = Writer::start(&fleet, "db1").await;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while writer.acked_count() < 20 {
        assert!(tokio::time::Instant::now() < give_up, "the writer is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for sql in on_read_only_replica(flavor, ERRANT) {
        fleet.sql("db3", &sql).await.unwrap();
    }
    assert!(ids_on(&fleet, "db3").await.contains(&999999999));

    // Never the primary; never cloned from itself or a stranger.
    let out = fleet.cli(&["rebuild", "db1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && (err.contains("db1 is the primary") || err.contains("db1 is writable")),
        "{err}"
    );
    match flavor {
        Flavor::MySql => {
            let out = fleet.cli(&["rebuild", "db3", "--from", "db3"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("itself"), "{err}");
        }
        // MariaDB has no CLONE: the newest verified backup, which must exist
        Flavor::MariaDb => {
            let out = fleet.cli(&["rebuild", "db3"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("no verified backup"),
                "{err}"
            );
            let b = backups::backup(&fleet, &["--host", "db2"]);
            let id = b["id"].as_str().unwrap();
            let (ok, v) = fleet.cli_json(&["backup", "verify", id]);
            assert!(ok && v["verification"] == "verified", "{v}");
            // writes after the backup, archived: the rebuild replays them
            // (the CLI calls above block this test's runtime, and the
            // writer with it)
            let n = writer.acked_count();
            let give_up = tokio::time::Instant::now() + PATIENCE;
            while writer.acked_count() < n + 20 {
                assert!(tokio::time::Instant::now() < give_up, "the writer is stuck");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            backups::wait_archived(&fleet, "db1", backups::now_ms()).await;
        }
    }

    let (ok, r) = fleet.cli_json(&["rebuild", "db3"]);
    assert!(ok, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
    let detail = r["detail"].as_str().unwrap_or_default();
    match flavor {
        Flavor::MySql => {
            assert_eq!(r["donor"], "db2", "the healthy replica serves: {r}");
            assert!(detail.contains("cloned from"), "{r}");
        }
        // the writer wrote on after the backup: the archive is replayed
        Flavor::MariaDb => assert!(
            detail.contains("restored backup") && detail.contains("replayed"),
            "{r}"
        ),
    }
    fleet
        .wait_until("db3 replicating again, in service", |c| {
            !has_problem(c, "detached", "db3")
                && member(c, "db3").io_running
                && member(c, "db3").sql_running
        })
        .await;
    let acked = writer.stop().await;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (primary, rebuilt) = (ids_on(&fleet, "db1").await, ids_on(&fleet, "db3").await);
        if primary == rebuilt {
            assert!(!rebuilt.contains(&999999999), "the errant write is gone");
            assert!(acked.iter().all(|a| rebuilt.contains(a)), "every acknowledged write");
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "db3 does not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ro = fleet.query_one("db3", "SELECT @@read_only").await;
    assert_eq!(ro.as_deref(), Some("1"));
    if flavor == Flavor::MySql {
        // lifted for the clone, set again and persisted
        let sro = fleet.query_one("db3", "SELECT @@super_read_only").await;
        assert_eq!(sro.as_deref(), Some("1"));
    }
    let events = fleet.cli(&["events", "--cluster", "main"]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(
        text.contains("rebuild-started") && text.contains("rebuilt") && text.contains("rejoin"),
        "{text}"
    );
}
}
