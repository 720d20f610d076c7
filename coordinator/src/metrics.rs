//! The coordinator's Prometheus endpoint: role, epoch, lease time left and
//! op-log position and lag, read from the HA state at every scrape.

use std::net::SocketAddr;
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
use tracing::warn;

use crate::ha::Ha;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

const ROLES: [&str; 4] = ["active", "active-degraded", "candidate", "standby"];

struct Metrics {
    registry: Registry,
    role: Family<RoleLabel, Gauge>,
    epoch: Gauge,
    lease_remaining: Gauge<f64, AtomicU64>,
    applied: Gauge,
    lag: Gauge,
    lost_found: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dbfleet_coordinator");
        let role = Family::<RoleLabel, Gauge>::default();
        registry.register(
            "role",
            "1 for this coordinator's current lease role",
            role.clone(),
        );
        let epoch = Gauge::default();
        registry.register(
            "epoch_term",
            "Term of the epoch held (0 when holding none)",
            epoch.clone(),
        );
        let lease_remaining = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lease_remaining_seconds",
            "Lease time left (0 when holding none)",
            lease_remaining.clone(),
        );
        let applied = Gauge::default();
        registry.register(
            "oplog_applied_seq",
            "Last desired-state op applied here",
            applied.clone(),
        );
        let lag = Gauge::default();
        registry.register(
            "oplog_lag",
            "Ops the standby has not acknowledged (on the active) or not applied (on the standby)",
            lag.clone(),
        );
        let lost_found = Gauge::default();
        registry.register(
            "oplog_lost_found",
            "Diverged ops set aside for the operator",
            lost_found.clone(),
        );
        Metrics {
            registry,
            role,
            epoch,
            lease_remaining,
            applied,
            lag,
            lost_found,
        }
    }

    fn render(&self, ha: &Ha) -> String {
        let s = ha.status();
        for r in ROLES {
            self.role
                .get_or_create(&RoleLabel {
                    role: r.to_string(),
                })
                .set(i64::from(s.role == r));
        }
        self.epoch
            .set(s.epoch.as_ref().map_or(0, |e| e.term as i64));
        self.lease_remaining
            .set(s.lease_remaining_ms.unwrap_or(0) as f64 / 1000.0);
        self.applied.set(s.applied_seq as i64);
        self.lag.set(ha.oplog_lag() as i64);
        self.lost_found.set(s.lost_and_found as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

async fn scrape(State((metrics, ha)): State<(Arc<Metrics>, Arc<Ha>)>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(&ha),
    )
}

/// Serves `/metrics` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, ha: Arc<Ha>, cancel: CancellationToken) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state((Arc::new(Metrics::new()), ha));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        warn!(?addr, error = %e, "metrics endpoint stopped");
    }
}
