//! `dbfleet-agent`: watches the local mysqld, reports its state to every
//! coordinator, and serves coordinators' calls.
//!
//! `main.rs` parses arguments, sets up logging and binds the listener;
//! [`run`] is the whole agent.

pub mod backup;
pub mod binlog_archive;
pub mod collector;
pub mod config;
pub mod guard;
pub mod metrics;
pub mod mysql;
pub mod reporter;
pub mod repository;
pub mod service;
pub mod voter;

use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::admission::{Admission, Limits};
use dbfleet_common::authz::{AllowedNames, AuthorizeLayer};
use dbfleet_common::config::{ConfigError, read_secret};
use dbfleet_common::identity::{Identity, Role};
use dbfleet_common::tls::{TlsContext, TlsError, tls_incoming};
use dbfleet_common::{shutdown, systemd};
use dbfleet_proto::model::Name;
use dbfleet_proto::pb::agent_service_server::AgentServiceServer;
use dbfleet_proto::pb::voter_service_server::VoterServiceServer;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::collector::ReportIdentity;
use crate::config::AgentConfig;
use crate::guard::{AckClock, Guard};
use crate::mysql::control::Controller;
use crate::mysql::observer::{LiveReplicas, MysqlTarget, Observer};
use crate::mysql::process::KnownServer;
use crate::service::{AgentApi, VoterApi};
use crate::voter::LeaseVoter;

/// Why the agent cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The config or the password file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificates are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The certificate is not this host's.
    #[error(
        "certificate identity is {actual} but the config says host = {expected:?}; issue a certificate for dbfleet://agent/{expected}"
    )]
    WrongIdentity {
        /// The configured host.
        expected: String,
        /// What the certificate says.
        actual: String,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(String),
    /// The lease voter's record cannot be loaded.
    #[error(transparent)]
    Voter(#[from] crate::voter::VoterError),
    /// The read-only guard cannot be loaded.
    #[error(transparent)]
    Guard(#[from] crate::guard::GuardError),
    /// The collector or a reporter stopped: the agent would go on serving
    /// while reporting nothing, so it exits and its supervisor restarts it.
    #[error("agent task ended unexpectedly: {0}")]
    TaskFailed(String),
}

/// Everything checked before start: config values, password file,
/// certificates and their identity. `check-config` runs exactly this. A
/// witness has no mysqld, hence no target.
pub fn check(config: &AgentConfig) -> Result<(Arc<TlsContext>, Option<Checked>), AgentError> {
    let tls = TlsContext::load(&config.tls)?;
    let want = Identity::new(Role::Agent, config.host.clone());
    if tls.identity() != want {
        return Err(AgentError::WrongIdentity {
            expected: config.host.clone(),
            actual: tls.identity().to_string(),
        });
    }
    let (Some(mysql), Some(address)) = (&config.mysql, config.mysql_address()) else {
        return Ok((tls, None));
    };
    let password = read_secret(&mysql.password_file)?;
    if let Some(ca) = &mysql.tls_ca_file {
        dbfleet_common::tls::read_certs(ca)?;
    }
    let target = MysqlTarget {
        address,
        socket: mysql.socket.clone(),
        user: mysql.user.clone(),
        password,
        connect_timeout: mysql.connect_timeout,
        query_timeout: mysql.query_timeout,
        tls_ca: mysql.tls_ca_file.clone(),
    };
    let replication = match (&mysql.replication_user, &mysql.replication_password_file) {
        (Some(user), Some(file)) => Some((user.clone(), read_secret(file)?)),
        _ => None,
    };
    Ok((
        tls,
        Some(Checked {
            target,
            replication,
        }),
    ))
}

/// What [`check`] loaded for an agent that watches a mysqld.
#[derive(Debug)]
pub struct Checked {
    /// How to reach mysqld.
    pub target: MysqlTarget,
    /// The replication account, when configured.
    pub replication: Option<(String, dbfleet_common::config::Secret)>,
}

/// On every SIGHUP, the coordinators' names are read again: a coordinator
/// taken out of `coordinators` is refused from the next call on. A file
/// that no longer checks out changes nothing.
fn reload_coordinator_names(
    path: std::path::PathBuf,
    names: AllowedNames,
    cancel: CancellationToken,
) {
    dbfleet_common::shutdown::on_sighup("the coordinators' names", cancel, move || {
        match config::coordinator_names_in(&path) {
            Ok(list) => {
                info!(
                    coordinators = list.join(", "),
                    "SIGHUP: the agent obeys these coordinators"
                );
                names.only(Role::Coordinator, list);
            }
            Err(e) => warn!(error = e, "SIGHUP: the coordinators' names are unchanged"),
        }
    });
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(
    config: AgentConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let (tls, target) = check(&config)?;
    let names = AllowedNames::default();
    names.only(Role::Coordinator, config.coordinator_names());
    if let Some(path) = &config.source {
        reload_coordinator_names(path.clone(), names.clone(), shutdown.clone());
    }
    LeaseVoter::move_legacy_record(
        &config.legacy_fence_record_path(),
        &config.fence_record_path(),
    )?;
    let lease_voter = Arc::new(LeaseVoter::open(
        &config.fence_record_path(),
        config.amnesia_quarantine,
    )?);
    tls.send_from(config.listen.ip());
    tls.spawn_reloader(config.cert_reload_interval, shutdown.clone());
    let (tx, rx) = watch::channel(None);
    let mut tasks = tokio::task::JoinSet::new();
    let voter = VoterServiceServer::new(VoterApi {
        name: config.host.clone(),
        witness: config.witness,
        voter: lease_voter.clone(),
    });
    let server = match target {
        Some(Checked {
            target,
            replication,
        }) => {
            let guard = Arc::new(Guard::open(&config.guard_path())?);
            let server = Arc::new(KnownServer::open(&config.known_server_path()));
            let control = Arc::new(Controller::new(
                target.clone(),
                replication.clone(),
                server.clone(),
                guard.clone(),
            ));
            let acks = Arc::new(AckClock::default());
            let accepted = Arc::new(metrics::ReportAcks::new());
            let archive = Arc::new(binlog_archive::ArchiveStatus::default());
            let of = backup::JobsOf {
                cluster: config.cluster.clone(),
                host: config.host.clone(),
                state_dir: config.state_dir.clone(),
            };
            let jobs = backup::Jobs::open(
                of.clone(),
                config.backup.clone(),
                target.clone(),
                (
                    config.mysql.as_ref().and_then(|m| m.start_command.clone()),
                    replication.clone(),
                ),
                archive.clone(),
                tls.clone(),
            )
            .await;
            {
                let (jobs, shutdown) = (jobs.clone(), shutdown.clone());
                let limit = config.shutdown_timeout;
                // joined at shutdown, so the agent exits once its jobs ended
                tasks.spawn(async move {
                    shutdown.cancelled().await;
                    jobs.stop();
                    jobs.stopped(limit).await;
                });
            }
            if let Some(b) = config.backup.as_ref().filter(|b| b.archive_binlogs) {
                let archiver = binlog_archive::Archiver::new(
                    &of,
                    b.store.clone().expect("opened in AgentConfig::load"),
                    b.compression_level,
                    target.clone(),
                    archive.clone(),
                    tls.clone(),
                );
                tokio::spawn(binlog_archive::run(
                    archiver,
                    b.archive_interval,
                    shutdown.clone(),
                ));
            }
            let mysql_address = target.address.clone();
            let id = ReportIdentity {
                host: Name::parse(&config.host).expect("validated in AgentConfig::load"),
                cluster: Name::parse(&config.cluster).expect("validated in AgentConfig::load"),
                instance: format!("{:016x}", rand::rng().random::<u64>()),
                mysql_address,
                agent_address: config.command_address(),
                self_fence_timeout_ms: config
                    .self_fence_timeout
                    .map_or(0, |t| t.as_millis() as u64),
                report_interval_ms: config.report_interval.as_millis() as u64,
            };
            info!(
                host = config.host,
                cluster = config.cluster,
                instance = id.instance,
                "agent starting"
            );
            tasks.spawn(guard::enforce(
                guard.clone(),
                control.clone(),
                acks.clone(),
                config.self_fence_timeout,
                rx.clone(),
                shutdown.clone(),
            ));
            let (problems, config_problems) = watch::channel(Vec::new());
            tokio::spawn(mysql::verify::watch(
                target.clone(),
                mysql::verify::Expectations {
                    pid_file: config.mysql.as_ref().and_then(|m| m.pid_file.clone()),
                    replication: replication.clone(),
                    coordinators: config.coordinator_endpoints(),
                    tls: None,
                },
                problems,
                shutdown.clone(),
            ));
            let (collections, collected) = watch::channel(None);
            tasks.spawn(mysql::process::follow(
                server,
                collected.clone(),
                target.address.host.clone(),
                shutdown.clone(),
            ));
            if let Some(l) = metrics_listener {
                let sources = metrics::Sources {
                    cluster: config.cluster.clone(),
                    host: config.host.clone(),
                    coordinators: config
                        .coordinator_endpoints()
                        .into_iter()
                        .map(|(_, address)| address)
                        .collect(),
                    collections: collected,
                    guard: guard.clone(),
                    voter: lease_voter.clone(),
                    jobs: jobs.clone(),
                    archive: archive.clone(),
                    acks: accepted.clone(),
                    history: Default::default(),
                };
                tokio::spawn(metrics::serve(
                    l,
                    Arc::new(sources),
                    config.metrics_tls.then(|| tls.clone()),
                    shutdown.clone(),
                ));
            }
            tasks.spawn(collector::run(
                Observer::new(
                    target,
                    if config.self_fence_timeout.is_some() {
                        LiveReplicas::Check
                    } else {
                        LiveReplicas::DumpThreads
                    },
                ),
                guard,
                collector::ReportSources {
                    jobs: jobs.clone(),
                    archive,
                    config_problems,
                },
                id,
                (config.collect_interval, config.report_interval),
                collector::Outputs {
                    reports: tx,
                    collections,
                },
                shutdown.clone(),
            ));
            for endpoint in config.coordinator_endpoints() {
                tasks.spawn(reporter::report_to(
                    endpoint,
                    tls.clone(),
                    rx.clone(),
                    acks.clone(),
                    accepted.clone(),
                    shutdown.clone(),
                ));
            }
            Limits::AGENT
                .grpc_server()
                .layer(AuthorizeLayer::new(service::policy).with_names(names.clone()))
                .add_service(AgentServiceServer::new(AgentApi {
                    reports: rx,
                    voter: lease_voter,
                    control,
                    jobs,
                }))
                .add_service(voter)
        }
        None => {
            info!(host = config.host, "witness starting: voting only");
            Limits::AGENT
                .grpc_server()
                .layer(AuthorizeLayer::new(service::witness_policy).with_names(names.clone()))
                .add_service(voter)
        }
    };
    let admission = Admission::new("grpc", Limits::AGENT);
    let incoming = tls_incoming(listener, tls, admission, shutdown.clone());
    let server = server.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let mut server = tokio::spawn(server);
    systemd::notify_ready();
    systemd::spawn_watchdog(shutdown.clone());

    let result = tokio::select! {
        biased;
        _ = shutdown.cancelled() => Ok(()),
        Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
            shutdown.cancel();
            Err(AgentError::TaskFailed(match ended {
                Ok(()) => "returned".to_string(),
                Err(e) => e.to_string(),
            }))
        }
        r = &mut server => {
            shutdown.cancel();
            match r {
                Ok(Ok(())) => Err(AgentError::Serve("server stopped unexpectedly".into())),
                Ok(Err(e)) => Err(AgentError::Serve(e.to_string())),
                Err(e) => Err(AgentError::Serve(e.to_string())),
            }
        }
    };
    systemd::notify_stopping();
    let deadline = config.shutdown_timeout;
    if !shutdown::within(deadline, "agent tasks", async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    {
        tasks.abort_all();
    }
    if !server.is_finished()
        && !shutdown::within(Duration::from_secs(1), "gRPC server", &mut server).await
    {
        server.abort();
        warn!("connections cut at the shutdown deadline");
    }
    info!("agent stopped");
    result
}
