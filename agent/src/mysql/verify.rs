//! The agent's configuration checked against the live server, at
//! `check-config`, at start and then periodically: a configuration that
//! only looks right (a port that reaches another server, an account that
//! lacks a privilege a fence needs, a primary that would restart writable,
//! a data file the agent cannot open) is found before a failover depends
//! on it. What matters at run time travels in every report as a
//! [`ConfigProblem`] and becomes a cluster problem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbfleet_proto::model::{ConfigProblem, ConfigProblemKind, Flavor};
use dbfleet_proto::privileges;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tokio::io::AsyncReadExt;

use super::observer::{MysqlTarget, connect};
use super::process::{self, ServerFiles};

/// How serious a finding is for `check-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// dbfleet cannot work safely this way: `check-config` fails.
    Problem,
    /// Worth fixing; nothing depends on it.
    Warning,
}

/// One thing found wrong, in words with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub severity: Severity,
    /// What it is, when it is also a cluster problem at run time.
    pub kind: Option<ConfigProblemKind>,
    /// The sentence a DBA reads.
    pub text: String,
}

impl Finding {
    fn problem(kind: ConfigProblemKind, text: String) -> Finding {
        Finding {
            severity: Severity::Problem,
            kind: Some(kind),
            text,
        }
    }

    fn warning(text: String) -> Finding {
        Finding {
            severity: Severity::Warning,
            kind: None,
            text,
        }
    }

    /// The report's form of a run-time finding.
    pub fn as_config_problem(&self) -> Option<ConfigProblem> {
        Some(ConfigProblem {
            kind: self.kind.clone()?,
            message: self.text.clone(),
        })
    }
}

/// What the checks need beyond the connection target.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// The configured pid file, compared with `@@pid_file`.
    pub pid_file: Option<PathBuf>,
    /// The replication account: replicas log in with it at `[mysql]
    /// address`, and so does the address check.
    pub replication: Option<(String, dbfleet_common::config::Secret)>,
    /// Coordinators (certificate name, `host:port`) that should accept
    /// this agent over mutual TLS.
    pub coordinators: Vec<(String, String)>,
    /// The agent's certificates, to try the coordinators with.
    pub tls: Option<std::sync::Arc<dbfleet_common::tls::TlsContext>>,
}

/// Every check: the connection, the privileges, mysqld's process, the
/// address against the socket, whether it would start writable; with
/// `offline_too`, the pid file and the coordinators (for `check-config`).
pub async fn verify(
    target: &MysqlTarget,
    expect: &Expectations,
    offline_too: bool,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if offline_too && let Some(tls) = &expect.tls {
        out.extend(coordinators_answer(tls, &expect.coordinators).await);
    }
    let limit = target.connect_timeout + target.query_timeout;
    let (mut conn, flavor) = match tokio::time::timeout(limit, connect(target)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            out.push(Finding {
                severity: Severity::Problem,
                kind: None,
                text: format!(
                    "cannot connect to mysqld as {}: {e}; check [mysql] socket/address, the account and its password file (docs/deploy.md, Accounts)",
                    target.user
                ),
            });
            return out;
        }
        Err(_) => {
            out.push(Finding {
                severity: Severity::Problem,
                kind: None,
                text: format!("mysqld did not answer within {limit:?}"),
            });
            return out;
        }
    };
    let checks = async {
        let mut found = privileges_held(&mut conn, flavor).await?;
        let vars = variables(&mut conn).await?;
        let files = ServerFiles::from_variables(&vars, &target.address.host);
        found.extend(identity(files.as_ref()));
        if let Some(socket) = &target.socket {
            let check = AddressCheck {
                address: target.address.to_string(),
                socket,
                replication: expect.replication.as_ref(),
                greeting_allowed: offline_too,
                tls_ca: target.tls_ca.as_deref(),
                server_requires_tls: super::flavor::on(vars.get("require_secure_transport")),
            };
            found.extend(check.run(&mut conn).await?);
        }
        if let Some(files) = &files {
            found.extend(starts_writable(files, flavor, &vars).await);
        }
        if offline_too {
            found.extend(pid_file_matches(
                expect.pid_file.as_deref(),
                &vars,
                files.as_ref(),
            ));
        }
        Ok::<_, String>(found)
    };
    match tokio::time::timeout(limit * 4, checks).await {
        Ok(Ok(found)) => out.extend(found),
        Ok(Err(e)) => out.push(Finding::warning(format!(
            "the checks against mysqld stopped: {e}"
        ))),
        Err(_) => out.push(Finding::warning(format!(
            "the checks against mysqld did not finish within {:?}",
            limit * 4
        ))),
    }
    let _ = conn.disconnect().await;
    out
}

/// How long one coordinator may take to accept this agent.
const COORDINATOR_CHECK: Duration = Duration::from_secs(3);

/// Each coordinator, dialled as the agent dials it: a TCP connection, a
/// TLS handshake in which it must present a coordinator's certificate
/// from the agent's CA, and then the first bytes of its HTTP/2 preface,
/// which a coordinator sends only once it accepted the agent's own
/// certificate (with TLS 1.3 a refusal arrives after the handshake).
async fn coordinators_answer(
    tls: &dbfleet_common::tls::TlsContext,
    coordinators: &[(String, String)],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (name, a) in coordinators {
        let attempt = tokio::time::timeout(COORDINATOR_CHECK, async {
            let mut stream = dbfleet_common::tls::connect_tls(
                tls,
                a,
                dbfleet_common::identity::Role::Coordinator,
                Some(name),
            )
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!("does not accept connections ({e})")
                }
                _ => format!("cannot be reached over mutual TLS: {e}"),
            })?;
            let mut first = [0u8; 9];
            match stream.read(&mut first).await {
                Ok(n) if n > 0 => Ok(()),
                Ok(_) => Err(
                    "closed the connection after the TLS handshake: it did not accept this agent's certificate"
                        .to_string(),
                ),
                Err(e) => Err(format!("refused this agent's certificate ({e})")),
            }
        })
        .await;
        let why = match attempt {
            Ok(Ok(())) => continue,
            Ok(Err(why)) => why,
            Err(_) => format!("did not answer within {COORDINATOR_CHECK:?}"),
        };
        out.push(Finding::warning(format!(
            "coordinator {name} at {a} {why}; the agent will keep trying, but check `coordinators` and the [tls] files"
        )));
    }
    out
}

/// The account's global privileges against [`privileges::agent_privileges`].
async fn privileges_held(conn: &mut Conn, flavor: Flavor) -> Result<Vec<Finding>, String> {
    let who: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .map_err(|e| format!("CURRENT_USER(): {e}"))?;
    let who = who.unwrap_or_default();
    let Some((user, host)) = who.rsplit_once('@') else {
        return Ok(vec![Finding::warning(format!(
            "cannot tell which account the agent uses (CURRENT_USER() said \"{who}\"); its privileges were not checked"
        ))]);
    };
    let grantee = format!("'{user}'@'{host}'");
    let held: Vec<String> = conn
        .exec(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ?",
            (grantee.clone(),),
        )
        .await
        .map_err(|e| format!("reading the account's privileges: {e}"))?;
    let Some(missing) = privileges::missing(flavor, &held) else {
        return Ok(vec![Finding::warning(format!(
            "the privileges a {} agent account needs are not listed yet; {grantee}'s were not checked",
            flavor.as_str()
        ))]);
    };
    Ok(missing
        .iter()
        .map(|p| {
            Finding::problem(
                ConfigProblemKind::MissingPrivilege,
                format!(
                    "the agent account {grantee} lacks {} (needed for {}); run: GRANT {} ON *.* TO {grantee}",
                    p.name, p.needed_for, p.name
                ),
            )
        })
        .collect())
}

async fn variables(conn: &mut Conn) -> Result<HashMap<String, String>, String> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('datadir', 'innodb_data_home_dir', \
             'innodb_data_file_path', 'port', 'socket', 'pid_file', 'require_secure_transport', 'persisted_globals_load')",
        )
        .await
        .map_err(|e| format!("SHOW GLOBAL VARIABLES: {e}"))?;
    Ok(rows.into_iter().collect())
}

fn identity(files: Option<&ServerFiles>) -> Option<Finding> {
    let Some(files) = files else {
        return Some(Finding::problem(
            ConfigProblemKind::CannotIdentifyMysqld,
            "mysqld does not report its datadir and port: a fence could neither prove it stopped nor kill it".into(),
        ));
    };
    match process::identify(files) {
        Ok(Some(pid)) => match process::socket_activated(pid) {
            Ok(true) => Some(Finding::problem(
                ConfigProblemKind::SocketActivated,
                format!(
                    "mysqld (pid {pid}) was started by socket activation: {}",
                    process::SOCKET_ACTIVATION_FIX
                ),
            )),
            Ok(false) => None,
            Err(e) => Some(Finding::warning(format!(
                "whether mysqld (pid {pid}) was started by socket activation cannot be told: {e}"
            ))),
        },
        Ok(None) => Some(Finding::problem(
            ConfigProblemKind::CannotIdentifyMysqld,
            format!(
                "nothing holds {}'s lock although mysqld answers (innodb_read_only?): a fence could neither prove it stopped nor kill it",
                files.lock_file.display()
            ),
        )),
        Err(e) => Some(Finding::problem(
            ConfigProblemKind::CannotIdentifyMysqld,
            format!("{e}: a fence could neither prove mysqld stopped nor kill it"),
        )),
    }
}

/// Whether `[mysql] address` reaches the server behind the socket: a
/// connection there names its connection id, which the socket's server
/// lists (with our client port) in its process list when it is the same
/// server. The running agent logs in with the replication account, as
/// replicas will (a connection that only reads the greeting counts as a
/// handshake error towards `max_connect_errors`, which would block this
/// host after enough checks); `check-config` without one reads the
/// greeting instead. Only positive evidence of another server, or of
/// nothing listening, is a mismatch; a timeout or a refused login is a
/// warning.
struct AddressCheck<'a> {
    address: String,
    socket: &'a Path,
    replication: Option<&'a (String, dbfleet_common::config::Secret)>,
    greeting_allowed: bool,
    /// Log in over verified TLS, as replicas do under a TLS policy.
    tls_ca: Option<&'a Path>,
    /// The server refuses TCP clients without TLS.
    server_requires_tls: bool,
}

impl AddressCheck<'_> {
    fn mismatch(&self, why: &str) -> Option<Finding> {
        Some(Finding::problem(
            ConfigProblemKind::MysqlAddressMismatch,
            format!(
                "[mysql] address {} {why}, not the server behind socket {}: replicas would be pointed at the wrong place; set address to this server's host:port",
                self.address,
                self.socket.display()
            ),
        ))
    }

    fn unknown(&self, why: &str) -> Option<Finding> {
        Some(Finding::warning(format!(
            "cannot tell whether [mysql] address {} reaches the server behind {}: {why}",
            self.address,
            self.socket.display()
        )))
    }

    async fn run(&self, conn: &mut Conn) -> Result<Option<Finding>, String> {
        let Some((user, password)) = self.replication else {
            if self.greeting_allowed {
                return self.by_greeting(conn).await;
            }
            return Ok(None);
        };
        // A plain login would be refused (MariaDB says only "access
        // denied"): say what is missing instead of blaming the grant.
        if self.server_requires_tls && self.tls_ca.is_none() {
            return Ok(self.unknown(
                "mysqld requires TLS (require_secure_transport) and [mysql] tls_ca_file is not set, \
                 so the replication account cannot log in over TCP to check; set tls_ca_file to \
                 the CA that signed the mysqld certificates",
            ));
        }
        let (host, port) = match dbfleet_proto::model::MysqlAddress::parse(&self.address) {
            Ok(a) => (a.host, a.port),
            Err(e) => return Ok(self.unknown(&e)),
        };
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(host)
            .tcp_port(port)
            .user(Some(user.clone()))
            .pass(Some(password.expose().to_string()))
            .prefer_socket(false)
            .ssl_opts(self.tls_ca.map(super::tls::verified));
        let mut tcp = match tokio::time::timeout(Duration::from_secs(2), Conn::new(opts)).await {
            Ok(Ok(c)) => c,
            Ok(Err(mysql_async::Error::Io(mysql_async::IoError::Io(e)))) if is_refused(&e) => {
                return Ok(self.mismatch("refuses connections"));
            }
            Ok(Err(mysql_async::Error::Server(e))) => {
                return Ok(self.unknown(&format!(
                    "the replication account {user} cannot log in there (server error {}); replicas could not either: check its grant",
                    e.code
                )));
            }
            Ok(Err(e)) => return Ok(self.unknown(&format!("connecting as {user}: {e}"))),
            Err(_) => return Ok(self.unknown("no answer within 2s")),
        };
        // This connection as the server it reached sees it: its id and
        // our client address and port, which no other connection shares.
        let me: Option<(u64, String)> = tcp
            .query_first(
                "SELECT ID, HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()",
            )
            .await
            .map_err(|e| format!("reading its own connection: {e}"))?;
        let Some((id, client)) = me else {
            let _ = tcp.disconnect().await;
            return Ok(self.unknown("the server there does not list the connection"));
        };
        let seen: Option<String> = conn
            .exec_first(
                "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = ?",
                (id,),
            )
            .await
            .map_err(|e| format!("reading the process list: {e}"))?;
        let _ = tcp.disconnect().await;
        Ok(match seen {
            Some(h) if h == client => None,
            _ => self.mismatch("reaches another server"),
        })
    }

    async fn by_greeting(&self, conn: &mut Conn) -> Result<Option<Finding>, String> {
        let mut tcp = match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if is_refused(&e) => return Ok(self.mismatch("refuses connections")),
            Ok(Err(e)) => return Ok(self.unknown(&e.to_string())),
            Err(_) => return Ok(self.unknown("no answer within 2s")),
        };
        let local_port = tcp.local_addr().map_err(|e| e.to_string())?.port();
        let mut greeting = [0u8; 256];
        let n = match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut greeting)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Ok(self.unknown(&format!("hung up before greeting ({e})"))),
            Err(_) => return Ok(self.unknown("no greeting within 2s")),
        };
        let Some(id) = connection_id(&greeting[..n]) else {
            return Ok(self.unknown("it answered with no MySQL greeting the agent can read"));
        };
        let host: Option<String> = conn
            .exec_first(
                "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = ?",
                (id,),
            )
            .await
            .map_err(|e| format!("reading the process list: {e}"))?;
        drop(tcp);
        Ok(match host {
            Some(h) if h.ends_with(&format!(":{local_port}")) => None,
            _ => self.mismatch("reaches another server"),
        })
    }
}

fn is_refused(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ConnectionRefused
}

/// The connection id in a MySQL/MariaDB initial handshake packet (protocol
/// 10): a 4-byte header, the protocol byte, the NUL-terminated version,
/// then the id, little-endian.
fn connection_id(packet: &[u8]) -> Option<u32> {
    let body = packet.get(4..)?;
    if *body.first()? != 10 {
        return None;
    }
    let nul = body[1..].iter().position(|b| *b == 0)?;
    let id = body.get(2 + nul..6 + nul)?;
    Some(u32::from_le_bytes(id.try_into().ok()?))
}

/// Whether mysqld would start writable: the options it reads from its
/// option files (`my_print_defaults`, with the option-file arguments of
/// its command line) followed by its command line, the last `read_only`
/// (or MySQL's `super_read_only`) winning. On MySQL a `super_read_only`
/// persisted in the data directory's `mysqld-auto.cnf` outranks them
/// (the agent persists it when it fences or promotes). Unknown stays
/// unknown: no finding.
async fn starts_writable(
    files: &ServerFiles,
    flavor: Flavor,
    vars: &HashMap<String, String>,
) -> Option<Finding> {
    let persisted = (flavor == Flavor::MySql
        && super::flavor::on(vars.get("persisted_globals_load")))
    .then(|| persisted_read_only(&files.datadir))
    .flatten();
    if persisted == Some(true) {
        return None;
    }
    let pid = process::identify(files).ok()??;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let (_, server_args) = args.split_first()?;
    let mut print = tokio::process::Command::new("my_print_defaults");
    print.args(server_args.iter().filter(|a| is_option_file_arg(a)));
    print.arg("--mysqld").kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(5), print.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let from_files = String::from_utf8_lossy(&out.stdout);
    let options = from_files
        .lines()
        .map(str::to_string)
        .chain(server_args.iter().cloned());
    // A persisted OFF outranks whatever my.cnf says.
    match last_read_only(options, flavor).filter(|_| persisted != Some(false)) {
        Some(true) => None,
        _ => Some(Finding::problem(
            ConfigProblemKind::StartsWritable,
            format!(
                "mysqld (pid {pid}) would start writable after a restart: its configuration does not set read_only{}; add `read_only = ON` to its my.cnf (every member, the primary too: dbfleet makes the primary writable), or a systemd drop-in with MYSQLD_OPTS=--read-only (docs/deploy.md)",
                if flavor == Flavor::MySql {
                    " and no super_read_only is persisted (dbfleet persists it at its first fence or promotion)"
                } else {
                    ""
                }
            ),
        )),
    }
}

/// `super_read_only` (or `read_only`) as persisted in `mysqld-auto.cnf`:
/// `None` when the file is absent, unreadable or says neither.
fn persisted_read_only(datadir: &Path) -> Option<bool> {
    let text = std::fs::read(datadir.join("mysqld-auto.cnf")).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let value = |name: &str| {
        ["mysql_dynamic_variables", "mysql_static_variables"]
            .iter()
            .find_map(|group| json[group][name]["Value"].as_str())
            .map(|v| matches!(v.to_ascii_uppercase().as_str(), "ON" | "1" | "TRUE"))
    };
    match (value("super_read_only"), value("read_only")) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (None, None) => None,
        _ => Some(false),
    }
}

fn is_option_file_arg(a: &str) -> bool {
    [
        "--defaults-file=",
        "--defaults-extra-file=",
        "--defaults-group-suffix=",
    ]
    .iter()
    .any(|p| a.starts_with(p))
        || a == "--no-defaults"
}

/// The last `read_only` setting among mysqld options, as mysqld reads
/// them (`-` and `_` alike, `loose-`, `skip-`, `enable-`, `disable-`
/// prefixes, no value meaning on). `None`: never set.
fn last_read_only(options: impl Iterator<Item = String>, flavor: Flavor) -> Option<bool> {
    let mut last = None;
    let mut super_on = false;
    for o in options {
        let Some(o) = o.strip_prefix("--") else {
            continue;
        };
        let (name, value) = match o.split_once('=') {
            Some((n, v)) => (n.replace('_', "-"), Some(v.trim().to_ascii_lowercase())),
            None => (o.replace('_', "-"), None),
        };
        let name = name.strip_prefix("loose-").unwrap_or(&name);
        let (name, negated) = match name
            .strip_prefix("skip-")
            .or_else(|| name.strip_prefix("disable-"))
        {
            Some(n) => (n, true),
            None => (name.strip_prefix("enable-").unwrap_or(name), false),
        };
        // super_read_only = ON implies read_only (MySQL); OFF leaves
        // read_only as it was.
        let is_super = flavor == Flavor::MySql && name == "super-read-only";
        if name != "read-only" && !is_super {
            continue;
        }
        let on = match value.as_deref() {
            None | Some("on" | "1" | "true") => true,
            Some("off" | "0" | "false") => false,
            Some(_) => continue,
        };
        let on = on != negated;
        if is_super {
            super_on = on;
        } else {
            last = Some(on);
        }
    }
    if super_on { Some(true) } else { last }
}

/// Compares the configured pid file with the server's (`check-config`
/// only: fencing never reads it).
fn pid_file_matches(
    configured: Option<&Path>,
    vars: &HashMap<String, String>,
    files: Option<&ServerFiles>,
) -> Vec<Finding> {
    let Some(configured) = configured else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let (Some(server), Some(files)) = (vars.get("pid_file"), files) {
        let server = files.datadir.join(server);
        if server != configured {
            out.push(Finding::warning(format!(
                "[mysql] pid_file is {} but mysqld writes its pid to {}; fix the setting (fencing does not depend on it)",
                configured.display(),
                server.display()
            )));
        }
    }
    match std::fs::read_to_string(configured) {
        Ok(text) => {
            let holder = files.and_then(|f| process::identify(f).ok().flatten());
            if let Some(holder) = holder
                && text.trim().parse::<i32>().ok() != Some(holder)
            {
                out.push(Finding::warning(format!(
                    "{} says pid {} but mysqld runs as pid {holder}: the file is stale or another server's",
                    configured.display(),
                    text.trim()
                )));
            }
        }
        Err(e) => out.push(Finding::warning(format!(
            "cannot read [mysql] pid_file {} as {}: {e} (fencing does not depend on it)",
            configured.display(),
            process::agent_user()
        ))),
    }
    out
}

/// The run-time form: findings that are cluster problems, sorted so an
/// unchanged result makes an unchanged report.
pub fn config_problems(found: &[Finding]) -> Vec<ConfigProblem> {
    let mut v: Vec<ConfigProblem> = found
        .iter()
        .filter_map(Finding::as_config_problem)
        .collect();
    v.sort_by(|a, b| {
        a.kind
            .as_str()
            .cmp(b.kind.as_str())
            .then(a.message.cmp(&b.message))
    });
    v
}

/// How often the running agent checks its configuration against the
/// server again (a restart of mysqld, a grant or a my.cnf edit show up
/// within it).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Runs the run-time checks now and every [`RECHECK_INTERVAL`], logging
/// each change of what they find and publishing the cluster problems for
/// the reports, until `shutdown`.
pub async fn watch(
    target: MysqlTarget,
    expect: Expectations,
    problems: tokio::sync::watch::Sender<Vec<ConfigProblem>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut logged: Vec<Finding> = Vec::new();
    loop {
        let found = verify(&target, &expect, false).await;
        if found != logged {
            for f in found.iter().filter(|f| !logged.contains(f)) {
                tracing::warn!(problem = f.text, "configuration check");
            }
            if found.is_empty() && !logged.is_empty() {
                tracing::info!("the configuration checks against mysqld pass again");
            }
            logged = found;
        }
        problems.send_if_modified(|old| {
            let new = config_problems(&logged);
            let changed = *old != new;
            *old = new;
            changed
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RECHECK_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Option<bool> {
        last_read_only(list.iter().map(|s| s.to_string()), Flavor::MariaDb)
    }

    #[test]
    fn the_last_read_only_option_wins_in_every_spelling() {
        assert_eq!(opts(&["--port=3306"]), None);
        assert_eq!(opts(&["--read_only=ON"]), Some(true));
        assert_eq!(opts(&["--read-only"]), Some(true));
        assert_eq!(opts(&["--read_only=1", "--skip-read-only"]), Some(false));
        assert_eq!(
            opts(&["--read-only=OFF", "--loose-read-only=true"]),
            Some(true)
        );
        assert_eq!(opts(&["--disable-read-only"]), Some(false));
        assert_eq!(
            opts(&["--read_only=ON", "--read_only_compressed=OFF"]),
            Some(true)
        );
        // MariaDB has no super_read_only; on MySQL it implies read_only,
        // and turning it off leaves read_only as it was.
        assert_eq!(opts(&["--super-read-only=ON"]), None);
        let mysql =
            |list: &[&str]| last_read_only(list.iter().map(|s| s.to_string()), Flavor::MySql);
        assert_eq!(mysql(&["--super-read-only=ON"]), Some(true));
        assert_eq!(mysql(&["--read-only=OFF", "--super_read_only"]), Some(true));
        assert_eq!(
            mysql(&["--read-only=ON", "--super-read-only=OFF"]),
            Some(true)
        );
        assert_eq!(mysql(&["--super-read-only=OFF"]), None);
    }

    #[test]
    fn a_persisted_super_read_only_is_read_from_mysqld_auto_cnf() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(persisted_read_only(dir.path()), None);
        let write = |text: &str| std::fs::write(dir.path().join("mysqld-auto.cnf"), text).unwrap();
        write(
            r#"{"Version": 2, "mysql_dynamic_variables": {"super_read_only": {"Value": "ON", "Metadata": {"Host": "localhost", "User": "a", "Timestamp": 1}}}}"#,
        );
        assert_eq!(persisted_read_only(dir.path()), Some(true));
        write(
            r#"{"Version": 2, "mysql_dynamic_variables": {"super_read_only": {"Value": "OFF"}}}"#,
        );
        assert_eq!(persisted_read_only(dir.path()), Some(false));
        write(r#"{"Version": 2, "mysql_dynamic_variables": {"max_connections": {"Value": "10"}}}"#);
        assert_eq!(persisted_read_only(dir.path()), None);
        write("not json");
        assert_eq!(persisted_read_only(dir.path()), None);
    }

    #[test]
    fn the_greeting_names_the_connection() {
        let mut p = vec![0x4a, 0, 0, 0, 10];
        p.extend(b"10.11.19-MariaDB\0");
        p.extend(1234u32.to_le_bytes());
        p.extend([0; 20]);
        assert_eq!(connection_id(&p), Some(1234));
        // an error packet (e.g. too many connections) names none
        assert_eq!(connection_id(&[9, 0, 0, 0, 0xff, 0x10, 0x04, b'x']), None);
        assert_eq!(connection_id(&[1, 0]), None);
    }

    #[test]
    fn only_option_file_arguments_go_to_my_print_defaults() {
        assert!(is_option_file_arg("--defaults-file=/x/my.cnf"));
        assert!(is_option_file_arg("--defaults-extra-file=/x"));
        assert!(is_option_file_arg("--no-defaults"));
        assert!(!is_option_file_arg("--read-only"));
        assert!(!is_option_file_arg("--pid-file=/run/x.pid"));
    }
}
