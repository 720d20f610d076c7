//! The `dbfleet sandbox` commands as a newcomer runs them, on a test slot's
//! addresses instead of 127.0.0.x.

use std::net::TcpListener;
use std::process::{Command, Output};

use dbfleet_cli::sandbox::process;
use dbfleet_integration_tests::{Slot, bin, init};

fn dbfleet(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin("dbfleet"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Stops the sandbox if the test fails before its own `down`.
struct DownOnDrop(std::path::PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = dbfleet_cli::sandbox::down(&self.0);
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn up_status_and_down_leave_nothing_behind() {
    init();
    let slot = Slot::claim();
    let dir = slot.dir.join("sb");
    let d = dir.display().to_string();
    let base = format!("127.1.{}", slot.n);
    let up = dbfleet(
        &[
            "sandbox",
            "up",
            "--dir",
            &d,
            "--base",
            &base,
            "--replicas",
            "1",
            "--coordinators",
            "1",
        ],
        &[],
    );
    let _guard = DownOnDrop(dir.clone());
    assert!(up.status.success(), "{}", text(&up));
    assert!(
        text(&up).contains("dbfleet status"),
        "prints what to try next: {}",
        text(&up)
    );

    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sandbox.json")).unwrap()).unwrap();
    for f in [
        "cluster",
        "members",
        "coordinators",
        "app_user",
        "app_password",
        "app_database",
    ] {
        assert!(info.get(f).is_some(), "sandbox.json lacks {f}");
    }
    let m = &info["members"][0];
    for f in [
        "host",
        "address",
        "mysql_port",
        "agent_address",
        "metrics_address",
    ] {
        assert!(m.get(f).is_some(), "member lacks {f}");
    }

    let cfg = dir.join("dbfleet.toml").display().to_string();
    let st = dbfleet(&["status", "--output", "json"], &[("DBFLEET_CONFIG", &cfg)]);
    assert!(st.status.success(), "{}", text(&st));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["clusters"][0]["primary"], "db1");

    let again = dbfleet(&["sandbox", "up", "--dir", &d, "--base", &base], &[]);
    assert!(
        !again.status.success() && text(&again).contains("already exists"),
        "{}",
        text(&again)
    );

    let pids: Vec<u32> = process::pidfiles(&dir.join("run"))
        .iter()
        .filter_map(|(_, p)| process::read_pid(p))
        .collect();
    assert_eq!(
        pids.len(),
        5,
        "a mariadbd and an agent for each of 2 members, 1 coordinator: {pids:?}"
    );
    let down = dbfleet(&["sandbox", "down", "--dir", &d], &[]);
    assert!(down.status.success(), "{}", text(&down));
    for pid in pids {
        assert!(!process::alive(pid), "pid {pid} survived sandbox down");
    }
    assert!(!dir.exists());

    let none = dbfleet(&["status"], &[("DBFLEET_CONFIG", &cfg)]);
    assert!(!none.status.success());
}

#[test]
fn up_refuses_taken_addresses_and_missing_servers_without_leaving_anything() {
    init();
    let slot = Slot::claim();
    let dir = slot.dir.join("sb");
    let d = dir.display().to_string();
    let base = format!("127.1.{}", slot.n);

    let _squatter = TcpListener::bind(format!("{}:3306", slot.ip(12))).unwrap();
    let up = dbfleet(&["sandbox", "up", "--dir", &d, "--base", &base], &[]);
    assert!(!up.status.success());
    assert!(
        text(&up).contains(&format!("{}:3306 is already in use", slot.ip(12))),
        "{}",
        text(&up)
    );
    assert!(!dir.exists());
    drop(_squatter);

    // Members and coordinators would share addresses past ten servers.
    let up = dbfleet(
        &[
            "sandbox",
            "up",
            "--dir",
            &d,
            "--base",
            &base,
            "--clusters",
            "4",
            "--replicas",
            "2",
        ],
        &[],
    );
    assert!(!up.status.success());
    assert!(
        text(&up).contains("--clusters × (--replicas + 1) must be 1-10"),
        "{}",
        text(&up)
    );
    assert!(!dir.exists());

    // Run by root, the servers run as the mysql user, who must be able to
    // reach the directory (a 0700 `mktemp -d` is closed to them).
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let closed = slot.dir.join("closed");
        std::fs::create_dir_all(&closed).unwrap();
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let inside = closed.join("sb");
        let up = dbfleet(
            &[
                "sandbox",
                "up",
                "--dir",
                &inside.display().to_string(),
                "--base",
                &base,
            ],
            &[],
        );
        assert!(!up.status.success());
        assert!(
            text(&up).contains(&format!(
                "the `mysql` user, who cannot enter {}",
                closed.display()
            )) && text(&up).contains("chmod o+x"),
            "{}",
            text(&up)
        );
        assert!(!inside.exists());
    }

    let empty = slot.dir.join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let up = dbfleet(
        &["sandbox", "up", "--dir", &d, "--base", &base],
        &[("DBFLEET_MARIADB_BINDIR", &empty.display().to_string())],
    );
    assert!(!up.status.success());
    assert!(
        text(&up).contains("mariadbd not found") && text(&up).contains("mariadb-server"),
        "{}",
        text(&up)
    );
    assert!(!dir.exists());

    // The MySQL flavor without MySQL unpacked: the fix is named.
    let up = dbfleet(
        &[
            "sandbox", "up", "--dir", &d, "--base", &base, "--flavor", "mysql",
        ],
        &[("DBFLEET_MYSQL_HOME", &empty.display().to_string())],
    );
    assert!(!up.status.success());
    assert!(
        text(&up).contains(&format!(
            "mysqld (MySQL 9.7) not found (looked in {} (DBFLEET_MYSQL_HOME))",
            empty.display()
        )) && text(&up).contains("./scripts/install-mysql"),
        "{}",
        text(&up)
    );
    assert!(!dir.exists());
    let up = dbfleet(
        &[
            "sandbox", "up", "--dir", &d, "--base", &base, "--flavor", "percona",
        ],
        &[],
    );
    assert!(
        !up.status.success()
            && text(&up).contains("unknown flavor \"percona\"; use mariadb or mysql"),
        "{}",
        text(&up)
    );
    assert!(!dir.exists());

    let down = dbfleet(
        &["sandbox", "down", "--dir", &slot.dir.display().to_string()],
        &[],
    );
    assert!(
        !down.status.success() && text(&down).contains("not a dbfleet sandbox"),
        "{}",
        text(&down)
    );
}
