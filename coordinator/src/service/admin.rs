//! `AdminService`: what operators and viewers see and change.

use std::sync::Arc;

use dbfleet_proto::model::{self, ClusterPolicyChange};
use dbfleet_proto::pb;
use dbfleet_proto::pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use dbfleet_lease::Role;
use tracing::warn;

use crate::error::ServiceError;
use crate::fleet::Fleet;
use crate::ha::Ha;
use crate::ha::voters::{self, VoterClients};
use crate::service::control::{Controls, control_view};

/// The admin API.
#[derive(Debug, Clone)]
pub(crate) struct AdminApi {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) ha: Arc<Ha>,
    pub(crate) clients: Arc<VoterClients>,
    pub(crate) coordinator_id: String,
    pub(crate) controls: Controls,
    pub(crate) backups: Arc<crate::backup::Backups>,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn run_backup(
        &self,
        request: Request<pb::RunBackupRequest>,
    ) -> Result<Response<pb::BackupView>, Status> {
        Ok(Response::new(self.backups.run(request.into_inner()).await?))
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        Ok(Response::new(pb::ListBackupsResponse {
            backups: self.backups.list(&request.into_inner().cluster),
        }))
    }

    async fn get_backup(
        &self,
        request: Request<pb::GetBackupRequest>,
    ) -> Result<Response<pb::BackupView>, Status> {
        Ok(Response::new(self.backups.get(&request.into_inner().id)?))
    }

    async fn verify_backup(
        &self,
        request: Request<pb::VerifyBackupRequest>,
    ) -> Result<Response<pb::BackupView>, Status> {
        Ok(Response::new(
            self.backups.verify(request.into_inner()).await?,
        ))
    }

    async fn restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreView>, Status> {
        Ok(Response::new(
            self.backups.restore(request.into_inner()).await?,
        ))
    }

    async fn set_backup_policy(
        &self,
        request: Request<pb::SetBackupPolicyRequest>,
    ) -> Result<Response<pb::BackupPolicy>, Status> {
        let policy = request
            .into_inner()
            .policy
            .ok_or_else(|| Status::invalid_argument("no policy given"))?;
        Ok(Response::new(self.backups.set_policy(policy).await?))
    }

    async fn get_backup_policy(
        &self,
        request: Request<pb::GetBackupPolicyRequest>,
    ) -> Result<Response<pb::BackupPolicy>, Status> {
        Ok(Response::new(
            self.backups.get_policy(&request.into_inner().cluster)?,
        ))
    }

    async fn get_restore(
        &self,
        request: Request<pb::GetRestoreRequest>,
    ) -> Result<Response<pb::RestoreView>, Status> {
        Ok(Response::new(
            self.backups.get_restore(&request.into_inner().id)?,
        ))
    }

    async fn failover(
        &self,
        request: Request<pb::FailoverRequest>,
    ) -> Result<Response<pb::OperationResult>, Status> {
        Ok(Response::new(
            self.controls
                .failovers
                .failover(request.into_inner())
                .await?,
        ))
    }

    async fn switchover(
        &self,
        request: Request<pb::SwitchoverRequest>,
    ) -> Result<Response<pb::OperationResult>, Status> {
        Ok(Response::new(
            self.controls
                .failovers
                .switchover(request.into_inner())
                .await?,
        ))
    }

    async fn set_maintenance(
        &self,
        request: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::ClusterControl>, Status> {
        Ok(Response::new(
            self.controls.maintenance(request.into_inner()).await?,
        ))
    }

    async fn set_failover_policy(
        &self,
        request: Request<pb::SetFailoverPolicyRequest>,
    ) -> Result<Response<pb::ClusterControl>, Status> {
        Ok(Response::new(
            self.controls.policy(request.into_inner()).await?,
        ))
    }

    async fn set_promotion_rule(
        &self,
        request: Request<pb::SetPromotionRuleRequest>,
    ) -> Result<Response<pb::ClusterControl>, Status> {
        Ok(Response::new(
            self.controls.promotion_rule(request.into_inner()).await?,
        ))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::ClusterControl>, Status> {
        Ok(Response::new(
            self.controls.acknowledge(request.into_inner()).await?,
        ))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        Ok(Response::new(self.controls.events(request.get_ref())?))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let only = model::cluster_filter(request.get_ref()).map_err(ServiceError::from)?;
        let mut clusters = crate::service::control::full_views(&self.fleet, only.as_ref());
        for c in &mut clusters {
            let rec = self.fleet.cluster_record(&c.name);
            c.control = Some(control_view(
                &rec,
                self.controls.default_budget,
                self.controls.default_window_seconds,
            ));
        }
        Ok(Response::new(pb::ListClustersResponse {
            clusters,
            coordinator_id: self.coordinator_id.clone(),
        }))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Ok(Response::new(pb::ListAgentsResponse {
            agents: self.fleet.agent_views(),
        }))
    }

    async fn set_cluster_policy(
        &self,
        request: Request<pb::SetClusterPolicyRequest>,
    ) -> Result<Response<pb::ClusterPolicy>, Status> {
        let change =
            ClusterPolicyChange::try_from(request.into_inner()).map_err(ServiceError::from)?;
        Ok(Response::new(self.fleet.set_policy(change).await?))
    }

    async fn forget_agent(
        &self,
        request: Request<pb::ForgetAgentRequest>,
    ) -> Result<Response<pb::ForgetAgentResponse>, Status> {
        let host = model::forget_agent_host(request.get_ref()).map_err(ServiceError::from)?;
        self.fleet.forget_agent(&host).await?;
        Ok(Response::new(pb::ForgetAgentResponse { forgotten: true }))
    }

    async fn get_coordinator_status(
        &self,
        _request: Request<pb::GetCoordinatorStatusRequest>,
    ) -> Result<Response<pb::CoordinatorStatus>, Status> {
        Ok(Response::new(self.ha.status()))
    }

    async fn list_voters(
        &self,
        _request: Request<pb::ListVotersRequest>,
    ) -> Result<Response<pb::ListVotersResponse>, Status> {
        Ok(Response::new(voters::list(&self.ha, &self.clients).await))
    }

    async fn set_voters(
        &self,
        request: Request<pb::SetVotersRequest>,
    ) -> Result<Response<pb::ListVotersResponse>, Status> {
        let next =
            dbfleet_proto::lease::voter_specs(request.get_ref()).map_err(ServiceError::from)?;
        // Run to completion even if the caller goes away, so a joint list
        // is never left half-changed by a dropped request.
        let (ha, fleet, clients) = (self.ha.clone(), self.fleet.clone(), self.clients.clone());
        let change = tokio::spawn(async move { voters::change(&ha, &fleet, &clients, next).await });
        let listed = change.await.map_err(|_| ServiceError::ShuttingDown)??;
        Ok(Response::new(listed))
    }

    async fn accept_oplog_gap(
        &self,
        _request: Request<pb::AcceptOplogGapRequest>,
    ) -> Result<Response<pb::CoordinatorStatus>, Status> {
        match self.ha.role() {
            Role::ActiveDegraded => {
                let required = self.ha.holder().required_seq();
                warn!(
                    applied = self.ha.applied(),
                    required,
                    "operator accepted losing the previous active's last desired-state changes"
                );
                self.ha.holder().accept_gap();
            }
            Role::Active => {}
            Role::Standby | Role::Candidate => return Err(Status::from(self.ha.not_active())),
        }
        Ok(Response::new(self.ha.status()))
    }
}
