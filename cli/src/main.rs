//! `dbfleet`: the operator CLI. Parses arguments and hands each command to
//! the library; exit codes are part of the contract (see docs/cli.md).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dbfleet_cli::client::{CONFIG_ENV, Client, ClientError};
use dbfleet_cli::sandbox::{self, Binaries, Fleet, SandboxSpec};
use dbfleet_cli::watch::{self, Display, Refresh};
use dbfleet_cli::{cert, failover, ha, status, top};
use dbfleet_common::identity::{Identity, Role};
use dbfleet_common::revocation;
use dbfleet_proto::model::Flavor;
use dbfleet_proto::mysql_tls::MysqlTlsMode;
use dbfleet_proto::pb;

mod backup_command;
use backup_command::{BackupCommand, backup_command, rebuild_command};

/// Exit code when no coordinator answered.
const EXIT_NO_COORDINATOR: u8 = 3;

/// Operate a dbfleet fleet.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// CLI config file (coordinator addresses, certificates).
    #[arg(long, env = CONFIG_ENV, global = true)]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "table", global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show clusters, members, roles and problems.
    Status {
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Repeat every --interval (redrawn in place on a terminal).
        #[arg(long)]
        watch: bool,
        /// Time between refreshes with --watch (e.g. 2s, 500ms).
        #[arg(long, default_value = "2s", value_parser = watch::parse_interval, requires = "watch")]
        interval: Duration,
        /// With --watch, stop after this many frames (default: until
        /// interrupted).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..), requires = "watch")]
        iterations: Option<u64>,
    },
    /// Live view of the fleet: per member role, QPS, threads, lag,
    /// replication and report age, refreshed every --interval.
    Top {
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Time between refreshes (e.g. 2s, 500ms).
        #[arg(long, default_value = "2s", value_parser = watch::parse_interval)]
        interval: Duration,
        /// Stop after this many frames (default: until interrupted).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        iterations: Option<u64>,
    },
    /// Show agents, whether they report and whether they are members;
    /// admit, move or forget one.
    Agents {
        #[command(subcommand)]
        action: Option<AgentsCommand>,
    },
    /// Show the coordinator pair: role, epoch, lease, op-log position.
    Coordinators {
        #[command(subcommand)]
        action: Option<CoordinatorsCommand>,
    },
    /// Show the lease's voters, or change them.
    Voters {
        #[command(subcommand)]
        action: Option<VotersCommand>,
    },
    /// Change a cluster's policy: the lag threshold and how fast replicas
    /// notice a lost primary (desired state, replicated to the standby).
    /// Prints the policy in force.
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
    Policy {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// Replica lag above which a problem is raised.
        #[arg(long, group = "change")]
        max_lag_seconds: Option<u64>,
        /// Replication heartbeat period the agents set on every replica
        /// (e.g. 500ms, 1s).
        #[arg(long, group = "change", value_parser = humantime::parse_duration)]
        replica_heartbeat: Option<Duration>,
        /// Silence after which a replica reconnects and so confirms it
        /// lost its primary (whole seconds, e.g. 4s).
        #[arg(long, group = "change", value_parser = humantime::parse_duration)]
        replica_net_timeout: Option<Duration>,
        /// Keep semi-sync on every member: `lossless` (every acknowledged
        /// commit is on a replica, so a dead primary host can be failed
        /// over safely; commits wait for a replica) or `off`
        /// (asynchronous). MariaDB cannot persist it: dbfleet sets it again
        /// after every restart, and my.cnf should say the same.
        #[arg(long, group = "change", value_parser = ["lossless", "off"])]
        semi_sync: Option<String>,
        /// TLS to MySQL: `required` makes every repointed replica use TLS
        /// with its source's certificate checked, repoints replicas that
        /// do not, and shows members without it as `mysql-tls-off`
        /// problems; `off` accepts plain TCP.
        #[arg(long, group = "change", value_parser = ["required", "off"])]
        mysql_tls: Option<String>,
    },
    /// Planned change of primary: fence the primary, let the candidate
    /// catch up, promote it, make the old primary a replica.
    Switchover {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The new primary (default: the best replica).
        #[arg(long)]
        to: Option<String>,
    },
    /// Re-provision a read-only member (one marked needs-rebuild, say) and
    /// make it a replica again: on MySQL by CLONE from the healthiest
    /// replica, on MariaDB from the cluster's newest verified backup.
    /// Waits for the end, printing the steps.
    Rebuild {
        /// The member to rebuild (never the primary).
        host: String,
        /// MySQL: the member to clone from (default: the replica with the
        /// least lag; the primary only when no replica can serve).
        #[arg(long)]
        from: Option<String>,
        /// Print the rebuild as soon as it started, without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// Replace a dead primary now.
    Failover {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The new primary (default: the best candidate).
        #[arg(long)]
        to: Option<String>,
        /// Promote although a replica that may hold the last acknowledged
        /// writes is unreachable (those writes are lost).
        #[arg(long)]
        allow_data_loss: bool,
        /// You have made sure this host (the old primary) cannot commit:
        /// powered off, isolated, or its mysqld stopped for good.
        #[arg(long)]
        confirm_fenced: Option<String>,
    },
    /// Maintenance mode: no automatic failover or repair.
    Maintenance {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// The cluster.
        #[arg(long)]
        cluster: String,
    },
    /// A host's candidate priority.
    PromotionRule {
        /// The host.
        host: String,
        /// Its rule.
        #[arg(value_parser = ["prefer", "neutral", "never"])]
        rule: String,
    },
    /// Automatic failover on/off and its anti-flap budget.
    FailoverPolicy {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// Automatic failover.
        #[arg(long, value_parser = ["on", "off"])]
        auto: Option<String>,
        /// Automatic failovers allowed per window before `dbfleet ack`.
        #[arg(long)]
        budget: Option<u32>,
        /// The window, in seconds.
        #[arg(long)]
        window_seconds: Option<u64>,
    },
    /// Re-arm automatic failover held by the anti-flap budget or a blocked
    /// failover.
    Ack {
        /// The cluster.
        #[arg(long)]
        cluster: String,
    },
    /// The event history: decisions, evidence, fence proofs.
    Events {
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only the most recent N.
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Who asked for what: every operator write the active coordinator
    /// handled, with the certificate, its address and how it ended.
    Audit {
        /// Only the most recent N (default 100).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Backups: run, list, show, verify.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Manage certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The key backups are sealed (age-encrypted) with.
    #[command(subcommand)]
    BackupKey(BackupKeyCommand),
    /// A complete local fleet for trying dbfleet out.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Forget a host's agent: it is no longer a member of its cluster and
    /// has no voice, even while it reports, until it is admitted again.
    Forget {
        /// The host.
        host: String,
    },
    /// Admit agents to the cluster and MySQL address they report: from
    /// then on they count in failure detection, failovers and backups.
    Admit {
        /// The hosts.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Admit an agent to another cluster or MySQL address (after a DBA
    /// moved the server or corrected its configuration).
    Move {
        /// The host.
        host: String,
        /// The cluster it belongs to now.
        #[arg(long)]
        cluster: String,
        /// HOST:PORT where replicas reach its mysqld now.
        #[arg(long)]
        mysql_address: String,
    },
}

#[derive(Debug, Subcommand)]
enum CoordinatorsCommand {
    /// Let an active-degraded coordinator act although it lacks the
    /// previous active's last desired-state changes (they are lost).
    AcceptGap,
}

#[derive(Debug, Subcommand)]
enum VotersCommand {
    /// Replace the voter list; needs majorities of both the old and the new
    /// list reachable, and refuses otherwise.
    Set {
        /// Every voter of the new list, NAME@IP:PORT of its agent.
        #[arg(required = true)]
        voters: Vec<String>,
        /// A voter's weight, NAME=WEIGHT (repeatable; default 1).
        #[arg(long, value_parser = parse_weight)]
        weight: Vec<(String, u32)>,
    },
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (n, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=WEIGHT"))?;
    let w: u32 = w
        .parse()
        .map_err(|_| format!("weight {w:?} is not a whole number"))?;
    if w == 0 {
        return Err("a weight must be at least 1".into());
    }
    Ok((n.to_string(), w))
}

#[derive(Debug, Subcommand)]
enum BackupKeyCommand {
    /// Write a new key file (0600; refused if FILE exists) and print the
    /// recipient it seals for. Copy it to every agent of the fleet, owned
    /// by the agent's user, and set `[backup] seal_key_file`; keep a copy
    /// where the backups are not: without it no sealed backup restores.
    Generate {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Create a certificate authority in DIR.
    Init {
        /// Directory for ca.pem and ca.key.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue ROLE-NAME.pem and ROLE-NAME.key, signed by the CA in DIR.
    Issue {
        /// Directory holding the CA; the new files go there too.
        #[arg(long)]
        dir: PathBuf,
        /// What the holder is: agent, coordinator, operator, viewer, or
        /// mysql (a mysqld's server certificate for TLS to MySQL, with
        /// --ip/--dns naming the address replicas dial; it is refused by
        /// every dbfleet server).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Host name, coordinator id or person.
        #[arg(long)]
        name: String,
        /// IP address the holder serves on (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// DNS name the holder serves on (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke certificates of the CA in DIR before they expire, and sign a
    /// new DIR/ca.crl.pem. Copy it next to ca.pem on every host: servers
    /// and clients refuse the revoked certificates from their next
    /// certificate reload on.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["name", "serial", "cert"])))]
    Revoke {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Every certificate issued to ROLE/NAME (e.g. agent/db9).
        #[arg(long, value_name = "ROLE/NAME")]
        name: Option<String>,
        /// The certificate with this serial number (hex).
        #[arg(long)]
        serial: Option<String>,
        /// The certificate in this PEM file.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SandboxCommand {
    /// Start a sandbox fleet in the background.
    Up(UpArgs),
    /// Stop the sandbox's processes and remove its directory.
    Down {
        /// Sandbox directory.
        #[arg(long, default_value = "dbfleet-sandbox")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Sandbox directory (must not exist).
    #[arg(long, default_value = "dbfleet-sandbox")]
    dir: PathBuf,
    /// Number of replicas in each cluster.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Number of clusters (`main`, `main2`, ...), all managed by the same
    /// coordinators.
    #[arg(long, default_value_t = 1)]
    clusters: usize,
    /// Number of coordinators.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    coordinators: u8,
    /// First three octets of the sandbox's loopback addresses.
    #[arg(long, default_value = "127.0.0", value_parser = parse_base)]
    base: [u8; 3],
    /// TLS to MySQL: `required` gives every mysqld a certificate from the
    /// sandbox's CA, refuses plain TCP and has replicas check their
    /// source's certificate; `off` runs plain TCP (to compare).
    #[arg(long, default_value = "required", value_parser = MysqlTlsMode::parse)]
    mysql_tls: MysqlTlsMode,
    /// The servers: `mariadb` (Debian's MariaDB) or `mysql` (MySQL 9.7,
    /// unpacked by `./scripts/install-mysql`).
    #[arg(long, default_value = "mariadb", value_parser = parse_flavor)]
    flavor: Flavor,
}

fn parse_flavor(s: &str) -> Result<Flavor, String> {
    match s {
        "mariadb" => Ok(Flavor::MariaDb),
        "mysql" => Ok(Flavor::MySql),
        _ => Err(format!("unknown flavor {s:?}; use mariadb or mysql")),
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        format!(
            "unknown role {s:?}; use one of {}",
            Role::ALL.map(Role::as_str).join(", ")
        )
    })
}

fn parse_base(s: &str) -> Result<[u8; 3], String> {
    let parts: Vec<u8> = s
        .split('.')
        .map(|p| p.parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not three octets like 127.0.0"))?;
    match parts.as_slice() {
        [127, b, c] => Ok([127, *b, *c]),
        _ => Err(format!("{s:?}: the sandbox lives on loopback; use 127.X.Y")),
    }
}

/// A policy's semi-sync setting in words (empty: dbfleet leaves it alone).
fn semi_sync_policy(s: &str) -> &str {
    if s.is_empty() { "as configured" } else { s }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    dbfleet_common::tls::install_crypto_provider();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dbfleet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dbfleet: {e:#}");
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::NoCoordinator(_)) => ExitCode::from(EXIT_NO_COORDINATOR),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Status {
            cluster,
            watch: true,
            interval,
            iterations,
        } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let json = cli.output == Output::Json;
            let refresh = Refresh {
                interval,
                iterations,
            };
            watch::run(
                "dbfleet status",
                refresh,
                Display::choose(json),
                async || {
                    let s = status::to_json(&client.list_clusters(cluster.as_deref()).await?);
                    Ok(if json {
                        serde_json::to_string(&s)?
                    } else {
                        status::to_table(&s)
                    })
                },
            )
            .await?;
        }
        Command::Top {
            cluster,
            interval,
            iterations,
        } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let json = cli.output == Output::Json;
            let refresh = Refresh {
                interval,
                iterations,
            };
            let mut previous = top::Previous::default();
            watch::run("dbfleet top", refresh, Display::choose(json), async || {
                let resp = client.list_clusters(cluster.as_deref()).await?;
                let (frame, next) = top::frame(&resp, &previous, dbfleet_common::clock::unix_ms());
                previous = next;
                Ok(if json {
                    serde_json::to_string(&frame)?
                } else {
                    top::lines(&frame).join("\n")
                })
            })
            .await?;
        }
        Command::Status { cluster, .. } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let resp = client.list_clusters(cluster.as_deref()).await?;
            let json = status::to_json(&resp);
            match cli.output {
                Output::Json => print_json(&json)?,
                Output::Table => print!("{}", status::to_table(&json)),
            }
        }
        Command::Agents {
            action: Some(AgentsCommand::Forget { host }),
        } => {
            let client = Client::from_file(cli.config.as_deref())?;
            client.forget_agent(&host).await?;
            match cli.output {
                Output::Json => print_json(&serde_json::json!({ "forgotten": host }))?,
                Output::Table => println!("{host} forgotten"),
            }
        }
        Command::Agents {
            action: Some(AgentsCommand::Admit { hosts }),
        } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let mut admitted = Vec::new();
            for host in &hosts {
                let a = client.admit_agent(host, None).await?;
                if cli.output == Output::Table {
                    println!(
                        "{} admitted to cluster {} at {}",
                        a.host, a.cluster, a.mysql_address
                    );
                }
                admitted.push(serde_json::json!({
                    "host": a.host, "cluster": a.cluster, "mysql_address": a.mysql_address,
                }));
            }
            if cli.output == Output::Json {
                print_json(&serde_json::json!({ "admitted": admitted }))?;
            }
        }
        Command::Agents {
            action:
                Some(AgentsCommand::Move {
                    host,
                    cluster,
                    mysql_address,
                }),
        } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let a = client
                .admit_agent(&host, Some((&cluster, &mysql_address)))
                .await?;
            match cli.output {
                Output::Json => print_json(&serde_json::json!({
                    "host": a.host, "cluster": a.cluster, "mysql_address": a.mysql_address,
                }))?,
                Output::Table => println!(
                    "{} moved: admitted to cluster {} at {}",
                    a.host, a.cluster, a.mysql_address
                ),
            }
        }
        Command::Agents { action: None } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let resp = client.list_agents().await?;
            let agents: Vec<serde_json::Value> = resp
                .agents
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "host": a.host, "cluster": a.cluster, "connected": a.connected,
                        "last_report_age_ms": a.last_report_age_ms, "agent_version": a.agent_version,
                        "registered_at_unix_ms": a.registered_at_unix_ms,
                        "standing": a.standing,
                        "standing_detail": a.standing_detail,
                        "admitted_cluster": a.admitted_cluster,
                        "admitted_mysql_address": a.admitted_mysql_address,
                    })
                })
                .collect();
            match cli.output {
                Output::Json => print_json(&serde_json::json!({ "agents": agents }))?,
                Output::Table => {
                    println!(
                        "{:<20} {:<16} {:<20} {:<10} LAST REPORT",
                        "HOST", "CLUSTER", "STANDING", "CONNECTED"
                    );
                    for a in &resp.agents {
                        let age = a
                            .last_report_age_ms
                            .map_or("never".into(), |ms| format!("{ms}ms ago"));
                        println!(
                            "{:<20} {:<16} {:<20} {:<10} {age}",
                            a.host,
                            a.cluster,
                            a.standing,
                            if a.connected { "yes" } else { "no" }
                        );
                    }
                    for a in resp.agents.iter().filter(|a| !a.standing_detail.is_empty()) {
                        println!("{}", a.standing_detail);
                    }
                }
            }
        }
        Command::Coordinators { action: None } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let statuses = client.coordinator_statuses().await;
            let json = ha::coordinators_json(&statuses);
            match cli.output {
                Output::Json => print_json(&json)?,
                Output::Table => print!("{}", ha::coordinators_table(&json)),
            }
            if statuses.iter().all(|(_, r)| r.is_err()) {
                let failures = statuses
                    .into_iter()
                    .filter_map(|(a, r)| r.err().map(|e| format!("{a}: {e}")));
                return Err(ClientError::NoCoordinator(failures.collect()).into());
            }
        }
        Command::Coordinators {
            action: Some(CoordinatorsCommand::AcceptGap),
        } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let s = client.accept_oplog_gap().await?;
            match cli.output {
                Output::Json => print_json(&ha::coordinators_json(&[(s.address.clone(), Ok(s))]))?,
                Output::Table => println!("coordinator {} is now {}", s.id, s.role),
            }
        }
        Command::Voters { action } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let resp = match action {
                None => client.list_voters().await?,
                Some(VotersCommand::Set { voters, weight }) => {
                    let specs = voters
                        .iter()
                        .map(|v| ha::parse_voter(v, &weight))
                        .collect::<Result<Vec<_>, String>>()
                        .map_err(anyhow::Error::msg)?;
                    client.set_voters(specs).await?
                }
            };
            let json = ha::voters_json(&resp);
            match cli.output {
                Output::Json => print_json(&json)?,
                Output::Table => print!("{}", ha::voters_table(&json)),
            }
        }
        Command::Policy {
            cluster,
            max_lag_seconds,
            replica_heartbeat,
            replica_net_timeout,
            semi_sync,
            mysql_tls,
        } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let asked_semi_sync = semi_sync.is_some();
            let asked_tls = mysql_tls.is_some();
            let ms = |d: Duration| d.as_millis() as u64;
            let tunes = replica_heartbeat.is_some() || replica_net_timeout.is_some();
            let p = client
                .set_cluster_policy(pb::SetClusterPolicyRequest {
                    cluster,
                    max_lag_seconds,
                    replica_heartbeat_ms: replica_heartbeat.map(ms),
                    replica_net_timeout_ms: replica_net_timeout.map(ms),
                    semi_sync,
                    mysql_tls,
                })
                .await?;
            if asked_tls && p.mysql_tls.is_empty() {
                anyhow::bail!(
                    "the active coordinator does not know the MySQL TLS policy (upgrade it); nothing about TLS changed"
                );
            }
            if asked_semi_sync && p.semi_sync.is_empty() {
                anyhow::bail!(
                    "the active coordinator does not know the semi-sync policy (upgrade it); nothing about semi-sync changed"
                );
            }
            // A coordinator from before per-cluster tuning answers without it
            // (and ignored it).
            if tunes && p.replica_heartbeat_ms == 0 {
                anyhow::bail!(
                    "the active coordinator does not know per-cluster replica tuning (upgrade it); only the lag threshold may have changed"
                );
            }
            match cli.output {
                Output::Json => print_json(&serde_json::json!({
                    "cluster": p.cluster,
                    "max_lag_seconds": p.max_lag_seconds,
                    "replica_heartbeat_ms": p.replica_heartbeat_ms,
                    "replica_net_timeout_ms": p.replica_net_timeout_ms,
                    "semi_sync": (!p.semi_sync.is_empty()).then_some(&p.semi_sync),
                    "mysql_tls": (!p.mysql_tls.is_empty()).then_some(&p.mysql_tls),
                }))?,
                Output::Table => println!(
                    "cluster {}: max_lag_seconds = {}, replica heartbeat = {} ms, replica net timeout = {} ms, semi-sync {}, TLS to MySQL {}",
                    p.cluster,
                    p.max_lag_seconds,
                    p.replica_heartbeat_ms,
                    p.replica_net_timeout_ms,
                    semi_sync_policy(&p.semi_sync),
                    if p.mysql_tls.is_empty() {
                        "unknown (the coordinator is older)"
                    } else {
                        &p.mysql_tls
                    }
                ),
            }
        }
        Command::Switchover { cluster, to } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let r = client
                .switchover(pb::SwitchoverRequest {
                    cluster,
                    to: to.unwrap_or_default(),
                })
                .await?;
            operation_outcome(&r, cli.output)?;
        }
        Command::Rebuild { host, from, detach } => {
            rebuild_command(host, from, detach, cli.config.as_deref(), cli.output).await?
        }
        Command::Failover {
            cluster,
            to,
            allow_data_loss,
            confirm_fenced,
        } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let r = client
                .failover(pb::FailoverRequest {
                    cluster,
                    to: to.unwrap_or_default(),
                    allow_data_loss,
                    confirm_fenced: confirm_fenced.unwrap_or_default(),
                })
                .await?;
            operation_outcome(&r, cli.output)?;
        }
        Command::Maintenance { state, cluster } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let c = client.set_maintenance(&cluster, state == "on").await?;
            control_outcome(&c, cli.output)?;
        }
        Command::PromotionRule { host, rule } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let c = client.set_promotion_rule(&host, &rule).await?;
            control_outcome(&c, cli.output)?;
        }
        Command::FailoverPolicy {
            cluster,
            auto,
            budget,
            window_seconds,
        } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let c = client
                .set_failover_policy(pb::SetFailoverPolicyRequest {
                    cluster,
                    auto_failover: auto.map(|a| a == "on"),
                    budget,
                    window_seconds,
                })
                .await?;
            control_outcome(&c, cli.output)?;
        }
        Command::Ack { cluster } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let c = client.acknowledge(&cluster).await?;
            control_outcome(&c, cli.output)?;
        }
        Command::Events { cluster, limit } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let r = client.list_events(cluster.as_deref(), limit).await?;
            match cli.output {
                Output::Json => print_json(&failover::events_json(&r))?,
                Output::Table => print!("{}", failover::events_table(&r)),
            }
        }
        Command::Audit { limit } => {
            let client = Client::from_file(cli.config.as_deref())?;
            let r = client.list_audit(limit).await?;
            match cli.output {
                Output::Json => print_json(&failover::audit_json(&r))?,
                Output::Table => print!("{}", failover::audit_table(&r)),
            }
        }
        Command::Backup(cmd) => backup_command(cmd, cli.config.as_deref(), cli.output).await?,
        Command::BackupKey(BackupKeyCommand::Generate { out }) => {
            let (text, recipient) = dbfleet_common::seal::SealKey::generate();
            dbfleet_common::certs::write_file(&out, text.as_bytes(), 0o600, false)?;
            match cli.output {
                Output::Json => print_json(&serde_json::json!({
                    "key_file": out.display().to_string(), "recipient": recipient,
                }))?,
                Output::Table => println!(
                    "wrote {} (0600): backups sealed with it are for {recipient}",
                    out.display()
                ),
            }
        }
        Command::Cert(CertCommand::Init { dir }) => {
            let path = cert::init(&dir)?;
            println!("created CA {}", path.display());
        }
        Command::Cert(CertCommand::Issue {
            dir,
            role,
            name,
            ip,
            dns,
            days,
        }) => {
            let files = cert::issue(&dir, role, &name, &ip, &dns, days)?;
            println!(
                "issued dbfleet://{role}/{name}: {} (key {})",
                files.cert.display(),
                files.key.display()
            );
        }
        Command::Cert(CertCommand::Revoke {
            dir,
            name,
            serial,
            cert: file,
        }) => {
            let which = match (name, serial, file) {
                (Some(n), _, _) => {
                    let (role, name) = n.split_once('/').ok_or_else(|| {
                        anyhow::anyhow!("--name {n:?} is not ROLE/NAME (e.g. agent/db9)")
                    })?;
                    let role = parse_role(role).map_err(anyhow::Error::msg)?;
                    revocation::Which::Identity(Identity::new(role, name))
                }
                (None, Some(s), _) => revocation::Which::Serial(s),
                (None, None, Some(f)) => revocation::Which::CertFile(f),
                (None, None, None) => unreachable!("clap requires one"),
            };
            let made = revocation::revoke(&dir, &which)?;
            let crl = dir.join(revocation::CA_CRL);
            match cli.output {
                Output::Json => print_json(&serde_json::json!({
                    "revoked": made,
                    "revocation_list": crl,
                }))?,
                Output::Table => {
                    if made.is_empty() {
                        println!("already revoked; {} signed again", crl.display());
                    }
                    for r in &made {
                        println!(
                            "revoked serial {}{}",
                            r.serial,
                            r.identity
                                .as_ref()
                                .map(|i| format!(" ({i})"))
                                .unwrap_or_default()
                        );
                    }
                    println!(
                        "copy {} next to ca.pem on every host: servers and clients refuse these certificates from their next certificate reload on (cert_reload_interval); connections already open end within an hour",
                        crl.display()
                    );
                }
            }
        }
        Command::Sandbox(SandboxCommand::Up(args)) => sandbox_up(args, cli.output).await?,
        Command::Sandbox(SandboxCommand::Down { dir }) => {
            let report = sandbox::down(&dir)?;
            match cli.output {
                Output::Json => print_json(
                    &serde_json::json!({ "stopped": report.stopped, "skipped": report.skipped }),
                )?,
                Output::Table => println!(
                    "stopped {}; removed {}",
                    report.stopped.join(", "),
                    dir.display()
                ),
            }
        }
    }
    Ok(())
}

/// Prints an operation's outcome; anything but `completed` is a failure
/// exit, so scripts can rely on the exit code.
fn operation_outcome(r: &pb::OperationResult, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&failover::result_json(r))?,
        Output::Table => print!("{}", failover::result_text(r)),
    }
    if r.outcome != "completed" {
        anyhow::bail!("{} {}: {}", r.kind, r.outcome, r.message);
    }
    Ok(())
}

fn control_outcome(c: &pb::ClusterControl, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&failover::control_json(c)),
        Output::Table => {
            print!("{}", failover::control_text(c));
            Ok(())
        }
    }
}

async fn sandbox_up(args: UpArgs, output: Output) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let bins = Binaries::find(exe.parent().unwrap_or(std::path::Path::new(".")))?;
    let spec = SandboxSpec {
        dir: args.dir.clone(),
        replicas: args.replicas,
        coordinators: usize::from(args.coordinators),
        base: args.base,
        cluster: "main".into(),
        clusters: args.clusters,
        report_interval: Duration::from_secs(1),
        agent_timeout: Duration::from_secs(5),
        lease: sandbox::sandbox_lease(),
        coordinator_extra: String::new(),
        self_fence_timeout: None,
        agent_backup: String::new(),
        json_logs: false,
        operator_admission: true,
        seal_backups: true,
        mysql_tls: args.mysql_tls == MysqlTlsMode::Required,
        flavor: args.flavor,
        bins,
    };
    if output == Output::Table {
        eprintln!("starting a sandbox in {} ...", args.dir.display());
    }
    // Registered before anything starts, so a signal that arrives during
    // a blocking step is still seen at the next await.
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    // Dropping the fleet (on failure, or when Ctrl-C drops this future)
    // stops everything it started; success detaches it.
    let start = async {
        let fleet = Fleet::up(spec).await?;
        fleet.wait_healthy(Duration::from_secs(90)).await?;
        Ok::<_, anyhow::Error>(fleet)
    };
    let fleet = tokio::select! {
        r = start => r?,
        _ = int.recv() => anyhow::bail!("interrupted: stopped everything the sandbox had started"),
        _ = term.recv() => anyhow::bail!("terminated: stopped everything the sandbox had started"),
    };
    let config = fleet.cli_config();
    let info = fleet.info.clone();
    let dir = fleet.dir.clone();
    fleet.detach();
    match output {
        Output::Json => print_json(&info)?,
        Output::Table => {
            let mut clusters: Vec<&str> = info.members.iter().map(|m| m.cluster.as_str()).collect();
            clusters.dedup();
            println!(
                "sandbox is up in {}: {} {} with {} members, {} coordinator(s)",
                dir.display(),
                if clusters.len() == 1 {
                    "cluster"
                } else {
                    "clusters"
                },
                clusters.join(", "),
                info.members.len(),
                info.coordinators.len()
            );
            println!();
            println!("try:");
            println!("  export DBFLEET_CONFIG={}", config.display());
            println!("  dbfleet status");
            println!("  dbfleet status --output json");
            // the flavor's own client (MySQL's is in its unpacked tree)
            let client = match args.flavor {
                Flavor::MariaDb => "mariadb".to_string(),
                Flavor::MySql => std::env::current_exe()
                    .ok()
                    .and_then(|exe| sandbox::mysqld::MysqlInstall::find(exe.parent()?))
                    .map(|i| i.program("mysql").display().to_string())
                    .unwrap_or_else(|| "mysql".into()),
            };
            println!(
                "  {client} -h {} -P {} -u {} -p  # password in {}/sandbox.json",
                info.members[0].address,
                info.members[0].mysql_port,
                info.app_user,
                dir.display()
            );
            println!("  dbfleet sandbox down --dir {}", args.dir.display());
        }
    }
    Ok(())
}
