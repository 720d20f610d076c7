//! A physical backup with mariadb-backup, streamed: the tool's xbstream
//! output is compressed (zstd, multithreaded) and hashed (SHA-256) in this
//! process on its way to the repository, never staged whole on local disk.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::repo::{DATA_FILE, HashingWriter, LOG_FILE, StoredFile, tail};

/// What a physical backup needs.
pub struct PhysicalBackup {
    /// mariadb-backup, found and version-checked by the caller.
    pub tool: PathBuf,
    /// Its `--version` line, for the manifest.
    pub tool_version: String,
    /// The backup's directory in the repository (created here; an
    /// existing one is refused, so a backup never writes into another).
    pub dir: PathBuf,
    /// The tool's own temporary directory, on the agent's disk rather
    /// than in the repository (removed by the caller).
    pub tool_tmp: PathBuf,
    /// `--defaults-extra-file` with the agent's credentials (mode 0600):
    /// the password never appears in argv.
    pub defaults_file: PathBuf,
    /// mysqld's data directory.
    pub datadir: String,
    /// zstd level.
    pub level: i32,
    /// zstd worker threads.
    pub threads: u32,
    /// Bytes stored so far, for reports.
    pub progress: Arc<AtomicU64>,
    /// Set to stop early (the agent shuts down).
    pub cancel: Arc<AtomicBool>,
}

/// What the tool produced.
#[derive(Debug)]
pub struct Taken {
    /// Uncompressed stream bytes.
    pub stream_bytes: u64,
    /// The stored stream.
    pub stored: StoredFile,
    /// GTID the backup is consistent at.
    pub end_gtid: String,
    /// Binary log coordinates at that point.
    pub binlog_file: String,
    /// Position.
    pub binlog_position: u64,
    /// Tool and version.
    pub tool: String,
}

/// `MySQL binlog position: filename 'F', position 'P', GTID of the last
/// change 'G'` from mariadb-backup's log.
fn binlog_position(log: &str) -> Option<(String, u64, String)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("MySQL binlog position: filename"))?;
    let quoted: Vec<&str> = line.split('\'').collect();
    // [_, file, _, position, _, gtid, _]
    let file = quoted.get(1)?.to_string();
    let position = quoted.get(3)?.parse().ok()?;
    let gtid = quoted.get(5).map(|g| g.to_string()).unwrap_or_default();
    Some((file, position, gtid))
}

/// Runs the backup into `b.dir`. On error the caller removes the directory.
pub fn take(b: &PhysicalBackup) -> Result<Taken, String> {
    let tool = &b.tool;
    if let Some(parent) = b.dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::create_dir(&b.dir).map_err(|e| format!("cannot create {}: {e}", b.dir.display()))?;
    let scratch = &b.tool_tmp;
    std::fs::create_dir_all(scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let log_path = b.dir.join(LOG_FILE);
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let mut child = Command::new(tool)
        .arg(format!(
            "--defaults-extra-file={}",
            b.defaults_file.display()
        ))
        .arg("--backup")
        .arg("--stream=xbstream")
        .arg("--slave-info")
        .arg(format!("--datadir={}", b.datadir))
        .arg(format!("--target-dir={}", scratch.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    let mut stdout = child.stdout.take().expect("piped");
    let partial = b.dir.join(format!("{DATA_FILE}.partial"));
    let streamed = (|| -> Result<(u64, u64, String), String> {
        let file = File::create(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let sink = HashingWriter::new(BufWriter::with_capacity(1 << 20, file), b.progress.clone());
        let mut z = zstd::stream::Encoder::new(sink, b.level).map_err(|e| format!("zstd: {e}"))?;
        z.multithread(b.threads.max(1))
            .map_err(|e| format!("zstd threads: {e}"))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut raw = 0u64;
        loop {
            if b.cancel.load(Ordering::Relaxed) {
                return Err("stopped: the agent is shutting down".into());
            }
            let n = stdout
                .read(&mut buf)
                .map_err(|e| format!("reading the backup stream: {e}"))?;
            if n == 0 {
                break;
            }
            raw += n as u64;
            z.write_all(&buf[..n])
                .map_err(|e| format!("writing {}: {e}", partial.display()))?;
        }
        let sink = z
            .finish()
            .map_err(|e| format!("writing {}: {e}", partial.display()))?;
        let (writer, stored, sha) = sink.finish();
        let file = writer
            .into_inner()
            .map_err(|e| format!("writing {}: {}", partial.display(), e.error()))?;
        file.sync_all()
            .map_err(|e| format!("syncing {}: {e}", partial.display()))?;
        Ok((raw, stored, sha))
    })();
    let (raw, stored, sha) = match streamed {
        Ok(v) => v,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", tool.display()))?;
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() || !log_text.contains("completed OK!") {
        return Err(format!(
            "mariadb-backup failed ({status}): {}",
            tail(&log_path, 3)
        ));
    }
    let (binlog_file, binlog_position, end_gtid) = binlog_position(&log_text)
        .ok_or("mariadb-backup did not log its binlog position (is log_bin on?)")?;
    let data = b.dir.join(DATA_FILE);
    std::fs::rename(&partial, &data)
        .map_err(|e| format!("cannot rename {}: {e}", partial.display()))?;
    sync_dir(&b.dir)?;
    Ok(Taken {
        stream_bytes: raw,
        stored: StoredFile {
            name: DATA_FILE.into(),
            bytes: stored,
            sha256: sha,
        },
        end_gtid,
        binlog_file,
        binlog_position,
        tool: b.tool_version.clone(),
    })
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consistent_position_is_read_from_the_tools_log() {
        let log = "[00] 2026-11-21 09:49:12 Streaming ./x\n\
                   [00] 2026-11-21 09:49:12 MySQL binlog position: filename 'mysql-bin.000002', position '321', GTID of the last change '0-1-42'\n\
                   [00] 2026-11-21 09:49:12 completed OK!\n";
        assert_eq!(
            binlog_position(log),
            Some(("mysql-bin.000002".into(), 321, "0-1-42".into()))
        );
        assert_eq!(binlog_position("completed OK!"), None);
    }
}
