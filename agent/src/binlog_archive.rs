//! Continuous binlog archiving: every pass copies what the local server
//! has committed to its binlogs since the last pass into the repository,
//! compressed and checksummed, up to the server's current position.
//!
//! The agent reads the binlog files on its own host (it runs next to
//! mysqld), bounded by `SHOW MASTER STATUS`, which is always a commit
//! boundary. There is no replication connection to lose: after a server
//! restart or a failover the next pass simply finds more files. The
//! active binlog is archived as it grows, so the archive trails the
//! server by about one pass (the RPO), not by a binlog rotation.
//!
//! Where each file stands is kept in `state_dir/binlog-archive.json`,
//! written after each chunk's meta: a pass cut short repeats at most one
//! chunk, under the same name.

pub mod events;
pub mod store;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbfleet_common::clock::unix_ms;
use dbfleet_common::seal::Sealing;
use dbfleet_common::tls::TlsContext;
use dbfleet_proto::model::Flavor;
use dbfleet_proto::pb;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backup::repo::{HashingWriter, StoredFile};
use crate::mysql::observer::{self, MysqlTarget};
use crate::repository::Repository;
use store::{ChunkMeta, Head, file_number, streams_key};

/// Largest chunk: a long-idle archive catching up writes several.
const MAX_CHUNK: u64 = 64 << 20;
/// A head unchanged this long is rewritten anyway, so PITR can tell an
/// idle server from an archive that stopped.
const HEAD_REFRESH_MS: i64 = 5_000;

/// Where the archive of one binlog file stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FileProgress {
    /// Timestamp of the file's format description event: a file of the
    /// same name with another one is another history.
    created_ts: u32,
    archived_to: u64,
    /// Where the last chunk of the file starts (its meta is rewritten
    /// closed when the server moves on).
    #[serde(default)]
    last_chunk: u64,
    closed: bool,
}

/// The archiver's durable state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    stream: String,
    files: BTreeMap<String, FileProgress>,
}

/// What reports say about the archive.
#[derive(Debug, Clone, Default)]
pub struct Status {
    stream: String,
    file: String,
    position: u64,
    caught_up_at_unix_ms: i64,
    error: String,
}

/// The archive's state for reports, shared with the collector, and the
/// restore's say over the archiver.
#[derive(Debug)]
pub struct ArchiveStatus {
    /// When this process started archiving: until a first pass catches
    /// up, nothing committed since may be safe, so the lag counts from
    /// here (a first pass that takes long, or fails from the start, shows
    /// a growing lag instead of 0).
    started_unix_ms: i64,
    status: Mutex<Option<Status>>,
    /// A restore is replacing the server's data: no passes.
    paused: AtomicBool,
    /// The next pass starts a new stream (the server's history was
    /// replaced).
    new_stream: AtomicBool,
}

impl Default for ArchiveStatus {
    fn default() -> Self {
        ArchiveStatus {
            started_unix_ms: unix_ms(),
            status: Mutex::default(),
            paused: AtomicBool::default(),
            new_stream: AtomicBool::default(),
        }
    }
}

impl ArchiveStatus {
    /// Stops passes until [`ArchiveStatus::resume_with_new_stream`].
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Lets passes run again, in a new stream.
    pub fn resume_with_new_stream(&self) {
        self.new_stream.store(true, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
    }

    /// For the agent's report; `None` when archiving is off.
    pub fn report(&self) -> Option<pb::BinlogArchive> {
        let s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let since = if s.caught_up_at_unix_ms == 0 {
            self.started_unix_ms
        } else {
            s.caught_up_at_unix_ms
        };
        let lag_ms = (unix_ms() - since).max(0) as u64;
        Some(pb::BinlogArchive {
            stream: s.stream,
            file: s.file,
            position: s.position,
            caught_up_at_unix_ms: s.caught_up_at_unix_ms,
            lag_ms,
            error: s.error,
        })
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut g = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(g.get_or_insert_with(Status::default));
    }
}

/// What the server said in one pass.
struct ServerBinlogs {
    dir: PathBuf,
    server_id: u32,
    /// MySQL's `server_uuid`; MariaDB has none (empty).
    server_uuid: String,
    writable: bool,
    /// (name, size) oldest first.
    files: Vec<(String, u64)>,
    current: (String, u64),
}

/// The server's `server_uuid`, empty on MariaDB (asked this way because
/// MariaDB has no such variable: no row there). It cannot change while a
/// connection lasts, so it is asked once per connection.
async fn ask_uuid(conn: &mut mysql_async::Conn) -> Result<String, String> {
    Ok(conn
        .query_first::<(String, String), _>("SHOW GLOBAL VARIABLES LIKE 'server_uuid'")
        .await
        .map_err(|e| format!("SHOW GLOBAL VARIABLES: {e}"))?
        .map(|(_, v)| v)
        .unwrap_or_default())
}

/// One pass's questions to the server, whose UUID is `server_uuid`.
async fn ask_server(
    conn: &mut mysql_async::Conn,
    server_uuid: String,
) -> Result<ServerBinlogs, String> {
    let (basename, server_id, read_only): (Option<String>, u32, u8) = conn
        .query_first("SELECT @@log_bin_basename, @@server_id, @@read_only")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no answer")?;
    let basename = basename.ok_or("the binary log is off (log_bin); nothing to archive")?;
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| format!("SHOW BINARY LOGS: {e}"))?;
    let files = rows
        .into_iter()
        .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
        .collect();
    // MySQL 8.4 removed SHOW MASTER STATUS; MariaDB never had the new
    // name. Only MySQL has a server_uuid.
    let status = if server_uuid.is_empty() {
        "SHOW MASTER STATUS"
    } else {
        "SHOW BINARY LOG STATUS"
    };
    let row: mysql_async::Row = conn
        .query_first(status)
        .await
        .map_err(|e| format!("{status}: {e}"))?
        .ok_or_else(|| format!("{status} returned nothing (is log_bin on?)"))?;
    let current = (
        row.get::<String, _>(0).unwrap_or_default(),
        row.get::<u64, _>(1).unwrap_or_default(),
    );
    let dir = Path::new(&basename)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok(ServerBinlogs {
        dir,
        server_id,
        server_uuid,
        writable: read_only == 0,
        files,
        current,
    })
}

impl ServerBinlogs {
    /// Whose binlog format the files are in: only MySQL has a UUID.
    fn flavor(&self) -> Flavor {
        if self.server_uuid.is_empty() {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        }
    }

    /// How far binlog `name` of `size` bytes may be archived now: the
    /// server's position in the active file, the whole of a closed one.
    fn limit(&self, name: &str, size: u64) -> u64 {
        if name == self.current.0 {
            self.current.1
        } else {
            size
        }
    }
}

/// The archiver of one agent.
pub struct Archiver {
    cluster: String,
    host: String,
    repository: Arc<Repository>,
    state_path: PathBuf,
    target: MysqlTarget,
    level: i32,
    state: State,
    last_head: Option<(Head, i64)>,
    status: Arc<ArchiveStatus>,
    /// The connection kept from pass to pass, with its server's UUID.
    conn: Option<(mysql_async::Conn, String)>,
    /// Signs every chunk meta with the agent's certificate key.
    tls: Arc<TlsContext>,
}

fn read_state(path: &Path) -> Option<State> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The creation timestamp in a binlog file's format description event.
fn created_ts(path: &Path) -> std::io::Result<u32> {
    let mut head = [0u8; 8];
    std::fs::File::open(path)?.read_exact(&mut head)?;
    if &head[..4] != events::MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a binlog file", path.display()),
        ));
    }
    Ok(u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")))
}

impl Archiver {
    /// An archiver of `of`'s server writing to `repository` at zstd
    /// `level`, its state in `of`'s state directory.
    pub fn new(
        of: &crate::backup::JobsOf,
        repository: Arc<Repository>,
        level: i32,
        target: MysqlTarget,
        status: Arc<ArchiveStatus>,
        tls: Arc<TlsContext>,
    ) -> Archiver {
        let (cluster, host, state_dir) = (&of.cluster, &of.host, &of.state_dir);
        let state_path = state_dir.join("binlog-archive.json");
        let state = read_state(&state_path).unwrap_or_default();
        Archiver {
            cluster: cluster.to_string(),
            host: host.to_string(),
            repository,
            state_path,
            target,
            level,
            state,
            last_head: None,
            status,
            conn: None,
            tls,
        }
    }

    /// What the server says about its binlogs, over a connection kept
    /// from pass to pass (one pass a second must not be one login a
    /// second); a failed or late answer drops it.
    async fn server(&mut self) -> Result<ServerBinlogs, String> {
        let limit = self.target.connect_timeout + self.target.query_timeout;
        let (target, slot) = (&self.target, &mut self.conn);
        tokio::time::timeout(limit, async {
            let (mut conn, uuid) = match slot.take() {
                Some(kept) => kept,
                None => {
                    let mut c = observer::connect(target).await?.0;
                    let uuid = ask_uuid(&mut c).await?;
                    (c, uuid)
                }
            };
            let answer = ask_server(&mut conn, uuid.clone()).await;
            if answer.is_ok() {
                *slot = Some((conn, uuid));
            }
            answer
        })
        .await
        .map_err(|_| format!("mysqld did not answer within {limit:?}"))?
    }

    /// The current stream's key prefix.
    fn stream_key(&self) -> String {
        format!("{}/{}", streams_key(&self.cluster), self.state.stream)
    }

    fn save(&self) -> Result<(), String> {
        dbfleet_common::durable::write_atomic(
            &self.state_path,
            &serde_json::to_vec(&self.state).expect("state encodes"),
            0o600,
        )
        .map_err(|e| format!("cannot write {}: {e}", self.state_path.display()))
    }

    /// Starts a new stream: the first pass, or the server's binlog history
    /// started over. It is named after the server (its `server_uuid` on
    /// MySQL, its `server_id` on MariaDB, which has no UUID) and the time,
    /// so no two streams ever share a name.
    fn new_stream(&mut self, server: &ServerBinlogs, why: &str) -> Result<(), String> {
        let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .replace(['-', ':', '.'], "");
        let id = if server.server_uuid.is_empty() {
            server.server_id.to_string()
        } else {
            server.server_uuid.clone()
        };
        self.state = State {
            stream: format!("{}-{id}-{stamp}", self.host),
            files: BTreeMap::new(),
        };
        self.save()?;
        info!(
            stream = self.state.stream,
            why, "binlog archive stream started"
        );
        Ok(())
    }

    /// One pass: archive everything the server has committed so far.
    /// Reading and compressing runs on a blocking thread.
    pub async fn pass(mut self) -> (Archiver, Result<(), String>) {
        if self.status.paused.load(Ordering::SeqCst) {
            // mysqld is about to be replaced: no connection to a dead one
            self.conn = None;
            return (self, Ok(()));
        }
        let started = unix_ms();
        let server = match self.server().await {
            Ok(s) => s,
            Err(e) => return (self, Err(e)),
        };
        tokio::task::spawn_blocking(move || {
            let r = self.archive(&server, started);
            (self, r)
        })
        .await
        .expect("an archive pass does not panic")
    }

    fn archive(&mut self, server: &ServerBinlogs, started: i64) -> Result<(), String> {
        // Same names, other files (or a file cut below what was archived,
        // as crash recovery of a semi-sync replica may do): the history
        // started over.
        // (The creation time is read only of a file about to be archived
        // further: not every file on every pass.)
        let restarted = server.files.iter().any(|(name, size)| {
            self.state.files.get(name).is_some_and(|p| {
                let limit = server.limit(name, *size);
                limit < p.archived_to
                    || (limit > p.archived_to
                        && created_ts(&server.dir.join(name)).is_ok_and(|ts| ts != p.created_ts))
            })
        }) || {
            // a file never seen that is no newer than one archived: the
            // numbering started over (RESET MASTER)
            let newest = self.state.files.keys().filter_map(|n| file_number(n)).max();
            server.files.iter().any(|(name, _)| {
                !self.state.files.contains_key(name)
                    && file_number(name)
                        .zip(newest)
                        .is_some_and(|(n, max)| n <= max)
            })
        };
        let replaced = self.status.new_stream.swap(false, Ordering::SeqCst);
        if self.state.stream.is_empty() || restarted || replaced {
            let why = if restarted {
                "the server's binlogs started over"
            } else if replaced {
                "a restore replaced the server's data"
            } else {
                "no archive state"
            };
            self.new_stream(server, why)?;
        }
        let listed: Vec<&String> = server.files.iter().map(|(n, _)| n).collect();
        let mut archived = (String::new(), 0);
        for (name, size) in &server.files {
            let current = *name == server.current.0;
            let limit = server.limit(name, *size);
            let path = server.dir.join(name);
            let progress = match self.state.files.get(name) {
                Some(p) => p.clone(),
                None => FileProgress {
                    created_ts: created_ts(&path)
                        .map_err(|e| crate::mysql::process::cannot_read(&path, &e))?,
                    ..Default::default()
                },
            };
            let mut at = progress.archived_to;
            let gap_before = at == 0 && self.gap_before(name);
            while at < limit {
                let end = self.chunk(server, name, at, limit, !current, gap_before && at == 0)?;
                self.state.files.insert(
                    name.clone(),
                    FileProgress {
                        archived_to: end,
                        last_chunk: at,
                        closed: !current && end == limit,
                        ..progress.clone()
                    },
                );
                self.save()?;
                at = end;
            }
            if !current
                && self
                    .state
                    .files
                    .get(name)
                    .is_some_and(|p| !p.closed && p.archived_to == limit)
            {
                // archived while current, closed since: nothing more comes
                let last = self.state.files.get(name).map_or(0, |p| p.last_chunk);
                if let Some(mut meta) = self.read_meta(name, last).filter(|m| m.end == limit) {
                    meta.closed = true;
                    self.write_meta(&meta)?;
                }
                if let Some(p) = self.state.files.get_mut(name) {
                    p.closed = true;
                }
                self.save()?;
            }
            archived = (name.clone(), at);
        }
        // forget files the server purged, except the newest (gap checks)
        let newest = self
            .state
            .files
            .keys()
            .max_by_key(|n| file_number(n))
            .cloned();
        self.state
            .files
            .retain(|n, _| listed.contains(&n) || Some(n) == newest.as_ref());
        self.write_head(&archived, server, started)?;
        self.status.update(|s| {
            s.stream = self.state.stream.clone();
            s.file = archived.0.clone();
            s.position = archived.1;
            s.caught_up_at_unix_ms = started;
            s.error.clear();
        });
        Ok(())
    }

    /// A file seen for the first time whose predecessor was never archived
    /// to its end: the server purged binlogs the archive had not taken.
    fn gap_before(&self, name: &str) -> bool {
        let Some(n) = file_number(name) else {
            return false;
        };
        if self.state.files.is_empty() {
            return false;
        }
        !self
            .state
            .files
            .iter()
            .any(|(f, p)| file_number(f) == Some(n.saturating_sub(1)) && p.closed)
    }

    fn chunk_key(&self, file: &str, start: u64, ext: &str) -> String {
        format!(
            "{}/{}.{ext}",
            self.stream_key(),
            ChunkMeta::name(file, start)
        )
    }

    fn read_meta(&self, file: &str, start: u64) -> Option<ChunkMeta> {
        let bytes = self
            .repository
            .read(&self.chunk_key(file, start, "json"))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes a chunk's meta, signed with the agent's certificate key.
    fn write_meta(&self, meta: &ChunkMeta) -> Result<(), String> {
        let key = self.chunk_key(&meta.file, meta.start, "json");
        let signed = ChunkMeta {
            signature: Some(self.tls.sign(&meta.signed_bytes())?),
            ..meta.clone()
        };
        self.repository
            .put(
                &key,
                &serde_json::to_vec_pretty(&signed).expect("metas encode"),
            )
            .map_err(|e| format!("cannot write {}: {e}", self.repository.describe(&key)))
    }

    /// Archives `file` from `start` towards `limit` (at most
    /// [`MAX_CHUNK`], ending on an event boundary); returns the end.
    fn chunk(
        &self,
        server: &ServerBinlogs,
        file: &str,
        start: u64,
        limit: u64,
        closed_file: bool,
        gap_before: bool,
    ) -> Result<u64, String> {
        let path = server.dir.join(file);
        let want = (limit - start).min(MAX_CHUNK);
        let mut bytes = vec![0u8; want as usize];
        let mut f = std::fs::File::open(&path)
            .map_err(|e| crate::mysql::process::cannot_read(&path, &e))?;
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut bytes))
            .map_err(|e| crate::mysql::process::cannot_read(&path, &e))?;
        let mut summary = events::summarize(&bytes, bytes.len(), start == 0, server.flavor());
        if summary.whole == 0 && bytes.len() >= 13 {
            // one event larger than a chunk: the chunk grows to hold it
            let size = u64::from(u32::from_le_bytes(
                bytes[9..13].try_into().expect("4 bytes"),
            ));
            if size > want && start + size <= limit {
                bytes.resize(size as usize, 0);
                f.seek(SeekFrom::Start(start))
                    .and_then(|_| f.read_exact(&mut bytes))
                    .map_err(|e| crate::mysql::process::cannot_read(&path, &e))?;
                summary = events::summarize(&bytes, bytes.len(), start == 0, server.flavor());
            }
        }
        let want = bytes.len() as u64;
        let whole = if start + want == limit {
            // the server's position is a commit boundary: all of it
            bytes.len()
        } else {
            summary.whole
        };
        if whole == 0 {
            return Err(format!(
                "{} has an event larger than {MAX_CHUNK} bytes at {start}",
                path.display()
            ));
        }
        let end = start + whole as u64;
        let data = self.chunk_key(file, start, "zst");
        let stored = (|| -> std::io::Result<StoredFile> {
            let sink = HashingWriter::new(Vec::new(), Arc::new(AtomicU64::new(0)));
            let sealed = Sealing::new(self.repository.seal(), sink)?;
            let mut z = zstd::stream::Encoder::new(sealed, self.level)?;
            z.write_all(&bytes[..whole])?;
            let (compressed, n, sha) = z.finish()?.finish()?.finish();
            self.repository.put(&data, &compressed)?;
            Ok(StoredFile {
                name: format!("{}.zst", ChunkMeta::name(file, start)),
                bytes: n,
                sha256: sha,
            })
        })()
        .map_err(|e| format!("cannot write {}: {e}", self.repository.describe(&data)))?;
        self.write_meta(&ChunkMeta {
            format: 1,
            stream: self.state.stream.clone(),
            host: self.host.clone(),
            server_id: server.server_id,
            file: file.to_string(),
            start,
            end,
            closed: closed_file && end == limit,
            gap_before,
            stored,
            first_ts: summary.first_ts,
            last_ts: summary.last_ts,
            gtid_list: summary.gtid_list.map(|g| g.to_string()),
            gtids: summary.gtids.to_string(),
            archived_at_unix_ms: unix_ms(),
            signature: None,
        })?;
        Ok(end)
    }

    fn write_head(
        &mut self,
        archived: &(String, u64),
        server: &ServerBinlogs,
        checked: i64,
    ) -> Result<(), String> {
        let head = Head {
            file: archived.0.clone(),
            position: archived.1,
            checked_at_unix_ms: checked,
            server_file: server.current.0.clone(),
            server_position: server.current.1,
            writable: server.writable,
        };
        let fresh = self.last_head.as_ref().is_some_and(|(h, at)| {
            h.file == head.file
                && h.position == head.position
                && h.server_position == head.server_position
                && h.writable == head.writable
                && checked - at < HEAD_REFRESH_MS
        });
        if fresh {
            return Ok(());
        }
        let key = format!("{}/head.json", self.stream_key());
        self.repository
            .put(
                &key,
                &serde_json::to_vec_pretty(&head).expect("heads encode"),
            )
            .map_err(|e| format!("cannot write {}: {e}", self.repository.describe(&key)))?;
        self.last_head = Some((head, checked));
        Ok(())
    }
}

/// Archives every `interval` until `shutdown`; failures are reported (and
/// logged once per distinct error) and retried at the next pass.
pub async fn run(mut archiver: Archiver, interval: Duration, shutdown: CancellationToken) {
    let mut last_error = String::new();
    loop {
        let (a, r) = archiver.pass().await;
        archiver = a;
        match r {
            Ok(()) => last_error.clear(),
            Err(e) => {
                if e != last_error {
                    warn!(error = e, "binlog archiving failed; retrying");
                }
                archiver.status.update(|s| s.error = e.clone());
                last_error = e;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_that_never_caught_up_lags_since_it_started() {
        let a = ArchiveStatus {
            started_unix_ms: unix_ms() - 10_000,
            ..ArchiveStatus::default()
        };
        a.update(|s| s.error = "repository unreachable".into());
        let r = a.report().expect("archiving");
        assert!(r.lag_ms >= 10_000, "{r:?}");
        a.update(|s| s.caught_up_at_unix_ms = unix_ms());
        assert!(a.report().unwrap().lag_ms < 10_000);
    }
}
