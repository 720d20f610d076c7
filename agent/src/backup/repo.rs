//! Backups in the repository: where each backup's files go, the manifest
//! that makes a backup exist, and the streaming pieces (a writer that
//! hashes and counts what it stores).
//!
//! Layout (docs/backups.md): `CLUSTER/backups/ID/` holds
//! `data.xbstream.zst` (or `dump.sql.zst`), `backup.log` (the tool's own
//! log) and `manifest.json`, written last and atomically. A backup without
//! a manifest is not a backup.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::throttle::Throttle;
use crate::repository::Repository;
use dbfleet_common::seal::{self, Sealing};

/// The stream file of a physical backup.
pub const DATA_FILE: &str = "data.xbstream.zst";
/// A MySQL physical backup's stored stream: the CLONE copy as a tar archive.
pub const CLONE_FILE: &str = "data.tar.zst";
/// The SQL of a logical backup.
pub const DUMP_FILE: &str = "dump.sql.zst";
/// The manifest: written last; its presence is what makes a backup.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The backup tool's log.
pub const LOG_FILE: &str = "backup.log";

/// One backup's place in the repository: its key prefix.
#[derive(Debug, Clone)]
pub struct BackupDir {
    /// The repository.
    pub repo: Arc<Repository>,
    /// `CLUSTER/backups/ID`.
    pub key: String,
}

impl BackupDir {
    /// Backup `id` of `cluster`.
    pub fn new(repo: &Arc<Repository>, cluster: &str, id: &str) -> BackupDir {
        BackupDir {
            repo: repo.clone(),
            key: format!("{cluster}/backups/{id}"),
        }
    }

    /// The key of its file `name`.
    pub fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.key)
    }

    /// Another backup of the same cluster.
    pub fn sibling(&self, id: &str) -> BackupDir {
        let base = self.key.rsplit_once('/').map_or("", |(b, _)| b);
        BackupDir {
            repo: self.repo.clone(),
            key: format!("{base}/{id}"),
        }
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        self.repo.describe(&self.key)
    }
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
    /// "physical" or "logical".
    pub method: String,
    /// The backup an incremental one is built on.
    pub parent: Option<String>,
    /// InnoDB's LSN an incremental backup copies changes from (0 for a
    /// full one): its parent's `lsn_to`.
    #[serde(default)]
    pub lsn_from: u64,
    /// The checkpoint LSN a physical backup reached; the next incremental
    /// one starts there.
    #[serde(default)]
    pub lsn_to: u64,
    /// Tables a logical backup holds (its `CREATE TABLE` statements), for
    /// verification.
    #[serde(default)]
    pub tables: u64,
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
    /// The rate limit the tool's stream was read at, if any.
    #[serde(default)]
    pub rate_limit_bytes_per_s: Option<u64>,
    /// The age recipient (`age1...`) its data files are sealed for; empty:
    /// stored unsealed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sealed_for: String,
    /// The backup tool and its version.
    pub tool: String,
    /// When it started and ended (Unix ms, agent clock).
    pub started_at_unix_ms: i64,
    /// End.
    pub finished_at_unix_ms: i64,
}

impl Manifest {
    /// Reads the manifest of a backup.
    pub fn read(dir: &BackupDir) -> io::Result<Manifest> {
        let bytes = dir.repo.read(&dir.file(MANIFEST_FILE))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The manifest of a backup, or an error that says it is no usable
    /// backup.
    pub fn read_usable(dir: &BackupDir) -> Result<Manifest, String> {
        Manifest::read(dir).map_err(|e| {
            format!(
                "{} is not a usable backup: no readable manifest ({e})",
                dir.describe()
            )
        })
    }

    /// The stored file holding the backup's data.
    pub fn data_file(&self) -> Result<&StoredFile, String> {
        let name = if self.method == "logical" {
            DUMP_FILE
        } else if self.flavor == "mysql" {
            CLONE_FILE
        } else {
            DATA_FILE
        };
        self.files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| format!("the manifest of {} lists no {name}", self.id))
    }

    /// Whether this is an incremental backup.
    pub fn incremental(&self) -> bool {
        self.parent.is_some()
    }

    /// Writes it last and atomically: a backup exists from this moment on.
    pub fn write(&self, dir: &BackupDir) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("manifests always encode");
        dir.repo.put(&dir.file(MANIFEST_FILE), &json)
    }
}

/// The backups a restore of the backup in `dir` needs, oldest first: the
/// full one and the incremental ones on top of it, each with its
/// manifest. Every link must be present and continue its parent's LSN.
pub fn chain(dir: &BackupDir) -> Result<Vec<(BackupDir, Manifest)>, String> {
    let mut out = vec![(dir.clone(), Manifest::read_usable(dir)?)];
    while let Some(parent) = out.last().and_then(|(_, m)| m.parent.clone()) {
        let (child_dir, child) = out.last().expect("not empty");
        if out.len() > 1000 {
            return Err(format!(
                "backup {} has a chain of over 1000 parents",
                child.id
            ));
        }
        let parent_dir = child_dir.sibling(&parent);
        let m = Manifest::read(&parent_dir).map_err(|e| {
            format!(
                "backup {} is built on {parent}, which is not usable ({e}): restore a full backup instead",
                child.id
            )
        })?;
        if m.method != "physical" || child.lsn_from != m.lsn_to || m.lsn_to == 0 {
            return Err(format!(
                "backup {} does not continue its parent {parent} (LSN {} after {} {} at LSN {})",
                child.id, child.lsn_from, m.method, parent, m.lsn_to
            ));
        }
        out.push((parent_dir, m));
    }
    out.reverse();
    Ok(out)
}

/// What [`store_stream`] stored.
#[derive(Debug)]
pub struct Stored {
    /// Uncompressed bytes read.
    pub raw: u64,
    /// Compressed bytes written.
    pub stored: u64,
    /// SHA-256 of the written bytes, hex.
    pub sha256: String,
}

impl Stored {
    /// The file as the manifest lists it.
    pub fn file(&self, name: &str) -> StoredFile {
        StoredFile {
            name: name.to_string(),
            bytes: self.stored,
            sha256: self.sha256.clone(),
        }
    }
}

/// How a backup's stream is stored: `[backup]`'s compression and rate
/// limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pipeline {
    /// zstd level.
    pub level: i32,
    /// zstd worker threads.
    pub threads: u32,
    /// Read the tool's stream no faster than this (see [`super::throttle`]).
    pub rate_limit_bytes_per_s: Option<u64>,
}

/// Where a backup's stream is stored, and how.
pub struct StreamTo<'a> {
    /// The backup.
    pub dir: &'a BackupDir,
    /// The new file's name in it.
    pub name: &'a str,
    /// Compression and rate limit.
    pub pipeline: Pipeline,
    /// Bytes stored so far, for reports.
    pub progress: Arc<AtomicU64>,
    /// Set to stop early (the agent shuts down); checked between pieces.
    pub cancel: &'a AtomicBool,
}

/// Compresses and hashes everything `input` yields into the new file
/// `to` names, complete and durable when this returns (and absent when it
/// fails); `observe` sees each uncompressed piece on its way.
fn store_stream(
    input: &mut impl io::Read,
    to: StreamTo<'_>,
    mut observe: impl FnMut(&[u8]),
) -> Result<Stored, String> {
    let key = to.dir.file(to.name);
    let what = || to.dir.repo.describe(&key);
    let file = to
        .dir
        .repo
        .create(&key)
        .map_err(|e| format!("cannot create {}: {e}", what()))?;
    let sink = HashingWriter::new(file, to.progress);
    let sealed =
        Sealing::new(to.dir.repo.seal(), sink).map_err(|e| format!("writing {}: {e}", what()))?;
    let mut z =
        zstd::stream::Encoder::new(sealed, to.pipeline.level).map_err(|e| format!("zstd: {e}"))?;
    z.multithread(to.pipeline.threads.max(1))
        .map_err(|e| format!("zstd threads: {e}"))?;
    let mut throttle = to.pipeline.rate_limit_bytes_per_s.map(Throttle::new);
    let mut buf = vec![0u8; 1 << 20];
    let mut raw = 0u64;
    loop {
        if to.cancel.load(Ordering::Relaxed) {
            return Err("stopped: the agent is shutting down".into());
        }
        let n = input
            .read(&mut buf)
            .map_err(|e| format!("reading the backup stream: {e}"))?;
        if n == 0 {
            break;
        }
        raw += n as u64;
        if let Some(t) = &mut throttle {
            t.pass(n, to.cancel)?;
        }
        observe(&buf[..n]);
        z.write_all(&buf[..n])
            .map_err(|e| format!("writing {}: {e}", what()))?;
    }
    let sink = z
        .finish()
        .and_then(Sealing::finish)
        .map_err(|e| format!("writing {}: {e}", what()))?;
    let (writer, stored, sha256) = sink.finish();
    writer
        .finish()
        .map_err(|e| format!("writing {}: {e}", what()))?;
    Ok(Stored {
        raw,
        stored,
        sha256,
    })
}

/// Creates the tool's log in `work` (a directory of the agent's, created
/// here); returns its path and file. [`keep_log`] stores it with the
/// backup.
pub fn create_log(work: &Path) -> Result<(std::path::PathBuf, std::fs::File), String> {
    std::fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let log_path = work.join(LOG_FILE);
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    Ok((log_path, log))
}

/// Stores the tool's log with backup `dir`.
pub fn keep_log(dir: &BackupDir, log_path: &Path) -> Result<(), String> {
    let text = std::fs::read(log_path).unwrap_or_default();
    let key = dir.file(LOG_FILE);
    dir.repo
        .put(&key, &text)
        .map_err(|e| format!("cannot write {}: {e}", dir.repo.describe(&key)))
}

/// Stores a tool's standard output (compressed and hashed, see
/// [`StreamTo`]); the tool is killed when storing fails or the agent stops,
/// and waited for either way. Returns its exit status.
///
/// The stop cannot wait for the next piece of output: a tool that writes
/// nothing (held by a lock, stopped, hung on its disk) would keep the
/// read, and so the agent, waiting for ever. A watcher kills the tool as
/// soon as `cancel` is set; it ends before the tool is reaped, so the pid
/// it signals is always this child's.
pub fn store_output(
    child: &mut std::process::Child,
    to: StreamTo<'_>,
    observe: impl FnMut(&[u8]),
) -> Result<(Stored, std::process::ExitStatus), String> {
    let mut stdout = child
        .stdout
        .take()
        .ok_or("the tool's output is not piped")?;
    let cancel = to.cancel;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let done = AtomicBool::new(false);
    let stored = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if cancel.load(Ordering::Relaxed) {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        // Set however the read ends (a panic too), so the watcher stops.
        let _done = SetOnDrop(&done);
        store_stream(&mut stdout, to, observe)
    });
    let stored = match stored {
        Ok(_) if cancel.load(Ordering::Relaxed) => {
            Err("stopped: the agent is shutting down".to_string())
        }
        other => other,
    };
    if stored.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the backup tool: {e}"))?;
    Ok((stored?, status))
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Why a stored file could not be read back.
#[derive(Debug)]
pub enum ReadError {
    /// Its bytes are not the ones stored: the backup is damaged.
    Corrupt(String),
    /// It could not be opened, or its reader stopped taking bytes.
    Failed(String),
}

impl From<ReadError> for String {
    fn from(e: ReadError) -> String {
        match e {
            ReadError::Corrupt(m) | ReadError::Failed(m) => m,
        }
    }
}

/// Decompresses the stored file `key` of `repo` into `out`, checking it
/// against the size and checksum it was stored with. A file that does not
/// match is corrupt whatever else went wrong (it is hashed whole even when
/// `out` stops taking bytes: a full scratch disk is no corrupt backup).
pub fn read_stored(
    repo: &Repository,
    key: &str,
    expected: &StoredFile,
    progress: Arc<AtomicU64>,
    out: &mut impl Write,
) -> Result<(), ReadError> {
    let file = repo
        .open_read(key)
        .map_err(|e| ReadError::Failed(format!("cannot open {}: {e}", repo.describe(key))))?;
    let mut reader = HashingReader::new(file, progress);
    // A file that cannot be opened (no key, another key, a damaged age
    // header) is hashed whole too: damage is corruption, not a key problem.
    let copied = match seal::open(repo.seal(), &mut reader, &repo.describe(key)) {
        Ok(mut opened) => zstd::stream::copy_decode(&mut opened, &mut *out)
            .and_then(|()| out.flush())
            .map_err(|e| {
                format!(
                    "cannot decompress {} into its reader: {e}",
                    repo.describe(key)
                )
            }),
        Err(e) => Err(e),
    };
    if copied.is_err() {
        let _ = io::copy(&mut reader, &mut io::sink());
    }
    let (bytes, sha) = reader.finish();
    if sha != expected.sha256 || bytes != expected.bytes {
        return Err(ReadError::Corrupt(format!(
            "{} is corrupt: {bytes} bytes with SHA-256 {sha}, it was stored as {} bytes with {}",
            repo.describe(key),
            expected.bytes,
            expected.sha256
        )));
    }
    copied.map_err(ReadError::Failed)
}

/// What feeding a stored file to a tool came to: a corrupt file first
/// (the tool's failure is its consequence), then the tool's own failure
/// in `tool_failed`'s words, then a feed that stopped.
pub fn fed_outcome(
    fed: Result<(), ReadError>,
    status: std::process::ExitStatus,
    tool_failed: impl FnOnce(std::process::ExitStatus) -> String,
) -> Result<(), String> {
    match fed {
        Err(ReadError::Corrupt(e)) => Err(e),
        _ if !status.success() => Err(tool_failed(status)),
        other => other.map_err(String::from),
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

    fn manifest(id: &str) -> Manifest {
        Manifest {
            format: 1,
            id: id.into(),
            cluster: "main".into(),
            host: "db2".into(),
            server_id: 2,
            server_uuid: String::new(),
            flavor: "mariadb".into(),
            server_version: "10.11".into(),
            method: "physical".into(),
            parent: None,
            lsn_from: 0,
            lsn_to: 500,
            tables: 0,
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
            rate_limit_bytes_per_s: None,
            sealed_for: String::new(),
            tool: "mariadb-backup 10.11".into(),
            started_at_unix_ms: 1,
            finished_at_unix_ms: 2,
        }
    }

    fn repository(d: &tempfile::TempDir) -> Arc<Repository> {
        Arc::new(Repository::open(&d.path().to_string_lossy(), None).unwrap())
    }

    #[test]
    fn a_manifest_is_written_whole_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let dir = BackupDir::new(&repository(&d), "main", "b1");
        let m = manifest("b1");
        m.write(&dir).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), m);
    }

    #[test]
    fn an_incremental_chain_is_resolved_oldest_first_and_every_link_checked() {
        let d = tempfile::tempdir().unwrap();
        let repo = repository(&d);
        let put = |m: &Manifest| {
            let dir = BackupDir::new(&repo, "main", &m.id);
            m.write(&dir).unwrap();
            dir
        };
        put(&manifest("full"));
        let inc1 = Manifest {
            parent: Some("full".into()),
            lsn_from: 500,
            lsn_to: 700,
            ..manifest("inc1")
        };
        put(&inc1);
        let inc2 = put(&Manifest {
            parent: Some("inc1".into()),
            lsn_from: 700,
            lsn_to: 900,
            ..manifest("inc2")
        });
        let ids: Vec<String> = chain(&inc2)
            .unwrap()
            .into_iter()
            .map(|(_, m)| m.id)
            .collect();
        assert_eq!(ids, ["full", "inc1", "inc2"]);
        // a gap in the LSNs
        let bad = put(&Manifest {
            parent: Some("inc1".into()),
            lsn_from: 650,
            ..manifest("bad")
        });
        let e = chain(&bad).unwrap_err();
        assert!(e.contains("does not continue its parent inc1"), "{e}");
        // a parent gone from the repository
        repo.remove_all("main/backups/full").unwrap();
        let e = chain(&inc2).unwrap_err();
        assert!(
            e.contains("inc1 is built on full, which is not usable"),
            "{e}"
        );
    }

    /// A tool's output is stored whole and hashed, and read no faster than
    /// the rate limit: the elapsed time's lower bound is what the throttle
    /// enforces, so it holds on any machine however slow.
    #[test]
    fn a_rate_limited_stream_is_stored_whole_no_faster_than_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let repo = repository(&d);
        let dir = BackupDir::new(&repo, "main", "limited");
        let mib = 1u64 << 20;
        let mut child = std::process::Command::new("head")
            .args(["-c", &(6 * mib).to_string(), "/dev/zero"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let to = StreamTo {
            dir: &dir,
            name: DATA_FILE,
            pipeline: Pipeline {
                level: 1,
                threads: 1,
                rate_limit_bytes_per_s: Some(2 * mib),
            },
            progress: Arc::new(AtomicU64::new(0)),
            cancel: &AtomicBool::new(false),
        };
        let started = std::time::Instant::now();
        let (stored, status) = store_output(&mut child, to, |_| {}).unwrap();
        let elapsed = started.elapsed();
        assert!(status.success());
        assert_eq!(stored.raw, 6 * mib);
        assert!(
            elapsed >= std::time::Duration::from_secs(3),
            "6 MiB at 2 MiB/s took only {elapsed:?}"
        );
        let mut back = Vec::new();
        let file = stored.file(DATA_FILE);
        read_stored(
            &repo,
            &dir.file(DATA_FILE),
            &file,
            Arc::new(AtomicU64::new(0)),
            &mut back,
        )
        .unwrap();
        assert_eq!(back.len() as u64, 6 * mib);
    }
}
