//! The backup repository on disk: where each backup's files go, the
//! manifest that makes a backup exist, and the streaming pieces (a writer
//! that hashes and counts what it stores).
//!
//! Layout (docs/backups.md): `REPO/CLUSTER/backups/ID/` holds
//! `data.xbstream.zst` (while being written: `.partial`), `backup.log` (the
//! tool's own log) and `manifest.json`, written last and atomically. A
//! directory without a manifest is not a backup.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The stream file of a physical backup.
pub const DATA_FILE: &str = "data.xbstream.zst";
/// The manifest: written last; its presence is what makes a backup.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The backup tool's log.
pub const LOG_FILE: &str = "backup.log";

/// One backup's directory.
pub fn backup_dir(repository: &Path, cluster: &str, id: &str) -> PathBuf {
    repository.join(cluster).join("backups").join(id)
}

/// A stored file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Name inside the backup's directory.
    pub name: String,
    /// Bytes stored (compressed).
    pub bytes: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
}

/// What a backup is, for restore, verification and retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version of this manifest.
    pub format: u32,
    /// Backup id (the coordinator's).
    pub id: String,
    /// Cluster and host it was taken on.
    pub cluster: String,
    /// Host.
    pub host: String,
    /// The server's `server_id`.
    pub server_id: u32,
    /// MySQL's server_uuid; empty on MariaDB.
    pub server_uuid: String,
    /// "mariadb" or "mysql".
    pub flavor: String,
    /// Server version.
    pub server_version: String,
    /// "physical".
    pub method: String,
    /// Base backup of an incremental one (none yet).
    pub parent: Option<String>,
    /// The server's executed GTID set when the backup started.
    pub start_gtid: String,
    /// The GTID position the backup is consistent at (from the tool).
    pub end_gtid: String,
    /// Binary log file and position at that point.
    pub binlog_file: String,
    /// Position in it.
    pub binlog_position: u64,
    /// Bytes the tool produced (uncompressed stream).
    pub stream_bytes: u64,
    /// Stored files with their sizes and checksums.
    pub files: Vec<StoredFile>,
    /// "zstd" and its level.
    pub compression: String,
    /// The backup tool and its version.
    pub tool: String,
    /// When it started and ended (Unix ms, agent clock).
    pub started_at_unix_ms: i64,
    /// End.
    pub finished_at_unix_ms: i64,
}

impl Manifest {
    /// Reads the manifest of a backup directory.
    pub fn read(dir: &Path) -> io::Result<Manifest> {
        let bytes = std::fs::read(dir.join(MANIFEST_FILE))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes it last and atomically (temporary file, fsync, rename, fsync
    /// of the directory): a backup exists from this moment on.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("manifests always encode");
        dbfleet_common::durable::write_atomic(&dir.join(MANIFEST_FILE), &json, 0o640)
    }
}

/// Hashes and counts every byte written through it into `inner`, and
/// publishes the count in `progress`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
    progress: Arc<AtomicU64>,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W, progress: Arc<AtomicU64>) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            progress,
        }
    }

    /// The inner writer, the byte count and the hex SHA-256.
    pub fn finish(self) -> (W, u64, String) {
        (
            self.inner,
            self.bytes,
            format!("{:x}", self.hasher.finalize()),
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.progress.store(self.bytes, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    progress: Arc<AtomicU64>,
}

impl<R: io::Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, progress: Arc<AtomicU64>) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            progress,
        }
    }

    /// The byte count and the hex SHA-256 of what was read.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, format!("{:x}", self.hasher.finalize()))
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.progress.store(self.bytes, Ordering::Relaxed);
        Ok(n)
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn what_is_written_and_read_back_hashes_the_same() {
        let progress = Arc::new(AtomicU64::new(0));
        let mut w = HashingWriter::new(Vec::new(), progress.clone());
        w.write_all(b"hello backup").unwrap();
        let (buf, n, sha) = w.finish();
        assert_eq!((n, progress.load(Ordering::Relaxed)), (12, 12));
        let mut r = HashingReader::new(&buf[..], Arc::new(AtomicU64::new(0)));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(r.finish(), (12, sha));
    }

    #[test]
    fn a_manifest_is_written_whole_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let m = Manifest {
            format: 1,
            id: "b1".into(),
            cluster: "main".into(),
            host: "db2".into(),
            server_id: 2,
            server_uuid: String::new(),
            flavor: "mariadb".into(),
            server_version: "10.11".into(),
            method: "physical".into(),
            parent: None,
            start_gtid: "0-1-5".into(),
            end_gtid: "0-1-7".into(),
            binlog_file: "bin.000001".into(),
            binlog_position: 321,
            stream_bytes: 100,
            files: vec![StoredFile {
                name: DATA_FILE.into(),
                bytes: 10,
                sha256: "00".into(),
            }],
            compression: "zstd-3".into(),
            tool: "mariadb-backup 10.11".into(),
            started_at_unix_ms: 1,
            finished_at_unix_ms: 2,
        };
        m.write(d.path()).unwrap();
        assert_eq!(Manifest::read(d.path()).unwrap(), m);
    }
}
