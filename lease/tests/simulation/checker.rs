//! The invariants (reference §3.10, I1–I4), checked after every event.

use super::world::*;
use super::*;

/// The invariants. Handlers report acquisitions, commands and replies;
/// [`World::check`] inspects the state after every event.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    /// I1: who won each epoch, and who commanded under it.
    pub(crate) winners: BTreeMap<Epoch, HolderId>,
    pub(crate) commanders: BTreeMap<Epoch, HolderId>,
    pub(crate) ghosts: Vec<Ghost>,
    pub(crate) failed: Option<(&'static str, String)>,
}

impl Checker {
    pub(crate) fn fail(&mut self, rule: &'static str, detail: String) {
        self.failed.get_or_insert((rule, detail));
    }

    /// I1: `holder` is the only one ever to win (or command under) `epoch`.
    pub(crate) fn unique(&mut self, commanded: bool, epoch: &Epoch, holder: &HolderId) {
        let owners = if commanded {
            &mut self.commanders
        } else {
            &mut self.winners
        };
        let owner = owners
            .entry(epoch.clone())
            .or_insert_with(|| holder.clone());
        if owner != holder {
            let what = if commanded {
                "commanded under"
            } else {
                "acquired"
            };
            let detail = format!("{holder} {what} epoch {epoch}, like {owner} before it");
            self.fail("I1 unique epochs", detail);
        }
    }

    pub(crate) fn replied(&mut self, voter: usize, reply: &VoterReply) {
        if let VoterReply::Promised { epoch, .. } | VoterReply::Renewed { epoch } = reply {
            let g = &mut self.ghosts[voter];
            g.sent = g.sent.clone().max(epoch.clone());
        }
    }

    /// I4, as the agent executes: `ghost.mem` is still the highest promise
    /// the voter ever had before this command.
    pub(crate) fn executed(&mut self, voter: usize, epoch: &Epoch) {
        let g = &mut self.ghosts[voter];
        if *epoch < g.mem || *epoch < g.executed {
            let (mem, ex) = (&g.mem, &g.executed);
            let detail = format!(
                "v{} ran {epoch} after promising {mem}, running {ex}",
                voter + 1
            );
            self.fail("I4 fenced execution", detail);
            return;
        }
        g.executed = epoch.clone();
        g.sent = g.sent.clone().max(epoch.clone());
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Stats {
    pub(crate) events: u64,
    /// (real µs, slot, epoch) of every acquisition.
    pub(crate) acquired: Vec<(u64, usize, Epoch)>,
    /// Acquisitions by another slot than the one before.
    pub(crate) takeovers: u64,
    pub(crate) executed: u64,
    /// Real time from the final heal to the first valid lease.
    pub(crate) recovered_in: Option<u64>,
}
