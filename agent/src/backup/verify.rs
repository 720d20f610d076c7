//! Verifying a backup by restoring it: the backup becomes a data
//! directory (`datadir`: read back through its checksums, unpacked and
//! prepared, or loaded), which a scratch mysqld (no network, no grants, no
//! binlog) starts on; every table is checked, the GTID position must be
//! the manifest's, and a logical backup must hold as many tables as its
//! dump created. Everything lives under one scratch directory, removed
//! afterwards whatever happened.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use super::datadir;
use super::repo::Manifest;
use super::scratch::{ScratchOptions, ScratchServer, ServerProgram};

/// What a verification needs.
pub struct Verification {
    /// The backup in the repository.
    pub backup_dir: super::repo::BackupDir,
    /// An empty directory of its own (removed by the caller).
    pub scratch: PathBuf,
    /// Bytes read so far.
    pub progress: Arc<AtomicU64>,
    /// The step it is on.
    pub phase: super::Phase,
    /// This host's mysqld: a MySQL backup is started with its program
    /// (the same version, where its plugins and messages are).
    pub local_server: crate::mysql::observer::MysqlTarget,
}

/// The program a scratch server on this backup's data runs (a restore's
/// load of a MySQL dump too).
pub(super) async fn program_for(
    manifest: &super::repo::Manifest,
    local: &crate::mysql::observer::MysqlTarget,
) -> Result<ServerProgram, String> {
    if manifest.flavor != "mysql" {
        return Ok(ServerProgram::MariaDb);
    }
    let limit = local.connect_timeout + local.query_timeout;
    let (mut conn, flavor) = tokio::time::timeout(limit, crate::mysql::observer::connect(local))
        .await
        .map_err(|_| format!("mysqld did not answer within {limit:?}"))??;
    if flavor != dbfleet_proto::model::Flavor::MySql {
        return Err(
            "this MySQL backup can only be verified on a host whose server is MySQL (its program starts the copy)"
                .into(),
        );
    }
    let program = super::clone::server_program(&mut conn).await;
    let _ = conn.disconnect().await;
    program
}

/// Checks every table of the restored server; returns how many, and how
/// many of them are outside the `mysql` schema.
async fn check_tables(conn: &mut Conn) -> Result<(usize, u64), String> {
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') \
             AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema', 'sys')",
        )
        .await
        .map_err(|e| format!("listing tables: {e}"))?;
    for (schema, table) in &tables {
        let name = format!(
            "`{}`.`{}`",
            schema.replace('`', "``"),
            table.replace('`', "``")
        );
        let rows: Vec<(String, String, String, String)> = conn
            .query(format!("CHECK TABLE {name}"))
            .await
            .map_err(|e| format!("CHECK TABLE {name}: {e}"))?;
        if let Some(bad) = rows.iter().find(|(_, _, kind, text)| {
            kind.eq_ignore_ascii_case("error") || (kind == "status" && text != "OK")
        }) {
            return Err(format!("CHECK TABLE {name}: {} {}", bad.2, bad.3));
        }
    }
    let user = tables
        .iter()
        .filter(|(schema, _)| schema != "mysql")
        .count();
    Ok((tables.len(), user as u64))
}

/// Restores, starts, checks; returns a one-line summary.
pub async fn verify(v: Verification) -> Result<String, String> {
    let started = Instant::now();
    let data = v.scratch.join("data");
    let program = program_for(&Manifest::read_usable(&v.backup_dir)?, &v.local_server).await?;
    let manifest = datadir::build(datadir::Build {
        backup_dir: v.backup_dir.clone(),
        data: data.clone(),
        work: v.scratch.clone(),
        server_options: Vec::new(),
        program: program.clone(),
        progress: v.progress,
        phase: v.phase.clone(),
    })
    .await?;
    v.phase.set("starting a scratch mysqld");
    // backup-my.cnf carries the source's InnoDB layout (page size, redo
    // and undo settings) that a physical backup's files need.
    let defaults_file = (manifest.method != "logical" && manifest.flavor != "mysql")
        .then(|| data.join("backup-my.cnf"));
    let mut server = ScratchServer::start(
        &data,
        &v.scratch,
        &ScratchOptions {
            program,
            defaults_file,
            skip_grant_tables: true,
            extra: Vec::new(),
        },
    )?;
    let mut conn = server.connect("root").await?;
    v.phase.set("checking tables");
    let mut checked = check_tables(&mut conn).await;
    if manifest.flavor == "mysql" && checked.is_ok() {
        // A CLONE copy carries no binlog position file: the server says.
        let found: Result<Option<String>, _> =
            conn.query_first("SELECT @@GLOBAL.gtid_executed").await;
        checked = match found {
            Ok(Some(found)) => super::clone::same_gtids(&found, &manifest.end_gtid).and(checked),
            Ok(None) => Err("the restored server did not say its GTID set".into()),
            Err(e) => Err(format!("reading the restored server's GTID set: {e}")),
        };
    }
    drop(conn);
    server.stop().await?;
    let (tables, user_tables) = checked?;
    if manifest.method == "logical" && user_tables != manifest.tables {
        return Err(format!(
            "the loaded dump has {user_tables} tables outside the mysql schema, the manifest says {}",
            manifest.tables
        ));
    }
    Ok(format!(
        "restored, prepared and started; {tables} tables checked; at GTID {:?} as the manifest says ({:.1}s)",
        manifest.end_gtid,
        started.elapsed().as_secs_f64()
    ))
}
