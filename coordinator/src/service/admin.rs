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
use crate::ha::voters::{self, AgentClients};
use crate::service::control::{Controls, control_view};

/// The admin API.
#[derive(Debug, Clone)]
pub(crate) struct AdminApi {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) ha: Arc<Ha>,
    pub(crate) clients: Arc<AgentClients>,
    pub(crate) coordinator_id: String,
    pub(crate) controls: Controls,
    pub(crate) backups: Arc<crate::backup::Backups>,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn run_backup(
        &self,
        request: Request<pb::RunBackupRequest>,
    ) -> Result<Response<pb::BackupView>, Status> {
        let asked = self.audit.asked(&request)?;
        let done = self.backups.run(request.into_inner()).await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
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
        let asked = self.audit.asked(&request)?;
        let done = self.backups.verify(request.into_inner()).await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
    }

    async fn restore_backup(
        &self,
        request: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreView>, Status> {
        let asked = self.audit.asked(&request)?;
        let done = self.backups.restore(request.into_inner()).await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
    }

    async fn rebuild_member(
        &self,
        request: Request<pb::RebuildMemberRequest>,
    ) -> Result<Response<pb::RestoreView>, Status> {
        let asked = self.audit.asked(&request)?;
        let done = self.backups.rebuild(request.into_inner()).await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
    }

    async fn set_backup_policy(
        &self,
        request: Request<pb::SetBackupPolicyRequest>,
    ) -> Result<Response<pb::BackupPolicy>, Status> {
        let asked = self.audit.asked(&request)?;
        let done = match request.into_inner().policy {
            Some(policy) => self.backups.set_policy(policy).await.map_err(Status::from),
            None => Err(Status::invalid_argument("no policy given")),
        };
        self.audit.done(asked, done).map(Response::new)
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
        let asked = self.audit.asked(&request)?;
        let by = asked.operator.name.clone();
        let done = self
            .controls
            .failovers
            .failover(request.into_inner(), &by)
            .await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
    }

    async fn switchover(
        &self,
        request: Request<pb::SwitchoverRequest>,
    ) -> Result<Response<pb::OperationResult>, Status> {
        let asked = self.audit.asked(&request)?;
        let by = asked.operator.name.clone();
        let done = self
            .controls
            .failovers
            .switchover(request.into_inner(), &by)
            .await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
    }

    async fn set_maintenance(
        &self,
        request: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::ClusterControl>, Status> {
        let asked = self.audit.asked(&request)?;
        let by = asked.operator.name.clone();
        let done = self.controls.maintenance(request.into_inner(), &by).await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
    }

    async fn set_failover_policy(
        &self,
        request: Request<pb::SetFailoverPolicyRequest>,
    ) -> Result<Response<pb::ClusterControl>, Status> {
        let asked = self.audit.asked(&request)?;
        let by = asked.operator.name.clone();
        let done = self.controls.policy(request.into_inner(), &by).await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
    }

    async fn set_promotion_rule(
        &self,
        request: Request<pb::SetPromotionRuleRequest>,
    ) -> Result<Response<pb::ClusterControl>, Status> {
        let asked = self.audit.asked(&request)?;
        let by = asked.operator.name.clone();
        let done = self
            .controls
            .promotion_rule(request.into_inner(), &by)
            .await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::ClusterControl>, Status> {
        let asked = self.audit.asked(&request)?;
        let by = asked.operator.name.clone();
        let done = self.controls.acknowledge(request.into_inner(), &by).await;
        self.audit
            .done(asked, done.map_err(Status::from))
            .map(Response::new)
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
        let mut clusters = crate::service::control::full_views(
            &self.fleet,
            &self.controls.failovers,
            only.as_ref(),
        );
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
        let asked = self.audit.asked(&request)?;
        let done = match ClusterPolicyChange::try_from(request.into_inner()) {
            Ok(change) => self.fleet.set_policy(change).await.map_err(Status::from),
            Err(e) => Err(Status::from(ServiceError::from(e))),
        };
        self.audit.done(asked, done).map(Response::new)
    }

    async fn forget_agent(
        &self,
        request: Request<pb::ForgetAgentRequest>,
    ) -> Result<Response<pb::ForgetAgentResponse>, Status> {
        let asked = self.audit.asked(&request)?;
        let by = asked.operator.name.clone();
        let done = match model::forget_agent_host(request.get_ref()) {
            Ok(host) => self
                .fleet
                .forget_agent(&host, &by)
                .await
                .map_err(Status::from)
                .map(|()| pb::ForgetAgentResponse { forgotten: true }),
            Err(e) => Err(Status::from(ServiceError::from(e))),
        };
        self.audit.done(asked, done).map(Response::new)
    }

    async fn admit_agent(
        &self,
        request: Request<pb::AdmitAgentRequest>,
    ) -> Result<Response<pb::AdmitAgentResponse>, Status> {
        let asked = self.audit.asked(&request)?;
        let by = asked.operator.name.clone();
        let done = match model::AdmitAgent::try_from(request.get_ref()) {
            Ok(admit) => {
                let host = admit.host.to_string();
                self.fleet
                    .admit_agent(admit, &by)
                    .await
                    .map_err(Status::from)
                    .map(|(cluster, mysql_address)| pb::AdmitAgentResponse {
                        host,
                        cluster,
                        mysql_address,
                    })
            }
            Err(e) => Err(Status::from(ServiceError::from(e))),
        };
        self.audit.done(asked, done).map(Response::new)
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
        let asked = self.audit.asked(&request)?;
        let done = self.set_voters_now(request).await;
        self.audit.done(asked, done).map(Response::new)
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        Ok(Response::new(pb::ListAuditResponse {
            entries: self.audit.recent(request.get_ref().limit)?,
            coordinator_id: self.coordinator_id.clone(),
        }))
    }

    async fn accept_oplog_gap(
        &self,
        request: Request<pb::AcceptOplogGapRequest>,
    ) -> Result<Response<pb::CoordinatorStatus>, Status> {
        let asked = self.audit.asked(&request)?;
        let done = self.accept_oplog_gap_now();
        self.audit.done(asked, done).map(Response::new)
    }
}

impl AdminApi {
    async fn set_voters_now(
        &self,
        request: Request<pb::SetVotersRequest>,
    ) -> Result<pb::ListVotersResponse, Status> {
        let next =
            dbfleet_proto::lease::voter_specs(request.get_ref()).map_err(ServiceError::from)?;
        // Run to completion even if the caller goes away, so a joint list
        // is never left half-changed by a dropped request.
        let (ha, fleet, clients) = (self.ha.clone(), self.fleet.clone(), self.clients.clone());
        let change = tokio::spawn(async move { voters::change(&ha, &fleet, &clients, next).await });
        let listed = change.await.map_err(|_| ServiceError::ShuttingDown)??;
        Ok(listed)
    }

    fn accept_oplog_gap_now(&self) -> Result<pb::CoordinatorStatus, Status> {
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
        Ok(self.ha.status())
    }
}
