//! Who has a voice in a cluster. An agent's certificate names a host and
//! nothing more; the cluster it speaks in and the MySQL address replicas
//! dial are an operator's decision (or, where the coordinators are told to,
//! pinned at the agent's first report). An agent whose report disagrees
//! with its membership, that awaits admission or that was forgotten is
//! heard and shown, but never counted: not in failure detection, not as a
//! candidate, not as a replica to repoint, not in a backup schedule. So a
//! stolen or newly issued agent certificate cannot join a cluster and hold
//! a failover back, and `dbfleet agents forget` keeps a host out for good.
//!
//! The judgement is pure and table-tested; the fleet applies it.

use serde::Deserialize;

use crate::store::{Membership, Standing};

/// How agents the coordinators have never seen become members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// An operator admits each new agent (`dbfleet agents admit`): the
    /// default, since a certificate alone must not make a member.
    #[default]
    Operator,
    /// An agent is admitted where its first report says, and pinned there
    /// (a sandbox, a lab; or a fleet whose certificates are issued only by
    /// the people who would admit it).
    FirstReport,
}

/// Where an agent stands, judged from its membership and its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Voice {
    /// Counted in its cluster.
    Member,
    /// No membership yet (and admission is the operator's).
    AwaitingAdmission,
    /// An operator forgot it.
    Forgotten {
        /// Who.
        by: String,
    },
    /// Admitted to another cluster or at another MySQL address than it
    /// reports.
    AdmittedElsewhere {
        /// Where it is admitted.
        cluster: String,
        /// At which address.
        mysql_address: String,
    },
}

impl Voice {
    /// Judges an agent reporting `cluster` and `mysql_address`.
    pub fn of(
        admission: Admission,
        membership: Option<&Membership>,
        cluster: &str,
        mysql_address: &str,
    ) -> Voice {
        match membership.map(|m| (&m.standing, &m.by)) {
            None if admission == Admission::FirstReport => Voice::Member,
            None => Voice::AwaitingAdmission,
            Some((Standing::Forgotten, by)) => Voice::Forgotten { by: by.clone() },
            Some((
                Standing::Admitted {
                    cluster: c,
                    mysql_address: a,
                },
                _,
            )) if c == cluster && a.eq_ignore_ascii_case(mysql_address) => Voice::Member,
            Some((
                Standing::Admitted {
                    cluster: c,
                    mysql_address: a,
                },
                _,
            )) => Voice::AdmittedElsewhere {
                cluster: c.clone(),
                mysql_address: a.clone(),
            },
        }
    }

    /// Whether the agent counts in its cluster.
    pub fn is_member(&self) -> bool {
        *self == Voice::Member
    }

    /// One word for tables and JSON.
    pub fn word(&self) -> &'static str {
        match self {
            Voice::Member => "member",
            Voice::AwaitingAdmission => "awaiting admission",
            Voice::Forgotten { .. } => "forgotten",
            Voice::AdmittedElsewhere { .. } => "admitted elsewhere",
        }
    }

    /// Why `host`, reporting `cluster` at `mysql_address`, has no voice,
    /// and the command that gives it one; empty for a member.
    pub fn explain(&self, host: &str, cluster: &str, mysql_address: &str) -> String {
        match self {
            Voice::Member => String::new(),
            Voice::AwaitingAdmission => format!(
                "{host} reports for cluster {cluster} at {mysql_address} but is not a member: it has no voice until an operator admits it (dbfleet agents admit {host})"
            ),
            Voice::Forgotten { by } => format!(
                "{host} was forgotten by {by} and has no voice although it reports; if it belongs in cluster {cluster}, admit it again (dbfleet agents admit {host})"
            ),
            Voice::AdmittedElsewhere {
                cluster: c,
                mysql_address: a,
            } => format!(
                "{host} is admitted to cluster {c} at {a} but reports cluster {cluster} at {mysql_address}: it counts as silent in {c} until its agent's configuration says {c} and {a} again, or, if the server really moved, an operator moves it (dbfleet agents move {host} --cluster {cluster} --mysql-address {mysql_address}; a primary is switched over first)"
            ),
        }
    }

    /// Whether the coordinators admit this agent by themselves: admission
    /// at first report, and no decision about it yet.
    pub fn admit_automatically(admission: Admission, membership: Option<&Membership>) -> bool {
        admission == Admission::FirstReport && membership.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(cluster: &str, address: &str) -> Membership {
        Membership {
            host: "db1".into(),
            standing: Standing::Admitted {
                cluster: cluster.into(),
                mysql_address: address.into(),
            },
            at_unix_ms: 1,
            by: "dba".into(),
        }
    }

    #[test]
    fn only_a_report_that_matches_its_membership_has_a_voice() {
        let forgotten = Membership {
            standing: Standing::Forgotten,
            ..admitted("main", "10.0.0.1:3306")
        };
        let here = admitted("main", "10.0.0.1:3306");
        let cases: &[(Admission, Option<&Membership>, &str, &str, Voice)] = &[
            (
                Admission::Operator,
                None,
                "main",
                "10.0.0.1:3306",
                Voice::AwaitingAdmission,
            ),
            (
                Admission::FirstReport,
                None,
                "main",
                "10.0.0.1:3306",
                Voice::Member,
            ),
            (
                Admission::Operator,
                Some(&here),
                "main",
                "10.0.0.1:3306",
                Voice::Member,
            ),
            (
                Admission::FirstReport,
                Some(&here),
                "main",
                "DB1.EXAMPLE:3306",
                Voice::AdmittedElsewhere {
                    cluster: "main".into(),
                    mysql_address: "10.0.0.1:3306".into(),
                },
            ),
            (
                Admission::Operator,
                Some(&here),
                "other",
                "10.0.0.1:3306",
                Voice::AdmittedElsewhere {
                    cluster: "main".into(),
                    mysql_address: "10.0.0.1:3306".into(),
                },
            ),
            (
                Admission::FirstReport,
                Some(&forgotten),
                "main",
                "10.0.0.1:3306",
                Voice::Forgotten { by: "dba".into() },
            ),
        ];
        for (admission, m, cluster, address, want) in cases {
            assert_eq!(
                &Voice::of(*admission, *m, cluster, address),
                want,
                "{admission:?} {m:?} {cluster} {address}"
            );
        }
        let upper = admitted("main", "DB1.example:3306");
        assert!(
            Voice::of(
                Admission::Operator,
                Some(&upper),
                "main",
                "db1.EXAMPLE:3306"
            )
            .is_member()
        );
    }

    #[test]
    fn only_an_agent_never_decided_on_is_admitted_automatically() {
        let forgotten = Membership {
            standing: Standing::Forgotten,
            ..admitted("main", "10.0.0.1:3306")
        };
        assert!(Voice::admit_automatically(Admission::FirstReport, None));
        assert!(!Voice::admit_automatically(Admission::Operator, None));
        assert!(!Voice::admit_automatically(
            Admission::FirstReport,
            Some(&forgotten)
        ));
        assert!(!Voice::admit_automatically(
            Admission::FirstReport,
            Some(&admitted("main", "10.0.0.1:3306"))
        ));
    }

    #[test]
    fn every_voice_but_a_members_says_why_and_what_to_run() {
        for v in [
            Voice::AwaitingAdmission,
            Voice::Forgotten { by: "dba".into() },
            Voice::AdmittedElsewhere {
                cluster: "main".into(),
                mysql_address: "10.0.0.1:3306".into(),
            },
        ] {
            let text = v.explain("db9", "main", "10.0.0.9:3306");
            assert!(
                text.contains("db9") && text.contains("dbfleet agents "),
                "{text}"
            );
            assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
        }
        assert_eq!(Voice::Member.explain("db1", "main", "x:1"), "");
    }
}
