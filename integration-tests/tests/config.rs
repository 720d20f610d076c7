//! Bad configuration refuses to start, with a message that names the
//! problem and the fix, and never shows a secret.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use dbfleet_common::identity::Role;
use dbfleet_integration_tests::{
    Proc, Slot, TestPki, bin, init, tls_section, toml_path, with_line, write_coordinator_config,
};

struct Files {
    slot: Slot,
    pki: TestPki,
}

fn files() -> Files {
    init();
    let slot = Slot::claim();
    let pki = TestPki::new(&slot.dir);
    Files { slot, pki }
}

fn agent_config(f: &Files, host: &str, extra: &str) -> std::path::PathBuf {
    let paths = f.pki.issue(Role::Agent, "db1", &[], false, false);
    let pw = f.slot.dir.join("pw");
    if !pw.exists() {
        dbfleet_common::certs::write_file(&pw, b"sup3r-secret-pw", 0o600, false).unwrap();
    }
    let cfg = f.slot.dir.join(format!("agent-{host}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "host = {host:?}\ncluster = \"main\"\nlisten = \"{}:7100\"\ncoordinators = [\"c1@{}:7200\"]\n{extra}\n[mysql]\naddress = \"{}:3306\"\nuser = \"dbfleet_agent\"\npassword_file = {}\n{}",
            f.slot.ip(11),
            f.slot.ip(21),
            f.slot.ip(11),
            toml_path(&pw),
            tls_section(&paths)
        ),
    )
    .unwrap();
    cfg
}

fn check(program: &str, cfg: &std::path::Path) -> (bool, String) {
    // The agent's files only: no mysqld runs here.
    let offline: &[&str] = if program == "dbfleet-agent" {
        &["--offline"]
    } else {
        &[]
    };
    let out = Command::new(bin(program))
        .args(["--config", &cfg.display().to_string(), "check-config"])
        .args(offline)
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
}

#[test]
fn agent_check_config_accepts_good_and_names_what_is_wrong() {
    let f = files();
    let (ok, out) = check("dbfleet-agent", &agent_config(&f, "db1", ""));
    assert!(ok, "{out}");

    let (ok, out) = check(
        "dbfleet-agent",
        &agent_config(&f, "db1", "report_intervall = \"1s\""),
    );
    assert!(!ok && out.contains("report_intervall"), "{out}");

    let (ok, out) = check(
        "dbfleet-agent",
        &agent_config(&f, "db1", "collect_interval = \"5s\""),
    );
    assert!(!ok && out.contains("collect_interval"), "{out}");

    let (ok, out) = check(
        "dbfleet-agent",
        &agent_config(&f, "db1", "[backup]\nrepository = \"backups\""),
    );
    assert!(
        !ok && out.contains("backup.repository") && out.contains("absolute"),
        "{out}"
    );

    let (ok, out) = check(
        "dbfleet-agent",
        &agent_config(
            &f,
            "db1",
            &format!(
                "[backup]\nrepository = {:?}\nrate_limit_mib_per_s = 0",
                f.slot.dir.join("backups")
            ),
        ),
    );
    assert!(
        !ok && out.contains("backup.rate_limit_mib_per_s") && out.contains("remove it"),
        "{out}"
    );

    // A coordinator without its certificate name, and one named twice.
    let good = std::fs::read_to_string(agent_config(&f, "db1", "")).unwrap();
    let ip = f.slot.ip(21);
    for (line, needle) in [
        (
            format!("coordinators = [\"{ip}:7200\"]"),
            format!("\"{ip}:7200\" names no coordinator: write NAME@HOST:PORT"),
        ),
        (
            format!("coordinators = [\"c1@{ip}:7200\", \"c1@{ip}:7201\"]"),
            "coordinator c1 is listed twice".to_string(),
        ),
    ] {
        let bad = f.slot.dir.join("agent-coordinators.toml");
        std::fs::write(&bad, with_line(&good, "coordinators", &line)).unwrap();
        let (ok, out) = check("dbfleet-agent", &bad);
        assert!(!ok && out.contains(&needle), "{line}: {out}");
    }

    // Values that parse but would break safety or liveness.
    for (extra, mysql_line, field) in [
        ("amnesia_quarantine = \"0s\"", "", "amnesia_quarantine"),
        ("", "connect_timeout = \"0s\"", "mysql.connect_timeout"),
        ("", "query_timeout = \"0s\"", "mysql.query_timeout"),
    ] {
        let cfg = agent_config(&f, "db1", extra);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "user = \"dbfleet_agent\"",
            &format!("user = \"dbfleet_agent\"\n{mysql_line}"),
        );
        std::fs::write(&cfg, text).unwrap();
        let (ok, out) = check("dbfleet-agent", &cfg);
        assert!(
            !ok && out.contains(field) && out.contains("must be between"),
            "{out}"
        );
    }

    let (ok, out) = check("dbfleet-agent", &agent_config(&f, "db9", ""));
    assert!(
        !ok && out.contains("dbfleet://agent/db9"),
        "wrong certificate must be named: {out}"
    );

    let cfg = agent_config(&f, "db1", "");
    std::fs::set_permissions(
        f.slot.dir.join("pw"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (ok, out) = check("dbfleet-agent", &cfg);
    assert!(!ok && out.contains("chmod 600"), "{out}");
    assert!(!out.contains("sup3r-secret-pw"), "the secret leaked: {out}");

    // The agent itself refuses to start on the same problem.
    let mut p = Proc::start(
        &bin("dbfleet-agent"),
        &["--config".into(), cfg.display().to_string()],
        f.slot.dir.join("agent.log"),
    );
    let (st, log) = p.wait_exit();
    assert!(!st.success() && log.contains("chmod 600"), "{log}");
}

#[test]
fn coordinator_refuses_unsafe_values_and_a_data_dir_in_use() {
    let f = files();
    let paths = f.pki.issue(Role::Coordinator, "c1", &[], false, false);
    let write = |name: &str, listen: &str, extra: &str| {
        let cfg = f.slot.dir.join(name);
        write_coordinator_config(&cfg, listen, &f.slot.dir.join("c1"), &paths, extra);
        cfg
    };
    let a = f.slot.ip(21);
    let (ok, out) = check(
        "dbfleet-coordinator",
        &write(
            "bad.toml",
            &format!("{a}:7200"),
            "[topology]\nagent_timeout = \"10ms\"",
        ),
    );
    assert!(!ok && out.contains("topology.agent_timeout"), "{out}");
    let (ok, out) = check(
        "dbfleet-coordinator",
        &write("bad2.toml", "not-an-address", ""),
    );
    assert!(!ok && out.contains("listen"), "{out}");

    // Values that parse but would break safety or liveness, each refused
    // with its rule.
    for (name, extra, lease, needle) in [
        (
            "budget.toml",
            "[failover]\nbudget = 0",
            "",
            "failover.budget",
        ),
        (
            "hook.toml",
            "[failover]\npre_hook = [\"/nonexistent/veto-everything\"]",
            "",
            "does not exist or is not executable",
        ),
        (
            "lease.toml",
            "",
            "lease = \"1000years\"\n",
            "must be at most",
        ),
        ("voters.toml", "", "", "voter v1 is listed twice"),
    ] {
        let cfg = write(name, &format!("{a}:7200"), extra);
        let mut text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[lease]\n", &format!("[lease]\n{lease}"));
        if name == "voters.toml" {
            text = text.replace(
                "voters = [\"v1@127.0.0.1:9\"]",
                "voters = [\"v1@127.0.0.1:9\", \"v1@127.0.0.2:9\", \"v2@127.0.0.3:9\"]",
            );
        }
        std::fs::write(&cfg, text).unwrap();
        let (ok, out) = check("dbfleet-coordinator", &cfg);
        assert!(!ok && out.contains(needle), "{name}: {out}");
    }

    let first = write("c1.toml", &format!("{a}:7200"), "");
    let mut p1 = Proc::start(
        &bin("dbfleet-coordinator"),
        &["--config".into(), first.display().to_string()],
        f.slot.dir.join("c1.log"),
    );
    futures_block_on(p1.wait_listening(&format!("{a}:7200")));
    let second = write("c1b.toml", &format!("{}:7200", f.slot.ip(22)), "");
    let mut p2 = Proc::start(
        &bin("dbfleet-coordinator"),
        &["--config".into(), second.display().to_string()],
        f.slot.dir.join("c1b.log"),
    );
    let (st, log) = p2.wait_exit();
    assert!(
        !st.success() && log.contains("cannot open"),
        "two coordinators on one data dir: {log}"
    );
}

fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Runtime::new().unwrap().block_on(f)
}
