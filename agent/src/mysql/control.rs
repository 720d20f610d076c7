//! Role changes of the local mysqld: fence, freeze, promote, repoint.
//!
//! Each command opens its own connection (the observer's stays free for
//! observations), runs under deadlines, and ends by reading the server's
//! state so the coordinator journals what the command left behind. Every
//! command is idempotent: running it again converges on the same state,
//! which is what lets a successor coordinator resume a journaled step.
//!
//! The guard is written before the server is touched: a fence is durable
//! before read-only is set, and cleared only when a Promote is about to
//! make the server writable.

use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::config::Secret;
use dbfleet_proto::model::{Flavor, ServerState};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tracing::{info, warn};

use super::flavor::role;
use super::observer::{MysqlTarget, connect, read_state};
use super::process::{self, KnownServer};
use crate::guard::{Guard, GuardError};

/// Why a command did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// mysqld could not be reached or a statement failed.
    #[error("{0}")]
    Mysql(String),
    /// The command cannot run with this agent's configuration.
    #[error("{0}")]
    NotConfigured(String),
    /// The guard could not be persisted: nothing was changed.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// Waiting for a GTID position ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// Another heavy job runs on this host.
    #[error("{0}")]
    Busy(String),
    /// The backup repository could not be changed.
    #[error("{0}")]
    Repository(String),
    /// mysqld's process could not be identified, proven stopped, or
    /// signalled.
    #[error("{0}")]
    Process(String),
}

/// How a fence made the server unable to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// read-only confirmed, client sessions killed.
    ReadOnly,
    /// mysqld is not running.
    Stopped,
}

/// A command's result: what was done and the server after it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The server after the command (`None`: it is not running).
    pub state: Option<ServerState>,
    /// How it was fenced (Fence only).
    pub fenced: Option<Fenced>,
    /// What the agent did, in words.
    pub detail: String,
}

/// Runs role changes against the local mysqld.
#[derive(Debug)]
pub struct Controller {
    target: MysqlTarget,
    replication: Option<(String, Secret)>,
    server: Arc<KnownServer>,
    guard: Arc<Guard>,
    /// One role change at a time (a command and the guard's enforcement
    /// must not interleave).
    serial: tokio::sync::Mutex<()>,
}

/// How long a killed mysqld may take to exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

fn sql_error(what: &str) -> impl Fn(mysql_async::Error) -> ControlError + '_ {
    move |e| ControlError::Mysql(format!("{what}: {e}"))
}

impl Controller {
    /// A controller for `target`; `replication` is the account replicas of
    /// this server use, `server` what the agent knows of its process (to
    /// prove, or cause, a stop).
    pub fn new(
        target: MysqlTarget,
        replication: Option<(String, Secret)>,
        server: Arc<KnownServer>,
        guard: Arc<Guard>,
    ) -> Controller {
        Controller {
            target,
            replication,
            server,
            guard,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    async fn conn(&self) -> Result<(Conn, Flavor), ControlError> {
        let (mut conn, flavor) = connect(&self.target).await.map_err(ControlError::Mysql)?;
        // Role changes may wait on locks briefly, but not for long; the
        // observer's statement limit would cut a GTID wait short.
        let unlimited = match flavor {
            Flavor::MariaDb => "SET SESSION max_statement_time = 0",
            Flavor::MySql => "SET SESSION max_execution_time = 0",
        };
        conn.query_drop(unlimited)
            .await
            .map_err(sql_error("session setup"))?;
        Ok((conn, flavor))
    }

    async fn run(conn: &mut Conn, sql: &str, what: &str) -> Result<(), ControlError> {
        conn.query_drop(sql).await.map_err(sql_error(what))
    }

    /// The CA this server checks its source's certificate against: its
    /// own `@@ssl_ca` (every mysqld of a cluster has a certificate from the
    /// same CA).
    async fn replication_ca(conn: &mut Conn) -> Result<String, ControlError> {
        // NULL when unset (MariaDB's default).
        let ca: Option<Option<String>> = conn
            .query_first("SELECT @@ssl_ca")
            .await
            .map_err(sql_error("reading ssl_ca"))?;
        match ca.flatten().filter(|c| !c.is_empty()) {
            Some(ca) => Ok(ca),
            None => Err(ControlError::NotConfigured(
                "the cluster's policy requires TLS to MySQL but this mysqld has no ssl_ca to check \
                 its source's certificate with: issue it a certificate (`dbfleet cert issue --role mysql`), \
                 set ssl_ca, ssl_cert and ssl_key, and restart it"
                    .into(),
            )),
        }
    }

    async fn state(&self, conn: &mut Conn, flavor: Flavor) -> Result<ServerState, ControlError> {
        read_state(conn, flavor, self.target.connection())
            .await
            .map_err(ControlError::Mysql)
    }

    /// Read-only on, then every client session killed; returns how many.
    async fn read_only_and_kill(conn: &mut Conn, flavor: Flavor) -> Result<usize, ControlError> {
        Self::run(conn, "SET SESSION lock_wait_timeout = 1", "session setup").await?;
        let mut killed = 0;
        for attempt in 0..3 {
            let mut result = Ok(());
            for sql in role::read_only_on(flavor) {
                result = Self::run(conn, sql, "setting read_only").await;
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                break;
            }
            // A long write holds the lock read_only needs: end the writers
            // and try again.
            killed += Self::kill_sessions(conn).await?;
            if attempt == 2 {
                result?;
            }
        }
        if let Some(sql) = role::read_only_persisted(flavor)
            && let Err(e) = conn.query_drop(sql).await
        {
            warn!(
                error = %e,
                "read-only is set but could not be persisted (mysqld-auto.cnf): after a restart this server starts as its my.cnf says"
            );
        }
        Ok(killed + Self::kill_sessions(conn).await?)
    }

    async fn kill_sessions(conn: &mut Conn) -> Result<usize, ControlError> {
        let ids: Vec<u64> = conn
            .query(role::CLIENT_SESSIONS)
            .await
            .map_err(sql_error("listing sessions"))?;
        let mut killed = 0;
        for id in ids {
            // A session may end by itself in between: not an error.
            if conn
                .query_drop(format!("KILL CONNECTION {id}"))
                .await
                .is_ok()
            {
                killed += 1;
            }
        }
        Ok(killed)
    }

    /// The longest a role change may take when mysqld stops answering: a
    /// handful of statements, each within the connect and query timeouts,
    /// plus what the command itself waits for (`waits`), plus a killed
    /// mysqld's exit. Past it the command is abandoned, so a hung server
    /// never holds the agent (and its lease votes) for good.
    pub fn bound(&self, waits: Duration) -> Duration {
        (self.target.connect_timeout + self.target.query_timeout) * 4 + waits + KILL_WAIT
    }

    /// Read-only and writers killed, for the guard's enforcement; gives up
    /// after [`Controller::bound`] (the next observation tries again).
    pub async fn make_read_only(&self) -> Result<(), ControlError> {
        let limit = self.bound(Duration::ZERO);
        tokio::time::timeout(limit, self.make_read_only_now())
            .await
            .map_err(|_| ControlError::Timeout(format!("mysqld did not answer within {limit:?}")))?
    }

    async fn make_read_only_now(&self) -> Result<(), ControlError> {
        let _serial = self.serial.lock().await;
        let (mut conn, flavor) = self.conn().await?;
        let killed = Self::read_only_and_kill(&mut conn, flavor).await?;
        info!(killed, "mysqld set read-only");
        Ok(())
    }

    /// Makes the server unable to commit, durably: the guard first, then
    /// read-only and sessions killed. A server that does not answer is
    /// fenced only with positive evidence: its process (the holder of its
    /// InnoDB lock file, see [`process`]) is proven gone, or, when
    /// allowed, that very process is killed and then proven gone. Anything
    /// less is an error that says why, never "stopped".
    pub async fn fence(
        &self,
        kill_if_unresponsive: bool,
        reason: &str,
    ) -> Result<Outcome, ControlError> {
        let _serial = self.serial.lock().await;
        self.guard.fence(reason)?;
        let deadline = self.target.connect_timeout + self.target.query_timeout;
        let attempt = tokio::time::timeout(deadline, async {
            let (mut conn, flavor) = self.conn().await?;
            let killed = Self::read_only_and_kill(&mut conn, flavor).await?;
            let state = self.state(&mut conn, flavor).await?;
            Ok::<_, ControlError>((killed, state))
        })
        .await;
        let why = match attempt {
            Ok(Ok((killed, state))) if !state.writable() => {
                return Ok(Outcome {
                    state: Some(state),
                    fenced: Some(Fenced::ReadOnly),
                    detail: format!("read-only confirmed, {killed} client sessions killed"),
                });
            }
            Ok(Ok(_)) => "the server still reports itself writable".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("mysqld did not answer within {deadline:?}"),
        };
        let Some(files) = self.server.get() else {
            return Err(ControlError::Process(format!(
                "cannot fence: {why}, and the agent has never been connected to this mysqld, so it cannot tell which process serves it"
            )));
        };
        let cannot = |e: String| ControlError::Process(format!("cannot fence: {why}; {e}"));
        match process::identify(&files).map_err(&cannot)? {
            Some(pid) if !kill_if_unresponsive => Err(cannot(format!(
                "mysqld (pid {pid}, holding {}) is running",
                files.lock_file.display()
            ))),
            Some(pid) => {
                warn!(
                    pid,
                    reason = why,
                    "killing the unresponsive mysqld to fence it"
                );
                process::signal_server(&files, rustix::process::Signal::KILL).map_err(&cannot)?;
                let proof = process::wait_stopped(&files, KILL_WAIT)
                    .await
                    .map_err(|e| {
                        ControlError::Timeout(format!(
                            "killed mysqld (pid {pid}) but cannot prove it stopped within {KILL_WAIT:?}: {e}"
                        ))
                    })?;
                Ok(Outcome {
                    state: None,
                    fenced: Some(Fenced::Stopped),
                    detail: format!("killed the unresponsive mysqld (pid {pid}): {why}; {proof}"),
                })
            }
            None => {
                let proof = process::prove_stopped(&files)
                    .await
                    .map_err(|e| cannot(format!("cannot prove mysqld stopped: {e}")))?;
                Ok(Outcome {
                    state: None,
                    fenced: Some(Fenced::Stopped),
                    detail: format!("mysqld is not running: {proof}"),
                })
            }
        }
    }

    /// Stops receiving, lets the applier execute what was received (up to
    /// `apply_timeout`), and returns the positions.
    pub async fn freeze(&self, apply_timeout: Duration) -> Result<Outcome, ControlError> {
        let _serial = self.serial.lock().await;
        let (mut conn, flavor) = self.conn().await?;
        let before = self.state(&mut conn, flavor).await?;
        let Some(rep) = before.replication else {
            return Ok(Outcome {
                state: Some(before),
                fenced: None,
                detail: "not a replica: nothing to freeze".into(),
            });
        };
        Self::run(&mut conn, role::stop_io(flavor), "stopping the IO thread").await?;
        let after_stop = self.state(&mut conn, flavor).await?;
        let received = after_stop
            .replication
            .as_ref()
            .map(|r| r.received_gtid.clone())
            .unwrap_or(rep.received_gtid);
        let mut detail = "IO thread stopped".to_string();
        if after_stop
            .replication
            .as_ref()
            .is_some_and(|r| r.sql_running)
            && !received.is_empty()
        {
            let waited = self
                .wait_on(&mut conn, flavor, &received, apply_timeout)
                .await;
            detail = match waited {
                Ok(()) => format!("IO thread stopped; relay log applied through {received}"),
                Err(e) => format!("IO thread stopped; relay log not fully applied: {e}"),
            };
        }
        Ok(Outcome {
            state: Some(self.state(&mut conn, flavor).await?),
            fenced: None,
            detail,
        })
    }

    async fn wait_on(
        &self,
        conn: &mut Conn,
        flavor: Flavor,
        gtid: &str,
        timeout: Duration,
    ) -> Result<(), ControlError> {
        let sql = role::wait_gtid(flavor, gtid, timeout.as_secs_f64());
        let r: Option<i64> = conn
            .query_first(sql)
            .await
            .map_err(sql_error("waiting for the GTID position"))?;
        match r {
            Some(0) => Ok(()),
            _ => Err(ControlError::Timeout(format!(
                "position {gtid} not reached within {timeout:?}"
            ))),
        }
    }

    /// Waits until the server has executed `gtid`.
    pub async fn wait_gtid(&self, gtid: &str, timeout: Duration) -> Result<Outcome, ControlError> {
        let _serial = self.serial.lock().await;
        let (mut conn, flavor) = self.conn().await?;
        self.wait_on(&mut conn, flavor, gtid, timeout).await?;
        Ok(Outcome {
            state: Some(self.state(&mut conn, flavor).await?),
            fenced: None,
            detail: format!("reached {gtid}"),
        })
    }

    /// No replication, guard cleared, writable. With `lossless_semi_sync`
    /// (the cluster's policy) the whole lossless setting is applied before
    /// the first write; otherwise the source side is on when this member
    /// acknowledged as a replica (the cluster runs semi-sync as
    /// configured).
    pub async fn promote(&self, lossless_semi_sync: bool) -> Result<Outcome, ControlError> {
        let _serial = self.serial.lock().await;
        let (mut conn, flavor) = self.conn().await?;
        Self::run(&mut conn, role::stop(flavor), "stopping replication").await?;
        Self::run(
            &mut conn,
            role::reset_all(flavor),
            "removing the replication configuration",
        )
        .await?;
        let before = self.state(&mut conn, flavor).await?;
        if lossless_semi_sync {
            let statements =
                role::semi_sync_policy(flavor, true, true).map_err(ControlError::NotConfigured)?;
            for sql in &statements {
                Self::run(&mut conn, sql, "setting lossless semi-sync").await?;
            }
        } else if before.semi_sync.replica_enabled {
            // The cluster runs semi-sync: the new primary waits for acks.
            let sql = role::semi_sync_source(flavor, true);
            Self::run(&mut conn, &sql, "enabling semi-sync").await?;
        }
        self.guard.clear()?;
        for sql in role::read_only_off(flavor) {
            Self::run(&mut conn, sql, "making the server writable").await?;
        }
        let state = self.state(&mut conn, flavor).await?;
        Ok(Outcome {
            detail: format!("promoted at {}", state.gtid.executed),
            state: Some(state),
            fenced: None,
        })
    }

    /// Replicates from `host:port` with GTID auto-positioning, read-only
    /// and guarded. A server that was a primary first records what it has
    /// as its replication position, so it resumes after its own writes.
    pub async fn repoint(
        &self,
        host: &str,
        port: u16,
        heartbeat: Duration,
        net_timeout: Duration,
        tls: bool,
    ) -> Result<Outcome, ControlError> {
        let _serial = self.serial.lock().await;
        let Some((user, password)) = &self.replication else {
            return Err(ControlError::NotConfigured(
                "cannot repoint: set mysql.replication_user and mysql.replication_password_file in the agent config".into(),
            ));
        };
        let (mut conn, flavor) = self.conn().await?;
        // Checked before anything changes (the guard included), so a
        // refused repoint leaves the member as it was.
        let tls_ca = if tls {
            Some(Self::replication_ca(&mut conn).await?)
        } else {
            None
        };
        self.guard.fence("replica")?;
        let killed = Self::read_only_and_kill(&mut conn, flavor).await?;
        let before = self.state(&mut conn, flavor).await?;
        Self::run(&mut conn, role::stop(flavor), "stopping replication").await?;
        if before.semi_sync.source_enabled {
            Self::run(
                &mut conn,
                &role::semi_sync_source(flavor, false),
                "disabling semi-sync on the replica",
            )
            .await?;
        }
        if before.replication.is_none() && flavor == Flavor::MariaDb {
            Self::run(
                &mut conn,
                "SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos",
                "recording the former primary's position",
            )
            .await?;
        }
        Self::run(
            &mut conn,
            &role::net_timeout(flavor, net_timeout.as_secs()),
            "setting the replica net timeout",
        )
        .await?;
        let change = role::change_source(
            flavor,
            host,
            port,
            user,
            password.expose(),
            heartbeat.as_secs_f64(),
            tls_ca.as_deref(),
        );
        // The statement carries the password: the error names the step only.
        conn.query_drop(change).await.map_err(|e| {
            let code = match &e {
                mysql_async::Error::Server(s) => format!("server error {}", s.code),
                _ => "connection lost".to_string(),
            };
            ControlError::Mysql(format!("changing the replication source failed ({code})"))
        })?;
        Self::run(&mut conn, role::start(flavor), "starting replication").await?;
        Ok(Outcome {
            state: Some(self.state(&mut conn, flavor).await?),
            fenced: None,
            detail: format!("replicating from {host}:{port} ({killed} client sessions killed)"),
        })
    }

    /// Sets semi-sync as the cluster's policy asks (see
    /// `role::semi_sync_policy`); a replica whose acknowledging side
    /// changed reconnects its IO thread, which is when the source learns
    /// of it.
    pub async fn set_semi_sync(
        &self,
        lossless: bool,
        source: bool,
    ) -> Result<Outcome, ControlError> {
        let _serial = self.serial.lock().await;
        let (mut conn, flavor) = self.conn().await?;
        let before = self.state(&mut conn, flavor).await?;
        let statements = role::semi_sync_policy(flavor, lossless, source)
            .map_err(ControlError::NotConfigured)?;
        for sql in &statements {
            Self::run(&mut conn, sql, "setting semi-sync").await?;
        }
        let mut detail = if lossless {
            format!(
                "lossless semi-sync set ({})",
                if source {
                    "source waits for acknowledgements"
                } else {
                    "acknowledges its source's commits"
                }
            )
        } else {
            "semi-sync off".to_string()
        };
        // A replica acknowledges only after its IO thread reconnects with
        // the setting: whenever lossless is asked of one not acknowledging
        // (a reconnect that failed last time is tried again), and when it
        // stops acknowledging.
        let reconnect = if lossless {
            !before.semi_sync.replica_active
        } else {
            before.semi_sync.replica_enabled
        };
        if reconnect
            && before
                .replication
                .as_ref()
                .is_some_and(|r| r.io_thread == dbfleet_proto::model::IoThread::Running)
        {
            Self::run(&mut conn, role::stop_io(flavor), "stopping the IO thread").await?;
            Self::run(&mut conn, role::start_io(flavor), "starting the IO thread").await?;
            detail.push_str("; replication reconnected");
        }
        Ok(Outcome {
            state: Some(self.state(&mut conn, flavor).await?),
            fenced: None,
            detail,
        })
    }

    /// Starts the IO thread again after a freeze.
    pub async fn thaw(&self) -> Result<Outcome, ControlError> {
        let _serial = self.serial.lock().await;
        let (mut conn, flavor) = self.conn().await?;
        let before = self.state(&mut conn, flavor).await?;
        if before.replication.is_some() {
            Self::run(&mut conn, role::start(flavor), "starting replication").await?;
        }
        Ok(Outcome {
            state: Some(self.state(&mut conn, flavor).await?),
            fenced: None,
            detail: "replication threads started".into(),
        })
    }
}
