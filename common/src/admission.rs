//! Bounds on the connections a server holds, so that no peer, and no crowd
//! of silent sockets, can use up its file descriptors or its handshake
//! work: a cap on connections in all and per source address, and a
//! smaller one on handshakes in progress (a socket that connects and says
//! nothing holds a handshake slot until the handshake times out). A
//! connection over a cap is closed at once; the refusals are logged at
//! most once per interval per reason, with their count, so a flood cannot
//! fill the disk with log lines either.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::warn;

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once, in all.
    pub connections: usize,
    /// Connections held at once from one source address.
    pub per_source: usize,
    /// Handshakes in progress at once, in all.
    pub handshakes: usize,
    /// Handshakes in progress at once from one source address.
    pub handshakes_per_source: usize,
    /// HTTP/2 streams open at once on one connection (gRPC listeners).
    pub streams_per_connection: u32,
}

impl Limits {
    /// An agent's gRPC listener: its coordinators (a connection or two
    /// each) and operators' tools.
    pub const AGENT: Limits = Limits {
        connections: 256,
        per_source: 32,
        handshakes: 64,
        handshakes_per_source: 8,
        streams_per_connection: 64,
    };
    /// A coordinator's gRPC listener: one connection per agent (ten
    /// thousand of them), the peer, operators.
    pub const COORDINATOR: Limits = Limits {
        connections: 20_000,
        per_source: 64,
        handshakes: 512,
        handshakes_per_source: 16,
        streams_per_connection: 64,
    };
    /// A `/metrics` listener: a few scrapers.
    pub const METRICS: Limits = Limits {
        connections: 64,
        per_source: 8,
        handshakes: 16,
        handshakes_per_source: 4,
        streams_per_connection: 1,
    };
}

/// How long a gRPC connection lives before the server asks the client to
/// reconnect (`GOAWAY`), and how long its streams then have to finish: no
/// connection, busy or idle, is held forever. A report stream simply
/// reconnects.
const CONNECTION_AGE: Duration = Duration::from_secs(3600);
const CONNECTION_AGE_GRACE: Duration = Duration::from_secs(120);
/// A peer that does not answer an HTTP/2 ping within this is gone.
const KEEPALIVE: Duration = Duration::from_secs(5);

impl Limits {
    /// A gRPC server with these limits on every connection: streams per
    /// connection, keepalive, connection age.
    pub fn grpc_server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .max_concurrent_streams(self.streams_per_connection)
            .http2_keepalive_interval(Some(KEEPALIVE))
            .http2_keepalive_timeout(Some(KEEPALIVE))
            .max_connection_age(CONNECTION_AGE)
            .max_connection_age_grace(CONNECTION_AGE_GRACE)
    }
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// [`Limits::connections`] reached.
    Connections,
    /// [`Limits::per_source`] reached for its address.
    PerSource,
    /// [`Limits::handshakes`] reached.
    Handshakes,
    /// [`Limits::handshakes_per_source`] reached for its address.
    HandshakesPerSource,
}

impl Refusal {
    fn describe(self, limits: &Limits) -> String {
        match self {
            Refusal::Connections => format!("{} connections held in all", limits.connections),
            Refusal::PerSource => {
                format!("{} connections held from one address", limits.per_source)
            }
            Refusal::Handshakes => format!("{} handshakes in progress in all", limits.handshakes),
            Refusal::HandshakesPerSource => format!(
                "{} handshakes in progress from one address",
                limits.handshakes_per_source
            ),
        }
    }
}

/// How often refusals of one reason are logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Counts {
    connections: usize,
    handshakes: usize,
    sources: HashMap<IpAddr, (usize, usize)>,
    /// Per reason: when last logged, and refusals since.
    refused: HashMap<Refusal, (Option<Instant>, u64, Option<IpAddr>)>,
}

/// The connections one listener holds; clones share them.
#[derive(Debug, Clone)]
pub struct Admission {
    name: &'static str,
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    /// Counts the connections of listener `name` (for the log) against
    /// `limits`.
    pub fn new(name: &'static str, limits: Limits) -> Admission {
        Admission {
            name,
            limits,
            counts: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `source`, in its handshake: `None`
    /// (and the refusal counted for the log) when a cap is reached.
    pub fn admit(&self, source: IpAddr) -> Option<Ticket> {
        let mut c = self.lock();
        let l = &self.limits;
        let (held, shaking) = c.sources.get(&source).copied().unwrap_or((0, 0));
        let refusal = if c.connections >= l.connections {
            Some(Refusal::Connections)
        } else if held >= l.per_source {
            Some(Refusal::PerSource)
        } else if c.handshakes >= l.handshakes {
            Some(Refusal::Handshakes)
        } else if shaking >= l.handshakes_per_source {
            Some(Refusal::HandshakesPerSource)
        } else {
            None
        };
        if let Some(r) = refusal {
            let now = Instant::now();
            let entry = c.refused.entry(r).or_insert((None, 0, None));
            entry.1 += 1;
            entry.2 = Some(source);
            if entry
                .0
                .is_none_or(|last| now.duration_since(last) >= LOG_EVERY)
            {
                let (count, last_source) = (entry.1, entry.2);
                *entry = (Some(now), 0, None);
                drop(c);
                warn!(
                    listener = self.name,
                    refused = count,
                    last_source = %last_source.map_or_else(String::new, |s| s.to_string()),
                    "connections closed at once: {} (logged at most every {LOG_EVERY:?})",
                    r.describe(l)
                );
            }
            return None;
        }
        c.connections += 1;
        c.handshakes += 1;
        let e = c.sources.entry(source).or_insert((0, 0));
        e.0 += 1;
        e.1 += 1;
        Some(Ticket {
            admission: self.clone(),
            source,
            handshaking: true,
        })
    }

    /// The next connection on `listener` within the caps (one over them
    /// is closed at once); `None` once `cancel` fires.
    pub async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Option<(tokio::net::TcpStream, std::net::SocketAddr, Ticket)> {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return None,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    if let Some(ticket) = self.admit(peer.ip()) {
                        return Some((tcp, peer, ticket));
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // briefly instead of spinning.
                    warn!(listener = self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// (connections, handshakes) held now.
    pub fn held(&self) -> (usize, usize) {
        let c = self.lock();
        (c.connections, c.handshakes)
    }
}

/// One admitted connection, counted until dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Admission,
    source: IpAddr,
    handshaking: bool,
}

impl Ticket {
    /// The handshake is over: its slot is free for another.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            let mut c = self.admission.lock();
            c.handshakes -= 1;
            if let Some(e) = c.sources.get_mut(&self.source) {
                e.1 -= 1;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.handshake_done();
        let mut c = self.admission.lock();
        c.connections -= 1;
        if let Some(e) = c.sources.get_mut(&self.source) {
            e.0 -= 1;
            if e.0 == 0 {
                c.sources.remove(&self.source);
            }
        }
    }
}

/// A stream that holds its [`Ticket`] as long as it lives.
#[derive(Debug)]
pub struct Admitted<S> {
    inner: S,
    _ticket: Ticket,
}

impl<S> Admitted<S> {
    /// `inner`, counted by `ticket`.
    pub fn new(inner: S, ticket: Ticket) -> Admitted<S> {
        Admitted {
            inner,
            _ticket: ticket,
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Admitted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn each_cap_refuses_the_connection_over_it_and_a_dropped_ticket_frees_its_slot() {
        let limits = Limits {
            connections: 4,
            per_source: 3,
            handshakes: 3,
            handshakes_per_source: 2,
            streams_per_connection: 1,
        };
        let a = Admission::new("test", limits);
        let mut one = a.admit(ip(1)).unwrap();
        let two = a.admit(ip(1)).unwrap();
        assert!(a.admit(ip(1)).is_none(), "two handshakes from one address");
        one.handshake_done();
        let three = a.admit(ip(1)).unwrap();
        assert!(
            a.admit(ip(1)).is_none(),
            "three connections from one address"
        );
        let four = a.admit(ip(2)).unwrap();
        assert!(a.admit(ip(3)).is_none(), "three handshakes in all");
        drop(two);
        drop(three);
        let mut five = a.admit(ip(3)).unwrap();
        five.handshake_done();
        let mut six = a.admit(ip(4)).unwrap();
        six.handshake_done();
        assert_eq!(a.held(), (4, 1));
        assert!(a.admit(ip(5)).is_none(), "four connections in all");
        drop((one, four, five, six));
        assert_eq!(a.held(), (0, 0));
        assert!(a.lock().sources.is_empty());
    }
}
