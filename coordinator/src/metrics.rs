//! The coordinator's Prometheus endpoint: its lease role, epoch and
//! op-log; the fleet as it derives it (clusters by health, members by role
//! and problem, agents connected), which both coordinators show alike; and
//! what it counted (operations by outcome, detections that did or did not
//! lead to a failover, report processing time).

mod counters;
mod fleet;

pub use counters::{Counters, Detection};
pub use fleet::{Health, health, primary_up};

use dbfleet_common::tls::TlsContext;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::failover::Failovers;
use crate::fleet::Fleet;
use crate::ha::Ha;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

const ROLES: [&str; 4] = ["active", "active-degraded", "candidate", "standby"];

/// The lease and op-log families, read from the HA state.
fn register_ha(registry: &mut Registry, ha: &Ha) {
    let s = ha.status();
    let role = Family::<RoleLabel, Gauge>::default();
    for r in ROLES {
        role.get_or_create(&RoleLabel {
            role: r.to_string(),
        })
        .set(i64::from(s.role == r));
    }
    registry.register("role", "1 for this coordinator's current lease role", role);
    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    registry.register(
        "epoch_term",
        "Term of the epoch held (0 when holding none)",
        gauge(s.epoch.as_ref().map_or(0, |e| e.term as i64)),
    );
    let lease = Gauge::<f64, AtomicU64>::default();
    lease.set(s.lease_remaining_ms.unwrap_or(0) as f64 / 1000.0);
    registry.register(
        "lease_remaining_seconds",
        "Lease time left (0 when holding none)",
        lease,
    );
    registry.register(
        "oplog_applied_seq",
        "Last desired-state op applied here",
        gauge(s.applied_seq as i64),
    );
    registry.register(
        "oplog_lag",
        "Ops the standby has not acknowledged (on the active) or not applied (on the standby)",
        gauge(ha.oplog_lag() as i64),
    );
    registry.register(
        "oplog_lost_found",
        "Diverged ops set aside for the operator",
        gauge(s.lost_and_found as i64),
    );
}

/// One scrape's text: every family built from the state at this instant
/// (the counters keep their values across scrapes).
fn render(fleet: &Fleet, failovers: &Failovers) -> String {
    let mut registry = Registry::with_prefix("dbfleet_coordinator");
    register_ha(&mut registry, fleet.ha());
    let views = crate::service::control::full_views(fleet, failovers, None);
    fleet::register(&mut registry, &views, &fleet.agent_views());
    fleet.counters().register(&mut registry);
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

async fn scrape(
    State((fleet, failovers)): State<(Arc<Fleet>, Arc<Failovers>)>,
) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&fleet, &failovers),
    )
}

/// Serves `/metrics` on `listener` until `cancel`: over mutual TLS with
/// `tls` (the coordinator's own certificates; only viewer, operator and
/// coordinator certificates may scrape), plain HTTP without.
pub async fn serve(
    listener: TcpListener,
    fleet: Arc<Fleet>,
    failovers: Arc<Failovers>,
    tls: Option<Arc<TlsContext>>,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state((fleet, failovers));
    dbfleet_common::metrics_http::serve(listener, app, tls, cancel).await;
}
