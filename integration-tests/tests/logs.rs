//! Logs of real agents and coordinators: JSON lines that carry the
//! cluster, host and operation they are about; a level changed on SIGHUP
//! without a restart; a bad level refused at start; and no password or
//! private key material in any log line or error message, even at debug.

use std::fs;
use std::path::Path;
use std::time::Duration;

use dbfleet_integration_tests::{PATIENCE, TestFleet, bin, sole_active};
use serde_json::Value;

/// Every line of `log`, parsed; panics naming a line that is not JSON.
fn json_lines(log: &Path) -> Vec<Value> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {l}", log.display()))
        })
        .collect()
}

/// The value of `field` on the line itself or in any of its spans.
fn field<'a>(line: &'a Value, field: &str) -> Option<&'a str> {
    line.get(field).and_then(Value::as_str).or_else(|| {
        line.get("spans")?
            .as_array()?
            .iter()
            .find_map(|s| s.get(field).and_then(Value::as_str))
    })
}

async fn wait_line(log: &Path, what: &str, after: usize, found: impl Fn(&Value) -> bool) -> usize {
    let give_up = std::time::Instant::now() + PATIENCE;
    loop {
        let lines = json_lines(log);
        if let Some(i) = lines.iter().skip(after).position(&found) {
            return after + i;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "no line in {} shows {what}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn hup(fleet: &TestFleet, name: &str) {
    let pid = fleet.pid(name).expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

/// Rewrites the top-level `log_level` of a config file (None: removes it).
fn set_level(config: &Path, level: Option<&str>) {
    let text = fs::read_to_string(config).unwrap();
    let rest: String = text
        .lines()
        .filter(|l| !l.starts_with("log_level"))
        .map(|l| format!("{l}\n"))
        .collect();
    let head = level
        .map(|l| format!("log_level = {l:?}\n"))
        .unwrap_or_default();
    fs::write(config, head + &rest).unwrap();
}

#[tokio::test]
async fn json_logs_carry_their_subjects_change_level_on_sighup_and_hold_no_secret() {
    let fleet = TestFleet::start_spec(2, 2, |s| s.json_logs = true).await;
    let coordinators = fleet
        .wait_coordinators("an active coordinator", |c| sole_active(c).is_some())
        .await;
    let active = sole_active(&coordinators).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let logs = fleet.dir.join("logs");
    let clog = logs.join(format!("coordinator-{active}.log"));

    // Debug on the active, without a restart.
    let config = fleet.dir.join(format!("coordinator-{active}.toml"));
    set_level(&config, Some("debug"));
    hup(&fleet, &format!("coordinator-{active}"));
    let applied = wait_line(&clog, "the debug level applied", 0, |l| {
        field(l, "log_level") == Some("debug")
    })
    .await;
    wait_line(&clog, "a DEBUG line", applied, |l| l["level"] == "DEBUG").await;

    // The agent that handles the passwords, at debug too.
    let alog = logs.join("agent-db1.log");
    let agent_config = fleet.dir.join("agent-db1.toml");
    set_level(&agent_config, Some("debug"));
    hup(&fleet, "agent-db1");
    let agent_applied = wait_line(&alog, "the agent's debug level applied", 0, |l| {
        field(l, "log_level") == Some("debug")
    })
    .await;
    wait_line(&alog, "a DEBUG line of the agent", agent_applied, |l| {
        l["level"] == "DEBUG"
    })
    .await;

    // An operation: its lines name the cluster and the operation.
    let out = fleet.cli(&[
        "switchover",
        "--cluster",
        "main",
        "--to",
        "db2",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = result["id"].as_str().expect("operation id").to_string();
    let lines = json_lines(&clog);
    let of_op: Vec<&Value> = lines
        .iter()
        .filter(|l| field(l, "operation") == Some(id.as_str()))
        .collect();
    assert!(
        of_op
            .iter()
            .any(|l| l["message"] == "operation completed" && l["kind"] == "switchover"),
        "the operation's end is logged under its id: {of_op:#?}"
    );
    assert!(
        of_op.iter().all(|l| field(l, "cluster") == Some("main")),
        "{of_op:#?}"
    );

    // Back to the default: no DEBUG line after the change.
    set_level(&config, None);
    hup(&fleet, &format!("coordinator-{active}"));
    let back = wait_line(&clog, "the default level applied", applied + 1, |l| {
        field(l, "log_level") == Some("default")
    })
    .await;
    // Work that logs at info and, at debug, much more: an operator write.
    for state in ["on", "off"] {
        let out = fleet.cli(&["maintenance", state, "--cluster", "main"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_line(&clog, "the control change logged", back + 1, |l| {
        l["message"] == "cluster control changed"
            && l["detail"] == "maintenance off (by operator sandbox)"
    })
    .await;
    let after = json_lines(&clog);
    assert!(
        after.iter().skip(back).all(|l| l["level"] != "DEBUG"),
        "debug lines after returning to info"
    );

    // Every line our code logs names its subject: an agent's its cluster
    // and host, a coordinator's its id (libraries such as h2 open spans of
    // their own with no parent; their debug lines are theirs).
    let ours = |l: &Value| {
        l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("dbfleet"))
    };
    for m in &fleet.info.members {
        let lines = json_lines(&logs.join(format!("agent-{}.log", m.host)));
        assert!(!lines.is_empty());
        for l in lines.iter().filter(|l| ours(l)) {
            assert_eq!(field(l, "cluster"), Some("main"), "{l}");
            assert_eq!(field(l, "host"), Some(m.host.as_str()), "{l}");
        }
    }
    for c in &fleet.info.coordinators {
        let lines = json_lines(&logs.join(format!("coordinator-{}.log", c.id)));
        for l in lines.iter().filter(|l| ours(l)) {
            assert_eq!(field(l, "coordinator"), Some(c.id.as_str()), "{l}");
        }
    }

    // A bad level refuses to start, naming the key and the fix.
    let bad = fleet.dir.join("bad-level.toml");
    fs::copy(&config, &bad).unwrap();
    set_level(&bad, Some("dbfleet=loud"));
    let out = std::process::Command::new(bin("dbfleet-coordinator"))
        .args(["--config", bad.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("log_level") && err.contains("use e.g."),
        "{err}"
    );

    // No secret anywhere: passwords, and every line of every private key.
    let mut texts = vec![fleet.all_logs(), err.to_string()];
    // An error about a key file must not quote it.
    let key = fleet.dir.join("certs").join("bad.key");
    let real = fs::read_to_string(&key_files(&fleet.dir)[0]).unwrap();
    fs::write(
        &key,
        real.replace("PRIVATE KEY-----\n", "PRIVATE KEY-----\n!!"),
    )
    .unwrap();
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let broken = fleet.dir.join("broken-key.toml");
    let text = fs::read_to_string(&config).unwrap();
    let original_key = text
        .lines()
        .find_map(|l| l.strip_prefix("key = "))
        .expect("a key path in the config")
        .to_string();
    fs::write(
        &broken,
        text.replace(&original_key, &format!("{:?}", key.display().to_string())),
    )
    .unwrap();
    let out = std::process::Command::new(bin("dbfleet-coordinator"))
        .args(["--config", broken.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a broken key refuses to start");
    texts.push(String::from_utf8_lossy(&out.stderr).to_string());
    let all = texts.join("\n");
    for secret in fleet.credentials.all() {
        assert!(
            !all.contains(secret),
            "a password appears in a log or an error"
        );
    }
    let mut key_lines = 0;
    for k in key_files(&fleet.dir) {
        for line in fs::read_to_string(&k)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
        {
            key_lines += 1;
            assert!(
                !all.contains(line.trim_start_matches("!!")),
                "material of {} appears in a log or an error",
                k.display()
            );
        }
    }
    assert!(key_lines > 0, "the key files were read");
}

/// Every private key file of the fleet.
fn key_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = fs::read_dir(dir.join("certs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "key") && !p.ends_with("bad.key"))
        .collect();
    out.sort();
    out
}
