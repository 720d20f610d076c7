//! Observing the local mysqld over one persistent connection.
//!
//! One connection, opened lazily and reopened after any error or timeout,
//! so the agent never piles sessions onto a struggling server. Each
//! observation runs under a deadline; a server that does not answer in
//! time is reported unreachable with the reason, never silently skipped.

use std::collections::HashMap;
use std::time::Duration;

use dbfleet_common::config::Secret;
use dbfleet_proto::model::{
    Binlog, Flavor, GtidState, MysqlAddress, MysqlObservation, SemiSync, ServerState,
};
use dbfleet_proto::mysql_tls::{AgentConnection, ServerTls};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Value};
use tracing::{debug, info};

use super::flavor::{self, Row, on};
use super::links;

/// Where and how to reach the local mysqld.
#[derive(Debug, Clone)]
pub struct MysqlTarget {
    /// TCP address of the server.
    pub address: MysqlAddress,
    /// Its Unix socket, used instead of the address when set.
    pub socket: Option<std::path::PathBuf>,
    /// Account the agent uses.
    pub user: String,
    /// Its password (from a file).
    pub password: Secret,
    /// Deadline for establishing the connection.
    pub connect_timeout: Duration,
    /// Deadline for one whole observation.
    pub query_timeout: Duration,
    /// The CA that signed mysqld's certificate: TCP connections use
    /// verified TLS when set.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl MysqlTarget {
    /// How connections to this target reach mysqld.
    pub fn connection(&self) -> AgentConnection {
        match (&self.socket, &self.tls_ca) {
            (Some(_), _) => AgentConnection::Socket,
            (None, Some(_)) => AgentConnection::Tls,
            (None, None) => AgentConnection::Plain,
        }
    }
}

/// Opens a connection with the agent's session settings and detects the
/// flavor.
pub(crate) async fn connect(t: &MysqlTarget) -> Result<(Conn, Flavor), String> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(t.address.host.clone())
        .tcp_port(t.address.port)
        .user(Some(t.user.clone()))
        .pass(Some(t.password.expose().to_string()))
        .prefer_socket(false)
        .socket(t.socket.as_ref().map(|p| p.to_string_lossy().into_owned()))
        // Not over the socket: mysql_async would ask it for TLS and then
        // not start it, and the session breaks ("Packets out of sync").
        .ssl_opts(match (&t.socket, &t.tls_ca) {
            (None, Some(ca)) => Some(super::tls::verified(ca)),
            _ => None,
        })
        .stmt_cache_size(0);
    let place = match &t.socket {
        Some(p) => p.display().to_string(),
        None => t.address.to_string(),
    };
    let mut conn = tokio::time::timeout(t.connect_timeout, Conn::new(opts))
        .await
        .map_err(|_| {
            format!(
                "connecting to {place} timed out after {:?}",
                t.connect_timeout
            )
        })?
        .map_err(|e| format!("cannot connect to {place}: {}", root_cause(&e)))?;
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| e.to_string())?;
    let flavor = flavor::detect(version.as_deref().unwrap_or_default());
    for sql in flavor::session_setup(flavor) {
        conn.query_drop(*sql).await.map_err(|e| e.to_string())?;
    }
    debug!(address = %t.address, flavor = flavor.as_str(), "connected to mysqld");
    Ok((conn, flavor))
}

/// Holds the connection between observations. `Debug` is written by hand:
/// the connection's options hold the password.
pub struct Observer {
    target: MysqlTarget,
    conn: Option<(Conn, Flavor)>,
    runs: Vec<CollectorRun>,
    live: LiveReplicas,
}

/// Whether a collection asks the kernel which replica connections are
/// alive. Reading the TCP table walks every bucket of the kernel's
/// connection hash (sized by memory: about 5 ms of CPU per read on a
/// 24 GiB host, most of an idle primary's agent), and only the self-fence
/// rule needs it; without it `replicas_connected` counts dump threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveReplicas {
    /// Count only connections the kernel shows alive (self-fence on).
    Check,
    /// Count the binlog dump threads.
    DumpThreads,
}

/// The queries of one collection, named as mysqld_exporter names its
/// collectors where one matches.
pub const COLLECTORS: [&str; 4] = [
    "global_variables",
    "global_status",
    "slave_status",
    "replica_hosts",
];

/// How one collector fared in the last collection.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorRun {
    /// One of [`COLLECTORS`].
    pub name: &'static str,
    /// It answered within its deadline.
    pub ok: bool,
    /// How long it took (up to its deadline).
    pub seconds: f64,
}

/// Everything one collection read from mysqld, raw: the report's
/// [`ServerState`] and the metrics endpoint are both made from it, so the
/// server is asked once.
#[derive(Debug, Clone, Default)]
pub struct ServerSample {
    /// `SHOW GLOBAL VARIABLES`.
    pub variables: HashMap<String, String>,
    /// `SHOW GLOBAL STATUS`.
    pub status: HashMap<String, String>,
    /// The replica status rows (none: replication not configured).
    pub replica_rows: Vec<Row>,
    /// Hosts of the binlog dump threads.
    pub replica_hosts: Vec<String>,
    /// Server ids of the registered replicas.
    pub replica_server_ids: Vec<u32>,
}

/// The outcome of one collection.
#[derive(Debug, Clone)]
pub struct Collection {
    /// What reports say about the server.
    pub observation: MysqlObservation,
    /// The raw values, when every collector answered.
    pub sample: Option<ServerSample>,
    /// mysqld answered at least one collector (it is up, though a
    /// collector may have failed).
    pub answered: bool,
    /// Each collector that ran, in order.
    pub runs: Vec<CollectorRun>,
}

/// The innermost cause of an error: mysql_async wraps an I/O error in
/// two layers that each repeat it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("target", &self.target)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

fn to_row(row: &mysql_async::Row) -> Row {
    row.columns_ref()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                c.name_str().into_owned(),
                row.as_ref(i).and_then(value_text),
            )
        })
        .collect()
}

async fn query_rows(conn: &mut Conn, sql: &str) -> Result<Vec<Row>, mysql_async::Error> {
    let rows: Vec<mysql_async::Row> = conn.query(sql).await?;
    Ok(rows.iter().map(to_row).collect())
}

async fn name_values(
    conn: &mut Conn,
    sql: &str,
) -> Result<HashMap<String, String>, mysql_async::Error> {
    Ok(query_rows(conn, sql)
        .await?
        .into_iter()
        .filter_map(|r| {
            Some((
                r.get("Variable_name")?.clone()?,
                r.get("Value")?.clone().unwrap_or_default(),
            ))
        })
        .collect())
}

impl Observer {
    /// An observer that connects on first use.
    pub fn new(target: MysqlTarget, live: LiveReplicas) -> Observer {
        Observer {
            target,
            live,
            conn: None,
            runs: Vec::new(),
        }
    }

    /// Collects once: every collector under its own deadline (the query
    /// timeout), the whole under connect plus query timeout.
    pub async fn collect(&mut self) -> Collection {
        self.runs.clear();
        let deadline = self.target.connect_timeout + self.target.query_timeout;
        let result = tokio::time::timeout(deadline, self.try_collect()).await;
        let runs = std::mem::take(&mut self.runs);
        let answered = runs.iter().any(|r| r.ok);
        let error = match result {
            Ok(Ok((state, sample))) => {
                return Collection {
                    observation: MysqlObservation::Reachable(Box::new(state)),
                    sample: Some(sample),
                    answered,
                    runs,
                };
            }
            Ok(Err(e)) => e,
            Err(_) => format!("mysqld did not answer within {deadline:?}"),
        };
        if self.conn.take().is_some() {
            info!(error, "lost the connection to mysqld; will reconnect");
        }
        Collection {
            observation: MysqlObservation::Unreachable { error },
            sample: None,
            answered,
            runs,
        }
    }

    async fn try_collect(&mut self) -> Result<(ServerState, ServerSample), String> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.target).await?);
        }
        let (conn, flavor) = self.conn.as_mut().expect("connection set just above");
        let sample = read_sample(
            conn,
            *flavor,
            Some(self.target.query_timeout),
            &mut self.runs,
        )
        .await?;
        let via = self.target.connection();
        Ok((state_of(*flavor, &sample, self.live, via)?, sample))
    }
}

/// Runs one collector under `deadline`, noting how it fared in `runs`.
async fn run_collector<T>(
    name: &'static str,
    deadline: Option<Duration>,
    runs: &mut Vec<CollectorRun>,
    query: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, String> {
    let started = std::time::Instant::now();
    let result = match deadline {
        Some(d) => tokio::time::timeout(d, query).await.unwrap_or_else(|_| {
            Err(mysql_async::Error::Other(
                format!("no answer within {d:?}").into(),
            ))
        }),
        None => query.await,
    };
    runs.push(CollectorRun {
        name,
        ok: result.is_ok(),
        seconds: started.elapsed().as_secs_f64(),
    });
    result.map_err(|e| format!("{name}: {e}"))
}

/// Reads every collector once on `conn`.
pub(crate) async fn read_sample(
    conn: &mut Conn,
    flavor: Flavor,
    deadline: Option<Duration>,
    runs: &mut Vec<CollectorRun>,
) -> Result<ServerSample, String> {
    let [vars, status, replica, hosts] = COLLECTORS;
    let variables = run_collector(
        vars,
        deadline,
        runs,
        name_values(conn, "SHOW GLOBAL VARIABLES"),
    )
    .await?;
    let status = run_collector(
        status,
        deadline,
        runs,
        name_values(conn, "SHOW GLOBAL STATUS"),
    )
    .await?;
    let replica_rows = run_collector(
        replica,
        deadline,
        runs,
        query_rows(conn, flavor::replica_status_sql(flavor)),
    )
    .await?;
    let (replica_hosts, replica_server_ids) = run_collector(hosts, deadline, runs, async {
        let hosts: Vec<String> = conn.query(flavor::REPLICA_HOSTS_SQL).await?;
        let registered = query_rows(conn, flavor::registered_replicas_sql(flavor)).await?;
        Ok((hosts, flavor::registered_server_ids(&registered)))
    })
    .await?;
    Ok(ServerSample {
        variables,
        status,
        replica_rows,
        replica_hosts,
        replica_server_ids,
    })
}

/// Reads everything a report says about the server, on `conn`.
pub(crate) async fn read_state(
    conn: &mut Conn,
    flavor: Flavor,
    via: AgentConnection,
) -> Result<ServerState, String> {
    let sample = read_sample(conn, flavor, None, &mut Vec::new()).await?;
    state_of(flavor, &sample, LiveReplicas::Check, via)
}

/// What a report says about the server, from one sample read over a
/// connection made `via`.
pub fn state_of(
    flavor: Flavor,
    sample: &ServerSample,
    live: LiveReplicas,
    via: AgentConnection,
) -> Result<ServerState, String> {
    let ServerSample {
        variables: vars,
        status,
        replica_rows,
        replica_hosts,
        replica_server_ids,
    } = sample;
    let server_ca = vars.get("ssl_ca").cloned().unwrap_or_default();
    // the default connection (MariaDB lists named ones too)
    let replication = replica_rows
        .iter()
        .find(|r| {
            r.get("Connection_name")
                .is_none_or(|n| n.as_deref().unwrap_or_default().is_empty())
        })
        .map(|row| {
            flavor::parse_replica_status(flavor, row).map(|mut r| {
                r.tls = super::tls::link_tls(flavor, row, &server_ca);
                r
            })
        })
        .transpose()?
        .map(|mut r| {
            // seconds with a fraction, e.g. "1.000"
            let ms = |v: Option<&String>| {
                v.and_then(|v| v.parse::<f64>().ok())
                    .map(|s| (s * 1000.0).round() as u64)
            };
            r.heartbeat_ms = ms(status.get("Slave_heartbeat_period"));
            r.net_timeout_ms = ms(vars.get("slave_net_timeout"));
            r
        });
    let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
    let read_only = on(vars.get("read_only"));
    let [src_en, rep_en, src_st, rep_st, timeout, wait_no, clients] =
        flavor::semi_sync_names(flavor, vars);
    let gtid = match flavor {
        Flavor::MariaDb => GtidState {
            executed: get("gtid_current_pos"),
            current_pos: get("gtid_current_pos"),
            binlog_pos: get("gtid_binlog_pos"),
            slave_pos: get("gtid_slave_pos"),
        },
        Flavor::MySql => GtidState {
            executed: get("gtid_executed").replace('\n', ""),
            ..Default::default()
        },
    };
    Ok(ServerState {
        version: get("version"),
        flavor,
        server_id: get("server_id").parse().unwrap_or(0),
        server_uuid: get("server_uuid"),
        read_only,
        super_read_only: match flavor {
            Flavor::MariaDb => read_only,
            Flavor::MySql => on(vars.get("super_read_only")),
        },
        gtid,
        replication,
        semi_sync: SemiSync {
            source_enabled: on(vars.get(src_en)),
            replica_enabled: on(vars.get(rep_en)),
            source_active: on(status.get(src_st)),
            replica_active: on(status.get(rep_st)),
            timeout_ms: get(timeout).parse().unwrap_or(0),
            wait_no_replica: on(vars.get(wait_no)),
            clients: status
                .get(clients)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        },
        binlog: Binlog {
            enabled: on(vars.get("log_bin")),
            format: get("binlog_format"),
        },
        replicas_connected: match live {
            LiveReplicas::Check => {
                links::alive_replicas(get("port").parse().unwrap_or(0), replica_hosts)
            }
            LiveReplicas::DumpThreads => replica_hosts.len() as u32,
        },
        replica_server_ids: replica_server_ids.clone(),
        tls: Some(ServerTls {
            ca: server_ca,
            require_secure_transport: on(vars.get("require_secure_transport")),
            agent_connection: via,
        }),
    })
}
