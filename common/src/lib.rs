//! Infrastructure the three dbfleet binaries share, so none of them repeats
//! another: mTLS with certificate identities and per-RPC authorization,
//! certificate issuance, config and secret loading, telemetry, shutdown,
//! systemd notification and reconnect backoff. No domain logic lives here.

pub mod admission;
pub mod authz;
pub mod backoff;
pub mod certs;
pub mod clock;
pub mod config;
pub mod durable;
pub mod gtid;
pub mod gtid_set;
pub mod gtid_state;
pub mod identity;
pub mod metrics_http;
#[cfg(feature = "proptest")]
pub mod mutation;
pub mod revocation;
pub mod seal;
pub mod shutdown;
pub mod signed;
pub mod systemd;
pub mod telemetry;
pub mod tls;
