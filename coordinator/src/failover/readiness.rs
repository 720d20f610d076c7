//! What would happen if a cluster's primary died now: the candidate, the
//! fence proof a failover would have, whether an acknowledged write could
//! be lost, and about how long until a member is writable again. A cluster
//! that could not fail over automatically is the problem
//! `failover-not-ready` before it matters, not a surprise at 3 a.m.
//!
//! [`assess`] is free of I/O; [`of`] gathers what the coordinator knows.

use std::time::Duration;

use dbfleet_proto::model::{ConfigProblemKind, MysqlAddress};
use dbfleet_proto::pb;

use super::Failovers;
use super::fence::{SelfFenceFacts, registered_replicas_frozen, self_fence_wait, unmanaged_ackers};
use super::journal::ClusterControl;
use super::plan::{self, Constraints};
use super::positions::Positions;
use super::procedure::frozen_from;
use crate::fleet::MemberState;

/// What readiness is judged on, besides the members.
#[derive(Debug, Clone)]
pub struct Setting {
    /// A STONITH hook is configured.
    pub stonith: bool,
    /// The fast window (also the host path's).
    pub fast_window: Duration,
    /// The slow window.
    pub slow_window: Duration,
    /// The coordinator's agent timeout.
    pub agent_timeout: Duration,
    /// The replicas' net timeout (how long until they notice a primary
    /// that went silent without closing its connections).
    pub net_timeout: Duration,
    /// The anti-flap budget is spent.
    pub budget_spent: bool,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Readiness {
    /// Who would be promoted.
    pub candidate: Option<String>,
    /// The fence proof if mysqld died and its agent lived.
    pub mysqld_death_proof: Option<String>,
    /// About how long until writable after such a death.
    pub mysqld_death_expected: Option<Duration>,
    /// The fence proof if the whole host died.
    pub host_death_proof: Option<String>,
    /// About how long until writable after a host death (the replicas
    /// noticing after their net timeout: a power loss, not a crash).
    pub host_death_expected: Option<Duration>,
    /// Why an acknowledged write could be lost, if it could.
    pub data_loss: Option<String>,
    /// Why an automatic failover would not happen, or would block.
    pub not_ready: Vec<String>,
}

/// Judges `cluster` with primary `primary` and its `members`; `None` when
/// there is nothing to judge: no writable primary (`no-writable` and the
/// detector say the rest), or no member besides it.
pub fn assess(
    primary: &str,
    members: &[MemberState],
    control: &ClusterControl,
    setting: &Setting,
) -> Option<Readiness> {
    let p = members.iter().find(|m| m.host == primary)?;
    let ps = p.server().filter(|s| s.writable())?;
    if members.len() < 2 {
        return None;
    }
    let mut r = Readiness::default();
    let Ok(address) = MysqlAddress::parse(&p.mysql_address) else {
        r.not_ready
            .push(format!("the primary {primary} has no valid address"));
        return Some(r);
    };
    if control.maintenance {
        r.not_ready.push("maintenance mode is on".into());
    }
    if !control.auto_failover {
        r.not_ready.push("automatic failover is off".into());
    }
    if let Some(why) = &control.held {
        r.not_ready
            .push(format!("automatic failover is held ({why})"));
    }
    if setting.budget_spent {
        r.not_ready
            .push("the anti-flap budget is spent: run `dbfleet ack`".into());
    }
    let others: Vec<&MemberState> = members.iter().filter(|m| m.host != primary).collect();
    // Left behind and provably apart, as detection and the plan judge it.
    let apart = |m: &MemberState| {
        control.apart(
            &m.host,
            m.server().map(|_| m.follows(&address)),
            m.server().map(|s| s.server_id),
            Some(&ps.replica_server_ids),
        )
    };
    // Who could confirm the death: in service, not apart.
    let counted: Vec<&&MemberState> = others
        .iter()
        .filter(|m| !control.out_of_service(&m.host) && !apart(m))
        .collect();
    let following = counted.iter().filter(|m| m.follows(&address)).count();
    if counted.is_empty() || following * 2 <= counted.len() {
        r.not_ready.push(format!(
            "only {following} of {} other members replicate from {primary}: its death could not be confirmed by a majority",
            counted.len()
        ));
    }
    // The candidate, as if the replicas were frozen now. The Freeze step
    // keeps only reachable replicas, and waits for each to apply what it
    // received, so a replica that lags in applying counts as having
    // applied it (a backlog longer than `apply_timeout` is not seen here).
    let positions: Vec<Option<super::journal::Frozen>> = others
        .iter()
        .map(|m| {
            m.server()
                .filter(|s| s.replication.is_some())
                .map(|s| applied(frozen_from(s), ps.flavor))
        })
        .collect();
    let inputs: Vec<plan::Member<'_>> = others
        .iter()
        .zip(&positions)
        .map(|(m, f)| plan::Member {
            host: &m.host,
            rule: control.rule(&m.host),
            frozen: f.as_ref(),
            semi_sync_replica: m.server().is_none_or(|s| s.semi_sync.replica_enabled),
            needs_rebuild: control.out_of_service(&m.host),
            address_mismatch: m.has_config_problem(&ConfigProblemKind::MysqlAddressMismatch),
            left_behind: control.rejoining.contains_key(&m.host),
            apart: apart(m),
        })
        .collect();
    let lossless = ps.semi_sync.lossless();
    match plan::choose(
        &inputs,
        Constraints {
            requested_to: None,
            allow_data_loss: false,
            lossless,
            flavor: ps.flavor,
            old_primary_executed: &ps.gtid.executed,
            old_primary_uuid: &ps.server_uuid,
        },
    ) {
        Ok(choice) => r.candidate = Some(choice.candidate),
        Err(why) => r.not_ready.push(format!("no candidate: {why}")),
    }
    let interval = p.report.as_ref().map_or(Duration::from_secs(1), |rep| {
        Duration::from_millis(rep.agent.report_interval_ms.max(100))
    });
    // mysqld dies, its agent lives: the agent proves the stop.
    if p.has_config_problem(&ConfigProblemKind::CannotIdentifyMysqld) {
        r.not_ready.push(format!(
            "the agent of {primary} cannot identify its mysqld (cannot-identify-mysqld), so it cannot prove a stop"
        ));
    } else {
        r.mysqld_death_proof = Some(format!("the agent of {primary} proves mysqld stopped"));
        r.mysqld_death_expected = Some(setting.fast_window + interval);
    }
    // The whole host dies: a proof from elsewhere, as the Fence step
    // would judge it with the replicas frozen.
    let would_freeze = |m: &MemberState| m.server().is_some_and(|s| s.replication.is_some());
    let ackers = others
        .iter()
        .filter(|m| {
            m.server()
                .is_none_or(|s| s.semi_sync.replica_enabled && m.follows(&address))
        })
        .count();
    let ids: Vec<(String, Option<u32>)> = others
        .iter()
        .map(|m| (m.host.clone(), m.server().map(|s| s.server_id)))
        .collect();
    let semi_sync_proof = lossless
        && unmanaged_ackers(primary, ps.semi_sync.clients, ackers).is_ok()
        && registered_replicas_frozen(primary, &ps.replica_server_ids, &ids, |h| {
            others.iter().any(|m| m.host == h && would_freeze(m))
        })
        .is_ok()
        && others.iter().all(|m| {
            would_freeze(m)
                || !m
                    .server()
                    .is_none_or(|s| s.semi_sync.replica_enabled && m.follows(&address))
        });
    let self_fence_ms = p
        .report
        .as_ref()
        .map_or(0, |rep| rep.agent.self_fence_timeout_ms);
    let self_fence = self_fence_wait(&SelfFenceFacts {
        timeout_ms: self_fence_ms,
        report_interval_ms: interval.as_millis() as u64,
        live_replicas: Some(ps.replicas_connected),
        others: others.iter().map(|m| m.host.clone()).collect(),
        unfrozen: others
            .iter()
            .filter(|m| !would_freeze(m) && !apart(m) && m.server().is_none())
            .map(|m| m.host.clone())
            .collect(),
    });
    // The host path: every counted member answers and follows, so the
    // evidence is complete after two missed reports, or the replicas' net
    // timeout (a power loss closes no connection); the fast window runs
    // from the primary's last report. Otherwise the slow path's wait.
    let complete = counted.iter().all(|m| m.follows(&address));
    let noticed = if complete {
        (2 * interval)
            .max(setting.net_timeout + interval)
            .max(setting.fast_window)
    } else {
        setting.agent_timeout + setting.slow_window
    };
    let host_proof = if setting.stonith {
        Some(("the STONITH hook".to_string(), Duration::ZERO))
    } else if semi_sync_proof {
        Some((
            "lossless semi-sync with every acknowledging replica managed".to_string(),
            Duration::ZERO,
        ))
    } else if let Ok(wait) = self_fence {
        Some((
            format!(
                "the self-fence of {primary}'s agent (after {})",
                humantime::format_duration(Duration::from_secs(wait.as_secs()))
            ),
            wait,
        ))
    } else {
        None
    };
    match host_proof {
        Some((proof, extra)) => {
            r.host_death_proof = Some(proof);
            r.host_death_expected = Some(noticed + extra);
        }
        None => r.not_ready.push(format!(
            "a death of {primary}'s host could not be proven fenced (semi-sync is not lossless with every acknowledging replica managed, no usable self_fence_timeout on its agent, no [failover] stonith_hook): such a failover would block until `dbfleet failover --confirm-fenced`"
        )),
    }
    if !lossless {
        r.data_loss = Some(format!(
            "semi-sync is not lossless on {primary}: a write acknowledged just before a crash may be on no replica"
        ));
    }
    Some(r)
}

/// `f` as it will be once frozen: what it received applied too (left as
/// it is when its positions cannot be read: the plan names the problem).
fn applied(
    mut f: super::journal::Frozen,
    flavor: dbfleet_proto::model::Flavor,
) -> super::journal::Frozen {
    if let (Ok(executed), Ok(received)) = (
        Positions::parse(flavor, &f.executed),
        Positions::parse(flavor, &f.received),
    ) {
        f.executed = executed.union(&received).to_string();
    }
    f
}

/// `cluster`'s readiness as this coordinator sees it now; `None` when it
/// has no known primary, or no member besides it.
pub(crate) fn of(f: &Failovers, cluster: &str) -> Option<Readiness> {
    let primary = f.primary_of(cluster)?;
    let members = f.fleet.members(cluster);
    let rec = f.fleet.cluster_record(cluster);
    let (recent, budget, _) = f.spent(&rec);
    let setting = Setting {
        stonith: !f.cfg.stonith_hook.is_empty(),
        fast_window: f.cfg.fast_window,
        slow_window: f.cfg.slow_window,
        agent_timeout: f.fleet.rules().agent_timeout,
        net_timeout: f.fleet.replica_tuning(cluster).net_timeout,
        budget_spent: recent >= budget as usize,
    };
    assess(&primary, &members, &rec.control, &setting)
}

impl Readiness {
    /// The view `dbfleet status` shows.
    pub fn view(&self) -> pb::FailoverReadiness {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
        pb::FailoverReadiness {
            ready: self.not_ready.is_empty(),
            candidate: self.candidate.clone().unwrap_or_default(),
            mysqld_death_proof: self.mysqld_death_proof.clone().unwrap_or_default(),
            mysqld_death_expected_ms: ms(self.mysqld_death_expected),
            host_death_proof: self.host_death_proof.clone().unwrap_or_default(),
            host_death_expected_ms: ms(self.host_death_expected),
            data_loss: self.data_loss.clone().unwrap_or_default(),
            not_ready: self.not_ready.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbfleet_proto::model::{
        AgentState, ConfigProblem, Flavor, GtidState, IoThread, MysqlObservation, Name,
        Replication, Report, SEMI_SYNC_NO_FALLBACK_MS, SemiSync, ServerState,
    };

    const SEC: Duration = Duration::from_secs(1);

    fn address(host: &str) -> String {
        format!("127.0.0.{}:3306", &host[2..])
    }

    /// A reporting member: the primary (`source` None) or a replica of
    /// `source`, at MariaDB position `0-1-pos`, lossless when `lossless`.
    fn member(host: &str, source: Option<&str>, pos: u32, lossless: bool) -> MemberState {
        let replication = source.map(|s| Replication {
            tls: None,
            source: MysqlAddress::parse(&address(s)).unwrap(),
            io_thread: IoThread::Running,
            sql_running: true,
            last_io_error: String::new(),
            last_sql_error: String::new(),
            seconds_behind: Some(0),
            auto_position: true,
            received_gtid: format!("0-1-{pos}"),
            heartbeat_ms: None,
            net_timeout_ms: None,
        });
        let primary = source.is_none();
        let server = ServerState {
            tls: None,
            version: "10.11".into(),
            flavor: Flavor::MariaDb,
            server_id: host[2..].parse().unwrap(),
            server_uuid: String::new(),
            read_only: !primary,
            super_read_only: !primary,
            gtid: GtidState {
                executed: format!("0-1-{pos}"),
                current_pos: format!("0-1-{pos}"),
                binlog_pos: format!("0-1-{pos}"),
                slave_pos: format!("0-1-{pos}"),
            },
            replication,
            semi_sync: SemiSync {
                source_enabled: lossless && primary,
                replica_enabled: lossless,
                wait_no_replica: lossless,
                timeout_ms: if lossless {
                    SEMI_SYNC_NO_FALLBACK_MS
                } else {
                    10_000
                },
                clients: if lossless && primary { 2 } else { 0 },
                ..SemiSync::default()
            },
            binlog: Default::default(),
            replicas_connected: 0,
            replica_server_ids: vec![],
        };
        MemberState {
            host: host.into(),
            mysql_address: address(host),
            agent_address: None,
            report: Some(Report {
                host: Name::parse(host).unwrap(),
                cluster: Name::parse("main").unwrap(),
                agent_instance: "i".into(),
                sequence: 1,
                observed_at_unix_ms: 0,
                agent_version: "t".into(),
                mysql_address: MysqlAddress::parse(&address(host)).unwrap(),
                mysql: MysqlObservation::Reachable(Box::new(server)),
                agent: AgentState {
                    report_interval_ms: 1000,
                    ..AgentState::default()
                },
            }),
            received_at: None,
            reporting: true,
        }
    }

    fn setting() -> Setting {
        Setting {
            stonith: false,
            fast_window: SEC,
            slow_window: 5 * SEC,
            agent_timeout: 5 * SEC,
            net_timeout: 4 * SEC,
            budget_spent: false,
        }
    }

    fn trio(lossless: bool) -> Vec<MemberState> {
        vec![
            member("db1", None, 10, lossless),
            member("db2", Some("db1"), 10, lossless),
            member("db3", Some("db1"), 9, lossless),
        ]
    }

    #[test]
    fn a_lossless_trio_is_ready_with_its_candidate_proofs_and_times() {
        let r = assess("db1", &trio(true), &ClusterControl::default(), &setting()).unwrap();
        assert_eq!(r.not_ready, Vec::<String>::new());
        assert_eq!(r.candidate.as_deref(), Some("db2"), "the most advanced");
        assert!(r.mysqld_death_proof.unwrap().contains("agent of db1"));
        // the agent's next report and the fast window
        assert_eq!(r.mysqld_death_expected, Some(2 * SEC));
        assert!(r.host_death_proof.unwrap().contains("lossless semi-sync"));
        // the replicas' net timeout and a report (the fast window runs
        // from the primary's last report, within that)
        assert_eq!(r.host_death_expected, Some(5 * SEC));
        assert_eq!(r.data_loss, None);
    }

    #[test]
    fn a_replica_still_applying_what_it_received_counts_as_caught_up() {
        // under load every replica has received more than it applied: the
        // Freeze step waits for the rest, so a candidate is found
        let mut members = trio(true);
        for m in &mut members[1..] {
            if let Some(MysqlObservation::Reachable(s)) = m.report.as_mut().map(|r| &mut r.mysql) {
                s.gtid.executed = "0-1-8".into();
                s.gtid.slave_pos = "0-1-8".into();
            }
        }
        let r = assess("db1", &members, &ClusterControl::default(), &setting()).unwrap();
        assert_eq!(r.not_ready, Vec::<String>::new());
        assert_eq!(r.candidate.as_deref(), Some("db2"));
    }

    #[test]
    fn what_keeps_a_failover_from_completing_is_named() {
        // asynchronous, no self-fence, no STONITH: a host death blocks,
        // and acknowledged writes may be lost
        let r = assess("db1", &trio(false), &ClusterControl::default(), &setting()).unwrap();
        assert!(r.data_loss.as_deref().unwrap().contains("not lossless"));
        assert_eq!(r.host_death_proof, None);
        assert!(
            r.not_ready
                .iter()
                .any(|w| w.contains("could not be proven fenced")),
            "{:?}",
            r.not_ready
        );
        // ... unless a STONITH hook or the self-fence proves it
        let stonith = Setting {
            stonith: true,
            ..setting()
        };
        let r = assess("db1", &trio(false), &ClusterControl::default(), &stonith).unwrap();
        assert_eq!(r.not_ready, Vec::<String>::new());
        let mut members = trio(false);
        if let Some(rep) = members[0].report.as_mut() {
            rep.agent.self_fence_timeout_ms = 10_000;
        }
        let r = assess("db1", &members, &ClusterControl::default(), &setting()).unwrap();
        assert!(r.host_death_proof.unwrap().contains("self-fence"));
        assert!(r.host_death_expected.unwrap() > 10 * SEC);
        // controls
        let control = ClusterControl {
            auto_failover: false,
            maintenance: true,
            held: Some("vetoed".into()),
            ..ClusterControl::default()
        };
        let spent = Setting {
            budget_spent: true,
            ..setting()
        };
        let r = assess("db1", &trio(true), &control, &spent).unwrap();
        for why in [
            "maintenance",
            "automatic failover is off",
            "held (vetoed)",
            "budget",
        ] {
            assert!(
                r.not_ready.iter().any(|w| w.contains(why)),
                "{why}: {:?}",
                r.not_ready
            );
        }
        // a primary whose agent cannot identify its mysqld proves no stop
        let mut members = trio(true);
        if let Some(rep) = members[0].report.as_mut() {
            rep.agent.config_problems.push(ConfigProblem {
                kind: ConfigProblemKind::CannotIdentifyMysqld,
                message: "no pid file".into(),
            });
        }
        let r = assess("db1", &members, &ClusterControl::default(), &setting()).unwrap();
        assert_eq!(r.mysqld_death_proof, None);
        assert!(
            r.not_ready
                .iter()
                .any(|w| w.contains("cannot-identify-mysqld"))
        );
    }

    #[test]
    fn nobody_to_confirm_or_promote_is_not_ready() {
        // both replicas follow someone else: no majority could confirm
        let members = vec![
            member("db1", None, 10, true),
            member("db2", Some("db9"), 10, true),
            member("db3", Some("db1"), 10, true),
        ];
        let r = assess("db1", &members, &ClusterControl::default(), &setting()).unwrap();
        assert!(
            r.not_ready
                .iter()
                .any(|w| w.contains("only 1 of 2 other members")),
            "{:?}",
            r.not_ready
        );
        // every replica marked never: no candidate
        let mut control = ClusterControl::default();
        for h in ["db2", "db3"] {
            control
                .promotion
                .insert(h.into(), super::super::journal::PromotionRule::Never);
        }
        let r = assess("db1", &trio(true), &control, &setting()).unwrap();
        assert_eq!(r.candidate, None);
        assert!(r.not_ready.iter().any(|w| w.starts_with("no candidate")));
        // a member left behind neither counts nor is the candidate
        let mut control = ClusterControl::default();
        control.rejoining.insert("db2".into(), "0-1-10".into());
        let members = vec![
            member("db1", None, 10, true),
            member("db2", None, 12, false),
            member("db3", Some("db1"), 10, true),
        ];
        let mut members = members;
        if let Some(MysqlObservation::Reachable(s)) =
            members[1].report.as_mut().map(|r| &mut r.mysql)
        {
            s.read_only = true;
        }
        let r = assess("db1", &members, &control, &setting()).unwrap();
        assert_eq!(r.candidate.as_deref(), Some("db3"));
        assert!(
            !r.not_ready
                .iter()
                .any(|w| w.contains("confirmed by a majority")),
            "db2 does not count against db3: {:?}",
            r.not_ready
        );
        // a server alone has no failover to judge
        assert_eq!(
            assess(
                "db1",
                &trio(true)[..1],
                &ClusterControl::default(),
                &setting()
            ),
            None
        );
        // no writable primary: nothing to judge
        let mut members = trio(true);
        if let Some(MysqlObservation::Reachable(s)) =
            members[0].report.as_mut().map(|r| &mut r.mysql)
        {
            s.read_only = true;
        }
        assert_eq!(
            assess("db1", &members, &ClusterControl::default(), &setting()),
            None
        );
    }
}
