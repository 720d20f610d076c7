//! Backup schedules and retention with real processes: the active
//! coordinator takes, verifies and deletes backups by a cluster's policy,
//! set with `dbfleet backup schedule`; failed scheduled backups are
//! retried and reported as problems.

use std::collections::BTreeSet;
use std::time::Duration;

use dbfleet_integration_tests::backups::{SmallDisk, now_ms, wait_archived};
use dbfleet_integration_tests::workload::Writer;
use dbfleet_integration_tests::{PATIENCE, TestFleet};
use serde_json::Value;

fn listed(fleet: &TestFleet) -> Vec<Value> {
    let (ok, v) = fleet.cli_json(&["backup", "list", "--cluster", "main"]);
    assert!(ok, "{v}");
    v["backups"].as_array().cloned().unwrap_or_default()
}

fn problems(fleet: &TestFleet) -> Vec<Value> {
    fleet.status_json()["clusters"][0]["problems"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn schedule(fleet: &TestFleet, args: &[&str]) -> Value {
    let mut all = vec!["backup", "schedule", "--cluster", "main"];
    all.extend(args);
    let (ok, p) = fleet.cli_json(&all);
    assert!(ok, "{p}");
    p
}

/// Polls the catalog until `done` says so, panicking with the last listing
/// after twice the usual patience (a schedule needs several backups).
async fn wait_catalog(fleet: &TestFleet, what: &str, mut done: impl FnMut(&[Value]) -> bool) {
    let give_up = tokio::time::Instant::now() + 2 * PATIENCE;
    loop {
        let l = listed(fleet);
        if done(&l) {
            return;
        }
        assert!(tokio::time::Instant::now() < give_up, "{what}: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether any archive stream of `host` still holds binlog `file`.
fn archived(fleet: &TestFleet, host: &str, file: &str) -> bool {
    let dir = fleet.dir.join("backups/main/binlogs");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|s| {
            s.file_name()
                .to_string_lossy()
                .starts_with(&format!("{host}-"))
        })
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .any(|c| {
            let name = c.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("{file}.")) && name.ends_with(".json")
        })
}

#[tokio::test]
async fn a_schedule_takes_verifies_and_expires_backups_keeping_the_newest() {
    let fleet = TestFleet::start_active(2, 1).await;
    let writer = Writer::start(&fleet, "db1").await;
    // new binlog files on the primary while backups come and go
    let rotating = {
        let s = fleet.server("db1").expect("db1").clone();
        let password = fleet.credentials.root.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(mut c) = mysql_async::Conn::new(s.root_opts(&password)).await {
                    use mysql_async::prelude::Queryable;
                    let _ = c.query_drop("FLUSH BINARY LOGS").await;
                    let _ = c.disconnect().await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    wait_archived(&fleet, "db1", now_ms()).await;
    assert!(archived(&fleet, "db1", "db1-bin.000001"));
    let p = schedule(&fleet, &[]);
    assert_eq!(p["full_every_secs"], 0, "no schedule by default: {p}");
    let p = schedule(
        &fleet,
        &["--full", "2s", "--keep-full", "2", "--verify", "true"],
    );
    assert_eq!(p["full_every_secs"], 2);
    assert_eq!(p["keep_full"], 2);
    assert_eq!(p["verify"], true);

    let repo = fleet.dir.join("backups/main/backups");
    let mut seen: Vec<String> = Vec::new();
    wait_catalog(
        &fleet,
        "backups taken, verified and the oldest deleted",
        |l| {
            for b in l {
                let id = b["id"].as_str().unwrap_or_default().to_string();
                if !seen.contains(&id) {
                    seen.push(id);
                }
            }
            let now: BTreeSet<&str> = l.iter().filter_map(|b| b["id"].as_str()).collect();
            let first_gone = seen
                .first()
                .is_some_and(|f| !now.contains(f.as_str()) && !repo.join(f).exists());
            seen.len() >= 4
                && first_gone
                && l.iter().any(|b| b["verification"] == "verified")
                && !archived(&fleet, "db1", "db1-bin.000001")
        },
    )
    .await;
    rotating.abort();
    let l = listed(&fleet);
    let kept: Vec<&Value> = l.iter().filter(|b| b["status"] == "completed").collect();
    assert!(
        kept.len() <= 3,
        "two newest full backups, and the newest verified one: {l:?}"
    );
    for b in &kept {
        let id = b["id"].as_str().unwrap();
        assert!(
            repo.join(id).join("manifest.json").is_file(),
            "a listed backup is in the repository: {id}"
        );
    }
    let p = schedule(&fleet, &["--full", "off", "--verify", "false"]);
    assert_eq!(p["full_every_secs"], 0);
    assert_eq!(p["keep_full"], 2, "other settings stay");

    // What pruning kept still serves a kept backup: a restore from it
    // replays up to the primary's position now.
    wait_catalog(&fleet, "no job running", |l| {
        l.iter()
            .all(|b| b["status"] != "running" && b["verification"] != "running")
    })
    .await;
    // the older of the two newest, which retention keeps whatever else
    // it still deletes
    let mut completed: Vec<Value> = listed(&fleet)
        .into_iter()
        .filter(|b| b["status"] == "completed")
        .collect();
    completed.sort_by_key(|b| std::cmp::Reverse(b["started_at_unix_ms"].as_i64()));
    let oldest = completed.get(1).expect("two kept backups").clone();
    writer.stop().await;
    let now = fleet
        .query_one("db1", "SELECT @@gtid_binlog_pos")
        .await
        .unwrap();
    wait_archived(&fleet, "db1", now_ms()).await;
    let (ok, r) = fleet.cli_json(&[
        "backup",
        "restore",
        oldest["id"].as_str().unwrap(),
        "--host",
        "db3",
        "--to-gtid",
        &now,
    ]);
    assert!(ok, "{r}");
    assert_eq!(
        fleet.query_one("db3", "SELECT @@gtid_slave_pos").await,
        Some(now)
    );
}

#[tokio::test]
async fn failing_scheduled_backups_are_retried_and_reported() {
    let fleet = TestFleet::start_active(2, 1).await;
    let _disk = SmallDisk::mount(&fleet.dir.join("backups"));
    schedule(&fleet, &["--full", "1s"]);
    wait_catalog(&fleet, "two failed attempts", |l| {
        l.iter().filter(|b| b["status"] == "failed").count() >= 2
    })
    .await;
    assert!(
        listed(&fleet).iter().all(|b| b["status"] != "completed"),
        "no failed backup is listed as good"
    );
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = problems(&fleet);
        let failing = found.iter().any(|p| {
            p["kind"] == "backup-failing"
                && p["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("No space left on device"))
        });
        let overdue = found.iter().any(|p| p["kind"] == "backup-overdue");
        if failing && overdue {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "backup-failing and backup-overdue: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
