//! Serving `/metrics`, for the agent and the coordinator alike: plain
//! HTTP, or mutual TLS (`metrics_tls = true`) with the process's own
//! certificate and CA from its `[tls]` section, reloaded like the gRPC
//! server's, a client certificate from the fleet CA required at the
//! handshake, and a role check per request. Metrics show topology,
//! replication state and load, which a fleet that keeps its gRPC behind
//! mTLS may not want readable by anyone who can reach the port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::admission::{Admission, Admitted, Limits};
use crate::identity::{Identity, Role};
use crate::tls::{TlsContext, tls_incoming_http1};

/// Roles whose certificates may scrape: `viewer` (give Prometheus one:
/// reading is all it does), `operator` (a person with curl) and
/// `coordinator`. An agent certificate is refused: one database host has
/// no business reading another's, and a stolen host key reads nothing
/// more.
pub const SCRAPER_ROLES: [Role; 3] = [Role::Viewer, Role::Operator, Role::Coordinator];

/// Who is on the other end of a metrics connection over mutual TLS: the
/// identity of its client certificate.
#[derive(Debug, Clone)]
pub struct Peer(pub Option<Identity>);

/// Whether `peer` may scrape.
pub fn may_scrape(peer: &Peer) -> bool {
    peer.0
        .as_ref()
        .is_some_and(|id| SCRAPER_ROLES.contains(&id.role))
}

/// Lets scrapers through and answers 403 to any other certificate, naming
/// the roles that may scrape.
pub async fn require_scraper(
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if may_scrape(&peer) {
        return next.run(request).await;
    }
    let who = peer
        .0
        .as_ref()
        .map_or_else(|| "a client without identity".to_string(), Identity::uri);
    debug!(client = who, "metrics scrape refused");
    (
        StatusCode::FORBIDDEN,
        format!(
            "{who} may not read metrics: scrape with a viewer, operator or coordinator certificate (dbfleet cert issue --role viewer)\n"
        ),
    )
        .into_response()
}

/// How long a client may take to send a request's headers: a slowloris
/// trickles them to hold the connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may live: a scraper reconnects; a client that
/// holds a connection open for nothing does not keep it.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Serves `app` on `listener` until `cancel`: over mutual TLS with `tls`
/// (only [`SCRAPER_ROLES`] may read), plain HTTP without. Either way the
/// connections are capped ([`Limits::METRICS`]), headers must arrive within
/// [`HEADER_TIMEOUT`] and a connection lives at most
/// [`CONNECTION_LIFETIME`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsContext>>,
    cancel: CancellationToken,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let admission = Admission::new("metrics", Limits::METRICS);
    match tls {
        Some(tls) => {
            info!(?addr, "serving /metrics over mutual TLS");
            let app = app.route_layer(axum::middleware::from_fn(require_scraper));
            let mut incoming = tls_incoming_http1(listener, tls, admission, cancel.clone());
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = incoming.next() => n,
                };
                match next {
                    Some(Ok((io, identity))) => {
                        let app = app
                            .clone()
                            .layer(Extension(ConnectInfo(Peer(Some(identity)))));
                        tokio::spawn(serve_connection(io, app, cancel.clone()));
                    }
                    Some(Err(_)) => continue,
                    None => return,
                }
            }
        }
        None => loop {
            let Some((tcp, _, mut ticket)) = admission.accept(&listener, &cancel).await else {
                return;
            };
            ticket.handshake_done();
            tokio::spawn(serve_connection(
                Admitted::new(tcp, ticket),
                app.clone(),
                cancel.clone(),
            ));
        },
    }
}

/// One HTTP/1.1 connection, within [`HEADER_TIMEOUT`] and
/// [`CONNECTION_LIFETIME`].
async fn serve_connection<I>(io: I, app: Router, cancel: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::select! {
        _ = cancel.cancelled() => {}
        served = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {
            if let Ok(Err(e)) = served {
                debug!(error = %e, "metrics connection ended");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_operators_and_coordinators_scrape_agents_and_mysqlds_do_not() {
        for role in Role::ALL {
            let peer = Peer(Some(Identity::new(role, "x")));
            assert_eq!(
                may_scrape(&peer),
                !matches!(role, Role::Agent | Role::Mysql),
                "{role}"
            );
        }
        assert!(!may_scrape(&Peer(None)));
    }
}
