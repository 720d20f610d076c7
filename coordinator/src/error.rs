//! The coordinator's errors: why it cannot start, and why an RPC failed
//! (mapped to gRPC codes by an exhaustive match, so a new variant forces a
//! decision about what the caller should do).

use dbfleet_common::config::ConfigError;
use dbfleet_common::tls::TlsError;
use dbfleet_proto::lease::ACTIVE_ADDRESS_METADATA;
use dbfleet_proto::model::ProtocolError;

use crate::ha::KnownActive;

use crate::store::StoreError;

/// Why the coordinator cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificates are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The certificate does not match the configured id.
    #[error(
        "certificate identity is {actual} but the config says id = {expected:?}; issue a certificate for dbfleet://coordinator/{expected}"
    )]
    WrongIdentity {
        /// The configured id.
        expected: String,
        /// What the certificate says.
        actual: String,
    },
    /// The lease cannot start (e.g. an invalid voter list).
    #[error("lease: {0}")]
    Lease(String),
    /// The store cannot be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(String),
    /// The audit log cannot be opened.
    #[error("cannot open the audit log: {0}")]
    Audit(String),
}

/// Why one RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The message failed validation.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// An agent reported about a host other than its own.
    #[error("agent {identity} may only report about itself, not about {claimed:?}")]
    ForeignHost {
        /// The certificate name.
        identity: String,
        /// The host in the report.
        claimed: String,
    },
    /// A durable write failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such agent.
    #[error("no agent named {0} is registered")]
    UnknownAgent(String),
    /// The coordinator is shutting down.
    #[error("coordinator is shutting down")]
    ShuttingDown,
    /// A write reached a coordinator that is not the active one.
    #[error("coordinator {id} is not the active coordinator{}", match active {
        Some(a) => format!("; the active is {} at {}", a.id, a.address),
        None => "; no active coordinator is known right now, retry shortly".to_string(),
    })]
    NotActive {
        /// This coordinator.
        id: String,
        /// The active, when known.
        active: Option<KnownActive>,
    },
    /// The active took over without the previous active's last changes.
    #[error(
        "this coordinator is active-degraded: it has desired state up to op {applied} but the previous \
         active committed up to op {required}; bring the previous active back so it catches up, or run \
         `dbfleet coordinators accept-gap` to accept losing those changes"
    )]
    Degraded {
        /// Op-log end here.
        applied: u64,
        /// What the voters reported as committed.
        required: u64,
    },
    /// The change is durable on this coordinator but could not be
    /// confirmed; it may or may not survive a takeover.
    #[error("outcome unknown: {0}; check with `dbfleet status` before retrying")]
    OutcomeUnknown(String),
    /// A voter-list change cannot be made safely now.
    #[error("voter change refused: {0}")]
    VoterChange(String),
    /// A failover, switchover or control change cannot be done as asked.
    #[error("{0}")]
    Refused(String),
    /// No backup with this id in any cluster's catalog.
    #[error("no backup {0} in the catalog; `dbfleet backup list` shows them")]
    UnknownBackup(String),
    /// Another failover or switchover of the cluster is running.
    #[error("{0}; wait for it (`dbfleet events`) and retry")]
    OperationInProgress(String),
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        let msg = e.to_string();
        match e {
            ServiceError::Protocol(p) => p.into(),
            ServiceError::ForeignHost { .. } => tonic::Status::permission_denied(msg),
            ServiceError::Store(_) => tonic::Status::unavailable(msg),
            ServiceError::UnknownAgent(_) => tonic::Status::not_found(msg),
            ServiceError::ShuttingDown => tonic::Status::unavailable(msg),
            ServiceError::NotActive { active, .. } => {
                let mut status = tonic::Status::failed_precondition(msg);
                if let Some(v) =
                    active.and_then(|a| tonic::metadata::MetadataValue::try_from(a.address).ok())
                {
                    status.metadata_mut().insert(ACTIVE_ADDRESS_METADATA, v);
                }
                status
            }
            ServiceError::Degraded { .. } => tonic::Status::failed_precondition(msg),
            ServiceError::VoterChange(_) => tonic::Status::failed_precondition(msg),
            ServiceError::OutcomeUnknown(_) => tonic::Status::unknown(msg),
            ServiceError::Refused(_) => tonic::Status::failed_precondition(msg),
            ServiceError::OperationInProgress(_) => tonic::Status::aborted(msg),
            ServiceError::UnknownBackup(_) => tonic::Status::not_found(msg),
        }
    }
}
