//! `dbfleet backup ...`: starting backups and verifications, waiting for
//! them with progress on stderr, and rendering the catalog (documented in
//! docs/cli.md and docs/backups.md).

use std::time::Duration;

use dbfleet_proto::pb;
use serde_json::{Value, json};

use crate::client::{Client, ClientError};

/// A catalog entry as JSON.
pub fn backup_json(b: &pb::BackupView) -> Value {
    let manifest: Value = serde_json::from_str(&b.manifest_json).unwrap_or(Value::Null);
    json!({
        "id": b.id, "cluster": b.cluster, "host": b.host, "method": b.method,
        "parent": (!b.parent.is_empty()).then_some(&b.parent),
        "status": b.status, "error": b.error, "bytes": b.bytes,
        "phase": (!b.phase.is_empty()).then_some(&b.phase),
        "verification": b.verification, "verification_detail": b.verification_detail,
        "verification_phase": (!b.verification_phase.is_empty()).then_some(&b.verification_phase),
        "verification_bytes": b.verification_bytes,
        "started_at_unix_ms": b.started_at_unix_ms, "finished_at_unix_ms": b.finished_at_unix_ms,
        "manifest": manifest,
    })
}

/// The catalog as JSON.
pub fn list_json(r: &pb::ListBackupsResponse) -> Value {
    json!({ "backups": r.backups.iter().map(backup_json).collect::<Vec<_>>() })
}

/// The catalog as a table.
pub fn list_table(r: &pb::ListBackupsResponse) -> String {
    let mut s = format!(
        "{:<44} {:<8} {:<11} {:<10} {:<12} {:>12}\n",
        "ID", "HOST", "METHOD", "STATUS", "VERIFIED", "BYTES"
    );
    for b in &r.backups {
        let method = if b.parent.is_empty() {
            b.method.as_str()
        } else {
            "incremental"
        };
        s.push_str(&format!(
            "{:<44} {:<8} {:<11} {:<10} {:<12} {:>12}\n",
            b.id, b.host, method, b.status, b.verification, b.bytes
        ));
    }
    s
}

/// One entry in words.
pub fn show_text(b: &pb::BackupView) -> String {
    let mut s = format!(
        "backup {} of {} on {} ({}): {}, verification {}\n",
        b.id, b.cluster, b.host, b.method, b.status, b.verification
    );
    if !b.parent.is_empty() {
        s.push_str(&format!("  incremental on top of {}\n", b.parent));
    }
    if !b.error.is_empty() {
        s.push_str(&format!("  error: {}\n", b.error));
    }
    if !b.verification_detail.is_empty() {
        s.push_str(&format!("  verification: {}\n", b.verification_detail));
    }
    if let Ok(m) = serde_json::from_str::<Value>(&b.manifest_json) {
        s.push_str(&format!(
            "  consistent at GTID {} ({} {}), {} stream bytes stored as {}\n",
            m["end_gtid"], m["binlog_file"], m["binlog_position"], m["stream_bytes"], b.bytes
        ));
    }
    s
}

/// A restore as JSON.
pub fn restore_json(r: &pb::RestoreView) -> Value {
    json!({
        "id": r.id, "cluster": r.cluster, "backup_id": r.backup_id, "host": r.host,
        "donor": (!r.donor.is_empty()).then_some(&r.donor),
        "target": r.target, "status": r.status, "error": r.error, "detail": r.detail,
        "phase": (!r.phase.is_empty()).then_some(&r.phase), "bytes": r.bytes,
        "started_at_unix_ms": r.started_at_unix_ms, "finished_at_unix_ms": r.finished_at_unix_ms,
    })
}

/// A restore in words.
pub fn restore_text(r: &pb::RestoreView) -> String {
    let source = if r.donor.is_empty() {
        format!("backup {}", r.backup_id)
    } else {
        format!("a CLONE of {}", r.donor)
    };
    let mut s = format!(
        "restore {} of {source} onto {} ({}): {}\n",
        r.id, r.host, r.target, r.status
    );
    for (label, text) in [("error", &r.error), ("detail", &r.detail)] {
        if !text.is_empty() {
            s.push_str(&format!("  {label}: {text}\n"));
        }
    }
    s
}

/// A schedule interval or age: a duration (`30s`, `6h`, `7d`) or `off`.
pub fn parse_every(text: &str) -> Result<u64, String> {
    if matches!(text, "off" | "0") {
        return Ok(0);
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); give e.g. 30s, 6h, 7d, or off"))?;
    if d.as_secs() == 0 {
        return Err(format!(
            "{text:?} is under a second; give at least 1s, or off"
        ));
    }
    Ok(d.as_secs())
}

/// A backup policy as JSON.
pub fn policy_json(p: &pb::BackupPolicy) -> Value {
    json!({
        "cluster": p.cluster, "full_every_secs": p.full_every_secs,
        "incremental_every_secs": p.incremental_every_secs,
        "logical_every_secs": p.logical_every_secs, "keep_full": p.keep_full,
        "keep_logical": p.keep_logical, "max_age_secs": p.max_age_secs, "verify": p.verify,
        "set_at_unix_ms": p.set_at_unix_ms,
    })
}

/// A backup policy in words.
pub fn policy_text(p: &pb::BackupPolicy) -> String {
    let every = |s: u64| {
        if s == 0 {
            "off".to_string()
        } else {
            humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
        }
    };
    let count = |n: u32| {
        if n == 0 {
            "-".to_string()
        } else {
            n.to_string()
        }
    };
    format!(
        "backups of {}:\n  full every {}, incremental every {}, logical every {}\n  \
         keep: {} full, {} logical, all younger than {}\n  verify each: {}\n",
        p.cluster,
        every(p.full_every_secs),
        every(p.incremental_every_secs),
        every(p.logical_every_secs),
        count(p.keep_full),
        count(p.keep_logical),
        if p.max_age_secs == 0 {
            "-".to_string()
        } else {
            every(p.max_age_secs)
        },
        if p.verify { "yes" } else { "no" }
    )
}

/// `--to-time`: RFC 3339 (`2026-11-21T10:00:00Z`) or Unix seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(n) = text.parse::<i64>() {
        return Ok(n);
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| {
            format!("{text:?} is not a time ({e}); give RFC 3339 like 2026-11-21T10:00:00Z or Unix seconds")
        })
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .map_err(|_| format!("{text:?} is before 1970"))
        })
}

/// Polls restore `id` until it ends, printing each new step and how much
/// of the backup it read to stderr when `progress` is set.
pub async fn wait_restore(
    client: &Client,
    id: &str,
    progress: bool,
) -> Result<pb::RestoreView, ClientError> {
    let mut shown = Progress::default();
    loop {
        let r = client.get_restore(id).await?;
        if r.status != "running" {
            return Ok(r);
        }
        if progress {
            shown.show(id, &r.phase, r.bytes, "read");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which job a progress line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// The backup itself.
    Backup,
    /// Its verification.
    Verification,
}

/// Polls backup `id` until `done` says so, printing each new step and
/// byte count of the `watched` job to stderr when `progress` is set.
pub async fn wait(
    client: &Client,
    id: &str,
    progress: Option<Watched>,
    done: impl Fn(&pb::BackupView) -> bool,
) -> Result<pb::BackupView, ClientError> {
    let mut shown = Progress::default();
    loop {
        let b = client.get_backup(id).await?;
        if done(&b) {
            return Ok(b);
        }
        match progress {
            Some(Watched::Backup) => shown.show(id, &b.phase, b.bytes, "stored"),
            Some(Watched::Verification) => {
                shown.show(id, &b.verification_phase, b.verification_bytes, "read")
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last progress line printed, so only changes are printed; bytes at
/// most every MiB.
#[derive(Debug, Default)]
struct Progress {
    phase: String,
    mib: Option<u64>,
}

impl Progress {
    fn show(&mut self, id: &str, phase: &str, bytes: u64, verb: &str) {
        let mib = bytes >> 20;
        if phase.is_empty() || (phase == self.phase && Some(mib) == self.mib) {
            return;
        }
        eprintln!("{id}: {phase}, {} {verb}", human_bytes(bytes));
        self.phase = phase.to_string();
        self.mib = Some(mib);
    }
}

/// `bytes` as a person reads it.
pub fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = (1 << 20) as f64;
    if bytes < 1 << 20 {
        format!("{bytes} bytes")
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}
