//! A real fleet: three mariadbd in GTID replication, an agent each, two
//! coordinators, all over mTLS. Faults are real: STOP SLAVE, kill -9 of a
//! mysqld, restarts of an agent and of a coordinator.

use std::time::Duration;

use dbfleet_cli::client::Client;
use dbfleet_integration_tests::{TestFleet, has_problem, member};
use dbfleet_proto::pb;

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_one_writable_primary_and_replicating_replicas() {
    let fleet = TestFleet::start(2, 2).await;

    // Writes on the primary reach both replicas, and status shows it.
    fleet
        .sql("db1", "CREATE TABLE app.t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    fleet
        .sql("db1", "INSERT INTO app.t VALUES (1), (2)")
        .await
        .unwrap();
    fleet
        .wait_until("replicas caught up", |c| {
            let p = member(c, "db1").gtid_executed.clone();
            !p.is_empty() && c.members.iter().all(|m| m.gtid_executed == p)
        })
        .await;

    let v = fleet.status_json();
    let clusters = v["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1);
    let c = &clusters[0];
    assert_eq!(c["name"], "main");
    assert_eq!(c["primary"], "db1");
    assert_eq!(c["problems"].as_array().unwrap().len(), 0, "{c}");
    let members = c["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        let primary = m["host"] == "db1";
        assert_eq!(
            m["role"],
            if primary { "primary" } else { "replica" },
            "{m}"
        );
        assert_eq!(m["writable"], primary, "{m}");
        assert_eq!(m["reachable"], true, "{m}");
        assert_eq!(m["io_running"], !primary, "{m}");
        assert_eq!(m["sql_running"], !primary, "{m}");
        assert!(
            m["gtid_executed"].as_str().unwrap().starts_with("0-1-"),
            "{m}"
        );
        if primary {
            assert!(m["lag_seconds"].is_null());
        } else {
            assert!(m["lag_seconds"].is_u64());
        }
    }

    let table = fleet.cli(&["status"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("cluster main  primary db1  healthy"),
        "{text}"
    );

    // No secret reaches any log of any process.
    let logs = fleet.all_logs();
    for secret in fleet.credentials.all() {
        assert!(!logs.contains(secret), "a password appears in the logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_replication_is_reported_and_clears() {
    let fleet = TestFleet::start(2, 1).await;
    fleet.sql("db2", "STOP SLAVE").await.unwrap();
    let c = fleet
        .wait_until("db2 flagged", |c| {
            has_problem(c, "replica-io-stopped", "db2")
        })
        .await;
    assert!(
        has_problem(&c, "replica-sql-stopped", "db2"),
        "{:?}",
        c.problems
    );
    let m = member(&c, "db2");
    assert!(!m.io_running && !m.sql_running);
    assert_eq!(
        m.role,
        pb::MemberRole::Replica as i32,
        "a stopped replica is still a replica"
    );
    assert!(!has_problem(&c, "replica-io-stopped", "db3"));

    fleet.sql("db2", "START SLAVE").await.unwrap();
    fleet
        .wait_until("db2 recovered", |c| c.problems.is_empty())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_replica_mysqld_is_unreachable_while_its_agent_keeps_reporting() {
    let mut fleet = TestFleet::start(2, 1).await;
    fleet.kill("mariadbd-db3");
    let c = fleet
        .wait_until("db3 unreachable", |c| {
            has_problem(c, "mysql-unreachable", "db3")
        })
        .await;
    let m = member(&c, "db3");
    assert!(!m.reachable && m.reporting, "{m:?}");
    assert_eq!(
        m.role,
        pb::MemberRole::Replica as i32,
        "a replica whose mysqld is down stays a replica"
    );

    // The agent keeps reporting: the coordinator accepts newer reports
    // while the server is down.
    let client = fleet.client().unwrap();
    let seq = |agents: &pb::ListAgentsResponse| {
        agents
            .agents
            .iter()
            .find(|a| a.host == "db3")
            .unwrap()
            .last_sequence
    };
    let first = seq(&client.list_agents().await.unwrap());
    let give_up = tokio::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "db3's agent did not go on reporting"
        );
        let now = client.list_agents().await.unwrap();
        let c = client.list_clusters(None).await.unwrap();
        let m = member(&c.clusters[0], "db3");
        assert!(!m.reachable && m.reporting, "{m:?}");
        if seq(&now) >= first + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    fleet.start_mysqld("db3").unwrap();
    fleet
        .wait_until("db3 back and replicating", |c| {
            let m = member(c, "db3");
            m.reachable && m.io_running && m.sql_running && c.problems.is_empty()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_agent_reports_again_as_a_new_instance() {
    let mut fleet = TestFleet::start(1, 1).await;
    let client = fleet.client().unwrap();
    let instance = |r: &pb::ListAgentsResponse| {
        r.agents
            .iter()
            .find(|a| a.host == "db2")
            .unwrap()
            .agent_instance
            .clone()
    };
    let before = instance(&client.list_agents().await.unwrap());

    fleet.stop("agent-db2", Duration::from_secs(10));
    let c = fleet
        .wait_until("db2 silent", |c| {
            has_problem(c, "agent-not-reporting", "db2")
        })
        .await;
    assert!(!member(&c, "db2").reporting);

    fleet.start_agent("db2").unwrap();
    fleet
        .wait_until("db2 healthy again", |c| c.problems.is_empty())
        .await;
    let after = instance(&client.list_agents().await.unwrap());
    assert_ne!(
        before, after,
        "the restarted agent is a new process instance"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_and_restarted_keeps_registrations_and_agents_reconnect() {
    let mut fleet = TestFleet::start(2, 2).await;
    // With every agent stopped, whatever the restarted coordinator knows
    // about them can only come from its store.
    for host in ["db1", "db2", "db3"] {
        fleet.stop(&format!("agent-{host}"), Duration::from_secs(10));
    }
    fleet.kill("coordinator-c1");

    // Status keeps working through the other coordinator.
    let v = fleet.status_json();
    assert_eq!(v["coordinator"], "c2");

    fleet.start_coordinator("c1").unwrap();
    let c1_address = fleet.info.coordinators[0].address.clone();
    fleet
        .wait_listening("coordinator-c1", &c1_address, Duration::from_secs(60))
        .await
        .unwrap();

    let only_c1 = fleet.dir.join("only-c1.toml");
    let text = std::fs::read_to_string(fleet.cli_config()).unwrap();
    let c2 = &fleet.info.coordinators[1].address;
    std::fs::write(&only_c1, text.replace(&format!(", \"{c2}\""), "")).unwrap();
    let c1 = Client::from_file(Some(&only_c1)).unwrap();
    let agents = c1.list_agents().await.unwrap();
    let mut hosts: Vec<&str> = agents.agents.iter().map(|a| a.host.as_str()).collect();
    hosts.sort_unstable();
    assert_eq!(
        hosts,
        ["db1", "db2", "db3"],
        "registrations survive kill -9"
    );
    for a in &agents.agents {
        assert!(
            a.last_report_age_ms.is_none() && !a.connected,
            "known from sled, not from a report: {a:?}"
        );
    }

    // The agents come back and report to both coordinators again.
    for host in ["db1", "db2", "db3"] {
        fleet.start_agent(host).unwrap();
    }
    let start = std::time::Instant::now();
    loop {
        let r = c1.list_clusters(None).await.unwrap();
        if dbfleet_cli::sandbox::healthy(&r, &fleet.info) {
            break;
        }
        assert!(
            start.elapsed() < dbfleet_integration_tests::PATIENCE,
            "agents did not report to c1: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet
        .wait_healthy(dbfleet_integration_tests::PATIENCE)
        .await
        .unwrap();
}
