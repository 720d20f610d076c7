//! The coordinator's gRPC services and who may call them.

pub(crate) mod admin;
pub(crate) mod control;
pub(crate) mod report;

use dbfleet_common::identity::Role;

/// Per-RPC authorization of the coordinator, deny by default: agents may
/// only stream reports; viewers, operators and coordinators may read;
/// only operators may change anything.
pub fn policy(path: &str) -> Option<&'static [Role]> {
    const READERS: &[Role] = &[Role::Operator, Role::Viewer, Role::Coordinator];
    match path {
        "/dbfleet.v1.ReportService/StreamReports" => Some(&[Role::Agent]),
        "/dbfleet.v1.AdminService/ListClusters"
        | "/dbfleet.v1.AdminService/ListAgents"
        | "/dbfleet.v1.AdminService/GetCoordinatorStatus"
        | "/dbfleet.v1.AdminService/ListVoters"
        | "/dbfleet.v1.AdminService/ListEvents"
        | "/dbfleet.v1.AdminService/ListAudit"
        | "/dbfleet.v1.AdminService/ListBackups"
        | "/dbfleet.v1.AdminService/GetBackup"
        | "/dbfleet.v1.AdminService/GetRestore"
        | "/dbfleet.v1.AdminService/GetBackupPolicy" => Some(READERS),
        "/dbfleet.v1.AdminService/SetClusterPolicy"
        | "/dbfleet.v1.AdminService/ForgetAgent"
        | "/dbfleet.v1.AdminService/AdmitAgent"
        | "/dbfleet.v1.AdminService/SetVoters"
        | "/dbfleet.v1.AdminService/AcceptOplogGap"
        | "/dbfleet.v1.AdminService/Failover"
        | "/dbfleet.v1.AdminService/Switchover"
        | "/dbfleet.v1.AdminService/SetMaintenance"
        | "/dbfleet.v1.AdminService/SetFailoverPolicy"
        | "/dbfleet.v1.AdminService/SetPromotionRule"
        | "/dbfleet.v1.AdminService/Acknowledge"
        | "/dbfleet.v1.AdminService/RunBackup"
        | "/dbfleet.v1.AdminService/VerifyBackup"
        | "/dbfleet.v1.AdminService/RestoreBackup"
        | "/dbfleet.v1.AdminService/RebuildMember"
        | "/dbfleet.v1.AdminService/SetBackupPolicy" => Some(&[Role::Operator]),
        "/dbfleet.v1.PeerService/Replicate" => Some(&[Role::Coordinator]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_operator_only_and_unknown_paths_denied() {
        let w = policy("/dbfleet.v1.AdminService/SetClusterPolicy").unwrap();
        assert_eq!(w, &[Role::Operator]);
        assert!(
            !policy("/dbfleet.v1.AdminService/ListClusters")
                .unwrap()
                .contains(&Role::Agent)
        );
        assert!(policy("/dbfleet.v1.AdminService/DropEverything").is_none());
        assert!(policy("/dbfleet.v1.AgentService/GetState").is_none());
    }
}
