//! Epochs and holder identities.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A fencing epoch: `(term, coordinator)`, ordered by term, then by
/// coordinator id. Two coordinators never share an epoch because the id is
/// part of it, and a coordinator never reuses a term because it always asks
/// for one above every term it has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch {
    /// Strictly increasing across acquisitions.
    pub term: u64,
    /// Id of the coordinator that asked for it.
    pub coordinator: String,
}

/// The largest step above the highest term it has seen that a voter
/// promises, an agent obeys and a coordinator adopts.
///
/// An honest candidate asks for one above the highest term it has seen,
/// and a voter that was away misses only the terms of the attempts made
/// meanwhile, one per attempt, seconds apart: no history reaches four
/// billion. A term beyond it can only be forged, and adopting it would let
/// one message use up the term space (a `u64::MAX` once made both
/// coordinators panic at every restart, for good).
pub const MAX_TERM_STEP: u64 = 1 << 32;

impl Epoch {
    /// The epoch nobody holds: below every real one.
    pub fn zero() -> Epoch {
        Epoch::default()
    }

    /// The epoch `coordinator` asks for after having seen `seen`; `None`
    /// when the term space is used up (only forged terms get there).
    pub fn next_after(seen: &Epoch, coordinator: &str) -> Option<Epoch> {
        Some(Epoch {
            term: seen.term.checked_add(1)?,
            coordinator: coordinator.to_string(),
        })
    }

    /// Whether an honest coordinator could send this epoch to someone who
    /// has seen `seen`: at most [`MAX_TERM_STEP`] terms above it.
    pub fn plausible_after(&self, seen: &Epoch) -> bool {
        self.term <= seen.term.saturating_add(MAX_TERM_STEP)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.coordinator.is_empty() {
            write!(f, "{}", self.term)
        } else {
            write!(f, "{}/{}", self.term, self.coordinator)
        }
    }
}

/// Who holds a grant: a coordinator id and the random nonce of that
/// process. Two processes started with the same id (a duplicate, or a
/// restart within its own lease) differ in the nonce, so a voter treats the
/// second as another holder and makes it wait the first one's lease out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HolderId {
    /// The coordinator's configured id.
    pub coordinator: String,
    /// Random per process.
    pub incarnation: u64,
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:016x}", self.coordinator, self.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_order_by_term_then_coordinator() {
        let a = Epoch {
            term: 3,
            coordinator: "c2".into(),
        };
        let b = Epoch {
            term: 4,
            coordinator: "c1".into(),
        };
        let c = Epoch {
            term: 4,
            coordinator: "c2".into(),
        };
        assert!(Epoch::zero() < a && a < b && b < c);
        assert_eq!(
            Epoch::next_after(&c, "c1"),
            Some(Epoch {
                term: 5,
                coordinator: "c1".into()
            })
        );
        assert_eq!(c.to_string(), "4/c2");
    }

    #[test]
    fn no_term_wraps_and_a_forged_leap_is_implausible() {
        let max = Epoch {
            term: u64::MAX,
            coordinator: "zz".into(),
        };
        assert_eq!(Epoch::next_after(&max, "c1"), None);
        let seen = Epoch {
            term: 7,
            coordinator: "c1".into(),
        };
        assert!(!max.plausible_after(&seen));
        let step = Epoch {
            term: 7 + MAX_TERM_STEP,
            coordinator: "c2".into(),
        };
        assert!(step.plausible_after(&seen));
        let beyond = Epoch {
            term: 8 + MAX_TERM_STEP,
            coordinator: "c2".into(),
        };
        assert!(!beyond.plausible_after(&seen));
        assert!(max.plausible_after(&max), "nothing wraps at the top");
    }
}
