//! The agent's `/metrics` against real MariaDB: mysqld_exporter's core
//! names and the HA families, host metrics, a replica's lag and receive
//! age, a scrape that answers while a metadata lock piles up on the server,
//! `mysql_up` going to 0 when mysqld is killed while the endpoint keeps
//! answering, and the endpoint over mutual TLS.

use std::path::Path;
use std::time::{Duration, Instant};

use dbfleet_common::identity::Role;
use dbfleet_integration_tests::{
    PATIENCE, TestFleet, plain_http_answer, sample, scrape, scraper_certificate, tls_scrape,
};
use mysql_async::prelude::Queryable;

/// Scrapes `host`'s agent until `done` holds for the scrape, which it
/// returns.
async fn wait_scrape(
    fleet: &TestFleet,
    host: &str,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let address = metrics_of(fleet, host);
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = scrape(&address);
        if done(&text) {
            return text;
        }
        if tokio::time::Instant::now() >= give_up {
            panic!("timed out waiting for {what} on {host}'s metrics:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where `host`'s agent serves `/metrics` (from `sandbox.json`).
fn metrics_of(fleet: &TestFleet, host: &str) -> String {
    fleet
        .info
        .members
        .iter()
        .find(|m| m.host == host)
        .map(|m| m.metrics_address.clone())
        .unwrap_or_else(|| panic!("no member {host}"))
}

#[tokio::test]
async fn an_agent_exports_mysqld_exporter_names_and_ha_metrics_of_real_mariadb() {
    let mut fleet = TestFleet::start_active(1, 1).await;
    let db1 = [("cluster", "main"), ("host", "db1")];
    let db2 = [("cluster", "main"), ("host", "db2")];

    // The primary: mysqld_exporter's core names, and replication
    // configured present as 0.
    let text = wait_scrape(&fleet, "db1", "a collection", |t| {
        sample(t, "mysql_up", &[]) == Some(1.0)
    })
    .await;
    // A Prometheus scrape asks for gzip and gets it.
    {
        use std::io::{Read, Write};
        let addr = metrics_of(&fleet, "db1");
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept-Encoding: gzip\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let head = String::from_utf8_lossy(&out[..out.len().min(512)]).to_ascii_lowercase();
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert!(
            out.len() < text.len() / 2,
            "compressed: {} of {} bytes",
            out.len(),
            text.len()
        );
    }
    for name in [
        "mysql_global_status_uptime",
        "mysql_global_status_threads_connected",
        "mysql_global_status_queries",
        "mysql_global_status_innodb_buffer_pool_read_requests",
        "mysql_global_variables_max_connections",
        "mysql_global_variables_innodb_buffer_pool_size",
        "mysql_global_variables_read_only",
    ] {
        assert!(sample(&text, name, &[]).is_some(), "no {name} in\n{text}");
    }
    for (name, label) in [
        ("mysql_global_status_commands_total", ("command", "select")),
        (
            "mysql_global_status_handlers_total",
            ("handler", "read_key"),
        ),
        ("mysql_global_status_buffer_pool_pages", ("state", "data")),
    ] {
        assert!(
            sample(&text, name, &[label]).is_some(),
            "no {name}{label:?} in\n{text}"
        );
    }
    assert!(text.contains("mysql_version_info{"), "{text}");
    assert_eq!(
        sample(
            &text,
            "mysql_exporter_collector_success",
            &[("collector", "global_status")]
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("mysql_slave_status_"),
        "a primary has no replica status:\n{text}"
    );
    assert_eq!(
        sample(&text, "dbfleet_replication_configured", &db1),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "dbfleet_role",
            &[db1[0], db1[1], ("role", "primary")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "dbfleet_mysql_writable", &db1), Some(1.0));
    assert_eq!(sample(&text, "dbfleet_fenced", &db1), Some(0.0));
    assert_eq!(
        sample(&text, "dbfleet_semi_sync_source_enabled", &db1),
        Some(1.0)
    );
    assert!(sample(&text, "dbfleet_gtid_executed_transactions", &db1).is_some());
    assert!(
        sample(&text, "dbfleet_replication_last_received_age_seconds", &[]).is_none(),
        "a primary receives from no source:\n{text}"
    );
    assert_host_families(&text, &db1);
    let coordinator = fleet.coordinator("c1").address;
    wait_scrape(&fleet, "db1", "an accepted report and an epoch", |t| {
        sample(
            t,
            "dbfleet_coordinator_report_age_seconds",
            &[("coordinator", &coordinator)],
        )
        .is_some_and(|age| age < 60.0)
            && sample(t, "dbfleet_epoch_term", &db1).is_some_and(|e| e >= 1.0)
    })
    .await;

    // The replica: replica status under mysqld_exporter's names, and a
    // real lag (a delayed replica) under both names.
    let text = wait_scrape(&fleet, "db2", "replica status", |t| {
        sample(t, "mysql_slave_status_slave_io_running", &[]) == Some(1.0)
    })
    .await;
    let source = &fleet.server("db1").unwrap().ip.to_string();
    assert_eq!(
        sample(
            &text,
            "mysql_slave_status_slave_sql_running",
            &[("master_host", source)]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "dbfleet_replication_configured", &db2),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "dbfleet_role",
            &[db2[0], db2[1], ("role", "replica")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "dbfleet_replication_lag_known", &db2),
        Some(1.0)
    );
    assert!(
        sample(&text, "dbfleet_replication_last_received_age_seconds", &db2)
            .is_some_and(|a| a >= 0.0),
        "{text}"
    );
    assert_host_families(&text, &db2);
    // one round trip: the coordinator restarts a stopped replica
    fleet
        .sql(
            "db2",
            "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 3600; START SLAVE",
        )
        .await
        .unwrap();
    // The delayed replica's IO thread still receives the event at once:
    // the receive age falls below the time since the write was sent,
    // while the applier lags (an age counted from the agent's start, or
    // from anything before the write, would be above it).
    let written = Instant::now();
    fleet
        .sql("db1", "CREATE TABLE app.lagging (id INT PRIMARY KEY)")
        .await
        .unwrap();
    wait_scrape(&fleet, "db2", "something received after the write", |t| {
        sample(t, "dbfleet_replication_last_received_age_seconds", &db2)
            .is_some_and(|a| a < written.elapsed().as_secs_f64())
    })
    .await;
    let text = wait_scrape(&fleet, "db2", "a lag of at least a second", |t| {
        sample(t, "dbfleet_replication_lag_seconds", &db2).is_some_and(|l| l >= 1.0)
    })
    .await;
    assert!(
        sample(&text, "mysql_slave_status_seconds_behind_master", &[]).is_some_and(|l| l >= 1.0),
        "{text}"
    );
    // one round trip: the coordinator restarts a stopped replica
    fleet
        .sql(
            "db2",
            "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE",
        )
        .await
        .unwrap();

    // A metadata lock pile-up on the primary: one session's open
    // transaction holds the table, an ALTER waits for it, and every new
    // query on the table would queue behind the ALTER. Scrapes answer,
    // and the values keep coming (uptime moves on).
    let s = fleet.server("db1").unwrap();
    let opts = s.root_opts(&fleet.credentials.root);
    let mut holder = mysql_async::Conn::new(opts.clone()).await.unwrap();
    holder
        .query_drop("CREATE TABLE app.locked (id INT PRIMARY KEY)")
        .await
        .unwrap();
    holder.query_drop("BEGIN").await.unwrap();
    holder.query_drop("SELECT * FROM app.locked").await.unwrap();
    let mut alter = mysql_async::Conn::new(opts).await.unwrap();
    let waiting = tokio::spawn(async move {
        alter
            .query_drop("SET SESSION lock_wait_timeout = 3600")
            .await
            .unwrap();
        alter
            .query_drop("ALTER TABLE app.locked ADD COLUMN note INT")
            .await
    });
    let waiting_for_lock = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE = 'Waiting for table metadata lock'";
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while fleet.query_one("db1", waiting_for_lock).await.as_deref() != Some("1") {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the ALTER never waited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = sample(
        &scrape(&metrics_of(&fleet, "db1")),
        "mysql_global_status_uptime",
        &[],
    )
    .expect("uptime during the lock");
    wait_scrape(
        &fleet,
        "db1",
        "fresh values during the metadata lock",
        |t| {
            sample(t, "mysql_global_status_uptime", &[]).is_some_and(|u| u > before)
                && sample(t, "mysql_up", &[]) == Some(1.0)
        },
    )
    .await;
    holder.query_drop("ROLLBACK").await.unwrap();
    waiting.await.unwrap().unwrap();

    // kill -9 of the replica's mysqld: the endpoint keeps answering, with
    // mysql_up 0, role down, and no stale server values.
    fleet.kill("mariadbd-db2");
    let text = wait_scrape(&fleet, "db2", "mysql_up 0", |t| {
        sample(t, "mysql_up", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        sample(&text, "dbfleet_role", &[db2[0], db2[1], ("role", "down")]),
        Some(1.0)
    );
    assert!(
        !text.contains("mysql_global_status_"),
        "stale values of a dead server:\n{text}"
    );
    assert!(!text.contains("dbfleet_replication_configured"), "{text}");
    assert!(
        !text.contains("dbfleet_replication_last_received_age_seconds"),
        "{text}"
    );
    assert!(sample(&text, "dbfleet_coordinator_report_age_seconds", &[]).is_some());
    // the data directory is remembered: its disk is watched while mysqld
    // is down (a full disk may be why)
    assert!(
        sample(&text, "dbfleet_datadir_filesystem_avail_bytes", &db2).is_some_and(|a| a > 0.0),
        "{text}"
    );
    assert!(sample(&text, "dbfleet_host_memory_total_bytes", &db2).is_some());
}

/// The host families of a scrape of a running mysqld's agent: CPU and
/// memory of the host, space of the data directory's filesystem, the
/// agent's own footprint, with plausible values. The data directory's disk
/// I/O is there only where the directory sits on a block device (not on
/// overlayfs or tmpfs), and then all three families are.
fn assert_host_families(text: &str, id: &[(&str, &str); 2]) {
    let cpu = |mode: &str| {
        sample(
            text,
            "dbfleet_host_cpu_seconds_total",
            &[id[0], id[1], ("mode", mode)],
        )
    };
    assert!(cpu("user").is_some_and(|v| v > 0.0), "{text}");
    assert!(cpu("system").is_some_and(|v| v > 0.0), "{text}");
    assert!(cpu("idle").is_some(), "{text}");
    let total = sample(text, "dbfleet_host_memory_total_bytes", id).expect("memory total");
    let available =
        sample(text, "dbfleet_host_memory_available_bytes", id).expect("memory available");
    assert!(total > available && available > 0.0, "{total} {available}");
    let size = sample(text, "dbfleet_datadir_filesystem_size_bytes", id).expect("fs size");
    let avail = sample(text, "dbfleet_datadir_filesystem_avail_bytes", id).expect("fs avail");
    assert!(size >= avail && avail > 0.0, "{size} {avail}");
    let disk: Vec<Option<f64>> = [
        "dbfleet_datadir_disk_read_bytes_total",
        "dbfleet_datadir_disk_written_bytes_total",
        "dbfleet_datadir_disk_io_time_seconds_total",
    ]
    .iter()
    .map(|n| sample(text, n, id))
    .collect();
    assert!(
        disk.iter().all(Option::is_some) || disk.iter().all(Option::is_none),
        "{disk:?}"
    );
    assert!(
        sample(text, "dbfleet_agent_resident_memory_bytes", id).is_some_and(|r| r > 0.0),
        "{text}"
    );
    assert!(
        sample(
            text,
            "dbfleet_agent_cpu_seconds_total",
            &[id[0], id[1], ("mode", "user")]
        )
        .is_some(),
        "{text}"
    );
}

/// curl, the scraper stand-in that is not dbfleet's own TLS code.
fn curl(args: &[&str]) -> std::process::Output {
    let curl = Path::new("/usr/bin/curl");
    assert!(
        curl.exists(),
        "{} is missing: apt-get install curl",
        curl.display()
    );
    std::process::Command::new(curl)
        .args(args)
        .output()
        .expect("run curl")
}

/// With `metrics_tls = true` the agent serves `/metrics` only over mutual
/// TLS with its own certificates: a viewer certificate from the fleet CA
/// scrapes (with dbfleet's client and with curl), an agent certificate is
/// refused with 403, and neither plain HTTP nor TLS without a client
/// certificate gets an answer.
#[tokio::test]
async fn metrics_over_mutual_tls_need_a_fleet_certificate_of_a_scraper_role() {
    let mut fleet = TestFleet::start(0, 1).await;
    let db1 = [("cluster", "main"), ("host", "db1")];
    let address = metrics_of(&fleet, "db1");
    let config = fleet.dir.join("agent-db1.toml");
    fleet.stop("agent-db1", Duration::from_secs(5));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("metrics_tls = true\n{text}")).unwrap();
    fleet.start_agent("db1").unwrap();
    fleet
        .wait_listening("agent-db1", &address, PATIENCE)
        .await
        .unwrap();

    let viewer = scraper_certificate(&fleet.dir, Role::Viewer, "prometheus");
    let agent = scraper_certificate(&fleet.dir, Role::Agent, "db9");

    let give_up = Instant::now() + PATIENCE;
    let text = loop {
        let text = tls_scrape(&viewer, &address, Role::Agent, "db1").await;
        assert!(text.starts_with("HTTP/1.0 200"), "{text}");
        if sample(&text, "mysql_up", &[]) == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < give_up, "no collection over TLS:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        sample(
            &text,
            "dbfleet_role",
            &[db1[0], db1[1], ("role", "primary")]
        ),
        Some(1.0)
    );
    assert_host_families(&text, &db1);

    let refused = tls_scrape(&agent, &address, Role::Agent, "db1").await;
    assert!(refused.starts_with("HTTP/1.0 403"), "{refused}");
    assert!(
        refused.contains("dbfleet://agent/db9") && refused.contains("viewer"),
        "{refused}"
    );
    assert!(!refused.contains("mysql_up"), "{refused}");

    // curl offers h2 and http/1.1 and checks the agent's certificate
    // against its IP address, as Prometheus would
    let url = format!("https://{address}/metrics");
    let ca = viewer.ca.display().to_string();
    let out = curl(&[
        "--silent",
        "--show-error",
        "--fail",
        "--cacert",
        &ca,
        "--cert",
        &viewer.cert.display().to_string(),
        "--key",
        &viewer.key.display().to_string(),
        &url,
    ]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sample(&body, "dbfleet_fenced", &db1).is_some(), "{body}");

    let out = curl(&["--silent", "--show-error", "--cacert", &ca, &url]);
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "TLS without a client certificate answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let answer = plain_http_answer(&address);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP answered: {}",
        String::from_utf8_lossy(&answer)
    );
}

/// The names of every sample in a scrape.
fn sample_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("HTTP/") && l.starts_with("mysql_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Debian's prometheus-mysqld-exporter (installed by scripts/setup) and the
/// agent scrape the same server: every name the exporter's core collectors
/// (global status, global variables, replica status) produce, the agent
/// produces too, with the same value where the value does not move.
#[tokio::test]
async fn the_agent_exposes_every_core_name_mysqld_exporter_does() {
    let exporter = std::path::Path::new("/usr/bin/prometheus-mysqld-exporter");
    assert!(
        exporter.exists(),
        "{} is missing: run ./scripts/setup (apt-get install prometheus-mysqld-exporter)",
        exporter.display()
    );
    let fleet = TestFleet::start_active(1, 1).await;
    let mut texts = Vec::new();
    for host in ["db1", "db2"] {
        let s = fleet.server(host).unwrap();
        let cnf = fleet.dir.join(format!("exporter-{host}.cnf"));
        std::fs::write(
            &cnf,
            format!(
                "[client]\nuser=root\npassword={}\nsocket={}\n",
                fleet.credentials.root,
                s.socket.display()
            ),
        )
        .unwrap();
        let address = format!("{}:9105", s.ip);
        let mut p = dbfleet_integration_tests::Proc::start(
            exporter,
            &[
                format!("--config.my-cnf={}", cnf.display()),
                format!("--web.listen-address={address}"),
                "--no-collect.info_schema.innodb_cmp".into(),
                "--no-collect.info_schema.innodb_cmpmem".into(),
                "--no-collect.info_schema.query_response_time".into(),
            ],
            fleet.dir.join(format!("logs/exporter-{host}.log")),
        );
        p.wait_listening(&address).await;
        let theirs = scrape(&address);
        let ours = wait_scrape(&fleet, host, "replica status where replicating", |t| {
            host == "db1" || t.contains("mysql_slave_status_")
        })
        .await;
        texts.push((host, p, theirs, ours));
    }
    for (host, _p, theirs, ours) in &texts {
        assert_eq!(sample(theirs, "mysql_up", &[]), Some(1.0), "{theirs}");
        let core = |n: &String| {
            [
                "mysql_global_status_",
                "mysql_global_variables_",
                "mysql_slave_status_",
            ]
            .iter()
            .any(|p| n.starts_with(p))
                || n == "mysql_up"
                || n == "mysql_version_info"
        };
        let their_names: Vec<String> = sample_names(theirs).into_iter().filter(core).collect();
        let our_names = sample_names(ours);
        let missing: Vec<&String> = their_names
            .iter()
            .filter(|n| !our_names.contains(*n))
            .collect();
        assert!(
            missing.is_empty(),
            "{host}: mysqld_exporter exposes {} core names the agent does not: {missing:?}",
            missing.len()
        );
        assert!(
            their_names.len() > 300,
            "{host}: only {} names",
            their_names.len()
        );
        for name in [
            "mysql_global_variables_max_connections",
            "mysql_global_variables_innodb_buffer_pool_size",
            "mysql_global_variables_server_id",
            "mysql_global_variables_read_only",
        ] {
            assert_eq!(
                sample(ours, name, &[]),
                sample(theirs, name, &[]),
                "{host}: {name}"
            );
        }
    }
    let (_, _, theirs, ours) = &texts[1];
    let io = "mysql_slave_status_slave_io_running";
    assert_eq!(sample(ours, io, &[]), sample(theirs, io, &[]));
    assert_eq!(sample(ours, io, &[]), Some(1.0));
}
