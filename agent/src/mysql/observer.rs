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
    pub fn new(target: MysqlTarget) -> Observer {
        Observer { target, conn: None }
    }

    /// Observes the server once, within the query deadline.
    pub async fn observe(&mut self) -> MysqlObservation {
        let deadline = self.target.connect_timeout + self.target.query_timeout;
        let result = tokio::time::timeout(deadline, self.try_observe()).await;
        let error = match result {
            Ok(Ok(state)) => return MysqlObservation::Reachable(Box::new(state)),
            Ok(Err(e)) => e,
            Err(_) => format!("mysqld did not answer within {deadline:?}"),
        };
        if self.conn.take().is_some() {
            info!(error, "lost the connection to mysqld; will reconnect");
        }
        MysqlObservation::Unreachable { error }
    }

    async fn try_observe(&mut self) -> Result<ServerState, String> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.target).await?);
        }
        let (conn, flavor) = self.conn.as_mut().expect("connection set just above");
        read_state(conn, *flavor).await
    }
}

/// Reads everything a report says about the server, on `conn`.
pub(crate) async fn read_state(conn: &mut Conn, flavor: Flavor) -> Result<ServerState, String> {
    let err = |e: mysql_async::Error| e.to_string();
    let vars = name_values(conn, &flavor::show_where("VARIABLES", flavor::VARIABLES))
        .await
        .map_err(err)?;
    let status = name_values(conn, &flavor::show_where("STATUS", flavor::STATUS))
        .await
        .map_err(err)?;
    let replica_rows = query_rows(conn, flavor::replica_status_sql(flavor))
        .await
        .map_err(err)?;
    let replica_hosts: Vec<String> = conn.query(flavor::REPLICA_HOSTS_SQL).await.map_err(err)?;
    let replication = replica_rows
        .first()
        .map(|r| flavor::parse_replica_status(flavor, r))
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
        flavor::semi_sync_names(flavor, &vars);
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
        replicas_connected: links::alive_replicas(get("port").parse().unwrap_or(0), &replica_hosts),
    })
}
