//! Per-RPC authorization from the caller's certificate, deny by default.
//!
//! The layer sits outside every service of a server. It reads the verified
//! peer certificate that tonic attached to the request, derives the
//! [`Identity`], and lets the call through only when the server's policy
//! lists the caller's role for exactly that method path. A path the policy
//! does not know is refused, so a new RPC is closed until someone decides
//! who may call it. Handlers find the identity in the request extensions.

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::identity::{Identity, Role};

/// Maps a gRPC method path (`/pkg.Service/Method`) to the roles allowed to
/// call it; `None` means nobody may.
pub type Policy = fn(&str) -> Option<&'static [Role]>;

/// Installs [`Authorize`] around a server's routes.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeLayer {
    policy: Policy,
}

impl AuthorizeLayer {
    /// Authorizes every call against `policy`.
    pub fn new(policy: Policy) -> AuthorizeLayer {
        AuthorizeLayer { policy }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            policy: self.policy,
        }
    }
}

/// The authorizing service; see the module docs.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Policy,
}

/// Decides one call: the caller's identity when allowed, the refusal otherwise.
pub fn decide(
    policy: Policy,
    path: &str,
    peer_cert: Option<&[u8]>,
) -> Result<Identity, tonic::Status> {
    let der = peer_cert.ok_or_else(|| {
        tonic::Status::unauthenticated("no client certificate on this connection")
    })?;
    let identity = Identity::from_cert_der(der)
        .map_err(|e| tonic::Status::unauthenticated(format!("client certificate: {e}")))?;
    match policy(path) {
        Some(roles) if roles.contains(&identity.role) => Ok(identity),
        Some(_) => Err(tonic::Status::permission_denied(format!(
            "{identity} may not call {path}"
        ))),
        None => Err(tonic::Status::permission_denied(format!(
            "{path} is not an RPC this server allows"
        ))),
    }
}

impl<S, B> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        match decide(self.policy, req.uri().path(), leaf) {
            Ok(identity) => {
                req.extensions_mut().insert(identity);
                Either::Right(self.inner.call(req))
            }
            Err(status) => {
                tracing::info!(
                    path = req.uri().path(),
                    reason = status.message(),
                    "call refused"
                );
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}
