//! How long ago a replica's IO (receiver) thread last received anything
//! from its source: the heartbeat lag. `Seconds_Behind_Master` measures
//! the applier, and on an idle source a replica cut off from it keeps
//! showing 0 until `slave_net_timeout` expires; a receive age that grows
//! past the heartbeat period says the link is gone long before that.
//!
//! No server shows when it last received something, so the agent watches
//! the replica status of every collection: the received heartbeat count
//! (`Slave_received_heartbeats`, a column of MariaDB's `SHOW ALL SLAVES
//! STATUS`) or the position read from the source (`Master_Log_File`,
//! `Read_Master_Log_Pos`) changing means something arrived since the
//! previous collection. MySQL shows its heartbeat count only in
//! performance_schema, which the agent does not query: there, events alone
//! count, and an idle source makes the age grow to the heartbeat period
//! and beyond.

use std::collections::HashMap;
use std::time::Instant;

use super::mysqld::classic_name;
use crate::mysql::flavor::Row;

/// What a replication channel shows of its receiving: when it changes,
/// something arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    file: String,
    position: String,
    heartbeats: String,
}

/// A channel's last mark and when the agent first saw it.
#[derive(Debug, Clone)]
struct Seen {
    mark: Mark,
    since: Instant,
}

/// Tracks, per replication channel, when the received position or
/// heartbeat count last moved.
#[derive(Debug, Default)]
pub struct ReceiveTracker {
    channels: HashMap<String, Seen>,
}

/// A replica status row's value under its classic (MariaDB, MySQL 5.7)
/// column name, in any case and either spelling.
fn column<'a>(row: &'a Row, classic: &str) -> Option<&'a str> {
    row.iter()
        .find(|(k, _)| classic_name(k) == classic)
        .and_then(|(_, v)| v.as_deref())
}

impl ReceiveTracker {
    /// Feeds one collection's replica status rows, read at `now`; `status`
    /// is its global status, whose `Slave_received_heartbeats` stands for
    /// a server of one channel whose rows lack the column. A channel seen
    /// for the first time counts from `now`: what it received before the
    /// agent watched is unknown. Channels no longer shown are forgotten.
    pub fn observe(&mut self, rows: &[Row], status: &HashMap<String, String>, now: Instant) {
        let global_heartbeats = ["Slave_received_heartbeats", "Replica_received_heartbeats"]
            .iter()
            .find_map(|n| status.get(*n))
            .filter(|_| rows.len() == 1);
        let mut channels = HashMap::new();
        for row in rows {
            let name = column(row, "connection_name")
                .or_else(|| column(row, "channel_name"))
                .unwrap_or_default()
                .to_string();
            let mark = Mark {
                file: column(row, "master_log_file")
                    .unwrap_or_default()
                    .to_string(),
                position: column(row, "read_master_log_pos")
                    .unwrap_or_default()
                    .to_string(),
                heartbeats: column(row, "slave_received_heartbeats")
                    .or(global_heartbeats.map(String::as_str))
                    .unwrap_or_default()
                    .to_string(),
            };
            let seen = match self.channels.remove(&name) {
                Some(old) if old.mark == mark => old,
                _ => Seen { mark, since: now },
            };
            channels.insert(name, seen);
        }
        self.channels = channels;
    }

    /// Seconds, at `now`, since the channel that has waited longest last
    /// received something (one stale channel among several is what an
    /// alert must see); `None` without channels.
    pub fn age(&self, now: Instant) -> Option<f64> {
        self.channels
            .values()
            .map(|s| now.saturating_duration_since(s.since).as_secs_f64())
            .reduce(f64::max)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mysql::flavor::text_row as row;

    fn mariadb(heartbeats: &str, pos: &str) -> Row {
        row(&[
            ("Connection_name", ""),
            ("Master_Log_File", "db1-bin.000002"),
            ("Read_Master_Log_Pos", pos),
            ("Slave_received_heartbeats", heartbeats),
        ])
    }

    #[test]
    fn a_heartbeat_or_an_event_resets_the_age_and_silence_grows_it() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let none = HashMap::new();
        let mut t = ReceiveTracker::default();
        assert_eq!(t.age(t0), None);
        t.observe(&[mariadb("5", "100")], &none, s(0));
        assert_eq!(t.age(s(2)), Some(2.0));
        t.observe(&[mariadb("5", "100")], &none, s(3));
        assert_eq!(t.age(s(3)), Some(3.0), "nothing arrived");
        t.observe(&[mariadb("6", "100")], &none, s(4));
        assert_eq!(t.age(s(5)), Some(1.0), "a heartbeat");
        t.observe(&[mariadb("6", "250")], &none, s(7));
        assert_eq!(t.age(s(7)), Some(0.0), "an event");
        t.observe(&[], &none, s(8));
        assert_eq!(t.age(s(8)), None, "replication no longer configured");
    }

    #[test]
    fn mysql_names_and_the_global_heartbeat_count_are_read_and_the_stalest_channel_counts() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mysql = |pos: &str| {
            row(&[
                ("Channel_Name", ""),
                ("Source_Log_File", "binlog.000001"),
                ("Read_Source_Log_Pos", pos),
            ])
        };
        let mut t = ReceiveTracker::default();
        t.observe(&[mysql("4")], &HashMap::new(), s(0));
        t.observe(&[mysql("9")], &HashMap::new(), s(2));
        assert_eq!(t.age(s(3)), Some(1.0));

        let status = |n: &str| HashMap::from([("Slave_received_heartbeats".into(), n.into())]);
        let plain = row(&[("Master_Log_File", "f"), ("Read_Master_Log_Pos", "1")]);
        let mut t = ReceiveTracker::default();
        t.observe(std::slice::from_ref(&plain), &status("1"), s(0));
        t.observe(std::slice::from_ref(&plain), &status("2"), s(5));
        assert_eq!(t.age(s(6)), Some(1.0), "the global count moved");

        let channel = |name: &str, pos: &str| {
            row(&[
                ("Connection_name", name),
                ("Master_Log_File", "f"),
                ("Read_Master_Log_Pos", pos),
            ])
        };
        let mut t = ReceiveTracker::default();
        t.observe(&[channel("a", "1"), channel("b", "1")], &status("1"), s(0));
        t.observe(&[channel("a", "2"), channel("b", "1")], &status("2"), s(4));
        assert_eq!(
            t.age(s(5)),
            Some(5.0),
            "b received nothing; the global count is not per channel"
        );
    }
}
