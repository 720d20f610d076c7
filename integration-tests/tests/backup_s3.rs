//! Backups and the binlog archive in an S3-compatible bucket (a real
//! s3s-fs server), with real MariaDB, agents and a coordinator: physical,
//! incremental and logical backups stored and verified there, a
//! point-in-time restore replaying binlogs archived there, and a bucket
//! that hangs mid-backup failing that backup cleanly while the fleet
//! stays healthy.

use std::collections::BTreeMap;

use dbfleet_integration_tests::backups::{backup, now_ms, rows, wait_archived_in};
use dbfleet_integration_tests::s3::S3Server;
use dbfleet_integration_tests::{TestFleet, sole_active};

const TABLE: &str = "app.bucket";

/// A fleet whose agents keep backups under `fleet/` in a bucket of an S3
/// server running in the fleet's slot.
async fn fleet_on_a_bucket(replicas: usize) -> (TestFleet, S3Server) {
    let mut server = None;
    let fleet = TestFleet::start_spec(replicas, 1, |spec| {
        let [a, b, c] = spec.base;
        let slot_dir = spec.dir.parent().expect("in a slot").to_path_buf();
        let s = S3Server::start(&slot_dir.join("s3"), &format!("{a}.{b}.{c}.250"), 9000);
        spec.agent_backup = s.backup_section("fleet");
        server = Some(s);
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
    (fleet, server.expect("started"))
}

async fn insert(fleet: &TestFleet, from: u64, to: u64, note: &str) {
    let values: Vec<String> = (from..=to).map(|i| format!("({i}, '{note}')")).collect();
    fleet
        .sql(
            "db1",
            &format!("INSERT INTO {TABLE} VALUES {}", values.join(",")),
        )
        .await
        .unwrap();
}

fn verified(fleet: &TestFleet, id: &str) {
    let (ok, v) = fleet.cli_json(&["backup", "verify", id]);
    assert!(ok, "{v}");
    assert_eq!(v["verification"], "verified", "{v}");
}

#[tokio::test]
async fn backups_verification_and_point_in_time_restore_work_on_a_bucket() {
    let (fleet, s3) = fleet_on_a_bucket(2).await;
    insert(&fleet, 1, 100, "before the full backup").await;
    let full = backup(&fleet, &["--host", "db2"]);
    let full_id = full["id"].as_str().unwrap();
    insert(&fleet, 101, 200, "before the incremental").await;
    let inc = backup(&fleet, &["--incremental"]);
    assert_eq!(inc["parent"], full_id, "{inc}");
    let inc_id = inc["id"].as_str().unwrap();
    let logical = backup(&fleet, &["--method", "logical", "--host", "db3"]);
    let logical_id = logical["id"].as_str().unwrap();
    for id in [full_id, inc_id, logical_id] {
        assert!(
            s3.objects(&format!("fleet/main/backups/{id}/manifest.json"))
                .is_file(),
            "backup {id} is in the bucket"
        );
    }
    assert!(
        !fleet.dir.join("backups").exists(),
        "nothing went to a local repository"
    );
    verified(&fleet, inc_id);
    verified(&fleet, logical_id);

    insert(&fleet, 1001, 1001, "first").await;
    let first = fleet
        .query_one("db1", "SELECT @@gtid_binlog_pos")
        .await
        .unwrap();
    insert(&fleet, 1002, 1002, "second").await;
    wait_archived_in(&s3.objects("fleet/main/binlogs"), "db1", now_ms()).await;
    let expected: BTreeMap<u64, String> = rows(&fleet, "db1", TABLE)
        .await
        .into_iter()
        .filter(|(id, _)| *id != 1002)
        .collect();
    assert_eq!(expected.len(), 201);

    let (ok, r) = fleet.cli_json(&[
        "backup",
        "restore",
        inc_id,
        "--host",
        "db3",
        "--to-gtid",
        &first,
    ]);
    assert!(ok, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(
        rows(&fleet, "db3", TABLE).await,
        expected,
        "the incremental chain and the archived binlogs up to the first write, row for row"
    );
}

#[tokio::test]
async fn a_bucket_that_hangs_mid_backup_fails_it_cleanly_and_the_fleet_stays_healthy() {
    let (fleet, s3) = fleet_on_a_bucket(1).await;
    insert(&fleet, 1, 2000, "some rows to copy").await;
    let stopped = nix::sys::signal::kill(s3.pid(), nix::sys::signal::Signal::SIGSTOP);
    stopped.unwrap();
    let (ok, b) = fleet.cli_json(&["backup", "run", "--cluster", "main", "--host", "db2"]);
    nix::sys::signal::kill(s3.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(!ok, "{b}");
    assert_eq!(b["status"], "failed", "{b}");
    let id = b["id"].as_str().unwrap();
    assert!(
        b["error"]
            .as_str()
            .unwrap_or_default()
            .contains("s3://dbfleet/fleet/main/backups"),
        "the failure names the bucket's object: {b}"
    );
    assert!(
        !s3.objects(&format!("fleet/main/backups/{id}/manifest.json"))
            .exists(),
        "no manifest: the failed backup is not usable"
    );
    let (_, listed) = fleet.cli_json(&["backup", "list", "--cluster", "main"]);
    let entry = listed["backups"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["id"] == id))
        .unwrap_or_else(|| panic!("{id} listed: {listed}"));
    assert_eq!(entry["status"], "failed", "{entry}");
    let status = fleet.status_json();
    assert_eq!(
        status["clusters"][0]["primary"], "db1",
        "no failover while the bucket hung: {status}"
    );

    let again = backup(&fleet, &["--host", "db2"]);
    verified(&fleet, again["id"].as_str().unwrap());
}
