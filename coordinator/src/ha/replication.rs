//! Desired-state replication between the coordinators (reference §3.8).
//!
//! The standby calls the active's `PeerService.Replicate` with where its
//! op-log ends; the active answers with the ops after it (or a snapshot
//! when the standby's log diverged, the diverged ops going to lost+found),
//! then streams every new op as it commits, with heartbeats every renew
//! interval. The standby applies each op durably and acknowledges it; the
//! active's operator writes wait for that acknowledgement while the
//! standby is connected.
//!
//! An active-degraded coordinator (it took over without the previous
//! active's last ops) follows its peer too: when the peer comes back with a
//! longer log that extends ours, the peer serves it the missing ops, and
//! the degraded coordinator becomes fully active once it has them.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::clock::boottime;
use dbfleet_common::identity::{Identity, Role as CertRole, request_identity};
use dbfleet_common::tls::{TlsContext, channel_to};
use dbfleet_lease::{Epoch, HolderAction, Role};
use dbfleet_proto::lease::{epoch_field, millis, optional_epoch};
use dbfleet_proto::pb;
use dbfleet_proto::pb::peer_service_client::PeerServiceClient;
use dbfleet_proto::pb::peer_service_server::PeerService;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::{Ha, KnownActive};
use crate::fleet::Fleet;
use crate::store::{DesiredSnapshot, OpEntry, OpPosition, Store, blocking};

/// How many op positions the standby sends to find the common point.
const TAIL: usize = 64;
/// Ops per read of the op-log while streaming.
const BATCH: usize = 256;
/// A standby further behind than this gets a snapshot instead of the ops.
const SNAPSHOT_AFTER: u64 = 10_000;

/// The active's side: `PeerService`.
#[derive(Clone)]
pub struct PeerApi {
    /// Shared HA state.
    pub ha: Arc<Ha>,
    /// Desired state.
    pub fleet: Arc<Fleet>,
    /// The op-log.
    pub store: Arc<dyn Store>,
    /// Heartbeat interval (the renew interval).
    pub heartbeat: Duration,
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<pb::ActiveMessage, Status>> + Send>>;

fn op_position(p: pb::OpPosition) -> Result<OpPosition, Status> {
    Ok(OpPosition {
        seq: p.seq,
        epoch: epoch_field("tail.epoch", p.epoch)?,
    })
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// How the active continues a standby's log.
enum Start {
    /// Stream ops after this sequence.
    After(u64),
    /// Send a snapshot; the standby keeps its ops through `keep_through`.
    Snapshot { keep_through: u64 },
    /// The caller's log extends ours: we are the one behind.
    CallerAhead,
}

/// Decides where to continue a log ending with `tail`, given ours.
fn plan(tail: &[OpPosition], ours: u64, epoch_at: impl Fn(u64) -> Option<Epoch>) -> Start {
    let Some(last) = tail.last() else {
        return Start::After(0);
    };
    let agrees = |p: &OpPosition| epoch_at(p.seq).as_ref() == Some(&p.epoch);
    if last.seq <= ours && agrees(last) {
        return if ours - last.seq > SNAPSHOT_AFTER {
            Start::Snapshot {
                keep_through: last.seq,
            }
        } else {
            Start::After(last.seq)
        };
    }
    // Ahead of us and extending our log, or too far ahead to tell: never
    // overwrite a longer log from a shorter one.
    let beyond_view = tail.first().is_some_and(|p| p.seq > ours);
    if last.seq > ours
        && (ours == 0 || beyond_view || tail.iter().any(|p| p.seq == ours && agrees(p)))
    {
        return Start::CallerAhead;
    }
    let keep_through = tail.iter().rev().find(|p| agrees(p)).map_or(0, |p| p.seq);
    Start::Snapshot { keep_through }
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    type ReplicateStream = ActiveStream;

    async fn replicate(
        &self,
        request: Request<Streaming<pb::ReplicaMessage>>,
    ) -> Result<Response<ActiveStream>, Status> {
        let caller = request_identity(&request)?;
        if caller.name != self.ha.peer().id {
            return Err(Status::permission_denied(format!(
                "{caller} is not this coordinator's configured peer {}",
                self.ha.peer().id
            )));
        }
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::ReplicaMessage {
                kind: Some(pb::replica_message::Kind::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ));
            }
        };
        let tail = hello
            .tail
            .into_iter()
            .map(op_position)
            .collect::<Result<Vec<_>, _>>()?;
        let role = self.ha.role();
        let ours = self.ha.applied();
        let positions: Vec<u64> = tail.iter().map(|p| p.seq).collect();
        let known = blocking(&self.store, move |s| {
            positions
                .iter()
                .map(|q| Ok((*q, s.epoch_at(*q)?)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        let mut start = plan(&tail, ours, |q| {
            known
                .iter()
                .find(|(k, _)| *k == q)
                .and_then(|(_, e)| e.clone())
        });
        // Continuing needs the next op in our log; after a snapshot of our
        // own, older ops are gone and only a snapshot can bring the caller up.
        if let Start::After(seq) = start
            && seq < ours
            && blocking(&self.store, move |s| s.epoch_at(seq + 1))
                .await?
                .is_none()
        {
            start = Start::Snapshot { keep_through: seq };
        }
        let serving_as_active = matches!(role, Role::Active | Role::ActiveDegraded);
        match (&start, role) {
            (Start::CallerAhead, _) => {
                return Err(Status::unavailable(format!(
                    "coordinator {} is behind the caller (op {ours}); it fetches the caller's ops instead",
                    self.ha.id()
                )));
            }
            // A standby only lends a behind peer the ops that extend its
            // log, never a snapshot that would set the peer's ops aside.
            (Start::Snapshot { .. }, Role::Standby | Role::Candidate) => {
                return Err(Status::from(self.ha.not_active()));
            }
            (_, Role::Standby | Role::Candidate) if hello.applied_seq >= ours => {
                return Err(Status::from(self.ha.not_active()));
            }
            _ => {}
        }
        let agreed = match start {
            Start::After(seq) => seq,
            Start::Snapshot { keep_through } => keep_through,
            Start::CallerAhead => 0,
        };
        info!(
            peer = caller.name,
            from = hello.applied_seq,
            ours,
            as_active = serving_as_active,
            "peer replicating from us"
        );
        let (tx, rx) = mpsc::channel(64);
        let feeder = self.clone();
        tokio::spawn(async move {
            if let Err(e) = feeder.feed(start, serving_as_active, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        if serving_as_active {
            self.ha.standby().send_modify(|l| {
                l.connected = true;
                l.written_off = false;
                l.acked = agreed;
            });
            let ha = self.ha.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    if let Some(pb::replica_message::Kind::Ack(a)) = m.kind {
                        ha.standby()
                            .send_modify(|l| l.acked = l.acked.max(a.applied_seq));
                    }
                }
                ha.standby().send_modify(|l| l.connected = false);
                debug!("standby's replication stream ended");
            });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl PeerApi {
    fn heartbeat(&self) -> pb::ActiveMessage {
        let now = boottime();
        let h = self.ha.holder();
        let lease = h.lease_remaining(now);
        pb::ActiveMessage {
            kind: Some(pb::active_message::Kind::Heartbeat(pb::ActiveHeartbeat {
                epoch: h
                    .epoch()
                    .filter(|_| lease.is_some())
                    .cloned()
                    .map(Into::into),
                committed_seq: self.ha.applied(),
                lease_remaining_ms: lease.map_or(0, millis),
            })),
        }
    }

    async fn feed(
        &self,
        start: Start,
        as_active: bool,
        tx: &mpsc::Sender<Result<pb::ActiveMessage, Status>>,
    ) -> Result<(), Status> {
        let send = |m: pb::ActiveMessage| async move { tx.send(Ok(m)).await.is_ok() };
        if !send(self.heartbeat()).await {
            return Ok(());
        }
        let mut after = match start {
            Start::After(seq) => seq,
            Start::CallerAhead => return Ok(()),
            Start::Snapshot { keep_through } => {
                let snap = self.fleet.snapshot().await?;
                let seq = snap.at.seq;
                let msg = pb::Snapshot {
                    seq,
                    epoch: Some(snap.at.epoch.clone().into()),
                    state_json: serde_json::to_vec(&snap).map_err(internal)?,
                    keep_through,
                };
                info!(seq, keep_through, "sending a snapshot to the peer");
                if !send(pb::ActiveMessage {
                    kind: Some(pb::active_message::Kind::Snapshot(msg)),
                })
                .await
                {
                    return Ok(());
                }
                seq
            }
        };
        let mut applied = self.ha.watch_applied();
        let mut beat = tokio::time::interval(self.heartbeat);
        beat.tick().await;
        loop {
            let ops = blocking(&self.store, move |s| s.ops_after(after, BATCH)).await?;
            for op in &ops {
                let m = pb::OpEntry {
                    seq: op.seq,
                    epoch: Some(op.epoch.clone().into()),
                    op_json: serde_json::to_vec(&op.op).map_err(internal)?,
                };
                if !send(pb::ActiveMessage {
                    kind: Some(pb::active_message::Kind::Op(m)),
                })
                .await
                {
                    return Ok(());
                }
                after = op.seq;
            }
            if ops.len() == BATCH {
                continue;
            }
            if as_active && !matches!(self.ha.role(), Role::Active | Role::ActiveDegraded) {
                return Err(Status::from(self.ha.not_active()));
            }
            tokio::select! {
                _ = applied.changed() => {}
                _ = beat.tick() => {
                    if !send(self.heartbeat()).await {
                        return Ok(());
                    }
                }
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}

/// The standby's side: follows the peer until cancelled. Runs all the
/// time and stays idle while this coordinator is fully active.
pub async fn follow(
    ha: Arc<Ha>,
    fleet: Arc<Fleet>,
    store: Arc<dyn Store>,
    tls: Arc<TlsContext>,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let peer = ha.peer().clone();
    let channel = channel_to(
        tls,
        &peer.address,
        &Identity::new(CertRole::Coordinator, &peer.id),
        timeout,
    );
    let mut last_error = String::new();
    loop {
        if cancel.is_cancelled() {
            return;
        }
        if ha.role() != Role::Active {
            match follow_once(&ha, &fleet, &store, channel.clone(), &peer, &cancel).await {
                Ok(()) => last_error.clear(),
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        debug!(peer = peer.id, error = msg, "not replicating from the peer");
                        last_error = msg;
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn follow_once(
    ha: &Arc<Ha>,
    fleet: &Arc<Fleet>,
    store: &Arc<dyn Store>,
    channel: tonic::transport::Channel,
    peer: &KnownActive,
    cancel: &CancellationToken,
) -> Result<(), Status> {
    let tail = blocking(store, |s| s.tail(TAIL)).await?;
    let (out, out_rx) = mpsc::channel(16);
    let hello = pb::ReplicaHello {
        tail: tail
            .into_iter()
            .map(|p| pb::OpPosition {
                seq: p.seq,
                epoch: Some(p.epoch.into()),
            })
            .collect(),
        applied_seq: ha.applied(),
    };
    let _ = out
        .send(pb::ReplicaMessage {
            kind: Some(pb::replica_message::Kind::Hello(hello)),
        })
        .await;
    let mut inbound = PeerServiceClient::new(channel)
        .replicate(ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    let ack = |seq| pb::ReplicaMessage {
        kind: Some(pb::replica_message::Kind::Ack(pb::ReplicaAck {
            applied_seq: seq,
        })),
    };
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = inbound.message() => m?,
        };
        let Some(msg) = msg else {
            return Ok(());
        };
        if ha.role() == Role::Active {
            return Ok(());
        }
        match msg.kind {
            Some(pb::active_message::Kind::Heartbeat(h)) => {
                if let Some(epoch) = optional_epoch(h.epoch).filter(|_| h.lease_remaining_ms > 0) {
                    let actions = {
                        let mut holder = ha.holder();
                        holder.peer_heard(boottime());
                        holder.on_higher_epoch(&epoch, boottime())
                    };
                    for a in actions {
                        if let HolderAction::SteppedDown { epoch: mine, .. } = a {
                            warn!(%mine, higher = %epoch, "the peer is active under a higher epoch: stepped down");
                        }
                    }
                    ha.set_active(Some(peer.clone()));
                    ha.set_active_committed(h.committed_seq);
                }
            }
            Some(pb::active_message::Kind::Op(o)) => {
                let entry = OpEntry {
                    seq: o.seq,
                    epoch: epoch_field("op.epoch", o.epoch)?,
                    op: serde_json::from_slice(&o.op_json)
                        .map_err(|e| Status::invalid_argument(format!("op {}: {e}", o.seq)))?,
                };
                let seq = entry.seq;
                fleet.apply_replicated(entry).await?;
                let _ = out.send(ack(seq)).await;
            }
            Some(pb::active_message::Kind::Snapshot(s)) => {
                let snap: DesiredSnapshot = serde_json::from_slice(&s.state_json)
                    .map_err(|e| Status::invalid_argument(format!("snapshot: {e}")))?;
                let seq = snap.at.seq;
                let set_aside = fleet.install_snapshot(snap, s.keep_through).await?;
                if set_aside > 0 {
                    warn!(
                        set_aside,
                        keep_through = s.keep_through,
                        "our op-log had diverged from the active's: ops set aside in lost+found"
                    );
                }
                let total = blocking(store, |s| s.load().map(|l| l.lost_found)).await?;
                ha.set_lost_found(total);
                info!(seq, "installed the active's snapshot");
                let _ = out.send(ack(seq)).await;
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(seq: u64, term: u64) -> OpPosition {
        OpPosition {
            seq,
            epoch: Epoch {
                term,
                coordinator: "c1".into(),
            },
        }
    }

    fn log(entries: &[(u64, u64)]) -> impl Fn(u64) -> Option<Epoch> + '_ {
        move |q| {
            entries.iter().find(|(s, _)| *s == q).map(|(_, t)| Epoch {
                term: *t,
                coordinator: "c1".into(),
            })
        }
    }

    #[test]
    fn a_standby_behind_with_a_matching_log_continues_after_its_last_op() {
        let ours = [(1, 1), (2, 1), (3, 2)];
        assert!(matches!(
            plan(&[p(1, 1), p(2, 1)], 3, log(&ours)),
            Start::After(2)
        ));
        assert!(matches!(plan(&[], 3, log(&ours)), Start::After(0)));
    }

    #[test]
    fn a_diverged_standby_gets_a_snapshot_keeping_the_common_prefix() {
        let ours = [(1, 1), (2, 2), (3, 2)];
        // The standby committed op 2 under term 1 (an old active's lost write).
        assert!(matches!(
            plan(&[p(1, 1), p(2, 1)], 3, log(&ours)),
            Start::Snapshot { keep_through: 1 }
        ));
    }

    #[test]
    fn a_caller_whose_log_extends_ours_is_ahead() {
        let ours = [(1, 1), (2, 1)];
        assert!(matches!(
            plan(&[p(1, 1), p(2, 1), p(3, 1)], 2, log(&ours)),
            Start::CallerAhead
        ));
        // Longer but not an extension: diverged.
        assert!(matches!(
            plan(&[p(1, 1), p(2, 3), p(3, 3)], 2, log(&ours)),
            Start::Snapshot { keep_through: 1 }
        ));
    }
}
