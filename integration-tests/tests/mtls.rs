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
    coordinator_with("").await
}

/// A coordinator with `extra` in its config.
async fn coordinator_with(extra: &str) -> Setup {
    init();
    let slot = Slot::claim();
    let pki = TestPki::new(&slot.dir);
    let ip = slot.ip(21);
    let coordinator = format!("{ip}:7200");
    let paths = pki.issue(Role::Coordinator, "c1", &[&ip], false, false);
    let cfg = slot.dir.join("c1.toml");
    write_coordinator_config(&cfg, &coordinator, &slot.dir.join("c1"), &paths, extra);
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
    // a mysqld's certificate (its key is readable by the mysql user) may
    // do nothing at all
    let mysqld = s
        .pki
        .issue(Role::Mysql, "db1", &["127.0.0.1"], false, false);
    let e = admin(&s, &mysqld)
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

fn assert_denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, needle: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(needle), "{e:?}");
}

/// An agent obeys only the coordinators its configuration names: another
/// coordinator certificate (a throwaway `coordinator/c9`, say) gets
/// PERMISSION_DENIED for state, commands and votes alike; a listed one
/// may not leap to term `u64::MAX` either; and a name taken out of the
/// configuration is refused after SIGHUP.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_configured_coordinators_may_ask_an_agent_anything() {
    use dbfleet_lease::{Epoch, HolderId, Timing, VoterRequest};
    use dbfleet_proto::pb::voter_service_client::VoterServiceClient;
    let s = coordinator().await;
    let ip = s.slot.ip(11);
    let agent_addr = format!("{ip}:7100");
    let paths = s.pki.issue(Role::Agent, "db1", &[&ip], false, false);
    let pw = s.slot.dir.join("pw");
    dbfleet_common::certs::write_file(&pw, b"not-used-secret", 0o600, false).unwrap();
    let cfg = s.slot.dir.join("agent.toml");
    let config = |coordinators: &str| {
        format!(
            "host = \"db1\"\ncluster = \"main\"\nlisten = {agent_addr:?}\ncoordinators = [{coordinators}]\n[mysql]\naddress = \"{ip}:3306\"\nuser = \"x\"\npassword_file = {}\n{}",
            toml_path(&pw),
            tls_section(&paths)
        )
    };
    // No mysqld listens on this port: the agent reports it unreachable.
    std::fs::write(&cfg, config(&format!("\"c1@{}\"", s.coordinator))).unwrap();
    let mut agent = Proc::start(
        &bin("dbfleet-agent"),
        &["--config".into(), cfg.display().to_string()],
        s.slot.dir.join("agent.log"),
    );
    agent.wait_listening(&agent_addr).await;

    let channel = |paths: &TlsPaths| {
        let ctx = TlsContext::load(paths).unwrap();
        tls::channel(ctx, &agent_addr, Role::Agent, Duration::from_secs(3))
    };
    let state = |paths: TlsPaths| {
        let ch = channel(&paths);
        async move {
            AgentServiceClient::new(ch)
                .get_state(pb::GetStateRequest {})
                .await
        }
    };
    let barrier = |paths: &TlsPaths, name: &str, term: u64| {
        let ch = channel(paths);
        let req = pb::CommandRequest {
            epoch: Some(pb::Epoch {
                term,
                coordinator: name.into(),
            }),
            holder: Some(pb::HolderId {
                coordinator: name.into(),
                incarnation: 1,
            }),
            command: Some(pb::command_request::Command::Barrier(pb::EpochBarrier {})),
            ..Default::default()
        };
        async move { AgentServiceClient::new(ch).execute(req).await }
    };
    let prepare = |paths: &TlsPaths, name: &str, term: u64| {
        let ch = channel(paths);
        let req = dbfleet_proto::lease::vote_request(VoterRequest::Prepare {
            epoch: Epoch {
                term,
                coordinator: name.into(),
            },
            holder: HolderId {
                coordinator: name.into(),
                incarnation: 1,
            },
            timing: Timing::standard(),
            voter_config_version: 0,
        });
        async move { VoterServiceClient::new(ch).vote(req).await }
    };
    let e = state(s.pki.issue(Role::Operator, "alice", &[], false, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    let stray = s.pki.issue(Role::Coordinator, "c9", &[], false, false);
    let not_named = "is not a coordinator this server's configuration names";
    assert_denied(state(stray.clone()).await, not_named);
    assert_denied(barrier(&stray, "c9", 1).await, not_named);
    assert_denied(barrier(&stray, "c9", u64::MAX).await, not_named);
    assert_denied(prepare(&stray, "c9", 1).await, not_named);

    let c1 = s.pki.issue(Role::Coordinator, "c1", &[], false, false);
    let give_up = tokio::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    let answer = loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the agent never answered GetState"
        );
        match state(c1.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(answer.host, "db1");
    let mysql = answer.mysql.unwrap();
    assert!(!mysql.reachable && !mysql.error.is_empty(), "{mysql:?}");
    // A listed coordinator's honest step is obeyed, a leap to the end of
    // the term space is not, and the promise stays where it was.
    barrier(&c1, "c1", 5).await.unwrap();
    assert_denied(barrier(&c1, "c1", u64::MAX).await, "implausibly far above");
    let promised = VoterServiceClient::new(channel(&c1))
        .get_voter_state(pb::GetVoterStateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        promised.promised.as_ref().map(|e| e.term),
        Some(5),
        "{promised:?}"
    );

    // c1 taken out of the configuration, then SIGHUP: refused.
    std::fs::write(&cfg, config(&format!("\"c2@{}\"", s.coordinator))).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let give_up = tokio::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    loop {
        match state(c1.clone()).await {
            Err(e) if e.code() == tonic::Code::PermissionDenied => {
                assert!(e.message().contains(not_named), "{e:?}");
                break;
            }
            _ => {
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "c1 still obeyed after SIGHUP"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(
        !std::fs::read_to_string(&agent.log)
            .unwrap()
            .contains("not-used-secret")
    );
}

/// `dbfleet cert revoke` signs a revocation list; copied next to ca.pem
/// (here: the CA directory itself is the servers' certificate directory)
/// it makes a running coordinator refuse the revoked certificate at the
/// handshake from its next certificate reload on, without a restart, while
/// every other certificate keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_is_refused_by_a_running_server() {
    let s = coordinator_with("cert_reload_interval = \"1s\"").await;
    let alice = s.pki.issue(Role::Operator, "alice", &[], false, false);
    let bob = s.pki.issue(Role::Operator, "bob", &[], false, false);
    let list = |paths: TlsPaths| {
        let mut client = admin(&s, &paths);
        async move { client.list_agents(pb::ListAgentsRequest {}).await }
    };
    list(alice.clone()).await.unwrap();

    let revoke = |args: &[&str]| {
        let out = std::process::Command::new(bin("dbfleet"))
            .args(["cert", "revoke", "--dir", &s.pki.dir.display().to_string()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = revoke(&["--name", "operator/mallory"]);
    assert!(
        !ok && out.contains("issued no certificate to dbfleet://operator/mallory"),
        "{out}"
    );
    let (ok, out) = revoke(&["--name", "operator/alice"]);
    assert!(
        ok && out.contains("(dbfleet://operator/alice)") && out.contains("ca.crl.pem"),
        "{out}"
    );

    let give_up = tokio::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    while list(alice.clone()).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the coordinator still accepts alice's revoked certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    list(bob).await.expect("bob's certificate is not revoked");
    let (ok, out) = revoke(&["--cert", &alice.cert.display().to_string()]);
    assert!(ok && out.contains("already revoked"), "{out}");
}
