//! Conversions between the lease protocol's domain types
//! (`dbfleet-lease`) and their wire form, validated on receipt like every
//! other message.

use std::time::Duration;

pub use dbfleet_lease::millis;
use dbfleet_lease::{Epoch, HolderId, RejectReason, Timing, VoterReply, VoterRequest, VoterSet};

use crate::model::ProtocolError;
use crate::pb;

/// Metadata key of an `ABORTED` command reply: the agent's promised epoch.
pub const PROMISED_EPOCH_METADATA: &str = "dbfleet-promised-epoch";
/// Metadata key of a `FAILED_PRECONDITION` write reply: where the active is.
pub const ACTIVE_ADDRESS_METADATA: &str = "dbfleet-active-address";

impl From<Epoch> for pb::Epoch {
    fn from(e: Epoch) -> Self {
        pb::Epoch {
            term: e.term,
            coordinator: e.coordinator,
        }
    }
}

/// A required epoch field.
pub fn epoch_field(field: &'static str, e: Option<pb::Epoch>) -> Result<Epoch, ProtocolError> {
    let e = e.ok_or(ProtocolError::Missing(field))?;
    Ok(Epoch {
        term: e.term,
        coordinator: e.coordinator,
    })
}

/// An optional epoch field (absent = none).
pub fn optional_epoch(e: Option<pb::Epoch>) -> Option<Epoch> {
    e.map(|e| Epoch {
        term: e.term,
        coordinator: e.coordinator,
    })
}

impl From<HolderId> for pb::HolderId {
    fn from(h: HolderId) -> Self {
        pb::HolderId {
            coordinator: h.coordinator,
            incarnation: h.incarnation,
        }
    }
}

/// A required holder field.
pub fn holder_field(
    field: &'static str,
    h: Option<pb::HolderId>,
) -> Result<HolderId, ProtocolError> {
    let h = h.ok_or(ProtocolError::Missing(field))?;
    if h.coordinator.is_empty() {
        return Err(ProtocolError::Missing("holder.coordinator"));
    }
    Ok(HolderId {
        coordinator: h.coordinator,
        incarnation: h.incarnation,
    })
}

impl From<Timing> for pb::LeaseTiming {
    fn from(t: Timing) -> Self {
        pb::LeaseTiming {
            lease_ms: millis(t.lease),
            renew_interval_ms: millis(t.renew_interval),
            rpc_timeout_ms: millis(t.rpc_timeout),
            drift_ppm: t.drift_ppm,
            margin_ms: millis(t.margin),
        }
    }
}

fn timing_field(t: Option<pb::LeaseTiming>) -> Result<Timing, ProtocolError> {
    let t = t.ok_or(ProtocolError::Missing("timing"))?;
    let timing = Timing {
        lease: Duration::from_millis(t.lease_ms),
        renew_interval: Duration::from_millis(t.renew_interval_ms),
        rpc_timeout: Duration::from_millis(t.rpc_timeout_ms),
        drift_ppm: t.drift_ppm,
        margin: Duration::from_millis(t.margin_ms),
    };
    timing
        .validate()
        .map_err(|e| ProtocolError::invalid("timing", e.to_string()))?;
    Ok(timing)
}

/// Builds the wire form of a voter request.
pub fn vote_request(req: VoterRequest) -> pb::VoteRequest {
    match req {
        VoterRequest::Prepare {
            epoch,
            holder,
            timing,
            voter_config_version,
        } => pb::VoteRequest {
            epoch: Some(epoch.into()),
            holder: Some(holder.into()),
            kind: Some(pb::vote_request::Kind::Prepare(pb::Prepare {
                timing: Some(timing.into()),
                voter_config_version,
            })),
        },
        VoterRequest::Renew {
            epoch,
            holder,
            timing,
            voter_config_version,
            committed_seq,
        } => pb::VoteRequest {
            epoch: Some(epoch.into()),
            holder: Some(holder.into()),
            kind: Some(pb::vote_request::Kind::Renew(pb::Renew {
                timing: Some(timing.into()),
                voter_config_version,
                committed_seq,
            })),
        },
        VoterRequest::Release { epoch, holder } => pb::VoteRequest {
            epoch: Some(epoch.into()),
            holder: Some(holder.into()),
            kind: Some(pb::vote_request::Kind::Release(pb::Release {})),
        },
    }
}

impl TryFrom<pb::VoteRequest> for VoterRequest {
    type Error = ProtocolError;

    fn try_from(m: pb::VoteRequest) -> Result<Self, Self::Error> {
        let epoch = epoch_field("epoch", m.epoch)?;
        let holder = holder_field("holder", m.holder)?;
        if epoch.coordinator != holder.coordinator {
            return Err(ProtocolError::invalid(
                "epoch.coordinator",
                "must be the holder's coordinator id",
            ));
        }
        match m.kind.ok_or(ProtocolError::Missing("kind"))? {
            pb::vote_request::Kind::Prepare(p) => Ok(VoterRequest::Prepare {
                epoch,
                holder,
                timing: timing_field(p.timing)?,
                voter_config_version: p.voter_config_version,
            }),
            pb::vote_request::Kind::Renew(r) => Ok(VoterRequest::Renew {
                epoch,
                holder,
                timing: timing_field(r.timing)?,
                voter_config_version: r.voter_config_version,
                committed_seq: r.committed_seq,
            }),
            pb::vote_request::Kind::Release(_) => Ok(VoterRequest::Release { epoch, holder }),
        }
    }
}

impl From<VoterReply> for pb::VoteReply {
    fn from(r: VoterReply) -> Self {
        use pb::vote_reply::Kind;
        let kind = match r {
            VoterReply::Promised {
                epoch,
                committed_seq,
            } => Kind::Promised(pb::Promised {
                epoch: Some(epoch.into()),
                committed_seq,
            }),
            VoterReply::Renewed { epoch } => Kind::Renewed(pb::Renewed {
                epoch: Some(epoch.into()),
            }),
            VoterReply::Released => Kind::Released(pb::Released {}),
            VoterReply::Rejected {
                reason,
                promised,
                holder,
                remaining,
            } => Kind::Rejected(pb::Rejected {
                reason: pb::RejectReason::from(reason).into(),
                promised: Some(promised.into()),
                holder: holder.map(Into::into),
                remaining_ms: millis(remaining),
            }),
        };
        pb::VoteReply { kind: Some(kind) }
    }
}

impl From<RejectReason> for pb::RejectReason {
    fn from(r: RejectReason) -> Self {
        match r {
            RejectReason::StaleEpoch => pb::RejectReason::StaleEpoch,
            RejectReason::GrantAlive => pb::RejectReason::GrantAlive,
            RejectReason::Quarantine => pb::RejectReason::Quarantine,
            RejectReason::StaleVoterConfig => pb::RejectReason::StaleVoterConfig,
            RejectReason::NotHolder => pb::RejectReason::NotHolder,
            RejectReason::ImplausibleEpoch => pb::RejectReason::ImplausibleEpoch,
        }
    }
}

impl TryFrom<pb::VoteReply> for VoterReply {
    type Error = ProtocolError;

    fn try_from(m: pb::VoteReply) -> Result<Self, Self::Error> {
        use pb::vote_reply::Kind;
        Ok(match m.kind.ok_or(ProtocolError::Missing("kind"))? {
            Kind::Promised(p) => VoterReply::Promised {
                epoch: epoch_field("promised.epoch", p.epoch)?,
                committed_seq: p.committed_seq,
            },
            Kind::Renewed(r) => VoterReply::Renewed {
                epoch: epoch_field("renewed.epoch", r.epoch)?,
            },
            Kind::Released(_) => VoterReply::Released,
            Kind::Rejected(r) => VoterReply::Rejected {
                reason: match pb::RejectReason::try_from(r.reason) {
                    Ok(pb::RejectReason::StaleEpoch) => RejectReason::StaleEpoch,
                    Ok(pb::RejectReason::GrantAlive) => RejectReason::GrantAlive,
                    Ok(pb::RejectReason::Quarantine) => RejectReason::Quarantine,
                    Ok(pb::RejectReason::StaleVoterConfig) => RejectReason::StaleVoterConfig,
                    Ok(pb::RejectReason::NotHolder) => RejectReason::NotHolder,
                    Ok(pb::RejectReason::ImplausibleEpoch) => RejectReason::ImplausibleEpoch,
                    Ok(pb::RejectReason::Unspecified) | Err(_) => {
                        return Err(ProtocolError::invalid("rejected.reason", "unknown reason"));
                    }
                },
                promised: epoch_field("rejected.promised", r.promised)?,
                holder: r
                    .holder
                    .map(|h| holder_field("rejected.holder", Some(h)))
                    .transpose()?,
                remaining: Duration::from_millis(r.remaining_ms),
            },
        })
    }
}

/// Renders an epoch for the `dbfleet-promised-epoch` metadata.
pub fn epoch_to_metadata(e: &Epoch) -> String {
    format!("{}/{}", e.term, e.coordinator)
}

/// Parses the `dbfleet-promised-epoch` metadata.
pub fn epoch_from_metadata(s: &str) -> Option<Epoch> {
    let (term, coordinator) = s.split_once('/')?;
    Some(Epoch {
        term: term.parse().ok()?,
        coordinator: coordinator.to_string(),
    })
}

/// The voter list as operators send it: names, addresses and weights.
pub fn voter_specs(m: &pb::SetVotersRequest) -> Result<Vec<(String, String, u32)>, ProtocolError> {
    let mut out = Vec::new();
    for v in &m.voters {
        crate::model::Name::parse(&v.name).map_err(|r| ProtocolError::invalid("voters.name", r))?;
        if v.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(ProtocolError::invalid(
                "voters.address",
                format!("{:?} is not IP:PORT of the voter's agent", v.address),
            ));
        }
        out.push((v.name.clone(), v.address.clone(), v.weight.max(1)));
    }
    let set = out.iter().map(|(n, _, w)| (n.clone(), *w)).collect();
    VoterSet::new(set).map_err(|e| ProtocolError::invalid("voters", e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let epoch = Epoch {
            term: 4,
            coordinator: "c1".into(),
        };
        let holder = HolderId {
            coordinator: "c1".into(),
            incarnation: 99,
        };
        let req = VoterRequest::Renew {
            epoch: epoch.clone(),
            holder: holder.clone(),
            timing: Timing::standard(),
            voter_config_version: 2,
            committed_seq: 17,
        };
        assert_eq!(
            VoterRequest::try_from(vote_request(req.clone())).unwrap(),
            req
        );
        let reply = VoterReply::Rejected {
            reason: RejectReason::GrantAlive,
            promised: epoch.clone(),
            holder: Some(holder),
            remaining: Duration::from_millis(1500),
        };
        assert_eq!(
            VoterReply::try_from(pb::VoteReply::from(reply.clone())).unwrap(),
            reply
        );
        assert_eq!(epoch_from_metadata(&epoch_to_metadata(&epoch)), Some(epoch));
    }

    #[test]
    fn an_epoch_of_another_coordinator_or_unsafe_timing_is_refused() {
        let mut m = vote_request(VoterRequest::Release {
            epoch: Epoch {
                term: 1,
                coordinator: "c2".into(),
            },
            holder: HolderId {
                coordinator: "c1".into(),
                incarnation: 1,
            },
        });
        assert!(
            VoterRequest::try_from(m.clone())
                .unwrap_err()
                .to_string()
                .contains("epoch.coordinator")
        );
        m.epoch = Some(pb::Epoch {
            term: 1,
            coordinator: "c1".into(),
        });
        m.kind = Some(pb::vote_request::Kind::Prepare(pb::Prepare {
            timing: Some(pb::LeaseTiming {
                lease_ms: 1000,
                renew_interval_ms: 900,
                rpc_timeout_ms: 500,
                drift_ppm: 0,
                margin_ms: 100,
            }),
            voter_config_version: 1,
        }));
        assert!(
            VoterRequest::try_from(m)
                .unwrap_err()
                .to_string()
                .contains("timing")
        );
    }
}
