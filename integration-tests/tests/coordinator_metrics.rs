//! The coordinators' `/metrics` with real processes: the fleet as both
//! coordinators derive it (health, writable members, roles, problems,
//! agents connected), and what the active counted (a failover by its
//! outcome, detections that did and did not lead to one).

use std::time::Duration;

use dbfleet_integration_tests::{PATIENCE, TestFleet, sample, scrape};

/// Scrapes of every coordinator, in the fleet's order.
fn scrapes(fleet: &TestFleet) -> Vec<String> {
    fleet
        .info
        .coordinators
        .iter()
        .map(|c| scrape(&c.metrics_address))
        .collect()
}

/// The sum of `name{labels}` over both coordinators (a counter of the
/// fleet: each counts what it ran itself).
fn total(scrapes: &[String], name: &str, labels: &[(&str, &str)]) -> f64 {
    scrapes
        .iter()
        .map(|s| sample(s, name, labels).unwrap_or(0.0))
        .sum()
}

/// Waits until `done` holds for the scrapes of both coordinators.
async fn wait_scrapes(
    fleet: &TestFleet,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let give_up = std::time::Instant::now() + PATIENCE;
    loop {
        let s = scrapes(fleet);
        if done(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "timed out waiting for {what}; scrapes:\n{}",
            s.join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn each(scrapes: &[String], name: &str, labels: &[(&str, &str)], want: f64) -> bool {
    scrapes
        .iter()
        .all(|s| sample(s, name, labels) == Some(want))
}

#[tokio::test]
async fn coordinators_export_the_fleet_and_count_failovers_and_skipped_detections() {
    let mut fleet = TestFleet::start_active(2, 2).await;
    let healthy = wait_scrapes(&fleet, "a healthy fleet on both coordinators", |s| {
        each(
            s,
            "dbfleet_coordinator_clusters",
            &[("health", "healthy")],
            1.0,
        ) && each(s, "dbfleet_coordinator_agents_connected", &[], 3.0)
    })
    .await;
    for s in &healthy {
        let main = [("cluster", "main")];
        assert_eq!(
            sample(s, "dbfleet_coordinator_cluster_writable_members", &main),
            Some(1.0)
        );
        assert_eq!(
            sample(s, "dbfleet_coordinator_cluster_primary_up", &main),
            Some(1.0)
        );
        assert_eq!(
            sample(
                s,
                "dbfleet_coordinator_cluster_members",
                &[("cluster", "main"), ("role", "replica")]
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                s,
                "dbfleet_coordinator_cluster_health",
                &[("cluster", "main"), ("health", "critical")]
            ),
            Some(0.0)
        );
        for host in ["db1", "db2", "db3"] {
            assert_eq!(
                sample(s, "dbfleet_coordinator_member_reporting", &[("host", host)]),
                Some(1.0),
                "{host} reporting"
            );
        }
        assert_eq!(
            sample(s, "dbfleet_coordinator_agents_registered", &[]),
            Some(3.0)
        );
        assert!(
            sample(
                s,
                "dbfleet_coordinator_report_processing_seconds_count",
                &[]
            )
            .unwrap_or(0.0)
                > 0.0,
            "reports counted: {s}"
        );
        assert!(
            !s.contains("dbfleet_coordinator_problems{"),
            "no problem yet: {s}"
        );
    }
    // A problem shows while it lasts and is gone from the next scrape.
    fleet.sql("db3", "STOP SLAVE IO_THREAD").await.unwrap();
    wait_scrapes(&fleet, "the stopped IO thread as a problem", |s| {
        each(
            s,
            "dbfleet_coordinator_problems",
            &[("problem", "replica-io-stopped")],
            1.0,
        ) && each(
            s,
            "dbfleet_coordinator_clusters",
            &[("health", "degraded")],
            1.0,
        )
    })
    .await;
    fleet.sql("db3", "START SLAVE IO_THREAD").await.unwrap();
    wait_scrapes(&fleet, "the problem gone", |s| {
        s.iter()
            .all(|s| !s.contains("problem=\"replica-io-stopped\""))
            && each(
                s,
                "dbfleet_coordinator_clusters",
                &[("health", "healthy")],
                1.0,
            )
    })
    .await;

    // A failover: counted once, by outcome, on the coordinator that ran it.
    fleet.kill("mariadbd-db1");
    let after = wait_scrapes(&fleet, "a completed failover counted", |s| {
        total(
            s,
            "dbfleet_coordinator_operations_total",
            &[("kind", "failover"), ("outcome", "completed")],
        ) == 1.0
            && each(
                s,
                "dbfleet_coordinator_cluster_primary_up",
                &[("cluster", "main")],
                1.0,
            )
    })
    .await;
    assert_eq!(
        total(
            &after,
            "dbfleet_coordinator_detections_total",
            &[("outcome", "failover")]
        ),
        1.0
    );
    let primary = fleet
        .wait_until("a new primary", |c| {
            !c.primary.is_empty() && c.primary != "db1"
        })
        .await
        .primary;
    // The old primary rejoins, so a majority of replicas can confirm the
    // next loss.
    fleet.start_mysqld("db1").unwrap();
    fleet
        .wait_until("db1 replicating from the new primary", |c| {
            let m = dbfleet_integration_tests::member(c, "db1");
            m.io_running && m.sql_running && !m.writable
        })
        .await;

    // In maintenance a dead primary is a detection that leads nowhere:
    // counted as skipped, and no second failover.
    let out = fleet.cli(&["maintenance", "on", "--cluster", "main"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet.kill(&format!("mariadbd-{primary}"));
    let skipped = wait_scrapes(&fleet, "a skipped detection counted", |s| {
        total(
            s,
            "dbfleet_coordinator_detections_total",
            &[("outcome", "skipped")],
        ) == 1.0
            && each(
                s,
                "dbfleet_coordinator_cluster_primary_up",
                &[("cluster", "main")],
                0.0,
            )
    })
    .await;
    for s in &skipped {
        assert_eq!(
            sample(
                s,
                "dbfleet_coordinator_cluster_health",
                &[("cluster", "main"), ("health", "critical")]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        total(
            &skipped,
            "dbfleet_coordinator_operations_total",
            &[("kind", "failover")]
        ),
        1.0,
        "no failover in maintenance"
    );
    let (ok, events) = fleet.cli_json(&["events", "--cluster", "main"]);
    assert!(ok);
    assert!(
        events.to_string().contains("failover-skipped"),
        "the skip is in the history: {events}"
    );
}

/// With `metrics_tls = true` a coordinator serves `/metrics` only over
/// mutual TLS with its own certificates: a viewer certificate of the fleet
/// CA reads the fleet, an agent certificate gets 403 naming the roles that
/// may, and plain HTTP gets no answer.
#[tokio::test]
async fn coordinator_metrics_over_mutual_tls_need_a_scraper_certificate() {
    use dbfleet_common::identity::Role;
    use dbfleet_integration_tests::{plain_http_answer, scraper_certificate, tls_scrape};

    let mut fleet = TestFleet::start(1, 1).await;
    let address = fleet.coordinator("c1").metrics_address;
    let config = fleet.dir.join("coordinator-c1.toml");
    fleet.stop("coordinator-c1", Duration::from_secs(5));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("metrics_tls = true\n{text}")).unwrap();
    fleet.start_coordinator("c1").unwrap();
    fleet
        .wait_listening("coordinator-c1", &address, PATIENCE)
        .await
        .unwrap();

    let viewer = scraper_certificate(&fleet.dir, Role::Viewer, "prometheus");
    let agent = scraper_certificate(&fleet.dir, Role::Agent, "db9");

    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = tls_scrape(&viewer, &address, Role::Coordinator, "c1").await;
        assert!(text.starts_with("HTTP/1.0 200"), "{text}");
        if sample(&text, "dbfleet_coordinator_agents_connected", &[]) == Some(2.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the agents never showed over TLS:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = tls_scrape(&agent, &address, Role::Coordinator, "c1").await;
    assert!(refused.starts_with("HTTP/1.0 403"), "{refused}");
    assert!(
        refused.contains("dbfleet://agent/db9") && refused.contains("viewer"),
        "{refused}"
    );
    assert!(!refused.contains("dbfleet_coordinator"), "{refused}");

    let answer = plain_http_answer(&address);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP answered: {}",
        String::from_utf8_lossy(&answer)
    );
}
