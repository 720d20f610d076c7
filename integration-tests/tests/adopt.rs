//! Adopting a DBA's existing cluster by following docs/deploy.md, with no
//! sandbox code: three MariaDB servers made with plain `mariadb-install-db`
//! and a DBA-style my.cnf, mysql-owned files, asynchronous replication from
//! the DBA's own replication account; then dbfleet deployed as the guide
//! says: its SQL run as written, certificates from `dbfleet cert`, the
//! configs made from the templates in deploy/config, agents running as
//! the mysql user. Then what a DBA would do first: check-config, status,
//! lossless semi-sync turned on by dbfleet, a switchover, a kill -9
//! failover with no acknowledged write lost, a verified backup and a
//! restore.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dbfleet_cli::sandbox::mariadb::Server;
use dbfleet_cli::sandbox::process::ServiceUser;
use dbfleet_integration_tests::workload::{Sampler, Writer, ids_on_server};
use dbfleet_integration_tests::{PATIENCE, Slot, bin, init, kill_leftovers};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use serde_json::Value;

const HOSTS: [&str; 3] = ["db1", "db2", "db3"];

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What the test built, stopped (every process under its directory) when
/// dropped.
struct Adopted {
    slot: Slot,
    mysql: ServiceUser,
    servers: Vec<Server>,
    children: Vec<Child>,
    root_password: String,
    app_password: String,
}

impl Drop for Adopted {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_leftovers(&self.slot.dir);
        for s in &self.servers {
            let _ = std::fs::remove_file(&s.socket);
        }
    }
}

impl Adopted {
    fn dir(&self) -> &Path {
        &self.slot.dir
    }

    fn server(&self, host: &str) -> &Server {
        self.servers.iter().find(|s| s.host == host).unwrap()
    }

    /// `host`'s mariadbd command line, as its my.cnf and the DBA run it.
    fn mariadbd_args(&self, host: &str) -> Vec<String> {
        vec![format!(
            "--defaults-file={}",
            self.server(host).cnf().display()
        )]
    }

    /// Starts a program, output to `log`; as the mysql user when
    /// `as_mysql` (mysqld and the agents), else as root (coordinators).
    fn start(&mut self, program: &Path, args: &[String], log: &str, as_mysql: bool) {
        let out = std::fs::File::create(self.dir().join(log)).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        if as_mysql {
            cmd.uid(self.mysql.uid.as_raw())
                .gid(self.mysql.gid.as_raw());
        }
        self.children.push(cmd.spawn().unwrap());
    }

    async fn root(&self, host: &str) -> Conn {
        let s = self.server(host);
        let give_up = std::time::Instant::now() + PATIENCE;
        loop {
            for pass in [Some(self.root_password.as_str()), None] {
                let opts = OptsBuilder::default()
                    .socket(Some(s.socket.to_string_lossy().into_owned()))
                    .user(Some("root"))
                    .pass(pass);
                if let Ok(Ok(c)) =
                    tokio::time::timeout(Duration::from_secs(2), Conn::new(opts)).await
                {
                    return c;
                }
            }
            assert!(
                std::time::Instant::now() < give_up,
                "{host}: root cannot connect"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("dbfleet"))
            .arg("--config")
            .arg(self.dir().join("dbfleet.toml"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let (ok, out, err) = self.cli(&all);
        assert!(ok, "dbfleet {args:?}: {out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Waits until `dbfleet agents` satisfies `pred`.
    async fn wait_agents(&self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        let give_up = std::time::Instant::now() + PATIENCE * 2;
        loop {
            let (_, out, _) = self.cli(&["agents", "--output", "json"]);
            let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            if v["agents"].as_array().is_some_and(|a| pred(a)) {
                return;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "timed out waiting for {what}: {out}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs an operator write until an active coordinator takes it.
    async fn write_json(&self, args: &[&str]) -> Value {
        let give_up = std::time::Instant::now() + PATIENCE * 2;
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        loop {
            let (ok, out, err) = self.cli(&all);
            if ok {
                return serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            }
            assert!(
                std::time::Instant::now() < give_up,
                "dbfleet {args:?}: {out}{err}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the cluster's status satisfies `pred`.
    async fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let give_up = std::time::Instant::now() + PATIENCE * 2;
        loop {
            let (ok, out, _) = self.cli(&["status", "--output", "json"]);
            let v: Value = if ok {
                serde_json::from_str(&out).unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            let c = &v["clusters"][0];
            if pred(c) {
                return c.clone();
            }
            assert!(
                std::time::Instant::now() < give_up,
                "timed out waiting for {what}: {out}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn member<'a>(c: &'a Value, host: &str) -> &'a Value {
    c["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["host"] == host))
        .unwrap_or(&Value::Null)
}

/// One writable primary and every other member replicating from it.
fn settled(c: &Value, members: &[&str]) -> bool {
    let Some(p) = c["primary"].as_str() else {
        return false;
    };
    let pa = member(c, p)["mysql_address"].clone();
    member(c, p)["writable"] == true
        && members
            .iter()
            .filter(|h| **h != p)
            .all(|h| member(c, h)["source"] == pa && member(c, h)["io_running"] == true)
}

/// The guide's SQL for the accounts, with the passwords and the
/// replication network filled in.
fn guide_sql(agent: &str, repl: &str, network: &str) -> Vec<String> {
    let guide = repo_file("docs/deploy.md");
    let accounts = guide
        .split("## 3. Accounts")
        .nth(1)
        .expect("an Accounts section");
    let block = accounts
        .split("```sql")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the accounts' SQL block");
    block
        .replace("<agent password>", agent)
        .replace("<replication password>", repl)
        .replace("10.0.0.%", network)
        .split(";\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn write_secret(path: &Path, text: &str, owner: &ServiceUser) {
    dbfleet_common::certs::write_file(path, text.as_bytes(), 0o600, false).unwrap();
    owner.give(path, false).unwrap();
}

async fn build_cluster(slot: Slot) -> Adopted {
    let mysql = ServiceUser::for_sandbox()
        .unwrap()
        .expect("the adoption test runs as root, with a mysql user");
    let dir = slot.dir.clone();
    let servers: Vec<Server> = HOSTS
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let ip = slot.ip(11 + i as u8).parse().unwrap();
            Server {
                flavor: dbfleet_proto::model::Flavor::MariaDb,
                tls: None,
                host: h.to_string(),
                cluster: "main".into(),
                ip,
                port: 3306,
                server_id: 11 + i as u32,
                dir: dir.join(h),
                socket: PathBuf::from(format!("/tmp/adopt-{ip}.sock")),
                read_only: i > 0,
            }
        })
        .collect();
    let mut a = Adopted {
        slot,
        mysql,
        servers,
        children: Vec::new(),
        root_password: "r00t-adopt".into(),
        app_password: "app-adopt".into(),
    };
    // The DBA's servers: mariadb-install-db, a my.cnf, in Debian's layout:
    // the data directory's parent is root's (as /var/lib is), mysqld's own
    // directories (data, run, log, tmp) are mysql's, and so is the state
    // directory systemd creates for the agent.
    for s in a.servers.clone() {
        std::fs::create_dir_all(&s.dir).unwrap();
        std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["data", "tmp", "run", "log", "agent-state"] {
            std::fs::create_dir_all(s.dir.join(d)).unwrap();
            a.mysql.give(&s.dir.join(d), false).unwrap();
        }
        let _ = std::fs::remove_file(&s.socket);
        let out = Command::new("mariadb-install-db")
            .arg(format!("--user={}", a.mysql.name))
            .arg(format!("--datadir={}", s.datadir().display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(
            s.cnf(),
            format!(
                "[mariadbd]\ndatadir = {data}\ntmpdir = {dir}/tmp\nsocket = {sock}\npid-file = {dir}/run/mysqld.pid\n\
                 log-error = {dir}/log/error.log\nbind-address = {ip}\nport = 3306\nserver_id = {id}\n\
                 log_bin = {host}-bin\nlog_slave_updates = ON\nbinlog_format = ROW\ngtid_strict_mode = ON\n\
                 read_only = ON\nskip_name_resolve = ON\ninnodb_buffer_pool_size = 32M\n",
                data = s.datadir().display(),
                dir = s.dir.display(),
                sock = s.socket.display(),
                ip = s.ip,
                id = s.server_id,
                host = s.host,
            ),
        )
        .unwrap();
        a.mysql.give(&s.datadir(), true).unwrap();
        let args = a.mariadbd_args(&s.host);
        a.start(
            Path::new("/usr/sbin/mariadbd"),
            &args,
            &format!("{}.out", s.host),
            true,
        );
    }
    // The primary: the DBA's replication account and application, root's
    // password; then dbfleet's accounts exactly as the guide writes them,
    // and the passwordless accounts the guide says to drop.
    // Replicas connect from 127.0.0.1 (the kernel's choice for loopback
    // destinations): the members' network here is 127.%.
    let network = "127.%".to_string();
    let mut db1 = a.root("db1").await;
    let mut statements = vec![
        format!(
            "ALTER USER 'root'@'localhost' IDENTIFIED BY '{}'",
            a.root_password
        ),
        format!("CREATE USER 'repl'@'{network}' IDENTIFIED BY 'dba-repl'"),
        format!("GRANT REPLICATION SLAVE ON *.* TO 'repl'@'{network}'"),
        "CREATE DATABASE app".to_string(),
        format!("CREATE USER 'app'@'%' IDENTIFIED BY '{}'", a.app_password),
        "GRANT ALL PRIVILEGES ON app.* TO 'app'@'%'".to_string(),
    ];
    statements.extend(guide_sql("agent-adopt", "repl-adopt", &network));
    for sql in &statements {
        db1.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let open: Vec<(String, String)> = db1
        .query("SELECT user, host FROM mysql.user WHERE (user = 'root' AND host <> 'localhost') OR user = ''")
        .await
        .unwrap();
    for (user, host) in open {
        db1.query_drop(format!("DROP USER '{user}'@'{host}'"))
            .await
            .unwrap();
    }
    db1.query_drop("SET GLOBAL read_only = OFF").await.unwrap();
    drop(db1);
    for h in ["db2", "db3"] {
        let mut c = a.root(h).await;
        c.query_drop(format!(
            "CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT=3306, MASTER_USER='repl', \
             MASTER_PASSWORD='dba-repl', MASTER_USE_GTID=slave_pos",
            a.server("db1").ip
        ))
        .await
        .unwrap();
        c.query_drop("START SLAVE").await.unwrap();
    }
    // The replicas have the accounts once they caught up, as a DBA waits.
    for h in ["db2", "db3"] {
        let give_up = std::time::Instant::now() + PATIENCE;
        loop {
            let mut c = a.root(h).await;
            let n: Option<u64> = c
                .query_first("SELECT COUNT(*) FROM mysql.user WHERE user = 'dbfleet_agent'")
                .await
                .unwrap();
            if n == Some(1) {
                break;
            }
            assert!(std::time::Instant::now() < give_up, "{h} never caught up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    a
}

/// dbfleet deployed as docs/deploy.md says, from the templates.
fn deploy(a: &mut Adopted) {
    let dir = a.dir().to_path_buf();
    let ip = |last: u8| a.slot.ip(last);
    let tls = dir.join("tls");
    let cert = |args: &[&str]| {
        let out = Command::new(bin("dbfleet"))
            .args(["cert"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let tls_s = tls.display().to_string();
    cert(&["init", "--dir", &tls_s]);
    for (i, h) in HOSTS.iter().enumerate() {
        cert(&[
            "issue",
            "--dir",
            &tls_s,
            "--role",
            "agent",
            "--name",
            h,
            "--ip",
            &ip(11 + i as u8),
        ]);
        a.mysql
            .give(&tls.join(format!("agent-{h}.key")), false)
            .unwrap();
    }
    for (i, c) in ["c1", "c2"].iter().enumerate() {
        cert(&[
            "issue",
            "--dir",
            &tls_s,
            "--role",
            "coordinator",
            "--name",
            c,
            "--ip",
            &ip(21 + i as u8),
        ]);
    }
    cert(&[
        "issue", "--dir", &tls_s, "--role", "operator", "--name", "alice",
    ]);
    let backups = dir.join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    a.mysql.give(&backups, false).unwrap();
    write_secret(&dir.join("mysql.password"), "agent-adopt", &a.mysql);
    write_secret(&dir.join("repl.password"), "repl-adopt", &a.mysql);

    let template = repo_file("deploy/config/agent.toml");
    for (i, h) in HOSTS.iter().enumerate() {
        let s = a.server(h).clone();
        let start: Vec<String> = std::iter::once("/usr/sbin/mariadbd".to_string())
            .chain(a.mariadbd_args(h))
            .map(|x| format!("{x:?}"))
            .collect();
        let text = template
            .replace("host = \"db1\"", &format!("host = \"{h}\""))
            .replace("10.0.0.11", &ip(11 + i as u8))
            .replace("10.0.0.21", &ip(21))
            .replace("10.0.0.22", &ip(22))
            .replace(
                "/var/lib/dbfleet/agent",
                &s.dir.join("agent-state").display().to_string(),
            )
            .replace("/run/mysqld/mysqld.sock", &s.socket.display().to_string())
            .replace(
                "/run/mysqld/mysqld.pid",
                &s.dir.join("run/mysqld.pid").display().to_string(),
            )
            .replace("/etc/dbfleet/tls/", &format!("{tls_s}/"))
            .replace("agent-db1", &format!("agent-{h}"))
            .replace("/etc/dbfleet/", &format!("{}/", dir.display()))
            .replace(
                "# start_command = [\"systemctl\", \"start\", \"mariadb\"]",
                &format!("start_command = [{}]", start.join(", ")),
            )
            .replace("# [backup]", "[backup]")
            .replace(
                "# repository = \"/var/backups/dbfleet\"",
                &format!("repository = {:?}", backups.display().to_string()),
            );
        assert!(!text.contains("10.0.0."), "every address replaced");
        std::fs::write(dir.join(format!("agent-{h}.toml")), text).unwrap();
    }
    let template = repo_file("deploy/config/coordinator.toml");
    for (id, own, peer) in [("c1", 21, ("c2", 22)), ("c2", 22, ("c1", 21))] {
        let text = template
            .replace(
                "peer = \"c2@10.0.0.22:7200\"",
                &format!("peer = \"{}@{}:7200\"", peer.0, ip(peer.1)),
            )
            .replace("id = \"c1\"", &format!("id = \"{id}\""))
            .replace("10.0.0.21", &ip(own))
            .replace("10.0.0.11", &ip(11))
            .replace("10.0.0.12", &ip(12))
            .replace("10.0.0.13", &ip(13))
            .replace(
                "/var/lib/dbfleet/coordinator",
                &dir.join(id).display().to_string(),
            )
            .replace("/etc/dbfleet/coordinator-tls/", &format!("{tls_s}/"))
            .replace("coordinator-c1", &format!("coordinator-{id}"));
        assert!(!text.contains("10.0.0."), "every address replaced");
        std::fs::write(dir.join(format!("coordinator-{id}.toml")), text).unwrap();
    }
    let cli = repo_file("deploy/config/dbfleet.toml")
        .replace("10.0.0.21", &ip(21))
        .replace("10.0.0.22", &ip(22))
        .replace("/home/alice/.dbfleet/", &format!("{tls_s}/"));
    std::fs::write(dir.join("dbfleet.toml"), cli).unwrap();

    for id in ["c1", "c2"] {
        let args = vec![
            "--config".to_string(),
            dir.join(format!("coordinator-{id}.toml"))
                .display()
                .to_string(),
        ];
        a.start(
            &bin("dbfleet-coordinator"),
            &args,
            &format!("coordinator-{id}.log"),
            false,
        );
    }
    for h in HOSTS {
        let config = dir.join(format!("agent-{h}.toml")).display().to_string();
        // The guide: check-config as the agent's user before starting it.
        let out = Command::new(bin("dbfleet-agent"))
            .args(["--config", &config, "check-config"])
            .uid(a.mysql.uid.as_raw())
            .gid(a.mysql.gid.as_raw())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("problem:") && text.contains(": ok (agent"),
            "{h}: {text}"
        );
        a.start(
            &bin("dbfleet-agent"),
            &["--config".into(), config],
            &format!("agent-{h}.log"),
            true,
        );
    }
}

#[tokio::test]
async fn adopt_a_hand_built_async_cluster_by_the_guide_then_switch_over_fail_over_back_up_and_restore()
 {
    init();
    let slot = Slot::claim();
    kill_leftovers(&slot.dir);
    let mut a = build_cluster(slot).await;
    deploy(&mut a);

    // The guide's §9: the agents await admission where they report; the
    // DBA admits them.
    a.wait_agents("every agent awaiting admission in main", |agents| {
        HOSTS.iter().all(|h| {
            agents.iter().any(|x| {
                x["host"] == *h && x["standing"] == "awaiting admission" && x["cluster"] == "main"
            })
        })
    })
    .await;
    let mut admit = vec!["agents", "admit"];
    admit.extend(HOSTS);
    let admitted = a.write_json(&admit).await;
    assert_eq!(
        admitted["admitted"].as_array().map(Vec::len),
        Some(HOSTS.len()),
        "{admitted}"
    );

    // First status: db1 the primary, its replicas following, no problem
    // from the configuration checks, semi-sync as the DBA had it (off).
    // The one problem: asynchronous, with no self-fence and no STONITH
    // hook, a death of db1's host could not be proven fenced, and status
    // says so before it happens.
    let only_not_ready = |c: &Value| {
        c["problems"].as_array().is_some_and(|p| {
            p.len() == 1
                && p[0]["kind"] == "failover-not-ready"
                && p[0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("could not be proven fenced"))
        })
    };
    let c = a
        .wait_status("the adopted cluster, healthy but for its readiness", |c| {
            c["primary"] == "db1" && settled(c, &HOSTS) && only_not_ready(c)
        })
        .await;
    assert_eq!(c["semi_sync_policy"], Value::Null);
    for h in HOSTS {
        assert_eq!(member(&c, h)["semi_sync"], "off", "{h}: {c}");
    }
    let ready = &c["readiness"];
    assert!(
        ready["ready"] == false
            && ready["host_death_proof"].is_null()
            && ready["data_loss"]
                .as_str()
                .is_some_and(|d| d.contains("not lossless"))
            && ready["mysqld_death_proof"]
                .as_str()
                .is_some_and(|p| p.contains("agent of db1")),
        "{ready}"
    );

    // dbfleet turns lossless semi-sync on: replicas first, then db1.
    let p = a.cli_json(&["policy", "--cluster", "main", "--semi-sync", "lossless"]);
    assert_eq!(p["semi_sync"], "lossless", "{p}");
    a.wait_status("lossless semi-sync on every member, and ready", |c| {
        c["semi_sync_policy"] == "lossless"
            && member(c, "db1")["semi_sync"] == "lossless"
            && ["db2", "db3"]
                .iter()
                .all(|h| member(c, h)["semi_sync"] == "replica")
            && c["readiness"]["ready"] == true
            && c["problems"].as_array().is_some_and(|p| p.is_empty())
    })
    .await;

    let writer = Writer::start_on(a.servers.clone(), a.app_password.clone(), "db1").await;
    let sampler = Sampler::start_on(a.servers.clone(), a.app_password.clone());
    let give_up = std::time::Instant::now() + PATIENCE;
    while writer.acked_count() < 20 {
        assert!(std::time::Instant::now() < give_up, "the writer writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A switchover to db2.
    let s = a.cli_json(&["switchover", "--cluster", "main", "--to", "db2"]);
    assert_eq!(s["outcome"], "completed", "{s}");
    a.wait_status("db2 the primary", |c| {
        c["primary"] == "db2" && settled(c, &HOSTS)
    })
    .await;

    // kill -9 of db2's mysqld: another member takes over, proven.
    let pid: i32 = std::fs::read_to_string(a.server("db2").dir.join("run/mysqld.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let c = a
        .wait_status("a new primary after db2's mysqld died", |c| {
            c["primary"].as_str().is_some_and(|p| p != "db2") && settled(c, &["db1", "db3"])
        })
        .await;
    let primary = c["primary"].as_str().unwrap().to_string();
    let n = writer.acked_count();
    let give_up = std::time::Instant::now() + PATIENCE;
    while writer.acked_count() < n + 10 {
        assert!(
            std::time::Instant::now() < give_up,
            "writes resume on {primary}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked = writer.stop().await;
    let ((most, which), samples) = sampler.stop().await;
    assert!(
        samples > 10 && most <= 1,
        "{most} writable at once: {which:?}"
    );
    let present = ids_on_server(a.server(&primary), &a.app_password).await;
    let missing: Vec<&u64> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    let events = a.cli_json(&["events"]);
    let done = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "failover-completed")
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        done.contains("agent of db2 confirmed stopped") && done.contains("ibdata1"),
        "the fence proof is the lock on db2's data file: {done}"
    );

    // A backup of a replica, verified, then restored onto the other one.
    let b = a.cli_json(&["backup", "run", "--cluster", "main"]);
    assert_eq!(b["status"], "completed", "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let v = a.cli_json(&["backup", "verify", &id]);
    assert_eq!(v["verification"], "verified", "{v}");
    let target = ["db1", "db3"].into_iter().find(|h| *h != primary).unwrap();
    let (ok, out, err) = a.cli(&["backup", "restore", &id, "--host", target]);
    assert!(ok && out.contains("): completed"), "{out}{err}");
    let rows_before = ids_on_server(a.server(target), &a.app_password).await;
    assert!(
        !rows_before.is_empty(),
        "{target} holds the application's rows"
    );
    let mut c = a.root(target).await;
    let ro: Option<u8> = c.query_first("SELECT @@read_only").await.unwrap();
    assert_eq!(ro, Some(1), "the restored {target} is read-only");
    // Restored in place: the data directory's parent is root's, and no
    // directory of the swap is left in it.
    let s = a.server(target);
    assert_eq!(std::fs::metadata(&s.dir).unwrap().uid(), 0);
    let left: Vec<String> = std::fs::read_dir(s.datadir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("#sql-dbfleet-"))
        .collect();
    assert!(left.is_empty(), "left in the data directory: {left:?}");
}
