//! Inputs for the property tests of everything that parses outside input
//! (reports, commands, votes, admin requests, binlogs, configs): a valid
//! example, then mutated the way a broken or hostile peer would send it,
//! with bytes overwritten, the end cut off and garbage appended. A parser
//! must answer each with a value or an error, never a panic.

use proptest::prelude::*;

/// `seed` with up to 8 bytes overwritten, cut at some length and up to 16
/// bytes appended.
pub fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len();
    (
        prop::collection::vec((0..len.max(1), any::<u8>()), 0..8),
        0..=len,
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(edits, cut, tail)| {
            let mut b = seed.clone();
            for (i, v) in edits {
                if i < b.len() {
                    b[i] = v;
                }
            }
            b.truncate(cut);
            b.extend(tail);
            b
        })
}

/// Text mutated the same way, kept where it is valid UTF-8 (config files).
pub fn mutated_text(seed: &str) -> impl Strategy<Value = String> {
    mutated(seed.as_bytes().to_vec()).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}
