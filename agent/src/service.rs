//! `AgentService`: what coordinators may ask of this agent.

use dbfleet_common::identity::Role;
use dbfleet_proto::pb;
use dbfleet_proto::pb::agent_service_server::AgentService;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Per-RPC authorization of the agent: only coordinators, deny by default.
pub fn policy(path: &str) -> Option<&'static [Role]> {
    match path {
        "/dbfleet.v1.AgentService/GetState" => Some(&[Role::Coordinator]),
        _ => None,
    }
}

/// The agent's gRPC API.
#[derive(Debug, Clone)]
pub(crate) struct AgentApi {
    pub(crate) reports: watch::Receiver<Option<pb::AgentReport>>,
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
}
