//! Helpers of the backup and restore tests: reading a table row for row,
//! taking a backup through the CLI, and waiting for the binlog archive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mysql_async::prelude::Queryable;
use serde_json::Value;

use crate::{PATIENCE, TestFleet};

/// Takes a backup through the CLI with `extra` arguments and waits for it;
/// panics unless it completed. Returns its catalog entry.
pub fn backup(fleet: &TestFleet, extra: &[&str]) -> Value {
    let mut args = vec!["backup", "run", "--cluster", "main"];
    args.extend(extra);
    let (ok, b) = fleet.cli_json(&args);
    assert!(ok, "{b}");
    assert_eq!(b["status"], "completed", "{b}");
    b
}

/// Every row of `table` on `host`, by id.
pub async fn rows(fleet: &TestFleet, host: &str, table: &str) -> BTreeMap<u64, String> {
    let s = fleet.server(host).expect("host");
    let mut c = mysql_async::Conn::new(s.root_opts(&fleet.credentials.root))
        .await
        .expect("connect");
    let r: Vec<(u64, String)> = c
        .query(format!("SELECT id, note FROM {table}"))
        .await
        .expect("read the table");
    let _ = c.disconnect().await;
    r.into_iter().collect()
}

/// Now, Unix ms, on this machine's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Waits until an archive stream of `host` had caught up with its server
/// at a check made after `after_ms`.
pub async fn wait_archived(fleet: &TestFleet, host: &str, after_ms: i64) {
    wait_archived_in(&fleet.dir.join("backups/main/binlogs"), host, after_ms).await
}

/// [`wait_archived`] with the archive's streams in `dir` (a bucket's
/// objects, as files of the test's S3 server).
pub async fn wait_archived_in(dir: &Path, host: &str, after_ms: i64) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let caught_up = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{host}-"))
            })
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

/// A 256 KiB tmpfs over `dir`, unmounted when dropped.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts it (tests run as root).
    pub fn mount(dir: &Path) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount (tests run as root)");
        assert!(
            out.status.success(),
            "mount a small tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
