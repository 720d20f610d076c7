//! Mutual TLS for every dbfleet connection, with certificates that reload
//! without a restart.
//!
//! tonic's own TLS settings cannot be swapped at run time, so servers run
//! their own accept loop (one handshake task per connection, so a slow or
//! hostile client never blocks accepting) and feed the streams to
//! `serve_with_incoming_shutdown`; clients dial through a connector that
//! reads the current client config on every connect and checks that the
//! server's certificate carries the role the caller expects. TLS 1.3 only,
//! ring only, client certificates always required.

use crate::admission::{Admission, Admitted};
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::identity::{Identity, IdentityError, Role};
use crate::signed::{self, Signature};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs ring as the process-wide rustls provider. Call first thing in
/// every `main` and test harness: with two providers compiled in, rustls
/// refuses to pick one. Idempotent.
pub fn install_crypto_provider() {
    // A second install returns Err with the provider already in place,
    // which is exactly the state we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where a process finds its trust root and its own certificate and key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// PEM file with the dbfleet CA certificate(s) peers must chain to.
    pub ca: PathBuf,
    /// PEM file with this process's certificate (chain).
    pub cert: PathBuf,
    /// PEM file with this process's private key; must not be readable by others.
    pub key: PathBuf,
}

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A PEM file held no certificate.
    #[error("{} contains no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file held no usable private key.
    #[error("{} contains no PEM private key", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A private key readable by other users is refused.
    #[error(
        "private key {} is accessible to other users (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Our own certificate has no dbfleet identity.
    #[error("{}: {source}", path.display())]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        source: IdentityError,
    },
    /// rustls rejected the material (key does not match, bad CA, ...).
    #[error("TLS configuration rejected: {0}")]
    Rustls(String),
}

/// Reads every certificate from a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads a private key, refusing one that other users can access.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mode = fs::metadata(path).map_err(read_err)?.permissions().mode();
    if mode & 0o007 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    let bytes = fs::read(path).map_err(read_err)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::NoKey {
        path: path.to_path_buf(),
    })
}

/// Server and client configs built from one set of files.
#[derive(Debug)]
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: Identity,
    stamp: Vec<Option<(SystemTime, u64)>>,
    /// The certificate key, for [`TlsContext::sign`].
    signer: Arc<dyn rustls::sign::SigningKey>,
    /// The certificate chain, leaf first.
    chain: Vec<CertificateDer<'static>>,
    /// Checks a peer's chain against the CA and the revocation list.
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

/// The revocation list read with `paths`: `ca.crl.pem` next to the CA
/// certificate (see [`crate::revocation`]).
fn crl_path(paths: &TlsPaths) -> PathBuf {
    paths.ca.with_file_name(crate::revocation::CA_CRL)
}

/// The revocation lists in `path`; none when there is no file.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TlsError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Rustls(format!("revocation list {}: {e}", path.display())))?;
    if crls.is_empty() {
        return Err(TlsError::Rustls(format!(
            "revocation list {} holds no list: copy the CA's ca.crl.pem again",
            path.display()
        )));
    }
    Ok(crls)
}

fn stamp(paths: &TlsPaths) -> Vec<Option<(SystemTime, u64)>> {
    [&paths.ca, &paths.cert, &paths.key, &crl_path(paths)]
        .iter()
        .map(|p| {
            fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn load(paths: &TlsPaths) -> Result<Loaded, TlsError> {
    let stamp = stamp(paths);
    let roots_certs = read_certs(&paths.ca)?;
    let chain = read_certs(&paths.cert)?;
    let key = read_key(&paths.key)?;
    let identity = Identity::from_cert_der(&chain[0]).map_err(|source| TlsError::Identity {
        path: paths.cert.clone(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for c in roots_certs {
        roots
            .add(c)
            .map_err(|e| TlsError::Rustls(format!("CA file {}: {e}", paths.ca.display())))?;
    }
    let roots = Arc::new(roots);
    let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());

    // Revoked certificates are refused at the handshake, by servers and
    // clients alike.
    let crls = read_crls(&crl_path(paths))?;
    let signer = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::Rustls(format!("key file {}: {e}", paths.key.display())))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .with_crls(crls)
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(rustls_err)?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain.clone(), key)
        .map_err(rustls_err)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    client.resumption = rustls::client::Resumption::disabled();

    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
        stamp,
        signer,
        chain,
        verifier,
    })
}

/// The live TLS material of one process, swapped atomically on reload.
#[derive(Debug)]
pub struct TlsContext {
    paths: TlsPaths,
    loaded: ArcSwap<Loaded>,
    /// Outgoing connections leave from this address (see [`TlsContext::send_from`]).
    source_ip: std::sync::OnceLock<std::net::IpAddr>,
}

impl TlsContext {
    /// Loads and checks the files; fails with a message naming the file.
    pub fn load(paths: &TlsPaths) -> Result<Arc<TlsContext>, TlsError> {
        let loaded = load(paths)?;
        Ok(Arc::new(TlsContext {
            paths: paths.clone(),
            loaded: ArcSwap::from_pointee(loaded),
            source_ip: std::sync::OnceLock::new(),
        }))
    }

    /// Makes outgoing connections leave from `ip` (the address the process
    /// listens on), so that every peer, firewall rule and log sees one
    /// address per host instead of whatever the kernel picks. Ignored for an
    /// unspecified address; the first call wins.
    pub fn send_from(&self, ip: std::net::IpAddr) {
        if !ip.is_unspecified() {
            let _ = self.source_ip.set(ip);
        }
    }

    /// This process's own identity.
    pub fn identity(&self) -> Identity {
        self.loaded.load().identity.clone()
    }

    /// Signs `msg` with this process's certificate key; the signature
    /// carries the certificate chain (see [`crate::signed`]).
    pub fn sign(&self, msg: &[u8]) -> Result<Signature, String> {
        let loaded = self.loaded.load();
        let signer = loaded
            .signer
            .choose_scheme(signed::SCHEMES)
            .ok_or_else(|| {
                "the certificate key supports none of ECDSA, Ed25519 or RSA-PSS".to_string()
            })?;
        let signature = signer
            .sign(msg)
            .map_err(|e| format!("cannot sign with the certificate key: {e}"))?;
        Ok(Signature {
            scheme: u16::from(signer.scheme()),
            signature: signed::hex(&signature),
            chain: loaded.chain.iter().map(|c| signed::hex(c)).collect(),
            signed_at_unix_ms: crate::clock::unix_ms(),
        })
    }

    /// Checks that `sig` is a signature of exactly `msg` by a certificate
    /// of this fleet's CA, valid and not revoked when it was made; returns
    /// the signer's identity. Every failure says why it proves nothing.
    pub fn verify_signed(&self, msg: &[u8], sig: &Signature) -> Result<Identity, String> {
        let loaded = self.loaded.load();
        let chain = sig.chain_der()?;
        loaded
            .verifier
            .verify_client_cert(&chain[0], &chain[1..], sig.signed_at()?)
            .map_err(|e| {
                format!("its certificate is not one of the fleet's, valid when it signed: {e}")
            })?;
        let scheme = rustls::SignatureScheme::from(sig.scheme);
        let algorithms = provider()
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, a)| *a)
            .ok_or_else(|| format!("its signature scheme 0x{:04x} is not supported", sig.scheme))?;
        let leaf = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| format!("its certificate cannot be read: {e}"))?;
        let bytes = sig.signature_bytes()?;
        if !algorithms
            .iter()
            .any(|a| leaf.verify_signature(*a, msg, &bytes).is_ok())
        {
            return Err("its signature does not match what it signs".into());
        }
        Identity::from_cert_der(&chain[0]).map_err(|e| e.to_string())
    }

    /// The current server config (read per accepted connection).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loaded.load().server.clone()
    }

    /// The current client config (read per outgoing connection).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.loaded.load().client.clone()
    }

    /// Reloads when any file changed. New material must load completely and
    /// keep the same identity, otherwise the old one stays in force: a
    /// process never silently becomes someone else, and a half-written file
    /// never takes it off the network.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        if stamp(&self.paths) == self.loaded.load().stamp {
            return Ok(false);
        }
        let new = load(&self.paths)?;
        let old_id = self.identity();
        if new.identity != old_id {
            return Err(TlsError::Rustls(format!(
                "new certificate has identity {}, but this process is {}; keeping the old one",
                new.identity, old_id
            )));
        }
        self.loaded.store(Arc::new(new));
        Ok(true)
    }

    /// Polls the files every `every` until `cancel` fires.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration, cancel: CancellationToken) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(ctx) = me.upgrade() else { return };
                match ctx.reload_if_changed() {
                    Ok(true) => {
                        failures = 0;
                        info!(cert = %ctx.paths.cert.display(), "reloaded TLS certificates");
                    }
                    Ok(false) => failures = 0,
                    // A reload may race the tool writing the files: only a
                    // repeated failure is worth a warning.
                    Err(e) => {
                        failures += 1;
                        if failures >= 2 {
                            warn!(error = %e, "cannot reload TLS certificates; keeping the current ones");
                        }
                    }
                }
            }
        });
    }
}

/// A TLS connection counted by its listener's [`Admission`].
pub type AdmittedTls = Admitted<TlsStream<TcpStream>>;

/// Accepts TCP connections within `admission`'s caps and completes TLS
/// handshakes in the background, yielding only authenticated streams,
/// until `cancel` fires.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<TlsContext>,
    admission: Admission,
    cancel: CancellationToken,
) -> ReceiverStream<Result<AdmittedTls, io::Error>> {
    accept_loop(
        listener,
        move || tls.server_config(),
        Some,
        admission,
        cancel,
    )
}

/// [`tls_incoming`] for an HTTP/1.1 server (the Prometheus endpoints): the
/// same certificates, CA and required client certificate, but no ALPN, as
/// the gRPC servers' `h2` would turn away a client offering only
/// `http/1.1` (and a client offering `h2` falls back to HTTP/1.1 when
/// nothing is chosen). Each stream comes with its client's identity, so
/// the server can decide by role; a CA-signed certificate without a
/// dbfleet identity is dropped after the handshake.
pub fn tls_incoming_http1(
    listener: TcpListener,
    tls: Arc<TlsContext>,
    admission: Admission,
    cancel: CancellationToken,
) -> ReceiverStream<Result<(AdmittedTls, Identity), io::Error>> {
    let config = move || {
        let mut c = (*tls.server_config()).clone();
        c.alpn_protocols.clear();
        Arc::new(c)
    };
    let identify = |s: AdmittedTls| {
        let der = s.get_ref().get_ref().1.peer_certificates()?.first()?;
        match Identity::from_cert_der(der) {
            Ok(id) => Some((s, id)),
            Err(e) => {
                debug!(error = %e, "client certificate without a dbfleet identity");
                None
            }
        }
    };
    accept_loop(listener, config, identify, admission, cancel)
}

/// The accept loop of [`tls_incoming`] and [`tls_incoming_http1`]: one
/// handshake task per connection with the server config of the moment;
/// `finish` turns a completed handshake into what the stream yields (or
/// drops the connection).
fn accept_loop<T: Send + 'static>(
    listener: TcpListener,
    config: impl Fn() -> Arc<ServerConfig> + Send + 'static,
    finish: fn(AdmittedTls) -> Option<T>,
    admission: Admission,
    cancel: CancellationToken,
) -> ReceiverStream<Result<T, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let Some((tcp, peer, mut ticket)) = admission.accept(&listener, &cancel).await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        ticket.handshake_done();
                        if let Some(item) = finish(Admitted::new(stream, ticket)) {
                            let _ = tx.send(Ok(item)).await;
                        }
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Dials `addr` with TLS and checks the server is a `expect` (and, when
/// `name` is given, exactly that one).
pub async fn connect_tls(
    tls: &TlsContext,
    addr: &str,
    expect: Role,
    name: Option<&str>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    let server_name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let tcp = match tls.source_ip.get() {
        Some(ip) => {
            let remote = tokio::net::lookup_host(addr)
                .await?
                .find(|r| r.is_ipv4() == ip.is_ipv4())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{addr}: no address of the source's family"),
                    )
                })?;
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(std::net::SocketAddr::new(*ip, 0))?;
            socket.connect(remote).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    let _ = tcp.set_nodelay(true);
    let stream = TlsConnector::from(tls.client_config())
        .connect(server_name, tcp)
        .await?;
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "server sent no certificate",
            )
        })?;
    let id = Identity::from_cert_der(peer)
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
    if id.role != expect || name.is_some_and(|n| n != id.name) {
        let wanted = match name {
            Some(n) => Identity::new(expect, n).to_string(),
            None => format!("a {expect}"),
        };
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{addr} presented identity {id}, expected {wanted}"),
        ));
    }
    Ok(stream)
}

/// A lazily connecting gRPC channel to `addr` over mutual TLS, expecting a
/// peer of role `expect`. Every (re)connect uses the current certificates.
pub fn channel(
    tls: Arc<TlsContext>,
    addr: &str,
    expect: Role,
    connect_timeout: Duration,
) -> Channel {
    channel_checked(tls, addr, expect, None, connect_timeout)
}

/// Like [`channel`], but the peer must be exactly `identity`: a voter or
/// peer coordinator answering at the wrong address is refused.
pub fn channel_to(
    tls: Arc<TlsContext>,
    addr: &str,
    identity: &Identity,
    connect_timeout: Duration,
) -> Channel {
    channel_checked(
        tls,
        addr,
        identity.role,
        Some(identity.name.clone()),
        connect_timeout,
    )
}

fn channel_checked(
    tls: Arc<TlsContext>,
    addr: &str,
    expect: Role,
    name: Option<String>,
    connect_timeout: Duration,
) -> Channel {
    let target = addr.to_string();
    // The URI only sets :authority; the connector decides where to dial.
    let endpoint = Endpoint::from_shared(format!("http://{}", authority(addr)))
        .unwrap_or_else(|_| Endpoint::from_static("http://dbfleet.invalid"))
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_uri| {
        let tls = tls.clone();
        let target = target.clone();
        let name = name.clone();
        async move {
            let stream = tokio::time::timeout(
                connect_timeout,
                connect_tls(&tls, &target, expect, name.as_deref()),
            )
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {target} timed out"),
                )
            })??;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    }))
}

fn authority(addr: &str) -> String {
    if addr
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
    {
        addr.to_string()
    } else {
        "dbfleet.invalid".to_string()
    }
}
