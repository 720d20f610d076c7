//! The agent's configuration checked against the live server, with a real
//! MariaDB (and, for the privileges and addresses, MySQL) fleet whose agents run as the unprivileged service user and
//! hold exactly the documented grants: `check-config` names a missing
//! privilege with its fix and an address that reaches another place than
//! the socket; a running agent reports a server that would restart
//! writable and a mismatched address as cluster problems, and a member
//! whose address does not reach it is never made the primary.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use dbfleet_integration_tests::{TestFleet, has_problem, member, on_both_flavors, with_line};
use dbfleet_proto::model::Flavor;

on_both_flavors! {
async fn check_config_names_a_missing_privilege_and_an_address_that_reaches_elsewhere(flavor: Flavor) {
    let fleet = TestFleet::start_spec(1, 1, |spec| spec.flavor = flavor).await;
    fleet.wait_settled("an active coordinator", |_| true).await;
    // The privilege taken away below, as each flavor spells it.
    let connection_admin = match flavor {
        Flavor::MariaDb => "CONNECTION ADMIN",
        Flavor::MySql => "CONNECTION_ADMIN",
    };
    assert!(
        fleet.service_user.is_some() || !nix::unistd::geteuid().is_root(),
        "the agents run unprivileged"
    );
    // The sandbox holds exactly the documented accounts: the agent's is
    // local with the listed grants, and no account opens without a
    // password (mariadb.sys is a locked definer).
    let grants = fleet
        .query_one(
            "db1",
            "SELECT GROUP_CONCAT(PRIVILEGE_TYPE) FROM information_schema.USER_PRIVILEGES \
             WHERE GRANTEE = \"'dbfleet_agent'@'localhost'\"",
        )
        .await
        .unwrap_or_default();
    assert!(
        grants.contains(connection_admin) && !grants.contains("SUPER"),
        "{grants}"
    );
    let open_accounts = match flavor {
        Flavor::MariaDb => {
            "SELECT IFNULL(GROUP_CONCAT(CONCAT(user, '@', host)), '') FROM mysql.global_priv \
             WHERE IFNULL(JSON_VALUE(Priv, '$.authentication_string'), '') = '' \
             AND IFNULL(JSON_EXTRACT(Priv, '$.account_locked'), 'false') <> 'true'"
        }
        // mysql.session, mysql.sys and mysql.infoschema are locked.
        Flavor::MySql => {
            "SELECT IFNULL(GROUP_CONCAT(CONCAT(user, '@', host)), '') FROM mysql.user \
             WHERE authentication_string = '' AND account_locked = 'N'"
        }
    };
    let open = fleet.query_one("db1", open_accounts).await;
    assert_eq!(
        open.as_deref(),
        Some(""),
        "accounts open without a password"
    );
    let agent_hosts = fleet
        .query_one(
            "db1",
            "SELECT GROUP_CONCAT(host) FROM mysql.user WHERE user = 'dbfleet_agent'",
        )
        .await;
    assert_eq!(agent_hosts.as_deref(), Some("localhost"));

    let config = fleet.dir.join("agent-db1.toml");
    let (ok, out) = fleet.check_config(&config);
    assert!(
        ok && !out.contains("problem:") && !out.contains("coordinator"),
        "the coordinator accepted the agent over mutual TLS: {out}"
    );

    // A coordinator address where another agent answers: its certificate
    // is not a coordinator's.
    let text = std::fs::read_to_string(&config).unwrap();
    let db2_listen = std::fs::read_to_string(fleet.dir.join("agent-db2.toml"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("listen = ")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap();
    let wrong = fleet.dir.join("agent-db1-wrong-coordinator.toml");
    std::fs::write(
        &wrong,
        with_line(
            &text,
            "coordinators",
            &format!("coordinators = [\"c1@{db2_listen}\"]"),
        ),
    )
    .unwrap();
    let (ok, out) = fleet.check_config(&wrong);
    assert!(
        ok && out.contains(&format!("warning: coordinator c1 at {db2_listen}"))
            && out.contains("presented identity")
            && out.contains("db2"),
        "{out}"
    );

    // One privilege less: named, with what it is for and the fix.
    fleet
        .sql(
            "db1",
            &format!("REVOKE {connection_admin} ON *.* FROM 'dbfleet_agent'@'localhost'"),
        )
        .await
        .unwrap();
    let (ok, out) = fleet.check_config(&config);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "lacks {connection_admin} (needed for ending client sessions when fencing)"
        )) && out.contains(&format!(
            "GRANT {connection_admin} ON *.* TO 'dbfleet_agent'@'localhost'"
        )),
        "{out}"
    );
    fleet
        .sql(
            "db1",
            &format!("GRANT {connection_admin} ON *.* TO 'dbfleet_agent'@'localhost'"),
        )
        .await
        .unwrap();

    // The right socket and the wrong port; then another member's address.
    let db1 = fleet.server("db1").unwrap().clone();
    let db2 = fleet.server("db2").unwrap().clone();
    for (name, address) in [
        ("wrong-port", format!("{}:3307", db1.ip)),
        ("other-server", format!("{}:{}", db2.ip, db2.port)),
    ] {
        let bad = fleet.dir.join(format!("agent-db1-{name}.toml"));
        std::fs::write(
            &bad,
            with_line(&text, "address", &format!("address = {address:?}")),
        )
        .unwrap();
        let (ok, out) = fleet.check_config(&bad);
        assert!(
            !ok && out.contains(&format!("[mysql] address {address}"))
                && out.contains("not the server behind socket"),
            "{name}: {out}"
        );
    }

    // A pid file that is not the server's is worth a warning, not a failure.
    let typo = fleet.dir.join("agent-db1-pid-typo.toml");
    std::fs::write(
        &typo,
        with_line(&text, "pid_file", "pid_file = \"/run/mysqld/nope.pid\""),
    )
    .unwrap();
    let (ok, out) = fleet.check_config(&typo);
    assert!(
        ok && out.contains("warning:") && out.contains("/run/mysqld/nope.pid"),
        "{out}"
    );
}
}

on_both_flavors! {
async fn a_running_agent_reports_a_restart_writable_server_and_a_mismatched_address(flavor: Flavor) {
    let mut fleet = TestFleet::start_spec(2, 1, |spec| spec.flavor = flavor).await;
    fleet.wait_settled("an active coordinator", |_| true).await;
    // db3's server would restart writable once its my.cnf loses read_only
    // (and, on MySQL, super_read_only, and nothing is persisted).
    let cnf = fleet.server("db3").unwrap().cnf();
    let original = std::fs::read_to_string(&cnf).unwrap();
    let writable = original
        .replace("super_read_only = ON\n", "")
        .replace("read_only = ON\n", "");
    std::fs::write(&cnf, writable).unwrap();
    let _ = std::fs::remove_file(fleet.server("db3").unwrap().datadir().join("mysqld-auto.cnf"));
    // db2's agent is told a port nothing listens on.
    let db2 = fleet.server("db2").unwrap().clone();
    fleet
        .restart_agent_with("db2", "address", &format!("address = \"{}:3307\"", db2.ip))
        .await;
    fleet.stop("agent-db3", Duration::from_secs(5));
    fleet.start_agent("db3").unwrap();
    let seen = fleet
        .wait_until("both configuration problems reported", |c| {
            has_problem(c, "starts-writable", "db3")
                && has_problem(c, "mysql-address-mismatch", "db2")
        })
        .await;
    let why = seen
        .problems
        .iter()
        .find(|p| p.kind == "starts-writable")
        .unwrap();
    assert!(why.message.contains("read_only = ON"), "{}", why.message);

    // A switchover to the member whose address reaches nothing is refused
    // and leaves db1 the writable primary with its replicas.
    let out = fleet.cli(&[
        "switchover",
        "--cluster",
        "main",
        "--to",
        "db2",
        "--output",
        "json",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("\"outcome\":\"completed\"")
            && (text.contains("address mismatched") || text.contains("db2 cannot take over")),
        "{text}"
    );
    let after = fleet
        .wait_until("db1 still the primary, db3 replicating from it", |c| {
            c.primary == "db1"
                && member(c, "db1").writable
                && member(c, "db3").io_running
                && member(c, "db3").source == member(c, "db1").mysql_address
        })
        .await;
    assert!(!member(&after, "db2").writable);
}
}

/// A mysqld started by socket activation (Debian's `mariadb.socket`; here
/// `systemd-socket-activate`, which hands mariadbd its listening sockets
/// the same way) comes back on the next connection after any stop, so no
/// fence could prove it stopped: `check-config` fails naming it, and the
/// running agent reports `socket-activated`.
#[tokio::test]
async fn a_socket_activated_mysqld_is_named_by_check_config_and_reported() {
    let mut fleet = TestFleet::start_active(1, 1).await;
    let db2 = fleet.server("db2").unwrap().clone();
    fleet.stop("mariadbd-db2", Duration::from_secs(30));
    let _ = std::fs::remove_file(&db2.socket);
    let log = fleet.dir.join("logs/mariadbd-db2-activated.log");
    let args =
        dbfleet_cli::sandbox::mariadb::args(&db2, &fleet.dir.join("run/mariadbd-db2.pid"), &log);
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&db2.socket)
        .arg("-l")
        .arg(format!("{}:{}", db2.ip, db2.port))
        .arg("/usr/sbin/mariadbd")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(fleet.dir.join("logs/socket-activate.log")).unwrap())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    if let Some(u) = &fleet.service_user {
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    let mut activated = cmd.spawn().unwrap();

    // The first connection (check-config's own) starts mariadbd.
    let config = fleet.dir.join("agent-db2.toml");
    let give_up = tokio::time::Instant::now() + dbfleet_integration_tests::PATIENCE;
    let out = loop {
        let (ok, out) = fleet.check_config(&config);
        if out.contains("socket activation") {
            assert!(!ok, "{out}");
            break out;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "check-config never named the socket activation: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        out.contains("systemctl disable --now mariadb.socket"),
        "the fix is named: {out}"
    );
    let seen = fleet
        .wait_until("db2's agent reports socket activation", |c| {
            has_problem(c, "socket-activated", "db2")
        })
        .await;
    let p = seen
        .problems
        .iter()
        .find(|p| p.kind == "socket-activated")
        .unwrap();
    assert!(
        p.message.contains("can never prove it stopped"),
        "{}",
        p.message
    );
    let _ = activated.kill();
    let _ = activated.wait();
}
