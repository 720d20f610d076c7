//! `Type=notify` for real: the coordinator tells a notify socket it is
//! ready once it serves, pings the watchdog, announces stopping on SIGTERM
//! and exits cleanly.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbfleet_common::identity::Role;
use dbfleet_integration_tests::{PATIENCE, Slot, TestPki, bin, init, write_coordinator_config};

fn expect(sock: &UnixDatagram, want: &str, log: &dyn Fn() -> String) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while start.elapsed() < PATIENCE {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("never received {want}; got {seen:?}; log: {}", log());
}

#[test]
fn coordinator_notifies_ready_watchdog_and_stopping() {
    init();
    let slot = Slot::claim();
    let pki = TestPki::new(&slot.dir);
    let ip = slot.ip(21);
    let paths = pki.issue(Role::Coordinator, "c1", &[&ip], false, false);
    let cfg = slot.dir.join("c1.toml");
    write_coordinator_config(
        &cfg,
        &format!("{ip}:7200"),
        &slot.dir.join("data"),
        &paths,
        "",
    );
    let sock_path = slot.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = std::fs::File::create(slot.dir.join("c1.log")).unwrap();
    // systemd names the watched pid; `exec` keeps the shell's pid.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "WATCHDOG_PID=$$ exec {} --config {}",
            bin("dbfleet-coordinator").display(),
            cfg.display()
        ))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let log_path = slot.dir.join("c1.log");
    let expect = |want: &str| {
        expect(&sock, want, &|| {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        })
    };

    expect("READY=1");
    // Serving when it says so.
    std::net::TcpStream::connect(format!("{ip}:7200")).expect("listening once READY=1 was sent");
    expect("WATCHDOG=1");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    expect("STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful stop exits 0: {status}");
}
