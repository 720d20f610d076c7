//! The MySQL accounts dbfleet uses and exactly the privileges each needs,
//! per flavor: the one list that `docs/deploy.md` prints, the sandbox
//! grants, and `dbfleet-agent check-config` compares the live account with
//! (naming what is missing and what it is for).
//!
//! The agent account is `@localhost` and used over mysqld's Unix socket:
//! it needs no network reach, and a stolen password is no use from
//! another host. Point-in-time restores replay archived binlogs through
//! it, so it holds the data privileges a replay needs, but never `SUPER`,
//! `GRANT OPTION`, `CREATE USER` or `FILE` (a binlog holding account
//! changes cannot be replayed through it: the restore then fails naming
//! the statement, and the DBA replays that part by hand).

use crate::model::Flavor;

/// One global privilege and why dbfleet needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privilege {
    /// As `GRANT` spells it.
    pub name: &'static str,
    /// What the agent does with it, for messages and the docs.
    pub needed_for: &'static str,
}

const fn p(name: &'static str, needed_for: &'static str) -> Privilege {
    Privilege { name, needed_for }
}

/// The data privileges a point-in-time restore's replay needs, on either
/// flavor, after the flavor's own privilege to replay at all.
const REPLAY_DATA: &[Privilege] = &[
    p("INSERT", "point-in-time restores: replaying row changes"),
    p("UPDATE", "point-in-time restores: replaying row changes"),
    p("DELETE", "point-in-time restores: replaying row changes"),
    p("CREATE", "point-in-time restores: replaying DDL"),
    p("DROP", "point-in-time restores: replaying DDL"),
    p("ALTER", "point-in-time restores: replaying DDL"),
    p("INDEX", "point-in-time restores: replaying DDL"),
    p(
        "REFERENCES",
        "point-in-time restores: replaying foreign keys",
    ),
    p("CREATE VIEW", "point-in-time restores: replaying views"),
    p(
        "CREATE ROUTINE",
        "point-in-time restores: replaying stored routines",
    ),
    p(
        "ALTER ROUTINE",
        "point-in-time restores: replaying stored routines",
    ),
    p(
        "EXECUTE",
        "point-in-time restores: replaying statements that call routines",
    ),
    p(
        "CREATE TEMPORARY TABLES",
        "point-in-time restores: replaying statement-based temporary tables",
    ),
];

/// MariaDB 10.6 and later (10.11 verified by the real-process tests),
/// and [`REPLAY_DATA`].
const MARIADB_AGENT: &[Privilege] = &[
    p(
        "RELOAD",
        "mariadb-backup's backup locks, RESET MASTER after a restore",
    ),
    p(
        "PROCESS",
        "listing client sessions to end them when fencing; mariadb-backup",
    ),
    p("LOCK TABLES", "mariadb-backup and mariadb-dump"),
    p(
        "SHUTDOWN",
        "stopping mysqld to swap in a restored data directory",
    ),
    p(
        "BINLOG MONITOR",
        "SHOW MASTER STATUS and SHOW BINARY LOGS (positions, binlog archiving)",
    ),
    p(
        "SLAVE MONITOR",
        "SHOW ALL SLAVES STATUS (observing replication)",
    ),
    p(
        "REPLICATION MASTER ADMIN",
        "SHOW SLAVE HOSTS and the semi-sync source settings",
    ),
    p(
        "REPLICATION SLAVE ADMIN",
        "CHANGE MASTER, START/STOP SLAVE, gtid_slave_pos, replica timeouts",
    ),
    p(
        "READ_ONLY ADMIN",
        "setting read_only when fencing and promoting",
    ),
    p("CONNECTION ADMIN", "ending client sessions when fencing"),
    p("SELECT", "mariadb-dump (logical backups)"),
    p("SHOW VIEW", "mariadb-dump of views"),
    p("TRIGGER", "mariadb-dump of triggers"),
    p("EVENT", "mariadb-dump of events"),
    p(
        "BINLOG REPLAY",
        "point-in-time restores: replaying archived binlogs",
    ),
];

/// MySQL 8.4 and 9.x (9.7 verified by the real-process tests): static
/// privileges and the dynamic ones that replaced `SUPER`. Replay runs
/// under `REPLICATION_APPLIER` (GTIDs and row events as a replica applies
/// them) plus the data privileges each event needs, rather than
/// `BINLOG_ADMIN`, which would also let the agent purge binlogs.
const MYSQL_AGENT: &[Privilege] = &[
    p(
        "RELOAD",
        "mysqldump's FLUSH TABLES, RESET BINARY LOGS AND GTIDS after a restore",
    ),
    p(
        "PROCESS",
        "listing client sessions to end them when fencing; mysqldump",
    ),
    p("LOCK TABLES", "mysqldump"),
    p(
        "SHUTDOWN",
        "stopping mysqld to swap in a restored data directory",
    ),
    p(
        "REPLICATION CLIENT",
        "SHOW REPLICA STATUS, SHOW BINARY LOG STATUS, SHOW REPLICAS (observing replication)",
    ),
    p(
        "REPLICATION SLAVE",
        "SHOW REPLICAS (which replicas are connected) and reading binlogs to archive them",
    ),
    p(
        "REPLICATION_SLAVE_ADMIN",
        "CHANGE REPLICATION SOURCE, START/STOP REPLICA",
    ),
    p(
        "SYSTEM_VARIABLES_ADMIN",
        "SET PERSIST super_read_only when fencing, read_only when promoting, replica timeouts and semi-sync",
    ),
    p(
        "PERSIST_RO_VARIABLES_ADMIN",
        "SET PERSIST_ONLY super_read_only when promoting, so a restarted primary starts read-only",
    ),
    p("CONNECTION_ADMIN", "ending client sessions when fencing"),
    p(
        "BACKUP_ADMIN",
        "CLONE LOCAL DATA DIRECTORY (physical backups) and backup locks",
    ),
    p(
        "CLONE_ADMIN",
        "CLONE INSTANCE FROM a donor when the member is rebuilt (dbfleet rebuild)",
    ),
    p("SELECT", "mysqldump (logical backups)"),
    p("SHOW VIEW", "mysqldump of views"),
    p("TRIGGER", "mysqldump of triggers"),
    p("EVENT", "mysqldump of events"),
    p(
        "REPLICATION_APPLIER",
        "point-in-time restores: replaying archived binlogs with their GTIDs",
    ),
];

/// The account's global privileges for `flavor`; `None` where dbfleet has
/// not verified a list against real servers.
pub fn agent_privileges(flavor: Flavor) -> Option<Vec<Privilege>> {
    let own = match flavor {
        Flavor::MariaDb => MARIADB_AGENT,
        Flavor::MySql => MYSQL_AGENT,
    };
    Some(own.iter().chain(REPLAY_DATA).copied().collect())
}

/// The privilege replicas' account needs on every member.
pub const REPLICATION_PRIVILEGE: &str = "REPLICATION SLAVE";

/// What the replicas' account needs on every member of a `flavor`
/// cluster: `REPLICATION SLAVE`, and on MySQL `BACKUP_ADMIN`, with which a
/// member being rebuilt clones a donor's data (`CLONE INSTANCE FROM`
/// connects as this account; it reads no more than the binlogs it
/// already may).
pub fn replication_privileges(flavor: Flavor) -> &'static [&'static str] {
    match flavor {
        Flavor::MariaDb => &[REPLICATION_PRIVILEGE],
        Flavor::MySql => &[REPLICATION_PRIVILEGE, "BACKUP_ADMIN"],
    }
}

fn account(user: &str, host: &str) -> String {
    format!("'{user}'@'{host}'")
}

/// `GRANT ... ON *.* TO 'user'@'host'` for the agent account, or `None`
/// (see [`agent_privileges`]).
pub fn agent_grant(flavor: Flavor, user: &str, host: &str) -> Option<String> {
    let names: Vec<&str> = agent_privileges(flavor)?.iter().map(|p| p.name).collect();
    Some(format!(
        "GRANT {} ON *.* TO {}",
        names.join(", "),
        account(user, host)
    ))
}

/// `GRANT REPLICATION SLAVE ON *.* TO 'user'@'host'` (see
/// [`replication_privileges`]).
pub fn replication_grant(flavor: Flavor, user: &str, host: &str) -> String {
    format!(
        "GRANT {} ON *.* TO {}",
        replication_privileges(flavor).join(", "),
        account(user, host)
    )
}

/// Which of `flavor`'s required privileges `held` (global privileges as
/// `information_schema.USER_PRIVILEGES` lists them) lacks.
pub fn missing(flavor: Flavor, held: &[String]) -> Option<Vec<Privilege>> {
    let held: Vec<String> = held.iter().map(|h| h.trim().to_ascii_uppercase()).collect();
    Some(
        agent_privileges(flavor)?
            .into_iter()
            .filter(|p| {
                !held
                    .iter()
                    .any(|h| h == p.name || aliases(p.name).contains(&h.as_str()))
            })
            .collect(),
    )
}

/// Other names a server may list a privilege under (MariaDB renamed
/// `SLAVE MONITOR` to `REPLICA MONITOR` and `REPLICATION CLIENT` to
/// `BINLOG MONITOR`).
fn aliases(name: &str) -> &'static [&'static str] {
    match name {
        "SLAVE MONITOR" => &["REPLICA MONITOR"],
        "BINLOG MONITOR" => &["REPLICATION CLIENT"],
        "REPLICATION SLAVE ADMIN" => &["REPLICA ADMIN"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grant_lists_every_privilege_once_and_nothing_sweeping() {
        let (mariadb, mysql) = (
            agent_privileges(Flavor::MariaDb).unwrap(),
            agent_privileges(Flavor::MySql).unwrap(),
        );
        let g = agent_grant(Flavor::MariaDb, "dbfleet_agent", "localhost").unwrap();
        assert!(g.starts_with("GRANT RELOAD, PROCESS,"), "{g}");
        assert!(g.ends_with(" ON *.* TO 'dbfleet_agent'@'localhost'"), "{g}");
        for sweeping in ["ALL", "SUPER", "GRANT OPTION", "CREATE USER", "FILE"] {
            assert!(!mariadb.iter().any(|p| p.name == sweeping), "{sweeping}");
        }
        let mut names: Vec<&str> = mariadb.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), mariadb.len());
        let g = agent_grant(Flavor::MySql, "a", "localhost").unwrap();
        assert!(g.starts_with("GRANT RELOAD, PROCESS,"), "{g}");
        let mut names: Vec<&str> = mysql.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), mysql.len());
        for sweeping in ["ALL", "SUPER", "GRANT OPTION", "CREATE USER", "FILE"] {
            assert!(!mysql.iter().any(|p| p.name == sweeping), "{sweeping}");
        }
    }

    #[test]
    fn the_deploy_guide_grants_exactly_this_list() {
        let guide = include_str!("../../docs/deploy.md");
        for flavor in [Flavor::MariaDb, Flavor::MySql] {
            let grant = agent_grant(flavor, "dbfleet_agent", "localhost").unwrap();
            assert!(
                guide.contains(&format!("{grant};")),
                "docs/deploy.md must carry `{grant};`"
            );
        }
        for p in agent_privileges(Flavor::MySql).unwrap() {
            assert!(
                guide.contains(&format!("`{}`", p.name)),
                "{} is explained",
                p.name
            );
        }
        // Each is explained in the guide's table; the replay's data
        // privileges together, as one row.
        for p in agent_privileges(Flavor::MariaDb).unwrap() {
            let replay = p.needed_for.starts_with("point-in-time restores");
            assert!(
                guide.contains(&format!("`{}`", p.name)) || replay,
                "{} is explained in docs/deploy.md",
                p.name
            );
        }
    }

    #[test]
    fn missing_privileges_are_named_and_renamed_ones_count() {
        let mut held: Vec<String> = agent_privileges(Flavor::MariaDb)
            .unwrap()
            .iter()
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(missing(Flavor::MariaDb, &held), Some(vec![]));
        held.retain(|h| h != "CONNECTION ADMIN" && h != "SLAVE MONITOR");
        held.push("replica monitor".into());
        let gone = missing(Flavor::MariaDb, &held).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].name, "CONNECTION ADMIN");
        assert!(gone[0].needed_for.contains("fencing"));
    }
}
