//! Harness for real-process tests: real `mariadbd` servers, real agents and
//! coordinators, real mTLS.
//!
//! Every test fleet is a sandbox (the same code as `dbfleet sandbox up`) on
//! its own loopback block `127.1.N.0/24`, where N is a slot claimed with an
//! exclusive file lock, so tests never collide with each other or with a
//! developer's sandbox on 127.0.0.x. Dropping the fleet (also on panic)
//! stops every process; a slot left behind by a killed test run is cleaned
//! up by the next test that claims it.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub mod backups;
pub mod failover;
pub mod flavored;
pub mod s3;
pub mod scrape;
pub mod workload;

pub use scrape::{plain_http_answer, sample, scrape, scraper_certificate, tls_scrape};

use dbfleet_cli::sandbox::{self, Binaries, Fleet, SandboxError, SandboxSpec};
use dbfleet_proto::pb;
use mysql_async::prelude::Queryable;
use nix::fcntl::{Flock, FlockArg};

/// Report interval of test agents: short, so conditions settle quickly.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Agent timeout of test coordinators.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Patience for any awaited condition; generous for loaded CI machines.
pub const PATIENCE: Duration = Duration::from_secs(60);

const SLOTS_DIR: &str = "/tmp/dbfleet-it";

/// The directory holding the workspace's binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary has a path");
    // target/debug/deps/<test> -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    assert!(
        dir.join("dbfleet-agent").is_file() && dir.join("dbfleet").is_file(),
        "binaries missing in {}: run `cargo build --workspace --bins` first (the README's test command does)",
        dir.display()
    );
    dir
}

/// Path of one workspace binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// An exclusive claim on an address block `127.1.N.0/24` and a scratch
/// directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Slot {
    /// N.
    pub n: u8,
    /// Scratch directory of this slot (short, for unix socket paths).
    pub dir: PathBuf,
    _lock: Flock<File>,
}

impl Slot {
    /// Claims the first free slot, cleaning up what a killed earlier run
    /// may have left in it.
    pub fn claim() -> Slot {
        fs::create_dir_all(SLOTS_DIR).expect("create slot directory");
        for n in 1..=250u8 {
            let file =
                File::create(format!("{SLOTS_DIR}/slot-{n}.lock")).expect("create lock file");
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let dir = PathBuf::from(format!("{SLOTS_DIR}/{n}"));
            if dir.exists() {
                kill_leftovers(&dir);
                let _ = fs::remove_dir_all(&dir);
            }
            Partition::remove_all(n);
            fs::create_dir_all(&dir).expect("create slot scratch directory");
            return Slot {
                n,
                dir,
                _lock: lock,
            };
        }
        panic!("no free test slot in {SLOTS_DIR}");
    }

    /// The slot's address prefix.
    pub fn base(&self) -> [u8; 3] {
        [127, 1, self.n]
    }

    /// An address in the slot's block.
    pub fn ip(&self, last: u8) -> String {
        format!("127.1.{}.{last}", self.n)
    }
}

/// A network cut between addresses of one slot, made with iptables on the
/// loopback traffic (every process sends from its own listen address), and
/// healed when dropped. Rules carry the slot in a comment, so a killed run's
/// leftovers are removed when the slot is claimed again.
#[derive(Debug)]
pub struct Partition {
    slot: u8,
    rules: Vec<(String, String)>,
}

impl Partition {
    fn comment(slot: u8) -> String {
        format!("dbfleet-it-{slot}")
    }

    fn iptables(args: &[&str]) -> std::process::Output {
        Command::new("iptables")
            .arg("-w")
            .args(args)
            .output()
            .expect("run iptables (tests run as root with iptables installed; ./scripts/setup installs it)")
    }

    /// Inserts (`-I`) or deletes (`-D`) the rule dropping `src` → `dst`.
    fn rule(action: &str, slot: u8, src: &str, dst: &str) -> std::process::Output {
        let comment = Self::comment(slot);
        Self::iptables(&[
            action,
            "OUTPUT",
            "-s",
            src,
            "-d",
            dst,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "DROP",
        ])
    }

    /// Drops all packets between each address in `a` and each in `b`, both ways.
    pub fn cut(slot: &Slot, a: &[String], b: &[String]) -> Partition {
        let mut rules = Vec::new();
        for x in a {
            for y in b {
                rules.push((x.clone(), y.clone()));
                rules.push((y.clone(), x.clone()));
            }
        }
        for (src, dst) in &rules {
            let out = Self::rule("-I", slot.n, src, dst);
            assert!(
                out.status.success(),
                "iptables: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Partition {
            slot: slot.n,
            rules,
        }
    }

    /// Removes every rule of slot `n` (leftovers of a killed run).
    fn remove_all(n: u8) {
        let Ok(out) = Command::new("iptables")
            .args(["-w", "-S", "OUTPUT"])
            .output()
        else {
            return;
        };
        let tag = Self::comment(n);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(&format!("--comment {tag} ")) && line.starts_with("-A ") {
                let args: Vec<&str> = line[3..].split_whitespace().collect();
                let mut del = vec!["-D"];
                del.extend(args);
                Self::iptables(&del);
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for (src, dst) in &self.rules {
            Self::rule("-D", self.slot, src, dst);
        }
    }
}

/// Kills every process whose command line names `dir`: what a test run
/// that was itself killed left behind in its slot, or what a test that
/// starts its own processes leaves at its end.
pub fn kill_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id()
            && sandbox::process::alive(pid)
            && sandbox::process::belongs_to(pid, dir)
        {
            sandbox::process::stop(pid, Duration::from_secs(5), &mut || false);
        }
    }
}

/// A running test fleet; derefs to the sandbox [`Fleet`].
#[derive(Debug)]
pub struct TestFleet {
    fleet: Option<Fleet>,
    /// The slot it runs in (dropped after the fleet).
    pub slot: Slot,
}

impl std::ops::Deref for TestFleet {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        self.fleet.as_ref().expect("fleet present until drop")
    }
}

impl std::ops::DerefMut for TestFleet {
    fn deref_mut(&mut self) -> &mut Fleet {
        self.fleet.as_mut().expect("fleet present until drop")
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        // Stop the processes before the slot lock is released.
        drop(self.fleet.take());
    }
}

/// What `ask` (a new session and a query on it) answers. A session the
/// fleet ends meanwhile (a repoint or a fence ends the server's client
/// sessions) is replaced by a new one, a few times; any other error, or
/// the fifth ended session, fails the test naming `what`.
pub async fn on_new_sessions<T, F, Fut>(what: &str, mut ask: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, mysql_async::Error>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match ask().await {
            Ok(v) => return v,
            Err(mysql_async::Error::Io(e)) if attempts < 5 => {
                eprintln!("{what}: the session ended ({e}); asking again");
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// `config` (TOML text) with the line starting `key = ` replaced by `line`.
pub fn with_line(config: &str, key: &str, line: &str) -> String {
    config
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key} = ")) {
                format!("{line}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Installs the crypto provider (idempotent); every test calls it first.
pub fn init() {
    dbfleet_common::tls::install_crypto_provider();
}

impl TestFleet {
    /// Starts a primary with `replicas` replicas, one agent each and
    /// `coordinators` coordinators, and waits until it is healthy.
    pub async fn start(replicas: usize, coordinators: usize) -> TestFleet {
        Self::start_with(replicas, coordinators, "").await
    }

    /// [`TestFleet::start`] with `coordinator_extra` appended to every
    /// coordinator's config.
    pub async fn start_with(
        replicas: usize,
        coordinators: usize,
        coordinator_extra: &str,
    ) -> TestFleet {
        Self::start_spec(replicas, coordinators, |spec| {
            spec.coordinator_extra = coordinator_extra.to_string()
        })
        .await
    }

    /// [`TestFleet::start`] with the sandbox's spec changed by `customize`.
    pub async fn start_spec(
        replicas: usize,
        coordinators: usize,
        customize: impl FnOnce(&mut SandboxSpec),
    ) -> TestFleet {
        init();
        let slot = Slot::claim();
        let bins = Binaries::find(&bin_dir()).expect("binaries");
        let mut spec = SandboxSpec {
            dir: slot.dir.join("fleet"),
            replicas,
            coordinators,
            base: slot.base(),
            cluster: "main".into(),
            clusters: 1,
            report_interval: REPORT_INTERVAL,
            agent_timeout: AGENT_TIMEOUT,
            lease: sandbox::sandbox_lease(),
            coordinator_extra: String::new(),
            self_fence_timeout: None,
            agent_backup: String::new(),
            json_logs: false,
            // Admission at first report: one active coordinator less to
            // wait for per fleet; the membership tests and `dbfleet
            // sandbox up` admit as an operator does.
            operator_admission: false,
            seal_backups: true,
            mysql_tls: true,
            flavor: dbfleet_proto::model::Flavor::MariaDb,
            bins,
        };
        customize(&mut spec);
        let fleet = match Fleet::up(spec).await {
            Ok(f) => f,
            Err(e) => panic!("fleet did not start: {e}"),
        };
        if let Err(e) = fleet.wait_healthy(PATIENCE).await {
            panic!("fleet did not become healthy: {e}");
        }
        TestFleet {
            fleet: Some(fleet),
            slot,
        }
    }

    /// A fleet whose coordinators have settled on one active.
    pub async fn start_active(replicas: usize, coordinators: usize) -> TestFleet {
        let fleet = TestFleet::start(replicas, coordinators).await;
        fleet.wait_settled("an active coordinator", |_| true).await;
        fleet
    }

    /// Waits until the coordinators satisfy `also` with one active, and
    /// every voter grants that active's lease under its current epoch (at
    /// start a voter reached only by the winner's barrier may still
    /// promise the other coordinator's late Prepare, and the winner would
    /// step down at its next renewal). Returns the coordinators.
    pub async fn wait_settled(
        &self,
        what: &str,
        also: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let give_up = std::time::Instant::now() + PATIENCE;
        loop {
            let c = self
                .wait_coordinators(what, |c| sole_active(c).is_some() && also(c))
                .await;
            let active = sole_active(&c).expect("checked above");
            let (_, v) = self.cli_json(&["voters"]);
            let voters = v["voters"].as_array().cloned().unwrap_or_default();
            if !voters.is_empty()
                && voters.iter().all(|x| {
                    x["promised"] == active["epoch"]
                        && x["holder"] == active["id"]
                        && x["grant_remaining_ms"].is_u64()
                })
            {
                return c;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "the voters never all granted the active: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first column of the first row `query` returns on `host`, as
    /// text, asked as the DBA (root over the socket), on new sessions
    /// while the fleet ends them ([`on_new_sessions`]).
    pub async fn query_one(&self, host: &str, query: &str) -> Option<String> {
        let s = self.server(host).expect("known host");
        let root = &self.credentials.root;
        on_new_sessions(&format!("query on {host}: {query}"), || async move {
            // A session ended during its handshake is asked again too.
            let mut conn = mysql_async::Conn::new(s.root_opts(root)).await?;
            let v = conn.query_first::<String, _>(query).await?;
            let _ = conn.disconnect().await;
            Ok(v)
        })
        .await
    }

    /// Runs SQL on `host` as the DBA (root over the socket).
    pub async fn sql(&self, host: &str, statement: &str) -> Result<(), mysql_async::Error> {
        let s = self.server(host).expect("known host");
        let mut conn = mysql_async::Conn::new(s.root_opts(&self.credentials.root)).await?;
        conn.query_drop(statement).await?;
        conn.disconnect().await
    }

    /// Waits until a process of this fleet runs `tool` with `needle` in
    /// its command line (another test's fleet may run the same tool with
    /// the same ids: its command line names its own directory) and
    /// returns its pid.
    pub async fn wait_tool(&self, tool: &str, needle: &str) -> nix::unistd::Pid {
        let ours = self.dir.to_string_lossy().into_owned();
        let find = || {
            fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let cmdline = fs::read(e.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline);
                let runs = cmdline.starts_with(&format!("{tool}\0"))
                    || cmdline.contains(&format!("/{tool}\0"));
                (runs && cmdline.contains(needle) && cmdline.contains(&ours)).then_some(pid)
            })
        };
        let give_up = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(p) = find() {
                return nix::unistd::Pid::from_raw(p);
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "{tool} ({needle}) never ran"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs the CLI with `--output json`: whether it succeeded, and what
    /// it printed, parsed.
    pub fn cli_json(&self, args: &[&str]) -> (bool, serde_json::Value) {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(&all);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "{args:?} printed no JSON: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), v)
    }

    /// `dbfleet-agent check-config` on `config`, as the agents' user:
    /// whether it passed, and what it printed (checked to hold no
    /// password).
    pub fn check_config(&self, config: &Path) -> (bool, String) {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin("dbfleet-agent"));
        cmd.args(["--config", &config.display().to_string(), "check-config"]);
        if let Some(u) = &self.service_user {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
        let out: Output = cmd.output().expect("run dbfleet-agent");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in self.credentials.all() {
            assert!(!text.contains(secret), "a password leaked: {text}");
        }
        (out.status.success(), text)
    }

    /// Runs the real `dbfleet` CLI against this fleet.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("dbfleet"))
            .args(args)
            .env("DBFLEET_CONFIG", self.cli_config())
            .output()
            .expect("run dbfleet")
    }

    /// `dbfleet status --output json`, parsed; panics with stderr on failure.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--output", "json"]);
        assert!(
            out.status.success(),
            "dbfleet status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON parses")
    }

    /// Waits for `done` on the coordinators' view, panicking with the last
    /// view after [`PATIENCE`].
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&pb::ClusterView) -> bool,
    ) -> pb::ClusterView {
        let r = self
            .wait_for(PATIENCE, what, |r| r.clusters.first().is_some_and(&done))
            .await
            .unwrap_or_else(|e: SandboxError| panic!("{e}"));
        r.clusters.into_iter().next().expect("checked above")
    }

    /// [`TestFleet::wait_until`] on the cluster named `cluster`.
    pub async fn wait_cluster(
        &self,
        cluster: &str,
        what: &str,
        done: impl Fn(&pb::ClusterView) -> bool,
    ) -> pb::ClusterView {
        let r = self
            .wait_for(PATIENCE, what, |r| {
                r.clusters.iter().any(|c| c.name == cluster && done(c))
            })
            .await
            .unwrap_or_else(|e: SandboxError| panic!("{e}"));
        r.clusters
            .into_iter()
            .find(|c| c.name == cluster)
            .expect("checked above")
    }

    /// `dbfleet coordinators --output json`: one entry per coordinator.
    pub fn coordinators(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["coordinators", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "coordinators JSON: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        v["coordinators"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the coordinators satisfy `done`, polling the real CLI.
    pub async fn wait_coordinators(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let give_up = std::time::Instant::now() + PATIENCE;
        loop {
            let c = self.coordinators();
            if done(&c) {
                return c;
            }
            if std::time::Instant::now() >= give_up {
                panic!("timed out waiting for {what}; coordinators: {c:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The coordinator info of `id`.
    pub fn coordinator(&self, id: &str) -> sandbox::CoordinatorInfo {
        self.info
            .coordinators
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no coordinator {id}"))
    }

    /// Restarts `host`'s agent with the config line starting `key = `
    /// replaced by `line`, and waits until it listens again.
    pub async fn restart_agent_with(&mut self, host: &str, key: &str, line: &str) {
        let config = self.dir.join(format!("agent-{host}.toml"));
        let text = with_line(
            &fs::read_to_string(&config).expect("agent config"),
            key,
            line,
        );
        assert!(
            text.contains(line),
            "no `{key} = ` line in {}",
            config.display()
        );
        self.stop(&format!("agent-{host}"), Duration::from_secs(5));
        fs::write(&config, text).expect("write the agent config");
        self.start_agent(host).expect("start the agent");
        let address = self
            .info
            .members
            .iter()
            .find(|m| m.host == host)
            .expect("a member")
            .agent_address
            .clone();
        self.wait_listening(&format!("agent-{host}"), &address, PATIENCE)
            .await
            .expect("the agent listens");
    }

    /// Where every log file of the fleet ends now, so a test can read only
    /// what was logged after a fault it injects.
    pub fn log_marks(&self) -> LogMarks {
        LogMarks(
            fs::read_dir(self.dir.join("logs"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| {
                    let len = e.metadata().map_or(0, |m| m.len());
                    (e.path(), len)
                })
                .collect(),
        )
    }

    /// What the fleet logged after `marks` (whole files that are new).
    pub fn logs_after(&self, marks: &LogMarks) -> String {
        let mut out = String::new();
        for e in fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = fs::read(e.path()).unwrap_or_default();
            let from = marks.0.get(&e.path()).copied().unwrap_or(0) as usize;
            out.push_str(&String::from_utf8_lossy(
                text.get(from..).unwrap_or_default(),
            ));
        }
        out
    }

    /// Waits until the log of `process` (as named in `logs/`) holds a line
    /// with every one of `needles`, panicking with the log after [`PATIENCE`].
    pub async fn wait_log_line(&self, process: &str, needles: &[&str]) {
        let path = self.dir.join(format!("logs/{process}.log"));
        let give_up = std::time::Instant::now() + PATIENCE;
        loop {
            let log = fs::read_to_string(&path).unwrap_or_default();
            if log.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
                return;
            }
            if std::time::Instant::now() >= give_up {
                panic!("timed out waiting for a line with {needles:?} in {path:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every log file of the fleet concatenated (for secret scans).
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for e in fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
        }
        out
    }
}

/// Where each log file ended at one moment: see [`TestFleet::log_marks`].
pub struct LogMarks(std::collections::HashMap<PathBuf, u64>);

/// The coordinators whose role is `role`.
pub fn with_role<'a>(c: &'a [serde_json::Value], role: &str) -> Vec<&'a serde_json::Value> {
    c.iter().filter(|x| x["role"] == role).collect()
}

/// The single active coordinator, if exactly one is active.
pub fn sole_active(c: &[serde_json::Value]) -> Option<&serde_json::Value> {
    let active: Vec<_> = c
        .iter()
        .filter(|x| x["role"].as_str().is_some_and(|r| r.starts_with("active")))
        .collect();
    (active.len() == 1).then(|| active[0])
}

/// The term of an epoch in coordinator JSON (0 when none).
pub fn term(epoch: &serde_json::Value) -> u64 {
    epoch["term"].as_u64().unwrap_or(0)
}

/// The member named `host` in a view.
pub fn member<'a>(c: &'a pb::ClusterView, host: &str) -> &'a pb::MemberView {
    c.members
        .iter()
        .find(|m| m.host == host)
        .unwrap_or_else(|| panic!("no member {host} in {c:?}"))
}

/// Whether `c` lists a problem of `kind` for `host`.
pub fn has_problem(c: &pb::ClusterView, kind: &str, host: &str) -> bool {
    c.problems.iter().any(|p| p.kind == kind && p.host == host)
}

/// A throwaway PKI for authorization tests: the fleet's CA, a foreign CA,
/// and leaf certificates on demand (expired ones too).
#[derive(Debug)]
pub struct TestPki {
    /// Directory of the fleet CA and its leaves.
    pub dir: PathBuf,
    /// Directory of an unrelated CA.
    pub foreign: PathBuf,
}

impl TestPki {
    /// Creates both CAs under `root`.
    pub fn new(root: &Path) -> TestPki {
        let dir = root.join("pki");
        let foreign = root.join("foreign-pki");
        dbfleet_common::certs::init_ca(&dir).unwrap();
        dbfleet_common::certs::init_ca(&foreign).unwrap();
        TestPki { dir, foreign }
    }

    /// Issues `role/name` from the fleet CA (or the foreign one), valid
    /// from `valid_from` (relative to now) for `valid_for`.
    pub fn issue(
        &self,
        role: dbfleet_common::identity::Role,
        name: &str,
        ips: &[&str],
        foreign: bool,
        expired: bool,
    ) -> dbfleet_common::tls::TlsPaths {
        use dbfleet_common::certs::{LeafRequest, issue_leaf};
        let mut req = LeafRequest::new(role, name);
        req.ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        if expired {
            req.valid_from = -time::Duration::days(3);
            req.valid_for = Duration::from_secs(24 * 3600);
        }
        let ca_dir = if foreign { &self.foreign } else { &self.dir };
        let out = self.dir.join(format!(
            "{}{}",
            if foreign { "foreign-" } else { "" },
            if expired { "expired" } else { "valid" }
        ));
        let issued = dbfleet_common::certs::LeafFiles::of(&out, role, name);
        let files = if issued.cert.exists() {
            issued
        } else {
            issue_leaf(ca_dir, &out, &req).unwrap()
        };
        dbfleet_common::tls::TlsPaths {
            // Clients trust the fleet CA, so only the server's verdict on
            // the client certificate is under test.
            ca: self.dir.join(dbfleet_common::certs::CA_CERT),
            cert: files.cert,
            key: files.key,
        }
    }
}

/// A path as a TOML string.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The `[tls]` section of an agent or coordinator config.
pub fn tls_section(paths: &dbfleet_common::tls::TlsPaths) -> String {
    format!(
        "[tls]\nca = {}\ncert = {}\nkey = {}\n",
        toml_path(&paths.ca),
        toml_path(&paths.cert),
        toml_path(&paths.key)
    )
}

/// A lease section for a coordinator whose voters are not under test.
const LEASE_SECTION: &str = "[lease]\nvoters = [\"v1@127.0.0.1:9\"]\npeer = \"c2@127.0.0.1:9\"\n";

/// Writes a coordinator config `dir/NAME` for coordinator `c1`; `extra`
/// goes between the top-level keys and `[tls]`.
pub fn write_coordinator_config(
    path: &Path,
    listen: &str,
    data_dir: &Path,
    tls: &dbfleet_common::tls::TlsPaths,
    extra: &str,
) {
    fs::write(
        path,
        format!(
            "id = \"c1\"\nlisten = {listen:?}\ndata_dir = {}\n{extra}\n{LEASE_SECTION}\n{}",
            toml_path(data_dir),
            tls_section(tls)
        ),
    )
    .expect("write coordinator config");
}

/// A process started by a test, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// The child.
    pub child: std::process::Child,
    /// Its log file.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args`, output to `log`.
    pub fn start(program: &Path, args: &[String], log: PathBuf) -> Proc {
        let pidfile = log.with_extension("pid");
        let child = sandbox::process::spawn(program, args, &log, &pidfile, None).expect("spawn");
        Proc { child, log }
    }

    /// Waits until `address` accepts connections; panics with the log if
    /// the process exits first.
    pub async fn wait_listening(&mut self, address: &str) {
        match sandbox::process::wait_listening(&mut self.child, address, PATIENCE).await {
            Ok(()) => {}
            Err(sandbox::process::NotListening::Exited(st)) => panic!(
                "process exited ({st}): {}",
                fs::read_to_string(&self.log).unwrap_or_default()
            ),
            Err(sandbox::process::NotListening::TimedOut) => panic!("{address} never listened"),
        }
    }

    /// Waits for the process to exit and returns its log.
    pub fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        let st = self.child.wait().expect("wait");
        (st, fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
