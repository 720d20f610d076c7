//! Mutual TLS and per-RPC authorization against real coordinator and agent
//! processes: identity comes from the certificate, everything not allowed
//! is denied.

use std::sync::Arc;
use std::time::Duration;

use dbfleet_common::identity::Role;
use dbfleet_common::tls::{self, TlsContext, TlsPaths};
use dbfleet_integration_tests::{
    Proc, Slot, TestPki, bin, init, tls_section, toml_path, write_coordinator_config,
};
use dbfleet_proto::pb;
use dbfleet_proto::pb::admin_service_client::AdminServiceClient;
use dbfleet_proto::pb::agent_service_client::AgentServiceClient;
use dbfleet_proto::pb::report_service_client::ReportServiceClient;

struct Setup {
    slot: Slot,
    pki: TestPki,
    coordinator: String,
    _proc: Proc,
}

async fn coordinator() -> Setup {
    init();
    let slot = Slot::claim();
    let pki = TestPki::new(&slot.dir);
    let ip = slot.ip(21);
    let coordinator = format!("{ip}:7200");
    let paths = pki.issue(Role::Coordinator, "c1", &[&ip], false, false);
    let cfg = slot.dir.join("c1.toml");
    write_coordinator_config(&cfg, &coordinator, &slot.dir.join("c1"), &paths, "");
    let mut proc = Proc::start(
        &bin("dbfleet-coordinator"),
        &["--config".into(), cfg.display().to_string()],
        slot.dir.join("c1.log"),
    );
    proc.wait_listening(&coordinator).await;
    Setup {
        slot,
        pki,
        coordinator,
        _proc: proc,
    }
}

fn admin(s: &Setup, paths: &TlsPaths) -> AdminServiceClient<tonic::transport::Channel> {
    let ctx = TlsContext::load(paths).unwrap();
    AdminServiceClient::new(tls::channel(
        ctx,
        &s.coordinator,
        Role::Coordinator,
        Duration::from_secs(3),
    ))
}

fn report(host: &str) -> pb::AgentReport {
    pb::AgentReport {
        host: host.into(),
        cluster: "main".into(),
        agent_instance: "test".into(),
        sequence: 1,
        observed_at_unix_ms: 1,
        agent_version: "test".into(),
        mysql_address: "127.0.0.1:3306".into(),
        mysql: Some(pb::MysqlState {
            reachable: false,
            error: "test".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn send_report(
    s: &Setup,
    paths: &TlsPaths,
    r: pb::AgentReport,
) -> Result<pb::ReportAck, tonic::Status> {
    let ctx: Arc<TlsContext> = TlsContext::load(paths).unwrap();
    let mut client = ReportServiceClient::new(tls::channel(
        ctx,
        &s.coordinator,
        Role::Coordinator,
        Duration::from_secs(3),
    ));
    let mut acks = client
        .stream_reports(tokio_stream::iter(vec![r]))
        .await?
        .into_inner();
    match acks.message().await? {
        Some(ack) => Ok(ack),
        None => Err(tonic::Status::unknown("stream ended without an answer")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_from_another_ca_or_expired_are_refused_at_the_handshake() {
    let s = coordinator().await;
    let good = s.pki.issue(Role::Operator, "alice", &[], false, false);
    admin(&s, &good)
        .list_clusters(pb::ListClustersRequest::default())
        .await
        .expect("valid operator certificate works");

    for (what, paths) in [
        (
            "foreign CA",
            s.pki.issue(Role::Operator, "mallory", &[], true, false),
        ),
        (
            "expired",
            s.pki.issue(Role::Operator, "bob", &[], false, true),
        ),
    ] {
        let err = admin(&s, &paths)
            .list_clusters(pb::ListClustersRequest::default())
            .await
            .expect_err(what);
        // Refused by TLS, before any RPC could be authorized.
        assert_ne!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
        assert_ne!(err.code(), tonic::Code::Ok, "{what}");
    }
    let _ = &s.slot;
}

#[tokio::test(flavor = "multi_thread")]
async fn rpcs_are_authorized_by_role() {
    let s = coordinator().await;
    let agent = s.pki.issue(Role::Agent, "db1", &[], false, false);
    let viewer = s.pki.issue(Role::Viewer, "grafana", &[], false, false);
    let operator = s.pki.issue(Role::Operator, "alice", &[], false, false);

    let e = admin(&s, &agent)
        .list_clusters(pb::ListClustersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    admin(&s, &viewer)
        .list_clusters(pb::ListClustersRequest::default())
        .await
        .expect("viewers may read");
    let change = pb::SetClusterPolicyRequest {
        cluster: "main".into(),
        max_lag_seconds: Some(5),
        ..Default::default()
    };
    let e = admin(&s, &viewer)
        .set_cluster_policy(change.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // Operators pass authorization; this lone coordinator has no voters
    // answering, so it is not active and says where writes must go.
    let e = admin(&s, &operator)
        .set_cluster_policy(change)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not the active coordinator"), "{e:?}");
    let e = admin(&s, &operator)
        .set_cluster_policy(pb::SetClusterPolicyRequest {
            cluster: "main".into(),
            max_lag_seconds: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("max_lag_seconds"), "{e:?}");

    // An operator may not pretend to be an agent.
    let e = send_report(&s, &operator, report("db1")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_may_only_report_about_itself_and_bad_reports_name_the_field() {
    let s = coordinator().await;
    let db1 = s.pki.issue(Role::Agent, "db1", &[], false, false);

    send_report(&s, &db1, report("db1"))
        .await
        .expect("own report accepted");

    let e = send_report(&s, &db1, report("db2")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("db2"), "{e:?}");

    let mut bad = report("db1");
    bad.mysql_address = "no-port".into();
    let e = send_report(&s, &db1, bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("mysql_address"), "{e:?}");

    let mut bad = report("db1");
    bad.mysql = Some(pb::MysqlState {
        reachable: true,
        ..Default::default()
    });
    let e = send_report(&s, &db1, bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("mysql.flavor"), "{e:?}");

    // db2 was never registered by db1's attempt.
    let op = s.pki.issue(Role::Operator, "alice", &[], false, false);
    let agents = admin(&s, &op)
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner();
    let hosts: Vec<&str> = agents.agents.iter().map(|a| a.host.as_str()).collect();
    assert_eq!(hosts, ["db1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_coordinators_may_ask_an_agent_for_its_state() {
    let s = coordinator().await;
    let ip = s.slot.ip(11);
    let agent_addr = format!("{ip}:7100");
    let paths = s.pki.issue(Role::Agent, "db1", &[&ip], false, false);
    let pw = s.slot.dir.join("pw");
    dbfleet_common::certs::write_file(&pw, b"not-used-secret", 0o600, false).unwrap();
    let cfg = s.slot.dir.join("agent.toml");
    // No mysqld listens on this port: the agent reports it unreachable.
    std::fs::write(
        &cfg,
        format!(
            "host = \"db1\"\ncluster = \"main\"\nlisten = {agent_addr:?}\ncoordinators = [{:?}]\n[mysql]\naddress = \"{ip}:3306\"\nuser = \"x\"\npassword_file = {}\n{}",
            s.coordinator,
            toml_path(&pw),
            tls_section(&paths)
        ),
    )
    .unwrap();
    let mut agent = Proc::start(
        &bin("dbfleet-agent"),
        &["--config".into(), cfg.display().to_string()],
        s.slot.dir.join("agent.log"),
    );
    agent.wait_listening(&agent_addr).await;

    let call = |paths: TlsPaths| {
        let addr = agent_addr.clone();
        async move {
            let ctx = TlsContext::load(&paths).unwrap();
            AgentServiceClient::new(tls::channel(
                ctx,
                &addr,
                Role::Agent,
                Duration::from_secs(3),
            ))
            .get_state(pb::GetStateRequest {})
            .await
        }
    };
    let e = call(s.pki.issue(Role::Operator, "alice", &[], false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    let coordinator = s.pki.issue(Role::Coordinator, "c9", &[], false, false);
    let give_up = tokio::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    let state = loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the agent never answered GetState"
        );
        match call(coordinator.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(state.host, "db1");
    let mysql = state.mysql.unwrap();
    assert!(!mysql.reachable && !mysql.error.is_empty(), "{mysql:?}");
    assert!(
        !std::fs::read_to_string(&agent.log)
            .unwrap()
            .contains("not-used-secret")
    );
}
