//! MySQL GTID sets (`@@gtid_executed`, `uuid:1-5:7,uuid2:1-3`) and the set
//! algebra failover and replica checks need.
//!
//! MariaDB (see [`crate::gtid`]) keeps one position per replication
//! domain, and strict mode makes sequence numbers grow, so "has everything
//! up to" is a comparison of numbers. MySQL has no such order: a server's
//! history is the *set* of transactions it has applied, named by the UUID
//! of the server that first wrote each one (and, from MySQL 8.3, a tag)
//! and a transaction number. Holes are normal (parallel appliers, skipped
//! transactions, purged and re-imported data), so a set is a list of
//! intervals per source rather than a high-water mark. Comparisons are
//! therefore set comparisons:
//!
//! * "replica B has everything A has" is `A ⊆ B` ([`GtidSet::is_subset_of`]);
//! * "what B still has to apply from A" is the difference `A − B`
//!   ([`GtidSet::subtract`]), and its size is [`GtidSet::count`].
//!
//! An *errant transaction* is one a replica executed that its primary
//! never did (a write made directly on the replica): it is in
//! `replica − primary`. Promoting such a replica would replay it onto every
//! other server, or it gets lost, so before failover the candidates'
//! errant sets must be examined; a replica whose set is a subset of the
//! primary's has none.
//!
//! Everything here is pure: parsing, canonical printing and the set
//! operations, with no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// Longest tag MySQL accepts (`TAG_MAX_LENGTH`).
const TAG_MAX_LEN: usize = 32;

/// Inclusive intervals `(first, last)` of transaction numbers, kept sorted,
/// non-overlapping and non-adjacent (`last + 1 < next.first`), all `>= 1`,
/// so two equal sets are equal values.
type Intervals = Vec<(u64, u64)>;

/// An operation on two normal interval lists giving a normal one.
type IntervalOp = fn(&[(u64, u64)], &[(u64, u64)]) -> Intervals;

/// Source UUID to tag (empty: untagged) to intervals.
type Sources = BTreeMap<String, BTreeMap<String, Intervals>>;

/// A set of MySQL GTIDs, kept in normal form: UUIDs and tags lower case,
/// no source or tag without transactions, intervals merged. Because the
/// form is normal, `==` is set equality.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidSet(Sources);

/// Why text is not a MySQL GTID set. Each message quotes the element
/// (the `uuid:...` between commas) and says what in it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GtidSetError {
    /// The text before the first colon is not a server UUID.
    #[error(
        "{element:?} is not a MySQL GTID set element: {uuid:?} is not a server UUID (8-4-4-4-12 hexadecimal digits, as in @@server_uuid)"
    )]
    BadUuid {
        /// The element.
        element: String,
        /// What stands where the UUID should.
        uuid: String,
    },
    /// A UUID with no transaction numbers after it.
    #[error(
        "{element:?} is not a MySQL GTID set element: the server UUID is followed by no transaction numbers (write it as UUID:1-5)"
    )]
    NoTransactions {
        /// The element.
        element: String,
    },
    /// Two colons in a row, or a colon at the end.
    #[error(
        "{element:?} is not a MySQL GTID set element: it has an empty part between colons or after the last one"
    )]
    EmptyPart {
        /// The element.
        element: String,
    },
    /// A part that is neither a number, a range nor a tag.
    #[error(
        "{element:?} is not a MySQL GTID set element: {part:?} is neither a transaction number, a range such as 1-5, nor a tag name"
    )]
    BadPart {
        /// The element.
        element: String,
        /// The unreadable part.
        part: String,
    },
    /// A number too large for a transaction number.
    #[error(
        "{element:?} is not a MySQL GTID set element: {part:?} is larger than any transaction number"
    )]
    TooLarge {
        /// The element.
        element: String,
        /// The part holding the number.
        part: String,
    },
    /// Transaction number 0, which MySQL never assigns.
    #[error(
        "{element:?} is not a MySQL GTID set element: {part:?} names transaction 0, but transaction numbers start at 1"
    )]
    Zero {
        /// The element.
        element: String,
        /// The part holding the 0.
        part: String,
    },
    /// A range whose end comes before its start.
    #[error(
        "{element:?} is not a MySQL GTID set element: the range {first}-{last} runs backwards (write {last}-{first})"
    )]
    Reversed {
        /// The element.
        element: String,
        /// Where the range starts.
        first: u64,
        /// Where it ends.
        last: u64,
    },
    /// A tag longer than MySQL allows.
    #[error(
        "{element:?} is not a MySQL GTID set element: the tag {tag:?} is longer than the 32 characters MySQL allows"
    )]
    TagTooLong {
        /// The element.
        element: String,
        /// The tag.
        tag: String,
    },
    /// A tag with no transaction numbers after it.
    #[error(
        "{element:?} is not a MySQL GTID set element: the tag {tag:?} is followed by no transaction numbers (write {tag}:1-5)"
    )]
    TagWithoutTransactions {
        /// The element.
        element: String,
        /// The tag.
        tag: String,
    },
}

impl GtidSet {
    /// Parses a GTID set as MySQL prints it: `uuid:1-5:7,uuid2:tag:1-3`,
    /// with any whitespace (MySQL breaks multi-source sets with `,\n`) and
    /// UUIDs and tags in either case. Empty text is the empty set, empty
    /// elements between commas are skipped (as MySQL does), and a UUID or
    /// tag repeated, or intervals overlapping, are merged.
    pub fn parse(text: &str) -> Result<GtidSet, GtidSetError> {
        let mut raw: Sources = BTreeMap::new();
        for element in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            parse_element(element, &mut raw)?;
        }
        Ok(GtidSet::from_raw(raw))
    }

    /// Builds the normal form from intervals in any order: sorts and merges
    /// them and drops sources and tags left without transactions.
    fn from_raw(raw: Sources) -> GtidSet {
        let mut out = BTreeMap::new();
        for (uuid, tags) in raw {
            let tags: BTreeMap<String, Intervals> = tags
                .into_iter()
                .map(|(tag, iv)| (tag, normalise(iv)))
                .filter(|(_, iv)| !iv.is_empty())
                .collect();
            if !tags.is_empty() {
                out.insert(uuid, tags);
            }
        }
        GtidSet(out)
    }

    /// Applies `op` to the intervals of every (source, tag) either set has
    /// (an absent one as empty) and keeps the non-empty results.
    fn combine(&self, other: &GtidSet, op: IntervalOp) -> GtidSet {
        let empty = BTreeMap::new();
        let uuids: BTreeSet<&String> = self.0.keys().chain(other.0.keys()).collect();
        let mut out = BTreeMap::new();
        for uuid in uuids {
            let mine = self.0.get(uuid).unwrap_or(&empty);
            let theirs = other.0.get(uuid).unwrap_or(&empty);
            let tag_names: BTreeSet<&String> = mine.keys().chain(theirs.keys()).collect();
            let mut tags = BTreeMap::new();
            for tag in tag_names {
                let a = mine.get(tag).map_or(&[][..], Vec::as_slice);
                let b = theirs.get(tag).map_or(&[][..], Vec::as_slice);
                let iv = op(a, b);
                if !iv.is_empty() {
                    tags.insert(tag.clone(), iv);
                }
            }
            if !tags.is_empty() {
                out.insert(uuid.clone(), tags);
            }
        }
        GtidSet(out)
    }

    /// Adds transactions `first..=last` of source `uuid` under `tag`
    /// (empty: untagged), as a binlog's GTID events and PREVIOUS_GTIDS
    /// events name them. `first` is at least 1 and not above `last`
    /// (MySQL never numbers a transaction 0); other ranges add nothing.
    pub fn insert_range(&mut self, uuid: &str, tag: &str, first: u64, last: u64) {
        if first == 0 || last < first {
            return;
        }
        let one = GtidSet(BTreeMap::from([(
            uuid.to_ascii_lowercase(),
            BTreeMap::from([(tag.to_ascii_lowercase(), vec![(first, last)])]),
        )]));
        *self = self.union(&one);
    }

    /// Every transaction either set has.
    pub fn union(&self, other: &GtidSet) -> GtidSet {
        self.combine(other, union_intervals)
    }

    /// The transactions `self` has that `other` lacks: what a server at
    /// `other` still has to apply to reach `self`, or, with `self` a
    /// replica and `other` its primary, the replica's errant transactions.
    pub fn subtract(&self, other: &GtidSet) -> GtidSet {
        self.combine(other, subtract_intervals)
    }

    /// The transactions both sets have.
    pub fn intersection(&self, other: &GtidSet) -> GtidSet {
        self.combine(other, intersect_intervals)
    }

    /// Whether `other` has every transaction of `self` (a server at
    /// `other` is at least as far as one at `self`).
    pub fn is_subset_of(&self, other: &GtidSet) -> bool {
        self.0.iter().all(|(uuid, tags)| {
            tags.iter().all(|(tag, iv)| {
                other
                    .0
                    .get(uuid)
                    .and_then(|t| t.get(tag))
                    .is_some_and(|theirs| intervals_within(iv, theirs))
            })
        })
    }

    /// The number of transactions in the set (saturating at `u64::MAX`).
    pub fn count(&self) -> u64 {
        self.0
            .values()
            .flat_map(BTreeMap::values)
            .flatten()
            .fold(0u64, |n, &(first, last)| n.saturating_add(last - first + 1))
    }

    /// No transaction at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the set has transaction `number` of source `uuid` under
    /// `tag` (empty for untagged GTIDs); UUID and tag in either case.
    pub fn contains(&self, uuid: &str, tag: &str, number: u64) -> bool {
        self.0
            .get(&uuid.to_ascii_lowercase())
            .and_then(|tags| tags.get(&tag.to_ascii_lowercase()))
            .is_some_and(|iv| {
                // The first interval starting after `number`; the one
                // before it is the only one that can hold `number`.
                let i = iv.partition_point(|&(first, _)| first <= number);
                i > 0 && iv[i - 1].1 >= number
            })
    }

    /// The transactions written by source `uuid` (any case), all tags.
    pub fn from_source(&self, uuid: &str) -> GtidSet {
        let uuid = uuid.to_ascii_lowercase();
        GtidSet(
            self.0
                .get(&uuid)
                .map(|tags| BTreeMap::from([(uuid, tags.clone())]))
                .unwrap_or_default(),
        )
    }

    /// The transactions of `self` numbered above `other`'s highest for the
    /// same UUID and tag (all of them where `other` has none): what a
    /// source wrote after `other` was read, as opposed to holes below it.
    pub fn beyond(&self, other: &GtidSet) -> GtidSet {
        let mut out = Sources::new();
        for (uuid, tags) in &self.0 {
            for (tag, intervals) in tags {
                let last = other
                    .0
                    .get(uuid)
                    .and_then(|t| t.get(tag))
                    .and_then(|i| i.last())
                    .map_or(0, |&(_, end)| end);
                let kept: Intervals = intervals
                    .iter()
                    .filter(|&&(_, end)| end > last)
                    .map(|&(start, end)| (start.max(last + 1), end))
                    .collect();
                if !kept.is_empty() {
                    out.entry(uuid.clone())
                        .or_default()
                        .insert(tag.clone(), kept);
                }
            }
        }
        GtidSet(out)
    }

    /// The distinct source UUIDs (lower case, ascending).
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl FromStr for GtidSet {
    type Err = GtidSetError;

    fn from_str(text: &str) -> Result<GtidSet, GtidSetError> {
        GtidSet::parse(text)
    }
}

impl fmt::Display for GtidSet {
    /// MySQL's canonical form on one line: sources ascending, each with its
    /// untagged intervals first, then `:tag:intervals` per tag in order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (uuid, tags)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(uuid)?;
            // "" sorts first, so untagged intervals come before any tag.
            for (tag, iv) in tags {
                if !tag.is_empty() {
                    write!(f, ":{tag}")?;
                }
                for &(first, last) in iv {
                    if first == last {
                        write!(f, ":{first}")?;
                    } else {
                        write!(f, ":{first}-{last}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Parses one `uuid:part:part...` element (already trimmed, non-empty)
/// into `raw`, unnormalised.
fn parse_element(element: &str, raw: &mut Sources) -> Result<(), GtidSetError> {
    let mut parts = element.split(':');
    let uuid = parts.next().unwrap_or_default().trim();
    if !is_uuid(uuid) {
        return Err(GtidSetError::BadUuid {
            element: element.to_owned(),
            uuid: uuid.to_owned(),
        });
    }
    let tags = raw.entry(uuid.to_ascii_lowercase()).or_default();
    let mut tag = String::new();
    // A tag named but not yet followed by an interval.
    let mut tag_pending = false;
    let mut any = false;
    for part in parts {
        let part = part.trim();
        any = true;
        if part.is_empty() {
            return Err(GtidSetError::EmptyPart {
                element: element.to_owned(),
            });
        }
        if part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            if !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad_part(element, part));
            }
            if tag_pending {
                return Err(GtidSetError::TagWithoutTransactions {
                    element: element.to_owned(),
                    tag,
                });
            }
            if part.len() > TAG_MAX_LEN {
                return Err(GtidSetError::TagTooLong {
                    element: element.to_owned(),
                    tag: part.to_owned(),
                });
            }
            tag = part.to_ascii_lowercase();
            tag_pending = true;
            continue;
        }
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (
                parse_number(element, part, a.trim())?,
                parse_number(element, part, b.trim())?,
            ),
            None => {
                let n = parse_number(element, part, part)?;
                (n, n)
            }
        };
        if last < first {
            return Err(GtidSetError::Reversed {
                element: element.to_owned(),
                first,
                last,
            });
        }
        tags.entry(tag.clone()).or_default().push((first, last));
        tag_pending = false;
    }
    if tag_pending {
        return Err(GtidSetError::TagWithoutTransactions {
            element: element.to_owned(),
            tag,
        });
    }
    if !any {
        return Err(GtidSetError::NoTransactions {
            element: element.to_owned(),
        });
    }
    Ok(())
}

fn bad_part(element: &str, part: &str) -> GtidSetError {
    GtidSetError::BadPart {
        element: element.to_owned(),
        part: part.to_owned(),
    }
}

/// A transaction number: decimal digits only (no sign), at least 1.
fn parse_number(element: &str, part: &str, digits: &str) -> Result<u64, GtidSetError> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_part(element, part));
    }
    let n: u64 = digits.parse().map_err(|_| GtidSetError::TooLarge {
        element: element.to_owned(),
        part: part.to_owned(),
    })?;
    if n == 0 {
        return Err(GtidSetError::Zero {
            element: element.to_owned(),
            part: part.to_owned(),
        });
    }
    Ok(n)
}

/// `8-4-4-4-12` hexadecimal digits, either case.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Sorts and merges overlapping and adjacent intervals.
fn normalise(mut iv: Intervals) -> Intervals {
    iv.sort_unstable();
    let mut out: Intervals = Vec::with_capacity(iv.len());
    for (first, last) in iv {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

fn union_intervals(a: &[(u64, u64)], b: &[(u64, u64)]) -> Intervals {
    normalise(a.iter().chain(b).copied().collect())
}

/// `a − b` for normal interval lists: walks both in order, cutting each
/// interval of `a` by the intervals of `b` that overlap it.
fn subtract_intervals(a: &[(u64, u64)], b: &[(u64, u64)]) -> Intervals {
    let mut out = Vec::new();
    let mut j = 0;
    for &(first, last) in a {
        // Intervals of `b` ending before this one cannot touch later ones.
        while j < b.len() && b[j].1 < first {
            j += 1;
        }
        // The first number of this interval not yet known to be in `b`;
        // `None` once `b` covers the rest (`last + 1` could overflow).
        let mut start = Some(first);
        let mut k = j;
        while let (Some(s), Some(&(bf, bl))) = (start, b.get(k)) {
            if bf > last {
                break;
            }
            if bf > s {
                out.push((s, bf - 1));
            }
            start = (bl < last).then(|| bl + 1);
            k += 1;
        }
        if let Some(s) = start {
            out.push((s, last));
        }
    }
    out
}

/// `a ∩ b` for normal interval lists.
fn intersect_intervals(a: &[(u64, u64)], b: &[(u64, u64)]) -> Intervals {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let first = a[i].0.max(b[j].0);
        let last = a[i].1.min(b[j].1);
        if first <= last {
            out.push((first, last));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Whether every interval of `a` lies inside one of `b` (both normal, so
/// an interval of `a` can never need two of `b`).
fn intervals_within(a: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
    let mut j = 0;
    a.iter().all(|&(first, last)| {
        while j < b.len() && b[j].1 < first {
            j += 1;
        }
        j < b.len() && b[j].0 <= first && last <= b[j].1
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const U2: &str = "7c6f8a9e-0b1d-11ee-8c4b-0242ac120002";
    const U3: &str = "ffffffff-0000-4000-8000-000000000001";
    const MAX: u64 = u64::MAX;

    /// Replaces `U1`, `U2`, `U3` in a template by the UUIDs.
    fn t(template: &str) -> String {
        template
            .replace("U1", U1)
            .replace("U2", U2)
            .replace("U3", U3)
    }

    fn s(template: &str) -> GtidSet {
        GtidSet::parse(&t(template)).unwrap()
    }

    fn err(template: &str) -> GtidSetError {
        GtidSet::parse(&t(template)).unwrap_err()
    }

    /// The normal form every value must be in.
    fn assert_normal(set: &GtidSet) {
        for (uuid, tags) in &set.0 {
            assert!(
                is_uuid(uuid) && *uuid == uuid.to_ascii_lowercase(),
                "{uuid}"
            );
            assert!(!tags.is_empty(), "source {uuid} without tags");
            for (tag, iv) in tags {
                assert_eq!(*tag, tag.to_ascii_lowercase());
                assert!(!iv.is_empty(), "tag {tag:?} without intervals");
                for &(first, last) in iv {
                    assert!(1 <= first && first <= last, "{iv:?}");
                }
                for w in iv.windows(2) {
                    assert!(w[0].1.saturating_add(1) < w[1].0, "not merged: {iv:?}");
                }
            }
        }
    }

    #[test]
    fn parses_what_mysql_prints() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("   \n\t ", ""),
            ("U1:1-5", "U1:1-5"),
            ("U1:7", "U1:7"),
            ("U1:5-5", "U1:5"),
            ("U1:1-5:7:9-10", "U1:1-5:7:9-10"),
            // MySQL's own multi-source layout
            ("U2:1,\nU1:1-8", "U1:1-8,U2:1"),
            ("U1:1-8,\r\nU2:1\n", "U1:1-8,U2:1"),
            // whitespace between any two tokens, as MySQL's parser allows
            ("  U1 : 1 - 5 :\n7 ,\n U2 :3 ", "U1:1-5:7,U2:3"),
            // upper-case UUID
            (
                "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-3",
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-3",
            ),
            // repeated UUID, in either case
            ("U1:1-3,U1:7", "U1:1-3:7"),
            (
                "U1:1,3E11FA47-71CA-11E1-9E33-C80AA9429562:2",
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-2",
            ),
            // overlapping, adjacent, contained and unordered intervals
            ("U1:1-5:3-8", "U1:1-8"),
            ("U1:1-3:4-5", "U1:1-5"),
            ("U1:1-3,U1:4-5", "U1:1-5"),
            ("U1:1-10:2-3:5", "U1:1-10"),
            ("U1:9-10:1:3-4", "U1:1:3-4:9-10"),
            // empty elements are skipped, as MySQL does
            ("U1:1,", "U1:1"),
            (",,U1:1,,U2:2,", "U1:1,U2:2"),
            // leading zeros and the largest number
            ("U1:007", "U1:7"),
            ("U1:18446744073709551615", "U1:18446744073709551615"),
            ("U1:1-18446744073709551615", "U1:1-18446744073709551615"),
            // tags (MySQL 8.3+)
            ("U1:1-5:mytag:1-3:other:7", "U1:1-5:mytag:1-3:other:7"),
            ("U1:mytag:1-3", "U1:mytag:1-3"),
            ("U1:MyTag:1-3:mytag:4", "U1:mytag:1-4"),
            ("U1:z:1:a:2", "U1:a:2:z:1"),
            ("U1:t:1:2-3:5", "U1:t:1-3:5"),
            ("U1:t:1,U1:2", "U1:2:t:1"),
            ("U1:_x9:1", "U1:_x9:1"),
            (
                "U1:abcdefghijklmnopqrstuvwxyz012345:1",
                "U1:abcdefghijklmnopqrstuvwxyz012345:1",
            ),
            ("U1:1:a:1,U2:b:2", "U1:1:a:1,U2:b:2"),
        ];
        for (text, canonical) in cases {
            let set =
                GtidSet::parse(&t(text)).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"));
            assert_normal(&set);
            assert_eq!(set.to_string(), t(canonical), "parsing {text:?}");
            assert_eq!(GtidSet::parse(&set.to_string()).unwrap(), set);
            assert_eq!(t(text).parse::<GtidSet>().unwrap(), set);
        }
    }

    #[test]
    fn parse_errors_name_the_bad_part() {
        use GtidSetError as E;
        let el = |s: &str| t(s);
        let cases: Vec<(&str, GtidSetError)> = vec![
            (
                "xyz:1",
                E::BadUuid {
                    element: "xyz:1".into(),
                    uuid: "xyz".into(),
                },
            ),
            (
                "hello",
                E::BadUuid {
                    element: "hello".into(),
                    uuid: "hello".into(),
                },
            ),
            (
                ":1",
                E::BadUuid {
                    element: ":1".into(),
                    uuid: String::new(),
                },
            ),
            (
                // no hyphens
                "3e11fa4771ca11e19e33c80aa9429562:1",
                E::BadUuid {
                    element: "3e11fa4771ca11e19e33c80aa9429562:1".into(),
                    uuid: "3e11fa4771ca11e19e33c80aa9429562".into(),
                },
            ),
            (
                // not hex
                "3e11fa47-71ca-11e1-9e33-c80aa942956g:1",
                E::BadUuid {
                    element: "3e11fa47-71ca-11e1-9e33-c80aa942956g:1".into(),
                    uuid: "3e11fa47-71ca-11e1-9e33-c80aa942956g".into(),
                },
            ),
            (
                // hyphen in the wrong place
                "3e11fa4-771ca-11e1-9e33-c80aa9429562:1",
                E::BadUuid {
                    element: "3e11fa4-771ca-11e1-9e33-c80aa9429562:1".into(),
                    uuid: "3e11fa4-771ca-11e1-9e33-c80aa9429562".into(),
                },
            ),
            (
                // braces
                "{3e11fa47-71ca-11e1-9e33-c80aa9429562}:1",
                E::BadUuid {
                    element: "{3e11fa47-71ca-11e1-9e33-c80aa9429562}:1".into(),
                    uuid: "{3e11fa47-71ca-11e1-9e33-c80aa9429562}".into(),
                },
            ),
            (
                // a bad element after a good one
                "U1:1,U2x:1",
                E::BadUuid {
                    element: el("U2x:1"),
                    uuid: el("U2x"),
                },
            ),
            ("U1", E::NoTransactions { element: el("U1") }),
            ("U1:1,U2", E::NoTransactions { element: el("U2") }),
            ("U1:", E::EmptyPart { element: el("U1:") }),
            (
                "U1::1",
                E::EmptyPart {
                    element: el("U1::1"),
                },
            ),
            (
                "U1:1:",
                E::EmptyPart {
                    element: el("U1:1:"),
                },
            ),
            (
                "U1:1: :2",
                E::EmptyPart {
                    element: el("U1:1: :2"),
                },
            ),
            (
                "U1:5-3",
                E::Reversed {
                    element: el("U1:5-3"),
                    first: 5,
                    last: 3,
                },
            ),
            (
                "U1:1-2:10-9",
                E::Reversed {
                    element: el("U1:1-2:10-9"),
                    first: 10,
                    last: 9,
                },
            ),
            (
                "U1:0",
                E::Zero {
                    element: el("U1:0"),
                    part: "0".into(),
                },
            ),
            (
                "U1:0-3",
                E::Zero {
                    element: el("U1:0-3"),
                    part: "0-3".into(),
                },
            ),
            (
                "U1:000",
                E::Zero {
                    element: el("U1:000"),
                    part: "000".into(),
                },
            ),
            (
                "U1:t:0",
                E::Zero {
                    element: el("U1:t:0"),
                    part: "0".into(),
                },
            ),
            (
                "U1:tag",
                E::TagWithoutTransactions {
                    element: el("U1:tag"),
                    tag: "tag".into(),
                },
            ),
            (
                "U1:1-5:Tag",
                E::TagWithoutTransactions {
                    element: el("U1:1-5:Tag"),
                    tag: "tag".into(),
                },
            ),
            (
                "U1:a:b:1",
                E::TagWithoutTransactions {
                    element: el("U1:a:b:1"),
                    tag: "a".into(),
                },
            ),
            (
                "U1:abcdefghijklmnopqrstuvwxyz0123456:1",
                E::TagTooLong {
                    element: el("U1:abcdefghijklmnopqrstuvwxyz0123456:1"),
                    tag: "abcdefghijklmnopqrstuvwxyz0123456".into(),
                },
            ),
            (
                "U1:18446744073709551616",
                E::TooLarge {
                    element: el("U1:18446744073709551616"),
                    part: "18446744073709551616".into(),
                },
            ),
            (
                "U1:1-99999999999999999999",
                E::TooLarge {
                    element: el("U1:1-99999999999999999999"),
                    part: "1-99999999999999999999".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), want, "parsing {text:?}");
        }
        // Parts that are neither numbers, ranges nor tags.
        for part in [
            "1-2-3", "-5", "5-", "-", "+5", "1 0", "1x", "t-x", "tag!", "9tag", "1.5", "1;2", "١",
            "a b",
        ] {
            let text = format!("U1:{part}");
            assert_eq!(
                err(&text),
                E::BadPart {
                    element: t(&text),
                    part: part.into()
                },
                "parsing {text:?}"
            );
        }
        // The whole text is garbage.
        assert!(matches!(err("this is not a gtid set"), E::BadUuid { .. }));
        assert!(matches!(err("U1:1;U2:1"), E::BadPart { .. }));
        assert!(matches!(err("0-1-42"), E::BadUuid { .. }));
    }

    #[test]
    fn error_messages_are_sentences_for_a_dba() {
        assert_eq!(
            err("xyz:1").to_string(),
            "\"xyz:1\" is not a MySQL GTID set element: \"xyz\" is not a server UUID \
             (8-4-4-4-12 hexadecimal digits, as in @@server_uuid)"
        );
        assert_eq!(
            err("U1:5-3").to_string(),
            t(
                "\"U1:5-3\" is not a MySQL GTID set element: the range 5-3 runs backwards (write 3-5)"
            )
        );
        assert_eq!(
            err("U1:t").to_string(),
            t(
                "\"U1:t\" is not a MySQL GTID set element: the tag \"t\" is followed by no \
               transaction numbers (write t:1-5)"
            )
        );
        for text in [
            "xyz:1",
            "U1",
            "U1:",
            "U1:x-1",
            "U1:99999999999999999999",
            "U1:0",
            "U1:2-1",
            "U1:t",
            "U1:abcdefghijklmnopqrstuvwxyz0123456:1",
        ] {
            let msg = err(text).to_string();
            assert!(
                msg.starts_with(&format!("{:?} is not a MySQL GTID set element: ", t(text))),
                "{msg}"
            );
            assert!(
                !msg.contains('{') && !msg.contains("Some(") && !msg.ends_with('.'),
                "{msg}"
            );
        }
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(GtidSet::default().to_string(), "");
        assert_eq!(
            s("U2:3,U1:2:1,U3:6:z:5:a:4").to_string(),
            t("U1:1-2,U2:3,U3:6:a:4:z:5")
        );
        assert_eq!(s("U1:1:3:5-6").to_string(), t("U1:1:3:5-6"));
        assert!(!s("U1:1-8,\nU2:1").to_string().contains(char::is_whitespace));
    }

    #[test]
    fn union_merges() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "", ""),
            ("U1:1-3", "", "U1:1-3"),
            ("U1:1-3", "U1:4-5", "U1:1-5"),
            ("U1:1-3", "U1:5", "U1:1-3:5"),
            ("U1:1-3:7-9", "U1:4-6", "U1:1-9"),
            ("U1:1-10", "U1:3-4", "U1:1-10"),
            ("U1:1", "U2:1", "U1:1,U2:1"),
            ("U1:1", "U1:t:1", "U1:1:t:1"),
            ("U1:t:1-2", "U1:t:3,U2:u:1", "U1:t:1-3,U2:u:1"),
            (
                "U1:1-18446744073709551614",
                "U1:18446744073709551615",
                "U1:1-18446744073709551615",
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(s(a).union(&s(b)), s(want), "{a} ∪ {b}");
            assert_eq!(s(b).union(&s(a)), s(want), "{b} ∪ {a}");
        }
    }

    #[test]
    fn inserted_ranges_merge_and_nonsense_ranges_add_nothing() {
        let mut set = GtidSet::default();
        set.insert_range(&U1.to_ascii_uppercase(), "", 1, 3);
        set.insert_range(U1, "", 4, 4);
        set.insert_range(U1, "", 7, 9);
        set.insert_range(U1, "", 0, 5);
        set.insert_range(U1, "", 12, 11);
        set.insert_range(U2, "T", 2, 2);
        assert_eq!(set, s("U1:1-4:7-9,U2:t:2"));
    }

    #[test]
    fn subtract_cuts_and_splits() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "", ""),
            ("", "U1:1-5", ""),
            ("U1:1-5", "", "U1:1-5"),
            ("U1:1-10", "U1:4-6", "U1:1-3:7-10"),
            ("U1:1-10", "U1:1", "U1:2-10"),
            ("U1:1-10", "U1:10", "U1:1-9"),
            ("U1:1-10", "U1:2:4:6-7", "U1:1:3:5:8-10"),
            ("U1:1-10", "U1:1-10", ""),
            ("U1:1-10", "U1:1-20", ""),
            ("U1:3-5:8-12", "U1:1-4:6-9:11-30", "U1:5:10"),
            ("U1:1-5", "U2:1-5", "U1:1-5"),
            ("U1:1-5,U2:1-5", "U2:1-5", "U1:1-5"),
            ("U1:1-5:t:1-5", "U1:1-5", "U1:t:1-5"),
            ("U1:1-5:t:1-5", "U1:t:2-3", "U1:1-5:t:1:4-5"),
            (
                "U1:1-18446744073709551615",
                "U1:5-18446744073709551615",
                "U1:1-4",
            ),
            (
                "U1:1-18446744073709551615",
                "U1:1-3",
                "U1:4-18446744073709551615",
            ),
            ("U1:18446744073709551615", "U1:1-18446744073709551615", ""),
        ];
        for (a, b, want) in cases {
            let got = s(a).subtract(&s(b));
            assert_normal(&got);
            assert_eq!(got, s(want), "{a} − {b}");
        }
        // Nothing left is the empty set, not a source with no transactions.
        let none = s("U1:1-5:t:1").subtract(&s("U1:1-5:t:1"));
        assert!(none.is_empty() && none == GtidSet::default() && none.sources().count() == 0);
    }

    #[test]
    fn intersection_keeps_the_common_part() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "", ""),
            ("U1:1-5", "", ""),
            ("U1:1-5", "U1:3-8", "U1:3-5"),
            ("U1:1-5", "U1:6-8", ""),
            ("U1:1-10", "U1:2:4-5:9-20", "U1:2:4-5:9-10"),
            ("U1:1-3:5-7", "U1:3-5", "U1:3:5"),
            ("U1:1-5", "U2:1-5", ""),
            ("U1:1-5", "U1:t:1-5", ""),
            ("U1:1-5:t:1-5,U2:1", "U1:t:4-9,U2:1-2", "U1:t:4-5,U2:1"),
        ];
        for (a, b, want) in cases {
            assert_eq!(s(a).intersection(&s(b)), s(want), "{a} ∩ {b}");
            assert_eq!(s(b).intersection(&s(a)), s(want), "{b} ∩ {a}");
        }
    }

    #[test]
    fn subset_is_having_everything() {
        let cases: &[(&str, &str, bool)] = &[
            ("", "", true),
            ("", "U1:1", true),
            ("U1:1", "", false),
            ("U1:1-5", "U1:1-5", true),
            ("U1:1-5", "U1:1-10", true),
            ("U1:1-11", "U1:1-10", false),
            ("U1:1-10", "U1:1-4:6-10", false),
            ("U1:2:7", "U1:1-4:6-10", true),
            ("U1:5", "U1:1-4:6-10", false),
            ("U1:1", "U2:1", false),
            ("U1:1", "U1:1,U2:1", true),
            ("U1:t:1", "U1:1", false),
            ("U1:1", "U1:t:1", false),
            ("U1:t:1-2", "U1:1-9:t:1-3", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(s(a).is_subset_of(&s(b)), *want, "{a} ⊆ {b}");
        }
    }

    #[test]
    fn counts_transactions() {
        assert_eq!(GtidSet::default().count(), 0);
        assert_eq!(s("U1:1").count(), 1);
        assert_eq!(s("U1:1-5:7,U2:1").count(), 7);
        assert_eq!(s("U1:1-5:t:1-5").count(), 10);
        assert_eq!(s("U1:1-18446744073709551615").count(), MAX);
        assert_eq!(s("U1:1-18446744073709551615,U2:1").count(), MAX);
        assert_eq!(s("U1:2-18446744073709551615").count(), MAX - 1);
    }

    #[test]
    fn contains_single_transactions() {
        let set = s("U1:1-5:7:t:10-12,U2:3");
        let upper = U1.to_ascii_uppercase();
        let cases: &[(&str, &str, u64, bool)] = &[
            (U1, "", 1, true),
            (U1, "", 5, true),
            (U1, "", 6, false),
            (U1, "", 7, true),
            (U1, "", 8, false),
            (U1, "", 0, false),
            (U1, "", 10, false),
            (U1, "t", 10, true),
            (U1, "T", 12, true),
            (U1, "t", 13, false),
            (U1, "t", 1, false),
            (U1, "u", 10, false),
            (&upper, "", 3, true),
            (U2, "", 3, true),
            (U2, "", 2, false),
            (U3, "", 1, false),
            ("not-a-uuid", "", 1, false),
        ];
        for (uuid, tag, n, want) in cases {
            assert_eq!(set.contains(uuid, tag, *n), *want, "{uuid}:{tag}:{n}");
        }
        assert!(s("U1:18446744073709551615").contains(U1, "", MAX));
        assert!(!GtidSet::default().contains(U1, "", 1));
    }

    #[test]
    fn selects_sources() {
        let set = s("U2:1-3,U1:1:t:5,U3:u:1");
        assert_eq!(set.from_source(U1), s("U1:1:t:5"));
        assert_eq!(set.from_source(&U1.to_ascii_uppercase()), s("U1:1:t:5"));
        assert_eq!(set.from_source(U3), s("U3:u:1"));
        assert!(s("U2:1").from_source(U1).is_empty());
        assert!(GtidSet::default().from_source(U1).is_empty());
        assert_eq!(set.sources().collect::<Vec<_>>(), vec![U1, U2, U3]);
        assert_eq!(s("U1:1:a:1:b:1").sources().collect::<Vec<_>>(), vec![U1]);
        assert_eq!(GtidSet::default().sources().count(), 0);
    }

    #[test]
    fn finds_errant_transactions() {
        // The replica applied the primary's 1-100 up to 90, and someone
        // wrote two transactions directly on it.
        let primary = s("U1:1-100");
        let replica = s("U1:1-90,U2:1-2");
        let errant = replica.subtract(&primary);
        assert_eq!(errant, s("U2:1-2"));
        assert_eq!(primary.subtract(&replica).count(), 10);
        assert!(!replica.is_subset_of(&primary));
        // A clean replica has none.
        assert!(s("U1:1-90").subtract(&primary).is_empty());
        assert!(s("U1:1-90").is_subset_of(&primary));
    }

    // ---- property tests -------------------------------------------------

    const UUIDS: [&str; 3] = [U1, U2, U3];
    const TAGS: [&str; 3] = ["", "a", "tag_b"];

    type Model = BTreeSet<(String, String, u64)>;

    /// Raw intervals: (uuid index, tag index, first, last) in 1..=40.
    fn raw_intervals() -> impl Strategy<Value = Vec<(usize, usize, u64, u64)>> {
        prop::collection::vec((0..3usize, 0..3usize, 1u64..=40, 0u64..8), 0..10).prop_map(|v| {
            v.into_iter()
                .map(|(u, g, first, len)| (u, g, first, (first + len).min(40)))
                .collect()
        })
    }

    fn build(raw: &[(usize, usize, u64, u64)]) -> GtidSet {
        let mut map: Sources = BTreeMap::new();
        for &(u, g, first, last) in raw {
            map.entry(UUIDS[u].to_owned())
                .or_default()
                .entry(TAGS[g].to_owned())
                .or_default()
                .push((first, last));
        }
        GtidSet::from_raw(map)
    }

    fn model_of_raw(raw: &[(usize, usize, u64, u64)]) -> Model {
        raw.iter()
            .flat_map(|&(u, g, first, last)| {
                (first..=last).map(move |n| (UUIDS[u].to_owned(), TAGS[g].to_owned(), n))
            })
            .collect()
    }

    fn model(set: &GtidSet) -> Model {
        let mut out = Model::new();
        for (uuid, tags) in &set.0 {
            for (tag, iv) in tags {
                for &(first, last) in iv {
                    out.extend((first..=last).map(|n| (uuid.clone(), tag.clone(), n)));
                }
            }
        }
        out
    }

    fn gtid_set() -> impl Strategy<Value = GtidSet> {
        raw_intervals().prop_map(|raw| build(&raw))
    }

    /// How MySQL (or a person) might write raw intervals: one element per
    /// interval in the given order, case and spacing varied.
    fn render(raw: &[(usize, usize, u64, u64)], style: &[(bool, bool, bool)]) -> String {
        let parts: Vec<String> = raw
            .iter()
            .zip(style.iter().cycle())
            .map(|(&(u, g, first, last), &(upper, spaced, range))| {
                let uuid = if upper {
                    UUIDS[u].to_ascii_uppercase()
                } else {
                    UUIDS[u].to_owned()
                };
                let tag = match (TAGS[g], upper) {
                    ("", _) => String::new(),
                    (tag, true) => format!("{}:", tag.to_ascii_uppercase()),
                    (tag, false) => format!("{tag}:"),
                };
                let iv = if first == last && !range {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                };
                if spaced {
                    format!(" {uuid} :\n{tag} {iv} ")
                } else {
                    format!("{uuid}:{tag}{iv}")
                }
            })
            .collect();
        parts.join(",\n")
    }

    proptest! {
        #[test]
        fn parse_agrees_with_model(
            raw in raw_intervals(),
            style in prop::collection::vec(any::<(bool, bool, bool)>(), 1..4),
        ) {
            let text = render(&raw, &style);
            let set = GtidSet::parse(&text).unwrap();
            assert_normal(&set);
            prop_assert_eq!(model(&set), model_of_raw(&raw));
            prop_assert_eq!(&set, &build(&raw));
        }

        #[test]
        fn format_round_trips(a in gtid_set()) {
            let text = a.to_string();
            prop_assert!(!text.contains(char::is_whitespace));
            prop_assert_eq!(GtidSet::parse(&text).unwrap(), a.clone());
            prop_assert_eq!(GtidSet::parse(&text.to_ascii_uppercase()).unwrap(), a);
        }

        #[test]
        fn union_is_commutative_associative_idempotent(
            a in gtid_set(), b in gtid_set(), c in gtid_set(),
        ) {
            prop_assert_eq!(a.union(&b), b.union(&a));
            prop_assert_eq!(a.union(&b).union(&c), a.union(&b.union(&c)));
            prop_assert_eq!(a.union(&a), a.clone());
            prop_assert_eq!(a.union(&GtidSet::default()), a.clone());
            prop_assert!(a.is_subset_of(&a.union(&b)));
            prop_assert!(b.is_subset_of(&a.union(&b)));
        }

        #[test]
        fn difference_and_intersection_partition(a in gtid_set(), b in gtid_set()) {
            let diff = a.subtract(&b);
            let common = a.intersection(&b);
            prop_assert!(diff.intersection(&b).is_empty());
            prop_assert_eq!(diff.union(&common), a.clone());
            prop_assert!(diff.intersection(&common).is_empty());
            prop_assert_eq!(a.intersection(&b), b.intersection(&a));
            prop_assert_eq!(a.subtract(&a), GtidSet::default());
            prop_assert_eq!(a.subtract(&GtidSet::default()), a.clone());
            prop_assert!(common.is_subset_of(&a) && common.is_subset_of(&b));
        }

        #[test]
        fn subset_means_nothing_missing(a in gtid_set(), b in gtid_set()) {
            prop_assert_eq!(a.is_subset_of(&b), a.subtract(&b).is_empty());
            prop_assert_eq!(
                a.is_subset_of(&b) && b.is_subset_of(&a),
                a == b
            );
            prop_assert!(a.intersection(&b).is_subset_of(&a));
        }

        #[test]
        fn counts_add_up(a in gtid_set(), b in gtid_set()) {
            prop_assert_eq!(
                a.union(&b).count(),
                a.count() + b.count() - a.intersection(&b).count()
            );
            prop_assert_eq!(a.subtract(&b).count(), a.count() - a.intersection(&b).count());
        }

        #[test]
        fn agrees_with_naive_model(a in gtid_set(), b in gtid_set()) {
            let (ma, mb) = (model(&a), model(&b));
            for result in [a.union(&b), a.subtract(&b), a.intersection(&b)] {
                assert_normal(&result);
            }
            prop_assert_eq!(model(&a.union(&b)), ma.union(&mb).cloned().collect::<Model>());
            prop_assert_eq!(
                model(&a.subtract(&b)),
                ma.difference(&mb).cloned().collect::<Model>()
            );
            prop_assert_eq!(
                model(&a.intersection(&b)),
                ma.intersection(&mb).cloned().collect::<Model>()
            );
            prop_assert_eq!(a.is_subset_of(&b), ma.is_subset(&mb));
            prop_assert_eq!(a.count(), ma.len() as u64);
            prop_assert_eq!(a.is_empty(), ma.is_empty());
            for uuid in UUIDS {
                for tag in TAGS {
                    for n in 0..=42 {
                        let want = ma.contains(&(uuid.to_owned(), tag.to_owned(), n));
                        prop_assert_eq!(a.contains(uuid, tag, n), want);
                        prop_assert_eq!(
                            a.contains(&uuid.to_ascii_uppercase(), &tag.to_ascii_uppercase(), n),
                            want
                        );
                    }
                }
                let only: Model = ma.iter().filter(|(u, _, _)| u == uuid).cloned().collect();
                prop_assert_eq!(model(&a.from_source(uuid)), only);
            }
            let sources: BTreeSet<&str> = ma.iter().map(|(u, _, _)| u.as_str()).collect();
            prop_assert_eq!(a.sources().collect::<BTreeSet<_>>(), sources);
            prop_assert_eq!(a.sources().count(), a.sources().collect::<BTreeSet<_>>().len());
        }
    }

    #[test]
    fn beyond_keeps_what_comes_after_the_others_last_only() {
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let v = "4e11fa47-71ca-11e1-9e33-c80aa9429562";
        let p = |t: &str| GtidSet::parse(t).unwrap();
        let member = p(&format!("{u}:1-3:5-12:t:1-4,{v}:1-2"));
        let primary = p(&format!("{u}:1-4:6-9:t:1-2"));
        // 10-12 and t:3-4 came after; the hole 5 and all of v are kept by
        // the rule (v: the primary has none of it).
        assert_eq!(
            member.beyond(&primary).to_string(),
            format!("{u}:10-12:t:3-4,{v}:1-2")
        );
        assert!(primary.beyond(&member).is_empty());
        assert!(GtidSet::default().beyond(&primary).is_empty());
    }
}
