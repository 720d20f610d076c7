//! Just enough of the binlog format to archive and select binlogs: event
//! boundaries, timestamps, and the GTIDs each flavor writes. Every event
//! starts with a 19-byte header: timestamp (4), type (1), server id (4),
//! size (4), next position (4), flags (2), all little-endian.
//!
//! MariaDB starts every transaction with a GTID event (domain, sequence
//! number; the server id is the header's) and every file with a
//! GTID_LIST event (the state before the file). MySQL starts every
//! transaction with a GTID event (source UUID and number) and every file
//! with a PREVIOUS_GTIDS event (the set before the file). MySQL 8.3's
//! tagged GTIDs come in another event type, in a serialization of their
//! own that is not read here: such a transaction is timed but its GTID is
//! unknown, so point-in-time recovery through it is refused (see
//! [`each_transaction`]) rather than guessed.

use dbfleet_common::gtid_set::GtidSet;
use dbfleet_common::gtid_state::{Gtid, GtidState};
use dbfleet_proto::model::Flavor;

/// The four bytes every binlog file starts with.
pub const MAGIC: &[u8; 4] = b"\xfebin";
const HEADER: usize = 19;
/// MariaDB's GTID event, which starts every transaction.
pub(crate) const GTID_EVENT: u8 = 162;
const GTID_LIST_EVENT: u8 = 163;
/// MySQL's GTID event: flags (1), source UUID (16), number (8), ...
pub(crate) const MYSQL_GTID_EVENT: u8 = 33;
/// MySQL's transaction start when `gtid_mode` was OFF: no GTID.
const MYSQL_ANONYMOUS_GTID_EVENT: u8 = 34;
/// MySQL's GTID set before the file.
const MYSQL_PREVIOUS_GTIDS_EVENT: u8 = 35;
/// MySQL 8.3+: a transaction with a tagged GTID.
const MYSQL_TAGGED_GTID_EVENT: u8 = 42;
/// The bytes of a MySQL GTID event this reads: flags, UUID, number.
const MYSQL_GTID_BYTES: usize = 25;

/// What a run of whole events says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes of whole events (a trailing partial event is left out).
    pub whole: usize,
    /// Timestamp of the first and last transaction (Unix seconds; 0:
    /// none). Other events are left out: a file's format description
    /// carries the time it was created, which on a replica catching up is
    /// later than the transactions in it.
    pub first_ts: u32,
    /// See `first_ts`.
    pub last_ts: u32,
    /// The server's GTID state before this file, from its GTID_LIST or
    /// PREVIOUS_GTIDS event (only when the run holds the file's start and
    /// the event could be read).
    pub gtid_list: Option<GtidState>,
    /// The run's transactions: the highest GTID per domain (MariaDB),
    /// the set of them (MySQL; tagged ones are left out).
    pub gtids: GtidState,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A MySQL server UUID from its 16 bytes, as `@@server_uuid` prints it.
fn uuid_text(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The GTID in a MySQL GTID event's first [`MYSQL_GTID_BYTES`] bytes.
fn mysql_gtid(body: &[u8]) -> Gtid {
    Gtid::MySql {
        uuid: uuid_text(&body[1..17]),
        number: u64_at(body, 17),
    }
}

/// A PREVIOUS_GTIDS event's set (untagged format: count of sources, then
/// per source its UUID, count of intervals and `[start, end)` pairs).
/// `None` for the tagged format or anything that does not fit the event
/// exactly (with or without its 4-byte checksum).
fn previous_gtids(body: &[u8]) -> Option<GtidSet> {
    let count = u64_at(body.get(..8)?, 0);
    let mut at = 8usize;
    let mut set = GtidSet::default();
    for _ in 0..count {
        let uuid = uuid_text(body.get(at..at + 16)?);
        let intervals = u64_at(body.get(at + 16..at + 24)?, 0);
        at += 24;
        for _ in 0..intervals {
            let range = body.get(at..at + 16)?;
            let (first, end) = (u64_at(range, 0), u64_at(range, 8));
            if first == 0 || end <= first {
                return None;
            }
            set.insert_range(&uuid, "", first, end - 1);
            at += 16;
        }
    }
    (body.len() == at || body.len() == at + 4).then_some(set)
}

/// Walks the events in `bytes` (which starts at an event boundary, or at
/// the file's magic when `file_start`) of a `flavor` binlog up to `limit`
/// bytes of whole events.
pub fn summarize(bytes: &[u8], limit: usize, file_start: bool, flavor: Flavor) -> Summary {
    let mut s = Summary {
        gtids: match flavor {
            Flavor::MariaDb => GtidState::MariaDb(Default::default()),
            Flavor::MySql => GtidState::MySql(GtidSet::default()),
        },
        ..Summary::default()
    };
    let mut at = if file_start && bytes.starts_with(MAGIC) {
        4
    } else {
        0
    };
    while at + HEADER <= bytes.len() {
        let size = u32_at(bytes, at + 9) as usize;
        if size < HEADER || at + size > bytes.len() || at + size > limit {
            break;
        }
        let ev = &bytes[at..at + size];
        let body = &ev[HEADER..];
        let ts = u32_at(ev, 0);
        let server = u32_at(ev, 5);
        let mut transaction = true;
        match (flavor, ev[4]) {
            (Flavor::MariaDb, GTID_EVENT) if body.len() >= 12 => s.gtids.record(&Gtid::MariaDb {
                domain: u32_at(body, 8),
                server,
                seq: u64_at(body, 0),
            }),
            (Flavor::MySql, MYSQL_GTID_EVENT) if body.len() >= MYSQL_GTID_BYTES => {
                s.gtids.record(&mysql_gtid(body))
            }
            (Flavor::MySql, MYSQL_TAGGED_GTID_EVENT | MYSQL_ANONYMOUS_GTID_EVENT) => {}
            (Flavor::MariaDb, GTID_LIST_EVENT) if body.len() >= 4 => {
                transaction = false;
                let count = (u32_at(body, 0) & 0x0fff_ffff) as usize;
                let mut list = GtidState::MariaDb(Default::default());
                for i in 0..count {
                    let e = 4 + i * 16;
                    if e + 16 > body.len() {
                        break;
                    }
                    list.record(&Gtid::MariaDb {
                        domain: u32_at(body, e),
                        server: u32_at(body, e + 4),
                        seq: u64_at(body, e + 8),
                    });
                }
                s.gtid_list.get_or_insert(list);
            }
            (Flavor::MySql, MYSQL_PREVIOUS_GTIDS_EVENT) => {
                transaction = false;
                if let Some(set) = previous_gtids(body) {
                    s.gtid_list.get_or_insert(GtidState::MySql(set));
                }
            }
            _ => transaction = false,
        }
        if transaction {
            if s.first_ts == 0 {
                s.first_ts = ts;
            }
            s.last_ts = s.last_ts.max(ts);
        }
        at += size;
    }
    s.whole = at;
    s
}

/// One transaction's start in a binlog: its GTID and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Unix seconds.
    pub ts: u32,
    /// Its GTID.
    pub gtid: Gtid,
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// Calls `f` with every transaction of the `flavor` binlog file `r` in
/// order, reading event by event, until `f` returns false or the file
/// ends. A MySQL transaction whose GTID is not read here (tagged, or
/// anonymous because `gtid_mode` was off) is an error naming it: replay
/// could not tell whether the restored server holds it.
pub fn each_transaction(
    mut r: impl std::io::Read,
    flavor: Flavor,
    mut f: impl FnMut(Transaction) -> bool,
) -> std::io::Result<()> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a binlog file".into()));
    }
    let mut header = [0u8; HEADER];
    // Only a GTID event's first bytes are read; the rest of every event is
    // skipped, so an event of any size (a hostile file may claim 4 GiB)
    // costs no memory.
    let mut gtid = [0u8; MYSQL_GTID_BYTES];
    let mut at = 4u64;
    loop {
        match r.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let size = u32_at(&header, 9) as usize;
        if size < HEADER {
            return Err(invalid(format!("an event of {size} bytes at {at}")));
        }
        let mut rest = (size - HEADER) as u64;
        let ts = u32_at(&header, 0);
        let transaction = match (flavor, header[4]) {
            (Flavor::MariaDb, GTID_EVENT) if rest >= 12 => {
                r.read_exact(&mut gtid[..12])?;
                rest -= 12;
                Some(Gtid::MariaDb {
                    server: u32_at(&header, 5),
                    seq: u64_at(&gtid, 0),
                    domain: u32_at(&gtid, 8),
                })
            }
            (Flavor::MySql, MYSQL_GTID_EVENT) if rest >= MYSQL_GTID_BYTES as u64 => {
                r.read_exact(&mut gtid)?;
                rest -= MYSQL_GTID_BYTES as u64;
                Some(mysql_gtid(&gtid))
            }
            (Flavor::MariaDb, GTID_EVENT) | (Flavor::MySql, MYSQL_GTID_EVENT) => {
                return Err(invalid(format!(
                    "the GTID event at {at} is too short ({size} bytes) to name its transaction"
                )));
            }
            (Flavor::MySql, MYSQL_TAGGED_GTID_EVENT) => {
                return Err(invalid(format!(
                    "the transaction at {at} has a tagged GTID, which dbfleet cannot read yet; replay this part with mysqlbinlog by hand"
                )));
            }
            (Flavor::MySql, MYSQL_ANONYMOUS_GTID_EVENT) => {
                return Err(invalid(format!(
                    "the transaction at {at} has no GTID (it was written while gtid_mode was not ON)"
                )));
            }
            _ => None,
        };
        let mut this_event = std::io::Read::take(&mut r, rest);
        let skipped = std::io::copy(&mut this_event, &mut std::io::sink())?;
        if skipped < rest {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ends inside an event",
            ));
        }
        at += size as u64;
        if let Some(gtid) = transaction
            && !f(Transaction { ts, gtid })
        {
            return Ok(());
        }
    }
}

/// Binlog bytes for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::HEADER;

    /// One event with a zero checksum.
    pub(crate) fn event(ts: u32, kind: u8, server: u32, body: &[u8]) -> Vec<u8> {
        let size = (HEADER + body.len() + 4) as u32;
        let mut e = Vec::new();
        e.extend(ts.to_le_bytes());
        e.push(kind);
        e.extend(server.to_le_bytes());
        e.extend(size.to_le_bytes());
        e.extend(0u32.to_le_bytes());
        e.extend(0u16.to_le_bytes());
        e.extend(body);
        e.extend([0u8; 4]);
        e
    }

    /// A GTID event's body.
    pub(crate) fn gtid(seq: u64, domain: u32) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend(domain.to_le_bytes());
        b.push(0);
        b
    }

    /// The 16 bytes of a UUID written as text.
    fn uuid_bytes(uuid: &str) -> Vec<u8> {
        let hex = uuid.replace('-', "");
        (0..16)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect()
    }

    /// A MySQL GTID event's body (with the logical clock fields and a
    /// commit timestamp after the GTID, as MySQL writes them).
    pub(crate) fn mysql_gtid(uuid: &str, number: u64) -> Vec<u8> {
        let mut b = vec![1u8];
        b.extend(uuid_bytes(uuid));
        b.extend(number.to_le_bytes());
        b.push(2);
        b.extend([0u8; 16 + 7]);
        b
    }

    /// A PREVIOUS_GTIDS event's body holding `sets`: per UUID, inclusive
    /// ranges.
    pub(crate) fn previous_gtids(sets: &[(&str, &[(u64, u64)])]) -> Vec<u8> {
        let mut b = (sets.len() as u64).to_le_bytes().to_vec();
        for (uuid, ranges) in sets {
            b.extend(uuid_bytes(uuid));
            b.extend((ranges.len() as u64).to_le_bytes());
            for (first, last) in *ranges {
                b.extend(first.to_le_bytes());
                b.extend((last + 1).to_le_bytes());
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{event, gtid, mysql_gtid, previous_gtids};
    use super::*;

    const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const U2: &str = "7c6f8a9e-0b1d-11ee-8c4b-0242ac120002";

    /// A binlog as the archive holds it: a format description, the GTID
    /// list (0-1-41), and two transactions (0-1-42 at 101, 0-3-43 at 102).
    fn sample_binlog() -> Vec<u8> {
        let mut file = MAGIC.to_vec();
        file.extend(event(100, 15, 1, &[0; 40]));
        let mut list = 1u32.to_le_bytes().to_vec();
        list.extend(0u32.to_le_bytes());
        list.extend(1u32.to_le_bytes());
        list.extend(41u64.to_le_bytes());
        file.extend(event(100, GTID_LIST_EVENT, 1, &list));
        file.extend(event(101, GTID_EVENT, 1, &gtid(42, 0)));
        file.extend(event(101, 2, 1, b"BEGIN"));
        file.extend(event(102, GTID_EVENT, 3, &gtid(43, 0)));
        file
    }

    /// A MySQL binlog: a format description, PREVIOUS_GTIDS (U1:1-5:7,
    /// U2:1-2) and two transactions (U1:8 at 101, U2:3 at 102).
    fn sample_mysql_binlog() -> Vec<u8> {
        let mut file = MAGIC.to_vec();
        file.extend(event(100, 15, 1, &[0; 40]));
        file.extend(event(
            100,
            MYSQL_PREVIOUS_GTIDS_EVENT,
            1,
            &previous_gtids(&[(U1, &[(1, 5), (7, 7)]), (U2, &[(1, 2)])]),
        ));
        file.extend(event(101, MYSQL_GTID_EVENT, 1, &mysql_gtid(U1, 8)));
        file.extend(event(101, 2, 1, b"BEGIN"));
        file.extend(event(102, MYSQL_GTID_EVENT, 2, &mysql_gtid(U2, 3)));
        file.extend(event(102, 2, 2, b"COMMIT"));
        file
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Archived binlogs come from the repository, which another host
        /// may have written: a restore reads whatever is there. Mutated,
        /// cut or padded, a file is read or refused, never a panic.
        #[test]
        fn a_mutated_binlog_is_read_or_refused_never_a_panic(
            bytes in dbfleet_common::mutation::mutated(sample_binlog())
        ) {
            let _ = summarize(&bytes, bytes.len(), true, Flavor::MariaDb);
            let _ = each_transaction(bytes.as_slice(), Flavor::MariaDb, |_| true);
        }

        /// The same of MySQL's events.
        #[test]
        fn a_mutated_mysql_binlog_is_read_or_refused_never_a_panic(
            bytes in dbfleet_common::mutation::mutated(sample_mysql_binlog())
        ) {
            let _ = summarize(&bytes, bytes.len(), true, Flavor::MySql);
            let _ = each_transaction(bytes.as_slice(), Flavor::MySql, |_| true);
        }
    }

    fn transactions(file: &[u8], flavor: Flavor) -> Vec<(u32, String)> {
        let mut seen = Vec::new();
        each_transaction(file, flavor, |t| {
            seen.push((t.ts, t.gtid.to_string()));
            true
        })
        .unwrap();
        seen
    }

    #[test]
    fn gtids_timestamps_and_whole_events_are_read() {
        let mut file = sample_binlog();
        let whole = file.len();
        file.extend(&event(103, 2, 1, b"cut")[..10]);
        let s = summarize(&file, file.len(), true, Flavor::MariaDb);
        assert_eq!(s.whole, whole);
        assert_eq!((s.first_ts, s.last_ts), (101, 102));
        assert_eq!(
            transactions(&file[..whole], Flavor::MariaDb),
            [(101, "0-1-42".to_string()), (102, "0-3-43".to_string())]
        );
        assert_eq!(s.gtid_list.unwrap().to_string(), "0-1-41");
        assert_eq!(s.gtids.to_string(), "0-3-43");
        // a limit inside an event stops before it
        let part = summarize(&file, whole - 1, true, Flavor::MariaDb);
        assert_eq!(part.gtids.to_string(), "0-1-42");
    }

    #[test]
    fn mysql_gtids_and_the_set_before_the_file_are_read() {
        let mut file = sample_mysql_binlog();
        let whole = file.len();
        file.extend(&event(103, MYSQL_GTID_EVENT, 1, &mysql_gtid(U1, 9))[..20]);
        let s = summarize(&file, file.len(), true, Flavor::MySql);
        assert_eq!(s.whole, whole);
        assert_eq!((s.first_ts, s.last_ts), (101, 102));
        assert_eq!(
            s.gtid_list.unwrap().to_string(),
            format!("{U1}:1-5:7,{U2}:1-2")
        );
        assert_eq!(s.gtids.to_string(), format!("{U1}:8,{U2}:3"));
        assert_eq!(
            transactions(&file[..whole], Flavor::MySql),
            [(101, format!("{U1}:8")), (102, format!("{U2}:3"))]
        );
        // read as the other flavor, no GTID is found: the chunk holds none
        let other = summarize(&file, file.len(), true, Flavor::MariaDb);
        assert!(other.gtids.is_empty() && other.gtid_list.is_none());
    }

    #[test]
    fn a_gtid_event_too_short_to_name_its_transaction_stops_the_walk() {
        for (flavor, mut file, kind) in [
            (Flavor::MySql, sample_mysql_binlog(), MYSQL_GTID_EVENT),
            (Flavor::MariaDb, sample_binlog(), GTID_EVENT),
        ] {
            file.extend(event(103, kind, 1, &[0; 5]));
            let e = each_transaction(file.as_slice(), flavor, |_| true).unwrap_err();
            assert!(e.to_string().contains("too short"), "{e}");
        }
    }

    #[test]
    fn a_previous_gtids_event_that_does_not_fit_is_not_trusted() {
        let good = previous_gtids(&[(U1, &[(1, 5)])]);
        assert!(super::previous_gtids(&good).is_some());
        let mut with_checksum = good.clone();
        with_checksum.extend([0u8; 4]);
        assert!(super::previous_gtids(&with_checksum).is_some());
        // trailing bytes (the tagged format reads differently), a short
        // body, an empty or backwards interval: no set at all
        let mut longer = good.clone();
        longer.extend([0u8; 9]);
        assert!(super::previous_gtids(&longer).is_none());
        assert!(super::previous_gtids(&good[..good.len() - 1]).is_none());
        assert!(super::previous_gtids(&previous_gtids(&[(U1, &[(3, 1)])])).is_none());
        assert!(super::previous_gtids(&previous_gtids(&[(U1, &[(0, 1)])])).is_none());
    }

    #[test]
    fn a_mysql_transaction_without_a_readable_gtid_stops_the_walk_naming_it() {
        for (kind, says) in [
            (MYSQL_TAGGED_GTID_EVENT, "tagged GTID"),
            (MYSQL_ANONYMOUS_GTID_EVENT, "gtid_mode"),
        ] {
            let mut file = sample_mysql_binlog();
            let at = file.len();
            file.extend(event(103, kind, 1, &[0; 30]));
            let e = each_transaction(file.as_slice(), Flavor::MySql, |_| true).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(says) && text.contains(&format!("at {at}")),
                "{text}"
            );
            // timed all the same, so a time target sees it
            assert_eq!(
                summarize(&file, file.len(), true, Flavor::MySql).last_ts,
                103
            );
        }
    }
}
