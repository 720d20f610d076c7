//! Serving `/metrics`, for the agent and the coordinator alike: plain
//! HTTP, or mutual TLS (`metrics_tls = true`) with the process's own
//! certificate and CA from its `[tls]` section, reloaded like the gRPC
//! server's, a client certificate from the fleet CA required at the
//! handshake, and a role check per request. Metrics show topology,
//! replication state and load, which a fleet that keeps its gRPC behind
//! mTLS may not want readable by anyone who can reach the port.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::identity::{Identity, Role};
use crate::tls::{TlsContext, tls_incoming_http1};

/// Roles whose certificates may scrape: `viewer` (give Prometheus one:
/// reading is all it does), `operator` (a person with curl) and
/// `coordinator`. An agent certificate is refused: one database host has
/// no business reading another's, and a stolen host key reads nothing
/// more.
pub const SCRAPER_ROLES: [Role; 3] = [Role::Viewer, Role::Operator, Role::Coordinator];

/// Who is on the other end of a metrics connection: the identity of its
/// client certificate (`None` only for the listener's own address).
#[derive(Debug, Clone)]
pub struct Peer(pub Option<Identity>);

/// Authenticated TLS streams with their clients' identities (from
/// [`tls_incoming_http1`]) as an axum listener whose
/// address is the [`Peer`], so that requests can be authorized by role.
pub struct TlsListener<S> {
    incoming: S,
}

impl<S> TlsListener<S> {
    /// Wraps `incoming`.
    pub fn new(incoming: S) -> TlsListener<S> {
        TlsListener { incoming }
    }
}

impl<S, Io> Listener for TlsListener<S>
where
    S: Stream<Item = Result<(Io, Identity), io::Error>> + Unpin + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = Io;
    type Addr = Peer;

    async fn accept(&mut self) -> (Io, Peer) {
        loop {
            match self.incoming.next().await {
                Some(Ok((io, identity))) => return (io, Peer(Some(identity))),
                // the accept loop logs and retries itself; it yields no errors
                Some(Err(_)) => continue,
                // the accept loop ended: the agent is shutting down
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer(None))
    }
}

impl<S> Connected<IncomingStream<'_, TlsListener<S>>> for Peer
where
    TlsListener<S>: Listener<Addr = Peer>,
{
    fn connect_info(stream: IncomingStream<'_, TlsListener<S>>) -> Peer {
        stream.remote_addr().clone()
    }
}

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

/// Serves `app` on `listener` until `cancel`: over mutual TLS with `tls`
/// (only [`SCRAPER_ROLES`] may read), plain HTTP without. Logs why it
/// stopped, if not asked to.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsContext>>,
    cancel: CancellationToken,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let shutdown = cancel.clone().cancelled_owned();
    let served = match tls {
        Some(tls) => {
            info!(?addr, "serving /metrics over mutual TLS");
            let incoming = tls_incoming_http1(listener, tls, cancel);
            let app = app.route_layer(axum::middleware::from_fn(require_scraper));
            axum::serve(
                TlsListener::new(incoming),
                app.into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Err(e) = served {
        warn!(?addr, error = %e, "metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_operators_and_coordinators_scrape_agents_do_not() {
        for role in Role::ALL {
            let peer = Peer(Some(Identity::new(role, "x")));
            assert_eq!(may_scrape(&peer), role != Role::Agent, "{role}");
        }
        assert!(!may_scrape(&Peer(None)));
    }
}
