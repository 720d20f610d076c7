//! The lease loop: ticks the holder, sends its requests to the voters,
//! feeds their replies back, and acts on what the holder decides (epoch
//! barrier on acquisition, logging every change of role). On shutdown
//! the active releases its lease so the standby takes over at once.

use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::clock::boottime;
use dbfleet_lease::{Epoch, HolderAction, StepDownReason, VoterReply};
use dbfleet_proto::lease::millis;
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Ha;
use super::voters::{AgentClients, VoterCallError};
use crate::store::Store;

/// How often the holder is ticked: a small fraction of the lease, so a
/// lapsed lease is noticed within this long.
const TICK: Duration = Duration::from_millis(50);

struct Reply {
    voter: String,
    round: u64,
    result: Result<VoterReply, VoterCallError>,
}

/// Runs the lease until `cancel`, then releases it if held.
pub async fn run(
    ha: Arc<Ha>,
    clients: Arc<AgentClients>,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Reply>(1024);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut saved_max_seen = ha.holder().max_seen().clone();
    loop {
        let actions = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => ha.holder().tick(boottime()),
            Some(r) = rx.recv() => match r.result {
                Ok(reply) => ha.holder().on_reply(&r.voter, r.round, reply, boottime()),
                Err(e) => {
                    debug!(voter = r.voter, error = %e, "voter did not answer");
                    Vec::new()
                }
            },
        };
        // Persist the highest epoch seen before any request carrying a
        // higher one leaves, so a restart never asks for a used term. (The
        // voters refuse a reused epoch anyway; this only saves a round.)
        let max_seen = ha.holder().max_seen().clone();
        if max_seen != saved_max_seen {
            let s = store.clone();
            let e = max_seen.clone();
            match tokio::task::spawn_blocking(move || s.save_max_seen(&e)).await {
                Ok(Ok(())) => saved_max_seen = max_seen,
                Ok(Err(e)) => warn!(error = %e, "cannot persist the highest epoch seen"),
                Err(e) => warn!(error = %e, "cannot persist the highest epoch seen"),
            }
        }
        for a in actions {
            act(&ha, &clients, &tx, a);
        }
    }
    release(&ha, &clients).await;
}

fn act(ha: &Arc<Ha>, clients: &Arc<AgentClients>, tx: &mpsc::Sender<Reply>, action: HolderAction) {
    match action {
        HolderAction::Broadcast { round, request, to } => {
            let addresses = ha.voters().addresses;
            for voter in to {
                let Some(address) = addresses.get(&voter).cloned() else {
                    error!(voter, "voter has no address in the voter list");
                    continue;
                };
                let (clients, tx, request) = (clients.clone(), tx.clone(), request.clone());
                tokio::spawn(async move {
                    let result = clients.vote(&voter, &address, request).await;
                    let _ = tx
                        .send(Reply {
                            voter,
                            round,
                            result,
                        })
                        .await;
                });
            }
        }
        HolderAction::Acquired { epoch, degraded } => {
            if degraded {
                warn!(%epoch, applied = ha.applied(), required = ha.holder().required_seq(),
                    "became active-degraded: desired state is behind what the previous active committed; no automatic changes until it catches up or an operator accepts the gap");
            } else {
                info!(%epoch, "became the active coordinator");
            }
            ha.set_active(Some(ha.me()));
            tokio::spawn(barrier(ha.clone(), clients.clone(), epoch));
        }
        HolderAction::SteppedDown { epoch, reason } => {
            match &reason {
                StepDownReason::LeaseExpired => {
                    warn!(%epoch, "lease expired without a majority renewing it: stopped acting")
                }
                StepDownReason::HigherEpoch(h) => {
                    warn!(%epoch, higher = %h, "a higher epoch exists: stepped down to standby")
                }
                StepDownReason::Released => info!(%epoch, "released the lease"),
            }
            ha.set_active(None);
        }
    }
}

/// The epoch barrier of a new active: every voter's agent persists the new
/// epoch, so a paused or cut-off old active can no longer drive it.
async fn barrier(ha: Arc<Ha>, clients: Arc<AgentClients>, epoch: Epoch) {
    let holder = ha.holder().id().clone();
    let addresses = ha.voters().addresses;
    let calls = addresses.iter().map(|(name, address)| {
        let (ha, clients, epoch, holder) =
            (ha.clone(), clients.clone(), epoch.clone(), holder.clone());
        async move {
            // Like every command, a barrier whose lease ended while this
            // process was paused is not sent at all.
            let remaining = {
                let h = ha.holder();
                let now = boottime();
                if h.command_epoch(now).as_ref() != Some(&epoch) {
                    return (name.clone(), None);
                }
                h.lease_remaining(now).map_or(0, millis)
            };
            let r = clients
                .barrier(name, address, &epoch, &holder, remaining)
                .await;
            (name.clone(), Some(r))
        }
    });
    let mut fenced = 0;
    for (name, r) in join_all(calls).await {
        let Some(r) = r else {
            debug!(voter = name, %epoch, "epoch barrier not sent: the lease of its epoch is gone");
            continue;
        };
        match r {
            Ok(_) => fenced += 1,
            Err(VoterCallError::StaleEpoch(p)) => {
                warn!(voter = name, promised = %p, "agent has promised a higher epoch");
                if ha.met_higher_epoch(&p) {
                    warn!(%epoch, higher = %p, "an agent has promised a higher epoch: stepped down to standby");
                }
            }
            Err(e) => debug!(voter = name, error = %e, "epoch barrier not acknowledged"),
        }
    }
    info!(%epoch, fenced, of = addresses.len(), "epoch barrier done");
}

async fn release(ha: &Arc<Ha>, clients: &Arc<AgentClients>) {
    let actions = ha.holder().release(boottime());
    let addresses = ha.voters().addresses;
    let mut calls = Vec::new();
    for a in actions {
        match a {
            HolderAction::Broadcast { request, to, .. } => {
                for voter in to {
                    if let Some(address) = addresses.get(&voter) {
                        let request = request.clone();
                        calls.push(async move { clients.vote(&voter, address, request).await });
                    }
                }
            }
            HolderAction::SteppedDown { epoch, .. } => {
                info!(%epoch, "releasing the lease for shutdown")
            }
            HolderAction::Acquired { .. } => {}
        }
    }
    join_all(calls).await;
}
