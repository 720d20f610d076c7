use super::*;

const S: i64 = 1000;

fn b(id: &str, method: &str, parent: Option<&str>, status: &str, at_s: i64) -> BackupRecord {
    BackupRecord {
        id: id.into(),
        host: "db2".into(),
        method: method.into(),
        parent: parent.map(str::to_string),
        status: status.into(),
        error: if status == "failed" {
            "No space left on device".into()
        } else {
            String::new()
        },
        bytes: 0,
        manifest_json: String::new(),
        started_at_unix_ms: at_s * S,
        finished_at_unix_ms: at_s * S + 5 * S,
        verification: "never".into(),
        verification_detail: String::new(),
        verify_job: None,
        verify_started_at_unix_ms: 0,
    }
}

fn catalog(entries: Vec<BackupRecord>) -> BTreeMap<String, BackupRecord> {
    entries.into_iter().map(|b| (b.id.clone(), b)).collect()
}

fn policy() -> BackupPolicy {
    BackupPolicy {
        full_every_secs: 100,
        incremental_every_secs: 10,
        ..Default::default()
    }
}

#[test]
fn a_full_backup_comes_first_then_incrementals_on_their_interval() {
    let p = policy();
    assert_eq!(due(0, &p, &catalog(vec![])), Some(Kind::Full));
    let c = catalog(vec![b("f1", "physical", None, "completed", 0)]);
    assert_eq!(
        due(5 * S, &p, &c),
        None,
        "the full one restarts the interval"
    );
    assert_eq!(due(10 * S, &p, &c), Some(Kind::Incremental));
    assert_eq!(due(100 * S, &p, &c), Some(Kind::Full));
    let running = catalog(vec![b("f1", "physical", None, "running", 0)]);
    assert_eq!(due(500 * S, &p, &running), None, "one backup at a time");
}

#[test]
fn a_failed_backup_is_retried_after_half_its_interval() {
    let p = policy();
    let c = catalog(vec![b("f1", "physical", None, "failed", 0)]);
    // finished at 5 s; retry after 50 s
    assert_eq!(due(54 * S, &p, &c), None);
    assert_eq!(due(55 * S, &p, &c), Some(Kind::Full));
    assert_eq!(retry_after_ms(1), 1_000);
    assert_eq!(retry_after_ms(86_400), 300_000);
}

#[test]
fn an_incremental_schedule_waits_for_a_full_backup() {
    let p = BackupPolicy {
        incremental_every_secs: 10,
        ..Default::default()
    };
    assert_eq!(due(1_000 * S, &p, &catalog(vec![])), None);
    let logical_only = catalog(vec![b("l1", "logical", None, "completed", 0)]);
    assert_eq!(due(1_000 * S, &p, &logical_only), None);
}

#[test]
fn retention_keeps_the_newest_chains_and_the_newest_verified_one() {
    let mut old_verified = b("f1", "physical", None, "completed", 0);
    old_verified.verification = "verified".into();
    let c = catalog(vec![
        old_verified,
        b("f1-i1", "physical", Some("f1"), "completed", 10),
        b("f2", "physical", None, "completed", 100),
        b("f2-i1", "physical", Some("f2"), "completed", 110),
        b("f2-i2", "physical", Some("f2-i1"), "completed", 120),
        b("f3", "physical", None, "completed", 200),
        b("f4", "physical", None, "completed", 300),
        b("l1", "logical", None, "completed", 50),
    ]);
    let keep_two = BackupPolicy {
        keep_full: 2,
        ..Default::default()
    };
    let mut gone = expired(400 * S, &keep_two, &c, &BTreeSet::new());
    gone.sort();
    assert_eq!(
        gone,
        ["f2", "f2-i1", "f2-i2"],
        "f3 and f4 are the newest two; f1's chain holds the newest verified backup; \
         logical backups have no retention set"
    );
    // a restore of f2-i1 keeps its whole chain
    let busy: BTreeSet<String> = ["f2-i1".to_string()].into();
    assert!(expired(400 * S, &keep_two, &c, &busy).is_empty());
    // by age: everything younger than 150 s, and always the newest
    let by_age = BackupPolicy {
        max_age_secs: 150,
        ..Default::default()
    };
    let mut gone = expired(400 * S, &by_age, &c, &BTreeSet::new());
    gone.sort();
    assert_eq!(gone, ["f2", "f2-i1", "f2-i2", "f3"]);
    assert!(expired(400 * S, &BackupPolicy::default(), &c, &BTreeSet::new()).is_empty());
}

#[test]
fn problems_name_an_overdue_schedule_and_a_failing_backup() {
    let p = BackupPolicy {
        full_every_secs: 10,
        set_at_unix_ms: 0,
        ..Default::default()
    };
    assert!(problems(20 * S, &p, &catalog(vec![])).is_empty());
    let found = problems(21 * S, &p, &catalog(vec![]));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "backup-overdue");
    let c = catalog(vec![
        b("f1", "physical", None, "completed", 0),
        b("f2", "physical", None, "failed", 15),
    ]);
    let found = problems(25 * S, &p, &c);
    let kinds: Vec<&str> = found.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["backup-overdue", "backup-failing"]);
    assert!(found[1].1.contains("No space left on device"), "{found:?}");
}

/// A small deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn retention_never_breaks_a_kept_chain_nor_removes_what_must_stay_over_many_seeds() {
    let mut removed = 0;
    for seed in 1..=500u64 {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut entries: Vec<BackupRecord> = Vec::new();
        for i in 0..(3 + r.below(20) as i64) {
            let id = format!("b{i}");
            let status =
                ["completed", "completed", "completed", "failed", "running"][r.below(5) as usize];
            let physical: Vec<&BackupRecord> = entries
                .iter()
                .filter(|b| b.method == "physical" && b.status == "completed")
                .collect();
            let mut e = match r.below(3) {
                0 => b(&id, "logical", None, status, i * 10),
                1 if !physical.is_empty() => {
                    let parent = physical[r.below(physical.len() as u64) as usize].id.clone();
                    b(&id, "physical", Some(&parent), status, i * 10)
                }
                _ => b(&id, "physical", None, status, i * 10),
            };
            if status == "completed" && r.below(3) == 0 {
                e.verification = "verified".into();
            }
            entries.push(e);
        }
        let c = catalog(entries);
        let p = BackupPolicy {
            keep_full: r.below(3) as u32,
            keep_logical: r.below(3) as u32,
            max_age_secs: [0, 50, 100][r.below(3) as usize],
            ..Default::default()
        };
        let busy: BTreeSet<String> = c.keys().filter(|_| r.below(8) == 0).cloned().collect();
        let now = 400 * S;
        let gone: BTreeSet<String> = expired(now, &p, &c, &busy).into_iter().collect();
        removed += gone.len();
        let why = format!("seed {seed}, policy {p:?}, gone {gone:?}");
        for id in &gone {
            let e = &c[id];
            assert!(e.status != "running", "{why}: removed running {id}");
            assert!(!busy.contains(id), "{why}: removed busy {id}");
        }
        for kind in [Kind::Full, Kind::Logical] {
            if let Some(n) = newest(&c, |b| b.status == "completed" && Kind::of(b) == kind) {
                assert!(!gone.contains(&n.id), "{why}: removed the newest {kind:?}");
            }
        }
        // every kept incremental still has its parent
        for e in c.values() {
            if e.status == "completed"
                && !gone.contains(&e.id)
                && let Some(parent) = &e.parent
            {
                assert!(
                    !gone.contains(parent),
                    "{why}: kept {} without its parent {parent}",
                    e.id
                );
            }
        }
        // the newest verified full chain (by its newest member) stays
        if p.retains()
            && let Some(v) = c
                .values()
                .filter(|b| b.status == "completed" && Kind::of(b) == Kind::Full)
                .filter(|b| chain_of(b, &c).iter().any(|m| m.verification == "verified"))
                .max_by_key(|b| chain_of(b, &c).iter().map(|m| m.started_at_unix_ms).max())
        {
            assert!(
                !gone.contains(&v.id),
                "{why}: removed the newest verified chain"
            );
        }
    }
    assert!(
        removed > 500,
        "the seeds exercise deletion: {removed} removed"
    );
}

#[test]
fn the_archive_is_kept_from_the_lowest_end_of_any_completed_backup() {
    let with_end = |id: &str, status: &str, at: i64, end: &str| {
        let mut e = b(id, "physical", None, status, at);
        e.manifest_json = format!(r#"{{"end_gtid": "{end}"}}"#);
        e
    };
    assert_eq!(archive_keep_from(&catalog(vec![])), None);
    let c = catalog(vec![
        with_end("older-but-further", "completed", 10, "0-1-100,1-1-7"),
        with_end(
            "newer-from-a-lagging-replica",
            "completed",
            20,
            "0-1-90,1-1-9",
        ),
        with_end("deleting", "deleting", 5, "0-1-1"),
    ]);
    assert_eq!(archive_keep_from(&c).as_deref(), Some("0-1-90,1-1-7"));
    let unknown = catalog(vec![b("no-manifest", "physical", None, "completed", 0)]);
    assert_eq!(archive_keep_from(&unknown), None, "never prune on a guess");
    // MySQL: what every backup holds, a set (multi-source sets span lines)
    let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    let v = "7c6f8a9e-0b1d-11ee-8c4b-0242ac120002";
    let mysql = catalog(vec![
        with_end("a", "completed", 10, &format!("{u}:1-100,\\n{v}:1-5")),
        with_end("b", "completed", 20, &format!("{u}:1-90:95-120")),
    ]);
    assert_eq!(
        archive_keep_from(&mysql).as_deref(),
        Some(format!("{u}:1-90:95-100").as_str())
    );
    let mixed = catalog(vec![
        with_end("a", "completed", 10, "0-1-100"),
        with_end("b", "completed", 20, &format!("{u}:1-90")),
    ]);
    assert_eq!(archive_keep_from(&mixed), None, "flavors never mix");
}
