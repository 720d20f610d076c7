//! The read-only guard: a durable "this server must not accept writes"
//! flag, and the task that enforces it.
//!
//! The flag is set by a coordinator's Fence (and by every Repoint), by the
//! agent itself when the mysqld of a primary dies (the fast failover path:
//! the crashed primary must not come back writable before the coordinator
//! decided), and by the self-fence of a primary cut off from both
//! coordinators and all replicas. Only a Promote clears it. It is written
//! (fsync, rename, fsync the directory) before anything acts on it, and
//! enforced on every observation, so it holds across restarts of mysqld
//! and of the agent.
//!
//! A primary's crash is also caught when the agent did not see it: the
//! record keeps when the mysqld last seen as primary started (now minus
//! its `Uptime`), so a primary whose mysqld restarted since (the whole
//! host rebooted, the agent was down, or mysqld came back between two
//! observations) is fenced like one seen going down. A failover may have
//! happened meanwhile; only the coordinator may make it writable again.

use dbfleet_common::clock::unix_ms as now_unix_ms;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbfleet_common::durable::write_atomic;
use dbfleet_proto::model::{MysqlObservation, Report};
use dbfleet_proto::pb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::mysql::control::Controller;

/// The durable flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRecord {
    /// mysqld must stay read-only.
    pub fenced: bool,
    /// Why, for operators and the coordinator's event history.
    pub reason: String,
    /// When it was set (Unix ms, agent clock).
    pub since_unix_ms: i64,
    /// When the mysqld last seen as an unfenced primary started (Unix ms,
    /// agent clock); None once it was seen read-only or a replica.
    #[serde(default)]
    pub primary_started_unix_ms: Option<i64>,
}

/// How far two readings of one mysqld's start time may differ: `Uptime`
/// counts whole seconds and the two readings take a little time.
const SAME_START_MS: i64 = 5_000;

/// What an observation of an unfenced server means for the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrimaryStart {
    /// Nothing to record.
    Same,
    /// A primary seen for the first time (or no longer one): record this.
    Record(Option<i64>),
    /// The primary's mysqld restarted since it was last seen: fence it.
    Restarted,
}

/// Compares the recorded start of the primary's mysqld with an
/// observation: `start` is the observed server's start (None: unknown),
/// `primary` whether it is writable with no replication.
fn primary_start(recorded: Option<i64>, primary: bool, start: Option<i64>) -> PrimaryStart {
    match (primary, recorded, start) {
        (false, None, _) => PrimaryStart::Same,
        (false, Some(_), _) => PrimaryStart::Record(None),
        (true, _, None) => PrimaryStart::Same,
        (true, None, Some(s)) => PrimaryStart::Record(Some(s)),
        (true, Some(r), Some(s)) if (r - s).abs() <= SAME_START_MS => PrimaryStart::Same,
        (true, Some(_), Some(_)) => PrimaryStart::Restarted,
    }
}

/// Why the guard cannot be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The file exists but does not parse: refuse to start rather than
    /// forget a fence.
    #[error(
        "read-only guard {path} is corrupt ({reason}); if this server may accept writes, write {{\"fenced\":false,\"reason\":\"\",\"since_unix_ms\":0}} to it, else {{\"fenced\":true,...}}"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("read-only guard {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The flag, its file, and a watch for reports.
#[derive(Debug)]
pub struct Guard {
    path: PathBuf,
    record: Mutex<GuardRecord>,
    changes: watch::Sender<GuardRecord>,
}

impl Guard {
    /// Loads the flag (absent file: not fenced).
    pub fn open(path: &Path) -> Result<Guard, GuardError> {
        let record = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| GuardError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GuardRecord::default(),
            Err(source) => {
                return Err(GuardError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if record.fenced {
            warn!(
                reason = record.reason,
                "starting fenced: mysqld is kept read-only until a coordinator promotes it"
            );
        }
        let (changes, _) = watch::channel(record.clone());
        Ok(Guard {
            path: path.to_path_buf(),
            record: Mutex::new(record),
            changes,
        })
    }

    /// The current flag.
    pub fn current(&self) -> GuardRecord {
        self.changes.borrow().clone()
    }

    /// Follows changes (the collector reports them at once).
    pub fn subscribe(&self) -> watch::Receiver<GuardRecord> {
        self.changes.subscribe()
    }

    fn save(&self, next: GuardRecord) -> Result<(), GuardError> {
        let mut cur = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if *cur == next {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| GuardError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let bytes = serde_json::to_vec(&next).expect("plain record serializes");
        write_atomic(&self.path, &bytes, 0o600).map_err(|source| GuardError::Io {
            path: self.path.clone(),
            source,
        })?;
        *cur = next.clone();
        self.changes.send_replace(next);
        Ok(())
    }

    /// Sets the flag durably (keeps the first reason while fenced).
    pub fn fence(&self, reason: &str) -> Result<(), GuardError> {
        let cur = self.current();
        if cur.fenced {
            return Ok(());
        }
        info!(reason, "read-only guard set");
        self.save(GuardRecord {
            fenced: true,
            reason: reason.to_string(),
            since_unix_ms: now_unix_ms(),
            primary_started_unix_ms: None,
        })
    }

    /// Records when the mysqld seen as primary started (None: it is no
    /// longer a primary).
    fn record_primary_start(&self, started: Option<i64>) -> Result<(), GuardError> {
        let cur = self.current();
        if cur.fenced {
            return Ok(());
        }
        self.save(GuardRecord {
            primary_started_unix_ms: started,
            ..cur
        })
    }

    /// Clears the flag durably (a Promote).
    pub fn clear(&self) -> Result<(), GuardError> {
        if self.current().fenced {
            info!("read-only guard cleared");
        }
        self.save(GuardRecord::default())
    }
}

/// When the active coordinator last acknowledged a report. Acks of a
/// coordinator without the lease do not count: the active then knows, from
/// the reports it received itself, the last ack that did.
#[derive(Debug, Default)]
pub struct AckClock {
    last: Mutex<Option<Instant>>,
}

impl AckClock {
    /// The active coordinator acknowledged a report now.
    pub fn acked(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The errors that mean mysqld is not running at all (as opposed to slow).
fn process_gone(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("connection refused") || e.contains("no such file")
}

/// The self-fence rule of a primary (brief §4): cut off from the active
/// coordinator and from every replica for `timeout`, counted from the last
/// ack, the last live replica connection, or the agent's start.
fn cut_off_for(
    timeout: Duration,
    started: Instant,
    last_ack: Option<Instant>,
    last_replica: Instant,
) -> Option<Duration> {
    let quiet = last_ack.unwrap_or(started).max(started).max(last_replica);
    let elapsed = quiet.elapsed();
    (elapsed >= timeout).then_some(elapsed)
}

/// Enforces the guard on every report until `cancel`: a fenced server seen
/// writable is set read-only at once; a primary whose mysqld died is
/// fenced; a primary cut off from the active coordinator and from its
/// replicas for `self_fence` fences itself (a hung mysqld is killed when
/// the agent knows its pid file), so the coordinator can count on it.
pub async fn enforce(
    guard: Arc<Guard>,
    control: Arc<Controller>,
    acks: Arc<AckClock>,
    self_fence: Option<Duration>,
    mut reports: watch::Receiver<Option<pb::AgentReport>>,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    // A primary when the agent last stopped: its mysqld found down at the
    // first observation is a crash too.
    let mut was_primary = {
        let g = guard.current();
        !g.fenced && g.primary_started_unix_ms.is_some()
    };
    let mut last_replica = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = reports.changed() => if changed.is_err() { return },
        }
        let Some(Ok(report)) = reports.borrow_and_update().clone().map(Report::try_from) else {
            continue;
        };
        let fenced = guard.current().fenced;
        match &report.mysql {
            MysqlObservation::Reachable(s) => {
                let primary = s.writable() && s.replication.is_none();
                if s.replicas_connected > 0 || !primary {
                    last_replica = Instant::now();
                }
                was_primary = primary;
                if !fenced {
                    let start = report
                        .agent
                        .load
                        .map(|l| report.observed_at_unix_ms - l.uptime_seconds as i64 * 1000);
                    match primary_start(guard.current().primary_started_unix_ms, primary, start) {
                        PrimaryStart::Same => {}
                        PrimaryStart::Record(s) => {
                            if let Err(e) = guard.record_primary_start(s) {
                                warn!(error = %e, "cannot record the primary's start; will retry");
                            }
                        }
                        PrimaryStart::Restarted => {
                            let reason = "the primary's mysqld restarted since the agent last saw it (a failover may have happened meanwhile)";
                            warn!(reason, "fencing this primary");
                            if let Err(e) = guard.fence(reason) {
                                error!(error = %e, "cannot persist the read-only guard after a restart");
                            }
                            if let Err(e) = control.make_read_only().await {
                                error!(error = %e, "cannot make the restarted primary read-only; retrying on the next observation");
                            }
                            continue;
                        }
                    }
                }
                if fenced && s.writable() {
                    warn!(
                        "mysqld is writable while the read-only guard is set; making it read-only"
                    );
                    if let Err(e) = control.make_read_only().await {
                        error!(error = %e, "cannot enforce the read-only guard; retrying on the next observation");
                    }
                    continue;
                }
            }
            MysqlObservation::Unreachable { error } => {
                if was_primary && !fenced && process_gone(error) {
                    let reason = format!("the primary's mysqld went down ({error})");
                    if let Err(e) = guard.fence(&reason) {
                        error!(error = %e, "cannot persist the read-only guard after a crash");
                    }
                    continue;
                }
            }
        }
        let Some(timeout) = self_fence.filter(|_| was_primary && !fenced) else {
            continue;
        };
        if let Some(elapsed) = cut_off_for(timeout, started, acks.last(), last_replica) {
            let reason = format!(
                "self-fence: no active coordinator and no live replica for {}",
                humantime::format_duration(Duration::from_secs(elapsed.as_secs()))
            );
            warn!(reason, "fencing this primary");
            match control.fence(true, &reason).await {
                Ok(outcome) => info!(detail = outcome.detail, "self-fenced"),
                Err(e) => {
                    error!(error = %e, "self-fence incomplete; the guard holds and is enforced on the next observation")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_survives_a_reopen_and_a_corrupt_file_refuses() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state/guard.json");
        let g = Guard::open(&p).unwrap();
        assert!(!g.current().fenced);
        g.fence("test").unwrap();
        g.fence("second reason is ignored").unwrap();
        let again = Guard::open(&p).unwrap();
        assert!(again.current().fenced);
        assert_eq!(again.current().reason, "test");
        again.clear().unwrap();
        assert!(!Guard::open(&p).unwrap().current().fenced);
        std::fs::write(&p, b"{not json").unwrap();
        let e = Guard::open(&p).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("fenced"), "{e}");
    }

    #[test]
    fn the_cut_off_clock_restarts_at_the_latest_ack_replica_or_start() {
        let t = Duration::from_secs(5);
        let long_ago = Instant::now() - Duration::from_secs(60);
        assert!(cut_off_for(t, long_ago, None, long_ago).is_some());
        assert!(cut_off_for(t, Instant::now(), None, long_ago).is_none());
        assert!(cut_off_for(t, long_ago, Some(Instant::now()), long_ago).is_none());
        assert!(cut_off_for(t, long_ago, Some(long_ago), Instant::now()).is_none());
    }

    #[test]
    fn a_primary_whose_mysqld_restarted_unseen_is_fenced() {
        use PrimaryStart::*;
        let t = 1_700_000_000_000;
        assert_eq!(primary_start(None, true, Some(t)), Record(Some(t)));
        assert_eq!(primary_start(Some(t), true, Some(t + 1_500)), Same);
        assert_eq!(primary_start(Some(t), true, Some(t + 60_000)), Restarted);
        assert_eq!(primary_start(Some(t), true, None), Same);
        assert_eq!(primary_start(Some(t), false, Some(t)), Record(None));
        assert_eq!(primary_start(None, false, Some(t)), Same);
    }

    #[test]
    fn the_primary_start_survives_a_reopen_and_a_fence_forgets_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("guard.json");
        let g = Guard::open(&p).unwrap();
        g.record_primary_start(Some(42)).unwrap();
        assert_eq!(
            Guard::open(&p).unwrap().current().primary_started_unix_ms,
            Some(42)
        );
        g.fence("test").unwrap();
        let again = Guard::open(&p).unwrap().current();
        assert!(again.fenced && again.primary_started_unix_ms.is_none());
        // an older file without the field still loads
        std::fs::write(&p, br#"{"fenced":false,"reason":"","since_unix_ms":0}"#).unwrap();
        assert_eq!(
            Guard::open(&p).unwrap().current().primary_started_unix_ms,
            None
        );
    }

    #[test]
    fn only_a_refused_connection_counts_as_a_dead_process() {
        assert!(process_gone(
            "cannot connect to 127.0.0.1:3306: Connection refused (os error 111)"
        ));
        assert!(!process_gone("mysqld did not answer within 4s"));
    }
}
