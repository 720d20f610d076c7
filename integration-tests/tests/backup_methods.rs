//! Incremental and logical backups with real processes: taken by an agent
//! from a real replica under write load, verified in a scratch server,
//! restored onto another replica to the backup's GTID (or beyond it from
//! the archived binlogs), and compared row for row with the primary.

use std::collections::BTreeSet;
use std::time::Duration;

use dbfleet_integration_tests::backups::{backup, now_ms, rows, wait_archived};
use dbfleet_integration_tests::workload::{Writer, ids_on};
use dbfleet_integration_tests::{PATIENCE, TestFleet, on_both_flavors, sole_active};
use dbfleet_proto::model::Flavor;
use serde_json::Value;

const TABLE: &str = "app.changes";

/// The backups of this fleet are read at no more than this, which the
/// manifests must show.
const RATE_LIMIT_MIB_PER_S: u64 = 16;

async fn fleet() -> TestFleet {
    fleet_on(Flavor::MariaDb).await
}

async fn fleet_on(flavor: Flavor) -> TestFleet {
    let fleet = TestFleet::start_spec(2, 1, |spec| {
        spec.flavor = flavor;
        spec.agent_backup = format!(
            "[backup]\nrepository = {:?}\nrate_limit_mib_per_s = {RATE_LIMIT_MIB_PER_S}\n",
            spec.dir.join("backups")
        );
    })
    .await;
    fleet
        .wait_coordinators("an active coordinator", |c| sole_active(c).is_some())
        .await;
    fleet
        .sql(
            "db1",
            &format!("CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY, note VARCHAR(40))"),
        )
        .await
        .unwrap();
    let values: Vec<String> = (1..=100).map(|i| format!("({i}, 'original')")).collect();
    fleet
        .sql(
            "db1",
            &format!("INSERT INTO {TABLE} VALUES {}", values.join(",")),
        )
        .await
        .unwrap();
    fleet
}

/// Waits until the writer had `n` more writes acknowledged.
async fn more_writes(writer: &Writer, n: usize) {
    let target = writer.acked_count() + n;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while writer.acked_count() < target {
        assert!(tokio::time::Instant::now() < give_up, "the writer is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Updates, deletes and inserts rows of [`TABLE`] on the primary.
async fn change_rows(fleet: &TestFleet, tag: &str, from: u64) {
    for sql in [
        format!("UPDATE {TABLE} SET note = '{tag}' WHERE id % 7 = 0"),
        format!(
            "DELETE FROM {TABLE} WHERE id BETWEEN {from} AND {}",
            from + 4
        ),
        format!(
            "INSERT INTO {TABLE} VALUES ({}, '{tag}'), ({}, '{tag}')",
            from + 1000,
            from + 1001
        ),
    ] {
        fleet.sql("db1", &sql).await.unwrap();
    }
}

fn verify(fleet: &TestFleet, id: &str) {
    let (ok, v) = fleet.cli_json(&["backup", "verify", id]);
    assert!(ok, "{v}");
    assert_eq!(v["verification"], "verified", "{v}");
}

fn restore_to_gtid(fleet: &TestFleet, id: &str, host: &str, gtid: &str) {
    let (ok, r) = fleet.cli_json(&["backup", "restore", id, "--host", host, "--to-gtid", gtid]);
    assert!(ok, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
}

/// The writer's rows on `host` are exactly the primary's first rows: the
/// writer commits one id per transaction in increasing order, so the rows
/// at any GTID are a prefix. Returns how many.
async fn writer_rows_are_a_prefix_of_the_primary(fleet: &TestFleet, host: &str) -> usize {
    let here = ids_on(fleet, host).await;
    let last = here.last().copied().unwrap_or(0);
    let primary: BTreeSet<u64> = ids_on(fleet, "db1")
        .await
        .into_iter()
        .filter(|id| *id <= last)
        .collect();
    assert_eq!(here, primary, "{host}'s writer rows, row for row");
    here.len()
}

/// A completed backup's manifest, checked to show that its stream was
/// read no faster than the fleet's rate limit (a lower bound the throttle
/// enforces, so it holds however slow the machine).
fn manifest(b: &Value) -> &Value {
    let m = &b["manifest"];
    let limit = RATE_LIMIT_MIB_PER_S << 20;
    assert_eq!(m["rate_limit_bytes_per_s"], limit, "{m}");
    let took_ms =
        m["finished_at_unix_ms"].as_i64().unwrap() - m["started_at_unix_ms"].as_i64().unwrap();
    let stream = m["stream_bytes"].as_u64().unwrap();
    assert!(
        took_ms as u64 >= stream * 1000 / limit,
        "{stream} stream bytes in {took_ms} ms exceed {RATE_LIMIT_MIB_PER_S} MiB/s"
    );
    m
}

#[tokio::test]
async fn an_incremental_backup_under_write_load_restores_its_whole_chain_row_for_row() {
    let fleet = fleet().await;
    let out = fleet.cli(&["backup", "run", "--cluster", "main", "--incremental"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("take a full backup first"),
        "{err}"
    );
    let writer = Writer::start(&fleet, "db1").await;
    more_writes(&writer, 20).await;
    let full = backup(&fleet, &["--host", "db2"]);
    let full_id = full["id"].as_str().unwrap();
    change_rows(&fleet, "after the full", 10).await;
    more_writes(&writer, 20).await;
    let inc1 = backup(&fleet, &["--incremental"]);
    assert_eq!(inc1["host"], "db2", "on the full backup's host: {inc1}");
    assert_eq!(inc1["parent"], full_id, "{inc1}");
    assert_eq!(
        manifest(&inc1)["lsn_from"],
        manifest(&full)["lsn_to"],
        "it copies the pages changed since the full one"
    );
    change_rows(&fleet, "after the first incremental", 30).await;
    more_writes(&writer, 20).await;
    let inc2 = backup(&fleet, &["--incremental"]);
    assert_eq!(inc2["parent"], inc1["id"], "{inc2}");
    let inc2_id = inc2["id"].as_str().unwrap();
    let out = fleet.cli(&[
        "backup",
        "run",
        "--cluster",
        "main",
        "--incremental",
        "--host",
        "db3",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("taken on db2"),
        "{err}"
    );

    verify(&fleet, inc2_id);
    let at = manifest(&inc2)["end_gtid"].as_str().unwrap().to_string();
    wait_archived(&fleet, "db1", now_ms()).await;
    restore_to_gtid(&fleet, inc2_id, "db3", &at);
    writer.stop().await;

    assert_eq!(
        fleet.query_one("db3", "SELECT @@gtid_slave_pos").await,
        Some(at),
        "db3 holds exactly the incremental backup's transactions"
    );
    assert_eq!(
        rows(&fleet, "db3", TABLE).await,
        rows(&fleet, "db1", TABLE).await,
        "every update, delete and insert of both increments is there"
    );
    let n = writer_rows_are_a_prefix_of_the_primary(&fleet, "db3").await;
    assert!(n >= 60, "the writes taken while the increments ran: {n}");
}

on_both_flavors! {
async fn a_logical_backup_under_write_load_restores_and_replays_row_for_row(flavor: Flavor) {
    let fleet = fleet_on(flavor).await;
    for sql in [
        "CREATE VIEW app.kept AS SELECT id FROM app.changes WHERE note = 'original'",
        "CREATE PROCEDURE app.count_changes() SELECT COUNT(*) FROM app.changes",
        "CREATE USER reporter@'%' IDENTIFIED BY 'reports'",
        "GRANT SELECT ON app.* TO reporter@'%'",
    ] {
        fleet.sql("db1", sql).await.unwrap();
    }
    let writer = Writer::start(&fleet, "db1").await;
    more_writes(&writer, 20).await;
    let dump = backup(&fleet, &["--method", "logical"]);
    assert_eq!(dump["method"], "logical");
    assert_ne!(dump["host"], "db1", "a replica takes it: {dump}");
    assert!(
        manifest(&dump)["tables"].as_u64().unwrap_or(0) >= 2,
        "{dump}"
    );
    let id = dump["id"].as_str().unwrap();
    let out = fleet.cli(&[
        "backup",
        "run",
        "--cluster",
        "main",
        "--method",
        "logical",
        "--incremental",
    ]);
    assert!(
        !out.status.success(),
        "a logical backup is never incremental"
    );
    verify(&fleet, id);

    // Changes after the dump, up to a chosen GTID, then one too late.
    change_rows(&fleet, "after the dump", 40).await;
    more_writes(&writer, 20).await;
    let (executed, replicated, accounts) = match flavor {
        Flavor::MariaDb => (
            "SELECT @@gtid_binlog_pos",
            "SELECT @@gtid_slave_pos",
            "SELECT GROUP_CONCAT(User, '@', Host ORDER BY User, Host) FROM mysql.global_priv",
        ),
        Flavor::MySql => (
            "SELECT @@GLOBAL.gtid_executed",
            "SELECT @@GLOBAL.gtid_executed",
            "SELECT GROUP_CONCAT(User, '@', Host ORDER BY User, Host) FROM mysql.user",
        ),
    };
    let chosen = fleet.query_one("db1", executed).await.unwrap();
    let expected = rows(&fleet, "db1", TABLE).await;
    fleet
        .sql(
            "db1",
            &format!("INSERT INTO {TABLE} VALUES (9999, 'too late')"),
        )
        .await
        .unwrap();
    wait_archived(&fleet, "db1", now_ms()).await;
    restore_to_gtid(&fleet, id, "db3", &chosen);
    writer.stop().await;

    assert_eq!(fleet.query_one("db3", replicated).await, Some(chosen));
    assert_eq!(rows(&fleet, "db3", TABLE).await, expected, "row for row");
    writer_rows_are_a_prefix_of_the_primary(&fleet, "db3").await;
    assert_eq!(
        fleet
            .query_one("db3", "SELECT COUNT(*) FROM app.kept")
            .await
            .and_then(|n| n.parse::<usize>().ok()),
        Some(expected.values().filter(|n| *n == "original").count()),
        "the view came back"
    );
    assert_eq!(
        fleet
            .query_one(
                "db3",
                "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_NAME = 'count_changes'"
            )
            .await
            .as_deref(),
        Some("1"),
        "the procedure came back"
    );
    assert!(
        fleet
            .query_one("db3", "SHOW GRANTS FOR reporter@'%'")
            .await
            .is_some(),
        "the accounts came back"
    );
    assert_eq!(
        fleet.query_one("db3", accounts).await,
        fleet.query_one("db1", accounts).await,
        "exactly the source's accounts, none of the new server's own"
    );
}
}
