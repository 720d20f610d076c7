//! TLS to MySQL with real processes: every mysqld has a certificate from
//! the fleet's CA and refuses plain TCP, replicas check their source's
//! certificate, the coordinators require it of the cluster, repoint a
//! replica that goes without it, and nobody accepts a server whose
//! certificate another CA signed.

use std::fs;

use dbfleet_cli::sandbox::mariadb::{AGENT_USER, APP_USER};
use dbfleet_common::identity::Role;
use dbfleet_integration_tests::failover::{
    check_witnesses, events, evidence_of, loaded_fleet, new_primary,
};
use dbfleet_integration_tests::{TestFleet, TestPki, has_problem, member, with_line};
use dbfleet_proto::model::Flavor;
use dbfleet_proto::privileges;
use mysql_async::prelude::Queryable;

const TLS_OFF: &str = "mysql-tls-off";

/// `host`'s replica status columns `names`, asked as the DBA.
async fn replica_status(fleet: &TestFleet, host: &str, names: &[&str]) -> Vec<String> {
    let s = fleet.server(host).expect("known host");
    let mut c = mysql_async::Conn::new(s.root_opts(&fleet.credentials.root))
        .await
        .expect("connect as root");
    let row: mysql_async::Row = c
        .query_first("SHOW SLAVE STATUS")
        .await
        .expect("SHOW SLAVE STATUS")
        .unwrap_or_else(|| panic!("{host} is not a replica"));
    let _ = c.disconnect().await;
    names
        .iter()
        .map(|n| {
            row.get_opt::<Option<String>, _>(*n)
                .unwrap_or_else(|| panic!("no column {n}"))
                .unwrap_or_else(|_| panic!("{n} is not text"))
                .unwrap_or_default()
        })
        .collect()
}

/// Waits until `host` replicates over TLS that checks its source's
/// certificate, with both threads running.
async fn wait_verified_link(fleet: &TestFleet, host: &str) {
    let cols = [
        "Master_SSL_Allowed",
        "Master_SSL_Verify_Server_Cert",
        "Slave_IO_Running",
        "Slave_SQL_Running",
        "Master_SSL_CA_File",
    ];
    let give_up = std::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    loop {
        let v = replica_status(fleet, host, &cols).await;
        if v[..4] == ["Yes", "Yes", "Yes", "Yes"] {
            assert!(
                v[4].ends_with("ca.pem"),
                "{host} checks against the CA: {v:?}"
            );
            return;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "{host} never replicated over verified TLS: {cols:?} = {v:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn replication_runs_over_verified_tls_plain_tcp_is_refused_and_a_failover_keeps_it() {
    let (mut fleet, writer, sampler) = loaded_fleet("").await;
    let status = fleet.status_json();
    assert_eq!(status["clusters"][0]["mysql_tls_policy"], "required");
    fleet
        .wait_until("every member reported its TLS", |c| {
            c.members.iter().all(|m| m.reachable) && !c.problems.iter().any(|p| p.kind == TLS_OFF)
        })
        .await;
    for host in ["db2", "db3"] {
        wait_verified_link(&fleet, host).await;
    }
    // the application's writes travel over TLS (the writer's sessions);
    // a client that asks for none is refused
    let db1 = fleet.server("db1").unwrap();
    let plain = db1
        .tcp_opts(APP_USER, &fleet.credentials.app)
        .ssl_opts(None::<mysql_async::SslOpts>);
    // (MariaDB refuses it as it refuses a wrong password)
    match mysql_async::Conn::new(plain).await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045, "{e:?}"),
        other => panic!("a plain TCP session was not refused: {other:?}"),
    }
    let tls = db1.tcp_opts(APP_USER, &fleet.credentials.app);
    mysql_async::Conn::new(tls)
        .await
        .expect("the same account over verified TLS")
        .disconnect()
        .await
        .unwrap();

    // kill -9 of the primary: the replicas the failover repoints, and the
    // old primary when it rejoins, replicate over verified TLS again
    fleet.kill("mariadbd-db1");
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    let other = if view.primary == "db2" { "db3" } else { "db2" };
    wait_verified_link(&fleet, other).await;
    let v = replica_status(&fleet, other, &["Master_Host"]).await;
    assert_eq!(
        format!("{}:3306", v[0]),
        member(&view, &view.primary).mysql_address
    );
    fleet.start_mysqld("db1").unwrap();
    // A write in flight at the kill may sit in db1's binlog unacknowledged
    // (MariaDB keeps it at restart): then db1 diverged and is marked for
    // rebuild instead of rejoining, as the failover tests accept too.
    let view = fleet
        .wait_until("db1 rejoined or marked for rebuild", |c| {
            let m = member(c, "db1");
            m.needs_rebuild || (m.source == member(c, &c.primary).mysql_address && m.io_running)
        })
        .await;
    if !member(&view, "db1").needs_rebuild {
        new_primary(&fleet, "db1", &["db1", "db2", "db3"]).await;
        wait_verified_link(&fleet, "db1").await;
    }
    fleet
        .wait_until("no member without TLS after the failover", |c| {
            !c.problems.iter().any(|p| p.kind == TLS_OFF)
        })
        .await;
}

#[tokio::test]
async fn a_replica_switched_to_plain_tcp_is_repointed_with_verified_tls() {
    let fleet = TestFleet::start_active(1, 1).await;
    wait_verified_link(&fleet, "db2").await;
    fleet
        .sql(
            "db2",
            "STOP SLAVE; CHANGE MASTER TO MASTER_SSL = 0, MASTER_SSL_VERIFY_SERVER_CERT = 0; START SLAVE",
        )
        .await
        .unwrap();
    // the coordinator notices the plain link and repoints it; the source
    // refuses plain TCP meanwhile, so nothing was replicated in the clear
    wait_verified_link(&fleet, "db2").await;
    let give_up = std::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    while !events(&fleet)
        .iter()
        .any(|e| e["kind"] == "replication-tuned")
    {
        assert!(
            std::time::Instant::now() < give_up,
            "no replication-tuned event"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let tuned = evidence_of(&fleet, "replication-tuned");
    assert!(
        tuned.contains("db2") && tuned.contains("plain TCP (wanted verified TLS)"),
        "{tuned}"
    );
}

#[tokio::test]
async fn a_mysqld_whose_certificate_another_ca_signed_is_refused_by_replicas_and_agents() {
    let mut fleet = TestFleet::start_active(2, 1).await;
    for host in ["db2", "db3"] {
        wait_verified_link(&fleet, host).await;
    }
    // db3's agent reaches its server over TCP with verified TLS, as an
    // agent without a socket does (with an account for TCP): it reports,
    // and nothing is missing
    let grant = privileges::agent_grant(Flavor::MariaDb, AGENT_USER, "127.0.0.1").unwrap();
    fleet
        .sql(
            "db3",
            &format!(
                "SET SESSION sql_log_bin = 0; CREATE USER '{AGENT_USER}'@'127.0.0.1' IDENTIFIED BY '{}'; {grant}",
                fleet.credentials.agent
            ),
        )
        .await
        .unwrap();
    // (stopped until the coordinators see it silent, so what follows is
    // what the restarted agent reports)
    fleet.stop("agent-db3", std::time::Duration::from_secs(5));
    let config = fleet.dir.join("agent-db3.toml");
    let text = with_line(
        &fs::read_to_string(&config).unwrap(),
        "socket",
        "# socket: the agent connects over TCP",
    );
    fs::write(&config, text).unwrap();
    fleet
        .wait_until("db3's agent silent", |c| !member(c, "db3").reporting)
        .await;
    fleet.start_agent("db3").unwrap();
    fleet
        .wait_until("db3's agent reporting over verified TLS", |c| {
            member(c, "db3").reporting
                && member(c, "db3").reachable
                && !has_problem(c, TLS_OFF, "db3")
        })
        .await;

    // A stand-in with a certificate for the same addresses from another CA:
    // db1's and db3's servers now present one.
    let pki = TestPki::new(&fleet.slot.dir.join("hostile"));
    for host in ["db1", "db3"] {
        let ip = fleet.server(host).unwrap().ip.to_string();
        let hostile = pki.issue(Role::Mysql, host, &[&ip], true, false);
        let mine = fleet.server(host).unwrap().tls.clone().expect("TLS on");
        fs::copy(&hostile.cert, &mine.cert).unwrap();
        fs::write(&mine.key, fs::read(&hostile.key).unwrap()).unwrap();
        fleet.sql(host, "FLUSH SSL").await.unwrap();
    }
    // db1 serves the stand-in's certificate: a client trusting that other
    // CA gets in, one trusting the fleet's CA does not
    let db1 = fleet.server("db1").unwrap();
    let trusting = |ca: std::path::PathBuf| {
        db1.tcp_opts(APP_USER, &fleet.credentials.app).ssl_opts(
            mysql_async::SslOpts::default()
                .with_root_certs(vec![ca.into()])
                .with_disable_built_in_roots(true),
        )
    };
    mysql_async::Conn::new(trusting(pki.foreign.join(dbfleet_common::certs::CA_CERT)))
        .await
        .expect("db1 serves the other CA's certificate")
        .disconnect()
        .await
        .unwrap();
    let refused = mysql_async::Conn::new(db1.tcp_opts(APP_USER, &fleet.credentials.app))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        format!("{refused}").contains("invalid peer certificate"),
        "{refused}"
    );
    // db2 reconnects to db1 and refuses its certificate (MariaDB says no
    // more than "SSL connection error")
    fleet.sql("db2", "STOP SLAVE; START SLAVE").await.unwrap();
    let view = fleet
        .wait_until("db2 refusing db1's certificate", |c| {
            let m = member(c, "db2");
            !m.io_running
                && c.problems.iter().any(|p| {
                    p.host == "db2"
                        && p.kind == "replication-error"
                        && p.message.contains("SSL connection error")
                })
        })
        .await;
    assert!(member(&view, "db1").writable, "db1 stays the primary");
    // db3's agent, on its next connection, refuses its server
    fleet
        .restart_agent_with("db3", "collect_interval", "collect_interval = \"250ms\"")
        .await;
    fleet
        .wait_until("db3's agent refusing its server's certificate", |c| {
            c.problems.iter().any(|p| {
                p.host == "db3"
                    && p.kind == "mysql-unreachable"
                    && p.message.contains("invalid peer certificate")
            })
        })
        .await;
}

#[tokio::test]
async fn tls_cannot_be_required_of_servers_without_a_certificate() {
    let fleet = TestFleet::start_spec(1, 1, |s| s.mysql_tls = false).await;
    fleet.wait_settled("an active coordinator", |_| true).await;
    let status = fleet.status_json();
    assert_eq!(status["clusters"][0]["mysql_tls_policy"], "off");
    let v = fleet
        .wait_until("both members reachable", |c| {
            c.members.iter().all(|m| m.reachable)
        })
        .await;
    assert!(
        !v.problems.iter().any(|p| p.kind == TLS_OFF),
        "{:?}",
        v.problems
    );
    let out = fleet.cli(&["policy", "--cluster", "main", "--mysql-tls", "required"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(
        err.contains("has no CA (ssl_ca)") && err.contains("nothing changed"),
        "{err}"
    );
    let status = fleet.status_json();
    assert_eq!(status["clusters"][0]["mysql_tls_policy"], "off");
    // plain replication keeps working as it was
    let r = replica_status(&fleet, "db2", &["Master_SSL_Allowed", "Slave_IO_Running"]).await;
    assert_eq!(r, ["No", "Yes"]);
}

#[tokio::test]
async fn check_config_says_what_is_missing_when_mysqld_requires_tls() {
    let fleet = TestFleet::start(1, 1).await;
    let config = fleet.dir.join("agent-db2.toml");
    let (ok, out) = fleet.check_config(&config);
    assert!(ok && !out.contains("warning"), "{out}");
    // without the CA the replication account's login at the address would
    // be refused as "access denied": the check says what is missing
    let without = fleet.dir.join("agent-db2-no-ca.toml");
    let text = with_line(
        &fs::read_to_string(&config).unwrap(),
        "tls_ca_file",
        "# tls_ca_file removed",
    );
    fs::write(&without, text).unwrap();
    let (_, out) = fleet.check_config(&without);
    assert!(
        out.contains("requires TLS (require_secure_transport)")
            && out.contains("tls_ca_file is not set"),
        "{out}"
    );
}
