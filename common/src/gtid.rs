//! MariaDB GTID positions (`domain-server-seq,...`) and the comparisons
//! failover and point-in-time recovery need. Under `gtid_strict_mode` sequence numbers grow across
//! the whole replication topology within a domain, so "has everything up
//! to" is a per-domain comparison of sequence numbers.

use std::collections::BTreeMap;
use std::fmt;

/// The last GTID of each replication domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(BTreeMap<u32, (u32, u64)>);

impl Position {
    /// Parses `0-1-42,1-3-7`; empty text is the empty position.
    pub fn parse(text: &str) -> Result<Position, String> {
        let mut map = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let (Some(d), Some(s), Some(n), None) = (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(format!(
                    "{part:?} is not a MariaDB GTID (domain-server-seq)"
                ));
            };
            let bad = |_| format!("{part:?} is not a MariaDB GTID (domain-server-seq)");
            let (d, s, n) = (
                d.parse::<u32>().map_err(bad)?,
                s.parse::<u32>().map_err(bad)?,
                n.parse::<u64>().map_err(bad)?,
            );
            map.insert(d, (s, n));
        }
        Ok(Position(map))
    }

    /// Notes GTID `domain-server-seq`, keeping the highest per domain.
    pub fn record(&mut self, domain: u32, server: u32, seq: u64) {
        let e = self.0.entry(domain).or_insert((server, seq));
        if seq >= e.1 {
            *e = (server, seq);
        }
    }

    /// The domains present.
    pub fn domains(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.keys().copied()
    }

    /// No domain at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sequence number reached in `domain` (0: none).
    pub fn seq(&self, domain: u32) -> u64 {
        self.0.get(&domain).map_or(0, |&(_, n)| n)
    }

    /// Has reached `other` in every domain of `other`.
    pub fn covers(&self, other: &Position) -> bool {
        other.0.keys().all(|d| self.seq(*d) >= other.seq(*d))
    }

    /// The further of the two in every domain.
    pub fn max(&self, other: &Position) -> Position {
        let mut out = self.0.clone();
        for (d, &(s, n)) in &other.0 {
            let e = out.entry(*d).or_insert((s, n));
            if n > e.1 {
                *e = (s, n);
            }
        }
        Position(out)
    }

    /// The nearer of the two in every domain; a domain one of them lacks
    /// is left out (neither has reached further than nothing in it).
    pub fn min(&self, other: &Position) -> Position {
        let mut out = BTreeMap::new();
        for (d, &(s, n)) in &self.0 {
            if let Some(&(s2, n2)) = other.0.get(d) {
                out.insert(*d, if n2 < n { (s2, n2) } else { (s, n) });
            }
        }
        Position(out)
    }

    /// Transactions this server wrote itself beyond what it replicated:
    /// a domain whose binlog position comes from `server_id` and is ahead
    /// of the replication position (`slave`).
    pub fn local_writes(binlog: &Position, slave: &Position, server_id: u32) -> Vec<String> {
        binlog
            .0
            .iter()
            .filter(|(d, (s, n))| *s == server_id && *n > slave.seq(**d))
            .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
            .collect()
    }

    /// Transactions of `self` past `fork` that `fork`'s history cannot
    /// hold: a domain beyond the fork point written by a server other
    /// than `new_primary_id` (whose own later writes are shared history).
    pub fn diverged_from(&self, fork: &Position, new_primary_id: u32) -> Vec<String> {
        self.0
            .iter()
            .filter(|(d, (s, n))| *n > fork.seq(**d) && *s != new_primary_id)
            .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
            .collect()
    }

    /// Transactions in `self` that `other` lacks, per domain, in total.
    pub fn missing_in(&self, other: &Position) -> u64 {
        self.0
            .keys()
            .map(|d| self.seq(*d).saturating_sub(other.seq(*d)))
            .sum()
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Position {
        Position::parse(s).unwrap()
    }

    #[test]
    fn parses_and_compares_per_domain() {
        assert_eq!(p(""), Position::default());
        assert_eq!(p("0-1-42,1-3-7").to_string(), "0-1-42,1-3-7");
        assert!(Position::parse("0-1").is_err() && Position::parse("a-1-2").is_err());
        assert!(p("0-2-10").covers(&p("0-1-9")));
        assert!(!p("0-2-10").covers(&p("0-1-9,1-1-1")));
        assert_eq!(p("0-1-5").max(&p("0-2-7,1-1-1")), p("0-2-7,1-1-1"));
        assert_eq!(p("0-1-9").missing_in(&p("0-1-5")), 4);
    }

    #[test]
    fn finds_local_writes_and_divergence() {
        // a replica that wrote 0-3-11 itself after replicating 0-1-10
        assert_eq!(
            Position::local_writes(&p("0-3-11"), &p("0-1-10"), 3),
            vec!["0-3-11"]
        );
        assert!(Position::local_writes(&p("0-1-10"), &p("0-1-10"), 3).is_empty());
        // the old primary wrote 0-1-12 after the new primary was promoted at 0-1-10
        assert_eq!(p("0-1-12").diverged_from(&p("0-1-10"), 2), vec!["0-1-12"]);
        assert!(p("0-1-10").diverged_from(&p("0-1-10"), 2).is_empty());
        assert!(p("0-2-14").diverged_from(&p("0-1-10"), 2).is_empty());
    }
}
