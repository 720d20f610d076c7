//! Sealed backups with real processes: agents with `[backup]
//! seal_key_file` store backup streams and archived binlogs age-encrypted
//! (the repository holds no readable data) and verify them; a backup taken
//! before sealing was turned on still restores on a sealing agent; an
//! agent without the key refuses a sealed backup naming the fix and keeps
//! running on its own data. (Test fleets seal their backups, so the restore
//! and point-in-time tests restore sealed backups and replay sealed binlog
//! chunks.)

use std::path::{Path, PathBuf};

use dbfleet_integration_tests::backups::{self, now_ms, wait_archived};
use dbfleet_integration_tests::{PATIENCE, TestFleet, member};
use serde_json::Value;

const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";

fn backup(fleet: &TestFleet, host: &str) -> Value {
    backups::backup(fleet, &["--host", host])
}

fn id(b: &Value) -> String {
    b["id"].as_str().expect("an id").to_string()
}

/// The stored data file and manifest of backup `id`.
fn stored(fleet: &TestFleet, id: &str) -> (Vec<u8>, Value) {
    let dir = fleet.dir.join("backups/main/backups").join(id);
    let data = std::fs::read(dir.join("data.xbstream.zst")).expect("the data file");
    let manifest = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap())
        .expect("the manifest");
    (data, manifest)
}

/// Every archived binlog chunk of the cluster.
fn chunks(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).unwrap().flatten())
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|x| x == "zst"))
        .collect()
}

/// Waits until row `id` of `table` is on `host` (a read that fails, a
/// session ended by a repoint say, is tried again).
async fn wait_row(fleet: &TestFleet, host: &str, table: &str, id: u64) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    let query = format!("SELECT COUNT(*) FROM {table} WHERE id = {id}");
    while fleet.query_one(host, &query).await.as_deref() != Some("1") {
        assert!(
            tokio::time::Instant::now() < give_up,
            "row {id} never reached {host}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sealed_backups_hold_no_readable_data_verify_restore_and_need_the_key() {
    let mut fleet = TestFleet::start_active(2, 1).await;
    let table = "app.sealed";
    fleet
        .sql(
            "db1",
            &format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, note VARCHAR(40))"),
        )
        .await
        .unwrap();
    fleet
        .sql(
            "db1",
            &format!("INSERT INTO {table} VALUES (1, 'plaintext-canary-7f3a')"),
        )
        .await
        .unwrap();

    // Sealed: the stream and the archived binlogs are age files, and the
    // row written in clear is nowhere in them.
    let sealed = backup(&fleet, "db2");
    let sealed_id = id(&sealed);
    let (data, manifest) = stored(&fleet, &sealed_id);
    assert!(data.starts_with(AGE_HEADER), "the data file is sealed");
    let recipient = manifest["sealed_for"].as_str().unwrap_or_default();
    assert!(recipient.starts_with("age1"), "{manifest}");
    assert_eq!(
        sealed["manifest"]["sealed_for"], recipient,
        "the catalog shows what it is sealed for: {sealed}"
    );
    wait_archived(&fleet, "db1", now_ms()).await;
    let archive = fleet.dir.join("backups/main/binlogs");
    let archived = chunks(&archive);
    assert!(!archived.is_empty());
    for c in &archived {
        let bytes = std::fs::read(c).unwrap();
        assert!(bytes.starts_with(AGE_HEADER), "{} is sealed", c.display());
        assert!(
            !bytes
                .windows(b"plaintext-canary".len())
                .any(|w| w == b"plaintext-canary"),
            "{} holds the row in clear",
            c.display()
        );
    }
    let (ok, v) = fleet.cli_json(&["backup", "verify", &sealed_id]);
    assert!(ok, "{v}");
    assert_eq!(v["verification"], "verified", "{v}");

    // The operator's key generator: a 0600 file, never overwritten.
    let key = fleet.dir.join("another-seal.key");
    let (ok, k) = fleet.cli_json(&["backup-key", "generate", "--out", key.to_str().unwrap()]);
    assert!(ok, "{k}");
    assert!(
        k["recipient"]
            .as_str()
            .unwrap_or_default()
            .starts_with("age1"),
        "{k}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let again = fleet.cli(&["backup-key", "generate", "--out", key.to_str().unwrap()]);
    assert!(
        !again.status.success(),
        "an existing key is never overwritten"
    );

    // db2's agent without the key: its backups are stored unsealed, and
    // such a backup restores on an agent that seals.
    fleet
        .restart_agent_with("db2", "seal_key_file", "# no seal key")
        .await;
    let plain = backup(&fleet, "db2");
    let plain_id = id(&plain);
    let (data, manifest) = stored(&fleet, &plain_id);
    assert!(!data.starts_with(AGE_HEADER), "stored unsealed");
    assert!(manifest.get("sealed_for").is_none(), "{manifest}");
    let (ok, r) = fleet.cli_json(&["backup", "restore", &plain_id, "--host", "db3"]);
    assert!(ok, "{r}");
    assert_eq!(r["status"], "completed", "{r}");
    // The coordinator repoints the restored db3 (ending its sessions):
    // read once it replicates again.
    fleet
        .wait_until("db3 replicating again", |c| member(c, "db3").io_running)
        .await;
    wait_row(&fleet, "db3", table, 1).await;

    // The sealed backup onto db2, whose agent has no key: refused naming
    // the fix, before db2's data is touched.
    fleet
        .sql("db1", &format!("INSERT INTO {table} VALUES (2, 'later')"))
        .await
        .unwrap();
    wait_row(&fleet, "db2", table, 2).await;
    let (ok, r) = fleet.cli_json(&["backup", "restore", &sealed_id, "--host", "db2"]);
    assert!(!ok, "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("sealed") && error.contains("seal_key_file"),
        "{r}"
    );
    // db2 still runs its own data
    wait_row(&fleet, "db2", table, 2).await;
}
