//! The shipped units under real systemd: systemd 252 boots as PID 1 of a
//! `systemd-nspawn` container whose root is an overlay of this machine's `/`
//! (in a private mount and network namespace; nothing it writes reaches the
//! host). In it, Debian's MariaDB configured as docs/deploy.md §1 says, the
//! accounts of §3, certificates from `dbfleet cert`, the configs rendered from
//! deploy/config, the freshly built binaries in /usr/bin, and the units of
//! deploy/systemd and the polkit rule of deploy/polkit, unmodified. Then:
//! both units reach `active` (Type=notify, READY=1) sandboxed as written, the
//! CLI's `status` shows the host, a physical backup, its verification and a
//! restore (whose `start_command` is `systemctl start mariadb` as the mysql
//! user, through polkit) succeed under the agent's hardening, systemd
//! enforces the agent's watchdog, and neither journal shows the sandbox
//! refusing anything.
//!
//! integration-tests/systemd/boot.sh mounts and boots the container,
//! prepare.sh installs dbfleet in it (before boot, chrooted).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dbfleet_integration_tests::{PATIENCE, Slot, bin_dir, with_line};

const AGENT_PASSWORD: &str = "agent-it-7f3a";
const REPL_PASSWORD: &str = "repl-it-51c9";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The container's PID 1 (its host pid) is found by this argument, with
/// the slot's directory after it: a run killed before its teardown leaves
/// a container that the next claim of the slot then ends, as it ends every
/// process naming the slot (nspawn, named by its `-D`, first).
const MARK: &str = "--dbfleet-it-container=";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    fs::read_to_string(workspace().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `text` with every `from` replaced by `to`; `from` must occur, so a changed
/// template fails here instead of deploying the wrong thing.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not found in:\n{text}");
    text.replace(from, to)
}

/// `text` with its `key = ` line replaced by `line`.
fn line_replaced(text: &str, key: &str, line: &str) -> String {
    assert!(
        text.lines().any(|l| l.starts_with(&format!("{key} = "))),
        "no `{key} = ` line in:\n{text}"
    );
    with_line(text, key, line)
}

/// The body of the first ```LANG block after `heading` in `doc`.
fn code_block<'a>(doc: &'a str, heading: &str, lang: &str) -> &'a str {
    let section = &doc[doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in docs/deploy.md"))..];
    let open = format!("```{lang}\n");
    let start = section
        .find(&open)
        .unwrap_or_else(|| panic!("no {lang} block in {heading:?}"))
        + open.len();
    let len = section[start..].find("```").expect("a closed block");
    &section[start..start + len]
}

fn on_path(program: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .any(|d| Path::new(d).join(program).is_file())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `check` until it returns a value, panicking with `what` and the
/// last thing `check` saw after [`PATIENCE`] (the watchdog needs ~12 s).
fn wait_for<T>(what: &str, mut check: impl FnMut(&mut String) -> Option<T>) -> T {
    let give_up = Instant::now() + PATIENCE;
    let mut last = String::new();
    loop {
        if let Some(v) = check(&mut last) {
            return v;
        }
        assert!(
            Instant::now() < give_up,
            "timed out waiting for {what}; last seen: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The booted container; tears it all down when dropped, also on panic
/// (then first printing the journal).
struct Container {
    nspawn: Child,
    pid1: u32,
    dir: PathBuf,
    cgroup: String,
    /// Dropped last: the slot stays claimed until everything is gone.
    _slot: Slot,
}

/// The cgroups boot.sh makes: one per hierarchy, the cgroup2 one first.
fn cgroups(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        vec![root.join(name)]
    } else {
        vec![
            root.join("unified").join(name),
            root.join("systemd").join(name),
        ]
    }
}

/// SIGKILL to every process in the cgroup boot.sh made: nspawn and the
/// whole container.
fn kill_cgroup(name: &str) {
    let _ = fs::write(cgroups(name)[0].join("cgroup.kill"), "1");
}

/// Removes the cgroups boot.sh made (and nspawn and systemd below them),
/// deepest first, after killing what is left in them.
fn remove_cgroups(name: &str) {
    kill_cgroup(name);
    for root in cgroups(name) {
        let mut dirs = Vec::new();
        let mut todo = vec![root];
        while let Some(d) = todo.pop() {
            if let Ok(entries) = fs::read_dir(&d) {
                todo.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
                dirs.push(d);
            }
        }
        // Children after their parents in `dirs`: remove from the end.
        // A killed process leaves its cgroup a moment after the signal.
        let give_up = Instant::now() + Duration::from_secs(10);
        for d in dirs.iter().rev() {
            while fs::remove_dir(d).is_err() && d.exists() && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// What nspawn leaves in /run when it could not clean up after itself.
fn remove_propagate_dir(machine: &str) {
    let _ = fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(machine));
}

impl Container {
    fn boot(slot: Slot) -> Container {
        let ws = workspace();
        let dir = slot.dir.clone();
        let stage = dir.join("stage");
        fs::create_dir_all(&stage).unwrap();
        let put = |name: &str, body: &str| fs::write(stage.join(name), body).unwrap();

        // §1: the my.cnf lines, in the server's section.
        let deploy = read("docs/deploy.md");
        put(
            "60-dbfleet.cnf",
            &format!(
                "[mariadbd]\n{}",
                code_block(&deploy, "## 1. What dbfleet needs", "ini")
            ),
        );
        put("mysql.password", AGENT_PASSWORD);
        put("repl.password", REPL_PASSWORD);

        // §8: the templates with this host's addresses: db1 and c1 both on
        // 127.0.0.1 (the container's own loopback).
        let agent = read("deploy/config/agent.toml");
        let agent = replaced(&agent, "10.0.0.11", "127.0.0.1");
        let agent = line_replaced(
            &agent,
            "coordinators",
            "coordinators = [\"c1@127.0.0.1:7200\"]",
        );
        let agent = replaced(
            &agent,
            "# start_command = [\"systemctl\", \"start\", \"mariadb\"]",
            "start_command = [\"systemctl\", \"start\", \"mariadb\"]",
        );
        let agent = replaced(
            &agent,
            "# [backup]\n# repository = \"/var/backups/dbfleet\"",
            "[backup]\nrepository = \"/var/backups/dbfleet\"",
        );
        put("agent.toml", &agent);
        let coordinator = read("deploy/config/coordinator.toml");
        let coordinator = replaced(&coordinator, "10.0.0.21", "127.0.0.1");
        let coordinator =
            line_replaced(&coordinator, "voters", "voters = [\"db1@127.0.0.1:7100\"]");
        // The template's pair; its peer is never started here.
        let coordinator = line_replaced(&coordinator, "peer", "peer = \"c2@127.0.0.2:7200\"");
        assert!(coordinator.contains("ca = \"/etc/dbfleet/coordinator-tls/ca.pem\""));
        put("coordinator.toml", &coordinator);
        // §9: the operator's ~/.config/dbfleet.toml.
        let cli = read("deploy/config/dbfleet.toml");
        let cli = line_replaced(&cli, "coordinators", "coordinators = [\"127.0.0.1:7200\"]");
        put(
            "dbfleet.toml",
            &replaced(&cli, "/home/alice/.dbfleet/", "/root/ca/"),
        );
        for f in [
            "deploy/systemd/dbfleet-agent.service",
            "deploy/systemd/dbfleet-coordinator.service",
            "deploy/polkit/50-dbfleet-agent.rules",
            "integration-tests/systemd/prepare.sh",
        ] {
            let name = Path::new(f).file_name().unwrap().to_str().unwrap();
            fs::copy(ws.join(f), stage.join(name)).unwrap();
        }

        let cgroup = format!("dbfleet-it-{}", slot.n);
        // Leftovers of a run of this slot that was killed.
        remove_cgroups(&cgroup);
        remove_propagate_dir(&cgroup);
        let boot_sh = ws.join("integration-tests/systemd/boot.sh");
        let log = fs::File::create(dir.join("boot.log")).unwrap();
        let nspawn = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/bash"])
            .arg(&boot_sh)
            .arg(&dir)
            .arg(bin_dir())
            .arg(&stage)
            .arg(&cgroup)
            .arg(format!("{MARK}{}/", dir.display()))
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", boot_sh.display()));
        let mut c = Container {
            nspawn,
            pid1: 0,
            dir,
            cgroup,
            _slot: slot,
        };
        c.pid1 = wait_for("the container's systemd", |last| {
            if let Ok(Some(st)) = c.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({st}): {}", c.boot_log());
            }
            let pid = c.find_pid1()?;
            let out = c
                .cmd_at(pid, &["systemctl", "is-system-running"])
                .output()
                .ok()?;
            *last = text(&out);
            ["running", "degraded"]
                .contains(&last.trim())
                .then_some(pid)
        });
        c
    }

    fn boot_log(&self) -> String {
        fs::read_to_string(self.dir.join("boot.log")).unwrap_or_default()
    }

    fn mark(&self) -> String {
        format!("{MARK}{}/", self.dir.display())
    }

    /// The host pid of the container's PID 1: a child of nspawn running
    /// systemd with [`MARK`].
    fn find_pid1(&self) -> Option<u32> {
        let want = format!("/usr/lib/systemd/systemd\0{}\0", self.mark());
        fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
            (cmdline == want.as_bytes() && ppid == self.nspawn.id()).then_some(pid)
        })
    }

    fn cmd_at(&self, pid: u32, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-a", "--"])
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        cmd
    }

    /// `args` run inside the container as root (all its namespaces), cut
    /// off after [`PATIENCE`].
    fn cmd(&self, args: &[&str]) -> Command {
        let patience = PATIENCE.as_secs().to_string();
        let mut all = vec!["timeout", &patience];
        all.extend(args);
        self.cmd_at(self.pid1, &all)
    }

    fn output(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .output()
            .unwrap_or_else(|e| panic!("nsenter {args:?}: {e}"))
    }

    /// Runs `args`, which must succeed; returns stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `args` with `input` on stdin, which must succeed.
    fn run_with_input(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sql(&self, statement: &str) -> String {
        self.run(&["mariadb", "-N", "-B", "-e", statement])
            .trim()
            .to_string()
    }

    /// The JSON a `dbfleet ... --output json` command printed.
    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["dbfleet"];
        all.extend(args);
        all.extend(["--output", "json"]);
        let out = self.output(&all);
        assert!(
            out.status.success(),
            "{all:?} failed ({}): {}",
            out.status,
            text(&out)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{all:?} printed no JSON ({e}): {}", text(&out)))
    }

    /// A property of a unit, as `systemctl show` prints it.
    fn prop(&self, unit: &str, name: &str) -> String {
        self.run(&["systemctl", "show", "--value", "-p", name, unit])
            .trim()
            .to_string()
    }

    /// Waits until `dbfleet status` shows db1 reporting.
    fn wait_reporting(&self) {
        wait_for("db1 reporting in `dbfleet status`", |last| {
            let status = self.cli_json(&["status"]);
            *last = status.to_string();
            let db1 = status["clusters"][0]["members"]
                .as_array()?
                .iter()
                .find(|m| m["host"] == "db1")?
                .clone();
            (db1["reporting"] == true && db1["reachable"] == true).then_some(())
        });
    }

    fn journal(&self, args: &[&str]) -> String {
        let mut all = vec!["journalctl", "--no-pager", "-q"];
        all.extend(args);
        text(&self.output(&all))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.pid1 == 0 {
            // Booting failed or timed out: the journal may still say why.
            self.pid1 = self.find_pid1().unwrap_or(0);
        }
        if std::thread::panicking() && self.pid1 != 0 {
            eprintln!(
                "--- failed units ---\n{}\n--- journal (dbfleet, mariadb, polkit) ---\n{}",
                text(&self.output(&["systemctl", "--failed", "--no-legend", "--no-pager"])),
                self.journal(&[
                    "-o",
                    "short-monotonic",
                    "-n",
                    "150",
                    "-u",
                    "dbfleet-agent",
                    "-u",
                    "dbfleet-coordinator",
                    "-u",
                    "mariadb",
                    "-u",
                    "polkit",
                ])
            );
        }
        if std::thread::panicking() {
            eprintln!("--- boot.sh / systemd-nspawn ---\n{}", self.boot_log());
        }
        // SIGKILL to the container's PID 1: the kernel ends every process
        // of its pid namespace, and nspawn exits (cleaning up after itself).
        // nspawn's mount namespace, which alone holds the overlay, goes with
        // nspawn, the private network namespace with the container. Then
        // SIGKILL to whatever is left in the cgroup (nspawn not exiting,
        // or the container never booted).
        if self.pid1 != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid1 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let give_up = Instant::now() + Duration::from_secs(10);
            while matches!(self.nspawn.try_wait(), Ok(None)) && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_cgroup(&self.cgroup);
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        remove_cgroups(&self.cgroup);
        remove_propagate_dir(&self.cgroup);
        for d in ["root", "upper", "work", "stage"] {
            let _ = fs::remove_dir_all(self.dir.join(d));
        }
    }
}

#[test]
fn shipped_units_run_under_real_systemd() {
    assert!(
        on_path("systemd-nspawn"),
        "systemd-nspawn is missing (package systemd-container): this test boots \
         systemd in a container; run ./scripts/setup"
    );
    assert!(
        Path::new("/usr/lib/polkit-1/polkitd").exists(),
        "polkitd is missing (package polkitd): the agent's start_command needs it; run ./scripts/setup"
    );
    let c = Container::boot(Slot::claim());
    assert_eq!(c.prop("mariadb.service", "ActiveState"), "active");
    assert_eq!(c.prop("mariadb.socket", "LoadState"), "masked");

    // §3: the accounts, exactly as the guide writes them.
    let deploy = read("docs/deploy.md");
    let accounts = code_block(&deploy, "## 3. Accounts", "sql");
    let accounts = replaced(accounts, "<agent password>", AGENT_PASSWORD);
    let accounts = replaced(&accounts, "<replication password>", REPL_PASSWORD);
    let accounts = replaced(&accounts, "10.0.0.%", "127.0.0.%");
    c.run_with_input(&["mariadb"], &accounts);
    let passwordless = c.sql(
        "SELECT concat(quote(user), '@', quote(host)) FROM mysql.user \
         WHERE (user = 'root' AND host <> 'localhost') OR user = ''",
    );
    for account in passwordless.lines() {
        c.sql(&format!("DROP USER {account}"));
    }
    c.sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)");

    // Type=notify: `start` returns once each sent READY=1.
    c.run(&["systemctl", "start", "dbfleet-coordinator", "dbfleet-agent"]);
    for unit in ["dbfleet-coordinator", "dbfleet-agent"] {
        let fragment = format!("/etc/systemd/system/{unit}.service");
        assert_eq!(c.prop(unit, "FragmentPath"), fragment);
        assert_eq!(
            c.run(&["cat", &fragment]),
            read(&format!("deploy/systemd/{unit}.service"))
        );
        assert_eq!(c.prop(unit, "ActiveState"), "active", "{unit}");
        assert_eq!(c.prop(unit, "SubState"), "running", "{unit}");
        // The sandbox is in force on the running process.
        let pid = c.prop(unit, "MainPID");
        let status = c.run(&["cat", &format!("/proc/{pid}/status")]);
        for want in ["NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000"] {
            assert!(status.contains(want), "{unit}: no {want:?} in\n{status}");
        }
    }
    let agent_pid = c.prop("dbfleet-agent", "MainPID");
    let user = c.run(&["stat", "-c", "%U", &format!("/proc/{agent_pid}")]);
    assert_eq!(user.trim(), "mysql");
    let check = c.run(&[
        "runuser",
        "-u",
        "mysql",
        "--",
        "dbfleet-agent",
        "--config",
        "/etc/dbfleet/agent.toml",
        "check-config",
    ]);
    assert!(check.contains(": ok"), "{check}");

    // §9: the CLI, with ~/.config/dbfleet.toml: db1 awaits admission,
    // the operator admits it where it reports, and it shows in status.
    wait_for("c1 active (its lease granted by db1's agent)", |last| {
        let v = c.cli_json(&["coordinators"]);
        *last = v.to_string();
        (v["coordinators"][0]["role"] == "active").then_some(())
    });
    wait_for("db1 awaiting admission", |last| {
        let v = c.cli_json(&["agents"]);
        *last = v.to_string();
        v["agents"]
            .as_array()?
            .iter()
            .any(|a| a["host"] == "db1" && a["standing"] == "awaiting admission")
            .then_some(())
    });
    let admitted = c.cli_json(&["agents", "admit", "db1"]);
    assert_eq!(admitted["admitted"][0]["cluster"], "main", "{admitted}");
    c.wait_reporting();
    let table = c.run(&["dbfleet", "status"]);
    assert!(table.contains("db1"), "{table}");

    // A physical backup, its verification (a scratch mysqld the agent
    // starts) and a restore (mysqld stopped, the data directory swapped,
    // then `systemctl start mariadb` as mysql, allowed by the polkit rule).
    let backup = c.cli_json(&["backup", "run", "--cluster", "main", "--host", "db1"]);
    assert_eq!(backup["status"], "completed", "{backup}");
    let id = backup["id"].as_str().expect("a backup id").to_string();
    c.sql("INSERT INTO app.t VALUES (2)");
    let verified = c.cli_json(&["backup", "verify", &id]);
    assert_eq!(verified["verification"], "verified", "{verified}");
    let mysqld_before = c.prop("mariadb.service", "MainPID");
    let restore = c.cli_json(&["backup", "restore", &id, "--host", "db1"]);
    assert_eq!(restore["status"], "completed", "{restore}");
    assert_eq!(c.sql("SELECT group_concat(id) FROM app.t"), "1");
    assert_eq!(c.prop("mariadb.service", "ActiveState"), "active");
    assert_ne!(c.prop("mariadb.service", "MainPID"), mysqld_before);
    let agent_log = c.journal(&["-u", "dbfleet-agent", "-o", "cat"]);
    assert!(agent_log.contains("start_command ran"), "{agent_log}");

    // The watchdog: a stopped agent stops pinging; systemd kills and
    // restarts it (Type=notify again). Last: an agent restarted before its
    // first vote would start amnesiac and grant the coordinator no lease
    // for 30 s (the fence record's directory exists, the record does not).
    let restarts: u32 = c.prop("dbfleet-agent", "NRestarts").parse().unwrap();
    c.run(&["kill", "-STOP", &agent_pid]);
    wait_for("systemd to restart the stopped agent", |last| {
        let now = c.prop("dbfleet-agent", "NRestarts");
        let state = c.prop("dbfleet-agent", "ActiveState");
        let pid = c.prop("dbfleet-agent", "MainPID");
        *last = format!("NRestarts={now} ActiveState={state} MainPID={pid}");
        let restarted = now.parse::<u32>().is_ok_and(|n| n > restarts);
        (restarted && state == "active" && pid != agent_pid).then_some(())
    });
    let unit_log = c.journal(&["-u", "dbfleet-agent", "-o", "cat"]);
    for want in [
        "dbfleet-agent.service: Watchdog timeout",
        "dbfleet-agent.service: Failed with result 'watchdog'.",
        // The restarted agent keeps its promise (StateDirectory=).
        "fence record loaded",
    ] {
        assert!(
            unit_log.contains(want),
            "no {want:?} in the journal:\n{unit_log}"
        );
    }

    c.wait_reporting();

    // Nothing the sandbox refused: a filtered syscall kills with SIGSYS,
    // other refusals come back as EPERM, EACCES or EROFS.
    let all = c.journal(&[
        "-u",
        "dbfleet-agent",
        "-u",
        "dbfleet-coordinator",
        "-o",
        "cat",
    ]);
    for bad in [
        "SIGSYS",
        "status=31/SYS",
        "Bad system call",
        "Operation not permitted",
        "EPERM",
        "(os error 1)",
        "Permission denied",
        "Read-only file system",
    ] {
        assert!(!all.contains(bad), "{bad:?} in the journal:\n{all}");
    }
}
