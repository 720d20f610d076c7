//! Restores with real processes: a backup taken by an agent, the agents'
//! continuous binlog archive, and `dbfleet backup restore` onto a real
//! replica, which its agent shuts down, swaps to the backup's data,
//! starts again and (for a point in time) replays archived binlogs into.

use std::collections::BTreeMap;
use std::time::Duration;

use dbfleet_common::gtid_state::GtidState;
use dbfleet_integration_tests::backups::{self, now_ms, rows, wait_archived};
use dbfleet_integration_tests::workload::{Writer, ids_on};
use dbfleet_integration_tests::{PATIENCE, TestFleet, has_problem, member, on_both_flavors};
use dbfleet_proto::model::Flavor;
use mysql_async::prelude::Queryable;
use serde_json::Value;

fn backup(fleet: &TestFleet, host: &str) -> String {
    let b = backups::backup(fleet, &["--host", host]);
    b["id"].as_str().expect("an id").to_string()
}

async fn assert_read_only(fleet: &TestFleet, host: &str) {
    let ro = fleet.query_one(host, "SELECT @@read_only").await;
    assert_eq!(ro.as_deref(), Some("1"), "{host} must be read-only");
    // MySQL's replay lifts super_read_only: it must be back (MariaDB has
    // no such variable)
    let version = fleet.query_one(host, "SELECT @@version").await;
    if !version.unwrap_or_default().contains("MariaDB") {
        let sro = fleet.query_one(host, "SELECT @@super_read_only").await;
        assert_eq!(sro.as_deref(), Some("1"), "{host} must be super_read_only");
    }
}

async fn unix_now_on(fleet: &TestFleet, host: &str) -> i64 {
    fleet
        .query_one(host, "SELECT UNIX_TIMESTAMP()")
        .await
        .and_then(|t| t.parse().ok())
        .expect("the server's clock")
}

on_both_flavors! {
async fn a_point_in_time_restore_onto_a_replica_keeps_exactly_the_rows_before_the_chosen_time(flavor: Flavor) {
    let fleet = TestFleet::start_spec(2, 1, |spec| spec.flavor = flavor).await;
    fleet.wait_settled("an active coordinator", |_| true).await;
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
    let executed = match flavor {
        Flavor::MariaDb => "SELECT @@gtid_binlog_pos",
        Flavor::MySql => "SELECT @@GLOBAL.gtid_executed",
    };
    let gtid_after_first = fleet.query_one("db1", executed).await.expect("a GTID state");
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
    wait_archived(&fleet, "db1", now_ms()).await;
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

    let chosen_text = chosen.to_string();
    let restore_to_chosen = || {
        fleet.cli_json(&[
            "backup",
            "restore",
            &id,
            "--host",
            "db3",
            "--to-time",
            &chosen_text,
        ])
    };
    // A corrupt archive fails the restore before the host is touched.
    let stored: Vec<(std::path::PathBuf, Vec<u8>)> =
        std::fs::read_dir(fleet.dir.join("backups/main/binlogs"))
            .unwrap()
            .flatten()
            .flat_map(|s| std::fs::read_dir(s.path()).unwrap().flatten())
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|x| x == "zst"))
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
    for (p, bytes) in &stored {
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        std::fs::write(p, bad).unwrap();
    }
    let (ok, r) = restore_to_chosen();
    assert!(!ok, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("is corrupt"),
        "{r}"
    );
    assert!(
        rows(&fleet, "db3", table).await.contains_key(&1002),
        "db3 still runs its own data"
    );
    for (p, bytes) in &stored {
        std::fs::write(p, bytes).unwrap();
    }
    // Chunk metas whose contents were changed after their agent signed
    // them (here: when they were archived) prove nothing: left out, so
    // the restore fails before the host is touched, saying why.
    let metas: Vec<(std::path::PathBuf, Vec<u8>)> = stored
        .iter()
        .map(|(p, _)| {
            let meta = p.with_extension("json");
            let bytes = std::fs::read(&meta).unwrap();
            (meta, bytes)
        })
        .collect();
    for (p, bytes) in &metas {
        let mut v: Value = serde_json::from_slice(bytes).unwrap();
        assert!(v["signature"]["chain"][0].is_string(), "signed: {v}");
        v["archived_at_unix_ms"] = (v["archived_at_unix_ms"].as_i64().unwrap() + 1).into();
        std::fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
    }
    let (ok, r) = restore_to_chosen();
    assert!(!ok, "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not proven written by an admitted member")
            && error.contains("does not match"),
        "{r}"
    );
    assert!(rows(&fleet, "db3", table).await.contains_key(&1002));
    for (p, bytes) in &metas {
        std::fs::write(p, bytes).unwrap();
    }

    let (ok, r) = restore_to_chosen();
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
    assert_read_only(&fleet, "db3").await;

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
    // To a GTID: the same rows. A GTID of the other flavor is refused
    // before anything is touched.
    let other_flavor = match flavor {
        Flavor::MariaDb => "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5",
        Flavor::MySql => "0-1-5",
    };
    let (ok, r) = fleet.cli_json(&["backup", "restore", &id, "--host", "db3", "--to-gtid", other_flavor]);
    assert!(!ok, "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.contains("give a"), "{r}");
    let (ok, r) = fleet.cli_json(&["backup", "restore", &id, "--host", "db3", "--to-gtid", &gtid_after_first]);
    assert!(ok, "{r}");
    assert_eq!(rows(&fleet, "db3", table).await, expected, "to the GTID of the first write");
    assert_read_only(&fleet, "db3").await;
    let replica_status = match flavor {
        Flavor::MariaDb => "SHOW SLAVE STATUS",
        Flavor::MySql => "SHOW REPLICA STATUS",
    };
    assert_eq!(
        fleet.query_one("db3", replica_status).await,
        None,
        "db3 has no replication configured"
    );
}
}

on_both_flavors! {
async fn a_restored_replica_rejoins_and_matches_the_primary_row_for_row(flavor: Flavor) {
    let fleet = TestFleet::start_spec(2, 1, |spec| spec.flavor = flavor).await;
    fleet.wait_settled("an active coordinator", |_| true).await;
    let writer = Writer::start(&fleet, "db1").await;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while writer.acked_count() < 20 {
        assert!(tokio::time::Instant::now() < give_up, "the writer is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = backup(&fleet, "db2");
    // db3's server is configured to start writable (the sandbox's start
    // read-only): the restore still leaves it read-only, and says so.
    let cnf = fleet.server("db3").unwrap().cnf();
    let text = std::fs::read_to_string(&cnf).unwrap();
    std::fs::write(&cnf, text.replace("read_only = ON", "read_only = OFF")).unwrap();
    // As a person runs it: the steps go by on stderr, the outcome on stdout.
    let out = fleet.cli(&["backup", "restore", &id, "--host", "db3"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("): completed"), "{stdout}");
    match flavor {
        // MariaDB has nothing but my.cnf: it started writable, and says so.
        Flavor::MariaDb => assert!(
            stdout.contains("mysqld started writable (set read_only = ON in its configuration)"),
            "{stdout}"
        ),
        // MySQL: the restore persisted super_read_only into the copy
        // before starting it, which outranks my.cnf.
        Flavor::MySql => assert!(!stdout.contains("started writable"), "{stdout}"),
    }
    assert_read_only(&fleet, "db3").await;
    let steps = [
        "starting",
        "reading the backup",
        "preparing",
        "swapping the data directory",
        "starting mysqld",
        "waiting for mysqld to accept connections after start_command",
    ];
    let shown: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once(": ")?.1.split_once(", ").map(|(s, _)| s))
        .collect();
    assert!(
        !shown.is_empty() && shown.iter().all(|s| steps.contains(s)),
        "{stderr}"
    );
    fleet
        .wait_until("db3 replicating again, in service", |c| {
            !has_problem(c, "detached", "db3")
                && member(c, "db3").io_running
                && member(c, "db3").sql_running
        })
        .await;
    let acked = writer.stop().await;
    let (on_source, on_replica) = match flavor {
        Flavor::MariaDb => ("SELECT @@gtid_binlog_pos", "SELECT @@gtid_slave_pos"),
        Flavor::MySql => ("SELECT @@GLOBAL.gtid_executed", "SELECT @@GLOBAL.gtid_executed"),
    };
    let primary = fleet.query_one("db1", on_source).await;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while fleet.query_one("db3", on_replica).await != primary {
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
}

/// The chunk metas of `host`'s archive streams, by stream.
fn streams_of(fleet: &TestFleet, host: &str) -> BTreeMap<String, Vec<Value>> {
    let dir = fleet.dir.join("backups/main/binlogs");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir)
        .expect("the archive exists")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{host}-")) {
            continue;
        }
        let mut chunks: Vec<Value> = std::fs::read_dir(e.path())
            .unwrap()
            .flatten()
            .filter(|f| {
                let n = f.file_name().to_string_lossy().into_owned();
                n.ends_with(".json") && n != "head.json"
            })
            .map(|f| serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap())
            .collect();
        chunks.sort_by_key(|c| {
            let file = c["file"].as_str().unwrap().to_string();
            let n: u64 = file.rsplit('.').next().unwrap().parse().unwrap();
            (n, c["start"].as_u64().unwrap())
        });
        out.insert(name, chunks);
    }
    out
}

on_both_flavors! {
async fn binlog_archiving_continues_across_a_restart_and_a_failover_with_no_gap(flavor: Flavor) {
    let mut fleet = TestFleet::start_spec(2, 1, |spec| spec.flavor = flavor).await;
    fleet.wait_settled("an active coordinator", |_| true).await;
    let table = "app.archived";
    fleet
        .sql(
            "db1",
            &format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY)"),
        )
        .await
        .unwrap();
    let insert = |range: std::ops::RangeInclusive<u64>| {
        let v: Vec<String> = range.map(|i| format!("({i})")).collect();
        format!("INSERT INTO {table} VALUES {}", v.join(","))
    };
    fleet.sql("db1", &insert(1..=20)).await.unwrap();
    // a restart of db2's mysqld: its binlog rotates
    let db2_mysqld = fleet.mysqld_name("db2");
    fleet.stop(&db2_mysqld, Duration::from_secs(30));
    fleet.start_mysqld("db2").unwrap();
    fleet
        .wait_until("db2 back and replicating", |c| {
            member(c, "db2").io_running && member(c, "db2").sql_running
        })
        .await;
    fleet.sql("db1", &insert(21..=40)).await.unwrap();
    // a failover: the primary's mysqld is killed
    let db1_mysqld = fleet.mysqld_name("db1");
    fleet.kill(&db1_mysqld);
    let view = fleet
        .wait_until("a new primary", |c| {
            !c.primary.is_empty() && c.primary != "db1" && member(c, &c.primary).writable
        })
        .await;
    fleet.sql(&view.primary, &insert(41..=60)).await.unwrap();
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while fleet
        .query_one("db2", &format!("SELECT COUNT(*) FROM {table}"))
        .await
        .as_deref()
        != Some("60")
    {
        assert!(tokio::time::Instant::now() < give_up, "db2 lacks rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let executed = match flavor {
        Flavor::MariaDb => "SELECT @@gtid_binlog_pos",
        Flavor::MySql => "SELECT @@GLOBAL.gtid_executed",
    };
    let binlog_pos = fleet.query_one("db2", executed).await.unwrap();
    wait_archived(&fleet, "db2", now_ms()).await;
    // Every byte of every binlog db2 has is archived, in one stream with
    // no hole, up to its last transaction.
    let s = fleet.server("db2").unwrap();
    let mut c = mysql_async::Conn::new(s.root_opts(&fleet.credentials.root))
        .await
        .unwrap();
    // (MySQL adds a third column, Encrypted)
    let files: Vec<(String, u64)> = c
        .query::<mysql_async::Row, _>("SHOW BINARY LOGS")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
        .collect();
    let (current, position): (String, u64) = {
        let status = match flavor {
            Flavor::MariaDb => "SHOW MASTER STATUS",
            Flavor::MySql => "SHOW BINARY LOG STATUS",
        };
        let row: mysql_async::Row = c.query_first(status).await.unwrap().unwrap();
        (row.get(0).unwrap(), row.get(1).unwrap())
    };
    let _ = c.disconnect().await;
    assert!(
        files.len() >= 2,
        "the restart rotated the binlog: {files:?}"
    );
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let chunks = loop {
        let streams = streams_of(&fleet, "db2");
        assert_eq!(
            streams.len(),
            1,
            "one stream across restart and failover: {streams:?}"
        );
        let chunks = streams.into_values().next().unwrap();
        let last = chunks.last().unwrap();
        if last["file"] == current.as_str() && last["end"] == position {
            break chunks;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the archive stays behind {current}:{position}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (file, size) in &files {
        let mut at = 0;
        for ch in chunks.iter().filter(|ch| ch["file"] == file.as_str()) {
            assert_eq!(ch["start"], at, "no hole in {file}: {ch}");
            at = ch["end"].as_u64().unwrap();
        }
        let end = if *file == current { position } else { *size };
        assert_eq!(at, end, "{file} archived to its end");
    }
    // Up to db2's last transaction: what the stream's first file began
    // with and every chunk's transactions make db2's GTID state.
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let archived = chunks.iter().fold(
        GtidState::parse(&text(&chunks[0]["gtid_list"])).unwrap(),
        |state, ch| state.merge(&GtidState::parse(&text(&ch["gtids"])).unwrap()),
    );
    assert_eq!(
        archived,
        GtidState::parse(&binlog_pos).unwrap(),
        "up to db2's last transaction"
    );
}
}

#[tokio::test]
async fn an_agent_killed_mid_restore_leaves_the_server_running_and_the_restore_failed() {
    let mut fleet = TestFleet::start_active(2, 1).await;
    let id = backup(&fleet, "db2");
    let (ok, r) = fleet.cli_json(&["backup", "restore", &id, "--host", "db3", "--detach"]);
    assert!(ok, "{r}");
    let job = r["id"].as_str().unwrap().to_string();
    // Hold the unpacking (before mysqld is touched), then kill the agent.
    let tool = fleet.wait_tool("mbstream", &job).await;
    nix::sys::signal::kill(tool, nix::sys::signal::Signal::SIGSTOP).unwrap();
    fleet.kill("agent-db3");
    nix::sys::signal::kill(tool, nix::sys::signal::Signal::SIGKILL).unwrap();
    let staging = fleet
        .dir
        .join(format!("db3/data/#sql-dbfleet-restore-{job}"));
    assert!(staging.exists(), "the staging directory was being written");
    fleet.start_agent("db3").unwrap();
    let view = fleet
        .wait_until("the restore ended failed, db3 kept out of service", |c| {
            c.problems.iter().any(|p| {
                p.kind == "detached"
                    && p.host == "db3"
                    && p.message.contains("agent stopped during the restore")
            })
        })
        .await;
    assert!(member(&view, "db3").reachable, "mysqld kept running");
    assert!(
        !staging.exists(),
        "the restarted agent removed the staging directory"
    );
    assert_read_only(&fleet, "db3").await;
}

/// A data directory holding something its agent (the mysql user) may not
/// move, as a DBA's root-owned directory: the swap stops at it, every
/// entry already moved goes back, mysqld is started again on the previous
/// data, and the error names the entry, the user and the fix. No copy of
/// the backup is left in the data directory.
#[tokio::test]
async fn a_swap_that_cannot_move_an_entry_puts_the_previous_data_back_and_starts_mysqld() {
    let fleet = TestFleet::start_active(2, 1).await;
    let id = backup(&fleet, "db2");
    let datadir = fleet.server("db3").unwrap().datadir();
    // a row the backup does not hold: db3 keeps it only on its previous data
    fleet
        .sql("db1", "CREATE TABLE app.after_backup (id INT PRIMARY KEY)")
        .await
        .unwrap();
    fleet
        .sql("db1", "INSERT INTO app.after_backup VALUES (7)")
        .await
        .unwrap();
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let count = "SELECT COUNT(*) FROM app.after_backup";
    while fleet.query_one("db3", count).await.as_deref() != Some("1") {
        assert!(
            tokio::time::Instant::now() < give_up,
            "db3 never replicated the row"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before: Vec<String> = listing(&datadir);
    // root's, 0700, sorted after the server's own entries
    let notes = datadir.join("zz-dba-notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("README"), "the DBA's").unwrap();
    std::fs::set_permissions(&notes, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = fleet.cli(&["backup", "restore", &id, "--host", "db3"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("zz-dba-notes")
            && text.contains("the agent runs as mysql")
            && text.contains("the previous data is back in place")
            && text.contains("mysqld runs on the previous data"),
        "{text}"
    );
    assert_read_only(&fleet, "db3").await;
    assert_eq!(
        fleet.query_one("db3", count).await.as_deref(),
        Some("1"),
        "db3 runs on its previous data"
    );
    let mut after = listing(&datadir);
    after.retain(|n| n != "zz-dba-notes");
    let ours: Vec<&String> = after
        .iter()
        .filter(|n| n.starts_with("#sql-dbfleet-"))
        .collect();
    assert!(ours.is_empty(), "left in the data directory: {ours:?}");
    assert!(
        before.iter().all(|n| after.contains(n)),
        "{before:?} → {after:?}"
    );
}

/// The names in a directory.
fn listing(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A start command that exits 0 without starting mysqld fails the restore
/// once no mysqld holds the data directory (not after the ten-minute start
/// timeout), quoting what the command printed.
#[tokio::test]
async fn a_start_command_that_starts_nothing_fails_the_restore_quoting_its_output() {
    let mut fleet = TestFleet::start_active(2, 1).await;
    let id = backup(&fleet, "db2");
    fleet
        .restart_agent_with(
            "db3",
            "start_command",
            "start_command = [\"/bin/sh\", \"-c\", \"echo pretending to start mariadb\"]",
        )
        .await;
    let out = fleet.cli(&["backup", "restore", &id, "--host", "db3"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("exited successfully but no mysqld runs on")
            && text.contains("its output: pretending to start mariadb"),
        "{text}"
    );
    assert!(
        text.contains("waiting for mysqld to accept connections after start_command"),
        "the wait says what it waits for: {text}"
    );
}
