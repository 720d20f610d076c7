//! The voter: an agent's (or witness's) half of the lease protocol, and the
//! epoch fence every coordinator command passes through.
//!
//! The caller owns durability: whenever a call returns a record to persist,
//! the caller writes it durably (fsync) *before* it sends the reply or runs
//! the command. If that write fails it must not reply; it calls
//! [`Voter::restore`] with the last durable record instead.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::epoch::{Epoch, HolderId};
use crate::timing::Timing;

/// What a voter keeps on disk. It only ever moves forward: `promised`
/// never decreases, and every reply depending on it is sent after it is
/// durable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// Voter-list version last seen; older requests are refused.
    pub voter_config_version: u64,
    /// Highest epoch promised or seen on any command.
    pub promised: Epoch,
    /// The coordinator process holding (or last holding) this voter's grant.
    pub holder: Option<HolderId>,
    /// Highest desired-state sequence a holder reported as committed, so a
    /// later holder learns whether it is behind.
    pub holder_committed_seq: u64,
    /// Longest restart quarantine any grant needed, in milliseconds: the
    /// grant timers are lost on a restart, so the voter grants nothing to
    /// anyone else for this long after it starts.
    pub quarantine_ms: u64,
}

/// A coordinator's request to a voter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VoterRequest {
    /// Promise `epoch` to `holder` and grant it a lease.
    Prepare {
        /// The epoch asked for.
        epoch: Epoch,
        /// The asking process.
        holder: HolderId,
        /// The lease it asks for.
        timing: Timing,
        /// Its voter-list version.
        voter_config_version: u64,
    },
    /// Extend the holder's grant, and tell how far desired state is committed.
    Renew {
        /// The holder's epoch.
        epoch: Epoch,
        /// The holder process.
        holder: HolderId,
        /// The lease it asks for.
        timing: Timing,
        /// Its voter-list version.
        voter_config_version: u64,
        /// Highest desired-state sequence durable on the holder.
        committed_seq: u64,
    },
    /// Give the grant up (a planned handover), so another coordinator can
    /// be granted at once.
    Release {
        /// The holder's epoch.
        epoch: Epoch,
        /// The holder process.
        holder: HolderId,
    },
}

/// Why a voter refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The epoch is not above what the voter promised (a Prepare), or is
    /// below it (a Renew or command): the sender must step down.
    StaleEpoch,
    /// Another holder's grant is still alive: wait `remaining`.
    GrantAlive,
    /// The voter restarted recently and grants nothing for `remaining`.
    Quarantine,
    /// The sender's voter list is older than the voter's.
    StaleVoterConfig,
    /// A Renew or Release from a process that does not hold the promise.
    NotHolder,
    /// The epoch is more than [`crate::MAX_TERM_STEP`] terms above the
    /// promise: no honest coordinator sends it.
    ImplausibleEpoch,
}

/// A voter's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VoterReply {
    /// `epoch` is promised and granted; `committed_seq` is the highest
    /// sequence any earlier holder reported as committed.
    Promised {
        /// The epoch promised.
        epoch: Epoch,
        /// What the new holder must have applied to act on its own.
        committed_seq: u64,
    },
    /// The grant of `epoch` was extended.
    Renewed {
        /// The epoch renewed.
        epoch: Epoch,
    },
    /// The grant was given up.
    Released,
    /// Refused.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// The voter's promise, so the sender learns higher epochs.
        promised: Epoch,
        /// Who holds that promise.
        holder: Option<HolderId>,
        /// How long the live grant or quarantine still lasts.
        remaining: Duration,
    },
}

/// The outcome of one request: persist `persist` (if any) durably, then
/// send `reply`.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The record to write before replying.
    pub persist: Option<FenceRecord>,
    /// The reply.
    pub reply: VoterReply,
}

/// Why a voter refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefusal {
    /// Below the promise: the sender must step down.
    #[error(transparent)]
    Stale(#[from] StaleEpoch),
    /// More than [`crate::MAX_TERM_STEP`] terms above the promise.
    #[error(
        "epoch {sent} is implausibly far above this voter's promise {promised}: no honest coordinator sends it"
    )]
    Implausible {
        /// The command's epoch.
        sent: Epoch,
        /// The voter's promise.
        promised: Epoch,
    },
}

/// A command was sent under an epoch below the voter's promise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stale epoch {sent}: this voter has promised {promised}")]
pub struct StaleEpoch {
    /// The command's epoch.
    pub sent: Epoch,
    /// The voter's promise.
    pub promised: Epoch,
    /// Who holds it.
    pub holder: Option<HolderId>,
}

/// A command may run: first persist `persist` (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandVerdict {
    /// The raised promise to write before executing.
    pub persist: Option<FenceRecord>,
}

/// The voter state machine.
#[derive(Debug, Clone)]
pub struct Voter {
    rec: FenceRecord,
    /// The live grant: its holder and when it expires (voter clock).
    grant: Option<(HolderId, Duration)>,
    quarantine_until: Duration,
}

impl Voter {
    /// Starts from the durable record (default when there is none). A voter
    /// that ever granted a lease grants nothing to another holder for the
    /// record's quarantine, because the grant's timer was lost.
    pub fn boot(rec: FenceRecord, now: Duration) -> Voter {
        let quarantine_until = if rec.holder.is_some() {
            now + Duration::from_millis(rec.quarantine_ms)
        } else {
            now
        };
        Voter {
            rec,
            grant: None,
            quarantine_until,
        }
    }

    /// Starts a voter whose record was lost (amnesia): it may have granted
    /// leases it no longer knows of, so it grants nothing to anyone for
    /// `quarantine`.
    pub fn boot_amnesiac(now: Duration, quarantine: Duration) -> Voter {
        Voter {
            rec: FenceRecord::default(),
            grant: None,
            quarantine_until: now + quarantine,
        }
    }

    /// The record as it must be on disk once pending writes are done.
    pub fn record(&self) -> &FenceRecord {
        &self.rec
    }

    /// Returns to the last durable record after a failed write. Grant
    /// timers are kept: staying patient is always safe.
    pub fn restore(&mut self, durable: FenceRecord) {
        self.rec = durable;
    }

    /// How long another holder must still wait, if at all.
    fn blocked_for(&self, holder: &HolderId, now: Duration) -> Option<(RejectReason, Duration)> {
        if self.rec.holder.as_ref() != Some(holder) && now < self.quarantine_until {
            return Some((RejectReason::Quarantine, self.quarantine_until - now));
        }
        match &self.grant {
            Some((h, until)) if h != holder && now < *until => {
                Some((RejectReason::GrantAlive, *until - now))
            }
            _ => None,
        }
    }

    fn reject(&self, reason: RejectReason, remaining: Duration) -> Handled {
        Handled {
            persist: None,
            reply: VoterReply::Rejected {
                reason,
                promised: self.rec.promised.clone(),
                holder: self.rec.holder.clone(),
                remaining,
            },
        }
    }

    /// Answers one request at voter time `now`.
    pub fn handle(&mut self, req: VoterRequest, now: Duration) -> Handled {
        match req {
            VoterRequest::Prepare {
                epoch,
                holder,
                timing,
                voter_config_version,
            } => {
                if voter_config_version < self.rec.voter_config_version {
                    return self.reject(RejectReason::StaleVoterConfig, Duration::ZERO);
                }
                if epoch <= self.rec.promised {
                    return self.reject(RejectReason::StaleEpoch, Duration::ZERO);
                }
                if !epoch.plausible_after(&self.rec.promised) {
                    return self.reject(RejectReason::ImplausibleEpoch, Duration::ZERO);
                }
                if let Some((reason, remaining)) = self.blocked_for(&holder, now) {
                    return self.reject(reason, remaining);
                }
                let committed_seq = self.rec.holder_committed_seq;
                self.rec.promised = epoch.clone();
                self.rec.holder = Some(holder.clone());
                self.rec.voter_config_version = voter_config_version;
                self.rec.quarantine_ms = self.rec.quarantine_ms.max(millis(timing.quarantine()));
                self.grant = Some((holder, now + timing.grant()));
                Handled {
                    persist: Some(self.rec.clone()),
                    reply: VoterReply::Promised {
                        epoch,
                        committed_seq,
                    },
                }
            }
            VoterRequest::Renew {
                epoch,
                holder,
                timing,
                voter_config_version,
                committed_seq,
            } => {
                if voter_config_version < self.rec.voter_config_version {
                    return self.reject(RejectReason::StaleVoterConfig, Duration::ZERO);
                }
                if epoch < self.rec.promised {
                    return self.reject(RejectReason::StaleEpoch, Duration::ZERO);
                }
                let mut changed = false;
                if !epoch.plausible_after(&self.rec.promised) {
                    return self.reject(RejectReason::ImplausibleEpoch, Duration::ZERO);
                }
                if epoch > self.rec.promised {
                    // A voter that missed the Prepare (restarted, newly
                    // added, or cut off at the time) joins the holder's
                    // majority under the very rules of a Prepare.
                    if let Some((reason, remaining)) = self.blocked_for(&holder, now) {
                        return self.reject(reason, remaining);
                    }
                    self.rec.promised = epoch.clone();
                    self.rec.holder = Some(holder.clone());
                    changed = true;
                } else if self.rec.holder.as_ref() != Some(&holder) {
                    return self.reject(RejectReason::NotHolder, Duration::ZERO);
                }
                if committed_seq > self.rec.holder_committed_seq {
                    self.rec.holder_committed_seq = committed_seq;
                    changed = true;
                }
                if voter_config_version > self.rec.voter_config_version {
                    self.rec.voter_config_version = voter_config_version;
                    changed = true;
                }
                let q = millis(timing.quarantine());
                if q > self.rec.quarantine_ms {
                    self.rec.quarantine_ms = q;
                    changed = true;
                }
                self.grant = Some((holder, now + timing.grant()));
                Handled {
                    persist: changed.then(|| self.rec.clone()),
                    reply: VoterReply::Renewed { epoch },
                }
            }
            VoterRequest::Release { epoch, holder } => {
                if epoch != self.rec.promised || self.rec.holder.as_ref() != Some(&holder) {
                    return self.reject(RejectReason::NotHolder, Duration::ZERO);
                }
                if matches!(&self.grant, Some((h, _)) if *h == holder) {
                    self.grant = None;
                }
                Handled {
                    persist: None,
                    reply: VoterReply::Released,
                }
            }
        }
    }

    /// The epoch fence for a coordinator command: refuses an epoch below the
    /// promise; a higher one becomes the promise, to be persisted before the
    /// command runs.
    pub fn check_command(
        &mut self,
        epoch: &Epoch,
        holder: &HolderId,
    ) -> Result<CommandVerdict, CommandRefusal> {
        if *epoch < self.rec.promised {
            return Err(StaleEpoch {
                sent: epoch.clone(),
                promised: self.rec.promised.clone(),
                holder: self.rec.holder.clone(),
            }
            .into());
        }
        if !epoch.plausible_after(&self.rec.promised) {
            return Err(CommandRefusal::Implausible {
                sent: epoch.clone(),
                promised: self.rec.promised.clone(),
            });
        }
        if *epoch == self.rec.promised {
            return Ok(CommandVerdict { persist: None });
        }
        self.rec.promised = epoch.clone();
        self.rec.holder = Some(holder.clone());
        Ok(CommandVerdict {
            persist: Some(self.rec.clone()),
        })
    }

    /// Time left on the live grant (for status), if any.
    pub fn grant_remaining(&self, now: Duration) -> Option<(HolderId, Duration)> {
        match &self.grant {
            Some((h, until)) if now < *until => Some((h.clone(), *until - now)),
            _ => None,
        }
    }

    /// Time left in the restart quarantine, if any.
    pub fn quarantine_remaining(&self, now: Duration) -> Option<Duration> {
        (now < self.quarantine_until).then(|| self.quarantine_until - now)
    }
}

/// Milliseconds, saturating (records and wire fields are whole ms).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(c: &str, n: u64) -> HolderId {
        HolderId {
            coordinator: c.into(),
            incarnation: n,
        }
    }
    fn e(term: u64, c: &str) -> Epoch {
        Epoch {
            term,
            coordinator: c.into(),
        }
    }
    fn prepare(term: u64, c: &str, n: u64) -> VoterRequest {
        VoterRequest::Prepare {
            epoch: e(term, c),
            holder: h(c, n),
            timing: Timing::standard(),
            voter_config_version: 1,
        }
    }
    fn renew(term: u64, c: &str, n: u64, seq: u64) -> VoterRequest {
        VoterRequest::Renew {
            epoch: e(term, c),
            holder: h(c, n),
            timing: Timing::standard(),
            voter_config_version: 1,
            committed_seq: seq,
        }
    }
    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }
    fn reason(r: &Handled) -> Option<RejectReason> {
        match &r.reply {
            VoterReply::Rejected { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    #[test]
    fn promises_only_higher_epochs_and_persists_them() {
        let mut v = Voter::boot(FenceRecord::default(), secs(0));
        let r = v.handle(prepare(1, "c1", 7), secs(0));
        assert_eq!(r.persist.as_ref().unwrap().promised, e(1, "c1"));
        assert!(matches!(r.reply, VoterReply::Promised { .. }));
        // The same epoch again, even from the same process, is refused.
        assert_eq!(
            reason(&v.handle(prepare(1, "c1", 7), secs(1))),
            Some(RejectReason::StaleEpoch)
        );
    }

    #[test]
    fn another_holder_waits_until_the_grant_expires_or_is_released() {
        let mut v = Voter::boot(FenceRecord::default(), secs(0));
        v.handle(prepare(1, "c1", 7), secs(0));
        let r = v.handle(prepare(2, "c2", 9), secs(5));
        assert_eq!(reason(&r), Some(RejectReason::GrantAlive));
        // A duplicate process with the same id is another holder too.
        assert_eq!(
            reason(&v.handle(prepare(2, "c1", 8), secs(5))),
            Some(RejectReason::GrantAlive)
        );
        // The holder itself may move to a higher epoch.
        assert!(v.handle(prepare(2, "c1", 7), secs(5)).persist.is_some());
        // After T(1+ρ) the grant is dead.
        assert!(v.handle(prepare(3, "c2", 9), secs(16)).persist.is_some());
        v.handle(
            VoterRequest::Release {
                epoch: e(3, "c2"),
                holder: h("c2", 9),
            },
            secs(17),
        );
        assert!(v.handle(prepare(4, "c1", 7), secs(17)).persist.is_some());
    }

    #[test]
    fn renewals_carry_the_committed_sequence_to_the_next_holder() {
        let mut v = Voter::boot(FenceRecord::default(), secs(0));
        v.handle(prepare(1, "c1", 7), secs(0));
        let r = v.handle(renew(1, "c1", 7, 42), secs(2));
        assert_eq!(r.persist.unwrap().holder_committed_seq, 42);
        assert_eq!(
            reason(&v.handle(renew(1, "c1", 8, 43), secs(2))),
            Some(RejectReason::NotHolder)
        );
        // A renewal of a higher epoch is a promise, under the Prepare rules.
        let mut late = Voter::boot(FenceRecord::default(), secs(0));
        let r = late.handle(renew(1, "c1", 7, 42), secs(0));
        assert_eq!(r.persist.unwrap().promised, e(1, "c1"));
        assert_eq!(
            reason(&late.handle(renew(2, "c2", 9, 0), secs(1))),
            Some(RejectReason::GrantAlive)
        );
        let r = v.handle(prepare(2, "c2", 9), secs(30));
        assert_eq!(
            r.reply,
            VoterReply::Promised {
                epoch: e(2, "c2"),
                committed_seq: 42
            }
        );
        assert_eq!(
            reason(&v.handle(renew(1, "c1", 7, 50), secs(31))),
            Some(RejectReason::StaleEpoch)
        );
    }

    #[test]
    fn a_restarted_voter_grants_no_one_else_for_the_quarantine() {
        let mut v = Voter::boot(FenceRecord::default(), secs(0));
        let rec = v.handle(prepare(1, "c1", 7), secs(0)).persist.unwrap();
        let mut v = Voter::boot(rec, secs(100));
        assert_eq!(
            reason(&v.handle(prepare(2, "c2", 9), secs(105))),
            Some(RejectReason::Quarantine)
        );
        assert!(matches!(
            v.handle(renew(1, "c1", 7, 0), secs(105)).reply,
            VoterReply::Renewed { .. }
        ));
        // The renewal started a new grant, which outlives the quarantine.
        assert_eq!(
            reason(&v.handle(prepare(2, "c2", 9), secs(112))),
            Some(RejectReason::GrantAlive)
        );
        assert!(v.handle(prepare(2, "c2", 9), secs(120)).persist.is_some());
    }

    #[test]
    fn commands_are_fenced_by_epoch() {
        let mut v = Voter::boot(FenceRecord::default(), secs(0));
        v.handle(prepare(3, "c1", 7), secs(0));
        let err = v.check_command(&e(2, "c2"), &h("c2", 9)).unwrap_err();
        assert!(matches!(err, CommandRefusal::Stale(s) if s.promised == e(3, "c1")));
        assert_eq!(
            v.check_command(&e(3, "c1"), &h("c1", 7)).unwrap().persist,
            None
        );
        let raised = v
            .check_command(&e(4, "c2"), &h("c2", 9))
            .unwrap()
            .persist
            .unwrap();
        assert_eq!(raised.promised, e(4, "c2"));
        assert!(v.check_command(&e(3, "c1"), &h("c1", 7)).is_err());
    }

    /// No honest coordinator leaps more than MAX_TERM_STEP terms: a vote
    /// or a command that does is refused and changes nothing.
    #[test]
    fn an_implausible_leap_in_term_is_refused_for_votes_and_commands() {
        let mut v = Voter::boot(FenceRecord::default(), secs(0));
        v.handle(prepare(3, "c1", 7), secs(0));
        for term in [u64::MAX, 4 + crate::MAX_TERM_STEP] {
            let r = v.handle(prepare(term, "zz", 1), secs(20));
            assert_eq!(reason(&r), Some(RejectReason::ImplausibleEpoch));
            assert!(r.persist.is_none());
            let r = v.handle(renew(term, "zz", 1, 0), secs(20));
            assert_eq!(reason(&r), Some(RejectReason::ImplausibleEpoch));
            let refused = v.check_command(&e(term, "zz"), &h("zz", 1)).unwrap_err();
            assert!(
                matches!(refused, CommandRefusal::Implausible { .. }),
                "{refused}"
            );
        }
        assert_eq!(v.record().promised, e(3, "c1"));
        let step = 3 + crate::MAX_TERM_STEP;
        assert!(v.check_command(&e(step, "c2"), &h("c2", 9)).is_ok());
    }

    #[test]
    fn an_older_voter_list_is_refused() {
        let mut v = Voter::boot(
            FenceRecord {
                voter_config_version: 3,
                ..Default::default()
            },
            secs(0),
        );
        assert_eq!(
            reason(&v.handle(prepare(1, "c1", 7), secs(0))),
            Some(RejectReason::StaleVoterConfig)
        );
    }
}
