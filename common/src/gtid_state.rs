//! A server's GTID state in its own flavor's terms, for the code that
//! handles both without caring which: the binlog archive's chunk metas,
//! point-in-time recovery's plan and stop, and retention's pruning.
//!
//! MariaDB's state is a [`Position`] (the last GTID per domain, ordered by
//! sequence number); MySQL's a [`GtidSet`] (every transaction, as
//! intervals per source). The questions point-in-time recovery asks are
//! the same for both: "does this state hold everything that one does"
//! ([`GtidState::covers`]) and "what do the two hold together"
//! ([`GtidState::merge`]). States of different flavors never cover each
//! other (except an empty one, which holds nothing): a MariaDB archive
//! cannot continue a MySQL backup.

use std::fmt;

use crate::gtid::Position;
use crate::gtid_set::GtidSet;

/// A GTID state of either flavor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtidState {
    /// `domain-server-seq,...`.
    MariaDb(Position),
    /// `uuid:1-5,...`.
    MySql(GtidSet),
}

impl Default for GtidState {
    /// The empty state (of no flavor in particular: it holds nothing).
    fn default() -> Self {
        GtidState::MariaDb(Position::default())
    }
}

impl GtidState {
    /// Reads text of either flavor: a MySQL set always has a colon after
    /// its UUID, a MariaDB position never has one. Empty text is the empty
    /// state.
    pub fn parse(text: &str) -> Result<GtidState, String> {
        if text.contains(':') {
            GtidSet::parse(text)
                .map(GtidState::MySql)
                .map_err(|e| e.to_string())
        } else {
            Position::parse(text).map(GtidState::MariaDb)
        }
    }

    /// The empty state of the flavor `like` is of.
    pub fn empty_like(like: &GtidState) -> GtidState {
        match like {
            GtidState::MariaDb(_) => GtidState::MariaDb(Position::default()),
            GtidState::MySql(_) => GtidState::MySql(GtidSet::default()),
        }
    }

    /// Holds no transaction.
    pub fn is_empty(&self) -> bool {
        match self {
            GtidState::MariaDb(p) => p.is_empty(),
            GtidState::MySql(s) => s.is_empty(),
        }
    }

    /// MySQL's state.
    pub fn is_mysql(&self) -> bool {
        matches!(self, GtidState::MySql(_))
    }

    /// Holds everything `other` holds: every domain at least as far
    /// (MariaDB), a superset (MySQL).
    pub fn covers(&self, other: &GtidState) -> bool {
        match (self, other) {
            (_, o) if o.is_empty() => true,
            (GtidState::MariaDb(a), GtidState::MariaDb(b)) => a.covers(b),
            (GtidState::MySql(a), GtidState::MySql(b)) => b.is_subset_of(a),
            _ => false,
        }
    }

    /// What both hold: the nearer per domain (MariaDB; a domain one lacks
    /// is left out), the intersection (MySQL). `None` for two non-empty
    /// states of different flavors, which have nothing in common. What
    /// every kept backup holds is where retention may prune the archive
    /// up to.
    pub fn common(&self, other: &GtidState) -> Option<GtidState> {
        match (self, other) {
            (GtidState::MariaDb(a), GtidState::MariaDb(b)) => Some(GtidState::MariaDb(a.min(b))),
            (GtidState::MySql(a), GtidState::MySql(b)) => Some(GtidState::MySql(a.intersection(b))),
            (a, b) if a.is_empty() || b.is_empty() => Some(GtidState::default()),
            _ => None,
        }
    }

    /// What the two hold together: the further per domain (MariaDB), the
    /// union (MySQL). An empty state takes the other's flavor; of two
    /// non-empty states of different flavors, `self` is kept.
    pub fn merge(&self, other: &GtidState) -> GtidState {
        match (self, other) {
            (a, o) if o.is_empty() => a.clone(),
            (s, b) if s.is_empty() => b.clone(),
            (GtidState::MariaDb(a), GtidState::MariaDb(b)) => GtidState::MariaDb(a.max(b)),
            (GtidState::MySql(a), GtidState::MySql(b)) => GtidState::MySql(a.union(b)),
            (a, _) => a.clone(),
        }
    }
}

/// One transaction's GTID, as a binlog's GTID event names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gtid {
    /// `domain-server-seq`.
    MariaDb {
        /// Replication domain.
        domain: u32,
        /// Server id of the server that wrote it first.
        server: u32,
        /// Sequence number.
        seq: u64,
    },
    /// `uuid:number` (untagged).
    MySql {
        /// `server_uuid` of the server that wrote it first, lower case.
        uuid: String,
        /// Transaction number.
        number: u64,
    },
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtid::MariaDb {
                domain,
                server,
                seq,
            } => write!(f, "{domain}-{server}-{seq}"),
            Gtid::MySql { uuid, number } => write!(f, "{uuid}:{number}"),
        }
    }
}

impl GtidState {
    /// Whether the state holds transaction `g`: at or below its domain's
    /// position (MariaDB), in the set (MySQL).
    pub fn holds(&self, g: &Gtid) -> bool {
        match (self, g) {
            (GtidState::MariaDb(p), Gtid::MariaDb { domain, seq, .. }) => *seq <= p.seq(*domain),
            (GtidState::MySql(s), Gtid::MySql { uuid, number }) => s.contains(uuid, "", *number),
            _ => false,
        }
    }

    /// Adds transaction `g`; an empty state takes its flavor, a state of
    /// the other flavor is left as it is.
    pub fn record(&mut self, g: &Gtid) {
        if self.is_empty() {
            *self = match g {
                Gtid::MariaDb { .. } => GtidState::MariaDb(Position::default()),
                Gtid::MySql { .. } => GtidState::MySql(GtidSet::default()),
            };
        }
        match (self, g) {
            (
                GtidState::MariaDb(p),
                Gtid::MariaDb {
                    domain,
                    server,
                    seq,
                },
            ) => p.record(*domain, *server, *seq),
            (GtidState::MySql(s), Gtid::MySql { uuid, number }) => {
                s.insert_range(uuid, "", *number, *number)
            }
            _ => {}
        }
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GtidState::MariaDb(p) => p.fmt(f),
            GtidState::MySql(s) => s.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

    fn g(text: &str) -> GtidState {
        GtidState::parse(&text.replace('U', U)).unwrap()
    }

    #[test]
    fn either_flavor_is_read_and_printed_back() {
        assert!(matches!(g("0-1-5,1-2-3"), GtidState::MariaDb(_)));
        assert!(g("U:1-5").is_mysql());
        assert_eq!(g("0-1-5").to_string(), "0-1-5");
        assert_eq!(g("U:1-5:7").to_string(), format!("{U}:1-5:7"));
        assert!(g("").is_empty());
        let e = GtidState::parse("0-1").unwrap_err();
        assert!(e.contains("not a MariaDB GTID"), "{e}");
        let e = GtidState::parse("nonsense:1").unwrap_err();
        assert!(e.contains("not a server UUID"), "{e}");
    }

    #[test]
    fn covering_is_per_domain_on_mariadb_and_a_superset_on_mysql() {
        let cases = [
            ("0-1-5", "0-1-5", true),
            ("0-1-5", "0-2-4", true),
            ("0-1-5", "0-1-6", false),
            ("0-1-5", "1-1-1", false),
            ("U:1-5", "U:2-3", true),
            ("U:1-5", "U:1-6", false),
            // a hole is not covered, however high the rest goes
            ("U:1-3:5-9", "U:4", false),
            ("U:1-5", "", true),
            ("0-1-5", "", true),
            ("", "", true),
            ("", "U:1", false),
            ("U:1-5", "0-1-1", false),
            ("0-1-5", "U:1", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(g(a).covers(&g(b)), want, "{a} covers {b}");
        }
    }

    #[test]
    fn merging_takes_the_further_or_the_union() {
        let cases = [
            ("0-1-5", "0-2-7,1-1-1", "0-2-7,1-1-1"),
            ("U:1-3", "U:5", "U:1-3:5"),
            ("", "U:5", "U:5"),
            ("U:5", "", "U:5"),
            ("0-1-1", "U:5", "0-1-1"),
        ];
        for (a, b, want) in cases {
            assert_eq!(g(a).merge(&g(b)), g(want), "{a} + {b}");
        }
        assert!(GtidState::empty_like(&g("U:1")).is_mysql());
        assert!(!GtidState::empty_like(&g("0-1-1")).is_mysql());
    }

    #[test]
    fn what_both_hold_is_the_nearer_or_the_intersection() {
        let cases = [
            ("0-1-5,1-1-9", "0-2-7", Some("0-1-5")),
            ("U:1-10", "U:5-20", Some("U:5-10")),
            ("U:1-3:7", "U:2-8", Some("U:2-3:7")),
            ("", "U:5", Some("")),
            ("0-1-1", "U:5", None),
        ];
        for (a, b, want) in cases {
            assert_eq!(g(a).common(&g(b)), want.map(g), "{a} and {b}");
        }
    }

    #[test]
    fn single_transactions_are_held_and_recorded() {
        let mariadb = |seq| Gtid::MariaDb {
            domain: 0,
            server: 2,
            seq,
        };
        let mysql = |number| Gtid::MySql {
            uuid: U.to_string(),
            number,
        };
        assert!(g("0-1-5").holds(&mariadb(5)) && !g("0-1-5").holds(&mariadb(6)));
        assert!(g("U:1-3:5").holds(&mysql(5)) && !g("U:1-3:5").holds(&mysql(4)));
        assert!(!g("0-1-5").holds(&mysql(1)) && !g("U:1-5").holds(&mariadb(1)));
        let mut state = GtidState::default();
        state.record(&mysql(4));
        state.record(&mysql(2));
        state.record(&mysql(3));
        assert_eq!(state, g("U:2-4"));
        state.record(&mariadb(9));
        assert_eq!(state, g("U:2-4"), "another flavor's GTID is not recorded");
        let mut state = GtidState::default();
        state.record(&mariadb(9));
        state.record(&mariadb(7));
        assert_eq!(state.to_string(), "0-2-9");
        assert_eq!(mysql(4).to_string(), format!("{U}:4"));
        assert_eq!(mariadb(4).to_string(), "0-2-4");
        assert!(!GtidState::empty_like(&g("0-1-1")).is_mysql());
    }
}
