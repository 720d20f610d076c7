//! Every SQL difference between MariaDB and MySQL, in one place.
//!
//! The observer asks the flavor which statement to run and how to read its
//! result; nothing else in the agent knows that MariaDB says
//! `Master_Host` and MySQL 8 says `Source_Host`.

use std::collections::HashMap;

use dbfleet_proto::model::{Flavor, IoThread, MysqlAddress, Replication};

/// Detects the flavor from `SELECT VERSION()`.
pub fn detect(version: &str) -> Flavor {
    if version.to_ascii_lowercase().contains("mariadb") {
        Flavor::MariaDb
    } else {
        Flavor::MySql
    }
}

/// Where the replicas connected to this server (binlog dump threads) come
/// from, for [`super::links`] to judge which are alive.
pub const REPLICA_HOSTS_SQL: &str = "SELECT HOST FROM information_schema.PROCESSLIST \
     WHERE COMMAND LIKE 'Binlog Dump%'";

/// The replicas registered with this server (each replica registers when
/// its IO thread connects, and is removed when its dump thread ends).
pub fn registered_replicas_sql(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => "SHOW SLAVE HOSTS",
        // 8.0.22 and later; 8.4 removed SHOW SLAVE HOSTS
        Flavor::MySql => "SHOW REPLICAS",
    }
}

/// The server ids in [`registered_replicas_sql`]'s rows (`Server_id` on
/// MariaDB, `Server_Id` on MySQL).
pub fn registered_server_ids(rows: &[Row]) -> Vec<u32> {
    let mut ids: Vec<u32> = rows
        .iter()
        .filter_map(|r| {
            r.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("server_id"))
                .and_then(|(_, v)| v.as_deref()?.parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Session settings that keep the agent's own queries from waiting on
/// locks or running long.
pub fn session_setup(flavor: Flavor) -> &'static [&'static str] {
    match flavor {
        Flavor::MariaDb => &[
            "SET SESSION lock_wait_timeout = 2",
            "SET SESSION max_statement_time = 5",
        ],
        Flavor::MySql => &[
            "SET SESSION lock_wait_timeout = 2",
            "SET SESSION max_execution_time = 5000",
        ],
    }
}

/// The replica status statement.
pub fn replica_status_sql(flavor: Flavor) -> &'static str {
    match flavor {
        // every connection, with the columns mysqld_exporter reads
        // (retried transactions, heartbeats)
        Flavor::MariaDb => "SHOW ALL SLAVES STATUS",
        Flavor::MySql => "SHOW REPLICA STATUS",
    }
}

/// A result row as column name → text (NULL as `None`).
pub type Row = HashMap<String, Option<String>>;

/// A row of non-NULL text values, for tests of what reads rows.
#[cfg(test)]
pub(crate) fn text_row(pairs: &[(&str, &str)]) -> Row {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect()
}

fn text<'a>(row: &'a Row, name: &str) -> &'a str {
    row.get(name).and_then(|v| v.as_deref()).unwrap_or("")
}

/// Reads one replica status row; `Err` names the column that is unusable.
pub fn parse_replica_status(flavor: Flavor, row: &Row) -> Result<Replication, String> {
    let (host, port, io, sql, lag, received) = match flavor {
        Flavor::MariaDb => (
            "Master_Host",
            "Master_Port",
            "Slave_IO_Running",
            "Slave_SQL_Running",
            "Seconds_Behind_Master",
            "Gtid_IO_Pos",
        ),
        Flavor::MySql => (
            "Source_Host",
            "Source_Port",
            "Replica_IO_Running",
            "Replica_SQL_Running",
            "Seconds_Behind_Source",
            "Retrieved_Gtid_Set",
        ),
    };
    let port: u16 = text(row, port)
        .parse()
        .map_err(|_| format!("{port} is {:?}, not a port", text(row, port)))?;
    let io_thread = match text(row, io) {
        "Yes" => IoThread::Running,
        "Connecting" | "Preparing" => IoThread::Connecting,
        _ => IoThread::Stopped,
    };
    let seconds_behind = row
        .get(lag)
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok());
    let auto_position = match flavor {
        Flavor::MariaDb => matches!(text(row, "Using_Gtid"), "Slave_Pos" | "Current_Pos"),
        Flavor::MySql => text(row, "Auto_Position") == "1",
    };
    Ok(Replication {
        source: MysqlAddress {
            host: text(row, host).to_string(),
            port,
        },
        io_thread,
        sql_running: text(row, sql) == "Yes",
        last_io_error: text(row, "Last_IO_Error").to_string(),
        last_sql_error: text(row, "Last_SQL_Error").to_string(),
        seconds_behind,
        auto_position,
        received_gtid: text(row, received).replace('\n', ""),
        heartbeat_ms: None,
        net_timeout_ms: None,
        // set with the server's ssl_ca by the observer
        tls: None,
    })
}

/// Variable names of the semi-sync switches and their live state, in the
/// order (source enabled, replica enabled, source status, replica status,
/// source timeout, wait with no replica, acknowledging clients).
pub fn semi_sync_names(flavor: Flavor, vars: &HashMap<String, String>) -> [&'static str; 7] {
    // MySQL 8.0.26+ with the new plugins says source/replica; older plugins
    // and MariaDB say master/slave.
    if flavor == Flavor::MySql && vars.contains_key("rpl_semi_sync_source_enabled") {
        [
            "rpl_semi_sync_source_enabled",
            "rpl_semi_sync_replica_enabled",
            "Rpl_semi_sync_source_status",
            "Rpl_semi_sync_replica_status",
            "rpl_semi_sync_source_timeout",
            "rpl_semi_sync_source_wait_no_replica",
            "Rpl_semi_sync_source_clients",
        ]
    } else {
        [
            "rpl_semi_sync_master_enabled",
            "rpl_semi_sync_slave_enabled",
            "Rpl_semi_sync_master_status",
            "Rpl_semi_sync_slave_status",
            "rpl_semi_sync_master_timeout",
            "rpl_semi_sync_master_wait_no_slave",
            "Rpl_semi_sync_master_clients",
        ]
    }
}

/// Statements of role changes, per flavor. Passwords are bound by the
/// caller's quoting ([`quote`]), never logged.
pub mod role {
    use dbfleet_proto::model::Flavor;

    /// Stops receiving from the source (the applier keeps going).
    pub fn stop_io(f: Flavor) -> &'static str {
        match f {
            Flavor::MariaDb => "STOP SLAVE IO_THREAD",
            Flavor::MySql => "STOP REPLICA IO_THREAD",
        }
    }
    /// Starts receiving again.
    pub fn start_io(f: Flavor) -> &'static str {
        match f {
            Flavor::MariaDb => "START SLAVE IO_THREAD",
            Flavor::MySql => "START REPLICA IO_THREAD",
        }
    }
    /// Stops both threads.
    pub fn stop(f: Flavor) -> &'static str {
        match f {
            Flavor::MariaDb => "STOP SLAVE",
            Flavor::MySql => "STOP REPLICA",
        }
    }
    /// Starts both threads.
    pub fn start(f: Flavor) -> &'static str {
        match f {
            Flavor::MariaDb => "START SLAVE",
            Flavor::MySql => "START REPLICA",
        }
    }
    /// Forgets the replication configuration.
    pub fn reset_all(f: Flavor) -> &'static str {
        match f {
            Flavor::MariaDb => "RESET SLAVE ALL",
            Flavor::MySql => "RESET REPLICA ALL",
        }
    }
    /// Read-only for everyone (MySQL: super_read_only covers SUPER too).
    /// MySQL persists it (`mysqld-auto.cnf` outranks my.cnf), so a fenced
    /// server that restarts comes up read-only even if its my.cnf says
    /// otherwise; promotion clears it with `SET GLOBAL` only, so a
    /// restarted primary is read-only until the coordinator says again.
    /// MariaDB has no SET PERSIST: its my.cnf must say `read_only = ON`,
    /// which `check-config` verifies.
    pub fn read_only_on(f: Flavor) -> &'static [&'static str] {
        match f {
            Flavor::MariaDb => &["SET GLOBAL read_only = ON"],
            Flavor::MySql => &["SET GLOBAL super_read_only = ON"],
        }
    }

    /// Keeps read-only across a restart where the server can (MySQL's
    /// `SET PERSIST`): run after [`read_only_on`] as best effort, since
    /// a server that cannot write `mysqld-auto.cnf` (full disk, read-only
    /// filesystem) is read-only all the same, and the fence stands.
    pub fn read_only_persisted(f: Flavor) -> Option<&'static str> {
        match f {
            Flavor::MariaDb => None,
            Flavor::MySql => Some("SET PERSIST super_read_only = ON"),
        }
    }
    /// Writable.
    pub fn read_only_off(f: Flavor) -> &'static [&'static str] {
        match f {
            Flavor::MariaDb => &["SET GLOBAL read_only = OFF"],
            // Persisted read-only first (not changing it now): a
            // restarted primary comes up read-only whatever its my.cnf
            // says, until dbfleet makes it writable again.
            Flavor::MySql => &[
                "SET PERSIST_ONLY super_read_only = ON",
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF",
            ],
        }
    }
    /// The source side of semi-sync on or off: on a primary when the
    /// cluster runs semi-sync, never on a replica (whose applier would
    /// otherwise wait for acknowledgements of its own binlog writes).
    pub fn semi_sync_source(f: Flavor, on: bool) -> String {
        let v = if on { "ON" } else { "OFF" };
        match f {
            Flavor::MariaDb => format!("SET GLOBAL rpl_semi_sync_master_enabled = {v}"),
            Flavor::MySql => format!("SET GLOBAL rpl_semi_sync_source_enabled = {v}"),
        }
    }

    /// The statements that set semi-sync as a cluster policy asks:
    /// lossless (AFTER_SYNC, waiting with no replica too, a timeout past
    /// [`SEMI_SYNC_NO_FALLBACK_MS`], every member acknowledging, the
    /// source side on the primary only) or off. MySQL's plugins must be
    /// loaded (`plugin_load_add`).
    ///
    /// [`SEMI_SYNC_NO_FALLBACK_MS`]: dbfleet_proto::model::SEMI_SYNC_NO_FALLBACK_MS
    pub fn semi_sync_policy(
        f: Flavor,
        lossless: bool,
        source: bool,
    ) -> Result<Vec<String>, String> {
        let on = |b: bool| if b { "ON" } else { "OFF" };
        if f == Flavor::MySql {
            // The plugins (semisync_source.so, semisync_replica.so) must be
            // loaded; without them the first statement fails naming the
            // variable.
            if !lossless {
                return Ok(vec![
                    "SET GLOBAL rpl_semi_sync_source_enabled = OFF".into(),
                    "SET GLOBAL rpl_semi_sync_replica_enabled = OFF".into(),
                ]);
            }
            return Ok(vec![
                "SET GLOBAL rpl_semi_sync_replica_enabled = ON".into(),
                "SET GLOBAL rpl_semi_sync_source_wait_point = AFTER_SYNC".into(),
                "SET GLOBAL rpl_semi_sync_source_wait_no_replica = ON".into(),
                format!("SET GLOBAL rpl_semi_sync_source_timeout = {LOSSLESS_TIMEOUT_MS}"),
                format!("SET GLOBAL rpl_semi_sync_source_enabled = {}", on(source)),
            ]);
        }
        if !lossless {
            return Ok(vec![
                "SET GLOBAL rpl_semi_sync_master_enabled = OFF".into(),
                "SET GLOBAL rpl_semi_sync_slave_enabled = OFF".into(),
            ]);
        }
        Ok(vec![
            "SET GLOBAL rpl_semi_sync_slave_enabled = ON".into(),
            "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC".into(),
            "SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON".into(),
            format!("SET GLOBAL rpl_semi_sync_master_timeout = {LOSSLESS_TIMEOUT_MS}"),
            format!("SET GLOBAL rpl_semi_sync_master_enabled = {}", on(source)),
        ])
    }

    /// The semi-sync timeout of a lossless policy (over a day: a commit
    /// waits for a replica's ack rather than falling back).
    pub const LOSSLESS_TIMEOUT_MS: u64 = 100_000_000;

    /// Waits until `gtid` is executed; the query returns 0 on success.
    pub fn wait_gtid(f: Flavor, gtid: &str, timeout_s: f64) -> String {
        match f {
            Flavor::MariaDb => format!("SELECT MASTER_GTID_WAIT({}, {timeout_s})", quote(gtid)),
            Flavor::MySql => format!(
                "SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {timeout_s})",
                quote(gtid)
            ),
        }
    }
    /// Points the server at a source with GTID auto-positioning.
    ///
    /// With `tls_ca` the link is TLS and the source's certificate is
    /// checked against that CA and the source's address. Without it the
    /// TLS settings stay as they were (a link a DBA secured by hand is not
    /// made plain), and on MySQL the replica asks the source for its RSA
    /// key (`GET_SOURCE_PUBLIC_KEY`): `caching_sha2_password` needs it to
    /// send the password over plain TCP, and it trusts whatever key
    /// answers at the source's address, so a machine in the middle can
    /// learn the replication password. With TLS the key is not needed.
    pub fn change_source(
        f: Flavor,
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        heartbeat_s: f64,
        tls_ca: Option<&str>,
    ) -> String {
        match f {
            Flavor::MariaDb => format!(
                "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={port}, MASTER_USER={}, \
                 MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, \
                 MASTER_HEARTBEAT_PERIOD={heartbeat_s}{}",
                quote(host),
                quote(user),
                quote(password),
                tls_ca
                    .map(|ca| format!(
                        ", MASTER_SSL=1, MASTER_SSL_CA={}, MASTER_SSL_VERIFY_SERVER_CERT=1",
                        quote(ca)
                    ))
                    .unwrap_or_default()
            ),
            Flavor::MySql => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST={}, SOURCE_PORT={port}, \
                 SOURCE_USER={}, SOURCE_PASSWORD={}, SOURCE_AUTO_POSITION=1, \
                 SOURCE_CONNECT_RETRY=1, SOURCE_HEARTBEAT_PERIOD={heartbeat_s}, {}",
                quote(host),
                quote(user),
                quote(password),
                match tls_ca {
                    Some(ca) => format!(
                        "SOURCE_SSL=1, SOURCE_SSL_CA={}, SOURCE_SSL_VERIFY_SERVER_CERT=1, \
                         GET_SOURCE_PUBLIC_KEY=0",
                        quote(ca)
                    ),
                    None => "GET_SOURCE_PUBLIC_KEY=1".to_string(),
                }
            ),
        }
    }
    /// The replica's network timeout (whole seconds, at least 1).
    pub fn net_timeout(f: Flavor, seconds: u64) -> String {
        match f {
            Flavor::MariaDb => format!("SET GLOBAL slave_net_timeout = {}", seconds.max(1)),
            Flavor::MySql => format!("SET GLOBAL replica_net_timeout = {}", seconds.max(1)),
        }
    }
    /// Client sessions to kill when fencing: everything but the agent's
    /// own sessions, the server's own threads and replicas' dump threads.
    pub const CLIENT_SESSIONS: &str = "SELECT ID FROM information_schema.PROCESSLIST \
         WHERE ID <> CONNECTION_ID() AND USER NOT IN ('system user', 'event_scheduler') \
         AND USER <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
         AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', \
         'Slave_SQL', 'Slave_worker')";

    /// A SQL string literal.
    pub fn quote(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('\'');
        for c in s.chars() {
            match c {
                '\'' => out.push_str("''"),
                '\\' => out.push_str("\\\\"),
                '\0' => out.push_str("\\0"),
                c => out.push(c),
            }
        }
        out.push('\'');
        out
    }
}

/// Interprets ON/OFF/1/0 as the server prints booleans.
pub fn on(v: Option<&String>) -> bool {
    matches!(
        v.map(|s| s.to_ascii_uppercase()).as_deref(),
        Some("ON" | "1" | "YES" | "TRUE")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_replicas_are_read_by_server_id_on_both_flavors() {
        let rows = [
            row(&[("Server_id", Some("3")), ("Host", Some(""))]),
            row(&[("Server_Id", Some("2"))]),
            row(&[("Server_id", Some("3"))]),
            row(&[("Server_id", None)]),
        ];
        assert_eq!(registered_server_ids(&rows), vec![2, 3]);
    }

    fn row(pairs: &[(&str, Option<&str>)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn detects_flavors() {
        assert_eq!(detect("10.11.19-MariaDB-0+deb12u1"), Flavor::MariaDb);
        assert_eq!(detect("8.0.39"), Flavor::MySql);
        assert_eq!(detect("8.4.2-log"), Flavor::MySql);
    }

    #[test]
    fn parses_mysql_replica_status_fixture() {
        // Columns as printed by MySQL 8.4 SHOW REPLICA STATUS.
        let r = row(&[
            ("Source_Host", Some("10.0.0.5")),
            ("Source_Port", Some("3306")),
            ("Replica_IO_Running", Some("Connecting")),
            ("Replica_SQL_Running", Some("Yes")),
            ("Seconds_Behind_Source", None),
            ("Last_IO_Error", Some("error connecting to source")),
            ("Last_SQL_Error", Some("")),
            ("Auto_Position", Some("1")),
            (
                "Retrieved_Gtid_Set",
                Some(
                    "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1-2",
                ),
            ),
        ]);
        let rep = parse_replica_status(Flavor::MySql, &r).unwrap();
        assert_eq!(rep.source.to_string(), "10.0.0.5:3306");
        assert_eq!(rep.io_thread, IoThread::Connecting);
        assert!(rep.sql_running && rep.auto_position);
        assert_eq!(rep.seconds_behind, None);
        assert!(!rep.received_gtid.contains('\n'));
    }

    #[test]
    fn parses_mariadb_replica_status_fixture() {
        let r = row(&[
            ("Master_Host", Some("127.0.0.11")),
            ("Master_Port", Some("3306")),
            ("Slave_IO_Running", Some("Yes")),
            ("Slave_SQL_Running", Some("No")),
            ("Seconds_Behind_Master", Some("12")),
            ("Using_Gtid", Some("Slave_Pos")),
            ("Gtid_IO_Pos", Some("0-1-42")),
            ("Last_SQL_Error", Some("Duplicate entry '1'")),
        ]);
        let rep = parse_replica_status(Flavor::MariaDb, &r).unwrap();
        assert_eq!(rep.io_thread, IoThread::Running);
        assert!(!rep.sql_running);
        assert_eq!(rep.seconds_behind, Some(12));
        assert_eq!(rep.received_gtid, "0-1-42");
        assert_eq!(rep.last_sql_error, "Duplicate entry '1'");
        let bad = row(&[("Master_Port", Some("x"))]);
        assert!(
            parse_replica_status(Flavor::MariaDb, &bad)
                .unwrap_err()
                .contains("Master_Port")
        );
    }

    #[test]
    fn semi_sync_names_follow_the_plugin() {
        let mut vars = HashMap::new();
        assert_eq!(
            semi_sync_names(Flavor::MySql, &vars)[0],
            "rpl_semi_sync_master_enabled"
        );
        vars.insert("rpl_semi_sync_source_enabled".to_string(), "ON".to_string());
        assert_eq!(
            semi_sync_names(Flavor::MySql, &vars)[0],
            "rpl_semi_sync_source_enabled"
        );
        assert_eq!(
            semi_sync_names(Flavor::MariaDb, &vars)[0],
            "rpl_semi_sync_master_enabled"
        );
        assert!(on(Some(&"ON".to_string())) && !on(Some(&"OFF".to_string())) && !on(None));
    }

    #[test]
    fn change_source_asks_for_verified_tls_or_leaves_tls_alone() {
        use super::role::change_source;
        let maria = change_source(Flavor::MariaDb, "10.0.0.1", 3306, "repl", "pw", 1.0, None);
        assert!(!maria.contains("SSL"), "{maria}");
        let maria = change_source(
            Flavor::MariaDb,
            "10.0.0.1",
            3306,
            "repl",
            "pw",
            1.0,
            Some("/etc/mysql/ca's.pem"),
        );
        assert!(
            maria.ends_with(
                ", MASTER_SSL=1, MASTER_SSL_CA='/etc/mysql/ca''s.pem', MASTER_SSL_VERIFY_SERVER_CERT=1"
            ),
            "{maria}"
        );
        // MySQL: the source's RSA key is fetched only without TLS
        let plain = change_source(Flavor::MySql, "10.0.0.1", 3306, "repl", "pw", 1.0, None);
        assert!(plain.ends_with("GET_SOURCE_PUBLIC_KEY=1"), "{plain}");
        assert!(!plain.contains("SOURCE_SSL"), "{plain}");
        let tls = change_source(
            Flavor::MySql,
            "10.0.0.1",
            3306,
            "repl",
            "pw",
            1.0,
            Some("/etc/mysql/ca.pem"),
        );
        assert!(!tls.contains("GET_SOURCE_PUBLIC_KEY=1"), "{tls}");
        assert!(
            tls.ends_with(
                "SOURCE_SSL=1, SOURCE_SSL_CA='/etc/mysql/ca.pem', SOURCE_SSL_VERIFY_SERVER_CERT=1, \
                 GET_SOURCE_PUBLIC_KEY=0"
            ),
            "{tls}"
        );
    }
}
