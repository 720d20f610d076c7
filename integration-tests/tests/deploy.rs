//! The shipped systemd units are valid for systemd itself.

use std::process::Command;

use dbfleet_integration_tests::bin;

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let mut units = Vec::new();
    for name in ["dbfleet-agent", "dbfleet-coordinator"] {
        let text = std::fs::read_to_string(root.join(format!("{name}.service"))).unwrap();
        assert!(
            text.contains("Type=notify") && text.contains("WatchdogSec="),
            "{name}"
        );
        // Point ExecStart at the freshly built binary so verify can check it.
        let text = text.replace(
            &format!("/usr/bin/{name}"),
            &bin(name).display().to_string(),
        );
        let path = dir.path().join(format!("{name}.service"));
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze is installed by scripts/setup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
}
