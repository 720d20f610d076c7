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

/// The admin API.
#[derive(Debug, Clone)]
pub(crate) struct AdminApi {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) ha: Arc<Ha>,
    pub(crate) clients: Arc<VoterClients>,
    pub(crate) coordinator_id: String,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let only = model::cluster_filter(request.get_ref()).map_err(ServiceError::from)?;
        Ok(Response::new(pb::ListClustersResponse {
            clusters: self.fleet.cluster_views(only.as_ref()),
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
