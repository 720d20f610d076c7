//! Choosing the new primary, free of I/O: from the frozen replicas'
//! positions, the promotion rules and who is unreachable.

use super::gtid::Position;
use super::journal::{Frozen, PromotionRule};

/// One member other than the old primary.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    /// Host.
    pub host: &'a str,
    /// Its rule.
    pub rule: PromotionRule,
    /// Its positions, when it was frozen (reachable).
    pub frozen: Option<&'a Frozen>,
    /// It acknowledges semi-sync commits (as last seen).
    pub semi_sync_replica: bool,
    /// Marked for rebuild.
    pub needs_rebuild: bool,
    /// Its agent reports that `[mysql] address` does not reach its server:
    /// replicas pointed there would replicate from the wrong place.
    pub address_mismatch: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The new primary.
    pub candidate: String,
    /// Catch it up from this replica first (it lacks received transactions).
    pub catch_up_from: Option<String>,
    /// Every transaction any reachable replica received.
    pub required: String,
    /// Why, for the event history.
    pub evidence: Vec<String>,
}

/// Why nobody can be promoted.
pub type Blocked = String;

/// The inputs besides the members.
#[derive(Debug, Clone, Copy)]
pub struct Constraints<'a> {
    /// The operator's choice.
    pub requested_to: Option<&'a str>,
    /// Accept losing writes an unreachable replica may hold.
    pub allow_data_loss: bool,
    /// The old primary ran lossless semi-sync: only semi-sync replicas can
    /// hold an acknowledged write.
    pub lossless: bool,
}

fn positions(f: &Frozen) -> Result<(Position, Position), String> {
    let executed = Position::parse(&f.executed)?;
    let received = Position::parse(&f.received)?;
    Ok((executed.clone(), executed.max(&received)))
}

/// Picks the candidate: no errant transactions, not `never`, caught up to
/// everything any replica received; then `prefer` before `neutral`, then
/// the least behind, then by name.
pub fn choose(members: &[Member<'_>], c: Constraints<'_>) -> Result<Choice, Blocked> {
    let mut evidence = Vec::new();
    let unreachable: Vec<&str> = members
        .iter()
        .filter(|m| m.frozen.is_none() && !m.needs_rebuild)
        .filter(|m| !c.lossless || m.semi_sync_replica)
        .map(|m| m.host)
        .collect();
    if !unreachable.is_empty() {
        let what = format!(
            "unreachable replica(s) {} may hold the last acknowledged writes",
            unreachable.join(", ")
        );
        if !c.allow_data_loss {
            return Err(format!(
                "{what}; bring them back, or pass --allow-data-loss to promote without them"
            ));
        }
        evidence.push(format!("{what}; proceeding with --allow-data-loss"));
    }
    let mut required = Position::default();
    let mut usable = Vec::new();
    for m in members {
        let Some(f) = m.frozen else { continue };
        let (executed, has) = positions(f).map_err(|e| format!("{}: {e}", m.host))?;
        let binlog = Position::parse(&f.binlog_pos).map_err(|e| format!("{}: {e}", m.host))?;
        let slave = Position::parse(&f.slave_pos).map_err(|e| format!("{}: {e}", m.host))?;
        let errant = Position::local_writes(&binlog, &slave, f.server_id);
        if !errant.is_empty() {
            // What it received from the primary still counts; its own
            // writes do not.
            let received = Position::parse(&f.received).map_err(|e| format!("{}: {e}", m.host))?;
            required = required.max(&received);
            evidence.push(format!(
                "{}: errant transactions {} (never on the primary): not a candidate",
                m.host,
                errant.join(",")
            ));
            continue;
        }
        required = required.max(&has);
        usable.push((m, executed, has));
    }
    let eligible: Vec<&(&Member<'_>, Position, Position)> = usable
        .iter()
        .filter(|(m, _, _)| {
            if m.address_mismatch {
                evidence.push(format!(
                    "{}: excluded (its [mysql] address does not reach its server: mysql-address-mismatch)",
                    m.host
                ));
                return false;
            }
            let ok = m.rule != PromotionRule::Never
                && !m.needs_rebuild
                && m.frozen.is_some_and(|f| f.applier_error.is_empty());
            if !ok {
                evidence.push(format!(
                    "{}: excluded (rule {}, rebuild {}, applier {:?})",
                    m.host,
                    m.rule.as_str(),
                    m.needs_rebuild,
                    m.frozen.map(|f| f.applier_error.as_str()).unwrap_or("")
                ));
            }
            ok
        })
        .collect();
    let chosen = match c.requested_to {
        Some(want) => *eligible.iter().find(|(m, _, _)| m.host == want).ok_or_else(|| {
            format!("{want} cannot be promoted (unreachable, errant, marked never or for rebuild, its address mismatched, or not a member)")
        })?,
        None => *eligible
            .iter()
            .min_by_key(|(m, executed, _)| (m.rule, required.missing_in(executed), m.host))
            .ok_or_else(|| {
                "no replica can be promoted: every reachable one is errant, marked never or for rebuild, or stopped on an error".to_string()
            })?,
    };
    let (m, executed, _) = chosen;
    let catch_up_from = if executed.covers(&required) {
        None
    } else {
        // The candidate replicates from the source's address: never one
        // that does not reach its server.
        let source = usable
            .iter()
            .find(|(m, e, _)| e.covers(&required) && !m.address_mismatch)
            .map(|(m, _, _)| m.host.to_string())
            .ok_or_else(|| {
                let only_mismatched: Vec<&str> = usable
                    .iter()
                    .filter(|(m, e, _)| e.covers(&required) && m.address_mismatch)
                    .map(|(m, _, _)| m.host)
                    .collect();
                if only_mismatched.is_empty() {
                    format!(
                        "no reachable replica has applied every received transaction ({})",
                        position_words(&required.to_string())
                    )
                } else {
                    format!(
                        "only {} applied every received transaction ({}), and its address does not reach its server (mysql-address-mismatch): fix its agent's [mysql] address",
                        only_mismatched.join(", "),
                        position_words(&required.to_string())
                    )
                }
            })?;
        evidence.push(format!(
            "{} lacks {} transactions: catching up from {source} first",
            m.host,
            required.missing_in(executed)
        ));
        Some(source)
    };
    evidence.push(format!(
        "{} chosen (rule {}, at {}, required {})",
        m.host,
        m.rule.as_str(),
        position_words(&executed.to_string()),
        position_words(&required.to_string())
    ));
    Ok(Choice {
        candidate: m.host.to_string(),
        catch_up_from,
        required: required.to_string(),
        evidence,
    })
}

/// A GTID position for a sentence: an empty one (no transaction was ever
/// replicated) in words rather than as nothing.
fn position_words(position: &str) -> &str {
    if position.is_empty() {
        "no GTID yet"
    } else {
        position
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_position_reads_as_words() {
        assert_eq!(position_words(""), "no GTID yet");
        assert_eq!(position_words("0-1-5"), "0-1-5");
    }

    fn frozen(executed: &str, received: &str, binlog: &str, slave: &str, id: u32) -> Frozen {
        Frozen {
            executed: executed.into(),
            received: received.into(),
            binlog_pos: binlog.into(),
            slave_pos: slave.into(),
            server_id: id,
            applier_error: String::new(),
        }
    }

    fn member<'a>(host: &'a str, rule: PromotionRule, f: Option<&'a Frozen>) -> Member<'a> {
        Member {
            host,
            rule,
            frozen: f,
            semi_sync_replica: true,
            needs_rebuild: false,
            address_mismatch: false,
        }
    }

    const FREE: Constraints<'static> = Constraints {
        requested_to: None,
        allow_data_loss: false,
        lossless: true,
    };

    #[test]
    fn a_member_whose_address_does_not_reach_it_is_never_chosen() {
        let ahead = frozen("0-1-12", "0-1-12", "0-1-12", "0-1-12", 2);
        let behind = frozen("0-1-10", "0-1-10", "0-1-10", "0-1-10", 3);
        let level = frozen("0-1-12", "0-1-12", "0-1-12", "0-1-12", 4);
        let mut db2 = member("db2", PromotionRule::Prefer, Some(&ahead));
        db2.address_mismatch = true;
        let db3 = member("db3", PromotionRule::Neutral, Some(&behind));
        let db4 = member("db4", PromotionRule::Neutral, Some(&level));
        let c = choose(&[db2.clone(), db3.clone(), db4], FREE).unwrap();
        assert_eq!(c.candidate, "db4");
        assert!(
            c.evidence
                .iter()
                .any(|e| e.contains("mysql-address-mismatch")),
            "{:?}",
            c.evidence
        );
        // Nor is it where a candidate catches up from: with only db2
        // holding everything received, the failover waits for the fix.
        let e = choose(&[db2.clone(), db3.clone()], FREE).unwrap_err();
        assert!(
            e.contains("only db2") && e.contains("mysql-address-mismatch"),
            "{e}"
        );
        let asked = Constraints {
            requested_to: Some("db2"),
            ..FREE
        };
        let e = choose(&[db2, db3], asked).unwrap_err();
        assert!(e.contains("address mismatched"), "{e}");
    }

    #[test]
    fn an_errant_replica_is_never_chosen_even_when_preferred() {
        let errant = frozen("0-3-11", "0-1-10", "0-3-11", "0-1-10", 3);
        let clean = frozen("0-1-10", "0-1-10", "0-1-10", "0-1-10", 2);
        let m = [
            member("db2", PromotionRule::Neutral, Some(&clean)),
            member("db3", PromotionRule::Prefer, Some(&errant)),
        ];
        let c = choose(&m, FREE).unwrap();
        assert_eq!(c.candidate, "db2");
        assert!(c.evidence.iter().any(|e| e.contains("errant")));
        let forced = choose(
            &m,
            Constraints {
                requested_to: Some("db3"),
                ..FREE
            },
        );
        assert!(forced.is_err());
    }

    #[test]
    fn a_lagging_preferred_candidate_catches_up_from_the_most_advanced() {
        let behind = frozen("0-1-8", "0-1-8", "0-1-8", "0-1-8", 2);
        let ahead = frozen("0-1-10", "0-1-10", "0-1-10", "0-1-10", 3);
        let m = [
            member("db2", PromotionRule::Prefer, Some(&behind)),
            member("db3", PromotionRule::Never, Some(&ahead)),
        ];
        let c = choose(&m, FREE).unwrap();
        assert_eq!(c.candidate, "db2");
        assert_eq!(c.catch_up_from.as_deref(), Some("db3"));
        assert_eq!(c.required, "0-1-10");
    }

    #[test]
    fn least_lag_wins_among_equals_and_unreachable_semi_sync_replicas_block() {
        let behind = frozen("0-1-8", "0-1-8", "0-1-8", "0-1-8", 2);
        let ahead = frozen("0-1-10", "0-1-10", "0-1-10", "0-1-10", 3);
        let m = [
            member("db2", PromotionRule::Neutral, Some(&behind)),
            member("db3", PromotionRule::Neutral, Some(&ahead)),
        ];
        assert_eq!(choose(&m, FREE).unwrap().candidate, "db3");
        let m = [
            member("db2", PromotionRule::Neutral, Some(&ahead)),
            member("db3", PromotionRule::Neutral, None),
        ];
        let e = choose(&m, FREE).unwrap_err();
        assert!(e.contains("--allow-data-loss"), "{e}");
        let ok = choose(
            &m,
            Constraints {
                allow_data_loss: true,
                ..FREE
            },
        )
        .unwrap();
        assert_eq!(ok.candidate, "db2");
        // with lossless semi-sync an unreachable async replica cannot hold an acked write
        let mut async_only = member("db3", PromotionRule::Neutral, None);
        async_only.semi_sync_replica = false;
        let m = [
            member("db2", PromotionRule::Neutral, Some(&ahead)),
            async_only,
        ];
        assert_eq!(choose(&m, FREE).unwrap().candidate, "db2");
    }

    #[test]
    fn received_but_unapplied_counts_as_required() {
        let applied = frozen("0-1-9", "0-1-9", "0-1-9", "0-1-9", 2);
        let stuck = Frozen {
            applier_error: "Duplicate entry".into(),
            ..frozen("0-1-8", "0-1-10", "0-1-8", "0-1-8", 3)
        };
        let m = [
            member("db2", PromotionRule::Neutral, Some(&applied)),
            member("db3", PromotionRule::Neutral, Some(&stuck)),
        ];
        let e = choose(&m, FREE).unwrap_err();
        assert!(e.contains("0-1-10"), "{e}");
    }
}
