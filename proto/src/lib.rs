//! The dbfleet.v1 protocol, shared by agent, coordinator and CLI.
//!
//! `pb` is the generated code; `model` holds the domain types that receivers
//! validate messages into, so nothing past the RPC boundary sees an unchecked
//! message. Keep this crate slim: no I/O, no policy.

pub mod lease;
pub mod model;
pub mod mysql_tls;
pub mod privileges;

/// Generated protobuf and gRPC code for `dbfleet.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("dbfleet.v1");
}
