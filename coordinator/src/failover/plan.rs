//! Choosing the new primary, free of I/O: from the frozen replicas'
//! positions, the promotion rules and who is unreachable.

use dbfleet_proto::model::Flavor;

use super::journal::{Frozen, PromotionRule};
use super::positions::{Positions, errant};

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
    /// Left behind by the last failover and not rejoined (see
    /// `ClusterControl::rejoining`): its divergence check has not run, so
    /// it is never a candidate (what it received still counts).
    pub left_behind: bool,
    /// Left behind and provably apart from the old primary
    /// (`ClusterControl::apart`): it holds none of its writes, so it is
    /// not waited for either.
    pub apart: bool,
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
    /// The cluster's flavor.
    pub flavor: Flavor,
    /// What the old primary was last seen to have executed (MySQL tells
    /// a replica's errant writes from its writes as an earlier primary by
    /// it); empty when unknown.
    pub old_primary_executed: &'a str,
    /// The old primary's server_uuid (MySQL: its transactions beyond its
    /// last report are not errant); empty when unknown.
    pub old_primary_uuid: &'a str,
}

fn positions(flavor: Flavor, f: &Frozen) -> Result<(Positions, Positions), String> {
    let executed = Positions::parse(flavor, &f.executed)?;
    let received = Positions::parse(flavor, &f.received)?;
    Ok((executed.clone(), executed.union(&received)))
}

/// What every server but `host` was last seen to hold: the other frozen
/// members and the old primary.
fn elsewhere(members: &[Member<'_>], host: &str, c: &Constraints<'_>) -> Result<Positions, String> {
    let mut all = Positions::parse(c.flavor, c.old_primary_executed)
        .unwrap_or_else(|_| Positions::empty(c.flavor));
    for m in members.iter().filter(|m| m.host != host) {
        if let Some(f) = m.frozen {
            let (_, has) = positions(c.flavor, f).map_err(|e| format!("{}: {e}", m.host))?;
            all = all.union(&has);
        }
    }
    Ok(all)
}

/// Picks the candidate: no errant transactions, not `never`, caught up to
/// everything any replica received; then `prefer` before `neutral`, then
/// the least behind, then by name.
pub fn choose(members: &[Member<'_>], c: Constraints<'_>) -> Result<Choice, Blocked> {
    let mut evidence = Vec::new();
    let (apart, kept): (Vec<&Member<'_>>, Vec<&Member<'_>>) = members.iter().partition(|m| m.apart);
    for m in apart {
        evidence.push(format!(
            "{}: left behind by the last operation and not rejoined, and apart from the old primary (unlisted by it, not shown following it): it holds none of its writes and is neither waited for nor promoted",
            m.host
        ));
    }
    let members: Vec<Member<'_>> = kept.into_iter().cloned().collect();
    let members = members.as_slice();
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
    let mut required = Positions::empty(c.flavor);
    let mut usable = Vec::new();
    for m in members {
        let Some(f) = m.frozen else { continue };
        let (executed, has) = positions(c.flavor, f).map_err(|e| format!("{}: {e}", m.host))?;
        let others = elsewhere(members, m.host, &c)?;
        let errant = errant(c.flavor, f, &others, c.old_primary_uuid)
            .map_err(|e| format!("{}: {e}", m.host))?;
        if !errant.is_empty() {
            // What it received from the primary still counts; its own
            // writes do not.
            let received =
                Positions::parse(c.flavor, &f.received).map_err(|e| format!("{}: {e}", m.host))?;
            required = required.union(&received);
            evidence.push(format!(
                "{}: errant transactions {} (never on the primary): not a candidate",
                m.host,
                errant.join(",")
            ));
            continue;
        }
        required = required.union(&has);
        usable.push((m, executed, has));
    }
    let eligible: Vec<&(&Member<'_>, Positions, Positions)> = usable
        .iter()
        .filter(|(m, _, _)| {
            if m.left_behind {
                evidence.push(format!(
                    "{}: excluded (left behind by the last failover; not a candidate until its divergence check has run)",
                    m.host
                ));
                return false;
            }
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
            server_uuid: String::new(),
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
            left_behind: false,
            apart: false,
        }
    }

    #[test]
    fn a_member_left_behind_by_the_last_failover_is_neither_waited_for_nor_promoted() {
        // db1 failed earlier and came back fenced; db2 took over and died:
        // db1 is unreachable (its mysqld still starting), or reachable and
        // marked prefer, with the old writes of its time as primary
        let db1f = frozen("0-1-30", "", "0-1-30", "", 1);
        let db3f = frozen("0-2-12", "0-2-12", "0-2-12", "0-2-12", 3);
        let left_behind = |f| Member {
            left_behind: true,
            apart: true,
            ..member("db1", PromotionRule::Prefer, f)
        };
        for db1 in [left_behind(None), left_behind(Some(&db1f))] {
            let members = [db1, member("db3", PromotionRule::Neutral, Some(&db3f))];
            let c = choose(&members, FREE).unwrap();
            assert_eq!(c.candidate, "db3");
            assert_eq!(c.catch_up_from, None);
            assert!(
                c.evidence.iter().any(|e| e.contains("db1: left behind")),
                "{:?}",
                c.evidence
            );
        }
        // asked for by name, it is refused as not promotable
        let members = [
            left_behind(Some(&db1f)),
            member("db3", PromotionRule::Neutral, Some(&db3f)),
        ];
        let asked = Constraints {
            requested_to: Some("db1"),
            ..FREE
        };
        assert!(choose(&members, asked).is_err());
        // marked but not proven apart: waited for when unreachable, never
        // the candidate when reachable, though what it received counts
        let marked = |f| Member {
            left_behind: true,
            ..member("db1", PromotionRule::Prefer, f)
        };
        let members = [
            marked(None),
            member("db3", PromotionRule::Neutral, Some(&db3f)),
        ];
        let e = choose(&members, FREE).unwrap_err();
        assert!(e.contains("unreachable replica(s) db1"), "{e}");
        let ahead = frozen("0-2-13", "0-2-13", "0-2-13", "0-2-13", 1);
        let members = [
            marked(Some(&ahead)),
            member("db3", PromotionRule::Neutral, Some(&db3f)),
        ];
        let c = choose(&members, FREE).unwrap();
        assert_eq!(c.candidate, "db3");
        assert_eq!(c.catch_up_from.as_deref(), Some("db1"));
        assert!(
            c.evidence
                .iter()
                .any(|e| e.contains("db1: excluded (left behind")),
            "{:?}",
            c.evidence
        );
    }

    const FREE: Constraints<'static> = Constraints {
        requested_to: None,
        allow_data_loss: false,
        lossless: true,
        flavor: Flavor::MariaDb,
        old_primary_executed: "",
        old_primary_uuid: "",
    };

    const P: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const R2: &str = "aaaaaaaa-0000-0000-0000-000000000002";
    const R3: &str = "aaaaaaaa-0000-0000-0000-000000000003";

    fn mysql_frozen(executed: &str, received: &str, uuid: &str) -> Frozen {
        Frozen {
            executed: executed.into(),
            received: received.into(),
            server_uuid: uuid.into(),
            ..Frozen::default()
        }
    }

    fn mysql<'a>(old_primary_executed: &'a str) -> Constraints<'a> {
        Constraints {
            flavor: Flavor::MySql,
            old_primary_executed,
            old_primary_uuid: P,
            ..FREE
        }
    }

    #[test]
    fn mysql_candidates_are_compared_as_gtid_sets() {
        let old = format!("{P}:1-20");
        // Frozen replicas have applied what they received: db2 is furthest.
        let db2f = mysql_frozen(&format!("{P}:1-20"), &format!("{P}:1-20"), R2);
        let db3f = mysql_frozen(&format!("{P}:1-19"), &format!("{P}:1-19"), R3);
        let members = [
            member("db2", PromotionRule::Neutral, Some(&db2f)),
            member("db3", PromotionRule::Neutral, Some(&db3f)),
        ];
        let c = choose(&members, mysql(&old)).unwrap();
        assert_eq!(c.candidate, "db2");
        assert_eq!(c.required, format!("{P}:1-20"));
        assert_eq!(c.catch_up_from, None);
        // The preferred db2 lacks 11-12: it catches up from db3, which has
        // all; db4 is past 12 too but lacks 5 (a hole is a missing
        // transaction), so it is no source.
        let db2f = mysql_frozen(&format!("{P}:1-10"), "", R2);
        let db3f = mysql_frozen(&format!("{P}:1-12"), "", R3);
        let db4f = mysql_frozen(&format!("{P}:1-4:6-12"), "", P);
        let members = [
            member("db4", PromotionRule::Neutral, Some(&db4f)),
            member("db2", PromotionRule::Prefer, Some(&db2f)),
            member("db3", PromotionRule::Neutral, Some(&db3f)),
        ];
        let c = choose(&members, mysql(&old)).unwrap();
        assert_eq!(c.candidate, "db2");
        assert_eq!(c.required, format!("{P}:1-12"));
        assert_eq!(c.catch_up_from.as_deref(), Some("db3"));
        assert!(
            c.evidence
                .iter()
                .any(|e| e.contains("lacks 2 transactions")),
            "{:?}",
            c.evidence
        );
        // Without db3 nobody has every transaction: refused, naming them.
        let e = choose(&[members[0].clone(), members[1].clone()], mysql(&old)).unwrap_err();
        assert!(e.contains(&format!("{P}:1-12")), "{e}");
    }

    #[test]
    fn a_mysql_replica_with_its_own_writes_is_errant_but_its_past_as_primary_is_not() {
        let old = format!("{P}:1-20,{R3}:1-4");
        // db2 wrote R2:1 while a replica; db3 was primary before (R3:1-4,
        // which the old primary has).
        let db2f = mysql_frozen(&format!("{P}:1-20,\n{R2}:1"), "", R2);
        let db3f = mysql_frozen(&format!("{P}:1-20,{R3}:1-4"), "", R3);
        let members = [
            member("db2", PromotionRule::Prefer, Some(&db2f)),
            member("db3", PromotionRule::Neutral, Some(&db3f)),
        ];
        let c = choose(&members, mysql(&old)).unwrap();
        assert_eq!(c.candidate, "db3");
        assert!(
            c.evidence
                .iter()
                .any(|e| e.contains(&format!("db2: errant transactions {R2}:1"))),
            "{:?}",
            c.evidence
        );
        // A MariaDB GTID in a MySQL cluster is an error naming the member.
        let bad = mysql_frozen("0-1-5", "", R2);
        let members = [member("db2", PromotionRule::Neutral, Some(&bad))];
        let e = choose(&members, mysql(&old)).unwrap_err();
        assert!(e.starts_with("db2: "), "{e}");
    }

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
