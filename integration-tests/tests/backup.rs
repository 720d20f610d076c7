//! Backups with real processes: mariadb-backup (MySQL: its CLONE plugin)
//! on a real replica under write load, streamed through the agent into the
//! sandbox's repository, and verified by restoring into a scratch mysqld. Faults: an agent
//! killed mid-backup, a full repository, a corrupted stored file; and
//! one heavy job per host.

use std::path::PathBuf;
use std::time::Duration;

use dbfleet_integration_tests::backups::{self, SmallDisk};
use dbfleet_integration_tests::workload::Writer;
use dbfleet_integration_tests::{
    PATIENCE, TestFleet, on_both_flavors, sample, scrape, sole_active,
};
use dbfleet_proto::model::Flavor;
use serde_json::Value;

/// Starts a backup on `host` without waiting and holds its mariadb-backup
/// (SIGSTOP) mid-stream: the backup runs for as long as the test looks.
/// Returns its id and the tool's pid.
async fn held_backup(fleet: &TestFleet, host: &str) -> (String, nix::unistd::Pid) {
    let (ok, b) = fleet.cli_json(&[
        "backup",
        "run",
        "--cluster",
        "main",
        "--host",
        host,
        "--detach",
    ]);
    assert!(ok, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let tool = fleet.wait_tool("mariadb-backup", &id).await;
    nix::sys::signal::kill(tool, nix::sys::signal::Signal::SIGSTOP).unwrap();
    (id, tool)
}

async fn fleet_with_writes() -> (TestFleet, Writer) {
    fleet_with_writes_on(Flavor::MariaDb).await
}

async fn fleet_with_writes_on(flavor: Flavor) -> (TestFleet, Writer) {
    let fleet = TestFleet::start_spec(2, 1, |spec| spec.flavor = flavor).await;
    fleet
        .wait_coordinators("an active coordinator", |c| sole_active(c).is_some())
        .await;
    let writer = Writer::start(&fleet, "db1").await;
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while writer.acked_count() < 20 {
        assert!(tokio::time::Instant::now() < give_up, "the writer is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (fleet, writer)
}

fn backup_dir(fleet: &TestFleet, id: &str) -> PathBuf {
    fleet.dir.join("backups/main/backups").join(id)
}

/// Waits until backup `id`'s catalog entry satisfies `ok`.
async fn wait_entry(fleet: &TestFleet, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, v) = fleet.cli_json(&["backup", "show", id]);
        if ok(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < give_up, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

on_both_flavors! {
async fn a_backup_under_write_load_is_consistent_and_verified(flavor: Flavor) {
    let (fleet, writer) = fleet_with_writes_on(flavor).await;
    let (ok, b) = fleet.cli_json(&["backup", "run", "--cluster", "main"]);
    assert!(ok, "{b}");
    assert_eq!(b["status"], "completed");
    assert_ne!(
        b["host"], "db1",
        "a healthy replica takes it, not the primary"
    );
    let id = b["id"].as_str().unwrap().to_string();
    let m = &b["manifest"];
    assert_eq!(m["method"], "physical");
    let end_gtid = m["end_gtid"].as_str().unwrap_or_default();
    match flavor {
        Flavor::MariaDb => assert!(end_gtid.starts_with("0-1-"), "{m}"),
        // MySQL's CLONE: a GTID set with the primary's writes in it.
        Flavor::MySql => {
            let set = dbfleet_common::gtid_set::GtidSet::parse(end_gtid).unwrap();
            assert!(set.count() >= 20, "{m}");
            assert!(m["tool"].as_str().unwrap_or_default().contains("CLONE"), "{m}");
            assert_eq!(m["files"][0]["name"], "data.tar.zst", "{m}");
        }
    }
    assert!(
        m["files"][0]["sha256"]
            .as_str()
            .is_some_and(|s| s.len() == 64)
    );
    assert!(backup_dir(&fleet, &id).join("manifest.json").is_file());
    assert_eq!(b["verification"], "never");
    // Sealed: a backup holds every account's password hash and all the
    // data, so nothing of it is readable by anyone but its owner.
    assert_private(&backup_dir(&fleet, &id));

    // As a person runs it: the steps go by on stderr, the outcome on stdout.
    let out = fleet.cli(&["backup", "verify", &id]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(
        progress_lines(&stderr, &id).next().is_some(),
        "no progress shown: {stderr}"
    );
    let (_, v) = fleet.cli_json(&["backup", "show", &id]);
    assert_eq!(v["verification"], "verified", "{v}");
    assert!(v["verification_phase"].is_null(), "no step once ended: {v}");
    let (_, list) = fleet.cli_json(&["backup", "list"]);
    assert_eq!(list["backups"][0]["verification"], "verified");
    writer.stop().await;
}
}

/// Every file under `dir` is 0600 and every directory (`dir` too) 0700.
fn assert_private(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            assert_private(&p);
        } else {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
}

/// The progress lines about `id` in a CLI's stderr: `ID: STEP, N UNIT
/// read|stored` with one of the steps the agent names.
fn progress_lines<'a>(stderr: &'a str, id: &'a str) -> impl Iterator<Item = &'a str> {
    const STEPS: [&str; 6] = [
        "starting",
        "reading the backup",
        "preparing",
        "loading the dump",
        "starting a scratch mysqld",
        "checking tables",
    ];
    stderr.lines().filter(move |l| {
        l.strip_prefix(&format!("{id}: "))
            .and_then(|rest| rest.split_once(", "))
            .is_some_and(|(step, n)| {
                STEPS.contains(&step) && (n.ends_with(" read") || n.ends_with(" stored"))
            })
    })
}

#[tokio::test]
async fn a_corrupted_backup_fails_verification() {
    let (fleet, writer) = fleet_with_writes().await;
    let (ok, b) = fleet.cli_json(&["backup", "run", "--cluster", "main"]);
    assert!(ok, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let data = backup_dir(&fleet, &id).join("data.xbstream.zst");
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let (ok, v) = fleet.cli_json(&["backup", "verify", &id]);
    assert!(!ok, "a failed verification exits non-zero");
    assert_eq!(v["verification"], "failed");
    let why = v["verification_detail"].as_str().unwrap_or_default();
    assert!(
        why.contains("is corrupt") && why.contains("SHA-256"),
        "{why}"
    );
    writer.stop().await;
}

#[tokio::test]
async fn an_agent_killed_mid_backup_leaves_no_usable_looking_backup() {
    let (mut fleet, writer) = fleet_with_writes().await;
    // Hold the tool mid-stream, then kill the agent under it.
    let (id, tool) = held_backup(&fleet, "db2").await;
    fleet.kill("agent-db2");
    nix::sys::signal::kill(tool, nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(
        !backup_dir(&fleet, &id).join("manifest.json").exists(),
        "no manifest was written"
    );
    fleet.start_agent("db2").unwrap();
    let entry = wait_entry(&fleet, &id, "the backup marked failed", |v| {
        v["status"] == "failed"
    })
    .await;
    assert!(
        entry["error"]
            .as_str()
            .unwrap_or_default()
            .contains("agent stopped during the job"),
        "{entry}"
    );
    assert!(
        !backup_dir(&fleet, &id).exists(),
        "its partial files are gone"
    );
    let out = fleet.cli(&["backup", "verify", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("only a completed backup can be verified"),
        "{err}"
    );
    writer.stop().await;
}

#[tokio::test]
async fn an_agent_stopped_mid_backup_ends_its_backup_tool_before_it_exits() {
    let (mut fleet, writer) = fleet_with_writes().await;
    // the tool held mid-stream: it cannot end by itself
    let (id, tool) = held_backup(&fleet, "db2").await;
    fleet.stop("agent-db2", PATIENCE);
    let proc_entry = PathBuf::from(format!("/proc/{tool}"));
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while proc_entry.exists() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "mariadb-backup (pid {tool}) outlived the agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !backup_dir(&fleet, &id).exists(),
        "the partial backup is removed"
    );
    fleet.start_agent("db2").unwrap();
    writer.stop().await;
}

/// Whether `host`'s mysqld runs a `CLONE LOCAL` statement (the sandbox
/// has no performance schema, so no clone_status: the process list).
async fn cloning(fleet: &TestFleet, host: &str) -> bool {
    fleet
        .query_one(
            host,
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'CLONE LOCAL%'",
        )
        .await
        .as_deref()
        != Some("0")
}

#[tokio::test]
async fn an_agent_stopped_during_a_clone_backup_leaves_no_clone_running() {
    let (mut fleet, writer) = fleet_with_writes_on(Flavor::MySql).await;
    // a clone slow enough to be caught running: 1 MiB/s
    fleet
        .sql("db2", "SET GLOBAL clone_max_data_bandwidth = 1")
        .await
        .unwrap();
    let (ok, b) = fleet.cli_json(&[
        "backup",
        "run",
        "--cluster",
        "main",
        "--host",
        "db2",
        "--detach",
    ]);
    assert!(ok, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !cloning(&fleet, "db2").await {
        assert!(tokio::time::Instant::now() < give_up, "the clone never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM: the CLONE statement ends with the agent (mysqld ends it
    // when the agent's connection closes), rather than go on writing into
    // a directory the agent's next start removes
    fleet.stop("agent-db2", PATIENCE);
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while cloning(&fleet, "db2").await {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the clone runs on without its agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // it ended the job too: nothing of the backup is left (the catalog
    // learns of it from the restarted agent, or a minute later)
    assert!(
        !backup_dir(&fleet, &id).exists(),
        "the partial backup is removed"
    );
    fleet.start_agent("db2").unwrap();
    writer.stop().await;
}

#[tokio::test]
async fn a_full_repository_fails_the_backup_cleanly() {
    let (fleet, writer) = fleet_with_writes().await;
    let _disk = SmallDisk::mount(&fleet.dir.join("backups"));
    let (ok, b) = fleet.cli_json(&["backup", "run", "--cluster", "main"]);
    assert!(!ok, "a failed backup exits non-zero: {b}");
    assert_eq!(b["status"], "failed", "{b}");
    let error = b["error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left on device"), "{b}");
    let id = b["id"].as_str().expect("the failed backup has an id");
    assert!(
        !backup_dir(&fleet, id).exists(),
        "its partial files are gone"
    );
    writer.stop().await;
}

#[tokio::test]
async fn two_heavy_jobs_never_share_a_host() {
    let fleet = TestFleet::start_active(2, 1).await;
    let first = backups::backup(&fleet, &["--host", "db2"]);
    let first = first["id"].as_str().unwrap().to_string();
    // The agent exports how its last backup went.
    let db2_metrics = fleet.info.members[1].metrics_address.clone();
    let text = scrape(&db2_metrics);
    assert_eq!(
        sample(&text, "dbfleet_backup_last_succeeded", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "dbfleet_backup_last_completed_age_seconds", &[]).is_some(),
        "{text}"
    );

    let (second, tool) = held_backup(&fleet, "db2").await;
    wait_entry(&fleet, &second, "db2 reporting the backup running", |v| {
        v["status"] == "running" && v["phase"] == "streaming the backup"
    })
    .await;
    // Neither a verification nor another backup joins it on db2, and a
    // refused backup leaves nothing in the catalog.
    let out = fleet.cli(&["backup", "verify", &first, "--host", "db2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("db2 is busy with backup {second}")),
        "{err}"
    );
    let out = fleet.cli(&[
        "backup",
        "run",
        "--cluster",
        "main",
        "--host",
        "db2",
        "--detach",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("db2 is busy with backup {second}")),
        "{err}"
    );
    let (_, list) = fleet.cli_json(&["backup", "list"]);
    assert_eq!(list["backups"].as_array().unwrap().len(), 2, "{list}");
    // Left to choose, the coordinator takes the other replica.
    let (ok, third) = fleet.cli_json(&["backup", "run", "--cluster", "main", "--detach"]);
    assert!(ok, "{third}");
    assert_eq!(third["host"], "db3", "{third}");
    let third = third["id"].as_str().unwrap().to_string();
    nix::sys::signal::kill(tool, nix::sys::signal::Signal::SIGCONT).unwrap();
    for id in [&second, &third] {
        wait_entry(&fleet, id, "the backup completed", |v| {
            v["status"] == "completed"
        })
        .await;
    }
    // Once db2 is free the verification runs there.
    let (ok, v) = fleet.cli_json(&["backup", "verify", &first, "--host", "db2"]);
    assert!(ok, "{v}");
    assert_eq!(v["verification"], "verified", "{v}");
}
