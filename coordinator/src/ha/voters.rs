//! Talking to the voters: one mTLS channel per voter (whose certificate
//! must name that voter), lease requests with the round timeout, epoch
//! barriers, and the state operators see.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbfleet_common::clock::boottime;
use dbfleet_lease::VoterSet;
use futures::future::join_all;
use tracing::info;

use super::Ha;
use crate::error::ServiceError;
use crate::fleet::{Fleet, MemberState};
use crate::store::{DesiredOp, VoterList};

use dbfleet_common::identity::{Identity, Role};
use dbfleet_common::tls::{TlsContext, channel_to};
use dbfleet_lease::{Epoch, HolderId, VoterReply, VoterRequest};
use dbfleet_proto::lease::{PROMISED_EPOCH_METADATA, epoch_from_metadata, vote_request};
use dbfleet_proto::pb;
use dbfleet_proto::pb::agent_service_client::AgentServiceClient;
use dbfleet_proto::pb::voter_service_client::VoterServiceClient;
use tonic::transport::Channel;

/// Why a voter or agent did not answer usefully.
#[derive(Debug, thiserror::Error)]
pub enum VoterCallError {
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The call failed.
    #[error("{}", .0.message())]
    Rpc(tonic::Status),
    /// The answer did not decode.
    #[error("bad answer: {0}")]
    Protocol(String),
    /// The agent refused the command's epoch: the sender must step down.
    #[error("stale epoch: the agent has promised {0}")]
    StaleEpoch(Epoch),
}

/// A refusal for a stale epoch carries the agent's promise; anything else
/// stays an RPC error.
fn stale_or(s: tonic::Status) -> VoterCallError {
    if s.code() == tonic::Code::Aborted
        && let Some(p) = s
            .metadata()
            .get(PROMISED_EPOCH_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(epoch_from_metadata)
    {
        return VoterCallError::StaleEpoch(p);
    }
    VoterCallError::Rpc(s)
}

/// Cached channels to the agents: their voter service (the lease) and
/// their agent service (commands).
#[derive(Debug)]
pub struct AgentClients {
    tls: Arc<TlsContext>,
    channels: Mutex<HashMap<(String, String), Channel>>,
    timeout: Duration,
}

impl AgentClients {
    /// Clients whose every call ends within `timeout`.
    pub fn new(tls: Arc<TlsContext>, timeout: Duration) -> AgentClients {
        AgentClients {
            tls,
            channels: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn channel(&self, name: &str, address: &str) -> Channel {
        let mut m = super::relock(&self.channels);
        m.entry((name.to_string(), address.to_string()))
            .or_insert_with(|| {
                let id = Identity::new(Role::Agent, name);
                channel_to(self.tls.clone(), address, &id, self.timeout)
            })
            .clone()
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, VoterCallError> {
        match tokio::time::timeout(self.timeout, f).await {
            Err(_) => Err(VoterCallError::Timeout(self.timeout)),
            Ok(Err(s)) => Err(VoterCallError::Rpc(s)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// One lease request.
    pub async fn vote(
        &self,
        name: &str,
        address: &str,
        req: VoterRequest,
    ) -> Result<VoterReply, VoterCallError> {
        let mut c = VoterServiceClient::new(self.channel(name, address));
        let reply = self.bounded(c.vote(vote_request(req))).await?;
        VoterReply::try_from(reply).map_err(|e| VoterCallError::Protocol(e.to_string()))
    }

    /// The voter's record and timers.
    pub async fn state(&self, name: &str, address: &str) -> Result<pb::VoterState, VoterCallError> {
        let mut c = VoterServiceClient::new(self.channel(name, address));
        self.bounded(c.get_voter_state(pb::GetVoterStateRequest {}))
            .await
    }

    /// Runs one command on an agent under `epoch`, waiting up to `timeout`.
    #[allow(clippy::too_many_arguments)]
    pub async fn execute(
        &self,
        name: &str,
        address: &str,
        epoch: &Epoch,
        holder: &HolderId,
        lease_remaining_ms: u64,
        operation_id: &str,
        step: u32,
        command: pb::command_request::Command,
        timeout: Duration,
    ) -> Result<pb::CommandReply, VoterCallError> {
        let mut c = AgentServiceClient::new(self.channel(name, address));
        let req = pb::CommandRequest {
            epoch: Some(epoch.clone().into()),
            holder: Some(holder.clone().into()),
            operation_id: operation_id.to_string(),
            step,
            lease_remaining_ms,
            command: Some(command),
        };
        match tokio::time::timeout(timeout, c.execute(req)).await {
            Err(_) => Err(VoterCallError::Timeout(timeout)),
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(stale_or(s)),
        }
    }

    /// One command to member `m`'s agent under `epoch`, as this coordinator
    /// (the holder) with its lease time left; an agent that has promised a
    /// higher epoch makes this coordinator step down. Errors name the host.
    #[allow(clippy::too_many_arguments)]
    pub async fn command_member(
        &self,
        ha: &Ha,
        m: &MemberState,
        epoch: &Epoch,
        operation_id: &str,
        step: u32,
        command: pb::command_request::Command,
        timeout: Duration,
    ) -> Result<pb::CommandReply, String> {
        let Some(address) = &m.agent_address else {
            return Err(format!("{}: no agent address known", m.host));
        };
        let (holder, remaining) = {
            let h = ha.holder();
            let now = boottime();
            // A task that got its epoch before this process was stopped
            // (SIGSTOP, a long pause) must not send once the lease is gone:
            // the agent would refuse it, but nothing stale leaves at all.
            if h.command_epoch(now).as_ref() != Some(epoch) {
                return Err(format!(
                    "{}: not sent: this coordinator no longer holds the lease of epoch {epoch}",
                    m.host
                ));
            }
            (
                h.id().clone(),
                h.lease_remaining(now)
                    .map_or(0, dbfleet_proto::lease::millis),
            )
        };
        match self
            .execute(
                &m.host,
                address,
                epoch,
                &holder,
                remaining,
                operation_id,
                step,
                command,
                timeout,
            )
            .await
        {
            Ok(r) => Ok(r),
            Err(VoterCallError::StaleEpoch(p)) => {
                ha.met_higher_epoch(&p);
                Err(format!("{}: has promised the higher epoch {p}", m.host))
            }
            Err(e) => Err(format!("{}: {e}", m.host)),
        }
    }

    /// The epoch barrier: after it, the agent obeys nothing older than `epoch`.
    pub async fn barrier(
        &self,
        name: &str,
        address: &str,
        epoch: &Epoch,
        holder: &HolderId,
        lease_remaining_ms: u64,
    ) -> Result<Epoch, VoterCallError> {
        let reply = self
            .execute(
                name,
                address,
                epoch,
                holder,
                lease_remaining_ms,
                "",
                0,
                pb::command_request::Command::Barrier(pb::EpochBarrier {}),
                self.timeout,
            )
            .await?;
        dbfleet_proto::lease::epoch_field("promised", reply.promised)
            .map_err(|e| VoterCallError::Protocol(e.to_string()))
    }
}

/// Every voter's state as this coordinator sees it (old and new lists
/// while a change is in progress).
pub async fn list(ha: &Ha, clients: &AgentClients) -> pb::ListVotersResponse {
    let list = ha.voters();
    let names = list.set.members();
    let calls = names.iter().map(|name| {
        let address = list.addresses.get(name).cloned().unwrap_or_default();
        async move {
            let r = clients.state(name, &address).await;
            (name.clone(), address, r)
        }
    });
    let voters = join_all(calls)
        .await
        .into_iter()
        .map(|(name, address, r)| {
            let weight = list
                .set
                .voters
                .get(&name)
                .or_else(|| list.set.joint.as_ref().and_then(|j| j.get(&name)))
                .copied()
                .unwrap_or(1);
            let incoming = !list.set.voters.contains_key(&name);
            let (reachable, error, state) = match r {
                Ok(s) => (true, String::new(), Some(s)),
                Err(e) => (false, e.to_string(), None),
            };
            pb::VoterEntry {
                name,
                address,
                weight,
                reachable,
                error,
                state,
                incoming,
            }
        })
        .collect();
    pb::ListVotersResponse {
        version: list.set.version,
        voters,
        coordinator_id: ha.id().to_string(),
    }
}

/// Changes the voter list with joint majorities (reference §3.3): refuse
/// unless a majority of both the old and the new list answer; commit the
/// joint list; wait for a lease renewal that a majority of both granted;
/// then commit the new list alone. If the joint renewal never succeeds,
/// the old list is restored.
pub async fn change(
    ha: &Arc<Ha>,
    fleet: &Arc<Fleet>,
    clients: &AgentClients,
    next: Vec<(String, String, u32)>,
) -> Result<pb::ListVotersResponse, ServiceError> {
    let _one_at_a_time = ha.voter_change.lock().await;
    ha.write_epoch()?;
    let current = ha.voters();
    let next_weights: BTreeMap<String, u32> =
        next.iter().map(|(n, _, w)| (n.clone(), *w)).collect();
    let mut addresses = current.addresses.clone();
    for (n, a, _) in &next {
        addresses.insert(n.clone(), a.clone());
    }
    let joint = current
        .set
        .begin_change(next_weights)
        .map_err(|e| ServiceError::VoterChange(e.to_string()))?;
    let probe = joint.members().into_iter().map(|name| {
        let address = addresses.get(&name).cloned().unwrap_or_default();
        async move { (name.clone(), clients.state(&name, &address).await.is_ok()) }
    });
    let reachable: BTreeSet<String> = join_all(probe)
        .await
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(n, _)| n)
        .collect();
    if !joint.is_quorum(&reachable) {
        return Err(ServiceError::VoterChange(format!(
            "a change needs a majority of both the current and the new voters answering, but only {reachable:?} answer; \
             restore connectivity first (never change voters during a partition)"
        )));
    }
    let joint_list = VoterList {
        set: joint.clone(),
        addresses: addresses.clone(),
    };
    fleet
        .commit_operator(DesiredOp::SetVoters(joint_list))
        .await?;
    let started = boottime();
    let t = *ha.holder().timing();
    let deadline = started + t.renew_interval * 3 + t.rpc_timeout;
    loop {
        if ha.holder().last_confirmed().is_some_and(|c| c >= started) {
            break;
        }
        if boottime() >= deadline {
            let old = VoterList {
                set: VoterSet {
                    version: joint.version + 1,
                    voters: current.set.voters.clone(),
                    joint: None,
                },
                addresses: current.addresses.clone(),
            };
            fleet.commit_operator(DesiredOp::SetVoters(old)).await?;
            return Err(ServiceError::VoterChange(
                "no lease renewal was granted by majorities of both lists; the old voter list is back in force"
                    .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let final_set = joint.finish_change();
    let kept: BTreeMap<String, String> = addresses
        .into_iter()
        .filter(|(n, _)| final_set.voters.contains_key(n))
        .collect();
    fleet
        .commit_operator(DesiredOp::SetVoters(VoterList {
            set: final_set,
            addresses: kept,
        }))
        .await?;
    info!(version = ha.voters().set.version, "voter list changed");
    Ok(list(ha, clients).await)
}
