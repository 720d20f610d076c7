//! What coordinators may ask of this agent: its state, lease votes, and
//! commands fenced by epoch. Deny by default; only coordinators, and the
//! holder named in a request must be the caller's own certificate.

use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::identity::{Identity, Role, request_identity};
use dbfleet_lease::{HolderId, VoterRequest};
use dbfleet_proto::lease::{
    PROMISED_EPOCH_METADATA, epoch_field, epoch_to_metadata, holder_field, millis,
};
use dbfleet_proto::pb;
use dbfleet_proto::pb::agent_service_server::AgentService;
use dbfleet_proto::pb::voter_service_server::VoterService;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::backup::Jobs;
use crate::binlog_archive::store::Target;
use crate::mysql::control::{ControlError, Controller, Fenced, Outcome};
use crate::voter::{CommandRefused, LeaseVoter, VoterError};
use dbfleet_common::gtid_state::GtidState;

/// Per-RPC authorization of the agent: only coordinators, deny by default.
pub fn policy(path: &str) -> Option<&'static [Role]> {
    match path {
        "/dbfleet.v1.AgentService/GetState"
        | "/dbfleet.v1.AgentService/Execute"
        | "/dbfleet.v1.VoterService/Vote"
        | "/dbfleet.v1.VoterService/GetVoterState" => Some(&[Role::Coordinator]),
        _ => None,
    }
}

/// Per-RPC authorization of a witness: lease votes only.
pub fn witness_policy(path: &str) -> Option<&'static [Role]> {
    match path {
        "/dbfleet.v1.VoterService/Vote" | "/dbfleet.v1.VoterService/GetVoterState" => {
            Some(&[Role::Coordinator])
        }
        _ => None,
    }
}

fn own_holder(caller: &Identity, holder: &HolderId) -> Result<(), Status> {
    if holder.coordinator != caller.name {
        return Err(Status::permission_denied(format!(
            "holder {} is not the caller {}",
            holder.coordinator, caller
        )));
    }
    Ok(())
}

fn voter_status(e: VoterError) -> Status {
    Status::unavailable(format!("this agent cannot persist its promise: {e}"))
}

fn control_status(e: ControlError) -> Status {
    match e {
        ControlError::Mysql(m) => Status::unavailable(m),
        ControlError::NotConfigured(m) => Status::failed_precondition(m),
        ControlError::Guard(g) => Status::unavailable(format!(
            "this agent cannot persist its read-only guard: {g}"
        )),
        ControlError::Timeout(m) => Status::deadline_exceeded(m),
        ControlError::Busy(m) => Status::resource_exhausted(m),
        ControlError::Repository(m) => Status::unavailable(m),
        ControlError::Process(m) => Status::failed_precondition(m),
    }
}

fn ms(v: u64, default: Duration) -> Duration {
    if v == 0 {
        default
    } else {
        Duration::from_millis(v)
    }
}

/// Commands that only touch the backup repository.
fn repository_only(command: &pb::command_request::Command) -> bool {
    use pb::command_request::Command;
    matches!(command, Command::DeleteBackup(_) | Command::PruneArchive(_))
}

/// What a command waits for on purpose, on top of its statements.
fn command_waits(command: &pb::command_request::Command) -> Duration {
    use pb::command_request::Command;
    match command {
        Command::Freeze(f) => ms(f.apply_timeout_ms, Duration::from_secs(30)),
        Command::WaitGtid(w) => ms(w.timeout_ms, Duration::from_secs(30)),
        _ => Duration::ZERO,
    }
}

/// Runs one admitted command against mysqld.
async fn run_command(
    control: &Controller,
    jobs: &Arc<Jobs>,
    command: pb::command_request::Command,
) -> Result<Option<Outcome>, ControlError> {
    use pb::command_request::Command;
    Ok(Some(match command {
        Command::Barrier(pb::EpochBarrier {}) => return Ok(None),
        Command::Fence(f) => {
            control
                .fence(f.kill_if_unresponsive, "fenced by the coordinator")
                .await?
        }
        Command::Freeze(f) => {
            control
                .freeze(ms(f.apply_timeout_ms, Duration::from_secs(30)))
                .await?
        }
        Command::Promote(p) => control.promote(p.lossless_semi_sync).await?,
        Command::Repoint(r) => {
            let port = u16::try_from(r.source_port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    ControlError::NotConfigured(format!("{} is not a TCP port", r.source_port))
                })?;
            control
                .repoint(
                    &r.source_host,
                    port,
                    ms(r.heartbeat_ms, Duration::from_secs(1)),
                    ms(r.net_timeout_ms, Duration::from_secs(4)),
                    r.tls,
                )
                .await?
        }
        Command::WaitGtid(w) => {
            control
                .wait_gtid(&w.gtid, ms(w.timeout_ms, Duration::from_secs(30)))
                .await?
        }
        Command::Thaw(pb::Thaw {}) => control.thaw().await?,
        Command::SetSemiSync(p) => control.set_semi_sync(p.lossless, p.source).await?,
        Command::StartBackup(b) => Outcome {
            state: None,
            fenced: None,
            detail: jobs.start_backup(&b.id, &b.method, &b.parent)?,
        },
        Command::PruneArchive(p) => Outcome {
            state: None,
            fenced: None,
            detail: jobs.prune_archive(&p.keep_from_gtid).await?,
        },
        Command::DeleteBackup(d) => Outcome {
            state: None,
            fenced: None,
            detail: jobs.delete_backup(&d.id).await?,
        },
        Command::StartVerify(v) => Outcome {
            state: None,
            fenced: None,
            detail: jobs.start_verify(&v.job_id, &v.backup_id)?,
        },
        Command::StartRestore(r) if !r.clone_donor.is_empty() => Outcome {
            state: None,
            fenced: None,
            detail: jobs.start_rebuild(&r.job_id, &r.clone_donor, r.clone_tls)?,
        },
        Command::StartRestore(r) => {
            let to = match (r.to_time_unix, r.to_gtid.as_str()) {
                (0, "") if r.replay_archive => Some(Target::Latest),
                (0, "") => None,
                (t, "") => Some(Target::Time(t)),
                (0, g) => Some(Target::Gtid(
                    GtidState::parse(g).map_err(ControlError::NotConfigured)?,
                )),
                _ => {
                    return Err(ControlError::NotConfigured(
                        "a restore goes to a time or to a GTID, not both".into(),
                    ));
                }
            };
            Outcome {
                state: None,
                fenced: None,
                detail: jobs.start_restore(
                    &r.job_id,
                    &r.backup_id,
                    to,
                    r.exclude_hosts,
                    r.archive_writers,
                )?,
            }
        }
    }))
}

/// The agent's gRPC API.
#[derive(Clone)]
pub(crate) struct AgentApi {
    pub(crate) reports: watch::Receiver<Option<pb::AgentReport>>,
    pub(crate) voter: Arc<LeaseVoter>,
    pub(crate) control: Arc<Controller>,
    pub(crate) jobs: Arc<Jobs>,
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn get_state(
        &self,
        _request: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::AgentReport>, Status> {
        self.reports
            .borrow()
            .clone()
            .map(Response::new)
            .ok_or_else(|| Status::unavailable("no observation of mysqld yet; retry in a moment"))
    }

    async fn execute(
        &self,
        request: Request<pb::CommandRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let caller = request_identity(&request)?;
        let m = request.into_inner();
        let epoch = epoch_field("epoch", m.epoch)?;
        let holder = holder_field("holder", m.holder)?;
        own_holder(&caller, &holder)?;
        let command = m
            .command
            .ok_or(dbfleet_proto::model::ProtocolError::Missing("command"))?;
        let permit = match self.voter.admit(&epoch, &holder).await {
            Ok(p) => p,
            Err(CommandRefused::Stale(stale)) => {
                warn!(sent = %stale.sent, promised = %stale.promised, from = %caller, "refused a command of a stale epoch");
                let mut status =
                    Status::aborted(format!("stale-epoch: {stale}; the sender must step down"));
                if let Ok(v) = MetadataValue::try_from(epoch_to_metadata(&stale.promised)) {
                    status.metadata_mut().insert(PROMISED_EPOCH_METADATA, v);
                }
                return Err(status);
            }
            Err(CommandRefused::Implausible(why)) => {
                warn!(sent = %epoch, from = %caller, "refused a command of an implausible epoch");
                return Err(Status::permission_denied(why));
            }
            Err(CommandRefused::Persist(e)) => return Err(voter_status(e)),
        };
        let name = command.name();
        let promised = permit.promised.clone();
        // Repository housekeeping is admitted under the epoch lock but runs
        // outside it: lease votes wait for that lock, and a bucket or a
        // mount may hang. It changes no roles, and is idempotent.
        let _held = (!repository_only(&command)).then_some(permit);
        let limit = self.control.bound(command_waits(&command));
        let outcome = tokio::time::timeout(limit, run_command(&self.control, &self.jobs, command))
            .await
            .unwrap_or_else(|_| {
                Err(ControlError::Timeout(format!(
                    "mysqld did not answer within {limit:?}; the command was abandoned"
                )))
            })
            .map_err(|e| {
            warn!(command = name, operation = m.operation_id, step = m.step, error = %e, "command failed");
            control_status(e)
        })?;
        let mut reply = pb::CommandReply {
            promised: Some(promised.into()),
            ..Default::default()
        };
        if let Some(o) = outcome {
            info!(
                command = name,
                operation = m.operation_id,
                step = m.step,
                detail = o.detail,
                "command done"
            );
            reply.mysql = o.state.map(pb::MysqlState::from);
            reply.fence_method = match o.fenced {
                None => pb::FenceMethod::Unspecified,
                Some(Fenced::ReadOnly) => pb::FenceMethod::ReadOnly,
                Some(Fenced::Stopped) => pb::FenceMethod::Stopped,
            } as i32;
            reply.detail = o.detail;
        }
        Ok(Response::new(reply))
    }
}

/// The voter's gRPC API (agents and witnesses).
#[derive(Clone)]
pub(crate) struct VoterApi {
    pub(crate) name: String,
    pub(crate) witness: bool,
    pub(crate) voter: Arc<LeaseVoter>,
}

#[tonic::async_trait]
impl VoterService for VoterApi {
    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteReply>, Status> {
        let caller = request_identity(&request)?;
        let req = VoterRequest::try_from(request.into_inner())?;
        let holder = match &req {
            VoterRequest::Prepare { holder, .. }
            | VoterRequest::Renew { holder, .. }
            | VoterRequest::Release { holder, .. } => holder,
        };
        own_holder(&caller, holder)?;
        let reply = self.voter.vote(req).await.map_err(voter_status)?;
        Ok(Response::new(reply.into()))
    }

    async fn get_voter_state(
        &self,
        _request: Request<pb::GetVoterStateRequest>,
    ) -> Result<Response<pb::VoterState>, Status> {
        let s = self.voter.snapshot().await;
        Ok(Response::new(pb::VoterState {
            name: self.name.clone(),
            voter_config_version: s.record.voter_config_version,
            promised: Some(s.record.promised.into()),
            holder: s.record.holder.map(Into::into),
            holder_committed_seq: s.record.holder_committed_seq,
            grant_remaining_ms: s.grant.map(|(_, d)| millis(d)),
            quarantine_remaining_ms: s.quarantine.map(millis),
            witness: self.witness,
        }))
    }
}
