//! The voter list and its quorum arithmetic, including the joint
//! configuration used while the list changes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The voters whose grants make a lease, with weights. While the list
/// changes, `joint` holds the next list and a quorum needs a weighted
/// majority of both, so the old and new lists can never elect two holders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterSet {
    /// Raised by every change; voters refuse requests of an older version.
    pub version: u64,
    /// Voter name → weight.
    pub voters: BTreeMap<String, u32>,
    /// The list being changed to, while a change is in progress.
    #[serde(default)]
    pub joint: Option<BTreeMap<String, u32>>,
}

/// Why a voter list is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoterSetError {
    /// No voters at all.
    #[error("the voter list is empty; name at least one voter (three or more for fault tolerance)")]
    Empty,
    /// A weight of zero would make a voter meaningless.
    #[error("voter {0} has weight 0; give it weight 1 or leave it out")]
    ZeroWeight(String),
}

impl VoterSet {
    /// A first (version 1) list.
    pub fn new(voters: BTreeMap<String, u32>) -> Result<VoterSet, VoterSetError> {
        check(&voters)?;
        Ok(VoterSet {
            version: 1,
            voters,
            joint: None,
        })
    }

    /// Every voter of the current and (while changing) the next list.
    pub fn members(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.voters.keys().cloned().collect();
        if let Some(j) = &self.joint {
            all.extend(j.keys().cloned());
        }
        all
    }

    /// Whether the voters in `granted` form a weighted majority (of both
    /// lists while changing).
    pub fn is_quorum(&self, granted: &BTreeSet<String>) -> bool {
        majority(&self.voters, granted) && self.joint.as_ref().is_none_or(|j| majority(j, granted))
    }

    /// The joint configuration that starts a change to `next`.
    pub fn begin_change(&self, next: BTreeMap<String, u32>) -> Result<VoterSet, VoterSetError> {
        check(&next)?;
        Ok(VoterSet {
            version: self.version + 1,
            voters: self.voters.clone(),
            joint: Some(next),
        })
    }

    /// The configuration that ends a change: only the next list remains.
    pub fn finish_change(&self) -> VoterSet {
        match &self.joint {
            Some(next) => VoterSet {
                version: self.version + 1,
                voters: next.clone(),
                joint: None,
            },
            None => self.clone(),
        }
    }
}

fn check(voters: &BTreeMap<String, u32>) -> Result<(), VoterSetError> {
    if voters.is_empty() {
        return Err(VoterSetError::Empty);
    }
    if let Some((name, _)) = voters.iter().find(|(_, w)| **w == 0) {
        return Err(VoterSetError::ZeroWeight(name.clone()));
    }
    Ok(())
}

fn majority(voters: &BTreeMap<String, u32>, granted: &BTreeSet<String>) -> bool {
    let total: u64 = voters.values().map(|w| u64::from(*w)).sum();
    let got: u64 = voters
        .iter()
        .filter(|(n, _)| granted.contains(*n))
        .map(|(_, w)| u64::from(*w))
        .sum();
    got * 2 > total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeMap<String, u32> {
        names.iter().map(|n| (n.to_string(), 1)).collect()
    }
    fn granted(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn majority_is_strictly_more_than_half_the_weight() {
        let v = VoterSet::new(set(&["a", "b", "c", "d"])).unwrap();
        assert!(!v.is_quorum(&granted(&["a", "b"])));
        assert!(v.is_quorum(&granted(&["a", "b", "c"])));
        let mut w = set(&["a", "b", "c"]);
        w.insert("a".into(), 3);
        let v = VoterSet::new(w).unwrap();
        assert!(v.is_quorum(&granted(&["a"])));
        assert!(!v.is_quorum(&granted(&["b", "c"])));
    }

    #[test]
    fn a_joint_configuration_needs_both_majorities() {
        let v = VoterSet::new(set(&["a", "b", "c"])).unwrap();
        let j = v.begin_change(set(&["c", "d", "e"])).unwrap();
        assert_eq!(j.version, 2);
        assert_eq!(j.members().len(), 5);
        assert!(!j.is_quorum(&granted(&["a", "b", "c"])));
        assert!(!j.is_quorum(&granted(&["c", "d", "e"])));
        assert!(j.is_quorum(&granted(&["a", "c", "d"])));
        let f = j.finish_change();
        assert_eq!(f.version, 3);
        assert!(f.is_quorum(&granted(&["d", "e"])));
    }

    #[test]
    fn bad_lists_are_refused() {
        assert_eq!(VoterSet::new(BTreeMap::new()), Err(VoterSetError::Empty));
        let mut w = set(&["a"]);
        w.insert("b".into(), 0);
        assert_eq!(VoterSet::new(w), Err(VoterSetError::ZeroWeight("b".into())));
    }
}
