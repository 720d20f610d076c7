//! A server's GTID history for failover decisions, whichever the flavor:
//! MariaDB's per-domain positions or MySQL's GTID sets behind one set of
//! questions (has it everything, what does it lack, what did it write
//! that nobody else has), so choosing, repointing and rejoining never
//! branch on the flavor themselves.

use std::fmt;

use dbfleet_common::gtid::Position;
use dbfleet_common::gtid_set::GtidSet;
use dbfleet_proto::model::Flavor;

use super::journal::Frozen;

/// Transactions a server has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    /// MariaDB: the last GTID of each domain (strict mode orders them).
    MariaDb(Position),
    /// MySQL: the set of transactions.
    MySql(GtidSet),
}

impl Positions {
    /// Nothing yet.
    pub fn empty(flavor: Flavor) -> Positions {
        match flavor {
            Flavor::MariaDb => Positions::MariaDb(Position::default()),
            Flavor::MySql => Positions::MySql(GtidSet::default()),
        }
    }

    /// Reads a server's GTID text as its flavor writes it.
    pub fn parse(flavor: Flavor, text: &str) -> Result<Positions, String> {
        match flavor {
            Flavor::MariaDb => Position::parse(text).map(Positions::MariaDb),
            Flavor::MySql => GtidSet::parse(text)
                .map(Positions::MySql)
                .map_err(|e| e.to_string()),
        }
    }

    /// Has every transaction of `other`.
    pub fn covers(&self, other: &Positions) -> bool {
        match (self, other) {
            (Positions::MariaDb(a), Positions::MariaDb(b)) => a.covers(b),
            (Positions::MySql(a), Positions::MySql(b)) => b.is_subset_of(a),
            _ => false,
        }
    }

    /// Everything either has (per domain the further one on MariaDB).
    pub fn union(&self, other: &Positions) -> Positions {
        match (self, other) {
            (Positions::MariaDb(a), Positions::MariaDb(b)) => Positions::MariaDb(a.max(b)),
            (Positions::MySql(a), Positions::MySql(b)) => Positions::MySql(a.union(b)),
            (a, _) => a.clone(),
        }
    }

    /// How many transactions of `self` `other` lacks.
    pub fn missing_in(&self, other: &Positions) -> u64 {
        match (self, other) {
            (Positions::MariaDb(a), Positions::MariaDb(b)) => a.missing_in(b),
            (Positions::MySql(a), Positions::MySql(b)) => a.subtract(b).count(),
            (a, _) => a.count(),
        }
    }

    fn count(&self) -> u64 {
        match self {
            Positions::MariaDb(p) => p.missing_in(&Position::default()),
            Positions::MySql(s) => s.count(),
        }
    }
}

impl fmt::Display for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Positions::MariaDb(p) => p.fmt(f),
            Positions::MySql(s) => s.fmt(f),
        }
    }
}

/// Transactions a frozen replica wrote itself that cannot be part of the
/// primary's history, as text for an event; empty when none.
///
/// MariaDB: a domain whose binlog position comes from the replica's own
/// server_id beyond what it replicated. MySQL: transactions, under any
/// UUID, that no other server has (`elsewhere`: what the other members and
/// the old primary were last seen to hold), except the old primary's own
/// (`old_primary_uuid`): its last report may predate what this replica
/// received from it. Every other source's transactions were fixed in the
/// old primary when it was promoted, so any of them found here alone were
/// written here (a write on the replica, `SET gtid_next`, another channel,
/// data from elsewhere). Its writes from a time it was primary are on the
/// others and do not count.
pub fn errant(
    flavor: Flavor,
    f: &Frozen,
    elsewhere: &Positions,
    old_primary_uuid: &str,
) -> Result<Vec<String>, String> {
    match flavor {
        Flavor::MariaDb => {
            let binlog = Position::parse(&f.binlog_pos)?;
            let slave = Position::parse(&f.slave_pos)?;
            Ok(Position::local_writes(&binlog, &slave, f.server_id))
        }
        Flavor::MySql => {
            let executed = GtidSet::parse(&f.executed).map_err(|e| e.to_string())?;
            let Positions::MySql(elsewhere) = elsewhere else {
                return Err("the other members' GTIDs are not MySQL GTID sets".into());
            };
            let alone = executed
                .subtract(elsewhere)
                .subtract(&executed.from_source(old_primary_uuid));
            Ok(if alone.is_empty() {
                Vec::new()
            } else {
                vec![alone.to_string()]
            })
        }
    }
}

/// Transactions of a member that its new primary never had, so it cannot
/// rejoin; empty when none.
///
/// MariaDB: past the fork point (the new primary's position when it was
/// promoted) in a domain last written by another server. MySQL: anything
/// the primary has not got (`primary`: its last report), except its own
/// writes numbered above the highest it reported: since its promotion it
/// replicates from nobody, so every other source's transactions it has
/// are in any report of it as primary, while its own newest ones may
/// postdate that report (the member may have replicated them before it
/// stopped). A hole below that number is a transaction the primary lost
/// and may write again under the same GTID: divergence.
pub fn diverged(
    flavor: Flavor,
    member: &str,
    fork: Option<&str>,
    primary: &str,
    primary_id: (u32, &str),
) -> Result<Vec<String>, String> {
    let (primary_server_id, primary_uuid) = primary_id;
    match flavor {
        Flavor::MariaDb => {
            let Some(fork) = fork else {
                return Ok(Vec::new());
            };
            let fork = Position::parse(fork)?;
            Ok(Position::parse(member)?.diverged_from(&fork, primary_server_id))
        }
        Flavor::MySql => {
            if primary_uuid.is_empty() {
                return Err("the primary's server_uuid is unknown".into());
            }
            let member = GtidSet::parse(member).map_err(|e| e.to_string())?;
            let primary = GtidSet::parse(primary).map_err(|e| e.to_string())?;
            let newer = member
                .from_source(primary_uuid)
                .beyond(&primary.from_source(primary_uuid));
            let extra = member.subtract(&primary).subtract(&newer);
            Ok(if extra.is_empty() {
                Vec::new()
            } else {
                vec![extra.to_string()]
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "4e11fa47-71ca-11e1-9e33-c80aa9429562";

    fn mysql(text: &str) -> Positions {
        Positions::parse(Flavor::MySql, text).unwrap()
    }

    fn frozen(executed: &str, uuid: &str) -> Frozen {
        Frozen {
            executed: executed.into(),
            server_uuid: uuid.into(),
            ..Frozen::default()
        }
    }

    #[test]
    fn questions_are_answered_per_flavor() {
        let m = |t: &str| Positions::parse(Flavor::MariaDb, t).unwrap();
        assert!(m("0-1-10").covers(&m("0-2-9")));
        assert_eq!(m("0-1-10").missing_in(&m("0-1-7")), 3);
        // MySQL has no order: a hole means a missing transaction.
        let full = mysql(&format!("{A}:1-10"));
        let holed = mysql(&format!("{A}:1-4:6-10"));
        assert!(full.covers(&holed) && !holed.covers(&full));
        assert_eq!(full.missing_in(&holed), 1);
        assert_eq!(
            holed.union(&mysql(&format!("{A}:5,{B}:1"))).to_string(),
            format!("{A}:1-10,{B}:1")
        );
        assert!(!full.covers(&Positions::empty(Flavor::MariaDb)));
        assert!(Positions::parse(Flavor::MySql, "0-1-10").is_err());
    }

    #[test]
    fn mysql_errant_is_what_nobody_else_has_but_the_old_primarys_own() {
        const C: &str = "5e11fa47-71ca-11e1-9e33-c80aa9429562";
        // A is the old primary. B wrote B:1 as a replica: nobody has it.
        let f = frozen(&format!("{A}:1-10,\n{B}:1"), B);
        let others = mysql(&format!("{A}:1-10"));
        assert_eq!(
            errant(Flavor::MySql, &f, &others, A).unwrap(),
            vec![format!("{B}:1")]
        );
        // B:1 came from its time as primary: the others have it.
        let others = mysql(&format!("{A}:1-10,{B}:1"));
        assert!(errant(Flavor::MySql, &f, &others, A).unwrap().is_empty());
        // A:11-12 it alone received from the old primary, past A's last
        // report: the most advanced replica, not an errant one.
        let f = frozen(&format!("{A}:1-12"), B);
        assert!(
            errant(Flavor::MySql, &f, &mysql(&format!("{A}:1-3")), A)
                .unwrap()
                .is_empty()
        );
        // Under a UUID neither its own nor the old primary's (SET
        // gtid_next, another channel, data from elsewhere): errant.
        let f = frozen(&format!("{A}:1-10,{C}:5"), B);
        assert_eq!(
            errant(Flavor::MySql, &f, &mysql(&format!("{A}:1-10")), A).unwrap(),
            vec![format!("{C}:5")]
        );
        // With the old primary unknown, nothing it alone has is excused.
        let f = frozen(&format!("{A}:1-12"), B);
        assert_eq!(
            errant(Flavor::MySql, &f, &mysql(&format!("{A}:1-10")), "").unwrap(),
            vec![format!("{A}:11-12")]
        );
        // A MariaDB position in a MySQL cluster is an error, not a verdict.
        assert!(errant(Flavor::MySql, &frozen("0-1-5", B), &others, A).is_err());
    }

    #[test]
    fn mariadb_errant_is_its_own_domain_writes() {
        let f = Frozen {
            binlog_pos: "0-3-11".into(),
            slave_pos: "0-1-10".into(),
            server_id: 3,
            ..Frozen::default()
        };
        let none = Positions::empty(Flavor::MariaDb);
        assert_eq!(
            errant(Flavor::MariaDb, &f, &none, "").unwrap(),
            vec!["0-3-11"]
        );
    }

    #[test]
    fn divergence_is_what_the_primary_lacks() {
        // A (the old primary) wrote 11-12 that B (the new one) never got.
        let old = format!("{A}:1-12");
        let b_has = format!("{A}:1-10,{B}:1-5");
        assert_eq!(
            diverged(Flavor::MySql, &old, None, &b_has, (2, B)).unwrap(),
            vec![format!("{A}:11-12")]
        );
        let caught_up = format!("{A}:1-10");
        assert!(
            diverged(Flavor::MySql, &caught_up, None, &b_has, (2, B))
                .unwrap()
                .is_empty()
        );
        // The member replicated B:6 after the primary's last report: the
        // primary's own writes are never divergence.
        let newer = format!("{A}:1-10,{B}:1-6");
        assert!(
            diverged(Flavor::MySql, &newer, None, &b_has, (2, B))
                .unwrap()
                .is_empty()
        );
        // A hole below the primary's last is a transaction it lost and may
        // write again under that GTID: divergence.
        let holed_primary = format!("{A}:1-10,{B}:1-2:4-5");
        let member = format!("{A}:1-10,{B}:1-5");
        assert_eq!(
            diverged(Flavor::MySql, &member, None, &holed_primary, (2, B)).unwrap(),
            vec![format!("{B}:3")]
        );
        assert!(diverged(Flavor::MySql, &old, None, &old, (2, "")).is_err());
        assert_eq!(
            diverged(Flavor::MariaDb, "0-1-12", Some("0-1-10"), "0-2-14", (2, "")).unwrap(),
            vec!["0-1-12"]
        );
        assert!(
            diverged(Flavor::MariaDb, "0-1-12", None, "0-2-14", (2, ""))
                .unwrap()
                .is_empty()
        );
    }
}
