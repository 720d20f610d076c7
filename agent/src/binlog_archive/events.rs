//! Just enough of the binlog format to archive and select binlogs: event
//! boundaries, timestamps, and the GTIDs MariaDB writes (GTID and
//! GTID_LIST events). Every event starts with a 19-byte header:
//! timestamp (4), type (1), server id (4), size (4), next position (4),
//! flags (2), all little-endian.

use dbfleet_common::gtid::Position;

/// The four bytes every binlog file starts with.
pub const MAGIC: &[u8; 4] = b"\xfebin";
const HEADER: usize = 19;
/// MariaDB's GTID event, which starts every transaction.
pub(crate) const GTID_EVENT: u8 = 162;
const GTID_LIST_EVENT: u8 = 163;

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
    /// The GTID_LIST event's state: what the server had logged before this
    /// file (only when the run holds the file's start).
    pub gtid_list: Option<Position>,
    /// The highest GTID per domain among the run's transactions.
    pub gtids: Position,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Walks the events in `bytes` (which starts at an event boundary, or at
/// the file's magic when `file_start`) up to `limit` bytes of whole
/// events.
pub fn summarize(bytes: &[u8], limit: usize, file_start: bool) -> Summary {
    let mut s = Summary::default();
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
        let ts = u32_at(ev, 0);
        let server = u32_at(ev, 5);
        match ev[4] {
            GTID_EVENT if size >= HEADER + 12 => {
                let seq = u64_at(ev, HEADER);
                let domain = u32_at(ev, HEADER + 8);
                s.gtids.record(domain, server, seq);
                if s.first_ts == 0 {
                    s.first_ts = ts;
                }
                s.last_ts = s.last_ts.max(ts);
            }
            GTID_LIST_EVENT if size >= HEADER + 4 => {
                let count = (u32_at(ev, HEADER) & 0x0fff_ffff) as usize;
                let mut list = Position::default();
                for i in 0..count {
                    let e = HEADER + 4 + i * 16;
                    if e + 16 > size {
                        break;
                    }
                    list.record(u32_at(ev, e), u32_at(ev, e + 4), u64_at(ev, e + 8));
                }
                s.gtid_list.get_or_insert(list);
            }
            _ => {}
        }
        at += size;
    }
    s.whole = at;
    s
}

/// One transaction's start in a binlog: its GTID and timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transaction {
    /// Unix seconds.
    pub ts: u32,
    /// GTID domain.
    pub domain: u32,
    /// GTID server id.
    pub server: u32,
    /// GTID sequence number.
    pub seq: u64,
}

/// Calls `f` with every transaction of the binlog file `r` in order,
/// reading event by event, until `f` returns false or the file ends.
pub fn each_transaction(
    mut r: impl std::io::Read,
    mut f: impl FnMut(Transaction) -> bool,
) -> std::io::Result<()> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a binlog file",
        ));
    }
    let mut header = [0u8; HEADER];
    // Only a GTID event's first bytes are read; the rest of every event is
    // skipped, so an event of any size (a hostile file may claim 4 GiB)
    // costs no memory.
    let mut gtid = [0u8; 12];
    loop {
        match r.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let size = u32_at(&header, 9) as usize;
        if size < HEADER {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an event of {size} bytes"),
            ));
        }
        let mut rest = (size - HEADER) as u64;
        let transaction = if header[4] == GTID_EVENT && rest >= 12 {
            r.read_exact(&mut gtid)?;
            rest -= 12;
            Some(Transaction {
                ts: u32_at(&header, 0),
                server: u32_at(&header, 5),
                seq: u64_at(&gtid, 0),
                domain: u32_at(&gtid, 8),
            })
        } else {
            None
        };
        let mut this_event = std::io::Read::take(&mut r, rest);
        let skipped = std::io::copy(&mut this_event, &mut std::io::sink())?;
        if skipped < rest {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ends inside an event",
            ));
        }
        if let Some(t) = transaction
            && !f(t)
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
}

#[cfg(test)]
mod tests {
    use super::testing::{event, gtid};
    use super::*;

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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Archived binlogs come from the repository, which another host
        /// may have written: a restore reads whatever is there. Mutated,
        /// cut or padded, a file is read or refused, never a panic.
        #[test]
        fn a_mutated_binlog_is_read_or_refused_never_a_panic(
            bytes in dbfleet_common::mutation::mutated(sample_binlog())
        ) {
            let _ = summarize(&bytes, bytes.len(), true);
            let _ = each_transaction(bytes.as_slice(), |_| true);
        }
    }

    #[test]
    fn gtids_timestamps_and_whole_events_are_read() {
        let mut file = sample_binlog();
        let whole = file.len();
        file.extend(&event(103, 2, 1, b"cut")[..10]);
        let s = summarize(&file, file.len(), true);
        assert_eq!(s.whole, whole);
        assert_eq!((s.first_ts, s.last_ts), (101, 102));
        let mut seen = Vec::new();
        each_transaction(&file[..whole], |t| {
            seen.push((t.ts, t.seq));
            true
        })
        .unwrap();
        assert_eq!(seen, [(101, 42), (102, 43)]);
        assert_eq!(s.gtid_list.unwrap().to_string(), "0-1-41");
        assert_eq!(s.gtids.to_string(), "0-3-43");
        // a limit inside an event stops before it
        let part = summarize(&file, whole - 1, true);
        assert_eq!(part.gtids.to_string(), "0-1-42");
    }
}
