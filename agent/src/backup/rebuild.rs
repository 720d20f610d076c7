//! Rebuilding this host's MySQL server by remote CLONE from a donor
//! member (`dbfleet rebuild`): mysqld copies the donor's data over the
//! network into its own data directory and restarts, and the agent makes
//! the result a read-only server replicating from nobody, for the
//! coordinator to rejoin.
//!
//! mysqld does the copying and the swap itself: `CLONE INSTANCE FROM`
//! drops the recipient's data, copies the donor's, and restarts the
//! server when a supervisor (systemd, mysqld_safe) runs it; otherwise the
//! server stops and the agent runs `[mysql] start_command`, as after a
//! restore. The donor is reached over the replication account (which
//! needs `BACKUP_ADMIN` there), with TLS verified against this server's
//! CA when the cluster requires TLS.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dbfleet_common::config::Secret;
use dbfleet_proto::model::Flavor;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tracing::info;

use super::Phase;
use super::restore::{self, Facts};
use crate::mysql::flavor::role::quote;
use crate::mysql::observer::{self, MysqlTarget};
use crate::mysql::process;

/// MySQL's error when the clone completed but no supervisor restarts the
/// server: it has shut down, on the cloned data.
const RESTART_NOT_SUPERVISED: u16 = 3707;
/// How long the clone and the restart after it may take before the
/// rebuild gives up waiting (the clone itself goes on in mysqld).
const CLONE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// What a rebuild by CLONE needs.
pub struct CloneRebuild {
    /// The donor's mysqld.
    pub donor_host: String,
    /// See `donor_host`.
    pub donor_port: u16,
    /// The connection to the donor must be TLS, verified.
    pub tls: bool,
    /// This host's mysqld.
    pub target: MysqlTarget,
    /// The replication account, which the donor admits.
    pub replication: Option<(String, Secret)>,
    /// How to start mysqld when no supervisor restarts it.
    pub start_command: Vec<String>,
    /// The job's own directory (the start command's log).
    pub work: PathBuf,
    /// The step it is on.
    pub phase: Phase,
}

/// Runs the rebuild; returns a one-line summary.
pub async fn clone_from(c: CloneRebuild) -> Result<String, String> {
    let started = Instant::now();
    let Some((user, password)) = &c.replication else {
        return Err(
            "cannot clone: set mysql.replication_user and mysql.replication_password_file in the agent config (the donor admits the replication account)"
                .into(),
        );
    };
    // read-only, identified by its files: never cloned over a primary
    let f: Facts = restore::facts(&c.target).await?;
    process::refuse_socket_activated(&f.files)?;
    let (mut conn, flavor) = observer::connect(&c.target).await?;
    if flavor != Flavor::MySql {
        return Err(
            "CLONE is MySQL's: a MariaDB member is rebuilt from a backup (dbfleet backup restore)"
                .into(),
        );
    }
    let donor = format!("{}:{}", c.donor_host, c.donor_port);
    let mut setup = vec![format!(
        "SET GLOBAL clone_valid_donor_list = {}",
        quote(&donor)
    )];
    if c.tls {
        let ca: Option<Option<String>> = conn
            .query_first("SELECT @@ssl_ca")
            .await
            .map_err(|e| format!("reading ssl_ca: {e}"))?;
        let ca = ca.flatten().filter(|c| !c.is_empty()).ok_or(
            "the cluster requires TLS to MySQL but this mysqld has no ssl_ca to check the donor's certificate with",
        )?;
        setup.push(format!("SET GLOBAL clone_ssl_ca = {}", quote(&ca)));
    }
    // CLONE refuses to run under super_read_only (its data is replaced
    // whatever is written meanwhile; read_only stays on); it is set again
    // if the clone fails, and persisted once the clone restarted.
    setup.push("SET GLOBAL super_read_only = OFF".into());
    for sql in &setup {
        conn.query_drop(sql)
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
    }
    c.phase.set("cloning from the donor");
    info!(donor, "rebuild: CLONE INSTANCE running");
    // The statement carries the password: errors name the step and the
    // server's message, never the statement.
    let clone = format!(
        "CLONE INSTANCE FROM {}@{}:{} IDENTIFIED BY {} {}",
        quote(user),
        quote(&c.donor_host),
        c.donor_port,
        quote(password.expose()),
        if c.tls {
            "REQUIRE SSL"
        } else {
            "REQUIRE NO SSL"
        }
    );
    let clone_started = dbfleet_common::clock::unix_ms();
    let outcome = tokio::time::timeout(CLONE_TIMEOUT, conn.query_drop(clone)).await;
    drop(conn);
    // Only error 3707 says the clone completed: anything else is proven
    // after the restart, or the job fails with super_read_only set again.
    let proven = match outcome {
        Err(_) => {
            let fenced = fence_again(&c.target).await;
            return Err(format!(
                "the clone from {donor} did not end within 6 hours; see mysqld's error log and performance_schema.clone_status{fenced}"
            ));
        }
        // cloned, and shutting down for want of a supervisor
        Ok(Err(mysql_async::Error::Server(e))) if e.code == RESTART_NOT_SUPERVISED => true,
        Ok(Err(mysql_async::Error::Server(e))) => {
            let fenced = fence_again(&c.target).await;
            // a server's message may quote the statement
            let message = e.message.replace(password.expose(), "<password>");
            return Err(format!(
                "the clone from {donor} failed (server error {}): {message}{fenced}",
                e.code
            ));
        }
        // finished, or the server restarted under its supervisor and
        // dropped us: proven below by the server's clone status
        Ok(_) => false,
    };
    let supervised = !proven;
    c.phase.set("waiting for mysqld after the clone");
    let mut conn = match restarted(&c, &f, supervised).await {
        Ok(conn) => conn,
        Err(e) => return Err(format!("cloned from {donor}, but {e}")),
    };
    if !proven && let Err(why) = clone_completed(&mut conn, &donor, clone_started).await {
        let fenced = fence_again(&c.target).await;
        return Err(format!(
            "the connection to mysqld was lost during the clone from {donor} and {why}: check its error log and run the rebuild again{fenced}"
        ));
    }
    restore::keep_apart(&mut conn, "rebuilt server").await?;
    let gtids = restore::gtid_executed(&mut conn).await?;
    let _ = conn.disconnect().await;
    let summary = format!(
        "cloned from {donor} at GTID set {}; read-only ({:.1}s)",
        gtids.replace('\n', ""),
        started.elapsed().as_secs_f64()
    );
    info!(summary, "rebuild completed");
    Ok(summary)
}

/// `SET GLOBAL super_read_only = ON` (MySQL) on a fresh connection after
/// a clone or a replay lifted it; what went wrong, for the job's error,
/// else nothing.
pub(super) async fn fence_again(target: &MysqlTarget) -> String {
    let again = async {
        let (mut conn, flavor) = observer::connect(target).await?;
        if flavor != Flavor::MySql {
            // MariaDB's restores never lift anything
            return Ok(());
        }
        conn.query_drop("SET GLOBAL super_read_only = ON")
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(target.connect_timeout + target.query_timeout, again).await {
        Ok(Ok(())) => String::new(),
        Ok(Err(e)) => format!("; super_read_only could not be set again ({e}): set it by hand"),
        Err(_) => {
            "; super_read_only could not be set again (mysqld did not answer): set it by hand"
                .into()
        }
    }
}

/// Positive evidence that the clone from `donor` begun at `since` (Unix
/// ms) completed: the server's `performance_schema.clone_status`.
async fn clone_completed(conn: &mut Conn, donor: &str, since: i64) -> Result<(), String> {
    let row: Option<(String, String, i64)> = conn
        .query_first(
            "SELECT STATE, SOURCE, CAST(UNIX_TIMESTAMP(BEGIN_TIME) * 1000 AS SIGNED) \
             FROM performance_schema.clone_status",
        )
        .await
        .map_err(|e| {
            format!("its clone status cannot be read ({e}), so the clone is not proven")
        })?;
    match row {
        Some((state, source, begun))
            if state == "Completed" && source == donor && begun + 1000 >= since =>
        {
            Ok(())
        }
        Some((state, source, _)) => Err(format!(
            "its last clone (from {source}) is {state}, not a completed clone from it"
        )),
        None => {
            Err("it reports no clone (performance_schema off?), so the clone is not proven".into())
        }
    }
}

/// After the clone, a connection to the server on the cloned data: the
/// one its supervisor restarted (`supervised`: a server up for less time
/// than since the clone ended), or, when it shut down for want of one,
/// the one `start_command` starts once the old one is proven stopped (it
/// may still answer for a moment while it shuts down).
async fn restarted(c: &CloneRebuild, f: &Facts, supervised: bool) -> Result<Conn, String> {
    let ended = Instant::now();
    let deadline = ended + CLONE_TIMEOUT;
    loop {
        if supervised && let Ok((mut conn, _)) = observer::connect(&c.target).await {
            let uptime: Option<(String, u64)> = conn
                .query_first("SHOW GLOBAL STATUS LIKE 'Uptime'")
                .await
                .ok()
                .flatten();
            if uptime.is_some_and(|(_, up)| up <= ended.elapsed().as_secs() + 1) {
                return Ok(conn);
            }
        }
        if process::identify(&f.files)?.is_none()
            && process::wait_stopped(&f.files, Duration::from_secs(5))
                .await
                .is_ok()
        {
            if supervised {
                // a supervisor that did not restart it: started here
                info!("mysqld stopped after the clone and nothing restarted it");
            }
            return restore::start_mysqld(&c.start_command, &c.target, &c.work, &c.phase, &f.files)
                .await;
        }
        if Instant::now() > deadline {
            return Err("mysqld neither restarted nor stopped within 6 hours".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
