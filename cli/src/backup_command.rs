//! `dbfleet backup ...`: arguments and dispatch of the backup commands
//! (kept apart from `main.rs`, which they would double).

use clap::Subcommand;
use dbfleet_cli::backup;
use dbfleet_cli::client::Client;
use dbfleet_proto::pb;

use crate::{Output, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum BackupCommand {
    /// Take a backup and wait for it; prints its catalog entry.
    Run {
        /// Cluster.
        #[arg(long)]
        cluster: String,
        /// Host to take it on (default: a healthy replica, else the primary).
        #[arg(long)]
        host: Option<String>,
        /// physical (mariadb-backup) or logical (mariadb-dump).
        #[arg(long, default_value = "physical", value_parser = ["physical", "logical"])]
        method: String,
        /// Only the pages changed since the newest physical backup, on its
        /// host (restoring it applies the whole chain).
        #[arg(long)]
        incremental: bool,
        /// Print the entry as soon as the backup started, without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// The catalog.
    List {
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// One backup with its manifest.
    Show {
        /// Backup id.
        id: String,
    },
    /// Restore a backup onto a member (never the primary), optionally to a
    /// point in time from the archived binlogs; waits for it. Without a
    /// target the member rejoins as a replica; with one it is kept out of
    /// service holding exactly the data up to the target.
    Restore {
        /// Backup id.
        id: String,
        /// The member to restore onto.
        #[arg(long)]
        host: String,
        /// Every transaction committed before this time (RFC 3339, e.g.
        /// 2026-11-21T10:00:00Z, or Unix seconds; binlog times have
        /// one-second resolution).
        #[arg(long, conflicts_with = "to_gtid")]
        to_time: Option<String>,
        /// Up to and including these GTIDs: a MariaDB position (e.g. 0-1-42)
        /// or a MySQL GTID set (e.g. 3e11fa47-71ca-11e1-9e33-c80aa9429562:1-42).
        #[arg(long)]
        to_gtid: Option<String>,
        /// Print the restore as soon as it started, without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// Show a cluster's backup schedule and retention, or change the
    /// settings given (durations like 30s, 6h, 7d; "off" turns one off).
    Schedule {
        /// Cluster.
        #[arg(long)]
        cluster: String,
        /// Take a full physical backup this often.
        #[arg(long, value_parser = backup::parse_every)]
        full: Option<u64>,
        /// Take an incremental physical backup this often.
        #[arg(long, value_parser = backup::parse_every)]
        incremental: Option<u64>,
        /// Take a logical backup this often.
        #[arg(long, value_parser = backup::parse_every)]
        logical: Option<u64>,
        /// Keep at least this many full backups, each with its
        /// incrementals (0: no count).
        #[arg(long)]
        keep_full: Option<u32>,
        /// Keep at least this many logical backups (0: no count).
        #[arg(long)]
        keep_logical: Option<u32>,
        /// Keep every backup younger than this.
        #[arg(long, value_parser = backup::parse_every)]
        max_age: Option<u64>,
        /// Verify every backup once it completed (true or false).
        #[arg(long)]
        verify: Option<bool>,
    },
    /// Restore a backup into a scratch server, check it, and record the
    /// result; waits for it.
    Verify {
        /// Backup id.
        id: String,
        /// Host to verify on (default: the host that took it).
        #[arg(long)]
        host: Option<String>,
    },
}

pub(crate) async fn backup_command(
    cmd: BackupCommand,
    config: Option<&std::path::Path>,
    output: Output,
) -> anyhow::Result<()> {
    let client = Client::from_file(config)?;
    let table = output == Output::Table;
    let show = |b: &pb::BackupView| -> anyhow::Result<()> {
        match output {
            Output::Json => print_json(&backup::backup_json(b)),
            Output::Table => {
                print!("{}", backup::show_text(b));
                Ok(())
            }
        }
    };
    match cmd {
        BackupCommand::Run {
            cluster,
            host,
            method,
            incremental,
            detach,
        } => {
            let started = client
                .run_backup(pb::RunBackupRequest {
                    cluster,
                    host: host.unwrap_or_default(),
                    method,
                    incremental,
                })
                .await?;
            if detach {
                return show(&started);
            }
            if table {
                eprintln!("backup {} running on {}", started.id, started.host);
            }
            let watched = table.then_some(backup::Watched::Backup);
            let b = backup::wait(&client, &started.id, watched, |b| b.status != "running").await?;
            show(&b)?;
            if b.status != "completed" {
                std::process::exit(1);
            }
        }
        BackupCommand::List { cluster } => {
            let r = client.list_backups(cluster.as_deref()).await?;
            match output {
                Output::Json => print_json(&backup::list_json(&r))?,
                Output::Table => print!("{}", backup::list_table(&r)),
            }
        }
        BackupCommand::Show { id } => show(&client.get_backup(&id).await?)?,
        BackupCommand::Restore {
            id,
            host,
            to_time,
            to_gtid,
            detach,
        } => {
            let to_time_unix = match to_time.as_deref().map(backup::parse_time).transpose() {
                Ok(t) => t.unwrap_or(0),
                Err(e) => anyhow::bail!(e),
            };
            let started = client
                .restore_backup(pb::RestoreBackupRequest {
                    id,
                    host,
                    to_time_unix,
                    to_gtid: to_gtid.unwrap_or_default(),
                })
                .await?;
            follow_restore(&client, started, detach, output, "restore").await?;
        }
        BackupCommand::Schedule {
            cluster,
            full,
            incremental,
            logical,
            keep_full,
            keep_logical,
            max_age,
            verify,
        } => {
            let mut p = client.get_backup_policy(&cluster).await?;
            let before = p.clone();
            p.full_every_secs = full.unwrap_or(p.full_every_secs);
            p.incremental_every_secs = incremental.unwrap_or(p.incremental_every_secs);
            p.logical_every_secs = logical.unwrap_or(p.logical_every_secs);
            p.keep_full = keep_full.unwrap_or(p.keep_full);
            p.keep_logical = keep_logical.unwrap_or(p.keep_logical);
            p.max_age_secs = max_age.unwrap_or(p.max_age_secs);
            p.verify = verify.unwrap_or(p.verify);
            // unchanged when nothing (or nothing new) was given
            if p != before {
                p = client.set_backup_policy(p).await?;
            }
            match output {
                Output::Json => print_json(&backup::policy_json(&p))?,
                Output::Table => print!("{}", backup::policy_text(&p)),
            }
        }
        BackupCommand::Verify { id, host } => {
            let started = client.verify_backup(&id, host.as_deref()).await?;
            if table {
                eprintln!("verifying {} ({})", started.id, started.verification_detail);
            }
            let watched = table.then_some(backup::Watched::Verification);
            let b = backup::wait(&client, &id, watched, |b| b.verification != "running").await?;
            show(&b)?;
            if b.verification != "verified" {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// `dbfleet rebuild HOST [--from DONOR]`: started, then followed like a
/// restore unless `detach`.
pub(crate) async fn rebuild_command(
    host: String,
    from: Option<String>,
    detach: bool,
    config: Option<&std::path::Path>,
    output: Output,
) -> anyhow::Result<()> {
    let client = Client::from_file(config)?;
    let started = client
        .rebuild_member(pb::RebuildMemberRequest {
            host,
            from: from.unwrap_or_default(),
        })
        .await?;
    follow_restore(&client, started, detach, output, "rebuild").await
}

/// Waits for a started restore or rebuild (`what`) unless `detach`,
/// showing its steps on stderr with table output, then prints it; exits 1
/// when it failed.
async fn follow_restore(
    client: &Client,
    started: pb::RestoreView,
    detach: bool,
    output: Output,
    what: &str,
) -> anyhow::Result<()> {
    let table = output == Output::Table;
    let r = if detach || started.status != "running" {
        started
    } else {
        if table {
            eprintln!("{what} {} running on {}", started.id, started.host);
        }
        backup::wait_restore(client, &started.id, table).await?
    };
    match output {
        Output::Json => print_json(&backup::restore_json(&r))?,
        Output::Table => print!("{}", backup::restore_text(&r)),
    }
    if r.status == "failed" {
        std::process::exit(1);
    }
    Ok(())
}
