//! Everything a peer sends that this crate decodes and validates — agent
//! reports, lease votes, admin requests — fed mutated messages (bytes
//! overwritten, cut short, garbage appended): each decodes and validates
//! to a value or an error, never a panic. Each property runs a bounded
//! number of cases; proptest keeps a failing input in
//! `proptest-regressions/` so that it is tried first from then on.

use dbfleet_common::mutation::mutated;
use dbfleet_lease::{Epoch, HolderId, Timing, VoterRequest};
use dbfleet_proto::model::{self, ClusterPolicyChange, Report};
use dbfleet_proto::pb;
use proptest::prelude::*;
use prost::Message;

fn report() -> pb::AgentReport {
    pb::AgentReport {
        host: "db2".into(),
        cluster: "main".into(),
        agent_instance: "0123456789abcdef".into(),
        sequence: 7,
        observed_at_unix_ms: 1_795_249_382_861,
        agent_version: "0.1.0".into(),
        mysql_address: "127.0.0.12:3306".into(),
        mysql: Some(pb::MysqlState {
            reachable: true,
            version: "10.11.19-MariaDB-0+deb12u1-log".into(),
            flavor: pb::Flavor::Mariadb as i32,
            server_id: 12,
            read_only: true,
            gtid: Some(pb::GtidState {
                executed: "0-11-41".into(),
                current_pos: "0-11-41".into(),
                binlog_pos: "0-11-41".into(),
                slave_pos: "0-11-41".into(),
            }),
            replication: Some(pb::ReplicationStatus {
                source_host: "127.0.0.11".into(),
                source_port: 3306,
                ..Default::default()
            }),
            replicas_connected: 1,
            replica_server_ids: vec![13],
            ..Default::default()
        }),
        agent_address: "127.0.0.12:7100".into(),
        report_interval_ms: 1000,
        jobs: vec![pb::Job {
            id: "main-20261207T060000Z-db2".into(),
            kind: "backup".into(),
            state: "completed".into(),
            detail: "done".into(),
            manifest_json: "{\"id\":\"b1\"}".into(),
            ..Default::default()
        }],
        config_problems: vec![pb::ConfigProblem {
            kind: "starts-writable".into(),
            message: "would restart writable".into(),
        }],
        ..Default::default()
    }
}

fn votes() -> Vec<pb::VoteRequest> {
    let epoch = Epoch {
        term: 5,
        coordinator: "c1".into(),
    };
    let holder = HolderId {
        coordinator: "c1".into(),
        incarnation: 9,
    };
    [
        VoterRequest::Prepare {
            epoch: epoch.clone(),
            holder: holder.clone(),
            timing: Timing::standard(),
            voter_config_version: 2,
        },
        VoterRequest::Renew {
            epoch: epoch.clone(),
            holder: holder.clone(),
            timing: Timing::standard(),
            voter_config_version: 2,
            committed_seq: 40,
        },
        VoterRequest::Release { epoch, holder },
    ]
    .into_iter()
    .map(dbfleet_proto::lease::vote_request)
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn a_mutated_report_is_refused_or_accepted_never_a_panic(
        bytes in mutated(report().encode_to_vec())
    ) {
        if let Ok(m) = pb::AgentReport::decode(bytes.as_slice()) {
            let _ = Report::try_from(m);
        }
    }

    #[test]
    fn a_mutated_vote_is_refused_or_accepted_never_a_panic(
        which in 0..3usize,
        edit in any::<u64>(),
    ) {
        let seed = votes()[which].encode_to_vec();
        let runner_bytes = mutate_with(&seed, edit);
        if let Ok(m) = pb::VoteRequest::decode(runner_bytes.as_slice()) {
            let _ = VoterRequest::try_from(m);
        }
    }

    #[test]
    fn mutated_admin_requests_are_refused_or_accepted_never_a_panic(
        policy in mutated(pb::SetClusterPolicyRequest {
            mysql_tls: Some("required".into()),
            cluster: "main".into(),
            max_lag_seconds: Some(30),
            replica_heartbeat_ms: Some(1000),
            replica_net_timeout_ms: Some(4000),
            semi_sync: Some("lossless".into()),
        }.encode_to_vec()),
        voters in mutated(pb::SetVotersRequest {
            voters: vec![pb::VoterSpec {
                name: "db1".into(),
                address: "127.0.0.11:7100".into(),
                weight: 1,
            }],
        }.encode_to_vec()),
        names in mutated(pb::ForgetAgentRequest { host: "db9".into() }.encode_to_vec()),
        admit in mutated(pb::AdmitAgentRequest {
            host: "db9".into(),
            cluster: "main".into(),
            mysql_address: "10.0.0.9:3306".into(),
        }.encode_to_vec()),
    ) {
        if let Ok(m) = pb::SetClusterPolicyRequest::decode(policy.as_slice()) {
            let _ = ClusterPolicyChange::try_from(m);
        }
        if let Ok(m) = pb::SetVotersRequest::decode(voters.as_slice()) {
            let _ = dbfleet_proto::lease::voter_specs(&m);
        }
        if let Ok(m) = pb::ForgetAgentRequest::decode(names.as_slice()) {
            let _ = model::forget_agent_host(&m);
            let _ = model::cluster_filter(&pb::ListClustersRequest { cluster: m.host });
        }
        if let Ok(m) = pb::AdmitAgentRequest::decode(admit.as_slice()) {
            let _ = model::AdmitAgent::try_from(&m);
        }
    }
}

/// A cheap deterministic mutation of `seed` from one number (for the
/// small vote messages, where three seeds share one property).
fn mutate_with(seed: &[u8], edit: u64) -> Vec<u8> {
    let mut b = seed.to_vec();
    if b.is_empty() {
        return b;
    }
    let at = (edit as usize) % b.len();
    b[at] = (edit >> 8) as u8;
    let cut = ((edit >> 16) as usize) % (b.len() + 1);
    if edit & (1 << 40) != 0 {
        b.truncate(cut);
    }
    b
}
