//! Membership is an operator decision, against real processes: a fleet
//! whose coordinators leave admission to the operator (as `dbfleet sandbox
//! up` and a production fleet do). A newly issued agent certificate
//! reporting for the cluster, claiming it still receives from the primary,
//! has no voice and does not hold a failover back; a forgotten agent stays
//! out while it keeps reporting; an agent whose configuration names another
//! cluster counts as silent where it was admitted until an operator moves
//! it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dbfleet_common::identity::Role;
use dbfleet_common::tls::{self, TlsContext, TlsPaths};
use dbfleet_integration_tests::{TestFleet, init};
use dbfleet_proto::pb;
use dbfleet_proto::pb::report_service_client::ReportServiceClient;

/// Runs `dbfleet ARGS`, asserting success; returns stdout.
fn ok(fleet: &TestFleet, args: &[&str]) -> String {
    let out = fleet.cli(args);
    assert!(
        out.status.success(),
        "dbfleet {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dbfleet agents move HOST --cluster C --mysql-address A`, asserting
/// success.
fn move_agent(fleet: &TestFleet, host: &str, cluster: &str, address: &str) {
    ok(
        fleet,
        &[
            "agents",
            "move",
            host,
            "--cluster",
            cluster,
            "--mysql-address",
            address,
        ],
    );
}

/// `dbfleet agents`: host → (standing, standing_detail).
fn standings(fleet: &TestFleet) -> Vec<(String, String, String)> {
    let (_, v) = fleet.cli_json(&["agents"]);
    v["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (s("host"), s("standing"), s("standing_detail"))
        })
        .collect()
}

fn hosts(view: &pb::ClusterView) -> Vec<&str> {
    view.members.iter().map(|m| m.host.as_str()).collect()
}

fn not_a_member<'a>(view: &'a pb::ClusterView, host: &str) -> Option<&'a pb::Problem> {
    view.problems
        .iter()
        .find(|p| p.kind == "agent-not-a-member" && p.host == host)
}

/// Reports as `host`, with `paths`' certificate, to `coordinator` twice a
/// second: a replica of `source` whose threads run, lag 0.
async fn claim_to_replicate(paths: TlsPaths, coordinator: String, host: String, source: String) {
    let ctx = TlsContext::load(&paths).expect("the new agent certificate loads");
    let mut client = ReportServiceClient::new(tls::channel(
        ctx,
        &coordinator,
        Role::Coordinator,
        Duration::from_secs(3),
    ));
    let (host_ip, port) = source.rsplit_once(':').expect("host:port");
    let (host_ip, port): (String, u32) = (host_ip.to_string(), port.parse().expect("port"));
    let report = move |sequence: u64| pb::AgentReport {
        host: host.clone(),
        cluster: "main".into(),
        agent_instance: "impostor".into(),
        sequence,
        observed_at_unix_ms: dbfleet_common::clock::unix_ms(),
        agent_version: "0.1.0".into(),
        mysql_address: "127.0.0.1:3399".into(),
        mysql: Some(pb::MysqlState {
            reachable: true,
            version: "10.11.6-MariaDB".into(),
            flavor: pb::Flavor::Mariadb as i32,
            server_id: 99,
            read_only: true,
            super_read_only: true,
            replication: Some(pb::ReplicationStatus {
                source_host: host_ip.clone(),
                source_port: port,
                io_thread: pb::IoThreadState::Running as i32,
                sql_running: true,
                seconds_behind: Some(0),
                auto_position: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sequence = Arc::new(AtomicU64::new(0));
    // Reconnects whatever happens: the claim goes on all test long.
    loop {
        let (report, sequence) = (report.clone(), sequence.clone());
        let reports = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
                Duration::from_millis(500),
            )),
            move |_| report(sequence.fetch_add(1, Ordering::Relaxed) + 1),
        );
        if let Ok(acks) = client.stream_reports(reports).await {
            let mut acks = acks.into_inner();
            while let Ok(Some(_)) = acks.message().await {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn membership_is_decided_by_operators_not_by_certificates_or_reports() {
    init();
    let mut fleet = TestFleet::start_spec(2, 2, |s| s.operator_admission = true).await;
    // The sandbox admitted its agents as an operator does, attributed.
    for (host, standing, _) in standings(&fleet) {
        assert_eq!(standing, "member", "{host}");
    }
    let audit = ok(&fleet, &["audit", "--output", "json"]);
    assert!(
        audit.contains("admitting agent db1 where it reports"),
        "{audit}"
    );

    // A new agent certificate, as anyone with the CA's directory issues it.
    let certs = fleet.dir.join("certs");
    let issued = ok(
        &fleet,
        &[
            "cert",
            "issue",
            "--dir",
            certs.to_str().unwrap(),
            "--role",
            "agent",
            "--name",
            "db9",
        ],
    );
    // "issued dbfleet://agent/db9: CERT (key KEY)"
    let (cert, key) = issued
        .trim()
        .split_once(": ")
        .and_then(|(_, files)| files.strip_suffix(')')?.split_once(" (key "))
        .unwrap_or_else(|| panic!("unexpected output of cert issue: {issued}"));
    let paths = TlsPaths {
        ca: certs.join("ca.pem"),
        cert: cert.into(),
        key: key.into(),
    };
    let db1 = fleet.info.members.iter().find(|m| m.host == "db1").unwrap();
    let source = format!("{}:{}", db1.address, db1.mysql_port);
    let impostors: Vec<_> = fleet
        .info
        .coordinators
        .iter()
        .map(|c| {
            tokio::spawn(claim_to_replicate(
                paths.clone(),
                c.address.clone(),
                "db9".into(),
                source.clone(),
            ))
        })
        .collect();
    let view = fleet
        .wait_until("db9 shown without a voice", |c| {
            not_a_member(c, "db9").is_some()
        })
        .await;
    assert_eq!(hosts(&view), ["db1", "db2", "db3"]);
    let p = not_a_member(&view, "db9").unwrap();
    assert!(
        p.message.contains("dbfleet agents admit db9"),
        "{}",
        p.message
    );
    assert!(
        standings(&fleet)
            .iter()
            .any(|(h, s, d)| h == "db9" && s == "awaiting admission" && d.contains("no voice")),
        "{:?}",
        standings(&fleet)
    );

    // A forgotten agent stays out although it keeps reporting.
    ok(&fleet, &["agents", "forget", "db3"]);
    let view = fleet
        .wait_until("db3 forgotten", |c| {
            hosts(c) == ["db1", "db2"] && not_a_member(c, "db3").is_some()
        })
        .await;
    assert!(
        not_a_member(&view, "db3")
            .unwrap()
            .message
            .contains("forgotten by sandbox"),
        "{view:?}"
    );
    let out = ok(&fleet, &["agents", "admit", "db3"]);
    assert!(out.contains("db3 admitted to cluster main"), "{out}");
    fleet
        .wait_until("db3 a member again", |c| {
            hosts(c) == ["db1", "db2", "db3"]
                && c.members.iter().all(|m| m.reporting)
                && not_a_member(c, "db3").is_none()
        })
        .await;

    // A typo in db3's cluster: it stays counted, silent, where it was
    // admitted, until an operator moves it.
    fleet
        .restart_agent_with("db3", "cluster", "cluster = \"mian\"")
        .await;
    let view = fleet
        .wait_until("db3 counted as silent in main", |c| {
            c.members.iter().any(|m| m.host == "db3" && !m.reporting)
        })
        .await;
    assert!(
        standings(&fleet)
            .iter()
            .any(|(h, s, _)| h == "db3" && s == "admitted elsewhere"),
        "{view:?}"
    );
    let db3 = fleet.info.members.iter().find(|m| m.host == "db3").unwrap();
    let db3_address = format!("{}:{}", db3.address, db3.mysql_port);
    move_agent(&fleet, "db3", "mian", &db3_address);
    fleet
        .wait_cluster("mian", "db3 moved to mian", |c| {
            hosts(c) == ["db3"] && c.members[0].reporting
        })
        .await;
    fleet
        .restart_agent_with("db3", "cluster", "cluster = \"main\"")
        .await;
    move_agent(&fleet, "db3", "main", &db3_address);
    fleet
        .wait_until("db3 back in main", |c| {
            hosts(c) == ["db1", "db2", "db3"] && c.members.iter().all(|m| m.reporting)
        })
        .await;

    // The primary's mysqld dies while db9 still claims to receive from it:
    // db9 has no voice, so the failover goes ahead.
    fleet.kill("mariadbd-db1");
    let view = fleet
        .wait_until("a new primary", |c| {
            c.primary == "db2" || c.primary == "db3"
        })
        .await;
    assert!(!hosts(&view).contains(&"db9"));
    assert!(not_a_member(&view, "db9").is_some(), "db9 still reports");
    for i in impostors {
        i.abort();
    }
}
