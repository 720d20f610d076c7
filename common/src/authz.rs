//! Per-RPC authorization from the caller's certificate, deny by default.
//!
//! The layer sits outside every service of a server. It reads the verified
//! peer certificate that tonic attached to the request, derives the
//! [`Identity`], and lets the call through only when the server's policy
//! lists the caller's role for exactly that method path. A path the policy
//! does not know is refused, so a new RPC is closed until someone decides
//! who may call it. On top of the roles, a server may name the only
//! certificates of a role it accepts at all ([`AllowedNames`]): an agent
//! obeys only the coordinators its configuration names, a coordinator
//! replicates only from its configured peer, so a stray certificate of the
//! right role does nothing. Handlers find the identity in the request
//! extensions.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::identity::{Identity, Role};

/// Maps a gRPC method path (`/pkg.Service/Method`) to the roles allowed to
/// call it; `None` means nobody may.
pub type Policy = fn(&str) -> Option<&'static [Role]>;

/// The only certificate names of some roles a server accepts; a role it
/// does not restrict: any name of that role. Shared, so that a reloaded
/// configuration applies from the next call on.
#[derive(Debug, Clone, Default)]
pub struct AllowedNames(Arc<RwLock<HashMap<Role, BTreeSet<String>>>>);

impl AllowedNames {
    /// Accepts only `names` of role `role` from now on.
    pub fn only(&self, role: Role, names: impl IntoIterator<Item = String>) {
        let names = names.into_iter().collect();
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(role, names);
    }

    /// Whether `identity` may call at all.
    pub fn allows(&self, identity: &Identity) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&identity.role)
            .is_none_or(|names| names.contains(&identity.name))
    }
}

/// Installs [`Authorize`] around a server's routes.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    policy: Policy,
    names: AllowedNames,
}

impl AuthorizeLayer {
    /// Authorizes every call against `policy`, any name of a role.
    pub fn new(policy: Policy) -> AuthorizeLayer {
        AuthorizeLayer {
            policy,
            names: AllowedNames::default(),
        }
    }

    /// Also only the names `names` allows.
    pub fn with_names(self, names: AllowedNames) -> AuthorizeLayer {
        AuthorizeLayer { names, ..self }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            policy: self.policy,
            names: self.names.clone(),
        }
    }
}

/// The authorizing service; see the module docs.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: Policy,
    names: AllowedNames,
}

/// Decides one call: the caller's identity when allowed, the refusal otherwise.
pub fn decide(
    policy: Policy,
    names: &AllowedNames,
    path: &str,
    peer_cert: Option<&[u8]>,
) -> Result<Identity, tonic::Status> {
    let der = peer_cert.ok_or_else(|| {
        tonic::Status::unauthenticated("no client certificate on this connection")
    })?;
    let identity = Identity::from_cert_der(der)
        .map_err(|e| tonic::Status::unauthenticated(format!("client certificate: {e}")))?;
    match policy(path) {
        Some(roles) if roles.contains(&identity.role) && !names.allows(&identity) => {
            Err(tonic::Status::permission_denied(format!(
                "{identity} is not a {} this server's configuration names",
                identity.role
            )))
        }
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
        match decide(self.policy, &self.names, req.uri().path(), leaf) {
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
