//! The binlog archive in the repository, and how point-in-time recovery
//! finds the binlogs it needs there.
//!
//! Layout (docs/backups.md): `CLUSTER/binlogs/STREAM/` holds chunks
//! `FILE.OFFSET.zst` (bytes `start..end` of binlog `FILE`, compressed)
//! each with `FILE.OFFSET.json`, its meta, written last; `head.json` says
//! how far the server was archived when last checked. A stream is one
//! server's binlog history: a new stream starts whenever that history
//! starts over (restore, `RESET MASTER`, a lost agent state), so nothing
//! is ever overwritten, after a failover or otherwise.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use dbfleet_common::gtid_state::GtidState;
use serde::{Deserialize, Serialize};

use dbfleet_common::identity::{Identity, Role};
use dbfleet_common::signed::Signature;
use dbfleet_common::tls::TlsContext;

use crate::backup::repo::StoredFile;
use crate::repository::Repository;

/// The key under which every stream of a cluster is.
pub fn streams_key(cluster: &str) -> String {
    format!("{cluster}/binlogs")
}

/// What one archived chunk holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    /// Layout version.
    pub format: u32,
    /// The stream it belongs to.
    pub stream: String,
    /// Host and `server_id` of the server that wrote the binlog.
    pub host: String,
    /// See `host`.
    pub server_id: u32,
    /// The binlog file's name on the server.
    pub file: String,
    /// Byte range of the file this chunk holds.
    pub start: u64,
    /// End (exclusive): always an event boundary after a commit.
    pub end: u64,
    /// `end` is the end of the file (the server had moved to the next one).
    pub closed: bool,
    /// Binlogs were purged on the server before they were archived: the
    /// stream has a hole before this file.
    pub gap_before: bool,
    /// The compressed bytes.
    pub stored: StoredFile,
    /// Timestamps of the first and last event (Unix seconds).
    pub first_ts: u32,
    /// See `first_ts`.
    pub last_ts: u32,
    /// The server's GTID state before the file (chunks at offset 0): a
    /// MariaDB position or a MySQL set, in the server's flavor.
    pub gtid_list: Option<String>,
    /// This chunk's transactions: the highest GTID per domain (MariaDB),
    /// the set of them (MySQL).
    pub gtids: String,
    /// When it was archived (Unix ms, agent clock).
    pub archived_at_unix_ms: i64,
    /// The archiving agent's signature of everything above (the chunk's
    /// checksum included), with its certificate: who wrote the chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl ChunkMeta {
    /// The bytes its signature covers: the meta without the signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = ChunkMeta {
            signature: None,
            ..self.clone()
        };
        serde_json::to_vec(&unsigned).expect("metas encode")
    }

    /// Why this chunk is not proven written by its `host`, one of
    /// `writers`: a signature by that host's agent certificate, of this
    /// fleet, valid when it signed. `None`: proven.
    pub fn unproven(&self, writers: &Writers) -> Option<String> {
        if !writers.hosts.contains(&self.host) {
            return Some(format!(
                "{} is not an admitted member of the cluster",
                self.host
            ));
        }
        let Some(sig) = &self.signature else {
            return Some(
                "it is not signed (archived before archives were signed, or forged)".into(),
            );
        };
        match writers.tls.verify_signed(&self.signed_bytes(), sig) {
            Ok(who) if who == Identity::new(Role::Agent, self.host.clone()) => None,
            Ok(who) => Some(format!(
                "it is signed by {who}, not by {}'s agent",
                self.host
            )),
            Err(e) => Some(format!("its signature proves nothing: {e}")),
        }
    }
    /// The chunk's base name, `FILE.OFFSET`.
    pub fn name(file: &str, start: u64) -> String {
        format!("{file}.{start:012}")
    }
}

/// How far a stream's server was archived when last checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The binlog file and position archived up to.
    pub file: String,
    /// See `file`.
    pub position: u64,
    /// When the agent checked (Unix ms): no commit before this time is
    /// missing from the stream, unless `position` is behind the server.
    pub checked_at_unix_ms: i64,
    /// The server's position then; equal to `file`/`position` when the
    /// archive had caught up.
    pub server_file: String,
    /// See `server_file`.
    pub server_position: u64,
    /// The server was writable (the primary) then. Only a primary's head
    /// vouches that no transaction before `checked_at_unix_ms` is
    /// missing: a replica may not have received them yet.
    #[serde(default)]
    pub writable: bool,
}

/// A file name with no directory in it.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\\')
}

/// The number in `name.000042`, for ordering binlog files.
pub fn file_number(name: &str) -> Option<u64> {
    name.rsplit('.').next()?.parse().ok()
}

/// A stream as found in the repository.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Its key prefix, `CLUSTER/binlogs/NAME`.
    pub key: String,
    /// Its name.
    pub name: String,
    /// Its chunks in binlog order.
    pub chunks: Vec<ChunkMeta>,
    /// Its head, when written.
    pub head: Option<Head>,
}

/// Reads every stream of the cluster (chunks without a meta are not
/// archived yet and are skipped).
pub fn read_streams(repo: &Repository, cluster: &str) -> io::Result<Vec<Stream>> {
    let mut out = Vec::new();
    let all = streams_key(cluster);
    for name in repo.list(&all)? {
        let key = format!("{all}/{name}");
        let files = repo.list(&key)?;
        if files.is_empty() {
            continue;
        }
        let metas: Vec<String> = files
            .iter()
            .filter(|f| f.ends_with(".json") && *f != "head.json")
            .map(|f| format!("{key}/{f}"))
            .collect();
        let mut chunks = Vec::new();
        for (meta_key, read) in metas.iter().zip(repo.read_many(&metas)) {
            // An unreadable meta, or one naming paths, makes the chunk
            // unusable (a hole), not the whole archive.
            match read
                .ok()
                .and_then(|b| serde_json::from_slice::<ChunkMeta>(&b).ok())
            {
                Some(meta) if plain_name(&meta.file) && plain_name(&meta.stored.name) => {
                    chunks.push(meta)
                }
                _ => tracing::warn!(
                    meta = repo.describe(meta_key),
                    "unusable binlog chunk meta skipped"
                ),
            }
        }
        let head = if files.iter().any(|f| f == "head.json") {
            serde_json::from_slice(&repo.read(&format!("{key}/head.json"))?).ok()
        } else {
            None
        };
        chunks.sort_by_key(|c| (file_number(&c.file), c.start));
        out.push(Stream {
            key,
            name,
            chunks,
            head,
        });
    }
    Ok(out)
}

/// Where replay should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every transaction committed before this time (Unix seconds).
    Time(i64),
    /// Up to and including these GTIDs.
    Gtid(GtidState),
    /// Everything archived (a rebuild: the fewer transactions the primary
    /// must still hold for the rejoin, the better).
    Latest,
}

/// The chunks to replay: every chunk of the files from the first one to
/// replay onwards, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The stream they come from.
    pub stream: String,
    /// The stream's key prefix.
    pub key: String,
    /// Chunks to decompress, in order, grouped into files by the caller.
    pub chunks: Vec<ChunkMeta>,
}

/// Who may have written the streams a restore replays: the cluster's
/// admitted members (as the coordinator names them in the command), each
/// proven by its agent certificate's signature on every chunk meta. The
/// repository is writable by every agent and whoever holds the bucket's
/// keys; replay runs as a superuser, so nothing else is replayed.
#[derive(Debug, Clone)]
pub struct Writers {
    /// This agent's TLS context: the fleet's CA and revocation list.
    pub tls: Arc<TlsContext>,
    /// Hosts whose streams may be replayed.
    pub hosts: Vec<String>,
}

/// Keeps of each stream only the chunks proven written by their host (see
/// [`ChunkMeta::unproven`]); a stream loses everything from its first
/// unproven chunk on. Returns the streams and, per stream that lost
/// chunks, why, for the plan's error.
pub fn proven(streams: Vec<Stream>, writers: &Writers) -> (Vec<Stream>, Vec<String>) {
    let mut why = Vec::new();
    let kept = streams
        .into_iter()
        .map(|mut s| {
            if let Some((i, reason)) = s
                .chunks
                .iter()
                .enumerate()
                .find_map(|(i, c)| c.unproven(writers).map(|r| (i, r)))
            {
                let c = &s.chunks[i];
                why.push(format!(
                    "{}: {} is not proven written by {}: {reason}",
                    s.name,
                    ChunkMeta::name(&c.file, c.start),
                    c.host
                ));
                s.chunks.truncate(i);
            }
            s
        })
        .collect();
    (kept, why)
}

/// The longest runs of chunks with no hole: chunk after chunk in one file,
/// and a closed file followed by the next file's start.
fn runs(chunks: &[ChunkMeta]) -> Vec<&[ChunkMeta]> {
    let mut out = Vec::new();
    let mut begin = 0;
    for i in 1..=chunks.len() {
        let breaks = i == chunks.len() || {
            let (a, b) = (&chunks[i - 1], &chunks[i]);
            let same_file = a.file == b.file && b.start == a.end;
            let next_file = a.closed
                && b.start == 0
                && !b.gap_before
                && file_number(&b.file) == file_number(&a.file).map(|n| n + 1);
            !(same_file || next_file)
        };
        if breaks {
            out.push(&chunks[begin..i]);
            begin = i;
        }
    }
    out
}

/// Finds, across all streams, binlogs that continue a backup consistent at
/// `start` up to `target` with no hole: the run must hold the start of a
/// file whose GTID state before it is at or before `start`, and reach
/// the target. The reason names what is missing when none does.
pub fn plan(streams: &[Stream], start: &GtidState, target: &Target) -> Result<Plan, String> {
    let mut why = Vec::new();
    // for `Latest`: the run that ends last of those continuing the backup
    let mut latest: Option<Plan> = None;
    for s in streams {
        for run in runs(&s.chunks) {
            // the last file start in the run at or before the backup
            let Some(first) = run.iter().rposition(|c| {
                c.start == 0
                    && c.gtid_list
                        .as_deref()
                        .and_then(|g| GtidState::parse(g).ok())
                        .is_some_and(|g| start.covers(&g))
            }) else {
                why.push(format!(
                    "{}: {}..{} does not reach back to the backup's position {start}",
                    s.name,
                    run[0].file,
                    run[run.len() - 1].file
                ));
                continue;
            };
            let tail = &run[first..];
            let last = &tail[tail.len() - 1];
            // what a replay of the tail onto the backup holds at its end
            let reached = tail.iter().fold(start.clone(), |p, c| {
                p.merge(&GtidState::parse(&c.gtids).unwrap_or_default())
            });
            let reaches = match target {
                Target::Latest => {
                    let ends = |p: &Plan| p.chunks.last().map_or(0, |c| c.last_ts);
                    let this = Plan {
                        stream: s.name.clone(),
                        key: s.key.clone(),
                        chunks: tail.to_vec(),
                    };
                    if latest.as_ref().is_none_or(|l| ends(&this) > ends(l)) {
                        latest = Some(this);
                    }
                    continue;
                }
                Target::Gtid(g) => reached.covers(g),
                Target::Time(t) => {
                    tail.iter().any(|c| i64::from(c.last_ts) >= *t)
                        || s.head.as_ref().is_some_and(|h| {
                            h.writable
                                && h.file == last.file
                                && h.position == last.end
                                && h.server_file == h.file
                                && h.server_position == h.position
                                && h.checked_at_unix_ms >= t * 1000
                        })
                }
            };
            if !reaches {
                why.push(format!(
                    "{}: archived only up to {} at {} (GTID {reached})",
                    s.name, last.file, last.end
                ));
                continue;
            }
            return Ok(Plan {
                stream: s.name.clone(),
                key: s.key.clone(),
                chunks: tail.to_vec(),
            });
        }
    }
    if let Some(plan) = latest {
        return Ok(plan);
    }
    if why.is_empty() {
        why.push("the cluster has no archived binlogs".into());
    }
    Err(format!(
        "no archived binlogs cover the way from the backup to the target: {}",
        why.join("; ")
    ))
}

/// The chunks of a stream that no restore of a backup at or after
/// `keep_from` needs: those before the stream's last file start whose GTID
/// state `keep_from` covers. A restore from such a backup starts replaying
/// at that file or a later one ([`plan`]), so they can only serve points
/// before every kept backup.
pub fn prunable<'a>(s: &'a Stream, keep_from: &GtidState) -> &'a [ChunkMeta] {
    let boundary = s.chunks.iter().rposition(|c| {
        c.start == 0
            && c.gtid_list
                .as_deref()
                .and_then(|g| GtidState::parse(g).ok())
                .is_some_and(|g| keep_from.covers(&g))
    });
    &s.chunks[..boundary.unwrap_or(0)]
}

/// Deletes, in every stream of the cluster, the chunks [`prunable`] names
/// (meta first: a chunk without one is not archived); returns how many.
pub fn prune(repo: &Repository, cluster: &str, keep_from: &GtidState) -> io::Result<usize> {
    let mut n = 0;
    for s in read_streams(repo, cluster)? {
        for c in prunable(&s, keep_from) {
            repo.remove(&format!(
                "{}/{}.json",
                s.key,
                ChunkMeta::name(&c.file, c.start)
            ))?;
            repo.remove(&format!("{}/{}", s.key, c.stored.name))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Per binlog file, its chunks in order (a plan's chunks, regrouped).
pub fn by_file(chunks: &[ChunkMeta]) -> BTreeMap<(u64, String), Vec<ChunkMeta>> {
    let mut out: BTreeMap<(u64, String), Vec<ChunkMeta>> = BTreeMap::new();
    for c in chunks {
        out.entry((file_number(&c.file).unwrap_or(0), c.file.clone()))
            .or_default()
            .push(c.clone());
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn chunk(file: &str, start: u64, end: u64, closed: bool, list: Option<&str>) -> ChunkMeta {
        ChunkMeta {
            format: 1,
            stream: "s".into(),
            host: "db1".into(),
            server_id: 1,
            file: file.into(),
            start,
            end,
            closed,
            gap_before: false,
            stored: StoredFile {
                name: String::new(),
                bytes: 0,
                sha256: String::new(),
            },
            first_ts: 100,
            last_ts: 100 + end as u32,
            gtid_list: list.map(str::to_string),
            gtids: format!("0-1-{end}"),
            archived_at_unix_ms: 0,
            signature: None,
        }
    }

    /// An agent's TLS context under a CA in `dir` (created on first use).
    pub(crate) fn agent_tls(dir: &std::path::Path, host: &str) -> Arc<TlsContext> {
        use dbfleet_common::certs::{self, LeafRequest};
        dbfleet_common::tls::install_crypto_provider();
        if !dir.join(certs::CA_CERT).exists() {
            std::fs::create_dir_all(dir).unwrap();
            certs::init_ca(dir).unwrap();
        }
        let files = certs::issue_leaf(dir, dir, &LeafRequest::new(Role::Agent, host)).unwrap();
        TlsContext::load(&dbfleet_common::tls::TlsPaths {
            ca: dir.join(certs::CA_CERT),
            cert: files.cert,
            key: files.key,
        })
        .unwrap()
    }

    fn signed(mut c: ChunkMeta, by: &TlsContext) -> ChunkMeta {
        c.signature = Some(by.sign(&c.signed_bytes()).unwrap());
        c
    }

    #[test]
    fn only_chunks_signed_by_their_admitted_host_are_kept() {
        let pki = tempfile::tempdir().unwrap();
        let db1 = agent_tls(pki.path(), "db1");
        let db9 = agent_tls(pki.path(), "db9");
        let reader = agent_tls(pki.path(), "db3");
        let writers = Writers {
            tls: reader,
            hosts: vec!["db1".into(), "db2".into()],
        };
        let stream = |chunks: Vec<ChunkMeta>| Stream {
            key: "main/binlogs/s".into(),
            name: "s".into(),
            chunks,
            head: None,
        };
        let good = || signed(chunk("b.000001", 0, 10, false, Some("")), &db1);
        let next = |c: ChunkMeta| ChunkMeta {
            start: 10,
            end: 20,
            ..c
        };
        let mut tampered = next(good());
        tampered.gtids = "0-1-999".into();
        let mut not_member = chunk("b.000001", 10, 20, false, None);
        not_member.host = "db9".into();
        let not_member = signed(not_member, &db9);
        let cases: Vec<(ChunkMeta, &str)> = vec![
            (signed(next(chunk("b.000001", 0, 0, false, None)), &db1), ""),
            (next(chunk("b.000001", 0, 0, false, None)), "not signed"),
            (
                signed(next(chunk("b.000001", 0, 0, false, None)), &db9),
                "signed by agent/db9",
            ),
            (tampered, "does not match"),
            (not_member, "not an admitted member"),
        ];
        for (second, why) in cases {
            let (kept, reasons) = proven(vec![stream(vec![good(), second])], &writers);
            if why.is_empty() {
                assert_eq!(kept[0].chunks.len(), 2, "{reasons:?}");
                assert!(reasons.is_empty());
            } else {
                assert_eq!(kept[0].chunks.len(), 1, "{why}");
                assert!(reasons[0].contains(why), "{why}: {reasons:?}");
            }
        }
    }

    fn stream(chunks: Vec<ChunkMeta>) -> Stream {
        Stream {
            key: "main/binlogs/s".into(),
            name: "s".into(),
            chunks,
            head: None,
        }
    }

    fn p(s: &str) -> GtidState {
        GtidState::parse(&s.replace('U', U)).unwrap()
    }

    const U: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

    /// A chunk of a MySQL binlog holding transactions `U:first-last`.
    fn mysql_chunk(file: &str, start: u64, first: u64, last: u64, list: Option<&str>) -> ChunkMeta {
        ChunkMeta {
            gtid_list: list.map(|l| p(l).to_string()),
            gtids: p(&format!("U:{first}-{last}")).to_string(),
            ..chunk(file, start, last, false, None)
        }
    }

    #[test]
    fn a_mysql_replay_starts_at_a_file_whose_previous_set_the_backup_holds() {
        let mut s = stream(vec![
            mysql_chunk("b.000001", 0, 1, 10, Some("")),
            mysql_chunk("b.000001", 10, 11, 20, None),
            mysql_chunk("b.000002", 0, 21, 30, Some("U:1-20")),
            mysql_chunk("b.000002", 30, 31, 40, None),
        ]);
        s.chunks[1].closed = true;
        let plan = plan_from(&s, "U:1-25", Target::Gtid(p("U:1-35"))).unwrap();
        assert_eq!(plan.chunks[0].file, "b.000002");
        // the backup lacks U:18, which only the first file holds
        let plan = plan_from(&s, "U:1-17:19-25", Target::Gtid(p("U:1-35"))).unwrap();
        assert_eq!(plan.chunks[0].file, "b.000001");
        // a target holding what neither the backup nor the archive does
        let e = plan_from(&s, "U:1-25", Target::Gtid(p("U:1-41"))).unwrap_err();
        assert!(e.contains("archived only up to b.000002 at 40"), "{e}");
        // pruning: a kept backup at U:1-25 replays from b.000002
        assert_eq!(prunable(&s, &p("U:1-25")).len(), 2);
        assert_eq!(prunable(&s, &p("U:1-17:19-25")).len(), 0);
    }

    #[test]
    fn replay_starts_at_the_last_file_begun_before_the_backup() {
        let s = stream(vec![
            chunk("b.000001", 0, 10, false, Some("")),
            chunk("b.000001", 10, 20, true, None),
            chunk("b.000002", 0, 30, false, Some("0-1-20")),
            chunk("b.000002", 30, 40, false, None),
        ]);
        let plan = plan_from(&s, "0-1-25", Target::Gtid(p("0-1-35"))).unwrap();
        assert_eq!(plan.chunks.len(), 2);
        assert_eq!(plan.chunks[0].file, "b.000002");
        let plan = plan_from(&s, "0-1-15", Target::Time(100 + 39)).unwrap();
        assert_eq!(plan.chunks[0].file, "b.000001");
        assert_eq!(plan.chunks.len(), 4);
        // everything archived: from the same file start, to the end
        let plan = plan_from(&s, "0-1-15", Target::Latest).unwrap();
        assert_eq!(plan.chunks[0].file, "b.000001");
        assert_eq!(plan.chunks.len(), 4);
    }

    #[test]
    fn pruning_keeps_the_files_a_kept_backup_replays_from() {
        let s = stream(vec![
            chunk("b.000001", 0, 10, false, Some("")),
            chunk("b.000001", 10, 20, true, None),
            chunk("b.000002", 0, 30, true, Some("0-1-20")),
            chunk("b.000003", 0, 40, false, Some("0-1-30")),
        ]);
        assert!(
            prunable(&s, &p("")).is_empty(),
            "the first file start is kept"
        );
        assert_eq!(prunable(&s, &p("0-1-25")).len(), 2, "b.000001 goes");
        assert_eq!(prunable(&s, &p("0-1-35")).len(), 3, "b.000002 goes too");
        // a backup at the oldest kept position still finds its binlogs
        for keep in ["0-1-25", "0-1-35"] {
            let kept = stream(s.chunks[prunable(&s, &p(keep)).len()..].to_vec());
            assert!(
                plan_from(&kept, keep, Target::Gtid(p("0-1-40"))).is_ok(),
                "{keep}"
            );
        }
    }

    fn plan_from(s: &Stream, start: &str, t: Target) -> Result<Plan, String> {
        plan(std::slice::from_ref(s), &p(start), &t)
    }

    #[test]
    fn holes_and_short_archives_are_refused_with_the_reason() {
        // 10..20 of the first file is missing
        let holed = stream(vec![
            chunk("b.000001", 0, 10, false, Some("")),
            chunk("b.000001", 20, 30, true, None),
        ]);
        let e = plan_from(&holed, "0-1-5", Target::Gtid(p("0-1-25"))).unwrap_err();
        assert!(e.contains("archived only up to b.000001 at 10"), "{e}");
        // the archive ends before the time and its head does not vouch
        let short = stream(vec![chunk("b.000001", 0, 10, false, Some(""))]);
        let e = plan_from(&short, "", Target::Time(1000)).unwrap_err();
        assert!(e.contains("archived only up to"), "{e}");
        // a primary's head that checked after the target, caught up,
        // vouches; a replica's does not (it may lag its primary)
        let mut vouched = short.clone();
        vouched.head = Some(Head {
            file: "b.000001".into(),
            position: 10,
            checked_at_unix_ms: 1_000_000,
            server_file: "b.000001".into(),
            server_position: 10,
            writable: true,
        });
        assert!(plan_from(&vouched, "", Target::Time(1000)).is_ok());
        vouched.head.as_mut().unwrap().writable = false;
        assert!(plan_from(&vouched, "", Target::Time(1000)).is_err());
        // the archive begins after the backup
        let late = stream(vec![chunk("b.000002", 0, 10, false, Some("0-1-50"))]);
        let e = plan_from(&late, "0-1-40", Target::Gtid(p("0-1-9"))).unwrap_err();
        assert!(e.contains("does not reach back"), "{e}");
        assert!(
            plan(&[], &p(""), &Target::Time(0))
                .unwrap_err()
                .contains("no archived binlogs")
        );
    }
}
