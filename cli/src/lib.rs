//! The `dbfleet` operator CLI as a library: talking to coordinators,
//! rendering status (once, refreshed, or as `top`), issuing certificates,
//! and the local sandbox fleet.
//!
//! The integration tests start their fleets through [`sandbox`], so what a
//! newcomer runs and what the tests run is the same code.

pub mod backup;
pub mod cert;
pub mod client;
pub mod failover;
pub mod ha;
pub mod sandbox;
pub mod status;
pub mod top;
pub mod watch;
