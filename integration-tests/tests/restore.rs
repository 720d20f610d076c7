//! Restores with real processes: a backup taken by an agent, the agents'
//! continuous binlog archive, and `dbfleet backup restore` onto a real
//! replica, which its agent shuts down, swaps to the backup's data,
//! starts again and (for a point in time) replays archived binlogs into.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbfleet_integration_tests::workload::{Writer, ids_on};
use dbfleet_integration_tests::{PATIENCE, TestFleet, has_problem, member, sole_active};
use mysql_async::prelude::Queryable;
use serde_json::Value;

async fn fleet() -> TestFleet {
    let fleet = TestFleet::start(2, 1).await;
    fleet
        .wait_coordinators("an active coordinator", |c| sole_active(c).is_some())
        .await;
    fleet
}

fn backup(fleet: &TestFleet, host: &str) -> String {
    let (ok, b) = fleet.cli_json(&["backup", "run", "--cluster", "main", "--host", host]);
    assert!(ok, "{b}");
    assert_eq!(b["status"], "completed", "{b}");
    b["id"].as_str().expect("an id").to_string()
}

/// Every row of `table` on `host`, by id.
async fn rows(fleet: &TestFleet, host: &str, table: &str) -> BTreeMap<u64, String> {
    let s = fleet.server(host).expect("host");
    let mut c = mysql_async::Conn::new(s.tcp_opts(
        dbfleet_cli::sandbox::mariadb::AGENT_USER,
        &fleet.credentials.agent,
    ))
    .await
    .expect("connect");
    let r: Vec<(u64, String)> = c
        .query(format!("SELECT id, note FROM {table}"))
        .await
        .expect("read the table");
    let _ = c.disconnect().await;
    r.into_iter().collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Waits until some archive stream had caught up with its server at a
/// check made after `after_ms`.
async fn wait_archived(fleet: &TestFleet, after_ms: i64) {
    let dir = fleet.dir.join("backups/main/binlogs");
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let caught_up = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("head.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .is_some_and(|h| {
                        h["checked_at_unix_ms"].as_i64().unwrap_or(0) > after_ms
                            && h["file"] == h["server_file"]
                            && h["position"] == h["server_position"]
                    })
            });
        if caught_up {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no binlog archive caught up after {after_ms}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn unix_now_on(fleet: &TestFleet, host: &str) -> i64 {
    fleet
        .query_one(host, "SELECT UNIX_TIMESTAMP()")
        .await
        .and_then(|t| t.parse().ok())
        .expect("the server's clock")
}

#[tokio::test]
async fn a_point_in_time_restore_onto_a_replica_keeps_exactly_the_rows_before_the_chosen_time() {
    let fleet = fleet().await;
    let table = "app.pitr";
    fleet
        .sql(
            "db1",
            &format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, note VARCHAR(40))"),
        )
        .await
        .unwrap();
    let values: Vec<String> = (1..=50)
        .map(|i| format!("({i}, 'before the backup')"))
        .collect();
    fleet
        .sql(
            "db1",
            &format!("INSERT INTO {table} VALUES {}", values.join(",")),
        )
        .await
        .unwrap();
    let id = backup(&fleet, "db2");
    for i in 51..=100 {
        fleet
            .sql(
                "db1",
                &format!("INSERT INTO {table} VALUES ({i}, 'after the backup')"),
            )
            .await
            .unwrap();
    }
    fleet
        .sql(
            "db1",
            &format!("INSERT INTO {table} VALUES (1001, 'first')"),
        )
        .await
        .unwrap();
    // The chosen moment: the first second after the first write committed
    // (binlog times have one-second resolution), on the primary's clock.
    let first_at = unix_now_on(&fleet, "db1").await;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while unix_now_on(&fleet, "db1").await <= first_at {
        assert!(tokio::time::Instant::now() < give_up, "the clock stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chosen = first_at + 1;
    fleet
        .sql(
            "db1",
            &format!("INSERT INTO {table} VALUES (1002, 'second')"),
        )
        .await
        .unwrap();
    wait_archived(&fleet, now_ms()).await;
    let expected: BTreeMap<u64, String> = rows(&fleet, "db1", table)
        .await
        .into_iter()
        .filter(|(id, _)| *id != 1002)
        .collect();
    assert_eq!(expected.len(), 101);

    // Never over the primary.
    let out = fleet.cli(&[
        "backup",
        "restore",
        &id,
        "--host",
        "db1",
        "--to-time",
        &chosen.to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("db1 is the primary"),
        "{err}"
    );

    let (ok, r) = fleet.cli_json(&[
        "backup",
        "restore",
        &id,
        "--host",
        "db3",
        "--to-time",
        &chosen.to_string(),
    ]);
    assert!(ok, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
    assert!(
        r["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("replayed"),
        "{r}"
    );
    let restored = rows(&fleet, "db3", table).await;
    assert!(restored.contains_key(&1001), "the first write is there");
    assert!(!restored.contains_key(&1002), "the second write is not");
    assert_eq!(
        restored, expected,
        "row for row, the primary before the chosen time"
    );
    assert_eq!(
        fleet
            .query_one("db3", "SELECT @@read_only")
            .await
            .as_deref(),
        Some("1")
    );

    // Kept apart: the coordinator does not make it a replica again, while
    // the other replica keeps replicating.
    let view = fleet
        .wait_until("db3 reported as detached and db2 replicating", |c| {
            has_problem(c, "detached", "db3")
                && member(c, "db3").reachable
                && member(c, "db2").io_running
        })
        .await;
    assert!(!member(&view, "db3").io_running, "{view:?}");
    fleet
        .sql(
            "db1",
            &format!("INSERT INTO {table} VALUES (2000, 'later')"),
        )
        .await
        .unwrap();
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !rows(&fleet, "db2", table).await.contains_key(&2000) {
        assert!(
            tokio::time::Instant::now() < give_up,
            "db2 stopped replicating"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!rows(&fleet, "db3", table).await.contains_key(&2000));
    assert_eq!(
        fleet.query_one("db3", "SHOW SLAVE STATUS").await,
        None,
        "db3 has no replication configured"
    );
}

#[tokio::test]
async fn a_restored_replica_rejoins_and_matches_the_primary_row_for_row() {
    let fleet = fleet().await;
    let writer = Writer::start(&fleet, "db1").await;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while writer.acked_count() < 20 {
        assert!(tokio::time::Instant::now() < give_up, "the writer is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = backup(&fleet, "db2");
    let (ok, r) = fleet.cli_json(&["backup", "restore", &id, "--host", "db3"]);
    assert!(ok, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
    fleet
        .wait_until("db3 replicating again, in service", |c| {
            !has_problem(c, "detached", "db3")
                && member(c, "db3").io_running
                && member(c, "db3").sql_running
        })
        .await;
    let acked = writer.stop().await;
    let primary = fleet.query_one("db1", "SELECT @@gtid_binlog_pos").await;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while fleet.query_one("db3", "SELECT @@gtid_slave_pos").await != primary {
        assert!(
            tokio::time::Instant::now() < give_up,
            "db3 does not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_primary = ids_on(&fleet, "db1").await;
    assert_eq!(ids_on(&fleet, "db3").await, on_primary, "row for row");
    assert!(acked.iter().all(|a| on_primary.contains(a)));
    let events = fleet.cli(&["events", "--cluster", "main"]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(
        text.contains("restored") && text.contains("rejoined"),
        "{text}"
    );
}
