//! The agent's half of the lease: the voter state machine and its fence
//! record on disk. The same record fences every coordinator command, so a
//! coordinator that lost the lease can no longer drive this host.
//!
//! Every change of the record is written atomically and fsynced before the
//! reply (or the command) that depends on it; a write that fails restores
//! the last durable record and answers with an error instead.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbfleet_common::clock::Monotonic;
use dbfleet_common::durable::write_atomic;
use dbfleet_lease::{
    CommandRefusal, Epoch, FenceRecord, HolderId, StaleEpoch, Voter, VoterReply, VoterRequest,
};
use tokio::sync::{Mutex, MutexGuard};
use tracing::{error, info};

/// Why the fence record cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VoterError {
    /// Reading, writing or fsyncing failed.
    #[error("fence record {path}: {source}")]
    Io {
        /// The record file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file exists but does not decode.
    #[error(
        "fence record {path} is unreadable ({reason}); restore it from a backup, or delete it to \
         start as an amnesiac voter that grants nothing for the amnesia quarantine"
    )]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
}

/// A command was refused by the epoch fence.
#[derive(Debug, thiserror::Error)]
pub enum CommandRefused {
    /// Sent under an epoch below the promise: the sender must step down.
    #[error(transparent)]
    Stale(#[from] StaleEpoch),
    /// Sent under an epoch no honest coordinator sends.
    #[error("{0}")]
    Implausible(String),
    /// The raised promise could not be made durable, so the command did not run.
    #[error(transparent)]
    Persist(#[from] VoterError),
}

/// What operators see of the voter.
#[derive(Debug, Clone)]
pub struct VoterSnapshot {
    /// The durable record.
    pub record: FenceRecord,
    /// The live grant's holder and time left.
    pub grant: Option<(HolderId, Duration)>,
    /// Time left in the restart quarantine.
    pub quarantine: Option<Duration>,
}

struct Inner {
    voter: Voter,
    durable: FenceRecord,
}

/// The voter and its record, shared by the vote and command handlers.
pub struct LeaseVoter {
    path: PathBuf,
    clock: Monotonic,
    inner: Mutex<Inner>,
    /// The durable promise's term, readable without the lock (a command
    /// holds it for as long as it runs; a metrics scrape must not wait).
    promised_term: std::sync::atomic::AtomicU64,
}

/// Holds the fence while a command admitted under an epoch runs, so no
/// vote or other command interleaves with it.
pub struct CommandPermit<'a> {
    _guard: MutexGuard<'a, Inner>,
    /// The promise after admission.
    pub promised: Epoch,
}

impl LeaseVoter {
    /// Moves a record kept at `legacy` (where earlier agents kept it) to
    /// `path` when `path`'s directory does not exist yet, so an upgraded
    /// agent keeps its promises instead of starting as if for the first
    /// time.
    pub fn move_legacy_record(legacy: &Path, path: &Path) -> Result<(), VoterError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        if dir.exists() || !legacy.exists() {
            return Ok(());
        }
        let io_err = |source| VoterError::Io {
            path: legacy.to_path_buf(),
            source,
        };
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io_err)?;
        std::fs::rename(legacy, path).map_err(io_err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .and_then(|()| std::fs::File::open(legacy.parent().unwrap_or(Path::new("."))))
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        info!(from = %legacy.display(), to = %path.display(), "fence record moved to its own directory");
        Ok(())
    }

    /// Loads the record from `path`, creating its directory (0700). A first
    /// start (no directory yet) boots clean; a missing file in an existing
    /// directory means the record was lost, so the voter starts amnesiac
    /// and grants nothing for `amnesia_quarantine`.
    pub fn open(path: &Path, amnesia_quarantine: Duration) -> Result<LeaseVoter, VoterError> {
        let io_err = |source| VoterError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let first_start = !dir.exists();
        if first_start {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
        let clock = Monotonic::new();
        let (voter, durable) = match std::fs::read(path) {
            Ok(bytes) => {
                let rec: FenceRecord =
                    serde_json::from_slice(&bytes).map_err(|e| VoterError::Corrupt {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                info!(promised = %rec.promised, "fence record loaded");
                (Voter::boot(rec.clone(), clock.now()), rec)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && first_start => {
                // Written at once, durably: an agent restarted before its
                // first promise (a crash, a watchdog kill, a restart right
                // after installing) then finds its record, and does not
                // take a lost record for granted and vote nothing.
                let rec = FenceRecord::default();
                let bytes = serde_json::to_vec_pretty(&rec).expect("a fence record always encodes");
                write_atomic(path, &bytes, 0o600).map_err(io_err)?;
                (Voter::boot(rec.clone(), clock.now()), rec)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                error!(
                    path = %path.display(),
                    quarantine = ?amnesia_quarantine,
                    "fence record missing from an existing state directory: voting nothing during the amnesia quarantine"
                );
                (
                    Voter::boot_amnesiac(clock.now(), amnesia_quarantine),
                    FenceRecord::default(),
                )
            }
            Err(e) => return Err(io_err(e)),
        };
        Ok(LeaseVoter {
            path: path.to_path_buf(),
            clock,
            promised_term: durable.promised.term.into(),
            inner: Mutex::new(Inner { voter, durable }),
        })
    }

    async fn persist(&self, inner: &mut Inner, rec: FenceRecord) -> Result<(), VoterError> {
        let path = self.path.clone();
        let bytes = serde_json::to_vec_pretty(&rec).expect("a fence record always encodes");
        let written = tokio::task::spawn_blocking(move || write_atomic(&path, &bytes, 0o600))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        match written {
            Ok(()) => {
                self.promised_term
                    .store(rec.promised.term, std::sync::atomic::Ordering::Relaxed);
                inner.durable = rec;
                Ok(())
            }
            Err(source) => {
                let durable = inner.durable.clone();
                inner.voter.restore(durable);
                error!(path = %self.path.display(), error = %source, "cannot persist the fence record; refusing the request");
                Err(VoterError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// Answers one lease request; the record is durable before the reply.
    pub async fn vote(&self, req: VoterRequest) -> Result<VoterReply, VoterError> {
        let mut inner = self.inner.lock().await;
        let handled = inner.voter.handle(req, self.clock.now());
        if let Some(rec) = handled.persist {
            let raised = rec.promised != inner.durable.promised;
            self.persist(&mut inner, rec).await?;
            if raised {
                info!(promised = %inner.durable.promised, holder = ?inner.durable.holder.as_ref().map(ToString::to_string), "promised a new epoch");
            }
        }
        Ok(handled.reply)
    }

    /// Admits a command sent under `epoch` by `holder`: refuses a stale
    /// epoch, persists a higher one, and holds the fence until the permit
    /// is dropped.
    pub async fn admit(
        &self,
        epoch: &Epoch,
        holder: &HolderId,
    ) -> Result<CommandPermit<'_>, CommandRefused> {
        let mut inner = self.inner.lock().await;
        let verdict = inner
            .voter
            .check_command(epoch, holder)
            .map_err(|r| match r {
                CommandRefusal::Stale(s) => CommandRefused::Stale(s),
                i @ CommandRefusal::Implausible { .. } => {
                    CommandRefused::Implausible(i.to_string())
                }
            })?;
        if let Some(rec) = verdict.persist {
            self.persist(&mut inner, rec).await?;
            info!(promised = %epoch, "a command raised the promised epoch");
        }
        let promised = inner.durable.promised.clone();
        Ok(CommandPermit {
            _guard: inner,
            promised,
        })
    }

    /// The term of the highest epoch durably promised, without waiting for
    /// a command under way.
    pub fn promised_term(&self) -> u64 {
        self.promised_term
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The record and timers, for operators.
    pub async fn snapshot(&self) -> VoterSnapshot {
        let inner = self.inner.lock().await;
        let now = self.clock.now();
        VoterSnapshot {
            record: inner.durable.clone(),
            grant: inner.voter.grant_remaining(now),
            quarantine: inner.voter.quarantine_remaining(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use dbfleet_lease::Timing;

    use super::*;

    fn prepare(term: u64) -> VoterRequest {
        VoterRequest::Prepare {
            epoch: Epoch {
                term,
                coordinator: "c1".into(),
            },
            holder: HolderId {
                coordinator: "c1".into(),
                incarnation: 1,
            },
            timing: Timing::standard(),
            voter_config_version: 1,
        }
    }

    #[tokio::test]
    async fn the_promise_survives_a_restart_and_fences_older_commands() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state/fence-record.json");
        let f = LeaseVoter::open(&path, Duration::from_secs(30)).unwrap();
        assert!(matches!(
            f.vote(prepare(5)).await.unwrap(),
            VoterReply::Promised { .. }
        ));
        drop(f);
        let f = LeaseVoter::open(&path, Duration::from_secs(30)).unwrap();
        assert_eq!(f.snapshot().await.record.promised.term, 5);
        let old = Epoch {
            term: 4,
            coordinator: "c2".into(),
        };
        let holder = HolderId {
            coordinator: "c2".into(),
            incarnation: 2,
        };
        assert!(matches!(
            f.admit(&old, &holder).await,
            Err(CommandRefused::Stale(_))
        ));
        let newer = Epoch {
            term: 6,
            coordinator: "c2".into(),
        };
        assert_eq!(f.admit(&newer, &holder).await.unwrap().promised, newer);
        drop(f);
        let f = LeaseVoter::open(&path, Duration::from_secs(30)).unwrap();
        assert_eq!(f.snapshot().await.record.promised, newer);
    }

    /// systemd's `StateDirectory` (or a DBA) creates the state directory
    /// before the first start: that is still a first start, not a lost
    /// record. A record where earlier agents kept it is moved, promise
    /// and all.
    #[tokio::test]
    async fn an_empty_state_directory_is_a_first_start_and_a_legacy_record_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("voter/fence-record.json");
        let legacy = d.path().join("fence-record.json");
        LeaseVoter::move_legacy_record(&legacy, &path).unwrap();
        let f = LeaseVoter::open(&path, Duration::from_secs(30)).unwrap();
        assert!(f.snapshot().await.quarantine.is_none(), "a first start");
        drop(f);
        // restarted before any promise: its record is there, no quarantine
        let f = LeaseVoter::open(&path, Duration::from_secs(30)).unwrap();
        assert!(
            f.snapshot().await.quarantine.is_none(),
            "a restart before the first vote"
        );
        drop(f);

        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("voter/fence-record.json");
        let legacy = d.path().join("fence-record.json");
        let promised = Epoch {
            term: 7,
            coordinator: "c2".into(),
        };
        let rec = FenceRecord {
            promised: promised.clone(),
            ..FenceRecord::default()
        };
        std::fs::write(&legacy, serde_json::to_vec(&rec).unwrap()).unwrap();
        LeaseVoter::move_legacy_record(&legacy, &path).unwrap();
        assert!(!legacy.exists());
        let f = LeaseVoter::open(&path, Duration::from_secs(30)).unwrap();
        assert!(f.snapshot().await.quarantine.is_none());
        assert_eq!(f.snapshot().await.record.promised, promised);
    }

    #[tokio::test]
    async fn a_lost_record_quarantines_and_a_corrupt_one_refuses_to_start() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("fence-record.json");
        let f = LeaseVoter::open(&path, Duration::from_secs(30)).unwrap();
        assert!(
            f.snapshot().await.quarantine.is_some(),
            "existing dir, no record: amnesia"
        );
        assert!(matches!(
            f.vote(prepare(1)).await.unwrap(),
            VoterReply::Rejected { .. }
        ));
        std::fs::write(&path, b"{not json").unwrap();
        let e = LeaseVoter::open(&path, Duration::from_secs(30))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unreadable") && e.contains("delete it"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_write_refuses_the_vote_and_keeps_the_old_promise() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state/fence-record.json");
        let f = LeaseVoter::open(&path, Duration::from_secs(30)).unwrap();
        f.vote(prepare(1)).await.unwrap();
        // The record's directory becomes unwritable (as on a full or failed disk).
        std::fs::remove_dir_all(d.path().join("state")).unwrap();
        assert!(matches!(
            f.vote(prepare(2)).await,
            Err(VoterError::Io { .. })
        ));
        assert_eq!(f.snapshot().await.record.promised.term, 1);
    }
}
