//! The holder: a coordinator's half of the lease protocol. It decides when
//! to ask for the lease, counts the grants, renews, and says at every
//! instant whether this coordinator may act.
//!
//! The caller sends each [`HolderAction::Broadcast`] to the listed voters,
//! feeds the replies back with [`Holder::on_reply`], and calls
//! [`Holder::tick`] often (every few hundred milliseconds). Times are
//! readings of the holder's `CLOCK_BOOTTIME`, so a suspended or stopped
//! process sees the full elapsed time when it resumes.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::epoch::{Epoch, HolderId};
use crate::timing::Timing;
use crate::voter::{RejectReason, VoterReply, VoterRequest};
use crate::voters::VoterSet;

/// What a coordinator is, as the lease defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Holds no lease; follows the active.
    Standby,
    /// Asking the voters for a lease.
    Candidate,
    /// Holds a valid lease and its desired state is complete.
    Active,
    /// Holds a valid lease but has not applied everything an earlier
    /// holder committed: it observes and makes no automatic changes.
    ActiveDegraded,
}

impl Role {
    /// The name operators see.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Candidate => "candidate",
            Role::Active => "active",
            Role::ActiveDegraded => "active-degraded",
        }
    }
}

/// Why a holder stopped being active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDownReason {
    /// No majority renewed the lease before its deadline.
    LeaseExpired,
    /// Some voter or agent has promised a higher epoch.
    HigherEpoch(Epoch),
    /// The holder gave the lease up (a planned handover).
    Released,
}

/// What the caller must do after a call.
#[derive(Debug, Clone, PartialEq)]
pub enum HolderAction {
    /// Send `request` to each voter in `to` and return the replies with
    /// this `round`.
    Broadcast {
        /// Round the replies belong to.
        round: u64,
        /// The request.
        request: VoterRequest,
        /// Voter names.
        to: Vec<String>,
    },
    /// The lease was won.
    Acquired {
        /// Under this epoch.
        epoch: Epoch,
        /// Whether desired state is behind what an earlier holder committed.
        degraded: bool,
    },
    /// The holder stopped acting, at once.
    SteppedDown {
        /// The epoch it held.
        epoch: Epoch,
        /// Why.
        reason: StepDownReason,
    },
}

#[derive(Debug, Clone)]
struct Round {
    id: u64,
    epoch: Epoch,
    /// Holder time taken before the requests were sent.
    started: Duration,
    granted: BTreeSet<String>,
    /// Highest committed sequence reported by the granting voters.
    required_seq: u64,
    /// Longest wait a rejecting voter asked for.
    wait: Duration,
    done: bool,
}

#[derive(Debug, Clone)]
enum State {
    Standby {
        next_try: Duration,
    },
    Candidate {
        round: Round,
    },
    Active {
        epoch: Epoch,
        deadline: Duration,
        round: Option<Round>,
        next_renew: Duration,
    },
}

/// The holder state machine.
#[derive(Debug, Clone)]
pub struct Holder {
    id: HolderId,
    timing: Timing,
    voters: VoterSet,
    max_seen: Epoch,
    state: State,
    next_round: u64,
    rng: StdRng,
    peer_heard: Duration,
    applied_seq: u64,
    committed_seq: u64,
    required_seq: u64,
    gap_accepted: bool,
    /// Start of the last round a quorum answered.
    confirmed_at: Option<Duration>,
}

impl Holder {
    /// A standby that has seen `max_seen` (from its own store; voters teach
    /// it higher ones). It waits half a lease for an active peer to show up
    /// before it asks for the lease itself.
    pub fn new(
        id: HolderId,
        timing: Timing,
        voters: VoterSet,
        max_seen: Epoch,
        now: Duration,
    ) -> Holder {
        let rng = StdRng::seed_from_u64(id.incarnation);
        Holder {
            id,
            timing,
            voters,
            max_seen,
            state: State::Standby { next_try: now },
            next_round: 1,
            rng,
            peer_heard: now,
            applied_seq: 0,
            committed_seq: 0,
            required_seq: 0,
            gap_accepted: false,
            confirmed_at: None,
        }
    }

    /// When the last round that a quorum (of the current voter list)
    /// answered was started, so a voter-list change can wait for a round
    /// begun after it.
    pub fn last_confirmed(&self) -> Option<Duration> {
        self.confirmed_at
    }

    /// This process's identity.
    pub fn id(&self) -> &HolderId {
        &self.id
    }

    /// The lease timings.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The voter list in use.
    pub fn voters(&self) -> &VoterSet {
        &self.voters
    }

    /// Replaces the voter list (a replicated desired-state change).
    pub fn set_voters(&mut self, voters: VoterSet) {
        self.voters = voters;
    }

    /// The highest epoch seen anywhere; persist it so a restart starts above.
    pub fn max_seen(&self) -> &Epoch {
        &self.max_seen
    }

    /// The epoch held, valid or not.
    pub fn epoch(&self) -> Option<&Epoch> {
        match &self.state {
            State::Active { epoch, .. } => Some(epoch),
            _ => None,
        }
    }

    /// The role at holder time `now`.
    pub fn role(&self, now: Duration) -> Role {
        match &self.state {
            State::Active { deadline, .. } if now < *deadline => {
                if self.degraded() {
                    Role::ActiveDegraded
                } else {
                    Role::Active
                }
            }
            State::Active { .. } | State::Standby { .. } => Role::Standby,
            State::Candidate { .. } => Role::Candidate,
        }
    }

    fn degraded(&self) -> bool {
        self.applied_seq < self.required_seq && !self.gap_accepted
    }

    /// Whether this holder believes its lease is valid at `now`.
    pub fn lease_valid(&self, now: Duration) -> bool {
        matches!(&self.state, State::Active { deadline, .. } if now < *deadline)
    }

    /// Lease time left, when active.
    pub fn lease_remaining(&self, now: Duration) -> Option<Duration> {
        match &self.state {
            State::Active { deadline, .. } if now < *deadline => Some(*deadline - now),
            _ => None,
        }
    }

    /// The epoch to put on a command sent now, or `None` when this holder
    /// must not command: it requires a lease that outlasts one RPC timeout.
    pub fn command_epoch(&self, now: Duration) -> Option<Epoch> {
        match &self.state {
            State::Active {
                epoch, deadline, ..
            } if now + self.timing.rpc_timeout < *deadline => Some(epoch.clone()),
            _ => None,
        }
    }

    /// Whether automatic topology changes are allowed: a valid lease and
    /// complete desired state.
    pub fn may_change_topology(&self, now: Duration) -> bool {
        self.command_epoch(now).is_some() && !self.degraded()
    }

    /// The highest sequence an earlier holder committed (learned at acquisition).
    pub fn required_seq(&self) -> u64 {
        self.required_seq
    }

    /// Desired state applied locally up to `seq`.
    pub fn set_applied_seq(&mut self, seq: u64) {
        self.applied_seq = seq;
    }

    /// Desired state durable on this holder up to `seq` (sent in renewals).
    pub fn set_committed_seq(&mut self, seq: u64) {
        self.committed_seq = seq;
    }

    /// The operator accepted that desired state an earlier holder committed
    /// is lost: leave degraded mode.
    pub fn accept_gap(&mut self) {
        self.gap_accepted = true;
    }

    /// An active peer was heard from (its op-log stream or status), so do
    /// not ask for the lease for another half lease.
    pub fn peer_heard(&mut self, now: Duration) {
        self.peer_heard = self.peer_heard.max(now);
    }

    /// Asks for the lease at the next tick without waiting for the peer
    /// (the peer handed the lease over).
    pub fn try_now(&mut self, now: Duration) {
        if let State::Standby { next_try } = &mut self.state {
            *next_try = now;
            self.peer_heard = Duration::ZERO;
        }
    }

    /// When to ask again: after the longest wait the voters named (their
    /// live grants), and at least a quarter lease, plus random jitter so
    /// two candidates do not keep colliding. The jitter is small when a
    /// known grant is running out (a takeover: one candidate), a renew
    /// interval otherwise (a cold start: two candidates).
    fn backoff(&mut self, wait: Duration) -> Duration {
        let floor = wait.max(self.timing.lease / 4);
        let spread = if wait.is_zero() {
            self.timing.renew_interval
        } else {
            self.timing.rpc_timeout / 2
        };
        let jitter_ms = self.rng.random_range(0..=spread.as_millis() as u64);
        floor + Duration::from_millis(jitter_ms)
    }

    fn start_round(&mut self, epoch: Epoch, now: Duration) -> Round {
        let id = self.next_round;
        self.next_round += 1;
        Round {
            id,
            epoch,
            started: now,
            granted: BTreeSet::new(),
            required_seq: 0,
            wait: Duration::ZERO,
            done: false,
        }
    }

    fn broadcast(&self, round: &Round, request: VoterRequest) -> HolderAction {
        HolderAction::Broadcast {
            round: round.id,
            request,
            to: self.voters.members().into_iter().collect(),
        }
    }

    fn step_down(&mut self, reason: StepDownReason, now: Duration) -> Vec<HolderAction> {
        let State::Active { epoch, .. } = &self.state else {
            return Vec::new();
        };
        let epoch = epoch.clone();
        let pause = if reason == StepDownReason::Released {
            self.timing.lease
        } else {
            Duration::ZERO
        };
        let next_try = now + pause + self.backoff(Duration::ZERO);
        self.state = State::Standby { next_try };
        vec![HolderAction::SteppedDown { epoch, reason }]
    }

    /// Advances time: starts, renews or gives up rounds, and steps down the
    /// moment the lease deadline passes.
    pub fn tick(&mut self, now: Duration) -> Vec<HolderAction> {
        match &mut self.state {
            State::Active { deadline, .. } if now >= *deadline => {
                self.step_down(StepDownReason::LeaseExpired, now)
            }
            State::Active {
                epoch,
                round,
                next_renew,
                ..
            } => {
                let idle = round
                    .as_ref()
                    .is_none_or(|r| r.done || now >= r.started + self.timing.rpc_timeout);
                if !idle || now < *next_renew {
                    return Vec::new();
                }
                *next_renew = now + self.timing.renew_interval;
                let epoch = epoch.clone();
                let r = self.start_round(epoch.clone(), now);
                let request = VoterRequest::Renew {
                    epoch,
                    holder: self.id.clone(),
                    timing: self.timing,
                    voter_config_version: self.voters.version,
                    committed_seq: self.committed_seq,
                };
                let action = self.broadcast(&r, request);
                if let State::Active { round, .. } = &mut self.state {
                    *round = Some(r);
                }
                vec![action]
            }
            State::Candidate { round } if now >= round.started + self.timing.rpc_timeout => {
                let round = round.clone();
                let next_try = now + self.backoff(round.wait);
                self.state = State::Standby { next_try };
                // Free the partial grants so that neither coordinator waits
                // a whole lease for votes that elected nobody.
                if round.granted.is_empty() {
                    return Vec::new();
                }
                let request = VoterRequest::Release {
                    epoch: round.epoch.clone(),
                    holder: self.id.clone(),
                };
                vec![HolderAction::Broadcast {
                    round: round.id,
                    request,
                    to: round.granted.into_iter().collect(),
                }]
            }
            State::Candidate { .. } => Vec::new(),
            State::Standby { next_try } => {
                if now < *next_try || now < self.peer_heard + self.timing.lease / 2 {
                    return Vec::new();
                }
                let Some(epoch) = Epoch::next_after(&self.max_seen, &self.id.coordinator) else {
                    // only forged terms get here; no round can be asked for
                    return Vec::new();
                };
                self.max_seen = epoch.clone();
                let round = self.start_round(epoch.clone(), now);
                let request = VoterRequest::Prepare {
                    epoch,
                    holder: self.id.clone(),
                    timing: self.timing,
                    voter_config_version: self.voters.version,
                };
                let action = self.broadcast(&round, request);
                self.state = State::Candidate { round };
                vec![action]
            }
        }
    }

    /// Learns of an epoch seen elsewhere (a voter's or agent's rejection, a
    /// peer's status); a higher one than the held epoch ends the lease.
    /// An epoch more than [`crate::MAX_TERM_STEP`] terms above what this
    /// coordinator has seen is ignored: only a forged message carries it.
    pub fn on_higher_epoch(&mut self, seen: &Epoch, now: Duration) -> Vec<HolderAction> {
        if !seen.plausible_after(&self.max_seen) {
            return Vec::new();
        }
        if *seen > self.max_seen {
            self.max_seen = seen.clone();
        }
        match &self.state {
            State::Active { epoch, .. } if seen > epoch => {
                self.step_down(StepDownReason::HigherEpoch(seen.clone()), now)
            }
            _ => Vec::new(),
        }
    }

    /// Feeds one voter's reply to round `round`.
    pub fn on_reply(
        &mut self,
        voter: &str,
        round_id: u64,
        reply: VoterReply,
        now: Duration,
    ) -> Vec<HolderAction> {
        if let VoterReply::Rejected {
            reason,
            promised,
            remaining,
            ..
        } = &reply
        {
            let mut out = Vec::new();
            if *reason == RejectReason::StaleEpoch || promised > &self.max_seen {
                out = self.on_higher_epoch(promised, now);
            }
            if let State::Candidate { round } = &mut self.state
                && round.id == round_id
            {
                round.wait = round.wait.max(*remaining);
            }
            return out;
        }
        let quorum_of = |voters: &VoterSet, r: &mut Round| {
            r.granted.insert(voter.to_string());
            !r.done && voters.is_quorum(&r.granted)
        };
        match (&mut self.state, reply) {
            (
                State::Candidate { round },
                VoterReply::Promised {
                    epoch,
                    committed_seq,
                },
            ) if round.id == round_id && round.epoch == epoch => {
                round.required_seq = round.required_seq.max(committed_seq);
                if !quorum_of(&self.voters, round) {
                    return Vec::new();
                }
                let deadline = round.started + self.timing.holder_lease();
                if now >= deadline {
                    return Vec::new();
                }
                self.required_seq = self.required_seq.max(round.required_seq);
                self.confirmed_at = Some(round.started);
                self.gap_accepted = false;
                let next_renew = round.started + self.timing.renew_interval;
                self.state = State::Active {
                    epoch: epoch.clone(),
                    deadline,
                    round: None,
                    next_renew,
                };
                vec![HolderAction::Acquired {
                    epoch,
                    degraded: self.degraded(),
                }]
            }
            (
                State::Active {
                    epoch,
                    deadline,
                    round: Some(round),
                    ..
                },
                VoterReply::Renewed { epoch: e },
            ) if round.id == round_id && *epoch == e => {
                if quorum_of(&self.voters, round) {
                    round.done = true;
                    self.confirmed_at = Some(round.started);
                    *deadline = (*deadline).max(round.started + self.timing.holder_lease());
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Gives the lease up for a planned handover: stop acting at once, and
    /// tell the voters so the peer is granted without waiting.
    pub fn release(&mut self, now: Duration) -> Vec<HolderAction> {
        let Some(epoch) = self.epoch().cloned() else {
            return Vec::new();
        };
        let mut out = self.step_down(StepDownReason::Released, now);
        let to = self.voters.members().into_iter().collect();
        let round = self.next_round;
        self.next_round += 1;
        out.push(HolderAction::Broadcast {
            round,
            request: VoterRequest::Release {
                epoch,
                holder: self.id.clone(),
            },
            to,
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::voter::{FenceRecord, Voter};

    fn voters(n: usize) -> VoterSet {
        let m: BTreeMap<String, u32> = (1..=n).map(|i| (format!("v{i}"), 1)).collect();
        VoterSet::new(m).unwrap()
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Delivers every broadcast to in-memory voters instantly.
    fn deliver(
        h: &mut Holder,
        vs: &mut BTreeMap<String, Voter>,
        actions: Vec<HolderAction>,
        now: Duration,
    ) -> Vec<HolderAction> {
        let mut out = Vec::new();
        for a in actions {
            if let HolderAction::Broadcast { round, request, to } = a {
                for name in to {
                    let r = vs.get_mut(&name).unwrap().handle(request.clone(), now);
                    out.extend(h.on_reply(&name, round, r.reply, now));
                }
            } else {
                out.push(a);
            }
        }
        out
    }

    fn fresh_voters(n: usize) -> BTreeMap<String, Voter> {
        voters(n)
            .members()
            .into_iter()
            .map(|v| (v, Voter::boot(FenceRecord::default(), ms(0))))
            .collect()
    }

    #[test]
    fn acquires_after_half_a_lease_then_renews_and_expires_without_voters() {
        let id = HolderId {
            coordinator: "c1".into(),
            incarnation: 1,
        };
        let mut h = Holder::new(id, Timing::standard(), voters(3), Epoch::zero(), ms(0));
        let mut vs = fresh_voters(3);
        assert!(
            h.tick(ms(1_000)).is_empty(),
            "waits for an active peer first"
        );
        let a = h.tick(ms(5_000));
        let out = deliver(&mut h, &mut vs, a, ms(5_000));
        assert_eq!(
            out,
            vec![HolderAction::Acquired {
                epoch: Epoch {
                    term: 1,
                    coordinator: "c1".into()
                },
                degraded: false
            }]
        );
        assert_eq!(h.role(ms(5_001)), Role::Active);
        assert_eq!(h.lease_remaining(ms(5_000)), Some(ms(8_900)));
        // Renewal at T/5 extends the deadline.
        let a = h.tick(ms(7_000));
        deliver(&mut h, &mut vs, a, ms(7_000));
        assert_eq!(h.lease_remaining(ms(7_000)), Some(ms(8_900)));
        // With no more replies, the lease ends exactly at the deadline.
        assert!(h.command_epoch(ms(14_899)).is_some());
        assert!(
            h.command_epoch(ms(14_900)).is_none(),
            "no command within τ of the deadline"
        );
        let out = h.tick(ms(15_900));
        assert!(matches!(
            &out[0],
            HolderAction::SteppedDown {
                reason: StepDownReason::LeaseExpired,
                ..
            }
        ));
        assert_eq!(h.role(ms(15_900)), Role::Standby);
    }

    #[test]
    fn a_higher_epoch_in_a_rejection_makes_the_holder_step_down() {
        let id = HolderId {
            coordinator: "c1".into(),
            incarnation: 1,
        };
        let mut h = Holder::new(id, Timing::standard(), voters(3), Epoch::zero(), ms(0));
        let mut vs = fresh_voters(3);
        let a = h.tick(ms(5_000));
        deliver(&mut h, &mut vs, a, ms(5_000));
        let higher = Epoch {
            term: 9,
            coordinator: "c2".into(),
        };
        let reply = VoterReply::Rejected {
            reason: RejectReason::StaleEpoch,
            promised: higher.clone(),
            holder: None,
            remaining: Duration::ZERO,
        };
        let out = h.on_reply("v1", 99, reply, ms(5_100));
        assert_eq!(
            out,
            vec![HolderAction::SteppedDown {
                epoch: Epoch {
                    term: 1,
                    coordinator: "c1".into()
                },
                reason: StepDownReason::HigherEpoch(higher)
            }]
        );
        assert_eq!(h.max_seen().term, 9);
    }

    /// A forged `u64::MAX` in a rejection is neither adopted nor a reason
    /// to step down; a holder whose store already says `u64::MAX` asks for
    /// no round instead of wrapping or panicking.
    #[test]
    fn a_forged_term_is_ignored_and_an_exhausted_term_space_never_panics() {
        let id = HolderId {
            coordinator: "c1".into(),
            incarnation: 1,
        };
        let mut h = Holder::new(
            id.clone(),
            Timing::standard(),
            voters(3),
            Epoch::zero(),
            ms(0),
        );
        let mut vs = fresh_voters(3);
        let a = h.tick(ms(5_000));
        deliver(&mut h, &mut vs, a, ms(5_000));
        let forged = Epoch {
            term: u64::MAX,
            coordinator: "zz".into(),
        };
        let reply = VoterReply::Rejected {
            reason: RejectReason::StaleEpoch,
            promised: forged.clone(),
            holder: None,
            remaining: Duration::ZERO,
        };
        assert!(h.on_reply("v1", 99, reply, ms(5_100)).is_empty());
        assert!(h.on_higher_epoch(&forged, ms(5_100)).is_empty());
        assert_eq!(h.max_seen().term, 1);
        assert_eq!(h.role(ms(5_200)), Role::Active);

        let mut stuck = Holder::new(id, Timing::standard(), voters(3), forged, ms(0));
        assert!(stuck.tick(ms(5_000)).is_empty());
        assert_eq!(stuck.role(ms(5_000)), Role::Standby);
    }

    #[test]
    fn a_holder_behind_the_committed_sequence_is_degraded_until_it_catches_up() {
        let mut vs = fresh_voters(3);
        let c1 = HolderId {
            coordinator: "c1".into(),
            incarnation: 1,
        };
        let mut h1 = Holder::new(c1, Timing::standard(), voters(3), Epoch::zero(), ms(0));
        h1.set_committed_seq(10);
        let a = h1.tick(ms(5_000));
        deliver(&mut h1, &mut vs, a, ms(5_000));
        let a = h1.tick(ms(7_000));
        deliver(&mut h1, &mut vs, a, ms(7_000));
        let released = h1.release(ms(8_000));
        deliver(&mut h1, &mut vs, released, ms(8_000));

        let c2 = HolderId {
            coordinator: "c2".into(),
            incarnation: 2,
        };
        let mut h2 = Holder::new(c2, Timing::standard(), voters(3), Epoch::zero(), ms(0));
        h2.set_applied_seq(7);
        h2.try_now(ms(8_000));
        let a = h2.tick(ms(8_000));
        let out = deliver(&mut h2, &mut vs, a, ms(8_000));
        assert_eq!(
            out,
            vec![HolderAction::Acquired {
                epoch: Epoch {
                    term: 1,
                    coordinator: "c2".into()
                },
                degraded: true
            }]
        );
        assert_eq!(h2.role(ms(8_001)), Role::ActiveDegraded);
        assert!(!h2.may_change_topology(ms(8_001)));
        h2.set_applied_seq(10);
        assert_eq!(h2.role(ms(8_001)), Role::Active);
        assert!(h2.may_change_topology(ms(8_001)));
    }
}
