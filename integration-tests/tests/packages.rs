//! The Debian packages: cargo-deb (built by scripts/setup) packs the
//! agent, the coordinator and the CLI from the binaries the suite built;
//! `dpkg -i` installs them on this machine with their units, example
//! configs and users; a fleet then runs with the installed agent; `dpkg
//! --purge` removes them again.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use dbfleet_integration_tests::TestFleet;

const PACKAGES: [(&str, &str); 3] = [
    ("dbfleet-agent", "dbfleet-agent"),
    ("dbfleet-coordinator", "dbfleet-coordinator"),
    ("dbfleet-cli", "dbfleet"),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

/// Purges the packages when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .arg("--purge")
            .args(PACKAGES.iter().map(|(_, deb)| *deb))
            .output();
    }
}

#[tokio::test]
async fn the_packages_install_binaries_units_users_and_an_agent_runs_from_them() {
    let cargo_deb = workspace().join("target/tools/bin/cargo-deb");
    assert!(
        cargo_deb.exists(),
        "{} is missing: run ./scripts/setup",
        cargo_deb.display()
    );
    let out = tempfile::tempdir().unwrap();
    let mut debs = Vec::new();
    for (crate_name, deb) in PACKAGES {
        run(Command::new(&cargo_deb)
            .current_dir(workspace())
            .args([
                "-p",
                crate_name,
                "--no-build",
                "--profile",
                "dev",
                "--no-strip",
                "--fast",
            ])
            .arg("--output")
            .arg(out.path().join(format!("{deb}.deb"))));
        debs.push(out.path().join(format!("{deb}.deb")));
    }
    let listing = run(Command::new("dpkg-deb").arg("--contents").arg(&debs[0]));
    for path in [
        "./usr/bin/dbfleet-agent",
        "dbfleet-agent.service",
        "./usr/share/doc/dbfleet-agent/examples/agent.toml",
        "./usr/share/doc/dbfleet-agent/deploy.md",
    ] {
        assert!(listing.contains(path), "{path} not packed: {listing}");
    }

    let _installed = Installed;
    run(Command::new("dpkg").arg("-i").args(&debs));
    for bin in ["dbfleet-agent", "dbfleet-coordinator", "dbfleet"] {
        let v = run(Command::new(format!("/usr/bin/{bin}")).arg("--version"));
        assert!(v.contains(env!("CARGO_PKG_VERSION")), "{bin}: {v}");
    }
    let unit = ["/lib/systemd/system", "/usr/lib/systemd/system"]
        .iter()
        .map(|d| Path::new(d).join("dbfleet-agent.service"))
        .find(|p| p.exists())
        .expect("the agent's unit is installed");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("User=mysql"), "{text}");
    let mysql = nix::unistd::User::from_name("mysql")
        .unwrap()
        .expect("the mysql user");
    assert!(
        nix::unistd::User::from_name("dbfleet").unwrap().is_some(),
        "the coordinator's dbfleet user"
    );
    let tls = std::fs::metadata("/etc/dbfleet/tls").unwrap();
    assert_eq!(tls.permissions().mode() & 0o777, 0o750);
    assert_eq!(tls.gid(), mysql.gid.as_raw());
    let dbfleet = nix::unistd::User::from_name("dbfleet").unwrap().unwrap();
    let coordinator_tls = std::fs::metadata("/etc/dbfleet/coordinator-tls").unwrap();
    assert_eq!(coordinator_tls.permissions().mode() & 0o777, 0o750);
    assert_eq!(coordinator_tls.gid(), dbfleet.gid.as_raw());

    // A fleet whose agents are the installed binary.
    let fleet = TestFleet::start_spec(1, 1, |spec| {
        spec.bins.agent = PathBuf::from("/usr/bin/dbfleet-agent");
    })
    .await;
    let pid = fleet.pid("agent-db1").expect("db1's agent runs");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, Path::new("/usr/bin/dbfleet-agent"));
    let status = fleet.status_json();
    assert_eq!(status["clusters"][0]["primary"], "db1", "{status}");
}
