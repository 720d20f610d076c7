//! When a cluster's backups are taken and deleted, decided from its policy
//! and catalog alone (no I/O, so every rule is tested directly): which
//! backup is due, which backups retention removes, and what an operator
//! must be told (a backup overdue, the last attempt failed).
//!
//! Retention keeps, for full physical backups (each with the incrementals
//! built on it, a chain restored as one) and logical backups separately:
//! the newest `keep_*` (chains ranked by their newest member), every one
//! younger than `max_age`, always the newest chain and the newest full
//! backup's, always the newest verified one, and any a job is using. With no
//! count and no age set, nothing is deleted.

use std::collections::{BTreeMap, BTreeSet};

use dbfleet_common::gtid_state::GtidState;
use dbfleet_proto::pb;
use serde::{Deserialize, Serialize};

use super::BackupRecord;

/// A cluster's backup policy (desired state; zero turns a setting off).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPolicy {
    /// Full physical backup interval.
    pub full_every_secs: u64,
    /// Incremental physical backup interval.
    pub incremental_every_secs: u64,
    /// Logical backup interval.
    pub logical_every_secs: u64,
    /// Full backups (with their incrementals) kept at least.
    pub keep_full: u32,
    /// Logical backups kept at least.
    pub keep_logical: u32,
    /// Every backup younger than this is kept.
    pub max_age_secs: u64,
    /// Verify every backup once it completed.
    pub verify: bool,
    /// When it was set (Unix ms): a schedule is overdue only this long
    /// after it was set.
    pub set_at_unix_ms: i64,
}

impl BackupPolicy {
    /// From the API.
    pub fn from_pb(p: &pb::BackupPolicy) -> BackupPolicy {
        BackupPolicy {
            full_every_secs: p.full_every_secs,
            incremental_every_secs: p.incremental_every_secs,
            logical_every_secs: p.logical_every_secs,
            keep_full: p.keep_full,
            keep_logical: p.keep_logical,
            max_age_secs: p.max_age_secs,
            verify: p.verify,
            set_at_unix_ms: p.set_at_unix_ms,
        }
    }

    /// For the API.
    pub fn to_pb(&self, cluster: &str) -> pb::BackupPolicy {
        pb::BackupPolicy {
            cluster: cluster.to_string(),
            full_every_secs: self.full_every_secs,
            incremental_every_secs: self.incremental_every_secs,
            logical_every_secs: self.logical_every_secs,
            keep_full: self.keep_full,
            keep_logical: self.keep_logical,
            max_age_secs: self.max_age_secs,
            verify: self.verify,
            set_at_unix_ms: self.set_at_unix_ms,
        }
    }

    /// Whether retention deletes anything.
    pub fn retains(&self) -> bool {
        self.keep_full > 0 || self.keep_logical > 0 || self.max_age_secs > 0
    }
}

/// The kinds of backup a schedule takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A full physical backup.
    Full,
    /// An incremental physical backup.
    Incremental,
    /// A logical backup.
    Logical,
}

impl Kind {
    /// The kind of a catalog entry.
    pub fn of(b: &BackupRecord) -> Kind {
        match (b.method.as_str(), &b.parent) {
            ("logical", _) => Kind::Logical,
            (_, Some(_)) => Kind::Incremental,
            _ => Kind::Full,
        }
    }

    /// In words.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
            Kind::Logical => "logical",
        }
    }

    /// How long a failed backup of this kind waits before a retry.
    pub fn retry_after_ms(self, p: &BackupPolicy) -> i64 {
        retry_after_ms(self.every_secs(p))
    }

    fn every_secs(self, p: &BackupPolicy) -> u64 {
        match self {
            Kind::Full => p.full_every_secs,
            Kind::Incremental => p.incremental_every_secs,
            Kind::Logical => p.logical_every_secs,
        }
    }

    /// Whether a completed backup of kind `k` restarts this kind's
    /// interval (a full backup makes an incremental one unnecessary).
    fn counts(self, k: Kind) -> bool {
        self == k || (self == Kind::Incremental && k == Kind::Full)
    }
}

const ALL: [Kind; 3] = [Kind::Full, Kind::Incremental, Kind::Logical];

/// How long a failed scheduled backup waits before it is tried again:
/// half its interval, at least a second, at most five minutes.
pub fn retry_after_ms(every_secs: u64) -> i64 {
    (every_secs * 500).clamp(1_000, 300_000) as i64
}

fn newest(
    backups: &BTreeMap<String, BackupRecord>,
    ok: impl Fn(&BackupRecord) -> bool,
) -> Option<&BackupRecord> {
    backups
        .values()
        .filter(|b| ok(b))
        .max_by_key(|b| b.started_at_unix_ms)
}

/// Why backup `id` cannot be restored now, if it cannot: it, or a backup
/// its chain needs, is not in the catalog as completed (retention may be
/// deleting it).
pub fn unusable(backups: &BTreeMap<String, BackupRecord>, id: &str) -> Option<String> {
    let mut next = Some(id.to_string());
    let mut seen = 0;
    while let Some(id) = next {
        match backups.get(&id) {
            Some(b) if b.status == "completed" => next = b.parent.clone(),
            Some(b) => return Some(format!("backup {id} is {}", b.status)),
            None => return Some(format!("backup {id} is not in the catalog")),
        }
        seen += 1;
        if seen > 1000 {
            return Some(format!("backup {id}'s chain does not end"));
        }
    }
    None
}

/// The backups jobs use: those being restored (with their chains) and the
/// parents of incrementals being taken. Retention keeps them.
pub fn in_use(
    backups: &BTreeMap<String, BackupRecord>,
    restores: &BTreeMap<String, super::restore::RestoreRecord>,
) -> BTreeSet<String> {
    let mut busy: BTreeSet<String> = restores
        .values()
        .filter(|r| r.status == super::RUNNING)
        .map(|r| r.backup_id.clone())
        .collect();
    busy.extend(
        backups
            .values()
            .filter(|b| b.status == super::RUNNING)
            .filter_map(|b| b.parent.clone()),
    );
    busy
}

/// The backup the schedule takes now, if any: one at a time per cluster,
/// full before incremental before logical; an incremental one only on top
/// of a completed physical backup; a failed attempt retried after
/// [`retry_after_ms`].
pub fn due(now: i64, p: &BackupPolicy, backups: &BTreeMap<String, BackupRecord>) -> Option<Kind> {
    if backups.values().any(|b| b.status == super::RUNNING) {
        return None;
    }
    ALL.into_iter().find(|&kind| {
        let every = kind.every_secs(p);
        if every == 0 {
            return false;
        }
        let last_ok = newest(backups, |b| {
            b.status == "completed" && kind.counts(Kind::of(b))
        });
        if last_ok.is_some_and(|b| now - b.started_at_unix_ms < every as i64 * 1000) {
            return false;
        }
        if kind == Kind::Incremental && last_ok.is_none() {
            return false;
        }
        let last_try = newest(backups, |b| Kind::of(b) == kind);
        !last_try.is_some_and(|b| {
            b.status == "failed" && now - b.finished_at_unix_ms < retry_after_ms(every)
        })
    })
}

/// The newest completed backup that was never verified, for a policy
/// that verifies every backup; none while a verification runs.
pub fn to_verify<'a>(
    p: &BackupPolicy,
    backups: &'a BTreeMap<String, BackupRecord>,
) -> Option<&'a BackupRecord> {
    if !p.verify || backups.values().any(|b| b.verify_job.is_some()) {
        return None;
    }
    newest(backups, |b| {
        b.status == "completed" && b.verification == "never"
    })
}

/// The completed backups restored together with `full`: it and every
/// incremental built on it, directly or through another.
fn chain_of<'a>(
    full: &'a BackupRecord,
    backups: &'a BTreeMap<String, BackupRecord>,
) -> Vec<&'a BackupRecord> {
    let mut members = vec![full];
    loop {
        let ids: BTreeSet<&str> = members.iter().map(|b| b.id.as_str()).collect();
        let more: Vec<&BackupRecord> = backups
            .values()
            .filter(|b| {
                b.status == "completed"
                    && !ids.contains(b.id.as_str())
                    && b.parent.as_deref().is_some_and(|p| ids.contains(p))
            })
            .collect();
        if more.is_empty() {
            return members;
        }
        members.extend(more);
    }
}

/// How many failed entries the catalog keeps (their files are gone
/// already; the entries say what went wrong).
const KEEP_FAILED: usize = 10;

/// The catalog entries retention removes now. `busy` names backups a job
/// uses (a restore, or an incremental being taken on top of it).
pub fn expired(
    now: i64,
    p: &BackupPolicy,
    backups: &BTreeMap<String, BackupRecord>,
    busy: &BTreeSet<String>,
) -> Vec<String> {
    // failed entries (their files are gone already) beyond the newest
    // few, whatever the policy: a failing schedule retries forever
    let mut failed: Vec<&BackupRecord> =
        backups.values().filter(|b| b.status == "failed").collect();
    failed.sort_by_key(|b| std::cmp::Reverse(b.started_at_unix_ms));
    let mut gone: Vec<String> = failed
        .iter()
        .skip(KEEP_FAILED)
        .map(|b| b.id.clone())
        .collect();
    if !p.retains() {
        return gone;
    }
    let young = |b: &BackupRecord| {
        p.max_age_secs > 0 && now - b.started_at_unix_ms < p.max_age_secs as i64 * 1000
    };
    let mut kept_ids = BTreeSet::new();
    for (kind, keep) in [(Kind::Full, p.keep_full), (Kind::Logical, p.keep_logical)] {
        let applies = keep > 0 || p.max_age_secs > 0;
        // newest chain first, by its newest member: incrementals may
        // continue an older full backup after a newer one was taken
        let mut chains: Vec<Vec<&BackupRecord>> = backups
            .values()
            .filter(|b| b.status == "completed" && Kind::of(b) == kind)
            .map(|r| {
                if kind == Kind::Full {
                    chain_of(r, backups)
                } else {
                    vec![r]
                }
            })
            .collect();
        chains.sort_by_key(|c| {
            std::cmp::Reverse(c.iter().map(|b| b.started_at_unix_ms).max().unwrap_or(0))
        });
        let newest_root = (0..chains.len()).max_by_key(|&i| chains[i][0].started_at_unix_ms);
        let newest_verified = chains
            .iter()
            .position(|c| c.iter().any(|b| b.verification == "verified"));
        for (i, chain) in chains.iter().enumerate() {
            let keep = !applies
                || i == 0
                || Some(i) == newest_root
                || (i as u32) < keep
                || Some(i) == newest_verified
                || chain
                    .iter()
                    .any(|b| young(b) || b.verify_job.is_some() || busy.contains(&b.id));
            for b in chain {
                if keep {
                    kept_ids.insert(b.id.clone());
                } else {
                    gone.push(b.id.clone());
                }
            }
        }
    }
    // incrementals whose full backup is gone or failed: never restorable
    for b in backups.values() {
        if b.status == "completed"
            && Kind::of(b) == Kind::Incremental
            && !kept_ids.contains(&b.id)
            && !gone.contains(&b.id)
            && !busy.contains(&b.id)
            && b.verify_job.is_none()
        {
            gone.push(b.id.clone());
        }
    }
    gone
}

/// The GTID state archived binlogs are kept from: what every completed
/// backup holds (any method, on any host, however far its replica lagged;
/// none being deleted): in every domain the lowest end (MariaDB), the
/// intersection of their sets (MySQL). Every point-in-time restore a kept
/// backup allows then keeps its binlogs. `None`: no completed backup, or
/// one whose end is unknown or of another flavor: nothing may be pruned.
pub fn archive_keep_from(backups: &BTreeMap<String, BackupRecord>) -> Option<String> {
    let mut keep: Option<GtidState> = None;
    for b in backups.values().filter(|b| b.status == "completed") {
        let m: serde_json::Value = serde_json::from_str(&b.manifest_json).ok()?;
        let end = GtidState::parse(m["end_gtid"].as_str()?).ok()?;
        keep = Some(match keep {
            None => end,
            Some(k) => k.common(&end)?,
        });
    }
    keep.map(|k| k.to_string().replace('\n', ""))
}

/// What an operator must be told about a cluster's backups: the newest of
/// a scheduled kind older than twice its interval (`backup-overdue`), and
/// the newest attempt of a kind failed (`backup-failing`).
pub fn problems(
    now: i64,
    p: &BackupPolicy,
    backups: &BTreeMap<String, BackupRecord>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for kind in ALL {
        let every = kind.every_secs(p);
        if every > 0 {
            let last_ok = newest(backups, |b| {
                b.status == "completed" && kind.counts(Kind::of(b))
            });
            let since = last_ok.map_or(p.set_at_unix_ms, |b| b.started_at_unix_ms);
            let age_s = (now - since).max(0) / 1000;
            if age_s > 2 * every as i64 {
                let what = match last_ok {
                    Some(b) => format!("the newest, {}, started {age_s} s ago", b.id),
                    None => format!("none completed in the {age_s} s since the schedule was set"),
                };
                out.push((
                    "backup-overdue",
                    format!(
                        "{} backups are overdue ({what}; the schedule takes one every {every} s)",
                        kind.as_str()
                    ),
                ));
            }
        }
        if let Some(b) = newest(backups, |b| {
            Kind::of(b) == kind && b.status != super::DELETING
        }) && b.status == "failed"
        {
            out.push((
                "backup-failing",
                format!(
                    "the last {} backup, {} on {}, failed: {}",
                    kind.as_str(),
                    b.id,
                    b.host,
                    b.error
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
