//! `dbfleet-coordinator`: receives every agent's reports, keeps the fleet's
//! desired state durable in sled, derives each cluster's topology and
//! problems, and serves the admin API to operators.
//!
//! `main.rs` only parses arguments, sets up logging and binds the listener;
//! [`run`] is the whole server, so tests and embedders start it the same way.

pub mod agent_commands;
pub(crate) mod audit;
pub mod backup;
pub mod config;
pub mod error;
pub mod failover;
pub mod fleet;
pub mod ha;
pub mod membership;
pub mod metrics;
pub mod service;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::admission::{Admission, Limits};
use dbfleet_common::authz::{AllowedNames, AuthorizeLayer};
use dbfleet_common::clock::boottime;
use dbfleet_common::identity::{Identity, Role};
use dbfleet_common::tls::{TlsContext, tls_incoming};
use dbfleet_common::{shutdown, systemd};
use dbfleet_lease::{Holder, HolderId};
use dbfleet_proto::pb::admin_service_server::AdminServiceServer;
use dbfleet_proto::pb::peer_service_server::PeerServiceServer;
use dbfleet_proto::pb::report_service_server::ReportServiceServer;
use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::CoordinatorConfig;
use crate::error::StartError;
use crate::failover::Failovers;
use crate::fleet::{Fleet, FleetRules, ReplicaTuning};
use crate::ha::replication::PeerApi;
use crate::ha::voters::AgentClients;
use crate::ha::{Ha, KnownActive};
use crate::service::admin::AdminApi;
use crate::service::report::ReportApi;
use crate::store::{SledStore, Store};

/// How often the derived primaries are compared with the remembered ones.
const PRIMARY_OBSERVE_INTERVAL: Duration = Duration::from_secs(1);

/// Checks everything `run` would need except the listener: config values,
/// certificates and identity, and that the store opens.
pub fn check(config: &CoordinatorConfig) -> Result<Arc<TlsContext>, StartError> {
    let tls = TlsContext::load(&config.tls)?;
    let want = Identity::new(Role::Coordinator, config.id.clone());
    if tls.identity() != want {
        return Err(StartError::WrongIdentity {
            expected: config.id.clone(),
            actual: tls.identity().to_string(),
        });
    }
    Ok(tls)
}

/// Runs the coordinator until `shutdown` is cancelled, then stops within
/// the configured deadline (releasing the lease first if it holds it).
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tls = check(&config)?;
    let data_dir = config.data_dir.clone();
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || SledStore::open(&data_dir))
            .await
            .map_err(|e| StartError::Serve(e.to_string()))??,
    );
    let stored = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.load())
            .await
            .map_err(|e| StartError::Serve(e.to_string()))??
    };
    let voters = stored
        .voters
        .clone()
        .unwrap_or_else(|| config.lease.voter_list());
    let incarnation = rand::rng().random::<u64>();
    let holder = Holder::new(
        HolderId {
            coordinator: config.id.clone(),
            incarnation,
        },
        config.lease.timing(),
        voters.set.clone(),
        stored.max_seen.clone(),
        boottime(),
    );
    let (peer_id, peer_address) = config.lease.peer();
    let address = config
        .lease
        .advertise
        .clone()
        .unwrap_or_else(|| config.listen.to_string());
    let ha = Arc::new(Ha::new(
        holder,
        address,
        KnownActive {
            id: peer_id,
            address: peer_address,
        },
        voters,
        stored.applied.seq,
        stored.lost_found,
        config.lease.standby_ack_timeout,
    ));
    ha.applied_to(stored.applied.seq);
    let fleet = Arc::new(Fleet::load(
        store.clone(),
        ha.clone(),
        FleetRules {
            agent_timeout: config.topology.agent_timeout,
            default_max_lag_seconds: config.topology.default_max_lag_seconds,
            default_tuning: ReplicaTuning {
                heartbeat: config.failover.replica_heartbeat,
                net_timeout: config.failover.replica_net_timeout,
                mysql_tls: config.mysql_tls,
            },
            admission: config.topology.admission,
        },
    )?);
    info!(id = config.id, incarnation = format!("{incarnation:016x}"), applied = stored.applied.seq,
        max_seen = %stored.max_seen, "coordinator starting as standby");
    tls.send_from(config.listen.ip());
    tls.spawn_reloader(config.cert_reload_interval, shutdown.clone());
    spawn_primary_observer(fleet.clone(), shutdown.clone());
    let clients = Arc::new(AgentClients::new(tls.clone(), config.lease.rpc_timeout));
    // The lease stops after the server (so in-flight writes finish under a
    // valid lease) and releases the lease on the way out.
    let lease_cancel = CancellationToken::new();
    let lease = tokio::spawn(ha::driver::run(
        ha.clone(),
        clients.clone(),
        store.clone(),
        lease_cancel.clone(),
    ));
    tokio::spawn(ha::replication::follow(
        ha.clone(),
        fleet.clone(),
        store.clone(),
        tls.clone(),
        config.lease.rpc_timeout * 3,
        shutdown.clone(),
    ));

    let report = ReportApi {
        fleet: fleet.clone(),
        coordinator_id: config.id.clone(),
        cancel: shutdown.clone(),
    };
    let peer = PeerApi {
        ha: ha.clone(),
        fleet: fleet.clone(),
        store: store.clone(),
        heartbeat: config.lease.renew_interval,
    };
    let failovers = Failovers::new(fleet.clone(), clients.clone(), config.failover.clone());
    if let Some(l) = metrics_listener {
        let tls = config.metrics_tls.then(|| tls.clone());
        tokio::spawn(metrics::serve(
            l,
            fleet.clone(),
            failovers.clone(),
            tls,
            shutdown.clone(),
        ));
    }
    tokio::spawn(failover::reconcile::run(
        failovers.clone(),
        shutdown.clone(),
    ));
    let backups = backup::Backups::new(fleet.clone(), clients.clone());
    tokio::spawn(backup::run(backups.clone(), shutdown.clone()));
    let audit = Arc::new(
        audit::AuditLog::open(&config.data_dir).map_err(|e| StartError::Audit(e.to_string()))?,
    );
    let admin = AdminApi {
        audit,
        fleet: fleet.clone(),
        ha,
        clients,
        backups,
        coordinator_id: config.id.clone(),
        controls: service::control::Controls {
            fleet,
            failovers,
            default_budget: config.failover.budget,
            default_window_seconds: config.failover.window.as_secs(),
        },
    };
    let addr = listener.local_addr().ok();
    // Of the coordinator certificates, only the peer's (and this
    // coordinator's own, for a CLI run with it on this host).
    let names = AllowedNames::default();
    names.only(
        Role::Coordinator,
        [config.id.clone(), config.lease.peer().0],
    );
    let admission = Admission::new("grpc", Limits::COORDINATOR);
    let incoming = tls_incoming(listener, tls, admission, shutdown.clone());
    let server = Limits::COORDINATOR
        .grpc_server()
        .layer(AuthorizeLayer::new(service::policy).with_names(names))
        .add_service(
            ReportServiceServer::new(report)
                .max_decoding_message_size(service::report::MAX_REPORT_BYTES),
        )
        .add_service(AdminServiceServer::new(admin))
        .add_service(PeerServiceServer::new(peer))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    let mut server = tokio::spawn(server);
    info!(id = config.id, ?addr, "coordinator serving");
    systemd::notify_ready();
    systemd::spawn_watchdog(shutdown.clone());

    tokio::select! {
        // A stop requested right after start also ends the server: that
        // is the stop, not a failure.
        biased;
        _ = shutdown.cancelled() => {}
        r = &mut server => {
            // The server ended on its own: that is a failure, not a stop.
            shutdown.cancel();
            return match r {
                Ok(Ok(())) => Err(StartError::Serve("server stopped unexpectedly".into())),
                Ok(Err(e)) => Err(StartError::Serve(e.to_string())),
                Err(e) => Err(StartError::Serve(e.to_string())),
            };
        }
    }
    systemd::notify_stopping();
    if !shutdown::within(config.shutdown_timeout, "gRPC server", &mut server).await {
        server.abort();
        warn!("connections cut at the shutdown deadline");
    }
    lease_cancel.cancel();
    if !shutdown::within(config.lease.rpc_timeout * 2, "lease release", lease).await {
        warn!("lease release did not finish; the standby waits the lease out");
    }
    info!("coordinator stopped");
    Ok(())
}

fn spawn_primary_observer(fleet: Arc<Fleet>, cancel: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(PRIMARY_OBSERVE_INTERVAL) => {}
            }
            if let Err(e) = fleet.admit_registered_before_memberships().await {
                warn!(error = %e, "cannot admit the agents registered before memberships existed; will retry");
            }
            if let Err(e) = fleet.remember_primaries().await {
                warn!(error = %e, "cannot persist the observed primaries; will retry");
            }
        }
    });
}
